//! What a client counts, for operators: per operation (calls answered,
//! errors by kind, latency, calls in flight) and per client (connections,
//! reconnects, failovers followed, requests, bytes, route index loads).
//!
//! Every update is a relaxed atomic add on counters of the client's own:
//! no lock, and nothing shared by all clients. An operation's counters are
//! sharded by thread: a call starts on an Erlang scheduler and ends on a
//! Tokio worker, and with one set of counters their cache lines would move
//! between cores on every call. An operation is only a name given by the
//! caller; this module knows no domain.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Upper bounds of the latency buckets in µs, from 100 µs to 10 s; one more
/// bucket counts what took longer.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

const BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

/// One thread's share of an operation's counters, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    started: AtomicU64,
    errors: [AtomicU64; Error::KINDS.len()],
    /// Answered calls by latency; each bucket counts its own calls.
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Shard {
    fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US.partition_point(|&upper| upper < us);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }
}

/// More shards than a small machine has busy threads; threads beyond share.
const SHARDS: usize = 8;

/// This thread's shard: threads take them in turn when they first count.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

/// The counters of one operation.
struct OpMetrics {
    name: &'static str,
    shards: [Shard; SHARDS],
}

impl OpMetrics {
    fn new(name: &'static str) -> Self {
        OpMetrics {
            name,
            shards: Default::default(),
        }
    }

    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    /// The sum over the shards of one counter.
    fn total(&self, counter: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| counter(s).load(Relaxed)).sum()
    }
}

/// Room for more distinct operation names than the library has; a name
/// beyond it is counted under [`OVERFLOW_OP`].
const OP_SLOTS: usize = 128;
pub const OVERFLOW_OP: &str = "other";

/// Operations by name, without a lock: an open-addressing table whose slots
/// are set once. After its first call an operation is found with a hash of
/// its name and an atomic load.
struct OpTable {
    slots: Box<[OnceLock<Arc<OpMetrics>>]>,
    overflow: Arc<OpMetrics>,
}

impl OpTable {
    fn new() -> Self {
        OpTable {
            slots: (0..OP_SLOTS).map(|_| OnceLock::new()).collect(),
            overflow: Arc::new(OpMetrics::new(OVERFLOW_OP)),
        }
    }

    fn get(&self, name: &'static str) -> &Arc<OpMetrics> {
        let start = fnv1a(name.as_bytes()) as usize;
        for probe in 0..OP_SLOTS {
            let slot = &self.slots[(start + probe) % OP_SLOTS];
            let op = slot.get_or_init(|| Arc::new(OpMetrics::new(name)));
            if op.name == name {
                return op;
            }
        }
        &self.overflow
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<OpMetrics>> {
        let overflow = self.overflow.total(|s| &s.started) > 0;
        self.slots
            .iter()
            .filter_map(OnceLock::get)
            .chain(overflow.then_some(&self.overflow))
    }
}

/// A fast, fixed hash: it picks a table slot or a shard.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Counters of a client's connections; the connection layer adds to them.
#[derive(Default)]
pub struct ConnectionCounters {
    /// Connections open now over our transport.
    pub open: AtomicI64,
    /// Connections of the pool dialled again after they broke.
    pub reconnects: AtomicU64,
    /// New Sentinel masters moved to.
    pub failovers: AtomicU64,
    /// New Redis Cluster connections made after the masters changed.
    pub topology_refreshes: AtomicU64,
    /// Full loads of the local route index from Redis.
    pub route_index_resyncs: AtomicU64,
    /// Commands, pipelines and scripts handed to a connection (retries too).
    pub requests: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Script calls that carried a group of calls (group commit), and the
    /// calls they carried.
    pub group_commits: AtomicU64,
    pub grouped_calls: AtomicU64,
}

/// Everything a client counts.
pub struct Metrics {
    ops: OpTable,
    pub connections: ConnectionCounters,
    slow_call_threshold: Duration,
}

impl Metrics {
    pub fn new(slow_call_threshold: Duration) -> Self {
        Metrics {
            ops: OpTable::new(),
            connections: ConnectionCounters::default(),
            slow_call_threshold,
        }
    }

