//! The archive importer, tar stream in, store out: whatever the bytes (tar, gzip or zstd of
//! anything), see `checks::import_archive`.
#![no_main]

#[path = "checks.rs"]
mod checks;

use std::sync::OnceLock;

use layoutfs::store::Store;
use libfuzzer_sys::fuzz_target;

struct Scratch {
    _dir: tempfile::TempDir,
    store: Store,
    input: std::path::PathBuf,
}

fn scratch() -> &'static Scratch {
    static S: OnceLock<Scratch> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let input = dir.path().join("input.tar");
        Scratch {
            _dir: dir,
            store,
            input,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = scratch();
    checks::import_archive(&s.store, &s.input, data);
});
