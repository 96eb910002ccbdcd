//! The routing table: which destinations (nodes, or shared-subscription
//! groups on nodes) have a subscription filter matching a topic.
//!
//! In Redis, routes are sharded by filter over `route_shards` shards. A shard
//! is two hashes that share a hash tag: `rt:{rN}` (filter -> NUL-joined
//! dests, plus a version counter under the field "\0v") and `rtrie:{rN}` (the
//! prefixes of its wildcard filters, for matching inside Redis). Every change
//! bumps the shard's version and publishes `"<shard> <version> <+|-><filter>\0<dest>"`
//! on `rt:events`, in the same script, so the change and its event are one.
//!
//! Each client may keep a local index of all routes (see [`LocalIndex`]) and
//! answer matches from memory. Changes reach it through Redis pub/sub. Pub/sub
//! drops messages whenever the subscriber's connection breaks, so events alone
//! cannot be trusted: each carries its shard's version, and any gap, lost
//! connection or version drift seen by the periodic check makes the index
//! reload everything. Until it has, matches are answered by Redis instead,
//! so the local index is never used while it may be wrong. (Keyspace events
//! would carry no payload and client-side caching tracks keys, not hash
//! fields; versioned pub/sub gives both the change and a way to see a gap.)

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use futures::StreamExt;
use redis::Value;

use crate::scripts::Lua;

use crate::client::{Backend, Client};
use crate::error::{Error, Result};
use crate::keys::{crc16, Keys};
use crate::route_index::RouteIndex;

static ADD: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/route_add.lua")));
static DELETE: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/route_delete.lua")));
static MATCH: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/route_match.lua")));

/// The hash field of a shard's version counter; no filter can contain NUL.
const VERSION_FIELD: &[u8] = b"\0v";

/// A destination as stored: a node name, or `\x01 node \x01 group` for a
/// shared-subscription group (node names cannot contain `\x01`).
pub type Dest = Arc<[u8]>;

pub fn encode_dest(node: &[u8], group: Option<&[u8]>) -> Vec<u8> {
    match group {
        None => node.to_vec(),
        Some(group) => {
            let mut d = Vec::with_capacity(node.len() + group.len() + 2);
            d.push(1);
            d.extend_from_slice(node);
            d.push(1);
            d.extend_from_slice(group);
            d
        }
    }
}

/// `(node, group)` of a stored dest.
pub fn decode_dest(dest: &[u8]) -> (&[u8], Option<&[u8]>) {
    if let [1, rest @ ..] = dest {
        if let Some(end) = rest.iter().position(|&b| b == 1) {
            return (&rest[..end], Some(&rest[end + 1..]));
        }
    }
    (dest, None)
}

/// The pattern that `route_delete.lua` takes for "every dest of this node".
fn node_pattern(node: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(node.len() + 2);
    p.push(1);
    p.extend_from_slice(node);
    p.push(1);
    p
}

fn split_dests(joined: &[u8]) -> impl Iterator<Item = &[u8]> {
    joined.split(|&b| b == 0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexMode {
    /// Match from the in-memory index, kept in sync through pub/sub.
    Local,
    /// Match inside Redis with a Lua script on every call.
    Redis,
}

#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub shards: u16,
    pub mode: IndexMode,
    /// How often the local index compares its shard versions with Redis.
    pub sync_interval: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            shards: 16,
            mode: IndexMode::Local,
            sync_interval: Duration::from_secs(5),
        }
    }
}

pub fn shard_of(filter: &[u8], shards: u16) -> u16 {
    crc16(filter) % shards.max(1)
}

/// A route change, as published and as applied to a local index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub shard: u16,
    pub version: u64,
    pub add: bool,
    pub filter: Vec<u8>,
    pub dest: Vec<u8>,
}

