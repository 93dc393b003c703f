//! Every name WAL-E puts in a store, in one place: directories, backup and
//! segment names, partition names, the sentinel JSON, and how a logical name
//! becomes a physical object name on each backend (WAL-E spec §1).

use std::fmt;
use std::sync::LazyLock;

use regex_lite::Regex;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{Scheme, StoragePrefix};

/// The storage format version WAL-E 1.x writes (`CURRENT_VERSION`).
pub const VERSION: &str = "005";
/// Versions of WAL-E 0.x whose directories `delete old-versions` removes.
pub const OBSOLETE_VERSIONS: [&str; 5] = ["004", "003", "002", "001", "000"];

/// The object metadata (see [`crate::storage::Metadata`]) under which
/// wal-push records the SHA-256 of a WAL file's content, in lower-case hex,
/// so that a re-archived file can be compared without decrypting the
/// archived copy. WAL-E neither writes nor reads it.
pub const WAL_SHA256_METADATA: &str = "walesha256";

/// Most tar member bytes in one partition (`PARTITION_MAX_SZ`, 1.5 GiB).
pub const PARTITION_MAX_BYTES: u64 = 1_610_612_736;
/// Most tar members in one partition (`PARTITION_MAX_MEMBERS`).
pub const PARTITION_MAX_MEMBERS: usize = 6144;

/// `SEGMENT_REGEXP` and friends; hex is upper case only. Like WAL-E's
/// `re.match`, they are anchored at the start only.
pub static SEGMENT_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})").unwrap());
pub static SEGMENT_READY_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([0-9A-F]{24})\.ready$").unwrap());
pub static BASE_BACKUP_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^base_([0-9A-F]{24})_([0-9A-F]{8})").unwrap());
pub static COMPLETE_BASE_BACKUP_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^base_([0-9A-F]{24})_([0-9A-F]{8})_backup_stop_sentinel\.json").unwrap()
});
pub static VOLUME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^part_(\d+)\.tar\.lzo").unwrap());

/// A WAL segment name: timeline, log and segment number, 8 hex digits each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentName {
    pub timeline: u32,
    pub log: u32,
    pub seg: u32,
}

impl SegmentName {
    /// Parses exactly 24 upper-case hex digits.
    pub fn parse(name: &str) -> Option<SegmentName> {
        if name.len() != 24 || !SEGMENT_RE.is_match(name) {
            return None;
        }
        let hex = |r: std::ops::Range<usize>| u32::from_str_radix(&name[r], 16).ok();
        Some(SegmentName {
            timeline: hex(0..8)?,
            log: hex(8..16)?,
            seg: hex(16..24)?,
        })
    }

    /// WAL-E's ordering key: log and segment as one integer, timeline ignored.
    pub fn position(&self) -> u64 {
        (u64::from(self.log) << 32) | u64::from(self.seg)
    }

    /// The segment's number counted from the start of WAL, with `per_log`
    /// segments in each log (`2^32 / segment size`); timeline ignored.
    pub fn position_in(&self, per_log: u64) -> u64 {
        u64::from(self.log) * per_log + u64::from(self.seg)
    }

    /// The segment at `number` ([`SegmentName::position_in`]) on `timeline`.
    pub fn at(timeline: u32, number: u64, per_log: u64) -> SegmentName {
        SegmentName {
            timeline,
            log: (number / per_log) as u32,
            seg: (number % per_log) as u32,
        }
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

/// A base backup name: `base_<start segment>_<8-digit decimal offset>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackupName {
    pub start_segment: SegmentName,
    /// The start offset inside the segment as WAL-E wrote it: decimal,
    /// zero-padded to 8 characters.
    pub start_offset: String,
}

impl BackupName {
    pub fn new(start_segment: SegmentName, offset: u64) -> BackupName {
        // lpad(file_offset::text, 8, '0') also truncates to 8 characters.
        let mut start_offset = format!("{offset:08}");
        start_offset.truncate(8);
        BackupName {
            start_segment,
            start_offset,
        }
    }

    /// Whether names of backups on a cluster with this WAL segment size can
    /// lose digits: from 128 MiB on, start offsets reach 9 or more decimal
    /// digits and [`BackupName::new`] keeps the first 8, so two backups
    /// starting in one segment can get one name.
    pub fn may_truncate(segment_size: u64) -> bool {
        segment_size > 100_000_000
    }

