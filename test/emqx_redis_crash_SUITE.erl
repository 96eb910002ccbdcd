%% Crash consistency: while 32 writers save sessions, queue messages,
%% register channels and add routes, a Redis with `appendfsync always' is
%% killed with SIGKILL, left dead for a while, and restarted from its AOF on
%% the same port; twice. Then it is killed once more with nothing in flight,
%% so that every acknowledged write has been through a kill and a replay of
%% the AOF, and everything is checked: no acknowledged write is missing,
%% every call was answered within its deadline, the failures were of the
%% documented kinds, and writes succeeded again after each restart.
-module(emqx_redis_crash_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(WRITERS, 32).
-define(CRASHES, 2).
%% How long Redis runs before each kill (and after the last restart), and
%% how long it stays dead.
-define(UP_MS, 2000).
-define(DOWN_MS, 1500).
-define(COMMAND_TIMEOUT, 1000).
%% Every call must be answered within this, also with Redis dead.
-define(DEADLINE_MS, 2 * ?COMMAND_TIMEOUT + 500).
%% Each writer overwrites this many sessions in turn, so a session's last
%% acknowledged value can be checked, not only its presence.
-define(SESSIONS_PER_WRITER, 8).
%% A writer whose call failed waits this long, as a real client would,
%% rather than spinning against a dead server.
-define(BACKOFF_MS, 20).
-define(OPS, [session, message, channel, route]).
-define(PAGE, 10000).

-record(call, {
    op :: session | message | channel | route,
    writer :: pos_integer(),
    n :: non_neg_integer(),
    %% when the call started (monotonic ms) and how long it took (us)
    at :: integer(),
    us :: non_neg_integer(),
    result :: term()
}).

%% The case takes about 15 s; a hung caller fails it well before CT's default.
suite() ->
    [{timetrap, {minutes, 2}}].

all() ->
    [acknowledged_writes_survive_redis_crashes].

init_per_suite(Config) ->
    Redis = redis_test_server:start(#{conf => ["appendonly yes", "appendfsync always"]}),
    ok = emqx_redis_storage:start(#{
        redis => #{
            servers => redis_test_server:address(Redis),
            command_timeout => ?COMMAND_TIMEOUT,
            connect_timeout => 500
        },
        %% no message may be dropped for a full queue: that would look lost
        persistence => #{max_queue_len => 1000000}
    }),
    [{redis, Redis} | Config].

end_per_suite(Config) ->
    ok = emqx_redis_storage:stop(),
    redis_test_server:stop(?config(redis, Config)).

%%--------------------------------------------------------------------

acknowledged_writes_survive_redis_crashes(Config) ->
    Redis = ?config(redis, Config),
    Writers = [spawn_link(fun() -> writer(W, 0, []) end) || W <- lists:seq(1, ?WRITERS)],
    Crashes = [begin timer:sleep(?UP_MS), crash(Redis, ?DOWN_MS) end || _ <- lists:seq(1, ?CRASHES)],
    timer:sleep(?UP_MS),
    Calls = stop_writers(Writers),
    %% nothing in flight: every acknowledged write must now come back from the AOF
    _ = crash(Redis, 0),
    ok = test_util:wait_ok(fun() -> emqx_redis_session:save_session(<<"crash-probe">>, up) end, 10000),
    Audit = audit(Calls),
    report(Calls, Crashes, Audit),
    check(Calls, Crashes, Audit).

%% Kills Redis, keeps it dead for `DownMs', restarts it from its AOF. Returns
%% when each of these happened (monotonic ms).
crash(Redis, DownMs) ->
    ok = redis_test_server:kill(Redis),
    Killed = now_ms(),
    timer:sleep(DownMs),
    Restarting = now_ms(),
    ok = redis_test_server:restart(Redis),
    #{killed => Killed, restarting => Restarting, up => now_ms()}.

now_ms() -> erlang:monotonic_time(millisecond).

%%--------------------------------------------------------------------
%% Writers

