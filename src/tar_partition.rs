//! The tar side of `backup-push`: walking a PostgreSQL data directory into an
//! ordered member list, cutting it into WAL-E's tar partitions (spec §1.7,
//! §3.3), and streaming each partition as a tar archive.
//!
//! Archives are GNU format, as Python's `tarfile` wrote them for WAL-E 1.1.x:
//! long names go in GNU `L`/`K` records, directories carry a trailing `/`, and
//! the archive ends with two zero blocks padded to a 10240-byte record.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;

use crate::ByteStream;
use crate::layout::{PARTITION_MAX_BYTES, PARTITION_MAX_MEMBERS, RestoreSpec, TablespaceLocation};
use crate::pipeline::RateLimiter;

/// How much one partition may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most member data bytes (file sizes; headers not counted).
    pub max_bytes: u64,
    /// Most members.
    pub max_members: usize,
}

impl Default for Limits {
    /// WAL-E's `PARTITION_MAX_SZ` (1.5 GiB) and `PARTITION_MAX_MEMBERS` (6144).
    fn default() -> Self {
        Limits {
            max_bytes: PARTITION_MAX_BYTES,
            max_members: PARTITION_MAX_MEMBERS,
        }
    }
}

/// What a member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberKind {
    Dir,
    /// A regular file; `size` is its length when planned, and exactly that
    /// many bytes are archived whatever happens to the file afterwards.
    File {
        size: u64,
    },
    Symlink {
        target: PathBuf,
    },
    /// A file whose contents are held in memory (`backup_label`,
    /// `tablespace_map` as `pg_backup_stop` returned them).
    Data(Bytes),
}

/// One tar member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Archive name relative to the cluster directory, `/`-separated, no
    /// leading `./`, no trailing `/`; the cluster directory itself is `""`.
    pub name: String,
    /// Absolute path to read (`None` for [`MemberKind::Data`]).
    pub source: Option<PathBuf>,
    pub kind: MemberKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch (0 for times before it).
    pub mtime: u64,
}

impl Member {
    /// Bytes of data this member adds to the archive (and to
    /// `expanded_size_bytes`): the file size, 0 for directories and links.
    pub fn data_bytes(&self) -> u64 {
        match &self.kind {
            MemberKind::File { size } => *size,
            MemberKind::Data(data) => data.len() as u64,
            MemberKind::Dir | MemberKind::Symlink { .. } => 0,
        }
    }
}

/// One `part_NNNNNNNN.tar.lzo`'s worth of members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub members: Vec<Member>,
}

impl Partition {
    /// Sum of the members' data bytes.
    pub fn data_bytes(&self) -> u64 {
        self.members.iter().map(Member::data_bytes).sum()
    }
}

/// The walked and partitioned data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub partitions: Vec<Partition>,
    /// `base_prefix` is the cluster directory as given plus `/`; tablespaces
    /// in walk order, `loc` = `readlink` + `/`, `link` = `pg_tblspc/<oid>`.
    pub spec: RestoreSpec,
    /// Sum of member data sizes at planning time (the sentinel's
    /// `expanded_size_bytes`).
    pub expanded_size_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// WAL-E's `TarMemberTooBigError`: one file cannot fit in a partition.
    #[error(
        "Attempted to archive a file that is too large: {} is {size} bytes, \
         more than one tar partition may hold",
        path.display()
    )]
    MemberTooBig { path: PathBuf, size: u64 },
    #[error("could not read {} while walking the data directory: {source}", path.display())]
    Walk { path: PathBuf, source: io::Error },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    /// Member names are UTF-8 in this port; a file whose name is not cannot
    /// be archived under its real name, and dropping it silently would lose
    /// data.
    #[error("cannot archive {}: its name is not valid UTF-8", path.display())]
    NonUtf8Name { path: PathBuf },
    /// `global/pg_control` failed its checks on every read: archiving it
    /// would make a backup whose restore cannot start.
    #[error(
        "{} did not pass its checks (CRC-32C checksum, version, WAL segment size) \
         in {attempts} reads: {}{}",
        path.display(),
        source.msg,
        source.detail.as_deref().map(|d| format!(". {d}")).unwrap_or_default()
    )]
    ControlFile {
        path: PathBuf,
        attempts: u32,
        source: crate::error::UserError,
    },
}

