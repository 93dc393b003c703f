//! OpenPGP encryption and decryption of archive streams, byte-compatible
//! with WAL-E's `gpg` pipelines.
//!
//! WAL-E encrypts uploads with `lzop -c | gpg -e -z 0 -r <KEYID>` (binary
//! OpenPGP, no armor, no OpenPGP-level compression) and decrypts downloads
//! with `gpg -d -q --batch`.  This module does the same in-process with
//! Sequoia:
//!
//! * [`encrypt_stream`] writes one v3 PKESK packet per usable encryption
//!   subkey of the recipient certificate, followed by a SEIPDv1 packet
//!   (CFB + MDC, AES-256) holding a binary literal data packet with an
//!   empty file name and date 0.  This is readable by GnuPG 2.2 (which does
//!   not understand the RFC 9580 v6 PKESK / SEIPDv2 packets).
//! * [`decrypt_stream`] reads anything `gpg -e` produces (with or without
//!   compression: uncompressed, ZIP and ZLIB are supported; BZip2 is not),
//!   and fails — never silently succeeds — on a corrupt or truncated message
//!   (bad MDC, missing packets, premature end of input).
//!
//! Both work incrementally with bounded memory.
//!
//! # Old keys and ciphers
//!
//! Archives outlive keys.  Keys made by GnuPG 2.0 and older carry SHA-1
//! self-signatures, and what `gpg -e` wrote to keys without (or with old)
//! cipher preferences is encrypted with 3DES or CAST5; Sequoia's standard
//! policy refuses all of these today, GnuPG 2.2 does not.  So keys and
//! messages are checked against the standard policy widened to what GnuPG
//! 2.2 accepts by default (see `gnupg_policy`): what only the widened policy
//! accepts is used with a warning naming the weak algorithm; what GnuPG 2.2
//! refuses too (MD5 self-signatures, messages without integrity protection)
//! is refused, saying what was refused.  IDEA and ElGamal, which GnuPG
//! also reads, are missing from the crypto backend: an error names them.
//!
//! # Where keys come from
//!
//! [`EncryptionKeys::load`] and [`DecryptionKeys::load`] take the key id
//! WAL-E is configured with (a 16-hex-digit long key id, a fingerprint, or
//! any user id that gpg accepts) and consult, in this order:
//!
//! * `WALE_GPG_PUBLIC_KEY_FILE` (for encryption) /
//!   `WALE_GPG_SECRET_KEY_FILE` (for decryption): a file holding an
//!   exported key, binary or ASCII-armored, e.g. made with
//!   `gpg --export KEYID > pub.pgp` or
//!   `gpg --export-secret-keys KEYID > sec.pgp`.  When the variable is set
//!   (and not empty) the file is used and `gpg` is not needed.  For the
//!   public key file the key id selects the certificate(s) from the file (by
//!   key id, fingerprint, `<email>`, `=exact user id`, or a case-insensitive
//!   user id substring); for the secret key file every secret key in the file
//!   is available for decryption, like `gpg -d` uses the whole keyring.
//! * Otherwise the `gpg` program is run:
//!   `gpg --batch --export KEYID` for the public certificate and
//!   `gpg --batch --pinentry-mode loopback --passphrase '' --export-secret-keys KEYID`
//!   for the secret key, using the GnuPG home gpg itself would use
//!   (`GNUPGHOME`, else `~/.gnupg`).
//!
//! Secret keys must not be passphrase-protected: there is no passphrase
//! handling.  Export an unprotected copy of the key (e.g. remove the
//! passphrase with `gpg --edit-key KEYID passwd` in a separate keyring) and
//! point `WALE_GPG_SECRET_KEY_FILE` at it, or keep an unprotected key in the
//! GnuPG home.
//!
//! When a user id matches several certificates, the first one (in keyring
//! or file order) that has a usable encryption subkey is used, like
//! `gpg -r`.  All of that certificate's encryption subkeys that are valid
//! now (storage or transport encryption, under Sequoia's standard policy,
//! else under the widened one) become recipients.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use sequoia_openpgp as openpgp;

use openpgp::cert::amalgamation::{ValidAmalgamation, ValidateAmalgamation};
use openpgp::cert::{Cert, CertParser};
use openpgp::crypto::{S2K, SessionKey};
use openpgp::packet::key::SecretKeyMaterial;
use openpgp::packet::key::{PublicParts, SecretParts, UnspecifiedRole};
use openpgp::packet::pkesk::PKESK3;
use openpgp::packet::{Key, PKESK, Packet, SKESK};
use openpgp::parse::Parse;
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageLayer, MessageStructure, VerificationHelper,
};
use openpgp::policy::{AsymmetricAlgorithm, Policy, StandardPolicy};
use openpgp::serialize::Serialize;
use openpgp::serialize::stream::{Encryptor, LiteralWriter, Message};
use openpgp::types::{DataFormat, HashAlgorithm, RevocationStatus, SymmetricAlgorithm};
use openpgp::{KeyHandle, KeyID};

/// Environment variable naming an exported public key file for encryption.
pub const PUBLIC_KEY_FILE_ENV: &str = "WALE_GPG_PUBLIC_KEY_FILE";
/// Environment variable naming an exported (unprotected) secret key file for
/// decryption.
pub const SECRET_KEY_FILE_ENV: &str = "WALE_GPG_SECRET_KEY_FILE";

