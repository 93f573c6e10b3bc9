//! What the stream job tells: its live counters for Prometheus and the click-to-store latency
//! ([`StreamMetrics`]), and what a process's workers did ([`StreamReport`]).

use std::sync::Mutex;

use chrono::Utc;

use crate::dataflow::harness::WorkerReport;
use crate::dataflow::SinkStats;

/// The job's live counters, for Prometheus (`stream --metrics-listen`).
pub struct StreamMetrics {
    pub registry: prometheus::Registry,
    records: prometheus::IntCounter,
    counted: prometheus::IntCounter,
    already_applied: prometheus::IntCounter,
    repeated_clicks: prometheus::IntCounter,
    before_cutoff: prometheus::IntCounter,
    dead_letters: prometheus::IntCounter,
    epochs_stored: prometheus::IntCounter,
    click_to_store: prometheus::Histogram,
    /// The same latencies in milliseconds, exact enough for the report's quantiles.
    click_to_store_ms: Mutex<hdrhistogram::Histogram<u64>>,
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
        Self {
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
            before_cutoff: counter(
                "events_before_cutoff_total",
                "Events dropped for a timestamp before the handoff cutoff",
            ),
            dead_letters: counter(
                "dead_letters_total",
                "Malformed messages sent to the dead-letter log",
            ),
            epochs_stored: counter(
                "epochs_stored_total",
                "Epochs whose changes are in the store (summed over readers)",
            ),
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
        }
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

    /// Counts an epoch whose changes are in the store.
    pub(super) fn epoch_stored(&self) {
        self.epochs_stored.inc();
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
    /// Events dropped for `ts` before the cutoff.
    pub before_cutoff: u64,
    /// Malformed messages sent to the dead-letter log.
    pub dead_letters: u64,
    /// Records read before the checkpoint only to remember clicks.
    pub rewound: u64,
    pub sink: SinkStats,
}

impl WorkerReport for StreamReport {
    fn merge(&mut self, o: StreamReport) {
        self.records += o.records;
        self.counted += o.counted;
        self.already_applied += o.already_applied;
        self.repeated_clicks += o.repeated_clicks;
        self.before_cutoff += o.before_cutoff;
        self.dead_letters += o.dead_letters;
        self.rewound += o.rewound;
    }
}
