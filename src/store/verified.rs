//! What the store knows it verified, so that no later reader hashes a blob again while its file
//! is unchanged. A blob is hashed once, when it is committed (or by fsck, or by a mount's first
//! open of a blob the store has no record of); the store then records, in `meta.db`'s
//! `verified` table, the digest with the identity of the file that held those bytes: inode,
//! size, ctime and mtime (nanoseconds). A file replaced (another inode), written (mtime and
//! ctime), or touched in any way that changes its inode's metadata (chmod, a new link, utimes:
//! ctime, which no one can set back) no longer matches, and is hashed again.
//!
//! Where the store's filesystem has fs-verity, a blob is sealed when its record is written
//! (`FS_IOC_ENABLE_VERITY`, SHA-256, 4 KiB blocks) and the record keeps its fs-verity
//! measurement: a reader that finds the same measurement on the file knows the kernel checks
//! every page it reads against the Merkle tree made from the verified bytes (as composefs does).
//! Whether the filesystem has it is probed once per store handle, on a scratch file in
//! `ingest/`.
//!
//! Records are collected in memory as blobs are placed (`note`) and written in one transaction
//! (`flush`) on a connection of their own with `synchronous=NORMAL`: a record lost in a crash
//! only means that blob is hashed once more, and an import of 20,000 blobs writes one
//! transaction, not 20,000. What is trusted: the files of a store belong to its owner and no
//! one else can write them (see `store::open_with`); a record says what the store's owner's
//! processes hashed. Bit rot under an unchanged inode is fsck's to find.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use crate::digest::Digest;
use crate::error::{Error, Result};

use super::{open_no_follow, records};

/// Records noted and not yet written after which `note` writes them (bounds memory).
pub const FLUSH_AT: usize = 4096;

/// fs-verity's hash algorithm number for SHA-256 (`FS_VERITY_HASH_ALG_SHA256`).
const VERITY_SHA256: u32 = 1;
/// The Merkle tree block size asked for: a page, which every fs-verity filesystem accepts.
const VERITY_BLOCK: u32 = 4096;
/// Bytes of a SHA-256 fs-verity measurement.
const VERITY_DIGEST_LEN: usize = 32;
/// `_IOW('f', 133, struct fsverity_enable_arg)` (linux/fsverity.h; the argument is 128 bytes).
const FS_IOC_ENABLE_VERITY: libc::c_ulong = 0x4080_6685;
/// `_IOWR('f', 134, struct fsverity_digest)` (the argument's fixed part is 4 bytes).
const FS_IOC_MEASURE_VERITY: libc::c_ulong = 0xc004_6686;
/// The scratch file of the fs-verity probe, in `ingest/` (a name no ingest has: ingests are
/// directories).
const PROBE_FILE: &str = ".verity-probe";

/// The identity of a blob's file when its bytes were hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub ino: u64,
    pub size: u64,
    pub ctime_ns: i64,
    pub mtime_ns: i64,
}

impl Identity {
    pub fn of(m: &Metadata) -> Identity {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Identity {
            ino: m.ino(),
            size: m.size(),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        }
    }
}

/// What the store recorded of one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub identity: Identity,
    /// The fs-verity measurement of the file, when it was sealed.
    pub verity: Option<Vec<u8>>,
}

/// How the blobs of a store are checked by a reader that trusts the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    /// The filesystem has fs-verity: blobs are sealed when recorded, the kernel checks reads.
    Verity,
    /// No fs-verity (or a read-only store): the identity of the file is all that is checked.
    Identity,
}

/// The verified records of one store handle: those noted and not yet written, and the
/// connection they are written on.
pub struct Verified {
    db: PathBuf,
    ingest: PathBuf,
    read_only: bool,
    pending: Mutex<Vec<(Digest, Identity)>>,
    conn: Mutex<Option<Connection>>,
    verity: OnceLock<bool>,
}

impl Verified {
    pub(super) fn new(root: &Path, read_only: bool) -> Verified {
        Verified {
            db: root.join(super::DB_FILE),
            ingest: root.join(super::INGEST_DIR),
            read_only,
            pending: Mutex::new(Vec::new()),
            conn: Mutex::new(None),
            verity: OnceLock::new(),
        }
    }

