//! backup-push and backup-fetch end to end: a real cluster with a user
//! tablespace archives through wal-push, is backed up while pgbench runs,
//! restored with backup-fetch LATEST and recovered to a point in time with
//! wal-fetch; on PostgreSQL 15 (Debian's) and two other majors (npm's
//! prebuilt servers via scripts/install-pg.sh).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::cli::{PgScratch, wal_e_bin};
use common::pg::{Cluster, PgBin, chown_to_postgres};

const TIMEOUT: Duration = Duration::from_secs(180);

/// A scratch directory with a store and two tablespace locations.
struct Setup(PgScratch);

impl std::ops::Deref for Setup {
    type Target = PgScratch;
    fn deref(&self) -> &PgScratch {
        &self.0
    }
}

impl Setup {
    fn new() -> Self {
        Setup(PgScratch::new(&["tblspc", "tblspc-restored"]))
    }

    /// Runs wal-e as root (the test's user) against the cluster's socket.
    fn wal_e(&self, cluster: &Cluster, args: &[&str]) -> Output {
        Command::new(wal_e_bin())
            .args(args)
            .env("WALE_FILE_PREFIX", self.prefix())
            .env("WALE_LOG_DESTINATION", "stderr")
            .envs(cluster.env())
            .output()
            .unwrap()
    }

