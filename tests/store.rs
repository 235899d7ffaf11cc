//! The content store's conformance suite, in the spirit of containerd's content testsuite:
//! write, restart after a writer died, commit of a blob that exists, wrong digest, wrong size,
//! concurrent writers of one digest (threads with their own connections, as processes have),
//! abort, and readers that never see a blob half-written. Run against the local store through
//! the library, as the importer and the mount use it.
//!
//! The store restarts an interrupted write rather than resuming it: an ingest belongs to the
//! process that started it, and a new write of the digest starts from byte zero.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use layoutfs::digest::{Algorithm, Digest};
use layoutfs::error::Error;
use layoutfs::store::gc::{gc, GcOptions};
use layoutfs::store::{remove_abandoned, Store, BLOBS_DIR, BLOB_MODE, INGEST_DIR, WHOLE};

fn open(dir: &Path) -> Store {
    Store::open(&dir.join("store")).unwrap()
}

fn ingests(s: &Store) -> Vec<String> {
    fs::read_dir(s.root().join(INGEST_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn blob_count(s: &Store) -> usize {
    Algorithm::ALL
        .iter()
        .map(|a| {
            fs::read_dir(s.root().join(BLOBS_DIR).join(a.name()))
                .unwrap()
                .count()
        })
        .sum()
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// One whole write of `data` as `d`: whether it placed a new blob.
fn put(s: &Store, d: &Digest, size: Option<u64>, data: &[u8]) -> bool {
    let mut w = s.ingest(d, size).unwrap();
    w.write_all(data).unwrap();
    w.commit().unwrap()
}

/// A pid that no process has: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn write_in_chunks_then_read_back_a_read_only_blob() {
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    for alg in Algorithm::ALL {
        let data = bytes(3 << 20, 1);
        let d = Digest::of(alg, &data);
        let mut w = s.ingest(&d, Some(data.len() as u64)).unwrap();
        for c in data.chunks(100_003) {
            w.write_all(c).unwrap();
        }
        assert_eq!(w.written(), data.len() as u64);
        assert!(!s.has_blob(&d).unwrap(), "a blob shows only once committed");
        assert!(w.commit().unwrap());
        let p = s.blob_path(&d);
        assert_eq!(fs::read(&p).unwrap(), data);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            BLOB_MODE
        );
    }
    assert!(ingests(&s).is_empty());
}

#[test]
fn an_unnamed_ingest_is_named_by_its_hash_at_commit() {
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    for alg in Algorithm::ALL {
        let data = bytes(2 << 20, 7);
        let want = Digest::of(alg, &data);
        let mut w = s.ingest_unnamed(alg).unwrap();
        for c in data.chunks(65_537) {
            w.write_all(c).unwrap();
        }
        assert!(
            !s.has_blob(&want).unwrap(),
            "a blob shows only once committed"
        );
        assert_eq!(w.commit_named().unwrap(), (want.clone(), true));
        assert_eq!(fs::read(s.blob_path(&want)).unwrap(), data);
        // The same content again: named the same, nothing new placed.
        let mut w = s.ingest_unnamed(alg).unwrap();
        w.write_all(&data).unwrap();
        assert_eq!(w.commit_named().unwrap(), (want, false));
        // Dropped without a commit: nothing stays.
        let mut w = s.ingest_unnamed(alg).unwrap();
        w.write_all(b"abandoned").unwrap();
        drop(w);
    }
    assert_eq!(blob_count(&s), 2);
    assert!(ingests(&s).is_empty());
}

#[test]
fn commit_of_a_blob_that_exists_succeeds_and_leaves_it_untouched() {
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    let data = bytes(70_000, 2);
    let d = Digest::of(Algorithm::Sha256, &data);
    assert!(put(&s, &d, None, &data));
    let before = fs::metadata(s.blob_path(&d)).unwrap();
    for size in [None, Some(data.len() as u64)] {
        assert!(
            !put(&s, &d, size, &data),
            "already there: nothing new placed"
        );
    }
    let after = fs::metadata(s.blob_path(&d)).unwrap();
    assert_eq!((before.ino(), before.mtime()), (after.ino(), after.mtime()));
    assert_eq!(blob_count(&s), 1);
    assert!(ingests(&s).is_empty());
}

#[test]
fn wrong_digest_and_wrong_size_fail_and_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    let data = bytes(10_000, 3);
    let d = Digest::of(Algorithm::Sha256, &data);
    let len = data.len() as u64;

    // Different bytes of the same length.
    let mut other = data.clone();
    other[5000] ^= 1;
    let mut w = s.ingest(&d, Some(len)).unwrap();
    w.write_all(&other).unwrap();
    let e = w.commit().unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains(&d.to_string()),
        "names the digest: {e}"
    );

    // Short, with the size known: the size is what fails.
    let mut w = s.ingest(&d, Some(len)).unwrap();
    w.write_all(&data[..9_999]).unwrap();
    assert!(matches!(
        w.commit().unwrap_err(),
        Error::SizeMismatch { found: 9_999, .. }
    ));

    // Long, with the size known: the write past it fails at once.
    let mut w = s.ingest(&d, Some(len)).unwrap();
    w.write_all(&data).unwrap();
    assert!(matches!(
        w.write_all(b"x").unwrap_err(),
        Error::SizeMismatch { found: 10_001, .. }
    ));
    drop(w);

    // A size given wrong for the right bytes.
    let mut w = s.ingest(&d, Some(len + 1)).unwrap();
    w.write_all(&data).unwrap();
    assert!(matches!(
        w.commit().unwrap_err(),
        Error::SizeMismatch { .. }
    ));

    // Unknown size, extra bytes: the digest is what fails.
    let mut w = s.ingest(&d, None).unwrap();
    w.write_all(&data).unwrap();
    w.write_all(b"!").unwrap();
    assert!(matches!(
        w.commit().unwrap_err(),
        Error::DigestMismatch { .. }
    ));

    assert_eq!(blob_count(&s), 0);
    assert!(ingests(&s).is_empty());
    // And the right bytes still go in afterwards.
    assert!(put(&s, &d, Some(len), &data));
}

