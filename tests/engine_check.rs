//! `crstream check` reports every feature and succeeds on this machine.

mod support;

#[test]
fn check_reports_features() {
    let o = support::run(&["check", "--json"], &[]);
    assert!(o.status.success(), "{}", support::text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    let names: Vec<&str> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        names.iter().any(|n| n.contains("PAGEMAP_SCAN")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.contains("set_tid")), "{names:?}");
    let o = support::run(&["check"], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().count() >= 8 && out.contains(" ok "), "{out}");
}
