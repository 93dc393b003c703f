//! Interoperability with the real WAL-E 1.1.1 (`wal_e_py.rs`) on one
//! prefix of any backend: each tool restores a live PostgreSQL cluster
//! from what the other archived, with and without GPG, their backup-lists
//! agree, and our `delete` leaves a WAL-E store WAL-E can restore from.
//! Where we deliberately differ from WAL-E (README, "Deliberate
//! differences from WAL-E"), both behaviours are asserted.

use std::cell::Cell;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use wal_e::storage::{PutOptions, PutPayload};

use super::backend::{BackendEnv, TestBackend};
use super::pg::{Cluster, PgBin, make_traversable};
use super::scenarios::list_keys;
use super::wal_e_py::{SharedKey, Side, Tool};

const TIMEOUT: Duration = Duration::from_secs(180);

/// WAL-E's `backup-list` header.
const HEADER: &str = "name\tlast_modified\texpanded_size_bytes\twal_segment_backup_start\t\
                      wal_segment_offset_backup_start\twal_segment_backup_stop\t\
                      wal_segment_offset_backup_stop";

const LZOP_MAGIC: &[u8] = b"\x89LZO\x00\r\n\x1a\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    Off,
    /// Both tools encrypt to, and decrypt with, one key in one GnuPG home.
    Gpg,
}

/// One prefix, a scratch directory with the primary cluster, and both
/// tools set up on them.
struct Stage {
    what: String,
    store: BackendEnv,
    primary: Cluster,
    ours: Side,
    wal_e: Side,
    _key: Option<SharedKey>,
    last_backup: Cell<Option<Instant>>,
    tmp: tempfile::TempDir,
}

impl Stage {
    /// A new primary on `bin`, archiving with `archiver`, started and
    /// filled with pgbench's tables (scale 1) and an empty `marker` table.
    fn new(backend: &dyn TestBackend, encryption: Encryption, bin: PgBin, archiver: Tool) -> Stage {
        let tmp = tempfile::tempdir().unwrap();
        make_traversable(tmp.path());
        let store = backend.fresh_prefix();
        let primary = Cluster::init_with(bin, tmp.path(), "primary");
        let key = (encryption == Encryption::Gpg).then(SharedKey::new);
        let mut extra = primary.env();
        extra.extend(key.iter().flat_map(SharedKey::vars));
        let ours = Side::new(Tool::Ours, backend, &store, &extra);
        let wal_e = Side::new(Tool::WalE, backend, &store, &extra);
        let stage = Stage {
            what: format!("{} ({encryption:?})", backend.name()),
            store,
            primary,
            ours,
            wal_e,
            _key: key,
            last_backup: Cell::new(None),
            tmp,
        };
        let launcher = stage.side(archiver).launcher(stage.tmp.path());
        stage.primary.append_conf(&format!(
            "archive_mode = on\narchive_command = '{} wal-push %p'\n",
            launcher.display()
        ));
        stage.primary.start();
        stage.primary.pgbench_init(1);
        stage.primary.psql("CREATE TABLE marker (note text)");
        stage
    }

    fn side(&self, tool: Tool) -> &Side {
        match tool {
            Tool::Ours => &self.ours,
            Tool::WalE => &self.wal_e,
        }
    }

    /// WAL-E's file backend never reads sentinels, so its `--detail`
    /// columns stay empty there.
    fn is_file(&self) -> bool {
        self.store.get("WALE_FILE_PREFIX").is_some()
    }

    /// A base backup of the primary with `tool`'s backup-push, after a
    /// CHECKPOINT (WAL-E's start of backup waits for a spread checkpoint).
    /// Backups finish at least a second apart: LATEST is the backup whose
    /// sentinel is the newest, and Azure keeps whole seconds.
    fn backup_push(&self, tool: Tool) {
        if let Some(previous) = self.last_backup.get() {
            std::thread::sleep(Duration::from_secs(1).saturating_sub(previous.elapsed()));
        }
        self.primary.psql("CHECKPOINT");
        let data_dir = self.primary.data_dir.to_str().unwrap();
        let started = Instant::now();
        self.side(tool).ok(&["backup-push", data_dir]);
        self.last_backup.set(Some(Instant::now()));
        eprintln!(
            "{}: {} backup-push took {:.1?}",
            self.what,
            tool.label(),
            started.elapsed()
        );
    }

    /// Two base backups by `tool` with marker rows between and after them,
    /// then the primary stopped: the rows a restore must reproduce and the
    /// two backups' names, once both tools list them alike.
    fn two_backups(&self, tool: Tool, encryption: Encryption) -> (Snapshot, Vec<String>) {
        self.backup_push(tool);
        self.mark("between the backups");
        self.backup_push(tool);
        self.mark("after the second backup");
        let expected = self.finish_primary();
        self.check_encryption(encryption);
        let names = self.compare_backup_lists();
        assert_eq!(names.len(), 2, "{}: {names:?}", self.what);
        (expected, names)
    }

