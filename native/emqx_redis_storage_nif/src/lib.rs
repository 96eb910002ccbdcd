//! The NIF library of emqx_redis_storage: Erlang terms in, Redis logic from
//! emqx_redis_storage_core, Erlang terms out. This file only loads it.

mod backup;
mod ds;
mod limiter;
mod log;
mod message;
mod nif;
mod nodes;
mod router;
mod runtime;
mod session;
mod term;

use rustler::{Env, Term};

/// Rust's allocations in the NIF: a call's buffers are made on an Erlang
/// scheduler thread and freed on a Tokio worker (and the other way round),
/// where glibc's malloc takes arena locks and consolidates; mimalloc's
/// thread-local heaps free across threads without them (`make bench`: a
/// third more `load_session` and `q` calls per second at 64 processes).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod atoms {
    rustler::atoms! { worker_threads }
}

/// `load_info` is `#{worker_threads => N}`, chosen by the Erlang side.
fn load(_env: Env, load_info: Term) -> bool {
    let workers = load_info
        .map_get(atoms::worker_threads())
        .and_then(|t| t.decode::<usize>())
        .unwrap_or(2);
    let started = runtime::init(workers).is_ok();
    if started {
        log::init(runtime::handle());
    }
    started
}

rustler::init!("emqx_redis_storage_nif", load = load);
