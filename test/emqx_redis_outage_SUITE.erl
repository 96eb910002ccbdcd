%% Outages: Redis frozen under many callers (bounded work in flight,
%% `overloaded' at once beyond it), Redis down (calls fail fast while a
%% background probe waits for it, then recover by themselves), and what an
%% error says about a write: `{connection, _}' means it was not done.
-module(emqx_redis_outage_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

all() ->
    [
        frozen_redis_many_callers_memory_bounded,
        redis_down_fails_fast_then_recovers,
        not_done_writes_were_not_done
    ].

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    ok.

connect(Redis, Extra) ->
    {ok, Client} = emqx_redis_storage:connect(#{
        redis => maps:merge(#{servers => redis_test_server:address(Redis)}, Extra),
        key_prefix => <<"outage:">>
    }),
    Client.

%%--------------------------------------------------------------------

%% 100,000 callers while Redis answers nothing: at most `max_inflight' wait
%% for it, every other call is refused at once, every caller is answered,
%% and the VM's memory stays bounded.
frozen_redis_many_callers_memory_bounded(_Config) ->
    Redis = redis_test_server:start(),
    try
        MaxInFlight = 10000,
        Client = connect(Redis, #{command_timeout => 2000, max_inflight => MaxInFlight}),
        {ok, <<"PONG">>} = emqx_redis_storage:q(Client, [<<"PING">>]),
        Before = memory(),
        ok = redis_test_server:pause(Redis),
        Callers = 100000,
        Parent = self(),
        Start = erlang:monotonic_time(microsecond),
        [
            spawn(fun() ->
                {Us, Reply} = timer:tc(fun() ->
                    emqx_redis_storage:q(Client, [<<"SET">>, integer_to_binary(I), <<"v">>])
                end),
                Parent ! {answer, kind(Reply), Us}
            end)
         || I <- lists:seq(1, Callers)
        ],
        Spawned = erlang:monotonic_time(microsecond) - Start,
        #{in_flight := InFlight} = emqx_redis_storage:status(Client),
        Peak = memory(),
        Answers = [receive {answer, Kind, Us} -> {Kind, Us} after 30000 -> ct:fail(unanswered) end
                   || _ <- lists:seq(1, Callers)],
        ok = redis_test_server:resume(Redis),
        Counts = count_by(fun({Kind, _}) -> Kind end, Answers),
        RefusedUs = lists:sort([Us || {overloaded, Us} <- Answers]),
        ct:pal(
            "~b callers in ~b ms: ~p; in flight at the peak ~b (max ~b); refused calls answered in "
            "p50 ~b us, p99 ~b us; VM memory before ~b MiB, at the peak ~b MiB (total), beam RSS ~b -> ~b MiB",
            [Callers, Spawned div 1000, Counts, InFlight, MaxInFlight, percentile(RefusedUs, 50),
             percentile(RefusedUs, 99), mib(maps:get(erlang, Before)), mib(maps:get(erlang, Peak)),
             mib(maps:get(rss, Before)), mib(maps:get(rss, Peak))]
        ),
        ?assert(InFlight =< MaxInFlight),
        %% Only what was admitted waited for Redis; the rest was refused.
        ?assert(maps:get(timeout, Counts, 0) =< MaxInFlight, Counts),
        ?assert(maps:get(overloaded, Counts, 0) >= Callers - MaxInFlight, Counts),
        ?assertEqual([overloaded, timeout], lists:sort(maps:keys(Counts))),
        %% A refused call did not wait for the command timeout.
        ?assert(percentile(RefusedUs, 99) < 1000000),
        %% The native side holds at most max_inflight requests: far less
        %% than 100,000 callers' worth (the callers' own processes are the
        %% bulk of the growth, about 3 KiB each).
        ?assert(maps:get(rss, Peak) - maps:get(rss, Before) < 1024 * 1024 * 1024),
        %% And the client works again once Redis does.
        ok = test_util:wait_until(fun() -> emqx_redis_storage:q(Client, [<<"PING">>]) =:= {ok, <<"PONG">>} end, 10000),
        ok = test_util:wait_until(fun() -> maps:get(in_flight, emqx_redis_storage:status(Client)) =:= 0 end, 10000)
    after
        redis_test_server:stop(Redis)
    end.

%% Redis down: the first call finds out, and every later call fails at
%% once instead of waiting out its timeout; status says so; when Redis is
%% back, calls work again without anyone reconnecting by hand.
redis_down_fails_fast_then_recovers(_Config) ->
    Redis = redis_test_server:start(),
    try
        Client = connect(Redis, #{command_timeout => 5000, connect_timeout => 2000}),
        Address = redis_test_server:address(Redis),
        ?assertMatch(
            #{breaker := closed, server_states := [#{server := Address, state := up}]},
            emqx_redis_storage:status(Client)
        ),
        ok = redis_test_server:kill(Redis),
        %% A call handed to a pool connection before it noticed the kill has
        %% an unknown outcome (`connection_lost'); soon a call finds Redis
        %% unreachable.
        ok = until_unreachable(Client, 10),
        Status = emqx_redis_storage:status(Client),
        ?assertMatch(#{breaker := Open, connected := false, server_states := [#{server := Address, state := State}]}
                     when (Open =:= open orelse Open =:= half_open) andalso
                          (State =:= down orelse State =:= connecting), Status),
        ?assert(is_binary(maps:get(last_error, Status))),
        Calls = [timer:tc(fun() -> emqx_redis_session:load_session(Client, <<"c">>) end) || _ <- lists:seq(1, 1000)],
        [?assertMatch({error, {connection, _}}, Reply) || {_, Reply} <- Calls],
        Us = lists:sort([U || {U, _} <- Calls]),
        ct:pal("while the breaker is open: p50 ~b us, p99 ~b us, max ~b us per call (command timeout 5 s)",
               [percentile(Us, 50), percentile(Us, 99), lists:last(Us)]),
        %% Failing fast, not waiting for the timeout or a connect attempt.
        ?assert(percentile(Us, 99) < 100000),
        ok = redis_test_server:restart(Redis),
        T0 = erlang:monotonic_time(millisecond),
        ok = test_util:wait_until(fun() -> emqx_redis_storage:q(Client, [<<"PING">>]) =:= {ok, <<"PONG">>} end, 10000),
        ct:pal("calls work again ~b ms after Redis is back", [erlang:monotonic_time(millisecond) - T0]),
        ?assertMatch(
            #{breaker := closed, connected := true, server_states := [#{server := Address, state := up}]},
            emqx_redis_storage:status(Client)
        )
    after
        redis_test_server:stop(Redis)
    end.

%% Writers keep storing messages while Redis is killed and restarted from
%% its append-only file. An acknowledged message is there; one whose call
%% said `{connection, _}' (not done: the request never reached Redis) is
%% not; `{connection_lost, _}' and `timeout' (unknown outcome) may be
%% either, and are counted.
not_done_writes_were_not_done(_Config) ->
    Redis = redis_test_server:start(#{conf => ["appendonly yes", "appendfsync always"]}),
    try
        Client = connect(Redis, #{command_timeout => 1000, connect_timeout => 500}),
        Writers = 16,
        Parent = self(),
        Stop = atomics:new(1, []),
        Pids = [spawn_link(fun() -> Parent ! {done, W, write_loop(Client, W, Stop, 0, [])} end)
                || W <- lists:seq(1, Writers)],
        timer:sleep(300),
        ok = redis_test_server:kill(Redis),
        timer:sleep(300),
        ok = redis_test_server:restart(Redis),
        ok = test_util:wait_until(fun() -> emqx_redis_storage:q(Client, [<<"PING">>]) =:= {ok, <<"PONG">>} end, 10000),
        timer:sleep(300),
        atomics:put(Stop, 1, 1),
        Results = lists:append([receive {done, W, R} -> R after 30000 -> ct:fail({writer_hung, W}) end
                                || W <- lists:seq(1, Writers)]),
        _ = Pids,
        Stored = fun(W) ->
            {ok, Msgs} = emqx_redis_message:get_messages(Client, client(W), 0, 10000),
            sets:from_list([Id || #{id := Id} <- Msgs])
        end,
        StoredSets = maps:from_list([{W, Stored(W)} || W <- lists:seq(1, Writers)]),
        Check = fun({W, Id, Kind}) -> {Kind, sets:is_element(Id, maps:get(W, StoredSets))} end,
        Outcomes = count_by(Check, Results),
        ct:pal("writes by reply and whether stored: ~p", [Outcomes]),
        ?assertEqual(0, maps:get({ok, false}, Outcomes, 0)),
        ?assertEqual(0, maps:get({connection, true}, Outcomes, 0)),
        ?assertEqual(0, maps:get({overloaded, true}, Outcomes, 0)),
        ?assert(maps:get({ok, true}, Outcomes, 0) > 0),
        ?assert(maps:get({connection, false}, Outcomes, 0) > 0),
        Kinds = lists:usort([Kind || {Kind, _} <- maps:keys(Outcomes)]),
        ?assertEqual([], Kinds -- [ok, connection, connection_lost, timeout, overloaded])
    after
        redis_test_server:stop(Redis)
    end.

until_unreachable(_Client, 0) ->
    ct:fail(redis_still_reachable);
until_unreachable(Client, Tries) ->
    case emqx_redis_storage:q(Client, [<<"PING">>]) of
        {error, {connection, _}} -> ok;
        {error, {connection_lost, _}} -> until_unreachable(Client, Tries - 1)
    end.

client(W) -> <<"writer-", (integer_to_binary(W))/binary>>.

write_loop(Client, W, Stop, N, Acc) ->
    case atomics:get(Stop, 1) of
        1 ->
            Acc;
        0 ->
            Id = integer_to_binary(N),
            Reply = emqx_redis_message:store_message(Client, client(W), #{id => Id, payload => <<"p">>}),
            write_loop(Client, W, Stop, N + 1, [{W, Id, kind(Reply)} | Acc])
    end.

kind(ok) -> ok;
kind({ok, _}) -> ok;
kind({error, {Kind, _}}) -> Kind;
kind({error, Kind}) -> Kind.

count_by(Fun, List) ->
    lists:foldl(fun(X, Acc) -> maps:update_with(Fun(X), fun(N) -> N + 1 end, 1, Acc) end, #{}, List).

percentile([], _) -> 0;
percentile(Sorted, P) -> lists:nth(max(1, (length(Sorted) * P + 99) div 100), Sorted).

%% The VM's own count, and the beam process's resident memory (which also
%% holds what the NIF allocates).
memory() ->
    erlang:garbage_collect(),
    {ok, Status} = file:read_file("/proc/" ++ os:getpid() ++ "/status"),
    {match, [Kb]} = re:run(Status, "VmRSS:\\s+([0-9]+) kB", [{capture, all_but_first, list}]),
    #{erlang => erlang:memory(total), rss => list_to_integer(Kb) * 1024}.

mib(Bytes) -> Bytes div (1024 * 1024).
