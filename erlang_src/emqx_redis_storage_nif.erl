%% @doc The NIF stubs, and nothing else. Every I/O function returns a ticket at
%% once and answers `{Ref, Result}' later; call them through
%% `emqx_redis_storage_client', which owns deadlines and late replies.
-module(emqx_redis_storage_nif).

-export([connect/2, q/3, cancel/1, panic_in_task/1, client_status/2, log_sink/2, client_metrics/1]).
-export([backup/4, restore/5]).
-export([
    session_save/7, session_load/3, session_delete/3, session_info/3, session_count/2,
    session_list/4, lease_acquire/6, lease_renew/5, lease_release/4,
    channel_register/4, channel_lookup/3, channel_unregister/4, channel_cleanup/3
]).
-export([
    topic_validate/2, topic_match/2, route_add/3, route_delete/4, route_lookup/3,
    route_filters/2, route_cleanup/3, route_match_local/2, route_match_redis/3,
    route_index_ready/1
]).
-export([
    ds_subscribe/5, ds_unsubscribe/4, ds_subscriptions/3, ds_filters/2, ds_holders/3, ds_persist/3, ds_streams/3,
    ds_next/6, ds_watch/6, ds_unwatch/2, ds_filter_match/2
]).
-export([
    node_join/4, node_heartbeat/5, node_view/2, node_leave/4, node_reap_claim/6,
    node_reap_renew/5, node_reap_finish/5, node_reap_step/5
]).
-export([limiter_define/6, limiter_check/5, limiter_reset/4]).
-export([
    message_store/5, message_get/5, message_ack/4, message_delete/3, message_count/3,
    message_info/3
]).

-on_load(init/0).

-define(NOT_LOADED, erlang:nif_error({not_loaded, ?MODULE})).
-define(MAX_WORKERS, 64).

-type ticket() :: reference().
-export_type([ticket/0]).

init() ->
    erlang:load_nif(filename:join(priv_dir(), ?MODULE_STRING), #{worker_threads => workers()}).

%% The application environment's `worker_threads', if it is a sane number.
workers() ->
    case application:get_env(emqx_redis_storage, worker_threads, default_workers()) of
        N when is_integer(N), N >= 1, N =< ?MAX_WORKERS ->
            N;
        Other ->
            logger:warning(#{
                msg => "emqx_redis_storage_invalid_worker_threads",
                value => Other,
                expected => <<"an integer from 1 to 64">>,
                using => default_workers()
            }),
            default_workers()
    end.

%% Redis I/O needs few threads; two cover a small machine, four a large one.
default_workers() ->
    max(1, min(4, erlang:system_info(schedulers_online))).

priv_dir() ->
    case code:priv_dir(emqx_redis_storage) of
        {error, bad_name} ->
            %% Not (yet) a known application, e.g. loaded from a bare ebin path.
            filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv");
        Dir ->
            Dir
    end.

-spec connect(reference(), map()) -> ticket() | {error, term()}.
connect(_Ref, _Config) -> ?NOT_LOADED.

-spec q(reference(), reference(), [binary()]) -> ticket().
q(_Client, _Ref, _Args) -> ?NOT_LOADED.

-spec cancel(ticket()) -> cancelled | sent.
cancel(_Ticket) -> ?NOT_LOADED.

-spec client_status(reference(), reference()) -> ticket().
client_status(_Client, _Ref) -> ?NOT_LOADED.

%% Where the Rust side's events go and from which level; returns the
%% events its rate limit dropped since the last call. See emqx_redis_storage_log.
-spec log_sink(pid() | undefined, off | error | warn | info | debug | trace) ->
    [{binary(), logger:level(), pos_integer()}].
log_sink(_Pid, _Level) -> ?NOT_LOADED.

%% Synchronous: the client's counters as a map.
-spec client_metrics(reference()) -> map().
client_metrics(_Client) -> ?NOT_LOADED.

%% Backup and restore: `Tag' marks the progress messages
%% `{emqx_redis_storage_progress, Tag, Phase, Keys, Bytes}' sent meanwhile.
-spec backup(reference(), reference(), binary(), integer()) -> ticket().
backup(_Client, _Ref, _Path, _Tag) -> ?NOT_LOADED.

-spec restore(reference(), reference(), binary(), boolean(), integer()) -> ticket().
restore(_Client, _Ref, _Path, _Replace, _Tag) -> ?NOT_LOADED.

-spec panic_in_task(reference()) -> ticket().
panic_in_task(_Ref) -> ?NOT_LOADED.

%% Sessions, leases and the registry. `Fence' is an integer or `nil' (none).
%% Replies: see emqx_redis_session and emqx_redis_registry.

-spec session_save(reference(), reference(), binary(), binary(), pos_integer(), binary(), integer() | nil) -> ticket().
session_save(_C, _Ref, _ClientId, _Data, _TtlMs, _Node, _Fence) -> ?NOT_LOADED.

