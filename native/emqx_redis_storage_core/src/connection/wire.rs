//! Our own pipelined connection to one Redis server, on redis-rs's command
//! encoding and reply parser. A caller encodes its request straight into
//! the connection's write buffer and leaves a completion; the connection's
//! reader task parses the replies and calls each completion in turn. A call
//! takes no task, channel or timer of its own: one writer task sends
//! whatever was queued meanwhile in one write, and one timer per connection
//! answers the requests still unanswered at the command timeout.

use std::collections::VecDeque;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value, ValueCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use super::transport::{Alive, Stream};

/// How a request is answered: once, on a runtime thread, outside the
/// connection's lock.
pub trait Answer: Send {
    fn answer(self: Box<Self>, reply: RedisResult<Value>);
}

impl<F: FnOnce(RedisResult<Value>) + Send> Answer for F {
    fn answer(self: Box<Self>, reply: RedisResult<Value>) {
        (*self)(reply)
    }
}

/// A request that encodes itself and takes its answer: one allocation
/// for the whole of a call.
pub trait Request: Answer {
    fn encode(&self, out: &mut Vec<u8>);
}

type Done = Box<dyn Answer>;

/// The most a connection's buffers keep between uses; a large request or
/// reply grows them beyond, for its time only.
const KEPT_CAPACITY: usize = 1 << 20;

/// What `push` queues: encodes itself, and becomes the answer.
trait Queued {
    fn queue(self, out: &mut Vec<u8>) -> Done;
}

impl<R: Request + 'static> Queued for Box<R> {
    fn queue(self, out: &mut Vec<u8>) -> Done {
        self.encode(out);
        self
    }
}

/// A request of `Wire::call`: its encoding, and where its reply goes.
struct Awaited<E>(E, oneshot::Sender<RedisResult<Value>>);

impl<E: FnOnce(&mut Vec<u8>)> Queued for Awaited<E> {
    fn queue(self, out: &mut Vec<u8>) -> Done {
        (self.0)(out);
        let tx = self.1;
        Box::new(move |reply| {
            let _ = tx.send(reply);
        })
    }
}

/// The replies a request takes.
pub enum Expect {
    /// One command: its reply, as it came (an error reply as
    /// `Value::ServerError`).
    One,
    /// A pipeline: `skip` replies dropped, then `keep` kept, answered as
    /// one `Value::Array`.
    Many { skip: usize, keep: usize },
}

struct Waiter {
    /// Replies still to be dropped, and the ones kept so far (`Many`).
    skip: usize,
    left: usize,
    kept: Option<Vec<Value>>,
    deadline: Instant,
    /// `None` once answered by the timeout: its replies are still read,
    /// and dropped.
    done: Option<Done>,
}

#[derive(Default)]
struct Queue {
    /// Requests encoded, not yet taken by the writer.
    out: Vec<u8>,
    /// How many of the waiting requests are in `out` (the newest ones).
    unsent: usize,
    /// Requests sent or to be sent, oldest first: replies come in this order.
    waiting: VecDeque<Waiter>,
    /// The connection has ended: nothing more is taken.
    ended: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer: something was queued, or the connection ended.
    write: Notify,
    /// Stops the reader when the connection ends on our side.
    stop: Notify,
    alive: Alive,
    timeout: Duration,
}

/// A connection; the last clone dropped closes it.
#[derive(Clone)]
pub struct Wire(Arc<Owner>);

struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.end(
            io::ErrorKind::ConnectionAborted,
            "connection dropped",
            false,
        );
    }
}

fn io_error(kind: io::ErrorKind, reason: &str) -> RedisError {
    io::Error::new(kind, reason.to_string()).into()
}

