//! The real WAL-E 1.1.1 beside our wal-e, for the interoperability tests
//! (`interop.rs`, `tests/interop_wal_e.rs`).
//!
//! `scripts/install-wal-e.sh` installs WAL-E from PyPI (exact pins in
//! `tests/wal-e-1.1.1-requirements.txt`) into a cached virtualenv the
//! `postgres` user can run, with a launcher, `tests/wal_e_py/wal-e-local.py`.
//!
//! Both tools are run the same way: as the `postgres` user (as PostgreSQL
//! runs them from `archive_command` and `restore_command`, and as a backup
//! job runs them), with exactly the variables given and nothing inherited.
//!
//! # Backends
//!
//! Since our wal-e reads WAL-E's variables, WAL-E gets the very
//! [`BackendEnv`] a [`TestBackend`] hands out, through
//! [`TestBackend::wal_e_py_env`], whose default returns it unchanged. The
//! one place WAL-E 1.1.1 needs help is its Azure client, which ignores
//! `WALE_WABS_ENDPOINT` and always goes to `https://<account>.blob.core.windows.net`:
//! the launcher points it at `WALE_WABS_ENDPOINT` when that is set, so
//! Azurite needs nothing either. A backend whose WAL-E side needs other
//! variables (say a CA bundle) overrides `wal_e_py_env`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use super::backend::{BackendEnv, TestBackend};
use super::cli::wal_e_bin;
use super::gpg::{GpgHome, rsa_key_home};
use super::pg::{DEFAULT_BINDIR, PG_USER, chown_to_postgres, is_root};

/// WAL-E 1.1.1's launcher, installed (or found in the cache) on first use.
pub fn wal_e_py() -> &'static Path {
    static LAUNCHER: OnceLock<PathBuf> = OnceLock::new();
    LAUNCHER.get_or_init(|| {
        let out = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/install-wal-e.sh"
        ))
        .output()
        .expect("run scripts/install-wal-e.sh");
        assert!(
            out.status.success(),
            "install-wal-e.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Which program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// Our wal-e, the binary under test.
    Ours,
    /// The real WAL-E 1.1.1.
    WalE,
}

impl Tool {
    pub fn program(self) -> PathBuf {
        match self {
            Tool::Ours => wal_e_bin(),
            Tool::WalE => wal_e_py().to_path_buf(),
        }
    }

    /// For messages.
    pub fn label(self) -> &'static str {
        match self {
            Tool::Ours => "our wal-e",
            Tool::WalE => "WAL-E 1.1.1",
        }
    }

    fn file_stem(self) -> &'static str {
        match self {
            Tool::Ours => "wal-e",
            Tool::WalE => "wal-e-py",
        }
    }
}

/// One tool with its complete environment: the store's variables, logging
/// to stderr, a PATH with `psql` (WAL-E's backup-push), `lzop`, `pv` and
/// `gpg`, and whatever else the scenario adds (GnuPG, libpq).
pub struct Side {
    pub tool: Tool,
    vars: Vec<(String, String)>,
}

impl Side {
    pub fn new(
        tool: Tool,
        backend: &dyn TestBackend,
        store: &BackendEnv,
        extra: &[(String, String)],
    ) -> Side {
        let store = match tool {
            Tool::Ours => store.clone(),
            Tool::WalE => backend.wal_e_py_env(store),
        };
        let mut vars = store.vars;
        vars.push(("WALE_LOG_DESTINATION".into(), "stderr".into()));
        vars.push(("PATH".into(), format!("{DEFAULT_BINDIR}:/usr/bin:/bin")));
        vars.extend(extra.iter().cloned());
        Side { tool, vars }
    }

    /// The tool with `args`, as the `postgres` user when the tests run as
    /// root, with exactly this side's variables.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", PG_USER, "--", "env", "-i"]);
            cmd
        } else {
            let mut cmd = Command::new("env");
            cmd.arg("-i");
            cmd
        };
        cmd.args(self.vars.iter().map(|(k, v)| format!("{k}={v}")))
            .arg(self.tool.program())
            .args(args)
            // Wherever the tests run from, postgres can enter /.
            .current_dir("/")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.tool.label()))
    }

    /// Runs `args`, asserting exit 0.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} {args:?}: {}",
            self.tool.label(),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `dir/<tool>.sh`, which runs the tool with this side's variables, for
    /// `archive_command` and `restore_command`. Mode 0700, owned by
    /// `postgres`: it holds the store's secrets.
    pub fn launcher(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.sh", self.tool.file_stem()));
        let mut script = String::from("#!/bin/sh\nexec env -i");
        for (k, v) in &self.vars {
            script.push_str(&format!(" {k}={}", shell_quote(v)));
        }
        script.push_str(&format!(
            " {} \"$@\"\n",
            shell_quote(&self.tool.program().display().to_string())
        ));
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown_to_postgres(&path);
        path
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One GnuPG home and key both tools encrypt to and decrypt with, owned
/// by `postgres` (whose gpg-agent unlocks the key for WAL-E's `gpg -d`).
pub struct SharedKey {
    home: GpgHome,
    pub key_id: String,
}

impl SharedKey {
    pub fn new() -> SharedKey {
        let (home, key_id) = rsa_key_home();
        // The agent that generated the key runs as this user; postgres
        // starts its own.
        let out = Command::new("gpgconf")
            .env("GNUPGHOME", home.path())
            .args(["--kill", "gpg-agent"])
            .output()
            .expect("run gpgconf");
        assert!(out.status.success(), "gpgconf --kill gpg-agent");
        chown_to_postgres(home.path());
        SharedKey { home, key_id }
    }

    /// `WALE_GPG_KEY_ID` and `GNUPGHOME`.
    pub fn vars(&self) -> Vec<(String, String)> {
        vec![
            ("WALE_GPG_KEY_ID".into(), self.key_id.clone()),
            ("GNUPGHOME".into(), self.home.path().display().to_string()),
        ]
    }
}

impl Default for SharedKey {
    fn default() -> Self {
        Self::new()
    }
}
