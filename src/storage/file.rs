//! The `file://` store: objects are files under a directory (local or NFS).
//!
//! A put writes a hidden temporary file in the object's directory, fsyncs it,
//! renames it into place (without replacing, for create-only puts) and fsyncs
//! the directory: readers never see a partial object and a crash never leaves
//! one behind, only an unlisted `.wal-e-tmp.*` file, which a later put in the
//! same directory removes once it is an hour old.
//!
//! The prefix directory must exist: puts create directories only below it,
//! and a get calls an object missing only when the directory that should
//! hold it exists. An unmounted share therefore never receives WAL on the
//! local disk and never looks like an empty archive.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::durable::sync_dir;
use crate::error::UserError;

use super::{
    GetOptions, GetResult, Metadata, ObjectMeta, PutMode, PutOptions, PutPayload, Store, StoreError,
};

const TEMP_PREFIX: &str = ".wal-e-tmp.";
/// Object metadata is kept in extended attributes of this namespace.
const XATTR_NAMESPACE: &str = "user.";
/// A temporary file untouched for this long was left by a put that was
/// killed: a running put writes to its file as the data arrives.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    /// Emptied directories are removed after deletes, but never this one or
    /// any directory above it.
    keep: PathBuf,
}

impl FileStore {
    /// A store whose keys are paths relative to `root`; directories at or
    /// above `keep` are never removed.
    pub fn new(root: impl Into<PathBuf>, keep: impl Into<PathBuf>) -> Self {
        FileStore {
            root: root.into(),
            keep: keep.into(),
        }
    }

    /// The store of a `file://` prefix naming directory `dir`, which must
    /// exist (see the module documentation).
    pub async fn open(dir: PathBuf, url: &str) -> Result<FileStore, UserError> {
        let problem = match tokio::fs::metadata(&dir).await {
            Ok(md) if md.is_dir() => return Ok(FileStore::new("/", dir)),
            Ok(_) => "it is not a directory".to_string(),
            Err(e) => e.to_string(),
        };
        Err(UserError::new("the storage directory is not available")
            .detail(format!(
                "{} (of the prefix {url}): {problem}",
                dir.display()
            ))
            .hint(format!(
                "Create it (mkdir -p {}, writable by the user PostgreSQL runs as), or is the share mounted? wal-e creates directories only below it, so that WAL never lands on the local disk under an unmounted mount point.",
                dir.display()
            )))
    }

    /// A missing file is "not found" only while `must_exist` exists: an
    /// unmounted share, or a prefix without `wal_005/`, must not look like an
    /// empty archive (wal-fetch would end recovery early). A get needs the
    /// directory that should hold the object; a head, which asks whether an
    /// object is there yet (backup-push, before writing into directories it
    /// is about to create), needs the prefix directory, as S3 needs the bucket.
    fn missing(
        &self,
        op: &'static str,
        key: &str,
        must_exist: &Path,
        err: io::Error,
    ) -> StoreError {
        if err.kind() == io::ErrorKind::NotFound && !must_exist.is_dir() {
            return StoreError::permanent(
                op,
                key,
                format!(
                    "the directory {} does not exist (is the file system mounted?)",
                    must_exist.display()
                ),
            );
        }
        classify(op, key, err)
    }

    /// The prefix directory is gone: the share was unmounted under us.
    fn no_store_dir(&self, op: &'static str, key: &str) -> StoreError {
        StoreError::permanent(
            op,
            key,
            format!(
                "the store directory {} does not exist (create it, or is the share mounted?)",
                self.keep.display()
            ),
        )
    }