impl Wire {
    /// Starts the reader and writer tasks of `stream` (in the current
    /// runtime); requests unanswered for `timeout` are answered with a
    /// timeout error.
    pub fn start(stream: Box<dyn Stream>, alive: Alive, timeout: Duration) -> Wire {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            write: Notify::new(),
            stop: Notify::new(),
            alive,
            timeout,
        });
        let (reader, writer) = tokio::io::split(stream);
        tokio::spawn(read(shared.clone(), reader));
        tokio::spawn(write(shared.clone(), writer));
        Wire(Arc::new(Owner(shared)))
    }

    /// Queues `request`, to be answered by `deadline`; `Err(request)` back
    /// if the connection has ended: then it never left.
    pub fn send<R: Request + 'static>(
        &self,
        request: Box<R>,
        expect: Expect,
        deadline: Instant,
    ) -> Result<(), Box<R>> {
        self.push(expect, deadline, request)
    }

    /// Appends a request to the write buffer and its answer to the
    /// waiting; `Err(queue)` back if the connection has ended.
    fn push<Q: Queued>(&self, expect: Expect, deadline: Instant, queue: Q) -> Result<(), Q> {
        let shared = &self.0 .0;
        let (skip, left, kept) = match expect {
            Expect::One => (0, 1, None),
            Expect::Many { skip, keep } => (skip, skip + keep, Some(Vec::with_capacity(keep))),
        };
        let mut waiting = shared.lock();
        if waiting.ended {
            return Err(queue);
        }
        // Who sends this request: the caller wakes the writer only when
        // nothing is under way. Otherwise the writer was told already (a
        // request waits in the buffer), or the reader tells it when the
        // reply to a request that left comes (`deliver`): Redis runs a
        // connection's requests in order, so one sent now would wait there
        // instead; meanwhile the buffer gathers the requests of other
        // callers, and no thread is woken for them.
        let wake = waiting.waiting.is_empty();
        let done = queue.queue(&mut waiting.out);
        waiting.unsent += 1;
        waiting.waiting.push_back(Waiter {
            skip,
            left,
            kept,
            deadline,
            done: Some(done),
        });
        drop(waiting);
        if wake {
            shared.write.notify_one();
        }
        Ok(())
    }

    /// A request, awaited. One that could not be queued fails as a refused
    /// connection: it provably never reached Redis.
    pub async fn call(
        &self,
        encode: impl FnOnce(&mut Vec<u8>),
        expect: Expect,
    ) -> RedisResult<Value> {
        if let Expect::Many { skip: 0, keep: 0 } = expect {
            // Nothing to send: no reply would ever come.
            return Ok(Value::Array(Vec::new()));
        }
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + self.0 .0.timeout;
        if self.push(expect, deadline, Awaited(encode, tx)).is_err() {
            return Err(not_sent());
        }
        rx.await.unwrap_or_else(|_| {
            Err(io_error(
                io::ErrorKind::ConnectionAborted,
                "connection dropped",
            ))
        })
    }
}

impl ConnectionLike for Wire {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.call(|out| cmd.write_packed_command(out), Expect::One))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let packed = cmd.get_packed_pipeline();
            let expect = Expect::Many {
                skip: offset,
                keep: count,
            };
            match self
                .call(|out| out.extend_from_slice(&packed), expect)
                .await?
            {
                Value::Array(replies) => Ok(replies),
                _ => unreachable!("a pipeline is answered with an array"),
            }
        })
    }

    /// Not used: the database is selected when the connection opens.
    fn get_db(&self) -> i64 {
        0
    }
}

/// A request that found its connection ended before it was queued.
pub fn not_sent() -> RedisError {
    io_error(
        io::ErrorKind::ConnectionRefused,
        "connection closed before the request was sent",
    )
}

