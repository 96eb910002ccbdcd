%% Rate limits (emqx_redis_limiter): a token bucket per limiter and key in
%% Redis, exact across VMs when every check goes to Redis, within one batch
%% per VM with local batches, decided by `on_redis_down' when Redis is
%% gone, on Redis's clock only; and config and argument errors that say
%% what is wrong.
-module(emqx_redis_limiter_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-define(L, emqx_redis_limiter).
-define(PEERS, 3).

all() ->
    [
        config_errors_name_the_field,
        config_limiters_are_defined_at_start,
        wrong_arguments_are_errors,
        bucket_admits_burst_then_refills,
        idle_bucket_expires,
        exact_across_vms_without_batches,
        batches_stay_within_one_batch_per_vm,
        only_redis_clock_is_read,
        redis_killed_checks_answer_per_policy
    ].

init_per_suite(Config) ->
    Redis = redis_test_server:start(),
    Addr = redis_test_server:address(Redis),
    Peers = limiter_test_peer:start(?PEERS, #{redis => #{servers => Addr}}),
    [{redis, Redis}, {addr, Addr}, {peers, Peers} | Config].

end_per_suite(Config) ->
    limiter_test_peer:stop(?config(peers, Config)),
    redis_test_server:stop(?config(redis, Config)).

init_per_testcase(config_errors_name_the_field, Config) ->
    Config;
init_per_testcase(_Case, Config) ->
    ok = emqx_redis_storage:start(#{redis => #{servers => ?config(addr, Config)}}),
    Config.

end_per_testcase(_Case, _Config) ->
    ok = emqx_redis_storage:stop().

unique(Prefix) ->
    iolist_to_binary([Prefix, integer_to_list(erlang:unique_integer([positive]))]).

%% Defines `Name' on this VM and on every peer.
define_everywhere(Config, Name, Limit) ->
    ok = ?L:define(Name, Limit),
    [ok = peer:call(Peer, ?L, define, [Name, Limit]) || Peer <- ?config(peers, Config)],
    ok.

%% Redis's clock, in ms.
redis_ms() ->
    {ok, [Secs, Micros]} = emqx_redis_storage:q([<<"TIME">>]),
    binary_to_integer(Secs) * 1000 + binary_to_integer(Micros) div 1000.

%%--------------------------------------------------------------------