-spec session_load(reference(), reference(), binary()) -> ticket().
session_load(_C, _Ref, _ClientId) -> ?NOT_LOADED.

-spec session_delete(reference(), reference(), binary()) -> ticket().
session_delete(_C, _Ref, _ClientId) -> ?NOT_LOADED.

-spec session_info(reference(), reference(), binary()) -> ticket().
session_info(_C, _Ref, _ClientId) -> ?NOT_LOADED.

-spec session_count(reference(), reference()) -> ticket().
session_count(_C, _Ref) -> ?NOT_LOADED.

-spec session_list(reference(), reference(), non_neg_integer(), non_neg_integer()) -> ticket().
session_list(_C, _Ref, _Limit, _Offset) -> ?NOT_LOADED.

-spec lease_acquire(reference(), reference(), binary(), binary(), pos_integer(), pos_integer()) -> ticket().
lease_acquire(_C, _Ref, _ClientId, _Owner, _LeaseMs, _FenceTtlMs) -> ?NOT_LOADED.

-spec lease_renew(reference(), reference(), binary(), integer(), pos_integer()) -> ticket().
lease_renew(_C, _Ref, _ClientId, _Fence, _LeaseMs) -> ?NOT_LOADED.

-spec lease_release(reference(), reference(), binary(), integer()) -> ticket().
lease_release(_C, _Ref, _ClientId, _Fence) -> ?NOT_LOADED.

-spec channel_register(reference(), reference(), binary(), binary()) -> ticket().
channel_register(_C, _Ref, _ClientId, _Node) -> ?NOT_LOADED.

-spec channel_lookup(reference(), reference(), binary()) -> ticket().
channel_lookup(_C, _Ref, _ClientId) -> ?NOT_LOADED.

-spec channel_unregister(reference(), reference(), binary(), binary()) -> ticket().
channel_unregister(_C, _Ref, _ClientId, _Node) -> ?NOT_LOADED.

-spec channel_cleanup(reference(), reference(), binary()) -> ticket().
channel_cleanup(_C, _Ref, _Node) -> ?NOT_LOADED.

%% Topic rules and routes (synchronous: topic_*, route_match_local, route_index_ready).
%% `Dest' is `Node' or `{Group, Node}'; replies hold node atoms that exist, or
%% binaries for names the VM has no atom for.

-spec topic_validate(name | filter, binary()) -> ok | {error, atom()}.
topic_validate(_Kind, _Topic) -> ?NOT_LOADED.

-spec topic_match(binary(), binary()) -> boolean().
topic_match(_Name, _Filter) -> ?NOT_LOADED.

-spec route_add(reference(), reference(), [{binary(), term()}]) -> ticket() | {error, badarg}.
route_add(_C, _Ref, _Routes) -> ?NOT_LOADED.

-spec route_delete(reference(), reference(), binary(), term()) -> ticket() | {error, badarg}.
route_delete(_C, _Ref, _Filter, _Dest) -> ?NOT_LOADED.

-spec route_lookup(reference(), reference(), binary()) -> ticket().
route_lookup(_C, _Ref, _Filter) -> ?NOT_LOADED.

-spec route_filters(reference(), reference()) -> ticket().
route_filters(_C, _Ref) -> ?NOT_LOADED.

-spec route_cleanup(reference(), reference(), atom()) -> ticket() | {error, badarg}.
route_cleanup(_C, _Ref, _Node) -> ?NOT_LOADED.

-spec route_match_local(reference(), binary()) -> {ok, list()} | not_ready | {error, atom()}.
route_match_local(_C, _Topic) -> ?NOT_LOADED.

-spec route_match_redis(reference(), reference(), binary()) -> ticket().
route_match_redis(_C, _Ref, _Topic) -> ?NOT_LOADED.

-spec route_index_ready(reference()) -> boolean().
route_index_ready(_C) -> ?NOT_LOADED.
%% Message queues. Replies: see emqx_redis_message.

-spec message_store(reference(), reference(), binary(), [{binary(), pos_integer(), binary()}], pos_integer()) -> ticket().
message_store(_C, _Ref, _ClientId, _Messages, _MaxLen) -> ?NOT_LOADED.

-spec message_get(reference(), reference(), binary(), non_neg_integer(), non_neg_integer()) -> ticket().
message_get(_C, _Ref, _ClientId, _Offset, _Limit) -> ?NOT_LOADED.

-spec message_ack(reference(), reference(), binary(), binary()) -> ticket().
message_ack(_C, _Ref, _ClientId, _MsgId) -> ?NOT_LOADED.

-spec message_delete(reference(), reference(), binary()) -> ticket().
message_delete(_C, _Ref, _ClientId) -> ?NOT_LOADED.

-spec message_count(reference(), reference(), binary()) -> ticket().
message_count(_C, _Ref, _ClientId) -> ?NOT_LOADED.

