//! The storage conformance suite against the file:// store, plus what only a
//! local directory can show (no temporary files left visible, pruning).

mod common;

use std::sync::Arc;

use wal_e::storage::{FileStore, PutOptions, PutPayload, RetryPolicy, RetryingStore, Store};

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
