//! The content interfaces' conformance suite, in the spirit of containerd's content
//! testsuite: what every `Provider`, `Ingester` and `Catalog` (src/content.rs) must do, written
//! once against the traits and run against every implementation: the local store (read-write,
//! and on a read-only filesystem), its records on their own, and content held in memory
//! (tests/common/memory.rs, written from the contracts alone). The catalog contract covers the
//! kept repositories too: kept and forgotten with images in one change, all or nothing. Then
//! what the local store promises beyond them, on disk: no blob visible before its commit,
//! read-only blob files, no ingest left behind, a write restarted after its writer died,
//! concurrent writers with their own connections, leases against gc, and its records' schema
//! (kept repositories survive reopening, a schema-3 database is read and upgraded, a newer
//! one refused).
//!
//! An ordinary ingest belongs to the process that started it: a new write of the digest
//! starts from byte zero. A resumed one (`Ingester::resume`) keeps its bytes in
//! `ingest/r-<alg>-<hex>/` for the next resume of the digest, whichever process: the tests
//! below leave it as a dropped writer, an abandoned one and a killed process would, hold its
//! lock from another process, plant links and foreign files in it, and age it for gc.

mod common;

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use common::layout_dir::LayoutDir;
use common::memory::Memory;
use common::Tmpfs;
use layoutfs::content::{Catalog, Change, Content, Ingester, Provider};
use layoutfs::digest::{Algorithm, Digest};
use layoutfs::error::Error;
use layoutfs::oci::{Descriptor, MAX_JSON_SIZE};
use layoutfs::reference::Reference;
use layoutfs::store::gc::{gc, GcOptions};
use layoutfs::store::{
    remove_abandoned, Access, Records, Store, BLOBS_DIR, BLOB_MODE, INGEST_DIR, RESUME_KEEP, WHOLE,
};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

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

fn name(s: &str) -> Reference {
    s.parse().unwrap()
}

/// A small JSON blob, as a manifest would be, with its descriptor.
fn json_blob(seed: u8) -> (Descriptor, Vec<u8>) {
    let data = format!("{{\"schemaVersion\":2,\"seed\":{seed}}}").into_bytes();
    let d = Digest::of(Algorithm::Sha256, &data);
    (Descriptor::new(MANIFEST, d, data.len() as u64), data)
}

/// Writes `data` whole through `i`, expecting digest `d`: whether it placed a new blob.
fn ingest(i: &dyn Ingester, d: &Digest, size: Option<u64>, data: &[u8]) -> bool {
    let mut w = i.ingest(d, size).unwrap();
    w.write_all(data).unwrap();
    w.commit().unwrap()
}

/// What every provider does with the blobs `present` (descriptor, bytes) it holds and a digest
/// it does not hold.
fn provider_contract(what: &str, p: &dyn Provider, present: &[(Descriptor, Vec<u8>)]) {
    let absent = Digest::of(Algorithm::Sha256, what.as_bytes());
    assert_eq!(p.blob_size(&absent).unwrap(), None, "{what}");
    let e = p
        .open(&Descriptor::new(LAYER, absent.clone(), 1))
        .unwrap_err();
    assert!(matches!(e, Error::MissingBlob { .. }), "{what}: {e}");
    assert!(e.to_string().contains(&absent.to_string()), "{what}: {e}");
    let e = p.open_file(&absent).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{what}: {e}");
    for (desc, data) in present {
        let d = &desc.digest;
        assert_eq!(p.blob_size(d).unwrap(), Some(data.len() as u64), "{what}");
        assert!(p.locate(d).contains(d.hex()), "{what}: {}", p.locate(d));
        // Two opens are two files, each from the start, with the blob's length.
        let (mut a, mut b) = (p.open(desc).unwrap(), p.open(desc).unwrap());
        assert_eq!(a.metadata().unwrap().len(), data.len() as u64, "{what}");
        let mut half = vec![0; data.len() / 2];
        a.read_exact(&mut half).unwrap();
        let mut whole = Vec::new();
        b.read_to_end(&mut whole).unwrap();
        assert!(whole == *data, "{what}: {d} reads back other bytes");
        let mut raw = Vec::new();
        p.open_file(d).unwrap().read_to_end(&mut raw).unwrap();
        assert!(raw == *data, "{what}: open_file of {d}");
        // A descriptor giving another size is refused, naming the digest.
        let wrong = Descriptor::new(&desc.media_type, d.clone(), desc.size + 1);
        let e = p.open(&wrong).unwrap_err();
        assert!(matches!(e, Error::SizeMismatch { .. }), "{what}: {e}");
        assert!(e.to_string().contains(&d.to_string()), "{what}: {e}");
        if desc.size <= MAX_JSON_SIZE {
            assert!(p.read_small(desc).unwrap() == *data, "{what}: read_small");
            assert!(p.read_small(&wrong).is_err(), "{what}: read_small, size");
        }
    }
    // A small read is bounded before anything is read, present or not.
    let huge = Descriptor::new(MANIFEST, absent, MAX_JSON_SIZE + 1);
    let e = p.read_small(&huge).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{what}: {e}");
}

/// What every ingester does, seen through its provider `p`.
fn ingester_contract(what: &str, i: &dyn Ingester, p: &dyn Provider) {
    for alg in Algorithm::ALL {
        // In chunks, with the size known: visible only once committed.
        let data = bytes(3 << 20, alg as u8 + 1);
        let d = Digest::of(alg, &data);
        let mut w = i.ingest(&d, Some(data.len() as u64)).unwrap();
        for c in data.chunks(100_003) {
            w.write_all(c).unwrap();
        }
        assert_eq!(w.written(), data.len() as u64, "{what}");
        assert_eq!(
            p.blob_size(&d).unwrap(),
            None,
            "{what}: visible before commit"
        );
        assert!(w.commit().unwrap(), "{what}: placed");
        let desc = Descriptor::new(LAYER, d.clone(), data.len() as u64);
        provider_contract(what, p, &[(desc, data.clone())]);
        // Again, with or without the size: already there, nothing new.
        for size in [None, Some(data.len() as u64)] {
            assert!(!ingest(i, &d, size, &data), "{what}: placed twice");
        }

        // Named at commit by what the content hashes to.
        let data = bytes(1 << 20, 40 + alg as u8);
        let want = Digest::of(alg, &data);
        let mut w = i.ingest_unnamed(alg).unwrap();
        let mut seen = 0;
        w.copy_from(&mut &data[..], "a test buffer", &mut |n| seen += n)
            .unwrap();
        assert_eq!(seen, data.len() as u64, "{what}: progress");
        assert_eq!(p.blob_size(&want).unwrap(), None, "{what}");
        assert_eq!(w.commit_named().unwrap(), (want.clone(), true), "{what}");
        let mut w = i.ingest_unnamed(alg).unwrap();
        w.write_all(&data).unwrap();
        assert_eq!(w.commit_named().unwrap(), (want, false), "{what}");
    }
    refusals_contract(what, i, p);
    concurrent_contract(what, i, p);
    resume_contract(what, i, p);
}

