//! The Redis logic of emqx_redis_storage, with no Erlang types in it: the NIF
//! crate decodes arguments, calls into here and encodes the results.
//!
//! Two layers. `connection` reaches Redis (single, Sentinel or Cluster) and
//! knows nothing of what is stored; `store` keeps sessions, messages, the
//! registry, routes and durable streams on top of it. A lower layer never
//! imports a higher one. `config`, `error`, `metrics`, `log` and `gate` are
//! shared by both.

pub mod config;
pub mod connection;
pub mod error;
pub mod gate;
pub mod log;
pub mod metrics;
pub mod store;

pub use error::{Error, Result};