fn walk_err(path: &Path, source: io::Error) -> TarError {
    TarError::Walk {
        path: path.to_path_buf(),
        source,
    }
}

fn is_not_found(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound
}

/// Top-level entries whose contents are never archived (WAL, logs: `log` is
/// `log_directory`'s default from PostgreSQL 10 on, `pg_log` before;
/// replication slots): the directory or symlink itself is.
const TOP_LEVEL_UNDESCENDED: [&str; 5] = ["pg_xlog", "pg_log", "log", "pg_replslot", "pg_wal"];
/// Temporary space, at any depth: the directory is archived, not its contents.
const UNDESCENDED: [&str; 3] = ["pgsql_tmp", "pg_stat_tmp", ".wal-e"];
/// Never archived, at any depth.
const DROPPED: &str = "lost+found";
/// Top-level files never archived. The last two come from `pg_backup_stop`
/// in the final partition instead; a stale copy on disk must not shadow them.
const TOP_LEVEL_EXCLUDED: [&str; 10] = [
    "postmaster.pid",
    "postmaster.opts",
    "postgresql.conf",
    "pg_hba.conf",
    "recovery.conf",
    "recovery.done",
    "pg_ident.conf",
    "promote",
    "backup_label",
    "tablespace_map",
];

/// Where in the tree a directory is, for the rules that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The cluster directory itself.
    Top,
    /// `<cluster>/global`, whose `pg_control` goes in the final partition.
    Global,
    /// `<cluster>/pg_tblspc`, whose symlinks are tablespaces.
    Tblspc,
    Other,
}

struct Walker {
    members: Vec<Member>,
    spec: RestoreSpec,
    /// The server's `log_directory` inside the cluster directory, as a
    /// member name: its contents are not archived either.
    log_directory: Option<String>,
}

fn member_from(name: String, source: PathBuf, md: &fs::Metadata, kind: MemberKind) -> Member {
    Member {
        name,
        source: Some(source),
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: u64::try_from(md.mtime()).unwrap_or(0),
    }
}

fn child_name(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// A directory's entries sorted by name, so plans are deterministic (WAL-E
/// used directory order). `None` if the directory vanished.
fn sorted_entries(dir: &Path) -> Result<Option<Vec<(String, PathBuf)>>, TarError> {
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if is_not_found(&e) => {
            tracing::debug!(target: "wal_e.tar_partition", path = %dir.display(), "directory vanished during the walk");
            return Ok(None);
        }
        Err(e) => return Err(walk_err(dir, e)),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| walk_err(dir, e))?;
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| TarError::NonUtf8Name { path: path.clone() })?;
        out.push((name, path));
    }
    out.sort();
    Ok(Some(out))
}

/// `lstat`, or `None` if the path vanished since it was listed.
fn lstat(path: &Path) -> Result<Option<fs::Metadata>, TarError> {
    match fs::symlink_metadata(path) {
        Ok(md) => Ok(Some(md)),
        Err(e) if is_not_found(&e) => {
            tracing::debug!(target: "wal_e.tar_partition", path = %path.display(), "path vanished during the walk");
            Ok(None)
        }
        Err(e) => Err(walk_err(path, e)),
    }
}

