//! The content interfaces with an implementation other than the store: an OCI layout
//! directory as a `Provider` (blobs read where they lie, checked) feeds the same export plan
//! and writer the store does, and the archive is byte for byte what `layoutfs export` writes
//! from a store holding the same image.

mod common;

use std::fs::File;

use common::gen::LayoutBuilder;
use common::layout_dir::LayoutDir;
use common::Env;
use layoutfs::archive::{ExportOptions, Plan};
use layoutfs::content::Provider;
use layoutfs::error::Error;
use layoutfs::layout::Entry;
use layoutfs::progress::Progress;

#[test]
fn a_layout_directory_as_a_provider_exports_what_the_store_exports() {
    let env = Env::new();
    let mut b = LayoutBuilder::new(&env.path("src"));
    let m = b.small_image("1.0", 2, 30_000, 40);
    env.ok(&["import", b.dir.to_str().unwrap()]);
    let from_store = env.path("store.tar");
    env.ok(&["export", "-o", from_store.to_str().unwrap(), "src:1.0"]);

    let provider = LayoutDir(b.dir.clone());
    let entries = [Entry {
        name: "src:1.0".parse().unwrap(),
        target: layoutfs::oci::Descriptor {
            platform: None,
            ..m.clone()
        },
    }];
    let (plan, out_path) = (plan(&provider, &entries), env.path("dir.tar"));
    export_to(&plan, &provider, &out_path).unwrap();
    assert_eq!(
        std::fs::read(&out_path).unwrap(),
        std::fs::read(&from_store).unwrap()
    );

    // A damaged blob in the directory is caught as the store's would be.
    flip_first_byte_of_blob_sized(&b.dir, 30_000);
    let err = export_to(&plan, &provider, &out_path).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

/// Damages the blob of `size` bytes in layout `dir` (its first byte flipped).
fn flip_first_byte_of_blob_sized(dir: &std::path::Path, size: u64) {
    let layer = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() == size)
        .unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&layer, bytes).unwrap();
}

/// The export plan of `entries` from `provider`, blobs verified as they are sent.
fn plan(provider: &dyn Provider, entries: &[Entry]) -> Plan {
    let opts = ExportOptions {
        platform: None,
        docker_manifest: false,
        verify: true,
    };
    Plan::new(provider, entries, &opts).unwrap()
}

/// Writes the archive of `plan` from `provider` to `path`.
fn export_to(
    plan: &Plan,
    provider: &dyn Provider,
    path: &std::path::Path,
) -> layoutfs::error::Result<()> {
    let out = File::create(path).unwrap();
    plan.write(provider, &out, true, &Progress::hidden())
}

/// Import and export over the content interfaces alone: a layout imported into content held
/// in memory (tests/common/memory.rs) registers the same image, and exports byte for byte the
/// archive `layoutfs export` writes from the store; a damaged layout registers nothing there.
#[test]
fn content_in_memory_imports_and_exports_what_the_store_does() {
    use layoutfs::content::Catalog;
    let env = Env::new();
    let mut b = LayoutBuilder::new(&env.path("src"));
    b.small_image("1.0", 3, 20_000, 7);
    env.ok(&["import", b.dir.to_str().unwrap()]);
    let from_store = env.path("store.tar");
    env.ok(&["export", "-o", from_store.to_str().unwrap(), "src:1.0"]);

    let memory = common::memory::Memory::new();
    let source = layoutfs::archive::Source::Dir(b.dir.clone());
    let imported = layoutfs::archive::import(&memory, &source, Some("src")).unwrap();
    assert_eq!(imported.names.len(), 1);
    assert!(imported.new_blobs >= 5, "{}", imported.new_blobs);
    let image = memory.get(&"src:1.0".parse().unwrap()).unwrap().unwrap();
    let entries = [Entry::from(image)];
    let opts = ExportOptions {
        platform: None,
        docker_manifest: false,
        verify: true,
    };
    let plan = Plan::new(&memory, &entries, &opts).unwrap();
    let out_path = env.path("memory.tar");
    let out = File::create(&out_path).unwrap();
    plan.write(&memory, &out, true, &Progress::hidden())
        .unwrap();
    drop(out);
    assert!(
        std::fs::read(&out_path).unwrap() == std::fs::read(&from_store).unwrap(),
        "the archive from memory differs from the store's"
    );

    // A layer damaged in the source: refused, nothing registered.
    let mut bad = LayoutBuilder::new(&env.path("bad"));
    bad.small_image("2.0", 1, 10_000, 9);
    flip_first_byte_of_blob_sized(&bad.dir, 10_000);
    let source = layoutfs::archive::Source::Dir(bad.dir.clone());
    let err = layoutfs::archive::import(&memory, &source, Some("bad")).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(memory.of_repository("bad").unwrap().is_empty());
}
