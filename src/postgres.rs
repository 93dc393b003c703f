//! Talking to PostgreSQL for base backups, with tokio-postgres (WAL-E ran
//! `psql`; see spec §3.2), and reading `pg_control` for offline backups.
//!
//! * [`ConnectParams::from_env`] reads the libpq environment (`PGHOST`,
//!   `PGPORT`, `PGUSER`, `PGPASSWORD`, `~/.pgpass`, ...).
//! * [`Session`] is the one connection a backup keeps open from
//!   [`Session::start_backup`] to [`Session::stop_backup`]: PostgreSQL 10+
//!   non-exclusive backups are tied to the session that started them and are
//!   aborted by the server when it ends. [`Session::closed`] tells when that
//!   happened.
//! * [`read_control_file`] parses `global/pg_control` of a stopped cluster
//!   (PostgreSQL 10 to 18) and [`segment_of`] names the WAL segment of an LSN.
//!
//! Only plain connections are supported (Unix sockets, or TCP without TLS).

mod control;
mod pgpass;
pub mod tls;
mod wal_page;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use tokio::sync::watch;
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::{AsyncMessage, Connection, NoTls};

use crate::config::Env;
use crate::error::UserError;
use crate::layout::SegmentName;

pub use control::{ControlData, DbState, PG_CONTROL_FILE_SIZE, SUPPORTED_VERSIONS};
pub use control::{parse_control_file, read_control_file};
pub use wal_page::{LONG_PAGE_HEADER_SIZE, LongPageHeader, SUPPORTED_PAGE_MAGICS};

/// Socket directories tried, in order, when `PGHOST` is not set (Debian's
/// libpq uses the first, upstream's the second).
pub const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// `application_name` when `PGAPPNAME` is not set.
pub const DEFAULT_APPLICATION_NAME: &str = "wal-e";

/// The oldest server backup-push supports: 9.6 has the non-exclusive
/// backup functions, but its `pg_control` (version 960) is not one the final
/// partition can check (see [`SUPPORTED_VERSIONS`]).
pub const MIN_SERVER_VERSION_NUM: u32 = 100000;

/// Refuses a server older than [`MIN_SERVER_VERSION_NUM`], before a backup
/// starts and anything is uploaded.
pub fn check_backup_version(server_version_num: u32) -> Result<(), UserError> {
    if server_version_num < MIN_SERVER_VERSION_NUM {
        return Err(UserError::new("this PostgreSQL version is too old for backup-push")
            .detail(format!(
                "The server's server_version_num is {server_version_num}; backup-push needs PostgreSQL 10 (100000) or later."
            ))
            .hint("Upgrade PostgreSQL, or use WAL-E 1.x for this server."));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// LSNs and segment names

/// A WAL location (`pg_lsn`), written `X/Y` like PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A string that is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL location {0:?}: expected two groups of 1 to 8 hex digits, as in 0/16B3748")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    /// Accepts what `pg_lsn` input accepts: `X/Y`, 1 to 8 hex digits each,
    /// either case.
    fn from_str(s: &str) -> Result<Lsn, ParseLsnError> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u64::from_str_radix(p, 16).map_err(|_| err())
        };
        Ok(Lsn((part(hi)? << 32) | part(lo)?))
    }
}

/// True for the WAL segment sizes PostgreSQL allows: powers of two from
/// 1 MiB to 1 GiB (`IsValidWalSegSize`).
pub fn is_valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}

/// The WAL segment holding `lsn` on `timeline`, and the byte offset of `lsn`
/// inside it (`XLByteToSeg` + `XLogFileName`, `XLogSegmentOffset`).
///
/// Correct for every segment size and timeline, unlike WAL-E's offline
/// naming (spec §3.2). For an LSN exactly on a segment boundary this names
/// the segment that starts there (offset 0), as `pg_walfile_name_offset`
/// does from PostgreSQL 17 on; before 17 that function names the previous
/// segment, still with offset 0.
///
/// # Panics
/// If `segment_size` is not a valid WAL segment size
/// ([`is_valid_segment_size`]); sizes read from the server or from
/// `pg_control` are checked before they get here.
pub fn segment_of(lsn: Lsn, timeline: u32, segment_size: u64) -> (SegmentName, u64) {
    assert!(
        is_valid_segment_size(segment_size),
        "invalid WAL segment size {segment_size}"
    );
    let segno = lsn.0 / segment_size;
    let per_xlogid = 0x1_0000_0000 / segment_size;
    let name = SegmentName {
        timeline,
        log: (segno / per_xlogid) as u32,
        seg: (segno % per_xlogid) as u32,
    };
    (name, lsn.0 % segment_size)
}

/// Where segment `name` starts (`XLogSegNoOffsetToRecPtr`), or `None` when
/// its segment number does not exist at this segment size.
///
/// # Panics
/// If `segment_size` is not a valid WAL segment size.
pub fn segment_start(name: SegmentName, segment_size: u64) -> Option<Lsn> {
    assert!(
        is_valid_segment_size(segment_size),
        "invalid WAL segment size {segment_size}"
    );
    let per_xlogid = 0x1_0000_0000 / segment_size;
    (u64::from(name.seg) < per_xlogid)
        .then(|| Lsn((u64::from(name.log) << 32) + u64::from(name.seg) * segment_size))
}

