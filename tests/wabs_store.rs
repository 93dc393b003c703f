//! The storage conformance suite against Azurite, with the account key and
//! with a SAS token only, plus what only Azure shows: staged blocks, content
//! types, and errors that must not look like "not found".

mod common;

use std::sync::Arc;

use common::azurite::{ACCOUNT, WabsBackend, account_sas};
use common::backend::TestBackend;
use common::conformance::{self, digest, pattern_stream};
use wal_e::storage::{PutOptions, PutPayload, Store, StoreError, WABS_BLOCK_SIZE};

fn store_of(backend: &WabsBackend) -> (Arc<dyn Store>, String) {
    let env = backend.fresh_prefix();
    let container = env
        .get("WALE_WABS_PREFIX")
        .unwrap()
        .trim_start_matches("wabs://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    (env.open().0, container)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_key_store_passes_the_conformance_suite() {
    let backend = WabsBackend::with_key();
    let (store, _) = tokio::task::block_in_place(|| store_of(&backend));
    conformance::run_all(store, "db1/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_token_store_passes_the_conformance_suite() {
    let backend = WabsBackend::with_sas();
    let (store, _) = tokio::task::block_in_place(|| store_of(&backend));
    conformance::run_all(store, "").await;
}

/// The committed block list of a blob, as Azurite reports it.
fn committed_blocks(backend: &WabsBackend, container: &str, blob: &str) -> usize {
    let (status, _, body) = backend.azurite().request(
        reqwest::Method::GET,
        &format!("{container}/{blob}?comp=blocklist&blocklisttype=committed"),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8_lossy(&body).matches("<Block>").count()
}

fn content_type(backend: &WabsBackend, container: &str, blob: &str) -> String {
    let (status, headers, _) = backend
        .azurite()
        .request(reqwest::Method::HEAD, &format!("{container}/{blob}"));
    assert_eq!(status, 200, "HEAD {blob}");
    headers["content-type"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_are_staged_blocks_with_the_content_type_and_create_only_holds() {
    let backend = WabsBackend::with_key();
    let (store, container) = tokio::task::block_in_place(|| store_of(&backend));
    let len = 3 * WABS_BLOCK_SIZE as u64 + 12_345;
    let key = "db1/basebackups_005/base_000000010000000000000002_00000040/tar_partitions/part_00000000.tar.lzo";
    let options = PutOptions {
        content_type: Some("application/x-test"),
        ..PutOptions::create_only()
    };
    store
        .put(
            key,
            PutPayload::from_fn(move || pattern_stream(len, 42)),
            &options,
        )
        .await
        .unwrap();
    let got = store.get(key).await.unwrap();
    assert_eq!(got.meta.size, len);
    assert_eq!(
        digest(got.stream).await.unwrap(),
        digest(pattern_stream(len, 42)).await.unwrap()
    );
    let (blocks, ctype) = tokio::task::block_in_place(|| {
        (
            committed_blocks(&backend, &container, key),
            content_type(&backend, &container, key),
        )
    });
    assert_eq!(blocks, 4, "three full blocks and a short one");
    assert_eq!(ctype, "application/x-test");

    // A second create-only put of a multi-block body is refused at commit,
    // and the first content survives.
    let second = store
        .put(
            key,
            PutPayload::from_fn(move || pattern_stream(len, 43)),
            &options,
        )
        .await;
    assert!(
        matches!(second, Err(StoreError::AlreadyExists { .. })),
        "{second:?}"
    );
    let got = store.get(key).await.unwrap();
    assert_eq!(
        digest(got.stream).await.unwrap(),
        digest(pattern_stream(len, 42)).await.unwrap()
    );

    // An empty create-only put commits an empty block list, once.
    let empty = "db1/wal_005/00000002.history.lzo";
    store
        .put(
            empty,
            PutPayload::from_bytes(""),
            &PutOptions::create_only(),
        )
        .await
        .unwrap();
    assert_eq!(store.head(empty).await.unwrap().size, 0);
    let again = store
        .put(
            empty,
            PutPayload::from_bytes("x"),
            &PutOptions::create_only(),
        )
        .await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        "{again:?}"
    );

    // Data without a declared type is application/octet-stream, as WAL-E
    // stored it; small objects are one Put Blob.
    store
        .put(
            "db1/wal_005/000000010000000000000001.lzo",
            PutPayload::from_bytes("lzo"),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let ctype = tokio::task::block_in_place(|| {
        content_type(
            &backend,
            &container,
            "db1/wal_005/000000010000000000000001.lzo",
        )
    });
    assert_eq!(ctype, "application/octet-stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_missing_blob_is_not_found() {
    let backend = WabsBackend::with_key();
    let env = tokio::task::block_in_place(|| backend.fresh_prefix());

    // A container that does not exist.
    let missing = env.with("WALE_WABS_PREFIX", "wabs://no-such-container/db1");
    let (store, _) = tokio::task::block_in_place(|| missing.open());
    for result in [
        store.head("db1/wal_005/x.lzo").await.map(drop),
        store.get("db1/wal_005/x.lzo").await.map(drop),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, StoreError::Permanent { .. }),
            "a missing container is not a missing object: {err:?}"
        );
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    // A wrong key and an expired SAS are refused, never "not found".
    let wrong_key = env.with(
        "WABS_ACCESS_KEY",
        "AAAAvdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
    );
    let expired = env.without("WABS_ACCESS_KEY").with(
        "WABS_SAS_TOKEN",
        &account_sas(
            common::azurite::KEY,
            "rwdlac",
            chrono::Utc::now() - chrono::Duration::hours(1),
        ),
    );
    for bad in [wrong_key, expired] {
        let (store, _) = tokio::task::block_in_place(|| bad.open());
        let err = store.head("db1/wal_005/x.lzo").await.unwrap_err();
        assert!(matches!(err, StoreError::Permanent { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("refused"), "{text}");
        assert!(text.contains(ACCOUNT), "names the account: {text}");
        assert!(!text.contains("sig="), "no signature in errors: {text}");
    }
}
