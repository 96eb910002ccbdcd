%% @doc Free TCP ports on 127.0.0.1 for the redis-servers of the tests, the
%% demo and the benchmark (demo/run.sh and bench/run.sh compile this module
%% too, so the rule lives in one place).
%%
%% Ports come from below the kernel's ephemeral range: a port the kernel
%% handed out for listening (`listen(0)') is in that range, and once our
%% server on it had stopped, an outgoing connection could take it as its
%% local port, so a redis-server restarted on it failed with `bind: Address
%% already in use'. Below that range the kernel never picks a port itself.
%% The range starts at 20000, so 6379 is never chosen.
-module(loopback_port).

-export([free/0, free/1]).

-define(BOTTOM, 20000).
%% Linux's default ephemeral range starts at 32768.
-define(DEFAULT_EPHEMERAL_LOW, 32768).
-define(ATTEMPTS, 100).

%% @doc A port that nothing on 127.0.0.1 listens on now.
-spec free() -> inet:port_number().
free() -> free([]).

%% @doc A port P such that P and P + Offset, for every Offset, are free (a
%% cluster node also listens on its port + 10000, its cluster bus). Picked at
%% random, so concurrent test runs rarely try the same one; a port is free
%% only for now, so whoever binds it must retry with another on collision.
-spec free([pos_integer()]) -> inet:port_number().
free(Offsets) ->
    {Low, High} = range(),
    Top = High - lists:max([0 | Offsets]),
    Top >= Low orelse error({no_port_range, {Low, High}, Offsets}),
    pick(Low, Top, Offsets, ?ATTEMPTS).

pick(Low, Top, Offsets, 0) ->
    error({no_free_port, {Low, Top}, Offsets});
pick(Low, Top, Offsets, Attempts) ->
    Port = Low + rand:uniform(Top - Low + 1) - 1,
    case lists:all(fun(Offset) -> bindable(Port + Offset) end, [0 | Offsets]) of
        true -> Port;
        false -> pick(Low, Top, Offsets, Attempts - 1)
    end.

%% `reuseaddr' as redis-server binds: a port whose old connections linger in
%% TIME_WAIT is free for it.
bindable(Port) ->
    case gen_tcp:listen(Port, [{ip, {127, 0, 0, 1}}, {reuseaddr, true}]) of
        {ok, Socket} ->
            ok = gen_tcp:close(Socket),
            true;
        {error, _} ->
            false
    end.

%% 20000 up to just below the ephemeral range (at most 32767).
range() ->
    {?BOTTOM, min(32767, ephemeral_low() - 1)}.

ephemeral_low() ->
    case file:read_file("/proc/sys/net/ipv4/ip_local_port_range") of
        {ok, Text} ->
            [Low | _] = string:lexemes(Text, " \t\n"),
            binary_to_integer(Low);
        {error, _} ->
            ?DEFAULT_EPHEMERAL_LOW
    end.
