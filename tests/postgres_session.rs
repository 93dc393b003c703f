//! `wal_e::postgres` against the libpq environment, real PostgreSQL servers
//! (PG_BINDIR, PostgreSQL 15 by default) and their `pg_control` files.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pg::{Cluster, PgBin, chown_to_postgres, make_traversable, run_as_postgres};
use wal_e::layout::{BackupName, SegmentName};
use wal_e::postgres::tls::SslMode;
use wal_e::postgres::{
    ConnectParams, DbState, Host, Lsn, PasswordSource, Session, backup_label_name,
    check_backup_version, read_control_file, segment_of,
};

const TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Name of the effective OS user, straight from the passwd database.
fn os_user_name() -> String {
    // SAFETY: getpwuid's result is checked for NULL and copied at once
    // (tests only, single call).
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        assert!(!pw.is_null());
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn write_private(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------
// ConnectParams::from_env

#[test]
fn from_env_defaults() {
    let home = tempfile::tempdir().unwrap();
    let env = env_of(&[("HOME", home.path().to_str().unwrap())]);
    let p = ConnectParams::from_env(&env).unwrap();
    let expected_dir = if Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql"
    } else {
        "/tmp"
    };
    assert_eq!(p.host, Host::Socket(PathBuf::from(expected_dir)));
    assert_eq!(p.hostaddr, None);
    assert_eq!(p.port, 5432);
    assert_eq!(p.user, os_user_name());
    assert_eq!(p.dbname, "postgres");
    assert_eq!(p.application_name, "wal-e");
    assert_eq!(p.connect_timeout, None);
    assert_eq!(p.options, None);
    assert!(!p.has_password());
    assert_eq!(
        p.describe(),
        format!(
            "host={expected_dir} port=5432 user={} dbname=postgres",
            os_user_name()
        )
    );
}

#[test]
fn from_env_hosts_ports_and_the_rest() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_str().unwrap();
    let params = |pairs: &[(&str, &str)]| {
        let mut env = env_of(pairs);
        env.insert("HOME".into(), home.into());
        ConnectParams::from_env(&env)
    };

    let p = params(&[("PGHOST", "/srv/pg/sock,/other"), ("PGPORT", "6543,7000")]).unwrap();
    assert_eq!(p.host, Host::Socket(PathBuf::from("/srv/pg/sock")));
    assert_eq!(p.port, 6543);

    let p = params(&[("PGHOST", "db1.example.com,db2.example.com")]).unwrap();
    assert_eq!(p.host, Host::Tcp("db1.example.com".into()));
    let p = params(&[("PGHOST", "10.1.2.3"), ("PGHOSTADDR", "127.0.0.1")]).unwrap();
    assert_eq!(p.host, Host::Tcp("10.1.2.3".into()));
    assert_eq!(p.hostaddr, Some("127.0.0.1".parse().unwrap()));
    // An empty PGHOST is the same as none, as in libpq.
    let p = params(&[("PGHOST", "")]).unwrap();
    assert!(matches!(p.host, Host::Socket(_)), "{p:?}");

    let p = params(&[
        ("PGUSER", "backup"),
        ("PGDATABASE", "app"),
        ("PGAPPNAME", "nightly"),
        ("PGCONNECT_TIMEOUT", "10"),
        ("PGOPTIONS", "-c work_mem=8MB"),
    ])
    .unwrap();
    assert_eq!(
        (
            p.user.as_str(),
            p.dbname.as_str(),
            p.application_name.as_str()
        ),
        ("backup", "app", "nightly")
    );
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(10)));
    assert_eq!(p.options.as_deref(), Some("-c work_mem=8MB"));
    // libpq's minimum timeout is 2 s; zero and negative mean no timeout.
    for (raw, expected) in [("1", Some(2)), ("0", None), ("-5", None), ("2", Some(2))] {
        let p = params(&[("PGCONNECT_TIMEOUT", raw)]).unwrap();
        assert_eq!(
            p.connect_timeout,
            expected.map(Duration::from_secs),
            "{raw}"
        );
    }

    for (name, value) in [
        ("PGPORT", "abc"),
        ("PGPORT", "0"),
        ("PGPORT", "70000"),
        ("PGCONNECT_TIMEOUT", "ten"),
        ("PGHOSTADDR", "db.example.com"),
        ("PGSSLMODE", "sometimes"),
        ("PGHOST", "@abstract"),
    ] {
        let err = params(&[(name, value)]).unwrap_err();
        assert_eq!(
            err.msg,
            format!("invalid value for {name}"),
            "{name}={value}"
        );
        assert!(err.detail.unwrap().contains(value), "{name}={value}");
    }
    let err = params(&[("PGSERVICE", "main")]).unwrap_err();
    assert_eq!(err.msg, "PGSERVICE is not supported");
}

