%% @doc Checks and normalises the configuration map.
%%
%% Keys may be atoms or binaries (HOCON gives binaries). A bad value is
%% rejected with `{error, {invalid_config, Field, Expected}}', where `Field' is
%% the dotted path (`<<"redis.connect_timeout">>') and `Expected' says what
%% would be accepted. Secret values are never part of an error.
-module(emqx_redis_storage_config).

-include("emqx_redis_storage.hrl").

-export([parse/1, parse_duration/2, limit/1]).

-type field_type() ::
    {enum, [atom()]}
    | servers
    | {integer, Min :: integer(), Max :: integer()}
    | {duration, ms | s, Max :: pos_integer()}
    | text
    | boolean
    | file
    | key_prefix
    | secret
    | server_name
    | limits
    | {map, schema()}.
-type schema() :: [{atom(), field_type(), Default :: term()}].

-define(NONE, '$none').
%% The default of a field that must be given.
-define(REQUIRED, '$required').
%% Tokens per second, and in a bucket: a bucket's milli-tokens stay exact
%% integers in Redis's Lua (below 2^53).
-define(MAX_TOKENS, 1000000000).
%% Upper bounds that no real deployment reaches: beyond them a value is a
%% mistake, and some (a pool of 2^32 connections) would exhaust the VM.
-define(HOUR_MS, 3600000).
%% The MQTT 5 session and message expiry intervals are four-byte integers.
-define(MQTT_MAX_INTERVAL, 4294967295).
-define(MIB, 1048576).

schema() ->
    [
        {redis, {map, redis_schema()}, #{}},
        {persistence, {map, persistence_schema()}, #{}},
        {nodes, {map, nodes_schema()}, #{}},
        {key_prefix, key_prefix, <<"emqx:">>},
        {route_index, {enum, [local, redis]}, local},
        {route_shards, {integer, 1, 1024}, 16},
        {route_sync_interval, {duration, ms, ?HOUR_MS}, 5000},
        {ds, {map, ds_schema()}, #{}},
        {limiter, {map, limiter_schema()}, #{}}
    ].

%% Rate limits (emqx_redis_limiter).
limiter_schema() ->
    [
        %% What a check gets while Redis does not answer it.
        {on_redis_down, {enum, [allow, deny]}, allow},
        %% Name => limit (limit_schema/0), defined on every client.
        {limiters, limits, #{}}
    ].

limit_schema() ->
    [
        %% Tokens per second.
        {rate, {integer, 1, ?MAX_TOKENS}, ?REQUIRED},
        %% The most tokens a bucket holds.
        {burst, {integer, 1, ?MAX_TOKENS}, ?REQUIRED},
        %% Tokens a node takes ahead for a key and spends locally; 0: none.
        {batch, {integer, 0, ?MAX_TOKENS}, 0}
    ].

%% Durable messages (emqx_redis_ds).
ds_schema() ->
    [
        %% Older messages are trimmed; EMQX's message_retention_period.
        {message_retention, {duration, ms, 365 * 24 * ?HOUR_MS}, 24 * ?HOUR_MS},
        %% Whether a durable filter may start with `+' or `#' (it reads
        %% every stream: all durable traffic).
        {allow_wildcard_root, boolean, false},
        {max_subscriptions_per_client, {integer, 1, 100000}, 100},
        %% Streams per topic first level, over which publishers are spread.
        %% The same on every node of a deployment.
        {stream_shards, {integer, 1, 256}, 4}
    ].

persistence_schema() ->
    [
        {session_ttl, {duration, s, ?MQTT_MAX_INTERVAL}, 86400},
        {message_ttl, {duration, s, ?MQTT_MAX_INTERVAL}, 86400},
        %% The NIF copies a session on the calling scheduler (at most 8 MiB).
        {max_session_size, {integer, 1, ?MAX_REQUEST_BYTES}, ?MIB},
        %% Twice EMQX's default max_packet_size (1 MiB): the largest PUBLISH
        %% EMQX admits by default fits with its topic, headers and encoding.
        %% At most a whole store_messages/2 batch (8 MiB).
        {max_message_size, {integer, 1, ?MAX_REQUEST_BYTES}, 2 * ?MIB},
        {max_queue_len, {integer, 1, 1000000}, 1000}
    ].

%% Node liveness (emqx_redis_nodes).
nodes_schema() ->
    [
        {enable, boolean, true},
        {heartbeat_interval, {duration, ms, ?HOUR_MS}, 1000},
        %% A node whose heartbeat is this old is dead.
        {ttl, {duration, ms, ?HOUR_MS}, 10000},
        %% A reaper that dies mid-way is replaced this long after it started
        %% (or last renewed its lease).
        {reap_lease, {duration, ms, ?HOUR_MS}, 10000}
    ].

redis_schema() ->
    [
        {redis_type, {enum, [single, sentinel, cluster]}, single},
        {servers, servers, <<"127.0.0.1:6379">>},
        {sentinel, text, undefined},
        {sentinel_username, text, undefined},
        {sentinel_password, secret, undefined},
        {database, {integer, 0, 65535}, 0},
        {username, text, undefined},
        {password, secret, undefined},
        {pool_size, {integer, 1, 256}, 4},
        {connect_timeout, {duration, ms, ?HOUR_MS}, 5000},
        {command_timeout, {duration, ms, ?HOUR_MS}, 5000},
        {wait_replicas, {integer, 0, 100}, 0},
        {wait_timeout, {duration, ms, ?HOUR_MS}, 1000},
        %% Requests of the client waiting for Redis at once; beyond it a call
        %% returns {error, overloaded} at once (bounded memory when Redis stalls).
        {max_inflight, {integer, 1, 1000000}, 10000},
        %% A call taking this long or longer emits a slow_call warning.
        {slow_call_threshold, {duration, ms, ?HOUR_MS}, 1000},
        {ssl, {map, ssl_schema()}, #{}}
    ].

ssl_schema() ->
    [
        {enable, boolean, false},
        {cacertfile, file, undefined},
        {certfile, file, undefined},
        {keyfile, file, undefined},
        {verify, {enum, [verify_peer, verify_none]}, verify_peer},
        %% The name the server certificate must carry (and SNI): the host
        %% dialled when unset; `disable': the chain only, no name.
        {server_name_indication, server_name, undefined}
    ].

%% @doc The normalised configuration, with every default filled in.
-spec parse(map()) -> {ok, map()} | {error, {invalid_config, binary(), binary()}}.
parse(Config) ->
    try
        Redis = fun(R) -> expand_url(alias_server_redis(R)) end,
        {ok, check_combinations(check_map(<<>>, schema(), update_redis(Redis, Config)))}
    catch
        throw:{invalid_config, _, _} = Reason -> {error, Reason}
    end.

%% Rules that tie fields together.
check_combinations(#{redis := #{redis_type := sentinel, sentinel := undefined}}) ->
    invalid(<<"redis.sentinel">>, <<"the master name the sentinels watch (redis_type is sentinel)">>);
check_combinations(#{redis := #{redis_type := Type, servers := [{_, 0}]}}) when Type =/= single ->
    invalid(<<"redis.servers">>, <<"host:port entries: a unix socket is for redis_type single">>);
check_combinations(#{redis := #{servers := [{_, 0}], ssl := #{enable := true}}}) ->
    invalid(<<"redis.ssl.enable">>, <<"false with a unix socket">>);
check_combinations(#{redis := #{redis_type := cluster, database := Db}}) when Db =/= 0 ->
    invalid(<<"redis.database">>, <<"0: Redis Cluster has only database 0">>);
check_combinations(#{redis := #{redis_type := cluster, ssl := #{enable := true, server_name_indication := Name}}}) when
    is_binary(Name)
->
    invalid(
        <<"redis.ssl.server_name_indication">>,
        <<"disable, or unset, with redis_type cluster: each node's certificate is checked against "
          "the address the cluster announces for it (see cluster-announce-hostname)">>
    );
check_combinations(#{redis := #{ssl := #{enable := true, certfile := C, keyfile := K}}}) when
    (C =:= undefined) =/= (K =:= undefined)
->
    invalid(<<"redis.ssl.keyfile">>, <<"certfile and keyfile together, or neither">>);
check_combinations(#{nodes := #{heartbeat_interval := Interval, ttl := Ttl}}) when Ttl =< Interval ->
    invalid(<<"nodes.ttl">>, <<"longer than nodes.heartbeat_interval (a node renews its heartbeat several times within ttl)">>);
check_combinations(Config) ->
    Config.

%% The `redis' section changed by `Fun', whether its key is an atom or a binary.
update_redis(Fun, #{redis := Redis} = Config) when is_map(Redis) ->
    Config#{redis := Fun(Redis)};
update_redis(Fun, #{<<"redis">> := Redis} = Config) when is_map(Redis) ->
    Config#{<<"redis">> := Fun(Redis)};
update_redis(_Fun, Config) ->
    Config.

%% `url' stands for the fields it sets (emqx_redis_storage_url); giving one
%% of them as well is a mistake. The ssl settings apply to a rediss URL.
expand_url(Redis) ->
    case lookup(url, Redis) of
        ?NONE ->
            Redis;
        Url ->
            Fields =
                case text_or_none(Url) of
                    ?NONE ->
                        invalid(<<"redis.url">>, <<"a string such as redis://host:6379/0">>);
                    Text ->
                        case emqx_redis_storage_url:parse(Text) of
                            {ok, F} -> F;
                            {error, Why} -> invalid(<<"redis.url">>, Why)
                        end
                end,
            {Tls, Set} = maps:take(tls, Fields),
            [
                invalid(<<"redis.url">>, <<"either the url or ", (name(K))/binary, ", not both">>)
             || K <- maps:keys(Set), lookup(K, Redis) =/= ?NONE
            ],
            ssl_from_url(Tls, maps:merge(maps:without([url, <<"url">>], Redis), Set))
    end.

ssl_from_url(false, Redis) ->
    Redis;
ssl_from_url(true, Redis) ->
    Ssl =
        case lookup(ssl, Redis) of
            ?NONE -> #{};
            Map when is_map(Map) -> Map;
            _ -> invalid(<<"redis.ssl">>, <<"a map">>)
        end,
    case lookup(enable, Ssl) of
        Off when Off =:= false; Off =:= <<"false">>; Off =:= "false" ->
            invalid(<<"redis.url">>, <<"redis:// (a rediss URL turns ssl.enable on)">>);
        _ ->
            (maps:without([ssl, <<"ssl">>], Redis))#{ssl => (maps:without([<<"enable">>], Ssl))#{enable => true}}
    end.

%% EMQX calls the single-server field `server' and the others `servers'.
alias_server_redis(Redis) ->
    case [K || K <- [server, <<"server">>], maps:is_key(K, Redis)] of
        [] ->
            Redis;
        [Key] ->
            case lookup(servers, Redis) of
                ?NONE -> (maps:remove(Key, Redis))#{servers => maps:get(Key, Redis)};
                _ -> invalid(<<"redis.server">>, <<"either server or servers, not both">>)
            end;
        _ ->
            invalid(<<"redis.server">>, <<"given twice">>)
    end.

%% @doc One limiter's definition, `#{rate, burst, batch}', checked as a
%% `limiter.limiters' entry is.
-spec limit(term()) -> {ok, map()} | {error, {invalid_config, binary(), binary()}}.
limit(Limit) ->
    try
        {ok, check_limit(<<>>, Limit)}
    catch
        throw:{invalid_config, _, _} = Reason -> {error, Reason}
    end.

check_limit(Path, Limit) ->
    case check_map(Path, limit_schema(), Limit) of
        #{batch := Batch, burst := Burst} when Batch > Burst ->
            invalid(join(Path, batch), <<"at most burst">>);
        Checked ->
            Checked
    end.

-spec check_map(binary(), schema(), term()) -> map().
check_map(Path, Schema, Map) when is_map(Map) ->
    Known = [Name || {Name, _, _} <- Schema],
    [
        invalid(join(Path, Key), <<"a known field (", (names(Known))/binary, ")">>)
     || Key <- maps:keys(Map), not lists:member(to_atom_key(Key, Known), Known)
    ],
    maps:from_list([
        {Name, check_field(join(Path, Name), Type, lookup(Name, Map), Default)}
     || {Name, Type, Default} <- Schema
    ]);
check_map(Path, _Schema, _Other) ->
    invalid(Path, <<"a map">>).

check_field(Path, {map, Schema}, ?NONE, Default) ->
    check_map(Path, Schema, Default);
check_field(Path, Type, ?NONE, ?REQUIRED) ->
    %% What the field takes, from the check of a missing value.
    try check(Path, Type, ?NONE) of
        _ -> invalid(Path, <<"required">>)
    catch
        throw:{invalid_config, Path, Expected} -> invalid(Path, <<"required: ", Expected/binary>>)
    end;
check_field(_Path, _Type, ?NONE, Default) ->
    Default;
check_field(_Path, _Type, undefined, undefined) ->
    undefined;
check_field(Path, Type, Value, _Default) ->
    check(Path, Type, Value).

-spec check(binary(), field_type(), term()) -> term().
check(Path, {enum, Allowed}, Value) ->
    case [A || A <- Allowed, A =:= Value orelse atom_to_binary(A) =:= text_or_none(Value)] of
        [Atom] -> Atom;
        [] -> invalid(Path, <<"one of: ", (names(Allowed))/binary>>)
    end;
check(Path, servers, Value) ->
    parse_servers(Path, Value);
check(_Path, {integer, Min, Max}, N) when is_integer(N), N >= Min, N =< Max ->
    N;
check(Path, {integer, Min, Max}, _) ->
    invalid(Path, iolist_to_binary(io_lib:format("an integer from ~b to ~b", [Min, Max])));
check(Path, {duration, Unit, Max}, Value) ->
    case parse_duration(Value, Unit) of
        {ok, N} when N > 0, N =< Max -> N;
        _ -> invalid(Path, duration_expected(Unit, Max))
    end;
check(Path, text, Value) ->
    case text_or_none(Value) of
        ?NONE -> invalid(Path, <<"a string">>);
        Bin -> Bin
    end;
check(_Path, boolean, Bool) when is_boolean(Bool) ->
    Bool;
check(Path, boolean, Value) ->
    case text_or_none(Value) of
        <<"true">> -> true;
        <<"false">> -> false;
        _ -> invalid(Path, <<"true or false">>)
    end;
check(Path, file, Value) ->
    case text_or_none(Value) of
        ?NONE ->
            invalid(Path, <<"a file name">>);
        Name ->
            case filelib:is_regular(Name) of
                true -> Name;
                false -> invalid(Path, <<"an existing file: ", Name/binary, " is not one">>)
            end
    end;
check(Path, key_prefix, Value) ->
    case text_or_none(Value) of
        Bin when is_binary(Bin), byte_size(Bin) =< 64 ->
            case binary:match(Bin, [<<"{">>, <<"}">>]) of
                nomatch -> Bin;
                _ -> invalid(Path, <<"a string without { or } (they would break hash tags)">>)
            end;
        _ ->
            invalid(Path, <<"a string of at most 64 bytes">>)
    end;
check(_Path, secret, Fun) when is_function(Fun, 0) ->
    Fun;
check(Path, secret, Value) ->
    case text_or_none(Value) of
        ?NONE -> invalid(Path, <<"a string, or a fun returning it">>);
        Bin -> secret(Bin)
    end;
check(Path, server_name, Value) ->
    case text_or_none(Value) of
        <<"disable">> -> disable;
        Name when is_binary(Name), byte_size(Name) > 0, byte_size(Name) =< 253 ->
            case re:run(Name, "^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$") of
                {match, _} -> Name;
                nomatch -> invalid(Path, <<"a DNS name, or disable">>)
            end;
        _ ->
            invalid(Path, <<"a DNS name, or disable">>)
    end;
check(Path, limits, Limits) when is_map(Limits) ->
    maps:from_list([
        {limiter_name(Path, Name), check_limit(join(Path, Name), Limit)}
     || {Name, Limit} <- maps:to_list(Limits)
    ]);
check(Path, limits, _Value) ->
    invalid(Path, <<"a map of limiter names to #{rate, burst, batch}">>);
check(Path, {map, Schema}, Value) ->
    check_map(Path, Schema, Value).

limiter_name(Path, Name) ->
    case text_or_none(Name) of
        Bin when is_binary(Bin), byte_size(Bin) > 0, byte_size(Bin) =< 255 -> Bin;
        _ -> invalid(join(Path, Name), <<"a name of 1 to 255 bytes">>)
    end.

%% Kept behind a fun so the value does not show in crash reports or logs.
secret(Bin) -> fun() -> Bin end.

duration_expected(Unit, Max) ->
    Forms =
        case Unit of
            ms -> <<"milliseconds as an integer, or a string such as \"500ms\", \"5s\", \"1m\"">>;
            s -> <<"seconds as an integer, or a string such as \"30s\", \"24h\", \"7d\"">>
        end,
    iolist_to_binary(io_lib:format("a duration from 1 to ~b ~s: ~s", [Max, Unit, Forms])).

%% @doc A duration in `Unit': an integer (already in `Unit') or a string of
%% one or more `<number><unit>' parts, e.g. `"1h30m"'; units ms, s, m, h, d.
-spec parse_duration(term(), ms | s) -> {ok, non_neg_integer()} | error.
parse_duration(N, _Unit) when is_integer(N), N >= 0 ->
    {ok, N};
parse_duration(Value, Unit) ->
    case text_or_none(Value) of
        ?NONE ->
            error;
        Bin ->
            case re:run(Bin, <<"^(?:[0-9]+(?:ms|s|m|h|d))+$">>, [{capture, none}]) of
                match ->
                    Parts = re:run(Bin, <<"([0-9]+)(ms|s|m|h|d)">>, [global, {capture, all_but_first, binary}]),
                    {match, Pairs} = Parts,
                    Ms = lists:sum([binary_to_integer(N) * unit_ms(U) || [N, U] <- Pairs]),
                    to_unit(Ms, Unit);
                nomatch ->
                    error
            end
    end.

to_unit(Ms, ms) -> {ok, Ms};
to_unit(Ms, s) when Ms rem 1000 =:= 0 -> {ok, Ms div 1000};
to_unit(_Ms, s) -> error.

unit_ms(<<"ms">>) -> 1;
unit_ms(<<"s">>) -> 1000;
unit_ms(<<"m">>) -> 60000;
unit_ms(<<"h">>) -> 3600000;
unit_ms(<<"d">>) -> 86400000.

%% "host[:port],host[:port]" (or a list of such strings) into [{Host, Port}].
parse_servers(Path, Value) ->
    Entries =
        case is_list(Value) andalso Value =/= [] andalso lists:all(fun(E) -> not is_integer(E) end, Value) of
            true ->
                %% a list of "host[:port]" entries
                [text_or_none(V) || V <- Value];
            false ->
                case text_or_none(Value) of
                    ?NONE -> [?NONE];
                    Bin -> binary:split(Bin, <<",">>, [global, trim_all])
                end
        end,
    case Entries of
        [] -> invalid(Path, servers_expected());
        _ ->
            Servers = [parse_server(Path, E) || E <- Entries],
            length(Servers) > 1 andalso lists:keymember(0, 2, Servers) andalso
                invalid(Path, <<"one unix socket, alone">>),
            Servers
    end.

parse_server(Path, ?NONE) ->
    invalid(Path, servers_expected());
parse_server(_Path, <<"/", _/binary>> = Socket) ->
    {Socket, 0};
parse_server(Path, Entry) ->
    case emqx_redis_storage_url:host_port(string:trim(Entry), <<"6379">>) of
        {ok, HostPort} -> HostPort;
        error -> invalid(Path, servers_expected())
    end.

servers_expected() ->
    <<"\"host[:port]\" or \"host[:port],host[:port],...\" with ports 1..65535 (an IPv6 address in brackets: "
      "\"[::1]:6379\"), or a unix socket's absolute path">>.

text_or_none(Bin) when is_binary(Bin) ->
    Bin;
text_or_none(Atom) when is_atom(Atom), Atom =/= undefined ->
    atom_to_binary(Atom);
text_or_none(List) when is_list(List) ->
    try unicode:characters_to_binary(List) of
        Bin when is_binary(Bin) -> Bin;
        _ -> ?NONE
    catch
        _:_ -> ?NONE
    end;
text_or_none(_) ->
    ?NONE.

lookup(Name, Map) ->
    case Map of
        #{Name := V} -> V;
        _ -> maps:get(atom_to_binary(Name), Map, ?NONE)
    end.

to_atom_key(Key, _Known) when is_atom(Key) -> Key;
to_atom_key(Key, Known) when is_binary(Key) ->
    case [K || K <- Known, atom_to_binary(K) =:= Key] of
        [K] -> K;
        [] -> Key
    end;
to_atom_key(Key, _Known) ->
    Key.

join(<<>>, Name) -> name(Name);
join(Path, Name) -> <<Path/binary, ".", (name(Name))/binary>>.

name(Name) when is_atom(Name) -> atom_to_binary(Name);
name(Name) when is_binary(Name) -> Name;
name(Other) -> iolist_to_binary(io_lib:format("~0p", [Other])).

names(Atoms) -> iolist_to_binary(lists:join(", ", [atom_to_binary(A) || A <- Atoms])).

-spec invalid(binary(), binary()) -> no_return().
invalid(Path, Expected) ->
    throw({invalid_config, Path, Expected}).
