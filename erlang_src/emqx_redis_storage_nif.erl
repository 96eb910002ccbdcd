%% @doc The NIF stubs, and nothing else. Every I/O function returns a ticket at
%% once and answers `{Ref, Result}' later; call them through
%% `emqx_redis_storage_client', which owns deadlines and late replies.
-module(emqx_redis_storage_nif).

-export([connect/2, q/3, cancel/1, panic_in_task/1]).

-on_load(init/0).

-define(NOT_LOADED, erlang:nif_error({not_loaded, ?MODULE})).

-type ticket() :: reference().
-export_type([ticket/0]).

init() ->
    Workers = application:get_env(emqx_redis_storage, worker_threads, default_workers()),
    erlang:load_nif(filename:join(priv_dir(), ?MODULE_STRING), #{worker_threads => Workers}).

%% Redis I/O needs few threads; two cover a small machine, four a large one.
default_workers() ->
    max(1, min(4, erlang:system_info(schedulers_online))).

priv_dir() ->
    case code:priv_dir(emqx_redis_storage) of
        {error, bad_name} ->
            %% Not (yet) a known application, e.g. loaded from a bare ebin path.
            filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv");
        Dir ->
            Dir
    end.

-spec connect(reference(), map()) -> ticket() | {error, term()}.
connect(_Ref, _Config) -> ?NOT_LOADED.

-spec q(reference(), reference(), [binary()]) -> ticket().
q(_Client, _Ref, _Args) -> ?NOT_LOADED.

-spec cancel(ticket()) -> cancelled | sent.
cancel(_Ticket) -> ?NOT_LOADED.

-spec panic_in_task(reference()) -> ticket().
panic_in_task(_Ref) -> ?NOT_LOADED.
