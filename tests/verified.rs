//! Blobs verified once: what the store records when it commits a blob (or fsck or a mount
//! hashes one), and what a mount then trusts without hashing, or hashes again because the file
//! changed, was placed by hand, or `--verify-reads` says so. Hostile changes first: a file
//! rewritten in place at the same size, replaced by another file, a record left for a file gc
//! removed and a new one made.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::core::Harness;
use common::gen::LayoutBuilder;
use common::mount::Mounted;
use common::Env;
use layoutfs::archive::{self, Source};
use layoutfs::digest::Digest;
use layoutfs::fs::{Fs, FsOptions};
use layoutfs::store::verified::Identity;
use layoutfs::store::{Access, Store};

/// Every blob file of a store.
fn blobs(store: &Store) -> Vec<Digest> {
    let dir = store.root().join("blobs/sha256");
    let mut out: Vec<Digest> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_str().unwrap()))
        .map(|s| s.parse().unwrap())
        .collect();
    out.sort();
    out
}

/// The paths in the mount of every blob of repository `repo`.
fn blob_paths(h: &Harness, repo: &str) -> Vec<String> {
    h.list(&format!("{repo}/blobs/sha256"))
        .unwrap()
        .into_iter()
        .map(|n| format!("{repo}/blobs/sha256/{n}"))
        .collect()
}

fn import(h: &Harness, repo: &str, images: usize, seed: u64) {
    let dir = h.tmp.path().join(format!("layout-{repo}"));
    let mut b = LayoutBuilder::new(&dir);
    for i in 0..images {
        b.small_image(&format!("t{i}"), 2, 4096 + i as u64, seed + i as u64);
    }
    archive::import(&*h.store, &Source::Dir(dir), Some(repo)).unwrap();
    h.store.flush_verified().unwrap();
    h.fs.invalidate();
}

/// Rewrites a blob in place with the same size (its owner can: chmod u+w first).
fn damage_in_place(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[0] ^= 0xff;
    std::thread::sleep(Duration::from_millis(20));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(path, &bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).unwrap();
}

#[test]
fn every_blob_committed_is_recorded_with_its_files_identity() {
    let h = Harness::new();
    import(&h, "app", 3, 1);
    let all = blobs(&h.store);
    assert!(all.len() >= 6);
    for d in &all {
        let rec = h.store.verified().lookup(d).unwrap().expect("a record");
        let meta = std::fs::symlink_metadata(h.store.blob_path(d)).unwrap();
        assert_eq!(rec.identity, Identity::of(&meta), "{d}");
        assert_eq!(rec.identity.size, meta.size());
        let f = h.store.open_blob_file(d).unwrap();
        assert!(h
            .store
            .verified()
            .trusts(d, &f, &f.metadata().unwrap())
            .unwrap());
    }
}

#[test]
fn a_mount_serves_what_the_store_verified_without_hashing_it_and_verify_reads_hashes_all() {
    let h = Harness::new();
    import(&h, "app", 3, 2);
    let paths = blob_paths(&h, "app");
    for p in &paths {
        h.read_as(p, 1).unwrap();
    }
    assert_eq!(h.fs.blobs_hashed(), 0, "every blob was recorded at commit");

    // Another mount with --verify-reads hashes each blob once.
    let strict = Fs::new(
        h.store.clone(),
        FsOptions {
            verify_reads: true,
            ..FsOptions::default()
        },
    );
    let strict = Harness {
        tmp: tempfile::tempdir().unwrap(),
        store: h.store.clone(),
        fs: strict,
    };
    for p in &paths {
        strict.read_as(p, 1).unwrap();
        strict.read_as(p, 1).unwrap();
    }
    assert_eq!(strict.fs.blobs_hashed(), paths.len() as u64);
}

#[test]
fn a_blob_changed_in_place_at_the_same_size_is_hashed_and_refused() {
    let h = Harness::new();
    import(&h, "app", 1, 3);
    let paths = blob_paths(&h, "app");
    let victim = &paths[0];
    let digest: Digest = format!("sha256:{}", victim.rsplit('/').next().unwrap())
        .parse()
        .unwrap();
    damage_in_place(&h.store.blob_path(&digest));
    let e = h.read_as(victim, 1).unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains(&digest.to_string()), "{e}");
    assert_eq!(h.fs.blobs_hashed(), 1);
    // Its record does not match the file any more, whatever is asked.
    let f = h.store.open_blob_file(&digest).unwrap();
    assert!(!h
        .store
        .verified()
        .trusts(&digest, &f, &f.metadata().unwrap())
        .unwrap());
}

