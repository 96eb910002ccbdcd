//! The domains kept in Redis, on top of the connection layer: sessions and
//! their leases, message queues, the client registry, routes (and the local
//! route index), durable messages, node membership, rate limits; and the key
//! layout they share. Backup and restore copy them all.

pub mod backup;
pub mod backup_file;
pub mod ds;
pub mod keys;
pub mod limiter;
pub mod message;
pub mod mirror;
pub mod nodes;
pub mod registry;
pub mod route_index;
pub mod router;
pub mod session;
pub mod tails;
pub mod topic;
