//! The Redis logic of emqx_redis_storage, with no Erlang types in it: the NIF
//! crate decodes arguments, calls into here and encodes the results.

pub mod client;
pub mod config;
pub mod ds;
pub mod error;
pub mod gate;
pub mod group;
pub mod guard;
pub mod health;
pub mod keys;
pub mod log;
pub mod message;
pub mod metrics;
pub mod mirror;
pub mod nodes;
pub mod registry;
pub mod route_index;
pub mod router;
pub mod scripts;
pub mod session;
pub mod topic;
pub mod transport;

pub use error::{Error, Result};
