%% Group commit: concurrent calls of one script go to Redis as one script
%% call (save_session, store_message(s), ack_message, add_route). Each
%% caller still gets its own answer: its reply, or its own error when its
%% key is corrupt or its fence stale, while the others of its group succeed.
%% A lone caller goes at once, alone.
%%
%% To make groups certain, a case first keeps Redis busy with a slow script
%% from another client: the calls made meanwhile queue up in the library and
%% go as one group when Redis is free again.
-module(emqx_redis_group_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(S, emqx_redis_session).
-define(M, emqx_redis_message).
-define(R, emqx_redis_router).
-define(CALLS, 200).

all() ->
    [
        a_lone_caller_goes_alone,
        concurrent_saves_each_get_their_own_reply,
        a_corrupt_session_fails_only_its_caller,
        a_stale_fence_fails_only_its_caller,
        queue_calls_in_groups,
        a_corrupt_queue_fails_only_its_caller,
        routes_in_groups
    ].

init_per_suite(Config) ->
    Redis = redis_test_server:start(),
    [{redis, Redis} | Config].

end_per_suite(Config) ->
    redis_test_server:stop(?config(redis, Config)).

init_per_testcase(Case, Config) ->
    Redis = ?config(redis, Config),
    Prefix = iolist_to_binary([atom_to_list(Case), ":"]),
    Conf = #{
        redis => #{servers => redis_test_server:address(Redis), pool_size => 2},
        key_prefix => Prefix,
        route_index => redis
    },
    {ok, Cl} = emqx_redis_storage:connect(Conf),
    {ok, Blocker} = emqx_redis_storage:connect(Conf),
    [{client, Cl}, {blocker, Blocker}, {prefix, Prefix} | Config].

end_per_testcase(_Case, _Config) ->
    ok.

%%--------------------------------------------------------------------

