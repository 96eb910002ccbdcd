//! One Redis server: the single one, or the master the sentinels name
//! (`sentinel.rs` finds it). A pool of `Link`s, each one pipelined TCP (or
//! TLS) connection of our own (`wire.rs`) that carries concurrent requests
//! and is opened again after it broke.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, Pipeline, RedisConnectionInfo, RedisFuture, RedisResult, Value};

use super::guard::BreakerState;
use super::health::ServerHealth;
use super::transport::{Alive, Transport};
use super::wire::{Expect, Wire};
use super::{connect_error, count, ServerState, ServerStatus};
use crate::config::{address, ClientConfig};
use crate::error::Result;

/// How to reach one server: its address, our transport, and the settings
/// (auth, database) sent when a connection opens.
#[derive(Clone)]
pub(super) struct Server {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) transport: Arc<Transport>,
    pub(super) settings: RedisConnectionInfo,
    pub(super) connect_timeout: Duration,
    pub(super) command_timeout: Duration,
    /// Shared by the links to this server (its clones).
    pub(super) health: Arc<ServerHealth>,
}

impl Server {
    /// A new connection, authenticated and on the configured database; its
    /// tasks end when the last clone of it is dropped or the server closes it.
    pub(super) async fn dial(&self) -> RedisResult<(Wire, Alive)> {
        let open = async {
            let (stream, alive) = self.transport.open(&self.host, self.port).await?;
            let wire = Wire::start(stream, alive.clone(), self.command_timeout);
            setup(&wire, &self.settings).await?;
            Ok((wire, alive))
        };
        tokio::time::timeout(self.connect_timeout, open)
            .await
            .unwrap_or_else(|_| Err(connect_timeout()))
    }
}

/// What redis-rs sends when it opens a connection (RESP2): `AUTH`, `SELECT`
/// and `CLIENT SETINFO` (whose errors are ignored, as the command asks), in
/// one round trip, and its errors for a refused `AUTH` or `SELECT`.
async fn setup(wire: &Wire, settings: &RedisConnectionInfo) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    if let Some(password) = settings.password() {
        pipe.cmd("AUTH").arg(settings.username()).arg(password);
    }
    if settings.db() != 0 {
        pipe.cmd("SELECT").arg(settings.db());
    }
    if let (Some(name), Some(version)) = (settings.lib_name(), settings.lib_ver()) {
        pipe.cmd("CLIENT").arg("SETINFO").arg("LIB-NAME").arg(name);
        pipe.cmd("CLIENT")
            .arg("SETINFO")
            .arg("LIB-VER")
            .arg(version);
    }
    let packed = pipe.get_packed_pipeline();
    let expect = Expect::Many {
        skip: 0,
        keep: pipe.len(),
    };
    let Value::Array(replies) = wire
        .call(|out| out.extend_from_slice(&packed), expect)
        .await?
    else {
        unreachable!("a pipeline is answered with an array");
    };
    let mut replies = replies.into_iter();
    if settings.password().is_some() {
        if let Some(Value::ServerError(_)) = replies.next() {
            return Err((
                ErrorKind::AuthenticationFailed,
                "Password authentication failed",
            )
                .into());
        }
    }
    if settings.db() != 0 {
        if let Some(Value::ServerError(e)) = replies.next() {
            let detail = e.details().unwrap_or_default().to_string();
            let kind = ErrorKind::Server(redis::ServerErrorKind::ResponseError);
            return Err((kind, "Redis server refused to switch database", detail).into());
        }
    }
    Ok(())
}

fn connect_timeout() -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout").into()
}

/// One multiplexed connection to a server, opened again on the next use
/// after it broke.
pub(super) struct Link {
    pub(super) server: Server,
    /// The open connection, its generation, and whether its stream is open.
    current: RwLock<Option<(u64, Wire, Alive)>>,
    /// Held while dialling, so that one call dials and the others wait for
    /// it; counts the connections made.
    dialing: tokio::sync::Mutex<u64>,
}

impl Link {
    fn new(server: Server) -> Arc<Link> {
        Arc::new(Link {
            server,
            current: RwLock::new(None),
            dialing: tokio::sync::Mutex::new(0),
        })
    }

