//! The one error type. The NIF crate encodes each variant as the `Reason` of
//! an Erlang `{error, Reason}` tuple.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The operation did not finish within the client's command timeout.
    Timeout,
    /// Redis answered with an error reply (`WRONGTYPE ...`, `NOPERM ...`).
    Redis(String),
    /// The connection could not be made or was lost (refused, reset, auth).
    Connection(String),
    /// A bug on our side, such as a panic inside a task; the caller is still answered.
    Internal(String),
    /// A configuration value that cannot be used; names the field.
    InvalidConfig(&'static str, String),
    /// The write happened on the master, but `WAIT` saw fewer replicas
    /// confirm it than `wait_replicas` asks for.
    NotReplicated { acked: u32, wanted: u32 },
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if e.is_timeout() {
            Error::Timeout
        } else if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || e.kind() == redis::ErrorKind::InvalidClientConfig
        {
            Error::Connection(e.to_string())
        } else {
            // Shown as Redis prints it: "WRONGTYPE Operation against a key ...".
            match (e.code(), e.detail()) {
                (Some(code), Some(detail)) => Error::Redis(format!("{code} {detail}")),
                (Some(code), None) => Error::Redis(format!("{code} {e}")),
                _ => Error::Redis(e.to_string()),
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout => f.write_str("timeout"),
            Error::Redis(m) => write!(f, "redis: {m}"),
            Error::Connection(m) => write!(f, "connection: {m}"),
            Error::Internal(m) => write!(f, "internal: {m}"),
            Error::InvalidConfig(field, m) => write!(f, "invalid config {field}: {m}"),
            Error::NotReplicated { acked, wanted } => {
                write!(
                    f,
                    "written, but only {acked} of {wanted} replicas confirmed it"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// As a redis-rs error, to travel through code that speaks redis-rs.
    pub fn into_redis(self) -> redis::RedisError {
        match self {
            Error::Timeout => std::io::Error::from(std::io::ErrorKind::TimedOut).into(),
            other => {
                redis::RedisError::from((redis::ErrorKind::Client, "error", other.to_string()))
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The text of a caught panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_readable() {
        let caught = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(caught.as_ref()), "boom 1");
        let caught = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(caught.as_ref()), "static");
    }

    #[test]
    fn redis_errors_are_classified() {
        let refused: redis::RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        assert!(matches!(Error::from(refused), Error::Connection(_)));
        let timed_out: redis::RedisError =
            std::io::Error::new(std::io::ErrorKind::TimedOut, "slow").into();
        assert_eq!(Error::from(timed_out), Error::Timeout);
    }
}
