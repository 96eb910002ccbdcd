//! The backup file (README, "The backup file"): a header, blocks of key
//! records each with its CRC-32, and a trailer with the counts. All
//! integers are big-endian.
//!
//! ```text
//! file    = magic "EMQXRSB\n" | version u32 | header_len u32 | header | crc32(header) u32
//!           block* | trailer
//! header  = prefix_len u16 | prefix | redis_version_len u16 | redis_version | created_ms i64
//! block   = 'B' | records u32 | len u32 | crc32(payload) u32 | payload (len bytes)
//! payload = record*
//! record  = name_len u32 | name (the key without the prefix) | expire_at i64 (Unix ms, 0: none)
//!           | dump_len u32 | dump (the DUMP payload)
//! trailer = 'E' | blocks u64 | records u64 | crc32(blocks, records) u32, then the end of the file
//! ```

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAGIC: &[u8; 8] = b"EMQXRSB\n";
pub const VERSION: u32 = 1;
/// A block is written out once its records pass this size.
pub const BLOCK_BYTES: usize = 1 << 20;
/// The largest header a reader accepts: beyond it the length is corrupt.
const MAX_HEADER: u32 = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The key prefix of the deployment backed up.
    pub prefix: Vec<u8>,
    /// Of the Redis backed up: DUMP payloads restore into this version or newer.
    pub redis_version: String,
    pub created_ms: i64,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.prefix.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(&(self.redis_version.len() as u16).to_be_bytes());
        out.extend_from_slice(self.redis_version.as_bytes());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Header> {
        let mut cursor = Cursor(bytes);
        let prefix = cursor.take_sized(2)?.to_vec();
        let version = String::from_utf8(cursor.take_sized(2)?.to_vec()).ok()?;
        let created_ms = i64::from_be_bytes(cursor.take(8)?.try_into().ok()?);
        cursor.0.is_empty().then_some(Header {
            prefix,
            redis_version: version,
            created_ms,
        })
    }

    /// Names this backup (a restore's marker): its time and checksum.
    pub fn id(&self) -> String {
        format!(
            "{}-{:08x}",
            self.created_ms,
            crc32fast::hash(&self.encode())
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The key without the prefix.
    pub name: Vec<u8>,
    /// Unix ms; 0: none.
    pub expire_at: i64,
    pub dump: Vec<u8>,
}

/// What is wrong with a file that is read.
#[derive(Debug)]
pub enum ReadError {
    /// Not a backup, or not the one written: the reason.
    Bad(String),
    /// The file could not be read.
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Bad("truncated: the file ends before its trailer".into())
        } else {
            ReadError::Io(e)
        }
    }
}

fn bad<T>(why: impl Into<String>) -> Result<T, ReadError> {
    Err(ReadError::Bad(why.into()))
}

/// Writes a header, then blocks as records are pushed, then the trailer.
pub struct Writer<W> {
    out: W,
    block: Vec<u8>,
    block_records: u32,
    blocks: u64,
    records: u64,
    bytes: u64,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub async fn new(mut out: W, header: &Header) -> io::Result<Self> {
        let body = header.encode();
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&VERSION.to_be_bytes());
        head.extend_from_slice(&(body.len() as u32).to_be_bytes());
        head.extend_from_slice(&body);
        head.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        out.write_all(&head).await?;
        Ok(Writer {
            out,
            block: Vec::new(),
            block_records: 0,
            blocks: 0,
            records: 0,
            bytes: head.len() as u64,
        })
    }

    /// Adds a record; writes the block out once it is full.
    pub async fn push(&mut self, record: &Record) -> io::Result<()> {
        let block = &mut self.block;
        block.extend_from_slice(&(record.name.len() as u32).to_be_bytes());
        block.extend_from_slice(&record.name);
        block.extend_from_slice(&record.expire_at.to_be_bytes());
        block.extend_from_slice(&(record.dump.len() as u32).to_be_bytes());
        block.extend_from_slice(&record.dump);
        self.block_records += 1;
        if self.block.len() >= BLOCK_BYTES {
            self.flush_block().await?;
        }
        Ok(())
    }

    async fn flush_block(&mut self) -> io::Result<()> {
        if self.block_records == 0 {
            return Ok(());
        }
        let mut head = vec![b'B'];
        head.extend_from_slice(&self.block_records.to_be_bytes());
        head.extend_from_slice(&(self.block.len() as u32).to_be_bytes());
        head.extend_from_slice(&crc32fast::hash(&self.block).to_be_bytes());
        self.out.write_all(&head).await?;
        self.out.write_all(&self.block).await?;
        self.bytes += (head.len() + self.block.len()) as u64;
        self.blocks += 1;
        self.records += u64::from(self.block_records);
        self.block.clear();
        self.block_records = 0;
        Ok(())
    }

    /// Records and bytes written so far (full blocks only).
    pub fn written(&self) -> (u64, u64) {
        (self.records, self.bytes)
    }

    /// The last block, the trailer; the stream flushed. Records and bytes.
    pub async fn finish(mut self) -> io::Result<(W, u64, u64)> {
        self.flush_block().await?;
        let counts = [self.blocks.to_be_bytes(), self.records.to_be_bytes()].concat();
        let mut trailer = vec![b'E'];
        trailer.extend_from_slice(&counts);
        trailer.extend_from_slice(&crc32fast::hash(&counts).to_be_bytes());
        self.out.write_all(&trailer).await?;
        self.out.flush().await?;
        Ok((self.out, self.records, self.bytes + trailer.len() as u64))
    }
}