%% One call of each kind per round, with values unique to the writer and
%% round; every call is recorded with its result and duration.
writer(W, N, Acc) ->
    receive
        {stop, From} -> From ! {calls, self(), Acc}
    after 0 ->
        Round = [timed(Op, W, N) || Op <- ?OPS],
        [timer:sleep(?BACKOFF_MS) || lists:any(fun(C) -> C#call.result =/= ok end, Round)],
        writer(W, N + 1, Round ++ Acc)
    end.

timed(Op, W, N) ->
    At = now_ms(),
    {Us, Result} = timer:tc(fun() -> write(Op, W, N) end),
    #call{op = Op, writer = W, n = N, at = At, us = Us, result = Result}.

write(session, W, N) -> emqx_redis_session:save_session(session_id(W, N), {W, N});
write(message, W, N) -> emqx_redis_message:store_message(queue_id(W), #{id => message_id(N), writer => W});
write(channel, W, N) -> emqx_redis_registry:register_channel(channel_id(W, N), writer_node(W));
write(route, W, N) -> emqx_redis_router:add_route(route_filter(W, N), writer_node(W)).

session_id(W, N) -> iolist_to_binary(io_lib:format("crash-s-~b-~b", [W, N rem ?SESSIONS_PER_WRITER])).
queue_id(W) -> iolist_to_binary(io_lib:format("crash-q-~b", [W])).
message_id(N) -> integer_to_binary(N).
channel_id(W, N) -> iolist_to_binary(io_lib:format("crash-c-~b-~b", [W, N])).
route_filter(W, N) -> iolist_to_binary(io_lib:format("crash/~b/~b/#", [W, N])).
writer_node(W) -> list_to_atom("crash" ++ integer_to_list(W) ++ "@127.0.0.1").

%% A writer that does not stop is stuck in a call that never returned.
stop_writers(Writers) ->
    [Pid ! {stop, self()} || Pid <- Writers],
    lists:append([collect(Pid) || Pid <- Writers]).

collect(Pid) ->
    %% the round in progress may have four calls left, each within its deadline
    receive
        {calls, Pid, Calls} -> Calls
    after 4 * ?DEADLINE_MS + 1000 ->
        ct:fail({writer_hangs, erlang:process_info(Pid, current_stacktrace)})
    end.

%%--------------------------------------------------------------------
%% What Redis holds after the last restart

%% The writes whose outcome Redis contradicts: `lost' (acknowledged, yet
%% not in Redis) and `reached' (answered `{connection, _}', which says the
%% request never reached Redis, yet in Redis); and `unmatched', the
%% acknowledged routes that match_routes misses.
audit(Calls) ->
    {LostSessions, ReachedSessions} = audit_sessions(Calls),
    Queued = queued_ids(),
    ByWriter = maps:groups_from_list(fun(#call{writer = W}) -> W end, [C || C <- Calls, audited(C)]),
    %% one process per writer: tens of thousands of lookups
    Audits = test_util:pmap(
        fun(Writes) ->
            Unmatched = [C || C = #call{op = route, result = ok} <- Writes, not matched(C)],
            {[{C, stored(C, Queued)} || C <- Writes], Unmatched}
        end,
        maps:values(ByWriter)
    ),
    Stored = lists:append([S || {S, _} <- Audits]),
    #{
        lost => LostSessions ++ [C || {C = #call{result = ok}, false} <- Stored],
        reached => ReachedSessions ++ [C || {C = #call{result = {error, {connection, _}}}, true} <- Stored],
        unmatched => lists:append([U || {_, U} <- Audits])
    }.

audited(#call{op = session}) -> false;
audited(#call{result = R}) -> lists:member(kind(R), [ok, connection]).

%% A session must hold its last acknowledged value or a later attempted one:
%% a write with an unknown outcome may have happened after it.
audit_sessions(Calls) ->
    ById = maps:groups_from_list(
        fun(#call{writer = W, n = N}) -> session_id(W, N) end,
        [C || C = #call{op = session} <- Calls]
    ),
    Audits = [
        audit_session(Writes, emqx_redis_session:load_session(Id))
     || {Id, Writes} <- maps:to_list(ById)
    ],
    {lists:append([L || {L, _} <- Audits]), lists:append([R || {_, R} <- Audits])}.

audit_session(Writes, Loaded) ->
    Stored =
        case Loaded of
            {ok, {_W, N}} -> N;
            {error, not_found} -> none
        end,
    Lost =
        case lists:keysort(#call.n, [C || C = #call{result = ok} <- Writes]) of
            [] -> [];
            Acked -> [Last || Last = #call{n = N} <- [lists:last(Acked)], Stored =:= none orelse Stored < N]
        end,
    {Lost, [C || C = #call{n = N, result = {error, {connection, _}}} <- Writes, N =:= Stored]}.

%% Writer -> the ids in its queue.
queued_ids() ->
    maps:from_list([{W, sets:from_list(queue(queue_id(W), 0))} || W <- lists:seq(1, ?WRITERS)]).

queue(Queue, Offset) ->
    {ok, Page} = emqx_redis_message:get_messages(Queue, Offset, ?PAGE),
    Ids = [Id || #{id := Id} <- Page],
    case length(Page) < ?PAGE of
        true -> Ids;
        false -> Ids ++ queue(Queue, Offset + ?PAGE)
    end.

%% Whether Redis holds the write; a failed lookup fails the test rather
%% than passing for a missing write.
stored(#call{op = message, writer = W, n = N}, Queued) ->
    sets:is_element(message_id(N), maps:get(W, Queued));
stored(#call{op = channel, writer = W, n = N}, _) ->
    case emqx_redis_registry:lookup_channel(channel_id(W, N)) of
        {ok, Node} -> Node =:= writer_node(W);
        {error, not_found} -> false
    end;
stored(#call{op = route, writer = W, n = N}, _) ->
    {ok, Dests} = emqx_redis_router:lookup_routes(route_filter(W, N)),
    lists:member(writer_node(W), Dests).

%% Whether the local route index (which reloads after a lost connection)
%% routes a topic under the filter to the writer's node.
matched(#call{writer = W, n = N}) ->
    Topic = iolist_to_binary(io_lib:format("crash/~b/~b/x", [W, N])),
    {ok, Dests} = emqx_redis_router:match_routes(Topic),
    lists:member(writer_node(W), Dests).

%%--------------------------------------------------------------------
%% Figures and checks

-define(KINDS, [connection, connection_lost, timeout, overloaded, loading, other]).

%% The documented kinds of failure while Redis is unreachable: not done
%% (`connection', `overloaded') or unknown outcome (`connection_lost',
%% `timeout'). While a restarted Redis replays its AOF it refuses commands
%% with a LOADING error reply (`loading'). Anything else is `other'.
kind(ok) -> ok;
kind({error, {connection, _}}) -> connection;
kind({error, {connection_lost, _}}) -> connection_lost;
kind({error, timeout}) -> timeout;
kind({error, overloaded}) -> overloaded;
kind({error, {redis, <<"LOADING ", _/binary>>}}) -> loading;
kind(_) -> other.

check(Calls, Crashes, #{lost := Lost, reached := Reached, unmatched := Unmatched}) ->
    Periods = periods(Crashes),
    none(lost, Lost, Periods),
    %% `{connection, _}' says the request never reached Redis: it did not.
    none(reached, Reached, Periods),
    none(unmatched_routes, Unmatched, Periods),
    none(over_deadline, [C || C = #call{us = Us} <- Calls, Us > ?DEADLINE_MS * 1000], Periods),
    none(undocumented_errors, [C || C = #call{result = R} <- Calls, kind(R) =:= other], Periods),
    lists:foreach(fun(Period) -> check_period(Period, in_period(Calls, Period)) end, Periods).

%% Fails with how many calls and the first few, described.
none(_What, [], _Periods) ->
    ok;
none(What, Calls, Periods) ->
    ct:fail({What, length(Calls), [describe(C, Periods) || C <- lists:sublist(Calls, 10)]}).

describe(#call{op = Op, writer = W, n = N, us = Us, result = Result} = Call, Periods) ->
    Key = #{
        session => session_id(W, N),
        message => {queue_id(W), message_id(N)},
        channel => channel_id(W, N),
        route => route_filter(W, N)
    },
    [Period | _] = [lists:flatten(period_name(P)) || P <- Periods, in_period([Call], P) =/= []],
    #{op => Op, key => maps:get(Op, Key), value => N, result => Result, started => Period, took_us => Us}.

%% Writes are acknowledged before the first kill and after every restart,
%% never while Redis is dead, and the writers do feel it die.
check_period({serving, _, _, _} = Period, Calls) ->
    ?assert(count(ok, Calls) > 0, {nothing_acknowledged, Period}),
    ?assertEqual(0, count(loading, Calls), Period);
check_period({dead, _, _, _} = Period, Calls) ->
    ?assertEqual(0, count(ok, Calls), Period),
    ?assert(length(Calls) > count(ok, Calls), {no_failures, Period});
check_period({restarting, _, _, _}, _Calls) ->
    ok.

%% Redis serving from the start (or a restart) to the next kill (or the
%% end), dead from a kill to its restart, restarting until it answers.
periods(Crashes) -> periods(Crashes, undefined, 1).

periods([], From, _I) ->
    [{serving, end_, From, undefined}];
periods([#{killed := K, restarting := R, up := U} | Rest], From, I) ->
    [{serving, I, From, K}, {dead, I, K, R}, {restarting, I, R, U} | periods(Rest, U, I + 1)].

%% The calls that started in the period.
in_period(Calls, {_, _, From, To}) ->
    [C || C = #call{at = At} <- Calls, From =:= undefined orelse At >= From, To =:= undefined orelse At < To].

count(Kind, Calls) -> length([C || C = #call{result = R} <- Calls, kind(R) =:= Kind]).

report(Calls, Crashes, #{unmatched := Unmatched} = Audit) ->
    ByOp = [{atom_to_list(Op), [C || C = #call{op = O} <- Calls, O =:= Op]} || Op <- ?OPS],
    ByPeriod = [{period_name(P), in_period(Calls, P)} || P <- periods(Crashes)],
    Longest = lists:max([Us || #call{us = Us} <- Calls]) div 1000,
    ct:pal(
        "crash consistency: ~b writers, ~b kills of Redis (appendfsync always), command_timeout ~b ms~n"
        "Redis down (kill to serving again): ~s ms~n"
        "first acknowledged write after each restart: ~s ms after the restart began~n"
        "longest call ~b ms (deadline ~b ms), calls over the deadline: ~b~n"
        "acknowledged routes that match_routes misses: ~b~n"
        "(reached: answered {connection, _}, \"never reached Redis\", yet Redis holds the write)~n~n"
        "~s~n~s",
        [?WRITERS, length(Crashes), ?COMMAND_TIMEOUT, down_times(Crashes), recovery_times(Calls, Crashes),
         Longest, ?DEADLINE_MS, length([C || C = #call{us = Us} <- Calls, Us > ?DEADLINE_MS * 1000]),
         length(Unmatched),
         table("op", ByOp ++ [{"total", Calls}], Audit), table("period", ByPeriod, Audit)]
    ).

%% Per row: calls attempted, acknowledged, lost, reached, and failed by kind.
table(Title, Rows, #{lost := Lost, reached := Reached}) ->
    Sets = [sets:from_list(Lost), sets:from_list(Reached)],
    Header = io_lib:format("~-22s ~9s ~9s ~6s ~7s", [Title, "attempted", "acked", "lost", "reached"]),
    [Header, [io_lib:format(" ~15s", [K]) || K <- ?KINDS], $\n
     | [table_row(Name, Calls, Sets) || {Name, Calls} <- Rows]].

table_row(Name, Calls, [LostSet, ReachedSet]) ->
    In = fun(Set) -> length([C || C <- Calls, sets:is_element(C, Set)]) end,
    [io_lib:format("~-22s ~9b ~9b ~6b ~7b", [Name, length(Calls), count(ok, Calls), In(LostSet), In(ReachedSet)]),
     [io_lib:format(" ~15b", [count(K, Calls)]) || K <- ?KINDS], $\n].

period_name({serving, end_, _, _}) -> "serving to the end";
period_name({State, I, _, _}) -> io_lib:format("~s (crash ~b)", [State, I]).

down_times(Crashes) ->
    lists:join(", ", [integer_to_list(Up - K) || #{killed := K, up := Up} <- Crashes]).

recovery_times(Calls, Crashes) ->
    lists:join(", ", [recovery_time(Calls, R) || #{restarting := R} <- Crashes]).

%% From the restart's start to the end of the first acknowledged call that
%% started after it.
recovery_time(Calls, Restarting) ->
    case [At + Us div 1000 || #call{result = ok, at = At, us = Us} <- Calls, At >= Restarting] of
        [] -> "none";
        Ends -> integer_to_list(lists:min(Ends) - Restarting)
    end.

