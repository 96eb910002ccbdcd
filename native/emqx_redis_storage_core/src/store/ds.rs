//! Durable messages: stored once per publish in append-only Redis streams,
//! replayed by iterators that sessions keep.
//!
//! - **Durable filters.** A client's durable filters are a set in its slot;
//!   each filter's holders are counted in a sharded table (`ds:f:{dN}`),
//!   which every client mirrors in memory (`mirror.rs`, as the routing table
//!   is). `persist` stores a message only if its topic matches a filter of
//!   the mirror: no round trip for a topic nobody durable wants.
//! - **Streams.** A message goes to one stream, chosen by its topic's first
//!   level L and its publisher's shard K: `ds:m:{L/K}`. A filter with a
//!   literal first level reads only the streams of that level; one starting
//!   with a wildcard reads the streams of every level (`ds:levels`). Messages
//!   of one publisher on one topic share a stream, so they keep their order.
//! - **Appends.** One script per stream and `persist` call appends its
//!   messages as one entry, trims what is older than the retention
//!   (`MINID ~`, whole nodes: cheap) and publishes the new last id.
//! - **Positions.** An iterator's cursor is an entry id (`ms-seq`) and how
//!   many of that entry's messages it read. Redis gives an entry an id
//!   greater than every id the stream ever held: every message appended sorts
//!   after every cursor, so an iterator misses nothing.
//! - **Retention.** Besides the trimming of appends, a sweeper on every
//!   client trims exactly, also streams nobody appends to any more.
//! - **Watch.** Each client listens on `ds:appends` on one connection and
//!   wakes the watchers of those streams whose position an append passed.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use redis::Value;

use crate::connection::scripts::Lua;
use crate::connection::{Backend, Client};
use crate::error::{stored_int, Error, Result};
use crate::store::keys::{ClientKeys, Keys};
use crate::store::mirror::{self, shard_of, Mirror, Table};
use crate::store::tails::Tails;
use crate::store::topic;

static SUBSCRIBE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(&[include_str!("lua/ds_subscribe.lua")]));
static HOLD: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[include_str!("lua/ds_hold.lua")]));
static APPEND: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[include_str!("lua/ds_append.lua")]));

/// Shards of the durable filter table.
pub const FILTER_SHARDS: u16 = 16;
/// The most messages one `next` looks at, and the most bytes it returns.
pub const MAX_SCAN: usize = 10_000;
pub const MAX_BYTES: usize = 8 << 20;

/// The durable filters: filter -> number of clients holding it.
pub static FILTERS: Table = Table {
    kind: "durable_filter",
    resync_event: "ds_filter_index_resync",
    shard_key: Keys::ds_filters,
    channel: Keys::ds_filter_events,
    check: check_filter,
    check_change: |filter, dest| dest.is_empty() && topic::validate_filter(filter).is_ok(),
    dests: |_| vec![&b""[..]],
    resyncs: None,
};

fn check_filter(filter: &[u8], count: &[u8]) -> Result<()> {
    if topic::validate_filter(filter).is_err() {
        return Err(Error::corrupt(
            "durable_filter",
            "a field that is not a filter",
        ));
    }
    match stored_int("durable_filter", "count", count)? {
        0 => Err(Error::corrupt("durable_filter", "count is 0")),
        _ => Ok(()),
    }
}

#[derive(Clone, Debug)]
pub struct DsConfig {
    /// Streams per first level: publishers are spread over them.
    pub stream_shards: u16,
    pub retention: Duration,
    /// How often the filter mirror compares its versions with Redis.
    pub sync_interval: Duration,
}

impl Default for DsConfig {
    fn default() -> Self {
        DsConfig {
            stream_shards: 4,
            retention: Duration::from_secs(86400),
            sync_interval: Duration::from_secs(5),
        }
    }
}

impl DsConfig {
    /// The oldest time (Unix ms, this node's clock) whose entries the
    /// retention keeps: what appends and the sweeper trim before, and
    /// reads no longer serve from memory.
    fn kept_since(&self) -> u64 {
        now_ms().saturating_sub(self.retention.as_millis() as u64)
    }
}

/// A stream: a first level and a publisher shard.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stream {
    pub level: Vec<u8>,
    pub shard: u16,
}

