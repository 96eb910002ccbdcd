%% The routing table against a real redis-server: every function, two
%% clients acting as two nodes, resynchronisation after Redis restarts and
%% dropped pub/sub connections, and the Lua mode against the local index.
-module(emqx_redis_router_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include_lib("proper/include/proper.hrl").

-define(R, emqx_redis_router).

all() ->
    [
        add_match_delete,
        shared_subscription_dests,
        invalid_input_is_refused,
        two_nodes_see_each_others_routes,
        cleanup_node_removes_every_route_of_a_node,
        restart_of_redis_resynchronises,
        dropped_pubsub_connection_resynchronises,
        forged_gap_triggers_full_reload,
        lua_mode_agrees_with_local_index,
        long_filters_are_added_in_bounded_requests,
        {group, scale}
    ].

groups() ->
    [{scale, [], [hundred_thousand_wildcards_and_a_million_exact_routes]}].

init_per_suite(Config) ->
    Redis = redis_test_server:start(),
    Cfg = #{redis => #{servers => redis_test_server:address(Redis)}, route_sync_interval => 500},
    ok = emqx_redis_storage:start(Cfg),
    [{redis, Redis}, {cfg, Cfg} | Config].

end_per_suite(Config) ->
    emqx_redis_storage:stop(),
    redis_test_server:stop(?config(redis, Config)).

init_per_testcase(_Case, Config) ->
    {ok, <<"OK">>} = emqx_redis_storage:q([<<"FLUSHALL">>]),
    {ok, Default} = emqx_redis_storage_client:default(),
    %% FLUSHALL publishes nothing: the periodic check notices and reloads
    ok = test_util:wait_until(fun() -> ?R:match_routes(<<"anything">>) =:= {ok, []} andalso ?R:index_ready(Default) end, 10000),
    [{default, Default} | Config].

end_per_testcase(_Case, _Config) ->
    ok.

%% Another client, standing for another EMQX node.
other_node(Config, Extra) ->
    {ok, Client} = emqx_redis_storage:connect(maps:merge(?config(cfg, Config), Extra)),
    ok = test_util:wait_until(fun() -> ?R:index_ready(Client) orelse maps:get(route_index, Extra, local) =:= redis end, 10000),
    Client.

%%--------------------------------------------------------------------

%% 200 filters of 60 KB each (12 MB) take more than one request (each
%% at most 8 MiB, which the NIF copies on the calling scheduler); all land.
long_filters_are_added_in_bounded_requests(_Config) ->
    Long = binary:copy(<<"x">>, 60000),
    Routes = [{<<"long/", (integer_to_binary(I))/binary, "/", Long/binary, "/+">>, 'long@h'} || I <- lists:seq(1, 200)],
    ?assertEqual({ok, 200}, ?R:add_routes(Routes)),
    ?assertEqual({ok, ['long@h']}, ?R:match_routes(<<"long/7/", Long/binary, "/x">>)),
    {ok, Topics} = ?R:topics(),
    ?assertEqual(200, length(Topics)).

add_match_delete(_Config) ->
    Routes = [
        {<<"a/b/c">>, 'n1@h'},
        {<<"a/+/c">>, 'n2@h'},
        {<<"a/#">>, 'n3@h'},
        {<<"#">>, 'n4@h'},
        {<<"+/+/+">>, 'n5@h'},
        {<<"$SYS/#">>, 'n6@h'},
        {<<"a/b/c">>, 'n2@h'}
    ],
    [ok = ?R:add_route(F, D) || {F, D} <- Routes],
    %% idempotent
    ok = ?R:add_route(<<"a/b/c">>, 'n1@h'),
    ?assertEqual({ok, ['n1@h', 'n2@h']}, sorted(?R:lookup_routes(<<"a/b/c">>))),
    ?assertEqual({ok, ['n1@h', 'n2@h', 'n3@h', 'n4@h', 'n5@h']}, sorted(?R:match_routes(<<"a/b/c">>))),
    ?assertEqual({ok, ['n3@h', 'n4@h']}, sorted(?R:match_routes(<<"a">>))),
    ?assertEqual({ok, ['n6@h']}, sorted(?R:match_routes(<<"$SYS/x">>))),
    ?assertEqual({ok, ['n4@h']}, sorted(?R:match_routes(<<"x">>))),
    ?assert(?R:has_route(<<"a/#">>, 'n3@h')),
    ?assertNot(?R:has_route(<<"a/#">>, 'n4@h')),
    ?assertEqual({ok, lists:usort([F || {F, _} <- Routes])}, ?R:topics()),
    ok = ?R:delete_route(<<"a/b/c">>, 'n1@h'),
    ok = ?R:delete_route(<<"a/b/c">>, 'n1@h'),
    ok = ?R:delete_route(<<"#">>, 'n4@h'),
    ?assertEqual({ok, ['n2@h', 'n3@h', 'n5@h']}, sorted(?R:match_routes(<<"a/b/c">>))),
    ?assertEqual({ok, []}, ?R:match_routes(<<"x">>)),
    [ok = ?R:delete_route(F, D) || {F, D} <- Routes],
    ?assertEqual({ok, []}, ?R:topics()),
    ?assertEqual({ok, []}, ?R:match_routes(<<"a/b/c">>)),
    %% nothing left behind in Redis: no filters, no trie prefixes
    {ok, Keys} = emqx_redis_storage:q([<<"KEYS">>, <<"emqx:rtrie:*">>]),
    ?assertEqual([], Keys).

shared_subscription_dests(_Config) ->
    ok = ?R:add_route(<<"t/+">>, {<<"g1">>, 'n1@h'}),
    ok = ?R:add_route(<<"t/+">>, {<<"g1">>, 'n2@h'}),
    ok = ?R:add_route(<<"t/+">>, 'n1@h'),
    ok = ?R:add_route(<<"t/#">>, {<<"g1">>, 'n1@h'}),
    ?assertEqual({ok, ['n1@h', {<<"g1">>, 'n1@h'}, {<<"g1">>, 'n2@h'}]}, sorted(?R:match_routes(<<"t/x">>))),
    ?assert(?R:has_route(<<"t/+">>, {<<"g1">>, 'n2@h'})),
    ok = ?R:delete_route(<<"t/+">>, {<<"g1">>, 'n2@h'}),
    ?assertEqual({ok, ['n1@h', {<<"g1">>, 'n1@h'}]}, sorted(?R:match_routes(<<"t/x">>))).

invalid_input_is_refused(_Config) ->
    ?assertEqual({error, {invalid_topic, misplaced_multi_level_wildcard}}, ?R:add_route(<<"a/#/b">>, node())),
    ?assertEqual({error, {invalid_topic, empty}}, ?R:add_route(<<>>, node())),
    ?assertEqual({error, {invalid_topic, not_a_binary}}, ?R:add_route("a/b", node())),
    ?assertEqual({error, {invalid_topic, wildcard_in_name}}, ?R:match_routes(<<"a/+">>)),
    ?assertEqual({error, {invalid_topic, contains_nul}}, ?R:match_routes(<<"a", 0>>)),
    ?assertEqual({error, {invalid_topic, "a"}}, ?R:match_routes("a")),
    ?assertEqual({error, {invalid_topic, misplaced_single_level_wildcard}}, ?R:lookup_routes(<<"a+">>)),
    ?assertEqual({error, {invalid_dest, "node"}}, ?R:add_route(<<"a">>, "node")),
    ?assertEqual({error, {invalid_dest, {<<"g/x">>, node()}}}, ?R:add_route(<<"a">>, {<<"g/x">>, node()})),
    ?assertEqual({error, {invalid_dest, {<<>>, node()}}}, ?R:add_route(<<"a">>, {<<>>, node()})),
    ?assertEqual({error, {invalid_dest, {<<"g">>, "n"}}}, ?R:delete_route(<<"a">>, {<<"g">>, "n"})),
    ?assertEqual({error, {invalid_node, "n"}}, ?R:cleanup_node("n")),
    ?assertEqual({ok, []}, ?R:topics()).

two_nodes_see_each_others_routes(Config) ->
    A = ?config(default, Config),
    B = other_node(Config, #{}),
    ok = ?R:add_route(A, <<"dev/+/temp">>, 'a@h'),
    ok = test_util:wait_until(fun() -> ?R:match_routes(B, <<"dev/1/temp">>) =:= {ok, ['a@h']} end, 10000),
    ok = ?R:add_route(B, <<"dev/#">>, 'b@h'),
    ok = test_util:wait_until(fun() -> sorted(?R:match_routes(A, <<"dev/1/temp">>)) =:= {ok, ['a@h', 'b@h']} end, 10000),
    ok = ?R:delete_route(A, <<"dev/+/temp">>, 'a@h'),
    ok = test_util:wait_until(fun() -> ?R:match_routes(B, <<"dev/1/temp">>) =:= {ok, ['b@h']} end, 10000),
    %% a node's own change is visible to itself at once
    ok = ?R:add_route(B, <<"own">>, 'b@h'),
    ?assertEqual({ok, ['b@h']}, ?R:match_routes(B, <<"own">>)),
    %% the other node dies; a survivor removes its routes everywhere
    ?assertEqual({ok, 2}, ?R:cleanup_node(A, 'b@h')),
    ok = test_util:wait_until(fun() -> ?R:match_routes(B, <<"dev/1/temp">>) =:= {ok, []} end, 10000),
    ?assertEqual({ok, []}, ?R:match_routes(A, <<"own">>)).

cleanup_node_removes_every_route_of_a_node(Config) ->
    B = other_node(Config, #{}),
    Filters = [<<"c/", (integer_to_binary(I))/binary, "/+">> || I <- lists:seq(1, 300)],
    [ok = ?R:add_route(F, 'dead@h') || F <- Filters],
    [ok = ?R:add_route(F, {<<"grp">>, 'dead@h'}) || F <- lists:sublist(Filters, 50)],
    [ok = ?R:add_route(F, 'alive@h') || F <- lists:sublist(Filters, 10)],
    ok = test_util:wait_until(fun() -> sorted(?R:match_routes(B, <<"c/1/x">>)) =:= {ok, ['alive@h', 'dead@h', {<<"grp">>, 'dead@h'}]} end, 10000),
    ?assertEqual({ok, 350}, ?R:cleanup_node('dead@h')),
    ?assertEqual({ok, ['alive@h']}, ?R:match_routes(<<"c/1/x">>)),
    ?assertEqual({ok, []}, ?R:match_routes(<<"c/300/x">>)),
    ok = test_util:wait_until(fun() -> ?R:match_routes(B, <<"c/1/x">>) =:= {ok, ['alive@h']} end, 10000),
    ?assertEqual({ok, []}, ?R:match_routes(B, <<"c/300/x">>)),
    {ok, Topics} = ?R:topics(),
    ?assertEqual(10, length(Topics)),
    ?assertEqual({ok, 0}, ?R:cleanup_node('dead@h')).

restart_of_redis_resynchronises(Config) ->
    Redis = redis_test_server:start(),
    try
        Cfg = #{redis => #{servers => redis_test_server:address(Redis), connect_timeout => 500}, route_sync_interval => 300},
        {ok, A} = emqx_redis_storage:connect(Cfg),
        {ok, B} = emqx_redis_storage:connect(Cfg),
        ok = test_util:wait_until(fun() -> ?R:index_ready(A) andalso ?R:index_ready(B) end, 10000),
        ok = ?R:add_route(A, <<"before/restart">>, 'a@h'),
        ok = test_util:wait_until(fun() -> ?R:match_routes(B, <<"before/restart">>) =:= {ok, ['a@h']} end, 10000),
        %% Redis restarts empty: what B knew is gone from Redis and must go from B
        ok = redis_test_server:restart(Redis),
        ok = test_util:wait_until(fun() -> ?R:match_routes(B, <<"before/restart">>) =:= {ok, []} end, 10000),
        ok = test_util:wait_until(fun() -> ?R:add_route(A, <<"after/restart">>, 'a@h') =:= ok end, 10000),
        ok = test_util:wait_until(fun() -> ?R:match_routes(B, <<"after/restart">>) =:= {ok, ['a@h']} end, 10000),
        ok = test_util:wait_until(fun() -> ?R:index_ready(B) end, 10000)
    after
        redis_test_server:stop(Redis)
    end,
    _ = Config.

dropped_pubsub_connection_resynchronises(Config) ->
    A = ?config(default, Config),
    B = other_node(Config, #{}),
    ok = ?R:add_route(A, <<"x/1">>, 'a@h'),
    ok = test_util:wait_until(fun() -> ?R:match_routes(B, <<"x/1">>) =:= {ok, ['a@h']} end, 10000),
    %% Redis drops every subscriber; changes made meanwhile carry no event to B
    Killed = redis_test_server:cmd(?config(redis, Config), ["CLIENT", "KILL", "TYPE", "pubsub"]),
    ?assertNotEqual("0", Killed),
    ok = ?R:add_route(A, <<"x/2">>, 'a@h'),
    ok = ?R:delete_route(A, <<"x/1">>, 'a@h'),
    ok = test_util:wait_until(fun() -> ?R:match_routes(B, <<"x/2">>) =:= {ok, ['a@h']} end, 10000),
    ok = test_util:wait_until(fun() -> ?R:match_routes(B, <<"x/1">>) =:= {ok, []} end, 10000),
    ok = test_util:wait_until(fun() -> ?R:index_ready(B) end, 10000).

forged_gap_triggers_full_reload(Config) ->
    B = other_node(Config, #{}),
    ok = ?R:add_route(<<"real">>, 'a@h'),
    ok = test_util:wait_until(fun() -> ?R:match_routes(B, <<"real">>) =:= {ok, ['a@h']} end, 10000),
    %% an event far ahead of every shard's version: B must not apply it,
    %% must reload, and must then agree with Redis again
    Forged = iolist_to_binary(["0 999999 +forged", 0, "evil@h"]),
    {ok, _} = emqx_redis_storage:q([<<"PUBLISH">>, <<"emqx:rt:events">>, Forged]),
    ok = test_util:wait_until(fun() -> ?R:index_ready(B) end, 10000),
    ?assertEqual({ok, []}, ?R:match_routes(B, <<"forged">>)),
    ?assertEqual({ok, ['a@h']}, ?R:match_routes(B, <<"real">>)),
    ok = ?R:add_route(<<"later">>, 'a@h'),
    ok = test_util:wait_until(fun() -> ?R:match_routes(B, <<"later">>) =:= {ok, ['a@h']} end, 10000).

%% Property: on the same random route set, matching inside Redis with Lua
%% gives what the local index gives, and both agree with the topic rules.
lua_mode_agrees_with_local_index(Config) ->
    Local = ?config(default, Config),
    Lua = other_node(Config, #{route_index => redis}),
    Prop = ?FORALL(
        {Routes, Topics},
        {list({filter(), dest()}), non_empty(list(topic_name()))},
        %% PropEr 1.2 (Debian) cannot report exceptions on OTP 25: none may escape
        try
            {ok, _} = ?R:add_routes(Routes),
            Agree = lists:all(fun(T) -> agree(Local, Lua, Routes, T) end, Topics),
            [ok = ?R:delete_route(F, D) || {F, D} <- Routes],
            Agree andalso ?R:topics() =:= {ok, []}
        catch
            C:E:St ->
                ct:pal("~p:~p ~p", [C, E, St]),
                false
        end
    ),
    ?assert(proper:quickcheck(Prop, [{numtests, 200}, {to_file, user}])).

agree(Local, Lua, Routes, Topic) ->
    Expected = lists:usort([D || {F, D} <- Routes, emqx_redis_topic:match(Topic, F)]),
    {ok, FromIndex} = ?R:match_routes(Local, Topic),
    {ok, FromLua} = ?R:match_routes(Lua, Topic),
    Agree = lists:sort(FromIndex) =:= Expected andalso lists:sort(FromLua) =:= Expected,
    Agree orelse ct:pal("topic ~p~nexpected ~p~nindex ~p~nlua ~p~nroutes ~p", [Topic, Expected, FromIndex, FromLua, Routes]),
    Agree.

level() -> oneof([<<>>, <<"a">>, <<"b">>, <<"$s">>, <<"c d">>]).
filter_level() -> oneof([level(), <<"+">>]).
%% Never empty: a lone empty level becomes "/" (two empty levels).
filter() ->
    ?LET(
        {Levels, Hash},
        {non_empty(list(filter_level())), boolean()},
        nonempty(iolist_to_binary(lists:join(<<"/">>, Levels ++ [<<"#">> || Hash])))
    ).
topic_name() -> ?LET(Levels, non_empty(list(level())), nonempty(iolist_to_binary(lists:join(<<"/">>, Levels)))).
nonempty(<<>>) -> <<"/">>;
nonempty(Topic) -> Topic.
dest() -> oneof(['n1@h', 'n2@h', {<<"g">>, 'n1@h'}]).

%% Scale: routes loaded in bulk through add_route from many processes; the
%% index of a fresh client loads them all and matches by topic levels.
hundred_thousand_wildcards_and_a_million_exact_routes(Config) ->
    Wild = [<<"w/", (integer_to_binary(I))/binary, "/+/#">> || I <- lists:seq(1, 100000)],
    Exact = [<<"e/", (integer_to_binary(I))/binary, "/x/y">> || I <- lists:seq(1, 1000000)],
    {AddUs, {ok, 1100000}} = timer:tc(fun() -> ?R:add_routes([{F, 'scale@h'} || F <- Wild ++ Exact]) end),
    ct:log("added 1,100,000 routes in ~.1f s", [AddUs / 1.0e6]),
    {LoadUs, B} = timer:tc(fun() -> other_node(Config, #{}) end),
    ct:log("a new client loaded them in ~.1f s", [LoadUs / 1.0e6]),
    ?assertEqual({ok, ['scale@h']}, ?R:match_routes(B, <<"w/77777/a/b/c">>)),
    ?assertEqual({ok, ['scale@h']}, ?R:match_routes(B, <<"e/999999/x/y">>)),
    ?assertEqual({ok, []}, ?R:match_routes(B, <<"e/999999/x">>)),
    ?assertEqual({ok, []}, ?R:match_routes(B, <<"w/100001/a">>)),
    N = 100000,
    {MatchUs, _} = timer:tc(fun() ->
        [{ok, [_]} = ?R:match_routes(B, <<"w/", (integer_to_binary(I))/binary, "/a/b">>) || I <- lists:seq(1, N)]
    end),
    ct:log("~p matches in ~.2f s: ~.2f us each", [N, MatchUs / 1.0e6, MatchUs / N]).

%%--------------------------------------------------------------------

sorted({ok, L}) -> {ok, lists:sort(L)};
sorted(Other) -> Other.