    /// Writes a marker row and closes its WAL segment.
    fn mark(&self, note: &str) {
        self.primary
            .psql(&format!("INSERT INTO marker VALUES ('{note}')"));
        self.primary.switch_wal();
    }

    /// Stops the primary once everything it wrote is archived; returns the
    /// rows a restore must reproduce.
    fn finish_primary(&self) -> Snapshot {
        let expected = Snapshot::of(&self.primary);
        let last = self.primary.switch_wal();
        self.primary.wait_for_archived(&last, TIMEOUT);
        self.primary.stop();
        expected
    }

    /// `tool`'s backup-fetch LATEST into `name`, then recovery to the end
    /// of the archive with `tool`'s wal-fetch as restore_command. Checks
    /// that the restored `backup_label` is a plain file of the backup
    /// `latest` before starting the server.
    fn restore(&self, tool: Tool, name: &str, latest: &str) -> Cluster {
        let side = self.side(tool);
        let dir = self.tmp.path().join(name);
        let started = Instant::now();
        side.ok(&["backup-fetch", dir.to_str().unwrap(), "LATEST"]);
        let label = std::fs::symlink_metadata(dir.join("backup_label"))
            .map(|m| m.is_file())
            .unwrap_or(false);
        assert!(
            label,
            "{}: {} restored backup_label",
            self.what,
            tool.label()
        );
        let label = std::fs::read_to_string(dir.join("backup_label")).unwrap();
        let start = &latest["base_".len()..][..24];
        assert!(
            label.contains(&format!("(file {start})")),
            "{}: backup_label of {latest}: {label}",
            self.what
        );
        for conf in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
            std::fs::copy(self.primary.data_dir.join(conf), dir.join(conf)).unwrap();
        }
        let restored = Cluster::existing_with(self.primary.bin().clone(), dir);
        let fetch = match tool {
            Tool::Ours => "wal-fetch",
            Tool::WalE => "wal-fetch --prefetch 0",
        };
        restored.append_conf(&format!(
            "archive_mode = off\nrestore_command = '{} {fetch} \"%f\" \"%p\"'\n",
            side.launcher(self.tmp.path()).display()
        ));
        restored.touch("recovery.signal");
        restored.start();
        restored.wait_for_recovery_end(TIMEOUT);
        eprintln!(
            "{}: {} restore took {:.1?}",
            self.what,
            tool.label(),
            started.elapsed()
        );
        restored
    }

    /// Every stored `.lzo` object is an lzop stream, or with encryption an
    /// OpenPGP message; so both tools really did (or did not) encrypt.
    fn check_encryption(&self, encryption: Encryption) {
        let keys: Vec<String> = list_keys(&self.store)
            .into_iter()
            .filter(|k| k.ends_with(".lzo"))
            .collect();
        assert!(!keys.is_empty(), "{}: no .lzo objects", self.what);
        for key in keys {
            let head = object_head(&self.store, &key);
            match encryption {
                Encryption::Off => assert!(
                    head.starts_with(LZOP_MAGIC),
                    "{}: {key} is an lzop stream",
                    self.what
                ),
                // A public-key encrypted session key packet, old or new format.
                Encryption::Gpg => assert!(
                    head[0] == 0x85 || head[0] == 0xc1,
                    "{}: {key} is encrypted, starts {:02x?}",
                    self.what,
                    &head[..4]
                ),
            }
        }
    }

    /// Both tools' backup-list (plain, `--detail` and `LATEST`) on this
    /// prefix; returns the backup names, oldest first.
    fn compare_backup_lists(&self) -> Vec<String> {
        // Each lists in its store's order.
        let ours = sorted(backup_list(&self.ours, &[]));
        let theirs = sorted(backup_list(&self.wal_e, &[]));
        let names: Vec<String> = theirs.iter().map(|r| r[0].clone()).collect();
        assert_eq!(
            ours.iter().map(|r| &r[0]).collect::<Vec<_>>(),
            names.iter().collect::<Vec<_>>(),
            "{}: names",
            self.what
        );
        for (o, t) in ours.iter().zip(&theirs) {
            assert!(
                same_last_modified(&o[1], &t[1]),
                "{}: last_modified {o:?} {t:?}",
                self.what
            );
            assert_eq!(o[2..], t[2..], "{}: start segment and offset", self.what);
            assert_eq!(
                [&o[2], &o[5], &o[6]],
                ["", "", ""],
                "{}: detail columns only with --detail",
                self.what
            );
        }

        let ours = sorted(backup_list(&self.ours, &["--detail"]));
        let theirs = sorted(backup_list(&self.wal_e, &["--detail"]));
        assert_eq!(ours.len(), theirs.len(), "{}: --detail", self.what);
        for (o, t) in ours.iter().zip(&theirs) {
            assert_eq!(
                [&o[0], &o[3], &o[4]],
                [&t[0], &t[3], &t[4]],
                "{}",
                self.what
            );
            if self.is_file() {
                // Deliberate difference: WAL-E's file backend never read the
                // sentinel; we fill the columns on every backend.
                assert_eq!([&t[2], &t[5], &t[6]], ["", "", ""], "{}: {t:?}", self.what);
                assert!(o[2].parse::<u64>().unwrap() > 0, "{}: {o:?}", self.what);
                assert!(o[5] >= o[3], "{}: stop after start: {o:?}", self.what);
                assert_eq!(o[6].len(), 8, "{}: {o:?}", self.what);
            } else {
                assert_eq!(o[2..], t[2..], "{}: detail", self.what);
            }
        }

        let ours = backup_list(&self.ours, &["LATEST"]);
        let theirs = backup_list(&self.wal_e, &["LATEST"]);
        assert_eq!(theirs.len(), 1, "{}: LATEST {theirs:?}", self.what);
        assert_eq!(ours[0][0], theirs[0][0], "{}: LATEST", self.what);
        assert_eq!(
            theirs[0][0],
            *names.last().unwrap(),
            "{}: LATEST is the newest backup",
            self.what
        );
        names
    }
}

