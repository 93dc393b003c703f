//! What a store holds, in WAL-E's terms: which base backups are complete,
//! what every key under `basebackups_005/` and `wal_005/` is, and the orders
//! WAL-E puts backups in. `backup-list`, `delete` and `backup-fetch` (for
//! `LATEST`) all read the store through this module.
//!
//! Two orders exist, as in WAL-E:
//!
//! * by WAL position, the start segment's log and segment number as one
//!   integer with the timeline ignored ([`BackupInfo::position`]): `delete
//!   before` and `delete retain` compare keys with it;
//! * by the sentinel's last-modified time: `LATEST` is the backup whose
//!   sentinel was written last ([`BackupQuery::Latest`]).
//!
//! A name matches only if the whole name is one WAL-E writes; WAL-E matched
//! prefixes (`re.match`), so it also took e.g. `..._sentinel.json.bak` for a
//! sentinel. Keys that are not WAL-E's are never counted or deleted.

use std::sync::LazyLock;

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use regex_lite::Regex;

use crate::commands::Context;
use crate::config::Scheme;
use crate::error::UserError;
use crate::layout::{
    BASE_BACKUP_RE, BackupName, JSON_LIMIT, Layout, SegmentName, Sentinel, VERSION,
};
use crate::storage::{ObjectMeta, StoreError};

/// What follows a backup name in its sentinel's name.
pub const SENTINEL_SUFFIX: &str = "_backup_stop_sentinel.json";
/// The file holding the server version inside a backup's directory.
pub const EXTENDED_VERSION_FILE: &str = "extended_version.txt";
/// The directory of a backup's tar partitions.
pub const PARTITIONS_DIR: &str = "tar_partitions";

/// How many sentinels `--detail` reads at once.
const DETAIL_CONCURRENCY: usize = 16;

static VOLUME_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^part_[0-9]+\.tar\.lzo$").unwrap());
static WAL_SEGMENT_OBJECT_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([0-9A-F]{24})\.lzo$").unwrap());
static BACKUP_HISTORY_OBJECT_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([0-9A-F]{24})\.[0-9A-F]{8}\.backup\.lzo$").unwrap());
/// Like WAL-E, any name that starts as a timeline history file counts as
/// one: they are only ever kept, so the loose match errs on the safe side.
static TIMELINE_HISTORY_OBJECT_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[0-9A-F]{8}\.history").unwrap());

/// Why a key under `basebackups_005/` or `wal_005/` is not one of WAL-E's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unexpected {
    Depth,
    SentinelPattern,
    ExtendedVersionPattern,
    PartitionPattern,
    WalPattern,
}

impl Unexpected {
    /// The end of WAL-E's "The unexpected key is ..., and it appears ..." detail.
    pub fn why(self) -> &'static str {
        match self {
            Unexpected::Depth => "to be at an unexpected depth",
            Unexpected::SentinelPattern => "not to match the base-backup sentinel pattern",
            Unexpected::ExtendedVersionPattern => {
                "not to match the extended-version backup pattern"
            }
            Unexpected::PartitionPattern => "not to match the base-backup partition pattern",
            Unexpected::WalPattern => "not to match the WAL file naming pattern",
        }
    }
}

/// One key of `basebackups_005/` or `wal_005/`, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreObject {
    /// `basebackups_005/<backup>_backup_stop_sentinel.json`: the backup is complete.
    Sentinel(BackupName),
    /// `basebackups_005/<backup>/extended_version.txt`.
    ExtendedVersion(BackupName),
    /// `basebackups_005/<backup>/tar_partitions/part_<n>.tar.lzo`.
    Volume(BackupName),
    /// `wal_005/<segment>.lzo`.
    WalSegment(SegmentName),
    /// `wal_005/<segment>.<offset>.backup.lzo`, PostgreSQL's backup history file.
    BackupHistory(SegmentName),
    /// `wal_005/<timeline>.history.lzo`, with its timeline: has no WAL
    /// position and is never deleted by `delete before` or `delete retain`.
    TimelineHistory(u32),
    /// Not a name WAL-E writes (including `.partial` segments): left alone.
    Unexpected(Unexpected),
}

