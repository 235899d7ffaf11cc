//! The store's one ingest writer, `BlobWriter`: the bytes of one blob written at any offset into
//! `ingest/<id>/data`, committed as `blobs/<alg>/<hex>` once checked. Import writes through it
//! in order (`write_all`, and `content::Writer::copy_from` over it: positional writes at the end, as `Store::ingest` gives
//! it); the mount's uploads write at the offsets the kernel gives.
//!
//! - Hashing: bytes are hashed as they arrive while every write continues where the last
//!   ended (the contiguous prefix is then the whole content). After a write out of order, a
//!   rewrite or a truncate, the digest is computed from the file when asked (`hash_file`), once
//!   until the content changes again.
//! - Commit: against the digest (and size) given when the writer started (`commit`), or given
//!   at commit (`commit_as`: the mount learns a file's name last), or naming the content by its
//!   hash (`commit_named`). Size and digest are checked first; then `place` fsyncs, makes the
//!   file read-only, renames it into `blobs/` without replacing and checks that what went
//!   there is the file written. Nothing is under `blobs/` before that. A write past the
//!   expected size fails at once. A writer of a batch (`batch.rs`, import's) is checked the
//!   same way but staged (`check_staged`): the batch makes many durable at once and places
//!   them; its writers share one ingest directory (`start_in`), each removing only its file.
//! - Writes are buffered, and every `WRITEBACK_STEP` bytes the kernel is asked to start writing
//!   them back (`start_writeback`, sync_file_range without waiting), so that the disk works while
//!   the next writes arrive and the fsync at commit finds little left. A writer made
//!   `hash_behind` (the mount's) hashes what large writes append on a thread of its own, reading
//!   it back from the file while the next writes arrive (`writer::hash_behind`). (The mount's
//!   large writes went through O_DIRECT before: each then waited for the disk, one at a time,
//!   and `cp -r` into the mount could not keep the disk busy.) A failed writeback is reported
//!   by the fsync at commit, or by `sync` (an fsync through the mount).
//! - Parking: `park` closes the descriptors of a writer nothing uses (a temporary file after
//!   close); the next access opens the data file again, never through a link, and refuses a
//!   file that is not the one it created.
//! - A writer dropped without a commit, or after one, removes its ingest directory; `abandon`
//!   leaves it, as a killed process would, for the sweep of dead processes' ingests.
//! - Resuming (`resume`, what `Store::resume` returns): the writer of an expected digest and
//!   size in the digest's kept ingest `ingest/r-<alg>-<hex>/` (see `ingest.rs`), locked while it
//!   lives. It starts where the bytes kept there end, re-hashing them (more than the size: it
//!   starts over). Dropped uncommitted it keeps them (none written: the ingest goes); a commit
//!   that places the blob, finds it there or finds the digest wrong removes the ingest (a wrong
//!   prefix cannot be told before the end, so the next resume starts clean); any other failure
//!   keeps it.
//!
//! A writer carries what it needs of the store (its root) and borrows nothing, so the mount
//! keeps thousands of them in its tables.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::{hash_file, hash_into, Algorithm, Digest, Hasher};
use crate::error::{Error, IoContext, Result};

mod hash_behind;

use hash_behind::HashBehind;

use super::ingest::{
    check_digest, check_size, new_data_in, new_ingest, open_kept, place, start_writeback,
    KeptIngest, BLOB_MODE, COPY_CHUNK, DATA_FILE, WRITEBACK_STEP,
};
use super::verified::Verified;
use super::Store;

/// A `hash_behind` writer starts hashing on a thread of its own at an append at least this
/// large (below it, starting the thread costs more than it saves).
const HASH_BEHIND_MIN: usize = 256 << 10;

/// One blob being written (see the module doc).
pub struct BlobWriter {
    /// The store's root: the blob goes to `<root>/blobs/<alg>/<hex>`.
    root: PathBuf,
    /// `ingest/<id>/`, and the data file in it.
    dir: PathBuf,
    data: PathBuf,
    /// (device, inode) of the data file as created: a file opened again must be this one.
    identity: (u64, u64),
    /// The data file, read and write; None while parked.
    file: Option<File>,
    /// What large writes append is hashed on a thread of its own (`behind`).
    hash_behind: bool,
    alg: Algorithm,
    /// Running hash of bytes 0..len, while every write has continued where the last ended;
    /// None too while `behind` has it.
    hasher: Option<Hasher>,
    /// The running hash continued on its own thread: it covers 0..len once finished.
    behind: Option<HashBehind>,
    /// The digest of the content read from the file, until the content changes.
    hashed: Option<Digest>,
    len: u64,
    /// The digest the content must have, and its size when known; None names it by its hash.
    expected: Option<(Digest, Option<u64>)>,
    /// The end of what the kernel was asked to write back.
    flushed_to: u64,
    /// What dropping the writer does with its ingest directory.
    on_drop: OnDrop,
    /// The descriptor of a kept ingest's directory, holding its lock while the writer lives;
    /// None for a temporary ingest.
    kept: Option<File>,
    /// Where a blob placed is noted as verified (the store's, see `store::verified`).
    verified: Arc<Verified>,
}

