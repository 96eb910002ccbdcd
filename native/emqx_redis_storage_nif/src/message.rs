//! Message queue NIFs. Arguments are checked by `emqx_redis_message`; each
//! NIF copies them and answers later with `{Ref, Result}`.

use emqx_redis_storage_core::store::message::{self, NewMessage};
use rustler::{Binary, Env, ResourceArc, Term};

use crate::nif::ClientRes;
use crate::runtime::spawn_admitted;
use crate::term::Out;

/// `messages` is `[{Id, TtlMs, Body}]`, in queue order.
#[rustler::nif]
fn message_store<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
    messages: Vec<(Binary, u64, Binary)>,
    max_len: u64,
) -> Term<'a> {
    let id = client_id.to_vec();
    let messages: Vec<NewMessage> = messages
        .into_iter()
        .map(|(id, ttl_ms, body)| NewMessage {
            id: id.to_vec(),
            ttl_ms,
            body: body.to_vec(),
        })
        .collect();
    spawn_admitted(env, client.admit("message_store"), reply_ref, async move {
        message::store(&client, &id, messages, max_len).await?;
        Ok(Out::Atom("ok"))
    })
}

/// Replies `[{Id, Body}]`, oldest first.
#[rustler::nif]
fn message_get<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
    offset: u64,
    limit: u64,
) -> Term<'a> {
    let id = client_id.to_vec();
    spawn_admitted(env, client.admit("message_get"), reply_ref, async move {
        let page = message::get(&client, &id, offset, limit).await?;
        Ok(Out::List(
            page.into_iter()
                .map(|m| Out::Tuple(vec![Out::Bin(m.id), Out::Bin(m.body)]))
                .collect(),
        ))
    })
}

#[rustler::nif]
fn message_ack<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
    message_id: Binary,
) -> Term<'a> {
    let (id, message_id) = (client_id.to_vec(), message_id.to_vec());
    spawn_admitted(env, client.admit("message_ack"), reply_ref, async move {
        message::ack(&client, &id, &message_id).await?;
        Ok(Out::Atom("ok"))
    })
}

#[rustler::nif]
fn message_delete<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
) -> Term<'a> {
    let id = client_id.to_vec();
    spawn_admitted(env, client.admit("message_delete"), reply_ref, async move {
        message::delete(&client, &id).await?;
        Ok(Out::Atom("ok"))
    })
}

#[rustler::nif]
fn message_count<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
) -> Term<'a> {
    let id = client_id.to_vec();
    spawn_admitted(env, client.admit("message_count"), reply_ref, async move {
        Ok(Out::Int(message::count(&client, &id).await? as i64))
    })
}

/// Replies `{Len, Dropped, OldestAt | undefined}`.
#[rustler::nif]
fn message_info<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
) -> Term<'a> {
    let id = client_id.to_vec();
    spawn_admitted(env, client.admit("message_info"), reply_ref, async move {
        let info = message::info(&client, &id).await?;
        Ok(Out::Tuple(vec![
            Out::Int(info.len as i64),
            Out::Int(info.dropped as i64),
            info.oldest_at.map_or(Out::Atom("undefined"), Out::Int),
        ]))
    })
}
