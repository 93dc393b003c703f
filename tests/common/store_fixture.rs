//! A file:// store in WAL-E's layout, written directly (no backup-push):
//! three complete backups on two timelines, incomplete uploads, WAL, backup
//! and timeline history files, keys WAL-E never writes, old-version data
//! and files that are not WAL-E's at all. Sentinel times are fixed so that
//! listings are byte-for-byte reproducible.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wal_e::layout::{RestoreSpec, Sentinel};

pub const B1: &str = "base_000000010000000000000002_00000040";
pub const B2: &str = "base_000000010000000000000005_00000096";
pub const B3: &str = "base_000000020000000000000009_00000040";
/// An upload that never finished, older than every complete backup.
pub const ORPHAN: &str = "base_000000010000000000000001_00000040";
/// When ORPHAN was last written: long ago, so retention may delete it.
pub const ORPHAN_TIME: &str = "2026-11-19T00:00:00.000000";
/// A backup-push still running: newer than every complete backup.
pub const IN_PROGRESS: &str = "base_00000002000000000000000B_00000040";

/// Sentinel modification times (UTC). B2's is the newest, although B3
/// starts later in the WAL: LATEST follows the time, retain the position.
pub const B1_TIME: &str = "2026-11-20T01:00:00.000000";
pub const B2_TIME: &str = "2026-11-23T19:48:32.734649";
pub const B3_TIME: &str = "2026-11-22T12:00:00.500000";

pub const SENTINEL_SUFFIX: &str = "_backup_stop_sentinel.json";

/// Keys (relative to the store root) that are not WAL-E names under its
/// directories: `delete before/retain` must warn about them and keep them.
pub const STRAYS: [&str; 3] = [
    "basebackups_005/notes.txt",
    "wal_005/README.txt",
    "wal_005/000000010000000000000009.partial.lzo",
];

/// Data under WAL-E 0.x directories: only `delete old-versions` removes it.
pub const OLD_VERSION_KEYS: [&str; 4] = [
    "basebackups_004/base_000000010000000000000001_00000000_backup_stop_sentinel.json",
    "basebackups_004/base_000000010000000000000001_00000000/tar_partitions/part_00000000.tar.lzo",
    "wal_004/000000010000000000000001.lzo",
    "wal_000/000000010000000000000001.lzo",
];

/// Objects under the prefix that no command may delete.
pub const FOREIGN_KEYS: [&str; 2] = ["other/keepme.txt", "basebackups_0050/x"];

pub fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
}

/// `2026-11-23T19:48:32.734649` (UTC) as a file time.
pub fn system_time(utc: &str) -> SystemTime {
    let t = chrono::NaiveDateTime::parse_from_str(utc, "%Y-%m-%dT%H:%M:%S%.f")
        .unwrap()
        .and_utc();
    UNIX_EPOCH + Duration::from_micros(t.timestamp_micros() as u64)
}

pub fn set_mtime(path: &Path, utc: &str) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(system_time(utc))
        .unwrap();
}

pub fn sentinel_json(stop: &str, stop_offset: &str, size: u64) -> Vec<u8> {
    Sentinel {
        wal_segment_backup_stop: stop.into(),
        wal_segment_offset_backup_stop: stop_offset.into(),
        expanded_size_bytes: size,
        spec: RestoreSpec {
            base_prefix: "/var/lib/postgresql/15/main/".into(),
            tablespaces: Vec::new(),
            locations: Vec::new(),
        },
        partition_count: None,
    }
    .to_wal_e_json()
}

/// The objects of a backup without its sentinel: version file and partitions.
pub fn backup_data_keys(name: &str, partitions: u32) -> Vec<String> {
    let mut keys = vec![format!("basebackups_005/{name}/extended_version.txt")];
    keys.extend(
        (0..partitions)
            .map(|n| format!("basebackups_005/{name}/tar_partitions/part_{n:08}.tar.lzo")),
    );
    keys
}

pub fn sentinel_key(name: &str) -> String {
    format!("basebackups_005/{name}{SENTINEL_SUFFIX}")
}

/// Every key of a complete backup, sentinel first.
pub fn backup_keys(name: &str, partitions: u32) -> Vec<String> {
    let mut keys = vec![sentinel_key(name)];
    keys.extend(backup_data_keys(name, partitions));
    keys
}

pub fn wal(timeline: u32, seg: u32) -> String {
    format!("wal_005/{timeline:08X}00000000{seg:08X}.lzo")
}

pub fn backup_history(timeline: u32, seg: u32, offset: u32) -> String {
    format!("wal_005/{timeline:08X}00000000{seg:08X}.{offset:08X}.backup.lzo")
}

