//! The `file://` store: objects are files under a directory (local or NFS).
//!
//! A put writes a hidden temporary file in the object's directory, fsyncs it,
//! renames it into place (without replacing, for create-only puts) and fsyncs
//! the directory: readers never see a partial object and a crash never leaves
//! one behind, only an unlisted `.wal-e-tmp.*` file.

use std::io;
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::durable::sync_dir;

use super::{
    GetOptions, GetResult, ObjectMeta, PutMode, PutOptions, PutPayload, Store, StoreError,
};

const TEMP_PREFIX: &str = ".wal-e-tmp.";
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

    /// A missing object is only "not found" while the store's own directory
    /// exists: an unmounted NFS share must not look like an empty archive
    /// (wal-fetch would end recovery early).
    fn missing(&self, op: &'static str, key: &str, err: io::Error) -> StoreError {
        match err.kind() {
            io::ErrorKind::NotFound if !self.keep.is_dir() => StoreError::permanent(
                op,
                key,
                format!(
                    "the store directory {} does not exist (is the file system mounted?)",
                    self.keep.display()
                ),
            ),
            _ => classify(op, key, err),
        }
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

fn meta_of(key: String, md: &std::fs::Metadata) -> ObjectMeta {
    use std::os::unix::fs::MetadataExt;
    let modified = md.modified().map(DateTime::<Utc>::from).unwrap_or_default();
    // A put renames a new file into place: another inode, and almost
    // always another size or mtime.
    let version = format!(
        "{}-{}-{}.{:09}",
        md.ino(),
        md.len(),
        md.mtime(),
        md.mtime_nsec()
    );
    ObjectMeta {
        key,
        size: md.len(),
        last_modified: modified,
        version: Some(version),
    }
}

/// `create_dir_all`, then fsync the parent of every directory it created so
/// the new entries survive a crash.
fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.is_dir() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    std::fs::create_dir_all(dir)?;
    for d in &missing {
        if let Some(parent) = d.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

impl FileStore {
    async fn write_temp(
        &self,
        key: &str,
        dir: &Path,
        payload: &PutPayload,
    ) -> Result<tempfile::NamedTempFile, StoreError> {
        let dir_owned = dir.to_path_buf();
        let temp = tokio::task::spawn_blocking(move || {
            create_dir_all_durable(&dir_owned)?;
            tempfile::Builder::new()
                .prefix(TEMP_PREFIX)
                .tempfile_in(&dir_owned)
        })
        .await
        .map_err(|e| StoreError::permanent("put", key, e))?
        .map_err(|e| classify_put(key, e))?;

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
                    Ok(md) => out.push(meta_of(key.to_string(), &md)),
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
        tokio::task::spawn_blocking(move || {
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
        let path = self.path("get", key)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.missing("get", key, e))?;
        let md = file.metadata().await.map_err(|e| classify("get", key, e))?;
        if !md.is_file() {
            return Err(StoreError::NotFound {
                key: key.to_string(),
            });
        }
        let meta = meta_of(key.to_string(), &md);
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
        let path = self.path("head", key)?;
        let md = tokio::fs::metadata(&path)
            .await
            .map_err(|e| self.missing("head", key, e))?;
        if !md.is_file() {
            return Err(StoreError::NotFound {
                key: key.to_string(),
            });
        }
        Ok(meta_of(key.to_string(), &md))
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
                let start_dir = match prefix.rfind('/') {
                    Some(i) => store.root.join(&prefix[..i]),
                    None => store.root.clone(),
                };
                let mut out = Vec::new();
                store.walk(&start_dir, &prefix, &mut out)?;
                out.sort_by(|a, b| a.key.cmp(&b.key));
                if let Some(after) = start_after {
                    out.retain(|m| m.key > after);
                }
                Ok::<_, io::Error>(out)
            })
            .await;
            match listed {
                Ok(Ok(items)) => stream::iter(items.into_iter().map(Ok)).boxed(),
                Ok(Err(e)) => stream::iter([Err(classify("list", "(listing)", e))]).boxed(),
                Err(e) => {
                    stream::iter([Err(StoreError::permanent("list", "(listing)", e))]).boxed()
                }
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