/// Reads a file back, checking every block and the trailer.
pub struct Reader<R> {
    input: R,
    pub header: Header,
    blocks: u64,
    records: u64,
    bytes: u64,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub async fn open(mut input: R) -> Result<Self, ReadError> {
        let mut magic = [0u8; 8];
        match input.read_exact(&mut magic).await {
            Ok(_) if &magic == MAGIC => {}
            Ok(_) => return bad("not a backup of emqx_redis_storage"),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return bad("not a backup of emqx_redis_storage")
            }
            Err(e) => return Err(e.into()),
        }
        let version = input.read_u32().await?;
        if version != VERSION {
            return bad(format!(
                "format version {version}: this build reads version {VERSION}"
            ));
        }
        let len = input.read_u32().await?;
        if len > MAX_HEADER {
            return bad("corrupt header");
        }
        let mut body = vec![0; len as usize];
        input.read_exact(&mut body).await?;
        let crc = input.read_u32().await?;
        let header = match Header::decode(&body) {
            Some(header) if crc == crc32fast::hash(&body) => header,
            _ => return bad("corrupt header"),
        };
        Ok(Reader {
            input,
            header,
            blocks: 0,
            records: 0,
            bytes: 16 + u64::from(len) + 4,
        })
    }

    /// The next block's records, or `None` after a trailer that matches
    /// what was read, at the end of the file.
    pub async fn next(&mut self) -> Result<Option<Vec<Record>>, ReadError> {
        match self.input.read_u8().await? {
            b'B' => {}
            b'E' => return self.end().await.map(|()| None),
            _ => return bad(format!("corrupt after block {}", self.blocks)),
        }
        let count = self.input.read_u32().await?;
        let len = self.input.read_u32().await?;
        let crc = self.input.read_u32().await?;
        // Grown as it is read: a corrupt length meets the end of the file
        // before it allocates much.
        let mut payload = Vec::new();
        (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut payload)
            .await?;
        if payload.len() != len as usize {
            return bad("truncated: the file ends before its trailer");
        }
        if crc32fast::hash(&payload) != crc {
            return bad(format!("checksum mismatch in block {}", self.blocks + 1));
        }
        let records = parse_records(&payload)
            .filter(|r| r.len() == count as usize)
            .ok_or_else(|| ReadError::Bad(format!("corrupt block {}", self.blocks + 1)))?;
        self.blocks += 1;
        self.records += u64::from(count);
        self.bytes += 13 + u64::from(len);
        Ok(Some(records))
    }

    async fn end(&mut self) -> Result<(), ReadError> {
        let mut counts = [0u8; 16];
        self.input.read_exact(&mut counts).await?;
        let crc = self.input.read_u32().await?;
        let blocks = u64::from_be_bytes(counts[..8].try_into().expect("8 bytes"));
        let records = u64::from_be_bytes(counts[8..].try_into().expect("8 bytes"));
        if crc != crc32fast::hash(&counts) {
            return bad("corrupt trailer");
        }
        if (blocks, records) != (self.blocks, self.records) {
            return bad(format!(
                "the trailer counts {records} keys in {blocks} blocks, the file holds {} in {}",
                self.records, self.blocks
            ));
        }
        let mut rest = [0u8; 1];
        if self.input.read(&mut rest).await? != 0 {
            return bad("data after the trailer");
        }
        Ok(())
    }

    /// Records and bytes read so far.
    pub fn read(&self) -> (u64, u64) {
        (self.records, self.bytes)
    }
}

