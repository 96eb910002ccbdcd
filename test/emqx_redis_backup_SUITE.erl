%% Backup and restore: data written through every API on each deployment
%% the suites start (single, Sentinel, Cluster, TLS, an ACL user), backed
%% up, restored into an empty deployment of another kind and under another
%% prefix, then read back equal through every API; iterators continue; a
%% lease taken after the restore gets a higher fence. Truncated, bit-flipped
%% and foreign files are refused before anything is written; a restore into
%% a deployment holding data is refused; a deployment under a longer prefix
%% (`emqx:eu:' under `emqx:') is neither backed up nor counted as data; a
%% restore interrupted by a killed Redis runs again to completion; with
%% wait_replicas, a restore returns once the replicas hold it (Sentinel and
%% Cluster), or fails while they are frozen; the command-line tool and
%% cmd/1.
-module(emqx_redis_backup_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include_lib("kernel/include/file.hrl").

-define(ACL_USER, "user app on >apppass resetkeys ~emqx:* resetchannels &emqx:* -@all "
    "+@read +@write +@scripting +@pubsub +@connection +time +wait -keys -flushall -flushdb").

all() ->
    [
        round_trips_between_deployments,
        bad_files_are_refused_before_any_write,
        restore_into_data_is_refused,
        nested_prefix_is_left_out,
        interrupted_restore_runs_again,
        restore_waits_for_replicas,
        command_line_and_cmd
    ].

init_per_suite(Config) ->
    ok = emqx_redis_storage:stop(),
    Certs = redis_test_server:certs(),
    Single = redis_test_server:start(),
    Acl = redis_test_server:start(#{conf => [?ACL_USER]}),
    Tls = redis_test_server:start(#{tls => Certs}),
    Sentinel = redis_test_server:start_sentinel(#{}),
    Cluster = redis_test_server:start_cluster(#{}),
    Deployments = #{
        single => #{servers => redis_test_server:address(Single)},
        acl => #{servers => redis_test_server:address(Acl), username => <<"app">>, password => <<"apppass">>},
        tls => #{
            servers => redis_test_server:address(Tls),
            ssl => #{enable => true, cacertfile => maps:get(ca, Certs)}
        },
        sentinel => #{
            redis_type => sentinel,
            sentinel => <<"mymaster">>,
            servers => [redis_test_server:address(S) || S <- maps:get(sentinels, Sentinel)]
        },
        cluster => #{redis_type => cluster, servers => [redis_test_server:address(N) || N <- Cluster]}
    },
    [
        {deployments, Deployments},
        {servers, [Single, Acl, Tls]},
        {sentinel, Sentinel},
        {cluster, Cluster},
        {single, Single}
        | Config
    ].

end_per_suite(Config) ->
    [redis_test_server:stop(S) || S <- ?config(servers, Config)],
    redis_test_server:stop_sentinel(?config(sentinel, Config)),
    redis_test_server:stop_cluster(?config(cluster, Config)).

end_per_testcase(_Case, _Config) ->
    _ = emqx_redis_storage:stop(),
    ok.

%% A client of deployment `Kind' under `Prefix' (under emqx:, which the
%% ACL user may use).
client(Config, Kind, Prefix) ->
    Redis = maps:get(Kind, ?config(deployments, Config)),
    {ok, Client} = emqx_redis_storage:connect(#{redis => Redis, key_prefix => Prefix}),
    Client.

prefix(Name) ->
    <<"emqx:", Name/binary, (integer_to_binary(erlang:unique_integer([positive])))/binary, ":">>.

file(Config, Name) ->
    filename:join(?config(priv_dir, Config), Name).

%%--------------------------------------------------------------------
%% Data through every API, and every API's view of it

-define(SESSIONS, 40).
-define(QUEUES, 5).

ids() -> [<<"c", (integer_to_binary(I))/binary>> || I <- lists:seq(1, ?SESSIONS)].

%% Writes through every API; returns the iterators, each partly read, and
%% the fence of a lease held at the time of the backup.
write_all(C) ->
    Ids = ids(),
    [ok = emqx_redis_session:save_session(C, Id, #{id => Id, n => I}, #{ttl => 3600 + I, node => node()})
     || {I, Id} <- lists:enumerate(Ids)],
    [ok = emqx_redis_message:store_messages(C, Id, [#{id => integer_to_binary(M), qos => 1, body => <<M:64>>} || M <- lists:seq(1, 20)])
     || Id <- lists:sublist(Ids, ?QUEUES)],
    ok = emqx_redis_message:ack_message(C, hd(Ids), <<"3">>),
    [ok = emqx_redis_registry:register_channel(C, Id, node()) || Id <- lists:sublist(Ids, 10)],
    [ok = emqx_redis_router:add_route(C, <<"t/", (integer_to_binary(I))/binary, "/+">>, node()) || I <- lists:seq(1, 20)],
    ok = emqx_redis_router:add_route(C, <<"t/#">>, {<<"g1">>, node()}),
    ok = emqx_redis_ds:subscribe(C, <<"dsc">>, <<"lvl/+">>),
    ok = test_util:wait_until(fun() -> emqx_redis_ds:filter_matches(C, <<"lvl/1">>) end, 10000),
    {ok, #{persisted := 60}} = emqx_redis_ds:persist(C, [#{id => integer_to_binary(I), topic => <<"lvl/", (integer_to_binary(I rem 4))/binary>>} || I <- lists:seq(1, 60)]),
    {ok, Streams} = emqx_redis_ds:get_streams(C, <<"lvl/+">>, 0),
    Iterators = [It || S <- Streams, {ok, It0} <- [emqx_redis_ds:make_iterator(C, S, <<"lvl/+">>, 0)], {ok, It, _} <- [emqx_redis_ds:next(C, It0, 3)]],
    %% A fence far above the clock (as if the source's clock ran ahead):
    %% only a restored fence counter keeps the next fence above it.
    Lease = lists:last(Ids),
    FenceKey = <<(prefix_of(C))/binary, "fence:{", Lease/binary, "}">>,
    Ahead = erlang:system_time(millisecond) + 3600000,
    {ok, <<"OK">>} = emqx_redis_storage:q(C, [<<"SET">>, FenceKey, integer_to_binary(Ahead)]),
    {ok, Fence} = emqx_redis_session:acquire_lease(C, Lease, node(), 60000),
    ?assert(Fence > Ahead),
    #{iterators => Iterators, lease => Lease, fence => Fence}.

prefix_of(C) -> maps:get(key_prefix, emqx_redis_storage_client:info(C)).

read_all(C) ->
    Ids = ids(),
    {ok, Count} = emqx_redis_session:count_sessions(C),
    {ok, Listed} = emqx_redis_session:list_sessions(C, 1000, 0),
    {ok, Topics} = emqx_redis_router:topics(C),
    {ok, Streams} = emqx_redis_ds:get_streams(C, <<"lvl/+">>, 0),
    #{
        sessions => [{emqx_redis_session:load_session(C, Id), emqx_redis_session:session_info(C, Id)} || Id <- Ids],
        count => Count,
        listed => lists:sort(Listed),
        queues => [{emqx_redis_message:get_messages(C, Id, 0, 100), emqx_redis_message:queue_info(C, Id)} || Id <- Ids],
        channels => [emqx_redis_registry:lookup_channel(C, Id) || Id <- Ids],
        topics => lists:sort(Topics),
        matches => [lists:sort(element(2, emqx_redis_router:match_routes(C, <<"t/", (integer_to_binary(I))/binary, "/x">>))) || I <- lists:seq(0, 21)],
        ds_subscriptions => emqx_redis_ds:subscriptions(C, <<"dsc">>),
        streams => lists:sort(Streams),
        stream_contents => lists:sort([drain(C, It) || S <- Streams, {ok, It} <- [emqx_redis_ds:make_iterator(C, S, <<"lvl/+">>, 0)]])
    }.

drain(C, It) ->
    element(1, drain_end(C, It)).

%% The messages after the iterator, and the iterator at the end.
drain_end(C, It) ->
    case emqx_redis_ds:next(C, It, 1000) of
        {ok, End, []} ->
            {[], End};
        {ok, Next, Msgs} ->
            {More, End} = drain_end(C, Next),
            {Msgs ++ More, End}
    end.

%% Backs up `Src', restores into `Dst' (another kind, another prefix) and
%% compares.
round_trip(Config, SrcKind, DstKind) ->
    Src = client(Config, SrcKind, prefix(<<"s">>)),
    Written = #{iterators := Iterators, lease := Lease, fence := Fence} = write_all(Src),
    Expected = read_all(Src),
    File = file(Config, atom_to_list(SrcKind) ++ "-to-" ++ atom_to_list(DstKind) ++ ".bak"),
    {ok, #{keys := Keys, bytes := Bytes}} = emqx_redis_storage:backup(Src, File, #{}),
    ?assertEqual({ok, Bytes}, {ok, filelib:file_size(File)}),
    {ok, #file_info{mode = Mode}} = file:read_file_info(File),
    ?assertEqual(8#600, Mode band 8#777),
    DstPrefix = prefix(<<"d">>),
    Restoring = client(Config, DstKind, DstPrefix),
    ?assertEqual({ok, #{keys => Keys}}, emqx_redis_storage:restore(Restoring, File, #{})),
    %% A client that starts after the restore, as EMQX would.
    Dst = client(Config, DstKind, DstPrefix),
    ?assertEqual(Expected, read_all(Dst)),
    %% iterators made before the backup continue where they were...
    Ends = [begin {Rest, End} = drain_end(Dst, It), ?assertEqual(drain(Src, It), Rest), End end || It <- Iterators],
    %% ...also over messages persisted after the restore
    {ok, #{persisted := 1}} = emqx_redis_ds:persist(Dst, [#{id => <<"after">>, topic => <<"lvl/1">>}]),
    ?assertEqual([[<<"after">>]], [Ids || End <- Ends, Ids <- [[Id || #{id := Id} <- drain(Dst, End)]], Ids =/= []]),
    %% leases are left out (the old owner's lease does not block), fences
    %% are kept: the next fence is above the last one issued before
    {ok, NewFence} = emqx_redis_session:acquire_lease(Dst, Lease, 'other@host', 60000),
    ?assert(NewFence > Fence),
    ct:log("~p -> ~p: ~b keys, ~b bytes", [SrcKind, DstKind, Keys, Bytes]),
    Written.

round_trips_between_deployments(Config) ->
    [
        round_trip(Config, Src, Dst)
     || {Src, Dst} <- [
            {single, cluster},
            {cluster, single},
            {sentinel, cluster},
            {tls, acl},
            {acl, sentinel},
            {single, tls}
        ]
    ].

%%--------------------------------------------------------------------
%% Refusals

small_backup(Config, Name) ->
    Src = client(Config, single, prefix(<<"s">>)),
    [ok = emqx_redis_session:save_session(Src, Id, Id, #{}) || Id <- ids()],
    ok = emqx_redis_message:store_messages(Src, <<"c1">>, [#{id => integer_to_binary(M)} || M <- lists:seq(1, 10)]),
    File = file(Config, Name),
    {ok, _} = emqx_redis_storage:backup(Src, File, #{}),
    {ok, Bin} = file:read_file(File),
    Bin.

keys_under(C) ->
    {ok, Keys} = emqx_redis_storage:q(C, [<<"KEYS">>, <<(prefix_of(C))/binary, "*">>]),
    Keys.

bad_files_are_refused_before_any_write(Config) ->
    Good = small_backup(Config, "good.bak"),
    Size = byte_size(Good),
    Dst = client(Config, single, prefix(<<"d">>)),
    Truncated = [binary:part(Good, 0, N) || N <- [0, 5, 20, Size div 3, Size div 2, Size - 30, Size - 1]],
    Flipped = [flip(Good, Bit) || Bit <- [3, 70, 8 * 40 + 1, 8 * (Size div 2), 8 * (Size div 2) + 7, 8 * (Size - 10), 8 * Size - 1]],
    Foreign = [<<"REDIS0011", 0:800>>, <<"hello\n">>, <<Good/binary, 0>>],
    lists:foreach(
        fun({I, Bin}) ->
            File = file(Config, "bad-" ++ integer_to_list(I) ++ ".bak"),
            ok = file:write_file(File, Bin),
            ?assertMatch({error, {bad_backup, Why}} when is_binary(Why), emqx_redis_storage:restore(Dst, File, #{})),
            ?assertMatch({error, {bad_backup, _}}, emqx_redis_storage:restore(Dst, File, #{mode => replace})),
            ?assertEqual([], keys_under(Dst))
        end,
        lists:enumerate(Truncated ++ Flipped ++ Foreign)
    ),
    %% a backup from a newer Redis (its header says so, checksum and all)
    <<"EMQXRSB\n", 1:32, HeaderLen:32, Header:HeaderLen/binary, _:32, Blocks/binary>> = Good,
    <<PrefixLen:16, Prefix:PrefixLen/binary, VersionLen:16, _:VersionLen/binary, Created:64>> = Header,
    Newer = <<PrefixLen:16, Prefix/binary, 6:16, "99.0.0", Created:64>>,
    NewerFile = file(Config, "newer.bak"),
    ok = file:write_file(NewerFile, [<<"EMQXRSB\n", 1:32, (byte_size(Newer)):32>>, Newer, <<(erlang:crc32(Newer)):32>>, Blocks]),
    {error, {redis_version, #{backup := <<"99.0.0">>, target := Target}}} = emqx_redis_storage:restore(Dst, NewerFile, #{}),
    ?assertMatch(<<"7.", _/binary>>, Target),
    ?assertEqual([], keys_under(Dst)),
    ?assertMatch({error, {file, _}}, emqx_redis_storage:restore(Dst, file(Config, "missing.bak"), #{})),
    ?assertMatch({error, {file, _}}, emqx_redis_storage:backup(Dst, "/nonexistent-dir/x.bak", #{})),
    %% a backup that fails part-way leaves no file behind
    {ok, <<"OK">>} = emqx_redis_storage:q(Dst, [<<"ACL">>, <<"SETUSER">>, <<"nodump">>, <<"on">>, <<">pw">>, <<"~*">>, <<"+@all">>, <<"-dump">>]),
    {ok, NoDump} = emqx_redis_storage:connect(#{
        redis => #{servers => redis_test_server:address(?config(single, Config)), username => <<"nodump">>, password => <<"pw">>},
        key_prefix => prefix_of(client(Config, single, <<"emqx:nd:">>))
    }),
    ok = emqx_redis_session:save_session(NoDump, <<"c">>, c, #{}),
    Failed = file(Config, "failed.bak"),
    ?assertMatch({error, {redis, _}}, emqx_redis_storage:backup(NoDump, Failed, #{})),
    ?assertEqual({false, false}, {filelib:is_file(Failed), filelib:is_file(Failed ++ ".part")}),
    ?assertEqual({error, {invalid_option, {mode, merge}}}, emqx_redis_storage:restore(Dst, file(Config, "good.bak"), #{mode => merge})),
    ?assertEqual({error, {invalid_path, 42}}, emqx_redis_storage:backup(Dst, 42, #{})).

flip(Bin, Bit) ->
    <<Before:Bit/bits, B:1, After/bits>> = Bin,
    <<Before:Bit/bits, (1 - B):1, After/bits>>.

restore_into_data_is_refused(Config) ->
    small_backup(Config, "into-data.bak"),
    File = file(Config, "into-data.bak"),
    Dst = client(Config, single, prefix(<<"d">>)),
    ok = emqx_redis_session:save_session(Dst, <<"mine">>, mine, #{}),
    Before = keys_under(Dst),
    {error, {not_empty, Key}} = emqx_redis_storage:restore(Dst, File, #{}),
    ?assert(lists:member(Key, Before)),
    ?assertEqual(lists:sort(Before), lists:sort(keys_under(Dst))),
    %% replace: the backup's keys are written over, the others stay
    {ok, #{keys := N}} = emqx_redis_storage:restore(Dst, File, #{mode => replace}),
    ?assert(N > ?SESSIONS),
    ?assertEqual({ok, mine}, emqx_redis_session:load_session(Dst, <<"mine">>)),
    ?assertEqual({ok, <<"c7">>}, emqx_redis_session:load_session(Dst, <<"c7">>)),
    %% lease owners and node membership are no data: restoring is allowed
    Empty = client(Config, single, prefix(<<"d">>)),
    P = prefix_of(Empty),
    {ok, 1} = emqx_redis_storage:q(Empty, [<<"ZADD">>, <<P/binary, "nodes:{n}">>, <<"1">>, <<"n1">>]),
    {ok, 1} = emqx_redis_storage:q(Empty, [<<"HSET">>, <<P/binary, "lown:{x}">>, <<"c">>, <<"n1">>]),
    ?assertMatch({ok, _}, emqx_redis_storage:restore(Empty, File, #{})).

%% Two deployments on one Redis, one's prefix inside the other's: the outer
%% one's backup holds its own keys only, and restores next to an inner
%% deployment's data without calling it its own.
nested_prefix_is_left_out(Config) ->
    Outer = client(Config, single, prefix(<<"n">>)),
    Inner = client(Config, single, <<(prefix_of(Outer))/binary, "eu:">>),
    Mine = [<<"m", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 3)],
    Theirs = [<<"t", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 5)],
    [ok = emqx_redis_session:save_session(Outer, Id, Id, #{}) || Id <- Mine],
    [ok = emqx_redis_session:save_session(Inner, Id, Id, #{}) || Id <- Theirs],
    ok = emqx_redis_message:store_messages(Inner, <<"t1">>, [#{id => <<"x">>}]),
    ok = emqx_redis_router:add_route(Inner, <<"eu/+">>, node()),
    ok = emqx_redis_limiter:define(Inner, <<"conn">>, #{rate => 10, burst => 10}),
    {ok, 9} = emqx_redis_limiter:check(Inner, <<"conn">>, <<"t1">>, 1),
    InnerKeys = keys_under(Inner),
    OuterOnly = keys_under(Outer) -- InnerKeys,
    File = file(Config, "nested.bak"),
    {ok, #{keys := N}} = emqx_redis_storage:backup(Outer, File, #{}),
    ?assertEqual(length(OuterOnly), N),
    %% restored under a prefix whose own nested deployment holds data
    Dst = client(Config, single, prefix(<<"d">>)),
    DstInner = client(Config, single, <<(prefix_of(Dst))/binary, "eu:">>),
    ok = emqx_redis_session:save_session(DstInner, <<"t1">>, other, #{}),
    ?assertEqual({ok, #{keys => N}}, emqx_redis_storage:restore(Dst, File, #{})),
    ?assertEqual({ok, 3}, emqx_redis_session:count_sessions(Dst)),
    [?assertEqual({ok, Id}, emqx_redis_session:load_session(Dst, Id)) || Id <- Mine],
    ?assertEqual({error, not_found}, emqx_redis_session:load_session(Dst, <<"t1">>)),
    ?assertEqual({ok, other}, emqx_redis_session:load_session(DstInner, <<"t1">>)),
    [?assertEqual({ok, Id}, emqx_redis_session:load_session(Inner, Id)) || Id <- Theirs].

%% The target is frozen (behind a proxy) at the first progress report of
%% the restore, then killed; restarted (from its AOF), the same restore is
%% run again and completes, in the default mode: the marker says it is the
%% same restore.
interrupted_restore_runs_again(Config) ->
    %% Many keys, so that the restore lasts long enough to be interrupted.
    Source = redis_test_server:start(),
    SrcPrefix = prefix(<<"s">>),
    {ok, Src} = emqx_redis_storage:connect(#{redis => #{servers => redis_test_server:address(Source)}, key_prefix => SrcPrefix}),
    %% keys of the layout (a backup takes no other): 200,000 fence counters
    Populate = "for i = 1, 200000 do redis.call(\"SET\", ARGV[1] .. \"fence:{k\" .. i .. \"}\", string.rep(\"x\", 100)) end",
    "" = redis_test_server:cmd(Source, ["EVAL", Populate, "0", binary_to_list(SrcPrefix)]),
    Sessions = 100,
    [ok = emqx_redis_session:save_session(Src, integer_to_binary(I), I, #{}) || I <- lists:seq(1, Sessions)],
    File = file(Config, "interrupted.bak"),
    {ok, #{keys := Keys}} = emqx_redis_storage:backup(Src, File, #{}),
    redis_test_server:stop(Source),
    Target = redis_test_server:start(#{conf => ["appendonly yes", "appendfsync always"]}),
    Proxy = tcp_proxy:start(redis_test_server:port(Target)),
    try
        Redis = #{servers => tcp_proxy:address(Proxy), connect_timeout => 1000, command_timeout => 1000},
        {ok, Dst} = emqx_redis_storage:connect(#{redis => Redis, key_prefix => prefix(<<"d">>)}),
        Kill = fun
            (restore, _, _) when Keys > 0 ->
                case get(killed) of
                    undefined ->
                        put(killed, true),
                        ok = tcp_proxy:pause(Proxy),
                        redis_test_server:kill(Target);
                    true ->
                        ok
                end;
            (_, _, _) ->
                ok
        end,
        ?assertMatch({error, _}, emqx_redis_storage:restore(Dst, File, #{progress => Kill})),
        ?assertEqual(true, get(killed)),
        ok = redis_test_server:restart(Target),
        ok = tcp_proxy:resume(Proxy),
        ok = test_util:wait_until(fun() -> emqx_redis_storage:q(Dst, [<<"PING">>]) =:= {ok, <<"PONG">>} end, 10000),
        {ok, Partial} = emqx_redis_storage:q(Dst, [<<"DBSIZE">>]),
        ct:log("restored before the kill: ~b of ~b keys", [Partial, Keys]),
        ?assert(Partial > 0 andalso Partial < Keys),
        {ok, #{keys := Keys}} = emqx_redis_storage:restore(Dst, File, #{}),
        ?assertEqual({ok, Keys}, emqx_redis_storage:q(Dst, [<<"DBSIZE">>])),
        %% (counting then marks its sweep: a key of the deployment's own)
        ?assertEqual({ok, Sessions}, emqx_redis_session:count_sessions(Dst)),
        ?assertEqual({ok, 77}, emqx_redis_session:load_session(Dst, <<"77">>)),
        %% the marker is gone: a third restore finds data
        ?assertMatch({error, {not_empty, _}}, emqx_redis_storage:restore(Dst, File, #{}))
    after
        tcp_proxy:stop(Proxy),
        redis_test_server:stop(Target)
    end.

%% With wait_replicas => 1, on Sentinel and on a Cluster (3 masters, a
%% replica each): with every replica frozen the restore fails with
%% not_replicated, and keeps its marker; once they are back it runs again
%% (the marker: not refused as not_empty) and, as it returns, the replicas
%% hold every key it restored.
restore_waits_for_replicas(Config) ->
    Src = client(Config, single, prefix(<<"s">>)),
    [ok = emqx_redis_session:save_session(Src, Id, Id, #{}) || Id <- ids()],
    ok = emqx_redis_message:store_messages(Src, <<"c1">>, [#{id => integer_to_binary(M)} || M <- lists:seq(1, 10)]),
    File = file(Config, "replicated.bak"),
    {ok, #{keys := Keys}} = emqx_redis_storage:backup(Src, File, #{}),
    #{replica := SentinelReplica} = ?config(sentinel, Config),
    [_, _, _ | ClusterReplicas] = ?config(cluster, Config),
    [restored_on_replicas(Config, File, Keys, Kind, Replicas)
     || {Kind, Replicas} <- [{sentinel, [SentinelReplica]}, {cluster, ClusterReplicas}]].

restored_on_replicas(Config, File, Keys, Kind, Replicas) ->
    Redis = maps:merge(maps:get(Kind, ?config(deployments, Config)), #{wait_replicas => 1, wait_timeout => 300}),
    Prefix = prefix(<<"r">>),
    {ok, Dst} = emqx_redis_storage:connect(#{redis => Redis, key_prefix => Prefix}),
    InSync = fun() -> lists:all(fun redis_test_server:replica_in_sync/1, Replicas) end,
    ok = test_util:wait_until(InSync, 30000),
    [ok = redis_test_server:pause(R) || R <- Replicas],
    Frozen =
        try
            emqx_redis_storage:restore(Dst, File, #{})
        after
            [ok = redis_test_server:resume(R) || R <- Replicas]
        end,
    ?assertMatch({error, {not_replicated, #{acked := 0, wanted := 1}}}, Frozen, Kind),
    ok = test_util:wait_until(InSync, 30000),
    ?assertEqual({ok, #{keys => Keys}}, emqx_redis_storage:restore(Dst, File, #{}), Kind),
    OnReplicas = lists:sum([length(string:lexemes(redis_test_server:cmd(R, ["KEYS", binary_to_list(Prefix) ++ "*"]), "\n")) || R <- Replicas]),
    ?assertEqual(Keys, OnReplicas, Kind).

%%--------------------------------------------------------------------
%% The command-line tool and cmd/1

command_line_and_cmd(Config) ->
    Single = redis_test_server:address(?config(single, Config)),
    Src = <<"emqx:clisrc:">>,
    Dst = <<"emqx:clidst:">>,
    {ok, C} = emqx_redis_storage:connect(#{redis => #{servers => Single}, key_prefix => Src}),
    [ok = emqx_redis_session:save_session(C, Id, Id, #{}) || Id <- ids()],
    File = file(Config, "cli.bak"),
    Tool = filename:join([test_util:project_root(), "bin", "emqx-redis-storage"]),
    Run = fun(Prefix, Args) ->
        test_util:run(Tool, ["--servers", binary_to_list(Single), "--key-prefix", binary_to_list(Prefix) | Args], #{timeout => 60000})
    end,
    {0, Backed} = Run(Src, ["backup", File]),
    ?assertMatch({match, _}, re:run(Backed, "^backed up [0-9]+ keys \\([0-9]+ bytes\\) to .*cli.bak$", [multiline])),
    {0, Restored} = Run(Dst, ["restore", File]),
    ?assertMatch({match, _}, re:run(Restored, "^restored [0-9]+ keys from", [multiline])),
    {1, Refused} = Run(Dst, ["restore", File]),
    ?assertMatch({match, _}, re:run(Refused, "holds data")),
    {0, _} = Run(Dst, ["restore", File, "--replace"]),
    {0, Json} = Run(Dst, ["--json", "restore", File, "--replace"]),
    ?assertMatch(#{<<"keys">> := N} when N > 0, json_test_decoder:decode(Json)),
    {2, _} = Run(Dst, ["restore", File, "--merge"]),
    %% the progress line, as on a terminal
    {0, WithProgress} = test_util:run(Tool, ["--servers", binary_to_list(Single), "--key-prefix", binary_to_list(Dst),
        "restore", File, "--replace"], #{timeout => 60000, env => [{"EMQX_REDIS_STORAGE_PROGRESS", "1"}]}),
    ?assertMatch({match, _}, re:run(WithProgress, "\rverify: [0-9]+ keys, [0-9.]+ MiB.*\rrestore: [0-9]+ keys", [dotall])),
    {1, Bad} = Run(Dst, ["restore", Tool]),
    ?assertMatch({match, _}, re:run(Bad, "not a usable backup: not a backup of emqx_redis_storage")),
    {ok, D} = emqx_redis_storage:connect(#{redis => #{servers => Single}, key_prefix => Dst}),
    ?assertEqual({ok, ?SESSIONS}, emqx_redis_session:count_sessions(D)),
    %% inside the VM, on the default client
    ok = emqx_redis_storage:start(#{redis => #{servers => Single}, key_prefix => Src}),
    InVm = file(Config, "cmd.bak"),
    ?assertMatch({match, _}, re:run(test_util:captured(["backup", InVm]), "^backed up [0-9]+ keys")),
    ?assertMatch({match, _}, re:run(test_util:captured(["restore", InVm]), "holds data")),
    ?assertMatch({match, _}, re:run(test_util:captured(["restore", InVm, "--replace"]), "^restored [0-9]+ keys")).