fn readlink(path: &Path) -> Result<Option<PathBuf>, TarError> {
    match fs::read_link(path) {
        Ok(target) => Ok(Some(target)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(walk_err(path, e)),
    }
}

impl Walker {
    /// Adds the entries of directory `dir` (archived as `name`, whose own
    /// member the caller added) and then, depth first, its subdirectories:
    /// the order of WAL-E's top-down `os.walk`.
    fn visit(&mut self, dir: &Path, name: &str, place: Place) -> Result<(), TarError> {
        let Some(entries) = sorted_entries(dir)? else {
            return Ok(());
        };
        let mut subdirs = Vec::new();
        let mut tablespaces = Vec::new();
        for (entry, path) in entries {
            if entry == DROPPED {
                continue;
            }
            let Some(md) = lstat(&path)? else { continue };
            let member_name = child_name(name, &entry);
            let ft = md.file_type();
            if ft.is_dir() {
                let kept_shut = (place == Place::Top && TOP_LEVEL_UNDESCENDED.contains(&&*entry))
                    || UNDESCENDED.contains(&&*entry)
                    || self.log_directory.as_deref() == Some(member_name.as_str());
                if kept_shut {
                    self.members
                        .push(member_from(member_name, path, &md, MemberKind::Dir));
                } else {
                    subdirs.push((entry, member_name, path, md));
                }
                continue;
            }
            if place == Place::Top && TOP_LEVEL_EXCLUDED.contains(&&*entry) {
                continue;
            }
            if place == Place::Global && entry == "pg_control" {
                continue;
            }
            if ft.is_symlink() {
                let Some(target) = readlink(&path)? else {
                    continue;
                };
                // A symlink to a directory in pg_tblspc is a tablespace; a
                // dangling one there is kept as a symlink like any other.
                if place == Place::Tblspc && fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                    tablespaces.push((entry, member_name, path, target));
                    continue;
                }
                // WAL-E dropped symlinks to directories outside the places
                // above (os.walk lists them as directories and does not visit
                // them); keeping them as symlinks is what the user meant.
                self.members.push(member_from(
                    member_name,
                    path,
                    &md,
                    MemberKind::Symlink { target },
                ));
            } else if ft.is_file() {
                let size = md.len();
                self.members.push(member_from(
                    member_name,
                    path,
                    &md,
                    MemberKind::File { size },
                ));
            } else {
                // Sockets, FIFOs and devices have no place in a data
                // directory and nothing to restore.
                tracing::warn!(target: "wal_e.tar_partition", path = %path.display(), "skipping a special file");
            }
        }
        for (oid, member_name, path, target) in tablespaces {
            self.tablespace(&oid, &member_name, &path, target)?;
        }
        for (entry, member_name, path, md) in subdirs {
            self.members.push(member_from(
                member_name.clone(),
                path.clone(),
                &md,
                MemberKind::Dir,
            ));
            let place = match (place, entry.as_str()) {
                (Place::Top, "global") => Place::Global,
                (Place::Top, "pg_tblspc") => Place::Tblspc,
                _ => Place::Other,
            };
            self.visit(&path, &member_name, place)?;
        }
        Ok(())
    }

    /// Records tablespace `oid` in the spec and walks its directory through
    /// the `pg_tblspc/<oid>` link, so its members are named
    /// `pg_tblspc/<oid>/...`. The link itself is not archived: the restore
    /// creates it from the spec (or, blind, extraction makes a real dir).
    fn tablespace(
        &mut self,
        oid: &str,
        name: &str,
        link: &Path,
        target: PathBuf,
    ) -> Result<(), TarError> {
        if self.spec.tablespaces.iter().any(|t| t == oid) {
            return Ok(());
        }
        let mut loc = target
            .into_os_string()
            .into_string()
            .map_err(|_| TarError::NonUtf8Name {
                path: link.to_path_buf(),
            })?;
        if !loc.ends_with('/') {
            loc.push('/');
        }
        self.spec.tablespaces.push(oid.to_string());
        self.spec.locations.push((
            oid.to_string(),
            TablespaceLocation {
                loc,
                link: format!("pg_tblspc/{oid}"),
            },
        ));
        // Unlike WAL-E, walk errors in a tablespace fail the backup instead
        // of silently leaving files out.
        self.visit(link, name, Place::Other)
    }
}

