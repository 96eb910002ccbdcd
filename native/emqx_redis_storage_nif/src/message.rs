//! Message queue NIFs. Arguments are checked by `emqx_redis_message`; each
//! NIF copies them and answers later with `{Ref, Result}`.

use emqx_redis_storage_core::store::message::{self, NewMessage, Queued};
use rustler::{Binary, Encoder, Env, NewBinary, ResourceArc, Term};

use crate::nif::ClientRes;
use crate::runtime::{answered, spawn_admitted};
use crate::term::{binary, Out, Reason};

mod atoms {
    rustler::atoms! { ok, error }
}

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
    let messages: Vec<NewMessage> = messages
        .into_iter()
        .map(|(id, ttl_ms, body)| NewMessage {
            id: id.to_vec(),
            ttl_ms,
            body: body.to_vec(),
        })
        .collect();
    answered(env, client.admit("message_store"), reply_ref, |answer| {
        let id = client_id.as_slice();
        message::store(&client, id, messages, max_len, move |stored| {
            answer.answer(|| stored.map(|_| Out::Atom("ok")))
        })
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
    if limit == 0 {
        // An empty page: answered at once, without Redis.
        return match client.admit("message_get") {
            Ok(admitted) => {
                admitted.finish(&Ok(()));
                (atoms::ok(), Vec::<Term>::new()).encode(env)
            }
            Err(reason) => (atoms::error(), Reason(&reason)).encode(env),
        };
    }
    answered(env, client.admit("message_get"), reply_ref, |answer| {
        let id = client_id.as_slice();
        message::get(&client, id, offset, limit, move |page| {
            answer.answer(|| page.map(Page))
        })
    })
}

/// A page of messages: `[{Id, Body}]`, each body a sub-binary of one binary
/// that holds them all (one allocation and copy for the page, not one per
/// message); ids, short, in the reply's own heap.
struct Page(Vec<Queued>);

impl Encoder for Page {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let size = self.0.iter().map(|m| m.body().len()).sum();
        let mut all = NewBinary::new(env, size);
        let mut at = 0;
        for m in &self.0 {
            all.as_mut_slice()[at..at + m.body().len()].copy_from_slice(m.body());
            at += m.body().len();
        }
        let all: Binary = all.into();
        let mut at = 0;
        let page: Vec<Term<'a>> = self
            .0
            .iter()
            .map(|m| {
                let body = all
                    .make_subbinary(at, m.body().len())
                    .map_or_else(|_| atoms::error().encode(env), |b| b.to_term(env));
                at += m.body().len();
                (binary(env, &m.id), body).encode(env)
            })
            .collect();
        page.encode(env)
    }
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
