//! `backup-fetch PG_CLUSTER_DIRECTORY NAME|LATEST`: restores a base backup.
//!
//! Partitions are downloaded, decrypted, decompressed and extracted in
//! parallel (`--pool-size`); a download that breaks off resumes where it
//! stopped (the store's retries), and any other failure is final. Extraction
//! refuses entries that would land outside the target. Unlike WAL-E, the
//! restore always lands in PG_CLUSTER_DIRECTORY (WAL-E issue 291), and the
//! restored `tablespace_map` is made to agree with where tablespaces were put.

use std::path::Path;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::Context;
use crate::catalog;
use crate::cli::BackupFetchArgs;
use crate::durable::sync_dir;
use crate::error::{CmdResult, CommandError, UserError};
use crate::layout::{
    BackupName, JSON_LIMIT, RestoreSpec, Sentinel, TablespaceLocation, VOLUME_RE, is_tablespace_oid,
};
use crate::pipeline::{self, DecryptionKeys};
use crate::progress::{self, Progress};
use crate::tar_extract::{self, ExtractOptions};

pub async fn run(ctx: &Context, args: &BackupFetchArgs) -> CmdResult {
    let target = std::path::absolute(&args.cluster_dir)
        .map_err(|e| UserError::new("invalid cluster directory").detail(e.to_string()))?;
    if target.join("postmaster.pid").exists() {
        return Err(UserError::new("attempting to overwrite a live data directory")
            .detail(format!("{} exists.", target.join("postmaster.pid").display()))
            .hint("Stop PostgreSQL and remove the data directory's contents (or choose another directory) before restoring.")
            .into());
    }
    let backup = catalog::find_backup(ctx, &args.backup_name)
        .await?
        .ok_or_else(|| {
            UserError::new("no backups found for fetching")
                .detail(format!(
                    "No complete backup matches {:?} in {}.",
                    args.backup_name, ctx.settings.prefix.url
                ))
                .hint("backup-list shows the backups; only those with a sentinel are complete.")
        })?
        .name;
    check_empty(&target)?;
    let sentinel = read_sentinel(ctx, &backup).await?;
    let spec = restore_spec(&sentinel, args.restore_spec.as_deref(), &target)?;
    prepare_target(&target, &spec, args)?;
    let decrypt_with = ctx.decryption_keys().await?;

    let mut partitions = list_partitions(ctx, &backup).await?;
    if let Some(gap) = partitions
        .iter()
        .enumerate()
        .find(|(i, (n, _))| *n as usize != *i)
        .map(|(i, _)| i)
    {
        return Err(
            UserError::new(format!("backup {backup} is missing partition {gap}"))
                .detail(format!(
                    "Partitions are numbered from 0; {} were found.",
                    partitions.len()
                ))
                .hint("The backup is damaged; restore another one.")
                .into(),
        );
    }
    if let Some(recorded) = sentinel.partition_count
        && recorded as usize != partitions.len()
    {
        return Err(UserError::new(format!(
            "backup {backup} does not have the partitions its sentinel records"
        ))
        .detail(format!(
            "The sentinel records {recorded} partitions; {} are in the store.",
            partitions.len()
        ))
        .hint("The backup is damaged; restore another one.")
        .into());
    }
    // The last partition holds backup_label and global/pg_control, which
    // make a data directory look startable: it is extracted only after all
    // the others succeeded, so a failed or killed restore never looks whole.
    let Some(last) = partitions.pop() else {
        return Err(UserError::new(format!("backup {backup} has no partitions")).into());
    };
    let options = ExtractOptions {
        tablespace_links: if args.blind_restore {
            Vec::new()
        } else {
            spec.tablespaces
                .iter()
                .map(|oid| format!("pg_tblspc/{oid}"))
                .collect()
        },
        restore_owner: is_root(),
    };
    let progress: Arc<dyn Progress> =
        progress::for_terminal("backup-fetch", ctx.global.terse).into();
    progress.set_total(sentinel.expanded_size_bytes);
    let fetch = |(number, key): (u32, String)| {
        let (options, decrypt_with, progress, target) = (
            options.clone(),
            decrypt_with.clone(),
            progress.clone(),
            target.clone(),
        );
        async move { fetch_partition(ctx, number, &key, &target, options, decrypt_with, progress).await }
    };
    stream::iter(partitions.into_iter().map(Ok))
        .try_for_each_concurrent(args.pool_size as usize, fetch)
        .await?;
    // Ours put global/pg_control, and backup_label for an online backup (one
    // that stopped after it started; an offline one has none), in the last
    // partition. WAL-E put them wherever its walk met them.
    let online = sentinel.wal_segment_backup_stop != backup.start_segment.to_string()
        || sentinel.wal_segment_offset_backup_stop != backup.start_offset;
    let from_last: &[&str] = match (sentinel.partition_count, online) {
        (None, _) => &[],
        (Some(_), true) => &["backup_label", "global/pg_control"],
        (Some(_), false) => &["global/pg_control"],
    };
    let misplaced = |when: &str, file: &str| {
        UserError::new(format!("backup {backup} has {file} {when}"))
            .detail(format!(
                "{} partitions; the last one, {}, must deliver {file}.",
                last.0 + 1,
                ctx.layout.url(&last.1)
            ))
            .hint("The backup is damaged or was not written by backup-push; restore another one. The data directory is not startable.")
    };
    if let Some(file) = from_last.iter().find(|f| target.join(f).exists()) {
        return Err(misplaced("in a partition before the last", file).into());
    }
    fetch(last.clone()).await?;
    for file in from_last.iter().chain(["global/pg_control"].iter()) {
        if !target.join(file).is_file() {
            return Err(misplaced("missing", file).into());
        }
    }
    progress.finish();
    reconcile_tablespace_map(&target)?;
    clear_prefetched_wal(&target)?;
    tracing::info!(
        detail = %format!("Backup {backup} was restored into {}.", target.display()),
        hint = "Set restore_command and create recovery.signal (recovery.conf before PostgreSQL 12) before starting the server.",
        "completed a base backup restore"
    );
    Ok(())
}

