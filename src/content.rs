//! The roles a store of content plays for everything else, in containerd's vocabulary: a
//! `Provider` gives blobs (their size, a size-checked `File` so that passthrough and
//! `copy_file_range` keep working, small blobs read whole and verified), an `Ingester` takes
//! new blobs (expecting a digest, or naming the content by its hash at commit, or resuming
//! what an earlier writer of a digest left), and a
//! `Catalog` keeps the image records (name -> target descriptor, with a change counter).
//!
//! The mount, import and the registry commands ask for a little more, and take it as one
//! `Content`: blobs written at any offset and named at commit (`Draft`, the bytes of a file
//! copied in), a `Lease` that keeps what it holds from gc, where one import writes
//! (`Staging`) and how it takes back what it placed, what the provider verified before
//! (`Provider::trusts`), where blobs were seen on registries, and the space left. The local
//! store implements all of them (`Store`, its `Records`, its `Lease`, its `Batch`); the
//! mount's core, import, export and the registry commands take the interfaces, and
//! tests/common/memory.rs is a second implementation that the conformance suite
//! (tests/store.rs), the write side's model (tests/fs_model.rs) and an import and export
//! (tests/content.rs) run against. A registry-backed provider or a read-only catalog plugs
//! in here.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::time::SystemTime;

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::oci::{BlobSource, Descriptor};
use crate::reference::Reference;
pub use crate::store::Image;
use crate::store::{BlobWriter, Records, Store, COPY_CHUNK};

/// What a provider can tell of a stored blob without reading it (containerd's `Info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    pub size: u64,
    /// 512-byte blocks it takes on the disk.
    pub blocks: u64,
    /// When it was stored.
    pub modified: SystemTime,
}

/// How a provider's earlier checks let a reader skip hashing a blob (`Provider::trust`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Nothing is recorded: every blob is hashed on its first open.
    None,
    /// A blob verified at commit is trusted while its file is unchanged.
    Identity,
    /// Besides, sealed blobs are checked by the kernel on every read (fs-verity).
    Verity,
}

/// Where blobs come from. `BlobSource` gives `blob_size` and `read_small` (whole, verified).
pub trait Provider: BlobSource + Send + Sync {
    /// Opens the blob `desc` names and checks its size: stored sizes are never trusted.
    fn open(&self, desc: &Descriptor) -> Result<File>;
    /// Opens the file of blob `digest`, never through a link, for a caller that checks it.
    /// While the blob is unchanged its file keeps its identity (device, inode, size, times),
    /// and a changed one gets another: a reader (the mount's verifier) remembers what it
    /// checked by that identity, and hashes again only what changed.
    fn open_file(&self, digest: &Digest) -> io::Result<File>;
    /// Where blob `digest` lives, for messages.
    fn locate(&self, digest: &Digest) -> String;

    /// Size, blocks and time of blob `digest`; None when it is not there. By default from
    /// `blob_size` alone.
    fn info(&self, digest: &Digest) -> Result<Option<Info>> {
        Ok(self.blob_size(digest)?.map(|size| Info {
            size,
            blocks: size.div_ceil(512),
            modified: SystemTime::UNIX_EPOCH,
        }))
    }

    /// What the provider's records let a reader trust (by default nothing). With
    /// `Trust::None`, `trusts` is not asked.
    fn trust(&self) -> Trust {
        Trust::None
    }

    /// Whether the provider verified blob `digest` before and `file` (opened by `open_file`,
    /// whose metadata is `meta`) is still what it verified: then a reader need not hash it.
    /// By default no.
    fn trusts(&self, _digest: &Digest, _file: &File, _meta: &Metadata) -> Result<bool> {
        Ok(false)
    }

    /// Tells the provider that a reader hashed `file` (metadata `meta`) and found it to be
    /// blob `digest`, for the next reader to trust. By default forgotten.
    fn note_verified(&self, _digest: &Digest, _meta: &Metadata) -> Result<()> {
        Ok(())
    }
}