/// A resumed writer: whatever it starts with (`written()`, kept by the writer before or 0), the
/// rest from there makes the blob; after a commit that finds the digest wrong, the next
/// starts at 0.
fn resume_contract(what: &str, i: &dyn Ingester, p: &dyn Provider) {
    for alg in Algorithm::ALL {
        let data = bytes(300_007, 50 + alg as u8);
        let d = Digest::of(alg, &data);
        let len = data.len() as u64;
        let mut w = i.resume(&d, len).unwrap();
        assert_eq!(w.written(), 0, "{what}: nothing kept yet");
        w.write_all(&data[..100_000]).unwrap();
        drop(w);
        let mut w = i.resume(&d, len).unwrap();
        let from = w.written();
        assert!(from == 0 || from == 100_000, "{what}: starts at {from}");
        w.write_all(&data[from as usize..]).unwrap();
        assert_eq!(
            p.blob_size(&d).unwrap(),
            None,
            "{what}: visible before commit"
        );
        assert!(w.commit().unwrap(), "{what}: placed");
        let desc = Descriptor::new(LAYER, d.clone(), len);
        provider_contract(what, p, &[(desc, data.clone())]);

        // Wrong bytes: refused naming the digest, and nothing is kept of them.
        let data = bytes(70_001, 60 + alg as u8);
        let d = Digest::of(alg, &data);
        let len = data.len() as u64;
        let mut wrong = data.clone();
        wrong[1234] ^= 1;
        let mut w = i.resume(&d, len).unwrap();
        w.write_all(&wrong).unwrap();
        let e = w.commit().unwrap_err();
        assert!(
            matches!(&e, Error::DigestMismatch { expected, .. } if *expected == d),
            "{what}: {e}"
        );
        let mut w = i.resume(&d, len).unwrap();
        assert_eq!(w.written(), 0, "{what}: wrong bytes kept");
        w.write_all(&data).unwrap();
        assert!(w.commit().unwrap(), "{what}");
        // The blob there already: a success that places nothing.
        let mut w = i.resume(&d, len).unwrap();
        w.write_all(&data[w.written() as usize..]).unwrap();
        assert!(!w.commit().unwrap(), "{what}: placed twice");
    }
}

/// Wrong bytes, wrong sizes, a failing reader and a dropped writer leave nothing.
fn refusals_contract(what: &str, i: &dyn Ingester, p: &dyn Provider) {
    let data = bytes(10_000, 3);
    let d = Digest::of(Algorithm::Sha256, &data);
    let len = data.len() as u64;
    let mut other = data.clone();
    other[5000] ^= 1;
    let mut w = i.ingest(&d, Some(len)).unwrap();
    w.write_all(&other).unwrap();
    let e = w.commit().unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{what}: {e}");
    assert!(e.to_string().contains(&d.to_string()), "{what}: {e}");
    // Short with the size known: the size fails; long: the write past it fails at once.
    let mut w = i.ingest(&d, Some(len)).unwrap();
    w.write_all(&data[..9_999]).unwrap();
    let e = w.commit().unwrap_err();
    assert!(
        matches!(e, Error::SizeMismatch { found: 9_999, .. }),
        "{what}: {e}"
    );
    let mut w = i.ingest(&d, Some(len)).unwrap();
    w.write_all(&data).unwrap();
    let e = w.write_all(b"x").unwrap_err();
    assert!(
        matches!(e, Error::SizeMismatch { found: 10_001, .. }),
        "{what}: {e}"
    );
    drop(w);
    // A size given wrong for the right bytes; extra bytes with no size: the digest fails.
    let mut w = i.ingest(&d, Some(len + 1)).unwrap();
    w.write_all(&data).unwrap();
    assert!(
        matches!(w.commit(), Err(Error::SizeMismatch { .. })),
        "{what}"
    );
    let mut w = i.ingest(&d, None).unwrap();
    w.write_all(&data).unwrap();
    w.write_all(b"!").unwrap();
    assert!(
        matches!(w.commit(), Err(Error::DigestMismatch { .. })),
        "{what}"
    );
    // A reader that fails names what it reads.
    let mut w = i.ingest(&d, Some(len)).unwrap();
    let mut failing = io::Read::chain(&data[..100], FailingReader);
    let e = w
        .copy_from(&mut failing, "the source", &mut |_| {})
        .unwrap_err();
    assert!(e.to_string().starts_with("the source: "), "{what}: {e}");
    drop(w);
    // Dropped half-way.
    let mut w = i.ingest_unnamed(Algorithm::Sha512).unwrap();
    w.write_all(&data[..20_000.min(data.len())]).unwrap();
    drop(w);
    let half = Digest::of(Algorithm::Sha512, &data);
    assert_eq!(p.blob_size(&half).unwrap(), None, "{what}");
    assert_eq!(
        p.blob_size(&d).unwrap(),
        None,
        "{what}: a refused blob is there"
    );
    // And the right bytes still go in afterwards.
    assert!(ingest(i, &d, Some(len), &data), "{what}");
}

struct FailingReader;

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("the disk went away"))
    }
}

