%% Small helpers shared by the suites.
-module(test_util).

-export([wait_until/2, wait_ok/2, chunks/2, pmap/2]).

%% @doc Polls until Fun() returns true (an exception counts as false) or
%% Ms of wall-clock time have passed.
-spec wait_until(fun(() -> term()), non_neg_integer()) -> ok | {error, timeout}.
wait_until(Fun, Ms) ->
    poll(Fun, erlang:monotonic_time(millisecond) + Ms).

poll(Fun, Deadline) ->
    case catch Fun() of
        true ->
            ok;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true ->
                    {error, timeout};
                false ->
                    timer:sleep(20),
                    poll(Fun, Deadline)
            end
    end.

%% @doc Polls until Fun() returns ok.
-spec wait_ok(fun(() -> term()), non_neg_integer()) -> ok | {error, timeout}.
wait_ok(Fun, Ms) ->
    wait_until(fun() -> Fun() =:= ok end, Ms).

-spec chunks(list(), pos_integer()) -> [list()].
chunks([], _N) -> [];
chunks(L, N) when length(L) =< N -> [L];
chunks(L, N) ->
    {H, T} = lists:split(N, L),
    [H | chunks(T, N)].

%% @doc Fun applied to every item, each in its own linked process; results in order.
-spec pmap(fun((term()) -> term()), list()) -> list().
pmap(Fun, Items) ->
    Parent = self(),
    Refs = [
        begin
            Ref = make_ref(),
            spawn_link(fun() -> Parent ! {Ref, Fun(Item)} end),
            Ref
        end
     || Item <- Items
    ],
    [
        receive
            {Ref, R} -> R
        after 120000 -> error(pmap_timeout)
        end
     || Ref <- Refs
    ].
