//! `delete [--dry-run] [--confirm] {before NAME | retain N | old-versions | everything}`.
//!
//! A dry run unless `--confirm` is given and `--dry-run` is not. Every key is
//! logged as WAL-E did (`deleting <kind>`, the key's URL, and in a dry run a
//! HINT saying nothing is deleted), then deleted in batches of at most
//! [`BATCH_SIZE`] with the store's batch delete.
//!
//! Safety:
//!
//! * arguments are validated before anything is listed;
//! * the whole plan is made from one listing before the first delete;
//! * sentinels go first, so an interrupted run never leaves a backup that
//!   looks complete but has lost data: what it leaves is an incomplete
//!   upload older than the horizon, which the same command removes when run
//!   again. Then the rest of the backups, then WAL, as WAL-E;
//! * deleting a key that is already gone is not an error, so runs can be
//!   repeated or overlap;
//! * `before`/`retain` never delete timeline `.history` files, nor keys that
//!   are not WAL-E's names (those get a warning); `everything` and
//!   `old-versions` touch only WAL-E's directories of the prefix.

use std::cmp::Reverse;

use futures_util::StreamExt;

use super::Context;
use crate::catalog::{self, BackupInfo, Entry, StoreObject};
use crate::cli::{DeleteArgs, DeleteTarget};
use crate::error::{CmdResult, UserError};
use crate::layout::{BackupName, Layout, OBSOLETE_VERSIONS, SegmentName, VERSION};
use crate::pipeline;
use crate::postgres;
use crate::storage::Store;
use crate::timeline::{self, Timelines};

/// Most keys in one batch delete (WAL-E's `PAGINATION_MAX`, S3's limit).
pub const BATCH_SIZE: usize = 1000;

const DRY_RUN_HINT: &str = "This is only a dry run -- no actual data is being deleted";
const WEIRD_KEY_HINT: &str = "This means an unexpected key was found in a WAL-E prefix. It can be harmless, or the result of a bug or misconfiguration. It was left in place.";

/// What `delete before` was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Horizon {
    Backup(BackupName),
    Segment(SegmentName),
}

impl Horizon {
    pub fn parse(name: &str) -> Result<Horizon, UserError> {
        if let Some(backup) = BackupName::parse(name) {
            Ok(Horizon::Backup(backup))
        } else if let Some(segment) = SegmentName::parse(name) {
            Ok(Horizon::Segment(segment))
        } else {
            Err(UserError::new("invalid name for delete before")
                .detail(format!(
                    "\"{name}\" is neither a base backup name (base_<24 hex digits>_<8 digits>) nor a WAL segment name (24 upper-case hex digits)."
                ))
                .hint("Give a backup name as backup-list shows it, e.g. base_000000010000000000000003_00000040, or a WAL segment name, e.g. 000000010000000000000003. Everything older is deleted."))
        }
    }

    /// WAL-E's comparison key: log and segment number, timeline and offset ignored.
    pub fn position(&self) -> u64 {
        match self {
            Horizon::Backup(b) => b.start_segment.position(),
            Horizon::Segment(s) => s.position(),
        }
    }
}

/// A delete command with validated arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Before(Horizon),
    Retain(usize),
    OldVersions,
    Everything,
}

impl Target {
    pub fn parse(target: &DeleteTarget) -> Result<Target, UserError> {
        match target {
            DeleteTarget::Before { name } => Horizon::parse(name).map(Target::Before),
            DeleteTarget::Retain { count } => parse_retain_count(count).map(Target::Retain),
            DeleteTarget::OldVersions => Ok(Target::OldVersions),
            DeleteTarget::Everything => Ok(Target::Everything),
            DeleteTarget::Unknown(args) => Err(UserError::new(format!(
                "unknown delete subcommand \"{}\"",
                args.first().map_or("", String::as_str)
            ))
            .detail("delete takes one of: before, retain, old-versions, everything.")
            .hint("For example: wal-e delete --confirm retain 7")),
        }
    }
}

/// `retain N`: a whole number, at least 1. WAL-E took 0 and then kept
/// everything while logging that it deleted everything.
pub fn parse_retain_count(count: &str) -> Result<usize, UserError> {
    match count.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(UserError::new("invalid number of base backups to retain")
            .detail(format!(
                "The number given was \"{count}\"; it must be a whole number of at least 1."
            ))
            .hint("delete retain N keeps the N newest complete base backups and the WAL they need. To delete every backup, use delete everything.")),
    }
}

