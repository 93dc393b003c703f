//! The storage conformance suite and S3-only behaviour against a local
//! S3-compatible server (s3s-fs) that checks SigV4 signatures.

mod common;

use std::sync::atomic::Ordering;

use futures_util::TryStreamExt;
use md5::{Digest, Md5};
use wal_e::storage::S3_PART_SIZE as PART_SIZE;
use wal_e::storage::{PutOptions, PutPayload, StoreError};

use common::backend::TestBackend;
use common::conformance::{self, digest, pattern_stream};
use common::s3::{FaultProxy, S3Backend, S3Server, open_store, sdk_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_passes_the_conformance_suite() {
    let env = S3Backend::new().fresh_prefix();
    let store = open_store(&env).await;
    conformance::run_all(store.clone(), "srv/db1/").await;

    // Everything it left, well over one DeleteObjects batch of 1,000 keys.
    let keys: Vec<String> = store
        .list("srv/", None)
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap();
    assert!(keys.len() > 2_000, "{} keys", keys.len());
    store.delete_many(&keys).await.unwrap();
    let left: Vec<_> = store.list("srv/", None).try_collect().await.unwrap();
    assert!(left.is_empty(), "{} keys left", left.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_stored_as_boto_wrote_them() {
    // A fresh bucket, with a prefix path full of slashes.
    let bucket = S3Server::shared().create_bucket();
    let env = S3Backend::new()
        .fresh_prefix()
        .with("WALE_S3_PREFIX", &format!("s3://{bucket}//db1//x/"));
    let vars: std::collections::HashMap<String, String> = env.vars.iter().cloned().collect();
    let settings = wal_e::config::Settings::from_args(&Default::default(), &vars).unwrap();
    let layout = wal_e::layout::Layout::new(settings.prefix);
    let store = open_store(&env).await;
    let key = layout.wal_key("000000010000000000000002");
    assert_eq!(key, "db1/x/wal_005/000000010000000000000002.lzo");
    store
        .put(
            &key,
            PutPayload::from_bytes("wal"),
            &PutOptions::create_only(),
        )
        .await
        .unwrap();
    let listed = sdk_client(S3Server::shared().port)
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(names, ["db1/x/wal_005/000000010000000000000002.lzo"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_are_multipart_uploads_with_s3_etags() {
    let env = S3Backend::new().fresh_prefix();
    let store = open_store(&env).await;
    let len = (3 * PART_SIZE + PART_SIZE / 2 + 12_345) as u64;
    let key = "db1/basebackups_005/base_x/tar_partitions/part_00000000.tar.lzo";
    let started = std::time::Instant::now();
    store
        .put(
            key,
            PutPayload::from_fn(move || pattern_stream(len, 77)),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let s3_secs = started.elapsed().as_secs_f64();

    // S3's multipart ETag: the MD5 of the parts' MD5s, and the part count.
    let mut whole = Vec::new();
    let mut stream = pattern_stream(len, 77);
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        whole.extend_from_slice(&chunk.unwrap());
    }
    let mut of_parts = Md5::new();
    for part in whole.chunks(PART_SIZE) {
        of_parts.update(Md5::digest(part));
    }
    let want = format!("\"{}-4\"", hex(&of_parts.finalize()));
    let bucket = env.get("WALE_S3_PREFIX").unwrap()[5..]
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let head = sdk_client(S3Server::shared().port)
        .head_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.e_tag(), Some(want.as_str()));
    assert_eq!(head.content_length(), Some(len as i64));

    let got = store.get(key).await.unwrap();
    assert_eq!(
        digest(got.stream).await.unwrap(),
        digest(pattern_stream(len, 77)).await.unwrap()
    );

    // The same bytes through the file store, for the throughput ratio.
    let dir = tempfile::tempdir().unwrap();
    let file = wal_e::storage::FileStore::new(dir.path(), dir.path());
    let started = std::time::Instant::now();
    wal_e::storage::Store::put(
        &file,
        "obj",
        PutPayload::from_fn(move || pattern_stream(len, 77)),
        &PutOptions::default(),
    )
    .await
    .unwrap();
    let file_secs = started.elapsed().as_secs_f64();
    let mib = len as f64 / (1024.0 * 1024.0);
    eprintln!(
        "multipart upload of {mib:.1} MiB: S3 {:.0} MiB/s, file store {:.0} MiB/s (ratio {:.2})",
        mib / s3_secs,
        mib / file_secs,
        file_secs / s3_secs
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_race_for_a_wal_key_is_already_exists() {
    // HEAD says "absent" (the proxy hides the object); the conditional PUT
    // and the conditional CompleteMultipartUpload must then get 412.
    conditional_writes_alone_keep_wal_create_only(404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_only_credentials_archive_with_conditional_writes() {
    // Credentials that may put but not read get 403 on the lookup: the
    // conditional write still refuses to overwrite.
    conditional_writes_alone_keep_wal_create_only(403).await;
}

async fn conditional_writes_alone_keep_wal_create_only(head_status: u16) {
    let proxy = FaultProxy::start();
    proxy
        .faults
        .object_head_status
        .store(head_status, Ordering::SeqCst);
    let env = S3Backend::via(proxy.port).fresh_prefix();
    let store = open_store(&env).await;
    for (key, len) in [
        ("db1/wal_005/small", 100u64),
        ("db1/wal_005/large", (PART_SIZE + 1) as u64),
    ] {
        store
            .put(
                key,
                PutPayload::from_fn(move || pattern_stream(len, 1)),
                &PutOptions::create_only(),
            )
            .await
            .unwrap_or_else(|e| panic!("{key}, HEAD {head_status}: {e}"));
        let second = store
            .put(
                key,
                PutPayload::from_fn(move || pattern_stream(len, 2)),
                &PutOptions::create_only(),
            )
            .await;
        assert!(
            matches!(second, Err(StoreError::AlreadyExists { .. })),
            "{key}: {second:?}"
        );
        let got = store.get(key).await.unwrap();
        assert_eq!(
            digest(got.stream).await.unwrap(),
            digest(pattern_stream(len, 1)).await.unwrap(),
            "{key} kept its first content"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_conditional_writes_create_only_puts_rely_on_the_lookup() {
    let proxy = FaultProxy::start();
    proxy
        .faults
        .reject_conditional
        .store(true, Ordering::SeqCst);
    let env = S3Backend::via(proxy.port).fresh_prefix();
    let store = open_store(&env).await;
    conformance::create_only_put_reports_already_exists(&*store, "db1/").await;
    let len = (PART_SIZE + 1) as u64;
    let key = "db1/wal_005/large";
    for seed in [1, 2] {
        let result = store
            .put(
                key,
                PutPayload::from_fn(move || pattern_stream(len, seed)),
                &PutOptions::create_only(),
            )
            .await;
        assert_eq!(result.is_ok(), seed == 1, "{result:?}");
    }
    // The server said "not implemented" once; the store then stopped asking.
    assert_eq!(proxy.faults.conditional_rejected.load(Ordering::SeqCst), 1);
}

/// Credentials that may not look keys up (403) on a server without
/// conditional writes (501): nothing can tell whether the key exists, so a
/// create-only put must fail rather than write unconditionally. Fails on
/// main, which re-sent the PUT without If-None-Match and replaced the
/// archived object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_lookups_or_conditional_writes_create_only_puts_never_overwrite() {
    let proxy = FaultProxy::start();
    let env = S3Backend::via(proxy.port).fresh_prefix();
    let keys = [
        ("db1/wal_005/small", 100u64),
        ("db1/wal_005/large", (PART_SIZE + 1) as u64),
    ];
    let store = open_store(&env).await;
    for (key, len) in keys {
        store
            .put(
                key,
                PutPayload::from_fn(move || pattern_stream(len, 1)),
                &PutOptions::create_only(),
            )
            .await
            .unwrap();
    }
    proxy.faults.object_head_status.store(403, Ordering::SeqCst);
    proxy
        .faults
        .reject_conditional
        .store(true, Ordering::SeqCst);
    let store = open_store(&env).await;
    for (key, len) in keys.into_iter().chain([("db1/wal_005/new", 100)]) {
        let err = store
            .put(
                key,
                PutPayload::from_fn(move || pattern_stream(len, 2)),
                &PutOptions::create_only(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Permanent { .. }),
            "{key}: {err:?}"
        );
        assert!(err.to_string().contains("s3:GetObject"), "{key}: {err}");
    }
    for (key, len) in keys {
        let got = store.get(key).await.unwrap();
        assert_eq!(
            digest(got.stream).await.unwrap(),
            digest(pattern_stream(len, 1)).await.unwrap(),
            "{key} kept its first content"
        );
    }
    assert!(matches!(
        store.head("db1/wal_005/new").await,
        Err(StoreError::Permanent { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_never_not_found() {
    let env = S3Backend::new()
        .fresh_prefix()
        .with("WALE_S3_PREFIX", "s3://no-such-bucket-here/db1");
    let store = open_store(&env).await;
    for (op, result) in [
        ("head", store.head("db1/wal_005/x").await.map(|_| ())),
        ("get", store.get("db1/wal_005/x").await.map(|_| ())),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, StoreError::Permanent { .. }), "{op}: {err:?}");
        assert!(err.to_string().contains("NoSuchBucket"), "{op}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_a_batch_delete_could_not_remove_are_reported() {
    let proxy = FaultProxy::start();
    // One try: the error as the store reports it, not after retries.
    let env = S3Backend::via(proxy.port)
        .fresh_prefix()
        .with("WALE_RETRIES", "1");
    let store = open_store(&env).await;
    let keys: Vec<String> = (0..3).map(|i| format!("db1/wal_005/k{i}")).collect();
    *proxy.faults.refuse_delete_of.lock().unwrap() = Some((keys[1].clone(), "AccessDenied"));
    let err = store.delete_many(&keys).await.unwrap_err();
    let StoreError::DeleteFailed { failures } = err else {
        panic!("{err:?}");
    };
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, keys[1]);
    assert!(failures[0].1.contains("AccessDenied"), "{failures:?}");

    // A key refused for a passing reason makes the batch worth retrying.
    *proxy.faults.refuse_delete_of.lock().unwrap() = Some((keys[1].clone(), "SlowDown"));
    let err = store.delete_many(&keys).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(&keys[1]), "{err}");
}

/// The SDK sends each request once, so that a request is one of the store's
/// `WALE_RETRIES` attempts; only a part of a multipart upload is tried again
/// within its attempt, so that one failed part does not restart the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_parts_of_an_upload_are_retried_by_the_sdk() {
    let proxy = FaultProxy::start();
    let env = S3Backend::via(proxy.port)
        .fresh_prefix()
        .with("WALE_RETRIES", "1");
    let store = open_store(&env).await;
    let key = "db1/two-parts";
    let len = (PART_SIZE + 1) as u64;
    *proxy.faults.fail_matching.lock().unwrap() = Some(("partNumber=2".into(), 1));
    store
        .put(
            key,
            PutPayload::from_fn(move || pattern_stream(len, 4)),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(proxy.faults.failed.load(Ordering::SeqCst), 1);

    proxy.faults.per_object.lock().unwrap().clear();
    *proxy.faults.fail_matching.lock().unwrap() = Some((format!("/{key}"), 1));
    let err = store.get(key).await.map(|_| ()).unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(
        proxy.faults.most_per_object().0,
        1,
        "one request, one attempt"
    );
    let got = store.get(key).await.unwrap();
    assert_eq!(
        digest(got.stream).await.unwrap(),
        digest(pattern_stream(len, 4)).await.unwrap()
    );
}
