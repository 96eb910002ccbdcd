//! What keeps a client's callers from piling up on a Redis that cannot
//! serve them: a bound on the requests in flight, and a circuit breaker
//! that answers at once while Redis is known to be unreachable.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Counts a client's requests in flight; beyond `max` a request is refused
/// with `Error::Overloaded` before it allocates anything in the runtime.
#[derive(Debug)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    max: usize,
}

/// One admitted request; it leaves the count when dropped.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    pub fn new(max: usize) -> Self {
        InFlight {
            count: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    pub fn admit(&self) -> Result<Permit> {
        let admitted = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match admitted {
            Ok(_) => Ok(Permit(self.count.clone())),
            Err(_) => Err(Error::Overloaded),
        }
    }

    pub fn current(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// `Closed`: calls go to Redis. `Open`: a call failed to reach Redis (no
/// connection could be made); calls fail at once while a background probe
/// tries again. `HalfOpen`: that probe is trying right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Default)]
struct Trip {
    /// Why Redis could not be reached, as last seen.
    last_error: String,
    /// A probe task runs.
    probing: bool,
    /// That task is in the middle of an attempt.
    trying: bool,
    /// When the breaker last opened, while it is open: for the log.
    opened_at: Option<Instant>,
}

#[derive(Debug)]
pub struct Breaker {
    /// Read by every call; the rest only while open.
    open: AtomicBool,
    trip: Mutex<Trip>,
    /// What it guards, for the log: the configured servers.
    servers: Arc<str>,
}

/// The text of a connection error, without its kind.
fn reason(error: &Error) -> String {
    match error {
        Error::Connection(m) | Error::ConnectionLost(m) => m.clone(),
        other => other.to_string(),
    }
}

/// The first wait before a probe, and the longest.
const FIRST_PROBE: Duration = Duration::from_millis(50);
const MAX_PROBE_WAIT: Duration = Duration::from_millis(250);

impl Breaker {
    pub fn new(servers: Arc<str>) -> Self {
        Breaker {
            open: AtomicBool::new(false),
            trip: Mutex::new(Trip::default()),
            servers,
        }
    }

    /// Opens the breaker; logged when it was closed.
    fn open(&self, trip: &mut Trip) {
        if !self.open.swap(true, Ordering::AcqRel) {
            trip.opened_at = Some(Instant::now());
            let reason = trip.last_error.as_str();
            tracing::warn!(servers = %self.servers, reason, "breaker_open");
        }
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, Trip> {
        self.trip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err` at once while open: the request would not reach Redis.
    pub fn check(&self) -> Result<()> {
        if !self.open.load(Ordering::Acquire) {
            return Ok(());
        }
        let reason = self.locked().last_error.clone();
        Err(Error::Connection(format!(
            "{reason} (Redis unreachable: failing fast while reconnecting in the background)"
        )))
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub fn state(&self) -> BreakerState {
        if !self.open.load(Ordering::Acquire) {
            return BreakerState::Closed;
        }
        if self.locked().trying {
            BreakerState::HalfOpen
        } else {
            BreakerState::Open
        }
    }

    /// Notes a failure to reach Redis, and opens the breaker if `open_now`
    /// (else the first probe decides). True if the caller must start the
    /// probe (`probe_until_closed`): nobody probes yet.
    pub fn trip(&self, error: &Error, open_now: bool) -> bool {
        let mut trip = self.locked();
        trip.last_error = reason(error);
        if open_now {
            self.open(&mut trip);
        }
        !std::mem::replace(&mut trip.probing, true)
    }

    /// Calls `probe` until it succeeds, then closes the breaker; each
    /// failure opens it. While open it waits before each try, longer each
    /// time; a breaker not open yet is probed at once. Ends early when
    /// `stop` completes (the client is gone).
    pub async fn probe_until_closed<P, Fut>(&self, probe: P, stop: impl Future<Output = ()>)
    where
        P: Fn() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let attempts = async {
            let mut wait = FIRST_PROBE;
            let mut failed_probes = 0u64;
            loop {
                if self.open.load(Ordering::Acquire) {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_PROBE_WAIT);
                }
                self.locked().trying = true;
                let result = probe().await;
                let mut trip = self.locked();
                trip.trying = false;
                match result {
                    Ok(()) => {
                        trip.probing = false;
                        if self.open.swap(false, Ordering::AcqRel) {
                            let open_ms = trip
                                .opened_at
                                .take()
                                .map_or(0, |at| at.elapsed().as_millis() as u64);
                            tracing::info!(
                                servers = %self.servers,
                                failed_probes,
                                open_ms,
                                "breaker_closed"
                            );
                        }
                        return;
                    }
                    Err(e) => {
                        trip.last_error = reason(&e);
                        failed_probes += 1;
                        self.open(&mut trip);
                    }
                }
            }
        };
        tokio::select! {
            () = attempts => {}
            () = stop => {}
        }
    }

    /// When the breaker last let calls through or opened: for status.
    pub fn last_error(&self) -> Option<String> {
        let trip = self.locked();
        (!trip.last_error.is_empty()).then(|| trip.last_error.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_is_bounded_and_released() {
        let limit = InFlight::new(2);
        let a = limit.admit().unwrap();
        let _b = limit.admit().unwrap();
        assert_eq!(limit.admit().unwrap_err(), Error::Overloaded);
        drop(a);
        assert_eq!(limit.current(), 1);
        assert!(limit.admit().is_ok());
    }

    #[test]
    fn breaker_fails_fast_until_a_probe_succeeds() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let breaker = Breaker::new("test".into());
        assert!(breaker.check().is_ok());
        let refused = Error::Connection("Connection refused".into());
        assert!(breaker.trip(&refused, true));
        assert!(!breaker.trip(&refused, true), "one probe at a time");
        assert_eq!(breaker.state(), BreakerState::Open);
        let err = breaker.check().unwrap_err().to_string();
        assert!(err.contains("Connection refused"), "{err}");
        let tries = AtomicUsize::new(0);
        runtime.block_on(breaker.probe_until_closed(
            || {
                let n = tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err(Error::Connection("still refused".into()))
                    } else {
                        Ok(())
                    }
                }
            },
            std::future::pending(),
        ));
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.check().is_ok());
        assert!(breaker.trip(&refused, true), "a new trip probes again");
    }

    #[test]
    fn a_suspected_breaker_opens_only_if_the_probe_fails() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let breaker = Breaker::new("test".into());
        let refused = Error::Connection("Connection refused".into());
        assert!(breaker.trip(&refused, false));
        assert_eq!(breaker.state(), BreakerState::Closed);
        runtime.block_on(breaker.probe_until_closed(|| async { Ok(()) }, std::future::pending()));
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.trip(&refused, false), "the probe has ended");
        let opened = AtomicBool::new(false);
        runtime.block_on(breaker.probe_until_closed(
            || {
                let again = opened.swap(true, Ordering::SeqCst);
                async move {
                    if again {
                        Ok(())
                    } else {
                        Err(Error::Connection("no node answers".into()))
                    }
                }
            },
            std::future::pending(),
        ));
        assert!(opened.load(Ordering::SeqCst));
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
