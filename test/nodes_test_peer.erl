%% @doc Runs on the peer nodes of emqx_redis_nodes_SUITE: starts the
%% application, records the membership events the node receives, and is
%% the rejoin hook that registers a node's channels and routes again.
-module(nodes_test_peer).

-export([start/1, events/0, rejoin/2, rejoins/0, register_all/2]).

-define(COLLECTOR, nodes_test_peer_events).

%% @doc Starts the application with `Config' and subscribes a collector
%% (which gets nothing when membership is off).
-spec start(map()) -> ok | {error, term()}.
start(Config) ->
    case emqx_redis_storage:start(Config) of
        ok ->
            Parent = self(),
            Pid = spawn(fun() ->
                register(?COLLECTOR, self()),
                _ = emqx_redis_nodes:subscribe(),
                Parent ! {self(), subscribed},
                collect([], 0)
            end),
            receive
                {Pid, subscribed} -> ok
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc `[{nodeup | nodedown, Node, SystemTimeMs}]', oldest first.
-spec events() -> [{atom(), node(), integer()}].
events() ->
    ask(events).

%% @doc How many times the rejoin hook ran.
-spec rejoins() -> non_neg_integer().
rejoins() ->
    ask(rejoins).

ask(What) ->
    Ref = make_ref(),
    ?COLLECTOR ! {What, self(), Ref},
    receive
        {Ref, Answer} -> Answer
    after 5000 -> error(collector_timeout)
    end.

collect(Events, Rejoins) ->
    receive
        {emqx_redis_nodes, Event, Node} ->
            collect([{Event, Node, erlang:system_time(millisecond)} | Events], Rejoins);
        rejoined ->
            collect(Events, Rejoins + 1);
        {events, From, Ref} ->
            From ! {Ref, lists:reverse(Events)},
            collect(Events, Rejoins);
        {rejoins, From, Ref} ->
            From ! {Ref, Rejoins},
            collect(Events, Rejoins)
    end.

%% @doc This node's channels and routes, registered in Redis.
-spec register_all([binary()], [binary()]) -> ok.
register_all(ClientIds, Filters) ->
    [ok = emqx_redis_registry:register_channel(Id, node()) || Id <- ClientIds],
    [ok = emqx_redis_router:add_route(F, node()) || F <- Filters],
    ok.

%% @doc The rejoin hook: registers them again, then counts the call.
-spec rejoin([binary()], [binary()]) -> ok.
rejoin(ClientIds, Filters) ->
    ok = register_all(ClientIds, Filters),
    ?COLLECTOR ! rejoined,
    ok.
