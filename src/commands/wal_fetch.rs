//! `wal-fetch WAL_SEGMENT WAL_DESTINATION`: PostgreSQL's restore_command, and
//! `wal-prefetch`, its background helper.
//!
//! The exit code is a contract with PostgreSQL: 0 means `%p` holds the whole
//! file; 1 means the archive authoritatively has no such file (recovery ends
//! there); anything else we cannot rule out exits 126, which makes PostgreSQL
//! stop instead of promoting early on a network blip. `%p` is written through
//! a temporary file and a rename, so it is never partial, even after a kill.
//! A prefetched copy is used only when it provably is the archive's file
//! ([`prefetched`]).

mod prefetched;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::Context;
use crate::cli::{WalFetchArgs, WalPrefetchArgs};
use crate::durable::{parent_dir, sync_dir};
use crate::error::{CmdResult, CommandError, UserError, exit};
use crate::layout::SegmentName;
use crate::pipeline::{self, DecryptionKeys};
use crate::postgres::{LONG_PAGE_HEADER_SIZE, LongPageHeader};
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
    /// Where and what `ready(seg)` was downloaded from ([`prefetched`]).
    fn record(&self, seg: &str) -> PathBuf {
        self.root().join(format!("{seg}.json"))
    }
    fn running_root(&self) -> PathBuf {
        self.root().join("running")
    }
    fn running(&self, seg: &str) -> PathBuf {
        self.running_root().join(seg)
    }
    /// Where direct downloads, and prefetched copies being checked, are
    /// staged before the rename into `%p`.
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
    sweep_stale_staging(&dirs);

    let segment = SegmentName::parse(name);
    let key = ctx.layout.wal_key(name);
    let url = ctx.layout.url(&key);
    log_state(ctx, "wal-fetch", &url, name, "begin", "begin wal restore");

    // A prefetched copy is promoted by a rename once checked. Without
    // prefetching, the prefetch directory is not looked at.
    let promoted = match segment {
        Some(segment) if args.prefetch > 0 => prefetched::take(&dirs, segment, &url, dest),
        _ => false,
    };
    let result = if promoted {
        Ok(())
    } else {
        let decrypt_with = ctx.decryption_keys().await.map_err(unavailable)?;
        download(ctx, name, dest, &dirs.staging(), decrypt_with).await
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
        Err(CommandError::User(e)) if e.not_found => {
            tracing::info!(
                detail = e.detail.as_deref(), hint = e.hint.as_deref(), action = "wal-fetch",
                key = %url, prefix = %ctx.settings.prefix.path, seg = %name, state = "missing",
                "{}", e.msg
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
        let decoded = write_decoded(stored.stream, decrypt_with, temp.path(), seg)
            .await
            .map_err(|e| UserError::new(e.to_string()))?;
        // Complete and durable: publish it under its name, replacing
        // whatever stale copy was there.
        prefetched::publish(&dirs, seg, temp, &decoded, &url)
            .map_err(|e| UserError::new(e.to_string()))?;
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

/// Downloads the WAL file `name` into a staging file, then renames it over
/// `dest`. The store retries (a body that breaks off resumes where it
/// stopped): a failure here is final.
async fn download(
    ctx: &Context,
    name: &str,
    dest: &Path,
    staging: &Path,
    decrypt_with: Option<Arc<DecryptionKeys>>,
) -> CmdResult {
    let key = &ctx.layout.wal_key(name);
    let url = ctx.layout.url(key);
    make_private_dir(staging)
        .map_err(|e| fetch_failed(&url, &format!("creating {}: {e}", staging.display())))?;
    let stored = match ctx.store.get(key).await {
        Ok(stored) => stored,
        Err(StoreError::NotFound { .. }) => {
            return Err(UserError::new("could not find WAL file")
                .detail(format!("{url} does not exist."))
                .hint("This is normal when PostgreSQL looks for timeline history files or reaches the end of the archive.")
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
    write_decoded(stored.stream, decrypt_with, temp.path(), name)
        .await
        .map_err(|e| match too_large(&e) {
            Some(too_large) => UserError::new("the archived WAL file is larger than it can be")
                .detail(format!("{url} {too_large}."))
                .hint("The object is damaged, or is not the WAL file it is named after. wal-fetch wrote nothing and exits with 126 so that PostgreSQL stops recovery; restore the object from another copy of the archive.")
                .exit_code(exit::RESTORE_UNAVAILABLE)
                .into(),
            None => fetch_failed(&url, &e.to_string()),
        })?;
    temp.persist(dest).map_err(|e| {
        fetch_failed(
            &url,
            &format!("renaming into {}: {}", dest.display(), e.error),
        )
    })?;
    sync_dir(parent_dir(dest)).map_err(|e| fetch_failed(&url, &e.to_string()))
}

/// What [`write_decoded`] wrote.
struct Decoded {
    len: u64,
    sha256: [u8; 32],
}

/// Decrypts and decompresses `stored`, the WAL file `name`, into the file at
/// `path`, and fsyncs it. Fails, having written no more than the limit, when
/// it is larger than such a file can be ([`DecodedLimit`]).
async fn write_decoded(
    stored: crate::ByteStream,
    decrypt_with: Option<Arc<DecryptionKeys>>,
    path: &Path,
    name: &str,
) -> io::Result<Decoded> {
    let mut plain = pipeline::decode(stored, decrypt_with.as_ref());
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .await?;
    let mut limit = DecodedLimit::for_file(name);
    let mut sha256 = Sha256::new();
    while let Some(chunk) = plain.next().await {
        let chunk = chunk?;
        limit
            .admit(&chunk)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        sha256.update(&chunk);
        out.write_all(&chunk).await?;
    }
    out.flush().await?;
    out.sync_all().await?;
    Ok(Decoded {
        len: limit.seen,
        sha256: sha256.finalize().into(),
    })
}

/// The most bytes a WAL file may decode to, so that a damaged or tampered
/// object cannot fill PostgreSQL's WAL volume: a segment (or a `.partial`
/// one) is one segment long, by the size its first page names, or by the
/// largest size there is when it names none; other files (timeline and
/// backup history) are small text.
struct DecodedLimit {
    max: u64,
    why: &'static str,
    /// A segment's first bytes, until its long page header is complete.
    header: Option<Vec<u8>>,
    seen: u64,
}

impl DecodedLimit {
    fn for_file(name: &str) -> DecodedLimit {
        let segment = SegmentName::parse(name.strip_suffix(".partial").unwrap_or(name));
        match segment {
            Some(_) => DecodedLimit {
                max: 1 << 30,
                why: "the largest WAL segment size",
                header: Some(Vec::with_capacity(LONG_PAGE_HEADER_SIZE)),
                seen: 0,
            },
            None => DecodedLimit {
                max: 16 << 20,
                why: "the most a WAL file other than a segment may have",
                header: None,
                seen: 0,
            },
        }
    }

    /// Counts the next decoded `chunk`: an error once there is too much.
    fn admit(&mut self, chunk: &[u8]) -> Result<(), TooLarge> {
        if let Some(header) = &mut self.header {
            let missing = LONG_PAGE_HEADER_SIZE - header.len();
            header.extend_from_slice(&chunk[..missing.min(chunk.len())]);
            if header.len() == LONG_PAGE_HEADER_SIZE {
                if let Some(page) = LongPageHeader::parse(header) {
                    self.max = page.segment_size;
                    self.why = "the segment size its first page names";
                }
                self.header = None;
            }
        }
        self.seen += chunk.len() as u64;
        if self.seen > self.max {
            return Err(TooLarge {
                max: self.max,
                why: self.why,
            });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("decodes to more than {max} bytes, {why}")]
struct TooLarge {
    max: u64,
    why: &'static str,
}

/// The [`TooLarge`] a download failed with, if that is why.
fn too_large(err: &io::Error) -> Option<&TooLarge> {
    err.get_ref()?.downcast_ref::<TooLarge>()
}

/// Removes what killed wal-fetch and wal-prefetch processes left behind:
/// staging files (`.wal-e/tmp/*`, `.wal-e/prefetch/running/<seg>/tmp*`)
/// not written to for an hour, far longer than any download of one WAL file
/// takes, and prefetch claims (`running/<seg>`) abandoned as long ago, so
/// that the segment can be prefetched again.
fn sweep_stale_staging(dirs: &PrefetchDirs) {
    let cutoff = SystemTime::now() - Duration::from_secs(3600);
    let is_old = |path: &Path| {
        std::fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff)
    };
    let remove_old_files = |dir: &Path| {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_file()) && is_old(&path) {
                let _ = std::fs::remove_file(path);
            }
        }
    };
    remove_old_files(&dirs.staging());
    let claims = std::fs::read_dir(dirs.running_root());
    for entry in claims.into_iter().flatten().flatten() {
        let claim = entry.path();
        // Judged before the sweep, which makes the directory look fresh.
        let abandoned = is_old(&claim);
        remove_old_files(&claim);
        if abandoned {
            // Only succeeds when empty: a live worker's file keeps it.
            let _ = std::fs::remove_dir(&claim);
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
        // A prefetched segment's record goes with it.
        let name = name.strip_suffix(".json").unwrap_or(name);
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
/// neither prefetched from this prefix nor being downloaded; it replaces a
/// stale copy. Claiming `running/<seg>` with mkdir makes concurrent
/// wal-fetch calls start each download only once.
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
        let url = ctx.layout.url(&ctx.layout.wal_key(&name));
        if prefetched::is_current(dirs, &name, &url) {
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

    /// Feeds a decoded `name` of `total` bytes, starting with `head`, to its
    /// limit in 1 MiB chunks.
    fn admitted(name: &str, head: &[u8], total: u64) -> Result<(), TooLarge> {
        let mut limit = DecodedLimit::for_file(name);
        // The header arrives split over two chunks.
        limit.admit(&head[..20])?;
        limit.admit(&head[20..])?;
        let block = vec![0u8; 1 << 20];
        let mut left = total - head.len() as u64;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            limit.admit(&block[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    #[test]
    fn a_segment_decodes_to_at_most_the_size_its_first_page_names() {
        let mut head = [0u8; LONG_PAGE_HEADER_SIZE];
        head[0..2].copy_from_slice(&0xD110u16.to_ne_bytes());
        head[2..4].copy_from_slice(&2u16.to_ne_bytes());
        head[32..36].copy_from_slice(&(1u32 << 20).to_ne_bytes());
        let name = "000000010000000000000003";
        assert!(admitted(name, &head, 1 << 20).is_ok());
        let err = admitted(name, &head, (1 << 20) + 1).unwrap_err();
        assert_eq!(err.max, 1 << 20);
        assert!(admitted(&format!("{name}.partial"), &head, (1 << 20) + 1).is_err());
        // Without a valid header, the largest segment size is the limit.
        let no_header = [0u8; LONG_PAGE_HEADER_SIZE];
        assert!(admitted(name, &no_header, 1 << 30).is_ok());
        assert_eq!(
            admitted(name, &no_header, (1 << 30) + 1).unwrap_err().max,
            1 << 30
        );
    }

    #[test]
    fn other_wal_files_decode_to_at_most_16_mib() {
        let head = [b'1'; LONG_PAGE_HEADER_SIZE];
        for name in [
            "00000002.history",
            "000000010000000000000004.00000028.backup",
        ] {
            assert!(admitted(name, &head, 16 << 20).is_ok(), "{name}");
            assert_eq!(
                admitted(name, &head, (16 << 20) + 1).unwrap_err().max,
                16 << 20,
                "{name}"
            );
        }
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
