//! The embedded event log, `file:PATH[?partitions=N&retention_hours=H&segment_mb=M]`: a folder
//! of append-only segment files per partition that several processes may append to and read
//! at once. The format is described in `docs/filelog.md`; the code has a file per role: `frame`
//! (the on-disk frames), `writer` (appends, segments, retention, locking), `reader` (readers and
//! offsets) and `dlq` (dead letters).
//!
//! Writers serialize on an exclusive `flock` of `PATH/lock` (and a mutex within a process), write
//! one CRC-framed batch per partition at the end of its active segment, and fsync before
//! returning. Readers take no lock: they read only whole frames whose CRC matches, so a frame
//! being written is invisible until complete. A frame that fails its check is judged under a
//! shared lock (no writer active): a torn tail left by a crashed writer is waited on (the next
//! writer truncates it); anything else is corruption and an error.

mod dlq;
mod frame;
mod reader;
mod writer;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{partition_for_key, EventLog, LogError, LogReader, LogRecord};
use crate::model::address::option;
use crate::model::{Offset, Partition};
use frame::SegmentScan;
use reader::KnownEnd;
use writer::{FileLock, Message, Writer};

const META_FILE: &str = "log.json";
const LOCK_FILE: &str = "lock";
const DLQ_DIR: &str = "dlq";
const FORMAT: u32 = 1;
const DEFAULT_PARTITIONS: i32 = 4;
const DEFAULT_SEGMENT_MB: u32 = 64;

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

impl FileLog {
    fn partition_ids(&self) -> impl Iterator<Item = Partition> {
        (0..self.meta.partitions).map(Partition)
    }

    /// Opens the log in `dir`, creating it (with `options`) if the folder is missing or empty.
    pub fn open(name: &str, dir: &Path, options: &FileLogOptions) -> Result<Self, LogError> {
        let unavailable =
            |what: &str, path: &Path, e: std::io::Error| unavailable(name, what, path, e);
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
        unavailable(&self.name, what, path, e)
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

    fn segment_path(&self, partition: Partition, base: Offset) -> PathBuf {
        self.partition_dir(partition).join(segment_name(base))
    }

    /// Opens a segment for a scan of its frames from byte `pos`.
    fn scan_segment(
        &self,
        partition: Partition,
        base: Offset,
        pos: u64,
    ) -> Result<SegmentScan<'_>, LogError> {
        let path = self.segment_path(partition, base);
        let file = File::open(&path).map_err(|e| self.unavailable("cannot open", &path, e))?;
        SegmentScan::new(&self.name, path, file, pos)
    }
}

impl EventLog for FileLog {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> Result<Vec<Partition>, LogError> {
        Ok(self.partition_ids().collect())
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
        Ok(Box::new(self.open_reader(start)?))
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
        self.append_dead_letters(letters)
    }
}

/// A `LogError::Unavailable` for an I/O error on a file or folder of the log.
fn unavailable(log: &str, what: &str, path: &Path, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable {
        log: log.to_string(),
        detail: format!("{what} {}: {e}", path.display()),
    }
}

/// Helpers of the unit tests that open a log and read partition 0.
#[cfg(test)]
mod testing {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::Duration;

    use super::FileLog;
    use crate::model::{Offset, Partition};
    use crate::source::{EventLog, LogError, LogRecord, LogUrl};

    pub(super) fn log(dir: &Path, query: &str) -> FileLog {
        let url = format!("file:{}{query}", dir.display());
        match url.parse::<LogUrl>().unwrap() {
            LogUrl::File { path, options } => FileLog::open(&url, &path, &options).unwrap(),
            _ => unreachable!(),
        }
    }

    pub(super) fn append(log: &FileLog, partition_key: &str, n: usize, tag: &str) {
        let payloads: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
        let messages: Vec<(Option<&[u8]>, &[u8])> = payloads
            .iter()
            .map(|p| (Some(partition_key.as_bytes()), p.as_bytes()))
            .collect();
        log.append_raw(&messages).unwrap();
    }

    pub(super) fn read_all(log: &FileLog, from: Offset) -> Result<Vec<LogRecord>, LogError> {
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
}
