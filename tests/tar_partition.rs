//! Planning a data directory into tar partitions, streaming them, and
//! extracting them again, on synthetic data directories.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use wal_e::ByteStream;
use wal_e::tar_extract::{ExtractError, ExtractOptions, extract};
use wal_e::tar_partition::{
    Limits, Member, MemberKind, Partition, Plan, TarError, final_partition, log_directory_member,
    offline_final_partition, plan, plan_without_logs, write_partition,
};

const OLD: u64 = 1_500_000_000;

/// A `pg_control` of PostgreSQL 13 to 16 (`pg_control_version` 1300: 16 MiB
/// segments at offset 228, the CRC-32C of the first 288 bytes at 288) that
/// passes `parse_control_file`.
fn control_file() -> Vec<u8> {
    let mut b = vec![0u8; 8192];
    b[0..8].copy_from_slice(&0x1234_5678_9ABC_DEF0u64.to_ne_bytes());
    b[8..12].copy_from_slice(&1300u32.to_ne_bytes());
    b[228..232].copy_from_slice(&(16u32 << 20).to_ne_bytes());
    let crc = crc32c::crc32c(&b[..288]);
    b[288..292].copy_from_slice(&crc.to_ne_bytes());
    b
}

fn put(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn set_mtime(path: &Path, secs: u64) {
    fs::File::open(path)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// A data directory with one of everything the walk rules talk about, and a
/// tablespace directory outside it.
struct Fixture {
    tmp: tempfile::TempDir,
    data: PathBuf,
    ts: PathBuf,
    wal_target: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ts = tmp.path().join("tblspc");
    let wal_target = tmp.path().join("waldir");
    fs::create_dir_all(&data).unwrap();
    put(&data.join("PG_VERSION"), b"15\n");
    put(&data.join("postgresql.auto.conf"), b"# auto\n");
    for excluded in [
        "postmaster.pid",
        "postmaster.opts",
        "postgresql.conf",
        "pg_hba.conf",
        "recovery.conf",
        "recovery.done",
        "pg_ident.conf",
        "promote",
        "backup_label",
        "tablespace_map",
    ] {
        put(&data.join(excluded), b"must not be archived\n");
    }
    put(&data.join("base/1/1259"), &vec![7u8; 8192]);
    put(
        &data.join("base/1/postmaster.pid"),
        b"only top level is excluded",
    );
    put(
        &data.join("base/1/backup_label"),
        b"only top level is excluded",
    );
    put(&data.join("base/pgsql_tmp/pgsql_tmp123.0"), b"temp");
    put(&data.join("base/1/pg_stat_tmp/junk"), b"temp");
    put(&data.join("base/1/.wal-e/junk"), b"temp");
    put(&data.join("global/1262"), &vec![1u8; 8192]);
    put(&data.join("global/pg_control"), &control_file());
    put(&data.join("pg_wal/000000010000000000000001"), b"wal");
    fs::create_dir_all(data.join("pg_wal/archive_status")).unwrap();
    put(&data.join("pg_log/postgresql.log"), b"log");
    put(&data.join("pg_replslot/slot1/state"), b"slot");
    put(&data.join("pg_stat_tmp/global.stat"), b"stat");
    put(&data.join(".wal-e/prefetch/x"), b"prefetch");
    put(&data.join("lost+found/orphan"), b"orphan");
    put(&data.join("base/lost+found/orphan"), b"orphan");
    put(
        &data.join("sub/postgresql.conf"),
        b"kept below the top level",
    );
    put(
        &data.join("deep/pg_wal/kept"),
        b"pg_wal is special only at the top",
    );
    fs::create_dir_all(data.join("emptydir")).unwrap();
    // pg_xlog as a symlink to a WAL directory elsewhere: kept as a symlink.
    put(&wal_target.join("000000010000000000000001"), b"wal");
    symlink(&wal_target, data.join("pg_xlog")).unwrap();
    symlink("/nonexistent/wal-e-test", data.join("danglinglink")).unwrap();
    // The tablespace and a dangling link in pg_tblspc.
    fs::create_dir_all(data.join("pg_tblspc")).unwrap();
    put(&ts.join("PG_15_202209061/1/2"), &vec![3u8; 4096]);
    put(&ts.join("PG_15_202209061/pgsql_tmp/t1"), b"temp");
    fs::create_dir_all(ts.join("PG_15_202209061/emptydb")).unwrap();
    put(&ts.join("lost+found/orphan"), b"orphan");
    symlink(&ts, data.join("pg_tblspc/16400")).unwrap();
    symlink("/nonexistent/ts", data.join("pg_tblspc/16401")).unwrap();
    Fixture {
        tmp,
        data,
        ts,
        wal_target,
    }
}

fn all_members(plan: &Plan) -> Vec<&Member> {
    plan.partitions.iter().flat_map(|p| &p.members).collect()
}

fn names(plan: &Plan) -> Vec<String> {
    all_members(plan).iter().map(|m| m.name.clone()).collect()
}

fn member<'a>(plan: &'a Plan, name: &str) -> &'a Member {
    all_members(plan)
        .into_iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name:?} not in the plan"))
}

