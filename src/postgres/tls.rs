//! TLS to PostgreSQL over TCP with libpq's `PGSSLMODE` semantics, on rustls
//! with the ring provider (the rest of the binary's TLS uses it too).
//!
//! * `disable`: never TLS. `allow` and `prefer`: TLS when the server offers
//!   it, else plain (libpq's `allow` tries plain first; both end the same on a
//!   server that accepts either).
//! * `require`: TLS or fail. Like libpq, the certificate is only checked when
//!   a root certificate file exists (then as `verify-ca`).
//! * `verify-ca`: the chain must lead to the root certificate(s);
//!   `verify-full`: and the certificate must name the host.
//!
//! Root certificates come from `PGSSLROOTCERT` (default
//! `~/.postgresql/root.crt`; `system` means the system's trust store); a
//! client certificate from `PGSSLCERT`/`PGSSLKEY` (default
//! `~/.postgresql/postgresql.crt` and `.key`) when both files exist. Unix
//! sockets never use TLS, as in libpq.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::error::UserError;

/// `PGSSLMODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// libpq's default is `prefer`.
    pub fn parse(raw: Option<&str>) -> Result<SslMode, UserError> {
        Ok(match raw.unwrap_or("prefer") {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(UserError::new("invalid value for PGSSLMODE")
                    .detail(format!("PGSSLMODE is set to {other:?}."))
                    .hint("Use disable, allow, prefer, require, verify-ca or verify-full."));
            }
        })
    }

    /// What tokio-postgres negotiates for a TCP connection.
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self {
            SslMode::Disable => Pg::Disable,
            SslMode::Allow | SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }
}

/// Where the TLS settings' files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `PGSSLROOTCERT`, or `~/.postgresql/root.crt`; `None` for `system`.
    pub root_cert: Option<PathBuf>,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Builds the rustls configuration `mode` asks for.
pub fn client_config(mode: SslMode, files: &TlsFiles) -> Result<ClientConfig, UserError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match &files.root_cert {
        Some(path) if path.exists() => Some(Arc::new(roots_from_file(path)?)),
        Some(path) if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
            return Err(UserError::new("the root certificate to verify PostgreSQL's with is missing")
                .detail(format!(
                    "PGSSLMODE is {} and \"{}\" does not exist.",
                    mode.name(),
                    path.display()
                ))
                .hint("Set PGSSLROOTCERT to the CA certificate that signed the server's certificate (PEM), or to \"system\" for the system's trust store."));
        }
        Some(_) => None,
        None => Some(Arc::new(system_roots()?)),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => webpki_verifier(roots, &provider)?,
        // libpq: with a root certificate, require behaves as verify-ca.
        (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Arc::new(AnyName {
            inner: webpki_verifier(roots, &provider)?,
        }),
        (_, Some(_)) | (_, None) => Arc::new(Unverified {
            provider: provider.clone(),
        }),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_setup_error(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    if files.client_cert.exists() && files.client_key.exists() {
        let certs = read_pem(&files.client_cert, |p| {
            CertificateDer::pem_file_iter(p).and_then(|it| it.collect::<Result<Vec<_>, _>>())
        })?;
        let key = read_pem(&files.client_key, |p| PrivateKeyDer::from_pem_file(p))?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| tls_setup_error(format!("the client certificate: {e}")))
    } else {
        Ok(builder.with_no_client_auth())
    }
}

impl SslMode {
    /// The `PGSSLMODE` spelling.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

fn tls_setup_error(why: String) -> UserError {
    UserError::new("could not set up TLS for the PostgreSQL connection").detail(why)
}

fn read_pem<T>(
    path: &Path,
    parse: impl FnOnce(&Path) -> Result<T, rustls::pki_types::pem::Error>,
) -> Result<T, UserError> {
    parse(path).map_err(|e| {
        tls_setup_error(format!(
            "\"{}\" could not be read as PEM: {e}",
            path.display()
        ))
        .hint("Check PGSSLROOTCERT, PGSSLCERT and PGSSLKEY.")
    })
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, UserError> {
    let certs = read_pem(path, |p| {
        CertificateDer::pem_file_iter(p).and_then(|it| it.collect::<Result<Vec<_>, _>>())
    })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(tls_setup_error(format!(
            "\"{}\" holds no usable certificate.",
            path.display()
        )));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, UserError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(tls_setup_error(
            "PGSSLROOTCERT is \"system\", but the system's trust store has no certificates.".into(),
        ));
    }
    Ok(roots)
}

fn webpki_verifier(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, UserError> {
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| tls_setup_error(e.to_string()))
}

/// `verify-ca`: the chain is checked, the name is not.
#[derive(Debug)]
struct AnyName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate, as libpq: encrypted,
/// but the server is not authenticated (the handshake is still checked).
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_like_libpq_and_default_to_prefer() {
        assert_eq!(SslMode::parse(None).unwrap(), SslMode::Prefer);
        assert_eq!(
            SslMode::parse(Some("verify-full")).unwrap(),
            SslMode::VerifyFull
        );
        let err = SslMode::parse(Some("required")).unwrap_err();
        assert!(err.to_string().contains("PGSSLMODE"), "{err}");
    }

    #[test]
    fn verification_needs_its_root_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            root_cert: Some(dir.path().join("root.crt")),
            client_cert: dir.path().join("postgresql.crt"),
            client_key: dir.path().join("postgresql.key"),
        };
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = client_config(mode, &files).unwrap_err();
            assert!(err.to_string().contains("root certificate"), "{err}");
        }
        // require and prefer encrypt without one, as libpq.
        for mode in [SslMode::Prefer, SslMode::Require] {
            client_config(mode, &files).unwrap();
        }
    }
}
