//! The filesystem core's inode lifetimes, driven with no kernel: entries handed out are counted,
//! forgotten nodes are freed unless pinned (an open file, a file written into the mount), a node
//! freed and looked up again has the same number, readdirplus counts what it hands out, and the
//! cache of repository views stays bounded however many repositories are looked at.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;

use common::core::Harness;
use common::gen::LayoutBuilder;
use layoutfs::archive::{self, Source};
use layoutfs::digest::{Algorithm, Digest};
use layoutfs::fs::view::MAX_VIEWS;
use layoutfs::fs::{root_ino, FsError, Kind};
use layoutfs::oci::{self, Descriptor};
use layoutfs::reference::Reference;

/// Imports `repos` repositories of `tags` small images each (one shared layer).
fn store_of(h: &Harness, repos: usize, tags: usize) {
    for r in 0..repos {
        let dir = h.tmp.path().join(format!("src{r}"));
        let mut b = LayoutBuilder::new(&dir);
        let shared = b.add_random_layer(4096, 1);
        for t in 0..tags {
            let own = b.add_random_layer(512, 100 + (r * tags + t) as u64);
            let m = b.add_manifest(&[shared.clone(), own], "amd64");
            b.tag(&m, Some(&format!("t{t}")));
        }
        b.write_index();
        archive::import(&*h.store, &Source::Dir(dir), Some(&format!("r{r}"))).unwrap();
    }
}

/// Every path below the root with its inode number, looked up as the kernel does (each
/// lookup handed out as an entry, so counted): a `ls -lR`.
fn walk_entries(h: &Harness) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![(String::new(), root_ino())];
    while let Some((path, ino)) = dirs.pop() {
        let fh = h.fs.opendir(ino).unwrap();
        let entries = h.fs.readdir(fh, 0).unwrap();
        h.fs.releasedir(fh);
        for e in entries
            .into_iter()
            .filter(|e| e.name != "." && e.name != "..")
        {
            let a = h.fs.lookup_entry(ino, OsStr::new(&e.name), None).unwrap();
            assert_eq!(a.ino, e.ino, "{path}/{}: readdir and lookup agree", e.name);
            let p = format!("{path}/{}", e.name);
            if a.kind == Kind::Dir {
                dirs.push((p.clone(), a.ino));
            }
            out.insert(p, a.ino);
        }
    }
    out
}

/// Forgets every reference `walk_entries` handed out.
fn forget_all(h: &Harness, seen: &BTreeMap<String, u64>) {
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    for ino in seen.values() {
        *counts.entry(*ino).or_default() += 1;
    }
    for (ino, n) in &counts {
        assert_eq!(h.fs.lookups(*ino), Some(*n), "inode {ino}");
    }
    h.fs.batch_forget(counts);
}

#[test]
fn forgotten_nodes_are_freed_and_come_back_with_their_numbers() {
    let h = Harness::new();
    store_of(&h, 3, 2);
    assert_eq!(h.fs.inode_count(), 1, "the root alone before any lookup");
    let first = walk_entries(&h);
    // Per repository: its directory, index.json, oci-layout, blobs/, sha256/; the blobs:
    // the shared layer is one node whatever repository shows it.
    let blobs: std::collections::BTreeSet<u64> = first
        .iter()
        .filter(|(p, _)| p.contains("/sha256/"))
        .map(|(_, i)| *i)
        .collect();
    assert_eq!(h.fs.inode_count(), 1 + 3 * 5 + blobs.len());
    // Looked up twice, forgotten once: still there.
    let index = first["/r0/index.json"];
    h.fs.lookup_entry(first["/r0"], OsStr::new("index.json"), None)
        .unwrap();
    h.fs.forget(index, 1);
    assert!(h.fs.getattr(index).is_ok());
    forget_all(&h, &first);
    assert_eq!(h.fs.inode_count(), 1, "everything but the root freed");
    assert!(matches!(h.fs.getattr(index), Err(FsError::NotFound)));
    // The root is never freed, and forgetting what is not live changes nothing.
    h.fs.forget(root_ino(), 10);
    h.fs.forget(index, 1);
    assert!(h.fs.getattr(root_ino()).is_ok());
    let again = walk_entries(&h);
    assert_eq!(first, again, "the same numbers after forget");
}

