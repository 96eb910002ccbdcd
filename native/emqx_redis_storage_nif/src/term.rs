//! Conversions between Erlang terms and the core crate's types.
//!
//! Redis replies look the way eredis shows them: bulk and status strings are
//! binaries, nil is `undefined`, arrays are lists.

use std::time::Duration;

use emqx_redis_storage_core::config::{ClientConfig, Mode, ServerNameCheck, Tls};
use emqx_redis_storage_core::metrics::{OpSnapshot, Snapshot, LATENCY_BUCKETS_US};
use emqx_redis_storage_core::store::ds::DsConfig;
use emqx_redis_storage_core::store::limiter::Counts;
use emqx_redis_storage_core::store::router::{IndexMode, RouterConfig};
use emqx_redis_storage_core::Error;
use redis::Value;
use rustler::types::binary::NewBinary;
use rustler::{Atom, Binary, Decoder, Encoder, Env, Term};

mod atoms {
    rustler::atoms! {
        undefined, error, timeout, redis, connection, internal, invalid_config, local,
        not_replicated, acked, wanted, connection_lost, overloaded, corrupt, kind, detail, single, sentinel, cluster, ca, cert, key, verify,
        disable
    }
}

/// A binary holding a copy of `bytes`.
pub fn new_binary<'a>(env: Env<'a>, bytes: &[u8]) -> Binary<'a> {
    let mut out = NewBinary::new(env, bytes.len());
    out.as_mut_slice().copy_from_slice(bytes);
    Binary::from(out)
}

/// A binary term holding a copy of `bytes`.
pub fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    new_binary(env, bytes).to_term(env)
}

/// A node name as its existing atom, or as a binary. Never creates an atom.
pub fn node<'a>(env: Env<'a>, name: &[u8]) -> Term<'a> {
    match Atom::existing_from_utf8_bytes(env, name) {
        Ok(atom) => atom.encode(env),
        Err(_) => binary(env, name),
    }
}

/// An error as the `Reason` of `{error, Reason}`.
pub struct Reason<'e>(pub &'e Error);

impl Encoder for Reason<'_> {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self.0 {
            Error::Timeout => atoms::timeout().encode(env),
            Error::Redis(m) => (atoms::redis(), m.as_str()).encode(env),
            Error::Connection(m) => (atoms::connection(), m.as_str()).encode(env),
            Error::ConnectionLost(m) => (atoms::connection_lost(), m.as_str()).encode(env),
            Error::Overloaded => atoms::overloaded().encode(env),
            Error::Corrupt { kind, detail } => (
                atoms::corrupt(),
                rustler::types::map::map_new(env)
                    .map_put(atoms::kind(), Out::Atom(kind))
                    .and_then(|m| m.map_put(atoms::detail(), detail.as_str()))
                    .unwrap_or_else(|_| atoms::undefined().encode(env)),
            )
                .encode(env),
            Error::Internal(m) => (atoms::internal(), m.as_str()).encode(env),
            Error::InvalidConfig(field, m) => {
                (atoms::invalid_config(), *field, m.as_str()).encode(env)
            }
            Error::NotReplicated { acked, wanted } => (
                atoms::not_replicated(),
                rustler::types::map::map_new(env)
                    .map_put(atoms::acked(), acked)
                    .and_then(|m| m.map_put(atoms::wanted(), wanted))
                    .unwrap_or_else(|_| atoms::undefined().encode(env)),
            )
                .encode(env),
        }
    }
}

/// An owned Erlang term built on a runtime thread, encoded when the reply is
/// sent. Atoms are only ever static names, so no atom comes from Redis data.
pub enum Out {
    Atom(&'static str),
    /// A node name: its atom if the VM has it, else a binary (the Erlang side
    /// decides, within a bound, whether to create the atom).
    Node(Vec<u8>),
    Int(i64),
    Bin(Vec<u8>),
    List(Vec<Out>),
    Tuple(Vec<Out>),
    Map(Vec<(Out, Out)>),
}

impl Out {
    pub fn bin_or(value: Option<Vec<u8>>, none: &'static str) -> Out {
        value.map_or(Out::Atom(none), Out::Bin)
    }