/// The label WAL-E gives its backups: `freeze_start_` and the UTC time in
/// Python's `isoformat()`, e.g. `freeze_start_2024-01-02T03:04:05.123456+00:00`.
/// Like Python, the fraction is left out when the microseconds are zero.
pub fn backup_label_name(now: DateTime<Utc>) -> String {
    let micros = (now.nanosecond() % 1_000_000_000) / 1000;
    let base = now.format("%Y-%m-%dT%H:%M:%S");
    if micros == 0 {
        format!("freeze_start_{base}+00:00")
    } else {
        format!("freeze_start_{base}.{micros:06}+00:00")
    }
}

/// Parses a memory setting as `SHOW` prints it (`16MB`, `1GB`, `8192kB`,
/// `512B`, or a bare number of bytes) into bytes.
pub fn parse_memory_setting(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let value: u64 = text[..digits].parse().ok()?;
    let unit: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    value.checked_mul(unit)
}

// ---------------------------------------------------------------------------
// Connection parameters

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A directory holding the server's Unix socket `.s.PGSQL.<port>`.
    Socket(PathBuf),
    /// A host name or IP address, reached over TCP (without TLS).
    Tcp(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Socket(dir) => write!(f, "{}", dir.display()),
            Host::Tcp(name) => f.write_str(name),
        }
    }
}

/// Where the password came from (never the password itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// The `PGPASSWORD` environment variable.
    Environment,
    /// A password file (`PGPASSFILE` or `~/.pgpass`).
    File(PathBuf),
}

#[derive(Clone, PartialEq, Eq)]
struct Password {
    secret: String,
    source: PasswordSource,
}

/// Connection parameters from the libpq environment. `Debug` and
/// [`ConnectParams::describe`] never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectParams {
    /// `PGHOST` (first of a comma list); default: the first existing of
    /// [`DEFAULT_SOCKET_DIRS`].
    pub host: Host,
    /// `PGHOSTADDR`: an IP address to connect to instead of resolving
    /// `host` (which then only names the server, e.g. for `.pgpass`).
    pub hostaddr: Option<IpAddr>,
    /// `PGPORT`, default 5432.
    pub port: u16,
    /// `PGUSER`, default: the name of the effective OS user, like libpq.
    pub user: String,
    /// `PGDATABASE`, default `postgres` (WAL-E always used `postgres`).
    pub dbname: String,
    /// `PGAPPNAME`, default [`DEFAULT_APPLICATION_NAME`].
    pub application_name: String,
    /// `PGCONNECT_TIMEOUT` in seconds; unset, zero or negative: wait
    /// forever; libpq's minimum of 2 s applies.
    pub connect_timeout: Option<Duration>,
    /// `PGOPTIONS`, passed to the server as the `options` startup parameter.
    pub options: Option<String>,
    /// `PGSSLMODE` (default `prefer`); TCP only.
    pub ssl_mode: tls::SslMode,
    /// `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY` or their defaults.
    pub tls_files: tls::TlsFiles,
    password: Option<Password>,
}

impl fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectParams")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .field("ssl_mode", &self.ssl_mode)
            .field("tls_files", &self.tls_files)
            .field(
                "password",
                &self.password.as_ref().map(|p| match &p.source {
                    PasswordSource::Environment => "<from PGPASSWORD>".to_string(),
                    PasswordSource::File(path) => format!("<from {}>", path.display()),
                }),
            )
            .finish()
    }
}

fn bad_setting(name: &str, value: &str, why: &str) -> UserError {
    UserError::new(format!("invalid value for {name}"))
        .detail(format!("{name} is set to {value:?}: {why}"))
        .hint(format!("Correct or unset {name}."))
}

/// A libpq variable: unset and empty are the same, as in libpq.
fn var(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name).filter(|v| !v.is_empty())
}

/// The first element of a libpq comma list (`PGHOST=a,b`).
fn first_of_list(value: &str) -> &str {
    value.split(',').next().unwrap_or("").trim()
}

/// The first of `candidates` that is an existing directory, else the last.
fn pick_default_socket_dir(candidates: &[&Path]) -> PathBuf {
    candidates
        .iter()
        .find(|dir| dir.is_dir())
        .or(candidates.last())
        .map(|dir| dir.to_path_buf())
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Name and home directory of the effective OS user (`getpwuid_r`), as
/// libpq looks them up.
fn os_user() -> Option<(String, PathBuf)> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `passwd` is plain old data; zeroed is a valid value for it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the reads
    // of the strings it backs, done before returning.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() || pwd.pw_dir.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so both are NUL-terminated strings in `buf`.
    let (name, dir) = unsafe { (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir)) };
    Some((
        name.to_string_lossy().into_owned(),
        PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())),
    ))
}

