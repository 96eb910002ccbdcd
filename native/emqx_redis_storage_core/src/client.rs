//! A connection to one Redis deployment, shared by every process of the VM
//! that holds its handle.
//!
//! Each pool slot is a redis-rs `ConnectionManager`: one multiplexed TCP
//! connection that pipelines concurrent requests on the wire and reconnects
//! by itself after the connection is lost. Every operation is bounded by the
//! command timeout, including the time spent waiting for a reconnect.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Value};

use crate::config::ClientConfig;
use crate::error::{Error, Result};

pub struct Client {
    pool: Vec<ConnectionManager>,
    next: AtomicUsize,
    command_timeout: Duration,
}

impl Client {
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let (host, port) = config.servers[0].clone();
        let mut redis_info = RedisConnectionInfo::default()
            .set_db(config.database)
            .set_lib_name("emqx_redis_storage", env!("CARGO_PKG_VERSION"));
        if let Some(user) = &config.username {
            redis_info = redis_info.set_username(user);
        }
        if let Some(password) = &config.password {
            redis_info = redis_info.set_password(password);
        }
        let info = ConnectionAddr::Tcp(host, port)
            .into_connection_info()?
            .set_redis_settings(redis_info);
        let client = redis::Client::open(info)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            // Reconnects are retried by the next call, not in a long backoff loop
            // that would outlive the caller's deadline.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let connect_all =
            futures::future::try_join_all((0..config.pool_size).map(|_| {
                ConnectionManager::new_with_config(client.clone(), manager_config.clone())
            }));
        // The manager retries once; two attempts must still fit the caller's wait.
        let pool = tokio::time::timeout(config.connect_timeout * 2, connect_all)
            .await
            .map_err(|_| Error::Connection("connect timeout".into()))?
            .map_err(|e| match Error::from(e) {
                Error::Timeout => Error::Connection("connect timeout".into()),
                other => other,
            })?;
        let client = Client {
            pool,
            next: AtomicUsize::new(0),
            command_timeout: config.command_timeout,
        };
        // A connection is made even when Redis then refuses every command
        // (NOAUTH, NOPERM): find out now, not on the first real call.
        for conn in &client.pool {
            let mut conn = conn.clone();
            client
                .bounded(redis::cmd("PING").query_async::<()>(&mut conn))
                .await?;
        }
        Ok(client)
    }

    /// A connection from the pool, round robin.
    pub fn conn(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        self.pool[i].clone()
    }

    /// Runs `op` within the command timeout.
    pub async fn bounded<T, F>(&self, op: F) -> Result<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.command_timeout, op).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// One command; a Redis error reply becomes `Err(Error::Redis)`.
    pub async fn query(&self, cmd: &Cmd) -> Result<Value> {
        let mut conn = self.conn();
        self.bounded(cmd.query_async(&mut conn)).await
    }
}