/// Walks `cluster_dir` (spec §3.3, entries sorted by name) and cuts the
/// members into partitions.
pub fn plan(cluster_dir: &Path, limits: &Limits) -> Result<Plan, TarError> {
    plan_without_logs(cluster_dir, limits, None)
}

/// [`plan`], also leaving out the contents of `log_directory`, a member name
/// from [`log_directory_member`]: a server's log files are not part of the
/// cluster, and a large one would not fit in a partition.
pub fn plan_without_logs(
    cluster_dir: &Path,
    limits: &Limits,
    log_directory: Option<String>,
) -> Result<Plan, TarError> {
    let given = cluster_dir.to_str().ok_or_else(|| TarError::NonUtf8Name {
        path: cluster_dir.to_path_buf(),
    })?;
    let mut base_prefix = given.to_string();
    if !base_prefix.ends_with('/') {
        base_prefix.push('/');
    }
    // Members are read through absolute paths, so a relative argument works
    // (WAL-E failed on one) and a later chdir cannot change what is read.
    let root = std::path::absolute(cluster_dir).map_err(|e| walk_err(cluster_dir, e))?;
    // The cluster directory itself may be a symlink: follow it.
    let md = fs::metadata(&root).map_err(|e| walk_err(&root, e))?;
    if !md.is_dir() {
        return Err(TarError::NotADirectory { path: root });
    }
    let mut walker = Walker {
        members: vec![member_from(
            String::new(),
            root.clone(),
            &md,
            MemberKind::Dir,
        )],
        spec: RestoreSpec {
            base_prefix,
            ..RestoreSpec::default()
        },
        log_directory,
    };
    walker.visit(&root, "", Place::Top)?;
    let expanded_size_bytes = walker.members.iter().map(Member::data_bytes).sum();
    let partitions = partition_members(walker.members, limits)?;
    Ok(Plan {
        partitions,
        spec: walker.spec,
        expanded_size_bytes,
    })
}

/// The member name of the server's `log_directory` setting when it lies
/// inside `cluster_dir`: relative (to the data directory), or absolute
/// under `cluster_dir`. `None` when it is elsewhere, or is the cluster
/// directory itself (whose contents must not be left out).
pub fn log_directory_member(cluster_dir: &Path, log_directory: &str) -> Option<String> {
    use std::path::Component;
    let path = Path::new(log_directory);
    let inside = if path.is_absolute() {
        path.strip_prefix(cluster_dir).ok()?
    } else {
        path
    };
    let mut parts: Vec<&str> = Vec::new();
    for component in inside.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// WAL-E's `_segmentation_guts`: fills partitions in order, starting a new
/// one when this member would bring the bytes to the limit or the member
/// count is already at it.
fn partition_members(members: Vec<Member>, limits: &Limits) -> Result<Vec<Partition>, TarError> {
    let mut partitions = Vec::new();
    let mut current = Partition {
        number: 0,
        members: Vec::new(),
    };
    let mut bytes = 0u64;
    for member in members {
        let size = member.data_bytes();
        if size > limits.max_bytes {
            return Err(TarError::MemberTooBig {
                path: member
                    .source
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(&member.name)),
                size,
            });
        }
        // WAL-E could emit an empty partition when the first member alone
        // reached the limit; never start a new one from an empty one.
        let full = bytes + size >= limits.max_bytes || current.members.len() >= limits.max_members;
        if full && !current.members.is_empty() {
            let number = current.number + 1;
            partitions.push(std::mem::replace(
                &mut current,
                Partition {
                    number,
                    members: Vec::new(),
                },
            ));
            bytes = 0;
        }
        bytes += size;
        current.members.push(member);
    }
    if !current.members.is_empty() {
        partitions.push(current);
    }
    Ok(partitions)
}

