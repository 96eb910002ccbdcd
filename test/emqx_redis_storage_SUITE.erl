%% Foundation: start/stop, configuration, raw commands, failures of Redis,
%% concurrency, timeouts and panics, all against real redis-server processes.
-module(emqx_redis_storage_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

all() ->
    [
        start_and_stop,
        start_from_application_env,
        start_twice_is_refused,
        start_fails_cleanly_when_redis_is_unreachable,
        config_errors_name_the_field,
        config_accepts_every_documented_form,
        huge_numbers_in_config_never_reach_the_vm,
        raw_commands_give_plain_terms,
        binary_values_round_trip_every_byte,
        bad_commands_are_errors,
        password_and_acl_user,
        secrets_are_never_shown,
        several_clients_in_one_vm,
        redis_down_answers_within_deadline,
        redis_restarted_calls_work_again,
        many_concurrent_callers_get_their_own_replies,
        timed_out_replies_never_reach_the_mailbox,
        replies_stay_in_step_after_timeouts,
        calls_behind_a_slow_call_are_answered,
        calls_queued_behind_a_lost_connection_are_not_done,
        panic_in_a_task_is_answered
    ].

init_per_suite(Config) ->
    Redis = redis_test_server:start(),
    [{redis, Redis} | Config].

end_per_suite(Config) ->
    redis_test_server:stop(?config(redis, Config)).

init_per_testcase(_Case, Config) ->
    ok = emqx_redis_storage:stop(),
    Config.

end_per_testcase(_Case, _Config) ->
    ok = emqx_redis_storage:stop(),
    application:unset_env(emqx_redis_storage, config).

redis_config(Config) ->
    #{redis => #{servers => redis_test_server:address(?config(redis, Config))}}.

%%--------------------------------------------------------------------

start_and_stop(Config) ->
    ?assertEqual(#{started => false, connected => false, healthy => false}, emqx_redis_storage:status()),
    ?assertEqual({error, not_started}, emqx_redis_storage:q([<<"PING">>])),
    ok = emqx_redis_storage:start(redis_config(Config)),
    ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])),
    Address = redis_test_server:address(?config(redis, Config)),
    ?assertMatch(
        #{started := true, connected := true, mode := single, servers := [Address], database := 0},
        emqx_redis_storage:status()
    ),
    ok = emqx_redis_storage:stop(),
    ?assertEqual({error, not_started}, emqx_redis_storage:q([<<"PING">>])),
    ok = emqx_redis_storage:start(redis_config(Config)),
    ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])).

start_from_application_env(Config) ->
    application:load(emqx_redis_storage),
    ok = application:set_env(emqx_redis_storage, config, redis_config(Config)),
    ok = emqx_redis_storage:start(),
    ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])).

start_twice_is_refused(Config) ->
    ok = emqx_redis_storage:start(redis_config(Config)),
    ?assertEqual({error, already_started}, emqx_redis_storage:start(redis_config(Config))),
    ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])).

