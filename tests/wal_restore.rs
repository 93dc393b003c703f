//! What wal-fetch hands PostgreSQL is the archive's file and nothing else:
//! a prefetched copy is used only when it provably is the archive's object,
//! decoded output is bounded by what a WAL file can be, staging files of
//! killed commands do not pile up, and a missing file is an answer, not an
//! error. Through the real binary on a file:// store.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use common::cli::{FileStoreEnv, lzop_compress, stderr, wal_segment};
use common::store_fixture;

const SEG: usize = 16 << 20;

/// A file:// archive and a WAL directory to restore into.
struct Restore {
    store: FileStoreEnv,
    dir: tempfile::TempDir,
}

impl Restore {
    fn new() -> Self {
        let store = FileStoreEnv::new();
        std::fs::create_dir_all(store.root().join("wal_005")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pg_wal")).unwrap();
        Restore { store, dir }
    }

    fn pg_wal(&self) -> PathBuf {
        self.dir.path().join("pg_wal")
    }

    /// `%p`, as PostgreSQL passes it.
    fn target(&self) -> PathBuf {
        self.pg_wal().join("RECOVERYXLOG")
    }

    /// Stores `data` as the archive's object for `name`, compressed by the
    /// real lzop.
    fn archive(&self, name: &str, data: &[u8]) {
        std::fs::write(self.store.wal_object(name), lzop_compress(data)).unwrap();
    }

    /// The URL wal-fetch knows the object for `name` by.
    fn url(&self, name: &str) -> String {
        format!("{}/wal_005/{name}.lzo", self.store.prefix())
    }

    fn prefetch_dir(&self) -> PathBuf {
        self.pg_wal().join(".wal-e/prefetch")
    }

    fn prefetched(&self, name: &str) -> PathBuf {
        self.prefetch_dir().join(name)
    }

    fn record(&self, name: &str) -> PathBuf {
        self.prefetch_dir().join(format!("{name}.json"))
    }

    /// A copy in the prefetch directory, as an earlier recovery, another
    /// cluster or a damaged disk might have left it, with a record of its
    /// origin when one is given.
    fn plant(&self, name: &str, data: &[u8], record: Option<String>) {
        std::fs::create_dir_all(self.prefetch_dir()).unwrap();
        std::fs::write(self.prefetched(name), data).unwrap();
        match record {
            Some(json) => std::fs::write(self.record(name), json).unwrap(),
            None => {
                let _ = std::fs::remove_file(self.record(name));
            }
        }
    }

    /// Claims the prefetch of `name` as a running wal-fetch would, so that
    /// no background worker is started for it.
    fn hold_prefetch(&self, name: &str) {
        std::fs::create_dir_all(self.prefetch_dir().join("running").join(name)).unwrap();
    }

    fn fetch(&self, prefetch: u32, name: &str) -> Output {
        self.store.run(&[
            "wal-fetch",
            "--prefetch",
            &prefetch.to_string(),
            name,
            self.target().to_str().unwrap(),
        ])
    }

    fn prefetch(&self, name: &str) -> Output {
        self.store
            .run(&["wal-prefetch", self.pg_wal().to_str().unwrap(), name])
    }

    /// The files left in wal-fetch's staging directory.
    fn staged(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.pg_wal().join(".wal-e/tmp")) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// A prefetch record saying `data` was decoded from `url`.
fn record_json(url: &str, data: &[u8]) -> String {
    let sha256: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    serde_json::json!({"url": url, "size": data.len(), "sha256": sha256}).to_string()
}

/// Sets the modification time of `path` back by `by`.
fn age(path: &Path, by: Duration) {
    std::fs::File::open(path)
        .unwrap()
        .set_modified(SystemTime::now() - by)
        .unwrap();
}

#[test]
fn stale_prefetched_copies_are_discarded_and_the_archive_is_fetched() {
    let r = Restore::new();
    let name = "000000010000000000000010";
    let url = r.url(name);
    let archived = wal_segment(name, SEG, 1);
    r.archive(name, &archived);
    r.hold_prefetch("000000010000000000000011");

    let mut rotten = archived.clone();
    rotten[SEG / 2] ^= 0x10;
    let half = archived[..SEG / 2].to_vec();
    let other_cluster = wal_segment(name, SEG, 2);
    let other_timeline = wal_segment("000000020000000000000010", SEG, 3);
    let other_position = wal_segment("000000010000000000000020", SEG, 4);
    let elsewhere = "file://localhost/elsewhere/wal_005/000000010000000000000010.lzo";
    let cases = [
        (
            "bit rot",
            rotten,
            Some(record_json(&url, &archived)),
            "does not match the SHA-256",
        ),
        (
            "truncated",
            half.clone(),
            Some(record_json(&url, &half)),
            "segment size",
        ),
        (
            "another timeline",
            other_timeline.clone(),
            Some(record_json(&url, &other_timeline)),
            "timeline 2",
        ),
        (
            "another segment",
            other_position.clone(),
            Some(record_json(&url, &other_position)),
            "not at the start of",
        ),
        ("no record", other_cluster.clone(), None, "no record"),
        (
            "another prefix",
            other_cluster.clone(),
            Some(record_json(elsewhere, &other_cluster)),
            elsewhere,
        ),
    ];
    for (case, planted, record, why) in cases {
        r.plant(name, &planted, record);
        let out = r.fetch(1, name);
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{case}: {log}");
        assert!(
            std::fs::read(r.target()).unwrap() == archived,
            "{case}: %p holds the archive's bytes"
        );
        assert!(
            log.contains("WARNING") && log.contains("MSG: discarding a prefetched WAL file"),
            "{case}: {log}"
        );
        assert!(log.contains(why), "{case}: the reason is logged: {log}");
        assert!(!r.prefetched(name).exists(), "{case}: discarded");
        assert!(!r.record(name).exists(), "{case}: record discarded");
    }
    assert!(r.staged().is_empty(), "{:?}", r.staged());
}

#[test]
fn without_prefetch_the_prefetch_directory_is_ignored() {
    let r = Restore::new();
    let name = "000000010000000000000010";
    let archived = wal_segment(name, SEG, 1);
    r.archive(name, &archived);
    let other_cluster = wal_segment(name, SEG, 2);
    r.plant(name, &other_cluster, None);
    let out = r.fetch(0, name);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(std::fs::read(r.target()).unwrap() == archived);
    assert!(!log.contains("prefetched"), "{log}");
    assert!(
        std::fs::read(r.prefetched(name)).unwrap() == other_cluster,
        "left alone"
    );
}

#[test]
fn a_fresh_prefetch_replaces_a_stale_copy_and_is_used() {
    let r = Restore::new();
    let name = "000000010000000000000010";
    let archived = wal_segment(name, SEG, 1);
    r.archive(name, &archived);
    r.plant(name, &wal_segment(name, SEG, 2), None);

    let out = r.prefetch(name);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        std::fs::read(r.prefetched(name)).unwrap() == archived,
        "the stale copy was replaced"
    );
    assert!(r.record(name).is_file(), "with a record of its origin");
    assert!(!r.prefetch_dir().join("running").join(name).exists());

    // Promoted, not downloaded again: the archive no longer has it.
    std::fs::remove_file(r.store.wal_object(name)).unwrap();
    r.hold_prefetch("000000010000000000000011");
    let out = r.fetch(1, name);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(std::fs::read(r.target()).unwrap() == archived);
    assert!(!log.contains("WARNING"), "{log}");
    assert!(!r.prefetched(name).exists() && !r.record(name).exists());
}

#[test]
fn decoded_output_is_bounded_by_what_the_wal_file_can_be() {
    let r = Restore::new();
    // A 1 MiB segment by its first page, with 8 KiB more after it.
    let name = "000000010000000000000030";
    let mut oversized = wal_segment(name, 1 << 20, 5);
    oversized.extend_from_slice(&[0x5A; 8192]);
    r.archive(name, &oversized);
    let out = r.fetch(0, name);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(126), "{log}");
    assert!(
        log.contains("MSG: the archived WAL file is larger than it can be"),
        "{log}"
    );
    assert!(log.contains("more than 1048576 bytes"), "{log}");
    assert!(log.contains("HINT: "), "{log}");
    assert!(!r.target().exists());
    assert!(r.staged().is_empty(), "{:?}", r.staged());

