//! Throw-away PostgreSQL clusters for integration tests.
//!
//! Each [`Cluster`] lives in a directory that the test provides (usually a
//! `tempfile::TempDir`), listens only on a Unix socket in a private, short
//! socket directory under `/tmp` (Unix socket paths are limited to ~107
//! bytes) and is stopped when dropped.
//!
//! PostgreSQL refuses to run as root. When the tests run as root, every
//! server-side command (`initdb`, `pg_ctl`, `pg_basebackup`, and through the
//! server also `archive_command` / `restore_command`) is run as the
//! `postgres` user via `runuser -u postgres --`, and every directory the
//! server writes to is chowned to `postgres`. Client commands (`psql`,
//! `pgbench`) run as the current user and connect as database user
//! `postgres` with trust authentication.
//!
//! NOTE: `archive_command` and `restore_command` run as the `postgres` user.
//! A binary under test used there (e.g. `target/debug/wal-e-rs`) must be
//! readable and executable by `postgres`, including every directory on its
//! path (see [`make_traversable`]), and whatever it writes (archive
//! directory, local caches) must be writable by `postgres` (see
//! [`chown_to_postgres`]).
//!
//! Binaries come from `$PG_BINDIR`, default `/usr/lib/postgresql/15/bin`.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Default location of the PostgreSQL server binaries.
pub const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";

/// Name of the OS user (and database superuser) the server runs as.
pub const PG_USER: &str = "postgres";

/// Size of a WAL segment with the default `initdb` settings.
pub const WAL_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// Poll interval of [`Cluster::wait_until`].
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Ports handed out to clusters; each socket dir is private so any value
/// works, but distinct ports make logs easier to tell apart.
static NEXT_PORT: AtomicU16 = AtomicU16::new(54320);

/// True when the effective user is root (server commands then go through
/// `runuser -u postgres --`).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Uid and gid of the `postgres` OS user.
fn postgres_ids() -> (u32, u32) {
    let name = CString::new(PG_USER).unwrap();
    // SAFETY: getpwnam gets a valid NUL-terminated string; the returned
    // pointer is checked for NULL and read immediately (tests only).
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(!pw.is_null(), "OS user `{PG_USER}` does not exist");
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

/// Recursively chowns `path` to `postgres:postgres` (symlinks are not
/// followed). No-op when not root.
pub fn chown_to_postgres(path: &Path) {
    if !is_root() {
        return;
    }
    let (uid, gid) = postgres_ids();
    fn walk(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        let meta = fs::symlink_metadata(p).unwrap();
        if meta.is_dir() {
            for entry in fs::read_dir(p).unwrap() {
                walk(&entry.unwrap().path(), uid, gid);
            }
        }
    }
    walk(path, uid, gid);
}

/// `chmod 0755` a directory so that the `postgres` user can enter it
/// (`tempfile` creates its directories `0700`). Never use it on a data
/// directory: PostgreSQL requires those to be `0700` or `0750`.
pub fn make_traversable(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod 0755 {}: {e}", path.display()));
}

/// Panics with a helpful message if some ancestor of `path` cannot be
/// entered by other users (so the `postgres` user could not reach it).
fn check_ancestors_traversable(path: &Path) {
    if !is_root() {
        return;
    }
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        if let Ok(meta) = fs::metadata(dir) {
            assert!(
                meta.permissions().mode() & 0o001 != 0,
                "{} is not traversable by the postgres user (mode {:o}); \
                 call make_traversable on it",
                dir.display(),
                meta.permissions().mode() & 0o7777
            );
        }
    }
}

/// Creates an empty file owned by `postgres` (unless it exists).
fn create_owned_file(path: &Path) {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    chown_to_postgres(path);
}

