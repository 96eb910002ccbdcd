%% Node liveness (emqx_redis_nodes) with real Erlang nodes (OTP `peer') on
%% one real redis-server: every node sees the others; a node killed with
%% SIGKILL is seen down by the others within ttl + one heartbeat and reaped
%% exactly once (its channels, routes and leases); a restart under the same
%% name is a new incarnation that no late reaper of the old one can touch; a
%% reaper that dies mid-way is replaced; a node cut off from Redis (behind a
%% frozen proxy) finds it was declared dead and registers its state again;
%% a graceful stop leaves at once; config errors name the field.
-module(emqx_redis_nodes_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(INTERVAL, 200).
-define(TTL, 1000).
-define(REAP_LEASE, 1000).
%% nodes.rs CLOCK_SKEW_MS: a reap lease goes to another reaper this long after it ended.
-define(CLOCK_SKEW, 1000).
%% What the scheduling of a loaded 2-core machine adds to a heartbeat.
-define(SLACK, 500).
-define(LONG_LEASE, 60000).

all() ->
    [
        config_errors_name_the_field,
        membership_off,
        killed_node_is_reaped_once_and_restarts_as_a_new_incarnation,
        reaper_that_dies_is_replaced,
        node_cut_off_from_redis_rejoins,
        graceful_stop_leaves_at_once,
        foreign_data_is_corrupt_and_changes_nothing
    ].

init_per_suite(Config) ->
    Redis = redis_test_server:start(),
    [{redis, Redis}, {addr, redis_test_server:address(Redis)} | Config].

end_per_suite(Config) ->
    redis_test_server:stop(?config(redis, Config)).

init_per_testcase(Case, Config) ->
    ct:timetrap({seconds, 60}),
    Prefix = iolist_to_binary(["nodes", integer_to_list(erlang:phash2(Case)), ":"]),
    {ok, Client} = emqx_redis_storage:connect(#{
        redis => #{servers => ?config(addr, Config)}, key_prefix => Prefix, route_index => redis
    }),
    [{prefix, Prefix}, {client, Client}, {peers, []} | Config].

end_per_testcase(_Case, Config) ->
    [catch peer:stop(Peer) || {Peer, _} <- peers()],
    erase(peers),
    Config.

%%--------------------------------------------------------------------
%% Cases

config_errors_name_the_field(Config) ->
    Bad = [
        {#{ttl => 100, heartbeat_interval => 200}, <<"nodes.ttl">>},
        {#{ttl => 1000, heartbeat_interval => 1000}, <<"nodes.ttl">>},
        {#{heartbeat_interval => <<"soon">>}, <<"nodes.heartbeat_interval">>},
        {#{heartbeat_interval => 0}, <<"nodes.heartbeat_interval">>},
        {#{ttl => -1}, <<"nodes.ttl">>},
        {#{reap_lease => "forever"}, <<"nodes.reap_lease">>},
        {#{enable => maybe}, <<"nodes.enable">>},
        {#{bogus => 1}, <<"nodes.bogus">>},
        {42, <<"nodes">>}
    ],
    [
        ?assertMatch(
            {error, {invalid_config, Field, _}},
            emqx_redis_storage:start(#{redis => #{servers => ?config(addr, Config)}, nodes => Nodes}),
            Nodes
        )
     || {Nodes, Field} <- Bad
    ],
    ?assertEqual(undefined, whereis(emqx_redis_nodes_server)),
    {ok, #{nodes := Defaults}} = emqx_redis_storage_config:parse(#{}),
    ?assertEqual(#{enable => true, heartbeat_interval => 1000, ttl => 10000, reap_lease => 10000}, Defaults),
    {ok, #{nodes := #{heartbeat_interval := 500, ttl := 3000, enable := false}}} =
        emqx_redis_storage_config:parse(#{<<"nodes">> => #{<<"heartbeat_interval">> => <<"500ms">>, <<"ttl">> => "3s", <<"enable">> => <<"false">>}}).

%% `nodes.enable => false' joins nothing; an undistributed VM never joins.
membership_off(Config) ->
    [{_, Off}] = start_peers(Config, [{"off", #{nodes => #{enable => false}}}]),
    ?assertEqual({error, disabled}, rpc(Off, emqx_redis_nodes, membership, [])),
    ?assertEqual({error, disabled}, rpc(Off, emqx_redis_nodes, subscribe, [])),
    ?assertMatch(#{nodes := disabled}, rpc(Off, emqx_redis_storage, status, [])),
    ?assertEqual({ok, []}, rpc(Off, emqx_redis_nodes, live_nodes, [])),
    ?assertEqual({ok, []}, emqx_redis_nodes:live_nodes(?config(client, Config))),
    %% This VM (nonode@nohost).
    ok = emqx_redis_storage:start(#{redis => #{servers => ?config(addr, Config)}, key_prefix => ?config(prefix, Config)}),
    try
        ?assertEqual({error, disabled}, emqx_redis_nodes:membership()),
        ?assertEqual({ok, []}, emqx_redis_nodes:live_nodes())
    after
        emqx_redis_storage:stop()
    end,
    ?assertEqual({error, not_started}, emqx_redis_nodes:subscribe()).

killed_node_is_reaped_once_and_restarts_as_a_new_incarnation(Config) ->
    Client = ?config(client, Config),
    [{_, A}, {_, B}, {_, C}] = start_peers(Config, [{"a", #{}}, {"b", #{}}, {"c", #{}}]),
    All = lists:sort([A, B, C]),
    [?assertEqual(ok, wait(fun() -> rpc(N, emqx_redis_nodes, live_nodes, []) =:= {ok, All} end, 5000), N) || N <- All],
    [?assertEqual(ok, wait(fun() -> has_event(Observer, nodeup, N) end, 5000), {Observer, N}) || Observer <- All, N <- All],
    %% C's state: channels, routes (plain and shared) and leases held long.
    CIds = [<<"c-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 20)],
    ok = rpc(C, nodes_test_peer, register_all, [CIds, [<<"t/c/1">>, <<"s/+/x">>]]),
    ok = rpc(C, emqx_redis_router, add_route, [<<"sh/#">>, {<<"g">>, C}]),
    [{ok, _} = rpc(C, emqx_redis_session, acquire_lease, [Id, C, ?LONG_LEASE]) || Id <- CIds],
    %% A's, which must stay.
    ok = rpc(A, nodes_test_peer, register_all, [[<<"a-1">>], [<<"t/a">>, <<"s/+/x">>]]),
    {ok, _} = rpc(A, emqx_redis_session, acquire_lease, [<<"a-1">>, A, ?LONG_LEASE]),
    #{incarnation := OldInc, alive := true} = rpc(C, emqx_redis_nodes, membership, []),

    Killed = kill(C),
    ?assertEqual(ok, wait(fun() -> [has_event(N, nodedown, C) || N <- [A, B]] =:= [true, true] end, 5000)),
    Latencies = [event_time(N, nodedown, C) - Killed || N <- [A, B]],
    ct:pal("nodedown seen ~w ms after SIGKILL (ttl ~b ms, heartbeat ~b ms)", [Latencies, ?TTL, ?INTERVAL]),
    [?assert(L =< ?TTL + ?INTERVAL + ?SLACK, {latency, L}) || L <- Latencies],
    ?assertEqual({ok, [A, B]}, emqx_redis_nodes:live_nodes(Client)),

    %% Reaped: channels, routes and leases gone, long before the leases
    %% would have expired; A's state untouched.
    ?assertEqual(ok, wait(fun() -> reap_count(Config, C) =:= 1 end, 5000)),
    Reaped = now_ms(),
    [?assertEqual({error, not_found}, emqx_redis_registry:lookup_channel(Client, Id)) || Id <- CIds],
    ?assertEqual({ok, []}, emqx_redis_router:match_routes(Client, <<"t/c/1">>)),
    ?assertEqual({ok, [A]}, emqx_redis_router:match_routes(Client, <<"s/y/x">>)),
    ?assertEqual({ok, []}, emqx_redis_router:match_routes(Client, <<"sh/1">>)),
    [?assertMatch({ok, _}, emqx_redis_session:acquire_lease(Client, Id, 'taker@host', 1000)) || Id <- CIds],
    ?assert(Reaped - Killed < ?LONG_LEASE div 10),
    ct:pal("C reaped ~b ms after SIGKILL", [Reaped - Killed]),
    ?assertEqual({ok, A}, emqx_redis_registry:lookup_channel(Client, <<"a-1">>)),
    ?assertEqual({ok, [A]}, emqx_redis_router:match_routes(Client, <<"t/a">>)),
    ?assertEqual({error, {held_by, A}}, emqx_redis_session:acquire_lease(Client, <<"a-1">>, 'taker@host', 1000)),
    %% Exactly once, also some heartbeats later.
    timer:sleep(5 * ?INTERVAL),
    ?assertEqual(1, reap_count(Config, C)),
    ?assertEqual(1, lists:sum([maps:get(reaps, rpc(N, emqx_redis_nodes, membership, [])) || N <- [A, B]])),

    %% C again, under the same name: a new incarnation, seen up by the others.
    [{_, C}] = start_peers(Config, [{"c", #{}}]),
    #{incarnation := NewInc} = rpc(C, emqx_redis_nodes, membership, []),
    ?assert(NewInc > OldInc, {NewInc, OldInc}),
    ?assertEqual(ok, wait(fun() -> [has_event(N, nodeup, C, Killed) || N <- [A, B]] =:= [true, true] end, 5000)),
    ?assertEqual({ok, All}, emqx_redis_nodes:live_nodes(Client)),
    ok = rpc(C, nodes_test_peer, register_all, [[<<"c-new">>], [<<"t/c/new">>]]),
    {ok, _} = rpc(C, emqx_redis_session, acquire_lease, [<<"c-new">>, C, ?LONG_LEASE]),
    %% Late reapers of the old incarnation remove nothing of the new one:
    %% one that would start now finds it gone, one whose lease has ended is
    %% refused by every step.
    CBin = atom_to_binary(C),
    ?assertEqual({error, gone}, emqx_redis_nodes:reap(Client, C, OldInc)),
    Ended = now_ms() - 1,
    [?assertEqual({ok, stale}, emqx_redis_nodes_reap:step(Client, Step, CBin, Ended)) || Step <- [channels, routes, leases]],
    timer:sleep(5 * ?INTERVAL),
    ?assertEqual({ok, C}, emqx_redis_registry:lookup_channel(Client, <<"c-new">>)),
    ?assertEqual({ok, [C]}, emqx_redis_router:match_routes(Client, <<"t/c/new">>)),
    ?assertEqual({error, {held_by, C}}, emqx_redis_session:acquire_lease(Client, <<"c-new">>, 'taker@host', 1000)),
    ?assertEqual(1, reap_count(Config, C)).

%% A reaper takes the lease, removes the channels and dies: nobody else
%% can reap until its lease has ended, then a live node does the whole
%% reap, and the dead reaper's later steps are refused.
reaper_that_dies_is_replaced(Config) ->
    Client = ?config(client, Config),
    [{_, A}, {_, B}] = start_peers(Config, [{"a", #{}}, {"b", #{}}]),
    {Ghost, Inc, Fence, Until} = dead_ghost_with_our_reap_lease(Client, 1),
    GhostBin = atom_to_binary(Ghost),
    ?assertEqual({ok, 1}, emqx_redis_nodes_reap:step(Client, channels, GhostBin, Until)),
    %% The reaper "dies" here. Until its lease has ended (and the skew
    %% allowance after it), the live nodes cannot take over.
    ?assertEqual({error, {held, <<"nonode@nohost">>}}, emqx_redis_nodes:reap(Client, Ghost, Inc)),
    ?assertEqual({ok, [<<"t/ghost">>]}, emqx_redis_router:topics(Client)),
    ?assertEqual(ok, wait(fun() -> reap_count(Config, Ghost) =:= 1 end, ?REAP_LEASE + ?CLOCK_SKEW + 5000)),
    Replaced = now_ms(),
    ?assert(Replaced >= Until + ?CLOCK_SKEW, {Replaced, Until}),
    ?assertEqual({ok, []}, emqx_redis_router:topics(Client)),
    ?assertMatch({ok, _}, emqx_redis_session:acquire_lease(Client, <<"ghost-1">>, 'taker@host', 1000)),
    ?assertEqual(1, lists:sum([maps:get(reaps, rpc(N, emqx_redis_nodes, membership, [])) || N <- [A, B]])),
    %% The dead reaper wakes up: refused.
    ?assertEqual({ok, stale}, emqx_redis_nodes_reap:step(Client, routes, GhostBin, Until)),
    ?assertEqual({ok, not_held}, emqx_redis_nodes_reap:finish(Client, GhostBin, Inc, Fence)),
    ?assertEqual(1, reap_count(Config, Ghost)),
    %% The name joins again (a new incarnation); the old reaper's steps
    %% still remove nothing of it.
    {ok, {joined, NewInc}} = emqx_redis_storage_client:call(Client, node_join, [GhostBin, ?LONG_LEASE]),
    ?assert(NewInc > Inc),
    ok = emqx_redis_registry:register_channel(Client, <<"ghost-2">>, Ghost),
    ok = emqx_redis_router:add_route(Client, <<"t/ghost2">>, Ghost),
    [?assertEqual({ok, stale}, emqx_redis_nodes_reap:step(Client, Step, GhostBin, Until)) || Step <- [channels, routes, leases]],
    ?assertEqual({error, gone}, emqx_redis_nodes:reap(Client, Ghost, Inc)),
    ?assertEqual({error, alive}, emqx_redis_nodes:reap(Client, Ghost, NewInc)),
    ?assertEqual({ok, Ghost}, emqx_redis_registry:lookup_channel(Client, <<"ghost-2">>)),
    ?assertEqual({ok, [Ghost]}, emqx_redis_router:match_routes(Client, <<"t/ghost2">>)).

%% A member made by this VM's client under a made-up name, with a channel,
%% a route and a lease; it leaves at once (dead), and this VM takes its reap
%% lease before a live node does. A live node may win that race (it claims
%% on each heartbeat): then another name is tried.
dead_ghost_with_our_reap_lease(Client, Attempt) when Attempt =< 5 ->
    Ghost = list_to_atom("ghost" ++ integer_to_list(Attempt) ++ "@127.0.0.1"),
    GhostBin = atom_to_binary(Ghost),
    {ok, {joined, Inc}} = emqx_redis_storage_client:call(Client, node_join, [GhostBin, ?LONG_LEASE]),
    ok = emqx_redis_registry:register_channel(Client, <<"ghost-1">>, Ghost),
    ok = emqx_redis_router:add_route(Client, <<"t/ghost">>, Ghost),
    {ok, _} = emqx_redis_session:acquire_lease(Client, <<"ghost-1">>, Ghost, ?LONG_LEASE),
    {ok, true} = emqx_redis_storage_client:call(Client, node_leave, [GhostBin, Inc]),
    case emqx_redis_nodes_reap:claim(Client, GhostBin, Inc, ?REAP_LEASE) of
        {ok, {granted, Fence, Until}} ->
            {Ghost, Inc, Fence, Until};
        {ok, Lost} ->
            ct:pal("a live node took ~s's reap lease first (~p): another name", [Ghost, Lost]),
            ok = wait(fun() -> emqx_redis_router:topics(Client) =:= {ok, []} end, 5000),
            dead_ghost_with_our_reap_lease(Client, Attempt + 1)
    end.

%% C reaches Redis through a proxy that freezes: the others declare it dead
%% and reap it; C stops counting itself alive; once the proxy thaws, C
%% finds it was declared dead, joins again and its hook registers its
%% channels and routes again.
node_cut_off_from_redis_rejoins(Config) ->
    Client = ?config(client, Config),
    Proxy = tcp_proxy:start(redis_test_server:port(?config(redis, Config))),
    try
        Via = #{redis => #{servers => tcp_proxy:address(Proxy)}},
        [{_, A}, {_, B}, {_, C}] = start_peers(Config, [{"a", #{}}, {"b", #{}}, {"c", Via}]),
        All = lists:sort([A, B, C]),
        ?assertEqual(ok, wait(fun() -> emqx_redis_nodes:live_nodes(Client) =:= {ok, All} end, 5000)),
        Ids = [<<"cut-1">>, <<"cut-2">>],
        Filters = [<<"t/cut">>, <<"t/+/cut">>],
        ok = rpc(C, nodes_test_peer, register_all, [Ids, Filters]),
        ok = rpc(C, emqx_redis_nodes, set_rejoin_hook, [{nodes_test_peer, rejoin, [Ids, Filters]}]),
        #{incarnation := OldInc} = rpc(C, emqx_redis_nodes, membership, []),

        ok = tcp_proxy:pause(Proxy),
        Frozen = now_ms(),
        ?assertEqual(ok, wait(fun() -> [has_event(N, nodedown, C) || N <- [A, B]] =:= [true, true] end, 5000)),
        ?assertEqual(ok, wait(fun() -> reap_count(Config, C) =:= 1 end, 5000)),
        [?assertEqual({error, not_found}, emqx_redis_registry:lookup_channel(Client, Id)) || Id <- Ids],
        ?assertEqual({ok, []}, emqx_redis_router:match_routes(Client, <<"t/cut">>)),
        %% In its own view, C is no longer alive.
        ?assertEqual(ok, wait(fun() -> has_event(C, nodedown, C) end, 5000)),
        SelfDown = event_time(C, nodedown, C) - Frozen,
        ct:pal("C stopped counting itself alive ~b ms after its Redis froze", [SelfDown]),
        ?assert(SelfDown =< ?TTL + ?SLACK, SelfDown),
        ?assertMatch(#{alive := false}, rpc(C, emqx_redis_nodes, membership, [])),
        ?assertEqual(0, rpc(C, nodes_test_peer, rejoins, [])),
        timer:sleep(max(0, Frozen + ?TTL + 500 - now_ms())),

        ok = tcp_proxy:resume(Proxy),
        Thawed = now_ms(),
        ?assertEqual(ok, wait(fun() -> rpc(C, nodes_test_peer, rejoins, []) =:= 1 end, 10000)),
        #{incarnation := NewInc, alive := true} = rpc(C, emqx_redis_nodes, membership, []),
        ?assert(NewInc > OldInc),
        ct:pal("C frozen ~b ms; joined again and its hook ran ~b ms after its Redis thawed", [Thawed - Frozen, now_ms() - Thawed]),
        [?assertEqual({ok, C}, emqx_redis_registry:lookup_channel(Client, Id)) || Id <- Ids],
        ?assertEqual({ok, [C]}, emqx_redis_router:match_routes(Client, <<"t/cut">>)),
        ?assertEqual({ok, All}, emqx_redis_nodes:live_nodes(Client)),
        ?assertEqual(ok, wait(fun() -> [has_event(N, nodeup, C, Frozen) || N <- [A, B, C]] =:= [true, true, true] end, 5000)),
        ?assertEqual(1, reap_count(Config, C))
    after
        tcp_proxy:stop(Proxy)
    end.

graceful_stop_leaves_at_once(Config) ->
    Client = ?config(client, Config),
    [{_, A}, {_, B}] = start_peers(Config, [{"a", #{}}, {"b", #{}}]),
    ?assertEqual(ok, wait(fun() -> emqx_redis_nodes:live_nodes(Client) =:= {ok, lists:sort([A, B])} end, 5000)),
    ?assertEqual(ok, wait(fun() -> has_event(A, nodeup, B) end, 5000)),
    ok = rpc(B, nodes_test_peer, register_all, [[<<"b-1">>], [<<"t/b">>]]),
    Stopped = now_ms(),
    ok = rpc(B, emqx_redis_storage, stop, []),
    ?assertEqual({ok, [A]}, emqx_redis_nodes:live_nodes(Client)),
    ?assertEqual(ok, wait(fun() -> has_event(A, nodedown, B) end, 5000)),
    ct:pal("nodedown seen ~b ms after a graceful stop", [event_time(A, nodedown, B) - Stopped]),
    ?assert(event_time(A, nodedown, B) - Stopped =< ?INTERVAL + ?SLACK),
    ?assertEqual(ok, wait(fun() -> reap_count(Config, B) =:= 1 end, 5000)),
    ?assertEqual({error, not_found}, emqx_redis_registry:lookup_channel(Client, <<"b-1">>)),
    ?assertEqual({ok, []}, emqx_redis_router:match_routes(Client, <<"t/b">>)).

%% What the library did not write at the membership keys or a slot's
%% lease owner index is `{corrupt, #{kind}}', and the call changes nothing.
foreign_data_is_corrupt_and_changes_nothing(Config) ->
    Client = ?config(client, Config),
    Prefix = ?config(prefix, Config),
    Q = fun(Cmd) -> emqx_redis_storage:q(Client, Cmd) end,
    Members = <<Prefix/binary, "nodes:{n}">>,
    Incs = <<Prefix/binary, "nodes:inc:{n}">>,
    {ok, _} = Q([<<"SET">>, Members, <<"x">>]),
    ?assertMatch({error, {corrupt, #{kind := node}}}, emqx_redis_nodes:live_nodes(Client)),
    ?assertMatch({error, {corrupt, #{kind := node}}}, emqx_redis_storage_client:call(Client, node_join, [<<"n@h">>, 1000])),
    {ok, _} = Q([<<"DEL">>, Members]),
    %% A member without incarnation, an incarnation that is no integer.
    {ok, _} = Q([<<"ZADD">>, Members, <<"1">>, <<"n@h">>]),
    ?assertMatch({error, {corrupt, #{kind := node}}}, emqx_redis_nodes:live_nodes(Client)),
    {ok, _} = Q([<<"HSET">>, Incs, <<"n@h">>, <<"1.5">>]),
    ?assertMatch({error, {corrupt, #{kind := node}}}, emqx_redis_nodes:live_nodes(Client)),
    ?assertMatch({error, {corrupt, #{kind := node}}}, emqx_redis_nodes:reap(Client, 'n@h', 1)),
    {ok, Dump} = Q([<<"DUMP">>, Members]),
    ?assertMatch({error, {corrupt, _}}, emqx_redis_storage_client:call(Client, node_join, [<<"n@h">>, 1000])),
    ?assertEqual({ok, Dump}, Q([<<"DUMP">>, Members])),
    {ok, _} = Q([<<"DEL">>, Members, Incs]),
    %% The lease owner index of a client's slot holds a string.
    {ok, F} = emqx_redis_session:acquire_lease(Client, <<"hostile">>, 'o@h', 60000),
    {ok, [Index]} = Q([<<"KEYS">>, <<Prefix/binary, "lown:*">>]),
    {ok, _} = Q([<<"SET">>, Index, <<"x">>]),
    Lease = <<Prefix/binary, "lease:{hostile}">>,
    {ok, Before} = Q([<<"DUMP">>, Lease]),
    ?assertMatch({error, {corrupt, #{kind := lease_owner}}}, emqx_redis_session:release_lease(Client, <<"hostile">>, F)),
    ?assertMatch({error, {corrupt, #{kind := lease_owner}}}, emqx_redis_session:acquire_lease(Client, <<"hostile">>, 'o@h', 1000)),
    ?assertEqual({ok, Before}, Q([<<"DUMP">>, Lease])),
    {ok, {granted, _, Until}} = begin
        {ok, {joined, Inc}} = emqx_redis_storage_client:call(Client, node_join, [<<"o@h">>, 60000]),
        {ok, true} = emqx_redis_storage_client:call(Client, node_leave, [<<"o@h">>, Inc]),
        emqx_redis_nodes_reap:claim(Client, <<"o@h">>, Inc, 5000)
    end,
    ?assertMatch({error, {corrupt, #{kind := lease_owner}}}, emqx_redis_nodes_reap:step(Client, leases, <<"o@h">>, Until)),
    ?assertEqual({ok, Before}, Q([<<"DUMP">>, Lease])).

%%--------------------------------------------------------------------
%% Helpers

peers() ->
    case get(peers) of
        undefined -> [];
        Peers -> Peers
    end.

%% Starts a peer per `{Name, ConfigOverrides}' with the application running
%% and an event collector subscribed.
start_peers(Config, Specs) ->
    Paths = [filename:dirname(code:which(M)) || M <- [emqx_redis_storage, ?MODULE]],
    Started = [start_peer(Config, Name, Overrides, Paths) || {Name, Overrides} <- Specs],
    put(peers, Started ++ peers()),
    Started.

start_peer(Config, Name, Overrides, Paths) ->
    {ok, Peer, Node} = start_peer_node(Name ++ "_" ++ os:getpid(), Paths, 20),
    Base = #{
        redis => #{servers => ?config(addr, Config), command_timeout => 500, connect_timeout => 1000},
        key_prefix => ?config(prefix, Config),
        nodes => #{heartbeat_interval => ?INTERVAL, ttl => ?TTL, reap_lease => ?REAP_LEASE}
    },
    AppConfig = maps:merge_with(fun(_K, V1, V2) -> maps:merge(V1, V2) end, Base, Overrides),
    ok = peer:call(Peer, nodes_test_peer, start, [AppConfig], 30000),
    {Peer, Node}.

%% A name is free again once epmd has seen its last holder die.
start_peer_node(Name, Paths, Attempts) ->
    Options = #{
        name => Name,
        host => "127.0.0.1",
        longnames => true,
        connection => standard_io,
        peer_down => continue,
        wait_boot => 30000,
        args => ["-pa" | Paths] ++ ["-connect_all", "false", "+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none"]
    },
    case peer:start(Options) of
        {ok, _, _} = Ok ->
            Ok;
        {error, _} when Attempts > 1 ->
            timer:sleep(200),
            start_peer_node(Name, Paths, Attempts - 1);
        {error, Reason} ->
            ct:fail({peer_not_started, Name, Reason})
    end.

peer_of(Node) ->
    {Peer, Node} = lists:keyfind(Node, 2, peers()),
    Peer.

rpc(Node, M, F, A) ->
    peer:call(peer_of(Node), M, F, A, 30000).

%% SIGKILL; returns the time it was sent.
kill(Node) ->
    Peer = peer_of(Node),
    OsPid = peer:call(Peer, os, getpid, []),
    put(peers, lists:keydelete(Node, 2, peers())),
    Killed = now_ms(),
    _ = os:cmd("kill -9 " ++ OsPid),
    ok = wait(fun() -> os:cmd("kill -0 " ++ OsPid ++ " 2>&1") =/= "" end, 5000),
    catch peer:stop(Peer),
    Killed.

has_event(Observer, Event, Node) ->
    has_event(Observer, Event, Node, 0).

%% Seen at or after `Since' (ms).
has_event(Observer, Event, Node, Since) ->
    [T || {E, N, T} <- rpc(Observer, nodes_test_peer, events, []), E =:= Event, N =:= Node, T >= Since] =/= [].

event_time(Observer, Event, Node) ->
    hd([T || {E, N, T} <- rpc(Observer, nodes_test_peer, events, []), E =:= Event, N =:= Node]).

reap_count(Config, Node) ->
    Key = <<(?config(prefix, Config))/binary, "nodes:reaped:{n}">>,
    case emqx_redis_storage:q(?config(client, Config), [<<"HGET">>, Key, atom_to_binary(Node)]) of
        {ok, undefined} -> 0;
        {ok, N} -> binary_to_integer(N)
    end.

wait(Fun, Ms) ->
    test_util:wait_until(Fun, Ms).

now_ms() ->
    erlang:system_time(millisecond).
