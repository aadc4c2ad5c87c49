//! Test fail points: `CRSTREAM_TEST_FAIL_AT=NAME` makes a debug build fail
//! (or take another path) at the point named NAME, so that tests can check
//! what a failure there leaves behind. Release builds ignore it.

/// Whether the fail point `name` is armed.
pub(crate) fn armed(name: &str) -> bool {
    cfg!(debug_assertions) && std::env::var("CRSTREAM_TEST_FAIL_AT").is_ok_and(|v| v == name)
}

/// Test pause points: with `CRSTREAM_TEST_PAUSE_AT=NAME:N`, a debug build
/// that reaches the point NAME for the Nth time creates the file named by
/// `CRSTREAM_TEST_PAUSE_FILE` and sleeps 5 s there, so that a test can
/// kill crstream at that very moment.
pub(crate) fn pause(name: &str) {
    static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if !cfg!(debug_assertions) {
        return;
    }
    let Ok(at) = std::env::var("CRSTREAM_TEST_PAUSE_AT") else {
        return;
    };
    let Some((point, nth)) = at.split_once(':') else {
        return;
    };
    if point != name {
        return;
    }
    let hit = HITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if nth.parse() == Ok(hit) {
        if let Ok(file) = std::env::var("CRSTREAM_TEST_PAUSE_FILE") {
            let _ = std::fs::write(file, hit.to_string());
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}
