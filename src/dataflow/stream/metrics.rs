//! What the stream job tells: its live counters for Prometheus, the click-to-store latency and
//! how far the job is behind the log ([`StreamMetrics`]), and what a process's workers did
//! ([`StreamReport`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use chrono::Utc;

use super::reader::GroupCount;
use crate::dataflow::harness::WorkerReport;
use crate::dataflow::SinkStats;
use crate::model::{Offset, Partition};

/// The job's live counters, for Prometheus (`stream --metrics-listen`).
pub struct StreamMetrics {
    pub registry: prometheus::Registry,
    records: prometheus::IntCounter,
    counted: prometheus::IntCounter,
    already_applied: prometheus::IntCounter,
    repeated_clicks: prometheus::IntCounter,
    repeated_impressions: prometheus::IntCounter,
    before_cutoff: prometheus::IntCounter,
    dead_letters: prometheus::IntCounter,
    group_impressions: prometheus::IntCounterVec,
    group_clicks: prometheus::IntCounterVec,
    epochs_stored: prometheus::IntCounter,
    last_epoch_stored: prometheus::Gauge,
    partition_lag: prometheus::IntGaugeVec,
    oldest_uncounted_age: prometheus::Gauge,
    lag: Mutex<Lag>,
    click_to_store: prometheus::Histogram,
    /// The same latencies in milliseconds, exact enough for the report's quantiles.
    click_to_store_ms: Mutex<hdrhistogram::Histogram<u64>>,
}

/// The `group` label of a decision: held out (uniform choice) or Thompson sampling.
pub fn group_label(holdout: bool) -> &'static str {
    if holdout {
        "holdout"
    } else {
        "thompson"
    }
}

/// Where this process's partitions stand against the log, for the lag gauges.
#[derive(Default)]
struct Lag {
    /// Per partition this process reads: the offset up to which its events are in the store.
    stored: BTreeMap<Partition, Offset>,
    /// Per partition, the log ends seen, oldest first, each with the last time it was seen (ms):
    /// a record at or past an end was appended after that time.
    ends_seen: BTreeMap<Partition, VecDeque<(i64, Offset)>>,
    /// When the job started reading (ms): the bound for records appended before any end was seen.
    started_ms: i64,
    /// Per partition: how many records it was behind at the last look at the log's end.
    behind: BTreeMap<Partition, i64>,
}

/// Whether the job keeps up with its log (its `/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// No epoch is in the store yet: the job is still taking in the stored counts it starts from
    /// (at a million arms, millions of bucket rows), and a click read now would wait for that.
    Loading,
    /// The log's end has not been read yet.
    Starting,
    /// The partition furthest behind, over the bound.
    Behind {
        partition: Partition,
        records: i64,
    },
}

impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Readiness::Ready => write!(f, "ready"),
            Readiness::Loading => write!(
                f,
                "loading: the stored counts the job starts from are not through its first epoch yet"
            ),
            Readiness::Starting => write!(f, "starting: the log's end is not read yet"),
            Readiness::Behind { partition, records } => write!(
                f,
                "behind: partition {} is {records} records behind the log's end",
                partition.index()
            ),
        }
    }
}

/// Quantiles of the time from a click's append to the log to its count being in the store.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClickLatency {
    pub clicks: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl Default for StreamMetrics {
    fn default() -> Self {
        let registry = prometheus::Registry::new_custom(Some("slotbandit_stream".into()), None)
            .expect("a constant prefix is valid");
        let counter = |name: &str, help: &str| {
            let c = prometheus::IntCounter::new(name, help).expect("a valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = prometheus::Gauge::new(name, help).expect("a valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let per_group = |name: &str, help: &str| {
            let c = prometheus::IntCounterVec::new(
                prometheus::Opts::new(name, help),
                &["tenant", "slot", "group"],
            )
            .expect("a valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let partition_lag = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "partition_lag_records",
                "Records of the partition appended to the log and not yet counted in the store",
            ),
            &["partition"],
        )
        .expect("a valid metric");
        registry
            .register(Box::new(partition_lag.clone()))
            .expect("registered once");
        registry
            .register(Box::new(crate::store::failed_attempts().clone()))
            .expect("registered once");
        let metrics = Self {
            records: counter("records_total", "Records read from the event log"),
            counted: counter("events_counted_total", "Events counted into the posteriors"),
            already_applied: counter(
                "events_already_applied_total",
                "Events skipped because their shard had applied them before a restart",
            ),
            repeated_clicks: counter(
                "repeated_clicks_total",
                "Clicks dropped as repeats of a (request_id, banner)",
            ),
            repeated_impressions: counter(
                "repeated_impressions_total",
                "Impressions dropped as repeats of a (request_id, banner): sent again by a service",
            ),
            before_cutoff: counter(
                "events_before_cutoff_total",
                "Events dropped for a timestamp before the handoff cutoff",
            ),
            dead_letters: counter(
                "dead_letters_total",
                "Malformed messages sent to the dead-letter log",
            ),
            group_impressions: per_group(
                "group_impressions_total",
                "Impressions stored, per slot and decision group (thompson or holdout); \
                 impressions of decisions logged without a group are not in it",
            ),
            group_clicks: per_group(
                "group_clicks_total",
                "Clicks stored, per slot and the group of the decision they follow; clicks \
                 on decisions made before the service signed groups into tokens are not in it",
            ),
            epochs_stored: counter(
                "epochs_stored_total",
                "Epochs whose changes are in the store (summed over readers)",
            ),
            last_epoch_stored: gauge(
                "last_epoch_stored_timestamp_seconds",
                "When an epoch's changes last reached the store, or the job started (Unix time)",
            ),
            oldest_uncounted_age: gauge(
                "oldest_uncounted_event_age_seconds",
                "How long the oldest record appended to the log and not yet counted has waited, \
                 at most (to within a look at the log's end, once a second); 0 when caught up",
            ),
            partition_lag,
            lag: Mutex::new(Lag {
                started_ms: Utc::now().timestamp_millis(),
                ..Lag::default()
            }),
            click_to_store: {
                let h = prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "click_to_store_seconds",
                        "From a click's append to the event log until its count is in the store",
                    )
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 60.0]),
                )
                .expect("valid histogram options");
                registry
                    .register(Box::new(h.clone()))
                    .expect("registered once");
                h
            },
            click_to_store_ms: Mutex::new(
                // Up to an hour; longer ones (a catch-up) are recorded as an hour.
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000, 3)
                    .expect("valid histogram bounds"),
            ),
            registry,
        };
        // Until its first epoch is stored, a job counts as having stored one when it started.
        metrics.last_epoch_stored.set(Utc::now().timestamp() as f64);
        metrics
    }
}

