//! Test fail points: `CRSTREAM_TEST_FAIL_AT=NAME` makes a debug build fail
//! (or take another path) at the point named NAME, so that tests can check
//! what a failure there leaves behind. Release builds ignore it.

/// Whether the fail point `name` is armed.
pub(crate) fn armed(name: &str) -> bool {
    cfg!(debug_assertions) && std::env::var("CRSTREAM_TEST_FAIL_AT").is_ok_and(|v| v == name)
}