#[test]
fn plan_follows_every_walk_rule() {
    let fx = fixture();
    let plan = plan(&fx.data, &Limits::default()).unwrap();
    let names = names(&plan);
    let expected = [
        "",
        ".wal-e",
        "PG_VERSION",
        "danglinglink",
        "pg_log",
        "pg_replslot",
        "pg_stat_tmp",
        "pg_wal",
        "pg_xlog",
        "postgresql.auto.conf",
        "base",
        "base/pgsql_tmp",
        "base/1",
        "base/1/.wal-e",
        "base/1/1259",
        "base/1/backup_label",
        "base/1/pg_stat_tmp",
        "base/1/postmaster.pid",
        "deep",
        "deep/pg_wal",
        "deep/pg_wal/kept",
        "emptydir",
        "global",
        "global/1262",
        "pg_tblspc",
        "pg_tblspc/16401",
        "pg_tblspc/16400/PG_15_202209061",
        "pg_tblspc/16400/PG_15_202209061/pgsql_tmp",
        "pg_tblspc/16400/PG_15_202209061/1",
        "pg_tblspc/16400/PG_15_202209061/1/2",
        "pg_tblspc/16400/PG_15_202209061/emptydb",
        "sub",
        "sub/postgresql.conf",
    ];
    assert_eq!(names, expected, "members in walk order");
    // Each excluded thing, asserted absent by name.
    for absent in [
        "postmaster.pid",
        "postmaster.opts",
        "postgresql.conf",
        "pg_hba.conf",
        "recovery.conf",
        "recovery.done",
        "pg_ident.conf",
        "promote",
        "backup_label",
        "tablespace_map",
        "global/pg_control",
        "pg_wal/000000010000000000000001",
        "pg_wal/archive_status",
        "pg_log/postgresql.log",
        "pg_replslot/slot1",
        "pg_stat_tmp/global.stat",
        ".wal-e/prefetch",
        "base/pgsql_tmp/pgsql_tmp123.0",
        "base/1/pg_stat_tmp/junk",
        "base/1/.wal-e/junk",
        "lost+found",
        "lost+found/orphan",
        "base/lost+found",
        "pg_tblspc/16400",
        "pg_tblspc/16400/lost+found",
        "pg_tblspc/16400/PG_15_202209061/pgsql_tmp/t1",
        "pg_xlog/000000010000000000000001",
    ] {
        assert!(!names.iter().any(|n| n == absent), "{absent:?} archived");
    }

    let root = member(&plan, "");
    assert_eq!(root.kind, MemberKind::Dir);
    assert_eq!(root.source.as_deref(), Some(fx.data.as_path()));
    assert_eq!(
        member(&plan, "pg_xlog").kind,
        MemberKind::Symlink {
            target: fx.wal_target.clone()
        }
    );
    assert_eq!(
        member(&plan, "danglinglink").kind,
        MemberKind::Symlink {
            target: PathBuf::from("/nonexistent/wal-e-test")
        }
    );
    assert_eq!(member(&plan, "pg_wal").kind, MemberKind::Dir);
    assert_eq!(member(&plan, "emptydir").kind, MemberKind::Dir);
    assert_eq!(
        member(&plan, "base/1/1259").kind,
        MemberKind::File { size: 8192 }
    );
    let ts_file = member(&plan, "pg_tblspc/16400/PG_15_202209061/1/2");
    assert_eq!(ts_file.kind, MemberKind::File { size: 4096 });
    assert_eq!(
        ts_file.source.as_deref(),
        Some(
            fx.data
                .join("pg_tblspc/16400/PG_15_202209061/1/2")
                .as_path()
        ),
        "tablespace files are read through the pg_tblspc link"
    );
    let md = fs::symlink_metadata(fx.data.join("base/1/1259")).unwrap();
    let m = member(&plan, "base/1/1259");
    assert_eq!(
        (m.mode, m.uid, m.gid, m.mtime),
        (md.mode() & 0o7777, md.uid(), md.gid(), md.mtime() as u64)
    );

    assert_eq!(plan.spec.base_prefix, format!("{}/", fx.data.display()));
    assert_eq!(plan.spec.tablespaces, ["16400"]);
    let loc = plan.spec.location("16400").unwrap();
    assert_eq!(loc.loc, format!("{}/", fx.ts.display()));
    assert_eq!(loc.link, "pg_tblspc/16400");
    let sum: u64 = all_members(&plan).iter().map(|m| m.data_bytes()).sum();
    assert_eq!(plan.expanded_size_bytes, sum);
    assert_eq!(
        plan.expanded_size_bytes,
        (3 + 7 + 26 + 26 + 8192 + 8192 + 33 + 24 + 4096) as u64
    );
    assert_eq!(plan.partitions.len(), 1);
    assert_eq!(plan.partitions[0].number, 0);
}

#[test]
fn a_relative_cluster_dir_is_walked_and_kept_as_given_in_the_spec() {
    let fx = fixture();
    let cwd = std::env::current_dir().unwrap();
    let ups = "../".repeat(cwd.components().count() - 1);
    let relative = format!(
        "{ups}{}",
        fx.data.display().to_string().trim_start_matches('/')
    );
    let plan = plan(Path::new(&relative), &Limits::default()).unwrap();
    assert_eq!(plan.spec.base_prefix, format!("{relative}/"));
    let m = member(&plan, "base/1/1259");
    assert!(m.source.as_ref().unwrap().is_absolute());
    assert_eq!(names(&plan).len(), 33);
}

/// PostgreSQL 10+'s `log` and the server's own `log_directory` are kept
/// like `pg_log`: the directory, not the log files, however large.
#[test]
fn log_directories_are_archived_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let limits = Limits {
        max_bytes: 1000,
        ..Limits::default()
    };
    put(&data.join("PG_VERSION"), b"15\n");
    put(&data.join("log/postgresql-Mon.log"), &[b'x'; 2000]);
    put(&data.join("pg_log/postgresql.log"), &[b'x'; 2000]);
    put(&data.join("logs/server/postgresql.log"), &[b'x'; 2000]);
    put(&data.join("logs/keep"), b"not the log directory");
    put(
        &data.join("base/1/log/kept"),
        b"log is special only at the top",
    );
    let without_logs = plan_without_logs(&data, &limits, Some("logs/server".into())).unwrap();
    assert_eq!(
        names(&without_logs),
        [
            "",
            "PG_VERSION",
            "log",
            "pg_log",
            "base",
            "base/1",
            "base/1/log",
            "base/1/log/kept",
            "logs",
            "logs/keep",
            "logs/server",
        ]
    );
    // Without the setting, a large file there does not fit.
    let err = plan(&data, &limits).unwrap_err();
    assert!(matches!(err, TarError::MemberTooBig { .. }), "{err:?}");

    let cluster = Path::new("/srv/pg/data");
    for (setting, member) in [
        ("log", Some("log")),
        ("logs/server", Some("logs/server")),
        ("./logs//server/", Some("logs/server")),
        ("logs/../pg_log2", Some("pg_log2")),
        ("/srv/pg/data/logs/server", Some("logs/server")),
        ("/var/log/postgresql", None),
        ("/srv/pg/data2/log", None),
        ("../log", None),
        (".", None),
        ("/srv/pg/data", None),
        ("", None),
    ] {
        assert_eq!(
            log_directory_member(cluster, setting).as_deref(),
            member,
            "{setting:?}"
        );
    }
}

#[test]
fn a_missing_cluster_dir_fails_the_walk() {
    let tmp = tempfile::tempdir().unwrap();
    let err = plan(&tmp.path().join("nope"), &Limits::default()).unwrap_err();
    assert!(matches!(err, TarError::Walk { .. }), "{err:?}");
}

fn many_files(n: usize, size: usize) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for i in 0..n {
        put(&data.join(format!("base/1/{i:04}")), &vec![i as u8; size]);
    }
    (tmp, data)
}

