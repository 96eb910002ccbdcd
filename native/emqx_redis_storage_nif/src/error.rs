//! The one error type of the NIF. Every variant encodes to the `Reason` of an
//! Erlang `{error, Reason}` tuple.

use rustler::{Encoder, Env, Term};

mod atoms {
    rustler::atoms! { timeout, redis, connection, internal, invalid_config }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The operation did not finish within the client's command timeout.
    Timeout,
    /// Redis answered with an error reply (`ERR ...`, `WRONGTYPE ...`, `NOPERM ...`).
    Redis(String),
    /// The connection could not be made or was lost (refused, reset, TLS, auth).
    Connection(String),
    /// A bug on our side, such as a panic inside a task; the caller is still answered.
    Internal(String),
    /// A configuration value the Erlang side should have rejected.
    InvalidConfig(&'static str, String),
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if e.is_timeout() {
            Error::Timeout
        } else if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
        {
            Error::Connection(e.to_string())
        } else {
            // Shown as Redis prints it: "WRONGTYPE Operation against a key ...".
            match (e.code(), e.detail()) {
                (Some(code), Some(detail)) => Error::Redis(format!("{code} {detail}")),
                _ => Error::Redis(e.to_string()),
            }
        }
    }
}

impl Encoder for Error {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            Error::Timeout => atoms::timeout().encode(env),
            Error::Redis(m) => (atoms::redis(), m.as_str()).encode(env),
            Error::Connection(m) => (atoms::connection(), m.as_str()).encode(env),
            Error::Internal(m) => (atoms::internal(), m.as_str()).encode(env),
            Error::InvalidConfig(field, m) => {
                (atoms::invalid_config(), *field, m.as_str()).encode(env)
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