    // A prefetch of it publishes nothing and leaves nothing behind.
    let out = r.prefetch(name);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!r.prefetched(name).exists());
    assert!(!r.prefetch_dir().join("running").join(name).exists());

    // A timeline history file is small: 16 MiB at most.
    let history = "00000003.history";
    r.archive(history, &vec![b'1'; (16 << 20) + 1]);
    let out = r.fetch(0, history);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(126), "{log}");
    assert!(log.contains("more than 16777216 bytes"), "{log}");
    assert!(!r.target().exists());
    assert!(r.staged().is_empty(), "{:?}", r.staged());
}

#[test]
fn staging_files_of_killed_commands_are_swept_after_an_hour() {
    let r = Restore::new();
    let staging = r.pg_wal().join(".wal-e/tmp");
    let running = r.prefetch_dir().join("running");
    let two_hours = Duration::from_secs(2 * 3600);
    let old = [
        staging.join("fetch.old"),
        running.join("000000010000000000000041/tmpold"),
        running.join("000000010000000000000042/tmprecord"),
    ];
    let fresh = [
        staging.join("fetch.fresh"),
        running.join("000000010000000000000043/tmpfresh"),
    ];
    for path in old.iter().chain(&fresh) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![7u8; 4096]).unwrap();
    }
    for path in &old {
        age(path, two_hours);
    }
    // A claim whose worker died before it wrote anything.
    let abandoned = running.join("000000010000000000000044");
    std::fs::create_dir_all(&abandoned).unwrap();
    age(&abandoned, two_hours);
    for dir in [&old[1], &old[2]] {
        age(dir.parent().unwrap(), two_hours);
    }

    let out = r.fetch(0, "000000010000000000000040");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    for path in &old {
        assert!(!path.exists(), "{} swept", path.display());
    }
    assert!(!abandoned.exists(), "the abandoned claim is released");
    assert!(
        !old[1].parent().unwrap().exists(),
        "and so is a claim emptied by the sweep"
    );
    for path in &fresh {
        assert!(path.exists(), "{} kept", path.display());
    }
}

