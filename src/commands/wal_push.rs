//! `wal-push WAL_SEGMENT`: PostgreSQL's archive_command.
//!
//! The named file is uploaded first; other segments PostgreSQL has marked
//! `.ready` are uploaded alongside it (up to `--pool-size` at once) and marked
//! `.done` once durable. Uploads are create-only: an object that is already
//! there is accepted only if it holds the same WAL, so a second server writing
//! to the same prefix is caught instead of silently overwriting history.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use super::{Context, format_kib_per_second};
use crate::ByteStream;
use crate::cli::WalPushArgs;
use crate::durable::{parent_dir, sync_dir};
use crate::error::{CmdResult, CommandError, UserError};
use crate::layout::{SEGMENT_READY_RE, WAL_SHA256_METADATA};
use crate::pipeline::{self, EncryptionKeys, lzop};
use crate::storage::{PutOptions, PutPayload, StoreError};

/// One WAL file to archive.
#[derive(Debug, Clone)]
struct WalFile {
    path: PathBuf,
    name: String,
    /// Named by PostgreSQL (never marked done by us) or found `.ready`.
    explicit: bool,
}

enum Outcome {
    Uploaded,
    AlreadyArchived(Compared),
    /// A pooled segment that disappeared before we read it.
    Vanished,
}

/// How a re-archived file was found to equal the archived copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compared {
    /// The SHA-256 recorded with the archived copy equals the file's.
    Digest,
    /// The archived copy was downloaded and decoded.
    Content,
}

/// Runs `work`, a whole wal-push, for at most `limit`
/// (`WALE_WAL_PUSH_TIMEOUT`). PostgreSQL's archiver waits for
/// archive_command, so a store that hangs or keeps failing must not hold it
/// for hours: when the time is up, whatever is in flight is dropped (a
/// file:// temporary file is removed, an S3 multipart upload aborted as
/// clean-up) and PostgreSQL tries again on its own schedule.
pub async fn within(limit: Duration, work: impl Future<Output = CmdResult>) -> CmdResult {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(UserError::new(format!(
            "could not archive WAL within {} s",
            limit.as_secs()
        ))
        .detail("wal-push gave up after WALE_WAL_PUSH_TIMEOUT: the store did not answer in time, or kept failing (see any retries logged above). Unfinished uploads were cancelled.")
        .hint("PostgreSQL runs archive_command again later. Check that the store is reachable; raise WALE_WAL_PUSH_TIMEOUT if uploads are only slow.")
        .into()),
    }
}

