//! One small async storage trait, modelled on the `object_store` crate, with a
//! backend per service and cross-cutting behaviour (retries) as a decorator.
//!
//! Keys are physical object names inside one bucket or container, exactly as
//! [`crate::layout::Layout`] produces them.

mod file;
mod retry;
mod s3;
mod swift;
pub mod tls;
mod wabs;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio_util::task::TaskTracker;

use crate::ByteStream;
use crate::config::{Env, Scheme, Settings};
use crate::error::UserError;

pub use file::FileStore;
pub use retry::{RetryPolicy, RetryingStore};
pub use s3::PART_SIZE as S3_PART_SIZE;
pub use swift::{AuthVersion, Credentials, Interface, SwiftSettings, SwiftStore};
pub use wabs::BLOCK_SIZE as WABS_BLOCK_SIZE;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong, in the terms callers decide on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store says, authoritatively, that the object does not exist.
    #[error("object {key} does not exist")]
    NotFound { key: String },
    /// A create-only put found the object already there.
    #[error("object {key} already exists")]
    AlreadyExists { key: String },
    /// Worth trying again: timeouts, throttling, resets, 5xx.
    #[error("{op} of {key} failed (may succeed if retried): {source}")]
    Transient {
        op: &'static str,
        key: String,
        source: BoxError,
    },
    /// Will fail again: bad credentials, a missing bucket, a bad request.
    #[error("{op} of {key} failed: {source}")]
    Permanent {
        op: &'static str,
        key: String,
        source: BoxError,
    },
    /// The data being uploaded could not be produced (e.g. a local read failed).
    #[error("could not read the data to upload to {key}: {source}")]
    Payload { key: String, source: io::Error },
    /// The object is no longer the version a download began with: it was
    /// replaced or deleted midway. The download stops rather than join the
    /// bytes of two versions.
    #[error("object {key} changed while it was being downloaded (replaced or deleted)")]
    Changed { key: String },
    /// Some keys of a batch delete failed: (key, reason) for each.
    #[error("{} object(s) could not be deleted, first: {} ({})", .failures.len(), .failures[0].0, .failures[0].1)]
    DeleteFailed { failures: Vec<(String, String)> },
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }

    pub fn transient(op: &'static str, key: &str, source: impl Into<BoxError>) -> Self {
        StoreError::Transient {
            op,
            key: key.to_string(),
            source: source.into(),
        }
    }

    pub fn permanent(op: &'static str, key: &str, source: impl Into<BoxError>) -> Self {
        StoreError::Permanent {
            op,
            key: key.to_string(),
            source: source.into(),
        }
    }

    /// Finds a `StoreError` carried inside an `io::Error` (download streams
    /// report failures as I/O errors).
    pub fn from_io(err: &io::Error) -> Option<&StoreError> {
        err.get_ref()?.downcast_ref::<StoreError>()
    }
}

