%% @doc The reap of a dead node's incarnation, step by step: take the reap
%% lease (a new fence), remove the node's registry entries, routes and
%% leases, each step refused by Redis once the lease has ended, and end the
%% membership of that incarnation. See nodes.rs for why this is safe
%% against a reaper that stalls and a node that restarts under its name.
-module(emqx_redis_nodes_reap).

-export([run/4, claim/4, step/4, renew/4, finish/4]).
-export_type([result/0]).

-type client() :: emqx_redis_storage_client:t().
-type step() :: channels | routes | leases.
-type result() ::
    {ok, #{channels := non_neg_integer(), routes := non_neg_integer(), leases := non_neg_integer(),
           reaps := pos_integer(), took_ms := non_neg_integer()}}
    | {error, gone | alive | {held, binary()} | lost_lease | term()}.

-define(STEPS, [channels, routes, leases]).

%% @doc Reaps incarnation `Incarnation' of `Node' (a node name as a binary)
%% if it is dead and nobody else is reaping it, with a reap lease of `LeaseMs'.
-spec run(client(), binary(), integer(), pos_integer()) -> result().
run(Client, Node, Incarnation, LeaseMs) ->
    Started = erlang:monotonic_time(millisecond),
    case claim(Client, Node, Incarnation, LeaseMs) of
        {ok, {granted, Fence, Until}} ->
            case steps(Client, Node, Fence, Until, LeaseMs, ?STEPS, #{}) of
                {ok, Counts} ->
                    case finish(Client, Node, Incarnation, Fence) of
                        {ok, not_held} ->
                            {error, lost_lease};
                        {ok, Reaps} ->
                            Took = erlang:monotonic_time(millisecond) - Started,
                            {ok, Counts#{reaps => Reaps, took_ms => Took}};
                        {error, _} = Error ->
                            Error
                    end;
                {error, _} = Error ->
                    Error
            end;
        {ok, gone} ->
            {error, gone};
        {ok, alive} ->
            {error, alive};
        {ok, {held, Owner}} ->
            {error, {held, Owner}};
        {error, _} = Error ->
            Error
    end.

%% Each step under the lease ending at `Until', which is renewed after it.
steps(_Client, _Node, _Fence, _Until, _LeaseMs, [], Counts) ->
    {ok, Counts};
steps(Client, Node, Fence, Until, LeaseMs, [Step | Rest], Counts) ->
    case step(Client, Step, Node, Until) of
        {ok, stale} ->
            {error, lost_lease};
        {ok, Removed} ->
            case renew(Client, Node, Fence, LeaseMs) of
                {ok, not_held} -> {error, lost_lease};
                {ok, Next} -> steps(Client, Node, Fence, Next, LeaseMs, Rest, Counts#{Step => Removed});
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc `{ok, {granted, Fence, Until}}', `{ok, gone}' (reaped already, or
%% another incarnation), `{ok, alive}' or `{ok, {held, Owner}}'.
-spec claim(client(), binary(), integer(), pos_integer()) -> {ok, term()} | {error, term()}.
claim(Client, Node, Incarnation, LeaseMs) ->
    Owner = atom_to_binary(node()),
    emqx_redis_storage_client:call(Client, node_reap_claim, [Node, Incarnation, Owner, LeaseMs]).

%% @doc One step by a reaper whose lease ends at `Until' (Redis ms): `{ok,
%% Removed}', or `{ok, stale}' once the lease has ended. A step may take
%% longer than a command: it waits until the lease would have ended.
-spec step(client(), step(), binary(), integer()) -> {ok, non_neg_integer() | stale} | {error, term()}.
step(Client, Step, Node, Until) ->
    Res = emqx_redis_storage_client:res(Client),
    %% Leases name their owner as emqx_redis_storage_terms:owner_to_bin/1 writes it.
    Name =
        case Step of
            leases -> <<"node:", Node/binary>>;
            _ -> Node
        end,
    %% The local clock stands in for Redis's only to size the wait, never
    %% to decide what is removed.
    Wait = max(0, Until - erlang:system_time(millisecond)) + 5000,
    emqx_redis_storage_client:wait(
        fun(Ref) -> emqx_redis_storage_nif:node_reap_step(Res, Ref, Step, Name, Until) end, Wait
    ).

%% @doc The lease's new end, or `{ok, not_held}'.
-spec renew(client(), binary(), integer(), pos_integer()) -> {ok, integer() | not_held} | {error, term()}.
renew(Client, Node, Fence, LeaseMs) ->
    emqx_redis_storage_client:call(Client, node_reap_renew, [Node, Fence, LeaseMs]).

%% @doc The number of reaps of `Node' so far, or `{ok, not_held}'.
-spec finish(client(), binary(), integer(), integer()) -> {ok, pos_integer() | not_held} | {error, term()}.
finish(Client, Node, Incarnation, Fence) ->
    emqx_redis_storage_client:call(Client, node_reap_finish, [Node, Incarnation, Fence]).
