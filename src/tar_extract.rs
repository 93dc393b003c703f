//! The tar side of `backup-fetch`: extracting one partition into the data
//! directory, refusing anything that would land outside it, and making the
//! result durable (spec §4, step 7).
//!
//! Reads ustar, GNU (`L`/`K` long names, base-256 numbers) and PAX archives,
//! so both WAL-E's (Python 3.4–3.7 GNU, 3.8+ PAX) and ours are accepted.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::ByteStream;

/// How to extract.
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Symlinks the restore set up (e.g. `pg_tblspc/16400`) through which
    /// extraction may write. Apart from these and an existing top-level
    /// `pg_wal`/`pg_xlog` link, symlinks are never followed.
    pub tablespace_links: Vec<String>,
    /// chown to the archive's uid/gid (only meaningful as root).
    pub restore_owner: bool,
}

/// What one extraction wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Regular files (and hard links) created.
    pub files: u64,
    /// File data bytes written.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry that would escape the destination; nothing was written for
    /// it and the extraction stopped.
    #[error("refusing to extract tar member {name:?}: {reason}")]
    Unsafe { name: String, reason: &'static str },
    /// The stream failed or is not a valid tar archive.
    #[error("could not read the tar stream: {0}")]
    Read(#[source] io::Error),
    #[error("could not extract to {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the extraction thread failed: {0}")]
    Join(String),
}

fn io_err(path: &Path, source: io::Error) -> ExtractError {
    ExtractError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Top-level WAL directories: never restored as symlinks (see [`extract`]).
const WAL_DIRS: [&str; 2] = ["pg_wal", "pg_xlog"];

fn is_wal_dir(comps: &[&OsStr]) -> bool {
    matches!(comps, [only] if WAL_DIRS.iter().any(|d| OsStr::new(d) == *only))
}

/// Buffer for reading the stream and copying file data.
const CHUNK: usize = 128 * 1024;
/// Directories are always created private: restored data is, and PostgreSQL
/// refuses data directories open to others.
const DIR_MODE: u32 = 0o700;

/// Extracts one tar stream into `dest` on a blocking thread; returns when
/// every extracted file and directory (and the parents of new entries) is
/// fsynced.
///
/// Rules: names that are absolute (other than the root entry `/`), contain
/// `..`, or would be written through a symlink other than one of
/// `options.tablespace_links` are refused and fail the extraction. Files get
/// the archived permission bits without setuid/setgid/sticky; new
/// directories get 0700 and existing ones keep their mode; mtimes are
/// restored (directories after their contents). An existing file, link or
/// empty directory at a file or symlink entry's path is replaced, never
/// written through, so extracting a partition again over itself works. A
/// directory entry where a symlink already is (say an operator's `pg_wal`
/// link) leaves the symlink alone.
///
/// A symlink entry named `pg_wal` or `pg_xlog` at the top is not restored:
/// it points at the backed-up server's WAL directory, which a restored
/// server on the same host would then recycle. It is treated as a directory
/// entry instead, and an existing top-level `pg_wal`/`pg_xlog` link that
/// leads to a directory (the operator's choice of WAL location) is written
/// through like a tablespace link.
///
/// After the end-of-archive blocks the rest of the stream is read and
/// discarded, so a corrupt compressed or encrypted trailer still fails.
pub async fn extract(
    stream: ByteStream,
    dest: &Path,
    options: ExtractOptions,
) -> Result<ExtractStats, ExtractError> {
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut extractor = Extractor::new(dest, &options);
        extractor.run(BufReader::with_capacity(CHUNK, reader))?;
        Ok(extractor.stats)
    })
    .await
    .map_err(|e| ExtractError::Join(e.to_string()))?
}

/// What an entry's name designates.
#[derive(Debug, PartialEq, Eq)]
enum Name<'a> {
    /// The destination directory itself: `/`, `""`, `.`, `./`.
    Root,
    /// Normal components under it.
    Path(Vec<&'a OsStr>),
}

/// Splits an archive name into normal components; `Err` gives why it is
/// unsafe.
fn parse_name(raw: &[u8]) -> Result<Name<'_>, &'static str> {
    if raw.first() == Some(&b'/') {
        // WAL-E wrote the cluster root as "/"; anything else absolute is out.
        return if raw.iter().all(|&b| b == b'/') {
            Ok(Name::Root)
        } else {
            Err("absolute path")
        };
    }
    let mut comps = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("the name contains `..`"),
            _ => comps.push(OsStr::from_bytes(comp)),
        }
    }
    Ok(if comps.is_empty() {
        Name::Root
    } else {
        Name::Path(comps)
    })
}

