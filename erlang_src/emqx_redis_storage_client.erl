%% @doc Client handles and the one call helper.
%%
%% A client is a connection pool to one Redis deployment, held by a NIF
%% resource: several may exist per VM, and the application owns a default one.
%% `call/3' starts a NIF operation and waits for its `{Ref, Result}' reply with
%% a deadline; after a timeout, the late reply is either cancelled inside the
%% NIF or received here, so it never piles up in the caller's mailbox.
-module(emqx_redis_storage_client).

-export([connect/2, checked/3, info/1, health/1, settings/1, res/1, call/3, call_long/4, wait/2, with_default/1]).
-export([default/0, set_default/1, clear_default/0]).

-record(client, {
    res :: reference(),
    timeout :: pos_integer(),
    %% How long a status report may take: it pings Cluster masters within
    %% the connect timeout, whatever the command timeout.
    status_timeout :: pos_integer(),
    info :: map(),
    %% The `persistence' section of the config (TTLs and size limits), the
    %% `ds' section under `ds' and the `limiter' section under `limiter'.
    settings :: map()
}).
-opaque t() :: #client{}.
-export_type([t/0]).

-define(DEFAULT_KEY, {?MODULE, default}).

%% @doc Connects with a normalised config (see emqx_redis_storage_config).
-spec connect(map(), binary()) -> {ok, t()} | {error, term()}.
connect(#{redis := Redis, persistence := Settings} = Config, KeyPrefix) ->
    #{connect_timeout := ConnectTimeout, command_timeout := CommandTimeout} = Redis,
    case tls(maps:get(ssl, Redis)) of
        {ok, Tls} ->
            Nif = maps:merge(
                maps:with(
                    [redis_type, servers, sentinel, sentinel_username, database, username,
                     pool_size, connect_timeout, command_timeout, wait_replicas, wait_timeout,
                     max_inflight, slow_call_threshold],
                    Redis
                ),
                maps:with([route_index, route_shards, route_sync_interval], Config)
            ),
            #{message_retention := Retention, stream_shards := StreamShards} = Ds = maps:get(ds, Config),
            %% Secrets are revealed only inside the fun that hands them to the NIF.
            Start = fun(Ref) ->
                emqx_redis_storage_nif:connect(Ref, Nif#{
                    key_prefix => KeyPrefix,
                    ds_message_retention => Retention,
                    ds_stream_shards => StreamShards,
                    tls => Tls,
                    password => reveal(maps:get(password, Redis)),
                    sentinel_password => reveal(maps:get(sentinel_password, Redis))
                })
            end,
            %% The NIF allows two connect attempts; the margin covers scheduling.
            case wait(Start, 2 * ConnectTimeout + 1000) of
                {ok, Res} ->
                    define_limiters(Res, maps:get(limiter, Config)),
                    Info = (public_info(Redis))#{
                        key_prefix => KeyPrefix, route_index => maps:get(route_index, Config)
                    },
                    {ok, #client{
                        res = Res,
                        timeout = CommandTimeout,
                        status_timeout = ConnectTimeout + 1000,
                        info = Info,
                        settings = Settings#{ds => Ds, limiter => maps:get(limiter, Config)}
                    }};
                {error, timeout} ->
                    {error, {connection, <<"connect timeout">>}};
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

