//! The tar side of `backup-fetch`: extracting one partition into the data
//! directory, refusing anything that would land outside it, and making the
//! result durable (spec §4, step 7).
//!
//! Reads ustar, GNU (`L`/`K` long names, base-256 numbers) and PAX archives,
//! so both WAL-E's (Python 3.4–3.7 GNU, 3.8+ PAX) and ours are accepted.
//!
//! # Why nothing lands outside the destination
//!
//! Partitions are extracted in parallel into one tree, and whoever can write
//! to the store writes the archives.  Checking a path and then using it
//! would race: a symlink one partition makes between another's check and its
//! write would redirect the write (or a chown, or a timestamp) anywhere.  So
//! no path beneath the destination is ever handed to the kernel whole: the
//! destination is opened once, every directory an entry needs is reached
//! from it one component at a time with `openat(O_DIRECTORY|O_NOFOLLOW)`
//! relative to the directory opened before, and the entry is made relative
//! to its parent's descriptor without following a symlink at its own name
//! (`O_CREAT|O_EXCL`, `mkdirat`, `symlinkat`, `linkat` without
//! `AT_SYMLINK_FOLLOW`, `AT_SYMLINK_NOFOLLOW`); ownership and times are set
//! through descriptors.  Whatever other partitions do meanwhile, each step
//! lands in what was a real directory beneath the destination when it was
//! opened.  This is `openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)` done by
//! hand, for two reasons: it works on every kernel, and two kinds of links
//! must be stepped through — the tablespace links the restore made and a
//! top-level `pg_wal`/`pg_xlog` link the operator made.  No entry can
//! create or replace a link at either place (entries with those names are
//! refused, kept out, or made directories), so what is followed there is
//! still the restore's or the operator's link.  (Deferring every symlink to
//! a last pass would also work, but needs state across partitions and
//! leaves a restore killed before that pass with symlinks missing.)
//!
//! The tar reader keeps GNU long names and PAX records in memory; a
//! member's headers, those included, may take [`HEADER_LIMIT`] bytes.

use std::cell::Cell;
use std::collections::{BTreeSet, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{DirBuilder, File};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;
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
/// `options.tablespace_links` are refused and fail the extraction, and so
/// are devices, FIFOs and other special files. Files get
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
/// through like a tablespace link. Any other entry of that name is refused.
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
        let mut extractor = Extractor::open(dest, &options)?;
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

/// Most bytes the tar reader may take to find the next member: its headers,
/// GNU long name and link records and PAX records, which it holds in memory.
/// Real ones take a few KiB.
pub const HEADER_LIMIT: u64 = 1 << 20;

/// The stream under the tar reader.  While `budget` is set (the tar reader
/// is looking for the next member) at most that many bytes are read; the
/// members' data, streamed to disk, is not limited.
struct Metered<R> {
    inner: R,
    budget: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.budget.get() else {
            return self.inner.read(buf);
        };
        if left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a tar member's headers (long names and PAX records included) exceed {HEADER_LIMIT} bytes"
                ),
            ));
        }
        let room = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..room])?;
        self.budget.set(Some(left - n as u64));
        Ok(n)
    }
}

/// Components of a path beneath the destination.
type Rel = Vec<OsString>;

fn rel_of(comps: &[&OsStr]) -> Rel {
    comps.iter().map(|c| c.to_os_string()).collect()
}

