//! Retries with exponential backoff and jitter, as one decorator over any
//! [`Store`], honouring `WALE_RETRIES`.
//!
//! WAL-E waits `d + rand(0, d)` after the n-th failure, `d = min(120, 2^n) / 2`
//! seconds (1, 2, 4 … 60 s), and gives up after `WALE_RETRIES` attempts.
//! Only [`StoreError::Transient`] errors are retried. A download's body that
//! breaks off is resumed (a ranged GET of the same version) within the same
//! attempts, so callers just read the stream: its failure is final.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{GetOptions, GetResult, ObjectMeta, PutOptions, PutPayload, Store, StoreError};
use crate::ByteStream;
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

/// The attempts of one operation on one object: `WALE_RETRIES` in all, with
/// WAL-E's waits between them.
struct Budget {
    backoff: backon::ExponentialBackoff,
}

impl Budget {
    fn new(policy: &RetryPolicy) -> Self {
        Budget {
            backoff: policy.backoff().build(),
        }
    }

    /// The wait before the next attempt after `err`, logged as a warning;
    /// `None` when `err` is not worth another try or the attempts are spent.
    fn next_wait(&mut self, what: &str, err: &StoreError) -> Option<Duration> {
        if !err.is_transient() {
            return None;
        }
        let wait = self.backoff.next()?;
        tracing::warn!(
            detail = %format!("{what}: {err}"),
            hint = %format!("Retrying in {:.1} s.", wait.as_secs_f64()),
            "retrying after encountering a transient error"
        );
        Some(wait)
    }

    /// Runs `op` until it succeeds, fails with a non-transient error, or the
    /// attempts are spent.
    async fn run<T, F, Fut>(&mut self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(err) => match self.next_wait(what, &err) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(err),
                },
            }
        }
    }
}

/// A store that retries transient failures of the store it wraps: the one
/// place retries happen, so that no two layers multiply their attempts.
#[derive(Debug)]
pub struct RetryingStore<S> {
    inner: Arc<S>,
    policy: RetryPolicy,
}

impl<S: Store> RetryingStore<S> {
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        RetryingStore {
            inner: Arc::new(inner),
            policy,
        }
    }
}

/// A download whose body, when it breaks off with a transient error,
/// resumes from the first byte not yet delivered, pinned to the version the
/// download began with; it spends the attempts left by the first request.
struct Download<S> {
    inner: Arc<S>,
    key: String,
    body: ByteStream,
    /// The offset of the next byte, from the object's start.
    offset: u64,
    version: Option<String>,
    budget: Budget,
    ended: bool,
}

impl<S: Store> Download<S> {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        while !self.ended {
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.offset += chunk.len() as u64;
                    return Some(Ok(chunk));
                }
                None => self.ended = true,
                Some(Err(err)) => match self.resume(err).await {
                    Ok(body) => self.body = body,
                    Err(err) => {
                        self.ended = true;
                        return Some(Err(err));
                    }
                },
            }
        }
        None
    }

    /// The rest of the object after `failure` broke the body off, or the
    /// error the download ends with.
    async fn resume(&mut self, mut failure: io::Error) -> io::Result<ByteStream> {
        // Without a version nothing tells a replaced object from the one
        // begun: resuming could join two versions.
        let Some(version) = self.version.clone() else {
            return Err(failure);
        };
        let what = format!(
            "downloading {} (resuming at byte {})",
            self.key, self.offset
        );
        let options = GetOptions {
            range_start: self.offset,
            if_match: Some(version),
        };
        loop {
            let wait = StoreError::from_io(&failure).and_then(|e| self.budget.next_wait(&what, e));
            let Some(wait) = wait else {
                return Err(failure);
            };
            tokio::time::sleep(wait).await;
            match self.inner.get_opts(&self.key, &options).await {
                Ok(got) => return Ok(got.stream),
                Err(StoreError::NotFound { key }) => return Err(StoreError::Changed { key }.into()),
                Err(err) => failure = err.into(),
            }
        }
    }
}

