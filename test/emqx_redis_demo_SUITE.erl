%% The demo (`make demo', demo/run.sh) works: node A is killed, node B takes
%% its clients over and nothing is lost, durable sessions included (every
%% durable message A's persist/1 acknowledged reaches its subscribers,
%% from A before their last commit or from B after it resumed them); it
%% starts and stops its own redis-server unless REDIS_URL names one; and it
%% fails when data is lost.
%%
%% A `redis-server' shim first on PATH logs every start, so the cases can
%% tell whether the demo started a server.
-module(emqx_redis_demo_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(CLIENTS, 300).
-define(ROWS, [
    "clients (leases)", "sessions", "queued QoS 1 messages", "durable messages", "registry entries", "routes",
    "match_routes answers"
]).
%% The durable clients of ?CLIENTS: clients 1, 11, 21, ... that are online.
-define(DURABLE_CLIENTS, 20).

all() ->
    [
        make_demo_builds_then_runs_it,
        private_redis_nothing_lost,
        redis_url_is_used_and_no_server_started,
        lost_sessions_fail_the_run,
        lost_durable_messages_fail_the_run
    ].

init_per_suite(Config) ->
    Dir = filename:join(redis_test_server:tmp_root(), "demo_suite"),
    _ = file:del_dir_r(Dir),
    Shim = filename:join(Dir, "bin"),
    ok = filelib:ensure_path(Shim),
    Real = os:find_executable("redis-server"),
    ?assert(is_list(Real), "redis-server is not installed"),
    Log = filename:join(Dir, "redis-server-starts.log"),
    ShimExe = filename:join(Shim, "redis-server"),
    ok = file:write_file(ShimExe, [
        "#!/bin/sh\n",
        "echo \"$*\" >> '", Log, "'\n",
        "exec '", Real, "' \"$@\"\n"
    ]),
    ok = file:change_mode(ShimExe, 8#755),
    [{dir, Dir}, {shim, Shim}, {starts_log, Log} | Config].

end_per_suite(Config) ->
    _ = file:del_dir_r(?config(dir, Config)),
    ok.

init_per_testcase(_Case, Config) ->
    _ = file:delete(?config(starts_log, Config)),
    Config.

end_per_testcase(_Case, _Config) ->
    ok.

%%--------------------------------------------------------------------

make_demo_builds_then_runs_it(_Config) ->
    %% `make -n' prints the recipe without running it: deps, then
    %% `rebar3 compile', then the demo.
    {0, Out} = run("make", ["-n", "demo"], []),
    Lines = [string:trim(L) || L <- string:split(Out, "\n", all)],
    Steps = [L || L <- Lines, lists:member(L, ["bash scripts/install-deps.sh", "rebar3 compile", "bash demo/run.sh"])],
    ?assertEqual(["bash scripts/install-deps.sh", "rebar3 compile", "bash demo/run.sh"], Steps, Out).

private_redis_nothing_lost(Config) ->
    {Status, Out} = demo(Config, []),
    ?assertEqual(0, Status, Out),
    assert_nothing_lost(Out),
    %% It started one redis-server, on a loopback port that is not 6379,
    %% and stopped it at the end.
    ?assertMatch([_], starts(Config), Out),
    {match, [Port, Dir]} = re:run(Out, "started redis-server on 127.0.0.1:([0-9]+) \\(pid [0-9]+\\) in (\\S+)",
        [{capture, all_but_first, list}]),
    ?assertNotEqual("6379", Port),
    ?assertEqual({error, econnrefused}, gen_tcp:connect({127, 0, 0, 1}, list_to_integer(Port), [])),
    ?assertNot(filelib:is_dir(Dir)).

redis_url_is_used_and_no_server_started(Config) ->
    Redis = redis_test_server:start(#{conf => ["requirepass demo:pa$$"]}),
    try
        Url = "redis://:demo%3Apa%24%24@127.0.0.1:" ++ integer_to_list(redis_test_server:port(Redis)) ++ "/2",
        {Status, Out} = demo(Config, [{"REDIS_URL", Url}]),
        ?assertEqual(0, Status, Out),
        assert_nothing_lost(Out),
        ?assertEqual([], starts(Config), Out),
        ?assertEqual(nomatch, string:find(Out, "pa$$"), "the password is never printed"),
        %% The data is in database 2 of that Redis, under the run's prefix.
        Cli = fun(Db, Args) -> redis_test_server:cmd(Redis, ["--no-auth-warning", "-a", "demo:pa$$", "-n", Db | Args]) end,
        ?assert(list_to_integer(Cli("2", ["DBSIZE"])) > 0),
        ?assertEqual("0", Cli("0", ["DBSIZE"])),
        {match, [Prefix]} = re:run(Out, "key prefix (\\S+:)", [{capture, all_but_first, list}]),
        Sessions = string:split(Cli("2", ["--scan", "--pattern", Prefix ++ "sess:*"]), "\n", all),
        ?assertEqual(?CLIENTS, length(Sessions))
    after
        redis_test_server:stop(Redis)
    end.

%% Sessions deleted behind B's back are reported lost, the run fails, and
%% the private redis-server is stopped all the same.
lost_sessions_fail_the_run(Config) ->
    {Status, Out} = demo(Config, [{"DROP_SESSIONS", "4"}]),
    ?assertEqual(1, Status, Out),
    Rows = table(Out),
    ?assertMatch(#{"sessions" := {?CLIENTS, _, 4, 0}}, Rows, Out),
    #{"queued QoS 1 messages" := {_, _, LostMessages, 0}} = Rows,
    ?assert(LostMessages >= 4),
    ?assertNotEqual(nomatch, string:find(Out, "FAILED"), Out),
    {match, [Port]} = re:run(Out, "started redis-server on 127.0.0.1:([0-9]+)", [{capture, all_but_first, list}]),
    ?assertEqual({error, econnrefused}, gen_tcp:connect({127, 0, 0, 1}, list_to_integer(Port), [])).

%% Durable message streams deleted before B resumes the durable sessions:
%% the messages A had not delivered before the clients' last commits are
%% reported lost (A delivers every batch, and is killed after some batches
%% past a commit), and the run fails.
lost_durable_messages_fail_the_run(Config) ->
    {Status, Out} = demo(Config, [{"DROP_DURABLE", "1"}]),
    ?assertEqual(1, Status, Out),
    Rows = table(Out),
    #{"durable messages" := {Expected, Ok, Lost, 0}} = Rows,
    ?assert(Lost > 0, Out),
    ?assertEqual(Expected, Ok + Lost, Out),
    maps:foreach(
        fun(Name, {_, _, L, W}) -> Name =:= "durable messages" orelse ?assertEqual({Name, 0, 0}, {Name, L, W}, Out) end,
        Rows
    ),
    ?assertNotEqual(nomatch, string:find(Out, "FAILED"), Out).

%%--------------------------------------------------------------------

%% Runs demo/run.sh with ?CLIENTS clients, short leases, the shim first on
%% PATH and the library this test run built.
demo(Config, Env) ->
    LibEbin = filename:dirname(code:which(emqx_redis_storage)),
    Base = [
        {"CLIENTS", integer_to_list(?CLIENTS)},
        {"LEASE_MS", "1000"},
        {"REDIS_URL", false},
        {"DROP_SESSIONS", false},
        {"DROP_DURABLE", false},
        {"PATH", ?config(shim, Config) ++ ":" ++ os:getenv("PATH")},
        {"TMPDIR", ?config(dir, Config)},
        {"EMQX_REDIS_STORAGE_EBIN", LibEbin}
    ],
    {Status, Out} = run("bash", ["demo/run.sh"], lists:ukeymerge(1, lists:keysort(1, Env), lists:keysort(1, Base))),
    ct:log("~ts", [Out]),
    {Status, Out}.

assert_nothing_lost(Out) ->
    Rows = table(Out),
    ?assertEqual(lists:sort(?ROWS), lists:sort(maps:keys(Rows)), Out),
    maps:foreach(
        fun(Name, {Expected, Ok, Lost, Wrong}) ->
            ?assertEqual({Name, Expected, 0, 0}, {Name, Ok, Lost, Wrong}, Out),
            ?assert(Expected > 0, Name)
        end,
        Rows
    ),
    ?assertMatch(#{"clients (leases)" := {?CLIENTS, _, _, _}, "sessions" := {?CLIENTS, _, _, _}}, Rows),
    %% Every durable session was resumed by B; A was killed after
    %% deliveries past the clients' last commits, which B delivered again.
    ?assertMatch({match, _}, re:run(Out, ["^  durable sessions +", integer_to_list(?DURABLE_CLIENTS), "   of ",
        integer_to_list(?DURABLE_CLIENTS), " resumed by B.*errors: 0 on A, 0 on B$"], [multiline]), Out),
    {match, [Twice]} = re:run(Out, "^  delivered twice +([0-9]+)   ", [multiline, {capture, all_but_first, list}]),
    ?assert(list_to_integer(Twice) > 0, Out),
    ?assertNotEqual(nomatch, string:find(Out, "PASSED"), Out).

%% The result table: `#{Row => {Expected, Ok, Lost, Wrong}}'.
table(Out) ->
    maps:from_list([
        {Name, list_to_tuple([list_to_integer(N) || N <- Numbers])}
     || Line <- string:split(Out, "\n", all),
        Name <- ?ROWS,
        {match, Numbers} <- [re:run(Line, ["^  \\Q", Name, "\\E +([0-9]+) +([0-9]+) +([0-9]+) +([0-9]+)$"],
            [{capture, all_but_first, list}])]
    ]).

%% The redis-server starts the shim logged.
starts(Config) ->
    case file:read_file(?config(starts_log, Config)) of
        {ok, Bin} -> string:split(string:trim(binary_to_list(Bin)), "\n", all);
        {error, enoent} -> []
    end.

%% `{ExitStatus, Output}' of a program run in the checkout.
run(Program, Args, Env) ->
    test_util:run(Program, Args, #{env => Env, timeout => 300000}).