impl StoreObject {
    /// Classifies a name relative to `basebackups_005/`.
    pub fn from_basebackups_name(name: &str) -> StoreObject {
        let parts: Vec<&str> = name.split('/').collect();
        match parts[..] {
            [file] => file
                .strip_suffix(SENTINEL_SUFFIX)
                .and_then(BackupName::parse)
                .map_or(
                    StoreObject::Unexpected(Unexpected::SentinelPattern),
                    StoreObject::Sentinel,
                ),
            [dir, file] => match BackupName::parse(dir) {
                Some(b) if file == EXTENDED_VERSION_FILE => StoreObject::ExtendedVersion(b),
                _ => StoreObject::Unexpected(Unexpected::ExtendedVersionPattern),
            },
            [dir, partitions, file] => match BackupName::parse(dir) {
                Some(b) if partitions == PARTITIONS_DIR && VOLUME_NAME_RE.is_match(file) => {
                    StoreObject::Volume(b)
                }
                _ => StoreObject::Unexpected(Unexpected::PartitionPattern),
            },
            _ => StoreObject::Unexpected(Unexpected::Depth),
        }
    }

    /// Classifies a name relative to `wal_005/`.
    pub fn from_wal_name(name: &str) -> StoreObject {
        if name.contains('/') {
            return StoreObject::Unexpected(Unexpected::Depth);
        }
        let segment = |re: &Regex| re.captures(name).and_then(|c| SegmentName::parse(&c[1]));
        if TIMELINE_HISTORY_OBJECT_RE.is_match(name) {
            StoreObject::TimelineHistory(u32::from_str_radix(&name[..8], 16).unwrap_or(0))
        } else if let Some(seg) = segment(&WAL_SEGMENT_OBJECT_RE) {
            StoreObject::WalSegment(seg)
        } else if let Some(seg) = segment(&BACKUP_HISTORY_OBJECT_RE) {
            StoreObject::BackupHistory(seg)
        } else {
            StoreObject::Unexpected(Unexpected::WalPattern)
        }
    }

    /// The backup the object belongs to, for base backup objects.
    pub fn backup(&self) -> Option<&BackupName> {
        match self {
            StoreObject::Sentinel(b) | StoreObject::ExtendedVersion(b) | StoreObject::Volume(b) => {
                Some(b)
            }
            _ => None,
        }
    }

    /// The WAL position `delete before` compares: a backup's start segment,
    /// or the segment a WAL object belongs to. Timelines are ignored.
    pub fn position(&self) -> Option<u64> {
        match self {
            StoreObject::WalSegment(s) | StoreObject::BackupHistory(s) => Some(s.position()),
            other => other.backup().map(|b| b.start_segment.position()),
        }
    }

    /// The timeline of a backup, a WAL file or a timeline history file.
    pub fn timeline(&self) -> Option<u32> {
        match self {
            StoreObject::WalSegment(s) | StoreObject::BackupHistory(s) => Some(s.timeline),
            StoreObject::TimelineHistory(timeline) => Some(*timeline),
            other => other.backup().map(|b| b.start_segment.timeline),
        }
    }

    /// WAL-E's words in its `deleting <kind>` log line.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreObject::Sentinel(_) => "a base backup sentinel file",
            StoreObject::ExtendedVersion(_) => "a extended version metadata file",
            StoreObject::Volume(_) => "a base backup volume",
            StoreObject::WalSegment(_) => "a wal file",
            StoreObject::BackupHistory(_) => "a backup history file",
            StoreObject::TimelineHistory(_) => "a timeline history file",
            StoreObject::Unexpected(_) => "an unexpected key",
        }
    }
}

/// A listed key with what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub meta: ObjectMeta,
    pub object: StoreObject,
}

/// A complete base backup: one whose sentinel exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub name: BackupName,
    /// The physical key of the sentinel.
    pub sentinel_key: String,
    /// When the sentinel was written, as the store reports it.
    pub last_modified: DateTime<Utc>,
    /// The sentinel's content, once read by [`load_details`].
    pub sentinel: Option<Sentinel>,
}