impl ConnectParams {
    /// Reads the libpq environment through `env` (see the field docs).
    ///
    /// The password is `PGPASSWORD`, or else looked up in `PGPASSFILE` or
    /// `$HOME/.pgpass` (home from the passwd entry when `HOME` is unset) with
    /// libpq's rules: a Unix-socket connection in a default socket directory
    /// matches host `localhost`, any other socket directory matches its path;
    /// a file group or others can access is ignored with a warning.
    ///
    /// `PGSSLMODE` and the certificate files work as in libpq over TCP (see
    /// [`tls`]); Unix sockets never use TLS, as in libpq.
    /// `PGSERVICE` is refused rather than silently ignored.
    pub fn from_env(env: &dyn Env) -> Result<ConnectParams, UserError> {
        if let Some(service) = var(env, "PGSERVICE") {
            return Err(UserError::new("PGSERVICE is not supported")
                .detail(format!(
                    "PGSERVICE is set to {service:?}, but connection service files are not read."
                ))
                .hint("Set PGHOST, PGPORT, PGUSER and PGDATABASE instead, and unset PGSERVICE."));
        }

        let host = match var(env, "PGHOST").as_deref().map(first_of_list) {
            None | Some("") => {
                let dirs: Vec<&Path> = DEFAULT_SOCKET_DIRS.iter().map(Path::new).collect();
                Host::Socket(pick_default_socket_dir(&dirs))
            }
            Some(h) if h.starts_with('/') => Host::Socket(PathBuf::from(h)),
            Some(h) if h.starts_with('@') => {
                return Err(bad_setting(
                    "PGHOST",
                    h,
                    "abstract Unix sockets are not supported.",
                ));
            }
            Some(h) => Host::Tcp(h.to_string()),
        };

        let hostaddr =
            match var(env, "PGHOSTADDR") {
                None => None,
                Some(raw) => {
                    let first = first_of_list(&raw);
                    if first.is_empty() {
                        None
                    } else {
                        Some(first.parse::<IpAddr>().map_err(|_| {
                            bad_setting("PGHOSTADDR", &raw, "it is not an IP address.")
                        })?)
                    }
                }
            };

        let port_text = var(env, "PGPORT")
            .map(|p| first_of_list(&p).to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "5432".to_string());
        let port = port_text
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                bad_setting("PGPORT", &port_text, "a port is a number from 1 to 65535.")
            })?;

        let user = match var(env, "PGUSER") {
            Some(user) => user,
            None => os_user().map(|(name, _)| name).ok_or_else(|| {
                UserError::new("could not determine the database user name")
                    .detail("PGUSER is not set and the current OS user has no passwd entry.")
                    .hint("Set PGUSER.")
            })?,
        };
        let dbname = var(env, "PGDATABASE").unwrap_or_else(|| "postgres".to_string());
        let application_name =
            var(env, "PGAPPNAME").unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_string());

        let connect_timeout = match var(env, "PGCONNECT_TIMEOUT") {
            None => None,
            Some(raw) => {
                let secs: i64 = raw.trim().parse().map_err(|_| {
                    bad_setting(
                        "PGCONNECT_TIMEOUT",
                        &raw,
                        "it must be a whole number of seconds.",
                    )
                })?;
                match secs {
                    s if s <= 0 => None,
                    1 => Some(Duration::from_secs(2)),
                    s => Some(Duration::from_secs(s as u64)),
                }
            }
        };

        let ssl_mode = tls::SslMode::parse(var(env, "PGSSLMODE").as_deref())?;
        let dot_postgresql = var(env, "HOME")
            .map(PathBuf::from)
            .or_else(|| os_user().map(|(_, home)| home))
            .unwrap_or_default()
            .join(".postgresql");
        let tls_files = tls::TlsFiles {
            root_cert: match var(env, "PGSSLROOTCERT") {
                Some(system) if system == "system" => None,
                Some(path) => Some(PathBuf::from(path)),
                None => Some(dot_postgresql.join("root.crt")),
            },
            client_cert: var(env, "PGSSLCERT")
                .map(PathBuf::from)
                .unwrap_or_else(|| dot_postgresql.join("postgresql.crt")),
            client_key: var(env, "PGSSLKEY")
                .map(PathBuf::from)
                .unwrap_or_else(|| dot_postgresql.join("postgresql.key")),
        };

        let options = var(env, "PGOPTIONS");

        let mut params = ConnectParams {
            host,
            hostaddr,
            port,
            user,
            dbname,
            application_name,
            connect_timeout,
            options,
            ssl_mode,
            tls_files,
            password: None,
        };
        params.password = match var(env, "PGPASSWORD") {
            Some(secret) => Some(Password {
                secret,
                source: PasswordSource::Environment,
            }),
            None => params.password_from_file(env, &port_text),
        };
        Ok(params)
    }

    /// The password-file lookup of libpq's `passwordFromFile`.
    fn password_from_file(&self, env: &dyn Env, port_text: &str) -> Option<Password> {
        let path = match var(env, "PGPASSFILE") {
            Some(path) => PathBuf::from(path),
            None => {
                let home = var(env, "HOME")
                    .map(PathBuf::from)
                    .or_else(|| os_user().map(|(_, home)| home))?;
                home.join(".pgpass")
            }
        };
        let host_key = match (&self.host, self.hostaddr) {
            (Host::Socket(dir), _) => {
                if DEFAULT_SOCKET_DIRS.iter().any(|d| Path::new(d) == dir) {
                    "localhost".to_string()
                } else {
                    dir.display().to_string()
                }
            }
            (Host::Tcp(name), _) => name.clone(),
        };
        let key = pgpass::PassKey {
            host: &host_key,
            port: port_text,
            database: &self.dbname,
            user: &self.user,
        };
        match pgpass::lookup(&path, key) {
            Ok(Some(secret)) => Some(Password {
                secret,
                source: PasswordSource::File(path),
            }),
            Ok(None) | Err(pgpass::Skipped::Missing) => None,
            Err(pgpass::Skipped::NotAFile) => {
                tracing::warn!(
                    detail = %format!("\"{}\" is not a plain file.", path.display()),
                    "password file ignored"
                );
                None
            }
            Err(pgpass::Skipped::Insecure { mode }) => {
                tracing::warn!(
                    detail = %format!(
                        "Password file \"{}\" has group or world access (mode {mode:04o}).",
                        path.display()
                    ),
                    hint = "Permissions should be u=rw (0600) or less, as libpq requires.",
                    "password file ignored"
                );
                None
            }
            Err(pgpass::Skipped::Unreadable(e)) => {
                tracing::warn!(
                    detail = %format!("Reading \"{}\" failed: {e}.", path.display()),
                    "password file ignored"
                );
                None
            }
        }
    }

    /// True when a password will be sent if the server asks for one.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Where the password comes from, if there is one.
    pub fn password_source(&self) -> Option<&PasswordSource> {
        self.password.as_ref().map(|p| &p.source)
    }

    /// `host=… port=… user=… dbname=…` for messages; no password.
    pub fn describe(&self) -> String {
        let mut out = format!("host={}", self.host);
        if let Some(addr) = self.hostaddr {
            out.push_str(&format!(" hostaddr={addr}"));
        }
        out.push_str(&format!(
            " port={} user={} dbname={}",
            self.port, self.user, self.dbname
        ));
        out
    }

    /// Whether TLS may be negotiated: over TCP, unless `PGSSLMODE=disable`.
    fn uses_tls(&self) -> bool {
        matches!(self.host, Host::Tcp(_)) && self.ssl_mode != tls::SslMode::Disable
    }

    fn to_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        match (&self.host, self.hostaddr) {
            (Host::Socket(dir), _) => {
                config.host_path(dir);
            }
            (Host::Tcp(name), addr) => {
                config.host(name);
                if let Some(addr) = addr {
                    config.hostaddr(addr);
                }
            }
        }
        config
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .ssl_mode(if self.uses_tls() {
                self.ssl_mode.negotiation()
            } else {
                tokio_postgres::config::SslMode::Disable
            })
            // Notice a dead peer within minutes rather than the system's
            // default of two hours (TCP only; backups run for long).
            .keepalives_idle(Duration::from_secs(60))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(6);
        if let Some(timeout) = self.connect_timeout {
            config.connect_timeout(timeout);
        }
        if let Some(options) = &self.options {
            config.options(options);
        }
        if let Some(password) = &self.password {
            config.password(password.secret.as_bytes());
        }
        config
    }
}

