//! Review of the `Content` seam of imports (issue 12): what the `Staging` an import writes
//! through, the lease it holds and `Content::take_back` promise, tried against content in
//! memory (`content::Direct`) and against the store given what the trait lets a caller give.
//! Each test names a behaviour that should hold.

mod common;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::docker_archive::{docker24_shape, layer_tar, Image};
use common::gen::LayoutBuilder;
use common::memory::Memory;
use layoutfs::archive::{import, Source};
use layoutfs::content::{
    Catalog, Content, Direct, Draft, Ingester, Lease, Provider, Space, Staging, Writer,
};
use layoutfs::digest::{Algorithm, Digest};
use layoutfs::error::Result;
use layoutfs::oci::{BlobSource, Descriptor};
use layoutfs::store::gc::{self, GcOptions};
use layoutfs::store::Store;

/// Damages the blob of `size` bytes in layout `dir` (its first byte flipped).
fn flip_first_byte_of_blob_sized(dir: &std::path::Path, size: u64) {
    let layer = fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| fs::metadata(p).unwrap().len() == size)
        .unwrap();
    let mut bytes = fs::read(&layer).unwrap();
    bytes[0] ^= 1;
    fs::write(&layer, bytes).unwrap();
}

/// The import module promises "A failed import takes back the blobs it placed" (and
/// `import_named`: "the store is as it was"). Content whose `take_back` is the default
/// removes nothing, so the config, the sound layer and the manifest the failed import
/// placed stay in it for good (content in memory has no gc that would ever take them).
#[test]
fn a_failed_import_into_content_without_take_back_leaves_it_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = LayoutBuilder::new(&tmp.path().join("bad"));
    b.small_image("1.0", 2, 10_000, 3);
    // One of the two layers damaged: the other, the config and the manifest are sound.
    flip_first_byte_of_blob_sized(&b.dir, 10_000);
    let memory = Memory::new();
    let err = import(&memory, &Source::Dir(b.dir.clone()), Some("bad")).unwrap_err();
    assert!(
        matches!(err, layoutfs::Error::DigestMismatch { .. }),
        "{err}"
    );
    assert!(memory.list().unwrap().is_empty(), "nothing registered");
    assert_eq!(
        memory.digests(),
        Vec::<Digest>::new(),
        "the failed import left the blobs it placed"
    );
}

// ---------------------------------------------------------------------------------------------
// Content in memory that watches what an import holds and what becomes visible

type Set = Arc<Mutex<HashSet<Digest>>>;

/// `Memory`, whose leases note every digest they hold, and whose writers note each blob made
/// visible by their commit while no lease held it (a gc of such content, between that commit
/// and the hold, could remove it). Its staging is `Direct`, as for any content with no batch.
struct Watched {
    inner: Memory,
    held: Set,
    unheld_when_placed: Set,
}

struct WatchedLease {
    inner: Box<dyn Lease>,
    held: Set,
}

impl Lease for WatchedLease {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn hold(&self, holder: &str, digests: &[&Digest]) -> Result<()> {
        self.held
            .lock()
            .unwrap()
            .extend(digests.iter().map(|d| (*d).clone()));
        self.inner.hold(holder, digests)
    }
    fn release(&self, holder: &str) -> Result<()> {
        self.inner.release(holder)
    }
    fn release_prefix(&self, prefix: &str) -> Result<()> {
        self.inner.release_prefix(prefix)
    }
}

struct WatchedWriter<'w> {
    inner: Box<dyn Writer + 'w>,
    held: Set,
    unheld_when_placed: Set,
}

impl Writer for WatchedWriter<'_> {
    fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        self.inner.write_all(buf)
    }
    fn written(&self) -> u64 {
        self.inner.written()
    }
    fn commit_named(self: Box<Self>) -> Result<(Digest, bool)> {
        let (digest, placed) = self.inner.commit_named()?;
        if placed && !self.held.lock().unwrap().contains(&digest) {
            self.unheld_when_placed
                .lock()
                .unwrap()
                .insert(digest.clone());
        }
        Ok((digest, placed))
    }
}

impl Watched {
    fn watch<'w>(&self, inner: Box<dyn Writer + 'w>) -> Box<dyn Writer + 'w> {
        Box::new(WatchedWriter {
            inner,
            held: self.held.clone(),
            unheld_when_placed: self.unheld_when_placed.clone(),
        })
    }
}

impl BlobSource for Watched {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.inner.blob_size(digest)
    }
    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        self.inner.read_small(desc)
    }
}

impl Provider for Watched {
    fn open(&self, desc: &Descriptor) -> Result<File> {
        self.inner.open(desc)
    }
    fn open_file(&self, digest: &Digest) -> io::Result<File> {
        self.inner.open_file(digest)
    }
    fn locate(&self, digest: &Digest) -> String {
        self.inner.locate(digest)
    }
}

