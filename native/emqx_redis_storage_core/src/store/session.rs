//! Sessions, their per-slot index and the takeover lease with fencing.
//!
//! A session is a hash that expires by TTL. Its entry in the index of its
//! slot is scored by its expiry time, so counting and listing skip expired
//! sessions without reading them, and saves reclaim expired entries.
//!
//! Counting reads counters, not the indexes: the scripts that add and remove
//! index entries keep a counter per slot (and, on a single Redis, their
//! total) in step with the index; see `count`.

use std::sync::LazyLock;

use redis::{Cmd, Value};

use crate::connection::scripts::Lua;

use crate::connection::slots::SLOTS;
use crate::connection::{from_reply, refs, Client};
use crate::error::{stored_int, Error, Result};
use crate::store::keys::{client_slot, ClientKeys, Keys};

/// The scripts that change the index share `session_counter.lua`.
fn indexing_script(own: &str) -> Lua {
    Lua::new(&[include_str!("lua/session_counter.lua"), own])
}

static SAVE: LazyLock<Lua> =
    LazyLock::new(|| indexing_script(include_str!("lua/session_save.lua")));
static DELETE: LazyLock<Lua> =
    LazyLock::new(|| indexing_script(include_str!("lua/session_delete.lua")));
static REAP: LazyLock<Lua> =
    LazyLock::new(|| indexing_script(include_str!("lua/session_reap.lua")));
static SWEEP: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[include_str!("lua/session_sweep.lua")]));
static TOTAL: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[include_str!("lua/session_total.lua")]));

/// How long `count` trusts the counters after a sweep: a session that
/// expired by TTL is counted until the next sweep, at most this long.
pub const SWEEP_INTERVAL_MS: i64 = 10_000;

/// The session counters of a slot's index, as the scripts take them after
/// their own keys: the slot's counter, and on a single Redis the total.
fn counter_keys(client: &Client, keys: &Keys, slot: u16) -> Vec<Vec<u8>> {
    let mut counters = vec![keys.session_count(slot)];
    if !client.backend().is_cluster() {
        counters.push(keys.session_total());
    }
    counters
}

/// The lease scripts share `lease_prelude.lua`.
fn lease_script(own: &str) -> Lua {
    Lua::new(&[include_str!("lua/lease_prelude.lua"), own])
}

static ACQUIRE: LazyLock<Lua> =
    LazyLock::new(|| lease_script(include_str!("lua/lease_acquire.lua")));
static RENEW: LazyLock<Lua> = LazyLock::new(|| lease_script(include_str!("lua/lease_renew.lua")));
static RELEASE: LazyLock<Lua> =
    LazyLock::new(|| lease_script(include_str!("lua/lease_release.lua")));
static REAP_LEASES: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(&[
        include_str!("lua/reap_fence.lua"),
        include_str!("lua/lease_reap.lua"),
    ])
});

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
    pub node: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    Ok(SessionInfo),
    /// Refused: a newer fence than the one given has been issued.
    StaleFence,
}

/// A lease operation was refused because someone else holds the lease
/// (`Some(owner)`) or nobody does (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotHeld(pub Option<Vec<u8>>);

/// What `save` stores, owned: the data is handed on, not copied again.
pub struct SaveArgs {
    pub client_id: Vec<u8>,
    pub data: Vec<u8>,
    pub ttl_ms: u64,
    pub node: Vec<u8>,
    pub fence: Option<i64>,
}

/// Saves a session (in a group commit); `done` gets the outcome, on a
/// runtime thread.
pub fn save(client: &Client, args: SaveArgs, done: impl FnOnce(Result<Saved>) + Send + 'static) {
    let keys = client.keys();
    let id = &args.client_id;
    let slot = client_slot(id);
    let mut script_keys = vec![keys.session(id), keys.fence(id), keys.session_index(slot)];
    script_keys.extend(counter_keys(client, &keys, slot));
    let node = args.node.clone();
    let ttl = args.ttl_ms.to_string().into_bytes();
    let fence = args.fence.map(|f| f.to_string()).unwrap_or_default();
    let argv = vec![
        args.client_id,
        args.data,
        ttl,
        args.node,
        fence.into_bytes(),
    ];
    client.send_grouped_write_eval(&SAVE, script_keys, argv, move |reply| {
        done(saved(reply, node))
    });
}

