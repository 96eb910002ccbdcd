%% @doc Other VMs checking rate limits (emqx_redis_limiter_SUITE and the
%% bench): OTP peers, not distributed, each with the application started,
%% hammering one key.
-module(limiter_test_peer).

-export([start/2, stop/1, hammer/2, hammer/6]).

%% @doc `N' peer VMs with the application started with `AppConfig'.
-spec start(pos_integer(), map()) -> [pid()].
start(N, AppConfig) ->
    Paths = [filename:dirname(code:which(M)) || M <- [emqx_redis_storage, ?MODULE]],
    [
        begin
            {ok, Peer, _} = peer:start(#{connection => standard_io, args => ["-pa" | Paths]}),
            ok = peer:call(Peer, emqx_redis_storage, start, [AppConfig], 30000),
            Peer
        end
     || _ <- lists:seq(1, N)
    ].

-spec stop([pid()]) -> ok.
stop(Peers) ->
    lists:foreach(fun(Peer) -> catch peer:stop(Peer) end, Peers).

%% @doc Runs `hammer/6' on every VM of `Vms' (`self' for this one) at
%% once; returns `{Admitted, Limited}' summed over them.
-spec hammer([pid() | self], {binary(), binary(), pos_integer(), non_neg_integer(), pos_integer()}) ->
    {non_neg_integer(), non_neg_integer()}.
hammer(Vms, {Name, Key, Procs, PerSecond, DurationMs}) ->
    Args = [Name, Key, Procs, PerSecond, DurationMs, erlang:system_time(millisecond) + 200],
    Run = fun
        (self) -> apply(?MODULE, hammer, Args);
        (Peer) -> peer:call(Peer, ?MODULE, hammer, Args, DurationMs + 30000)
    end,
    Results = test_util:pmap(Run, Vms),
    {lists:sum([A || {A, _} <- Results]), lists:sum([L || {_, L} <- Results])}.

%% @doc `Procs' processes check `Key' of limiter `Name' from `StartAt'
%% (system ms, so that VMs start together) for `DurationMs': together
%% `PerSecond' checks a second, or as many as they can if 0. Returns
%% `{Admitted, Limited}'; any other answer fails.
-spec hammer(binary(), binary(), pos_integer(), non_neg_integer(), pos_integer(), integer()) ->
    {non_neg_integer(), non_neg_integer()}.
hammer(Name, Key, Procs, PerSecond, DurationMs, StartAt) ->
    timer:sleep(max(0, StartAt - erlang:system_time(millisecond))),
    Start = erlang:monotonic_time(microsecond),
    %% Each process's interval between checks, in µs (0: none).
    IntervalUs =
        case PerSecond of
            0 -> 0;
            _ -> Procs * 1000000 div PerSecond
        end,
    Until = Start + DurationMs * 1000,
    Results = test_util:pmap(
        fun(I) -> loop(Name, Key, Start + I * IntervalUs div Procs, IntervalUs, Until, {0, 0}) end,
        lists:seq(0, Procs - 1)
    ),
    {lists:sum([A || {A, _} <- Results]), lists:sum([L || {_, L} <- Results])}.

loop(Name, Key, Next, IntervalUs, Until, {Admitted, Limited} = Counts) ->
    Now = erlang:monotonic_time(microsecond),
    if
        Now >= Until ->
            Counts;
        Now < Next ->
            timer:sleep((Next - Now) div 1000),
            loop(Name, Key, Next, IntervalUs, Until, Counts);
        true ->
            Counted =
                case emqx_redis_limiter:check(Name, Key, 1) of
                    {ok, _} -> {Admitted + 1, Limited};
                    {error, {limited, _}} -> {Admitted, Limited + 1}
                end,
            loop(Name, Key, Next + IntervalUs, IntervalUs, Until, Counted)
    end.