/// Writers of one digest at once: all succeed, exactly one places it.
fn concurrent_contract(what: &str, i: &dyn Ingester, p: &dyn Provider) {
    let data = bytes(2 << 20, 6);
    let d = Digest::of(Algorithm::Sha256, &data);
    let placed: Vec<bool> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6)
            .map(|n| {
                let (data, d) = (&data, &d);
                sc.spawn(move || {
                    let mut w = i.ingest(d, Some(data.len() as u64)).unwrap();
                    for c in data.chunks(1 << 16 | n) {
                        w.write_all(c).unwrap();
                    }
                    w.commit().unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        placed.iter().filter(|p| **p).count(),
        1,
        "{what}: {placed:?}"
    );
    let desc = Descriptor::new(LAYER, d, data.len() as u64);
    provider_contract(what, p, &[(desc, data)]);
}

/// What every writable catalog does, starting empty.
fn catalog_contract(what: &str, c: &dyn Catalog) {
    assert!(c.list().unwrap().is_empty(), "{what}");
    let (m1, _) = json_blob(1);
    let (m2, _) = json_blob(2);
    let v0 = c.version().unwrap();
    let put = [
        (name("b:1"), m2.clone()),
        (name("a/b:1"), m1.clone()),
        (name("a:1"), m1.clone()),
        (name(&format!("a@{}", m2.digest)), m2.clone()),
    ];
    c.update(&put, &[]).unwrap();
    let v1 = c.version().unwrap();
    assert_ne!(v0, v1, "{what}: version after an update");
    let names: Vec<String> = c
        .list()
        .unwrap()
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "{what}: list is sorted by name");
    assert_eq!(names.len(), 4, "{what}");
    // One repository is exactly that one: not `a/b` under `a`.
    let of_a: Vec<String> = c
        .of_repository("a")
        .unwrap()
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(
        of_a,
        ["a:1".to_owned(), format!("a@{}", m2.digest)],
        "{what}"
    );
    let a1 = c.get(&name("a:1")).unwrap().unwrap();
    assert_eq!(a1.target, m1, "{what}");
    assert!(c.get(&name("a:2")).unwrap().is_none(), "{what}");
    // Re-pointing a tag keeps its creation time.
    c.update(&[(name("a:1"), m2.clone())], &[]).unwrap();
    let again = c.get(&name("a:1")).unwrap().unwrap();
    assert_eq!(
        (again.target, again.created),
        (m2.clone(), a1.created),
        "{what}"
    );
    assert!(again.updated >= a1.updated, "{what}");
    catalog_refusals(what, c, &m1, &m2);
    // Removing a name that is not there is no error; put and remove are one change.
    let before = c.version().unwrap();
    c.update(
        &[(name("c:1"), m1.clone())],
        &[name("b:1"), name("nothere:1")],
    )
    .unwrap();
    assert_ne!(c.version().unwrap(), before, "{what}");
    assert!(c.get(&name("b:1")).unwrap().is_none(), "{what}");
    assert_eq!(c.get(&name("c:1")).unwrap().unwrap().target, m1, "{what}");
}

/// Refused updates change nothing, not even the part that was fine.
fn catalog_refusals(what: &str, c: &dyn Catalog, m1: &Descriptor, m2: &Descriptor) {
    let before = (c.list().unwrap(), c.version().unwrap());
    // A name with a digest names exactly that content...
    let pinned = name(&format!("a@{}", m2.digest));
    let e = c
        .update(&[(pinned.clone(), m1.clone())], &[name("b:1")])
        .unwrap_err();
    assert!(
        e.to_string().contains(&m2.digest.to_string()),
        "{what}: {e}"
    );
    // ... as one kind of blob for good.
    let mut as_index = m2.clone();
    as_index.media_type = INDEX.to_owned();
    let e = c
        .update(
            &[(name("z:1"), m1.clone()), (pinned.clone(), as_index)],
            &[],
        )
        .unwrap_err();
    assert!(e.to_string().contains(&pinned.to_string()), "{what}: {e}");
    // A record is bounded.
    let mut big = m1.clone();
    big.annotations.insert("x".into(), "y".repeat(20_000));
    let e = c
        .update(&[(name("big:1"), big)], &[name("b:1")])
        .unwrap_err();
    assert!(e.to_string().contains("big:1"), "{what}: {e}");
    assert_eq!(
        (c.list().unwrap(), c.version().unwrap()),
        before,
        "{what}: a refusal changed the records"
    );
}

/// The repositories a catalog keeps with no image required (`Catalog::repositories`), changed
/// with images by `Catalog::apply`: all or nothing, sorted, idempotent. Uses only repositories
/// under `kept-`, so that it runs on a catalog that already holds images.
fn repositories_contract(what: &str, c: &dyn Catalog) {
    let (m1, _) = json_blob(21);
    let (m2, _) = json_blob(22);
    let kept = |c: &dyn Catalog| -> Vec<String> {
        let all = c.repositories().unwrap();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted, "{what}: repositories() is sorted");
        all.into_iter().filter(|r| r.starts_with("kept-")).collect()
    };
    assert!(kept(c).is_empty(), "{what}");
    // Kept in an order of their own; with an image put in the same change.
    let v0 = c.version().unwrap();
    c.apply(&Change {
        put: &[(name("kept-b/img:1"), m1.clone())],
        keep: &strings(&["kept-b/img", "kept-z", "kept-a.b", "kept-a/b", "kept-a-b"]),
        ..Change::default()
    })
    .unwrap();
    assert_ne!(c.version().unwrap(), v0, "{what}: version after a keep");
    assert_eq!(
        kept(c),
        ["kept-a-b", "kept-a.b", "kept-a/b", "kept-b/img", "kept-z"],
        "{what}"
    );
    assert_eq!(
        c.of_repository("kept-z").unwrap(),
        [],
        "{what}: kept, no image"
    );
    assert_eq!(
        c.get(&name("kept-b/img:1")).unwrap().map(|i| i.target),
        Some(m1.clone()),
        "{what}"
    );
    // Keeping a kept name again, forgetting one never kept: no error, no other change.
    let before = kept(c);
    c.apply(&Change {
        keep: &strings(&["kept-z", "kept-z"]),
        forget: &strings(&["kept-never"]),
        ..Change::default()
    })
    .unwrap();
    assert_eq!(
        kept(c),
        before,
        "{what}: keep is idempotent, forget ignores"
    );
    // Images and kept repositories are apart: a kept repository stays kept without its last
    // image, and a forgotten one keeps its images.
    let v1 = c.version().unwrap();
    c.apply(&Change {
        remove: &[name("kept-b/img:1")],
        put: &[(name("kept-a-b:2"), m2.clone())],
        forget: &strings(&["kept-a-b", "kept-a.b"]),
        ..Change::default()
    })
    .unwrap();
    assert_ne!(c.version().unwrap(), v1, "{what}: version after a forget");
    assert_eq!(kept(c), ["kept-a/b", "kept-b/img", "kept-z"], "{what}");
    assert!(c.get(&name("kept-b/img:1")).unwrap().is_none(), "{what}");
    assert_eq!(c.of_repository("kept-a-b").unwrap().len(), 1, "{what}");
    // Forgotten, then kept: a name in both ends kept.
    c.apply(&Change {
        forget: &strings(&["kept-z"]),
        keep: &strings(&["kept-z"]),
        ..Change::default()
    })
    .unwrap();
    assert!(kept(c).contains(&"kept-z".to_owned()), "{what}");
    repositories_refusals(what, c, &m1, &m2);
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// A change with one bad part changes nothing: neither images nor kept repositories.
fn repositories_refusals(what: &str, c: &dyn Catalog, m1: &Descriptor, m2: &Descriptor) {
    let state = |c: &dyn Catalog| {
        (
            c.list().unwrap(),
            c.repositories().unwrap(),
            c.version().unwrap(),
        )
    };
    let before = state(c);
    assert!(!before.0.is_empty() && !before.1.is_empty(), "{what}");
    let (remove, forget) = (
        [before.0[0].name.clone()],
        [before.1[0].clone(), before.1[before.1.len() - 1].clone()],
    );
    let pinned = name(&format!("kept-p@{}", m2.digest));
    let mut big = m1.clone();
    big.annotations.insert("x".into(), "y".repeat(20_000));
    let cases = [
        (
            "an invalid name kept",
            vec![],
            strings(&["kept-ok", "Kept-Bad"]),
        ),
        (
            "an empty name kept",
            vec![(name("kept-n:1"), m1.clone())],
            strings(&[""]),
        ),
        ("a name with a path kept", vec![], strings(&["kept-a/../b"])),
        (
            "a digest for other content",
            vec![(pinned, m1.clone())],
            strings(&["kept-n"]),
        ),
        (
            "a record over the limit",
            vec![(name("kept-big:1"), big)],
            strings(&["kept-n"]),
        ),
    ];
    for (case, put, keep) in cases {
        let e = c.apply(&Change {
            remove: &remove,
            put: &put,
            forget: &forget,
            keep: &keep,
        });
        assert!(e.is_err(), "{what}: {case}: applied");
        assert_eq!(
            state(c),
            before,
            "{what}: {case}: a refusal changed the records"
        );
    }
}

/// A catalog that may only be read: updates are refused, and change nothing.
fn read_only_catalog_contract(what: &str, c: &dyn Catalog, m: &Descriptor) {
    let before = c.list().unwrap();
    assert!(!before.is_empty(), "{what}");
    for image in &before {
        assert_eq!(c.get(&image.name).unwrap().as_ref(), Some(image), "{what}");
    }
    let e = c.update(&[(name("new:1"), m.clone())], &[before[0].name.clone()]);
    assert!(e.is_err(), "{what}: an update of a read-only catalog");
    let kept = c.repositories().unwrap();
    let e = c.apply(&Change {
        keep: &strings(&["new-kept"]),
        forget: &kept,
        ..Change::default()
    });
    assert!(e.is_err(), "{what}: a keep in a read-only catalog");
    assert_eq!(c.list().unwrap(), before, "{what}");
    assert_eq!(c.repositories().unwrap(), kept, "{what}");
}

/// What every `Content` does beyond its provider and ingester: drafts written in any order,
/// read back, truncated, verified and committed (or refused, leaving nothing visible), blob
/// info, leases and room.
fn content_contract(what: &str, c: &dyn Content) {
    for alg in Algorithm::ALL {
        let data = bytes(2 << 20, 70 + alg as u8);
        let d = Digest::of(alg, &data);
        let len = data.len() as u64;
        // Out of order, with a rewrite and a read back.
        let mut w = c.draft(alg).unwrap();
        assert!(w.is_empty(), "{what}");
        let half = data.len() / 2;
        w.write_at(half as u64, &data[half..]).unwrap();
        w.write_at(0, &vec![0xa5; half]).unwrap();
        let mut back = Vec::new();
        w.read_at(10, 20, &mut back).unwrap();
        assert_eq!(back, vec![0xa5; 20], "{what}: read back");
        w.write_at(0, &data[..half]).unwrap();
        assert_eq!(w.len(), len, "{what}");
        assert_eq!(w.digest(alg).unwrap(), d, "{what}: digest");
        w.verify(&d, Some(len)).unwrap();
        assert!(w.verify(&d, Some(len + 1)).is_err(), "{what}: size");
        // A read past the end is short, not an error.
        w.read_at(len - 5, 100, &mut back).unwrap();
        assert_eq!(back, &data[data.len() - 5..], "{what}: short read");
        w.sync().unwrap();
        w.park();
        assert_eq!(
            c.blob_size(&d).unwrap(),
            None,
            "{what}: visible before commit"
        );
        assert!(w.commit(&d, Some(len)).unwrap(), "{what}: placed");
        let info = c.info(&d).unwrap().unwrap();
        assert_eq!(info.size, len, "{what}: info");
        assert!(
            info.blocks * 512 >= len || info.blocks == 0,
            "{what}: blocks"
        );
        provider_contract(
            what,
            c,
            &[(Descriptor::new(LAYER, d.clone(), len), data.clone())],
        );
        // In order again: already there.
        let mut w = c.draft(alg).unwrap();
        w.write_at(0, &data).unwrap();
        assert!(!w.commit(&d, None).unwrap(), "{what}: placed twice");

        // Wrong content, truncated content, a draft dropped: nothing becomes visible.
        let other = Digest::of(alg, b"other content");
        let mut w = c.draft(alg).unwrap();
        w.write_at(0, &data).unwrap();
        let e = w.commit(&other, None).unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{what}: {e}");
        let mut w = c.draft(alg).unwrap();
        w.write_at(0, &data).unwrap();
        w.truncate(10).unwrap();
        assert_eq!(w.len(), 10, "{what}");
        let e = w.commit(&d, Some(len)).unwrap_err();
        assert!(matches!(e, Error::SizeMismatch { .. }), "{what}: {e}");
        let mut w = c.draft(alg).unwrap();
        w.write_at(0, b"other content").unwrap();
        drop(w);
        assert_eq!(
            c.blob_size(&other).unwrap(),
            None,
            "{what}: a refused draft"
        );
        assert_eq!(c.info(&other).unwrap(), None, "{what}: info of nothing");
    }
    // Leases hold and release; dropping one lets go of everything.
    let lease = c.lease().unwrap();
    let d = Digest::of(Algorithm::Sha256, what.as_bytes());
    lease.hold("a", &[&d]).unwrap();
    lease.hold("a", &[&d]).unwrap();
    lease.hold("p 1 x", &[&d]).unwrap();
    lease.release("a").unwrap();
    lease.release_prefix("p 1 ").unwrap();
    lease.release("nobody").unwrap();
    assert!(!lease.id().is_empty(), "{what}");
    // An import's staging: a blob committed there is seen through it at once, by the content
    // after `finish` at the latest, and counted as placed; one the content had is not.
    let staging = c.staging(&*lease).unwrap();
    let data = bytes(100_000, 99);
    let d = Digest::of(Algorithm::Sha256, &data);
    assert!(
        ingest(&*staging, &d, Some(data.len() as u64), &data),
        "{what}"
    );
    assert_eq!(
        staging.blob_size(&d).unwrap(),
        Some(data.len() as u64),
        "{what}"
    );
    let had = json_blob(200).1;
    let had_d = Digest::of(Algorithm::Sha256, &had);
    assert!(ingest(c, &had_d, None, &had), "{what}");
    ingest(&*staging, &had_d, None, &had);
    staging.finish().unwrap();
    assert_eq!(c.blob_size(&d).unwrap(), Some(data.len() as u64), "{what}");
    assert_eq!(staging.placed(), vec![(d, data.len() as u64)], "{what}");
    drop(staging);
    drop(lease);
    let room = c.space().unwrap();
    assert!(room.blocks > 0 && room.bsize > 0, "{what}: {room:?}");
    assert!(!c.is_read_only(), "{what}");
}

#[test]
fn the_local_store_keeps_the_content_contracts() {
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    provider_contract("store", &s, &[]);
    ingester_contract("store", &s, &s);
    catalog_contract("store", s.records());
    repositories_contract("store", s.records());
    content_contract("store", &s);
    // What the contracts leave on disk: read-only blob files, and no ingest.
    for alg in Algorithm::ALL {
        for e in fs::read_dir(s.root().join(BLOBS_DIR).join(alg.name())).unwrap() {
            let m = e.unwrap().metadata().unwrap();
            assert_eq!(m.permissions().mode() & 0o777, BLOB_MODE);
        }
    }
    assert!(ingests(&s).is_empty(), "{:?}", ingests(&s));
}

#[test]
fn content_in_memory_keeps_the_content_contracts() {
    let m = Memory::new();
    provider_contract("memory", &m, &[]);
    ingester_contract("memory", &m, &m);
    catalog_contract("memory", &m);
    repositories_contract("memory", &m);
    content_contract("memory", &m);
    assert_eq!(m.held(), 0, "a dropped lease holds nothing");
}

#[test]
fn a_layout_directory_keeps_the_provider_contract() {
    let t = tempfile::tempdir().unwrap();
    let mut blobs: Vec<(Descriptor, Vec<u8>)> = (0..3).map(json_blob).collect();
    let layer = bytes(3 << 20, 11);
    let d = Digest::of(Algorithm::Sha512, &layer);
    blobs.push((Descriptor::new(LAYER, d, layer.len() as u64), layer));
    for (desc, data) in &blobs {
        let path = t.path().join(desc.digest.blob_path());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
    provider_contract("layout directory", &LayoutDir(t.path().to_owned()), &blobs);
}

#[test]
fn records_on_their_own_keep_the_catalog_contract() {
    let t = tempfile::tempdir().unwrap();
    let records = Records::open(&t.path().join("meta.db")).unwrap();
    catalog_contract("records", &records);
    repositories_contract("records", &records);
    // A change made through another handle on the same records changes the version too.
    let other = Records::open(&t.path().join("meta.db")).unwrap();
    let v = records.version().unwrap();
    let (m, _) = json_blob(9);
    Catalog::update(&other, &[(name("from-elsewhere:1"), m)], &[]).unwrap();
    assert_ne!(records.version().unwrap(), v);
}

#[test]
fn a_store_on_a_read_only_filesystem_keeps_the_read_contracts_and_refuses_writes() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("ro");
    let tmpfs = Tmpfs::mount(&dir, 64);
    let blobs: Vec<(Descriptor, Vec<u8>)> = (0..3).map(json_blob).collect();
    {
        let s = open(&dir);
        for (desc, data) in &blobs {
            assert!(ingest(&s, &desc.digest, Some(desc.size), data));
        }
        s.records()
            .apply(&Change {
                put: &[(name("img:1"), blobs[0].0.clone())],
                keep: &strings(&["ro-kept"]),
                ..Change::default()
            })
            .unwrap();
    }
    tmpfs.remount("ro");
    let s = Store::open_with(&dir.join("store"), Access::Read).unwrap();
    assert!(s.is_read_only());
    assert_eq!(s.records().repositories().unwrap(), ["ro-kept"]);
    provider_contract("read-only store", &s, &blobs);
    read_only_catalog_contract("read-only store", s.records(), &blobs[1].0);
    let d = Digest::of(Algorithm::Sha256, b"new");
    let e = Ingester::ingest(&s, &d, None)
        .err()
        .expect("an ingest on a read-only store");
    assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
    drop(s);
    drop(tmpfs);
}

/// Runs `sql` on a store's `meta.db` behind layoutfs's back, and returns its schema version.
fn edit_db(db: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(sql).unwrap();
    c.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

fn has_repositories_table(db: &Path) -> bool {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name = 'repositories'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        > 0
}

#[test]
fn kept_repositories_survive_reopening_and_every_handle_sees_each_change() {
    let t = tempfile::tempdir().unwrap();
    let (m, _) = json_blob(30);
    {
        let s = open(t.path());
        s.records()
            .apply(&Change {
                put: &[(name("full:1"), m.clone())],
                keep: &strings(&["empty", "full"]),
                ..Change::default()
            })
            .unwrap();
    }
    let s = open(t.path());
    assert_eq!(s.records().repositories().unwrap(), ["empty", "full"]);
    assert_eq!(s.records().list().unwrap().len(), 1);
    // Another handle (as another process): each change moves its version, a refused one not.
    let other = Records::open(&s.root().join("meta.db")).unwrap();
    let v = other.version().unwrap();
    let bad = s.records().apply(&Change {
        forget: &strings(&["empty"]),
        keep: &strings(&["Bad"]),
        ..Change::default()
    });
    assert!(bad.is_err());
    assert_eq!(
        other.version().unwrap(),
        v,
        "a refused change moved the version"
    );
    let mine = s.records().version().unwrap();
    s.records()
        .apply(&Change {
            forget: &strings(&["empty"]),
            ..Change::default()
        })
        .unwrap();
    assert_ne!(other.version().unwrap(), v);
    assert_ne!(s.records().version().unwrap(), mine);
    assert_eq!(other.repositories().unwrap(), ["full"]);
    // And the other way round.
    let (v, mine) = (other.version().unwrap(), s.records().version().unwrap());
    Catalog::apply(
        &other,
        &Change {
            keep: &strings(&["from-elsewhere"]),
            ..Change::default()
        },
    )
    .unwrap();
    assert_ne!(other.version().unwrap(), v);
    assert_ne!(s.records().version().unwrap(), mine);
    assert_eq!(
        s.records().repositories().unwrap(),
        ["from-elsewhere", "full"]
    );
}

#[test]
fn a_schema_3_database_is_read_as_it_is_and_upgraded_when_written() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("fs");
    let tmpfs = Tmpfs::mount(&dir, 16);
    let (desc, data) = json_blob(31);
    let db = dir.join("store").join("meta.db");
    {
        let s = open(&dir);
        assert!(ingest(&s, &desc.digest, Some(desc.size), &data));
        s.records()
            .update(&[(name("old:1"), desc.clone())], &[])
            .unwrap();
    }
    // What layoutfs wrote before schema 4: no repositories table (nor origins, from 5).
    let old = "DROP TABLE repositories; DROP TABLE origins; PRAGMA user_version = 3;";
    assert_eq!(edit_db(&db, old), 3);
    assert!(!has_repositories_table(&db));
    // Read on a read-only filesystem: the images, and no kept repository.
    tmpfs.remount("ro");
    {
        let s = Store::open_with(&dir.join("store"), Access::Read).unwrap();
        assert!(s.is_read_only());
        assert_eq!(s.records().repositories().unwrap(), Vec::<String>::new());
        // No origins table: none known, and noting one is a no-op (not an error).
        assert!(s
            .records()
            .origins(&desc.digest, "r:5000")
            .unwrap()
            .is_empty());
        s.records()
            .note_origins("r:5000", "x", std::slice::from_ref(&desc.digest))
            .unwrap();
        assert_eq!(
            s.records().get(&name("old:1")).unwrap().unwrap().target,
            desc
        );
    }
    tmpfs.remount("rw");
    // Opened to write: upgraded in place, its images kept, the records not taken for lost.
    {
        let s = open(&dir);
        assert!(
            s.adopted().is_none(),
            "an upgrade set the lost-records mark"
        );
        assert_eq!(s.records().repositories().unwrap(), Vec::<String>::new());
        assert_eq!(s.records().list().unwrap().len(), 1);
        s.records()
            .apply(&Change {
                keep: &strings(&["new"]),
                ..Change::default()
            })
            .unwrap();
    }
    assert_eq!(edit_db(&db, ""), 6);
    let s = open(&dir);
    assert_eq!(s.records().repositories().unwrap(), ["new"]);
    s.records()
        .note_origins("r:5000", "x", std::slice::from_ref(&desc.digest))
        .unwrap();
    s.records()
        .note_origins("r:5000", "y", std::slice::from_ref(&desc.digest))
        .unwrap();
    let mut seen = s.records().origins(&desc.digest, "r:5000").unwrap();
    seen.sort();
    assert_eq!(seen, ["x", "y"]);
    assert!(s
        .records()
        .origins(&desc.digest, "other:5000")
        .unwrap()
        .is_empty());
    assert_eq!(
        s.records().get(&name("old:1")).unwrap().unwrap().target,
        desc
    );
}

#[test]
fn a_database_of_a_newer_schema_is_refused_and_left_as_it_is() {
    let t = tempfile::tempdir().unwrap();
    drop(open(t.path()));
    let db = t.path().join("store").join("meta.db");
    assert_eq!(
        edit_db(&db, "DROP TABLE repositories; PRAGMA user_version = 7;"),
        7
    );
    let e = Records::open(&db).err().expect("a newer schema opened");
    assert!(e.to_string().contains("newer layoutfs (schema 7)"), "{e}");
    let e = Store::open(&t.path().join("store"))
        .err()
        .expect("a newer store opened");
    assert!(e.to_string().contains("newer layoutfs (schema 7)"), "{e}");
    assert_eq!(edit_db(&db, ""), 7);
    assert!(
        !has_repositories_table(&db),
        "a refused database was changed"
    );
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

/// The kept ingest of `d` in `s`, as `Store::resume` names it.
fn kept(s: &Store, d: &Digest) -> PathBuf {
    s.root()
        .join(INGEST_DIR)
        .join(format!("r-{}-{}", d.algorithm().name(), d.hex()))
}

/// Leaves in `s` what a process killed while resuming `d` leaves after writing `prefix`: the
/// kept ingest (0700) with its data file (0600), and no lock. Returns the directory.
fn leave_kept(s: &Store, d: &Digest, prefix: &[u8]) -> PathBuf {
    let dir = kept(s, d);
    fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("data"))
        .unwrap();
    io::Write::write_all(&mut f, prefix).unwrap();
    dir
}

/// Sets the modification time of `path` back by `by`.
fn age_by(path: &Path, by: Duration) {
    let when = SystemTime::now() - by;
    fs::File::open(path)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(when).set_accessed(when))
        .unwrap();
}