    fn sentinels(&self) -> Vec<String> {
        let dir = self.path().join("store/basebackups_005");
        std::fs::read_dir(&dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .filter(|n| n.ends_with("_backup_stop_sentinel.json"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn primary(setup: &Setup, bin: PgBin) -> Cluster {
    let pg = Cluster::init_with(bin, setup.path(), "primary");
    pg.append_conf(&format!(
        "archive_mode = on\narchive_command = '{} wal-push %p'\n\
         checkpoint_timeout = 30s\ncheckpoint_completion_target = 0.1\n",
        setup.wal_e_env()
    ));
    pg.start();
    pg
}

fn pitr_end_to_end(bin: PgBin) {
    let setup = Setup::new();
    let major = bin.major();
    let pg = primary(&setup, bin.clone());
    let tblspc = setup.path().join("tblspc");
    pg.psql(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        tblspc.display()
    ));
    pg.psql("CREATE TABLE in_tblspc (id int PRIMARY KEY, v text) TABLESPACE extra");
    pg.psql("INSERT INTO in_tblspc SELECT g, md5(g::text) FROM generate_series(1, 5000) g");
    pg.psql("CREATE TABLE marker (id serial PRIMARY KEY, note text)");
    pg.psql("INSERT INTO marker (note) VALUES ('before backup')");
    pg.pgbench_init(2);
    pg.psql("CHECKPOINT");

    // backup-push while pgbench writes.
    let load = {
        let env = pg.env();
        std::thread::spawn(move || {
            Command::new(PgBin::new().path("pgbench"))
                .args(["-c", "2", "-t", "300", "-n"])
                .envs(env)
                .output()
                .unwrap()
        })
    };
    let out = setup.wal_e(&pg, &["backup-push", pg.data_dir.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "backup-push on PG{major}: {}",
        stderr(&out)
    );
    assert!(load.join().unwrap().status.success());
    assert_eq!(setup.sentinels().len(), 1);

    pg.psql("INSERT INTO marker (note) VALUES ('after backup, before target')");
    let target = pg.psql("SELECT clock_timestamp()");
    pg.psql("INSERT INTO marker (note) VALUES ('after target')");
    let expected_accounts = pg.psql("SELECT count(*), sum(abalance) FROM pgbench_accounts");
    let last = pg.switch_wal();
    pg.wait_for_archived(&last, TIMEOUT);
    pg.stop();

    // Restore elsewhere; the tablespace goes to a new place via --restore-spec.
    let restored_dir = setup.path().join("restored");
    let spec_path = setup.path().join("restore-spec.json");
    let oid_dirs: Vec<String> = std::fs::read_dir(pg.data_dir.join("pg_tblspc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(oid_dirs.len(), 1);
    let oid = &oid_dirs[0];
    let new_loc = setup.path().join("tblspc-restored");
    std::fs::write(
        &spec_path,
        format!(
            r#"{{"tablespaces": ["{oid}"], "{oid}": {{"loc": "{}/", "link": "pg_tblspc/{oid}"}}}}"#,
            new_loc.display()
        ),
    )
    .unwrap();
    let out = setup.wal_e(
        &pg,
        &[
            "backup-fetch",
            "--restore-spec",
            spec_path.to_str().unwrap(),
            restored_dir.to_str().unwrap(),
            "LATEST",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "backup-fetch on PG{major}: {}",
        stderr(&out)
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&restored_dir).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "restored data is private");
    assert_eq!(
        std::fs::read_link(restored_dir.join("pg_tblspc").join(oid)).unwrap(),
        new_loc
    );
    assert!(
        restored_dir.join("backup_label").is_file(),
        "backup_label comes from pg_backup_stop"
    );
    assert!(!restored_dir.join("postmaster.pid").exists());
    chown_to_postgres(&new_loc);
    // As with WAL-E, configuration files are not part of the backup.
    for conf in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
        assert!(
            !restored_dir.join(conf).exists(),
            "{conf} is excluded from backups"
        );
        std::fs::copy(pg.data_dir.join(conf), restored_dir.join(conf)).unwrap();
    }

    let restored = Cluster::existing_with(bin, restored_dir);
    restored.append_conf(&format!(
        "archive_mode = off\nrestore_command = '{} wal-fetch \"%f\" \"%p\"'\n\
         recovery_target_time = '{target}'\nrecovery_target_action = 'promote'\n",
        setup.wal_e_env()
    ));
    restored.touch("recovery.signal");
    restored.start();
    restored.wait_for_recovery_end(TIMEOUT);

    let notes = restored.psql("SELECT string_agg(note, ',' ORDER BY id) FROM marker");
    assert_eq!(
        notes, "before backup,after backup, before target",
        "PG{major}"
    );
    // pgbench ran during the backup and ended before the target: every one
    // of its transactions is there.
    assert_eq!(
        restored.psql("SELECT count(*), sum(abalance) FROM pgbench_accounts"),
        expected_accounts
    );
    assert_eq!(restored.psql("SELECT count(*) FROM in_tblspc"), "5000");
    assert_eq!(
        restored
            .psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'extra'"),
        new_loc.display().to_string()
    );
    restored.psql("CREATE EXTENSION IF NOT EXISTS amcheck");
    let checked = restored.psql(
        "SELECT count(bt_index_check(c.oid)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND c.relpersistence <> 't' AND i.indisvalid",
    );
    assert!(
        checked.parse::<u32>().unwrap() > 10,
        "amcheck ran over {checked} indexes"
    );
}

#[test]
fn pitr_with_a_tablespace_on_postgresql_15() {
    pitr_end_to_end(PgBin::new());
}

#[test]
fn pitr_with_a_tablespace_on_postgresql_13() {
    pitr_end_to_end(PgBin::major_version(13));
}

#[test]
fn pitr_with_a_tablespace_on_postgresql_17() {
    pitr_end_to_end(PgBin::major_version(17));
}

#[test]
fn backup_fetch_refuses_a_running_cluster() {
    let setup = Setup::new();
    let pg = primary(&setup, PgBin::new());
    pg.psql("CHECKPOINT");
    let out = setup.wal_e(&pg, &["backup-push", pg.data_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let before: Vec<PathBuf> = std::fs::read_dir(&pg.data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let out = setup.wal_e(
        &pg,
        &["backup-fetch", pg.data_dir.to_str().unwrap(), "LATEST"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("postmaster.pid"), "{}", stderr(&out));
    let after: Vec<PathBuf> = std::fs::read_dir(&pg.data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        before, after,
        "nothing was written into the live data directory"
    );
}

#[test]
fn backups_need_archiving_and_restores_need_every_partition() {
    let setup = Setup::new();
    let pg = Cluster::init(setup.path(), "unarchived");
    pg.start();
    let out = setup.wal_e(&pg, &["backup-push", pg.data_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("MSG: archive_mode is off"),
        "{}",
        stderr(&out)
    );
    assert!(setup.sentinels().is_empty());
    pg.stop();

    let pg = primary(&setup, PgBin::new());
    pg.psql("CHECKPOINT");
    let out = setup.wal_e(&pg, &["backup-push", pg.data_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let name = setup.sentinels()[0]
        .trim_end_matches("_backup_stop_sentinel.json")
        .to_string();
    let partitions = setup
        .path()
        .join("store/basebackups_005")
        .join(&name)
        .join("tar_partitions");
    std::fs::remove_file(partitions.join("part_00000000.tar.lzo")).unwrap();
    let target = setup.path().join("gap");
    let out = setup.wal_e(&pg, &["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is missing partition 0"),
        "{}",
        stderr(&out)
    );
    assert!(
        !target.join("global/pg_control").exists(),
        "nothing that looks startable"
    );
}

#[test]
fn a_failed_upload_leaves_no_sentinel_and_no_backup_in_progress() {
    let setup = Setup::new();
    let pg = primary(&setup, PgBin::new());
    pg.psql("CHECKPOINT");
    // basebackups_005 is a file: every partition upload fails.
    std::fs::write(setup.path().join("store/basebackups_005"), b"in the way").unwrap();
    let out = setup.wal_e(&pg, &["backup-push", pg.data_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(setup.sentinels().is_empty());
    // The backup's session is gone, so PostgreSQL aborted the backup: a new
    // one can start and finish at once.
    std::fs::remove_file(setup.path().join("store/basebackups_005")).unwrap();
    // The server ends the backend shortly after the client hangs up.
    pg.wait_until("the backup's session to end", TIMEOUT, || {
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'wal-e'") == "0"
    });
    let out = setup.wal_e(&pg, &["backup-push", pg.data_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(setup.sentinels().len(), 1);
}

#[test]
fn a_killed_session_fails_the_backup_fast() {
    let setup = Setup::new();
    let pg = primary(&setup, PgBin::new());
    pg.pgbench_init(2);
    pg.psql("CHECKPOINT");
    // A slow backup (100 kB/s), so there is time to kill its session.
    let child = Command::new(wal_e_bin())
        .args([
            "backup-push",
            "--cluster-read-rate-limit",
            "100000",
            pg.data_dir.to_str().unwrap(),
        ])
        .env("WALE_FILE_PREFIX", setup.prefix())
        .env("WALE_LOG_DESTINATION", "stderr")
        .envs(pg.env())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    pg.wait_until("the backup's session to appear", TIMEOUT, || {
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'wal-e'") == "1"
    });
    pg.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'wal-e'",
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("session"), "{}", stderr(&out));
    assert!(setup.sentinels().is_empty());
}

/// backup-fetch LATEST into `restored/` (with `pg`'s configuration), then
/// recovery through wal-fetch to the end of the archive, not archiving.
fn restore_latest_and_recover(setup: &Setup, pg: &Cluster) -> Cluster {
    let restored_dir = setup.path().join("restored");
    let out = setup.wal_e(
        pg,
        &["backup-fetch", restored_dir.to_str().unwrap(), "LATEST"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    copy_config(&pg.data_dir, &restored_dir);
    let restored = Cluster::existing(restored_dir);
    restored.append_conf(&format!(
        "archive_mode = off\nrestore_command = '{} wal-fetch \"%f\" \"%p\"'\n",
        setup.wal_e_env()
    ));
    restored.touch("recovery.signal");
    restored.start();
    restored.wait_for_recovery_end(TIMEOUT);
    restored
}

/// Copies the configuration files a backup leaves out (as WAL-E did).
fn copy_config(from: &Path, to: &Path) {
    for conf in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
        std::fs::copy(from.join(conf), to.join(conf)).unwrap();
    }
}

#[test]
fn while_offline_backs_up_a_stopped_cluster_named_after_its_checkpoint() {
    let setup = Setup::new();
    let pg = primary(&setup, PgBin::new());
    pg.pgbench_init(1);
    pg.psql("CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 1234) g");
    pg.stop();
    let controldata = Command::new(PgBin::new().path("pg_controldata"))
        .arg(&pg.data_dir)
        .output()
        .unwrap();
    let controldata = String::from_utf8_lossy(&controldata.stdout).into_owned();
    let redo_file = controldata
        .lines()
        .find_map(|l| l.strip_prefix("Latest checkpoint's REDO WAL file:"))
        .unwrap()
        .trim()
        .to_string();

    let out = setup.wal_e(
        &pg,
        &[
            "backup-push",
            "--while-offline",
            pg.data_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sentinels = setup.sentinels();
    assert_eq!(sentinels.len(), 1);
    // The same stopped cluster again: the same backup, which is kept as is.
    let sentinel_path = setup
        .path()
        .join("store/basebackups_005")
        .join(&sentinels[0]);
    let written = std::fs::read(&sentinel_path).unwrap();
    let out = setup.wal_e(
        &pg,
        &[
            "backup-push",
            "--while-offline",
            pg.data_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing to back up"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&sentinel_path).unwrap(), written);
    assert!(
        sentinels[0].starts_with(&format!("base_{redo_file}_")),
        "{} is named after the checkpoint's REDO segment {redo_file}",
        sentinels[0]
    );

    // On a terminal (a pty from `script`), backup-fetch draws a progress bar.
    let restored_dir = setup.path().join("restored");
    let shell = format!(
        "WALE_FILE_PREFIX='{}' WALE_LOG_DESTINATION=stderr '{}' backup-fetch '{}' LATEST",
        setup.prefix(),
        wal_e_bin().display(),
        restored_dir.display()
    );
    let out = Command::new("script")
        .args(["-qec", &shell, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{terminal}");
    assert!(
        terminal.contains("backup-fetch [") && terminal.contains(" ETA "),
        "a progress bar: {terminal}"
    );
    // Without a terminal there is none.
    std::fs::remove_dir_all(&restored_dir).unwrap();
    let out = setup.wal_e(
        &pg,
        &["backup-fetch", restored_dir.to_str().unwrap(), "LATEST"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("backup-fetch ["), "{}", stderr(&out));
    copy_config(&pg.data_dir, &restored_dir);
    let restored = Cluster::existing(restored_dir);
    restored.append_conf("archive_mode = off\n");
    restored.start();
    assert_eq!(restored.psql("SELECT count(*) FROM kept"), "1234");
    assert_eq!(
        restored.psql("SELECT count(*) FROM pgbench_accounts"),
        "100000"
    );

    // A running cluster is refused.
    pg.start();
    let out = setup.wal_e(
        &pg,
        &[
            "backup-push",
            "--while-offline",
            pg.data_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn after_retain_1_the_remaining_backup_restores_and_recovers() {
    let setup = Setup::new();
    let pg = primary(&setup, PgBin::new());
    pg.pgbench_init(1);
    pg.psql("CREATE TABLE marker (note text)");
    pg.psql("CHECKPOINT");
    let out = setup.wal_e(&pg, &["backup-push", pg.data_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    pg.psql("INSERT INTO marker VALUES ('between the backups')");
    pg.switch_wal();
    pg.psql("CHECKPOINT");
    let out = setup.wal_e(&pg, &["backup-push", pg.data_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut names = setup.sentinels();
    names.sort();
    assert_eq!(names.len(), 2);
    pg.psql("INSERT INTO marker VALUES ('after the second backup')");
    let last = pg.switch_wal();
    pg.wait_for_archived(&last, TIMEOUT);
    pg.stop();

    let out = setup.wal_e(&pg, &["delete", "--confirm", "retain", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        setup.sentinels(),
        vec![names[1].clone()],
        "the newer backup is kept"
    );
    let wal_left = std::fs::read_dir(setup.path().join("store/wal_005"))
        .unwrap()
        .count();
    assert!(wal_left > 0);

    let restored = restore_latest_and_recover(&setup, &pg);
    assert_eq!(
        restored.psql("SELECT string_agg(note, ',' ORDER BY note) FROM marker"),
        "after the second backup,between the backups"
    );
}

#[test]
fn tablespaces_need_their_links_unless_blind_restore() {
    let setup = Setup::new();
    let pg = primary(&setup, PgBin::new());
    let tblspc = setup.path().join("tblspc");
    pg.psql(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        tblspc.display()
    ));
    pg.psql(
        "CREATE TABLE in_tblspc TABLESPACE extra AS SELECT g AS id FROM generate_series(1, 777) g",
    );
    pg.psql("CHECKPOINT");
    let out = setup.wal_e(&pg, &["backup-push", pg.data_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let last = pg.switch_wal();
    pg.wait_for_archived(&last, TIMEOUT);
    pg.stop();

    // No links and no spec: refused before anything is downloaded.
    let refused = setup.path().join("refused");
    let out = setup.wal_e(&pg, &["backup-fetch", refused.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("tablespace symlinks are missing"),
        "{}",
        stderr(&out)
    );
    assert!(
        !refused.join("PG_VERSION").exists(),
        "nothing was extracted"
    );

    // --blind-restore: the tablespace becomes a directory under pg_tblspc,
    // and tablespace_map no longer sends PostgreSQL to the old location.
    let blind = setup.path().join("blind");
    let out = setup.wal_e(
        &pg,
        &[
            "backup-fetch",
            "--blind-restore",
            blind.to_str().unwrap(),
            "LATEST",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let oid = std::fs::read_dir(blind.join("pg_tblspc"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        std::fs::symlink_metadata(&oid).unwrap().is_dir(),
        "a real directory, not a link"
    );
    assert!(!blind.join("tablespace_map").exists());
    std::fs::remove_dir_all(&tblspc).unwrap(); // the original location is gone
    copy_config(&pg.data_dir, &blind);
    let restored = Cluster::existing(blind);
    restored.append_conf(&format!(
        "archive_mode = off\nallow_in_place_tablespaces = on\nrestore_command = '{} wal-fetch \"%f\" \"%p\"'\n",
        setup.wal_e_env()
    ));
    restored.touch("recovery.signal");
    restored.start();
    restored.wait_for_recovery_end(TIMEOUT);
    assert_eq!(restored.psql("SELECT count(*) FROM in_tblspc"), "777");
}

/// What `delete` (a dry run unless `--confirm`) logs as deleted: store keys
/// relative to the prefix.
fn deleted_keys(setup: &Setup, pg: &Cluster, args: &[&str]) -> std::collections::BTreeSet<String> {
    let mut argv = vec!["delete"];
    argv.extend_from_slice(args);
    let out = setup.wal_e(pg, &argv);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    let url_prefix = format!("{}/", setup.prefix());
    stderr(&out)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("DETAIL: The key being deleted is "))
        .map(|url| {
            url.trim_end_matches('.')
                .strip_prefix(&url_prefix)
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Every file of the store, relative to it.
fn store_keys(setup: &Setup) -> std::collections::BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut std::collections::BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.insert(path.strip_prefix(base).unwrap().to_str().unwrap().into());
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    let store = setup.path().join("store");
    walk(&store, &store, &mut out);
    out
}

/// After a point-in-time restore from backup A promoted timeline 2 onto the
/// same prefix, the running cluster's backup C starts earlier in the WAL
/// than the old timeline's newer backup B. `retain` and `before` go by
/// sentinel time, so cron's `delete --confirm retain 1` keeps C and the WAL
/// it needs, and C restores to the end of the archive. Fails on main, which
/// kept B by position and deleted C with the WAL of timeline 2.
#[test]
fn retention_after_a_point_in_time_restore_keeps_the_running_timelines_backup() {
    let setup = Setup::new();
    let pg = primary(&setup, PgBin::new());
    pg.psql("CREATE TABLE rows (id serial PRIMARY KEY, note text)");
    pg.psql("INSERT INTO rows (note) VALUES ('before A')");
    pg.psql("CHECKPOINT");
    let push = |cluster: &Cluster| {
        let out = setup.wal_e(
            cluster,
            &["backup-push", cluster.data_dir.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let mut names = setup.sentinels();
        names.sort();
        names
    };
    let a_sentinel = push(&pg).pop().unwrap();
    let name_of = |sentinel: &str| {
        sentinel
            .trim_end_matches("_backup_stop_sentinel.json")
            .to_string()
    };
    let a = name_of(&a_sentinel);
    pg.psql("INSERT INTO rows (note) VALUES ('after A')");
    let target = pg.psql("SELECT clock_timestamp()");
    pg.psql("INSERT INTO rows (note) VALUES ('after the target')");
    // Timeline 1 moves on well past where timeline 2 will leave it.
    for _ in 0..6 {
        pg.psql("INSERT INTO rows (note) SELECT 'filler' FROM generate_series(1, 100)");
        pg.switch_wal();
    }
    pg.psql("CHECKPOINT");
    let b = push(&pg)
        .into_iter()
        .map(|s| name_of(&s))
        .find(|n| *n != a)
        .unwrap();
    let last = pg.switch_wal();
    pg.wait_for_archived(&last, TIMEOUT);
    pg.stop();

    // Point-in-time restore of A to before B, archiving to the same prefix.
    let pitr_dir = setup.path().join("pitr");
    let out = setup.wal_e(&pg, &["backup-fetch", pitr_dir.to_str().unwrap(), &a]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    copy_config(&pg.data_dir, &pitr_dir);
    let pitr = Cluster::existing(pitr_dir);
    pitr.append_conf(&format!(
        "restore_command = '{} wal-fetch \"%f\" \"%p\"'\n\
         recovery_target_time = '{target}'\nrecovery_target_action = 'promote'\n",
        setup.wal_e_env()
    ));
    pitr.touch("recovery.signal");
    pitr.start();
    pitr.wait_for_recovery_end(TIMEOUT);
    assert_eq!(
        pitr.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    pitr.psql("INSERT INTO rows (note) VALUES ('timeline 2, before C')");
    pitr.psql("CHECKPOINT");
    let c = push(&pitr)
        .into_iter()
        .map(|s| name_of(&s))
        .find(|n| *n != a && *n != b)
        .unwrap();
    pitr.psql("INSERT INTO rows (note) VALUES ('timeline 2, after C')");
    let expected = pitr.psql("SELECT string_agg(note, ',' ORDER BY id) FROM rows");
    let last = pitr.switch_wal();
    pitr.wait_for_archived(&last, TIMEOUT);
    pitr.stop();

    // The point of the test: C is the newest backup but not the furthest
    // along in the WAL.
    let position = |name: &str| u64::from_str_radix(&name[13..29], 16).unwrap();
    assert!(c.starts_with("base_00000002"), "{c}");
    assert!(position(&c) < position(&b), "C {c} starts before B {b}");

    // Dry runs: what each choice would delete, from the rule (backups not
    // kept; WAL of every timeline before the oldest kept backup's start).
    let all = store_keys(&setup);
    let backup_keys = |name: &str| -> std::collections::BTreeSet<String> {
        all.iter().filter(|k| k.contains(name)).cloned().collect()
    };
    let wal_before = |horizon: &str| -> std::collections::BTreeSet<String> {
        all.iter()
            .filter(|k| {
                let name = k.strip_prefix("wal_005/").unwrap_or("");
                name.len() >= 24
                    && !name.contains(".history")
                    && u64::from_str_radix(&name[8..24], 16).is_ok_and(|p| p < position(horizon))
            })
            .cloned()
            .collect()
    };
    let union = |sets: &[std::collections::BTreeSet<String>]| {
        sets.iter()
            .flatten()
            .cloned()
            .collect::<std::collections::BTreeSet<String>>()
    };
    let cases: [(&[&str], std::collections::BTreeSet<String>); 5] = [
        (
            &["retain", "1"],
            union(&[backup_keys(&a), backup_keys(&b), wal_before(&c)]),
        ),
        (&["retain", "2"], union(&[backup_keys(&a), wal_before(&c)])),
        (&["before", &a], wal_before(&a)),
        (&["before", &b], union(&[backup_keys(&a), wal_before(&c)])),
        (
            &["before", &c],
            union(&[backup_keys(&a), backup_keys(&b), wal_before(&c)]),
        ),
    ];
    for (args, want) in &cases {
        assert!(!want.is_empty() || args[0] == "before", "{args:?}");
        assert_eq!(&deleted_keys(&setup, &pg, args), want, "{args:?}");
    }
    assert_eq!(store_keys(&setup), all, "dry runs delete nothing");
    assert!(
        all.iter().any(|k| k.ends_with("00000002.history.lzo")),
        "the timeline history is archived"
    );

    let deleted = deleted_keys(&setup, &pg, &["--confirm", "retain", "1"]);
    assert_eq!(deleted, cases[0].1);
    assert_eq!(
        setup.sentinels(),
        vec![format!("{c}_backup_stop_sentinel.json")]
    );
    assert!(
        store_keys(&setup)
            .iter()
            .any(|k| k.ends_with("00000002.history.lzo"))
    );

    // LATEST is C; recovery follows timeline 2 to the end of the archive.
    let restored = restore_latest_and_recover(&setup, &pg);
    assert_eq!(
        restored.psql("SELECT string_agg(note, ',' ORDER BY id) FROM rows"),
        expected
    );
    assert!(
        expected.ends_with("timeline 2, before C,timeline 2, after C"),
        "{expected}"
    );
    assert!(!expected.contains("after the target"), "{expected}");
}

/// Polls (every 50 ms, at most `TIMEOUT`) for a file named `file_name`
/// anywhere under `dir` while `child` runs; returns its path.
fn wait_for_file(child: &mut std::process::Child, dir: &Path, file_name: &str) -> PathBuf {
    fn find(dir: &Path, file_name: &str) -> Option<PathBuf> {
        for entry in std::fs::read_dir(dir).ok()? {
            let path = entry.ok()?.path();
            if path.file_name().is_some_and(|n| n == file_name) {
                return Some(path);
            }
            if path.is_dir()
                && let Some(found) = find(&path, file_name)
            {
                return Some(found);
            }
        }
        None
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(found) = find(dir, file_name) {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {file_name} under {}",
            dir.display()
        );
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("backup-push ended ({status}) before {file_name} appeared: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A backup whose partitions or WAL disappear while it is taken (a delete
/// on another schedule, an archiver that skipped a segment) gets no
/// sentinel. Fails on main, which only checked the last segment.
#[test]
fn backup_push_writes_no_sentinel_when_partitions_or_wal_went_missing() {
    let setup = Setup::new();
    let pg = primary(&setup, PgBin::new());
    // An archiver that reports success for one segment without archiving it.
    let skip = setup.path().join("skip-segment");
    let script = setup.path().join("archive.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$(basename \"$1\")\" = \"$(cat {} 2>/dev/null)\" ] && exit 0\nexec {} wal-push \"$1\"\n",
            skip.display(),
            setup.wal_e_env()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    pg.append_conf(&format!("archive_command = '{} %p'\n", script.display()));
    pg.restart();
    for t in 0..6 {
        pg.psql(&format!(
            "CREATE TABLE t{t} AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 40000) g"
        ));
    }
    pg.psql("CHECKPOINT");
    // Slow enough that the test acts while the backup runs.
    let slow_backup = || {
        Command::new(wal_e_bin())
            .args([
                "backup-push",
                "--pool-size",
                "1",
                "--cluster-read-rate-limit",
                "3000000",
            ])
            .arg(&pg.data_dir)
            .env("WALE_FILE_PREFIX", setup.prefix())
            .env("WALE_LOG_DESTINATION", "stderr")
            .env("WALE_TEST_PARTITION_MAX_BYTES", "4000000")
            .envs(pg.env())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let store = setup.path().join("store");

    // A delete removes the first partition while the rest upload.
    let mut backup = slow_backup();
    let part0 = wait_for_file(&mut backup, &store, "part_00000000.tar.lzo");
    std::fs::remove_file(&part0).unwrap();
    let out = backup.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lost partitions while it was being taken"),
        "{}",
        stderr(&out)
    );
    assert!(setup.sentinels().is_empty());
    std::fs::remove_dir_all(store.join("basebackups_005")).unwrap();
    pg.wait_until("the first backup's session to end", TIMEOUT, || {
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'wal-e'") == "0"
    });

    // The archiver skips the segment the backup started in.
    let mut backup = slow_backup();
    wait_for_file(&mut backup, &store, "extended_version.txt");
    let current = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    std::fs::write(&skip, &current).unwrap();
    pg.psql("INSERT INTO t0 SELECT g, 'x' FROM generate_series(1, 1000) g");
    assert_eq!(pg.switch_wal(), current);
    // The backup now ends in a later segment, which is archived.
    pg.psql("INSERT INTO t0 SELECT g, 'y' FROM generate_series(1, 1000) g");
    let out = backup.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("MSG: the WAL this backup needs is not in the archive"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(&current), "{}", stderr(&out));
    assert!(setup.sentinels().is_empty());
}

/// backup-fetch restores only into an empty directory, and only a backup
/// whose partitions are all there, the last one delivering backup_label
/// and global/pg_control. Fails on main, which restored a backup missing
/// its last partition over an earlier restore with exit 0: the old
/// pg_control and backup_label made the mix look startable.
#[test]
fn backup_fetch_needs_an_empty_directory_and_every_partition() {
    let setup = Setup::new();
    let pg = primary(&setup, PgBin::new());
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g");
    pg.psql("CHECKPOINT");
    let out = Command::new(wal_e_bin())
        .args(["backup-push", pg.data_dir.to_str().unwrap()])
        .env("WALE_FILE_PREFIX", setup.prefix())
        .env("WALE_LOG_DESTINATION", "stderr")
        .env("WALE_TEST_PARTITION_MAX_BYTES", "8000000")
        .envs(pg.env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let name = setup.sentinels()[0]
        .trim_end_matches("_backup_stop_sentinel.json")
        .to_string();
    let backup_dir = setup.path().join("store/basebackups_005").join(&name);
    let sentinel_path = setup
        .path()
        .join("store/basebackups_005")
        .join(&setup.sentinels()[0]);
    let sentinel: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sentinel_path).unwrap()).unwrap();
    let count = sentinel["partition_count"].as_u64().unwrap();
    let parts = std::fs::read_dir(backup_dir.join("tar_partitions"))
        .unwrap()
        .count() as u64;
    assert_eq!(count, parts, "the sentinel records the partitions");
    assert!(count >= 2, "{count} partitions");

    // A first restore, complete.
    let restored = setup.path().join("restored");
    let fetch = |dir: &Path| setup.wal_e(&pg, &["backup-fetch", dir.to_str().unwrap(), &name]);
    let out = fetch(&restored);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The last partition goes missing; a restore over the first one is
    // refused before anything is written.
    let last = backup_dir
        .join("tar_partitions")
        .join(format!("part_{:08}.tar.lzo", count - 1));
    let last_bytes = std::fs::read(&last).unwrap();
    std::fs::remove_file(&last).unwrap();
    std::fs::write(restored.join("global/marker"), b"from the first restore").unwrap();
    let before = std::fs::read(restored.join("global/pg_control")).unwrap();
    let out = fetch(&restored);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("MSG: the cluster directory is not empty"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("HINT: "), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(restored.join("global/pg_control")).unwrap(),
        before
    );
    assert!(restored.join("global/marker").is_file());

    // Into an empty directory: the sentinel says a partition is missing.
    let empty = setup.path().join("empty");
    let out = fetch(&empty);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not have the partitions its sentinel records"),
        "{}",
        stderr(&out)
    );
    assert!(!empty.join("global/pg_control").exists());

    // A sentinel rewritten to match: the last partition left does not hold
    // backup_label and pg_control, so the result is not startable and the
    // restore fails.
    let mut tampered = sentinel.clone();
    tampered["partition_count"] = serde_json::json!(count - 1);
    std::fs::write(&sentinel_path, serde_json::to_vec(&tampered).unwrap()).unwrap();
    let other = setup.path().join("other");
    let out = fetch(&other);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("backup_label missing"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&last, last_bytes).unwrap();
}

/// PostgreSQL 10+'s `log` directory and the server's own `log_directory`
/// inside the data directory are archived empty, like `pg_log`: log files
/// larger than a partition no longer abort every backup. Fails on main
/// ("Attempted to archive a file that is too large").
#[test]
fn server_log_directories_are_left_out_of_backups() {
    let setup = Setup::new();
    let pg = primary(&setup, PgBin::new());
    pg.append_conf("log_directory = 'logs/server'\n");
    pg.restart();
    assert_eq!(pg.psql("SHOW log_directory"), "logs/server");
    for log in ["log/postgresql-Mon.log", "logs/server/postgresql.log"] {
        let path = pg.data_dir.join(log);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Sparse: larger than a partition may hold, cheap to make.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(5_000_000)
            .unwrap();
    }
    let out = Command::new(wal_e_bin())
        .args(["backup-push", pg.data_dir.to_str().unwrap()])
        .env("WALE_FILE_PREFIX", setup.prefix())
        .env("WALE_LOG_DESTINATION", "stderr")
        .env("WALE_TEST_PARTITION_MAX_BYTES", "4000000")
        .envs(pg.env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let restored = setup.path().join("restored");
    let out = setup.wal_e(&pg, &["backup-fetch", restored.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(restored.join("global/pg_control").is_file());
    for dir in ["log", "logs/server"] {
        let entries: Vec<_> = std::fs::read_dir(restored.join(dir)).unwrap().collect();
        assert!(entries.is_empty(), "{dir} restored empty: {entries:?}");
    }
}

/// A sentinel another tool wrote, with keys this port does not know and
/// without the fields a restore does not need, still restores. Fails on
/// main ("the backup's sentinel is not valid JSON": missing field).
#[test]
fn backup_fetch_restores_from_a_sentinel_with_extra_and_missing_keys() {
    let setup = Setup::new();
    let pg = primary(&setup, PgBin::new());
    let out = setup.wal_e(&pg, &["backup-push", pg.data_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sentinel = setup
        .path()
        .join("store/basebackups_005")
        .join(&setup.sentinels()[0]);
    std::fs::write(
        &sentinel,
        r#"{"wal_segment_backup_stop": "000000010000000000000004", "is_permanent": false, "user_data": {"by": "another tool"}, "spec": {"base_prefix": "/elsewhere/", "tool": {"name": "x"}, "tablespaces": []}}"#,
    )
    .unwrap();
    let restored = setup.path().join("restored");
    let out = setup.wal_e(&pg, &["backup-fetch", restored.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(restored.join("global/pg_control").is_file());
    assert!(restored.join("PG_VERSION").is_file());
}
