%% What operators see: `bin/emqx-redis-storage' run as a program against a
%% real Redis that demands a password (every command, as tables and as JSON,
%% with flags and with config files, exit statuses, errors on stderr, the
%% password never printed), `emqx_redis_storage_cli:cmd/1' inside the VM,
%% and the health fields of `status/1' following Redis down and up again.
-module(emqx_redis_cli_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(PASSWORD, "cli-s3cret-pw").
-define(PREFIX, <<"clitest:">>).

all() ->
    [
        every_command_human_and_json,
        config_files_and_checkout_layout,
        errors_and_exit_statuses,
        cmd_in_the_vm,
        health_follows_redis_down_and_up
    ].

init_per_suite(Config) ->
    Redis = redis_test_server:start(#{conf => ["requirepass " ++ ?PASSWORD]}),
    {ok, Client} = emqx_redis_storage:connect(app_config(Redis)),
    ok = emqx_redis_session:save_session(Client, <<"c1">>, #{subscriptions => [<<"a/+">>]}, #{node => node()}),
    ok = emqx_redis_session:save_session(Client, <<"c2">>, {state, 1, <<"x">>}, #{}),
    ok = emqx_redis_message:store_messages(Client, <<"c1">>, [
        #{id => <<"m1">>, payload => <<"hello">>}, #{id => <<"m2">>, payload => <<"world">>}
    ]),
    ok = emqx_redis_router:add_route(Client, <<"sensors/+/temp">>, node()),
    ok = emqx_redis_router:add_route(Client, <<"sensors/#">>, {<<"g1">>, node()}),
    [{redis, Redis}, {client, Client}, {tool, dependency_layout(?config(priv_dir, Config))} | Config].

end_per_suite(Config) ->
    redis_test_server:stop(?config(redis, Config)).

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    _ = emqx_redis_storage:stop(),
    ok.

app_config(Redis) ->
    #{
        redis => #{servers => redis_test_server:address(Redis), password => <<?PASSWORD>>},
        key_prefix => ?PREFIX
    }.

%% The application as a dependency sees it: `_build/default/lib/emqx_redis_storage'
%% with `bin/', `ebin/' and `priv/' side by side (here the test build's).
dependency_layout(Dir) ->
    App = filename:join(Dir, "emqx_redis_storage"),
    ok = filelib:ensure_path(filename:join(App, "bin")),
    Lib = code:lib_dir(emqx_redis_storage),
    ok = file:make_symlink(filename:join(Lib, "ebin"), filename:join(App, "ebin")),
    ok = file:make_symlink(filename:join(Lib, "priv"), filename:join(App, "priv")),
    Tool = filename:join([App, "bin", "emqx-redis-storage"]),
    {ok, _} = file:copy(filename:join([test_util:project_root(), "bin", "emqx-redis-storage"]), Tool),
    ok = file:change_mode(Tool, 8#755),
    Tool.

%%--------------------------------------------------------------------
%% Cases

every_command_human_and_json(Config) ->
    Flags = flags(Config),
    Node = atom_to_list(node()),
    %% status
    {0, Status, ""} = tool(Config, Flags ++ ["status"]),
    ?assertMatch({match, _}, re:run(Status, "^healthy +true$", [multiline])),
    ?assertMatch({match, _}, re:run(Status, "^key_prefix +clitest:$", [multiline])),
    Server = binary_to_list(redis_test_server:address(?config(redis, Config))),
    ?assertMatch({match, _}, re:run(Status, "^" ++ Server ++ " +up +20[0-9-]+T[0-9:.]+Z +- +-$", [multiline])),
    #{<<"healthy">> := true, <<"breaker">> := <<"closed">>, <<"server_states">> := [ServerState]} =
        json(Config, Flags ++ ["--json", "status"]),
    ?assertMatch(
        #{<<"state">> := <<"up">>, <<"last_ok_at">> := At, <<"last_error">> := null} when is_integer(At),
        ServerState
    ),
    %% sessions
    ?assertEqual({0, "2\n", ""}, tool(Config, Flags ++ ["sessions", "count"])),
    ?assertEqual(#{<<"sessions">> => 2}, json(Config, Flags ++ ["--json", "sessions", "count"])),
    {0, List, ""} = tool(Config, Flags ++ ["sessions", "list"]),
    ?assertEqual(["c1", "c2"], lists:sort(string:lexemes(List, "\n"))),
    ?assertEqual([<<"c1">>, <<"c2">>], lists:sort(json(Config, Flags ++ ["sessions", "list", "5", "--json"]))),
    {0, One, ""} = tool(Config, Flags ++ ["sessions", "list", "1"]),
    ?assertEqual(1, length(string:lexemes(One, "\n"))),
    NodeBin = atom_to_binary(node()),
    {0, Show, ""} = tool(Config, Flags ++ ["sessions", "show", "c1"]),
    ?assertMatch({match, _}, re:run(Show, "^session +#\\{subscriptions => \\[<<\"a/\\+\">>\\]\\}$", [multiline])),
    ?assertMatch({match, _}, re:run(Show, "^node +" ++ Node ++ "$", [multiline])),
    ?assertMatch(
        #{
            <<"client_id">> := <<"c2">>,
            <<"session">> := <<"{state,1,<<\"x\">>}">>,
            <<"info">> := #{<<"created_at">> := Created, <<"node">> := NodeBin}
        } when is_integer(Created),
        json(Config, Flags ++ ["--json", "sessions", "show", "c2"])
    ),
    %% queue
    {0, Queue, ""} = tool(Config, Flags ++ ["queue", "show", "c1"]),
    ?assertMatch({match, _}, re:run(Queue, "^len +2$", [multiline])),
    ?assertMatch({match, _}, re:run(Queue, "^m2 +#\\{id => <<\"m2\">>,payload => <<\"world\">>\\}$", [multiline])),
    ?assertMatch(
        #{
            <<"info">> := #{<<"len">> := 2, <<"dropped">> := 0},
            <<"messages">> := [#{<<"id">> := <<"m1">>}]
        },
        json(Config, Flags ++ ["--json", "queue", "show", "c1", "1"])
    ),
    %% routes
    ?assertEqual(
        {0,
            "FILTER          DESTS\n"
            "sensors/#       " ++ Node ++ " (group g1)\n"
            "sensors/+/temp  " ++ Node ++ "\n"
            "2 of 2 filters shown\n", ""},
        tool(Config, Flags ++ ["routes", "list"])
    ),
    ?assertEqual(
        #{
            <<"total">> => 2,
            <<"routes">> => [
                #{<<"filter">> => <<"sensors/#">>, <<"dests">> => [#{<<"group">> => <<"g1">>, <<"node">> => NodeBin}]},
                #{<<"filter">> => <<"sensors/+/temp">>, <<"dests">> => [#{<<"node">> => NodeBin}]}
            ]
        },
        json(Config, Flags ++ ["--json", "routes", "list"])
    ),
    {0, Match, ""} = tool(Config, Flags ++ ["routes", "match", "sensors/7/temp"]),
    ?assertEqual([Node, Node ++ " (group g1)"], lists:sort(string:lexemes(Match, "\n"))),
    ?assertEqual(
        #{<<"topic">> => <<"sensors/x">>, <<"dests">> => [#{<<"group">> => <<"g1">>, <<"node">> => NodeBin}]},
        json(Config, Flags ++ ["--json", "routes", "match", "sensors/x"])
    ).

%% The config map from a file, alone or in its sys.config form, with flags
%% over it; and the tool run from the checkout (`rebar3 compile' built it).
config_files_and_checkout_layout(Config) ->
    Dir = ?config(priv_dir, Config),
    Redis = ?config(redis, Config),
    Plain = filename:join(Dir, "plain.config"),
    ok = file:write_file(Plain, io_lib:format("~p.~n", [#{redis => #{servers => redis_test_server:address(Redis)},
                                                         key_prefix => ?PREFIX}])),
    ?assertEqual({0, "2\n", ""}, tool(Config, ["--config", Plain, "sessions", "count"])),
    SysConfig = filename:join(Dir, "sys.config"),
    ok = file:write_file(SysConfig, io_lib:format("~p.~n", [[{emqx_redis_storage, [{config, #{
        <<"redis">> => #{<<"servers">> => <<"127.0.0.1:1">>}, <<"key_prefix">> => <<"other:">>
    }}]}]])),
    %% The flags win over the file's binary keys.
    ?assertEqual(
        {0, "2\n", ""},
        tool(Config, ["--config", SysConfig | flags(Config)] ++ ["sessions", "count"])
    ),
    Checkout = filename:join([test_util:project_root(), "bin", "emqx-redis-storage"]),
    {0, Out, ""} = run(Checkout, flags(Config) ++ ["sessions", "count"], env()),
    ?assertEqual("2\n", Out).

errors_and_exit_statuses(Config) ->
    Flags = flags(Config),
    ?assertEqual({1, "", "not found\n"}, tool(Config, Flags ++ ["sessions", "show", "nobody"])),
    ?assertEqual({1, "", "not found\n"}, tool(Config, Flags ++ ["--json", "sessions", "show", "nobody"])),
    {2, "", BadFlag} = tool(Config, ["--password", ?PASSWORD | Flags] ++ ["status"]),
    ?assertMatch("unknown option --password\n" ++ _, BadFlag),
    {2, "", Unknown} = tool(Config, Flags ++ ["sessions", "drop"]),
    ?assertMatch({match, _}, re:run(Unknown, "sessions show ClientId")),
    {2, "", _} = tool(Config, Flags ++ ["sessions", "list", "-3"]),
    {2, "", _} = tool(Config, []),
    {0, Help, ""} = tool(Config, ["--help"]),
    ?assertMatch({match, _}, re:run(Help, "EMQX_REDIS_PASSWORD")),
    %% The tool's own client counted its calls: PING and status at least.
    {0, Metrics, ""} = tool(Config, Flags ++ ["metrics"]),
    ?assertMatch({match, _}, re:run(Metrics, "^OPERATION +CALLS +ERRORS", [multiline])),
    ?assertMatch({match, _}, re:run(Metrics, "^bytes_sent +[1-9]", [multiline])),
    {0, MetricsJson, ""} = tool(Config, Flags ++ ["--json", "metrics"]),
    ?assertMatch(
        #{<<"operations">> := #{}, <<"requests">> := N} when N > 0,
        json_test_decoder:decode(MetricsJson)
    ),
    {0, Prometheus, ""} = tool(Config, Flags ++ ["prometheus"]),
    ?assertMatch({match, _}, re:run(Prometheus, "^# TYPE emqx_redis_storage_requests_total counter$", [multiline])),
    %% Wrong or missing password, a bad config value, a config file with a
    %% syntax error next to the password: errors that name no secret.
    {1, "", Wrong} = run(?config(tool, Config), Flags ++ ["status"], [{"EMQX_REDIS_PASSWORD", "wrong-pw"}]),
    ?assertMatch("connecting to Redis failed: " ++ _, Wrong),
    ?assertMatch({match, _}, re:run(Wrong, "authentication failed", [caseless])),
    {1, "", NoAuth} = run(?config(tool, Config), Flags ++ ["status"], [{"EMQX_REDIS_PASSWORD", false}]),
    ?assertMatch({match, _}, re:run(NoAuth, "NOAUTH")),
    ?assertEqual(
        {1, "", "invalid config: redis.database: an integer from 0 to 65535\n"},
        tool(Config, Flags ++ ["--database", "x", "status"])
    ),
    Broken = filename:join(?config(priv_dir, Config), "broken.config"),
    ok = file:write_file(Broken, "#{redis => #{password => <<\"" ?PASSWORD "\">>, servers => }}.\n"),
    ?assertEqual({1, "", Broken ++ ": syntax error on line 1\n"}, tool(Config, ["--config", Broken, "status"])),
    %% A URL with the password, from the environment: used, never shown,
    %% also when it is wrong or malformed.
    Address = binary_to_list(redis_test_server:address(?config(redis, Config))),
    Url = "redis://:" ?PASSWORD "@" ++ Address,
    ?assertEqual({0, "2\n", ""}, run(?config(tool, Config), ["--key-prefix", "clitest:", "sessions", "count"], [{"EMQX_REDIS_URL", Url}])),
    {1, "", BadUrl} = run(?config(tool, Config), ["status"], [{"EMQX_REDIS_URL", Url ++ "/x"}]),
    ?assertMatch("invalid config: redis.url: " ++ _, BadUrl),
    {1, "", WrongUrl} = run(?config(tool, Config), ["status"], [{"EMQX_REDIS_URL", "redis://:" ?PASSWORD "x@" ++ Address}]),
    ?assertMatch({match, _}, re:run(WrongUrl, "authentication failed", [caseless])),
    Unreachable = "127.0.0.1:" ++ integer_to_list(loopback_port:free([])),
    {1, "", Down} = tool(Config, ["--servers", Unreachable, "--connect-timeout", "500", "status"]),
    ?assertMatch("connecting to Redis failed: " ++ _, Down).

cmd_in_the_vm(Config) ->
    ?assertEqual("emqx_redis_storage is not started\n", test_util:captured(["status"])),
    ok = emqx_redis_storage:start(app_config(?config(redis, Config))),
    ?assertEqual("2\n", test_util:captured(["sessions", "count"])),
    ?assertMatch(
        #{<<"healthy">> := true, <<"key_prefix">> := ?PREFIX},
        json_test_decoder:decode(test_util:captured(["--json", "status"]))
    ),
    Node = atom_to_list(node()),
    Matched = string:lexemes(test_util:captured(["routes", "match", "sensors/1/temp"]), "\n"),
    ?assertEqual([Node, Node ++ " (group g1)"], lists:sort(Matched)),
    ?assertMatch({match, _}, re:run(test_util:captured(["sessions", "show", "c1"]), "subscriptions")),
    ?assertEqual("not found\n", test_util:captured(["sessions", "show", "nobody"])),
    ?assertEqual(iolist_to_binary(emqx_redis_storage_cli_format:usage()), list_to_binary(test_util:captured(["nothing"]))),
    ?assertEqual(iolist_to_binary(emqx_redis_storage_cli_format:usage()), list_to_binary(test_util:captured(not_a_list))),
    Counted = json_test_decoder:decode(test_util:captured(["--json", "metrics"])),
    ?assertMatch(#{<<"operations">> := #{<<"session_count">> := #{<<"calls">> := C}}} when C > 0, Counted).

%% `healthy' true with Redis up, false while it is down (breaker open, the
%% server's last error set), true again after a restart; the time of the
%% last answer advances.
health_follows_redis_down_and_up(_Config) ->
    Redis = redis_test_server:start(),
    try
        {ok, Client} = emqx_redis_storage:connect(#{
            redis => #{servers => redis_test_server:address(Redis), connect_timeout => 500}, key_prefix => ?PREFIX
        }),
        #{healthy := true, breaker := closed, server_states := [Up]} = emqx_redis_storage:status(Client),
        #{state := up, last_ok_at := FirstOk, last_error := undefined, last_error_at := undefined} = Up,
        ?assert(is_integer(FirstOk)),
        timer:sleep(5),
        {ok, _} = emqx_redis_storage:q(Client, [<<"PING">>]),
        #{server_states := [#{last_ok_at := SecondOk}]} = emqx_redis_storage:status(Client),
        ?assert(SecondOk > FirstOk, {FirstOk, SecondOk}),
        ok = redis_test_server:kill(Redis),
        ok = test_util:wait_until(
            fun() ->
                _ = emqx_redis_storage:q(Client, [<<"PING">>]),
                maps:get(breaker, emqx_redis_storage:status(Client)) =/= closed
            end,
            5000
        ),
        Down = emqx_redis_storage:status(Client),
        ct:pal("down: ~p", [Down]),
        #{healthy := false, connected := false, server_states := [DownServer]} = Down,
        #{state := DownState, last_error := Error, last_error_at := ErrorAt, last_ok_at := LastOk} = DownServer,
        ?assert(lists:member(DownState, [down, connecting])),
        ?assert(is_binary(Error) andalso is_integer(ErrorAt) andalso ErrorAt >= LastOk, DownServer),
        ok = redis_test_server:restart(Redis),
        ok = test_util:wait_until(fun() -> maps:get(healthy, emqx_redis_storage:status(Client)) end, 5000),
        #{server_states := [#{state := up, last_ok_at := AfterOk, last_error := Still}]} =
            emqx_redis_storage:status(Client),
        ?assert(is_binary(Still)),
        ?assert(AfterOk > ErrorAt)
    after
        redis_test_server:stop(Redis)
    end.

%%--------------------------------------------------------------------
%% Helpers

flags(Config) ->
    ["--servers", binary_to_list(redis_test_server:address(?config(redis, Config))), "--key-prefix", "clitest:"].

env() ->
    [{"EMQX_REDIS_PASSWORD", ?PASSWORD}].

tool(Config, Args) ->
    run(?config(tool, Config), Args, env()).

json(Config, Args) ->
    {0, Out, ""} = tool(Config, Args),
    json_test_decoder:decode(Out).

%% `{ExitStatus, Stdout, Stderr}'; fails if either shows the password.
run(Program, Args, Env) ->
    Err = filename:join(redis_test_server:tmp_root(), "cli-stderr-" ++ integer_to_list(erlang:unique_integer([positive]))),
    {Status, Out} = test_util:run(
        "/bin/sh", ["-c", "exec \"$0\" \"$@\" 2>\"$CLI_STDERR\"", Program | Args],
        #{env => [{"CLI_STDERR", Err} | Env], timeout => 30000}
    ),
    {ok, ErrBin} = file:read_file(Err),
    ok = file:delete(Err),
    Stderr = unicode:characters_to_list(ErrBin),
    [?assertEqual(nomatch, string:find(Text, ?PASSWORD), Args) || Text <- [Out, Stderr]],
    {Status, Out, Stderr}.
