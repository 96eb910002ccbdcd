//! Backup and restore of everything kept under the key prefix, in the
//! format of `backup_file.rs` (README, "Backup and restore").
//!
//! A backup SCANs every server (each master of a cluster) for the keys under
//! the prefix and copies each with one script call (`DUMP` and its expiry,
//! atomically), a hundred keys per round trip, into blocks written as they
//! fill: memory stays a block and a batch, whatever the data. Leases, their
//! owners and node membership are the running deployment's state and left
//! out; fences are data and kept, so a fence issued after a restore is above
//! every fence issued before the backup. Only keys of the layout are taken
//! (`Keys::is_backed_up`): a deployment whose prefix starts with this one's
//! keeps its keys out of this one's backups.
//!
//! A restore reads the whole file once to check it (blocks, trailer, the
//! target's Redis version) before its first write, then `RESTORE`s each key
//! under the target's prefix (`REPLACE`, with its absolute expiry). A marker
//! key names the backup while it runs: a restore interrupted part-way runs
//! again to completion. With `wait_replicas` set, each round trip of
//! RESTOREs ends with `WAIT` on every server it wrote to: a restore returns
//! once that many replicas hold it, or fails with `NotReplicated` (its
//! marker kept, so it runs again).

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use redis::{Cmd, Value};
use tokio::fs::File;
use tokio::io::{BufReader, BufWriter};

use crate::connection::scripts::Lua;
use crate::connection::Client;
use crate::error::{Error, Result};
use crate::store::backup_file::{Header, ReadError, Reader, Record, Writer};
use crate::store::keys::{ClientKeys, Keys};

/// `{DUMP payload, absolute expiry in Unix ms or 0}` of a key, or nil.
static DUMP: LazyLock<Lua> = LazyLock::new(|| Lua::new(&[include_str!("lua/backup_dump.lua")]));

/// Keys per SCAN page, and per round trip of DUMPs or RESTOREs.
const SCAN_COUNT: usize = 1000;
const BATCH: usize = 100;

/// Why a backup or restore was refused: nothing was written to Redis (a
/// restore's file is checked first) unless said otherwise.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The file is not a whole backup written by this library.
    BadBackup(String),
    /// The target holds this key under its prefix (mode fail_if_exists).
    NotEmpty(Vec<u8>),
    /// The file could not be created, read or written.
    File(String),
    /// DUMP payloads restore only into the same Redis version or a newer one.
    RedisVersion { backup: String, target: String },
}

pub type Outcome<T> = std::result::Result<T, Refusal>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    FailIfExists,
    Replace,
}

