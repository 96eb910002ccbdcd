%% The Rust side's events reach OTP logger as reports in the domain
%% [emqx_redis_storage]: a Redis killed and restarted (over TCP, and over a
%% unix socket named by a URL with the password), a Sentinel master frozen and the failover followed,
%% a dropped route-events subscription, a TLS name mismatch, a flood of
%% failing calls (rate-limited, with counts), the level filter, and no
%% password in any report.
-module(emqx_redis_log_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, groups/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([
    redis_killed_and_restarted/1,
    unix_socket_killed_and_restarted/1,
    sentinel_failover_followed/1,
    route_index_resyncs/1,
    script_reloaded_after_flush/1,
    script_loaded_once_for_many_calls/1,
    slow_call_is_reported/1,
    tls_wrong_name/1,
    flood_is_rate_limited/1,
    debug_only_at_debug_level/1,
    no_report_contains_the_password/1
]).
%% logger handler callback
-export([log/2]).

-define(PASSWORD, <<"log-suite-s3cret">>).
-define(REPORTS, emqx_redis_log_SUITE_reports).
%% The NIF's rate limit: events per name and second.
-define(PER_SECOND, 10).

all() -> [{group, all}].

%% The last case reads the reports of all the others.
groups() ->
    [
        {all, [sequence], [
            redis_killed_and_restarted,
            unix_socket_killed_and_restarted,
            sentinel_failover_followed,
            route_index_resyncs,
            script_reloaded_after_flush,
            script_loaded_once_for_many_calls,
            slow_call_is_reported,
            tls_wrong_name,
            flood_is_rate_limited,
            debug_only_at_debug_level,
            no_report_contains_the_password
        ]}
    ].

init_per_suite(Config) ->
    #{level := Level} = logger:get_primary_config(),
    ok = logger:set_primary_config(level, info),
    Holder = spawn(fun() ->
        ets:new(?REPORTS, [named_table, public, duplicate_bag]),
        receive stop -> ok end
    end),
    ok = test_util:wait_until(fun() -> ets:info(?REPORTS) =/= undefined end, 1000),
    Redis = redis_test_server:start(#{conf => ["requirepass " ++ binary_to_list(?PASSWORD)]}),
    ok = emqx_redis_storage:start(config(Redis, #{})),
    [{redis, Redis}, {holder, Holder}, {primary_level, Level} | Config].

end_per_suite(Config) ->
    ok = emqx_redis_storage:stop(),
    redis_test_server:stop(?config(redis, Config)),
    ?config(holder, Config) ! stop,
    ok = logger:set_primary_config(level, ?config(primary_level, Config)).

init_per_testcase(_Case, Config) ->
    ok = logger:add_handler(?MODULE, ?MODULE, #{
        level => all,
        filters => [{domain, {fun logger_filters:domain/2, {stop, not_equal, [emqx_redis_storage]}}}],
        config => #{pid => self()}
    }),
    Config.

end_per_testcase(_Case, _Config) ->
    ok = logger:remove_handler(?MODULE).

%% Every report of the domain: kept for the last case, and sent to the test.
log(#{level := Level, msg := {report, Report}, meta := #{domain := Domain}}, #{config := #{pid := Pid}}) ->
    ets:insert(?REPORTS, {Level, Report, Domain}),
    Pid ! {report, Level, Report};
log(_Event, _Config) ->
    ok.

config(Redis, Extra) ->
    Base = #{servers => redis_test_server:address(Redis), password => ?PASSWORD, connect_timeout => 1000},
    #{redis => maps:merge(Base, Extra)}.

%% The first report named `Msg' whose fields include `Fields', within `Ms'.
expect(Level, Msg, Fields, Ms) ->
    receive
        {report, Level, #{msg := Msg} = Report} ->
            case maps:with(maps:keys(Fields), Report) =:= Fields of
                true ->
                    ct:log("~p ~p", [Level, Report]),
                    Report;
                false ->
                    expect(Level, Msg, Fields, Ms)
            end
    after Ms ->
        ct:fail({no_report, Level, Msg, Fields})
    end.

%% Every report received within `Ms'.
collect(Ms) ->
    Until = erlang:monotonic_time(millisecond) + Ms,
    collect_until(Until, []).

collect_until(Until, Acc) ->
    Left = max(0, Until - erlang:monotonic_time(millisecond)),
    receive
        {report, Level, Report} -> collect_until(Until, [{Level, Report} | Acc])
    after Left ->
        lists:reverse(Acc)
    end.

flush() ->
    receive
        {report, _, _} -> flush()
    after 0 -> ok
    end.

ping(Client) ->
    emqx_redis_storage:q(Client, [<<"PING">>]).

%%--------------------------------------------------------------------

redis_killed_and_restarted(_Config) ->
    Redis = redis_test_server:start(#{conf => ["requirepass " ++ binary_to_list(?PASSWORD)]}),
    killed_and_restarted(Redis, redis_test_server:address(Redis), config(Redis, #{})).

%% The same over a unix socket, with the password in a redis.url.
unix_socket_killed_and_restarted(_Config) ->
    Redis = redis_test_server:start(#{unixsocket => true, conf => ["requirepass " ++ binary_to_list(?PASSWORD)]}),
    Socket = list_to_binary(redis_test_server:socket(Redis)),
    Url = <<"unix://:", ?PASSWORD/binary, "@", Socket/binary>>,
    killed_and_restarted(Redis, Socket, #{redis => #{url => Url, connect_timeout => 1000}}).

killed_and_restarted(Redis, Address, ClientConfig) ->
    try
        %% The NIF admits PER_SECOND events of a name a second: the reports
        %% of the case before (its Redis stopped) must not use up this one's.
        timer:sleep(1100),
        {ok, Client} = emqx_redis_storage:connect(ClientConfig),
        {ok, <<"PONG">>} = ping(Client),
        ok = redis_test_server:kill(Redis),
        expect(warning, <<"connection_lost">>, #{server => Address}, 5000),
        %% Another pool connection may not have noticed yet: its call is
        %% `connection_lost'; soon a call finds Redis unreachable.
        ok = test_util:wait_until(fun() -> element(1, element(2, ping(Client))) =:= connection end, 5000),
        #{reason := Why} = expect(warning, <<"breaker_open">>, #{servers => Address}, 5000),
        ?assertNotEqual(nomatch, string:find(Why, "refused")),
        ok = redis_test_server:restart(Redis),
        ok = test_util:wait_until(fun() -> ping(Client) =:= {ok, <<"PONG">>} end, 10000),
        expect(info, <<"connection_restored">>, #{server => Address}, 5000),
        #{failed_probes := N, open_ms := OpenMs} = expect(info, <<"breaker_closed">>, #{servers => Address}, 5000),
        ?assert(is_integer(N) andalso is_integer(OpenMs))
    after
        redis_test_server:stop(Redis)
    end.

sentinel_failover_followed(_Config) ->
    #{master := Master, replica := Replica} = Sentinel = redis_test_server:start_sentinel(#{}),
    try
        ok = test_util:wait_until(fun() -> redis_test_server:replica_in_sync(Replica) end, 20000),
        {ok, Client} = emqx_redis_storage:connect(#{
            redis => #{
                redis_type => sentinel,
                sentinel => <<"mymaster">>,
                servers => [redis_test_server:address(S) || S <- maps:get(sentinels, Sentinel)],
                connect_timeout => 1000,
                command_timeout => 500
            }
        }),
        {ok, <<"OK">>} = emqx_redis_storage:q(Client, [<<"SET">>, <<"k">>, <<"v">>]),
        %% Frozen, not killed: no connection breaks, calls time out, and the
        %% client asks the sentinels after a timeout.
        ok = redis_test_server:pause(Master),
        ok = test_util:wait_until(
            fun() -> emqx_redis_storage:q(Client, [<<"SET">>, <<"k">>, <<"w">>]) =:= {ok, <<"OK">>} end, 30000
        ),
        expect(
            warning,
            <<"sentinel_failover_followed">>,
            #{
                master_name => <<"mymaster">>,
                old_master => redis_test_server:address(Master),
                new_master => redis_test_server:address(Replica)
            },
            5000
        )
    after
        redis_test_server:stop_sentinel(Sentinel)
    end.

%% The route-events subscription dropped by Redis, then an event that
%% reveals a gap: each makes the local index load every route again.
route_index_resyncs(Config) ->
    Redis = ?config(redis, Config),
    {ok, Client} = emqx_redis_storage:connect(config(Redis, #{})),
    ok = test_util:wait_until(fun() -> emqx_redis_router:index_ready(Client) end, 10000),
    ok = emqx_redis_router:add_route(Client, <<"log/suite">>, node()),
    flush(),
    Killed = redis_cli(Redis, ["CLIENT", "KILL", "TYPE", "pubsub"]),
    ?assertNotEqual("0", Killed),
    #{routes := Routes, elapsed_ms := Ms, cause := Cause} =
        expect(warning, <<"route_index_resync">>, #{reason => <<"pubsub_lost">>}, 10000),
    ?assert(Routes >= 1),
    ?assert(is_integer(Ms) andalso Ms >= 0),
    ?assert(is_binary(Cause)),
    ok = test_util:wait_until(fun() -> emqx_redis_router:index_ready(Client) end, 10000),
    %% an event far ahead of every shard's version: one was missed
    Forged = iolist_to_binary(["0 999999 +forged", 0, "evil@h"]),
    {ok, _} = emqx_redis_storage:q(Client, [<<"PUBLISH">>, <<"emqx:rt:events">>, Forged]),
    expect(warning, <<"route_index_resync">>, #{reason => <<"gap">>, routes => Routes}, 10000),
    ok = emqx_redis_router:delete_route(Client, <<"log/suite">>, node()).

%% A Redis whose script cache was emptied (as after a restart) answers
%% NOSCRIPT: the script is loaded again, and that is logged.
script_reloaded_after_flush(Config) ->
    Redis = ?config(redis, Config),
    {ok, Client} = emqx_redis_storage:connect((config(Redis, #{}))#{route_index => redis}),
    {ok, []} = emqx_redis_router:match_routes(Client, <<"no/such/route">>),
    "OK" = redis_cli(Redis, ["SCRIPT", "FLUSH"]),
    {ok, []} = emqx_redis_router:match_routes(Client, <<"no/such/route">>),
    #{sha := Sha} = expect(info, <<"script_reloaded">>, #{}, 5000),
    ?assertEqual(40, byte_size(Sha)).

%% Many calls of one script meet NOSCRIPT at once (sessions resuming
%% together on a Redis that lost its scripts): the script is loaded once
%% for them all, not once per call, and every call succeeds.
script_loaded_once_for_many_calls(Config) ->
    Redis = ?config(redis, Config),
    {ok, Client} = emqx_redis_storage:connect(config(Redis, #{})),
    {ok, _} = emqx_redis_session:acquire_lease(Client, <<"warm">>, <<"n1">>, 60000),
    "OK" = redis_cli(Redis, ["SCRIPT", "FLUSH"]),
    "OK" = redis_cli(Redis, ["CONFIG", "RESETSTAT"]),
    Self = self(),
    Pids = [
        spawn_link(fun() ->
            Self ! {self(), emqx_redis_session:acquire_lease(Client, <<"many-", (integer_to_binary(N))/binary>>, <<"n1">>, 60000)}
        end)
     || N <- lists:seq(1, 200)
    ],
    [{ok, _} = receive {P, R} -> R after 10000 -> ct:fail(no_reply) end || P <- Pids],
    Stats = redis_cli(Redis, ["INFO", "commandstats"]),
    {match, [Loads]} = re:run(Stats, "cmdstat_script\\|load:calls=([0-9]+)", [{capture, all_but_first, list}]),
    ct:log("SCRIPT LOAD calls for 200 calls after a flush: ~s", [Loads]),
    ?assert(list_to_integer(Loads) =< 3, Loads).

%% A call slower than `redis.slow_call_threshold' (Redis made to sleep in
%% a script for 50 ms; the threshold is 20 ms) is reported with its
%% operation and duration.
slow_call_is_reported(Config) ->
    Redis = ?config(redis, Config),
    {ok, Client} = emqx_redis_storage:connect(config(Redis, #{slow_call_threshold => 20})),
    Sleep = <<"local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] "
              "repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - s > 50000 return 1">>,
    {ok, 1} = emqx_redis_storage:q(Client, [<<"EVAL">>, Sleep, <<"0">>]),
    #{duration_ms := Ms} = expect(warning, <<"slow_call">>, #{operation => <<"q">>, threshold_ms => 20}, 5000),
    ?assert(Ms >= 50, Ms).

redis_cli(Redis, Args) ->
    redis_test_server:cmd(Redis, ["--no-auth-warning", "-a", binary_to_list(?PASSWORD) | Args]).

tls_wrong_name(_Config) ->
    Certs = redis_test_server:certs(),
    %% The certificate names 127.0.0.1 and localhost; 127.0.0.2 is not among them.
    Server = redis_test_server:start(#{tls => Certs, conf => ["bind 127.0.0.1 127.0.0.2"]}),
    Wrong = iolist_to_binary(["127.0.0.2:", integer_to_list(redis_test_server:port(Server))]),
    try
        Ssl = #{enable => true, cacertfile => maps:get(ca, Certs), verify => verify_peer},
        ?assertMatch(
            {error, {connection, _}},
            emqx_redis_storage:connect(#{redis => #{servers => Wrong, connect_timeout => 1000, ssl => Ssl}})
        ),
        #{reason := Reason} = expect(warning, <<"tls_handshake_failed">>, #{server => Wrong}, 5000),
        ?assertNotEqual(nomatch, string:find(Reason, "certificate"))
    after
        redis_test_server:stop(Server)
    end.

%% 10,000 calls fail while Redis is down: at most ?PER_SECOND call_failed
%% reports a second, and reports of how many more there were.
flood_is_rate_limited(_Config) ->
    Redis = redis_test_server:start(#{conf => ["requirepass " ++ binary_to_list(?PASSWORD)]}),
    try
        {ok, Client} = emqx_redis_storage:connect((config(Redis, #{}))#{route_index => redis}),
        ok = redis_test_server:kill(Redis),
        ok = test_util:wait_until(fun() -> ping(Client) =/= {ok, <<"PONG">>} end, 5000),
        timer:sleep(1100),
        flush(),
        T0 = erlang:monotonic_time(millisecond),
        Results = test_util:pmap(
            fun(_) -> [ping(Client) || _ <- lists:seq(1, 1000)] end,
            lists:seq(1, 10)
        ),
        Secs = (erlang:monotonic_time(millisecond) - T0) / 1000,
        ?assertEqual(10000, length([E || {error, {connection, _}} = E <- lists:append(Results)])),
        %% the next tick of the forwarder reports what was dropped
        Reports = collect(2500),
        Failed = [R || {warning, #{msg := <<"call_failed">>} = R} <- Reports],
        Suppressed = lists:sum([N || {warning, #{msg := <<"events_suppressed">>, event := <<"call_failed">>, count := N}} <- Reports]),
        ct:log("10000 failing calls in ~.2f s: ~p call_failed reports, ~p suppressed, ~p reports in all:~n~p",
               [Secs, length(Failed), Suppressed, length(Reports), Reports]),
        ct:comment("~p reports for 10000 failed calls (~p suppressed)", [length(Reports), Suppressed]),
        ?assert(length(Failed) =< ?PER_SECOND * (ceil(Secs) + 3)),
        ?assert(length(Failed) + Suppressed >= 10000),
        ?assert(length(Reports) < 100)
    after
        redis_test_server:stop(Redis)
    end.

%% connection_opened is a debug event.
debug_only_at_debug_level(Config) ->
    Redis = ?config(redis, Config),
    Address = redis_test_server:address(Redis),
    Opened = fun(Reports) -> [R || {debug, #{msg := <<"connection_opened">>, server := A} = R} <- Reports, A =:= Address] end,
    {ok, _} = emqx_redis_storage:connect(config(Redis, #{})),
    ?assertEqual([], Opened(collect(500))),
    ok = logger:set_primary_config(level, debug),
    try
        %% the forwarder pushes the level into the NIF within a second
        timer:sleep(1200),
        {ok, _} = emqx_redis_storage:connect(config(Redis, #{pool_size => 2})),
        ?assertMatch([_, _ | _], Opened(collect(500)))
    after
        ok = logger:set_primary_config(level, info)
    end.

%% Every report of the suite, from clients that all used a password.
no_report_contains_the_password(_Config) ->
    All = ets:tab2list(?REPORTS),
    ct:log("~p reports in the suite", [length(All)]),
    ?assert(length(All) > 20),
    [?assertEqual([emqx_redis_storage], Domain) || {_, _, Domain} <- All],
    [?assertEqual(nomatch, binary:match(term_to_binary(Report), ?PASSWORD)) || {_, Report, _} <- All],
    Text = iolist_to_binary(io_lib:format("~p", [All])),
    ?assertEqual(nomatch, binary:match(Text, ?PASSWORD)).
