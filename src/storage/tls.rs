//! One TLS stack for every HTTP client: rustls with the ring provider.

/// Installs ring as the process-wide rustls crypto provider; idempotent, call
/// before building any HTTP client.
pub fn ensure_crypto_provider() {
    // Err means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
