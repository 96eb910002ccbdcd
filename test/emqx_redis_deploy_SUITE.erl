%% Every API on real Redis Cluster (3 masters + 3 replicas), real Sentinel
%% (master, replica, 3 sentinels), real TLS (certificates made with openssl)
%% and a least-privilege ACL user; failovers (a master killed or frozen) and
%% a live resharding.
-module(emqx_redis_deploy_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

all() ->
    [
        {group, cluster},
        {group, sentinel},
        {group, tls},
        {group, acl},
        appendonly_off_is_warned
    ].

groups() ->
    [
        {cluster, [sequence], [
            main_cases,
            global_views_span_all_shards,
            durable_streams_spread_over_masters,
            replicas_frozen_main_cases,
            slot_migration_while_writers_run,
            master_frozen_replica_promoted,
            master_killed_replica_promoted_nothing_lost
        ]},
        {sentinel, [sequence], [
            main_cases,
            master_killed_failover_followed_nothing_lost,
            master_frozen_failover_followed,
            sentinels_and_master_with_passwords
        ]},
        {tls, [], [
            verified_tls_main_cases,
            mutual_tls,
            wrong_ca_fails_clearly,
            wrong_name_fails_clearly,
            server_name_indication,
            tls_cluster_main_cases,
            tls_cluster_server_name,
            tls_sentinel_main_cases
        ]},
        {acl, [], [restricted_user_main_cases, user_without_rights_gets_clear_error]}
    ].

init_per_suite(Config) ->
    ok = emqx_redis_storage:stop(),
    Config.

end_per_suite(_Config) ->
    ok.

init_per_group(cluster, Config) ->
    Nodes = redis_test_server:start_cluster(#{}),
    ok = emqx_redis_storage:start(cluster_config(Nodes, #{})),
    [{nodes, Nodes} | Config];
init_per_group(sentinel, Config) ->
    Sentinel = redis_test_server:start_sentinel(#{}),
    ok = test_util:wait_until(fun() -> replica_in_sync(Sentinel) end, 20000),
    ok = emqx_redis_storage:start(sentinel_config(Sentinel, #{})),
    [{sentinel, Sentinel} | Config];
init_per_group(_Group, Config) ->
    Config.

end_per_group(cluster, Config) ->
    ok = emqx_redis_storage:stop(),
    redis_test_server:stop_cluster(?config(nodes, Config));
end_per_group(sentinel, Config) ->
    ok = emqx_redis_storage:stop(),
    redis_test_server:stop_sentinel(?config(sentinel, Config));
end_per_group(_Group, _Config) ->
    ok.

init_per_testcase(_Case, Config) -> Config.
end_per_testcase(_Case, _Config) -> ok.

cluster_config(Nodes, Extra) ->
    Redis = maps:merge(
        #{redis_type => cluster, servers => [redis_test_server:address(N) || N <- Nodes]},
        maps:get(redis, Extra, #{})
    ),
    maps:merge(#{route_sync_interval => 500}, Extra#{redis => Redis}).

sentinel_config(#{sentinels := Sentinels}, Extra) ->
    Redis = maps:merge(
        #{
            redis_type => sentinel,
            sentinel => <<"mymaster">>,
            servers => [redis_test_server:address(S) || S <- Sentinels]
        },
        maps:get(redis, Extra, #{})
    ),
    maps:merge(#{route_sync_interval => 500}, Extra#{redis => Redis}).

%%--------------------------------------------------------------------
%% every mode

main_cases(_Config) ->
    ok = storage_checks:all().

%%--------------------------------------------------------------------
%% cluster

%% The streams of one busy first level live in several slots, on more
%% than one master: no single hot key.
durable_streams_spread_over_masters(Config) ->
    ok = emqx_redis_ds:subscribe(<<"spread">>, <<"busy/#">>),
    {ok, Default} = emqx_redis_storage_client:default(),
    ok = test_util:wait_until(fun() -> emqx_redis_ds:filter_matches(Default, <<"busy/x">>) =:= true end, 10000),
    Msgs = [#{id => integer_to_binary(I), topic => <<"busy/x">>, from => I} || I <- lists:seq(1, 400)],
    {ok, #{persisted := 400}} = emqx_redis_ds:persist(Msgs),
    Masters = masters(?config(nodes, Config)),
    Per = [length(string:lexemes(redis_test_server:cmd(M, ["KEYS", "emqx:ds:m:{busy/*"]), "\n")) || M <- Masters],
    ct:log("busy streams per master: ~p", [Per]),
    ?assert(length([N || N <- Per, N > 0]) >= 2, Per),
    ok = emqx_redis_ds:unsubscribe(<<"spread">>, <<"busy/#">>).

%% Sessions spread over every master; counting, listing and a raw DBSIZE
%% see them all.
global_views_span_all_shards(Config) ->
    Ids = [<<"spread-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 300)],
    [ok = emqx_redis_session:save_session(Id, x) || Id <- Ids],
    Masters = masters(?config(nodes, Config)),
    Per = [list_to_integer(redis_test_server:cmd(M, ["DBSIZE"])) || M <- Masters],
    ct:log("keys per master: ~p", [Per]),
    ?assert(lists:all(fun(N) -> N > 0 end, Per)),
    %% a raw command without a key that redis-rs asks every master (and
    %% sums), not one of them
    {ok, Total} = emqx_redis_storage:q([<<"DBSIZE">>]),
    ?assert(Total > lists:max(Per) + 50, {Total, Per}),
    {ok, N} = emqx_redis_session:count_sessions(),
    ?assert(N >= 300),
    {ok, Listed} = emqx_redis_session:list_sessions(10000, 0),
    ?assertEqual([], Ids -- Listed),
    [ok = emqx_redis_session:delete_session(Id) || Id <- Ids].

%% Slots move between masters (MIGRATE, ASK and MOVED) while writers write;
%% every write that was acknowledged can be read back afterwards.
slot_migration_while_writers_run(Config) ->
    [From, To | _] = masters(?config(nodes, Config)),
    Parent = self(),
    Stop = make_ref(),
    Writers = [spawn_link(fun() -> writer(Parent, Stop, W, 0, []) end) || W <- lists:seq(1, 8)],
    timer:sleep(300),
    Out = os:cmd(lists:flatten([
        "redis-cli --cluster reshard 127.0.0.1:", integer_to_list(redis_test_server:port(From)),
        " --cluster-from ", node_id(From), " --cluster-to ", node_id(To),
        " --cluster-slots 1000 --cluster-yes 2>&1"
    ])),
    ct:log("reshard: ~ts", [lists:sublist(Out, 2000)]),
    ?assertEqual(nomatch, string:find(Out, "ERR")),
    timer:sleep(300),
    [W ! Stop || W <- Writers],
    Acked = lists:append([receive {acked, W, A} -> A after 30000 -> ct:fail(writer_stuck) end || W <- Writers]),
    ct:log("~p writes acknowledged during the resharding", [length(Acked)]),
    ?assert(length(Acked) > 100),
    [?assertEqual({ok, {written, Id}}, emqx_redis_session:load_session(Id)) || Id <- Acked],
    ok = storage_checks:all().

writer(Parent, Stop, W, I, Acked) ->
    receive
        Stop -> Parent ! {acked, self(), Acked}
    after 0 ->
        Id = iolist_to_binary(io_lib:format("mig-~p-~p", [W, I])),
        case emqx_redis_session:save_session(Id, {written, Id}) of
            ok -> writer(Parent, Stop, W, I + 1, [Id | Acked]);
            {error, Reason} -> ct:log("write ~s failed: ~p", [Id, Reason]), writer(Parent, Stop, W, I + 1, Acked)
        end
    end.

%% A master dies (SIGKILL); its replica takes over; writes that were
%% acknowledged with wait_replicas => 1 are all still there.
master_killed_replica_promoted_nothing_lost(Config) ->
    Nodes = ?config(nodes, Config),
    ok = emqx_redis_storage:stop(),
    %% the master frozen in the case before rejoins as a replica and
    %% resynchronises first: until then WAIT would rightly say not_replicated
    ok = test_util:wait_until(fun() -> replicas_in_sync(Nodes) end, 30000),
    ok = emqx_redis_storage:start(cluster_config(Nodes, #{redis => #{wait_replicas => 1, wait_timeout => 2000}})),
    Ids = [<<"durable-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 300)],
    [ok = emqx_redis_session:save_session(Id, {kept, Id}) || Id <- Ids],
    ok = emqx_redis_message:store_messages(<<"durable-queue">>, [#{id => integer_to_binary(I)} || I <- lists:seq(1, 100)]),
    [Victim | _] = masters(Nodes),
    %% Health: every master answers a PING; the dead one is down while it
    %% still serves slots; healthy again once its replica took them over.
    #{healthy := true, server_states := Up} = emqx_redis_storage:status(),
    ?assertEqual(length(masters(Nodes)), length(Up)),
    [?assertMatch(#{state := up, last_ok_at := At} when is_integer(At), S) || S <- Up],
    VictimAddress = redis_test_server:address(Victim),
    T0 = erlang:monotonic_time(millisecond),
    ok = redis_test_server:kill(Victim),
    #{healthy := false, server_states := Down} = emqx_redis_storage:status(),
    ?assertMatch([#{state := down, last_error := E}] when is_binary(E), [S || #{server := A} = S <- Down, A =:= VictimAddress]),
    %% every shard answers again once the replica of the dead master took over
    Sample = lists:sublist(Ids, 30),
    ok = test_util:wait_until(fun() -> [emqx_redis_session:load_session(Id) || Id <- Sample] =:= [{ok, {kept, Id}} || Id <- Sample] end, 30000),
    Recovery = erlang:monotonic_time(millisecond) - T0,
    ct:log("cluster: calls succeed again ~p ms after the master was killed", [Recovery]),
    ct:comment("recovered in ~p ms", [Recovery]),
    ok = test_util:wait_until(fun() -> maps:get(healthy, emqx_redis_storage:status()) end, 30000),
    #{server_states := After} = emqx_redis_storage:status(),
    ?assertNot(lists:member(VictimAddress, [A || #{server := A} <- After])),
    [?assertEqual({ok, {kept, Id}}, emqx_redis_session:load_session(Id)) || Id <- Ids],
    ?assertEqual({ok, 100}, emqx_redis_message:count_messages(<<"durable-queue">>)),
    %% the promoted master has no replica left: writes there say so clearly
    Results = [emqx_redis_session:save_session(Id, again) || Id <- Sample],
    ?assert(lists:member({error, {not_replicated, #{acked => 0, wanted => 1}}}, Results)),
    ok = emqx_redis_storage:stop(),
    ok = emqx_redis_storage:start(cluster_config(Nodes, #{})),
    ok = storage_checks:all().

%% Every replica frozen (SIGSTOP, so it answers nothing and closes no
%% connection) while the main cases run: the library's own commands go to
%% masters only, those without a key (TIME, HELLO, CLUSTER SLOTS) included,
%% so none waits on a hung replica.
replicas_frozen_main_cases(Config) ->
    Nodes = ?config(nodes, Config),
    Masters = masters(Nodes),
    Replicas = Nodes -- Masters,
    ?assertEqual(3, length(Replicas)),
    InSync = fun() -> lists:all(fun redis_test_server:replica_in_sync/1, Replicas) end,
    ok = test_util:wait_until(InSync, 30000),
    %% a client of its own, connected to every node
    {ok, C} = emqx_redis_storage:connect(cluster_config(Nodes, #{})),
    [ok = redis_test_server:pause(R) || R <- Replicas],
    try
        ok = storage_checks:all(),
        %% (each asks a master which masters serve the slots)
        [?assertMatch({ok, _}, emqx_redis_session:count_sessions(C)) || _ <- lists:seq(1, 20)]
    after
        [ok = redis_test_server:resume(R) || R <- Replicas]
    end,
    ok = test_util:wait_until(InSync, 30000).

%% A master that freezes (SIGSTOP) closes no connection: calls to its slots
%% time out instead of failing, until the client learns the new topology.
master_frozen_replica_promoted(Config) ->
    Nodes = ?config(nodes, Config),
    ok = test_util:wait_until(fun() -> replicas_in_sync(Nodes) end, 30000),
    ok = emqx_redis_storage:stop(),
    ok = emqx_redis_storage:start(cluster_config(Nodes, #{redis => #{wait_replicas => 1, wait_timeout => 2000}})),
    Ids = [<<"frozen-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 300)],
    [ok = emqx_redis_session:save_session(Id, {kept, Id}) || Id <- Ids],
    ok = emqx_redis_storage:stop(),
    ok = emqx_redis_storage:start(cluster_config(Nodes, #{redis => #{command_timeout => 500}})),
    [Victim | _] = [N || N <- masters(Nodes), has_replica(N)],
    %% The operators' log tells of the new topology.
    ok = test_util:add_log_handler(),
    T0 = erlang:monotonic_time(millisecond),
    ok = redis_test_server:pause(Victim),
    try
        Sample = lists:sublist(Ids, 30),
        ok = test_util:wait_until(fun() -> [emqx_redis_session:load_session(Id) || Id <- Sample] =:= [{ok, {kept, Id}} || Id <- Sample] end, 30000),
        Recovery = erlang:monotonic_time(millisecond) - T0,
        ct:log("cluster: calls succeed again ~p ms after the master froze", [Recovery]),
        ct:comment("recovered in ~p ms", [Recovery]),
        [?assertEqual({ok, {kept, Id}}, emqx_redis_session:load_session(Id)) || Id <- Ids],
        receive
            {report, warning, #{msg := <<"cluster_topology_refreshed">>, old_masters := Old, new_masters := New} = Report} ->
                ct:log("~p", [Report]),
                Frozen = redis_test_server:address(Victim),
                ?assertNotEqual(nomatch, binary:match(Old, Frozen)),
                ?assertEqual(nomatch, binary:match(New, Frozen))
        after 5000 ->
            ct:fail(no_cluster_topology_refreshed_report)
        end
    after
        ok = logger:remove_handler(test_util),
        redis_test_server:resume(Victim)
    end.

%% Every master has its replica and every replica's link is up.
replicas_in_sync(Nodes) ->
    Masters = masters(Nodes),
    Replicas = Nodes -- Masters,
    length(Masters) =:= length(Replicas) andalso lists:all(fun has_replica/1, Masters) andalso
        lists:all(fun redis_test_server:replica_in_sync/1, Replicas).

has_replica(Node) ->
    string:find(redis_test_server:cmd(Node, ["INFO", "replication"]), "connected_slaves:1") =/= nomatch.

%% The servers that are masters now (ROLE's first line).
masters(Nodes) ->
    [N || N <- Nodes, string:prefix(redis_test_server:cmd(N, ["ROLE"]), "master") =/= nomatch].

node_id(Node) -> redis_test_server:cmd(Node, ["CLUSTER", "MYID"]).

%%--------------------------------------------------------------------
%% sentinel

master_killed_failover_followed_nothing_lost(Config) ->
    Sentinel = ?config(sentinel, Config),
    ok = emqx_redis_storage:stop(),
    ok = emqx_redis_storage:start(sentinel_config(Sentinel, #{redis => #{wait_replicas => 1, wait_timeout => 2000}})),
    Ids = [<<"durable-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 300)],
    [ok = emqx_redis_session:save_session(Id, {kept, Id}) || Id <- Ids],
    T0 = erlang:monotonic_time(millisecond),
    ok = redis_test_server:kill(maps:get(master, Sentinel)),
    %% wait_replicas => 1 cannot hold with the only replica promoted: write without it
    ok = test_util:wait_until(fun() -> emqx_redis_session:load_session(hd(Ids)) =:= {ok, {kept, hd(Ids)}} end, 30000),
    Recovery = erlang:monotonic_time(millisecond) - T0,
    ct:log("sentinel: calls succeed again ~p ms after the master was killed", [Recovery]),
    ct:comment("recovered in ~p ms", [Recovery]),
    [?assertEqual({ok, {kept, Id}}, emqx_redis_session:load_session(Id)) || Id <- Ids],
    %% writes now fail clearly: the new master has no replica to confirm them
    ?assertMatch({error, {not_replicated, #{acked := 0, wanted := 1}}}, emqx_redis_session:save_session(<<"x">>, y)),
    ok = emqx_redis_storage:stop(),
    ok = emqx_redis_storage:start(sentinel_config(Sentinel, #{})),
    ok = storage_checks:all().

%% A master that freezes (SIGSTOP) closes no connection: calls time out
%% instead of failing. The client asks the sentinels after timeouts and
%% follows them to the promoted replica.
master_frozen_failover_followed(_Config) ->
    Sentinel = redis_test_server:start_sentinel(#{}),
    Master = maps:get(master, Sentinel),
    ok = emqx_redis_storage:stop(),
    try
        ok = test_util:wait_until(fun() -> replica_in_sync(Sentinel) end, 20000),
        ok = emqx_redis_storage:start(sentinel_config(Sentinel, #{redis => #{
            wait_replicas => 1, wait_timeout => 2000, command_timeout => 500
        }})),
        Ids = [<<"frozen-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 100)],
        [ok = emqx_redis_session:save_session(Id, {kept, Id}) || Id <- Ids],
        T0 = erlang:monotonic_time(millisecond),
        ok = redis_test_server:pause(Master),
        ?assertEqual({error, timeout}, emqx_redis_session:load_session(hd(Ids))),
        ok = test_util:wait_until(fun() -> emqx_redis_session:load_session(hd(Ids)) =:= {ok, {kept, hd(Ids)}} end, 30000),
        Recovery = erlang:monotonic_time(millisecond) - T0,
        ct:log("sentinel: calls succeed again ~p ms after the master froze", [Recovery]),
        ct:comment("recovered in ~p ms", [Recovery]),
        [?assertEqual({ok, {kept, Id}}, emqx_redis_session:load_session(Id)) || Id <- Ids]
    after
        ok = emqx_redis_storage:stop(),
        redis_test_server:resume(Master),
        redis_test_server:stop_sentinel(Sentinel)
    end.

%% Sentinels that demand a password of their own, in front of a master that
%% demands another one.
sentinels_and_master_with_passwords(_Config) ->
    Sentinel = redis_test_server:start_sentinel(#{
        conf => ["requirepass master-pw", "masterauth master-pw"],
        sentinel_conf => ["requirepass sentinel-pw", "sentinel auth-pass mymaster master-pw"]
    }),
    ok = emqx_redis_storage:stop(),
    try
        Redis = #{password => <<"master-pw">>, sentinel_password => <<"sentinel-pw">>},
        {error, Reason} = emqx_redis_storage:start(sentinel_config(Sentinel, #{redis => maps:remove(sentinel_password, Redis)})),
        ct:log("without the sentinel password: ~p", [Reason]),
        ?assertMatch({redis, <<"NOAUTH", _/binary>>}, Reason),
        ok = emqx_redis_storage:start(sentinel_config(Sentinel, #{redis => Redis})),
        ok = storage_checks:sessions()
    after
        ok = emqx_redis_storage:stop(),
        redis_test_server:stop_sentinel(Sentinel)
    end.

replica_in_sync(#{replica := Replica}) ->
    redis_test_server:replica_in_sync(Replica).

%%--------------------------------------------------------------------
%% TLS

tls_opts(Certs, Extra) ->
    maps:merge(#{enable => true, cacertfile => maps:get(ca, Certs), verify => verify_peer}, Extra).

client_cert_opts(Certs, Extra) ->
    tls_opts(Certs, Extra#{certfile => maps:get(client_cert, Certs), keyfile => maps:get(client_key, Certs)}).

with_tls_server(ServerOpts, Fun) ->
    Certs = redis_test_server:certs(),
    Server = redis_test_server:start(maps:merge(#{tls => Certs}, ServerOpts)),
    try
        Fun(Server, Certs)
    after
        ok = emqx_redis_storage:stop(),
        redis_test_server:stop(Server)
    end.

verified_tls_main_cases(_Config) ->
    with_tls_server(#{}, fun(Server, Certs) ->
        ok = emqx_redis_storage:start(#{redis => #{servers => redis_test_server:address(Server), ssl => tls_opts(Certs, #{})}}),
        ok = storage_checks:all()
    end).

mutual_tls(_Config) ->
    with_tls_server(#{conf => ["tls-auth-clients yes"]}, fun(Server, Certs) ->
        Address = redis_test_server:address(Server),
        ?assertMatch({error, {connection, _}},
            emqx_redis_storage:start(#{redis => #{servers => Address, connect_timeout => 1000, ssl => tls_opts(Certs, #{})}})),
        ok = emqx_redis_storage:start(#{redis => #{servers => Address, ssl => client_cert_opts(Certs, #{})}}),
        ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>]))
    end).

wrong_ca_fails_clearly(_Config) ->
    with_tls_server(#{}, fun(Server, Certs) ->
        Ssl = tls_opts(Certs, #{cacertfile => maps:get(other_ca, Certs)}),
        {Us, Result} = timer:tc(fun() ->
            emqx_redis_storage:start(#{redis => #{servers => redis_test_server:address(Server), connect_timeout => 1000, ssl => Ssl}})
        end),
        ct:log("wrong CA: ~p", [Result]),
        ?assertMatch({error, {connection, _}}, Result),
        ?assert(Us < 5000000),
        %% not verifying the peer is possible, on request
        ok = emqx_redis_storage:start(#{redis => #{servers => redis_test_server:address(Server), ssl => Ssl#{verify => verify_none}}}),
        ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>]))
    end).

wrong_name_fails_clearly(_Config) ->
    %% The certificate names 127.0.0.1 and localhost; 127.0.0.2 is not among them.
    with_tls_server(#{conf => ["bind 127.0.0.1 127.0.0.2"]}, fun(Server, Certs) ->
        Wrong = iolist_to_binary(["127.0.0.2:", integer_to_list(redis_test_server:port(Server))]),
        {Us, Result} = timer:tc(fun() ->
            emqx_redis_storage:start(#{redis => #{servers => Wrong, connect_timeout => 1000, ssl => tls_opts(Certs, #{})}})
        end),
        ct:log("wrong name: ~p", [Result]),
        ?assertMatch({error, {connection, _}}, Result),
        ?assert(Us < 5000000)
    end).

%% A certificate that names only redis.test, served on 127.0.0.1.
name_certs() ->
    Certs = redis_test_server:certs(),
    Certs#{server_cert := maps:get(name_cert, Certs), server_key := maps:get(name_key, Certs)}.

server_name_indication(_Config) ->
    Certs = name_certs(),
    Server = redis_test_server:start(#{tls => Certs}),
    Start = fun(Ssl) ->
        emqx_redis_storage:start(#{redis => #{
            servers => redis_test_server:address(Server), connect_timeout => 1000, ssl => tls_opts(Certs, Ssl)
        }})
    end,
    try
        %% unset: the certificate must name the host dialled, 127.0.0.1
        ?assertMatch({error, {connection, _}}, Start(#{})),
        Other = Start(#{server_name_indication => <<"other.test">>}),
        ct:log("a name the certificate does not carry: ~p", [Other]),
        ?assertMatch({error, {connection, _}}, Other),
        %% the name the certificate carries, whatever address is dialled
        ok = Start(#{server_name_indication => <<"redis.test">>}),
        ok = emqx_redis_session:save_session(<<"sni">>, #{n => 1}),
        ?assertEqual({ok, #{n => 1}}, emqx_redis_session:load_session(<<"sni">>)),
        ok = emqx_redis_storage:stop(),
        %% disable: the chain is still checked, the name is not
        ok = Start(#{server_name_indication => disable}),
        ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])),
        ok = emqx_redis_storage:stop(),
        ?assertMatch({error, {connection, _}},
            Start(#{server_name_indication => <<"disable">>, cacertfile => maps:get(other_ca, Certs)})),
        ?assertMatch({error, {invalid_config, <<"redis.ssl.server_name_indication">>, _}},
            Start(#{server_name_indication => <<"not a name">>}))
    after
        ok = emqx_redis_storage:stop(),
        redis_test_server:stop(Server)
    end.

%% redis-rs dials cluster nodes itself: a name cannot be asked for, but the
%% name check can be disabled (the chain is still checked).
tls_cluster_server_name(_Config) ->
    Certs = name_certs(),
    Nodes = redis_test_server:start_cluster(#{tls => Certs, replicas => 0}),
    Start = fun(Ssl) ->
        emqx_redis_storage:start(cluster_config(Nodes, #{redis => #{connect_timeout => 1000, ssl => tls_opts(Certs, Ssl)}}))
    end,
    try
        ?assertMatch({error, {connection, _}}, Start(#{})),
        Named = Start(#{server_name_indication => <<"redis.test">>}),
        ct:log("a name with cluster: ~p", [Named]),
        ?assertMatch({error, {invalid_config, <<"redis.ssl.server_name_indication">>, _}}, Named),
        ?assertMatch({error, {connection, _}},
            Start(#{server_name_indication => disable, cacertfile => maps:get(other_ca, Certs)})),
        ok = Start(#{server_name_indication => disable}),
        ok = storage_checks:all()
    after
        ok = emqx_redis_storage:stop(),
        redis_test_server:stop_cluster(Nodes)
    end.

%% Mutual TLS: the nodes demand a client certificate.
tls_cluster_main_cases(_Config) ->
    Certs = redis_test_server:certs(),
    Nodes = redis_test_server:start_cluster(#{tls => Certs, conf => ["tls-auth-clients yes"]}),
    try
        ?assertMatch({error, {connection, _}},
            emqx_redis_storage:start(cluster_config(Nodes, #{redis => #{connect_timeout => 1000, ssl => tls_opts(Certs, #{})}}))),
        ok = emqx_redis_storage:start(cluster_config(Nodes, #{redis => #{ssl => client_cert_opts(Certs, #{})}})),
        ok = storage_checks:all()
    after
        ok = emqx_redis_storage:stop(),
        redis_test_server:stop_cluster(Nodes)
    end.

%% Sentinels and servers whose certificate names only redis.test: the
%% sentinels and the master they name are both checked against that name.
%% Mutual TLS: all of them demand a client certificate.
tls_sentinel_main_cases(_Config) ->
    Certs = name_certs(),
    Mutual = ["tls-auth-clients yes"],
    Sentinel = redis_test_server:start_sentinel(#{tls => Certs, conf => Mutual, sentinel_conf => Mutual}),
    try
        ok = test_util:wait_until(fun() -> replica_in_sync(Sentinel#{replica := (maps:get(replica, Sentinel))#{tls => Certs}}) end, 20000),
        ?assertMatch({error, {connection, _}},
            emqx_redis_storage:start(sentinel_config(Sentinel, #{redis => #{connect_timeout => 1000, ssl => tls_opts(Certs, #{})}}))),
        Ssl = client_cert_opts(Certs, #{server_name_indication => <<"redis.test">>}),
        ?assertMatch({error, {connection, _}},
            emqx_redis_storage:start(sentinel_config(Sentinel, #{redis => #{connect_timeout => 1000, ssl => maps:without([certfile, keyfile], Ssl)}}))),
        ok = emqx_redis_storage:start(sentinel_config(Sentinel, #{redis => #{ssl => Ssl}})),
        ok = storage_checks:all()
    after
        ok = emqx_redis_storage:stop(),
        redis_test_server:stop_sentinel(Sentinel)
    end.

%%--------------------------------------------------------------------
%% ACL

%% The rule the README gives operators: keys and channels under the prefix,
%% and the command categories the project uses.
acl_rule() ->
    "user app on >apppass resetkeys ~emqx:* resetchannels &emqx:* -@all "
    "+@read +@write +@scripting +@pubsub +@connection +time +wait -keys -flushall -flushdb".

restricted_user_main_cases(_Config) ->
    Server = redis_test_server:start(#{conf => [acl_rule()]}),
    try
        ok = emqx_redis_storage:start(#{redis => #{servers => redis_test_server:address(Server), username => <<"app">>, password => <<"apppass">>}}),
        ok = storage_checks:all(),
        %% the user really is restricted
        ?assertMatch({error, {redis, <<"NOPERM", _/binary>>}}, emqx_redis_storage:q([<<"GET">>, <<"not-ours">>])),
        ?assertMatch({error, {redis, <<"NOPERM", _/binary>>}}, emqx_redis_storage:q([<<"FLUSHALL">>]))
    after
        ok = emqx_redis_storage:stop(),
        redis_test_server:stop(Server)
    end.

user_without_rights_gets_clear_error(_Config) ->
    Server = redis_test_server:start(#{conf => ["user nobody on >pw ~other:* -@all +@connection"]}),
    try
        ok = emqx_redis_storage:start(#{redis => #{servers => redis_test_server:address(Server), username => <<"nobody">>, password => <<"pw">>}}),
        ?assertMatch({error, {redis, <<"NOPERM", _/binary>>}}, emqx_redis_session:save_session(<<"c">>, x)),
        ?assertMatch({error, {redis, <<"NOPERM", _/binary>>}}, emqx_redis_session:load_session(<<"c">>)),
        ?assertMatch({error, {redis, <<"NOPERM", _/binary>>}}, emqx_redis_message:store_message(<<"c">>, #{id => <<"1">>}))
    after
        ok = emqx_redis_storage:stop(),
        redis_test_server:stop(Server)
    end.

%%--------------------------------------------------------------------
%% durability

appendonly_off_is_warned(_Config) ->
    Server = redis_test_server:start(),
    ok = test_util:add_log_handler(),
    try
        ok = emqx_redis_storage:start(#{redis => #{servers => redis_test_server:address(Server)}}),
        receive
            {report, warning, #{msg := <<"redis_not_persistent">>, reason := Reason}} ->
                ?assertNotEqual(nomatch, string:find(Reason, "appendonly no"))
        after 5000 -> ct:fail(no_warning)
        end
    after
        logger:remove_handler(test_util),
        ok = emqx_redis_storage:stop(),
        redis_test_server:stop(Server)
    end.


%%--------------------------------------------------------------------