/// A position in a stream: the first entry id not yet read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub ms: u64,
    pub seq: u64,
}

impl Pos {
    pub(crate) fn parse(id: &[u8]) -> Option<Pos> {
        let text = std::str::from_utf8(id).ok()?;
        let (ms, seq) = text.split_once('-')?;
        let pos = Pos {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        };
        // `parse` takes a leading '+'; Redis writes none.
        (ms.bytes().all(|b| b.is_ascii_digit()) && seq.bytes().all(|b| b.is_ascii_digit()))
            .then_some(pos)
    }

    pub(crate) fn after(self) -> Pos {
        match self.seq.checked_add(1) {
            Some(seq) => Pos { ms: self.ms, seq },
            None => Pos {
                ms: self.ms + 1,
                seq: 0,
            },
        }
    }

    pub(crate) fn id(self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }
}

/// A first level as a stream holds it: no `/`, and a valid topic level.
pub fn is_level(level: &[u8]) -> bool {
    !level.contains(&b'/') && topic::validate_name(level).is_ok() || level.is_empty()
}

/// The first level of a topic name or filter.
pub fn first_level(topic: &[u8]) -> &[u8] {
    topic.split(|&b| b == b'/').next().unwrap_or_default()
}

/// What a client keeps for durable messages: the filter mirror, the levels
/// it has registered, and the watchers of its callers.
pub struct Durable {
    pub config: DsConfig,
    filters: Arc<Mirror>,
    levels: Arc<Mutex<HashSet<Vec<u8>>>>,
    watchers: Arc<Watchers>,
    /// The entries read lately, shared by this client's readers.
    tails: Tails,
    /// Bumped each time the appends listener (re)subscribed.
    listening: tokio::sync::watch::Receiver<u64>,
    /// Taken by the first call, which starts the background tasks.
    start: Mutex<Option<tokio::sync::watch::Sender<u64>>>,
}

impl Durable {
    pub fn new(config: DsConfig) -> Durable {
        let (subscribed, listening) = tokio::sync::watch::channel(0);
        Durable {
            config,
            filters: Arc::new(Mirror::new(&FILTERS, FILTER_SHARDS)),
            levels: Arc::new(Mutex::new(HashSet::new())),
            watchers: Arc::new(Watchers::default()),
            tails: Tails::default(),
            listening,
            start: Mutex::new(Some(subscribed)),
        }
    }

    /// Starts, on a client's first durable-messages call, the filter
    /// mirror, the sweeper and the appends listener; they end with the
    /// client. A client that never uses durable messages opens no
    /// connection for them. Call it on the runtime.
    pub fn start(&self, client: &Client) {
        let Some(subscribed) = self.start.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let backend = client.backend().clone();
        let keys = client.keys();
        tokio::spawn(mirror::sync(
            self.filters.clone(),
            backend.clone(),
            keys.clone(),
            self.config.sync_interval,
            backend.closed(),
        ));
        tokio::spawn(sweep(
            backend.clone(),
            keys.clone(),
            self.config.clone(),
            self.levels.clone(),
        ));
        tokio::spawn(listen(backend, keys, self.watchers.clone(), subscribed));
    }

