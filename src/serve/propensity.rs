//! Propensities off the decisions' path. A decision whose propensities are known already queues
//! its impressions at once; one that needs a computation (a few milliseconds at 50 banners)
//! hands them to the propensity thread, which computes within the CPU budget
//! ([`super::budget`]) and then queues them for the log. The thread runs at a lower priority
//! (`serve --propensity-nice`, default 19, which on Linux also puts it in the idle scheduling
//! class): it takes spare CPU, and when the service is saturated it yields to decisions.
//! Impressions are never held back for long: those that waited longer than [`MAX_WAIT`] for the
//! thread, or that find its queue full, are logged without a propensity and counted as skipped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::budget::CpuBudget;
use super::events::EventSink;
use crate::bandit::ComputeBudget;
use crate::model::Event;

/// A decision's impressions once its propensities are computed within the budget it is given
/// (a refusing budget yields them without).
pub type Completion = Box<dyn FnOnce(&dyn ComputeBudget) -> Vec<Event> + Send>;

/// The longest impressions wait for the propensity thread before they are logged without.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// Decisions that may wait for the propensity thread; past that they log without.
const QUEUE: usize = 4096;
/// How often the thread takes what decisions queued (sleeping rather than being woken by each).
const TICK: Duration = Duration::from_millis(5);
/// Times a decision tries the queue's lock before it logs without a propensity.
const LOCK_TRIES: usize = 64;

/// The niceness the propensity thread runs at unless told otherwise: the lowest priority.
pub const DEFAULT_PROPENSITY_NICE: i32 = 19;
/// The niceness it may be given: from the service's own priority (0) to the lowest.
pub const PROPENSITY_NICE: std::ops::RangeInclusive<i32> = 0..=19;

#[derive(Debug, thiserror::Error)]
pub enum PropensityError {
    #[error(
        "propensity nice must be {low} to {high}, got {0}",
        low = PROPENSITY_NICE.start(),
        high = PROPENSITY_NICE.end()
    )]
    Nice(i32),
    #[error("starting the propensity thread: {0}")]
    Io(#[from] std::io::Error),
}

/// Decisions waiting for the thread, with when each was queued. Decisions only ever try its
/// lock: the thread may be descheduled while it holds it (it runs at a low priority), and a
/// channel would make them spin until it runs again.
#[derive(Default)]
struct Queue {
    jobs: Mutex<Vec<(Instant, Completion)>>,
    stopped: AtomicBool,
}