%% The limiters of the config, on a new client.
define_limiters(Res, #{limiters := Limiters, on_redis_down := Down}) ->
    maps:foreach(
        fun(Name, #{rate := Rate, burst := Burst, batch := Batch}) ->
            ok = emqx_redis_storage_nif:limiter_define(Res, Name, Rate, Burst, Batch, Down =:= allow)
        end,
        Limiters
    ).

reveal(Fun) when is_function(Fun, 0) -> Fun();
reveal(Value) -> Value.

%% The PEM files, read now so a missing or unreadable one is a clear error.
tls(#{enable := false}) ->
    {ok, undefined};
tls(#{cacertfile := Ca, certfile := Cert, keyfile := Key, verify := Verify, server_name_indication := Name}) ->
    Read = fun
        (_Field, undefined) ->
            undefined;
        (Field, File) ->
            case file:read_file(File) of
                {ok, Pem} ->
                    Pem;
                {error, Why} ->
                    Expected = io_lib:format("a readable file: ~ts: ~p", [File, Why]),
                    throw({invalid_config, <<"redis.ssl.", Field/binary>>, iolist_to_binary(Expected)})
            end
    end,
    try
        {ok, #{
            ca => Read(<<"cacertfile">>, Ca),
            cert => Read(<<"certfile">>, Cert),
            key => Read(<<"keyfile">>, Key),
            verify => Verify =:= verify_peer,
            server_name => Name
        }}
    catch
        throw:Reason -> {error, Reason}
    end.

public_info(#{redis_type := Mode, servers := Servers, database := Db, pool_size := Pool}) ->
    #{
        mode => Mode,
        servers => [emqx_redis_storage_url:address(Server) || Server <- Servers],
        database => Db,
        pool_size => Pool
    }.

%% @doc `ok' for a client made by `connect/2'; the API functions that take a
%% client check it first, so a wrong one is a plain error.
-spec check(term()) -> ok | {error, {invalid_client, term()}}.
check(#client{res = Res}) when is_reference(Res) -> ok;
check(Other) -> {error, {invalid_client, Other}}.

%% @doc Runs `Fun' if `Client' is a client and every check is `ok', else
%% returns the first error.
-spec checked(term(), [ok | {error, term()}], fun(() -> Result)) -> Result | {error, term()}.
checked(Client, Checks, Fun) ->
    case [Error || {error, _} = Error <- [check(Client) | Checks]] of
        [] -> Fun();
        [Error | _] -> Error
    end.

%% @doc What may be shown about a client: never a secret.
-spec info(t()) -> map().
info(#client{info = Info}) -> Info.

%% @doc How the client's connection to Redis fares: the breaker (`open'
%% while Redis is unreachable: calls fail at once), the requests in flight,
%% and the state of each server in use: `up', `connecting' or `down', when
%% it last answered and the last error met reaching it (Unix ms, or
%% `undefined' if never).
-spec health(t()) -> map().
health(#client{status_timeout = Timeout} = Client) ->
    case wait(fun(Ref) -> emqx_redis_storage_nif:client_status(res(Client), Ref) end, Timeout) of
        {ok, {Breaker, LastError, InFlight, Servers}} ->
            #{
                breaker => Breaker,
                last_error => LastError,
                in_flight => InFlight,
                server_states => [
                    #{
                        server => Address,
                        state => State,
                        last_ok_at => LastOk,
                        last_error => ServerError,
                        last_error_at => ErrorAt
                    }
                 || {Address, State, LastOk, ServerError, ErrorAt} <- Servers
                ]
            };
        {error, Reason} ->
            #{breaker => unknown, last_error => iolist_to_binary(io_lib:format("~0p", [Reason]))}
    end.

%% @doc The NIF resource, for the synchronous NIFs that take it directly.
-spec res(t()) -> reference().
res(#client{res = Res}) -> Res.

%% @doc The `persistence' settings the client was made with, the `ds'
%% settings under `ds' and the `limiter' settings under `limiter'.
-spec settings(t()) -> map().
settings(#client{settings = Settings}) -> Settings.

%% @doc Runs `Fun(Client)' with the application's default client.
-spec with_default(fun((t()) -> Result)) -> Result | {error, not_started}.
with_default(Fun) ->
    case default() of
        {ok, Client} -> Fun(Client);
        {error, _} = Error -> Error
    end.

%% @doc Runs `emqx_redis_storage_nif:Fun(Res, Ref, Args...)' within the
%% client's command timeout.
-spec call(t(), atom(), list()) -> {ok, term()} | {error, term()}.
call(#client{res = Res, timeout = Timeout}, Fun, Args) ->
    wait(fun(Ref) -> start(Fun, [Res, Ref | Args]) end, Timeout);
call(Other, _Fun, _Args) ->
    {error, {invalid_client, Other}}.

%% @doc Runs `emqx_redis_storage_nif:Fun(Res, Ref, Args..., Tag)', an
%% operation of any length that reports its progress: `OnProgress(Phase,
%% Keys, Bytes)' is called for each report. It is given up (`{error,
%% timeout}') only when no report came for four command timeouts and 10 s.
-spec call_long(t(), atom(), list(), fun((atom(), non_neg_integer(), non_neg_integer()) -> term())) ->
    {ok, term()} | {error, term()}.
call_long(#client{res = Res, timeout = Timeout}, Fun, Args, OnProgress) ->
    Tag = erlang:unique_integer(),
    Ref = make_ref(),
    case start(Fun, [Res, Ref | Args] ++ [Tag]) of
        {error, _} = Error -> Error;
        Ticket -> long_reply(Ref, Ticket, Tag, OnProgress, 4 * Timeout + 10000)
    end;
call_long(Other, _Fun, _Args, _OnProgress) ->
    {error, {invalid_client, Other}}.

long_reply(Ref, Ticket, Tag, OnProgress, Idle) ->
    receive
        {emqx_redis_storage_progress, Tag, Phase, Keys, Bytes} ->
            _ = OnProgress(Phase, Keys, Bytes),
            long_reply(Ref, Ticket, Tag, OnProgress, Idle);
        {Ref, Result} ->
            flush_progress(Tag),
            Result
    after Idle ->
        flush_progress(Tag),
        case emqx_redis_storage_nif:cancel(Ticket) of
            cancelled -> {error, timeout};
            sent -> receive {Ref, Result} -> Result end
        end
    end.

%% Reports sent from other threads may arrive after the reply.
flush_progress(Tag) ->
    receive
        {emqx_redis_storage_progress, Tag, _, _, _} -> flush_progress(Tag)
    after 0 -> ok
    end.

%% The API modules check every argument before calling; a badarg from the
%% NIF's argument decoding means a check is missing. It is still an answer,
%% not an exception, since callers rely on never being crashed by a call.
start(Fun, Args) ->
    try
        apply(emqx_redis_storage_nif, Fun, Args)
    catch
        error:badarg -> {error, {invalid_argument, Fun}}
    end.

%% @doc Starts a NIF operation with a fresh reference and waits for its reply.
-spec wait(fun((reference()) -> term()), timeout()) -> {ok, term()} | {error, term()}.
wait(Start, Timeout) ->
    Ref = make_ref(),
    case Start(Ref) of
        {error, _} = Error ->
            Error;
        %% Answered at once, without Redis (a limiter's local batch).
        {ok, _} = Done ->
            Done;
        Ticket ->
            receive
                {Ref, Result} -> Result
            after Timeout ->
                case emqx_redis_storage_nif:cancel(Ticket) of
                    cancelled ->
                        {error, timeout};
                    sent ->
                        %% The reply was already on its way; it is certain to arrive.
                        receive
                            {Ref, Result} -> Result
                        end
                end
            end
    end.

-spec default() -> {ok, t()} | {error, not_started}.
default() ->
    case persistent_term:get(?DEFAULT_KEY, undefined) of
        undefined -> {error, not_started};
        Client -> {ok, Client}
    end.

-spec set_default(t()) -> ok.
set_default(#client{} = Client) ->
    persistent_term:put(?DEFAULT_KEY, Client).

-spec clear_default() -> ok.
clear_default() ->
    _ = persistent_term:erase(?DEFAULT_KEY),
    ok.