fn saved(reply: Result<Value>, node: Vec<u8>) -> Result<Saved> {
    let reply: Vec<i64> = from_reply(reply).map_err(|e| e.of("session"))?;
    match reply.as_slice() {
        [1, created_at, updated_at, expires_at] => Ok(Saved::Ok(SessionInfo {
            created_at: *created_at,
            updated_at: *updated_at,
            expires_at: *expires_at,
            node,
        })),
        [0, _] => Ok(Saved::StaleFence),
        _ => Err(unexpected("session_save", &reply)),
    }
}

/// The one command that reads a session; `loaded` reads its reply.
pub fn load_cmd(client: &Client, client_id: &[u8]) -> Cmd {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(client.keys().session(client_id))
        .arg(&["data", "created_at"]);
    cmd
}

/// The session's term; `None` if there is no session. A session hash with
/// its times but without its term is corrupt.
pub fn loaded(reply: Result<Value>) -> Result<Option<Vec<u8>>> {
    let (data, created_at): (Option<Vec<u8>>, Option<Vec<u8>>) =
        from_reply(reply).map_err(|e| e.of("session"))?;
    match (data, created_at) {
        (None, Some(_)) => Err(Error::corrupt("session", "data missing")),
        (data, _) => Ok(data),
    }
}

pub async fn delete(client: &Client, client_id: &[u8]) -> Result<bool> {
    let keys = client.keys();
    let slot = client_slot(client_id);
    let mut script_keys = vec![keys.session(client_id), keys.session_index(slot)];
    script_keys.extend(counter_keys(client, &keys, slot));
    let deleted: i64 = client
        .write_eval(&DELETE, &refs(&script_keys), &[client_id])
        .await
        .map_err(|e| e.of("session_index"))?;
    Ok(deleted == 1)
}

/// The session's times and node; `None` if there is no session. A session
/// hash missing some of them, or with times that are not integers, is corrupt
/// (the node name is checked where it becomes an atom, on the Erlang side).
pub async fn info(client: &Client, client_id: &[u8]) -> Result<Option<SessionInfo>> {
    const FIELDS: [&str; 4] = ["created_at", "updated_at", "expires_at", "node"];
    let key = client.keys().session(client_id);
    let fields: Vec<Option<Vec<u8>>> = client
        .query(redis::cmd("HMGET").arg(key).arg(&FIELDS))
        .await
        .map_err(|e| e.of("session"))?;
    let present: Vec<&[u8]> = fields.iter().flatten().map(Vec::as_slice).collect();
    let time = |i: usize| stored_int("session", FIELDS[i], present[i]);
    match present.len() {
        0 => Ok(None),
        4 => Ok(Some(SessionInfo {
            created_at: time(0)?,
            updated_at: time(1)?,
            expires_at: time(2)?,
            node: present[3].to_vec(),
        })),
        _ => Err(Error::corrupt("session", "fields missing")),
    }
}

/// Live (unexpired) sessions in each slot, as of Redis's clock `now`.
async fn live_per_slot(client: &Client, now: i64) -> Result<Vec<u64>> {
    let keys = client.keys();
    client
        .for_slots(0..SLOTS, |slot| {
            let mut cmd = redis::cmd("ZCOUNT");
            cmd.arg(keys.session_index(slot))
                .arg(format!("({now}"))
                .arg("+inf");
            cmd
        })
        .await
        .map_err(|e| e.of("session_index"))
}

