//! The storage conformance suite: written once, run against every backend's
//! real server (file:// needs none). Each check works under its own key prefix
//! so checks can share one store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use wal_e::ByteStream;
use wal_e::storage::{GetOptions, PutOptions, PutPayload, Store, StoreError};

/// Deterministic, incompressible-looking test data of any length, produced in
/// chunks so large objects never sit in memory whole.
pub fn pattern_stream(len: u64, seed: u64) -> ByteStream {
    const CHUNK: u64 = 64 * 1024;
    let chunks = len.div_ceil(CHUNK);
    stream::iter(0..chunks)
        .map(move |i| {
            let n = CHUNK.min(len - i * CHUNK) as usize;
            let mut state = seed ^ (i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut buf = Vec::with_capacity(n);
            while buf.len() < n {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                buf.extend_from_slice(&state.to_le_bytes());
            }
            buf.truncate(n);
            Ok(Bytes::from(buf))
        })
        .boxed()
}

/// Length and Adler-32 of a stream, consumed chunk by chunk.
pub async fn digest(mut s: ByteStream) -> std::io::Result<(u64, u32)> {
    let mut adler = adler2::Adler32::new();
    let mut len = 0;
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        adler.write_slice(&chunk);
    }
    Ok((len, adler.checksum()))
}

fn pattern_payload(len: u64, seed: u64) -> PutPayload {
    PutPayload::from_fn(move || pattern_stream(len, seed))
}

async fn list_keys(store: &dyn Store, prefix: &str, start_after: Option<String>) -> Vec<String> {
    store
        .list(prefix, start_after)
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .expect("listing succeeds")
}

pub async fn round_trips_of_various_sizes(store: &dyn Store, base: &str) {
    for (len, seed) in [(0u64, 1u64), (1, 2), (64 * 1024 * 1024, 3)] {
        let key = format!("{base}obj-{len}");
        store
            .put(&key, pattern_payload(len, seed), &PutOptions::default())
            .await
            .unwrap();
        let head = store.head(&key).await.unwrap();
        assert_eq!(head.size, len, "head size of {key}");
        let got = store.get(&key).await.unwrap();
        assert_eq!(got.meta.size, len);
        let want = digest(pattern_stream(len, seed)).await.unwrap();
        assert_eq!(digest(got.stream).await.unwrap(), want, "content of {key}");
    }
}

