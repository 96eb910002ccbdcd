//! A connection to one Redis deployment (single, Sentinel or Cluster),
//! shared by every process of the VM that holds its handle.
//!
//! Single and Sentinel: a pool of `Link`s, each one multiplexed TCP (or TLS)
//! connection that pipelines concurrent requests and is opened again after it
//! broke. Sentinel: the pool points at the master the sentinels name, and is
//! rebuilt when a call meets a lost connection or a `READONLY` reply.
//! Cluster: one redis-rs `ClusterConnection`, which routes by key slot and
//! follows MOVED and ASK; made anew when, after calls time out, the cluster
//! names other masters than it did (a frozen master closes no connection,
//! and redis-rs keeps waiting on it).
//!
//! Every operation is bounded by the command timeout, including waiting for
//! a reconnect. A command that provably never reached Redis (the connection
//! was already broken when it was written) is sent once more.

pub mod guard;
pub mod health;
pub mod scripts;
pub mod slots;
pub mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo,
    Pipeline, RedisConnectionInfo, RedisFuture, RedisResult, TlsCertificates, TlsMode, Value,
};

use crate::config::{ClientConfig, Mode, ServerNameCheck, Tls};
use crate::error::{Error, Result};
use crate::metrics::{Call, Metrics, Snapshot};
use guard::{Breaker, BreakerState, InFlight, Permit};
use health::{HealthReport, ServerHealth};
use scripts::Lua;
use slots::SLOTS;
use transport::{Alive, Transport};

/// A connection to send one command or pipeline on.
#[derive(Clone)]
pub enum Conn {
    Node(NodeConn),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How to reach one server: its address, our transport, and the settings
/// (auth, database) sent when a connection opens.
#[derive(Clone)]
struct Server {
    host: String,
    port: u16,
    transport: Arc<Transport>,
    settings: RedisConnectionInfo,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// Shared by the links to this server (its clones).
    health: Arc<ServerHealth>,
}

impl Server {
    /// A new multiplexed connection; its reader/writer task ends when the
    /// last clone of it is dropped or the server closes it.
    async fn dial(&self) -> RedisResult<(MultiplexedConnection, Alive)> {
        let open = async {
            let (stream, alive) = self.transport.open(&self.host, self.port).await?;
            let config =
                AsyncConnectionConfig::new().set_response_timeout(Some(self.command_timeout));
            let (conn, driver) =
                MultiplexedConnection::new_with_config(&self.settings, stream, config).await?;
            tokio::spawn(driver);
            Ok((conn, alive))
        };
        tokio::time::timeout(self.connect_timeout, open)
            .await
            .unwrap_or_else(|_| Err(connect_timeout()))
    }
}

/// `host:port,host:port`, as the config names them.
fn addresses(servers: &[(String, u16)]) -> String {
    let all: Vec<String> = servers.iter().map(|(h, p)| format!("{h}:{p}")).collect();
    all.join(",")
}

fn connect_timeout() -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout").into()
}

