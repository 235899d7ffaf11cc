//! The JSON parsers of untrusted layout files: `index.json` (as import reads it and as the
//! mount reads one written into it), `oci-layout`, and the links of manifests, indexes and
//! artifacts. Any bytes give a value or an error, never a panic; an index that parses
//! serialises to bytes that parse to the same descriptors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use layoutfs::digest::{Algorithm, Digest};
use layoutfs::oci::{self, Descriptor, ImageIndex};

const MEDIA_TYPES: [&str; 6] = [
    oci::MEDIA_OCI_INDEX,
    oci::MEDIA_OCI_MANIFEST,
    oci::MEDIA_OCI_ARTIFACT,
    oci::MEDIA_DOCKER_LIST,
    oci::MEDIA_DOCKER_MANIFEST,
    "application/vnd.oci.image.layer.v1.tar",
];

fuzz_target!(|data: &[u8]| {
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
});
