//! The client registry: which node a client is connected to. Entries live in
//! a hash per hash slot (`chan:{S}`), in the same slot as the client's other
//! keys, so a dead node's entries are found slot by slot without a global key.

use std::sync::LazyLock;

use crate::connection::scripts::Lua;

use crate::connection::Client;
use crate::error::Result;
use crate::store::keys::{client_slot, ClientKeys};

static UNREGISTER: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(&[include_str!("lua/channel_unregister.lua")]));
static CLEANUP: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(&[include_str!("lua/channel_cleanup.lua")]));
/// The same, as a reaper's step (nodes.rs).
static REAP: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(&[
        include_str!("lua/reap_fence.lua"),
        include_str!("lua/channel_cleanup.lua"),
    ])
});

pub async fn register(client: &Client, client_id: &[u8], node: &[u8]) -> Result<()> {
    let key = client.keys().channels(client_slot(client_id));
    client
        .write_query::<()>(redis::cmd("HSET").arg(key).arg(client_id).arg(node))
        .await
        .map_err(|e| e.of("channel"))
}

pub async fn lookup(client: &Client, client_id: &[u8]) -> Result<Option<Vec<u8>>> {
    let key = client.keys().channels(client_slot(client_id));
    client
        .query(redis::cmd("HGET").arg(key).arg(client_id))
        .await
        .map_err(|e| e.of("channel"))
}

/// Removes the entry only if it still names `node`; true if it did.
pub async fn unregister(client: &Client, client_id: &[u8], node: &[u8]) -> Result<bool> {
    let key = client.keys().channels(client_slot(client_id));
    let removed: i64 = client
        .write_eval(&UNREGISTER, &[&key], &[client_id, node])
        .await
        .map_err(|e| e.of("channel"))?;
    Ok(removed == 1)
}

/// Removes every entry that names `node`; returns how many. A slot's key of
/// the wrong type is found before any entry is removed.
pub async fn cleanup_node(client: &Client, node: &[u8]) -> Result<u64> {
    cleanup(client, node, None).await
}

/// `cleanup_node` as a reaper's step that ends at `until` (Redis ms): each
/// slot's script refuses once it has passed (nodes.rs).
pub async fn reap_node(client: &Client, node: &[u8], until: i64) -> Result<u64> {
    cleanup(client, node, Some(until)).await
}

async fn cleanup(client: &Client, node: &[u8], until: Option<i64>) -> Result<u64> {
    let keys = &client.keys();
    let slots = client
        .slots_with_hash("channel", |slot| keys.channels(slot))
        .await?;
    let until = until.map(|u| u.to_string());
    // One script per slot that has entries, all in flight at once (they
    // pipeline on the multiplexed connections).
    let scripts = slots.iter().map(|&slot| {
        let until = until.as_deref();
        async move {
            let key = keys.channels(slot);
            let result = match until {
                None => client.write_eval::<u64>(&CLEANUP, &[&key], &[node]).await,
                Some(until) => {
                    client
                        .write_eval::<u64>(&REAP, &[&key], &[node, until.as_bytes()])
                        .await
                }
            };
            result.map_err(|e| e.of("channel"))
        }
    });
    Ok(futures::future::try_join_all(scripts).await?.iter().sum())
}
