%% @doc What the EMQX adapter knows of one persistent session, and what it
%% saves of it: pure functions, no EMQX and no Redis (tested without either).
%%
%% The session's messages live once in durable streams (`emqx_redis_ds'); a
%% session keeps no copy. What it keeps is a position and the exceptions
%% after it:
%%
%% - `since': every message published before it (by its EMQX timestamp) that
%%   this session was to get is done: delivered at QoS 0, or acknowledged
%%   (PUBACK; PUBCOMP for QoS 2). It moves only while the client is connected
%%   and its inflight window has room, which is when EMQX's queue for it is
%%   empty: then nothing older than the oldest unacknowledged message, or
%%   than `route_grace' (routing in flight) and `clock_skew' (the
%%   publisher's clock) before now, can still be waiting.
%% - `done': the messages at or after `since' that are done, by id.
%% - `inflight': the messages sent to the client and not yet done, in the
%%   order sent, each with the packet id EMQX gave it (EMQX numbers its
%%   sends one by one, so the n-th first send of a QoS 1/2 message gets the
%%   session's n-th packet id) and its phase (`wait_ack', or `wait_comp'
%%   after PUBREC).
%%
%% On resume every stored message from `since' on is replayed: those in
%% `inflight' with their packet ids (EMQX resends them with the dup flag, and
%% PUBREL for those past PUBREC), the others as new, and those in `done' not
%% at all.
-module(emqx_redis_storage_emqx_track).

-export([new/2, from_stored/2, to_stored/1]).
-export([delivered/5, acked/2, completed/2, connected/2, disconnected/1, advance/3]).
-export([subscribe/3, unsubscribe/2, subs/1, since/1, next_pkt/1, inflight/1, inflight_count/1]).
-export([classify/2, ttl_s/4, reached_live/4]).

-define(MAX_PACKET_ID, 65535).
%% MQTT 5's largest Session Expiry Interval, in seconds.
-define(MAX_TTL_S, 4294967295).

-type msg_id() :: binary().
-type ms() :: integer().
-type phase() :: wait_ack | wait_comp.
%% A copy of a message in flight; a message that matches two subscriptions
%% is sent twice, with two packet ids.
-type copy() :: {Order :: non_neg_integer(), PacketId :: 1..?MAX_PACKET_ID | undefined, phase(), Ts :: ms(), QoS :: 1 | 2}.
-record(track, {
    subs = #{} :: #{binary() => map()},
    since :: ms(),
    done = #{} :: #{msg_id() => ms()},
    inflight = #{} :: #{msg_id() => [copy()]},
    order = 0 :: non_neg_integer(),
    next_pkt = 1 :: 1..?MAX_PACKET_ID,
    %% The client is connected, and this many messages fit in its window.
    connected = false :: boolean(),
    max_inflight = 32 :: pos_integer()
}).
-opaque t() :: #track{}.
-export_type([t/0, msg_id/0]).

%% The stored form: a plain map, versioned.
-type stored() :: #{v := 1, subs := map(), since := ms(), done := map(), inflight := list(), next_pkt := pos_integer()}.
-export_type([stored/0]).

%% @doc A new session: nothing before `Now' is its business.
-spec new(ms(), pos_integer()) -> t().
new(Now, MaxInflight) ->
    #track{since = Now, max_inflight = MaxInflight}.

