%% @doc The client registry: which node a client's channel lives on, so any
%% node can find it, and a dead node's entries can be removed at once.
%%
%% Every function works on the application's default client, and takes a
%% client from `emqx_redis_storage:connect/1' as an optional first argument.
-module(emqx_redis_registry).

-export([register_channel/2, lookup_channel/1, unregister_channel/2, cleanup_node/1]).
-export([register_channel/3, lookup_channel/2, unregister_channel/3, cleanup_node/2]).

-type client() :: emqx_redis_storage_client:t().
-type client_id() :: emqx_redis_session:client_id().

-spec register_channel(client_id(), node()) -> ok | {error, term()}.
register_channel(ClientId, Node) -> with_default(fun(C) -> register_channel(C, ClientId, Node) end).

-spec lookup_channel(client_id()) -> {ok, node()} | {error, term()}.
lookup_channel(ClientId) -> with_default(fun(C) -> lookup_channel(C, ClientId) end).

-spec unregister_channel(client_id(), node()) -> ok | {error, term()}.
unregister_channel(ClientId, Node) -> with_default(fun(C) -> unregister_channel(C, ClientId, Node) end).

-spec cleanup_node(node()) -> {ok, non_neg_integer()} | {error, term()}.
cleanup_node(Node) -> with_default(fun(C) -> cleanup_node(C, Node) end).

-spec register_channel(client(), client_id(), node()) -> ok | {error, term()}.
register_channel(Client, ClientId, Node) ->
    with_node(Client, [emqx_redis_storage_terms:client_id(ClientId)], Node, fun(NodeBin) ->
        unwrap(emqx_redis_storage_client:call(Client, channel_register, [ClientId, NodeBin]))
    end).

%% @doc The node of the client's channel, or `{error, not_found}'.
-spec lookup_channel(client(), client_id()) -> {ok, node()} | {error, term()}.
lookup_channel(Client, ClientId) ->
    emqx_redis_storage_client:checked(Client, [emqx_redis_storage_terms:client_id(ClientId)], fun() ->
        case emqx_redis_storage_client:call(Client, channel_lookup, [ClientId]) of
            {ok, undefined} -> {error, not_found};
            {ok, NodeBin} -> emqx_redis_storage_terms:to_node(channel, NodeBin);
            {error, _} = Error -> Error
        end
    end).

%% @doc Removes the entry only if it still names `Node' (the client may have
%% moved to another node meanwhile); `ok' either way.
-spec unregister_channel(client(), client_id(), node()) -> ok | {error, term()}.
unregister_channel(Client, ClientId, Node) ->
    with_node(Client, [emqx_redis_storage_terms:client_id(ClientId)], Node, fun(NodeBin) ->
        unwrap(emqx_redis_storage_client:call(Client, channel_unregister, [ClientId, NodeBin]))
    end).

%% @doc Removes every entry of a node that died; returns how many.
-spec cleanup_node(client(), node()) -> {ok, non_neg_integer()} | {error, term()}.
cleanup_node(Client, Node) ->
    with_node(Client, [], Node, fun(NodeBin) ->
        emqx_redis_storage_client:call(Client, channel_cleanup, [NodeBin])
    end).

with_default(Fun) ->
    emqx_redis_storage_client:with_default(Fun).

%% `Fun(NodeBin)' once the client, the other checks and the node are valid.
with_node(Client, Checks, Node, Fun) ->
    {NodeCheck, NodeBin} =
        case emqx_redis_storage_terms:node_name(Node) of
            {ok, Bin} -> {ok, Bin};
            {error, _} = Error -> {Error, undefined}
        end,
    emqx_redis_storage_client:checked(Client, Checks ++ [NodeCheck], fun() -> Fun(NodeBin) end).

unwrap({ok, ok}) -> ok;
unwrap({error, _} = Error) -> Error.
