//! The long page header PostgreSQL writes at the start of every WAL segment
//! (`XLogLongPageHeaderData` in `src/include/access/xlog_internal.h`): it
//! names the segment's timeline, start address and size, so a file can be
//! checked against the segment name it is meant to be.
//!
//! | offset | field | type |
//! | --- | --- | --- |
//! | 0 | `xlp_magic` | u16 |
//! | 2 | `xlp_info` | u16 |
//! | 4 | `xlp_tli` | u32 |
//! | 8 | `xlp_pageaddr` | u64 |
//! | 16 | `xlp_rem_len` | u32, then 4 bytes of padding |
//! | 24 | `xlp_sysid` | u64 |
//! | 32 | `xlp_seg_size` | u32 |
//! | 36 | `xlp_xlog_blcksz` | u32 |
//!
//! in the server's byte order, as `pg_control`; the layout is the same from
//! PostgreSQL 9.6 to 18 (checked on a segment written by 15).

use super::{Lsn, is_valid_segment_size};

/// Bytes of the long page header (`SizeOfXLogLongPHD`).
pub const LONG_PAGE_HEADER_SIZE: usize = 40;

/// `xlp_info` flag of a long header (`XLP_LONG_HEADER`).
const XLP_LONG_HEADER: u16 = 0x0002;

/// `XLOG_PAGE_MAGIC`, the WAL format version, of each supported release.
pub const SUPPORTED_PAGE_MAGICS: [(u16, &str); 10] = [
    (0xD093, "9.6"),
    (0xD097, "10"),
    (0xD098, "11"),
    (0xD101, "12"),
    (0xD106, "13"),
    (0xD10D, "14"),
    (0xD110, "15"),
    (0xD113, "16"),
    (0xD116, "17"),
    (0xD118, "18"),
];

/// The fields of a segment's first page header that identify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    pub timeline: u32,
    /// Where the page, and so the segment, starts.
    pub page_address: Lsn,
    /// Bytes per segment of the cluster that wrote it.
    pub segment_size: u64,
}

impl LongPageHeader {
    /// Reads the header at the start of `page`: `None` unless it has the
    /// magic of a supported release, the long-header flag and a valid
    /// segment size.
    pub fn parse(page: &[u8]) -> Option<LongPageHeader> {
        let header = page.get(..LONG_PAGE_HEADER_SIZE)?;
        let u16_at = |at: usize| u16::from_ne_bytes([header[at], header[at + 1]]);
        let u32_at =
            |at: usize| u32::from_ne_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let u64_at =
            |at: usize| u64::from_ne_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let magic = u16_at(0);
        let segment_size = u64::from(u32_at(32));
        let valid = SUPPORTED_PAGE_MAGICS.iter().any(|(m, _)| *m == magic)
            && u16_at(2) & XLP_LONG_HEADER != 0
            && is_valid_segment_size(segment_size);
        valid.then(|| LongPageHeader {
            timeline: u32_at(4),
            page_address: Lsn(u64_at(8)),
            segment_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 40 bytes of `000000010000000000000001` as initdb of
    /// PostgreSQL 15 wrote it (x86-64).
    const PG15_FIRST_PAGE: [u8; 40] = [
        0x10, 0xd1, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe0, 0x43, 0xfd, 0x76, 0x2d, 0x35,
        0x11, 0x6b, 0x00, 0x00, 0x00, 0x01, 0x00, 0x20, 0x00, 0x00,
    ];

    #[test]
    fn reads_a_segment_written_by_postgresql_15() {
        assert_eq!(
            LongPageHeader::parse(&PG15_FIRST_PAGE),
            Some(LongPageHeader {
                timeline: 1,
                page_address: Lsn(0x0100_0000),
                segment_size: 16 << 20,
            })
        );
    }

    #[test]
    fn refuses_what_is_not_a_segment_start() {
        let with = |at: usize, bytes: &[u8]| {
            let mut page = PG15_FIRST_PAGE;
            page[at..at + bytes.len()].copy_from_slice(bytes);
            LongPageHeader::parse(&page)
        };
        assert_eq!(with(0, &0xD07Eu16.to_ne_bytes()), None, "9.4's magic");
        assert_eq!(with(2, &0u16.to_ne_bytes()), None, "a short header");
        assert_eq!(with(32, &(24u32 << 20).to_ne_bytes()), None, "24 MiB");
        assert_eq!(LongPageHeader::parse(&PG15_FIRST_PAGE[..39]), None);
        assert!(with(2, &6u16.to_ne_bytes()).is_some(), "other flags too");
    }
}
