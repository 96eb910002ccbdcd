%% MQTT topic rules through the Erlang API: every non-normative example of
%% section 4.7 of MQTT 5.0 (the same text as in 3.1.1), and edge cases.
-module(emqx_redis_topic_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("stdlib/include/assert.hrl").

-define(T, emqx_redis_topic).

all() -> [spec_examples_of_matching, spec_examples_of_validity, edge_cases, agrees_with_a_model].

%% Section 4.7.1.2, 4.7.1.3, 4.7.2 and 4.7.3 examples: {Name, Filter, Matches}.
matching_examples() ->
    [
        {<<"sport/tennis/player1">>, <<"sport/tennis/player1/#">>, true},
        {<<"sport/tennis/player1/ranking">>, <<"sport/tennis/player1/#">>, true},
        {<<"sport/tennis/player1/score/wimbledon">>, <<"sport/tennis/player1/#">>, true},
        {<<"sport">>, <<"sport/#">>, true},
        {<<"sport/tennis/player1">>, <<"sport/tennis/+">>, true},
        {<<"sport/tennis/player2">>, <<"sport/tennis/+">>, true},
        {<<"sport/tennis/player1/ranking">>, <<"sport/tennis/+">>, false},
        {<<"sport">>, <<"sport/+">>, false},
        {<<"sport/">>, <<"sport/+">>, true},
        {<<"/finance">>, <<"+/+">>, true},
        {<<"/finance">>, <<"/+">>, true},
        {<<"/finance">>, <<"+">>, false},
        {<<"$SYS/anything">>, <<"#">>, false},
        {<<"$SYS/monitor/Clients">>, <<"+/monitor/Clients">>, false},
        {<<"$SYS/anything">>, <<"$SYS/#">>, true},
        {<<"$SYS/monitor/Clients">>, <<"$SYS/monitor/+">>, true},
        {<<"ACCOUNTS">>, <<"Accounts">>, false},
        {<<"Accounts payable">>, <<"Accounts payable">>, true},
        {<<"/finance">>, <<"finance">>, false},
        {<<"finance">>, <<"/finance">>, false}
    ].

spec_examples_of_matching(_Config) ->
    [?assertEqual(Expected, ?T:match(N, F), {N, F}) || {N, F, Expected} <- matching_examples()].

spec_examples_of_validity(_Config) ->
    [?assertEqual(ok, ?T:validate(filter, F), F) || F <- [<<"#">>, <<"sport/tennis/#">>, <<"+">>,
        <<"+/tennis/#">>, <<"sport/+/player1">>, <<"/">>, <<"Accounts payable">>, <<"$SYS/#">>]],
    ?assertEqual({error, misplaced_multi_level_wildcard}, ?T:validate(filter, <<"sport/tennis#">>)),
    ?assertEqual({error, misplaced_multi_level_wildcard}, ?T:validate(filter, <<"sport/tennis/#/ranking">>)),
    ?assertEqual({error, misplaced_single_level_wildcard}, ?T:validate(filter, <<"sport+">>)),
    ?assertEqual(ok, ?T:validate(name, <<"/">>)),
    ?assertEqual({error, wildcard_in_name}, ?T:validate(name, <<"sport/+">>)),
    ?assertEqual({error, wildcard_in_name}, ?T:validate(name, <<"#">>)).

edge_cases(_Config) ->
    ?assertEqual({error, empty}, ?T:validate(name, <<>>)),
    ?assertEqual({error, empty}, ?T:validate(filter, <<>>)),
    ?assertEqual({error, contains_nul}, ?T:validate(name, <<"a", 0, "b">>)),
    ?assertEqual({error, invalid_utf8}, ?T:validate(name, <<255, 254>>)),
    ?assertEqual(ok, ?T:validate(name, binary:copy(<<"a">>, 65535))),
    ?assertEqual({error, too_long}, ?T:validate(name, binary:copy(<<"a">>, 65536))),
    ?assertEqual({error, not_a_binary}, ?T:validate(name, "a/b")),
    ?assertEqual({error, not_a_binary}, ?T:validate(other, <<"a">>)),
    ?assertEqual(ok, ?T:validate(name, <<"日本/語"/utf8>>)),
    ?assert(?T:match(<<"a//b">>, <<"a/+/b">>)),
    ?assert(?T:match(<<"a">>, <<"a/#">>)),
    ?assert(?T:match(<<"/">>, <<"#">>)),
    ?assert(?T:match(<<"/">>, <<"+/+">>)),
    ?assertNot(?T:match(<<"$">>, <<"+">>)),
    ?assert(?T:match(<<"$">>, <<"$">>)),
    ?assertNot(?T:match(<<"a/b">>, <<"a/b/c">>)),
    ?assertNot(?T:match(<<"a/+">>, <<"a/+">>)),
    ?assertNot(?T:match(a, <<"#">>)).

%% A plain Erlang reading of the spec, compared on random topics.
model_match(Name, Filter) ->
    N = binary:split(Name, <<"/">>, [global]),
    F = binary:split(Filter, <<"/">>, [global]),
    Dollar = binary:first(Name) =:= $$,
    case F of
        [W | _] when Dollar, (W =:= <<"+">> orelse W =:= <<"#">>) -> false;
        _ -> model_levels(N, F)
    end.

model_levels(_, [<<"#">>]) -> true;
model_levels([], []) -> true;
model_levels([_ | N], [<<"+">> | F]) -> model_levels(N, F);
model_levels([L | N], [L | F]) -> model_levels(N, F);
model_levels(_, _) -> false.

agrees_with_a_model(_Config) ->
    Levels = [<<>>, <<"a">>, <<"b">>, <<"$x">>],
    WLevels = Levels ++ [<<"+">>, <<"#">>],
    rand:seed(exsss, {1, 2, 3}),
    Pick = fun(L, Max) -> [lists:nth(rand:uniform(length(L)), L) || _ <- lists:seq(1, rand:uniform(Max))] end,
    lists:foreach(
        fun(_) ->
            Name = iolist_to_binary(lists:join(<<"/">>, Pick(Levels, 4))),
            Filter = iolist_to_binary(lists:join(<<"/">>, Pick(WLevels, 4))),
            case {?T:validate(name, Name), ?T:validate(filter, Filter)} of
                {ok, ok} -> ?assertEqual(model_match(Name, Filter), ?T:match(Name, Filter), {Name, Filter});
                _ -> ?assertNot(?T:match(Name, Filter))
            end
        end,
        lists:seq(1, 20000)
    ).
