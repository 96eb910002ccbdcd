//! The NIF library of emqx_redis_storage: Erlang terms in, Redis logic from
//! emqx_redis_storage_core, Erlang terms out. This file only loads it.

mod ds;
mod log;
mod message;
mod nif;
mod nodes;
mod router;
mod runtime;
mod session;
mod term;

use rustler::{Env, Term};

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
