%% Small helpers shared by the suites.
-module(test_util).

-export([wait_until/2, wait_ok/2, chunks/2, pmap/2, project_root/0, run/3, while_busy/3, captured/1]).
-export([add_log_handler/0, log/2]).

%% @doc Polls until Fun() returns true (an exception counts as false) or
%% Ms of wall-clock time have passed.
-spec wait_until(fun(() -> term()), non_neg_integer()) -> ok | {error, timeout}.
wait_until(Fun, Ms) ->
    poll(Fun, erlang:monotonic_time(millisecond) + Ms).

poll(Fun, Deadline) ->
    case catch Fun() of
        true ->
            ok;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true ->
                    {error, timeout};
                false ->
                    timer:sleep(20),
                    poll(Fun, Deadline)
            end
    end.

%% @doc Polls until Fun() returns ok.
-spec wait_ok(fun(() -> term()), non_neg_integer()) -> ok | {error, timeout}.
wait_ok(Fun, Ms) ->
    wait_until(fun() -> Fun() =:= ok end, Ms).

-spec chunks(list(), pos_integer()) -> [list()].
chunks([], _N) -> [];
chunks(L, N) when length(L) =< N -> [L];
chunks(L, N) ->
    {H, T} = lists:split(N, L),
    [H | chunks(T, N)].

%% @doc Fun applied to every item, each in its own linked process; results in order.
-spec pmap(fun((term()) -> term()), list()) -> list().
pmap(Fun, Items) ->
    Parent = self(),
    Refs = [
        begin
            Ref = make_ref(),
            spawn_link(fun() -> Parent ! {Ref, Fun(Item)} end),
            Ref
        end
     || Item <- Items
    ],
    [
        receive
            {Ref, R} -> R
        after 120000 -> error(pmap_timeout)
        end
     || Ref <- Refs
    ].

%% @doc The checkout under test (the Makefile exports it; else found from ebin).
-spec project_root() -> file:filename().
project_root() ->
    case os:getenv("EMQX_REDIS_STORAGE_ROOT") of
        false ->
            %% _build/test/lib/emqx_redis_storage/ebin -> the checkout
            Ebin = filename:dirname(code:which(emqx_redis_storage)),
            filename:absname(filename:join(Ebin, "../../../../.."));
        Root ->
            Root
    end.

%% @doc `{ExitStatus, Output}' of a program (a path, or a name on PATH) run
%% with `#{cd => Dir, env => [{Name, Value}], timeout => Ms}'.
-spec run(string(), [string()], map()) -> {non_neg_integer(), string()}.
run(Program, Args, Opts) ->
    Exe =
        case filename:pathtype(Program) of
            absolute -> Program;
            _ -> os:find_executable(Program)
        end,
    Port = open_port(
        {spawn_executable, Exe},
        [
            {args, Args},
            {env, maps:get(env, Opts, [])},
            {cd, maps:get(cd, Opts, project_root())},
            exit_status,
            stderr_to_stdout,
            binary
        ]
    ),
    collect(Port, maps:get(timeout, Opts, 600000), []).

collect(Port, Timeout, Acc) ->
    receive
        {Port, {data, Data}} ->
            collect(Port, Timeout, [Data | Acc]);
        {Port, {exit_status, Status}} ->
            {Status, unicode:characters_to_list(iolist_to_binary(lists:reverse(Acc)))}
    after Timeout ->
        error({command_timeout, iolist_to_binary(lists:reverse(Acc))})
    end.

%% Runs `Calls' concurrently while Redis is busy with a slow script sent by
%% `Q' (a raw command function, such as `emqx_redis_storage:q/1' or a
%% client's), EVALed with `Keys' so that a cluster runs it where they live:
%% calls sent meanwhile wait, and those of one script queue up for a group
%% commit. Their results, in the calls' order.
while_busy(Q, Keys, Calls) ->
    Script = <<"local t = redis.call('TIME') local until_us = t[1] * 1000000 + t[2] + tonumber(ARGV[1]) "
               "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= until_us return 1">>,
    Eval = [<<"EVAL">>, Script, integer_to_binary(length(Keys)) | Keys] ++ [<<"300000">>],
    {_, Ref} = spawn_monitor(fun() -> exit({busy, Q(Eval)}) end),
    timer:sleep(50),
    Parent = self(),
    Pids = [spawn_link(fun() -> Parent ! {self(), Call()} end) || Call <- Calls],
    Results = [receive {Pid, R} -> R after 10000 -> error({timeout, Pid}) end || Pid <- Pids],
    receive
        {'DOWN', Ref, process, _, {busy, {ok, 1}}} -> Results;
        {'DOWN', Ref, process, _, Other} -> error({busy_script, Other})
    after 10000 -> error(busy_script)
    end.

%% What `cmd/1' prints, caught as the group leader sees it.
captured(Args) ->
    Self = self(),
    Leader = group_leader(),
    Catcher = spawn_link(fun() -> catch_io(Self, []) end),
    group_leader(Catcher, self()),
    try
        ok = emqx_redis_storage_cli:cmd(Args)
    after
        group_leader(Leader, self())
    end,
    Catcher ! {done, Self},
    receive
        {caught, Text} -> Text
    end.

catch_io(Owner, Acc) ->
    receive
        {io_request, From, Ref, {put_chars, Encoding, Chars}} ->
            From ! {io_reply, Ref, ok},
            catch_io(Owner, [unicode:characters_to_list(Chars, Encoding) | Acc]);
        {io_request, From, Ref, {put_chars, Encoding, M, F, A}} ->
            From ! {io_reply, Ref, ok},
            catch_io(Owner, [unicode:characters_to_list(apply(M, F, A), Encoding) | Acc]);
        {done, Owner} ->
            Owner ! {caught, lists:append(lists:reverse(Acc))}
    end.

%% @doc A logger handler that sends the library's reports to the calling
%% process as `{report, Level, Report}'; removed with
%% `logger:remove_handler(test_util)'.
-spec add_log_handler() -> ok | {error, term()}.
add_log_handler() ->
    logger:add_handler(?MODULE, ?MODULE, #{
        level => all,
        filters => [{domain, {fun logger_filters:domain/2, {stop, not_equal, [emqx_redis_storage]}}}],
        config => #{pid => self()}
    }).

%% @doc The handler's callback.
-spec log(logger:log_event(), logger:handler_config()) -> term().
log(#{level := Level, msg := {report, Report}}, #{config := #{pid := Pid}}) ->
    Pid ! {report, Level, Report};
log(_Event, _Config) ->
    ok.