impl Event {
    pub fn parse(payload: &[u8]) -> Option<Event> {
        let mut parts = payload.splitn(3, |&b| b == b' ');
        let shard = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let version = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let rest = parts.next()?;
        let (&op, rest) = rest.split_first()?;
        let nul = rest.iter().position(|&b| b == 0)?;
        Some(Event {
            shard,
            version,
            add: match op {
                b'+' => true,
                b'-' => false,
                _ => return None,
            },
            filter: rest[..nul].to_vec(),
            dest: rest[nul + 1..].to_vec(),
        })
    }
}

/// What a client's index knows: every route, and each shard's version.
/// `ready` is false until a full load completed, and again from the moment a
/// gap is seen until the next full load.
struct IndexState {
    routes: RouteIndex<Dest>,
    versions: Vec<u64>,
    ready: bool,
}

pub struct LocalIndex {
    state: RwLock<IndexState>,
}

impl LocalIndex {
    fn new(shards: u16) -> Self {
        LocalIndex {
            state: RwLock::new(IndexState {
                routes: RouteIndex::new(),
                versions: vec![0; shards as usize],
                ready: false,
            }),
        }
    }

    /// The dests matching `topic`, or `None` while the index may be stale.
    pub fn matches(&self, topic: &[u8]) -> Option<Vec<Dest>> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.ready.then(|| state.routes.matches(topic))
    }

    pub fn is_ready(&self) -> bool {
        self.state.read().unwrap_or_else(|e| e.into_inner()).ready
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, IndexState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a published change in version order. Returns false on a gap:
    /// then the index is marked stale and must be reloaded.
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
        change(&mut state.routes, event.add, &event.filter, &event.dest);
        true
    }

    /// Shows this client's own change at once, before its event comes back;
    /// the event log, applied in order later, has the last word.
    fn preview(&self, add: bool, filter: &[u8], dest: &[u8]) {
        let mut state = self.write();
        if state.ready {
            change(&mut state.routes, add, filter, dest);
        }
    }

    fn mark_stale(&self) {
        self.write().ready = false;
    }

    fn replace(&self, routes: RouteIndex<Dest>, versions: Vec<u64>) {
        let mut state = self.write();
        state.routes = routes;
        state.versions = versions;
        state.ready = true;
    }

    fn versions(&self) -> Vec<u64> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .versions
            .clone()
    }
}

fn change(routes: &mut RouteIndex<Dest>, add: bool, filter: &[u8], dest: &[u8]) {
    if add {
        routes.insert(filter, Arc::from(dest));
    } else {
        routes.remove(filter, &Arc::from(dest));
    }
}

/// The router of one client.
pub struct Router {
    pub config: RouterConfig,
    pub index: Option<Arc<LocalIndex>>,
}

impl Router {
    pub fn new(config: RouterConfig) -> Self {
        let index =
            (config.mode == IndexMode::Local).then(|| Arc::new(LocalIndex::new(config.shards)));
        Router { config, index }
    }
}

fn shard_keys(client: &Client, filter: &[u8]) -> (u16, Vec<u8>, Vec<u8>) {
    let shard = shard_of(filter, client.router().config.shards);
    let keys = client.keys();
    (shard, keys.routes(shard), keys.route_trie(shard))
}

/// Adds routes `(filter, dest)`; returns how many were new. One script call
/// per shard and batch: restoring a node's many routes is cheap.
pub async fn add(client: &Client, routes: &[(Vec<u8>, Vec<u8>)]) -> Result<u64> {
    const BATCH: usize = 1000;
    let shards = client.router().config.shards;
    let mut by_shard: Vec<Vec<&(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); shards as usize];
    for route in routes {
        by_shard[shard_of(&route.0, shards) as usize].push(route);
    }
    let keys = client.keys();
    let events = keys.route_events();
    let calls = by_shard
        .iter()
        .enumerate()
        .flat_map(|(shard, routes)| routes.chunks(BATCH).map(move |batch| (shard as u16, batch)))
        .map(|(shard, batch)| {
            let (routes_key, trie_key) = (keys.routes(shard), keys.route_trie(shard));
            let shard_text = shard.to_string();
            let events = &events;
            async move {
                let mut args: Vec<&[u8]> = vec![events, shard_text.as_bytes()];
                for (filter, dest) in batch {
                    args.push(filter);
                    args.push(dest);
                }
                let (added, _version): (u64, u64) = client
                    .write_eval(&ADD, &[&routes_key, &trie_key], &args)
                    .await?;
                Ok::<u64, Error>(added)
            }
        });
    let added: u64 = futures::future::try_join_all(calls)
        .await?
        .into_iter()
        .sum();
    if let Some(index) = &client.router().index {
        for (filter, dest) in routes {
            index.preview(true, filter, dest);
        }
    }
    Ok(added)
}

