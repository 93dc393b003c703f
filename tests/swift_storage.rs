//! The Swift store against a real OpenStack Swift (Debian's servers with
//! TempAuth, started by the harness): the storage conformance suite, WAL-E's
//! object names, Keystone v2.0/v3 catalog selection, re-authentication when
//! tokens expire, and how failures are classified.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use wal_e::storage::{
    PutOptions, PutPayload, RetryPolicy, RetryingStore, Store, StoreError, SwiftSettings,
    SwiftStore,
};

use common::backend::BackendEnv;
use common::conformance::{self, pattern_stream};
use common::swift::{Auth, Keystone, raw_listing, swift};

fn env_map(env: &BackendEnv) -> HashMap<String, String> {
    env.vars.iter().cloned().collect()
}

/// The store for an environment, without the retry layer.
fn store(env: &BackendEnv) -> SwiftStore {
    let vars = env_map(env);
    let prefix = vars["WALE_SWIFT_PREFIX"].clone();
    let container = prefix
        .trim_start_matches("swift://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    SwiftStore::new(SwiftSettings::from_env(&container, &vars).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swift_store_passes_the_conformance_suite() {
    let s = swift();
    let container = s.new_container();
    let env = s.env(Auth::V1, s.keystone(), &container, "");
    // Pages of 1000 names make the 2 600-key listing check page for real.
    let store = store(&env).with_listing_page_size(1000);
    let started = Instant::now();
    conformance::run_all(Arc::new(store), "/srv/db1/").await;
    eprintln!(
        "swift: conformance suite in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        raw_listing(&container)
            .iter()
            .all(|name| name.starts_with("/srv/db1/")),
        "every object name keeps WAL-E's leading slash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_without_bulk_delete_and_behind_the_retry_layer() {
    let s = swift();
    let container = s.new_container();
    // This proxy's /info does not offer bulk delete: single DELETEs.
    let env = BackendEnv::new([
        ("WALE_SWIFT_PREFIX", format!("swift://{container}/")),
        (
            "SWIFT_AUTHURL",
            format!("http://127.0.0.1:{}/auth/v1.0", s.nobulk_port),
        ),
        ("SWIFT_AUTH_VERSION", "1".into()),
        ("SWIFT_USER", "test:tester".into()),
        ("SWIFT_PASSWORD", "testing".into()),
    ]);
    let store: Arc<dyn Store> = Arc::new(RetryingStore::new(store(&env), RetryPolicy::none()));
    conformance::delete_many_is_idempotent(&*store, "/db1/").await;
    conformance::create_only_put_reports_already_exists(&*store, "/db1/").await;

    // Many keys at once: more than the deletes kept in flight.
    let keys: Vec<String> = (0..100).map(|i| format!("/db1/bulk/{i:03}")).collect();
    for key in &keys {
        store
            .put(key, PutPayload::from_bytes("x"), &PutOptions::default())
            .await
            .unwrap();
    }
    store.delete_many(&keys).await.unwrap();
    let left = raw_listing(&container);
    assert!(
        !left.is_empty() && left.iter().all(|k| !k.starts_with("/db1/bulk/")),
        "{left:?}"
    );
}

#[tokio::test]
async fn object_names_are_wal_e_names_quoted_for_urls() {
    let s = swift();
    let container = s.new_container();
    let store = store(&s.env(Auth::V1, s.keystone(), &container, "db1"));
    let keys = [
        "/db1/wal_005/000000010000000000000002.lzo",
        "/db1/odd name+with%escapes?and#marks/ü.lzo",
        "/db1//double-slash",
    ];
    for key in keys {
        store
            .put(
                key,
                PutPayload::from_bytes(key.to_string()),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        let body = store
            .get(key)
            .await
            .unwrap()
            .bytes(usize::MAX)
            .await
            .unwrap();
        assert_eq!(&body[..], key.as_bytes());
    }
    let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(
        raw_listing(&container),
        want,
        "stored under exactly these names"
    );
    let listed: Vec<String> = store
        .list("/db1/", None)
        .map_ok(|m| m.key)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed, want);
}

#[tokio::test]
async fn a_missing_container_is_never_not_found() {
    let s = swift();
    let store = store(&s.env(Auth::V1, s.keystone(), "no-such-container", "db1"));
    let key = "/db1/wal_005/000000010000000000000002.lzo";
    for err in [
        store.get(key).await.err().unwrap(),
        store.head(key).await.unwrap_err(),
        store
            .put(key, PutPayload::from_bytes("x"), &PutOptions::create_only())
            .await
            .unwrap_err(),
        store.list("/db1/", None).next().await.unwrap().unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::Permanent { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("container \"no-such-container\" does not exist"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn bad_credentials_and_unreachable_services_are_classified() {
    let s = swift();
    let container = s.new_container();
    let key = "/db1/x";
    let wrong = s
        .env(Auth::V1, s.keystone(), &container, "db1")
        .with("SWIFT_PASSWORD", "wrong");
    let err = store(&wrong).head(key).await.unwrap_err();
    assert!(matches!(err, StoreError::Permanent { .. }), "{err:?}");
    assert!(err.to_string().contains("401"), "{err}");
    assert!(!err.to_string().contains("wrong"), "no password in {err}");

    for auth in [Auth::V2, Auth::V3] {
        let wrong = s
            .env(auth, s.keystone(), &container, "db1")
            .with("SWIFT_PASSWORD", "wrong");
        let err = store(&wrong).head(key).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Permanent { .. }),
            "{auth:?}: {err:?}"
        );
        assert!(err.to_string().contains("check SWIFT_USER"), "{err}");
    }

    let closed = common::server::free_port();
    let gone = s.env(Auth::V1, s.keystone(), &container, "db1").with(
        "SWIFT_AUTHURL",
        &format!("http://127.0.0.1:{closed}/auth/v1.0"),
    );
    let err = store(&gone).get(key).await.err().unwrap();
    assert!(err.is_transient(), "{err:?}");
}

/// The catalog offers the real proxy only at RegionOne/public and
/// RegionTwo/internal; the other endpoints answer 403.
#[tokio::test]
async fn keystone_catalogs_are_searched_by_region_and_interface() {
    let s = swift();
    let container = s.new_container();
    let key = "/db1/wal_005/000000010000000000000003.lzo";
    for auth in [Auth::V2, Auth::V3] {
        let base = s.env(auth, s.keystone(), &container, "db1");
        let cases: [(&[(&str, &str)], bool); 6] = [
            (&[], true),
            (&[("SWIFT_REGION", "RegionOne")], true),
            (
                &[
                    ("SWIFT_REGION", "RegionTwo"),
                    ("SWIFT_ENDPOINT_TYPE", "internalURL"),
                ],
                true,
            ),
            (&[("SWIFT_ENDPOINT_TYPE", "internalURL")], false),
            (&[("SWIFT_REGION", "RegionTwo")], false),
            (
                &[
                    ("SWIFT_REGION", "RegionOne"),
                    ("SWIFT_ENDPOINT_TYPE", "adminURL"),
                ],
                false,
            ),
        ];
        for (vars, works) in cases {
            let env = vars.iter().fold(base.clone(), |e, (k, v)| e.with(k, v));
            let store = store(&env);
            if works {
                store
                    .put(key, PutPayload::from_bytes("seg"), &PutOptions::default())
                    .await
                    .unwrap_or_else(|e| panic!("{auth:?} {vars:?}: {e}"));
                assert_eq!(store.head(key).await.unwrap().size, 3);
            } else {
                let err = store.head(key).await.unwrap_err();
                assert!(
                    err.to_string().contains("403 Forbidden"),
                    "{auth:?} {vars:?}: the wrong endpoint was not used: {err}"
                );
            }
        }
        let nowhere = base.with("SWIFT_REGION", "RegionNowhere");
        let err = store(&nowhere).head(key).await.unwrap_err();
        assert!(matches!(err, StoreError::Permanent { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("no object-store endpoint with interface public in region RegionNowhere"),
            "{err}"
        );
    }
    // The project and user named by ids, the user's tenant in SWIFT_USER.
    let by_ids = s
        .env(Auth::V3, s.keystone(), &container, "db1")
        .without("SWIFT_USER")
        .without("SWIFT_PROJECT_NAME")
        .with("SWIFT_USER_ID", "tester")
        .with("SWIFT_PROJECT_ID", "test");
    assert_eq!(store(&by_ids).head(key).await.unwrap().size, 3);
    let colon = s
        .env(Auth::V2, s.keystone(), &container, "db1")
        .without("SWIFT_TENANT")
        .with("SWIFT_USER", "test:tester");
    assert_eq!(store(&colon).head(key).await.unwrap().size, 3);
}

/// Tokens expire (here: TempAuth forgets them all); the next requests get
/// 401, log in again exactly once between them, and succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_is_renewed_once_for_concurrent_requests() {
    let s = swift();
    let container = s.new_container();
    for auth in [Auth::V2, Auth::V3, Auth::V1] {
        // A Keystone of its own, so that its token count is this test's.
        let keystone = Keystone::start(&s.tempauth_url());
        let env = s.env(auth, &keystone, &container, "db1");
        let store = Arc::new(store(&env));
        let keys: Vec<String> = (0..8).map(|i| format!("/db1/reauth/{i}")).collect();
        for key in &keys {
            store
                .put(key, PutPayload::from_bytes("x"), &PutOptions::default())
                .await
                .unwrap();
        }
        let before = keystone.tokens_issued();
        s.expire_all_tokens();
        let sizes: Vec<u64> = stream::iter(keys.clone())
            .map(|key| {
                let store = store.clone();
                async move { store.head(&key).await.map(|m| m.size) }
            })
            .buffer_unordered(8)
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("{auth:?}: {e}"));
        assert_eq!(sizes, vec![1; 8]);
        // Uploads renew too (the body is produced again).
        s.expire_all_tokens();
        store
            .put(
                &keys[0],
                PutPayload::from_fn(|| pattern_stream(1 << 20, 7)),
                &PutOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{auth:?}: {e}"));
        assert_eq!(store.head(&keys[0]).await.unwrap().size, 1 << 20);
        if auth != Auth::V1 {
            assert_eq!(
                keystone.tokens_issued(),
                before + 2,
                "{auth:?}: one login per expiry"
            );
        }
    }
}