    pub fn is_started(&self) -> bool {
        self.start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    pub fn filters(&self) -> &Mirror {
        &self.filters
    }

    fn stream_of(&self, topic: &[u8], from_hash: u32) -> Stream {
        Stream {
            level: first_level(topic).to_vec(),
            shard: (from_hash % self.config.stream_shards as u32) as u16,
        }
    }
}

pub enum Subscribed {
    Added,
    Present,
    TooMany,
}

fn filter_keys(keys: &Keys, filter: &[u8]) -> (u16, Vec<u8>, Vec<u8>) {
    let shard = shard_of(filter, FILTER_SHARDS);
    (
        shard,
        keys.ds_filters(shard),
        keys.ds_holders(shard, filter),
    )
}

/// Counts `client_id` in or out of the holders of `filter`; the holders now.
async fn hold(client: &Client, client_id: &[u8], filter: &[u8], add: bool) -> Result<i64> {
    let keys = &client.keys();
    let (shard, filters, holders) = filter_keys(keys, filter);
    client
        .write_eval(
            &HOLD,
            &[&filters, &holders],
            &[
                &keys.ds_filter_events(),
                shard.to_string().as_bytes(),
                filter,
                client_id,
                if add { b"+" } else { b"-" },
            ],
        )
        .await
}

/// Makes `filter` durable for `client_id`. The client's set first (it
/// holds the limit), the count of holders second: both are idempotent, so
/// a call that failed between them is completed by the next.
pub async fn subscribe(
    client: &Client,
    ds: &Durable,
    client_id: &[u8],
    filter: &[u8],
    max: u32,
) -> Result<Subscribed> {
    let added: i64 = client
        .write_eval(
            &SUBSCRIBE,
            &[&client.keys().ds_subscriptions(client_id)],
            &[filter, max.to_string().as_bytes()],
        )
        .await?;
    if added < 0 {
        return Ok(Subscribed::TooMany);
    }
    hold(client, client_id, filter, true).await?;
    ds.filters.preview(true, filter, b"");
    Ok(if added == 1 {
        Subscribed::Added
    } else {
        Subscribed::Present
    })
}

/// The reverse of `subscribe`, in the reverse order.
pub async fn unsubscribe(
    client: &Client,
    ds: &Durable,
    client_id: &[u8],
    filter: &[u8],
) -> Result<()> {
    if hold(client, client_id, filter, false).await? == 0 {
        ds.filters.preview(false, filter, b"");
    }
    let mut srem = redis::cmd("SREM");
    srem.arg(client.keys().ds_subscriptions(client_id))
        .arg(filter);
    client
        .write_query::<i64>(&srem)
        .await
        .map_err(|e| e.of("durable_subscription"))?;
    Ok(())
}

/// A client's durable filters, sorted.
pub async fn subscriptions(client: &Client, client_id: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut smembers = redis::cmd("SMEMBERS");
    smembers.arg(client.keys().ds_subscriptions(client_id));
    let filters: Vec<Vec<u8>> = client
        .query(&smembers)
        .await
        .map_err(|e| e.of("durable_subscription"))?;
    sorted_filters(
        filters,
        "durable_subscription",
        "a member that is not a filter",
    )
}

/// `filters` sorted, if each is a filter; else the data is corrupt.
fn sorted_filters(
    mut filters: Vec<Vec<u8>>,
    kind: &'static str,
    what: &'static str,
) -> Result<Vec<Vec<u8>>> {
    if filters.iter().any(|f| topic::validate_filter(f).is_err()) {
        return Err(Error::corrupt(kind, what));
    }
    filters.sort();
    Ok(filters)
}

/// Every durable filter some client holds, sorted.
pub async fn filters(client: &Client) -> Result<Vec<Vec<u8>>> {
    let keys = client.keys();
    let shards: Vec<Vec<Vec<u8>>> = client
        .for_slots(0..FILTER_SHARDS, |shard| {
            let mut hkeys = redis::cmd("HKEYS");
            hkeys.arg(keys.ds_filters(shard));
            hkeys
        })
        .await
        .map_err(|e| e.of("durable_filter"))?;
    let filters = shards
        .into_iter()
        .flatten()
        .filter(|field| field.as_slice() != b"\0v")
        .collect();
    sorted_filters(filters, "durable_filter", "a field that is not a filter")
}

/// The clients holding `filter` durable, sorted.
pub async fn holders(client: &Client, filter: &[u8]) -> Result<Vec<Vec<u8>>> {
    let (_, _, holders) = filter_keys(&client.keys(), filter);
    let mut smembers = redis::cmd("SMEMBERS");
    smembers.arg(holders);
    let mut ids: Vec<Vec<u8>> = client
        .query(&smembers)
        .await
        .map_err(|e| e.of("durable_filter"))?;
    ids.sort();
    Ok(ids)
}

/// A message to persist: its topic, its encoded body, and a hash of its
/// publisher (which picks the stream shard).
pub struct ToPersist {
    pub topic: Vec<u8>,
    pub body: Vec<u8>,
    pub from_hash: u32,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Stores the messages some durable filter matches, once each, in their
/// order per stream; returns how many were stored. While the mirror may be
/// stale every message is stored: a reader filters anyway, and nothing a
/// durable session wants is lost.
pub async fn persist(client: &Client, ds: &Durable, msgs: Vec<ToPersist>) -> Result<u64> {
    let mut by_stream: HashMap<Stream, Vec<ToPersist>> = HashMap::new();
    let mut persisted = 0;
    for msg in msgs {
        if ds.filters.any_match(&msg.topic) != Some(false) {
            persisted += 1;
            by_stream
                .entry(ds.stream_of(&msg.topic, msg.from_hash))
                .or_default()
                .push(msg);
        }
    }
    if by_stream.is_empty() {
        return Ok(0);
    }
    register_levels(client, ds, by_stream.keys()).await?;
    let keys = client.keys();
    let min_id = ds.config.kept_since().to_string();
    let channel = keys.ds_appends();
    let appends = by_stream.into_iter().map(|(stream, msgs)| {
        let key = keys.ds_stream(&stream.level, stream.shard);
        let shard = stream.shard.to_string();
        let entry = encode_entry(&msgs);
        let (min_id, channel) = (&min_id, &channel);
        async move {
            let args: [&[u8]; 5] = [
                channel,
                &stream.level,
                shard.as_bytes(),
                min_id.as_bytes(),
                &entry,
            ];
            let _last: Vec<u8> = client.write_eval(&APPEND, &[&key], &args).await?;
            Ok::<_, Error>(())
        }
    });
    futures::future::try_join_all(appends).await?;
    Ok(persisted)
}

/// Adds the first levels this client has not registered yet to
/// `ds:levels`, before their first message: a reader listing the streams
/// of a wildcard filter finds every stream that has data.
async fn register_levels<'a>(
    client: &Client,
    ds: &Durable,
    streams: impl Iterator<Item = &'a Stream>,
) -> Result<()> {
    let new: Vec<Vec<u8>> = {
        let known = ds.levels.lock().unwrap_or_else(|e| e.into_inner());
        let mut new: Vec<Vec<u8>> = streams
            .filter(|s| !known.contains(&s.level))
            .map(|s| s.level.clone())
            .collect();
        new.sort();
        new.dedup();
        new
    };
    if new.is_empty() {
        return Ok(());
    }
    let mut sadd = redis::cmd("SADD");
    sadd.arg(client.keys().ds_levels()).arg(&new);
    client
        .write_query::<i64>(&sadd)
        .await
        .map_err(|e| e.of("durable_levels"))?;
    ds.levels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(new);
    Ok(())
}

/// A stream entry: the messages of one `persist` call for one stream, in
/// their order, each as the topic's length (2 bytes, big-endian), the topic,
/// the body's length (4 bytes, big-endian) and the body. One entry per call
/// and stream: Redis appends, stores and returns a batch as one item.
fn encode_entry(msgs: &[ToPersist]) -> Vec<u8> {
    let size = msgs.iter().map(|m| 6 + m.topic.len() + m.body.len()).sum();
    let mut out = Vec::with_capacity(size);
    for m in msgs {
        out.extend_from_slice(&(m.topic.len() as u16).to_be_bytes());
        out.extend_from_slice(&m.topic);
        out.extend_from_slice(&(m.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&m.body);
    }
    out
}

/// Where the topic and the body of each message of an entry are, if it is
/// an entry we could have written to the stream of `level`: at least one
/// message, every topic a topic name of that first level.
fn decode_entry(entry: &[u8], level: &[u8]) -> Option<Vec<(Range<usize>, Range<usize>)>> {
    let mut found = Vec::new();
    let mut at = 0;
    while at < entry.len() {
        let topic_len = u16::from_be_bytes(entry.get(at..at + 2)?.try_into().ok()?) as usize;
        let topic = at + 2..at + 2 + topic_len;
        let len_at = topic.end;
        let body_len = u32::from_be_bytes(entry.get(len_at..len_at + 4)?.try_into().ok()?) as usize;
        let body = len_at + 4..len_at + 4 + body_len;
        let name = entry.get(topic.clone())?;
        entry.get(body.clone())?;
        if topic::validate_name(name).is_err() || first_level(name) != level {
            return None;
        }
        at = body.end;
        found.push((topic, body));
    }
    (!found.is_empty()).then_some(found)
}

/// What `ds_append.lua` publishes: `level \0 shard \0 ms-seq` (no topic
/// holds NUL) for the stream it appended to.
fn decode_append(payload: &[u8]) -> Option<(Stream, Pos)> {
    let mut parts = payload.splitn(3, |&b| b == 0);
    let (level, shard, id) = (parts.next()?, parts.next()?, parts.next()?);
    if !is_level(level) {
        return None;
    }
    let stream = Stream {
        level: level.to_vec(),
        shard: std::str::from_utf8(shard).ok()?.parse().ok()?,
    };
    Some((stream, Pos::parse(id)?))
}

/// The streams that can hold messages matching `filter` (a valid filter).
pub async fn streams(client: &Client, ds: &Durable, filter: &[u8]) -> Result<Vec<Stream>> {
    let first = first_level(filter);
    let levels = if first != b"+" && first != b"#" {
        vec![first.to_vec()]
    } else {
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(client.keys().ds_levels());
        let levels: Vec<Vec<u8>> = client
            .query(&smembers)
            .await
            .map_err(|e| e.of("durable_levels"))?;
        if !levels.iter().all(|l| is_level(l)) {
            return Err(Error::corrupt(
                "durable_levels",
                "a member that is not a first level",
            ));
        }
        // A filter starting with a wildcard matches no `$` topic (MQTT 4.7.2).
        let mut levels: Vec<Vec<u8>> = levels
            .into_iter()
            .filter(|l| l.first() != Some(&b'$'))
            .collect();
        levels.sort();
        levels
    };
    Ok(levels
        .into_iter()
        .flat_map(|level| {
            (0..ds.config.stream_shards).map(move |shard| Stream {
                level: level.clone(),
                shard,
            })
        })
        .collect())
}

/// Where an iterator is: the id of the next entry to read, and how many of
/// its messages were read already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub id: Pos,
    pub skip: u32,
}

/// What one `next` read: the matching messages (slices of the entries
/// read), where to go on from, and how many messages it looked at.
pub struct Batch {
    pub next: Cursor,
    entries: Vec<Arc<Vec<u8>>>,
    found: Vec<(usize, Range<usize>, Range<usize>)>,
    /// Messages read, matching or not: the read amplification is
    /// `scanned` over the messages returned.
    pub scanned: usize,
}

impl Batch {
    /// Each matching message, in append order: the index of its entry
    /// (`entry`), its topic, and where its body lies in that entry.
    pub fn messages(&self) -> impl Iterator<Item = (usize, &[u8], Range<usize>)> {
        self.found
            .iter()
            .map(|(e, topic, body)| (*e, &self.entries[*e][topic.clone()], body.clone()))
    }