    pub fn bins(values: Vec<Vec<u8>>) -> Out {
        Out::List(values.into_iter().map(Out::Bin).collect())
    }
}

impl Encoder for Out {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            Out::Atom(name) => match Atom::from_str(env, name) {
                Ok(atom) => atom.encode(env),
                Err(_) => atoms::undefined().encode(env),
            },
            Out::Node(name) => node(env, name),
            Out::Int(i) => i.encode(env),
            Out::Bin(b) => binary(env, b),
            Out::List(items) => items
                .iter()
                .map(|item| item.encode(env))
                .collect::<Vec<_>>()
                .encode(env),
            Out::Tuple(items) => {
                let terms: Vec<Term<'a>> = items.iter().map(|item| item.encode(env)).collect();
                rustler::types::tuple::make_tuple(env, &terms)
            }
            Out::Map(pairs) => {
                let (keys, values): (Vec<Term<'a>>, Vec<Term<'a>>) = pairs
                    .iter()
                    .map(|(k, v)| (k.encode(env), v.encode(env)))
                    .unzip();
                Term::map_from_arrays(env, &keys, &values)
                    .unwrap_or_else(|_| atoms::undefined().encode(env))
            }
        }
    }
}

/// A map whose keys are atoms.
fn fields(pairs: Vec<(&'static str, Out)>) -> Out {
    Out::Map(pairs.into_iter().map(|(k, v)| (Out::Atom(k), v)).collect())
}

fn count(n: u64) -> Out {
    Out::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A client's metrics as the map `emqx_redis_storage:metrics/1` shows.
pub fn metrics(snapshot: Snapshot, routes: Option<usize>, limiters: Vec<(Vec<u8>, Counts)>) -> Out {
    let limiters = limiters
        .into_iter()
        .map(|(name, c)| {
            let counts = fields(vec![
                ("checks", count(c.checks)),
                ("limited", count(c.limited)),
                ("errors", count(c.errors)),
                ("local", count(c.local)),
            ]);
            (Out::Bin(name), counts)
        })
        .collect();
    let operations = snapshot
        .operations
        .into_iter()
        .map(|op| (Out::Atom(op.name), operation(op)))
        .collect();
    fields(vec![
        ("operations", Out::Map(operations)),
        ("connections", count(snapshot.connections_open)),
        ("reconnects", count(snapshot.reconnects)),
        ("sentinel_failovers", count(snapshot.failovers)),
        (
            "cluster_topology_refreshes",
            count(snapshot.topology_refreshes),
        ),
        ("route_index_resyncs", count(snapshot.route_index_resyncs)),
        (
            "route_index_routes",
            routes.map_or(Out::Atom("undefined"), |n| count(n as u64)),
        ),
        ("requests", count(snapshot.requests)),
        ("bytes_sent", count(snapshot.bytes_sent)),
        ("bytes_received", count(snapshot.bytes_received)),
        ("group_commits", count(snapshot.group_commits)),
        ("grouped_calls", count(snapshot.grouped_calls)),
        ("limiters", Out::Map(limiters)),
    ])
}

/// `#{calls, errors => #{Kind => N}, in_flight, latency => #{buckets =>
/// [{UpperBoundUs | infinity, Count}], sum_us, count}}`.
fn operation(op: OpSnapshot) -> Out {
    let bounds = LATENCY_BUCKETS_US.iter().map(|&us| count(us));
    let buckets = bounds
        .chain([Out::Atom("infinity")])
        .zip(op.buckets)
        .map(|(bound, n)| Out::Tuple(vec![bound, count(n)]))
        .collect();
    let errors = op
        .errors
        .into_iter()
        .map(|(kind, n)| (Out::Atom(kind), count(n)))
        .collect();
    fields(vec![
        ("calls", count(op.calls)),
        ("errors", Out::Map(errors)),
        ("in_flight", count(op.in_flight)),
        (
            "latency",
            fields(vec![
                ("buckets", Out::List(buckets)),
                ("sum_us", count(op.sum_us)),
                ("count", count(op.calls)),
            ]),
        ),
    ])
}

/// A reply read from Redis, waiting to be encoded in the caller's message.
pub struct Reply(pub Value);

impl Encoder for Reply {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        value(env, &self.0)
    }
}

fn value<'a>(env: Env<'a>, v: &Value) -> Term<'a> {
    match v {
        Value::Nil => atoms::undefined().encode(env),
        Value::Int(i) => i.encode(env),
        Value::BulkString(b) => binary(env, b),
        Value::SimpleString(s) => binary(env, s.as_bytes()),
        Value::Okay => binary(env, b"OK"),
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => items
            .iter()
            .map(|item| value(env, item))
            .collect::<Vec<_>>()
            .encode(env),
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| (value(env, k), value(env, v)))
            .collect::<Vec<_>>()
            .encode(env),
        Value::Attribute { data, .. } => value(env, data),
        Value::Double(d) => d.encode(env),
        Value::Boolean(b) => b.encode(env),
        Value::VerbatimString { text, .. } => binary(env, text.as_bytes()),
        Value::BigNumber(digits) => binary(env, digits),
        // An error inside a reply (a failed command inside EXEC) stays in its
        // place so that the other results are not lost.
        Value::ServerError(e) => {
            (atoms::error(), binary(env, e.to_string().as_bytes())).encode(env)
        }
        // `Value` is non-exhaustive: a kind added later is shown as text, never a panic.
        #[allow(unreachable_patterns)]
        other => binary(env, format!("{other:?}").as_bytes()),
    }
}

