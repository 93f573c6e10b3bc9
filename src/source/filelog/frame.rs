//! The on-disk frame format of a segment (docs/filelog.md, "Segment format"): encoding a batch
//! of records as one CRC-checked frame, decoding it, walking a segment's frames, and telling a
//! torn tail left by a crashed append from corruption of committed frames.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::unavailable;
use crate::model::{Offset, Partition};
use crate::source::{LogError, LogRecord};

/// Frame header: body length (u32) and CRC-32 of the body (u32).
const FRAME_HEADER: usize = 8;
/// Body header: base offset (i64), record count (u32), first and last timestamp (i64, i64).
pub(super) const BODY_HEADER: usize = 28;
/// Record header: timestamp (i64), key length (i32, −1 = no key), payload length (u32).
const RECORD_HEADER: usize = 16;
/// The largest frame body; a larger batch is split into several frames.
pub(super) const MAX_FRAME_BYTES: usize = 16 << 20;
/// How much of a segment a reader reads at a time.
const READ_CHUNK: usize = 1 << 20;

/// The fixed fields at the start of a frame body.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyHeader {
    pub(super) base: Offset,
    count: u32,
    pub(super) first_ts: i64,
    pub(super) last_ts: i64,
}

impl BodyHeader {
    pub(super) fn read(body: &[u8]) -> Self {
        let i64_at = |at: usize| i64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        Self {
            base: Offset(i64_at(0)),
            count: u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")),
            first_ts: i64_at(12),
            last_ts: i64_at(20),
        }
    }

    pub(super) fn end(&self) -> Offset {
        self.base + i64::from(self.count)
    }
}

/// A record of a frame being written: append timestamp (ms), key, payload.
type FramedRecord<'a> = (i64, Option<&'a [u8]>, &'a [u8]);

/// Appends one frame holding `records` (timestamp, key, payload) with offsets from `base`.
pub(super) fn encode_frame(out: &mut Vec<u8>, base: Offset, records: &[FramedRecord<'_>]) {
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

pub(super) fn record_size(key: Option<&[u8]>, payload: &[u8]) -> usize {
    RECORD_HEADER + key.map_or(0, <[u8]>::len) + payload.len()
}

/// Decodes the records of a frame body whose CRC matched, from offset `from` on.
pub(super) fn decode_records(
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

pub(super) enum Step<'b> {
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
pub(super) struct Frames {
    pub(super) pos: u64,
    pub(super) eof: u64,
    buf: Vec<u8>,
    /// The file position of `buf[0]`.
    buf_pos: u64,
}

impl Frames {
    pub(super) fn new(pos: u64) -> Self {
        Self {
            pos,
            eof: pos,
            buf: Vec::new(),
            buf_pos: pos,
        }
    }

    /// Forgets buffered bytes past `pos` (they may belong to a torn frame that a writer has
    /// since truncated and overwritten) and rereads the file length.
    pub(super) fn rewind_to(&mut self, pos: u64, file: &File) -> std::io::Result<()> {
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
    pub(super) fn has_buffered_frame(&self) -> bool {
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
    pub(super) fn forget_buffer(&mut self) {
        self.buf.clear();
        self.buf_pos = self.pos;
    }

    pub(super) fn next<'s>(&'s mut self, file: &File) -> std::io::Result<Step<'s>> {
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
pub(super) fn is_torn_tail(file: &File, pos: u64) -> std::io::Result<bool> {
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

/// A segment file and a walk over its frames, whose I/O errors name the log and the segment.
pub(super) struct SegmentScan<'l> {
    log: &'l str,
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) frames: Frames,
}

impl<'l> SegmentScan<'l> {
    /// Walks the frames of `file` (at `path`) from byte `pos`.
    pub(super) fn new(log: &'l str, path: PathBuf, file: File, pos: u64) -> Result<Self, LogError> {
        let mut frames = Frames::new(pos);
        frames
            .rewind_to(pos, &file)
            .map_err(|e| unavailable(log, "cannot stat", &path, e))?;
        Ok(Self {
            log,
            path,
            file,
            frames,
        })
    }

    pub(super) fn next(&mut self) -> Result<Step<'_>, LogError> {
        self.frames
            .next(&self.file)
            .map_err(|e| unavailable(self.log, "cannot read", &self.path, e))
    }

    pub(super) fn rewind_to(&mut self, pos: u64) -> Result<(), LogError> {
        self.frames
            .rewind_to(pos, &self.file)
            .map_err(|e| unavailable(self.log, "cannot stat", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

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
}
