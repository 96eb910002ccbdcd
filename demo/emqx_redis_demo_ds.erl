%% @doc The demo's durable sessions, on the controller's side: node A's
%% durable clients subscribe, A persists a stream of messages and delivers
%% them from the clients' iterators, committing them in the sessions now
%% and then; A is killed while it publishes; B resumes every durable
%% session from its last commit. Then the verdict: each message whose
%% persist/1 call A saw answered `ok' that matches a client's filter must
%% have reached the client, from A before the client's last commit or from
%% B after it, equal to what was persisted.
%%
%% What A did is known outside A: a collector process here receives A's
%% reports as A goes (emqx_redis_demo_ds_node says which of them A waits
%% for). The messages themselves come from emqx_redis_demo_ds_data,
%% computed here again from the batch numbers.
%%
%% Environment: DROP_DURABLE (delete the durable message streams of that
%% many sites before B resumes, to see the checks catch it).
-module(emqx_redis_demo_ds).

-export([start/4, killed/1, resume/3, row/1, print/1]).

-import(emqx_redis_demo, [say/2, phase/3, fail/2, int_env/4]).
-import(emqx_redis_demo_report, [seconds/1]).

-define(RPC_TIMEOUT, 600000).
%% A persists a batch every ?INTERVAL_MS and commits every ?COMMIT_EVERY
%% batches.
-define(INTERVAL_MS, 100).
-define(COMMIT_EVERY, 5).
%% A goes on (to the lease renewal, then the kill) once this many batches
%% were acknowledged, every durable client committed this many times after
%% subscribing, and got messages after its last commit: A is then killed
%% with deliveries after the clients' last commits (unless it commits
%% again meanwhile).
-define(WARM_BATCHES, 3 * ?COMMIT_EVERY + 1).
-define(WARM_COMMITS, 2).
-define(WARM_TIMEOUT_MS, 300000).
%% A stops publishing after this many batches (10 minutes): it is killed
%% long before.
-define(MAX_BATCHES, 6000).

%% @doc Loads the code on both nodes; A's durable clients (those of
%% clients 1..N whose fence is in `Fences') subscribe, and A starts its
%% stream; returns once the stream is under way (A goes on publishing).
-spec start(node(), node(), pos_integer(), [{pos_integer(), integer()}]) -> map().
start(A, B, N, Fences) ->
    Drop = int_env("DROP_DURABLE", 0, 0, 1000000),
    [ok = rpc(Node, load_code, []) || Node <- [A, B]],
    Plan = emqx_redis_demo_ds_data:plan(N),
    FenceOf = maps:from_list(Fences),
    Clients = [{I, F} || I <- maps:get(durable, Plan), {ok, F} <- [maps:find(I, FenceOf)]],
    {Subscribed, SubscribeMs} =
        phase("A: durable clients subscribe", length(Clients), fun(P) -> rpc(A, subscribe, [Clients, Plan, P]) end),
    Errors = [E || {_, {error, E}} <- Subscribed],
    Errors =:= [] orelse fail("A's durable clients could not subscribe: ~p", [lists:sublist(Errors, 3)]),
    say("A: ~b durable clients in ~b sites subscribed (emqx_redis_ds:subscribe/2) to their site's status "
        "(site<G>/status/#, shared) and their own commands (site<G>/cmd/<client>), made ~b iterators (one per "
        "stream of each filter) and committed them in their sessions (~s)",
        [length(Clients), maps:get(sites, Plan), length(lists:append([Its || {_, {ok, Its}} <- Subscribed])),
         seconds(SubscribeMs)]),
    Collector = spawn_link(fun() -> collector(A, [I || {I, _} <- Clients]) end),
    Stream = #{plan => Plan, interval => ?INTERVAL_MS, commit_every => ?COMMIT_EVERY, max_batches => ?MAX_BATCHES},
    ok = rpc(A, start_stream, [[{I, maps:get(I, FenceOf), Its} || {I, {ok, Its}} <- Subscribed], Stream, Collector]),
    say("A: publishes a batch of ~b messages every ~b ms (persist/1) and delivers them to its durable clients "
        "from their iterators (next/2); each client's iterators are committed in its session every ~b batches",
        [maps:get(batch_size, Plan), ?INTERVAL_MS, ?COMMIT_EVERY]),
    Started = now_ms(),
    {Acked, Commits} = wait_under_way(Collector, Started + ?WARM_TIMEOUT_MS),
    say("A: ~b batches persisted, every durable client committed at least ~b times and got messages since (~s); "
        "A goes on publishing",
        [Acked, Commits, seconds(now_ms() - Started)]),
    #{plan => Plan, clients => [I || {I, _} <- Clients], collector => Collector, drop => Drop}.

