%% QoS 1/2 message queues against a real redis-server.
-module(emqx_redis_message_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(M, emqx_redis_message).
-define(MAX_SIZE, 2097152).

all() ->
    [
        messages_come_back_exactly_and_in_order,
        pages_with_offsets,
        order_over_ten_thousand_messages_stored_in_batches,
        concurrent_writers_keep_each_writers_order,
        storing_a_message_twice_keeps_one_in_its_place,
        acks_in_any_order_and_unknown_ids,
        count_and_queue_info,
        delete_removes_the_clients_queue_only,
        per_message_expiry_reclaims_memory,
        awkward_client_and_message_ids,
        invalid_input_is_refused,
        too_large_messages_and_batches_are_refused,
        largest_publish_emqx_admits_stores_by_default,
        bad_data_in_redis_is_an_error_not_a_crash,
        redis_paused_gives_timeout_within_deadline,
        {group, default_ttl},
        {group, queue_limit}
    ].

groups() ->
    [
        {default_ttl, [], [default_ttl_expires_messages_and_queues]},
        {queue_limit, [], [drop_oldest_at_the_limit]}
    ].

init_per_suite(Config) ->
    Redis = redis_test_server:start(),
    ok = start_app(Redis, #{}),
    [{redis, Redis} | Config].

end_per_suite(Config) ->
    emqx_redis_storage:stop(),
    redis_test_server:stop(?config(redis, Config)).

%% Each group runs the application with its own persistence settings.
init_per_group(default_ttl, Config) ->
    restart_app(Config, #{message_ttl => 1});
init_per_group(queue_limit, Config) ->
    restart_app(Config, #{max_queue_len => 5}).

end_per_group(_Group, Config) ->
    restart_app(Config, #{}).

restart_app(Config, Persistence) ->
    ok = emqx_redis_storage:stop(),
    ok = start_app(?config(redis, Config), Persistence),
    Config.

start_app(Redis, Persistence) ->
    emqx_redis_storage:start(#{
        redis => #{servers => redis_test_server:address(Redis), command_timeout => 2000},
        persistence => maps:merge(#{max_queue_len => 100000, max_message_size => ?MAX_SIZE}, Persistence)
    }).

init_per_testcase(_Case, Config) ->
    {ok, <<"OK">>} = emqx_redis_storage:q([<<"FLUSHALL">>]),
    Config.

end_per_testcase(_Case, _Config) ->
    ok.

%%--------------------------------------------------------------------

messages_come_back_exactly_and_in_order(_Config) ->
    Msgs = [
        #{id => <<"empty">>, topic => <<"t/1">>, payload => <<>>, qos => 1},
        #{id => <<"bytes">>, topic => <<"t/2">>, payload => list_to_binary(lists:seq(0, 255)), qos => 2},
        #{id => <<"mib">>, topic => <<"t/3">>, payload => crypto:strong_rand_bytes(1024 * 1024), qos => 1},
        #{
            id => <<"full">>,
            topic => <<"sensors/äöü/温度"/utf8>>,
            payload => <<"{\"v\": 21.5}">>,
            qos => 2,
            from => <<"publisher-1">>,
            flags => #{dup => false, retain => true},
            headers => #{properties => #{'User-Property' => [{<<"k">>, <<"v">>}]}, peerhost => {127, 0, 0, 1}},
            timestamp => erlang:system_time(millisecond),
            extra => {self(), make_ref(), [1.5, -7, 1 bsl 80, "list"]}
        },
        #{id => <<"only-id">>},
        %% the longest MQTT 5 message expiry interval (136 years)
        #{id => <<"longest-expiry">>, expiry_interval => 4294967295}
    ],
    [ok = ?M:store_message(<<"c">>, Msg) || Msg <- Msgs],
    {ok, Got} = ?M:get_messages(<<"c">>, 0, 100),
    ?assertEqual(length(Msgs), length(Got)),
    [?assert(G =:= M, maps:get(id, M)) || {G, M} <- lists:zip(Got, Msgs)],
    ?assertEqual({ok, length(Msgs)}, ?M:count_messages(<<"c">>)),
    [?assert(pttl(<<"emqx:", K/binary, ":{c}">>) > 4294967295000 - 60000) || K <- [<<"q">>, <<"qx">>, <<"qm">>, <<"qb">>]],
    %% a batch of nothing is fine and changes nothing
    ?assertEqual(ok, ?M:store_messages(<<"c">>, [])),
    ?assertEqual({ok, length(Msgs)}, ?M:count_messages(<<"c">>)).

pages_with_offsets(_Config) ->
    Msgs = msgs(<<"p">>, 25),
    ok = ?M:store_messages(<<"c">>, Msgs),
    ?assertEqual({ok, lists:sublist(Msgs, 1, 10)}, ?M:get_messages(<<"c">>, 0, 10)),
    ?assertEqual({ok, lists:sublist(Msgs, 11, 10)}, ?M:get_messages(<<"c">>, 10, 10)),
    ?assertEqual({ok, lists:sublist(Msgs, 21, 5)}, ?M:get_messages(<<"c">>, 20, 10)),
    ?assertEqual({ok, [lists:nth(8, Msgs)]}, ?M:get_messages(<<"c">>, 7, 1)),
    ?assertEqual({ok, []}, ?M:get_messages(<<"c">>, 25, 10)),
    ?assertEqual({ok, []}, ?M:get_messages(<<"c">>, 1000, 10)),
    ?assertEqual({ok, []}, ?M:get_messages(<<"c">>, 3, 0)),
    ?assertEqual({ok, []}, ?M:get_messages(<<"nobody">>, 0, 10)),
    %% acking the head shifts the pages
    ok = ?M:ack_message(<<"c">>, id(<<"p">>, 1)),
    ok = ?M:ack_message(<<"c">>, id(<<"p">>, 2)),
    ?assertEqual({ok, lists:sublist(Msgs, 3, 10)}, ?M:get_messages(<<"c">>, 0, 10)),
    %% reading does not consume
    ?assertEqual({ok, lists:sublist(Msgs, 3, 10)}, ?M:get_messages(<<"c">>, 0, 10)).

order_over_ten_thousand_messages_stored_in_batches(_Config) ->
    Msgs = msgs(<<"o">>, 10000),
    [ok = ?M:store_messages(<<"c">>, Batch) || Batch <- test_util:chunks(Msgs, 100)],
    ?assertEqual({ok, 10000}, ?M:count_messages(<<"c">>)),
    %% the largest page at once, and pages of 1000
    {ok, All} = ?M:get_messages(<<"c">>, 0, 10000),
    ?assert(All =:= Msgs),
    Paged = lists:append([
        begin
            {ok, Page} = ?M:get_messages(<<"c">>, Offset, 1000),
            ?assertEqual(1000, length(Page)),
            Page
        end
     || Offset <- lists:seq(0, 9000, 1000)
    ]),
    ?assert(Paged =:= Msgs),
    %% one batch of the largest size
    ok = ?M:delete_messages(<<"c">>),
    ok = ?M:store_messages(<<"c">>, Msgs),
    ?assertEqual({ok, Msgs}, ?M:get_messages(<<"c">>, 0, 10000)).

concurrent_writers_keep_each_writers_order(_Config) ->
    %% 20 writers of single messages and 10 writers of batches of 10, at once
    Singles = [{single, W, msgs(<<"s", (integer_to_binary(W))/binary, "-">>, 200)} || W <- lists:seq(1, 20)],
    Batches = [{batch, W, msgs(<<"b", (integer_to_binary(W))/binary, "-">>, 200)} || W <- lists:seq(1, 10)],
    test_util:pmap(
        fun
            ({single, _, Msgs}) -> [ok = ?M:store_message(<<"c">>, M) || M <- Msgs];
            ({batch, _, Msgs}) -> [ok = ?M:store_messages(<<"c">>, B) || B <- test_util:chunks(Msgs, 10)]
        end,
        Singles ++ Batches
    ),
    {ok, Queue} = ?M:get_messages(<<"c">>, 0, 10000),
    Ids = [Id || #{id := Id} <- Queue],
    ?assertEqual(6000, length(Ids)),
    ?assertEqual(6000, length(lists:usort(Ids))),
    ?assertEqual({ok, 6000}, ?M:count_messages(<<"c">>)),
    %% every writer's messages in the order it wrote them
    [
        ?assertEqual([Id || #{id := Id} <- Msgs], [Id || Id <- Ids, is_from(Id, Msgs)], {Kind, W})
     || {Kind, W, Msgs} <- Singles ++ Batches
    ],
    %% a batch is queued in one piece, never interleaved with other writers
    Positions = maps:from_list(lists:zip(Ids, lists:seq(1, 6000))),
    [
        begin
            [First | _] = [maps:get(Id, Positions) || #{id := Id} <- Batch],
            ?assertEqual(lists:seq(First, First + 9), [maps:get(Id, Positions) || #{id := Id} <- Batch])
        end
     || {batch, _, Msgs} <- Batches, Batch <- test_util:chunks(Msgs, 10)
    ].

is_from(Id, [#{id := First} | _]) ->
    %% ids are <<Prefix, N>>: same writer if the prefix up to the last '-' matches
    prefix(Id) =:= prefix(First).

prefix(Id) ->
    [P, _] = binary:split(Id, <<"-">>),
    P.

storing_a_message_twice_keeps_one_in_its_place(_Config) ->
    [A, B, C, D] = [#{id => Id, payload => Id} || Id <- [<<"a">>, <<"b">>, <<"c">>, <<"d">>]],
    ok = ?M:store_messages(<<"c">>, [A, B, C]),
    %% a retry of b (here with other content) is no new message and moves nothing
    ok = ?M:store_message(<<"c">>, B#{payload => <<"second">>}),
    ?assertEqual({ok, [A, B, C]}, ?M:get_messages(<<"c">>, 0, 10)),
    %% also within one batch, and for a message queued by an earlier batch
    ok = ?M:store_messages(<<"c">>, [D, D#{payload => <<"again">>}, A]),
    ?assertEqual({ok, [A, B, C, D]}, ?M:get_messages(<<"c">>, 0, 10)),
    ?assertEqual({ok, 4}, ?M:count_messages(<<"c">>)),
    %% once acked, the same id is a new message at the end
    ok = ?M:ack_message(<<"c">>, <<"a">>),
    ok = ?M:store_message(<<"c">>, A),
    ?assertEqual({ok, [B, C, D, A]}, ?M:get_messages(<<"c">>, 0, 10)).

acks_in_any_order_and_unknown_ids(_Config) ->
    Msgs = msgs(<<"k">>, 50),
    ok = ?M:store_messages(<<"c">>, Msgs),
    rand:seed(exsss, {1, 2, 3}),
    Shuffled = [M || {_, M} <- lists:sort([{rand:uniform(), M} || M <- Msgs])],
    {Acked, Kept} = lists:split(25, Shuffled),
    [ok = ?M:ack_message(<<"c">>, Id) || #{id := Id} <- Acked],
    %% unknown ids, ids acked before, ids of another client's queue
    ok = ?M:store_message(<<"other">>, #{id => <<"x">>}),
    ?assertEqual(ok, ?M:ack_message(<<"c">>, <<"never-stored">>)),
    ?assertEqual(ok, ?M:ack_message(<<"c">>, maps:get(id, hd(Acked)))),
    ?assertEqual(ok, ?M:ack_message(<<"c">>, <<"x">>)),
    ?assertEqual(ok, ?M:ack_message(<<"nobody">>, <<"x">>)),
    ?assertEqual({ok, [M || M <- Msgs, lists:member(M, Kept)]}, ?M:get_messages(<<"c">>, 0, 100)),
    ?assertEqual({ok, 25}, ?M:count_messages(<<"c">>)),
    ?assertEqual({ok, [#{id => <<"x">>}]}, ?M:get_messages(<<"other">>, 0, 10)),
    %% acking the rest leaves no message body and no queue behind
    [ok = ?M:ack_message(<<"c">>, Id) || #{id := Id} <- lists:reverse(Kept)],
    ?assertEqual({ok, 0}, ?M:count_messages(<<"c">>)),
    ?assertEqual({ok, []}, ?M:get_messages(<<"c">>, 0, 100)),
    ?assertEqual([], keys(<<"emqx:qb:{c}">>)),
    ?assertEqual([], keys(<<"emqx:q:{c}">>) ++ keys(<<"emqx:qx:{c}">>)).

count_and_queue_info(_Config) ->
    ?assertEqual({ok, #{len => 0, dropped => 0, oldest_at => undefined}}, ?M:queue_info(<<"c">>)),
    ?assertEqual({ok, 0}, ?M:count_messages(<<"c">>)),
    ok = ?M:store_message(<<"c">>, #{id => <<"m1">>}),
    timer:sleep(20),
    ok = ?M:store_messages(<<"c">>, [#{id => <<"m2">>}, #{id => <<"m3">>}]),
    {ok, #{len := 3, dropped := 0, oldest_at := First}} = ?M:queue_info(<<"c">>),
    %% Redis's clock and this VM's are the same machine clock
    ?assert(abs(erlang:system_time(millisecond) - First) < 5000),
    ?assertEqual({ok, 3}, ?M:count_messages(<<"c">>)),
    ok = ?M:ack_message(<<"c">>, <<"m1">>),
    {ok, #{len := 2, oldest_at := Second}} = ?M:queue_info(<<"c">>),
    ?assert(Second >= First + 20, {First, Second}),
    %% acking a later message does not change the oldest
    ok = ?M:ack_message(<<"c">>, <<"m3">>),
    ?assertEqual({ok, #{len => 1, dropped => 0, oldest_at => Second}}, ?M:queue_info(<<"c">>)),
    ok = ?M:ack_message(<<"c">>, <<"m2">>),
    ?assertMatch({ok, #{len := 0, oldest_at := undefined}}, ?M:queue_info(<<"c">>)).

delete_removes_the_clients_queue_only(_Config) ->
    ok = ?M:store_messages(<<"c1">>, msgs(<<"a">>, 30)),
    ok = ?M:store_messages(<<"c2">>, msgs(<<"b">>, 20)),
    ?assertEqual(ok, ?M:delete_messages(<<"c1">>)),
    ?assertEqual({ok, 0}, ?M:count_messages(<<"c1">>)),
    ?assertEqual({ok, []}, ?M:get_messages(<<"c1">>, 0, 100)),
    ?assertEqual({ok, #{len => 0, dropped => 0, oldest_at => undefined}}, ?M:queue_info(<<"c1">>)),
    ?assertEqual([], keys(<<"*{c1}*">>)),
    ?assertEqual({ok, msgs(<<"b">>, 20)}, ?M:get_messages(<<"c2">>, 0, 100)),
    ?assertEqual(ok, ?M:delete_messages(<<"c1">>)),
    ?assertEqual(ok, ?M:delete_messages(<<"nobody">>)),
    %% a deleted queue starts anew
    ok = ?M:store_message(<<"c1">>, #{id => <<"new">>}),
    ?assertEqual({ok, [#{id => <<"new">>}]}, ?M:get_messages(<<"c1">>, 0, 100)).

per_message_expiry_reclaims_memory(_Config) ->
    %% client a: 50 short messages between 10 that live for a day;
    %% client b: short messages only
    Mixed = lists:append([
        [#{id => id(<<"short">>, I), expiry_interval => 1} || I <- lists:seq(5 * N + 1, 5 * N + 5)] ++
            [#{id => id(<<"long">>, N + 1)}]
     || N <- lists:seq(0, 9)
    ]),
    Long = [M || #{id := <<"long", _/binary>>} = M <- Mixed],
    ok = ?M:store_messages(<<"a">>, Mixed),
    [ok = ?M:store_message(<<"b">>, #{id => id(<<"short">>, I), expiry_interval => 1}) || I <- lists:seq(1, 20)],
    ?assertEqual({ok, 60}, ?M:count_messages(<<"a">>)),
    ?assertEqual({ok, 4 + 4}, emqx_redis_storage:q([<<"DBSIZE">>])),
    %% the queue keys live as long as their last message, and at most an
    %% eighth of its ttl longer
    ?assert(pttl(<<"emqx:q:{a}">>) > 86000000),
    ?assert(pttl(<<"emqx:qb:{a}">>) > 86000000),
    ?assert(pttl(<<"emqx:qb:{a}">>) =< 86400000 + 60000),
    ?assert(pttl(<<"emqx:qm:{b}">>) =< 1125),
    ?assert(pttl(<<"emqx:qb:{b}">>) =< 1125),
    %% Redis reclaims b's whole queue by itself: DBSIZE counts keys that
    %% expired but are not reclaimed yet
    ok = test_util:wait_until(fun() -> emqx_redis_storage:q([<<"DBSIZE">>]) =:= {ok, 4} end, 15000),
    ?assertEqual([], keys(<<"*{b}*">>)),
    %% a's expired bodies go when a script next meets its queue
    ?assertEqual({ok, 60}, emqx_redis_storage:q([<<"HLEN">>, <<"emqx:qb:{a}">>])),
    ?assertEqual({ok, 10}, ?M:count_messages(<<"a">>)),
    ?assertEqual({ok, 10}, emqx_redis_storage:q([<<"HLEN">>, <<"emqx:qb:{a}">>])),
    ?assertEqual({ok, Long}, ?M:get_messages(<<"a">>, 0, 100)),
    ?assertEqual({ok, 0}, ?M:count_messages(<<"b">>)),
    ?assertEqual({ok, []}, ?M:get_messages(<<"b">>, 0, 100)),
    %% the expired ids are gone from the queue itself, not only hidden
    ?assertEqual({ok, 10}, emqx_redis_storage:q([<<"ZCARD">>, <<"emqx:q:{a}">>])),
    ?assertEqual({ok, 10}, emqx_redis_storage:q([<<"ZCARD">>, <<"emqx:qx:{a}">>])).

awkward_client_and_message_ids(_Config) ->
    ClientIds = [<<"{">>, <<"}">>, <<"a}b{c">>, <<"%7B">>, <<":">>, <<"客户端"/utf8>>, <<0>>, <<"*">>],
    MsgIds = [<<":">>, <<"{x}">>, <<"}{">>, <<"*">>, <<0, 255>>, <<"a:b:c">>, binary:copy(<<"i">>, 65535)],
    Msgs = [#{id => Id, payload => Id} || Id <- MsgIds],
    [ok = ?M:store_messages(C, Msgs) || C <- ClientIds],
    [?assertEqual({ok, Msgs}, ?M:get_messages(C, 0, 100)) || C <- ClientIds],
    [ok = ?M:ack_message(C, <<"{x}">>) || C <- ClientIds],
    [?assertEqual({ok, length(Msgs) - 1}, ?M:count_messages(C)) || C <- ClientIds],
    [ok = ?M:delete_messages(C) || C <- ClientIds],
    ?assertEqual({ok, 0}, emqx_redis_storage:q([<<"DBSIZE">>])).

invalid_input_is_refused(_Config) ->
    Good = #{id => <<"m">>},
    BadClients = [<<>>, binary:copy(<<"x">>, 65536), atom_id, "list-id", 123],
    lists:foreach(
        fun(C) ->
            E = {error, {invalid_client_id, C}},
            ?assertEqual(E, ?M:store_message(C, Good)),
            ?assertEqual(E, ?M:store_messages(C, [Good])),
            ?assertEqual(E, ?M:get_messages(C, 0, 10)),
            ?assertEqual(E, ?M:ack_message(C, <<"m">>)),
            ?assertEqual(E, ?M:delete_messages(C)),
            ?assertEqual(E, ?M:count_messages(C)),
            ?assertEqual(E, ?M:queue_info(C))
        end,
        BadClients
    ),
    BadMsgs = [
        {#{payload => <<"no id">>}, {invalid_message, {id, missing}}},
        {#{id => atom}, {invalid_message, {id, atom}}},
        {#{id => 42}, {invalid_message, {id, 42}}},
        {#{id => "list"}, {invalid_message, {id, "list"}}},
        {#{id => <<>>}, {invalid_message, {id, <<>>}}},
        {#{id => binary:copy(<<"i">>, 65536)}, {invalid_message, {id, binary:copy(<<"i">>, 65536)}}},
        {#{id => <<"m">>, expiry_interval => 0}, {invalid_message, {expiry_interval, 0}}},
        {#{id => <<"m">>, expiry_interval => -1}, {invalid_message, {expiry_interval, -1}}},
        {#{id => <<"m">>, expiry_interval => 1.5}, {invalid_message, {expiry_interval, 1.5}}},
        {#{id => <<"m">>, expiry_interval => <<"1">>}, {invalid_message, {expiry_interval, <<"1">>}}},
        {#{id => <<"m">>, expiry_interval => 1 bsl 32}, {invalid_message, {expiry_interval, 1 bsl 32}}},
        {<<"not a map">>, {invalid_message, <<"not a map">>}},
        {[{id, <<"m">>}], {invalid_message, [{id, <<"m">>}]}}
    ],
    lists:foreach(
        fun({Msg, Reason}) ->
            ?assertEqual({error, Reason}, ?M:store_message(<<"c">>, Msg)),
            %% one bad message refuses the whole batch
            ?assertEqual({error, Reason}, ?M:store_messages(<<"c">>, [Good, Msg, #{id => <<"n">>}]))
        end,
        BadMsgs
    ),
    ?assertEqual({error, {invalid_batch, Good}}, ?M:store_messages(<<"c">>, Good)),
    ?assertEqual({error, {invalid_batch, [Good | Good]}}, ?M:store_messages(<<"c">>, [Good | Good])),
    TooMany = msgs(<<"t">>, 10001),
    ?assertEqual({error, {batch_too_large, #{count => 10001, max => 10000}}}, ?M:store_messages(<<"c">>, TooMany)),
    [
        ?assertMatch({error, {invalid_page, _}}, ?M:get_messages(<<"c">>, Offset, Limit))
     || {Offset, Limit} <- [{-1, 10}, {0, -1}, {0, 10001}, {foo, 10}, {0, 1.0}, {1 bsl 64, 1}]
    ],
    [?assertEqual({error, {invalid_message_id, Id}}, ?M:ack_message(<<"c">>, Id)) || Id <- [<<>>, atom, 1, "m"]],
    %% nothing was written by any of it
    ?assertEqual({ok, []}, emqx_redis_storage:q([<<"KEYS">>, <<"*">>])).

too_large_messages_and_batches_are_refused(_Config) ->
    Big = #{id => <<"big">>, payload => binary:copy(<<"x">>, ?MAX_SIZE)},
    {error, {too_large, #{id := <<"big">>, max := ?MAX_SIZE, size := Size}}} = ?M:store_message(<<"c">>, Big),
    ?assert(Size > ?MAX_SIZE),
    ?assertMatch({error, {too_large, #{id := <<"big">>}}}, ?M:store_messages(<<"c">>, [#{id => <<"small">>}, Big])),
    %% just below the limit is fine
    Fits = Big#{payload => binary:copy(<<"x">>, ?MAX_SIZE - 100)},
    ok = ?M:store_message(<<"c">>, Fits),
    ?assertEqual({ok, [Fits]}, ?M:get_messages(<<"c">>, 0, 10)),
    %% a batch beyond 8 MiB in all is refused as a whole
    Many = [Fits#{id => id(<<"many">>, I)} || I <- lists:seq(1, 40)],
    ?assertMatch(
        {error, {batch_too_large, #{bytes := B, max := 8388608}}} when B > 8388608,
        ?M:store_messages(<<"c">>, Many)
    ),
    ?assertEqual({ok, 1}, ?M:count_messages(<<"c">>)).

%% EMQX's default mqtt.max_packet_size is 1 MiB: the largest PUBLISH it
%% admits carries 1,048,559 bytes of payload (a short topic, a packet id,
%% no properties). As EMQX hands it over (its message with topic, from,
%% flags, headers and timestamp), it stores with the default settings.
largest_publish_emqx_admits_stores_by_default(Config) ->
    {ok, Client} = emqx_redis_storage:connect(#{
        redis => #{servers => redis_test_server:address(?config(redis, Config))}
    }),
    Msg = #{
        id => crypto:strong_rand_bytes(16),
        qos => 1,
        from => <<"publisher-with-a-long-client-id-0123456789">>,
        flags => #{dup => false, retain => false},
        headers => #{
            peerhost => {127, 0, 0, 1},
            peername => {{127, 0, 0, 1}, 54321},
            proto_ver => 5,
            protocol => mqtt,
            username => <<"user">>,
            properties => #{}
        },
        topic => <<"t/12">>,
        payload => crypto:strong_rand_bytes(1048559),
        timestamp => erlang:system_time(millisecond),
        extra => #{}
    },
    ok = ?M:store_message(Client, <<"big-publish">>, Msg),
    ?assertEqual({ok, [Msg]}, ?M:get_messages(Client, <<"big-publish">>, 0, 1)),
    ok = ?M:delete_messages(Client, <<"big-publish">>).

bad_data_in_redis_is_an_error_not_a_crash(_Config) ->
    ok = ?M:store_messages(<<"c">>, [#{id => <<"good">>}, #{id => <<"bad">>}]),
    %% somebody overwrote a body: a valid header, but no term after it
    {ok, 0} = emqx_redis_storage:q([<<"HSET">>, <<"emqx:qb:{c}">>, <<"bad">>, <<0:64, "garbage">>]),
    ?assertMatch(
        {error, {corrupt, #{kind := message, detail := <<"bad: not a term">>}}}, ?M:get_messages(<<"c">>, 0, 10)
    ),
    ?assertEqual({ok, [#{id => <<"good">>}]}, ?M:get_messages(<<"c">>, 0, 1)),
    %% the operator's way out: ack it
    ok = ?M:ack_message(<<"c">>, <<"bad">>),
    ?assertEqual({ok, [#{id => <<"good">>}]}, ?M:get_messages(<<"c">>, 0, 10)),
    %% shorter than the header
    {ok, 0} = emqx_redis_storage:q([<<"HSET">>, <<"emqx:qb:{c}">>, <<"good">>, <<"abc">>]),
    ?assertMatch({error, {corrupt, #{kind := message}}}, ?M:get_messages(<<"c">>, 0, 10)),
    %% a queue key of the wrong type
    {ok, <<"OK">>} = emqx_redis_storage:q([<<"SET">>, <<"emqx:q:{w}">>, <<"x">>]),
    ?assertMatch({error, {corrupt, #{kind := queue}}}, ?M:store_message(<<"w">>, #{id => <<"m">>})),
    ?assertMatch({error, {corrupt, #{kind := queue}}}, ?M:get_messages(<<"w">>, 0, 10)),
    ?assertMatch({error, {corrupt, #{kind := queue}}}, ?M:queue_info(<<"w">>)).

redis_paused_gives_timeout_within_deadline(Config) ->
    Redis = ?config(redis, Config),
    ok = ?M:store_message(<<"c">>, #{id => <<"before">>}),
    ok = redis_test_server:pause(Redis),
    try
        {Micros, Result} = timer:tc(fun() -> ?M:store_message(<<"c">>, #{id => <<"during">>}) end),
        ?assertEqual({error, timeout}, Result),
        ?assert(Micros < 3000000),
        ?assertEqual({error, timeout}, ?M:get_messages(<<"c">>, 0, 10)),
        ?assertEqual({error, timeout}, ?M:ack_message(<<"c">>, <<"before">>))
    after
        redis_test_server:resume(Redis)
    end,
    %% no late reply is left in the mailbox
    timer:sleep(100),
    ?assertEqual({messages, []}, process_info(self(), messages)),
    %% the writes that timed out may or may not have happened; the store works
    ok = test_util:wait_ok(fun() -> ?M:store_message(<<"c">>, #{id => <<"after">>}) end, 5000),
    {ok, Msgs} = ?M:get_messages(<<"c">>, 0, 10),
    ?assertEqual(<<"after">>, maps:get(id, lists:last(Msgs))).

%%--------------------------------------------------------------------
%% group default_ttl: persistence.message_ttl = 1 s

default_ttl_expires_messages_and_queues(_Config) ->
    Keeper = #{id => <<"keeper">>, expiry_interval => 3600},
    ok = ?M:store_messages(<<"x">>, msgs(<<"d">>, 15) ++ [Keeper] ++ msgs(<<"e">>, 15)),
    ok = ?M:store_messages(<<"y">>, msgs(<<"d">>, 30)),
    ?assertEqual({ok, 31}, ?M:count_messages(<<"x">>)),
    ?assert(pttl(<<"emqx:qb:{y}">>) =< 1125),
    ?assert(pttl(<<"emqx:q:{x}">>) > 3500000),
    %% without reading: only x's queue keys are left
    ok = test_util:wait_until(fun() -> emqx_redis_storage:q([<<"DBSIZE">>]) =:= {ok, 4} end, 15000),
    ?assertEqual(
        {ok, 0},
        emqx_redis_storage:q([<<"EXISTS">>, <<"emqx:q:{y}">>, <<"emqx:qx:{y}">>, <<"emqx:qm:{y}">>, <<"emqx:qb:{y}">>])
    ),
    ?assertEqual({ok, [Keeper]}, ?M:get_messages(<<"x">>, 0, 100)),
    ?assertEqual({ok, 1}, ?M:count_messages(<<"x">>)),
    ?assertEqual({ok, #{len => 0, dropped => 0, oldest_at => undefined}}, ?M:queue_info(<<"y">>)).

%%--------------------------------------------------------------------
%% group queue_limit: persistence.max_queue_len = 5

drop_oldest_at_the_limit(_Config) ->
    Msgs = msgs(<<"m">>, 30),
    [ok = ?M:store_message(<<"c">>, M) || M <- lists:sublist(Msgs, 3)],
    ok = ?M:store_messages(<<"c">>, lists:sublist(Msgs, 4, 4)),
    ?assertEqual({ok, lists:sublist(Msgs, 3, 5)}, ?M:get_messages(<<"c">>, 0, 100)),
    ?assertMatch({ok, #{len := 5, dropped := 2}}, ?M:queue_info(<<"c">>)),
    [ok = ?M:store_message(<<"c">>, M) || M <- lists:sublist(Msgs, 8, 10)],
    ?assertEqual({ok, lists:sublist(Msgs, 13, 5)}, ?M:get_messages(<<"c">>, 0, 100)),
    ?assertMatch({ok, #{len := 5, dropped := 12}}, ?M:queue_info(<<"c">>)),
    %% a batch longer than the limit keeps its newest messages
    ok = ?M:store_messages(<<"c">>, lists:sublist(Msgs, 18, 13)),
    ?assertEqual({ok, lists:sublist(Msgs, 26, 5)}, ?M:get_messages(<<"c">>, 0, 100)),
    ?assertMatch({ok, #{len := 5, dropped := 25}}, ?M:queue_info(<<"c">>)),
    %% the dropped messages' bodies are gone: 5 bodies in the 4 queue keys
    ?assertEqual({ok, 4}, emqx_redis_storage:q([<<"DBSIZE">>])),
    ?assertEqual({ok, 5}, emqx_redis_storage:q([<<"HLEN">>, <<"emqx:qb:{c}">>])),
    %% a queued id stored again is no new message and drops nothing
    ok = ?M:store_message(<<"c">>, lists:nth(26, Msgs)),
    ?assertMatch({ok, #{len := 5, dropped := 25}}, ?M:queue_info(<<"c">>)),
    %% other clients have queues of their own
    ok = ?M:store_message(<<"other">>, #{id => <<"o">>}),
    ?assertMatch({ok, #{len := 1, dropped := 0}}, ?M:queue_info(<<"other">>)),
    ok = ?M:delete_messages(<<"c">>),
    ?assertEqual({ok, #{len => 0, dropped => 0, oldest_at => undefined}}, ?M:queue_info(<<"c">>)).

%%--------------------------------------------------------------------

id(Prefix, I) -> <<Prefix/binary, (integer_to_binary(I))/binary>>.

%% `N' distinct messages `#{id => <<Prefix, I>>, payload => ...}', I = 1..N.
msgs(Prefix, N) ->
    [#{id => id(Prefix, I), qos => 1, payload => <<"payload ", (integer_to_binary(I))/binary>>} || I <- lists:seq(1, N)].

pttl(Key) ->
    {ok, Ms} = emqx_redis_storage:q([<<"PTTL">>, Key]),
    Ms.

keys(Pattern) ->
    {ok, Keys} = emqx_redis_storage:q([<<"KEYS">>, Pattern]),
    Keys.

%% Polls every 100 ms, up to `N' times.
