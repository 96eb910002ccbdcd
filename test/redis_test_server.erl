%% @doc Private redis-server processes for the tests: each on a free loopback
%% port, in its own temp directory, stopped by pid. Never port 6379, never a
%% Redis the tests did not start.
-module(redis_test_server).

-export([start/0, start/1, stop/1, kill/1, pause/1, resume/1, restart/1]).
-export([port/1, address/1, dir/1, cmd/2, tmp_root/0, stop_all/0]).

-type server() :: #{port := inet:port_number(), dir := file:filename(), conf := [string()]}.
-export_type([server/0]).

%% @doc Starts a redis-server. `Opts': `conf' (extra config lines, e.g.
%% ["requirepass secret"]), `port' (to reuse one).
-spec start() -> server().
start() -> start(#{}).

-spec start(map()) -> server().
start(Opts) ->
    Port = maps:get(port, Opts, free_port()),
    Dir = filename:join(tmp_root(), "redis-" ++ integer_to_list(Port)),
    ok = filelib:ensure_path(Dir),
    Server = #{port => Port, dir => Dir, conf => maps:get(conf, Opts, [])},
    launch(Server),
    Server.

launch(#{port := Port, dir := Dir, conf := Extra} = Server) ->
    Conf = filename:join(Dir, "redis.conf"),
    Lines = [
        "port " ++ integer_to_list(Port),
        "bind 127.0.0.1",
        "protected-mode no",
        "daemonize yes",
        "pidfile " ++ pidfile(Server),
        "logfile " ++ filename:join(Dir, "redis.log"),
        "dir " ++ Dir,
        "save \"\"",
        "appendonly no"
        | Extra
    ],
    ok = file:write_file(Conf, [[L, $\n] || L <- Lines]),
    _ = file:delete(pidfile(Server)),
    Out = os:cmd("redis-server " ++ Conf ++ " 2>&1"),
    wait_ready(Server, Out, 100).

wait_ready(Server, Out, 0) ->
    error({redis_did_not_start, Server, Out, log(Server)});
wait_ready(#{port := Port} = Server, Out, N) ->
    case ping(Port) of
        true ->
            ok;
        false ->
            timer:sleep(50),
            wait_ready(Server, Out, N - 1)
    end.

%% True once the server answers (any reply: it may demand a password).
ping(Port) ->
    case gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 500) of
        {ok, S} ->
            ok = gen_tcp:send(S, <<"PING\r\n">>),
            Reply = gen_tcp:recv(S, 0, 1000),
            gen_tcp:close(S),
            case Reply of
                {ok, <<"+PONG", _/binary>>} -> true;
                {ok, <<"-NOAUTH", _/binary>>} -> true;
                _ -> false
            end;
        {error, _} ->
            false
    end.

%% @doc Stops the server (SIGKILL by pid) and removes its directory.
-spec stop(server()) -> ok.
stop(#{dir := Dir} = Server) ->
    kill(Server),
    _ = file:del_dir_r(Dir),
    ok.

%% @doc Kills the server abruptly and waits until it is gone; keeps its directory.
-spec kill(server()) -> ok.
kill(Server) ->
    case pid(Server) of
        undefined ->
            ok;
        Pid ->
            signal("KILL", Pid),
            wait_gone(Pid, 200)
    end.

wait_gone(_Pid, 0) ->
    error(redis_did_not_stop);
wait_gone(Pid, N) ->
    case filelib:is_dir("/proc/" ++ Pid) of
        false ->
            ok;
        true ->
            timer:sleep(10),
            wait_gone(Pid, N - 1)
    end.

%% @doc SIGSTOP: the server keeps its connections but answers nothing.
-spec pause(server()) -> ok.
pause(Server) -> signal("STOP", pid(Server)).

%% @doc SIGCONT.
-spec resume(server()) -> ok.
resume(Server) -> signal("CONT", pid(Server)).

%% @doc Kills the server and starts it again on the same port (data is lost).
-spec restart(server()) -> ok.
restart(Server) ->
    kill(Server),
    launch(Server).

-spec port(server()) -> inet:port_number().
port(#{port := Port}) -> Port.

%% @doc `<<"127.0.0.1:Port">>', as the `servers' config field takes it.
-spec address(server()) -> binary().
address(#{port := Port}) -> iolist_to_binary(["127.0.0.1:", integer_to_list(Port)]).

-spec dir(server()) -> file:filename().
dir(#{dir := Dir}) -> Dir.

%% @doc Runs redis-cli against the server (for checks independent of the NIF).
-spec cmd(server(), [string()]) -> string().
cmd(#{port := Port}, Args) ->
    string:trim(os:cmd(lists:flatten(["redis-cli -p ", integer_to_list(Port), [[" '", A, "'"] || A <- Args]]))).

%% @doc Kills every server started under `tmp_root()' (cleanup after a crash).
-spec stop_all() -> ok.
stop_all() ->
    Pidfiles = filelib:wildcard(filename:join([tmp_root(), "*", "redis.pid"])),
    [signal("KILL", string:trim(binary_to_list(B))) || F <- Pidfiles, {ok, B} <- [file:read_file(F)]],
    ok.

-spec tmp_root() -> file:filename().
tmp_root() ->
    case os:getenv("EMQX_REDIS_TEST_TMP") of
        false -> "/tmp/emqx_redis_storage_test";
        Dir -> Dir
    end.

pidfile(#{dir := Dir}) -> filename:join(Dir, "redis.pid").

pid(Server) ->
    case file:read_file(pidfile(Server)) of
        {ok, Bin} -> string:trim(binary_to_list(Bin));
        {error, _} -> undefined
    end.

log(#{dir := Dir}) ->
    case file:read_file(filename:join(Dir, "redis.log")) of
        {ok, Bin} -> Bin;
        _ -> <<>>
    end.

signal(Sig, Pid) ->
    _ = os:cmd("kill -" ++ Sig ++ " " ++ Pid ++ " 2>/dev/null"),
    ok.

free_port() ->
    {ok, S} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(S),
    ok = gen_tcp:close(S),
    case Port of
        6379 -> free_port();
        _ -> Port
    end.
