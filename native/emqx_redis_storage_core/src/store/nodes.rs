//! Node liveness: members with heartbeats, incarnations, and the fenced reap
//! of a dead incarnation's registry entries, routes and leases.
//!
//! The membership lives in one small slot (`keys::members` and its
//! siblings, tag `{n}`): one entry per node, never per client or route.
//! Every node renews its deadline there; a member whose deadline has passed
//! is dead, and stays listed (with its incarnation) until it is reaped.
//!
//! A reap is run by whoever takes the node's reap lease (`claim_reap`, with a
//! new fence): its steps (`reap_step`) remove the dead node's channels,
//! routes and leases, and `finish_reap` ends the membership and counts the
//! reap. Entries are keyed by node name, not incarnation, so two rules keep
//! a new incarnation's entries safe from a reaper of an old one:
//!
//! - A name joins again only once its earlier incarnation is reaped
//!   (`join` answers `MustReap`), so the new incarnation writes nothing
//!   while a reap of its name can still run legitimately.
//! - Every step's scripts check, in the script that deletes, that the
//!   reaper's lease has not ended (`reap_fence.lua`, by the Redis clock of
//!   the slot). A reaper that stalled past its lease removes nothing; the
//!   lease is given to another reaper only `CLOCK_SKEW_MS` after it ended.
//!
//! Every step is idempotent: a reaper that dies mid-way is replaced once its
//! lease ends, and the next one does the whole reap again.

use std::sync::LazyLock;

use redis::Value;

use crate::connection::scripts::Lua;
use crate::connection::{refs, Client};
use crate::error::{Error, Result};
use crate::store::keys::ClientKeys;
use crate::store::router::{self, Router};
use crate::store::session::unexpected;
use crate::store::{registry, session};

/// How far the clocks of a Cluster's masters may differ: a reap lease is
/// given to another reaper only this long after it ended.
pub const CLOCK_SKEW_MS: u64 = 1000;

fn node_script(own: &str) -> Lua {
    Lua::new(&[include_str!("lua/node_prelude.lua"), own])
}

static JOIN: LazyLock<Lua> = LazyLock::new(|| node_script(include_str!("lua/node_join.lua")));
static HEARTBEAT: LazyLock<Lua> =
    LazyLock::new(|| node_script(include_str!("lua/node_heartbeat.lua")));
static VIEW: LazyLock<Lua> = LazyLock::new(|| node_script(include_str!("lua/node_view.lua")));
static LEAVE: LazyLock<Lua> = LazyLock::new(|| node_script(include_str!("lua/node_leave.lua")));
static CLAIM: LazyLock<Lua> =
    LazyLock::new(|| node_script(include_str!("lua/node_reap_claim.lua")));
static RENEW: LazyLock<Lua> =
    LazyLock::new(|| node_script(include_str!("lua/node_reap_renew.lua")));
static FINISH: LazyLock<Lua> =
    LazyLock::new(|| node_script(include_str!("lua/node_reap_finish.lua")));

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: Vec<u8>,
    /// Redis ms; passed: the member is dead (not reaped yet).
    pub deadline: i64,
    pub incarnation: i64,
}

