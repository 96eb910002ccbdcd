%% The EMQX adapter (emqx_redis_storage_emqx) on real EMQX nodes with real
%% MQTT clients (emqtt): two EMQX nodes clustered on loopback, the adapter
%% loaded on both, one private redis-server. Node A is killed with SIGKILL;
%% a persistent session's client reconnects to node B with clean_start=false
%% and gets everything it was owed, as a user of a broker that keeps its
%% sessions in Redis relies on:
%%
%% - its session back: CONNACK session-present 1, its subscriptions (an
%%   unsubscribed filter stays gone, a subscription's QoS still caps);
%% - messages published while it was offline, each once, in order per topic
%%   (QoS 1, a wildcard filter, QoS 2);
%% - messages it had received but not acknowledged come again with dup=1,
%%   what it acknowledged does not come again;
%% - clean_start=true, a session expiry of 0 and an expired session leave
%%   nothing to resume;
%% - a live takeover (node A alive) delivers each message once;
%% - with Redis down, EMQX serves its clients as it would without the
%%   adapter.
%%
%% Needs an EMQX 5.x build: EMQX_ROOT names a directory with lib/<app>/ebin
%% (emqx compiled with TEST, emqtt, and their dependencies). Without it the
%% suite is skipped with a line that says so.
%%
%% EMQX_REDIS_ADAPTER=off runs the same cases on stock EMQX (the adapter not
%% loaded): the baseline, where the cases that need the adapter fail.
-module(emqx_redis_emqx_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

%% Node liveness in Redis: a killed node is seen dead after TTL ms.
-define(HEARTBEAT, 300).
-define(TTL, 2000).
%% How often acknowledgements are committed.
-define(COMMIT_INTERVAL, 100).
%% Generous: a loaded 2-core machine.
-define(DOWN_TIMEOUT, 60000).
-define(RECONNECT_TIMEOUT, 90000).
-define(RECEIVE_TIMEOUT, 30000).
%% How long "nothing more arrives" is watched for.
-define(QUIET, 3000).
-define(EXPIRY, 3600).
%% Clients resumed at once while a publisher goes on.
-define(STEADY_CLIENTS, 100).

all() ->
    [
        offline_subscriber_gets_every_message_after_node_killed,
        wildcard_subscriber_gets_every_message_in_order_per_topic,
        unacked_messages_come_again_with_dup_acked_ones_do_not,
        clean_start_discards_the_stored_session,
        zero_expiry_session_is_not_stored,
        expired_session_is_not_resumed,
        live_takeover_delivers_each_message_once,
        redis_down_clients_are_served_as_without_adapter,
        qos2_offline_messages_after_node_killed,
        qos2_unacked_messages_come_again_with_dup,
        mqtt311_persistent_session_survives_node_kill,
        unsubscribed_filter_is_not_resumed_and_subscription_qos_is_kept,
        session_survives_two_node_kills,
        shared_subscription_delivers_once_per_group,
        redis_back_sessions_persist_again,
        messages_published_while_clients_resume_are_not_lost,
        messages_published_while_clients_move_live_are_not_lost,
        reconnect_at_once_after_kill,
        resumed_session_takes_its_listeners_zone,
        rate_limits_hold_across_nodes
    ].

suite() ->
    [{timetrap, {minutes, 10}}].

init_per_suite(Config) ->
    case emqx_cluster_node:emqx_missing() of
        false ->
            ok = emqx_cluster_node:add_emqtt_path(),
            Redis = redis_test_server:start(),
            Epmd = emqx_cluster_node:start_epmd(),
            [{redis, Redis}, {epmd, Epmd} | Config];
        Why ->
            {skip, Why}
    end.

end_per_suite(Config) ->
    emqx_cluster_node:stop_epmd(?config(epmd, Config)),
    redis_test_server:stop(?config(redis, Config)).

init_per_testcase(Case, Config) ->
    Redis = ?config(redis, Config),
    "OK" = redis_test_server:cmd(Redis, ["FLUSHALL"]),
    Dir = filename:join([redis_test_server:tmp_root(), "emqx_nodes", atom_to_list(Case)]),
    Suffix = integer_to_list(erlang:unique_integer([positive])),
    Names = [Name ++ Suffix || Name <- lists:sublist(["emqx_a", "emqx_b", "emqx_c"], node_count(Case))],
    Nodes = emqx_cluster_node:start_cluster(
        Names,
        maps:merge(
            #{epmd_port => ?config(epmd, Config), dir => Dir, log_dir => ?config(priv_dir, Config), emqx_conf => emqx_conf(Case)},
            adapter(Case, Redis)
        )
    ),
    [{nodes, Nodes} | Config].

end_per_testcase(_Case, Config) ->
    emqx_cluster_node:stop_cluster(?config(nodes, Config)),
    %% A case that stopped Redis: the next one gets it back (empty).
    Redis = ?config(redis, Config),
    case redis_test_server:cmd(Redis, ["PING"]) of
        "PONG" -> ok;
        _ -> ok = redis_test_server:restart(Redis)
    end,
    flush_mailbox(),
    ok.

%% Every listener in zone `small', whose queue holds 5 messages.
emqx_conf(resumed_session_takes_its_listeners_zone) ->
    #{zones => #{small => #{mqtt => #{max_mqueue_len => 5}}}, listeners => #{tcp => #{default => #{zone => small}}}};
emqx_conf(_) ->
    #{}.

node_count(session_survives_two_node_kills) -> 3;
node_count(_) -> 2.

adapter(Case, Redis) ->
    case os:getenv("EMQX_REDIS_ADAPTER") of
        "off" -> #{};
        _ -> #{adapter => maps:merge_with(fun(_, A, B) -> maps:merge(A, B) end, adapter_config(Redis), extra(Case))}
    end.

%% Budgets of 2 (and 1 more a second): connections per username,
%% messages per publisher.
extra(rate_limits_hold_across_nodes) ->
    #{
        limiter => #{limiters => #{<<"conn">> => #{rate => 1, burst => 2}, <<"pub">> => #{rate => 1, burst => 2}}},
        emqx => #{limits => #{connect_per_username => <<"conn">>, publish_per_client => <<"pub">>}}
    };
extra(expired_session_is_not_resumed) ->
    #{emqx => #{sweep_interval => 1000}};
extra(_) ->
    #{}.

adapter_config(Redis) ->
    #{
        redis => #{servers => redis_test_server:address(Redis)},
        nodes => #{heartbeat_interval => ?HEARTBEAT, ttl => ?TTL},
        emqx => #{commit_interval => ?COMMIT_INTERVAL}
    }.

%%--------------------------------------------------------------------
%% Cases

%% (a) A persistent QoS 1 subscriber on A goes offline; B's publisher gets
%% a PUBACK for each message; A is killed; on B with clean_start=false the
%% client gets every message, once, in publish order.
offline_subscriber_gets_every_message_after_node_killed(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-a">>,
    Topic = <<"t/a">>,
    S1 = subscribe_persistent(A, Id, [{Topic, 1}]),
    ok = emqx_test_mqtt:disconnect(S1),
    wait_route(B, Topic, A),
    Before = payloads(1, 20),
    ok = publish_acked(B, Topic, Before, 1),
    kill_and_wait(A, B),
    %% Published while no node held the session.
    During = payloads(21, 30),
    ok = publish_acked(B, Topic, During, 1),
    {ok, S2} = reconnect(B, Id),
    ?assert(emqx_test_mqtt:session_present(S2)),
    Got = emqx_test_mqtt:receive_messages(S2, 30, ?RECEIVE_TIMEOUT) ++ emqx_test_mqtt:receive_none(S2, ?QUIET),
    ?assertEqual([{Topic, P, 1} || P <- Before ++ During], [{T, P, Q} || #{topic := T, payload := P, qos := Q} <- Got]),
    %% The session goes on: live messages arrive as before.
    ok = publish_acked(B, Topic, [<<"after">>], 1),
    ?assertMatch([#{payload := <<"after">>, dup := false}], emqx_test_mqtt:receive_messages(S2, 1, ?RECEIVE_TIMEOUT)),
    ok = emqx_test_mqtt:disconnect(S2).

%% (a) with a wildcard filter and several topics: each topic's messages
%% arrive in publish order, each once, none missing.
wildcard_subscriber_gets_every_message_in_order_per_topic(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-wild">>,
    S1 = subscribe_persistent(A, Id, [{<<"d/+/x">>, 1}]),
    ok = emqx_test_mqtt:disconnect(S1),
    wait_route(B, <<"d/+/x">>, A),
    Topics = [<<"d/1/x">>, <<"d/2/x">>, <<"d/3/x">>],
    %% Interleaved: d/1/x m-1, d/2/x m-1, d/3/x m-1, d/1/x m-2, ...
    Sent = [{T, P} || P <- payloads(1, 10), T <- Topics],
    [ok = publish_acked(B, T, [P], 1) || {T, P} <- lists:sublist(Sent, 15)],
    %% A topic no filter matches: never delivered.
    ok = publish_acked(B, <<"d/1/y">>, [<<"no">>], 1),
    kill_and_wait(A, B),
    [ok = publish_acked(B, T, [P], 1) || {T, P} <- lists:nthtail(15, Sent)],
    {ok, S2} = reconnect(B, Id),
    ?assert(emqx_test_mqtt:session_present(S2)),
    Got = emqx_test_mqtt:receive_messages(S2, length(Sent), ?RECEIVE_TIMEOUT) ++ emqx_test_mqtt:receive_none(S2, ?QUIET),
    GotPairs = [{T, P} || #{topic := T, payload := P} <- Got],
    ?assertEqual(lists:sort(Sent), lists:sort(GotPairs)),
    [?assertEqual([P || {T1, P} <- Sent, T1 =:= T], [P || {T1, P} <- GotPairs, T1 =:= T], T) || T <- Topics],
    ok = emqx_test_mqtt:disconnect(S2).

%% (b) The subscriber is online and acknowledges only some messages; A is
%% killed; on B it gets the unacknowledged ones again, with dup=1, and
%% then what was published meanwhile; the acknowledged ones never again.
unacked_messages_come_again_with_dup_acked_ones_do_not(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-unacked">>,
    Topic = <<"t/unacked">>,
    S1 = subscribe_persistent(A, Id, [{Topic, 1}], #{auto_ack => never}),
    wait_route(B, Topic, A),
    Sent = payloads(1, 10),
    ok = publish_acked(B, Topic, Sent, 1),
    First = emqx_test_mqtt:receive_messages(S1, 10, ?RECEIVE_TIMEOUT),
    ?assertEqual(Sent, [P || #{payload := P} <- First]),
    %% Acknowledge m-1 .. m-4 and m-7: the rest stay unacknowledged.
    Acked = [<<"m-1">>, <<"m-2">>, <<"m-3">>, <<"m-4">>, <<"m-7">>],
    [ok = emqx_test_mqtt:ack(S1, M) || #{payload := P} = M <- First, lists:member(P, Acked)],
    %% Well past the commit interval: the acknowledgements are committed.
    timer:sleep(20 * ?COMMIT_INTERVAL + 1000),
    kill_and_wait(A, B),
    emqx_test_mqtt:stop(S1),
    During = payloads(11, 15),
    ok = publish_acked(B, Topic, During, 1),
    {ok, S2} = reconnect(B, Id),
    ?assert(emqx_test_mqtt:session_present(S2)),
    Unacked = Sent -- Acked,
    Got = emqx_test_mqtt:receive_messages(S2, length(Unacked) + length(During), ?RECEIVE_TIMEOUT) ++
        emqx_test_mqtt:receive_none(S2, ?QUIET),
    ?assertEqual(Unacked ++ During, [P || #{payload := P} <- Got]),
    ?assertEqual([true || _ <- Unacked], [D || #{payload := P, dup := D} <- Got, lists:member(P, Unacked)]),
    ?assertEqual([false || _ <- During], [D || #{payload := P, dup := D} <- Got, lists:member(P, During)]),
    ok = emqx_test_mqtt:disconnect(S2).

%% (c) clean_start=true after the node died: no old message, no old
%% subscription, and the stored session is gone (a later clean_start=false
%% finds nothing either).
clean_start_discards_the_stored_session(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-clean">>,
    Topic = <<"t/clean">>,
    S1 = subscribe_persistent(A, Id, [{Topic, 1}]),
    ok = emqx_test_mqtt:disconnect(S1),
    wait_route(B, Topic, A),
    ok = publish_acked(B, Topic, payloads(1, 5), 1),
    kill_and_wait(A, B),
    {ok, S2} = emqx_test_mqtt:connect_retry(
        emqx_cluster_node:mqtt_port(B), Id, #{clean_start => true, expiry => ?EXPIRY}, ?RECONNECT_TIMEOUT
    ),
    ?assertNot(emqx_test_mqtt:session_present(S2)),
    ?assertEqual([], emqx_test_mqtt:receive_none(S2, ?QUIET)),
    ok = publish_acked(B, Topic, [<<"not-subscribed">>], 1),
    ?assertEqual([], emqx_test_mqtt:receive_none(S2, ?QUIET)),
    ok = emqx_test_mqtt:disconnect(S2),
    {ok, S3} = reconnect(B, Id),
    ?assertEqual([], emqx_test_mqtt:receive_none(S3, ?QUIET)),
    ok = emqx_test_mqtt:disconnect(S3).

%% (d) Session-Expiry-Interval 0: the session ends with its connection, and
%% with its node; nothing of it comes back on B.
zero_expiry_session_is_not_stored(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-zero">>,
    Topic = <<"t/zero">>,
    {ok, S1} = emqx_test_mqtt:connect(emqx_cluster_node:mqtt_port(A), Id, #{clean_start => false, expiry => 0}),
    1 = emqx_test_mqtt:subscribe(S1, Topic, 1),
    wait_route(B, Topic, A),
    ok = publish_acked(B, Topic, [<<"online">>], 1),
    ?assertMatch([#{payload := <<"online">>}], emqx_test_mqtt:receive_messages(S1, 1, ?RECEIVE_TIMEOUT)),
    %% Killed while the client is connected: no DISCONNECT ever reached EMQX.
    kill_and_wait(A, B),
    emqx_test_mqtt:stop(S1),
    ok = publish_acked(B, Topic, payloads(1, 5), 1),
    {ok, S2} = emqx_test_mqtt:connect_retry(
        emqx_cluster_node:mqtt_port(B), Id, #{clean_start => false, expiry => 0}, ?RECONNECT_TIMEOUT
    ),
    ?assertNot(emqx_test_mqtt:session_present(S2)),
    ?assertEqual([], emqx_test_mqtt:receive_none(S2, ?QUIET)),
    ok = publish_acked(B, Topic, [<<"not-subscribed">>], 1),
    ?assertEqual([], emqx_test_mqtt:receive_none(S2, ?QUIET)),
    ok = emqx_test_mqtt:disconnect(S2).

%% (e) The session's expiry passes while no node holds it: a reconnect
%% finds no session (session-present 0), no message, no subscription.
expired_session_is_not_resumed(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-expiring">>,
    Topic = <<"t/expiring">>,
    Expiry = 3,
    {ok, S1} = emqx_test_mqtt:connect(emqx_cluster_node:mqtt_port(A), Id, #{clean_start => true, expiry => Expiry}),
    1 = emqx_test_mqtt:subscribe(S1, Topic, 1),
    ok = emqx_test_mqtt:disconnect(S1),
    Disconnected = erlang:monotonic_time(millisecond),
    wait_route(B, Topic, A),
    ok = publish_acked(B, Topic, payloads(1, 5), 1),
    kill_and_wait(A, B),
    ok = publish_acked(B, Topic, payloads(6, 8), 1),
    %% A session on B that lives on (offline, stored) keeps its filter.
    Staying = subscribe_persistent(B, <<"sub-staying">>, [{Topic, 1}]),
    ok = emqx_test_mqtt:disconnect(Staying),
    %% Well after the expiry.
    timer:sleep(max(0, Disconnected + (Expiry + 3) * 1000 - erlang:monotonic_time(millisecond))),
    %% The expired session's durable filter is swept (every second here):
    %% what is published now is stored for the staying session only.
    ok = test_util:wait_until(
        fun() -> emqx_cluster_node:call(B, emqx_redis_ds, holders, [Topic]) =:= {ok, [<<"sub-staying">>]} end,
        10000
    ),
    {ok, S2} = reconnect(B, Id, #{expiry => Expiry}),
    ?assertNot(emqx_test_mqtt:session_present(S2)),
    ?assertEqual([], emqx_test_mqtt:receive_none(S2, ?QUIET)),
    ok = publish_acked(B, Topic, [<<"not-subscribed">>], 1),
    ?assertEqual([], emqx_test_mqtt:receive_none(S2, ?QUIET)),
    ok = emqx_test_mqtt:disconnect(S2).

%% (f) Node A alive: the reconnect to B is EMQX's own takeover of the
%% session, and each message arrives once (no replay on top of it).
live_takeover_delivers_each_message_once(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-takeover">>,
    Topic = <<"t/takeover">>,
    S1 = subscribe_persistent(A, Id, [{Topic, 1}]),
    ok = emqx_test_mqtt:disconnect(S1),
    wait_route(B, Topic, A),
    Offline = payloads(1, 10),
    ok = publish_acked(B, Topic, Offline, 1),
    {ok, S2} = emqx_test_mqtt:connect(emqx_cluster_node:mqtt_port(B), Id, #{clean_start => false, expiry => ?EXPIRY}),
    ?assert(emqx_test_mqtt:session_present(S2)),
    Live = payloads(11, 15),
    Got1 = emqx_test_mqtt:receive_messages(S2, length(Offline), ?RECEIVE_TIMEOUT),
    ok = publish_acked(B, Topic, Live, 1),
    Got = Got1 ++ emqx_test_mqtt:receive_messages(S2, length(Live), ?RECEIVE_TIMEOUT) ++
        emqx_test_mqtt:receive_none(S2, ?QUIET),
    ?assertEqual(Offline ++ Live, [P || #{payload := P} <- Got]),
    ok = emqx_test_mqtt:disconnect(S2).

%% (g) Redis down: clients connect, subscribe, publish and receive as on
%% stock EMQX (nothing is persisted), a persistent session taken over on
%% its live node keeps its messages, and no node falls over.
redis_down_clients_are_served_as_without_adapter(Config) ->
    [A, B] = ?config(nodes, Config),
    ok = redis_test_server:kill(?config(redis, Config)),
    Topic = <<"t/noredis">>,
    S1 = subscribe_persistent(A, <<"sub-noredis">>, [{Topic, 1}]),
    {ok, S0} = emqx_test_mqtt:connect(emqx_cluster_node:mqtt_port(A), <<"sub-noredis-0">>, #{}),
    0 = emqx_test_mqtt:subscribe(S0, Topic, 0),
    wait_route(B, Topic, A),
    ok = publish_acked(B, Topic, payloads(1, 5), 1),
    Got = emqx_test_mqtt:receive_messages(S1, 5, ?RECEIVE_TIMEOUT),
    ?assertEqual(payloads(1, 5), [P || #{payload := P} <- Got]),
    ?assertEqual(payloads(1, 5), [P || #{payload := P} <- emqx_test_mqtt:receive_messages(S0, 5, ?RECEIVE_TIMEOUT)]),
    %% Offline, then back on the same (live) node: EMQX's own queue.
    ok = emqx_test_mqtt:disconnect(S1),
    ok = publish_acked(B, Topic, payloads(6, 8), 1),
    ok = publish_acked(B, Topic, [<<"q0">>], 0),
    {ok, S2} = emqx_test_mqtt:connect(emqx_cluster_node:mqtt_port(B), <<"sub-noredis">>, #{
        clean_start => false, expiry => ?EXPIRY
    }),
    ?assert(emqx_test_mqtt:session_present(S2)),
    Got2 = emqx_test_mqtt:receive_messages(S2, 3, ?RECEIVE_TIMEOUT),
    ?assertEqual(payloads(6, 8), [P || #{payload := P} <- Got2]),
    ok = emqx_test_mqtt:disconnect(S2),
    ok = emqx_test_mqtt:disconnect(S0),
    All = lists:sort([emqx_cluster_node:nodename(N) || N <- [A, B]]),
    [?assertEqual(All, lists:sort(emqx_cluster_node:call(N, mria, running_nodes, []))) || N <- [A, B]].

%% (h) QoS 2, offline: every message exactly once, at QoS 2, in order.
qos2_offline_messages_after_node_killed(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-qos2">>,
    Topic = <<"t/qos2">>,
    S1 = subscribe_persistent(A, Id, [{Topic, 2}]),
    ok = emqx_test_mqtt:disconnect(S1),
    wait_route(B, Topic, A),
    Before = payloads(1, 10),
    ok = publish_acked(B, Topic, Before, 2),
    kill_and_wait(A, B),
    During = payloads(11, 15),
    ok = publish_acked(B, Topic, During, 2),
    {ok, S2} = reconnect(B, Id),
    ?assert(emqx_test_mqtt:session_present(S2)),
    Got = emqx_test_mqtt:receive_messages(S2, 15, ?RECEIVE_TIMEOUT) ++ emqx_test_mqtt:receive_none(S2, ?QUIET),
    ?assertEqual([{P, 2} || P <- Before ++ During], [{P, Q} || #{payload := P, qos := Q} <- Got]),
    ok = emqx_test_mqtt:disconnect(S2).

%% (h) QoS 2, online: messages the client received but never answered
%% with PUBREC come again with dup=1; those it completed do not.
qos2_unacked_messages_come_again_with_dup(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-qos2-unacked">>,
    Topic = <<"t/qos2/unacked">>,
    S1 = subscribe_persistent(A, Id, [{Topic, 2}], #{auto_ack => never}),
    wait_route(B, Topic, A),
    Sent = payloads(1, 6),
    ok = publish_acked(B, Topic, Sent, 2),
    First = emqx_test_mqtt:receive_messages(S1, 6, ?RECEIVE_TIMEOUT),
    ?assertEqual(Sent, [P || #{payload := P} <- First]),
    %% m-1, m-2: the whole flow (PUBREC, the broker's PUBREL, PUBCOMP).
    Done = [<<"m-1">>, <<"m-2">>],
    [ok = emqx_test_mqtt:ack(S1, M) || #{payload := P} = M <- First, lists:member(P, Done)],
    [
        receive
            {pubrel, #{packet_id := PId}} -> ok = emqtt:pubcomp(S1, PId)
        after ?RECEIVE_TIMEOUT -> ct:fail({no_pubrel, PId})
        end
     || #{payload := P, packet_id := PId} <- First, lists:member(P, Done)
    ],
    timer:sleep(20 * ?COMMIT_INTERVAL + 1000),
    kill_and_wait(A, B),
    emqx_test_mqtt:stop(S1),
    {ok, S2} = reconnect(B, Id),
    ?assert(emqx_test_mqtt:session_present(S2)),
    Unacked = Sent -- Done,
    Got = emqx_test_mqtt:receive_messages(S2, length(Unacked), ?RECEIVE_TIMEOUT) ++
        emqx_test_mqtt:receive_none(S2, ?QUIET),
    ?assertEqual([{P, 2, true} || P <- Unacked], [{P, Q, D} || #{payload := P, qos := Q, dup := D} <- Got]),
    ok = emqx_test_mqtt:disconnect(S2).

%% MQTT 3.1.1, clean_session=0 (the session expiry is EMQX's
%% mqtt.session_expiry_interval, 2 h by default): resumed on B as in (a).
mqtt311_persistent_session_survives_node_kill(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-v4">>,
    Topic = <<"t/v4">>,
    V4 = #{proto_ver => v4, expiry => 0},
    {ok, S1} = emqx_test_mqtt:connect(emqx_cluster_node:mqtt_port(A), Id, V4#{clean_start => true}),
    1 = emqx_test_mqtt:subscribe(S1, Topic, 1),
    ok = emqx_test_mqtt:disconnect(S1),
    %% clean_session=1 ends the session: reconnect with 0 to make it persistent.
    {ok, S2} = emqx_test_mqtt:connect(emqx_cluster_node:mqtt_port(A), Id, V4#{clean_start => false}),
    1 = emqx_test_mqtt:subscribe(S2, Topic, 1),
    ok = emqx_test_mqtt:disconnect(S2),
    wait_route(B, Topic, A),
    Before = payloads(1, 10),
    ok = publish_acked(B, Topic, Before, 1),
    kill_and_wait(A, B),
    {ok, S3} = emqx_test_mqtt:connect_retry(
        emqx_cluster_node:mqtt_port(B), Id, V4#{clean_start => false}, ?RECONNECT_TIMEOUT
    ),
    ?assert(emqx_test_mqtt:session_present(S3)),
    Got = emqx_test_mqtt:receive_messages(S3, 10, ?RECEIVE_TIMEOUT) ++ emqx_test_mqtt:receive_none(S3, ?QUIET),
    ?assertEqual([{P, 1} || P <- Before], [{P, Q} || #{payload := P, qos := Q} <- Got]),
    ok = emqx_test_mqtt:disconnect(S3).

%% What the session had when its node died is what comes back: an
%% unsubscribed filter stays gone, a subscription's QoS caps delivery
%% (QoS 2 published, QoS 1 subscribed: QoS 1 delivered).
unsubscribed_filter_is_not_resumed_and_subscription_qos_is_kept(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-unsub">>,
    S1 = subscribe_persistent(A, Id, [{<<"t/keep">>, 1}, {<<"t/drop">>, 1}]),
    {ok, _, _} = emqtt:unsubscribe(S1, <<"t/drop">>),
    ok = emqx_test_mqtt:disconnect(S1),
    wait_route(B, <<"t/keep">>, A),
    ?assertEqual(ok, test_util:wait_until(
        fun() -> not emqx_cluster_node:call(B, emqx_router, has_route, [<<"t/drop">>, emqx_cluster_node:nodename(A)]) end,
        30000
    )),
    ok = publish_acked(B, <<"t/keep">>, payloads(1, 3), 2),
    ok = publish_acked(B, <<"t/drop">>, payloads(1, 3), 1),
    kill_and_wait(A, B),
    ok = publish_acked(B, <<"t/keep">>, payloads(4, 5), 2),
    ok = publish_acked(B, <<"t/drop">>, payloads(4, 5), 1),
    {ok, S2} = reconnect(B, Id),
    ?assert(emqx_test_mqtt:session_present(S2)),
    Got = emqx_test_mqtt:receive_messages(S2, 5, ?RECEIVE_TIMEOUT) ++ emqx_test_mqtt:receive_none(S2, ?QUIET),
    ?assertEqual([{<<"t/keep">>, P, 1} || P <- payloads(1, 5)], [{T, P, Q} || #{topic := T, payload := P, qos := Q} <- Got]),
    ok = emqx_test_mqtt:disconnect(S2).

%% Three nodes: the session is resumed on B after A died, then on C after
%% B died; nothing acknowledged to the publisher is lost on the way.
session_survives_two_node_kills(Config) ->
    [A, B, C] = ?config(nodes, Config),
    Id = <<"sub-twice">>,
    Topic = <<"t/twice">>,
    S1 = subscribe_persistent(A, Id, [{Topic, 1}]),
    ok = emqx_test_mqtt:disconnect(S1),
    wait_route(C, Topic, A),
    ok = publish_acked(C, Topic, payloads(1, 5), 1),
    kill_and_wait(A, C),
    {ok, S2} = reconnect(B, Id),
    ?assert(emqx_test_mqtt:session_present(S2)),
    Got1 = emqx_test_mqtt:receive_messages(S2, 5, ?RECEIVE_TIMEOUT),
    ?assertEqual(payloads(1, 5), [P || #{payload := P} <- Got1]),
    ok = emqx_test_mqtt:disconnect(S2),
    wait_route(C, Topic, B),
    ok = publish_acked(C, Topic, payloads(6, 10), 1),
    kill_and_wait(B, C),
    ok = publish_acked(C, Topic, payloads(11, 12), 1),
    {ok, S3} = reconnect(C, Id),
    ?assert(emqx_test_mqtt:session_present(S3)),
    Got2 = emqx_test_mqtt:receive_messages(S3, 7, ?RECEIVE_TIMEOUT) ++ emqx_test_mqtt:receive_none(S3, ?QUIET),
    ?assertEqual(payloads(6, 12), [P || #{payload := P} <- Got2]),
    ok = emqx_test_mqtt:disconnect(S3).

%% A shared subscription with the adapter loaded: each message goes to one
%% member of the group, once, as on stock EMQX.
shared_subscription_delivers_once_per_group(Config) ->
    [A, B] = ?config(nodes, Config),
    Filter = <<"$share/g/t/shared">>,
    M1 = subscribe_persistent(A, <<"member-1">>, [{Filter, 1}]),
    M2 = subscribe_persistent(B, <<"member-2">>, [{Filter, 1}]),
    ?assertEqual(ok, test_util:wait_until(
        fun() ->
            length(emqx_cluster_node:call(B, emqx_shared_sub, subscribers, [<<"g">>, <<"t/shared">>])) =:= 2
        end,
        30000
    )),
    Sent = payloads(1, 20),
    ok = publish_acked(B, <<"t/shared">>, Sent, 1),
    Got = emqx_test_mqtt:receive_messages(M1, 20, ?QUIET) ++ emqx_test_mqtt:receive_messages(M2, 20, ?QUIET),
    ?assertEqual(lists:sort(Sent), lists:sort([P || #{payload := P} <- Got])),
    ok = emqx_test_mqtt:disconnect(M1),
    ok = emqx_test_mqtt:disconnect(M2).

%% Redis goes down and comes back (empty): persistent sessions made after
%% that are kept in Redis again and survive a node kill.
redis_back_sessions_persist_again(Config) ->
    [A, B] = ?config(nodes, Config),
    Redis = ?config(redis, Config),
    ok = redis_test_server:kill(Redis),
    {ok, S0} = emqx_test_mqtt:connect(emqx_cluster_node:mqtt_port(A), <<"sub-while-down">>, #{}),
    0 = emqx_test_mqtt:subscribe(S0, <<"t/down">>, 0),
    ok = emqx_test_mqtt:disconnect(S0),
    ok = redis_test_server:restart(Redis),
    Id = <<"sub-after-redis">>,
    Topic = <<"t/after-redis">>,
    %% Once both nodes are connected again (breaker closed) and members
    %% again (a restarted Redis lost the membership: each node finds it at
    %% its next heartbeat and joins again), sessions are kept.
    Both = lists:sort([emqx_cluster_node:nodename(N) || N <- [A, B]]),
    ?assertEqual(ok, test_util:wait_until(
        fun() ->
            lists:all(
                fun(N) ->
                    maps:get(healthy, emqx_cluster_node:call(N, emqx_redis_storage, status, [])) andalso
                        case emqx_cluster_node:call(N, emqx_redis_nodes, live_nodes, []) of
                            {ok, Live} -> lists:sort(Live) =:= Both;
                            {error, _} -> false
                        end
                end,
                [A, B]
            )
        end,
        60000
    )),
    Sent = payloads(1, 5),
    S1 = subscribe_persistent(A, Id, [{Topic, 1}]),
    ok = emqx_test_mqtt:disconnect(S1),
    wait_route(B, Topic, A),
    ok = publish_acked(B, Topic, Sent, 1),
    kill_and_wait(A, B),
    {ok, S2} = reconnect(B, Id),
    Got = emqx_test_mqtt:receive_messages(S2, 5, ?RECEIVE_TIMEOUT) ++ emqx_test_mqtt:receive_none(S2, ?QUIET),
    ?assertEqual(Sent, [P || #{payload := P} <- Got]),
    ok = emqx_test_mqtt:disconnect(S2).

%% A publisher on B never stops: before the kill, while B finds A dead,
%% while ?STEADY_CLIENTS clients resume on B at once, and after. Every client gets every
%% message acknowledged to the publisher, once, in order: nothing falls
%% between what a resume replays from Redis and what reaches it live.
messages_published_while_clients_resume_are_not_lost(Config) ->
    steady_move(kill, Config).

%% The same with A alive: the online clients' connections drop (no
%% DISCONNECT) and every client reconnects to B, where EMQX takes each
%% session over from A (live takeover) with the adapter loaded.
messages_published_while_clients_move_live_are_not_lost(Config) ->
    steady_move(live, Config).

steady_move(How, Config) ->
    [A, B] = ?config(nodes, Config),
    Topic = <<"t/steady">>,
    Ids = [iolist_to_binary(["sub-steady-", integer_to_list(N)]) || N <- lists:seq(1, ?STEADY_CLIENTS)],
    %% Half offline, half online (their connections die with A).
    Online = lists:sublist(Ids, ?STEADY_CLIENTS div 2),
    Subs = [{Id, subscribe_persistent(A, Id, [{Topic, 1}])} || Id <- Ids],
    [ok = emqx_test_mqtt:disconnect(C) || {Id, C} <- Subs, not lists:member(Id, Online)],
    wait_route(B, Topic, A),
    Publisher = start_steady_publisher(B, Topic, 20),
    timer:sleep(1000),
    How =:= kill andalso kill_and_wait(A, B),
    %% The online ones' connections end (with A, or dropped), then what
    %% they got before is taken from the mailbox: emqtt acknowledges a
    %% message after handing it to its owner, so everything acknowledged is
    %% there.
    [emqx_test_mqtt:stop(C) || {Id, C} <- Subs, lists:member(Id, Online)],
    Before = maps:from_list([
        {Id, [P || #{payload := P} <- emqx_test_mqtt:receive_none(C, 0)]}
     || {Id, C} <- Subs, lists:member(Id, Online)
    ]),
    Self = self(),
    %% Each resumed client in a process of its own (its owner), all at once.
    Owners = [
        spawn_link(fun() ->
            {ok, C} = reconnect(B, Id),
            Self ! {resumed, self()},
            receive
                {collect, N} -> Self ! {got, self(), emqx_test_mqtt:receive_messages(C, N, ?RECEIVE_TIMEOUT) ++
                    emqx_test_mqtt:receive_none(C, ?QUIET)}
            end,
            emqx_test_mqtt:disconnect(C)
        end)
     || Id <- Ids
    ],
    [receive {resumed, O} -> ok after ?RECONNECT_TIMEOUT -> ct:fail(no_resume) end || O <- Owners],
    timer:sleep(2000),
    Acked = stop_steady_publisher(Publisher),
    ct:log("~b messages acknowledged to the publisher", [length(Acked)]),
    [O ! {collect, length(Acked)} || O <- Owners],
    Got = [
        receive
            {got, O, Msgs} -> {Id, maps:get(Id, Before, []) ++ [P || #{payload := P} <- Msgs]}
        after 2 * ?RECEIVE_TIMEOUT -> ct:fail(no_messages)
        end
     || {Id, O} <- lists:zip(Ids, Owners)
    ],
    %% Online ones may get again what they had received in the last
    %% commit interval before the kill (with dup=1): first copies count.
    Bad = [
        {Id, #{missing => Acked -- Ps, extra => Ps -- Acked, first_copies_in_order => first_copies(Ps) =:= Acked}}
     || {Id, Ps} <- Got, first_copies(Ps) =/= Acked orelse (not lists:member(Id, Online) andalso Ps =/= Acked)
    ],
    ?assertEqual([], Bad).

first_copies(L) ->
    {Firsts, _} = lists:foldl(
        fun(X, {Acc, Seen}) ->
            case sets:is_element(X, Seen) of
                true -> {Acc, Seen};
                false -> {[X | Acc], sets:add_element(X, Seen)}
            end
        end,
        {[], sets:new()},
        L
    ),
    lists:reverse(Firsts).

%% The session a resume builds takes the zone of the listener the client
%% came in on, as EMQX's own session would: with a window of 1, of the 10
%% messages stored while no node held the session, 1 is sent and 5 are
%% queued (zone `small' queues 5; the default zone 1,000: all 10 would come).
resumed_session_takes_its_listeners_zone(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-zone">>,
    Topic = <<"t/zone">>,
    S1 = subscribe_persistent(A, Id, [{Topic, 1}]),
    ok = emqx_test_mqtt:disconnect(S1),
    wait_route(B, Topic, A),
    kill_and_wait(A, B),
    Stored = payloads(1, 10),
    ok = publish_acked(B, Topic, Stored, 1),
    {ok, S2} = reconnect(B, Id, #{receive_maximum => 1}),
    ?assert(emqx_test_mqtt:session_present(S2)),
    Got = [P || #{payload := P} <- emqx_test_mqtt:receive_messages(S2, 6, ?RECEIVE_TIMEOUT) ++ emqx_test_mqtt:receive_none(S2, ?QUIET)],
    ct:log("got ~p", [Got]),
    ?assertEqual(6, length(Got), Got),
    ?assertEqual(Got, [P || P <- Stored, lists:member(P, Got)]),
    ok = emqx_test_mqtt:disconnect(S2).

%% The client reconnects the moment its connection dies, before B knows
%% that A is dead (as real clients do): it is refused or kept waiting
%% until then, and then gets its session and every message.
reconnect_at_once_after_kill(Config) ->
    [A, B] = ?config(nodes, Config),
    Id = <<"sub-hasty">>,
    Topic = <<"t/hasty">>,
    S1 = subscribe_persistent(A, Id, [{Topic, 1}]),
    wait_route(B, Topic, A),
    ok = publish_acked(B, Topic, payloads(1, 5), 1),
    First = emqx_test_mqtt:receive_messages(S1, 5, ?RECEIVE_TIMEOUT),
    ?assertEqual(payloads(1, 5), [P || #{payload := P} <- First]),
    ok = emqx_test_mqtt:disconnect(S1),
    ok = publish_acked(B, Topic, payloads(6, 10), 1),
    _ = emqx_cluster_node:kill(A),
    {ok, S2} = reconnect(B, Id),
    ?assert(emqx_test_mqtt:session_present(S2)),
    ok = publish_acked(B, Topic, payloads(11, 12), 1),
    Got = emqx_test_mqtt:receive_messages(S2, 7, ?RECEIVE_TIMEOUT) ++ emqx_test_mqtt:receive_none(S2, ?QUIET),
    ?assertEqual(payloads(6, 12), [P || #{payload := P} <- Got]),
    ok = emqx_test_mqtt:disconnect(S2).

%% A process publishing QoS 1 to `Topic' on `Node' every `IntervalMs'
%% until stopped; what was acknowledged, in order.
start_steady_publisher(Node, Topic, IntervalMs) ->
    Port = emqx_cluster_node:mqtt_port(Node),
    spawn_link(fun() ->
        {ok, C} = emqx_test_mqtt:connect(Port, <<"steady-publisher">>, #{}),
        steady(C, Topic, IntervalMs, 1, [])
    end).

steady(C, Topic, IntervalMs, N, Acked) ->
    receive
        {stop, From} ->
            ok = emqx_test_mqtt:disconnect(C),
            From ! {acked, self(), lists:reverse(Acked)}
    after IntervalMs ->
        [P] = payloads(N, N),
        Acked1 =
            case emqx_test_mqtt:publish(C, Topic, P, 1) of
                {ok, RC} when RC < 16#80 -> [P | Acked];
                _ -> Acked
            end,
        steady(C, Topic, IntervalMs, N + 1, Acked1)
    end.

stop_steady_publisher(Pid) ->
    Pid ! {stop, self()},
    receive
        {acked, Pid, Acked} -> Acked
    after ?RECEIVE_TIMEOUT -> ct:fail(publisher_stuck)
    end.

%%--------------------------------------------------------------------
%% Helpers

payloads(From, To) ->
    [iolist_to_binary(["m-", integer_to_list(N)]) || N <- lists:seq(From, To)].

subscribe_persistent(Node, Id, Filters) ->
    subscribe_persistent(Node, Id, Filters, #{}).

%% A new persistent session (clean start, expiry 1 h) with its subscriptions.
subscribe_persistent(Node, Id, Filters, Opts) ->
    {ok, C} = emqx_test_mqtt:connect(
        emqx_cluster_node:mqtt_port(Node), Id, maps:merge(#{clean_start => true, expiry => ?EXPIRY}, Opts)
    ),
    [?assertEqual(QoS, emqx_test_mqtt:subscribe(C, F, QoS)) || {F, QoS} <- Filters],
    C.

reconnect(Node, Id) ->
    reconnect(Node, Id, #{}).

%% clean_start=false to `Node', retried until a CONNACK comes.
reconnect(Node, Id, Opts) ->
    emqx_test_mqtt:connect_retry(
        emqx_cluster_node:mqtt_port(Node),
        Id,
        maps:merge(#{clean_start => false, expiry => ?EXPIRY}, Opts),
        ?RECONNECT_TIMEOUT
    ).

%% Publishes from a fresh client on `Node'; every QoS 1/2 message must be
%% acknowledged with success: 0, or 16 "no matching subscribers" (EMQX
%% knows no route while no node holds the session).
publish_acked(Node, Topic, Payloads, QoS) ->
    Id = iolist_to_binary(["pub-", integer_to_list(erlang:unique_integer([positive]))]),
    {ok, C} = emqx_test_mqtt:connect(emqx_cluster_node:mqtt_port(Node), Id, #{}),
    try
        lists:foreach(
            fun(P) ->
                case emqx_test_mqtt:publish(C, Topic, P, QoS) of
                    ok when QoS =:= 0 -> ok;
                    {ok, RC} -> ?assert(lists:member(RC, [0, 16]), {puback, RC, P})
                end
            end,
            Payloads
        )
    after
        emqx_test_mqtt:disconnect(C)
    end.

%% Until `Observer' routes `Filter' to `Subscriber''s node.
wait_route(Observer, Filter, Subscriber) ->
    Node = emqx_cluster_node:nodename(Subscriber),
    ?assertEqual(
        ok,
        test_util:wait_until(fun() -> emqx_cluster_node:call(Observer, emqx_router, has_route, [Filter, Node]) end, 30000)
    ).

%% kill -9 of `Dead''s OS process; returns once `Observer' saw it down.
kill_and_wait(Dead, Observer) ->
    _ = emqx_cluster_node:kill(Dead),
    ?assertEqual(ok, emqx_cluster_node:wait_down(Observer, Dead, ?DOWN_TIMEOUT)).

flush_mailbox() ->
    receive
        _ -> flush_mailbox()
    after 0 -> ok
    end.

%% Rate limits are the cluster's: connections of one username spend one
%% budget on every node (the one over it gets CONNACK 0x97, Quota exceeded),
%% and a publisher over its rate gets PUBACK 0x97 and its message goes
%% nowhere.
rate_limits_hold_across_nodes(Config) ->
    [A, B] = ?config(nodes, Config),
    PortA = emqx_cluster_node:mqtt_port(A),
    PortB = emqx_cluster_node:mqtt_port(B),
    {ok, C1} = emqx_test_mqtt:connect(PortA, <<"alice-1">>, #{username => <<"alice">>}),
    {ok, C2} = emqx_test_mqtt:connect(PortB, <<"alice-2">>, #{username => <<"alice">>}),
    ?assertMatch({error, {quota_exceeded, _}}, emqx_test_mqtt:connect(PortA, <<"alice-3">>, #{username => <<"alice">>})),
    ?assertMatch({error, {quota_exceeded, _}}, emqx_test_mqtt:connect(PortB, <<"alice-4">>, #{username => <<"alice">>})),
    %% Another username has a budget of its own.
    {ok, Bob} = emqx_test_mqtt:connect(PortB, <<"bob-1">>, #{username => <<"bob">>}),
    {ok, Sub} = emqx_test_mqtt:connect(PortA, <<"limit-sub">>, #{}),
    1 = emqx_test_mqtt:subscribe(Sub, <<"lim/t">>, 1),
    wait_route(B, <<"lim/t">>, A),
    %% 0 = delivered to a subscriber; 0x97 = refused for the rate.
    Codes = [emqx_test_mqtt:publish(Bob, <<"lim/t">>, integer_to_binary(N), 1) || N <- [1, 2, 3]],
    ?assertEqual([{ok, 0}, {ok, 0}, {ok, 16#97}], Codes),
    Got = [P || #{payload := P} <- emqx_test_mqtt:receive_messages(Sub, 3, 5000)],
    ?assertEqual([<<"1">>, <<"2">>], Got),
    [emqx_test_mqtt:disconnect(C) || C <- [C1, C2, Bob, Sub]],
    ok.
