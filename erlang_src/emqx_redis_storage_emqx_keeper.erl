%% @doc One persistent MQTT session's keeper: a process beside the client's
%% EMQX channel that keeps the session's state in Redis (see
%% `emqx_redis_storage_emqx_track') and resumes it on a node that never saw it.
%%
%% Tracking. The channel's hooks tell the keeper what happens (messages
%% sent, acknowledged, subscriptions, connects); the keeper saves the
%% session under the client's takeover lease, with its fence, every
%% `commit_interval' while something changed and every `touch_interval'
%% while connected (the session then outlives its channel by its expiry
%% interval), and once more when the channel ends. Subscriptions are saved
%% before the hook returns (before the SUBACK).
%%
%% Resuming. When a client connects with clean_start=false and no channel
%% of it lives in the cluster (its node died), the keeper starts first, as a
%% stand-in for the dead channel: it registers as the client's channel with
%% EMQX, so EMQX's own takeover asks it for the session. It then takes the
%% lease, reads the stored session and every stored message after its
%% position, and hands EMQX a session built with EMQX's own session module:
%% the subscriptions, the messages in flight with their packet ids (EMQX
%% resends them with the dup flag, and PUBREL for those past PUBREC), the
%% others queued. The client gets session-present = 1. After the takeover the
%% keeper tracks the new channel. Nothing to resume: the call fails the way a
%% channel that died meanwhile fails, and EMQX makes a new session.
-module(emqx_redis_storage_emqx_keeper).

-behaviour(gen_server).