impl BackupInfo {
    /// WAL-E's ordering key: the start segment's log and segment number.
    pub fn position(&self) -> u64 {
        self.name.start_segment.position()
    }
}

/// Every key under the current `basebackups_005/`, classified, in key order.
pub async fn list_basebackups(ctx: &Context) -> Result<Vec<Entry>, UserError> {
    let dir = format!("basebackups_{VERSION}/");
    list_classified(ctx, &dir, StoreObject::from_basebackups_name).await
}

/// Every key under the current `wal_005/`, classified, in key order.
pub async fn list_wal(ctx: &Context) -> Result<Vec<Entry>, UserError> {
    let dir = format!("wal_{VERSION}/");
    list_classified(ctx, &dir, StoreObject::from_wal_name).await
}

/// Every key under `dir` (relative to the prefix, e.g. `basebackups_004/`),
/// classified by `classify` from its name relative to `dir`.
pub async fn list_classified(
    ctx: &Context,
    dir: &str,
    classify: fn(&str) -> StoreObject,
) -> Result<Vec<Entry>, UserError> {
    let objects = list_objects(ctx, dir).await?;
    Ok(objects
        .into_iter()
        .map(|meta| {
            let object = relative_name(&ctx.layout, &meta.key, dir)
                .map_or(StoreObject::Unexpected(Unexpected::Depth), classify);
            Entry { meta, object }
        })
        .collect())
}

/// Every object whose name (relative to the prefix) starts with `dir`.
pub async fn list_objects(ctx: &Context, dir: &str) -> Result<Vec<ObjectMeta>, UserError> {
    let prefix = ctx.layout.key(dir);
    ctx.store
        .list(&prefix, None)
        .try_collect()
        .await
        .map_err(|e: StoreError| {
            UserError::new("could not list the store")
                .detail(format!(
                    "Listing {}: {e}",
                    ctx.layout.url(&ctx.layout.key(dir))
                ))
                .hint("Check that the storage prefix is right and reachable.")
        })
}

/// `key`'s name relative to `<prefix>/<dir>`.
fn relative_name<'k>(layout: &Layout, key: &'k str, dir: &str) -> Option<&'k str> {
    layout.logical(key)?.strip_prefix(dir)
}

/// The complete backups among `entries` (a `basebackups_005/` listing), in
/// listing order.
pub fn complete_backups(entries: &[Entry]) -> Vec<BackupInfo> {
    entries
        .iter()
        .filter_map(|e| match &e.object {
            StoreObject::Sentinel(name) => Some(BackupInfo {
                name: name.clone(),
                sentinel_key: e.meta.key.clone(),
                last_modified: e.meta.last_modified,
                sentinel: None,
            }),
            _ => None,
        })
        .collect()
}

/// The complete backups in the store, in listing (name) order, without
/// their sentinels' content.
pub async fn list_backups(ctx: &Context) -> Result<Vec<BackupInfo>, UserError> {
    Ok(complete_backups(&list_basebackups(ctx).await?))
}

