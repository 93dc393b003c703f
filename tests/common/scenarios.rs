//! The command scenarios every storage backend must pass: the same
//! wal-push / wal-fetch / backup-push / backup-fetch / backup-list / delete
//! runs, with the real binary and (for backups) a real PostgreSQL 15
//! cluster archiving through the backend.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use futures_util::TryStreamExt;

use super::backend::{BackendEnv, TestBackend};
use super::cli::{WalDir, fake_segment, stderr};
use super::pg::{Cluster, PgBin, make_traversable};

const SEG: usize = 16 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(180);

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// Every key under the prefix, as the store lists them.
pub fn list_keys(env: &BackendEnv) -> Vec<String> {
    let (store, layout) = env.open();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prefix = layout.key("");
    rt.block_on(async {
        store
            .list(&prefix, None)
            .map_ok(|meta| meta.key)
            .try_collect()
            .await
    })
    .unwrap()
}

/// wal-push and wal-fetch: the object lands at WAL-E's key, an identical
/// re-push succeeds, a different one fails and leaves the archive alone,
/// a pool pushes the ready segments, and a missing segment is "not found"
/// (exit 1) without creating the destination.
pub fn wal_push_and_fetch(backend: &dyn TestBackend) {
    let env = backend.fresh_prefix();
    let name = backend.name();
    let wal = WalDir::new();
    let first = "000000010000000000000002";
    let data = fake_segment(SEG, 1);
    let path = wal.add(first, &data, true);

    let out = env.run(&["wal-push", path.to_str().unwrap()]);
    assert_eq!(code(&out), Some(0), "{name}: wal-push: {}", stderr(&out));
    let (_, layout) = env.open();
    let key = layout.wal_key(first);
    assert!(
        list_keys(&env).contains(&key),
        "{name}: {key} is in {:?}",
        list_keys(&env)
    );

    let out = env.run(&["wal-push", path.to_str().unwrap()]);
    assert_eq!(
        code(&out),
        Some(0),
        "{name}: an identical re-push succeeds: {}",
        stderr(&out)
    );
    std::fs::write(&path, fake_segment(SEG, 2)).unwrap();
    let out = env.run(&["wal-push", path.to_str().unwrap()]);
    assert_eq!(
        code(&out),
        Some(1),
        "{name}: a different segment under an archived name fails: {}",
        stderr(&out)
    );

    let dest = wal.scratch("fetched");
    let out = env.run(&["wal-fetch", first, dest.to_str().unwrap()]);
    assert_eq!(code(&out), Some(0), "{name}: wal-fetch: {}", stderr(&out));
    assert!(
        std::fs::read(&dest).unwrap() == data,
        "{name}: wal-fetch returns the first push's bytes"
    );

    // PostgreSQL marks the explicit segment done once wal-push returns.
    std::fs::rename(wal.status(first, "ready"), wal.status(first, "done")).unwrap();

    // A pool of ready segments: the one PostgreSQL names and three more.
    let names: Vec<String> = (3..7)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    let segments: Vec<Vec<u8>> = (0..names.len())
        .map(|i| fake_segment(SEG, 10 + i as u64))
        .collect();
    for (n, d) in names.iter().zip(&segments) {
        wal.add(n, d, true);
    }
    let pushed = wal.pg_wal.join(&names[0]);
    let out = env.run(&["wal-push", "--pool-size", "4", pushed.to_str().unwrap()]);
    assert_eq!(
        code(&out),
        Some(0),
        "{name}: pooled wal-push: {}",
        stderr(&out)
    );
    for n in &names[1..] {
        assert!(wal.status(n, "done").exists(), "{name}: {n} marked done");
    }
    for (n, d) in names.iter().zip(&segments) {
        let dest = wal.scratch(&format!("fetched-{n}"));
        let out = env.run(&["wal-fetch", "--prefetch", "0", n, dest.to_str().unwrap()]);
        assert_eq!(
            code(&out),
            Some(0),
            "{name}: wal-fetch {n}: {}",
            stderr(&out)
        );
        assert!(
            std::fs::read(&dest).unwrap() == *d,
            "{name}: {n} round-trips"
        );
    }

    let missing = wal.scratch("missing");
    let out = env.run(&[
        "wal-fetch",
        "0000000100000000000000FE",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(
        code(&out),
        Some(1),
        "{name}: a segment that is not archived is not found: {}",
        stderr(&out)
    );
    assert!(
        !missing.exists(),
        "{name}: nothing is written for a missing segment"
    );
}

/// A scratch directory the `postgres` user can use, with a launcher for
/// this backend.
struct PgSetup {
    tmp: tempfile::TempDir,
    env: BackendEnv,
    launcher: PathBuf,
}

impl PgSetup {
    fn new(env: BackendEnv) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        make_traversable(tmp.path());
        let launcher = env.launcher(tmp.path());
        PgSetup { tmp, env, launcher }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// wal-e as the test's user, against the cluster's socket.
    fn wal_e(&self, pg: &Cluster, args: &[&str]) -> Output {
        self.env.command(args).envs(pg.env()).output().unwrap()
    }

    fn backup_names(&self, pg: &Cluster) -> Vec<String> {
        let out = self.wal_e(pg, &["backup-list"]);
        assert_eq!(code(&out), Some(0), "backup-list: {}", stderr(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().map(|l| l.split('\t').next().unwrap()),
            Some("name"),
            "backup-list starts with WAL-E's header: {text}"
        );
        let mut names: Vec<String> = lines
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect();
        names.sort();
        names
    }
}

/// Two base backups of a live PostgreSQL 15 cluster archiving through the
/// backend; `delete retain 1 --confirm` keeps the newer; backup-fetch LATEST
/// plus wal-fetch as restore_command recover every row.
pub fn backup_cycle(backend: &dyn TestBackend) {
    let name = backend.name();
    let setup = PgSetup::new(backend.fresh_prefix());
    let pg = Cluster::init_with(PgBin::new(), setup.path(), "primary");
    pg.append_conf(&format!(
        "archive_mode = on\narchive_command = '{} wal-push %p'\n",
        setup.launcher.display()
    ));
    pg.start();
    pg.pgbench_init(1);
    pg.psql("CREATE TABLE marker (note text)");
    pg.psql("CHECKPOINT");

    let data_dir = pg.data_dir.to_str().unwrap().to_string();
    let out = setup.wal_e(&pg, &["backup-push", &data_dir]);
    assert_eq!(code(&out), Some(0), "{name}: backup-push: {}", stderr(&out));
    pg.psql("INSERT INTO marker VALUES ('between the backups')");
    pg.switch_wal();
    pg.psql("CHECKPOINT");
    let out = setup.wal_e(&pg, &["backup-push", &data_dir]);
    assert_eq!(code(&out), Some(0), "{name}: backup-push: {}", stderr(&out));
    let names = setup.backup_names(&pg);
    assert_eq!(names.len(), 2, "{name}: {names:?}");
    pg.psql("INSERT INTO marker VALUES ('after the second backup')");
    let accounts = pg.psql("SELECT count(*), sum(abalance) FROM pgbench_accounts");
    let last = pg.switch_wal();
    pg.wait_for_archived(&last, TIMEOUT);
    pg.stop();

    let out = setup.wal_e(&pg, &["delete", "--confirm", "retain", "1"]);
    assert_eq!(code(&out), Some(0), "{name}: delete: {}", stderr(&out));
    assert_eq!(
        setup.backup_names(&pg),
        vec![names[1].clone()],
        "{name}: the newer backup is kept"
    );

    let restored_dir = setup.path().join("restored");
    let out = setup.wal_e(
        &pg,
        &["backup-fetch", restored_dir.to_str().unwrap(), "LATEST"],
    );
    assert_eq!(
        code(&out),
        Some(0),
        "{name}: backup-fetch: {}",
        stderr(&out)
    );
    for conf in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
        std::fs::copy(pg.data_dir.join(conf), restored_dir.join(conf)).unwrap();
    }
    let restored = Cluster::existing(restored_dir);
    restored.append_conf(&format!(
        "archive_mode = off\nrestore_command = '{} wal-fetch \"%f\" \"%p\"'\n",
        setup.launcher.display()
    ));
    restored.touch("recovery.signal");
    restored.start();
    restored.wait_for_recovery_end(TIMEOUT);
    assert_eq!(
        restored.psql("SELECT string_agg(note, ',' ORDER BY note) FROM marker"),
        "after the second backup,between the backups",
        "{name}"
    );
    assert_eq!(
        restored.psql("SELECT count(*), sum(abalance) FROM pgbench_accounts"),
        accounts,
        "{name}"
    );
}
