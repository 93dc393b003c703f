//! wal-push and wal-fetch through the real binary on a file:// store, with a
//! WAL directory laid out as PostgreSQL's (pg_wal + archive_status).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cli::{FileStoreEnv, WalDir, fake_segment, lzop_decompress, stderr, wal_segment};

const SEG: usize = 16 * 1024 * 1024;

fn push(store: &FileStoreEnv, path: &Path) -> std::process::Output {
    store.run(&["wal-push", path.to_str().unwrap()])
}

#[test]
fn pushed_segments_are_lzop_streams_at_wal_e_keys() {
    let store = FileStoreEnv::new();
    let wal = WalDir::new();
    let data = fake_segment(SEG, 1);
    let path = wal.add("000000010000000000000002", &data, true);
    let out = push(&store, &path);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let object = store.wal_object("000000010000000000000002");
    assert_eq!(
        lzop_decompress(&object),
        data,
        "the real lzop reads it back"
    );
    assert!(
        std::fs::metadata(&object).unwrap().len() < data.len() as u64 / 2,
        "it is compressed"
    );
    // The explicit segment's status is PostgreSQL's business.
    assert!(wal.status("000000010000000000000002", "ready").exists());
    let log = stderr(&out);
    assert!(log.contains("MSG: completed archiving to a file"), "{log}");
    assert!(
        log.contains("action=push-wal")
            && log.contains("state=complete")
            && log.contains("seg=000000010000000000000002"),
        "{log}"
    );
    assert!(
        !log.contains("starting WAL-E"),
        "wal-push skips the start-up line"
    );
}

#[test]
fn identical_repush_succeeds_and_different_content_fails_without_overwriting() {
    let store = FileStoreEnv::new();
    let wal = WalDir::new();
    let name = "000000010000000000000003";
    let path = wal.add(name, &fake_segment(SEG, 2), false);
    assert_eq!(push(&store, &path).status.code(), Some(0));
    let stored = std::fs::read(store.wal_object(name)).unwrap();

    let again = push(&store, &path);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(stderr(&again).contains("already archived with the same content"));

    std::fs::write(&path, fake_segment(SEG, 3)).unwrap();
    let conflict = push(&store, &path);
    let log = stderr(&conflict);
    assert_eq!(conflict.status.code(), Some(1), "{log}");
    assert!(
        log.contains(
            "MSG: WAL file 000000010000000000000003 is already archived with different content"
        ),
        "{log}"
    );
    assert!(
        log.contains("HINT: Two servers may be archiving to the same prefix"),
        "{log}"
    );
    assert_eq!(
        std::fs::read(store.wal_object(name)).unwrap(),
        stored,
        "the archived copy is untouched"
    );

    // A truncated local copy is different content too.
    std::fs::write(&path, &fake_segment(SEG, 2)[..SEG / 2]).unwrap();
    assert_eq!(push(&store, &path).status.code(), Some(1));
}