impl From<StoreError> for io::Error {
    fn from(err: StoreError) -> io::Error {
        let kind = match err {
            StoreError::NotFound { .. } => io::ErrorKind::NotFound,
            StoreError::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

/// The outcome of deleting a batch key by key: a transient failure makes the
/// whole batch retryable (deletes are idempotent); the other failures are
/// reported together, per key.
pub(crate) fn batch_delete_outcome(
    results: Vec<(String, Result<(), StoreError>)>,
) -> Result<(), StoreError> {
    let mut failures = Vec::new();
    for (key, result) in results {
        match result {
            Ok(()) => {}
            Err(err) if err.is_transient() => return Err(err),
            Err(err) => failures.push((key, err.to_string())),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(StoreError::DeleteFailed { failures })
    }
}

/// A download's body checked against the size the store announced: a body
/// that ends short (or runs long) fails with a transient error instead of
/// passing for a smaller object. With no announced size it is passed on.
pub(crate) fn checked_length(body: ByteStream, expected: Option<u64>, key: &str) -> ByteStream {
    let Some(expected) = expected else {
        return body;
    };
    let key = key.to_string();
    stream::unfold(Some((body, 0u64)), move |state| {
        let key = key.clone();
        async move {
            let (mut body, seen) = state?;
            let wrong = |got: String| {
                let why = format!("the store announced {expected} bytes but sent {got}");
                Some((Err(StoreError::transient("get", &key, why).into()), None))
            };
            match body.next().await {
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    if seen > expected {
                        return wrong(format!("more ({seen})"));
                    }
                    Some((Ok(chunk), Some((body, seen))))
                }
                Some(Err(e)) => Some((Err(e), None)),
                None if seen == expected => None,
                None => wrong(seen.to_string()),
            }
        }
    })
    .boxed()
}

/// User metadata carried with an object: S3's `x-amz-meta-<name>`, Azure's
/// blob metadata, Swift's `X-Object-Meta-<name>`, and on `file://` an
/// extended attribute `user.<name>` where the file system keeps them. Names
/// are lowercase ASCII letters and digits, which every service keeps as
/// given; values are ASCII. WAL-E ignores all of it.
pub type Metadata = BTreeMap<String, String>;

/// Metadata as the SDKs take it; `None` when there is none to send.
pub(crate) fn metadata_map(metadata: &Metadata) -> Option<HashMap<String, String>> {
    (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect())
}

/// Metadata from the names and values a service returned (some capitalise
/// the names).
pub(crate) fn metadata_from<K: AsRef<str>, V: AsRef<str>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Metadata {
    pairs
        .into_iter()
        .map(|(name, value)| {
            (
                name.as_ref().to_ascii_lowercase(),
                value.as_ref().to_string(),
            )
        })
        .collect()
}

/// An object as listed or looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
    /// The object's user metadata from `head` and `get`; empty in listings
    /// (no service lists it) and where the store keeps none.
    pub metadata: Metadata,
    /// What identifies this content of the object, for [`GetOptions::if_match`]
    /// (the ETag; size, mtime and inode on `file://`). Every backend's `get`
    /// sets it; listings and lookups may not.
    pub version: Option<String>,
}

/// Which part of which version of an object a `get` downloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// The first byte wanted: the download is the object's tail from here.
    pub range_start: u64,
    /// Only this [`ObjectMeta::version`]: any other fails with
    /// [`StoreError::Changed`] (`If-Match`, and checked on the answer too).
    pub if_match: Option<String>,
}

impl GetOptions {
    /// The `Range` header asking for the tail, for a download that does not
    /// start at the first byte.
    pub(crate) fn range_header(&self) -> Option<String> {
        (self.range_start > 0).then(|| format!("bytes={}-", self.range_start))
    }

