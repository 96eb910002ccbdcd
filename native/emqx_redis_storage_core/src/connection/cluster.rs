//! Redis Cluster: one redis-rs `ClusterConnection`, which routes by key
//! slot and follows MOVED and ASK; made anew when, after calls time out, the
//! cluster names other masters than it did (a frozen master closes no
//! connection, and redis-rs keeps waiting on it). Commands on keys of many
//! slots go as one pipeline per master.

use std::sync::{Arc, RwLock};

use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo, Pipeline, RedisResult,
    TlsCertificates, TlsMode, Value,
};

use super::health::ServerHealth;
use super::{
    connect_error, count, from_reply, slots, take_acked, Backend, ServerState, ServerStatus, Target,
};
use crate::config::{address, ClientConfig, ServerNameCheck, Tls};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The redis-rs cluster connection, and the masters of the slots as the
/// cluster named them when it was made.
pub(super) struct Cluster {
    pub(super) conn: ClusterConnection,
    masters: Vec<SlotMaster>,
}

/// Slots `first..=last` and the address of their master.
type SlotMaster = (u16, u16, String, u16);

/// The redis-rs cluster client opens its node connections itself, with
/// redis-rs's TLS: it checks each node's certificate against the address
/// the cluster announces for it (or, with `disable`, only the chain).
pub(super) async fn connect_cluster(config: &ClientConfig) -> Result<Cluster> {
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

impl Backend {
    /// Each master the cluster names now, asked with PING.
    pub(super) async fn cluster_status(&self, cluster: &RwLock<Arc<Cluster>>) -> Vec<ServerStatus> {
        let current = cluster.read().unwrap_or_else(|e| e.into_inner()).clone();
        // The masters now: after a failover the list the connection
        // was made with names a dead master, and redis-rs has
        // followed the cluster without us.
        let ask = tokio::time::timeout(self.config.connect_timeout, slot_masters(&current.conn));
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
            let health = self.cluster_server_health(&address(&host, port));
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
                    address: address(&host, port),
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

    /// The health record of the cluster master at `address`.
    fn cluster_server_health(&self, address: &str) -> Arc<ServerHealth> {
        let mut known = self
            .cluster_health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        known.entry(address.to_string()).or_default().clone()
    }

    /// Makes a new cluster connection if the cluster now names other masters
    /// for its slots than when the current one was made. True if it did.
    pub(super) async fn follow_cluster(&self) -> bool {
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

    /// The masters of the cluster now, each once.
    pub(super) async fn cluster_masters(
        &self,
        conn: &ClusterConnection,
    ) -> Result<Vec<(String, u16)>> {
        let ask = tokio::time::timeout(self.config.command_timeout, slot_masters(conn));
        let masters = ask.await.map_err(|_| Error::Timeout)??;
        let mut addresses: Vec<(String, u16)> = masters
            .into_iter()
            .map(|(_, _, host, port)| (host, port))
            .collect();
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }

    /// `cmd` on the cluster node at `host:port`, within the command timeout.
    pub(super) async fn query_node<T: FromRedisValue>(
        &self,
        conn: &ClusterConnection,
        (host, port): &(String, u16),
        cmd: &Cmd,
    ) -> Result<T> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port: *port,
        });
        let mut conn = conn.clone();
        let reply = tokio::time::timeout(
            self.config.command_timeout,
            conn.route_command(cmd.clone(), route),
        )
        .await
        .map_err(|_| Error::Timeout)??;
        Ok(T::from_redis_value(reply).map_err(redis::RedisError::from)?)
    }

    /// `Backend::each` (`wait`: `Backend::each_write`'s `WAIT`) on a cluster.
    pub(super) async fn each_by_master<T: FromRedisValue>(
        &self,
        conn: ClusterConnection,
        cmds: Vec<Cmd>,
        wait: Option<Cmd>,
    ) -> Result<Vec<T>> {
        self.breaker.check()?;
        let work = async {
            let (values, acked) = match by_master(&conn, &cmds, wait.as_ref(), &self.metrics).await
            {
                Ok(replies) => replies,
                // The topology moved under us (MOVED, a failover): one by one,
                // which follows redirections; each with its own WAIT.
                Err(_) => {
                    let replies = futures::future::try_join_all(cmds.iter().map(|cmd| {
                        let mut conn = conn.clone();
                        let mut pipe = redis::pipe();
                        pipe.add_command(cmd.clone());
                        let waits = wait.is_some();
                        if let Some(wait) = &wait {
                            pipe.add_command(wait.clone());
                        }
                        self.sent(async move {
                            let mut values: Vec<Value> = pipe.query_async(&mut conn).await?;
                            let acked = waits.then(|| take_acked(&mut values)).transpose()?;
                            Ok::<_, redis::RedisError>((values.pop().unwrap_or(Value::Nil), acked))
                        })
                    }))
                    .await?;
                    let acked = replies.iter().filter_map(|r| r.1).min();
                    (replies.into_iter().map(|r| r.0).collect(), acked)
                }
            };
            Ok::<_, redis::RedisError>((values, acked))
        };
        let result = tokio::time::timeout(self.config.command_timeout, work)
            .await
            .unwrap_or(Err(Error::Timeout.into_redis()))
            .map_err(Error::from);
        if matches!(result, Err(Error::Timeout)) {
            self.recheck();
        }
        let (values, acked) = result?;
        if let Some(acked) = acked {
            self.replicated(acked)?;
        }
        values.into_iter().map(|v| from_reply(Ok(v))).collect()
    }

    /// The current cluster connection; None if not a cluster.
    pub(super) fn cluster_conn(&self) -> Option<ClusterConnection> {
        let Target::Cluster(cluster) = &*self.target else {
            return None;
        };
        let cluster = cluster.read().unwrap_or_else(|e| e.into_inner());
        Some(cluster.conn.clone())
    }
}