    fn path(&self, op: &'static str, key: &str) -> Result<PathBuf, StoreError> {
        let rel = Path::new(key.trim_start_matches('/'));
        let clean = rel.components().all(|c| matches!(c, Component::Normal(_)));
        if key.trim_start_matches('/').is_empty() || !clean {
            return Err(StoreError::permanent(
                op,
                key,
                "not a valid object name for the file store",
            ));
        }
        Ok(self.root.join(rel))
    }
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

/// Removes the temporary files in `dir` that were last written more than
/// [`STALE_TEMP_AGE`] ago: the remains of puts killed midway. One directory
/// per put, the one it writes to, so that leftovers do not pile up where
/// puts keep coming (`wal_005/`). Best effort: a failure here never fails the
/// put. A put that stalled that long and loses its file fails its rename
/// with "not found" and is retried.
fn sweep_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let Some(cutoff) = SystemTime::now().checked_sub(STALE_TEMP_AGE) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(TEMP_PREFIX.as_bytes())
        {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|md| Ok(md.is_file() && md.modified()? < cutoff))
            .unwrap_or(false);
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(
                detail = %format!("Removed {}.", entry.path().display()),
                "removed a temporary file left by an interrupted upload"
            );
        }
    }
}

/// Something other than a regular file where an object should be.
fn not_a_file(op: &'static str, key: &str, path: &Path) -> StoreError {
    StoreError::permanent(
        op,
        key,
        format!(
            "{} is not a regular file: the store is damaged",
            path.display()
        ),
    )
}

fn classify(op: &'static str, key: &str, err: io::Error) -> StoreError {
    match err.kind() {
        io::ErrorKind::NotFound => StoreError::NotFound {
            key: key.to_string(),
        },
        io::ErrorKind::AlreadyExists => StoreError::AlreadyExists {
            key: key.to_string(),
        },
        // NFS and busy disks: these can clear up on their own.
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            StoreError::transient(op, key, err)
        }
        _ => StoreError::permanent(op, key, err),
    }
}

/// During a put, a vanished directory means a concurrent delete pruned it
/// between our mkdir and our write: trying again recreates it.
fn classify_put(key: &str, err: io::Error) -> StoreError {
    if err.kind() == io::ErrorKind::NotFound {
        StoreError::transient("put", key, err)
    } else {
        classify("put", key, err)
    }
}

/// A file's size, modification time and version; a file system that
/// records no time is an error (1970-01-01 instead would silently change
/// which backup is LATEST).
fn meta_of(key: String, md: &std::fs::Metadata) -> io::Result<ObjectMeta> {
    use std::os::unix::fs::MetadataExt;
    // A put renames a new file into place: another inode, and almost
    // always another size or mtime.
    let version = format!(
        "{}-{}-{}.{:09}",
        md.ino(),
        md.len(),
        md.mtime(),
        md.mtime_nsec()
    );
    Ok(ObjectMeta {
        key,
        size: md.len(),
        last_modified: md.modified().map(DateTime::<Utc>::from)?,
        metadata: Metadata::new(),
        version: Some(version),
    })
}

