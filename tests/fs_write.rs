//! The write side of the filesystem core, driven with no kernel: copying a layout in (files in
//! any order), temporary names renamed into place, index.json rewritten by several writers,
//! removing and renaming repositories, and every bad write refused with nothing entering the
//! store or the records.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;

use common::core::{source_blobs, Harness};
use common::gen::LayoutBuilder;
use layoutfs::digest::{Algorithm, Digest};
use layoutfs::fs::FsError;
use layoutfs::layout;
use layoutfs::oci;

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    r.expect_err("expected an error").errno()
}

#[test]
fn a_copied_layout_is_registered_and_reads_back_the_same() {
    for index_first in [false, true] {
        let h = Harness::new();
        let src = h.layout("src", 2, 1);
        h.copy_in(&src, "copied", index_first).unwrap();
        assert_eq!(
            h.images(),
            ["copied:t0", "copied:t1"],
            "index first: {index_first}"
        );
        assert!(h.fs.pending().is_empty());
        assert_eq!(
            h.list("copied").unwrap(),
            ["index.json", "oci-layout", "blobs"]
        );
        for (name, bytes) in source_blobs(&src) {
            assert_eq!(
                h.read_as(&format!("copied/blobs/sha256/{name}"), 2)
                    .unwrap(),
                bytes
            );
            assert_eq!(
                std::fs::read(h.store.root().join("blobs/sha256").join(&name)).unwrap(),
                bytes
            );
        }
        let entries: Vec<layout::Entry> = h
            .store
            .records()
            .of_repository("copied")
            .unwrap()
            .into_iter()
            .map(|i| layout::Entry {
                name: i.name,
                target: i.target,
            })
            .collect();
        assert_eq!(
            h.read_as("copied/index.json", 2).unwrap(),
            layout::index_json(&entries)
        );
        assert_eq!(h.fs.open_handles(), 0);
        assert_eq!(h.ingests(), 0, "no ingest left behind");
    }
}

#[test]
fn an_image_waits_for_its_blobs_and_registers_with_the_last() {
    let h = Harness::new();
    let src = h.layout("src", 1, 2);
    h.mkdir_p("late/blobs/sha256").unwrap();
    h.put(
        "late/index.json",
        &std::fs::read(src.join("index.json")).unwrap(),
        1,
    )
    .unwrap();
    assert!(h.images().is_empty());
    assert_eq!(h.fs.pending().len(), 1);
    // Pending: index.json shows what was written.
    let shown: serde_json::Value =
        serde_json::from_slice(&h.read_as("late/index.json", 1).unwrap()).unwrap();
    assert_eq!(shown["manifests"].as_array().unwrap().len(), 1);
    let blobs = source_blobs(&src);
    let (last, rest) = blobs.split_last().unwrap();
    for (name, bytes) in rest {
        h.put(&format!("late/blobs/sha256/{name}"), bytes, 1)
            .unwrap();
        assert!(h.images().is_empty(), "registered before its last blob");
    }
    h.put(&format!("late/blobs/sha256/{}", last.0), &last.1, 1)
        .unwrap();
    assert_eq!(h.images(), ["late:t0"]);
    assert!(h.fs.pending().is_empty());
}

#[test]
fn a_blob_that_never_arrives_registers_nothing() {
    let h = Harness::new();
    let src = h.layout("src", 1, 3);
    let blobs = source_blobs(&src);
    h.copy_in(&src, "partial", true).unwrap();
    assert_eq!(h.images(), ["partial:t0"]);

    // A second layout whose index names a blob that is never written.
    let other = h.layout("other", 1, 30);
    h.mkdir_p("waits/blobs/sha256").unwrap();
    h.put(
        "waits/index.json",
        &std::fs::read(other.join("index.json")).unwrap(),
        1,
    )
    .unwrap();
    for (name, bytes) in source_blobs(&other).iter().skip(1) {
        h.put(&format!("waits/blobs/sha256/{name}"), bytes, 1)
            .unwrap();
    }
    assert_eq!(h.images(), ["partial:t0"]);
    assert_eq!(
        h.fs.pending()
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        ["waits:t0"]
    );
    // What was there is untouched.
    for (name, bytes) in blobs {
        assert_eq!(
            h.read_as(&format!("partial/blobs/sha256/{name}"), 1)
                .unwrap(),
            bytes
        );
    }
}

#[test]
fn bad_blobs_fail_at_close_and_nothing_enters_the_store() {
    let h = Harness::new();
    let src = h.layout("src", 1, 4);
    let blobs = source_blobs(&src);
    let (name, good) = blobs.iter().max_by_key(|(_, b)| b.len()).unwrap();
    h.mkdir_p("bad/blobs/sha256").unwrap();
    let path = format!("bad/blobs/sha256/{name}");
    let before = h.store_blobs();

    // Corrupted, one byte short, one byte long: EIO at close.
    let mut corrupted = good.clone();
    corrupted[7] ^= 1;
    let short = good[..good.len() - 1].to_vec();
    let mut long = good.clone();
    long.push(0);
    for (what, bytes) in [
        ("corrupted", &corrupted),
        ("short", &short),
        ("long", &long),
    ] {
        let e = h.put(&path, bytes, 1).unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{what}: {e}");
        assert!(e.to_string().contains(name.as_str()), "{what}: {e}");
        assert_eq!(h.store_blobs(), before, "{what}");
    }
    // A write past the size the waiting image's manifest gives: EFBIG at the write.
    h.put(
        "bad/index.json",
        &std::fs::read(src.join("index.json")).unwrap(),
        1,
    )
    .unwrap();
    for (n, bytes) in blobs.iter().filter(|(n, _)| n != name) {
        h.put(&format!("bad/blobs/sha256/{n}"), bytes, 1).unwrap();
    }
    let before = h.store_blobs();
    assert_eq!(errno(h.put(&path, &long, 1)), libc::EFBIG);
    assert_eq!(h.store_blobs(), before);
    assert!(h.images().is_empty());
    // Renamed into place with the wrong bytes: the rename fails and the file keeps its name.
    let (root, _) = h.split("bad/x");
    h.put("bad/oci-put-blob123", &corrupted, 1).unwrap();
    let alg = h.walk("bad/blobs/sha256").unwrap().ino;
    assert_eq!(
        errno(h.fs.rename(root, "oci-put-blob123", alg, name, false, 1)),
        libc::EIO
    );
    assert_eq!(h.read_as("bad/oci-put-blob123", 1).unwrap(), corrupted);
    assert_eq!(h.store_blobs(), before);

    // Then the right bytes: in, and the image registers.
    for (n, bytes) in &blobs {
        h.put(&format!("bad/blobs/sha256/{n}"), bytes, 1).unwrap();
    }
    assert_eq!(h.images(), ["bad:t0"]);
    assert_eq!(h.fs.open_handles(), 0);
    assert_eq!(h.ingests(), 1, "the temporary file holds its bytes");
    h.fs.unlink(root, "oci-put-blob123").unwrap();
    assert_eq!(h.ingests(), 0);
}

#[test]
fn bad_names_are_einval() {
    let h = Harness::new();
    let root = layoutfs::fs::root_ino();
    assert_eq!(errno(h.fs.mkdir(root, "Upper")), libc::EINVAL);
    assert_eq!(errno(h.fs.mkdir(root, "-dash")), libc::EINVAL);
    assert_eq!(errno(h.fs.create(root, "loose-file")), libc::EINVAL);
    h.mkdir_p("repo/blobs").unwrap();
    let blobs = h.walk("repo/blobs").unwrap().ino;
    assert_eq!(errno(h.fs.mkdir(blobs, "sha384")), libc::EINVAL);
    assert_eq!(errno(h.fs.mkdir(blobs, "md5")), libc::EINVAL);
    h.mkdir_p("repo/blobs/sha256").unwrap();
    let alg = h.walk("repo/blobs/sha256").unwrap().ino;
    let hex = Digest::of(Algorithm::Sha256, b"x").hex().to_owned();
    for name in [hex.to_uppercase(), hex[..63].to_owned(), "z".repeat(64)] {
        assert_eq!(errno(h.fs.create(alg, &name)), libc::EINVAL, "{name}");
    }
    assert_eq!(errno(h.fs.mkdir(alg, &hex)), libc::EINVAL);
    // Scratch directories inside a repository are fine (umoci's .umoci-*).
    let repo = h.walk("repo").unwrap().ino;
    h.fs.mkdir(repo, ".umoci-123").unwrap();
    assert!(h.images().is_empty());
    assert!(h.store_blobs().is_empty());
}

