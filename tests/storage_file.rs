//! The storage conformance suite against the file:// store, plus what only a
//! local directory can show (no temporary files left visible, pruning).

mod common;

use std::sync::Arc;

use wal_e::storage::{
    FileStore, PutOptions, PutPayload, RetryPolicy, RetryingStore, Store, StoreError,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path(), dir.path());
    common::conformance::run_all(Arc::new(store), "srv/db1/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_behind_the_retry_layer_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = RetryingStore::new(FileStore::new(dir.path(), dir.path()), RetryPolicy::none());
    common::conformance::run_all(Arc::new(store), "").await;
}

#[tokio::test]
async fn objects_are_plain_files_at_wal_e_paths_and_deletes_prune_empty_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("srv/db1");
    std::fs::create_dir_all(&keep).unwrap();
    let store = FileStore::new(dir.path(), &keep);
    let key = "srv/db1/basebackups_005/base_000000010000000000000002_00000040/tar_partitions/part_00000000.tar.lzo";
    store
        .put(key, PutPayload::from_bytes("tar"), &PutOptions::default())
        .await
        .unwrap();
    let path = dir.path().join(key);
    assert_eq!(std::fs::read(&path).unwrap(), b"tar");
    // No temporary file is left beside the object.
    let siblings: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(siblings.len(), 1);

    store.delete_many(&[key.to_string()]).await.unwrap();
    assert!(
        !dir.path().join("srv/db1/basebackups_005").exists(),
        "emptied directories are pruned"
    );
    assert!(keep.is_dir(), "the prefix directory itself is kept");
}

#[tokio::test]
async fn keys_escaping_the_root_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("root"), dir.path());
    let err = store
        .put(
            "a/../../escape",
            PutPayload::from_bytes("x"),
            &PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a valid object name"), "{err}");
    assert!(!dir.path().join("escape").exists());
}

#[tokio::test]
async fn puts_create_directories_only_below_an_existing_prefix_directory() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("mnt/db1");
    let store = FileStore::new(dir.path(), &keep);
    let key = "mnt/db1/wal_005/000000010000000000000002.lzo";
    let err = store
        .put(
            key,
            PutPayload::from_bytes("wal"),
            &PutOptions::create_only(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Permanent { .. }), "{err}");
    assert!(
        err.to_string().contains("or is the share mounted?"),
        "{err}"
    );
    assert!(!dir.path().join("mnt").exists(), "nothing was created");

    std::fs::create_dir_all(&keep).unwrap();
    store
        .put(
            key,
            PutPayload::from_bytes("wal"),
            &PutOptions::create_only(),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.path().join(key)).unwrap(), b"wal");
}

#[tokio::test]
async fn a_missing_object_is_not_found_only_where_its_directory_exists() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("db1");
    std::fs::create_dir(&keep).unwrap();
    let store = FileStore::new(dir.path(), &keep);
    let key = "db1/wal_005/000000010000000000000002.lzo";
    let wal_dir = keep.join("wal_005");
    let err = store.get(key).await.map(|_| ()).unwrap_err();
    assert!(matches!(err, StoreError::Permanent { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "the directory {} does not exist",
            wal_dir.display()
        )),
        "{err}"
    );
    // A head asks whether an object is there yet, as backup-push does
    // before its first write: the prefix directory is enough.
    assert!(matches!(
        store.head(key).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));

    std::fs::create_dir(&wal_dir).unwrap();
    assert!(matches!(
        store.get(key).await.map(|_| ()).unwrap_err(),
        StoreError::NotFound { .. }
    ));

    // Without the prefix directory nothing is "not found", and a listing is
    // an error, not an empty list.
    std::fs::remove_dir_all(&keep).unwrap();
    for err in [
        store.get(key).await.map(|_| ()).unwrap_err(),
        store.head(key).await.unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::Permanent { .. }), "{err}");
        assert!(
            err.to_string().contains("is the file system mounted?"),
            "{err}"
        );
    }
    let listed: Vec<_> = futures_util::StreamExt::collect(store.list("db1/", None)).await;
    assert!(
        matches!(listed.as_slice(), [Err(StoreError::Permanent { .. })]),
        "{listed:?}"
    );
}

#[tokio::test]
async fn a_directory_or_fifo_in_place_of_an_object_is_a_damaged_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path(), dir.path());
    std::fs::create_dir_all(dir.path().join("wal_005/A.lzo")).unwrap();
    let fifo = dir.path().join("wal_005/B.lzo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for key in ["wal_005/A.lzo", "wal_005/B.lzo"] {
        for err in [
            store.get(key).await.map(|_| ()).unwrap_err(),
            store.head(key).await.map(|_| ()).unwrap_err(),
        ] {
            assert!(matches!(err, StoreError::Permanent { .. }), "{key}: {err}");
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
    }
}

#[tokio::test]
async fn a_put_sweeps_temporary_files_older_than_an_hour_from_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path(), dir.path());
    let wal = dir.path().join("wal_005");
    let other = dir.path().join("basebackups_005");
    std::fs::create_dir_all(&wal).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    let leftover = |path: &std::path::Path, old: bool| {
        let f = std::fs::File::create(path).unwrap();
        if old {
            f.set_modified(two_hours_ago).unwrap();
        }
    };
    // Left by puts killed midway, and one that may still be running.
    leftover(&wal.join(".wal-e-tmp.AbC123"), true);
    leftover(&wal.join(".wal-e-tmp.dEf456"), false);
    // Not ours, however old.
    leftover(&wal.join("000000010000000000000001.lzo"), true);
    // Another directory is left for puts there.
    leftover(&other.join(".wal-e-tmp.GhI789"), true);

    store
        .put(
            "wal_005/000000010000000000000002.lzo",
            PutPayload::from_bytes("wal"),
            &PutOptions::create_only(),
        )
        .await
        .unwrap();
    assert!(!wal.join(".wal-e-tmp.AbC123").exists(), "stale temp swept");
    assert!(
        wal.join(".wal-e-tmp.dEf456").exists(),
        "a recent temp is kept"
    );
    assert!(wal.join("000000010000000000000001.lzo").exists());
    assert!(other.join(".wal-e-tmp.GhI789").exists());
}

#[tokio::test]
async fn a_put_cancelled_midway_leaves_no_temporary_file() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path(), dir.path());
    let wal = dir.path().join("wal_005");
    std::fs::create_dir(&wal).unwrap();
    // A payload that sends a little, then stalls for good.
    let stalled = std::sync::Arc::new(tokio::sync::Notify::new());
    let signal = stalled.clone();
    let payload = PutPayload::from_fn(move || {
        let signal = signal.clone();
        futures_util::stream::once(async { Ok(bytes::Bytes::from_static(b"part")) })
            .chain(futures_util::stream::once(async move {
                signal.notify_one();
                std::future::pending().await
            }))
            .boxed()
    });
    let options = PutOptions::create_only();
    let mut put = Box::pin(store.put("wal_005/A.lzo", payload, &options));
    tokio::select! {
        result = &mut put => panic!("the put ended: {result:?}"),
        () = stalled.notified() => {}
    }
    let names = || -> Vec<String> {
        std::fs::read_dir(&wal)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    let writing = names();
    assert!(
        matches!(writing.as_slice(), [t] if t.starts_with(".wal-e-tmp.")),
        "{writing:?}"
    );
    // Dropped, as wal-push's timeout drops it.
    drop(put);
    assert!(names().is_empty(), "{:?}", names());
}
