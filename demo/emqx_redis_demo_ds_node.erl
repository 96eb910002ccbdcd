%% @doc What nodes A and B do for the demo's durable sessions (see
%% emqx_redis_demo_ds_data for the clients and the messages); the
%% controller calls these functions by RPC.
%%
%% A durable session's checkpoint lives in its MQTT session, saved with the
%% session's fence: `durable => #{checkpoint => C, iterators => [{Filter,
%% Iterator}]}', C counting the commits. Node A reports to the controller's
%% collector (emqx_redis_demo_ds) what it does, so that what A did is known
%% outside A once A is killed: each persist/1 answer, and the messages each
%% client got, tagged with the checkpoint they came after. A waits for the
%% collector to confirm a batch's answer before it persists the next one,
%% and to confirm the deliveries before it commits them (as a client's
%% PUBACKs come before the session moves on).
-module(emqx_redis_demo_ds_node).

-export([load_code/0, subscribe/3, start_stream/3, resume/2, drop_streams/1]).

-import(emqx_redis_demo_data, [client_id/1]).

%% Processes on A that deliver to the durable clients.
-define(DELIVERY_PROCESSES, 16).
%% Messages per next/2 call.
-define(READ_BATCH, 1000).
-define(COLLECTOR_TIMEOUT, 60000).

-type iterators() :: [{binary(), emqx_redis_ds:iterator()}].