/// The final partition, built after `pg_backup_stop`: `backup_label` and (if
/// non-empty) `tablespace_map` as in-memory members at the tar root, then
/// `global/pg_control` (it must be copied last), read into memory once its
/// CRC-32C checks out, retried a few times against torn reads. Numbered
/// after the planned ones.
///
/// `backup_label` and `tablespace_map` get mode 0600, the owner of the
/// cluster directory and the current time, as PostgreSQL's own copies would.
pub fn final_partition(
    cluster_dir: &Path,
    number: u32,
    backup_label: &str,
    tablespace_map: Option<&str>,
) -> Result<Partition, TarError> {
    let root = std::path::absolute(cluster_dir).map_err(|e| walk_err(cluster_dir, e))?;
    let root_md = fs::metadata(&root).map_err(|e| walk_err(&root, e))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let in_memory = |name: &str, text: &str| Member {
        name: name.to_string(),
        source: None,
        kind: MemberKind::Data(Bytes::copy_from_slice(text.as_bytes())),
        mode: 0o600,
        uid: root_md.uid(),
        gid: root_md.gid(),
        mtime: now,
    };
    let mut members = vec![in_memory("backup_label", backup_label)];
    if let Some(map) = tablespace_map.filter(|m| !m.is_empty()) {
        members.push(in_memory("tablespace_map", map));
    }
    members.push(control_member(&root)?);
    Ok(Partition { number, members })
}

/// The final partition of a backup of a stopped cluster (`--while-offline`):
/// the WAL segments its last checkpoint needs, from `pg_wal` (`pg_xlog`
/// before PostgreSQL 10), then `global/pg_control`, checked as in
/// [`final_partition`]. Without those segments the restore could not start:
/// a clean shutdown leaves the segment holding its checkpoint unarchived.
pub fn offline_final_partition(
    cluster_dir: &Path,
    number: u32,
    wal_segments: &[String],
) -> Result<Partition, TarError> {
    let root = std::path::absolute(cluster_dir).map_err(|e| walk_err(cluster_dir, e))?;
    let wal_dir = ["pg_wal", "pg_xlog"]
        .into_iter()
        .find(|d| root.join(d).is_dir())
        .unwrap_or("pg_wal");
    let mut members = Vec::with_capacity(wal_segments.len() + 1);
    for segment in wal_segments {
        let path = root.join(wal_dir).join(segment);
        let md = fs::metadata(&path).map_err(|e| walk_err(&path, e))?;
        let size = md.len();
        members.push(member_from(
            format!("{wal_dir}/{segment}"),
            path,
            &md,
            MemberKind::File { size },
        ));
    }
    members.push(control_member(&root)?);
    Ok(Partition { number, members })
}

/// How many times `pg_control` is read before a copy that fails its checks
/// fails the backup.
const CONTROL_READS: u32 = 10;
/// The pause between those reads: long enough for the server to finish the
/// write it was caught in.
const CONTROL_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// `global/pg_control`, which must exist: its absence fails the backup.
///
/// A running server rewrites the file in place, so a plain copy can be torn
/// and the restored cluster would refuse to start ("incorrect checksum in
/// control file"). It is read into memory and checked (CRC-32C, version,
/// segment size), and read again while the check fails: a torn read can
/// garble any field, not only the CRC. The archived copy is then exactly the
/// bytes that were checked.
fn control_member(root: &Path) -> Result<Member, TarError> {
    let control = root.join("global").join("pg_control");
    let mut attempt = 1;
    loop {
        let (md, bytes) = read_regular(&control)?;
        match crate::postgres::parse_control_file(&bytes, "global/pg_control") {
            Ok(_) => {
                let mut member = member_from(
                    "global/pg_control".to_string(),
                    control,
                    &md,
                    MemberKind::Data(Bytes::from(bytes)),
                );
                member.source = None;
                return Ok(member);
            }
            Err(source) if attempt >= CONTROL_READS => {
                return Err(TarError::ControlFile {
                    path: control,
                    attempts: attempt,
                    source,
                });
            }
            Err(e) => {
                tracing::debug!(
                    target: "wal_e.tar_partition",
                    attempt,
                    detail = ?e.detail,
                    "{}; reading pg_control again",
                    e.msg
                );
                std::thread::sleep(CONTROL_RETRY_PAUSE);
                attempt += 1;
            }
        }
    }
}

