//! The content interfaces (`layoutfs::content`) attacked from outside: what a `Content` other
//! than the local store (content in memory, or a provider that answers differently) makes of
//! the mount's core, and what the traits promise that their users or implementations do not
//! keep. Each test names the behaviour that should hold; the core is driven with no kernel
//! (tests/common/core.rs).

mod common;

use std::fs::{File, Metadata};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use common::core::{source_blobs, Harness};
use common::memory::Memory;
use layoutfs::content::{
    Catalog, Content, Draft, Ingester, Lease, Provider, Space, Staging, Writer,
};
use layoutfs::digest::{Algorithm, Digest};
use layoutfs::error::Result;
use layoutfs::fs::{root_ino, Fs, FsError, FsOptions};
use layoutfs::oci::{BlobSource, Descriptor};
use layoutfs::store::Store;

/// Content in memory that answers some questions its own way.
#[derive(Default)]
struct Rigged {
    inner: Memory,
    /// Says it is read-only, and refuses drafts.
    read_only: bool,
    /// Says it verified every blob before (`Provider::trusts`), keeping the default
    /// `Provider::trust` (`Trust::None`: "every blob is hashed on its first open").
    trusts_all: bool,
}

impl BlobSource for Rigged {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.inner.blob_size(digest)
    }

    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        self.inner.read_small(desc)
    }
}

impl Provider for Rigged {
    fn open(&self, desc: &Descriptor) -> Result<File> {
        self.inner.open(desc)
    }

    fn open_file(&self, digest: &Digest) -> io::Result<File> {
        self.inner.open_file(digest)
    }

    fn locate(&self, digest: &Digest) -> String {
        self.inner.locate(digest)
    }

    fn trusts(&self, _digest: &Digest, _file: &File, _meta: &Metadata) -> Result<bool> {
        Ok(self.trusts_all)
    }
}

impl Ingester for Rigged {
    fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Box<dyn Writer + '_>> {
        self.inner.ingest(expected, size)
    }

    fn ingest_unnamed(&self, alg: Algorithm) -> Result<Box<dyn Writer + '_>> {
        self.inner.ingest_unnamed(alg)
    }

    fn resume(&self, expected: &Digest, size: u64) -> Result<Box<dyn Writer + '_>> {
        self.inner.resume(expected, size)
    }
}

impl Content for Rigged {
    fn catalog(&self) -> &dyn Catalog {
        self.inner.catalog()
    }

    fn draft(&self, alg: Algorithm) -> Result<Box<dyn Draft>> {
        if self.read_only {
            return Err(layoutfs::error::Error::io(
                "rigged",
                io::Error::from_raw_os_error(libc::EROFS),
            ));
        }
        self.inner.draft(alg)
    }