    /// Fails with [`StoreError::Changed`] unless the object is the version
    /// asked for: a server that ignores `If-Match` is caught here.
    pub(crate) fn check_version(&self, key: &str, version: Option<&str>) -> Result<(), StoreError> {
        match &self.if_match {
            Some(wanted) if version != Some(wanted.as_str()) => Err(StoreError::Changed {
                key: key.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Checks an HTTP store's answer (its version, `Content-Range` and
    /// `Content-Length`) and returns the size of the whole object, when the
    /// answer says it. An answer that does not start at `range_start` (a
    /// server that ignores `Range` sends the whole object) is refused: it
    /// must never be joined onto bytes already delivered.
    pub(crate) fn check_answer(
        &self,
        key: &str,
        version: Option<&str>,
        content_range: Option<&str>,
        content_length: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        self.check_version(key, version)?;
        match content_range.map(parse_content_range) {
            Some(Some((start, total))) if start == self.range_start => Ok(total),
            None if self.range_start == 0 => Ok(content_length),
            _ => Err(StoreError::permanent(
                "get",
                key,
                format!(
                    "asked for the object from byte {}, the store answered with {}",
                    self.range_start,
                    content_range.map_or("the whole object".to_string(), |r| format!(
                        "the range {r:?}"
                    ))
                ),
            )),
        }
    }
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`): the first byte, and the
/// total size when given.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
    let total = match total {
        "*" => None,
        n => Some(n.parse::<u64>().ok().filter(|total| last < *total)?),
    };
    (first <= last).then_some((first, total))
}

/// Whether a put may replace an existing object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PutMode {
    #[default]
    Overwrite,
    /// Fail with [`StoreError::AlreadyExists`] if the key exists. The service
    /// decides atomically where it can (file: `renameat2` NOREPLACE; S3 and
    /// Azure: `If-None-Match: *`); Swift checks `If-None-Match` on each
    /// object server, so two writers racing for one new key may both
    /// succeed and the later one wins.
    Create,
}

#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub mode: PutMode,
    /// The object's content type where the backend records one.
    pub content_type: Option<&'static str>,
    /// User metadata stored with the object (see [`Metadata`]). A backend
    /// that cannot keep it stores the object without it.
    pub metadata: Metadata,
}

impl PutOptions {
    pub fn create_only() -> Self {
        PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        }
    }
}

/// The body of a put: a factory of byte streams, so that a failed upload can
/// be retried from the beginning without buffering the object.
#[derive(Clone)]
pub struct PutPayload {
    open: Arc<dyn Fn() -> ByteStream + Send + Sync>,
}

impl PutPayload {
    pub fn from_fn(open: impl Fn() -> ByteStream + Send + Sync + 'static) -> Self {
        PutPayload {
            open: Arc::new(open),
        }
    }

    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        PutPayload::from_fn(move || {
            stream::once(futures_util::future::ready(Ok(bytes.clone()))).boxed()
        })
    }

    /// A fresh stream of the whole body. It is fused: polling it again after
    /// its end returns the end again (the pipeline's stages would panic).
    pub fn open(&self) -> ByteStream {
        (self.open)().fuse().boxed()
    }
}

impl fmt::Debug for PutPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PutPayload")
    }
}

/// A download in progress.
pub struct GetResult {
    pub meta: ObjectMeta,
    pub stream: ByteStream,
}

impl GetResult {
    /// Collects the whole object, for small objects such as sentinels:
    /// more than `limit` bytes fail it (`InvalidData`), and nothing is
    /// allocated ahead on the size the store announces.
    pub async fn bytes(mut self, limit: usize) -> io::Result<Bytes> {
        let mut buf = Vec::new();
        while let Some(chunk) = self.stream.next().await {
            let chunk = chunk?;
            if chunk.len() > limit - buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is larger than {limit} bytes, which no object of its kind is",
                        self.meta.key
                    ),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.into())
    }
}

#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Stores the object durably: when this returns `Ok`, it survives a crash
    /// of this host and of the store's front end.
    async fn put(
        &self,
        key: &str,
        payload: PutPayload,
        options: &PutOptions,
    ) -> Result<(), StoreError>;

    /// The whole object.
    async fn get(&self, key: &str) -> Result<GetResult, StoreError> {
        self.get_opts(key, &GetOptions::default()).await
    }

    /// The object's tail from `options.range_start`, of the version
    /// `options.if_match` names if given. `meta.size` is the size of the
    /// whole object; the stream checks it delivers the whole tail.
    async fn get_opts(&self, key: &str, options: &GetOptions) -> Result<GetResult, StoreError>;

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError>;

    /// Every object whose key starts with `prefix`, in lexicographic key order,
    /// starting after `start_after` when given. Backends page internally.
    fn list(
        &self,
        prefix: &str,
        start_after: Option<String>,
    ) -> BoxStream<'_, Result<ObjectMeta, StoreError>>;

    /// Deletes the keys; keys that do not exist are not an error.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError>;
}

/// Clean-up that a cancelled operation leaves to run on its own (aborting
/// the multipart upload of a dropped S3 put), so that the process can wait
/// for it before exiting instead of cutting it off.
static CLEANUP: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// How long [`wait_for_cleanup`] waits at most.
const CLEANUP_GRACE: Duration = Duration::from_secs(10);

/// Runs `task` on the current runtime as clean-up the process waits for
/// (see [`wait_for_cleanup`]); without a runtime (the process is ending) it
/// cannot run and is dropped.
pub(crate) fn spawn_cleanup(task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        CLEANUP.spawn_on(task, &rt);
    }
}

/// Waits, at most a few seconds, for the clean-up cancelled operations left
/// running; called once, as a command ends.
pub async fn wait_for_cleanup() {
    CLEANUP.close();
    if tokio::time::timeout(CLEANUP_GRACE, CLEANUP.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            detail = %format!("{} clean-up task(s) of cancelled uploads did not finish within {} s.", CLEANUP.len(), CLEANUP_GRACE.as_secs()),
            hint = "An S3 multipart upload may be left incomplete: invisible, but stored until a bucket lifecycle rule (AbortIncompleteMultipartUpload) removes it.",
            "gave up waiting for clean-up"
        );
    }
}

/// Opens the store a prefix names, with WAL-E's retry behaviour around it.
///
/// Each backend reads its own settings (endpoints, credentials) from `env`;
/// secrets never come from the command line.
pub async fn open(settings: &Settings, env: &dyn Env) -> Result<Arc<dyn Store>, UserError> {
    let policy = RetryPolicy::from_retries(settings.retries);
    match settings.prefix.scheme {
        Scheme::File => Ok(Arc::new(RetryingStore::new(
            FileStore::open(
                format!("/{}", settings.prefix.path).into(),
                &settings.prefix.url,
            )
            .await?,
            policy,
        ))),
        Scheme::S3 => Ok(Arc::new(RetryingStore::new(
            s3::S3Store::open(settings, env).await?,
            policy,
        ))),
        Scheme::Wabs => Ok(Arc::new(RetryingStore::new(
            wabs::open(settings, env)?,
            policy,
        ))),
        Scheme::Swift => Ok(Arc::new(RetryingStore::new(
            SwiftStore::new(SwiftSettings::from_env(&settings.prefix.store_name, env)?)?,
            policy,
        ))),
        Scheme::Gs => Err(
            UserError::new("Google Cloud Storage (gs://) is not supported")
                .detail(format!("The storage prefix is {}.", settings.prefix.url))
                .hint("Use an s3://, wabs://, swift:// or file:// prefix."),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    async fn collect(body: ByteStream) -> Result<Vec<u8>, io::Error> {
        body.try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
    }

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
        .boxed()
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("bytes 0-9/10"), Some((0, Some(10))));
        assert_eq!(parse_content_range("bytes 7-9/*"), Some((7, None)));
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes */10",
            "0-9/10",
            "bytes 0-9",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn answers_must_be_the_version_and_range_asked_for() {
        let whole = GetOptions::default();
        assert_eq!(whole.range_header(), None);
        assert_eq!(
            whole.check_answer("k", None, None, Some(10)).unwrap(),
            Some(10)
        );
        assert_eq!(
            whole
                .check_answer("k", None, Some("bytes 0-3/10"), Some(4))
                .unwrap(),
            Some(10)
        );
        let tail = GetOptions {
            range_start: 4,
            if_match: Some("\"v1\"".into()),
        };
        assert_eq!(tail.range_header().as_deref(), Some("bytes=4-"));
        let answer = |version, range| tail.check_answer("k", version, range, Some(6));
        assert_eq!(
            answer(Some("\"v1\""), Some("bytes 4-9/10")).unwrap(),
            Some(10)
        );
        for version in [Some("\"v2\""), None] {
            let err = answer(version, Some("bytes 4-9/10")).unwrap_err();
            assert!(matches!(err, StoreError::Changed { .. }), "{err:?}");
        }
        // The whole object, or another range, instead of the tail.
        for range in [None, Some("bytes 0-9/10")] {
            let err = answer(Some("\"v1\""), range).unwrap_err();
            assert!(matches!(err, StoreError::Permanent { .. }), "{err:?}");
            assert!(err.to_string().contains("from byte 4"), "{err}");
        }
    }

    fn got(announced: u64, parts: &[&'static [u8]]) -> GetResult {
        GetResult {
            meta: ObjectMeta {
                key: "basebackups_005/x_backup_stop_sentinel.json".into(),
                size: announced,
                last_modified: DateTime::<Utc>::UNIX_EPOCH,
                metadata: Metadata::default(),
                version: None,
            },
            stream: chunks(parts),
        }
    }

    /// Fails on main, which allocated the announced size up front (a
    /// capacity overflow panic here, an abort for a large lie).
    #[tokio::test]
    async fn small_objects_are_read_whatever_size_the_store_announces() {
        let bytes = got(u64::MAX, &[b"{}"]).bytes(4).await.unwrap();
        assert_eq!(&bytes[..], b"{}");
        let bytes = got(0, &[b"ab", b"cd"]).bytes(4).await.unwrap();
        assert_eq!(&bytes[..], b"abcd");
        let err = got(4, &[b"ab", b"cde"]).bytes(4).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("larger than 4 bytes"), "{err}");
    }

    #[tokio::test]
    async fn downloads_are_checked_against_the_announced_size() {
        let whole = collect(checked_length(chunks(&[b"abc", b"de"]), Some(5), "k")).await;
        assert_eq!(whole.unwrap(), b"abcde");
        let unknown = collect(checked_length(chunks(&[b"abc"]), None, "k")).await;
        assert_eq!(unknown.unwrap(), b"abc");
        for (announced, why) in [(6, "sent 5"), (4, "sent more (5)")] {
            let err = collect(checked_length(
                chunks(&[b"abc", b"de"]),
                Some(announced),
                "k",
            ))
            .await
            .unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
            assert!(StoreError::from_io(&err).unwrap().is_transient());
        }
    }
}
