//! Group commit: concurrent calls of one script become one script call.
//!
//! Redis pays a fixed cost for every script call (finding the script,
//! building its KEYS and ARGV, the reply), and the client one request and
//! one reply. When calls of the same script arrive while others are under
//! way, they wait in a queue; the next group to go takes the queue with it
//! and runs the script's group form (`Lua::group`) once for all of them:
//! each one's keys and arguments, each one's reply or error. One call's
//! corrupt key or stale fence fails only that call.
//!
//! A call that finds fewer than [`RUNNING`] groups of its script under way
//! goes at once, alone if nobody waits: a lone caller never waits for
//! company. When a group's reply comes, the next group goes with the calls
//! that waited meanwhile, then the group's calls are answered. All of it
//! happens in the calls' completions (`Backend::send`): no task waits.
//!
//! On a cluster every key of a script call must be in one slot, so calls
//! are grouped per script and slot of their first key.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use redis::Value;

use crate::connection::scripts::Lua;
use crate::connection::Backend;
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

/// Where a call's reply goes; called once, on a runtime thread.
pub type Done = Box<dyn FnOnce(Result<Value>) + Send>;

struct Waiting {
    call: Call,
    done: Done,
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
    /// Runs `call` of `script` through `backend`, alone (the script
    /// itself) or in a group (its group form); `done` gets its reply.
    pub fn send(&self, backend: &Backend, script: &'static Lua, slot: u16, call: Call, done: Done) {
        let key = (script as *const Lua as usize, slot);
        let own = Waiting { call, done };
        let own = {
            let mut queues = self.lock();
            let queue = queues.entry(key).or_default();
            if queue.running < RUNNING {
                queue.running += 1;
                Some(own)
            } else {
                queue.waiting.push_back(own);
                None
            }
        };
        if let Some(own) = own {
            lead(backend, script, key, own);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Queue>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The waiting calls that join a group whose leader's call has `size`
    /// bytes, oldest first, within the group's bounds.
    fn take(&self, key: Key, mut size: usize) -> Vec<Waiting> {
        let mut queues = self.lock();
        let Some(queue) = queues.get_mut(&key) else {
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

    /// A group of `key` is done: the first call waiting leads the next one,
    /// else one group fewer runs.
    fn hand_on(&self, key: Key) -> Option<Waiting> {
        let mut queues = self.lock();
        let queue = queues.get_mut(&key)?;
        let next = queue.waiting.pop_front();
        if next.is_none() {
            queue.running -= 1;
            if queue.running == 0 {
                queues.remove(&key);
            }
        }
        next
    }
}

/// Sends a group led by `own`, with the calls waiting that fit in it.
fn lead(backend: &Backend, script: &'static Lua, key: Key, own: Waiting) {
    let others = backend.groups.take(key, own.call.size());
    let mut calls: Vec<Waiting> = Vec::with_capacity(1 + others.len());
    calls.push(own);
    calls.extend(others);
    let n = calls.len();
    let (sent, keys, args) = if n == 1 {
        let call = &mut calls[0].call;
        (
            script,
            std::mem::take(&mut call.keys),
            std::mem::take(&mut call.args),
        )
    } else {
        let (keys, args) = group_form(&mut calls);
        let counters = &backend.metrics.connections;
        counters.group_commits.fetch_add(1, Relaxed);
        counters.grouped_calls.fetch_add(n as u64, Relaxed);
        (script.group(), keys, args)
    };
    let dones: Vec<Done> = calls.into_iter().map(|w| w.done).collect();
    let next = backend.clone();
    backend.send_write(sent, keys, args, move |reply| {
        // The next group goes first; then this one's calls are answered.
        if let Some(first) = next.groups.hand_on(key) {
            lead(&next, script, key, first);
        }
        let replies = if n == 1 {
            vec![reply]
        } else {
            group_replies(reply, n)
        };
        for (done, reply) in dones.into_iter().zip(replies) {
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| done(reply)));
        }
    });
}

/// The group form's KEYS and ARGV: all keys in order; the number of calls,
/// each one's number of keys and of arguments, then all arguments in order.
/// The calls' keys and arguments are moved, not copied.
fn group_form(calls: &mut [Waiting]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut keys = Vec::new();
    let mut args = vec![calls.len().to_string().into_bytes()];
    for Waiting { call, .. } in calls.iter() {
        args.push(call.keys.len().to_string().into_bytes());
        args.push(call.args.len().to_string().into_bytes());
    }
    for Waiting { call, .. } in calls {
        keys.append(&mut call.keys);
        args.append(&mut call.args);
    }
    (keys, args)
}

/// A reply per call of a group's reply, in order.
fn group_replies(reply: Result<Value>, n: usize) -> Vec<Result<Value>> {
    match reply {
        Ok(Value::Array(replies)) if replies.len() == 2 * n => {
            let mut replies = replies.into_iter();
            std::iter::from_fn(|| Some(one_reply(replies.next()?, replies.next()?))).collect()
        }
        Ok(other) => {
            let error = Error::Internal(format!("group reply of another shape: {other:?}"));
            vec![Err(error); n]
        }
        Err(error) => vec![Err(error); n],
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