/// What dropping a writer does with its ingest directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDrop {
    /// Removes it: a temporary ingest, or a kept one spent by its commit.
    Remove,
    /// Keeps it for the next resume unless nothing was written: a kept ingest.
    KeepPartial,
    /// Leaves it as it is (`abandon`).
    Leave,
    /// Removes the data file only: a writer of a batch's shared ingest directory.
    RemoveFile,
}

impl BlobWriter {
    /// A new, empty writer in `store`'s ingest area, hashing with `alg`, that must become the
    /// blob `expected` (of `size` bytes, when known), or is named by its hash when None.
    pub(super) fn start(
        store: &Store,
        alg: Algorithm,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<BlobWriter> {
        let (dir, file) = new_ingest(store.root())?;
        let data = dir.join(DATA_FILE);
        BlobWriter::with_file(
            store,
            (dir, data, file),
            alg,
            expected,
            size,
            OnDrop::Remove,
        )
    }

    /// A new, empty writer as `start` makes, whose data file is `<dir>/<n>` in a batch's
    /// ingest directory `dir` (see `batch.rs`): dropped, it removes only its data file.
    pub(super) fn start_in(
        store: &Store,
        dir: &Path,
        n: u64,
        alg: Algorithm,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<BlobWriter> {
        let (data, file) = new_data_in(dir, n)?;
        let parts = (dir.to_owned(), data, file);
        BlobWriter::with_file(store, parts, alg, expected, size, OnDrop::RemoveFile)
    }

    /// A writer of the new, empty data file `file` at `data` in ingest directory `dir`.
    fn with_file(
        store: &Store,
        (dir, data, file): (PathBuf, PathBuf, File),
        alg: Algorithm,
        expected: Option<&Digest>,
        size: Option<u64>,
        on_drop: OnDrop,
    ) -> Result<BlobWriter> {
        let mut w = BlobWriter {
            root: store.root().to_owned(),
            dir,
            data,
            identity: (0, 0),
            file: None,
            hash_behind: false,
            behind: None,
            alg,
            hasher: Some(alg.hasher()),
            hashed: None,
            len: 0,
            expected: expected.map(|d| (d.clone(), size)),
            flushed_to: 0,
            on_drop,
            kept: None,
            verified: store.verified_handle(),
        };
        // Dropped on an error, `w` removes what it made.
        let meta = file.metadata().at(&w.data)?;
        w.identity = (meta.dev(), meta.ino());
        w.file = Some(file);
        Ok(w)
    }

    /// The writer of blob `expected` (`size` bytes) in its kept ingest, continuing from the
    /// bytes there (see the module doc); an ordinary writer when another writer holds it.
    pub(super) fn resume(store: &Store, expected: &Digest, size: u64) -> Result<BlobWriter> {
        let Some(KeptIngest { dir, lock, file }) = open_kept(store.root(), expected)? else {
            return BlobWriter::start(store, expected.algorithm(), Some(expected), Some(size));
        };
        let data = dir.join(DATA_FILE);
        let meta = file.metadata().at(&data)?;
        let alg = expected.algorithm();
        let mut w = BlobWriter {
            root: store.root().to_owned(),
            dir,
            data,
            identity: (meta.dev(), meta.ino()),
            file: Some(file),
            hash_behind: false,
            behind: None,
            alg,
            hasher: None,
            hashed: None,
            len: meta.len(),
            expected: Some((expected.clone(), Some(size))),
            flushed_to: meta.len(),
            on_drop: OnDrop::KeepPartial,
            kept: Some(lock),
            verified: store.verified_handle(),
        };
        if w.len > size {
            // Not a prefix of this blob: start over.
            w.truncate(0)?;
            return Ok(w);
        }
        // Dropped on an error from here (len > 0), `w` keeps the bytes for another try.
        let mut h = alg.hasher();
        let mut buf = vec![0u8; COPY_CHUNK];
        hash_into(&mut h, w.opened()?, Some(w.len), &mut buf, |_| {}).at(&w.data)?;
        w.hasher = Some(h);
        Ok(w)
    }

    /// Makes the writer fast for large writes from the mount: what they append is hashed on a
    /// thread of its own while the next writes arrive.
    pub fn hash_behind(mut self) -> BlobWriter {
        self.hash_behind = true;
        self
    }

    /// Takes the running hash back from the thread hashing behind the writes, once it has
    /// hashed all they appended (None: the digest is to come from the file).
    fn settle_hash(&mut self) {
        if let Some(b) = self.behind.take() {
            self.hasher = b.finish();
        }
    }

    /// Drops the running hash: the content is no longer what was appended in order.
    fn drop_hash(&mut self) {
        if let Some(b) = self.behind.take() {
            b.cancel();
        }
        self.hasher = None;
    }

    /// What errors call this blob.
    fn label(&self) -> String {
        match &self.expected {
            Some((d, _)) => format!("blob {d}"),
            None => format!("a {} blob being hashed", self.alg),
        }
    }

    /// A failed write or truncate (ENOSPC, EIO), naming the blob and its data file.
    fn write_error(&self, source: io::Error) -> Error {
        Error::Write {
            blob: self.label(),
            path: self.data.clone(),
            source,
        }
    }

    /// The size of the content: the end of the furthest write, or the last truncate.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes written so far by sequential writes (`len`), counting those a resumed writer
    /// started with.
    pub fn written(&self) -> u64 {
        self.len
    }

    /// The algorithm of the running hash.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The root of the store the writer commits into.
    pub fn store_root(&self) -> &Path {
        &self.root
    }

    /// Closes the writer's descriptors; the next access opens the data file again.
    pub fn park(&mut self) {
        // The hashing thread holds a descriptor of its own.
        self.settle_hash();
        self.file = None;
    }

    /// Whether the writer holds no descriptor now.
    pub fn is_parked(&self) -> bool {
        self.file.is_none()
    }

    /// Opens the data file again if the writer was parked, never through a link, and only the
    /// file it created.
    fn open(&mut self) -> Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.data)
            .at(&self.data)?;
        if identity(&file).at(&self.data)? != self.identity {
            return Err(Error::io(
                &self.data,
                io::Error::other(format!(
                    "not the data file written for {} (replaced while parked)",
                    self.label()
                )),
            ));
        }
        self.file = Some(file);
        Ok(())
    }