#[test]
fn open_files_and_files_written_into_the_mount_are_pinned() {
    let h = Harness::new();
    store_of(&h, 1, 1);
    let seen = walk_entries(&h);
    let (path, blob) = seen
        .iter()
        .find(|(p, _)| p.contains("/sha256/"))
        .map(|(p, i)| (p.clone(), *i))
        .unwrap();
    // The adapter keeps no descriptor of its own past the open (it hands it to the kernel).
    let fh = h.fs.open(blob, libc::O_RDONLY, 1).unwrap().fh;
    forget_all(&h, &seen);
    assert_eq!(h.fs.inode_count(), 2, "the root and the open blob");
    assert!(h.fs.read(fh, 0, 10).is_ok());
    assert_eq!(h.fs.getattr(blob).unwrap().ino, blob);
    h.fs.release(fh);
    assert_eq!(h.fs.inode_count(), 1, "freed with its last handle");
    assert_eq!(h.walk(&path).unwrap().ino, blob, "same number back");

    // A file written into the mount keeps its number while it exists: the write state names
    // its directory's entries by number.
    h.put("r0/oci-put-blob1", b"hello", 7).unwrap();
    let dir = h.walk("r0").unwrap().ino;
    let file =
        h.fs.lookup_entry(dir, OsStr::new("oci-put-blob1"), None)
            .unwrap()
            .ino;
    h.fs.forget(file, 1);
    assert!(h.fs.lookups(file).is_some(), "pinned by its entry");
    h.fs.lookup_entry(root_ino(), OsStr::new("r0"), None)
        .unwrap();
    h.fs.forget(dir, u64::MAX);
    assert!(
        h.fs.lookups(dir).is_some(),
        "pinned by what was written in it"
    );
    assert_eq!(h.walk("r0/oci-put-blob1").unwrap().ino, file);
}

#[test]
fn readdirplus_counts_the_entries_it_hands_out_but_dots() {
    let h = Harness::new();
    store_of(&h, 1, 3);
    let sha = h.walk("r0/blobs/sha256").unwrap().ino;
    let before = h.fs.inode_count();
    let fh = h.fs.opendir(sha).unwrap();
    let mut got = Vec::new();
    h.fs.readdirplus(fh, 0, |next, e, a| {
        let a = a.expect("every entry has attributes");
        assert_eq!(a.ino, e.ino);
        got.push((next, e.name.clone(), a.ino, a.kind));
        false
    })
    .unwrap();
    // `.`, `..`, the shared layer, and a layer, config and manifest per image.
    assert_eq!(got.len(), 2 + 1 + 3 * 3);
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        (1..=got.len() as u64).collect::<Vec<_>>()
    );
    for (_, name, ino, kind) in &got[2..] {
        assert_eq!(*kind, Kind::File);
        assert_eq!(h.fs.lookups(*ino), Some(1), "{name}");
    }
    assert_eq!(h.fs.inode_count(), before + got.len() - 2);
    // From an offset, with the buffer full after two: only what was taken is counted.
    let mut taken = Vec::new();
    h.fs.readdirplus(fh, 4, |_, _, a| {
        if taken.len() == 2 {
            return true;
        }
        taken.push(a.unwrap().ino);
        false
    })
    .unwrap();
    h.fs.releasedir(fh);
    assert_eq!(taken, [got[4].2, got[5].2]);
    assert_eq!(h.fs.lookups(got[4].2), Some(2));
    assert_eq!(
        h.fs.lookups(got[6].2),
        Some(1),
        "the entry that did not fit"
    );
    assert!(matches!(
        h.fs.readdirplus(fh, 0, |_, _, _| false),
        Err(FsError::BadHandle(_))
    ));
}

#[test]
fn the_cache_of_repository_views_is_bounded() {
    let h = Harness::new();
    let repos = MAX_VIEWS + MAX_VIEWS / 2;
    let images: Vec<(Reference, Descriptor)> = (0..repos)
        .map(|i| {
            let d = common::gen::desc(
                oci::MEDIA_OCI_MANIFEST,
                Digest::of(Algorithm::Sha256, format!("m{i}").as_bytes()),
                100,
            );
            (format!("repo{i:05}:v1").parse().unwrap(), d)
        })
        .collect();
    h.store.records().put(&images).unwrap();
    let sizes: Vec<u64> = (0..repos)
        .map(|i| h.walk(&format!("repo{i:05}/index.json")).unwrap().size)
        .collect();
    assert_eq!(h.fs.repo_views_built(), repos);
    let kept = h.fs.repo_views_kept();
    assert!(kept <= MAX_VIEWS && kept > 0, "{kept} views kept");
    // The last looked at is kept; the first was dropped and is computed again, the same.
    h.walk(&format!("repo{:05}/index.json", repos - 1)).unwrap();
    assert_eq!(h.fs.repo_views_built(), repos);
    assert_eq!(h.walk("repo00000/index.json").unwrap().size, sizes[0]);
    assert_eq!(h.fs.repo_views_built(), repos + 1);
}