/// The membership as read at `now` (Redis ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub now: i64,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    Joined(i64),
    /// An earlier incarnation of the name is still a member: reap it first.
    MustReap(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lease is ours until `until` (Redis ms).
    Granted {
        fence: i64,
        until: i64,
    },
    /// No longer a member with that incarnation: reaped already.
    Gone,
    Alive,
    Held(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Channels,
    Routes,
    Leases,
}

fn membership(client: &Client) -> [Vec<u8>; 5] {
    let k = client.keys();
    [
        k.members(),
        k.incarnations(),
        k.reap_leases(),
        k.reap_counts(),
        k.node_sequence(),
    ]
}

fn view_of(script: &str, reply: &[Value]) -> Result<(bool, View)> {
    let int = |v: &Value| match v {
        Value::Int(i) => Some(*i),
        _ => None,
    };
    let bad = || unexpected(script, &reply);
    let (status, now) = match reply {
        [status, now, ..] => (int(status).ok_or_else(bad)?, int(now).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    let members = reply[2..]
        .chunks(3)
        .map(|m| match m {
            [Value::BulkString(node), deadline, inc] => Ok(Member {
                node: node.clone(),
                deadline: int(deadline).ok_or_else(bad)?,
                incarnation: int(inc).ok_or_else(bad)?,
            }),
            _ => Err(bad()),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((status == 1, View { now, members }))
}

pub async fn join(client: &Client, node: &[u8], ttl_ms: u64) -> Result<Joined> {
    let k = membership(client);
    let reply: (i64, i64) = client
        .write_eval(
            &JOIN,
            &[&k[0], &k[1], &k[4]],
            &[node, ttl_ms.to_string().as_bytes()],
        )
        .await
        .map_err(|e| e.of("node"))?;
    match reply {
        (1, inc) => Ok(Joined::Joined(inc)),
        (0, earlier) => Ok(Joined::MustReap(earlier)),
        other => Err(unexpected("node_join", &other)),
    }
}

/// Renews this incarnation's heartbeat: `(false, _)` if it was declared
/// dead or reaped meanwhile (it must join again). With the membership.
pub async fn heartbeat(
    client: &Client,
    node: &[u8],
    incarnation: i64,
    ttl_ms: u64,
) -> Result<(bool, View)> {
    let k = membership(client);
    let reply: Vec<Value> = client
        .write_eval(
            &HEARTBEAT,
            &refs(&k[..2]),
            &[
                node,
                incarnation.to_string().as_bytes(),
                ttl_ms.to_string().as_bytes(),
            ],
        )
        .await
        .map_err(|e| e.of("node"))?;
    view_of("node_heartbeat", &reply)
}

pub async fn view(client: &Client) -> Result<View> {
    let k = membership(client);
    let reply: Vec<Value> = client
        .eval(&VIEW, &refs(&k[..2]), &[])
        .await
        .map_err(|e| e.of("node"))?;
    Ok(view_of("node_view", &reply)?.1)
}

/// Ends this incarnation's heartbeat now; true if it was alive.
pub async fn leave(client: &Client, node: &[u8], incarnation: i64) -> Result<bool> {
    let k = membership(client);
    let left: i64 = client
        .write_eval(
            &LEAVE,
            &refs(&k[..2]),
            &[node, incarnation.to_string().as_bytes()],
        )
        .await
        .map_err(|e| e.of("node"))?;
    Ok(left == 1)
}

pub async fn claim_reap(
    client: &Client,
    node: &[u8],
    incarnation: i64,
    owner: &[u8],
    lease_ms: u64,
) -> Result<Claim> {
    let k = membership(client);
    let reply: Vec<Value> = client
        .write_eval(
            &CLAIM,
            &[&k[0], &k[1], &k[2], &k[4]],
            &[
                node,
                incarnation.to_string().as_bytes(),
                owner,
                lease_ms.to_string().as_bytes(),
                CLOCK_SKEW_MS.to_string().as_bytes(),
            ],
        )
        .await
        .map_err(|e| e.of("node_reap"))?;
    match reply.as_slice() {
        [Value::Int(1), Value::Int(fence), Value::Int(until)] => Ok(Claim::Granted {
            fence: *fence,
            until: *until,
        }),
        [Value::Int(0), Value::BulkString(why)] if why == b"gone" => Ok(Claim::Gone),
        [Value::Int(0), Value::BulkString(why)] if why == b"alive" => Ok(Claim::Alive),
        [Value::Int(0), Value::BulkString(why), Value::BulkString(owner)] if why == b"held" => {
            Ok(Claim::Held(owner.clone()))
        }
        _ => Err(unexpected("node_reap_claim", &reply)),
    }
}

/// Extends a reap lease held with `fence`: its new end, or `None` if it is
/// no longer held (it ended, or another reaper has it).
pub async fn renew_reap(
    client: &Client,
    node: &[u8],
    fence: i64,
    lease_ms: u64,
) -> Result<Option<i64>> {
    let (fence, lease_ms) = (fence.to_string(), lease_ms.to_string());
    under_lease(
        client,
        &RENEW,
        "node_reap_renew",
        3,
        &[node, fence.as_bytes(), lease_ms.as_bytes()],
    )
    .await
}

/// Ends the membership of the reaped incarnation: the number of reaps of
/// the name so far, or `None` if the lease is no longer held with `fence`.
pub async fn finish_reap(
    client: &Client,
    node: &[u8],
    incarnation: i64,
    fence: i64,
) -> Result<Option<i64>> {
    let (incarnation, fence) = (incarnation.to_string(), fence.to_string());
    under_lease(
        client,
        &FINISH,
        "node_reap_finish",
        4,
        &[node, incarnation.as_bytes(), fence.as_bytes()],
    )
    .await
}

/// A script that acts only for the holder of the reap lease, on the first
/// `key_count` membership keys: `{1, Value}`, or `{0}` when the lease is not
/// held with the fence given.
async fn under_lease(
    client: &Client,
    script: &Lua,
    name: &str,
    key_count: usize,
    args: &[&[u8]],
) -> Result<Option<i64>> {
    let k = membership(client);
    let reply: Vec<i64> = client
        .write_eval(script, &refs(&k[..key_count]), args)
        .await
        .map_err(|e| e.of("node_reap"))?;
    match reply.as_slice() {
        [1, value] => Ok(Some(*value)),
        [0] => Ok(None),
        _ => Err(unexpected(name, &reply)),
    }
}

/// One step of a reap, by a reaper whose lease ends at `until`: how many
/// entries it removed (`name` is the node's name as registry entries and
/// route dests hold it, or for `Step::Leases` as lease owners hold it), or `None` if the lease had ended (nothing more was
/// removed from then on; shards or slots done before stay done).
pub async fn reap_step(
    client: &Client,
    router: &Router,
    step: Step,
    name: &[u8],
    until: i64,
) -> Result<Option<u64>> {
    // What the scripts check again, each where it deletes: a reaper past
    // its lease learns it here even when there is nothing left to remove.
    if client.now_ms().await? >= until {
        return Ok(None);
    }
    let removed = match step {
        Step::Channels => registry::reap_node(client, name, until).await,
        Step::Routes => router::reap_node(client, router, name, until).await,
        Step::Leases => session::release_leases_of(client, name, until).await,
    };
    match removed {
        Ok(n) => Ok(Some(n)),
        Err(Error::Redis(msg)) if msg.starts_with("STALE_REAPER") => Ok(None),
        Err(e) => Err(e),
    }
}
