//! A sharded table of topic filters in Redis, mirrored in memory on every
//! client: the routing table (`router.rs`) and the durable filters
//! (`ds.rs`) are two of them.
//!
//! In Redis a table is `shards` hashes, filter -> value, each with a version
//! counter under the field "\0v". Every change bumps the shard's version and
//! publishes `"<shard> <version> <+|-><filter>\0<dest>"` on the table's
//! channel, in the same script, so the change and its event are one.
//!
//! Pub/sub drops messages whenever the subscriber's connection breaks, so
//! events alone cannot be trusted: each carries its shard's version, and any
//! gap, lost connection or version drift seen by the periodic check makes the
//! mirror reload everything. Until it has, it answers `None` and the caller
//! asks Redis instead, so the mirror is never used while it may be wrong.
//! (Keyspace events would carry no payload and client-side caching tracks
//! keys, not hash fields; versioned pub/sub gives both the change and a way to
//! see a gap.)

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use redis::Value;

use crate::connection::slots::crc16;
use crate::connection::Backend;
use crate::error::{stored_int, Error, Result};
use crate::metrics::Metrics;
use crate::store::keys::Keys;
use crate::store::route_index::RouteIndex;

/// The hash field of a shard's version counter; no filter can contain NUL.
pub const VERSION_FIELD: &[u8] = b"\0v";

/// What a mirror holds per filter: a destination as stored.
pub type Dest = Arc<[u8]>;

/// What tells one table from another.
pub struct Table {
    /// What a corrupt entry is (`{corrupt, #{kind := ...}}`).
    pub kind: &'static str,
    /// The event logged when the mirror reloads.
    pub resync_event: &'static str,
    pub shard_key: fn(&Keys, u16) -> Vec<u8>,
    pub channel: fn(&Keys) -> Vec<u8>,
    /// Checks a stored entry: `Err(Corrupt)` if we could not have written it.
    pub check: fn(&[u8], &[u8]) -> Result<()>,
    /// Whether a published change `(filter, dest)` is one we could have made.
    pub check_change: fn(&[u8], &[u8]) -> bool,
    /// The dests of a checked stored value.
    pub dests: for<'a> fn(&'a [u8]) -> Vec<&'a [u8]>,
    /// The counter of reloads in the client's metrics, if it has one.
    pub resyncs: Option<fn(&Metrics) -> &std::sync::atomic::AtomicU64>,
}

pub fn shard_of(filter: &[u8], shards: u16) -> u16 {
    crc16(filter) % shards.max(1)
}

/// A shard's version as stored; 0 while the shard has none.
pub fn shard_version(kind: &'static str, raw: Option<&[u8]>) -> Result<u64> {
    raw.map_or(Ok(0), |v| stored_int(kind, "version", v).map(|v| v as u64))
}

/// A change, as published and as applied to a mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub shard: u16,
    pub version: u64,
    pub add: bool,
    pub filter: Vec<u8>,
    pub dest: Vec<u8>,
}

impl Event {
    /// An event that does not hold a change we could have made is as good
    /// as a lost one (`None`): the mirror reloads from Redis.
    pub fn parse(table: &Table, payload: &[u8]) -> Option<Event> {
        let mut parts = payload.splitn(3, |&b| b == b' ');
        let shard = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let version = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let rest = parts.next()?;
        let (&op, rest) = rest.split_first()?;
        let nul = rest.iter().position(|&b| b == 0)?;
        let (filter, dest) = (&rest[..nul], &rest[nul + 1..]);
        if !(table.check_change)(filter, dest) {
            return None;
        }
        Some(Event {
            shard,
            version,
            add: match op {
                b'+' => true,
                b'-' => false,
                _ => return None,
            },
            filter: filter.to_vec(),
            dest: dest.to_vec(),
        })
    }
}

/// What a mirror knows: every entry, and each shard's version. `ready` is
/// false until a full load completed, and again from the moment a gap is
/// seen until the next full load.
struct State {
    entries: RouteIndex<Dest>,
    versions: Vec<u64>,
    ready: bool,
}

pub struct Mirror {
    pub table: &'static Table,
    pub shards: u16,
    state: RwLock<State>,
}