/// Symmetric cipher for the SEIPDv1 packet; every GnuPG 2.x supports it.
const SYMMETRIC_ALGO: SymmetricAlgorithm = SymmetricAlgorithm::AES256;
/// How much plaintext Sequoia's decryptor holds back (it reads twice this
/// much ahead).  Its default, 25 MiB, made a 64 MiB message peak at 177 MiB
/// RSS; larger messages are released unauthenticated anyway (the MDC is only
/// checked at the end, when the stream reports success or failure).
const DECRYPT_BUFFER_SIZE: usize = 256 * 1024;
/// Size of the chunks the decryption thread hands out.
const DECRYPT_CHUNK_SIZE: usize = 128 * 1024;
/// Decrypted chunks in flight between the decryption thread and the stream.
const DECRYPT_CHANNEL_CAPACITY: usize = 4;
/// Input is handed to the encryptor (on a blocking thread) in batches of at
/// most this size.
const ENCRYPT_BATCH_SIZE: usize = 1024 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of key loading, encryption and decryption.
#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    /// The `gpg` program could not be run and no key file was configured.
    #[error(
        "cannot run `{program}` to load OpenPGP key {key_id:?}: {source}; install GnuPG, \
         or set {env_var} to a file with the exported key"
    )]
    GpgNotInstalled {
        program: String,
        key_id: String,
        env_var: &'static str,
        #[source]
        source: io::Error,
    },
    /// `gpg` ran but failed for a reason we could not classify.
    #[error("`{command}` failed ({status}): {stderr}")]
    GpgFailed {
        command: String,
        status: String,
        stderr: String,
    },
    /// Reading a key file failed.
    #[error("cannot read OpenPGP key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Key data could not be parsed.
    #[error("invalid OpenPGP key data from {origin}: {source}")]
    InvalidKeyData {
        origin: String,
        #[source]
        source: BoxError,
    },
    /// No (public or secret) key matched the key id.
    #[error("no {kind} key found for {key_id:?} in {origin}")]
    KeyNotFound {
        key_id: String,
        /// "public" or "secret".
        kind: &'static str,
        origin: String,
    },
    /// The certificate exists but cannot be encrypted to.
    #[error("OpenPGP key {key_id:?} has no usable encryption subkey: {reasons}")]
    NoEncryptionSubkey {
        key_id: String,
        /// Per certificate (fingerprint), why none of its keys is usable.
        reasons: String,
    },
    /// Only passphrase-protected secret keys are available.
    #[error(
        "secret key {key_id:?} is passphrase-protected ({detail}); passphrases are not \
         supported: export an unprotected copy of the key and set {SECRET_KEY_FILE_ENV} to it, \
         or remove the passphrase from the key in the GnuPG home"
    )]
    SecretKeyProtected { key_id: String, detail: String },
    /// The key data holds no usable secret key material.
    #[error("no usable secret key material for {key_id:?} in {origin}")]
    NoSecretKey { key_id: String, origin: String },
    /// None of the available secret keys can decrypt the message.
    #[error(
        "cannot decrypt: the message is encrypted to key id(s) {}, but the available \
         secret key(s) are {}",
        join_or_none(.recipients),
        join_or_none(.available)
    )]
    NoMatchingSecretKey {
        /// Key ids named by the message's PKESK packets ("anonymous" for
        /// hidden recipients).
        recipients: Vec<String>,
        /// Key ids of the secret keys we have.
        available: Vec<String>,
    },
    /// The input is a valid OpenPGP message, but not an encrypted one.
    #[error("the OpenPGP message is not encrypted")]
    NotEncrypted,
    /// The message is encrypted with a cipher the crypto backend lacks.
    #[error(
        "the message is encrypted with {algo}, which this build cannot decrypt; \
         decrypt it with gpg"
    )]
    UnsupportedCipher { algo: SymmetricAlgorithm },
    /// The message uses something GnuPG 2.2 refuses too.
    #[error("the OpenPGP message was refused as insecure: {refused}")]
    PolicyRefused { refused: String },
    /// Bad MDC, malformed packets, premature end of data, ...
    #[error("encrypted data is corrupt or truncated: {source}")]
    CorruptMessage {
        #[source]
        source: BoxError,
    },
    /// Building the encrypted message failed.
    #[error("OpenPGP encryption failed: {source}")]
    Encrypt {
        #[source]
        source: BoxError,
    },
}

fn join_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

