//! The Cassandra store's one retry rule: every operation runs under [`crate::retry::RetryPolicy`]
//! until it succeeds or the URL's deadline passes, and a [`Failure`] says from the driver's error
//! whether trying again can help (a wrong statement or stored data that breaks the schema cannot).

use std::future::Future;
use std::time::Duration;

use scylla::errors::{DbError, ExecutionError, PrepareError, RequestAttemptError};

use crate::retry::RetryPolicy;
use crate::store::StoreError;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The shortest time an attempt gets, even at the deadline.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// Why one attempt failed, and whether trying again can help.
pub(super) struct Failure {
    pub detail: String,
    permanent: bool,
}

impl Failure {
    fn permanent(detail: impl std::fmt::Display) -> Self {
        Failure {
            detail: detail.to_string(),
            permanent: true,
        }
    }

    /// Stored data that breaks the schema's rules: reading it again gives the same.
    pub fn corrupt(detail: impl std::fmt::Display) -> Self {
        Self::permanent(format!("stored data breaks the schema's rules: {detail}"))
    }

    /// In a schema change, a statement that names a keyspace or table another statement just
    /// created can reach a node that has not heard of it yet (on a loaded cluster the driver's
    /// schema agreement may settle before every node does): that passes, so it is retried.
    pub fn transient_if_schema_lags(mut self) -> Self {
        if self.detail.contains("doesn't exist") || self.detail.contains("unconfigured table") {
            self.permanent = false;
        }
        self
    }

    /// The error of operation `what` on `store` that ended with this failure.
    pub fn into_error(self, store: &str, what: &str) -> StoreError {
        StoreError::Cassandra {
            store: store.to_string(),
            detail: format!("{what}: {}", self.detail),
        }
    }
}

/// Errors that retrying cannot cure: the statement or the schema is wrong.
fn db_error_is_permanent(e: &RequestAttemptError) -> bool {
    matches!(
        e,
        RequestAttemptError::DbError(
            DbError::SyntaxError
                | DbError::Invalid
                | DbError::AlreadyExists { .. }
                | DbError::FunctionFailure { .. }
                | DbError::AuthenticationError
                | DbError::Unauthorized
                | DbError::ConfigError,
            _
        ) | RequestAttemptError::SerializationError(_)
    )
}

impl From<ExecutionError> for Failure {
    fn from(e: ExecutionError) -> Self {
        let permanent = match &e {
            ExecutionError::BadQuery(_) => true,
            ExecutionError::LastAttemptError(a) => db_error_is_permanent(a),
            ExecutionError::PrepareError(PrepareError::AllAttemptsFailed { first_attempt }) => {
                db_error_is_permanent(first_attempt)
            }
            _ => false,
        };
        Failure {
            detail: e.to_string(),
            permanent,
        }
    }
}

impl From<PrepareError> for Failure {
    fn from(e: PrepareError) -> Self {
        let permanent = matches!(&e, PrepareError::AllAttemptsFailed { first_attempt } if db_error_is_permanent(first_attempt));
        Failure {
            detail: e.to_string(),
            permanent,
        }
    }
}

/// Transient: the pager and session errors are mostly lost connections and timeouts.
macro_rules! transient_failures {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure { detail: e.to_string(), permanent: false }
            }
        }
    )*};
}
transient_failures!(
    scylla::errors::PagerExecutionError,
    scylla::errors::NextRowError,
    scylla::errors::NewSessionError
);

/// Rows that do not have the types of our schema: retrying reads the same rows.
macro_rules! permanent_failures {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Failure::permanent(e)
            }
        }
    )*};
}
permanent_failures!(
    scylla::errors::IntoRowsResultError,
    scylla::errors::RowsError,
    scylla::errors::TypeCheckError,
    scylla::errors::DeserializationError,
    scylla::errors::MaybeFirstRowError
);

