//! The embedded event log, `file:PATH[?partitions=N&retention_hours=H&segment_mb=M]`: a folder
//! of append-only segment files per partition that several processes may append to and read
//! at once. The format is described in `docs/filelog.md`.
//!
//! Writers serialize on an exclusive `flock` of `PATH/lock` (and a mutex within a process), write
//! one CRC-framed batch per partition at the end of its active segment, and fsync before
//! returning. Readers take no lock: they read only whole frames whose CRC matches, so a frame
//! being written is invisible until complete. A frame that fails its check is judged under a
//! shared lock (no writer active): a torn tail left by a crashed writer is waited on (the next
//! writer truncates it); anything else is corruption and an error.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    event_key, partition_for_key, DeadLetter, EventLog, LogError, LogReader, LogRecord, RecordRef,
};
use crate::model::address::option;
use crate::model::Event;
use crate::model::{Offset, Partition};

const META_FILE: &str = "log.json";
const LOCK_FILE: &str = "lock";
const DLQ_DIR: &str = "dlq";
const FORMAT: u32 = 1;
const DEFAULT_PARTITIONS: i32 = 4;
const DEFAULT_SEGMENT_MB: u32 = 64;
/// Frame header: body length (u32) and CRC-32 of the body (u32).
const FRAME_HEADER: usize = 8;
/// Body header: base offset (i64), record count (u32), first and last timestamp (i64, i64).
const BODY_HEADER: usize = 28;
/// Record header: timestamp (i64), key length (i32, −1 = no key), payload length (u32).
const RECORD_HEADER: usize = 16;
/// The largest frame body; a larger batch is split into several frames.
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// How much of a segment a reader reads at a time.
const READ_CHUNK: usize = 1 << 20;

/// Options of a `file:` URL. Fixed when the log is created (recorded in `PATH/log.json`); a URL
/// that reopens the log may repeat them but not change them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileLogOptions {
    /// Number of partitions (default 4).
    pub partitions: Option<i32>,
    /// Whole segments whose records are all older than this are deleted when a segment rolls
    /// (default: kept forever).
    pub retention_hours: Option<u32>,
    /// A segment rolls once it holds this many MiB (default 64).
    pub segment_mb: Option<u32>,
}

impl FileLogOptions {
    pub(crate) fn from_params(params: &[(String, String)]) -> Result<Self, String> {
        const KNOWN: &[&str] = &["partitions", "retention_hours", "segment_mb"];
        Ok(Self {
            partitions: option(
                params,
                KNOWN,
                "partitions",
                "must be a whole number from 1 to 1024",
                |p: &i32| (1..=1024).contains(p),
            )?,
            retention_hours: option(
                params,
                KNOWN,
                "retention_hours",
                "must be a whole number of hours, at least 1",
                |h: &u32| *h >= 1,
            )?,
            segment_mb: option(
                params,
                KNOWN,
                "segment_mb",
                "must be a whole number of MiB from 1 to 1024",
                |m: &u32| (1..=1024).contains(m),
            )?,
        })
    }
}

/// `PATH/log.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    format: u32,
    partitions: i32,
    segment_mb: u32,
    retention_hours: Option<u32>,
}

/// A file log (see the module doc).
pub struct FileLog {
    name: String,
    dir: PathBuf,
    meta: Meta,
    writer: Mutex<Writer>,
    /// Spreads messages without a key over the partitions.
    unkeyed: AtomicU32,
    dlq: OnceLock<Box<FileLog>>,
    /// Milliseconds since the Unix epoch (a fixed clock in unit tests).
    clock: fn() -> i64,
    /// Per partition, how far `end_offsets` has scanned the last segment.
    ends: Mutex<Vec<Option<KnownEnd>>>,
}

#[derive(Debug, Clone, Copy)]
struct KnownEnd {
    base: Offset,
    pos: u64,
    end: Offset,
}

struct Writer {
    lock: File,
    /// Per partition, the active segment as this process last left it.
    parts: Vec<Option<Active>>,
}

/// The active (last) segment of a partition.
struct Active {
    base: Offset,
    file: File,
    len: u64,
    next_offset: Offset,
    last_ts: i64,
}

fn segment_name(base: Offset) -> String {
    format!("{base:020}.log")
}

/// The base offsets of a partition's segments, oldest first.
fn list_segments(dir: &Path) -> std::io::Result<Vec<Offset>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name
            .strip_suffix(".log")
            .filter(|b| b.len() == 20)
            .and_then(|b| b.parse::<Offset>().ok())
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Holds an exclusive or shared `flock` until dropped.
struct FileLock<'f>(&'f File);

impl<'f> FileLock<'f> {
    fn exclusive(file: &'f File) -> std::io::Result<Self> {
        file.lock()?;
        Ok(Self(file))
    }

    fn shared(file: &'f File) -> std::io::Result<Self> {
        file.lock_shared()?;
        Ok(Self(file))
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // Closing the file would release it too; an unlock error leaves nothing to do.
        let _ = self.0.unlock();
    }
}

/// The fixed fields at the start of a frame body.
#[derive(Debug, Clone, Copy)]
struct BodyHeader {
    base: Offset,
    count: u32,
    first_ts: i64,
    last_ts: i64,
}

impl BodyHeader {
    fn read(body: &[u8]) -> Self {
        let i64_at = |at: usize| i64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        Self {
            base: Offset(i64_at(0)),
            count: u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")),
            first_ts: i64_at(12),
            last_ts: i64_at(20),
        }
    }

    fn end(&self) -> Offset {
        self.base + i64::from(self.count)
    }
}

/// A message to append: its key, if any, and its payload.
type Message<'a> = (Option<&'a [u8]>, &'a [u8]);
/// A record of a frame being written: append timestamp (ms), key, payload.
type FramedRecord<'a> = (i64, Option<&'a [u8]>, &'a [u8]);

