//! The rendezvous between a task's reply and its caller's timeout.

use std::sync::atomic::{AtomicU8, Ordering};

const PENDING: u8 = 0;
const REPLYING: u8 = 1;
const CANCELLED: u8 = 2;

/// Exactly one of "the reply is sent" and "the caller gave up" wins, decided
/// by a single compare-and-swap, so a late reply is either delivered to a
/// caller that still waits for it or never sent at all.
#[derive(Debug, Default)]
pub struct ReplyGate(AtomicU8);

impl ReplyGate {
    pub fn new() -> Self {
        ReplyGate(AtomicU8::new(PENDING))
    }

    /// The task may send its reply only if this returns true.
    pub fn claim_for_reply(&self) -> bool {
        self.0
            .compare_exchange(PENDING, REPLYING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// True if the reply will never be sent; false if it is (being) sent.
    pub fn cancel(&self) -> bool {
        self.0
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn cancel_first_means_no_reply() {
        let gate = ReplyGate::new();
        assert!(gate.cancel());
        assert!(!gate.claim_for_reply());
    }

    #[test]
    fn reply_first_means_cancel_must_wait_for_it() {
        let gate = ReplyGate::new();
        assert!(gate.claim_for_reply());
        assert!(!gate.cancel());
    }

    #[test]
    fn racing_threads_agree_on_one_winner() {
        for _ in 0..1000 {
            let gate = Arc::new(ReplyGate::new());
            let g = gate.clone();
            let replier = std::thread::spawn(move || g.claim_for_reply());
            let cancelled = gate.cancel();
            let replied = replier.join().unwrap();
            assert!(cancelled != replied);
        }
    }
}
