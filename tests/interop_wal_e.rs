//! Interoperability with the real WAL-E 1.1.1 (installed from PyPI by
//! scripts/install-wal-e.sh): on one prefix, each tool restores a
//! PostgreSQL cluster from what the other archived and backed up, with and
//! without GPG; both backup-lists agree; our `delete` leaves a WAL-E store
//! WAL-E can still restore from; the deliberate differences are asserted
//! both ways. The scenarios are in `common/interop.rs`.
//!
//! Another backend is one line: `interop_on!(name, <its TestBackend>);`
//! (see `TestBackend::wal_e_py_env` if WAL-E needs more than our variables).

mod common;

use common::azurite::WabsBackend;
use common::backend::FileBackend;
use common::interop::{Encryption, wal_e_archives_we_restore, we_archive_wal_e_restores};
use common::s3::S3Backend;
use common::swift::{Auth, SwiftBackend};

/// The four interoperability tests on one backend, in a module `$name`.
macro_rules! interop_on {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn wal_e_archives_we_restore() {
                super::wal_e_archives_we_restore(&$backend, Encryption::Off);
            }

            #[test]
            fn wal_e_archives_encrypted_we_restore() {
                super::wal_e_archives_we_restore(&$backend, Encryption::Gpg);
            }

            #[test]
            fn we_archive_wal_e_restores() {
                super::we_archive_wal_e_restores(&$backend, Encryption::Off);
            }

            #[test]
            fn we_archive_encrypted_wal_e_restores() {
                super::we_archive_wal_e_restores(&$backend, Encryption::Gpg);
            }
        }
    };
}

interop_on!(file, FileBackend::new());
interop_on!(wabs, WabsBackend::with_key());
// Keystone v2.0: WAL-E's default SWIFT_AUTH_VERSION.
interop_on!(swift, SwiftBackend { auth: Auth::V2 });
interop_on!(s3, S3Backend::new());
