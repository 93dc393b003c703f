//! `wal-fetch WAL_SEGMENT WAL_DESTINATION`: PostgreSQL's restore_command, and
//! `wal-prefetch`, its background helper.
//!
//! The exit code is a contract with PostgreSQL: 0 means `%p` holds the whole
//! file; 1 means the archive authoritatively has no such file (recovery ends
//! there); anything else we cannot rule out exits 126, which makes PostgreSQL
//! stop instead of promoting early on a network blip. `%p` is written through
//! a temporary file and a rename, so it is never partial, even after a kill.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::Context;
use crate::cli::{WalFetchArgs, WalPrefetchArgs};
use crate::durable::{parent_dir, sync_dir};
use crate::error::{CmdResult, CommandError, UserError, exit};
use crate::layout::SegmentName;
use crate::pipeline::{self, DecryptionKeys};
use crate::storage::StoreError;

/// `<WAL dir>/.wal-e/prefetch/…`, as WAL-E lays it out.
struct PrefetchDirs {
    base: PathBuf,
}

impl PrefetchDirs {
    fn new(base: PathBuf) -> Self {
        PrefetchDirs { base }
    }
    fn root(&self) -> PathBuf {
        self.base.join(".wal-e").join("prefetch")
    }
    fn ready(&self, seg: &str) -> PathBuf {
        self.root().join(seg)
    }
    fn running_root(&self) -> PathBuf {
        self.root().join("running")
    }
    fn running(&self, seg: &str) -> PathBuf {
        self.running_root().join(seg)
    }
    /// Where direct downloads are staged before the rename into `%p`.
    fn staging(&self) -> PathBuf {
        self.base.join(".wal-e").join("tmp")
    }
}

/// Makes `dir` (and parents) with mode 0700, as WAL-E's prefetch dirs are.
fn make_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

pub async fn run(ctx: &Context, args: &WalFetchArgs) -> CmdResult {
    let name = args.wal_segment.as_str();
    if name.contains('/') || name.is_empty() {
        return Err(UserError::new(format!("invalid WAL file name {name:?}"))
            .hint("wal-fetch takes the file name PostgreSQL passes as %f, then the destination %p.")
            .into());
    }
    let dest = &args.wal_destination;
    let dest_dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = std::fs::canonicalize(&dest_dir).map_err(|e| {
        UserError::new("the destination directory of wal-fetch does not exist")
            .detail(format!("{}: {e}", dest_dir.display()))
            .exit_code(exit::RESTORE_UNAVAILABLE)
    })?;
    let dirs = PrefetchDirs::new(base);

    let segment = SegmentName::parse(name);
    let key = ctx.layout.wal_key(name);
    let url = ctx.layout.url(&key);
    log_state(ctx, "wal-fetch", &url, name, "begin", "begin wal restore");

    // A complete prefetched copy is promoted by a rename.
    // Another wal-fetch on the same directory may take it first: then
    // download as if there had been none.
    let promoted = match segment.map(|_| promote(&dirs.ready(name), dest)) {
        Some(Ok(())) => true,
        Some(Err(e)) if e.kind() != io::ErrorKind::NotFound => {
            return Err(fetch_failed(
                &url,
                &format!("promoting the prefetched copy: {e}"),
            ));
        }
        _ => false,
    };
    let result = if promoted {
        Ok(())
    } else {
        let decrypt_with = ctx.decryption_keys().await.map_err(unavailable)?;
        download(ctx, &key, dest, &dirs.staging(), decrypt_with).await
    };
    match &result {
        Ok(()) => log_state(
            ctx,
            "wal-fetch",
            &url,
            name,
            "complete",
            "complete wal restore",
        ),
        Err(e) if e.is_not_found() => {
            tracing::info!(
                detail = %format!("{url} does not exist."), action = "wal-fetch", key = %url,
                prefix = %ctx.settings.prefix.path, seg = %name, state = "missing",
                "could not find WAL file"
            );
        }
        Err(_) => {}
    }
    result?;

    if let Some(segment) = segment
        && args.prefetch > 0
    {
        let segment_size = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        let upcoming = following_segments(segment, segment_size, args.prefetch);
        // Prefetching is an optimisation: its failures never fail the fetch.
        prune_prefetched(&dirs, segment, &upcoming);
        start_prefetches(ctx, &dirs, &upcoming);
    }
    Ok(())
}