/// Where a long call is: the phase, keys and bytes so far.
pub type Progress<'a> = &'a (dyn Fn(&'static str, u64, u64) + Send + Sync);

/// Writes a backup of the client's prefix to `path` (first to
/// `path.part`, renamed once complete, removed if the backup fails). Keys
/// and bytes written.
pub async fn backup(
    client: &Client,
    path: &Path,
    progress: Progress<'_>,
) -> Result<Outcome<(u64, u64)>> {
    let part = part_path(path);
    let done = write_backup(client, &part, progress).await;
    if !matches!(done, Ok(Ok(_))) {
        let _ = tokio::fs::remove_file(&part).await;
        return done;
    }
    Ok(match tokio::fs::rename(&part, path).await {
        Ok(()) => done?,
        Err(e) => Err(file_error(path, e)),
    })
}

async fn write_backup(
    client: &Client,
    part: &Path,
    progress: Progress<'_>,
) -> Result<Outcome<(u64, u64)>> {
    let keys = client.keys();
    let header = Header {
        prefix: keys.prefix().to_vec(),
        redis_version: redis_version(client).await?,
        created_ms: client.now_ms().await?,
    };
    // Readable by its owner only: sessions and messages may be private.
    let created = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(part)
        .await;
    let file = match created {
        Ok(file) => file,
        Err(e) => return Ok(Err(file_error(part, e))),
    };
    let mut writer = match Writer::new(BufWriter::new(file), &header).await {
        Ok(writer) => writer,
        Err(e) => return Ok(Err(file_error(part, e))),
    };
    client.load_script(&DUMP).await?;
    let prefix = keys.prefix();
    let mut scan = DataKeys::new(client, prefix).await?;
    while let Some(names) = scan.next_page().await? {
        for batch in names.chunks(BATCH) {
            for record in dump(client, prefix, batch).await? {
                if let Err(e) = writer.push(&record).await {
                    return Ok(Err(file_error(part, e)));
                }
            }
        }
        // After each page, also one without data: a caller waiting for
        // reports knows the work goes on.
        let (n, bytes) = writer.written();
        progress("backup", n, bytes);
    }
    let written = async {
        let (out, n, bytes) = writer.finish().await?;
        out.into_inner().sync_all().await?;
        Ok::<_, std::io::Error>((n, bytes))
    };
    Ok(written.await.map_err(|e| file_error(part, e)))
}

/// The records of the keys `names` that still exist.
async fn dump(client: &Client, prefix: &[u8], names: &[Vec<u8>]) -> Result<Vec<Record>> {
    let cmds = || -> Vec<Cmd> {
        names
            .iter()
            .map(|key| {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(DUMP.hash()).arg(1).arg(key);
                cmd
            })
            .collect()
    };
    let replies: Vec<Value> = match client.each(cmds()).await {
        // Redis restarted or failed over since the script was loaded.
        Err(Error::Redis(msg)) if msg.starts_with("NOSCRIPT") => {
            client.reload_script(&DUMP).await?;
            client.each(cmds()).await?
        }
        other => other?,
    };
    let mut records = Vec::with_capacity(names.len());
    for (key, reply) in names.iter().zip(replies) {
        match reply {
            Value::Nil => {} // gone since the SCAN
            Value::Array(mut parts) if parts.len() == 2 => {
                let expire_at = match parts.pop() {
                    Some(Value::Int(at)) => at,
                    _ => return Err(Error::corrupt("reply", "DUMP expiry")),
                };
                let Some(Value::BulkString(dump)) = parts.pop() else {
                    return Err(Error::corrupt("reply", "DUMP payload"));
                };
                records.push(Record {
                    name: key[prefix.len()..].to_vec(),
                    expire_at,
                    dump,
                });
            }
            _ => return Err(Error::corrupt("reply", "DUMP")),
        }
    }
    Ok(records)
}

/// Restores the backup at `path` into the client's deployment, under its
/// prefix. Keys restored.
pub async fn restore(
    client: &Client,
    path: &Path,
    mode: Mode,
    progress: Progress<'_>,
) -> Result<Outcome<u64>> {
    // The whole file first: nothing is written from a bad one.
    let header = match verify(path, progress).await {
        Ok(header) => header,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let target = redis_version(client).await?;
    if version_number(&target) < version_number(&header.redis_version) {
        return Ok(Err(Refusal::RedisVersion {
            backup: header.redis_version,
            target,
        }));
    }
    let keys = client.keys();
    let marker = keys.restore_marker();
    let id = header.id();
    let resumed = client
        .query::<Option<Vec<u8>>>(redis::cmd("GET").arg(&marker))
        .await?;
    match resumed {
        Some(running) if running == id.as_bytes() => {} // the same restore, again
        Some(_) if mode == Mode::FailIfExists => return Ok(Err(Refusal::NotEmpty(marker))),
        _ if mode == Mode::FailIfExists => {
            if let Some(key) = first_data_key(client, keys.prefix(), progress).await? {
                return Ok(Err(Refusal::NotEmpty(key)));
            }
        }
        _ => {}
    }
    client
        .query::<()>(redis::cmd("SET").arg(&marker).arg(&id))
        .await?;
    let mut reader = match open(path).await {
        Ok(reader) => reader,
        Err(refusal) => return Ok(Err(refusal)),
    };
    loop {
        let records = match reader.next().await {
            Ok(Some(records)) => records,
            Ok(None) => break,
            Err(e) => return Ok(Err(read_refusal(path, e))),
        };
        for batch in records.chunks(BATCH) {
            let cmds = batch
                .iter()
                .map(|r| restore_cmd(keys.prefix(), r))
                .collect();
            client.each_write::<Value>(cmds).await?;
        }
        let (n, bytes) = reader.read();
        progress("restore", n, bytes);
    }
    // The session counters came from keys read at different times: the
    // first count_sessions after a restore rebuilds them from the indexes
    // (a count sweeps when it finds no sweep mark; session.rs).
    client
        .write_query::<()>(redis::cmd("DEL").arg(keys.session_sweep()))
        .await?;
    client
        .write_query::<()>(redis::cmd("DEL").arg(&marker))
        .await?;
    Ok(Ok(reader.read().0))
}

fn restore_cmd(prefix: &[u8], record: &Record) -> Cmd {
    let mut cmd = redis::cmd("RESTORE");
    cmd.arg([prefix, &record.name].concat())
        .arg(record.expire_at)
        .arg(&record.dump)
        .arg("REPLACE");
    if record.expire_at > 0 {
        cmd.arg("ABSTTL");
    }
    cmd
}

/// Reads the whole file, checking it; its header.
async fn verify(path: &Path, progress: Progress<'_>) -> Outcome<Header> {
    let mut reader = open(path).await?;
    loop {
        match reader.next().await {
            Ok(Some(_)) => {
                let (n, bytes) = reader.read();
                progress("verify", n, bytes);
            }
            Ok(None) => return Ok(reader.header),
            Err(e) => return Err(read_refusal(path, e)),
        }
    }
}

async fn open(path: &Path) -> Outcome<Reader<BufReader<File>>> {
    let file = File::open(path).await.map_err(|e| file_error(path, e))?;
    Reader::open(BufReader::new(file))
        .await
        .map_err(|e| read_refusal(path, e))
}

/// A key under `prefix` that a backup would take, if any;
/// reports phase `check` after each SCAN page (the pages so far, 0).
async fn first_data_key(
    client: &Client,
    prefix: &[u8],
    progress: Progress<'_>,
) -> Result<Option<Vec<u8>>> {
    let mut scan = DataKeys::new(client, prefix).await?;
    let mut pages = 0;
    while let Some(names) = scan.next_page().await? {
        if let Some(key) = names.into_iter().next() {
            return Ok(Some(key));
        }
        pages += 1;
        progress("check", pages, 0);
    }
    Ok(None)
}

/// The keys under a prefix that a backup takes (`Keys::is_backed_up`), a SCAN
/// page at a time, over every server (each master of a cluster).
struct DataKeys<'a> {
    client: &'a Client,
    prefix: &'a [u8],
    pattern: Vec<u8>,
    /// The servers not yet scanned to the end, the current one last.
    targets: Vec<Option<(String, u16)>>,
    cursor: u64,
}

impl<'a> DataKeys<'a> {
    async fn new(client: &'a Client, prefix: &'a [u8]) -> Result<DataKeys<'a>> {
        let mut targets = client.scan_targets().await?;
        targets.reverse();
        Ok(DataKeys {
            client,
            prefix,
            pattern: glob_prefix(prefix),
            targets,
            cursor: 0,
        })
    }

    /// The next page (possibly empty), or `None` at the end.
    async fn next_page(&mut self) -> Result<Option<Vec<Vec<u8>>>> {
        let Some(target) = self.targets.last() else {
            return Ok(None);
        };
        let (next, found) = self
            .client
            .scan_page(target, self.cursor, &self.pattern, SCAN_COUNT)
            .await?;
        if next == 0 {
            self.targets.pop();
        }
        self.cursor = next;
        let prefix = self.prefix;
        Ok(Some(
            found
                .into_iter()
                .filter(|k| k.starts_with(prefix) && Keys::is_backed_up(&k[prefix.len()..]))
                .collect(),
        ))
    }
}

/// The server's version, from `HELLO` (no rights needed beyond
/// `@connection`, unlike `INFO`).
async fn redis_version(client: &Client) -> Result<String> {
    let hello: Vec<Value> = client.query_master(&redis::cmd("HELLO")).await?;
    let version = hello
        .chunks(2)
        .find_map(|pair| match pair {
            [Value::BulkString(k), Value::BulkString(v)] if k == b"version" => {
                Some(String::from_utf8_lossy(v).into_owned())
            }
            _ => None,
        })
        .unwrap_or_default();
    Ok(version)
}

/// `7.0.15` as `[7, 0, 15]`, for comparing.
fn version_number(version: &str) -> Vec<u64> {
    version
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

/// A SCAN pattern matching the keys that start with `prefix`.
fn glob_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut pattern = Vec::with_capacity(prefix.len() + 1);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            pattern.push(b'\\');
        }
        pattern.push(b);
    }
    pattern.push(b'*');
    pattern
}

