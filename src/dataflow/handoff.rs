//! What the jobs leave each other in the store's metadata (docs/architecture.md, "Exactly once"):
//! a backfill records the instant its counts are as of and the bucket width it counted with; a
//! handoff records where a stream job starts and the cutoff before which it drops events; a
//! stream job reads both back when it starts, also after restarts.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::DataflowError;
use crate::source::EventLog;
use crate::store::{
    PosteriorStore, StoreError, META_AS_OF, META_BUCKET_MINUTES, META_RETENTION_HOURS,
    META_TOKEN_TTL_SECS,
};
use crate::time::{self, Buckets, Retention};

/// How far before the cutoff the handoff starts reading; events before the cutoff are dropped,
/// so the margin only catches events appended a little before their own timestamp.
const HANDOFF_MARGIN_MINUTES: i64 = 10;

/// The metadata key of a stream job's cutoff.
fn cutoff_key(job_name: &str) -> String {
    format!("cutoff.{job_name}")
}

/// Records what a finished backfill counted: the instant its counts are as of (when known), the
/// bucket width they were counted with and how long bucket rows are kept.
pub fn record_backfill(
    store: &dyn PosteriorStore,
    as_of: Option<DateTime<Utc>>,
    buckets: Buckets,
    retention: Retention,
) -> Result<(), StoreError> {
    if let Some(t) = as_of {
        store.set_meta(META_AS_OF, &time::format_utc(t))?;
    }
    store.set_meta(META_BUCKET_MINUTES, &buckets.minutes().to_string())?;
    store.set_meta(META_RETENTION_HOURS, &retention.hours().to_string())
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
    /// The decision-token lifetime the lookup service recorded, if it ran on this store.
    pub token_lifetime: Option<Duration>,
}

impl StreamStart {
    /// How long to remember clicks: `wanted`, or the recorded token lifetime when that is longer
    /// (a click may be replayed as long as its token is valid).
    pub fn click_dedup(&self, wanted: Duration) -> Duration {
        match self.token_lifetime {
            Some(lifetime) if lifetime > wanted => {
                tracing::info!(
                    "remembering clicks for {} minutes, the service's token lifetime recorded in \
                     the store, not {}",
                    lifetime.as_secs() / 60,
                    wanted.as_secs() / 60
                );
                lifetime
            }
            _ => wanted,
        }
    }
}