pub async fn run_prefetch(ctx: &Context, args: &WalPrefetchArgs) -> CmdResult {
    let dirs = PrefetchDirs::new(args.base_directory.clone());
    let seg = &args.segment;
    if SegmentName::parse(seg).is_none() {
        return Err(UserError::new(format!("invalid WAL segment name {seg:?}")).into());
    }
    let running = dirs.running(seg);
    // wal-fetch normally claims the running directory before starting us.
    make_private_dir(&running)
        .map_err(|e| UserError::new(format!("cannot create {}: {e}", running.display())))?;
    let key = ctx.layout.wal_key(seg);
    let url = ctx.layout.url(&key);
    log_state(
        ctx,
        "wal-prefetch",
        &url,
        seg,
        "begin",
        "begin wal prefetch",
    );
    let result = async {
        let decrypt_with = ctx.decryption_keys().await?;
        let stored = ctx
            .store
            .get(&key)
            .await
            .map_err(|e| UserError::new(e.to_string()))?;
        let temp = tempfile::Builder::new()
            .prefix("tmp")
            .tempfile_in(&running)
            .map_err(|e| UserError::new(e.to_string()))?;
        write_decoded(stored.stream, decrypt_with, temp.path())
            .await
            .map_err(|e| UserError::new(e.to_string()))?;
        // Complete and durable: publish it under its name, atomically.
        // Never replace a copy another prefetch published (or wal-fetch is
        // about to promote); an identical one is simply dropped.
        match temp.persist_noclobber(dirs.ready(seg)) {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(UserError::new(e.error.to_string())),
        }
        sync_dir(&dirs.root()).map_err(|e| UserError::new(e.to_string()))?;
        Ok::<(), UserError>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&running);
    match result {
        Ok(()) => {
            log_state(
                ctx,
                "wal-prefetch",
                &url,
                seg,
                "complete",
                "complete wal prefetch",
            );
            Ok(())
        }
        Err(e) => Err(UserError::new("wal-prefetch failed")
            .detail(format!("{url}: {}", e.msg))
            .into()),
    }
}

fn log_state(ctx: &Context, action: &str, url: &str, seg: &str, state: &str, msg: &str) {
    tracing::info!(
        action = %action, key = %url, prefix = %ctx.settings.prefix.path, seg = %seg,
        state = %state, "{msg}"
    );
}

fn unavailable(err: UserError) -> CommandError {
    err.exit_code(exit::RESTORE_UNAVAILABLE).into()
}

fn fetch_failed(url: &str, why: &str) -> CommandError {
    UserError::new("could not restore WAL file")
        .detail(format!("{url}: {why}"))
        .hint("wal-fetch exits with 126 so that PostgreSQL stops recovery instead of treating the file as missing; fix the problem and start the server again.")
        .exit_code(exit::RESTORE_UNAVAILABLE)
        .into()
}

/// Downloads into a staging file, then renames it over `dest`. The store
/// retries (a body that breaks off resumes where it stopped): a failure
/// here is final.
async fn download(
    ctx: &Context,
    key: &str,
    dest: &Path,
    staging: &Path,
    decrypt_with: Option<Arc<DecryptionKeys>>,
) -> CmdResult {
    let url = ctx.layout.url(key);
    clean_stale_staging(staging);
    make_private_dir(staging)
        .map_err(|e| fetch_failed(&url, &format!("creating {}: {e}", staging.display())))?;
    let stored = match ctx.store.get(key).await {
        Ok(stored) => stored,
        Err(StoreError::NotFound { .. }) => {
            return Err(UserError::new("WAL file not found in the archive")
                .detail(format!("{url} does not exist."))
                .not_found()
                .into());
        }
        Err(e) => return Err(fetch_failed(&url, &e.to_string())),
    };
    let temp = tempfile::Builder::new()
        .prefix("fetch.")
        .tempfile_in(staging)
        .map_err(|e| {
            fetch_failed(
                &url,
                &format!("creating a file in {}: {e}", staging.display()),
            )
        })?;
    write_decoded(stored.stream, decrypt_with, temp.path())
        .await
        .map_err(|e| fetch_failed(&url, &e.to_string()))?;
    temp.persist(dest).map_err(|e| {
        fetch_failed(
            &url,
            &format!("renaming into {}: {}", dest.display(), e.error),
        )
    })?;
    sync_dir(parent_dir(dest)).map_err(|e| fetch_failed(&url, &e.to_string()))
}