impl StreamMetrics {
    /// Adds what a reader did between two of its reports.
    pub(super) fn add(&self, before: &StreamReport, after: &StreamReport) {
        self.records.inc_by(after.records - before.records);
        self.counted.inc_by(after.counted - before.counted);
        self.already_applied
            .inc_by(after.already_applied - before.already_applied);
        self.repeated_clicks
            .inc_by(after.repeated_clicks - before.repeated_clicks);
        self.repeated_impressions
            .inc_by(after.repeated_impressions - before.repeated_impressions);
        self.before_cutoff
            .inc_by(after.before_cutoff - before.before_cutoff);
        self.dead_letters
            .inc_by(after.dead_letters - before.dead_letters);
    }

    /// Records that the clicks appended to the log at `appended_ms` are now in the store.
    pub(super) fn clicks_stored(&self, appended_ms: &[i64]) {
        if appended_ms.is_empty() {
            return;
        }
        let now = Utc::now().timestamp_millis();
        let mut exact = self.click_to_store_ms.lock().expect("latency lock");
        for &t in appended_ms {
            let ms = (now - t).max(0) as u64;
            self.click_to_store.observe(ms as f64 / 1000.0);
            exact.saturating_record(ms);
        }
    }

    /// Adds the group counts of an epoch whose changes are in the store.
    pub(super) fn groups_stored(&self, groups: &[GroupCount]) {
        for (tenant, slot, holdout, counts) in groups {
            let labels = [tenant.as_str(), slot.as_str(), group_label(*holdout)];
            self.group_impressions
                .with_label_values(&labels)
                .inc_by(counts.impressions);
            self.group_clicks
                .with_label_values(&labels)
                .inc_by(counts.clicks);
        }
    }

    /// Notes where a reader's partitions start: everything before is in the store.
    pub(super) fn reading_from(&self, positions: &BTreeMap<Partition, Offset>) {
        let mut lag = self.lag.lock().expect("lag lock");
        lag.stored.extend(positions);
    }

    /// Counts an epoch whose changes are in the store, up to `positions` of its reader.
    pub(super) fn epoch_stored(&self, positions: &BTreeMap<Partition, Offset>) {
        self.epochs_stored.inc();
        self.last_epoch_stored
            .set(Utc::now().timestamp_millis() as f64 / 1000.0);
        self.lag.lock().expect("lag lock").stored.extend(positions);
    }

    /// Sets the lag gauges from the log's end offsets, read at `now_ms`.
    pub fn log_ends(&self, ends: &BTreeMap<Partition, Offset>, now_ms: i64) {
        let mut lag = self.lag.lock().expect("lag lock");
        let Lag {
            stored,
            ends_seen,
            started_ms,
            behind: behind_by_partition,
        } = &mut *lag;
        let mut oldest_ms = 0;
        for (&partition, &position) in stored.iter() {
            let end = ends.get(&partition).copied().unwrap_or(position);
            let seen = ends_seen.entry(partition).or_default();
            match seen.back_mut() {
                Some((at, last)) if *last == end => *at = now_ms,
                _ => seen.push_back((now_ms, end)),
            }
            // Keep the newest end that is wholly counted: the oldest uncounted record came later.
            while seen.len() >= 2 && seen[1].1 <= position {
                seen.pop_front();
            }
            let behind = (end.0 - position.0).max(0);
            behind_by_partition.insert(partition, behind);
            self.partition_lag
                .with_label_values(&[&partition.index().to_string()])
                .set(behind);
            if behind > 0 {
                let since = match seen.front() {
                    Some(&(at, counted_end)) if counted_end <= position => at,
                    _ => *started_ms,
                };
                oldest_ms = oldest_ms.max(now_ms - since);
            }
        }
        self.oldest_uncounted_age.set(oldest_ms as f64 / 1000.0);
    }