a_lone_caller_goes_alone(Config) ->
    Cl = ?config(client, Config),
    Before = emqx_redis_storage:metrics(Cl),
    [ok = ?S:save_session(Cl, id(I), I, #{}) || I <- lists:seq(1, 100)],
    [ok = ?M:store_message(Cl, id(I), msg(<<"m">>)) || I <- lists:seq(1, 100)],
    [ok = ?M:ack_message(Cl, id(I), <<"m">>) || I <- lists:seq(1, 100)],
    After = emqx_redis_storage:metrics(Cl),
    ?assertEqual(0, grew(group_commits, Before, After)),
    ?assertEqual(0, grew(grouped_calls, Before, After)),
    [?assertEqual({ok, I}, ?S:load_session(Cl, id(I))) || I <- lists:seq(1, 100)].

concurrent_saves_each_get_their_own_reply(Config) ->
    Cl = ?config(client, Config),
    Before = emqx_redis_storage:metrics(Cl),
    Results = while_busy(Config, [fun() -> ?S:save_session(Cl, id(I), {data, I}, #{}) end || I <- lists:seq(1, ?CALLS)]),
    ?assertEqual(lists:duplicate(?CALLS, ok), Results),
    grouped(Cl, Before),
    [?assertEqual({ok, {data, I}}, ?S:load_session(Cl, id(I))) || I <- lists:seq(1, ?CALLS)],
    {ok, #{node := Node}} = ?S:session_info(Cl, id(7)),
    ?assertEqual(node(), Node),
    %% saved again in a group: created_at stays, updated_at moves on
    {ok, #{created_at := Created}} = ?S:session_info(Cl, id(1)),
    ?assertEqual(lists:duplicate(?CALLS, ok),
        while_busy(Config, [fun() -> ?S:save_session(Cl, id(I), {again, I}, #{}) end || I <- lists:seq(1, ?CALLS)])),
    ?assertMatch({ok, #{created_at := Created}}, ?S:session_info(Cl, id(1))),
    ?assertEqual({ok, {again, ?CALLS}}, ?S:load_session(Cl, id(?CALLS))),
    ?assertEqual({ok, ?CALLS}, ?S:count_sessions(Cl)).

a_corrupt_session_fails_only_its_caller(Config) ->
    Cl = ?config(client, Config),
    Bad = key(Config, [<<"sess:{">>, id(100), <<"}">>]),
    {ok, _} = emqx_redis_storage:q(Cl, [<<"HSET">>, Bad, <<"created_at">>, <<"abc">>, <<"data">>, <<"x">>]),
    {ok, Dump} = emqx_redis_storage:q(Cl, [<<"DUMP">>, Bad]),
    Before = emqx_redis_storage:metrics(Cl),
    Results = while_busy(Config, [fun() -> ?S:save_session(Cl, id(I), I, #{}) end || I <- lists:seq(1, ?CALLS)]),
    grouped(Cl, Before),
    {Others, [BadResult | Rest]} = lists:split(99, Results),
    ?assertMatch({error, {corrupt, #{kind := session}}}, BadResult),
    ?assertEqual(lists:duplicate(?CALLS - 1, ok), Others ++ Rest),
    ?assertEqual({ok, Dump}, emqx_redis_storage:q(Cl, [<<"DUMP">>, Bad])),
    ?assertEqual({ok, 99}, ?S:load_session(Cl, id(99))),
    ?assertEqual({ok, 101}, ?S:load_session(Cl, id(101))).

a_stale_fence_fails_only_its_caller(Config) ->
    Cl = ?config(client, Config),
    Id = <<"fenced">>,
    {ok, Old} = ?S:acquire_lease(Cl, Id, 'a@h', 60000),
    ok = ?S:release_lease(Cl, Id, Old),
    {ok, New} = ?S:acquire_lease(Cl, Id, 'b@h', 60000),
    ok = ?S:save_session(Cl, Id, first, #{fence => New}),
    Before = emqx_redis_storage:metrics(Cl),
    Calls = [fun() -> ?S:save_session(Cl, id(I), I, #{fence => 1}) end || I <- lists:seq(1, 50)] ++
        [fun() -> ?S:save_session(Cl, Id, stale, #{fence => Old}) end] ++
        [fun() -> ?S:save_session(Cl, id(I), I, #{fence => 1}) end || I <- lists:seq(51, 100)],
    Results = while_busy(Config, Calls),
    grouped(Cl, Before),
    ?assertEqual(lists:duplicate(50, ok) ++ [{error, stale_fence}] ++ lists:duplicate(50, ok), Results),
    ?assertEqual({ok, first}, ?S:load_session(Cl, Id)),
    ?assertEqual({ok, 100}, ?S:load_session(Cl, id(100))).

queue_calls_in_groups(Config) ->
    Cl = ?config(client, Config),
    Before = emqx_redis_storage:metrics(Cl),
    %% one queue per caller, and one queue many callers store into
    Stored = while_busy(Config,
        [fun() -> ?M:store_message(Cl, id(I), msg(<<"a">>)) end || I <- lists:seq(1, 100)] ++
        [fun() -> ?M:store_messages(Cl, id(I), [msg(<<"b">>), msg(<<"c">>), msg(<<"a">>)]) end || I <- lists:seq(1, 100)] ++
        [fun() -> ?M:store_message(Cl, <<"shared">>, msg(integer_to_binary(I))) end || I <- lists:seq(1, 100)]),
    grouped(Cl, Before),
    ?assertEqual(lists:duplicate(300, ok), Stored),
    %% each call's messages in its order, "a" only once, where it came first
    [?assert(lists:member(ids(?M:get_messages(Cl, id(I), 0, 10)),
        [{ok, [<<"a">>, <<"b">>, <<"c">>]}, {ok, [<<"b">>, <<"c">>, <<"a">>]}]))
     || I <- lists:seq(1, 100)],
    {ok, Shared} = ids(?M:get_messages(Cl, <<"shared">>, 0, 1000)),
    ?assertEqual(lists:sort([integer_to_binary(I) || I <- lists:seq(1, 100)]), lists:sort(Shared)),
    Before2 = emqx_redis_storage:metrics(Cl),
    Acked = while_busy(Config,
        [fun() -> ?M:ack_message(Cl, id(I), <<"b">>) end || I <- lists:seq(1, 100)] ++
        [fun() -> ?M:ack_message(Cl, <<"shared">>, integer_to_binary(I)) end || I <- lists:seq(1, 50)]),
    grouped(Cl, Before2),
    ?assertEqual(lists:duplicate(150, ok), Acked),
    [?assert(lists:member(ids(?M:get_messages(Cl, id(I), 0, 10)),
        [{ok, [<<"a">>, <<"c">>]}, {ok, [<<"c">>, <<"a">>]}]))
     || I <- lists:seq(1, 100)],
    ?assertEqual({ok, 50}, ?M:count_messages(Cl, <<"shared">>)).

a_corrupt_queue_fails_only_its_caller(Config) ->
    Cl = ?config(client, Config),
    Meta = key(Config, [<<"qm:{">>, id(50), <<"}">>]),
    {ok, _} = emqx_redis_storage:q(Cl, [<<"HSET">>, Meta, <<"seq">>, <<"notanumber">>]),
    {ok, Dump} = emqx_redis_storage:q(Cl, [<<"DUMP">>, Meta]),
    Before = emqx_redis_storage:metrics(Cl),
    Results = while_busy(Config, [fun() -> ?M:store_message(Cl, id(I), msg(<<"m">>)) end || I <- lists:seq(1, 100)]),
    grouped(Cl, Before),
    {Others, [BadResult | Rest]} = lists:split(49, Results),
    ?assertMatch({error, {corrupt, #{kind := queue}}}, BadResult),
    ?assertEqual(lists:duplicate(99, ok), Others ++ Rest),
    ?assertEqual({ok, Dump}, emqx_redis_storage:q(Cl, [<<"DUMP">>, Meta])),
    ?assertEqual({ok, []}, emqx_redis_storage:q(Cl, [<<"KEYS">>, key(Config, [<<"q:{">>, id(50), <<"}">>])])),
    ?assertEqual({ok, [<<"m">>]}, ids(?M:get_messages(Cl, id(51), 0, 10))).

routes_in_groups(Config) ->
    Cl = ?config(client, Config),
    Before = emqx_redis_storage:metrics(Cl),
    Filters = [<<"g/", (integer_to_binary(I))/binary, "/+">> || I <- lists:seq(1, ?CALLS)],
    Results = while_busy(Config, [fun() -> ?R:add_route(Cl, F, 'n1@h') end || F <- Filters]),
    grouped(Cl, Before),
    ?assertEqual(lists:duplicate(?CALLS, ok), Results),
    [?assertEqual({ok, ['n1@h']}, ?R:match_routes(Cl, <<"g/", (integer_to_binary(I))/binary, "/x">>))
     || I <- [1, 77, ?CALLS]],
    %% the same route again, concurrently: added once
    ?assertEqual(lists:duplicate(20, ok), while_busy(Config, [fun() -> ?R:add_route(Cl, <<"same/#">>, 'n2@h') end || _ <- lists:seq(1, 20)])),
    ?assertEqual({ok, ['n2@h']}, ?R:match_routes(Cl, <<"same/x">>)).

%%--------------------------------------------------------------------

id(I) -> <<"client-", (integer_to_binary(I))/binary>>.

msg(Id) -> #{id => Id, topic => <<"t">>, payload => Id, qos => 1}.

key(Config, Parts) -> iolist_to_binary([?config(prefix, Config) | Parts]).

ids({ok, Msgs}) -> {ok, [Id || #{id := Id} <- Msgs]};
ids(Other) -> Other.

grew(Field, Before, After) -> maps:get(Field, After) - maps:get(Field, Before).

%% At least one script call carried the calls of several callers.
grouped(Cl, Before) ->
    After = emqx_redis_storage:metrics(Cl),
    ?assert(grew(group_commits, Before, After) >= 1, {Before, After}),
    ?assert(grew(grouped_calls, Before, After) >= 2 * grew(group_commits, Before, After), {Before, After}).

%% The calls, run concurrently while another client keeps Redis busy, so
%% that they queue up and go in groups; their results in order.
while_busy(Config, Calls) ->
    Blocker = ?config(blocker, Config),
    test_util:while_busy(fun(Command) -> emqx_redis_storage:q(Blocker, Command) end, [], Calls).
