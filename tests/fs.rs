//! The filesystem core driven with no kernel: the tree a store gives, the bytes of every file,
//! live changes, and the errors of bad paths, writes, and vanished or damaged blobs.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::core::Harness;
use common::gen::{LayoutBuilder, MEDIA_CONFIG};
use common::within_a_second;
use layoutfs::archive::{self, Source};
use layoutfs::digest::{Algorithm, Digest};
use layoutfs::fs::{Fs, FsError, FsOptions, Kind};
use layoutfs::layout::{self, Entry};
use layoutfs::oci::{self, Descriptor, OnMissing};
use layoutfs::reference::Reference;
use layoutfs::store::Store;

impl Harness {
    /// Imports a layout with `images` small images tagged t0, t1... as `repo`.
    fn import(&self, dir: &str, repo: &str, images: usize, seed: u64) {
        let dir = self.tmp.path().join(dir);
        let mut b = LayoutBuilder::new(&dir);
        for i in 0..images {
            b.small_image(&format!("t{i}"), 2, 4096 + i as u64, seed + i as u64);
        }
        archive::import(&*self.store, &Source::Dir(dir), Some(repo)).unwrap();
    }

    /// Another process's view of the store: its changes reach the mount through the records.
    fn other(&self) -> Store {
        Store::open(self.store.root()).unwrap()
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, FsError> {
        self.read_as(path, 1)
    }

    fn entries(&self, repo: &str) -> Vec<Entry> {
        self.store
            .records()
            .of_repository(repo)
            .unwrap()
            .into_iter()
            .map(|i| Entry {
                name: i.name,
                target: i.target,
            })
            .collect()
    }
}

fn errno(r: Result<impl std::fmt::Debug, FsError>) -> i32 {
    r.expect_err("expected an error").errno()
}

#[test]
fn tree_files_and_bytes_match_the_records_and_the_store() {
    let h = Harness::new();
    h.import("a", "busybox", 2, 1);
    h.store
        .records()
        .put(&[(
            "docker.io/library/busybox:1.36".parse().unwrap(),
            h.entries("busybox")[0].target.clone(),
        )])
        .unwrap();
    h.fs.invalidate();

    assert_eq!(h.list("").unwrap(), ["busybox", "docker.io"]);
    assert_eq!(h.list("docker.io/library").unwrap(), ["busybox"]);
    for repo in ["busybox", "docker.io/library/busybox"] {
        assert_eq!(h.list(repo).unwrap(), ["index.json", "oci-layout", "blobs"]);
        assert_eq!(h.list(&format!("{repo}/blobs")).unwrap(), ["sha256"]);

        let entries = h.entries(repo);
        assert_eq!(
            h.read(&format!("{repo}/index.json")).unwrap(),
            layout::index_json(&entries),
            "index.json is the export's"
        );
        assert_eq!(
            h.read(&format!("{repo}/oci-layout")).unwrap(),
            oci::layout_file_bytes()
        );
        let blobs = layout::blobs(&*h.store, &entries, OnMissing::Fail).unwrap();
        let listed = h.list(&format!("{repo}/blobs/sha256")).unwrap();
        let want: Vec<String> = blobs.keys().map(|d| d.hex().to_owned()).collect();
        assert_eq!(listed, want);
        for (digest, desc) in &blobs {
            let path = format!("{repo}/{}", digest.blob_path());
            let attr = h.walk(&path).unwrap();
            assert_eq!(
                (attr.kind, attr.size, attr.perm),
                (Kind::File, desc.size, 0o444)
            );
            assert_eq!(
                h.read(&path).unwrap(),
                std::fs::read(h.store.blob_path(digest)).unwrap()
            );
        }
    }
    // The same blob is one inode wherever it shows.
    let d = &h.entries("busybox")[0].target.digest;
    assert_eq!(
        h.walk(&format!("busybox/{}", d.blob_path())).unwrap().ino,
        h.walk(&format!("docker.io/library/busybox/{}", d.blob_path()))
            .unwrap()
            .ino
    );
    let dir = h.walk("busybox").unwrap();
    assert_eq!((dir.kind, dir.perm, dir.nlink), (Kind::Dir, 0o755, 3));
    let idx = h.walk("busybox/index.json").unwrap();
    assert_eq!((idx.perm, idx.nlink), (0o644, 1));
    assert_eq!(h.walk("busybox/oci-layout").unwrap().perm, 0o444);
    assert_eq!(h.walk("").unwrap().nlink, 4);
    assert_eq!(h.fs.open_handles(), 0);
}

#[test]
fn bad_paths_and_writes_get_the_right_errno() {
    let h = Harness::new();
    h.import("a", "busybox", 1, 2);
    let d = h.entries("busybox")[0].target.digest.clone();
    let upper = d.hex().to_uppercase();
    let cases: Vec<(String, i32)> = vec![
        ("nope".into(), libc::ENOENT),
        ("busybox/nope".into(), libc::ENOENT),
        ("busybox/blobs/sha384".into(), libc::ENOENT),
        ("busybox/blobs/sha512".into(), libc::ENOENT),
        (format!("busybox/blobs/sha256/{upper}"), libc::ENOENT),
        (
            format!("busybox/blobs/sha256/{}", &d.hex()[1..]),
            libc::ENOENT,
        ),
        ("busybox/blobs/sha256/..".into(), libc::ENOENT),
        (
            format!("busybox/blobs/sha256/{}", "0".repeat(64)),
            libc::ENOENT,
        ),
        ("busybox/index.json/x".into(), libc::ENOTDIR),
        ("busybox/oci-layout/x".into(), libc::ENOTDIR),
    ];
    for (path, want) in cases {
        assert_eq!(errno(h.walk(&path)), want, "{path}");
    }
    let idx = h.walk("busybox/index.json").unwrap().ino;
    let blob = h.walk(&format!("busybox/{}", d.blob_path())).unwrap().ino;
    let ro = Fs::new(
        h.store.clone(),
        FsOptions {
            read_only: true,
            ..FsOptions::default()
        },
    );
    let ro_walk = |path: &str| {
        let mut ino = layoutfs::fs::root_ino();
        for c in path.split('/') {
            ino = ro.lookup(ino, OsStr::new(c)).unwrap().ino;
        }
        ino
    };
    let (ro_idx, ro_blob) = (
        ro_walk("busybox/index.json"),
        ro_walk(&format!("busybox/{}", d.blob_path())),
    );
    for (ino, flags) in [
        (ro_idx, libc::O_WRONLY),
        (ro_idx, libc::O_RDWR),
        (ro_blob, libc::O_WRONLY),
        (ro_blob, libc::O_RDONLY | libc::O_TRUNC),
    ] {
        assert_eq!(errno(ro.open(ino, flags, 1)), libc::EROFS);
    }
    assert_eq!(errno(ro.mkdir(layoutfs::fs::root_ino(), "x")), libc::EROFS);
    let _ = (idx, blob);
    let dir = h.walk("busybox").unwrap().ino;
    assert_eq!(errno(h.fs.open(dir, libc::O_RDONLY, 1)), libc::EISDIR);
    assert_eq!(errno(h.fs.opendir(idx)), libc::ENOTDIR);
    assert_eq!(errno(h.fs.readdir(999, 0)), libc::EBADF);
    assert_eq!(errno(h.fs.read(999, 0, 10)), libc::EBADF);
    assert_eq!(errno(h.fs.getattr(123_456)), libc::ENOENT);
    assert_eq!(h.fs.open_handles(), 0);
}

#[test]
fn changes_by_other_processes_show_within_a_second() {
    let h = Harness::new();
    h.import("a", "busybox", 1, 3);
    assert_eq!(h.list("").unwrap(), ["busybox"]);
    let before = h.read("busybox/index.json").unwrap();

    // Imported elsewhere: a new repository appears.
    let dir = h.tmp.path().join("b");
    LayoutBuilder::new(&dir).small_image("1", 1, 100, 9);
    archive::import(&h.other(), &Source::Dir(dir), Some("alpine")).unwrap();
    within_a_second("import", || h.list("").unwrap() == ["alpine", "busybox"]);

    // Tagged elsewhere: index.json grows.
    let target = h.entries("busybox")[0].target.clone();
    let other = h.other();
    other
        .records()
        .put(&[("busybox:extra".parse().unwrap(), target)])
        .unwrap();
    within_a_second("tag", || h.read("busybox/index.json").unwrap() != before);
    assert_eq!(
        h.read("busybox/index.json").unwrap(),
        layout::index_json(&h.entries("busybox"))
    );

    // Removed elsewhere: gone.
    let names: Vec<Reference> = h.entries("busybox").into_iter().map(|e| e.name).collect();
    other.records().remove(&names).unwrap();
    within_a_second("rm", || h.walk("busybox").is_err());
    assert_eq!(errno(h.walk("busybox")), libc::ENOENT);
    assert_eq!(h.list("").unwrap(), ["alpine"]);
}

/// Stores `bytes` as a blob and returns its descriptor.
fn put_blob(store: &Store, media_type: &str, bytes: &[u8]) -> Descriptor {
    let digest = Digest::of(Algorithm::Sha256, bytes);
    let mut ing = store.ingest(&digest, Some(bytes.len() as u64)).unwrap();
    ing.write_all(bytes).unwrap();
    ing.commit().unwrap();
    common::gen::desc(media_type, digest, bytes.len() as u64)
}

#[test]
fn a_child_missing_from_the_store_is_left_out() {
    // A single-platform pull of a multi-platform index: the other platform's manifest is not
    // in the store. The layout shows what is there, and no error.
    let h = Harness::new();
    let config = put_blob(&h.store, MEDIA_CONFIG, b"{}");
    let layer = put_blob(&h.store, common::gen::MEDIA_LAYER, b"layer");
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": oci::MEDIA_OCI_MANIFEST,
        "config": config, "layers": [layer],
    });
    let mut present = put_blob(
        &h.store,
        oci::MEDIA_OCI_MANIFEST,
        &serde_json::to_vec(&manifest).unwrap(),
    );
    present.platform =
        serde_json::from_value(serde_json::json!({"os":"linux","architecture":"amd64"})).unwrap();
    let mut absent = common::gen::desc(
        oci::MEDIA_OCI_MANIFEST,
        Digest::of(Algorithm::Sha256, b"not here"),
        8,
    );
    absent.platform =
        serde_json::from_value(serde_json::json!({"os":"linux","architecture":"arm64"})).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": oci::MEDIA_OCI_INDEX, "manifests": [present, absent],
    });
    let index = put_blob(
        &h.store,
        oci::MEDIA_OCI_INDEX,
        &serde_json::to_vec(&index).unwrap(),
    );
    h.store
        .records()
        .put(&[("multi:latest".parse().unwrap(), index.clone())])
        .unwrap();
    h.fs.invalidate();
    let listed: BTreeSet<String> = h.list("multi/blobs/sha256").unwrap().into_iter().collect();
    let want: BTreeSet<String> = [&index, &present, &config, &layer]
        .iter()
        .map(|d| d.digest.hex().to_owned())
        .collect();
    assert_eq!(listed, want);
}