    /// The connection, unless there is none or its stream has closed: a
    /// request is never handed to a connection known to be broken.
    pub(super) fn open(self: &Arc<Self>) -> Option<NodeConn> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some((generation, conn, alive)) if alive.is_open() => Some(NodeConn {
                link: self.clone(),
                generation: *generation,
                conn: conn.clone(),
            }),
            _ => None,
        }
    }

    pub(super) async fn get(self: &Arc<Self>) -> RedisResult<NodeConn> {
        if let Some(conn) = self.open() {
            return Ok(conn);
        }
        let mut made = self.dialing.lock().await;
        if let Some(conn) = self.open() {
            return Ok(conn); // dialled by the call we waited for
        }
        // Dialling is rare and its future large: boxed, it does not
        // enlarge the future of every call.
        let (conn, alive) = Box::pin(self.server.dial()).await.inspect_err(|e| {
            self.server.health.failed(e);
        })?;
        tracing::debug!(server = %alive.server(), connection = *made + 1, "connection_opened");
        if *made > 0 {
            tracing::info!(server = %alive.server(), "connection_restored");
        }
        *made += 1;
        if *made > 1 {
            count(&self.server.transport.metrics().connections.reconnects, 1);
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((*made, conn, alive));
        Ok(self.open().expect("just stored"))
    }

    /// Drops the connection of `generation` if it is still the current one.
    fn forget(&self, generation: u64) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if matches!(&*current, Some((g, _, _)) if *g == generation) {
            *current = None;
        }
    }
}

/// A connection of a `Link`; a failure that broke it makes the link dial
/// again on its next use.
#[derive(Clone)]
pub struct NodeConn {
    link: Arc<Link>,
    generation: u64,
    conn: Wire,
}

impl NodeConn {
    /// Notes in the server's health how a request fared.
    pub(super) fn check<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        let health = &self.link.server.health;
        match &result {
            // An error reply is an answer too: the round trip worked.
            Ok(_) => health.answered(),
            Err(e) if e.code().is_some() => health.answered(),
            Err(e) => {
                health.failed(e);
                if e.is_unrecoverable_error() {
                    self.link.forget(self.generation);
                }
            }
        }
        result
    }

    /// The connection itself.
    pub(super) fn wire(&self) -> &Wire {
        &self.conn
    }
}

impl ConnectionLike for NodeConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.check(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(cmd, offset, count).await;
            self.check(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.link.server.settings.db()
    }
}

/// Connections to one Redis server (the single one, or the current master).
pub(super) struct Pool {
    pub(super) links: Vec<Arc<Link>>,
}

fn redis_settings(config: &ClientConfig) -> RedisConnectionInfo {
    let mut info = RedisConnectionInfo::default()
        .set_db(config.database)
        .set_lib_name("emqx_redis_storage", env!("CARGO_PKG_VERSION"));
    if let Some(user) = &config.username {
        info = info.set_username(user);
    }
    if let Some(password) = &config.password {
        info = info.set_password(password);
    }
    info
}

/// A server of the deployment, with the client's settings.
pub(super) fn server(
    config: &ClientConfig,
    transport: &Arc<Transport>,
    host: &str,
    port: u16,
) -> Server {
    Server {
        host: host.to_string(),
        port,
        transport: transport.clone(),
        settings: redis_settings(config),
        connect_timeout: config.connect_timeout,
        command_timeout: config.command_timeout,
        health: Arc::new(ServerHealth::default()),
    }
}

/// A pool of connections to `host:port`, connected.
pub(super) async fn pool_at(
    config: &ClientConfig,
    transport: &Arc<Transport>,
    host: &str,
    port: u16,
) -> Result<Pool> {
    let master = server(config, transport, host, port);
    let links: Vec<Arc<Link>> = (0..config.pool_size)
        .map(|_| Link::new(master.clone()))
        .collect();
    // Each link dials within connect_timeout, and all at once.
    futures::future::try_join_all(links.iter().map(|link| link.get()))
        .await
        .map_err(connect_error)?;
    Ok(Pool { links })
}

/// The pool's server (the single one, or the master), in the breaker's state.
pub(super) fn status(pool: &RwLock<Arc<Pool>>, breaker: BreakerState) -> ServerStatus {
    let server = {
        let pool = pool.read().unwrap_or_else(|e| e.into_inner());
        pool.links[0].server.clone()
    };
    let state = match breaker {
        BreakerState::Closed => ServerState::Up,
        BreakerState::HalfOpen => ServerState::Connecting,
        BreakerState::Open => ServerState::Down,
    };
    ServerStatus {
        address: address(&server.host, server.port),
        state,
        health: server.health.report(),
    }
}