    fn lease(&self) -> Result<Box<dyn Lease>> {
        self.inner.lease()
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn space(&self) -> Result<Space> {
        self.inner.space()
    }

    fn staging<'a>(&'a self, lease: &'a dyn Lease) -> Result<Box<dyn Staging + 'a>> {
        self.inner.staging(lease)
    }

    fn take_back(&self, t: &layoutfs::content::TakeBack<'_>) -> Result<Vec<(Digest, u64)>> {
        self.inner.take_back(t)
    }
}

/// The mount's core over `content`, with default options (as a caller that only has a
/// `Content` would make it).
fn over(content: Rigged) -> Harness<Rigged> {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(content);
    let as_content: Arc<dyn Content> = store.clone();
    let fs = Fs::new(as_content, FsOptions::default());
    Harness { tmp, store, fs }
}

/// One small image copied into `repo` of `h`; returns the path in the mount of its largest
/// blob (a layer).
fn one_image<C: ?Sized>(h: &Harness<C>, repo: &str) -> String {
    let src = h.layout("src", 1, 7);
    h.copy_in(&src, repo, false).unwrap();
    let (name, _) = source_blobs(&src)
        .into_iter()
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    format!("{repo}/blobs/sha256/{name}")
}

/// Problem: the `Draft` contract says nothing of what a draft must refuse, and the second
/// implementation (content in memory) panics on a write whose end overflows u64 and on a
/// truncate to a size it cannot hold, where the local store's draft fails with EFBIG /
/// EINVAL. A panic in a draft is a panic in the mount's request thread.
#[test]
fn a_draft_refuses_what_it_cannot_hold_without_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let local = Store::open(&tmp.path().join("store")).unwrap();
    let memory = Memory::new();
    let contents: [(&str, &dyn Content); 2] = [("local", &local), ("memory", &memory)];
    let mut wrong = Vec::new();
    let how = |r: &std::thread::Result<Result<()>>| match r {
        Ok(Err(_)) => None,
        Ok(Ok(())) => Some("accepted"),
        Err(_) => Some("panicked"),
    };
    for (what, c) in contents {
        let mut d = c.draft(Algorithm::Sha256).unwrap();
        let write = catch_unwind(AssertUnwindSafe(|| d.write_at(u64::MAX - 1, b"xy")));
        if let Some(how) = how(&write) {
            wrong.push(format!("{what}: a write ending past u64::MAX {how}"));
        }
        let mut d = c.draft(Algorithm::Sha256).unwrap();
        let truncate = catch_unwind(AssertUnwindSafe(|| d.truncate(u64::MAX)));
        if let Some(how) = how(&truncate) {
            wrong.push(format!("{what}: a truncate to u64::MAX {how}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
}

/// Problem: `Content::is_read_only` ("whether nothing can be written") is asked by nothing in
/// the mount's core: `Fs::new` over content that says it is read-only, with default options,
/// makes a writable mount (mkdir changes the catalog; only the first draft fails).
#[test]
fn a_mount_over_read_only_content_is_read_only() {
    let h = over(Rigged {
        read_only: true,
        ..Rigged::default()
    });
    let made = h.fs.mkdir(root_ino(), "repo");
    assert!(
        matches!(made, Err(FsError::ReadOnly)),
        "mkdir over read-only content: {made:?}; kept repositories now {:?}",
        h.store.inner.repositories().unwrap()
    );
}

/// Problem: `Trust::None` is documented as "every blob is hashed on its first open", and the
/// mount's log line (`Fs::blob_checks`) says so from `Provider::trust`, but the verifier asks
/// `Provider::trusts` whatever `trust` says: a provider keeping the default `trust` and
/// answering `trusts` has its blobs served unhashed while the log says every one is hashed.
#[test]
fn a_provider_that_trusts_nothing_has_every_blob_hashed() {
    let h = over(Rigged {
        trusts_all: true,
        ..Rigged::default()
    });
    let blob = one_image(&h, "repo");
    let before = h.fs.blobs_hashed();
    h.read_as(&blob, 1).unwrap();
    let checks = h.fs.blob_checks();
    assert!(checks.contains("every blob hashed"), "{checks}");
    assert_eq!(
        h.fs.blobs_hashed() - before,
        1,
        "the mount says \"{checks}\", and served {blob} unhashed"
    );
}

/// Problem: the verifier remembers a blob checked "for the mount's life with the file's
/// identity" (fs/verify.rs), but nothing in `Provider::open_file`'s contract says the file must
/// keep its identity while the blob is unchanged; content in memory gives a new memfd at each
/// open, so every open of a blob hashes it again (for a registry-backed provider: a download
/// and a hash per open).
#[test]
fn a_blob_opened_again_in_a_mount_over_memory_is_not_hashed_again() {
    let h = Harness::in_memory();
    let blob = one_image(&h, "repo");
    h.read_as(&blob, 1).unwrap();
    let once = h.fs.blobs_hashed();
    h.read_as(&blob, 1).unwrap();
    assert_eq!(
        h.fs.blobs_hashed(),
        once,
        "{blob} hashed again on its second open"
    );
}

/// Problem (pre-existing, reachable through the core's public API, not through the kernel,
/// whose offsets stop at i64::MAX): `Fs::write` checks `offset + len > size` unchecked, which
/// overflows (a panic in a debug build; in a release build it wraps and passes the check, and
/// only the local store's own `end_of` still refuses it; a draft without such a check gets it).
#[test]
fn a_write_whose_end_overflows_is_refused_by_the_mount_not_a_panic() {
    let h = Harness::new();
    let src = h.layout("src", 1, 3);
    h.import_dir(&src, "repo");
    let (name, _) = source_blobs(&src).into_iter().next().unwrap();
    let attr = h.walk(&format!("repo/blobs/sha256/{name}")).unwrap();
    let fh = h.fs.open(attr.ino, libc::O_WRONLY, 1).unwrap().fh;
    let written = catch_unwind(AssertUnwindSafe(|| h.fs.write(fh, u64::MAX - 1, b"xy")));
    h.fs.release(fh);
    assert!(
        matches!(written, Ok(Err(_))),
        "a write at u64::MAX - 1: {}",
        if written.is_err() {
            "panicked"
        } else {
            "accepted"
        }
    );
}

/// Problem: the mount hands a draft any offset for `index.json` (and `oci-layout`), whose
/// content is capped at 16 MiB (4 MiB) and refused only at close. The local store's draft makes
/// a sparse file; a draft that keeps its bytes in memory (content in memory, a registry-backed
/// ingester buffering an upload) is asked to hold what the offset says. The write itself
/// should be refused (EFBIG), before any draft sees it.
#[test]
fn a_write_into_index_json_past_its_cap_is_refused_at_the_write() {
    let h = Harness::local();
    h.mkdir_p("repo").unwrap();
    let (parent, name) = h.split("repo/index.json");
    let (_, opened) = h.fs.create(parent, name).unwrap();
    let at = 1u64 << 40;
    let written = h.fs.write(opened.fh, at, b"{}");
    h.fs.release(opened.fh);
    assert!(
        written.is_err(),
        "a write into index.json at {at} (its cap is {} bytes) was accepted",
        layoutfs::oci::MAX_INDEX_JSON_SIZE
    );
}

/// Problem: a failed statfs no longer names the store: it said `<root>: <error>`, and says
/// "the store's filesystem: <error>" since `Content::space` returns a bare `io::Error`.
#[test]
fn a_failed_statfs_names_the_store() {
    let h = Harness::local();
    let root = h.tmp.path().join("store");
    std::fs::rename(&root, h.tmp.path().join("moved")).unwrap();
    let e = h.fs.statfs().unwrap_err().to_string();
    assert!(
        e.contains(&root.display().to_string()),
        "statfs of a store gone from {}: {e}",
        root.display()
    );
}

/// Problem: the docs name a test file that does not exist (src/content.rs and
/// tests/common/memory.rs send the reader to tests/fs_memory.rs; the core runs over memory in
/// tests/fs_model.rs).
#[test]
fn the_content_docs_name_only_tests_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for doc in ["src/content.rs", "tests/common/memory.rs"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (i, _) in text.match_indices("tests/") {
            let rest = &text[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || "/_.".contains(c)))
                .unwrap_or(rest.len());
            let named = rest[..end].trim_end_matches('.');
            if named.ends_with(".rs") && !root.join(named).exists() {
                missing.push(format!("{doc} names {named}"));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:?}");
}

/// Problem (test support): tests/common/memory.rs serves blobs as "a sealed-size anonymous
/// file", but the memfd is made without `MFD_ALLOW_SEALING` and never sealed: it can grow,
/// shrink and be written through any descriptor the mount hands on.
#[test]
fn a_blob_file_of_content_in_memory_is_sealed() {
    use std::os::fd::AsRawFd;
    let m = Memory::new();
    let mut w = m.ingest_unnamed(Algorithm::Sha256).unwrap();
    w.write_all(b"sealed?").unwrap();
    let (d, _) = w.commit_named().unwrap();
    let f = m.open_file(&d).unwrap();
    // SAFETY: F_GET_SEALS only reads the seals of a descriptor we own.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    let wanted = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE;
    assert_eq!(
        seals & wanted,
        wanted,
        "seals {seals:#x}: the blob file can still change"
    );
}
