%% @doc The client registry: which node a client's channel lives on, so any
%% node can find it, and a dead node's entries can be removed at once.
-module(emqx_redis_registry).

-export([register_channel/2, lookup_channel/1, unregister_channel/2, cleanup_node/1]).

-spec register_channel(emqx_redis_session:client_id(), node()) -> ok | {error, term()}.
register_channel(ClientId, Node) ->
    with_node(ClientId, Node, fun(Client, NodeBin) ->
        unwrap(emqx_redis_storage_client:call(Client, channel_register, [ClientId, NodeBin]))
    end).

%% @doc The node of the client's channel, or `{error, not_found}'.
-spec lookup_channel(emqx_redis_session:client_id()) -> {ok, node()} | {error, term()}.
lookup_channel(ClientId) ->
    with_client_id(ClientId, fun(Client) ->
        case emqx_redis_storage_client:call(Client, channel_lookup, [ClientId]) of
            {ok, undefined} -> {error, not_found};
            {ok, NodeBin} -> emqx_redis_storage_terms:to_node(NodeBin);
            {error, _} = Error -> Error
        end
    end).

%% @doc Removes the entry only if it still names `Node' (the client may have
%% moved to another node meanwhile); `ok' either way.
-spec unregister_channel(emqx_redis_session:client_id(), node()) -> ok | {error, term()}.
unregister_channel(ClientId, Node) ->
    with_node(ClientId, Node, fun(Client, NodeBin) ->
        unwrap(emqx_redis_storage_client:call(Client, channel_unregister, [ClientId, NodeBin]))
    end).

%% @doc Removes every entry of a node that died; returns how many.
-spec cleanup_node(node()) -> {ok, non_neg_integer()} | {error, term()}.
cleanup_node(Node) ->
    case emqx_redis_storage_terms:node_name(Node) of
        {ok, NodeBin} ->
            emqx_redis_storage_client:with_default(fun(Client) ->
                emqx_redis_storage_client:call(Client, channel_cleanup, [NodeBin])
            end);
        {error, _} = Error ->
            Error
    end.

with_node(ClientId, Node, Fun) ->
    case emqx_redis_storage_terms:node_name(Node) of
        {ok, NodeBin} -> with_client_id(ClientId, fun(Client) -> Fun(Client, NodeBin) end);
        {error, _} = Error -> Error
    end.

with_client_id(ClientId, Fun) ->
    case emqx_redis_storage_terms:client_id(ClientId) of
        ok -> emqx_redis_storage_client:with_default(Fun);
        {error, _} = Error -> Error
    end.

unwrap({ok, ok}) -> ok;
unwrap({error, _} = Error) -> Error.