fn join_rel(comps: &[&OsStr]) -> Vec<u8> {
    let mut rel = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            rel.push(b'/');
        }
        rel.extend_from_slice(c.as_bytes());
    }
    rel
}

fn mtime_of(secs: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

struct Extractor {
    dest: PathBuf,
    /// Normalised `tablespace_links`.
    links: HashSet<Vec<u8>>,
    restore_owner: bool,
    /// Directories to fsync at the end: every extracted or created one and
    /// the parent of every new entry.
    dirs_to_sync: BTreeSet<PathBuf>,
    /// Directory entries' mtimes, set once their contents are in place.
    dir_times: Vec<(PathBuf, u64)>,
    stats: ExtractStats,
}

/// The parts of a header an entry needs once its data is being read.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

impl Extractor {
    fn new(dest: PathBuf, options: &ExtractOptions) -> Extractor {
        let links = options
            .tablespace_links
            .iter()
            .filter_map(|l| match parse_name(l.as_bytes()) {
                Ok(Name::Path(comps)) => Some(join_rel(&comps)),
                _ => None,
            })
            .collect();
        Extractor {
            dest,
            links,
            restore_owner: options.restore_owner,
            dirs_to_sync: BTreeSet::new(),
            dir_times: Vec::new(),
            stats: ExtractStats::default(),
        }
    }

    fn run<R: Read>(&mut self, reader: R) -> Result<(), ExtractError> {
        if fs::symlink_metadata(&self.dest).is_err() {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(&self.dest)
                .map_err(|e| io_err(&self.dest, e))?;
            if let Some(parent) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                self.dirs_to_sync.insert(parent.to_path_buf());
            }
            self.dirs_to_sync.insert(self.dest.clone());
        }
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(ExtractError::Read)? {
            let mut entry = entry.map_err(ExtractError::Read)?;
            self.entry(&mut entry)?;
        }
        // Drain WAL-E's record padding and whatever the decoders still have
        // to check (lzop's end marker, the OpenPGP MDC).
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(ExtractError::Read)?;
        self.finish()
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let header = entry.header();
        let kind = header.entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            return Ok(());
        }
        // Like Python's tarfile, an empty or garbled owner or time field
        // reads as 0; the mode matters too much to guess, so it must parse.
        let meta = Meta {
            mode: header.mode().map_err(ExtractError::Read)?,
            uid: header
                .uid()
                .ok()
                .and_then(|u| u32::try_from(u).ok())
                .unwrap_or(0),
            gid: header
                .gid()
                .ok()
                .and_then(|g| u32::try_from(g).ok())
                .unwrap_or(0),
            mtime: header.mtime().unwrap_or(0),
        };
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let unsafe_entry = |reason| ExtractError::Unsafe {
            name: shown.clone(),
            reason,
        };
        let name = parse_name(&raw).map_err(unsafe_entry)?;
        // Old-style regular entries ending in '/' are directories (tarfile
        // and GNU tar agree).
        let is_dir = kind.is_dir() || (kind.is_file() && raw.ends_with(b"/"));
        let comps = match name {
            Name::Root if is_dir => {
                // The destination exists already; only its mtime (and owner)
                // come from the archive, not its mode.
                let dest = self.dest.clone();
                if self.restore_owner {
                    std::os::unix::fs::chown(&dest, Some(meta.uid), Some(meta.gid))
                        .map_err(|e| io_err(&dest, e))?;
                }
                self.dir_times.push((dest.clone(), meta.mtime));
                self.dirs_to_sync.insert(dest);
                return Ok(());
            }
            Name::Root => return Err(unsafe_entry("only a directory can be the root entry")),
            Name::Path(comps) => comps,
        };
        let rel = join_rel(&comps);
        let (last, parents) = comps.split_last().expect("a path has components");
        let parent = self.prepare_parent(&shown, parents, true)?;
        let path = parent.join(last);

        if is_dir {
            return self.directory(&path, &parent, &meta);
        }
        if kind.is_symlink() && is_wal_dir(&comps) {
            let target = entry.link_name_bytes().unwrap_or_default();
            tracing::info!(
                target: "wal_e.tar_extract",
                detail = %format!(
                    "The backup's {shown} is a symlink to \"{}\", the original server's WAL; \
                     {} is made a directory instead, or kept if a directory or a link to one is already there.",
                    String::from_utf8_lossy(&target),
                    path.display()
                ),
                "not restoring the WAL directory symlink"
            );
            return self.directory(&path, &parent, &meta);
        }
        if self.links.contains(&rel) {
            // The restore made this tablespace link from the spec; the
            // archive does not get to replace it.
            if kind.is_symlink() {
                tracing::debug!(target: "wal_e.tar_extract", name = %shown, "keeping the tablespace link the restore made");
                return Ok(());
            }
            return Err(unsafe_entry("it would replace a tablespace link"));
        }
        if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| unsafe_entry("a symlink without a target"))?
                .into_owned();
            return self.symlink(&path, &parent, OsStr::from_bytes(&target), &meta);
        }
        if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| unsafe_entry("a hard link without a target"))?
                .into_owned();
            let target_comps = match parse_name(&target) {
                Ok(Name::Path(comps)) => comps,
                Ok(Name::Root) => return Err(unsafe_entry("a hard link to a directory")),
                Err(_) => return Err(unsafe_entry("a hard link to outside the destination")),
            };
            let (target_last, target_parents) = target_comps.split_last().expect("non-empty");
            let target_path = self
                .prepare_parent(&shown, target_parents, false)?
                .join(target_last);
            return self.hard_link(&target_path, &path, &parent);
        }
        if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            let size = entry.size();
            return self.file(entry, size, &path, &parent, &meta);
        }
        // Devices and FIFOs: WAL-E never archives them and a data directory
        // does not need them.
        tracing::warn!(target: "wal_e.tar_extract", name = %shown, "skipping a tar member of an unsupported type");
        Ok(())
    }

    /// Walks `comps` under the destination, checking each existing component
    /// with `lstat`: directories pass, symlinks only if they are tablespace
    /// links or the top-level `pg_wal`/`pg_xlog` and lead to a directory.
    /// Missing ones are created (0700) when `create`. Returns the path of the
    /// last.
    fn prepare_parent(
        &mut self,
        name: &str,
        comps: &[&OsStr],
        create: bool,
    ) -> Result<PathBuf, ExtractError> {
        let mut path = self.dest.clone();
        for i in 0..comps.len() {
            path.push(comps[i]);
            // Two tries: a concurrent extraction may create it in between.
            for attempt in 0..2 {
                match fs::symlink_metadata(&path) {
                    Ok(md) if md.is_dir() => break,
                    Ok(md) if md.file_type().is_symlink() => {
                        let allowed = self.links.contains(&join_rel(&comps[..=i]))
                            || is_wal_dir(&comps[..=i]);
                        if !allowed {
                            return Err(ExtractError::Unsafe {
                                name: name.to_string(),
                                reason: "it would be written through a symlink",
                            });
                        }
                        match fs::metadata(&path) {
                            Ok(target) if target.is_dir() => break,
                            Ok(_) => {
                                return Err(io_err(
                                    &path,
                                    io::Error::other("the link leads to a non-directory"),
                                ));
                            }
                            Err(e) => return Err(io_err(&path, e)),
                        }
                    }
                    Ok(_) => {
                        return Err(io_err(
                            &path,
                            io::Error::other("exists and is not a directory"),
                        ));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                        match self.make_dir(&path) {
                            Ok(()) => break,
                            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt == 0 => {
                                continue;
                            }
                            Err(e) => return Err(io_err(&path, e)),
                        }
                    }
                    Err(e) => return Err(io_err(&path, e)),
                }
            }
        }
        Ok(path)
    }

    /// Creates one directory, 0700 whatever the umask, and remembers it and
    /// its parent for fsync.
    fn make_dir(&mut self, path: &Path) -> io::Result<()> {
        DirBuilder::new().mode(DIR_MODE).create(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))?;
        self.dirs_to_sync.insert(path.to_path_buf());
        if let Some(parent) = path.parent() {
            self.dirs_to_sync.insert(parent.to_path_buf());
        }
        Ok(())
    }

    fn directory(&mut self, path: &Path, parent: &Path, meta: &Meta) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => {}
            Ok(md) if md.file_type().is_symlink() => {
                // Left as it is and not followed: an operator's pg_wal link
                // or a tablespace link stays what the restore made it.
                tracing::debug!(target: "wal_e.tar_extract", path = %path.display(), "keeping an existing symlink in place of a directory");
                return Ok(());
            }
            Ok(_) => {
                return Err(io_err(
                    path,
                    io::Error::other("exists and is not a directory"),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match self.make_dir(path) {
                Ok(()) => {}
                // A concurrent extraction made it first.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
                Err(e) => return Err(io_err(path, e)),
            },
            Err(e) => return Err(io_err(path, e)),
        }
        if self.restore_owner {
            std::os::unix::fs::chown(path, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err(path, e))?;
        }
        self.dirs_to_sync.insert(path.to_path_buf());
        self.dirs_to_sync.insert(parent.to_path_buf());
        self.dir_times.push((path.to_path_buf(), meta.mtime));
        Ok(())
    }

    /// Removes whatever non-directory (or empty directory) is at `path`, so
    /// the new entry is created, never written through an old symlink.
    fn clear(path: &Path) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => fs::remove_dir(path).map_err(|e| io_err(path, e)),
            Ok(_) => fs::remove_file(path).map_err(|e| io_err(path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(path, e)),
        }
    }

    fn file<R: Read>(
        &mut self,
        data: &mut R,
        size: u64,
        path: &Path,
        parent: &Path,
        meta: &Meta,
    ) -> Result<(), ExtractError> {
        // Never setuid, setgid or sticky: nothing in a data directory is.
        let perm = meta.mode & 0o777;
        Self::clear(path)?;
        // O_EXCL: if anything appeared at the path since, fail rather than
        // follow it.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(perm)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        let mut buf = vec![0u8; CHUNK];
        let mut written = 0u64;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ExtractError::Read(e)),
            };
            file.write_all(&buf[..n]).map_err(|e| io_err(path, e))?;
            written += n as u64;
        }
        if written != size {
            return Err(ExtractError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the stream ended inside {}", path.display()),
            )));
        }
        if self.restore_owner {
            std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err(path, e))?;
        }
        // After chown (which may clear bits) and regardless of the umask.
        file.set_permissions(fs::Permissions::from_mode(perm))
            .map_err(|e| io_err(path, e))?;
        if let Some(t) = mtime_of(meta.mtime) {
            file.set_modified(t).map_err(|e| io_err(path, e))?;
        }
        file.sync_all().map_err(|e| io_err(path, e))?;
        self.dirs_to_sync.insert(parent.to_path_buf());
        self.stats.files += 1;
        self.stats.bytes += written;
        Ok(())
    }

    fn symlink(
        &mut self,
        path: &Path,
        parent: &Path,
        target: &OsStr,
        meta: &Meta,
    ) -> Result<(), ExtractError> {
        Self::clear(path)?;
        std::os::unix::fs::symlink(target, path).map_err(|e| io_err(path, e))?;
        if self.restore_owner {
            std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err(path, e))?;
        }
        self.dirs_to_sync.insert(parent.to_path_buf());
        Ok(())
    }

    fn hard_link(&mut self, target: &Path, path: &Path, parent: &Path) -> Result<(), ExtractError> {
        if target == path {
            return Ok(());
        }
        match fs::symlink_metadata(target) {
            Ok(md) if md.is_file() => {}
            Ok(_) => {
                return Err(io_err(
                    target,
                    io::Error::other("a hard link's target must be a regular file"),
                ));
            }
            Err(e) => return Err(io_err(target, e)),
        }
        Self::clear(path)?;
        fs::hard_link(target, path).map_err(|e| io_err(path, e))?;
        self.dirs_to_sync.insert(parent.to_path_buf());
        self.stats.files += 1;
        Ok(())
    }

    /// Directory mtimes, now that their contents are written, then fsync of
    /// every directory touched, deepest first.
    fn finish(&mut self) -> Result<(), ExtractError> {
        for (path, mtime) in self.dir_times.iter().rev() {
            if let Some(t) = mtime_of(*mtime) {
                let dir = File::open(path).map_err(|e| io_err(path, e))?;
                dir.set_modified(t).map_err(|e| io_err(path, e))?;
            }
        }
        let mut dirs: Vec<&PathBuf> = self.dirs_to_sync.iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(dir, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(name: &str) -> Result<Vec<String>, &'static str> {
        parse_name(name.as_bytes()).map(|n| match n {
            Name::Root => vec![],
            Name::Path(c) => c.iter().map(|c| c.to_string_lossy().into_owned()).collect(),
        })
    }

    #[test]
    fn root_entry_spellings_all_mean_the_destination() {
        for root in ["/", "", ".", "./", "//"] {
            assert_eq!(parse_name(root.as_bytes()), Ok(Name::Root), "{root:?}");
        }
    }

    #[test]
    fn names_are_split_into_normal_components() {
        assert_eq!(comps("base/1/1259").unwrap(), ["base", "1", "1259"]);
        assert_eq!(comps("./base//1/").unwrap(), ["base", "1"]);
    }

    #[test]
    fn absolute_and_parent_names_are_unsafe() {
        for bad in ["/etc/evil", "../evil", "a/../../evil", "a/..", "//etc"] {
            assert!(parse_name(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
    }
}
