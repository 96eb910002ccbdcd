%% @doc The demo's durable sessions and the stream of messages node A
%% persists for them, computed from the number of clients and a batch
%% number alone: node A publishes these batches, and the controller
%% computes them again to judge what the clients got.
%%
%% The durable clients are clients 1, 11, 21, ... that are online (1, 11,
%% 31, 41, ...). They are grouped in sites of about
%% ?PER_SITE clients; each client subscribes durably to its site's status
%% (`site<G>/status/#', shared by the site's clients) and to its own
%% commands (`site<G>/cmd/<client id>'). Each batch holds, per site, two
%% status messages, one command for one of the site's clients in turn, and
%% one debug message that no durable filter wants (persist/1 skips it).
-module(emqx_redis_demo_ds_data).

-export([plan/1, durable/1, filters/2, batch/2, site/1, first_level/1]).

-export_type([plan/0]).

-import(emqx_redis_demo_data, [client_id/1]).

%% Durable clients per site.
-define(PER_SITE, 4).
%% Messages per site and batch (see message/2).
-define(KINDS, 4).
%% At most this many messages per persist/1 call (it takes 10,000): with
%% more sites, the sites take turns.
-define(MAX_BATCH, 4000).

-type plan() :: #{
    durable := [pos_integer()],
    sites := pos_integer(),
    site_of := #{pos_integer() => non_neg_integer()},
    members := #{non_neg_integer() => tuple()},
    batch_size := pos_integer()
}.

-spec durable(pos_integer()) -> boolean().
durable(I) -> I rem 10 =:= 1 andalso emqx_redis_demo_data:online(I).

%% @doc The durable clients of clients 1..N, their sites, and the size of
%% a batch: everything scales with N.
-spec plan(pos_integer()) -> plan().
plan(N) ->
    Durable = [I || I <- lists:seq(1, N), durable(I)],
    Sites = max(1, length(Durable) div ?PER_SITE),
    SiteOf = maps:from_list([{I, K rem Sites} || {K, I} <- lists:enumerate(0, Durable)]),
    Members = maps:groups_from_list(fun(I) -> maps:get(I, SiteOf) end, Durable),
    #{
        durable => Durable,
        sites => Sites,
        site_of => SiteOf,
        members => maps:map(fun(_, Is) -> list_to_tuple(Is) end, Members),
        batch_size => min(?KINDS * Sites, ?MAX_BATCH)
    }.

%% @doc The durable filters of client `I', disjoint: a message matches at
%% most one of them.
-spec filters(pos_integer(), plan()) -> [binary()].
filters(I, #{site_of := SiteOf}) ->
    Site = site(maps:get(I, SiteOf)),
    [<<Site/binary, "/status/#">>, <<Site/binary, "/cmd/", (client_id(I))/binary>>].

%% @doc The messages of batch `B' (1, 2, ...), in publish order.
-spec batch(pos_integer(), plan()) -> [emqx_redis_ds:message()].
batch(B, #{batch_size := Size} = Plan) ->
    [message((B - 1) * Size + J, Plan) || J <- lists:seq(0, Size - 1)].

%% Message number `G' (from 0): its site, then its kind, turn by turn.
message(G, #{sites := Sites, members := Members}) ->
    Site = G rem Sites,
    Cycle = G div Sites,
    Round = Cycle div ?KINDS,
    Prefix = site(Site),
    Device = <<"dev", (integer_to_binary(Round rem 50))/binary>>,
    Topic =
        case Cycle rem ?KINDS of
            0 ->
                <<Prefix/binary, "/status/", Device/binary, "/temp">>;
            1 ->
                <<Prefix/binary, "/status/", Device/binary, "/battery">>;
            2 ->
                Clients = maps:get(Site, Members),
                Target = element(1 + Round rem tuple_size(Clients), Clients),
                <<Prefix/binary, "/cmd/", (client_id(Target))/binary>>;
            3 ->
                <<Prefix/binary, "/debug/", Device/binary>>
        end,
    #{
        id => <<"ds-", (integer_to_binary(G))/binary>>,
        topic => Topic,
        %% Two gateways per site: their messages go to different streams.
        from => <<"gw-", (integer_to_binary(Site))/binary, "-", (integer_to_binary(G rem 2))/binary>>,
        qos => 1,
        payload => iolist_to_binary(io_lib:format("{\"seq\":~b,\"value\":~b}", [G, G * 7 rem 1000])),
        timestamp => 1700000000000 + G
    }.

%% @doc The first level of site `G''s topics.
-spec site(non_neg_integer()) -> binary().
site(G) -> <<"site", (integer_to_binary(G))/binary>>.

%% @doc The first level of a topic name or filter.
-spec first_level(binary()) -> binary().
first_level(Topic) -> hd(binary:split(Topic, <<"/">>)).
