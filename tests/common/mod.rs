//! Shared test harness.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod cli;
pub mod conformance;
pub mod gpg;
pub mod pg;
pub mod store_fixture;
