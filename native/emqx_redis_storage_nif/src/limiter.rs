//! Rate limit NIFs. Arguments are checked by `emqx_redis_limiter`. A check
//! answered without Redis (from a local batch, or by the policy when the
//! client is overloaded) returns `{ok, Decision}` at once; else a ticket,
//! and `{Ref, {ok, Decision}}` later. `Decision` is the tokens left, or
//! `{limited, RetryAfterMs}`.

use emqx_redis_storage_core::store::limiter::{Decision, Limit, Local};
use rustler::{Binary, Encoder, Env, ResourceArc, Term};

use crate::nif::ClientRes;
use crate::runtime::spawn_admitted;
use crate::term::Out;

fn decision(d: Decision) -> Out {
    match d {
        Decision::Allowed(left) => Out::Int(i64::try_from(left).unwrap_or(i64::MAX)),
        Decision::Limited(ms) => Out::Tuple(vec![
            Out::Atom("limited"),
            Out::Int(i64::try_from(ms).unwrap_or(i64::MAX)),
        ]),
    }
}

fn tagged(tag: &'static str, value: Out) -> Out {
    Out::Tuple(vec![Out::Atom(tag), value])
}

fn unknown(name: &[u8]) -> Out {
    tagged("error", tagged("unknown_limiter", Out::Bin(name.to_vec())))
}

#[rustler::nif]
fn limiter_define(
    client: ResourceArc<ClientRes>,
    name: Binary,
    rate: u64,
    burst: u64,
    batch: u64,
    allow_when_down: bool,
) -> rustler::Atom {
    let limit = Limit {
        rate,
        burst,
        batch,
        allow_when_down,
    };
    client.limiters.define(&name, limit);
    rustler::types::atom::ok()
}

#[rustler::nif]
fn limiter_check<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    name: Binary,
    key: Binary,
    cost: u64,
) -> Term<'a> {
    let Some(limiter) = client.limiters.get(&name) else {
        return unknown(&name).encode(env);
    };
    let ask = match limiter.check_local(&key, cost) {
        Local::TooCostly { burst } => {
            let detail = Out::Map(vec![
                (Out::Atom("cost"), Out::Int(cost as i64)),
                (Out::Atom("burst"), Out::Int(burst as i64)),
            ]);
            return tagged("error", tagged("invalid_cost", detail)).encode(env);
        }
        Local::Answered(d) => return tagged("ok", decision(d)).encode(env),
        Local::Ask(ask) => ask,
    };
    match client.admit("limiter_check") {
        Err(refused) => tagged("ok", decision(limiter.unanswered(&refused))).encode(env),
        admitted => {
            let key = key.to_vec();
            spawn_admitted(env, admitted, reply_ref, async move {
                Ok(decision(
                    limiter.check_redis(&client, &key, cost, ask).await,
                ))
            })
        }
    }
}

#[rustler::nif]
fn limiter_reset<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    name: Binary,
    key: Binary,
) -> Term<'a> {
    let Some(limiter) = client.limiters.get(&name) else {
        return unknown(&name).encode(env);
    };
    let key = key.to_vec();
    spawn_admitted(env, client.admit("limiter_reset"), reply_ref, async move {
        limiter.reset(&client, &key).await?;
        Ok(Out::Atom("ok"))
    })
}