pub async fn run(ctx: &Context, args: &WalPushArgs) -> CmdResult {
    let path = &args.wal_segment;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| UserError::new(format!("invalid WAL file path {}", path.display())))?
        .to_string();
    if let Err(e) = tokio::fs::metadata(path).await {
        return Err(UserError::new("could not find file for wal-push")
            .detail(format!("{}: {e}", path.display()))
            .hint(
                "PostgreSQL passes the path of the WAL file as %p, relative to the data directory.",
            )
            .into());
    }
    let encrypt_to = ctx.encryption_keys().await?;
    let xlog_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();

    let mut files = vec![WalFile {
        path: path.clone(),
        name: name.clone(),
        explicit: true,
    }];
    let pool = args.pool_size as usize;
    if pool > 1 {
        files.extend(
            ready_segments(&xlog_dir, &name)
                .into_iter()
                .take(pool - 1)
                .map(|seg| WalFile {
                    path: xlog_dir.join(&seg),
                    name: seg,
                    explicit: false,
                }),
        );
    }

    let results: Vec<(WalFile, Result<Outcome, CommandError>)> = stream::iter(files)
        .map(|file| {
            let encrypt_to = encrypt_to.clone();
            async move {
                let result = push_one(ctx, &file, encrypt_to.as_ref()).await;
                let result = match result {
                    Ok(done @ (Outcome::Uploaded | Outcome::AlreadyArchived(_)))
                        if !file.explicit =>
                    {
                        mark_done(parent_dir(&file.path), &file.name).map(|()| done)
                    }
                    other => other,
                };
                (file, result)
            }
        })
        .buffer_unordered(pool)
        .collect()
        .await;

    // The explicit segment's failure is the one PostgreSQL cares about; a
    // pooled failure also fails the command so that it is retried.
    let mut first_error = None;
    for (file, result) in results {
        if let Err(e) = result
            && (file.explicit || first_error.is_none())
        {
            first_error = Some(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Full segment names with a `.ready` status file, sorted, except `skip`.
/// The pool is an optimisation: when the status directory cannot be read,
/// the named segment is still archived (with a warning), and PostgreSQL
/// hands over the others one by one.
fn ready_segments(xlog_dir: &Path, skip: &str) -> Vec<String> {
    let status_dir = xlog_dir.join("archive_status");
    let entries = match std::fs::read_dir(&status_dir) {
        Ok(entries) => entries,
        // Not a PostgreSQL WAL directory (e.g. a file pushed by hand): no pool.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(
                detail = %format!("{}: {e}", status_dir.display()),
                hint = "Only the WAL file PostgreSQL named is archived now; other ready segments wait for their own turn.",
                "could not read the archive status directory"
            );
            return Vec::new();
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| SEGMENT_READY_RE.captures(&n).map(|c| c[1].to_string()))
        .filter(|n| n != skip)
        .collect();
    names.sort();
    names
}

/// Renames `archive_status/<seg>.ready` to `.done`, durably.
fn mark_done(xlog_dir: &Path, name: &str) -> Result<(), CommandError> {
    let status_dir = xlog_dir.join("archive_status");
    let ready = status_dir.join(format!("{name}.ready"));
    let done = status_dir.join(format!("{name}.done"));
    std::fs::rename(&ready, &done)
        .and_then(|()| sync_dir(&status_dir))
        .map_err(|e| {
            UserError::new("could not mark a WAL segment as archived")
                .detail(format!(
                    "Renaming {} to {}: {e}",
                    ready.display(),
                    done.display()
                ))
                .into()
        })
}

/// The file's bytes as a stream, read in lzop-block-sized chunks.
fn file_stream(path: PathBuf) -> ByteStream {
    stream::once(tokio::fs::File::open(path))
        .map_ok(|f| ReaderStream::with_capacity(f, lzop::BLOCK_SIZE))
        .try_flatten()
        .boxed()
}

async fn push_one(
    ctx: &Context,
    file: &WalFile,
    encrypt_to: Option<&Arc<EncryptionKeys>>,
) -> Result<Outcome, CommandError> {
    let key = ctx.layout.wal_key(&file.name);
    let url = ctx.layout.url(&key);
    let md = match tokio::fs::metadata(&file.path).await {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !file.explicit => {
            log_state(
                ctx,
                &url,
                &file.name,
                "skip",
                None,
                "skipping a vanished WAL file",
            );
            return Ok(Outcome::Vanished);
        }
        Err(e) => {
            return Err(UserError::new("could not read WAL file")
                .detail(format!("{}: {e}", file.path.display()))
                .into());
        }
    };
    log_state(
        ctx,
        &url,
        &file.name,
        "begin",
        None,
        "begin archiving a file",
    );
    let started = Instant::now();

    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as u32);
    let mode = std::os::unix::fs::MetadataExt::mode(&md);
    let payload = {
        let path = file.path.clone();
        let encrypt_to = encrypt_to.cloned();
        PutPayload::from_fn(move || {
            pipeline::encode(file_stream(path.clone()), mtime, mode, encrypt_to.as_ref())
        })
    };
    let digest = sha256_of_file(&file.path).await.map_err(|e| {
        UserError::new("could not read WAL file").detail(format!("{}: {e}", file.path.display()))
    })?;
    let options = PutOptions {
        content_type: Some("application/octet-stream"),
        metadata: [(WAL_SHA256_METADATA.to_string(), digest.clone())].into(),
        ..PutOptions::create_only()
    };
    let outcome = match ctx.store.put(&key, payload, &options).await {
        Ok(()) => Outcome::Uploaded,
        Err(StoreError::AlreadyExists { .. }) => {
            let Some(compared) = compare_archived(ctx, &key, &file.path, &digest).await? else {
                return Err(UserError::new(format!(
                    "WAL file {} is already archived with different content",
                    file.name
                ))
                .detail(format!(
                    "The object {url} exists and does not hold the same data as {}. It was left unchanged.",
                    file.path.display()
                ))
                .hint("Two servers may be archiving to the same prefix (a split brain, or a restored or promoted server still using its origin's prefix), or a timeline was reused. Give each server its own prefix and find out which copy is right before removing either.")
                .into());
            };
            Outcome::AlreadyArchived(compared)
        }
        Err(StoreError::Payload { source, .. }) => {
            return Err(UserError::new("could not read WAL file")
                .detail(format!("{}: {source}", file.path.display()))
                .into());
        }
        Err(e) => {
            return Err(UserError::new("could not archive WAL file")
                .detail(format!("Uploading {} to {url}: {e}", file.path.display()))
                .into());
        }
    };
    let rate = format_kib_per_second(md.len(), started.elapsed().as_secs_f64());
    let msg = match outcome {
        Outcome::AlreadyArchived(Compared::Digest) => {
            "WAL file was already archived with the same content (SHA-256 compared)"
        }
        Outcome::AlreadyArchived(Compared::Content) => {
            "WAL file was already archived with the same content (compared byte by byte)"
        }
        _ => "completed archiving to a file",
    };
    log_state(ctx, &url, &file.name, "complete", Some(&rate), msg);
    Ok(outcome)
}

fn log_state(ctx: &Context, url: &str, seg: &str, state: &str, rate: Option<&str>, msg: &str) {
    let detail = match (state, rate) {
        ("complete", Some(rate)) => format!("Archiving to \"{url}\" complete at {rate}KiB/s."),
        ("begin", _) => format!("Uploading \"{seg}\" to \"{url}\"."),
        _ => format!("\"{seg}\" is gone, presumably already archived and removed."),
    };
    match rate {
        Some(rate) => tracing::info!(
            detail = %detail, action = "push-wal", key = %url, prefix = %ctx.settings.prefix.path,
            rate = %rate, seg = %seg, state = %state, "{msg}"
        ),
        None => tracing::info!(
            detail = %detail, action = "push-wal", key = %url, prefix = %ctx.settings.prefix.path,
            seg = %seg, state = %state, "{msg}"
        ),
    }
}

/// The SHA-256 of a file's bytes, in lower-case hex.
async fn sha256_of_file(path: &Path) -> io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0; lzop::BLOCK_SIZE];
        loop {
            match file.read(&mut buf)? {
                0 => return Ok(hex(&hasher.finalize())),
                n => hasher.update(&buf[..n]),
            }
        }
    })
    .await?
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Whether the archived object holds the same WAL as the local file:
/// `Some(how)` if it does, `None` if it does not. By the digest recorded at
/// upload where there is one; otherwise by downloading and decoding the
/// archived copy, which needs the secret key if it is encrypted. Anything
/// that prevents a comparison is an error: re-archived WAL is never
/// assumed to be the same.
async fn compare_archived(
    ctx: &Context,
    key: &str,
    path: &Path,
    digest: &str,
) -> Result<Option<Compared>, CommandError> {
    let url = ctx.layout.url(key);
    let cannot_compare = |detail: String, hint: &str| -> CommandError {
        UserError::new("WAL file is already archived and could not be compared")
            .detail(format!("{url} exists and was left unchanged; {detail}"))
            .hint(hint)
            .into()
    };
    const READ_HINT: &str = "Comparing needs read access to the archive (S3: s3:GetObject; Azure: read; Swift: read on the container): see Permissions in the README.";
    // Objects archived by WAL-E or an older wal-e have no digest.
    let recorded = match ctx.store.head(key).await {
        Ok(meta) => meta.metadata.get(WAL_SHA256_METADATA).cloned(),
        Err(e) => {
            return Err(cannot_compare(
                format!("looking it up failed: {e}"),
                READ_HINT,
            ));
        }
    };
    if let Some(recorded) = recorded {
        return Ok((recorded.eq_ignore_ascii_case(digest)).then_some(Compared::Digest));
    }
    let decrypt_with = ctx.decryption_keys().await.map_err(|e| {
        cannot_compare(
            format!(
                "it has no recorded SHA-256 (archived by WAL-E or an older wal-e) and it is encrypted, but the secret key is not available here: {}",
                e.detail.as_deref().unwrap_or(&e.msg)
            ),
            "Make the secret key available to wal-push on this host (WALE_GPG_SECRET_KEY_FILE) until this file is archived; or, where the secret key is, wal-fetch the archived copy, compare it with this file, and if they are identical delete the archived object so that wal-push archives it again with its SHA-256.",
        )
    })?;
    let stored = ctx
        .store
        .get(key)
        .await
        .map_err(|e| cannot_compare(format!("reading it back failed: {e}"), READ_HINT))?;
    let read_failed =
        |e: io::Error| cannot_compare(format!("reading it back failed: {e}"), READ_HINT);
    let mut archived = pipeline::decode(stored.stream, decrypt_with.as_ref());
    let mut local = tokio::fs::File::open(path).await.map_err(&read_failed)?;
    let mut buf = Vec::new();
    while let Some(chunk) = archived.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            // A corrupt or foreign object is not the same WAL.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
            Err(e) => return Err(read_failed(e)),
        };
        buf.resize(chunk.len(), 0);
        match local.read_exact(&mut buf).await {
            Ok(_) if buf[..] == chunk[..] => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(read_failed(e)),
        }
    }
    // Equal only if the local file has nothing more.
    let mut probe = [0u8; 1];
    match local.read(&mut probe).await {
        Ok(0) => Ok(Some(Compared::Content)),
        Ok(_) => Ok(None),
        Err(e) => Err(read_failed(e)),
    }
}