/// Formats a finished command for panic messages.
fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `f` every [`POLL_INTERVAL`] until it returns true; returns false
/// if `timeout` elapsed first.
fn poll(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Runs `cmd` as the `postgres` OS user when root (directly otherwise) and
/// returns its output; panics only if it cannot be spawned.
///
/// As root this becomes `runuser -u postgres -- env [-u K]... [K=V]... prog
/// args...`: variables set or removed on `cmd` are passed through `env`
/// because `runuser` resets some of them (HOME, USER, ...). The current
/// directory of `cmd` (or of the test process) must be accessible to
/// `postgres`. Stdin is null.
pub fn run_as_postgres(cmd: &mut Command) -> Output {
    if !is_root() {
        return cmd
            .output()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    }
    let mut wrapped = Command::new("runuser");
    wrapped.args(["-u", PG_USER, "--", "env"]);
    let envs: Vec<_> = cmd.get_envs().collect();
    for (k, v) in &envs {
        if v.is_none() {
            wrapped.arg("-u").arg(k);
        }
    }
    for (k, v) in &envs {
        if let Some(v) = v {
            let mut kv = k.to_os_string();
            kv.push("=");
            kv.push(v);
            wrapped.arg(kv);
        }
    }
    wrapped.arg(cmd.get_program()).args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
        .output()
        .unwrap_or_else(|e| panic!("spawn runuser for {:?}: {e}", cmd.get_program()))
}

/// Location of the PostgreSQL binaries.
#[derive(Clone, Debug)]
pub struct PgBin {
    /// Directory holding `initdb`, `pg_ctl`, `postgres`, `psql`, ...
    pub bindir: PathBuf,
}

impl Default for PgBin {
    fn default() -> Self {
        Self::new()
    }
}

impl PgBin {
    /// From `$PG_BINDIR`, else [`DEFAULT_BINDIR`].
    pub fn new() -> PgBin {
        let bindir = std::env::var_os("PG_BINDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BINDIR));
        PgBin { bindir }
    }

    /// Binaries of another major version installed by `scripts/install-pg.sh`.
    pub fn major_version(major: u32) -> PgBin {
        let out = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/install-pg.sh"
        ))
        .arg(major.to_string())
        .output()
        .expect("run scripts/install-pg.sh");
        assert!(out.status.success(), "{}", describe("install-pg.sh", &out));
        PgBin {
            bindir: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        }
    }

    /// Full path of the program `name` in [`PgBin::bindir`]. Client programs
    /// a server-only package lacks (psql, pgbench, pg_basebackup) come from
    /// [`DEFAULT_BINDIR`]; they work with older and newer servers.
    pub fn path(&self, name: &str) -> PathBuf {
        let own = self.bindir.join(name);
        if own.exists() {
            own
        } else {
            Path::new(DEFAULT_BINDIR).join(name)
        }
    }

    /// A `Command` for the program `name` in [`PgBin::bindir`].
    pub fn cmd(&self, name: &str) -> Command {
        Command::new(self.path(name))
    }

    /// True if the `postgres` binary exists (lets tests skip politely).
    pub fn available(&self) -> bool {
        self.path("postgres").is_file()
    }

    /// Major version from `postgres --version` (e.g. 15).
    pub fn major(&self) -> u32 {
        let out = self
            .cmd("postgres")
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.path("postgres").display()));
        assert!(
            out.status.success(),
            "{}",
            describe("postgres --version", &out)
        );
        // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .unwrap_or_else(|| panic!("no version in {text:?}"));
        version
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("bad version in {text:?}"))
    }
}

/// A PostgreSQL cluster (data directory + the server running on it).
///
/// Dropping it stops the server with `-m immediate` (errors ignored). Drop
/// it before the `TempDir` holding it (declare the `TempDir` first).
pub struct Cluster {
    /// The data directory (`PGDATA`), owned by `postgres`, mode 0700.
    pub data_dir: PathBuf,
    /// Private directory of the server's Unix socket (`PGHOST`).
    pub socket_dir: PathBuf,
    /// Port, i.e. the socket's name `.s.PGSQL.<port>` (`PGPORT`).
    pub port: u16,
    /// Server log file (`pg_ctl -l`), `<data_dir>/../<name>.log`.
    pub log_file: PathBuf,
    bin: PgBin,
    /// Keeps the socket directory alive; removed after the server stops.
    _socket_tmp: tempfile::TempDir,
}

impl Cluster {
    /// `initdb`s a new cluster in `dir/<name>` (`dir` is typically a test's
    /// `TempDir` path and is created if missing) and configures it: no TCP,
    /// private socket dir, `fsync = off`, `synchronous_commit = off`,
    /// `wal_level = replica`, `max_wal_senders = 2`. When root, `dir` is made
    /// `0755` and owned by `postgres`. Does not start the server.
    pub fn init(dir: &Path, name: &str) -> Cluster {
        Cluster::init_with(PgBin::new(), dir, name)
    }

