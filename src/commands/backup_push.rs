//! `backup-push PG_CLUSTER_DIRECTORY`: a base backup in WAL-E's format.
//!
//! Online, it runs a non-exclusive backup in one PostgreSQL session kept open
//! throughout (`pg_backup_start`/`pg_backup_stop` on 15+, the three-argument
//! `pg_start_backup`/`pg_stop_backup` before), so it works on every supported
//! version. Objects are written in WAL-E's order: `extended_version.txt`, the
//! tar partitions (in parallel, streamed through lzop and OpenPGP without
//! temporary files), a last partition with `backup_label`, `tablespace_map`
//! and `global/pg_control`, and only when all of that and the archiving of the
//! stop segment succeeded, the sentinel that makes the backup visible.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::Context;
use crate::cli::BackupPushArgs;
use crate::config::ProcessEnv;
use crate::error::{CmdResult, CommandError, UserError};
use crate::layout::{BackupName, RestoreSpec, SegmentName, Sentinel, VERSION};
use crate::pipeline::{self, EncryptionKeys, RateLimiter};
use crate::postgres::{self, ConnectParams, Session};
use crate::progress::{self, Progress};
use crate::storage::{ObjectMeta, PutOptions, PutPayload, StoreError};
use crate::tar_partition::{self, Limits, Partition, Plan, TarError};

pub async fn run(ctx: &Context, args: &BackupPushArgs) -> CmdResult {
    let cluster_dir = absolute(&args.cluster_dir)?;
    if args.while_offline {
        return run_offline(ctx, args, &cluster_dir).await;
    }
    let params = ConnectParams::from_env(&ProcessEnv)?;
    let session = Session::connect(&params).await?;
    if session.setting("archive_mode").await? == "off" {
        return Err(UserError::new("archive_mode is off")
            .detail("A base backup is only restorable with the WAL written during it, and this server does not archive any.")
            .hint("Set archive_mode = on and archive_command = 'wal-e wal-push %p' (to this same prefix), then restart PostgreSQL.")
            .into());
    }
    let segment_size = session.wal_segment_size().await?;
    let log_directory =
        tar_partition::log_directory_member(&cluster_dir, &session.setting("log_directory").await?);
    let encrypt_to = ctx.encryption_keys().await?;
    let label = postgres::backup_label_name(chrono::Utc::now());
    let start = session.start_backup(&label, false).await?;
    let name = BackupName::new(start.segment, start.offset);
    if already_complete(ctx, &name, segment_size, false).await? {
        return Ok(());
    }
    tracing::info!(
        detail = %format!("The backup is {name}, label {label:?}, starting at {}.", start.lsn),
        "started a base backup"
    );

    // Until pg_backup_stop returns, the backup depends on this session: if it
    // dies, fail at once. If anything fails, dropping the session makes
    // PostgreSQL abort the backup, so nothing stays "in backup" on the server.
    let closed = session.closed();
    let until_stop = async {
        let version = session.version_string().await?;
        let (uploader, spec, expanded_size_bytes, count) = upload_data(
            ctx,
            &name,
            args,
            &cluster_dir,
            log_directory,
            version,
            encrypt_to.clone(),
        )
        .await?;
        let stop = session.stop_backup().await?;
        Ok::<_, CommandError>((uploader, spec, expanded_size_bytes, count, stop))
    };
    let (uploader, spec, expanded_size_bytes, count, stop) = tokio::select! {
        result = until_stop => result?,
        reason = closed => {
            return Err(UserError::new("the PostgreSQL session of the backup ended")
                .detail(reason)
                .hint("The backup was abandoned: no sentinel was written, so it is not listed or restorable. Run backup-push again.")
                .into());
        }
    };
    drop(session);
    let last = final_partition(
        &cluster_dir,
        count,
        &stop.backup_label,
        stop.tablespace_map.as_deref(),
    )
    .await?;
    let last_bytes = last.data_bytes();
    uploader.upload_all(vec![last]).await?;
    uploader.progress.finish();
    // The last WAL byte of the backup is just before the stop LSN.
    let (last_segment, _) = postgres::segment_of(
        postgres::Lsn(stop.lsn.0.saturating_sub(1)),
        stop.segment.timeline,
        segment_size,
    );
    wait_until_archived(ctx, &last_segment.to_string()).await?;
    check_all_stored(ctx, &name, count + 1).await?;
    check_wal_archived(ctx, start.segment, last_segment, segment_size).await?;
    let sentinel = Sentinel {
        wal_segment_backup_stop: stop.segment.to_string(),
        wal_segment_offset_backup_stop: BackupName::new(stop.segment, stop.offset).start_offset,
        expanded_size_bytes: expanded_size_bytes + last_bytes,
        spec,
        partition_count: Some(count + 1),
    };
    put_sentinel(ctx, &name, &sentinel).await?;
    tracing::info!(detail = %format!("Backup {name} is complete."), "completed a base backup");
    Ok(())
}