pub async fn missing_objects_are_not_found(store: &dyn Store, base: &str) {
    let key = format!("{base}does-not-exist");
    assert!(matches!(
        store.get(&key).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.head(&key).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn create_only_put_reports_already_exists(store: &dyn Store, base: &str) {
    let key = format!("{base}wal_005/000000010000000000000001.lzo");
    store
        .put(
            &key,
            PutPayload::from_bytes("first"),
            &PutOptions::create_only(),
        )
        .await
        .unwrap();
    let second = store
        .put(
            &key,
            PutPayload::from_bytes("second"),
            &PutOptions::create_only(),
        )
        .await;
    assert!(
        matches!(second, Err(StoreError::AlreadyExists { .. })),
        "{second:?}"
    );
    let body = store
        .get(&key)
        .await
        .unwrap()
        .bytes(usize::MAX)
        .await
        .unwrap();
    assert_eq!(&body[..], b"first", "create-only must not overwrite");
    // An ordinary put does replace.
    store
        .put(
            &key,
            PutPayload::from_bytes("third"),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let body = store
        .get(&key)
        .await
        .unwrap()
        .bytes(usize::MAX)
        .await
        .unwrap();
    assert_eq!(&body[..], b"third");
}

/// Metadata given at upload comes back from `head` and `get`, for single
/// requests and for uploads in several parts alike.
pub async fn metadata_is_kept_with_the_object(store: &dyn Store, base: &str) {
    let sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    // Larger than an S3 part and an Azure block: a multipart upload.
    for (name, len) in [("small", 10u64), ("large", 9 << 20)] {
        let key = format!("{base}wal_005/metadata-{name}");
        let options = PutOptions {
            metadata: [("walesha256".to_string(), sha256.to_string())].into(),
            ..PutOptions::create_only()
        };
        store
            .put(
                &key,
                PutPayload::from_fn(move || pattern_stream(len, 7)),
                &options,
            )
            .await
            .unwrap();
        let head = store.head(&key).await.unwrap();
        assert_eq!(head.metadata, options.metadata, "head of {key}");
        let got = store.get(&key).await.unwrap();
        assert_eq!(got.meta.metadata, options.metadata, "get of {key}");
        assert_eq!(
            digest(got.stream).await.unwrap(),
            digest(pattern_stream(len, 7)).await.unwrap()
        );
        // An object stored without metadata has none.
        store
            .put(
                &key,
                PutPayload::from_bytes("plain"),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        assert!(store.head(&key).await.unwrap().metadata.is_empty(), "{key}");
    }
}

pub async fn listing_pages_through_many_keys(store: &dyn Store, base: &str) {
    const N: usize = 2_600;
    let mut want: Vec<String> = (0..N)
        .map(|i| format!("{base}many/d{}/k{i:05}", i % 7))
        .collect();
    stream::iter(want.clone())
        .map(|key| async move {
            store
                .put(
                    &key,
                    PutPayload::from_bytes(Bytes::from(key.clone())),
                    &PutOptions::default(),
                )
                .await
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    want.sort();
    let got = list_keys(store, &format!("{base}many/"), None).await;
    assert_eq!(got.len(), N);
    assert_eq!(got, want, "every key exactly once, in lexicographic order");

    // Resuming after a key, as a paginating client does.
    let after = want[1_234].clone();
    let rest = list_keys(store, &format!("{base}many/"), Some(after)).await;
    assert_eq!(rest, want[1_235..].to_vec());

    // A prefix that ends inside a name, like wal_005/0000000100000000000000.
    let partial = list_keys(store, &format!("{base}many/d3/k0001"), None).await;
    let expect: Vec<String> = want
        .iter()
        .filter(|k| k.starts_with(&format!("{base}many/d3/k0001")))
        .cloned()
        .collect();
    assert!(!expect.is_empty());
    assert_eq!(partial, expect);
}

pub async fn delete_many_is_idempotent(store: &dyn Store, base: &str) {
    let keys: Vec<String> = (0..5).map(|i| format!("{base}del/sub/k{i}")).collect();
    for key in &keys {
        store
            .put(key, PutPayload::from_bytes("x"), &PutOptions::default())
            .await
            .unwrap();
    }
    let mut doomed = keys[..3].to_vec();
    doomed.push(format!("{base}del/never-existed"));
    store.delete_many(&doomed).await.unwrap();
    store.delete_many(&doomed).await.unwrap();
    assert_eq!(
        list_keys(store, &format!("{base}del/"), None).await,
        keys[3..].to_vec()
    );
    store.delete_many(&keys).await.unwrap();
    assert!(
        list_keys(store, &format!("{base}del/"), None)
            .await
            .is_empty()
    );
}

/// A put that stops midway (the process killed, the connection lost) must
/// leave nothing a reader could see: the object is absent until complete.
pub async fn interrupted_put_leaves_nothing_visible(store: Arc<dyn Store>, base: &str) {
    let key = format!("{base}interrupted/000000010000000000000009.lzo");
    let polls = Arc::new(AtomicUsize::new(0));
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel::<()>();
    let reached_tx = Arc::new(std::sync::Mutex::new(Some(reached_tx)));
    let payload = {
        let polls = polls.clone();
        PutPayload::from_fn(move || {
            let polls = polls.clone();
            let reached_tx = reached_tx.clone();
            // Six MiB of data (enough for a multipart part), then never another byte.
            let head = pattern_stream(6 * 1024 * 1024, 9);
            let stall = stream::once(async move {
                if let Some(tx) = reached_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                std::future::pending::<std::io::Result<Bytes>>().await
            });
            head.inspect(move |_| {
                polls.fetch_add(1, Ordering::SeqCst);
            })
            .chain(stall)
            .boxed()
        })
    };
    let task = {
        let store = store.clone();
        let key = key.clone();
        tokio::spawn(async move { store.put(&key, payload, &PutOptions::create_only()).await })
    };
    reached_rx
        .await
        .expect("the upload consumed the first part of the body");
    assert!(polls.load(Ordering::SeqCst) > 0);
    assert!(matches!(
        store.head(&key).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        list_keys(&*store, &format!("{base}interrupted/"), None)
            .await
            .is_empty()
    );
    task.abort();
    let _ = task.await;
    assert!(matches!(
        store.get(&key).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        list_keys(&*store, &format!("{base}interrupted/"), None)
            .await
            .is_empty()
    );
    // And the key is still free for a create-only put.
    store
        .put(
            &key,
            PutPayload::from_bytes("whole"),
            &PutOptions::create_only(),
        )
        .await
        .unwrap();
}

/// A failure producing the body aborts the put without a visible object.
pub async fn payload_errors_abort_the_put(store: &dyn Store, base: &str) {
    let key = format!("{base}payload-error/obj");
    let payload = PutPayload::from_fn(|| {
        pattern_stream(1024, 5)
            .chain(stream::once(async {
                Err(std::io::Error::other("disk on fire"))
            }))
            .boxed()
    });
    let err = store
        .put(&key, payload, &PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Payload { .. }), "{err:?}");
    assert!(err.to_string().contains("disk on fire"));
    assert!(matches!(
        store.head(&key).await,
        Err(StoreError::NotFound { .. })
    ));
}

/// A stream that panics when polled again after it ended, like the
/// pipeline's `unfold` stages (streams need not be fused).
struct Unfused {
    inner: ByteStream,
    ended: bool,
}

impl futures_util::Stream for Unfused {
    type Item = std::io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        assert!(!self.ended, "payload stream polled after it ended");
        let next = self.inner.poll_next_unpin(cx);
        if let std::task::Poll::Ready(None) = next {
            self.ended = true;
        }
        next
    }
}

/// Payloads whose streams must not be polled after their end are stored
/// whole, below and above every backend's single-request size.
pub async fn payload_streams_are_not_polled_after_their_end(store: &dyn Store, base: &str) {
    for (len, mode) in [
        (0, PutOptions::default()),
        (1000, PutOptions::create_only()),
        (9 << 20, PutOptions::default()),
        (9 << 20, PutOptions::create_only()),
    ] {
        let key = format!("{base}unfused/{len}-{:?}", mode.mode);
        let payload = PutPayload::from_fn(move || {
            Unfused {
                inner: pattern_stream(len, 6),
                ended: false,
            }
            .boxed()
        });
        store.put(&key, payload, &mode).await.unwrap();
        let got = store.get(&key).await.unwrap();
        assert_eq!(
            digest(got.stream).await.unwrap(),
            digest(pattern_stream(len, 6)).await.unwrap(),
            "{key}"
        );
    }
}

/// A download can start at any byte of the version it names, as a resumed
/// one does; another version is refused, never joined onto the first's bytes.
pub async fn ranged_gets_return_the_tail_of_that_version_only(store: &dyn Store, base: &str) {
    // Larger than one Azure download partition (4 MiB), below S3's part size.
    let len: u64 = 5 * 1024 * 1024 + 3;
    let key = format!("{base}ranged/obj");
    store
        .put(&key, pattern_payload(len, 11), &PutOptions::default())
        .await
        .unwrap();
    let whole = store.get(&key).await.unwrap();
    let version = whole.meta.version.clone();
    assert!(version.is_some(), "{key}: get names the version");
    let all = whole.bytes(usize::MAX).await.unwrap();
    assert_eq!(all.len() as u64, len);

    for start in [1, 4 * 1024 * 1024 + 1, len - 1] {
        let tail = store
            .get_opts(
                &key,
                &GetOptions {
                    range_start: start,
                    if_match: version.clone(),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{key} from {start}: {e}"));
        assert_eq!(tail.meta.size, len, "the size of the whole object");
        assert_eq!(tail.meta.version, version);
        let got = tail.bytes(usize::MAX).await.unwrap();
        assert!(got == all[start as usize..], "{key}: the tail from {start}");
    }

    // Replaced by other content: the old version is gone.
    store
        .put(&key, pattern_payload(len, 12), &PutOptions::default())
        .await
        .unwrap();
    for start in [0, 1000] {
        let stale = store
            .get_opts(
                &key,
                &GetOptions {
                    range_start: start,
                    if_match: version.clone(),
                },
            )
            .await;
        assert!(
            matches!(stale, Err(StoreError::Changed { .. })),
            "{key} from {start}: {:?}",
            stale.map(|g| g.meta)
        );
    }
}

/// Runs every check; `base` is a fresh key prefix ending in `/`.
pub async fn run_all(store: Arc<dyn Store>, base: &str) {
    round_trips_of_various_sizes(&*store, base).await;
    missing_objects_are_not_found(&*store, base).await;
    ranged_gets_return_the_tail_of_that_version_only(&*store, base).await;
    create_only_put_reports_already_exists(&*store, base).await;
    metadata_is_kept_with_the_object(&*store, base).await;
    listing_pages_through_many_keys(&*store, base).await;
    delete_many_is_idempotent(&*store, base).await;
    payload_errors_abort_the_put(&*store, base).await;
    payload_streams_are_not_polled_after_their_end(&*store, base).await;
    interrupted_put_leaves_nothing_visible(store, base).await;
}
