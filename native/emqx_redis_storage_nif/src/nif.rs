//! The client NIFs: connect, raw commands, and a self-test of the reply path.
//! Each returns a ticket at once (or `{error, Reason}` for bad arguments) and
//! answers the caller later with `{Ref, Result}`.

use rustler::{Binary, Encoder, Env, ResourceArc, Term};

use crate::client::Client;
use crate::config::ClientConfig;
use crate::error::Error;
use crate::runtime::spawn_reply;
use crate::value::Reply;

mod atoms {
    rustler::atoms! { error }
}

fn started<'a>(env: Env<'a>, result: Result<ResourceArc<crate::runtime::Ticket>, Error>) -> Term<'a> {
    match result {
        Ok(ticket) => ticket.encode(env),
        Err(reason) => (atoms::error(), reason).encode(env),
    }
}

#[rustler::nif]
fn connect<'a>(env: Env<'a>, reply_ref: Term<'a>, config: Term<'a>) -> Term<'a> {
    let result = ClientConfig::decode(config).map(|config| {
        spawn_reply(env, reply_ref, async move {
            Client::connect(config).await.map(ResourceArc::new)
        })
    });
    started(env, result)
}

/// `args` is a list of binaries (the Erlang side converts other argument types).
#[rustler::nif]
fn q<'a>(
    env: Env<'a>,
    client: ResourceArc<Client>,
    reply_ref: Term<'a>,
    args: Vec<Binary<'a>>,
) -> Term<'a> {
    let mut cmd = redis::Cmd::new();
    for arg in &args {
        cmd.arg(arg.as_slice());
    }
    let ticket = spawn_reply(env, reply_ref, async move { client.query(&cmd).await.map(Reply) });
    ticket.encode(env)
}

/// Panics inside a runtime task, to prove that such a panic is answered as
/// `{error, {internal, Msg}}` and that the VM and the runtime survive it.
#[rustler::nif]
fn panic_in_task<'a>(env: Env<'a>, reply_ref: Term<'a>) -> Term<'a> {
    let ticket = spawn_reply(env, reply_ref, async {
        if true {
            panic!("deliberate panic in a runtime task");
        }
        Ok(())
    });
    ticket.encode(env)
}