#[test]
fn small_limits_make_many_partitions_in_order_within_the_limits() {
    let (_tmp, data) = many_files(30, 3000);
    put(&data.join("base/2/exactly_max"), &vec![9u8; 10_000]);
    let whole = plan(&data, &Limits::default()).unwrap();
    let limits = Limits {
        max_bytes: 10_000,
        max_members: 5,
    };
    let cut = plan(&data, &limits).unwrap();
    assert!(
        cut.partitions.len() >= 11,
        "{} partitions",
        cut.partitions.len()
    );
    for (i, p) in cut.partitions.iter().enumerate() {
        assert_eq!(p.number as usize, i);
        assert!(!p.members.is_empty());
        assert!(
            p.members.len() <= 5,
            "partition {i} has {}",
            p.members.len()
        );
        let max_alone = p.members.len() == 1 && p.data_bytes() == 10_000;
        assert!(p.data_bytes() < 10_000 || max_alone, "partition {i}");
    }
    assert_eq!(names(&cut), names(&whole), "order is preserved");
    assert_eq!(cut.expanded_size_bytes, whole.expanded_size_bytes);
    let exact = cut
        .partitions
        .iter()
        .find(|p| p.members.iter().any(|m| m.name == "base/2/exactly_max"))
        .unwrap();
    assert_eq!(
        exact.members.len(),
        1,
        "a max-sized member gets a partition of its own"
    );
    // Three 3000-byte files fit (9000), a fourth would reach the limit.
    let full = cut.partitions.iter().map(|p| p.data_bytes()).max().unwrap();
    assert_eq!(full, 10_000);
    assert!(cut.partitions.iter().any(|p| p.data_bytes() == 9000));
    // The member limit bites on directories alone.
    let (_tmp2, dirs) = many_files(0, 0);
    for i in 0..12 {
        fs::create_dir_all(dirs.join(format!("d{i:02}"))).unwrap();
    }
    let p = plan(&dirs, &limits).unwrap();
    let counts: Vec<usize> = p.partitions.iter().map(|p| p.members.len()).collect();
    assert_eq!(counts, [5, 5, 3]);
}

#[test]
fn a_file_over_the_limit_is_member_too_big() {
    let (_tmp, data) = many_files(2, 100);
    put(&data.join("base/huge"), &vec![0u8; 10_001]);
    let err = plan(
        &data,
        &Limits {
            max_bytes: 10_000,
            max_members: 5,
        },
    )
    .unwrap_err();
    match err {
        TarError::MemberTooBig { path, size } => {
            assert_eq!(size, 10_001);
            assert_eq!(path, data.join("base/huge"));
        }
        other => panic!("{other:?}"),
    }
}

async fn collect(mut s: ByteStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[derive(Debug)]
struct Entry {
    kind: tar::EntryType,
    size: u64,
    mode: u32,
    mtime: u64,
    link: Option<String>,
    data: Vec<u8>,
}

/// Entries by raw name (as in the header or long-name record).
fn parse(archive: &[u8]) -> (Vec<String>, BTreeMap<String, Entry>) {
    let mut order = Vec::new();
    let mut map = BTreeMap::new();
    let mut ar = tar::Archive::new(archive);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let h = e.header().clone();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        order.push(name.clone());
        map.insert(
            name,
            Entry {
                kind: h.entry_type(),
                size: h.size().unwrap(),
                mode: h.mode().unwrap(),
                mtime: h.mtime().unwrap(),
                link,
                data,
            },
        );
    }
    (order, map)
}

fn assert_well_ended(archive: &[u8]) {
    assert_eq!(archive.len() % 10240, 0, "length {}", archive.len());
    // The end-of-archive marker: after the last member, only zero blocks.
    let mut ar = tar::Archive::new(archive);
    let mut end = 0u64;
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        end = e.raw_file_position() + e.size().div_ceil(512) * 512;
    }
    assert!(archive.len() as u64 >= end + 1024);
    assert!(archive[end as usize..].iter().all(|&b| b == 0));
}

