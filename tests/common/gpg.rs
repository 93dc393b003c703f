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
        self.gen_key_with(&[], uid, algo, usage, passphrase)
    }

    /// [`GpgHome::gen_key`] with extra gpg `options` (e.g.
    /// `--cert-digest-algo SHA1`, as GnuPG 2.0 made its self-signatures).
    pub fn gen_key_with(
        &self,
        options: &[&str],
        uid: &str,
        algo: &str,
        usage: &str,
        passphrase: &str,
    ) -> (String, String) {
        let mut args = options.to_vec();
        args.extend([
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            passphrase,
            "--quick-gen-key",
            uid,
            algo,
            usage,
            "never",
        ]);
        self.gpg(&args, None);
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

    /// The fingerprint of the primary key `key`.
    pub fn fingerprint(&self, key: &str) -> String {
        let out = self.gpg(&["--with-colons", "--list-keys", key], None);
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').nth(8))
            .unwrap()
            .to_string()
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

/// A home with one unprotected RSA key as GnuPG 2.0 and older made them:
/// SHA-1 self-signatures and CAST5 as the only cipher preference (so
/// `gpg -e` to it uses CAST5); returns it and the key's long id.
pub fn legacy_rsa_key_home() -> (GpgHome, String) {
    let home = GpgHome::new();
    let (key, _) = home.gen_key_with(
        &[
            "--cert-digest-algo",
            "SHA1",
            "--default-preference-list",
            "CAST5 SHA1 Uncompressed",
        ],
        "Old Key <old@test.invalid>",
        "rsa2048",
        "cert",
        "",
    );
    home.gpg(
        &[
            "--cert-digest-algo",
            "SHA1",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-add-key",
            &home.fingerprint(&key),
            "rsa2048",
            "encr",
            "never",
        ],
        None,
    );
    (home, key)
}

/// A home with one unprotected RSA key; returns it and the key's long id.
pub fn rsa_key_home() -> (GpgHome, String) {
    let home = GpgHome::new();
    let (key, _) = home.gen_key("WAL Test <wal@test.invalid>", "default", "default", "");
    (home, key)
}
