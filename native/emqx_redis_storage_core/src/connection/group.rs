//! Group commit: concurrent calls of one script become one script call.
//!
//! Redis pays a fixed cost for every script call (finding the script,
//! building its KEYS and ARGV, the reply), and the client one request and
//! one reply. When calls of the same script arrive while others are under
//! way, they wait in a queue; the next call to go takes the queue with it
//! and runs the script's group form (`Lua::group`) once for all of them:
//! each one's keys and arguments, each one's reply or error. One call's
//! corrupt key or stale fence fails only that call.
//!
//! A call that finds fewer than [`RUNNING`] groups of its script under way
//! goes at once, alone if nobody waits: a lone caller never waits for
//! company. When a group comes back, its leader answers the others and hands
//! the lead to the first call that waits, which takes the queue with it.
//!
//! On a cluster every key of a script call must be in one slot, so calls
//! are grouped per script and slot of their first key.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use redis::Value;
use tokio::sync::oneshot;

use crate::connection::scripts::Lua;
use crate::connection::Client;
use crate::error::{Error, Result};

/// Groups of one script (and slot) under way at once. Two: while Redis runs
/// one, the next one gathers the calls that arrive meanwhile.
const RUNNING: usize = 2;
/// The most calls in one group, and about the most bytes of arguments: a
/// group is one script run, during which Redis serves nothing else.
const MAX_CALLS: usize = 256;
const MAX_BYTES: usize = 1 << 20;

/// One call's keys and arguments.
pub struct Call {
    pub keys: Vec<Vec<u8>>,
    pub args: Vec<Vec<u8>>,
}

impl Call {
    fn size(&self) -> usize {
        self.keys.iter().chain(&self.args).map(Vec::len).sum()
    }
}

/// What a waiting call gets: its reply, or the lead of the next group.
enum Turn {
    Done(Result<Value>),
    Lead(Call),
}

struct Waiting {
    call: Call,
    turn: oneshot::Sender<Turn>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    running: usize,
}

/// Script identity (its address: scripts are statics) and slot.
type Key = (usize, u16);

#[derive(Default)]
pub struct Groups {
    queues: Mutex<HashMap<Key, Queue>>,
}

impl Groups {
    /// Runs `call` of `script` on `client`, alone (the script itself) or
    /// in a group (its group form).
    pub async fn call(
        &self,
        client: &Client,
        script: &'static Lua,
        slot: u16,
        call: Call,
    ) -> Result<Value> {
        let key = (script as *const Lua as usize, slot);
        let call = {
            let mut queues = self.lock();
            let queue = queues.entry(key).or_default();
            if queue.running < RUNNING {
                queue.running += 1;
                Ok(call)
            } else {
                let (turn, wait) = oneshot::channel();
                queue.waiting.push_back(Waiting { call, turn });
                Err(wait)
            }
        };
        let own = match call {
            Ok(call) => call,
            Err(wait) => match wait.await {
                Ok(Turn::Done(reply)) => return reply,
                Ok(Turn::Lead(call)) => call,
                Err(_) => return Err(Error::ConnectionLost("its group was cancelled".into())),
            },
        };
        // From here this call leads a group; the guard hands the lead on
        // when it is done (or dropped).
        let lead = Lead { groups: self, key };
        let others = lead.take(own.size());
        let mut replies = if others.is_empty() {
            let (keys, args) = (refs(&own.keys), refs(&own.args));
            vec![client.write_eval(script, &keys, &args).await]
        } else {
            run_group(client, script, &own, &others).await
        };
        let own_reply = replies.remove(0);
        for (waiting, reply) in others.into_iter().zip(replies) {
            let _ = waiting.turn.send(Turn::Done(reply));
        }
        own_reply
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Queue>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The lead of one group of `key`; handed on when dropped.
struct Lead<'a> {
    groups: &'a Groups,
    key: Key,
}

impl Lead<'_> {
    /// The waiting calls that join a group whose leader's call has `size`
    /// bytes, oldest first, within the group's bounds.
    fn take(&self, mut size: usize) -> Vec<Waiting> {
        let mut queues = self.groups.lock();
        let Some(queue) = queues.get_mut(&self.key) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        while taken.len() + 1 < MAX_CALLS && size < MAX_BYTES {
            let Some(waiting) = queue.waiting.pop_front() else {
                break;
            };
            size += waiting.call.size();
            taken.push(waiting);
        }
        taken
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut queues = self.groups.lock();
        let Some(queue) = queues.get_mut(&self.key) else {
            return;
        };
        // The first waiting call still waiting leads next.
        while let Some(waiting) = queue.waiting.pop_front() {
            if waiting.turn.send(Turn::Lead(waiting.call)).is_ok() {
                return;
            }
        }
        queue.running -= 1;
        if queue.running == 0 {
            queues.remove(&self.key);
        }
    }
}

fn refs(items: &[Vec<u8>]) -> Vec<&[u8]> {
    items.iter().map(Vec::as_slice).collect()
}

/// One call of the group form of `script` for `own` and `others`; a reply
/// per call, in that order.
async fn run_group(
    client: &Client,
    script: &Lua,
    own: &Call,
    others: &[Waiting],
) -> Vec<Result<Value>> {
    let calls: Vec<&Call> = std::iter::once(own)
        .chain(others.iter().map(|w| &w.call))
        .collect();
    // ARGV: the number of calls, each one's number of keys and of
    // arguments, then all arguments in order; KEYS: all keys in order.
    let mut header = vec![calls.len().to_string()];
    for call in &calls {
        header.push(call.keys.len().to_string());
        header.push(call.args.len().to_string());
    }
    let keys: Vec<&[u8]> = calls.iter().flat_map(|c| refs(&c.keys)).collect();
    let args: Vec<&[u8]> = header
        .iter()
        .map(String::as_bytes)
        .chain(calls.iter().flat_map(|c| refs(&c.args)))
        .collect();
    let counters = &client.backend().metrics().connections;
    counters.group_commits.fetch_add(1, Relaxed);
    counters
        .grouped_calls
        .fetch_add(calls.len() as u64, Relaxed);
    match client.write_eval(script.group(), &keys, &args).await {
        Ok(Value::Array(replies)) if replies.len() == 2 * calls.len() => {
            let mut replies = replies.into_iter();
            std::iter::from_fn(|| Some(one_reply(replies.next()?, replies.next()?))).collect()
        }
        Ok(other) => {
            let error = Error::Internal(format!("group reply of another shape: {other:?}"));
            vec![Err(error); calls.len()]
        }
        Err(error) => vec![Err(error); calls.len()],
    }
}

/// A call's part of a group reply: 1 and its reply, or 0 and its error.
fn one_reply(status: Value, reply: Value) -> Result<Value> {
    match (status, reply) {
        (Value::Int(1), reply) => Ok(reply),
        (Value::Int(0), Value::BulkString(error)) => {
            Err(Error::replied(&String::from_utf8_lossy(&error)))
        }
        (status, reply) => Err(Error::Internal(format!(
            "group reply part: {status:?} {reply:?}"
        ))),
    }
}