    /// The `i`-th stream entry read, as Redis sent it.
    pub fn entry(&self, i: usize) -> &[u8] {
        &self.entries[i]
    }
}

/// Up to `n` messages matching `filter`, from `from` on, in append order.
/// Looks at most at `MAX_SCAN` messages and returns at most about
/// `MAX_BYTES`; the cursor returned is after the last message looked at. A
/// position behind what retention trimmed goes on with the oldest entry kept.
pub async fn next(
    client: &Client,
    ds: &Durable,
    stream: &Stream,
    filter: &[u8],
    from: Cursor,
    n: usize,
) -> Result<Batch> {
    let key = client.keys().ds_stream(&stream.level, stream.shard);
    let mut batch = Batch {
        next: from,
        entries: Vec::new(),
        found: Vec::new(),
        scanned: 0,
    };
    let (mut bytes, mut entries_read) = (0, 0);
    let full = |batch: &Batch, bytes: usize| {
        batch.found.len() == n || bytes >= MAX_BYTES || batch.scanned >= MAX_SCAN
    };
    let oldest = Pos {
        ms: ds.config.kept_since(),
        seq: 0,
    };
    // Entries hold a persist call's messages each: ask for as many as the
    // entries read so far say are needed.
    let mut count = (n / 100).clamp(1, 10);
    loop {
        let (read, all) = ds
            .tails
            .read(client, &key, batch.next.id, count, oldest)
            .await?;
        for (pos, entry) in read {
            let messages = decode_entry(&entry, &stream.level)
                .ok_or_else(|| Error::corrupt("durable_stream", "an entry we did not write"))?;
            let skip = if pos == batch.next.id {
                batch.next.skip as usize
            } else {
                0
            };
            let (index, found_before) = (batch.entries.len(), batch.found.len());
            entries_read += 1;
            let mut stopped_at = None;
            for (k, (topic, body)) in messages.iter().enumerate().skip(skip) {
                if full(&batch, bytes) {
                    stopped_at = Some(k as u32);
                    break;
                }
                batch.scanned += 1;
                if topic::matches(&entry[topic.clone()], filter) {
                    bytes += topic.len() + body.len();
                    batch.found.push((index, topic.clone(), body.clone()));
                }
            }
            // Only the entries messages are returned from are kept.
            if batch.found.len() > found_before {
                batch.entries.push(entry);
            }
            if let Some(skip) = stopped_at {
                batch.next = Cursor { id: pos, skip };
                return Ok(batch);
            }
            batch.next = Cursor {
                id: pos.after(),
                skip: 0,
            };
        }
        if all || full(&batch, bytes) {
            return Ok(batch);
        }
        let per_entry = (batch.scanned / entries_read.max(1)).max(1);
        count = (n - batch.found.len()).div_ceil(per_entry).clamp(1, 1000);
    }
}

/// The id of the newest entry of a stream, if it has any.
async fn last_pos(client: &Client, stream: &Stream) -> Result<Option<Pos>> {
    let mut xrevrange = redis::cmd("XREVRANGE");
    xrevrange
        .arg(client.keys().ds_stream(&stream.level, stream.shard))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1);
    let last: Vec<(Vec<u8>, Value)> = client
        .query(&xrevrange)
        .await
        .map_err(|e| e.of("durable_stream"))?;
    last.first()
        .map(|(id, _)| {
            Pos::parse(id)
                .ok_or_else(|| Error::corrupt("durable_stream", "an entry id we did not get"))
        })
        .transpose()
}