/// Refuses a data directory that holds anything but what a restore is meant
/// to find there, as pg_basebackup does: files of another cluster, or of an
/// earlier restore (a backup_label and pg_control beside part of this
/// backup's files start, then fail), would mix with the backup's. Allowed:
/// an empty or symlinked `pg_wal` (`pg_xlog`), tablespace links in
/// `pg_tblspc`, an empty `lost+found` of a mount point.
fn check_empty(target: &Path) -> Result<(), UserError> {
    let entries = match std::fs::read_dir(target) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(UserError::new("could not read the cluster directory")
                .detail(format!("{}: {e}", target.display())));
        }
    };
    let is_empty_dir = |path: &Path| {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
            && std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
    };
    let only_tablespace_links = |path: &Path| {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
            && std::fs::read_dir(path).is_ok_and(|entries| {
                entries.flatten().all(|e| {
                    let name = e.file_name();
                    let digits = name
                        .to_str()
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
                    digits && e.file_type().is_ok_and(|t| t.is_symlink())
                })
            })
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let allowed = match name.to_str() {
            Some("pg_wal" | "pg_xlog") => {
                entry.file_type().is_ok_and(|t| t.is_symlink()) || is_empty_dir(&path)
            }
            Some("pg_tblspc") => only_tablespace_links(&path),
            Some("lost+found") => is_empty_dir(&path),
            _ => false,
        };
        if !allowed {
            return Err(UserError::new("the cluster directory is not empty")
                .detail(format!("{} holds {}.", target.display(), path.display()))
                .hint("Restore into an empty directory (an empty or symlinked pg_wal and tablespace links in pg_tblspc may be there). After an interrupted restore, empty the directory and run backup-fetch again; nothing was written."));
        }
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

async fn read_sentinel(ctx: &Context, backup: &BackupName) -> Result<Sentinel, CommandError> {
    let key = ctx.layout.sentinel_key(backup);
    let got = ctx.store.get(&key).await.map_err(|e| {
        UserError::new("could not read the backup's sentinel").detail(e.to_string())
    })?;
    let bytes = got.bytes(JSON_LIMIT).await.map_err(|e| {
        UserError::new("could not read the backup's sentinel").detail(e.to_string())
    })?;
    Sentinel::from_json(&bytes).map_err(|e| {
        UserError::new("the backup's sentinel is not valid JSON")
            .detail(format!("{}: {e}", ctx.layout.url(&key)))
            .into()
    })
}

/// The sentinel's spec, overlaid with `--restore-spec FILE` (or used as is for
/// `--restore-spec SOURCE`); the base prefix is always the target directory.
fn restore_spec(
    sentinel: &Sentinel,
    restore_spec: Option<&str>,
    target: &Path,
) -> Result<RestoreSpec, UserError> {
    let mut spec = sentinel.spec.clone();
    if let Some(file) = restore_spec.filter(|f| *f != "SOURCE") {
        let text = read_at_most(Path::new(file), JSON_LIMIT).map_err(|e| {
            UserError::new("could not read the restore spec").detail(format!("{file}: {e}"))
        })?;
        let overlay: RestoreSpec = serde_json::from_slice(&text).map_err(|e| {
            UserError::new("the restore spec is not valid JSON")
                .detail(format!("{file}: {e}"))
                .hint("It looks like {\"tablespaces\": [\"16400\"], \"16400\": {\"loc\": \"/new/place/\", \"link\": \"pg_tblspc/16400\"}}.")
        })?;
        if !overlay.tablespaces.is_empty() {
            spec.tablespaces = overlay.tablespaces;
        }
        for (oid, loc) in overlay.locations {
            spec.locations.retain(|(o, _)| *o != oid);
            spec.locations.push((oid, loc));
        }
    }
    spec.base_prefix = format!("{}/", target.display());
    if restore_spec.is_none() {
        // Without a spec, tablespace links are expected to be in place
        // already (or --blind-restore): nothing is created elsewhere.
        spec.locations.clear();
    }
    // The sentinel comes from the store: whoever can write there must not
    // get links or directories made outside the target.
    spec.check().map_err(|why| {
        UserError::new("refusing a restore spec that would reach outside the target")
            .detail(format!("The backup's sentinel, with --restore-spec if given: {why}."))
            .hint("Tablespaces are listed by OID, each with {\"loc\": \"/absolute/place/\", \"link\": \"pg_tblspc/<oid>\"}; fix the --restore-spec file; a sentinel saying this was not written by backup-push, so check who can write to the store.")
    })?;
    Ok(spec)
}

/// Reads `path`, failing beyond `limit` bytes without reading them all.
fn read_at_most(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(path)?
        .take(limit as u64 + 1)
        .read_to_end(&mut text)?;
    if text.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes, which no restore spec is"),
        ));
    }
    Ok(text)
}