/// `tar -tvf` by GNU tar: one line per member, and nothing on stderr.
fn gnu_tar_list(archive: &[u8]) -> Vec<String> {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    fs::write(tmp.path(), archive).unwrap();
    let out = std::process::Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(tmp.path())
        .output()
        .expect("GNU tar runs");
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn write_partition_streams_a_gnu_tar_that_both_readers_list() {
    let fx = fixture();
    let plan = plan(&fx.data, &Limits::default()).unwrap();
    let archive = collect(write_partition(plan.partitions[0].clone(), None))
        .await
        .unwrap();
    assert_well_ended(&archive);
    let (order, entries) = parse(&archive);
    let expected: Vec<String> = all_members(&plan)
        .iter()
        .map(|m| match (&m.kind, m.name.as_str()) {
            (MemberKind::Dir, "") => "./".to_string(),
            (MemberKind::Dir, n) => format!("{n}/"),
            (_, n) => n.to_string(),
        })
        .collect();
    assert_eq!(order, expected);
    assert!(archive.starts_with(b"./\0"), "root entry raw name");
    assert_eq!(&archive[257..265], b"ustar  \0", "GNU magic");

    let e = &entries["base/1/1259"];
    assert_eq!(e.kind, tar::EntryType::Regular);
    assert_eq!((e.size, e.data.clone()), (8192, vec![7u8; 8192]));
    let md = fs::metadata(fx.data.join("base/1/1259")).unwrap();
    assert_eq!(e.mode, md.mode() & 0o7777);
    assert_eq!(e.mtime, md.mtime() as u64);
    assert_eq!(entries["pg_wal/"].kind, tar::EntryType::Directory);
    assert_eq!(entries["pg_xlog"].kind, tar::EntryType::Symlink);
    assert_eq!(
        entries["pg_xlog"].link.as_deref(),
        Some(fx.wal_target.to_str().unwrap())
    );
    assert_eq!(
        entries["danglinglink"].link.as_deref(),
        Some("/nonexistent/wal-e-test")
    );
    assert_eq!(
        entries["pg_tblspc/16400/PG_15_202209061/1/2"].data,
        vec![3u8; 4096]
    );

    let listing = gnu_tar_list(&archive);
    assert_eq!(listing.len(), expected.len());
    for (line, name) in listing.iter().zip(&expected) {
        assert!(
            line.ends_with(name.as_str()) || line.contains(&format!(" {name} -> ")),
            "{line} vs {name}"
        );
    }
    let line = |name: &str| {
        listing
            .iter()
            .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
            .unwrap_or_else(|| panic!("{name} not listed"))
            .clone()
    };
    assert!(line("./").starts_with('d'));
    assert!(line("base/1/1259").starts_with('-'));
    assert!(line("base/1/1259").contains(" 8192 "));
    assert!(line("danglinglink").starts_with('l'));
    assert!(line("danglinglink").ends_with("danglinglink -> /nonexistent/wal-e-test"));
}

#[tokio::test]
async fn files_changed_after_planning_are_cut_padded_or_skipped() {
    let (_tmp, data) = many_files(0, 0);
    put(&data.join("grows"), b"0123456789");
    put(&data.join("shrinks"), b"abcdefghij");
    put(&data.join("vanishes"), b"gone soon");
    put(&data.join("stays"), b"still here");
    let plan = plan(&data, &Limits::default()).unwrap();
    fs::write(data.join("grows"), b"0123456789 and more").unwrap();
    fs::write(data.join("shrinks"), b"abc").unwrap();
    fs::remove_file(data.join("vanishes")).unwrap();
    let archive = collect(write_partition(plan.partitions[0].clone(), None))
        .await
        .unwrap();
    assert_well_ended(&archive);
    let (order, entries) = parse(&archive);
    assert_eq!(order, ["./", "grows", "shrinks", "stays"]);
    assert_eq!(entries["grows"].data, b"0123456789");
    assert_eq!(entries["shrinks"].data, b"abc\0\0\0\0\0\0\0");
    assert_eq!(entries["stays"].data, b"still here");
    // GNU tar agrees there is nothing else in there.
    assert_eq!(gnu_tar_list(&archive).len(), 4);
}

#[tokio::test]
async fn other_read_errors_fail_the_stream() {
    let tmp = tempfile::tempdir().unwrap();
    // A "file" that turned into a directory: open works, read fails.
    let partition = Partition {
        number: 0,
        members: vec![Member {
            name: "was_a_file".into(),
            source: Some(tmp.path().to_path_buf()),
            kind: MemberKind::File { size: 10 },
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime: 0,
        }],
    };
    let err = collect(write_partition(partition, None)).await.unwrap_err();
    assert!(err.to_string().contains("reading"), "{err}");
}

#[tokio::test]
async fn long_names_and_link_targets_round_trip() {
    let (tmp, data) = many_files(0, 0);
    let deep = "a_rather_long_directory_name_0123456789/".repeat(4);
    let file = format!("{deep}and_a_file_name_that_is_long_too.dat");
    assert!(file.len() > 100 && deep.len() > 100);
    put(&data.join(&file), b"deep contents");
    let long_target = format!("/nonexistent/{}", "t".repeat(150));
    symlink(&long_target, data.join("longlink")).unwrap();
    let plan = plan(&data, &Limits::default()).unwrap();
    let archive = collect(write_partition(plan.partitions[0].clone(), None))
        .await
        .unwrap();
    let (_, entries) = parse(&archive);
    assert_eq!(entries[&file].data, b"deep contents");
    assert_eq!(entries[&deep].kind, tar::EntryType::Directory);
    assert_eq!(
        entries["longlink"].link.as_deref(),
        Some(long_target.as_str())
    );
    let listing = gnu_tar_list(&archive);
    assert!(listing.iter().any(|l| l.ends_with(&file)), "{listing:?}");
    assert!(listing.iter().any(|l| l.ends_with(&deep)));
    assert!(
        listing
            .iter()
            .any(|l| l.ends_with(&format!("longlink -> {long_target}")))
    );

    let dest = tmp.path().join("restored");
    extract(bytes_stream(archive), &dest, ExtractOptions::default())
        .await
        .unwrap();
    assert_eq!(fs::read(dest.join(&file)).unwrap(), b"deep contents");
    assert_eq!(
        fs::read_link(dest.join("longlink")).unwrap(),
        PathBuf::from(long_target)
    );
}

#[tokio::test]
async fn the_rate_limit_applies_to_the_tar_stream() {
    let (_tmp, data) = many_files(1, 600 * 1024);
    let plan = plan(&data, &Limits::default()).unwrap();
    let limiter = wal_e::pipeline::RateLimiter::new(1024 * 1024);
    let start = std::time::Instant::now();
    let archive = collect(write_partition(plan.partitions[0].clone(), Some(limiter)))
        .await
        .unwrap();
    let took = start.elapsed().as_secs_f64();
    assert!(archive.len() > 600 * 1024);
    assert!(took >= 0.4, "600 KiB at 1 MiB/s took only {took:.2} s");
}

#[tokio::test]
async fn the_final_partition_has_label_map_and_pg_control_last() {
    let fx = fixture();
    let p = final_partition(
        &fx.data,
        7,
        "START WAL LOCATION: 0/2000028\n",
        Some("16400 /srv/ts\n"),
    )
    .unwrap();
    assert_eq!(p.number, 7);
    let names: Vec<&str> = p.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["backup_label", "tablespace_map", "global/pg_control"]
    );
    let archive = collect(write_partition(p, None)).await.unwrap();
    let (order, entries) = parse(&archive);
    assert_eq!(
        order,
        ["backup_label", "tablespace_map", "global/pg_control"]
    );
    assert_eq!(
        entries["backup_label"].data,
        b"START WAL LOCATION: 0/2000028\n"
    );
    assert_eq!(entries["backup_label"].mode, 0o600);
    assert_eq!(entries["tablespace_map"].data, b"16400 /srv/ts\n");
    assert_eq!(entries["global/pg_control"].data, control_file());
    assert_eq!(gnu_tar_list(&archive).len(), 3);

    let no_map = final_partition(&fx.data, 1, "label", Some("")).unwrap();
    let names: Vec<&str> = no_map.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["backup_label", "global/pg_control"]);
    assert_eq!(
        final_partition(&fx.data, 1, "label", None)
            .unwrap()
            .members
            .len(),
        2
    );
    fs::remove_file(fx.data.join("global/pg_control")).unwrap();
    assert!(final_partition(&fx.data, 1, "label", None).is_err());
}

/// The pg_control member is the checked copy in memory, with the file's
/// metadata, in both kinds of final partition.
#[test]
fn pg_control_is_archived_from_the_copy_that_was_checked() {
    let fx = fixture();
    let path = fx.data.join("global/pg_control");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    set_mtime(&path, OLD);
    let md = fs::metadata(&path).unwrap();
    let online = final_partition(&fx.data, 1, "label", None).unwrap();
    let offline = offline_final_partition(&fx.data, 1, &[]).unwrap();
    for p in [online, offline] {
        let m = p.members.last().unwrap();
        assert_eq!(m.name, "global/pg_control");
        assert_eq!(
            m.kind,
            MemberKind::Data(Bytes::from(fs::read(&path).unwrap()))
        );
        assert_eq!(m.source, None);
        assert_eq!(
            (m.mode, m.uid, m.gid, m.mtime),
            (0o640, md.uid(), md.gid(), OLD)
        );
    }
}

