%% @doc The operators' commands: `status', `sessions', `queue', `routes',
%% `metrics', `prometheus', `backup' and `restore', one implementation for `emqx_ctl' (through
%% `emqx_redis_storage_cli:cmd/1') and for `bin/emqx-redis-storage': each
%% command gathers a report, rendered as a table for people or as JSON.
-module(emqx_redis_storage_cli_commands).

-export([run/3]).

-type format() :: human | json.
-export_type([format/0]).

-define(DEFAULT_SESSIONS, 100).
-define(DEFAULT_MESSAGES, 10).
-define(DEFAULT_ROUTES, 1000).

%% @doc Runs the command `Words' on `Client' and renders its report: `{ok,
%% Text}', `{error, Message}', or `{error, usage}' for words that are no command.
-spec run(emqx_redis_storage_client:t(), format(), [string()]) -> {ok, iodata()} | {error, usage | iodata()}.
run(Client, Format, Words) ->
    try report(Client, Words) of
        {ok, Report} -> {ok, render(Format, Report)};
        {error, Reason} -> {error, emqx_redis_storage_cli_format:error(Reason)}
    catch
        throw:usage -> {error, usage}
    end.

%% A report is `{Kind, Data}': Data holds only what JSON can show; session
%% and message terms are any terms, so they are shown as printed.
report(Client, ["status"]) ->
    {ok, {status, emqx_redis_storage:status(Client)}};
report(Client, ["sessions", "count"]) ->
    ok_report(count, fun(N) -> #{sessions => N} end, emqx_redis_session:count_sessions(Client));
report(Client, ["sessions", "list" | Limit]) ->
    ok_report(sessions, fun(Ids) -> Ids end,
        emqx_redis_session:list_sessions(Client, limit(Limit, ?DEFAULT_SESSIONS), 0));
report(Client, ["sessions", "show", Id]) ->
    ClientId = binary(Id),
    maybe_all([
        fun() -> emqx_redis_session:load_session(Client, ClientId) end,
        fun() -> emqx_redis_session:session_info(Client, ClientId) end
    ], fun([Session, Info]) ->
        {session, #{client_id => ClientId, session => emqx_redis_storage_json:printed(Session), info => Info}}
    end);
report(Client, ["queue", "show", Id | Limit]) ->
    ClientId = binary(Id),
    N = limit(Limit, ?DEFAULT_MESSAGES),
    maybe_all([
        fun() -> emqx_redis_message:queue_info(Client, ClientId) end,
        fun() -> emqx_redis_message:get_messages(Client, ClientId, 0, N) end
    ], fun([Info, Messages]) ->
        Shown = [#{id => MsgId, message => emqx_redis_storage_json:printed(Msg)} || #{id := MsgId} = Msg <- Messages],
        {queue, #{client_id => ClientId, info => Info, messages => Shown}}
    end);
report(Client, ["routes", "list" | Limit]) ->
    case emqx_redis_router:topics(Client) of
        {ok, Filters} ->
            Shown = lists:sublist(lists:sort(Filters), limit(Limit, ?DEFAULT_ROUTES)),
            maybe_all(
                [fun() -> emqx_redis_router:lookup_routes(Client, F) end || F <- Shown],
                fun(Dests) ->
                    Routes = [#{filter => F, dests => dests(D)} || {F, D} <- lists:zip(Shown, Dests)],
                    {routes, #{total => length(Filters), routes => Routes}}
                end
            );
        {error, _} = Error ->
            Error
    end;
report(Client, ["routes", "match", Topic]) ->
    ok_report(matches, fun(Dests) -> #{topic => binary(Topic), dests => dests(Dests)} end,
        emqx_redis_router:match_routes(Client, binary(Topic)));
report(Client, ["metrics"]) ->
    case emqx_redis_storage:metrics(Client) of
        #{operations := Ops} = Metrics ->
            {ok, {metrics, Metrics#{operations := maps:map(fun(_, Op) -> buckets_as_maps(Op) end, Ops)}}};
        {error, _} = Error ->
            Error
    end;
report(Client, ["prometheus"]) ->
    case emqx_redis_storage:prometheus(Client) of
        {error, _} = Error -> Error;
        Text -> {ok, {prometheus, Text}}
    end;
report(Client, ["backup", File]) ->
    ok_report(backup, fun(Done) -> Done#{file => binary(File)} end,
        with_progress(fun(Progress) -> emqx_redis_storage:backup(Client, File, #{progress => Progress}) end));
report(Client, ["restore", File | Flags]) ->
    Mode =
        case Flags of
            [] -> fail_if_exists;
            ["--replace"] -> replace;
            _ -> throw(usage)
        end,
    ok_report(restore, fun(Done) -> Done#{file => binary(File)} end,
        with_progress(fun(Progress) -> emqx_redis_storage:restore(Client, File, #{mode => Mode, progress => Progress}) end));
report(_Client, _Words) ->
    throw(usage).

%% A progress line on the terminal, when bin/emqx-redis-storage runs on one
%% (it sets EMQX_REDIS_STORAGE_PROGRESS); ended once the work is done.
with_progress(Run) ->
    case os:getenv("EMQX_REDIS_STORAGE_PROGRESS") of
        "1" ->
            Line = fun(Phase, Keys, Bytes) ->
                io:put_chars(standard_error, emqx_redis_storage_cli_format:progress(Phase, Keys, Bytes))
            end,
            Result = Run(Line),
            io:put_chars(standard_error, "\n"),
            Result;
        _ ->
            Run(fun(_, _, _) -> ok end)
    end.

ok_report(Kind, Data, {ok, Value}) -> {ok, {Kind, Data(Value)}};
ok_report(_Kind, _Data, {error, _} = Error) -> Error.

%% Runs the calls in order and stops at the first error.
maybe_all(Calls, Make) ->
    maybe_all(Calls, Make, []).

maybe_all([], Make, Values) ->
    {ok, Make(lists:reverse(Values))};
maybe_all([Call | Calls], Make, Values) ->
    case Call() of
        {ok, Value} -> maybe_all(Calls, Make, [Value | Values]);
        {error, _} = Error -> Error
    end.

%% Latency buckets as `#{le_us, count}' maps, which JSON shows as objects.
buckets_as_maps(#{latency := #{buckets := Buckets} = Latency} = Op) ->
    Op#{latency := Latency#{buckets := [#{le_us => Le, count => N} || {Le, N} <- Buckets]}}.

dests(Dests) ->
    [dest(D) || D <- Dests].

dest({Group, Node}) -> #{group => Group, node => Node};
dest(Node) -> #{node => Node}.

limit([], Default) ->
    Default;
limit([Text], _Default) ->
    case string:to_integer(binary(Text)) of
        {N, <<>>} when N > 0 -> N;
        _ -> throw(usage)
    end;
limit(_Words, _Default) ->
    throw(usage).

%% Command-line words are characters (or bytes, in a Latin-1 VM); emqx_ctl
%% hands over whatever it was given.
binary(Word) ->
    try unicode:characters_to_binary(Word) of
        Bin when is_binary(Bin) -> Bin;
        _ -> throw(usage)
    catch
        error:_ -> throw(usage)
    end.

render(json, {prometheus, Text}) ->
    [emqx_redis_storage_json:encode(#{text => iolist_to_binary(Text)}), $\n];
render(json, {_Kind, Data}) ->
    [emqx_redis_storage_json:encode(Data), $\n];
render(human, Report) ->
    emqx_redis_storage_cli_format:human(Report).