#[test]
fn bad_index_and_layout_files_fail_at_close_and_change_nothing() {
    let h = Harness::new();
    let src = h.layout("src", 1, 5);
    h.copy_in(&src, "repo", false).unwrap();
    let before = h.images();
    let good_index = h.read_as("repo/index.json", 1).unwrap();
    let missing = Digest::of(Algorithm::Sha256, b"nothing");
    // A ref name pinned to other content; one name twice under two media types.
    let good: serde_json::Value = serde_json::from_slice(&good_index).unwrap();
    let mut pinned = good.clone();
    pinned["manifests"][0]["annotations"][oci::ANNOTATION_REF_NAME] =
        format!("repo@{missing}").into();
    let mut twice = good.clone();
    let mut leaf = good["manifests"][0].clone();
    leaf["mediaType"] = "application/octet-stream".into();
    twice["manifests"].as_array_mut().unwrap().push(leaf);
    for bad in [
        serde_json::to_vec(&pinned).unwrap(),
        serde_json::to_vec(&twice).unwrap(),
        b"{not json".to_vec(),
        br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:ABC","size":1}]}"#.to_vec(),
        br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../x","size":1}]}"#.to_vec(),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{missing}","size":-1}}]}}"#).into_bytes(),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{missing}","size":1,"annotations":{{"org.opencontainers.image.ref.name":"Bad Tag!"}}}}]}}"#).into_bytes(),
    ] {
        let e = h.put("repo/index.json", &bad, 1).unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{e}");
        assert!(e.to_string().contains("index.json"), "{e}");
        assert_eq!(h.images(), before);
        assert!(h.fs.pending().is_empty());
        assert_eq!(h.read_as("repo/index.json", 1).unwrap(), good_index);
    }
    for bad in [&br#"{"imageLayoutVersion":"2.0.0"}"#[..], b"nope"] {
        let e = h.put("repo/oci-layout", bad, 1).unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{e}");
        assert!(e.to_string().contains("oci-layout"), "{e}");
    }
    assert_eq!(
        h.read_as("repo/oci-layout", 1).unwrap(),
        oci::layout_file_bytes()
    );
    assert_eq!(h.images(), before);
}

#[test]
fn writers_that_read_the_index_lose_no_tag() {
    let h = Harness::new();
    let src = h.layout("src", 3, 6);
    h.copy_in(&src, "repo", false).unwrap();
    let full: serde_json::Value =
        serde_json::from_slice(&h.read_as("repo/index.json", 9).unwrap()).unwrap();
    let only = |i: usize| {
        let mut v = full.clone();
        let m = v["manifests"][i].clone();
        v["manifests"] = serde_json::json!([m]);
        v
    };
    // Writers 1 and 2 read an index holding t0 only, then each add their tag.
    h.put("repo/index.json", &serde_json::to_vec(&only(0)).unwrap(), 9)
        .unwrap();
    assert_eq!(h.images(), ["repo:t0"]);
    let seen = h.read_as("repo/index.json", 1).unwrap();
    assert_eq!(h.read_as("repo/index.json", 2).unwrap(), seen);
    let with = |i: usize| {
        let mut v = only(0);
        v["manifests"]
            .as_array_mut()
            .unwrap()
            .push(full["manifests"][i].clone());
        serde_json::to_vec(&v).unwrap()
    };
    h.put("repo/index.json", &with(1), 1).unwrap();
    h.put("repo/index.json", &with(2), 2).unwrap();
    assert_eq!(h.images(), ["repo:t0", "repo:t1", "repo:t2"]);

    // A writer that found no index.json (skopeo into a new repository) adds, removes nothing.
    let root = layoutfs::fs::root_ino();
    h.fs.note_absent(root, OsStr::new("fresh"), || 4);
    h.mkdir_p("fresh").unwrap();
    h.put(
        "fresh/index.json",
        &serde_json::to_vec(&only(0)).unwrap(),
        5,
    )
    .unwrap();
    h.fs.note_absent(h.walk("fresh").unwrap().ino, OsStr::new("index.json"), || 4);
    h.put(
        "fresh/index.json",
        &serde_json::to_vec(&only(1)).unwrap(),
        4,
    )
    .unwrap();
    assert_eq!(
        h.images(),
        ["fresh:t0", "fresh:t1", "repo:t0", "repo:t1", "repo:t2"]
    );

    // A writer that did not read it (cp, tar) sets the repository to exactly what it lists:
    // that is how a tag is removed.
    h.put("repo/index.json", &serde_json::to_vec(&only(2)).unwrap(), 7)
        .unwrap();
    assert_eq!(h.images(), ["fresh:t0", "fresh:t1", "repo:t2"]);
}

#[test]
fn temporary_files_read_back_rename_and_vanish() {
    let h = Harness::new();
    let src = h.layout("src", 1, 7);
    let blobs = source_blobs(&src);
    h.mkdir_p("tmp/blobs/sha256").unwrap();
    let repo = h.walk("tmp").unwrap().ino;
    let alg = h.walk("tmp/blobs/sha256").unwrap().ino;
    // skopeo: oci-put-blob* in the layout root, renamed to its digest.
    for (i, (name, bytes)) in blobs.iter().enumerate() {
        let tmp = format!("oci-put-blob{i}");
        h.put(&format!("tmp/{tmp}"), bytes, 1).unwrap();
        assert_eq!(h.read_as(&format!("tmp/{tmp}"), 1).unwrap(), *bytes);
        h.fs.rename(repo, &tmp, alg, name, false, 1).unwrap();
        assert!(h.walk(&format!("tmp/{tmp}")).is_err());
    }
    // go-containerregistry: blobs/sha256/<hex><random>, renamed.
    let (name, bytes) = &blobs[0];
    let temp = format!("{name}123456");
    h.put(&format!("tmp/blobs/sha256/{temp}"), bytes, 1)
        .unwrap();
    h.fs.rename(alg, &temp, alg, name, false, 1).unwrap();
    // regclient: index.json.*.tmp renamed over index.json.
    h.put(
        "tmp/index.json.1.tmp",
        &std::fs::read(src.join("index.json")).unwrap(),
        1,
    )
    .unwrap();
    h.fs.rename(repo, "index.json.1.tmp", repo, "index.json", false, 1)
        .unwrap();
    assert_eq!(h.images(), ["tmp:t0"]);
    // A temporary file that is unlinked leaves nothing; truncation works.
    h.put("tmp/scratch", b"0123456789", 1).unwrap();
    let ino = h.walk("tmp/scratch").unwrap().ino;
    assert_eq!(h.fs.setattr(ino, None, Some(4), None).unwrap().size, 4);
    assert_eq!(h.read_as("tmp/scratch", 1).unwrap(), b"0123");
    h.fs.unlink(repo, "scratch").unwrap();
    assert!(h.walk("tmp/scratch").is_err());
    assert_eq!(h.fs.open_handles(), 0);
}

#[test]
fn removing_and_renaming_repositories() {
    let h = Harness::new();
    let src = h.layout("src", 2, 8);
    h.copy_in(&src, "a", false).unwrap();
    h.copy_in(&src, "b/nested", false).unwrap();
    let stored = h.store_blobs();
    let root = layoutfs::fs::root_ino();

    // mv a c: its images are renamed; the inode follows.
    let ino = h.walk("a").unwrap().ino;
    h.fs.rename(root, "a", root, "c", false, 1).unwrap();
    assert_eq!(h.walk("c").unwrap().ino, ino);
    assert!(h.walk("a").is_err());
    assert_eq!(h.images(), ["b/nested:t0", "b/nested:t1", "c:t0", "c:t1"]);
    h.fs.rename(root, "b", root, "d", false, 1).unwrap();
    assert_eq!(h.images(), ["c:t0", "c:t1", "d/nested:t0", "d/nested:t1"]);
    // Onto a repository with images: refused.
    assert_eq!(
        errno(h.fs.rename(root, "c", h.walk("d").unwrap().ino, "nested", false, 1)),
        libc::ENOTEMPTY
    );

    // rm -r c, as rm does it, in readdir's order: index.json (and with it every image), then
    // oci-layout, the blobs (no image needs them now), their directories, the directory.
    let c = h.walk("c").unwrap().ino;
    assert_eq!(h.list("c").unwrap(), ["index.json", "oci-layout", "blobs"]);
    assert_eq!(errno(h.fs.rmdir(root, "c")), libc::ENOTEMPTY);
    h.fs.unlink(c, "index.json").unwrap();
    h.fs.unlink(c, "oci-layout").unwrap();
    for name in h.list("c/blobs/sha256").unwrap() {
        h.fs.unlink(h.walk("c/blobs/sha256").unwrap().ino, &name)
            .unwrap();
    }
    let blobs = h.walk("c/blobs").unwrap().ino;
    h.fs.rmdir(blobs, "sha256").unwrap();
    h.fs.rmdir(c, "blobs").unwrap();
    h.fs.rmdir(root, "c").unwrap();
    assert!(h.walk("c").is_err());
    assert_eq!(h.images(), ["d/nested:t0", "d/nested:t1"]);
    // Blobs leave the store only by gc.
    assert_eq!(h.store_blobs(), stored);
    // The other repository still reads whole.
    for (name, bytes) in source_blobs(&src) {
        assert_eq!(
            h.read_as(&format!("d/nested/blobs/sha256/{name}"), 1)
                .unwrap(),
            bytes
        );
    }
}

#[test]
fn a_repository_imported_elsewhere_is_removed_in_any_order() {
    // The mount never saw its files written: each name shows because the repository has
    // images, and must stay removable once index.json (and so every image) is gone.
    for order in [
        ["index.json", "oci-layout", "blobs"],
        ["index.json", "blobs", "oci-layout"],
        ["oci-layout", "index.json", "blobs"],
    ] {
        let h = Harness::new();
        let src = h.layout("src", 1, 21);
        layoutfs::archive::import(
            &*h.store,
            &layoutfs::archive::Source::Dir(src.clone()),
            Some("r"),
        )
        .unwrap();
        let r = h.walk("r").unwrap().ino;
        assert_eq!(h.list("r").unwrap(), ["index.json", "oci-layout", "blobs"]);
        for name in order {
            if name == "blobs" {
                let alg = h.walk("r/blobs/sha256").unwrap().ino;
                for blob in h.list("r/blobs/sha256").unwrap() {
                    h.fs.unlink(alg, &blob).unwrap();
                }
                let blobs = h.walk("r/blobs").unwrap().ino;
                h.fs.rmdir(blobs, "sha256").unwrap();
                h.fs.rmdir(r, "blobs").unwrap();
            } else {
                h.fs.unlink(r, name)
                    .unwrap_or_else(|e| panic!("{order:?}: unlink {name}: {e}"));
            }
            assert!(h.walk(&format!("r/{name}")).is_err(), "{order:?}: {name}");
        }
        assert!(h.images().is_empty());
        h.fs.rmdir(layoutfs::fs::root_ino(), "r").unwrap();
        assert!(h.walk("r").is_err());
    }
}