#[test]
fn a_blob_replaced_by_another_file_with_the_same_bytes_is_hashed_once_then_trusted() {
    let h = Harness::new();
    import(&h, "app", 1, 4);
    let d = blobs(&h.store)[0].clone();
    let path = h.store.blob_path(&d);
    let bytes = std::fs::read(&path).unwrap();
    // Placed by hand (a copy from elsewhere): another inode, not what the store verified.
    let tmp = h.store.root().join("blobs/sha256/.copy");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let paths = blob_paths(&h, "app");
    let p = paths.iter().find(|p| p.ends_with(d.hex())).unwrap();
    assert_eq!(h.read_as(p, 1).unwrap(), bytes);
    assert_eq!(h.fs.blobs_hashed(), 1);
    // The mount recorded what it hashed: the next mount trusts it.
    let next = Harness {
        tmp: tempfile::tempdir().unwrap(),
        store: h.store.clone(),
        fs: Fs::new(h.store.clone(), FsOptions::default()),
    };
    assert_eq!(next.read_as(p, 1).unwrap(), bytes);
    assert_eq!(next.fs.blobs_hashed(), 0);
}

#[test]
fn fsck_records_what_hashed_right_and_forgets_what_did_not() {
    let env = Env::new();
    let layout = env.path("layout");
    let mut b = LayoutBuilder::new(&layout);
    b.small_image("t0", 2, 4096, 5);
    b.write_index();
    env.ok(&["import", "--name", "app", layout.to_str().unwrap()]);
    let store = Store::open(&env.store).unwrap();
    let all = blobs(&store);
    // No records at all (a store from before them): fsck records every blob.
    let conn = rusqlite::Connection::open(env.store.join("meta.db")).unwrap();
    conn.execute("DELETE FROM verified", []).unwrap();
    assert!(store.verified().lookup(&all[0]).unwrap().is_none());
    env.ok(&["fsck"]);
    for d in &all {
        assert!(store.verified().lookup(d).unwrap().is_some(), "{d}");
    }
    // One damaged: fsck reports it and its record goes.
    damage_in_place(&store.blob_path(&all[1]));
    let out = env.run(&["fsck"]);
    assert!(!out.status.success());
    assert!(store.verified().lookup(&all[1]).unwrap().is_none());
    assert!(store.verified().lookup(&all[0]).unwrap().is_some());
}

#[test]
fn gc_forgets_the_records_of_the_blobs_it_removes() {
    let env = Env::new();
    let layout = env.path("layout");
    let mut b = LayoutBuilder::new(&layout);
    b.small_image("t0", 2, 4096, 6);
    b.write_index();
    env.ok(&["import", "--name", "app", layout.to_str().unwrap()]);
    let store = Store::open(&env.store).unwrap();
    let all = blobs(&store);
    env.ok(&["rm", "app:t0"]);
    env.ok(&["gc", "--grace", "0s"]);
    for d in &all {
        assert!(!store.blob_path(d).exists());
        assert!(store.verified().lookup(d).unwrap().is_none(), "{d}");
    }
}

#[test]
fn a_store_on_a_read_only_filesystem_still_trusts_its_records() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("ro");
    let tmpfs = common::Tmpfs::mount(&dir, 64);
    let root = dir.join("store");
    {
        let store = Arc::new(Store::open(&root).unwrap());
        let h = Harness {
            tmp: tempfile::tempdir().unwrap(),
            store: store.clone(),
            fs: Fs::new(store, FsOptions::default()),
        };
        import(&h, "app", 1, 7);
    }
    tmpfs.remount("ro");
    let ro = Arc::new(Store::open_with(&root, Access::Read).unwrap());
    assert!(ro.is_read_only());
    let view = Harness {
        tmp: tempfile::tempdir().unwrap(),
        store: ro.clone(),
        fs: Fs::new(
            ro,
            FsOptions {
                read_only: true,
                ..FsOptions::default()
            },
        ),
    };
    let paths = blob_paths(&view, "app");
    assert!(!paths.is_empty());
    for p in &paths {
        view.read_as(p, 1).unwrap();
    }
    assert_eq!(view.fs.blobs_hashed(), 0);
}

#[test]
fn a_real_mount_refuses_a_blob_rewritten_after_it_was_verified_and_says_its_mode() {
    let env = Env::new();
    let layout = env.path("layout");
    let mut b = LayoutBuilder::new(&layout);
    b.small_image("t0", 2, 8192, 8);
    b.write_index();
    env.ok(&["import", "--name", "app", layout.to_str().unwrap()]);
    let store = Store::open(&env.store).unwrap();
    let all = blobs(&store);
    let victim = all
        .iter()
        .find(|d| std::fs::metadata(store.blob_path(d)).unwrap().size() == 8192)
        .unwrap()
        .clone();
    damage_in_place(&store.blob_path(&victim));
    for extra in [&[][..], &["--verify-reads"][..]] {
        let m = Mounted::start(&env, if extra.is_empty() { "m1" } else { "m2" }, extra);
        let p = m.path(&format!("app/blobs/sha256/{}", victim.hex()));
        let e = std::fs::read(&p).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{extra:?}");
        for d in all.iter().filter(|d| **d != victim) {
            std::fs::read(m.path(&format!("app/blobs/sha256/{}", d.hex()))).unwrap();
        }
        let log = m.log();
        let mode = if extra.is_empty() {
            "verified at commit"
        } else {
            "every blob hashed on its first open"
        };
        assert!(log.contains(mode), "{log}");
        assert!(log.contains(&victim.to_string()), "{log}");
    }
}