    /// The open data file (after `open`).
    fn opened(&self) -> Result<&File> {
        self.file
            .as_ref()
            .ok_or_else(|| Error::io(&self.data, io::Error::other("the ingest is parked")))
    }

    /// The end of `len` bytes at `offset`; refused when past the size the writer expects.
    fn end_of(&self, offset: u64, len: usize) -> Result<u64> {
        let Some(end) = offset.checked_add(len as u64) else {
            return Err(self.write_error(io::Error::from_raw_os_error(libc::EFBIG)));
        };
        match &self.expected {
            Some((digest, Some(size))) if end > *size => Err(Error::SizeMismatch {
                digest: digest.clone(),
                expected: *size,
                found: end,
            }),
            _ => Ok(end),
        }
    }

    /// Writes `buf` at `offset`. A write that continues where the last ended extends the
    /// running hash (hashed behind the writes, for a `hash_behind` writer's large ones); any
    /// other makes the digest come from the file. After an error the content is unknown: the
    /// writer is to be dropped (a commit would hash the file).
    pub fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        let end = self.end_of(offset, buf.len())?;
        self.open()?;
        let append = offset == self.len;
        if !append {
            self.drop_hash();
        }
        self.hashed = None;
        if let Err(e) = self.opened()?.write_all_at(buf, offset) {
            self.drop_hash();
            return Err(self.write_error(e));
        }
        self.len = self.len.max(end);
        if append {
            self.hash_appended(offset, end, buf)?;
        }
        if end >= self.flushed_to.saturating_add(WRITEBACK_STEP) {
            start_writeback(self.opened()?, self.flushed_to, end - self.flushed_to);
            self.flushed_to = end;
        }
        Ok(())
    }

    /// Adds `buf`, just appended at `offset..end`, to the running hash: behind the writes
    /// when a thread hashes them or one starts now, else here.
    fn hash_appended(&mut self, offset: u64, end: u64, buf: &[u8]) -> Result<()> {
        if let Some(b) = &self.behind {
            if b.advance(end) {
                return Ok(());
            }
            // It ended, idle: take the hash back (it covers 0..offset) and go on here.
            self.settle_hash();
        } else if self.hash_behind && buf.len() >= HASH_BEHIND_MIN {
            let file = self
                .file
                .as_ref()
                .ok_or_else(|| Error::io(&self.data, io::Error::other("the ingest is parked")))?;
            self.behind = HashBehind::start(file, &mut self.hasher, offset, end);
            if self.behind.is_some() {
                return Ok(());
            }
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(buf);
        }
        Ok(())
    }

    /// Waits until what was written is on the disk (an fsync through the mount of a file not
    /// committed by it). A writeback that failed since the last check is reported here, as
    /// after a failed write: the writer is then to be dropped.
    pub fn sync(&mut self) -> Result<()> {
        self.open()?;
        self.opened()?.sync_data().map_err(|e| self.write_error(e))
    }

    /// Appends bytes at the end (`len`).
    pub fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        self.write_at(self.len, buf)
    }

    /// Reads up to `size` bytes at `offset` into `buf` (fewer at the end of the content).
    pub fn read_at(&mut self, offset: u64, size: u32, buf: &mut Vec<u8>) -> Result<()> {
        let want = self.len.saturating_sub(offset).min(u64::from(size)) as usize;
        buf.clear();
        buf.resize(want, 0);
        self.open()?;
        self.opened()?.read_exact_at(buf, offset).at(&self.data)
    }

    /// Sets the size of the content to `size` (refused past the size the writer expects).
    pub fn truncate(&mut self, size: u64) -> Result<()> {
        self.end_of(size, 0)?;
        self.open()?;
        if size != self.len {
            self.drop_hash();
        }
        self.opened()?
            .set_len(size)
            .map_err(|e| self.write_error(e))?;
        if size == 0 {
            self.drop_hash();
            self.hasher = Some(self.alg.hasher());
        }
        self.hashed = None;
        self.flushed_to = self.flushed_to.min(size);
        self.len = size;
        Ok(())
    }

    /// The digest of the content with `alg`: the running hash when it covers the content,
    /// else read from the file.
    pub fn digest(&mut self, alg: Algorithm) -> Result<Digest> {
        self.settle_hash();
        if let Some(h) = self.hasher.as_ref().filter(|h| h.algorithm() == alg) {
            return Ok(h.clone().finish());
        }
        if let Some(d) = self.hashed.as_ref().filter(|d| d.algorithm() == alg) {
            return Ok(d.clone());
        }
        self.open()?;
        let mut buf = vec![0u8; COPY_CHUNK];
        let found =
            hash_file(alg, self.opened()?, Some(self.len), &mut buf, |_| {}).at(&self.data)?;
        self.hashed = Some(found.clone());
        Ok(found)
    }

    /// Checks the content against the blob `expected` (and `size` bytes, when given), leaving
    /// the writer as it is.
    pub fn verify(&mut self, expected: &Digest, size: Option<u64>) -> Result<()> {
        check_size(expected, size, self.len)?;
        let found = self.digest(expected.algorithm())?;
        check_digest(expected, found)
    }

    /// Verifies the content against what the writer expects and moves it into place. Returns
    /// false when the store had the blob already.
    pub fn commit(self) -> Result<bool> {
        self.commit_named().map(|(_, placed)| placed)
    }

    /// Verifies the content as the blob `expected` (of `size` bytes, when given), whatever the
    /// writer expected before, and moves it into place. Returns false when the store had it.
    pub fn commit_as(mut self, expected: &Digest, size: Option<u64>) -> Result<bool> {
        self.expected = Some((expected.clone(), size));
        self.commit()
    }

    /// Verifies (when a digest is expected) and moves the blob into place under the digest
    /// its content hashes to, which it returns, with whether it was placed now (false: it was
    /// already there). The writer is spent either way: its ingest directory goes, but for a
    /// resumed writer's that failed otherwise than by its digest (see the module doc).
    pub fn commit_named(mut self) -> Result<(Digest, bool)> {
        let r = self.check_and_place();
        if self.on_drop == OnDrop::KeepPartial
            && matches!(r, Ok(_) | Err(Error::DigestMismatch { .. }))
        {
            self.on_drop = OnDrop::Remove;
        }
        r
    }

    /// `commit_named`, but for what happens to the ingest.
    fn check_and_place(&mut self) -> Result<(Digest, bool)> {
        let found = self.check()?;
        let placed = place(
            &self.root,
            self.opened()?,
            &self.data,
            &found,
            &self.verified,
        )?;
        Ok((found, placed))
    }

    /// Checks the content as a commit does (size, digest, and a data file holding exactly the
    /// bytes checked), leaving the file open; returns its digest.
    fn check(&mut self) -> Result<Digest> {
        let found = match self.expected.clone() {
            Some((expected, size)) => {
                self.verify(&expected, size)?;
                expected
            }
            None => self.digest(self.alg)?,
        };
        self.open()?;
        let file = self.opened()?;
        // What is checked is `len` bytes: the file placed must hold no more (a failed write
        // past the end may have left some).
        let on_disk = file.metadata().at(&self.data)?.len();
        if on_disk != self.len {
            return Err(Error::io(
                &self.data,
                io::Error::other(format!(
                    "{on_disk} bytes in the data file of blob {found}, {} written",
                    self.len
                )),
            ));
        }
        Ok(found)
    }

    /// Checks the content as a commit does and makes the data file read-only (mode 0444),
    /// then parks the writer, for a batch (`batch.rs`) to place later; returns the digest. A
    /// resumed writer whose digest is wrong drops its bytes, as at commit.
    /// With `sync`, its bytes are made durable here too (fsync), so that the batch need not.
    pub(super) fn check_staged(&mut self, sync: bool) -> Result<Digest> {
        let checked = self.check().and_then(|found| {
            let file = self.opened()?;
            file.set_permissions(std::fs::Permissions::from_mode(BLOB_MODE))
                .at(&self.data)?;
            if sync {
                file.sync_all().map_err(|e| self.write_error(e))?;
            }
            Ok(found)
        });
        if self.on_drop == OnDrop::KeepPartial
            && matches!(checked, Err(Error::DigestMismatch { .. }))
        {
            self.on_drop = OnDrop::Remove;
        }
        let found = checked?;
        self.park();
        Ok(found)
    }

    /// The ingest's data file.
    pub(super) fn data_path(&self) -> &Path {
        &self.data
    }

    /// (device, inode) of the data file as created.
    pub(super) fn identity(&self) -> (u64, u64) {
        self.identity
    }

    /// Marks a staged writer spent: its blob was placed (its data file is gone), or found
    /// there; dropping it removes what is left of its ingest.
    pub(super) fn spent(&mut self, placed: bool) {
        self.on_drop = match self.on_drop {
            OnDrop::RemoveFile if placed => OnDrop::Leave,
            OnDrop::RemoveFile => OnDrop::RemoveFile,
            _ => OnDrop::Remove,
        };
    }

    /// Drops the writer but leaves its ingest directory, as a process that died would: the
    /// next mount, or gc, removes it (the mount's exit does not wait for the disk).
    pub fn abandon(mut self) {
        self.on_drop = OnDrop::Leave;
    }

    /// Whether the writer writes into a kept ingest (`resume`) rather than a temporary one.
    pub fn is_kept(&self) -> bool {
        self.kept.is_some()
    }
}