/// Appends one frame holding `records` (timestamp, key, payload) with offsets from `base`.
fn encode_frame(out: &mut Vec<u8>, base: Offset, records: &[FramedRecord<'_>]) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out.extend_from_slice(&base.0.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&records.first().map_or(0, |r| r.0).to_le_bytes());
    out.extend_from_slice(&records.last().map_or(0, |r| r.0).to_le_bytes());
    for (ts, key, payload) in records {
        out.extend_from_slice(&ts.to_le_bytes());
        match key {
            Some(k) => {
                out.extend_from_slice(&(k.len() as i32).to_le_bytes());
                out.extend_from_slice(k);
            }
            None => out.extend_from_slice(&(-1i32).to_le_bytes()),
        }
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
    }
    let body_len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn record_size(key: Option<&[u8]>, payload: &[u8]) -> usize {
    RECORD_HEADER + key.map_or(0, <[u8]>::len) + payload.len()
}

/// Decodes the records of a frame body whose CRC matched, from offset `from` on.
fn decode_records(
    body: &[u8],
    partition: Partition,
    from: Offset,
    out: &mut VecDeque<LogRecord>,
) -> Result<(), String> {
    let header = BodyHeader::read(body);
    let mut at = BODY_HEADER;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = body
            .get(*at..*at + n)
            .ok_or_else(|| format!("record runs past its frame at body byte {at}"))?;
        *at += n;
        Ok(s)
    };
    for i in 0..header.count {
        let head = take(&mut at, RECORD_HEADER - 4)?;
        let timestamp_ms = i64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let key_len = i32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        let key = match usize::try_from(key_len) {
            Ok(n) => Some(take(&mut at, n)?.to_vec()),
            Err(_) => None,
        };
        let payload_len = u32::from_le_bytes(take(&mut at, 4)?.try_into().expect("4 bytes"));
        let payload = take(&mut at, payload_len as usize)?;
        let offset = header.base + i64::from(i);
        if offset >= from {
            out.push_back(LogRecord {
                partition,
                offset,
                key,
                payload: payload.to_vec(),
                timestamp_ms,
            });
        }
    }
    if at != body.len() {
        return Err(format!(
            "{} bytes after the last record of a frame",
            body.len() - at
        ));
    }
    Ok(())
}

enum Step<'b> {
    /// A whole frame whose CRC matched; `pos` is where it starts in the file.
    Frame { pos: u64, body: &'b [u8] },
    /// No bytes left before the end of the file.
    End,
    /// The next frame is not all there (yet).
    Incomplete,
    /// The next frame's header or CRC is wrong.
    Bad(String),
}

/// Walks the frames of a segment file from a position, reading a chunk at a time.
struct Frames {
    pos: u64,
    eof: u64,
    buf: Vec<u8>,
    /// The file position of `buf[0]`.
    buf_pos: u64,
}

impl Frames {
    fn new(pos: u64) -> Self {
        Self {
            pos,
            eof: pos,
            buf: Vec::new(),
            buf_pos: pos,
        }
    }

    /// Forgets buffered bytes past `pos` (they may belong to a torn frame that a writer has
    /// since truncated and overwritten) and rereads the file length.
    fn rewind_to(&mut self, pos: u64, file: &File) -> std::io::Result<()> {
        self.pos = pos;
        self.buf.clear();
        self.buf_pos = pos;
        self.eof = file.metadata()?.len();
        Ok(())
    }

    /// Makes `buf` hold the `need` bytes from `pos` (the caller checked they exist).
    fn fill(&mut self, file: &File, need: usize) -> std::io::Result<()> {
        let have = (self.buf_pos + self.buf.len() as u64).saturating_sub(self.pos) as usize;
        if self.pos >= self.buf_pos && have >= need {
            return Ok(());
        }
        let consumed = (self.pos - self.buf_pos) as usize;
        self.buf.drain(..consumed.min(self.buf.len()));
        self.buf_pos = self.pos;
        let have = self.buf.len();
        let want = need.max(READ_CHUNK).min((self.eof - self.pos) as usize);
        self.buf.resize(want, 0);
        file.read_exact_at(&mut self.buf[have..], self.pos + have as u64)
    }

    /// Whether `buf` already holds the whole next frame (no need to look at the file).
    fn has_buffered_frame(&self) -> bool {
        let Some(at) = self.pos.checked_sub(self.buf_pos).map(|a| a as usize) else {
            return false;
        };
        let Some(header) = self.buf.get(at..at + FRAME_HEADER) else {
            return false;
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        self.buf.len() >= at + FRAME_HEADER + len
    }

    /// Drops buffered bytes past `pos` (they may belong to a torn frame that a writer will
    /// truncate and overwrite).
    fn forget_buffer(&mut self) {
        self.buf.clear();
        self.buf_pos = self.pos;
    }

    fn next<'s>(&'s mut self, file: &File) -> std::io::Result<Step<'s>> {
        let avail = self.eof - self.pos;
        if avail == 0 {
            return Ok(Step::End);
        }
        if avail < FRAME_HEADER as u64 {
            return Ok(Step::Incomplete);
        }
        self.fill(file, FRAME_HEADER)?;
        let at = (self.pos - self.buf_pos) as usize;
        let len = u32::from_le_bytes(self.buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(self.buf[at + 4..at + 8].try_into().expect("4 bytes"));
        if !(BODY_HEADER..=MAX_FRAME_BYTES).contains(&len) {
            return Ok(Step::Bad(format!("frame length {len} is out of range")));
        }
        if avail < (FRAME_HEADER + len) as u64 {
            return Ok(Step::Incomplete);
        }
        self.fill(file, FRAME_HEADER + len)?;
        let at = (self.pos - self.buf_pos) as usize;
        let body = &self.buf[at + FRAME_HEADER..at + FRAME_HEADER + len];
        if crc32fast::hash(body) != crc {
            return Ok(Step::Bad("CRC mismatch".into()));
        }
        let pos = self.pos;
        self.pos += (FRAME_HEADER + len) as u64;
        Ok(Step::Frame { pos, body })
    }
}

/// Whether the bytes of a segment from a frame that failed its check to the end of the file are
/// a torn tail (a crashed append: the frame is cut short, or only zeros follow it) rather than
/// corruption of committed frames.
fn is_torn_tail(file: &File, pos: u64) -> std::io::Result<bool> {
    let eof = file.metadata()?.len();
    let mut rest = vec![0; (eof - pos) as usize];
    file.read_exact_at(&mut rest, pos)?;
    if rest.len() < FRAME_HEADER {
        return Ok(true);
    }
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    let after = if (BODY_HEADER..=MAX_FRAME_BYTES).contains(&len) {
        if rest.len() < FRAME_HEADER + len {
            return Ok(true);
        }
        FRAME_HEADER + len
    } else {
        0
    };
    Ok(rest[after..].iter().all(|&b| b == 0))
}

impl FileLog {
    fn partition_ids(&self) -> impl Iterator<Item = Partition> {
        (0..self.meta.partitions).map(Partition)
    }

    /// Opens the log in `dir`, creating it (with `options`) if the folder is missing or empty.
    pub fn open(name: &str, dir: &Path, options: &FileLogOptions) -> Result<Self, LogError> {
        let unavailable = |what: &str, path: &Path, e: std::io::Error| LogError::Unavailable {
            log: name.to_string(),
            detail: format!("{what} {}: {e}", path.display()),
        };
        fs::create_dir_all(dir).map_err(|e| unavailable("cannot create", dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| unavailable("cannot open", &lock_path, e))?;
        let meta = {
            let _held = FileLock::exclusive(&lock)
                .map_err(|e| unavailable("cannot lock", &lock_path, e))?;
            let meta_path = dir.join(META_FILE);
            match fs::read(&meta_path) {
                Ok(bytes) => {
                    let meta: Meta =
                        serde_json::from_slice(&bytes).map_err(|e| LogError::Corrupt {
                            log: name.to_string(),
                            detail: format!("{}: {e}", meta_path.display()),
                        })?;
                    Self::check_options(name, dir, &meta, options)?;
                    meta
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Self::create(name, dir, options)?
                }
                Err(e) => return Err(unavailable("cannot read", &meta_path, e)),
            }
        };
        Ok(Self {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            writer: Mutex::new(Writer {
                lock,
                parts: (0..meta.partitions).map(|_| None).collect(),
            }),
            ends: Mutex::new(vec![None; meta.partitions as usize]),
            meta,
            unkeyed: AtomicU32::new(0),
            dlq: OnceLock::new(),
            clock: now_ms,
        })
    }

    fn check_options(
        name: &str,
        dir: &Path,
        meta: &Meta,
        options: &FileLogOptions,
    ) -> Result<(), LogError> {
        if meta.format != FORMAT {
            return Err(LogError::Corrupt {
                log: name.to_string(),
                detail: format!(
                    "{} has format {}; this version reads format {FORMAT}",
                    dir.join(META_FILE).display(),
                    meta.format
                ),
            });
        }
        let differs = |option: &str, given: String, recorded: String| LogError::Url {
            url: name.to_string(),
            rule: format!(
                "{option}={given}, but the log in {} was created with {option}={recorded}; \
                 a log keeps the options it was created with (see {})",
                dir.display(),
                dir.join(META_FILE).display()
            ),
        };
        if let Some(p) = options.partitions.filter(|p| *p != meta.partitions) {
            return Err(differs(
                "partitions",
                p.to_string(),
                meta.partitions.to_string(),
            ));
        }
        if let Some(m) = options.segment_mb.filter(|m| *m != meta.segment_mb) {
            return Err(differs(
                "segment_mb",
                m.to_string(),
                meta.segment_mb.to_string(),
            ));
        }
        if let Some(h) = options
            .retention_hours
            .filter(|h| Some(*h) != meta.retention_hours)
        {
            return Err(differs(
                "retention_hours",
                h.to_string(),
                meta.retention_hours
                    .map_or("(none)".into(), |r| r.to_string()),
            ));
        }
        Ok(())
    }

    /// Lays out a new log in `dir` (under the lock): partition folders, then `log.json`.
    fn create(name: &str, dir: &Path, options: &FileLogOptions) -> Result<Meta, LogError> {
        let io = |path: &Path, e: std::io::Error| LogError::Unavailable {
            log: name.to_string(),
            detail: format!("creating the log: {}: {e}", path.display()),
        };
        let foreign = fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n != LOCK_FILE && n != DLQ_DIR && !n.starts_with("partition-"));
        if let Some(other) = foreign {
            return Err(LogError::Url {
                url: name.to_string(),
                rule: format!(
                    "{} is not a file log (it has no {META_FILE} but holds {other:?}); \
                     give an empty or new folder",
                    dir.display()
                ),
            });
        }
        let meta = Meta {
            format: FORMAT,
            partitions: options.partitions.unwrap_or(DEFAULT_PARTITIONS),
            segment_mb: options.segment_mb.unwrap_or(DEFAULT_SEGMENT_MB),
            retention_hours: options.retention_hours,
        };
        for p in 0..meta.partitions {
            let pdir = dir.join(format!("partition-{p}"));
            fs::create_dir_all(&pdir).map_err(|e| io(&pdir, e))?;
        }
        let tmp = dir.join(format!("{META_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(&meta).expect("Meta serializes");
        fs::write(&tmp, json).map_err(|e| io(&tmp, e))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(&tmp, e))?;
        let meta_path = dir.join(META_FILE);
        fs::rename(&tmp, &meta_path).map_err(|e| io(&meta_path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))?;
        Ok(meta)
    }

    fn unavailable(&self, what: &str, path: &Path, e: impl std::fmt::Display) -> LogError {
        LogError::Unavailable {
            log: self.name.clone(),
            detail: format!("{what} {}: {e}", path.display()),
        }
    }

    fn corrupt(&self, path: &Path, detail: impl std::fmt::Display) -> LogError {
        LogError::Corrupt {
            log: self.name.clone(),
            detail: format!("{}: {detail}", path.display()),
        }
    }

    fn partition_dir(&self, partition: Partition) -> PathBuf {
        self.dir.join(format!("partition-{partition}"))
    }

    fn segments(&self, partition: Partition) -> Result<Vec<Offset>, LogError> {
        let pdir = self.partition_dir(partition);
        list_segments(&pdir).map_err(|e| self.unavailable("cannot list", &pdir, e))
    }

    fn open_segment(&self, partition: Partition, base: Offset) -> Result<File, LogError> {
        let path = self.partition_dir(partition).join(segment_name(base));
        File::open(&path).map_err(|e| self.unavailable("cannot open", &path, e))
    }

    fn segment_bytes(&self) -> u64 {
        u64::from(self.meta.segment_mb) << 20
    }

    /// The dead-letter log: a one-partition file log in `PATH/dlq`.
    fn dlq(&self) -> Result<&FileLog, LogError> {
        if let Some(dlq) = self.dlq.get() {
            return Ok(dlq);
        }
        let dir = self.dir.join(DLQ_DIR);
        let log = FileLog::open(
            &format!("file:{}", dir.display()),
            &dir,
            &FileLogOptions {
                partitions: Some(1),
                retention_hours: self.meta.retention_hours,
                segment_mb: Some(self.meta.segment_mb),
            },
        )?;
        Ok(self.dlq.get_or_init(|| Box::new(log)))
    }

    /// Brings a partition's active segment up to date under the writer lock: picks up what other
    /// processes appended or rolled, and truncates a torn tail left by a crashed append.
    fn refresh(&self, partition: Partition, slot: &mut Option<Active>) -> Result<(), LogError> {
        let segment_bytes = self.segment_bytes();
        if let Some(active) = slot.as_ref() {
            let path = self
                .partition_dir(partition)
                .join(segment_name(active.base));
            let len = active
                .file
                .metadata()
                .map_err(|e| self.unavailable("cannot stat", &path, e))?
                .len();
            // Nobody else appended, and nobody rolls a segment smaller than the roll size.
            if len == active.len && len < segment_bytes {
                return Ok(());
            }
        }
        let pdir = self.partition_dir(partition);
        let base = match self.segments(partition)?.last() {
            Some(&base) => base,
            None => {
                self.create_segment(partition, Offset(0))?;
                Offset(0)
            }
        };
        let path = pdir.join(segment_name(base));
        let (file, from, next_offset, last_ts) = match slot.take() {
            Some(a) if a.base == base => (a.file, a.len, a.next_offset, a.last_ts),
            other => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| self.unavailable("cannot open", &path, e))?;
                (file, 0, base, other.map_or(0, |a| a.last_ts))
            }
        };
        let mut frames = Frames::new(from);
        frames
            .rewind_to(from, &file)
            .map_err(|e| self.unavailable("cannot stat", &path, e))?;
        let (mut next_offset, mut last_ts) = (next_offset, last_ts);
        loop {
            let step = frames
                .next(&file)
                .map_err(|e| self.unavailable("cannot read", &path, e))?;
            let detail = match step {
                Step::Frame { pos, body } => {
                    let header = BodyHeader::read(body);
                    if header.base != next_offset {
                        return Err(self.corrupt(
                            &path,
                            format!(
                                "the frame at byte {pos} starts at offset {}, expected {next_offset}",
                                header.base
                            ),
                        ));
                    }
                    next_offset = header.end();
                    last_ts = last_ts.max(header.last_ts);
                    continue;
                }
                Step::End => break,
                Step::Incomplete => "an incomplete frame".to_string(),
                Step::Bad(detail) => detail,
            };
            let pos = frames.pos;
            let torn =
                is_torn_tail(&file, pos).map_err(|e| self.unavailable("cannot read", &path, e))?;
            if !torn {
                return Err(self.corrupt(
                    &path,
                    format!("{detail} at byte {pos}, and committed frames follow it"),
                ));
            }
            let eof = frames.eof;
            file.set_len(pos)
                .and_then(|()| file.sync_all())
                .map_err(|e| self.unavailable("cannot truncate", &path, e))?;
            tracing::warn!(
                log = %self.name,
                segment = %path.display(),
                "truncated a torn tail of {} bytes at byte {pos} ({detail}) left by an interrupted append",
                eof - pos
            );
            break;
        }
        *slot = Some(Active {
            base,
            file,
            len: frames.pos,
            next_offset,
            last_ts,
        });
        Ok(())
    }

    fn create_segment(&self, partition: Partition, base: Offset) -> Result<File, LogError> {
        let pdir = self.partition_dir(partition);
        let path = pdir.join(segment_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| self.unavailable("cannot create", &path, e))?;
        File::open(&pdir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.unavailable("cannot sync", &pdir, e))?;
        Ok(file)
    }

    /// Starts a new segment at the partition's next offset, then applies retention.
    fn roll(&self, partition: Partition, active: &mut Active) -> Result<(), LogError> {
        let base = active.next_offset;
        let file = self.create_segment(partition, base)?;
        *active = Active {
            base,
            file,
            len: 0,
            next_offset: base,
            last_ts: active.last_ts,
        };
        if let Some(hours) = self.meta.retention_hours {
            self.apply_retention(partition, active.last_ts, hours)?;
        }
        Ok(())
    }

    /// Deletes the oldest closed segments whose records are all older than the retention.
    /// A segment's records are no newer than the first record of the segment after it (or
    /// `last_ts` for the segment before the new, empty active one).
    fn apply_retention(
        &self,
        partition: Partition,
        last_ts: i64,
        hours: u32,
    ) -> Result<(), LogError> {
        let cutoff = (self.clock)() - i64::from(hours) * 3_600_000;
        let segments = self.segments(partition)?;
        let closed = segments.len().saturating_sub(1);
        for i in 0..closed {
            let newest = if i + 1 == closed {
                last_ts
            } else {
                match self.first_header(partition, segments[i + 1])? {
                    Some(h) => h.first_ts,
                    None => last_ts,
                }
            };
            if newest >= cutoff {
                break;
            }
            let path = self
                .partition_dir(partition)
                .join(segment_name(segments[i]));
            fs::remove_file(&path).map_err(|e| self.unavailable("cannot delete", &path, e))?;
            tracing::info!(log = %self.name, segment = %path.display(), "retention: deleted a segment older than {hours} h");
        }
        Ok(())
    }

    /// The header of a segment's first frame, if it has a whole one.
    fn first_header(
        &self,
        partition: Partition,
        base: Offset,
    ) -> Result<Option<BodyHeader>, LogError> {
        let file = self.open_segment(partition, base)?;
        let path = self.partition_dir(partition).join(segment_name(base));
        let mut frames = Frames::new(0);
        frames
            .rewind_to(0, &file)
            .map_err(|e| self.unavailable("cannot stat", &path, e))?;
        match frames
            .next(&file)
            .map_err(|e| self.unavailable("cannot read", &path, e))?
        {
            Step::Frame { body, .. } => Ok(Some(BodyHeader::read(body))),
            _ => Ok(None),
        }
    }

    /// Appends messages grouped by partition: one frame per partition (split past
    /// `MAX_FRAME_BYTES`), then one fsync per written segment.
    fn append_grouped(
        &self,
        groups: &BTreeMap<Partition, Vec<Message<'_>>>,
    ) -> Result<(), LogError> {
        for messages in groups.values() {
            for (key, payload) in messages {
                let size = record_size(*key, payload);
                if BODY_HEADER + size > MAX_FRAME_BYTES {
                    return Err(LogError::Rejected {
                        log: self.name.clone(),
                        detail: format!(
                            "a message of {size} bytes is larger than the file log's limit of {} bytes",
                            MAX_FRAME_BYTES - BODY_HEADER
                        ),
                    });
                }
            }
        }
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let Writer { lock, parts } = &mut *writer;
        let lock_path = self.dir.join(LOCK_FILE);
        let _held = FileLock::exclusive(lock)
            .map_err(|e| self.unavailable("cannot lock", &lock_path, e))?;
        let mut written = Vec::new();
        let result = self.write_frames(groups, parts, &mut written);
        let result = result.and_then(|()| {
            for &p in &written {
                let active = parts[p.index()]
                    .as_ref()
                    .expect("written partitions are open");
                active.file.sync_data().map_err(|e| {
                    let path = self.partition_dir(p).join(segment_name(active.base));
                    self.unavailable("cannot fsync", &path, e)
                })?;
            }
            Ok(())
        });
        if result.is_err() {
            // Rescan these partitions on the next append (a write may have been cut short).
            for (p, _) in groups.iter() {
                parts[p.index()] = None;
            }
        }
        result
    }

    fn write_frames(
        &self,
        groups: &BTreeMap<Partition, Vec<Message<'_>>>,
        parts: &mut [Option<Active>],
        written: &mut Vec<Partition>,
    ) -> Result<(), LogError> {
        let mut bytes = Vec::new();
        let mut frame = Vec::new();
        for (&p, messages) in groups {
            if messages.is_empty() {
                continue;
            }
            let slot = &mut parts[p.index()];
            self.refresh(p, slot)?;
            let active = slot.as_mut().expect("refresh opens the active segment");
            if active.len >= self.segment_bytes() {
                self.roll(p, active)?;
            }
            let ts = (self.clock)().max(active.last_ts);
            bytes.clear();
            let mut next = active.next_offset;
            let mut size = 0;
            for (key, payload) in messages {
                let rsize = record_size(*key, payload);
                if !frame.is_empty() && BODY_HEADER + size + rsize > MAX_FRAME_BYTES {
                    encode_frame(&mut bytes, next, &frame);
                    next += frame.len() as i64;
                    frame.clear();
                    size = 0;
                }
                frame.push((ts, *key, *payload));
                size += rsize;
            }
            encode_frame(&mut bytes, next, &frame);
            next += frame.len() as i64;
            frame.clear();
            written.push(p);
            let path = self.partition_dir(p).join(segment_name(active.base));
            active
                .file
                .write_all_at(&bytes, active.len)
                .map_err(|e| self.unavailable("cannot write", &path, e))?;
            active.len += bytes.len() as u64;
            active.next_offset = next;
            active.last_ts = ts;
        }
        Ok(())
    }

    /// The earliest and end offsets of a partition (end = the offset after the last whole frame).
    fn bounds(&self, partition: Partition) -> Result<(Offset, Offset), LogError> {
        let segments = self.segments(partition)?;
        let (Some(&first), Some(&last)) = (segments.first(), segments.last()) else {
            return Ok((Offset(0), Offset(0)));
        };
        // Resume from where the last call stopped in the same segment: frames before a valid
        // end are never rewritten.
        let known = self.ends.lock().unwrap_or_else(PoisonError::into_inner)[partition.index()];
        let (from, mut end) = match known {
            Some(k) if k.base == last => (k.pos, k.end),
            _ => (0, last),
        };
        let file = self.open_segment(partition, last)?;
        let path = self.partition_dir(partition).join(segment_name(last));
        let mut frames = Frames::new(from);
        frames
            .rewind_to(from, &file)
            .map_err(|e| self.unavailable("cannot stat", &path, e))?;
        let mut pos = from;
        while let Step::Frame { body, .. } = frames
            .next(&file)
            .map_err(|e| self.unavailable("cannot read", &path, e))?
        {
            end = BodyHeader::read(body).end();
            pos = frames.pos;
        }
        self.ends.lock().unwrap_or_else(PoisonError::into_inner)[partition.index()] =
            Some(KnownEnd {
                base: last,
                pos,
                end,
            });
        Ok((first, end))
    }

    fn partition_offset_for_time(
        &self,
        partition: Partition,
        ts_ms: i64,
    ) -> Result<Offset, LogError> {
        let segments = self.segments(partition)?;
        // The last segment whose first record is older than ts holds the answer, or it is the
        // next segment's base; timestamps never decrease within a partition.
        let mut start = 0;
        for (i, &base) in segments.iter().enumerate() {
            match self.first_header(partition, base)? {
                Some(h) if h.first_ts < ts_ms => start = i,
                _ => break,
            }
        }
        for &base in &segments[start.min(segments.len())..] {
            let file = self.open_segment(partition, base)?;
            let path = self.partition_dir(partition).join(segment_name(base));
            let mut frames = Frames::new(0);
            frames
                .rewind_to(0, &file)
                .map_err(|e| self.unavailable("cannot stat", &path, e))?;
            while let Step::Frame { body, .. } = frames
                .next(&file)
                .map_err(|e| self.unavailable("cannot read", &path, e))?
            {
                let header = BodyHeader::read(body);
                if header.last_ts >= ts_ms {
                    let mut records = VecDeque::new();
                    decode_records(body, partition, header.base, &mut records)
                        .map_err(|d| self.corrupt(&path, d))?;
                    let first = records.iter().find(|r| r.timestamp_ms >= ts_ms);
                    return Ok(first.map_or(header.end(), |r| r.offset));
                }
            }
        }
        Ok(self.bounds(partition)?.1)
    }

    /// Every dead letter in `PATH/dlq`, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, LogError> {
        let dlq = self.dlq()?;
        let mut reader = dlq.reader(&dlq.offsets_at_start()?)?;
        let mut letters = Vec::new();
        loop {
            let batch = reader.poll(10_000, Duration::ZERO)?;
            if batch.is_empty() {
                return Ok(letters);
            }
            for record in batch {
                let envelope: DeadLetterEnvelope = serde_json::from_slice(&record.payload)
                    .map_err(|e| LogError::Corrupt {
                        log: dlq.name.clone(),
                        detail: format!("dead letter at offset {}: {e}", record.offset),
                    })?;
                letters.push(envelope.into_letter(record.key).map_err(|detail| {
                    LogError::Corrupt {
                        log: dlq.name.clone(),
                        detail: format!("dead letter at offset {}: {detail}", record.offset),
                    }
                })?);
            }
        }
    }

    fn offsets_at_start(&self) -> Result<BTreeMap<Partition, Offset>, LogError> {
        self.partition_ids()
            .map(|p| Ok((p, self.bounds(p)?.0)))
            .collect()
    }
}

