//! Events out of the service. Impressions go through a bounded channel to one thread that
//! appends them to the event log in batches (whatever arrived in the last few milliseconds), so
//! a decision never waits for the log. When an append fails the batch goes to the
//! local spool, and so does everything after it until the spool has been sent (retried every
//! second): nothing is lost and the log keeps the order. Clicks are appended one by one and the
//! caller waits until the log says the click is durable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::metrics::Metrics;
use super::spool::{Spool, SpoolError};
use crate::model::Event;
use crate::retry::{Retry, RetryPolicy};
use crate::source::{EventLog, LogError};

/// How often a down log is tried again (for as long as it is down).
const LOG_RETRY: RetryPolicy = RetryPolicy::fixed(Duration::from_secs(1), None);
/// How often the appender takes what decisions queued (and retries a down log's spool when due).
const TICK: Duration = Duration::from_millis(5);
/// Impressions per append at most.
const MAX_BATCH: usize = 5000;
/// Decisions whose impressions may wait in memory for the appender; past that they are
/// spooled directly.
const QUEUE: usize = 65_536;

enum Msg {
    Impressions(Vec<Event>),
    Stop(mpsc::Sender<()>),
}

#[derive(Debug, thiserror::Error)]
pub enum ClickError {
    #[error("the event log is unavailable: {0}")]
    Log(#[from] LogError),
    #[error("the event log did not confirm the click within {0:?}")]
    Timeout(Duration),
}

pub struct EventSink {
    tx: SyncSender<Msg>,
    /// Impressions from a thread that may be descheduled at any point (the propensity thread runs
    /// at a low priority): the appender only tries this lock, so it never waits for that thread,
    /// as it would on a channel slot that thread had claimed and not yet filled.
    late: Arc<Mutex<Vec<Event>>>,
    log: Arc<dyn EventLog>,
    spool: Arc<Mutex<Spool>>,
    metrics: Arc<Metrics>,
    log_up: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EventSink {
    /// Starts the appender thread; sends what an earlier run left in the spool first.
    pub fn start(
        log: Arc<dyn EventLog>,
        spool: Spool,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let spool = Arc::new(Mutex::new(spool));
        let log_up = Arc::new(AtomicBool::new(true));
        metrics.log_up.set(1);
        let late = Arc::new(Mutex::new(Vec::new()));
        let appender = Appender {
            late: late.clone(),
            log: log.clone(),
            spool: spool.clone(),
            metrics: metrics.clone(),
            log_up: log_up.clone(),
            next_retry: Instant::now(),
            retry: LOG_RETRY.start(),
        };
        let thread = std::thread::Builder::new()
            .name("impressions".into())
            .spawn(move || appender.run(rx))?;
        Ok(Self {
            tx,
            late,
            log,
            spool,
            metrics,
            log_up,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn log_name(&self) -> &str {
        self.log.name()
    }

    /// Whether the last append succeeded.
    pub fn log_up(&self) -> bool {
        self.log_up.load(Ordering::Relaxed)
    }

    pub fn spooled(&self) -> u64 {
        self.metrics.spool_pending.get().max(0) as u64
    }

    /// Queues a decision's impressions; never blocks on the log.
    pub fn impressions(&self, events: Vec<Event>) {
        match self.tx.try_send(Msg::Impressions(events)) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::Impressions(events)))
            | Err(TrySendError::Disconnected(Msg::Impressions(events))) => {
                let mut spool = self.spool.lock().expect("not poisoned");
                spool_or_report(&mut spool, &events, &self.metrics);
            }
            Err(_) => unreachable!("only impressions are sent here"),
        }
    }

    /// Queues impressions from a thread of low priority (see `late`).
    pub fn late_impressions(&self, events: Vec<Event>) {
        self.late.lock().expect("not poisoned").extend(events);
    }

    /// Appends a click and returns once the log has it durably.
    pub async fn click(&self, event: Event, timeout: Duration) -> Result<(), ClickError> {
        let log = self.log.clone();
        let append = tokio::task::spawn_blocking(move || log.append(&[event]));
        match tokio::time::timeout(timeout, append).await {
            Err(_) => Err(ClickError::Timeout(timeout)),
            Ok(Err(join)) => Err(ClickError::Log(LogError::Unavailable {
                log: self.log.name().to_string(),
                detail: join.to_string(),
            })),
            Ok(Ok(result)) => Ok(result?),
        }
    }

    /// Sends (or spools) every queued impression and stops the appender.
    pub fn shutdown(&self) {
        let Some(thread) = self.thread.lock().expect("not poisoned").take() else {
            return;
        };
        let (done_tx, done_rx) = mpsc::channel();
        if self.tx.send(Msg::Stop(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
        let _ = thread.join();
    }
}

impl Drop for EventSink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spool_or_report(spool: &mut Spool, events: &[Event], metrics: &Metrics) {
    match spool.write(events) {
        Ok(()) => metrics.impressions_spooled.inc_by(events.len() as u64),
        Err(e) => tracing::error!(
            "{e}: {} impressions could not be logged or spooled",
            events.len()
        ),
    }
    metrics.spool_pending.set(spool.pending() as i64);
}

struct Appender {
    late: Arc<Mutex<Vec<Event>>>,
    log: Arc<dyn EventLog>,
    spool: Arc<Mutex<Spool>>,
    metrics: Arc<Metrics>,
    log_up: Arc<AtomicBool>,
    next_retry: Instant,
    retry: Retry,
}

impl Appender {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut batch: Vec<Event> = Vec::new();
        loop {
            // Sleeping rather than waiting on the channel: a waiting receiver is woken by every
            // decision (a futex wake and a context switch each, at tens of thousands a second).
            std::thread::sleep(TICK);
            let mut stop = None;
            loop {
                match rx.try_recv() {
                    Ok(Msg::Impressions(events)) => {
                        batch.extend(events);
                        if batch.len() >= MAX_BATCH {
                            self.flush(&mut batch);
                        }
                    }
                    Ok(Msg::Stop(done)) => {
                        stop = Some(done);
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.take_late(&mut batch, true);
                        self.flush(&mut batch);
                        return;
                    }
                }
            }
            self.take_late(&mut batch, stop.is_some());
            self.flush(&mut batch);
            if let Some(done) = stop {
                let _ = done.send(());
                return;
            }
        }
    }

    /// Adds the late impressions to `batch`: those there now when `wait`, else only if their
    /// lock is free (they are taken at the next tick otherwise).
    fn take_late(&self, batch: &mut Vec<Event>, wait: bool) {
        let late = if wait {
            Some(self.late.lock().expect("not poisoned"))
        } else {
            self.late.try_lock().ok()
        };
        if let Some(mut late) = late {
            batch.append(&mut late);
        }
    }

    fn set_up(&mut self, up: bool) {
        if up {
            self.retry.reset();
        }
        self.log_up.store(up, Ordering::Relaxed);
        self.metrics.log_up.set(i64::from(up));
    }

    fn schedule_retry(&mut self) {
        let wait = self
            .retry
            .next_wait()
            .expect("the log is retried without a deadline");
        self.next_retry = Instant::now() + wait;
    }

    fn flush(&mut self, batch: &mut Vec<Event>) {
        let spool = Arc::clone(&self.spool);
        let mut spool = spool.lock().expect("not poisoned");
        if spool.pending() > 0 && Instant::now() >= self.next_retry {
            match spool.drain(self.log.as_ref()) {
                Ok(sent) => {
                    self.metrics.impressions_logged.inc_by(sent);
                    tracing::info!(
                        "event log {} is back: sent {sent} spooled impressions",
                        self.log.name()
                    );
                    self.set_up(true);
                }
                Err(e) => {
                    self.schedule_retry();
                    if let SpoolError::Log(_) = e {
                        self.set_up(false);
                    } else {
                        tracing::error!("{e}");
                    }
                }
            }
            self.metrics.spool_pending.set(spool.pending() as i64);
        }
        if batch.is_empty() {
            return;
        }
        if spool.pending() == 0 {
            match self.log.append(batch) {
                Ok(()) => {
                    self.metrics.impressions_logged.inc_by(batch.len() as u64);
                    self.set_up(true);
                    batch.clear();
                    return;
                }
                Err(e) => {
                    tracing::warn!("{e}; spooling impressions until the log is back");
                    self.set_up(false);
                    self.schedule_retry();
                }
            }
        }
        spool_or_report(&mut spool, batch, &self.metrics);
        batch.clear();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::model::{EventKind, Offset, Partition};
    use crate::source::{LogReader, LogRecord};

    /// A log that refuses appends while `down` is set and keeps what it accepted.
    #[derive(Default)]
    pub(in crate::serve) struct FlakyLog {
        pub down: AtomicBool,
        pub accepted: Mutex<Vec<Event>>,
    }

    impl FlakyLog {
        fn refuse(&self) -> Result<(), LogError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(LogError::Unavailable {
                    log: "flaky".into(),
                    detail: "down".into(),
                });
            }
            Ok(())
        }
    }

    impl EventLog for FlakyLog {
        fn name(&self) -> &str {
            "flaky"
        }
        fn partitions(&self) -> Result<Vec<Partition>, LogError> {
            Ok(vec![Partition(0)])
        }
        fn append(&self, events: &[Event]) -> Result<(), LogError> {
            self.refuse()?;
            self.accepted.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
        fn append_raw(&self, _: &[(Option<&[u8]>, &[u8])]) -> Result<(), LogError> {
            self.refuse()
        }
        fn reader(&self, _: &BTreeMap<Partition, Offset>) -> Result<Box<dyn LogReader>, LogError> {
            unimplemented!("the sink never reads")
        }
        fn offsets_for_time(
            &self,
            _: chrono::DateTime<chrono::Utc>,
        ) -> Result<BTreeMap<Partition, Offset>, LogError> {
            unimplemented!("the sink never reads")
        }
        fn end_offsets(&self) -> Result<BTreeMap<Partition, Offset>, LogError> {
            unimplemented!("the sink never reads")
        }
        fn dead_letter(&self, _: &[(LogRecord, String)]) -> Result<(), LogError> {
            unimplemented!("the sink never reads")
        }
    }

    pub(in crate::serve) fn impression(i: usize) -> Event {
        Event {
            event_id: format!("e{i}"),
            kind: EventKind::Impression,
            tenant: "ajio".into(),
            slot: "hero".into(),
            city: "pune".into(),
            banner: "b01".into(),
            ts: chrono::Utc::now(),
            customer_id: None,
            referrer: None,
            request_id: Some(format!("d{i}")),
            decision: Default::default(),
        }
    }

    pub(in crate::serve) fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(Instant::now() < deadline, "{what} never happened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_down_log_spools_impressions_refuses_clicks_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(FlakyLog::default());
        let metrics = Arc::new(Metrics::new());
        log.down.store(true, Ordering::Relaxed);
        let sink = EventSink::start(
            log.clone(),
            Spool::open(dir.path()).unwrap(),
            metrics.clone(),
        )
        .unwrap();
        for i in 0..50 {
            sink.impressions(vec![impression(i)]);
        }
        wait_for("spooling", || sink.spooled() == 50);
        assert!(!sink.log_up());
        assert!(log.accepted.lock().unwrap().is_empty());
        let click = sink.click(impression(99), Duration::from_secs(5)).await;
        assert!(matches!(click, Err(ClickError::Log(_))), "{click:?}");

        // A restart finds the spool and sends it when the log is back.
        sink.shutdown();
        drop(sink);
        assert_eq!(Spool::open(dir.path()).unwrap().pending(), 50);
        let sink = EventSink::start(
            log.clone(),
            Spool::open(dir.path()).unwrap(),
            metrics.clone(),
        )
        .unwrap();
        sink.impressions(vec![impression(50)]);
        log.down.store(false, Ordering::Relaxed);
        wait_for("sending the spool", || {
            log.accepted.lock().unwrap().len() == 51
        });
        sink.impressions(vec![impression(51)]);
        wait_for("the next append", || {
            log.accepted.lock().unwrap().len() == 52
        });
        sink.click(impression(52), Duration::from_secs(5))
            .await
            .unwrap();
        let ids: Vec<String> = log
            .accepted
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.event_id.clone())
            .collect();
        let want: Vec<String> = (0..=52).map(|i| format!("e{i}")).collect();
        assert_eq!(ids, want, "every impression once, in order, then the click");
        assert!(sink.log_up());
        assert_eq!(Spool::open(dir.path()).unwrap().pending(), 0);
    }
}