#[test]
fn from_env_sslmode() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_str().unwrap();
    let params = |host: &str, mode: Option<&str>| {
        let mut pairs = vec![("HOME", home), ("PGHOST", host)];
        pairs.extend(mode.map(|m| ("PGSSLMODE", m)));
        ConnectParams::from_env(&env_of(&pairs)).unwrap()
    };
    assert_eq!(params("db.example.com", None).ssl_mode, SslMode::Prefer);
    for (raw, mode) in [
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ] {
        assert_eq!(params("db.example.com", Some(raw)).ssl_mode, mode);
        // Unix sockets never use TLS, as in libpq, so nothing is checked.
        assert_eq!(params("/var/run/postgresql", Some(raw)).ssl_mode, mode);
    }
    let p = params("db.example.com", None);
    let dot = std::path::Path::new(home).join(".postgresql");
    assert_eq!(p.tls_files.root_cert, Some(dot.join("root.crt")));
    assert_eq!(p.tls_files.client_cert, dot.join("postgresql.crt"));
    assert_eq!(p.tls_files.client_key, dot.join("postgresql.key"));
    let p =
        ConnectParams::from_env(&env_of(&[("HOME", home), ("PGSSLROOTCERT", "system")])).unwrap();
    assert_eq!(p.tls_files.root_cert, None, "system trust store");
}

#[test]
fn from_env_pgpass() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    fs::create_dir(&home).unwrap();
    let passfile = dir.path().join("pgpass");
    write_private(
        &passfile,
        "# host:port:database:user:password\n\
         /srv/sock:5433:postgres:alice:socket-pw\n\
         localhost:5432:postgres:alice:default-socket-pw\n\
         db.example.com:5432:*:alice:tcp\\:pw\\\\1\n\
         db.example.com:*:postgres:*:any-user-pw\n\
         *:*:*:carol:carol-pw\n",
        0o600,
    );
    let passfile_str = passfile.to_str().unwrap();
    let lookup = |pairs: &[(&str, &str)]| {
        let mut env = env_of(pairs);
        env.insert("HOME".into(), home.to_str().unwrap().into());
        env.entry("PGPASSFILE".into())
            .or_insert_with(|| passfile_str.into());
        ConnectParams::from_env(&env).unwrap()
    };
    let from_file = Some(PasswordSource::File(passfile.clone()));

    // A socket directory matches its own path ...
    let p = lookup(&[
        ("PGHOST", "/srv/sock"),
        ("PGPORT", "5433"),
        ("PGUSER", "alice"),
    ]);
    assert_eq!(p.password_source(), from_file.as_ref());
    assert!(format!("{p:?}").contains("<from"));
    assert!(!format!("{p:?}").contains("socket-pw"));
    // ... and a default socket directory matches "localhost".
    let p = lookup(&[("PGHOST", "/tmp"), ("PGUSER", "alice")]);
    assert_eq!(p.password_source(), from_file.as_ref());
    assert!(!format!("{p:?}").contains("default-socket-pw"));
    // Wrong port: no line matches, no password.
    let p = lookup(&[
        ("PGHOST", "/srv/sock"),
        ("PGPORT", "5434"),
        ("PGUSER", "alice"),
    ]);
    assert!(!p.has_password());
    // Wildcards in the database, port and user fields.
    let p = lookup(&[
        ("PGHOST", "db.example.com"),
        ("PGUSER", "bob"),
        ("PGPORT", "6000"),
    ]);
    assert!(p.has_password());
    let p = lookup(&[
        ("PGHOST", "db.example.com"),
        ("PGUSER", "bob"),
        ("PGDATABASE", "app"),
    ]);
    assert!(!p.has_password(), "database must match");
    let p = lookup(&[
        ("PGHOST", "anywhere"),
        ("PGUSER", "carol"),
        ("PGDATABASE", "x"),
    ]);
    assert!(p.has_password());

    // PGPASSWORD wins over the file.
    let p = lookup(&[
        ("PGHOST", "/tmp"),
        ("PGUSER", "alice"),
        ("PGPASSWORD", "env-pw"),
    ]);
    assert_eq!(p.password_source(), Some(&PasswordSource::Environment));
    assert!(!format!("{p:?}").contains("env-pw"));
    assert!(!p.describe().contains("env-pw"));

    // Without PGPASSFILE, $HOME/.pgpass is read.
    write_private(&home.join(".pgpass"), "*:*:*:dave:home-pw\n", 0o600);
    let mut env = env_of(&[
        ("HOME", home.to_str().unwrap()),
        ("PGUSER", "dave"),
        ("PGHOST", "/tmp"),
    ]);
    let p = ConnectParams::from_env(&env).unwrap();
    assert_eq!(
        p.password_source(),
        Some(&PasswordSource::File(home.join(".pgpass")))
    );
    // A file group or others can read is ignored, as libpq does.
    fs::set_permissions(home.join(".pgpass"), fs::Permissions::from_mode(0o644)).unwrap();
    assert!(!ConnectParams::from_env(&env).unwrap().has_password());
    fs::set_permissions(home.join(".pgpass"), fs::Permissions::from_mode(0o660)).unwrap();
    assert!(!ConnectParams::from_env(&env).unwrap().has_password());
    // A missing password file is no error.
    env.insert(
        "PGPASSFILE".into(),
        dir.path().join("absent").to_str().unwrap().into(),
    );
    assert!(!ConnectParams::from_env(&env).unwrap().has_password());
}