/// Creates the target (0700) and, for a restore spec, the tablespace
/// directories and their links; otherwise checks the links exist unless
/// `--blind-restore`.
fn prepare_target(
    target: &Path,
    spec: &RestoreSpec,
    args: &BackupFetchArgs,
) -> Result<(), UserError> {
    use std::os::unix::fs::DirBuilderExt;
    let mkdir = |dir: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                UserError::new("could not create a directory for the restore")
                    .detail(format!("{}: {e}", dir.display()))
            })
    };
    mkdir(target)?;
    if spec.tablespaces.is_empty() || args.blind_restore {
        return Ok(());
    }
    mkdir(&target.join("pg_tblspc"))?;
    for oid in &spec.tablespaces {
        let link = target.join("pg_tblspc").join(oid);
        if let Some(TablespaceLocation { loc, .. }) = spec.location(oid) {
            mkdir(Path::new(loc))?;
            let wanted = Path::new(loc.trim_end_matches('/'));
            match std::fs::read_link(&link) {
                Err(_) if std::fs::symlink_metadata(&link).is_err() => {
                    std::os::unix::fs::symlink(wanted, &link).map_err(|e| {
                        UserError::new("could not create a tablespace link")
                            .detail(format!("{}: {e}", link.display()))
                    })?;
                    sync_dir(&target.join("pg_tblspc")).map_err(|e| {
                        UserError::new("could not create a tablespace link")
                            .detail(format!("{}: {e}", link.display()))
                    })?;
                }
                // Never extract through a link that leads somewhere else than
                // the spec says: it could be a live tablespace.
                Ok(existing) if existing != wanted => {
                    return Err(UserError::new("a tablespace link points elsewhere")
                        .detail(format!(
                            "{} points to {}, but the restore spec says {}.",
                            link.display(),
                            existing.display(),
                            wanted.display()
                        ))
                        .hint("Remove the link, or make the restore spec agree with it."));
                }
                _ => {}
            }
        }
        let ok = std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink())
            && std::fs::metadata(&link).is_ok_and(|m| m.is_dir());
        if !ok {
            return Err(UserError::new("tablespace symlinks are missing")
                .detail(format!("The backup has tablespace {oid}, but {} is not a symlink to a directory.", link.display()))
                .hint("Create the symlinks to where the tablespaces should go, pass --restore-spec with their locations, or use --blind-restore to restore them under pg_tblspc."));
        }
    }
    Ok(())
}

