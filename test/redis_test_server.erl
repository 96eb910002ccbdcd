%% @doc Private redis-server processes for the tests: each on a free loopback
%% port, in its own temp directory, stopped by pid. Never port 6379, never a
%% Redis the tests did not start.
-module(redis_test_server).

-export([start/0, start/1, stop/1, kill/1, pause/1, resume/1, restart/1]).
-export([port/1, address/1, socket/1, dir/1, cmd/2, tmp_root/0, replica_in_sync/1]).
-export([certs/0, start_cluster/1, stop_cluster/1, start_sentinel/1, stop_sentinel/1]).

-type server() :: #{
    host := string(),
    port := inet:port_number(),
    dir := file:filename(),
    conf := [string()],
    tls := map() | undefined,
    exe := string()
}.
-export_type([server/0]).

%% @doc Starts a redis-server. `Opts': `conf' (extra config lines, e.g.
%% ["requirepass secret"]; a later line overrides an earlier one, so
%% ["appendonly yes"] turns the AOF on), `tls' (the map from `certs/0': the
%% server then speaks only TLS on its port), `exe' (the program,
%% redis-server or redis-sentinel), `host' (the loopback address it binds:
%% "127.0.0.1", the default, or "::1"). The port is a free one below the
%% ephemeral range (see loopback_port); another one if it was taken before
%% the server could bind it.
-spec start() -> server().
start() -> start(#{}).

-spec start(map()) -> server().
start(Opts) ->
    start_on_free_port(Opts, [], 5).

%% `Offsets' as for loopback_port:free/1.
start_on_free_port(Opts, Offsets, Attempts) ->
    case try_start(loopback_port:free(Offsets), Opts) of
        {ok, Server} -> Server;
        {error, {port_taken, _}} when Attempts > 1 -> start_on_free_port(Opts, Offsets, Attempts - 1);
        {error, Reason} -> error(Reason)
    end.

try_start(Port, Opts) ->
    Dir = filename:join(tmp_root(), "redis-" ++ integer_to_list(Port)),
    %% A fresh server: a crashed earlier run may have left an AOF here, which
    %% the server would load.
    _ = file:del_dir_r(Dir),
    ok = filelib:ensure_path(Dir),
    Socket =
        case maps:get(unixsocket, Opts, false) of
            true -> ["unixsocket " ++ socket(#{dir => Dir}), "unixsocketperm 700"];
            false -> []
        end,
    Server = #{
        host => maps:get(host, Opts, "127.0.0.1"),
        port => Port,
        dir => Dir,
        conf => Socket ++ maps:get(conf, Opts, []),
        tls => maps:get(tls, Opts, undefined),
        exe => maps:get(exe, Opts, "redis-server")
    },
    case launch(Server) of
        ok -> {ok, Server};
        {error, _} = Error -> Error
    end.

launch(#{host := Host, port := Port, dir := Dir, conf := Extra, tls := Tls, exe := Exe} = Server) ->
    Conf = filename:join(Dir, "redis.conf"),
    Listen =
        case Tls of
            undefined ->
                ["port " ++ integer_to_list(Port)];
            #{ca := Ca, server_cert := Cert, server_key := Key} ->
                [
                    "port 0",
                    "tls-port " ++ integer_to_list(Port),
                    "tls-cert-file " ++ Cert,
                    "tls-key-file " ++ Key,
                    "tls-ca-cert-file " ++ Ca,
                    "tls-auth-clients optional",
                    "tls-replication yes",
                    "tls-cluster yes"
                ]
        end,
    Lines = Listen ++ [
        "bind " ++ Host,
        "protected-mode no",
        "daemonize yes",
        "pidfile " ++ pidfile(Server),
        "logfile " ++ log_file(Server),
        "dir " ++ Dir,
        "save \"\"",
        "appendonly no"
        | Extra
    ],
    ok = file:write_file(Conf, [[L, $\n] || L <- Lines]),
    _ = file:delete(pidfile(Server)),
    %% Only what this start logs tells whether it failed (restarts append).
    LogStart = filelib:file_size(log_file(Server)),
    Out = os:cmd(Exe ++ " " ++ Conf ++ " 2>&1"),
    wait_ready(Server, Out, LogStart, 100).

%% Ready once our server wrote its pidfile (it does so after binding its
%% port) and answers: a server of someone else's on the port answers too.
wait_ready(Server, Out, LogStart, N) ->
    Log = log(Server, LogStart),
    Ready = pid(Server) =/= undefined andalso ping(Server),
    PortTaken = binary:match(Log, <<"Address already in use">>) =/= nomatch,
    if
        Ready -> ok;
        PortTaken -> {error, {port_taken, port(Server)}};
        N =:= 0 -> {error, {redis_did_not_start, Server, Out, Log}};
        true -> timer:sleep(50), wait_ready(Server, Out, LogStart, N - 1)
    end.

%% True once the server answers (any reply: it may demand a password).
ping(#{tls := #{} = Tls} = Server) ->
    string:find(cmd(Server#{tls := Tls}, ["PING"]), "PONG") =/= nomatch orelse
        string:find(cmd(Server, ["PING"]), "NOAUTH") =/= nomatch;
ping(#{port := Port} = Server) ->
    {ok, Ip} = inet:parse_address(host(Server)),
    case gen_tcp:connect(Ip, Port, [binary, {active, false}], 500) of
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
    case running(Pid) of
        false ->
            ok;
        true ->
            timer:sleep(10),
            wait_gone(Pid, N - 1)
    end.

%% A killed daemon stays a zombie until init reaps it, which in a container
%% can take a second. Once it is a zombie whose other threads have exited,
%% its port and files are closed.
running(Pid) ->
    Proc = "/proc/" ++ Pid,
    case file:read_file(Proc ++ "/stat") of
        {ok, Stat} -> process_state(Stat) =/= $Z orelse other_threads(Proc);
        {error, _} -> false
    end.

other_threads(Proc) ->
    case file:list_dir(Proc ++ "/task") of
        {ok, [_, _ | _]} -> true;
        _ -> false
    end.

%% "pid (comm) State ...", and comm may hold spaces and parentheses.
process_state(Stat) ->
    [_, <<State, _/binary>>] = string:split(Stat, <<") ">>, trailing),
    State.

%% @doc SIGSTOP: the server keeps its connections but answers nothing.
-spec pause(server()) -> ok.
pause(Server) -> signal("STOP", pid(Server)).

%% @doc SIGCONT.
-spec resume(server()) -> ok.
resume(Server) -> signal("CONT", pid(Server)).

%% @doc Kills the server and starts it again on the same port, in the same
%% directory: it keeps what its AOF holds (`conf' ["appendonly yes"]), else
%% its data is lost.
-spec restart(server()) -> ok.
restart(Server) ->
    kill(Server),
    case launch(Server) of
        ok -> ok;
        {error, Reason} -> error(Reason)
    end.

-spec port(server()) -> inet:port_number().
port(#{port := Port}) -> Port.

%% @doc `<<"127.0.0.1:Port">>' (`<<"[::1]:Port">>'), as the `servers' config
%% field takes it.
-spec address(server()) -> binary().
address(#{port := Port} = Server) ->
    case host(Server) of
        "::1" -> iolist_to_binary(["[::1]:", integer_to_list(Port)]);
        Host -> iolist_to_binary([Host, ":", integer_to_list(Port)])
    end.

host(Server) -> maps:get(host, Server, "127.0.0.1").

%% `Host Port', as replicaof and sentinel monitor take a server.
host_port(#{port := Port} = Server) -> host(Server) ++ " " ++ integer_to_list(Port).

%% @doc The unix socket a server started with `unixsocket' listens on.
-spec socket(#{dir := file:filename(), _ => _}) -> file:filename().
socket(#{dir := Dir}) -> filename:join(Dir, "redis.sock").

-spec dir(server()) -> file:filename().
dir(#{dir := Dir}) -> Dir.

%% @doc Runs redis-cli against the server (for checks independent of the NIF).
-spec cmd(server(), [string()]) -> string().
cmd(Server, Args) ->
    string:trim(os:cmd(lists:flatten([cli(Server), [[" '", A, "'"] || A <- Args], " 2>&1"]))).

%% @doc Whether the server is a replica whose link to its master is up.
-spec replica_in_sync(server()) -> boolean().
replica_in_sync(Server) ->
    string:find(cmd(Server, ["INFO", "replication"]), "master_link_status:up") =/= nomatch.

cli(#{port := Port} = Server) ->
    ["redis-cli -h ", host(Server), " -p ", integer_to_list(Port), cli_tls(maps:get(tls, Server, undefined))].

cli_tls(undefined) ->
    "";
cli_tls(#{ca := Ca, client_cert := Cert, client_key := Key}) ->
    [" --tls --cacert ", Ca, " --cert ", Cert, " --key ", Key].

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

log_file(#{dir := Dir}) -> filename:join(Dir, "redis.log").

%% The log from byte `From' on.
log(Server, From) ->
    case file:read_file(log_file(Server)) of
        {ok, <<_:From/binary, Rest/binary>>} -> Rest;
        _ -> <<>>
    end.

signal(Sig, Pid) ->
    _ = os:cmd("kill -" ++ Sig ++ " " ++ Pid ++ " 2>/dev/null"),
    ok.

%%--------------------------------------------------------------------
%% TLS

%% @doc A CA, a server certificate for 127.0.0.1/::1/localhost signed by it, a
%% second server certificate that names only redis.test (`name_cert',
%% `name_key'), a client certificate, and a second, unrelated CA; made with
%% openssl once per test run.
-spec certs() -> #{atom() => string()}.
certs() ->
    Dir = filename:join(tmp_root(), "certs"),
    Files = #{
        ca => filename:join(Dir, "ca.pem"),
        server_cert => filename:join(Dir, "server.pem"),
        server_key => filename:join(Dir, "server.key"),
        client_cert => filename:join(Dir, "client.pem"),
        client_key => filename:join(Dir, "client.key"),
        other_ca => filename:join(Dir, "other-ca.pem"),
        name_cert => filename:join(Dir, "name.pem"),
        name_key => filename:join(Dir, "name.key")
    },
    San = <<"subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n">>,
    Ext = filename:join(Dir, "san.ext"),
    %% made again when an earlier run made them for other names
    case filelib:is_regular(maps:get(name_cert, Files)) andalso file:read_file(Ext) =:= {ok, San} of
        true ->
            Files;
        false ->
            ok = filelib:ensure_path(Dir),
            ok = file:write_file(Ext, San),
            ok = file:write_file(filename:join(Dir, "name.ext"), "subjectAltName=DNS:redis.test\n"),
            ok = file:write_file(filename:join(Dir, "client.ext"), "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"),
            Steps = [
                "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem",
                "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca -keyout other-ca.key -out other-ca.pem",
                "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr",
                "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.pem",
                "openssl req -newkey rsa:2048 -nodes -subj /CN=redis.test -keyout name.key -out name.csr",
                "openssl x509 -req -in name.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile name.ext -out name.pem",
                "openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr",
                "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.pem"
            ],
            [run_in(Dir, Step) || Step <- Steps],
            Files
    end.

run_in(Dir, Cmd) ->
    Out = os:cmd("cd " ++ Dir ++ " && " ++ Cmd ++ " 2>&1; echo EXIT=$?"),
    case string:find(Out, "EXIT=0") of
        nomatch -> error({command_failed, Cmd, Out});
        _ -> ok
    end.

%%--------------------------------------------------------------------
%% Redis Cluster

%% @doc A real Redis Cluster of `masters' masters with `replicas' replicas
%% each (defaults 3 and 1), made by `redis-cli --cluster create'. `tls' and
%% `host' as for start/1. Returns the servers, masters first.
-spec start_cluster(map()) -> [server()].
start_cluster(Opts) ->
    Masters = maps:get(masters, Opts, 3),
    Replicas = maps:get(replicas, Opts, 1),
    Tls = maps:get(tls, Opts, undefined),
    Host = maps:get(host, Opts, "127.0.0.1"),
    Conf = [
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        "cluster-node-timeout 1000",
        "cluster-replica-validity-factor 0",
        "cluster-allow-replica-migration no",
        "appendonly yes",
        "appendfsync always"
        | maps:get(conf, Opts, [])
    ],
    Servers = [
        %% a cluster node also listens on its port + 10000 (the cluster bus)
        start_on_free_port(#{conf => Conf, tls => Tls, host => Host}, [10000], 5)
     || _ <- lists:seq(1, Masters * (1 + Replicas))
    ],
    Addrs = [[Host, ":", integer_to_list(port(S))] || S <- Servers],
    Out = os:cmd(lists:flatten([
        "redis-cli", cli_tls(Tls), " --cluster create ", lists:join(" ", Addrs),
        " --cluster-replicas ", integer_to_list(Replicas), " --cluster-yes 2>&1"
    ])),
    case string:find(Out, "All 16384 slots covered") of
        nomatch -> error({cluster_create_failed, Out});
        _ -> ok
    end,
    [wait_cluster_ok(S, 200) || S <- Servers],
    Servers.

wait_cluster_ok(Server, 0) ->
    error({cluster_not_ok, port(Server), cmd(Server, ["CLUSTER", "INFO"])});
wait_cluster_ok(Server, N) ->
    case string:find(cmd(Server, ["CLUSTER", "INFO"]), "cluster_state:ok") of
        nomatch -> timer:sleep(50), wait_cluster_ok(Server, N - 1);
        _ -> ok
    end.

-spec stop_cluster([server()]) -> ok.
stop_cluster(Servers) ->
    lists:foreach(fun stop/1, Servers).

%%--------------------------------------------------------------------
%% Sentinel

%% @doc A master, one replica and three sentinels watching them as
%% `mymaster'; `tls' and `host' as for start/1. Returns `#{master, replica,
%% sentinels}'.
-spec start_sentinel(map()) -> map().
start_sentinel(Opts) ->
    Tls = maps:get(tls, Opts, undefined),
    Host = maps:get(host, Opts, "127.0.0.1"),
    Extra = maps:get(conf, Opts, []),
    Master = start(#{conf => ["appendonly yes", "appendfsync always" | Extra], tls => Tls, host => Host}),
    Replica = start(#{
        conf => ["appendonly yes", "appendfsync always", "replicaof " ++ host_port(Master) | Extra],
        tls => Tls,
        host => Host
    }),
    SentinelConf = [
        "sentinel monitor mymaster " ++ host_port(Master) ++ " 2",
        "sentinel down-after-milliseconds mymaster 500",
        "sentinel failover-timeout mymaster 3000",
        "sentinel parallel-syncs mymaster 1"
        | maps:get(sentinel_conf, Opts, [])
    ],
    Sentinels = [
        start(#{exe => "redis-sentinel", conf => SentinelConf, tls => Tls, host => Host})
     || _ <- lists:seq(1, 3)
    ],
    #{master => Master, replica => Replica, sentinels => Sentinels}.

-spec stop_sentinel(map()) -> ok.
stop_sentinel(#{master := M, replica := R, sentinels := S}) ->
    lists:foreach(fun stop/1, [M, R | S]).
