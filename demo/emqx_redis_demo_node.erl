%% @doc What nodes A and B do in the demo; the controller calls these
%% functions on them by RPC. Each returns what Redis answered, unjudged:
%% the controller compares it with what it expects.
%%
%% Work on many clients runs in parallel worker processes, chunk by chunk;
%% after each chunk a worker sends `{done, Count}' to the controller's
%% progress process.
-module(emqx_redis_demo_node).

-export([start/1, load/2, renew/3, acquire/3, take_over/3, restore_registry/2, restore_routes/1]).
-export([drop/1, inspect/3, watch/1, last_reap/0]).

%% Also for the durable sessions' work (emqx_redis_demo_ds_node).
-export([parallel/3]).

-import(emqx_redis_demo_data, [client_id/1]).

-define(WORKERS, 32).
-define(CHUNK, 50).
%% The lease a client takes when it connects to A: long enough for A to
%% load every client; A then renews them all to the demo's lease duration.
-define(CONNECT_LEASE_MS, 600000).

-spec start(map()) -> ok | {error, term()}.
start(Config) ->
    emqx_redis_storage:start(Config).

%%--------------------------------------------------------------------
%% Node A, while alive

%% @doc Clients 1..N connect to this node: each takes its takeover lease,
%% saves its session with the fence it got, registers its channel if it is
%% online and has its queued QoS 1 messages stored; the routes of its
%% subscriptions are added in batches. Returns `{Fences, Errors, RoutesAdded}'.
-spec load(pos_integer(), pid()) -> {[{pos_integer(), emqx_redis_session:fence()}], [term()], non_neg_integer()}.
load(N, Progress) ->
    Results = parallel(lists:seq(1, N), fun load_chunk/1, Progress),
    {
        [{I, Fence} || {I, {ok, Fence}} <- Results, is_integer(I)],
        [Error || {_, {error, _} = Error} <- Results],
        lists:sum([Added || {routes, {ok, Added}} <- Results])
    }.

%% `[{I, Result}]' for the clients, and `{routes, Result}' for their routes.
load_chunk(Chunk) ->
    Clients = [{I, load_client(I)} || I <- Chunk],
    Routes = lists:append([emqx_redis_demo_data:routes(I, node()) || I <- Chunk]),
    [{routes, emqx_redis_router:add_routes(Routes)} | Clients].