wait_under_way(Collector, Deadline) ->
    Collector ! {progress, self()},
    receive
        {progress, Collector, Acked, MinCommits, 0, false} when Acked >= ?WARM_BATCHES, MinCommits >= ?WARM_COMMITS ->
            {Acked, MinCommits};
        {progress, Collector, Acked, MinCommits, _Waiting, Down} ->
            Down =:= false orelse fail("node A went down before its stream was under way", []),
            now_ms() < Deadline orelse
                fail("A's stream is not under way after ~b s: ~b batches acknowledged, ~b commits per client at least",
                    [?WARM_TIMEOUT_MS div 1000, Acked, MinCommits]),
            timer:sleep(100),
            wait_under_way(Collector, Deadline)
    end.

%% @doc After A was killed: what A had done, as the collector got it.
-spec killed(map()) -> map().
killed(#{collector := Collector} = State) ->
    Collector ! {result, self()},
    Record =
        receive
            {result, Collector, R} -> R
        after 30000 -> fail("the collector did not see node A down", [])
        end,
    #{persisted := Persisted, finished := Finished, deliveries := Deliveries, commits := Commits} = Record,
    Finished =:= false orelse fail("A had published all its ~b batches before it was killed", [Finished]),
    Counts = [C || {ok, C} <- maps:values(Persisted)],
    Last = lists:max([0 | maps:keys(Persisted)]),
    say("A: killed while publishing: persist/1 answered ok for ~b batches (~b messages persisted, ~b skipped: no "
        "durable filter wants them), ~b errors; batch ~b unanswered. A had delivered ~b messages to its durable "
        "clients and committed ~b times",
        [length(Counts), lists:sum([P || #{persisted := P} <- Counts]), lists:sum([S || #{skipped := S} <- Counts]),
         maps:size(Persisted) - length(Counts), Last + 1,
         lists:sum([length(Msgs) || Tagged <- maps:values(Deliveries), {_, Msgs} <- Tagged]),
         lists:sum([length(Cs) || Cs <- maps:values(Commits)])]),
    State#{a => Record}.

%% @doc B resumes the durable sessions of the clients whose leases it
%% took (`TakeOver' is `[{I, OldFence, NewFence}]'), and the controller
%% judges what the clients got.
-spec resume(node(), map(), [{pos_integer(), integer(), integer()}]) -> map().
resume(B, #{clients := Durable, plan := Plan, drop := Drop} = State, TakeOver) ->
    drop_streams(B, Drop, Plan),
    IsDurable = maps:from_keys(Durable, true),
    Clients = [{I, Fence} || {I, _, Fence} <- TakeOver, is_map_key(I, IsDurable)],
    {Resumed, Ms} = phase("B: resumes durable sessions", length(Clients), fun(P) -> rpc(B, resume, [Clients, P]) end),
    say("B: resumed ~b of ~b durable sessions from the iterators of their last commit: ~b messages delivered, "
        "new iterators committed under B's fences (~s)",
        [length([ok || #{checkpoint := C} <- Resumed, C =/= none]), length(Clients),
         lists:sum([length(Msgs) || #{delivered := Msgs} <- Resumed]), seconds(Ms)]),
    Judged = judge(State#{resumed => Resumed}),
    State#{resumed => Resumed, judged => Judged}.

drop_streams(_B, 0, _Plan) ->
    ok;
drop_streams(B, Count, #{sites := Sites}) ->
    Dropped = min(Count, Sites),
    {ok, Deleted} = rpc(B, drop_streams, [[emqx_redis_demo_ds_data:site(G) || G <- lists:seq(0, Dropped - 1)]]),
    say("DROP_DURABLE: deleted the ~b durable message streams of ~b site(s) behind B's back; the checks must "
        "report the messages A had not delivered before its last commit lost", [Deleted, Dropped]).

%%--------------------------------------------------------------------
%% The verdict

%% @doc The table's row: `{Name, Expected, Verdicts}'.
-spec row(map()) -> {string(), non_neg_integer(), [ok | lost | wrong]}.
row(#{durable := #{judged := #{expected := Expected, verdicts := Verdicts}}}) ->
    {"durable messages", Expected, Verdicts}.

%% @doc The lines under the table.
-spec print(map()) -> ok.
print(#{durable := #{judged := J}}) ->
    #{twice := Twice, acked := Acked, unanswered := Unanswered, unanswered_delivered := UnansweredDelivered,
      resumed := Resumed, clients := Clients, commits := {MinCommits, MaxCommits}, a_errors := AErrors,
      b_errors := BErrors} = J,
    io:format("  ~-24s ~10b   by A after the client's last commit, and again by B on resume (QoS 1 allows it)~n",
        ["delivered twice", Twice]),
    io:format("  ~-24s ~10b   batches acknowledged before A was killed; ~b messages of the ~b unanswered batch(es) "
        "delivered (allowed, not expected)~n",
        ["durable stream", Acked, UnansweredDelivered, Unanswered]),
    io:format("  ~-24s ~10b   of ~b resumed by B from their last commit (A had committed ~b to ~b times each); "
        "errors: ~b on A, ~b on B~n~n",
        ["durable sessions", Resumed, Clients, MinCommits, MaxCommits, AErrors, BErrors]),
    ok.

%% Per client, the verdict of each (client, message) pair expected, and
%% `wrong' for each delivery that should not have happened.
judge(#{plan := Plan, clients := Clients, a := A, resumed := Resumed}) ->
    #{persisted := Persisted, deliveries := Deliveries, commits := Commits, read_errors := ReadErrors} = A,
    Acked = lists:sort([B || {B, {ok, _}} <- maps:to_list(Persisted)]),
    %% A's answer of the next batch never came, and failed calls may have
    %% stored some of their messages: messages of these batches may be
    %% delivered, and need not be.
    Unanswered = [B || {B, {error, _}} <- maps:to_list(Persisted)] ++ [lists:max([0 | maps:keys(Persisted)]) + 1],
    Expected = lists:append([emqx_redis_demo_ds_data:batch(B, Plan) || B <- Acked]),
    Known = maps:from_list([{Id, M} || #{id := Id} = M <- Expected ++ lists:append([emqx_redis_demo_ds_data:batch(B, Plan) || B <- Unanswered])]),
    ByLevel = maps:groups_from_list(fun(#{topic := T}) -> emqx_redis_demo_ds_data:first_level(T) end, Expected),
    ResumedOf = maps:from_list([{I, R} || #{i := I} = R <- Resumed]),
    PerClient = [
        judge_client(I, Plan, Known, ByLevel, Expected, maps:get(I, Deliveries, []), maps:get(I, ResumedOf, none))
     || I <- Clients
    ],
    CommitCounts = [length(maps:get(I, Commits, [])) || I <- Clients],
    #{
        expected => lists:sum([E || #{expected := E} <- PerClient]),
        verdicts => lists:append([V || #{verdicts := V} <- PerClient]),
        twice => lists:sum([T || #{twice := T} <- PerClient]),
        unanswered_delivered => lists:sum([U || #{unanswered_delivered := U} <- PerClient]),
        acked => length(Acked),
        unanswered => length(Unanswered),
        resumed => length([ok || #{commit := ok} <- Resumed]),
        clients => length(Clients),
        commits => {lists:min([?MAX_BATCHES | CommitCounts]), lists:max([0 | CommitCounts])},
        a_errors =>
            length(ReadErrors) + length([E || Cs <- maps:values(Commits), {_, {error, _} = E} <- Cs]),
        b_errors => lists:sum([length(E) || #{errors := E} <- PerClient])
    }.

judge_client(I, Plan, Known, ByLevel, AllExpected, Tagged, Resumed) ->
    Filters = emqx_redis_demo_ds_data:filters(I, Plan),
    Wanted = [
        Id
     || F <- Filters,
        #{id := Id, topic := T} <- candidates(F, ByLevel, AllExpected),
        emqx_redis_demo_data:matches(T, F)
    ],
    #{checkpoint := Checkpoint, delivered := ByB, errors := Errors, commit := Commit} =
        case Resumed of
            none -> #{checkpoint => none, delivered => [], errors => [not_resumed], commit => none};
            _ -> Resumed
        end,
    %% A's deliveries after the last commit B found: B delivers them again.
    {Covered, After} = lists:partition(fun({Tag, _}) -> is_integer(Checkpoint) andalso Tag < Checkpoint end, Tagged),
    [ByACovered, ByAAfter] = [lists:append([Msgs || {_, Msgs} <- Part]) || Part <- [Covered, After]],
    Valid = fun(M) -> is_valid(M, Known, Filters) end,
    Delivered = sets:from_list([Id || #{id := Id} = M <- ByACovered ++ ByB, Valid(M)], [{version, 2}]),
    WantedSet = sets:from_list(Wanted, [{version, 2}]),
    Twice = sets:size(sets:intersection(ids(ByAAfter), ids(ByB))),
    Wrong =
        length([M || M <- ByACovered ++ ByAAfter ++ ByB, not Valid(M)]) +
            duplicates(ByACovered ++ ByAAfter) + duplicates(ByB) +
            sets:size(sets:intersection(ids(ByACovered), ids(ByB))) +
            %% B must have saved the resumed checkpoint.
            length([x || Commit =/= ok]),
    #{
        expected => length(Wanted),
        verdicts =>
            [
                case sets:is_element(Id, Delivered) of
                    true -> ok;
                    false -> lost
                end
             || Id <- Wanted
            ] ++ lists:duplicate(Wrong, wrong),
        twice => Twice,
        unanswered_delivered => sets:size(sets:subtract(Delivered, WantedSet)),
        errors => Errors
    }.

%% The messages that can match `Filter': those of its first level, or all.
candidates(Filter, ByLevel, All) ->
    case emqx_redis_demo_ds_data:first_level(Filter) of
        Wild when Wild =:= <<"+">>; Wild =:= <<"#">> -> All;
        Level -> maps:get(Level, ByLevel, [])
    end.

%% A message that was persisted (or may have been), unchanged, for a
%% filter of the client.
is_valid(#{id := Id, topic := Topic} = M, Known, Filters) ->
    maps:get(Id, Known, none) =:= M andalso lists:any(fun(F) -> emqx_redis_demo_data:matches(Topic, F) end, Filters);
is_valid(_, _, _) ->
    false.

ids(Msgs) -> sets:from_list([maps:get(id, M, none) || M <- Msgs], [{version, 2}]).

duplicates(Msgs) -> length(Msgs) - sets:size(ids(Msgs)).

%%--------------------------------------------------------------------
%% The collector: what A reports, kept here.

collector(A, Clients) ->
    true = erlang:monitor_node(A, true),
    collect(A, #{
        persisted => #{},
        deliveries => #{},
        commits => #{},
        read_errors => [],
        finished => false,
        down => false,
        checkpoints => maps:from_keys(Clients, 0),
        %% The checkpoint tag of each client's latest delivery.
        delivered_after => maps:from_keys(Clients, -1)
    }).

collect(A, S) ->
    receive
        {call, From, Ref, {persisted, B, Result}} ->
            From ! {Ref, ok},
            collect(A, S#{persisted := (maps:get(persisted, S))#{B => Result}});
        {call, From, Ref, sync} ->
            From ! {Ref, ok},
            collect(A, S);
        {delivered, I, Tag, Msgs} ->
            collect(A, S#{
                deliveries := prepend(I, {Tag, Msgs}, maps:get(deliveries, S)),
                delivered_after := (maps:get(delivered_after, S))#{I => Tag}
            });
        {committed, I, Checkpoint, Result} ->
            Checkpoints = maps:get(checkpoints, S),
            collect(A, S#{
                commits := prepend(I, {Checkpoint, Result}, maps:get(commits, S)),
                checkpoints := Checkpoints#{I => max(Checkpoint, maps:get(I, Checkpoints, 0))}
            });
        {read_error, I, Error} ->
            collect(A, S#{read_errors := [{I, Error} | maps:get(read_errors, S)]});
        {finished, Max} ->
            collect(A, S#{finished := Max});
        {progress, From} ->
            #{persisted := P, checkpoints := C, delivered_after := After, down := Down} = S,
            Acked = length([ok || {ok, _} <- maps:values(P)]),
            %% Clients with no delivery since their last commit.
            Waiting = length([I || {I, Checkpoint} <- maps:to_list(C), maps:get(I, After) < Checkpoint]),
            From ! {progress, self(), Acked, lists:min([?WARM_COMMITS | maps:values(C)]), Waiting, Down},
            collect(A, S);
        {nodedown, A} ->
            collect(A, S#{down := true});
        {result, From} when map_get(down, S) ->
            %% The reports arrive in the order A sent them; A's deliveries
            %% are kept in that order.
            From ! {result, self(), S#{deliveries := maps:map(fun(_, L) -> lists:reverse(L) end, maps:get(deliveries, S))}}
    end.

prepend(Key, Value, Map) ->
    Map#{Key => [Value | maps:get(Key, Map, [])]}.

%%--------------------------------------------------------------------

rpc(Node, Fun, Args) ->
    erpc:call(Node, emqx_redis_demo_ds_node, Fun, Args, ?RPC_TIMEOUT).

now_ms() -> erlang:monotonic_time(millisecond).
