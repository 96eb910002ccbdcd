%% @doc Logs the events of the Rust side through OTP logger.
%%
%% The NIF sends `{emqx_redis_storage_log, Level, Report}' to this process,
%% which logs `Report' (a map: `msg', the event's name as a binary, and its
%% fields) at `Level' with metadata `domain => [emqx_redis_storage]'.
%%
%% logger has no callback for level changes, so every second this process
%% pushes the effective level into the NIF (events below it are not even
%% built there) and logs how many events the NIF's rate limit dropped. The
%% effective level is the module level of this module if one is set
%% (`logger:set_module_level(emqx_redis_storage_log, debug)'), else the
%% primary level. Without this process (the application stopped), the NIF
%% drops every event.
-module(emqx_redis_storage_log).

-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

-export([start_link/0, report/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(TICK_MS, 1000).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Logs `Report' in the application's domain: the one way this
%% application logs, from Rust or from Erlang.
-spec report(logger:level(), #{msg := binary(), atom() => term()}) -> ok.
report(Level, Report) ->
    ?LOG(Level, Report, #{domain => [emqx_redis_storage]}).

-spec init([]) -> {ok, undefined}.
init([]) ->
    %% So that terminate/2 detaches from the NIF when the supervisor stops us.
    process_flag(trap_exit, true),
    tick(),
    {ok, undefined}.

-spec handle_call(term(), gen_server:from(), undefined) -> {reply, {error, unknown_call}, undefined}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

-spec handle_cast(term(), undefined) -> {noreply, undefined}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), undefined) -> {noreply, undefined}.
handle_info({emqx_redis_storage_log, Level, Report}, State) ->
    report(Level, Report),
    {noreply, State};
handle_info(tick, State) ->
    tick(),
    {noreply, State};
handle_info(_Other, State) ->
    {noreply, State}.

-spec terminate(term(), undefined) -> ok.
terminate(_Reason, _State) ->
    suppressed(emqx_redis_storage_nif:log_sink(undefined, off)).

%% Pushes the level, reports what the rate limit dropped, and comes back
%% in a second.
tick() ->
    suppressed(emqx_redis_storage_nif:log_sink(self(), nif_level(effective_level()))),
    _ = erlang:send_after(?TICK_MS, self(), tick),
    ok.

suppressed(Dropped) ->
    lists:foreach(
        fun({Name, Level, Count}) ->
            report(Level, #{msg => <<"events_suppressed">>, event => Name, count => Count})
        end,
        Dropped
    ).

effective_level() ->
    case logger:get_module_level(?MODULE) of
        [{?MODULE, Level}] -> Level;
        [] -> maps:get(level, logger:get_primary_config())
    end.

%% The NIF's filter (tracing's levels) for logger's level: an event passes
%% the NIF if logger would log it.
nif_level(none) -> off;
nif_level(Level) when Level =:= emergency; Level =:= alert; Level =:= critical; Level =:= error -> error;
nif_level(Level) when Level =:= warning; Level =:= notice -> warn;
nif_level(info) -> info;
nif_level(Level) when Level =:= debug; Level =:= all -> trace.
