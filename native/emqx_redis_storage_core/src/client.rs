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
use redis::{
    Cmd, ConnectionAddr, FromRedisValue, IntoConnectionInfo, Pipeline, RedisConnectionInfo, Script,
};

use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::keys::Keys;
use crate::router::{self, Router};

pub struct Client {
    pool: Vec<ConnectionManager>,
    next: AtomicUsize,
    command_timeout: Duration,
    keys: Keys,
    router: Router,
    /// Dropped with the client; background tasks (the route index sync) end then.
    _shutdown: tokio::sync::watch::Sender<()>,
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
        let redis_client = redis::Client::open(info)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            // Reconnects are retried by the next call, not in a long backoff loop
            // that would outlive the caller's deadline.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let connect_all = futures::future::try_join_all((0..config.pool_size).map(|_| {
            ConnectionManager::new_with_config(redis_client.clone(), manager_config.clone())
        }));
        // The manager retries once; two attempts must still fit the caller's wait.
        let pool = tokio::time::timeout(config.connect_timeout * 2, connect_all)
            .await
            .map_err(|_| Error::Connection("connect timeout".into()))?
            .map_err(|e| match Error::from(e) {
                Error::Timeout => Error::Connection("connect timeout".into()),
                other => other,
            })?;
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(());
        let client = Client {
            pool,
            next: AtomicUsize::new(0),
            command_timeout: config.command_timeout,
            keys: Keys::new(&config.key_prefix),
            router: Router::new(config.router.clone()),
            _shutdown: shutdown,
        };
        // A connection is made even when Redis then refuses every command
        // (NOAUTH, NOPERM): find out now, not on the first real call.
        for conn in &client.pool {
            let mut conn = conn.clone();
            client
                .bounded(redis::cmd("PING").query_async::<()>(&mut conn))
                .await?;
        }
        if config.router.mode == router::IndexMode::Redis {
            router::load_match_script(&client).await?;
        }
        if let Some(index) = &client.router.index {
            tokio::spawn(router::sync_index(
                index.clone(),
                redis_client,
                client.conn(),
                client.keys.clone(),
                config.router.clone(),
                config.connect_timeout,
                shutdown_rx,
            ));
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

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// One command; a Redis error reply becomes `Err(Error::Redis)`.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let mut conn = self.conn();
        self.bounded(cmd.query_async(&mut conn)).await
    }

    /// Runs a Lua script by its SHA, loading it first if Redis does not know it.
    pub async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<T> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let mut conn = self.conn();
        self.bounded(invocation.invoke_async(&mut conn)).await
    }

    /// Redis's clock in Unix milliseconds: the one clock every node agrees on.
    pub async fn now_ms(&self) -> Result<i64> {
        let (secs, micros): (i64, i64) = self.query(&redis::cmd("TIME")).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Commands for each of `slots`, added by `add(slot, pipeline)`, sent as
    /// one pipeline; the replies in order. Used by the global views over
    /// per-slot indexes.
    pub async fn for_slots<T: FromRedisValue>(
        &self,
        slots: impl IntoIterator<Item = u16>,
        add: impl Fn(u16, &mut Pipeline),
    ) -> Result<Vec<T>> {
        let mut pipe = Pipeline::new();
        for slot in slots {
            add(slot, &mut pipe);
        }
        if pipe.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        self.bounded(pipe.query_async(&mut conn)).await
    }
}
