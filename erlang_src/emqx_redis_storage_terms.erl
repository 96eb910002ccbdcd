%% @doc Checks of caller input shared by the API modules, and the conversion
%% of what Redis returns back into terms, with a bound on new atoms.
-module(emqx_redis_storage_terms).

-export([batch/2, client_id/1, node_name/1, to_node/2, encode/2, decode/2, corrupt/2]).
-export([owner_to_bin/1, bin_to_owner/1, ms/1]).
-export([list_length/1, allow_new_atoms/0]).

-define(MAX_CLIENT_ID, 65535).
%% Node names seen only in Redis become atoms, but never more than this many.
-define(MAX_NEW_NODE_ATOMS, 10000).
-define(NEW_ATOMS_KEY, {?MODULE, new_node_atoms}).
-define(NEW_TERM_ATOMS_KEY, {?MODULE, new_term_atoms}).

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

%% @doc `ok' for a proper list of at most `Max' elements: a batch of a call.
-spec batch(term(), pos_integer()) ->
    ok | {error, {batch_too_large, #{count := non_neg_integer(), max := pos_integer()}} | {invalid_batch, term()}}.
batch(List, Max) ->
    case list_length(List) of
        {ok, N} when N =< Max -> ok;
        {ok, N} -> {error, {batch_too_large, #{count => N, max => Max}}};
        error -> {error, {invalid_batch, List}}
    end.

%% @doc A node name as stored in Redis: an atom shaped like a node name
%% (what `to_node/2' accepts back).
-spec node_name(term()) -> {ok, binary()} | {error, {invalid_node, term()}}.
node_name(Node) when is_atom(Node) ->
    Bin = atom_to_binary(Node),
    case is_node_name(Bin) of
        true -> {ok, Bin};
        false -> {error, {invalid_node, Node}}
    end;
node_name(Node) ->
    {error, {invalid_node, Node}}.

%% @doc The atom of a node name read from a key of kind `Kind'. Anything not
%% shaped like a node name is corrupt data of that kind, even when its atom
%% exists (the empty atom does). An atom that does not exist yet is created
%% only up to a fixed number per VM, so Redis content cannot exhaust the
%% atom table.
-spec to_node(atom(), binary()) ->
    {ok, node()} | {error, {unknown_node, binary()}} | {error, {corrupt, map()}}.
to_node(Kind, Bin) ->
    case is_node_name(Bin) of
        true ->
            try
                {ok, binary_to_existing_atom(Bin)}
            catch
                error:badarg -> new_node_atom(Bin)
            end;
        false ->
            corrupt(Kind, <<"not a node name">>)
    end.

%% `name@host', both parts non-empty, UTF-8 without control characters, at
%% most 255 bytes. The same rule as `is_node_name' in router.rs.
is_node_name(Bin) when is_binary(Bin), byte_size(Bin) =< 255 ->
    case binary:split(Bin, <<"@">>) of
        [Name, Host] when Name =/= <<>>, Host =/= <<>> ->
            case unicode:characters_to_list(Bin) of
                Chars when is_list(Chars) -> not lists:any(fun is_control/1, Chars);
                _ -> false
            end;
        _ ->
            false
    end;
is_node_name(_) ->
    false.

%% Unicode's control characters (Cc), as Rust's char::is_control.
is_control(C) -> C < 16#20 orelse (C >= 16#7F andalso C < 16#A0).

new_node_atom(Bin) ->
    Counter = new_atoms_counter(),
    case counters:get(Counter, 1) < ?MAX_NEW_NODE_ATOMS of
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
owner_to_bin(Owner) when is_atom(Owner) ->
    case node_name(Owner) of
        {ok, Node} -> {ok, <<"node:", Node/binary>>};
        {error, _} -> {error, {invalid_owner, Owner}}
    end;
owner_to_bin(Owner) when is_binary(Owner) -> {ok, <<"bin:", Owner/binary>>};
owner_to_bin(Owner) -> {error, {invalid_owner, Owner}}.

%% @doc A lease owner read from Redis; anything `owner_to_bin/1' cannot
%% have written is a corrupt lease.
-spec bin_to_owner(binary()) -> {ok, atom() | binary()} | {error, term()}.
bin_to_owner(<<"node:", Node/binary>>) ->
    to_node(lease, Node);
bin_to_owner(<<"bin:", Bin/binary>>) ->
    {ok, Bin};
bin_to_owner(_) ->
    corrupt(lease, <<"owner is neither a node nor a binary">>).

%% @doc A term in external format, refused if larger than `Max' bytes.
%% Atoms as UTF-8 (minor version 2, OTP 26's default): OTP 25's default
%% (Latin-1 atoms) makes every atom of a stored term cost a conversion when
%% it is read back, which measured a third of the time that decoding a
%% stored message takes. Terms written either way are read alike.
-spec encode(term(), pos_integer()) -> {ok, binary()} | {error, {too_large, map()}}.
encode(Term, Max) ->
    Bin = term_to_binary(Term, [{minor_version, 2}]),
    case byte_size(Bin) of
        Size when Size =< Max -> {ok, Bin};
        Size -> {error, {too_large, #{size => Size, max => Max}}}
    end.

%% @doc A term read back from a key of kind `Kind'. Creates no atoms: every
%% atom in stored data exists in a VM that runs the code that wrote it
%% (except after `allow_new_atoms/0'). Bytes that are no term, or more than
%% one, are corrupt data of that kind.
-spec decode(atom(), binary()) -> {ok, term()} | {error, {corrupt, map()}}.
decode(Kind, Bin) ->
    Safe =
        case persistent_term:get(?NEW_TERM_ATOMS_KEY, false) of
            true -> [];
            false -> [safe]
        end,
    try binary_to_term(Bin, [used | Safe]) of
        {Term, Used} when Used =:= byte_size(Bin) -> {ok, Term};
        {_, _} -> corrupt(Kind, <<"bytes after the term">>)
    catch
        error:badarg -> corrupt(Kind, <<"not a term">>)
    end.

%% @doc Lets `decode/2' create the atoms of stored terms. Only for the
%% operators' tool: its own VM runs none of the code that wrote the terms,
%% so their atoms do not exist there, and it ends after printing one page,
%% which bounds the atoms it can make.
-spec allow_new_atoms() -> ok.
allow_new_atoms() ->
    persistent_term:put(?NEW_TERM_ATOMS_KEY, true).

%% @doc The error for data at a key of kind `Kind' that is not what we wrote;
%% the same shape as the NIF's (`{corrupt, #{kind, detail}}').
-spec corrupt(atom(), binary()) -> {error, {corrupt, #{kind := atom(), detail := binary()}}}.
corrupt(Kind, Detail) ->
    {error, {corrupt, #{kind => Kind, detail => Detail}}}.

%% @doc Seconds to milliseconds.
-spec ms(non_neg_integer()) -> non_neg_integer().
ms(Seconds) -> Seconds * 1000.
