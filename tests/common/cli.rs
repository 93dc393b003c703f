//! Running the real `wal-e` binary against a file:// store in a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn wal_e_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wal-e"))
}

/// A scratch file:// store and the environment that points wal-e at it.
pub struct FileStoreEnv {
    pub dir: tempfile::TempDir,
    pub extra_env: Vec<(String, String)>,
}

impl FileStoreEnv {
    /// A store whose prefix directory exists, empty (wal-e creates
    /// directories only below it).
    pub fn new() -> Self {
        let env = FileStoreEnv::without_store_dir();
        std::fs::create_dir(env.root()).unwrap();
        env
    }

    /// A prefix naming a directory that does not exist, as under an
    /// unmounted share.
    pub fn without_store_dir() -> Self {
        FileStoreEnv {
            dir: tempfile::tempdir().unwrap(),
            extra_env: Vec::new(),
        }
    }

    /// The directory the prefix names.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn prefix(&self) -> String {
        format!("file://localhost{}", self.root().display())
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(wal_e_bin());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WALE_LOG_DESTINATION", "stderr")
            .env("WALE_FILE_PREFIX", self.prefix())
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run wal-e")
    }

    /// The stored object for a WAL file name.
    pub fn wal_object(&self, name: &str) -> PathBuf {
        self.root().join("wal_005").join(format!("{name}.lzo"))
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Decompresses with the real `lzop` program.
pub fn lzop_decompress(path: &Path) -> Vec<u8> {
    let out = Command::new("lzop")
        .args(["-dc"])
        .arg(path)
        .output()
        .expect("run lzop");
    assert!(
        out.status.success(),
        "lzop -dc {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Pseudo-random bytes (deterministic per seed).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Something shaped like a WAL segment: compressible, but not trivially.
pub fn fake_segment(len: usize, seed: u64) -> Vec<u8> {
    let noise = random_bytes(len / 8, seed);
    let mut out = Vec::with_capacity(len);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(&noise[i % noise.len()..(i % noise.len() + 64).min(noise.len())]);
        out.extend_from_slice(&[0u8; 448]);
        i += 64;
    }
    out.truncate(len);
    out
}

/// A scratch directory the `postgres` user can enter, holding a file://
/// store in `store/` and any other subdirectories it must own (archive
/// copies, tablespaces), for tests where PostgreSQL runs wal-e itself.
pub struct PgScratch {
    tmp: tempfile::TempDir,
}

impl PgScratch {
    pub fn new(dirs: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        super::pg::make_traversable(tmp.path());
        for dir in std::iter::once(&"store").chain(dirs) {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
            super::pg::chown_to_postgres(&tmp.path().join(dir));
        }
        PgScratch { tmp }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    pub fn prefix(&self) -> String {
        format!("file://localhost{}", self.store().display())
    }

    /// `env … wal-e`, as archive_command or restore_command starts it.
    pub fn wal_e_env(&self) -> String {
        format!(
            "env WALE_FILE_PREFIX={} WALE_LOG_DESTINATION=stderr {}",
            self.prefix(),
            wal_e_bin().display()
        )
    }
}

/// A pg_wal directory with archive_status, as PostgreSQL lays it out, in a
/// scratch directory that also has room for fetched files.
pub struct WalDir {
    tmp: tempfile::TempDir,
    pub pg_wal: PathBuf,
}

impl WalDir {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let pg_wal = tmp.path().join("pg_wal");
        std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
        WalDir { tmp, pg_wal }
    }

    /// Writes a WAL file, with its `.ready` status file when `ready`.
    pub fn add(&self, name: &str, data: &[u8], ready: bool) -> PathBuf {
        let path = self.pg_wal.join(name);
        std::fs::write(&path, data).unwrap();
        if ready {
            std::fs::write(self.status(name, "ready"), b"").unwrap();
        }
        path
    }

    pub fn status(&self, name: &str, suffix: &str) -> PathBuf {
        self.pg_wal
            .join("archive_status")
            .join(format!("{name}.{suffix}"))
    }

    /// A path beside pg_wal, e.g. for wal-fetch to write to.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// Something shaped like the WAL segment `name` of `len` bytes (a valid
/// segment size): [`fake_segment`] under the long page header PostgreSQL 15
/// writes at the start of every segment (`XLogLongPageHeaderData`).
pub fn wal_segment(name: &str, len: usize, seed: u64) -> Vec<u8> {
    let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).unwrap();
    let (timeline, log, seg) = (hex(0..8) as u32, hex(8..16), hex(16..24));
    let start_lsn = (log << 32) + seg * len as u64;
    let mut out = fake_segment(len, seed);
    out[0..2].copy_from_slice(&0xD110u16.to_ne_bytes()); // XLOG_PAGE_MAGIC of 15
    out[2..4].copy_from_slice(&2u16.to_ne_bytes()); // XLP_LONG_HEADER
    out[4..8].copy_from_slice(&timeline.to_ne_bytes());
    out[8..16].copy_from_slice(&start_lsn.to_ne_bytes());
    out[16..24].fill(0); // xlp_rem_len, padding
    out[24..32].copy_from_slice(&7_000_000_000_000_000_001u64.to_ne_bytes()); // system id
    out[32..36].copy_from_slice(&(len as u32).to_ne_bytes());
    out[36..40].copy_from_slice(&8192u32.to_ne_bytes()); // XLOG_BLCKSZ
    out
}

/// Compresses with the real `lzop` program.
pub fn lzop_compress(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("lzop")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run lzop");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "lzop -c failed");
    out.stdout
}