#[test]
fn a_pg_control_failing_its_crc_fails_the_final_partition() {
    let fx = fixture();
    let path = fx.data.join("global/pg_control");
    let mut bad = control_file();
    bad[40] ^= 0x01;
    fs::write(&path, &bad).unwrap();
    let started = std::time::Instant::now();
    let err = final_partition(&fx.data, 1, "label", None).unwrap_err();
    assert!(
        matches!(err, TarError::ControlFile { attempts: 10, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("checksum"), "{msg}");
    assert!(
        msg.contains("The CRC-32C of \"global/pg_control\" is"),
        "{msg}"
    );
    // It was read again a few times before giving up, but not for long.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let err = offline_final_partition(&fx.data, 1, &[]).unwrap_err();
    assert!(matches!(err, TarError::ControlFile { .. }), "{err:?}");
}

/// A read that catches the server rewriting pg_control is retried: once the
/// file is whole again, the whole copy is archived.
#[test]
fn a_torn_pg_control_read_is_retried() {
    let fx = fixture();
    let path = fx.data.join("global/pg_control");
    // The new checkpoint location, but still the old CRC.
    let mut torn = control_file();
    torn[32..40].copy_from_slice(&0x0300_0028u64.to_ne_bytes());
    fs::write(&path, &torn).unwrap();
    let fixer = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(250));
            let tmp = path.with_extension("new");
            fs::write(&tmp, control_file()).unwrap();
            fs::rename(&tmp, &path).unwrap();
        })
    };
    let p = final_partition(&fx.data, 1, "label", None).unwrap();
    fixer.join().unwrap();
    assert_eq!(
        p.members.last().unwrap().kind,
        MemberKind::Data(Bytes::from(control_file()))
    );
}

fn bytes_stream(data: Vec<u8>) -> ByteStream {
    // Odd-sized chunks, so nothing relies on block-aligned reads.
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(7777)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks).boxed()
}

async fn archive_of(plan: &Plan) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in &plan.partitions {
        out.push(collect(write_partition(p.clone(), None)).await.unwrap());
    }
    out
}

fn mtime(path: &Path) -> i64 {
    fs::symlink_metadata(path).unwrap().mtime()
}