#[test]
fn tar_over_an_existing_layout_replaces_it() {
    // tar unlinks each file it finds before writing it again.
    let h = Harness::new();
    let src = h.layout("src", 1, 9);
    h.copy_in(&src, "t", false).unwrap();
    let t = h.walk("t").unwrap().ino;
    for name in ["oci-layout", "index.json"] {
        h.fs.unlink(t, name).unwrap();
        assert!(h.walk(&format!("t/{name}")).is_err(), "{name} still there");
    }
    let alg = h.walk("t/blobs/sha256").unwrap().ino;
    for (name, _) in source_blobs(&src) {
        h.fs.unlink(alg, &name).unwrap();
        assert!(h.walk(&format!("t/blobs/sha256/{name}")).is_err());
    }
    h.copy_in(&src, "t", false).unwrap();
    assert_eq!(h.images(), ["t:t0"]);
    assert_eq!(h.list("t").unwrap(), ["index.json", "oci-layout", "blobs"]);
    assert_eq!(
        h.list("t/blobs/sha256").unwrap().len(),
        source_blobs(&src).len()
    );
}

#[test]
fn gc_during_a_copy_keeps_what_the_mount_holds() {
    let h = Harness::new();
    // r: every blob first, index.json last (cp's order); q: index.json first (pending).
    let r = h.layout("r-src", 1, 31);
    let q = h.layout("q-src", 1, 41);
    let (r_src, q_blobs) = (source_blobs(&r), source_blobs(&q));
    let r_blobs: BTreeSet<String> = r_src.iter().map(|b| b.0.clone()).collect();
    h.mkdir_p("r/blobs/sha256").unwrap();
    for (name, bytes) in &r_src {
        h.put(&format!("r/blobs/sha256/{name}"), bytes, 1).unwrap();
    }
    h.mkdir_p("q/blobs/sha256").unwrap();
    h.put(
        "q/index.json",
        &std::fs::read(q.join("index.json")).unwrap(),
        2,
    )
    .unwrap();
    let (first, rest) = q_blobs.split_at(q_blobs.len() / 2);
    for (name, bytes) in first {
        h.put(&format!("q/blobs/sha256/{name}"), bytes, 2).unwrap();
    }
    // Nothing written is registered yet, and gc takes none of it.
    assert!(h.images().is_empty());
    assert_eq!(h.gc_now(), Vec::<String>::new());
    assert!(h.store_blobs().is_superset(&r_blobs));
    for (name, bytes) in rest {
        h.put(&format!("q/blobs/sha256/{name}"), bytes, 2).unwrap();
    }
    h.put(
        "r/index.json",
        &std::fs::read(r.join("index.json")).unwrap(),
        1,
    )
    .unwrap();
    assert_eq!(h.images(), ["q:t0", "r:t0"]);
    assert_eq!(h.gc_now(), Vec::<String>::new());
    for (repo, blobs) in [("r", &r_src), ("q", &q_blobs)] {
        for (name, bytes) in blobs {
            let path = format!("{repo}/blobs/sha256/{name}");
            assert_eq!(&h.read_as(&path, 1).unwrap(), bytes, "{path}");
        }
    }
    // Once r's images are removed nothing holds its blobs: gc takes exactly those.
    h.fs.unlink(h.walk("r").unwrap().ino, "index.json").unwrap();
    let removed: BTreeSet<String> = h.gc_now().into_iter().collect();
    assert_eq!(removed, r_blobs);
    assert_eq!(h.images(), ["q:t0"]);
}

/// Repositories made and removed per timed batch.
const REPO_BATCH: usize = 500;
/// Batches: the last made with this many repositories already there.
const REPO_BATCHES: usize = 8;

/// Times `op(i)` over `range` in slices of 50 calls and returns the fastest slice: noise from
/// other tests on a busy machine only adds time, while a cost growing with the number of
/// repositories shows in every slice.
fn timed_batch(range: std::ops::Range<usize>, op: impl Fn(usize)) -> std::time::Duration {
    const SLICE: usize = 50;
    let items: Vec<usize> = range.collect();
    items
        .chunks(SLICE)
        .map(|slice| {
            let start = std::time::Instant::now();
            for &i in slice {
                op(i);
            }
            start.elapsed()
        })
        .min()
        .unwrap()
}

/// Below this per slice of 50 calls, a batch is fast whatever the ratio: each mkdir and rmdir of
/// a repository commits to the records with an fsync (0.2-2 ms on a shared disk, which makes
/// ratios of a few ms meaningless); the linear version took 0.2-1.4 s per slice, over 2 s at
/// 4,000.
const FAST_SLICE: std::time::Duration = std::time::Duration::from_millis(150);

#[test]
fn mkdir_and_rmdir_of_thousands_of_repositories_take_constant_time() {
    let h = Harness::new();
    let root = layoutfs::fs::root_ino();
    // Some images and some temporary files too, as a busy mount has.
    let src = h.layout("src", 1, 51);
    h.copy_in(&src, "busy", false).unwrap();
    for i in 0..200 {
        h.put(&format!("busy/tmp{i}"), b"x", 1).unwrap();
    }
    let name = |i: usize| format!("r{i:05}");
    let mkdir = |i: usize| {
        // As the kernel does: a lookup that fails, then mkdir, then getattr of the parent.
        assert!(h.fs.lookup(root, OsStr::new(&name(i))).is_err());
        h.fs.mkdir(root, &name(i)).unwrap();
        h.fs.getattr(root).unwrap();
    };
    let rmdir = |i: usize| {
        h.fs.lookup(root, OsStr::new(&name(i))).unwrap();
        h.fs.rmdir(root, &name(i)).unwrap();
        h.fs.getattr(root).unwrap();
    };
    let made: Vec<_> = (0..REPO_BATCHES)
        .map(|b| timed_batch(b * REPO_BATCH..(b + 1) * REPO_BATCH, mkdir))
        .collect();
    assert_eq!(h.list("").unwrap().len(), REPO_BATCHES * REPO_BATCH + 1);
    let removed: Vec<_> = (0..REPO_BATCHES)
        .map(|b| timed_batch(b * REPO_BATCH..(b + 1) * REPO_BATCH, rmdir))
        .collect();
    assert_eq!(h.list("").unwrap(), ["busy"]);
    // Nested: what readdir lists, lookup finds, after each removal.
    h.mkdir_p("n1/n2/n3").unwrap();
    for (dir, name) in [("n1/n2", "n3"), ("n1", "n2")] {
        h.fs.rmdir(h.walk(dir).unwrap().ino, name).unwrap();
        assert!(h.list(dir).unwrap().is_empty(), "{dir}");
        assert_eq!(errno(h.walk(&format!("{dir}/{name}"))), libc::ENOENT);
    }
    h.fs.rmdir(root, "n1").unwrap();
    assert_eq!(h.list("").unwrap(), ["busy"]);
    // The first batch of removals runs with every repository there: compare it to the last.
    let (mk_first, mk_last) = (made[0], made[REPO_BATCHES - 1]);
    let (rm_last, rm_first) = (removed[REPO_BATCHES - 1], removed[0]);
    eprintln!("mkdir per 50: {made:?}\nrmdir per 50: {removed:?}");
    assert!(
        mk_last < (mk_first * 3).max(FAST_SLICE),
        "mkdir slows down as repositories grow: first {mk_first:?}, last {mk_last:?} per 50"
    );
    assert!(
        rm_first < (rm_last * 3).max(FAST_SLICE),
        "rmdir is slower among many repositories: {rm_first:?} vs {rm_last:?} per 50"
    );
}

/// The descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Opens of one blob, and temporary files written and closed, in the descriptor test.
const MANY: usize = 1000;
/// Descriptors other tests of this binary, running at the same time, may open meanwhile.
const FD_SLACK: usize = 100;