%% @doc Loads the modules whose atoms the checkpoints hold (this one's and
%% emqx_redis_ds's iterators). A session is decoded without creating atoms,
%% so a node can read a checkpoint only once they exist: as in a release
%% (embedded mode, every module loaded at boot), not as in a peer node
%% that loads modules when first called.
-spec load_code() -> ok.
load_code() ->
    {module, emqx_redis_ds} = code:ensure_loaded(emqx_redis_ds),
    ok.

%%--------------------------------------------------------------------
%% Node A

%% @doc Each client `{I, Fence}' subscribes durably to its filters, makes an
%% iterator for each stream of each filter, and commits them (checkpoint 0)
%% in its session. Returns `[{I, {ok, Iterators} | {error, Reason}}]'.
-spec subscribe([{pos_integer(), integer()}], emqx_redis_demo_ds_data:plan(), pid()) ->
    [{pos_integer(), {ok, iterators()} | {error, term()}}].
subscribe(Clients, Plan, Progress) ->
    emqx_redis_demo_node:parallel(Clients, fun(Chunk) -> [subscribe_client(C, Plan) || C <- Chunk] end, Progress).

subscribe_client({I, Fence}, Plan) ->
    Id = client_id(I),
    try
        Iterators = lists:append([subscribe_filter(Id, Filter) || Filter <- emqx_redis_demo_ds_data:filters(I, Plan)]),
        ok = ok(commit(I, emqx_redis_demo_data:session(I), Fence, 0, Iterators)),
        {I, {ok, Iterators}}
    catch
        throw:{failed, Reason} -> {I, {error, {Id, Reason}}}
    end.

subscribe_filter(Id, Filter) ->
    ok = ok(emqx_redis_ds:subscribe(Id, Filter)),
    [{Filter, ok(emqx_redis_ds:make_iterator(S, Filter, 0))} || S <- ok(emqx_redis_ds:get_streams(Filter, 0))].

ok(ok) -> ok;
ok({ok, Value}) -> Value;
ok({error, Reason}) -> throw({failed, Reason}).

%% @doc Starts the stream and returns: a publisher persists batch after
%% batch, one every `interval' ms, until `max_batches' (or until this node
%% dies); ?DELIVERY_PROCESSES processes read each client's iterators after
%% every batch and commit them every `commit_every' batches. `Clients' is
%% `[{I, Fence, Iterators}]' as subscribe/3 left them.
-spec start_stream([{pos_integer(), integer(), iterators()}], map(), pid()) -> ok.
start_stream(Clients, #{interval := Interval} = Stream, Collector) ->
    Deliverers = [
        spawn(fun() -> deliver([new_client(C) || C <- Slice], Stream, Collector, 0) end)
     || Slice <- slices(Clients, ?DELIVERY_PROCESSES)
    ],
    Start = erlang:monotonic_time(millisecond),
    _ = spawn(fun() -> publish(1, Stream, Interval, Start, Deliverers, Collector) end),
    ok.

slices(Items, N) ->
    maps:values(maps:groups_from_list(fun({K, _}) -> K rem N end, fun({_, Item}) -> Item end, lists:enumerate(Items))).

new_client({I, Fence, Iterators}) ->
    #{i => I, fence => Fence, iterators => Iterators, checkpoint => 0, session => emqx_redis_demo_data:session(I)}.

publish(B, #{max_batches := Max}, _Interval, _Start, _Deliverers, Collector) when B > Max ->
    Collector ! {finished, Max};
publish(B, #{plan := Plan} = Stream, Interval, Start, Deliverers, Collector) ->
    timer:sleep(max(0, Start + (B - 1) * Interval - erlang:monotonic_time(millisecond))),
    Result = emqx_redis_ds:persist(emqx_redis_demo_ds_data:batch(B, Plan)),
    ok = call(Collector, {persisted, B, Result}),
    lists:foreach(fun(D) -> D ! {batch, B} end, Deliverers),
    publish(B + 1, Stream, Interval, Start, Deliverers, Collector).

%% One delivery process: after each batch (the latest one, if several came
%% meanwhile) it reads every client's iterators to their end and reports
%% what it read; when the batches crossed a multiple of `commit_every'
%% since its last commit, it commits every client's iterators.
deliver(Clients, #{commit_every := Every} = Stream, Collector, Committed) ->
    B = latest_batch(receive {batch, B0} -> B0 end),
    Read = [deliver_client(C, Collector) || C <- Clients],
    case B div Every > Committed div Every of
        true ->
            ok = call(Collector, sync),
            deliver([commit_client(C, Collector) || C <- Read], Stream, Collector, B);
        false ->
            deliver(Read, Stream, Collector, Committed)
    end.

latest_batch(B) ->
    receive
        {batch, Later} -> latest_batch(Later)
    after 0 -> B
    end.

deliver_client(#{i := I, iterators := Iterators, checkpoint := Checkpoint} = C, Collector) ->
    {Iterators2, Msgs, Errors} = read(Iterators),
    Msgs =:= [] orelse (Collector ! {delivered, I, Checkpoint, Msgs}),
    lists:foreach(fun(E) -> Collector ! {read_error, I, E} end, Errors),
    C#{iterators := Iterators2}.

commit_client(#{i := I, session := Session, fence := Fence, iterators := Iterators, checkpoint := Checkpoint} = C, Collector) ->
    %% The number moves on also if the save failed: the deliveries after it
    %% are then after the last commit that B finds, as they are.
    Next = Checkpoint + 1,
    Collector ! {committed, I, Next, commit(I, Session, Fence, Next, Iterators)},
    C#{checkpoint := Next}.

%% A synchronous report: the collector has everything sent before it.
call(Collector, Msg) ->
    Ref = make_ref(),
    Collector ! {call, self(), Ref, Msg},
    receive
        {Ref, Reply} -> Reply
    after ?COLLECTOR_TIMEOUT -> exit(collector_timeout)
    end.

%%--------------------------------------------------------------------
%% Node B

%% @doc Resumes the durable sessions of clients `{I, Fence}' (whose leases
%% this node holds): loads each session, reads its committed iterators to
%% their end and commits the iterators after them under `Fence'.
%% Returns a map per client: `checkpoint' (the commit it resumed from, or
%% `none'), `delivered', `errors' and `commit'.
-spec resume([{pos_integer(), integer()}], pid()) -> [map()].
resume(Clients, Progress) ->
    emqx_redis_demo_node:parallel(Clients, fun(Chunk) -> [resume_client(C) || C <- Chunk] end, Progress).

resume_client({I, Fence}) ->
    case emqx_redis_session:load_session(client_id(I)) of
        {ok, #{durable := #{checkpoint := Checkpoint, iterators := Iterators}} = Session} ->
            {Iterators2, Msgs, Errors} = read(Iterators),
            Commit = commit(I, Session, Fence, Checkpoint + 1, Iterators2),
            #{i => I, checkpoint => Checkpoint, delivered => Msgs, errors => Errors, commit => Commit};
        Other ->
            #{i => I, checkpoint => none, delivered => [], errors => [{no_checkpoint, Other}], commit => none}
    end.

%% @doc Deletes every durable message stream of the first levels `Levels'
%% (`<prefix>ds:m:{<level>/<shard>}'): the loss the demo's checks must
%% catch (env DROP_DURABLE). Returns how many streams there were.
-spec drop_streams([binary()]) -> {ok, non_neg_integer()} | {error, term()}.
drop_streams(Levels) ->
    #{key_prefix := Prefix} = emqx_redis_storage:status(),
    {ok, Client} = emqx_redis_storage_client:default(),
    #{ds := #{stream_shards := Shards}} = emqx_redis_storage_client:settings(Client),
    Keys = [
        iolist_to_binary([Prefix, "ds:m:{", Level, "/", integer_to_binary(K), "}"])
     || Level <- Levels, K <- lists:seq(0, Shards - 1)
    ],
    emqx_redis_storage:q([<<"DEL">> | Keys]).

%%--------------------------------------------------------------------

%% The session with its checkpoint, saved with the session's fence.
commit(I, Session, Fence, Checkpoint, Iterators) ->
    Durable = #{checkpoint => Checkpoint, iterators => Iterators},
    emqx_redis_session:save_session(client_id(I), Session#{durable => Durable}, #{fence => Fence}).

%% Each iterator read until a call returns no message: the iterators after
%% what was read, the messages, and the errors (an iterator that failed
%% stays after what it returned before).
read(Iterators) ->
    Read = [{Filter, drain(It, [])} || {Filter, It} <- Iterators],
    {
        [{Filter, It} || {Filter, {It, _, _}} <- Read],
        lists:append([Msgs || {_, {_, Msgs, _}} <- Read]),
        [E || {_, {_, _, {error, _} = E}} <- Read]
    }.

drain(It, Acc) ->
    case emqx_redis_ds:next(It, ?READ_BATCH) of
        {ok, It2, []} -> {It2, lists:append(lists:reverse(Acc)), ok};
        {ok, It2, Msgs} -> drain(It2, [Msgs | Acc]);
        {ok, end_of_stream} -> {It, lists:append(lists:reverse(Acc)), ok};
        {error, _} = Error -> {It, lists:append(lists:reverse(Acc)), Error}
    end.