/// Calls `attempt` under the store's [`RetryPolicy`] until it succeeds, fails for good, or the
/// deadline passes: waits 0.1 s, 0.2 s, … up to 5 s between attempts; an attempt that gets no
/// answer within its budget counts as failed.
pub(super) async fn retrying<T, F, Fut>(
    store: &str,
    deadline: Duration,
    what: &str,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut retry = RetryPolicy {
        first_backoff: FIRST_BACKOFF,
        max_backoff: MAX_BACKOFF,
        deadline: Some(deadline),
        min_attempt: MIN_ATTEMPT,
    }
    .start();
    loop {
        let allowed = retry.attempt_budget();
        let failure = match tokio::time::timeout(allowed, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(failure)) => failure,
            Err(_) => Failure {
                detail: format!("no answer within {:.1} s", allowed.as_secs_f64()),
                permanent: false,
            },
        };
        crate::store::failed_attempts().inc();
        if failure.permanent {
            return Err(failure.into_error(store, what));
        }
        let Some(wait) = retry.next_wait() else {
            return Err(StoreError::Cassandra {
                store: store.to_string(),
                detail: format!(
                    "{what}: gave up after {} attempt(s) in {:.1} s (deadline_s={}); last error: {}",
                    retry.attempts(),
                    retry.elapsed().as_secs_f64(),
                    deadline.as_secs(),
                    failure.detail
                ),
            });
        };
        tracing::warn!(
            "cassandra store {store}: {what} failed (attempt {}), retrying in {:.1} s: {}",
            retry.attempts(),
            wait.as_secs_f64(),
            failure.detail
        );
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyspace_or_table_not_yet_seen_is_retried_in_a_schema_change_only() {
        let missing = "Keyspace 'sb' doesn't exist";
        assert!(Failure::permanent(missing).permanent);
        assert!(
            !Failure::permanent(missing)
                .transient_if_schema_lags()
                .permanent
        );
        let table = "unconfigured table arm_counts";
        assert!(
            !Failure::permanent(table)
                .transient_if_schema_lags()
                .permanent
        );
        assert!(
            Failure::permanent("line 1:7 no viable alternative")
                .transient_if_schema_lags()
                .permanent
        );
    }

    fn run<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn transient(detail: &str) -> Failure {
        Failure {
            detail: detail.into(),
            permanent: false,
        }
    }

    #[test]
    fn an_attempt_that_never_answers_is_sent_again_within_the_deadline() {
        let mut calls = 0;
        let value = run(retrying(
            "n:1/ks",
            Duration::from_secs(2),
            "truncate",
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n == 1 {
                        std::future::pending::<()>().await;
                    }
                    Ok(n)
                }
            },
        ));
        assert_eq!(value.unwrap(), 2);
    }

    #[test]
    fn retries_until_success_stop_at_a_permanent_failure_and_give_up_at_the_deadline() {
        let deadline = Duration::from_secs(1);
        let mut calls = 0;
        let value = run(retrying("n:1/ks", deadline, "read", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(transient("refused"))
                } else {
                    Ok(n)
                }
            }
        }));
        assert_eq!(value.unwrap(), 3);

        let mut calls = 0;
        let err = run(retrying("n:1/ks", deadline, "write", || {
            calls += 1;
            async { Err::<(), _>(Failure::permanent("syntax error")) }
        }))
        .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(
            err.to_string(),
            "cassandra store n:1/ks: write: syntax error"
        );

        let mut calls = 0;
        let err = run(retrying("n:1/ks", deadline, "write shard (t, c)", || {
            calls += 1;
            async { Err::<(), _>(transient("connection refused")) }
        }))
        .unwrap_err()
        .to_string();
        assert!(calls > 2, "{calls} attempts");
        assert!(
            err.starts_with(&format!(
                "cassandra store n:1/ks: write shard (t, c): gave up after {calls} attempt(s) in "
            )) && err.ends_with("s (deadline_s=1); last error: connection refused"),
            "{err}"
        );
    }
}