/// The number of sessions: the entries of the session indexes, read from
/// their counters (one `GET` on a single Redis, one per slot on a cluster),
/// not counted in the indexes. Exact for the index as of the read, with two
/// documented differences from the live sessions: a session that expired by
/// TTL is counted until the next sweep (at most `SWEEP_INTERVAL_MS`: a count
/// that finds the last sweep older sweeps first, which reclaims the expired
/// entries of every slot and sets each counter from its index), and a
/// session hash removed outside the library (DEL, eviction) is counted until
/// `list` meets its entry (checking every hash would cost a read per
/// session). Counters that are missing, not integers or of another type (an upgrade from a
/// build without them, a restore of keys taken at different times, a hand
/// edit) are rebuilt from the indexes by that sweep.
pub async fn count(client: &Client) -> Result<u64> {
    let keys = client.keys();
    let (now, swept, total) = match count_state(client, &keys).await {
        Ok(state) => state,
        // A counter or the mark of another type: derived data, set again by
        // the sweep (which overwrites whatever they hold).
        Err(Error::Corrupt {
            kind: "session_count",
            ..
        }) => (client.now_ms().await?, None, None),
        Err(e) => return Err(e),
    };
    match (total, swept) {
        (Some(total), Some(at)) if now - at < SWEEP_INTERVAL_MS => Ok(total),
        _ => sweep(client, &keys, now).await,
    }
}

/// A stored string, `None` if the key is missing.
type Stored = Option<Vec<u8>>;

/// A counter's value; `None` if it is not an integer (a missing counter is
/// 0). Below 0 only if it was missing while entries were removed; the sweep
/// sets it again.
fn counter(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .parse::<i64>()
        .ok()
        .map(|n| n.max(0) as u64)
}

/// Redis's clock, when the indexes were last swept, and the total of the
/// counters (`None` if it is missing or one is not an integer): one round
/// trip on a single Redis.
async fn count_state(client: &Client, keys: &Keys) -> Result<(i64, Option<i64>, Option<u64>)> {
    let (now, swept, total) = if client.backend().is_cluster() {
        let now = client.now_ms().await?;
        let swept: Stored = client
            .query(redis::cmd("GET").arg(keys.session_sweep()))
            .await
            .map_err(|e| e.of("session_count"))?;
        let counts: Vec<Stored> = client
            .for_slots(0..SLOTS, |slot| {
                let mut cmd = redis::cmd("GET");
                cmd.arg(keys.session_count(slot));
                cmd
            })
            .await
            .map_err(|e| e.of("session_count"))?;
        let total = counts
            .iter()
            .map(|c| c.as_deref().map_or(Some(0), counter))
            .sum();
        (now, swept, total)
    } else {
        let mut pipe = redis::pipe();
        pipe.cmd("TIME")
            .cmd("GET")
            .arg(keys.session_sweep())
            .cmd("GET")
            .arg(keys.session_total());
        let ((secs, micros), swept, total): ((i64, i64), Stored, Stored) = client
            .backend()
            .pipeline(&pipe)
            .await
            .map_err(|e| e.of("session_count"))?;
        // A missing total is not 0: it is rebuilt.
        let total = total.as_deref().and_then(counter);
        (secs * 1000 + micros / 1000, swept, total)
    };
    let swept = swept.as_deref().and_then(counter).map(|at| at as i64);
    Ok((now, swept, total))
}

/// Reclaims every slot's expired index entries and sets each slot's counter
/// from its index (`session_sweep.lua`, one script call per slot, pipelined);
/// on a single Redis then sets the total to the sum of the slot counters
/// (`session_total.lua`, atomic); then marks the sweep's time (not before:
/// a sweep that failed on corrupt data changed nothing else). Concurrent
/// sweeps (counts on several nodes) do the same work twice, no harm done.
/// Returns the number of index entries.
async fn sweep(client: &Client, keys: &Keys, now: i64) -> Result<u64> {
    client.load_script(&SWEEP).await?;
    let now = now.to_string();
    let left: Vec<u64> = client
        .for_slots(0..SLOTS, |slot| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(SWEEP.hash())
                .arg(2)
                .arg(keys.session_index(slot))
                .arg(keys.session_count(slot))
                .arg(&now);
            cmd
        })
        .await
        .map_err(|e| e.of("session_index"))?;
    if client.backend().is_cluster() {
        client
            .query::<Value>(redis::cmd("SET").arg(keys.session_sweep()).arg(&now))
            .await
            .map_err(|e| e.of("session_count"))?;
        return Ok(left.iter().sum());
    }
    let total_keys: Vec<Vec<u8>> = [keys.session_total(), keys.session_sweep()]
        .into_iter()
        .chain((0..SLOTS).map(|slot| keys.session_count(slot)))
        .collect();
    client
        .write_eval(&TOTAL, &refs(&total_keys), &[now.as_bytes()])
        .await
        .map_err(|e| e.of("session_count"))
}