    /// Behind while a partition this process reads is more than `max_lag` records behind;
    /// otherwise ready once an epoch is in the store and the log's end has been read.
    pub fn readiness(&self, max_lag: u64) -> Readiness {
        let lag = self.lag.lock().expect("lag lock");
        let worst = lag.behind.iter().max_by_key(|(_, &records)| records);
        match worst {
            Some((&partition, &records)) if records as u64 > max_lag => {
                Readiness::Behind { partition, records }
            }
            _ if self.epochs_stored.get() == 0 => Readiness::Loading,
            None => Readiness::Starting,
            Some(_) => Readiness::Ready,
        }
    }

    pub fn click_latency(&self) -> ClickLatency {
        let h = self.click_to_store_ms.lock().expect("latency lock");
        ClickLatency {
            clicks: h.len(),
            p50_ms: h.value_at_quantile(0.5),
            p99_ms: h.value_at_quantile(0.99),
            max_ms: h.max(),
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// What one process's workers did.
#[derive(Debug, Default, Clone)]
pub struct StreamReport {
    /// Records read from the log.
    pub records: u64,
    /// Events counted.
    pub counted: u64,
    /// Events skipped because their shard had already applied them (a restart).
    pub already_applied: u64,
    /// Clicks dropped as repeats of a (request_id, banner).
    pub repeated_clicks: u64,
    /// Impressions dropped as repeats of a (request_id, banner).
    pub repeated_impressions: u64,
    /// Events dropped for `ts` before the cutoff.
    pub before_cutoff: u64,
    /// Malformed messages sent to the dead-letter log.
    pub dead_letters: u64,
    /// Records read before the checkpoint only to remember repeats.
    pub rewound: u64,
    pub sink: SinkStats,
}

impl WorkerReport for StreamReport {
    fn merge(&mut self, o: StreamReport) {
        self.records += o.records;
        self.counted += o.counted;
        self.already_applied += o.already_applied;
        self.repeated_clicks += o.repeated_clicks;
        self.repeated_impressions += o.repeated_impressions;
        self.before_cutoff += o.before_cutoff;
        self.dead_letters += o.dead_letters;
        self.rewound += o.rewound;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<Partition, Offset> {
        pairs
            .iter()
            .map(|&(p, o)| (Partition(p), Offset(o)))
            .collect()
    }

    fn lag_of(m: &StreamMetrics, partition: &str) -> i64 {
        m.partition_lag.with_label_values(&[partition]).get()
    }

    #[test]
    fn lag_is_the_log_end_less_what_is_stored_and_its_age_runs_from_when_that_was_the_end() {
        let m = StreamMetrics::default();
        let start = m.lag.lock().unwrap().started_ms;
        m.reading_from(&offsets(&[(0, 10), (1, 5)]));
        assert_eq!(m.readiness(0), Readiness::Loading);
        m.epoch_stored(&offsets(&[(0, 10), (1, 5)]));
        assert_eq!(m.readiness(0), Readiness::Starting);
        // Partition 1 was behind from the start: its wait is bounded by the job's start.
        m.log_ends(&offsets(&[(0, 10), (1, 8), (2, 40)]), start + 2_000);
        assert_eq!((lag_of(&m, "0"), lag_of(&m, "1")), (0, 3));
        assert_eq!(m.oldest_uncounted_age.get(), 2.0);
        assert_eq!(m.readiness(3), Readiness::Ready);
        assert_eq!(
            m.readiness(2),
            Readiness::Behind {
                partition: Partition(1),
                records: 3
            }
        );
        // A partition this process does not read is not reported.
        assert!(!m.render().contains("partition=\"2\""));

        m.epoch_stored(&offsets(&[(1, 8)]));
        m.log_ends(&offsets(&[(0, 12), (1, 8)]), start + 5_000);
        assert_eq!((lag_of(&m, "0"), lag_of(&m, "1")), (2, 0));
        // Partition 0 ended at 10 when last seen at +2 s: records 10 and 11 came later.
        assert_eq!(m.oldest_uncounted_age.get(), 3.0);
        assert!(m.last_epoch_stored.get() > 0.0);

        // A job that keeps up with a busy log waits about one look at the log, not since it
        // was last seen with nothing to count.
        m.epoch_stored(&offsets(&[(0, 12)]));
        m.log_ends(&offsets(&[(0, 14), (1, 8)]), start + 6_000);
        assert_eq!(lag_of(&m, "0"), 2);
        assert_eq!(m.oldest_uncounted_age.get(), 1.0);

        m.epoch_stored(&offsets(&[(0, 14)]));
        m.log_ends(&offsets(&[(0, 14), (1, 8)]), start + 7_000);
        assert_eq!((lag_of(&m, "0"), lag_of(&m, "1")), (0, 0));
        assert_eq!(m.oldest_uncounted_age.get(), 0.0);
    }
}
