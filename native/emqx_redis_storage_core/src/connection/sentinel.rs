//! Sentinel: the sentinels name the master, and the pool (`single.rs`)
//! points at it. The pool is rebuilt on the master they name when a call
//! meets a lost connection or a `READONLY` reply (a replica now), and, after
//! calls time out, when they name another master than before.

use std::sync::Arc;

use redis::RedisConnectionInfo;

use super::single::{pool_at, server, Server};
use super::transport::Transport;
use super::{count, Backend, Target};
use crate::config::{address, ClientConfig, Mode};
use crate::error::{Error, Result};

/// Asks the sentinels, in order, for the address of the master; the first
/// that names one wins. If none does, the first failure is the error.
pub(super) async fn find_master(
    config: &ClientConfig,
    transport: &Arc<Transport>,
) -> Result<(String, u16)> {
    let Mode::Sentinel {
        master,
        username,
        password,
    } = &config.mode
    else {
        unreachable!("only called in sentinel mode");
    };
    let mut settings = RedisConnectionInfo::default();
    if let Some(user) = username {
        settings = settings.set_username(user);
    }
    if let Some(pass) = password {
        settings = settings.set_password(pass);
    }
    let mut first_failure = None;
    for (host, port) in &config.servers {
        let sentinel = Server {
            settings: settings.clone(),
            ..server(config, transport, host, *port)
        };
        let ask = async {
            let (mut conn, _) = sentinel.dial().await?;
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(master)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        };
        let failure = match tokio::time::timeout(config.connect_timeout, ask).await {
            Ok(Ok(Some(address))) => return Ok(address),
            Ok(Ok(None)) => Error::Connection(format!("the sentinels do not know {master}")),
            Ok(Err(e)) => Error::from(e),
            Err(_) => Error::Connection("the sentinels did not answer in time".into()),
        };
        first_failure.get_or_insert(failure);
    }
    Err(first_failure.unwrap_or_else(|| Error::Connection("no sentinels".into())))
}

impl Backend {
    /// In Sentinel mode, after a lost connection or a write refused by a
    /// replica, asks the sentinels for the master and connects a new pool to
    /// it. True if the call should be tried again.
    pub(super) async fn follow_failover(&self, e: &redis::RedisError) -> bool {
        let readonly = e.code() == Some("READONLY");
        let lost = e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal();
        (readonly || lost) && self.move_to_master(false).await
    }

    /// Connects a new pool to the master the sentinels name (with
    /// `only_if_moved`, only if that is another server than now). True if
    /// the pool changed, here or in a concurrent call.
    pub(super) async fn move_to_master(&self, only_if_moved: bool) -> bool {
        let (Mode::Sentinel { master, .. }, Target::Node(pool)) =
            (&self.config.mode, &*self.target)
        else {
            return false;
        };
        let before = pool.read().unwrap_or_else(|e| e.into_inner()).clone();
        let _one_at_a_time = self.failover.lock().await;
        let now = pool.read().unwrap_or_else(|e| e.into_inner()).clone();
        if !Arc::ptr_eq(&before, &now) {
            return true; // another call already followed it
        }
        let Ok((host, port)) = find_master(&self.config, &self.transport).await else {
            return false;
        };
        let current = &now.links[0].server;
        if only_if_moved && (current.host.as_str(), current.port) == (host.as_str(), port) {
            return false;
        }
        match pool_at(&self.config, &self.transport, &host, port).await {
            Ok(fresh) => {
                *pool.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
                let old = address(&current.host, current.port);
                let new = address(&host, port);
                // Also called after a lost connection to a master that stayed.
                if old != new {
                    count(&self.metrics.connections.failovers, 1);
                    tracing::warn!(
                        master_name = %master,
                        old_master = %old,
                        new_master = %new,
                        "sentinel_failover_followed"
                    );
                }
                true
            }
            Err(_) => false,
        }
    }
}