impl From<PgpError> for io::Error {
    fn from(e: PgpError) -> io::Error {
        let kind = match e {
            PgpError::CorruptMessage { .. }
            | PgpError::NotEncrypted
            | PgpError::UnsupportedCipher { .. }
            | PgpError::PolicyRefused { .. }
            | PgpError::NoMatchingSecretKey { .. }
            | PgpError::InvalidKeyData { .. } => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

fn encrypt_error(e: impl Into<BoxError>) -> io::Error {
    PgpError::Encrypt { source: e.into() }.into()
}

/// Where [`EncryptionKeys::load_from`] / [`DecryptionKeys::load_from`] get
/// keys from.  [`KeySource::from_env`] builds the one [`EncryptionKeys::load`]
/// and [`DecryptionKeys::load`] use.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// Exported public key file; takes precedence over gpg.
    pub public_key_file: Option<PathBuf>,
    /// Exported secret key file; takes precedence over gpg.
    pub secret_key_file: Option<PathBuf>,
    /// GnuPG home passed to gpg as `GNUPGHOME`; `None` lets gpg use its
    /// default (the inherited `GNUPGHOME`, else `~/.gnupg`).
    pub gnupg_home: Option<PathBuf>,
    /// The gpg program.
    pub gpg_program: PathBuf,
}

impl Default for KeySource {
    fn default() -> Self {
        KeySource {
            public_key_file: None,
            secret_key_file: None,
            gnupg_home: None,
            gpg_program: PathBuf::from("gpg"),
        }
    }
}

impl KeySource {
    /// Reads `WALE_GPG_PUBLIC_KEY_FILE` and `WALE_GPG_SECRET_KEY_FILE` from
    /// the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// Like [`KeySource::from_env`], with `lookup` standing in for the
    /// environment.  Unset and empty variables are ignored.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Self {
        let path = |name: &str| lookup(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        KeySource {
            public_key_file: path(PUBLIC_KEY_FILE_ENV),
            secret_key_file: path(SECRET_KEY_FILE_ENV),
            ..KeySource::default()
        }
    }
}

/// The recipient certificate and the encryption (sub)keys to encrypt to.
#[derive(Clone)]
pub struct EncryptionKeys {
    certs: Vec<Cert>,
    recipients: Vec<Key<PublicParts, UnspecifiedRole>>,
}

impl fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKeys")
            .field("certs", &self.fingerprints())
            .field("recipients", &self.recipient_key_ids())
            .finish()
    }
}

impl EncryptionKeys {
    /// Loads the public certificate for `key_id` from
    /// `WALE_GPG_PUBLIC_KEY_FILE` if set, else from gpg.
    pub async fn load(key_id: &str) -> Result<Self, PgpError> {
        Self::load_from(key_id, &KeySource::from_env()).await
    }

    /// Loads the public certificate for `key_id` from `source`.
    pub async fn load_from(key_id: &str, source: &KeySource) -> Result<Self, PgpError> {
        require_key_id(key_id, "public")?;
        let (certs, origin) = match &source.public_key_file {
            Some(path) => {
                let origin = format!("key file {}", path.display());
                let bytes = read_key_file(path).await?;
                let certs: Vec<Cert> = parse_certs(&bytes, &origin)?
                    .into_iter()
                    .filter(|c| cert_matches(c, key_id))
                    .collect();
                (certs, origin)
            }
            None => {
                let out = run_gpg(source, key_id, PUBLIC_KEY_FILE_ENV, &["--export"]).await?;
                let origin = gpg_origin(source);
                if out.stdout.is_empty() && !out.status.success() {
                    return Err(out.failed());
                }
                (parse_certs(&out.stdout, &origin)?, origin)
            }
        };
        if certs.is_empty() {
            return Err(PgpError::KeyNotFound {
                key_id: key_id.to_string(),
                kind: "public",
                origin,
            });
        }
        let mut reasons = Vec::new();
        for cert in &certs {
            match recipients_of(cert) {
                Ok(recipients) => {
                    return Ok(EncryptionKeys {
                        certs: vec![cert.clone()],
                        recipients,
                    });
                }
                Err(why) => reasons.push(why),
            }
        }
        Err(PgpError::NoEncryptionSubkey {
            key_id: key_id.to_string(),
            reasons: reasons.join("; "),
        })
    }

    /// Uses every certificate in `bytes` (binary or armored) as a recipient.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PgpError> {
        let certs = parse_certs(bytes, "key data")?;
        if certs.is_empty() {
            return Err(PgpError::KeyNotFound {
                key_id: "(any)".to_string(),
                kind: "public",
                origin: "key data".to_string(),
            });
        }
        let mut recipients = Vec::new();
        for cert in &certs {
            let keys = recipients_of(cert).map_err(|reasons| PgpError::NoEncryptionSubkey {
                key_id: cert.fingerprint().to_hex(),
                reasons,
            })?;
            recipients.extend(keys);
        }
        Ok(EncryptionKeys { certs, recipients })
    }

    /// Fingerprints of the recipient certificates.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| c.fingerprint().to_hex())
            .collect()
    }

    /// Long key ids (16 hex digits) of the (sub)keys messages are encrypted
    /// to; they appear in the PKESK packets.
    pub fn recipient_key_ids(&self) -> Vec<String> {
        self.recipients.iter().map(|k| k.keyid().to_hex()).collect()
    }
}

/// The unprotected secret keys available for decryption.
#[derive(Clone)]
pub struct DecryptionKeys {
    keys: Vec<Key<SecretParts, UnspecifiedRole>>,
    /// Passphrase-protected keys we cannot use, for error messages.
    protected: Vec<KeyID>,
}