    /// Notes that the file with `identity` holds the verified bytes of `digest` (a blob just
    /// placed under `store_root`). When `FLUSH_AT` are pending already, those are written
    /// first (a failure is logged: their blobs are only hashed again by a later reader).
    pub fn note(&self, digest: &Digest, identity: Identity, store_root: &Path) {
        if self.pending.lock().len() >= FLUSH_AT {
            if let Err(e) = self.flush(store_root) {
                tracing::warn!("verified records not written (their blobs are hashed again): {e}");
            }
        }
        self.pending.lock().push((digest.clone(), identity));
    }

    /// How the store's blobs are sealed (probed once).
    pub fn sealing(&self) -> Sealing {
        if self.verity_supported() {
            Sealing::Verity
        } else {
            Sealing::Identity
        }
    }

    fn verity_supported(&self) -> bool {
        *self
            .verity
            .get_or_init(|| !self.read_only && probe_verity(&self.ingest.join(PROBE_FILE)))
    }

    /// Writes the records noted so far in one transaction, sealing each blob first where the
    /// filesystem has fs-verity. A blob whose file is no longer the one noted is skipped. A
    /// read-only store records nothing.
    pub fn flush(&self, store_root: &Path) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock());
        if pending.is_empty() || self.read_only {
            return Ok(());
        }
        let seal = self.verity_supported();
        let mut rows = Vec::with_capacity(pending.len());
        for (digest, noted) in pending {
            let path = store_root.join(digest.blob_path());
            if seal {
                match seal_blob(&path, noted.ino) {
                    Ok(Some(row)) => rows.push((digest, row)),
                    Ok(None) => {}
                    Err(e) => {
                        // Not sealed: still recorded by its identity (as with no fs-verity),
                        // so later mounts do not hash it again.
                        tracing::warn!("{}: not sealed with fs-verity: {e}", path.display());
                        rows.push((
                            digest,
                            Record {
                                identity: noted,
                                verity: None,
                            },
                        ));
                    }
                }
            } else {
                rows.push((
                    digest,
                    Record {
                        identity: noted,
                        verity: None,
                    },
                ));
            }
        }
        self.write(&rows)
    }

    /// Records `digest` as verified in the file with `identity` now (fsck, or a mount that
    /// hashed it): written at once.
    pub fn record(&self, store_root: &Path, digest: &Digest, identity: Identity) -> Result<()> {
        self.pending.lock().push((digest.clone(), identity));
        self.flush(store_root)
    }

    /// Forgets what was recorded of `digests` (removed from the store, or found damaged).
    pub fn forget(&self, digests: &[Digest]) -> Result<()> {
        if digests.is_empty() || self.read_only {
            return Ok(());
        }
        {
            let mut p = self.pending.lock();
            p.retain(|(d, _)| !digests.contains(d));
        }
        self.with_conn(|conn| {
            let tx = conn.unchecked_transaction()?;
            forget_in(&tx, digests.iter())?;
            tx.commit()
        })
    }

    /// What the store recorded of `digest`, if anything (none on a store whose schema is
    /// older than the `verified` table and could not be upgraded: a read-only one).
    pub fn lookup(&self, digest: &Digest) -> Result<Option<Record>> {
        let found = self.with_conn(|conn| {
            let mut q = match conn.prepare_cached(
                "SELECT ino, size, ctime_ns, mtime_ns, verity FROM verified WHERE digest = ?1",
            ) {
                Ok(q) => q,
                Err(e) if no_table(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            q.query_row([digest.to_string()], |r| {
                Ok(Record {
                    identity: Identity {
                        ino: r.get::<_, i64>(0)? as u64,
                        size: r.get::<_, i64>(1)? as u64,
                        ctime_ns: r.get(2)?,
                        mtime_ns: r.get(3)?,
                    },
                    verity: r.get(4)?,
                })
            })
            .optional()
        })?;
        Ok(found)
    }

    /// Whether `file` (the blob `digest`, opened never through a link) still holds what was
    /// verified: its identity is the one recorded and, when the record has an fs-verity
    /// measurement, the file is sealed with that measurement.
    /// `meta` is the file's metadata, as the caller read it from the open file.
    pub fn trusts(&self, digest: &Digest, file: &File, meta: &Metadata) -> Result<bool> {
        let Some(record) = self.lookup(digest)? else {
            return Ok(false);
        };
        if Identity::of(meta) != record.identity {
            return Ok(false);
        }
        match record.verity {
            None => Ok(true),
            Some(sealed) => Ok(measure(file).ok().flatten().as_deref() == Some(&sealed[..])),
        }
    }

    fn write(&self, rows: &[(Digest, Record)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.with_conn(|conn| {
            let tx = conn.unchecked_transaction()?;
            {
                let mut put = tx.prepare_cached(
                    "INSERT OR REPLACE INTO verified (digest, ino, size, ctime_ns, mtime_ns, \
                     verity) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for (d, r) in rows {
                    let id = r.identity;
                    put.execute(params![
                        d.to_string(),
                        id.ino as i64,
                        id.size as i64,
                        id.ctime_ns,
                        id.mtime_ns,
                        r.verity
                    ])?;
                }
            }
            tx.commit()
        })
    }

    /// Runs `f` on this handle's connection, opened on first use: read-only on a read-only
    /// store, else with `synchronous=NORMAL` (see the module doc).
    fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut guard = self.conn.lock();
        if guard.is_none() {
            let conn = if self.read_only {
                records::open_read_only(&self.db)?
            } else {
                let c = Connection::open_with_flags(&self.db, records::write_flags())?;
                c.pragma_update(None, "synchronous", "NORMAL")?;
                c
            };
            conn.busy_timeout(records::BUSY_TIMEOUT)?;
            *guard = Some(conn);
        }
        let conn = guard.as_ref().expect("opened above");
        f(conn).map_err(|e| Error::Invalid(format!("{}: {e}", self.db.display())))
    }
}

impl Drop for Verified {
    fn drop(&mut self) {
        if self.pending.get_mut().is_empty() {
            return;
        }
        let root = self.db.parent().map(Path::to_owned).unwrap_or_default();
        if let Err(e) = self.flush(&root) {
            tracing::warn!("verified records not written (their blobs are hashed again): {e}");
        }
    }
}

/// Deletes the records of `digests` in `tx` (gc, in the transaction that removes the blobs).
pub(super) fn forget_in<'a>(
    tx: &rusqlite::Transaction<'_>,
    digests: impl Iterator<Item = &'a Digest>,
) -> rusqlite::Result<()> {
    super::records::delete_digests_in(tx, "DELETE FROM verified WHERE digest = ?1", digests)
}