/// Reads every backup's sentinel, [`DETAIL_CONCURRENCY`] at a time, keeping
/// the order. A backup whose sentinel has disappeared since the listing (a
/// concurrent `delete`) is dropped; one whose sentinel cannot be parsed keeps
/// `sentinel: None`, with a warning. Other storage errors fail.
pub async fn load_details(
    ctx: &Context,
    backups: Vec<BackupInfo>,
) -> Result<Vec<BackupInfo>, UserError> {
    let loaded: Vec<Result<Option<BackupInfo>, UserError>> = stream::iter(backups)
        .map(|mut backup| async move {
            let url = ctx.layout.url(&backup.sentinel_key);
            let bytes = match ctx.store.get(&backup.sentinel_key).await {
                Ok(got) => got
                    .bytes(JSON_LIMIT)
                    .await
                    .map_err(|e| match StoreError::from_io(&e) {
                        Some(StoreError::NotFound { .. }) => None,
                        _ => Some(e.to_string()),
                    }),
                Err(StoreError::NotFound { .. }) => Err(None),
                Err(e) => Err(Some(e.to_string())),
            };
            let bytes = match bytes {
                Ok(bytes) => bytes,
                Err(None) => {
                    tracing::warn!(
                        detail = %format!("The sentinel {url} was listed but no longer exists."),
                        hint = "The backup was probably deleted while it was being listed.",
                        "skipping a base backup that disappeared"
                    );
                    return Ok(None);
                }
                Err(Some(why)) => {
                    return Err(UserError::new("could not read a base backup sentinel")
                        .detail(format!("Reading {url}: {why}")));
                }
            };
            match Sentinel::from_json(&bytes) {
                Ok(sentinel) => backup.sentinel = Some(sentinel),
                Err(e) => tracing::warn!(
                    detail = %format!("The sentinel {url} is not valid JSON: {e}."),
                    hint = "Its size and stop segment are shown as unknown.",
                    "could not parse a base backup sentinel"
                ),
            }
            Ok(Some(backup))
        })
        .buffered(DETAIL_CONCURRENCY)
        .collect()
        .await;
    loaded.into_iter().filter_map(Result::transpose).collect()
}

/// What `backup-list QUERY` and `backup-fetch NAME` look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupQuery {
    /// The backup whose sentinel was modified last (WAL-E's LATEST).
    Latest,
    /// The backup with exactly this name.
    Name(String),
}

impl BackupQuery {
    /// `LATEST`, or anything starting like a backup name (as WAL-E's
    /// `re.match`; only an exact name will then match a backup).
    pub fn parse(query: &str) -> Result<BackupQuery, UserError> {
        if BASE_BACKUP_RE.is_match(query) {
            Ok(BackupQuery::Name(query.to_string()))
        } else if query == "LATEST" {
            Ok(BackupQuery::Latest)
        } else {
            Err(UserError::new("invalid backup query submitted")
                .detail(format!("The submitted query operator was \"{query}.\""))
                .hint("Use LATEST or a backup name as backup-list shows it, e.g. base_000000010000000000000003_00000040."))
        }
    }

    /// The backup this query picks out of `backups`. For `LATEST`, among
    /// sentinels with the same time the last one listed wins, as in WAL-E.
    pub fn select<'a>(&self, backups: &'a [BackupInfo]) -> Option<&'a BackupInfo> {
        match self {
            BackupQuery::Latest => backups.iter().max_by_key(|b| b.last_modified),
            BackupQuery::Name(name) => backups.iter().find(|b| b.name.to_string() == *name),
        }
    }
}

/// The backup `query` (`LATEST` or a name) names, if it exists.
pub async fn find_backup(ctx: &Context, query: &str) -> Result<Option<BackupInfo>, UserError> {
    let query = BackupQuery::parse(query)?;
    let backups = list_backups(ctx).await?;
    Ok(query.select(&backups).cloned())
}

/// `last_modified` as each of WAL-E's backends printed it in `backup-list`.
pub fn format_last_modified(scheme: Scheme, at: DateTime<Utc>) -> String {
    let format = match scheme {
        // boto's ISO 8601 with milliseconds.
        Scheme::S3 => "%Y-%m-%dT%H:%M:%S%.3fZ",
        // str() of an aware datetime; the services keep whole seconds.
        Scheme::Wabs | Scheme::Gs => "%Y-%m-%d %H:%M:%S+00:00",
        // file: datetime.utcfromtimestamp(st_mtime).isoformat(), rounded
        // as Python rounded it; Swift's listing string has the same shape
        // (and whole microseconds). Always six fractional digits (Python
        // dropped them when they were all zero).
        Scheme::File => return python_mtime(at).format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        Scheme::Swift => "%Y-%m-%dT%H:%M:%S%.6f",
    };
    at.format(format).to_string()
}