#[test]
fn history_backup_and_partial_files_round_trip_under_their_names() {
    let store = FileStoreEnv::new();
    let wal = WalDir::new();
    let dest = tempfile::tempdir().unwrap();
    let files = [
        (
            "00000002.history",
            b"1\t0/3000000\tno recovery target specified\n".to_vec(),
        ),
        (
            "000000010000000000000004.00000028.backup",
            b"START WAL LOCATION: 0/4000028\n".to_vec(),
        ),
        ("000000010000000000000005.partial", fake_segment(SEG, 4)),
    ];
    for (name, data) in &files {
        let path = wal.add(name, data, false);
        let out = push(&store, &path);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        assert!(
            store.wal_object(name).is_file(),
            "{name} stored as {name}.lzo"
        );
        let target = dest.path().join("RECOVERYXLOG");
        let out = store.run(&["wal-fetch", name, target.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        assert_eq!(&std::fs::read(&target).unwrap(), data, "{name}");
    }
    // A timeline history file is never overwritten with other content.
    let path = wal.add("00000002.history", b"1\t0/4000000\tother\n", false);
    assert_eq!(push(&store, &path).status.code(), Some(1));
    assert_eq!(
        lzop_decompress(&store.wal_object("00000002.history")),
        files[0].1
    );
}

#[test]
fn pooled_ready_segments_are_pushed_and_marked_done() {
    let store = FileStoreEnv::new();
    let wal = WalDir::new();
    let names: Vec<String> = (0x10..0x16)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    for (i, name) in names.iter().enumerate() {
        wal.add(name, &fake_segment(1 << 20, i as u64), true);
    }
    // Status files PostgreSQL also keeps there, which must not be pooled.
    std::fs::write(wal.status("00000002.history", "ready"), b"").unwrap();
    std::fs::write(wal.status("000000010000000000000009", "done"), b"").unwrap();
    // A pooled segment whose file vanished.
    std::fs::write(wal.status("000000010000000000000008", "ready"), b"").unwrap();

    let explicit = wal.pg_wal.join(&names[2]);
    let out = store.run(&["wal-push", "--pool-size", "5", explicit.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Pool of 5: the explicit one plus the first 4 sorted .ready segments
    // (the vanished one among them is skipped).
    assert!(
        wal.status(&names[2], "ready").exists(),
        "explicit segment untouched"
    );
    assert!(store.wal_object(&names[2]).exists());
    for name in &names[0..2] {
        assert!(store.wal_object(name).exists(), "{name} pooled");
        assert!(
            wal.status(name, "done").exists() && !wal.status(name, "ready").exists(),
            "{name} marked done"
        );
    }
    assert!(store.wal_object(&names[3]).exists());
    assert!(wal.status(&names[3], "done").exists());
    for name in &names[4..] {
        assert!(!store.wal_object(name).exists(), "{name} beyond the pool");
        assert!(wal.status(name, "ready").exists());
    }
    assert!(!store.wal_object("000000010000000000000008").exists());
    assert!(
        wal.status("00000002.history", "ready").exists(),
        "history files are never pooled"
    );
    assert!(
        stderr(&out).contains("state=skip"),
        "the vanished segment is logged as skipped"
    );
}

#[test]
fn an_unreadable_archive_status_still_archives_the_named_segment() {
    let store = FileStoreEnv::new();
    let wal = WalDir::new();
    let name = "000000010000000000000021";
    let path = wal.add(name, &fake_segment(1 << 20, 21), false);
    // Root ignores permissions: a regular file in its place makes reading
    // the directory fail (ENOTDIR).
    let status_dir = wal.pg_wal.join("archive_status");
    std::fs::remove_dir_all(&status_dir).unwrap();
    std::fs::write(&status_dir, b"").unwrap();

    let out = store.run(&["wal-push", "--pool-size", "4", path.to_str().unwrap()]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(store.wal_object(name).is_file(), "{log}");
    assert!(
        log.contains("WARNING  MSG: could not read the archive status directory"),
        "{log}"
    );
    assert!(log.contains(status_dir.to_str().unwrap()), "{log}");
}

#[test]
fn missing_explicit_file_fails_with_exit_1() {
    let store = FileStoreEnv::new();
    let wal = WalDir::new();
    let out = push(&store, &wal.pg_wal.join("000000010000000000000077"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("MSG: could not find file for wal-push"));
}

#[test]
fn fetching_a_missing_segment_exits_1_and_writes_nothing() {
    let store = FileStoreEnv::new();
    std::fs::create_dir(store.root().join("wal_005")).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let target = dest.path().join("RECOVERYXLOG");
    let out = store.run(&[
        "wal-fetch",
        "0000000100000000000000AA",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!target.exists());
}

#[test]
fn a_missing_store_directory_is_not_an_empty_archive() {
    // An unmounted NFS share: the prefix directory itself is absent. That is
    // not "no such WAL file" (which would end recovery), it is 126.
    let empty = FileStoreEnv::without_store_dir();
    let dest = tempfile::tempdir().unwrap();
    let target = dest.path().join("RECOVERYXLOG");
    let out = empty.run(&[
        "wal-fetch",
        "0000000100000000000000AA",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("or is the share mounted?"),
        "{}",
        stderr(&out)
    );
    assert!(!target.exists());
    assert!(!empty.root().exists());
}

#[test]
fn a_prefix_without_wal_005_is_not_an_empty_archive() {
    // An empty mount point named as the prefix, or the wrong directory.
    let store = FileStoreEnv::new();
    let dest = tempfile::tempdir().unwrap();
    let target = dest.path().join("RECOVERYXLOG");
    let out = store.run(&[
        "wal-fetch",
        "--prefetch",
        "0",
        "0000000100000000000000AA",
        target.to_str().unwrap(),
    ]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(126), "{log}");
    let wal_dir = store.root().join("wal_005");
    assert!(
        log.contains(&format!(
            "the directory {} does not exist (is the file system mounted?)",
            wal_dir.display()
        )),
        "{log}"
    );
    assert!(!target.exists());
    assert!(!wal_dir.exists(), "wal-fetch creates nothing in the store");
}

#[test]
fn a_directory_where_a_wal_object_should_be_is_a_damaged_store() {
    let store = FileStoreEnv::new();
    let name = "0000000100000000000000AA";
    std::fs::create_dir_all(store.wal_object(name)).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let target = dest.path().join("RECOVERYXLOG");
    let out = store.run(&[
        "wal-fetch",
        "--prefetch",
        "0",
        name,
        target.to_str().unwrap(),
    ]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(126), "{log}");
    assert!(
        log.contains("is not a regular file: the store is damaged"),
        "{log}"
    );
    assert!(!target.exists());
}

#[test]
fn wal_push_to_a_missing_store_directory_fails_and_writes_nothing() {
    let store = FileStoreEnv::without_store_dir();
    let wal = WalDir::new();
    let path = wal.add("000000010000000000000031", &fake_segment(1 << 20, 31), true);
    let out = push(&store, &path);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("MSG: the storage directory is not available"),
        "{log}"
    );
    assert!(
        log.contains(&format!("DETAIL: {}", store.root().display())),
        "{log}"
    );
    assert!(
        log.contains("HINT: Create it") && log.contains("or is the share mounted?"),
        "{log}"
    );
    assert!(
        !store.root().exists(),
        "no directory is created where the share should be"
    );
}

#[test]
fn wal_fetch_never_exits_below_126_except_for_a_missing_file() {
    let store = FileStoreEnv::new();
    let dest = tempfile::tempdir().unwrap();
    let target = dest.path().join("RECOVERYXLOG");
    let target = target.to_str().unwrap();
    let seg = "0000000100000000000000AA";
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "no prefix",
            vec!["wal-fetch", seg, target],
            vec![("WALE_FILE_PREFIX", "")],
        ),
        (
            "bad WALE_RETRIES",
            vec!["wal-fetch", seg, target],
            vec![("WALE_RETRIES", "lots")],
        ),
        ("missing %p", vec!["wal-fetch", seg], vec![]),
        (
            "unknown option",
            vec!["wal-fetch", "--bogus", seg, target],
            vec![],
        ),
        (
            "backend not available",
            vec!["wal-fetch", seg, target],
            vec![
                ("WALE_FILE_PREFIX", ""),
                ("WALE_SWIFT_PREFIX", "swift://c/p"),
            ],
        ),
    ];
    for (name, args, env) in cases {
        let out = store.command(&args).envs(env).output().unwrap();
        assert_eq!(out.status.code(), Some(126), "{name}: {}", stderr(&out));
        assert!(!std::path::Path::new(target).exists(), "{name}");
    }
}

#[test]
fn a_store_that_cannot_answer_makes_wal_fetch_exit_126() {
    let store = FileStoreEnv::new();
    // wal_005 is a file: every lookup under it fails with ENOTDIR, which is
    // not "does not exist".
    std::fs::write(store.root().join("wal_005"), b"not a directory").unwrap();
    let dest = tempfile::tempdir().unwrap();
    let target = dest.path().join("RECOVERYXLOG");
    let out = store.run(&[
        "wal-fetch",
        "0000000100000000000000AA",
        target.to_str().unwrap(),
    ]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(126), "{log}");
    assert!(log.contains("MSG: could not restore WAL file"), "{log}");
    assert!(!target.exists());
}

#[test]
fn corrupt_archived_object_is_an_error_not_a_partial_file() {
    let store = FileStoreEnv::new();
    let wal = WalDir::new();
    let name = "0000000100000000000000AB";
    let path = wal.add(name, &fake_segment(SEG, 9), false);
    assert_eq!(push(&store, &path).status.code(), Some(0));
    let object = store.wal_object(name);
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&object, bytes).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let target = dest.path().join("RECOVERYXLOG");
    let out = store.run(&[
        "wal-fetch",
        "--prefetch",
        "0",
        name,
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(!target.exists());
}

#[test]
fn killing_wal_fetch_midway_leaves_no_file_at_the_destination() {
    let store = FileStoreEnv::new();
    let wal = WalDir::new();
    let name = "0000000100000000000000AC";
    // 1 GiB of zeros compresses to a few MiB but takes a while to write out.
    let big = wal.pg_wal.join(name);
    {
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(1 << 30).unwrap();
    }
    assert_eq!(push(&store, &big).status.code(), Some(0));
    std::fs::remove_file(&big).unwrap();

    let dest = tempfile::tempdir().unwrap();
    let target = dest.path().join("RECOVERYXLOG");
    let staging = dest.path().join(".wal-e").join("tmp");
    let mut child = store
        .command(&[
            "wal-fetch",
            "--prefetch",
            "0",
            name,
            target.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until the download is visibly under way, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let staged: u64 = std::fs::read_dir(&staging)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if staged > 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "wal-fetch finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "download never started");
        std::thread::yield_now();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!target.exists(), "no partial file at %p after kill -9");
}

#[test]
fn prefetch_downloads_following_segments_in_the_background() {
    let store = FileStoreEnv::new();
    let wal = WalDir::new();
    let names: Vec<String> = (0xF0..0xF4)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    let datas: Vec<Vec<u8>> = names
        .iter()
        .zip(20..)
        .map(|(name, seed)| wal_segment(name, SEG, seed))
        .collect();
    for (name, data) in names.iter().zip(&datas) {
        let p = wal.add(name, data, false);
        assert_eq!(push(&store, &p).status.code(), Some(0));
    }
    let restore = tempfile::tempdir().unwrap();
    let pg_wal = restore.path().join("pg_wal");
    let prefetch = pg_wal.join(".wal-e/prefetch");
    // A copy left by an earlier recovery, without a record: replaced.
    std::fs::create_dir_all(&prefetch).unwrap();
    std::fs::write(prefetch.join(&names[2]), wal_segment(&names[2], SEG, 99)).unwrap();
    let target = pg_wal.join("RECOVERYXLOG");
    let out = store.run(&[
        "wal-fetch",
        "--prefetch",
        "2",
        &names[0],
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(&target).unwrap(), datas[0]);

    // The next two segments appear, complete, in .wal-e/prefetch, each
    // with its record, published after it.
    let prefetched: Vec<PathBuf> = names[1..3].iter().map(|n| prefetch.join(n)).collect();
    let records: Vec<PathBuf> = names[1..3]
        .iter()
        .map(|n| prefetch.join(format!("{n}.json")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !records.iter().all(|p| p.exists()) {
        assert!(Instant::now() < deadline, "prefetch did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::fs::read(&prefetched[0]).unwrap() == datas[1],
        "a prefetched file is complete"
    );
    assert!(
        std::fs::read(&prefetched[1]).unwrap() == datas[2],
        "the stale copy was replaced"
    );
    assert!(
        !prefetch.join(&names[3]).exists(),
        "only --prefetch segments ahead"
    );

    // The next wal-fetch promotes it by rename: the archive's copy is not
    // needed.
    std::fs::remove_file(store.wal_object(&names[1])).unwrap();
    let out = store.run(&[
        "wal-fetch",
        "--prefetch",
        "1",
        &names[1],
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("WARNING"), "{}", stderr(&out));
    assert!(std::fs::read(&target).unwrap() == datas[1]);
    assert!(!prefetched[0].exists(), "promoted, not copied");
    assert!(!records[0].exists(), "its record is gone with it");

    // A prefetch of a missing segment leaves nothing behind.
    let missing = "000000010000000000000100";
    let out = store.run(&["wal-prefetch", pg_wal.to_str().unwrap(), missing]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!pg_wal.join(".wal-e/prefetch").join(missing).exists());
    assert!(
        !pg_wal
            .join(".wal-e/prefetch/running")
            .join(missing)
            .exists()
    );
}