impl fmt::Debug for DecryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptionKeys")
            .field("keys", &self.key_ids())
            .field(
                "protected",
                &self.protected.iter().map(KeyID::to_hex).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl DecryptionKeys {
    /// Loads the secret key(s) from `WALE_GPG_SECRET_KEY_FILE` if set, else
    /// the secret key for `key_id` from gpg.
    pub async fn load(key_id: &str) -> Result<Self, PgpError> {
        Self::load_from(key_id, &KeySource::from_env()).await
    }

    /// Loads the secret key(s) from `source`.
    pub async fn load_from(key_id: &str, source: &KeySource) -> Result<Self, PgpError> {
        match &source.secret_key_file {
            Some(path) => {
                let origin = format!("key file {}", path.display());
                let bytes = read_key_file(path).await?;
                Self::from_certs(parse_certs(&bytes, &origin)?, key_id, &origin)
            }
            None => {
                require_key_id(key_id, "secret")?;
                let out = run_gpg(
                    source,
                    key_id,
                    SECRET_KEY_FILE_ENV,
                    &[
                        "--pinentry-mode",
                        "loopback",
                        "--passphrase",
                        "",
                        "--export-secret-keys",
                    ],
                )
                .await?;
                let origin = gpg_origin(source);
                if out.stdout.is_empty() {
                    let stderr = out.stderr_text();
                    let lower = stderr.to_ascii_lowercase();
                    if lower.contains("passphrase") || lower.contains("error receiving key") {
                        return Err(PgpError::SecretKeyProtected {
                            key_id: key_id.to_string(),
                            detail: format!(
                                "gpg could not export it: {}",
                                stderr.trim().lines().collect::<Vec<_>>().join("; ")
                            ),
                        });
                    }
                    if !out.status.success() {
                        return Err(out.failed());
                    }
                    return Err(PgpError::KeyNotFound {
                        key_id: key_id.to_string(),
                        kind: "secret",
                        origin,
                    });
                }
                Self::from_certs(parse_certs(&out.stdout, &origin)?, key_id, &origin)
            }
        }
    }

    /// Uses every secret key in `bytes` (binary or armored).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PgpError> {
        Self::from_certs(parse_certs(bytes, "key data")?, "", "key data")
    }

    fn from_certs(certs: Vec<Cert>, key_id: &str, origin: &str) -> Result<Self, PgpError> {
        let mut keys = Vec::new();
        let mut protected = Vec::new();
        for cert in &certs {
            for ka in cert.keys().secret() {
                let key = ka.key();
                if !key.pk_algo().for_encryption() {
                    continue;
                }
                match key.optional_secret() {
                    Some(SecretKeyMaterial::Unencrypted(_)) => {
                        keys.push(key.clone().role_into_unspecified())
                    }
                    // GnuPG stubs (gnu-dummy, divert-to-card) use private
                    // S2K types; they are not usable at all.
                    Some(SecretKeyMaterial::Encrypted(e))
                        if !matches!(e.s2k(), S2K::Private { .. } | S2K::Unknown { .. }) =>
                    {
                        protected.push(key.keyid());
                    }
                    _ => {}
                }
            }
        }
        if keys.is_empty() {
            let key_id = if key_id.is_empty() {
                fingerprint_list(&certs)
            } else {
                key_id.to_string()
            };
            if !protected.is_empty() {
                return Err(PgpError::SecretKeyProtected {
                    key_id,
                    detail: format!(
                        "protected key id(s): {}",
                        protected
                            .iter()
                            .map(KeyID::to_hex)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            return Err(PgpError::NoSecretKey {
                key_id,
                origin: origin.to_string(),
            });
        }
        Ok(DecryptionKeys { keys, protected })
    }

    /// Long key ids of the usable secret (sub)keys.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.keyid().to_hex()).collect()
    }
}

/// An empty key id would make gpg export (and us use) every key.
fn require_key_id(key_id: &str, kind: &'static str) -> Result<(), PgpError> {
    if key_id.trim().is_empty() {
        return Err(PgpError::KeyNotFound {
            key_id: key_id.to_string(),
            kind,
            origin: "the configuration (the key id is empty)".to_string(),
        });
    }
    Ok(())
}

fn fingerprint_list(certs: &[Cert]) -> String {
    certs
        .iter()
        .map(|c| c.fingerprint().to_hex())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_certs(bytes: &[u8], origin: &str) -> Result<Vec<Cert>, PgpError> {
    let invalid = |e: openpgp::anyhow::Error| PgpError::InvalidKeyData {
        origin: origin.to_string(),
        source: e.into(),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    CertParser::from_bytes(bytes)
        .map_err(invalid)?
        .collect::<openpgp::Result<Vec<Cert>>>()
        .map_err(invalid)
}

/// Sequoia's standard policy widened to what GnuPG 2.2 still accepts by
/// default and the crypto backend implements: SHA-1 and RIPEMD-160
/// signatures (GnuPG 2.0 self-signed keys with SHA-1), the 3DES and CAST5
/// ciphers, 1024-bit RSA and DSA keys.  MD5 and messages without integrity
/// protection stay refused, as GnuPG 2.2 refuses them.
fn gnupg_policy() -> StandardPolicy<'static> {
    let mut policy = StandardPolicy::new();
    for hash in [HashAlgorithm::SHA1, HashAlgorithm::RipeMD] {
        policy.accept_hash(hash);
    }
    // Deprecated for new messages, which is not what this is for.
    #[allow(deprecated)]
    for cipher in [SymmetricAlgorithm::TripleDES, SymmetricAlgorithm::CAST5] {
        policy.accept_symmetric_algo(cipher);
    }
    for algo in [AsymmetricAlgorithm::RSA1024, AsymmetricAlgorithm::DSA1024] {
        policy.accept_asymmetric_algo(algo);
    }
    policy
}

/// The keys of `cert` to encrypt to: those valid under the standard policy,
/// else those valid under [`gnupg_policy`], with a warning saying what the
/// standard policy refuses.  `Err` says why there are none.
fn recipients_of(cert: &Cert) -> Result<Vec<Key<PublicParts, UnspecifiedRole>>, String> {
    let standard = StandardPolicy::new();
    let keys = encryption_keys(cert, &standard);
    if !keys.is_empty() {
        return Ok(keys);
    }
    let gnupg = gnupg_policy();
    let keys = encryption_keys(cert, &gnupg);
    if keys.is_empty() {
        return Err(format!(
            "{}: {}",
            cert.fingerprint().to_hex(),
            why_unusable(cert, &gnupg)
        ));
    }
    let refused = cert
        .keys()
        .filter(|ka| {
            keys.iter()
                .any(|k| k.fingerprint() == ka.key().fingerprint())
        })
        .find_map(|ka| ka.with_policy(&standard, None).err())
        .map_or_else(|| why_unusable(cert, &standard), |e| format!("{e:#}"));
    tracing::warn!(
        detail = %format!(
            "Key {} is used as GnuPG 2.2 would use it, but the OpenPGP standard policy refuses it: {refused}.",
            cert.fingerprint().to_hex()
        ),
        hint = "Renew the key's self-signatures with a current GnuPG (gpg --quick-set-expire FPR EXPIRY, and again with '*' for its subkeys) and export it again, or move to a new key.",
        "encrypting to an OpenPGP key that relies on a weak algorithm"
    );
    Ok(keys)
}

/// Why no key of `cert` is usable for encryption under `policy`.
fn why_unusable(cert: &Cert, policy: &dyn Policy) -> String {
    if let Err(e) = cert.with_policy(policy, None) {
        return format!("{e:#}");
    }
    let reasons: Vec<String> = cert
        .keys()
        .filter(|ka| ka.key().pk_algo().for_encryption())
        .map(|ka| {
            let key = ka.key();
            let why = if !key.pk_algo().is_supported() {
                format!("{} is not supported by this build", key.pk_algo())
            } else {
                match ka.with_policy(policy, None) {
                    Err(e) => format!("{e:#}"),
                    Ok(valid) => match valid.alive() {
                        Err(e) => format!("{e:#}"),
                        Ok(())
                            if matches!(
                                valid.revocation_status(),
                                RevocationStatus::Revoked(_)
                            ) =>
                        {
                            "revoked".to_string()
                        }
                        Ok(())
                            if !valid.for_storage_encryption()
                                && !valid.for_transport_encryption() =>
                        {
                            "not flagged for encryption".to_string()
                        }
                        Ok(()) => "unusable".to_string(),
                    },
                }
            };
            format!("key {}: {why}", key.keyid().to_hex())
        })
        .collect();
    if reasons.is_empty() {
        "it has no encryption-capable key".to_string()
    } else {
        reasons.join(", ")
    }
}

/// Encryption-capable keys of `cert` that are valid now.
fn encryption_keys(cert: &Cert, policy: &dyn Policy) -> Vec<Key<PublicParts, UnspecifiedRole>> {
    cert.keys()
        .with_policy(policy, None)
        .supported()
        .alive()
        .revoked(false)
        .for_storage_encryption()
        .for_transport_encryption()
        .map(|ka| ka.key().clone().role_into_unspecified())
        .collect()
}

/// Whether `cert` is selected by `spec`, approximating gpg's rules for
/// naming keys: (0x-prefixed) key ids and fingerprints, `<email>`,
/// `=exact user id`, `@email-part`, else a case-insensitive user id
/// substring.
fn cert_matches(cert: &Cert, spec: &str) -> bool {
    let spec = spec.trim();
    let hex = spec
        .strip_prefix("0x")
        .or_else(|| spec.strip_prefix("0X"))
        .unwrap_or(spec);
    let hex = hex.strip_suffix('!').unwrap_or(hex).replace(' ', "");
    if matches!(hex.len(), 8 | 16 | 32 | 40 | 64) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let hex = hex.to_ascii_uppercase();
        return cert.keys().any(|ka| {
            let key = ka.key();
            let fpr = key.fingerprint().to_hex();
            match hex.len() {
                8 | 16 => key.keyid().to_hex().ends_with(&hex) || fpr.ends_with(&hex),
                _ => fpr == hex,
            }
        });
    }
    let matches = |uid: &str| -> bool {
        if let Some(exact) = spec.strip_prefix('=') {
            uid == exact
        } else if spec.starts_with('<') {
            uid.to_lowercase().contains(&spec.to_lowercase())
        } else if let Some(domain) = spec.strip_prefix('@') {
            uid.to_lowercase().contains(&domain.to_lowercase())
        } else {
            uid.to_lowercase().contains(&spec.to_lowercase())
        }
    };
    cert.userids()
        .any(|ua| matches(&String::from_utf8_lossy(ua.userid().value())))
}

async fn read_key_file(path: &Path) -> Result<Vec<u8>, PgpError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::read(&p))
        .await
        .map_err(|e| PgpError::KeyFile {
            path: path.to_path_buf(),
            source: io::Error::other(e),
        })?
        .map_err(|e| PgpError::KeyFile {
            path: path.to_path_buf(),
            source: e,
        })
}

fn gpg_origin(source: &KeySource) -> String {
    match &source.gnupg_home {
        Some(home) => format!("the GnuPG keyring at {}", home.display()),
        None => "the GnuPG keyring (GNUPGHOME or ~/.gnupg)".to_string(),
    }
}

struct GpgOutput {
    command: String,
    status: std::process::ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl GpgOutput {
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn failed(&self) -> PgpError {
        PgpError::GpgFailed {
            command: self.command.clone(),
            status: self.status.to_string(),
            stderr: self.stderr_text().trim().to_string(),
        }
    }
}

async fn run_gpg(
    source: &KeySource,
    key_id: &str,
    env_var: &'static str,
    args: &[&str],
) -> Result<GpgOutput, PgpError> {
    let mut cmd = tokio::process::Command::new(&source.gpg_program);
    cmd.arg("--batch")
        .arg("--no-tty")
        .args(args)
        .arg("--")
        .arg(key_id)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(home) = &source.gnupg_home {
        cmd.env("GNUPGHOME", home);
    }
    let command = format!(
        "{} --batch --no-tty {} -- {}",
        source.gpg_program.display(),
        args.iter()
            .map(|a| if a.is_empty() { "''" } else { a })
            .collect::<Vec<_>>()
            .join(" "),
        key_id
    );
    let out = cmd.output().await.map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::PermissionDenied {
            PgpError::GpgNotInstalled {
                program: source.gpg_program.display().to_string(),
                key_id: key_id.to_string(),
                env_var,
                source: e,
            }
        } else {
            PgpError::GpgFailed {
                command: command.clone(),
                status: "not started".to_string(),
                stderr: e.to_string(),
            }
        }
    })?;
    Ok(GpgOutput {
        command,
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
    })
}

