%% @doc The operators' commands inside EMQX, for `emqx_ctl':
%% `emqx_ctl:register_command(redis_storage, {emqx_redis_storage_cli, cmd}, [])'
%% makes `emqx ctl redis_storage status' (and the rest, see `usage') work on
%% the application's default client. `bin/emqx-redis-storage' runs the same
%% commands (`emqx_redis_storage_cli_commands') on a client of its own.
-module(emqx_redis_storage_cli).

-export([cmd/1]).

%% @doc `Args' are the words after the command name, optionally led by
%% `--json'. Prints through `emqx_ctl:print/2' inside EMQX, else
%% `io:format/2'.
-spec cmd(term()) -> ok.
cmd(Args) ->
    {Format, Words} =
        case Args of
            ["--json" | Rest] -> {json, Rest};
            _ -> {human, Args}
        end,
    Output =
        case emqx_redis_storage_client:default() of
            {ok, Client} when is_list(Words) ->
                case emqx_redis_storage_cli_commands:run(Client, Format, Words) of
                    {ok, Text} -> Text;
                    {error, usage} -> emqx_redis_storage_cli_format:usage();
                    {error, Message} -> [Message, $\n]
                end;
            {ok, _Client} ->
                emqx_redis_storage_cli_format:usage();
            {error, not_started} ->
                "emqx_redis_storage is not started\n"
        end,
    print(Output).

%% Inside EMQX, its own printer: it knows where the operator's console is.
print(Text) ->
    Ctl = emqx_ctl,
    _ = code:ensure_loaded(Ctl),
    case erlang:function_exported(Ctl, print, 2) of
        true -> Ctl:print("~ts", [Text]);
        false -> io:format("~ts", [Text])
    end,
    ok.