/// One blob being written: hashed as it goes, checked and made visible at commit. A writer
/// dropped without a commit leaves nothing behind, but one from `Ingester::resume`, which
/// keeps its bytes for the next.
pub trait Writer: Send {
    /// Appends bytes; writing past an expected size fails at once.
    fn write_all(&mut self, buf: &[u8]) -> Result<()>;
    /// Bytes written so far, counting those a resumed writer started with.
    fn written(&self) -> u64;
    /// Checks size and digest and makes the blob visible. Ok(false): it was already there.
    /// A writer that expects no digest commits under the digest its content hashes to.
    fn commit(self: Box<Self>) -> Result<bool> {
        self.commit_named().map(|(_, placed)| placed)
    }
    /// As `commit`, and returns the digest the content hashes to.
    fn commit_named(self: Box<Self>) -> Result<(Digest, bool)>;

    /// Copies everything `r` yields; `what` names the source in errors; `progress` is told of
    /// each chunk.
    fn copy_from(
        &mut self,
        r: &mut dyn Read,
        what: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Stream {
                        what: what.to_owned(),
                        source: e,
                    })
                }
            };
            self.write_all(&buf[..n])?;
            progress(n as u64);
        }
    }
}

/// A blob being drafted: a file written at any offset, read back, truncated, and committed as
/// the blob it is verified against at the end (the bytes of a file copied into the mount,
/// whose name says its digest, or says nothing). Its bytes are the ingester's, not the
/// caller's memory. Dropped without a commit it leaves nothing behind.
///
/// What every draft keeps (tests/store.rs `content_contract`):
/// - writes come in any order and may rewrite earlier bytes; a hole, and what a truncate
///   that grows adds, read as zeros; a read past the end is short;
/// - a write whose end, or a truncate whose size, it cannot hold (past 2^64, past what it
///   may keep) is refused with an error, never a panic, and never by allocating what the
///   offset asks;
/// - `commit` verifies size and digest whatever was hashed before; it fails leaving nothing
///   visible, or makes the blob durable and visible (a failed writeback is its error); two
///   drafts committing one digest: one places it, the other gets Ok(false).
pub trait Draft: Send {
    /// Writes `buf` at `offset`. After an error the draft is not to be committed.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()>;
    /// Reads up to `size` bytes at `offset` into `buf` (cleared first).
    fn read_at(&mut self, offset: u64, size: u32, buf: &mut Vec<u8>) -> Result<()>;
    fn truncate(&mut self, size: u64) -> Result<()>;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Waits until what was written is durable; a failed writeback is reported here.
    fn sync(&mut self) -> Result<()>;
    /// Lets go of what the draft holds open (descriptors) until its next use.
    fn park(&mut self);
    /// Whether it holds nothing open now.
    fn is_parked(&self) -> bool;
    /// The digest of the content with `alg`.
    fn digest(&mut self, alg: Algorithm) -> Result<Digest>;
    /// Checks the content against blob `expected` (and `size` bytes, when given), leaving the
    /// draft as it is.
    fn verify(&mut self, expected: &Digest, size: Option<u64>) -> Result<()>;
    /// Verifies the content as blob `expected` (and `size` bytes, when given) and makes it
    /// visible. Ok(false): it was there already. The draft is spent either way.
    fn commit(self: Box<Self>, expected: &Digest, size: Option<u64>) -> Result<bool>;
    /// Drops the draft but may leave its bytes for the ingester to clear later, as a process
    /// that died would (an exit that does not wait for the disk).
    fn abandon(self: Box<Self>);
}

/// Where blobs go.
pub trait Ingester: Send + Sync {
    /// A writer of a blob that must hash to `expected` (and be `size` bytes, if known).
    fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Box<dyn Writer + '_>>;
    /// A writer of a blob whose digest is known only at the end: it is hashed with `alg` and
    /// named by that hash at commit (`Writer::commit_named`).
    fn ingest_unnamed(&self, alg: Algorithm) -> Result<Box<dyn Writer + '_>>;
    /// A writer of blob `expected` (`size` bytes) whose bytes outlive it: dropped without a
    /// commit, or its process killed, it leaves them under a name made from the digest, and the
    /// next `resume` of the digest (in this process or another, once no live writer holds
    /// them) continues from them. `written()` says how many bytes it starts with (re-hashed
    /// when it opens, so the commit still checks the whole); the caller sends only the rest,
    /// from that offset. Kept bytes longer than `size` are dropped (it starts at 0); a commit
    /// that finds the digest wrong drops them too, so the try after starts at 0. While a live
    /// writer holds them: an ordinary writer starting at 0. An ingester may always start at 0.
    fn resume(&self, expected: &Digest, size: u64) -> Result<Box<dyn Writer + '_>>;
}