    /// Starts timing a call of operation `name`; it counts as in flight
    /// until the returned `Call` is finished or dropped.
    pub fn start(&self, name: &'static str) -> Call {
        let op = self.ops.get(name).clone();
        op.shard().started.fetch_add(1, Relaxed);
        Call {
            op,
            started: Instant::now(),
            slow_after: self.slow_call_threshold,
            error: Some(Error::Internal(String::new()).kind_index()),
        }
    }

    /// What the counters hold now. Counters are read one by one while calls
    /// go on, so two of them may disagree by the calls of that moment.
    pub fn snapshot(&self) -> Snapshot {
        let c = &self.connections;
        Snapshot {
            operations: self.ops.iter().map(|op| op_snapshot(op)).collect(),
            connections_open: c.open.load(Relaxed).max(0) as u64,
            reconnects: c.reconnects.load(Relaxed),
            failovers: c.failovers.load(Relaxed),
            topology_refreshes: c.topology_refreshes.load(Relaxed),
            route_index_resyncs: c.route_index_resyncs.load(Relaxed),
            requests: c.requests.load(Relaxed),
            bytes_sent: c.bytes_sent.load(Relaxed),
            bytes_received: c.bytes_received.load(Relaxed),
            group_commits: c.group_commits.load(Relaxed),
            grouped_calls: c.grouped_calls.load(Relaxed),
        }
    }
}

fn op_snapshot(op: &OpMetrics) -> OpSnapshot {
    // Answered before started: a call is started before it is answered,
    // so in flight is never below zero.
    let buckets: Vec<u64> = (0..BUCKETS).map(|b| op.total(|s| &s.buckets[b])).collect();
    let calls = buckets.iter().sum();
    let started = op.total(|s| &s.started);
    OpSnapshot {
        name: op.name,
        in_flight: started.saturating_sub(calls),
        errors: Error::KINDS
            .iter()
            .enumerate()
            .map(|(i, kind)| (*kind, op.total(|s| &s.errors[i])))
            .filter(|(_, n)| *n > 0)
            .collect(),
        calls,
        buckets,
        sum_us: op.total(|s| &s.sum_us),
    }
}

/// One call being timed. Dropped unfinished (its work panicked or was
/// dropped), it counts as an `internal` error: every call is counted once.
pub struct Call {
    op: Arc<OpMetrics>,
    started: Instant,
    slow_after: Duration,
    /// The kind of error it ended with, if any.
    error: Option<usize>,
}

impl Call {
    /// Ends the call with `result`.
    pub fn finish<T>(mut self, result: &Result<T>) {
        self.error = result.as_ref().err().map(Error::kind_index);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let shard = self.op.shard();
        shard.observe(elapsed);
        if let Some(kind) = self.error {
            shard.errors[kind].fetch_add(1, Relaxed);
        }
        warn_if_slow(self.op.name, elapsed, self.slow_after);
    }
}

/// Emits the `slow_call` event for a call that took `threshold` or longer;
/// true if it did.
fn warn_if_slow(operation: &str, elapsed: Duration, threshold: Duration) -> bool {
    let slow = elapsed >= threshold;
    if slow {
        tracing::warn!(
            operation,
            duration_ms = elapsed.as_millis() as u64,
            threshold_ms = threshold.as_millis() as u64,
            "slow_call"
        );
    }
    slow
}

/// The counters of one operation at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpSnapshot {
    pub name: &'static str,
    /// Calls answered (with a value or an error).
    pub calls: u64,
    /// By kind (one of [`Error::KINDS`]); only kinds seen.
    pub errors: Vec<(&'static str, u64)>,
    pub in_flight: u64,
    /// Calls per bucket of [`LATENCY_BUCKETS_US`], then the calls beyond
    /// the last bound.
    pub buckets: Vec<u64>,
    pub sum_us: u64,
}

/// Everything a client counted, at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub operations: Vec<OpSnapshot>,
    pub connections_open: u64,
    pub reconnects: u64,
    pub failovers: u64,
    pub topology_refreshes: u64,
    pub route_index_resyncs: u64,
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub group_commits: u64,
    pub grouped_calls: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op<'a>(snapshot: &'a Snapshot, name: &str) -> &'a OpSnapshot {
        snapshot.operations.iter().find(|o| o.name == name).unwrap()
    }

    #[test]
    fn calls_errors_and_in_flight_are_counted_per_operation() {
        let metrics = Metrics::new(Duration::from_secs(3600));
        let pending = metrics.start("load");
        for i in 0..10 {
            let result = if i < 3 { Err(Error::Timeout) } else { Ok(()) };
            metrics.start("load").finish(&result);
        }
        metrics
            .start("save")
            .finish(&Err::<(), _>(Error::Overloaded));
        let snapshot = metrics.snapshot();
        let load = op(&snapshot, "load");
        assert_eq!((load.calls, load.in_flight), (10, 1));
        assert_eq!(load.errors, vec![("timeout", 3)]);
        assert_eq!(load.buckets.iter().sum::<u64>(), 10);
        assert_eq!(op(&snapshot, "save").errors, vec![("overloaded", 1)]);
        drop(pending);
        let load = op(&metrics.snapshot(), "load").clone();
        // Dropped unfinished: answered by the panic handler, an internal error.
        assert_eq!((load.calls, load.in_flight), (11, 0));
        assert_eq!(load.errors, vec![("timeout", 3), ("internal", 1)]);
    }

    #[test]
    fn latencies_fall_in_their_buckets() {
        let h = Shard::default();
        for us in [0, 100, 101, 999, 10_000_000, 10_000_001, u64::MAX / 2] {
            h.observe(Duration::from_micros(us));
        }
        let counts: Vec<u64> = h.buckets.iter().map(|b| b.load(Relaxed)).collect();
        assert_eq!(counts[0], 2, "0 and 100 µs: at most 100");
        assert_eq!(counts[1], 1, "101 µs: at most 250");
        assert_eq!(counts[3], 1, "999 µs: at most 1 ms");
        assert_eq!(counts[15], 1, "10 s: the last bound");
        assert_eq!(counts[16], 2, "beyond 10 s");
        assert_eq!(counts.iter().sum::<u64>(), 7);
    }

    #[test]
    fn many_names_share_the_table_without_loss() {
        let table = OpTable::new();
        let names: Vec<&'static str> = (0..OP_SLOTS + 5)
            .map(|i| &*Box::leak(format!("op{i}").into_boxed_str()))
            .collect();
        for name in &names {
            table.get(name).shard().started.fetch_add(1, Relaxed);
        }
        for name in &names[..OP_SLOTS] {
            assert_eq!(table.get(name).name, *name);
            assert_eq!(table.get(name).total(|s| &s.started), 1);
        }
        assert_eq!(table.get(names[OP_SLOTS]).name, OVERFLOW_OP);
        assert_eq!(table.overflow.total(|s| &s.started), 5);
    }

    /// Calls started on one thread and answered on others are counted once.
    #[test]
    fn calls_across_threads_add_up() {
        let metrics = Metrics::new(Duration::from_secs(3600));
        let mut calls: Vec<Call> = (0..1000).map(|_| metrics.start("q")).collect();
        assert_eq!(op(&metrics.snapshot(), "q").in_flight, 1000);
        std::thread::scope(|s| {
            while !calls.is_empty() {
                let batch: Vec<Call> = calls.drain(..100).collect();
                s.spawn(move || {
                    batch
                        .into_iter()
                        .for_each(|c| c.finish(&Ok::<(), Error>(())))
                });
            }
        });
        let q = op(&metrics.snapshot(), "q").clone();
        assert_eq!((q.calls, q.in_flight, q.errors.len()), (1000, 0, 0));
    }

    #[test]
    fn slow_calls_are_those_at_or_above_the_threshold() {
        let second = Duration::from_secs(1);
        assert!(!warn_if_slow("q", Duration::from_millis(999), second));
        assert!(warn_if_slow("q", second, second));
        assert!(warn_if_slow("q", Duration::from_secs(5), second));
    }
}