/// A file's modification time as WAL-E's file backend saw it, to the
/// microsecond: `os.stat` gives `st_mtime` as a float (seconds plus
/// nanoseconds times 1e-9) and `datetime.utcfromtimestamp` rounds that to
/// the nearest microsecond, ties to even. Truncating the nanoseconds
/// instead printed a microsecond less than WAL-E about half the time.
fn python_mtime(at: DateTime<Utc>) -> DateTime<Utc> {
    let float = at.timestamp() as f64 + f64::from(at.timestamp_subsec_nanos()) * 1e-9;
    let seconds = float.trunc();
    let micros = ((float - seconds) * 1e6).round_ties_even();
    DateTime::from_timestamp(seconds as i64, 0).unwrap_or(at)
        + chrono::Duration::microseconds(micros as i64)
}

/// `last_modified` for `--json`: RFC 3339, UTC, microseconds.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn backup(name: &str) -> BackupName {
        BackupName::parse(name).unwrap()
    }

    #[test]
    fn basebackup_keys_are_classified_by_depth_and_exact_name() {
        let b = "base_000000010000000000000002_00000040";
        let cases = [
            (
                format!("{b}_backup_stop_sentinel.json"),
                StoreObject::Sentinel(backup(b)),
            ),
            (
                format!("{b}/extended_version.txt"),
                StoreObject::ExtendedVersion(backup(b)),
            ),
            (
                format!("{b}/tar_partitions/part_00000012.tar.lzo"),
                StoreObject::Volume(backup(b)),
            ),
            (
                format!("{b}_backup_stop_sentinel.json.bak"),
                StoreObject::Unexpected(Unexpected::SentinelPattern),
            ),
            (
                "notes.txt".to_string(),
                StoreObject::Unexpected(Unexpected::SentinelPattern),
            ),
            (
                format!("{b}/other.txt"),
                StoreObject::Unexpected(Unexpected::ExtendedVersionPattern),
            ),
            (
                format!("{b}x/extended_version.txt"),
                StoreObject::Unexpected(Unexpected::ExtendedVersionPattern),
            ),
            (
                format!("{b}/tar_partitions/part_1.tar.lzo.tmp"),
                StoreObject::Unexpected(Unexpected::PartitionPattern),
            ),
            (
                format!("{b}/tars/part_00000001.tar.lzo"),
                StoreObject::Unexpected(Unexpected::PartitionPattern),
            ),
            (
                format!("{b}/a/b/c"),
                StoreObject::Unexpected(Unexpected::Depth),
            ),
        ];
        for (name, want) in cases {
            assert_eq!(StoreObject::from_basebackups_name(&name), want, "{name}");
        }
    }

    #[test]
    fn wal_keys_are_classified_like_wal_e() {
        let seg = SegmentName::parse("000000010000000000000002").unwrap();
        let cases = [
            ("000000010000000000000002.lzo", StoreObject::WalSegment(seg)),
            (
                "000000010000000000000002.00000028.backup.lzo",
                StoreObject::BackupHistory(seg),
            ),
            ("00000002.history.lzo", StoreObject::TimelineHistory(2)),
            (
                "000000010000000000000002.partial.lzo",
                StoreObject::Unexpected(Unexpected::WalPattern),
            ),
            (
                "00000001000000000000000a.lzo",
                StoreObject::Unexpected(Unexpected::WalPattern),
            ),
            (
                "000000010000000000000002.lzo.bak",
                StoreObject::Unexpected(Unexpected::WalPattern),
            ),
            ("sub/x.lzo", StoreObject::Unexpected(Unexpected::Depth)),
        ];
        for (name, want) in cases {
            assert_eq!(StoreObject::from_wal_name(name), want, "{name}");
        }
    }

    #[test]
    fn positions_ignore_timeline_and_offset() {
        let a = StoreObject::from_wal_name("000000020000000100000000.lzo");
        let b = StoreObject::from_basebackups_name(
            "base_0000000100000001000000FF_00000040_backup_stop_sentinel.json",
        );
        assert!(a.position().unwrap() < b.position().unwrap());
        assert_eq!(StoreObject::TimelineHistory(2).position(), None);
        assert_eq!(StoreObject::Unexpected(Unexpected::Depth).position(), None);
    }

    fn info(name: &str, secs: i64) -> BackupInfo {
        BackupInfo {
            name: backup(name),
            sentinel_key: format!("{name}{SENTINEL_SUFFIX}"),
            last_modified: Utc.timestamp_opt(secs, 0).unwrap(),
            sentinel: None,
        }
    }

    #[test]
    fn queries_latest_by_modification_time_and_exact_names() {
        let backups = [
            info("base_000000010000000000000002_00000040", 100),
            info("base_000000010000000000000005_00000040", 300),
            info("base_000000020000000000000009_00000040", 200),
            info("base_000000010000000000000007_00000040", 300),
        ];
        let latest = BackupQuery::parse("LATEST").unwrap().select(&backups);
        assert_eq!(
            latest.unwrap().name.to_string(),
            "base_000000010000000000000007_00000040",
            "ties go to the last one listed"
        );
        let named = BackupQuery::parse("base_000000020000000000000009_00000040").unwrap();
        assert_eq!(named.select(&backups).unwrap().position(), 9);
        let missing = BackupQuery::parse("base_000000020000000000000009_00000041").unwrap();
        assert_eq!(missing.select(&backups), None);
        let err = BackupQuery::parse("latest").unwrap_err();
        assert_eq!(err.msg, "invalid backup query submitted");
        assert_eq!(BackupQuery::Latest.select(&[]), None);
    }

    #[test]
    fn last_modified_per_backend() {
        let at = Utc.with_ymd_and_hms(2014, 4, 30, 23, 2, 38).unwrap()
            + chrono::Duration::microseconds(734_649);
        assert_eq!(
            format_last_modified(Scheme::File, at),
            "2014-04-30T23:02:38.734649"
        );
        assert_eq!(
            format_last_modified(Scheme::S3, at),
            "2014-04-30T23:02:38.734Z"
        );
        assert_eq!(
            format_last_modified(Scheme::Wabs, at),
            "2014-04-30 23:02:38+00:00"
        );
        assert_eq!(
            format_last_modified(Scheme::Swift, at),
            "2014-04-30T23:02:38.734649"
        );
        let whole = Utc.with_ymd_and_hms(2014, 4, 30, 23, 2, 38).unwrap();
        assert_eq!(
            format_last_modified(Scheme::File, whole),
            "2014-04-30T23:02:38.000000"
        );
        assert_eq!(rfc3339(at), "2014-04-30T23:02:38.734649Z");
    }

    /// WAL-E 1.1.1 printed a file's `st_mtime` float rounded to the
    /// microsecond (checked against it: `tests/interop_wal_e.rs`).
    #[test]
    fn file_last_modified_rounds_like_python() {
        let second = Utc.with_ymd_and_hms(2026, 11, 24, 15, 23, 9).unwrap();
        let at = |nanos: i64| second + chrono::Duration::nanoseconds(nanos);
        // Each as Python 3.11 prints
        // datetime.utcfromtimestamp(1795533789 + nanos * 1e-9).isoformat()
        assert_eq!(
            format_last_modified(Scheme::File, at(613_305_700)),
            "2026-11-24T15:23:09.613306"
        );
        assert_eq!(
            format_last_modified(Scheme::File, at(613_305_300)),
            "2026-11-24T15:23:09.613305"
        );
        // Near the middle the float decides (its steps are ~0.24 µs here).
        assert_eq!(
            format_last_modified(Scheme::File, at(613_305_499)),
            "2026-11-24T15:23:09.613306"
        );
        // 1795533789.734649 is a little below .734649 as a float.
        assert_eq!(
            format_last_modified(Scheme::File, at(734_649_000)),
            "2026-11-24T15:23:09.734649"
        );
        assert_eq!(
            format_last_modified(Scheme::File, at(999_999_800)),
            "2026-11-24T15:23:10.000000"
        );
        // Swift's listing has whole microseconds: printed as it came.
        assert_eq!(
            format_last_modified(Scheme::Swift, at(613_305_700)),
            "2026-11-24T15:23:09.613305"
        );
    }
}