// ---------------------------------------------------------------------------
// Errors

/// One-line description of a server error: `ERROR:  message (SQLSTATE x)`
/// plus the server's DETAIL.
fn db_error_text(e: &DbError) -> String {
    let mut out = format!(
        "{}: {} (SQLSTATE {})",
        e.severity(),
        e.message(),
        e.code().code()
    );
    if let Some(detail) = e.detail() {
        out.push_str(&format!(" DETAIL: {detail}"));
    }
    out
}

/// Describes a tokio-postgres error with its causes (its own `Display` says
/// only "db error" or "error communicating with the server").
fn pg_error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db_error_text(db);
    }
    let mut out = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(cause) = cur {
        out.push_str(&format!(": {cause}"));
        cur = cause.source();
    }
    out
}

/// True when `e` means the connection is gone: closed, an I/O error, or a
/// FATAL/PANIC from the server (which then ends the session).
fn is_connection_loss(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        return matches!(db.severity(), "FATAL" | "PANIC");
    }
    e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// The backup functions of a server version: SQL to start and stop, and the
/// signatures to GRANT EXECUTE on.
struct BackupFunctions {
    start_sql: &'static str,
    stop_sql: &'static str,
    start_signature: &'static str,
    stop_signature: &'static str,
}

fn backup_functions(server_version_num: u32) -> BackupFunctions {
    if server_version_num >= 150000 {
        BackupFunctions {
            start_sql: "SELECT pg_backup_start($1, $2)::text",
            stop_sql: "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)",
            start_signature: "pg_backup_start(text, boolean)",
            stop_signature: "pg_backup_stop(boolean)",
        }
    } else {
        BackupFunctions {
            start_sql: "SELECT pg_start_backup($1, $2, false)::text",
            stop_sql: "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, true)",
            start_signature: "pg_start_backup(text, boolean, boolean)",
            stop_signature: "pg_stop_backup(boolean, boolean)",
        }
    }
}

