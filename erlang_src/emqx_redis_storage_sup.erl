%% @doc The application's top supervisor.
-module(emqx_redis_storage_sup).

-behaviour(supervisor).

-export([start_link/0, init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    Log = #{id => emqx_redis_storage_log, start => {emqx_redis_storage_log, start_link, []}},
    {ok, {#{strategy => one_for_one, intensity => 10, period => 10}, [Log]}}.
