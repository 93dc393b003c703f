//! Prefetched segments, `.wal-e/prefetch/<seg>`, each with a record beside
//! it, `<seg>.json`, of where it was downloaded from and what it decoded to:
//! `{"url": …, "size": …, "sha256": …}` (SHA-256 of the decoded bytes, in
//! lower-case hex).
//!
//! wal-fetch hands a prefetched copy to PostgreSQL only when it provably is
//! the archive's object for that name. A copy left by an earlier recovery on
//! a reused WAL volume, by another cluster or prefix, or damaged on disk is
//! discarded with a warning, and the segment is downloaded directly.

use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tempfile::{NamedTempFile, TempPath};

use super::{Decoded, PrefetchDirs, make_private_dir};
use crate::durable::{parent_dir, sync_dir};
use crate::layout::SegmentName;
use crate::postgres::{LONG_PAGE_HEADER_SIZE, LongPageHeader, segment_start};

/// What a prefetch worker records beside the file it publishes.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    url: String,
    size: u64,
    sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Publishes `data`, the complete and fsynced download of `seg` from `url`
/// (a file in `running/<seg>/`), under its name, replacing any copy there,
/// then its record; both atomically, by rename.
pub(super) fn publish(
    dirs: &PrefetchDirs,
    seg: &str,
    data: NamedTempFile,
    decoded: &Decoded,
    url: &str,
) -> io::Result<()> {
    data.persist(dirs.ready(seg)).map_err(|e| e.error)?;
    let record = Record {
        url: url.to_string(),
        size: decoded.len,
        sha256: hex(&decoded.sha256),
    };
    let mut temp = tempfile::Builder::new()
        .prefix("tmp")
        .tempfile_in(dirs.running(seg))?;
    temp.write_all(&serde_json::to_vec(&record)?)?;
    temp.as_file().sync_all()?;
    temp.persist(dirs.record(seg)).map_err(|e| e.error)?;
    sync_dir(&dirs.root())
}

/// Whether a copy of `seg` from `url` was prefetched, by its record: a
/// cheap look, to start a prefetch that replaces anything else. [`take`]
/// checks the copy itself.
pub(super) fn is_current(dirs: &PrefetchDirs, seg: &str, url: &str) -> bool {
    let Ok(bytes) = std::fs::read(dirs.record(seg)) else {
        return false;
    };
    serde_json::from_slice::<Record>(&bytes).is_ok_and(|record| {
        record.url == url
            && std::fs::metadata(dirs.ready(seg)).is_ok_and(|m| m.len() == record.size)
    })
}

/// Moves the prefetched copy of `segment` to `dest` if it provably is the
/// object at `url`; true when it did. Whatever else is there is discarded
/// with a warning; then, as when nothing was prefetched, the caller
/// downloads the segment.
pub(super) fn take(dirs: &PrefetchDirs, segment: SegmentName, url: &str, dest: &Path) -> bool {
    let seg = segment.to_string();
    let warn = |msg: &str, why: String| {
        tracing::warn!(
            detail = %format!("{}: {why}.", dirs.ready(&seg).display()),
            hint = "The segment is downloaded from the archive instead.",
            "{msg}"
        );
    };
    let claimed = match claim(dirs, &seg) {
        Ok(Some(claimed)) => claimed,
        Ok(None) => return false,
        Err(e) => {
            warn("could not take a prefetched WAL file", e.to_string());
            return false;
        }
    };
    // Whatever record is there now: any pairing of copy and record that is
    // not the archive's object fails the checks.
    let record = std::fs::read(dirs.record(&seg));
    let _ = std::fs::remove_file(dirs.record(&seg));
    let verdict = match record {
        Ok(record) => verify(&claimed, &record, segment, url),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err("it has no record of where it came from".to_string())
        }
        Err(e) => Err(format!("its record cannot be read: {e}")),
    };
    if let Err(why) = verdict {
        warn("discarding a prefetched WAL file", why);
        return false;
    }
    match claimed
        .persist(dest)
        .map_err(|e| e.error)
        .and_then(|()| sync_dir(parent_dir(dest)))
    {
        Ok(()) => true,
        Err(e) => {
            warn(
                "could not take a prefetched WAL file",
                format!("moving it to {}: {e}", dest.display()),
            );
            false
        }
    }
}

/// Moves the prefetched copy of `seg`, if any, into the staging directory
/// under a name of its own, so that nothing can change or take it while it
/// is checked; it is removed when dropped.
fn claim(dirs: &PrefetchDirs, seg: &str) -> io::Result<Option<TempPath>> {
    let ready = dirs.ready(seg);
    if std::fs::symlink_metadata(&ready).is_err() {
        return Ok(None);
    }
    make_private_dir(&dirs.staging())?;
    let claimed = tempfile::Builder::new()
        .prefix("prefetched.")
        .tempfile_in(dirs.staging())?
        .into_temp_path();
    match std::fs::rename(&ready, &claimed) {
        Ok(()) => {}
        // Another wal-fetch took it first.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    // Its time is the prefetch's: a concurrent sweep must not take it for
    // the leftover of a killed run.
    if std::fs::symlink_metadata(&claimed)?.is_file() {
        std::fs::File::options()
            .write(true)
            .open(&claimed)?
            .set_modified(SystemTime::now())?;
    }
    Ok(Some(claimed))
}

/// Why `path`, with `record` beside it, is not the archive's object for
/// `segment` at `url`, if it is not.
fn verify(path: &Path, record: &[u8], segment: SegmentName, url: &str) -> Result<(), String> {
    let record: Record =
        serde_json::from_slice(record).map_err(|e| format!("its record is not valid: {e}"))?;
    if record.url != url {
        return Err(format!("it came from {}, not from {url}", record.url));
    }
    if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return Err("it is not a regular file".to_string());
    }
    let mut file = std::fs::File::open(path).map_err(|e| format!("it cannot be read: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("it cannot be read: {e}"))?
        .len();
    if len != record.size {
        return Err(format!(
            "it has {len} bytes, its record says {}",
            record.size
        ));
    }
    let mut first = [0u8; LONG_PAGE_HEADER_SIZE];
    file.read_exact(&mut first)
        .map_err(|e| format!("its first page cannot be read: {e}"))?;
    let page = LongPageHeader::parse(&first).ok_or(
        "its first page is not the start of a WAL segment of PostgreSQL 9.6 to 18".to_string(),
    )?;
    if len != page.segment_size {
        return Err(format!(
            "it has {len} bytes, not the segment size {} its first page names",
            page.segment_size
        ));
    }
    if page.timeline != segment.timeline {
        return Err(format!(
            "its first page is on timeline {}, not on timeline {}",
            page.timeline, segment.timeline
        ));
    }
    let start = segment_start(segment, page.segment_size)
        .ok_or(format!("{segment} names no segment of that size"))?;
    if page.page_address != start {
        return Err(format!(
            "its first page is at {}, not at the start of {segment}, {start}",
            page.page_address
        ));
    }
    file.rewind()
        .map_err(|e| format!("it cannot be read: {e}"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("it cannot be read: {e}")),
        }
    }
    if hex(&hasher.finalize()) != record.sha256 {
        return Err(
            "its content does not match the SHA-256 recorded when it was downloaded".to_string(),
        );
    }
    Ok(())
}