/// The masters of the cluster's slots, from `CLUSTER SLOTS` asked of a
/// random master (a replica may hang while its master answers), in slot
/// order.
async fn slot_masters(conn: &ClusterConnection) -> RedisResult<Vec<SlotMaster>> {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
    let reply = conn
        .clone()
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
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
        .map(|(first, last, host, port)| format!("{first}-{last}={}", address(host, *port)))
        .collect();
    all.join(",")
}

/// Sends `cmds` as one pipeline per master (from `CLUSTER SLOTS`), each
/// command to the master of its key's slot, each pipeline ended by `wait`
/// if given; replies in the order of `cmds`, and the fewest replicas a
/// `WAIT` saw.
async fn by_master(
    conn: &ClusterConnection,
    cmds: &[Cmd],
    wait: Option<&Cmd>,
    metrics: &Metrics,
) -> RedisResult<(Vec<Value>, Option<u32>)> {
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
        futures::future::try_join_all(groups.into_iter().map(|(start, mut pipe, positions)| {
            let mut conn = conn.clone();
            async move {
                let count = positions.len();
                if let Some(wait) = wait {
                    pipe.add_command(wait.clone());
                }
                let route =
                    SingleNodeRoutingInfo::SpecificNode(Route::new(start, SlotAddr::Master));
                let mut values = conn
                    .route_pipeline(pipe, 0, count + usize::from(wait.is_some()), route)
                    .await?;
                let acked = wait.map(|_| take_acked(&mut values)).transpose()?;
                Ok::<_, redis::RedisError>((positions.into_iter().zip(values), acked))
            }
        }))
        .await?;
    let fewest = replies.iter().filter_map(|r| r.1).min();
    let mut out = vec![Value::Nil; cmds.len()];
    for (values, _) in replies {
        for (i, value) in values {
            if let Value::ServerError(e) = value {
                return Err(e.into());
            }
            out[i] = value;
        }
    }
    Ok((out, fewest))
}
