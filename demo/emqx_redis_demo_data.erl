%% @doc What the demo's clients look like, computed from the client's index
%% alone. Node A writes this data; the controller computes it again to judge
%% what node B finds after A died, so nothing is taken from A's memory.
-module(emqx_redis_demo_data).

-export([client_id/1, online/1, session/1, messages/1]).
-export([routes/2, subscription_routes/2, route_table/2, sample_topics/1, expected_matches/2]).
-export([matches/2]).

%% A third of the clients are offline: their sessions persist and QoS 1
%% messages queue up for them. The others are connected (registered).
-spec online(pos_integer()) -> boolean().
online(I) -> I rem 3 =/= 0.

-spec client_id(pos_integer()) -> binary().
client_id(I) -> iolist_to_binary(io_lib:format("demo-client-~6..0b", [I])).

%% An MQTT 5 persistent session, shaped like the state EMQX keeps.
-spec session(pos_integer()) -> map().
session(I) ->
    Id = client_id(I),
    #{
        clientid => Id,
        username => <<"user-", (integer_to_binary(I rem 500))/binary>>,
        proto_name => <<"MQTT">>,
        proto_ver => 5,
        clean_start => false,
        expiry_interval => 7200,
        keepalive => 60,
        peername => {{10, 0, (I bsr 8) band 255, I band 255}, 40000 + I rem 20000},
        connected_at => 1700000000000 + I,
        subscriptions => subscriptions(I),
        max_inflight => 32,
        next_pkt_id => 1 + I rem 65535,
        inflight => [],
        awaiting_rel => #{},
        will_msg =>
            case I rem 4 of
                0 -> #{topic => <<"devices/", Id/binary, "/status">>, payload => <<"offline">>, qos => 1, retain => true};
                _ -> undefined
            end
    }.

%% Per client: an exact and a wildcard filter of its own; shared wildcard
%% filters per fleet; some shared subscriptions ($share/Group/Filter).
subscriptions(I) ->
    Id = client_id(I),
    Fleet = integer_to_binary(I rem 50),
    Opts = fun(QoS) -> #{qos => QoS, nl => 0, rap => 0, rh => 0} end,
    Optional = [
        {<<"$share/workers/jobs/", (integer_to_binary(I div 10 rem 20))/binary>>, Opts(1)} || I rem 10 =:= 0
    ] ++ [
        {<<"$share/analytics/telemetry/", (integer_to_binary(I div 25 rem 10))/binary, "/#">>, Opts(0)}
     || I rem 25 =:= 0
    ] ++ [
        {<<"alerts/#">>, Opts(1)} || I rem 100 =:= 0
    ],
    maps:from_list([
        {<<"devices/", Id/binary, "/cmd">>, Opts(1)},
        {<<"devices/", Id/binary, "/config/#">>, Opts(1)},
        {<<"fleet/", Fleet/binary, "/+/status">>, Opts(0)}
        | Optional
    ]).

%% The QoS 1 messages queued for an offline client, in publish order.
-spec messages(pos_integer()) -> [map()].
messages(I) ->
    case online(I) of
        true ->
            [];
        false ->
            Id = client_id(I),
            [
                #{
                    id => <<Id/binary, "-m", (integer_to_binary(K))/binary>>,
                    topic => <<"devices/", Id/binary, "/cmd">>,
                    qos => 1,
                    from => <<"backend-", (integer_to_binary(I rem 7))/binary>>,
                    payload => iolist_to_binary(io_lib:format("{\"cmd\":\"set\",\"seq\":~b,\"value\":~b}", [K, I * K])),
                    timestamp => 1700000000000 + I * 10 + K,
                    headers => #{properties => #{'User-Property' => [{<<"trace">>, integer_to_binary(I * 100 + K)}]}}
                }
             || K <- lists:seq(1, 1 + I rem 5)
            ]
    end.

%% The routes of a client's subscriptions on `Node': `$share/G/F' routes F
%% to `{G, Node}', any other filter to `Node'.
-spec routes(pos_integer(), node()) -> [{binary(), emqx_redis_router:dest()}].
routes(I, Node) ->
    subscription_routes(subscriptions(I), Node).

-spec subscription_routes(#{binary() => map()}, node()) -> [{binary(), emqx_redis_router:dest()}].
subscription_routes(Subscriptions, Node) ->
    [route(Filter, Node) || Filter <- maps:keys(Subscriptions)].

route(<<"$share/", Rest/binary>>, Node) ->
    [Group, Filter] = binary:split(Rest, <<"/">>),
    {Filter, {Group, Node}};
route(Filter, Node) ->
    {Filter, Node}.

%% Every filter of clients 1..N with its sorted dests on `Node'.
-spec route_table(pos_integer(), node()) -> #{binary() => [emqx_redis_router:dest()]}.
route_table(N, Node) ->
    Routes = lists:usort(lists:append([routes(I, Node) || I <- lists:seq(1, N)])),
    maps:map(
        fun(_Filter, Dests) -> lists:sort(Dests) end,
        maps:groups_from_list(fun({F, _}) -> F end, fun({_, D}) -> D end, Routes)
    ).

%% Topics a publisher would use, for a spread of clients: each kind of
%% filter, and topics nobody subscribes to.
-spec sample_topics(pos_integer()) -> [binary()].
sample_topics(N) ->
    Step = max(1, N div 40),
    lists:append([
        begin
            Id = client_id(I),
            Fleet = integer_to_binary(I rem 50),
            [
                <<"devices/", Id/binary, "/cmd">>,
                <<"devices/", Id/binary, "/config/net/wifi">>,
                <<"devices/", Id/binary, "/config">>,
                <<"fleet/", Fleet/binary, "/", Id/binary, "/status">>,
                <<"jobs/", (integer_to_binary(I rem 20))/binary>>,
                <<"telemetry/", (integer_to_binary(I rem 10))/binary, "/", Id/binary, "/temp">>,
                <<"alerts/fire/", Id/binary>>,
                <<"devices/", Id/binary, "/cmd/extra">>,
                <<"nobody/listens/", Id/binary>>
            ]
        end
     || I <- lists:seq(1, N, Step)
    ]).

%% `[{Topic, Dests}]': the sorted dests of the filters in `Table' that
%% match each topic (MQTT rules, written here independently of the library).
-spec expected_matches([binary()], #{binary() => [emqx_redis_router:dest()]}) ->
    [{binary(), [emqx_redis_router:dest()]}].
expected_matches(Topics, Table) ->
    Filters = [{words(Filter), Dests} || {Filter, Dests} <- maps:to_list(Table)],
    [{Topic, matching(words(Topic), Filters)} || Topic <- Topics].

%% @doc Whether the topic name matches the filter (MQTT rules, as above).
-spec matches(binary(), binary()) -> boolean().
matches(Topic, Filter) ->
    words_match(words(Topic), words(Filter)).

matching(Name, Filters) ->
    lists:usort(lists:append([Dests || {Filter, Dests} <- Filters, words_match(Name, Filter)])).

words(Topic) -> binary:split(Topic, <<"/">>, [global]).

words_match(_, [<<"#">>]) -> true;
words_match([_ | Name], [<<"+">> | Filter]) -> words_match(Name, Filter);
words_match([W | Name], [W | Filter]) -> words_match(Name, Filter);
words_match([], []) -> true;
words_match(_, _) -> false.