/// One key to delete, with WAL-E's word for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    pub key: String,
    pub kind: &'static str,
}

pub async fn run(ctx: &Context, args: &DeleteArgs) -> CmdResult {
    let target = Target::parse(&args.target)?;
    let dry_run = args.dry_run || !args.confirm;
    if dry_run {
        tracing::info!(target: "wal_e.main", "performing dry run of data deletion");
    } else {
        tracing::info!(target: "wal_e.main", "deleting data in the store");
    }
    let grace = chrono::Duration::hours(i64::from(args.unfinished_grace_hours));
    let plan = match target {
        Target::Before(horizon) => plan_before(ctx, &horizon, grace).await?,
        Target::Retain(n) => plan_retain(ctx, n, grace).await?,
        Target::OldVersions => plan_old_versions(ctx).await?,
        Target::Everything => plan_everything(ctx).await?,
    };
    execute(&ctx.layout, ctx.store.as_ref(), &plan, dry_run).await?;
    Ok(())
}

async fn plan_before(
    ctx: &Context,
    horizon: &Horizon,
    grace: chrono::Duration,
) -> Result<Vec<Doomed>, UserError> {
    let basebackups = catalog::list_basebackups(ctx).await?;
    let backups = catalog::complete_backups(&basebackups);
    let (keep, floor) = match horizon {
        // Older means older by sentinel time, as LATEST is the newest.
        Horizon::Backup(name) => {
            let Some(named) = backups.iter().find(|b| b.name == *name) else {
                return Err(UserError::new("the backup named for delete before is not in the store")
                    .detail(format!("There is no complete base backup named {name} in {}.", ctx.settings.prefix.url))
                    .hint("backup-list shows the complete backups; delete before compares their times, so it needs one that exists. Nothing was deleted."));
            };
            let keep: Vec<&BackupInfo> = backups
                .iter()
                .filter(|b| b.last_modified >= named.last_modified)
                .collect();
            (keep, None)
        }
        // A segment has no time: positions decide, as in WAL-E.
        Horizon::Segment(segment) => {
            let position = segment.position();
            let keep: Vec<&BackupInfo> = backups
                .iter()
                .filter(|b| b.position() >= position)
                .collect();
            if keep.is_empty() && !backups.is_empty() {
                tracing::warn!(
                    detail = %format!("All {} complete base backups start before the horizon.", backups.len()),
                    hint = "No base backup will be left to restore from.",
                    "delete before removes every complete base backup"
                );
            }
            (keep, Some(position))
        }
    };
    let wal = catalog::list_wal(ctx).await?;
    let keep = keep_latest_timeline_restorable(ctx, &backups, keep, &wal).await?;
    let unfinished = unfinished_in_grace(&ctx.layout, &basebackups, &backups, grace);
    let keep = Keep {
        backups: &keep,
        unfinished: &unfinished,
        floor,
    };
    Ok(sweep(&ctx.layout, &backups, &keep, &basebackups, &wal))
}

/// The `n` newest complete backups by sentinel time (as LATEST picks the
/// newest), newest first; position breaks ties.
pub fn newest_by_time(backups: &[BackupInfo], n: usize) -> Vec<&BackupInfo> {
    let mut newest_first: Vec<&BackupInfo> = backups.iter().collect();
    newest_first.sort_by_key(|b| Reverse((b.last_modified, b.position())));
    newest_first.truncate(n);
    newest_first
}

