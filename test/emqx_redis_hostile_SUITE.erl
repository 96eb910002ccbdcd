%% Hostile data: what Redis holds at our keys is not what we wrote (a value
%% of the wrong type, numbers that are no integers or overflow, node names
%% that are none, truncated or foreign bodies, dests without separators).
%% Every read must answer `{error, {corrupt, #{kind := Kind}}}' naming the
%% key's kind, never garbage as data; every write must either succeed or
%% answer an error and change nothing (every key under the case's prefix is
%% compared before and after, by DUMP and PTTL).
%%
%% Each check runs on a client of its own, with a fresh key prefix, set up
%% through the API and then corrupted with raw commands.
-module(emqx_redis_hostile_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(S, emqx_redis_session).
-define(G, emqx_redis_registry).
-define(M, emqx_redis_message).
-define(R, emqx_redis_router).
-define(C, <<"c">>).
-define(NODE, 'n@h').
-define(OVERFLOW, <<"99999999999999999999999">>).

all() ->
    [
        sessions,
        session_index,
        leases,
        fences,
        registry,
        queue_keys,
        message_bodies,
        routes,
        route_tries,
        local_index_never_loads_corrupt_routes,
        garbage_route_events_make_the_index_reload,
        queue_counts_agree_with_loads,
        a_half_queued_message_is_stored_again,
        a_corrupt_queue_can_be_deleted,
        session_listing_agrees_with_loads
    ].

init_per_suite(Config) ->
    Redis = redis_test_server:start(),
    [{redis, Redis} | Config].

end_per_suite(Config) ->
    redis_test_server:stop(?config(redis, Config)).

%%--------------------------------------------------------------------
%% The calls, by name. Each takes the case's client.

calls() ->
    #{
        load_session => fun(Cl) -> ?S:load_session(Cl, ?C) end,
        session_info => fun(Cl) -> ?S:session_info(Cl, ?C) end,
        list_sessions => fun(Cl) -> ?S:list_sessions(Cl, 10, 0) end,
        count_sessions => fun(Cl) -> ?S:count_sessions(Cl) end,
        save_session => fun(Cl) -> ?S:save_session(Cl, ?C, new, #{}) end,
        save_fenced => fun(Cl) -> ?S:save_session(Cl, ?C, new, #{fence => 1 bsl 52}) end,
        delete_session => fun(Cl) -> ?S:delete_session(Cl, ?C) end,
        acquire_lease => fun(Cl) -> ?S:acquire_lease(Cl, ?C, 'other@h', 1000) end,
        renew_lease => fun(Cl) -> ?S:renew_lease(Cl, ?C, 1, 1000) end,
        release_lease => fun(Cl) -> ?S:release_lease(Cl, ?C, 1) end,
        register_channel => fun(Cl) -> ?G:register_channel(Cl, ?C, 'other@h') end,
        lookup_channel => fun(Cl) -> ?G:lookup_channel(Cl, ?C) end,
        unregister_channel => fun(Cl) -> ?G:unregister_channel(Cl, ?C, ?NODE) end,
        cleanup_channels => fun(Cl) -> ?G:cleanup_node(Cl, ?NODE) end,
        store_message => fun(Cl) -> ?M:store_message(Cl, ?C, #{id => <<"m3">>}) end,
        get_messages => fun(Cl) -> ?M:get_messages(Cl, ?C, 0, 10) end,
        ack_message => fun(Cl) -> ?M:ack_message(Cl, ?C, <<"m1">>) end,
        delete_messages => fun(Cl) -> ?M:delete_messages(Cl, ?C) end,
        count_messages => fun(Cl) -> ?M:count_messages(Cl, ?C) end,
        queue_info => fun(Cl) -> ?M:queue_info(Cl, ?C) end,
        add_route => fun(Cl) -> ?R:add_route(Cl, <<"t/+">>, 'n3@h') end,
        add_deep_route => fun(Cl) -> ?R:add_route(Cl, <<"t/+/y">>, 'n3@h') end,
        add_exact_route => fun(Cl) -> ?R:add_route(Cl, <<"t/z">>, 'n3@h') end,
        delete_route => fun(Cl) -> ?R:delete_route(Cl, <<"t/+">>, ?NODE) end,
        match_routes => fun(Cl) -> ?R:match_routes(Cl, <<"t/x">>) end,
        lookup_routes => fun(Cl) -> ?R:lookup_routes(Cl, <<"t/+">>) end,
        topics => fun(Cl) -> ?R:topics(Cl) end,
        cleanup_routes => fun(Cl) -> ?R:cleanup_node(Cl, ?NODE) end
    }.

%%--------------------------------------------------------------------
%% Cases: {Corruption, [{Call, Expected}]}. Expected is a kind (the call
%% must answer corrupt data of that kind and change nothing), `ok' (the
%% corrupt part does not concern the call, which succeeds) or `{error, Tag}'
%% (the answer the call gives without corruption, changing nothing).

sessions(Config) ->
    Sess = {client, <<"sess">>},
    ReadsFail = [{load_session, session}, {session_info, session}],
    WritesFail = [{save_session, session}, {save_fenced, session}, {delete_session, ok}],
    run(Config, fun setup_session/1, [
        {[{wrong, Sess, T}], ReadsFail ++ WritesFail ++ [{count_sessions, ok}]}
     || T <- [string, list, set, zset]
    ]),
    BadTimes = [<<"abc">>, ?OVERFLOW, <<"-5">>, <<"1.5">>, <<>>],
    run(Config, fun setup_session/1, [
        {[{hset, Sess, <<"created_at">>, V}], [{session_info, session}, {load_session, ok} | WritesFail]}
     || V <- BadTimes
    ]),
    run(Config, fun setup_session/1, [
        {[{hset, Sess, F, <<"abc">>}], [{session_info, session}, {load_session, ok}, {save_session, ok}]}
     || F <- [<<"updated_at">>, <<"expires_at">>]
    ]),
    %% a session hash missing a field we always write
    run(Config, fun setup_session/1, [
        {[{hdel, Sess, F}], [{session_info, session}]}
     || F <- [<<"created_at">>, <<"node">>]
    ]),
    run(Config, fun setup_session/1, [{[{hdel, Sess, <<"data">>}], [{load_session, session}, {session_info, ok}]}]),
    run(Config, fun setup_session/1, [
        {[{hset, Sess, <<"node">>, N}], [{session_info, session}, {load_session, ok}, {save_session, ok}]}
     || N <- bad_node_names()
    ]),
    Term = term_to_binary(session),
    run(Config, fun setup_session/1, [
        {[{hset, Sess, <<"data">>, D}], [{load_session, session}, {session_info, ok}, {save_session, ok}]}
     || D <- [<<>>, <<"garbage">>, binary:part(Term, 0, byte_size(Term) - 1), <<Term/binary, "tail">>]
    ]).

session_index(Config) ->
    run(Config, fun setup_session/1, [
        {[{wrong, {slot, <<"sidx">>}, T}], [
            {count_sessions, session_index},
            {list_sessions, session_index},
            {save_session, session_index},
            {delete_session, session_index},
            {load_session, ok},
            {session_info, ok}
        ]}
     || T <- [string, hash, list]
    ]),
    %% an id in the index of a slot it does not hash to (its own save makes
    %% a second index key)
    Cl = client(Config),
    setup_session(Cl),
    Index = key(Cl, {slot, <<"sidx">>}),
    ok = ?S:save_session(Cl, <<"elsewhere">>, x, #{}),
    {ok, [_, _]} = emqx_redis_storage:q(Cl, [<<"KEYS">>, <<(prefix(Cl))/binary, "sidx:*">>]),
    ok = ?S:delete_session(Cl, <<"elsewhere">>),
    raw(Cl, [<<"ZADD">>, Index, <<"+inf">>, <<"elsewhere">>]),
    ?assertMatch({error, {corrupt, #{kind := session_index}}}, ?S:list_sessions(Cl, 10, 0)),
    %% and an empty id, which no client has
    raw(Cl, [<<"ZREM">>, Index, <<"elsewhere">>]),
    raw(Cl, [<<"ZADD">>, Index, <<"+inf">>, <<>>]),
    ?assertMatch({error, {corrupt, #{kind := session_index}}}, ?S:list_sessions(Cl, 10, 0)).

leases(Config) ->
    Lease = {client, <<"lease">>},
    All = [{acquire_lease, lease}, {renew_lease, lease}, {release_lease, lease}],
    run(Config, fun setup_lease/1, [{[{wrong, Lease, T}], All} || T <- [string, list, zset]]),
    run(Config, fun setup_lease/1, [
        {[{hset, Lease, <<"fence">>, V}], All}
     || V <- [<<"abc">>, ?OVERFLOW, <<"-5">>, <<"01">>, <<>>]
    ]),
    run(Config, fun setup_lease/1, [
        {[{hdel, Lease, F}], All}
     || F <- [<<"owner">>, <<"fence">>]
    ]),
    %% owners we could not have written: refused when they must be shown
    run(Config, fun setup_lease/1, [
        {[{hset, Lease, <<"owner">>, O}], [{acquire_lease, lease}, {renew_lease, lease}]}
     || O <- [<<>>, <<"garbage">>, <<"node:">>, <<"node:a", 0, "@b">>, <<"node:nonode">>]
    ]).

fences(Config) ->
    Fence = {client, <<"fence">>},
    %% release_lease does not read the fence key: it answers as without
    %% corruption (the calls give a fence the lease is not held with)
    Uses = [
        {acquire_lease, fence},
        {renew_lease, fence},
        {save_fenced, fence},
        {release_lease, {error, held_by}},
        {save_session, ok}
    ],
    run(Config, fun setup_lease/1, [
        {[{set, Fence, V}], Uses}
     || V <- [?OVERFLOW, <<"-5">>, <<"abc">>, <<"1.5">>, <<"9007199254740992">>, <<>>]
    ]),
    run(Config, fun setup_lease/1, [{[{wrong, Fence, T}], Uses} || T <- [hash, list]]),
    %% with no lease held: an overflowed fence once came back as
    %% {ok, -9223372036854775808}
    run(Config, fun setup_released/1, [
        {[{set, Fence, V}], [{acquire_lease, fence}, {save_fenced, fence}, {save_session, ok}]}
     || V <- [?OVERFLOW, <<"-5">>]
    ]).

registry(Config) ->
    Chan = {slot, <<"chan">>},
    run(Config, fun setup_channel/1, [
        {[{wrong, Chan, T}], [
            {lookup_channel, channel},
            {register_channel, channel},
            {unregister_channel, channel},
            {cleanup_channels, channel}
        ]}
     || T <- [string, zset, set]
    ]),
    run(Config, fun setup_channel/1, [
        {[{hset, Chan, ?C, N}], [
            {lookup_channel, channel},
            {unregister_channel, ok},
            {cleanup_channels, ok},
            {register_channel, ok}
        ]}
     || N <- bad_node_names()
    ]).

queue_keys(Config) ->
    All = [
        {store_message, queue},
        {get_messages, queue},
        {ack_message, queue},
        %% the way out: deleting works whatever the queue keys hold
        {delete_messages, ok},
        {count_messages, queue},
        {queue_info, queue}
    ],
    run(Config, fun setup_queue/1, [
        {[{wrong, {client, K}, T}], All}
     || {K, Types} <- [
            {<<"q">>, [string, hash]},
            {<<"qx">>, [string, list]},
            {<<"qm">>, [string, zset]},
            {<<"qb">>, [string, zset]}
        ],
        T <- Types
    ]),
    run(Config, fun setup_queue/1, [
        {[{hset, {client, <<"qm">>}, F, V}], All}
     || F <- [<<"seq">>, <<"dropped">>], V <- [<<"abc">>, ?OVERFLOW, <<"-1">>]
    ]),
    %% expiry scores we did not write: the queue expires with them rounded,
    %% no script fails after its first write
    run(Config, fun setup_queue/1, [
        {[{zadd, {client, <<"qx">>}, Score, <<"m2">>}], [{store_message, ok}, {ack_message, ok}, {get_messages, ok}]}
     || Score <- [<<"+inf">>, <<"1e300">>, <<"4102444800000.5">>]
    ]).

%% A body is the field of its id in the queue's bodies hash (a hash of the
%% wrong type is a queue key of the wrong type: queue_keys).
message_bodies(Config) ->
    Body = fun(B) -> {hset, {client, <<"qb">>}, <<"m1">>, B} end,
    Header = <<0:64>>,
    Reads = [{get_messages, message}, {count_messages, ok}, {store_message, ok}, {delete_messages, ok}],
    run(Config, fun setup_queue/1, [
        {[Body(B)], [{queue_info, message} | Reads]}
     || B <- [<<>>, <<"12345">>]
    ]),
    run(Config, fun setup_queue/1, [
        {[Body(<<Header/binary, B/binary>>)], [{queue_info, ok}, {ack_message, ok} | Reads]}
     || B <- [
            <<>>,
            <<"garbage">>,
            term_to_binary(not_a_map),
            term_to_binary(#{no => id}),
            term_to_binary(#{id => <<"m2">>}),
            <<(term_to_binary(#{id => <<"m1">>}))/binary, "tail">>
        ]
    ]),
    %% the detail names the message
    NotAMap = Body(<<Header/binary, (term_to_binary(not_a_map))/binary>>),
    Short = Body(<<"12345">>),
    [
        begin
            Cl = client(Config),
            setup_queue(Cl),
            corrupt(Cl, Corruption),
            {error, {corrupt, #{kind := message, detail := Detail}}} = (maps:get(Call, calls()))(Cl),
            ?assertMatch(<<"m1: ", _/binary>>, Detail)
        end
     || {Corruption, Call} <- [
            {NotAMap, get_messages},
            {Short, get_messages},
            {Short, queue_info}
        ]
    ],
    %% an id that is no UTF-8 and holds a line break is named escaped, the
    %% same by a script (too short, queue_info), the NIF (too short,
    %% get_messages) and the Erlang side (no term)
    Odd = <<"m", 255, "\r\nx">>,
    OddBody = fun(B) -> {hset, {client, <<"qb">>}, Odd, B} end,
    [
        begin
            Cl = client(Config),
            ok = ?M:store_message(Cl, ?C, #{id => Odd}),
            corrupt(Cl, Corruption),
            {error, {corrupt, #{kind := message, detail := Detail}}} = (maps:get(Call, calls()))(Cl),
            ?assertMatch(<<"m\\xff\\r\\nx: ", _/binary>>, Detail)
        end
     || {Corruption, Call} <- [
            {OddBody(<<"12345">>), queue_info},
            {OddBody(<<"12345">>), get_messages},
            {OddBody(<<0:64, "garbage">>), get_messages}
        ]
    ].

routes(Config) ->
    Rt = {shard, <<"rt">>},
    Writes = [{add_route, route}, {delete_route, route}, {cleanup_routes, route}],
    run(Config, fun setup_routes/1, [
        {[{wrong, Rt, T}], Writes ++ [{match_routes, route}, {lookup_routes, route}, {topics, route}]}
     || T <- [string, list, zset]
    ]),
    %% the version: writes bump it, reads do not look at it
    run(Config, fun setup_routes/1, [
        {[{hset, Rt, <<0, "v">>, V}], Writes ++ [{match_routes, ok}, {lookup_routes, ok}, {topics, ok}]}
     || V <- [<<"notanumber">>, ?OVERFLOW, <<"-1">>]
    ]),
    %% dests we could not have written: every read of them is refused;
    %% writes keep the dests they are not about as they are
    run(Config, fun setup_routes/1, [
        {[{hset, Rt, <<"t/+">>, D}], [
            {match_routes, route},
            {lookup_routes, route},
            {cleanup_routes, route},
            {topics, ok},
            {add_route, ok},
            {delete_route, ok}
        ]}
     || D <- bad_dests()
    ]),
    %% a field that is no filter
    run(Config, fun setup_routes/1, [
        {[{hset, Rt, <<"a/#/b">>, <<"n@h">>}], [{topics, route}, {cleanup_routes, route}, {match_routes, ok}]}
    ]).

route_tries(Config) ->
    Trie = {shard, <<"rtrie">>},
    run(Config, fun setup_routes/1, [
        {[{hset, Trie, <<"t">>, V}], [
            {add_deep_route, route_trie},
            {delete_route, route_trie},
            {add_exact_route, ok},
            {match_routes, ok}
        ]}
     || V <- [<<"abc">>, ?OVERFLOW, <<"-1">>]
    ]),
    run(Config, fun setup_routes/1, [
        {[{wrong, Trie, T}], [
            {add_deep_route, route_trie},
            {delete_route, route_trie},
            {match_routes, route_trie},
            {add_exact_route, ok}
        ]}
     || T <- [string, set]
    ]).

%% A client whose local index meets a corrupt route never uses the index:
%% every match goes to Redis, which refuses the topics the route concerns.
local_index_never_loads_corrupt_routes(Config) ->
    Writer = client(Config),
    setup_routes(Writer),
    raw(Writer, [<<"HSET">>, key(Writer, {shard, <<"rt">>}), <<"t/+">>, <<"nonode">>]),
    Reader = client(Config, #{key_prefix => prefix(Writer), route_index => local}),
    timer:sleep(1000),
    ?assertNot(?R:index_ready(Reader)),
    ?assertMatch({error, {corrupt, #{kind := route}}}, ?R:match_routes(Reader, <<"t/x">>)),
    ?assertEqual({ok, []}, ?R:match_routes(Reader, <<"other">>)),
    %% repaired, the index loads
    raw(Writer, [<<"HDEL">>, key(Writer, {shard, <<"rt">>}), <<"t/+">>]),
    ok = test_util:wait_until(fun() -> ?R:index_ready(Reader) end, 5000),
    ?assertEqual({ok, [?NODE]}, ?R:match_routes(Reader, <<"t/x">>)).

%% An event that does not parse, or names no valid route, puts nothing in
%% the index: the index reloads from Redis instead.
garbage_route_events_make_the_index_reload(Config) ->
    Cl = client(Config, #{route_index => local}),
    ok = test_util:wait_until(fun() -> ?R:index_ready(Cl) end, 5000),
    ok = ?R:add_route(Cl, <<"t/y">>, ?NODE),
    Events = <<(prefix(Cl))/binary, "rt:events">>,
    [
        {ok, _} = raw(Cl, [<<"PUBLISH">>, Events, E])
     || E <- [<<"0 2 +t/y", 0, "nonode">>, <<"0 2 +t/y", 0, 1, "n@h">>, <<"0 2 +a/#/b", 0, "x@h">>, <<"garbage">>]
    ],
    ok = test_util:wait_until(fun() -> ?R:index_ready(Cl) end, 5000),
    ?assertEqual({ok, [?NODE]}, ?R:match_routes(Cl, <<"t/y">>)),
    ?assertEqual({ok, []}, ?R:match_routes(Cl, <<"a/x/b">>)).

%% A message body removed outside the library (HDEL, DEL, eviction): the next
%% script that meets its queue entry drops it, and counts, info and pages
%% agree.
%% An id left in only one of the queue's sorted sets (one entry removed
%% outside the library) is not queued: storing it again queues it, rather
%% than answering ok for a message no read would return.
a_half_queued_message_is_stored_again(Config) ->
    Cl = client(Config),
    ok = ?M:store_messages(Cl, ?C, [#{id => <<"1">>}, #{id => <<"2">>}]),
    raw(Cl, [<<"ZREM">>, key(Cl, {client, <<"q">>}), <<"1">>]),
    raw(Cl, [<<"ZREM">>, key(Cl, {client, <<"qx">>}), <<"2">>]),
    ok = ?M:store_messages(Cl, ?C, [#{id => <<"1">>, v => again}, #{id => <<"2">>, v => again}]),
    ?assertEqual(
        {ok, [#{id => <<"1">>, v => again}, #{id => <<"2">>, v => again}]},
        ?M:get_messages(Cl, ?C, 0, 10)
    ),
    ?assertEqual({ok, 2}, ?M:count_messages(Cl, ?C)).

a_corrupt_queue_can_be_deleted(Config) ->
    Cl = client(Config),
    ok = ?M:store_messages(Cl, ?C, [#{id => <<"1">>}, #{id => <<"2">>}]),
    raw(Cl, [<<"HSET">>, key(Cl, {client, <<"qm">>}), <<"seq">>, <<"abc">>]),
    ?assertMatch({error, {corrupt, #{kind := queue}}}, ?M:get_messages(Cl, ?C, 0, 10)),
    ok = ?M:delete_messages(Cl, ?C),
    ?assertEqual({ok, []}, emqx_redis_storage:q(Cl, [<<"KEYS">>, <<(prefix(Cl))/binary, "*">>])),
    ok = ?M:store_message(Cl, ?C, #{id => <<"3">>}),
    ?assertEqual({ok, [#{id => <<"3">>}]}, ?M:get_messages(Cl, ?C, 0, 10)).

queue_counts_agree_with_loads(Config) ->
    Cl = client(Config),
    Msgs = [#{id => integer_to_binary(I)} || I <- lists:seq(1, 5)],
    ok = ?M:store_messages(Cl, ?C, Msgs),
    raw(Cl, [<<"HDEL">>, key(Cl, {client, <<"qb">>}), <<"2">>, <<"4">>]),
    Live = [M || #{id := Id} = M <- Msgs, Id =/= <<"2">>, Id =/= <<"4">>],
    ?assertEqual({ok, 3}, ?M:count_messages(Cl, ?C)),
    ?assertMatch({ok, #{len := 3}}, ?M:queue_info(Cl, ?C)),
    ?assertEqual({ok, Live}, ?M:get_messages(Cl, ?C, 0, 10)),
    %% pages count live messages only
    raw(Cl, [<<"HDEL">>, key(Cl, {client, <<"qb">>}), <<"3">>]),
    ?assertEqual({ok, [#{id => <<"5">>}]}, ?M:get_messages(Cl, ?C, 1, 10)),
    ?assertEqual({ok, 2}, ?M:count_messages(Cl, ?C)),
    ?assertEqual({ok, 2}, raw(Cl, [<<"ZCARD">>, key(Cl, {client, <<"q">>})])),
    %% a message whose body is gone may be stored again
    raw(Cl, [<<"HDEL">>, key(Cl, {client, <<"qb">>}), <<"1">>]),
    ok = ?M:store_message(Cl, ?C, #{id => <<"1">>, again => true}),
    ?assertEqual({ok, [#{id => <<"5">>}, #{id => <<"1">>, again => true}]}, ?M:get_messages(Cl, ?C, 0, 10)),
    %% the whole bodies hash gone (evicted): every message is gone
    raw(Cl, [<<"DEL">>, key(Cl, {client, <<"qb">>})]),
    ?assertEqual({ok, 0}, ?M:count_messages(Cl, ?C)),
    ?assertEqual({ok, []}, ?M:get_messages(Cl, ?C, 0, 10)),
    ?assertEqual({ok, 0}, raw(Cl, [<<"ZCARD">>, key(Cl, {client, <<"q">>})])),
    ok = ?M:store_message(Cl, ?C, #{id => <<"5">>, again => true}),
    ?assertEqual({ok, [#{id => <<"5">>, again => true}]}, ?M:get_messages(Cl, ?C, 0, 10)).

%% A session hash removed outside the library: listing drops its index
%% entry; counting does not read every hash, so it counts the entry until
%% a listing meets it (README, "Views that may differ").
session_listing_agrees_with_loads(Config) ->
    Cl = client(Config),
    Ids = [<<"s", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 6)],
    [ok = ?S:save_session(Cl, Id, Id, #{}) || Id <- Ids],
    Gone = [<<"s2">>, <<"s5">>],
    [raw(Cl, [<<"DEL">>, key(Cl, {client, <<"sess">>}, Id)]) || Id <- Gone],
    ?assertEqual({ok, 6}, ?S:count_sessions(Cl)),
    {ok, Listed} = ?S:list_sessions(Cl, 100, 0),
    ?assertEqual(lists:sort(Ids -- Gone), lists:sort(Listed)),
    [?assertMatch({ok, _}, ?S:load_session(Cl, Id)) || Id <- Listed],
    ?assertEqual({ok, 4}, ?S:count_sessions(Cl)),
    %% a short page is filled from the entries behind the dropped ones
    raw(Cl, [<<"DEL">>, key(Cl, {client, <<"sess">>}, hd(Listed))]),
    {ok, Page} = ?S:list_sessions(Cl, 3, 0),
    ?assertEqual(lists:sort(tl(Listed)), lists:sort(Page)).

%%--------------------------------------------------------------------
%% Setups: legitimate data written through the API.

setup_session(Cl) ->
    ok = ?S:save_session(Cl, ?C, #{subscriptions => [<<"a/+">>]}, #{node => ?NODE}).

setup_lease(Cl) ->
    {ok, _} = ?S:acquire_lease(Cl, ?C, ?NODE, 60000),
    setup_session(Cl).

setup_released(Cl) ->
    {ok, Fence} = ?S:acquire_lease(Cl, ?C, ?NODE, 60000),
    ok = ?S:release_lease(Cl, ?C, Fence).

setup_channel(Cl) ->
    ok = ?G:register_channel(Cl, ?C, ?NODE).

setup_queue(Cl) ->
    ok = ?M:store_messages(Cl, ?C, [#{id => <<"m1">>}, #{id => <<"m2">>}]).

setup_routes(Cl) ->
    {ok, 3} = ?R:add_routes(Cl, [{<<"t/+">>, ?NODE}, {<<"t/x">>, ?NODE}, {<<"t/+">>, {<<"g">>, 'n2@h'}}]),
    ok.

bad_node_names() ->
    [
        <<>>,
        <<"a", 0, "@b">>,
        <<"nonode">>,
        <<"@h">>,
        <<"n@">>,
        <<"n@h\n">>,
        <<"n@", 255>>,
        <<(binary:copy(<<"n">>, 300))/binary, "@h">>
    ].

bad_dests() ->
    [<<>>, <<"nonode">>, <<1, "n@h">>, <<1, "n@h", 1>>, <<"n@h", 0>>, <<1, "n@h", 1, "g/x">>, <<"a", 0, "@b">>].

%%--------------------------------------------------------------------
%% The driver.

%% For every corruption and call: a fresh client and prefix, the setup, the
%% corruption, then the call, checked against what it must answer.
run(Config, Setup, Cases) ->
    Calls = calls(),
    [
        check(Config, Setup, Corruption, Call, maps:get(Call, Calls), Expected)
     || {Corruption, Checks} <- Cases, {Call, Expected} <- Checks
    ],
    ok.

check(Config, Setup, Corruption, Call, Fun, Expected) ->
    Cl = client(Config),
    Setup(Cl),
    [corrupt(Cl, C) || C <- Corruption],
    Before = snapshot(Cl),
    Result = Fun(Cl),
    Where = #{call => Call, corruption => Corruption, result => Result},
    case Expected of
        ok ->
            ?assert(Result =:= ok orelse element(1, Result) =:= ok, Where);
        {error, Tag} ->
            ?assertMatch({error, {Tag, _}}, Result, Where);
        Kind ->
            ?assertMatch({error, {corrupt, #{kind := Kind, detail := D}}} when is_binary(D), Result, Where)
    end,
    case Result of
        {error, _} -> ?assertEqual(ok, same(Before, snapshot(Cl)), Where);
        _ -> ok
    end.

client(Config) ->
    client(Config, #{}).

client(Config, Extra) ->
    Prefix = <<"h", (integer_to_binary(erlang:unique_integer([positive])))/binary, ":">>,
    Base = #{
        redis => #{servers => redis_test_server:address(?config(redis, Config)), pool_size => 1},
        key_prefix => Prefix,
        route_index => redis,
        route_shards => 1,
        route_sync_interval => 200
    },
    {ok, Cl} = emqx_redis_storage:connect(maps:merge(Base, Extra)),
    Cl.

prefix(Cl) ->
    maps:get(key_prefix, emqx_redis_storage_client:info(Cl)).

raw(Cl, Cmd) ->
    {ok, _} = emqx_redis_storage:q(Cl, Cmd).

%% The key of a kind for client ?C (or `Id'); slot keys are found by name,
%% since the setup made the only one under the prefix.
key(Cl, What) ->
    key(Cl, What, ?C).