#[tokio::test]
async fn connect_failure_names_the_target_but_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_of(&[
        ("HOME", dir.path().to_str().unwrap()),
        ("PGHOST", dir.path().to_str().unwrap()),
        ("PGPORT", "5999"),
        ("PGUSER", "someone"),
        ("PGDATABASE", "somedb"),
        ("PGPASSWORD", "hunter2-secret"),
    ]);
    let params = ConnectParams::from_env(&env).unwrap();
    let err = Session::connect(&params).await.unwrap_err();
    assert_eq!(err.msg, "could not connect to PostgreSQL");
    let detail = err.detail.clone().unwrap();
    for part in [
        format!("host={}", dir.path().display()),
        "port=5999".into(),
        "user=someone".into(),
        "dbname=somedb".into(),
    ] {
        assert!(detail.contains(&part), "{part} missing in {detail}");
    }
    assert!(err.hint.clone().unwrap().contains(".s.PGSQL.5999"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

// ---------------------------------------------------------------------------
// Against a real server

/// A scratch directory the `postgres` user can enter, with a HOME (no
/// .pgpass) for the tool's environment.
struct Scratch {
    tmp: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        make_traversable(tmp.path());
        fs::create_dir(tmp.path().join("home")).unwrap();
        Scratch { tmp }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// A directory owned by `postgres` (mode 0700), e.g. for archives or
    /// tablespaces.
    fn postgres_dir(&self, name: &str) -> PathBuf {
        let dir = self.path().join(name);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        chown_to_postgres(&dir);
        dir
    }

    /// The cluster's libpq variables plus `extra`, HOME pointing here.
    fn env(&self, cluster: &Cluster, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = cluster.env().into_iter().collect();
        env.insert(
            "HOME".into(),
            self.path().join("home").to_str().unwrap().into(),
        );
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        env
    }

    async fn connect(&self, cluster: &Cluster, extra: &[(&str, &str)]) -> Session {
        let params = ConnectParams::from_env(&self.env(cluster, extra)).unwrap();
        Session::connect(&params)
            .await
            .unwrap_or_else(|e| panic!("{e}\n--- server log ---\n{}", cluster.log_tail()))
    }
}

/// `pg_walfile_name_offset(lsn)` asked in a separate psql session.
fn walfile_name_offset(cluster: &Cluster, lsn: &str) -> (SegmentName, u64) {
    let out = cluster.psql(&format!(
        "SELECT file_name, file_offset FROM pg_walfile_name_offset('{lsn}')"
    ));
    let (name, offset) = out.split_once('|').unwrap();
    (SegmentName::parse(name).unwrap(), offset.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_exclusive_backups_in_one_session() {
    let scratch = Scratch::new();
    let archive = scratch.postgres_dir("archive");
    let pg = Cluster::init(scratch.path(), "primary");
    pg.append_conf(&format!(
        "archive_mode = on\narchive_command = 'cp %p {}/%f'\nlog_checkpoints = on\n",
        archive.display()
    ));
    pg.start();
    let major = pg.bin().major();

    let session = scratch
        .connect(
            &pg,
            &[("PGOPTIONS", "-c statement_timeout=1234 -c work_mem=7MB")],
        )
        .await;
    assert_eq!(session.server_version_num() / 10000, major);
    let version_num = session.setting("server_version_num").await.unwrap();
    assert_eq!(version_num.parse(), Ok(session.server_version_num()));
    check_backup_version(session.server_version_num()).unwrap();
    let version = session.version_string().await.unwrap();
    assert!(
        version.starts_with(&format!("PostgreSQL {major}")),
        "{version}"
    );
    assert_eq!(session.wal_segment_size().await.unwrap(), 16 * MIB);
    // statement_timeout is 0 even when PGOPTIONS sets it; the rest of
    // PGOPTIONS applies.
    assert_eq!(session.setting("statement_timeout").await.unwrap(), "0");
    assert_eq!(session.setting("work_mem").await.unwrap(), "7MB");
    assert_eq!(
        pg.psql(&format!(
            "SELECT application_name FROM pg_stat_activity WHERE pid = {}",
            session.backend_pid()
        )),
        "wal-e"
    );

    // --- first backup: no tablespace ---
    let label = backup_label_name(chrono::Utc::now());
    let start = session.start_backup(&label, true).await.unwrap();
    assert_eq!(
        (start.segment, start.offset),
        walfile_name_offset(&pg, &start.lsn.to_string())
    );
    assert_eq!(
        (start.segment, start.offset),
        segment_of(start.lsn, 1, 16 * MIB)
    );
    let name = BackupName::new(start.segment, start.offset).to_string();
    assert_eq!(name, format!("base_{}_{:08}", start.segment, start.offset));
    // A second start in the same session is refused by the server.
    let err = session.start_backup("again", true).await.unwrap_err();
    assert_eq!(err.msg, "could not start a base backup");
    assert!(
        err.detail.unwrap().contains("55000"),
        "object_not_in_prerequisite_state"
    );

    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g");
    let stop = session.stop_backup().await.unwrap();
    // wait_for_archive: the stop segment and the history file are archived
    // by the time pg_backup_stop returns.
    assert!(
        archive.join(stop.segment.to_string()).is_file(),
        "{} not archived when stop_backup returned",
        stop.segment
    );
    let history = format!("{}.{:08X}.backup", start.segment, start.offset);
    assert!(archive.join(&history).is_file(), "{history} not archived");
    assert!(stop.lsn > start.lsn);
    assert_eq!(
        (stop.segment, stop.offset),
        walfile_name_offset(&pg, &stop.lsn.to_string())
    );
    let expected_start = format!("START WAL LOCATION: {} (file {})", start.lsn, start.segment);
    assert!(
        stop.backup_label.contains(&expected_start),
        "{}",
        stop.backup_label
    );
    assert!(stop.backup_label.contains("BACKUP METHOD: streamed"));
    assert!(stop.backup_label.contains(&format!("LABEL: {label}")));
    assert_eq!(stop.tablespace_map, None);

    // Stopping again: no backup is running in this session any more.
    let err = session.stop_backup().await.unwrap_err();
    assert_eq!(err.msg, "could not stop the base backup");

    // --- second backup in the same session, with a tablespace ---
    let tblspc = scratch.postgres_dir("tblspc");
    pg.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        tblspc.display()
    ));
    pg.psql("CREATE TABLE in_ts (x int) TABLESPACE ts");
    let oid = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'");
    // A spread checkpoint (fast = false) paces its writes over minutes: leave
    // it next to nothing to write.
    pg.psql("CHECKPOINT");
    let start2 = session.start_backup("second", false).await.unwrap();
    assert!(start2.lsn > stop.lsn);
    let stop2 = session.stop_backup().await.unwrap();
    let map = stop2
        .tablespace_map
        .expect("tablespace_map with a tablespace");
    assert!(
        map.lines()
            .any(|l| l == format!("{oid} {}", tblspc.display())),
        "{map:?}"
    );
    assert!(stop2.backup_label.contains("LABEL: second"));
    // `fast` reached the server: an immediate checkpoint, then a spread one.
    let log = fs::read_to_string(&pg.log_file).unwrap();
    let immediate = log.find("checkpoint starting: immediate force wait");
    let spread = log.find("checkpoint starting: force wait");
    assert!(
        matches!((immediate, spread), (Some(i), Some(s)) if i < s),
        "{log}"
    );

    // Dropping the session resolves an earlier closed() future.
    let closed = session.closed();
    assert_eq!(session.closed_reason(), None);
    drop(session);
    let reason = tokio::time::timeout(TIMEOUT, closed).await.unwrap();
    assert_eq!(reason, "the connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_functions_need_superuser_or_a_grant() {
    let scratch = Scratch::new();
    let pg = Cluster::init(scratch.path(), "grants");
    pg.start();
    pg.psql("CREATE ROLE plain LOGIN");
    let (start_fn, stop_fn) = if pg.bin().major() >= 15 {
        ("pg_backup_start(text, boolean)", "pg_backup_stop(boolean)")
    } else {
        (
            "pg_start_backup(text, boolean, boolean)",
            "pg_stop_backup(boolean, boolean)",
        )
    };

    let session = scratch.connect(&pg, &[("PGUSER", "plain")]).await;
    let err = session.start_backup("denied", true).await.unwrap_err();
    assert_eq!(err.msg, "could not start a base backup");
    let detail = err.detail.clone().unwrap();
    assert!(detail.contains("permission denied"), "{err}");
    assert!(detail.contains("42501"), "{err}");
    assert!(
        err.hint.clone().unwrap().contains(&format!(
            "GRANT EXECUTE ON FUNCTION {start_fn}, {stop_fn} TO"
        )),
        "{err}"
    );

    pg.psql(&format!(
        "GRANT EXECUTE ON FUNCTION {start_fn} TO plain; GRANT EXECUTE ON FUNCTION {stop_fn} TO plain"
    ));
    let start = session.start_backup("granted", true).await.unwrap();
    let stop = session.stop_backup().await.unwrap();
    assert!(stop.lsn > start.lsn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_resolves_closed_and_its_backup_is_aborted() {
    let scratch = Scratch::new();
    let pg = Cluster::init(scratch.path(), "victim");
    pg.start();
    let session = scratch.connect(&pg, &[]).await;
    let pid = session.backend_pid();
    session.start_backup("doomed", true).await.unwrap();
    let closed = session.closed();
    assert_eq!(session.closed_reason(), None);

    assert_eq!(pg.psql(&format!("SELECT pg_terminate_backend({pid})")), "t");
    let reason = tokio::time::timeout(TIMEOUT, closed)
        .await
        .expect("closed() resolves after pg_terminate_backend");
    // Usually the server's FATAL message arrives before the socket closes;
    // on a loaded machine the kernel may report the reset first.
    assert!(
        (reason.contains("terminating connection due to administrator command")
            && reason.contains("57P01"))
            || reason.contains("Connection reset by peer"),
        "{reason}"
    );
    assert_eq!(session.closed_reason().as_deref(), Some(reason.as_str()));

    // The server dropped the backend and aborted the backup it was running.
    pg.wait_until("the backend to leave pg_stat_activity", TIMEOUT, || {
        pg.try_psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        ))
        .as_deref()
            == Ok("0")
    });
    pg.wait_until("the server to log the aborted backup", TIMEOUT, || {
        fs::read_to_string(&pg.log_file)
            .unwrap_or_default()
            .contains("aborting backup due to backend exiting before")
    });

    let err = session.stop_backup().await.unwrap_err();
    assert_eq!(err.msg, "could not stop the base backup");
    assert!(
        err.hint
            .clone()
            .unwrap()
            .contains("connection to PostgreSQL was lost"),
        "{err}"
    );

    // The server is fine: a new session can back up.
    let fresh = scratch.connect(&pg, &[]).await;
    fresh.start_backup("next", true).await.unwrap();
    fresh.stop_backup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_authentication_with_pgpass_and_pgpassword() {
    let scratch = Scratch::new();
    let pg = Cluster::init(scratch.path(), "auth");
    // Password authentication for one role, before the trust lines.
    let hba = pg.data_dir.join("pg_hba.conf");
    let original = fs::read_to_string(&hba).unwrap();
    fs::write(&hba, format!("local all pwuser scram-sha-256\n{original}")).unwrap();
    pg.start();
    // A password with the characters .pgpass must escape.
    pg.psql(
        r"SET password_encryption = 'scram-sha-256'; CREATE ROLE pwuser LOGIN PASSWORD 'p:ss\word'",
    );

    let socket = pg.socket_dir.display().to_string();
    let port = pg.port.to_string();
    let passfile = scratch.path().join("pgpass");
    let passfile_str = passfile.to_str().unwrap().to_string();
    let connect = |extra: Vec<(&'static str, String)>| {
        let mut env = scratch.env(&pg, &[("PGUSER", "pwuser")]);
        for (k, v) in extra {
            env.insert(k.to_string(), v);
        }
        let params = ConnectParams::from_env(&env).unwrap();
        async move { Session::connect(&params).await.map(|_| ()) }
    };

    // Right password from the password file (escaped ':' and '\').
    write_private(
        &passfile,
        &format!("{socket}:{port}:postgres:pwuser:p\\:ss\\\\word\n"),
        0o600,
    );
    connect(vec![("PGPASSFILE", passfile_str.clone())])
        .await
        .unwrap();

    // Wrong password from the file: the hint names the file, never the password.
    write_private(
        &passfile,
        &format!("{socket}:{port}:postgres:pwuser:wrong-secret\n"),
        0o600,
    );
    let err = connect(vec![("PGPASSFILE", passfile_str.clone())])
        .await
        .unwrap_err();
    assert_eq!(err.msg, "could not connect to PostgreSQL");
    assert!(err.detail.clone().unwrap().contains("28P01"), "{err}");
    assert!(err.hint.clone().unwrap().contains(&passfile_str), "{err}");
    assert!(!err.to_string().contains("wrong-secret"), "{err}");

    // A password file others can read is ignored: no password at all.
    write_private(
        &passfile,
        &format!("{socket}:{port}:postgres:pwuser:p\\:ss\\\\word\n"),
        0o644,
    );
    let err = connect(vec![("PGPASSFILE", passfile_str.clone())])
        .await
        .unwrap_err();
    assert!(err.hint.clone().unwrap().contains("PGPASSWORD"), "{err}");

    // PGPASSWORD.
    connect(vec![("PGPASSWORD", r"p:ss\word".to_string())])
        .await
        .unwrap();
    let err = connect(vec![("PGPASSWORD", "nope-secret".to_string())])
        .await
        .unwrap_err();
    assert!(err.hint.clone().unwrap().contains("PGPASSWORD"), "{err}");
    assert!(!err.to_string().contains("nope-secret"), "{err}");
}

// ---------------------------------------------------------------------------
// pg_control

/// `initdb` with extra arguments (the harness's `Cluster::init` takes none).
fn init_cluster_with(scratch: &Scratch, name: &str, initdb_args: &[&str]) -> Cluster {
    let data_dir = scratch.path().join(name);
    fs::create_dir(&data_dir).unwrap();
    fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700)).unwrap();
    chown_to_postgres(&data_dir);
    let out = run_as_postgres(
        PgBin::new()
            .cmd("initdb")
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"])
            .args(initdb_args)
            .current_dir(scratch.path()),
    );
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster = Cluster::existing(data_dir);
    cluster.append_conf("fsync = off\nwal_level = replica\n");
    cluster
}

/// `pg_controldata <dir>` as a map, if this PG_BINDIR has it.
fn pg_controldata(cluster: &Cluster) -> Option<HashMap<String, String>> {
    let program = cluster.bin().path("pg_controldata");
    if !program.is_file() {
        return None;
    }
    let out = std::process::Command::new(program)
        .arg(&cluster.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
    )
}

/// Checks `read_control_file` of the stopped `cluster` against
/// `pg_controldata` (when available) and, after starting it, against the
/// server's own `pg_control_*()` functions and `pg_walfile_name_offset`.
/// Leaves the cluster running.
fn check_control_file(cluster: &Cluster, timeline: u32, segment_size: u64) {
    assert!(!cluster.is_running());
    let control = read_control_file(&cluster.data_dir).unwrap();
    assert_eq!(control.state, DbState::ShutDown);
    assert!(control.state.is_shut_down());
    assert_eq!(control.timeline, timeline);
    assert_eq!(control.wal_segment_size, segment_size);

    if let Some(cd) = pg_controldata(cluster) {
        let get = |k: &str| cd.get(k).unwrap_or_else(|| panic!("{k} missing: {cd:?}"));
        assert_eq!(
            get("pg_control version number"),
            &control.pg_control_version.to_string()
        );
        assert_eq!(
            get("Catalog version number"),
            &control.catalog_version_no.to_string()
        );
        assert_eq!(
            get("Database system identifier"),
            &control.system_identifier.to_string()
        );
        assert_eq!(get("Database cluster state"), &control.state.to_string());
        assert_eq!(
            get("Latest checkpoint location"),
            &control.checkpoint.to_string()
        );
        assert_eq!(
            get("Latest checkpoint's REDO location"),
            &control.checkpoint_redo.to_string()
        );
        assert_eq!(
            get("Latest checkpoint's TimeLineID"),
            &control.timeline.to_string()
        );
        assert_eq!(
            get("Bytes per WAL segment"),
            &control.wal_segment_size.to_string()
        );
    }

    // A clean start writes no checkpoint: the server reports the same values.
    cluster.start();
    let row = cluster.psql(
        "SELECT s.pg_control_version, s.catalog_version_no, s.system_identifier, \
                c.checkpoint_lsn, c.redo_lsn, c.timeline_id, i.bytes_per_wal_segment \
         FROM pg_control_system() s, pg_control_checkpoint() c, pg_control_init() i",
    );
    let expected = format!(
        "{}|{}|{}|{}|{}|{}|{}",
        control.pg_control_version,
        control.catalog_version_no,
        control.system_identifier,
        control.checkpoint,
        control.checkpoint_redo,
        control.timeline,
        control.wal_segment_size
    );
    assert_eq!(row, expected);
    // The offline backup name agrees with the server's naming of the redo LSN.
    assert_eq!(
        segment_of(
            control.checkpoint_redo,
            control.timeline,
            control.wal_segment_size
        ),
        walfile_name_offset(cluster, &control.checkpoint_redo.to_string())
    );
}

#[test]
fn control_file_of_a_default_cluster_and_corruption() {
    let scratch = Scratch::new();
    let pg = init_cluster_with(&scratch, "ctl16", &[]);
    pg.start();
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 20000) g");
    pg.switch_wal();
    pg.psql("CHECKPOINT");
    pg.stop();
    check_control_file(&pg, 1, 16 * MIB);
    pg.stop();

    // A copy with one flipped byte inside the struct fails the CRC check.
    let copy = scratch.path().join("copy");
    fs::create_dir_all(copy.join("global")).unwrap();
    let original = fs::read(pg.data_dir.join("global/pg_control")).unwrap();
    assert_eq!(original.len(), 8192);
    let mut bad = original.clone();
    bad[41] ^= 0x40;
    fs::write(copy.join("global/pg_control"), &bad).unwrap();
    let err = read_control_file(&copy).unwrap_err();
    assert_eq!(err.msg, "the PostgreSQL control file is corrupt");
    assert!(err.detail.unwrap().contains("CRC-32C"));
    // pg_controldata agrees that the copy is corrupt.
    if pg.bin().path("pg_controldata").is_file() {
        let out = std::process::Command::new(pg.bin().path("pg_controldata"))
            .arg(&copy)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("CRC"), "{text}");
    }
    // Bytes after the struct are not covered, as in PostgreSQL.
    let mut tail = original.clone();
    tail[4096] ^= 0xFF;
    fs::write(copy.join("global/pg_control"), &tail).unwrap();
    assert_eq!(
        read_control_file(&copy).unwrap(),
        read_control_file(&pg.data_dir).unwrap()
    );
    // No data directory at all.
    let err = read_control_file(&scratch.path().join("nothing")).unwrap_err();
    assert_eq!(err.msg, "could not read the PostgreSQL control file");
}

