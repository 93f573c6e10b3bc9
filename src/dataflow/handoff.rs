//! What the jobs leave each other in the store's metadata (docs/architecture.md, "Exactly once"):
//! a backfill records the instant its counts are as of and the bucket width it counted with; a
//! handoff records where a stream job starts and the cutoff before which it drops events; a
//! stream job reads both back when it starts, also after restarts.

use chrono::{DateTime, Utc};

use super::DataflowError;
use crate::source::EventLog;
use crate::store::{PosteriorStore, StoreError, META_AS_OF, META_BUCKET_MINUTES};
use crate::time::{self, Buckets};

/// How far before the cutoff the handoff starts reading; events before the cutoff are dropped,
/// so the margin only catches events appended a little before their own timestamp.
const HANDOFF_MARGIN_MINUTES: i64 = 10;

/// The metadata key of a stream job's cutoff.
fn cutoff_key(job_name: &str) -> String {
    format!("cutoff.{job_name}")
}

/// Records what a finished backfill counted: the instant its counts are as of (when known) and
/// the bucket width they were counted with.
pub fn record_backfill(
    store: &dyn PosteriorStore,
    as_of: Option<DateTime<Utc>>,
    buckets: Buckets,
) -> Result<(), StoreError> {
    if let Some(t) = as_of {
        store.set_meta(META_AS_OF, &time::format_utc(t))?;
    }
    store.set_meta(META_BUCKET_MINUTES, &buckets.minutes().to_string())
}

/// The handoff from a backfill that counted `ts < cutoff`: the stream job `job_name` will start
/// each partition a margin before the cutoff (by the log's timestamps) and drop `ts < cutoff`,
/// also after restarts (the cutoff is recorded in the store).
pub fn hand_off(
    log: &dyn EventLog,
    store: &dyn PosteriorStore,
    job_name: &str,
    cutoff: DateTime<Utc>,
) -> Result<(), DataflowError> {
    let start = log.offsets_for_time(cutoff - chrono::Duration::minutes(HANDOFF_MARGIN_MINUTES))?;
    store.set_checkpoints(job_name, &start)?;
    store.set_meta(&cutoff_key(job_name), &time::format_utc(cutoff))?;
    Ok(())
}

/// How a stream job counts into a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    /// The bucket width the store's counts were written with.
    pub buckets: Buckets,
    /// Events with `ts` before this instant are dropped.
    pub cutoff: Option<DateTime<Utc>>,
}

/// Where the stream job `job_name` starts from in `store`: the bucket width its counts were
/// written with (hourly if none is recorded; a store recording an invalid width is refused), and
/// `cutoff` if given, else the cutoff a handoff recorded for the job. Records the bucket width,
/// so that what the stream writes is read with the width it counted with.
pub fn stream_start(
    store: &dyn PosteriorStore,
    job_name: &str,
    cutoff: Option<DateTime<Utc>>,
) -> Result<StreamStart, DataflowError> {
    let buckets = store.buckets()?;
    let cutoff = match cutoff {
        Some(c) => Some(c),
        None => store
            .meta(&cutoff_key(job_name))?
            .map(|s| time::parse_rfc3339(&s))
            .transpose()
            .map_err(DataflowError::HandoffCutoff)?,
    };
    store.set_meta(META_BUCKET_MINUTES, &buckets.minutes().to_string())?;
    Ok(StreamStart { buckets, cutoff })
}
