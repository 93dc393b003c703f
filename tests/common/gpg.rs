//! Throw-away GnuPG homes with freshly generated keys, for encryption tests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use wal_e::pipeline::pgp::KeySource;

pub const GPG: &str = "/usr/bin/gpg";

/// A throw-away GnuPG home; its gpg-agent is stopped on drop.
pub struct GpgHome {
    pub dir: tempfile::TempDir,
}

impl GpgHome {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("gpg").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        GpgHome { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn source(&self) -> KeySource {
        KeySource {
            gnupg_home: Some(self.path().to_path_buf()),
            gpg_program: PathBuf::from(GPG),
            ..KeySource::default()
        }
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(GPG);
        cmd.env("GNUPGHOME", self.path()).arg("--batch");
        cmd
    }

    /// Runs gpg, asserting success.
    pub fn gpg(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let out = self.gpg_unchecked(args, stdin);
        assert!(
            out.status.success(),
            "gpg {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn gpg_unchecked(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut sin = child.stdin.take().unwrap();
        let data = stdin.map(<[u8]>::to_vec).unwrap_or_default();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = sin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// Generates a key; returns (primary long key id, encryption subkey id).
    pub fn gen_key(
        &self,
        uid: &str,
        algo: &str,
        usage: &str,
        passphrase: &str,
    ) -> (String, String) {
        self.gpg(
            &[
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                passphrase,
                "--quick-gen-key",
                uid,
                algo,
                usage,
                "never",
            ],
            None,
        );
        let out = self.gpg(&["--with-colons", "--list-keys", uid], None);
        let text = String::from_utf8(out.stdout).unwrap();
        let field = |kind: &str| {
            text.lines()
                .find(|l| l.starts_with(kind))
                .map(|l| l.split(':').nth(4).unwrap().to_string())
                .unwrap_or_default()
        };
        let primary = field("pub:");
        assert_eq!(primary.len(), 16, "{text}");
        (primary, field("sub:"))
    }

    /// `gpg -d -q --batch`, as WAL-E runs it.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Output {
        self.gpg_unchecked(&["-d", "-q"], Some(ciphertext))
    }
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.path())
            .args(["--kill", "gpg-agent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A home with one unprotected RSA key; returns it and the key's long id.
pub fn rsa_key_home() -> (GpgHome, String) {
    let home = GpgHome::new();
    let (key, _) = home.gen_key("WAL Test <wal@test.invalid>", "default", "default", "");
    (home, key)
}
