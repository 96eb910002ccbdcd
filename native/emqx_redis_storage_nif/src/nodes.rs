//! Node liveness NIFs (emqx_redis_nodes): membership, heartbeats and the
//! steps of a fenced reap. Arguments are checked by the Erlang side; node
//! names travel as binaries (the Erlang side makes atoms, within a bound).

use emqx_redis_storage_core::store::nodes::{self, Claim, Joined, Step, View};
use rustler::{Atom, Binary, Encoder, Env, ResourceArc, Term};

use crate::nif::ClientRes;
use crate::runtime::spawn_admitted;
use crate::term::Out;

mod atoms {
    rustler::atoms! { error, badarg, channels, routes, leases }
}

/// `{Now, [{Node, Deadline, Incarnation}]}`, times in Redis ms.
fn view(v: View) -> Out {
    let members = v
        .members
        .into_iter()
        .map(|m| {
            Out::Tuple(vec![
                Out::Bin(m.node),
                Out::Int(m.deadline),
                Out::Int(m.incarnation),
            ])
        })
        .collect();
    Out::Tuple(vec![Out::Int(v.now), Out::List(members)])
}

fn bool_out(b: bool) -> Out {
    Out::Atom(if b { "true" } else { "false" })
}

/// `{joined, Incarnation}` or `{must_reap, EarlierIncarnation}`.
#[rustler::nif]
fn node_join<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    node: Binary,
    ttl_ms: u64,
) -> Term<'a> {
    let node = node.to_vec();
    spawn_admitted(env, client.admit("node_join"), reply_ref, async move {
        Ok(match nodes::join(&client, &node, ttl_ms).await? {
            Joined::Joined(inc) => Out::Tuple(vec![Out::Atom("joined"), Out::Int(inc)]),
            Joined::MustReap(inc) => Out::Tuple(vec![Out::Atom("must_reap"), Out::Int(inc)]),
        })
    })
}

/// `{Renewed, View}`.
#[rustler::nif]
fn node_heartbeat<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    node: Binary,
    incarnation: i64,
    ttl_ms: u64,
) -> Term<'a> {
    let node = node.to_vec();
    spawn_admitted(env, client.admit("node_heartbeat"), reply_ref, async move {
        let (renewed, v) = nodes::heartbeat(&client, &node, incarnation, ttl_ms).await?;
        Ok(Out::Tuple(vec![bool_out(renewed), view(v)]))
    })
}

#[rustler::nif]
fn node_view<'a>(env: Env<'a>, client: ResourceArc<ClientRes>, reply_ref: Term<'a>) -> Term<'a> {
    spawn_admitted(env, client.admit("node_view"), reply_ref, async move {
        Ok(view(nodes::view(&client).await?))
    })
}

#[rustler::nif]
fn node_leave<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    node: Binary,
    incarnation: i64,
) -> Term<'a> {
    let node = node.to_vec();
    spawn_admitted(env, client.admit("node_leave"), reply_ref, async move {
        Ok(bool_out(nodes::leave(&client, &node, incarnation).await?))
    })
}

/// `{granted, Fence, Until}`, `gone`, `alive` or `{held, Owner}`.
#[rustler::nif]
fn node_reap_claim<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    node: Binary,
    incarnation: i64,
    owner: Binary,
    lease_ms: u64,
) -> Term<'a> {
    let (node, owner) = (node.to_vec(), owner.to_vec());
    spawn_admitted(env, client.admit("node_reap"), reply_ref, async move {
        Ok(
            match nodes::claim_reap(&client, &node, incarnation, &owner, lease_ms).await? {
                Claim::Granted { fence, until } => {
                    Out::Tuple(vec![Out::Atom("granted"), Out::Int(fence), Out::Int(until)])
                }
                Claim::Gone => Out::Atom("gone"),
                Claim::Alive => Out::Atom("alive"),
                Claim::Held(owner) => Out::Tuple(vec![Out::Atom("held"), Out::Bin(owner)]),
            },
        )
    })
}

/// The lease's new end, or `not_held`.
#[rustler::nif]
fn node_reap_renew<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    node: Binary,
    fence: i64,
    lease_ms: u64,
) -> Term<'a> {
    let node = node.to_vec();
    spawn_admitted(env, client.admit("node_reap"), reply_ref, async move {
        let until = nodes::renew_reap(&client, &node, fence, lease_ms).await?;
        Ok(until.map_or(Out::Atom("not_held"), Out::Int))
    })
}

/// The number of reaps of the name so far, or `not_held`.
#[rustler::nif]
fn node_reap_finish<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    node: Binary,
    incarnation: i64,
    fence: i64,
) -> Term<'a> {
    let node = node.to_vec();
    spawn_admitted(env, client.admit("node_reap"), reply_ref, async move {
        let count = nodes::finish_reap(&client, &node, incarnation, fence).await?;
        Ok(count.map_or(Out::Atom("not_held"), Out::Int))
    })
}

/// `Step` is `channels`, `routes` or `leases`; the number removed, or
/// `stale` if the lease ending at `until` had ended.
#[rustler::nif]
fn node_reap_step<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    step: Atom,
    node: Binary,
    until: i64,
) -> Term<'a> {
    let step = if step == atoms::channels() {
        Step::Channels
    } else if step == atoms::routes() {
        Step::Routes
    } else if step == atoms::leases() {
        Step::Leases
    } else {
        return (atoms::error(), atoms::badarg()).encode(env);
    };
    let node = node.to_vec();
    spawn_admitted(env, client.admit("node_reap"), reply_ref, async move {
        let removed = nodes::reap_step(&client, &client.router, step, &node, until).await?;
        Ok(removed.map_or(Out::Atom("stale"), |n| Out::Int(n as i64)))
    })
}
