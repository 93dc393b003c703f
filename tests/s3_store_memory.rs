//! Memory stays bounded when a 256 MiB object goes through the s3:// store
//! (a multipart upload of 8 MiB parts, a streamed GET); see
//! `common/round_trip.rs`. The S3 server (s3s-fs) runs in this process too,
//! so its memory is counted as well.

mod common;

use common::backend::TestBackend;
use common::s3::{S3Backend, open_store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_round_trip_uses_bounded_memory() {
    let store = open_store(&S3Backend::new().fresh_prefix()).await;
    common::round_trip::bounded_memory_round_trip(&*store, "db1/", "s3 (s3s-fs)").await;
}
