%% Metrics: counted exactly for known calls, readable through metrics/0,1,
%% valid Prometheus text (checked by promtool) after every operation, and
%% connection counters that follow a Redis restart.
-module(emqx_redis_metrics_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(ST, emqx_redis_storage).
-define(S, emqx_redis_session).
-define(M, emqx_redis_message).
-define(R, emqx_redis_router).
-define(G, emqx_redis_registry).

all() ->
    [
        calls_and_errors_are_counted_exactly,
        overloaded_refusals_are_counted,
        requests_and_bytes_grow_with_calls,
        default_client_and_invalid_clients,
        slow_call_threshold_is_configured,
        prometheus_text_passes_promtool,
        reconnects_grow_after_a_redis_restart
    ].

init_per_suite(Config) ->
    [{redis, redis_test_server:start()} | Config].

end_per_suite(Config) ->
    redis_test_server:stop(?config(redis, Config)).

end_per_testcase(_Case, _Config) ->
    ok = ?ST:stop().

%% A client of its own, so that its counters hold only the test's calls.
connect(Config, Extra) ->
    connect_to(?config(redis, Config), Extra).

connect_to(Redis, Extra) ->
    Prefix = iolist_to_binary(["metrics", integer_to_list(erlang:unique_integer([positive])), ":"]),
    {ok, Client} = ?ST:connect(#{
        redis => maps:merge(#{servers => redis_test_server:address(Redis)}, maps:get(redis, Extra, #{})),
        key_prefix => Prefix,
        route_index => maps:get(route_index, Extra, local)
    }),
    {Client, Prefix}.

op(Client, Name) ->
    #{operations := #{Name := Op}} = ?ST:metrics(Client),
    Op.

%% The histogram's buckets count every answered call once.
assert_consistent(#{calls := Calls, in_flight := InFlight, latency := #{buckets := Buckets, count := Count}}) ->
    ?assertEqual(0, InFlight),
    ?assertEqual(Calls, Count),
    ?assertEqual(Calls, lists:sum([N || {_, N} <- Buckets])),
    ?assertMatch({infinity, _}, lists:last(Buckets)).

%%--------------------------------------------------------------------

%% 500 raw commands of which 7 are unknown to Redis; 110 session loads of
%% which 10 find nothing (an answer, not an error: `not_found' is a value at
%% the NIF level) and 5 meet a key of the wrong type (`corrupt').
calls_and_errors_are_counted_exactly(Config) ->
    {Client, Prefix} = connect(Config, #{}),
    Ok = [?ST:q(Client, [<<"SET">>, <<Prefix/binary, "k">>, integer_to_binary(I)]) || I <- lists:seq(1, 493)],
    ?assertEqual([{ok, <<"OK">>}], lists:usort(Ok)),
    Bad = [?ST:q(Client, [<<"NOSUCHCOMMAND">>, integer_to_binary(I)]) || I <- lists:seq(1, 7)],
    ?assertMatch([{error, {redis, _}}], lists:usort([{error, {redis, x}} || {error, {redis, _}} <- Bad])),
    ?assertEqual(7, length([E || {error, {redis, _}} = E <- Bad])),
    Ids = [<<"s", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 100)],
    [ok = ?S:save_session(Client, Id, #{id => Id}, #{}) || Id <- Ids],
    [{ok, _} = ?S:load_session(Client, Id) || Id <- Ids],
    [{error, not_found} = ?S:load_session(Client, <<"none", (integer_to_binary(I))/binary>>) || I <- lists:seq(1, 10)],
    {ok, <<"OK">>} = ?ST:q(Client, [<<"SET">>, <<Prefix/binary, "sess:{wrong}">>, <<"a string">>]),
    [{error, {corrupt, #{kind := session}}} = ?S:load_session(Client, <<"wrong">>) || _ <- lists:seq(1, 5)],
    Q = op(Client, q),
    %% The SET of the wrong-typed key is one more raw command.
    ?assertMatch(#{calls := 501, errors := #{redis := 7}}, Q),
    ?assertEqual(1, map_size(maps:get(errors, Q))),
    Load = op(Client, session_load),
    ?assertMatch(#{calls := 115, errors := #{corrupt := 5}}, Load),
    ?assertEqual(1, map_size(maps:get(errors, Load))),
    ?assertMatch(#{calls := 100, errors := #{}}, op(Client, session_save)),
    [assert_consistent(Op) || Op <- maps:values(maps:get(operations, ?ST:metrics(Client)))],
    ?assertEqual([q, session_load, session_save], lists:sort(maps:keys(maps:get(operations, ?ST:metrics(Client))))).

%% A client with room for 2 calls in flight and a frozen Redis, 50 callers:
%% 2 wait and time out, 48 are refused at once; all are counted, by kind.
overloaded_refusals_are_counted(Config) ->
    Redis = ?config(redis, Config),
    {Client, _} = connect(Config, #{redis => #{max_inflight => 2, command_timeout => 500}}),
    Parent = self(),
    ok = redis_test_server:pause(Redis),
    try
        Waiting = [spawn_link(fun() -> Parent ! {self(), ?ST:q(Client, [<<"PING">>])} end) || _ <- lists:seq(1, 2)],
        ok = test_util:wait_until(fun() -> maps:get(in_flight, op(Client, q)) =:= 2 end, 1000),
        Refused = [?ST:q(Client, [<<"PING">>]) || _ <- lists:seq(1, 48)],
        ?assertEqual([{error, overloaded}], lists:usort(Refused)),
        ?assertEqual([{error, timeout}], lists:usort([receive {Pid, Reply} -> Reply end || Pid <- Waiting])),
        ok = test_util:wait_until(fun() -> maps:get(in_flight, op(Client, q)) =:= 0 end, 2000)
    after
        redis_test_server:resume(Redis)
    end,
    Q = op(Client, q),
    ?assertMatch(#{calls := 50, errors := #{overloaded := 48, timeout := 2}}, Q),
    ?assertEqual(2, map_size(maps:get(errors, Q))),
    assert_consistent(Q),
    %% Refusals take no time; the two that waited took the command timeout.
    #{latency := #{buckets := Buckets}} = Q,
    ?assertEqual(48, lists:sum([N || {Bound, N} <- Buckets, Bound =< 100000])),
    ?assertEqual(2, lists:sum([N || {Bound, N} <- Buckets, Bound >= 500000])).

requests_and_bytes_grow_with_calls(Config) ->
    {Client, Prefix} = connect(Config, #{redis => #{pool_size => 3}}),
    Before = ?ST:metrics(Client),
    Value = binary:copy(<<"v">>, 10000),
    [{ok, <<"OK">>} = ?ST:q(Client, [<<"SET">>, <<Prefix/binary, "big">>, Value]) || _ <- lists:seq(1, 10)],
    [{ok, Value} = ?ST:q(Client, [<<"GET">>, <<Prefix/binary, "big">>]) || _ <- lists:seq(1, 10)],
    After = ?ST:metrics(Client),
    Grew = fun(Key) -> maps:get(Key, After) - maps:get(Key, Before) end,
    ?assert(Grew(requests) >= 20, {Before, After}),
    ?assert(Grew(bytes_sent) >= 10 * 10000, {Before, After}),
    ?assert(Grew(bytes_received) >= 10 * 10000, {Before, After}),
    %% The pool and the route index's event subscription.
    ?assertEqual(3 + 1, maps:get(connections, After)),
    ?assertMatch(#{reconnects := 0, sentinel_failovers := 0, cluster_topology_refreshes := 0}, After),
    ?assertEqual(redis_test_server:address(?config(redis, Config)), maps:get(server, After)).

default_client_and_invalid_clients(Config) ->
    ?assertEqual({error, not_started}, ?ST:metrics()),
    ?assertEqual({error, not_started}, ?ST:prometheus()),
    ok = ?ST:start(#{redis => #{servers => redis_test_server:address(?config(redis, Config))}}),
    {ok, <<"PONG">>} = ?ST:q([<<"PING">>]),
    ?assertMatch(#{operations := #{q := #{calls := N}}} when N >= 1, ?ST:metrics()),
    ?assertMatch(<<"# HELP emqx_redis_storage_", _/binary>>, iolist_to_binary(?ST:prometheus())),
    [
        ?assertEqual({error, {invalid_client, Bad}}, ?ST:F(Bad))
     || Bad <- [x, #{}, make_ref()], F <- [metrics, prometheus]
    ].

slow_call_threshold_is_configured(Config) ->
    Servers = redis_test_server:address(?config(redis, Config)),
    [
        ?assertMatch(
            {error, {invalid_config, <<"redis.slow_call_threshold">>, _}},
            ?ST:connect(#{redis => #{servers => Servers, slow_call_threshold => Bad}})
        )
     || Bad <- [0, -1, 3600001, <<"2h">>, fast]
    ],
    {ok, Client} = ?ST:connect(#{redis => #{servers => Servers, slow_call_threshold => <<"250ms">>}}),
    ?assertEqual({ok, <<"PONG">>}, ?ST:q(Client, [<<"PING">>])).

%% Every operation once (local index and Lua index), then promtool, the
%% Prometheus project's own checker, reads the text.
prometheus_text_passes_promtool(Config) ->
    Promtool = os:find_executable("promtool"),
    ?assertNotEqual(false, Promtool, "promtool missing: apt-get install prometheus (scripts/install-deps.sh)"),
    lists:foreach(
        fun(Index) ->
            {Client, Prefix} = connect(Config, #{route_index => Index}),
            every_operation(Client, Prefix),
            Text = iolist_to_binary(?ST:prometheus(Client)),
            File = filename:join(?config(priv_dir, Config), atom_to_list(Index) ++ ".prom"),
            ok = file:write_file(File, Text),
            {Status, Out} = test_util:run("sh", ["-c", "promtool check metrics < '" ++ File ++ "'"], #{}),
            ct:log("~ts~n~ts", [Text, Out]),
            ?assertEqual({0, ""}, {Status, Out}),
            Ops = maps:keys(maps:get(operations, ?ST:metrics(Client))),
            [
                ?assertNotEqual(
                    nomatch, binary:match(Text, <<"operation=\"", (atom_to_binary(Op))/binary, "\"">>), Op
                )
             || Op <- Ops
            ],
            ?assertEqual(lists:sort(expected_operations(Index)), lists:sort(Ops)),
            %% Each limiter's series, its name escaped in the label.
            ?assertMatch(
                #{<<"conn \"quoted\"">> := #{checks := 2, limited := 1, errors := 0, local := 0}},
                maps:get(limiters, ?ST:metrics(Client))
            ),
            Limited = <<"emqx_redis_storage_limiter_limited_total{limiter=\"conn \\\"quoted\\\"\",server=">>,
            ?assertNotEqual(nomatch, binary:match(Text, Limited))
        end,
        [local, redis]
    ).

is_index_local(Client) ->
    maps:get(route_index, emqx_redis_storage_client:info(Client)) =:= local.

expected_operations(Index) ->
    Match =
        case Index of
            local -> [];
            redis -> [route_match_redis]
        end,
    Match ++
        [
            q, session_save, session_load, session_info, session_count, session_list, session_delete,
            lease_acquire, lease_renew, lease_release, channel_register, channel_lookup,
            channel_unregister, channel_cleanup, message_store, message_get, message_ack,
            message_count, message_info, message_delete, route_add, route_lookup, route_filters,
            route_delete, route_cleanup, limiter_check, limiter_reset
        ].

every_operation(Client, Prefix) ->
    Id = <<"every">>,
    {ok, _} = ?ST:q(Client, [<<"SET">>, <<Prefix/binary, "raw">>, <<"1">>]),
    {error, {redis, _}} = ?ST:q(Client, [<<"NOSUCHCOMMAND">>]),
    ok = ?S:save_session(Client, Id, #{a => 1}, #{}),
    {ok, _} = ?S:load_session(Client, Id),
    {ok, _} = ?S:session_info(Client, Id),
    {ok, _} = ?S:count_sessions(Client),
    {ok, _} = ?S:list_sessions(Client, 10, 0),
    {ok, Fence} = ?S:acquire_lease(Client, Id, <<"owner">>, 5000),
    ok = ?S:renew_lease(Client, Id, Fence, 5000),
    ok = ?S:release_lease(Client, Id, Fence),
    ok = ?G:register_channel(Client, Id, node()),
    {ok, _} = ?G:lookup_channel(Client, Id),
    ok = ?G:unregister_channel(Client, Id, node()),
    {ok, _} = ?G:cleanup_node(Client, 'gone@nowhere'),
    ok = ?M:store_message(Client, Id, #{id => <<"m1">>, payload => <<"p">>}),
    {ok, [_]} = ?M:get_messages(Client, Id, 0, 10),
    ok = ?M:ack_message(Client, Id, <<"m1">>),
    {ok, 0} = ?M:count_messages(Client, Id),
    {ok, _} = ?M:queue_info(Client, Id),
    ok = ?M:delete_messages(Client, Id),
    ok = ?R:add_route(Client, <<"a/+">>, node()),
    {ok, _} = ?R:lookup_routes(Client, <<"a/+">>),
    {ok, _} = ?R:topics(Client),
    ok = test_util:wait_until(fun() -> ?R:index_ready(Client) orelse not is_index_local(Client) end, 10000),
    {ok, _} = ?R:match_routes(Client, <<"a/b">>),
    ok = ?R:delete_route(Client, <<"a/+">>, node()),
    {ok, _} = ?R:cleanup_node(Client, 'gone@nowhere'),
    ok = emqx_redis_limiter:define(Client, <<"conn \"quoted\"">>, #{rate => 1, burst => 1}),
    {ok, 0} = emqx_redis_limiter:check(Client, <<"conn \"quoted\"">>, Id, 1),
    {error, {limited, _}} = emqx_redis_limiter:check(Client, <<"conn \"quoted\"">>, Id, 1),
    ok = emqx_redis_limiter:reset(Client, <<"conn \"quoted\"">>, Id),
    ok = ?S:delete_session(Client, Id).

%% After Redis is killed and started again, the pool dials again (counted
%% as reconnects), the route index loads again, and the same connections
%% are open as before.
reconnects_grow_after_a_redis_restart(_Config) ->
    Redis = redis_test_server:start(),
    try
        {Client, _} = connect_to(Redis, #{redis => #{pool_size => 2, command_timeout => 1000, connect_timeout => 300}}),
        ok = test_util:wait_until(fun() -> ?R:index_ready(Client) end, 10000),
        Before = ?ST:metrics(Client),
        ?assertMatch(#{reconnects := 0, connections := 3, route_index_resyncs := 1}, Before),
        ok = redis_test_server:restart(Redis),
        ok = test_util:wait_until(fun() -> ?ST:q(Client, [<<"PING">>]) =:= {ok, <<"PONG">>} end, 5000),
        %% a connection dials again on its next use; 64 consecutive calls
        %% of a scheduler thread take one, so calls go on until both have
        ok = test_util:wait_until(
            fun() ->
                [{ok, <<"PONG">>} = ?ST:q(Client, [<<"PING">>]) || _ <- lists:seq(1, 64)],
                maps:get(reconnects, ?ST:metrics(Client)) >= 2
            end,
            10000
        ),
        ok = test_util:wait_until(fun() -> ?R:index_ready(Client) end, 10000),
        After = ?ST:metrics(Client),
        ?assertMatch(#{reconnects := 2, connections := 3}, After),
        ?assert(maps:get(route_index_resyncs, After) >= 2, After)
    after
        redis_test_server:stop(Redis)
    end.
