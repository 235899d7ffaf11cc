//! The archive importer, tar stream in, store out: whatever the bytes (tar, gzip or zstd of
//! anything), an import either registers images whose every blob is in the store and hashes
//! to its name, or fails with an error, leaving no ingest behind. It never panics.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use layoutfs::archive::{import, Source};
use layoutfs::oci::{self, OnMissing};
use layoutfs::store::Store;

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
    std::fs::write(&s.input, data).unwrap();
    if let Ok(imported) = import(&s.store, &Source::Archive(s.input.clone()), Some("fuzz")) {
        for name in &imported.names {
            let image = s.store.records().get(name).unwrap().expect("registered");
            oci::closure(&s.store, &image.target, OnMissing::Fail).expect("complete closure");
        }
        // Start each input from an empty set of records.
        s.store.records().remove(&imported.names).unwrap();
    }
    let ingests = std::fs::read_dir(s.store.root().join("ingest")).unwrap().count();
    assert_eq!(ingests, 0, "an import left an ingest behind");
});
