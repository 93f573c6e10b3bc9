//! The CPU time decisions may spend computing propensities: a share of one core, refilled as
//! time passes (a token bucket of seconds). A computation runs while the bucket holds time and
//! is charged what it took; when it is empty the impression is logged without a propensity
//! (counted), so a cold cache over a million arms cannot hold decisions up. Once computed, a
//! propensity costs nothing until the posteriors change. The computations run on the propensity
//! thread (`serve::propensity`), off the decisions' path.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use crate::bandit::ComputeBudget;

pub struct CpuBudget {
    /// Seconds of computation per second of time.
    share: f64,
    /// (when the bucket was last refilled, seconds it holds)
    bucket: Mutex<(Instant, f64)>,
    skipped: IntCounter,
}

/// The most the bucket holds: one second's worth.
const BURST: Duration = Duration::from_secs(1);

impl CpuBudget {
    /// `share`: of one core, 0 (never compute) to the number of cores. `skipped` counts the
    /// computations refused.
    pub fn new(share: f64, skipped: IntCounter) -> Self {
        Self {
            share,
            bucket: Mutex::new((Instant::now(), share * BURST.as_secs_f64())),
            skipped,
        }
    }

    fn refilled(&self, now: Instant) -> f64 {
        let mut bucket = self.bucket.lock().expect("not poisoned");
        let (at, held) = *bucket;
        let held = (held + now.duration_since(at).as_secs_f64() * self.share)
            .min(self.share * BURST.as_secs_f64());
        *bucket = (now, held);
        held
    }
}

impl ComputeBudget for CpuBudget {
    fn run(&self, work: &mut dyn FnMut()) -> bool {
        let started = Instant::now();
        if self.refilled(started) <= 0.0 {
            self.skipped.inc();
            return false;
        }
        work();
        let took = started.elapsed().as_secs_f64();
        self.bucket.lock().expect("not poisoned").1 -= took;
        true
    }
}

impl CpuBudget {
    /// A budget that refuses every computation, counting each refusal as this one does: for
    /// work that cannot wait for its turn.
    pub fn refusing(&self) -> Refusing<'_> {
        Refusing(&self.skipped)
    }

    /// Whether no computation can ever run.
    pub fn is_zero(&self) -> bool {
        self.share <= 0.0
    }
}

pub struct Refusing<'a>(&'a IntCounter);

impl ComputeBudget for Refusing<'_> {
    fn run(&self, _: &mut dyn FnMut()) -> bool {
        self.0.inc();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {}
    }

    #[test]
    fn work_runs_while_the_share_lasts_and_the_rest_is_counted() {
        let skipped = IntCounter::new("skipped", "test").unwrap();
        // A tenth of a core: the bucket starts with 100 ms.
        let budget = CpuBudget::new(0.1, skipped.clone());
        let mut ran = 0;
        for _ in 0..20 {
            budget.run(&mut || {
                spin(Duration::from_millis(20));
                ran += 1;
            });
        }
        // 100 ms held, plus 10% of the time spent: five or six runs of 20 ms, not twenty.
        assert!((5..=7).contains(&ran), "{ran} ran");
        assert_eq!(skipped.get(), 20 - ran);
        // Time refills it.
        std::thread::sleep(Duration::from_millis(300));
        assert!(budget.run(&mut || {}));
    }

    #[test]
    fn a_zero_share_never_computes() {
        let skipped = IntCounter::new("skipped", "test").unwrap();
        let budget = CpuBudget::new(0.0, skipped.clone());
        assert!(!budget.run(&mut || panic!("must not run")));
        assert_eq!(skipped.get(), 1);
        assert!(budget.is_zero());
    }

    #[test]
    fn refusing_counts_like_the_budget_it_comes_from() {
        let skipped = IntCounter::new("skipped", "test").unwrap();
        let budget = CpuBudget::new(1.0, skipped.clone());
        assert!(!budget.refusing().run(&mut || panic!("must not run")));
        assert_eq!(skipped.get(), 1);
        assert!(!budget.is_zero());
    }
}