/// One page of live sessions' client ids. Order: by hash slot of the client
/// id, then by expiry time, then by client id; stable while the store is quiet.
/// Only ids whose session hash exists: the entries of hashes removed outside
/// the library (DEL, eviction) that the page meets are dropped from the
/// index, and the page is read again, until it holds none.
pub async fn list(client: &Client, limit: u64, offset: u64) -> Result<Vec<Vec<u8>>> {
    loop {
        let page = index_page(client, limit, offset).await?;
        let keys = client.keys();
        let exists: Vec<bool> = client
            .backend()
            .each(
                page.iter()
                    .map(|id| {
                        let mut cmd = redis::cmd("EXISTS");
                        cmd.arg(keys.session(id));
                        cmd
                    })
                    .collect(),
            )
            .await
            .map_err(|e| e.of("session"))?;
        let gone: Vec<&Vec<u8>> = page
            .iter()
            .zip(&exists)
            .filter(|(_, &there)| !there)
            .map(|(id, _)| id)
            .collect();
        if gone.is_empty() {
            return Ok(page);
        }
        futures::future::try_join_all(gone.iter().map(|id| reap(client, id))).await?;
    }
}

/// Drops a client's index entry if its session hash is gone.
async fn reap(client: &Client, client_id: &[u8]) -> Result<i64> {
    let keys = client.keys();
    let slot = client_slot(client_id);
    let mut script_keys = vec![keys.session_index(slot), keys.session(client_id)];
    script_keys.extend(counter_keys(client, &keys, slot));
    client
        .write_eval(&REAP, &refs(&script_keys), &[client_id])
        .await
        .map_err(|e| e.of("session_index"))
}

/// One page of the index, as `list` describes it, without checking hashes.
async fn index_page(client: &Client, limit: u64, offset: u64) -> Result<Vec<Vec<u8>>> {
    let now = client.now_ms().await?;
    let counts = live_per_slot(client, now).await?;
    // The slots that hold the page, with the range to take from each.
    let mut ranges = Vec::new();
    let (mut skip, mut want) = (offset, limit);
    for (slot, &n) in counts.iter().enumerate() {
        if want == 0 {
            break;
        }
        if skip >= n {
            skip -= n;
            continue;
        }
        let take = (n - skip).min(want);
        ranges.push((slot as u16, skip, take));
        want -= take;
        skip = 0;
    }
    let keys = client.keys();
    let pages: Vec<Vec<Vec<u8>>> = client
        .for_slots(ranges.iter().map(|r| r.0), |slot| {
            let (_, skip, take) = ranges
                .iter()
                .find(|r| r.0 == slot)
                .copied()
                .unwrap_or_default();
            let mut cmd = redis::cmd("ZRANGEBYSCORE");
            cmd.arg(keys.session_index(slot))
                .arg(format!("({now}"))
                .arg("+inf")
                .arg("LIMIT")
                .arg(skip)
                .arg(take);
            cmd
        })
        .await
        .map_err(|e| e.of("session_index"))?;
    // An empty id, or one in the index of a slot it does not hash to, is
    // none we wrote (and `list` could never drop it: it looks for an id in
    // its own slot's index).
    let foreign = ranges.iter().zip(&pages).any(|((slot, _, _), page)| {
        page.iter()
            .any(|id| id.is_empty() || client_slot(id) != *slot)
    });
    if foreign {
        return Err(Error::corrupt("session_index", "an id we did not write"));
    }
    Ok(pages.into_iter().flatten().collect())
}