/// A backup of a cluster that is shut down, named after its last checkpoint.
async fn run_offline(ctx: &Context, args: &BackupPushArgs, cluster_dir: &Path) -> CmdResult {
    let pid_file = cluster_dir.join("postmaster.pid");
    let running = || {
        UserError::new("attempting to back up a running cluster with --while-offline")
            .detail(format!("{} exists.", pid_file.display()))
            .hint("Stop PostgreSQL first, or run backup-push without --while-offline.")
    };
    if pid_file.exists() {
        return Err(running().into());
    }
    let control = postgres::read_control_file(cluster_dir)?;
    if !control.state.is_shut_down() {
        return Err(UserError::new("the cluster was not shut down cleanly")
            .detail(format!("pg_control says the cluster is {}.", control.state))
            .hint(
                "Start PostgreSQL and stop it cleanly (pg_ctl stop -m fast), or back it up online.",
            )
            .into());
    }
    let (segment, offset) = postgres::segment_of(
        control.checkpoint_redo,
        control.timeline,
        control.wal_segment_size,
    );
    let name = BackupName::new(segment, offset);
    if already_complete(ctx, &name, control.wal_segment_size, true).await? {
        return Ok(());
    }
    let encrypt_to = ctx.encryption_keys().await?;
    let pg_version = std::fs::read_to_string(cluster_dir.join("PG_VERSION")).unwrap_or_default();
    let version = format!("PostgreSQL {}", pg_version.trim());
    // No server to ask for log_directory: `log` and `pg_log` are left out.
    let (uploader, spec, expanded_size_bytes, count) =
        upload_data(ctx, &name, args, cluster_dir, None, version, encrypt_to).await?;
    let (dir, wal) = (
        cluster_dir.to_path_buf(),
        checkpoint_wal(cluster_dir, &control),
    );
    let last = tokio::task::spawn_blocking(move || {
        tar_partition::offline_final_partition(&dir, count, &wal)
    })
    .await
    .map_err(CommandError::unexpected)?
    .map_err(|e| {
        final_partition_error("could not read the stopped cluster's WAL or pg_control", e)
    })?;
    let last_bytes = last.data_bytes();
    uploader.upload_all(vec![last]).await?;
    uploader.progress.finish();
    // Nobody may have started the cluster meanwhile: that would make the
    // copy inconsistent with the WAL it carries.
    let after = postgres::read_control_file(cluster_dir)?;
    if pid_file.exists() || after.checkpoint != control.checkpoint {
        return Err(running()
            .detail(
                "The cluster was started while it was being backed up; no sentinel was written.",
            )
            .into());
    }
    check_all_stored(ctx, &name, count + 1).await?;
    let sentinel = Sentinel {
        wal_segment_backup_stop: segment.to_string(),
        wal_segment_offset_backup_stop: name.start_offset.clone(),
        expanded_size_bytes: expanded_size_bytes + last_bytes,
        spec,
        partition_count: Some(count + 1),
    };
    put_sentinel(ctx, &name, &sentinel).await?;
    tracing::info!(detail = %format!("Backup {name} of the stopped cluster is complete."), "completed a base backup");
    Ok(())
}

/// What online and offline backups share: `extended_version.txt`, then every
/// planned partition (without the contents of `log_directory`, a member
/// name). Returns the uploader (for the final partition), the
/// restore spec, the planned bytes and the number of partitions.
async fn upload_data<'a>(
    ctx: &'a Context,
    name: &'a BackupName,
    args: &BackupPushArgs,
    cluster_dir: &Path,
    log_directory: Option<String>,
    version: String,
    encrypt_to: Option<Arc<EncryptionKeys>>,
) -> Result<(Uploader<'a>, RestoreSpec, u64, u32), CommandError> {
    put_small(
        ctx,
        &ctx.layout.extended_version_key(name),
        version.into_bytes(),
        PutOptions::default(),
        "text/plain",
    )
    .await?;
    let Plan {
        partitions,
        spec,
        expanded_size_bytes,
    } = plan(cluster_dir, log_directory).await?;
    let uploader = Uploader::new(ctx, name, args, encrypt_to, expanded_size_bytes);
    let count = partitions.len() as u32;
    uploader.upload_all(partitions).await?;
    Ok((uploader, spec, expanded_size_bytes, count))
}

