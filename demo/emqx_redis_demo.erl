%% @doc `make demo': an EMQX node is killed and another one takes all of
%% its clients over from Redis, losing nothing.
%%
%% This module is the controller. It starts (or is given) a Redis, starts
%% nodes A and B with the application, has A serve N clients (leases,
%% sessions, registry entries, routes, QoS 1 messages queued for the
%% offline ones), kills A with SIGKILL, has B take every client over, and
%% then compares what B found with what it computes itself from the client
%% indexes. Exit status: 0 if nothing was lost or wrong, 1 if something
%% was, 2 if the demo could not run.
%%
%% The other modules: emqx_redis_demo_data (the clients' data, from their
%% index), emqx_redis_demo_node (what A and B do), emqx_redis_demo_redis
%% (the private redis-server, REDIS_URL) and emqx_redis_demo_report (the
%% checks and the table).
%%
%% Environment: CLIENTS (default 10000), REDIS_URL (use that Redis, start
%% none), LEASE_MS (A's lease duration, default 5000), NODE_TTL_MS (the
%% nodes' heartbeat ttl, default 3000), DROP_SESSIONS (delete
%% that many sessions behind B's back, to see the checks catch it) and
%% DEMO_DIR (set by demo/run.sh: where the private redis-server lives).
-module(emqx_redis_demo).

-export([main/0]).
%% For the durable sessions' part (emqx_redis_demo_ds).
-export([say/2, phase/3, fail/2, int_env/4]).

-import(emqx_redis_demo_data, [online/1]).
-import(emqx_redis_demo_report, [seconds/1]).

-define(RPC_TIMEOUT, 600000).
%% How long B waits for A's leases beyond their duration.
-define(LEASE_GRACE_MS, 15000).
%% The duration of B's leases: B does not renew them, and they must outlast
%% its takeover work.
-define(B_LEASE_MS, 60000).

-spec main() -> no_return().
main() ->
    persistent_term:put({?MODULE, t0}, now_ms()),
    Status =
        try
            run(settings())
        catch
            throw:{demo_failed, Message} ->
                say("FAILED: ~ts", [Message]),
                2;
            Class:Reason:Stack ->
                say("FAILED: ~p:~p~n~p", [Class, Reason, Stack]),
                2
        end,
    halt(Status).

settings() ->
    #{
        clients => int_env("CLIENTS", 10000, 1, 1000000),
        lease_ms => int_env("LEASE_MS", 5000, 100, 600000),
        node_ttl_ms => int_env("NODE_TTL_MS", 3000, 500, 600000),
        drop => int_env("DROP_SESSIONS", 0, 0, 1000000),
        redis_url => os:getenv("REDIS_URL", ""),
        dir => os:getenv("DEMO_DIR", "")
    }.

-spec int_env(string(), integer(), integer(), integer()) -> integer().
int_env(Name, Default, Min, Max) ->
    case os:getenv(Name, "") of
        "" ->
            Default;
        Text ->
            case string:to_integer(Text) of
                {N, ""} when N >= Min, N =< Max -> N;
                _ -> fail("~s must be an integer from ~b to ~b, not ~p", [Name, Min, Max, Text])
            end
    end.

run(#{redis_url := "", dir := ""}) ->
    fail("DEMO_DIR is not set: run the demo with `make demo` (or bash demo/run.sh)", []);
run(#{redis_url := "", dir := Dir} = Settings) ->
    Redis = ok_or_fail(emqx_redis_demo_redis:start(Dir)),
    say("redis: started ~s", [maps:get(label, Redis)]),
    try
        demo(Settings, Redis)
    after
        case emqx_redis_demo_redis:stop(Redis) of
            {stopped, Pid} -> say("redis: stopped redis-server (pid ~s)", [Pid]);
            not_running -> say("redis: redis-server was no longer running", [])
        end
    end;
run(#{redis_url := Url} = Settings) ->
    Redis = ok_or_fail(emqx_redis_demo_redis:from_url(Url)),
    say("redis: REDIS_URL -> ~s (no redis-server started)", [maps:get(label, Redis)]),
    demo(Settings, Redis).

ok_or_fail({ok, Value}) -> Value;
ok_or_fail({error, Message}) -> fail("~ts", [Message]).

%%--------------------------------------------------------------------
%% The demo

demo(#{clients := N, lease_ms := LeaseMs, node_ttl_ms := NodeTtl, drop := Drop}, #{config := RedisConfig}) ->
    %% A key prefix of its own: runs never see each other's data.
    Prefix = iolist_to_binary(["emqx_demo_", integer_to_list(erlang:system_time(second)), "_", os:getpid(), ":"]),
    Config = #{
        redis => RedisConfig,
        key_prefix => Prefix,
        persistence => #{session_ttl => <<"2h">>, message_ttl => <<"2h">>},
        %% A node is declared dead NODE_TTL_MS after its last heartbeat.
        nodes => #{heartbeat_interval => max(100, NodeTtl div 5), ttl => NodeTtl}
    },
    Peers = start_nodes(Config),
    [{_, A}, {_, B}] = Peers,
    say("nodes: A = ~s, B = ~s, both running emqx_redis_storage (key prefix ~s; heartbeat every ~b ms, "
        "dead after ~b ms)", [A, B, Prefix, max(100, NodeTtl div 5), NodeTtl]),
    try
        Result = take_over_demo(N, LeaseMs, Drop, A, B),
        Status =
            case emqx_redis_demo_report:print(Result) of
                0 ->
                    say("PASSED: node A was killed and node B took over ~b clients; nothing lost, nothing wrong", [N]),
                    0;
                Bad ->
                    say("FAILED: ~b items lost or wrong (see the table)", [Bad]),
                    1
            end,
        case os:getenv("REDIS_URL", "") of
            "" -> ok;
            _ -> say("the data stays in that Redis under the key prefix ~s (sessions expire in 2 h)", [Prefix])
        end,
        Status
    after
        stop_nodes(Peers)
    end.

take_over_demo(N, LeaseMs, Drop, A, B) ->
    %% A serves the clients.
    {{Fences, LoadErrors, RoutesAdded}, LoadMs} =
        phase("A: clients connect", N, fun(P) -> rpc(A, load, [N, P]) end),
    LoadErrors =:= [] orelse fail("A could not store its clients: ~p", [lists:sublist(LoadErrors, 3)]),
    Messages = length(lists:append([emqx_redis_demo_data:messages(I) || I <- lists:seq(1, N)])),
    Online = [I || I <- lists:seq(1, N), online(I)],
    say("A: ~b clients: ~b leases and fenced sessions, ~b channels registered, ~b QoS 1 messages queued "
        "for ~b offline clients, ~b routes (~s)",
        [N, length(Fences), length(Online), Messages, N - length(Online), RoutesAdded, seconds(LoadMs)]),
    %% Durable sessions: A starts publishing, and is killed while it does.
    Durable = emqx_redis_demo_ds:start(A, B, N, Fences),
    {RenewErrors, RenewMs} = phase("A: renews its leases", N, fun(P) -> rpc(A, renew, [Fences, LeaseMs, P]) end),
    RenewErrors =:= [] orelse fail("A could not renew its leases: ~p", [lists:sublist(RenewErrors, 3)]),
    say("A: renewed its ~b leases for ~b ms, as a live node keeps doing (~s)", [length(Fences), LeaseMs, seconds(RenewMs)]),

    %% B watches the membership, and counts A alive.
    ok = rpc(B, watch, [self()]),
    wait_seen_alive(B, A, now_ms() + ?LEASE_GRACE_MS),

    %% A dies.
    Killed = now_ms(),
    OsPid = kill(A),
    say("A: killed with SIGKILL (OS pid ~s): no shutdown, nothing flushed, its leases still held", [OsPid]),
    DurableKilled = emqx_redis_demo_ds:killed(Durable),
    Dropped = drop_sessions(B, N, Drop),

    %% B takes over: it tries the leases at once (A holds them), sees A
    %% die, reaps it (its channels, routes and leases), then takes the leases.
    {First, HeldByA} = try_leases(B, A, N),
    wait_event(nodedown, A),
    DownMs = now_ms() - Killed,
    say("B: saw A down ~s after it died (it stopped renewing its heartbeat)", [seconds(DownMs)]),
    Reap = wait_reaped(B, A, Killed + LeaseMs + ?LEASE_GRACE_MS),
    ReapedMs = now_ms() - Killed,
    say("B: reaped A ~s after it died (in ~s): ~b registry entries and ~b routes removed, ~b leases released",
        [seconds(ReapedMs), seconds(maps:get(took_ms, Reap)), maps:get(channels, Reap), maps:get(routes, Reap),
         maps:get(leases, Reap)]),
    Leases = wait_leases(B, First, N, Killed),
    LeaseWaitMs = now_ms() - Killed,
    FenceOf = maps:from_list(Fences),
    Plan = [{I, maps:get(I, FenceOf), Fence} || {I, {ok, Fence}} <- Leases],
    {Clients, TakeMs} = phase("B: takes over sessions and queues", length(Plan), fun(P) -> rpc(B, take_over, [Plan, A, P]) end),
    say("B: loaded ~b sessions and their queued messages, saved them under its own fences (~s)",
        [length(Clients), seconds(TakeMs)]),
    %% The clients that were online on A reconnect to B.
    Reconnecting = [I || #{i := I} <- Clients, online(I)],
    {RegisterErrors, RegistryMs} =
        phase("B: registry", length(Reconnecting), fun(P) -> rpc(B, restore_registry, [Reconnecting, P]) end),
    say("B: registry: ~b clients registered on B (~s)", [length(Reconnecting) - length(RegisterErrors), seconds(RegistryMs)]),
    Routes = lists:append([emqx_redis_demo_data:subscription_routes(maps:get(subscriptions, S), B) || #{session := {ok, S}} <- Clients]),
    {RoutesRestored, RoutesMs} = timed(fun() -> rpc(B, restore_routes, [Routes]) end),
    say("B: routes: add_routes added ~s for B (~s)", [count(RoutesRestored), seconds(RoutesMs)]),
    TakeoverMs = now_ms() - Killed,
    say("B: took over all clients ~s after A died", [seconds(TakeoverMs)]),
    DurableResumed = emqx_redis_demo_ds:resume(B, DurableKilled, Plan),

    %% What B sees now.
    Table = emqx_redis_demo_data:route_table(N, B),
    Topics = emqx_redis_demo_data:sample_topics(N),
    {Seen, InspectMs} = phase("B: reads everything back", N + map_size(Table), fun(P) -> rpc(B, inspect, [N, Topics, P]) end),
    say("B: read back ~b registry entries, ~b session infos, ~b route filters, ~b match_routes answers (~s), e.g.:",
        [N, N, length(maps:get(filters, Seen)), length(Topics), seconds(InspectMs)]),
    [say("  match_routes(~s) -> ~s", [T, show_dests(Answer, B)]) || {T, Answer} <- lists:sublist(maps:get(matches, Seen), 9)],
    #{
        durable => DurableResumed,
        n => N, a => A, b => B, fences => FenceOf, leases => maps:from_list(Leases), held_by_a => HeldByA,
        clients => maps:from_list([{I, C} || #{i := I} = C <- Clients]),
        registry_removed => {ok, maps:get(channels, Reap)}, register_errors => RegisterErrors,
        routes_removed => {ok, maps:get(routes, Reap)}, routes_restored => RoutesRestored,
        down_ms => DownMs, reaped_ms => ReapedMs, reap => Reap,
        route_table => Table, topics => Topics, seen => Seen, dropped => Dropped,
        lease_wait_ms => LeaseWaitMs, takeover_ms => TakeoverMs
    }.

%% B tries every lease once, right after A died.
try_leases(B, A, N) ->
    {First, _} = phase("B: tries the leases", N, fun(P) -> rpc(B, acquire, [lists:seq(1, N), ?B_LEASE_MS, P]) end),
    Held = [I || {I, {error, {held_by, _}}} <- First],
    HeldByA = length([I || {I, {error, {held_by, Owner}}} <- First, Owner =:= A]),
    say("B: ~b of ~b leases still held by A, ~b by others; waiting for A to be declared dead and reaped",
        [HeldByA, N, length(Held) - HeldByA]),
    {First, HeldByA}.

%% Then the ones still held: released by the reap, or expired.
wait_leases(B, First, N, Killed) ->
    Held = [I || {I, Result} <- First, is_held(Result)],
    Rest = wait_for_leases(B, Held, now_ms() + ?LEASE_GRACE_MS),
    Leases = [L || {_, Result} = L <- First, not is_held(Result)] ++ Rest,
    Acquired = length([ok || {_, {ok, _}} <- Leases]),
    say("B: acquired ~b of ~b leases, ~s after A died", [Acquired, N, seconds(now_ms() - Killed)]),
    Leases.

wait_event(Event, Node) ->
    receive
        {emqx_redis_nodes, Event, Node} -> ok
    after ?LEASE_GRACE_MS * 4 ->
        fail("B did not see ~s ~s within ~b s", [Node, Event, ?LEASE_GRACE_MS * 4 div 1000])
    end.

wait_seen_alive(B, A, Deadline) ->
    Name = atom_to_binary(A),
    #{live := Live} = erpc:call(B, emqx_redis_nodes, membership, [], ?RPC_TIMEOUT),
    case lists:member(Name, Live) of
        true -> ok;
        false ->
            now_ms() < Deadline orelse fail("B does not see A alive", []),
            timer:sleep(20),
            wait_seen_alive(B, A, Deadline)
    end.

%% B (the only live node) reaps A; its membership says when it has.
wait_reaped(B, A, Deadline) ->
    Name = atom_to_binary(A),
    case rpc(B, last_reap, []) of
        #{node := Name} = Reap ->
            Reap;
        _ ->
            case now_ms() > Deadline of
                true ->
                    fail("B did not reap A in time", []);
                false ->
                    timer:sleep(20),
                    wait_reaped(B, A, Deadline)
            end
    end.

wait_for_leases(_B, [], _Deadline) ->
    [];
wait_for_leases(B, [Probe | Others] = Held, Deadline) ->
    [{_, Result}] = Got = rpc(B, acquire, [[Probe], ?B_LEASE_MS, self()]),
    case is_held(Result) of
        false ->
            Tried = rpc(B, acquire, [Others, ?B_LEASE_MS, self()]),
            flush_progress(),
            Still = [I || {I, R} <- Tried, is_held(R)],
            Got ++ [T || {_, R} = T <- Tried, not is_held(R)] ++ wait_for_leases(B, Still, Deadline);
        true ->
            flush_progress(),
            case now_ms() > Deadline of
                true ->
                    [{I, {error, still_held}} || I <- Held];
                false ->
                    timer:sleep(100),
                    wait_for_leases(B, Held, Deadline)
            end
    end.

is_held({error, {held_by, _}}) -> true;
is_held(_) -> false.

flush_progress() ->
    receive
        {done, _} -> flush_progress()
    after 0 -> ok
    end.

drop_sessions(_B, _N, 0) ->
    [];
drop_sessions(B, N, Count) ->
    Dropped = lists:sublist([I || I <- lists:seq(1, N), not online(I)], Count),
    ok = rpc(B, drop, [Dropped]),
    say("DROP_SESSIONS: deleted the sessions and queued messages of ~b clients behind B's back; "
        "the checks must report them lost", [length(Dropped)]),
    Dropped.

%%--------------------------------------------------------------------
%% Nodes

start_nodes(Config) ->
    Paths = [filename:dirname(code:which(M)) || M <- [emqx_redis_storage, ?MODULE]],
    Peers = [start_node(Name ++ "_" ++ os:getpid(), Paths) || Name <- ["emqx_demo_a", "emqx_demo_b"]],
    lists:foreach(
        fun({_, Node}) ->
            case rpc(Node, start, [Config]) of
                ok -> ok;
                {error, Reason} -> stop_nodes(Peers), fail("emqx_redis_storage did not start on ~s: ~0p", [Node, Reason])
            end
        end,
        Peers
    ),
    Peers.

start_node(Name, Paths) ->
    Options = #{
        name => Name,
        host => "127.0.0.1",
        longnames => true,
        peer_down => continue,
        wait_boot => 60000,
        args =>
            ["-pa" | Paths] ++
            ["-connect_all", "false", "-kernel", "inet_dist_use_interface", "{127,0,0,1}"] ++
            %% Idle schedulers do not spin: on a small machine that CPU is Redis's.
            ["+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none"]
    },
    case peer:start(Options) of
        {ok, Peer, Node} -> {Peer, Node};
        {error, Reason} -> fail("could not start node ~s: ~p", [Name, Reason])
    end.

stop_nodes(Peers) ->
    lists:foreach(fun({Peer, _}) -> catch peer:stop(Peer) end, Peers).

%% SIGKILL, and wait until the node is gone. Returns its OS pid.
kill(Node) ->
    OsPid = erpc:call(Node, os, getpid, []),
    true = erlang:monitor_node(Node, true),
    _ = os:cmd("kill -9 " ++ OsPid),
    receive
        {nodedown, Node} -> OsPid
    after 10000 ->
        fail("node ~s did not go down after SIGKILL", [Node])
    end.

rpc(Node, Fun, Args) ->
    erpc:call(Node, emqx_redis_demo_node, Fun, Args, ?RPC_TIMEOUT).

%%--------------------------------------------------------------------
%% Output

%% Runs `Fun(Progress)', printing Progress's count of done items once a
%% second. Returns `{Result, Milliseconds}'.
-spec phase(string(), non_neg_integer(), fun((pid()) -> Result)) -> {Result, non_neg_integer()}.
phase(Label, Total, Fun) ->
    Printer = spawn_link(fun() -> progress(Label, Total, 0, now_ms() + 1000) end),
    try
        timed(fun() -> Fun(Printer) end)
    after
        unlink(Printer),
        exit(Printer, kill)
    end.

progress(Label, Total, Done, PrintAt) ->
    receive
        {done, N} -> progress(Label, Total, Done + N, PrintAt)
    after max(0, PrintAt - now_ms()) ->
        say("  ~s: ~b/~b", [Label, min(Done, Total), Total]),
        progress(Label, Total, Done, PrintAt + 1000)
    end.

timed(Fun) ->
    Start = now_ms(),
    Result = Fun(),
    {Result, now_ms() - Start}.

-spec say(io:format(), list()) -> ok.
say(Format, Args) ->
    Elapsed = (now_ms() - persistent_term:get({?MODULE, t0})) / 1000,
    io:format("[~7.1fs] " ++ Format ++ "~n", [Elapsed | Args]).

%% Dests with node B shown as `B'.
show_dests({ok, Dests}, B) ->
    Show = fun
        ({Group, Node}) when Node =:= B -> io_lib:format("{~s, B}", [Group]);
        (Node) when Node =:= B -> "B";
        (Other) -> io_lib:format("~0p", [Other])
    end,
    ["[", lists:join(", ", [Show(D) || D <- lists:sort(Dests)]), "]"];
show_dests(Error, _B) ->
    io_lib:format("~0p", [Error]).

count({ok, N}) -> integer_to_list(N);
count({error, Reason}) -> io_lib:format("(error: ~p)", [Reason]).

now_ms() -> erlang:monotonic_time(millisecond).

-spec fail(io:format(), list()) -> no_return().
fail(Format, Args) ->
    throw({demo_failed, io_lib:format(Format, Args)}).
