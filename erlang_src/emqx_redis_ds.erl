%% @doc Durable messages: stored once per publish in append-only streams in
%% Redis, replayed by iterators that sessions keep.
%%
%% A durable session `subscribe/2's its filters; `persist/1' stores a
%% message once, whatever the number of subscribers, and only if some
%% durable filter matches its topic (decided from a local mirror of the
%% durable filters, without a round trip). A reader lists the streams that
%% can hold its filter's messages (`get_streams/2'), makes an iterator per
%% stream (`make_iterator/3') and reads with `next/2', which returns the
%% matching messages in append order and a new iterator. Streams and
%% iterators are small plain terms: save them in the session (with its
%% fence) and resume on any node. `watch/1' tells the caller as soon as
%% anything is appended after an iterator's position.
%%
%% A message is a map with a binary `id' and a `topic' (a topic name), and
%% any other fields; `next/2' returns it equal to what was persisted. The
%% messages of one publisher (`from') on one topic come back in the order
%% they were persisted; an iterator returns a message persisted once once.
%%
%% Every function works on the application's default client, and takes a
%% client from `emqx_redis_storage:connect/1' as an optional first argument.
-module(emqx_redis_ds).

-include("emqx_redis_storage.hrl").

-export([subscribe/2, unsubscribe/2, subscriptions/1, persist/1]).
-export([get_streams/2, make_iterator/3, next/2, watch/1, unwatch/1]).
-export([subscribe/3, unsubscribe/3, subscriptions/2, persist/2]).
-export([get_streams/3, make_iterator/4, next/3, watch/2, unwatch/2]).
-export([filters/0, filters/1, holders/1, holders/2]).
-export([filter_matches/2]).

-type client() :: emqx_redis_storage_client:t().
-type client_id() :: emqx_redis_session:client_id().
-type filter() :: binary().
-type message() :: #{id := binary(), topic := binary(), term() => term()}.
-opaque stream() :: {emqx_redis_ds_stream, 1, Level :: binary(), Shard :: non_neg_integer()}.
-opaque iterator() ::
    {emqx_redis_ds_iterator, 1, Level :: binary(), Shard :: non_neg_integer(), filter(),
        Ms :: non_neg_integer(), Seq :: non_neg_integer(), Skip :: non_neg_integer()}.
-export_type([stream/0, iterator/0, message/0]).

-define(STREAM(Level, Shard), {emqx_redis_ds_stream, 1, Level, Shard}).
%% The position: the stream entry id `Ms-Seq' to read next, and how many of
%% its messages were read already (an entry holds a persist call's messages).
-define(IT(Level, Shard, Filter, Ms, Seq, Skip), {emqx_redis_ds_iterator, 1, Level, Shard, Filter, Ms, Seq, Skip}).
-define(MAX_U32, 4294967295).
%% Messages per persist/1 call and per next/2 batch.
-define(MAX_BATCH, 10000).
-define(MAX_ID, 65535).
%% Stream entry ids are two unsigned 64-bit integers.
-define(MAX_U64, 18446744073709551615).

-spec subscribe(client_id(), filter()) -> ok | {error, term()}.
subscribe(ClientId, Filter) -> with_default(fun(C) -> subscribe(C, ClientId, Filter) end).

-spec unsubscribe(client_id(), filter()) -> ok | {error, term()}.
unsubscribe(ClientId, Filter) -> with_default(fun(C) -> unsubscribe(C, ClientId, Filter) end).

-spec subscriptions(client_id()) -> {ok, [filter()]} | {error, term()}.
subscriptions(ClientId) -> with_default(fun(C) -> subscriptions(C, ClientId) end).

-spec filters() -> {ok, [filter()]} | {error, term()}.
filters() -> with_default(fun(C) -> filters(C) end).

-spec holders(filter()) -> {ok, [client_id()]} | {error, term()}.
holders(Filter) -> with_default(fun(C) -> holders(C, Filter) end).

-spec persist([message()]) -> {ok, #{persisted := non_neg_integer(), skipped := non_neg_integer()}} | {error, term()}.
persist(Msgs) -> with_default(fun(C) -> persist(C, Msgs) end).

-spec get_streams(filter(), non_neg_integer()) -> {ok, [stream()]} | {error, term()}.
get_streams(Filter, StartTimeMs) -> with_default(fun(C) -> get_streams(C, Filter, StartTimeMs) end).

-spec make_iterator(stream(), filter(), non_neg_integer()) -> {ok, iterator()} | {error, term()}.
make_iterator(Stream, Filter, StartTimeMs) ->
    with_default(fun(C) -> make_iterator(C, Stream, Filter, StartTimeMs) end).

-spec next(iterator(), pos_integer()) -> {ok, iterator(), [message()]} | {ok, end_of_stream} | {error, term()}.
next(It, BatchSize) -> with_default(fun(C) -> next(C, It, BatchSize) end).

-spec watch(iterator()) -> {ok, reference()} | {error, term()}.
watch(It) -> with_default(fun(C) -> watch(C, It) end).

-spec unwatch(reference()) -> ok | {error, term()}.
unwatch(WatchRef) -> with_default(fun(C) -> unwatch(C, WatchRef) end).

%% @doc Makes `Filter' durable for the client: from now on `persist/1'
%% stores the messages it matches. Subscribing again changes nothing.
%% Errors: `{invalid_topic, Reason}', `{filter_too_wide, Filter}' (a filter
%% starting with `+' or `#', unless `ds.allow_wildcard_root'),
%% `too_many_subscriptions' (`ds.max_subscriptions_per_client').
-spec subscribe(client(), client_id(), filter()) -> ok | {error, term()}.
subscribe(Client, ClientId, Filter) ->
    checked(Client, [client_id(ClientId), filter(Filter)], fun() ->
        #{ds := #{allow_wildcard_root := Wide, max_subscriptions_per_client := Max}} =
            emqx_redis_storage_client:settings(Client),
        case Wide orelse not wildcard_root(Filter) of
            false ->
                {error, {filter_too_wide, Filter}};
            true ->
                case call(Client, ds_subscribe, [ClientId, Filter, Max]) of
                    {ok, too_many} -> {error, too_many_subscriptions};
                    {ok, _} -> ok;
                    {error, _} = Error -> Error
                end
        end
    end).

%% @doc The filter is no longer durable for the client; `ok' also if it was not.
-spec unsubscribe(client(), client_id(), filter()) -> ok | {error, term()}.
unsubscribe(Client, ClientId, Filter) ->
    checked(Client, [client_id(ClientId), filter(Filter)], fun() ->
        case call(Client, ds_unsubscribe, [ClientId, Filter]) of
            {ok, ok} -> ok;
            {error, _} = Error -> Error
        end
    end).

%% @doc The client's durable filters, sorted.
-spec subscriptions(client(), client_id()) -> {ok, [filter()]} | {error, term()}.
subscriptions(Client, ClientId) ->
    checked(Client, [client_id(ClientId)], fun() -> call(Client, ds_subscriptions, [ClientId]) end).

%% @doc Every durable filter some client holds, sorted.
-spec filters(client()) -> {ok, [filter()]} | {error, term()}.
filters(Client) ->
    checked(Client, [], fun() -> call(Client, ds_filters, []) end).

%% @doc The clients that hold `Filter' durable, sorted.
-spec holders(client(), filter()) -> {ok, [client_id()]} | {error, term()}.
holders(Client, Filter) ->
    checked(Client, [filter(Filter)], fun() -> call(Client, ds_holders, [Filter]) end).

%% @doc Stores each message whose topic some durable filter matches, once,
%% in one round trip per stream; the others are `skipped'. Errors (nothing
%% stored): `{invalid_message, {id, Id | missing}}', `{invalid_message,
%% {topic, Topic | missing}}', `{invalid_message, NotAMap}', `{too_large,
%% #{id, size, max}}' (`persistence.max_message_size'), `{batch_too_large, _}'
%% (over 10000 messages or 8 MiB). After a `timeout' or `connection_lost'
%% some may be stored: persisting again may store them twice.
-spec persist(client(), [message()]) ->
    {ok, #{persisted := non_neg_integer(), skipped := non_neg_integer()}} | {error, term()}.
persist(Client, Msgs) ->
    checked(Client, [emqx_redis_storage_terms:batch(Msgs, ?MAX_BATCH)], fun() ->
        #{max_message_size := MaxSize} = emqx_redis_storage_client:settings(Client),
        case encode_all(Msgs, MaxSize, 0, []) of
            {ok, []} ->
                {ok, #{persisted => 0, skipped => 0}};
            {ok, Encoded} ->
                case call(Client, ds_persist, [Encoded]) of
                    {ok, N} -> {ok, #{persisted => N, skipped => length(Encoded) - N}};
                    {error, _} = Error -> Error
                end;
            {error, _} = Error ->
                Error
        end
    end).

%% @doc The streams that can hold messages matching `Filter': those of its
%% first level, or of every first level if it starts with a wildcard.
%% `StartTimeMs' is accepted for the API's sake; iterators apply it.
-spec get_streams(client(), filter(), non_neg_integer()) -> {ok, [stream()]} | {error, term()}.
get_streams(Client, Filter, StartTimeMs) ->
    checked(Client, [filter(Filter), time(StartTimeMs)], fun() ->
        case call(Client, ds_streams, [Filter]) of
            {ok, Streams} -> {ok, [?STREAM(Level, Shard) || {Level, Shard} <- Streams]};
            {error, _} = Error -> Error
        end
    end).

%% @doc An iterator over the messages of `Stream' that match `Filter',
%% stored at or after `StartTimeMs' (Unix ms, by Redis's clock). No Redis call.
-spec make_iterator(client(), stream(), filter(), non_neg_integer()) -> {ok, iterator()} | {error, term()}.
make_iterator(Client, Stream, Filter, StartTimeMs) ->
    checked(Client, [filter(Filter), time(StartTimeMs)], fun() ->
        with_stream(Client, Stream, fun(Level, Shard) ->
            {ok, ?IT(Level, Shard, Filter, StartTimeMs, 0, 0)}
        end)
    end).

%% @doc Up to `BatchSize' (at most 10000) messages after the iterator's
%% position, in append order, and the iterator after them. One call reads
%% at most 10000 stream entries and returns about 8 MiB at most, so it may
%% return fewer messages, or none, before the stream's end: read until a
%% call returns none, or `watch/1'. Streams here are open-ended: a
%% `{ok, end_of_stream}' (EMQX's end of a closed generation) never comes.
-spec next(client(), iterator(), pos_integer()) ->
    {ok, iterator(), [message()]} | {ok, end_of_stream} | {error, term()}.
next(Client, It, BatchSize) ->
    checked(Client, [batch_size(BatchSize)], fun() ->
        with_iterator(Client, It, fun(Level, Shard, Filter, Ms, Seq, Skip) ->
        case call(Client, ds_next, [{Level, Shard}, Filter, {Ms, Seq, Skip}, BatchSize]) of
            {ok, {{Ms2, Seq2, Skip2}, Stored, _Scanned}} ->
                case messages(Stored, []) of
                    corrupt -> emqx_redis_storage_terms:corrupt(durable_message, <<"not a message we persisted">>);
                    Msgs -> {ok, ?IT(Level, Shard, Filter, Ms2, Seq2, Skip2), Msgs}
                end;
            {error, _} = Error ->
                Error
        end
        end)
    end).

%% The stored `{Topic, Body}' pairs of a batch as messages, or `corrupt' if
%% one is not a message we persisted (a map without `topic', with a binary
%% `id'). Decoded here, in the caller: callers decode in parallel, each on
%% its own scheduler (the NIF's threads share one slot of the atom table's
%% lock, and 64 callers' batches waited for it there).
messages([{Topic, Body} | Rest], Acc) ->
    case message(Topic, Body) of
        corrupt -> corrupt;
        Msg -> messages(Rest, [Msg | Acc])
    end;
messages([], Acc) ->
    lists:reverse(Acc).

message(Topic, Body) when is_binary(Body) ->
    try binary_to_term(Body, [safe, used]) of
        {#{id := Id} = Msg, Used} when is_binary(Id), Used =:= byte_size(Body), not is_map_key(topic, Msg) ->
            Msg#{topic => Topic};
        _ ->
            corrupt
    catch
        error:badarg -> corrupt
    end;
message(_Topic, _Body) ->
    corrupt.

%% @doc The caller gets `{emqx_redis_ds, WatchRef, new_data}' once, as soon
%% as the iterator's stream holds anything after its position, appended by
%% any node (at once if it already does). One listener per client serves
%% every watch; none polls Redis.
-spec watch(client(), iterator()) -> {ok, reference()} | {error, term()}.
watch(Client, It) ->
    checked(Client, [], fun() ->
        with_iterator(Client, It, fun(Level, Shard, _Filter, Ms, Seq, _Skip) ->
            WatchRef = make_ref(),
            Key = term_to_binary(WatchRef),
            case call(Client, ds_watch, [{Level, Shard}, {Ms, Seq}, WatchRef, Key]) of
                {ok, ok} -> {ok, WatchRef};
                {error, _} = Error -> Error
            end
        end)
    end).

%% @doc Ends a watch and flushes its message if it came; `ok' also if it
%% had fired already.
-spec unwatch(client(), reference()) -> ok | {error, term()}.
unwatch(Client, WatchRef) ->
    checked(Client, [watch_ref(WatchRef)], fun() ->
        ok = emqx_redis_storage_nif:ds_unwatch(emqx_redis_storage_client:res(Client), term_to_binary(WatchRef)),
        receive
            {emqx_redis_ds, WatchRef, new_data} -> ok
        after 0 -> ok
        end
    end).

%% @doc Whether the client's local mirror of the durable filters matches
%% the topic name: what `persist/1' decides by; `not_ready' while the
%% mirror is loading or catching up (then `persist/1' stores everything).
-spec filter_matches(client(), binary()) -> boolean() | not_ready | {error, term()}.
filter_matches(Client, Topic) ->
    checked(Client, [name(Topic)], fun() ->
        emqx_redis_storage_nif:ds_filter_match(emqx_redis_storage_client:res(Client), Topic)
    end).

%%--------------------------------------------------------------------

client_id(ClientId) -> emqx_redis_storage_terms:client_id(ClientId).

filter(Filter) -> topic(filter, Filter).

name(Topic) -> topic(name, Topic).

topic(Kind, Topic) ->
    case emqx_redis_topic:validate(Kind, Topic) of
        ok -> ok;
        {error, Reason} -> {error, {invalid_topic, Reason}}
    end.

wildcard_root(<<"#", _/binary>>) -> true;
wildcard_root(<<"+", _/binary>>) -> true;
wildcard_root(_) -> false.

time(T) when is_integer(T), T >= 0, T =< ?MAX_U64 -> ok;
time(T) -> {error, {invalid_start_time, T}}.

batch_size(N) when is_integer(N), N >= 1, N =< ?MAX_BATCH -> ok;
batch_size(N) -> {error, {invalid_batch_size, N}}.

watch_ref(Ref) when is_reference(Ref) -> ok;
watch_ref(Ref) -> {error, {invalid_watch, Ref}}.

%% A stream as get_streams/2 makes them: a first level (a topic level,
%% without `/') and a shard below the client's `ds.stream_shards'.
with_stream(Client, ?STREAM(Level, Shard) = Stream, Fun) ->
    case valid_level(Level) andalso valid_shard(Client, Shard) of
        true -> Fun(Level, Shard);
        false -> {error, {invalid_stream, Stream}}
    end;
with_stream(_Client, Other, _Fun) ->
    {error, {invalid_stream, Other}}.

with_iterator(Client, ?IT(Level, Shard, Filter, Ms, Seq, Skip) = It, Fun) ->
    Valid =
        valid_level(Level) andalso valid_shard(Client, Shard) andalso
            filter(Filter) =:= ok andalso time(Ms) =:= ok andalso time(Seq) =:= ok andalso
            is_integer(Skip) andalso Skip >= 0 andalso Skip =< ?MAX_U32,
    case Valid of
        true -> Fun(Level, Shard, Filter, Ms, Seq, Skip);
        false -> {error, {invalid_iterator, It}}
    end;
with_iterator(_Client, Other, _Fun) ->
    {error, {invalid_iterator, Other}}.

valid_level(<<>>) ->
    true;
valid_level(Level) when is_binary(Level) ->
    binary:match(Level, <<"/">>) =:= nomatch andalso emqx_redis_topic:validate(name, Level) =:= ok;
valid_level(_) ->
    false.

valid_shard(Client, Shard) ->
    #{ds := #{stream_shards := Shards}} = emqx_redis_storage_client:settings(Client),
    is_integer(Shard) andalso Shard >= 0 andalso Shard < Shards.

%% `[{Topic, Body, FromHash}]' for the NIF, or the first problem found. The
%% body leaves the topic out (the stream entry holds it once).
encode_all([], _MaxSize, _Bytes, Acc) ->
    {ok, lists:reverse(Acc)};
encode_all([Msg | Rest], MaxSize, Bytes, Acc) ->
    case encode(Msg, MaxSize) of
        {ok, {Topic, Body, _} = Encoded} ->
            Size = Bytes + byte_size(Topic) + byte_size(Body),
            case Size =< ?MAX_REQUEST_BYTES of
                true -> encode_all(Rest, MaxSize, Size, [Encoded | Acc]);
                false -> {error, {batch_too_large, #{bytes => Size, max => ?MAX_REQUEST_BYTES}}}
            end;
        {error, _} = Error ->
            Error
    end.

%% The NIF checks each topic name (`{invalid_message, {topic, Topic}}`).
encode(#{id := Id, topic := Topic} = Msg, MaxSize) when
    is_binary(Id), byte_size(Id) > 0, byte_size(Id) =< ?MAX_ID, is_binary(Topic)
->
    case emqx_redis_storage_terms:encode(maps:remove(topic, Msg), MaxSize) of
        {ok, Body} -> {ok, {Topic, Body, erlang:phash2(maps:get(from, Msg, undefined))}};
        {error, {too_large, Info}} -> {error, {too_large, Info#{id => Id}}}
    end;
encode(#{id := Id, topic := Topic}, _MaxSize) when is_binary(Id), byte_size(Id) > 0, byte_size(Id) =< ?MAX_ID ->
    {error, {invalid_message, {topic, Topic}}};
encode(#{id := Id, topic := _}, _MaxSize) ->
    {error, {invalid_message, {id, Id}}};
encode(#{id := _}, _MaxSize) ->
    {error, {invalid_message, {topic, missing}}};
encode(Msg, _MaxSize) when is_map(Msg) ->
    {error, {invalid_message, {id, missing}}};
encode(Msg, _MaxSize) ->
    {error, {invalid_message, Msg}}.

call(Client, Fun, Args) ->
    emqx_redis_storage_client:call(Client, Fun, Args).

with_default(Fun) ->
    emqx_redis_storage_client:with_default(Fun).

checked(Client, Checks, Fun) ->
    emqx_redis_storage_client:checked(Client, Checks, Fun).