#[test]
fn a_missing_file_is_logged_at_info_not_as_an_error() {
    let r = Restore::new();
    let out = r.fetch(0, "0000000100000000000000AA");
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("INFO") && log.contains("could not find WAL file"),
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn backup_fetch_clears_prefetched_files_in_the_restored_wal_directory() {
    let store = FileStoreEnv::new();
    let backup = "base_000000010000000000000002_00000040";
    // The backup: a data directory reduced to what backup-fetch checks.
    let source = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(source.path().join("global")).unwrap();
    std::fs::create_dir_all(source.path().join("pg_wal/archive_status")).unwrap();
    std::fs::write(source.path().join("PG_VERSION"), b"15\n").unwrap();
    std::fs::write(source.path().join("global/pg_control"), vec![0u8; 8192]).unwrap();
    let tar = Command::new("tar")
        .args(["-C", source.path().to_str().unwrap(), "-cf", "-", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    store_fixture::write(
        &store.root(),
        &format!("basebackups_005/{backup}/tar_partitions/part_00000000.tar.lzo"),
        &lzop_compress(&tar.stdout),
    );
    store_fixture::write(
        &store.root(),
        &format!("basebackups_005/{backup}_backup_stop_sentinel.json"),
        &store_fixture::sentinel_json("000000010000000000000002", "00000300", 8200),
    );

    // The target's pg_wal is a link to a reused WAL volume that still holds
    // an earlier recovery's prefetched segments.
    let scratch = tempfile::tempdir().unwrap();
    let volume = scratch.path().join("wal-volume");
    let prefetch = volume.join(".wal-e/prefetch");
    std::fs::create_dir_all(prefetch.join("running/000000010000000000000004")).unwrap();
    std::fs::write(prefetch.join("000000010000000000000003"), b"stale").unwrap();
    std::fs::write(prefetch.join("000000010000000000000003.json"), b"{}").unwrap();
    let target = scratch.path().join("restored");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&volume, target.join("pg_wal")).unwrap();

    let out = store.run(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(target.join("global/pg_control").is_file());
    assert!(!prefetch.exists(), "{} cleared", prefetch.display());
    assert!(volume.join("archive_status").is_dir(), "the volume is kept");
}
