//! Appending (docs/filelog.md, "Appending"): the writer lock, bringing a partition's active
//! segment up to date (truncating a torn tail), rolling segments, retention, and writing one
//! frame per partition before one fsync per written segment.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::PoisonError;

use super::frame::{
    encode_frame, is_torn_tail, record_size, BodyHeader, SegmentScan, Step, BODY_HEADER,
    MAX_FRAME_BYTES,
};
use super::{FileLog, LOCK_FILE};
use crate::model::{Offset, Partition};
use crate::source::LogError;

/// A message to append: its key, if any, and its payload.
pub(super) type Message<'a> = (Option<&'a [u8]>, &'a [u8]);

pub(super) struct Writer {
    pub(super) lock: File,
    /// Per partition, the active segment as this process last left it.
    pub(super) parts: Vec<Option<Active>>,
}

/// The active (last) segment of a partition.
pub(super) struct Active {
    base: Offset,
    file: File,
    len: u64,
    next_offset: Offset,
    last_ts: i64,
}

/// Holds an exclusive or shared `flock` until dropped.
pub(super) struct FileLock<'f>(&'f File);

impl<'f> FileLock<'f> {
    pub(super) fn exclusive(file: &'f File) -> std::io::Result<Self> {
        file.lock()?;
        Ok(Self(file))
    }

    pub(super) fn shared(file: &'f File) -> std::io::Result<Self> {
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

impl FileLog {
    fn segment_bytes(&self) -> u64 {
        u64::from(self.meta.segment_mb) << 20
    }

    /// Brings a partition's active segment up to date under the writer lock: picks up what other
    /// processes appended or rolled, and truncates a torn tail left by a crashed append.
    fn refresh(&self, partition: Partition, slot: &mut Option<Active>) -> Result<(), LogError> {
        let segment_bytes = self.segment_bytes();
        if let Some(active) = slot.as_ref() {
            let path = self.segment_path(partition, active.base);
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
        let base = match self.segments(partition)?.last() {
            Some(&base) => base,
            None => {
                self.create_segment(partition, Offset(0))?;
                Offset(0)
            }
        };
        let path = self.segment_path(partition, base);
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
        let mut scan = SegmentScan::new(&self.name, path, file, from)?;
        let (mut next_offset, mut last_ts) = (next_offset, last_ts);
        loop {
            let detail = match scan.next()? {
                Step::Frame { pos, body } => {
                    let header = BodyHeader::read(body);
                    if header.base != next_offset {
                        return Err(self.corrupt(
                            &scan.path,
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
            let SegmentScan {
                path, file, frames, ..
            } = &scan;
            let pos = frames.pos;
            let torn =
                is_torn_tail(file, pos).map_err(|e| self.unavailable("cannot read", path, e))?;
            if !torn {
                return Err(self.corrupt(
                    path,
                    format!("{detail} at byte {pos}, and committed frames follow it"),
                ));
            }
            let eof = frames.eof;
            file.set_len(pos)
                .and_then(|()| file.sync_all())
                .map_err(|e| self.unavailable("cannot truncate", path, e))?;
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
            len: scan.frames.pos,
            file: scan.file,
            next_offset,
            last_ts,
        });
        Ok(())
    }

    fn create_segment(&self, partition: Partition, base: Offset) -> Result<File, LogError> {
        let pdir = self.partition_dir(partition);
        let path = self.segment_path(partition, base);
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
            let path = self.segment_path(partition, segments[i]);
            fs::remove_file(&path).map_err(|e| self.unavailable("cannot delete", &path, e))?;
            tracing::info!(log = %self.name, segment = %path.display(), "retention: deleted a segment older than {hours} h");
        }
        Ok(())
    }

    /// Appends messages grouped by partition: one frame per partition (split past
    /// `MAX_FRAME_BYTES`), then one fsync per written segment.
    pub(super) fn append_grouped(
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
                    let path = self.segment_path(p, active.base);
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
            let path = self.segment_path(p, active.base);
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

    /// The header of a segment's first frame, if it has a whole one.
    pub(super) fn first_header(
        &self,
        partition: Partition,
        base: Offset,
    ) -> Result<Option<BodyHeader>, LogError> {
        match self.scan_segment(partition, base, 0)?.next()? {
            Step::Frame { body, .. } => Ok(Some(BodyHeader::read(body))),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::now_ms;
    use super::super::testing::{append, log, read_all};
    use crate::model::{Offset, Partition};
    use crate::source::{EventLog, LogError};

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
}
