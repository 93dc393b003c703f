//! One module per command; [`dispatch`] maps the parsed command line to them.

pub mod backup_fetch;
pub mod backup_list;
pub mod backup_push;
pub mod delete;
pub mod wal_fetch;
pub mod wal_push;

use std::sync::Arc;

use crate::cli::{Command, GlobalArgs};
use crate::config::{ProcessEnv, Settings};
use crate::error::{CmdResult, UserError};
use crate::layout::Layout;
use crate::pipeline::{DecryptionKeys, EncryptionKeys};
use crate::storage::{self, Store};

/// What every command that touches the store works with.
pub struct Context {
    pub settings: Settings,
    pub layout: Layout,
    pub store: Arc<dyn Store>,
    /// The global options as given, to pass on to helper processes.
    pub global: GlobalArgs,
}

impl Context {
    pub fn new(settings: Settings, store: Arc<dyn Store>, global: GlobalArgs) -> Context {
        Context {
            layout: Layout::new(settings.prefix.clone()),
            settings,
            store,
            global,
        }
    }

    /// The public key(s) to encrypt uploads to, when a GPG key id is set.
    pub async fn encryption_keys(&self) -> Result<Option<Arc<EncryptionKeys>>, UserError> {
        let Some(id) = &self.settings.gpg_key_id else {
            return Ok(None);
        };
        EncryptionKeys::load(id).await.map(|k| Some(Arc::new(k))).map_err(|e| {
            UserError::new("could not load the GPG public key for encryption")
                .detail(e.to_string())
                .hint("Check WALE_GPG_KEY_ID / --gpg-key-id and GNUPGHOME, or set WALE_GPG_PUBLIC_KEY_FILE to an exported public key.")
        })
    }

    /// The secret key(s) to decrypt downloads with, when a GPG key id is set.
    pub async fn decryption_keys(&self) -> Result<Option<Arc<DecryptionKeys>>, UserError> {
        let Some(id) = &self.settings.gpg_key_id else {
            return Ok(None);
        };
        DecryptionKeys::load(id).await.map(|k| Some(Arc::new(k))).map_err(|e| {
            UserError::new("could not load the GPG secret key for decryption")
                .detail(e.to_string())
                .hint("The secret key must be in the GnuPG home (GNUPGHOME) without a passphrase, or exported to the file named by WALE_GPG_SECRET_KEY_FILE.")
        })
    }
}

/// Attempts per storage operation of a `wal-prefetch` worker at most.
const PREFETCH_ATTEMPTS: u32 = 3;

pub async fn dispatch(command: Command, mut settings: Settings, global: GlobalArgs) -> CmdResult {
    if matches!(command, Command::WalPrefetch(_)) {
        // A prefetch is a guess ahead of recovery: when the store fails it
        // gives up soon (wal-fetch downloads the segment itself when asked)
        // instead of lingering for WALE_RETRIES attempts after recovery ends.
        settings.retries = settings.retries.at_most(PREFETCH_ATTEMPTS);
    }
    // wal-push is bounded as a whole, opening the store included.
    let time_bound = matches!(command, Command::WalPush(_)).then_some(settings.wal_push_timeout);
    let work = async move {
        let store = storage::open(&settings, &ProcessEnv).await?;
        let ctx = Context::new(settings, store, global);
        match command {
            Command::BackupPush(args) => backup_push::run(&ctx, &args).await,
            Command::BackupFetch(args) => backup_fetch::run(&ctx, &args).await,
            Command::WalPush(args) => wal_push::run(&ctx, &args).await,
            Command::WalFetch(args) => wal_fetch::run(&ctx, &args).await,
            Command::WalPrefetch(args) => wal_fetch::run_prefetch(&ctx, &args).await,
            Command::BackupList(args) => backup_list::run(&ctx, &args).await,
            Command::Delete(args) => delete::run(&ctx, &args).await,
            // Printed by `run` before any configuration is read.
            Command::Version => Ok(()),
        }
    };
    let result = match time_bound {
        Some(limit) => wal_push::within(limit, work).await,
        None => work.await,
    };
    // Cancelled uploads may have left clean-up running (S3 aborts).
    storage::wait_for_cleanup().await;
    result
}

/// WAL-E's `format_kib_per_second`: `'{0:02g}'` of KiB/s, six significant digits.
pub fn format_kib_per_second(bytes: u64, seconds: f64) -> String {
    let rate = bytes as f64 / 1024.0 / seconds.max(1e-6);
    if rate == 0.0 {
        return "0".into();
    }
    let digits_before_point = rate.abs().log10().floor() as i32 + 1;
    let decimals = (6 - digits_before_point).max(0) as usize;
    let mut text = format!("{rate:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::format_kib_per_second;

    #[test]
    fn rates_are_formatted_like_python_g() {
        assert_eq!(format_kib_per_second(2_549_484, 1.0), "2489.73");
        assert_eq!(format_kib_per_second(1024, 1.0), "1");
        assert_eq!(format_kib_per_second(1536, 1.0), "1.5");
        assert_eq!(format_kib_per_second(0, 1.0), "0");
    }
}
