%% @doc A TCP proxy on a free loopback port to a server on 127.0.0.1, for
%% the tests: `pause/1' holds every byte in both directions, so to whoever
%% uses the proxy the server looks frozen (connections stay open, nothing is
%% answered) while others reach it directly; `resume/1' lets the bytes through.
-module(tcp_proxy).

-export([start/1, port/1, address/1, pause/1, resume/1, stop/1]).

-type proxy() :: #{pid := pid(), port := inet:port_number()}.
-export_type([proxy/0]).

-spec start(inet:port_number()) -> proxy().
start(TargetPort) ->
    Parent = self(),
    Pid = spawn(fun() -> init(Parent, TargetPort, 10) end),
    receive
        {Pid, listening, Port} -> #{pid => Pid, port => Port};
        {Pid, failed, Reason} -> error({tcp_proxy, Reason})
    after 5000 -> error({tcp_proxy, timeout})
    end.

-spec port(proxy()) -> inet:port_number().
port(#{port := Port}) -> Port.

-spec address(proxy()) -> binary().
address(#{port := Port}) -> iolist_to_binary(["127.0.0.1:", integer_to_list(Port)]).

-spec pause(proxy()) -> ok.
pause(#{pid := Pid}) -> control(Pid, pause).

-spec resume(proxy()) -> ok.
resume(#{pid := Pid}) -> control(Pid, resume).

-spec stop(proxy()) -> ok.
stop(#{pid := Pid}) -> control(Pid, stop).

control(Pid, What) ->
    Ref = erlang:monitor(process, Pid),
    Pid ! {What, self(), Ref},
    receive
        {Ref, ok} -> erlang:demonitor(Ref, [flush]), ok;
        {'DOWN', Ref, process, Pid, _} -> ok
    end.

init(Parent, _Target, 0) ->
    Parent ! {self(), failed, no_free_port};
init(Parent, Target, Attempts) ->
    Port = loopback_port:free(),
    case gen_tcp:listen(Port, [binary, {ip, {127, 0, 0, 1}}, {active, false}, {reuseaddr, true}]) of
        {ok, Listen} ->
            Parent ! {self(), listening, Port},
            Server = self(),
            Acceptor = spawn_link(fun() -> accept(Server, Listen) end),
            ok = gen_tcp:controlling_process(Listen, Acceptor),
            process_flag(trap_exit, true),
            loop(Target, false, []);
        {error, eaddrinuse} ->
            init(Parent, Target, Attempts - 1)
    end.

accept(Server, Listen) ->
    case gen_tcp:accept(Listen) of
        {ok, Socket} ->
            ok = gen_tcp:controlling_process(Socket, Server),
            Server ! {accepted, Socket},
            accept(Server, Listen);
        {error, _} ->
            ok
    end.

%% The controller: starts a pipe per connection and tells each to pause or resume.
loop(Target, Paused, Pipes) ->
    receive
        {accepted, Socket} ->
            Pipe = spawn_link(fun() -> pipe_start(Target, Paused) end),
            ok = gen_tcp:controlling_process(Socket, Pipe),
            Pipe ! {client, Socket},
            loop(Target, Paused, [Pipe | Pipes]);
        {pause, From, Ref} ->
            [P ! pause || P <- Pipes],
            From ! {Ref, ok},
            loop(Target, true, Pipes);
        {resume, From, Ref} ->
            [P ! resume || P <- Pipes],
            From ! {Ref, ok},
            loop(Target, false, Pipes);
        {stop, From, Ref} ->
            [exit(P, kill) || P <- Pipes],
            From ! {Ref, ok};
        {'EXIT', Pid, _} ->
            loop(Target, Paused, lists:delete(Pid, Pipes))
    end.

pipe_start(Target, Paused) ->
    receive
        {client, Client} ->
            {ok, Server} = gen_tcp:connect({127, 0, 0, 1}, Target, [binary, {active, false}, {nodelay, true}]),
            ok = inet:setopts(Client, [{nodelay, true}]),
            arm(Paused, [Client, Server]),
            pipe(Client, Server, Paused, [])
    end.

arm(true, _Sockets) -> ok;
arm(false, Sockets) -> [ok = inet:setopts(S, [{active, once}]) || S <- Sockets], ok.

%% While paused, sockets are not re-armed (the kernel holds what follows)
%% and what was already read is held here, in order.
pipe(Client, Server, Paused, Held) ->
    receive
        {tcp, From, Data} ->
            To = other(From, Client, Server),
            case Paused of
                true ->
                    pipe(Client, Server, Paused, [{To, Data, From} | Held]);
                false ->
                    ok = gen_tcp:send(To, Data),
                    ok = inet:setopts(From, [{active, once}]),
                    pipe(Client, Server, Paused, Held)
            end;
        pause ->
            pipe(Client, Server, true, Held);
        resume ->
            [ok = gen_tcp:send(To, Data) || {To, Data, _} <- lists:reverse(Held)],
            arm(false, [Client, Server]),
            pipe(Client, Server, false, []);
        {tcp_closed, _} ->
            gen_tcp:close(Client),
            gen_tcp:close(Server);
        {tcp_error, _, _} ->
            gen_tcp:close(Client),
            gen_tcp:close(Server)
    end.

other(Client, Client, Server) -> Server;
other(Server, Client, Server) -> Client.
