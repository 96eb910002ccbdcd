%% @doc Node liveness in Redis: which nodes run the application, and what
%% happens to a node's state when it dies.
%%
%% Every node that runs the application (config section `nodes', on by
%% default; a node must be distributed, `nonode@nohost' never joins) is a
%% member with a heartbeat renewed every `heartbeat_interval' and a deadline
%% `ttl' after it. A member whose deadline passes is dead: every node sees
%% it go within `ttl' plus one heartbeat, and exactly one live node, the one
%% that takes its reap lease in Redis, removes its registry entries and
%% routes and releases the takeover leases it held. A node that restarts
%% under the same name is a new incarnation, and joins only once the old one
%% is reaped. See the README for the whole story.
-module(emqx_redis_nodes).

-export([live_nodes/0, live_nodes/1, subscribe/0, unsubscribe/0, set_rejoin_hook/1]).
-export([membership/0, reap/2, reap/3]).

-type client() :: emqx_redis_storage_client:t().
-type hook() :: fun(() -> term()) | {module(), atom(), list()} | undefined.
-export_type([hook/0]).

-define(SERVER, emqx_redis_nodes_server).
-define(DEFAULT_REAP_LEASE, 10000).

%% @doc The live members, as Redis has them now: the same answer on every node.
-spec live_nodes() -> {ok, [node()]} | {error, term()}.
live_nodes() ->
    emqx_redis_storage_client:with_default(fun live_nodes/1).

-spec live_nodes(client()) -> {ok, [node()]} | {error, term()}.
live_nodes(Client) ->
    emqx_redis_storage_client:checked(Client, [], fun() ->
        case emqx_redis_storage_client:call(Client, node_view, []) of
            {ok, {Now, Members}} ->
                to_nodes([Node || {Node, Deadline, _} <- Members, Deadline > Now], []);
            {error, _} = Error ->
                Error
        end
    end).

to_nodes([], Acc) ->
    {ok, lists:sort(Acc)};
to_nodes([Bin | Rest], Acc) ->
    case emqx_redis_storage_terms:to_node(node, Bin) of
        {ok, Node} -> to_nodes(Rest, [Node | Acc]);
        {error, _} = Error -> Error
    end.

%% @doc The caller gets `{emqx_redis_nodes, nodeup, Node}' and
%% `{emqx_redis_nodes, nodedown, Node}' as nodes join, leave or die (a node
%% that restarts is seen going down and up), this node included: it goes
%% down in its own view when it cannot renew its heartbeat within `ttl'.
%% `{error, disabled}' when this node is no member (config `nodes.enable'
%% false, or not distributed).
-spec subscribe() -> ok | {error, not_started | disabled | timeout}.
subscribe() ->
    server_call({subscribe, self()}).

-spec unsubscribe() -> ok | {error, not_started | disabled | timeout}.
unsubscribe() ->
    server_call({unsubscribe, self()}).

%% @doc What to call (in a process of its own) when this node finds it was
%% declared dead while it could not reach Redis, and has joined again: its
%% routes and channels were reaped meanwhile, and the hook registers them
%% again. `undefined' removes it.
-spec set_rejoin_hook(hook()) -> ok | {error, {invalid_hook, term()} | not_started | disabled | timeout}.
set_rejoin_hook(Hook) ->
    case is_hook(Hook) of
        true -> server_call({set_rejoin_hook, Hook});
        false -> {error, {invalid_hook, Hook}}
    end.

is_hook(undefined) -> true;
is_hook(Fun) when is_function(Fun, 0) -> true;
is_hook({M, F, A}) when is_atom(M), is_atom(F) -> emqx_redis_storage_terms:list_length(A) =/= error;
is_hook(_) -> false.

%% @doc This node's membership: `node', `incarnation' (`undefined' while no
%% member), `alive', `last_renewed_at' (Unix ms), `heartbeat_interval',
%% `ttl', `live' (the members it saw last), `reaping', `reaps' (the reaps
%% it finished) and `last_reap' (`#{node, channels, routes, leases,
%% took_ms, reaps, at}' of the last, or `undefined').
-spec membership() -> map() | {error, not_started | disabled | timeout}.
membership() ->
    server_call(membership).

%% @doc Reaps incarnation `Incarnation' of `Node' now if it is dead and no
%% other node is reaping it (nodes do this by themselves; this is for
%% operators and tests): `{ok, #{channels, routes, leases, reaps, took_ms}}',
%% or `{error, gone}' (no such dead incarnation: reaped already, or alive
%% under another), `{error, alive}', `{error, {held, Owner}}'.
-spec reap(node(), integer()) -> emqx_redis_nodes_reap:result() | {error, not_started}.
reap(Node, Incarnation) ->
    emqx_redis_storage_client:with_default(fun(C) -> reap(C, Node, Incarnation) end).

-spec reap(client(), node(), integer()) -> emqx_redis_nodes_reap:result().
reap(Client, Node, Incarnation) ->
    {NodeCheck, NodeBin} =
        case emqx_redis_storage_terms:node_name(Node) of
            {ok, Bin} -> {ok, Bin};
            {error, _} = Error -> {Error, undefined}
        end,
    IncCheck =
        case is_integer(Incarnation) andalso Incarnation >= 1 andalso Incarnation < (1 bsl 53) of
            true -> ok;
            false -> {error, {invalid_incarnation, Incarnation}}
        end,
    emqx_redis_storage_client:checked(Client, [NodeCheck, IncCheck], fun() ->
        Lease =
            case server_call(reap_lease) of
                Ms when is_integer(Ms) -> Ms;
                _ -> ?DEFAULT_REAP_LEASE
            end,
        emqx_redis_nodes_reap:run(Client, NodeBin, Incarnation, Lease)
    end).

server_call(Request) ->
    case whereis(?SERVER) of
        undefined ->
            case emqx_redis_storage_client:default() of
                {ok, _} -> {error, disabled};
                {error, not_started} -> {error, not_started}
            end;
        Pid ->
            try
                gen_server:call(Pid, Request, 30000)
            catch
                exit:{timeout, _} -> {error, timeout};
                exit:_ -> {error, not_started}
            end
    end.