#[test]
fn one_descriptor_per_blob_and_none_for_closed_temporary_files() {
    let h = Harness::new();
    let src = h.layout("src", 1, 61);
    h.copy_in(&src, "r", false).unwrap();
    let (name, bytes) = source_blobs(&src)
        .into_iter()
        .max_by_key(|b| b.1.len())
        .unwrap();
    let ino = h.walk(&format!("r/blobs/sha256/{name}")).unwrap().ino;

    // Many opens of one blob share one store descriptor, for reads and passthrough alike.
    let before = open_fds();
    let opened: Vec<_> = (0..MANY)
        .map(|_| h.fs.open(ino, libc::O_RDONLY, 1).unwrap())
        .collect();
    let during = open_fds();
    assert!(
        during < before + FD_SLACK,
        "{MANY} opens of one blob hold {} descriptors",
        during - before
    );
    let first = opened[0].backing.clone().unwrap();
    assert!(opened
        .iter()
        .all(|o| std::sync::Arc::ptr_eq(o.backing.as_ref().unwrap(), &first)));
    drop(first);
    assert_eq!(h.fs.read(opened[MANY - 1].fh, 0, 64 << 10).unwrap(), bytes);
    let fhs: Vec<u64> = opened.into_iter().map(|o| o.fh).collect();
    for fh in fhs {
        h.fs.release(fh);
    }
    assert_eq!(h.fs.open_blob_files(), 0, "the last release closes it");

    // Temporary files closed hold no descriptor, and read back and grow when opened again.
    let before = open_fds();
    for i in 0..MANY {
        h.put(&format!("r/tmp{i}"), format!("temporary {i}").as_bytes(), 1)
            .unwrap();
    }
    let after = open_fds();
    assert!(
        after < before + FD_SLACK,
        "{MANY} closed temporary files hold {} descriptors",
        after - before
    );
    assert_eq!(h.read_as("r/tmp7", 1).unwrap(), b"temporary 7");
    let tmp = h.walk("r/tmp7").unwrap().ino;
    let fh = h.fs.open(tmp, libc::O_WRONLY, 1).unwrap().fh;
    h.fs.write(fh, 11, b" more").unwrap();
    h.fs.flush(fh, 1).unwrap();
    h.fs.release(fh);
    assert_eq!(h.read_as("r/tmp7", 1).unwrap(), b"temporary 7 more");
    h.fs.rename(
        h.walk("r").unwrap().ino,
        "tmp7",
        h.walk("r").unwrap().ino,
        "kept",
        false,
        1,
    )
    .unwrap();
    assert_eq!(h.read_as("r/kept", 1).unwrap(), b"temporary 7 more");
    assert_eq!(h.fs.open_handles(), 0);
}

#[test]
fn last_closes_and_stats_of_a_temporary_file_at_once_do_not_deadlock() {
    // A last close parks the upload (looking at the scratch table) while a stat reads its
    // size (the scratch table, then the upload): both orders of two locks, on two threads.
    let h = std::sync::Arc::new(Harness::new());
    h.mkdir_p("r").unwrap();
    h.put("r/tmp", b"temporary", 1).unwrap();
    let ino = h.walk("r/tmp").unwrap().ino;
    let (done, finished) = std::sync::mpsc::channel();
    let stats = {
        let (h, done) = (h.clone(), done.clone());
        move || {
            for _ in 0..RACE_ROUNDS {
                h.fs.getattr(ino).unwrap();
            }
            done.send(()).unwrap();
        }
    };
    let closes = {
        let h = h.clone();
        move || {
            for _ in 0..RACE_ROUNDS {
                let fh = h.fs.open(ino, libc::O_RDONLY, 1).unwrap().fh;
                h.fs.release(fh);
            }
            done.send(()).unwrap();
        }
    };
    // Detached: a deadlocked thread must not keep the test from failing.
    std::thread::spawn(stats);
    std::thread::spawn(closes);
    for _ in 0..2 {
        finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a stat and a close deadlocked");
    }
}

/// Rounds of the close-versus-stat race.
const RACE_ROUNDS: usize = 20_000;

#[test]
fn an_empty_index_json_at_close_waits_for_the_bytes_written_through_a_duplicate() {
    // bash's `echo … > index.json`: open (O_TRUNC), dup2, close of the first descriptor (an
    // empty flush), write through the duplicate, its close, then the release.
    let h = Harness::new();
    let src = h.layout("src", 2, 71);
    h.copy_in(&src, "r", false).unwrap();
    let index = h.walk("r/index.json").unwrap().ino;
    let mut one: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    one["manifests"].as_array_mut().unwrap().remove(0);
    let bytes = serde_json::to_vec(&one).unwrap();
    let fh =
        h.fs.open(index, libc::O_WRONLY | libc::O_TRUNC, 5)
            .unwrap()
            .fh;
    h.fs.flush(fh, 5).expect("an empty first close is no error");
    assert_eq!(h.images(), ["r:t0", "r:t1"], "nothing applied yet");
    h.fs.write(fh, 0, &bytes).unwrap();
    h.fs.flush(fh, 5).unwrap();
    h.fs.release(fh);
    assert_eq!(h.images(), ["r:t1"]);

    // Still empty at the last release: nothing changes (the error is logged).
    let fh =
        h.fs.open(index, libc::O_WRONLY | libc::O_TRUNC, 5)
            .unwrap()
            .fh;
    h.fs.flush(fh, 5).unwrap();
    h.fs.release(fh);
    assert_eq!(h.images(), ["r:t1"]);
    assert!(h.walk("r/oci-layout").is_ok());
}

#[test]
fn unlinking_a_blob_an_image_needs_is_ebusy_and_others_go() {
    // r: registered (copied in); p: pending (index.json first, one blob held back). Each
    // image's manifest, config and layers are needed; a blob no image of the repository
    // needs (left by an earlier image, as umoci gc finds) may go.
    let h = Harness::new();
    let src = h.layout("src", 2, 81);
    h.copy_in(&src, "r", false).unwrap();
    let index: oci::ImageIndex =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    let t0 = &index.manifests[0];
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(src.join("blobs/sha256").join(t0.digest.hex())).unwrap(),
    )
    .unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let config_hex = config.strip_prefix("sha256:").unwrap().to_owned();
    let alg = h.walk("r/blobs/sha256").unwrap().ino;
    let store_before = h.store_blobs();
    for hex in [t0.digest.hex(), &config_hex] {
        let e = h.fs.unlink(alg, hex).expect_err("a needed blob is refused");
        assert_eq!(e.errno(), libc::EBUSY, "{e}");
        let message = e.to_string();
        assert!(
            message.contains(hex) && message.contains("r:t"),
            "{message}"
        );
        assert!(
            h.walk(&format!("r/blobs/sha256/{hex}")).is_ok(),
            "still listed"
        );
    }
    assert_eq!(h.images(), ["r:t0", "r:t1"]);
    assert_eq!(h.store_blobs(), store_before);

    // Once t0 is gone from index.json, its own blobs may go; shared ones stay refused.
    let mut one: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    one["manifests"].as_array_mut().unwrap().remove(0);
    h.put("r/index.json", &serde_json::to_vec(&one).unwrap(), 9)
        .unwrap();
    assert_eq!(h.images(), ["r:t1"]);
    h.fs.unlink(alg, t0.digest.hex())
        .expect("no image needs it now");
    assert!(h
        .walk(&format!("r/blobs/sha256/{}", t0.digest.hex()))
        .is_err());

    // Pending: index.json first, then every blob but one layer.
    let q = h.layout("q-src", 1, 91);
    let q_index = std::fs::read(q.join("index.json")).unwrap();
    h.mkdir_p("p/blobs/sha256").unwrap();
    h.put("p/index.json", &q_index, 3).unwrap();
    let q_manifest_hex = serde_json::from_slice::<oci::ImageIndex>(&q_index)
        .unwrap()
        .manifests[0]
        .digest
        .hex()
        .to_owned();
    let mut held_back = None;
    for (name, bytes) in source_blobs(&q) {
        if held_back.is_none() && name != q_manifest_hex {
            held_back = Some((name, bytes));
            continue;
        }
        h.put(&format!("p/blobs/sha256/{name}"), &bytes, 3).unwrap();
    }
    assert!(h.images().iter().all(|n| !n.starts_with("p:")), "pending");
    let p_alg = h.walk("p/blobs/sha256").unwrap().ino;
    let e =
        h.fs.unlink(p_alg, &q_manifest_hex)
            .expect_err("a pending image needs it");
    assert_eq!(e.errno(), libc::EBUSY, "{e}");
    assert!(e.to_string().contains("p:t0"), "{e}");
    let (name, bytes) = held_back.unwrap();
    h.put(&format!("p/blobs/sha256/{name}"), &bytes, 3).unwrap();
    assert!(h.images().contains(&"p:t0".to_owned()));
}

#[test]
fn a_repository_with_pending_images_shows_its_layout_names() {
    // mkdir, then index.json alone (its blobs not written yet): the images are pending, and
    // readers see a layout (oci-layout, index.json, blobs/); the process that made the
    // directory (cp -r, which creates each name exclusively) sees what it wrote, as on a disk.
    let h = Harness::new();
    let src = h.layout("src", 1, 101);
    let root = layoutfs::fs::root_ino();
    const MAKER: u32 = 40;
    const READER: u32 = 41;
    h.fs.mkdir_as(root, "p", MAKER).unwrap();
    let p = h.walk("p").unwrap().ino;
    // An empty repository: a layout to readers, nothing yet to its maker.
    assert_eq!(h.list("p").unwrap(), ["index.json", "oci-layout", "blobs"]);
    let maker_sees = h.fs.opendir_as(p, &|| MAKER).unwrap();
    assert_eq!(h.fs.readdir(maker_sees, 2).unwrap(), []);
    h.fs.releasedir(maker_sees);
    h.put(
        "p/index.json",
        &std::fs::read(src.join("index.json")).unwrap(),
        MAKER,
    )
    .unwrap();
    assert!(h.images().is_empty(), "pending");
    let all = ["index.json", "oci-layout", "blobs"];
    let as_pid = |pid: u32| {
        let fh = h.fs.opendir_as(p, &|| pid).unwrap();
        let names: Vec<String> =
            h.fs.readdir(fh, 0)
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .filter(|n| n != "." && n != "..")
                .collect();
        h.fs.releasedir(fh);
        let found: Vec<&str> = all
            .into_iter()
            .filter(|n| h.fs.lookup_as(p, OsStr::new(n), &|| pid).is_ok())
            .collect();
        assert_eq!(names, found, "pid {pid}: readdir and lookup agree");
        names
    };
    assert_eq!(h.list("p").unwrap(), all, "a reader sees a layout");
    assert_eq!(as_pid(READER), all);
    assert_eq!(
        as_pid(MAKER),
        ["index.json"],
        "the maker sees what it wrote"
    );
    assert_eq!(
        h.read_as("p/oci-layout", READER).unwrap(),
        oci::layout_file_bytes()
    );
    // The maker goes on as cp does: creates oci-layout and blobs/ (exclusively), the blobs.
    h.put(
        "p/oci-layout",
        &std::fs::read(src.join("oci-layout")).unwrap(),
        MAKER,
    )
    .unwrap();
    h.fs.mkdir_as(p, "blobs", MAKER).unwrap();
    assert_eq!(as_pid(MAKER), all);
    h.mkdir_p("p/blobs/sha256").unwrap();
    for (name, bytes) in source_blobs(&src) {
        h.put(&format!("p/blobs/sha256/{name}"), &bytes, MAKER)
            .unwrap();
    }
    assert_eq!(h.images(), ["p:t0"]);
    assert_eq!(as_pid(READER), all);
    assert_eq!(as_pid(MAKER), all);
}