async fn plan_retain(
    ctx: &Context,
    n: usize,
    grace: chrono::Duration,
) -> Result<Vec<Doomed>, UserError> {
    let basebackups = catalog::list_basebackups(ctx).await?;
    let backups = catalog::complete_backups(&basebackups);
    if backups.is_empty() {
        tracing::warn!(
            detail = "No existing base backups.",
            hint = "delete retain only deletes what is older than the oldest backup it keeps.",
            "Not deleting any data."
        );
        return Ok(Vec::new());
    }
    let keep = newest_by_time(&backups, n);
    let wal = catalog::list_wal(ctx).await?;
    let keep = keep_latest_timeline_restorable(ctx, &backups, keep, &wal).await?;
    let older = backups.len() - keep.len();
    let oldest_kept = keep
        .iter()
        .min_by_key(|b| (b.last_modified, b.position()))
        .expect("at least one backup is kept");
    let hint = format!(
        "Deleting keys older than {}.",
        ctx.layout.url(&oldest_kept.sentinel_key)
    );
    if older > 0 {
        tracing::info!(
            detail = %format!("Found {} total base backups.", backups.len()),
            hint = %hint,
            "Deleting {older} oldest base backups."
        );
    } else if backups.len() == 1 {
        tracing::info!(hint = %hint, "Retaining existing base backup.");
    } else {
        tracing::info!(hint = %hint, "Retaining all {} base backups.", backups.len());
    }
    let unfinished = unfinished_in_grace(&ctx.layout, &basebackups, &backups, grace);
    let keep = Keep {
        backups: &keep,
        unfinished: &unfinished,
        floor: None,
    };
    Ok(sweep(&ctx.layout, &backups, &keep, &basebackups, &wal))
}

/// Unfinished backups (objects but no sentinel) written to within `grace`:
/// a backup-push may still be uploading them, or about to write the
/// sentinel. Each is logged.
fn unfinished_in_grace(
    layout: &Layout,
    basebackups: &[Entry],
    backups: &[BackupInfo],
    grace: chrono::Duration,
) -> Vec<BackupName> {
    let cutoff = chrono::Utc::now() - grace;
    let mut newest: Vec<(&BackupName, chrono::DateTime<chrono::Utc>)> = Vec::new();
    for entry in basebackups {
        let Some(name) = entry.object.backup() else {
            continue;
        };
        if backups.iter().any(|b| b.name == *name) {
            continue;
        }
        match newest.iter_mut().find(|(n, _)| *n == name) {
            Some((_, at)) => *at = (*at).max(entry.meta.last_modified),
            None => newest.push((name, entry.meta.last_modified)),
        }
    }
    newest
        .into_iter()
        .filter(|(_, at)| *at >= cutoff)
        .map(|(name, at)| {
            tracing::info!(
                detail = %format!(
                    "{} has no sentinel and was last written at {}, within the last {} hours: a backup-push may still be running.",
                    layout.url(&layout.backup_dir(name)),
                    at.format("%Y-%m-%dT%H:%M:%SZ"),
                    grace.num_hours()
                ),
                hint = "A later run deletes it once it is older (see --unfinished-grace-hours).",
                "leaving an unfinished backup alone"
            );
            name.clone()
        })
        .collect()
}

/// Makes sure the newest timeline of the archive (the running cluster's,
/// after a point-in-time restore that promoted) can still be restored
/// after the delete: if no kept backup can reach it, the newest backup that
/// can is kept too, with a warning. Decided from the timeline history files
/// only when no kept backup is on that timeline itself; a timeline whose
/// history cannot be read makes the delete refuse rather than guess.
async fn keep_latest_timeline_restorable<'b>(
    ctx: &Context,
    backups: &'b [BackupInfo],
    mut keep: Vec<&'b BackupInfo>,
    wal: &[Entry],
) -> Result<Vec<&'b BackupInfo>, UserError> {
    let timeline_of = |b: &BackupInfo| b.name.start_segment.timeline;
    let latest = wal
        .iter()
        .filter_map(|e| e.object.timeline())
        .chain(backups.iter().map(timeline_of))
        .max();
    let Some(latest) = latest else {
        return Ok(keep);
    };
    if keep.is_empty() || keep.iter().any(|b| timeline_of(b) == latest) {
        return Ok(keep);
    }
    let lineage = Lineage::load(ctx, wal).await?;
    let reaches = |b: &BackupInfo| {
        timeline::reaches(&lineage.timelines, &b.name, latest, lineage.segment_size).map_err(
            |missing| {
                UserError::new(format!(
                    "cannot tell which base backups can restore timeline {latest}"
                ))
                .detail(format!(
                    "Timeline {latest} is the newest in the archive, no backup kept is on it, and the history file of timeline {missing} ({missing:08X}.history) is not in {}.",
                    ctx.layout.url(&ctx.layout.key(&format!("wal_{VERSION}/")))
                ))
                .hint("PostgreSQL archives a timeline's history file when it promotes; check that archive_command worked then, or copy the file from the promoted server's pg_wal into the archive. Nothing was deleted.")
            },
        )
    };
    for kept in &keep {
        if reaches(kept)? {
            return Ok(keep);
        }
    }
    let mut others: Vec<&BackupInfo> = newest_by_time(backups, backups.len());
    others.retain(|b| !keep.iter().any(|k| k.name == b.name));
    for candidate in others {
        if reaches(candidate)? {
            tracing::warn!(
                detail = %format!(
                    "Timeline {latest} is the newest in the archive, and none of the backups selected for keeping can restore it; {} is the newest backup that can.",
                    candidate.name
                ),
                hint = "After a point-in-time restore, take a new base backup of the promoted server so that older timelines can be deleted.",
                "keeping backup {} as well", candidate.name
            );
            keep.push(candidate);
            return Ok(keep);
        }
    }
    tracing::warn!(
        detail = %format!("Timeline {latest} is the newest in the archive, and no complete backup can restore it."),
        hint = "Take a base backup of the server on that timeline.",
        "no base backup can restore the newest timeline"
    );
    Ok(keep)
}