start_fails_cleanly_when_redis_is_unreachable(_Config) ->
    Port = closed_port(),
    {Micros, Result} = timer:tc(fun() ->
        emqx_redis_storage:start(#{redis => #{servers => port_address(Port), connect_timeout => 500}})
    end),
    ?assertMatch({error, {connection, _}}, Result),
    ?assert(Micros < 2000000),
    ?assertEqual(#{started => false, connected => false, healthy => false}, emqx_redis_storage:status()).

config_errors_name_the_field(Config) ->
    Good = redis_config(Config),
    Cases = [
        {#{redis => #{servers => <<"127.0.0.1:99999">>}}, <<"redis.servers">>},
        {#{redis => #{servers => <<"127.0.0.1:port">>}}, <<"redis.servers">>},
        {#{redis => #{servers => <<>>}}, <<"redis.servers">>},
        {#{redis => #{servers => 42}}, <<"redis.servers">>},
        {#{redis => #{server => <<"a:1">>, servers => <<"b:2">>}}, <<"redis.server">>},
        {#{redis => #{redis_type => galaxy}}, <<"redis.redis_type">>},
        {#{redis => #{database => -1}}, <<"redis.database">>},
        {#{redis => #{pool_size => 0}}, <<"redis.pool_size">>},
        {#{redis => #{connect_timeout => "5 parsecs"}}, <<"redis.connect_timeout">>},
        {#{redis => #{command_timeout => 0}}, <<"redis.command_timeout">>},
        {#{redis => #{password => 42}}, <<"redis.password">>},
        {#{redis => #{colour => blue}}, <<"redis.colour">>},
        {#{redis => not_a_map}, <<"redis">>},
        {#{key_prefix => 1}, <<"key_prefix">>},
        {#{key_prefix => <<"a{b}:">>}, <<"key_prefix">>},
        {#{persistence => #{session_ttl => "1x"}}, <<"persistence.session_ttl">>},
        {#{persistence => #{session_ttl => "1500ms"}}, <<"persistence.session_ttl">>},
        {#{persistence => #{max_queue_len => 0}}, <<"persistence.max_queue_len">>},
        {#{persistence => #{max_session_size => -1}}, <<"persistence.max_session_size">>},
        {#{surprise => 1}, <<"surprise">>},
        %% Upper bounds: values no deployment reaches, some of which would
        %% exhaust the VM (a pool of 2^32 connections aborted it once).
        {#{redis => #{pool_size => 4294967297}}, <<"redis.pool_size">>},
        {#{redis => #{pool_size => 257}}, <<"redis.pool_size">>},
        {#{redis => #{max_inflight => 1 bsl 40}}, <<"redis.max_inflight">>},
        {#{redis => #{max_inflight => 0}}, <<"redis.max_inflight">>},
        {#{redis => #{database => 1 bsl 64}}, <<"redis.database">>},
        {#{redis => #{wait_replicas => 1 bsl 31}}, <<"redis.wait_replicas">>},
        {#{redis => #{command_timeout => 1 bsl 64}}, <<"redis.command_timeout">>},
        {#{redis => #{connect_timeout => "100000000d"}}, <<"redis.connect_timeout">>},
        {#{redis => #{wait_timeout => 3600001}}, <<"redis.wait_timeout">>},
        {#{persistence => #{session_ttl => 4294967296}}, <<"persistence.session_ttl">>},
        {#{persistence => #{message_ttl => "200000d"}}, <<"persistence.message_ttl">>},
        {#{persistence => #{max_queue_len => 1000001}}, <<"persistence.max_queue_len">>},
        {#{persistence => #{max_session_size => 1 bsl 40}}, <<"persistence.max_session_size">>},
        {#{persistence => #{max_message_size => 8388609}}, <<"persistence.max_message_size">>},
        {#{route_shards => 65536}, <<"route_shards">>},
        {#{route_sync_interval => 1 bsl 62}, <<"route_sync_interval">>}
    ],
    lists:foreach(
        fun({Bad, Field}) ->
            Merged = merge(Good, Bad),
            case emqx_redis_storage:start(Merged) of
                {error, {invalid_config, Field, Expected}} when is_binary(Expected), Expected =/= <<>> ->
                    ok;
                Other ->
                    ct:fail({expected_invalid, Field, Bad, Other})
            end,
            ?assertEqual(#{started => false, connected => false, healthy => false}, emqx_redis_storage:status())
        end,
        Cases
    ),
    ?assertMatch({error, {invalid_config, _, _}}, emqx_redis_storage:start(not_a_map)).

%% connect/1 checks the same bounds (once, a pool_size of 2^32 + 1 made the
%% NIF allocate 32 GiB and abort the VM), and the largest values allowed work.
huge_numbers_in_config_never_reach_the_vm(Config) ->
    Servers = redis_test_server:address(?config(redis, Config)),
    ?assertMatch(
        {error, {invalid_config, <<"redis.pool_size">>, <<"an integer from 1 to 256">>}},
        emqx_redis_storage:connect(#{redis => #{servers => Servers, pool_size => 4294967297}})
    ),
    {ok, Client} = emqx_redis_storage:connect(#{
        redis => #{servers => Servers, pool_size => 256, max_inflight => 1000000, database => 15},
        persistence => #{session_ttl => 4294967295, max_session_size => 8 * 1024 * 1024},
        route_shards => 1024
    }),
    ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q(Client, [<<"PING">>])),
    ?assertMatch(#{pool_size := 256, database := 15}, emqx_redis_storage:status(Client)).

merge(#{redis := R1} = A, #{redis := R2} = B) when is_map(R2) -> maps:merge(A, B#{redis := maps:merge(R1, R2)});
merge(A, B) -> maps:merge(A, B).

config_accepts_every_documented_form(Config) ->
    Address = redis_test_server:address(?config(redis, Config)),
    Forms = [
        #{redis => #{server => Address}},
        #{redis => #{servers => binary_to_list(Address)}},
        #{redis => #{servers => [Address]}},
        #{<<"redis">> => #{<<"servers">> => Address, <<"redis_type">> => <<"single">>}},
        #{redis => #{servers => Address, connect_timeout => "2s", command_timeout => <<"1500ms">>}},
        #{redis => #{servers => Address, connect_timeout => 2000, command_timeout => "1m"}},
        #{redis => #{servers => Address, database => 3, pool_size => 1}, key_prefix => "test:"}
    ],
    lists:foreach(
        fun(Form) ->
            ok = emqx_redis_storage:start(Form),
            ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])),
            ok = emqx_redis_storage:stop()
        end,
        Forms
    ),
    %% database is really selected
    ok = emqx_redis_storage:start(#{redis => #{servers => Address, database => 3}}),
    {ok, <<"OK">>} = emqx_redis_storage:q([<<"SET">>, <<"db-probe">>, <<"3">>]),
    ?assertEqual("3", redis_test_server:cmd(?config(redis, Config), ["-n", "3", "GET", "db-probe"])),
    ?assertEqual("", redis_test_server:cmd(?config(redis, Config), ["-n", "0", "GET", "db-probe"])),
    ?assertEqual({ok, 90}, emqx_redis_storage_config:parse_duration("1m30s", s)),
    ?assertEqual({ok, 86400}, emqx_redis_storage_config:parse_duration(<<"24h">>, s)),
    ?assertEqual(error, emqx_redis_storage_config:parse_duration("1500ms", s)),
    ?assertEqual({ok, 1500}, emqx_redis_storage_config:parse_duration("1500ms", ms)),
    ?assertEqual(error, emqx_redis_storage_config:parse_duration("-5s", ms)).

raw_commands_give_plain_terms(Config) ->
    ok = emqx_redis_storage:start(redis_config(Config)),
    Q = fun emqx_redis_storage:q/1,
    ?assertEqual({ok, <<"OK">>}, Q([<<"SET">>, <<"k1">>, <<"v1">>])),
    ?assertEqual({ok, <<"v1">>}, Q([<<"GET">>, <<"k1">>])),
    ?assertEqual({ok, undefined}, Q([<<"GET">>, <<"no-such-key">>])),
    ?assertEqual({ok, 3}, Q(["RPUSH", list, a, 1, 2.5])),
    ?assertEqual({ok, [<<"a">>, <<"1">>, <<"2.5">>]}, Q([<<"LRANGE">>, <<"list">>, 0, -1])),
    ?assertEqual({ok, 6}, Q([<<"INCRBY">>, <<"counter">>, 6])),
    ?assertEqual({ok, []}, Q([<<"LRANGE">>, <<"empty">>, 0, -1])),
    ?assertMatch({error, {redis, <<"WRONGTYPE", _/binary>>}}, Q([<<"GET">>, <<"list">>])),
    ?assertMatch({error, {redis, <<"ERR", _/binary>>}}, Q([<<"NO-SUCH-COMMAND">>])),
    ?assertEqual({ok, 3}, Q([<<"DEL">>, <<"list">>, <<"k1">>, <<"counter">>])).

binary_values_round_trip_every_byte(Config) ->
    ok = emqx_redis_storage:start(redis_config(Config)),
    Every = list_to_binary(lists:seq(0, 255)),
    Big = binary:copy(Every, 4096),
    lists:foreach(
        fun(Value) ->
            {ok, <<"OK">>} = emqx_redis_storage:q([<<"SET">>, Every, Value]),
            ?assertEqual({ok, Value}, emqx_redis_storage:q([<<"GET">>, Every]))
        end,
        [<<>>, Every, Big]
    ).

bad_commands_are_errors(Config) ->
    ok = emqx_redis_storage:start(redis_config(Config)),
    ?assertEqual({error, {bad_command, []}}, emqx_redis_storage:q([])),
    ?assertEqual({error, {bad_command, ping}}, emqx_redis_storage:q(ping)),
    ?assertMatch({error, {bad_command, _}}, emqx_redis_storage:q([<<"GET">>, {key, 1}])),
    ?assertMatch({error, {bad_command, _}}, emqx_redis_storage:q([<<"GET">>, self()])),
    %% commands that would change the state of a connection shared with
    %% other callers, or block it, are refused
    [
        ?assertEqual({error, {unsupported_command, Name}}, emqx_redis_storage:q([Cmd, <<"x">>, 0]))
     || {Cmd, Name} <- [
            {<<"multi">>, <<"MULTI">>},
            {<<"EXEC">>, <<"EXEC">>},
            {"watch", <<"WATCH">>},
            {<<"SUBSCRIBE">>, <<"SUBSCRIBE">>},
            {<<"select">>, <<"SELECT">>},
            {<<"BLPOP">>, <<"BLPOP">>},
            {<<"MONITOR">>, <<"MONITOR">>}
        ]
    ],
    %% a command beyond 8 MiB (the NIF copies it on the calling scheduler)
    Big = binary:copy(<<"x">>, 8 * 1024 * 1024),
    ?assertEqual(
        {error, {too_large, #{size => 8388615, max => 8388608}}},
        emqx_redis_storage:q([<<"SET">>, <<"k">>, <<"big">>, Big])
    ),
    ?assertEqual({ok, <<"OK">>}, emqx_redis_storage:q([<<"SET">>, <<"k">>, binary:part(Big, 0, 8388000)])),
    ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])).

password_and_acl_user(_Config) ->
    Redis = redis_test_server:start(#{
        conf => ["requirepass topsecret", "user app on >apppass ~* &* +@all"]
    }),
    try
        Address = redis_test_server:address(Redis),
        ok = emqx_redis_storage:start(#{redis => #{servers => Address, password => <<"topsecret">>}}),
        ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])),
        ok = emqx_redis_storage:stop(),
        ok = emqx_redis_storage:start(#{redis => #{servers => Address, username => "app", password => "apppass"}}),
        ?assertEqual({ok, <<"app">>}, emqx_redis_storage:q([<<"ACL">>, <<"WHOAMI">>])),
        ok = emqx_redis_storage:stop(),
        ?assertMatch(
            {error, {connection, _}},
            emqx_redis_storage:start(#{redis => #{servers => Address, password => <<"wrong">>}})
        ),
        ?assertMatch(
            {error, {redis, <<"NOAUTH", _/binary>>}},
            emqx_redis_storage:start(#{redis => #{servers => Address}})
        )
    after
        redis_test_server:stop(Redis)
    end.

secrets_are_never_shown(_Config) ->
    Redis = redis_test_server:start(#{conf => ["requirepass hunter2-secret"]}),
    try
        Address = redis_test_server:address(Redis),
        Cfg = #{redis => #{servers => Address, password => <<"hunter2-secret">>}},
        ok = emqx_redis_storage:start(Cfg),
        Shown = lists:flatten(io_lib:format("~p", [emqx_redis_storage:status()])),
        ?assertEqual(nomatch, string:find(Shown, "hunter2")),
        {ok, Client} = emqx_redis_storage:connect(Cfg),
        ?assertEqual(nomatch, string:find(lists:flatten(io_lib:format("~p", [Client])), "hunter2")),
        ok = emqx_redis_storage:stop(),
        %% an error about the password does not repeat it
        {error, Reason} = emqx_redis_storage:start(Cfg#{redis := #{servers => Address, password => 12345678}}),
        ?assertEqual(nomatch, string:find(lists:flatten(io_lib:format("~p", [Reason])), "12345678"))
    after
        redis_test_server:stop(Redis)
    end.

several_clients_in_one_vm(Config) ->
    Other = redis_test_server:start(),
    try
        {ok, A} = emqx_redis_storage:connect(redis_config(Config)),
        {ok, B} = emqx_redis_storage:connect(#{redis => #{servers => redis_test_server:address(Other)}}),
        {ok, <<"OK">>} = emqx_redis_storage:q(A, [<<"SET">>, <<"who">>, <<"a">>]),
        {ok, <<"OK">>} = emqx_redis_storage:q(B, [<<"SET">>, <<"who">>, <<"b">>]),
        ?assertEqual({ok, <<"a">>}, emqx_redis_storage:q(A, [<<"GET">>, <<"who">>])),
        ?assertEqual({ok, <<"b">>}, emqx_redis_storage:q(B, [<<"GET">>, <<"who">>])),
        %% a client is usable from any process
        Parent = self(),
        spawn(fun() -> Parent ! {got, emqx_redis_storage:q(B, [<<"GET">>, <<"who">>])} end),
        receive
            {got, Got} -> ?assertEqual({ok, <<"b">>}, Got)
        after 5000 -> ct:fail(no_reply)
        end,
        explicit_clients(A, B)
    after
        redis_test_server:stop(Other)
    end.

%% Sessions, queues and the registry on a client passed in: each client sees
%% its own Redis only, and the functions without one use the default client.
explicit_clients(A, B) ->
    Id = <<"explicit">>,
    ok = emqx_redis_session:save_session(A, Id, #{on => a}, #{}),
    ok = emqx_redis_session:save_session(B, Id, #{on => b}, #{ttl => 60}),
    ?assertEqual({ok, #{on => a}}, emqx_redis_session:load_session(A, Id)),
    ?assertEqual({ok, #{on => b}}, emqx_redis_session:load_session(B, Id)),
    ?assertEqual({ok, 1}, emqx_redis_session:count_sessions(B)),
    ?assertEqual({ok, [Id]}, emqx_redis_session:list_sessions(B, 10, 0)),
    Node = node(),
    ?assertMatch({ok, #{node := Node}}, emqx_redis_session:session_info(B, Id)),
    {ok, Fence} = emqx_redis_session:acquire_lease(B, Id, node(), 5000),
    ?assertMatch({error, {held_by, _}}, emqx_redis_session:acquire_lease(B, Id, <<"other">>, 5000)),
    {ok, _} = emqx_redis_session:acquire_lease(A, Id, <<"other">>, 5000),
    ok = emqx_redis_session:renew_lease(B, Id, Fence, 5000),
    ok = emqx_redis_session:release_lease(B, Id, Fence),
    ok = emqx_redis_session:delete_session(B, Id),
    ?assertEqual({error, not_found}, emqx_redis_session:load_session(B, Id)),
    ?assertEqual({ok, #{on => a}}, emqx_redis_session:load_session(A, Id)),
    ?assertMatch({error, {invalid_client_id, _}}, emqx_redis_session:load_session(B, <<>>)),

    ok = emqx_redis_message:store_message(B, Id, #{id => <<"m1">>}),
    ok = emqx_redis_message:store_messages(B, Id, [#{id => <<"m2">>}]),
    ?assertEqual({ok, [#{id => <<"m1">>}, #{id => <<"m2">>}]}, emqx_redis_message:get_messages(B, Id, 0, 10)),
    ?assertEqual({ok, 0}, emqx_redis_message:count_messages(A, Id)),
    ok = emqx_redis_message:ack_message(B, Id, <<"m1">>),
    ?assertMatch({ok, #{len := 1}}, emqx_redis_message:queue_info(B, Id)),
    ok = emqx_redis_message:delete_messages(B, Id),
    ?assertEqual({ok, 0}, emqx_redis_message:count_messages(B, Id)),

    ok = emqx_redis_registry:register_channel(B, Id, node()),
    ?assertEqual({ok, node()}, emqx_redis_registry:lookup_channel(B, Id)),
    ?assertEqual({error, not_found}, emqx_redis_registry:lookup_channel(A, Id)),
    ok = emqx_redis_registry:unregister_channel(B, Id, node()),
    ok = emqx_redis_registry:register_channel(B, <<"explicit2">>, node()),
    ?assertEqual({ok, 1}, emqx_redis_registry:cleanup_node(B, node())),

    ok = emqx_redis_storage:stop(),
    ?assertEqual({error, not_started}, emqx_redis_session:load_session(Id)),
    ?assertEqual({error, not_started}, emqx_redis_message:count_messages(Id)),
    ?assertEqual({error, not_started}, emqx_redis_registry:lookup_channel(Id)),
    ok = emqx_redis_session:delete_session(A, Id).

redis_down_answers_within_deadline(_Config) ->
    Redis = redis_test_server:start(),
    try
        ok = emqx_redis_storage:start(#{
            redis => #{servers => redis_test_server:address(Redis), command_timeout => 1000, connect_timeout => 300}
        }),
        {ok, <<"PONG">>} = emqx_redis_storage:q([<<"PING">>]),
        redis_test_server:kill(Redis),
        lists:foreach(
            fun(_) ->
                {Micros, Result} = timer:tc(fun() -> emqx_redis_storage:q([<<"PING">>]) end),
                ?assertMatch({error, _}, Result),
                ?assert(Micros < 1500000, {took_us, Micros})
            end,
            lists:seq(1, 10)
        ),
        ?assertMatch(#{started := true, connected := false}, emqx_redis_storage:status())
    after
        redis_test_server:stop(Redis)
    end.

redis_restarted_calls_work_again(_Config) ->
    Redis = redis_test_server:start(),
    try
        ok = emqx_redis_storage:start(#{
            redis => #{servers => redis_test_server:address(Redis), command_timeout => 1000, connect_timeout => 300}
        }),
        {ok, <<"OK">>} = emqx_redis_storage:q([<<"SET">>, <<"before">>, <<"1">>]),
        ok = redis_test_server:restart(Redis),
        %% the pool reconnects by itself; a call may fail while it does
        ok = test_util:wait_until(fun() -> emqx_redis_storage:q([<<"PING">>]) =:= {ok, <<"PONG">>} end, 5000),
        %% every connection of the pool (4; 64 consecutive calls of a
        %% scheduler thread take one) dials again and answers, not just one
        ok = test_util:wait_until(
            fun() ->
                [?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])) || _ <- lists:seq(1, 64)],
                maps:get(reconnects, emqx_redis_storage:metrics()) >= 4
            end,
            10000
        ),
        ?assertMatch(#{reconnects := 4}, emqx_redis_storage:metrics()),
        [?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])) || _ <- lists:seq(1, 4 * 64)],
        ?assertMatch(#{connected := true}, emqx_redis_storage:status())
    after
        redis_test_server:stop(Redis)
    end.

many_concurrent_callers_get_their_own_replies(Config) ->
    ok = emqx_redis_storage:start(redis_config(Config)),
    Parent = self(),
    Procs = 200,
    PerProc = 50,
    Pids = [
        spawn_link(fun() ->
            Results = [
                begin
                    Token = term_to_binary({P, I, make_ref()}),
                    emqx_redis_storage:q([<<"ECHO">>, Token]) =:= {ok, Token}
                end
             || I <- lists:seq(1, PerProc)
            ],
            Parent ! {done, self(), lists:all(fun(X) -> X end, Results), process_info(self(), message_queue_len)}
        end)
     || P <- lists:seq(1, Procs)
    ],
    lists:foreach(
        fun(Pid) ->
            receive
                {done, Pid, AllMatched, QueueLen} ->
                    ?assert(AllMatched),
                    ?assertEqual({message_queue_len, 0}, QueueLen)
            after 60000 -> ct:fail({no_answer_from, Pid})
            end
        end,
        Pids
    ).

timed_out_replies_never_reach_the_mailbox(_Config) ->
    Redis = redis_test_server:start(),
    try
        {ok, Client} = emqx_redis_storage:connect(#{
            redis => #{servers => redis_test_server:address(Redis), command_timeout => 20}
        }),
        {ok, <<"PONG">>} = emqx_redis_storage:q(Client, [<<"PING">>]),
        ok = redis_test_server:pause(Redis),
        Results = [emqx_redis_storage:q(Client, [<<"SET">>, integer_to_binary(I), <<"x">>]) || I <- lists:seq(1, 1000)],
        ?assertEqual([{error, timeout}], lists:usort(Results)),
        ok = redis_test_server:resume(Redis),
        %% Redis now answers every queued command; none of it may arrive here.
        ok = test_util:wait_until(fun() -> emqx_redis_storage:q(Client, [<<"PING">>]) =:= {ok, <<"PONG">>} end, 5000),
        timer:sleep(500),
        ?assertEqual({messages, []}, process_info(self(), messages))
    after
        redis_test_server:stop(Redis)
    end.

%% Raw commands (answered from the connection's reader) and scripts and
%% pipelines (awaited in tasks) share the pool's connections. Calls that
%% time out while Redis is frozen leave their replies to come later; each
%% must be dropped in its place, so that every later call, of either kind,
%% still gets its own reply.
replies_stay_in_step_after_timeouts(_Config) ->
    Redis = redis_test_server:start(),
    try
        ok = emqx_redis_storage:start(#{
            redis => #{servers => redis_test_server:address(Redis), command_timeout => 300}
        }),
        ok = emqx_redis_session:save_session(<<"kept">>, #{n => 1}),
        ok = redis_test_server:pause(Redis),
        Frozen = in_parallel(64, fun(P) ->
            [
                case I rem 2 of
                    0 -> emqx_redis_storage:q([<<"ECHO">>, integer_to_binary(P * 1000 + I)]);
                    1 -> emqx_redis_session:load_session(<<"kept">>)
                end
             || I <- lists:seq(1, 4)
            ]
        end),
        ?assertEqual([{error, timeout}], lists:usort(lists:append(Frozen))),
        ok = redis_test_server:resume(Redis),
        Later = in_parallel(64, fun(P) ->
            lists:all(
                fun(I) ->
                    Token = term_to_binary({P, I, make_ref()}),
                    Echo = emqx_redis_storage:q([<<"ECHO">>, Token]),
                    Session = emqx_redis_session:load_session(<<"kept">>),
                    {Echo, Session} =:= {{ok, Token}, {ok, #{n => 1}}}
                end,
                lists:seq(1, 50)
            )
        end),
        ?assertEqual([true], lists:usort(Later))
    after
        redis_test_server:stop(Redis)
    end.

%% One connection: while a script keeps Redis busy for 300 ms, 100 callers
%% queue their calls on the connection behind it (they leave when its reply
%% comes); each gets its own answer.
calls_behind_a_slow_call_are_answered(Config) ->
    ok = emqx_redis_storage:start(#{
        redis => #{servers => redis_test_server:address(?config(redis, Config)), pool_size => 1}
    }),
    Busy = busy_script(300000),
    Parent = self(),
    Started = erlang:monotonic_time(millisecond),
    Slow = spawn_link(fun() -> Parent ! {slow, emqx_redis_storage:q([<<"EVAL">>, Busy, <<"0">>])} end),
    timer:sleep(50),
    Behind = in_parallel(100, fun(P) ->
        Token = integer_to_binary(P),
        {emqx_redis_storage:q([<<"ECHO">>, Token]) =:= {ok, Token}, erlang:monotonic_time(millisecond)}
    end),
    receive
        {slow, Reply} -> ?assertEqual({ok, <<"done">>}, Reply)
    after 10000 -> ct:fail({no_answer_from, Slow})
    end,
    ?assertEqual([true], lists:usort([Matched || {Matched, _} <- Behind])),
    %% They were behind it: Redis answered none while the script ran.
    ?assert(lists:min([At || {_, At} <- Behind]) >= Started + 300).

%% Redis dies while a script runs: that call's outcome is unknown
%% (`connection_lost'); the calls queued behind it on the connection never
%% left, so they are not done (`connection': Redis is unreachable when they
%% are sent again).
calls_queued_behind_a_lost_connection_are_not_done(_Config) ->
    Redis = redis_test_server:start(),
    try
        {ok, Client} = emqx_redis_storage:connect(#{
            redis => #{
                servers => redis_test_server:address(Redis),
                pool_size => 1,
                command_timeout => 5000,
                connect_timeout => 300
            }
        }),
        {ok, <<"PONG">>} = emqx_redis_storage:q(Client, [<<"PING">>]),
        Busy = busy_script(2000000),
        Parent = self(),
        _ = spawn_link(fun() -> Parent ! {slow, emqx_redis_storage:q(Client, [<<"EVAL">>, Busy, <<"0">>])} end),
        timer:sleep(100),
        Keys = [<<"behind-", (integer_to_binary(P))/binary>> || P <- lists:seq(1, 20)],
        Pids = [spawn_link(fun() -> Parent ! {self(), emqx_redis_storage:q(Client, [<<"SET">>, Key, <<"x">>])} end) || Key <- Keys],
        timer:sleep(200),
        redis_test_server:kill(Redis),
        receive
            {slow, Slow} -> ?assertMatch({error, {connection_lost, _}}, Slow)
        after 10000 -> ct:fail(no_answer_to_the_script)
        end,
        Behind = [
            receive
                {Pid, Result} -> Result
            after 10000 -> ct:fail({no_answer_from, Pid})
            end
         || Pid <- Pids
        ],
        ?assertEqual([connection], lists:usort([Kind || {error, {Kind, _}} <- Behind])),
        ?assertEqual(length(Pids), length([E || {error, _} = E <- Behind]))
    after
        redis_test_server:stop(Redis)
    end.

%% A script that keeps Redis busy for `Micros' and returns `done'.
busy_script(Micros) ->
    <<"local s = redis.call('TIME') local t repeat t = redis.call('TIME') "
      "until (t[1] - s[1]) * 1000000 + (t[2] - s[2]) > ", (integer_to_binary(Micros))/binary,
      " return 'done'">>.

%% Fun(P) for P in 1..N, each in its own process; the results in order.
in_parallel(N, Fun) ->
    Parent = self(),
    Pids = [spawn_link(fun() -> Parent ! {self(), Fun(P)} end) || P <- lists:seq(1, N)],
    [
        receive
            {Pid, Result} -> Result
        after 60000 -> ct:fail({no_answer_from, Pid})
        end
     || Pid <- Pids
    ].

panic_in_a_task_is_answered(Config) ->
    ok = emqx_redis_storage:start(redis_config(Config)),
    Start = fun(Ref) -> emqx_redis_storage_nif:panic_in_task(Ref) end,
    ?assertEqual(
        {error, {internal, <<"deliberate panic in a runtime task">>}},
        emqx_redis_storage_client:wait(Start, 5000)
    ),
    %% the runtime and its worker threads survive: many more panics, then real work
    [{error, {internal, _}} = emqx_redis_storage_client:wait(Start, 5000) || _ <- lists:seq(1, 10)],
    ?assertEqual({ok, <<"PONG">>}, emqx_redis_storage:q([<<"PING">>])).

%%--------------------------------------------------------------------

%% Below the ephemeral range: a connection to a closed ephemeral port can
%% connect to itself if the kernel gives it that port as its local port.
closed_port() -> loopback_port:free().

port_address(Port) -> iolist_to_binary(["127.0.0.1:", integer_to_list(Port)]).
