//! Rate limits shared by every node: a token bucket per limiter and key in
//! Redis (`lua/limiter_take.lua`), on Redis's clock only.
//!
//! A limiter with a `batch` lets a node take up to `batch` tokens ahead
//! for a key and spend them without a round trip. Every token admitted was
//! taken from the Redis bucket, so over any run the cluster admits no more
//! than one bucket would (burst + rate × time); but a token may be spent up
//! to [`BATCH_MAX_AGE`] after it was taken, so within any window the
//! cluster admits at most one batch per node more than one bucket would in
//! that window. A node holds at most one batch per key: while one caller
//! fetches a batch, the others that find it empty take exactly their cost
//! from Redis.
//!
//! When Redis does not answer (the breaker is open, a timeout, overload, an
//! error reply) the limiter decides by its `on_redis_down` policy, counts
//! it and logs it (rate-bounded by the log forwarder).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::connection::scripts::Lua;
use crate::connection::Client;
use crate::error::{Error, Result};
use crate::metrics::fnv1a;
use crate::store::keys::ClientKeys;

static TAKE: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[include_str!("lua/limiter_take.lua")]));

/// Tokens of a local batch are dropped this long after they were taken.
pub const BATCH_MAX_AGE: Duration = Duration::from_secs(1);

/// How long a caller denied while Redis is down is told to wait: by then
/// the breaker has probed Redis several times.
pub const DOWN_RETRY_MS: u64 = 1000;

/// Shards of a limiter's local batches: callers of different keys rarely
/// wait for each other.
const SHARDS: usize = 16;

/// A limiter's definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Tokens per second.
    pub rate: u64,
    /// The most tokens a bucket holds.
    pub burst: u64,
    /// Tokens a node takes ahead for a key; 0 for none.
    pub batch: u64,
    /// What a check gets when Redis does not answer: allowed, or limited.
    pub allow_when_down: bool,
}

/// A check's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; about this many tokens are left for the key.
    Allowed(u64),
    /// Not admitted; `cost` tokens are there again after this many ms.
    Limited(u64),
}

/// What a limiter counted.
#[derive(Default)]
struct Counters {
    checks: AtomicU64,
    limited: AtomicU64,
    errors: AtomicU64,
    local: AtomicU64,
}

/// A limiter's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Checks answered (bad arguments aside).
    pub checks: u64,
    /// Checks the bucket refused.
    pub limited: u64,
    /// Checks Redis did not answer, decided by `on_redis_down`.
    pub errors: u64,
    /// Checks answered from a local batch, without Redis.
    pub local: u64,
}

/// The limiters of one client, by name.
#[derive(Default)]
pub struct Limiters {
    by_name: RwLock<HashMap<Vec<u8>, Arc<Limiter>>>,
}

impl Limiters {
    /// Defines `name`, or changes its limit: its counters stay, its local
    /// batches are dropped, its buckets in Redis keep their tokens.
    pub fn define(&self, name: &[u8], limit: Limit) {
        let mut by_name = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        let counters = by_name
            .get(name)
            .map_or_else(Arc::default, |old| old.counters.clone());
        let limiter = Limiter {
            name: name.to_vec(),
            limit,
            counters,
            batches: Default::default(),
        };
        by_name.insert(name.to_vec(), Arc::new(limiter));
    }

    pub fn get(&self, name: &[u8]) -> Option<Arc<Limiter>> {
        let by_name = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        by_name.get(name).cloned()
    }

    /// Every limiter's name and counts.
    pub fn counts(&self) -> Vec<(Vec<u8>, Counts)> {
        let by_name = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        by_name
            .iter()
            .map(|(name, limiter)| (name.clone(), limiter.counts()))
            .collect()
    }
}

pub struct Limiter {
    name: Vec<u8>,
    limit: Limit,
    counters: Arc<Counters>,
    batches: [Mutex<Batches>; SHARDS],
}

/// What the local part of a check found.
pub enum Local {
    /// The cost is more than a bucket holds (`burst`): never admitted.
    TooCostly { burst: u64 },
    /// Answered from the local batch.
    Answered(Decision),
    /// Redis must be asked for `want` tokens (`cost` of them at least).
    Ask(Ask),
}