impl Ingester for Watched {
    fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Box<dyn Writer + '_>> {
        Ok(self.watch(self.inner.ingest(expected, size)?))
    }
    fn ingest_unnamed(&self, alg: Algorithm) -> Result<Box<dyn Writer + '_>> {
        Ok(self.watch(self.inner.ingest_unnamed(alg)?))
    }
    fn resume(&self, expected: &Digest, size: u64) -> Result<Box<dyn Writer + '_>> {
        Ok(self.watch(self.inner.resume(expected, size)?))
    }
}

impl Content for Watched {
    fn catalog(&self) -> &dyn Catalog {
        self.inner.catalog()
    }
    fn draft(&self, alg: Algorithm) -> Result<Box<dyn Draft>> {
        self.inner.draft(alg)
    }
    fn lease(&self) -> Result<Box<dyn Lease>> {
        Ok(Box::new(WatchedLease {
            inner: self.inner.lease()?,
            held: self.held.clone(),
        }))
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn space(&self) -> Result<Space> {
        self.inner.space()
    }
    fn staging<'a>(&'a self, lease: &'a dyn Lease) -> Result<Box<dyn Staging + 'a>> {
        Ok(Box::new(Direct::new(self, lease)))
    }
    fn take_back(&self, t: &layoutfs::content::TakeBack<'_>) -> Result<Vec<(Digest, u64)>> {
        self.inner.take_back(t)
    }
}

/// The import holds every blob before the content is asked for it, and the store's batch
/// holds every staged blob in the import's lease before its flush makes it visible
/// (`store::batch`): gc never sees an import's blob unheld. `Direct` is handed no lease and
/// holds nothing, and `Intake::copy_unnamed` (a large file of a docker archive) holds the
/// blob only after its commit: through `Direct` it is visible, unheld, in between.
#[test]
fn an_import_through_direct_holds_each_blob_before_it_is_visible() {
    let tmp = tempfile::tempdir().unwrap();
    // A layer over 1 MiB: copied into an ingest named at the end, not kept in memory.
    let big = vec![7u8; (1 << 20) + 4096];
    let layer = layer_tar(&[("big", &big)]);
    let image = Image::new(vec![layer], "/bin/hi", &["x:1"]);
    let archive = tmp.path().join("docker.tar");
    docker24_shape(&[image]).write(&archive);
    let content = Watched {
        inner: Memory::new(),
        held: Set::default(),
        unheld_when_placed: Set::default(),
    };
    let imported = import(&content, &Source::Archive(archive), Some("x")).unwrap();
    assert_eq!(imported.names.len(), 1);
    let unheld = content.unheld_when_placed.lock().unwrap().clone();
    assert!(
        unheld.is_empty(),
        "made visible before the import's lease held them: {unheld:?}"
    );
}

/// `Content::staging` takes any `&dyn Lease`, and `Store::batch` now too: the store's batch
/// holds its staged blobs in whatever lease it is given, and a lease of other content is
/// nothing to the store's gc. A blob the batch placed is then removed by a gc before the
/// import could register it (the import fails, or, with the blob removed after the closure
/// check, registers a broken image). The store should refuse a lease that is not its own.
#[test]
fn a_store_staging_keeps_its_blobs_from_gc_whatever_lease_it_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let memory = Memory::new();
    let foreign = Content::lease(&memory).unwrap();
    // Refused, naming the lease: the store's gc could not honour what it holds.
    let Err(e) = Content::staging(&store, &*foreign) else {
        panic!("the store took a staging held by a lease its gc ignores");
    };
    assert!(e.to_string().contains(foreign.id()), "{e}");
}

/// With the store's own lease, a staged blob is kept by a gc before anything registers it.
#[test]
fn a_store_staging_with_its_own_lease_keeps_its_blobs_from_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let own = Content::lease(&store).unwrap();
    let bytes = b"a blob staged through the store's own lease";
    let d = Digest::of(Algorithm::Sha256, bytes);
    let staging = Content::staging(&store, &*own).unwrap();
    own.hold("", &[&d]).unwrap();
    let mut w = staging.ingest(&d, Some(bytes.len() as u64)).unwrap();
    w.write_all(bytes).unwrap();
    assert!(w.commit().unwrap());
    staging.finish().unwrap();
    gc::gc(
        &store,
        &GcOptions {
            dry_run: false,
            grace: Duration::ZERO,
        },
    )
    .unwrap();
    assert_eq!(
        BlobSource::blob_size(&store, &d).unwrap(),
        Some(bytes.len() as u64)
    );
}