    /// Parses a full backup name (nothing may follow it).
    pub fn parse(name: &str) -> Option<BackupName> {
        let caps = BASE_BACKUP_RE.captures(name)?;
        if caps[0].len() != name.len() {
            return None;
        }
        Some(BackupName {
            start_segment: SegmentName::parse(&caps[1])?,
            start_offset: caps[2].to_string(),
        })
    }

    /// Parses the last component of a sentinel object name.
    pub fn from_sentinel_file_name(file_name: &str) -> Option<BackupName> {
        let caps = COMPLETE_BASE_BACKUP_RE.captures(file_name)?;
        Some(BackupName {
            start_segment: SegmentName::parse(&caps[1])?,
            start_offset: caps[2].to_string(),
        })
    }
}

impl fmt::Display for BackupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "base_{}_{}", self.start_segment, self.start_offset)
    }
}

/// How a backend turns the URL path of an object into its stored name (§1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// boto 2 on S3: no leading slash, repeated slashes collapsed.
    CollapsedSlashes,
    /// Azure and the file store: the path without its leading slash.
    NoLeadingSlash,
    /// Swift and GCS: the name keeps the leading slash.
    LeadingSlash,
}

impl KeyStyle {
    pub fn for_scheme(scheme: Scheme) -> KeyStyle {
        match scheme {
            Scheme::S3 => KeyStyle::CollapsedSlashes,
            Scheme::Wabs | Scheme::File => KeyStyle::NoLeadingSlash,
            Scheme::Swift | Scheme::Gs => KeyStyle::LeadingSlash,
        }
    }
}

/// The names of one prefix's objects on its backend.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: StoragePrefix,
    style: KeyStyle,
}

impl Layout {
    pub fn new(prefix: StoragePrefix) -> Layout {
        let style = KeyStyle::for_scheme(prefix.scheme);
        Layout { prefix, style }
    }

    pub fn prefix(&self) -> &StoragePrefix {
        &self.prefix
    }

    /// The physical object name of `logical`, a name relative to the prefix
    /// such as `wal_005/000000010000000000000002.lzo`.
    pub fn key(&self, logical: &str) -> String {
        let url_path = format!("/{}{}", self.prefix.path, logical);
        match self.style {
            KeyStyle::LeadingSlash => url_path,
            KeyStyle::NoLeadingSlash => url_path[1..].to_string(),
            KeyStyle::CollapsedSlashes => {
                let mut out = String::with_capacity(url_path.len());
                for c in url_path.chars() {
                    if !(c == '/' && (out.is_empty() || out.ends_with('/'))) {
                        out.push(c);
                    }
                }
                out
            }
        }
    }

    /// The reverse of [`Layout::key`]: the name relative to the prefix, or
    /// `None` for an object outside it. Tolerates either slash form, as WAL-E.
    pub fn logical<'k>(&self, key: &'k str) -> Option<&'k str> {
        let bare = key.trim_start_matches('/');
        let path = self.prefix.path.trim_start_matches('/');
        if self.style == KeyStyle::CollapsedSlashes {
            let collapsed = self.key("");
            return bare.strip_prefix(collapsed.as_str());
        }
        bare.strip_prefix(path)
    }

    /// The URL WAL-E shows for an object, e.g. `s3://bucket/db1/wal_005/...`.
    pub fn url(&self, key: &str) -> String {
        format!(
            "{}://{}/{}",
            self.prefix.scheme.as_str(),
            self.prefix.store_name,
            key.trim_start_matches('/')
        )
    }

    pub fn basebackups_dir(&self) -> String {
        self.key(&format!("basebackups_{VERSION}/"))
    }

    pub fn wal_dir(&self) -> String {
        self.key(&format!("wal_{VERSION}/"))
    }

    /// Where a WAL file (segment, `.history`, `.backup`, `.partial`) is stored.
    pub fn wal_key(&self, file_name: &str) -> String {
        self.key(&format!("wal_{VERSION}/{file_name}.lzo"))
    }

    pub fn backup_dir(&self, backup: &BackupName) -> String {
        self.key(&format!("basebackups_{VERSION}/{backup}/"))
    }

    pub fn sentinel_key(&self, backup: &BackupName) -> String {
        self.key(&format!(
            "basebackups_{VERSION}/{backup}_backup_stop_sentinel.json"
        ))
    }

    pub fn extended_version_key(&self, backup: &BackupName) -> String {
        self.key(&format!(
            "basebackups_{VERSION}/{backup}/extended_version.txt"
        ))
    }

    pub fn partitions_dir(&self, backup: &BackupName) -> String {
        self.key(&format!("basebackups_{VERSION}/{backup}/tar_partitions/"))
    }

    pub fn partition_key(&self, backup: &BackupName, number: u32) -> String {
        format!(
            "{}{}",
            self.partitions_dir(backup),
            partition_file_name(number)
        )
    }
}