/// A request for tokens; with a claim, it refills the key's local batch.
pub struct Ask {
    want: u64,
    refill: Option<Refill>,
}

/// The right to refill one key's batch; released when dropped, whatever
/// became of the request.
struct Refill {
    limiter: Arc<Limiter>,
    key: Vec<u8>,
}

impl Drop for Refill {
    fn drop(&mut self) {
        if let Some(batch) = self.limiter.shard(&self.key).map.get_mut(&self.key) {
            batch.refilling = false;
        }
    }
}

impl Limiter {
    fn counts(&self) -> Counts {
        let c = &self.counters;
        Counts {
            checks: c.checks.load(Relaxed),
            limited: c.limited.load(Relaxed),
            errors: c.errors.load(Relaxed),
            local: c.local.load(Relaxed),
        }
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Batches> {
        let shard = &self.batches[fnv1a(key) as usize % SHARDS];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The part of a check that needs no Redis: `cost` tokens from this
    /// node's batch for `key` if it holds them, else what to ask Redis for.
    /// A cost of 0 (a look at the bucket) always asks Redis.
    pub fn check_local(self: &Arc<Self>, key: &[u8], cost: u64) -> Local {
        let Limit { burst, batch, .. } = self.limit;
        if cost > burst {
            return Local::TooCostly { burst };
        }
        if batch == 0 || cost == 0 {
            return Local::Ask(Ask {
                want: cost,
                refill: None,
            });
        }
        let now = Instant::now();
        let mut shard = self.shard(key);
        match shard.take(key, cost, batch, now) {
            Taken::Local(remaining) => {
                self.counters.checks.fetch_add(1, Relaxed);
                self.counters.local.fetch_add(1, Relaxed);
                Local::Answered(Decision::Allowed(remaining))
            }
            Taken::Ask(want) => Local::Ask(Ask { want, refill: None }),
            Taken::Refill(want) => Local::Ask(Ask {
                want,
                refill: Some(Refill {
                    limiter: self.clone(),
                    key: key.to_vec(),
                }),
            }),
        }
    }

    /// The rest of a check: `ask` of Redis. Never fails: when Redis does
    /// not answer, the limiter's policy decides.
    pub async fn check_redis(&self, client: &Client, key: &[u8], cost: u64, ask: Ask) -> Decision {
        let Limit { rate, burst, .. } = self.limit;
        let args = [rate, burst, cost, ask.want].map(|n| n.to_string().into_bytes());
        let bucket = client.keys().limiter(&self.name, key);
        let reply = client
            .grouped_write_eval::<(u64, u64, u64)>(&TAKE, vec![bucket], args.to_vec())
            .await
            .map_err(|e| e.of("limiter"));
        match reply {
            // Limited, the bucket needs time: allowed, it needs none.
            Ok((taken, left, 0)) => {
                self.counters.checks.fetch_add(1, Relaxed);
                let kept = match &ask.refill {
                    Some(refill) => {
                        let mut shard = self.shard(&refill.key);
                        shard.refilled(
                            &refill.key,
                            taken.saturating_sub(cost),
                            left,
                            Instant::now(),
                        )
                    }
                    None => 0,
                };
                Decision::Allowed(left + kept)
            }
            Ok((_, _, retry_ms)) => {
                self.counters.checks.fetch_add(1, Relaxed);
                self.counters.limited.fetch_add(1, Relaxed);
                Decision::Limited(retry_ms)
            }
            Err(error) => self.unanswered(&error),
        }
    }

    /// The policy's answer to a check Redis did not answer, counted and
    /// logged.
    pub fn unanswered(&self, error: &Error) -> Decision {
        self.counters.checks.fetch_add(1, Relaxed);
        self.counters.errors.fetch_add(1, Relaxed);
        let allow = self.limit.allow_when_down;
        tracing::warn!(
            limiter = %self.name.escape_ascii(),
            error = Error::KINDS[error.kind_index()],
            reason = %error,
            decision = if allow { "allow" } else { "deny" },
            "limiter_unanswered"
        );
        if allow {
            Decision::Allowed(0)
        } else {
            Decision::Limited(DOWN_RETRY_MS)
        }
    }

    /// Gives `key` a full bucket again: in Redis, and this node's batch is
    /// dropped (other nodes keep theirs, at most a batch each).
    pub async fn reset(&self, client: &Client, key: &[u8]) -> Result<()> {
        self.shard(key).map.remove(key);
        let bucket = client.keys().limiter(&self.name, key);
        client
            .write_query::<()>(redis::cmd("DEL").arg(bucket))
            .await
    }
}

/// One key's tokens taken ahead.
#[derive(Debug)]
struct Batch {
    tokens: u64,
    /// What Redis said was left in the bucket when these were taken.
    left: u64,
    taken_at: Instant,
    /// A caller is fetching a new batch.
    refilling: bool,
}

/// What `Batches::take` decided.
#[derive(Debug, PartialEq, Eq)]
enum Taken {
    /// Spent from the batch; the tokens the node knows are left.
    Local(u64),
    /// Ask Redis for this many: another caller refills the batch.
    Ask(u64),
    /// Ask Redis for this many and refill the batch (`Batches::refilled`).
    Refill(u64),
}

/// The local batches of one shard of keys.
#[derive(Default)]
struct Batches {
    map: HashMap<Vec<u8>, Batch>,
    /// When the map reaches this size, the batches too old to spend go.
    sweep_at: usize,
}

impl Batches {
    fn take(&mut self, key: &[u8], cost: u64, batch: u64, now: Instant) -> Taken {
        if !self.map.contains_key(key) {
            self.sweep(now);
        }
        let entry = self.map.entry(key.to_vec()).or_insert(Batch {
            tokens: 0,
            left: 0,
            taken_at: now,
            refilling: false,
        });
        if now.duration_since(entry.taken_at) >= BATCH_MAX_AGE {
            entry.tokens = 0;
        }
        if entry.tokens >= cost {
            entry.tokens -= cost;
            return Taken::Local(entry.tokens + entry.left);
        }
        if entry.refilling {
            return Taken::Ask(cost);
        }
        entry.refilling = true;
        // What is kept after the cost is paid makes the batch whole again.
        Taken::Refill(cost + batch - entry.tokens)
    }

    /// A refill brought `extra` tokens beyond the cost; returns the tokens
    /// the batch holds now.
    fn refilled(&mut self, key: &[u8], extra: u64, left: u64, now: Instant) -> u64 {
        let entry = self.map.entry(key.to_vec()).or_insert(Batch {
            tokens: 0,
            left,
            taken_at: now,
            refilling: true,
        });
        if now.duration_since(entry.taken_at) >= BATCH_MAX_AGE {
            entry.tokens = 0;
        }
        entry.tokens += extra;
        entry.left = left;
        entry.taken_at = now;
        entry.tokens
    }

    /// Drops the batches too old to spend and not being refilled, once the
    /// map has doubled since the last sweep: amortised O(1) per new key.
    fn sweep(&mut self, now: Instant) {
        if self.map.len() < self.sweep_at {
            return;
        }
        self.map
            .retain(|_, b| b.refilling || now.duration_since(b.taken_at) < BATCH_MAX_AGE);
        self.sweep_at = (2 * self.map.len()).max(64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_spent_locally_and_refilled_by_one_caller() {
        let mut b = Batches::default();
        let t0 = Instant::now();
        assert_eq!(b.take(b"k", 1, 10, t0), Taken::Refill(11));
        // Meanwhile others ask for exactly their cost.
        assert_eq!(b.take(b"k", 2, 10, t0), Taken::Ask(2));
        assert_eq!(b.refilled(b"k", 10, 50, t0), 10);
        b.map.get_mut(&b"k"[..]).unwrap().refilling = false;
        assert_eq!(b.take(b"k", 3, 10, t0), Taken::Local(57));
        assert_eq!(b.take(b"k", 7, 10, t0), Taken::Local(50));
        // 0 left, cost 1: a refill that makes it whole again.
        assert_eq!(b.take(b"k", 1, 10, t0), Taken::Refill(11));
    }

    #[test]
    fn a_batch_never_holds_more_than_batch_tokens() {
        let mut b = Batches::default();
        let t0 = Instant::now();
        for cost in [1, 3, 5, 2] {
            if let Taken::Refill(want) = b.take(b"k", cost, 10, t0) {
                let kept = b.refilled(b"k", want - cost, 0, t0);
                b.map.get_mut(&b"k"[..]).unwrap().refilling = false;
                assert!(kept <= 10, "{kept}");
            }
        }
    }

    #[test]
    fn old_tokens_are_not_spent() {
        let mut b = Batches::default();
        let t0 = Instant::now();
        assert_eq!(b.take(b"k", 1, 10, t0), Taken::Refill(11));
        b.refilled(b"k", 10, 0, t0);
        b.map.get_mut(&b"k"[..]).unwrap().refilling = false;
        let later = t0 + BATCH_MAX_AGE;
        assert_eq!(b.take(b"k", 1, 10, later), Taken::Refill(11));
    }

    #[test]
    fn old_batches_are_swept_as_keys_come() {
        let mut b = Batches::default();
        let t0 = Instant::now();
        for i in 0..1000u32 {
            b.take(&i.to_be_bytes(), 1, 10, t0);
            b.map.get_mut(&i.to_be_bytes()[..]).unwrap().refilling = false;
        }
        assert_eq!(b.map.len(), 1000);
        let later = t0 + BATCH_MAX_AGE;
        // The map doubled since the last sweep (at 512) by 1024 keys.
        for i in 1000..1030u32 {
            b.take(&i.to_be_bytes(), 1, 10, later);
        }
        assert!(b.map.len() <= 30, "{}", b.map.len());
    }

    /// A limiter `l` of rate 10 and burst 5.
    fn defined(batch: u64, allow_when_down: bool) -> Limiters {
        let limiters = Limiters::default();
        let limit = Limit {
            rate: 10,
            burst: 5,
            batch,
            allow_when_down,
        };
        limiters.define(b"l", limit);
        limiters
    }

    #[test]
    fn a_check_spends_the_batch_one_caller_refills() {
        let limiters = defined(2, true);
        let l = limiters.get(b"l").unwrap();
        assert!(matches!(
            l.check_local(b"k", 6),
            Local::TooCostly { burst: 5 }
        ));
        let Local::Ask(refill) = l.check_local(b"k", 1) else {
            panic!("an empty batch asks Redis")
        };
        assert_eq!((refill.want, refill.refill.is_some()), (3, true));
        let Local::Ask(other) = l.check_local(b"k", 1) else {
            panic!("so does a caller while the batch is refilled")
        };
        assert_eq!((other.want, other.refill.is_some()), (1, false));
        // Redis gave the 3 wanted, 2 are left there; the refill is done.
        l.shard(b"k").refilled(b"k", 2, 2, Instant::now());
        drop(refill);
        assert!(matches!(
            l.check_local(b"k", 1),
            Local::Answered(Decision::Allowed(3))
        ));
        assert!(matches!(l.check_local(b"k", 0), Local::Ask(_)), "a look");
        assert_eq!((l.counts().checks, l.counts().local), (1, 1));
    }

    #[test]
    fn a_redefined_limiter_keeps_its_counts() {
        let limiters = defined(0, false);
        let first = limiters.get(b"l").unwrap();
        let refused = Error::Connection("refused".into());
        assert_eq!(first.unanswered(&refused), Decision::Limited(DOWN_RETRY_MS));
        limiters.define(
            b"l",
            Limit {
                allow_when_down: true,
                ..first.limit
            },
        );
        let second = limiters.get(b"l").unwrap();
        assert_eq!(second.unanswered(&refused), Decision::Allowed(0));
        let counts = limiters.counts();
        assert_eq!(counts.len(), 1);
        assert_eq!((counts[0].1.checks, counts[0].1.errors), (2, 2));
        assert!(limiters.get(b"other").is_none());
    }
}
