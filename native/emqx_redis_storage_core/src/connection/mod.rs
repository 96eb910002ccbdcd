//! The connection layer: a connection to one Redis deployment (single,
//! Sentinel or Cluster), shared by every process of the VM that holds its
//! handle. It knows nothing of what is kept in Redis (that is `crate::store`).
//!
//! Single and Sentinel (`single.rs`): a pool of `Link`s, each one multiplexed
//! TCP (or TLS) connection that pipelines concurrent requests and is opened
//! again after it broke. Sentinel (`sentinel.rs`): the pool points at the
//! master the sentinels name, and is rebuilt when a call meets a lost
//! connection or a `READONLY` reply.
//! Cluster (`cluster.rs`): one redis-rs `ClusterConnection`, which routes by
//! key slot and follows MOVED and ASK; made anew when, after calls time out,
//! the cluster names other masters than it did (a frozen master closes no
//! connection, and redis-rs keeps waiting on it).
//!
//! Here: the `Client` the domains call, and the `Backend` that runs each
//! call on whichever of them. Every operation is bounded by the command
//! timeout, including waiting for a reconnect. A command that provably never
//! reached Redis (the connection was already broken when it was written) is
//! sent once more.

mod cluster;
pub mod group;
pub mod guard;
pub mod health;
pub mod scripts;
mod sentinel;
mod single;
pub mod slots;
pub mod transport;
pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::config::{address, ClientConfig, Mode};
use crate::error::{Error, Result};
use crate::metrics::{Call, Metrics, Snapshot};
use cluster::{connect_cluster, Cluster};
use group::{Call as GroupCall, Groups};
use guard::{Breaker, BreakerState, InFlight, Permit};
use health::{HealthReport, ServerHealth};
use scripts::Lua;
use sentinel::find_master;
use single::{pool_at, server, Link, NodeConn, Pool};
use slots::SLOTS;
use transport::Transport;
use wire::{Answer, Expect, Request};

/// Consecutive calls that take the same connection of a pool: callers
/// that arrive together share one connection, and so its writes (see
/// `wire.rs`), instead of each taking the next connection
/// round robin. Measured at 64 processes, pool of 4: Redis read 19
/// commands per read instead of 9, and the VM's CPU per `q` SET went from
/// 8.8 to 7.1 µs (16 and 32 calls per connection measured between).
const CALLS_PER_LINK: usize = 64;

/// How many times a call loads its script again after NOSCRIPT.
const MAX_RELOADS: u32 = 3;

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

/// A call of `Backend::send` on a connection of the pool.
struct Pending<F> {
    cmd: Cmd,
    script: Option<&'static Lua>,
    conn: NodeConn,
    backend: Backend,
    started: Instant,
    done: F,
}

impl<F: FnOnce(Result<Value>) + Send + 'static> Request for Pending<F> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.cmd.write_packed_command(out);
    }
}

impl<F: FnOnce(Result<Value>) + Send + 'static> Answer for Pending<F> {
    fn answer(self: Box<Self>, reply: RedisResult<Value>) {
        let Pending {
            cmd,
            script,
            conn,
            backend,
            started,
            done,
        } = *self;
        match conn.check(reply).and_then(Value::extract_error) {
            Ok(value) => done(Ok(value)),
            Err(e) => {
                // What a retry, a failover or loading the script follows;
                // any other error reply is the answer.
                let goes_on = match e.code() {
                    None | Some("LOADING" | "READONLY") => true,
                    Some("NOSCRIPT") => script.is_some(),
                    Some(_) => false,
                };
                if goes_on {
                    backend.go_on(cmd, script, Some(e), started, done)
                } else {
                    done(Err(e.into()))
                }
            }
        }
    }
}

/// `host:port,host:port`, as the config names them.
fn addresses(servers: &[(String, u16)]) -> String {
    let all: Vec<String> = servers.iter().map(|(h, p)| address(h, *p)).collect();
    all.join(",")
}

