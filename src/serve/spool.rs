//! The impression spool: when the event log is down, impressions are appended to a local file
//! (JSON lines, fsynced) and sent to the log once it is back, oldest first. A second file holds
//! how many bytes of the spool have been sent, rewritten after each sent chunk, so a restart
//! resumes where sending stopped; a crash between a chunk's append and that rewrite sends the
//! chunk again (at most one chunk, with the same event IDs).

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::model::Event;
use crate::source::{EventLog, LogError};

/// Events sent to the log per append while draining the spool.
const CHUNK: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("impression spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("impression spool {path}: line {line} is not an event: {detail}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error(transparent)]
    Log(#[from] LogError),
}

pub struct Spool {
    data: PathBuf,
    sent: PathBuf,
    /// Events written and not yet sent.
    pending: u64,
}

impl Spool {
    /// Opens (creating) the spool in `dir`; counts what an earlier run left unsent.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        let io = |source| SpoolError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let mut spool = Self {
            data: dir.join("impressions.jsonl"),
            sent: dir.join("impressions.sent"),
            pending: 0,
        };
        spool.pending = spool.unsent()?.len() as u64;
        Ok(spool)
    }

    pub fn pending(&self) -> u64 {
        self.pending
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.data.clone(),
            source,
        }
    }

    /// Appends events durably (fsync before returning).
    pub fn write(&mut self, events: &[Event]) -> Result<(), SpoolError> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.data)
            .map_err(|e| self.io(e))?;
        let mut buf = String::new();
        for e in events {
            buf.push_str(&e.to_json());
            buf.push('\n');
        }
        file.write_all(buf.as_bytes()).map_err(|e| self.io(e))?;
        file.sync_data().map_err(|e| self.io(e))?;
        self.pending += events.len() as u64;
        Ok(())
    }

    fn sent_bytes(&self) -> Result<u64, SpoolError> {
        match fs::read_to_string(&self.sent) {
            Ok(s) => s.trim().parse().map_err(|_| SpoolError::Corrupt {
                path: self.sent.clone(),
                line: 1,
                detail: format!("{s:?} is not a byte count"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(self.io(e)),
        }
    }

    fn set_sent_bytes(&self, bytes: u64) -> Result<(), SpoolError> {
        let tmp = self.sent.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(bytes.to_string().as_bytes())
            .and_then(|()| f.sync_data())
            .and_then(|()| fs::rename(&tmp, &self.sent))
            .map_err(|e| self.io(e))
    }

    /// The unsent events with the byte offset just past each.
    fn unsent(&self) -> Result<Vec<(Event, u64)>, SpoolError> {
        let file = match File::open(&self.data) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let start = self.sent_bytes()?;
        let mut reader = BufReader::new(file);
        reader
            .seek(SeekFrom::Start(start))
            .map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        let (mut offset, mut line, mut buf) = (start, 0, String::new());
        loop {
            buf.clear();
            let n = reader.read_line(&mut buf).map_err(|e| self.io(e))?;
            if n == 0 || !buf.ends_with('\n') {
                // A torn last line (a crash mid-write, never fsynced) was never acknowledged.
                break;
            }
            line += 1;
            offset += n as u64;
            let event =
                Event::from_json(buf.trim_end().as_bytes()).map_err(|e| SpoolError::Corrupt {
                    path: self.data.clone(),
                    line,
                    detail: e.to_string(),
                })?;
            out.push((event, offset));
        }
        Ok(out)
    }

    /// Sends every unsent event to the log in chunks. Stops at the first failed append (the
    /// rest stays spooled); empties the spool when all is sent.
    pub fn drain(&mut self, log: &dyn EventLog) -> Result<u64, SpoolError> {
        let unsent = self.unsent()?;
        let mut sent = 0;
        for chunk in unsent.chunks(CHUNK) {
            let events: Vec<Event> = chunk.iter().map(|(e, _)| e.clone()).collect();
            log.append(&events)?;
            let end = chunk.last().expect("chunks are not empty").1;
            self.set_sent_bytes(end)?;
            sent += events.len() as u64;
            self.pending = self.pending.saturating_sub(events.len() as u64);
        }
        for path in [&self.data, &self.sent] {
            match fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(self.io(e)),
                _ => {}
            }
        }
        self.pending = 0;
        Ok(sent)
    }
}