/// Where the stream job `job_name` starts from in `store`: the bucket width its counts were
/// written with (hourly if none is recorded; a store recording an invalid width is refused), and
/// `cutoff` if given, else the cutoff a handoff recorded for the job, and the token lifetime the
/// service recorded. Records the bucket width,
/// so that what the stream writes is read with the width it counted with, and the job's
/// `retention`, so that readers know how long a window the store can answer.
pub fn stream_start(
    store: &dyn PosteriorStore,
    job_name: &str,
    cutoff: Option<DateTime<Utc>>,
    retention: Retention,
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
    let token_lifetime = store
        .meta(META_TOKEN_TTL_SECS)?
        .map(|s| {
            s.trim().parse().map(Duration::from_secs).map_err(|_| {
                DataflowError::Config(format!(
                    "store metadata `{META_TOKEN_TTL_SECS}` is not a number of seconds: {s:?}"
                ))
            })
        })
        .transpose()?;
    store.set_meta(META_BUCKET_MINUTES, &buckets.minutes().to_string())?;
    store.set_meta(META_RETENTION_HOURS, &retention.hours().to_string())?;
    Ok(StreamStart {
        buckets,
        cutoff,
        token_lifetime,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Event, EventKind, Offset, Partition};
    use crate::source::open_log;
    use crate::store::EmbeddedStore;

    fn store(dir: &tempfile::TempDir) -> EmbeddedStore {
        EmbeddedStore::open(&dir.path().join("s.redb"), true).unwrap()
    }

    fn instant(s: &str) -> DateTime<Utc> {
        time::parse_rfc3339(s).unwrap()
    }

    /// The error's message as the command line prints it: each cause after a colon.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        text
    }

    #[test]
    fn what_a_backfill_records_is_what_the_stream_starts_from() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let as_of = instant("2026-11-02T06:30:00Z");
        let quarter_hours = Buckets::of_minutes(15).unwrap();
        record_backfill(&store, Some(as_of), quarter_hours, Retention::default()).unwrap();
        assert_eq!(store.as_of().unwrap(), Some(as_of));

        let log = open_log(&format!("file:{}", dir.path().join("log").display())).unwrap();
        hand_off(log.as_ref(), &store, "stream", as_of).unwrap();
        let start = stream_start(&store, "stream", None, Retention::default()).unwrap();
        assert_eq!(
            start,
            StreamStart {
                buckets: quarter_hours,
                cutoff: Some(as_of),
                token_lifetime: None,
            }
        );
        // A cutoff given to the job wins over the recorded one; another job has none.
        let given = instant("2026-11-03T00:00:00Z");
        assert_eq!(
            stream_start(&store, "stream", Some(given), Retention::default())
                .unwrap()
                .cutoff,
            Some(given)
        );
        assert_eq!(
            stream_start(&store, "other", None, Retention::default())
                .unwrap()
                .cutoff,
            None
        );
    }

    #[test]
    fn a_backfill_without_an_as_of_instant_records_only_its_bucket_width() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        record_backfill(
            &store,
            None,
            Buckets::of_minutes(30).unwrap(),
            Retention::default(),
        )
        .unwrap();
        assert_eq!(store.as_of().unwrap(), None);
        assert_eq!(store.buckets().unwrap().minutes(), 30);
    }

    #[test]
    fn clicks_are_remembered_at_least_as_long_as_the_recorded_token_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let hours = |h: u64| Duration::from_secs(h * 3600);
        let start = stream_start(&store, "stream", None, Retention::default()).unwrap();
        assert_eq!(start.click_dedup(hours(1)), hours(1));
        store.set_meta(META_TOKEN_TTL_SECS, "172800").unwrap();
        let start = stream_start(&store, "stream", None, Retention::default()).unwrap();
        assert_eq!(start.click_dedup(hours(1)), hours(48));
        assert_eq!(start.click_dedup(hours(72)), hours(72));
        store.set_meta(META_TOKEN_TTL_SECS, "a day").unwrap();
        assert!(stream_start(&store, "stream", None, Retention::default()).is_err());
    }

    #[test]
    fn a_fresh_store_streams_hourly_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let start = stream_start(&store, "stream", None, Retention::default()).unwrap();
        assert_eq!(start.buckets, Buckets::hourly());
        assert_eq!(start.cutoff, None);
        assert_eq!(
            store.meta(META_BUCKET_MINUTES).unwrap().as_deref(),
            Some("60")
        );
    }

    #[test]
    fn a_store_recording_an_invalid_bucket_width_or_cutoff_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.set_meta(META_BUCKET_MINUTES, "7").unwrap();
        let e = stream_start(&store, "stream", None, Retention::default()).unwrap_err();
        assert_eq!(
            chain(&e),
            "store metadata `bucket_minutes`: bucket_minutes must divide 1440 (a day), got 7"
        );

        store.set_meta(META_BUCKET_MINUTES, "60").unwrap();
        store.set_meta(&cutoff_key("stream"), "yesterday").unwrap();
        let e = stream_start(&store, "stream", None, Retention::default()).unwrap_err();
        assert!(
            chain(&e).starts_with("the cutoff recorded by the backfill handoff: "),
            "{}",
            chain(&e)
        );
    }

    #[test]
    fn the_handoff_starts_the_stream_a_margin_before_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let log = open_log(&format!(
            "file:{}?partitions=1",
            dir.path().join("log").display()
        ))
        .unwrap();
        let event = |id: &str| Event {
            event_id: id.into(),
            kind: EventKind::Impression,
            tenant: "t1".into(),
            slot: "hero".into(),
            city: "pune".into(),
            banner: "b1".into(),
            ts: Utc::now(),
            customer_id: None,
            referrer: None,
            request_id: None,
            decision: Default::default(),
        };
        log.append(&[event("e1"), event("e2")]).unwrap();
        // Appended just now: a cutoff less than the margin ahead starts before both records,
        // one more than the margin ahead after them.
        let start_for = |job: &str, minutes_ahead: i64| {
            let cutoff = Utc::now() + chrono::Duration::minutes(minutes_ahead);
            hand_off(log.as_ref(), &store, job, cutoff).unwrap();
            store.checkpoints(job).unwrap()
        };
        assert_eq!(
            start_for("near", HANDOFF_MARGIN_MINUTES - 1),
            BTreeMap::from([(Partition(0), Offset(0))])
        );
        assert_eq!(
            start_for("far", HANDOFF_MARGIN_MINUTES + 5),
            BTreeMap::from([(Partition(0), Offset(2))])
        );
    }
}
