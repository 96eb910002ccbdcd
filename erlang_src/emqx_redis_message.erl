%% @doc Per-client queues of QoS 1/2 messages in Redis.
%%
%% A message is a map with a binary `id' and any other fields; it comes back
%% from `get_messages/3' exactly as it was stored. Messages come back in the
%% order Redis accepted them (an arrival sequence taken inside Redis, so the
%% order is right for concurrent writers on any node, whatever their clocks).
%% Each operation is one round trip and atomic (one Lua script over keys in
%% the client's hash slot); a batch is queued all together or not at all.
%%
%% A message expires after its `expiry_interval' (seconds, the MQTT 5 message
%% expiry interval) if it has one, else after `persistence.message_ttl'.
%% Expired messages are never returned or counted, and Redis reclaims their
%% memory by itself. A queue holds at most `persistence.max_queue_len'
%% messages: storing more drops the oldest, which `queue_info/1' counts.
%%
%% Limits per call: 10000 messages and 8 MiB of encoded messages per
%% `store_messages/2', 10000 messages per `get_messages/3' page.
%%
%% Every function works on the application's default client, and takes a
%% client from `emqx_redis_storage:connect/1' as an optional first argument.
-module(emqx_redis_message).

-include("emqx_redis_storage.hrl").

-export([store_message/2, store_messages/2, get_messages/3, ack_message/2]).
-export([delete_messages/1, count_messages/1, queue_info/1]).
-export([store_message/3, store_messages/3, get_messages/4, ack_message/3]).
-export([delete_messages/2, count_messages/2, queue_info/2]).

-type message_id() :: binary().
-type message() :: #{id := message_id(), expiry_interval => pos_integer(), term() => term()}.
-type queue_info() :: #{
    len := non_neg_integer(),
    dropped := non_neg_integer(),
    oldest_at := integer() | undefined
}.
-type client() :: emqx_redis_storage_client:t().
-type client_id() :: emqx_redis_session:client_id().
-export_type([message_id/0, message/0, queue_info/0]).

%% Messages per store_messages/2 call and per get_messages/3 page.
-define(MAX_BATCH, 10000).
-define(MAX_PAGE, 10000).
%% Encoded bytes per store_messages/2 call: one Redis request holds them all.
-define(MAX_BATCH_BYTES, ?MAX_REQUEST_BYTES).
-define(MAX_ID, 65535).
%% The MQTT 5 message expiry interval is a four-byte integer.
-define(MAX_EXPIRY, 4294967295).
%% Beyond any queue that fits in memory.
-define(MAX_OFFSET, 1 bsl 32).

-spec store_message(client_id(), message()) -> ok | {error, term()}.
store_message(ClientId, Msg) -> with_default(fun(C) -> store_message(C, ClientId, Msg) end).

-spec store_messages(client_id(), [message()]) -> ok | {error, term()}.
store_messages(ClientId, Msgs) -> with_default(fun(C) -> store_messages(C, ClientId, Msgs) end).

-spec get_messages(client_id(), non_neg_integer(), non_neg_integer()) -> {ok, [message()]} | {error, term()}.
get_messages(ClientId, Offset, Limit) -> with_default(fun(C) -> get_messages(C, ClientId, Offset, Limit) end).

-spec ack_message(client_id(), message_id()) -> ok | {error, term()}.
ack_message(ClientId, MsgId) -> with_default(fun(C) -> ack_message(C, ClientId, MsgId) end).

-spec delete_messages(client_id()) -> ok | {error, term()}.
delete_messages(ClientId) -> with_default(fun(C) -> delete_messages(C, ClientId) end).

-spec count_messages(client_id()) -> {ok, non_neg_integer()} | {error, term()}.
count_messages(ClientId) -> with_default(fun(C) -> count_messages(C, ClientId) end).

-spec queue_info(client_id()) -> {ok, queue_info()} | {error, term()}.
queue_info(ClientId) -> with_default(fun(C) -> queue_info(C, ClientId) end).

-spec store_message(client(), client_id(), message()) -> ok | {error, term()}.
store_message(Client, ClientId, Msg) ->
    store_messages(Client, ClientId, [Msg]).

%% @doc Queues `Msgs' in their order, in one round trip. A message whose id
%% is queued already is left as it is (in its place, with its content).
%% Errors: `{invalid_message, {id, Id | missing}}',
%% `{invalid_message, {expiry_interval, Value}}', `{invalid_message, NotAMap}',
%% `{too_large, #{id, size, max}}' (config `persistence.max_message_size'),
%% `{batch_too_large, #{count, max}}' (more than 10000 messages) and
%% `{batch_too_large, #{bytes, max}}' (the encoded messages up to the one that
%% crossed the limit of 8 MiB; split the batch).
-spec store_messages(client(), client_id(), [message()]) -> ok | {error, term()}.
store_messages(Client, ClientId, Msgs) ->
    Checks = [emqx_redis_storage_terms:client_id(ClientId), emqx_redis_storage_terms:batch(Msgs, ?MAX_BATCH)],
    checked(Client, Checks, fun() ->
        #{message_ttl := Ttl, max_message_size := MaxSize, max_queue_len := MaxLen} =
            emqx_redis_storage_client:settings(Client),
        case encode_all(Msgs, min(Ttl, ?MAX_EXPIRY), MaxSize, 0, []) of
            {ok, []} ->
                ok;
            {ok, Encoded} ->
                unwrap(call(Client, message_store, [ClientId, Encoded, MaxLen]));
            {error, _} = Error ->
                Error
        end
    end).

%% `[{Id, TtlMs, Body}]' for the NIF, or the first problem found.
encode_all([], _Ttl, _MaxSize, _Bytes, Acc) ->
    {ok, lists:reverse(Acc)};
encode_all([Msg | Rest], Ttl, MaxSize, Bytes, Acc) ->
    case encode(Msg, Ttl, MaxSize) of
        {ok, {_, _, Body} = Encoded} when Bytes + byte_size(Body) =< ?MAX_BATCH_BYTES ->
            encode_all(Rest, Ttl, MaxSize, Bytes + byte_size(Body), [Encoded | Acc]);
        {ok, {_, _, Body}} ->
            %% The messages up to this one are too large already.
            {error, {batch_too_large, #{bytes => Bytes + byte_size(Body), max => ?MAX_BATCH_BYTES}}};
        {error, _} = Error ->
            Error
    end.

encode(#{id := Id} = Msg, DefaultTtl, MaxSize) ->
    case {message_id(Id), ttl(Msg, DefaultTtl)} of
        {{error, _}, _} ->
            {error, {invalid_message, {id, Id}}};
        {ok, {error, _} = Error} ->
            Error;
        {ok, {ok, Ttl}} ->
            case emqx_redis_storage_terms:encode(Msg, MaxSize) of
                {ok, Body} -> {ok, {Id, emqx_redis_storage_terms:ms(Ttl), Body}};
                {error, {too_large, Info}} -> {error, {too_large, Info#{id => Id}}}
            end
    end;
encode(Msg, _DefaultTtl, _MaxSize) when is_map(Msg) ->
    {error, {invalid_message, {id, missing}}};
encode(Msg, _DefaultTtl, _MaxSize) ->
    {error, {invalid_message, Msg}}.

ttl(#{expiry_interval := Seconds}, _Default) when
    is_integer(Seconds), Seconds > 0, Seconds =< ?MAX_EXPIRY
->
    {ok, Seconds};
ttl(#{expiry_interval := Other}, _Default) ->
    {error, {invalid_message, {expiry_interval, Other}}};
ttl(_Msg, Default) ->
    {ok, Default}.

%% @doc Up to `Limit' (at most 10000) live messages, oldest first, from the
%% `Offset'-th on (0 is the oldest). Reading does not remove them: ack them.
%% A body in Redis that we could not have written (no term, not a map with
%% this `id') gives `{error, {corrupt, #{kind := message, detail}}}', the
%% detail naming the id.
-spec get_messages(client(), client_id(), non_neg_integer(), non_neg_integer()) ->
    {ok, [message()]} | {error, term()}.
get_messages(Client, ClientId, Offset, Limit) ->
    checked(Client, [emqx_redis_storage_terms:client_id(ClientId), page(Offset, Limit)], fun() ->
        case call(Client, message_get, [ClientId, Offset, Limit]) of
            {ok, Page} -> decode_all(Page, []);
            {error, _} = Error -> Error
        end
    end).

page(Offset, Limit) when
    is_integer(Offset), Offset >= 0, Offset =< ?MAX_OFFSET,
    is_integer(Limit), Limit >= 0, Limit =< ?MAX_PAGE
->
    ok;
page(Offset, Limit) ->
    {error, {invalid_page, #{offset => Offset, limit => Limit, max_limit => ?MAX_PAGE}}}.

decode_all([], Acc) ->
    {ok, lists:reverse(Acc)};
decode_all([{Id, Body} | Rest], Acc) ->
    case emqx_redis_storage_terms:decode(message, Body) of
        {ok, #{id := Id} = Msg} ->
            decode_all(Rest, [Msg | Acc]);
        {ok, _} ->
            emqx_redis_storage_terms:corrupt(message, <<(named(Id))/binary, "not a message with this id">>);
        {error, {corrupt, #{detail := Detail}}} ->
            emqx_redis_storage_terms:corrupt(message, <<(named(Id))/binary, Detail/binary>>)
    end.

%% How a detail names a message, as the NIF and the scripts do: the first
%% 100 bytes of its id, escaped like Rust's escape_ascii.
named(Id) ->
    Shown = binary:part(Id, 0, min(100, byte_size(Id))),
    Escaped = <<<<(escape(C))/binary>> || <<C>> <= Shown>>,
    <<Escaped/binary, ": ">>.

escape($\t) -> <<"\\t">>;
escape($\n) -> <<"\\n">>;
escape($\r) -> <<"\\r">>;
escape(C) when C =:= $"; C =:= $'; C =:= $\\ -> <<$\\, C>>;
escape(C) when C >= 32, C =< 126 -> <<C>>;
escape(C) -> iolist_to_binary(io_lib:format("\\x~2.16.0b", [C])).

%% @doc Removes a message from the queue; `ok' also if it is not queued.
-spec ack_message(client(), client_id(), message_id()) -> ok | {error, term()}.
ack_message(Client, ClientId, MsgId) ->
    Checks = [emqx_redis_storage_terms:client_id(ClientId), invalid_id(MsgId)],
    checked(Client, Checks, fun() ->
        unwrap(call(Client, message_ack, [ClientId, MsgId]))
    end).

invalid_id(MsgId) ->
    case message_id(MsgId) of
        ok -> ok;
        {error, _} -> {error, {invalid_message_id, MsgId}}
    end.

message_id(Id) when is_binary(Id), byte_size(Id) > 0, byte_size(Id) =< ?MAX_ID -> ok;
message_id(Id) -> {error, Id}.

%% @doc Deletes every message of the client and its `dropped' count.
-spec delete_messages(client(), client_id()) -> ok | {error, term()}.
delete_messages(Client, ClientId) ->
    checked(Client, [emqx_redis_storage_terms:client_id(ClientId)], fun() ->
        unwrap(call(Client, message_delete, [ClientId]))
    end).

%% @doc The number of live messages.
-spec count_messages(client(), client_id()) -> {ok, non_neg_integer()} | {error, term()}.
count_messages(Client, ClientId) ->
    checked(Client, [emqx_redis_storage_terms:client_id(ClientId)], fun() ->
        call(Client, message_count, [ClientId])
    end).

%% @doc `len': live messages; `dropped': messages dropped because the queue
%% was full, since the queue was created or deleted; `oldest_at': when the
%% oldest live message was stored (Unix ms, Redis's clock) or `undefined'.
-spec queue_info(client(), client_id()) -> {ok, queue_info()} | {error, term()}.
queue_info(Client, ClientId) ->
    checked(Client, [emqx_redis_storage_terms:client_id(ClientId)], fun() ->
        case call(Client, message_info, [ClientId]) of
            {ok, {Len, Dropped, OldestAt}} ->
                {ok, #{len => Len, dropped => Dropped, oldest_at => OldestAt}};
            {error, _} = Error ->
                Error
        end
    end).

%% Runs `Fun' if the client and then every check is `ok', else returns the first error.
checked(Client, Checks, Fun) ->
    emqx_redis_storage_client:checked(Client, Checks, Fun).

with_default(Fun) ->
    emqx_redis_storage_client:with_default(Fun).

call(Client, Fun, Args) ->
    emqx_redis_storage_client:call(Client, Fun, Args).

unwrap({ok, ok}) -> ok;
unwrap({error, _} = Error) -> Error.
