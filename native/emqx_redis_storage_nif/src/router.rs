//! Topic rules and routing-table NIFs. Validation and local matching are
//! plain synchronous NIFs: bounded, in-memory work of a few microseconds.

use emqx_redis_storage_core::store::router::{self, decode_dest, encode_dest};
use emqx_redis_storage_core::store::topic;
use emqx_redis_storage_core::Error;
use rustler::{Atom, Binary, Encoder, Env, ResourceArc, Term};

use crate::nif::ClientRes;
use crate::runtime::spawn_admitted;
use crate::term::{self, Out};

mod atoms {
    rustler::atoms! { ok, error, name, filter, not_ready }
}

/// `ok` or `{error, Reason}` with Reason an atom such as `wildcard_in_name`.
#[rustler::nif]
fn topic_validate<'a>(env: Env<'a>, kind: Atom, topic: Binary) -> Term<'a> {
    let checked = if kind == atoms::name() {
        topic::validate_name(topic.as_slice())
    } else {
        topic::validate_filter(topic.as_slice())
    };
    match checked {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => (atoms::error(), Atom::from_str(env, e.as_str()).ok()).encode(env),
    }
}

#[rustler::nif]
fn topic_match(name: Binary, filter: Binary) -> bool {
    topic::matches(name.as_slice(), filter.as_slice())
}

/// A dest term: `Node` (an atom) or `{Group, Node}`. Checked on the Erlang side.
fn dest_arg(term: Term) -> Option<Vec<u8>> {
    if let Ok(node) = term.atom_to_string() {
        return Some(encode_dest(node.as_bytes(), None));
    }
    let (group, node): (Binary, Atom) = term.decode().ok()?;
    let node = node.to_term(term.get_env()).atom_to_string().ok()?;
    Some(encode_dest(node.as_bytes(), Some(group.as_slice())))
}

fn dest_out(dest: &[u8]) -> Result<Out, Error> {
    Ok(match decode_dest(dest)? {
        (node, None) => Out::Node(node.to_vec()),
        (node, Some(group)) => Out::Tuple(vec![Out::Bin(group.to_vec()), Out::Node(node.to_vec())]),
    })
}

fn dests_out(dests: Vec<Vec<u8>>) -> Result<Out, Error> {
    Ok(Out::List(
        dests
            .iter()
            .map(|d| dest_out(d))
            .collect::<Result<_, _>>()?,
    ))
}

fn badarg<'a>(env: Env<'a>) -> Term<'a> {
    (atoms::error(), rustler::types::atom::badarg()).encode(env)
}

/// `routes` is a list of `{Filter, Dest}`; replies with the number added.
#[rustler::nif]
fn route_add<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    routes: Vec<(Binary<'a>, Term<'a>)>,
) -> Term<'a> {
    let mut owned = Vec::with_capacity(routes.len());
    for (filter, dest) in routes {
        let Some(dest) = dest_arg(dest) else {
            return badarg(env);
        };
        owned.push((filter.to_vec(), dest));
    }
    spawn_admitted(env, client.admit("route_add"), reply_ref, async move {
        Ok(Out::Int(
            router::add(&client, &client.router, &owned).await? as i64,
        ))
    })
}

#[rustler::nif]
fn route_delete<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    filter: Binary,
    dest: Term<'a>,
) -> Term<'a> {
    let Some(dest) = dest_arg(dest) else {
        return badarg(env);
    };
    let filter = filter.to_vec();
    spawn_admitted(env, client.admit("route_delete"), reply_ref, async move {
        router::delete(&client, &client.router, &filter, &dest).await?;
        Ok(Out::Atom("ok"))
    })
}

#[rustler::nif]
fn route_lookup<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    filter: Binary,
) -> Term<'a> {
    let filter = filter.to_vec();
    spawn_admitted(env, client.admit("route_lookup"), reply_ref, async move {
        dests_out(router::lookup(&client, &client.router, &filter).await?)
    })
}

#[rustler::nif]
fn route_filters<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
) -> Term<'a> {
    spawn_admitted(env, client.admit("route_filters"), reply_ref, async move {
        Ok(Out::bins(router::filters(&client, &client.router).await?))
    })
}

#[rustler::nif]
fn route_cleanup<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    node: Atom,
) -> Term<'a> {
    let Ok(node) = node.to_term(env).atom_to_string() else {
        return badarg(env);
    };
    spawn_admitted(env, client.admit("route_cleanup"), reply_ref, async move {
        Ok(Out::Int(
            router::cleanup_node(&client, &client.router, node.as_bytes()).await? as i64,
        ))
    })
}

/// `{ok, Dests}` from the local index; `{error, Reason}` for an invalid topic
/// name; `not_ready` while the index may be stale (or when the client matches
/// in Redis): then use `route_match_redis`.
#[rustler::nif]
fn route_match_local<'a>(env: Env<'a>, client: ResourceArc<ClientRes>, topic: Binary) -> Term<'a> {
    if let Err(e) = topic::validate_name(topic.as_slice()) {
        return (atoms::error(), Atom::from_str(env, e.as_str()).ok()).encode(env);
    }
    let found = client
        .router
        .index
        .as_ref()
        .and_then(|index| index.matches(topic.as_slice()));
    match found {
        Some(dests) => {
            // The index holds only checked dests (router.rs), so none is left out.
            let terms: Vec<Term<'a>> = dests
                .iter()
                .filter_map(|d| decode_dest(d).ok())
                .map(|dest| match dest {
                    (node, None) => term::node(env, node),
                    (node, Some(group)) => {
                        (term::binary(env, group), term::node(env, node)).encode(env)
                    }
                })
                .collect();
            (atoms::ok(), terms).encode(env)
        }
        None => atoms::not_ready().encode(env),
    }
}

#[rustler::nif]
fn route_match_redis<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    topic: Binary,
) -> Term<'a> {
    let topic = topic.to_vec();
    spawn_admitted(
        env,
        client.admit("route_match_redis"),
        reply_ref,
        async move { dests_out(router::match_in_redis(&client, &client.router, &topic).await?) },
    )
}

/// True when the local index is loaded and in step with Redis.
#[rustler::nif]
fn route_index_ready(client: ResourceArc<ClientRes>) -> bool {
    client.router.index.as_ref().is_some_and(|i| i.is_ready())
}
