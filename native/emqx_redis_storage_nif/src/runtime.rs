//! The Tokio runtime and the asynchronous call path.
//!
//! A NIF that does I/O calls [`spawn_reply`]: it returns a [`Ticket`] at once
//! and the task later sends `{Ref, {ok, Value} | {error, Reason}}` to the
//! caller. If the caller gave up waiting, it cancels the ticket and the late
//! reply is dropped here instead of landing in its mailbox.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

use emqx_redis_storage_core::connection::Admitted;
use emqx_redis_storage_core::error::panic_message;
use emqx_redis_storage_core::gate::ReplyGate;
use emqx_redis_storage_core::{Error, Result};
use futures::FutureExt;
use rustler::env::{OwnedEnv, SavedTerm};
use rustler::{Encoder, Env, LocalPid, ResourceArc, Term};
use tokio::runtime::Runtime;

use crate::term::Reason;

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
    // Loads are serialised by the VM, so this set cannot race.
    let _ = RUNTIME.set(runtime);
    Ok(())
}

pub fn handle() -> &'static tokio::runtime::Handle {
    RUNTIME
        .get()
        .expect("the runtime is created when the NIF loads")
        .handle()
}

/// One outstanding request, as an Erlang resource.
pub struct Ticket(ReplyGate);

#[rustler::resource_impl]
impl rustler::Resource for Ticket {}

/// `cancelled` when the reply will never be sent; `sent` when it has been or
/// is being sent, so the caller must receive it (it is certain to arrive).
#[rustler::nif]
fn cancel(ticket: ResourceArc<Ticket>) -> rustler::Atom {
    if ticket.0.cancel() {
        atoms::cancelled()
    } else {
        atoms::sent()
    }
}

/// `spawn_reply` for a call a client admitted (`Client::admit`, which names
/// the operation for the metrics); else `{error, overloaded}` at once. The
/// call holds its place in flight until the work is done, also when the
/// caller stopped waiting, and is timed until then.
pub fn spawn_admitted<'a, T, F>(
    env: Env<'a>,
    admitted: Result<Admitted>,
    reply_ref: Term<'a>,
    work: F,
) -> Term<'a>
where
    T: Encoder + Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    match admitted {
        Ok(admitted) => spawn_reply(env, reply_ref, async move {
            let result = work.await;
            admitted.finish(&result);
            result
        }),
        Err(reason) => (atoms::error(), Reason(&reason)).encode(env),
    }
}

/// A call a client admitted that takes no task of its own: `start` starts
/// it (e.g. `Client::send`) with the `Answerer` whose answer, given later on
/// a runtime thread, goes to the caller. `{error, overloaded}` at once if
/// it was not admitted.
pub fn answered<'a>(
    env: Env<'a>,
    admitted: Result<Admitted>,
    reply_ref: Term<'a>,
    start: impl FnOnce(Answerer),
) -> Term<'a> {
    let admitted = match admitted {
        Ok(admitted) => admitted,
        Err(reason) => return (atoms::error(), Reason(&reason)).encode(env),
    };
    let (replier, ticket) = Replier::new(env, reply_ref);
    // Where a call goes on, as a task, if it fails on its connection.
    let _runtime = handle().enter();
    start(Answerer { admitted, replier });
    ticket
}

/// Answers one admitted call (`answered`).
pub struct Answerer {
    admitted: Admitted,
    replier: Replier,
}

impl Answerer {
    /// Answers with what `result` gives; a panic in it is answered as an
    /// internal error. Never on a scheduler thread.
    pub fn answer<T: Encoder>(self, result: impl FnOnce() -> Result<T>) {
        let result = std::panic::catch_unwind(AssertUnwindSafe(result))
            .unwrap_or_else(|panic| Err(Error::Internal(panic_message(panic.as_ref()))));
        self.admitted.finish(&result);
        self.replier.reply(&result);
    }
}

/// Runs `work` on the runtime and answers the calling process with
/// `{Ref, {ok, Value}}` or `{Ref, {error, Reason}}`. Never blocks.
pub fn spawn_reply<'a, T, F>(env: Env<'a>, reply_ref: Term<'a>, work: F) -> Term<'a>
where
    T: Encoder + Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    // Boxed here, the task holds a pointer: a call's future is large, and
    // Tokio would otherwise copy all of it into the task and again when
    // the task's stage changes.
    let work = Box::pin(work);
    let (replier, ticket) = Replier::new(env, reply_ref);
    handle().spawn(async move {
        let result = AssertUnwindSafe(work)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(Error::Internal(panic_message(panic.as_ref()))));
        replier.reply(&result);
    });
    ticket
}

/// The answer to one call: `{Ref, {ok, Value} | {error, Reason}}` to the
/// calling process, unless it cancelled its ticket. Sent from a runtime
/// thread (never from a scheduler's).
pub struct Replier {
    pid: LocalPid,
    env: OwnedEnv,
    saved_ref: SavedTerm,
    ticket: ResourceArc<Ticket>,
}

impl Replier {
    /// The replier of the call `env` is in, and the ticket to return.
    pub fn new<'a>(env: Env<'a>, reply_ref: Term<'a>) -> (Replier, Term<'a>) {
        let owned = OwnedEnv::new();
        let saved_ref = owned.save(reply_ref);
        let ticket = ResourceArc::new(Ticket(ReplyGate::new()));
        let term = ticket.encode(env);
        let replier = Replier {
            pid: env.pid(),
            env: owned,
            saved_ref,
            ticket,
        };
        (replier, term)
    }

    pub fn reply<T: Encoder>(mut self, result: &Result<T>) {
        if !self.ticket.0.claim_for_reply() {
            return;
        }
        // The caller may have exited; then there is nobody to answer.
        // Once claimed, the reply must go out: the caller may be waiting
        // for it without a deadline. Even a panic while encoding it
        // becomes an error reply.
        let saved_ref = self.saved_ref;
        let _ = self.env.send_and_clear(&self.pid, |env| {
            let body = std::panic::catch_unwind(AssertUnwindSafe(|| match result {
                Ok(value) => (atoms::ok(), value).encode(env),
                Err(reason) => (atoms::error(), Reason(reason)).encode(env),
            }))
            .unwrap_or_else(|panic| {
                let reason = Error::Internal(panic_message(panic.as_ref()));
                (atoms::error(), Reason(&reason)).encode(env)
            });
            (saved_ref.load(env), body).encode(env)
        });
    }
}