fn file_type(stat: &rustix::fs::Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

/// `-1` means "unchanged" to chown; an archive cannot ask for it.
fn owner(uid: u32, gid: u32) -> (Option<Uid>, Option<Gid>) {
    (
        (uid != u32::MAX).then(|| Uid::from_raw(uid)),
        (gid != u32::MAX).then(|| Gid::from_raw(gid)),
    )
}

/// Flags to open a directory beneath the destination, not through a symlink.
const DIR_NOFOLLOW: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

struct Extractor {
    dest: PathBuf,
    /// The destination, opened once; everything is reached from it.
    root: OwnedFd,
    /// Normalised `tablespace_links`.
    links: HashSet<Vec<u8>>,
    restore_owner: bool,
    /// The destination's parent, when the destination was created.
    dest_parent: Option<PathBuf>,
    /// Directories to fsync at the end: every extracted or created one and
    /// the parent of every new entry.
    dirs_to_sync: BTreeSet<Rel>,
    /// Directory entries' mtimes, set once their contents are in place.
    dir_times: Vec<(Rel, u64)>,
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
    /// Creates the destination (0700) if missing and opens it.
    fn open(dest: PathBuf, options: &ExtractOptions) -> Result<Extractor, ExtractError> {
        let mut dest_parent = None;
        if std::fs::symlink_metadata(&dest).is_err() {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(&dest)
                .map_err(|e| io_err(&dest, e))?;
            dest_parent = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf);
        }
        // The destination itself is the operator's choice: a link to it is
        // followed.
        let root = rustix::fs::open(
            &dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(&dest, e.into()))?;
        let links = options
            .tablespace_links
            .iter()
            .filter_map(|l| match parse_name(l.as_bytes()) {
                Ok(Name::Path(comps)) => Some(join_rel(&comps)),
                _ => None,
            })
            .collect();
        let mut dirs_to_sync = BTreeSet::new();
        if dest_parent.is_some() {
            dirs_to_sync.insert(Rel::new());
        }
        Ok(Extractor {
            dest,
            root,
            links,
            restore_owner: options.restore_owner,
            dest_parent,
            dirs_to_sync,
            dir_times: Vec::new(),
            stats: ExtractStats::default(),
        })
    }

    fn run<R: Read>(&mut self, reader: R) -> Result<(), ExtractError> {
        let budget = Rc::new(Cell::new(None));
        let mut archive = tar::Archive::new(Metered {
            inner: reader,
            budget: Rc::clone(&budget),
        });
        let mut entries = archive.entries().map_err(ExtractError::Read)?;
        loop {
            budget.set(Some(HEADER_LIMIT));
            let next = entries.next();
            budget.set(None);
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(ExtractError::Read)?;
            self.entry(&mut entry)?;
            // Whatever the entry left unread (a directory's or a link's
            // data) is skipped here, outside the header budget.
            io::copy(&mut entry, &mut io::sink()).map_err(ExtractError::Read)?;
        }
        // Drain WAL-E's record padding and whatever the decoders still have
        // to check (lzop's end marker, the OpenPGP MDC).
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(ExtractError::Read)?;
        self.finish()
    }

    /// Where `comps` is, for messages.
    fn path_of<C: AsRef<OsStr>>(&self, comps: &[C]) -> PathBuf {
        let mut path = self.dest.clone();
        path.extend(comps.iter().map(AsRef::as_ref));
        path
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
                if self.restore_owner {
                    std::os::unix::fs::fchown(&self.root, Some(meta.uid), Some(meta.gid))
                        .map_err(|e| io_err(&self.dest, e))?;
                }
                self.dir_times.push((Rel::new(), meta.mtime));
                self.dirs_to_sync.insert(Rel::new());
                return Ok(());
            }
            Name::Root => return Err(unsafe_entry("only a directory can be the root entry")),
            Name::Path(comps) => comps,
        };
        let rel = join_rel(&comps);
        let parents = &comps[..comps.len() - 1];
        let parent = self.open_dir(&shown, parents, true)?;
        let parent = parent.as_fd();

        if is_dir {
            return self.directory(parent, &shown, &comps, &meta);
        }
        if is_wal_dir(&comps) {
            if !kind.is_symlink() {
                // Nothing may take the place of the WAL directory: an
                // operator's link there is written through.
                return Err(unsafe_entry("only a directory can be the WAL directory"));
            }
            let target = entry.link_name_bytes().unwrap_or_default();
            tracing::info!(
                target: "wal_e.tar_extract",
                detail = %format!(
                    "The backup's {shown} is a symlink to \"{}\", the original server's WAL; \
                     {} is made a directory instead, or kept if a directory or a link to one is already there.",
                    String::from_utf8_lossy(&target),
                    self.path_of(&comps).display()
                ),
                "not restoring the WAL directory symlink"
            );
            return self.directory(parent, &shown, &comps, &meta);
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
            return self.symlink(parent, &comps, OsStr::from_bytes(&target), &meta);
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
            if target_comps == comps {
                return Ok(());
            }
            let (target_last, target_parents) = target_comps.split_last().expect("non-empty");
            let target_parent = self.open_dir(&shown, target_parents, false)?;
            let target_path = self.path_of(&target_comps);
            return self.hard_link(
                (target_parent.as_fd(), target_last, &target_path),
                parent,
                &comps,
            );
        }
        if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            let size = entry.size();
            return self.file(entry, size, parent, &comps, &meta);
        }
        // Devices and FIFOs: WAL-E never archives them, a data directory
        // does not hold them, and a device node is a way out of it.
        Err(unsafe_entry(
            "it is a device, FIFO or other special file, which a data directory never holds",
        ))
    }

    /// Opens the directory `comps` beneath the destination, one component at
    /// a time, never through a symlink other than a tablespace link or the
    /// top-level `pg_wal`/`pg_xlog` (see the module documentation); missing
    /// ones are created (0700) when `create`.
    fn open_dir(
        &mut self,
        name: &str,
        comps: &[&OsStr],
        create: bool,
    ) -> Result<OwnedFd, ExtractError> {
        let mut dir = self.root.try_clone().map_err(|e| io_err(&self.dest, e))?;
        for i in 0..comps.len() {
            dir = self.open_step(dir.as_fd(), name, &comps[..=i], create)?;
        }
        Ok(dir)
    }

    /// Opens the last of `comps` in `parent` (the directory of the others).
    fn open_step(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &str,
        comps: &[&OsStr],
        create: bool,
    ) -> Result<OwnedFd, ExtractError> {
        let (comp, parents) = comps.split_last().expect("non-empty");
        let path = self.path_of(comps);
        let mut created = false;
        // Three tries: concurrent extractions may create (or, for a hostile
        // archive, remove) it in between.
        for _ in 0..3 {
            match rustix::fs::openat(parent, *comp, DIR_NOFOLLOW, Mode::empty()) {
                Ok(dir) => {
                    if created {
                        // 0700 whatever the umask.
                        rustix::fs::fchmod(&dir, Mode::from_bits_truncate(DIR_MODE))
                            .map_err(|e| io_err(&path, e.into()))?;
                    }
                    return Ok(dir);
                }
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(parent, *comp, Mode::from_bits_truncate(DIR_MODE)) {
                        Ok(()) => {
                            created = true;
                            self.dirs_to_sync.insert(rel_of(comps));
                            self.dirs_to_sync.insert(rel_of(parents));
                        }
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(io_err(&path, e.into())),
                    }
                }
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return self.through_link(parent, name, comps, &path);
                }
                Err(e) => return Err(io_err(&path, e.into())),
            }
        }
        Err(io_err(
            &path,
            io::Error::other("it kept disappearing while being created"),
        ))
    }

    /// `comps` is not a directory: only a tablespace link or the top-level
    /// `pg_wal`/`pg_xlog` link, leading to a directory, may be stepped
    /// through.
    fn through_link(
        &self,
        parent: BorrowedFd<'_>,
        name: &str,
        comps: &[&OsStr],
        path: &Path,
    ) -> Result<OwnedFd, ExtractError> {
        let comp = *comps.last().expect("non-empty");
        let stat = rustix::fs::statat(parent, comp, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err(path, e.into()))?;
        if file_type(&stat) != FileType::Symlink {
            return Err(io_err(
                path,
                io::Error::other("exists and is not a directory"),
            ));
        }
        if !(self.links.contains(&join_rel(comps)) || is_wal_dir(comps)) {
            return Err(ExtractError::Unsafe {
                name: name.to_string(),
                reason: "it would be written through a symlink",
            });
        }
        rustix::fs::openat(
            parent,
            comp,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOTDIR => io_err(path, io::Error::other("the link leads to a non-directory")),
            e => io_err(path, e.into()),
        })
    }

    fn directory(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &str,
        comps: &[&OsStr],
        meta: &Meta,
    ) -> Result<(), ExtractError> {
        let last = *comps.last().expect("non-empty");
        if let Ok(stat) = rustix::fs::statat(parent, last, AtFlags::SYMLINK_NOFOLLOW)
            && file_type(&stat) == FileType::Symlink
        {
            // Left as it is and not followed: an operator's pg_wal link
            // or a tablespace link stays what the restore made it.
            tracing::debug!(target: "wal_e.tar_extract", path = %self.path_of(comps).display(), "keeping an existing symlink in place of a directory");
            return Ok(());
        }
        let dir = self.open_step(parent, name, comps, true)?;
        if self.restore_owner {
            std::os::unix::fs::fchown(&dir, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err(&self.path_of(comps), e))?;
        }
        let rel = rel_of(comps);
        self.dirs_to_sync.insert(rel[..rel.len() - 1].to_vec());
        self.dirs_to_sync.insert(rel.clone());
        self.dir_times.push((rel, meta.mtime));
        Ok(())
    }

    /// Removes whatever non-directory (or empty directory) is at `name` in
    /// `parent`, so the new entry is created, never written through an old
    /// symlink.
    fn clear(parent: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<(), ExtractError> {
        let removed = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if file_type(&stat) == FileType::Directory => {
                rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
            }
            Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty()),
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(path, e.into())),
        }
    }

    fn file<R: Read>(
        &mut self,
        data: &mut R,
        size: u64,
        parent: BorrowedFd<'_>,
        comps: &[&OsStr],
        meta: &Meta,
    ) -> Result<(), ExtractError> {
        let last = *comps.last().expect("non-empty");
        let path = self.path_of(comps);
        // Never setuid, setgid or sticky: nothing in a data directory is.
        let perm = meta.mode & 0o777;
        Self::clear(parent, last, &path)?;
        // O_EXCL: if anything appeared at the path since, fail rather than
        // follow it.
        let mut file = File::from(
            rustix::fs::openat(
                parent,
                last,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_bits_truncate(perm),
            )
            .map_err(|e| io_err(&path, e.into()))?,
        );
        let mut buf = vec![0u8; CHUNK];
        let mut written = 0u64;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ExtractError::Read(e)),
            };
            file.write_all(&buf[..n]).map_err(|e| io_err(&path, e))?;
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
                .map_err(|e| io_err(&path, e))?;
        }
        // After chown (which may clear bits) and regardless of the umask.
        file.set_permissions(std::fs::Permissions::from_mode(perm))
            .map_err(|e| io_err(&path, e))?;
        if let Some(t) = mtime_of(meta.mtime) {
            file.set_modified(t).map_err(|e| io_err(&path, e))?;
        }
        file.sync_all().map_err(|e| io_err(&path, e))?;
        self.dirs_to_sync.insert(rel_of(&comps[..comps.len() - 1]));
        self.stats.files += 1;
        self.stats.bytes += written;
        Ok(())
    }

    fn symlink(
        &mut self,
        parent: BorrowedFd<'_>,
        comps: &[&OsStr],
        target: &OsStr,
        meta: &Meta,
    ) -> Result<(), ExtractError> {
        let last = *comps.last().expect("non-empty");
        let path = self.path_of(comps);
        Self::clear(parent, last, &path)?;
        rustix::fs::symlinkat(target, parent, last).map_err(|e| io_err(&path, e.into()))?;
        if self.restore_owner {
            let (uid, gid) = owner(meta.uid, meta.gid);
            rustix::fs::chownat(parent, last, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io_err(&path, e.into()))?;
        }
        self.dirs_to_sync.insert(rel_of(&comps[..comps.len() - 1]));
        Ok(())
    }

    /// Links `comps` (in `parent`) to the regular file `target` (its
    /// directory, its name, its path for messages).
    fn hard_link(
        &mut self,
        (target_dir, target_name, target_path): (BorrowedFd<'_>, &OsStr, &Path),
        parent: BorrowedFd<'_>,
        comps: &[&OsStr],
    ) -> Result<(), ExtractError> {
        let last = *comps.last().expect("non-empty");
        let path = self.path_of(comps);
        match rustix::fs::statat(target_dir, target_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if file_type(&stat) == FileType::RegularFile => {}
            Ok(_) => {
                return Err(io_err(
                    target_path,
                    io::Error::other("a hard link's target must be a regular file"),
                ));
            }
            Err(e) => return Err(io_err(target_path, e.into())),
        }
        Self::clear(parent, last, &path)?;
        rustix::fs::linkat(target_dir, target_name, parent, last, AtFlags::empty())
            .map_err(|e| io_err(&path, e.into()))?;
        self.dirs_to_sync.insert(rel_of(&comps[..comps.len() - 1]));
        self.stats.files += 1;
        Ok(())
    }

    /// Opens the directory `rel` again, the same safe way, for the final
    /// touches.
    fn reopen(&mut self, rel: &Rel) -> Result<File, ExtractError> {
        let comps: Vec<&OsStr> = rel.iter().map(OsString::as_os_str).collect();
        let name = self.path_of(&comps).display().to_string();
        Ok(File::from(self.open_dir(&name, &comps, false)?))
    }

    /// Directory mtimes, now that their contents are written, then fsync of
    /// every directory touched, deepest first.
    fn finish(&mut self) -> Result<(), ExtractError> {
        for (rel, mtime) in std::mem::take(&mut self.dir_times).iter().rev() {
            if let Some(t) = mtime_of(*mtime) {
                let dir = self.reopen(rel)?;
                dir.set_modified(t)
                    .map_err(|e| io_err(&self.path_of(rel), e))?;
            }
        }
        let mut dirs: Vec<Rel> = std::mem::take(&mut self.dirs_to_sync).into_iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
        for rel in &dirs {
            self.reopen(rel)?
                .sync_all()
                .map_err(|e| io_err(&self.path_of(rel), e))?;
        }
        if let Some(parent) = &self.dest_parent {
            crate::durable::sync_dir(parent).map_err(|e| io_err(parent, e))?;
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
