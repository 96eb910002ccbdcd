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
//! Each client may keep a local index of all routes (a [`Mirror`] of the
//! table, kept in step through those events) and answer matches from memory;
//! while the index may be stale, Redis answers.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::connection::scripts::Lua;
use crate::connection::Client;
use crate::error::{Error, Result};
use crate::store::keys::{ClientKeys, Keys};
use crate::store::mirror::{self, per_shard, read_shards, shard_of, Mirror, Table, VERSION_FIELD};
use crate::store::topic;

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

/// The routing table: filter -> NUL-joined dests. A dest as stored is a
/// node name, or `\x01 node \x01 group` for a shared-subscription group
/// (node names cannot contain `\x01`).
pub static ROUTES: Table = Table {
    kind: "route",
    resync_event: "route_index_resync",
    shard_key: Keys::routes,
    channel: Keys::route_events,
    check: check_route,
    check_change: |filter, dest| check_route(filter, dest).is_ok(),
    dests: |joined| split_dests(joined).collect(),
    resyncs: Some(|metrics| &metrics.connections.route_index_resyncs),
};

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

/// The router of one client.
pub struct Router {
    pub config: RouterConfig,
    pub index: Option<Arc<Mirror>>,
}

impl Router {
    pub fn new(config: RouterConfig) -> Self {
        let index = (config.mode == IndexMode::Local)
            .then(|| Arc::new(Mirror::new(&ROUTES, config.shards)));
        Router { config, index }
    }

    /// Gets a client's router going: the match script loaded (`Redis`
    /// mode), or the local index following the routing table until the
    /// client is dropped (`Local`).
    pub async fn start(&self, client: &Client) -> Result<()> {
        if self.config.mode == IndexMode::Redis {
            load_match_script(client).await?;
        }
        if let Some(index) = &self.index {
            tokio::spawn(mirror::sync(
                index.clone(),
                client.backend().clone(),
                client.keys(),
                self.config.sync_interval,
                client.backend().closed(),
            ));
        }
        Ok(())
    }
}

fn shard_keys(client: &Client, router: &Router, filter: &[u8]) -> (u16, Vec<u8>, Vec<u8>) {
    let shard = shard_of(filter, router.config.shards);
    let keys = client.keys();
    (shard, keys.routes(shard), keys.route_trie(shard))
}

/// Adds routes `(filter, dest)`; returns how many were new. One script call
/// per shard and batch: restoring a node's many routes is cheap.
pub async fn add(client: &Client, router: &Router, routes: &[(Vec<u8>, Vec<u8>)]) -> Result<u64> {
    const BATCH: usize = 1000;
    let shards = router.config.shards;
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
                let mut args = vec![events.clone(), shard_text.into_bytes()];
                for (filter, dest) in batch {
                    args.push(filter.clone());
                    args.push(dest.clone());
                }
                let (added, _version): (u64, u64) = client
                    .grouped_write_eval(&ADD, vec![routes_key, trie_key], args)
                    .await?;
                Ok::<u64, Error>(added)
            }
        });
    let added: u64 = futures::future::try_join_all(calls)
        .await?
        .into_iter()
        .sum();
    if let Some(index) = &router.index {
        for (filter, dest) in routes {
            index.preview(true, filter, dest);
        }
    }
    Ok(added)
}

/// Removes a route; true if it was there.
pub async fn delete(client: &Client, router: &Router, filter: &[u8], dest: &[u8]) -> Result<bool> {
    let (shard, routes, trie) = shard_keys(client, router, filter);
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
    if let Some(index) = &router.index {
        index.preview(false, filter, dest);
    }
    Ok(removed > 0)
}

/// The dests of exactly this filter.
pub async fn lookup(client: &Client, router: &Router, filter: &[u8]) -> Result<Vec<Vec<u8>>> {
    let (_, routes, _) = shard_keys(client, router, filter);
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

/// Every filter that has a route.
pub async fn filters(client: &Client, router: &Router) -> Result<Vec<Vec<u8>>> {
    let shards = router.config.shards;
    let all: Vec<Vec<Vec<u8>>> = client
        .backend()
        .each(per_shard(&ROUTES, &client.keys(), shards, "HKEYS"))
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
pub async fn cleanup_node(client: &Client, router: &Router, node: &[u8]) -> Result<u64> {
    cleanup(client, router, node, None).await
}

/// `cleanup_node` as a reaper's step that ends at `until` (Redis ms): each
/// shard's script refuses once it has passed (nodes.rs).
pub async fn reap_node(client: &Client, router: &Router, node: &[u8], until: i64) -> Result<u64> {
    cleanup(client, router, node, Some(until)).await
}

async fn cleanup(client: &Client, router: &Router, node: &[u8], until: Option<i64>) -> Result<u64> {
    let (script, until) = match until {
        None => (&*DELETE, None),
        Some(until) => (&*REAP, Some(until.to_string())),
    };
    let pattern = node_pattern(node);
    let keys = &client.keys();
    let events = keys.route_events();
    let mut removed = 0;
    let shards = read_shards(&ROUTES, client.backend(), keys, router.config.shards).await?;
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
    if let Some(index) = &router.index {
        index.remove_dests_where(|d| is_dest_of(d, node));
    }
    Ok(removed)
}

/// Loads the match script, which runs inside pipelines where it cannot be
/// loaded on demand.
async fn load_match_script(client: &Client) -> Result<()> {
    client.load_script(&MATCH).await
}

/// Matches inside Redis: the match script on every shard (one pipeline on a
/// single server, concurrent calls on a cluster, where shards live apart).
pub async fn match_in_redis(
    client: &Client,
    router: &Router,
    topic: &[u8],
) -> Result<Vec<Vec<u8>>> {
    let keys = client.keys();
    let shards = router.config.shards;
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
    }

    #[test]
    fn only_route_changes_are_route_events() {
        use crate::store::mirror::Event;
        let e = Event::parse(&ROUTES, b"0 1 -with space/x\0\x01n@h\x01g").unwrap();
        assert_eq!((e.add, &e.dest[..]), (false, &b"\x01n@h\x01g"[..]));
        assert_eq!(
            Event::parse(&ROUTES, b"1 2 +a\0nonode"),
            None,
            "not a node name"
        );
        assert_eq!(
            Event::parse(&ROUTES, b"1 2 +a/#/b\0n@h"),
            None,
            "not a filter"
        );
    }
}
