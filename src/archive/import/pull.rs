//! Pulling from a source of blobs by descriptor (a layout directory read as one, a registry):
//! the closure of every listed image is walked from the index, each index and manifest
//! copied in (verified) as it is met so its children are read from the verified copy, then
//! the remaining blobs the store lacks are copied several at once, largest first. A source
//! that can fail midway (a network) is resumable: its copies go into ingests that keep what
//! they got, and a copy cut off asks the source for the rest from where it stopped.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{self, BlobSource, Descriptor, ImageIndex, OnMissing};
use crate::progress::Progress;

use super::intake::Intake;

/// Blobs fetched by descriptor.
pub trait Blobs: Sync {
    /// The size of blob `desc`, None when the source does not have it (or leaves it out).
    fn size(&self, desc: &Descriptor) -> Result<Option<u64>>;
    /// Opens blob `desc` from byte `offset` on (`Error::MissingBlob` when the source does not
    /// have it), with what errors call it.
    fn open(&self, desc: &Descriptor, offset: u64) -> Result<(Box<dyn Read + Send + '_>, String)>;
    /// Whether a copy cut off midway is kept for the next try (a network source).
    fn resumable(&self) -> bool {
        false
    }
    /// What the progress bar calls the copy.
    fn activity(&self) -> &'static str {
        "importing"
    }
    /// How many blobs are copied at once.
    fn parallelism(&self) -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Brings the closure of every image `index` lists into the store through `intake`;
/// `on_missing` says what a blob the source does not have means.
pub fn pull(
    blobs: &dyn Blobs,
    index: &ImageIndex,
    intake: &Intake<'_>,
    on_missing: OnMissing,
) -> Result<()> {
    // Walk the closure, copying manifests and indexes in as they are met (their children are
    // read from the verified copy) and collecting the other blobs the store lacks.
    let view = Pulling { blobs, intake };
    let mut wanted: BTreeMap<Digest, Descriptor> = BTreeMap::new();
    let mut walked = HashSet::new();
    for d in &index.manifests {
        if !walked.insert((&d.digest, &d.media_type)) {
            continue;
        }
        for (digest, desc) in oci::closure(&view, d, on_missing)? {
            if !intake.has(&digest)? {
                wanted.insert(digest, desc);
            }
        }
    }
    // Sizes are the source's word: a sum that overflows is a sum of lies, shown as such.
    let total = wanted.values().fold(0u64, |t, d| t.saturating_add(d.size));
    let progress = Progress::bytes(blobs.activity(), Some(total));
    let mut jobs: Vec<Descriptor> = wanted.into_values().collect();
    jobs.sort_by_key(|d| std::cmp::Reverse(d.size));
    parallel_copy(blobs, intake, jobs, &progress)?;
    progress.finish();
    Ok(())
}

/// Copies blobs into the store on all cores, in the order given.
fn parallel_copy(
    blobs: &dyn Blobs,
    intake: &Intake<'_>,
    jobs: Vec<Descriptor>,
    progress: &Progress,
) -> Result<()> {
    let workers = blobs.parallelism().clamp(1, jobs.len().max(1));
    let queue = Mutex::new(jobs.into_iter());
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let Some(desc) = queue.lock().next() else {
                    return;
                };
                if let Err(e) = copy_one(blobs, intake, &desc, progress) {
                    failed.store(true, Ordering::Relaxed);
                    first_error.lock().get_or_insert(e);
                    return;
                }
            });
        }
    });
    match first_error.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copies one blob into the store, verified against `desc`.
fn copy_one(
    blobs: &dyn Blobs,
    intake: &Intake<'_>,
    desc: &Descriptor,
    progress: &Progress,
) -> Result<()> {
    if !blobs.resumable() {
        let (mut r, what) = blobs.open(desc, 0)?;
        return intake.copy(desc, &mut r, &what, &mut |n| progress.add(n));
    }
    match copy_resuming(blobs, intake, desc, progress)? {
        Ok(()) => Ok(()),
        // The bytes kept from an earlier try were wrong (a registry that lied then, a torn
        // write): the commit dropped them; once more from byte 0 before blaming this source.
        Err(m) if m.resumed_from > 0 => {
            tracing::info!(
                "{}: the {} bytes kept from an earlier try were wrong: from the start",
                m.what,
                m.resumed_from
            );
            copy_resuming(blobs, intake, desc, progress)?.map_err(Mismatch::into_error)
        }
        Err(m) => Err(m.into_error()),
    }
}

/// A copy whose bytes did not hash to the digest asked for.
struct Mismatch {
    what: String,
    found: Digest,
    resumed_from: u64,
}

impl Mismatch {
    fn into_error(self) -> Error {
        Error::Invalid(format!(
            "{}: content does not match its digest (got {})",
            self.what, self.found
        ))
    }
}

/// Copies blob `desc` into a kept ingest, from what it holds already; Ok(Err) when the bytes
/// do not hash to its digest (the kept ingest is then dropped).
fn copy_resuming(
    blobs: &dyn Blobs,
    intake: &Intake<'_>,
    desc: &Descriptor,
    progress: &Progress,
) -> Result<std::result::Result<(), Mismatch>> {
    let mut w = intake.resume(&desc.digest, desc.size)?;
    let offset = w.written();
    progress.add(offset);
    let (mut r, what) = blobs.open(desc, offset)?;
    w.copy_from(&mut r, &what, &mut |n| progress.add(n))?;
    match intake.commit(w, &desc.digest, desc.size) {
        Ok(()) => Ok(Ok(())),
        Err(Error::DigestMismatch { found, .. }) => Ok(Err(Mismatch {
            what,
            found,
            resumed_from: offset,
        })),
        Err(e) => Err(e),
    }
}

/// A source of blobs seen through the store, for the walk: blobs the store has are read
/// from it; others are sized at the source, and manifests are copied in (verified) before
/// being read. Every blob is held before the store is asked.
struct Pulling<'a> {
    blobs: &'a dyn Blobs,
    intake: &'a Intake<'a>,
}

impl BlobSource for Pulling<'_> {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.intake.hold(digest)?;
        self.intake.size(digest)
    }

    fn blob_size_of(&self, desc: &Descriptor) -> Result<Option<u64>> {
        self.intake.hold(&desc.digest)?;
        match self.intake.size(&desc.digest)? {
            Some(size) => Ok(Some(size)),
            None => self.blobs.size(desc),
        }
    }

    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if !self.intake.has(&desc.digest)? {
            copy_one(self.blobs, self.intake, desc, &Progress::hidden())?;
        }
        self.intake.read_small(desc)
    }
}