fn field<'a, T: Decoder<'a>>(map: Term<'a>, name: &'static str) -> Result<T, Error> {
    let wrong = |what: &str| Error::InvalidConfig(name, what.to_string());
    let key = Atom::from_str(map.get_env(), name).map_err(|_| wrong("bad field name"))?;
    let value = map.map_get(key).map_err(|_| wrong("missing"))?;
    value.decode().map_err(|_| wrong("wrong type"))
}

/// `undefined` or a UTF-8 binary.
fn optional_text(map: Term, name: &'static str) -> Result<Option<String>, Error> {
    let value: Term = field(map, name)?;
    if value.decode::<Atom>().ok() == Some(atoms::undefined()) {
        return Ok(None);
    }
    let bytes: Binary = value
        .decode()
        .map_err(|_| Error::InvalidConfig(name, "expected a binary".into()))?;
    String::from_utf8(bytes.as_slice().to_vec())
        .map(Some)
        .map_err(|_| Error::InvalidConfig(name, "expected UTF-8".into()))
}

fn millis(map: Term, name: &'static str) -> Result<Duration, Error> {
    match field::<u64>(map, name)? {
        0 => Err(Error::InvalidConfig(name, "must be positive".into())),
        ms => Ok(Duration::from_millis(ms)),
    }
}

/// `undefined`, or `#{ca, cert, key => PEM binary | undefined,
/// verify => boolean(), server_name => undefined | disable | binary()}`.
fn tls(term: Term) -> Result<Option<Tls>, Error> {
    if term.decode::<Atom>().ok() == Some(atoms::undefined()) {
        return Ok(None);
    }
    let pem = |name: &'static str| -> Result<Option<Vec<u8>>, Error> {
        Ok(optional_text(term, name)?.map(String::into_bytes))
    };
    Ok(Some(Tls {
        ca: pem("ca")?,
        cert: pem("cert")?,
        key: pem("key")?,
        verify: field(term, "verify")?,
        server_name: {
            let name: Term = field(term, "server_name")?;
            if name.decode::<Atom>().ok() == Some(atoms::disable()) {
                ServerNameCheck::Disable
            } else {
                optional_text(term, "server_name")?
                    .map_or(ServerNameCheck::Host, ServerNameCheck::Name)
            }
        },
    }))
}