/// A dead letter in the file log's DLQ: the record's payload is this JSON object (the key is the
/// original key). Bytes that are not UTF-8 go in the `*_base64` field instead.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterEnvelope {
    reason: String,
    partition: Partition,
    offset: Offset,
    timestamp_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

impl DeadLetterEnvelope {
    fn new(record: &LogRecord, reason: &str) -> Self {
        let (payload, payload_base64) = match std::str::from_utf8(&record.payload) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&record.payload)),
            ),
        };
        Self {
            reason: reason.to_string(),
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            payload,
            payload_base64,
        }
    }

    fn into_letter(self, key: Option<Vec<u8>>) -> Result<DeadLetter, String> {
        let payload = match (self.payload, self.payload_base64) {
            (Some(s), None) => s.into_bytes(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("payload_base64: {e}"))?,
            _ => return Err("needs exactly one of payload and payload_base64".into()),
        };
        Ok(DeadLetter {
            reason: self.reason,
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key,
            payload,
        })
    }
}

impl EventLog for FileLog {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> Result<Vec<Partition>, LogError> {
        Ok(self.partition_ids().collect())
    }

    fn append(&self, events: &[Event]) -> Result<(), LogError> {
        let keyed: Vec<(String, String)> =
            events.iter().map(|e| (event_key(e), e.to_json())).collect();
        let messages: Vec<(Option<&[u8]>, &[u8])> = keyed
            .iter()
            .map(|(k, v)| (Some(k.as_bytes()), v.as_bytes()))
            .collect();
        self.append_raw(&messages)
    }

