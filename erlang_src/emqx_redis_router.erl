%% @doc The routing table in Redis: which nodes (or shared-subscription
%% groups on nodes) subscribe to filters matching a topic.
%%
%% Every function works on the application's default client, and takes a
%% client from `emqx_redis_storage:connect/1' as an optional first argument.
%% `match_routes' is answered from a local in-memory index that follows the
%% changes of every node through Redis (config `route_index => local', the
%% default), or by a Lua script inside Redis (`route_index => redis'). While
%% the local index is loading or catching up after a gap, Redis answers.
-module(emqx_redis_router).

-include("emqx_redis_storage.hrl").

-export([add_route/2, add_routes/1, delete_route/2, match_routes/1, lookup_routes/1, has_route/2]).
-export([topics/0, cleanup_node/1]).
-export([add_route/3, add_routes/2, delete_route/3, match_routes/2, lookup_routes/2, has_route/3]).
-export([topics/1, cleanup_node/2, index_ready/1]).

-type dest() :: node() | {Group :: binary(), node()}.
-type client() :: emqx_redis_storage_client:t().
-export_type([dest/0]).

-spec add_route(binary(), dest()) -> ok | {error, term()}.
add_route(Filter, Dest) -> with_default(fun(C) -> add_route(C, Filter, Dest) end).

-spec add_routes([{binary(), dest()}]) -> {ok, non_neg_integer()} | {error, term()}.
add_routes(Routes) -> with_default(fun(C) -> add_routes(C, Routes) end).

-spec delete_route(binary(), dest()) -> ok | {error, term()}.
delete_route(Filter, Dest) -> with_default(fun(C) -> delete_route(C, Filter, Dest) end).

-spec match_routes(binary()) -> {ok, [dest()]} | {error, term()}.
match_routes(Topic) -> with_default(fun(C) -> match_routes(C, Topic) end).

-spec lookup_routes(binary()) -> {ok, [dest()]} | {error, term()}.
lookup_routes(Filter) -> with_default(fun(C) -> lookup_routes(C, Filter) end).

-spec has_route(binary(), dest()) -> boolean().
has_route(Filter, Dest) -> with_default(fun(C) -> has_route(C, Filter, Dest) end) =:= true.

-spec topics() -> {ok, [binary()]} | {error, term()}.
topics() -> with_default(fun topics/1).

-spec cleanup_node(node()) -> {ok, non_neg_integer()} | {error, term()}.
cleanup_node(Node) -> with_default(fun(C) -> cleanup_node(C, Node) end).

%% @doc Adds a route; adding it again changes nothing.
-spec add_route(client(), binary(), dest()) -> ok | {error, term()}.
add_route(Client, Filter, Dest) ->
    case add_routes(Client, [{Filter, Dest}]) of
        {ok, _} -> ok;
        {error, _} = Error -> Error
    end.

%% @doc Adds many routes at once: how a node restores its routes. Sent in
%% calls of up to 10,000 routes, each within the command timeout (one
%% script call per shard and 1,000 routes). Returns how many were new. On
%% an error, the calls before it have taken effect.
-spec add_routes(client(), [{binary(), dest()}]) -> {ok, non_neg_integer()} | {error, term()}.
add_routes(Client, Routes) ->
    checked(Client, [route_list(Routes)], fun() ->
        case [R || R <- Routes, not valid_route(R)] of
            [] -> add_batches(Client, Routes, 0);
            [{Filter, Dest} | _] -> with_route(Filter, Dest, fun() -> ok end);
            [Bad | _] -> {error, {invalid_route, Bad}}
        end
    end).

route_list(Routes) ->
    case emqx_redis_storage_terms:list_length(Routes) of
        {ok, _} -> ok;
        error -> {error, {invalid_route, Routes}}
    end.

add_batches(_Client, [], Added) ->
    {ok, Added};
add_batches(Client, Routes, Added) ->
    {Batch, Rest} = batch(Routes, 0, 0, []),
    case emqx_redis_storage_client:call(Client, route_add, [Batch]) of
        {ok, N} -> add_batches(Client, Rest, Added + N);
        {error, _} = Error -> Error
    end.

%% The routes of one call: at most 10,000, and at most the bytes one request
%% may carry (a filter is up to 64 KiB), but always at least one.
batch([], _N, _Bytes, Acc) ->
    {lists:reverse(Acc), []};
batch(Routes, 10000, _Bytes, Acc) ->
    {lists:reverse(Acc), Routes};
batch([{Filter, Dest} = Route | Rest] = Routes, N, Bytes, Acc) ->
    Size = byte_size(Filter) + dest_size(Dest),
    case Bytes + Size > ?MAX_REQUEST_BYTES andalso Acc =/= [] of
        true -> {lists:reverse(Acc), Routes};
        false -> batch(Rest, N + 1, Bytes + Size, [Route | Acc])
    end.

dest_size({Group, Node}) -> byte_size(Group) + dest_size(Node);
dest_size(Node) -> byte_size(atom_to_binary(Node)).

valid_route({Filter, Dest}) -> with_route(Filter, Dest, fun() -> ok end) =:= ok;
valid_route(_) -> false.

%% @doc Removes a route; `ok' also if it was not there.
-spec delete_route(client(), binary(), dest()) -> ok | {error, term()}.
delete_route(Client, Filter, Dest) ->
    checked(Client, [], fun() ->
        with_route(Filter, Dest, fun() -> call(Client, route_delete, [Filter, Dest]) end)
    end).

%% @doc Every dest with a filter that matches the topic name, each once.
-spec match_routes(client(), binary()) -> {ok, [dest()]} | {error, term()}.
match_routes(Client, Topic) ->
    checked(Client, [], fun() -> match_checked(Client, Topic) end).

match_checked(Client, Topic) when is_binary(Topic) ->
    case emqx_redis_storage_nif:route_match_local(emqx_redis_storage_client:res(Client), Topic) of
        {ok, Dests} -> node_atoms(Dests, []);
        not_ready -> dests(emqx_redis_storage_client:call(Client, route_match_redis, [Topic]));
        {error, Reason} -> {error, {invalid_topic, Reason}}
    end;
match_checked(_Client, Topic) ->
    {error, {invalid_topic, Topic}}.

%% @doc The dests of exactly this filter.
-spec lookup_routes(client(), binary()) -> {ok, [dest()]} | {error, term()}.
lookup_routes(Client, Filter) ->
    checked(Client, [], fun() ->
        case emqx_redis_topic:validate(filter, Filter) of
            ok -> dests(emqx_redis_storage_client:call(Client, route_lookup, [Filter]));
            {error, Reason} -> {error, {invalid_topic, Reason}}
        end
    end).

%% @doc True if the route is there; false also if it cannot be told (an
%% error, such as a wrong argument or Redis unreachable).
-spec has_route(client(), binary(), dest()) -> boolean().
has_route(Client, Filter, Dest) ->
    case lookup_routes(Client, Filter) of
        {ok, Dests} -> lists:member(Dest, Dests);
        {error, _} -> false
    end.

%% @doc Every filter that has at least one route, sorted.
-spec topics(client()) -> {ok, [binary()]} | {error, term()}.
topics(Client) ->
    emqx_redis_storage_client:call(Client, route_filters, []).

%% @doc Removes every route of a node that died, including its
%% shared-subscription dests; returns how many.
-spec cleanup_node(client(), node()) -> {ok, non_neg_integer()} | {error, term()}.
cleanup_node(Client, Node) ->
    checked(Client, [], fun() ->
        case valid_node(Node) of
            true -> emqx_redis_storage_client:call(Client, route_cleanup, [Node]);
            false -> {error, {invalid_node, Node}}
        end
    end).

%% @doc True once the client's local index is loaded and in step with Redis.
-spec index_ready(client()) -> boolean() | {error, {invalid_client, term()}}.
index_ready(Client) ->
    checked(Client, [], fun() ->
        emqx_redis_storage_nif:route_index_ready(emqx_redis_storage_client:res(Client))
    end).

%%--------------------------------------------------------------------

with_route(Filter, Dest, Fun) ->
    case {emqx_redis_topic:validate(filter, Filter), valid_dest(Dest)} of
        {ok, true} -> Fun();
        {ok, false} -> {error, {invalid_dest, Dest}};
        {{error, Reason}, _} -> {error, {invalid_topic, Reason}}
    end.

%% Node names hold neither NUL nor \x01 (the dest encoding's separators);
%% group names are non-empty MQTT strings without NUL, '/', '+' or '#'.
valid_dest({Group, Node}) when is_binary(Group), Group =/= <<>> ->
    valid_node(Node) andalso
        unicode:characters_to_binary(Group) =:= Group andalso
        binary:match(Group, [<<0>>, <<"/">>, <<"+">>, <<"#">>]) =:= nomatch;
valid_dest(Node) ->
    valid_node(Node).

%% Shaped like a node name, as every node read back must be.
valid_node(Node) ->
    element(1, emqx_redis_storage_terms:node_name(Node)) =:= ok.

call(Client, Fun, Args) ->
    case emqx_redis_storage_client:call(Client, Fun, Args) of
        {ok, ok} -> ok;
        {error, _} = Error -> Error
    end.

dests({ok, Dests}) -> node_atoms(Dests, []);
dests({error, _} = Error) -> Error.

%% The NIF checked the dests; names of nodes this VM has no atom for arrive
%% as binaries, and become atoms within the bound of `to_node/2'.
node_atoms([], Acc) ->
    {ok, lists:reverse(Acc)};
node_atoms([Dest | Rest], Acc) ->
    case node_dest(Dest) of
        {ok, D} -> node_atoms(Rest, [D | Acc]);
        {error, _} = Error -> Error
    end.

node_dest(Node) when is_atom(Node) -> {ok, Node};
node_dest({Group, Node}) when is_atom(Node) -> {ok, {Group, Node}};
node_dest({Group, Node}) ->
    case emqx_redis_storage_terms:to_node(route, Node) of
        {ok, Atom} -> {ok, {Group, Atom}};
        {error, _} = Error -> Error
    end;
node_dest(Node) ->
    emqx_redis_storage_terms:to_node(route, Node).

with_default(Fun) ->
    emqx_redis_storage_client:with_default(Fun).

checked(Client, Checks, Fun) ->
    emqx_redis_storage_client:checked(Client, Checks, Fun).
