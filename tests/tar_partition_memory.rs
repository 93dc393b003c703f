//! Streaming a 200 MiB file into a tar partition keeps memory bounded.
//! Alone in its own test binary so no other test disturbs the measurement.

mod common;

use futures_util::stream::StreamExt;
use wal_e::tar_partition::{Member, MemberKind, Partition, write_partition};

fn file_member(name: &str, source: std::path::PathBuf, size: u64) -> Member {
    Member {
        name: name.into(),
        source: Some(source),
        kind: MemberKind::File { size },
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime: 0,
    }
}

async fn drain(partition: Partition) -> (u64, bool) {
    let mut s = write_partition(partition, None);
    let mut len = 0u64;
    let mut last = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.unwrap();
        len += chunk.len() as u64;
        last = chunk.to_vec();
    }
    (len, last.ends_with(&[0u8; 1024]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_streams_in_bounded_memory() {
    const LEN: u64 = 200 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    // Sparse: the test costs no disk, the reads still go through 200 MiB.
    let big = dir.path().join("big");
    std::fs::File::create(&big).unwrap().set_len(LEN).unwrap();
    let small = dir.path().join("small");
    std::fs::write(&small, vec![1u8; 1 << 20]).unwrap();
    // Warm up the runtime, the blocking pool and the allocator first.
    let warm = Partition {
        number: 0,
        members: vec![file_member("small", small, 1 << 20)],
    };
    drain(warm).await;
    let before = common::peak_rss_kb();
    let partition = Partition {
        number: 1,
        members: vec![file_member("big", big, LEN)],
    };
    let (len, zero_end) = drain(partition).await;
    // One header, the data, the end blocks, padded to a 10240-byte record.
    assert_eq!(len, (512 + LEN + 1024).div_ceil(10240) * 10240);
    assert!(zero_end);
    let growth_mib = common::peak_rss_kb().saturating_sub(before) / 1024;
    eprintln!("peak RSS growth: {growth_mib} MiB (before: {before} kB)");
    assert!(
        growth_mib < 8,
        "peak RSS grew by {growth_mib} MiB streaming a 200 MiB file"
    );
}
