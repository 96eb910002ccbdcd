%% @doc MQTT sessions in Redis, and the takeover lease that fences writers.
%%
%% A session is any Erlang term. Each operation is one round trip and atomic:
%% the session and its index entry change together (one Lua script over keys
%% in the client's hash slot). Sessions expire by TTL (the MQTT session expiry
%% interval); expired ones are never counted or listed.
%%
%% Takeover: the node that takes a client over calls `acquire_lease/3' and
%% passes the fence it gets to `save_session/3'. Fences strictly increase per
%% client, so a save from a node that lost the lease is refused with
%% `{error, stale_fence}' and changes nothing.
%%
%% Every function works on the application's default client, and takes a
%% client from `emqx_redis_storage:connect/1' as an optional first argument;
%% `save_session/3' has options as its third argument, so its form with a
%% client is `save_session/4'.
-module(emqx_redis_session).

-export([save_session/2, save_session/3, load_session/1, delete_session/1]).
-export([list_sessions/2, count_sessions/0, session_info/1]).
-export([acquire_lease/3, renew_lease/3, release_lease/2]).
-export([save_session/4, load_session/2, delete_session/2]).
-export([list_sessions/3, count_sessions/1, session_info/2]).
-export([acquire_lease/4, renew_lease/4, release_lease/3]).

-define(MAX_PAGE, 10000).
%% Beyond any number of sessions that fits in memory.
-define(MAX_OFFSET, 1 bsl 32).
%% Lua in Redis compares fences as doubles, exact up to 2^53 - 1.
-define(MAX_FENCE, (1 bsl 53) - 1).
%% A lease is renewed while its holder lives: a year is far beyond any use.
-define(MAX_LEASE_MS, 365 * 24 * 3600 * 1000).
%% The MQTT 5 session expiry interval (seconds) is a four-byte integer.
-define(MAX_TTL, 4294967295).

-type client_id() :: binary().
-type fence() :: 0..?MAX_FENCE.
-type owner() :: node() | binary().
-type save_opts() :: #{ttl => 1..?MAX_TTL, node => node(), fence => fence()}.
-type lease_ms() :: 1..?MAX_LEASE_MS.
-type client() :: emqx_redis_storage_client:t().
-export_type([client_id/0, fence/0, owner/0, save_opts/0, lease_ms/0]).

-spec save_session(client_id(), term()) -> ok | {error, term()}.
save_session(ClientId, Session) -> save_session(ClientId, Session, #{}).

-spec save_session(client_id(), term(), save_opts()) -> ok | {error, term()}.
save_session(ClientId, Session, Opts) -> with_default(fun(C) -> save_session(C, ClientId, Session, Opts) end).

-spec load_session(client_id()) -> {ok, term()} | {error, term()}.
load_session(ClientId) -> with_default(fun(C) -> load_session(C, ClientId) end).

-spec delete_session(client_id()) -> ok | {error, term()}.
delete_session(ClientId) -> with_default(fun(C) -> delete_session(C, ClientId) end).

-spec session_info(client_id()) -> {ok, map()} | {error, term()}.
session_info(ClientId) -> with_default(fun(C) -> session_info(C, ClientId) end).

-spec list_sessions(0..?MAX_PAGE, 0..?MAX_OFFSET) -> {ok, [client_id()]} | {error, term()}.
list_sessions(Limit, Offset) -> with_default(fun(C) -> list_sessions(C, Limit, Offset) end).

-spec count_sessions() -> {ok, non_neg_integer()} | {error, term()}.
count_sessions() -> with_default(fun count_sessions/1).

-spec acquire_lease(client_id(), owner(), lease_ms()) -> {ok, fence()} | {error, term()}.
acquire_lease(ClientId, Owner, LeaseMs) -> with_default(fun(C) -> acquire_lease(C, ClientId, Owner, LeaseMs) end).

-spec renew_lease(client_id(), fence(), lease_ms()) -> ok | {error, term()}.
renew_lease(ClientId, Fence, LeaseMs) -> with_default(fun(C) -> renew_lease(C, ClientId, Fence, LeaseMs) end).

-spec release_lease(client_id(), fence()) -> ok | {error, term()}.
release_lease(ClientId, Fence) -> with_default(fun(C) -> release_lease(C, ClientId, Fence) end).

%% @doc Saves `Session'. Options: `ttl' in seconds, 1 to 4294967295 (the
%% MQTT 5 limit; default: config `persistence.session_ttl'), `node' (default: `node()'), `fence' (from `acquire_lease/3', 0 to
%% 2^53 - 1; a save with an older fence than the newest is refused).
%% A wrong option: `{error, {invalid_option, {Name, Value}}}', an unknown
%% one `{error, {invalid_option, Name}}'.
-spec save_session(client(), client_id(), term(), save_opts()) -> ok | {error, term()}.
save_session(Client, ClientId, Session, Opts) ->
    with_client_id(Client, ClientId, fun() ->
        #{session_ttl := DefaultTtl, max_session_size := Max} = emqx_redis_storage_client:settings(Client),
        case save_opts(Opts, DefaultTtl) of
            {ok, Ttl, Node, Fence} ->
                case emqx_redis_storage_terms:encode(Session, Max) of
                    {ok, Data} ->
                        case call(Client, session_save, [ClientId, Data, Ttl * 1000, Node, Fence]) of
                            {ok, {_Created, _Updated, _Expires, _Node}} -> ok;
                            {ok, stale_fence} -> {error, stale_fence};
                            {error, _} = Error -> Error
                        end;
                    {error, _} = Error ->
                        Error
                end;
            {error, _} = Error ->
                Error
        end
    end).