/// Writes the rest of `data` from where `w` starts and commits it.
fn finish(mut w: layoutfs::store::BlobWriter, data: &[u8], chunk: usize) -> bool {
    for c in data[w.written() as usize..].chunks(chunk) {
        w.write_all(c).unwrap();
    }
    w.commit().unwrap()
}

#[test]
fn a_resumed_write_continues_from_what_a_dropped_abandoned_or_killed_writer_kept() {
    const PREFIX: usize = (1 << 20) + 3;
    // How the first writer ends, whether the second is direct (the mount's fast path).
    let cases = [
        ("dropped", false),
        ("dropped", true),
        ("abandoned", false),
        ("killed", false),
        ("killed", true),
    ];
    for alg in Algorithm::ALL {
        for (how, direct) in cases {
            let case = format!("{alg:?}, {how}, direct {direct}");
            let t = tempfile::tempdir().unwrap();
            let s = open(t.path());
            let data = bytes((3 << 20) + 5, 21);
            let d = Digest::of(alg, &data);
            let len = data.len() as u64;
            match how {
                "killed" => {
                    leave_kept(&s, &d, &data[..PREFIX]);
                }
                _ => {
                    let mut w = s.resume(&d, len).unwrap();
                    assert!(w.is_kept(), "{case}");
                    assert_eq!(w.written(), 0, "{case}");
                    w.write_all(&data[..PREFIX]).unwrap();
                    if how == "abandoned" {
                        w.abandon();
                    }
                }
            }
            assert_eq!(
                fs::metadata(kept(&s, &d).join("data")).unwrap().len(),
                PREFIX as u64,
                "{case}: kept"
            );
            assert!(!s.has_blob(&d).unwrap(), "{case}");
            let mut w = s.resume(&d, len).unwrap();
            assert!(w.is_kept(), "{case}");
            assert_eq!(
                w.written(),
                PREFIX as u64,
                "{case}: starts where it was left"
            );
            if direct {
                w = w.hash_behind();
            }
            assert!(finish(w, &data, 1 << 20), "{case}");
            assert_eq!(fs::read(s.blob_path(&d)).unwrap(), data, "{case}");
            let mode = fs::metadata(s.blob_path(&d)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, BLOB_MODE, "{case}");
            assert!(ingests(&s).is_empty(), "{case}: {:?}", ingests(&s));
        }
    }

    // Dropped with nothing written: nothing is kept. A commit short of the size keeps what
    // was written, for the next try.
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    let data = bytes(10_000, 4);
    let d = Digest::of(Algorithm::Sha256, &data);
    drop(s.resume(&d, 10_000).unwrap());
    assert!(ingests(&s).is_empty(), "{:?}", ingests(&s));
    let mut w = s.resume(&d, 10_000).unwrap();
    w.write_all(&data[..4_000]).unwrap();
    let e = w.commit().unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { found: 4_000, .. }), "{e}");
    let w = s.resume(&d, 10_000).unwrap();
    assert_eq!(w.written(), 4_000);
    assert!(finish(w, &data, 3_000));
    assert!(ingests(&s).is_empty());
}

