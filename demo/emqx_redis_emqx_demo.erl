%% @doc `make emqx-demo': the adapter on real EMQX, a node killed mid-stream.
%%
%% Two EMQX nodes (A, B) clustered on loopback, one private redis-server,
%% the adapter loaded on both. SUBSCRIBERS persistent sessions (MQTT 5,
%% clean start, expiry 1 h) subscribe on A: most to one publisher's topic
%% `d/<P>/x' at QoS 1, every 5th at QoS 2, every 10th to the wildcard
%% `d/+/x'; every 4th then goes offline. Publishers on B publish at a steady
%% rate (every 5th publisher at QoS 2, the others at QoS 1), each to its own
%% topic, and count what B acknowledged (PUBACK / PUBCOMP). Subscribers
%% acknowledge each message after a short random delay, so some are
%% unacknowledged at any moment. A is killed with SIGKILL mid-stream; every
%% subscriber (the offline ones too) reconnects to B with clean_start=false,
%% retrying until a CONNACK. Then the table: what publishers got
%% acknowledged, what subscribers should have got, what they got.
%%
%% Environment: EMQX_ROOT (required), SUBSCRIBERS (100), PUBLISHERS (10),
%% RATE (messages per second per publisher, 10), DURATION (seconds of
%% publishing, 12), KILL_AT (seconds into it, 5), NODE_TTL_MS (2000).
%% Controls: MODE=takeover (A is not killed: the subscribers move to B,
%% EMQX's live takeover), ADAPTER=off (stock EMQX).
-module(emqx_redis_emqx_demo).

-export([main/0]).

-define(EXPIRY, 3600).
-define(ACK_DELAY_MAX, 100).
-define(RECONNECT_TIMEOUT, 120000).
-define(DRAIN_TIMEOUT, 120000).

main() ->
    Status =
        try run() of
            ok -> 0;
            lost -> 1
        catch
            C:R:St ->
                io:format(standard_error, "emqx-demo failed: ~p:~p~n~p~n", [C, R, St]),
                2
        end,
    halt(Status).

run() ->
    case emqx_cluster_node:emqx_missing() of
        false -> ok;
        Why -> error({no_emqx, Why})
    end,
    ok = emqx_cluster_node:add_emqtt_path(),
    Opts = #{
        subscribers => env_int("SUBSCRIBERS", 100),
        publishers => env_int("PUBLISHERS", 10),
        rate => env_int("RATE", 10),
        duration => env_int("DURATION", 12),
        kill_at => env_int("KILL_AT", 5),
        ttl => env_int("NODE_TTL_MS", 2000)
    },
    Redis = redis_test_server:start(),
    Epmd = emqx_cluster_node:start_epmd(),
    try
        with_cluster(Redis, Epmd, Opts)
    after
        emqx_cluster_node:stop_epmd(Epmd),
        redis_test_server:stop(Redis)
    end.

with_cluster(Redis, Epmd, #{ttl := Ttl} = Opts) ->
    Adapter = #{
        redis => #{servers => redis_test_server:address(Redis)},
        nodes => #{heartbeat_interval => max(100, Ttl div 5), ttl => Ttl}
    },
    Dir = filename:join(redis_test_server:tmp_root(), "emqx_nodes"),
    say("starting EMQX nodes A and B (clustered, ~s, redis ~s)", [
        case os:getenv("ADAPTER") of
            "off" -> "stock EMQX: adapter NOT loaded";
            _ -> "adapter loaded"
        end,
        redis_test_server:address(Redis)
    ]),
    Suffix = os:getpid(),
    %% What the nodes print (EMQX's start-up, their console logs) goes to a
    %% file: the peers' output is written to the group leader of the process
    %% that started them. Warnings and the adapter's own log: LOG_DIR.
    LogDir = filename:absname("_build/emqx_demo/logs"),
    _ = file:del_dir_r(LogDir),
    ok = filelib:ensure_path(LogDir),
    {ok, Console} = file:open(filename:join(LogDir, "console.log"), [write]),
    Leader = group_leader(),
    group_leader(Console, self()),
    Nodes =
        try
            emqx_cluster_node:start_cluster(
                ["emqx_demo_a" ++ Suffix, "emqx_demo_b" ++ Suffix],
                maps:merge(
                    #{epmd_port => Epmd, dir => Dir, log_dir => LogDir},
                    case os:getenv("ADAPTER") of
                        "off" -> #{};
                        _ -> #{adapter => Adapter}
                    end
                )
            )
        after
            group_leader(Leader, self())
        end,
    say("nodes' logs in ~s", [LogDir]),
    try
        demo(Nodes, Opts)
    after
        emqx_cluster_node:stop_cluster(Nodes)
    end.

demo([A, B], #{subscribers := NSubs, publishers := NPubs, rate := Rate, duration := Duration, kill_at := KillAt} = Opts) ->
    PortA = emqx_cluster_node:mqtt_port(A),
    PortB = emqx_cluster_node:mqtt_port(B),
    Subs = [sub_spec(I, NPubs) || I <- lists:seq(1, NSubs)],
    say("~b subscribers on A (~b at QoS 2, ~b on d/+/x, ~b go offline)", [
        NSubs,
        length([S || #{qos := 2} = S <- Subs]),
        length([S || #{filter := <<"d/+/x">>} = S <- Subs]),
        length([S || #{offline := true} = S <- Subs])
    ]),
    Control = self(),
    SubPids = [spawn_link(fun() -> subscriber(Control, PortA, PortB, S) end) || S <- Subs],
    [receive {subscribed, P} -> ok after 120000 -> error({subscribe_timeout, P}) end || P <- SubPids],
    wait_routes(B, A, lists:usort([F || #{filter := F} <- Subs])),
    say("~b publishers on B, ~b msg/s each, for ~b s; A is killed at ~b s", [NPubs, Rate, Duration, KillAt]),
    Start = now_ms(),
    PubPids = [
        spawn_link(fun() -> publisher(Control, PortB, P, Rate, Start + Duration * 1000) end)
     || P <- lists:seq(1, NPubs)
    ],
    timer:sleep(max(0, Start + KillAt * 1000 - now_ms())),
    Killed =
        case os:getenv("MODE") of
            "takeover" ->
                %% Control run: A stays up; every subscriber drops its
                %% connection and reconnects to B (EMQX's live takeover).
                say("A stays up: subscribers move to B (live takeover)", []),
                now_ms();
            _ ->
                K = emqx_cluster_node:kill(A),
                say("killed A (kill -9 ~s)", [maps:get(os_pid, A)]),
                K
        end,
    %% Watches B's routes to itself for the subscribers' filters (once every
    %% subscriber has resumed, B must route every one of them to itself).
    Watcher = spawn_link(fun() -> watch_routes(B, lists:usort([F || #{filter := F} <- Subs]), Killed, []) end),
    [P ! {killed, Killed} || P <- SubPids],
    os:getenv("MODE") =:= "takeover" orelse begin
        ok = emqx_cluster_node:wait_down(B, A, 60000),
        say("B sees A down after ~.1f s", [(now_ms() - Killed) / 1000])
    end,
    Acked = lists:append([receive {published, P, L} -> L after 600000 -> error(publisher_timeout) end || P <- PubPids]),
    Watcher ! {stop, self()},
    RouteGaps = receive {route_gaps, Watcher, G} -> G after 60000 -> [] end,
    say("publishers done: ~b messages acknowledged", [length(Acked)]),
    AckedAt = maps:from_list([{{P, Seq}, T} || {P, Seq, T} <- Acked]),
    Expected = expected(Subs, [{P, Seq} || {P, Seq, _} <- Acked]),
    DrainStart = now_ms(),
    Drained = drain(SubPids, Expected, DrainStart + ?DRAIN_TIMEOUT),
    say("~s after ~.1f s", [
        case Drained of
            complete -> "every subscriber has every message";
            timeout -> "gave up waiting for the rest"
        end,
        (now_ms() - DrainStart) / 1000
    ]),
    Results = [ask(P, results) || P <- SubPids],
    Report = report(Opts, Subs, Acked, Expected, Results, Killed),
    [P ! stop || P <- SubPids],
    print(Report),
    print_missing(Subs, Expected, Results, AckedAt, Killed),
    print_route_gaps(RouteGaps),
    case Report of
        #{missing := 0, order_violations := 0} -> ok;
        _ -> lost
    end.

%% Subscriber I: which filter, which QoS, online or not.
sub_spec(I, NPubs) ->
    Filter =
        case I rem 10 of
            0 -> <<"d/+/x">>;
            _ -> topic(I rem NPubs + 1)
        end,
    QoS =
        case I rem 5 of
            2 -> 2;
            _ -> 1
        end,
    #{id => iolist_to_binary(["demo-sub-", integer_to_list(I)]), filter => Filter, qos => QoS, offline => I rem 4 =:= 3}.

topic(P) -> iolist_to_binary(["d/", integer_to_list(P), "/x"]).

%% Per subscriber: the acknowledged messages its filter matches.
expected(Subs, Acked) ->
    maps:from_list([
        {Id, [{P, Seq} || {P, Seq} <- Acked, matches(Filter, P)]}
     || #{id := Id, filter := Filter} <- Subs
    ]).

matches(<<"d/+/x">>, _P) -> true;
matches(Filter, P) -> Filter =:= topic(P).

%%--------------------------------------------------------------------
%% Subscribers: each its own process, owning its emqtt client.

subscriber(Control, PortA, PortB, #{id := Id, filter := Filter, qos := QoS, offline := Offline}) ->
    {ok, C} = emqx_test_mqtt:connect(PortA, Id, #{clean_start => true, expiry => ?EXPIRY, auto_ack => never}),
    QoS = emqx_test_mqtt:subscribe(C, Filter, QoS),
    Client =
        case Offline of
            true ->
                ok = emqx_test_mqtt:disconnect(C),
                undefined;
            false ->
                C
        end,
    Control ! {subscribed, self()},
    sub_loop(#{
        id => Id,
        port_b => PortB,
        client => Client,
        got => [],
        acked => #{},
        resumed => undefined,
        first_after => undefined
    }).

sub_loop(#{client := C, got := Got, acked := Acked} = S) ->
    receive
        {publish, #{client_pid := C, payload := Payload, dup := Dup, packet_id := PId, qos := Q}} ->
            Key = binary_to_term(Payload),
            erlang:send_after(rand:uniform(?ACK_DELAY_MAX), self(), {ack, C, Q, PId, Key}),
            First =
                case maps:get(first_after, S) of
                    undefined when is_integer(map_get(resumed, S)) -> now_ms();
                    F -> F
                end,
            sub_loop(S#{got := [{Key, Dup, now_ms()} | Got], first_after := First});
        {ack, C, 1, PId, Key} ->
            ok = emqtt:puback(C, PId),
            sub_loop(S#{acked := maps:put(Key, maps:get(Key, Acked, now_ms()), Acked)});
        {ack, C, 2, PId, Key} ->
            ok = emqtt:pubrec(C, PId),
            sub_loop(S#{acked := maps:put(Key, maps:get(Key, Acked, now_ms()), Acked)});
        {ack, _Old, _, _, _} ->
            sub_loop(S);
        {pubrel, #{packet_id := PId}} when is_pid(C) ->
            %% (emqtt's pubrel names no client; only the live one gets them.)
            ok = emqtt:pubcomp(C, PId),
            sub_loop(S);
        {killed, _At} ->
            %% The old client's connection died with A (or it was offline):
            %% to B, clean_start=false, until a CONNACK.
            catch emqx_test_mqtt:stop(C),
            case emqx_test_mqtt:connect_retry_counted(maps:get(port_b, S), maps:get(id, S), #{
                clean_start => false, expiry => ?EXPIRY, auto_ack => never
            }, ?RECONNECT_TIMEOUT) of
                {ok, C2, Refused} ->
                    sub_loop(S#{
                        client := C2,
                        resumed := now_ms(),
                        first_after := undefined,
                        refused => Refused,
                        session_present => emqx_test_mqtt:session_present(C2)
                    });
                {error, Reason} -> sub_loop(S#{client := undefined, resumed := {failed, Reason}})
            end;
        {count, From} ->
            From ! {count, self(), length(lists:usort([K || {K, _, _} <- Got]))},
            sub_loop(S);
        {results, From} ->
            From ! {results, self(), maps:with([id, got, acked, resumed, first_after, refused, session_present], S)},
            sub_loop(S);
        stop ->
            catch emqx_test_mqtt:disconnect(C),
            ok;
        _Other ->
            sub_loop(S)
    end.

%% Until every subscriber has every message it should have (`complete'), or
%% the deadline (`timeout').
drain(SubPids, Expected, Deadline) ->
    Want = lists:sum([length(L) || L <- maps:values(Expected)]),
    Have = lists:sum([ask(P, count) || P <- SubPids]),
    if
        Have >= Want ->
            %% What comes late (a duplicate) still counts.
            timer:sleep(2000),
            complete;
        true ->
            case now_ms() > Deadline of
                true ->
                    timeout;
                false ->
                    timer:sleep(500),
                    drain(SubPids, Expected, Deadline)
            end
    end.

ask(Pid, What) ->
    Pid ! {What, self()},
    receive
        {What, Pid, Answer} -> Answer
    after 60000 -> error({no_answer, What, Pid})
    end.

%%--------------------------------------------------------------------
%% Publishers: on B, a steady rate, each message's outcome recorded.

publisher(Control, PortB, P, Rate, End) ->
    Id = iolist_to_binary(["demo-pub-", integer_to_list(P)]),
    {ok, C} = emqx_test_mqtt:connect(PortB, Id, #{}),
    QoS =
        case P rem 5 of
            0 -> 2;
            _ -> 1
        end,
    Acked = pub_loop(C, P, QoS, topic(P), 1000 div Rate, now_ms(), End, 1, []),
    ok = emqx_test_mqtt:disconnect(C),
    Control ! {published, self(), lists:reverse(Acked)}.

pub_loop(C, P, QoS, Topic, Interval, Next, End, Seq, Acked) ->
    case now_ms() >= End of
        true ->
            Acked;
        false ->
            timer:sleep(max(0, Next - now_ms())),
            Acked1 =
                case emqx_test_mqtt:publish(C, Topic, term_to_binary({P, Seq}), QoS) of
                    {ok, RC} when RC < 16#80 -> [{P, Seq, now_ms()} | Acked];
                    _ -> Acked
                end,
            pub_loop(C, P, QoS, Topic, Interval, Next + Interval, End, Seq + 1, Acked1)
    end.

%%--------------------------------------------------------------------
%% The table

report(Opts, Subs, Acked, Expected, Results, Killed) ->
    PerSub = [sub_report(maps:get(Id, Expected), R, Killed) || #{id := Id} = R <- Results],
    Sum = fun(K) -> lists:sum([maps:get(K, X) || X <- PerSub]) end,
    Resumed = [T || #{resumed := T} <- Results],
    Failed = [T || {failed, _} = T <- Resumed],
    LastResumed =
        case [T || T <- Resumed, is_integer(T)] of
            [] -> undefined;
            Ts -> (lists:max(Ts) - Killed) / 1000
        end,
    FirstAfter =
        case [T || #{first_after := T} <- Results, is_integer(T)] of
            [] -> undefined;
            Fs -> (lists:max(Fs) - Killed) / 1000
        end,
    #{
        last_first_message_s => FirstAfter,
        subscribers => length(Subs),
        qos2 => length([S || #{qos := 2} = S <- Subs]),
        wildcard => length([S || #{filter := <<"d/+/x">>} = S <- Subs]),
        offline => length([S || #{offline := true} = S <- Subs]),
        publishers => maps:get(publishers, Opts),
        acked => length(Acked),
        expected => Sum(expected),
        received => Sum(received),
        missing => Sum(missing),
        order_violations => Sum(order_violations),
        duplicates => Sum(duplicates),
        dup_unacked => Sum(dup_unacked),
        dup_acked => Sum(dup_acked),
        dup_acked_max_age => lists:max([0 | [maps:get(dup_acked_max_age, X) || X <- PerSub]]),
        unexpected => Sum(unexpected),
        resume_failed => length(Failed),
        refused_connects => lists:sum([length(maps:get(refused, R, [])) || R <- Results]),
        not_present => length([R || #{session_present := false} = R <- Results]),
        last_resumed_s => LastResumed,
        resumed_s => [(T - Killed) / 1000 || T <- lists:sort([T || T <- Resumed, is_integer(T)])],
        ttl_ms => maps:get(ttl, Opts)
    }.

%% The P-th percentile of a sorted list (nearest rank).
percentile(Sorted, P) ->
    lists:nth(max(1, (P * length(Sorted) + 99) div 100), Sorted).

sub_report(Expected, #{got := Got0, acked := AckedAt}, Killed) ->
    Got = lists:reverse(Got0),
    Keys = [K || {K, _, _} <- Got],
    Distinct = lists:usort(Keys),
    ExpectedSet = lists:usort(Expected),
    Dups = length(Keys) - length(Distinct),
    %% A duplicate whose first copy was acknowledged (PUBACK / PUBREC sent)
    %% before the kill should not have come again (modulo a PUBACK still on
    %% its way when A died); one never acknowledged before it is expected.
    DupKeys = Keys -- Distinct,
    AckedAges = [Killed - maps:get(K, AckedAt) || K <- DupKeys, maps:get(K, AckedAt, infinity) < Killed],
    DupAcked = length(AckedAges),
    #{
        expected => length(ExpectedSet),
        received => length(ordsets:intersection(Distinct, ExpectedSet)),
        missing => length(ordsets:subtract(ExpectedSet, Distinct)),
        unexpected => length(ordsets:subtract(Distinct, ExpectedSet)),
        order_violations => order_violations(Distinct, Keys),
        duplicates => Dups,
        dup_acked => DupAcked,
        dup_unacked => Dups - DupAcked,
        dup_acked_max_age => lists:max([0 | AckedAges])
    }.

%% First copies only: per publisher (one topic each), a sequence number
%% lower than one seen before is a violation.
order_violations(_Distinct, Keys) ->
    {_, _, V} = lists:foldl(
        fun({P, Seq} = K, {Seen, Max, N}) ->
            case sets:is_element(K, Seen) of
                true ->
                    {Seen, Max, N};
                false ->
                    Prev = maps:get(P, Max, 0),
                    {sets:add_element(K, Seen), maps:put(P, max(Prev, Seq), Max), N + (case Seq < Prev of true -> 1; false -> 0 end)}
            end
        end,
        {sets:new(), #{}, 0},
        Keys
    ),
    V.

print(R) ->
    Rows = [
        {"subscribers on A", io_lib:format("~b (QoS 2: ~b, wildcard d/+/x: ~b, offline at the kill: ~b)",
            [maps:get(subscribers, R), maps:get(qos2, R), maps:get(wildcard, R), maps:get(offline, R)])},
        {"publishers on B", integer_to_list(maps:get(publishers, R))},
        {"messages acknowledged to publishers", integer_to_list(maps:get(acked, R))},
        {"deliveries expected", integer_to_list(maps:get(expected, R))},
        {"received (goal: all)", integer_to_list(maps:get(received, R))},
        {"missing", integer_to_list(maps:get(missing, R))},
        {"order violations (per publisher+topic)", integer_to_list(maps:get(order_violations, R))},
        {"duplicates", io_lib:format("~b (unacked at the kill: ~b, acked before it: ~b, those at most ~b ms before)",
            [maps:get(duplicates, R), maps:get(dup_unacked, R), maps:get(dup_acked, R), maps:get(dup_acked_max_age, R)])},
        {"received but never published", integer_to_list(maps:get(unexpected, R))},
        {"subscribers that could not reconnect", integer_to_list(maps:get(resume_failed, R))},
        {"connects to B refused before the CONNACK", integer_to_list(maps:get(refused_connects, R))},
        {"resumed with session-present 0", integer_to_list(maps:get(not_present, R))},
        {"seconds from kill to last subscriber resumed", case maps:get(last_resumed_s, R) of
            undefined -> "-";
            S -> io_lib:format("~.1f (CONNACK from B; nodes.ttl ~.1f s)", [S, maps:get(ttl_ms, R) / 1000])
        end},
        {"seconds from kill to resumed: 10th / 50th / 90th percentile", case maps:get(resumed_s, R) of
            [] -> "-";
            Rs -> io_lib:format("~.1f / ~.1f / ~.1f", [percentile(Rs, P) || P <- [10, 50, 90]])
        end},
        {"seconds from kill to last subscriber's first message", case maps:get(last_first_message_s, R) of
            undefined -> "-";
            S2 -> io_lib:format("~.1f", [S2])
        end}
    ],
    Width = lists:max([length(K) || {K, _} <- Rows]),
    io:format("~n"),
    [io:format("~s  ~s~n", [string:pad(K, Width), V]) || {K, V} <- Rows],
    io:format("~n~s~n", [case R of
        #{missing := 0, order_violations := 0} -> "RESULT: nothing acknowledged to a publisher was lost";
        _ -> "RESULT: messages lost or out of order"
    end]).

%% What is missing, by kind of subscriber and by when the publisher got
%% its acknowledgement (relative to the kill), and a few examples.
print_missing(Subs, Expected, Results, AckedAt, Killed) ->
    Spec = maps:from_list([{Id, S} || #{id := Id} = S <- Subs]),
    Missing = lists:append([
        [{Id, K} || K <- ordsets:subtract(lists:usort(maps:get(Id, Expected)), lists:usort([Key || {Key, _, _} <- Got]))]
     || #{id := Id, got := Got} <- Results
    ]),
    case Missing of
        [] ->
            ok;
        _ ->
            Kind = fun(Id) ->
                #{qos := Q, filter := F, offline := Off} = maps:get(Id, Spec),
                {case Off of true -> offline; false -> online end, {qos, Q}, case F of <<"d/+/x">> -> wildcard; _ -> exact end}
            end,
            When = fun(K) ->
                Rel = maps:get(K, AckedAt) - Killed,
                if
                    Rel < 0 -> before_kill;
                    true -> {after_kill_s, Rel div 1000}
                end
            end,
            Count = fun(F) -> lists:sort(maps:to_list(lists:foldl(fun(X, M) -> maps:update_with(F(X), fun(N) -> N + 1 end, 1, M) end, #{}, Missing))) end,
            io:format("~nmissing by subscriber kind: ~p~n", [Count(fun({Id, _}) -> Kind(Id) end)]),
            io:format("missing by publisher's ack time: ~p~n", [Count(fun({_, K}) -> When(K) end)]),
            io:format("subscribers missing something: ~b~n", [length(lists:usort([Id || {Id, _} <- Missing]))]),
            Res = maps:from_list([{Id, R} || #{id := Id} = R <- Results]),
            Rel = fun(undefined) -> undefined; ({failed, _} = F) -> F; (T) -> T - Killed end,
            %% Relative to this subscriber's CONNACK from B: acknowledged to
            %% the publisher before it (the replay's part) or after (live).
            io:format("missing relative to the subscriber's CONNACK from B: ~p~n", [
                Count(fun({Id, K}) ->
                    case maps:get(resumed, maps:get(Id, Res)) of
                        T when is_integer(T), T > 0 ->
                            D = maps:get(K, AckedAt) - T,
                            if
                                D < -1000 -> more_than_1s_before;
                                D < 0 -> within_1s_before;
                                D < 1000 -> within_1s_after;
                                true -> more_than_1s_after
                            end;
                        _ ->
                            not_resumed
                    end
                end)
            ]),
            io:format("examples: (subscriber, {publisher, seq}, ms after the kill: acknowledged to the publisher, "
                      "subscriber's CONNACK from B, its first message after it; session present; refused connects)~n", []),
            [
                io:format("  ~s ~p ~p ~p ~p ~p ~0p~n", [
                    Id, K, maps:get(K, AckedAt) - Killed,
                    Rel(maps:get(resumed, maps:get(Id, Res))), Rel(maps:get(first_after, maps:get(Id, Res))),
                    maps:get(session_present, maps:get(Id, Res), undefined), maps:get(refused, maps:get(Id, Res), [])
                ])
             || {Id, K} <- lists:sublist(Missing, 10)
            ]
    end.

%% Samples B's missing routes to itself until stopped: [{MsAfterKill, [Filter]}]
%% for each sample with a filter missing, once a first full set was seen.
watch_routes(B, Filters, Killed, Acc) ->
    receive
        {stop, From} -> From ! {route_gaps, self(), lists:reverse(Acc)}
    after 20 ->
        Missing = emqx_cluster_node:call(B, emqx_cluster_node, peer_missing_routes, [Filters]),
        Acc1 =
            case Missing of
                [] -> [complete | Acc];
                _ -> [{now_ms() - Killed, Missing} | Acc]
            end,
        watch_routes(B, Filters, Killed, Acc1)
    end.

%% The samples after B first had a route to itself for every filter that
%% lacked one again.
print_route_gaps(Samples) ->
    case lists:dropwhile(fun(S) -> S =/= complete end, Samples) of
        [] ->
            io:format("B never routed every filter to itself~n");
        After ->
            case [S || {_, _} = S <- After] of
                [] -> io:format("B's routes to itself: no gap once complete~n");
                Gaps -> io:format("B's routes to itself: gaps after complete (ms after kill, filters): ~p~n", [lists:sublist(Gaps, 20)])
            end
    end.

%%--------------------------------------------------------------------

wait_routes(B, A, Filters) ->
    NodeA = emqx_cluster_node:nodename(A),
    ok = test_util:wait_until(
        fun() -> lists:all(fun(F) -> emqx_cluster_node:call(B, emqx_router, has_route, [F, NodeA]) end, Filters) end,
        60000
    ).

env_int(Name, Default) ->
    case os:getenv(Name) of
        false -> Default;
        "" -> Default;
        V -> list_to_integer(V)
    end.

say(Fmt, Args) ->
    io:format("emqx-demo: " ++ Fmt ++ "~n", Args).

now_ms() ->
    erlang:system_time(millisecond).
