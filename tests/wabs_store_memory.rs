//! Memory stays bounded when a 256 MiB object goes through the wabs:// store
//! (staged blocks up, ranged GETs down); see `common/round_trip.rs`.

mod common;

use common::azurite::WabsBackend;
use common::backend::TestBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_round_trip_uses_bounded_memory() {
    let backend = WabsBackend::with_key();
    let (store, _) = tokio::task::block_in_place(|| backend.fresh_prefix().open());
    common::round_trip::bounded_memory_round_trip(&*store, "db1/", "wabs (Azurite)").await;
}
