%% @doc This node's membership in Redis (see emqx_redis_nodes): it joins at
%% start, renews its heartbeat every `heartbeat_interval', tells subscribers
%% which nodes came and went, reaps dead nodes (when it wins their reap
%% lease), and joins again when it finds itself declared dead.
-module(emqx_redis_nodes_server).

-behaviour(gen_server).

-export([start_link/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(SERVER, ?MODULE).

-record(state, {
    client :: emqx_redis_storage_client:t(),
    node :: binary(),
    interval :: pos_integer(),
    ttl :: pos_integer(),
    reap_lease :: pos_integer(),
    %% undefined while not a member (not joined yet, or declared dead).
    incarnation :: integer() | undefined,
    %% Renewed within ttl by our own clock, counted from when the renewal
    %% was sent: false as soon as others may have declared us dead.
    alive = false :: boolean(),
    renewed_at :: integer() | undefined,
    renewed_mono :: integer() | undefined,
    %% The live members as last seen: node name => incarnation.
    live = #{} :: #{binary() => integer()},
    subscribers = #{} :: #{pid() => reference()},
    hook :: undefined | fun(() -> term()) | {module(), atom(), list()},
    %% Reaps this node runs now: node name => pid.
    reaping = #{} :: #{binary() => pid()},
    reaps = 0 :: non_neg_integer(),
    last_reap :: map() | undefined
}).

-spec start_link(emqx_redis_storage_client:t(), map()) -> {ok, pid()} | {error, term()}.
start_link(Client, Config) ->
    gen_server:start_link({local, ?SERVER}, ?MODULE, {Client, Config}, []).

-spec init({emqx_redis_storage_client:t(), map()}) -> {ok, #state{}}.
init({Client, #{heartbeat_interval := Interval, ttl := Ttl, reap_lease := ReapLease}}) ->
    process_flag(trap_exit, true),
    State0 = #state{
        client = Client,
        node = atom_to_binary(node()),
        interval = Interval,
        ttl = Ttl,
        reap_lease = ReapLease
    },
    %% Joined before the application's start returns, when Redis allows:
    %% what the node writes next is then never taken for an earlier
    %% incarnation's leftovers. Else it keeps trying on every heartbeat.
    State = join(State0, erlang:monotonic_time(millisecond) + Ttl + ReapLease),
    tick(State),
    {ok, State}.

-spec handle_call(term(), {pid(), term()}, #state{}) -> {reply, term(), #state{}}.
handle_call({subscribe, Pid}, _From, #state{subscribers = Subs} = State) ->
    case Subs of
        #{Pid := _} -> {reply, ok, State};
        _ -> {reply, ok, State#state{subscribers = Subs#{Pid => erlang:monitor(process, Pid)}}}
    end;
handle_call({unsubscribe, Pid}, _From, #state{subscribers = Subs} = State) ->
    case maps:take(Pid, Subs) of
        {Ref, Rest} ->
            erlang:demonitor(Ref, [flush]),
            {reply, ok, State#state{subscribers = Rest}};
        error ->
            {reply, ok, State}
    end;
handle_call({set_rejoin_hook, Hook}, _From, State) ->
    {reply, ok, State#state{hook = Hook}};
handle_call(membership, _From, State) ->
    {reply, membership(State), State};
handle_call(reap_lease, _From, #state{reap_lease = ReapLease} = State) ->
    {reply, ReapLease, State};
handle_call(_Other, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(heartbeat, State0) ->
    State = heartbeat(State0),
    tick(State),
    {noreply, State};
handle_info({reaped, Node, Result}, #state{reaping = Reaping} = State) ->
    {noreply, reaped(Node, Result, State#state{reaping = maps:remove(Node, Reaping)})};
handle_info({'DOWN', Ref, process, Pid, _}, #state{subscribers = Subs} = State) ->
    case Subs of
        #{Pid := Ref} -> {noreply, State#state{subscribers = maps:remove(Pid, Subs)}};
        _ -> {noreply, State}
    end;
handle_info({'EXIT', Pid, Reason}, #state{reaping = Reaping} = State) ->
    %% A reaper that crashed: the next heartbeat tries again.
    case [Node || {Node, P} <- maps:to_list(Reaping), P =:= Pid] of
        [Node] when Reason =/= normal ->
            report(warning, #{msg => <<"node_reap_failed">>, node => Node, reason => text(Reason)}),
            {noreply, State#state{reaping = maps:remove(Node, Reaping)}};
        _ ->
            {noreply, State}
    end;
handle_info(_Other, State) ->
    {noreply, State}.

%% A graceful stop ends the heartbeat at once: the others see this node
%% leave at their next heartbeat, and one of them reaps what it left.
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, #state{incarnation = undefined}) ->
    ok;
terminate(_Reason, #state{client = Client, node = Node, incarnation = Inc}) ->
    _ = emqx_redis_storage_client:call(Client, node_leave, [Node, Inc]),
    report(info, #{msg => <<"node_left">>, node => Node, incarnation => Inc}),
    ok.

%%--------------------------------------------------------------------

tick(#state{interval = Interval}) ->
    _ = erlang:send_after(Interval, self(), heartbeat),
    ok.

%% Joins, reaping an earlier incarnation of this name first, until
%% `Deadline' (monotonic ms) at the latest.
join(#state{client = Client, node = Node, ttl = Ttl, reap_lease = ReapLease} = State, Deadline) ->
    Sent = erlang:monotonic_time(millisecond),
    case emqx_redis_storage_client:call(Client, node_join, [Node, Ttl]) of
        {ok, {joined, Inc}} ->
            report(info, #{msg => <<"node_joined">>, node => Node, incarnation => Inc}),
            renewed(State#state{incarnation = Inc}, Sent);
        {ok, {must_reap, Earlier}} ->
            case emqx_redis_nodes_reap:run(Client, Node, Earlier, ReapLease) of
                {ok, Counts} ->
                    report(info, (log_counts(Counts))#{
                        msg => <<"node_reaped">>, node => Node, incarnation => Earlier, by => Node
                    }),
                    join(State, Deadline);
                {error, gone} ->
                    join(State, Deadline);
                {error, Reason} ->
                    retry_join(State, Deadline, Reason)
            end;
        {error, Reason} ->
            retry_join(State, Deadline, Reason)
    end.

retry_join(#state{interval = Interval} = State, Deadline, Reason) ->
    case erlang:monotonic_time(millisecond) + Interval < Deadline of
        true ->
            timer:sleep(Interval),
            join(State, Deadline);
        false ->
            report(warning, #{msg => <<"node_join_failed">>, node => State#state.node, reason => text(Reason)}),
            State
    end.

renewed(State, Sent) ->
    State#state{alive = true, renewed_mono = Sent, renewed_at = erlang:system_time(millisecond)}.

heartbeat(#state{incarnation = undefined} = State0) ->
    %% Not a member: declared dead, or the first join failed.
    State = join(State0, erlang:monotonic_time(millisecond)),
    case State#state.incarnation of
        undefined -> State;
        _ -> rejoined(State)
    end;
heartbeat(#state{client = Client, node = Node, incarnation = Inc, ttl = Ttl} = State) ->
    Sent = erlang:monotonic_time(millisecond),
    Res = emqx_redis_storage_client:res(Client),
    Call = fun(Ref) -> emqx_redis_storage_nif:node_heartbeat(Res, Ref, Node, Inc, Ttl) end,
    case emqx_redis_storage_client:wait(Call, heartbeat_wait(State, Sent)) of
        {ok, {true, View}} ->
            reap_dead(View, seen(View, renewed(State, Sent)));
        {ok, {false, View}} ->
            report(warning, #{
                msg => <<"node_declared_dead">>, node => Node, incarnation => Inc,
                reason => <<"its heartbeat expired or it was reaped: joining again">>
            }),
            heartbeat(seen(View, State#state{incarnation = undefined, alive = false}));
        {error, Reason} ->
            cannot_renew(Reason, State)
    end.

%% While alive, a heartbeat waits no longer than until ttl has passed since
%% the last renewal: then this node stops counting itself alive on time,
%% whatever the command timeout. Else it waits up to ttl for the answer.
heartbeat_wait(#state{alive = true, renewed_mono = Renewed, ttl = Ttl}, Now) ->
    max(1, Renewed + Ttl - Now);
heartbeat_wait(#state{ttl = Ttl}, _Now) ->
    Ttl.

%% Not renewed within ttl: others may have declared this node dead, so it
%% stops counting itself alive.
cannot_renew(Reason, #state{alive = true, renewed_mono = Renewed, ttl = Ttl, node = Node, live = Live} = State) ->
    case erlang:monotonic_time(millisecond) - Renewed >= Ttl of
        true ->
            report(warning, #{
                msg => <<"node_heartbeat_lost">>, node => Node, reason => text(Reason),
                detail => <<"not renewed within ttl: this node no longer counts itself alive">>
            }),
            ok = notify(nodedown, Node, State),
            State#state{alive = false, live = maps:remove(Node, Live)};
        false ->
            State
    end;
cannot_renew(_Reason, State) ->
    State.

%% After joining again: the hook puts back this node's routes and channels,
%% which were (or are being) reaped meanwhile.
rejoined(#state{hook = Hook, node = Node, incarnation = Inc} = State) ->
    report(warning, #{msg => <<"node_rejoined">>, node => Node, incarnation => Inc}),
    _ =
        case Hook of
            undefined -> ok;
            _ -> proc_lib:spawn(fun() -> run_hook(Hook) end)
        end,
    State.

run_hook(Hook) ->
    try
        case Hook of
            {M, F, A} -> apply(M, F, A);
            Fun -> Fun()
        end
    catch
        Class:Reason:Stack ->
            report(error, #{msg => <<"node_rejoin_hook_failed">>, reason => text({Class, Reason, Stack})})
    end.

%% The live members of `View': subscribers hear of each change.
seen({Now, Members}, #state{live = Before} = State) ->
    Live = maps:from_list([{Node, Inc} || {Node, Deadline, Inc} <- Members, Deadline > Now]),
    Down = [Node || {Node, Inc} <- maps:to_list(Before), maps:get(Node, Live, undefined) =/= Inc],
    Up = [Node || {Node, Inc} <- maps:to_list(Live), maps:get(Node, Before, undefined) =/= Inc],
    lists:foreach(fun(Node) -> notify(nodedown, Node, State) end, Down),
    lists:foreach(fun(Node) -> notify(nodeup, Node, State) end, Up),
    State#state{live = Live}.

notify(Event, NodeBin, #state{subscribers = Subs}) ->
    case emqx_redis_storage_terms:to_node(node, NodeBin) of
        {ok, Node} -> lists:foreach(fun(Pid) -> Pid ! {emqx_redis_nodes, Event, Node} end, maps:keys(Subs));
        {error, _} -> ok
    end.

%% Every dead member not being reaped here gets a reaper; the reap lease
%% in Redis decides which node's reaper does the work.
reap_dead({Now, Members}, #state{client = Client, reap_lease = Lease, reaping = Reaping} = State) ->
    Server = self(),
    New = maps:from_list([
        {Node, proc_lib:spawn_link(fun() ->
            Server ! {reaped, Node, emqx_redis_nodes_reap:run(Client, Node, Inc, Lease)}
        end)}
     || {Node, Deadline, Inc} <- Members, Deadline =< Now, not maps:is_key(Node, Reaping)
    ]),
    State#state{reaping = maps:merge(Reaping, New)}.

reaped(Node, {ok, Counts}, #state{reaps = Reaps} = State) ->
    report(info, (log_counts(Counts))#{msg => <<"node_reaped">>, node => Node, by => State#state.node}),
    Last = (log_counts(Counts))#{node => Node, at => erlang:system_time(millisecond)},
    State#state{reaps = Reaps + 1, last_reap = Last};
reaped(_Node, {error, gone}, State) ->
    State;
reaped(_Node, {error, alive}, State) ->
    State;
reaped(_Node, {error, {held, _}}, State) ->
    State;
reaped(Node, {error, Reason}, State) ->
    report(warning, #{msg => <<"node_reap_failed">>, node => Node, reason => text(Reason)}),
    State.

log_counts(Counts) ->
    maps:with([channels, routes, leases, took_ms, reaps], Counts).

membership(#state{} = S) ->
    #{
        node => binary_to_atom(S#state.node),
        incarnation => S#state.incarnation,
        alive => S#state.alive,
        last_renewed_at => S#state.renewed_at,
        heartbeat_interval => S#state.interval,
        ttl => S#state.ttl,
        live => lists:sort(maps:keys(S#state.live)),
        reaping => lists:sort(maps:keys(S#state.reaping)),
        reaps => S#state.reaps,
        last_reap => S#state.last_reap
    }.

report(Level, Report) ->
    emqx_redis_storage_log:report(Level, Report).

%% Report fields are text or numbers.
text(Term) ->
    iolist_to_binary(io_lib:format("~0p", [Term])).
