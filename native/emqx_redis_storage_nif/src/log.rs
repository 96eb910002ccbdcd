//! The core's `tracing` events, sent to the Erlang process that logs them
//! (`emqx_redis_storage_log`) as `{emqx_redis_storage_log, Level, Report}`.
//!
//! Events are queued (bounded: beyond `QUEUE`, dropped) and sent by one
//! runtime task, so that an event emitted on any thread, even a VM one, is
//! sent from a thread where `send_and_clear` is allowed. With no process
//! to send to, the level is off and events are not even built.

use std::sync::{Arc, Mutex, OnceLock};

use emqx_redis_storage_core::log::{Forwarder, Report, Value};
use rustler::env::OwnedEnv;
use rustler::{Atom, Encoder, Env, LocalPid, NifResult, Term};
use tokio::sync::mpsc;
use tracing::level_filters::LevelFilter;
use tracing::Level;

mod atoms {
    rustler::atoms! {
        msg, emqx_redis_storage_log,
        off, error, warn, warning, info, debug, trace
    }
}

/// Events waiting to be sent; the rate limit keeps this far from full.
const QUEUE: usize = 1024;

static QUEUED: OnceLock<mpsc::Sender<Report>> = OnceLock::new();
/// The subscriber; its sink queues the event for `send_all`.
type ToErlang = Forwarder<fn(Report)>;
static FORWARDER: OnceLock<Arc<ToErlang>> = OnceLock::new();
/// The process that logs the events, if one runs.
static SINK: Mutex<Option<LocalPid>> = Mutex::new(None);

fn enqueue(report: Report) {
    if let Some(queue) = QUEUED.get() {
        let _ = queue.try_send(report);
    }
}

/// Installs the forwarder as the process-wide `tracing` subscriber and
/// starts the task that sends its events. Called from the NIF's `load`.
pub fn init(runtime: &tokio::runtime::Handle) {
    if FORWARDER.get().is_some() {
        return;
    }
    let (queue, queued) = mpsc::channel(QUEUE);
    let _ = QUEUED.set(queue);
    let forwarder = Arc::new(Forwarder::new(enqueue as fn(Report)));
    let _ = tracing::dispatcher::set_global_default(tracing::Dispatch::new(forwarder.clone()));
    let _ = FORWARDER.set(forwarder);
    runtime.spawn(send_all(queued));
}

async fn send_all(mut queued: mpsc::Receiver<Report>) {
    let mut env = OwnedEnv::new();
    while let Some(report) = queued.recv().await {
        let sink = *SINK.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pid) = sink {
            // A dead process: the event is dropped.
            let _ = env.send_and_clear(&pid, |env| {
                (
                    atoms::emqx_redis_storage_log(),
                    logger_level(report.level),
                    report_map(env, &report),
                )
                    .encode(env)
            });
        }
    }
}

/// OTP logger's name for a `tracing` level.
fn logger_level(level: Level) -> Atom {
    match level {
        Level::ERROR => atoms::error(),
        Level::WARN => atoms::warning(),
        Level::INFO => atoms::info(),
        Level::DEBUG | Level::TRACE => atoms::debug(),
    }
}

/// `#{msg => Name, Field => Value, ...}`: field names are atoms (they are
/// static names in our code), text is binaries.
fn report_map<'a>(env: Env<'a>, report: &Report) -> Term<'a> {
    let mut map = rustler::types::map::map_new(env);
    let name = crate::term::binary(env, report.name.as_bytes());
    map = map.map_put(atoms::msg(), name).unwrap_or(map);
    for (field, value) in &report.fields {
        let Ok(key) = Atom::from_str(env, field) else {
            continue;
        };
        let value = match value {
            Value::Str(s) => crate::term::binary(env, s.as_bytes()),
            Value::Int(i) => i.encode(env),
            Value::UInt(u) => u.encode(env),
            Value::Float(f) => f.encode(env),
            Value::Bool(b) => b.encode(env),
        };
        map = map.map_put(key, value).unwrap_or(map);
    }
    map
}

fn level_filter(level: Atom) -> Option<LevelFilter> {
    [
        (atoms::off(), LevelFilter::OFF),
        (atoms::error(), LevelFilter::ERROR),
        (atoms::warn(), LevelFilter::WARN),
        (atoms::info(), LevelFilter::INFO),
        (atoms::debug(), LevelFilter::DEBUG),
        (atoms::trace(), LevelFilter::TRACE),
    ]
    .into_iter()
    .find_map(|(name, filter)| (name == level).then_some(filter))
}

/// Where events go (`Pid`, or `undefined`: nowhere, and the level is then
/// off) and from which level (`off | error | warn | info | debug | trace`).
/// Returns `[{Name, Level, Count}]`: the events the rate limit dropped since
/// the last call.
#[rustler::nif]
fn log_sink<'a>(env: Env<'a>, sink: Term<'a>, level: Atom) -> NifResult<Term<'a>> {
    let (Some(filter), Some(forwarder)) = (level_filter(level), FORWARDER.get()) else {
        return Err(rustler::Error::BadArg);
    };
    let pid = sink.decode::<LocalPid>().ok();
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = pid;
    forwarder.set_level(if pid.is_some() {
        filter
    } else {
        LevelFilter::OFF
    });
    let dropped = forwarder
        .take_suppressed()
        .into_iter()
        .map(|s| {
            (
                crate::term::binary(env, s.name.as_bytes()),
                logger_level(s.level),
                s.count,
            )
                .encode(env)
        })
        .collect::<Vec<_>>();
    Ok(dropped.encode(env))
}
