//! The one error type. The NIF crate encodes each variant as the `Reason` of
//! an Erlang `{error, Reason}` tuple.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The operation did not finish within the client's command timeout.
    Timeout,
    /// Redis answered with an error reply (`WRONGTYPE ...`, `NOPERM ...`).
    Redis(String),
    /// Not done: the request never reached Redis (no connection could be
    /// made, it was refused, or it broke before the request was written).
    Connection(String),
    /// Unknown outcome: the connection broke after the request was written,
    /// so Redis may or may not have carried it out.
    ConnectionLost(String),
    /// Not done: the client has its maximum of requests in flight.
    Overloaded,
    /// What Redis holds at one of our keys is not what we wrote there: a
    /// value of the wrong type or with contents we cannot read. `kind` names
    /// the key's kind (`session`, `fence`, `message`, ...). Nothing was changed.
    Corrupt { kind: &'static str, detail: String },
    /// A bug on our side, such as a panic inside a task; the caller is still answered.
    Internal(String),
    /// A configuration value that cannot be used; names the field.
    InvalidConfig(&'static str, String),
    /// The write happened on the master, but `WAIT` saw fewer replicas
    /// confirm it than `wait_replicas` asks for.
    NotReplicated { acked: u32, wanted: u32 },
}

impl Error {
    /// The name of each kind of error: the atom an Erlang `Reason` is or
    /// starts with. Metrics count errors by it.
    pub const KINDS: [&'static str; 9] = [
        "timeout",
        "redis",
        "connection",
        "connection_lost",
        "overloaded",
        "corrupt",
        "internal",
        "invalid_config",
        "not_replicated",
    ];

    /// The position of this error's kind in [`Error::KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            Error::Timeout => 0,
            Error::Redis(_) => 1,
            Error::Connection(_) => 2,
            Error::ConnectionLost(_) => 3,
            Error::Overloaded => 4,
            Error::Corrupt { .. } => 5,
            Error::Internal(_) => 6,
            Error::InvalidConfig(..) => 7,
            Error::NotReplicated { .. } => 8,
        }
    }
}

/// The kinds of our keys, as scripts name them in `CORRUPT <kind> <detail>`
/// error replies; `reply` when the domain is not known (yet).
pub const CORRUPT_KINDS: &[&str] = &[
    "session",
    "session_index",
    "fence",
    "lease",
    "lease_owner",
    "channel",
    "route",
    "route_trie",
    "message",
    "queue",
    "durable_subscription",
    "durable_filter",
    "durable_stream",
    "durable_levels",
    "node",
    "node_reap",
    "limiter",
    "reply",
];

fn corrupt_kind(name: &str) -> &'static str {
    CORRUPT_KINDS
        .iter()
        .find(|k| **k == name)
        .copied()
        .unwrap_or("reply")
}

/// The error replies that mean a key of ours holds something we did not
/// write: `CORRUPT <kind> <detail>`, raised by our scripts before any write,
/// and `WRONGTYPE` (the domain names the kind, see [`Error::of`]).
fn data_error(code: Option<&str>, detail: Option<&str>) -> Option<Error> {
    let text = detail.unwrap_or_default();
    match code? {
        "CORRUPT" => {
            // A script that aborts with error() gets " script: <sha>, on
            // @user_script:<line>." appended by Redis.
            let text = text.split(" script: ").next().unwrap_or_default();
            let (kind, detail) = text.split_once(' ').unwrap_or((text, ""));
            Some(Error::corrupt(corrupt_kind(kind), detail))
        }
        "WRONGTYPE" => Some(Error::corrupt("reply", format!("WRONGTYPE {text}"))),
        _ => None,
    }
}

