//! `backup-fetch` from a store that someone else can write to, through the
//! real binary: crafted partitions, sentinels and restore specs make nothing
//! outside the target (the restoring host often runs as root), and the
//! restore fails, saying why.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::cli::{FileStoreEnv, stderr};

const BACKUP: &str = "base_000000010000000000000002_00000040";

/// (name, type, link target, data), written as raw as the header allows.
type RawEntry<'a> = (&'a str, tar::EntryType, &'a str, &'a [u8]);

fn tar_of(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o600);
        h.set_mtime(1_500_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn lzop(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("lzop")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn sentinel(spec: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "wal_segment_backup_stop": "000000010000000000000002",
        "wal_segment_offset_backup_stop": "00000200",
        "expanded_size_bytes": 10,
        "spec": spec,
    }))
    .unwrap()
}

fn no_tablespaces() -> serde_json::Value {
    serde_json::json!({"base_prefix": "/var/lib/postgresql/15/main/", "tablespaces": []})
}

/// A file:// store holding one backup, a target to restore into and, next
/// to them, a directory standing for the rest of the host.
struct Setup {
    store: FileStoreEnv,
    target: PathBuf,
    outside: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let store = FileStoreEnv::new();
        let outside = store.dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), b"secret").unwrap();
        let target = store.dir.path().join("restore").join("data");
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        Setup {
            store,
            target,
            outside,
        }
    }

    fn outside(&self) -> String {
        self.outside.to_str().unwrap().to_string()
    }

    /// Stores the backup: its sentinel and its one partition.
    fn put(&self, sentinel: &[u8], partition: &[RawEntry]) {
        let base = self.store.root().join("basebackups_005");
        let part = base.join(BACKUP).join("tar_partitions");
        fs::create_dir_all(&part).unwrap();
        fs::write(
            base.join(format!("{BACKUP}_backup_stop_sentinel.json")),
            sentinel,
        )
        .unwrap();
        fs::write(part.join("part_00000000.tar.lzo"), lzop(&tar_of(partition))).unwrap();
    }

    fn fetch(&self, options: &[&str]) -> Output {
        let mut args = vec!["backup-fetch"];
        args.extend_from_slice(options);
        args.extend([self.target.to_str().unwrap(), BACKUP]);
        // Relative paths a spec names would land next to the store.
        self.store
            .command(&args)
            .current_dir(self.store.dir.path())
            .output()
            .unwrap()
    }

    /// Everything in the temp dir but the store and the target.
    fn host(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.store.dir.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p == self.store.root() || p == self.target {
                    continue;
                }
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p.clone());
                }
                out.push(p);
            }
        }
        out.sort();
        out
    }

    /// The restore failed with `message` and the host is as before.
    fn assert_refused(&self, out: &Output, message: &str, host_before: &[PathBuf]) {
        assert_ne!(out.status.code(), Some(0), "{}", stderr(out));
        assert!(stderr(out).contains(message), "{}", stderr(out));
        assert_eq!(self.host(), host_before, "{}", stderr(out));
        assert_eq!(fs::read(self.outside.join("secret")).unwrap(), b"secret");
    }
}

const PG_CONTROL: RawEntry = ("global/pg_control", tar::EntryType::Regular, "", b"control");