/// The timeline histories of an archive, and its WAL segment size (which
/// places a backup's start against the switch locations in the histories).
struct Lineage {
    timelines: Timelines,
    segment_size: u64,
}

impl Lineage {
    async fn load(ctx: &Context, wal: &[Entry]) -> Result<Lineage, UserError> {
        let cannot = |what: String, why: String| {
            UserError::new("cannot read the timeline history of the archive")
                .detail(format!("{what}: {why}"))
                .hint("delete needs to read timeline history files (and the header of one WAL segment) to keep the backups the newest timeline needs; with encryption that takes the secret key. Nothing was deleted.")
        };
        let decrypt_with = ctx
            .decryption_keys()
            .await
            .map_err(|e| cannot("loading the secret key".into(), e.to_string()))?;
        let read = |key: String, limit: usize| {
            let decrypt_with = decrypt_with.clone();
            async move {
                let url = ctx.layout.url(&key);
                let stored = ctx
                    .store
                    .get(&key)
                    .await
                    .map_err(|e| cannot(url.clone(), e.to_string()))?;
                let mut plain = pipeline::decode(stored.stream, decrypt_with.as_ref());
                let mut bytes = Vec::new();
                while bytes.len() < limit {
                    match plain.next().await {
                        Some(chunk) => bytes.extend_from_slice(
                            &chunk.map_err(|e| cannot(url.clone(), e.to_string()))?,
                        ),
                        None => break,
                    }
                }
                Ok::<_, UserError>((url, bytes))
            }
        };
        let mut timelines = Timelines::default();
        for entry in wal {
            let StoreObject::TimelineHistory(timeline) = entry.object else {
                continue;
            };
            if ctx.layout.logical(&entry.meta.key)
                != Some(&*format!("wal_{VERSION}/{timeline:08X}.history.lzo"))
            {
                continue;
            }
            let (url, bytes) = read(entry.meta.key.clone(), MAX_HISTORY_BYTES).await?;
            let text = String::from_utf8_lossy(&bytes);
            let switches = timeline::parse_history(&text).map_err(|e| cannot(url, e))?;
            timelines.insert(timeline, switches);
        }
        let first_segment = wal
            .iter()
            .find(|e| matches!(e.object, StoreObject::WalSegment(_)))
            .ok_or_else(|| {
                cannot(
                    "the WAL archive".into(),
                    "it holds no WAL segment to learn the segment size from".into(),
                )
            })?;
        let (url, page) = read(
            first_segment.meta.key.clone(),
            postgres::LONG_PAGE_HEADER_SIZE,
        )
        .await?;
        let segment_size = postgres::LongPageHeader::parse(&page)
            .map(|h| h.segment_size)
            .ok_or_else(|| cannot(url, "it does not start with a WAL page header".into()))?;
        Ok(Lineage {
            timelines,
            segment_size,
        })
    }
}

/// History files are a few lines per timeline; a larger one is not read whole.
const MAX_HISTORY_BYTES: usize = 1 << 20;

