//! Per-client queues of QoS 1/2 messages.
//!
//! A queue is four keys, all in the client's hash slot, changed together by
//! one Lua script per operation: `q:{C}` orders ids by an arrival sequence
//! that the script takes from `qm:{C}` (Redis's order, whatever the writers'
//! clocks), `qx:{C}` holds each id's expiry time, and `qb:{C}` holds the
//! bodies, a field per id. The keys expire with the last message (a store
//! may set them up to an eighth of its ttl later), so Redis reclaims a
//! queue whose messages have all expired without anyone reading
//! it; the bodies of messages that expire before the last one go when a
//! script next meets them (every script but ack and delete drops the
//! expired messages first). The scripts that walk the queue (get, count,
//! info) also drop the ids whose body was removed outside the library
//! (HDEL, DEL, eviction), so that what they count is what `get` returns.
//!
//! A stored body starts with an 8-byte big-endian header, the time (Unix ms,
//! Redis's clock) it was stored; the rest is the caller's bytes.

use std::sync::LazyLock;

use redis::Value;

use crate::connection::scripts::Lua;
use crate::connection::{from_reply, Client};
use crate::error::{Error, Result};
use crate::store::keys::ClientKeys;
use crate::store::session::unexpected;

/// Each script is the shared prelude followed by its own part.
fn script(own: &str) -> Lua {
    Lua::new(&[include_str!("lua/message_prelude.lua"), own])
}

static STORE: LazyLock<Lua> = LazyLock::new(|| script(include_str!("lua/message_store.lua")));
static GET: LazyLock<Lua> = LazyLock::new(|| script(include_str!("lua/message_get.lua")));
static ACK: LazyLock<Lua> = LazyLock::new(|| script(include_str!("lua/message_ack.lua")));
// Without the prelude: deleting is the way out of a corrupt queue.
static DELETE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(&[include_str!("lua/message_delete.lua")]));
static COUNT: LazyLock<Lua> = LazyLock::new(|| script(include_str!("lua/message_count.lua")));
static INFO: LazyLock<Lua> = LazyLock::new(|| script(include_str!("lua/message_info.lua")));

/// Length of the stored-at header in front of every stored body.
pub const HEADER_LEN: usize = 8;

/// A message to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub id: Vec<u8>,
    /// Time to live from now, in ms.
    pub ttl_ms: u64,
    pub body: Vec<u8>,
}

/// A message read back from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: Vec<u8>,
    /// As stored: a header (checked to be whole), then the body.
    stored: Vec<u8>,
}

impl Queued {
    /// When it was stored, Unix ms (Redis's clock).
    pub fn stored_at(&self) -> i64 {
        stored_at(&self.stored).expect("checked when read")
    }

    pub fn body(&self) -> &[u8] {
        &self.stored[HEADER_LEN..]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// Live messages.
    pub len: u64,
    /// Messages dropped because the queue was full, since the queue was
    /// created (it is gone once empty and expired, or deleted).
    pub dropped: u64,
    /// When the oldest live message was stored, Unix ms.
    pub oldest_at: Option<i64>,
}

/// The queue keys of a client, in the order the scripts take them.
struct QueueKeys([Vec<u8>; 4]);

impl QueueKeys {
    fn of(client: &Client, client_id: &[u8]) -> Self {
        let keys = client.keys();
        QueueKeys([
            keys.queue(client_id),
            keys.queue_expiry(client_id),
            keys.queue_meta(client_id),
            keys.queue_bodies(client_id),
        ])
    }