/// The client config map that `emqx_redis_storage_client` builds. Decoding
/// still fails cleanly, never panics, if a caller of the raw NIF passes
/// something else.
pub fn client_config(map: Term) -> Result<ClientConfig, Error> {
    let servers: Vec<(String, u16)> = field(map, "servers")?;
    if servers.is_empty() {
        return Err(Error::InvalidConfig("servers", "empty".into()));
    }
    // The Erlang side bounds these; checked again so that no caller of the
    // raw NIF can make the client allocate without bound.
    let pool_size: usize = field(map, "pool_size")?;
    if !(1..=1024).contains(&pool_size) {
        return Err(Error::InvalidConfig("pool_size", "from 1 to 1024".into()));
    }
    let max_inflight: usize = field(map, "max_inflight")?;
    if !(1..=1_000_000).contains(&max_inflight) {
        return Err(Error::InvalidConfig(
            "max_inflight",
            "from 1 to 1000000".into(),
        ));
    }
    let mode: Atom = field(map, "redis_type")?;
    let mode = if mode == atoms::single() {
        Mode::Single
    } else if mode == atoms::cluster() {
        Mode::Cluster
    } else if mode == atoms::sentinel() {
        Mode::Sentinel {
            master: optional_text(map, "sentinel")?
                .ok_or_else(|| Error::InvalidConfig("sentinel", "missing".into()))?,
            username: optional_text(map, "sentinel_username")?,
            password: optional_text(map, "sentinel_password")?,
        }
    } else {
        return Err(Error::InvalidConfig("redis_type", "unknown".into()));
    };
    Ok(ClientConfig {
        mode,
        tls: tls(field(map, "tls")?)?,
        wait_replicas: field(map, "wait_replicas")?,
        wait_timeout: millis(map, "wait_timeout")?,
        servers,
        database: field(map, "database")?,
        username: optional_text(map, "username")?,
        password: optional_text(map, "password")?,
        pool_size,
        max_inflight,
        connect_timeout: millis(map, "connect_timeout")?,
        command_timeout: millis(map, "command_timeout")?,
        slow_call_threshold: millis(map, "slow_call_threshold")?,
        key_prefix: field::<Binary>(map, "key_prefix")?.as_slice().to_vec(),
    })
}

/// The durable-messages settings of the same map.
pub fn ds_config(map: Term) -> Result<DsConfig, Error> {
    let stream_shards: u16 = field(map, "ds_stream_shards")?;
    if !(1..=256).contains(&stream_shards) {
        return Err(Error::InvalidConfig(
            "ds_stream_shards",
            "from 1 to 256".into(),
        ));
    }
    let retention = millis(map, "ds_message_retention")?;
    if retention.is_zero() {
        return Err(Error::InvalidConfig(
            "ds_message_retention",
            "must be positive".into(),
        ));
    }
    Ok(DsConfig {
        stream_shards,
        retention,
        sync_interval: millis(map, "route_sync_interval")?,
    })
}

/// The routing-table settings of the same map.
pub fn router_config(map: Term) -> Result<RouterConfig, Error> {
    Ok(RouterConfig {
        shards: match field::<u16>(map, "route_shards")? {
            0 => {
                return Err(Error::InvalidConfig(
                    "route_shards",
                    "must be positive".into(),
                ))
            }
            n => n,
        },
        mode: if field::<Atom>(map, "route_index")? == atoms::local() {
            IndexMode::Local
        } else {
            IndexMode::Redis
        },
        sync_interval: millis(map, "route_sync_interval")?,
    })
}