/// 64 MiB segments on timeline 0x1A (26): the cases WAL-E's offline naming
/// got wrong.
#[test]
fn control_file_and_segment_names_with_64mib_segments_on_timeline_26() {
    let scratch = Scratch::new();
    let pg = init_cluster_with(&scratch, "ctl64", &["--wal-segsize=64"]);
    // Move the cluster to timeline 0x1A and WAL segment 5/3E.
    let out = run_as_postgres(
        pg.bin()
            .cmd("pg_resetwal")
            .args(["-l", "0000001A000000050000003E", "-D"])
            .arg(&pg.data_dir)
            .current_dir(scratch.path()),
    );
    assert!(
        out.status.success(),
        "pg_resetwal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_control_file(&pg, 26, 64 * MIB);
    let redo = read_control_file(&pg.data_dir).unwrap().checkpoint_redo;
    assert_eq!(
        segment_of(redo, 26, 64 * MIB).0.to_string(),
        "0000001A000000050000003E"
    );

    // The server's names for assorted LSNs on this timeline and size.
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 20000) g");
    let current = pg.psql("SELECT pg_current_wal_lsn()");
    for lsn in [
        current.as_str(),
        "5/F8000028",
        "5/FBFFFFFF",
        "6/1",
        "6/3FFFFFF",
        "6/4000001",
        "FF/FC123456",
    ] {
        let parsed: Lsn = lsn.parse().unwrap();
        assert_eq!(
            segment_of(parsed, 26, 64 * MIB),
            walfile_name_offset(&pg, lsn),
            "{lsn}"
        );
    }
    // Exactly on a boundary, segment_of names the segment that starts there
    // (offset 0), as pg_walfile_name_offset does from PostgreSQL 17 on;
    // before 17 the server names the previous segment, still with offset 0.
    let boundary: Lsn = "6/4000000".parse().unwrap();
    let (server_name, server_offset) = walfile_name_offset(&pg, "6/4000000");
    assert_eq!(server_offset, 0);
    let expected = if pg.bin().major() >= 17 {
        boundary
    } else {
        Lsn(boundary.0 - 1)
    };
    assert_eq!(server_name, segment_of(expected, 26, 64 * MIB).0);
    assert_eq!(
        segment_of(boundary, 26, 64 * MIB),
        (SegmentName::parse("0000001A0000000600000001").unwrap(), 0)
    );
}

