%% @doc Checks of caller input shared by the API modules, and the conversion
%% of what Redis returns back into terms, with a bound on new atoms.
-module(emqx_redis_storage_terms).

-export([client_id/1, node_name/1, to_node/1, encode/2, decode/1]).
-export([owner_to_bin/1, bin_to_owner/1, ms/1]).
-export([list_length/1]).

-define(MAX_CLIENT_ID, 65535).
%% Node names seen only in Redis become atoms, but never more than this many.
-define(MAX_NEW_NODE_ATOMS, 10000).
-define(NEW_ATOMS_KEY, {?MODULE, new_node_atoms}).

%% @doc `ok' for a valid MQTT client id: a non-empty binary of at most 65535
%% bytes; any bytes are allowed (braces, colons, spaces, UTF-8).
-spec client_id(term()) -> ok | {error, {invalid_client_id, term()}}.
client_id(Id) when is_binary(Id), byte_size(Id) > 0, byte_size(Id) =< ?MAX_CLIENT_ID -> ok;
client_id(Id) -> {error, {invalid_client_id, Id}}.

%% @doc The length of a proper list; `error' for an improper list or a non-list,
%% which a list comprehension over it would raise on.
-spec list_length(term()) -> {ok, non_neg_integer()} | error.
list_length(List) ->
    try length(List) of
        N -> {ok, N}
    catch
        error:badarg -> error
    end.

%% @doc A node name as stored in Redis.
-spec node_name(term()) -> {ok, binary()} | {error, {invalid_node, term()}}.
node_name(Node) when is_atom(Node) -> {ok, atom_to_binary(Node)};
node_name(Node) -> {error, {invalid_node, Node}}.

%% @doc The atom of a node name read from Redis. An atom that does not exist
%% yet is created only for something shaped like a node name, and only up
%% to a fixed number per VM, so Redis content cannot exhaust the atom table.
-spec to_node(binary()) -> {ok, node()} | {error, {unknown_node, binary()}}.
to_node(Bin) ->
    try
        {ok, binary_to_existing_atom(Bin)}
    catch
        error:badarg -> new_node_atom(Bin)
    end.

new_node_atom(Bin) ->
    Counter = new_atoms_counter(),
    case
        byte_size(Bin) =< 255 andalso
            binary:match(Bin, <<"@">>) =/= nomatch andalso
            counters:get(Counter, 1) < ?MAX_NEW_NODE_ATOMS
    of
        true ->
            counters:add(Counter, 1, 1),
            {ok, binary_to_atom(Bin)};
        false ->
            {error, {unknown_node, Bin}}
    end.

new_atoms_counter() ->
    case persistent_term:get(?NEW_ATOMS_KEY, undefined) of
        undefined ->
            Counter = counters:new(1, [atomics]),
            persistent_term:put(?NEW_ATOMS_KEY, Counter),
            Counter;
        Counter ->
            Counter
    end.

%% @doc A lease owner (a node or any binary) as stored in Redis.
-spec owner_to_bin(term()) -> {ok, binary()} | {error, {invalid_owner, term()}}.
owner_to_bin(Owner) when is_atom(Owner) -> {ok, <<"node:", (atom_to_binary(Owner))/binary>>};
owner_to_bin(Owner) when is_binary(Owner) -> {ok, <<"bin:", Owner/binary>>};
owner_to_bin(Owner) -> {error, {invalid_owner, Owner}}.

-spec bin_to_owner(binary()) -> atom() | binary().
bin_to_owner(<<"node:", Node/binary>>) ->
    case to_node(Node) of
        {ok, Atom} -> Atom;
        {error, _} -> Node
    end;
bin_to_owner(<<"bin:", Bin/binary>>) ->
    Bin;
bin_to_owner(Other) ->
    Other.

%% @doc A term in external format, refused if larger than `Max' bytes.
-spec encode(term(), pos_integer()) -> {ok, binary()} | {error, {too_large, map()}}.
encode(Term, Max) ->
    Bin = term_to_binary(Term),
    case byte_size(Bin) of
        Size when Size =< Max -> {ok, Bin};
        Size -> {error, {too_large, #{size => Size, max => Max}}}
    end.

%% @doc A term read back from Redis. Creates no atoms: every atom in stored
%% data exists in a VM that runs the code that wrote it.
-spec decode(binary()) -> {ok, term()} | {error, undecodable}.
decode(Bin) ->
    try
        {ok, binary_to_term(Bin, [safe])}
    catch
        error:badarg -> {error, undecodable}
    end.

%% @doc Seconds to milliseconds.
-spec ms(non_neg_integer()) -> non_neg_integer().
ms(Seconds) -> Seconds * 1000.
