//! What every workload shares: how it reports its state to the test that
//! watches it.

/// Replaces the report at `path` with `text` atomically (write a temporary
/// file, rename it), so that a reader never sees half a report.
pub fn report(path: &str, text: &str) {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, text).expect("write report");
    std::fs::rename(&tmp, path).expect("rename report");
}