#[test]
fn a_tag_is_added_through_the_mount_to_a_repository_of_20000() {
    // Before 2026-11-28 the mount refused an index.json over 4 MiB, which export writes for
    // 18,000 tags, so no tag could be added to such a repository.
    const TAGS: usize = 20_000;
    let h = Harness::new();
    let dir = h.tmp.path().join("many");
    let mut b = LayoutBuilder::new(&dir);
    let m = b.small_image("t0", 1, 100, 17);
    for i in 1..TAGS {
        b.tag(&m, Some(&format!("t{i}")));
    }
    b.write_index();
    h.copy_in(&dir, "many", false).unwrap();
    assert_eq!(h.images().len(), TAGS);
    let read = h.read_as("many/index.json", 1).unwrap();
    assert!(
        read.len() as u64 > oci::MAX_JSON_SIZE,
        "{} bytes",
        read.len()
    );
    let mut v: serde_json::Value = serde_json::from_slice(&read).unwrap();
    let mut extra = v["manifests"][0].clone();
    extra["annotations"] = serde_json::json!({ (oci::ANNOTATION_REF_NAME): "added" });
    v["manifests"].as_array_mut().unwrap().push(extra);
    h.put("many/index.json", &serde_json::to_vec(&v).unwrap(), 1)
        .unwrap();
    assert_eq!(h.images().len(), TAGS + 1);
    assert!(h.images().contains(&"many:added".to_owned()));
}

#[test]
fn a_repository_renamed_while_files_are_written_into_it_imports_under_its_new_name() {
    // skopeo's way (temporary names in the layout's root, renamed onto blobs/sha256/<hex>) and
    // cp's (each file at its final name), every file open before `mv a c` and finished after.
    let h = Harness::new();
    let src = h.layout("src", 1, 81);
    let blobs = source_blobs(&src);
    let index = std::fs::read(src.join("index.json")).unwrap();
    h.mkdir_p("n/a/blobs/sha256").unwrap();
    let (alg, repo) = (
        h.walk("n/a/blobs/sha256").unwrap().ino,
        h.walk("n/a").unwrap().ino,
    );
    // The first blob at its name; the others under temporary names in the root; index.json.
    let (first, rest) = blobs.split_first().unwrap();
    let at_name = h.fs.create(alg, &first.0).unwrap().1.fh;
    let temps: Vec<(u64, String)> = (0..rest.len())
        .map(|i| {
            let name = format!("oci-put-blob{i}");
            (h.fs.create(repo, &name).unwrap().1.fh, name)
        })
        .collect();
    let idx = h.fs.create(repo, "index.json").unwrap().1.fh;
    // Half of each written before the rename, the rest after.
    let half = |b: &[u8]| b.len() / 2;
    h.fs.write(at_name, 0, &first.1[..half(&first.1)]).unwrap();
    for ((fh, _), (_, bytes)) in temps.iter().zip(rest) {
        h.fs.write(*fh, 0, &bytes[..half(bytes)]).unwrap();
    }
    h.fs.write(idx, 0, &index[..half(&index)]).unwrap();

    let n = h.walk("n").unwrap().ino;
    let root = layoutfs::fs::root_ino();
    h.fs.rename(n, "a", root, "c", false, 1).unwrap();
    assert!(h.walk("n/a").is_err());

    h.fs.write(idx, half(&index) as u64, &index[half(&index)..])
        .unwrap();
    h.fs.flush(idx, 1).unwrap();
    h.fs.release(idx);
    assert_eq!(
        h.fs.pending()
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        ["c:t0"]
    );
    let b = &first.1;
    h.fs.write(at_name, half(b) as u64, &b[half(b)..]).unwrap();
    h.fs.flush(at_name, 1).unwrap();
    h.fs.release(at_name);
    let (c, c_alg) = (
        h.walk("c").unwrap().ino,
        h.walk("c/blobs/sha256").unwrap().ino,
    );
    for ((fh, name), (hex, bytes)) in temps.iter().zip(rest) {
        h.fs.write(*fh, half(bytes) as u64, &bytes[half(bytes)..])
            .unwrap();
        h.fs.flush(*fh, 1).unwrap();
        h.fs.release(*fh);
        h.fs.rename(c, name, c_alg, hex, false, 1).unwrap();
    }
    assert_eq!(h.images(), ["c:t0"]);
    assert!(h.fs.pending().is_empty());
    let mut listed = h.list("c/blobs/sha256").unwrap();
    listed.sort();
    let want: Vec<String> = blobs.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(listed, want);
    assert_eq!(h.list("c").unwrap(), ["index.json", "oci-layout", "blobs"]);
    assert!(h.list("n").unwrap().is_empty());
    assert_eq!(h.fs.open_handles(), 0);
}

#[test]
fn what_was_read_and_written_in_a_repository_follows_it_when_renamed() {
    let h = Harness::new();
    let src = h.layout("src", 3, 91);
    let full: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    let with = |tags: &[usize]| {
        let mut v = full.clone();
        v["manifests"] = tags.iter().map(|i| full["manifests"][*i].clone()).collect();
        serde_json::to_vec(&v).unwrap()
    };
    // Blobs written by process 1 into a, held for it until it writes a's index.json.
    h.mkdir_p("a/blobs/sha256").unwrap();
    for (name, bytes) in source_blobs(&src) {
        h.put(&format!("a/blobs/sha256/{name}"), &bytes, 1).unwrap();
    }
    h.put("a/index.json", &with(&[0]), 3).unwrap();
    // Process 2 reads index.json (t0), then process 3 adds t1 to it.
    h.read_as("a/index.json", 2).unwrap();
    h.read_as("a/index.json", 3).unwrap();
    h.put("a/index.json", &with(&[0, 1]), 3).unwrap();
    let root = layoutfs::fs::root_ino();
    h.fs.rename(root, "a", root, "c", false, 9).unwrap();
    // Process 2 adds t2 to what it read, under the new name: t1, which it never saw, stays.
    h.put("c/index.json", &with(&[0, 2]), 2).unwrap();
    assert_eq!(h.images(), ["c:t0", "c:t1", "c:t2"]);
    // Process 1 writes c's index.json: what it wrote into a is no longer held for it, so once
    // every image is gone gc takes every blob.
    h.put("c/index.json", &with(&[]), 1).unwrap();
    assert!(h.images().is_empty());
    let removed: BTreeSet<String> = h.gc_now().into_iter().collect();
    let all: BTreeSet<String> = source_blobs(&src).into_iter().map(|b| b.0).collect();
    assert_eq!(removed, all);
}

/// How long a stat or lookup may take while a write holds its file's upload: far more than
/// any of them needs, far less than forever.
const STAT_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

#[test]
fn stats_lookups_and_listings_never_wait_for_a_write_in_progress() {
    use std::sync::mpsc::channel;
    let h = std::sync::Arc::new(Harness::new());
    h.mkdir_p("r/blobs/sha256").unwrap();
    h.put("r/other", b"another temporary file", 1).unwrap();
    let r = h.walk("r").unwrap().ino;
    let (attr, opened) = h.fs.create(r, "being-copied").unwrap();
    h.fs.write(opened.fh, 0, &[7u8; 5000]).unwrap();
    // A write in progress holds the upload's lock: here until the test lets it go.
    let (locked, is_locked) = channel();
    let (release, released) = channel::<()>();
    let writer = {
        let h = h.clone();
        std::thread::spawn(move || {
            h.fs.while_upload_locked(opened.fh, || {
                locked.send(()).unwrap();
                released.recv().ok();
            })
        })
    };
    is_locked.recv().unwrap();
    let (done, finished) = channel();
    {
        let h = h.clone();
        // Detached: if it waits for the lock it must not keep the test from failing.
        std::thread::spawn(move || {
            let a = h.fs.getattr(attr.ino).unwrap();
            let found = h.fs.lookup(r, OsStr::new("being-copied")).unwrap();
            h.fs.lookup(r, OsStr::new("other")).unwrap();
            let listed = h.list("r").unwrap();
            h.walk("r/blobs/sha256").unwrap();
            done.send((a.size, found.size, listed)).unwrap();
        });
    }
    let got = finished.recv_timeout(STAT_BOUND);
    release.send(()).unwrap();
    writer.join().unwrap().unwrap();
    let (size, found, listed) = got.expect("a stat or lookup waited for a write in progress");
    assert_eq!((size, found), (5000, 5000));
    assert_eq!(
        listed,
        ["index.json", "oci-layout", "blobs", "being-copied", "other"]
    );
    h.fs.release(opened.fh);
}