/// The holder of what a lease holds for the whole of its life.
pub const WHOLE: &str = "";

/// A lease: the blobs it holds stay (a gc does not remove them) until their holder is
/// released or the lease dropped. Hold a digest before asking whether the blob is there.
pub trait Lease: Send + Sync {
    /// Names the lease (a gc told to ignore one lease is told this).
    fn id(&self) -> &str;
    /// Holds `digests` under `holder` (holding one again is harmless).
    fn hold(&self, holder: &str, digests: &[&Digest]) -> Result<()>;
    /// Releases what `holder` holds.
    fn release(&self, holder: &str) -> Result<()>;
    /// Releases what every holder whose name starts with `prefix` holds.
    fn release_prefix(&self, prefix: &str) -> Result<()>;
}

/// Blobs seen through a lease: every blob looked up is held (under `holder`) before the
/// source is asked whether it has it, so a walk through it leaves everything it found held.
pub struct Held<'a> {
    pub source: &'a dyn BlobSource,
    pub lease: &'a dyn Lease,
    pub holder: &'a str,
}

impl BlobSource for Held<'_> {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.lease.hold(self.holder, &[digest])?;
        self.source.blob_size(digest)
    }

    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        self.source.read_small(desc)
    }
}

/// Where one import writes its blobs: they are checked as they arrive and seen by its
/// `Provider` as stored, and become durable and visible to others at `finish` at the latest,
/// which the import calls before it registers anything that refers to them.
pub trait Staging: Provider + Ingester {
    /// Makes every blob committed so far durable and visible.
    fn finish(&self) -> Result<()>;
    /// The blobs placed through this staging that the content did not have before, with
    /// their sizes (what a failed import takes back).
    fn placed(&self) -> Vec<(Digest, u64)>;
}

/// The staging of a content that has none of its own: every commit goes straight into it,
/// visible at once (as durable as the content's own commits); `finish` has nothing to do.
/// Each blob is held in the import's lease before its commit makes it visible: a writer that
/// expects a digest holds that one, and a writer that names its content at the end hashes it
/// as it passes, to hold the digest before the commit.
pub struct Direct<'a, C: Provider + Ingester + ?Sized> {
    content: &'a C,
    lease: &'a dyn Lease,
    placed: parking_lot::Mutex<Vec<(Digest, u64)>>,
}

impl<'a, C: Provider + Ingester + ?Sized> Direct<'a, C> {
    pub fn new(content: &'a C, lease: &'a dyn Lease) -> Direct<'a, C> {
        Direct {
            content,
            lease,
            placed: parking_lot::Mutex::default(),
        }
    }

    fn recording<'w>(&'w self, inner: Box<dyn Writer + 'w>, name: Naming) -> Box<dyn Writer + 'w> {
        Box::new(Recording {
            inner,
            name,
            lease: self.lease,
            placed: &self.placed,
        })
    }
}

/// What a `Direct` writer's blob will be called.
enum Naming {
    /// The digest it must have.
    Expected(Digest),
    /// Its hash, taken as the bytes pass.
    Hashing(Box<crate::digest::Hasher>),
}

/// A writer of a `Direct` staging: its blob is held before the commit, and noted if placed.
struct Recording<'w> {
    inner: Box<dyn Writer + 'w>,
    name: Naming,
    lease: &'w dyn Lease,
    placed: &'w parking_lot::Mutex<Vec<(Digest, u64)>>,
}

impl Writer for Recording<'_> {
    fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        self.inner.write_all(buf)?;
        if let Naming::Hashing(h) = &mut self.name {
            h.update(buf);
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.inner.written()
    }

    fn commit_named(self: Box<Self>) -> Result<(Digest, bool)> {
        let size = self.inner.written();
        let digest = match self.name {
            Naming::Expected(d) => d,
            Naming::Hashing(h) => h.finish(),
        };
        self.lease.hold(WHOLE, &[&digest])?;
        let (found, placed) = self.inner.commit_named()?;
        if placed {
            self.placed.lock().push((found.clone(), size));
        }
        Ok((found, placed))
    }
}

