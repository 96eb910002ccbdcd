%% The main cases of every API, run against whatever deployment the default
%% client is connected to (single, Sentinel, Cluster, TLS, ACL user). Keys are
%% unique per call, so runs never depend on an empty Redis.
-module(storage_checks).

-export([all/0, sessions/0, registry/0, messages/0, grouped/0, routes/0, durable/0, membership/0, limiter/0]).

-include_lib("stdlib/include/assert.hrl").

all() ->
    ok = sessions(),
    ok = registry(),
    ok = messages(),
    ok = grouped(),
    ok = routes(),
    ok = durable(),
    ok = membership(),
    ok = limiter().

unique(Prefix) ->
    iolist_to_binary([Prefix, integer_to_list(erlang:unique_integer([positive]))]).

unique_node() ->
    binary_to_atom(<<(unique(<<"n">>))/binary, "@host">>).

sessions() ->
    S = emqx_redis_session,
    Ids = [unique(<<"sess-">>) || _ <- lists:seq(1, 20)],
    [ok = S:save_session(Id, #{id => Id, subs => [<<"a/+">>]}) || Id <- Ids],
    [?assertEqual({ok, #{id => Id, subs => [<<"a/+">>]}}, S:load_session(Id)) || Id <- Ids],
    {ok, Count} = S:count_sessions(),
    ?assert(Count >= 20),
    ?assertEqual([], Ids -- all_sessions(0, [])),
    {ok, #{node := Node}} = S:session_info(hd(Ids)),
    ?assertEqual(node(), Node),
    [ok = S:delete_session(Id) || Id <- Ids],
    ?assertEqual({error, not_found}, S:load_session(hd(Ids))),
    Id = unique(<<"lease-">>),
    {ok, F1} = S:acquire_lease(Id, 'a@h', 10000),
    ?assertEqual({error, {held_by, 'a@h'}}, S:acquire_lease(Id, 'b@h', 10000)),
    ok = S:release_lease(Id, F1),
    {ok, F2} = S:acquire_lease(Id, 'b@h', 10000),
    ?assert(F2 > F1),
    ?assertEqual({error, stale_fence}, S:save_session(Id, late, #{fence => F1})),
    ok = S:save_session(Id, current, #{fence => F2}),
    ?assertEqual({ok, current}, S:load_session(Id)),
    ok = S:delete_session(Id).

all_sessions(Offset, Acc) ->
    case emqx_redis_session:list_sessions(10000, Offset) of
        {ok, []} -> lists:append(Acc);
        {ok, Page} -> all_sessions(Offset + 10000, [Page | Acc])
    end.

registry() ->
    R = emqx_redis_registry,
    Dead = unique_node(),
    Ids = [unique(<<"chan-">>) || _ <- lists:seq(1, 20)],
    [ok = R:register_channel(Id, Dead) || Id <- Ids],
    ?assertEqual({ok, Dead}, R:lookup_channel(hd(Ids))),
    ok = R:unregister_channel(hd(Ids), 'other@h'),
    ?assertEqual({ok, Dead}, R:lookup_channel(hd(Ids))),
    ?assertEqual({ok, 20}, R:cleanup_node(Dead)),
    ?assertEqual({error, not_found}, R:lookup_channel(hd(Ids))),
    ok.

messages() ->
    M = emqx_redis_message,
    Id = unique(<<"queue-">>),
    Msgs = [#{id => integer_to_binary(I), topic => <<"t">>, payload => <<I:32>>, qos => 1} || I <- lists:seq(1, 50)],
    ok = M:store_messages(Id, Msgs),
    ok = M:store_message(Id, hd(Msgs)),
    ?assertEqual({ok, Msgs}, M:get_messages(Id, 0, 100)),
    ?assertEqual({ok, lists:sublist(Msgs, 11, 5)}, M:get_messages(Id, 10, 5)),
    ok = M:ack_message(Id, <<"1">>),
    ok = M:ack_message(Id, <<"no such id">>),
    ?assertEqual({ok, 49}, M:count_messages(Id)),
    {ok, #{len := 49}} = M:queue_info(Id),
    ok = M:delete_messages(Id),
    ?assertEqual({ok, 0}, M:count_messages(Id)).

%% Group commit where the deployment puts a queue: 50 concurrent stores into
%% one queue while its server is kept busy by a slow script (sent with the
%% queue's key, so a cluster runs it on the queue's master) go as groups
%% of one script call, and every message is stored once.
grouped() ->
    M = emqx_redis_message,
    Id = unique(<<"grouped-">>),
    {ok, Client} = emqx_redis_storage_client:default(),
    #{key_prefix := Prefix} = emqx_redis_storage_client:info(Client),
    Queue = <<Prefix/binary, "q:{", Id/binary, "}">>,
    #{group_commits := Before} = emqx_redis_storage:metrics(),
    Msgs = [#{id => integer_to_binary(I), topic => <<"t">>, payload => <<I:32>>, qos => 1} || I <- lists:seq(1, 50)],
    Stores = [fun() -> M:store_message(Id, Msg) end || Msg <- Msgs],
    ?assertEqual(lists:duplicate(50, ok), test_util:while_busy(fun emqx_redis_storage:q/1, [Queue], Stores)),
    #{group_commits := After} = emqx_redis_storage:metrics(),
    ?assert(After > Before, {Before, After}),
    {ok, Stored} = M:get_messages(Id, 0, 100),
    ?assertEqual(lists:sort(Msgs), lists:sort(Stored)),
    ok = M:delete_messages(Id).

routes() ->
    R = emqx_redis_router,
    Node = unique_node(),
    Base = unique(<<"r">>),
    Exact = <<Base/binary, "/a/b">>,
    Wild = <<Base/binary, "/+/b">>,
    Hash = <<Base/binary, "/#">>,
    ok = R:add_route(Exact, Node),
    ok = R:add_route(Wild, {<<"g">>, Node}),
    ok = R:add_route(Hash, 'keep@h'),
    {ok, Matched} = R:match_routes(Exact),
    ?assertEqual(lists:sort([Node, {<<"g">>, Node}, 'keep@h']), lists:sort(Matched)),
    ?assertEqual({ok, [Node]}, R:lookup_routes(Exact)),
    {ok, Topics} = R:topics(),
    ?assertEqual([], [Exact, Wild, Hash] -- Topics),
    ?assertEqual({ok, 2}, R:cleanup_node(Node)),
    ?assertEqual({ok, ['keep@h']}, R:match_routes(Exact)),
    ok = R:delete_route(Hash, 'keep@h'),
    ?assertEqual({ok, []}, R:match_routes(Exact)),
    ok.

%% Durable messages: subscribe, persist (one skipped), every stream read
%% back in order per publisher, a watch woken by an append, unsubscribe.
durable() ->
    D = emqx_redis_ds,
    {ok, Default} = emqx_redis_storage_client:default(),
    Level = unique(<<"d">>),
    Filter = <<Level/binary, "/+/temp">>,
    Owner = unique(<<"dsc-">>),
    ok = D:subscribe(Owner, Filter),
    ?assertEqual({ok, [Filter]}, D:subscriptions(Owner)),
    Topic = fun(I) -> <<Level/binary, "/", (integer_to_binary(I rem 7))/binary, "/temp">> end,
    %% the mirror of durable filters loads on the client's first call
    ok = test_util:wait_until(fun() -> D:filter_matches(Default, Topic(1)) =:= true end, 10000),
    Msgs = [#{id => integer_to_binary(I), topic => Topic(I), from => I rem 3, payload => <<I:32>>} || I <- lists:seq(1, 200)],
    Skipped = #{id => <<"s">>, topic => <<Level/binary, "/1/hum">>},
    ?assertEqual({ok, #{persisted => 200, skipped => 1}}, D:persist(Msgs ++ [Skipped])),
    {ok, Streams} = D:get_streams(Filter, 0),
    Ends = [read_stream(It, []) || S <- Streams, {ok, It} <- [D:make_iterator(S, Filter, 0)]],
    Read = lists:append([Got || {_, Got} <- Ends]),
    ?assertEqual(lists:sort(Msgs), lists:sort(Read)),
    [?assertEqual([M || #{from := F} = M <- Msgs, F =:= From], [M || #{from := F} = M <- Read, F =:= From]) || From <- [0, 1, 2]],
    Refs = [Ref || {It, _} <- Ends, {ok, Ref} <- [D:watch(It)]],
    ?assertEqual(length(Streams), length(Refs)),
    {ok, #{persisted := 1}} = D:persist([#{id => <<"late">>, topic => Topic(0), from => 0}]),
    receive
        {emqx_redis_ds, Ref, new_data} -> ?assert(lists:member(Ref, Refs))
    after 5000 -> error(watch_not_notified)
    end,
    [ok = D:unwatch(R) || R <- Refs],
    ok = D:unsubscribe(Owner, Filter),
    ?assertEqual({ok, []}, D:subscriptions(Owner)),
    ok.

read_stream(It, Acc) ->
    case emqx_redis_ds:next(It, 50) of
        {ok, It2, []} -> {It2, lists:append(lists:reverse(Acc))};
        {ok, It2, Msgs} -> read_stream(It2, [Msgs | Acc])
    end.

%% A member made here under a made-up name, with channels, routes and
%% leases spread over many slots and shards, leaves; its reap removes them
%% all and is counted once; a second reap finds it gone.
membership() ->
    N = emqx_redis_nodes,
    {ok, Client} = emqx_redis_storage_client:default(),
    Node = unique_node(),
    Bin = atom_to_binary(Node),
    {ok, {joined, Inc}} = emqx_redis_storage_client:call(Client, node_join, [Bin, 60000]),
    {ok, Live} = N:live_nodes(),
    ?assert(lists:member(Node, Live)),
    Ids = [unique(<<"reap-">>) || _ <- lists:seq(1, 30)],
    [ok = emqx_redis_registry:register_channel(Id, Node) || Id <- Ids],
    [{ok, _} = emqx_redis_session:acquire_lease(Id, Node, 60000) || Id <- Ids],
    Filters = [<<(unique(<<"reap">>))/binary, "/+/x">> || _ <- lists:seq(1, 10)],
    [ok = emqx_redis_router:add_route(F, Node) || F <- Filters],
    ok = emqx_redis_router:add_route(hd(Filters), {<<"g">>, Node}),
    ok = emqx_redis_router:add_route(hd(Filters), 'keep@h'),
    ?assertEqual({error, alive}, N:reap(Node, Inc)),
    {ok, true} = emqx_redis_storage_client:call(Client, node_leave, [Bin, Inc]),
    {ok, After} = N:live_nodes(),
    ?assertNot(lists:member(Node, After)),
    ?assertMatch({ok, #{channels := 30, routes := 11, leases := 30, reaps := 1}}, N:reap(Node, Inc)),
    [?assertEqual({error, not_found}, emqx_redis_registry:lookup_channel(Id)) || Id <- Ids],
    [?assertMatch({ok, _}, emqx_redis_session:acquire_lease(Id, 'other@h', 1000)) || Id <- Ids],
    ?assertEqual({ok, ['keep@h']}, emqx_redis_router:lookup_routes(hd(Filters))),
    ?assertEqual({ok, []}, emqx_redis_router:lookup_routes(lists:last(Filters))),
    ?assertEqual({error, gone}, N:reap(Node, Inc)),
    ok = emqx_redis_router:delete_route(hd(Filters), 'keep@h'),
    ok.

%% Rate limits: a bucket admits its burst exactly, then limits with the
%% time until the next token; 20 keys at once (spread over a cluster's
%% slots); a reset gives a full bucket; a local batch spends tokens without
%% Redis and never admits more than the bucket holds.
limiter() ->
    L = emqx_redis_limiter,
    Name = unique(<<"lim-">>),
    ok = L:define(Name, #{rate => 1, burst => 5}),
    Keys = [unique(<<"key-">>) || _ <- lists:seq(1, 20)],
    Checks = [[L:check(Name, Key, 1) || _ <- lists:seq(1, 6)] || Key <- Keys],
    [
        begin
            ?assertEqual([{ok, 4}, {ok, 3}, {ok, 2}, {ok, 1}, {ok, 0}], lists:sublist(Answers, 5)),
            {error, {limited, RetryAfter}} = lists:last(Answers),
            ?assert(RetryAfter > 0 andalso RetryAfter =< 1000, RetryAfter)
        end
     || Answers <- Checks
    ],
    ok = L:reset(Name, hd(Keys)),
    ?assertEqual({ok, 2}, L:check(Name, hd(Keys), 3)),
    Batched = unique(<<"lim-batch-">>),
    ok = L:define(Batched, #{rate => 1, burst => 50, batch => 10}),
    #{limiters := #{Batched := #{local := Local0}}} = emqx_redis_storage:metrics(),
    Admitted = [ok || {ok, _} <- [L:check(Batched, hd(Keys), 1) || _ <- lists:seq(1, 60)]],
    ?assert(length(Admitted) >= 50 - 10 andalso length(Admitted) =< 50 + 1, length(Admitted)),
    #{limiters := #{Batched := #{local := Local1}}} = emqx_redis_storage:metrics(),
    ?assert(Local1 - Local0 >= 40, {Local0, Local1}),
    ok.