/// A data error replied to one command, or to the first failed command of a
/// pipeline (which redis-rs reports as one "Pipeline failure").
fn reply_data_error(e: &redis::RedisError) -> Option<Error> {
    data_error(e.code(), e.detail()).or_else(|| {
        let failed = e.clone().into_server_errors()?;
        let (_, first) = failed.first()?;
        data_error(Some(first.code()), first.details())
    })
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if let Some(corrupt) = reply_data_error(&e) {
            return corrupt;
        }
        if e.kind() == redis::ErrorKind::UnexpectedReturnType {
            // A reply of a shape our data never gives.
            return Error::corrupt("reply", e.to_string());
        }
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
            Error::ConnectionLost(m) => write!(f, "connection lost: {m}"),
            Error::Overloaded => f.write_str("overloaded"),
            Error::Corrupt { kind, detail } => write!(f, "corrupt {kind}: {detail}"),
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
    /// A data error not yet tied to a kind of key becomes one of `kind`.
    /// An error reply's text as an error: what a call's own error reply
    /// would have become (a group reply carries each call's as text).
    pub fn replied(text: &str) -> Error {
        let (code, detail) = text.split_once(' ').unwrap_or((text, ""));
        data_error(Some(code), Some(detail)).unwrap_or_else(|| Error::Redis(text.to_string()))
    }

    pub fn of(self, kind: &'static str) -> Error {
        match self {
            Error::Corrupt {
                kind: "reply",
                detail,
            } => Error::Corrupt { kind, detail },
            other => other,
        }
    }

    /// The error of a raw command (`emqx_redis_storage:q`): it reads no
    /// data of ours, so a `WRONGTYPE` is Redis's answer, not corrupt data.
    pub fn raw(self) -> Error {
        match self {
            Error::Corrupt {
                kind: "reply",
                detail,
            } => Error::Redis(detail),
            other => other,
        }
    }

    /// Stored data at a key of `kind` that is not what we wrote.
    pub fn corrupt(kind: &'static str, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            kind,
            detail: detail.into(),
        }
    }

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

/// The largest integer we store: fences, times and counters stay below it,
/// and Lua (doubles) reads it exactly.
pub const MAX_STORED_INT: i64 = (1 << 53) - 1;

/// A stored integer as we write them (decimal, no sign, no leading zero, at
/// most [`MAX_STORED_INT`]); anything else is corrupt data of `kind`. The
/// same rule as `stored_int` in `guard.lua`.
pub fn stored_int(kind: &'static str, what: &str, raw: &[u8]) -> Result<i64> {
    let digits = raw.iter().all(u8::is_ascii_digit);
    let canonical =
        raw == b"0" || (digits && raw.len() <= 16 && raw.first().is_some_and(|&b| b != b'0'));
    std::str::from_utf8(raw)
        .ok()
        .filter(|_| canonical)
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n <= MAX_STORED_INT)
        .ok_or_else(|| Error::corrupt(kind, format!("{what} is not an integer")))
}

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
    fn stored_integers_are_what_we_write() {
        assert_eq!(stored_int("fence", "fence", b"0"), Ok(0));
        assert_eq!(
            stored_int("fence", "fence", b"1700000000123"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            stored_int("fence", "fence", b"9007199254740991"),
            Ok(MAX_STORED_INT)
        );
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"01",
            b"1.5",
            b"1e3",
            b" 1",
            b"abc",
            b"9007199254740992",
            b"99999999999999999999999",
        ] {
            assert_eq!(
                stored_int("fence", "fence", bad),
                Err(Error::corrupt("fence", "fence is not an integer")),
                "{bad:?}"
            );
        }
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

    #[test]
    fn corrupt_replies_name_their_kind() {
        assert_eq!(
            data_error(
                Some("CORRUPT"),
                Some("fence emqx:fence:{c} is not an integer")
            ),
            Some(Error::corrupt("fence", "emqx:fence:{c} is not an integer"))
        );
        assert_eq!(
            data_error(Some("CORRUPT"), Some("nonsense")),
            Some(Error::corrupt("reply", ""))
        );
        assert!(matches!(
            data_error(Some("WRONGTYPE"), Some("Operation against a key")),
            Some(Error::Corrupt { kind: "reply", .. })
        ));
        assert_eq!(data_error(Some("ERR"), Some("x")), None);
        assert_eq!(
            data_error(
                Some("CORRUPT"),
                Some("lease fence is not an integer script: 0f1e, on @user_script:12.")
            ),
            Some(Error::corrupt("lease", "fence is not an integer"))
        );
        let wrong =
            redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "Incompatible type"));
        assert!(matches!(
            Error::from(wrong).of("session"),
            Error::Corrupt {
                kind: "session",
                ..
            }
        ));
        assert_eq!(Error::Timeout.of("session"), Error::Timeout);
        assert_eq!(
            Error::corrupt("reply", "WRONGTYPE Operation").raw(),
            Error::Redis("WRONGTYPE Operation".into())
        );
    }
}
