//! What the fuzz targets check, shared with `tests/fuzz_regressions.rs`, which replays every
//! input a fuzzer ever crashed on (and a few hostile ones made by hand) through the same code.
#![allow(dead_code)]

use std::path::Path;

use layoutfs::archive::{import, Source};
use layoutfs::digest::{Algorithm, Digest};
use layoutfs::oci::{self, Descriptor, ImageIndex, OnMissing};
use layoutfs::store::Store;

/// Imports `data` as an archive (written to `input` first): either images whose every blob
/// is in the store, or an error; no ingest left behind; never a panic. The images are
/// removed again, so that each input starts from the same records.
pub fn import_archive(store: &Store, input: &Path, data: &[u8]) {
    std::fs::write(input, data).unwrap();
    if let Ok(imported) = import(store, &Source::Archive(input.to_path_buf()), Some("fuzz")) {
        for name in &imported.names {
            let image = store.records().get(name).unwrap().expect("registered");
            oci::closure(store, &image.target, OnMissing::Fail).expect("complete closure");
        }
        store.records().remove(&imported.names).unwrap();
    }
    let ingests = std::fs::read_dir(store.root().join("ingest"))
        .unwrap()
        .count();
    assert_eq!(ingests, 0, "an import left an ingest behind");
}

const MEDIA_TYPES: [&str; 6] = [
    oci::MEDIA_OCI_INDEX,
    oci::MEDIA_OCI_MANIFEST,
    oci::MEDIA_OCI_ARTIFACT,
    oci::MEDIA_DOCKER_LIST,
    oci::MEDIA_DOCKER_MANIFEST,
    "application/vnd.oci.image.layer.v1.tar",
];

/// Parses `data` as `index.json` (for import and for the mount), `oci-layout`, and the links
/// of every kind of manifest: a value or an error, never a panic; an index that parses
/// serialises to bytes that parse to the same descriptors.
pub fn oci_json(data: &[u8]) {
    if let Ok(index) = ImageIndex::parse("index.json", data) {
        let again = ImageIndex::parse("index.json", &index.to_bytes()).expect("round trip");
        assert_eq!(again.manifests, index.manifests);
    }
    let _ = oci::check_layout_file("oci-layout", data);
    let _ = layoutfs::fs::write::parse_index("fuzz", data);
    let digest = Digest::of(Algorithm::Sha256, data);
    for media_type in MEDIA_TYPES {
        let desc: Descriptor = serde_json::from_value(serde_json::json!({
            "mediaType": media_type, "digest": digest.to_string(), "size": data.len(),
        }))
        .unwrap();
        let _ = oci::children(&desc, data);
    }
}