    fn keys(&self) -> [&[u8]; 4] {
        let [q, x, m, b] = &self.0;
        [q, x, m, b]
    }
}

/// Queues `messages` after those already queued, in their order, in one
/// round trip (in a group commit). An id already queued is left as it is.
/// `done` gets the queue length afterwards (at most `max_len`: the oldest
/// are dropped), on a runtime thread.
pub fn store(
    client: &Client,
    client_id: &[u8],
    messages: Vec<NewMessage>,
    max_len: u64,
    done: impl FnOnce(Result<u64>) + Send + 'static,
) {
    let q = QueueKeys::of(client, client_id);
    let argv = store_argv(max_len, messages);
    client.send_grouped_write_eval(&STORE, Vec::from(q.0), argv, move |reply| {
        done(from_reply(reply).map_err(|e| e.of("queue")))
    });
}

/// The store script's ARGV: max length, then id, ttl and body of each
/// message (moved, not copied).
fn store_argv(max_len: u64, messages: Vec<NewMessage>) -> Vec<Vec<u8>> {
    let mut argv = Vec::with_capacity(1 + 3 * messages.len());
    argv.push(max_len.to_string().into_bytes());
    for m in messages {
        argv.extend([m.id, m.ttl_ms.to_string().into_bytes(), m.body]);
    }
    argv
}

/// Up to `limit` live messages from rank `offset` on, oldest first, to
/// `done` on a runtime thread: without a task of its own
/// (`Client::send_eval`). An empty page (`limit` 0) asks Redis nothing and
/// is answered at once, on the caller's thread.
pub fn get(
    client: &Client,
    client_id: &[u8],
    offset: u64,
    limit: u64,
    done: impl FnOnce(Result<Vec<Queued>>) + Send + 'static,
) {
    let Some(last) = last_rank(offset, limit) else {
        return done(Ok(Vec::new()));
    };
    let q = QueueKeys::of(client, client_id);
    let (first, last) = (offset.to_string(), last.to_string());
    let args = [first.as_bytes(), last.as_bytes()];
    client.send_eval(&GET, &q.keys(), &args, move |reply| done(page(reply)));
}

/// The get script's reply: id, stored, id, stored...
fn page(reply: Result<Value>) -> Result<Vec<Queued>> {
    let flat: Vec<Vec<u8>> = from_reply(reply).map_err(|e| e.of("queue"))?;
    if !flat.len().is_multiple_of(2) {
        return Err(unexpected("message_get", &flat.len()));
    }
    let mut page = Vec::with_capacity(flat.len() / 2);
    let mut flat = flat.into_iter();
    while let (Some(id), Some(stored)) = (flat.next(), flat.next()) {
        if stored_at(&stored).is_none() {
            return Err(Error::corrupt(
                "message",
                format!("{}shorter than its header", named(&id)),
            ));
        }
        page.push(Queued { id, stored });
    }
    Ok(page)
}

/// How a detail names a message: the first 100 bytes of its id, escaped
/// (the same as `named` in `guard.lua`).
fn named(id: &[u8]) -> String {
    format!("{}: ", id[..id.len().min(100)].escape_ascii())
}

/// The inclusive last rank of a page, or `None` for an empty page.
fn last_rank(offset: u64, limit: u64) -> Option<u64> {
    limit.checked_sub(1).map(|n| offset.saturating_add(n))
}

/// Removes a message; true if it was queued.
pub async fn ack(client: &Client, client_id: &[u8], id: &[u8]) -> Result<bool> {
    let q = QueueKeys::of(client, client_id);
    let removed: i64 = client
        .grouped_write_eval(&ACK, Vec::from(q.0), vec![id.to_vec()])
        .await
        .map_err(|e| e.of("queue"))?;
    Ok(removed == 1)
}

/// Deletes the queue with every message and counter; returns how many
/// messages were deleted.
pub async fn delete(client: &Client, client_id: &[u8]) -> Result<u64> {
    let q = QueueKeys::of(client, client_id);
    client
        .write_eval(&DELETE, &q.keys(), &[])
        .await
        .map_err(|e| e.of("queue"))
}

/// The number of live messages.
pub async fn count(client: &Client, client_id: &[u8]) -> Result<u64> {
    let q = QueueKeys::of(client, client_id);
    client
        .eval(&COUNT, &q.keys(), &[])
        .await
        .map_err(|e| e.of("queue"))
}

pub async fn info(client: &Client, client_id: &[u8]) -> Result<QueueInfo> {
    let q = QueueKeys::of(client, client_id);
    let (len, dropped, header): (u64, u64, Vec<u8>) = client
        .eval(&INFO, &q.keys(), &[])
        .await
        .map_err(|e| e.of("queue"))?;
    Ok(QueueInfo {
        len,
        dropped,
        oldest_at: stored_at(&header),
    })
}

/// The stored-at time of a header (or of a whole stored body).
fn stored_at(stored: &[u8]) -> Option<i64> {
    let header: [u8; HEADER_LEN] = stored.get(..HEADER_LEN)?.try_into().ok()?;
    Some(i64::from_be_bytes(header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What message_store.lua writes in front of a body.
    fn header(at: i64) -> Vec<u8> {
        at.to_be_bytes().to_vec()
    }

    /// A stored message as the get script's reply gives it, read as `get`
    /// reads it: its time and its body.
    fn split_header(stored: Vec<u8>) -> Option<(i64, Vec<u8>)> {
        let reply = Value::Array(vec![
            Value::BulkString(b"m".to_vec()),
            Value::BulkString(stored),
        ]);
        let page = page(Ok(reply)).ok()?;
        let [m] = &page[..] else {
            return None;
        };
        Some((m.stored_at(), m.body().to_vec()))
    }

    #[test]
    fn the_header_is_stripped_and_read_as_big_endian_ms() {
        let mut stored = header(1_700_000_000_123);
        stored.extend_from_slice(b"\x83term");
        assert_eq!(
            split_header(stored),
            Some((1_700_000_000_123, b"\x83term".to_vec()))
        );
        // An empty body is still a body.
        assert_eq!(split_header(header(42)), Some((42, Vec::new())));
        assert_eq!(
            stored_at(&[0, 0, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00]),
            Some(0x018b_cfe5_6800)
        );
    }

    #[test]
    fn a_body_shorter_than_the_header_is_refused() {
        assert_eq!(split_header(vec![1, 2, 3]), None);
        assert_eq!(stored_at(b""), None);
        assert_eq!(stored_at(&[0; 7]), None);
    }

    #[test]
    fn details_name_ids_escaped_and_short() {
        assert_eq!(named(b"m1"), "m1: ");
        assert_eq!(named(b"m\xff\r\n'\"\\x"), "m\\xff\\r\\n\\'\\\"\\\\x: ");
        assert_eq!(named(&[b'a'; 300]).len(), 102);
    }

    #[test]
    fn store_argv_is_max_len_then_id_ttl_body_triples() {
        let messages = vec![
            NewMessage {
                id: b"m1".to_vec(),
                ttl_ms: 1000,
                body: b"one".to_vec(),
            },
            NewMessage {
                id: b"m2".to_vec(),
                ttl_ms: 86_400_000,
                body: Vec::new(),
            },
        ];
        let argv = store_argv(5, messages);
        let expected: [&[u8]; 7] = [b"5", b"m1", b"1000", b"one", b"m2", b"86400000", b""];
        assert_eq!(argv, expected);
    }

    #[test]
    fn page_ranges_are_inclusive_and_empty_for_no_limit() {
        assert_eq!(last_rank(0, 0), None);
        assert_eq!(last_rank(0, 1), Some(0));
        assert_eq!(last_rank(10, 100), Some(109));
        assert_eq!(last_rank(u64::MAX, 2), Some(u64::MAX));
    }

    proptest! {
        #[test]
        fn any_body_survives_the_header(at in 0i64..=i64::MAX, body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut stored = header(at);
            stored.extend_from_slice(&body);
            prop_assert_eq!(split_header(stored), Some((at, body)));
        }
    }
}