/// The mount's uploads: a writer of the store written at any offset. A commit that places
/// the blob writes its verified record at once (the mount commits one blob at a time; a
/// failure only means a later reader hashes it).
impl crate::content::Draft for BlobWriter {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        BlobWriter::write_at(self, offset, buf)
    }

    fn read_at(&mut self, offset: u64, size: u32, buf: &mut Vec<u8>) -> Result<()> {
        BlobWriter::read_at(self, offset, size, buf)
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        BlobWriter::truncate(self, size)
    }

    fn len(&self) -> u64 {
        BlobWriter::len(self)
    }

    fn sync(&mut self) -> Result<()> {
        BlobWriter::sync(self)
    }

    fn park(&mut self) {
        BlobWriter::park(self)
    }

    fn is_parked(&self) -> bool {
        BlobWriter::is_parked(self)
    }

    fn digest(&mut self, alg: Algorithm) -> Result<Digest> {
        BlobWriter::digest(self, alg)
    }

    fn verify(&mut self, expected: &Digest, size: Option<u64>) -> Result<()> {
        BlobWriter::verify(self, expected, size)
    }

    fn commit(self: Box<Self>, expected: &Digest, size: Option<u64>) -> Result<bool> {
        let verified = self.verified.clone();
        let root = self.root.clone();
        let placed = self.commit_as(expected, size)?;
        if placed {
            if let Err(e) = verified.flush(&root) {
                tracing::warn!("blob {expected}: verified, not recorded: {e}");
            }
        }
        Ok(placed)
    }

    fn abandon(self: Box<Self>) {
        BlobWriter::abandon(*self)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        let remove = match self.on_drop {
            OnDrop::Remove => true,
            OnDrop::KeepPartial => self.len == 0,
            OnDrop::Leave => false,
            OnDrop::RemoveFile => {
                let _ = std::fs::remove_file(&self.data);
                false
            }
        };
        if !remove {
            return;
        }
        if self.kept.is_some() {
            // Only what the writer made: its data file (gone already once placed), then the
            // directory if nothing else is in it. The lock (`kept`) is released after this.
            let _ = std::fs::remove_file(&self.data);
            let _ = std::fs::remove_dir(&self.dir);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// (device, inode) of an open file.
fn identity(file: &File) -> io::Result<(u64, u64)> {
    file.metadata().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BLOBS_DIR, INGEST_DIR};

    use crate::store::tests::store;

    /// `n` bytes that differ from chunk to chunk, so that a wrong order hashes differently.
    fn content(n: usize) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn blobs_in(s: &Store) -> usize {
        Algorithm::ALL
            .iter()
            .map(|a| {
                std::fs::read_dir(s.root().join(BLOBS_DIR).join(a.name()))
                    .unwrap()
                    .count()
            })
            .sum()
    }

    fn ingests_in(s: &Store) -> usize {
        std::fs::read_dir(s.root().join(INGEST_DIR))
            .unwrap()
            .count()
    }

    /// Writes `data` in chunks of `chunk` bytes, in the order of `order` (chunk indexes).
    fn write_chunks(w: &mut BlobWriter, data: &[u8], chunk: usize, order: &[usize]) {
        for &i in order {
            let at = i * chunk;
            w.write_at(at as u64, &data[at..(at + chunk).min(data.len())])
                .unwrap();
        }
    }

    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;

    /// (chunk size, order of the chunks, parallel hash): in order, reversed, shuffled, with a
    /// chunk written twice; small writes and large ones (hashed on a second thread).
    const ORDERS: [(usize, &[usize], bool); 7] = [
        (64 * KIB, &[0, 1, 2, 3], false),
        (64 * KIB, &[3, 2, 1, 0], false),
        (64 * KIB, &[1, 0, 3, 2], false),
        (64 * KIB, &[0, 2, 1, 2, 3], false),
        (MIB, &[0, 1, 2, 3], true),
        (MIB, &[2, 0, 3, 1], true),
        (MIB, &[0, 1, 1, 2, 3], true),
    ];

    #[test]
    fn writes_in_any_order_commit_with_the_content_digest() {
        for (chunk, order, parallel) in ORDERS {
            let data = content(3 * chunk + 100);
            let case = format!("chunks of {chunk} in order {order:?}, parallel hash {parallel}");
            // Expected up front, given at commit, named by its hash (sha512: not the running
            // hash's algorithm for the upload-like writer).
            for how in 0..3 {
                let (_t, s) = store();
                let d = Digest::of(Algorithm::Sha256, &data);
                let mut w = match how {
                    0 => s.ingest(&d, Some(data.len() as u64)).unwrap(),
                    _ => s.ingest_unnamed(Algorithm::Sha256).unwrap(),
                };
                if parallel {
                    w = w.hash_behind();
                }
                write_chunks(&mut w, &data, chunk, order);
                assert_eq!(w.len(), data.len() as u64, "{case}");
                let found = match how {
                    0 => w.commit().map(|p| (d.clone(), p)),
                    1 => w
                        .commit_as(&d, Some(data.len() as u64))
                        .map(|p| (d.clone(), p)),
                    _ => w.commit_named(),
                };
                assert_eq!(found.unwrap(), (d.clone(), true), "{case}, way {how}");
                assert_eq!(std::fs::read(s.blob_path(&d)).unwrap(), data, "{case}");
                assert_eq!(ingests_in(&s), 0, "{case}");
            }
        }
    }

    #[test]
    fn an_unnamed_positional_ingest_is_named_by_its_hash() {
        for alg in Algorithm::ALL {
            let (_t, s) = store();
            let data = content(200 * KIB + 7);
            let mut w = s.ingest_unnamed(alg).unwrap().hash_behind();
            write_chunks(&mut w, &data, 50 * KIB, &[4, 0, 3, 1, 2]);
            let (d, placed) = w.commit_named().unwrap();
            assert_eq!(d, Digest::of(alg, &data));
            assert!(placed);
            assert_eq!(std::fs::read(s.blob_path(&d)).unwrap(), data);
            assert_eq!(blobs_in(&s), 1);
            // The same content again: named alike, already there.
            let mut w = s.ingest_unnamed(alg).unwrap();
            w.write_at(0, &data).unwrap();
            assert_eq!(w.commit_named().unwrap(), (d, false));
        }
    }

    #[test]
    fn a_wrong_digest_is_refused_and_nothing_enters_blobs() {
        let (_t, s) = store();
        let data = content(300 * KIB);
        let right = Digest::of(Algorithm::Sha256, &data);
        let wrong = Digest::of(Algorithm::Sha256, b"other");
        let wrong512 = Digest::of(Algorithm::Sha512, b"other");
        // In order and out of order; expected up front, at commit, with another algorithm.
        for (order, how) in [
            (&[0, 1, 2][..], 0),
            (&[2, 1, 0], 0),
            (&[0, 1, 2], 1),
            (&[1, 2, 0], 2),
        ] {
            let expected = if how == 2 { &wrong512 } else { &wrong };
            let mut w = match how {
                0 => s.ingest(expected, None).unwrap(),
                _ => s.ingest_unnamed(Algorithm::Sha256).unwrap().hash_behind(),
            };
            write_chunks(&mut w, &data, 100 * KIB, order);
            let err = match how {
                0 => w.commit().unwrap_err(),
                _ => w.commit_as(expected, None).unwrap_err(),
            };
            let want = Digest::of(expected.algorithm(), &data);
            assert!(
                matches!(&err, Error::DigestMismatch { expected: e, found } if e == expected && *found == want),
                "{order:?} {how}: {err}"
            );
            assert_eq!((blobs_in(&s), ingests_in(&s)), (0, 0), "{order:?} {how}");
        }
        // verify says so without spending the writer, which then commits as what it is.
        let mut w = s.ingest_unnamed(Algorithm::Sha256).unwrap();
        write_chunks(&mut w, &data, 100 * KIB, &[1, 0, 2]);
        assert!(matches!(
            w.verify(&wrong, None),
            Err(Error::DigestMismatch { .. })
        ));
        assert_eq!(blobs_in(&s), 0);
        assert!(w.commit_as(&right, None).unwrap());
    }

    #[test]
    fn a_size_mismatch_is_refused() {
        let data = content(100 * KIB);
        let d = Digest::of(Algorithm::Sha256, &data);
        let len = data.len() as u64;
        type Check = fn(Result<bool>) -> bool;
        // (size expected up front, size given at commit, bytes written, what must happen)
        let cases: [(Option<u64>, Option<u64>, usize, Check); 4] = [
            (
                Some(len + 1),
                None,
                data.len(),
                |r| matches!(r, Err(Error::SizeMismatch { expected, found, .. }) if expected == found + 1),
            ),
            (
                None,
                Some(len - 1),
                data.len(),
                |r| matches!(r, Err(Error::SizeMismatch { expected, found, .. }) if expected + 1 == found),
            ),
            (None, Some(len), data.len() - 1, |r| {
                matches!(r, Err(Error::SizeMismatch { .. }))
            }),
            (Some(len), Some(len), data.len(), |r| matches!(r, Ok(true))),
        ];
        for (i, (up_front, at_commit, n, check)) in cases.into_iter().enumerate() {
            let (_t, s) = store();
            let mut w = match up_front {
                Some(size) => s.ingest(&d, Some(size)).unwrap(),
                None => s.ingest_unnamed(Algorithm::Sha256).unwrap(),
            };
            // The tail first: out of order, so the digest comes from the file.
            w.write_at(4096, &data[4096..n]).unwrap();
            w.write_at(0, &data[..4096]).unwrap();
            let r = match at_commit {
                Some(size) => w.commit_as(&d, Some(size)),
                None => w.commit(),
            };
            let placed = matches!(r, Ok(true));
            assert!(check(r), "case {i}");
            assert_eq!(blobs_in(&s), usize::from(placed), "case {i}");
            assert_eq!(ingests_in(&s), 0, "case {i}");
        }
        // Writing or truncating past the size expected up front fails at once.
        let (_t, s) = store();
        let mut w = s.ingest(&d, Some(len)).unwrap();
        let past = w.write_at(len - 10, &[0; 11]);
        assert!(matches!(past, Err(Error::SizeMismatch { found, .. }) if found == len + 1));
        assert!(matches!(
            w.truncate(len + 1),
            Err(Error::SizeMismatch { .. })
        ));
        assert_eq!(w.len(), 0);
        drop(w);
        // A data file longer than what was written and checked is not placed.
        let mut w = s.ingest(&d, Some(len)).unwrap();
        w.write_all(&data).unwrap();
        let mut behind = OpenOptions::new().append(true).open(&w.data).unwrap();
        io::Write::write_all(&mut behind, b"!").unwrap();
        let data_file = w.data.clone();
        let err = w.commit().unwrap_err();
        assert!(
            matches!(&err, Error::Io { path, .. } if *path == data_file),
            "{err}"
        );
        assert_eq!((blobs_in(&s), ingests_in(&s)), (0, 0));
    }

    #[test]
    fn a_parked_writer_reopens_its_own_file_only() {
        let (_t, s) = store();
        let data = content(3 * MIB);
        let d = Digest::of(Algorithm::Sha256, &data);
        let mut w = s.ingest_unnamed(Algorithm::Sha256).unwrap().hash_behind();
        w.write_at(0, &data[..MIB]).unwrap();
        w.park();
        assert!(w.is_parked());
        // Reads and writes open it again (the hash stays a running one).
        let mut back = Vec::new();
        w.read_at(MIB as u64 - 5, 10, &mut back).unwrap();
        assert_eq!(back, &data[MIB - 5..MIB]);
        assert!(!w.is_parked());
        w.park();
        w.write_at(MIB as u64, &data[MIB..]).unwrap();
        assert!(w.behind.is_some() && w.file.is_some());
        w.park();
        assert!(w.commit_as(&d, Some(data.len() as u64)).unwrap());
        assert_eq!(std::fs::read(s.blob_path(&d)).unwrap(), data);

        // A data file replaced while parked is not written, read or committed.
        let mut w = s.ingest(&d, None).unwrap();
        w.write_all(&data).unwrap();
        w.park();
        let planted = w.dir.join("planted");
        std::fs::write(&planted, &data).unwrap();
        std::fs::rename(&planted, &w.data).unwrap();
        let data_file = w.data.clone();
        let refused = |e: Error| matches!(&e, Error::Io { path, .. } if *path == data_file);
        assert!(refused(w.write_at(0, b"x").unwrap_err()));
        assert!(refused(w.read_at(0, 1, &mut back).unwrap_err()));
        assert!(refused(w.commit().unwrap_err()));
        assert_eq!(blobs_in(&s), 1);
        assert_eq!(ingests_in(&s), 0);
    }

    #[test]
    fn a_parked_resumed_writer_keeps_its_lock_and_its_bytes() {
        let (_t, s) = store();
        let data = content(300 * KIB);
        let d = Digest::of(Algorithm::Sha256, &data);
        let len = data.len() as u64;
        let mut w = s.resume(&d, len).unwrap();
        w.write_all(&data[..100 * KIB]).unwrap();
        w.park();
        // Parked, it holds no data descriptor but still the lock.
        let other = s.resume(&d, len).unwrap();
        assert!(!other.is_kept() && other.written() == 0);
        drop(other);
        w.write_all(&data[100 * KIB..200 * KIB]).unwrap();
        assert!(w.hasher.is_some(), "the running hash went on");
        drop(w);
        let w = s.resume(&d, len).unwrap();
        assert_eq!(w.written(), 200 * KIB as u64);
        let mut w = w;
        w.write_all(&data[200 * KIB..]).unwrap();
        assert!(w.commit().unwrap());
        assert_eq!(std::fs::read(s.blob_path(&d)).unwrap(), data);
        assert_eq!((blobs_in(&s), ingests_in(&s)), (1, 0));
    }

    #[test]
    fn a_dropped_writer_removes_its_ingest_and_an_abandoned_one_leaves_it() {
        let (_t, s) = store();
        let mut w = s.ingest_unnamed(Algorithm::Sha256).unwrap().hash_behind();
        w.write_at(0, b"data").unwrap();
        drop(w);
        assert_eq!(ingests_in(&s), 0);
        let mut w = s.ingest_unnamed(Algorithm::Sha256).unwrap();
        w.write_at(0, b"data").unwrap();
        w.abandon();
        assert_eq!((blobs_in(&s), ingests_in(&s)), (0, 1));
    }
}
