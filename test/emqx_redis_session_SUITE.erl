%% Sessions, takeover leases with fencing, and the client registry, against
%% a real redis-server.
-module(emqx_redis_session_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(S, emqx_redis_session).
-define(R, emqx_redis_registry).

all() ->
    [
        round_trip_of_many_term_shapes,
        load_and_delete_missing,
        info_tracks_created_updated_expires_and_node,
        ttl_expiry_hides_and_reclaims,
        counters_follow_the_index_and_are_rebuilt,
        list_pages_over_ten_thousand_sessions,
        concurrent_savers_and_loaders,
        awkward_client_ids,
        invalid_input_is_refused,
        too_large_session_is_refused,
        lease_contention_and_fencing,
        lease_expiry_keeps_fences_increasing,
        many_processes_race_for_one_lease,
        registry_register_lookup_unregister,
        registry_cleanup_node,
        registry_creates_node_atoms_only_within_bound,
        redis_paused_gives_timeout_within_deadline
    ].

init_per_suite(Config) ->
    Redis = redis_test_server:start(),
    ok = emqx_redis_storage:start(#{
        redis => #{servers => redis_test_server:address(Redis), command_timeout => 2000},
        persistence => #{max_session_size => 65536}
    }),
    [{redis, Redis} | Config].

end_per_suite(Config) ->
    emqx_redis_storage:stop(),
    redis_test_server:stop(?config(redis, Config)).

init_per_testcase(_Case, Config) ->
    {ok, <<"OK">>} = emqx_redis_storage:q([<<"FLUSHALL">>]),
    Config.

end_per_testcase(_Case, _Config) ->
    ok.

%%--------------------------------------------------------------------

