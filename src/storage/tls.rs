//! TLS for the HTTP clients: rustls with the `ring` provider only.

/// Installs `ring` as the process-wide rustls crypto provider, once. Call it
/// before building any HTTP client; later calls do nothing.
pub fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only if a provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