// ---------------------------------------------------------------------------
// Encryption
// ---------------------------------------------------------------------------

/// A `Write` sink whose contents are drained after each input chunk.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    fn take(&self) -> Bytes {
        Bytes::from(std::mem::take(
            &mut *self.0.lock().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Starts a message writing into `sink`: PKESKs, SEIPDv1, literal packet.
///
/// Sequoia's `Encryptor::for_recipients` keeps the borrowed `Recipient`s
/// inside the returned `Message<'a>`, which would tie the message to the
/// lifetime of the keys.  So the v3 PKESKs are written here (as
/// `Encryptor::build` does for SEIPDv1) and the encryptor gets only the
/// session key.
fn start_message(sink: SharedBuf, keys: &EncryptionKeys) -> openpgp::Result<Message<'static>> {
    let mut message = Message::new(sink);
    let session_key = SessionKey::new(SYMMETRIC_ALGO.key_size()?)?;
    for key in &keys.recipients {
        let pkesk = PKESK3::for_recipient(SYMMETRIC_ALGO, &session_key, key)?;
        Packet::PKESK(PKESK::V3(pkesk)).serialize(&mut message)?;
    }
    let message = Encryptor::with_session_key(message, SYMMETRIC_ALGO, session_key)?.build()?;
    LiteralWriter::new(message)
        .format(DataFormat::Binary)
        .build()
}

struct EncRun {
    input: crate::ByteStream,
    /// `None` only while a blocking task is using it.
    writer: Option<Message<'static>>,
    sink: SharedBuf,
    /// Not yet encrypted rest of the last input chunk.
    pending: Bytes,
    input_done: bool,
}

enum EncState {
    Start(crate::ByteStream, Arc<EncryptionKeys>),
    Running(Box<EncRun>),
    Done,
}

/// Encrypts `input` to `keys` like `gpg -e -z 0 -r KEYID`.
///
/// Work happens as the returned stream is polled, which must be within a
/// Tokio runtime: input is gathered into batches of up to 1 MiB, and each
/// batch is encrypted on Tokio's blocking pool.  Sequoia's partial-body
/// framing buffers up to 4 MiB per layer, so output comes in pieces of about
/// 4 MiB and memory use stays bounded (about 20 MiB) whatever the size of the
/// input.  An error of the input stream is passed on unchanged and ends the
/// stream.
pub fn encrypt_stream(input: crate::ByteStream, keys: Arc<EncryptionKeys>) -> crate::ByteStream {
    stream::unfold(EncState::Start(input, keys), |state| async move {
        let run = match state {
            EncState::Done => return None,
            EncState::Running(run) => run,
            EncState::Start(input, keys) => {
                let sink = SharedBuf::default();
                match start_message(sink.clone(), &keys) {
                    Ok(writer) => Box::new(EncRun {
                        input,
                        writer: Some(writer),
                        sink,
                        pending: Bytes::new(),
                        input_done: false,
                    }),
                    Err(e) => return Some((Err(encrypt_error(e)), EncState::Done)),
                }
            }
        };
        encrypt_step(run).await
    })
    .boxed()
}

/// Encrypts batches until there is output (or an error, or the end).
async fn encrypt_step(mut run: Box<EncRun>) -> Option<(io::Result<Bytes>, EncState)> {
    loop {
        let mut batch = Vec::new();
        let mut size = 0;
        while size < ENCRYPT_BATCH_SIZE {
            if run.pending.is_empty() {
                if run.input_done {
                    break;
                }
                match run.input.next().await {
                    Some(Ok(chunk)) => run.pending = chunk,
                    Some(Err(e)) => return Some((Err(e), EncState::Done)),
                    None => {
                        run.input_done = true;
                        break;
                    }
                }
            }
            let take = run.pending.len().min(ENCRYPT_BATCH_SIZE - size);
            let piece = run.pending.split_to(take);
            size += piece.len();
            if !piece.is_empty() {
                batch.push(piece);
            }
        }
        let finish = run.input_done && run.pending.is_empty();
        let mut writer = run.writer.take()?;
        let result = tokio::task::spawn_blocking(move || {
            for piece in &batch {
                if let Err(e) = writer.write_all(piece) {
                    return Err(encrypt_error(e));
                }
            }
            if finish {
                writer.finalize().map_err(encrypt_error)?;
                Ok(None)
            } else {
                Ok(Some(writer))
            }
        })
        .await;
        match result {
            Ok(Ok(writer)) => run.writer = writer,
            Ok(Err(e)) => return Some((Err(e), EncState::Done)),
            Err(e) => return Some((Err(io::Error::other(e)), EncState::Done)),
        }
        let out = run.sink.take();
        if finish {
            return (!out.is_empty()).then(|| (Ok(out), EncState::Done));
        }
        if !out.is_empty() {
            return Some((Ok(out), EncState::Running(run)));
        }
    }
}

// ---------------------------------------------------------------------------
// Decryption
// ---------------------------------------------------------------------------

/// Sequoia's readers must be `Sync`; `crate::ByteStream` is not.
struct SyncRead<R>(Mutex<R>);

impl<R: Read> Read for SyncRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .read(buf)
    }
}

