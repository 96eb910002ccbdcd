%% @doc The application's top supervisor.
-module(emqx_redis_storage_sup).

-behaviour(supervisor).

-export([start_link/0, init/1, start_nodes/2]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    Log = #{id => emqx_redis_storage_log, start => {emqx_redis_storage_log, start_link, []}},
    {ok, {#{strategy => one_for_one, intensity => 10, period => 10}, [Log]}}.

%% @doc Starts this node's membership (emqx_redis_nodes) on the default
%% client, unless `nodes.enable' is false or the node is not distributed (a
%% name every undistributed VM shares cannot tell nodes apart).
-spec start_nodes(emqx_redis_storage_client:t(), map()) -> ok.
start_nodes(_Client, #{enable := false}) ->
    ok;
start_nodes(_Client, _Config) when node() =:= nonode@nohost ->
    ok;
start_nodes(Client, Config) ->
    Spec = #{
        id => emqx_redis_nodes_server,
        start => {emqx_redis_nodes_server, start_link, [Client, Config]},
        shutdown => 10000
    },
    {ok, _} = supervisor:start_child(?MODULE, Spec),
    ok.