/// Stores `metadata` as `user.<name>` extended attributes of `file`. A file
/// system without them (some NFS servers, old tmpfs) keeps the object
/// without metadata, which readers treat as unknown.
fn write_metadata(file: &std::fs::File, metadata: &Metadata) -> io::Result<()> {
    use xattr::FileExt;
    for (name, value) in metadata {
        match file.set_xattr(format!("{XATTR_NAMESPACE}{name}"), value.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The `user.*` extended attributes of `file` that are valid metadata; none
/// where the file system keeps none.
fn read_metadata(file: &std::fs::File) -> Metadata {
    use xattr::FileExt;
    let Ok(names) = file.list_xattr() else {
        return Metadata::new();
    };
    names
        .filter_map(|attr| {
            let name = attr.to_str()?.strip_prefix(XATTR_NAMESPACE)?.to_string();
            let value = String::from_utf8(file.get_xattr(&attr).ok()??).ok()?;
            Some((name, value))
        })
        .collect()
}

impl FileStore {
    /// Opens an object for reading, with its size, time and metadata. It is
    /// missing only if `holder` (the directory that would hold it) exists.
    async fn open_object(
        &self,
        op: &'static str,
        key: &str,
        holder: impl FnOnce(&Path) -> PathBuf,
    ) -> Result<(std::fs::File, ObjectMeta), StoreError> {
        let path = self.path(op, key)?;
        // Non-blocking, so that a FIFO in the object's place cannot hang the
        // open; it has no effect on regular files.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .await
            .map_err(|e| self.missing(op, key, &holder(&path), e))?;
        let md = file.metadata().await.map_err(|e| classify(op, key, e))?;
        if !md.is_file() {
            return Err(not_a_file(op, key, &path));
        }
        let file = file.into_std().await;
        let meta = ObjectMeta {
            metadata: read_metadata(&file),
            ..meta_of(key.to_string(), &md).map_err(|e| classify(op, key, e))?
        };
        Ok((file, meta))
    }

    /// Creates `dir` and the directories between it and the prefix
    /// directory, which must exist, fsyncing the parent of each so the new
    /// entries survive a crash.
    fn create_dirs_below_keep(&self, key: &str, dir: &Path) -> Result<(), StoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        if !self.keep.is_dir() {
            return Err(self.no_store_dir("put", key));
        }
        let below = dir.strip_prefix(&self.keep).map_err(|_| {
            StoreError::permanent("put", key, "the object is outside the store directory")
        })?;
        let mut cur = self.keep.clone();
        for part in below.components() {
            cur.push(part);
            match std::fs::create_dir(&cur) {
                Ok(()) => sync_dir(parent_of(&cur)).map_err(|e| classify_put(key, e))?,
                // By a concurrent put; if it is not a directory, the next
                // step fails with ENOTDIR.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(classify_put(key, e)),
            }
        }
        Ok(())
    }

    async fn write_temp(
        &self,
        key: &str,
        dir: &Path,
        payload: &PutPayload,
    ) -> Result<tempfile::NamedTempFile, StoreError> {
        let dir_owned = dir.to_path_buf();
        let store = self.clone();
        let key_owned = key.to_string();
        let temp = tokio::task::spawn_blocking(move || {
            store.create_dirs_below_keep(&key_owned, &dir_owned)?;
            sweep_stale_temps(&dir_owned);
            tempfile::Builder::new()
                .prefix(TEMP_PREFIX)
                .tempfile_in(&dir_owned)
                .map_err(|e| classify_put(&key_owned, e))
        })
        .await
        .map_err(|e| StoreError::permanent("put", key, e))??;

        let std_file = temp
            .as_file()
            .try_clone()
            .map_err(|e| classify_put(key, e))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let mut body = payload.open();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| StoreError::Payload {
                key: key.to_string(),
                source,
            })?;
            file.write_all(&chunk)
                .await
                .map_err(|e| classify_put(key, e))?;
        }
        file.flush().await.map_err(|e| classify_put(key, e))?;
        file.sync_all().await.map_err(|e| classify_put(key, e))?;
        Ok(temp)
    }

    fn walk(&self, dir: &Path, prefix: &str, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let path = entry.path();
            let Ok(rel) = path.strip_prefix(&self.root) else {
                continue;
            };
            let Some(key) = rel.to_str() else { continue };
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                // Descend only where keys with the prefix can be.
                let as_dir = format!("{key}/");
                if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                    self.walk(&path, prefix, out)?;
                }
            } else if file_type.is_file() && key.starts_with(prefix) {
                match entry.metadata() {
                    Ok(md) => out.push(meta_of(key.to_string(), &md)?),
                    // Deleted while we were listing.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn prune_empty_dirs(&self, mut dir: Option<&Path>) {
        while let Some(d) = dir {
            if self.keep.starts_with(d) || !d.starts_with(&self.root) {
                break;
            }
            // Fails (and stops) as soon as a directory is not empty.
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

#[async_trait]
impl Store for FileStore {
    async fn put(
        &self,
        key: &str,
        payload: PutPayload,
        options: &PutOptions,
    ) -> Result<(), StoreError> {
        let path = self.path("put", key)?;
        let dir = path
            .parent()
            .ok_or_else(|| StoreError::permanent("put", key, "no parent directory"))?
            .to_path_buf();
        let temp = self.write_temp(key, &dir, &payload).await?;
        let mode = options.mode;
        let key_owned = key.to_string();
        let metadata = options.metadata.clone();
        tokio::task::spawn_blocking(move || {
            write_metadata(temp.as_file(), &metadata).map_err(|e| classify_put(&key_owned, e))?;
            let placed = match mode {
                // renameat2(RENAME_NOREPLACE) or link+unlink: atomic, no race.
                PutMode::Create => temp.persist_noclobber(&path),
                PutMode::Overwrite => temp.persist(&path),
            };
            placed.map_err(|e| classify_put(&key_owned, e.error))?;
            sync_dir(&dir).map_err(|e| classify_put(&key_owned, e))
        })
        .await
        .map_err(|e| StoreError::permanent("put", key, e))?
    }

    async fn get_opts(&self, key: &str, options: &GetOptions) -> Result<GetResult, StoreError> {
        let (file, meta) = self
            .open_object("get", key, |path| parent_of(path).to_path_buf())
            .await?;
        options.check_version(key, meta.version.as_deref())?;
        if options.range_start > meta.size {
            return Err(StoreError::permanent(
                "get",
                key,
                format!(
                    "asked for the object from byte {}, but it has {} bytes",
                    options.range_start, meta.size
                ),
            ));
        }
        let mut file = tokio::fs::File::from_std(file);
        file.seek(io::SeekFrom::Start(options.range_start))
            .await
            .map_err(|e| classify("get", key, e))?;
        let owned = key.to_string();
        let stream = ReaderStream::with_capacity(file, READ_CHUNK)
            .map(move |chunk| chunk.map_err(|e| classify("get", &owned, e).into()))
            .boxed();
        Ok(GetResult { meta, stream })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        // A missing object's directory may be the share's: only the prefix
        // directory says whether the store is there.
        Ok(self
            .open_object("head", key, |_| self.keep.clone())
            .await?
            .1)
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<String>,
    ) -> BoxStream<'_, Result<ObjectMeta, StoreError>> {
        let prefix = prefix.trim_start_matches('/').to_string();
        let store = self.clone();
        stream::once(async move {
            let listed = tokio::task::spawn_blocking(move || {
                if !store.keep.is_dir() {
                    return Err(store.no_store_dir("list", &prefix));
                }
                let start_dir = match prefix.rfind('/') {
                    Some(i) => store.root.join(&prefix[..i]),
                    None => store.root.clone(),
                };
                let mut out = Vec::new();
                store
                    .walk(&start_dir, &prefix, &mut out)
                    .map_err(|e| classify("list", "(listing)", e))?;
                out.sort_by(|a, b| a.key.cmp(&b.key));
                if let Some(after) = start_after {
                    out.retain(|m| m.key > after);
                }
                Ok(out)
            })
            .await
            .unwrap_or_else(|e| Err(StoreError::permanent("list", "(listing)", e)));
            match listed {
                Ok(items) => stream::iter(items.into_iter().map(Ok)).boxed(),
                Err(e) => stream::iter([Err(e)]).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut paths = Vec::with_capacity(keys.len());
        for key in keys {
            paths.push((key.clone(), self.path("delete", key)?));
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut failures = Vec::new();
            for (key, path) in paths {
                match std::fs::remove_file(&path) {
                    Ok(()) => store.prune_empty_dirs(path.parent()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => failures.push((key, e.to_string())),
                }
            }
            if failures.is_empty() {
                Ok(())
            } else {
                Err(StoreError::DeleteFailed { failures })
            }
        })
        .await
        .map_err(|e| StoreError::permanent("delete", "(batch)", e))?
    }
}
