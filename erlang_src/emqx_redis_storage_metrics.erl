%% @doc A client's metrics: as a map a person can read (`read/1'), and as
%% the Prometheus text exposition format (`prometheus/1').
%%
%% The counters live in the NIF, one set per client, updated with atomics on
%% every call; reading them costs microseconds and touches no Redis.
%% `definitions/0' is the one place that names each Prometheus metric.
-module(emqx_redis_storage_metrics).

-export([read/1, prometheus/1]).

-define(PREFIX, "emqx_redis_storage_").

%% @doc `#{server, operations => #{Op => #{calls, errors => #{Kind => N},
%% in_flight, latency => #{buckets => [{UpperBoundUs | infinity, Count}],
%% sum_us, count}}}, connections, reconnects, sentinel_failovers,
%% cluster_topology_refreshes, route_index_resyncs, route_index_routes,
%% requests, bytes_sent, bytes_received, group_commits, grouped_calls,
%% limiters => #{Name => #{checks, limited, errors, local}}}'. Buckets count
%% their own calls (not cumulative). An operation appears after its first
%% call, a limiter once it is defined.
-spec read(emqx_redis_storage_client:t()) -> map().
read(Client) ->
    #{servers := Servers} = emqx_redis_storage_client:info(Client),
    Counters = emqx_redis_storage_nif:client_metrics(emqx_redis_storage_client:res(Client)),
    Counters#{server => iolist_to_binary(lists:join(<<",">>, Servers))}.

%% @doc The metrics of `read/1' in the Prometheus text format (version
%% 0.0.4): every series carries the label `server' (the client's servers as
%% configured), operation metrics also `operation', errors also `reason',
%% limiter metrics `limiter' (its name).
-spec prometheus(emqx_redis_storage_client:t()) -> iodata().
prometheus(Client) ->
    Metrics = read(Client),
    [family(Definition, Metrics) || Definition <- definitions()].

%% {Name after the prefix, type, help, where the value is}: `{operation,
%% Field}' for one series per operation, `{limiter, Field}' per limiter,
%% `{client, Field}' for one per client.
definitions() ->
    [
        {"calls_total", counter, "Calls answered, with a value or an error.", {operation, calls}},
        {"call_errors_total", counter, "Calls answered with an error, by kind of error.",
            {operation, errors}},
        {"calls_in_flight", gauge, "Calls admitted and not yet answered.", {operation, in_flight}},
        {"call_duration_seconds", histogram,
            "Time from a call's admission to its answer, overloaded refusals included.",
            {operation, latency}},
        {"connections", gauge,
            "Connections open over the library's own transport (pool, route events, sentinels); "
            "not the node connections of a Redis Cluster.",
            {client, connections}},
        {"reconnects_total", counter, "Pool connections dialled again after they broke.",
            {client, reconnects}},
        {"sentinel_failovers_total", counter, "New Sentinel masters the client moved to.",
            {client, sentinel_failovers}},
        {"cluster_topology_refreshes_total", counter,
            "New Redis Cluster connections made because the cluster named other masters.",
            {client, cluster_topology_refreshes}},
        {"route_index_resyncs_total", counter,
            "Full loads of the local route index from Redis, the first one included.",
            {client, route_index_resyncs}},
        {"route_index_routes", gauge, "Routes in the local route index.", {client, route_index_routes}},
        {"requests_total", counter,
            "Commands, pipelines and scripts handed to a connection, resends included.",
            {client, requests}},
        {"sent_bytes_total", counter, "Bytes written to Redis over the library's own transport.",
            {client, bytes_sent}},
        {"received_bytes_total", counter, "Bytes read from Redis over the library's own transport.",
            {client, bytes_received}},
        {"group_commits_total", counter,
            "Script calls that carried the calls of several callers (group commit).",
            {client, group_commits}},
        {"grouped_calls_total", counter, "Calls carried by those script calls.",
            {client, grouped_calls}},
        {"limiter_checks_total", counter, "Rate limit checks answered, bad arguments aside.",
            {limiter, checks}},
        {"limiter_limited_total", counter, "Rate limit checks the bucket refused.", {limiter, limited}},
        {"limiter_errors_total", counter,
            "Rate limit checks Redis did not answer, decided by limiter.on_redis_down.",
            {limiter, errors}},
        {"limiter_local_checks_total", counter,
            "Rate limit checks answered from the node's local batch, without Redis.",
            {limiter, local}}
    ].

%% A metric's HELP and TYPE lines and its samples; nothing if it has none.
family({Name, Type, Help, Source}, #{server := Server} = Metrics) ->
    FullName = [?PREFIX, Name],
    case samples(FullName, Source, [{server, Server}], Metrics) of
        [] ->
            [];
        Samples ->
            [
                ["# HELP ", FullName, " ", Help, "\n"],
                ["# TYPE ", FullName, " ", atom_to_list(Type), "\n"]
                | Samples
            ]
    end.

samples(FullName, {client, Field}, Labels, Metrics) ->
    case maps:get(Field, Metrics) of
        N when is_integer(N) -> [sample(FullName, Labels, N)];
        undefined -> []
    end;
samples(FullName, {limiter, Field}, Labels, #{limiters := Limiters}) ->
    [
        sample(FullName, [{limiter, Name} | Labels], maps:get(Field, Counts))
     || {Name, Counts} <- lists:sort(maps:to_list(Limiters))
    ];
samples(FullName, {operation, Field}, Labels, #{operations := Operations}) ->
    [
        operation_samples(FullName, Field, [{operation, Op} | Labels], maps:get(Field, OpMetrics))
     || {Op, OpMetrics} <- lists:sort(maps:to_list(Operations))
    ].

operation_samples(FullName, errors, Labels, Errors) ->
    [sample(FullName, Labels ++ [{reason, Kind}], N) || {Kind, N} <- lists:sort(maps:to_list(Errors))];
operation_samples(FullName, latency, Labels, #{buckets := Buckets, sum_us := SumUs, count := Count}) ->
    Bucket = [FullName, "_bucket"],
    {Cumulative, _} = lists:mapfoldl(
        fun({Bound, N}, Below) ->
            {sample(Bucket, Labels ++ [{le, le(Bound)}], Below + N), Below + N}
        end,
        0,
        Buckets
    ),
    [
        Cumulative,
        sample([FullName, "_sum"], Labels, seconds(SumUs)),
        sample([FullName, "_count"], Labels, Count)
    ];
operation_samples(FullName, _Field, Labels, N) ->
    [sample(FullName, Labels, N)].

sample(Name, Labels, Value) ->
    [Name, labels(Labels), " ", value(Value), "\n"].

labels(Labels) ->
    ["{", lists:join(",", [[atom_to_list(K), "=\"", escape(label_value(V)), "\""] || {K, V} <- Labels]), "}"].

label_value(V) when is_atom(V) -> atom_to_binary(V);
label_value(V) -> V.

%% The text format escapes backslash, double quote and line feed in label values.
escape(Value) ->
    Replacements = [{<<"\\">>, <<"\\\\">>}, {<<"\"">>, <<"\\\"">>}, {<<"\n">>, <<"\\n">>}],
    lists:foldl(
        fun({From, To}, Acc) -> binary:replace(Acc, From, To, [global]) end,
        iolist_to_binary(Value),
        Replacements
    ).

le(infinity) -> "+Inf";
le(UpperUs) -> seconds(UpperUs).

value(N) when is_integer(N) -> integer_to_list(N);
value(Text) -> Text.

%% Microseconds as exact decimal seconds ("0.00025", "2.5", "10"): no float rounding.
seconds(Us) ->
    Whole = integer_to_list(Us div 1000000),
    case string:trim(io_lib:format("~6..0b", [Us rem 1000000]), trailing, "0") of
        "" -> Whole;
        Fraction -> [Whole, ".", Fraction]
    end.