/// Decrypts and decompresses `stored` into the file at `path`, and fsyncs it.
async fn write_decoded(
    stored: crate::ByteStream,
    decrypt_with: Option<Arc<DecryptionKeys>>,
    path: &Path,
) -> io::Result<()> {
    let mut plain = pipeline::decode(stored, decrypt_with.as_ref());
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .await?;
    while let Some(chunk) = plain.next().await {
        out.write_all(&chunk?).await?;
    }
    out.flush().await?;
    out.sync_all().await
}

fn promote(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    sync_dir(parent_dir(to))
}

/// Staging files left by a killed wal-fetch; an hour is far longer than any
/// download of one WAL file takes.
fn clean_stale_staging(staging: &Path) {
    let Ok(entries) = std::fs::read_dir(staging) else {
        return;
    };
    let cutoff = SystemTime::now() - Duration::from_secs(3600);
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The next `count` segment names on the same timeline. The segment size
/// (16 MiB unless the cluster was built otherwise) is taken from the file
/// just restored, whose size is exactly one segment.
fn following_segments(current: SegmentName, segment_size: u64, count: u32) -> Vec<SegmentName> {
    let size = if segment_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&segment_size) {
        segment_size
    } else {
        16 * 1024 * 1024
    };
    let per_log = (1u64 << 32) / size;
    let mut position = u64::from(current.log) * per_log + u64::from(current.seg);
    (0..count)
        .map(|_| {
            position += 1;
            SegmentName {
                timeline: current.timeline,
                log: (position / per_log) as u32,
                seg: (position % per_log) as u32,
            }
        })
        .collect()
}

/// Removes prefetched and in-progress segments that are not coming up next.
fn prune_prefetched(dirs: &PrefetchDirs, current: SegmentName, upcoming: &[SegmentName]) {
    let keep: Vec<String> = upcoming.iter().map(ToString::to_string).collect();
    let stale = |name: &str| {
        SegmentName::parse(name).is_some()
            && !keep.iter().any(|k| k == name)
            && name != current.to_string()
    };
    for (dir, is_running) in [(dirs.root(), false), (dirs.running_root(), true)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                let _ = if is_running {
                    std::fs::remove_dir_all(entry.path())
                } else {
                    std::fs::remove_file(entry.path())
                };
            }
        }
    }
}