save_opts(Opts, DefaultTtl) when is_map(Opts) ->
    Ttl = maps:get(ttl, Opts, DefaultTtl),
    Node = maps:get(node, Opts, node()),
    Unknown = maps:keys(maps:without([ttl, node, fence], Opts)),
    if
        Unknown =/= [] -> {error, {invalid_option, hd(Unknown)}};
        not (is_integer(Ttl) andalso Ttl > 0 andalso Ttl =< ?MAX_TTL) -> {error, {invalid_option, {ttl, Ttl}}};
        true -> save_node(Opts, Ttl, Node)
    end;
save_opts(Opts, _DefaultTtl) ->
    {error, {invalid_option, Opts}}.

%% The node is stored as it will be read back: shaped like a node name.
save_node(Opts, Ttl, Node) ->
    case emqx_redis_storage_terms:node_name(Node) of
        {ok, NodeBin} -> save_fence(Opts, Ttl, NodeBin);
        {error, _} -> {error, {invalid_option, {node, Node}}}
    end.

%% No `fence' option is `nil' for the NIF; `nil' given as a fence is wrong
%% like any other non-fence.
save_fence(#{fence := Fence}, Ttl, Node) ->
    case fence(Fence) of
        ok -> {ok, Ttl, Node, Fence};
        {error, _} -> {error, {invalid_option, {fence, Fence}}}
    end;
save_fence(_Opts, Ttl, Node) ->
    {ok, Ttl, Node, nil}.

-spec load_session(client(), client_id()) -> {ok, term()} | {error, term()}.
load_session(Client, ClientId) ->
    with_client_id(Client, ClientId, fun() ->
        case call(Client, session_load, [ClientId]) of
            {ok, undefined} -> {error, not_found};
            {ok, Data} -> emqx_redis_storage_terms:decode(session, Data);
            {error, _} = Error -> Error
        end
    end).

%% @doc Deletes the session; `ok' also if there was none. Its lease and
%% fence are kept, so a stale writer stays fenced off.
-spec delete_session(client(), client_id()) -> ok | {error, term()}.
delete_session(Client, ClientId) ->
    with_client_id(Client, ClientId, fun() ->
        case call(Client, session_delete, [ClientId]) of
            {ok, ok} -> ok;
            {error, _} = Error -> Error
        end
    end).

%% @doc `#{created_at, updated_at, expires_at}' (Unix ms, Redis's clock) and `node'.
-spec session_info(client(), client_id()) -> {ok, map()} | {error, term()}.
session_info(Client, ClientId) ->
    with_client_id(Client, ClientId, fun() ->
        case call(Client, session_info, [ClientId]) of
            {ok, undefined} ->
                {error, not_found};
            {ok, {Created, Updated, Expires, NodeBin}} ->
                case emqx_redis_storage_terms:to_node(session, NodeBin) of
                    {ok, Node} ->
                        {ok, #{created_at => Created, updated_at => Updated, expires_at => Expires, node => Node}};
                    {error, _} = Error ->
                        Error
                end;
            {error, _} = Error ->
                Error
        end
    end).

%% @doc One page of the client ids of live sessions. Order: by Redis Cluster
%% hash slot of the client id, then by expiry time, then by client id; the
%% pages of a store that nobody writes to meanwhile neither skip nor repeat.
%% `Limit' is 0 to 10000, `Offset' 0 to 2^32; else `{error, {invalid_page, _}}'.
-spec list_sessions(client(), 0..?MAX_PAGE, 0..?MAX_OFFSET) -> {ok, [client_id()]} | {error, term()}.
list_sessions(Client, Limit, Offset) when
    is_integer(Limit), Limit >= 0, Limit =< ?MAX_PAGE, is_integer(Offset), Offset >= 0, Offset =< ?MAX_OFFSET
->
    call(Client, session_list, [Limit, Offset]);
list_sessions(Client, Limit, Offset) ->
    emqx_redis_storage_client:checked(Client, [], fun() ->
        {error, {invalid_page, #{limit => Limit, offset => Offset, max_limit => ?MAX_PAGE, max_offset => ?MAX_OFFSET}}}
    end).

%% @doc The number of live sessions.
-spec count_sessions(client()) -> {ok, non_neg_integer()} | {error, term()}.
count_sessions(Client) ->
    call(Client, session_count, []).

%% @doc Takes the client's lease for `LeaseMs' and returns a new fence, higher
%% than every fence issued before for this client. Held by another owner:
%% `{error, {held_by, Owner}}'. The same owner may take it again (new fence).
%% `LeaseMs' is 1 to 365 days in milliseconds, else `{error, {invalid_lease_ms, _}}'.
-spec acquire_lease(client(), client_id(), owner(), lease_ms()) -> {ok, fence()} | {error, term()}.
acquire_lease(Client, ClientId, Owner, LeaseMs) ->
    with_client_id(Client, ClientId, fun() ->
        #{session_ttl := FenceTtl} = emqx_redis_storage_client:settings(Client),
        case {lease_ms(LeaseMs), emqx_redis_storage_terms:owner_to_bin(Owner)} of
            {ok, {ok, OwnerBin}} ->
                lease_call(Client, lease_acquire, [ClientId, OwnerBin, LeaseMs, FenceTtl * 1000]);
            {ok, Error} ->
                Error;
            {Error, _} ->
                Error
        end
    end).

%% @doc Makes the lease held with `Fence' expire `LeaseMs' from now. A fence
%% is 0 to 2^53 - 1 (`{error, {invalid_fence, _}}'), `LeaseMs' as for
%% `acquire_lease/4'.
-spec renew_lease(client(), client_id(), fence(), lease_ms()) -> ok | {error, term()}.
renew_lease(Client, ClientId, Fence, LeaseMs) ->
    with_client_id(Client, ClientId, fun() ->
        case {fence(Fence), lease_ms(LeaseMs)} of
            {ok, ok} -> lease_call(Client, lease_renew, [ClientId, Fence, LeaseMs]);
            {ok, Error} -> Error;
            {Error, _} -> Error
        end
    end).

%% @doc Gives up the lease held with `Fence'; `ok' if it had already expired.
-spec release_lease(client(), client_id(), fence()) -> ok | {error, term()}.
release_lease(Client, ClientId, Fence) ->
    with_client_id(Client, ClientId, fun() ->
        case fence(Fence) of
            ok -> lease_call(Client, lease_release, [ClientId, Fence]);
            Error -> Error
        end
    end).

lease_call(Client, Fun, Args) ->
    case call(Client, Fun, Args) of
        {ok, ok} -> ok;
        {ok, {fence, Fence}} -> {ok, Fence};
        {ok, not_held} -> {error, not_held};
        {ok, {held_by, OwnerBin}} ->
            case emqx_redis_storage_terms:bin_to_owner(OwnerBin) of
                {ok, Owner} -> {error, {held_by, Owner}};
                {error, _} = Error -> Error
            end;
        {error, _} = Error -> Error
    end.

lease_ms(Ms) when is_integer(Ms), Ms > 0, Ms =< ?MAX_LEASE_MS -> ok;
lease_ms(Ms) -> {error, {invalid_lease_ms, Ms}}.

fence(Fence) when is_integer(Fence), Fence >= 0, Fence =< ?MAX_FENCE -> ok;
fence(Fence) -> {error, {invalid_fence, Fence}}.

with_default(Fun) ->
    emqx_redis_storage_client:with_default(Fun).

with_client_id(Client, ClientId, Fun) ->
    emqx_redis_storage_client:checked(Client, [emqx_redis_storage_terms:client_id(ClientId)], Fun).

call(Client, Fun, Args) ->
    emqx_redis_storage_client:call(Client, Fun, Args).
