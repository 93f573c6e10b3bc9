//! Reading (docs/filelog.md, "Reading, and torn tails" and "Offsets, time and retention"): a
//! reader per partition that follows its segments without a lock, judging a bad frame under a
//! shared lock, and the offsets a partition holds: its bounds and the first offset at a time.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use super::frame::{decode_records, is_torn_tail, BodyHeader, Frames, SegmentScan, Step};
use super::writer::FileLock;
use super::{segment_name, unavailable, FileLog, LOCK_FILE};
use crate::model::{Offset, Partition};
use crate::source::{LogError, LogReader, LogRecord, RecordRef};

/// How far `end_offsets` has scanned a partition's last segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct KnownEnd {
    base: Offset,
    pos: u64,
    end: Offset,
}

pub(super) struct FileLogReader {
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

impl FileLog {
    /// A reader of the given partitions, each from its start offset.
    pub(super) fn open_reader(
        &self,
        start: &BTreeMap<Partition, Offset>,
    ) -> Result<FileLogReader, LogError> {
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
        Ok(FileLogReader {
            log: self.name.clone(),
            lock_path: self.dir.join(LOCK_FILE),
            parts,
            turn: 0,
        })
    }

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
        // Position at the first frame that holds `offset` or later.
        let mut scan = self.scan_segment(partition, base, 0)?;
        let mut pos = 0;
        let mut segment_end = base;
        while let Step::Frame { body, .. } = scan.next()? {
            let header = BodyHeader::read(body);
            if header.end() > offset {
                break;
            }
            pos = scan.frames.pos;
            segment_end = header.end();
        }
        scan.rewind_to(pos)?;
        let SegmentScan {
            path, file, frames, ..
        } = scan;
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

    /// The earliest and end offsets of a partition (end = the offset after the last whole frame).
    pub(super) fn bounds(&self, partition: Partition) -> Result<(Offset, Offset), LogError> {
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
        let mut scan = self.scan_segment(partition, last, from)?;
        let mut pos = from;
        while let Step::Frame { body, .. } = scan.next()? {
            end = BodyHeader::read(body).end();
            pos = scan.frames.pos;
        }
        self.ends.lock().unwrap_or_else(PoisonError::into_inner)[partition.index()] =
            Some(KnownEnd {
                base: last,
                pos,
                end,
            });
        Ok((first, end))
    }

    pub(super) fn partition_offset_for_time(
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
            let mut scan = self.scan_segment(partition, base, 0)?;
            while let Step::Frame { body, .. } = scan.next()? {
                let header = BodyHeader::read(body);
                if header.last_ts >= ts_ms {
                    let mut records = VecDeque::new();
                    decode_records(body, partition, header.base, &mut records)
                        .map_err(|d| self.corrupt(&scan.path, d))?;
                    let first = records.iter().find(|r| r.timestamp_ms >= ts_ms);
                    return Ok(first.map_or(header.end(), |r| r.offset));
                }
            }
        }
        Ok(self.bounds(partition)?.1)
    }

    /// Per partition, the earliest offset it still holds.
    pub(super) fn offsets_at_start(&self) -> Result<BTreeMap<Partition, Offset>, LogError> {
        self.partition_ids()
            .map(|p| Ok((p, self.bounds(p)?.0)))
            .collect()
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
    use super::super::testing::{log, read_all};
    use crate::model::{Offset, Partition};
    use crate::source::EventLog;

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