impl<C: Provider + Ingester + ?Sized> BlobSource for Direct<'_, C> {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.content.blob_size(digest)
    }

    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        self.content.read_small(desc)
    }
}

impl<C: Provider + Ingester + ?Sized> Provider for Direct<'_, C> {
    fn open(&self, desc: &Descriptor) -> Result<File> {
        self.content.open(desc)
    }

    fn open_file(&self, digest: &Digest) -> io::Result<File> {
        self.content.open_file(digest)
    }

    fn locate(&self, digest: &Digest) -> String {
        self.content.locate(digest)
    }

    fn info(&self, digest: &Digest) -> Result<Option<Info>> {
        self.content.info(digest)
    }

    fn trust(&self) -> Trust {
        self.content.trust()
    }

    fn trusts(&self, digest: &Digest, file: &File, meta: &Metadata) -> Result<bool> {
        self.content.trusts(digest, file, meta)
    }

    fn note_verified(&self, digest: &Digest, meta: &Metadata) -> Result<()> {
        self.content.note_verified(digest, meta)
    }
}

impl<C: Provider + Ingester + ?Sized> Ingester for Direct<'_, C> {
    fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Box<dyn Writer + '_>> {
        let inner = self.content.ingest(expected, size)?;
        Ok(self.recording(inner, Naming::Expected(expected.clone())))
    }

    fn ingest_unnamed(&self, alg: Algorithm) -> Result<Box<dyn Writer + '_>> {
        let inner = self.content.ingest_unnamed(alg)?;
        Ok(self.recording(inner, Naming::Hashing(Box::new(alg.hasher()))))
    }

    fn resume(&self, expected: &Digest, size: u64) -> Result<Box<dyn Writer + '_>> {
        let inner = self.content.resume(expected, size)?;
        Ok(self.recording(inner, Naming::Expected(expected.clone())))
    }
}

impl<C: Provider + Ingester + ?Sized> Staging for Direct<'_, C> {
    fn finish(&self) -> Result<()> {
        Ok(())
    }

    fn placed(&self) -> Vec<(Digest, u64)> {
        self.placed.lock().clone()
    }
}

/// What an import takes back (`Content::take_back`).
pub struct TakeBack<'a> {
    /// Blobs the import placed: the content did not have them before it.
    pub placed: &'a std::collections::HashSet<Digest>,
    /// The import's own lease (`Lease::id`), whose holds do not count here.
    pub own: &'a str,
    /// When the import began (`store::now_ms`).
    pub since_ms: i64,
    /// Keep a placed referrer (a manifest with a `subject`) whose subject the content has, as
    /// a successful import does for the signatures an archive carries; gc judges it later.
    pub keep_referrers: bool,
}

