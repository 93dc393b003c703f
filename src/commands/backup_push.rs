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

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::Context;
use crate::cli::BackupPushArgs;
use crate::config::ProcessEnv;
use crate::error::{CmdResult, CommandError, UserError};
use crate::layout::{BackupName, Sentinel};
use crate::pipeline::{self, EncryptionKeys, RateLimiter};
use crate::postgres::{self, ConnectParams, Session};
use crate::progress::{self, Progress};
use crate::storage::{PutOptions, PutPayload};
use crate::tar_partition::{self, Limits, Partition, Plan, TarError};

pub async fn run(ctx: &Context, args: &BackupPushArgs) -> CmdResult {
    let cluster_dir = absolute(&args.cluster_dir)?;
    if args.while_offline {
        return run_offline(ctx, args, &cluster_dir).await;
    }
    let params = ConnectParams::from_env(&ProcessEnv)?;
    let session = Session::connect(&params).await?;
    let encrypt_to = ctx.encryption_keys().await?;
    let label = postgres::backup_label_name(chrono::Utc::now());
    let start = session.start_backup(&label, false).await?;
    let name = BackupName::new(start.segment, start.offset);
    tracing::info!(
        detail = %format!("The backup is {name}, label {label:?}, starting at {}.", start.lsn),
        "started a base backup"
    );

    // If anything below fails, dropping the session makes PostgreSQL abort
    // the non-exclusive backup: nothing stays "in backup" on the server.
    let closed = session.closed();
    let work = async {
        let version = session.version_string().await?;
        put_small(
            ctx,
            &ctx.layout.extended_version_key(&name),
            version.into_bytes(),
            "text/plain",
        )
        .await?;
        let plan = plan(&cluster_dir).await?;
        let uploader = Uploader::new(ctx, &name, args, encrypt_to.clone(), &plan);
        uploader.upload_all(plan.partitions.clone()).await?;
        let stop = session.stop_backup().await?;
        let last = final_partition(
            &cluster_dir,
            plan.partitions.len() as u32,
            &stop.backup_label,
            stop.tablespace_map.as_deref(),
        )
        .await?;
        let last_bytes = last.data_bytes();
        uploader.upload_all(vec![last]).await?;
        uploader.progress.finish();
        let sentinel = Sentinel {
            wal_segment_backup_stop: stop.segment.to_string(),
            wal_segment_offset_backup_stop: BackupName::new(stop.segment, stop.offset).start_offset,
            expanded_size_bytes: plan.expanded_size_bytes + last_bytes,
            spec: plan.spec.clone(),
        };
        put_small(
            ctx,
            &ctx.layout.sentinel_key(&name),
            sentinel.to_wal_e_json(),
            "application/json",
        )
        .await?;
        Ok::<_, CommandError>(())
    };
    tokio::select! {
        result = work => result?,
        reason = closed => {
            return Err(UserError::new("the PostgreSQL session of the backup ended")
                .detail(reason)
                .hint("The backup was abandoned: no sentinel was written, so it is not listed or restorable. Run backup-push again.")
                .into());
        }
    }
    tracing::info!(detail = %format!("Backup {name} is complete."), "completed a base backup");
    Ok(())
}

/// A backup of a cluster that is shut down, named after its last checkpoint.
async fn run_offline(ctx: &Context, args: &BackupPushArgs, cluster_dir: &Path) -> CmdResult {
    if cluster_dir.join("postmaster.pid").exists() {
        return Err(
            UserError::new("attempting to back up a running cluster with --while-offline")
                .detail(format!(
                    "{} exists.",
                    cluster_dir.join("postmaster.pid").display()
                ))
                .hint("Stop PostgreSQL first, or run backup-push without --while-offline.")
                .into(),
        );
    }
    let control = postgres::read_control_file(cluster_dir)?;
    let (segment, offset) = postgres::segment_of(
        control.checkpoint_redo,
        control.timeline,
        control.wal_segment_size,
    );
    let name = BackupName::new(segment, offset);
    let encrypt_to = ctx.encryption_keys().await?;
    let pg_version = std::fs::read_to_string(cluster_dir.join("PG_VERSION")).unwrap_or_default();
    let version = format!("PostgreSQL {}", pg_version.trim());
    put_small(
        ctx,
        &ctx.layout.extended_version_key(&name),
        version.into_bytes(),
        "text/plain",
    )
    .await?;
    let plan = plan(cluster_dir).await?;
    let uploader = Uploader::new(ctx, &name, args, encrypt_to, &plan);
    uploader.upload_all(plan.partitions.clone()).await?;
    // The WAL from the checkpoint's REDO point to the checkpoint record.
    let size = control.wal_segment_size;
    let mut wal_segments = Vec::new();
    let mut lsn = control.checkpoint_redo.0 - control.checkpoint_redo.0 % size;
    while lsn <= control.checkpoint.0 {
        wal_segments.push(
            postgres::segment_of(postgres::Lsn(lsn), control.timeline, size)
                .0
                .to_string(),
        );
        lsn += size;
    }
    let (dir, number) = (cluster_dir.to_path_buf(), plan.partitions.len() as u32);
    let last = tokio::task::spawn_blocking(move || {
        tar_partition::offline_final_partition(&dir, number, &wal_segments)
    })
    .await
    .map_err(CommandError::unexpected)?
    .map_err(|e| {
        final_partition_error("could not read the stopped cluster's WAL or pg_control", e)
    })?;
    let last_bytes = last.data_bytes();
    uploader.upload_all(vec![last]).await?;
    uploader.progress.finish();
    let sentinel = Sentinel {
        wal_segment_backup_stop: segment.to_string(),
        wal_segment_offset_backup_stop: name.start_offset.clone(),
        expanded_size_bytes: plan.expanded_size_bytes + last_bytes,
        spec: plan.spec.clone(),
    };
    put_small(
        ctx,
        &ctx.layout.sentinel_key(&name),
        sentinel.to_wal_e_json(),
        "application/json",
    )
    .await?;
    tracing::info!(detail = %format!("Backup {name} of the stopped cluster is complete."), "completed a base backup");
    Ok(())
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

async fn plan(cluster_dir: &Path) -> Result<Plan, CommandError> {
    let dir = cluster_dir.to_path_buf();
    let limits = limits();
    tokio::task::spawn_blocking(move || tar_partition::plan(&dir, &limits))
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
    content_type: &'static str,
) -> CmdResult {
    let options = PutOptions {
        content_type: Some(content_type),
        ..Default::default()
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
        plan: &Plan,
    ) -> Self {
        let progress: Arc<dyn Progress> =
            progress::for_terminal("backup-push", ctx.global.terse).into();
        progress.set_total(plan.expanded_size_bytes);
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
        self.ctx
            .store
            .put(&key, payload, &PutOptions::default())
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