#[tokio::test]
async fn extract_round_trips_a_planned_data_directory() {
    let fx = fixture();
    // Modes and times that must come back, and bits that must not.
    fs::set_permissions(
        fx.data.join("PG_VERSION"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    fs::set_permissions(
        fx.data.join("global/1262"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::set_permissions(fx.data.join("base"), fs::Permissions::from_mode(0o755)).unwrap();
    for (i, f) in ["PG_VERSION", "base/1/1259", "global/1262"]
        .iter()
        .enumerate()
    {
        set_mtime(&fx.data.join(f), OLD + i as u64);
    }
    for (i, d) in ["base/1", "base", "emptydir", "pg_wal", ""]
        .iter()
        .enumerate()
    {
        set_mtime(&fx.data.join(d), OLD + 100 + i as u64);
    }
    let one = Limits::default();
    let many = Limits {
        max_bytes: 10_000,
        max_members: 6,
    };
    for (run, limits) in [one, many].iter().enumerate() {
        let plan = plan(&fx.data, limits).unwrap();
        assert_eq!(plan.partitions.len() > 3, run == 1);
        let dest = fx.tmp.path().join(format!("restore{run}"));
        let mut files = 0;
        let mut bytes = 0;
        for archive in archive_of(&plan).await {
            let stats = extract(bytes_stream(archive), &dest, ExtractOptions::default())
                .await
                .unwrap();
            files += stats.files;
            bytes += stats.bytes;
        }
        let regular: Vec<&Member> = all_members(&plan)
            .into_iter()
            .filter(|m| matches!(m.kind, MemberKind::File { .. }))
            .collect();
        assert_eq!(files, regular.len() as u64);
        assert_eq!(bytes, plan.expanded_size_bytes);
        for m in &regular {
            assert_eq!(
                fs::read(dest.join(&m.name)).unwrap(),
                fs::read(m.source.as_ref().unwrap()).unwrap(),
                "{}",
                m.name
            );
        }
        let mode = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("PG_VERSION"), 0o640);
        assert_eq!(mode("global/1262"), 0o755, "setuid dropped");
        for dir in [
            "base",
            "base/1",
            "emptydir",
            "pg_wal",
            "pg_stat_tmp",
            "base/pgsql_tmp",
        ] {
            assert_eq!(mode(dir), 0o700, "{dir}");
        }
        assert_eq!(mtime(&dest.join("PG_VERSION")), OLD as i64);
        assert_eq!(mtime(&dest.join("global/1262")), OLD as i64 + 2);
        assert_eq!(fs::read_dir(dest.join("pg_wal")).unwrap().count(), 0);
        // The pg_xlog symlink is archived but restored as an empty
        // directory, never as a link to the original server's WAL.
        let pg_xlog = fs::symlink_metadata(dest.join("pg_xlog")).unwrap();
        assert!(pg_xlog.is_dir());
        assert_eq!(pg_xlog.mode() & 0o7777, 0o700);
        assert_eq!(fs::read_dir(dest.join("pg_xlog")).unwrap().count(), 0);
        assert_eq!(
            fs::read_link(dest.join("danglinglink")).unwrap(),
            PathBuf::from("/nonexistent/wal-e-test")
        );
        // Blind restore: the tablespace becomes a real directory.
        let ts_dir = fs::symlink_metadata(dest.join("pg_tblspc/16400")).unwrap();
        assert!(ts_dir.is_dir());
        assert_eq!(
            fs::read(dest.join("pg_tblspc/16400/PG_15_202209061/1/2")).unwrap(),
            vec![3u8; 4096]
        );
        assert!(
            dest.join("pg_tblspc/16400/PG_15_202209061/emptydb")
                .is_dir()
        );
        assert!(!dest.join("postgresql.conf").exists());
        assert!(!dest.join("global/pg_control").exists());
        if run == 0 {
            // Directory times survive when the partition holds the
            // directory's contents too (a later partition writing into a
            // directory changes its mtime again, as with WAL-E).
            assert_eq!(mtime(&dest.join("base/1")), OLD as i64 + 100);
            assert_eq!(mtime(&dest.join("base")), OLD as i64 + 101);
            assert_eq!(mtime(&dest.join("emptydir")), OLD as i64 + 102);
            assert_eq!(mtime(&dest.join("pg_wal")), OLD as i64 + 103);
            assert_eq!(mtime(&dest), OLD as i64 + 104);
        }
    }
}

#[tokio::test]
async fn extracting_a_partition_twice_gives_the_same_result() {
    let fx = fixture();
    let plan = plan(&fx.data, &Limits::default()).unwrap();
    let archive = archive_of(&plan).await.remove(0);
    let dest = fx.tmp.path().join("restore");
    let first = extract(
        bytes_stream(archive.clone()),
        &dest,
        ExtractOptions::default(),
    )
    .await
    .unwrap();
    fs::write(dest.join("PG_VERSION"), b"changed by a half-done attempt").unwrap();
    let second = extract(bytes_stream(archive), &dest, ExtractOptions::default())
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(fs::read(dest.join("PG_VERSION")).unwrap(), b"15\n");
    assert_eq!(
        fs::read_link(dest.join("danglinglink")).unwrap(),
        PathBuf::from("/nonexistent/wal-e-test")
    );
}

#[tokio::test]
async fn tablespace_links_set_up_by_the_restore_are_written_through() {
    let fx = fixture();
    let plan = plan(&fx.data, &Limits::default()).unwrap();
    let archive = archive_of(&plan).await.remove(0);
    let dest = fx.tmp.path().join("restore");
    let new_ts = fx.tmp.path().join("new_ts");
    fs::create_dir_all(dest.join("pg_tblspc")).unwrap();
    fs::create_dir_all(&new_ts).unwrap();
    symlink(&new_ts, dest.join("pg_tblspc/16400")).unwrap();

    // Not listed: refused.
    let err = extract(
        bytes_stream(archive.clone()),
        &dest,
        ExtractOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExtractError::Unsafe { .. }), "{err:?}");
    assert!(!new_ts.join("PG_15_202209061").exists());

    let options = ExtractOptions {
        tablespace_links: vec!["pg_tblspc/16400".into()],
        restore_owner: false,
    };
    extract(bytes_stream(archive), &dest, options)
        .await
        .unwrap();
    assert_eq!(
        fs::read(new_ts.join("PG_15_202209061/1/2")).unwrap(),
        vec![3u8; 4096]
    );
    assert!(new_ts.join("PG_15_202209061/emptydb").is_dir());
    assert!(
        fs::symlink_metadata(dest.join("pg_tblspc/16400"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// An archive with raw names the tar crate's builder would refuse.
/// (name, type, link target, data)
type RawEntry<'a> = (&'a str, tar::EntryType, &'a str, &'a [u8]);

fn raw_archive(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = raw_members(entries);
    out.resize(out.len() + 1024, 0);
    out.resize(out.len().div_ceil(10240) * 10240, 0);
    out
}

/// The members of [`raw_archive`] without the end of the archive.
fn raw_members(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(OLD);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out
}

fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn path_traversal_is_refused_and_writes_nothing_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let dest = tmp.path().join("a").join("dest");
    fs::create_dir_all(&dest).unwrap();
    let abs = format!("{}/evil", outside.display());
    let reg = tar::EntryType::Regular;
    for name in [
        "../evil",
        abs.as_str(),
        "a/../../evil",
        "../outside/evil",
        "ok/../../../evil",
    ] {
        let archive = raw_archive(&[("fine", reg, "", b"ok"), (name, reg, "", b"pwned")]);
        let err = extract(bytes_stream(archive), &dest, ExtractOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ExtractError::Unsafe { .. }),
            "{name}: {err:?}"
        );
        assert!(tree(&outside).is_empty(), "{name}");
        assert!(!tmp.path().join("evil").exists() && !tmp.path().join("a/evil").exists());
    }
    // The entry before the bad one was extracted, nothing after it.
    assert_eq!(tree(&dest), [dest.join("fine")]);
}

#[tokio::test]
async fn symlinks_in_the_archive_are_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let dest = tmp.path().join("dest");
    let target = outside.to_str().unwrap();
    let cases: [&[RawEntry]; 3] = [
        &[
            ("link", tar::EntryType::Symlink, target, b""),
            ("link/evil", tar::EntryType::Regular, "", b"pwned"),
        ],
        &[
            ("link", tar::EntryType::Symlink, target, b""),
            ("link/sub/", tar::EntryType::Directory, "", b""),
        ],
        &[
            ("up", tar::EntryType::Symlink, "..", b""),
            ("up/outside/evil", tar::EntryType::Regular, "", b"pwned"),
        ],
    ];
    for entries in cases {
        let err = extract(
            bytes_stream(raw_archive(entries)),
            &dest,
            ExtractOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ExtractError::Unsafe { .. }), "{err:?}");
        assert!(tree(&outside).is_empty());
    }
    // A file entry at a symlink's path replaces the link, not its target.
    put(&outside.join("victim"), b"original");
    symlink(outside.join("victim"), dest.join("file")).unwrap();
    let archive = raw_archive(&[("file", tar::EntryType::Regular, "", b"new")]);
    extract(bytes_stream(archive), &dest, ExtractOptions::default())
        .await
        .unwrap();
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"original");
    assert_eq!(fs::read(dest.join("file")).unwrap(), b"new");
    assert!(
        !fs::symlink_metadata(dest.join("file"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[tokio::test]
async fn a_pre_existing_symlink_in_dest_is_refused_unless_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let dest = tmp.path().join("dest");
    fs::create_dir_all(dest.join("pg_tblspc")).unwrap();
    symlink(&outside, dest.join("pg_tblspc/16400")).unwrap();
    let archive = raw_archive(&[
        ("pg_tblspc/16400/PG_15/", tar::EntryType::Directory, "", b""),
        (
            "pg_tblspc/16400/PG_15/1/2",
            tar::EntryType::Regular,
            "",
            b"data",
        ),
    ]);
    let err = extract(
        bytes_stream(archive.clone()),
        &dest,
        ExtractOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExtractError::Unsafe { .. }), "{err:?}");
    assert!(tree(&outside).is_empty());
    // Listed (in any spelling the spec might use): writes land in it.
    let options = ExtractOptions {
        tablespace_links: vec!["./pg_tblspc/16400/".into()],
        restore_owner: false,
    };
    extract(bytes_stream(archive), &dest, options)
        .await
        .unwrap();
    assert_eq!(fs::read(outside.join("PG_15/1/2")).unwrap(), b"data");
    assert_eq!(
        fs::symlink_metadata(outside.join("PG_15")).unwrap().mode() & 0o777,
        0o700
    );
}

#[tokio::test]
async fn a_top_level_wal_symlink_is_restored_as_an_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("somewhere/else");
    let elsewhere = elsewhere.to_str().unwrap();
    let dest = tmp.path().join("dest");
    let archive = raw_archive(&[
        ("pg_wal", tar::EntryType::Symlink, elsewhere, b""),
        ("./pg_xlog", tar::EntryType::Symlink, elsewhere, b""),
        ("deep/pg_wal", tar::EntryType::Symlink, elsewhere, b""),
    ]);
    for _ in 0..2 {
        extract(
            bytes_stream(archive.clone()),
            &dest,
            ExtractOptions::default(),
        )
        .await
        .unwrap();
        for dir in ["pg_wal", "pg_xlog"] {
            let md = fs::symlink_metadata(dest.join(dir)).unwrap();
            assert!(md.is_dir(), "{dir}");
            assert_eq!(md.mode() & 0o7777, 0o700, "{dir}");
            assert_eq!(fs::read_dir(dest.join(dir)).unwrap().count(), 0, "{dir}");
        }
        // Only the top level is special.
        assert_eq!(
            fs::read_link(dest.join("deep/pg_wal")).unwrap(),
            PathBuf::from(elsewhere)
        );
        assert!(!tmp.path().join("somewhere").exists());
    }
}

#[tokio::test]
async fn an_existing_wal_link_in_dest_is_kept_and_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let dest = tmp.path().join("dest");
    fs::create_dir_all(&wal).unwrap();
    fs::create_dir_all(&dest).unwrap();
    symlink(&wal, dest.join("pg_wal")).unwrap();
    let seg = "pg_wal/000000010000000000000003";
    // A backup of a cluster whose pg_wal was a link, and of one where it was
    // a directory: either way the operator's link stays and the offline
    // backup's segments land in it.
    let with_link = raw_archive(&[
        ("pg_wal", tar::EntryType::Symlink, "/original/pg_wal", b""),
        (seg, tar::EntryType::Regular, "", b"segment"),
    ]);
    let with_dir = raw_archive(&[
        ("pg_wal/", tar::EntryType::Directory, "", b""),
        (seg, tar::EntryType::Regular, "", b"segment2"),
    ]);
    for (archive, data) in [(with_link, &b"segment"[..]), (with_dir, &b"segment2"[..])] {
        extract(bytes_stream(archive), &dest, ExtractOptions::default())
            .await
            .unwrap();
        assert_eq!(fs::read_link(dest.join("pg_wal")).unwrap(), wal);
        assert_eq!(
            fs::read(wal.join("000000010000000000000003")).unwrap(),
            data
        );
    }
    assert!(!Path::new("/original").exists());
    // Other top-level links are still not written through.
    symlink(&wal, dest.join("pg_wal2")).unwrap();
    let archive = raw_archive(&[("pg_wal2/x", tar::EntryType::Regular, "", b"x")]);
    let err = extract(bytes_stream(archive), &dest, ExtractOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ExtractError::Unsafe { .. }), "{err:?}");
}