/// Room left where the content is kept (statfs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Everything a mount asks of a store: its blobs, new ones (`Draft`s), its records, leases,
/// and room. What the mount's core (`fs::Fs`) takes.
pub trait Content: Provider + Ingester {
    /// The image records.
    fn catalog(&self) -> &dyn Catalog;
    /// A new, empty draft hashed with `alg` as it is written in order. It must not borrow
    /// the content: a mount keeps it across requests.
    fn draft(&self, alg: Algorithm) -> Result<Box<dyn Draft>>;
    /// A new lease, released when dropped.
    fn lease(&self) -> Result<Box<dyn Lease>>;
    /// Whether nothing can be written (every write then fails).
    fn is_read_only(&self) -> bool;
    /// Room left where blobs are kept (an error names where).
    fn space(&self) -> Result<Space>;
    /// Where an import holding `lease` (one of this content's, from `lease`) writes its
    /// blobs: each is held in the lease before it is visible to others.
    fn staging<'a>(&'a self, lease: &'a dyn Lease) -> Result<Box<dyn Staging + 'a>>;
    /// Removes those of `t.placed` that nothing needs (no image, no other lease): how an
    /// import takes back the blobs it placed and no image of it reaches, or all of them when
    /// it failed, so that a failed import leaves the content as it was. Returns what was
    /// removed.
    fn take_back(&self, t: &TakeBack<'_>) -> Result<Vec<(Digest, u64)>>;
    /// Notes that `digests` were seen in `repository` of `registry` (pulled from or pushed
    /// there), for a later push to mount them from there (containerd keeps these as the
    /// `containerd.io/distribution.source` labels of its content). By default forgotten.
    fn note_sources(&self, _registry: &str, _repository: &str, _digests: &[Digest]) -> Result<()> {
        Ok(())
    }
    /// The repositories of `registry` where blob `digest` was seen, the latest first.
    fn sources(&self, _digest: &Digest, _registry: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// One repository of a catalog as a directory listing needs it: its name, how many images,
/// and the latest update (milliseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub repository: String,
    pub images: usize,
    pub updated: i64,
}

/// Groups sorted `images` into the summaries of their repositories.
pub fn summarize(images: &[Image]) -> Vec<Summary> {
    let mut by_repo: std::collections::BTreeMap<&str, (usize, i64)> = Default::default();
    for i in images {
        let e = by_repo.entry(i.name.repository()).or_insert((0, i64::MIN));
        e.0 += 1;
        e.1 = e.1.max(i.updated);
    }
    by_repo
        .into_iter()
        .map(|(repository, (images, updated))| Summary {
            repository: repository.to_owned(),
            images,
            updated,
        })
        .collect()
}

/// One change of the records, made in one transaction: images removed then registered, and
/// repositories forgotten then kept (a name in both ends kept; see `Catalog::repositories`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Change<'a> {
    /// Images removed (names that are not there are ignored).
    pub remove: &'a [Reference],
    /// Images registered or re-pointed.
    pub put: &'a [(Reference, Descriptor)],
    /// Repositories no longer kept (names that are not kept are ignored).
    pub forget: &'a [String],
    /// Repositories kept from now on, with images or without (names checked).
    pub keep: &'a [String],
}

/// The image records, and the repositories kept with no image required.
pub trait Catalog: Send + Sync {
    /// Every image, sorted by name.
    fn list(&self) -> Result<Vec<Image>>;
    /// The images of one repository, sorted by name.
    fn of_repository(&self, repository: &str) -> Result<Vec<Image>>;
    fn get(&self, name: &Reference) -> Result<Option<Image>>;
    /// The repositories kept whether they have images or not (a directory made in the mount,
    /// an `index.json` written there that lists nothing), sorted. A repository with images
    /// exists whether it is kept or not; a kept one exists with none.
    fn repositories(&self) -> Result<Vec<String>>;
    /// A number that changes whenever the records change, through this catalog or any other
    /// handle on the same records (another process too).
    fn version(&self) -> Result<i64>;
    /// Makes `change`, all or nothing.
    fn apply(&self, change: &Change) -> Result<()>;
    /// Each repository with images, by name (by default from `list`; a large catalog answers
    /// without reading its records whole).
    fn summaries(&self) -> Result<Vec<Summary>> {
        Ok(summarize(&self.list()?))
    }
    /// In one transaction: removes `remove` and registers `put`.
    fn update(&self, put: &[(Reference, Descriptor)], remove: &[Reference]) -> Result<()> {
        self.apply(&Change {
            put,
            remove,
            ..Change::default()
        })
    }
}

impl Provider for Store {
    fn open(&self, desc: &Descriptor) -> Result<File> {
        self.open_blob(desc)
    }

    fn open_file(&self, digest: &Digest) -> io::Result<File> {
        self.open_blob_file(digest)
    }

    fn locate(&self, digest: &Digest) -> String {
        self.blob_path(digest).display().to_string()
    }

    fn info(&self, digest: &Digest) -> Result<Option<Info>> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.blob_metadata(digest)?.map(|m| Info {
            size: m.size(),
            blocks: m.blocks(),
            modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }))
    }

    fn trust(&self) -> Trust {
        match self.verified().sealing() {
            crate::store::verified::Sealing::Verity => Trust::Verity,
            crate::store::verified::Sealing::Identity => Trust::Identity,
        }
    }

    fn trusts(&self, digest: &Digest, file: &File, meta: &Metadata) -> Result<bool> {
        self.verified().trusts(digest, file, meta)
    }

    /// Recorded (not on a read-only store, whose records cannot change).
    fn note_verified(&self, digest: &Digest, meta: &Metadata) -> Result<()> {
        if self.is_read_only() {
            return Ok(());
        }
        let identity = crate::store::verified::Identity::of(meta);
        Store::verified(self).record(self.root(), digest, identity)
    }
}

