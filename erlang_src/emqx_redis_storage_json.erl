%% @doc A small JSON encoder for the command-line tool's `--json' output.
%%
%% OTP 25 has no `json' module (it came with OTP 27) and no hex package may
%% be used, so this one encodes what the tool prints: maps (atom or binary
%% keys, in sorted order so output is stable), lists, binaries, atoms
%% (`true', `false'; `undefined' and `null' as `null'; others as strings)
%% and numbers. A binary that is not UTF-8 (client ids may be any bytes) is
%% read as Latin-1, so every byte still shows. Any other term (a tuple, a
%% pid) is shown as a string of its Erlang form.
-module(emqx_redis_storage_json).

-export([encode/1, chars/1, printed/1]).

-spec encode(term()) -> iodata().
encode(true) ->
    <<"true">>;
encode(false) ->
    <<"false">>;
encode(Nil) when Nil =:= undefined; Nil =:= null ->
    <<"null">>;
encode(Atom) when is_atom(Atom) ->
    string(atom_to_binary(Atom));
encode(Int) when is_integer(Int) ->
    integer_to_binary(Int);
encode(Float) when is_float(Float) ->
    float_to_binary(Float, [short]);
encode(Bin) when is_binary(Bin) ->
    string(Bin);
encode(List) when is_list(List) ->
    [$[, join([encode(V) || V <- List]), $]];
encode(Map) when is_map(Map) ->
    Pairs = lists:sort([{key(K), V} || {K, V} <- maps:to_list(Map)]),
    [${, join([[string(K), $:, encode(V)] || {K, V} <- Pairs]), $}];
encode(Other) ->
    string(printed(Other)).

key(Key) when is_atom(Key) -> atom_to_binary(Key);
key(Key) when is_binary(Key) -> Key;
key(Key) -> printed(Key).

%% @doc A term in its Erlang form, on one line.
-spec printed(term()) -> binary().
printed(Term) ->
    unicode:characters_to_binary(io_lib:format("~0tp", [Term])).

join([]) -> [];
join([First | Rest]) -> [First | [[$, | V] || V <- Rest]].

%% @doc The characters of `Bin': UTF-8, or else Latin-1.
-spec chars(binary()) -> [char()].
chars(Bin) ->
    case unicode:characters_to_list(Bin) of
        List when is_list(List) -> List;
        _ -> binary_to_list(Bin)
    end.

string(Bin) ->
    [$", [escape(C) || C <- chars(Bin)], $"].

escape($") -> <<"\\\"">>;
escape($\\) -> <<"\\\\">>;
escape($\n) -> <<"\\n">>;
escape($\r) -> <<"\\r">>;
escape($\t) -> <<"\\t">>;
escape(C) when C < 16#20 -> io_lib:format("\\u~4.16.0b", [C]);
escape(C) -> <<C/utf8>>.