#[tokio::test]
async fn a_wal_symlink_entry_and_wal_segments_extract_in_either_order() {
    let tmp = tempfile::tempdir().unwrap();
    let link = (
        "pg_wal",
        tar::EntryType::Symlink,
        "/original/pg_wal",
        &b""[..],
    );
    let seg = (
        "pg_wal/000000010000000000000003",
        tar::EntryType::Regular,
        "",
        &b"segment"[..],
    );
    for (i, entries) in [[link, seg], [seg, link]].iter().enumerate() {
        let dest = tmp.path().join(format!("dest{i}"));
        extract(
            bytes_stream(raw_archive(entries)),
            &dest,
            ExtractOptions::default(),
        )
        .await
        .unwrap();
        assert!(fs::symlink_metadata(dest.join("pg_wal")).unwrap().is_dir());
        assert_eq!(
            fs::read(dest.join("pg_wal/000000010000000000000003")).unwrap(),
            b"segment"
        );
    }
}

/// An offline backup of a cluster whose pg_wal is a symlink: the planned
/// partition holds the link, the final one the segments under `pg_wal/`.
#[tokio::test]
async fn an_offline_backup_with_a_wal_symlink_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let wal = tmp.path().join("wal");
    let seg = "000000010000000000000003";
    put(&data.join("PG_VERSION"), b"15\n");
    put(&data.join("global/pg_control"), &control_file());
    put(&wal.join(seg), b"segment");
    symlink(&wal, data.join("pg_wal")).unwrap();
    let mut plan = plan(&data, &Limits::default()).unwrap();
    plan.partitions
        .push(offline_final_partition(&data, 1, &[seg.to_string()]).unwrap());
    let dest = tmp.path().join("dest");
    for archive in archive_of(&plan).await {
        extract(bytes_stream(archive), &dest, ExtractOptions::default())
            .await
            .unwrap();
    }
    assert!(fs::symlink_metadata(dest.join("pg_wal")).unwrap().is_dir());
    assert_eq!(fs::read(dest.join("pg_wal").join(seg)).unwrap(), b"segment");
    assert_eq!(
        fs::read(dest.join("global/pg_control")).unwrap(),
        control_file()
    );
    assert_eq!(tree(&wal), [wal.join(seg)]);
}

#[tokio::test]
async fn wal_e_style_root_entries_and_hard_links() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    let archive = raw_archive(&[
        ("/", tar::EntryType::Directory, "", b""),
        ("base/1/1259", tar::EntryType::Regular, "", b"heap"),
        ("base/1/1259_copy", tar::EntryType::Link, "base/1/1259", b""),
    ]);
    let stats = extract(bytes_stream(archive), &dest, ExtractOptions::default())
        .await
        .unwrap();
    assert_eq!(
        stats,
        wal_e::tar_extract::ExtractStats { files: 2, bytes: 4 }
    );
    let a = fs::metadata(dest.join("base/1/1259")).unwrap();
    let b = fs::metadata(dest.join("base/1/1259_copy")).unwrap();
    assert_eq!(a.ino(), b.ino());

    put(&tmp.path().join("secret"), b"secret");
    for target in ["../secret", "/etc/passwd"] {
        let archive = raw_archive(&[("leak", tar::EntryType::Link, target, b"")]);
        let err = extract(bytes_stream(archive), &dest, ExtractOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ExtractError::Unsafe { .. }),
            "{target}: {err:?}"
        );
        assert!(!dest.join("leak").exists());
    }
}

#[tokio::test]
async fn a_truncated_or_failing_stream_fails_the_extraction() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = raw_archive(&[("f", tar::EntryType::Regular, "", &[5u8; 3000])]);
    let cut = archive[..1024].to_vec();
    let err = extract(
        bytes_stream(cut),
        &tmp.path().join("d1"),
        ExtractOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExtractError::Read(_)), "{err:?}");
    // An error after the archive's end (say a bad checksum in the trailer of
    // the compressed stream) still fails it.
    let failing: ByteStream = stream::iter(vec![
        Ok(Bytes::from(archive)),
        Err(std::io::Error::other("lzop: bad checksum")),
    ])
    .boxed();
    let err = extract(failing, &tmp.path().join("d2"), ExtractOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad checksum"), "{err}");
}