/// The harness itself: a well-formed crafted backup restores.
#[test]
fn a_well_formed_crafted_backup_restores() {
    let s = Setup::new();
    s.put(
        &sentinel(no_tablespaces()),
        &[
            ("PG_VERSION", tar::EntryType::Regular, "", b"15\n"),
            PG_CONTROL,
        ],
    );
    let out = s.fetch(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(fs::read(s.target.join("PG_VERSION")).unwrap(), b"15\n");
}

/// Names that leave the target, symlinks and hard links out of it, and
/// device nodes.  Fails on main for the device, which was skipped and the
/// restore reported complete.
#[test]
fn crafted_partitions_write_nothing_outside_the_target() {
    let s = Setup::new();
    let outside = s.outside();
    let absolute = format!("{outside}/evil");
    let secret = format!("{outside}/secret");
    let reg = tar::EntryType::Regular;
    let cases: Vec<Vec<RawEntry>> = vec![
        vec![(&absolute, reg, "", b"pwned")],
        vec![("../evil", reg, "", b"pwned")],
        vec![("../../outside/evil", reg, "", b"pwned")],
        vec![
            ("link", tar::EntryType::Symlink, &outside, b""),
            ("link/evil", reg, "", b"pwned"),
        ],
        vec![
            ("link", tar::EntryType::Symlink, &outside, b""),
            ("link/sub/", tar::EntryType::Directory, "", b""),
        ],
        vec![("leak", tar::EntryType::Link, &secret, b"")],
        vec![("leak", tar::EntryType::Link, "../../outside/secret", b"")],
        vec![("sda", tar::EntryType::Block, "", b"")],
        vec![("null", tar::EntryType::Char, "", b"")],
    ];
    let before = s.host();
    for mut entries in cases {
        entries.push(PG_CONTROL);
        s.put(&sentinel(no_tablespaces()), &entries);
        let out = s.fetch(&[]);
        s.assert_refused(&out, "refusing to extract tar member", &before);
        assert!(!s.target.join("leak").exists() && !s.target.join("sda").exists());
        fs::remove_dir_all(&s.target).unwrap();
    }
}

/// A sentinel is a few hundred bytes; one of megabytes is refused before
/// anything is restored, by backup-fetch and backup-list alike.  Fails on
/// main, which read any size.
#[test]
fn an_oversized_sentinel_is_refused() {
    let mut huge = sentinel(no_tablespaces());
    huge.splice(1..1, std::iter::repeat_n(b' ', 2 << 20));
    let s = Setup::new();
    s.put(&huge, &[PG_CONTROL]);
    let before = s.host();
    let out = s.fetch(&[]);
    s.assert_refused(&out, "larger than 1048576 bytes", &before);
    assert!(!s.target.join("global").exists());
    let out = s.store.run(&["backup-list", "--detail"]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("larger than 1048576 bytes"),
        "{}",
        stderr(&out)
    );
}

/// Tablespaces in a sentinel that are not OIDs, or whose link is not
/// `pg_tblspc/<oid>`: with `--restore-spec SOURCE` the restore would make
/// links and directories wherever they say.  Fails on main, which made a
/// symlink outside the target.
#[test]
fn sentinel_tablespaces_that_reach_outside_are_refused() {
    let s = Setup::new();
    let outside = s.outside();
    let ts = format!("{outside}/ts/");
    let cases = [
        (
            "../../../outside/x",
            "pg_tblspc/../../../outside/x",
            "is not an OID",
        ),
        (
            &format!("{outside}/abs")[..],
            "pg_tblspc/16400",
            "is not an OID",
        ),
        ("16400", "base", "has the link \"base\""),
        ("16400", "pg_tblspc/16400/../../..", "has the link"),
    ];
    for (oid, link, message) in cases {
        let mut spec = serde_json::json!({
            "base_prefix": "/var/lib/postgresql/15/main/",
            "tablespaces": [oid],
        });
        spec[oid] = serde_json::json!({"loc": ts, "link": link});
        s.put(&sentinel(spec), &[PG_CONTROL]);
        let before = s.host();
        for options in [&["--restore-spec", "SOURCE"][..], &[]] {
            let out = s.fetch(options);
            // Without a spec only the OIDs are used, not the locations.
            let message = if options.is_empty() && oid == "16400" {
                "tablespace symlinks are missing"
            } else {
                message
            };
            s.assert_refused(&out, message, &before);
        }
    }
}

fn spec_file(dir: &Path, text: &[u8]) -> PathBuf {
    let path = dir.join("spec.json");
    fs::write(&path, text).unwrap();
    path
}

/// `--restore-spec FILE` gets the same checks, and a size cap.  Fails on
/// main, which made the link and directory a bad spec asked for.
#[test]
fn restore_spec_files_that_reach_outside_are_refused() {
    let s = Setup::new();
    s.put(&sentinel(no_tablespaces()), &[PG_CONTROL]);
    let outside = s.outside();
    let specs_dir = tempfile::tempdir().unwrap();
    let mut huge = br#"{"tablespaces": []}"#.to_vec();
    huge.splice(1..1, std::iter::repeat_n(b' ', 2 << 20));
    let cases: [(Vec<u8>, &str); 4] = [
        (huge, "larger than 1048576 bytes"),
        (
            serde_json::to_vec(&serde_json::json!({
                "tablespaces": ["1/../../../outside/x"],
                "1/../../../outside/x": {"loc": format!("{outside}/ts/"), "link": "pg_tblspc/1/../../../outside/x"},
            }))
            .unwrap(),
            "is not an OID",
        ),
        (
            serde_json::to_vec(&serde_json::json!({
                "tablespaces": ["16400"],
                "16400": {"loc": format!("{outside}/ts/"), "link": "../../outside/link"},
            }))
            .unwrap(),
            "has the link",
        ),
        (
            serde_json::to_vec(&serde_json::json!({
                "tablespaces": ["16400"],
                "16400": {"loc": "relative/ts/", "link": "pg_tblspc/16400"},
            }))
            .unwrap(),
            "not an absolute path",
        ),
    ];
    for (text, message) in cases {
        let before = s.host();
        let file = spec_file(specs_dir.path(), &text);
        let out = s.fetch(&["--restore-spec", file.to_str().unwrap()]);
        s.assert_refused(&out, message, &before);
        assert!(!s.target.join("pg_tblspc").exists());
    }
}

/// PostgreSQL makes `pg_tblspc/<oid>` links from `tablespace_map` at
/// startup; the restore rewrites it, keeping only OIDs.  Fails on main,
/// which kept a line whose "OID" led out of `pg_tblspc`.
#[test]
fn tablespace_map_lines_that_are_not_oids_are_dropped() {
    let s = Setup::new();
    s.put(
        &sentinel(no_tablespaces()),
        &[
            ("pg_tblspc/", tar::EntryType::Directory, "", b""),
            ("link", tar::EntryType::Symlink, "/elsewhere", b""),
            (
                "tablespace_map",
                tar::EntryType::Regular,
                "",
                b"../link /orig\n",
            ),
            PG_CONTROL,
        ],
    );
    let out = s.fetch(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!s.target.join("tablespace_map").exists());
}