fn no_table(e: &rusqlite::Error) -> bool {
    e.to_string().contains("no such table")
}

/// Seals the blob at `path` with fs-verity (when not sealed already) and returns its record,
/// or None when the file there is no longer inode `ino`.
fn seal_blob(path: &Path, ino: u64) -> io::Result<Option<Record>> {
    let file = open_no_follow(path)?;
    if file.metadata()?.ino() != ino {
        return Ok(None);
    }
    match enable_verity(&file) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        // FS_IOC_ENABLE_VERITY wants write permission on the inode (through a read-only
        // descriptor): a blob is 0444, which stops every owner but root. The owner lends
        // itself u+w for the call; once sealed no one can open the file for writing.
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => enable_verity_as_owner(&file)?,
        Err(e) => return Err(e),
    }
    let verity = measure(&file)?;
    let identity = Identity::of(&file.metadata()?);
    Ok(Some(Record { identity, verity }))
}

/// Seals `file` (a blob of mode 0444 owned by this process's user) with its owner's write
/// bit set for the call, then restores its mode.
fn enable_verity_as_owner(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    file.set_permissions(std::fs::Permissions::from_mode(mode | 0o200))?;
    let sealed = enable_verity(file);
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    match sealed {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// `struct fsverity_enable_arg` of linux/fsverity.h.
#[repr(C)]
struct EnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}

/// `struct fsverity_digest` of linux/fsverity.h with room for a SHA-256 measurement.
#[repr(C)]
struct MeasureArg {
    digest_algorithm: u16,
    digest_size: u16,
    digest: [u8; VERITY_DIGEST_LEN],
}

fn enable_verity(file: &File) -> io::Result<()> {
    let arg = EnableArg {
        version: 1,
        hash_algorithm: VERITY_SHA256,
        block_size: VERITY_BLOCK,
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    // SAFETY: the ioctl reads a fully initialised `fsverity_enable_arg` (no salt, no
    // signature: both pointers null with sizes 0) through a pointer valid for the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_ENABLE_VERITY as _, &arg) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The fs-verity measurement of `file`: None when it is not sealed (or the filesystem has no
/// fs-verity).
fn measure(file: &File) -> io::Result<Option<Vec<u8>>> {
    let mut arg = MeasureArg {
        digest_algorithm: 0,
        digest_size: VERITY_DIGEST_LEN as u16,
        digest: [0; VERITY_DIGEST_LEN],
    };
    // SAFETY: the kernel writes at most `digest_size` bytes after the 4-byte header, and
    // `arg` has that much room; the pointer is valid for the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_MEASURE_VERITY as _, &mut arg) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA | libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL) => Ok(None),
            _ => Err(e),
        };
    }
    if u32::from(arg.digest_algorithm) != VERITY_SHA256
        || usize::from(arg.digest_size) != VERITY_DIGEST_LEN
    {
        return Ok(None);
    }
    Ok(Some(arg.digest.to_vec()))
}

/// Whether the filesystem of `probe` (a path in the store's ingest area) seals files with
/// fs-verity: a one-byte scratch file is made, sealed and removed.
fn probe_verity(probe: &Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(probe);
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(probe)
        .and_then(|mut f| f.write_all(b"\0"));
    let supported = made.is_ok()
        && open_no_follow(probe)
            .and_then(|f| enable_verity(&f).map(|()| f))
            .and_then(|f| measure(&f))
            .is_ok_and(|m| m.is_some());
    if made.is_ok() {
        let _ = std::fs::remove_file(probe);
    }
    supported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_arguments_have_the_kernels_layout() {
        // linux/fsverity.h: struct fsverity_enable_arg is 128 bytes, the size encoded in
        // FS_IOC_ENABLE_VERITY; struct fsverity_digest's header is 4 bytes.
        assert_eq!(std::mem::size_of::<EnableArg>(), 128);
        assert_eq!((FS_IOC_ENABLE_VERITY >> 16) & 0x3fff, 128);
        assert_eq!(std::mem::offset_of!(MeasureArg, digest), 4);
        assert_eq!((FS_IOC_MEASURE_VERITY >> 16) & 0x3fff, 4);
        assert_eq!(FS_IOC_ENABLE_VERITY & 0xffff, (u64::from(b'f') << 8) | 133);
        assert_eq!(FS_IOC_MEASURE_VERITY & 0xffff, (u64::from(b'f') << 8) | 134);
    }

    #[test]
    fn identity_changes_with_content_and_metadata() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let a = Identity::of(&std::fs::metadata(&p).unwrap());
        assert_eq!(a, Identity::of(&std::fs::metadata(&p).unwrap()));
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        let b = Identity::of(&std::fs::metadata(&p).unwrap());
        assert_ne!(a, b, "a chmod changes ctime");
        assert_eq!((a.ino, a.size, a.mtime_ns), (b.ino, b.size, b.mtime_ns));
    }

    #[test]
    fn the_probe_leaves_nothing_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join(PROBE_FILE);
        // This machine's kernel may or may not have fs-verity; either way the probe answers
        // and removes its file, and a file that is not sealed measures as None.
        let _ = probe_verity(&probe);
        assert!(!probe.exists());
        std::fs::write(dir.path().join("plain"), b"x").unwrap();
        let f = File::open(dir.path().join("plain")).unwrap();
        assert_eq!(measure(&f).unwrap(), None);
    }
}
