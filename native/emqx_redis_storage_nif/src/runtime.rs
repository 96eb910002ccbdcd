//! The Tokio runtime and the asynchronous call path.
//!
//! A NIF that does I/O calls [`spawn_reply`]: it returns a [`Ticket`] at once and
//! the task later sends `{Ref, {ok, Value} | {error, Reason}}` to the caller.
//! If the caller gave up waiting, it cancels the ticket and the late reply is
//! dropped here instead of landing in its mailbox.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use futures::FutureExt;
use rustler::env::OwnedEnv;
use rustler::{Encoder, Env, ResourceArc, Term};
use tokio::runtime::Runtime;

use crate::error::{Error, Result};

mod atoms {
    rustler::atoms! { ok, error, cancelled, sent }
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Creates the one runtime of this VM. Called from the NIF's `load`.
pub fn init(worker_threads: usize) -> std::io::Result<()> {
    if RUNTIME.get().is_some() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .thread_name("emqx_redis_storage")
        .enable_all()
        .build()?;
    // A concurrent init lost the race: its runtime is dropped here, before use.
    let _ = RUNTIME.set(runtime);
    Ok(())
}

pub fn handle() -> &'static tokio::runtime::Handle {
    RUNTIME
        .get()
        .expect("runtime is created when the NIF loads")
        .handle()
}

const PENDING: u8 = 0;
const SENDING: u8 = 1;
const CANCELLED: u8 = 2;

/// One outstanding request. Exactly one of "the reply is sent" and "the caller
/// cancelled" wins, decided by a single compare-and-swap.
pub struct Ticket {
    state: AtomicU8,
}

#[rustler::resource_impl]
impl rustler::Resource for Ticket {}

impl Ticket {
    fn claim_for_reply(&self) -> bool {
        self.state
            .compare_exchange(PENDING, SENDING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn cancel(&self) -> bool {
        self.state
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// `cancelled` when the reply will never be sent; `sent` when it has been or is
/// being sent, so the caller must receive it (it is guaranteed to arrive).
#[rustler::nif]
fn cancel(ticket: ResourceArc<Ticket>) -> rustler::Atom {
    if ticket.cancel() {
        atoms::cancelled()
    } else {
        atoms::sent()
    }
}

/// Runs `work` on the runtime and answers the calling process with
/// `{Ref, {ok, Value}}` or `{Ref, {error, Reason}}`. Never blocks.
pub fn spawn_reply<'a, T, F>(env: Env<'a>, reply_ref: Term<'a>, work: F) -> ResourceArc<Ticket>
where
    T: Encoder + Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    let pid = env.pid();
    let mut msg_env = OwnedEnv::new();
    let saved_ref = msg_env.save(reply_ref);
    let ticket = ResourceArc::new(Ticket {
        state: AtomicU8::new(PENDING),
    });
    let task_ticket = ticket.clone();
    handle().spawn(async move {
        let result = AssertUnwindSafe(work)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(Error::Internal(panic_message(panic.as_ref()))));
        if task_ticket.claim_for_reply() {
            // The caller may have exited; then there is nobody to answer.
            let _ = msg_env.send_and_clear(&pid, |env| {
                let body = match &result {
                    Ok(value) => (atoms::ok(), value).encode(env),
                    Err(reason) => (atoms::error(), reason).encode(env),
                };
                (saved_ref.load(env), body).encode(env)
            });
        }
    });
    ticket
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}