#[test]
fn abort_removes_the_ingest() {
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    let data = bytes(50_000, 4);
    let d = Digest::of(Algorithm::Sha512, &data);
    let mut w = s.ingest(&d, Some(data.len() as u64)).unwrap();
    w.write_all(&data[..20_000]).unwrap();
    assert_eq!(ingests(&s).len(), 1);
    drop(w);
    assert!(ingests(&s).is_empty());
    assert!(!s.has_blob(&d).unwrap());
}

#[test]
fn a_write_restarts_after_its_writer_died_and_the_dead_ingest_is_swept() {
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    let data = bytes(200_000, 5);
    let d = Digest::of(Algorithm::Sha256, &data);
    // What a writer killed mid-write leaves: an ingest named by its pid, half full.
    let dead = s
        .root()
        .join(INGEST_DIR)
        .join(format!("{}-0-1", dead_pid()));
    fs::create_dir(&dead).unwrap();
    fs::write(dead.join("data"), &data[..80_000]).unwrap();
    assert!(!s.has_blob(&d).unwrap(), "a dead ingest is no blob");

    // A new write of the same digest starts over and completes.
    assert!(put(&s, &d, Some(data.len() as u64), &data));
    assert_eq!(fs::read(s.blob_path(&d)).unwrap(), data);

    // gc leaves a young dead ingest for the grace period, then sweeps it.
    let r = gc(&s, &GcOptions::default()).unwrap();
    assert_eq!(r.ingests, 0);
    assert!(dead.exists());
    let r = gc(
        &s,
        &GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((r.ingests, r.ingest_bytes), (1, 80_000));
    assert!(!dead.exists());
    // An ingest of a live process is never swept, whatever its age.
    let mut live = s.ingest(&d, None).unwrap();
    live.write_all(b"partial").unwrap();
    let r = gc(
        &s,
        &GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.ingests, 0);
    assert_eq!(ingests(&s).len(), 1);
    assert_eq!(remove_abandoned(&s).unwrap(), 0);
    drop(live);
}

#[test]
fn concurrent_writers_of_one_digest_each_with_its_own_store_handle() {
    let t = tempfile::tempdir().unwrap();
    let data = bytes(4 << 20, 6);
    let d = Digest::of(Algorithm::Sha256, &data);
    let placed: Vec<bool> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6)
            .map(|i| {
                let (data, d, root) = (&data, &d, t.path());
                sc.spawn(move || {
                    // Its own Store: its own database connections, as another process has.
                    let s = open(root);
                    let lease = s.lease().unwrap();
                    lease.hold(WHOLE, [d]).unwrap();
                    let mut w = s.ingest(d, Some(data.len() as u64)).unwrap();
                    for c in data.chunks(1 << 16 | i) {
                        w.write_all(c).unwrap();
                    }
                    w.commit().unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(placed.iter().filter(|p| **p).count(), 1, "{placed:?}");
    let s = open(t.path());
    assert_eq!(fs::read(s.blob_path(&d)).unwrap(), data);
    assert_eq!(blob_count(&s), 1);
    assert!(ingests(&s).is_empty());
}

#[test]
fn readers_never_see_a_blob_half_written() {
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    let data = bytes(16 << 20, 7);
    let d = Digest::of(Algorithm::Sha256, &data);
    let done = AtomicBool::new(false);
    let seen = std::thread::scope(|sc| {
        let watcher = sc.spawn(|| {
            let mut seen = 0;
            while !done.load(Ordering::Relaxed) {
                if let Ok(m) = fs::metadata(s.blob_path(&d)) {
                    assert_eq!(m.len(), data.len() as u64, "a partial blob was visible");
                    seen += 1;
                }
            }
            seen
        });
        let mut w = s.ingest(&d, Some(data.len() as u64)).unwrap();
        for c in data.chunks(1 << 20) {
            w.write_all(c).unwrap();
        }
        w.commit().unwrap();
        for _ in 0..1000 {
            if fs::metadata(s.blob_path(&d)).is_ok() {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        done.store(true, Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert!(seen > 0, "the watcher saw the committed blob");
}

#[test]
fn a_lease_keeps_an_unregistered_blob_from_gc_until_it_is_dropped() {
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    let data = bytes(1000, 8);
    let d = Digest::of(Algorithm::Sha256, &data);
    let lease = s.lease().unwrap();
    lease.hold(WHOLE, [&d]).unwrap();
    let mut w = s.ingest(&d, None).unwrap();
    w.write_all(&data).unwrap();
    w.commit().unwrap();
    // From another handle, as another process runs gc.
    let other = open(t.path());
    let r = gc(&other, &GcOptions::default()).unwrap();
    assert!(r.blobs.is_empty());
    assert_eq!(r.leased, 1);
    assert!(s.has_blob(&d).unwrap());
    assert_eq!(lease.held().unwrap(), 1);
    drop(lease);
    let dry = gc(
        &other,
        &GcOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(dry.blobs, vec![(d.clone(), 1000)]);
    assert!(s.has_blob(&d).unwrap(), "a dry run removes nothing");
    let r = gc(&other, &GcOptions::default()).unwrap();
    assert_eq!((r.blobs.len(), r.bytes()), (1, 1000));
    assert!(!s.has_blob(&d).unwrap());
}