config_errors_name_the_field(Config) ->
    Redis = #{servers => ?config(addr, Config)},
    Bad = [
        {#{on_redis_down => maybe}, <<"limiter.on_redis_down">>},
        {#{limiters => [a]}, <<"limiter.limiters">>},
        {#{limiters => #{conn => #{burst => 1}}}, <<"limiter.limiters.conn.rate">>},
        {#{limiters => #{<<"conn">> => #{rate => 1}}}, <<"limiter.limiters.conn.burst">>},
        {#{limiters => #{conn => #{rate => 0, burst => 1}}}, <<"limiter.limiters.conn.rate">>},
        {#{limiters => #{conn => #{rate => 1, burst => 1, batch => 2}}}, <<"limiter.limiters.conn.batch">>},
        {#{limiters => #{conn => #{rate => 1, burst => 1, cost => 2}}}, <<"limiter.limiters.conn.cost">>},
        {#{limiters => #{<<>> => #{rate => 1, burst => 1}}}, <<"limiter.limiters.">>},
        {#{bogus => 1}, <<"limiter.bogus">>}
    ],
    [
        ?assertMatch({error, {invalid_config, Field, _}}, emqx_redis_storage:start(#{redis => Redis, limiter => L}), L)
     || {L, Field} <- Bad
    ],
    {error, {invalid_config, _, Required}} =
        emqx_redis_storage:start(#{redis => Redis, limiter => #{limiters => #{c => #{burst => 1}}}}),
    ?assertEqual(<<"required: an integer from 1 to 1000000000">>, Required).

%% The config's limiters are there once the application runs (names as
%% atoms or binaries, as HOCON gives them), and `define/2' changes one
%% while its counters go on.
config_limiters_are_defined_at_start(Config) ->
    ok = emqx_redis_storage:stop(),
    Limiters = #{conn => #{rate => 1, burst => 2}, <<"pub">> => #{rate => 10, burst => 1, batch => 1}},
    ok = emqx_redis_storage:start(#{redis => #{servers => ?config(addr, Config)}, limiter => #{limiters => Limiters}}),
    Key = unique(<<"c">>),
    ?assertEqual([{ok, 1}, {ok, 0}], [?L:check(<<"conn">>, Key, 1) || _ <- [1, 2]]),
    ?assertMatch({error, {limited, _}}, ?L:check(<<"conn">>, Key, 1)),
    ?assertMatch({ok, _}, ?L:check(<<"pub">>, Key, 1)),
    %% A larger bucket: a cost of 5 is allowed now, and waits for the
    %% tokens the bucket did not have.
    ok = ?L:define(<<"conn">>, #{rate => 1, burst => 10}),
    {error, {limited, Retry}} = ?L:check(<<"conn">>, Key, 5),
    ?assert(Retry > 4000 andalso Retry =< 5000, Retry),
    ?assertMatch(
        #{<<"conn">> := #{checks := 4, limited := 2, errors := 0}, <<"pub">> := #{checks := 1}},
        maps:get(limiters, emqx_redis_storage:metrics())
    ).

wrong_arguments_are_errors(_Config) ->
    ok = ?L:define(<<"w">>, #{rate => 1, burst => 3}),
    Checks = [
        {{unknown_limiter, <<"nope">>}, [<<"nope">>, <<"k">>, 1]},
        {{invalid_cost, #{cost => 4, burst => 3}}, [<<"w">>, <<"k">>, 4]},
        {{invalid_cost, -1}, [<<"w">>, <<"k">>, -1]},
        {{invalid_cost, 1.0}, [<<"w">>, <<"k">>, 1.0]},
        {{invalid_limiter_key, <<>>}, [<<"w">>, <<>>, 1]},
        {{invalid_limiter_key, "k"}, [<<"w">>, "k", 1]},
        {{invalid_limiter_key, <<0:(65536 * 8)>>}, [<<"w">>, <<0:(65536 * 8)>>, 1]},
        {{invalid_limiter_name, w}, [w, <<"k">>, 1]}
    ],
    [?assertEqual({error, Reason}, apply(?L, check, Args)) || {Reason, Args} <- Checks],
    ?assertMatch({error, {invalid_client, nope}}, ?L:check(nope, <<"w">>, <<"k">>, 1)),
    Defines = [
        {#{rate => 1}, <<"burst">>},
        {#{rate => -1, burst => 1}, <<"rate">>},
        {#{rate => 1, burst => 1 bsl 40}, <<"burst">>},
        {#{rate => 1, burst => 2, batch => 3}, <<"batch">>},
        {#{rate => 1, burst => 2, on_redis_down => deny}, <<"on_redis_down">>}
    ],
    [
        ?assertMatch({error, {invalid_limiter, #{name := <<"w">>, field := Field}}}, ?L:define(<<"w">>, Limit))
     || {Limit, Field} <- Defines
    ],
    ?assertMatch({error, {invalid_limiter, #{field := <<>>}}}, ?L:define(<<"w">>, [rate])),
    ?assertEqual({error, {invalid_limiter_name, <<>>}}, ?L:define(<<>>, #{rate => 1, burst => 1})),
    ?assertEqual({error, {unknown_limiter, <<"nope">>}}, ?L:reset(<<"nope">>, <<"k">>)),
    ?assertEqual({error, {invalid_limiter_key, 1}}, ?L:reset(<<"w">>, 1)),
    %% The failed definitions left the limiter as it was.
    ?assertEqual({ok, 2}, ?L:check(<<"w">>, <<"k">>, 1)).

%% Exact without batches: the burst, then the time until the next token;
%% a cost takes that many; a cost of 0 only looks; a reset fills the bucket.
bucket_admits_burst_then_refills(_Config) ->
    ok = ?L:define(<<"b">>, #{rate => 2, burst => 5}),
    Key = unique(<<"k">>),
    ?assertEqual({ok, 5}, ?L:check(<<"b">>, Key, 0)),
    ?assertEqual([{ok, 4}, {ok, 3}], [?L:check(<<"b">>, Key, 1) || _ <- [1, 2]]),
    ?assertEqual({ok, 0}, ?L:check(<<"b">>, Key, 3)),
    {error, {limited, Retry}} = ?L:check(<<"b">>, Key, 1),
    ?assert(Retry > 0 andalso Retry =< 500, Retry),
    %% Two tokens need twice as long.
    {error, {limited, Retry2}} = ?L:check(<<"b">>, Key, 2),
    ?assert(Retry2 > 500 andalso Retry2 =< 1000, Retry2),
    timer:sleep(Retry),
    ?assertEqual({ok, 0}, ?L:check(<<"b">>, Key, 1)),
    ok = ?L:reset(<<"b">>, Key),
    ?assertEqual({ok, 0}, ?L:check(<<"b">>, Key, 5)),
    ?assertMatch(#{<<"b">> := #{limited := 2, errors := 0, local := 0}}, maps:get(limiters, emqx_redis_storage:metrics())).

%% A bucket's key lives only until the bucket is full again: an idle key
%% costs Redis no memory, and comes back full.
idle_bucket_expires(_Config) ->
    ok = ?L:define(<<"idle">>, #{rate => 10, burst => 5}),
    Key = unique(<<"k">>),
    {ok, 0} = ?L:check(<<"idle">>, Key, 5),
    RedisKey = <<"emqx:lim:idle:{", Key/binary, "}">>,
    {ok, Ttl} = emqx_redis_storage:q([<<"PTTL">>, RedisKey]),
    ?assert(Ttl > 0 andalso Ttl =< 500, Ttl),
    ok = test_util:wait_until(fun() -> emqx_redis_storage:q([<<"EXISTS">>, RedisKey]) =:= {ok, 0} end, 5000),
    ?assertEqual({ok, 4}, ?L:check(<<"idle">>, Key, 1)).

%% Four VMs of four processes each check one key as fast as they can for
%% a second: exactly the burst plus what the rate gave back meanwhile is
%% admitted.
exact_across_vms_without_batches(Config) ->
    Name = unique(<<"exact">>),
    ok = define_everywhere(Config, Name, #{rate => 5, burst => 100}),
    Key = unique(<<"k">>),
    Before = redis_ms(),
    {Admitted, Limited} = limiter_test_peer:hammer([self | ?config(peers, Config)], {Name, Key, 4, 0, 1000}),
    After = redis_ms(),
    Refilled = 5 * (After - Before) div 1000,
    ct:pal("admitted ~b, limited ~b in ~b ms (Redis clock)", [Admitted, Limited, After - Before]),
    ?assert(Limited > 0),
    ?assert(Admitted >= 100 andalso Admitted =< 100 + Refilled + 1, {Admitted, Refilled}).

%% With batches of 20: every VM holds a batch while the bucket refills to
%% full, then all hammer the key. In that window the cluster admits at
%% most the bucket plus one batch per VM; over the whole run, never more
%% than the bucket gave (burst + rate x time).
batches_stay_within_one_batch_per_vm(Config) ->
    Name = unique(<<"batch">>),
    {Rate, Burst, Batch, Vms} = {200, 100, 20, ?PEERS + 1},
    ok = define_everywhere(Config, Name, #{rate => Rate, burst => Burst, batch => Batch}),
    Key = unique(<<"k">>),
    Start = redis_ms(),
    First = Vms,
    {ok, _} = ?L:check(Name, Key, 1),
    [{ok, _} = peer:call(P, ?L, check, [Name, Key, 1]) || P <- ?config(peers, Config)],
    %% The bucket is full again long before a batch is too old to spend.
    timer:sleep(600),
    Before = redis_ms(),
    {Admitted, _} = limiter_test_peer:hammer([self | ?config(peers, Config)], {Name, Key, 4, 0, 300}),
    After = redis_ms(),
    WindowBound = Burst + Vms * Batch + Rate * (After - Before) div 1000,
    RunBound = Burst + Rate * (After - Start) div 1000,
    ct:pal("window: admitted ~b, bound ~b; run: admitted ~b, bound ~b", [
        Admitted, WindowBound, First + Admitted, RunBound
    ]),
    ?assert(Admitted =< WindowBound, {Admitted, WindowBound}),
    ?assert(First + Admitted =< RunBound, {First + Admitted, RunBound}),
    #{Name := #{local := Local}} = maps:get(limiters, emqx_redis_storage:metrics()),
    ?assert(Local > 0, Local),
    %% A look (cost 0) asks Redis, whatever this VM's batch holds.
    {ok, 1} = emqx_redis_storage:q([<<"DEL">>, <<"emqx:lim:", Name/binary, ":{", Key/binary, "}">>]),
    ?assertEqual({ok, Burst}, ?L:check(Name, Key, 0)).

%% What Redis sees of checks from two VMs: the script's arguments are the
%% limit, the cost and the tokens wanted, never a time; the script reads
%% Redis's TIME, and the bucket's time is Redis's. A VM's clock, however
%% far off, cannot change a check.
only_redis_clock_is_read(Config) ->
    Name = unique(<<"clock">>),
    ok = define_everywhere(Config, Name, #{rate => 7, burst => 9}),
    Key = unique(<<"k">>),
    {ok, Monitor} = gen_tcp:connect("127.0.0.1", redis_test_server:port(?config(redis, Config)), [binary, {active, false}]),
    ok = gen_tcp:send(Monitor, <<"MONITOR\r\n">>),
    {ok, <<"+OK\r\n">>} = gen_tcp:recv(Monitor, 5, 5000),
    Before = redis_ms(),
    {ok, 8} = ?L:check(Name, Key, 1),
    [Peer | _] = ?config(peers, Config),
    {ok, 6} = peer:call(Peer, ?L, check, [Name, Key, 2]),
    After = redis_ms(),
    {ok, At} = emqx_redis_storage:q([<<"HGET">>, <<"emqx:lim:", Name/binary, ":{", Key/binary, "}">>, <<"at">>]),
    ?assert(binary_to_integer(At) >= Before andalso binary_to_integer(At) =< After, {Before, At, After}),
    Lines = monitor_lines(Monitor, <<>>),
    ok = gen_tcp:close(Monitor),
    ct:log("~p", [Lines]),
    Evals = [I || {I, L} <- lists:enumerate(Lines), is_eval_of(Key, L)],
    ?assertMatch([_, _], Evals),
    [
        begin
            ?assertMatch([_Sha, <<"1">>, _Bucket, <<"7">>, <<"9">>, Cost, Cost], args_after(<<"EVALSHA">>, lists:nth(I, Lines))),
            %% The script's own commands follow: its read, then Redis's TIME.
            ?assertMatch([<<_/binary>>, <<_/binary>>], lists:sublist(Lines, I + 1, 2)),
            ?assertNotEqual(nomatch, binary:match(lists:nth(I + 2, Lines), <<"lua] \"TIME\"">>))
        end
     || I <- Evals
    ].

is_eval_of(Key, Line) ->
    binary:match(Line, <<"\"EVALSHA\"">>) =/= nomatch andalso binary:match(Line, Key) =/= nomatch.

%% MONITOR lines up to the test's HGET of the bucket, which comes last.
monitor_lines(Socket, Buffer) ->
    Lines = binary:split(Buffer, <<"\r\n">>, [global, trim_all]),
    case [L || L <- Lines, binary:match(L, <<"\"HGET\"">>) =/= nomatch] of
        [_ | _] ->
            Lines;
        [] ->
            {ok, More} = gen_tcp:recv(Socket, 0, 5000),
            monitor_lines(Socket, <<Buffer/binary, More/binary>>)
    end.

%% The quoted arguments after `Command' in a MONITOR line.
args_after(Command, Line) ->
    [_, Rest] = binary:split(Line, <<"\"", Command/binary, "\" ">>),
    [A || A <- binary:split(Rest, <<"\"">>, [global]), A =/= <<>>, A =/= <<" ">>].

%% Redis killed while checks run: every check is answered at once per the
%% client's on_redis_down (allow: `{ok, 0}'; deny: limited), counted as an
%% error of the limiter, logged rate-bounded; once Redis is back, checks go
%% to Redis again by themselves.
redis_killed_checks_answer_per_policy(_Config) ->
    Redis = redis_test_server:start(),
    ok = test_util:add_log_handler(),
    try
        Connect = fun(Down) ->
            {ok, Client} = emqx_redis_storage:connect(#{
                redis => #{servers => redis_test_server:address(Redis), connect_timeout => 500, command_timeout => 1000},
                limiter => #{on_redis_down => Down, limiters => #{<<"down">> => #{rate => 1, burst => 1000}}}
            }),
            Client
        end,
        Allow = Connect(allow),
        Deny = Connect(deny),
        {ok, 999} = ?L:check(Allow, <<"down">>, <<"k">>, 1),
        {ok, 998} = ?L:check(Deny, <<"down">>, <<"k">>, 1),
        Parent = self(),
        Checker = spawn_link(fun() -> checker(Parent, Allow, Deny, []) end),
        timer:sleep(100),
        ok = redis_test_server:kill(Redis),
        ok = test_util:wait_until(fun() -> maps:get(breaker, emqx_redis_storage:status(Allow)) =:= open end, 5000),
        %% The checker goes on a while with Redis gone.
        timer:sleep(300),
        Checker ! {self(), report},
        Answers = receive {Checker, A} -> A end,
        ct:log("~b answers: ~p", [length(Answers), lists:usort(Answers)]),
        %% Checks under way when Redis died were answered, by Redis or by
        %% the policy: never an error, never a crash.
        ?assertEqual([], [R || {_, R} <- Answers, not is_decision(R)]),
        ?assert(lists:member({allow, {ok, 0}}, Answers)),
        ?assert(lists:member({deny, {error, {limited, 1000}}}, Answers)),
        %% While the breaker is open: the policy, at once, every time.
        OpenAllow = [?L:check(Allow, <<"down">>, <<"k">>, 1) || _ <- lists:seq(1, 200)],
        OpenDeny = [?L:check(Deny, <<"down">>, <<"k">>, 1) || _ <- lists:seq(1, 200)],
        ?assertEqual([{ok, 0}], lists:usort(OpenAllow)),
        ?assertEqual([{error, {limited, 1000}}], lists:usort(OpenDeny)),
        ?assertEqual(open, maps:get(breaker, emqx_redis_storage:status(Allow))),
        #{limiters := #{<<"down">> := #{errors := AllowErrors}}} = emqx_redis_storage:metrics(Allow),
        #{limiters := #{<<"down">> := #{errors := DenyErrors}}} = emqx_redis_storage:metrics(Deny),
        ?assert(AllowErrors >= 200 andalso DenyErrors >= 200, {AllowErrors, DenyErrors}),
        Logged = flush_reports(<<"limiter_unanswered">>, 0),
        ct:log("limiter_unanswered logged ~b times for ~b errors", [Logged, AllowErrors + DenyErrors]),
        ?assert(Logged > 0 andalso Logged < (AllowErrors + DenyErrors) div 4, {Logged, AllowErrors + DenyErrors}),
        ok = redis_test_server:restart(Redis),
        ok = test_util:wait_until(fun() -> ?L:check(Allow, <<"down">>, <<"k">>, 1) =:= {ok, 999} end, 10000),
        %% The same bucket (one prefix): less a token, or refilled by one.
        ?assertMatch({ok, N} when N >= 998, ?L:check(Deny, <<"down">>, <<"k">>, 1))
    after
        ok = logger:remove_handler(test_util),
        redis_test_server:stop(Redis)
    end.

is_decision({ok, N}) -> is_integer(N);
is_decision({error, {limited, Ms}}) -> is_integer(Ms);
is_decision(_) -> false.

%% Checks both clients in a loop until asked for what it got.
checker(Parent, Allow, Deny, Acc) ->
    receive
        {Parent, report} -> Parent ! {self(), lists:reverse(Acc)}
    after 0 ->
        A = {allow, ?L:check(Allow, <<"down">>, <<"k">>, 1)},
        D = {deny, ?L:check(Deny, <<"down">>, <<"k">>, 1)},
        timer:sleep(5),
        checker(Parent, Allow, Deny, [D, A | Acc])
    end.

flush_reports(Msg, N) ->
    receive
        {report, _Level, #{msg := Msg}} -> flush_reports(Msg, N + 1);
        {report, _Level, _} -> flush_reports(Msg, N)
    after 1500 -> N
    end.
