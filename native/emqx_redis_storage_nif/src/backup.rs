//! Backup and restore NIFs. Each answers `{Ref, Result}` once done and,
//! meanwhile, at the start of each phase and then at most ten times a second,
//! `{emqx_redis_storage_progress, Tag, Phase, Keys, Bytes}`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use emqx_redis_storage_core::store::backup::{self, Mode, Outcome, Refusal};
use rustler::env::OwnedEnv;
use rustler::{Binary, Encoder, Env, LocalPid, ResourceArc, Term};

use crate::nif::ClientRes;
use crate::runtime::spawn_admitted;
use crate::term::Out;

/// Sends the caller progress messages: the first of each phase, then not
/// more often than every 100 ms.
struct Reporter {
    pid: LocalPid,
    tag: i64,
    last: Mutex<Option<(&'static str, Instant)>>,
}

impl Reporter {
    fn report(&self, phase: &'static str, keys: u64, bytes: u64) {
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let recent = |&(was, at): &(&str, Instant)| {
                was == phase && at.elapsed() < Duration::from_millis(100)
            };
            if last.as_ref().is_some_and(recent) {
                return;
            }
            *last = Some((phase, Instant::now()));
        }
        let message = Out::Tuple(vec![
            Out::Atom("emqx_redis_storage_progress"),
            Out::Int(self.tag),
            Out::Atom(phase),
            Out::Int(keys as i64),
            Out::Int(bytes as i64),
        ]);
        let _ = OwnedEnv::new().send_and_clear(&self.pid, |env| message.encode(env));
    }
}

fn reporter(env: Env, tag: i64) -> Reporter {
    Reporter {
        pid: env.pid(),
        tag,
        last: Mutex::new(None),
    }
}

/// `{refused, Reason}` for a refusal, else `done(value)`.
fn outcome<T>(outcome: Outcome<T>, done: impl FnOnce(T) -> Out) -> Out {
    let refused = |reason| Out::Tuple(vec![Out::Atom("refused"), reason]);
    let pair = |name, value| Out::Tuple(vec![Out::Atom(name), value]);
    match outcome {
        Ok(value) => done(value),
        Err(Refusal::BadBackup(why)) => refused(pair("bad_backup", Out::Bin(why.into_bytes()))),
        Err(Refusal::NotEmpty(key)) => refused(pair("not_empty", Out::Bin(key))),
        Err(Refusal::File(why)) => refused(pair("file", Out::Bin(why.into_bytes()))),
        Err(Refusal::RedisVersion { backup, target }) => refused(pair(
            "redis_version",
            Out::Map(vec![
                (Out::Atom("backup"), Out::Bin(backup.into_bytes())),
                (Out::Atom("target"), Out::Bin(target.into_bytes())),
            ]),
        )),
    }
}

fn path(bin: &Binary) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bin.as_slice()))
}

#[rustler::nif]
fn backup<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    file: Binary,
    tag: i64,
) -> Term<'a> {
    let (path, reporter) = (path(&file), reporter(env, tag));
    spawn_admitted(env, client.admit("backup"), reply_ref, async move {
        let progress = |phase, keys, bytes| reporter.report(phase, keys, bytes);
        let done = backup::backup(&client, &path, &progress).await?;
        Ok(outcome(done, |(keys, bytes)| {
            Out::Map(vec![
                (Out::Atom("keys"), Out::Int(keys as i64)),
                (Out::Atom("bytes"), Out::Int(bytes as i64)),
            ])
        }))
    })
}

#[rustler::nif]
fn restore<'a>(
    env: Env<'a>,
    client: ResourceArc<ClientRes>,
    reply_ref: Term<'a>,
    file: Binary,
    replace: bool,
    tag: i64,
) -> Term<'a> {
    let (path, reporter) = (path(&file), reporter(env, tag));
    let mode = if replace {
        Mode::Replace
    } else {
        Mode::FailIfExists
    };
    spawn_admitted(env, client.admit("restore"), reply_ref, async move {
        let progress = |phase, keys, bytes| reporter.report(phase, keys, bytes);
        let done = backup::restore(&client, &path, mode, &progress).await?;
        Ok(outcome(done, |keys| {
            Out::Map(vec![(Out::Atom("keys"), Out::Int(keys as i64))])
        }))
    })
}