/// Removes a route; true if it was there.
pub async fn delete(client: &Client, filter: &[u8], dest: &[u8]) -> Result<bool> {
    let (shard, routes, trie) = shard_keys(client, filter);
    let (removed, _version): (u64, u64) = client
        .write_eval(
            &DELETE,
            &[&routes, &trie],
            &[
                &client.keys().route_events(),
                shard.to_string().as_bytes(),
                filter,
                dest,
            ],
        )
        .await?;
    if let Some(index) = &client.router().index {
        index.preview(false, filter, dest);
    }
    Ok(removed > 0)
}

/// The dests of exactly this filter.
pub async fn lookup(client: &Client, filter: &[u8]) -> Result<Vec<Vec<u8>>> {
    let (_, routes, _) = shard_keys(client, filter);
    let joined: Option<Vec<u8>> = client
        .query(redis::cmd("HGET").arg(routes).arg(filter))
        .await?;
    Ok(joined
        .map(|j| split_dests(&j).map(<[u8]>::to_vec).collect())
        .unwrap_or_default())
}

type Shard = (u64, Vec<(Vec<u8>, Vec<u8>)>);

/// The same command for every shard, replies in shard order.
fn per_shard(keys: &Keys, shards: u16, name: &str) -> Vec<redis::Cmd> {
    (0..shards)
        .map(|shard| {
            let mut cmd = redis::cmd(name);
            cmd.arg(keys.routes(shard));
            cmd
        })
        .collect()
}

/// Every shard's version and routes (filter, NUL-joined dests), each shard
/// read atomically by one HGETALL.
async fn read_shards(backend: &Backend, keys: &Keys, shards: u16) -> Result<Vec<Shard>> {
    let all: Vec<Vec<(Vec<u8>, Vec<u8>)>> =
        backend.each(per_shard(keys, shards, "HGETALL")).await?;
    Ok(all
        .into_iter()
        .map(|fields| {
            let mut version = 0;
            let mut routes = Vec::with_capacity(fields.len());
            for (field, value) in fields {
                if field == VERSION_FIELD {
                    version = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                } else {
                    routes.push((field, value));
                }
            }
            (version, routes)
        })
        .collect())
}

/// Every filter that has a route.
pub async fn filters(client: &Client) -> Result<Vec<Vec<u8>>> {
    let shards = client.router().config.shards;
    let all: Vec<Vec<Vec<u8>>> = client
        .backend()
        .each(per_shard(client.keys(), shards, "HKEYS"))
        .await?;
    let mut filters: Vec<Vec<u8>> = all
        .into_iter()
        .flatten()
        .filter(|f| f != VERSION_FIELD)
        .collect();
    filters.sort();
    Ok(filters)
}