/// The backend: a pool (single, or Sentinel's master) or a cluster.
enum Target {
    Node(RwLock<Arc<Pool>>),
    Cluster(RwLock<Arc<Cluster>>),
}

/// Everything needed to reach Redis; one reference, cheap to clone into
/// background tasks and into the completion of each call.
#[derive(Clone)]
pub struct Backend(Arc<Reach>);

impl std::ops::Deref for Backend {
    type Target = Reach;
    fn deref(&self) -> &Reach {
        &self.0
    }
}

pub struct Reach {
    target: Arc<Target>,
    config: Arc<ClientConfig>,
    transport: Arc<Transport>,
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
    /// When each script (by SHA) was last loaded again after NOSCRIPT; one
    /// load at a time (`reload_script`).
    reloads: tokio::sync::Mutex<HashMap<String, Instant>>,
    /// Calls of one script that wait to go as one group (group commit).
    groups: Groups,
}

pub struct Client {
    backend: Backend,
    /// A bound on the calls in flight.
    in_flight: InFlight,
    /// Dropped with the client; background tasks end then (`Backend::closed`).
    _shutdown: tokio::sync::watch::Sender<()>,
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
        Ok(Backend(Arc::new(Reach {
            target: Arc::new(target),
            transport,
            failover: Arc::new(tokio::sync::Mutex::new(())),
            last_recheck: Arc::new(std::sync::Mutex::new(None)),
            breaker: Arc::new(Breaker::new(servers.clone())),
            servers,
            cluster_health: Arc::default(),
            metrics,
            config,
            shutdown,
            reloads: tokio::sync::Mutex::new(HashMap::new()),
            groups: Groups::default(),
        })))
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

    /// A connection: from the pool, `CALLS_PER_LINK` calls at a time round
    /// robin, or the cluster connection.
    async fn conn(&self) -> RedisResult<Conn> {
        let link = match &*self.target {
            Target::Cluster(cluster) => {
                let cluster = cluster.read().unwrap_or_else(|e| e.into_inner());
                return Ok(Conn::Cluster(cluster.conn.clone()));
            }
            Target::Node(pool) => self.link(pool),
        };
        Ok(Conn::Node(link.get().await?))
    }

    /// The pool's link for the next call: `CALLS_PER_LINK` calls of a
    /// thread take the same one. Counted per thread: threads do not
    /// contend on one counter.
    fn link(&self, pool: &RwLock<Arc<Pool>>) -> Arc<Link> {
        thread_local! {
            static CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        }
        let n = CALLS.with(|calls| {
            let n = calls.get();
            calls.set(n.wrapping_add(1));
            n
        });
        let pool = pool.read().unwrap_or_else(|e| e.into_inner());
        pool.links[n / CALLS_PER_LINK % pool.links.len()].clone()
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
        self.attempts(op, None, Instant::now()).await
    }