/// One multiplexed connection to a server, opened again on the next use
/// after it broke.
struct Link {
    server: Server,
    /// The open connection, its generation, and whether its stream is open.
    current: RwLock<Option<(u64, MultiplexedConnection, Alive)>>,
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
    fn open(self: &Arc<Self>) -> Option<NodeConn> {
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

    async fn get(self: &Arc<Self>) -> RedisResult<NodeConn> {
        if let Some(conn) = self.open() {
            return Ok(conn);
        }
        let mut made = self.dialing.lock().await;
        if let Some(conn) = self.open() {
            return Ok(conn); // dialled by the call we waited for
        }
        let (conn, alive) = self.server.dial().await.inspect_err(|e| {
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
    conn: MultiplexedConnection,
}

impl NodeConn {
    fn check<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
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
struct Pool {
    links: Vec<Arc<Link>>,
}

enum Target {
    Node(RwLock<Arc<Pool>>),
    Cluster(RwLock<Arc<Cluster>>),
}

/// The redis-rs cluster connection, and the masters of the slots as the
/// cluster named them when it was made.
struct Cluster {
    conn: ClusterConnection,
    masters: Vec<SlotMaster>,
}

/// Slots `first..=last` and the address of their master.
type SlotMaster = (u16, u16, String, u16);

/// Everything needed to reach Redis; cheap to clone into background tasks.
#[derive(Clone)]
pub struct Backend {
    target: Arc<Target>,
    config: Arc<ClientConfig>,
    transport: Arc<Transport>,
    next: Arc<AtomicUsize>,
    /// Held while the sentinels are asked for a new master: one at a time.
    failover: Arc<tokio::sync::Mutex<()>>,
    /// When a timed-out call last made us ask the sentinels.
    last_recheck: Arc<std::sync::Mutex<Option<Instant>>>,
    /// The configured servers as `host:port,...`, for the log.
    servers: Arc<str>,
    /// Open while Redis cannot be reached: calls fail at once.
    breaker: Arc<Breaker>,
    /// Cluster masters by address, as the PINGs of `status` found them:
    /// redis-rs owns the connections to them, so only those PINGs are seen.
    cluster_health: Arc<std::sync::Mutex<HashMap<String, Arc<ServerHealth>>>>,
    metrics: Arc<Metrics>,
    /// Completes when the client is dropped: background tasks end then.
    shutdown: tokio::sync::watch::Receiver<()>,
}

pub struct Client {
    backend: Backend,
    /// A bound on the calls in flight.
    in_flight: InFlight,
    /// Dropped with the client; background tasks end then (`Backend::closed`).
    _shutdown: tokio::sync::watch::Sender<()>,
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
fn server(config: &ClientConfig, transport: &Arc<Transport>, host: &str, port: u16) -> Server {
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

/// How long a call waits before it tries a loading Redis again.
const LOADING_PAUSE: Duration = Duration::from_millis(20);

/// What `Client::status` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub breaker: BreakerState,
    /// Why Redis could not be reached, the last time it could not.
    pub last_error: Option<String>,
    pub servers: Vec<ServerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// `host:port`.
    pub address: String,
    pub state: ServerState,
    pub health: HealthReport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    Up,
    /// Unreachable, and being dialled again right now.
    Connecting,
    Down,
}

/// Why a call failed, and whether its request may have reached Redis.
enum Failure {
    /// Provably not: no connection could be made (refused, dial failed),
    /// or Redis refused it unexecuted (`READONLY`). It may be sent again.
    NotSent(redis::RedisError),
    /// Perhaps: the request was handed to a connection.
    Sent(redis::RedisError),
}

impl Failure {
    /// A request handed to a connection failed with `e`.
    fn of_request(e: redis::RedisError) -> Failure {
        // The cluster client answers these itself, before sending: it found
        // no connection to the node, or could not make one.
        let unsent = e.is_connection_refusal()
            || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
            || matches!(e.code(), Some("READONLY" | "LOADING"));
        if unsent {
            Failure::NotSent(e)
        } else {
            Failure::Sent(e)
        }
    }

    fn redis_error(&self) -> &redis::RedisError {
        match self {
            Failure::NotSent(e) | Failure::Sent(e) => e,
        }
    }

    /// The caller's error: "not done" for a request that never reached
    /// Redis, "unknown outcome" for one that may have.
    fn into_error(self) -> Error {
        match self {
            Failure::NotSent(e) if e.code().is_none() => match Error::from(e) {
                Error::Timeout => Error::Connection("connect timeout".into()),
                Error::Connection(m) | Error::ConnectionLost(m) => Error::Connection(m),
                other => other,
            },
            Failure::NotSent(e) => Error::from(e),
            Failure::Sent(e) => match Error::from(e) {
                Error::Connection(m) => Error::ConnectionLost(m),
                other => other,
            },
        }
    }
}

impl Backend {
    async fn connect(
        config: ClientConfig,
        shutdown: tokio::sync::watch::Receiver<()>,
    ) -> Result<Backend> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new(config.slow_call_threshold));
        let transport = Arc::new(Transport::new(config.tls.as_ref(), metrics.clone())?);
        let servers: Arc<str> = addresses(&config.servers).into();
        let target = match &config.mode {
            Mode::Cluster => {
                Target::Cluster(RwLock::new(Arc::new(connect_cluster(&config).await?)))
            }
            Mode::Single | Mode::Sentinel { .. } => Target::Node(RwLock::new(Arc::new(
                connect_pool(&config, &transport).await?,
            ))),
        };
        Ok(Backend {
            target: Arc::new(target),
            transport,
            next: Arc::new(AtomicUsize::new(0)),
            failover: Arc::new(tokio::sync::Mutex::new(())),
            last_recheck: Arc::new(std::sync::Mutex::new(None)),
            breaker: Arc::new(Breaker::new(servers.clone())),
            servers,
            cluster_health: Arc::default(),
            metrics,
            config,
            shutdown,
        })
    }

    /// Completes when the client is dropped: background tasks end then.
    pub fn closed(&self) -> tokio::sync::watch::Receiver<()> {
        self.shutdown.clone()
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The client's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn is_cluster(&self) -> bool {
        matches!(*self.target, Target::Cluster(_))
    }

    /// A connection: from the pool round robin, or the cluster connection.
    async fn conn(&self) -> RedisResult<Conn> {
        let link = match &*self.target {
            Target::Cluster(cluster) => {
                let cluster = cluster.read().unwrap_or_else(|e| e.into_inner());
                return Ok(Conn::Cluster(cluster.conn.clone()));
            }
            Target::Node(pool) => {
                let pool = pool.read().unwrap_or_else(|e| e.into_inner());
                let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.links.len();
                pool.links[i].clone()
            }
        };
        Ok(Conn::Node(link.get().await?))
    }

    /// A pub/sub connection: to the current server, or to the `attempt`-th
    /// seed of a cluster (a cluster forwards PUBLISH to all nodes).
    pub async fn pubsub(&self, attempt: usize) -> Result<redis::aio::PubSub> {
        let server = match &*self.target {
            Target::Node(pool) => {
                let pool = pool.read().unwrap_or_else(|e| e.into_inner());
                pool.links[0].server.clone()
            }
            Target::Cluster(_) => {
                let (host, port) = &self.config.servers[attempt % self.config.servers.len()];
                server(&self.config, &self.transport, host, *port)
            }
        };
        let open = async {
            let (stream, _) = server.transport.open(&server.host, server.port).await?;
            redis::aio::PubSub::new(&server.settings, stream).await
        };
        let pubsub = tokio::time::timeout(self.config.connect_timeout, open)
            .await
            .map_err(|_| Error::Timeout)??;
        Ok(pubsub)
    }

    /// Runs `op` on a connection within the command timeout; resends once a
    /// request that never reached Redis, and follows a Sentinel failover.
    /// While Redis is known to be unreachable, fails at once.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.logged(self.attempt(op).await)
    }

    /// Logs a call that did not get through to Redis, or got no answer:
    /// the error's kind and text (never a command's arguments).
    fn logged<T>(&self, result: Result<T>) -> Result<T> {
        let (error, reason) = match &result {
            Err(Error::Connection(reason)) => ("connection", reason.as_str()),
            Err(Error::ConnectionLost(reason)) => ("connection_lost", reason.as_str()),
            Err(Error::Timeout) => ("timeout", ""),
            _ => return result,
        };
        tracing::warn!(
            servers = %self.servers,
            error,
            reason,
            "call_failed"
        );
        result
    }

    async fn attempt<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.breaker.check()?;
        let attempts = async {
            let started = Instant::now();
            let mut resent = false;
            let failure = loop {
                let (failed, had_conn) = match self.conn().await {
                    Ok(conn) => match self.sent(op(conn)).await {
                        Ok(value) => return Ok(value),
                        Err(e) => (Failure::of_request(e), true),
                    },
                    Err(e) => (Failure::NotSent(e), false),
                };
                // A Redis that is loading its data refuses every command
                // unexecuted for a moment: wait for it, within the deadline.
                let code = failed.redis_error().code();
                if code == Some("LOADING")
                    && started.elapsed() + 2 * LOADING_PAUSE < self.config.command_timeout
                {
                    tokio::time::sleep(LOADING_PAUSE).await;
                    continue;
                }
                // Failover first: a refused connection to a dead master is
                // "not sent" too, and resending it to the same address
                // would fail again. A request that may have been carried
                // out is never sent twice; one that was not is sent again
                // (once) to the new master, or where the cluster client
                // could not reach a node.
                let moved = self.follow_failover(failed.redis_error()).await;
                let readonly = code == Some("READONLY");
                let resend = !resent
                    && matches!(failed, Failure::NotSent(_))
                    && (moved || (had_conn && !readonly));
                if !resend {
                    break failed;
                }
                resent = true;
            };
            let unreachable = matches!(&failure, Failure::NotSent(e) if e.code().is_none());
            let error = failure.into_error();
            if unreachable {
                self.trip(&error);
            }
            Err(error)
        };
        let result = tokio::time::timeout(self.config.command_timeout, attempts)
            .await
            .unwrap_or(Err(Error::Timeout));
        if matches!(result, Err(Error::Timeout)) {
            self.recheck();
        }
        result
    }

    /// `request`, counted as one request handed to a connection.
    fn sent<F: Future>(&self, request: F) -> F {
        count(&self.metrics.connections.requests, 1);
        request
    }

    /// After Redis could not be reached: opens the breaker and probes in the
    /// background until Redis answers again. A cluster is only suspected: a
    /// node that cannot be reached does not make the others so; the breaker
    /// opens if the probe finds no node that answers.
    fn trip(&self, error: &Error) {
        if !self.breaker.trip(error, !self.is_cluster()) {
            return;
        }
        let backend = self.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = shutdown.changed().await;
            };
            backend
                .breaker
                .probe_until_closed(|| backend.probe(), stop)
                .await;
        });
    }

    /// The servers in use: the single server or the Sentinel master (in
    /// the breaker's state), or each master the cluster names now (asked
    /// with PING).
    async fn status(&self) -> Status {
        let breaker = self.breaker.state();
        let servers = match &*self.target {
            Target::Node(pool) => {
                let server = {
                    let pool = pool.read().unwrap_or_else(|e| e.into_inner());
                    pool.links[0].server.clone()
                };
                let state = match breaker {
                    BreakerState::Closed => ServerState::Up,
                    BreakerState::HalfOpen => ServerState::Connecting,
                    BreakerState::Open => ServerState::Down,
                };
                vec![ServerStatus {
                    address: format!("{}:{}", server.host, server.port),
                    state,
                    health: server.health.report(),
                }]
            }
            Target::Cluster(cluster) => {
                let current = cluster.read().unwrap_or_else(|e| e.into_inner()).clone();
                // The masters now: after a failover the list the connection
                // was made with names a dead master, and redis-rs has
                // followed the cluster without us.
                let ask =
                    tokio::time::timeout(self.config.connect_timeout, slot_masters(&current.conn));
                let masters = match ask.await {
                    Ok(Ok(masters)) => masters,
                    _ => current.masters.clone(),
                };
                let mut addresses: Vec<(String, u16)> = masters
                    .iter()
                    .map(|(_, _, host, port)| (host.clone(), *port))
                    .collect();
                addresses.sort();
                addresses.dedup();
                let pings = addresses.into_iter().map(|(host, port)| {
                    let mut conn = current.conn.clone();
                    let timeout = self.config.connect_timeout;
                    let health = self.cluster_server_health(&format!("{host}:{port}"));
                    async move {
                        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        let ping = conn.route_command(redis::cmd("PING"), route);
                        let up = match tokio::time::timeout(timeout, ping).await {
                            Ok(Ok(_)) => true,
                            Ok(Err(e)) => {
                                health.failed(&e);
                                false
                            }
                            Err(_) => {
                                health.failed(&"PING timed out");
                                false
                            }
                        };
                        if up {
                            health.answered();
                        }
                        ServerStatus {
                            address: format!("{host}:{port}"),
                            state: if up {
                                ServerState::Up
                            } else {
                                ServerState::Down
                            },
                            health: health.report(),
                        }
                    }
                });
                futures::future::join_all(pings).await
            }
        };
        Status {
            breaker,
            last_error: self.breaker.last_error(),
            servers,
        }
    }

    /// The health record of the cluster master at `address`.
    fn cluster_server_health(&self, address: &str) -> Arc<ServerHealth> {
        let mut known = self
            .cluster_health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        known.entry(address.to_string()).or_default().clone()
    }

    /// One round trip to Redis, bypassing the breaker; in Sentinel mode it
    /// also asks the sentinels whether the master moved, and tries the new one.
    async fn probe(&self) -> Result<()> {
        let result = self.ping().await;
        if result.is_err() && self.move_to_master(true).await {
            return self.ping().await;
        }
        result
    }

    async fn ping(&self) -> Result<()> {
        let ping = async {
            let mut conn = self.conn().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await
        };
        match tokio::time::timeout(self.config.connect_timeout, ping).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::Connection("connect timeout".into())),
        }
    }

    /// In Sentinel mode, after a lost connection or a write refused by a
    /// replica, asks the sentinels for the master and connects a new pool to
    /// it. True if the call should be tried again.
    async fn follow_failover(&self, e: &redis::RedisError) -> bool {
        let readonly = e.code() == Some("READONLY");
        let lost = e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal();
        (readonly || lost) && self.move_to_master(false).await
    }

    /// After a call timed out: a master that froze, or whose host vanished
    /// without closing the connections, gives timeouts rather than errors,
    /// and neither our pool nor redis-rs's cluster client leaves it. At most
    /// once a second, looks in the background for a new master: asks the
    /// sentinels, or the cluster for its slots' masters.
    fn recheck(&self) {
        if self.config.mode == Mode::Single {
            return;
        }
        {
            let mut last = self.last_recheck.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let backend = self.clone();
        tokio::spawn(async move {
            match &*backend.target {
                Target::Node(_) => backend.move_to_master(true).await,
                Target::Cluster(_) => backend.follow_cluster().await,
            }
        });
    }

    /// Makes a new cluster connection if the cluster now names other masters
    /// for its slots than when the current one was made. True if it did.
    async fn follow_cluster(&self) -> bool {
        let Target::Cluster(cluster) = &*self.target else {
            return false;
        };
        let _one_at_a_time = self.failover.lock().await;
        let current = cluster.read().unwrap_or_else(|e| e.into_inner()).clone();
        let ask = tokio::time::timeout(self.config.command_timeout, slot_masters(&current.conn));
        match ask.await {
            Ok(Ok(masters)) if masters != current.masters => {}
            _ => return false,
        }
        match connect_cluster(&self.config).await {
            Ok(fresh) => {
                tracing::warn!(
                    old_masters = %slot_master_addresses(&current.masters),
                    new_masters = %slot_master_addresses(&fresh.masters),
                    "cluster_topology_refreshed"
                );
                *cluster.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
                count(&self.metrics.connections.topology_refreshes, 1);
                true
            }
            Err(_) => false,
        }
    }

    /// Connects a new pool to the master the sentinels name (with
    /// `only_if_moved`, only if that is another server than now). True if
    /// the pool changed, here or in a concurrent call.
    async fn move_to_master(&self, only_if_moved: bool) -> bool {
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
                let old = format!("{}:{}", current.host, current.port);
                let new = format!("{host}:{port}");
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

    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// A pipeline on one connection. On a cluster all its keys must share a
    /// slot (it goes to the node of its first key).
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        self.run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// Runs a Lua script by its SHA, loading it first if Redis does not know it.
    pub async fn eval<T: FromRedisValue>(
        &self,
        script: &Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<T> {
        let mut invocation = script.script().prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let invocation = &invocation;
        self.run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// Independent commands on keys of any slots, replies in order: one
    /// pipeline on a single server; on a cluster one pipeline per master,
    /// for the commands whose key slot it serves.
    pub async fn each<T: FromRedisValue>(&self, cmds: Vec<Cmd>) -> Result<Vec<T>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let Some(conn) = self.cluster_conn() else {
            let mut pipe = Pipeline::with_capacity(cmds.len());
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            return self.pipeline(&pipe).await;
        };
        self.logged(self.each_by_master(conn, cmds).await)
    }

    async fn each_by_master<T: FromRedisValue>(
        &self,
        conn: ClusterConnection,
        cmds: Vec<Cmd>,
    ) -> Result<Vec<T>> {
        self.breaker.check()?;
        let work = async {
            let values = match by_master(&conn, &cmds, &self.metrics).await {
                Ok(values) => values,
                // The topology moved under us (MOVED, a failover): one by one,
                // which follows redirections.
                Err(_) => {
                    futures::future::try_join_all(cmds.iter().map(|cmd| {
                        let mut conn = conn.clone();
                        self.sent(async move { cmd.query_async::<Value>(&mut conn).await })
                    }))
                    .await?
                }
            };
            values
                .into_iter()
                .map(|v| T::from_redis_value(v))
                .collect::<std::result::Result<Vec<T>, _>>()
                .map_err(redis::RedisError::from)
        };
        let result = tokio::time::timeout(self.config.command_timeout, work)
            .await
            .unwrap_or(Err(Error::Timeout.into_redis()))
            .map_err(Error::from);
        if matches!(result, Err(Error::Timeout)) {
            self.recheck();
        }
        result
    }

    /// The current cluster connection; None if not a cluster.
    fn cluster_conn(&self) -> Option<ClusterConnection> {
        let Target::Cluster(cluster) = &*self.target else {
            return None;
        };
        let cluster = cluster.read().unwrap_or_else(|e| e.into_inner());
        Some(cluster.conn.clone())
    }
}

/// The masters of the cluster's slots, from `CLUSTER SLOTS` asked of a
/// random node, in slot order.
async fn slot_masters(conn: &ClusterConnection) -> RedisResult<Vec<SlotMaster>> {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
    let reply = conn
        .clone()
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let entries: Vec<Vec<Value>> = FromRedisValue::from_redis_value(reply)?;
    let mut masters: Vec<SlotMaster> = entries
        .iter()
        .filter_map(|entry| match (entry.first(), entry.get(1), entry.get(2)) {
            (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(node))) => {
                match (node.first(), node.get(1)) {
                    (Some(Value::BulkString(host)), Some(Value::Int(port))) => Some((
                        *first as u16,
                        *last as u16,
                        String::from_utf8_lossy(host).into_owned(),
                        *port as u16,
                    )),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    masters.sort();
    Ok(masters)
}

/// `first-last=host:port,...`: which master serves which slots.
fn slot_master_addresses(masters: &[SlotMaster]) -> String {
    let all: Vec<String> = masters
        .iter()
        .map(|(first, last, host, port)| format!("{first}-{last}={host}:{port}"))
        .collect();
    all.join(",")
}

/// Sends `cmds` as one pipeline per master (from `CLUSTER SLOTS`), each
/// command to the master of its key's slot; replies in the order of `cmds`.
async fn by_master(
    conn: &ClusterConnection,
    cmds: &[Cmd],
    metrics: &Metrics,
) -> RedisResult<Vec<Value>> {
    use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
    let ranges: Vec<(u16, u16)> = slot_masters(conn)
        .await?
        .into_iter()
        .map(|(first, last, _, _)| (first, last))
        .collect();
    let mut groups: Vec<(u16, Pipeline, Vec<usize>)> = Vec::new();
    for (i, cmd) in cmds.iter().enumerate() {
        let slot = cmd
            .args_iter()
            .nth(1)
            .map(|arg| match arg {
                redis::Arg::Simple(key) => slots::key_slot(key),
                _ => 0,
            })
            .unwrap_or(0);
        let range = ranges
            .iter()
            .position(|(a, b)| (*a..=*b).contains(&slot))
            .ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Client, "slot not served"))
            })?;
        let start = ranges[range].0;
        match groups.iter_mut().find(|g| g.0 == start) {
            Some(group) => {
                group.1.add_command(cmd.clone());
                group.2.push(i);
            }
            None => {
                let mut pipe = Pipeline::new();
                pipe.add_command(cmd.clone());
                groups.push((start, pipe, vec![i]));
            }
        }
    }
    count(&metrics.connections.requests, groups.len() as u64);
    let replies =
        futures::future::try_join_all(groups.into_iter().map(|(start, pipe, positions)| {
            let mut conn = conn.clone();
            async move {
                let count = positions.len();
                let route =
                    SingleNodeRoutingInfo::SpecificNode(Route::new(start, SlotAddr::Master));
                let values = conn.route_pipeline(pipe, 0, count, route).await?;
                Ok::<_, redis::RedisError>(positions.into_iter().zip(values))
            }
        }))
        .await?;
    let mut out = vec![Value::Nil; cmds.len()];
    for (i, value) in replies.into_iter().flatten() {
        if let Value::ServerError(e) = value {
            return Err(e.into());
        }
        out[i] = value;
    }
    Ok(out)
}

fn count(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The pool, connected: to `servers[0]`, or to the master the sentinels name.
async fn connect_pool(config: &ClientConfig, transport: &Arc<Transport>) -> Result<Pool> {
    let (host, port) = match &config.mode {
        Mode::Sentinel { .. } => find_master(config, transport).await?,
        _ => config.servers[0].clone(),
    };
    pool_at(config, transport, &host, port).await
}

/// A pool of connections to `host:port`, connected.
async fn pool_at(
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

/// Asks the sentinels, in order, for the address of the master; the first
/// that names one wins. If none does, the first failure is the error.
async fn find_master(config: &ClientConfig, transport: &Arc<Transport>) -> Result<(String, u16)> {
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

/// The redis-rs cluster client opens its node connections itself, with
/// redis-rs's TLS: it checks each node's certificate against the address
/// the cluster announces for it (or, with `disable`, only the chain).
async fn connect_cluster(config: &ClientConfig) -> Result<Cluster> {
    let seeds: Vec<ConnectionInfo> = config
        .servers
        .iter()
        .map(|(host, port)| {
            let addr = match &config.tls {
                None => ConnectionAddr::Tcp(host.clone(), *port),
                Some(tls) => ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: !tls.verify,
                    tls_params: None,
                },
            };
            addr.into_connection_info()
        })
        .collect::<RedisResult<_>>()?;
    let mut builder = ClusterClientBuilder::new(seeds)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.command_timeout)
        .retries(6)
        .min_retry_wait(10)
        .max_retry_wait(500);
    if let Some(user) = &config.username {
        builder = builder.username(user.clone());
    }
    if let Some(pass) = &config.password {
        builder = builder.password(pass.clone());
    }
    if let Some(tls) = &config.tls {
        builder = cluster_tls(builder, tls)?;
    }
    let client = builder.build()?;
    // redis-rs can wait forever for a cluster that does not answer.
    let connect = async {
        let conn = client.get_async_connection().await?;
        let masters = slot_masters(&conn).await?;
        Ok(Cluster { conn, masters })
    };
    tokio::time::timeout(config.connect_timeout * 2, connect)
        .await
        .map_err(|_| Error::Connection("connect timeout".into()))?
        .map_err(connect_error)
}

fn cluster_tls(builder: ClusterClientBuilder, tls: &Tls) -> Result<ClusterClientBuilder> {
    let names = match &tls.server_name {
        ServerNameCheck::Host => false,
        ServerNameCheck::Disable => true,
        // redis-rs dials cluster nodes itself and checks their certificates
        // against the addresses the cluster announces; it has no override.
        ServerNameCheck::Name(_) => {
            return Err(Error::InvalidConfig(
                "redis.ssl.server_name_indication",
                "disable, or unset, with redis_type cluster (nodes are checked against the \
                 names they announce: cluster-announce-hostname)"
                    .into(),
            ))
        }
    };
    let certs = TlsCertificates {
        client_tls: match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            _ => None,
        },
        root_cert: tls.ca.clone(),
    };
    let mode = if tls.verify {
        TlsMode::Secure
    } else {
        TlsMode::Insecure
    };
    Ok(builder
        .tls(mode)
        .certs(certs)
        .danger_accept_invalid_hostnames(names))
}

fn connect_error(e: redis::RedisError) -> Error {
    match Error::from(e) {
        Error::Timeout => Error::Connection("connect timeout".into()),
        other => other,
    }
}

impl Client {
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        // rustls needs one process-wide crypto provider; the first install wins.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(());
        let backend = Backend::connect(config.clone(), shutdown_rx).await?;
        let client = Client {
            backend,
            in_flight: InFlight::new(config.max_inflight),
            _shutdown: shutdown,
        };
        // A connection is made even when Redis then refuses every command
        // (NOAUTH, NOPERM): find out now, not on the first real call.
        let pings = match &*client.backend.target {
            Target::Cluster(_) => 1,
            Target::Node(_) => config.pool_size,
        };
        for _ in 0..pings {
            client.backend.query::<Value>(&redis::cmd("PING")).await?;
        }
        Ok(client)
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Admits one more call of `operation` (a name for the metrics), or
    /// refuses it at once with `Error::Overloaded` when `max_inflight` are
    /// already in flight. Either way the call is counted and timed.
    pub fn admit(&self, operation: &'static str) -> Result<Admitted> {
        let call = self.backend.metrics.start(operation);
        match self.in_flight.admit() {
            Ok(permit) => Ok(Admitted { permit, call }),
            Err(refused) => {
                let refused = Err(refused);
                call.finish(&refused);
                refused
            }
        }
    }

    /// What the client counted.
    pub fn metrics(&self) -> Snapshot {
        self.backend.metrics.snapshot()
    }

    /// The requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.current()
    }

    /// Each server the client talks to, with its state, and the breaker's.
    pub async fn status(&self) -> Status {
        self.backend.status().await
    }

    /// One command; a Redis error reply becomes `Err(Error::Redis)`.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.backend.query(cmd).await
    }

    /// A read-only script.
    pub async fn eval<T: FromRedisValue>(
        &self,
        script: &Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<T> {
        self.backend.eval(script, keys, args).await
    }

    /// A script that writes. With `wait_replicas` set, it is followed on the
    /// same connection by `WAIT`, and succeeds only once that many replicas
    /// have the write.
    pub async fn write_eval<T: FromRedisValue>(
        &self,
        script: &Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<T> {
        let wanted = self.backend.config.wait_replicas;
        if wanted == 0 {
            return self.eval(script, keys, args).await;
        }
        let mut pipe = redis::pipe();
        let eval = pipe.cmd("EVALSHA").arg(script.hash()).arg(keys.len());
        for key in keys {
            eval.arg(*key);
        }
        for arg in args {
            eval.arg(*arg);
        }
        pipe.cmd("WAIT")
            .arg(wanted)
            .arg(self.backend.config.wait_timeout.as_millis() as u64);
        let (value, acked): (T, u32) = match self.backend.pipeline(&pipe).await {
            // A script in a pipeline is not loaded on demand: load, then retry.
            Err(Error::Redis(msg)) if msg.starts_with("NOSCRIPT") => {
                self.reload_script(script).await?;
                self.backend.pipeline(&pipe).await?
            }
            other => other?,
        };
        if acked < wanted {
            return Err(Error::NotReplicated { acked, wanted });
        }
        Ok(value)
    }

    /// A command that writes; see `write_eval`.
    pub async fn write_query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let wanted = self.backend.config.wait_replicas;
        if wanted == 0 {
            return self.query(cmd).await;
        }
        let mut pipe = redis::pipe();
        pipe.add_command(cmd.clone())
            .cmd("WAIT")
            .arg(wanted)
            .arg(self.backend.config.wait_timeout.as_millis() as u64);
        let (value, acked): (T, u32) = self.backend.pipeline(&pipe).await?;
        if acked < wanted {
            return Err(Error::NotReplicated { acked, wanted });
        }
        Ok(value)
    }

    /// Loads a script on every node that may run it.
    pub async fn load_script(&self, script: &Lua) -> Result<()> {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(script.source());
        match self.backend.cluster_conn() {
            None => {
                self.query::<Value>(&load).await?;
            }
            Some(mut conn) => {
                let route = redis::cluster_routing::RoutingInfo::MultiNode((
                    redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                    Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
                ));
                tokio::time::timeout(
                    self.backend.config.command_timeout,
                    conn.route_command(load, route),
                )
                .await
                .map_err(|_| Error::Timeout)??;
            }
        }
        Ok(())
    }

    /// Loads a script again after Redis answered NOSCRIPT: it restarted
    /// or failed over, or its script cache was flushed.
    pub async fn reload_script(&self, script: &Lua) -> Result<()> {
        self.load_script(script).await?;
        tracing::info!(sha = script.hash(), "script_reloaded");
        Ok(())
    }

    /// Redis's clock in Unix milliseconds: the one clock every node agrees on.
    pub async fn now_ms(&self) -> Result<i64> {
        let (secs, micros): (i64, i64) = self.query(&redis::cmd("TIME")).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// The same kind of command for each slot; replies in order.
    pub async fn for_slots<T: FromRedisValue>(
        &self,
        slots: impl IntoIterator<Item = u16>,
        cmd: impl Fn(u16) -> Cmd,
    ) -> Result<Vec<T>> {
        self.backend
            .each(slots.into_iter().map(cmd).collect())
            .await
    }
    /// The slots whose per-slot key (built by `key`) is a hash, from one
    /// `TYPE` per slot: only those need a script. Any other type there is
    /// corrupt data of `kind`.
    pub async fn slots_with_hash(
        &self,
        kind: &'static str,
        key: impl Fn(u16) -> Vec<u8>,
    ) -> Result<Vec<u16>> {
        let types: Vec<String> = self
            .for_slots(0..SLOTS, |slot| {
                let mut cmd = redis::cmd("TYPE");
                cmd.arg(key(slot));
                cmd
            })
            .await?;
        if types.iter().any(|t| t != "hash" && t != "none") {
            return Err(Error::corrupt(kind, "wrong type"));
        }
        Ok((0..SLOTS)
            .zip(&types)
            .filter(|(_, t)| *t == "hash")
            .map(|(slot, _)| slot)
            .collect())
    }
}

/// A call admitted by `Client::admit`: it holds its place in flight and is
/// timed until it is finished (or dropped).
pub struct Admitted {
    permit: Permit,
    call: Call,
}

impl Admitted {
    pub fn finish<T>(self, result: &Result<T>) {
        self.call.finish(result);
        drop(self.permit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_provably_unsent_requests_are_not_done() {
        let io = |kind| redis::RedisError::from(std::io::Error::new(kind, "x"));
        let of = |e| matches!(Failure::of_request(e), Failure::NotSent(_));
        assert!(of(io(std::io::ErrorKind::ConnectionRefused)));
        // A broken pipe or a reset may come after the request was written.
        assert!(!of(io(std::io::ErrorKind::BrokenPipe)));
        assert!(!of(io(std::io::ErrorKind::ConnectionReset)));
        assert!(!of(io(std::io::ErrorKind::TimedOut)));
        let lost = Failure::of_request(io(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(lost.into_error(), Error::ConnectionLost(_)));
        let refused = Failure::NotSent(io(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(refused.into_error(), Error::Connection(_)));
        let dial_timeout = Failure::NotSent(io(std::io::ErrorKind::TimedOut));
        assert_eq!(
            dial_timeout.into_error(),
            Error::Connection("connect timeout".into())
        );
        let timed_out = Failure::of_request(io(std::io::ErrorKind::TimedOut));
        assert_eq!(timed_out.into_error(), Error::Timeout);
    }
}
