//! The transformation stages between a local file and a stored object, as
//! async byte streams: WAL-E's `pv | lzop -c | gpg -e` and `gpg -d | lzop -d`,
//! done in-process with bounded buffers and no temporary files.
//!
//! Upload: read → (rate limit) → lzop compress → (OpenPGP encrypt) → store.
//! Download: store → (OpenPGP decrypt) → lzop decompress → write.

pub mod lzop;
pub mod pgp;
pub mod ratelimit;

use std::sync::Arc;

use crate::ByteStream;

pub use pgp::{DecryptionKeys, EncryptionKeys};
pub use ratelimit::RateLimiter;

/// Compresses, then encrypts when keys are given. `mtime` and `mode` go into
/// the lzop header, as `lzop` records them for its input.
pub fn encode(
    plain: ByteStream,
    mtime: u32,
    mode: u32,
    encrypt_to: Option<&Arc<EncryptionKeys>>,
) -> ByteStream {
    let compressed = lzop::compress_stream(plain, mtime, mode);
    match encrypt_to {
        Some(keys) => pgp::encrypt_stream(compressed, keys.clone()),
        None => compressed,
    }
}

/// Decrypts when keys are given, then decompresses.
pub fn decode(stored: ByteStream, decrypt_with: Option<&Arc<DecryptionKeys>>) -> ByteStream {
    let compressed = match decrypt_with {
        Some(keys) => pgp::decrypt_stream(stored, keys.clone()),
        None => stored,
    };
    lzop::decompress_stream(compressed)
}
