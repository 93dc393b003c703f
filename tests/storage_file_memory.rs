//! Memory stays bounded when a 64 MiB object goes through the file store.
//! Alone in its own test binary so no other test disturbs the measurement.

mod common;

use wal_e::storage::{FileStore, PutOptions, PutPayload, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_round_trip_uses_bounded_memory() {
    const LEN: u64 = 64 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path(), dir.path());
    // Warm up the runtime and allocator with a small object first.
    store
        .put(
            "warm",
            PutPayload::from_bytes(vec![0u8; 1 << 20]),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let before = common::peak_rss_kb();
    store
        .put(
            "big",
            PutPayload::from_fn(|| common::conformance::pattern_stream(LEN, 7)),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let got = store.get("big").await.unwrap();
    let (len, _) = common::conformance::digest(got.stream).await.unwrap();
    assert_eq!(len, LEN);
    let growth_mib = (common::peak_rss_kb().saturating_sub(before)) / 1024;
    assert!(
        growth_mib < 16,
        "peak RSS grew by {growth_mib} MiB for a 64 MiB object"
    );
}