/// The metadata and contents of a regular file, from one open.
fn read_regular(path: &Path) -> Result<(fs::Metadata, Vec<u8>), TarError> {
    let mut file = File::open(path).map_err(|e| walk_err(path, e))?;
    let md = file.metadata().map_err(|e| walk_err(path, e))?;
    if !md.is_file() {
        return Err(walk_err(path, io::Error::other("not a regular file")));
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.read_to_end(&mut bytes)
        .map_err(|e| walk_err(path, e))?;
    Ok((md, bytes))
}

/// Size of the chunks the stream yields and of the file read buffer.
const CHUNK: usize = 128 * 1024;
/// Chunks buffered between the reading thread and the consumer.
const CHANNEL_CHUNKS: usize = 4;
/// Python tarfile's `RECORDSIZE`: archives are padded to a multiple of it.
const RECORD_SIZE: u64 = 10240;

/// Streams one partition as a GNU tar archive.
///
/// Files are read on a blocking thread into a bounded channel, so memory
/// stays at a few 128 KiB buffers whatever the file sizes. Regular files are
/// archived at their planned size: truncated if they grew, zero-padded if
/// they shrank (WAL-E's `StreamPadFileObj`); one that vanished is skipped;
/// any other I/O error fails the stream. Directories and symlinks are written
/// from the planned metadata, as WAL-E did.
///
/// The root directory member is written as `./` (WAL-E wrote `/`); see
/// [`root_entry_name`].
///
/// With `rate`, the whole tar stream is passed through the limiter, like
/// WAL-E's `pv --rate-limit` in front of lzop; the bounded channel then holds
/// the file reads to the same pace.
pub fn write_partition(partition: Partition, rate: Option<Arc<RateLimiter>>) -> ByteStream {
    let tar = stream::once(async move {
        let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        // Started on first poll, so streams built ahead of time hold no
        // thread or open file.
        let writer = tokio::task::spawn_blocking(move || write_tar(&partition, tx));
        let chunks = stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (Ok(chunk), rx))
        });
        // The thread's result comes after its last chunk: an error or a
        // panic must fail the stream, never just end it early.
        let outcome = stream::once(async move {
            match writer.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(Err(e)),
                Err(e) => Some(Err(io::Error::other(format!(
                    "the tar writer thread failed: {e}"
                )))),
            }
        })
        .filter_map(|x| async move { x });
        chunks.chain(outcome)
    })
    .flatten()
    .boxed();
    match rate {
        Some(limiter) => limiter.limit(tar),
        None => tar,
    }
}

/// The raw header name of the cluster root directory member.
///
/// WAL-E's Python wrote the empty arcname as `/`, which Python reads back as
/// `""` but GNU tar warns about and other readers reject as absolute. `./`
/// is read by Python's tarfile as `.` (WAL-E's extractor joins it onto the
/// destination: the destination itself), by GNU tar and by [`crate::tar_extract`]
/// as the destination, so it is what we write. Our extractor accepts all of
/// `/`, `""`, `.` and `./`.
pub fn root_entry_name() -> &'static str {
    "./"
}