#[test]
fn truncating_a_committed_blob_to_nothing_without_a_handle_returns() {
    // `truncate -s 0` (setattr with a size and no open file) of a blob written into the mount,
    // before a rewrite: accepted, and the blob stays as it is.
    let h = std::sync::Arc::new(Harness::new());
    let src = h.layout("src", 1, 95);
    let (name, bytes) = source_blobs(&src).remove(0);
    h.mkdir_p("r/blobs/sha256").unwrap();
    let path = format!("r/blobs/sha256/{name}");
    h.put(&path, &bytes, 1).unwrap();
    let ino = h.walk(&path).unwrap().ino;
    let (done, finished) = std::sync::mpsc::channel();
    {
        let h = h.clone();
        // Detached: a deadlock must fail the test, not hang it.
        std::thread::spawn(move || {
            done.send(h.fs.setattr(ino, None, Some(0), None).map(|a| a.size))
        });
    }
    let size = finished
        .recv_timeout(STAT_BOUND)
        .expect("setattr deadlocked");
    assert_eq!(size.unwrap(), bytes.len() as u64);
    assert_eq!(h.read_as(&path, 1).unwrap(), bytes);
}

/// Finding 1: rename(2) of a repository onto a directory that is not empty (a copy in progress:
/// `oci-layout` written, blobs committed, no index.json yet) succeeds: the check looks only at
/// images and sub-repositories, not at what was written there. POSIX says ENOTEMPTY; here the
/// target's files vanish from the listing.
#[test]
fn renaming_a_repository_onto_a_directory_being_copied_into_is_enotempty() {
    let h = Harness::new();
    let src = h.layout("src", 1, 7);
    // b: a copy in progress (cp -r, index.json last).
    h.mkdir_p("b").unwrap();
    h.put(
        "b/oci-layout",
        &std::fs::read(src.join("oci-layout")).unwrap(),
        1,
    )
    .unwrap();
    h.mkdir_p("b/blobs/sha256").unwrap();
    for (name, bytes) in source_blobs(&src) {
        h.put(&format!("b/blobs/sha256/{name}"), &bytes, 1).unwrap();
    }
    let before = h.list("b").unwrap();
    assert_eq!(before, ["index.json", "oci-layout", "blobs"]);
    // a: an empty repository.
    h.mkdir_p("a").unwrap();
    let root = layoutfs::fs::root_ino();
    let r = h.fs.rename(root, "a", root, "b", false, 9);
    let listed = h.list("b").unwrap_or_default();
    assert!(
        r.is_err(),
        "rename onto a non-empty directory succeeded; b now lists {listed:?} (was {before:?})"
    );
    assert_eq!(r.map_err(|e| e.errno()), Err(libc::ENOTEMPTY));
    assert_eq!(h.list("b").unwrap(), before);
    // Onto an empty directory (made with mkdir, nothing written) it still replaces it.
    h.mkdir_p("e").unwrap();
    h.fs.rename(root, "a", root, "e", false, 9).unwrap();
    assert!(h.walk("a").is_err());
    assert!(h.walk("e").is_ok());
}

/// Finding 1b (the consequence): `a` with images is renamed (rename(2), as `mv -T` or
/// os.replace do) onto `b`, a copy in progress; the rename succeeds, and when the copy writes
/// `b/index.json` the images that came from `a` are removed: they are lost, where POSIX would
/// have refused the rename and kept them.
#[test]
fn renaming_onto_a_copy_in_progress_loses_the_renamed_images() {
    let h = Harness::new();
    let src = h.layout("src", 1, 51);
    let other = h.layout("other", 2, 52);
    h.import_dir(&other, "a");
    h.mkdir_p("b").unwrap();
    h.put(
        "b/oci-layout",
        &std::fs::read(src.join("oci-layout")).unwrap(),
        1,
    )
    .unwrap();
    h.mkdir_p("b/blobs/sha256").unwrap();
    for (name, bytes) in source_blobs(&src) {
        h.put(&format!("b/blobs/sha256/{name}"), &bytes, 1).unwrap();
    }
    let root = layoutfs::fs::root_ino();
    let renamed = h.fs.rename(root, "a", root, "b", false, 9);
    // cp goes on: index.json last.
    h.put(
        "b/index.json",
        &std::fs::read(src.join("index.json")).unwrap(),
        1,
    )
    .unwrap();
    let all = h.images();
    assert!(
        all.iter().filter(|n| n.ends_with(":t1")).count() == 1,
        "rename onto the copy gave {:?}; images now {all:?}: a's t1 is gone",
        renamed.map_err(|e| e.to_string())
    );
}

/// Finding 5: a rename checks only the new name of the directory renamed, not the names of the
/// repositories below it. Renaming `a` (holding `a/x`, whose image is pending) to a 254-byte
/// name makes `<254>/x` too long: the records (none) and the inodes are moved, then
/// `WriteState::rename_repo` fails half way, after removing `a/x`'s state from its map. The
/// rename returns an error, yet `a` is gone, and so is the pending image (and the state of
/// what was written there).
#[test]
fn a_rename_whose_sub_repository_names_get_too_long_loses_pending_images() {
    let h = Harness::new();
    let src = h.layout("src", 1, 41);
    h.mkdir_p("a/x").unwrap();
    h.put(
        "a/x/index.json",
        &std::fs::read(src.join("index.json")).unwrap(),
        1,
    )
    .unwrap();
    let pending: Vec<String> = h.fs.pending().iter().map(|r| r.to_string()).collect();
    assert_eq!(pending, ["a/x:t0"]);
    let long = "b".repeat(254);
    let root = layoutfs::fs::root_ino();
    let r = h.fs.rename(root, "a", root, &long, false, 1);
    h.fs.invalidate();
    let pending: Vec<String> = h.fs.pending().iter().map(|r| r.to_string()).collect();
    let a_listed = h.list("").unwrap();
    assert!(
        (r.is_err() && pending == ["a/x:t0"] && h.walk("a/x").is_ok())
            || (r.is_ok() && pending.len() == 1),
        "rename gave {:?}; pending images now {pending:?}; the root lists {:?}",
        r.map_err(|e| e.to_string()),
        a_listed
            .iter()
            .map(|n| if n.len() > 20 {
                format!("{}…", &n[..8])
            } else {
                n.clone()
            })
            .collect::<Vec<_>>()
    );
}

