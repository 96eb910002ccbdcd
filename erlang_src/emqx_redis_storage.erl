%% @doc Start, stop and inspect the storage, and run raw Redis commands.
%%
%% The configuration is a map (see the README), given to `start/1' or taken
%% from the application environment key `config' by `start/0'.
-module(emqx_redis_storage).

-include("emqx_redis_storage.hrl").

-export([start/0, start/1, stop/0, status/0, status/1]).
-export([connect/1, q/1, q/2]).
-export([metrics/0, metrics/1, prometheus/0, prometheus/1]).
-export([backup/1, backup/3, restore/1, restore/2, restore/3]).

-type command() :: [binary() | iodata() | atom() | integer() | float()].
-export_type([command/0]).

-spec start() -> ok | {error, term()}.
start() ->
    case application:ensure_all_started(emqx_redis_storage) of
        {ok, _} -> ok;
        {error, {emqx_redis_storage, {Reason, {emqx_redis_storage_app, start, _}}}} -> {error, Reason};
        {error, _} = Error -> Error
    end.

%% @doc Starts the application with `Config'; `{error, already_started}' if it runs.
-spec start(map()) -> ok | {error, term()}.
start(Config) when is_map(Config) ->
    case lists:keymember(emqx_redis_storage, 1, application:which_applications()) of
        true ->
            {error, already_started};
        false ->
            %% Checked here as well as at application start, so that a bad
            %% config is a plain error rather than a failed application start.
            case emqx_redis_storage_config:parse(Config) of
                {ok, _} ->
                    _ = application:load(emqx_redis_storage),
                    ok = application:set_env(emqx_redis_storage, config, Config),
                    start();
                {error, _} = Error ->
                    Error
            end
    end;
start(_Config) ->
    {error, {invalid_config, <<>>, <<"a map">>}}.

-spec stop() -> ok.
stop() ->
    case application:stop(emqx_redis_storage) of
        ok -> ok;
        {error, {not_started, emqx_redis_storage}} -> ok
    end.

