%% Works as a dependency: a scratch rebar3 project lists this repository as a
%% git dependency (a file:// URL at the current commit), compiles it, starts
%% it from its own sys.config, talks to Redis through it and saves and loads
%% a session; the operators' tool runs from the dependency's directory.
-module(emqx_redis_storage_dep_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

all() -> [scratch_project_builds_and_uses_it].

init_per_suite(Config) ->
    [{redis, redis_test_server:start()} | Config].

end_per_suite(Config) ->
    redis_test_server:stop(?config(redis, Config)).

scratch_project_builds_and_uses_it(Config) ->
    Root = test_util:project_root(),
    Sha = string:trim(run("git rev-parse HEAD", Root)),
    Dir = filename:join(redis_test_server:tmp_root(), "consumer"),
    _ = file:del_dir_r(Dir),
    ok = filelib:ensure_path(filename:join(Dir, "src")),
    ok = filelib:ensure_path(filename:join(Dir, "config")),
    write(Dir, "rebar.config", io_lib:format(
        "{deps, [{emqx_redis_storage, {git, \"file://~s\", {ref, \"~s\"}}}]}.~n", [Root, Sha])),
    write(Dir, "src/consumer.app.src",
        "{application, consumer, [{vsn, \"1\"}, {applications, [kernel, stdlib, emqx_redis_storage]}]}.\n"),
    write(Dir, "src/consumer.erl",
        "-module(consumer).\n"
        "-export([check/0]).\n"
        "check() ->\n"
        "    {ok, _} = application:ensure_all_started(consumer),\n"
        "    Ping = emqx_redis_storage:q([<<\"PING\">>]),\n"
        "    Set = emqx_redis_storage:q([<<\"SET\">>, <<\"consumer\">>, <<\"was here\">>]),\n"
        "    Session = #{clientid => <<\"consumer-1\">>, proto_ver => 5,\n"
        "                subscriptions => #{<<\"devices/+/cmd\">> => #{qos => 1}},\n"
        "                inflight => [{1, <<0, 255, \"payload\">>}], created_at => 1700000000000},\n"
        "    Saved = emqx_redis_session:save_session(<<\"consumer-1\">>, Session),\n"
        "    Loaded = emqx_redis_session:load_session(<<\"consumer-1\">>),\n"
        "    io:format(\"RESULT ~p~n\", [{Ping, Set, Saved, Loaded =:= {ok, Session}}]).\n"),
    Address = redis_test_server:address(?config(redis, Config)),
    write(Dir, "config/sys.config", io_lib:format(
        "[{emqx_redis_storage, [{config, #{redis => #{servers => <<\"~s\">>}}}]}].~n", [Address])),
    %% Reuse the already compiled Rust dependencies of this checkout.
    Env = "CARGO_TARGET_DIR=" ++ filename:join(Root, "target") ++ " ",
    _ = run(Env ++ "rebar3 compile", Dir),
    ?assert(filelib:is_regular(filename:join(Dir, "_build/default/lib/emqx_redis_storage/priv/emqx_redis_storage_nif.so"))),
    Out = run(
        "erl -noshell -pa _build/default/lib/*/ebin -config config/sys.config "
        "-eval 'consumer:check(), halt().'",
        Dir
    ),
    ?assertNotEqual(nomatch, string:find(Out, "RESULT {{ok,<<\"PONG\">>},{ok,<<\"OK\">>},ok,true}"), Out),
    %% Both went to the Redis named in the consumer's own sys.config.
    ?assertEqual("was here", redis_test_server:cmd(?config(redis, Config), ["GET", "consumer"])),
    ?assertEqual("emqx:sess:{consumer-1}", redis_test_server:cmd(?config(redis, Config), ["--scan", "--pattern", "emqx:sess:*"])),
    %% The operators' tool, where the dependency put it, with the same sys.config.
    Tool = "_build/default/lib/emqx_redis_storage/bin/emqx-redis-storage --config config/sys.config ",
    ?assertEqual("1\n", run(Tool ++ "sessions count", Dir)),
    ?assertEqual("[\"consumer-1\"]\n", run(Tool ++ "--json sessions list", Dir)).

write(Dir, Name, Content) ->
    ok = file:write_file(filename:join(Dir, Name), Content).

%% Runs a shell command in Dir; fails the test with its output if it fails.
run(Cmd, Dir) ->
    case test_util:run("/bin/sh", ["-c", Cmd], #{cd => Dir}) of
        {0, Out} -> Out;
        {Status, Out} -> ct:fail({command_failed, Cmd, Status, Out})
    end.