/// A failed backup function call as a [`UserError`]: `msg`, the server's
/// error as DETAIL, and a HINT that fits the failure.
fn backup_error(msg: &str, e: &tokio_postgres::Error, functions: &BackupFunctions) -> UserError {
    let mut err = UserError::new(msg).detail(pg_error_text(e));
    if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        err = err.hint(format!(
            "Connect as a superuser, or let this role run the backup functions: \
             GRANT EXECUTE ON FUNCTION {}, {} TO <role>;",
            functions.start_signature, functions.stop_signature
        ));
    } else if let Some(hint) = e.as_db_error().and_then(DbError::hint) {
        err = err.hint(hint.to_string());
    } else if is_connection_loss(e) {
        err = err.hint(SESSION_LOST_HINT);
    }
    err
}

const SESSION_LOST_HINT: &str = "The connection to PostgreSQL was lost. PostgreSQL aborts a \
     non-exclusive backup when its session ends, so this backup cannot be used: run backup-push again.";

fn query_error(what: &str, e: &tokio_postgres::Error) -> UserError {
    let err = UserError::new(format!("could not {what}")).detail(pg_error_text(e));
    match e.as_db_error().and_then(DbError::hint) {
        Some(hint) => err.hint(hint.to_string()),
        None if is_connection_loss(e) => err.hint(SESSION_LOST_HINT),
        None => err,
    }
}

// ---------------------------------------------------------------------------
// Session

/// Where a non-exclusive backup starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStart {
    pub lsn: Lsn,
    /// `pg_walfile_name_offset(lsn)`: the start segment ...
    pub segment: SegmentName,
    /// ... and the byte offset in it (WAL-E's backup name prints it in
    /// decimal, see [`crate::layout::BackupName::new`]).
    pub offset: u64,
}

/// What `pg_backup_stop` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStop {
    pub lsn: Lsn,
    /// `pg_walfile_name_offset(lsn)`: the last segment the backup needs ...
    pub segment: SegmentName,
    /// ... and the offset of the stop location in it.
    pub offset: u64,
    /// Contents for `backup_label` in the restored data directory.
    pub backup_label: String,
    /// Contents for `tablespace_map`; `None` without tablespaces.
    pub tablespace_map: Option<String>,
}

/// One connection to PostgreSQL, kept open for the whole backup.
///
/// Needs a Tokio runtime: [`Session::connect`] spawns the task that drives
/// the connection. Dropping the session closes the connection, which makes
/// the server abort a backup still in progress in it.
///
/// Server notices (e.g. `pg_backup_stop`'s "still waiting for all required
/// WAL segments to be archived") are logged as warnings.
pub struct Session {
    client: tokio_postgres::Client,
    server_version_num: u32,
    backend_pid: i32,
    /// `None` while the connection is up; the reason once it has ended.
    closed: watch::Receiver<Option<String>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("server_version_num", &self.server_version_num)
            .field("backend_pid", &self.backend_pid)
            .finish_non_exhaustive()
    }
}

/// Server messages at their own level: a WARNING (such as "still waiting
/// for all required WAL segments to be archived") is a warning, a NOTICE is
/// information, so `--terse` keeps quiet about the normal ones.
fn log_notice(notice: &DbError) {
    let detail = notice.detail().map(str::to_string);
    let hint = notice.hint().map(str::to_string);
    let (severity, message) = (notice.severity(), notice.message());
    if matches!(severity, "WARNING" | "ERROR" | "FATAL" | "PANIC") {
        tracing::warn!(
            detail = detail.as_deref(),
            hint = hint.as_deref(),
            "PostgreSQL says: {severity}: {message}"
        );
    } else {
        tracing::info!(
            detail = detail.as_deref(),
            hint = hint.as_deref(),
            "PostgreSQL says: {severity}: {message}"
        );
    }
}

/// Drives the connection, logs the server's notices, and publishes why it
/// ended (the session is watched throughout a backup).
async fn watch_connection<S, T>(mut connection: Connection<S, T>, tx: watch::Sender<Option<String>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let reason = loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notice(notice))) => log_notice(&notice),
            Some(Ok(_)) => {}
            Some(Err(e)) => break pg_error_text(&e),
            None => break "the connection was closed".to_string(),
        }
    };
    let _ = tx.send(Some(reason));
}