load_client(I) ->
    Id = client_id(I),
    case emqx_redis_session:acquire_lease(Id, node(), ?CONNECT_LEASE_MS) of
        {ok, Fence} ->
            Session = emqx_redis_demo_data:session(I),
            Writes = [
                {session, emqx_redis_session:save_session(Id, Session, #{fence => Fence})},
                {messages, emqx_redis_message:store_messages(Id, emqx_redis_demo_data:messages(I))}
                | [{channel, emqx_redis_registry:register_channel(Id, node())} || emqx_redis_demo_data:online(I)]
            ],
            case [{What, Error} || {What, {error, _} = Error} <- Writes] of
                [] -> {ok, Fence};
                Failed -> {error, {Id, Failed}}
            end;
        {error, Reason} ->
            {error, {Id, [{lease, Reason}]}}
    end.

%% @doc Renews the leases this node holds for `LeaseMs', as a live node
%% keeps doing. Returns the errors.
-spec renew([{pos_integer(), emqx_redis_session:fence()}], pos_integer(), pid()) -> [term()].
renew(Fences, LeaseMs, Progress) ->
    Renew = fun(Chunk) ->
        [{I, emqx_redis_session:renew_lease(client_id(I), Fence, LeaseMs)} || {I, Fence} <- Chunk]
    end,
    [E || {_, {error, _}} = E <- parallel(Fences, Renew, Progress)].

%%--------------------------------------------------------------------
%% Node B, taking over

%% @doc Tries once to take the leases of clients `Indices' for this node:
%% `[{I, {ok, Fence} | {error, Reason}}]'.
-spec acquire([pos_integer()], pos_integer(), pid()) -> [{pos_integer(), {ok, integer()} | {error, term()}}].
acquire(Indices, LeaseMs, Progress) ->
    Acquire = fun(Chunk) ->
        [{I, emqx_redis_session:acquire_lease(client_id(I), node(), LeaseMs)} || I <- Chunk]
    end,
    parallel(Indices, Acquire, Progress).

%% @doc For each `{I, OldFence, NewFence}': a late write that carries the
%% dead node's old fence (as a zombie of it would send), then the session,
%% its queued messages and its registry entry as Redis has them, and the
%% session saved again under this node's fence.
-spec take_over([{pos_integer(), integer(), integer()}], node(), pid()) -> [map()].
take_over(Plan, DeadNode, Progress) ->
    parallel(Plan, fun(Chunk) -> [take_over_client(P, DeadNode) || P <- Chunk] end, Progress).

take_over_client({I, OldFence, NewFence}, DeadNode) ->
    Id = client_id(I),
    Late = emqx_redis_session:save_session(Id, {late_write, DeadNode}, #{fence => OldFence, node => DeadNode}),
    Session = emqx_redis_session:load_session(Id),
    Saved =
        case Session of
            {ok, S} -> emqx_redis_session:save_session(Id, S, #{fence => NewFence});
            {error, _} -> not_loaded
        end,
    #{
        i => I,
        late_write => Late,
        session => Session,
        messages => emqx_redis_message:get_messages(Id, 0, 1000),
        channel => emqx_redis_registry:lookup_channel(Id),
        saved => Saved
    }.

%% @doc Registers here the clients that were connected to the dead node
%% (they reconnect to this node); its own entries were reaped. Returns the errors.
-spec restore_registry([pos_integer()], pid()) -> [term()].
restore_registry(Reconnecting, Progress) ->
    Register = fun(Chunk) ->
        [{I, emqx_redis_registry:register_channel(client_id(I), node())} || I <- Chunk]
    end,
    [E || {_, {error, _}} = E <- parallel(Reconnecting, Register, Progress)].

%% @doc Adds `Routes' (this node's routes for the subscriptions of the
%% sessions it took over); the dead node's were reaped.
-spec restore_routes([{binary(), emqx_redis_router:dest()}]) -> {ok, non_neg_integer()} | {error, term()}.
restore_routes(Routes) ->
    emqx_redis_router:add_routes(Routes).

%% @doc `Controller' gets the membership events this node sees
%% (`{emqx_redis_nodes, nodeup | nodedown, Node}').
-spec watch(pid()) -> ok | {error, term()}.
watch(Controller) ->
    Caller = self(),
    Watcher = spawn(fun() ->
        Caller ! {self(), emqx_redis_nodes:subscribe()},
        forward(Controller)
    end),
    receive
        {Watcher, Subscribed} -> Subscribed
    end.

forward(Controller) ->
    receive
        {emqx_redis_nodes, _, _} = Event ->
            Controller ! Event,
            forward(Controller)
    end.

%% @doc The last reap this node did (see emqx_redis_nodes:membership/0).
-spec last_reap() -> map() | undefined | {error, term()}.
last_reap() ->
    case emqx_redis_nodes:membership() of
        #{last_reap := Last} -> Last;
        {error, _} = Error -> Error
    end.

%% @doc Deletes the sessions and queued messages of clients `Indices':
%% the loss the demo's checks must catch (env DROP_SESSIONS).
-spec drop([pos_integer()]) -> ok.
drop(Indices) ->
    lists:foreach(
        fun(I) ->
            ok = emqx_redis_session:delete_session(client_id(I)),
            ok = emqx_redis_message:delete_messages(client_id(I))
        end,
        Indices
    ).

%%--------------------------------------------------------------------
%% Node B, afterwards: what it reads now

%% @doc The registry entry and session info of clients 1..N, the session
%% count, every route filter with its dests, and the dests matching `Topics'.
-spec inspect(pos_integer(), [binary()], pid()) -> map().
inspect(N, Topics, Progress) ->
    Clients = parallel(
        lists:seq(1, N),
        fun(Chunk) ->
            [
                {I, emqx_redis_registry:lookup_channel(client_id(I)), emqx_redis_session:session_info(client_id(I))}
             || I <- Chunk
            ]
        end,
        Progress
    ),
    Filters =
        case emqx_redis_router:topics() of
            {ok, Fs} -> Fs;
            {error, _} -> []
        end,
    Lookup = fun(Chunk) -> [{F, emqx_redis_router:lookup_routes(F)} || F <- Chunk] end,
    #{
        clients => Clients,
        session_count => emqx_redis_session:count_sessions(),
        filters => Filters,
        routes => parallel(Filters, Lookup, Progress),
        matches => [{T, emqx_redis_router:match_routes(T)} || T <- Topics]
    }.

%%--------------------------------------------------------------------

%% Runs `Fun' on chunks of `Items' in ?WORKERS processes; `Fun' returns a
%% list for each chunk, and these lists come back appended (in no
%% particular order).
-spec parallel([Item], fun(([Item]) -> [Result]), pid()) -> [Result].
parallel(Items, Fun, Progress) ->
    Parent = self(),
    Workers = [
        spawn_monitor(fun() -> Parent ! {self(), lists:append([run_chunk(Fun, C, Progress) || C <- Slice])} end)
     || Slice <- deal(chunks(Items), ?WORKERS), Slice =/= []
    ],
    lists:append([
        receive
            {Pid, Results} ->
                erlang:demonitor(Ref, [flush]),
                Results;
            {'DOWN', Ref, process, Pid, Reason} ->
                error({worker_crashed, Reason})
        end
     || {Pid, Ref} <- Workers
    ]).

run_chunk(Fun, Chunk, Progress) ->
    Result = Fun(Chunk),
    Progress ! {done, length(Chunk)},
    Result.

chunks([]) ->
    [];
chunks(Items) when length(Items) =< ?CHUNK ->
    [Items];
chunks(Items) ->
    {Chunk, Rest} = lists:split(?CHUNK, Items),
    [Chunk | chunks(Rest)].

deal(Chunks, N) ->
    Numbered = lists:enumerate(0, Chunks),
    [[C || {K, C} <- Numbered, K rem N =:= J] || J <- lists:seq(0, N - 1)].
