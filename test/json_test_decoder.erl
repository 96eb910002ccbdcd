%% @doc A small JSON decoder for the tests of the tool's `--json' output:
%% objects become maps with binary keys, arrays lists, strings binaries
%% (UTF-8), `null' `null'. Written from RFC 8259; anything else raises.
-module(json_test_decoder).

-export([decode/1]).

-spec decode(iodata()) -> term().
decode(Text) ->
    case value(skip(unicode:characters_to_list(iolist_to_binary(Text)))) of
        {Value, Rest} ->
            [] = skip(Rest),
            Value
    end.

value([${ | Rest]) -> object(skip(Rest), #{});
value([$[ | Rest]) -> array(skip(Rest), []);
value([$" | Rest]) -> string(Rest, []);
value("true" ++ Rest) -> {true, Rest};
value("false" ++ Rest) -> {false, Rest};
value("null" ++ Rest) -> {null, Rest};
value(Text) -> number(Text).

object([$} | Rest], Acc) ->
    {Acc, Rest};
object([$" | Rest], Acc) ->
    {Key, [$: | Rest1]} = skip_after(string(Rest, [])),
    {Value, Rest2} = skip_after(value(skip(Rest1))),
    case Rest2 of
        [$, | Rest3] -> object(skip(Rest3), Acc#{Key => Value});
        [$} | Rest3] -> {Acc#{Key => Value}, Rest3}
    end.

array([$] | Rest], []) ->
    {[], Rest};
array(Text, Acc) ->
    {Value, Rest} = skip_after(value(Text)),
    case Rest of
        [$, | Rest1] -> array(skip(Rest1), [Value | Acc]);
        [$] | Rest1] -> {lists:reverse([Value | Acc]), Rest1}
    end.

string([$" | Rest], Acc) -> {unicode:characters_to_binary(lists:reverse(Acc)), Rest};
string([$\\, $" | Rest], Acc) -> string(Rest, [$" | Acc]);
string([$\\, $\\ | Rest], Acc) -> string(Rest, [$\\ | Acc]);
string([$\\, $/ | Rest], Acc) -> string(Rest, [$/ | Acc]);
string([$\\, $n | Rest], Acc) -> string(Rest, [$\n | Acc]);
string([$\\, $r | Rest], Acc) -> string(Rest, [$\r | Acc]);
string([$\\, $t | Rest], Acc) -> string(Rest, [$\t | Acc]);
string([$\\, $u, A, B, C, D | Rest], Acc) -> string(Rest, [list_to_integer([A, B, C, D], 16) | Acc]);
string([C | Rest], Acc) when C >= 16#20 -> string(Rest, [C | Acc]).

number(Text) ->
    {Digits, Rest} = lists:splitwith(fun(C) -> lists:member(C, "+-0123456789.eE") end, Text),
    Value =
        case string:to_integer(Digits) of
            {Int, []} -> Int;
            _ -> list_to_float(Digits)
        end,
    {Value, Rest}.

skip_after({Value, Rest}) -> {Value, skip(Rest)}.

skip([C | Rest]) when C =:= $\s; C =:= $\t; C =:= $\n; C =:= $\r -> skip(Rest);
skip(Text) -> Text.
