//! Where an import's blobs go: the `content::Staging` of the content it imports into (the
//! local store's is a `store::Batch`), each blob held by the import's lease before the content
//! is asked whether it has it (so a gc in another process keeps it), and what was placed
//! counted, so that a failed import can take it back. Formats and pulls write through this
//! and nothing else. A committed blob is staged (in the store: checked, not yet durable nor
//! under `blobs/`), seen through this as if stored, and made durable and visible by `finish`,
//! which the import calls before it registers anything (see `store::batch`), or by the batch
//! on its own when enough is staged.

use std::collections::HashSet;
use std::io::Read;

use crate::content::{Ingester, Lease, Provider, Staging, Writer, WHOLE};
use crate::digest::{Algorithm, Digest};
use crate::error::Result;
use crate::oci::Descriptor;

/// The blobs an import placed (they were not in the store before).
#[derive(Debug, Default)]
pub(super) struct Written {
    pub count: usize,
    pub bytes: u64,
    pub placed: HashSet<Digest>,
}

impl Written {
    fn add(&mut self, digest: &Digest, size: u64) {
        if self.placed.insert(digest.clone()) {
            self.count += 1;
            self.bytes += size;
        }
    }

    pub fn take_back(&mut self, digest: &Digest, size: u64) {
        if self.placed.remove(digest) {
            self.count -= 1;
            self.bytes -= size;
        }
    }
}

/// The store an import writes into, seen through the content interfaces.
pub struct Intake<'a> {
    batch: &'a dyn Staging,
    ingester: &'a dyn Ingester,
    provider: &'a dyn Provider,
    lease: &'a dyn Lease,
}

impl<'a> Intake<'a> {
    /// Writes into `batch` and looks through it (staged blobs, then its store), holding every
    /// blob met in `lease` (the batch's own).
    pub fn new(batch: &'a dyn Staging, lease: &'a dyn Lease) -> Intake<'a> {
        Intake {
            batch,
            ingester: batch,
            provider: batch,
            lease,
        }
    }

    /// Makes every blob committed so far durable and places it (`Batch::finish`): call it
    /// before registering anything that refers to them, or reading them from the store.
    pub fn finish(&self) -> Result<()> {
        self.batch.finish()
    }

    /// Holds `digest` for the import: call it before `has`.
    pub fn hold(&self, digest: &Digest) -> Result<()> {
        self.lease.hold(WHOLE, &[digest])
    }

    /// The size of blob `digest` in the store, if it is there.
    pub fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.provider.blob_size(digest)
    }

    pub fn has(&self, digest: &Digest) -> Result<bool> {
        Ok(self.size(digest)?.is_some())
    }

    /// A small blob of the store, read whole and verified.
    pub fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        self.provider.read_small(desc)
    }

    /// Opens blob `desc` of the store, size-checked.
    pub fn open(&self, desc: &Descriptor) -> Result<std::fs::File> {
        self.provider.open(desc)
    }

    /// Starts writing blob `digest` of `size` bytes; `commit` finishes it.
    pub fn start(&self, digest: &Digest, size: u64) -> Result<Box<dyn Writer + 'a>> {
        self.ingester.ingest(digest, Some(size))
    }

    /// Starts or takes up blob `digest` of `size` bytes in an ingest that keeps what it got
    /// if the copy fails; its `written()` bytes are there already.
    pub fn resume(&self, digest: &Digest, size: u64) -> Result<Box<dyn Writer + 'a>> {
        self.ingester.resume(digest, size)
    }

    /// Commits `w` (checking its size and digest) into the batch: placed by its next flush,
    /// unless the store has it. `digest` and `size` are what `w` must be.
    pub fn commit(&self, w: Box<dyn Writer + '_>, _digest: &Digest, _size: u64) -> Result<()> {
        w.commit()?;
        Ok(())
    }

    /// Stores `bytes` (a small blob made or kept in memory) as blob `digest`, held, unless
    /// the store has it.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        self.hold(digest)?;
        if self.has(digest)? {
            return Ok(());
        }
        let size = bytes.len() as u64;
        let mut w = self.start(digest, size)?;
        w.write_all(bytes)?;
        self.commit(w, digest, size)
    }

    /// Copies `r` into blob `desc`, checked; `what` names the source in errors.
    pub fn copy(
        &self,
        desc: &Descriptor,
        r: &mut dyn Read,
        what: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let mut w = self.start(&desc.digest, desc.size)?;
        w.copy_from(r, what, progress)?;
        self.commit(w, &desc.digest, desc.size)
    }

    /// Copies `r` into a blob named by its `alg` hash at the end (a layer of a `docker save`
    /// archive, whose name is not its digest); returns its digest and size. The blob is
    /// held as soon as it is named, not before: if the store already had it, unreferenced,
    /// a gc in that moment may remove it, and the import then fails when `register` checks
    /// the closure; it never registers a broken image. (One it stages is held by the batch
    /// before it is placed.)
    pub fn copy_unnamed(
        &self,
        alg: Algorithm,
        r: &mut dyn Read,
        what: &str,
    ) -> Result<(Digest, u64)> {
        let mut w = self.ingester.ingest_unnamed(alg)?;
        w.copy_from(r, what, &mut |_| {})?;
        let size = w.written();
        let (digest, _) = w.commit_named()?;
        self.hold(&digest)?;
        Ok((digest, size))
    }

    /// The blobs the import placed (its batch's), however it ended.
    pub(super) fn into_written(self) -> Written {
        let mut written = Written::default();
        for (digest, size) in self.batch.placed() {
            written.add(&digest, size);
        }
        written
    }
}
