//! Forwards the `tracing` events of this project's crates to a sink (the
//! NIF sends them to OTP logger), at most `PER_SECOND` of each name per
//! second, counting the rest.
//!
//! An event's name is its message, a stable snake_case word
//! (`tracing::warn!(server = %addr, "connection_lost")`); its fields follow.
//! Events below the level set with `Forwarder::set_level` cost a cached
//! callsite check: no field is read, nothing is allocated.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// Only events of targets (module paths) that start with this are ours.
const OUR_TARGETS: &str = "emqx_redis_storage";

/// Events forwarded per name and second; the rest are counted.
pub const PER_SECOND: u32 = 10;

/// Distinct names the rate limit keeps apart; beyond, they share one count.
const MAX_NAMES: usize = 256;
const OTHER_NAMES: &str = "other_events";

/// A field's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
}

/// One event, ready for the sink.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub name: String,
    pub level: Level,
    pub fields: Vec<(&'static str, Value)>,
}

/// A name whose events were dropped by the rate limit since the last
/// `Forwarder::take_suppressed`, with their level and number.
#[derive(Clone, Debug, PartialEq)]
pub struct Suppressed {
    pub name: String,
    pub level: Level,
    pub count: u64,
}

/// Collects an event's fields; the `message` field becomes its name.
#[derive(Default)]
struct Fields {
    name: Option<String>,
    fields: Vec<(&'static str, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        match (field.name(), value) {
            ("message", Value::Str(text)) => self.name = Some(text),
            (name, value) => self.fields.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::Float(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::Int(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::UInt(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::Str(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::Str(format!("{value:?}")));
    }
}

/// The events of one name in the current one-second window.
struct Window {
    start: Instant,
    sent: u32,
    suppressed: u64,
    level: Level,
}

/// At most `PER_SECOND` events per name in each one-second window.
#[derive(Default)]
pub struct RateLimit {
    names: HashMap<String, Window>,
}

impl RateLimit {
    /// True if an event `name` may go out `now`; else it is counted.
    pub fn admit(&mut self, name: &str, level: Level, now: Instant) -> bool {
        let full = self.names.len() >= MAX_NAMES && !self.names.contains_key(name);
        let key = if full { OTHER_NAMES } else { name };
        let window = self.names.entry(key.to_string()).or_insert(Window {
            start: now,
            sent: 0,
            suppressed: 0,
            level,
        });
        if now.duration_since(window.start) >= Duration::from_secs(1) {
            window.start = now;
            window.sent = 0;
        }
        if window.sent < PER_SECOND {
            window.sent += 1;
            return true;
        }
        window.suppressed += 1;
        window.level = level;
        false
    }

    /// The counts of dropped events, which start again from zero.
    pub fn take_suppressed(&mut self) -> Vec<Suppressed> {
        let mut out: Vec<Suppressed> = self
            .names
            .iter_mut()
            .filter(|(_, w)| w.suppressed > 0)
            .map(|(name, w)| Suppressed {
                name: name.clone(),
                level: w.level,
                count: std::mem::take(&mut w.suppressed),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// `LevelFilter` as a number that fits an atomic: 0 is off, 5 is trace.
fn filter_code(filter: LevelFilter) -> u8 {
    match filter.into_level() {
        None => 0,
        Some(Level::ERROR) => 1,
        Some(Level::WARN) => 2,
        Some(Level::INFO) => 3,
        Some(Level::DEBUG) => 4,
        Some(Level::TRACE) => 5,
    }
}

fn level_code(level: &Level) -> u8 {
    filter_code(LevelFilter::from_level(*level))
}

/// A `tracing` subscriber that hands our events to `sink`. No spans: the
/// crates emit events only.
pub struct Forwarder<S> {
    level: AtomicU8,
    limit: Mutex<RateLimit>,
    sink: S,
}

impl<S: Fn(Report) + Send + Sync + 'static> Forwarder<S> {
    /// Off until `set_level` says otherwise.
    pub fn new(sink: S) -> Self {
        Forwarder {
            level: AtomicU8::new(0),
            limit: Mutex::new(RateLimit::default()),
            sink,
        }
    }

    /// Events below `filter` are dropped from now on, at their callsite.
    pub fn set_level(&self, filter: LevelFilter) {
        let code = filter_code(filter);
        if self.level.swap(code, Ordering::AcqRel) != code {
            // Callsites cache our answer to `register_callsite`: ask again.
            tracing::callsite::rebuild_interest_cache();
        }
    }

    pub fn take_suppressed(&self) -> Vec<Suppressed> {
        self.limit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_suppressed()
    }

    fn wanted(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with(OUR_TARGETS)
            && level_code(metadata.level()) <= self.level.load(Ordering::Acquire)
    }
}

impl<S: Fn(Report) + Send + Sync + 'static> Subscriber for Forwarder<S> {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.wanted(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(match self.level.load(Ordering::Acquire) {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.wanted(metadata)
    }

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let name = fields.name.unwrap_or_else(|| metadata.name().to_string());
        let admitted = self.limit.lock().unwrap_or_else(|e| e.into_inner()).admit(
            &name,
            *metadata.level(),
            Instant::now(),
        );
        if admitted {
            (self.sink)(Report {
                name,
                level: *metadata.level(),
                fields: fields.fields,
            });
        }
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn at_most_per_second_per_name_and_the_rest_counted() {
        let mut limit = RateLimit::default();
        let t0 = Instant::now();
        let sent = (0..1000)
            .filter(|_| limit.admit("call_failed", Level::WARN, t0))
            .count();
        assert_eq!(sent, PER_SECOND as usize);
        assert!(limit.admit("breaker_open", Level::WARN, t0), "names apart");
        let suppressed = limit.take_suppressed();
        assert_eq!(
            suppressed,
            vec![Suppressed {
                name: "call_failed".into(),
                level: Level::WARN,
                count: 1000 - PER_SECOND as u64
            }]
        );
        assert!(limit.take_suppressed().is_empty(), "counts start again");
        let t1 = t0 + Duration::from_secs(1);
        assert!(limit.admit("call_failed", Level::WARN, t1), "a new second");
    }

    #[test]
    fn names_beyond_the_bound_share_one_count() {
        let mut limit = RateLimit::default();
        let t0 = Instant::now();
        for i in 0..MAX_NAMES + 50 {
            limit.admit(&format!("name_{i}"), Level::INFO, t0);
        }
        assert!(limit.names.len() <= MAX_NAMES + 1);
        assert_eq!(
            limit.take_suppressed(),
            vec![Suppressed {
                name: OTHER_NAMES.into(),
                level: Level::INFO,
                count: 50 - PER_SECOND as u64
            }]
        );
    }

    #[test]
    fn events_carry_their_name_fields_and_level_and_respect_the_level() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let forwarder = Arc::new(Forwarder::new(move |record| {
            into.lock().unwrap().push(record);
        }));
        let dispatch = tracing::Dispatch::new(forwarder.clone());
        tracing::dispatcher::with_default(&dispatch, || {
            forwarder.set_level(LevelFilter::INFO);
            tracing::warn!(
                server = "h:1",
                attempts = 3u64,
                up = false,
                "connection_lost"
            );
            tracing::debug!(detail = "x", "too_detailed");
            forwarder.set_level(LevelFilter::DEBUG);
            tracing::debug!(detail = "x", "too_detailed");
            forwarder.set_level(LevelFilter::OFF);
            tracing::error!("silenced");
        });
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            vec![
                Report {
                    name: "connection_lost".into(),
                    level: Level::WARN,
                    fields: vec![
                        ("server", Value::Str("h:1".into())),
                        ("attempts", Value::UInt(3)),
                        ("up", Value::Bool(false)),
                    ],
                },
                Report {
                    name: "too_detailed".into(),
                    level: Level::DEBUG,
                    fields: vec![("detail", Value::Str("x".into()))],
                },
            ]
        );
    }
}
