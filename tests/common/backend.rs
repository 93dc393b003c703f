//! The storage services the command tests run against, behind one trait, so
//! that every backend passes the same scenarios (`scenarios.rs`).
//!
//! A backend hands out fresh, empty prefixes; wal-e reaches them through
//! environment variables only, as an envdir would give them.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use wal_e::cli::GlobalArgs;
use wal_e::config::Settings;
use wal_e::layout::Layout;
use wal_e::storage::{self, Store};

use super::cli::wal_e_bin;

/// One storage service, reachable from this machine.
pub trait TestBackend {
    /// Short name for messages: "file", "s3", "wabs", "swift".
    fn name(&self) -> &'static str;

    /// Every variable wal-e needs to use a fresh, empty prefix on this
    /// service: the `WALE_*_PREFIX` variable and the endpoint and credential
    /// variables. Each call names a new prefix.
    fn fresh_prefix(&self) -> BackendEnv;

    /// The variables the real WAL-E 1.1.1 (`wal_e_py.rs`) needs for `env`,
    /// a prefix this backend handed out: the same ones, since wal-e reads
    /// WAL-E's. A backend overrides this only where WAL-E needs more.
    fn wal_e_py_env(&self, env: &BackendEnv) -> BackendEnv {
        env.clone()
    }
}

/// The environment of one prefix on one backend.
#[derive(Debug, Clone)]
pub struct BackendEnv {
    pub vars: Vec<(String, String)>,
}

impl BackendEnv {
    pub fn new(vars: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>) -> Self {
        BackendEnv {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A copy with `name` set to `value` (replacing any earlier value).
    pub fn with(&self, name: &str, value: &str) -> BackendEnv {
        let mut vars: Vec<_> = self
            .vars
            .iter()
            .filter(|(k, _)| k != name)
            .cloned()
            .collect();
        vars.push((name.to_string(), value.to_string()));
        BackendEnv { vars }
    }

    /// A copy without `name`.
    pub fn without(&self, name: &str) -> BackendEnv {
        BackendEnv {
            vars: self
                .vars
                .iter()
                .filter(|(k, _)| k != name)
                .cloned()
                .collect(),
        }
    }

    /// `wal-e args…` with exactly this environment (plus PATH and logging to
    /// stderr): nothing leaks in from the test's own environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(wal_e_bin());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WALE_LOG_DESTINATION", "stderr")
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run wal-e")
    }

    /// The store and layout wal-e itself opens for this environment, for
    /// looking at objects directly.
    pub fn open(&self) -> (Arc<dyn Store>, Layout) {
        let env: HashMap<String, String> = self.vars.iter().cloned().collect();
        let settings = Settings::from_args(&GlobalArgs::default(), &env)
            .unwrap_or_else(|e| panic!("settings for {:?}: {e}", self.vars_without_secrets()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt
            .block_on(storage::open(&settings, &env))
            .unwrap_or_else(|e| panic!("open store: {e}"));
        (store, Layout::new(settings.prefix))
    }

    /// An envdir-style launcher, `dir/wal-e.sh`, that runs wal-e with this
    /// environment; for `archive_command` and `restore_command`, which the
    /// `postgres` user runs. Mode 0700: it holds the store's secrets.
    pub fn launcher(&self, dir: &Path) -> PathBuf {
        let path = dir.join("wal-e.sh");
        let mut script = String::from("#!/bin/sh\nexec env");
        for (k, v) in self
            .vars
            .iter()
            .chain(&[("WALE_LOG_DESTINATION".to_string(), "stderr".to_string())])
        {
            script.push_str(&format!(" {k}={}", shell_quote(v)));
        }
        script.push_str(&format!(
            " {} \"$@\"\n",
            shell_quote(&wal_e_bin().display().to_string())
        ));
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        super::pg::chown_to_postgres(&path);
        path
    }

    /// The variable names, for messages that must not print secrets.
    pub fn vars_without_secrets(&self) -> Vec<&str> {
        self.vars.iter().map(|(k, _)| k.as_str()).collect()
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// file:// prefixes in a directory the `postgres` user may write to.
pub struct FileBackend {
    root: tempfile::TempDir,
    next: std::sync::atomic::AtomicU32,
}

impl FileBackend {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        super::pg::make_traversable(root.path());
        FileBackend {
            root,
            next: Default::default(),
        }
    }
}

impl Default for FileBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBackend for FileBackend {
    fn name(&self) -> &'static str {
        "file"
    }

    fn fresh_prefix(&self) -> BackendEnv {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.root.path().join(format!("store-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        super::pg::chown_to_postgres(&dir);
        BackendEnv::new([(
            "WALE_FILE_PREFIX",
            format!("file://localhost{}", dir.display()),
        )])
    }
}