/// What a restore must reproduce.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    accounts: String,
    markers: String,
}

impl Snapshot {
    fn of(pg: &Cluster) -> Snapshot {
        Snapshot {
            accounts: pg.psql("SELECT count(*), sum(abalance) FROM pgbench_accounts"),
            markers: pg.psql("SELECT string_agg(note, ',' ORDER BY note) FROM marker"),
        }
    }
}

/// The first bytes of an object.
fn object_head(env: &BackendEnv, key: &str) -> Vec<u8> {
    let (store, _) = env.open();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut stream = store.get(key).await.unwrap().stream;
        let mut head = Vec::new();
        while head.len() < 16 {
            match stream.try_next().await.unwrap() {
                Some(chunk) => head.extend_from_slice(&chunk),
                None => break,
            }
        }
        head
    })
}

/// `backup-list ARGS`: checks WAL-E's format (header, tab-separated,
/// `\r\n` line ends) and returns the rows as 7 columns each.
fn backup_list(side: &Side, args: &[&str]) -> Vec<Vec<String>> {
    let mut all = vec!["backup-list"];
    all.extend(args);
    let out = side.ok(&all);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines = text
        .strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("{}: {args:?} ends with \\r\\n: {text:?}", side.tool.label()));
    let mut lines = lines.split("\r\n");
    assert_eq!(lines.next(), Some(HEADER), "{}", side.tool.label());
    lines
        .map(|l| {
            let row: Vec<String> = l.split('\t').map(str::to_string).collect();
            assert_eq!(row.len(), 7, "{}: {l:?}", side.tool.label());
            row
        })
        .collect()
}

/// Rows by name: for backups of one timeline, oldest first.
fn sorted(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.sort();
    rows
}