    /// A call's tries until `started` + the command timeout: from the
    /// start, or after `first`, a request that failed on the connection it
    /// was handed to (`send`).
    async fn attempts<T, F, Fut>(
        &self,
        op: F,
        first: Option<RedisError>,
        started: Instant,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempts = async {
            let mut resent = false;
            let mut first = first.map(|e| (Failure::of_request(e), true));
            let failure = loop {
                let (failed, had_conn) = match first.take() {
                    Some(failed) => failed,
                    None => match self.conn().await {
                        Ok(conn) => match self.sent(op(conn)).await {
                            Ok(value) => return Ok(value),
                            Err(e) => (Failure::of_request(e), true),
                        },
                        Err(e) => (Failure::NotSent(e), false),
                    },
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
                let moved = Box::pin(self.follow_failover(failed.redis_error())).await;
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
        let deadline = started + self.config.command_timeout;
        let result = tokio::time::timeout_at(deadline.into(), attempts)
            .await
            .unwrap_or(Err(Error::Timeout));
        if matches!(result, Err(Error::Timeout)) {
            self.recheck();
        }
        result
    }

    /// `query` of one command, answered by `done` on a runtime thread. On
    /// an open connection of the pool the caller queues the request there
    /// itself and the connection's reader hands the reply to `done`: the
    /// call takes no task of its own. Elsewhere (a cluster, a connection
    /// being made, the breaker open), and after a failure on the
    /// connection, a task goes on as `query` does.
    /// `script`: the script `cmd` calls (its `EVALSHA`), loaded again and
    /// retried after NOSCRIPT.
    pub fn send<F: FnOnce(Result<Value>) + Send + 'static>(
        &self,
        cmd: Cmd,
        script: Option<&'static Lua>,
        done: F,
    ) {
        let started = Instant::now();
        let conn = match &*self.target {
            Target::Node(pool) if !self.breaker.is_open() => self.link(pool).open(),
            _ => None,
        };
        let Some(conn) = conn else {
            return self.go_on(cmd, script, None, started, done);
        };
        count(&self.metrics.connections.requests, 1);
        let deadline = (started + self.config.command_timeout).into();
        let request = Box::new(Pending {
            cmd,
            script,
            conn,
            backend: self.clone(),
            started,
            done,
        });
        if let Err(request) = request
            .conn
            .wire()
            .clone()
            .send(request, Expect::One, deadline)
        {
            // The connection ended just now: the request never left.
            request.answer(Err(wire::not_sent()));
        }
    }

    /// The rest of a `send`, in a task, as `query` (or a script's `eval`):
    /// from the start, or after `failed`.
    fn go_on(
        &self,
        cmd: Cmd,
        script: Option<&'static Lua>,
        failed: Option<RedisError>,
        started: Instant,
        done: impl FnOnce(Result<Value>) + Send + 'static,
    ) {
        let backend = self.clone();
        tokio::spawn(async move {
            let result = match backend.breaker.check() {
                Err(e) if failed.is_none() => Err(e),
                _ => {
                    let op = |mut conn: Conn| {
                        let cmd = &cmd;
                        async move { cmd.query_async::<Value>(&mut conn).await }
                    };
                    backend.attempts(op, failed, started).await
                }
            };
            let result = backend.logged(result);
            let result = match (script, result) {
                (Some(script), Err(Error::Redis(msg))) if msg.starts_with("NOSCRIPT") => {
                    match backend.reload_script(script).await {
                        Ok(()) => backend.eval(script, &cmd).await,
                        Err(e) => Err(e),
                    }
                }
                (_, result) => result,
            };
            done(result);
        });
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
            Target::Node(pool) => vec![single::status(pool, breaker)],
            Target::Cluster(cluster) => self.cluster_status(cluster).await,
        };
        Status {
            breaker,
            last_error: self.breaker.last_error(),
            servers,
        }
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

    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// `query` of a command without a key (TIME, HELLO): on a cluster it
    /// goes to a master, where redis-rs would send it to a random node it
    /// is connected to, a replica that hangs included.
    pub async fn query_master<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        self.run(|conn| async move {
            match conn {
                Conn::Node(mut node) => cmd.query_async(&mut node).await,
                Conn::Cluster(mut cluster) => {
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                    let reply = cluster.route_command(cmd.clone(), route).await?;
                    Ok(T::from_redis_value(reply).map_err(RedisError::from)?)
                }
            }
        })
        .await
    }

    /// A script's call, `cmd` (its `EVALSHA`), loading the script first
    /// when Redis does not know it.
    async fn eval<T: FromRedisValue>(&self, script: &Lua, cmd: &Cmd) -> Result<T> {
        self.reloading(script, || self.query(cmd)).await
    }

    /// `call` (a call of `script`), again after loading the script when
    /// Redis answered NOSCRIPT: it restarted, failed over or flushed its
    /// scripts (a script in a pipeline is not loaded on demand either).
    /// Again if a Cluster's topology changed in between (the load went to
    /// the masters it knew then), up to `MAX_RELOADS` loads.
    async fn reloading<T, Fut>(&self, script: &Lua, call: impl Fn() -> Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let mut reloads = 0;
        loop {
            match call().await {
                Err(Error::Redis(msg)) if msg.starts_with("NOSCRIPT") && reloads < MAX_RELOADS => {
                    reloads += 1;
                    self.reload_script(script).await?;
                }
                other => return other,
            }
        }
    }

    /// See `Client::write_eval`.
    async fn write_eval<T: FromRedisValue>(
        &self,
        script: &Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<T> {
        let Some(wait) = self.wait_cmd() else {
            return self.eval(script, &evalsha(script, keys, args)).await;
        };
        let mut pipe = redis::pipe();
        pipe.add_command(evalsha(script, keys, args))
            .add_command(wait);
        self.reloading(script, || self.waited(&pipe)).await
    }

    /// A pipeline of a write and `WAIT` (`wait_cmd`): the write's reply,
    /// once enough replicas confirmed it.
    async fn waited<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        let (value, acked): (T, u32) = self.pipeline(pipe).await?;
        self.replicated(acked)?;
        Ok(value)
    }

    /// `WAIT` for `wait_replicas` replicas within `wait_timeout`; none when
    /// writes do not wait. It waits for the writes made before it on the
    /// same connection (and so for all made before those on that server).
    fn wait_cmd(&self) -> Option<Cmd> {
        let wanted = self.config.wait_replicas;
        (wanted > 0).then(|| {
            let mut wait = redis::cmd("WAIT");
            wait.arg(wanted)
                .arg(self.config.wait_timeout.as_millis() as u64);
            wait
        })
    }

    /// `WAIT`'s reply, `acked` replicas: enough, or `NotReplicated`.
    pub(super) fn replicated(&self, acked: u32) -> Result<()> {
        let wanted = self.config.wait_replicas;
        if acked < wanted {
            return Err(Error::NotReplicated { acked, wanted });
        }
        Ok(())
    }

    /// `write_eval`, answered by `done` on a runtime thread: on the fast
    /// path of `send` unless it must wait for replicas.
    fn send_write(
        &self,
        script: &'static Lua,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
        done: impl FnOnce(Result<Value>) + Send + 'static,
    ) {
        if self.config.wait_replicas == 0 {
            let cmd = evalsha(script, &refs(&keys), &refs(&args));
            return self.send(cmd, Some(script), done);
        }
        let backend = self.clone();
        tokio::spawn(async move {
            let reply = backend.write_eval(script, &refs(&keys), &refs(&args)).await;
            done(reply);
        });
    }

    /// Loads a script on every node that may run it.
    pub async fn load_script(&self, script: &Lua) -> Result<()> {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(script.source());
        match self.cluster_conn() {
            None => {
                self.query::<Value>(&load).await?;
            }
            Some(mut conn) => {
                let route = redis::cluster_routing::RoutingInfo::MultiNode((
                    redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                    Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
                ));
                tokio::time::timeout(self.config.command_timeout, conn.route_command(load, route))
                    .await
                    .map_err(|_| Error::Timeout)??;
            }
        }
        Ok(())
    }

    /// Loads a script again after Redis answered NOSCRIPT: it restarted
    /// or failed over, or its script cache was flushed. Once for all the
    /// calls that met NOSCRIPT meanwhile: a call that finds the script
    /// loaded after its answer came only tries again (when many sessions
    /// resume at once on a Redis without the script, one load, not
    /// hundreds).
    pub async fn reload_script(&self, script: &Lua) -> Result<()> {
        let answered = Instant::now();
        let mut reloads = self.reloads.lock().await;
        if reloads.get(script.hash()).is_some_and(|&at| at > answered) {
            return Ok(());
        }
        self.load_script(script).await?;
        reloads.insert(script.hash().to_string(), Instant::now());
        tracing::info!(sha = script.hash(), "script_reloaded");
        Ok(())
    }

    /// A pipeline on one connection. On a cluster all its keys must share a
    /// slot (it goes to the node of its first key).
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T> {
        self.run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// Runs a Lua script by its SHA, loading it first if Redis does not know it.
    /// Independent commands on keys of any slots, replies in order: one
    /// pipeline on a single server; on a cluster one pipeline per master,
    /// for the commands whose key slot it serves.
    pub async fn each<T: FromRedisValue>(&self, cmds: Vec<Cmd>) -> Result<Vec<T>> {
        self.each_waiting(cmds, None).await
    }

    /// `each` for writes: with `wait_replicas` set, each server's pipeline
    /// ends with `WAIT`, and the call fails with `NotReplicated` unless
    /// every server had enough replicas confirm its writes.
    pub async fn each_write<T: FromRedisValue>(&self, cmds: Vec<Cmd>) -> Result<Vec<T>> {
        self.each_waiting(cmds, self.wait_cmd()).await
    }

    async fn each_waiting<T: FromRedisValue>(
        &self,
        cmds: Vec<Cmd>,
        wait: Option<Cmd>,
    ) -> Result<Vec<T>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let Some(conn) = self.cluster_conn() else {
            let mut pipe = Pipeline::with_capacity(cmds.len() + 1);
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            let Some(wait) = wait else {
                return self.pipeline(&pipe).await;
            };
            pipe.add_command(wait);
            let mut values: Vec<Value> = self.pipeline(&pipe).await?;
            self.replicated(take_acked(&mut values)?)?;
            return values.into_iter().map(|v| from_reply(Ok(v))).collect();
        };
        self.logged(self.each_by_master(conn, cmds, wait).await)
    }
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
        // (NOAUTH, NOPERM): find out now, not on the first real call. The
        // pool's connections were all opened with the same settings.
        client.backend.query::<Value>(&redis::cmd("PING")).await?;
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

    /// `query` of one command, answered by `done` on a runtime thread;
    /// without a task of its own on an open connection (`Backend::send`).
    pub fn send(&self, cmd: Cmd, done: impl FnOnce(Result<Value>) + Send + 'static) {
        self.backend.send(cmd, None, done)
    }

    /// A read-only script.
    pub async fn eval<T: FromRedisValue>(
        &self,
        script: &Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<T> {
        self.backend
            .eval(script, &evalsha(script, keys, args))
            .await
    }

    /// `eval`, answered by `done` on a runtime thread; without a task of
    /// its own on an open connection (`Backend::send`).
    pub fn send_eval(
        &self,
        script: &'static Lua,
        keys: &[&[u8]],
        args: &[&[u8]],
        done: impl FnOnce(Result<Value>) + Send + 'static,
    ) {
        self.backend
            .send(evalsha(script, keys, args), Some(script), done)
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
        self.backend.write_eval(script, keys, args).await
    }

    /// `write_eval`, with calls of the same script that arrive meanwhile
    /// (on a cluster: for the same slot) run by one script call (`group.rs`).
    pub async fn grouped_write_eval<T: FromRedisValue>(
        &self,
        script: &'static Lua,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send_grouped_write_eval(script, keys, args, move |reply| {
            let _ = tx.send(reply);
        });
        let reply = rx
            .await
            .unwrap_or_else(|_| Err(Error::ConnectionLost("its group was cancelled".into())));
        from_reply(reply)
    }

