%% @doc The demo's verdict: what node B found after A died, compared with
%% what the controller computes itself from the client indexes. Each check
%% gives one verdict per expected item (ok, lost or wrong), and `wrong' for
%% anything found that was not expected.
-module(emqx_redis_demo_report).

-export([print/1, seconds/1]).

-import(emqx_redis_demo_data, [online/1]).

%% @doc Prints the table of the takeover `R' (as the controller gathered
%% it); returns how many items were lost or wrong.
-spec print(map()) -> non_neg_integer().
print(#{n := N} = R) ->
    Rows = [
        {"clients (leases)", N, lease_verdicts(R)},
        {"sessions", N, session_verdicts(R)},
        {"queued QoS 1 messages", expected_messages(N), message_verdicts(R)},
        emqx_redis_demo_ds:row(R),
        {"registry entries", length([I || I <- lists:seq(1, N), online(I)]), registry_verdicts(R)},
        {"routes", route_count(maps:get(route_table, R)), route_verdicts(R)},
        {"match_routes answers", length(maps:get(topics, R)), match_verdicts(R)}
    ],
    io:format("~n  ~-24s ~10s ~10s ~8s ~8s~n", ["", "expected", "ok", "lost", "wrong"]),
    Bad = lists:sum([
        begin
            [Ok, Lost, Wrong] = [length([V || V <- Verdicts, V =:= Kind]) || Kind <- [ok, lost, wrong]],
            io:format("  ~-24s ~10b ~10b ~8b ~8b~n", [Name, Expected, Ok, Lost, Wrong]),
            Lost + Wrong
        end
     || {Name, Expected, Verdicts} <- Rows
    ]),
    #{takeover_ms := Takeover, lease_wait_ms := Wait, down_ms := Down, reaped_ms := Reaped, reap := Reap} = R,
    io:format("  ~-24s ~10s   (~s until B saw A down, ~s until A was reaped, ~s of work)~n",
        ["time to take over", seconds(Takeover), seconds(Down), seconds(Reaped), seconds(Takeover - Wait)]),
    io:format("  ~-24s ~10s   by B, ~s after A's nodedown: ~b registry entries, ~b routes, ~b leases released~n",
        ["reaping A", seconds(maps:get(took_ms, Reap)), seconds(Reaped - Down), maps:get(channels, Reap),
         maps:get(routes, Reap), maps:get(leases, Reap)]),
    io:format("  ~-24s ~10b of ~b still held by A when B first tried; B's fence above A's and a "
        "late write with A's fence refused for ~b~n~n",
        ["leases", maps:get(held_by_a, R), N, length([ok || ok <- lease_verdicts(R)])]),
    emqx_redis_demo_ds:print(R),
    Bad.

%% B holds the lease with a fence above A's, and a save with A's fence is refused.
lease_verdicts(#{n := N, fences := Fences, leases := Leases, clients := Clients}) ->
    [
        case {maps:get(I, Leases, missing), maps:get(I, Clients, #{})} of
            {{ok, Fence}, #{late_write := {error, stale_fence}}} when Fence > map_get(I, Fences) -> ok;
            {{ok, _}, _} -> wrong;
            _ -> lost
        end
     || I <- lists:seq(1, N)
    ].

%% The session is what A saved, B saved it again, Redis says B has it now;
%% and count_sessions() counts exactly the sessions B found.
session_verdicts(#{n := N, b := B, clients := Clients, seen := #{clients := Seen, session_count := Count}}) ->
    Info = maps:from_list([{I, SessionInfo} || {I, _, SessionInfo} <- Seen]),
    %% count_sessions() counts the sessions there are, found or not.
    Expected = {ok, length([ok || #{session := {ok, _}} <- maps:values(Clients)])},
    [
        case maps:get(I, Clients, #{session => missing}) of
            #{session := {ok, S}, saved := ok} ->
                case without_checkpoint(S) =:= emqx_redis_demo_data:session(I) andalso maps:get(I, Info, none) of
                    {ok, #{node := B}} -> ok;
                    _ -> wrong
                end;
            #{session := {error, not_found}} ->
                lost;
            #{session := missing} ->
                lost;
            _ ->
                wrong
        end
     || I <- lists:seq(1, N)
    ] ++ [wrong || Count =/= Expected].

%% A durable client's session also holds its checkpoint (judged in the
%% durable messages row).
without_checkpoint(#{durable := _} = S) -> maps:remove(durable, S);
without_checkpoint(S) -> S.

expected_messages(N) ->
    lists:sum([length(emqx_redis_demo_data:messages(I)) || I <- lists:seq(1, N)]).

message_verdicts(#{n := N, clients := Clients}) ->
    lists:append([
        queue_verdicts(emqx_redis_demo_data:messages(I), maps:get(messages, maps:get(I, Clients, #{}), missing))
     || I <- lists:seq(1, N)
    ]).

%% Each expected message is there, unchanged and in publish order; nothing else is.
queue_verdicts(Expected, {ok, Got}) ->
    ExpectedIds = [Id || #{id := Id} <- Expected],
    GotById = maps:from_list([{Id, M} || #{id := Id} = M <- Got]),
    InOrder = [Id || #{id := Id} <- Got, lists:member(Id, ExpectedIds)] =:=
        [Id || Id <- ExpectedIds, maps:is_key(Id, GotById)],
    [
        case maps:find(Id, GotById) of
            error -> lost;
            {ok, M} when M =:= E, InOrder -> ok;
            {ok, _} -> wrong
        end
     || #{id := Id} = E <- Expected
    ] ++ [wrong || M <- Got, not lists:member(maps:get(id, M, none), ExpectedIds)];
queue_verdicts(Expected, _Error) ->
    [lost || _ <- Expected].

%% Online clients: reaped from A by the time B took them over (B found no
%% entry), on B after; offline ones: in neither. The reap of A removed
%% exactly A's entries (one per online client).
registry_verdicts(#{n := N, b := B, clients := Clients, seen := #{clients := Seen}} = R) ->
    After = maps:from_list([{I, Channel} || {I, Channel, _} <- Seen]),
    Verdicts = [
        case {online(I), channel_before(I, Clients), maps:get(I, After, missing)} of
            {true, {error, not_found}, {ok, B}} -> ok;
            {true, _, {error, not_found}} -> lost;
            {true, _, _} -> wrong;
            {false, {error, not_found}, {error, not_found}} -> none;
            {false, _, _} -> wrong
        end
     || I <- lists:seq(1, N)
    ],
    Online = length([I || I <- lists:seq(1, N), online(I)]),
    [V || V <- Verdicts, V =/= none] ++
        [wrong || maps:get(registry_removed, R) =/= {ok, Online}] ++
        [wrong || _ <- maps:get(register_errors, R)].

channel_before(I, Clients) ->
    maps:get(channel, maps:get(I, Clients, #{}), missing).

route_count(Table) ->
    lists:sum([length(Dests) || Dests <- maps:values(Table)]).

%% Every route of the sessions is there for B, none for A, no others;
%% the reap of A removed exactly A's routes.
route_verdicts(#{route_table := Table, seen := #{routes := Seen}} = R) ->
    Found = maps:from_list([{F, Dests} || {F, {ok, Dests}} <- Seen]),
    Expected = [
        case lists:member(Dest, maps:get(Filter, Found, [])) of
            true -> ok;
            false -> lost
        end
     || {Filter, Dests} <- maps:to_list(Table), Dest <- Dests
    ],
    Extra = [
        wrong
     || {Filter, Dests} <- maps:to_list(Found), Dest <- Dests, not lists:member(Dest, maps:get(Filter, Table, []))
    ],
    Expected ++ Extra ++
        [wrong || {_, {error, _}} <- Seen] ++
        [wrong || maps:get(routes_removed, R) =/= {ok, route_count(Table)}].

%% match_routes on B gives the dests computed here from the route table.
match_verdicts(#{route_table := Table, topics := Topics, seen := #{matches := Seen}}) ->
    Answers = maps:from_list(Seen),
    [
        case maps:get(Topic, Answers, missing) of
            {ok, Dests} ->
                Got = lists:sort(Dests),
                case {Got =:= Want, Got -- Want} of
                    {true, _} -> ok;
                    {false, []} -> lost;
                    {false, _} -> wrong
                end;
            _ ->
                lost
        end
     || {Topic, Want} <- emqx_redis_demo_data:expected_matches(Topics, Table)
    ].

-spec seconds(integer()) -> string().
seconds(Ms) -> lists:flatten(io_lib:format("~.2f s", [Ms / 1000])).