impl Session {
    /// Connects, sets `statement_timeout = 0` for the session (WAL-E passed
    /// `--statement-timeout=0` in `PGOPTIONS`) and reads the server version.
    pub async fn connect(params: &ConnectParams) -> Result<Session, UserError> {
        let (tx, rx) = watch::channel(None);
        let config = params.to_config();
        let connected = if params.uses_tls() {
            let tls = tls::client_config(params.ssl_mode, &params.tls_files)?;
            config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await
                .map(|(client, connection)| {
                    tokio::spawn(watch_connection(connection, tx));
                    client
                })
        } else {
            config.connect(NoTls).await.map(|(client, connection)| {
                tokio::spawn(watch_connection(connection, tx));
                client
            })
        };
        let client = connected.map_err(|e| connect_error(params, &e))?;
        let session_error = |e: tokio_postgres::Error| {
            UserError::new("could not set up the PostgreSQL session").detail(format!(
                "{}: {}",
                params.describe(),
                pg_error_text(&e)
            ))
        };
        client
            .batch_execute("SET statement_timeout = 0")
            .await
            .map_err(session_error)?;
        // The session sits idle while partitions upload: a server-wide
        // idle_session_timeout (PostgreSQL 14+) would abort every long backup.
        client
            .batch_execute(
                "DO $$ BEGIN \
                   IF current_setting('server_version_num')::int >= 140000 THEN \
                     SET idle_session_timeout = 0; \
                   END IF; \
                 END $$",
            )
            .await
            .map_err(session_error)?;
        let row = client
            .query_one(
                "SELECT current_setting('server_version_num')::int4, pg_backend_pid()",
                &[],
            )
            .await
            .map_err(session_error)?;
        let version: i32 = row.get(0);
        Ok(Session {
            client,
            server_version_num: u32::try_from(version).unwrap_or(0),
            backend_pid: row.get(1),
            closed: rx,
        })
    }

    /// `server_version_num`, e.g. 150004.
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// The process id of this session's backend (`pg_backend_pid()`), e.g.
    /// for `pg_stat_activity` or log messages.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// `SELECT version()`, the text backup-push stores as
    /// `extended_version.txt`.
    pub async fn version_string(&self) -> Result<String, UserError> {
        let row = self
            .client
            .query_one("SELECT version()", &[])
            .await
            .map_err(|e| query_error("read the PostgreSQL version", &e))?;
        Ok(row.get(0))
    }

    /// The value of a run-time setting as `SHOW` prints it
    /// (`current_setting(name)`), e.g. `data_directory`.
    pub async fn setting(&self, name: &str) -> Result<String, UserError> {
        let row = self
            .client
            .query_one("SELECT current_setting($1)", &[&name])
            .await
            .map_err(|e| query_error(&format!("read the setting {name}"), &e))?;
        Ok(row.get(0))
    }

    /// `SHOW wal_segment_size` in bytes (`16MB` → 16777216).
    pub async fn wal_segment_size(&self) -> Result<u64, UserError> {
        let text = self.setting("wal_segment_size").await?;
        parse_memory_setting(&text)
            .filter(|size| is_valid_segment_size(*size))
            .ok_or_else(|| {
                UserError::new("unexpected WAL segment size")
                    .detail(format!("The server reports wal_segment_size = {text:?}."))
            })
    }

    /// `pg_walfile_name_offset(lsn)`; errors become `msg`.
    async fn name_offset(
        &self,
        lsn: Lsn,
        msg: &str,
        functions: &BackupFunctions,
    ) -> Result<(SegmentName, u64), UserError> {
        let row = self
            .client
            .query_one(
                "SELECT file_name, file_offset FROM pg_walfile_name_offset($1::text::pg_lsn)",
                &[&lsn.to_string()],
            )
            .await
            .map_err(|e| backup_error(msg, &e, functions))?;
        let name: String = row.get(0);
        let offset: i32 = row.get(1);
        match (SegmentName::parse(&name), u64::try_from(offset)) {
            (Some(segment), Ok(offset)) => Ok((segment, offset)),
            _ => Err(UserError::new(msg).detail(format!(
                "pg_walfile_name_offset('{lsn}') returned the file name {name:?} and offset {offset}."
            ))),
        }
    }

    /// Starts a non-exclusive backup: `pg_backup_start(label, fast)` on 15+,
    /// `pg_start_backup(label, fast, false)` on 10 to 14. `fast` asks for an
    /// immediate checkpoint (WAL-E used a spread one: `fast = false`).
    pub async fn start_backup(&self, label: &str, fast: bool) -> Result<BackupStart, UserError> {
        const MSG: &str = "could not start a base backup";
        check_backup_version(self.server_version_num)?;
        let functions = backup_functions(self.server_version_num);
        let row = self
            .client
            .query_one(functions.start_sql, &[&label, &fast])
            .await
            .map_err(|e| backup_error(MSG, &e, &functions))?;
        let lsn = parse_server_lsn(row.get(0), MSG)?;
        let (segment, offset) = self.name_offset(lsn, MSG, &functions).await?;
        Ok(BackupStart {
            lsn,
            segment,
            offset,
        })
    }

    /// Stops the backup started in this session, waiting until the WAL it
    /// needs is archived: `pg_backup_stop(true)` on 15+,
    /// `pg_stop_backup(false, true)` on 10 to 14.
    pub async fn stop_backup(&self) -> Result<BackupStop, UserError> {
        const MSG: &str = "could not stop the base backup";
        let functions = backup_functions(self.server_version_num);
        let row = self
            .client
            .query_one(functions.stop_sql, &[])
            .await
            .map_err(|e| backup_error(MSG, &e, &functions))?;
        let lsn = parse_server_lsn(row.get(0), MSG)?;
        let backup_label: String = row.get(1);
        let tablespace_map: Option<String> =
            row.get::<_, Option<String>>(2).filter(|s| !s.is_empty());
        let (segment, offset) = self.name_offset(lsn, MSG, &functions).await?;
        Ok(BackupStop {
            lsn,
            segment,
            offset,
            backup_label,
            tablespace_map,
        })
    }