/// Error slot shared between the decryption thread and its helpers.
type Slot<T> = Arc<Mutex<Option<T>>>;

fn put<T>(slot: &Slot<T>, value: T) {
    let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(value);
    }
}

fn take<T>(slot: &Slot<T>) -> Option<T> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

struct Helper {
    keys: Arc<DecryptionKeys>,
    /// The precise error our callbacks failed with; Sequoia may wrap it.
    error: Slot<PgpError>,
}

impl Helper {
    fn fail(&self, e: PgpError) -> openpgp::anyhow::Error {
        let msg = e.to_string();
        put(&self.error, e);
        openpgp::anyhow::anyhow!(msg)
    }

    fn try_key(
        key: &Key<SecretParts, UnspecifiedRole>,
        pkesk: &PKESK,
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> Attempt {
        let Ok(mut keypair) = key.clone().into_keypair() else {
            return Attempt::Failed;
        };
        let Some((algo, session_key)) = pkesk.decrypt(&mut keypair, sym_algo) else {
            return Attempt::Failed;
        };
        match algo {
            Some(algo) if !algo.is_supported() => Attempt::Unsupported(algo),
            _ if decrypt(algo, &session_key) => {
                if let Some(algo) = algo {
                    warn_if_weak(algo);
                }
                Attempt::Decrypted
            }
            _ => Attempt::Failed,
        }
    }

    /// Ends a successful or hopeless [`Attempt`]; `None` to try on.
    fn conclude(&self, attempt: Attempt) -> Option<openpgp::Result<Option<Cert>>> {
        match attempt {
            Attempt::Decrypted => Some(Ok(None)),
            Attempt::Unsupported(algo) => {
                Some(Err(self.fail(PgpError::UnsupportedCipher { algo })))
            }
            Attempt::Failed => None,
        }
    }
}

/// The outcome of trying one secret key on one PKESK.
enum Attempt {
    Decrypted,
    /// The session key is for a cipher the crypto backend lacks.
    Unsupported(SymmetricAlgorithm),
    Failed,
}

/// Logs a warning when `algo`, which [`gnupg_policy`] let through, is
/// refused by the standard policy.
fn warn_if_weak(algo: SymmetricAlgorithm) {
    if let Err(e) = StandardPolicy::new().symmetric_algorithm(algo) {
        tracing::warn!(
            detail = %format!("The data is encrypted with {algo}, which GnuPG 2.2 reads, but the OpenPGP standard policy refuses: {e:#}."),
            hint = "Archives written from now on use AES-256 whatever the key's preferences; old archives stay readable.",
            "decrypting data encrypted with a weak cipher"
        );
    }
}

impl VerificationHelper for Helper {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(Vec::new())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        // Signatures are ignored, as `gpg -d` does for its exit status on
        // WAL-E's unsigned archives; but the data must have been encrypted.
        if structure
            .iter()
            .any(|layer| matches!(layer, MessageLayer::Encryption { .. }))
        {
            Ok(())
        } else {
            Err(self.fail(PgpError::NotEncrypted))
        }
    }
}

