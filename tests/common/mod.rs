//! Shared test harness.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod azurite;
pub mod backend;
pub mod cli;
pub mod conformance;
pub mod gpg;
pub mod interop;
pub mod pg;
pub mod round_trip;
pub mod s3;
pub mod scenarios;
pub mod server;
pub mod store_fixture;
pub mod swift;
pub mod wal_e_py;

/// Peak resident set size of this process, from /proc (kB).
pub fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}