    fn append_raw(&self, messages: &[(Option<&[u8]>, &[u8])]) -> Result<(), LogError> {
        let mut groups: BTreeMap<Partition, Vec<Message<'_>>> = BTreeMap::new();
        let partitions = self.meta.partitions;
        for &(key, payload) in messages {
            let p = match key {
                Some(k) => partition_for_key(k, partitions),
                None => Partition(
                    (self.unkeyed.fetch_add(1, Ordering::Relaxed) % partitions as u32) as i32,
                ),
            };
            groups.entry(p).or_default().push((key, payload));
        }
        self.append_grouped(&groups)
    }

    fn reader(&self, start: &BTreeMap<Partition, Offset>) -> Result<Box<dyn LogReader>, LogError> {
        let mut parts = Vec::new();
        for (&partition, &offset) in start {
            if !(0..self.meta.partitions).contains(&partition.0) {
                return Err(LogError::Url {
                    url: self.name.clone(),
                    rule: format!(
                        "has partitions 0..{}, not {partition}",
                        self.meta.partitions
                    ),
                });
            }
            parts.push(self.part_reader(partition, offset)?);
        }
        Ok(Box::new(FileLogReader {
            log: self.name.clone(),
            lock_path: self.dir.join(LOCK_FILE),
            parts,
            turn: 0,
        }))
    }