-export([start_ghost/2, start_tracking/3, call/3, event/2, sync/2]).
-export([init/1, handle_continue/2, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(TRACK, emqx_redis_storage_emqx_track).
-define(KEEPERS, emqx_redis_storage_emqx_keepers).
-define(SYNC_TIMEOUT, 15000).
%% The longest wait between two asks for a held lease (ms): a resume after
%% a node died goes on at most about this long after the reap.
-define(MAX_LEASE_POLL, 250).
%% MQTT's Receive Maximum when a client gives none.
-define(DEFAULT_INFLIGHT, 32).

-record(st, {
    clientid :: binary(),
    channel :: pid(),
    opts :: map(),
    conninfo :: map(),
    %% ghost: registered with EMQX, waiting for the takeover; begun: handed
    %% the session, waiting for its end; tracking.
    mode :: ghost | begun | tracking,
    fence :: non_neg_integer() | undefined,
    track :: emqx_redis_storage_emqx_track:t() | undefined,
    %% What the takeover's end hands over: the stored messages not in
    %% flight, the iterators to read on from, the ids read.
    replay :: {list(), list(), #{binary() => true}} | undefined,
    %% When the new channel's subscriptions began and its routing barrier
    %% ended (µs): what is stored later reaches it live.
    cut :: {integer(), integer()} | undefined,
    dirty = false :: boolean(),
    connected = false :: boolean(),
    expiry_ms :: non_neg_integer(),
    disconnected_at :: integer() | undefined,
    ended = false :: boolean()
}).

%%--------------------------------------------------------------------
%% Called in the client's channel process (hooks)

%% @doc Starts a stand-in for the client's dead channel, registered with
%% EMQX as its channel; EMQX takes the session over from it.
-spec start_ghost(map(), map()) -> {ok, pid()} | {error, term()}.
start_ghost(ConnInfo, Opts) ->
    gen_server:start(?MODULE, {ghost, self(), ConnInfo, Opts}, []).

%% @doc Starts tracking a session EMQX made (`new') or took over live from
%% another channel (`resumed').
-spec start_tracking(new | resumed, map(), map()) -> {ok, pid()} | {error, term()}.
start_tracking(How, ConnInfo, Opts) ->
    gen_server:start(?MODULE, {How, self(), ConnInfo, Opts}, []).

%% @doc EMQX's channel interface (`conn_mod:call/3'), which EMQX's takeover
%% uses on the stand-in. Runs in the caller.
-spec call(pid(), term(), timeout()) -> term().
call(Pid, Req, Timeout) ->
    case gen_server:call(Pid, {emqx, Req, self()}, Timeout) of
        %% Not for this caller, or nothing to resume: as if the channel had
        %% gone (EMQX then makes a new session).
        {error, gone} -> exit(noproc);
        Reply -> Reply
    end.

-spec event(pid(), term()) -> ok.
event(Pid, Event) ->
    gen_server:cast(Pid, Event).

%% @doc A change the keeper saves before answering (subscriptions).
-spec sync(pid(), term()) -> ok | {error, term()}.
sync(Pid, Request) ->
    try
        gen_server:call(Pid, Request, ?SYNC_TIMEOUT)
    catch
        exit:{Reason, _} -> {error, Reason}
    end.

%%--------------------------------------------------------------------

-spec init({ghost | new | resumed, pid(), map(), map()}) -> {ok, #st{}} | {ok, #st{}, {continue, new | resumed}}.
init({Mode, Channel, ConnInfo, Opts}) ->
    #{clientid := ClientId, expiry_interval := Expiry} = ConnInfo,
    erlang:monitor(process, Channel),
    St = #st{
        clientid = ClientId,
        channel = Channel,
        opts = Opts,
        conninfo = ConnInfo,
        mode = tracking,
        expiry_ms = Expiry
    },
    case Mode of
        ghost ->
            ok = emqx_cm:register_channel(ClientId, self(), #{conn_mod => ?MODULE}),
            {ok, St#st{mode = ghost}};
        _ ->
            {ok, St, {continue, Mode}}
    end.

-spec handle_continue(new | resumed, #st{}) -> {noreply, #st{}}.
handle_continue(new, St0) ->
    St = lease(St0),
    touch(St),
    wipe(St),
    {noreply, St#st{track = ?TRACK:new(now_ms(), max_inflight(St#st.conninfo))}};
handle_continue(resumed, St0) ->
    St = lease(St0),
    touch(St),
    Track =
        case load(St) of
            {ok, T} -> T;
            _ -> ?TRACK:new(now_ms(), max_inflight(St#st.conninfo))
        end,
    {noreply, St#st{track = Track}}.

%% The stand-in, asked by EMQX's takeover in the client's new channel.
-spec handle_call(term(), gen_server:from(), #st{}) -> {reply, term(), #st{}} | {stop, normal, term(), #st{}}.
handle_call({emqx, {takeover, 'begin'}, Caller}, _From, #st{mode = ghost, channel = Caller} = St) ->
    case resume(St) of
        {ok, Session, St1} ->
            {reply, Session, St1#st{mode = begun}};
        {error, Reason, St1} ->
            Reason =/= not_found andalso log(warning, resume_failed, St, #{reason => Reason}),
            unregister_channel(St),
            {stop, normal, {error, gone}, release(St1)}
    end;
handle_call({emqx, {takeover, 'end'}, _Caller}, _From, #st{mode = begun} = St) ->
    Pending = hand_over(St),
    unregister_channel(St),
    case St#st.expiry_ms of
        0 ->
            %% Resumed by a connection whose session ends with it.
            {stop, normal, Pending, release(end_session(St))};
        _ ->
            touch(St),
            {reply, Pending, commit(St#st{mode = tracking, replay = undefined, dirty = true})}
    end;
handle_call({emqx, Req, _Caller}, _From, #st{mode = Mode} = St) when Mode =/= tracking ->
    %% kick, discard, or a takeover by another connection: the stand-in goes.
    Reply =
        case Req of
            {takeover, _} -> {error, gone};
            _ -> ok
        end,
    unregister_channel(St),
    {stop, normal, Reply, St};
handle_call({subscribed, Filter, SubOpts}, _From, #st{track = Track} = St) ->
    Reply = durable(subscribe, Filter, St),
    St1 = save(St#st{track = ?TRACK:subscribe(Filter, maps:remove(is_new, SubOpts), Track)}),
    {reply, Reply, St1};
handle_call({unsubscribed, Filter}, _From, #st{track = Track} = St) ->
    Reply = durable(unsubscribe, Filter, St),
    St1 = save(St#st{track = ?TRACK:unsubscribe(Filter, Track)}),
    {reply, Reply, St1};
handle_call(_Other, _From, St) ->
    {reply, {error, unknown_call}, St}.

-spec handle_cast(term(), #st{}) -> {noreply, #st{}}.
handle_cast(_Event, #st{track = undefined} = St) ->
    {noreply, St};
handle_cast({resumed, Subscribed, Routed}, #st{mode = begun} = St) ->
    {noreply, St#st{cut = {Subscribed, Routed}}};
handle_cast({delivered, Id, QoS, Dup, Ts}, #st{track = T} = St) ->
    {noreply, changed(St#st{track = ?TRACK:delivered(Id, QoS, Dup, Ts, T)})};
handle_cast({acked, Id}, #st{track = T} = St) ->
    {noreply, changed(St#st{track = ?TRACK:acked(Id, T)})};
handle_cast({completed, Id}, #st{track = T} = St) ->
    {noreply, changed(St#st{track = ?TRACK:completed(Id, T)})};
handle_cast({connected, ConnInfo}, #st{track = T} = St) ->
    St1 = St#st{
        conninfo = ConnInfo,
        expiry_ms = maps:get(expiry_interval, ConnInfo),
        connected = true,
        disconnected_at = undefined,
        track = ?TRACK:connected(max_inflight(ConnInfo), T)
    },
    {noreply, save(St1)};
handle_cast({disconnected, 0}, St) ->
    %% MQTT 5: the client ended its session with its DISCONNECT.
    {noreply, end_session(St#st{expiry_ms = 0})};
handle_cast({disconnected, Expiry}, #st{track = T} = St) ->
    St1 = St#st{expiry_ms = Expiry, connected = false, disconnected_at = now_ms(), track = ?TRACK:disconnected(T)},
    {noreply, save(St1)};
handle_cast(_Other, St) ->
    {noreply, St}.

-spec handle_info(term(), #st{}) -> {noreply, #st{}} | {stop, normal, #st{}}.
handle_info(commit, St) ->
    {noreply, commit(St)};
handle_info(touch, St) ->
    touch(St),
    {noreply, save_if(St#st.connected orelse St#st.dirty, touch_lease(St))};
handle_info({'DOWN', _, process, Channel, Reason}, #st{channel = Channel, mode = Mode} = St) when Mode =/= tracking ->
    %% The connection went before taking the session over (e.g. it failed
    %% authentication): nothing to keep.
    _ = Reason,
    unregister_channel(St),
    {stop, normal, release(St)};
handle_info({'DOWN', _, process, Channel, Reason}, #st{channel = Channel} = St) ->
    {stop, normal, finish(Reason, St)};
handle_info(_Other, St) ->
    {noreply, St}.

-spec terminate(term(), #st{}) -> ok.
terminate(_Reason, #st{clientid = ClientId}) ->
    catch ets:delete_object(?KEEPERS, {ClientId, self()}),
    ok.

%%--------------------------------------------------------------------
%% Resuming

resume(#st{clientid = ClientId} = St0) ->
    case emqx_redis_session:load_session(ClientId) of
        {ok, _} ->
            case lease(St0) of
                #st{fence = undefined} = St ->
                    {error, lease_not_taken, St};
                St ->
                    case load(St) of
                        {ok, Track} -> build(St#st{track = Track});
                        {error, Reason} -> {error, Reason, St}
                    end
            end;
        {error, Reason} ->
            {error, Reason, St0}
    end.

load(#st{clientid = ClientId, conninfo = ConnInfo}) ->
    case emqx_redis_session:load_session(ClientId) of
        {ok, Stored} -> ?TRACK:from_stored(Stored, max_inflight(ConnInfo));
        {error, _} = Error -> Error
    end.

%% The session EMQX's own module makes, with the stored subscriptions and
%% the messages that were in flight; the other stored messages go with the
%% takeover's end (`hand_over/1').
build(#st{clientid = ClientId, conninfo = ConnInfo, track = Track, opts = Opts} = St) ->
    ClientInfo = #{clientid => ClientId, zone => maps:get(zone, ConnInfo, default)},
    Conf = emqx_session:get_session_conf(ClientInfo),
    Subs = ?TRACK:subs(Track),
    S0 = emqx_session_mem:create(ClientInfo, ConnInfo#{receive_maximum => max_inflight(ConnInfo)}, Conf),
    S1 = with_subscriptions(Subs, S0),
    From = max(0, ?TRACK:since(Track) - maps:get(clock_skew, Opts)),
    Durable = [F || F <- maps:keys(Subs), emqx_redis_storage_emqx:durable_filter(F)],
    case read(Durable, From, maps:get(max_replay, Opts)) of
        {ok, Read, Its} ->
            {Inflight, Queue} = ?TRACK:classify(Read, Track),
            Enrich = fun(Filter, Msg) ->
                emqx_session:enrich_message(ClientInfo, Msg, maps:get(Filter, Subs), maps:get(upgrade_qos, Conf))
            end,
            {S2, Sent} = lists:foldl(
                fun({Pkt, Phase, Filter, Msg}, {S, Acc}) -> put_inflight(ClientInfo, Pkt, Phase, Enrich(Filter, Msg), S, Acc) end,
                {S1, []},
                Inflight
            ),
            S3 = set_field(next_pkt_id, ?TRACK:next_pkt(Track), S2),
            %% The track as EMQX's session has it now.
            Stored = (?TRACK:to_stored(Track))#{
                inflight => lists:reverse(Sent),
                next_pkt => emqx_session_mem:info(next_pkt_id, S3)
            },
            {ok, Track1} = ?TRACK:from_stored(Stored, max_inflight(ConnInfo)),
            Seen = maps:from_list([{Id, true} || {_, Id, _, _} <- Read]),
            {ok, S3, St#st{track = Track1, replay = {Queue, Its, Seen}}};
        {error, Reason} ->
            {error, Reason, St}
    end.

%% The stored subscriptions, in the session only: the new channel
%% subscribes to them when EMQX resumes the session there (a stand-in of
%% its own would be one more subscriber for EMQX to route to and drop).
with_subscriptions(Subs, S) ->
    case set_field(subscriptions, Subs, S) of
        S ->
            %% A session record of another shape: through EMQX's API.
            maps:fold(
                fun(Filter, SubOpts, S0) ->
                    {ok, S1} = emqx_session_mem:subscribe(Filter, SubOpts, S0),
                    ok = emqx_broker:unsubscribe(Filter),
                    S1
                end,
                S,
                Subs
            );
        S1 ->
            S1
    end.

%% What goes with the takeover's end, for EMQX to deliver as what a
%% session had pending: the stored messages not in flight, and those
%% stored since the session was built, read now that the new channel
%% subscribed and its routing barrier passed. A message published after
%% that reaches the new channel live, and is left out here; EMQX
%% leaves out of its own mailbox what it gets here (by message id).
hand_over(#st{replay = {Queue, Its, Seen}, opts = #{max_replay := Max} = Opts, cut = Cut} = St) ->
    Later =
        case catch_up(Its, Max) of
            {ok, Read} ->
                [{F, M} || {F, Id, _, M} <- Read, not maps:is_key(Id, Seen)];
            {error, Reason} ->
                log(warning, resume_catch_up_failed, St, #{reason => Reason}),
                []
        end,
    Skew = maps:get(clock_skew, Opts),
    [{deliver, F, M} || {F, M} <- Queue ++ Later, not reached_live(emqx_message:id(M), Cut, Skew)].

%% EMQX's message ids begin with the time they were made (µs) and a hash
%% of the node that made them (`emqx_guid').
reached_live(<<_:64, Node:16, _/binary>> = Id, Cut, Skew) ->
    Where =
        case Node =:= node_hash() of
            true -> this_node;
            false -> other_node
        end,
    ?TRACK:reached_live(emqx_guid:timestamp(Id), Where, Cut, Skew);
reached_live(_Id, _Cut, _Skew) ->
    false.

node_hash() ->
    case get({?MODULE, node_hash}) of
        undefined ->
            <<_:64, Hash:16, _/binary>> = emqx_guid:gen(),
            put({?MODULE, node_hash}, Hash),
            Hash;
        Hash ->
            Hash
    end.

%% A message in flight under its packet id: EMQX's session numbers what it
%% sends with its next packet id, so that is set first (a session record
%% of another shape is left as it is, and the message gets a new id).
put_inflight(_ClientInfo, _Pkt, _Phase, [], S, Acc) ->
    {S, Acc};
put_inflight(ClientInfo, Pkt, Phase, Msg, S0, Acc) ->
    S = set_field(next_pkt_id, Pkt, S0),
    Used = emqx_session_mem:info(next_pkt_id, S),
    case emqx_session_mem:deliver(ClientInfo, [Msg], S) of
        {ok, [{Used, _}], S1} ->
            Entry = {emqx_message:id(Msg), Used, Phase, emqx_message:timestamp(Msg), emqx_message:qos(Msg)},
            case Phase of
                wait_comp ->
                    {ok, _, S2} = emqx_session_mem:pubrec(Used, S1),
                    {S2, [Entry | Acc]};
                wait_ack ->
                    {S1, [Entry | Acc]}
            end;
        {ok, _, S1} ->
            %% Sent at QoS 0 (its subscription's), or queued (window full).
            {S1, Acc}
    end.

%% Sets a field of EMQX's session record that `emqx_session_mem:info/2'
%% reads back; where it is, is found once by trying every position with
%% a probe value. A record of another shape: `S' unchanged.
set_field(_Key, undefined, S) ->
    S;
set_field(Key, Value, S) ->
    case field(Key, S) of
        undefined -> S;
        N -> setelement(N, S, Value)
    end.

field(Key, S) ->
    case persistent_term:get({?MODULE, field, Key}, unknown) of
        unknown ->
            Probe = probe(Key),
            Found = [N || N <- lists:seq(2, tuple_size(S)), probe_reads(Key, setelement(N, S, Probe), Probe)],
            Field = case Found of [N] -> N; _ -> undefined end,
            persistent_term:put({?MODULE, field, Key}, Field),
            Field;
        Field ->
            Field
    end.

probe(next_pkt_id) -> 65534;
probe(subscriptions) -> #{<<"$probe">> => #{qos => 0}}.

probe_reads(Key, S, Probe) ->
    try emqx_session_mem:info(Key, S) =:= Probe
    catch _:_ -> false
    end.

%% Every stored message the filters match from `From' on, in the order to
%% replay (by timestamp, and stream order among equals), and the iterators
%% where the reading stopped.
read(Filters, From, Max) ->
    try
        Its = lists:append([
            [{Filter, ok(emqx_redis_ds:make_iterator(Stream, Filter, From))}
             || Stream <- ok(emqx_redis_ds:get_streams(Filter, From))]
         || Filter <- Filters
        ]),
        read_all(Its, Max)
    catch
        throw:{error, _} = Error -> Error
    end.

catch_up(Its, Max) ->
    try read_all(Its, Max) of
        {ok, Read, _} -> {ok, Read}
    catch
        throw:{error, _} = Error -> Error
    end.

read_all(Its, Max) ->
    {Read, Ends} = lists:foldl(
        fun({Filter, It}, {Acc, Ends}) ->
            {Acc1, It1} = read_stream(It, Filter, Max, Acc),
            {Acc1, [{Filter, It1} | Ends]}
        end,
        {[], []},
        Its
    ),
    Indexed = lists:zip(lists:seq(1, length(Read)), lists:reverse(Read)),
    {ok, [R || {_, _, R} <- lists:sort([{Ts, I, R} || {I, {_, _, Ts, _} = R} <- Indexed])], lists:reverse(Ends)}.

read_stream(It, _Filter, Max, Acc) when length(Acc) >= Max ->
    {Acc, It};
read_stream(It, Filter, Max, Acc) ->
    case emqx_redis_ds:next(It, 1000) of
        {ok, It1, []} ->
            {Acc, It1};
        {ok, It1, Maps} ->
            Msgs = [{Filter, Id, Ts, emqx_message:from_map(M)} || #{id := Id, timestamp := Ts} = M <- Maps],
            read_stream(It1, Filter, Max, lists:reverse(Msgs, Acc));
        {ok, end_of_stream} ->
            {Acc, It};
        {error, _} = Error ->
            throw(Error)
    end.

ok({ok, Value}) -> Value;
ok({error, _} = Error) -> throw(Error).

%%--------------------------------------------------------------------
%% Tracking

changed(#st{dirty = true} = St) ->
    St;
changed(#st{opts = #{commit_interval := Interval}} = St) ->
    _ = erlang:send_after(Interval, self(), commit),
    St#st{dirty = true}.

commit(#st{dirty = false} = St) ->
    St;
commit(St) ->
    save(St).

save_if(true, St) -> save(St);
save_if(false, St) -> St.

%% Saves the session under the lease's fence; without the lease nothing is
%% saved (it is tried again at the next touch).
save(#st{ended = true} = St) ->
    St;
save(#st{fence = undefined} = St) ->
    St#st{dirty = true};
save(#st{clientid = ClientId, track = Track, fence = Fence, opts = Opts} = St) ->
    Track1 = ?TRACK:advance(now_ms(), Opts, Track),
    Ttl = ttl_s(St),
    case emqx_redis_session:save_session(ClientId, ?TRACK:to_stored(Track1), #{ttl => Ttl, fence => Fence}) of
        ok ->
            St#st{track = Track1, dirty = false};
        {error, stale_fence} ->
            %% Another keeper took the session over: this one is done.
            log(info, session_taken_over, St, #{}),
            St#st{ended = true, fence = undefined};
        {error, Reason} ->
            log(warning, session_save_failed, St, #{reason => Reason}),
            St#st{track = Track1, dirty = true}
    end.

ttl_s(#st{connected = false, disconnected_at = At, expiry_ms = Expiry, opts = #{touch_interval := Touch}}) when
    is_integer(At)
->
    ?TRACK:ttl_s(Expiry, At, Touch, now_ms());
ttl_s(#st{expiry_ms = Expiry, opts = #{touch_interval := Touch}}) ->
    ?TRACK:ttl_s(Expiry, false, Touch, now_ms()).

touch(#st{opts = #{touch_interval := Touch}}) ->
    erlang:send_after(Touch, self(), touch).

touch_lease(#st{fence = undefined, ended = false, opts = Opts} = St) ->
    (lease(St#st{opts = Opts#{resume_wait => 0}}))#st{opts = Opts};
touch_lease(#st{fence = Fence, clientid = ClientId, opts = #{lease_ms := LeaseMs}, ended = false} = St) ->
    case emqx_redis_session:renew_lease(ClientId, Fence, LeaseMs) of
        ok ->
            St;
        {error, Reason} ->
            log(warning, lease_renew_failed, St, #{reason => Reason}),
            St
    end;
touch_lease(St) ->
    St.

%% Takes the client's takeover lease, after any keeper of the client on
%% this node has ended (it saves its last state first), waiting up to
%% `resume_wait' for a holder on another node to let it go (or, if that
%% node died, for its reap).
lease(#st{clientid = ClientId, opts = #{resume_wait := Wait, lease_ms := LeaseMs}} = St) ->
    Deadline = erlang:monotonic_time(millisecond) + Wait,
    wait_predecessor(ClientId, Deadline),
    true = ets:insert(?KEEPERS, {ClientId, self()}),
    St#st{fence = acquire(ClientId, LeaseMs, Deadline, 20, St)}.

wait_predecessor(ClientId, Deadline) ->
    case ets:lookup(?KEEPERS, ClientId) of
        [{_, Pid}] when Pid =/= self() ->
            Ref = erlang:monitor(process, Pid),
            receive
                {'DOWN', Ref, process, Pid, _} -> ok
            after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
                erlang:demonitor(Ref, [flush])
            end;
        _ ->
            ok
    end.

%% Only a holder is waited for: with Redis out of reach the keeper goes on
%% at once without the lease (and saves nothing until a touch gets it).
%% The wait doubles from 20 ms up to `MAX_LEASE_POLL', with jitter: when a
%% node's sessions all move at once, their keepers do not ask Redis in step.
acquire(ClientId, LeaseMs, Deadline, Wait, St) ->
    case emqx_redis_session:acquire_lease(ClientId, node(), LeaseMs) of
        {ok, Fence} ->
            Fence;
        {error, {held_by, _} = Reason} ->
            case erlang:monotonic_time(millisecond) < Deadline of
                true ->
                    timer:sleep(Wait div 2 + rand:uniform(Wait)),
                    acquire(ClientId, LeaseMs, Deadline, min(2 * Wait, ?MAX_LEASE_POLL), St);
                false ->
                    log(warning, lease_not_taken, St, #{reason => Reason}),
                    undefined
            end;
        {error, Reason} ->
            log(warning, lease_not_taken, St, #{reason => Reason}),
            undefined
    end.

%% The channel ended: the session lives on for its expiry interval from
%% the client's disconnect (or from now), unless it was ended for good.
finish(Reason, St) ->
    Ends = lists:member(Reason, [{shutdown, expired}, {shutdown, discarded}, {shutdown, kicked}, discarded, kicked]),
    St1 =
        case Ends orelse St#st.expiry_ms =:= 0 of
            true -> end_session(St);
            false when St#st.connected -> save(St#st{connected = false, disconnected_at = now_ms()});
            false -> save(St)
        end,
    release(St1).

%% The session is over: its stored state and durable filters go.
end_session(#st{ended = true} = St) ->
    St;
end_session(#st{fence = undefined} = St) ->
    St#st{ended = true};
end_session(St) ->
    wipe(St),
    St#st{ended = true}.

wipe(#st{fence = undefined}) ->
    ok;
wipe(#st{clientid = ClientId} = St) ->
    _ = [durable(unsubscribe, F, St) || F <- case emqx_redis_ds:subscriptions(ClientId) of {ok, Fs} -> Fs; _ -> [] end],
    case emqx_redis_session:delete_session(ClientId) of
        ok -> ok;
        {error, Reason} -> log(warning, session_delete_failed, St, #{reason => Reason})
    end.

release(#st{fence = undefined} = St) ->
    St;
release(#st{clientid = ClientId, fence = Fence} = St) ->
    _ = emqx_redis_session:release_lease(ClientId, Fence),
    St#st{fence = undefined}.

%% Makes a filter durable (or not): a shared subscription's messages go to
%% one member of its group, and are not kept for this session.
durable(Op, Filter, #st{clientid = ClientId} = St) ->
    case emqx_redis_storage_emqx:durable_filter(Filter) of
        false ->
            ok;
        true ->
            case emqx_redis_ds:Op(ClientId, Filter) of
                ok ->
                    ok;
                {error, Reason} = Error ->
                    log(warning, durable_filter_failed, St, #{filter => Filter, op => Op, reason => Reason}),
                    Error
            end
    end.

unregister_channel(#st{clientid = ClientId}) ->
    _ = emqx_cm:unregister_channel(ClientId),
    ok.

max_inflight(ConnInfo) ->
    case maps:get(receive_maximum, ConnInfo, ?DEFAULT_INFLIGHT) of
        N when is_integer(N), N > 0 -> N;
        _ -> ?DEFAULT_INFLIGHT
    end.

now_ms() ->
    erlang:system_time(millisecond).

log(Level, What, #st{clientid = ClientId}, Meta) ->
    emqx_redis_storage_emqx:log(Level, What, Meta#{clientid => ClientId}).