/// Trims every stream to the retention, now and then: also streams nobody
/// appends to any more, which no append trims. Registers again the levels
/// this client has registered, in case Redis lost them (a restart without
/// persistence): readers of wildcard filters find their streams through them.
async fn sweep(
    backend: Backend,
    keys: Keys,
    config: DsConfig,
    levels: Arc<Mutex<HashSet<Vec<u8>>>>,
) {
    let every = (config.retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut shutdown = backend.closed();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = trim(&backend, &keys, &config, &levels).await {
            tracing::debug!(error = %e, "ds_sweep_failed");
        }
    }
}

async fn trim(
    backend: &Backend,
    keys: &Keys,
    config: &DsConfig,
    known: &Mutex<HashSet<Vec<u8>>>,
) -> Result<()> {
    let known: Vec<Vec<u8>> = known
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    if !known.is_empty() {
        let mut sadd = redis::cmd("SADD");
        sadd.arg(keys.ds_levels()).arg(known);
        backend.query::<i64>(&sadd).await?;
    }
    let mut smembers = redis::cmd("SMEMBERS");
    smembers.arg(keys.ds_levels());
    let levels: Vec<Vec<u8>> = backend.query(&smembers).await?;
    let min_id = config.kept_since();
    let cmds = levels
        .iter()
        .flat_map(|level| {
            (0..config.stream_shards).map(move |shard| {
                let mut xtrim = redis::cmd("XTRIM");
                xtrim
                    .arg(keys.ds_stream(level, shard))
                    .arg("MINID")
                    .arg(min_id);
                xtrim
            })
        })
        .collect();
    backend.each::<Value>(cmds).await?;
    Ok(())
}