-spec from_stored(stored(), pos_integer()) -> {ok, t()} | {error, {corrupt, term()}}.
from_stored(#{v := 1, subs := Subs, since := Since, done := Done, inflight := Inflight, next_pkt := Next}, MaxInflight) when
    is_map(Subs), is_integer(Since), is_map(Done), is_list(Inflight), is_integer(Next), Next >= 1, Next =< ?MAX_PACKET_ID
->
    T0 = #track{subs = Subs, since = Since, done = Done, next_pkt = Next, max_inflight = MaxInflight},
    try
        {ok, lists:foldl(
            fun({Id, Pkt, Phase, Ts, QoS}, T) when
                is_binary(Id), is_integer(Ts), (QoS =:= 1 orelse QoS =:= 2),
                (Phase =:= wait_ack orelse Phase =:= wait_comp)
            ->
                add_copy(Id, Pkt, Phase, Ts, QoS, T)
            end,
            T0,
            Inflight
        )}
    catch
        error:_ -> {error, {corrupt, adapter_session}}
    end;
from_stored(_, _) ->
    {error, {corrupt, adapter_session}}.

-spec to_stored(t()) -> stored().
to_stored(#track{subs = Subs, since = Since, done = Done, next_pkt = Next} = T) ->
    #{v => 1, subs => Subs, since => Since, done => Done, inflight => inflight(T), next_pkt => Next}.

%% @doc The copies in flight in sending order: `{Id, PacketId, Phase, Ts, QoS}'.
-spec inflight(t()) -> [{msg_id(), pos_integer() | undefined, phase(), ms(), 1 | 2}].
inflight(#track{inflight = Inflight}) ->
    Flat = [{Order, {Id, Pkt, Phase, Ts, QoS}} || {Id, Copies} <- maps:to_list(Inflight), {Order, Pkt, Phase, Ts, QoS} <- Copies],
    [C || {_, C} <- lists:keysort(1, Flat)].

-spec inflight_count(t()) -> non_neg_integer().
inflight_count(#track{inflight = Inflight}) ->
    maps:fold(fun(_, Copies, N) -> N + length(Copies) end, 0, Inflight).

-spec subs(t()) -> #{binary() => map()}.
subs(#track{subs = Subs}) -> Subs.

-spec since(t()) -> ms().
since(#track{since = Since}) -> Since.

-spec next_pkt(t()) -> pos_integer().
next_pkt(#track{next_pkt = Next}) -> Next.

-spec subscribe(binary(), map(), t()) -> t().
subscribe(Filter, SubOpts, #track{subs = Subs} = T) ->
    T#track{subs = Subs#{Filter => SubOpts}}.

-spec unsubscribe(binary(), t()) -> t().
unsubscribe(Filter, #track{subs = Subs} = T) ->
    T#track{subs = maps:remove(Filter, Subs)}.

%% @doc EMQX sent a message to the client (`message.delivered'): at QoS 0
%% it is done; a first send of QoS 1/2 takes the next packet id; a resend
%% (dup) of a message already in flight changes nothing.
-spec delivered(msg_id(), 0..2, boolean(), ms(), t()) -> t().
delivered(Id, 0, _Dup, Ts, T) ->
    done(Id, Ts, T);
delivered(Id, QoS, true, Ts, #track{inflight = Inflight} = T) ->
    case maps:is_key(Id, Inflight) of
        true -> T;
        %% Not seen sent before (sent before this process tracked it): in
        %% flight, with a packet id we cannot know.
        false -> add_copy(Id, undefined, wait_ack, Ts, QoS, T)
    end;
delivered(Id, QoS, false, Ts, #track{next_pkt = Next} = T) ->
    add_copy(Id, Next, wait_ack, Ts, QoS, T#track{next_pkt = next_pkt_id(Next)}).

add_copy(Id, Pkt, Phase, Ts, QoS, #track{inflight = Inflight, order = N} = T) ->
    Copy = {N, Pkt, Phase, Ts, QoS},
    T#track{inflight = maps:update_with(Id, fun(L) -> L ++ [Copy] end, [Copy], Inflight), order = N + 1}.

next_pkt_id(?MAX_PACKET_ID) -> 1;
next_pkt_id(Id) -> Id + 1.

%% @doc `message.acked': PUBREC of a QoS 2 copy (it waits for PUBCOMP now).
%% A QoS 1 copy is done by `completed/2' (EMQX runs `delivery.completed'
%% for a PUBACK before `message.acked').
-spec acked(msg_id(), t()) -> t().
acked(Id, T) ->
    update_first(Id, fun({O, P, wait_ack, Ts, 2}) -> {keep, {O, P, wait_comp, Ts, 2}}; (_) -> skip end, T).

%% @doc `delivery.completed': PUBACK of a QoS 1 copy or PUBCOMP of a QoS 2 one.
-spec completed(msg_id(), t()) -> t().
completed(Id, T) ->
    update_first(
        Id,
        fun
            ({_, _, wait_ack, Ts, 1}) -> {done, Ts};
            ({_, _, wait_comp, Ts, 2}) -> {done, Ts};
            (_) -> skip
        end,
        T
    ).

%% Applies Fun to the first copy of Id it does not skip.
update_first(Id, Fun, #track{inflight = Inflight} = T) ->
    case maps:find(Id, Inflight) of
        {ok, Copies} ->
            case update_copies(Copies, Fun, []) of
                skip -> T;
                {keep, NewCopies} -> T#track{inflight = Inflight#{Id := NewCopies}};
                {done, [], Ts} -> done(Id, Ts, T#track{inflight = maps:remove(Id, Inflight)});
                {done, Rest, Ts} -> done(Id, Ts, T#track{inflight = Inflight#{Id := Rest}})
            end;
        error ->
            T
    end.

update_copies([], _Fun, _Seen) ->
    skip;
update_copies([C | Rest], Fun, Seen) ->
    case Fun(C) of
        skip -> update_copies(Rest, Fun, [C | Seen]);
        {keep, New} -> {keep, lists:reverse(Seen, [New | Rest])};
        {done, Ts} -> {done, lists:reverse(Seen, Rest), Ts}
    end.

done(Id, Ts, #track{since = Since, done = Done} = T) when Ts >= Since ->
    T#track{done = Done#{Id => Ts}};
done(_Id, _Ts, T) ->
    T.

-spec connected(pos_integer(), t()) -> t().
connected(MaxInflight, T) ->
    T#track{connected = true, max_inflight = MaxInflight}.

-spec disconnected(t()) -> t().
disconnected(T) ->
    T#track{connected = false}.

%% @doc Moves `since' as far as it may (see the module doc) and forgets what
%% is done before it; keeps at most `MaxDone' done ids (the newest: a
%% forgotten one is replayed once more, never lost).
-spec advance(ms(), #{route_grace := ms(), clock_skew := ms(), max_done := pos_integer()}, t()) -> t().
advance(Now, #{route_grace := Grace, clock_skew := Skew, max_done := MaxDone}, #track{connected = true, max_inflight = Max, since = Since} = T) ->
    case inflight_count(T) < Max of
        true ->
            %% Timestamps are the publishers' clocks.
            Oldest = lists:min([Now - Grace - Skew | [Ts || {_, _, _, Ts, _} <- inflight(T)]]),
            prune(MaxDone, T#track{since = max(Since, Oldest)});
        false ->
            prune(MaxDone, T)
    end;
advance(_Now, #{max_done := MaxDone}, T) ->
    prune(MaxDone, T).

prune(MaxDone, #track{since = Since, done = Done} = T) ->
    Kept = maps:filter(fun(_, Ts) -> Ts >= Since end, Done),
    case map_size(Kept) > MaxDone of
        false ->
            T#track{done = Kept};
        true ->
            Newest = lists:sublist(lists:reverse(lists:keysort(2, maps:to_list(Kept))), MaxDone),
            T#track{done = maps:from_list(Newest)}
    end.

%% @doc What to do with the stored messages read for a resume, each given
%% as `{Filter, Id, Ts, Msg}' in the order to replay: `{Inflight, Queue}',
%% Inflight as `{PacketId, Phase, Filter, Msg}' in sending order (a copy
%% whose message is gone from the streams is left out), Queue as
%% `{Filter, Msg}' for those to send as new; those before `since' and those
%% done are left out.
-spec classify([{binary(), msg_id(), ms(), Msg}], t()) ->
    {[{pos_integer() | undefined, phase(), binary(), Msg}], [{binary(), Msg}]}.
classify(Read, #track{since = Since, done = Done, inflight = Copies}) ->
    {_, Inflight, Queue} = lists:foldl(
        fun({Filter, Id, Ts, Msg}, {Left, In, Q}) ->
            case maps:find(Id, Left) of
                _ when Ts < Since -> {Left, In, Q};
                {ok, [{Order, Pkt, Phase, _, _} | Rest]} -> {Left#{Id := Rest}, [{Order, {Pkt, Phase, Filter, Msg}} | In], Q};
                _ ->
                    case maps:is_key(Id, Done) of
                        true -> {Left, In, Q};
                        false -> {Left, In, [{Filter, Msg} | Q]}
                    end
            end
        end,
        {Copies, [], []},
        Read
    ),
    {[C || {_, C} <- lists:keysort(1, Inflight)], lists:reverse(Queue)}.

%% @doc The stored session's time to live, in seconds. Disconnected (at
%% `DisconnectedAt'): what is left of its expiry interval, at least 1 s.
%% Connected (`false'): the expiry interval plus two touches, as a touch
%% renews it while the channel lives: the session outlives a node that
%% dies by its expiry interval (and at most two touches more).
-spec ttl_s(non_neg_integer(), ms() | false, pos_integer(), ms()) -> 1..?MAX_TTL_S.
ttl_s(ExpiryMs, false, TouchMs, _Now) ->
    clamp_ttl(ExpiryMs + 2 * TouchMs);
ttl_s(ExpiryMs, DisconnectedAt, _TouchMs, Now) ->
    clamp_ttl(ExpiryMs - (Now - DisconnectedAt)).

clamp_ttl(Ms) ->
    min(?MAX_TTL_S, max(1, (Ms + 999) div 1000)).

%% @doc Whether a stored message surely reached a resumed session's new
%% channel live, so a resume leaves it out of what it hands over: made
%% (µs, by the clock of the node that made it) on the new channel's node
%% after its subscriptions began, or on another node after the routing
%% barrier ended, less the clocks' skew. (A publisher looks up routes
%% after making a message; the barrier ends once every node routes the
%% filters to the new channel's node.) Without a cut: no.
-spec reached_live(integer(), this_node | other_node, {integer(), integer()} | undefined, ms()) -> boolean().
reached_live(_Made, _Where, undefined, _SkewMs) ->
    false;
reached_live(Made, this_node, {Subscribed, _Routed}, _SkewMs) ->
    Made > Subscribed;
reached_live(Made, other_node, {_Subscribed, Routed}, SkewMs) ->
    Made > Routed + 1000 * SkewMs.
