//! The entries of each durable stream read lately, kept by a client for its
//! readers. When a node dies, its sessions resume together on the others,
//! and each reads the same stretch of the same streams from about the same
//! position: each stretch is read from Redis once and shared, instead of
//! once per session (which made a burst of 1,000 resumes take seconds).
//!
//! A stream's tail is a range `[start, end)` of entry ids of which every
//! entry is held: entries are appended with ids above every id the stream
//! ever held and never change, so what was read once stays right. A read
//! inside the range is served from it; a read behind it (or of a stream
//! without one) reads Redis, one reader at a time per stream, the others
//! waiting to find the range filled; a read at or after its end reads Redis
//! and extends it. Entries older than the retention are not served (Redis
//! trims them); a tail holds at most `MAX_TAIL_BYTES`, oldest dropped first,
//! and a tail not read for `IDLE` is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::connection::Client;
use crate::error::{Error, Result};
use crate::store::ds::Pos;

/// The most bytes of entries one stream's tail holds, and all tails.
const MAX_TAIL_BYTES: usize = 8 << 20;
const MAX_BYTES: usize = 64 << 20;
/// A tail not read (nor extended) for this long is dropped.
const IDLE: Duration = Duration::from_secs(10);
/// Entries a reader behind a tail asks Redis for at once (the others
/// wait); fewer when, by the size of the entries the tail holds, that many
/// would be more than a quarter of `MAX_TAIL_BYTES`: a fill of large
/// entries that the bound drops again at once would leave the next reader
/// behind, and so on.
const FILL: usize = 1000;

/// An entry: its id and its one field's value (a persist call's messages).
pub type Entry = (Pos, Arc<Vec<u8>>);

struct Tail {
    start: Pos,
    end: Pos,
    entries: VecDeque<Entry>,
    bytes: usize,
    read_at: Instant,
}

impl Tail {
    /// Up to `count` entries from `from` on, if `from` is inside the range
    /// and some entry at or after it is held; none older than `oldest`.
    fn serve(&mut self, from: Pos, count: usize, oldest: Pos) -> Option<Vec<Entry>> {
        if from < self.start || from >= self.end {
            return None;
        }
        let from = from.max(oldest);
        let first = self.entries.partition_point(|(id, _)| *id < from);
        let served: Vec<Entry> = self.entries.range(first..).take(count).cloned().collect();
        self.read_at = Instant::now();
        (!served.is_empty()).then_some(served)
    }

    fn push_back(&mut self, entries: &[Entry]) {
        for (id, value) in entries {
            if *id >= self.end {
                self.bytes += value.len();
                self.entries.push_back((*id, value.clone()));
                self.end = id.after();
            }
        }
        self.shrink();
    }

    /// Drops the oldest entries over the size bound.
    fn shrink(&mut self) {
        while self.bytes > MAX_TAIL_BYTES {
            match self.entries.pop_front() {
                Some((id, value)) => {
                    self.bytes -= value.len();
                    self.start = id.after();
                }
                None => break,
            }
        }
    }
}

#[derive(Default)]
pub struct Tails {
    held: Mutex<Held>,
    /// One reader at a time fills a stream's tail from behind.
    filling: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
}

/// The tails, and the bytes they hold in all (kept as they change: no sum
/// over every tail per read).
#[derive(Default)]
struct Held {
    tails: HashMap<Vec<u8>, Tail>,
    bytes: usize,
}

impl Held {
    /// The stream's tail, unless it was not read for `IDLE` (then dropped).
    fn live(&mut self, key: &[u8]) -> Option<&mut Tail> {
        if self
            .tails
            .get(key)
            .is_some_and(|tail| tail.read_at.elapsed() >= IDLE)
        {
            self.remove(key);
        }
        self.tails.get_mut(key)
    }

    fn remove(&mut self, key: &[u8]) -> Option<Tail> {
        let tail = self.tails.remove(key)?;
        self.bytes -= tail.bytes;
        Some(tail)
    }

    /// Counts what `change` does to the tail's size.
    fn resize(&mut self, key: &[u8], change: impl FnOnce(&mut Tail)) {
        if let Some(tail) = self.tails.get_mut(key) {
            let before = tail.bytes;
            change(tail);
            self.bytes = self.bytes - before + tail.bytes;
        }
    }

