%% @doc The EMQX adapter: a persistent MQTT session survives the death of
%% its EMQX node. `load/1' on each EMQX 5.x node registers its hooks.
%%
%% - Publish (`message.publish', in the publisher's process, before its
%%   PUBACK/PUBREC): a message that some persistent session's filter
%%   matches is stored once in a durable stream (`emqx_redis_ds:persist/1').
%%   QoS 1 and 2 always; QoS 0 as EMQX queues QoS 0 for offline sessions
%%   (`mqtt.mqueue_store_qos0', default true), unless `persist_qos0' says.
%% - Each persistent session (Session-Expiry-Interval > 0) has a keeper
%%   (`emqx_redis_storage_emqx_keeper') that saves what it needs to resume
%%   in Redis; the hooks below tell it what happens in the channel.
%% - A client that connects with clean_start=false while no channel of it
%%   lives in the cluster is resumed from Redis (see the keeper).
%%
%% It names EMQX modules only at run time: it compiles and loads without
%% EMQX, and its functions are never called where EMQX is not running.
-module(emqx_redis_storage_emqx).

-behaviour(gen_server).

-export([load/1, unload/0, settings/0, durable_filter/1, log/3]).
-export([barrier_relay/4, sweep/0]).
-export([start_link/0, init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).
-export([
    on_client_connect/2,
    on_client_connected/2,
    on_client_disconnected/3,
    on_session_created/2,
    on_session_resumed/2,
    on_session_subscribed/3,
    on_session_unsubscribed/3,
    on_message_publish/1,
    on_message_delivered/2,
    on_message_acked/2,
    on_message_puback/4,
    on_delivery_completed/2
]).

-define(KEEPER, emqx_redis_storage_emqx_keeper).
-define(KEEPERS, emqx_redis_storage_emqx_keepers).
%% Where the channel process keeps its keeper.
-define(PD_KEEPER, {?MODULE, keeper}).
-define(PD_CONN, {?MODULE, conninfo}).
%% The node of the channel a live takeover takes the session from.
-define(PD_OLD, {?MODULE, old_node}).
%% After EMQX's own hooks that stop or rewrite a message (retainer, rules,
%% delayed publish), before the exhook.
-define(PRIORITY, 10).

-define(DEFAULTS, #{
    commit_interval => 200,
    touch_interval => 10000,
    lease_ms => 30000,
    resume_wait => 12000,
    route_grace => 2000,
    clock_skew => 1000,
    max_replay => 100000,
    max_done => 1000,
    sweep_interval => 600000,
    persist_qos0 => auto,
    limits => #{}
}).
-define(LIMITS, [connect_per_username, connect_per_address, publish_per_client]).
%% MQTT 5's Quota exceeded.
-define(RC_QUOTA_EXCEEDED, 16#97).
-define(PD_LIMITED, {?MODULE, limited}).
%% How long the sweep holds a client's lease while it ends its filters.
-define(SWEEP_LEASE_MS, 10000).

-type settings() :: #{atom() => term()}.

%% @doc Starts the application with `Config' (less its `emqx' key, the
%% adapter's settings) unless it runs, and registers the hooks.
-spec load(map()) -> ok | {error, term()}.
load(Config) when is_map(Config) ->
    case {settings(maps:get(emqx, Config, #{})), whereis(emqx_hooks)} of
        {{error, _} = Error, _} ->
            Error;
        {{ok, _}, undefined} ->
            {error, {emqx_not_running, <<"load the adapter on a node where EMQX runs">>}};
        {{ok, Settings}, _} ->
            case persistence_enabled() of
                true ->
                    {error, {emqx_session_persistence_enabled, <<"turn EMQX's durable sessions off to use this adapter">>}};
                false ->
                    case ensure_started(maps:remove(emqx, Config)) of
                        ok -> start_server(Settings);
                        {error, _} = Error -> Error
                    end
            end
    end;
load(_) ->
    {error, {invalid_config, <<>>, <<"a map">>}}.

-spec unload() -> ok.
unload() ->
    _ = [emqx_hooks:del(Point, {?MODULE, Fun}) || {Point, Fun} <- hooks()],
    _ = supervisor:terminate_child(emqx_redis_storage_sup, ?MODULE),
    _ = supervisor:delete_child(emqx_redis_storage_sup, ?MODULE),
    ok.

-spec settings() -> settings().
settings() ->
    persistent_term:get(?MODULE).

%% @doc Whether a subscription's messages are kept for its session: not a
%% shared subscription's (one member of the group gets each message; EMQX
%% gives a member's unacknowledged QoS 1 messages to another member when
%% its session ends).
-spec durable_filter(term()) -> boolean().
durable_filter(<<"$share/", _/binary>>) -> false;
durable_filter(<<"$queue/", _/binary>>) -> false;
durable_filter(Filter) -> is_binary(Filter).

%%--------------------------------------------------------------------
%% Settings

settings(Map) when is_map(Map) ->
    case maps:keys(maps:without(maps:keys(?DEFAULTS), Map)) of
        [] ->
            Merged = maps:merge(?DEFAULTS, Map),
            case [K || K <- maps:keys(Merged), not valid(K, maps:get(K, Merged))] of
                [] -> {ok, Merged};
                [Bad | _] -> invalid(Bad, expected(Bad))
            end;
        [Unknown | _] ->
            invalid(Unknown, <<"a known field">>)
    end;
settings(_) ->
    {error, {invalid_config, <<"emqx">>, <<"a map">>}}.

valid(persist_qos0, V) -> V =:= auto orelse is_boolean(V);
valid(limits, V) -> is_map(V) andalso lists:all(fun({K, N}) -> lists:member(K, ?LIMITS) andalso is_binary(N) end, maps:to_list(V));
valid(K, V) when K =:= max_replay; K =:= max_done -> is_integer(V) andalso V > 0 andalso V =< 10000000;
valid(K, V) when K =:= route_grace; K =:= clock_skew -> is_integer(V) andalso V >= 0 andalso V =< 3600000;
valid(_, V) -> is_integer(V) andalso V > 0 andalso V =< 3600000.

expected(persist_qos0) -> <<"auto, true or false">>;
expected(limits) -> <<"a map of connect_per_username, connect_per_address, publish_per_client to limiter names (binaries)">>;
expected(K) when K =:= max_replay; K =:= max_done -> <<"an integer from 1 to 10000000">>;
expected(_) -> <<"milliseconds, an integer up to 3600000">>.

invalid(Key, Expected) ->
    {error, {invalid_config, <<"emqx.", (atom_to_binary_safe(Key))/binary>>, Expected}}.

atom_to_binary_safe(K) when is_atom(K) -> atom_to_binary(K);
atom_to_binary_safe(K) -> iolist_to_binary(io_lib:format("~0p", [K])).

persistence_enabled() ->
    try
        emqx_persistent_message:is_persistence_enabled()
    catch
        error:undef -> false
    end.

ensure_started(Config) ->
    case emqx_redis_storage:start(Config) of
        ok -> ok;
        {error, already_started} -> ok;
        {error, _} = Error -> Error
    end.

start_server(Settings0) ->
    Settings = Settings0#{persist_qos0 := persist_qos0(maps:get(persist_qos0, Settings0))},
    persistent_term:put(?MODULE, Settings),
    Spec = #{id => ?MODULE, start => {?MODULE, start_link, []}},
    case supervisor:start_child(emqx_redis_storage_sup, Spec) of
        {ok, _} -> add_hooks();
        {error, {already_started, _}} -> add_hooks();
        {error, already_present} -> _ = supervisor:restart_child(emqx_redis_storage_sup, ?MODULE), add_hooks();
        {error, Reason} -> {error, Reason}
    end.

persist_qos0(auto) ->
    try
        emqx_config:get_zone_conf(default, [mqtt, mqueue_store_qos0])
    catch
        _:_ -> true
    end;
persist_qos0(Bool) ->
    Bool.

hooks() ->
    [
        {'client.connect', on_client_connect},
        {'client.connected', on_client_connected},
        {'client.disconnected', on_client_disconnected},
        {'session.created', on_session_created},
        {'session.resumed', on_session_resumed},
        {'session.subscribed', on_session_subscribed},
        {'session.unsubscribed', on_session_unsubscribed},
        {'message.publish', on_message_publish},
        {'message.delivered', on_message_delivered},
        {'message.acked', on_message_acked},
        {'message.puback', on_message_puback},
        {'delivery.completed', on_delivery_completed}
    ].

add_hooks() ->
    [ok = emqx_hooks:put(Point, {?MODULE, Fun, []}, ?PRIORITY) || {Point, Fun} <- hooks()],
    ok.

%%--------------------------------------------------------------------
%% The adapter's process: owns the table of keepers by client id.

-spec start_link() -> {ok, pid()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

-spec init([]) -> {ok, map()}.
init([]) ->
    ?KEEPERS = ets:new(?KEEPERS, [named_table, public, set, {write_concurrency, true}, {read_concurrency, true}]),
    schedule_sweep(),
    {ok, #{}}.

-spec handle_call(term(), gen_server:from(), map()) -> {reply, ok, map()}.
handle_call(_Req, _From, State) -> {reply, ok, State}.
-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) -> {noreply, State}.
-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info(sweep, State) ->
    _ = guard(sweep, fun sweep/0),
    schedule_sweep(),
    {noreply, State};
handle_info(_Info, State) -> {noreply, State}.
-spec terminate(term(), map()) -> ok.
terminate(_Reason, _State) -> ok.

%%--------------------------------------------------------------------
%% The sweep: a session that expired in Redis (its node died, its client
%% never came back) leaves durable filters that no one will read; every
%% `sweep_interval' (with jitter) the first running node ends them.

schedule_sweep() ->
    Interval = maps:get(sweep_interval, settings()),
    erlang:send_after(Interval div 2 + rand:uniform(Interval), self(), sweep).

%% @doc Ends the durable filters of every client that holds some but has
%% no stored session, no channel in the cluster and no keeper here; the
%% client's lease is taken first and the session looked for again under
%% it (a keeper holds its client's lease while it lives, so a session
%% being made is never swept). The number of clients swept.
-spec sweep() -> {ok, non_neg_integer()} | {error, term()}.
sweep() ->
    case lists:min(emqx:running_nodes()) =:= node() of
        false ->
            {ok, 0};
        true ->
            case emqx_redis_ds:filters() of
                {ok, Filters} ->
                    Holders = lists:usort(lists:append([Hs || F <- Filters, {ok, Hs} <- [emqx_redis_ds:holders(F)]])),
                    Swept = length([C || C <- Holders, sweep_client(C)]),
                    Swept > 0 andalso log(info, durable_filters_swept, #{clients => Swept}),
                    {ok, Swept};
                {error, _} = Error ->
                    Error
            end
    end.

sweep_client(ClientId) ->
    not (ets:member(?KEEPERS, ClientId) orelse emqx_cm:lookup_channels(ClientId) =/= [] orelse
        emqx_redis_session:load_session(ClientId) =/= {error, not_found}) andalso
        case emqx_redis_session:acquire_lease(ClientId, node(), ?SWEEP_LEASE_MS) of
            {ok, Fence} ->
                try
                    emqx_redis_session:load_session(ClientId) =:= {error, not_found} andalso
                        case emqx_redis_ds:subscriptions(ClientId) of
                            {ok, Filters} -> lists:all(fun(F) -> emqx_redis_ds:unsubscribe(ClientId, F) =:= ok end, Filters);
                            {error, _} -> false
                        end
                after
                    emqx_redis_session:release_lease(ClientId, Fence)
                end;
            {error, _} ->
                false
        end.

%%--------------------------------------------------------------------
%% Hooks. They run in the client's channel process; each is guarded: an
%% error is logged and the channel goes on as on stock EMQX.

%% A connection over its rate (per username, per address: `emqx.limits')
%% is refused with CONNACK 0x97, Quota exceeded (MQTT 3.1.1: 3, Server
%% unavailable), before anything else is done for it.
-spec on_client_connect(map(), map()) -> {ok, map()} | {stop, {error, pos_integer()}}.
on_client_connect(ConnInfo, Props) ->
    case guard(connect_limit, fun() -> connect_limited(ConnInfo) end) of
        true -> {stop, {error, ?RC_QUOTA_EXCEEDED}};
        false -> connect(ConnInfo, Props)
    end.

connect_limited(ConnInfo) ->
    Limits = maps:get(limits, settings()),
    limited(maps:get(connect_per_username, Limits, undefined), maps:get(username, ConnInfo, undefined)) orelse
        limited(maps:get(connect_per_address, Limits, undefined), address(ConnInfo)).

address(#{peername := {IP, _Port}}) -> list_to_binary(inet:ntoa(IP));
address(_) -> undefined.

%% Whether `Key' is over the limiter's rate. No limiter or no key: no; a
%% limiter that answers otherwise (an unknown name) is logged and lets it in.
limited(Name, Key) when is_binary(Name), is_binary(Key), Key =/= <<>> ->
    case emqx_redis_limiter:check(Name, Key, 1) of
        {ok, _} -> false;
        {error, {limited, _}} -> true;
        {error, Reason} -> log(warning, rate_limit_failed, #{limiter => Name, reason => Reason}), false
    end;
limited(_Name, _Key) ->
    false.

connect(ConnInfo, Props) ->
    _ = guard(client_connect, fun() ->
        erase(?PD_KEEPER),
        erase(?PD_OLD),
        case persistent(ConnInfo) of
            true -> put(?PD_CONN, ConnInfo);
            false -> erase(?PD_CONN)
        end,
        maybe_stand_in(ConnInfo)
    end),
    {ok, Props}.

%% Nothing lives for a clean_start=false client in the cluster: a keeper
%% stands in for its dead channel, so EMQX resumes from Redis (also for a
%% connection with expiry 0: the session is resumed, and ends with it).
maybe_stand_in(#{clean_start := false, clientid := ClientId} = ConnInfo) when is_binary(ClientId), ClientId =/= <<>> ->
    case emqx_cm:lookup_channels(ClientId) of
        [] ->
            case ?KEEPER:start_ghost(ConnInfo#{zone => listener_zone(ConnInfo)}, settings()) of
                {ok, Pid} -> put(?PD_KEEPER, Pid);
                {error, Reason} -> log(warning, resume_stand_in_failed, #{reason => Reason})
            end;
        Pids ->
            put(?PD_OLD, node(lists:last(Pids)))
    end;
maybe_stand_in(_ConnInfo) ->
    ok.

%% The zone of the listener the client came in on, for the session the
%% stand-in builds (its queue settings): `client.connect' names no zone,
%% but the socket's local port names the listener. `default' if no one
%% listener of the socket's kind is bound to that port.
listener_zone(#{sockname := {_, Port}} = ConnInfo) ->
    Kind = maps:get(socktype, ConnInfo, undefined),
    Zones = [
        maps:get(zone, L, default)
     || {Type, Named} <- maps:to_list(emqx_config:get([listeners], #{})),
        same_kind(Kind, Type),
        is_map(Named),
        L <- maps:values(Named),
        is_map(L),
        bind_port(maps:get(bind, L, undefined)) =:= Port
    ],
    case lists:usort(Zones) of
        [Zone] -> Zone;
        _ -> default
    end;
listener_zone(_ConnInfo) ->
    default.

same_kind(Kind, Kind) -> true;
same_kind(ws, wss) -> true;
same_kind(_, _) -> false.

bind_port(Port) when is_integer(Port) -> Port;
bind_port({_IP, Port}) when is_integer(Port) -> Port;
bind_port(_) -> undefined.

-spec on_session_created(map(), map()) -> ok.
on_session_created(ClientInfo, _SessInfo) ->
    _ = guard(session_created, fun() -> start_tracking(new, ClientInfo) end),
    ok.

%% EMQX subscribed the resumed session's new channel on this node just
%% now. First the routing barrier (`barrier/2'): what was routed without
%% the new subscription has arrived where it was routed to. Then the
%% stand-in (a resume from Redis) learns when the subscription began and
%% the barrier ended, to hand over only what is not also routed here live;
%% a live takeover's session gets a keeper.
-spec on_session_resumed(map(), map()) -> ok.
on_session_resumed(ClientInfo, SessInfo) ->
    _ = guard(session_resumed, fun() ->
        Subscribed = erlang:system_time(microsecond),
        Filters = [F || F <- maps:keys(maps:get(subscriptions, SessInfo, #{})), durable_filter(F)],
        barrier(get(?PD_OLD), Filters),
        case keeper() of
            undefined -> start_tracking(resumed, ClientInfo);
            Pid -> ?KEEPER:event(Pid, {resumed, Subscribed, erlang:system_time(microsecond)})
        end
    end),
    ok.

%% The routing barrier. A publisher looks up routes after storing a
%% message, and EMQX forwards a message to another node asynchronously, in
%% order per route topic. So once every running node sees this node's
%% route for each filter, and a marker sent by each node behind its
%% forwards to the old channel's node (by the same route topic) has
%% arrived there, every message routed without the new subscription is
%% either stored (it reaches the stand-in's hand-over) or in the old
%% channel's mailbox (EMQX passes it on at the takeover's end). Without
%% this, a live takeover under load lost messages that were still being
%% forwarded when the old channel unsubscribed. It waits at most
%% `route_grace' ms (then logged).
barrier(_Old, []) ->
    ok;
barrier(Old, Filters) ->
    Reply = erlang:alias([explicit_unalias]),
    Wait = maps:get(route_grace, settings()),
    Deadline = erlang:monotonic_time(millisecond) + Wait,
    %% (A node just gone may still be listed as running.)
    Nodes = [N || N <- emqx:running_nodes(), N =:= node() orelse lists:member(N, nodes())],
    _ = [erpc:cast(N, ?MODULE, barrier_relay, [relay_to(N, Old), Filters, node(), {Reply, Wait}]) || N <- Nodes],
    Expected = lists:sum([markers(relay_to(N, Old), Filters) || N <- Nodes]),
    Missing = await_markers(Reply, Expected, Deadline),
    erlang:unalias(Reply),
    Missing > 0 andalso log(warning, routing_barrier_timeout, #{missing => Missing}),
    ok.

relay_to(Node, Node) -> undefined;
relay_to(_Node, Old) -> Old.

markers(undefined, _Filters) -> 1;
markers(_Old, Filters) -> length(Filters).

await_markers(_Reply, 0, _Deadline) ->
    0;
await_markers(Reply, N, Deadline) ->
    receive
        {Reply, marker} -> await_markers(Reply, N - 1, Deadline)
    after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
        N
    end.

%% @private On each running node: waits until it routes each filter to
%% `New' too, then sends the marker, through `Old' (one per filter, behind
%% this node's forwards there) when a live channel was taken over there.
-spec barrier_relay(node() | undefined, [binary()], node(), {reference(), non_neg_integer()}) -> ok.
barrier_relay(Old, Filters, New, {Reply, Wait}) ->
    wait_routes(Filters, New, erlang:monotonic_time(millisecond) + Wait),
    _ =
        case Old of
            undefined -> Reply ! {Reply, marker};
            _ -> lists:foreach(fun(F) -> emqx_rpc:cast(F, Old, erlang, send, [Reply, {Reply, marker}]) end, Filters)
        end,
    ok.

wait_routes(Filters, New, Deadline) ->
    case [F || F <- Filters, not routed(F, New)] of
        [] ->
            ok;
        Left ->
            case erlang:monotonic_time(millisecond) < Deadline of
                true -> timer:sleep(2), wait_routes(Left, New, Deadline);
                false -> ok
            end
    end.

routed(Filter, Node) ->
    try emqx_router:has_route(Filter, Node)
    catch _:_ -> true
    end.

%% The client id is final here (EMQX assigns one after `client.connect'
%% to a client that gave none).
start_tracking(How, #{clientid := ClientId} = ClientInfo) ->
    case get(?PD_CONN) of
        undefined ->
            ok;
        ConnInfo0 ->
            ConnInfo = ConnInfo0#{clientid => ClientId, zone => maps:get(zone, ClientInfo, default)},
            case ?KEEPER:start_tracking(How, ConnInfo, settings()) of
                {ok, Pid} -> put(?PD_KEEPER, Pid);
                {error, Reason} -> log(warning, keeper_start_failed, #{reason => Reason})
            end
    end.

-spec on_client_connected(map(), map()) -> ok.
on_client_connected(_ClientInfo, ConnInfo) ->
    event(fun() -> {connected, ConnInfo} end).

-spec on_client_disconnected(map(), term(), map()) -> ok.
on_client_disconnected(_ClientInfo, _Reason, ConnInfo) ->
    event(fun() -> {disconnected, maps:get(expiry_interval, ConnInfo, 0)} end).

-spec on_session_subscribed(map(), term(), map()) -> ok.
on_session_subscribed(_ClientInfo, Filter, SubOpts) ->
    sync(fun() -> {subscribed, Filter, SubOpts} end).

-spec on_session_unsubscribed(map(), term(), map()) -> ok.
on_session_unsubscribed(_ClientInfo, Filter, _SubOpts) ->
    sync(fun() -> {unsubscribed, Filter} end).

-spec on_message_delivered(map(), Msg) -> {ok, Msg}.
on_message_delivered(_ClientInfo, Msg) ->
    event(fun() ->
        {delivered, emqx_message:id(Msg), emqx_message:qos(Msg), emqx_message:get_flag(dup, Msg),
            emqx_message:timestamp(Msg)}
    end),
    {ok, Msg}.

-spec on_message_acked(map(), term()) -> ok.
on_message_acked(_ClientInfo, Msg) ->
    event(fun() -> {acked, emqx_message:id(Msg)} end).

-spec on_delivery_completed(term(), map()) -> ok.
on_delivery_completed(Msg, _Info) ->
    event(fun() -> {completed, emqx_message:id(Msg)} end).

%% A message over its publisher's rate (`emqx.limits.publish_per_client')
%% is dropped (EMQX's `allow_publish' header) and its PUBACK says 0x97,
%% Quota exceeded (see `on_message_puback/4'); it is not stored.
%% Otherwise it is stored before the publisher's PUBACK/PUBREC:
%% acknowledged means stored. Redis trouble is logged and the message goes
%% on as on stock EMQX.
-spec on_message_publish(Msg) -> {ok, Msg}.
on_message_publish(Msg) ->
    case guard(publish_limit, fun() -> publish_limited(Msg) end) of
        true ->
            put(?PD_LIMITED, emqx_message:id(Msg)),
            {ok, emqx_message:set_header(allow_publish, false, Msg)};
        false ->
            persist(Msg)
    end.

publish_limited(Msg) ->
    From = emqx_message:from(Msg),
    is_binary(From) andalso limited(maps:get(publish_per_client, maps:get(limits, settings()), undefined), From).

%% The PUBACK of a message dropped for its rate: Quota exceeded. (A QoS 2
%% message's PUBREC says No matching subscribers: EMQX has no hook there.)
-spec on_message_puback(term(), term(), term(), RC) -> {ok, RC | pos_integer()}.
on_message_puback(_PacketId, Msg, _PubRes, RC) ->
    Id = emqx_message:id(Msg),
    case get(?PD_LIMITED) of
        Id -> erase(?PD_LIMITED), {ok, ?RC_QUOTA_EXCEEDED};
        _ -> {ok, RC}
    end.

persist(Msg) ->
    _ = guard(message_publish, fun() ->
        case persistable(Msg) of
            true ->
                case emqx_redis_ds:persist([to_map(Msg)]) of
                    {ok, _} -> ok;
                    {error, Reason} -> log(warning, message_persist_failed, #{topic => emqx_message:topic(Msg), reason => Reason})
                end;
            false ->
                ok
        end
    end),
    {ok, Msg}.

persistable(Msg) ->
    (emqx_message:qos(Msg) > 0 orelse maps:get(persist_qos0, settings())) andalso
        emqx_message:get_header(allow_publish, Msg, true) =/= false andalso
        not emqx_message:is_sys(Msg).

%% What a stored message keeps: all but the headers other than the MQTT
%% properties (they hold the publisher's connection details).
to_map(Msg) ->
    Map = emqx_message:to_map(Msg),
    Map#{headers := maps:with([properties], maps:get(headers, Map))}.

persistent(#{expiry_interval := Expiry}) -> is_integer(Expiry) andalso Expiry > 0;
persistent(_) -> false.

keeper() ->
    case get(?PD_KEEPER) of
        Pid when is_pid(Pid) ->
            case is_process_alive(Pid) of
                true -> Pid;
                false -> undefined
            end;
        _ ->
            undefined
    end.

event(Fun) ->
    case get(?PD_KEEPER) of
        Pid when is_pid(Pid) -> _ = guard(event, fun() -> ?KEEPER:event(Pid, Fun()) end), ok;
        _ -> ok
    end.

sync(Fun) ->
    case get(?PD_KEEPER) of
        Pid when is_pid(Pid) -> _ = guard(sync, fun() -> ?KEEPER:sync(Pid, Fun()) end), ok;
        _ -> ok
    end.

%% Fun's value, or `false' after an error (logged).
guard(What, Fun) ->
    try
        Fun()
    catch
        Class:Reason:Stack ->
            log(error, hook_failed, #{hook => What, class => Class, reason => Reason, stacktrace => Stack}),
            false
    end.

%% @doc Logs at most one event of a kind a second: with Redis out of reach
%% every publish and session would log the same.
-spec log(logger:level(), atom(), map()) -> ok.
log(Level, What, Meta) ->
    Now = erlang:monotonic_time(second),
    case catch ets:lookup(?KEEPERS, {log, What}) of
        [{_, Now}] ->
            ok;
        _ ->
            catch ets:insert(?KEEPERS, {{log, What}, Now}),
            logger:log(Level, Meta#{msg => What}, #{domain => [emqx_redis_storage, emqx]})
    end.