pub struct PropensityStage {
    queue: Arc<Queue>,
    budget: Arc<CpuBudget>,
    events: Arc<EventSink>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl PropensityStage {
    /// Starts the propensity thread at niceness `nice` ([`PROPENSITY_NICE`]).
    pub fn start(
        budget: CpuBudget,
        events: Arc<EventSink>,
        nice: i32,
    ) -> Result<Self, PropensityError> {
        if !PROPENSITY_NICE.contains(&nice) {
            return Err(PropensityError::Nice(nice));
        }
        let queue = Arc::new(Queue::default());
        let budget = Arc::new(budget);
        let worker = Worker {
            queue: queue.clone(),
            budget: budget.clone(),
            events: events.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("propensities".into())
            .spawn(move || {
                lower_priority(nice);
                worker.run()
            })?;
        Ok(Self {
            queue,
            budget,
            events,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues the impressions of a decision whose propensities must be computed; never blocks.
    pub fn complete(&self, job: Completion) {
        let job = if self.budget.is_zero() {
            job
        } else {
            match self.queue.push(job) {
                None => return,
                Some(job) => job,
            }
        };
        self.events.impressions(job(&self.budget.refusing()));
    }

    /// Logs every waiting decision's impressions (computing within the budget, as ever) and
    /// stops the thread; later decisions log without a propensity.
    pub fn shutdown(&self) {
        let Some(thread) = self.thread.lock().expect("not poisoned").take() else {
            return;
        };
        self.queue.stopped.store(true, Ordering::Release);
        let _ = thread.join();
    }
}

impl Drop for PropensityStage {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Queue {
    /// Queues `job`, or gives it back when the queue is full, stopped or its lock stays taken.
    fn push(&self, job: Completion) -> Option<Completion> {
        for _ in 0..LOCK_TRIES {
            match self.jobs.try_lock() {
                Ok(mut jobs) => {
                    // Checked under the lock: the thread takes the last jobs under it too.
                    if jobs.len() >= QUEUE || self.stopped.load(Ordering::Acquire) {
                        return Some(job);
                    }
                    jobs.push((Instant::now(), job));
                    return None;
                }
                Err(TryLockError::WouldBlock) => std::hint::spin_loop(),
                Err(TryLockError::Poisoned(e)) => panic!("propensity queue poisoned: {e}"),
            }
        }
        Some(job)
    }

    fn take(&self) -> Vec<(Instant, Completion)> {
        std::mem::take(&mut *self.jobs.lock().expect("not poisoned"))
    }
}

struct Worker {
    queue: Arc<Queue>,
    budget: Arc<CpuBudget>,
    events: Arc<EventSink>,
}

impl Worker {
    fn run(self) {
        loop {
            let stopping = self.queue.stopped.load(Ordering::Acquire);
            for (queued, job) in self.queue.take() {
                let events = if queued.elapsed() > MAX_WAIT {
                    job(&self.budget.refusing())
                } else {
                    job(self.budget.as_ref())
                };
                self.events.late_impressions(events);
            }
            if stopping {
                return;
            }
            std::thread::sleep(TICK);
        }
    }
}

/// Gives the calling thread niceness `nice` (Linux sets it per thread), and at the lowest
/// niceness the idle scheduling class as well; a failure is logged and the thread runs on at
/// the service's priority.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
            tracing::warn!("the propensity thread keeps the service's priority: setpriority: {e}");
        }
        if nice == *PROPENSITY_NICE.end() {
            run_as_idle_task();
        }
    }
}

/// Moves the calling thread to SCHED_IDLE: a thread of niceness 19 still takes a small share
/// from busy threads, an idle one runs only on CPU that no other thread wants.
#[cfg(target_os = "linux")]
fn run_as_idle_task() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::warn!(
            "the propensity thread stays in the normal scheduling class: sched_setscheduler: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use prometheus::IntCounter;

    use super::*;
    use crate::serve::events::tests::{impression, wait_for, FlakyLog};
    use crate::serve::metrics::Metrics;
    use crate::serve::spool::Spool;

    struct Setup {
        stage: PropensityStage,
        log: Arc<FlakyLog>,
        skipped: IntCounter,
        _spool: tempfile::TempDir,
    }

    fn start_stage(
        share: f64,
        nice: i32,
    ) -> (
        Result<PropensityStage, PropensityError>,
        Arc<FlakyLog>,
        IntCounter,
        tempfile::TempDir,
    ) {
        let spool = tempfile::tempdir().unwrap();
        let log = Arc::new(FlakyLog::default());
        let sink = EventSink::start(
            log.clone(),
            Spool::open(spool.path()).unwrap(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let skipped = IntCounter::new("skipped", "test").unwrap();
        let budget = CpuBudget::new(share, skipped.clone());
        let stage = PropensityStage::start(budget, Arc::new(sink), nice);
        (stage, log, skipped, spool)
    }

    fn start(share: f64, nice: i32) -> Setup {
        let (stage, log, skipped, spool) = start_stage(share, nice);
        let stage = stage.unwrap();
        Setup {
            stage,
            log,
            skipped,
            _spool: spool,
        }
    }

    /// What each job saw: its number, whether its budget let it compute, and on which thread.
    type Seen = Arc<Mutex<Vec<(usize, bool, Option<String>)>>>;

    fn job(i: usize, seen: &Seen, before: impl FnOnce() + Send + 'static) -> Completion {
        let seen = seen.clone();
        Box::new(move |budget| {
            before();
            let computed = budget.run(&mut || {});
            let thread = std::thread::current().name().map(str::to_string);
            seen.lock().unwrap().push((i, computed, thread));
            vec![impression(i)]
        })
    }

    fn logged(setup: &Setup) -> Vec<String> {
        let accepted = setup.log.accepted.lock().unwrap();
        accepted.iter().map(|e| e.event_id.clone()).collect()
    }

    #[test]
    fn computations_run_on_the_propensity_thread_and_every_impression_is_logged_once() {
        let setup = start(1.0, 0);
        let seen = Seen::default();
        for i in 0..10 {
            setup.stage.complete(job(i, &seen, || {}));
        }
        wait_for("ten impressions", || logged(&setup).len() == 10);
        let seen = seen.lock().unwrap().clone();
        let want: Vec<_> = (0..10)
            .map(|i| (i, true, Some("propensities".to_string())))
            .collect();
        assert_eq!(seen, want);
        assert_eq!(
            logged(&setup),
            (0..10).map(|i| format!("e{i}")).collect::<Vec<_>>()
        );
        assert_eq!(setup.skipped.get(), 0);
    }

    #[test]
    fn impressions_that_waited_too_long_or_found_the_queue_full_are_logged_without() {
        let setup = start(1.0, 0);
        let seen = Seen::default();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        setup.stage.complete(job(0, &seen, move || {
            started_tx.send(()).unwrap();
            std::thread::sleep(MAX_WAIT + Duration::from_millis(300));
        }));
        started_rx.recv().unwrap();
        // The thread is busy: QUEUE jobs wait (past MAX_WAIT), the next finds the queue full.
        for i in 1..=QUEUE + 1 {
            setup.stage.complete(job(i, &seen, || {}));
        }
        wait_for("every impression", || logged(&setup).len() == QUEUE + 2);
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_by_key(|s| s.0);
        let full = seen.iter().find(|s| s.0 == QUEUE + 1).unwrap();
        assert!(!full.1, "a full queue refuses");
        assert_ne!(
            full.2.as_deref(),
            Some("propensities"),
            "and completes on the caller"
        );
        assert!(
            seen[1..].iter().all(|s| !s.1),
            "every waiting job is refused"
        );
        assert!(seen[0].1, "the first computed");
        assert_eq!(setup.skipped.get(), QUEUE as u64 + 1);
        let mut ids = logged(&setup);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), QUEUE + 2, "each impression once");
    }

    #[test]
    fn shutdown_logs_what_waits_and_later_jobs_complete_on_the_caller() {
        let setup = start(1.0, 0);
        let seen = Seen::default();
        setup.stage.complete(job(0, &seen, || {
            std::thread::sleep(Duration::from_millis(200))
        }));
        for i in 1..5 {
            setup.stage.complete(job(i, &seen, || {}));
        }
        setup.stage.shutdown();
        let completed: Vec<bool> = seen.lock().unwrap().iter().map(|s| s.1).collect();
        assert_eq!(completed, [true; 5], "everything queued was computed");
        setup.stage.complete(job(5, &seen, || {}));
        let last = seen.lock().unwrap()[5].clone();
        assert!(!last.1);
        assert_ne!(last.2.as_deref(), Some("propensities"));
        wait_for("six impressions", || logged(&setup).len() == 6);
    }

    #[test]
    fn a_niceness_out_of_range_is_refused_naming_the_rule() {
        for nice in [-1, 20] {
            let (stage, ..) = start_stage(1.0, nice);
            let e = stage.err().expect("refused").to_string();
            assert_eq!(e, format!("propensity nice must be 0 to 19, got {nice}"));
        }
    }

    #[test]
    fn a_zero_budget_logs_at_once_without_queueing() {
        let setup = start(0.0, 0);
        let seen = Seen::default();
        setup.stage.complete(job(0, &seen, || {}));
        let first = seen.lock().unwrap()[0].clone();
        assert!(!first.1);
        assert_ne!(first.2.as_deref(), Some("propensities"));
        assert_eq!(setup.skipped.get(), 1);
        wait_for("the impression", || logged(&setup).len() == 1);
    }

    /// The niceness and scheduling policy of each of this process's threads called
    /// `propensities`.
    #[cfg(target_os = "linux")]
    fn propensity_thread_priorities() -> Vec<(i32, i32)> {
        let mut priorities = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = task.unwrap().path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim() != "propensities" {
                continue;
            }
            let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
            // Fields after the command's closing parenthesis: state is field 3, nice field 19,
            // policy field 41.
            let after: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            priorities.push((after[16].parse().unwrap(), after[38].parse().unwrap()));
        }
        priorities
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_thread_runs_at_the_niceness_it_is_given_and_idle_at_the_lowest() {
        let lowest = start(1.0, 19);
        let lower = start(1.0, 10);
        for (i, setup) in [&lowest, &lower].into_iter().enumerate() {
            let seen = Seen::default();
            setup.stage.complete(job(i, &seen, || {}));
            wait_for("the impression", || logged(setup).len() == 1);
        }
        // The other tests' threads run at 0, in the normal class.
        let priorities = propensity_thread_priorities();
        assert!(
            priorities.contains(&(19, libc::SCHED_IDLE)),
            "{priorities:?}"
        );
        assert!(
            priorities.contains(&(10, libc::SCHED_OTHER)),
            "{priorities:?}"
        );
    }
}
