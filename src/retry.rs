//! The one retry policy: how long to wait between attempts at an operation that failed for a
//! reason that may pass (a node restarting, a broker without a leader yet), and when to give up.
//! The Cassandra store, the stream job's log reads and the service's event appender all follow
//! it, each with its own numbers; what is worth retrying is the caller's to say.

use std::time::{Duration, Instant};

/// Exponential backoff from `first_backoff`, doubling up to `max_backoff`, until `deadline`
/// (forever when `None`). An attempt may take half the deadline (so that a request lost with its
/// connection, which never gets an answer, is sent again), at most what is left of it, and at
/// least `min_attempt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub deadline: Option<Duration>,
    pub min_attempt: Duration,
}

impl RetryPolicy {
    /// The same wait between every attempt.
    pub const fn fixed(wait: Duration, deadline: Option<Duration>) -> Self {
        Self {
            first_backoff: wait,
            max_backoff: wait,
            deadline,
            min_attempt: Duration::ZERO,
        }
    }

    /// Starts counting attempts and time now.
    pub fn start(self) -> Retry {
        Retry {
            policy: self,
            started: Instant::now(),
            backoff: self.first_backoff,
            attempts: 0,
        }
    }

    /// Calls `attempt` until it succeeds, fails with an error `retriable` refuses, or the
    /// deadline passes; `on_retry` hears of each failure that will be retried and of the wait.
    /// The last error is returned as it is.
    pub fn run_blocking<T, E>(
        self,
        mut attempt: impl FnMut() -> Result<T, E>,
        retriable: impl Fn(&E) -> bool,
        mut on_retry: impl FnMut(&E, Duration),
    ) -> Result<T, E> {
        let mut retry = self.start();
        loop {
            let error = match attempt() {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            match retry.next_wait().filter(|_| retriable(&error)) {
                Some(wait) => {
                    on_retry(&error, wait);
                    std::thread::sleep(wait);
                }
                None => return Err(error),
            }
        }
    }
}

/// The state of one operation's attempts under a [`RetryPolicy`].
#[derive(Debug, Clone)]
pub struct Retry {
    policy: RetryPolicy,
    started: Instant,
    backoff: Duration,
    attempts: u32,
}

impl Retry {
    /// Attempts that failed so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn left(&self) -> Option<Duration> {
        self.policy
            .deadline
            .map(|d| d.saturating_sub(self.started.elapsed()))
    }

    /// How long the next attempt may take (unbounded without a deadline).
    pub fn attempt_budget(&self) -> Duration {
        match (self.policy.deadline, self.left()) {
            (Some(deadline), Some(left)) => left.min(deadline / 2).max(self.policy.min_attempt),
            _ => Duration::MAX,
        }
    }

    /// Records a failed attempt: the wait before the next one, or `None` once the deadline has
    /// passed. The last wait ends at the deadline.
    pub fn next_wait(&mut self) -> Option<Duration> {
        self.attempts += 1;
        let wait = match self.left() {
            Some(left) if left.is_zero() => return None,
            Some(left) => self.backoff.min(left),
            None => self.backoff,
        };
        self.backoff = (self.backoff * 2).min(self.policy.max_backoff);
        Some(wait)
    }

    /// Starts over after a success (an operation that runs for good, like an appender).
    pub fn reset(&mut self) {
        *self = self.policy.start();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_up_to_the_cap() {
        let mut retry = RetryPolicy {
            first_backoff: 100 * MS,
            max_backoff: 350 * MS,
            deadline: None,
            min_attempt: Duration::ZERO,
        }
        .start();
        let waits: Vec<Duration> = (0..5).map(|_| retry.next_wait().unwrap()).collect();
        assert_eq!(waits, [100 * MS, 200 * MS, 350 * MS, 350 * MS, 350 * MS]);
        assert_eq!(retry.attempts(), 5);
        assert_eq!(retry.attempt_budget(), Duration::MAX);
        retry.reset();
        assert_eq!(retry.attempts(), 0);
        assert_eq!(retry.next_wait(), Some(100 * MS));
    }

    #[test]
    fn the_deadline_ends_the_waits_and_bounds_each_attempt() {
        let policy = RetryPolicy {
            first_backoff: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(3600),
            deadline: Some(Duration::from_secs(60)),
            min_attempt: Duration::from_secs(1),
        };
        let mut retry = policy.start();
        assert!(retry.attempt_budget() <= Duration::from_secs(30));
        assert!(retry.attempt_budget() > Duration::from_secs(29));
        // The wait never runs past the deadline.
        assert!(retry.next_wait().unwrap() <= Duration::from_secs(60));
        let mut done = RetryPolicy {
            deadline: Some(Duration::ZERO),
            ..policy
        }
        .start();
        assert_eq!(done.next_wait(), None);
        assert_eq!(
            done.attempt_budget(),
            Duration::from_secs(1),
            "at least min_attempt"
        );
    }

    #[test]
    fn run_blocking_retries_what_may_pass_and_returns_what_will_not() {
        let policy = RetryPolicy::fixed(MS, Some(Duration::from_secs(5)));
        let mut calls = 0;
        let mut heard = 0;
        let out: Result<u32, &str> = policy.run_blocking(
            || {
                calls += 1;
                if calls < 3 {
                    Err("busy")
                } else {
                    Ok(calls)
                }
            },
            |e| *e == "busy",
            |_, wait| {
                assert_eq!(wait, MS);
                heard += 1;
            },
        );
        assert_eq!(out, Ok(3));
        assert_eq!(heard, 2);
        let mut calls = 0;
        let out: Result<(), &str> = policy.run_blocking(
            || {
                calls += 1;
                Err("bad statement")
            },
            |e| *e == "busy",
            |_, _| panic!("a permanent error is not retried"),
        );
        assert_eq!((out, calls), (Err("bad statement"), 1));
        let out: Result<(), &str> =
            RetryPolicy::fixed(MS, Some(20 * MS)).run_blocking(|| Err("busy"), |_| true, |_, _| {});
        assert_eq!(out, Err("busy"), "gives up at the deadline");
    }
}
