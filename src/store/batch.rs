//! A batch of blobs placed together (`Batch`, what `Store::batch` returns): import's way of
//! committing many blobs without one fsync each. A writer committed into a batch is checked
//! as any commit checks it (size, digest, the data file holding exactly what was checked),
//! made read-only and left in its ingest, "staged" (a batch's writers share one ingest
//! directory, `ingest/<pid>-<n>-<nanoseconds>/<n>`: a directory made and removed per blob cost
//! more than the fsyncs saved, on this disk). A flush (`Batch::finish`, or on its own once
//! `BATCH_BLOBS` blobs, `BATCH_BYTES` bytes or `BATCH_KEPT` resumed writers are staged) then,
//! in this order:
//!
//! 1. one `syncfs(2)` of the store's filesystem: every staged file's bytes (and mode) are
//!    durable. (Measured here against fsyncs issued from 8 and 16 threads over 5,000 files of
//!    4 KiB: 2.0-2.1 s against 6.2 s and 2.7 s, on a disk shared with other work.) Its errors
//!    are those of writeback since the batch opened its descriptor (Linux 5.8 and later);
//! 2. each staged file renamed into `blobs/<alg>/<hex>` without replacing, and the file that
//!    went there checked to be the one written (as `ingest::place`);
//! 3. one fsync of each `blobs/<alg>/` it renamed into or found a blob in: the renames, and
//!    the entries of blobs other processes placed that this import relies on, are durable.
//!
//! Only then may the caller register images whose blobs these are. So a file under `blobs/` is
//! always whole and durable before it appears (a crash never leaves it torn or empty), and
//! nothing registered refers to a blob whose entry could vanish in a crash.
//!
//! While staged, a blob is the batch's: the batch answers for it as a `BlobSource` and
//! `Provider` (from its ingest, already verified), and a second writer of the same digest is
//! dropped. A batch dropped unflushed drops its staged writers (their ingests go; a resumed
//! writer's kept bytes stay for the next resume). The batch's lease (`Store::batch`) holds
//! every staged digest before the flush renames it, so gc keeps it; a caller still holds a
//! digest before it asks whether the store has it (as import's `Intake` does).
//!
//! `PAUSE_ENV` (tests only) stops the process at a named point so that a test can kill it
//! there: `staged` (before the syncfs), `renaming` (after the first rename of a flush of two
//! or more) and `registering` (import, after its last flush; see `pause_point`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::content::{Ingester, Provider, Writer};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, IoContext, Result};
use crate::oci::{self, BlobSource, Descriptor};

use super::ingest::{move_into_place, new_ingest_dir, sync_dir};
use super::verified::Identity;
use super::{check_bytes, BlobWriter, Store, BLOBS_DIR, WHOLE};

/// Staged blobs after which a batch flushes on its own.
pub const BATCH_BLOBS: usize = 8192;
/// Staged bytes after which a batch flushes on its own: what a crash or failure may cost, and
/// what one syncfs waits for at most (writeback of large blobs starts while they are written).
pub const BATCH_BYTES: u64 = 1 << 30;

/// A staged blob at least this large is fsynced on its own when staged, on the thread that
/// wrote it (as a lone commit does), while other blobs are still being copied: a syncfs at
/// the end would wait for it alone, and for other programs' dirty data besides (with syncfs
/// only, the 2 GiB bench import took 6.4 s and 6.1 s against 4.8 s and 5.2 s before, in two
/// runs on a loaded machine; with this, a median of 7.3 s against 7.9 s in six).
pub const SYNC_ALONE_MIN: u64 = 16 << 20;
/// A flush with at most this many blobs not yet durable fsyncs them one by one rather than
/// the whole filesystem.
pub const FSYNC_AT_MOST: usize = 16;

/// Staged writers of kept ingests (a resumable pull's) after which a batch flushes on its own:
/// each holds its ingest's lock descriptor until placed (a common limit is 1,024 open files).
pub const BATCH_KEPT: usize = 256;