#[test]
fn a_vanished_or_damaged_blob_is_eio_never_wrong_bytes() {
    let h = Harness::new();
    h.import("a", "busybox", 1, 4);
    let entries = h.entries("busybox");
    let blobs = layout::blobs(&*h.store, &entries, OnMissing::Fail).unwrap();
    let layers: Vec<&Digest> = blobs
        .iter()
        .filter(|(_, d)| d.media_type == common::gen::MEDIA_LAYER)
        .map(|(d, _)| d)
        .collect();
    let (a, b) = (layers[0], layers[1]);
    let path = |d: &Digest| format!("busybox/{}", d.blob_path());
    let good_b = h.read(&path(b)).unwrap();

    // Vanished: EIO naming the digest.
    std::fs::remove_file(h.store.blob_path(a)).unwrap();
    let e = h.read(&path(a)).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains(&a.to_string()), "{e}");

    // Damaged in place, same size (after it was read once): EIO.
    let p = h.store.blob_path(b);
    let mut bytes = good_b.clone();
    bytes[10] ^= 0xff;
    std::thread::sleep(Duration::from_millis(20)); // a new mtime
    set_writable(&p);
    std::fs::write(&p, &bytes).unwrap();
    let e = h.read(&path(b)).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains(&b.to_string()), "{e}");

    // Cut short: EIO.
    std::fs::write(&p, &good_b[..100]).unwrap();
    assert_eq!(errno(h.read(&path(b))), libc::EIO);

    // Restored: readable again.
    std::fs::write(&p, &good_b).unwrap();
    assert_eq!(h.read(&path(b)).unwrap(), good_b);
    assert_eq!(h.fs.open_handles(), 0);
}

fn set_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn ten_thousand_images_list_without_reading_a_manifest() {
    let h = Harness::new();
    let images: Vec<(Reference, Descriptor)> = (0..10_000)
        .map(|i| {
            let d = common::gen::desc(
                oci::MEDIA_OCI_MANIFEST,
                Digest::of(Algorithm::Sha256, format!("m{i}").as_bytes()),
                100,
            );
            (format!("repo{:05}/app:v{i}", i % 5000).parse().unwrap(), d)
        })
        .collect();
    h.store.records().put(&images).unwrap();
    let start = Instant::now();
    let root = h.list("").unwrap();
    assert_eq!(root.len(), 5000);
    assert_eq!(h.list("repo00042").unwrap(), ["app"]);
    let took = start.elapsed();
    assert_eq!(h.fs.repo_views_built(), 0, "no manifest read to list");
    assert!(took < Duration::from_secs(5), "listing took {took:?}");
    // Looking into one repository reads that repository only.
    assert_eq!(
        h.list("repo00042/app").unwrap(),
        ["index.json", "oci-layout", "blobs"]
    );
    assert_eq!(h.list("repo00042/app/blobs/sha256").unwrap().len(), 0);
    assert_eq!(h.fs.repo_views_built(), 1);
}