/// A caller waiting for data after a position of a stream; `notify` is
/// called once, then the watcher is gone.
struct Watcher {
    from: Pos,
    notify: Box<dyn FnOnce() + Send>,
}

/// The watchers by stream, then by watch key, and the stream of each key.
#[derive(Default)]
struct Watching {
    by_stream: HashMap<Stream, HashMap<Vec<u8>, Watcher>>,
    stream_of: HashMap<Vec<u8>, Stream>,
}

impl Watching {
    fn take(&mut self, key: &[u8]) -> Option<Watcher> {
        let stream = self.stream_of.remove(key)?;
        let watchers = self.by_stream.get_mut(&stream)?;
        let watcher = watchers.remove(key);
        if watchers.is_empty() {
            self.by_stream.remove(&stream);
        }
        watcher
    }
}

#[derive(Default)]
struct Watchers(Mutex<Watching>);

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watching> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, stream: Stream, key: Vec<u8>, watcher: Watcher) {
        let mut watching = self.lock();
        watching.stream_of.insert(key.clone(), stream.clone());
        watching
            .by_stream
            .entry(stream)
            .or_default()
            .insert(key, watcher);
    }

    fn remove(&self, key: &[u8]) -> Option<Watcher> {
        self.lock().take(key)
    }

    /// Takes out the watchers `pick` names and wakes them, outside the lock.
    fn wake(&self, pick: impl FnOnce(&Watching) -> Vec<Vec<u8>>) {
        let woken: Vec<Watcher> = {
            let mut watching = self.lock();
            let keys = pick(&watching);
            keys.iter().filter_map(|key| watching.take(key)).collect()
        };
        for watcher in woken {
            (watcher.notify)();
        }
    }

    /// Wakes the watchers of `stream` that `last` passed.
    fn appended(&self, stream: &Stream, last: Pos) {
        self.wake(|watching| {
            watching
                .by_stream
                .get(stream)
                .map_or_else(Vec::new, |watchers| {
                    watchers
                        .iter()
                        .filter(|(_, w)| w.from <= last)
                        .map(|(key, _)| key.clone())
                        .collect()
                })
        });
    }

    /// Wakes every watcher: after a gap in the appends, any may have data.
    fn all(&self) {
        self.wake(|watching| watching.stream_of.keys().cloned().collect());
    }
}