impl Content for Store {
    fn catalog(&self) -> &dyn Catalog {
        self.records()
    }

    /// A writer of the store (`BlobWriter`) hashing what large writes append on a thread of
    /// its own (`hash_behind`).
    fn draft(&self, alg: Algorithm) -> Result<Box<dyn Draft>> {
        Ok(Box::new(self.ingest_unnamed(alg)?.hash_behind()))
    }

    fn lease(&self) -> Result<Box<dyn Lease>> {
        Ok(Box::new(Store::lease(self)?))
    }

    fn is_read_only(&self) -> bool {
        Store::is_read_only(self)
    }

    fn space(&self) -> Result<Space> {
        crate::store::space(self.root()).map_err(|e| Error::io(self.root(), e))
    }

    /// A `store::Batch`: staged in one ingest directory, placed with one syncfs. The lease
    /// must be one of this store's (`Content::lease`): gc honours no other.
    fn staging<'a>(&'a self, lease: &'a dyn Lease) -> Result<Box<dyn Staging + 'a>> {
        if !self.knows_lease(lease.id())? {
            return Err(Error::Invalid(format!(
                "lease {}: not a lease of the store at {} (its gc would not keep what it holds)",
                lease.id(),
                self.root().display()
            )));
        }
        Ok(Box::new(self.batch(Some(lease))?))
    }

    /// A gc of the blobs `t` names (`store::gc::remove_unneeded`).
    fn take_back(&self, t: &TakeBack<'_>) -> Result<Vec<(Digest, u64)>> {
        Ok(crate::store::gc::remove_unneeded(self, t)?.blobs)
    }

    /// The records' `origins` table (gc deletes a removed blob's rows).
    fn note_sources(&self, registry: &str, repository: &str, digests: &[Digest]) -> Result<()> {
        self.records().note_origins(registry, repository, digests)
    }

    fn sources(&self, digest: &Digest, registry: &str) -> Result<Vec<String>> {
        self.records().origins(digest, registry)
    }
}

impl Lease for crate::store::Lease {
    fn id(&self) -> &str {
        crate::store::Lease::id(self)
    }

    fn hold(&self, holder: &str, digests: &[&Digest]) -> Result<()> {
        crate::store::Lease::hold(self, holder, digests.iter().copied())
    }

    fn release(&self, holder: &str) -> Result<()> {
        crate::store::Lease::release(self, holder)
    }

    fn release_prefix(&self, prefix: &str) -> Result<()> {
        crate::store::Lease::release_prefix(self, prefix)
    }
}

impl Writer for BlobWriter {
    fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        BlobWriter::write_all(self, buf)
    }

    fn written(&self) -> u64 {
        BlobWriter::written(self)
    }

    fn commit_named(self: Box<Self>) -> Result<(Digest, bool)> {
        BlobWriter::commit_named(*self)
    }
}

impl Ingester for Store {
    fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(Store::ingest(self, expected, size)?))
    }

    fn ingest_unnamed(&self, alg: Algorithm) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(Store::ingest_unnamed(self, alg)?))
    }

    fn resume(&self, expected: &Digest, size: u64) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(Store::resume(self, expected, size)?))
    }
}

impl Catalog for Records {
    fn list(&self) -> Result<Vec<Image>> {
        Records::list(self)
    }

    fn of_repository(&self, repository: &str) -> Result<Vec<Image>> {
        Records::of_repository(self, repository)
    }

    fn get(&self, name: &Reference) -> Result<Option<Image>> {
        Records::get(self, name)
    }

    fn repositories(&self) -> Result<Vec<String>> {
        Records::repositories(self)
    }

    fn version(&self) -> Result<i64> {
        Records::version(self)
    }

    fn apply(&self, change: &Change) -> Result<()> {
        Records::apply(self, change)
    }

    /// One grouped query: no descriptor parsed.
    fn summaries(&self) -> Result<Vec<Summary>> {
        Records::repository_summaries(self)
    }
}