/// Starts a detached `wal-prefetch` process for each upcoming segment that is
/// neither downloaded nor being downloaded. Claiming `running/<seg>` with
/// mkdir makes concurrent wal-fetch calls start each download only once.
fn start_prefetches(ctx: &Context, dirs: &PrefetchDirs, upcoming: &[SegmentName]) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    if make_private_dir(&dirs.running_root()).is_err() {
        return;
    }
    for seg in upcoming {
        let name = seg.to_string();
        // Claim first (an exclusive mkdir), then look: a prefetch that
        // finished in between is then seen and not started again.
        let claim = {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dirs.running(&name))
        };
        if claim.is_err() {
            continue;
        }
        if dirs.ready(&name).exists() {
            let _ = std::fs::remove_dir(dirs.running(&name));
            continue;
        }
        let spawned = std::process::Command::new(&exe)
            .args(ctx.global.to_args())
            .arg("wal-prefetch")
            .arg(&dirs.base)
            .arg(&name)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group: not killed with PostgreSQL's restore_command.
            .process_group(0)
            .spawn();
        if spawned.is_err() {
            let _ = std::fs::remove_dir(dirs.running(&name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::GlobalArgs;
    use crate::config::Settings;
    use crate::storage::{
        GetOptions, GetResult, ObjectMeta, PutOptions, PutPayload, RetryPolicy, RetryingStore,
        Store,
    };
    use async_trait::async_trait;
    use futures_util::stream::BoxStream;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A store whose every request fails as an outage would.
    #[derive(Debug, Default)]
    struct Unreachable {
        gets: Arc<AtomicU32>,
    }

    #[async_trait]
    impl Store for Unreachable {
        async fn put(&self, key: &str, _: PutPayload, _: &PutOptions) -> Result<(), StoreError> {
            Err(StoreError::transient("put", key, "connection refused"))
        }
        async fn get_opts(&self, key: &str, _: &GetOptions) -> Result<GetResult, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::transient("get", key, "connection refused"))
        }
        async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
            Err(StoreError::transient("head", key, "connection refused"))
        }
        fn list(
            &self,
            prefix: &str,
            _: Option<String>,
        ) -> BoxStream<'_, Result<ObjectMeta, StoreError>> {
            let err = StoreError::transient("list", prefix, "connection refused");
            futures_util::stream::iter([Err(err)]).boxed()
        }
        async fn delete_many(&self, _: &[String]) -> Result<(), StoreError> {
            Err(StoreError::transient(
                "delete",
                "batch",
                "connection refused",
            ))
        }
    }

    #[tokio::test]
    async fn an_unreachable_store_exits_126_after_the_retries() {
        let env: HashMap<String, String> = [
            ("WALE_S3_PREFIX".to_string(), "s3://bucket/db".to_string()),
            ("WALE_RETRIES".to_string(), "3".to_string()),
        ]
        .into();
        let settings = Settings::from_args(&GlobalArgs::default(), &env).unwrap();
        // Wrapped as `storage::open` wraps every store.
        let gets = Arc::new(AtomicU32::new(0));
        let store = RetryingStore::new(
            Unreachable { gets: gets.clone() },
            RetryPolicy::from_retries(settings.retries),
        );
        let ctx = Context::new(settings, Arc::new(store), GlobalArgs::default());
        let dest = tempfile::tempdir().unwrap();
        let args = WalFetchArgs {
            wal_segment: "000000010000000000000001".into(),
            wal_destination: dest.path().join("RECOVERYXLOG"),
            prefetch: 0,
        };
        let started = std::time::Instant::now();
        let err = run(&ctx, &args).await.unwrap_err();
        assert_eq!(err.exit_code(), exit::RESTORE_UNAVAILABLE, "{err}");
        assert_eq!(
            gets.load(Ordering::SeqCst),
            3,
            "WALE_RETRIES attempts in all, not WALE_RETRIES squared"
        );
        // Two waits of 1-2 s and 2-4 s with jitter: bounded, and never "not found".
        assert!(started.elapsed() < Duration::from_secs(15));
        assert!(!dest.path().join("RECOVERYXLOG").exists());
    }

    fn seg(s: &str) -> SegmentName {
        SegmentName::parse(s).unwrap()
    }

    #[test]
    fn following_segments_carry_into_the_next_log_for_16_mib() {
        let next = following_segments(seg("0000000200000001000000FE"), 16 << 20, 3);
        let names: Vec<String> = next.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "0000000200000001000000FF",
                "000000020000000200000000",
                "000000020000000200000001"
            ]
        );
    }

    #[test]
    fn following_segments_respect_larger_segment_sizes() {
        // 64 MiB segments: 64 per log file.
        let next = following_segments(seg("00000001000000000000003F"), 64 << 20, 1);
        assert_eq!(next[0].to_string(), "000000010000000100000000");
        // An odd size (a .partial, say) falls back to 16 MiB.
        let next = following_segments(seg("00000001000000000000003F"), 12345, 1);
        assert_eq!(next[0].to_string(), "000000010000000000000040");
    }
}
