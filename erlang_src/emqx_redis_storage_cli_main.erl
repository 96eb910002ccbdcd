%% @doc The entry of `bin/emqx-redis-storage': reads the options, builds
%% the same config map the application takes, connects a client of its own
%% and runs one command of `emqx_redis_storage_cli_commands'. The password comes only
%% from the environment (`EMQX_REDIS_PASSWORD', `EMQX_REDIS_SENTINEL_PASSWORD',
%% or a URL with a password in `EMQX_REDIS_URL') or the config file, and is
%% never printed. Exit status: 0 done, 1 the
%% command failed, 2 bad usage.
-module(emqx_redis_storage_cli_main).

-export([main/1]).

-define(FLAGS, [
    {"--url", [redis, url]},
    {"--servers", [redis, servers]},
    {"--redis-type", [redis, redis_type]},
    {"--sentinel", [redis, sentinel]},
    {"--database", [redis, database]},
    {"--username", [redis, username]},
    {"--connect-timeout", [redis, connect_timeout]},
    {"--command-timeout", [redis, command_timeout]},
    {"--key-prefix", [key_prefix]},
    {"--tls-cacertfile", [redis, ssl, cacertfile]},
    {"--tls-certfile", [redis, ssl, certfile]},
    {"--tls-keyfile", [redis, ssl, keyfile]},
    {"--tls-verify", [redis, ssl, verify]},
    {"--tls-server-name", [redis, ssl, server_name_indication]}
]).

%% @doc Runs the tool with the command-line words and stops the VM with
%% its exit status.
-spec main([string()]) -> no_return().
main(Args) ->
    ok = io:setopts(standard_io, [{encoding, unicode}]),
    ok = emqx_redis_storage_terms:allow_new_atoms(),
    Status =
        case run(Args) of
            {ok, Text} ->
                io:put_chars(Text),
                0;
            {error, Status0, Message} ->
                io:put_chars(standard_error, [Message, $\n]),
                Status0
        end,
    %% init:stop/1, not halt/1: it lets the output reach the terminal first.
    init:stop(Status),
    receive after infinity -> ok end.

run(Args) ->
    case options(Args, #{json => false, flags => [], words => []}) of
        help ->
            {ok, usage()};
        {ok, Opts, Words} ->
            case config(Opts) of
                {ok, Config} -> connected(Config, Opts, Words);
                {error, Message} -> {error, 1, Message}
            end;
        {error, Message} ->
            {error, 2, [Message, "\n\n", usage()]}
    end.

connected(Config, #{json := Json}, Words) ->
    case emqx_redis_storage:connect(Config) of
        {ok, Client} ->
            Format =
                case Json of
                    true -> json;
                    false -> human
                end,
            case emqx_redis_storage_cli_commands:run(Client, Format, Words) of
                {ok, Text} -> {ok, Text};
                {error, usage} -> {error, 2, usage()};
                {error, Message} -> {error, 1, Message}
            end;
        {error, Reason} ->
            {error, 1, emqx_redis_storage_cli_format:error(Reason)}
    end.

options(["--help" | _], _Opts) ->
    help;
options(["-h" | _], _Opts) ->
    help;
options(["--json" | Rest], Opts) ->
    options(Rest, Opts#{json => true});
options(["--tls" | Rest], #{flags := Flags} = Opts) ->
    options(Rest, Opts#{flags => [{[redis, ssl, enable], true} | Flags]});
options(["--replace" | Rest], #{words := Words} = Opts) ->
    %% an option of the restore command
    options(Rest, Opts#{words => ["--replace" | Words]});
options(["--config", File | Rest], Opts) ->
    options(Rest, Opts#{file => File});
options(["--config"], _Opts) ->
    {error, "missing value for --config"};
options(["--" ++ _ = Flag | Rest], #{flags := Flags} = Opts) ->
    case {lists:keyfind(Flag, 1, ?FLAGS), Rest} of
        {{Flag, Path}, [Value | Rest1]} -> options(Rest1, Opts#{flags => [{Path, flag_value(Value)} | Flags]});
        {{Flag, _Path}, []} -> {error, ["missing value for ", Flag]};
        {false, _} -> {error, ["unknown option ", Flag]}
    end;
options([Word | Rest], #{words := Words} = Opts) ->
    options(Rest, Opts#{words => [Word | Words]});
options([], #{words := []}) ->
    {error, "missing command"};
options([], #{words := Words} = Opts) ->
    {ok, Opts, lists:reverse(Words)}.

%% Numbers as integers (the config checks the rest and names the field).
flag_value(Text) ->
    case string:to_integer(Text) of
        {N, []} -> N;
        _ -> unicode:characters_to_binary(Text)
    end.

%% The config file's map (or its `sys.config' form), the flags over it,
%% the passwords from the environment over both. The tool matches routes
%% in Redis: loading the whole route index for one command would cost more.
config(#{flags := Flags} = Opts) ->
    case file_config(maps:get(file, Opts, undefined)) of
        {ok, FromFile} ->
            Config0 = lists:foldl(fun({Path, Value}, C) -> put_in(Path, Value, C) end, atom_keys(FromFile),
                lists:reverse(Flags)),
            Config1 = env_secret("EMQX_REDIS_PASSWORD", [redis, password], env_secret("EMQX_REDIS_URL", [redis, url], Config0)),
            Config = env_secret("EMQX_REDIS_SENTINEL_PASSWORD", [redis, sentinel_password], Config1),
            {ok, Config#{route_index => redis}};
        {error, _} = Error ->
            Error
    end.

file_config(undefined) ->
    {ok, #{}};
file_config(File) ->
    case file:consult(File) of
        {ok, [Map]} when is_map(Map) ->
            {ok, Map};
        {ok, [[_ | _] = SysConfig]} ->
            case proplists:get_value(config, proplists:get_value(emqx_redis_storage, SysConfig, []), undefined) of
                Map when is_map(Map) -> {ok, Map};
                _ -> {error, ["no emqx_redis_storage config map in ", File]}
            end;
        {ok, _} ->
            {error, [File, ": expected one config map, or [{emqx_redis_storage, [{config, Map}]}]"]};
        {error, Reason} ->
            %% Only the position and kind of a syntax error: never the text,
            %% which may hold the password.
            {error, [File, ": ", reason(Reason)]}
    end.

reason({Line, _Module, _Term}) -> io_lib:format("syntax error on line ~b", [Line]);
reason(Reason) -> file:format_error(Reason).

%% The config may use binary keys; the flags use atoms. One kind of key
%% per field, so a flag replaces the file's value rather than adding a twin.
atom_keys(Map) when is_map(Map) ->
    maps:fold(fun(K, V, Acc) -> Acc#{key(K) => atom_keys(V)} end, #{}, Map);
atom_keys(Value) ->
    Value.

key(K) when is_binary(K) ->
    try
        binary_to_existing_atom(K)
    catch
        error:badarg -> K
    end;
key(K) ->
    K.

put_in([Key], Value, Map) ->
    Map#{Key => Value};
put_in([Key | Path], Value, Map) ->
    Inner =
        case maps:get(Key, Map, #{}) of
            #{} = M -> M;
            _ -> #{}
        end,
    Map#{Key => put_in(Path, Value, Inner)}.

env_secret(Name, Path, Config) ->
    case os:getenv(Name) of
        false -> Config;
        "" -> Config;
        Secret -> put_in(Path, unicode:characters_to_binary(Secret), Config)
    end.

usage() ->
    [
        "Usage: emqx-redis-storage [OPTIONS] COMMAND\n\n",
        "Options (the config file holds the config map, or its sys.config form):\n",
        "  --config FILE  --url URL (no password: see EMQX_REDIS_URL)\n",
        "  --servers HOST[:PORT],...  --redis-type single|sentinel|cluster\n",
        "  --sentinel MASTER  --database N  --username USER  --key-prefix PREFIX\n",
        "  --connect-timeout DURATION  --command-timeout DURATION\n",
        "  --tls  --tls-cacertfile FILE  --tls-certfile FILE  --tls-keyfile FILE\n",
        "  --tls-verify verify_peer|verify_none  --tls-server-name NAME|disable\n",
        "  --json  (output JSON)   -h, --help\n",
        "Passwords only from the environment: EMQX_REDIS_PASSWORD, EMQX_REDIS_SENTINEL_PASSWORD,\n",
        "or EMQX_REDIS_URL (redis://user:password@host:port/db, see the README for every form)\n\n",
        emqx_redis_storage_cli_format:usage()
    ].
