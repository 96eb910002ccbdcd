//! What an operator wants to know about one Redis server: when it last
//! answered, and the last error met reaching it. Every reply records its
//! time with one atomic operation, so the hot path takes no lock; the
//! error, rarer, sits behind a mutex.

use std::fmt::Display;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A server's health, shared by every connection to it.
#[derive(Debug, Default)]
pub struct ServerHealth {
    /// Unix ms of the last reply; 0 for none yet.
    last_ok_ms: AtomicI64,
    /// Unix ms and text of the last failure to reach the server.
    last_error: Mutex<Option<(i64, String)>>,
}

/// A copy of a `ServerHealth` at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthReport {
    pub last_ok_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl ServerHealth {
    /// The server answered (a reply, or an error reply: either is a round trip).
    pub fn answered(&self) {
        // fetch_max: replies finishing out of order never move it back.
        self.last_ok_ms.fetch_max(now_ms(), Ordering::Relaxed);
    }

    /// The server could not be reached, or the connection to it failed.
    pub fn failed(&self, error: &dyn Display) {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some((now_ms(), error.to_string()));
    }

    pub fn report(&self) -> HealthReport {
        let ok = self.last_ok_ms.load(Ordering::Relaxed);
        let last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        HealthReport {
            last_ok_ms: (ok > 0).then_some(ok),
            last_error: last.as_ref().map(|(_, text)| text.clone()),
            last_error_ms: last.as_ref().map(|(at, _)| *at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_server_has_no_history() {
        assert_eq!(ServerHealth::default().report(), HealthReport::default());
    }

    #[test]
    fn replies_and_failures_are_remembered_with_their_time() {
        let health = ServerHealth::default();
        let before = now_ms();
        health.answered();
        health.failed(&"Connection refused");
        let report = health.report();
        assert!(report.last_ok_ms.unwrap() >= before);
        assert_eq!(report.last_error.as_deref(), Some("Connection refused"));
        assert!(report.last_error_ms.unwrap() >= report.last_ok_ms.unwrap());
        health.answered();
        let later = health.report();
        assert!(later.last_ok_ms >= report.last_ok_ms);
        assert_eq!(
            later.last_error, report.last_error,
            "the last error stays, with its time, after the server answers again"
        );
    }
}
