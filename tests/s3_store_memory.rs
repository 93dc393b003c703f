//! Memory stays bounded when a 256 MiB object goes through the s3:// store
//! (a multipart upload of 8 MiB parts, a streamed GET), and the throughput
//! beside the file store in the same run is printed. Alone in its own test
//! binary so no other test disturbs the measurement. The S3 server (s3s-fs)
//! runs in this process too, so its memory is counted as well.

mod common;

use std::time::Instant;

use common::backend::TestBackend;
use common::conformance::{digest, pattern_stream};
use common::s3::{S3Backend, open_store};
use wal_e::storage::{FileStore, PutOptions, PutPayload, Store};

const LEN: u64 = 256 * 1024 * 1024;

/// Seconds to upload and to download LEN bytes.
async fn round_trip(store: &dyn Store, key: &str) -> (f64, f64) {
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
    let got = store.get(key).await.unwrap();
    let (len, adler) = digest(got.stream).await.unwrap();
    assert_eq!((len, adler), digest(pattern_stream(LEN, 7)).await.unwrap());
    (up, started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_round_trip_uses_bounded_memory() {
    let store = open_store(&S3Backend::new().fresh_prefix()).await;
    // Warm up the runtime, the connection pool and the allocator first.
    store
        .put(
            "db1/warm",
            PutPayload::from_fn(|| pattern_stream(40 << 20, 1)),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let (_, _) = digest(store.get("db1/warm").await.unwrap().stream)
        .await
        .unwrap();
    let before = common::peak_rss_kb();
    let (s3_up, s3_down) = round_trip(&*store, "db1/big").await;
    let growth_mib = (common::peak_rss_kb().saturating_sub(before)) / 1024;

    let dir = tempfile::tempdir().unwrap();
    let file = FileStore::new(dir.path(), dir.path());
    let (file_up, file_down) = round_trip(&file, "big").await;
    let mib = (LEN >> 20) as f64;
    eprintln!(
        "256 MiB: s3 (s3s-fs) up {:.0} MiB/s, down {:.0} MiB/s; file up {:.0} MiB/s, down {:.0} MiB/s; \
         s3/file upload ratio {:.2}, download ratio {:.2}; peak RSS growth {growth_mib} MiB",
        mib / s3_up,
        mib / s3_down,
        mib / file_up,
        mib / file_down,
        file_up / s3_up,
        file_down / s3_down,
    );
    assert!(
        growth_mib < 64,
        "peak RSS grew by {growth_mib} MiB for a 256 MiB object"
    );
}