%% @doc The default client's status (see `status/1') with this node's
%% membership under `nodes' (see `emqx_redis_nodes:membership/0'; `disabled'
%% when it is no member), or `#{started => false, connected => false,
%% healthy => false}'.
-spec status() -> map().
status() ->
    case emqx_redis_storage_client:default() of
        {error, not_started} ->
            #{started => false, connected => false, healthy => false};
        {ok, Client} ->
            #{} = Status = status(Client),
            Status#{nodes => membership()}
    end.

membership() ->
    case emqx_redis_nodes:membership() of
        {error, Reason} -> Reason;
        Membership -> Membership
    end.

%% @doc `#{started, mode, servers, database, pool_size, key_prefix,
%% route_index, connected, healthy, breaker, last_error, in_flight,
%% server_states}': `connected' is a PING answered now; `breaker' is
%% `closed', or `open' while Redis is unreachable (calls fail at once) with
%% `half_open' while a background probe tries it; `server_states' has a
%% `#{server, state => up | connecting | down, last_ok_at, last_error,
%% last_error_at}' for each server in use (the single server, the Sentinel
%% master, each Cluster master). `healthy' is `connected', the breaker
%% closed and every server up. Never a secret.
-spec status(emqx_redis_storage_client:t()) -> map() | {error, {invalid_client, term()}}.
status(Client) ->
    emqx_redis_storage_client:checked(Client, [], fun() ->
        Connected = q(Client, [<<"PING">>]) =:= {ok, <<"PONG">>},
        Info = emqx_redis_storage_client:info(Client),
        Health = emqx_redis_storage_client:health(Client),
        maps:merge(Info#{started => true, connected => Connected, healthy => healthy(Connected, Health)}, Health)
    end).

%% One rule an operator can alert on: every part of the way to Redis works.
healthy(Connected, #{breaker := closed, server_states := [_ | _] = Servers}) ->
    Connected andalso lists:all(fun(#{state := State}) -> State =:= up end, Servers);
healthy(_Connected, _Health) ->
    false.

%% @doc The default client's metrics; see `metrics/1'.
-spec metrics() -> map() | {error, not_started}.
metrics() ->
    emqx_redis_storage_client:with_default(fun metrics/1).

%% @doc What the client counted since it connected: per operation (the
%% NIF's names: `session_save', `message_store', `q', ...) the calls
%% answered, errors by kind, calls in flight and a latency histogram, and
%% the client's connections, reconnects, failovers followed, requests and
%% bytes. The README lists every field.
-spec metrics(emqx_redis_storage_client:t()) -> map() | {error, {invalid_client, term()}}.
metrics(Client) ->
    emqx_redis_storage_client:checked(Client, [], fun() -> emqx_redis_storage_metrics:read(Client) end).

%% @doc The default client's metrics in the Prometheus text format.
-spec prometheus() -> iodata() | {error, not_started}.
prometheus() ->
    emqx_redis_storage_client:with_default(fun prometheus/1).

%% @doc `metrics/1' in the Prometheus text exposition format, for an HTTP
%% handler to serve with content type `text/plain; version=0.0.4'.
-spec prometheus(emqx_redis_storage_client:t()) -> iodata() | {error, {invalid_client, term()}}.
prometheus(Client) ->
    emqx_redis_storage_client:checked(Client, [], fun() -> emqx_redis_storage_metrics:prometheus(Client) end).

%% @doc A client of its own, apart from the application's default one, for a
%% config map of the same shape as `start/1' takes, such as
%% `#{redis => #{servers => <<"127.0.0.1:7000">>}}'. It is closed when the
%% last reference to it is garbage collected.
-spec connect(map()) -> {ok, emqx_redis_storage_client:t()} | {error, term()}.
connect(Config) ->
    case emqx_redis_storage_config:parse(Config) of
        {ok, #{key_prefix := Prefix} = Parsed} -> emqx_redis_storage_client:connect(Parsed, Prefix);
        {error, _} = Error -> Error
    end.

%% @doc One raw command on the default client: `q([<<"PING">>])' gives
%% `{ok, <<"PONG">>}'. Replies: binaries, integers, lists, `undefined' for nil.
%% @doc Writes everything kept under the key prefix to the file `Path'
%% (see emqx_redis_storage_backup and the README, "Backup and restore").
-spec backup(file:filename_all()) -> {ok, #{keys := non_neg_integer(), bytes := non_neg_integer()}} | {error, term()}.
backup(Path) ->
    emqx_redis_storage_client:with_default(fun(Client) -> backup(Client, Path, #{}) end).

-spec backup(emqx_redis_storage_client:t(), file:filename_all(), map()) ->
    {ok, #{keys := non_neg_integer(), bytes := non_neg_integer()}} | {error, term()}.
backup(Client, Path, Opts) ->
    emqx_redis_storage_backup:backup(Client, Path, Opts).

%% @doc Restores a backup into the deployment, under its key prefix.
-spec restore(file:filename_all()) -> {ok, #{keys := non_neg_integer()}} | {error, term()}.
restore(Path) ->
    restore(Path, #{}).

%% @doc `Opts': `mode' (`fail_if_exists' | `replace'), `progress'.
-spec restore(file:filename_all(), map()) -> {ok, #{keys := non_neg_integer()}} | {error, term()}.
restore(Path, Opts) ->
    emqx_redis_storage_client:with_default(fun(Client) -> restore(Client, Path, Opts) end).

-spec restore(emqx_redis_storage_client:t(), file:filename_all(), map()) ->
    {ok, #{keys := non_neg_integer()}} | {error, term()}.
restore(Client, Path, Opts) ->
    emqx_redis_storage_backup:restore(Client, Path, Opts).

-spec q(command()) -> {ok, term()} | {error, term()}.
q(Command) ->
    emqx_redis_storage_client:with_default(fun(Client) -> q(Client, Command) end).

-spec q(emqx_redis_storage_client:t(), command()) -> {ok, term()} | {error, term()}.
q(Client, Command) ->
    emqx_redis_storage_client:checked(Client, [], fun() ->
        case command_args(Command) of
            {ok, [Name | _] = Args} ->
                Upper = ascii_upper(Name),
                Size = lists:sum([byte_size(A) || A <- Args]),
                case is_map_key(Upper, connection_state_commands()) of
                    true -> {error, {unsupported_command, Upper}};
                    false when Size > ?MAX_REQUEST_BYTES -> {error, {too_large, #{size => Size, max => ?MAX_REQUEST_BYTES}}};
                    false -> emqx_redis_storage_client:call(Client, q, [Args])
                end;
            error ->
                {error, {bad_command, Command}}
        end
    end).

%% A non-empty proper list of arguments, each as a binary.
command_args(Command) ->
    case emqx_redis_storage_terms:list_length(Command) of
        {ok, N} when N > 0 ->
            try
                {ok, [to_arg(A) || A <- Command]}
            catch
                error:badarg -> error
            end;
        _ ->
            error
    end.

%% Command names are ASCII, but a name may be any bytes (string:uppercase/1
%% raises on invalid UTF-8): only ASCII letters are folded.
ascii_upper(Name) ->
    <<<<(upper(C))>> || <<C>> <= Name>>.

upper(C) when C >= $a, C =< $z -> C - ($a - $A);
upper(C) -> C.

%% Every call shares multiplexed connections with other callers, so commands
%% that change a connection's state or block it would break theirs.
connection_state_commands() ->
    %% A literal map: one lookup per call, not a comparison with each name.
    #{
        <<"MULTI">> => [], <<"EXEC">> => [], <<"DISCARD">> => [], <<"WATCH">> => [],
        <<"UNWATCH">> => [], <<"SUBSCRIBE">> => [], <<"PSUBSCRIBE">> => [], <<"SSUBSCRIBE">> => [],
        <<"UNSUBSCRIBE">> => [], <<"PUNSUBSCRIBE">> => [], <<"SUNSUBSCRIBE">> => [], <<"MONITOR">> => [],
        <<"SELECT">> => [], <<"QUIT">> => [], <<"RESET">> => [], <<"AUTH">> => [],
        <<"HELLO">> => [], <<"CLIENT">> => [], <<"BLPOP">> => [], <<"BRPOP">> => [],
        <<"BLMOVE">> => [], <<"BRPOPLPUSH">> => [], <<"BLMPOP">> => [], <<"BZPOPMIN">> => [],
        <<"BZPOPMAX">> => [], <<"BZMPOP">> => [], <<"WAIT">> => [], <<"WAITAOF">> => []
    }.

to_arg(Bin) when is_binary(Bin) -> Bin;
to_arg(Int) when is_integer(Int) -> integer_to_binary(Int);
to_arg(Atom) when is_atom(Atom) -> atom_to_binary(Atom);
to_arg(Float) when is_float(Float) -> float_to_binary(Float, [short]);
to_arg(IoData) -> iolist_to_binary(IoData).
