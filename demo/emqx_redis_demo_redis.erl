%% @doc The demo's Redis: a private redis-server on a free loopback port
%% (never 6379) in a directory of the demo's, or the one REDIS_URL names.
-module(emqx_redis_demo_redis).

-export([start/1, stop/1, from_url/1]).

-type redis() :: #{config := map(), label => string(), pidfile => file:filename()}.
-export_type([redis/0]).

%% @doc Starts redis-server in `Dir' (daemonized, no persistence).
-spec start(file:filename()) -> {ok, redis()} | {error, string()}.
start(Dir) ->
    case os:find_executable("redis-server") of
        false -> {error, "redis-server is not installed (make deps installs it)"};
        Exe -> start(Exe, Dir, 3)
    end.

%% A free port may be taken before redis-server binds it: try another.
%% loopback_port (test/, compiled with the demo by demo/run.sh) picks ports
%% below the ephemeral range, as the tests' servers use.
start(Exe, Dir, Attempts) ->
    Port = loopback_port:free(),
    Conf = filename:join(Dir, "redis.conf"),
    Pidfile = filename:join(Dir, "redis.pid"),
    Lines = [
        "port " ++ integer_to_list(Port),
        "bind 127.0.0.1",
        "daemonize yes",
        "pidfile " ++ Pidfile,
        "logfile " ++ filename:join(Dir, "redis.log"),
        "dir " ++ Dir,
        "save \"\"",
        "appendonly no"
    ],
    ok = file:write_file(Conf, [[L, $\n] || L <- Lines]),
    {Status, Out} = run_program(Exe, [Conf]),
    Address = "127.0.0.1:" ++ integer_to_list(Port),
    Redis = #{config => #{servers => list_to_binary(Address)}, pidfile => Pidfile},
    case Status =:= 0 andalso wait_for_ping(Port, 100) of
        true ->
            Label = io_lib:format("redis-server on ~s (pid ~s) in ~s", [Address, pid(Redis), Dir]),
            {ok, Redis#{label => lists:flatten(Label)}};
        false ->
            _ = stop(Redis),
            case Attempts > 1 of
                true -> start(Exe, Dir, Attempts - 1);
                false -> {error, "redis-server did not start: " ++ binary_to_list(Out)}
            end
    end.

run_program(Exe, Args) ->
    Port = open_port({spawn_executable, Exe}, [{args, Args}, exit_status, stderr_to_stdout, binary]),
    run_program_output(Port, []).

run_program_output(Port, Acc) ->
    receive
        {Port, {data, Data}} -> run_program_output(Port, [Data | Acc]);
        {Port, {exit_status, Status}} -> {Status, iolist_to_binary(lists:reverse(Acc))}
    end.

wait_for_ping(_Port, 0) ->
    false;
wait_for_ping(Port, N) ->
    case gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 500) of
        {ok, S} ->
            Reply = gen_tcp:send(S, <<"PING\r\n">>) =:= ok andalso gen_tcp:recv(S, 0, 1000),
            gen_tcp:close(S),
            Reply =:= {ok, <<"+PONG\r\n">>} orelse retry_ping(Port, N);
        {error, _} ->
            retry_ping(Port, N)
    end.

retry_ping(Port, N) ->
    timer:sleep(50),
    wait_for_ping(Port, N - 1).

%% @doc Stops a redis-server that `start/1' started: SIGTERM (then SIGKILL
%% if it lingers) by the pid in its pidfile. Returns that pid.
-spec stop(redis()) -> {stopped, string()} | not_running.
stop(Redis) ->
    case pid(Redis) of
        undefined ->
            not_running;
        Pid ->
            signal("TERM", Pid),
            wait_gone(Pid, 100) orelse begin
                signal("KILL", Pid),
                wait_gone(Pid, 100)
            end,
            {stopped, Pid}
    end.

pid(#{pidfile := Pidfile}) ->
    case file:read_file(Pidfile) of
        {ok, Bin} ->
            Pid = string:trim(binary_to_list(Bin)),
            case Pid =/= "" andalso lists:all(fun(C) -> C >= $0 andalso C =< $9 end, Pid) of
                true -> Pid;
                false -> undefined
            end;
        {error, _} ->
            undefined
    end;
pid(#{}) ->
    undefined.

signal(Signal, Pid) ->
    _ = os:cmd("kill -" ++ Signal ++ " " ++ Pid ++ " 2>/dev/null"),
    ok.

wait_gone(_Pid, 0) ->
    false;
wait_gone(Pid, N) ->
    case filelib:is_dir("/proc/" ++ Pid) of
        false -> true;
        true -> timer:sleep(50), wait_gone(Pid, N - 1)
    end.

%% @doc `redis://[[user]:password@]host[:port][/db]' as the application's
%% `redis' config section. The label never shows the password.
-spec from_url(string()) -> {ok, redis()} | {error, string()}.
from_url(Url) ->
    try
        {ok, parse_url(uri_string:parse(Url))}
    catch
        throw:{bad_url, Message} -> {error, "REDIS_URL: " ++ Message}
    end.

parse_url(#{scheme := "redis", host := Host} = Uri) when Host =/= "" ->
    Servers = Host ++ ":" ++ integer_to_list(maps:get(port, Uri, 6379)),
    Db = url_db(maps:get(path, Uri, "")),
    Auth = url_auth(maps:get(userinfo, Uri, undefined)),
    Label = io_lib:format("~s db ~b~s", [Servers, Db, [", with password" || maps:is_key(password, Auth)]]),
    #{config => Auth#{servers => list_to_binary(Servers), database => Db}, label => lists:flatten(Label)};
parse_url(_) ->
    throw({bad_url, "it must look like redis://[[user]:password@]host[:port][/db]"}).

url_db(Path) when Path =:= ""; Path =:= "/" ->
    0;
url_db("/" ++ Db) ->
    case string:to_integer(Db) of
        {N, ""} when N >= 0 -> N;
        _ -> throw({bad_url, "the path must be /<database number>"})
    end;
url_db(_) ->
    throw({bad_url, "the path must be /<database number>"}).

url_auth(undefined) ->
    #{};
url_auth(UserInfo) ->
    [User, Password] =
        case string:split(UserInfo, ":") of
            [U, P] -> [percent_decoded(U), percent_decoded(P)];
            [U] -> [percent_decoded(U), <<>>]
        end,
    maps:from_list([{username, User} || User =/= <<>>] ++ [{password, Password} || Password =/= <<>>]).

percent_decoded(Text) ->
    Bad = {bad_url, "bad %-encoding in the user or password"},
    case uri_string:percent_decode(Text) of
        Decoded when is_list(Decoded) ->
            case unicode:characters_to_binary(Decoded) of
                Bin when is_binary(Bin) -> Bin;
                _ -> throw(Bad)
            end;
        _Error ->
            throw(Bad)
    end.