    /// `grouped_write_eval`, answered by `done` on a runtime thread; no
    /// task waits for the group (`group.rs`, `Backend::send`).
    pub fn send_grouped_write_eval(
        &self,
        script: &'static Lua,
        keys: Vec<Vec<u8>>,
        args: Vec<Vec<u8>>,
        done: impl FnOnce(Result<Value>) + Send + 'static,
    ) {
        let slot = match (&*self.backend.target, keys.first()) {
            (Target::Cluster(_), Some(key)) => slots::key_slot(key),
            _ => 0,
        };
        let call = GroupCall { keys, args };
        self.backend
            .groups
            .send(&self.backend, script, slot, call, Box::new(done));
    }

    /// A command that writes; see `write_eval`.
    pub async fn write_query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let Some(wait) = self.backend.wait_cmd() else {
            return self.query(cmd).await;
        };
        let mut pipe = redis::pipe();
        pipe.add_command(cmd.clone()).add_command(wait);
        self.backend.waited(&pipe).await
    }

    /// Loads a script on every node that may run it.
    pub async fn load_script(&self, script: &Lua) -> Result<()> {
        self.backend.load_script(script).await
    }

    /// Loads a script again after Redis answered NOSCRIPT (see
    /// `Backend::reload_script`).
    pub async fn reload_script(&self, script: &Lua) -> Result<()> {
        self.backend.reload_script(script).await
    }

    /// See `Backend::query_master`.
    pub async fn query_master<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.backend.query_master(cmd).await
    }

    /// Redis's clock in Unix milliseconds: the one clock every node agrees on.
    pub async fn now_ms(&self) -> Result<i64> {
        let (secs, micros): (i64, i64) = self.query_master(&redis::cmd("TIME")).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// The servers a SCAN visits to see every key: the one server (`None`),
    /// or each master of a cluster.
    pub async fn scan_targets(&self) -> Result<Vec<Option<(String, u16)>>> {
        match self.backend.cluster_conn() {
            None => Ok(vec![None]),
            Some(conn) => Ok(self
                .backend
                .cluster_masters(&conn)
                .await?
                .into_iter()
                .map(Some)
                .collect()),
        }
    }

    /// One page of `SCAN cursor MATCH pattern COUNT count` on `target`
    /// (from `scan_targets`): the next cursor (0 at the end) and the keys.
    pub async fn scan_page(
        &self,
        target: &Option<(String, u16)>,
        cursor: u64,
        pattern: &[u8],
        count: usize,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        match (target, self.backend.cluster_conn()) {
            (Some(node), Some(conn)) => self.backend.query_node(&conn, node, &cmd).await,
            _ => self.query(&cmd).await,
        }
    }

    /// Independent commands on keys of any slots, replies in order (one
    /// pipeline per master on a cluster).
    pub async fn each<T: FromRedisValue>(&self, cmds: Vec<Cmd>) -> Result<Vec<T>> {
        self.backend.each(cmds).await
    }

    /// `each` for writes; see `Backend::each_write`.
    pub async fn each_write<T: FromRedisValue>(&self, cmds: Vec<Cmd>) -> Result<Vec<T>> {
        self.backend.each_write(cmds).await
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

/// A reply as `T` (a reply of another shape is a corrupt reply, as from
/// `query`).
pub fn from_reply<T: FromRedisValue>(reply: Result<Value>) -> Result<T> {
    T::from_redis_value(reply?).map_err(|e| redis::RedisError::from(e).into())
}

/// `WAIT`'s reply (replicas that confirmed), taken off the end of the
/// replies of a pipeline that ended with it.
fn take_acked(values: &mut Vec<Value>) -> RedisResult<u32> {
    Ok(u32::from_redis_value(values.pop().unwrap_or(Value::Nil))?)
}

/// Owned keys or arguments as the slices `eval` and `write_eval` take.
pub fn refs(items: &[Vec<u8>]) -> Vec<&[u8]> {
    items.iter().map(Vec::as_slice).collect()
}

/// `EVALSHA` of `script` with its keys and arguments, copied once.
fn evalsha(script: &Lua, keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
    let size = keys.iter().chain(args).map(|a| a.len()).sum::<usize>();
    let mut cmd = Cmd::with_capacity(2 + keys.len() + args.len(), 64 + size);
    cmd.arg("EVALSHA").arg(script.hash()).arg(keys.len());
    for arg in keys.iter().chain(args) {
        cmd.arg(*arg);
    }
    cmd
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
