%% @doc Backup and restore of everything the library keeps under the key
%% prefix (README, "Backup and restore"): the file is written and read by
%% the NIF, streaming, on its own threads.
-module(emqx_redis_storage_backup).

-export([backup/3, restore/3]).

%% Called in phase `backup' (keys and bytes written), or `verify' (the
%% file read and checked), `check' (SCAN pages of the target found without
%% data, and 0) and `restore' (keys and bytes restored).
-type progress() :: fun((verify | check | backup | restore, non_neg_integer(), non_neg_integer()) -> term()).
-type refusal() ::
    {bad_backup, binary()}
    | {not_empty, binary()}
    | {file, binary()}
    | {redis_version, #{backup := binary(), target := binary()}}
    | {invalid_path, term()}
    | {invalid_option, term()}.
-export_type([progress/0, refusal/0]).

%% @doc Writes a backup to `Path'. `Opts': `progress' (a fun called with the
%% keys and bytes written so far, at most ten times a second).
-spec backup(emqx_redis_storage_client:t(), file:filename_all(), map()) ->
    {ok, #{keys := non_neg_integer(), bytes := non_neg_integer()}} | {error, refusal() | term()}.
backup(Client, Path, Opts) ->
    with_args(Path, Opts, fun(File, Progress, _Replace) ->
        reply(emqx_redis_storage_client:call_long(Client, backup, [File], Progress))
    end).

%% @doc Restores the backup at `Path' into the client's deployment, under
%% its prefix. `Opts': `mode' (`fail_if_exists', the default: refused with
%% `{error, {not_empty, Key}}' before anything is written if the prefix
%% holds data; `replace': keys of the backup overwrite those of the same
%% name), `progress' (called in phases `verify', `check', then `restore').
-spec restore(emqx_redis_storage_client:t(), file:filename_all(), map()) ->
    {ok, #{keys := non_neg_integer()}} | {error, refusal() | term()}.
restore(Client, Path, Opts) ->
    with_args(Path, Opts, fun(File, Progress, Replace) ->
        reply(emqx_redis_storage_client:call_long(Client, restore, [File, Replace], Progress))
    end).

with_args(Path, Opts, Fun) when is_map(Opts) ->
    Replace =
        case maps:get(mode, Opts, fail_if_exists) of
            fail_if_exists -> false;
            replace -> true;
            Mode -> {invalid, {mode, Mode}}
        end,
    Progress = maps:get(progress, Opts, fun(_, _, _) -> ok end),
    case {file_name(Path), Replace, is_function(Progress, 3)} of
        {error, _, _} -> {error, {invalid_path, Path}};
        {_, {invalid, Bad}, _} -> {error, {invalid_option, Bad}};
        {_, _, false} -> {error, {invalid_option, {progress, Progress}}};
        {File, _, true} -> Fun(File, Progress, Replace)
    end;
with_args(_Path, Opts, _Fun) ->
    {error, {invalid_option, Opts}}.

file_name(Path) when is_binary(Path), byte_size(Path) > 0 ->
    Path;
file_name(Path) when is_list(Path), Path =/= [] ->
    try unicode:characters_to_binary(Path, unicode, file:native_name_encoding()) of
        Bin when is_binary(Bin) -> Bin;
        _ -> error
    catch
        _:_ -> error
    end;
file_name(_) ->
    error.

reply({ok, {refused, Reason}}) -> {error, Reason};
reply(Other) -> Other.
