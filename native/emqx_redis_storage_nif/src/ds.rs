//! Durable-message NIFs (`emqx_redis_ds`). Streams travel as `{Level,
//! Shard}` and positions as `{Ms, Seq}`; the Erlang side builds its terms.

use emqx_redis_storage_core::store::ds::{
    self, is_level, Batch, Cursor, Pos, Stream, Subscribed, ToPersist,
};
use emqx_redis_storage_core::store::topic;
use rustler::env::OwnedEnv;
use rustler::{Atom, Binary, Encoder, Env, LocalPid, ResourceArc, Term};

use crate::nif::ClientRes;
use crate::runtime::spawn_admitted;
use crate::term::{new_binary, Out};

mod atoms {
    rustler::atoms! { ok, error, emqx_redis_ds, new_data, topic, corrupt, invalid_message }
}

fn badarg<'a>(env: Env<'a>) -> Term<'a> {
    (atoms::error(), rustler::types::atom::badarg()).encode(env)
}

fn stream(level: Binary, shard: u16) -> Option<Stream> {
    is_level(level.as_slice()).then(|| Stream {
        level: level.to_vec(),
        shard,
    })
}

/// Replies `added`, `present` or `too_many`.
#[rustler::nif]
fn ds_subscribe<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
    filter: Binary,
    max: u32,
) -> Term<'a> {
    let (client_id, filter) = (client_id.to_vec(), filter.to_vec());
    spawn_admitted(env, client.admit("ds_subscribe"), reply_ref, async move {
        client.ds.start(&client);
        Ok(Out::Atom(
            match ds::subscribe(&client, &client.ds, &client_id, &filter, max).await? {
                Subscribed::Added => "added",
                Subscribed::Present => "present",
                Subscribed::TooMany => "too_many",
            },
        ))
    })
}

#[rustler::nif]
fn ds_unsubscribe<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
    filter: Binary,
) -> Term<'a> {
    let (client_id, filter) = (client_id.to_vec(), filter.to_vec());
    spawn_admitted(env, client.admit("ds_unsubscribe"), reply_ref, async move {
        client.ds.start(&client);
        ds::unsubscribe(&client, &client.ds, &client_id, &filter).await?;
        Ok(Out::Atom("ok"))
    })
}

#[rustler::nif]
fn ds_subscriptions<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    client_id: Binary,
) -> Term<'a> {
    let client_id = client_id.to_vec();
    spawn_admitted(
        env,
        client.admit("ds_subscriptions"),
        reply_ref,
        async move {
            client.ds.start(&client);
            Ok(Out::bins(ds::subscriptions(&client, &client_id).await?))
        },
    )
}

#[rustler::nif]
fn ds_filters<'a>(env: Env<'a>, client: ResourceArc<ClientRes>, reply_ref: Term<'a>) -> Term<'a> {
    spawn_admitted(env, client.admit("ds_filters"), reply_ref, async move {
        Ok(Out::bins(ds::filters(&client).await?))
    })
}

#[rustler::nif]
fn ds_holders<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    filter: Binary,
) -> Term<'a> {
    let filter = filter.to_vec();
    spawn_admitted(env, client.admit("ds_holders"), reply_ref, async move {
        Ok(Out::bins(ds::holders(&client, &filter).await?))
    })
}

/// `msgs` is a list of `{Topic, Body, FromHash}`; replies with the number
/// stored. A topic that is not a topic name: `{error, {invalid_message,
/// {topic, Topic}}}` at once, nothing stored.
#[rustler::nif]
fn ds_persist<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    msgs: Vec<(Binary<'a>, Binary<'a>, u32)>,
) -> Term<'a> {
    let mut owned = Vec::with_capacity(msgs.len());
    for (topic, body, from_hash) in msgs {
        if topic::validate_name(topic.as_slice()).is_err() {
            let reason = (atoms::invalid_message(), (atoms::topic(), topic));
            return (atoms::error(), reason).encode(env);
        }
        owned.push(ToPersist {
            topic: topic.to_vec(),
            body: body.to_vec(),
            from_hash,
        });
    }
    spawn_admitted(env, client.admit("ds_persist"), reply_ref, async move {
        client.ds.start(&client);
        Ok(Out::Int(
            ds::persist(&client, &client.ds, owned).await? as i64,
        ))
    })
}

/// Replies `[{Level, Shard}]`.
#[rustler::nif]
fn ds_streams<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    filter: Binary,
) -> Term<'a> {
    if topic::validate_filter(filter.as_slice()).is_err() {
        return badarg(env);
    }
    let filter = filter.to_vec();
    spawn_admitted(env, client.admit("ds_streams"), reply_ref, async move {
        client.ds.start(&client);
        let streams = ds::streams(&client, &client.ds, &filter).await?;
        Ok(Out::List(
            streams
                .into_iter()
                .map(|s| Out::Tuple(vec![Out::Bin(s.level), Out::Int(s.shard.into())]))
                .collect(),
        ))
    })
}

