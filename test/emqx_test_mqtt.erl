%% @doc Real MQTT clients (emqtt, EMQX's own client) for the adapter's tests
%% and the EMQX demo. A client is owned by the process that connects it:
%% that process receives `{publish, Msg}' for what it is sent. Clients are
%% not linked to their owner (a killed broker ends a client, not the test).
-module(emqx_test_mqtt).

-export([
    connect/3,
    connect_retry/4,
    connect_retry_counted/4,
    session_present/1,
    subscribe/3,
    publish/4,
    disconnect/1,
    stop/1,
    receive_messages/3,
    receive_none/2,
    ack/2
]).

-type client() :: pid().
-export_type([client/0]).

%% @doc Connects client `ClientId' to 127.0.0.1:Port over MQTT 5. `Opts':
%% `clean_start' (default true), `expiry' (Session-Expiry-Interval in
%% seconds, default 0), `auto_ack' (true | never, default true),
%% `proto_ver' (default v5), `connect_timeout' (seconds, default 30),
%% `username', `receive_maximum'.
%% `{ok, Client}' once the CONNACK came, else `{error, Reason}'.
-spec connect(inet:port_number(), binary(), map()) -> {ok, client()} | {error, term()}.
connect(Port, ClientId, Opts) ->
    Props = maps:merge(
        case maps:get(expiry, Opts, 0) of
            0 -> #{};
            E -> #{'Session-Expiry-Interval' => E}
        end,
        case maps:get(receive_maximum, Opts, undefined) of
            undefined -> #{};
            R -> #{'Receive-Maximum' => R}
        end
    ),
    Args = [
        {host, "127.0.0.1"},
        {port, Port},
        {clientid, ClientId},
        {proto_ver, maps:get(proto_ver, Opts, v5)},
        {clean_start, maps:get(clean_start, Opts, true)},
        {properties, Props},
        {auto_ack, maps:get(auto_ack, Opts, true)},
        {connect_timeout, maps:get(connect_timeout, Opts, 30)},
        {retry_interval, 0}
    ] ++ [{username, U} || U <- [maps:get(username, Opts, undefined)], U =/= undefined],
    {ok, C} = emqtt:start_link(Args),
    unlink(C),
    try emqtt:connect(C) of
        {ok, _Props} ->
            {ok, C};
        {error, Reason} ->
            stop(C),
            {error, Reason}
    catch
        exit:Reason ->
            stop(C),
            {error, Reason}
    end.

%% @doc `connect/3' again (after 200 ms) until a CONNACK comes or `Timeout'
%% ms have passed: right after a node died, EMQX closes a clean_start=false
%% connection without a CONNACK while its registry still names the dead node.
-spec connect_retry(inet:port_number(), binary(), map(), timeout()) -> {ok, client()} | {error, term()}.
connect_retry(Port, ClientId, Opts, Timeout) ->
    case connect_retry_counted(Port, ClientId, Opts, Timeout) of
        {ok, C, _Refused} -> {ok, C};
        {error, _} = Error -> Error
    end.

%% @doc `connect_retry/4', with the reasons of the attempts that got no
%% CONNACK (oldest first).
-spec connect_retry_counted(inet:port_number(), binary(), map(), timeout()) ->
    {ok, client(), [term()]} | {error, term()}.
connect_retry_counted(Port, ClientId, Opts, Timeout) ->
    retry(Port, ClientId, Opts, erlang:monotonic_time(millisecond) + Timeout, []).

retry(Port, ClientId, Opts, Deadline, Refused) ->
    case erlang:monotonic_time(millisecond) > Deadline of
        true ->
            {error, {no_connack, lists:reverse(Refused)}};
        false ->
            case connect(Port, ClientId, Opts) of
                {ok, C} ->
                    {ok, C, lists:reverse(Refused)};
                {error, Reason} ->
                    timer:sleep(200),
                    retry(Port, ClientId, Opts, Deadline, [Reason | Refused])
            end
    end.

%% @doc The CONNACK's session-present flag.
-spec session_present(client()) -> boolean().
session_present(C) ->
    %% emqtt keeps the CONNACK's flag as it came: 0 or 1.
    lists:member(proplists:get_value(session_present, emqtt:info(C)), [1, true]).

%% @doc SUBSCRIBE; the granted QoS (or the failure reason code).
-spec subscribe(client(), binary(), 0..2) -> non_neg_integer().
subscribe(C, Filter, QoS) ->
    {ok, _, [Granted]} = emqtt:subscribe(C, Filter, QoS),
    Granted.

%% @doc PUBLISH; QoS 1/2 return once the broker acknowledged it (PUBACK,
%% PUBCOMP) with the reason code, QoS 0 at once with `ok'.
-spec publish(client(), binary(), binary(), 0..2) -> ok | {ok, non_neg_integer()} | {error, term()}.
publish(C, Topic, Payload, QoS) ->
    case emqtt:publish(C, Topic, #{}, Payload, [{qos, QoS}]) of
        ok -> ok;
        {ok, #{reason_code := RC}} -> {ok, RC};
        {error, _} = Error -> Error
    end.

-spec disconnect(client()) -> ok.
disconnect(C) ->
    catch emqtt:disconnect(C),
    stop(C).

%% @doc Ends the client process (if it still runs) without a DISCONNECT.
-spec stop(client()) -> ok.
stop(C) ->
    Ref = monitor(process, C),
    exit(C, kill),
    receive
        {'DOWN', Ref, process, C, _} -> ok
    end.

%% @doc The next `N' messages client `C' receives (`{publish, Msg}' maps, in
%% arrival order), fewer if `Timeout' ms pass first.
-spec receive_messages(client(), non_neg_integer(), timeout()) -> [map()].
receive_messages(C, N, Timeout) ->
    collect(C, N, erlang:monotonic_time(millisecond) + Timeout).

collect(_C, 0, _Deadline) ->
    [];
collect(C, N, Deadline) ->
    Wait = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {publish, #{client_pid := C} = Msg} -> [Msg | collect(C, N - 1, Deadline)]
    after Wait -> []
    end.

%% @doc What `C' receives within `Ms' ms (expected: nothing).
-spec receive_none(client(), timeout()) -> [map()].
receive_none(C, Ms) ->
    receive_messages(C, infinity_count(), Ms).

infinity_count() -> 1 bsl 30.

%% @doc Acknowledges a message received with `auto_ack' never: PUBACK for
%% QoS 1, PUBREC for QoS 2 (the broker's PUBREL is then answered by the
%% caller with `emqtt:pubcomp/2' if it wants the flow finished).
-spec ack(client(), map()) -> ok.
ack(C, #{qos := 1, packet_id := Id}) ->
    emqtt:puback(C, Id);
ack(C, #{qos := 2, packet_id := Id}) ->
    emqtt:pubrec(C, Id).
