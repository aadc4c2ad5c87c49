//! Helpers shared by the end-to-end tests, in three parts: `cli` (the
//! crstream binary on streams), `engine` (real workloads dumped and
//! restored) and `s3` (the local S3 test server). Every process a test
//! starts is ended by PID by a guard, even when the test fails.
#![allow(dead_code, unused_imports)] // each test crate uses a different subset

mod cli;
mod engine;
mod s3;

pub use cli::*;
pub use engine::*;
pub use s3::*;