/// The WAL segments from the last checkpoint's REDO point through its
/// record, which a cleanly stopped cluster has not archived. The record may
/// cross into the next segment; that one is included when it exists.
fn checkpoint_wal(cluster_dir: &Path, control: &postgres::ControlData) -> Vec<String> {
    let size = control.wal_segment_size;
    let name_of = |lsn: u64| {
        postgres::segment_of(postgres::Lsn(lsn), control.timeline, size)
            .0
            .to_string()
    };
    let mut segments = Vec::new();
    let mut lsn = control.checkpoint_redo.0 - control.checkpoint_redo.0 % size;
    while lsn <= control.checkpoint.0 {
        segments.push(name_of(lsn));
        lsn += size;
    }
    // A checkpoint record is a few hundred bytes at most.
    let spill = name_of(control.checkpoint.0 + 1024);
    let wal_dir = ["pg_wal", "pg_xlog"]
        .into_iter()
        .find(|d| cluster_dir.join(d).is_dir())
        .unwrap_or("pg_wal");
    if !segments.contains(&spill) && cluster_dir.join(wal_dir).join(&spill).is_file() {
        segments.push(spill);
    }
    segments
}

/// Whether a complete backup of the same name exists and is this very
/// backup (a stopped cluster backed up again starts at the same checkpoint):
/// then it is never overwritten and there is nothing to do. A sentinel of
/// the name for a backup that started elsewhere is refused (see
/// [`is_same_start`]).
async fn already_complete(
    ctx: &Context,
    name: &BackupName,
    segment_size: u64,
    offline: bool,
) -> Result<bool, CommandError> {
    let key = ctx.layout.sentinel_key(name);
    let check_failed = |e: String| {
        UserError::new("could not check the store").detail(format!("{}: {e}", ctx.layout.url(&key)))
    };
    match ctx.store.head(&key).await {
        Ok(_) => {}
        Err(StoreError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(check_failed(e.to_string()).into()),
    }
    // Only a truncated name needs what the sentinel recorded.
    let existing = if BackupName::may_truncate(segment_size) {
        read_object(ctx, &key)
            .await
            .map_err(check_failed)?
            .and_then(|bytes| Sentinel::from_json(&bytes).ok())
    } else {
        None
    };
    if is_same_start(name, segment_size, offline, existing.as_ref()) {
        tracing::info!(
            detail = %format!("Backup {name} is complete already: the server wrote nothing since it started."),
            "nothing to back up"
        );
        return Ok(true);
    }
    Err(UserError::new(format!("a different backup already has the name {name}"))
        .detail(format!(
            "With WAL segments of {} MiB, backup names keep only the first 8 digits of the start offset (as WAL-E's do), and {} is the sentinel of a backup that started elsewhere in segment {}. Nothing was uploaded.",
            segment_size >> 20,
            ctx.layout.url(&key),
            name.start_segment
        ))
        .hint("Switch to a new WAL segment (SELECT pg_switch_wal();) and run backup-push again: the backup then starts in a segment of its own.")
        .into())
}

/// Whether the complete backup `existing` (its sentinel, `None` if it could
/// not be read), named like the backup starting now, started where this one
/// does.
///
/// Where names keep the whole offset, the name says so. Where they can be
/// truncated ([`BackupName::may_truncate`]), an online backup never is the
/// same: a complete backup stopped before this one started (it wrote its
/// end record and switched segments, and pg_backup_start checkpoints anew),
/// so this start is later. A stopped cluster's backup is, when the existing
/// one is also a stopped cluster's backup (its sentinel stops where its
/// name starts) of the same checkpoint: two checkpoint records cannot both
/// fall within the digits the name drops.
fn is_same_start(
    name: &BackupName,
    segment_size: u64,
    offline: bool,
    existing: Option<&Sentinel>,
) -> bool {
    if !BackupName::may_truncate(segment_size) {
        return true;
    }
    offline
        && existing.is_some_and(|s| {
            s.wal_segment_backup_stop == name.start_segment.to_string()
                && s.wal_segment_offset_backup_stop == name.start_offset
        })
}

/// The whole content of `key`, or `None` if it does not exist.
async fn read_object(ctx: &Context, key: &str) -> Result<Option<bytes::Bytes>, String> {
    match ctx.store.get(key).await {
        Ok(got) => got
            .bytes(crate::layout::JSON_LIMIT)
            .await
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits (bounded) until the segment is in this prefix's archive: a sentinel
/// for a backup whose WAL never arrived would advertise a backup that cannot
/// be restored.
async fn wait_until_archived(ctx: &Context, segment: &str) -> CmdResult {
    let key = ctx.layout.wal_key(segment);
    let deadline = tokio::time::Instant::now() + ARCHIVE_WAIT;
    loop {
        match ctx.store.head(&key).await {
            Ok(_) => return Ok(()),
            Err(StoreError::NotFound { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(StoreError::NotFound { .. }) => {
                return Err(UserError::new("the WAL this backup needs is not in the archive")
                    .detail(format!("{} did not appear within {} s.", ctx.layout.url(&key), ARCHIVE_WAIT.as_secs()))
                    .hint("archive_command must run wal-e wal-push to this same prefix; no sentinel was written.")
                    .into());
            }
            Err(e) => {
                return Err(UserError::new("could not check the archive")
                    .detail(e.to_string())
                    .into());
            }
        }
    }
}

/// Before the sentinel makes the backup visible: every partition uploaded
/// (`count`, the last one included) must still be in the store. A `delete`
/// running meanwhile (another schedule, a manual `delete before`) may have
/// removed them.
async fn check_all_stored(ctx: &Context, name: &BackupName, count: u32) -> CmdResult {
    let dir = ctx.layout.partitions_dir(name);
    let listed: Vec<ObjectMeta> = ctx
        .store
        .list(&dir, None)
        .try_collect()
        .await
        .map_err(|e| {
            UserError::new("could not check the backup's partitions").detail(e.to_string())
        })?;
    let missing: Vec<String> = (0..count)
        .map(|n| ctx.layout.partition_key(name, n))
        .filter(|key| !listed.iter().any(|m| m.key == *key))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(UserError::new(format!("backup {name} lost partitions while it was being taken"))
        .detail(format!(
            "{} of its {count} partitions are not in the store, first {}. No sentinel was written.",
            missing.len(),
            ctx.layout.url(&missing[0])
        ))
        .hint("A delete ran during the backup (delete leaves unfinished backups alone for --unfinished-grace-hours). Run backup-push again.")
        .into())
}

/// Before the sentinel: every WAL segment from the backup's start through
/// its last one must be in the archive, or the backup cannot be recovered
/// to consistency. Lists from the start segment on only.
async fn check_wal_archived(
    ctx: &Context,
    first: SegmentName,
    last: SegmentName,
    segment_size: u64,
) -> CmdResult {
    let per_log = 0x1_0000_0000 / segment_size;
    let wanted: Vec<String> = (first.position_in(per_log)..=last.position_in(per_log))
        .map(|n| SegmentName::at(last.timeline, n, per_log).to_string())
        .collect();
    let first_key = ctx.layout.wal_key(&wanted[0]);
    let last_key = ctx.layout.wal_key(&wanted[wanted.len() - 1]);
    // Keys sort after the bare segment name: listing starts at the first.
    let start_after = first_key.trim_end_matches(".lzo").to_string();
    let archived: Vec<ObjectMeta> = ctx
        .store
        .list(
            &ctx.layout.key(&format!("wal_{VERSION}/")),
            Some(start_after),
        )
        .try_take_while(|m| futures_util::future::ready(Ok(m.key <= last_key)))
        .try_collect()
        .await
        .map_err(|e| UserError::new("could not check the archive").detail(e.to_string()))?;
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|seg| !archived.iter().any(|m| m.key == ctx.layout.wal_key(seg)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(UserError::new("the WAL this backup needs is not in the archive")
        .detail(format!(
            "{} of the {} segments from {} to {} are missing, first {}. No sentinel was written.",
            missing.len(),
            wanted.len(),
            first,
            last,
            missing[0]
        ))
        .hint("archive_command must archive every segment with wal-e wal-push to this same prefix, and no delete may remove the WAL of a backup being taken. Run backup-push again once archiving works.")
        .into())
}

/// How long to wait for the backup's last segment after pg_backup_stop.
const ARCHIVE_WAIT: Duration = Duration::from_secs(60);

/// Puts the sentinel create-only. A sentinel already there with the same
/// bytes is this upload's own: a retry after an answer lost on the way back
/// finds the first attempt's object.
async fn put_sentinel(ctx: &Context, name: &BackupName, sentinel: &Sentinel) -> CmdResult {
    let key = ctx.layout.sentinel_key(name);
    let body = sentinel.to_wal_e_json();
    let options = PutOptions {
        content_type: Some("application/json"),
        ..PutOptions::create_only()
    };
    let url = ctx.layout.url(&key);
    match ctx
        .store
        .put(&key, PutPayload::from_bytes(body.clone()), &options)
        .await
    {
        Ok(()) => Ok(()),
        Err(StoreError::AlreadyExists { .. }) => match read_object(ctx, &key).await {
            Ok(Some(existing)) if existing == body => {
                tracing::info!(
                    detail = %format!("{url} already holds this backup's sentinel: an earlier attempt of the upload stored it."),
                    "the sentinel was uploaded already"
                );
                Ok(())
            }
            Ok(Some(_)) => Err(UserError::new(format!("another backup completed as {name} meanwhile"))
                .detail(format!("{url} was written by another backup-push while this one ran; it was left unchanged and this backup has no sentinel."))
                .hint("Two backup-push runs of one cluster to one prefix started at the same place, or two clusters share the prefix. Give each cluster its own prefix.")
                .into()),
            read => Err(UserError::new("could not upload to the store")
                .detail(format!(
                    "{url} exists already, and reading it back failed: {}",
                    read.err().unwrap_or_else(|| "it no longer exists".into())
                ))
                .into()),
        },
        Err(e) => Err(UserError::new("could not upload to the store")
            .detail(format!("{url}: {e}"))
            .into()),
    }
}

fn absolute(dir: &Path) -> Result<PathBuf, UserError> {
    std::path::absolute(dir).map_err(|e| {
        UserError::new("invalid cluster directory").detail(format!("{}: {e}", dir.display()))
    })
}

/// Partition sizes can be lowered for tests (WAL_E_TEST_PARTITION_MAX_*),
/// to get many partitions from a small cluster.
fn limits() -> Limits {
    let mut limits = Limits::default();
    if let Some(v) = std::env::var("WALE_TEST_PARTITION_MAX_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        limits.max_bytes = v;
    }
    if let Some(v) = std::env::var("WALE_TEST_PARTITION_MAX_MEMBERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        limits.max_members = v;
    }
    limits
}

async fn plan(cluster_dir: &Path, log_directory: Option<String>) -> Result<Plan, CommandError> {
    let dir = cluster_dir.to_path_buf();
    let limits = limits();
    tokio::task::spawn_blocking(move || {
        tar_partition::plan_without_logs(&dir, &limits, log_directory)
    })
    .await
    .map_err(CommandError::unexpected)?
    .map_err(|e| {
        UserError::new("could not plan the base backup")
            .detail(e.to_string())
            .into()
    })
}

/// On a blocking thread: reading pg_control may pause between retries.
async fn final_partition(
    cluster_dir: &Path,
    number: u32,
    label: &str,
    map: Option<&str>,
) -> Result<Partition, CommandError> {
    let (dir, label, map) = (
        cluster_dir.to_path_buf(),
        label.to_string(),
        map.map(str::to_string),
    );
    tokio::task::spawn_blocking(move || {
        tar_partition::final_partition(&dir, number, &label, map.as_deref())
    })
    .await
    .map_err(CommandError::unexpected)?
    .map_err(|e| final_partition_error("could not read global/pg_control", e).into())
}

/// A pg_control that never passed its checks keeps the control file's own
/// hint (the file is damaged or was being written; do not back it up).
fn final_partition_error(msg: &str, e: TarError) -> UserError {
    let hint = match &e {
        TarError::ControlFile { source, .. } => source.hint.clone(),
        _ => None,
    };
    let err = UserError::new(msg).detail(e.to_string());
    match hint {
        Some(hint) => err.hint(hint),
        None => err,
    }
}

async fn put_small(
    ctx: &Context,
    key: &str,
    body: Vec<u8>,
    options: PutOptions,
    content_type: &'static str,
) -> CmdResult {
    let options = PutOptions {
        content_type: Some(content_type),
        ..options
    };
    ctx.store
        .put(key, PutPayload::from_bytes(body), &options)
        .await
        .map_err(|e| {
            UserError::new("could not upload to the store")
                .detail(format!("{}: {e}", ctx.layout.url(key)))
                .into()
        })
}

/// Compresses, encrypts and uploads partitions, `--pool-size` at a time.
struct Uploader<'a> {
    ctx: &'a Context,
    name: &'a BackupName,
    pool_size: usize,
    encrypt_to: Option<Arc<EncryptionKeys>>,
    rate: Option<Arc<RateLimiter>>,
    progress: Arc<dyn Progress>,
}

impl<'a> Uploader<'a> {
    fn new(
        ctx: &'a Context,
        name: &'a BackupName,
        args: &BackupPushArgs,
        encrypt_to: Option<Arc<EncryptionKeys>>,
        planned_bytes: u64,
    ) -> Self {
        let progress: Arc<dyn Progress> =
            progress::for_terminal("backup-push", ctx.global.terse).into();
        progress.set_total(planned_bytes);
        Uploader {
            ctx,
            name,
            pool_size: args.pool_size as usize,
            encrypt_to,
            rate: args.cluster_read_rate_limit.map(RateLimiter::new),
            progress,
        }
    }

    async fn upload_all(&self, partitions: Vec<Partition>) -> CmdResult {
        stream::iter(partitions.into_iter().map(Ok))
            .try_for_each_concurrent(self.pool_size, |p| self.upload(p))
            .await
    }

    async fn upload(&self, partition: Partition) -> CmdResult {
        let key = self.ctx.layout.partition_key(self.name, partition.number);
        let url = self.ctx.layout.url(&key);
        tracing::info!(detail = %format!("Uploading to \"{url}\"."), "begin uploading a base backup volume");
        let started = std::time::Instant::now();
        let sent = Arc::new(AtomicU64::new(0));
        let payload = {
            let (encrypt_to, rate, progress, sent) = (
                self.encrypt_to.clone(),
                self.rate.clone(),
                self.progress.clone(),
                sent.clone(),
            );
            PutPayload::from_fn(move || {
                // A retried upload starts over: count only the last attempt.
                sent.store(0, Ordering::Relaxed);
                let (progress, sent) = (progress.clone(), sent.clone());
                let tar = tar_partition::write_partition(partition.clone(), rate.clone())
                    .inspect_ok(move |chunk| {
                        progress.advance(chunk.len() as u64);
                        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    });
                pipeline::encode(tar.boxed(), 0, 0, encrypt_to.as_ref())
            })
        };
        let options = PutOptions {
            content_type: Some("application/octet-stream"),
            ..Default::default()
        };
        self.ctx
            .store
            .put(&key, payload, &options)
            .await
            .map_err(|e| {
                UserError::new("could not upload a base backup volume")
                    .detail(format!("{url}: {e}"))
            })?;
        let rate = super::format_kib_per_second(
            sent.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64(),
        );
        tracing::info!(
            detail = %format!("Uploading to \"{url}\" complete at {rate}KiB/s."),
            "finish uploading a base backup volume"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(stop: &str, offset: &str) -> Sentinel {
        Sentinel {
            wal_segment_backup_stop: stop.to_string(),
            wal_segment_offset_backup_stop: offset.to_string(),
            expanded_size_bytes: 1,
            spec: RestoreSpec::default(),
            partition_count: None,
        }
    }

    #[test]
    fn a_sentinel_of_the_same_name_is_the_same_backup_only_when_provably() {
        const MIB: u64 = 1 << 20;
        let seg = SegmentName::parse("000000010000000000000003").unwrap();
        // 16 and 64 MiB: names keep the whole offset.
        let exact = BackupName::new(seg, 40);
        let online = sentinel("000000010000000000000004", "00000128");
        assert!(is_same_start(&exact, 16 * MIB, false, Some(&online)));
        assert!(is_same_start(&exact, 64 * MIB, true, None));

        // 128 MiB: offsets 123456780 to 123456789 (and 12345678) share it.
        let cut = BackupName::new(seg, 123_456_785);
        assert_eq!(cut.start_offset, "12345678");
        // An online backup: the existing one stopped before it started.
        assert!(!is_same_start(&cut, 128 * MIB, false, Some(&online)));
        let offline_same = sentinel("000000010000000000000003", "12345678");
        assert!(!is_same_start(&cut, 128 * MIB, false, Some(&offline_same)));
        // A stopped cluster again: same only against a stopped cluster's
        // backup of that checkpoint.
        assert!(is_same_start(&cut, 128 * MIB, true, Some(&offline_same)));
        assert!(!is_same_start(&cut, 1024 * MIB, true, Some(&online)));
        assert!(!is_same_start(&cut, 128 * MIB, true, None));
    }
}
