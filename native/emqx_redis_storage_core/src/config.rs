//! What a client needs to connect. The Erlang side checks and normalises the
//! user's configuration; this is its already-typed form.

use std::fmt;
use std::time::Duration;

use crate::router::RouterConfig;

#[derive(Clone)]
pub struct ClientConfig {
    /// `(host, port)`; a single Redis uses the first.
    pub servers: Vec<(String, u16)>,
    pub database: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Multiplexed connections per client.
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Every key starts with it.
    pub key_prefix: Vec<u8>,
    pub router: RouterConfig,
}

/// Hand-written so that the password can never be printed.
impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("servers", &self.servers)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("key_prefix", &String::from_utf8_lossy(&self.key_prefix))
            .field("router", &self.router)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let config = ClientConfig {
            servers: vec![("127.0.0.1".into(), 6380)],
            database: 0,
            username: Some("app".into()),
            password: Some("s3cret".into()),
            pool_size: 1,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            key_prefix: b"emqx:".to_vec(),
            router: RouterConfig::default(),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<hidden>"), "{shown}");
    }
}
