//! The backend-independent command scenarios on a file:// store.

mod common;

use common::backend::FileBackend;
use common::scenarios;

#[test]
fn wal_push_and_fetch() {
    scenarios::wal_push_and_fetch(&FileBackend::new());
}

#[test]
fn backup_cycle() {
    scenarios::backup_cycle(&FileBackend::new());
}