/// The `io::Write` end of the channel: fills `CHUNK`-sized buffers and hands
/// them over, blocking while the consumer is behind.
struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
    total: u64,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, BytesMut::with_capacity(CHUNK)).freeze();
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the tar stream was dropped"))
    }

    /// Pads to a whole record and sends what is left.
    fn finish(mut self) -> io::Result<()> {
        let rem = self.total % RECORD_SIZE;
        if rem != 0 {
            let pad = vec![0u8; (RECORD_SIZE - rem) as usize];
            self.write_all(&pad)?;
        }
        self.send()
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.total += n as u64;
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads exactly `remaining` bytes: the file's data, cut at that length,
/// then zeros if the file ended early.
struct PaddedReader<R> {
    inner: R,
    remaining: u64,
    eof: bool,
}

impl<R: Read> Read for PaddedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.remaining) as usize;
        if want == 0 {
            return Ok(0);
        }
        if !self.eof {
            let n = self.inner.read(&mut buf[..want])?;
            if n > 0 {
                self.remaining -= n as u64;
                return Ok(n);
            }
            self.eof = true;
        }
        buf[..want].fill(0);
        self.remaining -= want as u64;
        Ok(want)
    }
}

fn header_for(member: &Member, entry_type: tar::EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(member.mode & 0o7777);
    header.set_uid(u64::from(member.uid));
    header.set_gid(u64::from(member.gid));
    header.set_mtime(member.mtime);
    header.set_size(size);
    header
}

fn write_tar(partition: &Partition, tx: mpsc::Sender<Bytes>) -> io::Result<()> {
    let mut out = ChannelWriter {
        tx,
        buf: BytesMut::with_capacity(CHUNK),
        total: 0,
    };
    let mut builder = tar::Builder::new(&mut out);
    for member in &partition.members {
        if let Err(e) = append_member(&mut builder, member) {
            // Dropping the builder would append end-of-archive blocks, making
            // the truncated archive look whole to a reader that stops there.
            std::mem::forget(builder);
            return Err(e);
        }
    }
    // Two zero blocks; `finish` marks the builder finished so its drop adds
    // nothing after our padding.
    builder.finish()?;
    drop(builder);
    out.finish()
}

fn append_member<W: Write>(builder: &mut tar::Builder<W>, member: &Member) -> io::Result<()> {
    let with_context =
        |e: io::Error| io::Error::new(e.kind(), format!("archiving {:?}: {e}", member.name));
    match &member.kind {
        MemberKind::Dir => {
            let name = if member.name.is_empty() {
                root_entry_name().to_string()
            } else {
                format!("{}/", member.name)
            };
            let mut header = header_for(member, tar::EntryType::Directory, 0);
            builder
                .append_data(&mut header, name, io::empty())
                .map_err(with_context)
        }
        MemberKind::Symlink { target } => {
            let mut header = header_for(member, tar::EntryType::Symlink, 0);
            builder
                .append_link(&mut header, &member.name, target)
                .map_err(with_context)
        }
        MemberKind::Data(data) => {
            let mut header = header_for(member, tar::EntryType::Regular, data.len() as u64);
            builder
                .append_data(&mut header, &member.name, &data[..])
                .map_err(with_context)
        }
        MemberKind::File { size } => {
            let Some(source) = &member.source else {
                return Err(io::Error::other(format!(
                    "file member {:?} has no source path",
                    member.name
                )));
            };
            // Open before writing the header, so a vanished file leaves no
            // trace in the archive.
            let file = match File::open(source) {
                Ok(file) => file,
                Err(e) if is_not_found(&e) => {
                    tracing::debug!(
                        target: "wal_e.tar_partition",
                        path = %source.display(),
                        "file vanished before it could be archived; skipping it"
                    );
                    return Ok(());
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("opening {}: {e}", source.display()),
                    ));
                }
            };
            let data = PaddedReader {
                inner: BufReader::with_capacity(CHUNK, file),
                remaining: *size,
                eof: false,
            };
            let mut header = header_for(member, tar::EntryType::Regular, *size);
            builder
                .append_data(&mut header, &member.name, data)
                .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", source.display())))
        }
    }
}
