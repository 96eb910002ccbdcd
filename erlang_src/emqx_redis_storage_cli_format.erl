%% @doc How the operators' commands show their reports to people: fields
%% one per line, lists as aligned tables, times as UTC dates, and errors
%% as one line.
-module(emqx_redis_storage_cli_format).

-export([human/1, error/1, usage/0, progress/3]).

-spec human({atom(), term()}) -> iodata().
human({status, Status}) ->
    Servers = maps:get(server_states, Status, []),
    Fields = [
        {K, maps:get(K, Status)}
     || K <- [healthy, started, connected, breaker, last_error, in_flight, mode, servers, database,
              pool_size, key_prefix, route_index],
        maps:is_key(K, Status)
    ],
    [
        fields(Fields),
        "\n",
        table(
            ["SERVER", "STATE", "LAST OK", "LAST ERROR AT", "LAST ERROR"],
            [
                [value(S), value(St), time(Ok), time(ErrAt), value(Err)]
             || #{server := S, state := St, last_ok_at := Ok, last_error := Err, last_error_at := ErrAt} <- Servers
            ]
        )
    ];
human({count, #{sessions := N}}) ->
    [integer_to_binary(N), $\n];
human({sessions, Ids}) ->
    [[value(Id), $\n] || Id <- Ids];
human({session, #{client_id := Id, session := Session, info := Info}}) ->
    #{created_at := Created, updated_at := Updated, expires_at := Expires, node := Node} = Info,
    fields([
        {client_id, Id},
        {node, Node},
        {created_at, time(Created)},
        {updated_at, time(Updated)},
        {expires_at, time(Expires)},
        {session, Session}
    ]);
human({queue, #{client_id := Id, info := Info, messages := Messages}}) ->
    #{len := Len, dropped := Dropped, oldest_at := Oldest} = Info,
    [
        fields([{client_id, Id}, {len, Len}, {dropped, Dropped}, {oldest_at, time(Oldest)}]),
        "\n",
        table(["ID", "MESSAGE"], [[value(MsgId), value(Msg)] || #{id := MsgId, message := Msg} <- Messages])
    ];
human({routes, #{total := Total, routes := Routes}}) ->
    [
        table(["FILTER", "DESTS"], [[value(F), dests(D)] || #{filter := F, dests := D} <- Routes]),
        io_lib:format("~b of ~b filters shown~n", [length(Routes), Total])
    ];
human({matches, #{dests := Dests}}) ->
    [[dests([D]), $\n] || D <- Dests];
human({metrics, #{operations := Ops, limiters := Limiters} = Metrics}) ->
    [
        fields(lists:sort(maps:to_list(maps:without([operations, limiters], Metrics)))),
        "\n",
        table(
            ["OPERATION", "CALLS", "ERRORS", "IN FLIGHT", "MEAN US"],
            [operation_row(Name, Op) || {Name, Op} <- lists:sort(maps:to_list(Ops))]
        ),
        case lists:sort(maps:to_list(Limiters)) of
            [] ->
                [];
            Sorted ->
                [
                    "\n",
                    table(
                        ["LIMITER", "CHECKS", "LIMITED", "ERRORS", "LOCAL"],
                        [[value(Name), value(C), value(L), value(E), value(Lo)]
                         || {Name, #{checks := C, limited := L, errors := E, local := Lo}} <- Sorted]
                    )
                ]
        end
    ];
human({prometheus, Text}) ->
    Text;
human({backup, #{file := File, keys := Keys, bytes := Bytes}}) ->
    io_lib:format("backed up ~b keys (~b bytes) to ~ts~n", [Keys, Bytes, value(File)]);
human({restore, #{file := File, keys := Keys}}) ->
    io_lib:format("restored ~b keys from ~ts~n", [Keys, value(File)]).

%% @doc The progress line of a backup or restore, to be written over itself.
-spec progress(atom(), non_neg_integer(), non_neg_integer()) -> iodata().
progress(check, Pages, _) ->
    io_lib:format("\rcheck: ~b SCAN pages without data   ", [Pages]);
progress(Phase, Keys, Bytes) ->
    io_lib:format("\r~s: ~b keys, ~.1f MiB   ", [Phase, Keys, Bytes / 1048576]).

operation_row(Name, #{calls := Calls, errors := Errors, in_flight := InFlight, latency := #{sum_us := Sum}}) ->
    ErrorText = [io_lib:format("~s ~b", [Kind, N]) || {Kind, N} <- lists:sort(maps:to_list(Errors))],
    Mean = case Calls of 0 -> 0; _ -> Sum div Calls end,
    [value(Name), value(Calls), value(lists:flatten(lists:join(", ", ErrorText))), value(InFlight), value(Mean)].

%% @doc The commands, as `emqx_ctl' and the tool show them.
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
        "  backup File                  everything under the key prefix, to a file\n",
        "  restore File [--replace]     a backup, into this deployment and prefix (refused\n",
        "                               if it holds data, unless --replace)\n",
        "Add --json for JSON output.\n"
    ].

%% @doc One line for an error reason: the common ones in words.
-spec error(term()) -> iodata().
error(not_found) ->
    "not found";
error({invalid_config, Field, Expected}) ->
    ["invalid config: ", value(Field), ": ", value(Expected)];
error({connection, Message}) ->
    ["connecting to Redis failed: ", value(Message)];
error({bad_backup, Why}) ->
    ["not a usable backup: ", value(Why)];
error({not_empty, Key}) ->
    ["the deployment holds data (", value(Key), "): restore into an empty one, or add --replace"];
error({file, Why}) ->
    value(Why);
error({redis_version, #{backup := Backup, target := Target}}) ->
    ["the backup comes from Redis ", value(Backup), "; this Redis (", value(Target), ") is older and cannot read it"];
error(Reason) ->
    value(Reason).

fields(Pairs) ->
    Width = lists:max([0 | [length(atom_to_list(K)) || {K, _} <- Pairs]]),
    [io_lib:format("~-*s  ~ts~n", [Width, K, value(V)]) || {K, V} <- Pairs].

table(Header, Rows) ->
    Widths = [lists:max([string:length(Cell) || Cell <- Column]) || Column <- columns([Header | Rows])],
    [line(Widths, Row) || Row <- [Header | Rows]].

columns([[] | _]) -> [];
columns(Rows) -> [[chardata(hd(R)) || R <- Rows] | columns([tl(R) || R <- Rows])].

line(Widths, Row) ->
    Cells = [string:pad(chardata(Cell), W) || {W, Cell} <- lists:zip(Widths, Row)],
    [string:trim(lists:join("  ", Cells), trailing), $\n].

chardata(Cell) -> unicode:characters_to_list(Cell).

dests(Dests) ->
    lists:join(", ", [dest(D) || D <- Dests]).

dest(#{group := Group, node := Node}) -> [value(Node), " (group ", value(Group), ")"];
dest(#{node := Node}) -> value(Node).

%% Unix ms as an RFC 3339 date in UTC.
time(undefined) ->
    "-";
time(Ms) when is_integer(Ms) ->
    calendar:system_time_to_rfc3339(Ms, [{unit, millisecond}, {offset, "Z"}]).

value(undefined) -> "-";
value(Bin) when is_binary(Bin) -> emqx_redis_storage_json:chars(Bin);
value(Atom) when is_atom(Atom) -> atom_to_list(Atom);
value(Int) when is_integer(Int) -> integer_to_list(Int);
value([First | _] = Binaries) when is_binary(First) -> lists:join(",", [value(B) || B <- Binaries]);
value(Chars) when is_list(Chars) -> Chars;
value(Other) -> emqx_redis_storage_json:chars(emqx_redis_storage_json:printed(Other)).