/// Calls `done`; a panic in it ends there, not in the connection's task.
fn answer(done: Done, reply: RedisResult<Value>) {
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| done.answer(reply)));
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the connection: every request waiting is answered with the
    /// error, but those still in the write buffer, which provably never
    /// left, as not sent (`log`: the end is logged as a lost connection).
    fn end(&self, kind: io::ErrorKind, reason: &str, log: bool) {
        let (waiting, sent) = {
            let mut queue = self.lock();
            if queue.ended {
                return;
            }
            queue.ended = true;
            queue.out = Vec::new();
            let sent = queue.waiting.len() - std::mem::take(&mut queue.unsent);
            (std::mem::take(&mut queue.waiting), sent)
        };
        if log {
            self.alive.lost(&reason);
        } else {
            self.alive.end();
        }
        self.write.notify_one();
        self.stop.notify_one();
        for (i, waiter) in waiting.into_iter().enumerate() {
            if let Some(done) = waiter.done {
                let error = if i < sent {
                    io_error(kind, reason)
                } else {
                    not_sent()
                };
                answer(done, Err(error));
            }
        }
    }

    /// Hands `replies` to the requests waiting, in order, and answers the
    /// ones complete. False if a reply came that nobody asked for.
    fn deliver(&self, replies: &mut Vec<Value>, ready: &mut Vec<(Done, Value)>) -> bool {
        {
            let mut queue = self.lock();
            for reply in replies.drain(..) {
                let Some(waiter) = queue.waiting.front_mut() else {
                    return false;
                };
                waiter.left -= 1;
                match &mut waiter.kept {
                    _ if waiter.skip > 0 => waiter.skip -= 1,
                    Some(kept) => kept.push(reply),
                    None => {
                        if let Some(done) = waiter.done.take() {
                            ready.push((done, reply));
                        }
                    }
                }
                if waiter.left == 0 {
                    let waiter = queue.waiting.pop_front().expect("the front");
                    if let (Some(done), Some(kept)) = (waiter.done, waiter.kept) {
                        ready.push((done, Value::Array(kept)));
                    }
                }
            }
        }
        for (done, reply) in ready.drain(..) {
            answer(done, Ok(reply));
        }
        // Requests queued while these were under way (`push`), and those
        // the answers queued (a group commit's next group): they leave
        // together.
        if !self.lock().out.is_empty() {
            self.write.notify_one();
        }
        true
    }

    /// Answers the requests whose deadline has passed with a timeout; the
    /// next deadline to look at.
    fn expire(&self, now: Instant) -> Instant {
        let mut late = Vec::new();
        let next = {
            let mut queue = self.lock();
            let mut next = now + self.timeout;
            for waiter in queue.waiting.iter_mut() {
                if waiter.deadline > now {
                    next = waiter.deadline;
                    break;
                }
                late.extend(waiter.done.take());
            }
            next
        };
        for done in late {
            answer(done, Err(io_error(io::ErrorKind::TimedOut, "timeout")));
        }
        next
    }
}

/// Sends what callers queue, all that was queued in one write. Before it
/// takes the buffer, it lets the runtime run once round its other work:
/// requests queued meanwhile leave in the same write (one system call, and
/// one read in Redis, for many).
async fn write(shared: Arc<Shared>, mut stream: impl tokio::io::AsyncWrite + Unpin) {
    let mut batch = Vec::new();
    loop {
        shared.write.notified().await;
        tokio::task::yield_now().await;
        {
            let mut queue = shared.lock();
            if queue.ended {
                return;
            }
            std::mem::swap(&mut queue.out, &mut batch);
            queue.unsent = 0;
        }
        if batch.is_empty() {
            continue;
        }
        let written = async {
            stream.write_all(&batch).await?;
            stream.flush().await
        };
        if let Err(e) = written.await {
            shared.end(e.kind(), &e.to_string(), true);
            return;
        }
        // Kept for its capacity (the next batch is swapped into it), unless
        // a large request grew it: that is given back.
        batch.clear();
        if batch.capacity() > KEPT_CAPACITY {
            batch = Vec::new();
        }
    }
}

/// Reads and parses replies and answers the callers; answers the late ones
/// with a timeout.
async fn read(shared: Arc<Shared>, mut stream: impl tokio::io::AsyncRead + Unpin) {
    const ROOM: usize = 64 * 1024;
    let mut buf = BytesMut::with_capacity(4 * ROOM);
    let mut codec = ValueCodec::default();
    let mut replies = Vec::new();
    let mut ready = Vec::new();
    let timer = tokio::time::sleep(shared.timeout);
    tokio::pin!(timer);
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) => break,
                Err(e) => {
                    shared.deliver(&mut replies, &mut ready);
                    shared.end(io::ErrorKind::InvalidData, &e.to_string(), true);
                    return;
                }
            }
        }
        if !replies.is_empty() && !shared.deliver(&mut replies, &mut ready) {
            let reason = "a reply to no request: out of step with the server";
            shared.end(io::ErrorKind::InvalidData, reason, true);
            return;
        }
        if buf.is_empty() && buf.capacity() > KEPT_CAPACITY {
            // A large reply grew it: given back.
            buf = BytesMut::with_capacity(4 * ROOM);
        }
        if buf.capacity() - buf.len() < ROOM {
            buf.reserve(4 * ROOM);
        }
        tokio::select! {
            biased;
            () = shared.stop.notified() => return,
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) => {
                    shared.end(io::ErrorKind::UnexpectedEof, "closed by the server", true);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    shared.end(e.kind(), &e.to_string(), true);
                    return;
                }
            },
            () = &mut timer => {
                let next = shared.expire(Instant::now());
                timer.as_mut().reset(next);
            }
        }
    }
}
