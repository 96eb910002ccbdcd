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
use crate::error::{stored_int, Error, Result};
use crate::keys::{crc16, Keys};
use crate::route_index::RouteIndex;
use crate::topic;

/// The scripts that change a shard share `route_prelude.lua`.
fn change_script(own: &str) -> Lua {
    Lua::new(&[include_str!("lua/route_prelude.lua"), own])
}

static ADD: LazyLock<Lua> = LazyLock::new(|| change_script(include_str!("lua/route_add.lua")));
static DELETE: LazyLock<Lua> =
    LazyLock::new(|| change_script(include_str!("lua/route_delete.lua")));
/// The same, as a reaper's step (nodes.rs).
static REAP: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(&[
        include_str!("lua/reap_fence.lua"),
        include_str!("lua/route_prelude.lua"),
        include_str!("lua/route_delete.lua"),
    ])
});
static MATCH: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[include_str!("lua/route_match.lua")]));

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

/// `(node, group)` of a stored dest. Anything we could not have written is
/// corrupt: the node must be a node name and the group a group name.
pub fn decode_dest(dest: &[u8]) -> Result<(&[u8], Option<&[u8]>)> {
    let (node, group) = match dest {
        [1, rest @ ..] => match rest.iter().position(|&b| b == 1) {
            Some(end) => (&rest[..end], Some(&rest[end + 1..])),
            None => (rest, Some(&b""[..])),
        },
        _ => (dest, None),
    };
    if !is_node_name(node) {
        return Err(Error::corrupt("route", "a dest without a valid node name"));
    }
    if !group.is_none_or(is_group_name) {
        return Err(Error::corrupt("route", "a dest without a valid group name"));
    }
    Ok((node, group))
}

/// `name@host`, both parts non-empty, UTF-8 without control characters, at
/// most 255 bytes: what an Erlang node name looks like. The same rule as
/// `emqx_redis_storage_terms:to_node/2`, which turns such names into atoms.
pub fn is_node_name(name: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(name) else {
        return false;
    };
    name.len() <= 255
        && !text.chars().any(char::is_control)
        && text
            .split_once('@')
            .is_some_and(|(n, host)| !n.is_empty() && !host.is_empty())
}

/// A shared-subscription group: a non-empty MQTT string without NUL, `/`,
/// `+` or `#` (as `emqx_redis_router` accepts them).
fn is_group_name(group: &[u8]) -> bool {
    !group.is_empty()
        && std::str::from_utf8(group).is_ok()
        && !group.iter().any(|b| b"\0/+#".contains(b))
}

/// Whether a checked dest (read by [`read_shards`], or in the index) is
/// `node` or one of its groups.
fn is_dest_of(dest: &[u8], node: &[u8]) -> bool {
    decode_dest(dest).is_ok_and(|(n, _)| n == node)
}

/// A stored route: a valid filter with a non-empty list of valid dests.
fn check_route(filter: &[u8], joined: &[u8]) -> Result<()> {
    if topic::validate_filter(filter).is_err() {
        return Err(Error::corrupt("route", "a field that is not a filter"));
    }
    split_dests(joined).try_for_each(|d| decode_dest(d).map(drop))
}