pub async fn acquire_lease(
    client: &Client,
    client_id: &[u8],
    owner: &[u8],
    lease_ms: u64,
    fence_ttl_ms: u64,
) -> Result<std::result::Result<i64, NotHeld>> {
    let keys = client.keys();
    let reply: (i64, Value) = client
        .write_eval(
            &ACQUIRE,
            &[
                &keys.lease(client_id),
                &keys.fence(client_id),
                &keys.lease_owners(client_slot(client_id)),
            ],
            &[
                owner,
                lease_ms.to_string().as_bytes(),
                fence_ttl_ms.to_string().as_bytes(),
                client_id,
            ],
        )
        .await
        .map_err(|e| e.of("lease"))?;
    match reply {
        (1, Value::Int(fence)) => Ok(Ok(fence)),
        (0, Value::BulkString(holder)) => Ok(Err(NotHeld(Some(holder)))),
        other => Err(unexpected("lease_acquire", &other)),
    }
}

pub async fn renew_lease(
    client: &Client,
    client_id: &[u8],
    fence: i64,
    lease_ms: u64,
) -> Result<std::result::Result<(), NotHeld>> {
    let keys = client.keys();
    let reply: Vec<Value> = client
        .write_eval(
            &RENEW,
            &[&keys.lease(client_id), &keys.fence(client_id)],
            &[
                fence.to_string().as_bytes(),
                lease_ms.to_string().as_bytes(),
            ],
        )
        .await
        .map_err(|e| e.of("lease"))?;
    lease_outcome("lease_renew", reply)
}

pub async fn release_lease(
    client: &Client,
    client_id: &[u8],
    fence: i64,
) -> Result<std::result::Result<(), NotHeld>> {
    let keys = client.keys();
    let reply: Vec<Value> = client
        .write_eval(
            &RELEASE,
            &[
                &keys.lease(client_id),
                &keys.lease_owners(client_slot(client_id)),
            ],
            &[fence.to_string().as_bytes(), client_id],
        )
        .await
        .map_err(|e| e.of("lease"))?;
    lease_outcome("lease_release", reply)
}

/// Releases every lease `owner` (a dead node) still holds, found through the
/// per-slot owner index, as a reaper's step that ends at `until` (Redis ms,
/// see nodes.rs); returns how many.
pub async fn release_leases_of(client: &Client, owner: &[u8], until: i64) -> Result<u64> {
    let keys = &client.keys();
    let slots = client
        .slots_with_hash("lease_owner", |slot| keys.lease_owners(slot))
        .await?;
    let indexes: Vec<Vec<Vec<u8>>> = client
        .for_slots(slots.iter().copied(), |slot| {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(keys.lease_owners(slot));
            cmd
        })
        .await
        .map_err(|e| e.of("lease_owner"))?;
    let until = until.to_string();
    let scripts = slots.iter().zip(&indexes).filter_map(|(&slot, index)| {
        let ids: Vec<&[u8]> = index
            .chunks(2)
            .filter(|entry| entry.len() == 2 && entry[1] == owner)
            .map(|entry| entry[0].as_slice())
            .collect();
        if ids.is_empty() {
            return None;
        }
        let until = until.as_bytes();
        Some(async move {
            let index = keys.lease_owners(slot);
            let leases: Vec<Vec<u8>> = ids.iter().map(|id| keys.lease(id)).collect();
            let script_keys: Vec<&[u8]> = std::iter::once(index.as_slice())
                .chain(leases.iter().map(Vec::as_slice))
                .collect();
            let args: Vec<&[u8]> = std::iter::once(owner)
                .chain(ids.iter().copied())
                .chain(std::iter::once(until))
                .collect();
            client
                .write_eval::<u64>(&REAP_LEASES, &script_keys, &args)
                .await
                .map_err(|e| e.of("lease"))
        })
    });
    Ok(futures::future::try_join_all(scripts).await?.iter().sum())
}

fn lease_outcome(script: &str, reply: Vec<Value>) -> Result<std::result::Result<(), NotHeld>> {
    match reply.as_slice() {
        [Value::Int(1)] => Ok(Ok(())),
        [Value::Int(0), Value::BulkString(owner)] if owner.is_empty() => Ok(Err(NotHeld(None))),
        [Value::Int(0), Value::BulkString(owner)] => Ok(Err(NotHeld(Some(owner.clone())))),
        _ => Err(unexpected(script, &reply)),
    }
}

pub(crate) fn unexpected(script: &str, reply: &impl std::fmt::Debug) -> Error {
    Error::Internal(format!("unexpected reply from {script}: {reply:?}"))
}