impl DecryptionHelper for Helper {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        _skesks: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        let keys = Arc::clone(&self.keys);
        // Keys named by the PKESKs first.
        let mut failed = Vec::new();
        for pkesk in pkesks {
            if let Some(rcpt) = pkesk.recipient() {
                for key in keys.keys.iter().filter(|k| k.key_handle().aliases(&rcpt)) {
                    let attempt = Self::try_key(key, pkesk, sym_algo, decrypt);
                    if let Some(done) = self.conclude(attempt) {
                        return done;
                    }
                    failed.push(key.keyid().to_hex());
                }
            }
        }
        // Then hidden recipients (`gpg --throw-keyids`): try every key.
        for pkesk in pkesks.iter().filter(|p| p.recipient().is_none()) {
            for key in &keys.keys {
                let attempt = Self::try_key(key, pkesk, sym_algo, decrypt);
                if let Some(done) = self.conclude(attempt) {
                    return done;
                }
            }
        }
        if !failed.is_empty() {
            return Err(self.fail(PgpError::CorruptMessage {
                source: format!(
                    "the session key could not be decrypted with secret key(s) {}",
                    failed.join(", ")
                )
                .into(),
            }));
        }
        let recipients: Vec<KeyHandle> = pkesks.iter().filter_map(PKESK::recipient).collect();
        if let Some(protected) = keys
            .protected
            .iter()
            .find(|p| recipients.iter().any(|r| r.aliases(KeyHandle::from(*p))))
        {
            return Err(self.fail(PgpError::SecretKeyProtected {
                key_id: protected.to_hex(),
                detail: "the message is encrypted to it".to_string(),
            }));
        }
        Err(self.fail(PgpError::NoMatchingSecretKey {
            recipients: pkesks
                .iter()
                .map(|p| match p.recipient() {
                    Some(KeyHandle::KeyID(id)) => id.to_hex(),
                    Some(KeyHandle::Fingerprint(fpr)) => fpr.to_hex(),
                    None => "anonymous".to_string(),
                })
                .collect(),
            available: keys.key_ids(),
        }))
    }
}