/// Removes every route of a node (and of its shared-subscription dests).
pub async fn cleanup_node(client: &Client, node: &[u8]) -> Result<u64> {
    let pattern = node_pattern(node);
    let keys = client.keys();
    let events = keys.route_events();
    let mut removed = 0;
    let shards = read_shards(client.backend(), keys, client.router().config.shards).await?;
    for (shard, (_, routes)) in shards.into_iter().enumerate() {
        let hit: Vec<&[u8]> = routes
            .iter()
            .filter(|(_, dests)| split_dests(dests).any(|d| decode_dest(d).0 == node))
            .map(|(filter, _)| filter.as_slice())
            .collect();
        if hit.is_empty() {
            continue;
        }
        let shard = shard as u16;
        let shard_text = shard.to_string();
        let mut args: Vec<&[u8]> = vec![&events, shard_text.as_bytes()];
        for filter in &hit {
            args.push(filter);
            args.push(&pattern);
        }
        let (n, _): (u64, u64) = client
            .write_eval(
                &DELETE,
                &[&keys.routes(shard), &keys.route_trie(shard)],
                &args,
            )
            .await?;
        removed += n;
    }
    if let Some(index) = &client.router().index {
        let mut state = index.write();
        if state.ready {
            state
                .routes
                .remove_dests_where(|d| decode_dest(d).0 == node);
        }
    }
    Ok(removed)
}

/// Loads the match script, which runs inside pipelines where it cannot be
/// loaded on demand.
pub async fn load_match_script(client: &Client) -> Result<()> {
    client.load_script(&MATCH).await
}

/// Matches inside Redis: the match script on every shard (one pipeline on a
/// single server, concurrent calls on a cluster, where shards live apart).
pub async fn match_in_redis(client: &Client, topic: &[u8]) -> Result<Vec<Vec<u8>>> {
    let keys = client.keys();
    let shards = client.router().config.shards;
    let calls = || {
        (0..shards)
            .map(|shard| {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(MATCH.hash())
                    .arg(2)
                    .arg(keys.routes(shard))
                    .arg(keys.route_trie(shard))
                    .arg(topic);
                cmd
            })
            .collect::<Vec<_>>()
    };
    let found: Vec<Vec<Vec<u8>>> = match client.backend().each(calls()).await {
        // After a Redis restart its script cache is empty again.
        Err(Error::Redis(msg)) if msg.starts_with("NOSCRIPT") => {
            load_match_script(client).await?;
            client.backend().each(calls()).await?
        }
        other => other?,
    };
    let mut seen = HashSet::new();
    Ok(found
        .iter()
        .flatten()
        .flat_map(|joined| split_dests(joined))
        .filter(|d| seen.insert(*d))
        .map(<[u8]>::to_vec)
        .collect())
}

/// Keeps a client's local index in step with Redis until `shutdown` closes.
pub async fn sync_index(
    index: Arc<LocalIndex>,
    backend: Backend,
    keys: Keys,
    config: RouterConfig,
    mut shutdown: tokio::sync::watch::Receiver<()>,
) {
    let mut attempt = 0;
    loop {
        // `follow` returns only when something broke; either way the index
        // may have missed changes, so it is stale until the next full load.
        tokio::select! {
            _ = follow(&index, &backend, &keys, &config, attempt) => {}
            _ = shutdown.changed() => return,
        };
        index.mark_stale();
        attempt += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Subscribes, loads everything, then applies events until something breaks.
async fn follow(
    index: &LocalIndex,
    backend: &Backend,
    keys: &Keys,
    config: &RouterConfig,
    attempt: usize,
) -> Result<()> {
    let timeout = backend.config().connect_timeout;
    let mut pubsub = backend.pubsub(attempt).await?;
    tokio::time::timeout(timeout, pubsub.subscribe(keys.route_events()))
        .await
        .map_err(|_| Error::Timeout)??;
    let (mut sink, mut stream) = pubsub.split();
    // Subscribed first, loaded second: no change can fall between the two.
    reload(index, backend, keys, config.shards).await?;
    let mut tick = tokio::time::interval(config.sync_interval);
    tick.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Err(Error::Connection("route events connection closed".into()));
                };
                let in_order = Event::parse(msg.get_payload_bytes())
                    .is_some_and(|event| index.apply(&event));
                if !in_order {
                    reload(index, backend, keys, config.shards).await?;
                }
            }
            _ = tick.tick() => {
                // Catches what no later event would reveal: a lost last event,
                // or a subscription that silently stopped delivering.
                tokio::time::timeout(timeout, sink.ping::<Value>())
                    .await
                    .map_err(|_| Error::Timeout)??;
                let versions: Vec<Option<u64>> = backend
                    .each(
                        (0..config.shards)
                            .map(|shard| {
                                let mut cmd = redis::cmd("HGET");
                                cmd.arg(keys.routes(shard)).arg(VERSION_FIELD);
                                cmd
                            })
                            .collect(),
                    )
                    .await?;
                let versions: Vec<u64> = versions.into_iter().map(Option::unwrap_or_default).collect();
                if versions != index.versions() {
                    reload(index, backend, keys, config.shards).await?;
                }
            }
        }
    }
}