    /// [`Cluster::init`] with the server binaries of `bin` (another major version).
    pub fn init_with(bin: PgBin, dir: &Path, name: &str) -> Cluster {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        if is_root() {
            make_traversable(dir);
            std::os::unix::fs::chown(dir, Some(postgres_ids().0), Some(postgres_ids().1))
                .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
        }
        check_ancestors_traversable(dir);
        let data_dir = dir.join(name);
        let out = run_as_postgres(
            bin.cmd("initdb")
                .arg("-D")
                .arg(&data_dir)
                .args(["-U", PG_USER, "--auth=trust", "-E", "UTF8", "--locale=C"])
                .arg("--no-sync")
                // --no-instructions only exists from PostgreSQL 14 on.
                .args(if bin.major() >= 14 {
                    &["--no-instructions"][..]
                } else {
                    &[]
                })
                .current_dir(dir),
        );
        assert!(out.status.success(), "{}", describe("initdb", &out));
        let cluster = Cluster::configure(data_dir, bin);
        cluster.append_conf(
            "fsync = off\n\
             synchronous_commit = off\n\
             wal_level = replica\n\
             max_wal_senders = 2\n\
             logging_collector = off\n",
        );
        cluster
    }

    /// Wraps an existing data directory (e.g. one restored by
    /// [`Cluster::base_backup_to`] or by the tool under test) without
    /// `initdb`: chowns it to `postgres`, sets mode 0700, gives it a fresh
    /// private socket dir and port (appended to `postgresql.conf`, so they
    /// override the copied settings of the source cluster).
    pub fn existing(data_dir: PathBuf) -> Cluster {
        Cluster::existing_with(PgBin::new(), data_dir)
    }