#[tokio::test]
async fn owners_are_restored_when_asked() {
    // Only root can give files away; as anyone else there is nothing to test.
    if fs::metadata("/proc/self").unwrap().uid() != 0 {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_uid(4321);
    h.set_gid(4322);
    h.set_size(2);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, "owned", &b"hi"[..]).unwrap();
    let archive = b.into_inner().unwrap();
    let dest = tmp.path().join("dest");
    let options = ExtractOptions {
        tablespace_links: vec![],
        restore_owner: true,
    };
    extract(bytes_stream(archive.clone()), &dest, options)
        .await
        .unwrap();
    let md = fs::metadata(dest.join("owned")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4321, 4322));
    extract(
        bytes_stream(archive),
        &tmp.path().join("d2"),
        ExtractOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(fs::metadata(tmp.path().join("d2/owned")).unwrap().uid(), 0);
}

/// A stream of `first`, then — once the reader has taken all of it and asks
/// for more, which `asked` reports — of what `rest` delivers.
fn paused_stream(
    first: Vec<u8>,
    asked: tokio::sync::oneshot::Sender<()>,
    rest: tokio::sync::oneshot::Receiver<Vec<u8>>,
) -> ByteStream {
    let head = stream::once(async move { Ok(Bytes::from(first)) });
    let tail = stream::once(async move {
        asked.send(()).unwrap();
        Ok(Bytes::from(rest.await.unwrap()))
    });
    head.chain(tail).boxed()
}

/// Partitions are extracted in parallel into one tree: one makes `name` a
/// symlink to outside after another created the directory `name` and went
/// on.  Neither a later member under it (`tail`) nor the directory's final
/// touches (mtime, fsync) may reach outside.  Fails on main for an empty
/// `tail`: the directory's mtime was set through the symlink, on `outside`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_partitions_cannot_redirect_each_other_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    set_mtime(&outside, 1_000_000_000);
    let target = outside.to_str().unwrap();
    let dir = tar::EntryType::Directory;
    let reg = tar::EntryType::Regular;
    for (name, tail) in [
        ("a", raw_members(&[("a/x", reg, "", b"pwned")])),
        ("b", Vec::new()),
    ] {
        let dest = tmp.path().join(format!("dest-{name}"));
        let (asked_tx, asked_rx) = tokio::sync::oneshot::channel();
        let (rest_tx, rest_rx) = tokio::sync::oneshot::channel();
        let first = raw_members(&[(&format!("{name}/"), dir, "", b"")]);
        let stream = paused_stream(first, asked_tx, rest_rx);
        let one_dest = dest.clone();
        let one =
            tokio::spawn(
                async move { extract(stream, &one_dest, ExtractOptions::default()).await },
            );
        // Partition 1 has made the directory and waits for its next member.
        asked_rx.await.unwrap();
        assert!(dest.join(name).is_dir());
        let zero = raw_archive(&[(name, tar::EntryType::Symlink, target, b"")]);
        extract(bytes_stream(zero), &dest, ExtractOptions::default())
            .await
            .unwrap();
        let mut rest = tail;
        rest.resize(rest.len() + 1024, 0);
        rest_tx.send(rest).unwrap();
        let err = one.await.unwrap().unwrap_err();
        assert!(
            matches!(err, ExtractError::Unsafe { .. }),
            "{name}: {err:?}"
        );
        assert!(tree(&outside).is_empty(), "{name}");
        assert_eq!(mtime(&outside), 1_000_000_000, "{name}");
    }
}

/// Devices and FIFOs are refused, not skipped.  Fails on main, which
/// skipped them and went on.
#[tokio::test]
async fn devices_and_fifos_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, kind) in [
        tar::EntryType::Char,
        tar::EntryType::Block,
        tar::EntryType::Fifo,
    ]
    .into_iter()
    .enumerate()
    {
        let dest = tmp.path().join(format!("dest{i}"));
        let archive = raw_archive(&[
            ("dev", kind, "", b""),
            ("PG_VERSION", tar::EntryType::Regular, "", b"15\n"),
        ]);
        let err = extract(bytes_stream(archive), &dest, ExtractOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ExtractError::Unsafe { .. }),
            "{kind:?}: {err:?}"
        );
        assert!(err.to_string().contains("device"), "{err}");
        assert!(fs::symlink_metadata(dest.join("dev")).is_err(), "{kind:?}");
    }
}

/// Only a directory may take the WAL directory's place: a file or a hard
/// link there would replace the operator's link (and a hard link to a
/// symlink would be followed later).  Fails on main, which replaced the
/// link with the file.
#[tokio::test]
async fn nothing_but_a_directory_takes_the_wal_directory_s_place() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let dest = tmp.path().join("dest");
    fs::create_dir_all(&wal).unwrap();
    fs::create_dir_all(&dest).unwrap();
    symlink(&wal, dest.join("pg_wal")).unwrap();
    put(&dest.join("file"), b"x");
    for entries in [
        [("pg_wal", tar::EntryType::Regular, "", &b"x"[..])],
        [("pg_wal", tar::EntryType::Link, "file", &b""[..])],
        [("pg_xlog", tar::EntryType::Link, "file", &b""[..])],
    ] {
        let err = extract(
            bytes_stream(raw_archive(&entries)),
            &dest,
            ExtractOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ExtractError::Unsafe { .. }), "{err:?}");
        assert_eq!(fs::read_link(dest.join("pg_wal")).unwrap(), wal);
        assert!(fs::symlink_metadata(dest.join("pg_xlog")).is_err());
    }
}

/// A PAX extended header of `len` bytes holding a `comment` record.
fn pax_comment(len: usize) -> Vec<u8> {
    let body_len = len - "9999999 comment=\n".len();
    let record = format!("{len:07} comment={}\n", "c".repeat(body_len));
    assert_eq!(record.len(), len);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_path("PaxHeader/f").unwrap();
    h.set_mode(0o644);
    h.set_size(len as u64);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(record.as_bytes());
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// The tar reader holds long names and PAX records in memory: a member's
/// headers may take 1 MiB, not what the archive says.  Fails on main, which
/// read a PAX header of any size.
#[tokio::test]
async fn headers_larger_than_the_limit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = raw_members(&[("f", tar::EntryType::Regular, "", b"data")]);
    for (len, ok) in [(100_000, true), (2 << 20, false)] {
        let mut archive = pax_comment(len);
        archive.extend_from_slice(&file);
        archive.resize(archive.len() + 1024, 0);
        let dest = tmp.path().join(format!("dest{len}"));
        let result = extract(bytes_stream(archive), &dest, ExtractOptions::default()).await;
        if ok {
            result.unwrap();
            assert_eq!(fs::read(dest.join("f")).unwrap(), b"data");
        } else {
            let err = result.unwrap_err();
            assert!(matches!(err, ExtractError::Read(_)), "{err:?}");
            assert!(err.to_string().contains("exceed 1048576 bytes"), "{err}");
            assert!(fs::symlink_metadata(dest.join("f")).is_err());
        }
    }
}
