%% Fuzzing of the public API: every exported function of every public module,
%% every arity, called with random terms and with valid-looking values, against
%% a real redis-server. Each call must answer in its documented shape (no
%% exception, never `{error, {internal, _}}'), leave the caller's mailbox
%% empty, and leave the application and Redis alive.
%%
%% `make fuzz N=1000000 SEED=123' runs only this suite with that many calls;
%% the output names the seed and the command that repeats a run.
-module(emqx_redis_fuzz_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include_lib("proper/include/proper.hrl").

-define(S, emqx_redis_session).
-define(M, emqx_redis_message).
-define(R, emqx_redis_router).
-define(G, emqx_redis_registry).
-define(ST, emqx_redis_storage).
-define(DS, emqx_redis_ds).

-define(PUBLIC, [
    emqx_redis_storage, emqx_redis_session, emqx_redis_message,
    emqx_redis_router, emqx_redis_registry, emqx_redis_topic, emqx_redis_storage_cli, emqx_redis_ds,
    emqx_redis_nodes, emqx_redis_limiter
]).
-define(DEFAULT_CALLS, 20000).
-define(MAX_FENCE, (1 bsl 53) - 1).
-define(MAX_LEASE_MS, 365 * 24 * 3600 * 1000).
-define(MAX_TTL, 4294967295).

%% A random q/1 command must not be able to stop, wipe, reconfigure or
%% redirect the test's Redis (REPLICAOF and MIGRATE would dial other servers).
-define(DISABLED_COMMANDS, [
    "SHUTDOWN", "FLUSHALL", "FLUSHDB", "DEBUG", "CONFIG", "REPLICAOF", "SLAVEOF",
    "MIGRATE", "MODULE", "ACL", "SAVE", "BGSAVE", "BGREWRITEAOF", "FAILOVER",
    "SWAPDB", "SYNC", "PSYNC", "MONITOR"
]).

all() ->
    [
        every_public_function_is_fuzzed,
        known_defects_are_plain_errors,
        non_clients_are_refused,
        integer_bounds,
        largest_configured_limits_work,
        fuzz_every_public_function,
        fuzz_from_many_processes,
        fuzz_with_application_stopped
    ].

init_per_suite(Config) ->
    Redis = redis_test_server:start(#{conf => [["rename-command ", C, " \"\""] || C <- ?DISABLED_COMMANDS]}),
    Addr = redis_test_server:address(Redis),
    ok = filelib:ensure_path(filename:join(redis_test_server:tmp_root(), "fuzz-backups")),
    ok = ?ST:start(app_config(Addr)),
    %% One seed for both fuzz cases, so the printed rerun repeats them both.
    [{redis, Redis}, {addr, Addr}, {seed, seed()} | Config].

end_per_suite(Config) ->
    ?ST:stop(),
    redis_test_server:stop(?config(redis, Config)).

init_per_testcase(Case, Config) when Case =:= fuzz_every_public_function; Case =:= fuzz_from_many_processes ->
    %% Well above the default run's time; a large N gets time in proportion.
    ct:timetrap({seconds, 300 + calls() div 50}),
    Config;
init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    ok.

app_config(Addr) ->
    #{
        redis => #{servers => Addr, command_timeout => 2000},
        persistence => #{max_session_size => 65536, max_message_size => 65536, max_queue_len => 100}
    }.

%%--------------------------------------------------------------------
%% Cases

%% A new export must get a signature here, so it is fuzzed too.
every_public_function_is_fuzzed(_Config) ->
    Exported = lists:sort([
        {M, F, A}
     || M <- ?PUBLIC, {F, A} <- M:module_info(exports), F =/= module_info
    ]),
    ?assertEqual(Exported, lists:sort(maps:keys(signatures()))).

known_defects_are_plain_errors(_Config) ->
    Routes = [{<<"a/b">>, node()} | 42],
    ?assertEqual({error, {invalid_route, Routes}}, ?R:add_routes(Routes)),
    ?assertEqual({error, {bad_command, [<<"PING">> | x]}}, ?ST:q([<<"PING">> | x])),
    ?assertEqual({error, {bad_command, [<<"PING">> | <<"x">>]}}, ?ST:q([<<"PING">> | <<"x">>])),
    ?assertEqual(
        {error, {invalid_fence, -9223372036854775809}}, ?S:release_lease(<<"c">>, -9223372036854775809)
    ),
    ?assertEqual({error, {invalid_lease_ms, 1 bsl 64}}, ?S:acquire_lease(<<"c">>, <<"o">>, 1 bsl 64)),
    ?assertEqual({error, {invalid_lease_ms, 1 bsl 64}}, ?S:renew_lease(<<"c">>, 1, 1 bsl 64)),
    ?assertEqual({error, {invalid_fence, 1 bsl 64}}, ?S:renew_lease(<<"c">>, 1 bsl 64, 1000)),
    ?assertMatch({error, {invalid_page, #{offset := 1 bsl 64}}}, ?S:list_sessions(10, 1 bsl 64)),
    ?assertEqual({error, {invalid_option, {ttl, 1 bsl 64}}}, ?S:save_session(<<"c">>, t, #{ttl => 1 bsl 64})),
    ?assertEqual(
        {error, {invalid_option, {fence, -(1 bsl 100)}}}, ?S:save_session(<<"c">>, t, #{fence => -(1 bsl 100)})
    ),
    ?assertEqual({error, {invalid_option, {fence, nil}}}, ?S:save_session(<<"c">>, t, #{fence => nil})),
    %% Command names are any bytes.
    ?assertMatch({error, _}, ?ST:q([<<255, 254>>])),
    ?assertEqual({ok, <<"PONG">>}, ?ST:q([<<"PING">>])),
    ?assertMatch({error, {unsupported_command, <<"MULTI">>}}, ?ST:q([<<"mUlTi">>])).

%% Every form that takes a client, given something else.
non_clients_are_refused(_Config) ->
    NotClients = [not_a_client, {client, make_ref()}, #{}, self(), <<"c">>],
    lists:foreach(
        fun({{M, F, A}, Kinds}) ->
            [
                ?assertEqual(
                    expected_for_non_client(F, NotClient),
                    apply(M, F, [NotClient | [valid_example(K) || K <- tl(Kinds)]]),
                    {M, F, A}
                )
             || NotClient <- NotClients
            ]
        end,
        [{MFA, Kinds} || {MFA, [client | _] = Kinds} <- maps:to_list(signatures())]
    ).

expected_for_non_client(has_route, _NotClient) -> false;
expected_for_non_client(_F, NotClient) -> {error, {invalid_client, NotClient}}.

%% The domain bounds of integer arguments, at and just beyond each edge.
integer_bounds(_Config) ->
    Id = <<"bounds-", (integer_to_binary(erlang:unique_integer([positive])))/binary>>,
    {ok, Fence} = ?S:acquire_lease(Id, <<"o">>, ?MAX_LEASE_MS),
    ?assert(Fence >= 1 andalso Fence =< ?MAX_FENCE),
    ?assertEqual({error, {invalid_lease_ms, ?MAX_LEASE_MS + 1}}, ?S:acquire_lease(Id, <<"o">>, ?MAX_LEASE_MS + 1)),
    ?assertEqual({error, {invalid_lease_ms, 0}}, ?S:acquire_lease(Id, <<"o">>, 0)),
    ?assertEqual(ok, ?S:renew_lease(Id, Fence, ?MAX_LEASE_MS)),
    ?assertEqual({error, {held_by, <<"o">>}}, ?S:renew_lease(Id, ?MAX_FENCE, 1000)),
    ?assertEqual({error, {invalid_fence, ?MAX_FENCE + 1}}, ?S:renew_lease(Id, ?MAX_FENCE + 1, 1000)),
    ?assertEqual({error, {invalid_fence, -1}}, ?S:release_lease(Id, -1)),
    ?assertEqual({error, {held_by, <<"o">>}}, ?S:acquire_lease(Id, <<"p">>, 1000)),
    ?assertEqual(ok, ?S:save_session(Id, v, #{ttl => ?MAX_TTL, fence => Fence})),
    ?assertEqual({error, stale_fence}, ?S:save_session(Id, v, #{fence => 0})),
    ?assertEqual({error, {invalid_option, {ttl, ?MAX_TTL + 1}}}, ?S:save_session(Id, v, #{ttl => ?MAX_TTL + 1})),
    ?assertEqual({error, {invalid_option, {fence, ?MAX_FENCE + 1}}}, ?S:save_session(Id, v, #{fence => ?MAX_FENCE + 1})),
    ?assertEqual(ok, ?S:release_lease(Id, Fence)),
    ?assertMatch({ok, _}, ?S:list_sessions(10000, 1 bsl 32)),
    ?assertMatch({error, {invalid_page, _}}, ?S:list_sessions(10000, (1 bsl 32) + 1)),
    ?assertMatch({error, {invalid_page, _}}, ?S:list_sessions(10001, 0)),
    ?assertEqual(ok, ?S:delete_session(Id)).

%% A client made with the largest TTLs and queue length the config takes works.
largest_configured_limits_work(Config) ->
    {ok, Client} = ?ST:connect(#{
        redis => #{servers => ?config(addr, Config)},
        key_prefix => <<"largest:">>,
        persistence => #{session_ttl => ?MAX_TTL, message_ttl => ?MAX_TTL, max_queue_len => 1000000}
    }),
    ?assertEqual(ok, ?S:save_session(Client, <<"h">>, v, #{})),
    {ok, #{updated_at := Updated, expires_at := Expires}} = ?S:session_info(Client, <<"h">>),
    ?assertEqual(?MAX_TTL * 1000, Expires - Updated),
    ?assertMatch({ok, _}, ?S:acquire_lease(Client, <<"h">>, node(), 1000)),
    ?assertEqual(ok, ?M:store_message(Client, <<"h">>, #{id => <<"m">>})),
    ?assertMatch({ok, [#{id := <<"m">>}]}, ?M:get_messages(Client, <<"h">>, 0, 10)).

fuzz_every_public_function(Config) ->
    run_fuzz(Config, calls(), started).

%% Eight processes at once on the same clients and keys (a quarter of the
%% calls): every reply, a late one included, reaches only its own caller.
fuzz_from_many_processes(Config) ->
    Seed = ?config(seed, Config),
    Workers = 8,
    Calls = max(1000, calls() div 4) div Workers,
    Ctx = (context(Config, started))#{calls => Calls, progress => none},
    say("fuzz (~b processes at once): ~b calls each, seeds ~b + 1..~b~nrerun: ~s", [Workers, Calls, Seed, Workers, rerun(Seed)]),
    Passed = in_parallel([fun() -> quickcheck(Ctx, Seed + I) end || I <- lists:seq(1, Workers)]),
    ?assertEqual(lists:duplicate(Workers, true), Passed, {seed, Seed, rerun, rerun(Seed)}).

in_parallel(Funs) ->
    Parent = self(),
    Refs = [
        begin
            Ref = make_ref(),
            spawn_link(fun() -> Parent ! {Ref, Fun()} end),
            Ref
        end
     || Fun <- Funs
    ],
    [
        receive
            {Ref, Result} -> Result
        end
     || Ref <- Refs
    ].

%% With the application stopped, the default-client forms answer
%% `{error, not_started}' and the others work as before; stop/0 is idempotent.
fuzz_with_application_stopped(Config) ->
    ok = ?ST:stop(),
    ok = ?ST:stop(),
    ?assertEqual(#{started => false, connected => false, healthy => false}, ?ST:status()),
    ?assertEqual({error, not_started}, ?S:load_session(<<"c">>)),
    try
        run_fuzz(Config, max(1000, calls() div 20), stopped)
    after
        ok = ?ST:start(app_config(?config(addr, Config)))
    end.

%%--------------------------------------------------------------------
%% The run

calls() ->
    case os:getenv("FUZZ_N") of
        false -> ?DEFAULT_CALLS;
        "" -> ?DEFAULT_CALLS;
        N -> list_to_integer(N)
    end.

seed() ->
    case os:getenv("FUZZ_SEED") of
        S when S =:= false; S =:= "" -> erlang:phash2({erlang:system_time(), make_ref()});
        S -> list_to_integer(S)
    end.

run_fuzz(Config, Calls, AppState) ->
    Seed = ?config(seed, Config),
    Ctx = (context(Config, AppState))#{calls => Calls, progress => max(1, Calls div 10)},
    say("fuzz (application ~p): ~b calls, seed ~b~nrerun: ~s", [AppState, Calls, Seed, rerun(Seed)]),
    [erase(Key) || {{Kind, _} = Key, _} <- get(), Kind =:= outcome orelse Kind =:= micros],
    Started = erlang:monotonic_time(millisecond),
    Passed = quickcheck(Ctx, Seed),
    Seconds = (erlang:monotonic_time(millisecond) - Started) / 1000,
    say(
        "fuzz (application ~p): ~b calls, seed ~b, ~.1f s, ~s~noutcomes: ~p~nmost time: ~p",
        [AppState, Calls, Seed, Seconds, verdict(Passed), outcomes(), slowest()]
    ),
    ?assert(Passed, {seed, Seed, rerun, rerun(Seed)}),
    ?assertEqual({ok, <<"PONG">>}, redis_ping(Ctx)).

rerun(Seed) ->
    lists:flatten(io_lib:format("make fuzz N=~b SEED=~b", [calls(), Seed])).

quickcheck(#{calls := Calls} = Ctx, Seed) ->
    %% PropEr draws from the process's rand state if there is one.
    _ = rand:seed(exsplus, Seed),
    %% Small sizes: PropEr's cost grows fast with them, and the long and deep
    %% values that matter are explicit in the generators.
    Options = [{numtests, Calls}, {on_output, fun print_unless_dot/2}, {max_shrinks, 200}, {max_size, 10}],
    proper:quickcheck(prop_calls(Ctx), Options).

%% To the console as well as the test log: rebar3 ct shows no ct:pal output,
%% and the seed must be at hand when a run fails.
say(Format, Args) ->
    ct:log(Format, Args),
    io:format(user, "~n" ++ Format ++ "~n", Args).

%% A dot per call is noise; progress is reported every tenth of the run.
print_unless_dot(".", []) -> ok;
print_unless_dot(Format, Args) -> io:format(user, Format, Args).

verdict(true) -> "passed";
verdict(_) -> "FAILED".

%% What the generators and checks need: clients, the Redis address, and
%% whether the application runs. The client with a 1 ms command timeout
%% makes calls time out while their replies are on the way: a late reply
%% must never reach the caller's mailbox.
context(Config, AppState) ->
    Addr = ?config(addr, Config),
    Variants = [
        #{},
        #{route_index => redis},
        #{key_prefix => <<"fz2:">>, persistence => #{max_queue_len => 3}},
        #{command_timeout => 1}
    ],
    Clients = [connect(client_config(Addr, Opts), 100) || Opts <- Variants],
    #{addr => Addr, clients => Clients, app => AppState}.

%% The 1 ms client's connect pings within 1 ms too: on a loaded machine that
%% may take a few tries.
connect(Config, Tries) ->
    case ?ST:connect(Config) of
        {ok, Client} ->
            Client;
        {error, _} = Error when Tries =< 1 ->
            ct:fail({connect, Config, Error});
        {error, _} ->
            timer:sleep(20),
            connect(Config, Tries - 1)
    end.

client_config(Addr, #{command_timeout := Ms}) -> #{redis => #{servers => Addr, command_timeout => Ms}};
client_config(Addr, Opts) -> Opts#{redis => #{servers => Addr}}.

redis_ping(#{clients := [Client | _]}) ->
    ?ST:q(Client, [<<"PING">>]).

prop_calls(Ctx) ->
    ?FORALL(
        {M, F, Args},
        gen_call(Ctx),
        begin
            T0 = erlang:monotonic_time(microsecond),
            Reply = call(Ctx, M, F, Args),
            Problems = problems(Ctx, M, F, Args, Reply),
            count(Ctx, Reply, {M, F, length(Args)}, erlang:monotonic_time(microsecond) - T0),
            ?WHENFAIL(
                say("failed call: ~p:~p(~P)~nreply: ~P~nproblems: ~p", [M, F, Args, 30, Reply, 30, Problems]),
                Problems =:= []
            )
        end
    ).

%% PropEr 1.2 cannot report an exception from a property (it calls the
%% removed erlang:get_stacktrace/0), so every one becomes a reply here.
call(Ctx, M, F, Args) ->
    try
        case config_is_safe(Ctx, M, F, Args) of
            true -> {reply, apply(M, F, Args)};
            false -> {not_called, unsafe_config}
        end
    catch
        Class:Reason:Stack -> {raised, Class, Reason, Stack}
    end.

%% The guarantee that no call dials a Redis the test did not start: a config
%% that parses names only the test's Redis (the default is 127.0.0.1:6379),
%% checked before the call.
config_is_safe(#{addr := Addr}, emqx_redis_storage, F, [Config]) when F =:= connect; F =:= start ->
    [Host, Port] = binary:split(Addr, <<":">>),
    case emqx_redis_storage_config:parse(Config) of
        {ok, #{redis := #{servers := Servers}}} -> lists:usort(Servers) =:= [{Host, binary_to_integer(Port)}];
        {error, _} -> true
    end;
config_is_safe(_Ctx, _M, _F, _Args) ->
    true.

problems(Ctx, M, F, Args, Reply) ->
    Checks = [
        {shape, reply_ok(Ctx, {M, F, length(Args)}, Reply)},
        {mailbox, mailbox_empty()},
        {application, application_alive(Ctx)}
    ],
    [{What, Detail} || {What, Detail} <- Checks, Detail =/= ok].

reply_ok(_Ctx, _MFA, {raised, Class, Reason, Stack}) ->
    {raised, Class, Reason, Stack};
reply_ok(_Ctx, _MFA, {not_called, Why}) ->
    Why;
reply_ok(Ctx, MFA, {reply, Reply}) ->
    case valid_reply(Ctx, shape(MFA), Reply) of
        true -> ok;
        false -> {unexpected, Reply}
    end.

shape({emqx_redis_topic, match, 2}) -> boolean;
shape({emqx_redis_topic, validate, 2}) -> validation;
shape({emqx_redis_router, has_route, _}) -> boolean;
shape({emqx_redis_router, index_ready, 1}) -> boolean_or_error;
shape({emqx_redis_ds, filter_matches, 2}) -> boolean_or_error;
shape({emqx_redis_ds, next, _}) -> batch;
shape({emqx_redis_storage, status, 0}) -> status;
shape({emqx_redis_storage, status, 1}) -> client_status;
shape({emqx_redis_storage_cli, cmd, 1}) -> printed;
shape({emqx_redis_storage, metrics, _}) -> metrics;
shape({emqx_redis_storage, prometheus, _}) -> prometheus;
shape({emqx_redis_nodes, membership, 0}) -> membership;
shape(_MFA) -> result.

valid_reply(_Ctx, boolean, Reply) -> is_boolean(Reply);
valid_reply(_Ctx, printed, Reply) -> Reply =:= ok;
valid_reply(_Ctx, batch, {ok, {emqx_redis_ds_iterator, _, _, _, _, _, _, _}, Msgs}) -> is_list(Msgs);
valid_reply(Ctx, batch, Reply) -> valid_reply(Ctx, result, Reply);
valid_reply(_Ctx, validation, Reply) -> Reply =:= ok orelse is_tuple_of(error, Reply, fun is_atom/1);
valid_reply(Ctx, boolean_or_error, Reply) ->
    is_boolean(Reply) orelse Reply =:= not_ready orelse valid_reply(Ctx, result, Reply);
valid_reply(#{app := App}, status, #{started := Started, connected := Connected}) ->
    Started =:= (App =:= started) andalso is_boolean(Connected);
valid_reply(_Ctx, status, _Reply) -> false;
valid_reply(_Ctx, client_status, #{started := true, connected := Connected, breaker := Breaker}) ->
    is_boolean(Connected) andalso lists:member(Breaker, [closed, open, half_open]);
valid_reply(Ctx, client_status, Reply) -> valid_reply(Ctx, result, Reply);
valid_reply(_Ctx, metrics, #{operations := Ops, requests := N}) -> is_map(Ops) andalso is_integer(N);
valid_reply(_Ctx, prometheus, Text) when is_list(Text) -> is_binary(iolist_to_binary(Text));
valid_reply(Ctx, Metrics, Reply) when Metrics =:= metrics; Metrics =:= prometheus ->
    valid_reply(Ctx, result, Reply);
valid_reply(_Ctx, membership, #{alive := Alive}) -> is_boolean(Alive);
valid_reply(Ctx, membership, Reply) -> valid_reply(Ctx, result, Reply);
valid_reply(_Ctx, result, ok) -> true;
valid_reply(_Ctx, result, {ok, _}) -> true;
valid_reply(Ctx, result, {error, Reason}) -> known_error(Ctx, Reason);
valid_reply(_Ctx, result, _Reply) -> false.

is_tuple_of(Tag, {Tag, Value}, Pred) -> Pred(Value);
is_tuple_of(_Tag, _Reply, _Pred) -> false.

%% The error vocabulary of the README. `{internal, _}' (our bug) and
%% `{invalid_argument, _}' (a NIF badarg: a missing check) are failures.
known_error(#{app := App}, not_started) -> App =:= stopped;
known_error(_Ctx, Reason) when is_atom(Reason) ->
    lists:member(Reason, [
        not_found, timeout, already_started, stale_fence, not_held, overloaded, not_replicated,
        too_many_subscriptions, disabled, gone, alive, lost_lease
    ]);
known_error(_Ctx, {Tag, Message}) when Tag =:= redis; Tag =:= connection; Tag =:= connection_lost ->
    is_binary(Message);
known_error(_Ctx, {corrupt, Detail}) ->
    is_map(Detail) andalso is_map_key(kind, Detail) andalso is_map_key(detail, Detail);
known_error(_Ctx, Reason) when is_tuple(Reason), tuple_size(Reason) >= 2 ->
    Tag = element(1, Reason),
    Tag =/= invalid_argument andalso is_atom(Tag) andalso
        (lists:prefix("invalid_", atom_to_list(Tag)) orelse
            lists:member(Tag, [
                too_large, batch_too_large, held_by, not_replicated, unsupported_command, bad_command,
                undecodable, unknown_node, filter_too_wide, held, bad_backup, not_empty, file, redis_version,
                unknown_limiter, limited
            ]));
known_error(_Ctx, _Reason) ->
    false.

%% A late or stray `{Ref, _}' reply would show here. A watch's
%% notification is no stray: emqx_redis_ds:watch/1 promised it.
mailbox_empty() ->
    receive
        {emqx_redis_ds, Ref, new_data} when is_reference(Ref) -> mailbox_empty();
        Message -> {stray_message, Message}
    after 0 -> ok
    end.

application_alive(#{app := stopped}) ->
    ok;
application_alive(#{app := started}) ->
    case {whereis(emqx_redis_storage_sup), emqx_redis_storage_client:default()} of
        {Pid, {ok, _}} when is_pid(Pid) -> ok;
        Other -> {not_running, Other}
    end.

%% Outcome counts by kind, to show how many calls got past validation, and
%% the time spent per function, to show where a run's time goes.
count(Ctx, Reply, MFA, Micros) ->
    add({outcome, outcome(Reply)}, 1),
    add({micros, MFA}, Micros),
    progress(Ctx, add({outcome, calls}, 1)).

progress(#{progress := Every, calls := Calls}, Done) when is_integer(Every), Done rem Every =:= 0 ->
    say("fuzz: ~b of ~b calls", [Done, Calls]);
progress(_Ctx, _Done) ->
    ok.

add(Key, N) ->
    Sum = N + get_count(Key),
    put(Key, Sum),
    Sum.

get_count(Key) ->
    case get(Key) of
        undefined -> 0;
        Sum -> Sum
    end.

outcome({reply, {error, Reason}}) when is_tuple(Reason) -> {error, element(1, Reason)};
outcome({reply, {error, Reason}}) -> {error, Reason};
outcome({reply, {ok, _}}) -> ok;
outcome({reply, ok}) -> ok;
outcome({reply, Bool}) when is_boolean(Bool) -> Bool;
outcome({reply, _}) -> other;
outcome({raised, Class, _, _}) -> {raised, Class};
outcome({not_called, Why}) -> Why.

outcomes() ->
    lists:reverse(lists:keysort(2, [{Kind, N} || {{outcome, Kind}, N} <- get(), Kind =/= calls])).

slowest() ->
    Top = lists:sublist(lists:reverse(lists:keysort(2, [{MFA, Us div 1000} || {{micros, MFA}, Us} <- get()])), 8),
    [{M, F, A, {ms, Ms}} || {{M, F, A}, Ms} <- Top].

%%--------------------------------------------------------------------
%% What each function takes

%% Every public function and the kind of each argument.
signatures() ->
    #{
        {?ST, start, 0} => [],
        {?ST, start, 1} => [config],
        {?ST, stop, 0} => [],
        {?ST, status, 0} => [],
        {?ST, status, 1} => [client],
        {?ST, connect, 1} => [config],
        {?ST, q, 1} => [command],
        {?ST, q, 2} => [client, command],
        {?ST, metrics, 0} => [],
        {?ST, metrics, 1} => [client],
        {?ST, prometheus, 0} => [],
        {?ST, prometheus, 1} => [client],
        {?ST, backup, 1} => [backup_path],
        {?ST, backup, 3} => [client, backup_path, backup_opts],
        {?ST, restore, 1} => [backup_path],
        {?ST, restore, 2} => [backup_path, backup_opts],
        {?ST, restore, 3} => [client, backup_path, backup_opts],
        {?S, save_session, 2} => [client_id, any],
        {?S, save_session, 3} => [client_id, any, save_opts],
        {?S, save_session, 4} => [client, client_id, any, save_opts],
        {?S, load_session, 1} => [client_id],
        {?S, load_session, 2} => [client, client_id],
        {?S, delete_session, 1} => [client_id],
        {?S, delete_session, 2} => [client, client_id],
        {?S, list_sessions, 2} => [limit, offset],
        {?S, list_sessions, 3} => [client, limit, offset],
        {?S, count_sessions, 0} => [],
        {?S, count_sessions, 1} => [client],
        {?S, session_info, 1} => [client_id],
        {?S, session_info, 2} => [client, client_id],
        {?S, acquire_lease, 3} => [client_id, owner, lease_ms],
        {?S, acquire_lease, 4} => [client, client_id, owner, lease_ms],
        {?S, renew_lease, 3} => [client_id, fence, lease_ms],
        {?S, renew_lease, 4} => [client, client_id, fence, lease_ms],
        {?S, release_lease, 2} => [client_id, fence],
        {?S, release_lease, 3} => [client, client_id, fence],
        {?M, store_message, 2} => [client_id, message],
        {?M, store_message, 3} => [client, client_id, message],
        {?M, store_messages, 2} => [client_id, messages],
        {?M, store_messages, 3} => [client, client_id, messages],
        {?M, get_messages, 3} => [client_id, offset, limit],
        {?M, get_messages, 4} => [client, client_id, offset, limit],
        {?M, ack_message, 2} => [client_id, message_id],
        {?M, ack_message, 3} => [client, client_id, message_id],
        {?M, delete_messages, 1} => [client_id],
        {?M, delete_messages, 2} => [client, client_id],
        {?M, count_messages, 1} => [client_id],
        {?M, count_messages, 2} => [client, client_id],
        {?M, queue_info, 1} => [client_id],
        {?M, queue_info, 2} => [client, client_id],
        {?R, add_route, 2} => [filter, dest],
        {?R, add_route, 3} => [client, filter, dest],
        {?R, add_routes, 1} => [routes],
        {?R, add_routes, 2} => [client, routes],
        {?R, delete_route, 2} => [filter, dest],
        {?R, delete_route, 3} => [client, filter, dest],
        {?R, match_routes, 1} => [topic],
        {?R, match_routes, 2} => [client, topic],
        {?R, lookup_routes, 1} => [filter],
        {?R, lookup_routes, 2} => [client, filter],
        {?R, has_route, 2} => [filter, dest],
        {?R, has_route, 3} => [client, filter, dest],
        {?R, topics, 0} => [],
        {?R, topics, 1} => [client],
        {?R, cleanup_node, 1} => [node],
        {?R, cleanup_node, 2} => [client, node],
        {?R, index_ready, 1} => [client],
        {?G, register_channel, 2} => [client_id, node],
        {?G, register_channel, 3} => [client, client_id, node],
        {?G, lookup_channel, 1} => [client_id],
        {?G, lookup_channel, 2} => [client, client_id],
        {?G, unregister_channel, 2} => [client_id, node],
        {?G, unregister_channel, 3} => [client, client_id, node],
        {?G, cleanup_node, 1} => [node],
        {?G, cleanup_node, 2} => [client, node],
        {emqx_redis_topic, validate, 2} => [topic_kind, topic],
        {emqx_redis_topic, match, 2} => [topic, filter],
        {emqx_redis_storage_cli, cmd, 1} => [cli_words],
        {?DS, subscribe, 2} => [client_id, filter],
        {?DS, subscribe, 3} => [client, client_id, filter],
        {?DS, unsubscribe, 2} => [client_id, filter],
        {?DS, unsubscribe, 3} => [client, client_id, filter],
        {?DS, subscriptions, 1} => [client_id],
        {?DS, subscriptions, 2} => [client, client_id],
        {?DS, filters, 0} => [],
        {?DS, filters, 1} => [client],
        {?DS, holders, 1} => [filter],
        {?DS, holders, 2} => [client, filter],
        {?DS, persist, 1} => [ds_messages],
        {?DS, persist, 2} => [client, ds_messages],
        {?DS, get_streams, 2} => [filter, start_time],
        {?DS, get_streams, 3} => [client, filter, start_time],
        {?DS, make_iterator, 3} => [stream, filter, start_time],
        {?DS, make_iterator, 4} => [client, stream, filter, start_time],
        {?DS, next, 2} => [iterator, batch_size],
        {?DS, next, 3} => [client, iterator, batch_size],
        {?DS, watch, 1} => [iterator],
        {?DS, watch, 2} => [client, iterator],
        {?DS, unwatch, 1} => [watch_ref],
        {?DS, unwatch, 2} => [client, watch_ref],
        {?DS, filter_matches, 2} => [client, topic],
        {emqx_redis_nodes, live_nodes, 0} => [],
        {emqx_redis_nodes, live_nodes, 1} => [client],
        {emqx_redis_nodes, subscribe, 0} => [],
        {emqx_redis_nodes, unsubscribe, 0} => [],
        {emqx_redis_nodes, set_rejoin_hook, 1} => [hook],
        {emqx_redis_nodes, membership, 0} => [],
        {emqx_redis_nodes, reap, 2} => [node, incarnation],
        {emqx_redis_nodes, reap, 3} => [client, node, incarnation],
        {emqx_redis_limiter, define, 2} => [limiter_name, limit_spec],
        {emqx_redis_limiter, define, 3} => [client, limiter_name, limit_spec],
        {emqx_redis_limiter, check, 3} => [limiter_name, client_id, cost],
        {emqx_redis_limiter, check, 4} => [client, limiter_name, client_id, cost],
        {emqx_redis_limiter, reset, 2} => [limiter_name, client_id],
        {emqx_redis_limiter, reset, 3} => [client, limiter_name, client_id]
    }.

%% One valid value of a kind, for the deterministic cases.
valid_example(client_id) -> <<"c">>;
valid_example(command) -> [<<"PING">>];
valid_example(any) -> term;
valid_example(save_opts) -> #{};
valid_example(limit) -> 10;
valid_example(offset) -> 0;
valid_example(owner) -> node();
valid_example(lease_ms) -> 1000;
valid_example(fence) -> 1;
valid_example(message) -> #{id => <<"m">>};
valid_example(messages) -> [#{id => <<"m">>}];
valid_example(message_id) -> <<"m">>;
valid_example(filter) -> <<"a/+">>;
valid_example(topic) -> <<"a/b">>;
valid_example(dest) -> node();
valid_example(routes) -> [{<<"a/+">>, node()}];
valid_example(node) -> node();
valid_example(cli_words) -> ["sessions", "count"];
valid_example(ds_messages) -> [#{id => <<"m">>, topic => <<"a/b">>}];
valid_example(start_time) -> 0;
valid_example(stream) -> {emqx_redis_ds_stream, 1, <<"a">>, 0};
valid_example(iterator) -> {emqx_redis_ds_iterator, 1, <<"a">>, 0, <<"a/+">>, 0, 0, 0};
valid_example(batch_size) -> 10;
valid_example(watch_ref) -> make_ref();
valid_example(hook) -> undefined;
valid_example(incarnation) -> 1;
valid_example(backup_path) -> "never-written.bak";
valid_example(backup_opts) -> #{};
valid_example(limiter_name) -> <<"fz">>;
valid_example(limit_spec) -> #{rate => 1, burst => 1};
valid_example(cost) -> 1.

%%--------------------------------------------------------------------
%% Generators

gen_call(Ctx) ->
    Sigs = [Sig || {{M, F, _}, _} = Sig <- lists:sort(maps:to_list(signatures())), fuzzed(Ctx, M, F)],
    %% Built once: PropEr types are costly to construct, cheap to draw from.
    Kinds = lists:usort(lists:append([Kinds || {_, Kinds} <- Sigs])),
    Gens = maps:from_list([{Kind, gen_arg(Ctx, Kind)} || Kind <- Kinds]),
    ?LET(
        {{M, F, _}, ArgKinds},
        frequency([{weight(F), exactly(Sig)} || {{_, F, _}, _} = Sig <- Sigs]),
        {M, F, [maps:get(Kind, Gens) || Kind <- ArgKinds]}
    ).

%% stop/0 would turn the rest of a run into `not_started' answers, start/0,1
%% the stopped run into a started one: fuzz_with_application_stopped covers
%% stop/0, the started run start/0,1.
fuzzed(_Ctx, emqx_redis_storage, stop) -> false;
fuzzed(#{app := stopped}, emqx_redis_storage, start) -> false;
fuzzed(_Ctx, _M, _F) -> true.

%% Functions that visit the whole store (every hash slot or every entry)
%% take tens of milliseconds: drawn less often, so the run stays short.
weight(F) when F =:= count_sessions; F =:= list_sessions; F =:= cleanup_node; F =:= cmd -> 1;
weight(F) when F =:= backup; F =:= restore -> 1;
weight(_F) -> 5.

%% Mostly values of the right kind, so calls get past validation and reach
%% Redis; else anything (configs make their own non-maps: any map must name
%% the test's Redis).
gen_arg(Ctx, config) ->
    gen_valid(Ctx, config);
gen_arg(Ctx, backup_path) ->
    %% Never any string: a backup writes wherever its path says.
    frequency([{4, gen_valid(Ctx, backup_path)}, {1, oneof([integer(), elements([undefined, [], <<>>, #{}, [a | b]])])}]);
gen_arg(Ctx, Kind) ->
    frequency([{4, gen_valid(Ctx, Kind)}, {1, gen_any()}]).

gen_valid(#{clients := Clients}, client) ->
    elements(Clients);
gen_valid(#{addr := Addr}, config) ->
    gen_config(Addr);
gen_valid(_Ctx, command) ->
    gen_command();
gen_valid(_Ctx, client_id) ->
    gen_client_id();
gen_valid(_Ctx, any) ->
    gen_any();
gen_valid(_Ctx, save_opts) ->
    gen_save_opts();
gen_valid(_Ctx, limit) ->
    frequency([{8, integer(0, 100)}, {1, elements([10000, 10001, -1])}]);
gen_valid(_Ctx, offset) ->
    frequency([{8, integer(0, 100)}, {1, elements([1 bsl 32, (1 bsl 32) + 1, -1, 1 bsl 64])}]);
gen_valid(_Ctx, owner) ->
    oneof([elements([node(), 'other@host', <<"owner-1">>, <<>>]), binary()]);
gen_valid(_Ctx, lease_ms) ->
    frequency([{8, integer(1, 60000)}, {1, elements([0, -1, ?MAX_LEASE_MS, ?MAX_LEASE_MS + 1, 1 bsl 64])}]);
gen_valid(_Ctx, fence) ->
    gen_fence();
gen_valid(_Ctx, message) ->
    gen_message();
gen_valid(_Ctx, messages) ->
    gen_messages();
gen_valid(_Ctx, message_id) ->
    gen_message_id();
gen_valid(_Ctx, filter) ->
    gen_filter();
gen_valid(_Ctx, topic) ->
    gen_topic();
gen_valid(_Ctx, dest) ->
    gen_dest();
gen_valid(_Ctx, routes) ->
    gen_routes();
gen_valid(_Ctx, node) ->
    gen_node();
gen_valid(_Ctx, hook) ->
    elements([undefined, fun() -> ok end, {erlang, node, []}, {m, f, [a | b]}, fun(_) -> ok end, {m, f}]);
gen_valid(_Ctx, incarnation) ->
    frequency([{8, integer(0, 50)}, {1, elements([-1, 1 bsl 53, 1 bsl 64, nil])}]);
gen_valid(_Ctx, limiter_name) ->
    frequency([{8, elements([<<"fz">>, <<"fz-batch">>, <<"unknown">>])}, {1, elements([<<>>, binary:copy(<<"n">>, 256)])}, {1, binary()}]);
gen_valid(_Ctx, limit_spec) ->
    Edge = elements([0, 1, 1000000000, 1000000001, -1, 1 bsl 64]),
    frequency([
        {6, ?LET({R, B, N}, {integer(1, 1000), integer(1, 1000), integer(0, 1000)}, #{rate => R, burst => B, batch => N})},
        {1, ?LET({R, B}, {Edge, Edge}, #{rate => R, burst => B})},
        {1, elements([#{rate => 1}, #{burst => 1}, #{rate => 1, burst => 1, other => 1}, #{}])}
    ]);
gen_valid(_Ctx, cost) ->
    frequency([{8, integer(0, 20)}, {1, elements([-1, 1000000000, 1000000001, 1 bsl 64, 1.0])}]);
gen_valid(_Ctx, topic_kind) ->
    elements([name, filter]);
gen_valid(_Ctx, ds_messages) ->
    frequency([
        {8, list(frequency([{6, ?LET({M, T}, {gen_message(), gen_topic()}, M#{topic => T})}, {1, gen_message()}, {1, gen_any()}]))},
        {1, ?LET(M, gen_message(), [M | M])},
        {1, ?LAZY(exactly(lists:duplicate(10001, #{id => <<"dup">>, topic => <<"a/b">>})))}
    ]);
gen_valid(_Ctx, start_time) ->
    frequency([{6, integer(0, 2000000000000)}, {1, elements([-1, (1 bsl 64) - 1, 1 bsl 64, 1.0])}]);
gen_valid(_Ctx, stream) ->
    frequency([
        {6, ?LET({L, S}, {gen_level(), integer(0, 3)}, {emqx_redis_ds_stream, 1, L, S})},
        {1, ?LET({V, L, S}, {gen_any(), gen_any(), gen_any()}, {emqx_redis_ds_stream, V, L, S})},
        {1, elements([{emqx_redis_ds_stream, 1, <<"a">>, 4}, {emqx_redis_ds_stream, 1, <<"a/b">>, 0}, {emqx_redis_ds_stream, 1, <<"a">>}])}
    ]);
gen_valid(_Ctx, iterator) ->
    frequency([
        {6, ?LET(
            {L, S, F, Ms, Seq, Skip},
            {gen_level(), integer(0, 3), gen_filter(), frequency([{4, integer(0, 2000000000000)}, {1, gen_integer()}]),
                frequency([{4, integer(0, 10)}, {1, gen_integer()}]), frequency([{4, integer(0, 200)}, {1, gen_integer()}])},
            {emqx_redis_ds_iterator, 1, L, S, F, Ms, Seq, Skip}
        )},
        {1, ?LET(L, list(gen_any()), list_to_tuple([emqx_redis_ds_iterator | L]))}
    ]);
gen_valid(_Ctx, backup_path) ->
    %% A few files in the test's directory: written by backups, read back by
    %% restores (then refused as not_empty, or replacing with older data);
    %% a directory; a file that is no backup.
    Dir = filename:join(redis_test_server:tmp_root(), "fuzz-backups"),
    ?LET(
        Name,
        elements(["a.bak", "b.bak", "", "no-such-dir/c.bak", "../redis.conf"]),
        frequency([{3, filename:join(Dir, Name)}, {1, list_to_binary(filename:join(Dir, Name))}])
    );
gen_valid(_Ctx, backup_opts) ->
    elements([#{}, #{mode => replace}, #{mode => fail_if_exists}, #{mode => merge}, #{progress => fun(_, _, _) -> ok end}]);
gen_valid(_Ctx, batch_size) ->
    frequency([{6, integer(1, 100)}, {1, elements([0, -1, 10000, 10001, 1 bsl 64])}]);
gen_valid(_Ctx, watch_ref) ->
    frequency([{4, ?LAZY(exactly(make_ref()))}, {1, gen_any()}]);
gen_valid(_Ctx, cli_words) ->
    %% emqx_ctl passes strings; the ids and topics reach Redis.
    ?LET(
        {Words, Id, N},
        {
            elements([
                ["status"], ["--json", "status"], ["sessions", "count"], ["sessions", "list"],
                ["sessions", "show"], ["queue", "show"], ["routes", "list"], ["routes", "match"],
                ["metrics"], ["--json", "routes", "list"], ["sessions"], []
            ]),
            oneof([gen_client_id(), gen_topic()]),
            elements([[], ["3"], ["0"], ["-1"], ["x"], ["3", "4"]])
        },
        Words ++ [binary_to_list(Id) || lists:last([[] | Words]) =/= "list", is_binary(Id)] ++ N
    ).

%% A small pool, so that calls meet each other's data in Redis.
gen_client_id() ->
    frequency([
        {8, elements([<<"fz-1">>, <<"fz-2">>, <<"fz-3">>, <<"a{b}c">>, <<"sp ace">>, <<"ünï"/utf8>>, <<0, 255>>])},
        {1, ?LAZY(elements([<<>>, binary:copy(<<"i">>, 65535), binary:copy(<<"i">>, 65536)]))},
        {1, binary()}
    ]).

gen_fence() ->
    frequency([
        {8, integer(0, 50)},
        {1, elements([-1, ?MAX_FENCE, ?MAX_FENCE + 1, 1 bsl 63, -(1 bsl 63) - 1, 1 bsl 64, nil])}
    ]).

gen_save_opts() ->
    ?LET(
        Pairs,
        list(oneof([
            {ttl, frequency([{6, integer(1, 3600)}, {1, elements([0, ?MAX_TTL, ?MAX_TTL + 1, 1 bsl 64])}, {1, gen_any()}])},
            {node, frequency([{4, gen_node()}, {1, gen_any()}])},
            {fence, frequency([{4, gen_fence()}, {1, gen_any()}])},
            {gen_leaf(), gen_any()}
        ])),
        maps:from_list(lists:sublist(Pairs, 4))
    ).

gen_message() ->
    ?LET(
        {Id, Fields, Expiry},
        {gen_message_id(), list({gen_leaf(), gen_any()}), frequency([{4, none}, {1, gen_expiry()}])},
        with_expiry(maps:merge(maps:from_list(lists:sublist(Fields, 4)), #{id => Id, payload => <<"p">>}), Expiry)
    ).

with_expiry(Msg, none) -> Msg;
with_expiry(Msg, Expiry) -> Msg#{expiry_interval => Expiry}.

gen_expiry() ->
    oneof([integer(1, 100), elements([0, -1, 4294967295, 4294967296, 1 bsl 64, 1.5]), gen_any()]).

gen_messages() ->
    frequency([
        {8, list(frequency([{6, gen_message()}, {1, gen_any()}]))},
        {1, ?LET(M, gen_message(), [M | M])},
        {1, ?LET(M, gen_message(), [M, #{id => <<"big">>, payload => binary:copy(<<"x">>, 70000)}])},
        {1, ?LAZY(exactly(lists:duplicate(10001, #{id => <<"dup">>})))}
    ]).

gen_message_id() ->
    frequency([{6, elements([<<"m1">>, <<"m2">>, <<"m3">>])}, {1, binary()}, {1, ?LAZY(elements([<<>>, binary:copy(<<"i">>, 65536)]))}]).

gen_filter() ->
    frequency([
        {6, elements([<<"a/b">>, <<"a/+">>, <<"a/#">>, <<"#">>, <<"+">>, <<"+/+/#">>, <<"$SYS/#">>, <<"fz/1">>, <<"a//b">>])},
        {2, ?LAZY(elements([<<>>, <<"a/#/b">>, <<"a+">>, <<"a#">>, <<"a\0b">>, <<255>>, binary:copy(<<"t">>, 65536)]))},
        {1, binary()}
    ]).

gen_topic() ->
    frequency([
        {6, elements([<<"a/b">>, <<"a">>, <<"fz/1">>, <<"$SYS/x">>, <<"a//b">>, <<"/">>])},
        {2, gen_filter()}
    ]).

gen_dest() ->
    frequency([
        {6, elements([node(), 'other@host', {<<"g">>, node()}, {<<"g2">>, 'other@host'}])},
        {1, elements([{<<"g/x">>, node()}, {<<>>, node()}, {<<"g">>, <<"n@h">>}, 'a\0b', 'a\1b', {<<255>>, node()}])},
        {1, {binary(), gen_node()}}
    ]).

gen_routes() ->
    frequency([
        {6, list({gen_filter(), gen_dest()})},
        {1, ?LET(R, {gen_filter(), gen_dest()}, [R | 42])},
        {1, list(gen_any())}
    ]).

gen_level() ->
    frequency([{6, elements([<<"a">>, <<"fz">>, <<"$SYS">>, <<>>])}, {1, elements([<<"a/b">>, <<"+">>, <<"#">>, <<"a\0b">>, <<255>>])}, {1, binary()}]).

gen_node() ->
    elements([node(), 'other@host', 'fz@dead', '', 'a\0b', 'no_at_sign', 'ünï@host']).

%% Raw commands: harmless ones, refused ones, disabled ones, and garbage
%% written into the library's own keys and route change channel, which later
%% calls must answer as corrupt data rather than crash on.
gen_command() ->
    frequency([
        {4, elements([
            [<<"PING">>], [<<"SET">>, <<"fzk">>, 1.5], [<<"GET">>, <<"fzk">>], [<<"INCR">>, <<"fzk">>],
            [<<"DEL">>, <<"fzk">>], [echo, 'atom', 42, [<<"io">>, "list"]], [<<"TIME">>]
        ])},
        {2, elements([
            [<<"multi">>], [<<"SUBSCRIBE">>, <<"c">>], [<<"BLPOP">>, <<"k">>, 0], [<<"SELECT">>, 1],
            [<<"FLUSHALL">>], [<<"SHUTDOWN">>, <<"NOSAVE">>], [<<"DEBUG">>, <<"SEGFAULT">>],
            [<<"REPLICAOF">>, <<"127.0.0.1">>, 6379], [<<255, 0>>], [<<>>]
        ])},
        {1, ?LET(
            {Key, Value},
            {elements(library_keys()), gen_any()},
            [<<"SET">>, Key, term_to_binary(Value)]
        )},
        {1, ?LET(Key, elements(library_keys()), [<<"LPUSH">>, Key, <<"x">>])},
        {1, ?LET(Payload, binary(), [<<"PUBLISH">>, <<"emqx:rt:events">>, Payload])},
        {1, ?LET(Payload, binary(), [<<"PUBLISH">>, elements([<<"emqx:ds:f:events">>, <<"emqx:ds:appends">>]), Payload])},
        {1, ?LET(Fields, list(gen_leaf()), [<<"XADD">>, <<"emqx:ds:m:{a/0}">>, <<"*">>, <<"m">> | Fields])},
        {1, list(gen_any())},
        {1, ?LET(Cmd, list(gen_leaf()), [<<"ECHO">> | Cmd])},
        {1, ?LET(L, gen_leaf(), [<<"PING">> | L])}
    ]).

library_keys() ->
    [
        <<"emqx:sess:{fz-1}">>, <<"emqx:lease:{fz-1}">>, <<"emqx:q:{fz-1}">>,
        <<"emqx:qb:{fz-1}">>, <<"emqx:rt:{r0}">>, <<"emqx:rtrie:{r0}">>,
        <<"emqx:ds:sub:{fz-1}">>, <<"emqx:ds:f:{d0}">>, <<"emqx:ds:m:{a/0}">>, <<"emqx:ds:levels">>,
        <<"emqx:nodes:{n}">>, <<"emqx:nodes:inc:{n}">>, <<"emqx:nodes:reap:{n}">>
    ].

%% Safe configs: a map always names the test's Redis in `servers' (or its
%% `server' alias), with random values in the other fields; else a non-map.
gen_config(Addr) ->
    frequency([
        {4, ?LET(
            {Redis, Top},
            {gen_redis_config(Addr), list(elements(top_config_fields()))},
            maps:merge(maps:from_list(Top), Redis)
        )},
        {1, ?SUCHTHAT(Term, gen_any(), not is_map(Term))}
    ]).

gen_redis_config(Addr) ->
    ?LET(
        {Key, Servers, Fields, Extra},
        {
            elements([redis, <<"redis">>]),
            elements([{servers, Addr}, {servers, [Addr]}, {servers, binary_to_list(Addr)}, {server, Addr}, {<<"servers">>, Addr}]),
            list(elements(redis_config_fields())),
            list({gen_leaf(), gen_leaf()})
        },
        #{Key => maps:merge(maps:from_list(lists:sublist(Extra, 1) ++ Fields), maps:from_list([Servers]))}
    ).

%% Small timeouts and pools: a random config must not make a call wait for
%% long or open many connections.
redis_config_fields() ->
    [
        {redis_type, single}, {redis_type, sentinel}, {redis_type, cluster}, {redis_type, other},
        {sentinel, <<"mymaster">>}, {database, 1}, {database, -1}, {database, 100000},
        {username, <<"nobody">>}, {password, <<"wrong">>}, {password, 42},
        {pool_size, 1}, {pool_size, 0}, {pool_size, x}, {connect_timeout, 200}, {connect_timeout, "1s"},
        {connect_timeout, 0}, {command_timeout, 300}, {command_timeout, "bad"},
        {wait_replicas, 1}, {wait_timeout, 20}, {wait_timeout, -5},
        {ssl, #{enable => true, verify => verify_none}}, {ssl, #{enable => false}}, {ssl, nope},
        {ssl, #{enable => true, cacertfile => "/nonexistent.pem"}}, {unknown_field, 1}
    ].

top_config_fields() ->
    [
        {key_prefix, <<"fz3:">>}, {key_prefix, <<"a{b">>}, {key_prefix, 42},
        {route_index, redis}, {route_index, nope}, {route_shards, 1}, {route_shards, 70000},
        {route_sync_interval, 50}, {ds, #{stream_shards => 1, message_retention => "1s"}},
        {ds, #{allow_wildcard_root => true, max_subscriptions_per_client => 2}}, {ds, #{stream_shards => 0}}, {persistence, #{session_ttl => "1h", max_queue_len => 1 bsl 70}},
        {persistence, #{max_message_size => 0}}, {persistence, nope}, {<<"bogus">>, 1},
        {nodes, #{enable => false}}, {nodes, #{ttl => 100, heartbeat_interval => 200}}, {nodes, nope}
    ].

%% Any term, within a size that keeps calls fast.
gen_any() ->
    frequency([
        {6, gen_leaf()},
        {1, list(gen_leaf())},
        {1, ?LET({L, T}, {list(gen_leaf()), gen_leaf()}, L ++ T)},
        {1, ?LET(L, list(gen_leaf()), [[[L]], L])},
        {1, ?LET(Pairs, list({oneof([gen_leaf(), elements([id, ttl, node, fence, expiry_interval])]), gen_leaf()}), maps:from_list(Pairs))},
        {1, ?LET(L, list(gen_leaf()), list_to_tuple(L))}
    ]).

gen_leaf() ->
    frequency([
        {2, elements([nil, undefined, true, false, ok, error, '', node(), 'a@b', 'x\0y', id, ttl, fence, infinity])},
        {3, gen_integer()},
        {1, oneof([float(), elements([0.0, -0.0, 1.0e308, -1.0e308, 5.0e-324])])},
        {3, oneof([binary(), elements([<<>>, <<0>>, <<255, 254>>, <<"a\0b">>, <<"{}">>, <<"a/b">>])])},
        {1, ?LAZY(elements([binary:copy(<<"L">>, 65535), binary:copy(<<"L">>, 70000)]))},
        {1, elements([self(), make_ref(), fun() -> ok end, fun lists:reverse/1, "string", [256, 1024]])}
    ]).

gen_integer() ->
    oneof([
        integer(),
        elements([
            0, 1, -1, 1 bsl 31, 1 bsl 32, ?MAX_FENCE, 1 bsl 53, (1 bsl 63) - 1, 1 bsl 63, -(1 bsl 63),
            -(1 bsl 63) - 1, (1 bsl 64) - 1, 1 bsl 64, 1 bsl 100, -(1 bsl 100), 1 bsl 1000
        ]),
        ?LET(N, integer(), N * (1 bsl 70))
    ]).