async fn list_partitions(
    ctx: &Context,
    backup: &BackupName,
) -> Result<Vec<(u32, String)>, CommandError> {
    let dir = ctx.layout.partitions_dir(backup);
    let listed: Vec<_> = ctx
        .store
        .list(&dir, None)
        .try_collect()
        .await
        .map_err(|e| {
            UserError::new("could not list the backup's partitions").detail(e.to_string())
        })?;
    let mut partitions = Vec::new();
    for meta in listed {
        let file = meta.key.rsplit('/').next().unwrap_or_default();
        match VOLUME_RE
            .captures(file)
            .and_then(|c| c[1].parse::<u32>().ok())
        {
            Some(n) => partitions.push((n, meta.key)),
            None => {
                tracing::warn!(detail = %format!("{} is not a partition name.", meta.key), "skipping an unexpected object in a backup")
            }
        }
    }
    partitions.sort();
    Ok(partitions)
}

async fn fetch_partition(
    ctx: &Context,
    number: u32,
    key: &str,
    target: &Path,
    options: ExtractOptions,
    decrypt_with: Option<Arc<DecryptionKeys>>,
    progress: Arc<dyn Progress>,
) -> CmdResult {
    let url = ctx.layout.url(key);
    tracing::info!(detail = %format!("Downloading and extracting partition {number} from \"{url}\"."), "begin fetching a base backup volume");
    let failed = |why: String| {
        UserError::new("could not restore a base backup volume").detail(format!("{url}: {why}"))
    };
    let got = ctx
        .store
        .get(key)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let plain = pipeline::decode(got.stream, decrypt_with.as_ref())
        .inspect_ok(move |chunk| progress.advance(chunk.len() as u64))
        .boxed();
    tar_extract::extract(plain, target, options)
        .await
        .map_err(|e| failed(e.to_string()))?;
    Ok(())
}

/// Segments prefetched into the restored WAL directory (`pg_wal`, `pg_xlog`
/// before PostgreSQL 10, a link to a reused WAL volume followed) belong to
/// an earlier recovery, not to this one: they go, with what wal-prefetch
/// had in progress.
fn clear_prefetched_wal(target: &Path) -> Result<(), UserError> {
    for wal_dir in ["pg_wal", "pg_xlog"] {
        let wal_e = target.join(wal_dir).join(".wal-e");
        let prefetch = wal_e.join("prefetch");
        match std::fs::remove_dir_all(&prefetch) {
            Ok(()) => sync_dir(&wal_e),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(|e| {
            UserError::new("could not clear prefetched WAL files")
                .detail(format!("{}: {e}", prefetch.display()))
                .hint("Remove that directory before starting the server.")
        })?;
    }
    Ok(())
}

/// PostgreSQL recreates tablespace links from `tablespace_map` at startup,
/// replacing what is there (WAL-E issue 354). Point each entry at where the
/// restore actually put the tablespace; entries restored as plain
/// directories (--blind-restore) are dropped, leaving in-place tablespaces.
fn reconcile_tablespace_map(target: &Path) -> Result<(), UserError> {
    let map = target.join("tablespace_map");
    let Ok(text) = std::fs::read_to_string(&map) else {
        return Ok(());
    };
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let oid = line.split(' ').next().unwrap_or_default();
        if !is_tablespace_oid(oid) {
            continue;
        }
        let link = target.join("pg_tblspc").join(oid);
        if let Ok(dest) = std::fs::read_link(&link) {
            lines.push(format!("{oid} {}", dest.display()));
        }
    }
    // Replace atomically and durably: after a crash, the old map must not come
    // back and send PostgreSQL to the original locations.
    let result = if lines.is_empty() {
        std::fs::remove_file(&map).and_then(|()| sync_dir(target))
    } else {
        let staged = target.join("tablespace_map.wal-e-tmp");
        std::fs::write(&staged, lines.join("\n") + "\n")
            .and_then(|()| std::fs::File::open(&staged)?.sync_all())
            .and_then(|()| std::fs::rename(&staged, &map))
            .and_then(|()| sync_dir(target))
    };
    result.map_err(|e| {
        UserError::new("could not update tablespace_map").detail(format!("{}: {e}", map.display()))
    })
}