/// The same instant in the same format, except that Python's `isoformat`
/// leaves out all-zero microseconds (we always print six digits).
fn same_last_modified(ours: &str, theirs: &str) -> bool {
    ours == theirs || ours.strip_suffix(".000000") == Some(theirs)
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// WAL-E archives a PostgreSQL 14 cluster (its backup-push needs exclusive
/// backups) and takes two base backups; both backup-lists agree; our
/// backup-fetch LATEST and wal-fetch recover it to the end of the archive;
/// our `delete --confirm retain 1` leaves the newer backup, which WAL-E
/// lists alone and restores.
pub fn wal_e_archives_we_restore(backend: &dyn TestBackend, encryption: Encryption) {
    let stage = Stage::new(backend, encryption, PgBin::major_version(14), Tool::WalE);
    let what = &stage.what;
    let (expected, names) = stage.two_backups(Tool::WalE, encryption);
    let restored = stage.restore(Tool::Ours, "restored-by-us", &names[1]);
    assert_eq!(Snapshot::of(&restored), expected, "{what}: our restore");
    restored.stop();

    let before = list_keys(&stage.store);
    stage.ours.ok(&["delete", "--confirm", "retain", "1"]);
    let after = list_keys(&stage.store);
    assert!(
        before.iter().any(|k| k.contains(&names[0]))
            && !after.iter().any(|k| k.contains(&names[0])),
        "{what}: the older backup is deleted: {after:?}"
    );
    let newer_start = &names[1]["base_".len()..][..24];
    for key in &after {
        if let Some(wal) = key.rsplit_once("/wal_005/").map(|(_, w)| w) {
            assert!(
                wal.contains(".history") || wal[..24] >= *newer_start,
                "{what}: WAL before the kept backup is deleted: {key}"
            );
        }
    }
    let listed: Vec<String> = backup_list(&stage.wal_e, &[])
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(
        listed,
        [names[1].clone()],
        "{what}: WAL-E lists the kept backup"
    );
    let restored = stage.restore(Tool::WalE, "restored-by-wal-e", &names[1]);
    assert_eq!(
        Snapshot::of(&restored),
        expected,
        "{what}: WAL-E's restore after our delete"
    );
}

/// We archive a PostgreSQL 15 cluster and take two base backups
/// (non-exclusive: `backup_label` is in the tar); both backup-lists agree;
/// WAL-E's backup-fetch LATEST and wal-fetch recover it to the end of the
/// archive. Then the deliberate differences that show on such a store.
pub fn we_archive_wal_e_restores(backend: &dyn TestBackend, encryption: Encryption) {
    let stage = Stage::new(backend, encryption, PgBin::new(), Tool::Ours);
    let what = &stage.what;
    let (expected, names) = stage.two_backups(Tool::Ours, encryption);
    let restored = stage.restore(Tool::WalE, "restored-by-wal-e", &names[1]);
    assert_eq!(Snapshot::of(&restored), expected, "{what}: WAL-E's restore");
    restored.stop();

    deliberate_differences(&stage);
}

/// What WAL-E and we do differently on the same store, both asserted
/// (README, "Deliberate differences from WAL-E"); nothing is deleted.
fn deliberate_differences(stage: &Stage) {
    let what = &stage.what;
    let keys = list_keys(&stage.store);
    let dest = stage.tmp.path().join("missing-segment");
    let dest = dest.to_str().unwrap();
    let missing = [
        "wal-fetch",
        "--prefetch",
        "0",
        "0000000100000000000000FE",
        dest,
    ];

    // A segment that is not archived: exit 1 from us; WAL-E's file backend
    // crashed on it (exit 2), which PostgreSQL takes as "not found" too.
    let out = stage.ours.run(&missing);
    assert_eq!(
        code(&out),
        Some(1),
        "{what}: our wal-fetch of a missing segment"
    );
    let out = stage.wal_e.run(&missing);
    let wal_e_missing = if stage.is_file() { 2 } else { 1 };
    assert_eq!(
        code(&out),
        Some(wal_e_missing),
        "{what}: WAL-E's wal-fetch of a missing segment: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `delete retain 0`: WAL-E accepted it (and would delete old WAL but
    // keep every backup); we refuse. Dry runs, both.
    let retain0 = ["delete", "retain", "0"];
    let out = stage.wal_e.run(&retain0);
    assert_eq!(code(&out), Some(0), "{what}: WAL-E's delete retain 0");
    let out = stage.ours.run(&retain0);
    assert_eq!(code(&out), Some(1), "{what}: our delete retain 0");

    // `delete before <WAL segment>`, as WAL-E's help offers: WAL-E failed an
    // assertion (exit 2); we accept it. Dry runs, both.
    let before = ["delete", "before", "000000010000000000000002"];
    let out = stage.wal_e.run(&before);
    assert_eq!(
        code(&out),
        Some(2),
        "{what}: WAL-E's delete before a segment"
    );
    let out = stage.ours.run(&before);
    assert_eq!(
        code(&out),
        Some(0),
        "{what}: our delete before a segment: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(!Path::new(dest).exists(), "{what}: nothing fetched");
    assert_eq!(
        list_keys(&stage.store),
        keys,
        "{what}: dry runs delete nothing"
    );

    // Names are matched whole: to WAL-E, which matched only their
    // beginning, a copy of a sentinel under another name is one more
    // backup; we leave it out (with a warning).
    let sentinel = keys
        .iter()
        .find(|k| k.ends_with("_backup_stop_sentinel.json"))
        .unwrap();
    copy_object(&stage.store, sentinel, &format!("{sentinel}.bak"));
    assert_eq!(backup_list(&stage.ours, &[]).len(), 2, "{what}: our list");
    assert_eq!(
        backup_list(&stage.wal_e, &[]).len(),
        3,
        "{what}: WAL-E's list"
    );
}

/// Stores a copy of the object `from` under `to`.
fn copy_object(env: &BackendEnv, from: &str, to: &str) {
    let (store, _) = env.open();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bytes = store
            .get(from)
            .await
            .unwrap()
            .bytes(usize::MAX)
            .await
            .unwrap();
        store
            .put(to, PutPayload::from_bytes(bytes), &PutOptions::default())
            .await
            .unwrap();
    });
}