#[test]
fn a_kept_ingest_held_by_a_live_writer_is_never_shared() {
    common::require("flock");
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    let data = bytes(2 << 20, 9);
    let d = Digest::of(Algorithm::Sha256, &data);
    let len = data.len() as u64;

    // In this process: the second writer gets an ingest of its own, from 0.
    let mut first = s.resume(&d, len).unwrap();
    first.write_all(&data[..500_000]).unwrap();
    let second = s.resume(&d, len).unwrap();
    assert!(!second.is_kept());
    assert_eq!(second.written(), 0);
    assert_eq!(ingests(&s).len(), 2, "{:?}", ingests(&s));
    assert!(finish(second, &data, 1 << 16));
    assert!(!finish(first, &data, 1 << 16), "placed twice");
    assert_eq!(fs::read(s.blob_path(&d)).unwrap(), data);
    assert_eq!(blob_count(&s), 1);
    assert!(ingests(&s).is_empty(), "{:?}", ingests(&s));

    // Another process holds the lock (a shell that locks the directory and sleeps with it).
    let data = bytes(2 << 20, 10);
    let d = Digest::of(Algorithm::Sha256, &data);
    let dir = leave_kept(&s, &d, &data[..700_000]);
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg("exec 9<\"$1\" && flock -n 9 && echo locked && exec sleep 60")
        .arg("sh")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    io::BufRead::read_line(
        &mut io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "locked\n");
    let w = s.resume(&d, len).unwrap();
    assert!(!w.is_kept(), "a held ingest was shared");
    assert_eq!(w.written(), 0);
    drop(w);
    // Neither gc, whatever the grace, nor a new mount removes it while it is held.
    let r = gc(
        &s,
        &GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((r.partial, r.partial_bytes, r.ingests), (1, 700_000, 0));
    assert_eq!(remove_abandoned(&s).unwrap(), 0);
    assert_eq!(fs::metadata(dir.join("data")).unwrap().len(), 700_000);
    // The holder killed: the next resume takes it up.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let w = s.resume(&d, len).unwrap();
    assert!(w.is_kept());
    assert_eq!(w.written(), 700_000);
    assert!(finish(w, &data, 1 << 20));
    assert_eq!(fs::read(s.blob_path(&d)).unwrap(), data);
    assert!(ingests(&s).is_empty(), "{:?}", ingests(&s));
}

#[test]
fn a_wrong_or_overlong_kept_prefix_makes_the_next_resume_start_over() {
    let data = bytes(300_000, 12);
    let d = Digest::of(Algorithm::Sha256, &data);
    let len = data.len() as u64;
    let flipped = |n: usize| {
        let mut b = data[..n].to_vec();
        b[n / 2] ^= 0x40;
        b
    };
    let mut longer = data.clone();
    longer.extend_from_slice(b"0123456789");
    // (what is kept, where the resumed writer starts, whether its commit finds it wrong)
    let cases: [(&str, Vec<u8>, u64, bool); 4] = [
        (
            "a prefix with a byte flipped",
            flipped(100_000),
            100_000,
            true,
        ),
        (
            "all of it with a byte flipped",
            flipped(data.len()),
            len,
            true,
        ),
        ("longer than the blob", longer, 0, false),
        ("a right prefix", data[..100_000].to_vec(), 100_000, false),
    ];
    for (case, kept_bytes, starts, wrong) in cases {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        leave_kept(&s, &d, &kept_bytes);
        let w = s.resume(&d, len).unwrap();
        assert_eq!(w.written(), starts, "{case}");
        if !wrong {
            assert!(finish(w, &data, 64 << 10), "{case}");
            assert_eq!(fs::read(s.blob_path(&d)).unwrap(), data, "{case}");
            assert!(ingests(&s).is_empty(), "{case}");
            continue;
        }
        let mut w = w;
        w.write_all(&data[starts as usize..]).unwrap();
        let e = w.commit().unwrap_err();
        assert!(
            matches!(&e, Error::DigestMismatch { expected, .. } if *expected == d),
            "{case}: {e}"
        );
        assert!(e.to_string().contains(&d.to_string()), "{case}: {e}");
        assert!(!s.has_blob(&d).unwrap(), "{case}");
        assert!(ingests(&s).is_empty(), "{case}: {:?}", ingests(&s));
        let w = s.resume(&d, len).unwrap();
        assert_eq!(w.written(), 0, "{case}: the next try starts clean");
        assert!(finish(w, &data, 64 << 10), "{case}");
        assert_eq!(fs::read(s.blob_path(&d)).unwrap(), data, "{case}");
    }

    // A data file left read-only (a commit that failed after making it so) is taken up.
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    let dir = leave_kept(&s, &d, &data[..5_000]);
    fs::set_permissions(dir.join("data"), fs::Permissions::from_mode(0o444)).unwrap();
    let w = s.resume(&d, len).unwrap();
    assert_eq!(w.written(), 5_000);
    assert!(finish(w, &data, 64 << 10));
}

#[test]
fn links_and_foreign_files_planted_in_a_kept_ingest_are_refused_and_left_alone() {
    // Another user's uid (the tests run as root, as CI does).
    const NOBODY: u32 = 65_534;
    type Plant = fn(dir: &Path, outside: &Path);
    let plants: [(&str, Plant, &str); 6] = [
        (
            "the directory a link",
            |dir, outside| std::os::unix::fs::symlink(outside, dir).unwrap(),
            "symbolic link",
        ),
        (
            "the data a link",
            |dir, outside| {
                fs::create_dir(dir).unwrap();
                std::os::unix::fs::symlink(outside.join("data"), dir.join("data")).unwrap();
            },
            "symbolic link",
        ),
        (
            "the data a hard link",
            |dir, outside| {
                fs::create_dir(dir).unwrap();
                fs::hard_link(outside.join("data"), dir.join("data")).unwrap();
            },
            "hard links",
        ),
        (
            "the data a directory",
            |dir, _| {
                fs::create_dir_all(dir.join("data")).unwrap();
            },
            "not a regular file",
        ),
        (
            "the data another user's",
            |dir, _| {
                fs::create_dir(dir).unwrap();
                fs::write(dir.join("data"), b"planted").unwrap();
                std::os::unix::fs::lchown(dir.join("data"), Some(NOBODY), Some(NOBODY)).unwrap();
            },
            "owned by user 65534",
        ),
        (
            "the directory another user's",
            |dir, _| {
                fs::create_dir(dir).unwrap();
                fs::write(dir.join("data"), b"planted").unwrap();
                std::os::unix::fs::lchown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
            },
            "owned by user 65534",
        ),
    ];
    let data = bytes(50_000, 13);
    let d = Digest::of(Algorithm::Sha256, &data);
    for (case, plant, refusal) in plants {
        let t = tempfile::tempdir().unwrap();
        let s = open(t.path());
        let outside = t.path().join("victim");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("data"), b"the victim's").unwrap();
        let dir = kept(&s, &d);
        plant(&dir, &outside);
        // Aged past any grace, so that only the checks keep it.
        if let Ok(m) = fs::symlink_metadata(dir.join("data")) {
            if m.is_file() {
                age_by(&dir.join("data"), 2 * RESUME_KEEP);
            }
        }
        let before = names(&dir);
        let e = s.resume(&d, data.len() as u64).err().expect(case);
        assert!(matches!(e, Error::Store { .. }), "{case}: {e}");
        assert!(e.to_string().contains(refusal), "{case}: {e}");
        let r = gc(
            &s,
            &GcOptions {
                grace: Duration::ZERO,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.ingests, 0, "{case}");
        assert!(
            r.left_alone.iter().any(|(p, _)| *p == dir),
            "{case}: {:?}",
            r.left_alone
        );
        assert_eq!(remove_abandoned(&s).unwrap(), 0, "{case}");
        assert_eq!(names(&dir), before, "{case}: the plant was changed");
        assert_eq!(
            fs::read(outside.join("data")).unwrap(),
            b"the victim's",
            "{case}"
        );
        assert_eq!(names(&outside), vec!["data".to_owned()], "{case}");
        // An ordinary write of the digest still works.
        assert!(put(&s, &d, Some(data.len() as u64), &data), "{case}");
    }
}

/// The names under `dir` (not following a link at `dir`), and what a link there points to.
fn names(dir: &Path) -> Vec<String> {
    match fs::read_link(dir) {
        Ok(to) => vec![format!("-> {}", to.display())],
        Err(_) => {
            let mut v: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }
}

#[test]
fn gc_and_a_new_mount_keep_held_or_young_kept_ingests_and_remove_old_ones() {
    let data: Vec<Vec<u8>> = (0..3).map(|i| bytes(100_000, 30 + i)).collect();
    let d: Vec<Digest> = data
        .iter()
        .map(|b| Digest::of(Algorithm::Sha256, b))
        .collect();
    let past_keep = RESUME_KEEP + Duration::from_secs(3600);
    // Young and unheld; old and unheld; old and held by a live writer.
    let setup = |s: &Store| {
        leave_kept(s, &d[0], &data[0][..1_000]);
        let old = leave_kept(s, &d[1], &data[1][..2_000]);
        age_by(&old.join("data"), past_keep);
        let mut held = s.resume(&d[2], 100_000).unwrap();
        held.write_all(&data[2][..3_000]).unwrap();
        age_by(&kept(s, &d[2]).join("data"), past_keep);
        held
    };
    let exists = |s: &Store| d.iter().map(|d| kept(s, d).exists()).collect::<Vec<_>>();

    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    let held = setup(&s);
    let dry = gc(
        &s,
        &GcOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((dry.ingests, dry.ingest_bytes), (1, 2_000));
    assert_eq!(
        exists(&s),
        [true, true, true],
        "a dry run removed something"
    );
    let r = gc(&s, &GcOptions::default()).unwrap();
    assert_eq!((r.ingests, r.ingest_bytes), (1, 2_000));
    assert_eq!((r.partial, r.partial_bytes), (2, 4_000));
    assert!(r.left_alone.is_empty(), "{:?}", r.left_alone);
    assert_eq!(exists(&s), [true, false, true]);
    // With no grace, the young one goes too; the held one stays.
    let r = gc(
        &s,
        &GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((r.ingests, r.ingest_bytes), (1, 1_000));
    assert_eq!((r.partial, r.partial_bytes), (1, 3_000));
    assert_eq!(exists(&s), [false, false, true]);
    assert!(finish(held, &data[2], 10_000));
    assert!(ingests(&s).is_empty(), "{:?}", ingests(&s));

    // A new mount (remove_abandoned) keeps them for RESUME_KEEP.
    let t = tempfile::tempdir().unwrap();
    let s = open(t.path());
    let held = setup(&s);
    assert_eq!(remove_abandoned(&s).unwrap(), 1);
    assert_eq!(exists(&s), [true, false, true]);
    drop(held);
    // Dropped, the old one is no longer held: the next sweep takes it.
    assert_eq!(remove_abandoned(&s).unwrap(), 1);
    assert_eq!(exists(&s), [true, false, false]);
    let w = s.resume(&d[0], 100_000).unwrap();
    assert_eq!(w.written(), 1_000);
    assert!(finish(w, &data[0], 10_000));
}
