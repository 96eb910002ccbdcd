//! Redis replies as plain Erlang terms, the way eredis shows them: bulk and
//! status strings are binaries, nil is `undefined`, arrays are lists.

use redis::Value;
use rustler::types::binary::NewBinary;
use rustler::{Binary, Encoder, Env, Term};

mod atoms {
    rustler::atoms! { undefined, error }
}

/// A binary term holding a copy of `bytes`.
pub fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut out = NewBinary::new(env, bytes.len());
    out.as_mut_slice().copy_from_slice(bytes);
    Binary::from(out).to_term(env)
}

/// A reply already read from Redis, waiting to be encoded in the caller's message.
pub struct Reply(pub Value);

impl Encoder for Reply {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        encode(env, &self.0)
    }
}

pub fn encode<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    match value {
        Value::Nil => atoms::undefined().encode(env),
        Value::Int(i) => i.encode(env),
        Value::BulkString(b) => binary(env, b),
        Value::SimpleString(s) => binary(env, s.as_bytes()),
        Value::Okay => binary(env, b"OK"),
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => {
            list(env, items)
        }
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| (encode(env, k), encode(env, v)))
            .collect::<Vec<_>>()
            .encode(env),
        Value::Attribute { data, .. } => encode(env, data),
        Value::Double(d) => d.encode(env),
        Value::Boolean(b) => b.encode(env),
        Value::VerbatimString { text, .. } => binary(env, text.as_bytes()),
        Value::BigNumber(digits) => binary(env, digits),
        // An error inside a reply (a failed command inside EXEC or a pipeline)
        // stays in its place so the other results are not lost.
        Value::ServerError(e) => (atoms::error(), binary(env, e.to_string().as_bytes())).encode(env),
        // Value is non-exhaustive; a kind added later is shown as text, never a panic.
        #[allow(unreachable_patterns)]
        other => binary(env, format!("{other:?}").as_bytes()),
    }
}

fn list<'a>(env: Env<'a>, items: &[Value]) -> Term<'a> {
    items
        .iter()
        .map(|v| encode(env, v))
        .collect::<Vec<_>>()
        .encode(env)
}
