%% Durable messages against a real redis-server: every function of
%% emqx_redis_ds, messages stored once whatever the subscribers, order per
%% publisher under concurrent writers on two clients, no gap while reading
%% during appends, iterators resumed on another client, retention, watch
%% across clients, and a property: what an iterator returns is what
%% emqx_redis_topic:match/2 selects from what was persisted.
-module(emqx_redis_ds_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include_lib("proper/include/proper.hrl").

-define(DS, emqx_redis_ds).

all() ->
    [
        subscribe_unsubscribe_subscriptions,
        holders_are_counted_over_clients,
        persist_skips_topics_no_durable_filter_wants,
        messages_come_back_equal,
        one_copy_for_many_subscribers,
        order_per_publisher_with_concurrent_writers,
        no_gap_while_reading_during_appends,
        iterator_resumes_on_another_client,
        iterators_and_watches_survive_a_redis_restart,
        retention_trims_without_readers,
        watch_is_notified_across_clients,
        watch_fires_at_once_for_data_already_there,
        wildcard_roots_are_refused_unless_allowed,
        too_many_subscriptions,
        invalid_input_is_refused,
        stored_garbage_is_corrupt,
        literal_first_level_reads_only_its_streams,
        many_readers_of_one_stretch_read_it_from_redis_once,
        prop_iterators_return_what_match_selects
    ].

init_per_suite(Config) ->
    Redis = redis_test_server:start(),
    Cfg = #{redis => #{servers => redis_test_server:address(Redis)}, route_sync_interval => 500},
    ok = emqx_redis_storage:start(Cfg),
    [{redis, Redis}, {cfg, Cfg} | Config].

end_per_suite(Config) ->
    emqx_redis_storage:stop(),
    redis_test_server:stop(?config(redis, Config)).

init_per_testcase(_Case, Config) ->
    {ok, <<"OK">>} = emqx_redis_storage:q([<<"FLUSHALL">>]),
    %% A client keeps the stream entries it read lately (entries are never
    %% deleted but by retention): a new one for a Redis emptied behind it.
    ok = emqx_redis_storage:stop(),
    ok = emqx_redis_storage:start(?config(cfg, Config)),
    {ok, Default} = emqx_redis_storage_client:default(),
    %% FLUSHALL publishes nothing: the mirror's periodic check reloads it.
    ok = test_util:wait_until(fun() -> ?DS:filter_matches(Default, <<"any">>) =:= false end, 10000),
    [{default, Default} | Config].

end_per_testcase(_Case, _Config) ->
    ok.

fresh_client(Config) ->
    {ok, Client} = emqx_redis_storage:connect(?config(cfg, Config)),
    Client.

%% Another client of the same Redis, standing for another node.
other_node(Config) ->
    other_node(Config, #{}).

other_node(Config, Ds) ->
    {ok, Client} = emqx_redis_storage:connect(maps:merge(?config(cfg, Config), #{ds => Ds})),
    ok = test_util:wait_until(fun() -> ?DS:filter_matches(Client, <<"x">>) =/= not_ready end, 10000),
    Client.

msg(Topic, N) ->
    msg(Topic, N, <<"pub">>).

msg(Topic, N, From) ->
    #{
        id => <<From/binary, "-", (integer_to_binary(N))/binary>>,
        topic => Topic,
        from => From,
        qos => 1,
        payload => binary:copy(<<"p">>, 100),
        timestamp => 1700000000000 + N,
        n => N
    }.

%% Everything an iterator over every stream of `Filter' returns, in order
%% per stream.
read_all(Filter) ->
    read_all(default(), Filter).

read_all(Client, Filter) ->
    {ok, Streams} = ?DS:get_streams(Client, Filter, 0),
    lists:append([drain(Client, It) || S <- Streams, {ok, It} <- [?DS:make_iterator(Client, S, Filter, 0)]]).

drain(Client, It) ->
    {_, Msgs} = drain_it(Client, It),
    Msgs.

%% Reads until a batch comes back empty; the iterator then and the messages.
drain_it(Client, It) ->
    drain_it(Client, It, []).

drain_it(Client, It, Acc) ->
    case ?DS:next(Client, It, 100) of
        {ok, It2, []} -> {It2, lists:append(lists:reverse(Acc))};
        {ok, It2, Msgs} -> drain_it(Client, It2, [Msgs | Acc])
    end.

default() ->
    {ok, C} = emqx_redis_storage_client:default(),
    C.

stream_keys() ->
    {ok, Keys} = emqx_redis_storage:q([<<"KEYS">>, <<"emqx:ds:m:*">>]),
    lists:sort(Keys).

%% Stream entries: one per persist call and stream.
entries() ->
    lists:sum([N || K <- stream_keys(), {ok, N} <- [emqx_redis_storage:q([<<"XLEN">>, K])]]).

ids(Msgs) -> [Id || #{id := Id} <- Msgs].

%%--------------------------------------------------------------------

subscribe_unsubscribe_subscriptions(_Config) ->
    ?assertEqual({ok, []}, ?DS:subscriptions(<<"c1">>)),
    ?assertEqual(ok, ?DS:subscribe(<<"c1">>, <<"sensors/+/temp">>)),
    ?assertEqual(ok, ?DS:subscribe(<<"c1">>, <<"sensors/+/temp">>)),
    ?assertEqual(ok, ?DS:subscribe(<<"c1">>, <<"a/#">>)),
    ?assertEqual({ok, [<<"a/#">>, <<"sensors/+/temp">>]}, ?DS:subscriptions(<<"c1">>)),
    ?assert(?DS:filter_matches(default(), <<"sensors/1/temp">>)),
    ?assertEqual(ok, ?DS:unsubscribe(<<"c1">>, <<"sensors/+/temp">>)),
    ?assertEqual(ok, ?DS:unsubscribe(<<"c1">>, <<"sensors/+/temp">>)),
    ?assertEqual(ok, ?DS:unsubscribe(<<"c1">>, <<"never/subscribed">>)),
    ?assertEqual({ok, [<<"a/#">>]}, ?DS:subscriptions(<<"c1">>)),
    ?assertNot(?DS:filter_matches(default(), <<"sensors/1/temp">>)),
    ?assert(?DS:filter_matches(default(), <<"a/b/c">>)),
    %% Redis holds the count of holders, and nothing once none is left
    ?assertEqual(ok, ?DS:unsubscribe(<<"c1">>, <<"a/#">>)),
    ?assertEqual({ok, []}, emqx_redis_storage:q([<<"KEYS">>, <<"emqx:ds:h:*">>])).

%% A filter stays durable while any client holds it, on every node.
holders_are_counted_over_clients(Config) ->
    Other = other_node(Config),
    ?assertEqual({ok, []}, ?DS:filters()),
    ?assertEqual({ok, []}, ?DS:holders(<<"shared/+">>)),
    [ok = ?DS:subscribe(C, <<"shared/+">>) || C <- [<<"c1">>, <<"c2">>, <<"c3">>]],
    ok = ?DS:subscribe(<<"c2">>, <<"own/#">>),
    ok = test_util:wait_until(fun() -> ?DS:filter_matches(Other, <<"shared/x">>) end, 5000),
    %% Every filter held, and who holds each: from any client.
    ?assertEqual({ok, [<<"own/#">>, <<"shared/+">>]}, ?DS:filters(Other)),
    ?assertEqual({ok, [<<"c1">>, <<"c2">>, <<"c3">>]}, ?DS:holders(Other, <<"shared/+">>)),
    ?assertEqual({ok, [<<"c2">>]}, ?DS:holders(<<"own/#">>)),
    ok = ?DS:unsubscribe(<<"c2">>, <<"own/#">>),
    ?assertEqual({ok, [<<"shared/+">>]}, ?DS:filters()),
    ?assertEqual({ok, []}, ?DS:holders(<<"own/#">>)),
    ok = ?DS:unsubscribe(<<"c1">>, <<"shared/+">>),
    ?assertEqual({ok, [<<"c2">>, <<"c3">>]}, ?DS:holders(<<"shared/+">>)),
    ok = ?DS:unsubscribe(Other, <<"c2">>, <<"shared/+">>),
    timer:sleep(200),
    ?assert(?DS:filter_matches(Other, <<"shared/x">>)),
    ?assert(?DS:filter_matches(default(), <<"shared/x">>)),
    ok = ?DS:unsubscribe(Other, <<"c3">>, <<"shared/+">>),
    ok = test_util:wait_until(fun() -> not ?DS:filter_matches(default(), <<"shared/x">>) end, 5000),
    ?assertNot(?DS:filter_matches(Other, <<"shared/x">>)).

persist_skips_topics_no_durable_filter_wants(Config) ->
    ok = ?DS:subscribe(<<"c1">>, <<"sensors/+/temp">>),
    Other = other_node(Config),
    ok = test_util:wait_until(fun() -> ?DS:filter_matches(Other, <<"sensors/1/temp">>) end, 5000),
    Msgs = [msg(<<"sensors/1/temp">>, 1), msg(<<"sensors/1/hum">>, 2), msg(<<"other/x">>, 3)],
    ?assertEqual({ok, #{persisted => 1, skipped => 2}}, ?DS:persist(Msgs)),
    ?assertEqual({ok, #{persisted => 1, skipped => 2}}, ?DS:persist(Other, Msgs)),
    ?assertEqual({ok, #{persisted => 0, skipped => 0}}, ?DS:persist([])),
    ?assertEqual(2, entries()),
    %% a skipped first level has no stream at all
    ?assertEqual([], [K || K <- stream_keys(), binary:match(K, <<"other">>) =/= nomatch]).

messages_come_back_equal(_Config) ->
    ok = ?DS:subscribe(<<"c1">>, <<"t/#">>),
    Msgs = [
        msg(<<"t/a">>, 1),
        #{id => <<"m2">>, topic => <<"t/b">>},
        #{id => <<"m3">>, topic => <<"t">>, payload => <<>>, headers => #{properties => #{'User-Property' => [{<<"k">>, <<"v">>}]}}, flags => #{retain => true}},
        #{id => <<"m4">>, topic => <<"t/ü/ñ"/utf8>>, from => {some, term}, payload => binary:copy(<<0, 255>>, 5000), qos => 2}
    ],
    {ok, #{persisted := 4}} = ?DS:persist(Msgs),
    Read = read_all(<<"t/#">>),
    ?assertEqual(lists:sort(Msgs), lists:sort(Read)),
    [Exact] = read_all(<<"t/b">>),
    ?assertEqual(lists:nth(2, Msgs), Exact).

%% The same messages to one first level with one subscriber, and to another
%% with a thousand: the same Redis memory, and one entry per message.
one_copy_for_many_subscribers(_Config) ->
    ok = ?DS:subscribe(<<"solo">>, <<"one/#">>),
    [ok = ?DS:subscribe(<<"c", (integer_to_binary(I))/binary>>, <<"many/#">>) || I <- lists:seq(1, 1000)],
    Publish = fun(Level) ->
        Msgs = [msg(<<Level/binary, "/dev/", (integer_to_binary(N rem 10))/binary>>, N) || N <- lists:seq(1, 2000)],
        [{ok, #{persisted := 100}} = ?DS:persist(B) || B <- test_util:chunks(Msgs, 100)],
        Keys = [K || K <- stream_keys(), binary:match(K, <<"{", Level/binary, "/">>) =/= nomatch],
        {
            length(read_all(<<Level/binary, "/#">>)),
            lists:sum([N || K <- Keys, {ok, N} <- [emqx_redis_storage:q([<<"MEMORY">>, <<"USAGE">>, K])]])
        }
    end,
    {2000, One} = Publish(<<"one">>),
    {2000, Many} = Publish(<<"many">>),
    %% one stream entry per persist call and stream
    ?assertEqual(40, entries()),
    ct:pal("Redis memory for 2000 messages: ~b bytes with 1 subscriber, ~b with 1000 (~b per message)", [One, Many, Many div 2000]),
    ?assert(Many =< One * 1.05 + 1024, {One, Many}),
    ?assertEqual(2000, length(read_all(<<"many/#">>))).

%% 8 publishers on two clients, 400 messages each in batches of 10: each
%% publisher's messages come back in order, all of them, once.
order_per_publisher_with_concurrent_writers(Config) ->
    Other = other_node(Config),
    ok = ?DS:subscribe(<<"c1">>, <<"ord/#">>),
    ok = test_util:wait_until(fun() -> ?DS:filter_matches(Other, <<"ord/x">>) end, 5000),
    Writers = [{W, case W rem 2 of 0 -> default(); 1 -> Other end} || W <- lists:seq(1, 8)],
    test_util:pmap(
        fun({W, Client}) ->
            From = <<"w", (integer_to_binary(W))/binary>>,
            Msgs = [msg(<<"ord/", From/binary>>, N, From) || N <- lists:seq(1, 400)],
            [{ok, #{persisted := 10}} = ?DS:persist(Client, B) || B <- test_util:chunks(Msgs, 10)]
        end,
        Writers
    ),
    Read = read_all(Other, <<"ord/#">>),
    ?assertEqual(3200, length(Read)),
    [
        ?assertEqual(lists:seq(1, 400), [N || #{from := F, n := N} <- Read, F =:= From])
     || W <- lists:seq(1, 8), From <- [<<"w", (integer_to_binary(W))/binary>>]
    ].

%% A reader follows every stream while 4 writers append: once they stop
%% and it drains, it has read every message once.
no_gap_while_reading_during_appends(Config) ->
    Other = other_node(Config),
    ok = ?DS:subscribe(<<"c1">>, <<"live/#">>),
    ok = test_util:wait_until(fun() -> ?DS:filter_matches(Other, <<"live/x">>) end, 5000),
    %% every stream the writers will use exists in the listing up front
    {ok, _} = ?DS:persist([msg(<<"live/w", (integer_to_binary(W))/binary>>, 0, <<"w", (integer_to_binary(W))/binary>>) || W <- lists:seq(1, 4)]),
    {ok, Streams} = ?DS:get_streams(<<"live/#">>, 0),
    Its0 = [It || S <- Streams, {ok, It} <- [?DS:make_iterator(S, <<"live/#">>, 0)]],
    Parent = self(),
    Writer = spawn_link(fun() ->
        test_util:pmap(
            fun(W) ->
                From = <<"w", (integer_to_binary(W))/binary>>,
                Client = case W rem 2 of 0 -> default(); 1 -> Other end,
                [{ok, _} = ?DS:persist(Client, [msg(<<"live/", From/binary>>, N, From) || N <- lists:seq(I, I + 4)]) || I <- lists:seq(1, 1000, 5)]
            end,
            lists:seq(1, 4)
        ),
        Parent ! writers_done
    end),
    {Its, Seen} = follow(Its0, [], false, 0),
    unlink(Writer),
    ?assertEqual(length(Its0), length(Its)),
    Ids = ids(Seen),
    ?assertEqual(4 * 1001, length(Ids)),
    ?assertEqual(length(Ids), length(lists:usort(Ids))).

%% Reads a batch from each iterator in turn, until the writers are done and
%% a whole round returned nothing.
follow(Its, Acc, Done, Rounds) ->
    {Its2, Got} = lists:unzip([
        begin
            {ok, It2, Msgs} = ?DS:next(It, 37),
            {It2, Msgs}
        end
     || It <- Its
    ]),
    New = lists:append(Got),
    Done2 = Done orelse receive writers_done -> true after 0 -> false end,
    case Done andalso New =:= [] of
        true -> {Its2, Acc};
        false -> follow(Its2, Acc ++ New, Done2, Rounds + 1)
    end.

iterator_resumes_on_another_client(Config) ->
    ok = ?DS:subscribe(<<"c1">>, <<"res/+">>),
    Msgs = [msg(<<"res/a">>, N) || N <- lists:seq(1, 300)],
    {ok, #{persisted := 300}} = ?DS:persist(Msgs),
    {ok, Streams} = ?DS:get_streams(<<"res/+">>, 0),
    [Stream] = [St || St <- Streams, {ok, It} <- [?DS:make_iterator(St, <<"res/+">>, 0)], {ok, _, [_ | _]} <- [?DS:next(It, 1)]],
    {ok, It0} = ?DS:make_iterator(Stream, <<"res/+">>, 0),
    {ok, It1, First} = ?DS:next(It0, 120),
    Saved = term_to_binary(It1),
    ?assert(byte_size(Saved) < 100, byte_size(Saved)),
    Other = other_node(Config),
    Rest = drain(Other, binary_to_term(Saved)),
    ?assertEqual(Msgs, First ++ Rest),
    %% the same iterator read again on the first client: the same messages
    ?assertEqual(Rest, drain(default(), It1)).

%% A Redis with an append-only file killed (SIGKILL) and started again: a
%% saved iterator goes on exactly where it was, before and after new
%% appends, and a watch made after the restart is woken.
iterators_and_watches_survive_a_redis_restart(_Config) ->
    Redis = redis_test_server:start(#{conf => ["appendonly yes", "appendfsync always"]}),
    try
        {ok, C} = emqx_redis_storage:connect(#{redis => #{servers => redis_test_server:address(Redis)}}),
        ok = ?DS:subscribe(C, <<"c1">>, <<"rs/#">>),
        ok = test_util:wait_until(fun() -> ?DS:filter_matches(C, <<"rs/a">>) =:= true end, 5000),
        Msgs = [msg(<<"rs/a">>, N) || N <- lists:seq(1, 200)],
        {ok, #{persisted := 100}} = ?DS:persist(C, lists:sublist(Msgs, 100)),
        {ok, Streams} = ?DS:get_streams(C, <<"rs/#">>, 0),
        [It0] = [It || S <- Streams, {ok, It} <- [?DS:make_iterator(C, S, <<"rs/#">>, 0)], {ok, _, [_ | _]} <- [?DS:next(C, It, 1)]],
        {ok, It1, First} = ?DS:next(C, It0, 50),
        Saved = term_to_binary(It1),
        ok = redis_test_server:restart(Redis),
        %% the first calls may meet a pool connection that has not noticed yet
        ok = test_util:wait_until(fun() -> element(1, ?DS:subscriptions(C, <<"c1">>)) =:= ok end, 10000),
        ?assertEqual({ok, [<<"rs/#">>]}, ?DS:subscriptions(C, <<"c1">>)),
        {ok, #{persisted := 100}} = ?DS:persist(C, lists:nthtail(100, Msgs)),
        {End, Rest} = drain_it(C, binary_to_term(Saved)),
        ?assertEqual(Msgs, First ++ Rest),
        {ok, Ref} = ?DS:watch(C, End),
        {ok, #{persisted := 1}} = ?DS:persist(C, [msg(<<"rs/a">>, 201)]),
        receive {emqx_redis_ds, Ref, new_data} -> ok after 5000 -> ct:fail(not_notified) end
    after
        redis_test_server:stop(Redis)
    end.

%% With a retention of 1 s, messages are trimmed without anyone reading;
%% an iterator from the start goes on with the oldest message kept.
retention_trims_without_readers(Config) ->
    Short = other_node(Config, #{message_retention => <<"1s">>}),
    ok = ?DS:subscribe(Short, <<"c1">>, <<"ret/#">>),
    {ok, #{persisted := 50}} = ?DS:persist(Short, [msg(<<"ret/a">>, N) || N <- lists:seq(1, 50)]),
    ?assertEqual(1, entries(), "one entry: one persist call, one stream"),
    {ok, Streams} = ?DS:get_streams(Short, <<"ret/#">>, 0),
    [Behind] = [It || S <- Streams, {ok, It} <- [?DS:make_iterator(Short, S, <<"ret/#">>, 0)], {ok, _, [_ | _]} <- [?DS:next(Short, It, 1)]],
    ok = test_util:wait_until(fun() -> entries() =:= 0 end, 5000),
    {ok, #{persisted := 5}} = ?DS:persist(Short, [msg(<<"ret/a">>, N) || N <- lists:seq(51, 55)]),
    ?assertEqual([51, 52, 53, 54, 55], [N || #{n := N} <- read_all(Short, <<"ret/#">>)]),
    {ok, _, FromBehind} = ?DS:next(Short, Behind, 10),
    ?assertEqual([51, 52, 53, 54, 55], [N || #{n := N} <- FromBehind]).

watch_is_notified_across_clients(Config) ->
    Other = other_node(Config),
    ok = ?DS:subscribe(<<"c1">>, <<"w/#">>),
    ok = test_util:wait_until(fun() -> ?DS:filter_matches(Other, <<"w/x">>) end, 5000),
    Msg = msg(<<"w/x">>, 1),
    Stream = stream_of(<<"w/#">>, Msg),
    {ok, Start} = ?DS:make_iterator(Stream, <<"w/#">>, 0),
    {ok, It, [_Probe]} = ?DS:next(Start, 10),
    {ok, Ref} = ?DS:watch(It),
    receive {emqx_redis_ds, Ref, new_data} -> ct:fail(early) after 100 -> ok end,
    T0 = erlang:monotonic_time(microsecond),
    {ok, #{persisted := 1}} = ?DS:persist(Other, [Msg]),
    receive
        {emqx_redis_ds, Ref, new_data} ->
            ct:pal("watch notified ~b us after the other client's persist began", [erlang:monotonic_time(microsecond) - T0])
    after 5000 -> ct:fail(not_notified)
    end,
    %% once: the watch is gone after it fired
    {ok, #{persisted := 1}} = ?DS:persist(Other, [msg(<<"w/x">>, 2)]),
    receive {emqx_redis_ds, Ref, new_data} -> ct:fail(twice) after 300 -> ok end,
    {ok, It2, [_, _]} = ?DS:next(It, 10),
    %% an ended watch sends nothing
    {ok, Ref2} = ?DS:watch(It2),
    ok = ?DS:unwatch(Ref2),
    {ok, #{persisted := 1}} = ?DS:persist(Other, [msg(<<"w/x">>, 3)]),
    receive {emqx_redis_ds, Ref2, new_data} -> ct:fail(after_unwatch) after 300 -> ok end.

%% Sessions resuming together (their node died) read the same stretch of a
%% stream, each for its own filter: a client reads it from Redis about once
%% for all its readers (measured in bytes Redis sent), and each reader gets
%% all of its messages, in order.
many_readers_of_one_stretch_read_it_from_redis_once(Config) ->
    [ok = ?DS:subscribe(<<"c", (integer_to_binary(N))/binary>>, topic_n(N)) || N <- lists:seq(1, 100)],
    %% 200 entries of 10 messages, one publisher (one stream).
    [{ok, #{persisted := 10}} = ?DS:persist([msg(topic_n(N rem 100 + 1), N) || N <- lists:seq(B * 10, B * 10 + 9)])
     || B <- lists:seq(0, 199)],
    Sent = fun() ->
        {ok, Info} = emqx_redis_storage:q([<<"INFO">>, <<"stats">>]),
        {match, [N]} = re:run(Info, "total_net_output_bytes:([0-9]+)", [{capture, all_but_first, binary}]),
        binary_to_integer(N)
    end,
    One = fresh_client(Config),
    S0 = Sent(),
    ?assertEqual(20, length(read_all(One, topic_n(1)))),
    Once = Sent() - S0,
    Burst = fresh_client(Config),
    S1 = Sent(),
    Self = self(),
    [spawn_link(fun() -> Self ! {read, N, read_all(Burst, topic_n(N))} end) || N <- lists:seq(1, 100)],
    [receive {read, N, Msgs} -> ?assertEqual([M || M <- lists:seq(0, 1999), M rem 100 + 1 =:= N], [X || #{n := X} <- Msgs]) end
     || N <- lists:seq(1, 100)],
    All = Sent() - S1,
    ct:pal("bytes from Redis: one reader ~b, 100 readers at once ~b", [Once, All]),
    ?assert(All < 3 * Once, {All, Once}).

topic_n(N) -> <<"burst/", (integer_to_binary(N))/binary>>.

%% The stream a message goes to: the one where an iterator finds it.
stream_of(Filter, #{id := Id} = Msg) ->
    {ok, #{persisted := 1}} = ?DS:persist([Msg#{id := <<"probe-", Id/binary>>}]),
    {ok, Streams} = ?DS:get_streams(Filter, 0),
    [Stream] = [S || S <- Streams, {ok, It} <- [?DS:make_iterator(S, Filter, 0)], {ok, _, [_]} <- [?DS:next(It, 10)]],
    Stream.

watch_fires_at_once_for_data_already_there(_Config) ->
    ok = ?DS:subscribe(<<"c1">>, <<"w/#">>),
    Stream = stream_of(<<"w/#">>, msg(<<"w/y">>, 1)),
    {ok, It} = ?DS:make_iterator(Stream, <<"w/#">>, 0),
    {ok, Ref} = ?DS:watch(It),
    receive {emqx_redis_ds, Ref, new_data} -> ok after 1000 -> ct:fail(not_notified) end,
    %% at the end of the stream: nothing until an append
    {ok, End, [_]} = ?DS:next(It, 10),
    {ok, Ref2} = ?DS:watch(End),
    receive {emqx_redis_ds, Ref2, new_data} -> ct:fail(early) after 200 -> ok end,
    ok = ?DS:unwatch(Ref2),
    %% stopped inside one persist call's messages: the rest is there already
    {ok, #{persisted := 10}} = ?DS:persist([msg(<<"w/y">>, N) || N <- lists:seq(2, 11)]),
    {ok, Inside, [#{n := 2}, #{n := 3}, #{n := 4}]} = ?DS:next(End, 3),
    {ok, Ref3} = ?DS:watch(Inside),
    receive {emqx_redis_ds, Ref3, new_data} -> ok after 1000 -> ct:fail(not_notified) end,
    ?assertMatch({ok, _, [#{n := 5} | _]}, ?DS:next(Inside, 100)).

wildcard_roots_are_refused_unless_allowed(Config) ->
    [?assertEqual({error, {filter_too_wide, F}}, ?DS:subscribe(<<"c1">>, F)) || F <- [<<"#">>, <<"+">>, <<"+/a">>, <<"+/+/#">>]],
    ?assertEqual({ok, []}, ?DS:subscriptions(<<"c1">>)),
    Wide = other_node(Config, #{allow_wildcard_root => true}),
    ok = ?DS:subscribe(Wide, <<"c1">>, <<"+/temp">>),
    ok = test_util:wait_until(fun() -> ?DS:filter_matches(Wide, <<"a/temp">>) end, 5000),
    {ok, #{persisted := 3, skipped := 1}} =
        ?DS:persist(Wide, [msg(<<"a/temp">>, 1), msg(<<"b/temp">>, 2), msg(<<"c/temp">>, 3), msg(<<"$SYS/temp">>, 4)]),
    ?assertEqual([1, 2, 3], lists:sort([N || #{n := N} <- read_all(Wide, <<"+/temp">>)])),
    {ok, Streams} = ?DS:get_streams(Wide, <<"#">>, 0),
    #{ds := #{stream_shards := Shards}} = emqx_redis_storage_client:settings(Wide),
    ?assertEqual(3 * Shards, length(Streams)).

too_many_subscriptions(Config) ->
    Few = other_node(Config, #{max_subscriptions_per_client => 3}),
    [ok = ?DS:subscribe(Few, <<"c1">>, <<"f/", (integer_to_binary(I))/binary>>) || I <- [1, 2, 3]],
    ?assertEqual({error, too_many_subscriptions}, ?DS:subscribe(Few, <<"c1">>, <<"f/4">>)),
    ?assertEqual(ok, ?DS:subscribe(Few, <<"c1">>, <<"f/2">>)),
    ?assertEqual(ok, ?DS:subscribe(Few, <<"c2">>, <<"f/4">>)),
    {ok, Subs} = ?DS:subscriptions(<<"c1">>),
    ?assertEqual(3, length(Subs)),
    ?assertEqual({error, {invalid_config, <<"ds.max_subscriptions_per_client">>, <<"an integer from 1 to 100000">>}},
        emqx_redis_storage:connect(maps:merge(?config(cfg, Config), #{ds => #{max_subscriptions_per_client => 0}}))),
    ?assertMatch({error, {invalid_config, <<"ds.message_retention">>, _}},
        emqx_redis_storage:connect(maps:merge(?config(cfg, Config), #{ds => #{message_retention => -1}}))),
    ?assertMatch({error, {invalid_config, <<"ds.stream_shards">>, _}},
        emqx_redis_storage:connect(maps:merge(?config(cfg, Config), #{ds => #{stream_shards => 1000}}))).

invalid_input_is_refused(_Config) ->
    ok = ?DS:subscribe(<<"c1">>, <<"v/#">>),
    {ok, [S | _]} = ?DS:get_streams(<<"v/#">>, 0),
    {ok, It} = ?DS:make_iterator(S, <<"v/#">>, 0),
    {emqx_redis_ds_stream, 1, _, _} = S,
    {emqx_redis_ds_iterator, 1, L, Sh, F, Ms, Seq, Skip} = It,
    Bad = [
        ?DS:subscribe(<<>>, <<"a">>),
        ?DS:subscribe(<<"c">>, <<"a/#/b">>),
        ?DS:subscribe(<<"c">>, not_a_binary),
        ?DS:unsubscribe(123, <<"a">>),
        ?DS:subscriptions(<<>>),
        ?DS:holders(<<"a/#/b">>),
        ?DS:holders(not_a_binary),
        ?DS:persist(not_a_list),
        ?DS:persist([a | b]),
        ?DS:persist([not_a_map]),
        ?DS:persist([#{topic => <<"v/a">>}]),
        ?DS:persist([#{id => <<"1">>}]),
        ?DS:persist([#{id => 1, topic => <<"v/a">>}]),
        ?DS:persist([#{id => <<"1">>, topic => <<"v/+">>}]),
        ?DS:persist([#{id => <<"1">>, topic => <<"v/a">>, payload => binary:copy(<<"x">>, 3 bsl 20)}]),
        ?DS:persist(lists:duplicate(10001, msg(<<"v/a">>, 1))),
        ?DS:get_streams(<<"a/#/b">>, 0),
        ?DS:get_streams(<<"a">>, -1),
        ?DS:make_iterator(not_a_stream, <<"a">>, 0),
        ?DS:make_iterator({emqx_redis_ds_stream, 1, <<"a/b">>, 0}, <<"a">>, 0),
        ?DS:make_iterator({emqx_redis_ds_stream, 1, <<"a">>, 4096}, <<"a">>, 0),
        ?DS:make_iterator({emqx_redis_ds_stream, 1, <<"a">>, -1}, <<"a">>, 0),
        ?DS:make_iterator({emqx_redis_ds_stream, 2, <<"a">>, 0}, <<"a">>, 0),
        ?DS:make_iterator({emqx_redis_ds_stream, 1, <<"+">>, 0}, <<"a">>, 0),
        ?DS:make_iterator(S, <<"a/#/b">>, 0),
        ?DS:make_iterator(S, <<"a">>, 1 bsl 64),
        ?DS:next(It, 0),
        ?DS:next(It, 10001),
        ?DS:next(It, many),
        ?DS:next({emqx_redis_ds_iterator, 1, L, Sh, F, -1, Seq, Skip}, 10),
        ?DS:next({emqx_redis_ds_iterator, 1, L, Sh, F, Ms, Seq, -1}, 10),
        ?DS:next({emqx_redis_ds_iterator, 1, L, Sh, F, Ms, Seq, 1 bsl 32}, 10),
        ?DS:next({emqx_redis_ds_iterator, 1, L, Sh, F, Ms, 1 bsl 64, Skip}, 10),
        ?DS:next({emqx_redis_ds_iterator, 1, L, Sh, <<"#/x">>, Ms, Seq, Skip}, 10),
        ?DS:next({emqx_redis_ds_iterator, 1, <<"a", 0:8>>, Sh, F, Ms, Seq, Skip}, 10),
        ?DS:next({emqx_redis_ds_iterator, 1, L, Sh, F, Ms, Seq}, 10),
        ?DS:next(S, 10),
        ?DS:watch(S),
        ?DS:watch({emqx_redis_ds_iterator, 1, L, 99, F, Ms, Seq, Skip}),
        ?DS:unwatch(not_a_ref),
        ?DS:next(not_a_client, It, 10),
        ?DS:persist(not_a_client, [])
    ],
    [?assertMatch({error, _}, R) || R <- Bad],
    ct:pal("~p", [Bad]),
    ?assertMatch({error, {too_large, #{id := <<"1">>, size := _, max := 2097152}}},
        ?DS:persist([#{id => <<"1">>, topic => <<"v/a">>, payload => binary:copy(<<"x">>, 3 bsl 20)}])),
    %% an iterator beyond the end, or of a stream nobody wrote, reads nothing
    ?assertMatch({ok, _, []}, ?DS:next({emqx_redis_ds_iterator, 1, <<"nobody">>, 0, <<"nobody/#">>, 0, 0, 0}, 10)),
    ?assertMatch({ok, _, []}, ?DS:next({emqx_redis_ds_iterator, 1, L, Sh, F, 1 bsl 62, 0, 0}, 10)).

stored_garbage_is_corrupt(Config) ->
    ok = ?DS:subscribe(<<"c1">>, <<"g/#">>),
    Msg = msg(<<"g/a">>, 1),
    Stream = stream_of(<<"g/#">>, Msg),
    {emqx_redis_ds_stream, 1, <<"g">>, Shard} = Stream,
    Key = iolist_to_binary(["emqx:ds:m:{g/", integer_to_list(Shard), "}"]),
    {ok, It} = ?DS:make_iterator(Stream, <<"g/#">>, 0),
    {ok, End, [_]} = ?DS:next(It, 10),
    Entry = fun(T, B) -> <<(byte_size(T)):16, T/binary, (byte_size(B)):32, B/binary>> end,
    Garbage = [
        {[<<"x">>, <<"1">>], durable_stream},
        {[<<"m">>, <<0>>], durable_stream},
        {[<<"m">>, Entry(<<"g/a">>, <<>>), <<"t">>, <<"y">>], durable_stream},
        {[<<"m">>, <<>>], durable_stream},
        {[<<"m">>, <<(Entry(<<"g/a">>, term_to_binary(#{id => <<"x">>})))/binary, 0>>], durable_stream},
        {[<<"m">>, Entry(<<"other/a">>, term_to_binary(#{id => <<"x">>}))], durable_stream},
        {[<<"m">>, Entry(<<"g/+">>, term_to_binary(#{id => <<"x">>}))], durable_stream},
        {[<<"m">>, Entry(<<"g/a">>, <<"notaterm">>)], durable_message},
        {[<<"m">>, Entry(<<"g/a">>, term_to_binary([not_a_map]))], durable_message},
        {[<<"m">>, Entry(<<"g/a">>, term_to_binary(#{id => <<"x">>, topic => <<"g/b">>}))], durable_message},
        {[<<"m">>, Entry(<<"g/a">>, term_to_binary(#{id => 1}))], durable_message},
        {[<<"m">>, Entry(<<"g/a">>, <<(term_to_binary(#{id => <<"x">>}))/binary, 0>>)], durable_message}
    ],
    lists:foldl(
        fun({Fields, Kind}, From) ->
            {ok, Id} = emqx_redis_storage:q([<<"XADD">>, Key, <<"*">> | Fields]),
            %% Read by a client of its own: the garbage is deleted again
            %% behind it, which the product never does (see init_per_testcase).
            ?assertMatch({error, {corrupt, #{kind := Kind}}}, ?DS:next(fresh_client(Config), From, 10), Fields),
            {ok, 1} = emqx_redis_storage:q([<<"XDEL">>, Key, Id]),
            From
        end,
        End,
        Garbage
    ),
    {ok, <<"OK">>} = emqx_redis_storage:q([<<"SET">>, Key, <<"string">>]),
    ?assertMatch({error, {corrupt, #{kind := durable_stream}}}, ?DS:next(It, 10)),
    {ok, _} = emqx_redis_storage:q([<<"SADD">>, <<"emqx:ds:levels">>, <<"a/b">>]),
    ?assertMatch({error, {corrupt, #{kind := durable_levels}}}, ?DS:get_streams(<<"#">>, 0)),
    {ok, _} = emqx_redis_storage:q([<<"SADD">>, <<"emqx:ds:sub:{c1}">>, <<"a/#/b">>]),
    ?assertMatch({error, {corrupt, #{kind := durable_subscription}}}, ?DS:subscriptions(<<"c1">>)),
    %% a holders count that is not one changes nothing
    {ok, _} = emqx_redis_storage:q([<<"HSET">>, <<"emqx:ds:f:{d", (shard(<<"h/#">>))/binary, "}">>, <<"h/#">>, <<"7">>]),
    ?assertMatch({error, {corrupt, #{kind := durable_filter}}}, ?DS:subscribe(<<"c9">>, <<"h/#">>)),
    ?assertEqual({ok, []}, emqx_redis_storage:q([<<"KEYS">>, <<"emqx:ds:h:*:h/#">>])).

%% The shard of a filter in the durable filter table (CRC16 mod 16).
shard(Filter) ->
    integer_to_binary(crc16(Filter) rem 16).

crc16(Bin) ->
    lists:foldl(
        fun(Byte, Crc0) ->
            lists:foldl(
                fun(_, C) ->
                    case C band 16#8000 of
                        0 -> (C bsl 1) band 16#FFFF;
                        _ -> ((C bsl 1) bxor 16#1021) band 16#FFFF
                    end
                end,
                Crc0 bxor (Byte bsl 8),
                lists:seq(1, 8)
            )
        end,
        0,
        binary_to_list(Bin)
    ).

%% A literal first level reads only its own streams: with 99% of the
%% traffic elsewhere, a replay reads what it returns and about as much.
literal_first_level_reads_only_its_streams(_Config) ->
    ok = ?DS:subscribe(<<"c1">>, <<"sensors/+/temp">>),
    ok = ?DS:subscribe(<<"c2">>, <<"bulk/#">>),
    Bulk = [msg(<<"bulk/", (integer_to_binary(N rem 50))/binary>>, N) || N <- lists:seq(1, 9900)],
    Sensors = [msg(<<"sensors/", (integer_to_binary(N))/binary, "/", Kind/binary>>, N) || N <- lists:seq(1, 50), Kind <- [<<"temp">>, <<"hum">>]],
    [{ok, _} = ?DS:persist(B) || B <- test_util:chunks(Bulk ++ Sensors, 500)],
    {ok, Streams} = ?DS:get_streams(<<"sensors/+/temp">>, 0),
    ?assertEqual([<<"sensors">>], lists:usort([L || {emqx_redis_ds_stream, 1, L, _} <- Streams])),
    Scanned = lists:sum([element(2, scan(S, <<"sensors/+/temp">>)) || S <- Streams]),
    Returned = lists:append([element(1, scan(S, <<"sensors/+/temp">>)) || S <- Streams]),
    ?assertEqual(50, length(Returned)),
    ct:pal("read ~b entries for ~b messages", [Scanned, length(Returned)]),
    ?assert(Scanned =< 2 * length(Returned)).

%% The messages and the entries read, straight from the NIF.
scan({emqx_redis_ds_stream, 1, Level, Shard}, Filter) ->
    {ok, {_, Entries, Scanned}} =
        emqx_redis_storage_client:call(default(), ds_next, [{Level, Shard}, Filter, {0, 0, 0}, 10000]),
    {Entries, Scanned}.

%% For random filters and topics: persist stores what some filter matches
%% and skips the rest, and an iterator returns exactly the persisted
%% messages its filter matches, in persist order per stream.
prop_iterators_return_what_match_selects(Config) ->
    Client = other_node(Config, #{allow_wildcard_root => true}),
    Prop = ?FORALL(
        {Filters, Topics},
        {non_empty(list(filter())), list(topic())},
        check_case(Client, Filters, Topics)
    ),
    true = proper:quickcheck(Prop, [{numtests, 60}, {to_file, user}, noshrink]).

level() -> oneof([<<"a">>, <<"b">>, <<"c">>, <<"$s">>, <<>>]).

topic() ->
    ?SUCHTHAT(T, ?LET(Levels, non_empty(list(level())), join(Levels)), T =/= <<>>).

filter() ->
    ?SUCHTHAT(
        F,
        ?LET(
            {Levels, Hash},
            {non_empty(list(oneof([level(), <<"+">>]))), boolean()},
            join(Levels ++ [<<"#">> || Hash])
        ),
        F =/= <<>>
    ).

join(Levels) -> iolist_to_binary(lists:join(<<"/">>, Levels)).

check_case(Client, Filters, Topics) ->
    Case = integer_to_binary(erlang:unique_integer([positive])),
    Owner = <<"prop-", Case/binary>>,
    [ok = ?DS:subscribe(Client, Owner, F) || F <- Filters],
    Msgs = [#{id => <<Case/binary, "-", (integer_to_binary(I))/binary>>, topic => T, from => I rem 3} || {I, T} <- lists:zip(lists:seq(1, length(Topics)), Topics)],
    Wanted = [M || #{topic := T} = M <- Msgs, lists:any(fun(F) -> emqx_redis_topic:match(T, F) end, Filters)],
    {ok, #{persisted := P, skipped := S}} = ?DS:persist(Client, Msgs),
    Ok =
        P =:= length(Wanted) andalso S =:= length(Msgs) - P andalso
            lists:all(
                fun(F) ->
                    Read = [M || #{id := <<C:(byte_size(Case))/binary, "-", _/binary>>} = M <- read_all(Client, F), C =:= Case],
                    Expected = [M || #{topic := T} = M <- Msgs, emqx_redis_topic:match(T, F)],
                    lists:sort(Read) =:= lists:sort(Expected) andalso
                        in_order_per_publisher(Read, Expected)
                end,
                Filters
            ),
    [ok = ?DS:unsubscribe(Client, Owner, F) || F <- Filters],
    Ok orelse ct:pal("filters ~p topics ~p persisted ~p", [Filters, Topics, P]),
    Ok.

%% Per publisher and topic, the order of persist.
in_order_per_publisher(Read, Expected) ->
    Key = fun(#{from := F, topic := T}) -> {F, T} end,
    Groups = lists:usort([Key(M) || M <- Expected]),
    lists:all(fun(G) -> [M || M <- Read, Key(M) =:= G] =:= [M || M <- Expected, Key(M) =:= G] end, Groups).