-spec message_info(reference(), reference(), binary()) -> ticket().
message_info(_C, _Ref, _ClientId) -> ?NOT_LOADED.

%% Rate limits. A check answered without Redis returns `{ok, Decision}' at
%% once (emqx_redis_limiter).

-spec limiter_define(reference(), binary(), pos_integer(), pos_integer(), non_neg_integer(), boolean()) -> ok.
limiter_define(_C, _Name, _Rate, _Burst, _Batch, _AllowWhenDown) -> ?NOT_LOADED.

-spec limiter_check(reference(), reference(), binary(), binary(), non_neg_integer()) ->
    ticket() | {ok, non_neg_integer() | {limited, pos_integer()}} | {error, term()}.
limiter_check(_C, _Ref, _Name, _Key, _Cost) -> ?NOT_LOADED.

-spec limiter_reset(reference(), reference(), binary(), binary()) -> ticket() | {error, term()}.
limiter_reset(_C, _Ref, _Name, _Key) -> ?NOT_LOADED.

%% Durable messages. Replies: see emqx_redis_ds.

-spec ds_subscribe(reference(), reference(), binary(), binary(), pos_integer()) -> ticket().
ds_subscribe(_C, _Ref, _ClientId, _Filter, _Max) -> ?NOT_LOADED.

-spec ds_unsubscribe(reference(), reference(), binary(), binary()) -> ticket().
ds_unsubscribe(_C, _Ref, _ClientId, _Filter) -> ?NOT_LOADED.

-spec ds_subscriptions(reference(), reference(), binary()) -> ticket().
ds_subscriptions(_C, _Ref, _ClientId) -> ?NOT_LOADED.
-spec ds_filters(reference(), reference()) -> ticket().
ds_filters(_C, _Ref) -> ?NOT_LOADED.
-spec ds_holders(reference(), reference(), binary()) -> ticket().
ds_holders(_C, _Ref, _Filter) -> ?NOT_LOADED.

-spec ds_persist(reference(), reference(), [{binary(), binary(), non_neg_integer()}]) -> ticket().
ds_persist(_C, _Ref, _Messages) -> ?NOT_LOADED.

-spec ds_streams(reference(), reference(), binary()) -> ticket().
ds_streams(_C, _Ref, _Filter) -> ?NOT_LOADED.

-spec ds_next(reference(), reference(), {binary(), non_neg_integer()}, binary(),
    {non_neg_integer(), non_neg_integer(), non_neg_integer()}, pos_integer()) -> ticket().
ds_next(_C, _Ref, _Stream, _Filter, _Pos, _N) -> ?NOT_LOADED.

-spec ds_watch(reference(), reference(), {binary(), non_neg_integer()},
    {non_neg_integer(), non_neg_integer()}, reference(), binary()) -> ticket().
ds_watch(_C, _Ref, _Stream, _Pos, _WatchRef, _Key) -> ?NOT_LOADED.

-spec ds_unwatch(reference(), binary()) -> ok.
ds_unwatch(_C, _Key) -> ?NOT_LOADED.

-spec ds_filter_match(reference(), binary()) -> boolean() | not_ready.
ds_filter_match(_C, _Topic) -> ?NOT_LOADED.
%% Node liveness. Node names are binaries both ways; times are Redis ms.
%% Replies: see emqx_redis_nodes and emqx_redis_nodes_reap.

-spec node_join(reference(), reference(), binary(), pos_integer()) -> ticket().
node_join(_C, _Ref, _Node, _TtlMs) -> ?NOT_LOADED.

-spec node_heartbeat(reference(), reference(), binary(), integer(), pos_integer()) -> ticket().
node_heartbeat(_C, _Ref, _Node, _Incarnation, _TtlMs) -> ?NOT_LOADED.

-spec node_view(reference(), reference()) -> ticket().
node_view(_C, _Ref) -> ?NOT_LOADED.

-spec node_leave(reference(), reference(), binary(), integer()) -> ticket().
node_leave(_C, _Ref, _Node, _Incarnation) -> ?NOT_LOADED.

-spec node_reap_claim(reference(), reference(), binary(), integer(), binary(), pos_integer()) -> ticket().
node_reap_claim(_C, _Ref, _Node, _Incarnation, _Owner, _LeaseMs) -> ?NOT_LOADED.

-spec node_reap_renew(reference(), reference(), binary(), integer(), pos_integer()) -> ticket().
node_reap_renew(_C, _Ref, _Node, _Fence, _LeaseMs) -> ?NOT_LOADED.

-spec node_reap_finish(reference(), reference(), binary(), integer(), integer()) -> ticket().
node_reap_finish(_C, _Ref, _Node, _Incarnation, _Fence) -> ?NOT_LOADED.

-spec node_reap_step(reference(), reference(), channels | routes | leases, binary(), integer()) ->
    ticket() | {error, badarg}.
node_reap_step(_C, _Ref, _Step, _Node, _Until) -> ?NOT_LOADED.