impl Mirror {
    pub fn new(table: &'static Table, shards: u16) -> Self {
        Mirror {
            table,
            shards,
            state: RwLock::new(State {
                entries: RouteIndex::new(),
                versions: vec![0; shards as usize],
                ready: false,
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The dests matching `topic`, or `None` while the mirror may be stale.
    pub fn matches(&self, topic: &[u8]) -> Option<Vec<Dest>> {
        let state = self.read();
        state.ready.then(|| state.entries.matches(topic))
    }

    /// Whether any filter matches `topic`, or `None` while it may be stale.
    pub fn any_match(&self, topic: &[u8]) -> Option<bool> {
        let state = self.read();
        state
            .ready
            .then(|| !state.entries.matches(topic).is_empty())
    }

    /// The entries it holds (also while stale).
    pub fn entry_count(&self) -> usize {
        self.read().entries.len()
    }

    pub fn is_ready(&self) -> bool {
        self.read().ready
    }

    /// Applies a published change in version order. Returns false on a gap:
    /// then the mirror is marked stale and must be reloaded.
    fn apply(&self, event: &Event) -> bool {
        let mut state = self.write();
        let Some(&known) = state.versions.get(event.shard as usize) else {
            state.ready = false;
            return false;
        };
        if !state.ready || event.version <= known {
            return true;
        }
        if event.version != known + 1 {
            state.ready = false;
            return false;
        }
        state.versions[event.shard as usize] = event.version;
        change(&mut state.entries, event.add, &event.filter, &event.dest);
        true
    }

    /// Shows this client's own change at once, before its event comes back;
    /// the event log, applied in order later, has the last word. Like
    /// everything in the mirror, only a change we could have made.
    pub fn preview(&self, add: bool, filter: &[u8], dest: &[u8]) {
        let mut state = self.write();
        if state.ready && (self.table.check_change)(filter, dest) {
            change(&mut state.entries, add, filter, dest);
        }
    }

    /// Drops, at once, every dest `pred` selects (their removal is under way
    /// in Redis; its events have the last word).
    pub fn remove_dests_where(&self, pred: impl Fn(&Dest) -> bool) {
        let mut state = self.write();
        if state.ready {
            state.entries.remove_dests_where(pred);
        }
    }

    fn mark_stale(&self) {
        self.write().ready = false;
    }

    fn replace(&self, entries: RouteIndex<Dest>, versions: Vec<u64>) {
        let mut state = self.write();
        state.entries = entries;
        state.versions = versions;
        state.ready = true;
    }

    fn versions(&self) -> Vec<u64> {
        self.read().versions.clone()
    }
}

fn change(entries: &mut RouteIndex<Dest>, add: bool, filter: &[u8], dest: &[u8]) {
    if add {
        entries.insert(filter, Arc::from(dest));
    } else {
        entries.remove(filter, &Arc::from(dest));
    }
}

/// The same command for every shard of a table, replies in shard order.
pub fn per_shard(table: &Table, keys: &Keys, shards: u16, name: &str) -> Vec<redis::Cmd> {
    (0..shards)
        .map(|shard| {
            let mut cmd = redis::cmd(name);
            cmd.arg((table.shard_key)(keys, shard));
            cmd
        })
        .collect()
}

pub type Shard = (u64, Vec<(Vec<u8>, Vec<u8>)>);

/// Every shard's version and entries, each shard read atomically by one
/// HGETALL. An entry or version we could not have written fails the whole
/// read: nothing built from it is half right.
pub async fn read_shards(
    table: &Table,
    backend: &Backend,
    keys: &Keys,
    shards: u16,
) -> Result<Vec<Shard>> {
    let all: Vec<Vec<(Vec<u8>, Vec<u8>)>> = backend
        .each(per_shard(table, keys, shards, "HGETALL"))
        .await
        .map_err(|e| e.of(table.kind))?;
    all.into_iter()
        .map(|fields| {
            let mut version = 0;
            let mut entries = Vec::with_capacity(fields.len());
            for (field, value) in fields {
                if field == VERSION_FIELD {
                    version = shard_version(table.kind, Some(&value))?;
                } else {
                    (table.check)(&field, &value)?;
                    entries.push((field, value));
                }
            }
            Ok((version, entries))
        })
        .collect()
}

/// Keeps a mirror in step with Redis until `shutdown` closes; `interval` is
/// how often it compares its shard versions with Redis.
pub async fn sync(
    mirror: Arc<Mirror>,
    backend: Backend,
    keys: Keys,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<()>,
) {
    let mut attempt = 0;
    let mut resync = Resync::Start;
    loop {
        // `follow` returns only when something broke; either way the mirror
        // may have missed changes, so it is stale until the next full load.
        let followed = tokio::select! {
            r = follow(&mirror, &backend, &keys, interval, attempt, &resync) => r,
            _ = shutdown.changed() => return,
        };
        resync = Resync::PubsubLost(
            followed
                .as_ref()
                .err()
                .map(Error::to_string)
                .unwrap_or_default(),
        );
        mirror.mark_stale();
        attempt += 1;
        // Corrupt entries in Redis fail the load, and the mirror stays unused
        // (callers go to Redis, which names the corrupt entry); they stay
        // until someone repairs them, so retry at the pace of the check.
        let pause = match followed {
            Err(Error::Corrupt { .. }) => interval,
            _ => Duration::from_millis(200),
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Subscribes, loads everything, then applies events until something breaks.
async fn follow(
    mirror: &Mirror,
    backend: &Backend,
    keys: &Keys,
    interval: Duration,
    attempt: usize,
    resync: &Resync,
) -> Result<()> {
    let table = mirror.table;
    let timeout = backend.config().connect_timeout;
    let mut pubsub = backend.pubsub(attempt).await?;
    tokio::time::timeout(timeout, pubsub.subscribe((table.channel)(keys)))
        .await
        .map_err(|_| Error::Timeout)??;
    let (mut sink, mut stream) = pubsub.split();
    // Subscribed first, loaded second: no change can fall between the two.
    reload(mirror, backend, keys, resync).await?;
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Err(Error::Connection(format!("{} events connection closed", table.kind)));
                };
                let in_order = Event::parse(table, msg.get_payload_bytes())
                    .is_some_and(|event| mirror.apply(&event));
                if !in_order {
                    reload(mirror, backend, keys, &Resync::Gap).await?;
                }
            }
            _ = tick.tick() => {
                // Catches what no later event would reveal: a lost last event,
                // or a subscription that silently stopped delivering.
                tokio::time::timeout(timeout, sink.ping::<Value>())
                    .await
                    .map_err(|_| Error::Timeout)??;
                let mut cmds = per_shard(table, keys, mirror.shards, "HGET");
                for cmd in &mut cmds {
                    cmd.arg(VERSION_FIELD);
                }
                let versions: Vec<Option<Vec<u8>>> =
                    backend.each(cmds).await.map_err(|e| e.of(table.kind))?;
                let versions = versions
                    .iter()
                    .map(|v| shard_version(table.kind, v.as_deref()))
                    .collect::<Result<Vec<u64>>>()?;
                if versions != mirror.versions() {
                    reload(mirror, backend, keys, &Resync::Drift).await?;
                }
            }
        }
    }
}

/// Why a mirror is loaded in full.
enum Resync {
    /// The client started.
    Start,
    /// Following the events stopped, for this reason: the pub/sub connection
    /// was lost, or a check on it failed.
    PubsubLost(String),
    /// An event came out of order: one was missed.
    Gap,
    /// The periodic check found shard versions the mirror does not have.
    Drift,
}

impl Resync {
    /// Logged once the load is done: the first at `info`, the others (the
    /// mirror had missed changes) at `warn`.
    fn log(&self, event: &str, routes: usize, elapsed: Duration) {
        let elapsed_ms = elapsed.as_millis() as u64;
        match self {
            Resync::Start => {
                tracing::info!(reason = "start", routes, elapsed_ms, "{}", event)
            }
            Resync::PubsubLost(cause) => tracing::warn!(
                reason = "pubsub_lost",
                cause = %cause,
                routes,
                elapsed_ms,
                "{}",
                event
            ),
            Resync::Gap => {
                tracing::warn!(reason = "gap", routes, elapsed_ms, "{}", event)
            }
            Resync::Drift => {
                tracing::warn!(reason = "drift", routes, elapsed_ms, "{}", event)
            }
        }
    }
}

async fn reload(mirror: &Mirror, backend: &Backend, keys: &Keys, resync: &Resync) -> Result<()> {
    let table = mirror.table;
    let started = std::time::Instant::now();
    mirror.mark_stale();
    if let Some(counter) = table.resyncs {
        counter(backend.metrics()).fetch_add(1, Relaxed);
    }
    let mut entries = RouteIndex::new();
    let mut versions = Vec::with_capacity(mirror.shards as usize);
    let mut loaded = 0;
    for (version, shard) in read_shards(table, backend, keys, mirror.shards).await? {
        versions.push(version);
        for (filter, value) in shard {
            for dest in (table.dests)(&value) {
                entries.insert(&filter, Arc::from(dest));
                loaded += 1;
            }
        }
    }
    mirror.replace(entries, versions);
    resync.log(table.resync_event, loaded, started.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST: Table = Table {
        kind: "test",
        resync_event: "test_resync",
        shard_key: |keys, shard| [keys.prefix(), format!("t:{shard}").as_bytes()].concat(),
        channel: |keys| [keys.prefix(), b"t:events"].concat(),
        check: |_, _| Ok(()),
        check_change: |filter, dest| !filter.is_empty() && !dest.is_empty(),
        dests: |value| vec![value],
        resyncs: None,
    };

    #[test]
    fn events_parse() {
        let e = Event::parse(&TEST, b"3 17 +a/+/b\0emqx@n").unwrap();
        assert_eq!(
            e,
            Event {
                shard: 3,
                version: 17,
                add: true,
                filter: b"a/+/b".to_vec(),
                dest: b"emqx@n".to_vec()
            }
        );
        let e = Event::parse(&TEST, b"0 1 -with space/x\0d").unwrap();
        assert!(!e.add);
        assert_eq!(e.filter, b"with space/x");
        assert_eq!(Event::parse(&TEST, b"garbage"), None);
        assert_eq!(Event::parse(&TEST, b"1 x +a\0b"), None);
        assert_eq!(Event::parse(&TEST, b"1 2 *a\0b"), None);
        assert_eq!(
            Event::parse(&TEST, b"1 2 +a\0"),
            None,
            "a change we never make"
        );
        assert_eq!(shard_version("t", None), Ok(0));
        assert!(shard_version("t", Some(b"notanumber")).is_err());
    }

    fn event(shard: u16, version: u64, add: bool, filter: &str, dest: &str) -> Event {
        Event {
            shard,
            version,
            add,
            filter: filter.into(),
            dest: dest.into(),
        }
    }

    #[test]
    fn applies_in_order_and_detects_gaps() {
        let mirror = Mirror::new(&TEST, 2);
        assert_eq!(
            mirror.matches(b"a"),
            None,
            "not ready before the first load"
        );
        assert_eq!(mirror.any_match(b"a"), None);
        mirror.replace(RouteIndex::new(), vec![5, 0]);
        assert!(mirror.apply(&event(0, 6, true, "a/+", "n1")));
        assert_eq!(mirror.matches(b"a/x").unwrap().len(), 1);
        assert_eq!(mirror.any_match(b"a/x"), Some(true));
        assert_eq!(mirror.any_match(b"b/x"), Some(false));
        // old or repeated events are ignored
        assert!(mirror.apply(&event(0, 6, false, "a/+", "n1")));
        assert_eq!(mirror.matches(b"a/x").unwrap().len(), 1);
        // a gap makes the mirror stale until reloaded
        assert!(!mirror.apply(&event(1, 2, true, "b", "n1")));
        assert_eq!(mirror.matches(b"a/x"), None);
        mirror.replace(RouteIndex::new(), vec![6, 2]);
        assert_eq!(mirror.matches(b"a/x").unwrap().len(), 0);
        // an unknown shard is a gap too
        assert!(!mirror.apply(&event(9, 1, true, "c", "n1")));
        assert!(!mirror.is_ready());
    }

    #[test]
    fn previews_are_overruled_by_the_log() {
        let mirror = Mirror::new(&TEST, 1);
        mirror.replace(RouteIndex::new(), vec![3]);
        // our add (version 5) shows at once; someone's delete (4) came first
        mirror.preview(true, b"t", b"me@h");
        assert_eq!(mirror.matches(b"t").unwrap().len(), 1);
        assert!(mirror.apply(&event(0, 4, false, "t", "me@h")));
        assert!(mirror.apply(&event(0, 5, true, "t", "me@h")));
        assert_eq!(mirror.matches(b"t").unwrap().len(), 1);
    }
}
