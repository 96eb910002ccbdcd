//! Session, lease and registry NIFs. Arguments are checked by the Erlang
//! modules; each NIF copies them and answers later with `{Ref, Result}`.

use emqx_redis_storage_core::store::registry;
use emqx_redis_storage_core::store::session::{self, NotHeld, SaveArgs, Saved, SessionInfo};
use rustler::{Binary, Env, ResourceArc, Term};

use crate::nif::ClientRes;
use crate::runtime::{answered, spawn_admitted};
use crate::term::Out;

fn info(i: SessionInfo) -> Out {
    Out::Tuple(vec![
        Out::Int(i.created_at),
        Out::Int(i.updated_at),
        Out::Int(i.expires_at),
        Out::Bin(i.node),
    ])
}

/// `ok`, `{held_by, Owner}` or `not_held`.
fn lease(outcome: Result<(), NotHeld>) -> Out {
    match outcome {
        Ok(()) => Out::Atom("ok"),
        Err(NotHeld(Some(owner))) => Out::Tuple(vec![Out::Atom("held_by"), Out::Bin(owner)]),
        Err(NotHeld(None)) => Out::Atom("not_held"),
    }
}

#[rustler::nif]
#[allow(clippy::too_many_arguments)]
fn session_save<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
    data: Binary,
    ttl_ms: u64,
    node: Binary,
    fence: Option<i64>,
) -> Term<'a> {
    let args = SaveArgs {
        client_id: client_id.to_vec(),
        data: data.to_vec(),
        ttl_ms,
        node: node.to_vec(),
        fence,
    };
    answered(env, client.admit("session_save"), reply_ref, |answer| {
        session::save(&client, args, move |saved| {
            answer.answer(|| {
                Ok(match saved? {
                    Saved::Ok(i) => info(i),
                    Saved::StaleFence => Out::Atom("stale_fence"),
                })
            })
        })
    })
}

#[rustler::nif]
fn session_load<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
) -> Term<'a> {
    let cmd = session::load_cmd(&client, client_id.as_slice());
    answered(env, client.admit("session_load"), reply_ref, |answer| {
        client.send(cmd, move |reply| {
            answer.answer(|| Ok(Out::bin_or(session::loaded(reply)?, "undefined")))
        })
    })
}

#[rustler::nif]
fn session_delete<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
) -> Term<'a> {
    let id = client_id.to_vec();
    spawn_admitted(env, client.admit("session_delete"), reply_ref, async move {
        session::delete(&client, &id).await?;
        Ok(Out::Atom("ok"))
    })
}

#[rustler::nif]
fn session_info<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
) -> Term<'a> {
    let id = client_id.to_vec();
    spawn_admitted(env, client.admit("session_info"), reply_ref, async move {
        Ok(session::info(&client, &id)
            .await?
            .map_or(Out::Atom("undefined"), info))
    })
}

#[rustler::nif]
fn session_count<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
) -> Term<'a> {
    spawn_admitted(env, client.admit("session_count"), reply_ref, async move {
        Ok(Out::Int(session::count(&client).await? as i64))
    })
}

#[rustler::nif]
fn session_list<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    limit: u64,
    offset: u64,
) -> Term<'a> {
    spawn_admitted(env, client.admit("session_list"), reply_ref, async move {
        Ok(Out::bins(session::list(&client, limit, offset).await?))
    })
}

#[rustler::nif]
fn lease_acquire<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
    owner: Binary,
    lease_ms: u64,
    fence_ttl_ms: u64,
) -> Term<'a> {
    let (id, owner) = (client_id.to_vec(), owner.to_vec());
    spawn_admitted(env, client.admit("lease_acquire"), reply_ref, async move {
        Ok(
            match session::acquire_lease(&client, &id, &owner, lease_ms, fence_ttl_ms).await? {
                Ok(fence) => Out::Tuple(vec![Out::Atom("fence"), Out::Int(fence)]),
                Err(not_held) => lease(Err(not_held)),
            },
        )
    })
}

#[rustler::nif]
fn lease_renew<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
    fence: i64,
    lease_ms: u64,
) -> Term<'a> {
    let id = client_id.to_vec();
    spawn_admitted(env, client.admit("lease_renew"), reply_ref, async move {
        Ok(lease(
            session::renew_lease(&client, &id, fence, lease_ms).await?,
        ))
    })
}

#[rustler::nif]
fn lease_release<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
    fence: i64,
) -> Term<'a> {
    let id = client_id.to_vec();
    spawn_admitted(env, client.admit("lease_release"), reply_ref, async move {
        Ok(lease(session::release_lease(&client, &id, fence).await?))
    })
}

#[rustler::nif]
fn channel_register<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
    node: Binary,
) -> Term<'a> {
    let (id, node) = (client_id.to_vec(), node.to_vec());
    spawn_admitted(
        env,
        client.admit("channel_register"),
        reply_ref,
        async move {
            registry::register(&client, &id, &node).await?;
            Ok(Out::Atom("ok"))
        },
    )
}

#[rustler::nif]
fn channel_lookup<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
) -> Term<'a> {
    let id = client_id.to_vec();
    spawn_admitted(env, client.admit("channel_lookup"), reply_ref, async move {
        Ok(Out::bin_or(
            registry::lookup(&client, &id).await?,
            "undefined",
        ))
    })
}

#[rustler::nif]
fn channel_unregister<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
    node: Binary,
) -> Term<'a> {
    let (id, node) = (client_id.to_vec(), node.to_vec());
    spawn_admitted(
        env,
        client.admit("channel_unregister"),
        reply_ref,
        async move {
            registry::unregister(&client, &id, &node).await?;
            Ok(Out::Atom("ok"))
        },
    )
}

#[rustler::nif]
fn channel_cleanup<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    node: Binary,
) -> Term<'a> {
    let node = node.to_vec();
    spawn_admitted(
        env,
        client.admit("channel_cleanup"),
        reply_ref,
        async move {
            Ok(Out::Int(
                registry::cleanup_node(&client, &node).await? as i64,
            ))
        },
    )
}