/// `part_%08d.tar.lzo`: decimal, zero-padded, numbered from 0.
pub fn partition_file_name(number: u32) -> String {
    format!("part_{number:08}.tar.lzo")
}

/// Most bytes a sentinel or a restore spec may have: WAL-E's take a few
/// hundred, and whoever can write to the store must not make a restore read
/// gigabytes into memory.
pub const JSON_LIMIT: usize = 1 << 20;

/// Whether `oid` names a tablespace as `pg_tblspc/<oid>` does: decimal
/// digits, at most a 32-bit number's ten.
pub fn is_tablespace_oid(oid: &str) -> bool {
    (1..=10).contains(&oid.len()) && oid.bytes().all(|b| b.is_ascii_digit())
}

/// Where a tablespace was at backup time, as recorded in the sentinel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceLocation {
    /// `readlink` of `pg_tblspc/<oid>`, with a trailing `/`.
    pub loc: String,
    /// `pg_tblspc/<oid>`. A restore does not need it: tolerated missing.
    #[serde(default)]
    pub link: String,
}

/// The restore spec stored in the sentinel (and read from `--restore-spec`).
///
/// In JSON it is one flat object, `base_prefix`, `tablespaces`, then one key
/// per tablespace OID, in that order, as WAL-E's Python dict was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreSpec {
    pub base_prefix: String,
    pub tablespaces: Vec<String>,
    pub locations: Vec<(String, TablespaceLocation)>,
}

impl RestoreSpec {
    pub fn location(&self, oid: &str) -> Option<&TablespaceLocation> {
        self.locations
            .iter()
            .find(|(o, _)| o == oid)
            .map(|(_, l)| l)
    }

    /// Checks what a restore acts on: every tablespace is an OID, and where
    /// it has a location, the link is `pg_tblspc/<oid>` and the location an
    /// absolute path.  `Err` says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        for oid in &self.tablespaces {
            if !is_tablespace_oid(oid) {
                return Err(format!("tablespace {oid:?} is not an OID (decimal digits)"));
            }
            if let Some(TablespaceLocation { loc, link }) = self.location(oid) {
                if *link != format!("pg_tblspc/{oid}") {
                    return Err(format!(
                        "tablespace {oid} has the link {link:?}, not \"pg_tblspc/{oid}\""
                    ));
                }
                if !loc.starts_with('/') {
                    return Err(format!(
                        "tablespace {oid} has the location {loc:?}, not an absolute path"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Serialize for RestoreSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2 + self.locations.len()))?;
        map.serialize_entry("base_prefix", &self.base_prefix)?;
        map.serialize_entry("tablespaces", &self.tablespaces)?;
        for (oid, loc) in &self.locations {
            map.serialize_entry(oid, loc)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for RestoreSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = RestoreSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a WAL-E restore spec object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RestoreSpec, A::Error> {
                let mut spec = RestoreSpec::default();
                let mut objects = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "base_prefix" => {
                            spec.base_prefix =
                                map.next_value::<Option<String>>()?.unwrap_or_default()
                        }
                        "tablespaces" => {
                            spec.tablespaces =
                                map.next_value::<Option<Vec<String>>>()?.unwrap_or_default()
                        }
                        // Unknown scalar keys are ignored: WAL-E only reads the
                        // entries named in `tablespaces`.
                        _ => {
                            if let serde_json::Value::Object(o) = map.next_value()? {
                                objects.push((key, o));
                            }
                        }
                    }
                }
                // Keys come in any order: only once `tablespaces` is known can
                // an object that is not a location be told apart from a
                // listed tablespace's broken one (an error) or another tool's
                // extra key (ignored).
                for (key, o) in objects {
                    match serde_json::from_value(serde_json::Value::Object(o)) {
                        Ok(loc) => spec.locations.push((key, loc)),
                        Err(e) if spec.tablespaces.contains(&key) => {
                            return Err(de::Error::custom(format!("tablespace {key}: {e}")));
                        }
                        Err(_) => {}
                    }
                }
                Ok(spec)
            }
        }
        deserializer.deserialize_map(SpecVisitor)
    }
}

