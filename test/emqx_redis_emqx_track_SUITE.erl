%% The EMQX adapter's own logic, without EMQX: what a session keeps of its
%% messages (packet ids, acknowledgements, its position), what a resume
%% replays, the stored session's expiry, and the adapter's settings.
-module(emqx_redis_emqx_track_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-compile([export_all, nowarn_export_all]).

-define(T, emqx_redis_storage_emqx_track).
-define(OPTS, #{route_grace => 1500, clock_skew => 500, max_done => 1000}).

all() ->
    [
        first_sends_take_packet_ids_in_order,
        packet_ids_wrap_after_65535,
        qos1_is_done_at_puback,
        qos2_waits_for_pubcomp_after_pubrec,
        a_message_sent_twice_is_acked_copy_by_copy,
        position_stays_while_disconnected,
        position_stays_while_the_window_is_full,
        position_moves_to_the_oldest_unacked_or_the_grace,
        done_ids_before_the_position_are_forgotten,
        done_ids_are_bounded_newest_kept,
        resume_replays_from_the_position_less_what_is_done,
        resume_keeps_packet_ids_and_phases_in_sending_order,
        resume_sends_each_copy_of_a_message_matching_two_filters,
        resume_leaves_out_inflight_messages_gone_from_the_streams,
        stored_form_round_trips,
        corrupt_stored_forms_are_refused,
        ttl_while_connected_outlives_a_node_death_by_the_expiry,
        ttl_after_disconnect_is_what_is_left,
        settings_are_checked_field_by_field,
        load_without_emqx_is_refused,
        shared_subscriptions_are_not_durable,
        resume_leaves_out_only_what_surely_arrived_live
    ].

%% A connected session with room for 32 in flight, created at t=1000.
connected() ->
    ?T:connected(32, ?T:new(1000, 32)).

first_sends_take_packet_ids_in_order(_) ->
    T1 = ?T:delivered(<<"a">>, 1, false, 1100, connected()),
    T2 = ?T:delivered(<<"b">>, 2, false, 1101, T1),
    %% A resend (dup) takes no new packet id, nor does QoS 0.
    T3 = ?T:delivered(<<"a">>, 1, true, 1100, T2),
    T4 = ?T:delivered(<<"c">>, 0, false, 1102, T3),
    T5 = ?T:delivered(<<"d">>, 1, false, 1103, T4),
    ?assertEqual(
        [{<<"a">>, 1, wait_ack, 1100, 1}, {<<"b">>, 2, wait_ack, 1101, 2}, {<<"d">>, 3, wait_ack, 1103, 1}],
        ?T:inflight(T5)
    ),
    ?assertEqual(4, ?T:next_pkt(T5)),
    %% A resend of a message this session never saw sent: in flight, id unknown.
    T6 = ?T:delivered(<<"e">>, 1, true, 1104, T5),
    ?assertMatch([_, _, _, {<<"e">>, undefined, wait_ack, 1104, 1}], ?T:inflight(T6)),
    ?assertEqual(4, ?T:next_pkt(T6)).

packet_ids_wrap_after_65535(_) ->
    {ok, T0} = ?T:from_stored((?T:to_stored(connected()))#{next_pkt => 65535}, 32),
    T1 = ?T:delivered(<<"a">>, 1, false, 1100, T0),
    T2 = ?T:delivered(<<"b">>, 1, false, 1100, T1),
    ?assertEqual([{<<"a">>, 65535, wait_ack, 1100, 1}, {<<"b">>, 1, wait_ack, 1100, 1}], ?T:inflight(T2)),
    ?assertEqual(2, ?T:next_pkt(T2)).

qos1_is_done_at_puback(_) ->
    T1 = ?T:delivered(<<"a">>, 1, false, 1100, connected()),
    %% message.acked comes after delivery.completed for a PUBACK: no effect.
    T2 = ?T:acked(<<"a">>, T1),
    ?assertEqual(1, ?T:inflight_count(T2)),
    T3 = ?T:completed(<<"a">>, T2),
    ?assertEqual([], ?T:inflight(T3)),
    ?assertEqual(#{<<"a">> => 1100}, maps:get(done, ?T:to_stored(T3))).

qos2_waits_for_pubcomp_after_pubrec(_) ->
    T1 = ?T:delivered(<<"a">>, 2, false, 1100, connected()),
    %% A PUBCOMP before PUBREC is not one: nothing changes.
    ?assertEqual(?T:inflight(T1), ?T:inflight(?T:completed(<<"a">>, T1))),
    T2 = ?T:acked(<<"a">>, T1),
    ?assertEqual([{<<"a">>, 1, wait_comp, 1100, 2}], ?T:inflight(T2)),
    T3 = ?T:completed(<<"a">>, T2),
    ?assertEqual([], ?T:inflight(T3)),
    ?assertEqual(#{<<"a">> => 1100}, maps:get(done, ?T:to_stored(T3))).

a_message_sent_twice_is_acked_copy_by_copy(_) ->
    T1 = ?T:delivered(<<"a">>, 1, false, 1100, connected()),
    T2 = ?T:delivered(<<"a">>, 1, false, 1100, T1),
    T3 = ?T:completed(<<"a">>, T2),
    ?assertEqual([{<<"a">>, 2, wait_ack, 1100, 1}], ?T:inflight(T3)),
    ?assertEqual([], ?T:inflight(?T:completed(<<"a">>, T3))).

position_stays_while_disconnected(_) ->
    T = ?T:disconnected(?T:completed(<<"a">>, ?T:delivered(<<"a">>, 1, false, 1100, connected()))),
    ?assertEqual(1000, ?T:since(?T:advance(100000, ?OPTS, T))).

position_stays_while_the_window_is_full(_) ->
    %% Two in flight in a window of two: EMQX may queue more we never saw.
    T0 = ?T:connected(2, ?T:new(1000, 2)),
    T = ?T:delivered(<<"b">>, 1, false, 1200, ?T:delivered(<<"a">>, 1, false, 1100, T0)),
    ?assertEqual(1000, ?T:since(?T:advance(100000, ?OPTS, T))),
    %% One acknowledged: the window has room, the queue is empty.
    ?assertEqual(1200, ?T:since(?T:advance(100000, ?OPTS, ?T:completed(<<"a">>, T)))).

position_moves_to_the_oldest_unacked_or_the_grace(_) ->
    T = ?T:delivered(<<"b">>, 1, false, 5000, ?T:delivered(<<"a">>, 1, false, 4000, connected())),
    ?assertEqual(4000, ?T:since(?T:advance(100000, ?OPTS, T))),
    %% Nothing in flight: up to the grace before now (routing in flight).
    ?assertEqual(8000, ?T:since(?T:advance(10000, ?OPTS, connected()))),
    %% It never goes back.
    Moved = ?T:advance(10000, ?OPTS, connected()),
    ?assertEqual(8000, ?T:since(?T:advance(5000, ?OPTS, Moved))).

done_ids_before_the_position_are_forgotten(_) ->
    T1 = ?T:completed(<<"a">>, ?T:delivered(<<"a">>, 1, false, 1100, connected())),
    T2 = ?T:delivered(<<"b">>, 0, false, 9000, T1),
    T3 = ?T:advance(10000, ?OPTS, T2),
    ?assertEqual(8000, ?T:since(T3)),
    ?assertEqual(#{<<"b">> => 9000}, maps:get(done, ?T:to_stored(T3))).

done_ids_are_bounded_newest_kept(_) ->
    T = lists:foldl(
        fun(I, Acc) -> ?T:delivered(integer_to_binary(I), 0, false, 1000 + I, Acc) end,
        ?T:disconnected(connected()),
        lists:seq(1, 10)
    ),
    Kept = maps:get(done, ?T:to_stored(?T:advance(2000, ?OPTS#{max_done => 3}, T))),
    ?assertEqual([<<"10">>, <<"8">>, <<"9">>], lists:sort(maps:keys(Kept))).

%% Read messages as the keeper gives them to classify/2.
read(Filter, Id, Ts) -> {Filter, Id, Ts, {msg, Id}}.

resume_replays_from_the_position_less_what_is_done(_) ->
    T0 = ?T:completed(<<"acked">>, ?T:delivered(<<"acked">>, 1, false, 1500, connected())),
    T = ?T:delivered(<<"qos0">>, 0, false, 1600, T0),
    Read = [read(<<"f">>, <<"old">>, 900), read(<<"f">>, <<"acked">>, 1500), read(<<"f">>, <<"qos0">>, 1600),
            read(<<"f">>, <<"new1">>, 1700), read(<<"f">>, <<"new2">>, 1800)],
    ?assertEqual({[], [{<<"f">>, {msg, <<"new1">>}}, {<<"f">>, {msg, <<"new2">>}}]}, ?T:classify(Read, T)).

resume_keeps_packet_ids_and_phases_in_sending_order(_) ->
    T0 = ?T:delivered(<<"b">>, 2, false, 1200, ?T:delivered(<<"a">>, 1, false, 1100, connected())),
    T = ?T:acked(<<"b">>, T0),
    %% Read in another order than sent: in flight goes in sending order.
    Read = [read(<<"g">>, <<"b">>, 1200), read(<<"f">>, <<"a">>, 1100), read(<<"f">>, <<"c">>, 1300)],
    ?assertEqual(
        {[{1, wait_ack, <<"f">>, {msg, <<"a">>}}, {2, wait_comp, <<"g">>, {msg, <<"b">>}}], [{<<"f">>, {msg, <<"c">>}}]},
        ?T:classify(Read, T)
    ).

resume_sends_each_copy_of_a_message_matching_two_filters(_) ->
    %% Sent once (for f), not yet for g: one copy in flight, one new.
    T = ?T:delivered(<<"a">>, 1, false, 1100, connected()),
    Read = [read(<<"f">>, <<"a">>, 1100), read(<<"g">>, <<"a">>, 1100)],
    ?assertEqual({[{1, wait_ack, <<"f">>, {msg, <<"a">>}}], [{<<"g">>, {msg, <<"a">>}}]}, ?T:classify(Read, T)).

resume_leaves_out_inflight_messages_gone_from_the_streams(_) ->
    T = ?T:delivered(<<"b">>, 1, false, 1200, ?T:delivered(<<"a">>, 1, false, 1100, connected())),
    ?assertEqual({[{2, wait_ack, <<"f">>, {msg, <<"b">>}}], []}, ?T:classify([read(<<"f">>, <<"b">>, 1200)], T)).

stored_form_round_trips(_) ->
    T0 = ?T:subscribe(<<"t/#">>, #{qos => 1, nl => 0, rap => 0, rh => 0}, connected()),
    T1 = ?T:acked(<<"b">>, ?T:delivered(<<"b">>, 2, false, 1200, ?T:delivered(<<"a">>, 1, false, 1100, T0))),
    T2 = ?T:delivered(<<"c">>, 0, false, 1300, T1),
    Stored = ?T:to_stored(T2),
    {ok, Back} = ?T:from_stored(binary_to_term(term_to_binary(Stored)), 32),
    ?assertEqual(Stored, ?T:to_stored(Back)),
    ?assertEqual(#{<<"t/#">> => #{qos => 1, nl => 0, rap => 0, rh => 0}}, ?T:subs(Back)),
    %% It goes on numbering where it was.
    ?assertMatch([_, _, {<<"d">>, 3, wait_ack, 1400, 1}], ?T:inflight(?T:delivered(<<"d">>, 1, false, 1400, Back))).

corrupt_stored_forms_are_refused(_) ->
    Good = ?T:to_stored(connected()),
    Bad = [
        not_a_map,
        #{},
        Good#{v => 2},
        Good#{next_pkt => 0},
        Good#{next_pkt => 65536},
        Good#{inflight => [{<<"a">>, 1, wait_ack, 1, 3}]},
        Good#{inflight => [{<<"a">>, 1, lost, 1, 1}]},
        Good#{inflight => [garbage]},
        Good#{since => <<"x">>}
    ],
    [?assertEqual({error, {corrupt, adapter_session}}, ?T:from_stored(B, 32)) || B <- Bad].

ttl_while_connected_outlives_a_node_death_by_the_expiry(_) ->
    ?assertEqual(50, ?T:ttl_s(30000, false, 10000, 123)),
    %% MQTT's largest expiry interval is the cap.
    ?assertEqual(4294967295, ?T:ttl_s(4294967295000, false, 10000, 123)).

ttl_after_disconnect_is_what_is_left(_) ->
    ?assertEqual(20, ?T:ttl_s(30000, 1000, 10000, 11000)),
    ?assertEqual(1, ?T:ttl_s(1000, 1000, 10000, 1999)),
    %% Past its expiry it still gets a second (the keeper ends it first).
    ?assertEqual(1, ?T:ttl_s(1000, 1000, 10000, 50000)).

settings_are_checked_field_by_field(_) ->
    ?assertEqual(
        {error, {invalid_config, <<"emqx.commit_interval">>, <<"milliseconds, an integer up to 3600000">>}},
        emqx_redis_storage_emqx:load(#{emqx => #{commit_interval => 0}})
    ),
    ?assertEqual(
        {error, {invalid_config, <<"emqx.persist_qos0">>, <<"auto, true or false">>}},
        emqx_redis_storage_emqx:load(#{emqx => #{persist_qos0 => maybe}})
    ),
    ?assertEqual(
        {error, {invalid_config, <<"emqx.nope">>, <<"a known field">>}},
        emqx_redis_storage_emqx:load(#{emqx => #{nope => 1}})
    ),
    ?assertMatch(
        {error, {invalid_config, <<"emqx.limits">>, _}},
        emqx_redis_storage_emqx:load(#{emqx => #{limits => #{connect_per_user => <<"conn">>}}})
    ),
    ?assertMatch(
        {error, {invalid_config, <<"emqx.limits">>, _}},
        emqx_redis_storage_emqx:load(#{emqx => #{limits => #{publish_per_client => pub}}})
    ),
    ?assertEqual({error, {invalid_config, <<"emqx">>, <<"a map">>}}, emqx_redis_storage_emqx:load(#{emqx => []})),
    ?assertEqual({error, {invalid_config, <<>>, <<"a map">>}}, emqx_redis_storage_emqx:load(config)).

load_without_emqx_is_refused(_) ->
    ?assertMatch({error, {emqx_not_running, _}}, emqx_redis_storage_emqx:load(#{})),
    %% Nothing was started.
    ?assertNot(lists:keymember(emqx_redis_storage, 1, application:which_applications())).

shared_subscriptions_are_not_durable(_) ->
    ?assert(emqx_redis_storage_emqx:durable_filter(<<"a/+/b">>)),
    ?assertNot(emqx_redis_storage_emqx:durable_filter(<<"$share/g/a/b">>)),
    ?assertNot(emqx_redis_storage_emqx:durable_filter(<<"$queue/a/b">>)),
    %% EMQX's record for a shared subscription.
    ?assertNot(emqx_redis_storage_emqx:durable_filter({share, <<"g">>, <<"a/b">>})).

%% A resume hands over what was stored, less what surely reached the new
%% channel live: made on its node after its subscriptions began (t=1000
%% µs), or on another node after the routing barrier (t=3000 µs) and the
%% clocks' skew (2 ms). Before the cut is known, everything.
resume_leaves_out_only_what_surely_arrived_live(_) ->
    Cut = {1000, 3000},
    ?assertNot(?T:reached_live(1000, this_node, Cut, 2)),
    ?assert(?T:reached_live(1001, this_node, Cut, 2)),
    ?assertNot(?T:reached_live(2000, other_node, Cut, 2)),
    ?assertNot(?T:reached_live(5000, other_node, Cut, 2)),
    ?assert(?T:reached_live(5001, other_node, Cut, 2)),
    ?assertNot(?T:reached_live(9999999, this_node, undefined, 2)),
    ?assertNot(?T:reached_live(9999999, other_node, undefined, 2)).
