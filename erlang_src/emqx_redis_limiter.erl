%% @doc Rate limits shared by every node: one budget per key (a client id,
%% a username, an address), whichever node the key's checks reach.
%%
%% A limiter is a token bucket per key, kept in Redis: it holds at most
%% `burst' tokens and gets `rate' tokens per second back, on Redis's clock
%% only (the caller's clock is never read). A check of `Cost' takes `Cost'
%% tokens, or is limited and told when they will be there. With every check
%% going to Redis the limit is exact across nodes: one Lua script per check,
%% one key per limiter and key, which expires once its bucket is full again.
%%
%% With `batch => N', a node takes up to N tokens ahead for a key and spends
%% them without a round trip. Every token admitted was taken from the Redis
%% bucket, so over any run the cluster admits no more than one bucket would;
%% within any window it admits at most one batch per node more than that
%% (a node's tokens are spent within a second of being taken, or dropped).
%%
%% A check never raises and never waits longer than the command timeout:
%% when Redis does not answer (the breaker is open, a timeout, overload, an
%% error reply), the config's `limiter.on_redis_down' decides at once:
%% `allow' gives `{ok, 0}', `deny' gives `{error, {limited, 1000}}'; either
%% is counted as an error of the limiter and logged (rate-bounded).
%%
%% Limiters are defined per client: from the config's `limiter.limiters'
%% when the client connects, or with `define/2,3'. Every function works on
%% the application's default client, and takes a client from
%% `emqx_redis_storage:connect/1' as an optional first argument.
-module(emqx_redis_limiter).

-export([define/2, define/3, check/3, check/4, reset/2, reset/3]).

-type name() :: binary().
-type key() :: binary().
-type limit() :: #{rate := pos_integer(), burst := pos_integer(), batch => non_neg_integer()}.
-type client() :: emqx_redis_storage_client:t().
-export_type([name/0, key/0, limit/0]).

-define(MAX_NAME, 255).
-define(MAX_KEY, 65535).
-define(MAX_COST, 1000000000).
%% What a check denied while Redis is down is told to wait (as the NIF says).
-define(DOWN_RETRY_MS, 1000).

%% @doc Defines `Name' (or changes its limit) on the default client.
-spec define(name(), limit()) -> ok | {error, term()}.
define(Name, Limit) -> with_default(fun(C) -> define(C, Name, Limit) end).

-spec check(name(), key(), non_neg_integer()) ->
    {ok, non_neg_integer()} | {error, {limited, pos_integer()}} | {error, term()}.
check(Name, Key, Cost) -> with_default(fun(C) -> check(C, Name, Key, Cost) end).

-spec reset(name(), key()) -> ok | {error, term()}.
reset(Name, Key) -> with_default(fun(C) -> reset(C, Name, Key) end).

%% @doc Defines `Name' with `#{rate := TokensPerSecond, burst := MaxTokens,
%% batch => TokensTakenAhead}' (`batch' at most `burst', default 0). A
%% redefined limiter keeps its counters and its buckets' tokens. Errors:
%% `{invalid_limiter_name, Name}', `{invalid_limiter, #{name, field,
%% expected}}'.
-spec define(client(), name(), limit()) -> ok | {error, term()}.
define(Client, Name, Limit) ->
    emqx_redis_storage_client:checked(Client, [name(Name)], fun() ->
        case emqx_redis_storage_config:limit(Limit) of
            {ok, #{rate := Rate, burst := Burst, batch := Batch}} ->
                #{limiter := #{on_redis_down := Down}} = emqx_redis_storage_client:settings(Client),
                Res = emqx_redis_storage_client:res(Client),
                emqx_redis_storage_nif:limiter_define(Res, Name, Rate, Burst, Batch, Down =:= allow);
            {error, {invalid_config, Field, Expected}} ->
                {error, {invalid_limiter, #{name => Name, field => Field, expected => Expected}}}
        end
    end).

%% @doc Takes `Cost' tokens (0 only looks) from `Key''s bucket of `Name':
%% `{ok, Remaining}' (the tokens left as this node knows them), or
%% `{error, {limited, RetryAfterMs}}'. Never raises. Other errors are bad
%% arguments only: `{unknown_limiter, Name}', `{invalid_cost, #{cost,
%% burst}}' (more than a bucket holds), `{invalid_limiter_name, Name}',
%% `{invalid_limiter_key, Key}' (1 to 65535 bytes), `{invalid_client, _}'.
-spec check(client(), name(), key(), non_neg_integer()) ->
    {ok, non_neg_integer()} | {error, {limited, pos_integer()}} | {error, term()}.
check(Client, Name, Key, Cost) when
    is_binary(Name), is_binary(Key), byte_size(Key) > 0, byte_size(Key) =< ?MAX_KEY,
    is_integer(Cost), Cost >= 0, Cost =< ?MAX_COST
->
    case emqx_redis_storage_client:call(Client, limiter_check, [Name, Key, Cost]) of
        {ok, Remaining} when is_integer(Remaining) -> {ok, Remaining};
        {ok, {limited, _} = Limited} -> {error, Limited};
        %% The NIF answers within the command timeout; should it still be
        %% late, the policy decides as it does there.
        {error, timeout} -> unanswered(Client);
        {error, _} = Error -> Error
    end;
check(_Client, Name, _Key, _Cost) when not is_binary(Name) ->
    {error, {invalid_limiter_name, Name}};
check(_Client, _Name, Key, Cost) when is_integer(Cost), Cost >= 0, Cost =< ?MAX_COST ->
    {error, {invalid_limiter_key, Key}};
check(_Client, _Name, _Key, Cost) ->
    {error, {invalid_cost, Cost}}.

unanswered(Client) ->
    case emqx_redis_storage_client:settings(Client) of
        #{limiter := #{on_redis_down := allow}} -> {ok, 0};
        #{limiter := #{on_redis_down := deny}} -> {error, {limited, ?DOWN_RETRY_MS}}
    end.

%% @doc Gives `Key' a full bucket of `Name' again. This node's batch for
%% the key is dropped; other nodes may still spend theirs (a batch each).
-spec reset(client(), name(), key()) -> ok | {error, term()}.
reset(Client, Name, Key) ->
    emqx_redis_storage_client:checked(Client, [name(Name), key(Key)], fun() ->
        case emqx_redis_storage_client:call(Client, limiter_reset, [Name, Key]) of
            {ok, ok} -> ok;
            {error, _} = Error -> Error
        end
    end).

name(Name) when is_binary(Name), byte_size(Name) > 0, byte_size(Name) =< ?MAX_NAME -> ok;
name(Name) -> {error, {invalid_limiter_name, Name}}.

key(Key) when is_binary(Key), byte_size(Key) > 0, byte_size(Key) =< ?MAX_KEY -> ok;
key(Key) -> {error, {invalid_limiter_key, Key}}.

with_default(Fun) ->
    emqx_redis_storage_client:with_default(Fun).
