//! What a client needs to connect. The Erlang side checks and normalises the
//! user's configuration; this is its already-typed form.

use std::fmt;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One Redis: `servers[0]`.
    Single,
    /// `servers` are sentinels watching the master named here.
    Sentinel {
        master: String,
        username: Option<String>,
        password: Option<String>,
    },
    /// `servers` are seed nodes of a Redis Cluster.
    Cluster,
}

/// PEM contents, read by the Erlang side from the configured files.
#[derive(Clone, Default)]
pub struct Tls {
    pub ca: Option<Vec<u8>>,
    pub cert: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    /// Check the server's certificate against the CA (and a name, see
    /// `server_name`); false accepts any certificate.
    pub verify: bool,
    pub server_name: ServerNameCheck,
}

/// Which name the server's certificate must carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ServerNameCheck {
    /// The host dialled (from `servers`, or the master the sentinels name).
    #[default]
    Host,
    /// This name, whatever address is dialled; it is also sent as SNI.
    Name(String),
    /// None: the chain is still checked, no SNI is sent.
    Disable,
}

#[derive(Clone)]
pub struct ClientConfig {
    pub mode: Mode,
    /// `(host, port)`; a host that is an absolute path is a unix socket
    /// (single mode only; its port is ignored).
    pub servers: Vec<(String, u16)>,
    pub database: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<Tls>,
    /// Multiplexed connections per client (single and sentinel modes).
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Writes return only once this many replicas confirmed them (`WAIT`).
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
    /// Requests in flight at most; beyond, calls are refused at once.
    pub max_inflight: usize,
    /// A call that takes this long or longer emits a `slow_call` event.
    pub slow_call_threshold: Duration,
    /// Every key starts with it.
    pub key_prefix: Vec<u8>,
}

/// Whether `host` names a unix socket: an absolute path.
pub fn is_unix(host: &str) -> bool {
    host.starts_with('/')
}

/// `host:port` (an IPv6 address in brackets: `[::1]:6379`), or the
/// socket's path, as the log and `status` show a server.
pub fn address(host: &str, port: u16) -> String {
    if is_unix(host) {
        host.to_string()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn hidden<T>(secret: &Option<T>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<hidden>")
}

/// Hand-written so that no password or key can ever be printed.
impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.mode {
            Mode::Single => "single".to_string(),
            Mode::Sentinel { master, .. } => format!("sentinel {master}"),
            Mode::Cluster => "cluster".to_string(),
        };
        f.debug_struct("ClientConfig")
            .field("mode", &mode)
            .field("servers", &self.servers)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("tls", &self.tls.as_ref().map(|t| t.verify))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("wait_replicas", &self.wait_replicas)
            .field("slow_call_threshold", &self.slow_call_threshold)
            .field("key_prefix", &String::from_utf8_lossy(&self.key_prefix))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_a_unix_socket_and_an_ipv6_address_is_in_brackets() {
        assert_eq!(address("/run/redis.sock", 0), "/run/redis.sock");
        assert_eq!(address("127.0.0.1", 6379), "127.0.0.1:6379");
        assert_eq!(address("::1", 6379), "[::1]:6379");
        assert!(!is_unix("redis.local"));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = ClientConfig {
            mode: Mode::Sentinel {
                master: "mymaster".into(),
                username: None,
                password: Some("sentinel-s3cret".into()),
            },
            servers: vec![("127.0.0.1".into(), 6380)],
            database: 0,
            username: Some("app".into()),
            password: Some("s3cret".into()),
            tls: Some(Tls {
                key: Some(b"PRIVATE KEY".to_vec()),
                ..Tls::default()
            }),
            pool_size: 1,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            max_inflight: 10,
            slow_call_threshold: Duration::from_secs(1),
            key_prefix: b"emqx:".to_vec(),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(shown.contains("<hidden>"), "{shown}");
    }
}
