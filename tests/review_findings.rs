//! Findings of the review of the write-side restructuring (issue 12): each test reproduces one.

mod common;

use std::ffi::OsStr;

use common::core::Harness;
use common::gen::LayoutBuilder;
use layoutfs::fs::FsError;

const CHUNK: usize = 64 << 10;

fn layout(h: &Harness, name: &str, images: usize, seed: u64) -> std::path::PathBuf {
    let dir = h.tmp.path().join(name);
    let mut b = LayoutBuilder::new(&dir);
    for i in 0..images {
        b.small_image(&format!("t{i}"), 2, 5000 + i as u64, seed + i as u64);
    }
    dir
}

fn split<'a>(h: &Harness, path: &'a str) -> (u64, &'a str) {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    (h.walk(parent).unwrap().ino, name)
}

fn mkdir_p(h: &Harness, path: &str) -> Result<(), FsError> {
    let mut done = String::new();
    for c in path.split('/') {
        let parent = h.walk(&done)?.ino;
        if h.fs.lookup(parent, OsStr::new(c)).is_err() {
            h.fs.mkdir(parent, c)?;
        }
        done = if done.is_empty() { c.to_owned() } else { format!("{done}/{c}") };
    }
    Ok(())
}

fn put(h: &Harness, path: &str, bytes: &[u8], pid: u32) -> Result<(), FsError> {
    let (parent, name) = split(h, path);
    let fh = match h.fs.lookup(parent, OsStr::new(name)) {
        Ok(a) => h.fs.open(a.ino, libc::O_WRONLY | libc::O_TRUNC, pid)?.fh,
        Err(_) => h.fs.create(parent, name)?.1.fh,
    };
    let mut result = Ok(());
    for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
        if let Err(e) = h.fs.write(fh, (i * CHUNK) as u64, chunk) {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        result = h.fs.flush(fh, pid);
    }
    h.fs.release(fh);
    result
}

fn blobs_of(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

fn images(h: &Harness) -> Vec<String> {
    let mut v: Vec<String> = h
        .store
        .records()
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.name.to_string())
        .collect();
    v.sort();
    v
}

/// Finding 1: rename(2) of a repository onto a directory that is not empty (a copy in progress:
/// `oci-layout` written, blobs committed, no index.json yet) succeeds: the check looks only at
/// images and sub-repositories, not at what was written there. POSIX says ENOTEMPTY; here the
/// target's files vanish from the listing.
#[test]
fn renaming_a_repository_onto_a_directory_being_copied_into_is_enotempty() {
    let h = Harness::new();
    let src = layout(&h, "src", 1, 7);
    // b: a copy in progress (cp -r, index.json last).
    mkdir_p(&h, "b").unwrap();
    put(&h, "b/oci-layout", &std::fs::read(src.join("oci-layout")).unwrap(), 1).unwrap();
    mkdir_p(&h, "b/blobs/sha256").unwrap();
    for (name, bytes) in blobs_of(&src) {
        put(&h, &format!("b/blobs/sha256/{name}"), &bytes, 1).unwrap();
    }
    let before = h.list("b").unwrap();
    assert_eq!(before, ["oci-layout", "blobs"]);
    // a: an empty repository.
    mkdir_p(&h, "a").unwrap();
    let root = layoutfs::fs::root_ino();
    let r = h.fs.rename(root, "a", root, "b", false, 9);
    let listed = h.list("b").unwrap_or_default();
    assert!(
        r.is_err(),
        "rename onto a non-empty directory succeeded; b now lists {listed:?} (was {before:?})"
    );
}