    fn offsets_for_time(&self, ts: DateTime<Utc>) -> Result<BTreeMap<Partition, Offset>, LogError> {
        self.partition_ids()
            .map(|p| Ok((p, self.partition_offset_for_time(p, ts.timestamp_millis())?)))
            .collect()
    }

    fn end_offsets(&self) -> Result<BTreeMap<Partition, Offset>, LogError> {
        self.partition_ids()
            .map(|p| Ok((p, self.bounds(p)?.1)))
            .collect()
    }

    fn dead_letter(&self, letters: &[(LogRecord, String)]) -> Result<(), LogError> {
        let envelopes: Vec<Vec<u8>> = letters
            .iter()
            .map(|(record, reason)| {
                serde_json::to_vec(&DeadLetterEnvelope::new(record, reason))
                    .expect("an envelope serializes")
            })
            .collect();
        let messages: Vec<(Option<&[u8]>, &[u8])> = letters
            .iter()
            .zip(&envelopes)
            .map(|((record, _), env)| (record.key.as_deref(), env.as_slice()))
            .collect();
        let dlq = self.dlq()?;
        let mut groups = BTreeMap::new();
        groups.insert(Partition(0), messages);
        dlq.append_grouped(&groups)
    }
}

impl FileLog {
    fn part_reader(&self, partition: Partition, offset: Offset) -> Result<PartReader, LogError> {
        let segments = self.segments(partition)?;
        let (earliest, end) = self.bounds(partition)?;
        if offset < earliest || offset > end {
            return Err(LogError::OffsetOutOfRange {
                log: self.name.clone(),
                partition,
                offset,
                earliest,
                end,
            });
        }
        let base = segments
            .iter()
            .rev()
            .find(|&&b| b <= offset)
            .copied()
            .unwrap_or(Offset(0));
        let dir = self.partition_dir(partition);
        if segments.is_empty() {
            // A partition nothing was ever appended to: wait for its first segment.
            return Ok(PartReader {
                partition,
                dir,
                segment: None,
                frames: Frames::new(0),
                segment_end: Offset(0),
                from: offset,
                pending: VecDeque::new(),
            });
        }
        let file = self.open_segment(partition, base)?;
        let path = dir.join(segment_name(base));
        // Position at the first frame that holds `offset` or later.
        let mut frames = Frames::new(0);
        frames
            .rewind_to(0, &file)
            .map_err(|e| self.unavailable("cannot stat", &path, e))?;
        let mut pos = 0;
        let mut segment_end = base;
        while let Step::Frame { body, .. } = frames
            .next(&file)
            .map_err(|e| self.unavailable("cannot read", &path, e))?
        {
            let header = BodyHeader::read(body);
            if header.end() > offset {
                break;
            }
            pos = frames.pos;
            segment_end = header.end();
        }
        frames
            .rewind_to(pos, &file)
            .map_err(|e| self.unavailable("cannot stat", &path, e))?;
        Ok(PartReader {
            partition,
            dir,
            segment: Some((path, file)),
            frames,
            segment_end,
            from: offset,
            pending: VecDeque::new(),
        })
    }
}