fn parse_records(payload: &[u8]) -> Option<Vec<Record>> {
    let mut cursor = Cursor(payload);
    let mut records = Vec::new();
    while !cursor.0.is_empty() {
        let name = cursor.take_sized(4)?.to_vec();
        let expire_at = i64::from_be_bytes(cursor.take(8)?.try_into().ok()?);
        let dump = cursor.take_sized(4)?.to_vec();
        records.push(Record {
            name,
            expire_at,
            dump,
        });
    }
    Some(records)
}

/// The unread rest of a buffer.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// A length of `width` bytes (2 or 4), then that many bytes.
    fn take_sized(&mut self, width: usize) -> Option<&'a [u8]> {
        let len = self
            .take(width)?
            .iter()
            .fold(0usize, |n, b| n << 8 | usize::from(*b));
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            prefix: b"emqx:".to_vec(),
            redis_version: "7.0.15".into(),
            created_ms: 1_700_000_000_000,
        }
    }

    fn record(i: usize, size: usize) -> Record {
        Record {
            name: format!("sess:{{c{i}}}").into_bytes(),
            expire_at: i as i64,
            dump: vec![i as u8; size],
        }
    }

    async fn write(records: &[Record]) -> Vec<u8> {
        let mut writer = Writer::new(Vec::new(), &header()).await.unwrap();
        for r in records {
            writer.push(r).await.unwrap();
        }
        let (out, n, bytes) = writer.finish().await.unwrap();
        assert_eq!((n, bytes), (records.len() as u64, out.len() as u64));
        out
    }

    async fn read(file: &[u8]) -> Result<(Header, Vec<Record>), String> {
        let outcome = async {
            let mut reader = Reader::open(file).await?;
            let mut all = Vec::new();
            while let Some(block) = reader.next().await? {
                all.extend(block);
            }
            Ok::<_, ReadError>((reader.header, all))
        };
        outcome.await.map_err(|e| match e {
            ReadError::Bad(why) => why,
            ReadError::Io(e) => panic!("{e}"),
        })
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn round_trip_over_several_blocks() {
        block_on(async {
            let records: Vec<Record> = (0..300).map(|i| record(i, 10_000)).collect();
            let file = write(&records).await;
            let (h, back) = read(&file).await.unwrap();
            assert_eq!(h, header());
            assert_eq!(back, records);
            // and an empty backup
            let (_, none) = read(&write(&[]).await).await.unwrap();
            assert!(none.is_empty());
        });
    }

    #[test]
    fn every_truncation_and_every_flipped_bit_is_refused() {
        block_on(async {
            let records: Vec<Record> = (0..3).map(|i| record(i, 5)).collect();
            let file = write(&records).await;
            for len in 0..file.len() {
                assert!(read(&file[..len]).await.is_err(), "truncated to {len}");
            }
            for bit in 0..file.len() * 8 {
                let mut flipped = file.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(read(&flipped).await.is_err(), "bit {bit}");
            }
            let mut longer = file.clone();
            longer.push(0);
            assert_eq!(read(&longer).await.unwrap_err(), "data after the trailer");
        });
    }

    #[test]
    fn foreign_and_future_files_say_so() {
        block_on(async {
            let why = read(b"REDIS0011\xfa\x09redis-ver").await.unwrap_err();
            assert_eq!(why, "not a backup of emqx_redis_storage");
            let mut future = write(&[]).await;
            future[11] = 2;
            assert!(read(&future)
                .await
                .unwrap_err()
                .starts_with("format version 2"));
        });
    }

    #[test]
    fn the_id_names_the_backup() {
        let other = Header {
            created_ms: 1,
            ..header()
        };
        assert_ne!(header().id(), other.id());
        assert_eq!(header().id(), header().id());
    }
}