async fn reload(index: &LocalIndex, backend: &Backend, keys: &Keys, shards: u16) -> Result<()> {
    index.mark_stale();
    let mut routes = RouteIndex::new();
    let mut versions = Vec::with_capacity(shards as usize);
    for (version, filters) in read_shards(backend, keys, shards).await? {
        versions.push(version);
        for (filter, dests) in filters {
            for dest in split_dests(&dests) {
                routes.insert(&filter, Arc::from(dest));
            }
        }
    }
    index.replace(routes, versions);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dests_round_trip() {
        let n = encode_dest(b"emqx@a", None);
        assert_eq!(decode_dest(&n), (&b"emqx@a"[..], None));
        let g = encode_dest(b"emqx@a", Some(b"grp\x01x"));
        assert_eq!(decode_dest(&g), (&b"emqx@a"[..], Some(&b"grp\x01x"[..])));
        assert!(node_pattern(b"emqx@a").starts_with(&[1]));
        assert!(g.starts_with(&node_pattern(b"emqx@a")));
    }

    #[test]
    fn events_parse() {
        let e = Event::parse(b"3 17 +a/+/b\0emqx@n").unwrap();
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
        let e = Event::parse(b"0 1 -with space/x\0\x01n\x01g").unwrap();
        assert!(!e.add);
        assert_eq!(e.filter, b"with space/x");
        assert_eq!(Event::parse(b"garbage"), None);
        assert_eq!(Event::parse(b"1 x +a\0b"), None);
        assert_eq!(Event::parse(b"1 2 *a\0b"), None);
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
    fn index_applies_in_order_and_detects_gaps() {
        let index = LocalIndex::new(2);
        assert_eq!(index.matches(b"a"), None, "not ready before the first load");
        index.replace(RouteIndex::new(), vec![5, 0]);
        assert!(index.apply(&event(0, 6, true, "a/+", "n1")));
        assert_eq!(index.matches(b"a/x").unwrap().len(), 1);
        // old or repeated events are ignored
        assert!(index.apply(&event(0, 6, false, "a/+", "n1")));
        assert_eq!(index.matches(b"a/x").unwrap().len(), 1);
        // a gap makes the index stale until reloaded
        assert!(!index.apply(&event(1, 2, true, "b", "n1")));
        assert_eq!(index.matches(b"a/x"), None);
        index.replace(RouteIndex::new(), vec![6, 2]);
        assert_eq!(index.matches(b"a/x").unwrap().len(), 0);
        // an unknown shard is a gap too
        assert!(!index.apply(&event(9, 1, true, "c", "n1")));
        assert!(!index.is_ready());
    }

    #[test]
    fn previews_are_overruled_by_the_log() {
        let index = LocalIndex::new(1);
        index.replace(RouteIndex::new(), vec![3]);
        // our add (version 5) shows at once; someone's delete (4) came first
        index.preview(true, b"t", b"me");
        assert_eq!(index.matches(b"t").unwrap().len(), 1);
        assert!(index.apply(&event(0, 4, false, "t", "me")));
        assert!(index.apply(&event(0, 5, true, "t", "me")));
        assert_eq!(index.matches(b"t").unwrap().len(), 1);
    }
}