/// The `<backup>_backup_stop_sentinel.json` object: its presence marks a
/// backup complete.
///
/// Read leniently, so that sentinels other tools (or other WAL-E versions)
/// wrote still restore: unknown keys are ignored, and every field may be
/// missing or `null` (empty, 0), since a restore needs only the spec's
/// listed tablespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sentinel {
    #[serde(default, deserialize_with = "null_as_default")]
    pub wal_segment_backup_stop: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub wal_segment_offset_backup_stop: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub expanded_size_bytes: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: RestoreSpec,
    /// How many partitions the backup has, the last one included. Written
    /// by this implementation (WAL-E ignores the key, and did not write it),
    /// checked by backup-fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_count: Option<u32>,
}

/// A `null` field reads as its default, like a missing one.
fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    deserializer: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl Sentinel {
    /// The bytes WAL-E's `json.dumps` writes: `", "` and `": "` separators,
    /// non-ASCII escaped, no trailing newline.
    pub fn to_wal_e_json(&self) -> Vec<u8> {
        to_python_json(self)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Sentinel, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Serialises like Python's `json.dumps` with default arguments.
pub fn to_python_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value
        .serialize(&mut ser)
        .expect("serialising to memory cannot fail");
    out
}

struct PythonFormatter;

/// `json.dumps` puts `", "` between items.
fn python_separator<W: ?Sized + std::io::Write>(
    writer: &mut W,
    first: bool,
) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        python_separator(writer, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        python_separator(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        // ensure_ascii=True: everything outside ASCII as \uXXXX (UTF-16 units).
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(url: &str) -> Layout {
        Layout::new(StoragePrefix::parse(url).unwrap())
    }

    #[test]
    fn wal_keys_per_backend_match_the_spec_example() {
        let seg = "000000010000000000000002";
        assert_eq!(
            layout("s3://bkt/db1").wal_key(seg),
            "db1/wal_005/000000010000000000000002.lzo"
        );
        assert_eq!(
            layout("wabs://ctr/db1").wal_key(seg),
            "db1/wal_005/000000010000000000000002.lzo"
        );
        assert_eq!(
            layout("swift://ctr/db1").wal_key(seg),
            "/db1/wal_005/000000010000000000000002.lzo"
        );
        assert_eq!(
            layout("gs://bkt/db1").wal_key(seg),
            "/db1/wal_005/000000010000000000000002.lzo"
        );
        assert_eq!(
            layout("file://localhost/srv/db1").wal_key(seg),
            "srv/db1/wal_005/000000010000000000000002.lzo"
        );
        assert_eq!(
            layout("s3://bkt").wal_key(seg),
            "wal_005/000000010000000000000002.lzo"
        );
    }

    #[test]
    fn s3_keys_collapse_repeated_slashes_like_boto() {
        let l = layout("s3://bkt//a//b/");
        assert_eq!(l.wal_dir(), "a/b/wal_005/");
        assert_eq!(l.logical("a/b/wal_005/x.lzo"), Some("wal_005/x.lzo"));
    }

    #[test]
    fn logical_names_tolerate_both_slash_forms() {
        let l = layout("swift://ctr/db1");
        assert_eq!(l.logical("/db1/wal_005/x.lzo"), Some("wal_005/x.lzo"));
        assert_eq!(l.logical("db1/wal_005/x.lzo"), Some("wal_005/x.lzo"));
        assert_eq!(l.logical("/other/wal_005/x.lzo"), None);
        assert_eq!(l.url("/db1/wal_005/x.lzo"), "swift://ctr/db1/wal_005/x.lzo");
    }

    #[test]
    fn backup_object_names() {
        let l = layout("s3://bkt/db1");
        let b = BackupName::parse("base_000000010000000000000003_00000040").unwrap();
        assert_eq!(
            l.sentinel_key(&b),
            "db1/basebackups_005/base_000000010000000000000003_00000040_backup_stop_sentinel.json"
        );
        assert_eq!(
            l.extended_version_key(&b),
            "db1/basebackups_005/base_000000010000000000000003_00000040/extended_version.txt"
        );
        assert_eq!(
            l.partition_key(&b, 12),
            "db1/basebackups_005/base_000000010000000000000003_00000040/tar_partitions/part_00000012.tar.lzo"
        );
        let from_sentinel = BackupName::from_sentinel_file_name(
            "base_000000010000000000000003_00000040_backup_stop_sentinel.json",
        );
        assert_eq!(from_sentinel, Some(b));
    }

    #[test]
    fn backup_offsets_are_decimal_and_padded_to_8() {
        let seg = SegmentName::parse("000000010000000000000003").unwrap();
        assert_eq!(
            BackupName::new(seg, 40).to_string(),
            "base_000000010000000000000003_00000040"
        );
        assert_eq!(BackupName::new(seg, 3_626_144).start_offset, "03626144");
        // With 128 MiB segments two offsets can share a name.
        assert_eq!(
            BackupName::new(seg, 12_345_678),
            BackupName::new(seg, 123_456_785)
        );
        assert!(!BackupName::may_truncate(64 << 20));
        assert!(BackupName::may_truncate(128 << 20));
    }

    #[test]
    fn segment_names_are_upper_case_hex_and_order_ignores_timeline() {
        assert!(SegmentName::parse("00000001000000000000000a").is_none());
        assert!(SegmentName::parse("0000000100000000000000").is_none());
        let a = SegmentName::parse("000000020000000100000000").unwrap();
        let b = SegmentName::parse("0000000100000001000000FF").unwrap();
        assert!(a.position() < b.position());
        assert_eq!(a.to_string(), "000000020000000100000000");
        assert!(SEGMENT_READY_RE.is_match("000000010000000000000002.ready"));
        assert!(!SEGMENT_READY_RE.is_match("00000002.history.ready"));
        assert!(VOLUME_RE.is_match("part_00000003.tar.lzo"));
    }

    #[test]
    fn sentinel_json_is_byte_identical_to_wal_e() {
        // The real sentinel WAL-E wrote (spec §1.6).
        let wal_e = br#"{"wal_segment_backup_stop": "000000010000000000000004", "wal_segment_offset_backup_stop": "00000128", "expanded_size_bytes": 100019, "spec": {"base_prefix": "/var/lib/postgresql/data/", "tablespaces": ["16400"], "16400": {"loc": "/srv/tblspc/", "link": "pg_tblspc/16400"}}}"#;
        let parsed = Sentinel::from_json(wal_e).unwrap();
        assert_eq!(parsed.spec.location("16400").unwrap().loc, "/srv/tblspc/");
        assert_eq!(parsed.to_wal_e_json(), wal_e.to_vec());
    }

    #[test]
    fn sentinel_without_spec_and_with_extra_keys_still_reads() {
        let s = Sentinel::from_json(br#"{"wal_segment_backup_stop": "000000010000000000000004", "wal_segment_offset_backup_stop": "00000128", "expanded_size_bytes": 1, "extra": 5}"#).unwrap();
        assert_eq!(s.spec, RestoreSpec::default());
    }

    #[test]
    fn sentinels_of_other_tools_restore_from_their_listed_tablespaces() {
        // Extra keys at the top, in the spec and in a location; no size, a
        // null stop, no link; `tablespaces` after the locations.
        let s = Sentinel::from_json(br#"{"wal_segment_backup_stop": null, "backup_label": {"a": 1}, "spec": {"base_prefix": null, "16400": {"loc": "/srv/ts/", "owner": "pg"}, "tool": {"name": "wal-g", "version": 2}, "tablespaces": ["16400"], "is_permanent": false}, "user_data": {"x": [1, 2]}}"#).unwrap();
        assert_eq!(s.expanded_size_bytes, 0);
        assert_eq!(s.wal_segment_backup_stop, "");
        assert_eq!(s.spec.tablespaces, ["16400"]);
        assert_eq!(s.spec.location("16400").unwrap().loc, "/srv/ts/");
        assert!(s.spec.location("tool").is_none());

        let s =
            Sentinel::from_json(br#"{"spec": {"tablespaces": null}, "expanded_size_bytes": null}"#)
                .unwrap();
        assert!(s.spec.tablespaces.is_empty());
        assert_eq!(
            Sentinel::from_json(br#"{"spec": null}"#).unwrap().spec,
            RestoreSpec::default()
        );

        // A listed tablespace whose location is broken is still an error.
        let err = Sentinel::from_json(
            br#"{"spec": {"16400": {"where": "/srv/ts/"}, "tablespaces": ["16400"]}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("tablespace 16400"), "{err}");
    }

    #[test]
    fn python_json_escapes_non_ascii() {
        assert_eq!(to_python_json(&"é😀"), br#""\u00e9\ud83d\ude00""#.to_vec());
    }
}