/// The messages of a batch as `{Topic, Body}`, Body the stored term as
/// Redis sent it: a sub-binary of one binary per stream entry (one copy
/// and one allocation per entry, not per message). The caller decodes it
/// (`emqx_redis_ds:next/3`), in parallel with other callers: decoded here,
/// on the runtime's threads, each atom of each body took the VM's atom
/// table lock, which threads outside the schedulers share, and replay at
/// 64 processes spent most of its time waiting for it.
struct Messages(Batch);

impl Encoder for Messages {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        // Messages of one persist call often share their topic: one term
        // for a run of equal topics, made in the env's heap (a small binary
        // there costs no allocation of its own and no off-heap reference in
        // the caller's process).
        let mut last_topic: Option<(&[u8], Term<'a>)> = None;
        let mut last_entry: Option<(usize, Binary<'a>)> = None;
        let pairs: Vec<Term<'a>> = self
            .0
            .messages()
            .map(|(e, topic, body)| {
                let topic_term = match last_topic {
                    Some((bytes, term)) if bytes == topic => term,
                    _ => {
                        let term = new_binary(env, topic).to_term(env);
                        last_topic = Some((topic, term));
                        term
                    }
                };
                let entry = match last_entry {
                    Some((i, entry)) if i == e => entry,
                    _ => {
                        let entry = new_binary(env, self.0.entry(e));
                        last_entry = Some((e, entry));
                        entry
                    }
                };
                // The ranges come from parsing this entry: always inside it.
                let body = entry
                    .make_subbinary(body.start, body.len())
                    .map_or_else(|_| atoms::corrupt().encode(env), |b| b.to_term(env));
                (topic_term, body).encode(env)
            })
            .collect();
        pairs.encode(env)
    }
}

/// Replies `{{Ms, Seq, Skip}, [{Topic, Body}], Scanned}`: where to go on
/// from, the matching messages (see `Messages`) and how many messages were
/// looked at.
#[rustler::nif]
#[allow(clippy::too_many_arguments)]
fn ds_next<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    (level, shard): (Binary, u16),
    filter: Binary,
    (ms, seq, skip): (u64, u64, u32),
    n: usize,
) -> Term<'a> {
    let Some(stream) = stream(level, shard) else {
        return badarg(env);
    };
    if topic::validate_filter(filter.as_slice()).is_err() || n == 0 {
        return badarg(env);
    }
    let filter = filter.to_vec();
    spawn_admitted(env, client.admit("ds_next"), reply_ref, async move {
        client.ds.start(&client);
        let from = Cursor {
            id: Pos { ms, seq },
            skip,
        };
        let batch = ds::next(&client, &client.ds, &stream, &filter, from, n).await?;
        let Cursor { id, skip } = batch.next;
        let scanned = batch.scanned;
        Ok(((id.ms, id.seq, skip), Messages(batch), scanned))
    })
}

/// Registers a watch: the caller gets `{emqx_redis_ds, WatchRef,
/// new_data}` once the stream holds data at or after `{Ms, Seq}`. `key`
/// names the watch for `ds_unwatch`.
#[rustler::nif]
fn ds_watch<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    (level, shard): (Binary, u16),
    (ms, seq): (u64, u64),
    watch_ref: Term<'a>,
    key: Binary,
) -> Term<'a> {
    let Some(stream) = stream(level, shard) else {
        return badarg(env);
    };
    let pid: LocalPid = env.pid();
    let mut msg_env = OwnedEnv::new();
    let saved = msg_env.save(watch_ref);
    let notify = Box::new(move || {
        let _ = msg_env.send_and_clear(&pid, |env| {
            (atoms::emqx_redis_ds(), saved.load(env), atoms::new_data()).encode(env)
        });
    });
    let key = key.to_vec();
    spawn_admitted(env, client.admit("ds_watch"), reply_ref, async move {
        client.ds.start(&client);
        ds::watch(&client, &client.ds, stream, Pos { ms, seq }, key, notify).await?;
        Ok(Out::Atom("ok"))
    })
}

/// Synchronous: removes a watch from memory.
#[rustler::nif]
fn ds_unwatch(client: ResourceArc<ClientRes>, key: Binary) -> Atom {
    ds::unwatch(&client.ds, key.as_slice());
    atoms::ok()
}

/// Whether the client's mirror of durable filters matches `topic`:
/// `true`, `false`, or `not_ready` while it may be stale (or, on a client's
/// first durable-messages call, not loaded yet).
#[rustler::nif]
fn ds_filter_match<'a>(env: Env<'a>, client: ResourceArc<ClientRes>, topic: Binary) -> Term<'a> {
    if !client.ds.is_started() {
        let starting = client.clone();
        crate::runtime::handle().spawn(async move { starting.ds.start(&starting) });
    }
    match client.ds.filters().any_match(topic.as_slice()) {
        Some(found) => found.encode(env),
        None => rustler::types::atom::Atom::from_str(env, "not_ready")
            .map_or_else(|_| badarg(env), |a| a.encode(env)),
    }
}
