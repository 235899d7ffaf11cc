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
    let opts = ExportOptions {
        platform: None,
        docker_manifest: false,
        verify: true,
    };
    let plan = Plan::new(&provider, &entries, &opts).unwrap();
    let out_path = env.path("dir.tar");
    let out = File::create(&out_path).unwrap();
    plan.write(&provider, &out, true, &Progress::hidden())
        .unwrap();
    drop(out);
    assert_eq!(
        std::fs::read(&out_path).unwrap(),
        std::fs::read(&from_store).unwrap()
    );

    // A damaged blob in the directory is caught as the store's would be.
    let layer = std::fs::read_dir(b.dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() == 30_000)
        .unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&layer, bytes).unwrap();
    let out = File::create(&out_path).unwrap();
    let err = plan
        .write(&provider, &out, true, &Progress::hidden())
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
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
    let layer = std::fs::read_dir(bad.dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() == 10_000)
        .unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&layer, bytes).unwrap();
    let source = layoutfs::archive::Source::Dir(bad.dir.clone());
    let err = layoutfs::archive::import(&memory, &source, Some("bad")).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(memory.of_repository("bad").unwrap().is_empty());
}
