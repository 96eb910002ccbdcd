%% @doc Connects the default client from the application environment.
-module(emqx_redis_storage_app).

-behaviour(application).

-export([start/2, stop/1]).

%% The supervisor (and with it the log forwarder) starts first, so that
%% what the Rust side reports while the default client connects is logged.
-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    {ok, Sup} = emqx_redis_storage_sup:start_link(),
    Config = application:get_env(emqx_redis_storage, config, #{}),
    case emqx_redis_storage:connect(Config) of
        {ok, Client} ->
            ok = emqx_redis_storage_client:set_default(Client),
            warn_if_not_persistent(Client),
            {ok, #{nodes := Nodes}} = emqx_redis_storage_config:parse(Config),
            ok = emqx_redis_storage_sup:start_nodes(Client, Nodes),
            {ok, Sup};
        {error, _} = Error ->
            unlink(Sup),
            ok = gen_server:stop(Sup),
            Error
    end.

%% Without an append-only file, a Redis restart loses every session and
%% queued message written since the last snapshot: say so at start. A
%% restricted ACL user may not read the config; then nothing can be said.
warn_if_not_persistent(Client) ->
    case emqx_redis_storage:q(Client, [<<"CONFIG">>, <<"GET">>, <<"appendonly">>]) of
        {ok, [_, <<"no">>]} ->
            Servers = maps:get(servers, emqx_redis_storage_client:info(Client)),
            emqx_redis_storage_log:report(warning, #{
                msg => <<"redis_not_persistent">>,
                servers => iolist_to_binary(lists:join(",", Servers)),
                reason => <<"appendonly no: a Redis restart loses sessions and queued messages">>
            });
        _ ->
            ok
    end.

-spec stop(term()) -> ok.
stop(_State) ->
    emqx_redis_storage_client:clear_default().