    /// [`Cluster::existing`] with the server binaries of `bin`.
    pub fn existing_with(bin: PgBin, data_dir: PathBuf) -> Cluster {
        assert!(
            data_dir.join("PG_VERSION").is_file(),
            "{} is not a PostgreSQL data directory",
            data_dir.display()
        );
        chown_to_postgres(&data_dir);
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700)).unwrap();
        check_ancestors_traversable(&data_dir);
        Cluster::configure(data_dir, bin)
    }

    /// Common part of `init`/`existing`: socket dir, port, log file.
    fn configure(data_dir: PathBuf, bin: PgBin) -> Cluster {
        // Short path under /tmp: unix socket paths are limited to ~107 bytes.
        let socket_tmp = tempfile::Builder::new()
            .prefix("pgs")
            .tempdir_in("/tmp")
            .expect("create socket dir");
        chown_to_postgres(socket_tmp.path());
        let name = data_dir
            .file_name()
            .expect("data dir has a name")
            .to_owned();
        let mut log_name = name.clone();
        log_name.push(".log");
        let log_file = data_dir
            .parent()
            .expect("data dir has a parent")
            .join(log_name);
        // pg_ctl (as postgres) appends to it; pre-create it so the parent
        // directory need not be writable by postgres.
        create_owned_file(&log_file);
        let cluster = Cluster {
            data_dir,
            socket_dir: socket_tmp.path().to_path_buf(),
            port: NEXT_PORT.fetch_add(1, Ordering::Relaxed),
            log_file,
            bin,
            _socket_tmp: socket_tmp,
        };
        cluster.append_conf(&format!(
            "listen_addresses = ''\n\
             unix_socket_directories = '{}'\n\
             port = {}\n",
            cluster.socket_dir.display(),
            cluster.port
        ));
        cluster
    }

    /// The binaries this cluster uses.
    pub fn bin(&self) -> &PgBin {
        &self.bin
    }

    /// Appends `lines` to `postgresql.conf` (later settings win). The file
    /// keeps its owner. Most settings need a (re)start to take effect.
    pub fn append_conf(&self, lines: &str) {
        let path = self.data_dir.join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        writeln!(f, "\n# added by test harness\n{lines}").unwrap();
    }

    /// Creates an empty file (e.g. `recovery.signal`, `standby.signal`) in
    /// the data directory, owned by `postgres`.
    pub fn touch(&self, file: &str) {
        create_owned_file(&self.data_dir.join(file));
    }

    /// A `pg_ctl -D <data_dir>` command (run it with [`Self::run_as_owner`]).
    fn pg_ctl(&self) -> Command {
        let mut cmd = self.bin.cmd("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .current_dir(&self.socket_dir);
        cmd
    }

    /// True if `pg_ctl status` reports a running server.
    pub fn is_running(&self) -> bool {
        if !self.data_dir.join("postmaster.pid").exists() {
            return false;
        }
        self.run_as_owner(self.pg_ctl().arg("status"))
            .status
            .success()
    }

    /// Starts the server (`pg_ctl -w -t 120 start -l <log_file>`); returns
    /// once it accepts connections (or, in archive recovery with hot
    /// standby, once it is consistent: see [`Self::wait_for_recovery_end`]).
    /// Panics with the server log tail on failure.
    pub fn start(&self) {
        let out = self.run_as_owner(
            self.pg_ctl()
                .args(["-w", "-t", "120", "-l"])
                .arg(&self.log_file)
                .arg("start"),
        );
        assert!(
            out.status.success(),
            "{}\n--- server log tail ({}) ---\n{}",
            describe("pg_ctl start", &out),
            self.log_file.display(),
            self.log_tail()
        );
    }

    /// Stops the server (`pg_ctl -w -t 60 -m fast stop`), falling back to
    /// `-m immediate` (a fast shutdown waits for the archiver, which may
    /// hang on a failing `archive_command`). No-op if not running.
    pub fn stop(&self) {
        if !self.is_running() {
            return;
        }
        let fast = self.run_as_owner(self.pg_ctl().args(["-w", "-t", "60", "-m", "fast", "stop"]));
        if fast.status.success() || !self.is_running() {
            return;
        }
        let immediate =
            self.run_as_owner(
                self.pg_ctl()
                    .args(["-w", "-t", "60", "-m", "immediate", "stop"]),
            );
        assert!(
            immediate.status.success() || !self.is_running(),
            "{}\n{}\n--- server log tail ---\n{}",
            describe("pg_ctl stop -m fast", &fast),
            describe("pg_ctl stop -m immediate", &immediate),
            self.log_tail()
        );
    }

    /// Restarts the server (stop, then start), e.g. after changing
    /// settings that need a restart.
    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    /// Runs `sql` with `psql -X -A -t -q -v ON_ERROR_STOP=1` as database
    /// user `postgres` on database `postgres`; returns trimmed stdout (rows
    /// one per line, columns separated by `|`) or stderr on failure.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = self
            .bin
            .cmd("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                PG_USER,
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| format!("spawn psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(describe(&format!("psql -c {sql:?}"), &out))
        }
    }

    /// Like [`Self::try_psql`] but panics (with psql's stderr) on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `pgbench` with `args` against this cluster; panics on failure.
    fn run_pgbench(&self, args: &[&str]) -> String {
        let out = self
            .bin
            .cmd("pgbench")
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", PG_USER])
            .args(args)
            .arg("postgres")
            .output()
            .expect("spawn pgbench");
        assert!(out.status.success(), "{}", describe("pgbench", &out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pgbench -i -q -s <scale>` (creates the `pgbench_*` tables; scale 1 is
    /// 100k accounts, ~15 MB of data).
    pub fn pgbench_init(&self, scale: u32) {
        self.run_pgbench(&["-i", "-q", "-s", &scale.to_string()]);
    }

    /// `pgbench -c <clients> -t <transactions>` (TPC-B-like; transactions
    /// are per client). Returns pgbench's report.
    pub fn pgbench(&self, clients: u32, transactions: u32) -> String {
        self.run_pgbench(&["-c", &clients.to_string(), "-t", &transactions.to_string()])
    }

    /// `SELECT pg_walfile_name(pg_switch_wal())`: closes the current WAL
    /// segment and returns its name (the one that will be archived). If no
    /// WAL was written since the last switch nothing is switched and the
    /// previous segment's name is returned.
    pub fn switch_wal(&self) -> String {
        self.psql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Polls `f` (every 50 ms) until it returns true; panics mentioning
    /// `what` and the server log tail after `timeout`.
    pub fn wait_until<F: Fn() -> bool>(&self, what: &str, timeout: Duration, f: F) {
        if !poll(timeout, f) {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n--- server log tail ---\n{}",
                self.log_tail()
            );
        }
    }

    /// `pg_stat_archiver` as (last_archived_wal, failed_count,
    /// last_failed_wal), empty strings for NULLs.
    pub fn archiver_stats(&self) -> Result<(String, String, String), String> {
        let row = self.try_psql(
            "SELECT coalesce(last_archived_wal, ''), failed_count, \
             coalesce(last_failed_wal, '') FROM pg_stat_archiver",
        )?;
        let mut cols = row.split('|').map(str::to_string);
        Ok((
            cols.next().unwrap_or_default(),
            cols.next().unwrap_or_default(),
            cols.next().unwrap_or_default(),
        ))
    }

    /// True once `segment` (a 24-hex-digit WAL file name) was archived:
    /// its `pg_wal/archive_status/<segment>.done` exists, or
    /// `pg_stat_archiver.last_archived_wal` (a WAL segment or `.backup`
    /// file, compared on its first 24 characters) is `>= segment`.
    pub fn is_archived(&self, segment: &str) -> bool {
        let done = self
            .data_dir
            .join("pg_wal/archive_status")
            .join(format!("{segment}.done"));
        if done.exists() {
            return true;
        }
        match self.archiver_stats() {
            Ok((last, _, _)) => {
                last.len() >= 24
                    && last[..24].bytes().all(|b| b.is_ascii_hexdigit())
                    && &last[..24] >= segment
            }
            Err(_) => false,
        }
    }

    /// Waits until [`Self::is_archived`]`(segment)`; on timeout panics with
    /// `pg_stat_archiver`'s counters and the server log tail (where the
    /// `archive_command` failures are logged).
    pub fn wait_for_archived(&self, segment: &str, timeout: Duration) {
        if poll(timeout, || self.is_archived(segment)) {
            return;
        }
        let stats = match self.archiver_stats() {
            Ok((last, failed, last_failed)) => format!(
                "last_archived_wal={last:?} failed_count={failed} last_failed_wal={last_failed:?}"
            ),
            Err(e) => format!("pg_stat_archiver unavailable: {e}"),
        };
        panic!(
            "WAL segment {segment} not archived within {timeout:?}: {stats}\n\
             --- server log tail ---\n{}",
            self.log_tail()
        );
    }

    /// Waits until `pg_is_in_recovery()` is false (archive recovery has
    /// finished and the server was promoted); panics on timeout.
    pub fn wait_for_recovery_end(&self, timeout: Duration) {
        self.wait_until("the end of recovery", timeout, || {
            self.try_psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f")
        });
    }

    /// libpq variables for clients run by the test (e.g. the tool under
    /// test): `PGHOST`, `PGPORT`, `PGUSER=postgres`, `PGDATABASE=postgres`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), self.socket_dir.display().to_string()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), PG_USER.into()),
            ("PGDATABASE".into(), "postgres".into()),
        ]
    }

    /// Runs `cmd` as the owner of the data directory (see
    /// [`run_as_postgres`]; variables set on `cmd`, e.g. from
    /// [`Self::env`], are preserved) and returns its output.
    pub fn run_as_owner(&self, cmd: &mut Command) -> Output {
        run_as_postgres(cmd)
    }

    /// `pg_basebackup -D <target> -X none -c fast` as the owner. `target`
    /// must not exist or be empty; its parent must exist. It ends owned by
    /// `postgres`, mode 0700. With `-X none` the backup holds no WAL:
    /// restoring it needs a `restore_command` reading the archive (with
    /// archiving on, pg_basebackup waits until the needed WAL is archived).
    pub fn base_backup_to(&self, target: &Path) {
        let parent = target.parent().expect("target has a parent");
        check_ancestors_traversable(target);
        assert!(parent.is_dir(), "{} does not exist", parent.display());
        fs::create_dir_all(target).unwrap();
        fs::set_permissions(target, fs::Permissions::from_mode(0o700)).unwrap();
        chown_to_postgres(target);
        let out = self.run_as_owner(
            self.bin
                .cmd("pg_basebackup")
                .arg("-D")
                .arg(target)
                .args(["-X", "none", "-c", "fast", "--no-sync", "-h"])
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-U", PG_USER])
                .current_dir(&self.socket_dir),
        );
        assert!(
            out.status.success(),
            "{}\n--- server log tail ---\n{}",
            describe("pg_basebackup", &out),
            self.log_tail()
        );
        chown_to_postgres(target);
        fs::set_permissions(target, fs::Permissions::from_mode(0o700)).unwrap();
    }

    /// The last 60 lines of the server log.
    pub fn log_tail(&self) -> String {
        match fs::read_to_string(&self.log_file) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(60)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log_file.display()),
        }
    }
}

impl Drop for Cluster {
    /// Stops the server with `-m immediate`, ignoring errors.
    fn drop(&mut self) {
        if self.data_dir.join("postmaster.pid").exists() {
            let _ = self.run_as_owner(self.pg_ctl().args([
                "-w",
                "-t",
                "60",
                "-m",
                "immediate",
                "stop",
            ]));
        }
    }
}