/// Finding 4: the write state (lock 3, "memory only; never held across I/O") is held while an
/// upload's ingest is removed from disk: `unlink` of a closed temporary file drops the scratch
/// entry (the last owner of its `Upload`, whose Drop is `remove_dir_all`) inside
/// `WriteState::remove`, with the lock held. Every lookup, getattr and readdir of the mount
/// waits meanwhile (here made long by giving the ingest many entries; in use, the unlink of a
/// multi-GiB temporary file).
#[test]
fn unlinking_a_closed_temporary_file_removes_its_ingest_under_the_write_state_lock() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let h = Arc::new(Harness::new());
    h.mkdir_p("r").unwrap();
    let r = h.walk("r").unwrap().ino;
    let fh = h.fs.create(r, "tmpfile").unwrap().1.fh;
    h.fs.write(fh, 0, b"some bytes").unwrap();
    h.fs.flush(fh, 1).unwrap();
    h.fs.release(fh);
    // Its ingest, made slow to remove.
    let ingests: Vec<_> = std::fs::read_dir(h.store.root().join("ingest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(ingests.len(), 1, "{ingests:?}");
    for i in 0..60000 {
        std::fs::File::create(ingests[0].join(format!("f{i}"))).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (h2, stop2) = (h.clone(), stop.clone());
    let prober = std::thread::spawn(move || {
        let root = layoutfs::fs::root_ino();
        let mut worst = std::time::Duration::ZERO;
        while !stop2.load(Ordering::Relaxed) {
            let t = std::time::Instant::now();
            let _ = h2.fs.lookup(root, OsStr::new("r"));
            worst = worst.max(t.elapsed());
        }
        worst
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    let t = std::time::Instant::now();
    h.fs.unlink(r, "tmpfile").unwrap();
    let took = t.elapsed();
    std::thread::sleep(std::time::Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let worst = prober.join().unwrap();
    assert!(
        worst < std::time::Duration::from_millis(100),
        "a lookup waited {worst:?} for an unlink (which took {took:?}) removing an ingest"
    );
}

/// Finding 6: blobs written into a repository are held in the mount's lease under the
/// repository's id ("released when that process writes the repository's index.json, or the
/// repository goes"), but `rmdir` (`forget_repo`) releases nothing: after `rm -r` of a copy
/// abandoned before its index.json, gc cannot take its blobs until the mount ends.
#[test]
fn blobs_of_a_removed_repository_stay_held_until_unmount() {
    let h = Harness::new();
    let src = h.layout("src", 1, 71);
    h.mkdir_p("a/blobs/sha256").unwrap();
    for (name, bytes) in source_blobs(&src) {
        h.put(&format!("a/blobs/sha256/{name}"), &bytes, 1).unwrap();
    }
    // rm -r a: the blobs, their directories, the repository.
    let alg = h.walk("a/blobs/sha256").unwrap().ino;
    for name in h.list("a/blobs/sha256").unwrap() {
        h.fs.unlink(alg, &name).unwrap();
    }
    h.fs.rmdir(h.walk("a/blobs").unwrap().ino, "sha256")
        .unwrap();
    h.fs.rmdir(h.walk("a").unwrap().ino, "blobs").unwrap();
    h.fs.rmdir(layoutfs::fs::root_ino(), "a").unwrap();
    assert!(h.walk("a").is_err());
    let removed = h.gc_now();
    assert_eq!(
        removed.len(),
        source_blobs(&src).len(),
        "gc after rm -r of the repository removed {removed:?}: the rest stays held by the mount"
    );
}

/// Finding 3: `unlink a/index.json` (rm -r) racing `mv a b`. unlink reads the repository's name
/// from the inode, then takes the serialising lock in `clear_repo`; a rename holding that lock
/// (its records I/O, which lists every record of the store) completes meanwhile, and unlink then
/// clears the *old* name: it returns Ok, yet `b` (the same directory) keeps its images, and
/// `a` comes back as an empty repository (`created` set on a fresh state). Every serialisable
/// order leaves b with no image and no `a`.
#[test]
fn unlinking_index_json_while_the_repository_is_renamed_clears_the_old_name() {
    use std::sync::{Arc, Barrier};
    let h = Arc::new(Harness::new());
    let src = h.layout("src", 1, 21);
    // Many records elsewhere make the rename's records I/O (list + update) take a while.
    h.fill_records(&src, 20000);
    let root = layoutfs::fs::root_ino();
    let mut bad = Vec::new();
    for round in 0..5 {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        h.import_dir(&src, &a);
        h.fs.invalidate();
        let dir = h.walk(&a).unwrap().ino;
        h.list(&a).unwrap();
        let go = Arc::new(Barrier::new(2));
        let (h2, go2, a2, b2) = (h.clone(), go.clone(), a.clone(), b.clone());
        let mover = std::thread::spawn(move || {
            go2.wait();
            h2.fs.rename(root, &a2, root, &b2, false, 2)
        });
        go.wait();
        // Start the unlink a little after the rename took the lock.
        std::thread::sleep(std::time::Duration::from_millis(2 + round as u64 % 5));
        let unlinked = h.fs.unlink(dir, "index.json");
        let moved = mover.join().unwrap();
        h.fs.invalidate();
        let left: Vec<String> = h
            .images()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{b}:")) || n.starts_with(&format!("{a}:")))
            .collect();
        let ghost = h.walk(&a).is_ok();
        if unlinked.is_ok() && moved.is_ok() && (!left.is_empty() || ghost) {
            bad.push(format!(
                "round {round}: unlink Ok and rename Ok, yet images left {left:?}, {a} exists again: {ghost}"
            ));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Finding 3b (same cause): `mv n/a n/b` racing `mv n m` (different parents, which the kernel
/// does not serialise). The inner rename reads "n/a" before the outer one takes the lock, and
/// then renames "n/a", which no longer exists: it returns Ok and moves nothing (m/a stays).
#[test]
fn a_rename_inside_a_directory_renamed_meanwhile_succeeds_and_moves_nothing() {
    use std::sync::{Arc, Barrier};
    let h = Arc::new(Harness::new());
    let src = h.layout("src", 1, 31);
    h.fill_records(&src, 20000);
    let root = layoutfs::fs::root_ino();
    let mut bad = Vec::new();
    for round in 0..4 {
        let (n, m) = (format!("n{round}"), format!("m{round}"));
        h.import_dir(&src, &format!("{n}/a"));
        h.fs.invalidate();
        let ndir = h.walk(&n).unwrap().ino;
        let go = Arc::new(Barrier::new(2));
        let (h2, go2, n2, m2) = (h.clone(), go.clone(), n.clone(), m.clone());
        let outer = std::thread::spawn(move || {
            go2.wait();
            h2.fs.rename(root, &n2, root, &m2, false, 2)
        });
        go.wait();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let inner = h.fs.rename(ndir, "a", ndir, "b", false, 3);
        let outer = outer.join().unwrap();
        h.fs.invalidate();
        let names: Vec<String> = h
            .images()
            .into_iter()
            .filter(|i| i.starts_with(&format!("{n}/")) || i.starts_with(&format!("{m}/")))
            .collect();
        if inner.is_ok() && outer.is_ok() && names != [format!("{m}/b:t0")] {
            bad.push(format!(
                "round {round}: both renames Ok, images now {names:?}"
            ));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Finding 2: a repository directory `x` with no image (made with mkdir) and a repository
/// `x/blobs` imported elsewhere: readdir of `x` leaves `blobs` out (it skips layout names among
/// sub-repositories), but lookup of `x/blobs` finds the sub-repository. The maker, which is
/// shown no layout name yet, then finds `blobs` already there when cp -r makes it (EEXIST), and
/// cp goes on writing `blobs/sha256/...` into the repository `x/blobs`: `sha256` becomes a
/// new repository `x/blobs/sha256` and the blobs are temporary files in it.
#[test]
fn a_name_lookup_finds_is_listed_by_readdir() {
    let h = Harness::new();
    let src = h.layout("src", 1, 11);
    h.import_dir(&src, "x/blobs");
    h.fs.invalidate();
    // x exists as a path (not a repository): fine, both agree.
    assert_eq!(h.list("x").unwrap(), ["blobs"]);
    // mkdir x is EEXIST (the path exists); so take a repository made in the mount instead:
    // y, then y/blobs imported after it was made.
    h.mkdir_p("y").unwrap();
    h.import_dir(&src, "y/blobs");
    h.fs.invalidate();
    let listed = h.list("y").unwrap();
    let looked_up = h.walk("y/blobs").map(|a| a.kind);
    assert!(
        listed.contains(&"blobs".to_owned()) == looked_up.is_ok(),
        "readdir of y lists {listed:?}, but lookup of y/blobs gives {looked_up:?}"
    );
}

/// Finding 2b (the consequence): the maker's `mkdir y/blobs/sha256` (cp -r) makes a repository
/// `y/blobs/sha256` in the imported `y/blobs`, and a blob written there is no blob.
#[test]
fn cp_into_a_repository_whose_blobs_name_is_a_sub_repository_writes_into_it() {
    let h = Harness::new();
    let src = h.layout("src", 1, 12);
    let root = layoutfs::fs::root_ino();
    h.fs.mkdir_as(root, "y", 42).unwrap();
    h.import_dir(&src, "y/blobs");
    h.fs.invalidate();
    let y = h.walk("y").unwrap().ino;
    // cp -r as the maker: mkdir blobs (EEXIST: cp goes on if it is a directory), then sha256.
    let blobs = match h.fs.mkdir_as(y, "blobs", 42) {
        Ok(a) => a.ino,
        Err(e) => {
            assert_eq!(e.errno(), libc::EEXIST);
            h.fs.lookup_as(y, OsStr::new("blobs"), &|| 42).unwrap().ino
        }
    };
    let alg = h.fs.mkdir_as(blobs, "sha256", 42).unwrap().ino;
    // A blob the store does not have, written at its name: it should be committed on close.
    let bytes = b"a blob written by cp -r into y/blobs/sha256".to_vec();
    let digest = layoutfs::digest::Digest::of(layoutfs::digest::Algorithm::Sha256, &bytes);
    let fh = h.fs.create(alg, digest.hex()).unwrap().1.fh;
    h.fs.write(fh, 0, &bytes).unwrap();
    let closed = h.fs.flush(fh, 42);
    h.fs.release(fh);
    let committed = h
        .store
        .root()
        .join("blobs/sha256")
        .join(digest.hex())
        .exists();
    assert!(
        committed,
        "close of y/blobs/sha256/<hex> gave {closed:?} and committed nothing; y/blobs/sha256 is a \
         repository now: {:?}",
        h.walk("y/blobs/sha256/oci-layout").is_ok()
            || h.list("y/blobs").unwrap().contains(&"sha256".to_owned())
    );
}

/// Finding 2c: the same mismatch reached through the mount alone: `mv y x/blobs` where `x` is a
/// repository made with mkdir (no image yet, so no `blobs` shown) makes a sub-repository
/// `x/blobs` that readdir of `x` never lists while lookup finds it; once `x` gets an image, the
/// layout's `blobs` shadows it and y's images can no longer be reached through the mount.
#[test]
fn a_repository_moved_to_a_layout_name_of_an_empty_repository_is_hidden_from_readdir() {
    let h = Harness::new();
    let src = h.layout("src", 1, 61);
    h.import_dir(&src, "y");
    h.fs.invalidate();
    h.mkdir_p("x").unwrap();
    let root = layoutfs::fs::root_ino();
    let x = h.walk("x").unwrap().ino;
    let r = h.fs.rename(root, "y", x, "blobs", false, 1);
    let listed = h.list("x").unwrap();
    let found = h.walk("x/blobs").map(|a| a.kind);
    assert!(
        r.is_err() || listed.contains(&"blobs".to_owned()) == found.is_ok(),
        "mv y x/blobs gave {:?}; readdir x lists {listed:?}, lookup x/blobs gives {found:?}; images {:?}",
        r.map_err(|e| e.to_string()),
        h.images()
    );
    // Refused, before anything moves: EINVAL, as mkdir of a layout name as a sub-repository.
    assert_eq!(r.map_err(|e| e.errno()), Err(libc::EINVAL));
    assert_eq!(h.images(), ["y:t0"]);
    assert_eq!(errno(h.fs.mkdir(x, "index.json")), libc::EINVAL);
    assert_eq!(errno(h.fs.mkdir(x, "oci-layout")), libc::EINVAL);
}

/// Not a finding (it passes): a stress of renames, uploads closing, index.json writes,
/// lookups, stats and listings at once, with a watchdog, finds no deadlock.
#[test]
fn sound_no_deadlock_under_renames_closes_and_lookups() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let h = Arc::new(Harness::new());
    let src = h.layout("src", 2, 81);
    let index = std::fs::read(src.join("index.json")).unwrap();
    let blobs = source_blobs(&src);
    h.mkdir_p("p/a/blobs/sha256").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut threads = Vec::new();
    {
        let (h, stop, progress) = (h.clone(), stop.clone(), progress.clone());
        threads.push(std::thread::spawn(move || {
            let root = layoutfs::fs::root_ino();
            let mut flip = false;
            while !stop.load(Ordering::Relaxed) {
                let (f, t) = if flip { ("q", "p") } else { ("p", "q") };
                if h.fs.rename(root, f, root, t, false, 5).is_ok() {
                    flip = !flip;
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for w in 0..2u32 {
        let (h, stop, progress, blobs, index) = (
            h.clone(),
            stop.clone(),
            progress.clone(),
            blobs.clone(),
            index.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let repo = if h.walk("p").is_ok() { "p/a" } else { "q/a" };
                let Ok(alg) = h.walk(&format!("{repo}/blobs/sha256")) else {
                    continue;
                };
                let (name, bytes) = &blobs[i % blobs.len()];
                if let Ok((_, o)) = h.fs.create(alg.ino, &format!("{name}.{w}tmp")) {
                    let _ = h.fs.write(o.fh, 0, bytes);
                    let _ = h.fs.flush(o.fh, 10 + w);
                    h.fs.release(o.fh);
                }
                if i % 7 == 0 {
                    if let Ok(dir) = h.walk(repo) {
                        let fh = match h.fs.lookup(dir.ino, OsStr::new("index.json")) {
                            Ok(a) => {
                                h.fs.open(a.ino, libc::O_WRONLY | libc::O_TRUNC, 10 + w)
                                    .map(|o| o.fh)
                            }
                            Err(_) => h.fs.create(dir.ino, "index.json").map(|c| c.1.fh),
                        };
                        if let Ok(fh) = fh {
                            let _ = h.fs.write(fh, 0, &index);
                            let _ = h.fs.flush(fh, 10 + w);
                            h.fs.release(fh);
                        }
                    }
                }
                i += 1;
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        let (h, stop, progress) = (h.clone(), stop.clone(), progress.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for p in [
                    "p/a",
                    "q/a",
                    "p/a/blobs/sha256",
                    "q/a/blobs/sha256",
                    "p",
                    "q",
                ] {
                    let _ = h.list(p);
                    let _ = h
                        .walk(&format!("{p}/index.json"))
                        .and_then(|a| h.fs.getattr(a.ino));
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut last = 0;
    for _ in 0..6 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = progress.load(Ordering::Relaxed);
        assert!(now > last, "no progress in 500 ms: a deadlock");
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    h.fs.invalidate();
    let live = if h.walk("p").is_ok() { "p/a:" } else { "q/a:" };
    let all = h.images();
    assert!(
        all.iter().all(|n| n.starts_with(live)),
        "images {all:?}, but only {live} exists; root lists {:?}",
        h.list("")
    );
}

/// Finding 7: a blob that reaches `blobs/<alg>/<hex>` by the rename of a directory above it (a
/// staging directory renamed onto `blobs`, or `blobs/.tmp` onto `blobs/sha256`) is never
/// committed: a scratch directory is only renamed (`move_to`), its files stay temporary files
/// under a scratch directory that shadows the layout's `blobs`, and the image written next waits
/// for blobs that are listed right there.
#[test]
fn blobs_that_arrive_by_renaming_their_directory_are_committed() {
    let h = Harness::new();
    let src = h.layout("src", 1, 91);
    h.mkdir_p("r").unwrap();
    let r = h.walk("r").unwrap().ino;
    h.fs.mkdir(r, ".stage").unwrap();
    let stage = h.walk("r/.stage").unwrap().ino;
    h.fs.mkdir(stage, "sha256").unwrap();
    let alg = h.walk("r/.stage/sha256").unwrap().ino;
    for (name, bytes) in source_blobs(&src) {
        let fh = h.fs.create(alg, &name).unwrap().1.fh;
        h.fs.write(fh, 0, &bytes).unwrap();
        h.fs.flush(fh, 1).unwrap();
        h.fs.release(fh);
    }
    h.fs.rename(r, ".stage", r, "blobs", false, 1).unwrap();
    h.put(
        "r/oci-layout",
        &std::fs::read(src.join("oci-layout")).unwrap(),
        1,
    )
    .unwrap();
    h.put(
        "r/index.json",
        &std::fs::read(src.join("index.json")).unwrap(),
        1,
    )
    .unwrap();
    let mut listed = h.list("r/blobs/sha256").unwrap_or_default();
    listed.sort();
    assert!(
        h.fs.pending().is_empty() && h.images() == ["r:t0"],
        "every blob is listed at r/blobs/sha256 ({} of them), yet pending: {:?}, registered: {:?}",
        listed.len(),
        h.fs.pending()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        h.images()
    );
}

/// A blob written at its name, then opened for writing again (skopeo rewrites a manifest it
/// finds; `rsync --inplace` opens each file it updates) and closed with nothing or the same
/// bytes written: it stays there, as the same inode, readable. Before, the last close took
/// the reopened file for a failed copy and removed the name.
#[test]
fn a_committed_blob_opened_again_for_writing_stays_after_its_close() {
    let h = Harness::new();
    let src = h.layout("src", 1, 97);
    let (name, bytes) = source_blobs(&src).remove(0);
    h.mkdir_p("r/blobs/sha256").unwrap();
    let path = format!("r/blobs/sha256/{name}");
    h.put(&path, &bytes, 1).unwrap();
    let ino = h.walk(&path).unwrap().ino;
    for rewrite in [&[][..], &bytes[..]] {
        let fh = h.fs.open(ino, libc::O_WRONLY, 1).unwrap().fh;
        if !rewrite.is_empty() {
            h.fs.write(fh, 0, rewrite).unwrap();
        }
        h.fs.flush(fh, 1).unwrap();
        h.fs.release(fh);
        assert_eq!(h.walk(&path).unwrap().ino, ino, "{path} after a close");
        assert_eq!(h.fs.getattr(ino).unwrap().size, bytes.len() as u64);
        assert_eq!(h.read_as(&path, 1).unwrap(), bytes);
    }
    // An inode whose temporary file is gone is ENOENT to open, not EISDIR.
    let tmp = h.fs.create(h.walk("r").unwrap().ino, ".tmp").unwrap();
    h.fs.release(tmp.1.fh);
    h.fs.unlink(h.walk("r").unwrap().ino, ".tmp").unwrap();
    let e = h.fs.open(tmp.0.ino, libc::O_WRONLY, 1).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
}

/// A staged directory of blobs renamed onto `blobs/sha256`, one of them wrong: the rename is
/// EIO and nothing moves (the staged files stay, the store gets none of them); once mended,
/// the rename commits them all, the directory keeps its inode as `blobs/sha256`, and a
/// directory inside a staged `blobs/` is refused with EINVAL.
#[test]
fn a_staged_directory_of_blobs_is_verified_whole_before_it_moves() {
    let h = Harness::new();
    let src = h.layout("src", 1, 93);
    h.mkdir_p("r/blobs").unwrap();
    let r = h.walk("r").unwrap().ino;
    let blobs = h.walk("r/blobs").unwrap().ino;
    h.fs.mkdir(r, ".stage").unwrap();
    let stage = h.walk("r/.stage").unwrap().ino;
    let all = source_blobs(&src);
    for (i, (name, bytes)) in all.iter().enumerate() {
        let mut bytes = bytes.clone();
        if i == 0 {
            bytes[0] ^= 1;
        }
        h.put(&format!("r/.stage/{name}"), &bytes, 1).unwrap();
    }
    let e =
        h.fs.rename(r, ".stage", blobs, "sha256", false, 1)
            .unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert_eq!(h.list("r/.stage").unwrap().len(), all.len());
    assert!(h.store_blobs().is_empty(), "nothing committed");
    h.put(&format!("r/.stage/{}", all[0].0), &all[0].1, 1)
        .unwrap();
    h.fs.rename(r, ".stage", blobs, "sha256", false, 1).unwrap();
    assert!(h.walk("r/.stage").is_err());
    let mut listed = h.list("r/blobs/sha256").unwrap();
    listed.sort();
    let mut want: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(
        h.fs.getattr(stage).unwrap().ino,
        h.walk("r/blobs/sha256").unwrap().ino
    );
    assert_eq!(h.store_blobs().len(), all.len());
    // A staged blobs/ holding anything but algorithm directories is refused.
    h.mkdir_p("q").unwrap();
    let q = h.walk("q").unwrap().ino;
    h.fs.mkdir(q, ".b").unwrap();
    h.fs.mkdir(h.walk("q/.b").unwrap().ino, "junk").unwrap();
    let e = h.fs.rename(q, ".b", q, "blobs", false, 1).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    // And a staged directory is never renamed into another repository (EXDEV: mv copies).
    h.mkdir_p("p").unwrap();
    let p = h.walk("p").unwrap().ino;
    h.fs.mkdir(q, ".c").unwrap();
    let e = h.fs.rename(q, ".c", p, "blobs", false, 1).unwrap_err();
    assert_eq!(e.errno(), libc::EXDEV, "{e}");
}
