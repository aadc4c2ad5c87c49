//! What every workload shares: how it reports its state to the test that
//! watches it.

/// Replaces the report at `path` with `text` atomically (write a temporary
/// file, rename it), so that a reader never sees half a report.
pub fn report(path: &str, text: &str) {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, text).expect("write report");
    std::fs::rename(&tmp, path).expect("rename report");
}

/// The first problem a workload saw, from any of its threads: what its
/// report shows in place of "OK". (Not every workload uses it.)
#[allow(dead_code)]
pub struct Status(std::sync::Mutex<String>);

#[allow(dead_code)]
impl Status {
    pub const fn new() -> Self {
        Status(std::sync::Mutex::new(String::new()))
    }

    /// Notes `what`, unless a problem was noted already.
    pub fn fail(&self, what: String) {
        let mut s = self.0.lock().unwrap();
        if s.is_empty() {
            *s = what;
        }
    }

    /// "OK", or the first problem noted.
    pub fn shown(&self) -> String {
        let s = self.0.lock().unwrap();
        if s.is_empty() { "OK".into() } else { s.clone() }
    }
}
