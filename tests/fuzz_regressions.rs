//! Replays every input under `tests/fuzz-regressions/<target>/` through the checks of that
//! fuzz target (`fuzz/fuzz_targets/checks.rs`): each crash a fuzzer finds is copied there and
//! stays a test, next to hostile inputs made by hand.

#[path = "../fuzz/fuzz_targets/checks.rs"]
mod checks;

use std::fs;
use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    let mut v: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no inputs in {}", dir.display());
    v
}

#[test]
fn import_archive_inputs() {
    let t = tempfile::tempdir().unwrap();
    let store = layoutfs::store::Store::open(&t.path().join("store")).unwrap();
    for (path, bytes) in inputs("import_archive") {
        eprintln!("{}", path.display());
        checks::import_archive(&store, &t.path().join("input"), &bytes);
    }
}

#[test]
fn oci_json_inputs() {
    for (path, bytes) in inputs("oci_json") {
        eprintln!("{}", path.display());
        checks::oci_json(&bytes);
    }
}
