//! Retries with exponential backoff and jitter, as one decorator over any
//! [`Store`], honouring `WALE_RETRIES`.
//!
//! WAL-E waits `d + rand(0, d)` after the n-th failure, `d = min(120, 2^n) / 2`
//! seconds (1, 2, 4 … 60 s), and gives up after `WALE_RETRIES` attempts.
//! Only [`StoreError::Transient`] errors are retried.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{GetResult, ObjectMeta, PutOptions, PutPayload, Store, StoreError};
use crate::config::Retries;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retries: Retries,
    /// The wait after the first failure (before jitter).
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Give up once this much time was spent waiting, whatever `retries` says.
    pub max_total_delay: Option<Duration>,
}

impl RetryPolicy {
    pub fn from_retries(retries: Retries) -> Self {
        RetryPolicy {
            retries,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_total_delay: None,
        }
    }

    /// Never retry.
    pub fn none() -> Self {
        RetryPolicy::from_retries(Retries::Limited(1))
    }

    fn backoff(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_total_delay(self.max_total_delay);
        match self.retries {
            // WALE_RETRIES counts attempts; backon counts retries after the first.
            Retries::Limited(attempts) => {
                builder.with_max_times(attempts.saturating_sub(1) as usize)
            }
            Retries::Unlimited => builder.without_max_times(),
        }
    }
}

/// Runs `op` until it succeeds, fails with a non-transient error, or the
/// policy gives up; each retry is logged as a warning.
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, what: &str, op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    op.retry(policy.backoff())
        .sleep(tokio::time::sleep)
        .when(StoreError::is_transient)
        .notify(|err, wait| {
            tracing::warn!(
                detail = %format!("{what}: {err}"),
                hint = %format!("Retrying in {:.1} s.", wait.as_secs_f64()),
                "retrying after encountering a transient error"
            );
        })
        .await
}

/// A store that retries transient failures of the store it wraps.
#[derive(Debug)]
pub struct RetryingStore<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S: Store> RetryingStore<S> {
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        RetryingStore { inner, policy }
    }
}

#[async_trait]
impl<S: Store> Store for RetryingStore<S> {
    async fn put(
        &self,
        key: &str,
        payload: PutPayload,
        options: &PutOptions,
    ) -> Result<(), StoreError> {
        retry(&self.policy, &format!("uploading {key}"), || {
            self.inner.put(key, payload.clone(), options)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<GetResult, StoreError> {
        retry(&self.policy, &format!("downloading {key}"), || {
            self.inner.get(key)
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        retry(&self.policy, &format!("looking up {key}"), || {
            self.inner.head(key)
        })
        .await
    }

    /// A listing that fails midway resumes after the last key it yielded.
    fn list(
        &self,
        prefix: &str,
        start_after: Option<String>,
    ) -> BoxStream<'_, Result<ObjectMeta, StoreError>> {
        struct State<'a> {
            inner: BoxStream<'a, Result<ObjectMeta, StoreError>>,
            last_key: Option<String>,
            backoff: backon::ExponentialBackoff,
            done: bool,
        }
        let prefix = prefix.to_string();
        let state = State {
            inner: self.inner.list(&prefix, start_after.clone()),
            last_key: start_after,
            backoff: self.policy.backoff().build(),
            done: false,
        };
        stream::unfold(state, move |mut st| {
            let prefix = prefix.clone();
            async move {
                if st.done {
                    return None;
                }
                loop {
                    match st.inner.next().await {
                        None => return None,
                        Some(Ok(meta)) => {
                            st.last_key = Some(meta.key.clone());
                            return Some((Ok(meta), st));
                        }
                        Some(Err(err)) if err.is_transient() => match st.backoff.next() {
                            Some(wait) => {
                                tracing::warn!(
                                    detail = %format!("listing {prefix}: {err}"),
                                    hint = %format!("Retrying in {:.1} s.", wait.as_secs_f64()),
                                    "retrying after encountering a transient error"
                                );
                                tokio::time::sleep(wait).await;
                                st.inner = self.inner.list(&prefix, st.last_key.clone());
                            }
                            None => {
                                st.done = true;
                                return Some((Err(err), st));
                            }
                        },
                        Some(Err(err)) => {
                            st.done = true;
                            return Some((Err(err), st));
                        }
                    }
                }
            }
        })
        .boxed()
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        retry(&self.policy, "deleting a batch of objects", || {
            self.inner.delete_many(keys)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            retries: Retries::Limited(attempts),
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_total_delay: None,
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_up_to_the_attempt_limit() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry(&fast(4), "op", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::transient("get", "k", "reset"))
        })
        .await;
        assert!(result.unwrap_err().is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn permanent_errors_and_not_found_are_not_retried() {
        for make in [
            (|| StoreError::permanent("get", "k", "denied")) as fn() -> StoreError,
            || StoreError::NotFound { key: "k".into() },
        ] {
            let calls = AtomicU32::new(0);
            let result: Result<(), _> = retry(&fast(5), "op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(make())
            })
            .await;
            assert!(result.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn success_after_failures_is_returned() {
        let calls = AtomicU32::new(0);
        let result = retry(&fast(5), "op", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(StoreError::transient("get", "k", "503"))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn total_delay_bounds_unlimited_retries() {
        let policy = RetryPolicy {
            retries: Retries::Unlimited,
            first_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(10),
            max_total_delay: Some(Duration::from_millis(50)),
        };
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry(&policy, "op", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::transient("get", "k", "503"))
        })
        .await;
        assert!(result.is_err());
        let n = calls.load(Ordering::SeqCst);
        assert!((2..=12).contains(&n), "{n} attempts");
    }
}
