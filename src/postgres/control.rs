//! `global/pg_control` of a cluster, parsed directly (no `pg_controldata`),
//! for `backup-push --while-offline`.
//!
//! The file is PostgreSQL's `ControlFileData` struct written in the server's
//! native byte order and alignment, followed by zeros up to 8 KiB; a CRC-32C
//! of the struct up to its `crc` field is stored in that field. The offsets
//! below are those of `src/include/catalog/pg_control.h` on the REL_10 ..
//! REL_18 branches for 64-bit platforms (8-byte alignment of `uint64`,
//! `double` and `pg_time_t`); i386, where those are 4-byte aligned, lays
//! the struct out differently and is not supported. Each layout was checked against real clusters of
//! PostgreSQL 10, 11, 12, 13, 15, 17 and 18 (`pg_control_system()`,
//! `pg_control_checkpoint()`, `pg_control_init()` and, for 15,
//! `pg_controldata`); the CRC only verifies when the struct size is right.
//!
//! | pg_control_version | PostgreSQL | what moved |
//! | --- | --- | --- |
//! | 1002 | 10 | `prevCheckPoint` still present: `checkPointCopy` at 48 |
//! | 1100 | 11 | `prevCheckPoint` removed; `CheckPoint.nextXidEpoch` + `nextXid` |
//! | 1201 | 12 | `CheckPoint.nextFullXid` (64-bit, one more pad); `max_wal_senders` added |
//! | 1300 | 13–16 | `float4ByVal` removed (same offsets as 1201) |
//! | 1700 | 17 | same offsets for the fields read here |
//! | 1800 | 18 | `CheckPoint.wal_level` fills padding; `default_char_signedness` added: `crc` at 292 |

use std::fmt;
use std::path::Path;

use crate::error::UserError;
use crate::postgres::{Lsn, is_valid_segment_size};

/// Size of the `pg_control` file on disk (`PG_CONTROL_FILE_SIZE`).
pub const PG_CONTROL_FILE_SIZE: usize = 8192;

/// The cluster state recorded in `pg_control` (`DBState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbState {
    StartingUp,
    ShutDown,
    ShutDownInRecovery,
    ShuttingDown,
    InCrashRecovery,
    InArchiveRecovery,
    InProduction,
    /// A value this port does not know.
    Unknown(u32),
}

impl DbState {
    fn from_raw(raw: u32) -> DbState {
        match raw {
            0 => DbState::StartingUp,
            1 => DbState::ShutDown,
            2 => DbState::ShutDownInRecovery,
            3 => DbState::ShuttingDown,
            4 => DbState::InCrashRecovery,
            5 => DbState::InArchiveRecovery,
            6 => DbState::InProduction,
            other => DbState::Unknown(other),
        }
    }

    /// True for a cleanly stopped cluster: "shut down", or "shut down in
    /// recovery" for a stopped standby.
    pub fn is_shut_down(self) -> bool {
        matches!(self, DbState::ShutDown | DbState::ShutDownInRecovery)
    }
}

impl fmt::Display for DbState {
    /// The wording of `pg_controldata`'s "Database cluster state".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DbState::StartingUp => "starting up",
            DbState::ShutDown => "shut down",
            DbState::ShutDownInRecovery => "shut down in recovery",
            DbState::ShuttingDown => "shutting down",
            DbState::InCrashRecovery => "in crash recovery",
            DbState::InArchiveRecovery => "in archive recovery",
            DbState::InProduction => "in production",
            DbState::Unknown(_) => "unrecognized status code",
        };
        f.write_str(s)
    }
}

/// The fields of `pg_control` that backups need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    /// `pg_control version number`.
    pub pg_control_version: u32,
    /// `Catalog version number`.
    pub catalog_version_no: u32,
    /// `Database system identifier`.
    pub system_identifier: u64,
    /// `Database cluster state`.
    pub state: DbState,
    /// `Latest checkpoint location`.
    pub checkpoint: Lsn,
    /// `Latest checkpoint's REDO location`.
    pub checkpoint_redo: Lsn,
    /// `Latest checkpoint's TimeLineID`.
    pub timeline: u32,
    /// `Bytes per WAL segment`.
    pub wal_segment_size: u64,
}

/// Byte offsets inside `ControlFileData` for one `pg_control_version`.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// `checkPointCopy.redo`; `ThisTimeLineID` follows it at +8.
    redo: usize,
    xlog_seg_size: usize,
    crc: usize,
}

const SYSTEM_IDENTIFIER: usize = 0;
const PG_CONTROL_VERSION: usize = 8;
const CATALOG_VERSION_NO: usize = 12;
const STATE: usize = 16;
const CHECKPOINT: usize = 32;