/// What `delete before` and `delete retain` keep.
pub struct Keep<'a> {
    /// Complete backups.
    pub backups: &'a [&'a BackupInfo],
    /// Unfinished backups that may still be in progress.
    pub unfinished: &'a [BackupName],
    /// `before SEGMENT`: nothing from this position on is deleted.
    pub floor: Option<u64>,
}

/// What `delete before` and `delete retain` remove, sentinels first:
/// every complete backup not kept; unfinished uploads not spared, WAL
/// segments and backup history files that start before the oldest kept
/// backup (and before the floor, when given). A kept backup never needs WAL from before
/// its own start, so every timeline's WAL from there on stays. Timeline
/// history files are kept; keys that are not WAL-E's are kept with a
/// warning.
pub fn sweep(
    layout: &Layout,
    backups: &[BackupInfo],
    keep: &Keep<'_>,
    basebackups: &[Entry],
    wal: &[Entry],
) -> Vec<Doomed> {
    let horizon = keep
        .backups
        .iter()
        .map(|b| b.position())
        .chain(keep.floor)
        .min()
        .unwrap_or(u64::MAX);
    let kept = |name: &BackupName| {
        keep.backups.iter().any(|b| b.name == *name) || keep.unfinished.contains(name)
    };
    let complete = |name: &BackupName| backups.iter().any(|b| b.name == *name);
    let mut sentinels = Vec::new();
    let mut backup_data = Vec::new();
    let mut wal_files = Vec::new();
    for entry in basebackups.iter().chain(wal) {
        if let StoreObject::Unexpected(why) = entry.object {
            tracing::warn!(
                detail = %format!(
                    "The unexpected key is \"{}\", and it appears {}.",
                    layout.url(&entry.meta.key),
                    why.why()
                ),
                hint = WEIRD_KEY_HINT,
                "skipping non-qualifying key in 'delete before'"
            );
            continue;
        }
        let Some(position) = entry.object.position() else {
            continue;
        };
        let doomed = match entry.object.backup() {
            Some(name) if kept(name) => false,
            Some(name) if complete(name) => true,
            _ => position < horizon,
        };
        if !doomed {
            continue;
        }
        let doomed = Doomed {
            key: entry.meta.key.clone(),
            kind: entry.object.kind(),
        };
        match entry.object {
            StoreObject::Sentinel(_) => sentinels.push(doomed),
            StoreObject::ExtendedVersion(_) | StoreObject::Volume(_) => backup_data.push(doomed),
            _ => wal_files.push(doomed),
        }
    }
    sentinels.extend(backup_data);
    sentinels.extend(wal_files);
    sentinels
}

async fn plan_everything(ctx: &Context) -> Result<Vec<Doomed>, UserError> {
    let mut plan = whole_directory(
        &catalog::list_basebackups(ctx).await?,
        "part of a base backup",
    );
    plan.extend(whole_directory(
        &catalog::list_wal(ctx).await?,
        "part of wal logs",
    ));
    Ok(plan)
}

/// Everything under `basebackups_000/`…`basebackups_004/` and
/// `wal_000/`…`wal_004/`; never the current version's directories.
async fn plan_old_versions(ctx: &Context) -> Result<Vec<Doomed>, UserError> {
    let mut plan = Vec::new();
    for version in OBSOLETE_VERSIONS {
        let basebackups = catalog::list_classified(
            ctx,
            &format!("basebackups_{version}/"),
            StoreObject::from_basebackups_name,
        )
        .await?;
        plan.extend(whole_directory(&basebackups, "part of a base backup"));
        let wal =
            catalog::list_classified(ctx, &format!("wal_{version}/"), StoreObject::from_wal_name)
                .await?;
        plan.extend(whole_directory(&wal, "part of wal logs"));
    }
    Ok(plan)
}

/// Every listed key, sentinels first.
fn whole_directory(entries: &[Entry], kind: &'static str) -> Vec<Doomed> {
    let is_sentinel = |e: &&Entry| matches!(e.object, StoreObject::Sentinel(_));
    let doomed = |e: &Entry| Doomed {
        key: e.meta.key.clone(),
        kind,
    };
    let mut plan: Vec<Doomed> = entries.iter().filter(is_sentinel).map(doomed).collect();
    plan.extend(entries.iter().filter(|e| !is_sentinel(e)).map(doomed));
    plan
}