/// Runs on a blocking thread: decrypts `reader`, sending plaintext chunks.
/// Returns `Ok` only after the whole message has been verified (MDC).
fn decrypt_blocking<R: Read + Send + Sync + 'static>(
    reader: R,
    keys: Arc<DecryptionKeys>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    helper_error: Slot<PgpError>,
) -> Result<(), PgpError> {
    let corrupt = |e: BoxError| PgpError::CorruptMessage { source: e };
    let helper = Helper {
        keys,
        error: Arc::clone(&helper_error),
    };
    let policy = gnupg_policy();
    let mut decryptor = DecryptorBuilder::from_reader(reader)
        .map_err(|e| corrupt(e.into()))?
        .buffer_size(DECRYPT_BUFFER_SIZE)
        .with_policy(&policy, None, helper)
        .map_err(|e| match e.downcast_ref::<openpgp::Error>() {
            Some(openpgp::Error::PolicyViolation(..)) => PgpError::PolicyRefused {
                refused: format!("{e:#}"),
            },
            _ => corrupt(e.into()),
        })?;
    loop {
        if tx.is_closed() {
            // Receiver gone: nobody wants the rest.
            return Ok(());
        }
        let mut buf = vec![0u8; DECRYPT_CHUNK_SIZE];
        let mut filled = 0;
        // Fill the chunk (sequoia's reads can be short).
        while filled < buf.len() {
            match decryptor.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(corrupt(e.into())),
            }
        }
        let eof = filled < buf.len();
        if filled > 0 {
            buf.truncate(filled);
            if tx.blocking_send(Bytes::from(buf)).is_err() {
                // Receiver gone: nobody wants the rest.
                return Ok(());
            }
        }
        if eof {
            return Ok(());
        }
    }
}

enum DecState {
    Start(crate::ByteStream, Arc<DecryptionKeys>),
    Running {
        rx: tokio::sync::mpsc::Receiver<Bytes>,
        worker: tokio::task::JoinHandle<io::Result<()>>,
    },
    Done,
}

/// Decrypts `input` like `gpg -d -q --batch`.
///
/// The stream must be polled within a Tokio runtime.  Decryption runs on a
/// blocking thread (started on first poll) and hands out plaintext through a
/// small bounded channel.  The stream ends with an
/// error, after any plaintext already produced, if the message is corrupt,
/// truncated, or cannot be decrypted with `keys`; plaintext is only
/// authenticated (MDC) once the stream has ended without error.  An error of
/// the input stream is passed on unchanged.
pub fn decrypt_stream(input: crate::ByteStream, keys: Arc<DecryptionKeys>) -> crate::ByteStream {
    stream::unfold(DecState::Start(input, keys), |state| async move {
        let (mut rx, worker) = match state {
            DecState::Done => return None,
            DecState::Start(input, keys) => start_decrypt(input, keys),
            DecState::Running { rx, worker } => (rx, worker),
        };
        match rx.recv().await {
            Some(chunk) => Some((Ok(chunk), DecState::Running { rx, worker })),
            None => {
                let result = match worker.await {
                    Ok(result) => result,
                    Err(e) => Err(io::Error::other(e)),
                };
                result.err().map(|e| (Err(e), DecState::Done))
            }
        }
    })
    .boxed()
}

fn start_decrypt(
    input: crate::ByteStream,
    keys: Arc<DecryptionKeys>,
) -> (
    tokio::sync::mpsc::Receiver<Bytes>,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(DECRYPT_CHANNEL_CAPACITY);
    // Input errors reach sequoia as a stand-in error; the original is kept
    // here and reported instead of whatever sequoia makes of it.
    let input_error: Slot<io::Error> = Arc::default();
    let slot = Arc::clone(&input_error);
    let input = input.map_err(move |e| {
        let stand_in = io::Error::new(e.kind(), e.to_string());
        put(&slot, e);
        stand_in
    });
    let reader = tokio_util::io::StreamReader::new(input);
    let reader =
        tokio_util::io::SyncIoBridge::new_with_handle(reader, tokio::runtime::Handle::current());
    let reader = SyncRead(Mutex::new(reader));
    let worker = tokio::task::spawn_blocking(move || {
        let helper_error: Slot<PgpError> = Arc::default();
        let result = decrypt_blocking(reader, keys, tx, Arc::clone(&helper_error));
        if let Some(e) = take(&input_error) {
            return Err(e);
        }
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(take(&helper_error).unwrap_or(e).into()),
        }
    });
    (rx, worker)
}