struct FileLogReader {
    log: String,
    lock_path: PathBuf,
    parts: Vec<PartReader>,
    /// The partition the next poll reads first (so none is starved).
    turn: usize,
}

struct PartReader {
    partition: Partition,
    dir: PathBuf,
    /// The segment being read, if the partition has one yet.
    segment: Option<(PathBuf, File)>,
    frames: Frames,
    /// The offset after the last frame read from the segment (the next segment's name).
    segment_end: Offset,
    /// Records below this offset are skipped (the start offset inside the first frame).
    from: Offset,
    pending: VecDeque<LogRecord>,
}

fn unavailable(log: &str, what: &str, path: &Path, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable {
        log: log.to_string(),
        detail: format!("{what} {}: {e}", path.display()),
    }
}

impl PartReader {
    /// Reads up to `want` records into `out`; stops when nothing more is there.
    fn fetch(
        &mut self,
        log: &str,
        lock_path: &Path,
        want: usize,
        out: &mut Vec<LogRecord>,
    ) -> Result<(), LogError> {
        let mut taken = 0;
        while taken < want {
            if let Some(record) = self.pending.pop_front() {
                out.push(record);
                taken += 1;
                continue;
            }
            if !self.read_frame(log, lock_path)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Decodes the next whole frame into `pending`, or moves on to the next segment when the
    /// current one is closed; false when nothing new is there.
    fn read_frame(&mut self, log: &str, lock_path: &Path) -> Result<bool, LogError> {
        let Some((path, file)) = &self.segment else {
            let path = self.dir.join(segment_name(self.segment_end));
            return match File::open(&path) {
                Ok(file) => {
                    self.frames = Frames::new(0);
                    self.segment = Some((path, file));
                    Ok(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(unavailable(log, "cannot open", &path, e)),
            };
        };
        let pos = self.frames.pos;
        if !self.frames.has_buffered_frame() {
            self.frames.eof = file
                .metadata()
                .map_err(|e| unavailable(log, "cannot stat", path, e))?
                .len();
        }
        let step = self
            .frames
            .next(file)
            .map_err(|e| unavailable(log, "cannot read", path, e))?;
        let detail = match step {
            Step::Frame { body, .. } => {
                let header = BodyHeader::read(body);
                if header.base != self.segment_end {
                    return Err(LogError::Corrupt {
                        log: log.to_string(),
                        detail: format!(
                            "{}: the frame at byte {pos} starts at offset {}, expected {}",
                            path.display(),
                            header.base,
                            self.segment_end
                        ),
                    });
                }
                decode_records(body, self.partition, self.from, &mut self.pending).map_err(
                    |d| LogError::Corrupt {
                        log: log.to_string(),
                        detail: format!("{}: the frame at byte {pos}: {d}", path.display()),
                    },
                )?;
                self.segment_end = header.end();
                return Ok(true);
            }
            Step::Incomplete => {
                // Being written (or torn): read it afresh next time.
                self.frames.forget_buffer();
                return Ok(false);
            }
            Step::Bad(detail) => detail,
            Step::End => {
                // A segment is closed once the next one exists; the writer creates the next one
                // after its last append here, so look at the length once more before moving on.
                let next = self.dir.join(segment_name(self.segment_end));
                if !next.exists() {
                    return Ok(false);
                }
                let len = file
                    .metadata()
                    .map_err(|e| unavailable(log, "cannot stat", path, e))?
                    .len();
                if len > pos {
                    return Ok(true);
                }
                let file =
                    File::open(&next).map_err(|e| unavailable(log, "cannot open", &next, e))?;
                self.frames = Frames::new(0);
                self.segment = Some((next, file));
                return Ok(true);
            }
        };
        // Judge the bad frame with no writer active.
        let lock_file =
            File::open(lock_path).map_err(|e| unavailable(log, "cannot open", lock_path, e))?;
        let _held = FileLock::shared(&lock_file)
            .map_err(|e| unavailable(log, "cannot lock", lock_path, e))?;
        self.frames
            .rewind_to(pos, file)
            .map_err(|e| unavailable(log, "cannot stat", path, e))?;
        let settled = !matches!(
            self.frames
                .next(file)
                .map_err(|e| unavailable(log, "cannot read", path, e))?,
            Step::Bad(_)
        );
        self.frames
            .rewind_to(pos, file)
            .map_err(|e| unavailable(log, "cannot stat", path, e))?;
        if settled {
            // A writer was replacing a torn tail meanwhile; read again from the same place.
            return Ok(true);
        }
        if is_torn_tail(file, pos).map_err(|e| unavailable(log, "cannot read", path, e))? {
            // A crashed append; the next writer truncates it.
            Ok(false)
        } else {
            Err(LogError::Corrupt {
                log: log.to_string(),
                detail: format!(
                    "{}: {detail} at byte {pos}, and committed frames follow it",
                    path.display()
                ),
            })
        }
    }
}

impl LogReader for FileLogReader {
    fn poll_each(
        &mut self,
        max: usize,
        timeout: Duration,
        take: &mut dyn FnMut(RecordRef<'_>),
    ) -> Result<usize, LogError> {
        let records = self.poll(max, timeout)?;
        records.iter().for_each(|r| take(r.as_record_ref()));
        Ok(records.len())
    }

    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<LogRecord>, LogError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        let n = self.parts.len();
        loop {
            let mut out = Vec::new();
            for k in 0..n {
                if out.len() >= max {
                    break;
                }
                let i = (self.turn + k) % n;
                let want = max - out.len();
                self.parts[i].fetch(&self.log, &self.lock_path, want, &mut out)?;
            }
            if n > 0 {
                self.turn = (self.turn + 1) % n;
            }
            let now = Instant::now();
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(dir: &Path, query: &str) -> FileLog {
        let url = format!("file:{}{query}", dir.display());
        match url.parse::<super::super::LogUrl>().unwrap() {
            super::super::LogUrl::File { path, options } => {
                FileLog::open(&url, &path, &options).unwrap()
            }
            _ => unreachable!(),
        }
    }

    fn append(log: &FileLog, partition_key: &str, n: usize, tag: &str) {
        let payloads: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
        let messages: Vec<(Option<&[u8]>, &[u8])> = payloads
            .iter()
            .map(|p| (Some(partition_key.as_bytes()), p.as_bytes()))
            .collect();
        log.append_raw(&messages).unwrap();
    }

    fn read_all(log: &FileLog, from: Offset) -> Result<Vec<LogRecord>, LogError> {
        let mut reader = log.reader(&BTreeMap::from([(Partition(0), from)]))?;
        let mut out = Vec::new();
        loop {
            let batch = reader.poll(1000, Duration::ZERO)?;
            if batch.is_empty() {
                return Ok(out);
            }
            out.extend(batch);
        }
    }

    #[test]
    fn frames_round_trip_with_and_without_keys() {
        let records: Vec<FramedRecord<'_>> = vec![
            (5, Some(b"ajio|pune".as_slice()), b"{}".as_slice()),
            (6, None, b"".as_slice()),
            (7, Some(b"".as_slice()), b"\xff\x00binary".as_slice()),
        ];
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, Offset(40), &records);
        let body = &bytes[FRAME_HEADER..];
        let header = BodyHeader::read(body);
        assert_eq!(
            (header.base, header.count, header.first_ts, header.last_ts),
            (Offset(40), 3, 5, 7)
        );
        let mut out = VecDeque::new();
        decode_records(body, Partition(2), Offset(41), &mut out).unwrap();
        let got: Vec<_> = out
            .into_iter()
            .map(|r| (r.offset, r.key, r.payload, r.timestamp_ms))
            .collect();
        assert_eq!(
            got,
            vec![
                (Offset(41), None, vec![], 6),
                (Offset(42), Some(vec![]), b"\xff\x00binary".to_vec(), 7)
            ]
        );
    }

    #[test]
    fn a_cut_or_zero_padded_last_frame_is_torn_but_a_bad_middle_frame_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, Offset(0), &[(1, None, b"first".as_slice())]);
        let second = bytes.len() as u64;
        encode_frame(&mut bytes, Offset(1), &[(2, None, b"second".as_slice())]);
        let check = |data: &[u8], pos: u64| {
            fs::write(&path, data).unwrap();
            is_torn_tail(&File::open(&path).unwrap(), pos).unwrap()
        };
        assert!(check(&bytes[..bytes.len() - 1], second));
        assert!(check(&bytes[..second as usize + 3], second));
        let mut padded = bytes[..bytes.len() - 2].to_vec();
        padded.extend([0; 100]);
        assert!(check(&padded, second));
        let mut flipped = bytes.clone();
        flipped[FRAME_HEADER + BODY_HEADER + RECORD_HEADER] ^= 1;
        assert!(!check(&flipped, 0));
    }

    #[test]
    fn retention_deletes_old_segments_when_a_segment_rolls() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = log(dir.path(), "?partitions=1&segment_mb=1&retention_hours=1");
        old.clock = || now_ms() - 3 * 3_600_000;
        // Three segments of old records (each append of 1.1 MiB fills one).
        let big = "x".repeat(1100 * 1024);
        for _ in 0..3 {
            old.append_raw(&[(None, big.as_bytes())]).unwrap();
        }
        drop(old);
        let log = log(dir.path(), "");
        append(&log, "k", 10, "new");
        // The old log kept its segments: by its own clock they were new. The append rolled a
        // fourth segment, and every closed one held only records older than an hour.
        assert_eq!(log.segments(Partition(0)).unwrap(), vec![Offset(3)]);
        let err = log
            .reader(&BTreeMap::from([(Partition(0), Offset(0))]))
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                LogError::OffsetOutOfRange {
                    earliest: Offset(3),
                    end: Offset(13),
                    ..
                }
            ),
            "{err}"
        );
        let records = read_all(&log, Offset(3)).unwrap();
        let offsets: Vec<Offset> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (3..13).map(Offset).collect::<Vec<_>>());
        assert_eq!(records[0].payload, b"new-0");
    }

    #[test]
    fn readers_move_across_segments_from_any_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), "?partitions=1&segment_mb=1");
        let big = "y".repeat(400 * 1024);
        let mut expected = Vec::new();
        for i in 0..12 {
            let payload = format!("{i}{big}");
            log.append_raw(&[(None, payload.as_bytes()), (None, b"small")])
                .unwrap();
            expected.push(payload.into_bytes());
            expected.push(b"small".to_vec());
        }
        assert!(log.segments(Partition(0)).unwrap().len() >= 4);
        for from in [0, 1, 7, 8, 23, 24] {
            let got: Vec<Vec<u8>> = read_all(&log, Offset(from))
                .unwrap()
                .into_iter()
                .map(|r| r.payload)
                .collect();
            assert_eq!(got, expected[from as usize..], "from {from}");
        }
    }
}
