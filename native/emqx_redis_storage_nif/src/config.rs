//! The client configuration as the Erlang side hands it over, already checked
//! and normalised by `emqx_redis_storage_config`. Decoding still fails cleanly
//! (never panics) if a caller of the raw NIF passes something else.

use std::time::Duration;

use rustler::{Atom, Decoder, Term};

use crate::error::{Error, Result};

mod atoms {
    rustler::atoms! { single, undefined }
}

#[derive(Clone)]
pub struct ClientConfig {
    // Only `redis_type => single` is accepted so far.
    pub servers: Vec<(String, u16)>,
    pub database: i64,
    pub username: Option<String>,
    /// Never printed: `ClientConfig` has no `Debug` on purpose.
    pub password: Option<String>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

fn field<'a, T: Decoder<'a>>(map: Term<'a>, name: &'static str) -> Result<T> {
    let key = Atom::from_str(map.get_env(), name)
        .map_err(|_| Error::InvalidConfig(name, "bad field name".into()))?;
    let value = map
        .map_get(key)
        .map_err(|_| Error::InvalidConfig(name, "missing".into()))?;
    value
        .decode()
        .map_err(|_| Error::InvalidConfig(name, "wrong type".into()))
}

/// `undefined` or a binary.
fn optional_text(map: Term, name: &'static str) -> Result<Option<String>> {
    let value: Term = field(map, name)?;
    if value.decode::<Atom>().ok() == Some(atoms::undefined()) {
        return Ok(None);
    }
    let bytes: rustler::Binary = value
        .decode()
        .map_err(|_| Error::InvalidConfig(name, "expected a binary".into()))?;
    String::from_utf8(bytes.as_slice().to_vec())
        .map(Some)
        .map_err(|_| Error::InvalidConfig(name, "expected UTF-8".into()))
}

fn millis(map: Term, name: &'static str) -> Result<Duration> {
    let ms: u64 = field(map, name)?;
    if ms == 0 {
        return Err(Error::InvalidConfig(name, "must be positive".into()));
    }
    Ok(Duration::from_millis(ms))
}

impl ClientConfig {
    pub fn decode(map: Term) -> Result<Self> {
        let mode: Atom = field(map, "redis_type")?;
        if mode != atoms::single() {
            return Err(Error::InvalidConfig("redis_type", "unsupported".into()));
        }
        let servers: Vec<(String, u16)> = field(map, "servers")?;
        if servers.is_empty() {
            return Err(Error::InvalidConfig("servers", "empty".into()));
        }
        let pool_size: usize = field(map, "pool_size")?;
        if pool_size == 0 {
            return Err(Error::InvalidConfig("pool_size", "must be positive".into()));
        }
        Ok(ClientConfig {
            servers,
            database: field(map, "database")?,
            username: optional_text(map, "username")?,
            password: optional_text(map, "password")?,
            pool_size,
            connect_timeout: millis(map, "connect_timeout")?,
            command_timeout: millis(map, "command_timeout")?,
        })
    }
}
