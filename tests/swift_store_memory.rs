//! Memory stays bounded when a 256 MiB object goes through the swift://
//! store (a chunked streaming PUT, a streamed GET); see
//! `common/round_trip.rs`.

mod common;

use common::swift::{Auth, swift};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_round_trip_uses_bounded_memory() {
    let s = swift();
    let container = s.new_container();
    let env = s.env(Auth::V1, s.keystone(), &container, "db1");
    let (store, _) = tokio::task::block_in_place(|| env.open());
    common::round_trip::bounded_memory_round_trip(&*store, "/db1/", "swift").await;
}