    /// While all tails hold more than `MAX_BYTES`: drops those not read for
    /// `IDLE`, then the least lately read ones, but `keep`.
    fn bound(&mut self, keep: &[u8]) {
        if self.bytes <= MAX_BYTES {
            return;
        }
        let idle: Vec<Vec<u8>> = self
            .tails
            .iter()
            .filter(|(key, tail)| key.as_slice() != keep && tail.read_at.elapsed() >= IDLE)
            .map(|(key, _)| key.clone())
            .collect();
        for key in idle {
            self.remove(&key);
        }
        while self.bytes > MAX_BYTES {
            let Some(oldest) = self
                .tails
                .iter()
                .filter(|(key, _)| key.as_slice() != keep)
                .min_by_key(|(_, tail)| tail.read_at)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
    }
}

impl Tails {
    /// Entries of the stream at `key` from `from` on, none older than
    /// `oldest` (at least one if the stream has any; at most about `count`
    /// from Redis, any number from the tail), and whether they are all the
    /// stream had (Redis gave fewer than asked).
    pub async fn read(
        &self,
        client: &Client,
        key: &[u8],
        from: Pos,
        count: usize,
        oldest: Pos,
    ) -> Result<(Vec<Entry>, bool)> {
        if let Some(held) = self.serve(key, from, count, oldest) {
            return Ok((held, false));
        }
        if self.behind(key, from) {
            let lock = self.fill_lock(key);
            let _filling = lock.lock().await;
            if let Some(held) = self.serve(key, from, count, oldest) {
                return Ok((held, false));
            }
            let asked = count.max(self.fill_count(key));
            let read = xrange(client, key, from, asked).await?;
            self.fill(key, from, &read, asked);
            let all = read.len() < asked;
            return Ok((read, all));
        }
        let read = xrange(client, key, from, count).await?;
        self.extend(key, from, &read);
        let all = read.len() < count;
        Ok((read, all))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(&self, key: &[u8], from: Pos, count: usize, oldest: Pos) -> Option<Vec<Entry>> {
        self.held().live(key)?.serve(from, count, oldest)
    }

    /// Whether a read from `from` is behind the stream's tail (or the
    /// stream has none): such reads fill it.
    fn behind(&self, key: &[u8], from: Pos) -> bool {
        self.held().live(key).is_none_or(|tail| from < tail.start)
    }

    /// How many entries a fill asks for (see `FILL`).
    fn fill_count(&self, key: &[u8]) -> usize {
        let held = self.held();
        match held.tails.get(key) {
            Some(tail) if !tail.entries.is_empty() => {
                let entry_bytes = (tail.bytes / tail.entries.len()).max(1);
                (MAX_TAIL_BYTES / 4 / entry_bytes).clamp(1, FILL)
            }
            _ => FILL,
        }
    }

    fn fill_lock(&self, key: &[u8]) -> Arc<tokio::sync::Mutex<()>> {
        let mut filling = self.filling.lock().unwrap_or_else(|e| e.into_inner());
        filling.entry(key.to_vec()).or_default().clone()
    }

    /// Read from `from` behind the tail: the range grows back to `from`
    /// when the read reached the tail (or the stream's end), and is
    /// replaced by what was read otherwise.
    fn fill(&self, key: &[u8], from: Pos, read: &[Entry], asked: usize) {
        let Some((last, _)) = read.last() else {
            return;
        };
        let mut held = self.held();
        let mut tail = Tail {
            start: from,
            end: from,
            entries: VecDeque::new(),
            bytes: 0,
            read_at: Instant::now(),
        };
        tail.push_back(read);
        let reached_end = read.len() < asked;
        if let Some(old) = held.remove(key) {
            if reached_end || *last >= old.start {
                let newer: Vec<Entry> = old
                    .entries
                    .into_iter()
                    .filter(|(id, _)| id > last)
                    .collect();
                tail.push_back(&newer);
                tail.end = tail.end.max(old.end);
            }
        }
        held.bytes += tail.bytes;
        held.tails.insert(key.to_vec(), tail);
        held.bound(key);
    }

    /// Read from `from`, at or after the tail's start: what is new extends
    /// it if the read began inside it.
    fn extend(&self, key: &[u8], from: Pos, read: &[Entry]) {
        if read.is_empty() {
            return;
        }
        let mut held = self.held();
        if held.live(key).is_some_and(|tail| from <= tail.end) {
            held.resize(key, |tail| {
                tail.push_back(read);
                tail.read_at = Instant::now();
            });
            held.bound(key);
        }
    }
}

/// Up to `count` entries of the stream at `key` from `from` on.
async fn xrange(client: &Client, key: &[u8], from: Pos, count: usize) -> Result<Vec<Entry>> {
    let mut xrange = redis::cmd("XRANGE");
    xrange
        .arg(key)
        .arg(from.id())
        .arg("+")
        .arg("COUNT")
        .arg(count);
    let replies: Vec<(Vec<u8>, Vec<Vec<u8>>)> = client
        .query(&xrange)
        .await
        .map_err(|e| e.of("durable_stream"))?;
    replies
        .into_iter()
        .map(|(id, fields)| {
            let pos = Pos::parse(&id)
                .ok_or_else(|| Error::corrupt("durable_stream", "an entry id we did not get"))?;
            match <[Vec<u8>; 2]>::try_from(fields) {
                Ok([m, value]) if m == b"m" => Ok((pos, Arc::new(value))),
                _ => Err(Error::corrupt(
                    "durable_stream",
                    "an entry we did not write",
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u64, size: usize) -> Vec<Entry> {
        let value = Arc::new(vec![0u8; size]);
        (1..=n)
            .map(|ms| (Pos { ms, seq: 0 }, value.clone()))
            .collect()
    }

    /// A stream of small entries is filled 1,000 entries at a time; one of
    /// large entries by as many as a quarter of a tail's bound holds, so
    /// that the bound does not drop a fill at once.
    #[test]
    fn fills_of_large_entries_fit_the_bound() {
        let tails = Tails::default();
        let start = Pos { ms: 1, seq: 0 };
        assert_eq!(tails.fill_count(b"none"), FILL);
        tails.fill(b"small", start, &entries(10, 200), 10);
        assert_eq!(tails.fill_count(b"small"), FILL);
        tails.fill(b"large", start, &entries(10, 16 << 10), 10);
        assert_eq!(tails.fill_count(b"large"), MAX_TAIL_BYTES / 4 / (16 << 10));
        tails.fill(b"huge", start, &entries(2, 4 << 20), 2);
        assert_eq!(tails.fill_count(b"huge"), 1);
    }
}
