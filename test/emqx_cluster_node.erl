%% @doc Real EMQX nodes for the adapter's tests and the EMQX demo: OTP
%% `peer' nodes that run an EMQX build named by `EMQX_ROOT' (its
%% `lib/*/ebin') and this project's application (its ebin and priv, as the
%% node that starts them has them), clustered with ekka, each with its MQTT
%% listener, gen_rpc and Erlang distribution on private 127.0.0.1 ports
%% below the ephemeral range (loopback_port), registered in a private epmd.
%%
%% A node is killed with SIGKILL of its OS process, as an operator's
%% `kill -9' would: no EMQX hook, no terminate callback, no graceful leave.
%%
%% The functions in the "peer side" section run inside the EMQX nodes
%% (through `peer:call'); the rest runs in the node that starts them, which
%% need not be distributed itself.
-module(emqx_cluster_node).

%% Controller side
-export([
    emqx_root/0,
    emqx_missing/0,
    start_epmd/0,
    stop_epmd/1,
    start_cluster/2,
    stop_cluster/1,
    stop/1,
    kill/1,
    wait_down/3,
    load_adapter/2,
    call/4,
    call/5,
    nodename/1,
    mqtt_port/1,
    add_emqtt_path/0
]).

%% Peer side
-export([peer_prepare/3, peer_start_emqx/2, peer_join_and_start_emqx/3, peer_cluster_view/0, peer_log_to/1]).
-export([peer_missing_routes/1]).

-type handle() :: #{
    name := string(),
    node := node(),
    peer := pid(),
    os_pid := string(),
    mqtt_port := inet:port_number(),
    rpc_port := inet:port_number(),
    dir := file:filename()
}.
-export_type([handle/0]).

-define(BOOT_TIMEOUT, 120000).
-define(CALL_TIMEOUT, 120000).

%%--------------------------------------------------------------------
%% Controller side

%% @doc The EMQX build to run: `EMQX_ROOT', if set and it holds
%% `lib/emqx/ebin'; else `undefined'.
-spec emqx_root() -> file:filename() | undefined.
emqx_root() ->
    case os:getenv("EMQX_ROOT") of
        false -> undefined;
        "" -> undefined;
        Root ->
            case filelib:is_file(filename:join([Root, "lib", "emqx", "ebin", "emqx.app"])) of
                true -> filename:absname(Root);
                false -> undefined
            end
    end.

%% @doc Why EMQX cannot be run here (for a skip line), or `false'.
-spec emqx_missing() -> false | string().
emqx_missing() ->
    case {os:getenv("EMQX_ROOT"), emqx_root()} of
        {_, Root} when Root =/= undefined ->
            false;
        {V, _} when V =:= false; V =:= "" ->
            "EMQX_ROOT is not set: name an EMQX 5.x build (a directory with "
            "lib/<app>/ebin, the emqx app compiled with TEST) to run the adapter "
            "against real EMQX nodes";
        {Root, _} ->
            "EMQX_ROOT=" ++ Root ++ " has no lib/emqx/ebin/emqx.app: it must name an "
            "EMQX 5.x build with lib/<app>/ebin"
    end.

%% @doc emqtt (EMQX's MQTT client; needs only kernel and stdlib) on this
%% node's code path, from the EMQX build.
-spec add_emqtt_path() -> ok.
add_emqtt_path() ->
    Ebin = filename:join([emqx_root(), "lib", "emqtt", "ebin"]),
    true = code:add_patha(Ebin),
    ok.

%% @doc A private epmd on a free loopback port, for the nodes started with
%% `start_cluster/2' (so that they meet no other node on this host). Returns
%% its port; `stop_epmd/1' kills it.
-spec start_epmd() -> inet:port_number().
start_epmd() ->
    Port = loopback_port:free(),
    Cmd = lists:flatten(io_lib:format("ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT=~b epmd -daemon 2>&1", [Port])),
    _ = os:cmd(Cmd),
    ok = test_util:wait_until(fun() -> epmd_alive(Port) end, 10000),
    Port.

%% epmd refuses `-kill' while a name is registered: a node killed just now
%% may still be, for a moment.
-spec stop_epmd(inet:port_number()) -> ok | {error, timeout}.
stop_epmd(Port) ->
    Kill = lists:flatten(io_lib:format("ERL_EPMD_PORT=~b epmd -kill >/dev/null 2>&1", [Port])),
    test_util:wait_until(
        fun() ->
            _ = os:cmd(Kill),
            timer:sleep(100),
            not epmd_alive(Port)
        end,
        10000
    ).

epmd_alive(Port) ->
    case gen_tcp:connect({127, 0, 0, 1}, Port, [], 500) of
        {ok, S} ->
            gen_tcp:close(S),
            true;
        {error, _} ->
            false
    end.

%% @doc Starts one EMQX node per name and clusters them (the first is the
%% seed, the others join it before EMQX starts on them). `Opts':
%% `epmd_port' (required, from `start_epmd/0'), `dir' (required: a
%% directory for the nodes' work dirs), `adapter' (the config for
%% `emqx_redis_storage_emqx:load/1', loaded on each node once all are up;
%% absent: not loaded), `emqx_conf' (extra EMQX config, a map merged deep
%% into the listeners config), `log_dir' (each node's warnings and errors, and
%% everything emqx_redis_storage logs, go to `<log_dir>/<name>.log', kept
%% after the node stopped). Stops what it started if any step fails.
-spec start_cluster([string()], map()) -> [handle()].
start_cluster(Names, #{epmd_port := _, dir := _} = Opts) ->
    Ports = [{Name, ports()} || Name <- Names],
    NodeOf = fun(Name) -> list_to_atom(Name ++ "@127.0.0.1") end,
    RpcMap = maps:from_list([{NodeOf(N), maps:get(rpc, P)} || {N, P} <- Ports]),
    Started = lists:foldl(
        fun({Name, P}, Acc) ->
            try
                Acc ++ [start_node(Name, P, RpcMap, Opts)]
            catch
                C:R:St ->
                    stop_cluster(Acc),
                    erlang:raise(C, R, St)
            end
        end,
        [],
        Ports
    ),
    try
        [Seed | Others] = Started,
        ok = call(Seed, ?MODULE, peer_start_emqx, [maps:get(mqtt_port, Seed), emqx_conf(Opts)]),
        [
            ok = call(H, ?MODULE, peer_join_and_start_emqx, [maps:get(mqtt_port, H), emqx_conf(Opts), nodename(Seed)])
         || H <- Others
        ],
        case maps:find(log_dir, Opts) of
            {ok, LogDir} ->
                [ok = call(H, ?MODULE, peer_log_to, [filename:join(LogDir, maps:get(name, H) ++ ".log")]) || H <- Started];
            error ->
                ok
        end,
        All = lists:sort([nodename(H) || H <- Started]),
        ok = test_util:wait_until(
            fun() -> lists:all(fun(H) -> lists:sort(call(H, mria, running_nodes, [])) =:= All end, Started) end,
            60000
        ),
        case maps:find(adapter, Opts) of
            {ok, AdapterConfig} -> [ok = load_adapter(H, AdapterConfig) || H <- Started];
            error -> ok
        end,
        Started
    catch
        C2:R2:St2 ->
            stop_cluster(Started),
            erlang:raise(C2, R2, St2)
    end.

ports() ->
    %% Distinct free ports (each is free now; distinct among themselves).
    [Dist, Rpc, Mqtt] = distinct_ports(3, []),
    #{dist => Dist, rpc => Rpc, mqtt => Mqtt}.

distinct_ports(0, Acc) ->
    Acc;
distinct_ports(N, Acc) ->
    P = loopback_port:free(),
    case lists:member(P, Acc) of
        true -> distinct_ports(N, Acc);
        false -> distinct_ports(N - 1, [P | Acc])
    end.

%% The distribution port was free when it was picked; another process may
%% have taken it since (the node then cannot listen): once more, on a
%% port picked now.
boot(Opts, Tries) ->
    try
        peer:start(Opts)
    catch
        exit:{boot_failed, _} when Tries > 1 ->
            Port = integer_to_list(loopback_port:free()),
            boot(Opts#{args := dist_port(maps:get(args, Opts), Port)}, Tries - 1)
    end.

dist_port(["inet_dist_listen_min", _ | Rest], Port) -> ["inet_dist_listen_min", Port | dist_port(Rest, Port)];
dist_port(["inet_dist_listen_max", _ | Rest], Port) -> ["inet_dist_listen_max", Port | dist_port(Rest, Port)];
dist_port([A | Rest], Port) -> [A | dist_port(Rest, Port)];
dist_port([], _Port) -> [].

start_node(Name, #{dist := Dist, rpc := Rpc, mqtt := Mqtt}, RpcMap, #{epmd_port := Epmd, dir := Base}) ->
    Dir = filename:join(Base, Name),
    _ = file:del_dir_r(Dir),
    ok = filelib:ensure_path(Dir),
    DistPort = integer_to_list(Dist),
    Args =
        lists:append([["-pa", P] || P <- code_paths()]) ++
            [
                "-proto_dist", "inet_tcp",
                "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
                "-kernel", "inet_dist_listen_min", DistPort,
                "-kernel", "inet_dist_listen_max", DistPort,
                "+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none"
            ],
    {ok, Peer, Node} = boot(#{
        name => Name,
        host => "127.0.0.1",
        longnames => true,
        connection => standard_io,
        peer_down => continue,
        wait_boot => ?BOOT_TIMEOUT,
        env => [{"ERL_EPMD_ADDRESS", "127.0.0.1"}, {"ERL_EPMD_PORT", integer_to_list(Epmd)}],
        args => Args
    }, 3),
    OsPid = peer:call(Peer, os, getpid, []),
    H = #{
        name => Name,
        node => Node,
        peer => Peer,
        os_pid => OsPid,
        mqtt_port => Mqtt,
        rpc_port => Rpc,
        dir => Dir
    },
    try
        ok = call(H, ?MODULE, peer_prepare, [Rpc, RpcMap, Dir]),
        H
    catch
        C:R:St ->
            stop(H),
            erlang:raise(C, R, St)
    end.

%% The EMQX build's ebins, this project's application (ebin; its priv is
%% found from there) and this module's directory (the test helpers).
code_paths() ->
    Root = emqx_root(),
    Root =/= undefined orelse error({emqx_root_missing, emqx_missing()}),
    Emqx = filelib:wildcard(filename:join([Root, "lib", "*", "ebin"])),
    App = filename:join(code:lib_dir(emqx_redis_storage), "ebin"),
    Helpers = filename:dirname(code:which(?MODULE)),
    Emqx ++ [App, Helpers].

emqx_conf(Opts) ->
    maps:get(emqx_conf, Opts, #{}).

%% @doc Stops every node (gracefully if it answers; its OS process is
%% killed in any case) and removes their directories.
-spec stop_cluster([handle()]) -> ok.
stop_cluster(Handles) ->
    lists:foreach(fun stop/1, Handles).

-spec stop(handle()) -> ok.
stop(#{peer := Peer, os_pid := OsPid, dir := Dir}) ->
    catch peer:stop(Peer),
    _ = os:cmd("kill -9 " ++ OsPid ++ " 2>/dev/null"),
    _ = test_util:wait_until(fun() -> not running(OsPid) end, 10000),
    _ = file:del_dir_r(Dir),
    ok.

%% @doc SIGKILL of the node's OS process; returns once the process is gone
%% (a zombie whose threads have exited counts as gone), with the time the
%% signal was sent (erlang:system_time(millisecond)).
-spec kill(handle()) -> integer().
kill(#{os_pid := OsPid, peer := Peer}) ->
    Killed = erlang:system_time(millisecond),
    _ = os:cmd("kill -9 " ++ OsPid),
    ok = test_util:wait_until(fun() -> not running(OsPid) end, 10000),
    catch peer:stop(Peer),
    Killed.

%% @doc Waits until `Observer' no longer counts `Dead' among the running
%% EMQX nodes (mria) nor, if the adapter runs there, among the live members
%% in Redis (emqx_redis_nodes).
-spec wait_down(handle(), handle(), timeout()) -> ok | {error, timeout}.
wait_down(Observer, Dead, Timeout) ->
    DeadNode = nodename(Dead),
    test_util:wait_until(
        fun() ->
            not lists:member(DeadNode, call(Observer, mria, running_nodes, [])) andalso
                case call(Observer, erlang, whereis, [emqx_redis_nodes_server]) of
                    undefined ->
                        true;
                    _ ->
                        case call(Observer, emqx_redis_nodes, live_nodes, []) of
                            {ok, Live} -> not lists:member(DeadNode, Live);
                            {error, _} -> false
                        end
                end
        end,
        Timeout
    ).

%% @doc `emqx_redis_storage_emqx:load(Config)' on the node.
-spec load_adapter(handle(), map()) -> ok | {error, term()}.
load_adapter(H, Config) ->
    call(H, emqx_redis_storage_emqx, load, [Config]).

-spec call(handle(), module(), atom(), list()) -> term().
call(H, M, F, A) ->
    call(H, M, F, A, ?CALL_TIMEOUT).

-spec call(handle(), module(), atom(), list(), timeout()) -> term().
call(#{peer := Peer}, M, F, A, Timeout) ->
    peer:call(Peer, M, F, A, Timeout).

-spec nodename(handle()) -> node().
nodename(#{node := Node}) -> Node.

-spec mqtt_port(handle()) -> inet:port_number().
mqtt_port(#{mqtt_port := Port}) -> Port.

%% Alive: exists and is not a zombie whose threads are gone.
running(OsPid) ->
    Proc = "/proc/" ++ OsPid,
    case file:read_file(Proc ++ "/stat") of
        {ok, Stat} ->
            [_, <<State, _/binary>>] = string:split(Stat, <<") ">>, trailing),
            State =/= $Z orelse
                case file:list_dir(Proc ++ "/task") of
                    {ok, [_, _ | _]} -> true;
                    _ -> false
                end;
        {error, _} ->
            false
    end.

%%--------------------------------------------------------------------
%% Peer side

%% @doc gen_rpc on 127.0.0.1 with this node's port and everyone's; mria on
%% mnesia (stock OTP has no `mnesia_hook' for rlog), its dir outside EMQX's
%% work dir (which must be empty when EMQX starts).
-spec peer_prepare(inet:port_number(), #{node() => inet:port_number()}, file:filename()) -> ok.
peer_prepare(RpcPort, RpcMap, Dir) ->
    [ok = application:load(A) || A <- [gen_rpc, mria, mnesia]],
    ok = application:set_env(gen_rpc, socket_ip, {127, 0, 0, 1}),
    ok = application:set_env(gen_rpc, tcp_server_port, RpcPort),
    ok = application:set_env(gen_rpc, client_config_per_node, {internal, RpcMap}),
    ok = application:set_env(mria, db_backend, mnesia),
    ok = application:set_env(mnesia, dir, filename:join(Dir, "mnesia")),
    ok.

%% @doc The seed node: EMQX with its TCP listener on 127.0.0.1:Port.
-spec peer_start_emqx(inet:port_number(), map()) -> ok.
peer_start_emqx(Port, Extra) ->
    Dir = work_dir(),
    _ = emqx_cth_suite:start([{emqx, emqx_app_conf(Port, Extra)}], #{work_dir => Dir}),
    %% The rpc root belongs to emqx_conf, which this build has not: the
    %% broker reads [rpc, mode] before forwarding to another node.
    ok = emqx_config:put([rpc], #{mode => async}),
    ok.

%% @doc Any other node: gen_rpc, mria and ekka first, join the seed, then EMQX.
-spec peer_join_and_start_emqx(inet:port_number(), map(), node()) -> ok.
peer_join_and_start_emqx(Port, Extra, Seed) ->
    {ok, _} = application:ensure_all_started(gen_rpc),
    ok = emqx_common_test_helpers:start_ekka(),
    ok = ekka:join(Seed),
    peer_start_emqx(Port, Extra).

%% @doc A log file for what an operator would look at: warnings and worse
%% from anyone, and all of emqx_redis_storage's own log (domain
%% [emqx_redis_storage | _]). The primary level is lowered to let the
%% latter through; EMQX's console handler keeps its own level.
-spec peer_log_to(file:filename()) -> ok.
peer_log_to(File) ->
    ok = filelib:ensure_dir(File),
    Ours = fun(#{meta := #{domain := [emqx_redis_storage | _]}} = E, _) -> E; (_, _) -> ignore end,
    Severe = fun(#{level := L} = E, _) ->
        case logger:compare_levels(L, warning) of
            lt -> ignore;
            _ -> E
        end
    end,
    Either = fun(E, X) ->
        case Ours(E, X) of
            ignore -> Severe(E, X);
            Ev -> Ev
        end
    end,
    ok = logger:add_handler(?MODULE, logger_std_h, #{
        level => all,
        %% Not buffered: a node killed with SIGKILL keeps its last lines.
        config => #{file => File, modes => [append, raw], filesync_repeat_interval => 100},
        filter_default => stop,
        filters => [{ours_or_severe, {Either, []}}],
        formatter => {logger_formatter, #{single_line => true, template => [time, " ", level, " ", msg, " ", mfa, "\n"]}}
    }),
    %% Handlers other than ours keep their own levels.
    [ok = logger:set_handler_config(Id, level, notice) || Id <- logger:get_handler_ids(), Id =/= ?MODULE, level_all(Id)],
    ok = logger:set_primary_config(level, info),
    ok.

level_all(Id) ->
    case logger:get_handler_config(Id) of
        {ok, #{level := all}} -> true;
        _ -> false
    end.

%% @doc The filters this node has no route to itself for.
-spec peer_missing_routes([binary()]) -> [binary()].
peer_missing_routes(Filters) ->
    [F || F <- Filters, not emqx_router:has_route(F, node())].

-spec peer_cluster_view() -> [node()].
peer_cluster_view() ->
    mria:running_nodes().

work_dir() ->
    {ok, MnesiaDir} = application:get_env(mnesia, dir),
    filename:join(filename:dirname(MnesiaDir), "emqx").

emqx_app_conf(Port, Extra) ->
    Listeners = #{
        listeners => #{
            tcp => #{default => #{bind => iolist_to_binary(["127.0.0.1:", integer_to_list(Port)])}},
            ssl => #{default => #{enable => false}},
            ws => #{default => #{enable => false}},
            wss => #{default => #{enable => false}}
        }
    },
    #{config => emqx_utils_maps:deep_merge(Listeners, Extra)}.
