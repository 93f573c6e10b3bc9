//! Prometheus metrics. Every series is registered once at start and updated through atomics, so
//! recording on the decision path takes no lock.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Outcomes of a click request.
#[derive(Debug, Clone, Copy)]
pub enum ClickOutcome {
    Accepted,
    Rejected,
    Unavailable,
}

pub struct Metrics {
    registry: Registry,
    decisions: IntCounter,
    tenant_decisions: IntCounterVec,
    http_responses: [IntCounter; 5],
    pub decision_seconds: Histogram,
    pub decision_errors: IntCounter,
    clicks: [IntCounter; 3],
    pub impressions_logged: IntCounter,
    pub impressions_spooled: IntCounter,
    pub propensities_skipped: IntCounter,
    pub spool_pending: IntGauge,
    pub log_up: IntGauge,
    pub cache_age_seconds: Gauge,
    pub cache_unchanged_seconds: Gauge,
    pub cache_refreshes: IntCounter,
    pub cache_refresh_failures: IntCounter,
    pub cache_slots: IntGauge,
    pub cache_arms: IntGauge,
    pub cache_refresh_seconds: Histogram,
    pub cache_refresh_changed_shards: Histogram,
    pub auth_failures: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("slotbandit".into()), None)
            .expect("a constant prefix is valid");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(v.clone()))
                .expect("registered once");
            v
        };
        let clicks_vec = counter_vec("clicks_total", "Click requests by outcome", "outcome");
        let clicks =
            ["accepted", "rejected", "unavailable"].map(|o| clicks_vec.with_label_values(&[o]));
        let tenant_decisions = counter_vec(
            "tenant_decisions_total",
            "Decisions answered, by tenant",
            "tenant",
        );
        let responses_vec = counter_vec(
            "http_responses_total",
            "HTTP responses by status class (1xx to 5xx)",
            "class",
        );
        let http_responses =
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| responses_vec.with_label_values(&[c]));
        registry
            .register(Box::new(crate::store::failed_attempts().clone()))
            .expect("registered once");
        let decision_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "decision_seconds",
                "Time to answer a decision inside the service (auth, draw, token, events)",
            )
            .buckets(vec![
                1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(decision_seconds.clone()))
            .expect("registered once");
        let float_gauge = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let cache_age_seconds = float_gauge(
            "cache_age_seconds",
            "Seconds since the posterior cache was last found current in the store",
        );
        let cache_unchanged_seconds = float_gauge(
            "cache_unchanged_seconds",
            "Seconds since a cache refresh last found new counts, slots or priors",
        );
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        Self {
            cache_arms: gauge(
                "cache_arms",
                "Arms (tenant, slot, city, banner) with counts in the posterior cache",
            ),
            cache_refresh_seconds: histogram(
                "cache_refresh_seconds",
                "Time a posterior cache refresh took (reading what changed and rebuilding it)",
                vec![1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0],
            ),
            cache_refresh_changed_shards: histogram(
                "cache_refresh_changed_shards",
                "Shards (tenant, city) a posterior cache refresh read again",
                vec![0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1e3, 1e4, 1e5],
            ),
            decisions: counter("decisions_total", "Decisions answered"),
            decision_errors: counter(
                "decision_errors_total",
                "Decision requests refused (bad input, unknown slot, no valid banner)",
            ),
            impressions_logged: counter(
                "impressions_logged_total",
                "Impression events appended to the event log",
            ),
            impressions_spooled: counter(
                "impressions_spooled_total",
                "Impression events written to the local spool while the log was down",
            ),
            propensities_skipped: counter(
                "propensities_skipped_total",
                "Propensity computations skipped for want of CPU budget or spare CPU (their impressions are logged without one)",
            ),
            spool_pending: gauge(
                "spool_pending_events",
                "Spooled impression events not yet sent to the log",
            ),
            log_up: gauge(
                "event_log_up",
                "1 when the last append to the event log succeeded",
            ),
            cache_refreshes: counter("cache_refreshes_total", "Posterior cache loads"),
            cache_refresh_failures: counter(
                "cache_refresh_failures_total",
                "Posterior cache loads that failed (the previous cache stays in use)",
            ),
            cache_slots: gauge("cache_slots", "Slots in the posterior cache"),
            auth_failures: counter(
                "auth_failures_total",
                "Requests refused for a missing, unknown or out-of-scope API key",
            ),
            decision_seconds,
            cache_age_seconds,
            cache_unchanged_seconds,
            clicks,
            tenant_decisions,
            http_responses,
            registry,
        }
    }

    pub fn click(&self, outcome: ClickOutcome) {
        self.clicks[outcome as usize].inc();
    }

    /// Counts a decision answered for `tenant`.
    pub fn decided(&self, tenant: &str) {
        self.decisions.inc();
        self.tenant_decisions.with_label_values(&[tenant]).inc();
    }

    /// Counts a response by its status class.
    pub fn responded(&self, status: axum::http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.http_responses[class].inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
