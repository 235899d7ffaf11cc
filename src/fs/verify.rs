//! Blobs are checked when they are opened, so the mount never serves wrong bytes: the store file
//! must exist, be a regular file of the descriptor's size and hold the content its digest
//! names. What the store verified before is trusted while its file is unchanged: a blob the
//! store recorded as verified (at commit, by fsck, by an earlier mount; see
//! `store::verified`) whose file has the recorded identity (inode, size, ctime, mtime, and the
//! fs-verity measurement where the blob was sealed) is served without hashing it. Any other is
//! hashed on its first open, and recorded when it matches. With `verify_reads`
//! (`mount --verify-reads`) every blob is hashed on its first open in the mount, whatever the
//! records say. Either way the result is remembered for the mount's life with the file's
//! identity (device, inode, size, mtime, ctime); a file replaced or modified since is checked
//! again. Opens of one blob wait for a single check; different blobs are checked in parallel.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::content::{Provider, Trust};
use crate::digest::Digest;
use crate::error::Error;

use super::error::{FsError, FsResult};

/// Read size while hashing a blob.
const HASH_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: (i64, i64),
    ctime_ns: (i64, i64),
}

impl Identity {
    fn of(m: &std::fs::Metadata) -> Identity {
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: (m.mtime(), m.mtime_nsec()),
            ctime_ns: (m.ctime(), m.ctime_nsec()),
        }
    }
}

type Slot = Arc<Mutex<Option<Identity>>>;

/// The blobs checked so far.
#[derive(Default)]
pub struct Verifier {
    checked: Mutex<HashMap<Digest, Slot>>,
    /// Hash every blob on its first open, whatever the store recorded.
    verify_reads: bool,
    /// Blobs hashed so far (for tests and logs).
    hashed: AtomicU64,
}

impl Verifier {
    /// A verifier that trusts the store's records of what it verified, or, with
    /// `verify_reads`, hashes every blob on its first open.
    pub fn new(verify_reads: bool) -> Verifier {
        Verifier {
            checked: Mutex::default(),
            verify_reads,
            hashed: AtomicU64::new(0),
        }
    }

    /// How blobs are checked, in a line for the mount's log.
    pub fn mode(&self, store: &dyn Provider) -> &'static str {
        if self.verify_reads {
            return "blobs: every blob hashed on its first open (--verify-reads)";
        }
        match store.trust() {
            Trust::None => {
                "blobs: every blob hashed on its first open (the store keeps no records)"
            }
            Trust::Verity => {
                "blobs: verified at commit and sealed with fs-verity: the kernel checks every \
                 read; others hashed on first open"
            }
            Trust::Identity => {
                "blobs: verified at commit, served unhashed while their file is unchanged (no \
                 fs-verity here); others hashed on first open"
            }
        }
    }

    /// How many blobs were hashed (not trusted from the store's records) so far.
    pub fn hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// Opens the blob `digest` of `size` bytes, checked.
    pub fn open(&self, store: &dyn Provider, digest: &Digest, size: u64) -> FsResult<File> {
        let damaged = |message: String| FsError::Damaged {
            digest: digest.clone(),
            message,
        };
        let path = store.locate(digest);
        // Never through a link planted in the store.
        let file = store.open_file(digest).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => damaged("missing from the store".into()),
            _ => FsError::Store(Error::io(&path, e)),
        })?;
        let meta = file
            .metadata()
            .map_err(|e| FsError::Store(Error::io(&path, e)))?;
        if !meta.is_file() {
            return Err(damaged("not a regular file in the store".into()));
        }
        if meta.size() != size {
            return Err(damaged(format!(
                "size in the store is {} bytes, expected {size}",
                meta.size()
            )));
        }
        let id = Identity::of(&meta);
        let slot = self
            .checked
            .lock()
            .entry(digest.clone())
            .or_default()
            .clone();
        let mut done = slot.lock();
        if *done == Some(id) {
            return Ok(file);
        }
        // A provider that keeps no records (`Trust::None`) is not asked: its blobs are hashed,
        // as the mount's log line says.
        if !self.verify_reads && store.trust() != Trust::None {
            match store.trusts(digest, &file, &meta) {
                Ok(true) => {
                    *done = Some(id);
                    return Ok(file);
                }
                Ok(false) => {}
                // The records cannot be read: hash it, as with no record.
                Err(e) => tracing::warn!("blob {digest}: {e}"),
            }
        }
        self.hashed.fetch_add(1, Ordering::Relaxed);
        let found = hash_file(&file, digest).map_err(|e| FsError::Store(Error::io(&path, e)))?;
        if found != *digest {
            return Err(damaged(format!(
                "content in the store does not match its digest (found {found})"
            )));
        }
        if let Err(e) = store.note_verified(digest, &meta) {
            tracing::warn!("blob {digest}: verified, not recorded: {e}");
        }
        *done = Some(id);
        Ok(file)
    }
}

fn hash_file(file: &File, digest: &Digest) -> io::Result<Digest> {
    // SAFETY: posix_fadvise only takes an fd we own and plain integers; it is advice.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    let mut buf = vec![0u8; HASH_CHUNK];
    crate::digest::hash_file(digest.algorithm(), file, None, &mut buf, |_| {})
}