pub const TIMELINE_HISTORY: &str = "wal_005/00000002.history.lzo";

/// Timeline 2 left timeline 1 in segment 4, between B1's start and B2's,
/// as after a point-in-time restore from B1: B2 cannot reach it, B3 (taken
/// on it) and B1 can.
pub const TIMELINE_2_HISTORY: &str = "1\t0/4000100\tbefore 2026-11-21 00:00:00+00\n";

/// `data` compressed by the real `lzop`, as WAL-E stores WAL.
pub fn lzop(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("lzop")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run lzop");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// The start of a 16 MiB WAL segment: its first page's long header
/// (`XLP_LONG_HEADER`, timeline, page address, segment and block size).
pub fn wal_page_header(timeline: u32, seg: u32) -> Vec<u8> {
    let mut page = vec![0u8; 64];
    page[0..2].copy_from_slice(&0xD110u16.to_ne_bytes());
    page[2..4].copy_from_slice(&0x0002u16.to_ne_bytes());
    page[4..8].copy_from_slice(&timeline.to_ne_bytes());
    page[8..16].copy_from_slice(&(u64::from(seg) << 24).to_ne_bytes());
    page[32..36].copy_from_slice(&(16u32 << 20).to_ne_bytes());
    page[36..40].copy_from_slice(&8192u32.to_ne_bytes());
    page
}

pub fn partitions_of(name: &str) -> u32 {
    match name {
        B1 => 2,
        B2 => 1,
        B3 => 3,
        _ => 1,
    }
}

/// The catalog store: three complete backups (B1, B2 on timeline 1, B3 on
/// timeline 2), one incomplete upload (ORPHAN), WAL 1..9 of timeline 1 and
/// 9..B of timeline 2, backup and timeline history files, strays, old
/// versions and foreign keys.
pub fn populate(root: &Path) {
    let complete = [
        (
            B1,
            "000000010000000000000003",
            "00000312",
            1_000_123,
            B1_TIME,
        ),
        (
            B2,
            "000000010000000000000006",
            "00000128",
            2_000_456,
            B2_TIME,
        ),
        (
            B3,
            "00000002000000000000000A",
            "00000064",
            3_000_789,
            B3_TIME,
        ),
    ];
    for (name, stop, stop_offset, size, time) in complete {
        for key in backup_data_keys(name, partitions_of(name)) {
            write(root, &key, b"PostgreSQL 15.8 or partition bytes");
            set_mtime(&root.join(&key), time);
        }
        let sentinel = sentinel_key(name);
        write(root, &sentinel, &sentinel_json(stop, stop_offset, size));
        set_mtime(&root.join(&sentinel), time);
    }
    for key in backup_data_keys(ORPHAN, 1) {
        write(root, &key, b"never finished");
        set_mtime(&root.join(&key), ORPHAN_TIME);
    }
    for key in all_wal() {
        let name = key.trim_start_matches("wal_005/");
        let plain = if key == TIMELINE_HISTORY {
            TIMELINE_2_HISTORY.as_bytes().to_vec()
        } else {
            let tli = u32::from_str_radix(&name[..8], 16).unwrap();
            let seg = u32::from_str_radix(&name[16..24], 16).unwrap();
            wal_page_header(tli, seg)
        };
        write(root, &key, &lzop(&plain));
    }
    for key in STRAYS.iter().chain(&OLD_VERSION_KEYS).chain(&FOREIGN_KEYS) {
        write(root, key, b"x");
    }
}

/// [`populate`] plus a backup that is being uploaded right now.
pub fn populate_with_in_progress(root: &Path) {
    populate(root);
    for key in backup_data_keys(IN_PROGRESS, 1) {
        write(root, &key, b"still uploading");
    }
}

/// Every WAL-E WAL object of the fixture (not the strays).
pub fn all_wal() -> Vec<String> {
    let mut keys: Vec<String> = (1..=9).map(|s| wal(1, s)).collect();
    keys.extend((9..=0xB).map(|s| wal(2, s)));
    keys.push(backup_history(1, 2, 0x28));
    keys.push(backup_history(1, 5, 0x60));
    keys.push(backup_history(2, 9, 0x28));
    keys.push(TIMELINE_HISTORY.to_string());
    keys
}

/// Every file under `dir`, as `/`-separated paths relative to it.
pub fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).unwrap();
                out.insert(rel.to_str().unwrap().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Directories under `dir` (not `dir` itself) that are empty.
pub fn empty_dirs_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut any = false;
        for entry in std::fs::read_dir(&d).unwrap() {
            any = true;
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            }
        }
        if !any && d != dir {
            out.push(d.display().to_string());
        }
    }
    out
}
