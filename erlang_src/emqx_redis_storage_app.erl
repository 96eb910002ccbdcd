%% @doc Connects the default client from the application environment.
-module(emqx_redis_storage_app).

-behaviour(application).

-export([start/2, stop/1]).

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    Config = application:get_env(emqx_redis_storage, config, #{}),
    case emqx_redis_storage_config:parse(Config) of
        {ok, #{key_prefix := Prefix} = Parsed} ->
            case emqx_redis_storage_client:connect(Parsed, Prefix) of
                {ok, Client} ->
                    ok = emqx_redis_storage_client:set_default(Client),
                    emqx_redis_storage_sup:start_link();
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

-spec stop(term()) -> ok.
stop(_State) ->
    emqx_redis_storage_client:clear_default().