round_trip_of_many_term_shapes(_Config) ->
    Shapes = [
        #{client_id => <<"c">>, subscriptions => #{<<"a/+">> => #{qos => 1}}, inflight => []},
        {session, <<"c">>, [1, 2, 3], 3.14159, -42, 1 bsl 100},
        [],
        <<>>,
        binary:copy(<<0, 255>>, 10000),
        "a string as a list",
        {self(), make_ref(), node()},
        [{nested, [{deeper, #{k => {t, [<<"v">>]}}}]}],
        <<"ünïcødé 会话"/utf8>>,
        fun lists:reverse/1,
        true
    ],
    lists:foreach(
        fun({I, Session}) ->
            Id = <<"shape-", (integer_to_binary(I))/binary>>,
            ok = ?S:save_session(Id, Session),
            {ok, Loaded} = ?S:load_session(Id),
            ?assert(Loaded =:= Session, {Id, Session, Loaded})
        end,
        lists:enumerate(Shapes)
    ),
    %% a re-save replaces
    ok = ?S:save_session(<<"shape-1">>, replaced),
    ?assertEqual({ok, replaced}, ?S:load_session(<<"shape-1">>)).

load_and_delete_missing(_Config) ->
    ?assertEqual({error, not_found}, ?S:load_session(<<"nobody">>)),
    ?assertEqual({error, not_found}, ?S:session_info(<<"nobody">>)),
    ?assertEqual(ok, ?S:delete_session(<<"nobody">>)),
    ok = ?S:save_session(<<"somebody">>, x),
    ?assertEqual({ok, 1}, ?S:count_sessions()),
    ok = ?S:delete_session(<<"somebody">>),
    ?assertEqual({error, not_found}, ?S:load_session(<<"somebody">>)),
    ?assertEqual({ok, 0}, ?S:count_sessions()),
    ?assertEqual({ok, []}, ?S:list_sessions(10, 0)).

info_tracks_created_updated_expires_and_node(_Config) ->
    ok = ?S:save_session(<<"c1">>, v1, #{ttl => 100, node => 'emqx@node-a'}),
    {ok, I1} = ?S:session_info(<<"c1">>),
    #{created_at := C1, updated_at := U1, expires_at := E1, node := 'emqx@node-a'} = I1,
    ?assertEqual(C1, U1),
    ?assertEqual(U1 + 100000, E1),
    %% close to now (Redis and this VM share the machine clock)
    ?assert(abs(erlang:system_time(millisecond) - C1) < 5000),
    timer:sleep(20),
    ok = ?S:save_session(<<"c1">>, v2, #{ttl => 50}),
    {ok, #{created_at := C2, updated_at := U2, expires_at := E2, node := N2}} = ?S:session_info(<<"c1">>),
    ?assertEqual(C1, C2),
    ?assert(U2 >= U1 + 20),
    ?assertEqual(U2 + 50000, E2),
    ?assertEqual(node(), N2),
    %% the key's own TTL agrees with expires_at
    {ok, Pttl} = emqx_redis_storage:q([<<"PTTL">>, <<"emqx:sess:{c1}">>]),
    ?assert(Pttl > 45000 andalso Pttl =< 50000).

ttl_expiry_hides_and_reclaims(_Config) ->
    Short = [<<"short-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 200)],
    Long = [<<"long-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 20)],
    [ok = ?S:save_session(Id, short, #{ttl => 1}) || Id <- Short],
    [ok = ?S:save_session(Id, long, #{ttl => 3600}) || Id <- Long],
    ?assertEqual({ok, 220}, ?S:count_sessions()),
    timer:sleep(1100),
    ?assertEqual({error, not_found}, ?S:load_session(hd(Short))),
    %% counted until the next sweep (at most 10 s after the last one) ...
    ?assertEqual({ok, 220}, ?S:count_sessions()),
    %% ... which a count makes once the last sweep is older than that
    {ok, _} = emqx_redis_storage:q([<<"SET">>, <<"emqx:ssweep">>, <<"0">>]),
    ?assertEqual({ok, 20}, ?S:count_sessions()),
    {ok, Listed} = ?S:list_sessions(1000, 0),
    ?assertEqual(lists:sort(Long), lists:sort(Listed)),
    %% index entries of the expired sessions are gone from Redis itself
    IndexEntries = lists:sum([
        begin
            {ok, N} = emqx_redis_storage:q([<<"ZCARD">>, K]),
            N
        end
     || K <- keys(<<"emqx:sidx:*">>)
    ]),
    ?assertEqual(20, IndexEntries),
    ?assertEqual([], [K || K <- keys(<<"emqx:sess:*">>), binary:match(K, <<"short">>) =/= nomatch]).

%% count_sessions reads counters that the session scripts keep beside the
%% index (a total and one per slot); missing or garbage counters (an upgrade,
%% a restore, a hand edit) are rebuilt from the index.
counters_follow_the_index_and_are_rebuilt(_Config) ->
    Ids = [<<"cnt-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 300)],
    [ok = ?S:save_session(Id, x) || Id <- Ids],
    ?assertEqual({ok, 300}, ?S:count_sessions()),
    [ok = ?S:save_session(Id, y) || Id <- lists:sublist(Ids, 50)],
    [ok = ?S:delete_session(Id) || Id <- lists:sublist(Ids, 251, 50)],
    ok = ?S:delete_session(<<"cnt-none">>),
    ?assertEqual({ok, 250}, ?S:count_sessions()),
    {ok, <<"250">>} = emqx_redis_storage:q([<<"GET">>, <<"emqx:scount">>]),
    SlotSum = fun() ->
        lists:sum([
            begin
                {ok, N} = emqx_redis_storage:q([<<"GET">>, K]),
                binary_to_integer(N)
            end
         || K <- keys(<<"emqx:scnt:*">>)
        ])
    end,
    ?assertEqual(250, SlotSum()),
    %% the total gone or garbage: rebuilt at once, slot counters with it
    Rebuilt = fun(Break) ->
        Break(),
        ?assertEqual({ok, 250}, ?S:count_sessions()),
        ?assertEqual(250, SlotSum())
    end,
    Rebuilt(fun() -> {ok, 1} = emqx_redis_storage:q([<<"DEL">>, <<"emqx:scount">>]) end),
    Rebuilt(fun() -> {ok, _} = emqx_redis_storage:q([<<"SET">>, <<"emqx:scount">>, <<"garbage">>]) end),
    Rebuilt(fun() ->
        {ok, _} = emqx_redis_storage:q([<<"DEL">>, <<"emqx:scount">>, <<"emqx:ssweep">>]),
        {ok, _} = emqx_redis_storage:q([<<"HSET">>, <<"emqx:scount">>, <<"a">>, <<"b">>]),
        {ok, _} = emqx_redis_storage:q([<<"SADD">>, <<"emqx:ssweep">>, <<"x">>]),
        [{ok, _} = emqx_redis_storage:q([<<"EVAL">>, <<"redis.call('DEL', KEYS[1]) return redis.call('RPUSH', KEYS[1], 'x')">>, <<"1">>, K])
         || K <- lists:sublist(keys(<<"emqx:scnt:*">>), 3)]
    end),
    %% slot counters gone or wrong (a restore of keys read at different
    %% times): the next sweep sets them from the index
    Rebuilt(fun() ->
        [{ok, _} = emqx_redis_storage:q([<<"DEL">>, K]) || K <- lists:sublist(keys(<<"emqx:scnt:*">>), 20)],
        {ok, _} = emqx_redis_storage:q([<<"SET">>, <<"emqx:scount">>, <<"7">>]),
        {ok, _} = emqx_redis_storage:q([<<"DEL">>, <<"emqx:ssweep">>])
    end),
    [ok = ?S:delete_session(Id) || Id <- lists:sublist(Ids, 250)],
    ?assertEqual({ok, 0}, ?S:count_sessions()).

list_pages_over_ten_thousand_sessions(_Config) ->
    Ids = [<<"page-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 10000)],
    test_util:pmap(fun(Chunk) -> [ok = ?S:save_session(Id, Id) || Id <- Chunk] end, test_util:chunks(Ids, 100)),
    ?assertEqual({ok, 10000}, ?S:count_sessions()),
    PageSize = 333,
    Pages = collect_pages(PageSize, 0, []),
    ?assertEqual(31, length(Pages)),
    All = lists:append(Pages),
    ?assertEqual(10000, length(All)),
    ?assertEqual(lists:sort(Ids), lists:sort(All)),
    %% the same page twice is the same page
    ?assertEqual(?S:list_sessions(PageSize, 3330), ?S:list_sessions(PageSize, 3330)),
    ?assertEqual({ok, []}, ?S:list_sessions(100, 10000)),
    ?assertEqual({ok, []}, ?S:list_sessions(0, 0)),
    ?assertMatch({error, {invalid_page, _}}, ?S:list_sessions(-1, 0)),
    ?assertMatch({error, {invalid_page, _}}, ?S:list_sessions(10, foo)).

collect_pages(Size, Offset, Acc) ->
    case ?S:list_sessions(Size, Offset) of
        {ok, []} -> lists:reverse(Acc);
        {ok, Page} -> collect_pages(Size, Offset + Size, [Page | Acc])
    end.

concurrent_savers_and_loaders(_Config) ->
    Parent = self(),
    Pids = [
        spawn_link(fun() ->
            Own = <<"own-", (integer_to_binary(P))/binary>>,
            Results = lists:map(
                fun(I) ->
                    ok = ?S:save_session(Own, {P, I}),
                    {ok, Mine} = ?S:load_session(Own),
                    ok = ?S:save_session(<<"shared">>, {P, I, lists:seq(1, 50)}),
                    {ok, Shared} = ?S:load_session(<<"shared">>),
                    %% the shared session is always one whole write of somebody
                    Whole =
                        case Shared of
                            {_, _, L} -> L =:= lists:seq(1, 50);
                            _ -> false
                        end,
                    Mine =:= {P, I} andalso Whole
                end,
                lists:seq(1, 20)
            ),
            Parent ! {self(), lists:all(fun(X) -> X end, Results)}
        end)
     || P <- lists:seq(1, 100)
    ],
    [
        receive
            {Pid, Ok} -> ?assert(Ok)
        after 60000 -> ct:fail(timeout)
        end
     || Pid <- Pids
    ],
    ?assertEqual({ok, 101}, ?S:count_sessions()).

awkward_client_ids(_Config) ->
    Ids = [
        <<"{">>, <<"}">>, <<"{}">>, <<"}{">>, <<"a}b{c">>, <<"%7B">>, <<"%">>, <<":">>,
        <<"with space">>, <<"客户端-1"/utf8>>, <<0>>, <<255, 254>>, <<"*">>, <<"?[]">>,
        binary:copy(<<"x">>, 65535)
    ],
    [ok = ?S:save_session(Id, {value, erlang:md5(Id)}) || Id <- Ids],
    [?assertEqual({ok, {value, erlang:md5(Id)}}, ?S:load_session(Id)) || Id <- Ids],
    ?assertEqual({ok, length(Ids)}, ?S:count_sessions()),
    {ok, Listed} = ?S:list_sessions(100, 0),
    ?assertEqual(lists:sort(Ids), lists:sort(Listed)),
    [ok = ?R:register_channel(Id, node()) || Id <- Ids],
    [?assertEqual({ok, node()}, ?R:lookup_channel(Id)) || Id <- Ids],
    [ok = ?S:delete_session(Id) || Id <- Ids],
    ?assertEqual({ok, 0}, ?S:count_sessions()).

invalid_input_is_refused(_Config) ->
    Bad = [<<>>, binary:copy(<<"x">>, 65536), atom_id, "list-id", 123, {<<"t">>}],
    lists:foreach(
        fun(Id) ->
            ?assertEqual({error, {invalid_client_id, Id}}, ?S:save_session(Id, x)),
            ?assertEqual({error, {invalid_client_id, Id}}, ?S:load_session(Id)),
            ?assertEqual({error, {invalid_client_id, Id}}, ?S:delete_session(Id)),
            ?assertEqual({error, {invalid_client_id, Id}}, ?S:session_info(Id)),
            ?assertEqual({error, {invalid_client_id, Id}}, ?S:acquire_lease(Id, node(), 1000)),
            ?assertEqual({error, {invalid_client_id, Id}}, ?R:register_channel(Id, node())),
            ?assertEqual({error, {invalid_client_id, Id}}, ?R:lookup_channel(Id))
        end,
        Bad
    ),
    ?assertMatch({error, {invalid_option, {ttl, 0}}}, ?S:save_session(<<"c">>, x, #{ttl => 0})),
    ?assertMatch({error, {invalid_option, {node, "n"}}}, ?S:save_session(<<"c">>, x, #{node => "n"})),
    ?assertMatch({error, {invalid_option, {fence, a}}}, ?S:save_session(<<"c">>, x, #{fence => a})),
    ?assertMatch({error, {invalid_option, colour}}, ?S:save_session(<<"c">>, x, #{colour => red})),
    ?assertMatch({error, {invalid_option, _}}, ?S:save_session(<<"c">>, x, not_a_map)),
    ?assertMatch({error, {invalid_lease_ms, 0}}, ?S:acquire_lease(<<"c">>, node(), 0)),
    ?assertMatch({error, {invalid_owner, _}}, ?S:acquire_lease(<<"c">>, {no, owner}, 1000)),
    ?assertMatch({error, {invalid_fence, _}}, ?S:renew_lease(<<"c">>, "1", 1000)),
    ?assertMatch({error, {invalid_node, _}}, ?R:register_channel(<<"c">>, "node")),
    ?assertMatch({error, {invalid_node, _}}, ?R:cleanup_node(<<"node">>)),
    %% nothing was written by any of it
    ?assertEqual({ok, []}, emqx_redis_storage:q([<<"KEYS">>, <<"*">>])).

too_large_session_is_refused(_Config) ->
    Big = binary:copy(<<"x">>, 70000),
    {error, {too_large, #{max := 65536, size := Size}}} = ?S:save_session(<<"big">>, Big),
    ?assert(Size > 70000),
    ?assertEqual({error, not_found}, ?S:load_session(<<"big">>)),
    ok = ?S:save_session(<<"big">>, binary:copy(<<"x">>, 60000)).

lease_contention_and_fencing(_Config) ->
    Id = <<"taken-over">>,
    {ok, F1} = ?S:acquire_lease(Id, 'emqx@a', 10000),
    ?assertEqual({error, {held_by, 'emqx@a'}}, ?S:acquire_lease(Id, 'emqx@b', 10000)),
    ?assertEqual({error, {held_by, <<"a binary owner">>}}, begin
        {ok, Fo} = ?S:acquire_lease(<<"other">>, <<"a binary owner">>, 10000),
        true = is_integer(Fo),
        ?S:acquire_lease(<<"other">>, 'emqx@b', 10000)
    end),
    ok = ?S:save_session(Id, from_a, #{fence => F1}),
    ok = ?S:renew_lease(Id, F1, 10000),
    ok = ?S:release_lease(Id, F1),
    {ok, F2} = ?S:acquire_lease(Id, 'emqx@b', 10000),
    ?assert(F2 > F1),
    %% a's late write is refused and changes nothing
    ?assertEqual({error, stale_fence}, ?S:save_session(Id, late_from_a, #{fence => F1})),
    ?assertEqual({ok, from_a}, ?S:load_session(Id)),
    ok = ?S:save_session(Id, from_b, #{fence => F2}),
    ?assertEqual({ok, from_b}, ?S:load_session(Id)),
    ?assertEqual({error, stale_fence}, ?S:save_session(Id, late_from_a, #{fence => F1})),
    ?assertEqual({ok, from_b}, ?S:load_session(Id)),
    %% a renews or releases nothing any more
    ?assertEqual({error, {held_by, 'emqx@b'}}, ?S:renew_lease(Id, F1, 10000)),
    ?assertEqual({error, {held_by, 'emqx@b'}}, ?S:release_lease(Id, F1)),
    %% the same owner may take it again, with a new fence
    {ok, F3} = ?S:acquire_lease(Id, 'emqx@b', 10000),
    ?assert(F3 > F2),
    ok = ?S:release_lease(Id, F3),
    ?assertEqual({error, not_held}, ?S:renew_lease(Id, F3, 1000)),
    ?assertEqual(ok, ?S:release_lease(Id, F3)).

lease_expiry_keeps_fences_increasing(_Config) ->
    Id = <<"expiring">>,
    {ok, F1} = ?S:acquire_lease(Id, 'emqx@a', 100),
    timer:sleep(200),
    %% the lease expired: b takes it without a's release
    {ok, F2} = ?S:acquire_lease(Id, 'emqx@b', 100),
    ?assert(F2 > F1),
    ?assertEqual({error, stale_fence}, ?S:save_session(Id, late, #{fence => F1})),
    %% The fence key lives as long as the session (persistence.session_ttl);
    %% once it is gone, a new fence is still higher: fences never fall below
    %% Redis's clock in milliseconds, and the clock has moved on meanwhile.
    {ok, _} = emqx_redis_storage:q([<<"DEL">>, <<"emqx:fence:{expiring}">>, <<"emqx:lease:{expiring}">>]),
    timer:sleep(2),
    {ok, F3} = ?S:acquire_lease(Id, 'emqx@c', 100),
    ?assert(F3 > F2).

many_processes_race_for_one_lease(_Config) ->
    Parent = self(),
    [
        spawn_link(fun() ->
            Owner = <<"owner-", (integer_to_binary(I))/binary>>,
            Parent ! {lease, ?S:acquire_lease(<<"contended">>, Owner, 30000)}
        end)
     || I <- lists:seq(1, 50)
    ],
    Results = [
        receive
            {lease, R} -> R
        after 10000 -> ct:fail(timeout)
        end
     || _ <- lists:seq(1, 50)
    ],
    Won = [F || {ok, F} <- Results],
    Lost = [O || {error, {held_by, O}} <- Results],
    ?assertEqual(1, length(Won)),
    ?assertEqual(49, length(Lost)),
    ?assertEqual(1, length(lists:usort(Lost))).

registry_register_lookup_unregister(_Config) ->
    ?assertEqual({error, not_found}, ?R:lookup_channel(<<"c1">>)),
    ok = ?R:register_channel(<<"c1">>, 'emqx@a'),
    ?assertEqual({ok, 'emqx@a'}, ?R:lookup_channel(<<"c1">>)),
    %% the client moved to b; a's late unregister must not remove b's entry
    ok = ?R:register_channel(<<"c1">>, 'emqx@b'),
    ok = ?R:unregister_channel(<<"c1">>, 'emqx@a'),
    ?assertEqual({ok, 'emqx@b'}, ?R:lookup_channel(<<"c1">>)),
    ok = ?R:unregister_channel(<<"c1">>, 'emqx@b'),
    ?assertEqual({error, not_found}, ?R:lookup_channel(<<"c1">>)),
    ok = ?R:unregister_channel(<<"c1">>, 'emqx@b').

registry_cleanup_node(_Config) ->
    A = [<<"a-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 1000)],
    B = [<<"b-", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 500)],
    test_util:pmap(fun(Ids) -> [ok = ?R:register_channel(Id, 'emqx@dead') || Id <- Ids] end, test_util:chunks(A, 100)),
    test_util:pmap(fun(Ids) -> [ok = ?R:register_channel(Id, 'emqx@alive') || Id <- Ids] end, test_util:chunks(B, 100)),
    ?assertEqual({ok, 1000}, ?R:cleanup_node('emqx@dead')),
    [?assertEqual({error, not_found}, ?R:lookup_channel(Id)) || Id <- A],
    [?assertEqual({ok, 'emqx@alive'}, ?R:lookup_channel(Id)) || Id <- B],
    ?assertEqual({ok, 0}, ?R:cleanup_node('emqx@dead')).

registry_creates_node_atoms_only_within_bound(_Config) ->
    %% entries written by other nodes, with names this VM has never seen
    Unique = integer_to_binary(erlang:unique_integer([positive])),
    Ghost = <<"ghost", Unique/binary, "@nowhere">>,
    {ok, 0} = emqx_redis_storage:q([<<"HSET">>, slot_key(<<"ghosted">>), <<"ghosted">>, Ghost]),
    {ok, Node} = ?R:lookup_channel(<<"ghosted">>),
    ?assertEqual(Ghost, atom_to_binary(Node)),
    %% not shaped like a node name: no atom
    Garbage = <<"garbage", Unique/binary>>,
    {ok, 0} = emqx_redis_storage:q([<<"HSET">>, slot_key(<<"junk">>), <<"junk">>, Garbage]),
    ?assertMatch({error, {corrupt, #{kind := channel}}}, ?R:lookup_channel(<<"junk">>)),
    ?assertError(badarg, binary_to_existing_atom(Garbage)).

redis_paused_gives_timeout_within_deadline(Config) ->
    Redis = ?config(redis, Config),
    ok = redis_test_server:pause(Redis),
    try
        {Micros, Result} = timer:tc(fun() -> ?S:save_session(<<"c">>, x) end),
        ?assertEqual({error, timeout}, Result),
        ?assert(Micros < 3000000),
        ?assertEqual({error, timeout}, ?S:load_session(<<"c">>))
    after
        redis_test_server:resume(Redis)
    end,
    %% the write that timed out may or may not have happened; the store works
    ok = test_util:wait_ok(fun() -> ?S:save_session(<<"c">>, y) end, 5000),
    ?assertEqual({ok, y}, ?S:load_session(<<"c">>)).

%%--------------------------------------------------------------------

%% The registry hash of the slot of a client id, found through Redis itself.
slot_key(ClientId) ->
    ok = ?R:register_channel(ClientId, node()),
    [Key] = [K || K <- keys(<<"emqx:chan:*">>), {ok, 1} =:= emqx_redis_storage:q([<<"HEXISTS">>, K, ClientId])],
    Key.

keys(Pattern) ->
    {ok, Keys} = emqx_redis_storage:q([<<"KEYS">>, Pattern]),
    Keys.