fn part_path(path: &Path) -> PathBuf {
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    PathBuf::from(part)
}

fn file_error(path: &Path, e: std::io::Error) -> Refusal {
    Refusal::File(format!("{}: {e}", path.display()))
}

fn read_refusal(path: &Path, e: ReadError) -> Refusal {
    match e {
        ReadError::Bad(why) => Refusal::BadBackup(why),
        ReadError::Io(e) => file_error(path, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_pattern_escapes_glob_characters() {
        assert_eq!(glob_prefix(b"emqx:"), b"emqx:*");
        assert_eq!(glob_prefix(b"a*b?[c]\\:"), b"a\\*b\\?\\[c\\]\\\\:*");
    }

    #[test]
    fn versions_compare_by_number() {
        assert!(version_number("7.0.15") < version_number("7.2.4"));
        assert!(version_number("7.10.0") > version_number("7.9.9"));
        assert!(version_number("6.2.14") < version_number("7.0.0"));
        assert_eq!(version_number("7.0.15"), version_number("7.0.15"));
    }

    #[test]
    fn restore_command_keeps_absolute_expiry() {
        let r = Record {
            name: b"sess:{c}".to_vec(),
            expire_at: 1_800_000_000_000,
            dump: b"x".to_vec(),
        };
        let args: Vec<Vec<u8>> = restore_cmd(b"new:", &r)
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => vec![],
            })
            .collect();
        assert_eq!(
            args,
            [
                &b"RESTORE"[..],
                b"new:sess:{c}",
                b"1800000000000",
                b"x",
                b"REPLACE",
                b"ABSTTL"
            ]
        );
    }
}