/// Environment variable naming a point where the process stops (tests kill it there).
pub const PAUSE_ENV: &str = "LAYOUTFS_TEST_PAUSE_AT";

/// Stops the process for good at `point` when `PAUSE_ENV` names it, after saying so on
/// standard error: a test kills it there. Does nothing otherwise.
pub fn pause_point(point: &str) {
    if std::env::var_os(PAUSE_ENV).is_some_and(|v| v == point) {
        eprintln!("layoutfs: paused at {point}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// One staged blob: its checked writer, parked (read-only, no descriptor but a kept ingest's
/// lock), and its size.
struct Staged {
    writer: BlobWriter,
    size: u64,
    /// Whether its bytes are durable already (`SYNC_ALONE_MIN`).
    synced: bool,
}

#[derive(Default)]
struct State {
    staged: BTreeMap<Digest, Staged>,
    staged_bytes: u64,
    /// How many of `staged` are writers of kept ingests.
    staged_kept: usize,
    /// Algorithms whose `blobs/<alg>/` held a blob the batch's caller was told is there.
    relied: BTreeSet<Algorithm>,
    /// Every blob this batch placed (renamed into `blobs/` itself), with its size.
    placed: Vec<(Digest, u64)>,
}

/// Blobs committed together (see the module doc).
pub struct Batch<'a> {
    store: &'a Store,
    /// Holds every blob before the batch places it, so that gc keeps it.
    lease: Option<&'a dyn crate::content::Lease>,
    /// The store's root, opened when the batch began: its syncfs reports writeback errors
    /// since then.
    fs: File,
    /// The batch's ingest directory, made at its first writer: the data files of all its
    /// writers but resumed ones (one directory each would cost a mkdir and an rmdir a blob).
    dir: Mutex<Option<PathBuf>>,
    /// The name of the next data file in `dir`.
    next: AtomicU64,
    state: Mutex<State>,
}

impl Store {
    /// A batch committing into this store (see `batch`); `lease`, when given, holds every
    /// blob before the batch places it (gc keeps it until the lease ends).
    pub fn batch<'a>(&'a self, lease: Option<&'a dyn crate::content::Lease>) -> Result<Batch<'a>> {
        let fs = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(self.root())
            .at(self.root())?;
        Ok(Batch {
            store: self,
            lease,
            fs,
            dir: Mutex::new(None),
            next: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        })
    }
}

impl<'a> Batch<'a> {
    /// The store the batch commits into.
    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// Checks `w` as a commit does and stages it; returns its digest, and false when the store
    /// or the batch has the blob already (`w` is dropped then). May flush the batch.
    pub fn stage(&self, mut w: BlobWriter) -> Result<(Digest, bool)> {
        let size = w.len();
        let synced = size >= SYNC_ALONE_MIN;
        let digest = w.check_staged(synced)?;
        let mut st = self.state.lock();
        if st.staged.contains_key(&digest) || self.in_store(&mut st, &digest)?.is_some() {
            w.spent(false);
            return Ok((digest, false));
        }
        st.staged_kept += usize::from(w.is_kept());
        st.staged.insert(
            digest.clone(),
            Staged {
                writer: w,
                size,
                synced,
            },
        );
        st.staged_bytes += size;
        if st.staged.len() >= BATCH_BLOBS
            || st.staged_bytes >= BATCH_BYTES
            || st.staged_kept >= BATCH_KEPT
        {
            self.flush(&mut st)?;
        }
        Ok((digest, true))
    }

    /// Makes every staged blob durable and places it (see the module doc); then the blobs
    /// this batch was told the store has are durably there too. Call it before registering
    /// anything that refers to them.
    pub fn finish(&self) -> Result<()> {
        let mut st = self.state.lock();
        self.flush(&mut st)
    }

    /// A new writer in the batch's ingest directory (made now if it is not there yet).
    fn writer(
        &self,
        alg: Algorithm,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<BlobWriter> {
        let dir = {
            let mut dir = self.dir.lock();
            match &*dir {
                Some(d) => d.clone(),
                None => dir.insert(new_ingest_dir(self.store.root())?).clone(),
            }
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        BlobWriter::start_in(self.store, &dir, n, alg, expected, size)
    }

    /// The blobs this batch placed so far, with their sizes.
    pub fn placed(&self) -> Vec<(Digest, u64)> {
        self.state.lock().placed.clone()
    }

    /// The size of `digest` in the store, noting that the caller relies on its entry there.
    fn in_store(&self, st: &mut State, digest: &Digest) -> Result<Option<u64>> {
        let size = self.store.blob_size(digest)?;
        if size.is_some() {
            st.relied.insert(digest.algorithm());
        }
        Ok(size)
    }

    /// The flush (see the module doc), with the state locked: staged blobs not placed when it
    /// fails are dropped.
    fn flush(&self, st: &mut State) -> Result<()> {
        let staged = std::mem::take(&mut st.staged);
        st.staged_bytes = 0;
        st.staged_kept = 0;
        let mut dirs: BTreeSet<Algorithm> = std::mem::take(&mut st.relied);
        if staged.is_empty() && dirs.is_empty() {
            return Ok(());
        }
        let root = self.store.root();
        if let Some(lease) = self.lease {
            lease.hold(WHOLE, &staged.keys().collect::<Vec<_>>())?;
        }
        if !staged.is_empty() {
            pause_point("staged");
            let unsynced: Vec<(&Digest, &Staged)> =
                staged.iter().filter(|(_, s)| !s.synced).collect();
            if unsynced.len() <= FSYNC_AT_MOST {
                for (digest, s) in unsynced {
                    let data = s.writer.data_path();
                    self.open_staged(&staged, digest)
                        .unwrap_or_else(|| Err(io::ErrorKind::NotFound.into()))
                        .and_then(|f| f.sync_all())
                        .map_err(|e| Error::Write {
                            blob: format!("blob {digest}"),
                            path: data.to_owned(),
                            source: e,
                        })?;
                }
            } else {
                sync_filesystem(&self.fs).map_err(|source| Error::Write {
                    blob: format!("{} blobs", unsynced.len()),
                    path: root.to_owned(),
                    source,
                })?;
            }
        }
        let many = staged.len() > 1;
        let mut placed_now: Vec<(Digest, Identity)> = Vec::new();
        let mut sizes = Vec::new();
        for (
            i,
            (
                digest,
                Staged {
                    mut writer, size, ..
                },
            ),
        ) in staged.into_iter().enumerate()
        {
            if i == 1 && many {
                pause_point("renaming");
            }
            dirs.insert(digest.algorithm());
            let moved = move_into_place(root, writer.data_path(), &digest, writer.identity());
            match moved {
                Ok(Some(there)) => {
                    writer.spent(true);
                    st.placed.push((digest.clone(), size));
                    placed_now.push((digest, Identity::of(&there)));
                    sizes.push(size);
                }
                // Placed by another process meanwhile: ours goes.
                Ok(None) => writer.spent(false),
                Err(e) => {
                    // The blobs renamed already stay placed (counted above, for take-back).
                    return Err(e);
                }
            }
        }
        for alg in dirs {
            sync_dir(&root.join(BLOBS_DIR).join(alg.name()))?;
        }
        // Placed, durable, verified: noted for the store's verified records (written at the
        // end of the import, or every `verified::FLUSH_AT`).
        let verified = self.store.verified();
        for (digest, identity) in &placed_now {
            verified.note(digest, *identity, root);
        }
        Ok(())
    }

    /// Opens staged blob `digest` read-only: its ingest's data file, still the file checked.
    fn open_staged(
        &self,
        staged: &BTreeMap<Digest, Staged>,
        digest: &Digest,
    ) -> Option<io::Result<File>> {
        let s = staged.get(digest)?;
        let data = s.writer.data_path();
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(data)
            .and_then(|f| {
                let m = f.metadata()?;
                if (m.dev(), m.ino()) == s.writer.identity() {
                    Ok(f)
                } else {
                    Err(io::Error::other(format!(
                        "not the data file checked for blob {digest} (replaced)"
                    )))
                }
            });
        Some(opened)
    }
}

impl Drop for Batch<'_> {
    /// Drops what is staged (its data files go), then the batch's ingest directory.
    fn drop(&mut self) {
        self.state.get_mut().staged.clear();
        if let Some(dir) = self.dir.get_mut().take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `syncfs(2)` of the filesystem `fs` is on.
fn sync_filesystem(fs: &File) -> io::Result<()> {
    loop {
        // SAFETY: syncfs only reads the open descriptor.
        if unsafe { libc::syncfs(fs.as_raw_fd()) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

impl BlobSource for Batch<'_> {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let mut st = self.state.lock();
        if let Some(s) = st.staged.get(digest) {
            return Ok(Some(s.size));
        }
        self.in_store(&mut st, digest)
    }

    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let st = self.state.lock();
        let Some(opened) = self.open_staged(&st.staged, &desc.digest) else {
            drop(st);
            return self.store.read_small(desc);
        };
        drop(st);
        oci::check_json_size(&format!("blob {}", desc.digest), desc.size)?;
        let mut bytes = Vec::with_capacity(desc.size as usize);
        let what = format!("staged blob {}", desc.digest);
        opened
            .and_then(|f| f.take(desc.size + 1).read_to_end(&mut bytes))
            .at(&what)?;
        check_bytes(desc, &bytes)?;
        Ok(bytes)
    }
}

impl Provider for Batch<'_> {
    fn open(&self, desc: &Descriptor) -> Result<File> {
        let st = self.state.lock();
        let Some(opened) = self.open_staged(&st.staged, &desc.digest) else {
            drop(st);
            return self.store.open_blob(desc);
        };
        drop(st);
        let at = format!("staged blob {}", desc.digest);
        super::sized(opened.at(&at)?, desc, &at)
    }

    fn open_file(&self, digest: &Digest) -> io::Result<File> {
        let st = self.state.lock();
        match self.open_staged(&st.staged, digest) {
            Some(opened) => opened,
            None => self.store.open_blob_file(digest),
        }
    }

    fn locate(&self, digest: &Digest) -> String {
        match self.state.lock().staged.get(digest) {
            Some(s) => s.writer.data_path().display().to_string(),
            None => self.store.blob_path(digest).display().to_string(),
        }
    }
}

/// A writer whose commit stages it in a batch.
struct Batched<'b> {
    writer: BlobWriter,
    batch: &'b Batch<'b>,
}

impl Writer for Batched<'_> {
    fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        self.writer.write_all(buf)
    }

    fn written(&self) -> u64 {
        self.writer.written()
    }

    /// Stages the blob; true unless the store or the batch had it. It is placed, durably, by
    /// the batch's next flush.
    fn commit_named(self: Box<Self>) -> Result<(Digest, bool)> {
        let Batched { writer, batch } = *self;
        batch.stage(writer)
    }
}

impl crate::content::Staging for Batch<'_> {
    fn finish(&self) -> Result<()> {
        Batch::finish(self)
    }

    fn placed(&self) -> Vec<(Digest, u64)> {
        Batch::placed(self)
    }
}

