//! The client NIFs: connect, raw commands, and a self-test of the reply path.
//! Each returns a ticket at once (or `{error, Reason}` for bad arguments) and
//! answers the caller later with `{Ref, Result}`.

use std::ops::Deref;
use std::sync::Arc;

use emqx_redis_storage_core::connection::Client;
use emqx_redis_storage_core::store::ds::Durable;
use emqx_redis_storage_core::store::limiter::Limiters;
use emqx_redis_storage_core::store::router::Router;
use emqx_redis_storage_core::Error;
use rustler::{Binary, Encoder, Env, ListIterator, NifResult, ResourceArc, Term};

use crate::runtime::{answered, spawn_reply};
use crate::term::{self, Out, Reason, Reply};

mod atoms {
    rustler::atoms! { error }
}

/// A client as an Erlang resource, with its durable-messages state and
/// its rate limiters; dropped when the last term referring to it is gone.
pub struct ClientRes {
    client: Client,
    pub router: Router,
    pub ds: Arc<Durable>,
    pub limiters: Limiters,
}

#[rustler::resource_impl]
impl rustler::Resource for ClientRes {}

impl Deref for ClientRes {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

#[rustler::nif]
fn connect<'a>(env: Env<'a>, reply_ref: Term<'a>, config: Term<'a>) -> Term<'a> {
    let configs = term::client_config(config)
        .and_then(|c| Ok((c, term::router_config(config)?, term::ds_config(config)?)));
    match configs {
        Ok((config, router_config, ds_config)) => spawn_reply(env, reply_ref, async move {
            let client = Client::connect(config).await?;
            let router = Router::new(router_config);
            router.start(&client).await?;
            let ds = Arc::new(Durable::new(ds_config));
            Ok(ResourceArc::new(ClientRes {
                client,
                router,
                ds,
                limiters: Limiters::default(),
            }))
        }),
        Err(reason) => (atoms::error(), Reason(&reason)).encode(env),
    }
}

/// `args` is a list of binaries (the Erlang side converts other argument types).
#[rustler::nif]
fn q<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    args: ListIterator<'a>,
) -> NifResult<Term<'a>> {
    let args = args
        .map(|arg| arg.decode::<Binary>())
        .collect::<NifResult<Vec<Binary>>>()?;
    let size = args.iter().map(|arg| arg.len()).sum();
    let mut cmd = redis::Cmd::with_capacity(args.len(), size);
    for arg in &args {
        cmd.arg(arg.as_slice());
    }
    // No task of its own: answered from the connection's reader.
    Ok(answered(env, client.admit("q"), reply_ref, |answer| {
        client.send(cmd, move |reply| {
            answer.answer(|| reply.map(Reply).map_err(Error::raw))
        })
    }))
}

/// `{Breaker, LastError | undefined, InFlight, [{Address, State, LastOkMs,
/// LastError, LastErrorMs}]}` with Breaker `closed | open | half_open`, State
/// `up | connecting | down`, and `undefined` for a time or error not seen.
/// Not counted in flight: an overloaded client still reports its status.
#[rustler::nif]
fn client_status<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
) -> Term<'a> {
    use emqx_redis_storage_core::connection::guard::BreakerState;
    use emqx_redis_storage_core::connection::ServerState;
    spawn_reply(env, reply_ref, async move {
        let status = client.status().await;
        let breaker = match status.breaker {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        };
        let servers = status
            .servers
            .into_iter()
            .map(|server| {
                let state = match server.state {
                    ServerState::Up => "up",
                    ServerState::Connecting => "connecting",
                    ServerState::Down => "down",
                };
                let health = server.health;
                let time = |ms: Option<i64>| ms.map_or(Out::Atom("undefined"), Out::Int);
                Out::Tuple(vec![
                    Out::Bin(server.address.into_bytes()),
                    Out::Atom(state),
                    time(health.last_ok_ms),
                    Out::bin_or(health.last_error.map(String::into_bytes), "undefined"),
                    time(health.last_error_ms),
                ])
            })
            .collect();
        Ok(Out::Tuple(vec![
            Out::Atom(breaker),
            Out::bin_or(status.last_error.map(String::into_bytes), "undefined"),
            Out::Int(client.in_flight() as i64),
            Out::List(servers),
        ]))
    })
}

/// The client's metrics as a map (see `emqx_redis_storage:metrics/1`).
/// Synchronous: it reads counters, and the local route index's size under
/// its read lock, in microseconds.
#[rustler::nif]
fn client_metrics(client: ResourceArc<ClientRes>) -> Out {
    let routes = client
        .router
        .index
        .as_ref()
        .map(|index| index.entry_count());
    term::metrics(client.metrics(), routes, client.limiters.counts())
}

/// Panics inside a runtime task, to prove that such a panic is answered as
/// `{error, {internal, Msg}}` and that the VM and the runtime survive it.
#[rustler::nif]
fn panic_in_task<'a>(env: Env<'a>, reply_ref: Term<'a>) -> Term<'a> {
    spawn_reply(env, reply_ref, async {
        if std::hint::black_box(true) {
            panic!("deliberate panic in a runtime task");
        }
        Ok(())
    })
}
