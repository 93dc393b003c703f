//! A 256 MiB object through a store: peak memory must stay bounded (the
//! upload and the download stream), and the throughput beside the file store
//! in the same run is printed as a ratio. Each backend calls this from a test
//! binary of its own, so that no other test disturbs the measurement.

use std::time::Instant;

use wal_e::storage::{FileStore, PutOptions, PutPayload, Store};

use super::conformance::{digest, pattern_stream};

const LEN: u64 = 256 * 1024 * 1024;
/// Peak RSS may grow by less than this while the object goes up and down.
const MAX_GROWTH_MIB: u64 = 64;

/// Seconds to upload and to download LEN bytes, content checked.
async fn timed_round_trip(store: &dyn Store, key: &str) -> (f64, f64) {
    let started = Instant::now();
    store
        .put(
            key,
            PutPayload::from_fn(|| pattern_stream(LEN, 7)),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let up = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let got = digest(store.get(key).await.unwrap().stream).await.unwrap();
    let down = started.elapsed().as_secs_f64();
    assert_eq!(got, digest(pattern_stream(LEN, 7)).await.unwrap(), "{key}");
    (up, down)
}

/// Runs the round trip on `store` under the key prefix `base` (ending in
/// `/`); `what` names the store in the printed line.
pub async fn bounded_memory_round_trip(store: &dyn Store, base: &str, what: &str) {
    // Warm up the runtime, the connection pool and the allocator first, with
    // an object above every backend's single-request size.
    let warm = format!("{base}warm");
    store
        .put(
            &warm,
            PutPayload::from_fn(|| pattern_stream(40 << 20, 1)),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    digest(store.get(&warm).await.unwrap().stream)
        .await
        .unwrap();

    let before = super::peak_rss_kb();
    let (up, down) = timed_round_trip(store, &format!("{base}big")).await;
    let growth_mib = super::peak_rss_kb().saturating_sub(before) / 1024;

    let dir = tempfile::tempdir().unwrap();
    let file = FileStore::new(dir.path(), dir.path());
    let (file_up, file_down) = timed_round_trip(&file, "big").await;
    let mib = (LEN >> 20) as f64;
    eprintln!(
        "256 MiB: {what} up {:.0} MiB/s, down {:.0} MiB/s; file up {:.0} MiB/s, down {:.0} MiB/s; \
         {what}/file upload ratio {:.2}, download ratio {:.2}; peak RSS growth {growth_mib} MiB",
        mib / up,
        mib / down,
        mib / file_up,
        mib / file_down,
        file_up / up,
        file_down / down,
    );
    assert!(
        growth_mib < MAX_GROWTH_MIB,
        "{what}: peak RSS grew by {growth_mib} MiB for a 256 MiB object"
    );
}