impl<'a> Ingester for Batch<'a> {
    fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Box<dyn Writer + '_>> {
        let writer = self.writer(expected.algorithm(), Some(expected), size)?;
        Ok(Box::new(Batched {
            writer,
            batch: self,
        }))
    }

    fn ingest_unnamed(&self, alg: Algorithm) -> Result<Box<dyn Writer + '_>> {
        let writer = self.writer(alg, None, None)?;
        Ok(Box::new(Batched {
            writer,
            batch: self,
        }))
    }

    fn resume(&self, expected: &Digest, size: u64) -> Result<Box<dyn Writer + '_>> {
        let writer = self.store.resume(expected, size)?;
        Ok(Box::new(Batched {
            writer,
            batch: self,
        }))
    }
}

/// Whether anything is at `p` (no link followed).
#[cfg(test)]
fn exists(p: &std::path::Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use crate::store::tests::store;

    #[test]
    fn staged_blobs_are_seen_through_the_batch_and_placed_at_finish() {
        let (_t, s) = store();
        let b = s.batch(None).unwrap();
        let blobs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
        let mut digests = Vec::new();
        for bytes in &blobs {
            let d = Digest::of(Algorithm::Sha256, bytes);
            let mut w = Ingester::ingest(&b, &d, Some(bytes.len() as u64)).unwrap();
            w.write_all(bytes).unwrap();
            assert_eq!(w.commit_named().unwrap(), (d.clone(), true));
            assert!(!exists(&s.blob_path(&d)), "not placed before the flush");
            let desc = Descriptor::new("", d.clone(), bytes.len() as u64);
            assert_eq!(b.blob_size(&d).unwrap(), Some(bytes.len() as u64));
            assert_eq!(&b.read_small(&desc).unwrap(), bytes);
            assert_eq!(b.open(&desc).unwrap().metadata().unwrap().len(), desc.size);
            digests.push(d);
        }
        // The same content again: dropped, not staged twice.
        let mut w = Ingester::ingest_unnamed(&b, Algorithm::Sha256).unwrap();
        w.write_all(&blobs[0]).unwrap();
        assert_eq!(w.commit_named().unwrap(), (digests[0].clone(), false));
        // A wrong digest fails at once.
        let mut w = Ingester::ingest(&b, &digests[1], None).unwrap();
        w.write_all(b"wrong").unwrap();
        assert!(matches!(
            w.commit_named(),
            Err(Error::DigestMismatch { .. })
        ));
        b.finish().unwrap();
        for (d, bytes) in digests.iter().zip(&blobs) {
            assert_eq!(&fs::read(s.blob_path(d)).unwrap(), bytes);
            let mode = fs::metadata(s.blob_path(d)).unwrap().mode() & 0o7777;
            assert_eq!(mode, super::super::BLOB_MODE);
        }
        let mut placed: Vec<Digest> = b.placed().into_iter().map(|(d, _)| d).collect();
        placed.sort();
        digests.sort();
        assert_eq!(placed, digests);
        drop(b);
        assert_eq!(fs::read_dir(s.root().join("ingest")).unwrap().count(), 0);
        // Staged into a second batch, already there: not staged, not placed again.
        let b2 = s.batch(None).unwrap();
        let mut w = Ingester::ingest(&b2, &digests[0], None).unwrap();
        w.write_all(&fs::read(s.blob_path(&digests[0])).unwrap())
            .unwrap();
        assert!(!w.commit_named().unwrap().1);
        b2.finish().unwrap();
        assert!(b2.placed().is_empty());
    }

    #[test]
    fn a_dropped_batch_places_nothing_and_leaves_no_ingest() {
        let (_t, s) = store();
        let d = Digest::of(Algorithm::Sha256, b"abc");
        {
            let b = s.batch(None).unwrap();
            let mut w = Ingester::ingest(&b, &d, Some(3)).unwrap();
            w.write_all(b"abc").unwrap();
            assert!(w.commit().unwrap());
        }
        assert!(!exists(&s.blob_path(&d)));
        assert_eq!(fs::read_dir(s.root().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn two_batches_of_one_digest_place_it_once() {
        let (_t, s) = store();
        let d = Digest::of(Algorithm::Sha512, b"shared");
        let (a, b) = (s.batch(None).unwrap(), s.batch(None).unwrap());
        for batch in [&a, &b] {
            let mut w = Ingester::ingest(batch, &d, Some(6)).unwrap();
            w.write_all(b"shared").unwrap();
            assert!(w.commit().unwrap());
        }
        a.finish().unwrap();
        b.finish().unwrap();
        assert_eq!((a.placed().len(), b.placed().len()), (1, 0));
        assert_eq!(fs::read(s.blob_path(&d)).unwrap(), b"shared");
        drop((a, b));
        assert_eq!(fs::read_dir(s.root().join("ingest")).unwrap().count(), 0);
    }
}