/// A shard's version as stored; 0 while the shard has none.
fn shard_version(raw: Option<&[u8]>) -> Result<u64> {
    raw.map_or(Ok(0), |v| {
        stored_int("route", "version", v).map(|v| v as u64)
    })
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
        // An event that does not hold a route we could have written is as
        // good as a lost one: the index reloads from Redis.
        check_route(&rest[..nul], &rest[nul + 1..]).ok()?;
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

    /// The routes it holds (also while stale).
    pub fn route_count(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .routes
            .len()
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
    /// the event log, applied in order later, has the last word. Like
    /// everything in the index, only a valid route.
    fn preview(&self, add: bool, filter: &[u8], dest: &[u8]) {
        let mut state = self.write();
        if state.ready && check_route(filter, dest).is_ok() {
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
        .await
        .map_err(|e| e.of("route"))?;
    let Some(joined) = joined else {
        return Ok(Vec::new());
    };
    check_route(filter, &joined)?;
    Ok(split_dests(&joined).map(<[u8]>::to_vec).collect())
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
/// read atomically by one HGETALL. A route or version we could not have
/// written fails the whole read: nothing built from it is half right.
async fn read_shards(backend: &Backend, keys: &Keys, shards: u16) -> Result<Vec<Shard>> {
    let all: Vec<Vec<(Vec<u8>, Vec<u8>)>> = backend
        .each(per_shard(keys, shards, "HGETALL"))
        .await
        .map_err(|e| e.of("route"))?;
    all.into_iter()
        .map(|fields| {
            let mut version = 0;
            let mut routes = Vec::with_capacity(fields.len());
            for (field, value) in fields {
                if field == VERSION_FIELD {
                    version = shard_version(Some(&value))?;
                } else {
                    check_route(&field, &value)?;
                    routes.push((field, value));
                }
            }
            Ok((version, routes))
        })
        .collect()
}

/// Every filter that has a route.
pub async fn filters(client: &Client) -> Result<Vec<Vec<u8>>> {
    let shards = client.router().config.shards;
    let all: Vec<Vec<Vec<u8>>> = client
        .backend()
        .each(per_shard(client.keys(), shards, "HKEYS"))
        .await
        .map_err(|e| e.of("route"))?;
    let mut filters: Vec<Vec<u8>> = all
        .into_iter()
        .flatten()
        .filter(|f| f != VERSION_FIELD)
        .collect();
    if filters.iter().any(|f| topic::validate_filter(f).is_err()) {
        return Err(Error::corrupt("route", "a field that is not a filter"));
    }
    filters.sort();
    Ok(filters)
}

/// Removes every route of a node (and of its shared-subscription dests).
/// Every shard is read and checked before the first change; the changes
/// are one script per shard, so a trie found corrupt by one of them stops
/// the cleanup there, with the shards before it cleaned.
pub async fn cleanup_node(client: &Client, node: &[u8]) -> Result<u64> {
    cleanup(client, node, None).await
}

/// `cleanup_node` as a reaper's step that ends at `until` (Redis ms): each
/// shard's script refuses once it has passed (nodes.rs).
pub async fn reap_node(client: &Client, node: &[u8], until: i64) -> Result<u64> {
    cleanup(client, node, Some(until)).await
}

async fn cleanup(client: &Client, node: &[u8], until: Option<i64>) -> Result<u64> {
    let (script, until) = match until {
        None => (&*DELETE, None),
        Some(until) => (&*REAP, Some(until.to_string())),
    };
    let pattern = node_pattern(node);
    let keys = client.keys();
    let events = keys.route_events();
    let mut removed = 0;
    let shards = read_shards(client.backend(), keys, client.router().config.shards).await?;
    for (shard, (_, routes)) in shards.into_iter().enumerate() {
        let hit: Vec<&[u8]> = routes
            .iter()
            .filter(|(_, dests)| split_dests(dests).any(|d| is_dest_of(d, node)))
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
        args.extend(until.as_deref().map(str::as_bytes));
        let (n, _): (u64, u64) = client
            .write_eval(
                script,
                &[&keys.routes(shard), &keys.route_trie(shard)],
                &args,
            )
            .await?;
        removed += n;
    }
    if let Some(index) = &client.router().index {
        let mut state = index.write();
        if state.ready {
            state.routes.remove_dests_where(|d| is_dest_of(d, node));
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
            client.reload_script(&MATCH).await?;
            client.backend().each(calls()).await
        }
        other => other,
    }
    .map_err(|e| e.of("route"))?;
    let mut seen = HashSet::new();
    let mut dests = Vec::new();
    for dest in found
        .iter()
        .flatten()
        .flat_map(|joined| split_dests(joined))
    {
        decode_dest(dest)?;
        if seen.insert(dest) {
            dests.push(dest.to_vec());
        }
    }
    Ok(dests)
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
    let mut resync = Resync::Start;
    loop {
        // `follow` returns only when something broke; either way the index
        // may have missed changes, so it is stale until the next full load.
        let followed = tokio::select! {
            r = follow(&index, &backend, &keys, &config, attempt, &resync) => r,
            _ = shutdown.changed() => return,
        };
        resync = Resync::PubsubLost(
            followed
                .as_ref()
                .err()
                .map(Error::to_string)
                .unwrap_or_default(),
        );
        index.mark_stale();
        attempt += 1;
        // Corrupt routes in Redis fail the load, and the index stays unused
        // (matches go to Redis, which names the corrupt route); they stay
        // until someone repairs them, so retry at the pace of the check.
        let pause = match followed {
            Err(Error::Corrupt { .. }) => config.sync_interval,
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
    index: &LocalIndex,
    backend: &Backend,
    keys: &Keys,
    config: &RouterConfig,
    attempt: usize,
    resync: &Resync,
) -> Result<()> {
    let timeout = backend.config().connect_timeout;
    let mut pubsub = backend.pubsub(attempt).await?;
    tokio::time::timeout(timeout, pubsub.subscribe(keys.route_events()))
        .await
        .map_err(|_| Error::Timeout)??;
    let (mut sink, mut stream) = pubsub.split();
    // Subscribed first, loaded second: no change can fall between the two.
    reload(index, backend, keys, config.shards, resync).await?;
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
                    reload(index, backend, keys, config.shards, &Resync::Gap).await?;
                }
            }
            _ = tick.tick() => {
                // Catches what no later event would reveal: a lost last event,
                // or a subscription that silently stopped delivering.
                tokio::time::timeout(timeout, sink.ping::<Value>())
                    .await
                    .map_err(|_| Error::Timeout)??;
                let versions: Vec<Option<Vec<u8>>> = backend
                    .each(
                        (0..config.shards)
                            .map(|shard| {
                                let mut cmd = redis::cmd("HGET");
                                cmd.arg(keys.routes(shard)).arg(VERSION_FIELD);
                                cmd
                            })
                            .collect(),
                    )
                    .await
                    .map_err(|e| e.of("route"))?;
                let versions = versions
                    .iter()
                    .map(|v| shard_version(v.as_deref()))
                    .collect::<Result<Vec<u64>>>()?;
                if versions != index.versions() {
                    reload(index, backend, keys, config.shards, &Resync::Drift).await?;
                }
            }
        }
    }
}

/// Why the local index is loaded in full.
enum Resync {
    /// The client started.
    Start,
    /// Following the route events stopped, for this reason: the pub/sub
    /// connection was lost, or a check on it failed.
    PubsubLost(String),
    /// An event came out of order: one was missed.
    Gap,
    /// The periodic check found shard versions the index does not have.
    Drift,
}

impl Resync {
    /// Logged once the load is done: the first at `info`, the others (the
    /// index had missed changes) at `warn`.
    fn log(&self, routes: usize, elapsed: Duration) {
        let elapsed_ms = elapsed.as_millis() as u64;
        match self {
            Resync::Start => {
                tracing::info!(reason = "start", routes, elapsed_ms, "route_index_resync")
            }
            Resync::PubsubLost(cause) => tracing::warn!(
                reason = "pubsub_lost",
                cause = %cause,
                routes,
                elapsed_ms,
                "route_index_resync"
            ),
            Resync::Gap => {
                tracing::warn!(reason = "gap", routes, elapsed_ms, "route_index_resync")
            }
            Resync::Drift => {
                tracing::warn!(reason = "drift", routes, elapsed_ms, "route_index_resync")
            }
        }
    }
}

async fn reload(
    index: &LocalIndex,
    backend: &Backend,
    keys: &Keys,
    shards: u16,
    resync: &Resync,
) -> Result<()> {
    let started = std::time::Instant::now();
    index.mark_stale();
    let resyncs = &backend.metrics().connections.route_index_resyncs;
    resyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut routes = RouteIndex::new();
    let mut versions = Vec::with_capacity(shards as usize);
    let mut loaded = 0;
    for (version, filters) in read_shards(backend, keys, shards).await? {
        versions.push(version);
        for (filter, dests) in filters {
            for dest in split_dests(&dests) {
                routes.insert(&filter, Arc::from(dest));
                loaded += 1;
            }
        }
    }
    index.replace(routes, versions);
    resync.log(loaded, started.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dests_round_trip() {
        let n = encode_dest(b"emqx@a", None);
        assert_eq!(decode_dest(&n), Ok((&b"emqx@a"[..], None)));
        let g = encode_dest(b"emqx@a", Some(b"grp\x01x"));
        assert_eq!(
            decode_dest(&g),
            Ok((&b"emqx@a"[..], Some(&b"grp\x01x"[..])))
        );
        assert!(node_pattern(b"emqx@a").starts_with(&[1]));
        assert!(g.starts_with(&node_pattern(b"emqx@a")));
    }

    #[test]
    fn dests_we_could_not_have_written_are_corrupt() {
        let long = [&[b'n'; 251][..], b"@host"].concat();
        for bad in [
            &b""[..],
            b"nonode",
            b"@h",
            b"n@",
            b"a\0@b",
            b"a\n@b",
            b"a@\xff",
            &long,
            b"\x01n@h",
            b"\x01n@h\x01",
            b"\x01n@h\x01g/x",
            b"\x01\x01g",
        ] {
            assert!(
                matches!(decode_dest(bad), Err(Error::Corrupt { kind: "route", .. })),
                "{bad:?}"
            );
        }
        assert!(check_route(b"a/+", b"n@h\0\x01m@h\x01g").is_ok());
        assert!(check_route(b"a/+", b"n@h\0").is_err(), "an empty dest");
        assert!(check_route(b"a/#/b", b"n@h").is_err(), "not a filter");
        assert_eq!(shard_version(None), Ok(0));
        assert!(shard_version(Some(b"notanumber")).is_err());
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
        let e = Event::parse(b"0 1 -with space/x\0\x01n@h\x01g").unwrap();
        assert!(!e.add);
        assert_eq!(e.filter, b"with space/x");
        assert_eq!(Event::parse(b"garbage"), None);
        assert_eq!(Event::parse(b"1 x +a\0b"), None);
        assert_eq!(Event::parse(b"1 2 *a\0b"), None);
        assert_eq!(Event::parse(b"1 2 +a\0nonode"), None, "not a node name");
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
        index.preview(true, b"t", b"me@h");
        assert_eq!(index.matches(b"t").unwrap().len(), 1);
        assert!(index.apply(&event(0, 4, false, "t", "me@h")));
        assert!(index.apply(&event(0, 5, true, "t", "me@h")));
        assert_eq!(index.matches(b"t").unwrap().len(), 1);
    }
}