/// Logs every key and, unless this is a dry run, deletes them in batches.
pub async fn execute(
    layout: &Layout,
    store: &dyn Store,
    plan: &[Doomed],
    dry_run: bool,
) -> Result<(), UserError> {
    let hint = dry_run.then_some(DRY_RUN_HINT);
    for (done, batch) in plan.chunks(BATCH_SIZE).enumerate() {
        for doomed in batch {
            tracing::info!(
                detail = %format!("The key being deleted is {}.", layout.url(&doomed.key)),
                hint,
                "deleting {}",
                doomed.kind
            );
        }
        if dry_run {
            continue;
        }
        let keys: Vec<String> = batch.iter().map(|d| d.key.clone()).collect();
        if let Err(e) = store.delete_many(&keys).await {
            return Err(UserError::new("could not delete data from the store")
                .detail(format!(
                    "{e}. {} of {} keys had been deleted before this batch.",
                    done * BATCH_SIZE,
                    plan.len()
                ))
                .hint("Nothing outside what this command selects was touched. Running the same command again continues where this one stopped."));
        }
    }
    if dry_run {
        tracing::info!(
            detail = %format!("{} keys would be deleted.", plan.len()),
            hint = "Run again with --confirm (and without --dry-run) to delete them.",
            "dry run complete"
        );
    } else {
        tracing::info!(
            detail = %format!("{} keys were deleted.", plan.len()),
            "deletion complete"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use chrono::Utc;
    use futures_util::stream::{self, BoxStream, StreamExt};

    use super::*;
    use crate::config::StoragePrefix;
    use crate::storage::{GetOptions, GetResult, ObjectMeta, PutOptions, PutPayload, StoreError};

    fn entry(key: &str, object: StoreObject) -> Entry {
        Entry {
            meta: ObjectMeta {
                key: key.to_string(),
                size: 0,
                last_modified: Utc::now(),
                metadata: Default::default(),
                version: None,
            },
            object,
        }
    }

    fn bb(name: &str) -> Entry {
        entry(name, StoreObject::from_basebackups_name(name))
    }

    fn wal(name: &str) -> Entry {
        entry(name, StoreObject::from_wal_name(name))
    }

    fn layout() -> Layout {
        Layout::new(StoragePrefix::parse("s3://bkt/db").unwrap())
    }

    #[test]
    fn retain_counts_are_whole_numbers_of_at_least_one() {
        assert_eq!(parse_retain_count("1").unwrap(), 1);
        assert_eq!(parse_retain_count("30").unwrap(), 30);
        for bad in ["0", "-1", "abc", "", "1.5", "99999999999999999999999"] {
            let err = parse_retain_count(bad).unwrap_err();
            assert_eq!(err.msg, "invalid number of base backups to retain", "{bad}");
        }
    }

    #[test]
    fn before_takes_backup_or_segment_names_only() {
        let b = Horizon::parse("base_000000020000000300000004_00000040").unwrap();
        let s = Horizon::parse("000000010000000300000004").unwrap();
        assert_eq!(
            b.position(),
            s.position(),
            "timeline and offset are ignored"
        );
        for bad in [
            "garbage",
            "00000001000000030000000a",
            "base_000000020000000300000004_00000040_backup_stop_sentinel.json",
            "000000010000000300000004.lzo",
        ] {
            assert!(Horizon::parse(bad).is_err(), "{bad}");
        }
    }

    fn info(name: &str, secs: i64) -> BackupInfo {
        use chrono::TimeZone;
        BackupInfo {
            name: BackupName::parse(name).unwrap(),
            sentinel_key: format!("{name}_backup_stop_sentinel.json"),
            last_modified: Utc.timestamp_opt(secs, 0).unwrap(),
            sentinel: None,
        }
    }

    #[test]
    fn retain_keeps_the_newest_by_sentinel_time_not_by_position() {
        // Timeline 2 forked from an older point: its backup starts earlier
        // in the WAL than the newest one of timeline 1, but is newer.
        let backups = [
            info("base_000000010000000000000005_00000040", 200),
            info("base_000000020000000000000003_00000040", 300),
            info("base_000000010000000000000002_00000040", 100),
        ];
        let names = |n| -> Vec<String> {
            newest_by_time(&backups, n)
                .iter()
                .map(|b| b.name.to_string())
                .collect()
        };
        assert_eq!(names(1), ["base_000000020000000000000003_00000040"]);
        assert_eq!(
            names(2),
            [
                "base_000000020000000000000003_00000040",
                "base_000000010000000000000005_00000040"
            ]
        );
        assert_eq!(names(7).len(), 3, "at most n backups");
    }

    #[test]
    fn sweep_puts_sentinels_first_and_keeps_history_and_strangers() {
        let old = "base_000000010000000000000002_00000040";
        let kept = "base_000000010000000000000005_00000040";
        let basebackups = [
            bb(&format!("{old}/extended_version.txt")),
            bb(&format!("{old}/tar_partitions/part_00000000.tar.lzo")),
            bb(&format!("{old}_backup_stop_sentinel.json")),
            bb(&format!("{kept}/extended_version.txt")),
            bb(&format!("{kept}_backup_stop_sentinel.json")),
            bb("base_000000010000000000000001_00000040/extended_version.txt"),
            bb("notes.txt"),
        ];
        let wal_entries = [
            wal("000000010000000000000001.lzo"),
            wal("000000010000000000000002.00000028.backup.lzo"),
            wal("000000010000000000000004.partial.lzo"),
            wal("00000001.history.lzo"),
            wal("000000020000000000000004.lzo"),
            wal("000000010000000000000005.lzo"),
        ];
        let backups = [info(old, 100), info(kept, 200)];
        let keep = Keep {
            backups: &[&backups[1]],
            unfinished: &[],
            floor: None,
        };
        let plan = sweep(&layout(), &backups, &keep, &basebackups, &wal_entries);
        let keys: Vec<&str> = plan.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "base_000000010000000000000002_00000040_backup_stop_sentinel.json",
                "base_000000010000000000000002_00000040/extended_version.txt",
                "base_000000010000000000000002_00000040/tar_partitions/part_00000000.tar.lzo",
                "base_000000010000000000000001_00000040/extended_version.txt",
                "000000010000000000000001.lzo",
                "000000010000000000000002.00000028.backup.lzo",
                "000000020000000000000004.lzo",
            ]
        );
        assert_eq!(plan[0].kind, "a base backup sentinel file");
        assert_eq!(plan[1].kind, "a extended version metadata file");
        assert_eq!(plan[2].kind, "a base backup volume");
        assert_eq!(plan[4].kind, "a wal file");
        assert_eq!(plan[5].kind, "a backup history file");
    }

    /// Records each batch handed to delete_many.
    #[derive(Debug, Default)]
    struct RecordingStore {
        batches: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl Store for RecordingStore {
        async fn put(&self, key: &str, _: PutPayload, _: &PutOptions) -> Result<(), StoreError> {
            Err(StoreError::permanent("put", key, "read-only"))
        }
        async fn get_opts(&self, key: &str, _: &GetOptions) -> Result<GetResult, StoreError> {
            Err(StoreError::NotFound { key: key.into() })
        }
        async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
            Err(StoreError::NotFound { key: key.into() })
        }
        fn list(
            &self,
            _: &str,
            _: Option<String>,
        ) -> BoxStream<'_, Result<ObjectMeta, StoreError>> {
            stream::empty().boxed()
        }
        async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
            self.batches.lock().unwrap().push(keys.to_vec());
            Ok(())
        }
    }

    fn plan_of(n: usize) -> Vec<Doomed> {
        (0..n)
            .map(|i| Doomed {
                key: format!("k{i:05}"),
                kind: "a wal file",
            })
            .collect()
    }

    #[tokio::test]
    async fn deletes_in_order_in_batches_of_at_most_1000() {
        let store = RecordingStore::default();
        let plan = plan_of(2500);
        execute(&layout(), &store, &plan, false).await.unwrap();
        let batches = store.batches.into_inner().unwrap();
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        let flat: Vec<String> = batches.concat();
        let want: Vec<String> = plan.into_iter().map(|d| d.key).collect();
        assert_eq!(flat, want);
    }

    #[tokio::test]
    async fn a_dry_run_deletes_nothing() {
        let store = RecordingStore::default();
        execute(&layout(), &store, &plan_of(10), true)
            .await
            .unwrap();
        assert!(store.batches.into_inner().unwrap().is_empty());
    }
}
