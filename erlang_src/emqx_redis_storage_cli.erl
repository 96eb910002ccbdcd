%% @doc The operators' commands: `status', `sessions', `queue', `routes',
%% `metrics' and `prometheus', for EMQX's `emqx_ctl' (`cmd/1', on the
%% application's default client) and for `bin/emqx-redis-storage' (`run/3',
%% on a client of its own). One implementation for both: each command
%% gathers a report, which is printed as a table for people or as JSON.
%%
%% Register with EMQX:
%% `emqx_ctl:register_command(redis_storage, {emqx_redis_storage_cli, cmd}, [])'.
-module(emqx_redis_storage_cli).

-export([cmd/1, run/3, usage/0]).

-type format() :: human | json.
-export_type([format/0]).

-define(DEFAULT_SESSIONS, 100).
-define(DEFAULT_MESSAGES, 10).
-define(DEFAULT_ROUTES, 1000).

%% @doc The `emqx_ctl' entry: `Args' are the words after the command name,
%% optionally led by `--json'. Prints through `emqx_ctl:print/2' inside
%% EMQX, else `io:format/2'.
-spec cmd(term()) -> ok.
cmd(Args) ->
    {Format, Words} = format(Args),
    Output =
        case emqx_redis_storage_client:default() of
            {ok, Client} ->
                case run(Client, Format, Words) of
                    {ok, Text} -> Text;
                    {error, usage} -> usage();
                    {error, Message} -> [Message, $\n]
                end;
            {error, not_started} ->
                "emqx_redis_storage is not started\n"
        end,
    print(Output).

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

-spec usage() -> iodata().
usage() ->
    [
        "Commands:\n",
        "  status                       the connection to Redis and its health\n",
        "  sessions count               how many sessions are stored\n",
        "  sessions list [N]            the first N client ids (default 100)\n",
        "  sessions show ClientId       a session's term and its info\n",
        "  queue show ClientId [N]      a queue's info and its first N messages (default 10)\n",
        "  routes list [N]              the first N route filters and their dests (default 1000)\n",
        "  routes match Topic           the dests of the routes matching a topic\n",
        "  metrics                      the client's counters\n",
        "  prometheus                   the same in the Prometheus text format\n",
        "Add --json before the command for JSON output.\n"
    ].

format(["--json" | Words]) when is_list(Words) -> {json, Words};
format(Words) when is_list(Words) -> {human, Words};
format(_NotWords) -> {human, []}.

%% A report is `{Kind, Data}': Data holds only what JSON can show; session
%% and message terms are any terms, so they are shown as printed.
report(Client, ["status"]) ->
    case emqx_redis_storage:status(Client) of
        #{} = Status -> {ok, {status, Status}}
    end;
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
    optional(metrics, Client);
report(Client, ["prometheus"]) ->
    optional(prometheus, Client);
report(_Client, _Words) ->
    throw(usage).

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

%% `metrics/1' and `prometheus/1' come with the metrics work; a build
%% without them says so rather than crash.
optional(Fun, Client) ->
    _ = code:ensure_loaded(emqx_redis_storage),
    case erlang:function_exported(emqx_redis_storage, Fun, 1) of
        true ->
            case apply(emqx_redis_storage, Fun, [Client]) of
                {error, _} = Error -> Error;
                Result -> {ok, {Fun, Result}}
            end;
        false ->
            {error, {not_available, Fun}}
    end.

dests(Dests) ->
    [dest(D) || D <- Dests].

dest({Group, Node}) -> #{group => Group, node => Node};
dest(Node) -> #{node => Node}.

limit([], Default) ->
    Default;
limit([Text], _Default) ->
    case string:to_integer(Text) of
        {N, []} when N > 0 -> N;
        _ -> throw(usage)
    end;
limit(_Words, _Default) ->
    throw(usage).

%% Command-line words are characters (or bytes, in a Latin-1 VM).
binary(Word) ->
    case unicode:characters_to_binary(Word) of
        Bin when is_binary(Bin) -> Bin;
        _ -> throw(usage)
    end.

render(json, {prometheus, Text}) ->
    [emqx_redis_storage_json:encode(#{text => iolist_to_binary(Text)}), $\n];
render(json, {_Kind, Data}) ->
    [emqx_redis_storage_json:encode(Data), $\n];
render(human, Report) ->
    emqx_redis_storage_cli_format:human(Report).

%% Inside EMQX, its own printer (it knows where the operator's console is).
print(Text) ->
    Ctl = emqx_ctl,
    _ = code:ensure_loaded(Ctl),
    case erlang:function_exported(Ctl, print, 2) of
        true -> Ctl:print("~ts", [Text]);
        false -> io:format("~ts", [Text])
    end,
    ok.