/// Calls `notify` once as soon as `stream` holds an entry at or after
/// `from`, appended by any client; `key` names the watch for `unwatch`.
/// Before it returns, the watch is registered and the stream checked, so
/// nothing appended after the call can go unseen.
pub async fn watch(
    client: &Client,
    ds: &Durable,
    stream: Stream,
    from: Pos,
    key: Vec<u8>,
    notify: Box<dyn FnOnce() + Send>,
) -> Result<()> {
    // Registered before the check: an append after the check reaches the
    // listener, which wakes it; one before is seen by the check. While the
    // listener is not subscribed, its next subscription wakes everyone.
    let mut listening = ds.listening.clone();
    if *listening.borrow() == 0 {
        let timeout = client.backend().config().connect_timeout;
        let _ = tokio::time::timeout(timeout, listening.changed()).await;
    }
    ds.watchers
        .add(stream.clone(), key.clone(), Watcher { from, notify });
    match last_pos(client, &stream).await {
        Ok(Some(last)) if last >= from => {
            ds.watchers.wake(|_| vec![key]);
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            ds.watchers.remove(&key);
            Err(e)
        }
    }
}

pub fn unwatch(ds: &Durable, key: &[u8]) {
    ds.watchers.remove(key);
}

/// Follows `ds:appends` on one connection per client, waking watchers.
async fn listen(
    backend: Backend,
    keys: Keys,
    watchers: Arc<Watchers>,
    subscribed: tokio::sync::watch::Sender<u64>,
) {
    let mut shutdown = backend.closed();
    let mut attempt = 0;
    loop {
        tokio::select! {
            r = follow_appends(&backend, &keys, &watchers, &subscribed, attempt) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "ds_appends_listener_lost");
                }
            }
            _ = shutdown.changed() => return,
        }
        attempt += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn follow_appends(
    backend: &Backend,
    keys: &Keys,
    watchers: &Watchers,
    subscribed: &tokio::sync::watch::Sender<u64>,
    attempt: usize,
) -> Result<()> {
    let timeout = backend.config().connect_timeout;
    let mut pubsub = backend.pubsub(attempt).await?;
    tokio::time::timeout(timeout, pubsub.subscribe(keys.ds_appends()))
        .await
        .map_err(|_| Error::Timeout)??;
    let (mut sink, mut stream) = pubsub.split();
    // Appends while we were not subscribed went unseen: wake everyone.
    subscribed.send_modify(|n| *n += 1);
    watchers.all();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Err(Error::Connection("ds appends connection closed".into()));
                };
                match decode_append(msg.get_payload_bytes()) {
                    Some((stream, last)) => watchers.appended(&stream, last),
                    None => watchers.all(),
                }
            }
            _ = tick.tick() => {
                tokio::time::timeout(timeout, sink.ping::<Value>())
                    .await
                    .map_err(|_| Error::Timeout)??;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_strictly_and_order() {
        assert_eq!(Pos::parse(b"12-3"), Some(Pos { ms: 12, seq: 3 }));
        for bad in [
            &b"12"[..],
            b"-3",
            b"12-",
            b"+1-2",
            b"1-+2",
            b"a-1",
            b"1-2-3",
        ] {
            assert_eq!(Pos::parse(bad), None, "{bad:?}");
        }
        assert!(Pos { ms: 1, seq: 9 } < Pos { ms: 2, seq: 0 });
        assert_eq!(Pos { ms: 1, seq: 9 }.after(), Pos { ms: 1, seq: 10 });
        assert_eq!(
            Pos {
                ms: 1,
                seq: u64::MAX
            }
            .after(),
            Pos { ms: 2, seq: 0 }
        );
        assert_eq!(Pos { ms: 5, seq: 0 }.id(), "5-0");
    }

    #[test]
    fn appends_round_trip() {
        let stream = Stream {
            level: b"sensors".to_vec(),
            shard: 3,
        };
        assert_eq!(
            decode_append(b"sensors\x003\x0010-2"),
            Some((stream, Pos { ms: 10, seq: 2 }))
        );
        assert!(decode_append(b"\x000\x0011-0").is_some(), "the empty level");
        assert_eq!(decode_append(b"a\x001"), None);
        assert_eq!(decode_append(b"a/b\x001\x001-1"), None, "not a first level");
        assert_eq!(decode_append(b"a\x00x\x001-1"), None);
        assert_eq!(decode_append(b"a\x001\x001-1\x00b"), None, "more than one");
    }

    #[test]
    fn entries_round_trip() {
        let msg = |t: &str, b: &str| ToPersist {
            topic: t.into(),
            body: b.into(),
            from_hash: 0,
        };
        let e = encode_entry(&[msg("a/b", "one"), msg("a", "")]);
        assert_eq!(&e[..9], b"\x00\x03a/b\x00\x00\x00\x03");
        let found = decode_entry(&e, b"a").unwrap();
        let got: Vec<(&[u8], &[u8])> = found
            .iter()
            .map(|(t, b)| (&e[t.clone()], &e[b.clone()]))
            .collect();
        assert_eq!(got, vec![(&b"a/b"[..], &b"one"[..]), (&b"a"[..], &b""[..])]);
        assert_eq!(decode_entry(&e, b"b"), None, "another stream's level");
        assert_eq!(decode_entry(b"", b"a"), None, "no message");
        assert_eq!(decode_entry(&encode_entry(&[msg("a/+", "x")]), b"a"), None);
        assert_eq!(decode_entry(&e[..e.len() - 1], b"a"), None, "cut short");
        assert_eq!(decode_entry(b"\x00", b"a"), None);
    }

    #[test]
    fn levels() {
        assert_eq!(first_level(b"sensors/1/temp"), b"sensors");
        assert_eq!(first_level(b"/a"), b"");
        assert_eq!(first_level(b"#"), b"#");
        assert!(is_level(b"sensors"));
        assert!(is_level(b""));
        assert!(!is_level(b"a/b"));
        assert!(!is_level(b"+"));
        assert!(!is_level(b"a\0b"));
    }

    #[test]
    fn stored_filters_are_checked() {
        assert!(check_filter(b"a/+", b"3").is_ok());
        assert!(check_filter(b"a/#/b", b"3").is_err());
        assert!(check_filter(b"a", b"0").is_err());
        assert!(check_filter(b"a", b"x").is_err());
    }
}