    /// Resolves, with the reason, once the connection has ended: the server
    /// restarted or terminated the backend (`pg_terminate_backend`), the
    /// network failed, or the session was dropped. Resolves at once if that
    /// already happened. Any number of these futures may be taken; each is
    /// independent of the session's lifetime.
    ///
    /// backup-push can `select!` on it while uploading, to stop early when
    /// the backup can no longer succeed.
    pub fn closed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.closed.clone();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone().unwrap_or_default(),
                Err(_) => "the connection task ended".to_string(),
            }
        }
    }

    /// The reason, if the connection has already ended (see [`Self::closed`]).
    pub fn closed_reason(&self) -> Option<String> {
        self.closed.borrow().clone()
    }
}

fn parse_server_lsn(text: Option<String>, msg: &str) -> Result<Lsn, UserError> {
    let text = text.unwrap_or_default();
    text.parse()
        .map_err(|e: ParseLsnError| UserError::new(msg).detail(e.to_string()))
}

fn connect_error(params: &ConnectParams, e: &tokio_postgres::Error) -> UserError {
    let text = pg_error_text(e);
    let err = UserError::new("could not connect to PostgreSQL").detail(format!(
        "Connecting to {} failed: {text}",
        params.describe()
    ));
    let auth_failed = matches!(
        e.code(),
        Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    );
    if text.contains("password missing") {
        return err.hint(
            "The server asks for a password: set PGPASSWORD, or add a line to ~/.pgpass (or the file PGPASSFILE names).",
        );
    }
    if auth_failed {
        let source = match params.password_source() {
            Some(PasswordSource::Environment) => "The password came from PGPASSWORD.".to_string(),
            Some(PasswordSource::File(path)) => {
                format!("The password came from \"{}\".", path.display())
            }
            None => "No password was supplied.".to_string(),
        };
        return err.hint(format!(
            "{source} Check the user, the password and the server's pg_hba.conf."
        ));
    }
    if let Some(hint) = e.as_db_error().and_then(DbError::hint) {
        return err.hint(hint.to_string());
    }
    if text.contains("TLS") || text.contains("certificate") {
        return err.hint(format!(
            "PGSSLMODE is {}: check that the server's certificate is signed by the CA in PGSSLROOTCERT (default ~/.postgresql/root.crt) and, for verify-full, names the host as PGHOST does.",
            params.ssl_mode.name()
        ));
    }
    let place = match &params.host {
        Host::Socket(dir) => format!(
            "on the Unix socket \"{}/.s.PGSQL.{}\"",
            dir.display(),
            params.port
        ),
        Host::Tcp(name) => format!("at {name}, port {}", params.port),
    };
    err.hint(format!(
        "Is the server running and accepting connections {place}? The connection comes from \
         the libpq variables PGHOST, PGPORT, PGUSER, PGDATABASE and PGPASSWORD (or ~/.pgpass)."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn backup_push_refuses_servers_before_10() {
        // 9.6 has non-exclusive backups but a pg_control the final partition
        // cannot check: every backup would fail after uploading everything.
        for old in [90624, 90600, 90500, 0] {
            let err = check_backup_version(old).unwrap_err();
            assert_eq!(
                err.msg,
                "this PostgreSQL version is too old for backup-push"
            );
            assert!(err.detail.unwrap().contains(&old.to_string()));
            assert!(err.hint.is_some());
        }
        for supported in [100000, 100023, 150004, 180000] {
            assert!(check_backup_version(supported).is_ok(), "{supported}");
        }
    }

    #[test]
    fn lsn_display_and_parse() {
        assert_eq!(Lsn(0x0000_0001_0000_0028).to_string(), "1/28");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x0000_00AB_16B3_748F).to_string(), "AB/16B3748F");
        assert_eq!("0/16B3748".parse(), Ok(Lsn(0x16B_3748)));
        assert_eq!("ab/16b3748f".parse(), Ok(Lsn(0x0000_00AB_16B3_748F)));
        assert_eq!(
            "FFFFFFFF/FFFFFFFF".parse(),
            Ok(Lsn(u64::MAX)),
            "both halves at their maximum"
        );
        for bad in [
            "",
            "0",
            "/1",
            "1/",
            "1/2/3",
            "123456789/0",
            "g/0",
            "+1/0",
            " 0/1",
            "0/-1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
        let lsn = Lsn(0x0000_0012_3456_789A);
        assert_eq!(lsn.to_string().parse(), Ok(lsn));
        assert!(Lsn(0x1_0000_0000) > Lsn(0xFFFF_FFFF));
    }

    fn seg(name: &str) -> SegmentName {
        SegmentName::parse(name).unwrap()
    }

    #[test]
    fn segment_of_16mib() {
        let size = 16 << 20;
        assert_eq!(
            segment_of(Lsn(0x0300_0028), 1, size),
            (seg("000000010000000000000003"), 40)
        );
        assert_eq!(
            segment_of(Lsn(0x0000_0001_FF12_3456), 2, size),
            (seg("0000000200000001000000FF"), 0x12_3456)
        );
        // The boundary belongs to the segment it starts.
        assert_eq!(
            segment_of(Lsn(0x0000_0005_0000_0000), 1, size),
            (seg("000000010000000500000000"), 0)
        );
    }

    #[test]
    fn segment_of_other_sizes_and_timelines() {
        // 64 MiB: 64 segments per xlogid, the last being 3F.
        let size = 64 << 20;
        assert_eq!(
            segment_of(Lsn(0x0000_0005_FC00_0028), 0x1A, size),
            (seg("0000001A000000050000003F"), 40)
        );
        assert_eq!(
            segment_of(Lsn(0x0000_0000_0400_0000), 1, size),
            (seg("000000010000000000000001"), 0)
        );
        assert_eq!(
            segment_of(Lsn(0x0000_0000_07FF_FFFF), 1, size),
            (seg("000000010000000000000001"), 0x3FF_FFFF)
        );
        // 1 MiB: 4096 segments per xlogid.
        assert_eq!(
            segment_of(Lsn(0x0000_0002_ABC1_2345), 0xFFFF_FFFF, 1 << 20),
            (seg("FFFFFFFF0000000200000ABC"), 0x1_2345)
        );
        // 1 GiB: 4 segments per xlogid.
        assert_eq!(
            segment_of(Lsn(0x0000_0007_C000_0010), 3, 1 << 30),
            (seg("000000030000000700000003"), 16)
        );
    }

    #[test]
    fn segment_start_inverts_segment_of() {
        for (lsn, size) in [
            (0x0000_0001_FF00_0000, 16 << 20),
            (0x0000_0005_FC00_0000, 64 << 20),
            (0x0000_0002_ABC0_0000, 1 << 20),
            (0x0000_0007_C000_0000, 1 << 30),
        ] {
            let (name, offset) = segment_of(Lsn(lsn), 7, size);
            assert_eq!(offset, 0);
            assert_eq!(segment_start(name, size), Some(Lsn(lsn)), "{name}");
        }
        // 64 MiB segments end at 3F in each xlogid.
        assert_eq!(
            segment_start(seg("000000010000000000000040"), 64 << 20),
            None
        );
    }

    #[test]
    #[should_panic(expected = "invalid WAL segment size")]
    fn segment_of_rejects_invalid_sizes() {
        segment_of(Lsn(0), 1, 3 << 20);
    }

    #[test]
    fn segment_sizes() {
        assert!(is_valid_segment_size(1 << 20));
        assert!(is_valid_segment_size(16 << 20));
        assert!(is_valid_segment_size(1 << 30));
        assert!(!is_valid_segment_size(1 << 19));
        assert!(!is_valid_segment_size(2 << 30));
        assert!(!is_valid_segment_size(24 << 20));
        assert!(!is_valid_segment_size(0));
    }

    #[test]
    fn label_like_python_isoformat() {
        let t = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(
            backup_label_name(t + chrono::Duration::microseconds(123_456)),
            "freeze_start_2024-01-02T03:04:05.123456+00:00"
        );
        assert_eq!(
            backup_label_name(t + chrono::Duration::microseconds(7)),
            "freeze_start_2024-01-02T03:04:05.000007+00:00"
        );
        // Sub-microsecond digits are dropped, and a zero fraction is omitted.
        assert_eq!(
            backup_label_name(t + chrono::Duration::nanoseconds(999)),
            "freeze_start_2024-01-02T03:04:05+00:00"
        );
    }

    #[test]
    fn memory_settings() {
        assert_eq!(parse_memory_setting("16MB"), Some(16 << 20));
        assert_eq!(parse_memory_setting("1GB"), Some(1 << 30));
        assert_eq!(parse_memory_setting("65536kB"), Some(64 << 20));
        assert_eq!(parse_memory_setting("512B"), Some(512));
        assert_eq!(parse_memory_setting("2048"), Some(2048));
        assert_eq!(parse_memory_setting("1TB"), Some(1 << 40));
        assert_eq!(parse_memory_setting("16 MB"), Some(16 << 20));
        for bad in ["", "MB", "16mb", "16XB", "-1MB", "99999999999999999999"] {
            assert_eq!(parse_memory_setting(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn default_socket_dir_is_the_first_existing() {
        let a = tempfile::tempdir().unwrap();
        let missing = a.path().join("missing");
        let b = tempfile::tempdir().unwrap();
        assert_eq!(
            pick_default_socket_dir(&[&missing, b.path()]),
            b.path().to_path_buf()
        );
        assert_eq!(
            pick_default_socket_dir(&[a.path(), b.path()]),
            a.path().to_path_buf()
        );
        // None exists: the last one, as libpq would still try its default.
        assert_eq!(
            pick_default_socket_dir(&[&missing, &missing.join("x")]),
            missing.join("x")
        );
    }

    #[test]
    fn os_user_matches_the_effective_uid() {
        let (name, home) = os_user().expect("passwd entry");
        assert!(!name.is_empty());
        assert!(home.is_absolute());
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        if uid == 0 {
            assert_eq!(name, "root");
        }
    }
}