key(Cl, {client, Kind}, Id) ->
    <<(prefix(Cl))/binary, Kind/binary, ":{", Id/binary, "}">>;
key(Cl, {shard, Kind}, _Id) ->
    <<(prefix(Cl))/binary, Kind/binary, ":{r0}">>;
key(Cl, {slot, Kind}, _Id) ->
    {ok, [Key]} = emqx_redis_storage:q(Cl, [<<"KEYS">>, <<(prefix(Cl))/binary, Kind/binary, ":*">>]),
    Key.

corrupt(Cl, {set, K, V}) -> raw(Cl, [<<"SET">>, key(Cl, K), V]);
corrupt(Cl, {hset, K, F, V}) -> raw(Cl, [<<"HSET">>, key(Cl, K), F, V]);
corrupt(Cl, {hdel, K, F}) -> raw(Cl, [<<"HDEL">>, key(Cl, K), F]);
corrupt(Cl, {zadd, K, Score, M}) -> raw(Cl, [<<"ZADD">>, key(Cl, K), Score, M]);
corrupt(Cl, {wrong, K, Type}) ->
    Key = key(Cl, K),
    raw(Cl, [<<"DEL">>, Key]),
    raw(Cl, wrong_type(Type, Key)).

wrong_type(string, Key) -> [<<"SET">>, Key, <<"x">>];
wrong_type(hash, Key) -> [<<"HSET">>, Key, <<"f">>, <<"v">>];
wrong_type(list, Key) -> [<<"RPUSH">>, Key, <<"x">>];
wrong_type(set, Key) -> [<<"SADD">>, Key, <<"x">>];
wrong_type(zset, Key) -> [<<"ZADD">>, Key, <<"1">>, <<"x">>].

%% Every key under the client's prefix: {Key, DUMP, PTTL}.
snapshot(Cl) ->
    {ok, Keys} = emqx_redis_storage:q(Cl, [<<"KEYS">>, <<(prefix(Cl))/binary, "*">>]),
    lists:sort([
        {K, element(2, raw(Cl, [<<"DUMP">>, K])), element(2, raw(Cl, [<<"PTTL">>, K]))}
     || K <- Keys
    ]).

%% `ok', or what differs; expiry times may differ by the time passed.
same(Before, After) ->
    Close = fun({K, Dump, T1}, {K, Dump, T2}) -> (T1 < 0) =:= (T2 < 0) andalso abs(T1 - T2) =< 2000;
               (_, _) -> false
            end,
    case length(Before) =:= length(After) andalso lists:all(fun({B, A}) -> Close(B, A) end, lists:zip(Before, After)) of
        true -> ok;
        false -> {changed, Before -- After, After -- Before}
    end.