#[async_trait]
impl<S: Store + 'static> Store for RetryingStore<S> {
    async fn put(
        &self,
        key: &str,
        payload: PutPayload,
        options: &PutOptions,
    ) -> Result<(), StoreError> {
        Budget::new(&self.policy)
            .run(&format!("uploading {key}"), || {
                self.inner.put(key, payload.clone(), options)
            })
            .await
    }

    async fn get_opts(&self, key: &str, options: &GetOptions) -> Result<GetResult, StoreError> {
        let mut budget = Budget::new(&self.policy);
        let got = budget
            .run(&format!("downloading {key}"), || {
                self.inner.get_opts(key, options)
            })
            .await?;
        let download = Download {
            inner: self.inner.clone(),
            key: key.to_string(),
            body: got.stream,
            offset: options.range_start,
            version: got.meta.version.clone(),
            budget,
            ended: false,
        };
        let stream = stream::unfold(download, |mut download| async move {
            let item = download.next().await?;
            Some((item, download))
        });
        Ok(GetResult {
            meta: got.meta,
            stream: stream.boxed(),
        })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        Budget::new(&self.policy)
            .run(&format!("looking up {key}"), || self.inner.head(key))
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
            budget: Budget,
            done: bool,
        }
        let prefix = prefix.to_string();
        let state = State {
            inner: self.inner.list(&prefix, start_after.clone()),
            last_key: start_after,
            budget: Budget::new(&self.policy),
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
                        Some(Err(err)) => {
                            match st.budget.next_wait(&format!("listing {prefix}"), &err) {
                                Some(wait) => {
                                    tokio::time::sleep(wait).await;
                                    st.inner = self.inner.list(&prefix, st.last_key.clone());
                                }
                                None => {
                                    st.done = true;
                                    return Some((Err(err), st));
                                }
                            }
                        }
                    }
                }
            }
        })
        .boxed()
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        Budget::new(&self.policy)
            .run("deleting a batch of objects", || {
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
        let result: Result<(), _> = Budget::new(&fast(4))
            .run("op", || async {
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
            let result: Result<(), _> = Budget::new(&fast(5))
                .run("op", || async {
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
        let result = Budget::new(&fast(5))
            .run("op", || async {
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
        let result: Result<(), _> = Budget::new(&policy)
            .run("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(StoreError::transient("get", "k", "503"))
            })
            .await;
        assert!(result.is_err());
        let n = calls.load(Ordering::SeqCst);
        assert!((2..=12).contains(&n), "{n} attempts");
    }
    /// A real file store whose downloads fail as a network would: the next
    /// `fail_gets` requests fail, and the next body breaks off after
    /// `cut_after` bytes. It records the options of every request.
    #[derive(Debug)]
    struct Flaky {
        inner: crate::storage::FileStore,
        fail_gets: AtomicU32,
        cut_after: std::sync::Mutex<Option<usize>>,
        requests: Arc<std::sync::Mutex<Vec<GetOptions>>>,
    }

    fn cut(body: ByteStream, at: usize, key: &str) -> ByteStream {
        let key = key.to_string();
        stream::unfold((body, 0), move |(mut body, sent)| {
            let key = key.clone();
            async move {
                if sent == at {
                    let err = StoreError::transient("get", &key, "connection reset");
                    return Some((Err(err.into()), (stream::empty().boxed(), sent + 1)));
                }
                let mut chunk = body.next().await?.ok()?;
                chunk.truncate(at.saturating_sub(sent));
                let sent = sent + chunk.len();
                Some((Ok(chunk), (body, sent)))
            }
        })
        .boxed()
    }

    #[async_trait]
    impl Store for Flaky {
        async fn put(&self, key: &str, p: PutPayload, o: &PutOptions) -> Result<(), StoreError> {
            self.inner.put(key, p, o).await
        }
        async fn get_opts(&self, key: &str, options: &GetOptions) -> Result<GetResult, StoreError> {
            self.requests.lock().unwrap().push(options.clone());
            let failing = self.fail_gets.load(Ordering::SeqCst);
            if failing > 0 {
                self.fail_gets.store(failing - 1, Ordering::SeqCst);
                return Err(StoreError::transient("get", key, "503"));
            }
            let mut got = self.inner.get_opts(key, options).await?;
            if let Some(at) = self.cut_after.lock().unwrap().take() {
                got.stream = cut(got.stream, at, key);
            }
            Ok(got)
        }
        async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
            self.inner.head(key).await
        }
        fn list(
            &self,
            prefix: &str,
            start_after: Option<String>,
        ) -> BoxStream<'_, Result<ObjectMeta, StoreError>> {
            self.inner.list(prefix, start_after)
        }
        async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
            self.inner.delete_many(keys).await
        }
    }

    const DATA: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

    /// A retrying store over a flaky file store holding `DATA` at "k", and
    /// the flaky store's request log.
    async fn flaky(
        dir: &std::path::Path,
        attempts: u32,
        fail_gets: u32,
        cut_after: Option<usize>,
    ) -> (RetryingStore<Flaky>, Arc<std::sync::Mutex<Vec<GetOptions>>>) {
        let inner = crate::storage::FileStore::new(dir, dir);
        inner
            .put("k", PutPayload::from_bytes(DATA), &PutOptions::default())
            .await
            .unwrap();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = Flaky {
            inner,
            fail_gets: AtomicU32::new(fail_gets),
            cut_after: std::sync::Mutex::new(cut_after),
            requests: requests.clone(),
        };
        (RetryingStore::new(store, fast(attempts)), requests)
    }

    async fn read_all(mut body: ByteStream) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(chunk) = body.next().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }

    #[tokio::test]
    async fn a_broken_body_resumes_where_it_stopped_at_the_same_version() {
        let dir = tempfile::tempdir().unwrap();
        let (store, requests) = flaky(dir.path(), 3, 0, Some(10)).await;
        let got = store.get("k").await.unwrap();
        let version = got.meta.version.clone();
        assert!(version.is_some());
        assert_eq!(read_all(got.stream).await.unwrap(), DATA);
        let requests = requests.lock().unwrap().clone();
        assert_eq!(
            requests,
            [
                GetOptions::default(),
                GetOptions {
                    range_start: 10,
                    if_match: version
                }
            ]
        );
    }

    #[tokio::test]
    async fn the_first_request_and_the_resumes_share_the_attempts() {
        let dir = tempfile::tempdir().unwrap();
        // Two failed requests, then a body that breaks: 3 attempts are spent.
        let (store, requests) = flaky(dir.path(), 3, 2, Some(10)).await;
        let got = store.get("k").await.unwrap();
        let err = read_all(got.stream).await.unwrap_err();
        assert!(StoreError::from_io(&err).unwrap().is_transient(), "{err}");
        assert_eq!(requests.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_download_never_joins_two_versions() {
        for replace in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (store, requests) = flaky(dir.path(), 5, 0, Some(10)).await;
            let mut got = store.get("k").await.unwrap();
            let first = got.stream.next().await.unwrap().unwrap();
            assert_eq!(&first[..], &DATA[..10]);
            // Replaced (or deleted) while the download is under way.
            if replace {
                let other = PutPayload::from_bytes(&b"another version of k, as long as DATA"[..]);
                store.put("k", other, &PutOptions::default()).await.unwrap();
            } else {
                store.delete_many(&["k".to_string()]).await.unwrap();
            }
            let err = read_all(got.stream).await.unwrap_err();
            assert!(
                matches!(StoreError::from_io(&err), Some(StoreError::Changed { .. })),
                "replaced: {replace}: {err}"
            );
            assert_eq!(requests.lock().unwrap().len(), 2, "never retried");
        }
    }
}