/// `openssl` with `args`, in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for `localhost` only, signed by it.
fn make_certificates(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
        ],
    );
}

/// Over TCP, PGSSLMODE works as in libpq against a server that only accepts
/// TLS: require and prefer encrypt, verify-ca checks the chain, verify-full
/// the chain and the name; a plain connection is refused by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_against_a_server_that_requires_tls() {
    let scratch = Scratch::new();
    let certs = scratch.path().join("certs");
    fs::create_dir(&certs).unwrap();
    make_certificates(&certs, "test-ca");
    make_certificates(&certs, "other-ca");
    openssl(
        &certs,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    fs::write(certs.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        &certs,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "test-ca.crt",
            "-CAkey",
            "test-ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
    );
    fs::set_permissions(certs.join("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
    make_traversable(&certs);
    chown_to_postgres(&certs);

    let pg = Cluster::init(scratch.path(), "tls");
    pg.append_conf(&format!(
        "listen_addresses = '127.0.0.1'\nssl = on\n\
         ssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
        certs.display()
    ));
    fs::write(
        pg.data_dir.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 trust\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    chown_to_postgres(&pg.data_dir.join("pg_hba.conf"));
    pg.start();

    let ca = certs.join("test-ca.crt");
    let other_ca = certs.join("other-ca.crt");
    let attempt = |host: &str, mode: &str, root: Option<&Path>| {
        let mut vars = vec![
            ("PGHOST", host.to_string()),
            ("PGSSLMODE", mode.to_string()),
            ("PGCONNECT_TIMEOUT", "20".to_string()),
        ];
        vars.extend(root.map(|r| ("PGSSLROOTCERT", r.display().to_string())));
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let params = ConnectParams::from_env(&scratch.env(&pg, &vars)).unwrap();
        async move { Session::connect(&params).await }
    };
    let encrypted_sessions = || {
        pg.psql(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'wal-e'",
        )
    };

    let err = attempt("127.0.0.1", "disable", None).await.unwrap_err();
    assert!(
        err.to_string().contains("no encryption"),
        "the server refuses plain connections: {err}"
    );

    for (host, mode, root) in [
        ("127.0.0.1", "require", None),
        ("127.0.0.1", "prefer", None),
        ("localhost", "verify-full", Some(ca.as_path())),
        // The certificate names localhost only: verify-ca ignores the name.
        ("127.0.0.1", "verify-ca", Some(ca.as_path())),
    ] {
        let session = attempt(host, mode, root)
            .await
            .unwrap_or_else(|e| panic!("{mode} to {host}: {e}\n{}", pg.log_tail()));
        assert_eq!(encrypted_sessions(), "1", "{mode} to {host}");
        drop(session);
        pg.wait_until("the session to end", TIMEOUT, || {
            encrypted_sessions() == "0"
        });
    }

    for (host, mode, root, why) in [
        (
            "127.0.0.1",
            "verify-full",
            Some(ca.as_path()),
            "not valid for name",
        ),
        (
            "localhost",
            "verify-ca",
            Some(other_ca.as_path()),
            "invalid peer certificate",
        ),
        (
            "localhost",
            "verify-full",
            Some(other_ca.as_path()),
            "invalid peer certificate",
        ),
    ] {
        let err = attempt(host, mode, root).await.unwrap_err();
        assert_eq!(
            err.msg, "could not connect to PostgreSQL",
            "{mode} to {host}"
        );
        assert!(err.to_string().contains(why), "{mode} to {host}: {err}");
        assert!(
            err.hint
                .as_deref()
                .unwrap_or_default()
                .contains("PGSSLROOTCERT"),
            "{err}"
        );
    }
    let missing = certs.join("missing.crt");
    let err = attempt("localhost", "verify-full", Some(&missing))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("root certificate"), "{err}");
}