/// The supported `pg_control_version`s and their major versions.
pub const SUPPORTED_VERSIONS: [(u32, &str); 6] = [
    (1002, "10"),
    (1100, "11"),
    (1201, "12"),
    (1300, "13 to 16"),
    (1700, "17"),
    (1800, "18"),
];

fn layout(version: u32) -> Option<Layout> {
    let l = |redo, xlog_seg_size, crc| {
        Some(Layout {
            redo,
            xlog_seg_size,
            crc,
        })
    };
    match version {
        1002 => l(48, 228, 288),
        1100 => l(40, 220, 280),
        1201 | 1300 | 1700 => l(40, 228, 288),
        1800 => l(40, 228, 292),
        _ => None,
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads and checks `<data_dir>/global/pg_control`.
pub fn read_control_file(data_dir: &Path) -> Result<ControlData, UserError> {
    let path = data_dir.join("global").join("pg_control");
    let bytes = std::fs::read(&path).map_err(|e| {
        UserError::new("could not read the PostgreSQL control file")
            .detail(format!("Reading \"{}\" failed: {e}.", path.display()))
            .hint(format!(
                "Check that \"{}\" is the data directory of a PostgreSQL cluster and readable by this user.",
                data_dir.display()
            ))
    })?;
    parse_control_file(&bytes, &path.display().to_string())
}

/// Parses the bytes of a `pg_control` file; `what` names it in messages.
pub fn parse_control_file(bytes: &[u8], what: &str) -> Result<ControlData, UserError> {
    let corrupt = |detail: String| {
        UserError::new("the PostgreSQL control file is invalid")
            .detail(detail)
            .hint("The file may be damaged, or belong to a PostgreSQL version this program does not support (10 to 18).")
    };
    if bytes.len() < PG_CONTROL_VERSION + 8 {
        return Err(corrupt(format!(
            "\"{what}\" is only {} bytes long.",
            bytes.len()
        )));
    }
    let version = u32_at(bytes, PG_CONTROL_VERSION);
    let Some(layout) = layout(version) else {
        let supported = SUPPORTED_VERSIONS
            .iter()
            .map(|(v, major)| format!("{v} (PostgreSQL {major})"))
            .collect::<Vec<_>>()
            .join(", ");
        let swapped = version.swap_bytes();
        let detail = if version & 0xFFFF == 0 && swapped & 0xFFFF != 0 {
            format!(
                "\"{what}\" has pg_control version {version} (0x{version:08x}); the byte order of the file does not match this machine's."
            )
        } else {
            format!("\"{what}\" has pg_control version {version}.")
        };
        return Err(
            UserError::new("unsupported PostgreSQL control file version")
                .detail(detail)
                .hint(format!("Supported pg_control versions: {supported}.")),
        );
    };
    if bytes.len() < layout.crc + 4 {
        return Err(corrupt(format!(
            "\"{what}\" is only {} bytes long; pg_control version {version} needs {}.",
            bytes.len(),
            layout.crc + 4
        )));
    }
    let stored = u32_at(bytes, layout.crc);
    let computed = crc32c::crc32c(&bytes[..layout.crc]);
    if stored != computed {
        return Err(UserError::new("the PostgreSQL control file is corrupt")
            .detail(format!(
                "The CRC-32C of \"{what}\" is 0x{computed:08X} but the file records 0x{stored:08X}."
            ))
            .hint("The file is damaged, or was read while the server was writing it. pg_controldata shows the same problem; do not back up this cluster until it is resolved."));
    }
    let wal_segment_size = u64::from(u32_at(bytes, layout.xlog_seg_size));
    if !is_valid_segment_size(wal_segment_size) {
        return Err(corrupt(format!(
            "\"{what}\" records a WAL segment size of {wal_segment_size} bytes; it must be a power of two between 1 MiB and 1 GiB."
        )));
    }
    Ok(ControlData {
        pg_control_version: version,
        catalog_version_no: u32_at(bytes, CATALOG_VERSION_NO),
        system_identifier: u64_at(bytes, SYSTEM_IDENTIFIER),
        state: DbState::from_raw(u32_at(bytes, STATE)),
        checkpoint: Lsn(u64_at(bytes, CHECKPOINT)),
        checkpoint_redo: Lsn(u64_at(bytes, layout.redo)),
        timeline: u32_at(bytes, layout.redo + 8),
        wal_segment_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic control file of `version` with the given values, CRC set.
    fn synthetic(version: u32, redo: u64, tli: u32, seg: u32) -> Vec<u8> {
        let l = layout(version).unwrap();
        let mut b = vec![0u8; PG_CONTROL_FILE_SIZE];
        b[0..8].copy_from_slice(&0x1234_5678_9ABC_DEF0u64.to_ne_bytes());
        b[8..12].copy_from_slice(&version.to_ne_bytes());
        b[12..16].copy_from_slice(&202209061u32.to_ne_bytes());
        b[16..20].copy_from_slice(&1u32.to_ne_bytes());
        b[32..40].copy_from_slice(&(redo + 0x60).to_ne_bytes());
        b[l.redo..l.redo + 8].copy_from_slice(&redo.to_ne_bytes());
        b[l.redo + 8..l.redo + 12].copy_from_slice(&tli.to_ne_bytes());
        b[l.xlog_seg_size..l.xlog_seg_size + 4].copy_from_slice(&seg.to_ne_bytes());
        let crc = crc32c::crc32c(&b[..l.crc]);
        b[l.crc..l.crc + 4].copy_from_slice(&crc.to_ne_bytes());
        b
    }

    #[test]
    fn parses_every_supported_layout() {
        for (version, _) in SUPPORTED_VERSIONS {
            let b = synthetic(version, 0x0000_0005_3F00_0028, 26, 64 << 20);
            let c = parse_control_file(&b, "x").unwrap();
            assert_eq!(c.pg_control_version, version);
            assert_eq!(c.catalog_version_no, 202209061);
            assert_eq!(c.system_identifier, 0x1234_5678_9ABC_DEF0);
            assert_eq!(c.state, DbState::ShutDown);
            assert_eq!(c.checkpoint_redo, Lsn(0x0000_0005_3F00_0028));
            assert_eq!(c.checkpoint, Lsn(0x0000_0005_3F00_0088));
            assert_eq!(c.timeline, 26);
            assert_eq!(c.wal_segment_size, 64 << 20);
        }
    }

    #[test]
    fn crc_known_answer() {
        // CRC-32C (Castagnoli) check value, as PostgreSQL's pg_crc32c.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn any_flipped_byte_before_the_crc_is_detected() {
        let b = synthetic(1300, 0x0100_0028, 1, 16 << 20);
        for at in [0, 9, 17, 40, 48, 228, 287] {
            let mut bad = b.clone();
            bad[at] ^= 0x01;
            let err = parse_control_file(&bad, "x").unwrap_err();
            // Byte 9 changes the version itself.
            let expected = if at == 9 {
                "unsupported PostgreSQL control file version"
            } else {
                "the PostgreSQL control file is corrupt"
            };
            assert_eq!(err.msg, expected, "byte {at}");
        }
        // Bytes after the struct are not covered, like PostgreSQL.
        let mut tail = b.clone();
        tail[4000] = 0xFF;
        assert!(parse_control_file(&tail, "x").is_ok());
    }

    #[test]
    fn rejects_unknown_versions_short_files_and_bad_segment_sizes() {
        let mut b = synthetic(1300, 0x0100_0028, 1, 16 << 20);
        b[8..12].copy_from_slice(&960u32.to_ne_bytes());
        let err = parse_control_file(&b, "x").unwrap_err();
        assert_eq!(err.msg, "unsupported PostgreSQL control file version");
        assert!(err.detail.unwrap().contains("960"));
        assert!(err.hint.unwrap().contains("1800 (PostgreSQL 18)"));

        let mut swapped = synthetic(1300, 0x0100_0028, 1, 16 << 20);
        swapped[8..12].copy_from_slice(&1300u32.swap_bytes().to_ne_bytes());
        let err = parse_control_file(&swapped, "x").unwrap_err();
        assert!(
            err.detail.as_deref().unwrap().contains("byte order"),
            "{err}"
        );

        let b = synthetic(1300, 0x0100_0028, 1, 16 << 20);
        let err = parse_control_file(&b[..200], "x").unwrap_err();
        assert_eq!(err.msg, "the PostgreSQL control file is invalid");
        assert!(parse_control_file(&b[..10], "x").is_err());

        let b = synthetic(1300, 0x0100_0028, 1, 3 << 20);
        let err = parse_control_file(&b, "x").unwrap_err();
        assert!(err.detail.unwrap().contains("3145728"));
    }

    #[test]
    fn state_names_follow_pg_controldata() {
        assert_eq!(DbState::from_raw(1).to_string(), "shut down");
        assert_eq!(DbState::from_raw(2).to_string(), "shut down in recovery");
        assert_eq!(DbState::from_raw(6).to_string(), "in production");
        assert_eq!(DbState::from_raw(42), DbState::Unknown(42));
        assert!(DbState::ShutDown.is_shut_down());
        assert!(DbState::ShutDownInRecovery.is_shut_down());
        assert!(!DbState::InProduction.is_shut_down());
        assert!(!DbState::InCrashRecovery.is_shut_down());
    }
}
