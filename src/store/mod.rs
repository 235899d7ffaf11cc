//! The content store: verified read-only blobs under `blobs/<alg>/<hex>` (containerd's layout,
//! which is also an OCI layout's), ingests under `ingest/`, and the image records in `meta.db`.
//! Several processes may share one store: blobs appear only by atomic rename, records change
//! only in SQLite transactions.
//!
//! Opening a store checks what it is made of before anything is read or written: the store,
//! `blobs/`, `blobs/<alg>/`, `ingest/`, `quarantine/` and `meta.db` (with `-wal`, `-shm`) must
//! be no symbolic link, belong to the caller and be writable by no one else, and the
//! directories above it must belong to root or the caller (or be sticky, as /tmp). Then no one
//! else can plant a link in it, and every later path in it is the store's own. Directories it
//! creates get fixed modes whatever the umask. A store on a read-only filesystem opens for
//! reading only (`Access::Read`), without leases.

pub mod batch;
pub mod check;
pub mod fsck;
pub mod gc;
mod ingest;
mod leases;
mod records;
pub mod verified;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, IoContext, Result, StoreProblem};
use crate::oci::{self, BlobSource, Descriptor};

pub use crate::content::WHOLE;
pub use batch::{pause_point, Batch, BATCH_BLOBS, BATCH_BYTES, BATCH_KEPT, PAUSE_ENV};
pub use ingest::{
    process_alive, remove_abandoned, sync_dir, BLOB_MODE, COPY_CHUNK, DATA_FILE, RESUME_KEEP,
};
pub use leases::{Lease, Leases};
pub use records::{check_record, now_ms, Image, Records};
pub use writer::BlobWriter;

/// Directory of verified blobs.
pub const BLOBS_DIR: &str = "blobs";
/// Directory of blobs being written.
pub const INGEST_DIR: &str = "ingest";
/// Where fsck --repair moves blobs that do not match their digest.
pub const QUARANTINE_DIR: &str = "quarantine";
/// The image-record database.
pub const DB_FILE: &str = "meta.db";
/// Environment variable naming the store when `--store` is absent.
pub const STORE_ENV: &str = "LAYOUTFS_STORE";
/// Store of the root user when nothing else is said.
pub const SYSTEM_STORE: &str = "/var/lib/layoutfs";
/// Mode of the store directory, `blobs/` and `blobs/<alg>/` when layoutfs creates them (blobs
/// are readable by all, as a layout directory's are), whatever the umask.
pub const SHARED_DIR_MODE: u32 = 0o755;
/// Mode of `ingest/` and `quarantine/` (and its `<alg>/`) when layoutfs creates them: data being
/// written and corrupt blobs are the owner's only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode bits that let users other than the owner change a directory or file.
const OTHERS_WRITE: u32 = 0o022;
/// The sticky bit: in a directory with it, only an entry's owner may rename or remove it.
const STICKY: u32 = 0o1000;
/// The suffixes of SQLite's companion files of `meta.db` in WAL mode.
const DB_COMPANIONS: [&str; 2] = ["-wal", "-shm"];

/// What an opener of a store means to do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read images and blobs (images, export, fsck, gc --dry-run, a read-only mount): works on
    /// a read-only filesystem too, read-only and without leases there.
    Read,
    /// Change the store: refused, naming the store, when its filesystem is read-only.
    Write,
}

/// The mark of a store whose `meta.db` was created (missing or empty) while `blobs/` held
/// blobs: its records were lost, and gc refuses until `gc --force` or `fsck --repair`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// Blob files in the store when the database was created.
    pub blobs: u64,
    /// When, in milliseconds since the Unix epoch.
    pub since: i64,
}

/// An open store.
pub struct Store {
    root: PathBuf,
    records: Records,
    leases: Arc<Leases>,
    /// What this handle verified and has still to record, and the records (see `verified`).
    verified: Arc<verified::Verified>,
    read_only: bool,
    adopted: Option<Adopted>,
    /// (device, inode) of `meta.db` once opened: a database deleted or replaced since is
    /// told by `db_replaced`.
    db_identity: (u64, u64),
}

impl Store {
    /// Opens the store at `root` for writing, creating it on first use.
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_with(root, Access::Write)
    }

    /// Opens the store at `root` for `access`, creating it on first use where the filesystem
    /// is writable. Refuses, naming the path, a store or store part that is a symbolic link,
    /// not of its kind, owned by another user or writable by others (see the module doc).
    pub fn open_with(root: &Path, access: Access) -> Result<Store> {
        let root = prepare_root(root)?;
        let read_only = filesystem_read_only(&root)?;
        if read_only && access == Access::Write {
            return Err(Error::store(&root, StoreProblem::ReadOnly));
        }
        let dirs = [(BLOBS_DIR.to_owned(), SHARED_DIR_MODE)]
            .into_iter()
            .chain(Algorithm::ALL.map(|a| (format!("{BLOBS_DIR}/{}", a.name()), SHARED_DIR_MODE)))
            .chain([(INGEST_DIR.to_owned(), PRIVATE_DIR_MODE)]);
        for (dir, mode) in dirs {
            let path = root.join(dir);
            if read_only {
                check_part(&path, Kind::Dir)?;
            } else {
                ensure_dir(&path, mode)?;
            }
        }
        let quarantine = root.join(QUARANTINE_DIR);
        for dir in [quarantine.clone()]
            .into_iter()
            .chain(Algorithm::ALL.map(|a| quarantine.join(a.name())))
        {
            check_part_if_there(&dir, Kind::Dir)?;
        }
        let db = root.join(DB_FILE);
        for file in std::iter::once(db.clone()).chain(DB_COMPANIONS.map(|s| companion(&db, s))) {
            check_part_if_there(&file, Kind::File)?;
        }
        // A database that cannot be opened is named: SQLite's words do not say which file.
        let named = |e: Error| match e {
            Error::Db(source) => Error::Invalid(format!("{}: {source}", db.display())),
            e => e,
        };
        let (records, leases) = if read_only {
            (
                Records::open_read_only(&db).map_err(named)?,
                Leases::disabled(),
            )
        } else {
            let count = || count_blob_files(&root);
            let records = Records::open_in_store(&db, &count).map_err(named)?;
            (records, Leases::open(&db).map_err(named)?)
        };
        let verified = Arc::new(verified::Verified::new(&root, read_only));
        let mut store = Store {
            root,
            records,
            leases: Arc::new(leases),
            verified,
            read_only,
            adopted: None,
            db_identity: identity(&db)?,
        };
        store.adopted = store.read_adopted()?;
        Ok(store)
    }

    /// Whether the store is on a read-only filesystem (and was opened for reading).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Whether `meta.db` was deleted or replaced since this store was opened: what this
    /// process wrote since went to a file no other process reads. A long-running user of the
    /// store (an import, the mount) can ask before it reports success.
    pub fn db_replaced(&self) -> bool {
        identity(&self.root.join(DB_FILE)).map_or(true, |id| id != self.db_identity)
    }

    /// The mark of lost records, as it was when the store was opened.
    pub fn adopted(&self) -> Option<Adopted> {
        self.adopted
    }

    /// A new connection to `meta.db`, as gc and fsck --repair use: never through a link,
    /// read-only on a read-only filesystem.
    pub(crate) fn connect(&self) -> Result<rusqlite::Connection> {
        let db = self.root.join(DB_FILE);
        let conn = if self.read_only {
            records::open_read_only(&db)?
        } else {
            rusqlite::Connection::open_with_flags(&db, records::write_flags())?
        };
        conn.busy_timeout(records::BUSY_TIMEOUT)?;
        Ok(conn)
    }

    fn read_adopted(&self) -> Result<Option<Adopted>> {
        // On the records' own connection: no second connection at every open.
        Ok(self.records.with_conn(adopted_in)?)
    }

    /// The store to use when `--store` is not given: `$LAYOUTFS_STORE`, else the system store
    /// for root, else `$XDG_DATA_HOME/layoutfs` or `~/.local/share/layoutfs`.
    pub fn default_root() -> Result<PathBuf> {
        if let Some(p) = std::env::var_os(STORE_ENV).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return Ok(PathBuf::from(SYSTEM_STORE));
        }
        if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p).join("layoutfs"));
        }
        match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(h) => Ok(PathBuf::from(h).join(".local/share/layoutfs")),
            None => Err(Error::Invalid(
                "no store: pass --store DIR or set LAYOUTFS_STORE".into(),
            )),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn records(&self) -> &Records {
        &self.records
    }

    /// What the store knows it verified (see `verified`).
    pub fn verified(&self) -> &verified::Verified {
        &self.verified
    }

    /// The same, for a writer that outlives a borrow of the store.
    pub(crate) fn verified_handle(&self) -> Arc<verified::Verified> {
        self.verified.clone()
    }

    /// Writes the verified records of the blobs placed so far through this handle (one
    /// transaction; sealed with fs-verity first where the filesystem has it).
    pub fn flush_verified(&self) -> Result<()> {
        self.verified.flush(&self.root)
    }

    /// Whether `id` names a live lease of this store (see `Leases::knows`).
    pub fn knows_lease(&self, id: &str) -> Result<bool> {
        self.leases.knows(id)
    }

    /// Starts a lease: what it holds, gc keeps (see `leases`).
    pub fn lease(&self) -> Result<Lease> {
        self.leases.create()
    }

    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.blob_path())
    }

    pub fn has_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blob_size(digest)?.is_some())
    }

    /// Starts writing a blob that must hash to `expected` (and be `size` bytes, if known).
    pub fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<BlobWriter> {
        BlobWriter::start(self, expected.algorithm(), Some(expected), size)
    }

    /// Starts or continues writing blob `expected` of `size` bytes in its kept ingest,
    /// `ingest/r-<alg>-<hex>/`, which outlives the writer (see `content::Ingester::resume`):
    /// `written()` says how much is there already. Another writer holding it: a new, ordinary
    /// writer starting at 0.
    pub fn resume(&self, expected: &Digest, size: u64) -> Result<BlobWriter> {
        BlobWriter::resume(self, expected, size)
    }

    /// Starts writing a blob whose digest is known only at the end: it is hashed with `alg`
    /// and named by that hash at commit (`BlobWriter::commit_named`).
    pub fn ingest_unnamed(&self, alg: Algorithm) -> Result<BlobWriter> {
        BlobWriter::start(self, alg, None, None)
    }

    /// Opens a blob file for reading, never through a symbolic link (a link in its place is
    /// "not a regular file").
    pub fn open_blob_file(&self, digest: &Digest) -> io::Result<File> {
        open_no_follow(&self.blob_path(digest))
    }

    /// Opens a blob for reading and checks that its size is `desc.size`: stored sizes are
    /// never trusted blindly.
    pub fn open_blob(&self, desc: &Descriptor) -> Result<File> {
        let path = self.blob_path(&desc.digest);
        let file = self
            .open_blob_file(&desc.digest)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::MissingBlob {
                    digest: desc.digest.clone(),
                    referrer: None,
                },
                _ => Error::io(&path, e),
            })?;
        sized(file, desc, &path.display().to_string())
    }
}

/// `file`, the blob `desc` names, if it is `desc.size` bytes (`at` names it in errors).
pub(crate) fn sized(file: File, desc: &Descriptor, at: &str) -> Result<File> {
    let size = file.metadata().at(at)?.size();
    if size != desc.size {
        return Err(Error::SizeMismatch {
            digest: desc.digest.clone(),
            expected: desc.size,
            found: size,
        });
    }
    Ok(file)
}

impl Store {
    /// The metadata of blob `digest`'s file, never through a link: None when it is not there,
    /// an error when something else than a regular file is in its place.
    pub(crate) fn blob_metadata(&self, digest: &Digest) -> Result<Option<fs::Metadata>> {
        let path = self.blob_path(digest);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m)),
            Ok(_) => Err(Error::io(
                &path,
                std::io::Error::other("not a regular file"),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }
}

impl BlobSource for Store {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.blob_metadata(digest)?.map(|m| m.size()))
    }

    /// Reads a manifest or index and re-hashes it: they are small, and a damaged one would
    /// mislead every walk.
    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        oci::check_json_size(&format!("blob {}", desc.digest), desc.size)?;
        let mut bytes = Vec::with_capacity(desc.size as usize);
        self.open_blob(desc)?
            .take(desc.size + 1)
            .read_to_end(&mut bytes)
            .at(self.blob_path(&desc.digest))?;
        check_bytes(desc, &bytes)?;
        Ok(bytes)
    }
}

/// The adoption mark in the database `conn` is connected to.
pub(crate) fn adopted_in(conn: &rusqlite::Connection) -> rusqlite::Result<Option<Adopted>> {
    Ok(records::adopted_mark(conn)?.map(|(blobs, since)| Adopted {
        blobs: u64::try_from(blobs).unwrap_or(0),
        since,
    }))
}

/// Clears the adoption mark (the user said the store's blobs may be judged by its records).
pub(crate) fn clear_adopted(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    records::clear_adopted_mark(conn)
}

/// Room on the filesystem that holds `root` (statvfs).
pub fn space(root: &Path) -> io::Result<crate::content::Space> {
    let c =
        std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(crate::content::Space {
        blocks: st.f_blocks,
        bfree: st.f_bfree,
        bavail: st.f_bavail,
        files: st.f_files,
        ffree: st.f_ffree,
        bsize: st.f_bsize as u32,
        namelen: st.f_namemax as u32,
        frsize: st.f_frsize as u32,
    })
}

/// Opens a file of the store for reading without following a link in its last component: a
/// link there fails with ELOOP, reported as "not a regular file".
pub fn open_no_follow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::other("not a regular file (a symbolic link)")
            } else {
                e
            }
        })
}

/// The kind a store part must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    File,
}

/// This process's effective user.
pub(super) fn caller() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Checks one part of the store: no link, of its kind, the caller's, writable by no one else.
fn check_part(path: &Path, kind: Kind) -> Result<()> {
    let meta = fs::symlink_metadata(path).at(path)?;
    check_meta(path, &meta, kind)
}

fn check_part_if_there(path: &Path, kind: Kind) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) => check_meta(path, &meta, kind),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

pub(super) fn check_meta(path: &Path, meta: &fs::Metadata, kind: Kind) -> Result<()> {
    let problem = if meta.file_type().is_symlink() {
        Some(StoreProblem::Symlink)
    } else if kind == Kind::Dir && !meta.is_dir() {
        Some(StoreProblem::NotADirectory)
    } else if kind == Kind::File && !meta.is_file() {
        Some(StoreProblem::NotAFile)
    } else if meta.uid() != caller() {
        Some(StoreProblem::Owner {
            owner: meta.uid(),
            you: caller(),
        })
    } else if meta.mode() & OTHERS_WRITE != 0 {
        Some(StoreProblem::Writable {
            mode: meta.mode() & 0o7777,
        })
    } else {
        None
    };
    problem.map_or(Ok(()), |p| Err(Error::store(path, p)))
}

/// An error creating a store directory: EROFS says the filesystem is read-only.
fn creating(path: &Path, e: io::Error) -> Error {
    if e.raw_os_error() == Some(libc::EROFS) {
        Error::store(path, StoreProblem::ReadOnly)
    } else {
        Error::io(path, e)
    }
}

/// Creates directory `path` with exactly `mode` (the umask does not apply) unless it exists,
/// then checks it as a store part.
pub(super) fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    make_dir(path, mode)?;
    check_part(path, Kind::Dir)
}

/// Creates directory `path` with exactly `mode` unless something is there already.
fn make_dir(path: &Path, mode: u32) -> Result<()> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => set_dir_mode(path, mode),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(creating(path, e)),
    }
}

/// Sets a directory's mode through a descriptor opened without following a link.
fn set_dir_mode(path: &Path, mode: u32) -> Result<()> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .at(path)?;
    dir.set_permissions(fs::Permissions::from_mode(mode))
        .at(path)
}

/// Makes sure the store directory is there (creating it and its parents on first use), and
/// is a directory and no link; returns its path with every link above it resolved, so that
/// the directories above it checked here are the ones used later.
fn prepare_root(root: &Path) -> Result<PathBuf> {
    check_links_above(root)?;
    match fs::symlink_metadata(root) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::store(root, StoreProblem::Symlink))
        }
        Ok(m) if !m.is_dir() => return Err(Error::store(root, StoreProblem::NotADirectory)),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Nothing is created below a directory that could not be trusted afterwards.
            let existing = root
                .ancestors()
                .skip(1)
                .map(|a| {
                    if a.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        a
                    }
                })
                .find(|a| a.exists());
            if let Some(existing) = existing {
                let real = fs::canonicalize(existing).at(existing)?;
                for dir in real.ancestors() {
                    check_ancestor(dir)?;
                }
            }
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                // Fixed modes: the umask can only take bits away.
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(SHARED_DIR_MODE)
                    .create(parent)
                    .map_err(|e| creating(parent, e))?;
            }
            make_dir(root, SHARED_DIR_MODE)?;
        }
        Err(e) => return Err(Error::io(root, e)),
    }
    let real = fs::canonicalize(root).at(root)?;
    check_part(&real, Kind::Dir)?;
    for dir in real.ancestors().skip(1) {
        check_ancestor(dir)?;
    }
    Ok(real)
}

/// Refuses a symbolic link on the way to the store that another user made: resolving it
/// would let that user choose where the store is.
fn check_links_above(root: &Path) -> Result<()> {
    let mut path = PathBuf::new();
    for c in root.components() {
        path.push(c);
        if path == root {
            break;
        }
        if let Ok(m) = fs::symlink_metadata(&path) {
            let owner = m.uid();
            if m.file_type().is_symlink() && owner != 0 && owner != caller() {
                return Err(Error::store(&path, StoreProblem::AncestorOwner { owner }));
            }
        }
    }
    Ok(())
}

/// A directory above the store must belong to root or the caller, and be writable by no one
/// else unless it is sticky: otherwise its owner, or anyone, could move the store away and
/// put another in its place.
fn check_ancestor(dir: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(dir).at(dir)?;
    let owner = meta.uid();
    if owner != 0 && owner != caller() {
        return Err(Error::store(dir, StoreProblem::AncestorOwner { owner }));
    }
    let mode = meta.mode() & 0o7777;
    if mode & OTHERS_WRITE != 0 && mode & STICKY == 0 {
        return Err(Error::store(dir, StoreProblem::AncestorWritable { mode }));
    }
    Ok(())
}

/// Whether the filesystem holding `path` is mounted read-only.
fn filesystem_read_only(path: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::io(path, io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(Error::io(path, io::Error::last_os_error()));
    }
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

/// (device, inode) of a file, not following a link.
fn identity(path: &Path) -> Result<(u64, u64)> {
    let m = fs::symlink_metadata(path).at(path)?;
    Ok((m.dev(), m.ino()))
}

/// `meta.db` with a suffix (`-wal`, `-shm`).
fn companion(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// How many entries `blobs/<alg>/` hold: whether a store has content its records may cover.
fn count_blob_files(root: &Path) -> Result<usize> {
    let mut n = 0;
    for alg in Algorithm::ALL {
        let dir = root.join(BLOBS_DIR).join(alg.name());
        n += fs::read_dir(&dir).at(&dir)?.count();
    }
    Ok(n)
}

/// Checks that `bytes` are the content `desc` describes.
pub fn check_bytes(desc: &Descriptor, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 != desc.size {
        return Err(Error::SizeMismatch {
            digest: desc.digest.clone(),
            expected: desc.size,
            found: bytes.len() as u64,
        });
    }
    let found = Digest::of(desc.digest.algorithm(), bytes);
    if found != desc.digest {
        return Err(Error::DigestMismatch {
            expected: desc.digest.clone(),
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A new store in a temporary directory (for the store's unit tests).
    pub(crate) fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store")).unwrap();
        (dir, s)
    }

    #[test]
    fn a_database_deleted_under_an_open_store_is_noticed() {
        let (_t, s) = store();
        assert!(!s.db_replaced());
        let db = s.root().join(DB_FILE);
        for suffix in ["", "-wal", "-shm"] {
            let _ = fs::remove_file(companion(&db, suffix));
        }
        assert!(s.db_replaced(), "deleted");
        let again = Store::open(s.root()).unwrap();
        assert!(s.db_replaced(), "replaced by a new one");
        assert!(!again.db_replaced());
    }

    #[test]
    fn many_first_opens_of_a_new_store_at_once_all_succeed() {
        // SQLite refuses some of these at once with BUSY (no busy handler runs): the journal
        // switch to WAL and the first schema write race.
        const HANDLES: usize = 8;
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("store");
            let start = std::sync::Barrier::new(HANDLES);
            std::thread::scope(|scope| {
                let opened: Vec<_> = (0..HANDLES)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            Store::open(&root).map(|_| ())
                        })
                    })
                    .collect();
                for h in opened {
                    h.join().unwrap().unwrap();
                }
            });
        }
    }

    fn blobs_in(s: &Store) -> usize {
        Algorithm::ALL
            .iter()
            .map(|a| {
                fs::read_dir(s.root().join(BLOBS_DIR).join(a.name()))
                    .unwrap()
                    .count()
            })
            .sum()
    }

    fn ingests_in(s: &Store) -> usize {
        fs::read_dir(s.root().join(INGEST_DIR)).unwrap().count()
    }

    #[test]
    fn commit_verifies_then_places_a_read_only_blob() {
        let (_t, s) = store();
        for alg in Algorithm::ALL {
            let d = Digest::of(alg, b"hello");
            let mut w = s.ingest(&d, Some(5)).unwrap();
            w.write_all(b"hel").unwrap();
            assert!(!s.has_blob(&d).unwrap(), "visible before commit");
            w.write_all(b"lo").unwrap();
            assert!(w.commit().unwrap());
            let meta = fs::metadata(s.blob_path(&d)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, BLOB_MODE);
            assert_eq!(fs::read(s.blob_path(&d)).unwrap(), b"hello");
            // Committing the same content again is a success that stores nothing new.
            let mut w = s.ingest(&d, None).unwrap();
            w.write_all(b"hello").unwrap();
            assert!(!w.commit().unwrap());
        }
        assert_eq!(blobs_in(&s), 2);
        assert_eq!(ingests_in(&s), 0);
    }

    #[test]
    fn failed_ingests_leave_nothing() {
        let (_t, s) = store();
        let d = Digest::of(Algorithm::Sha256, b"hello");
        type Case = (&'static [u8], Option<u64>, fn(&Error) -> bool);
        let cases: [Case; 4] = [
            (b"hellp", Some(5), |e| {
                matches!(e, Error::DigestMismatch { .. })
            }),
            (b"hell", Some(5), |e| {
                matches!(e, Error::SizeMismatch { found: 4, .. })
            }),
            (b"hello!", None, |e| {
                matches!(e, Error::DigestMismatch { .. })
            }),
            (b"hell", None, |e| matches!(e, Error::DigestMismatch { .. })),
        ];
        for (bytes, size, want) in cases {
            let mut w = s.ingest(&d, size).unwrap();
            w.write_all(bytes).unwrap();
            let err = w.commit().unwrap_err();
            assert!(want(&err), "{bytes:?}: {err}");
        }
        // A write past the known size fails at once.
        let mut w = s.ingest(&d, Some(5)).unwrap();
        assert!(matches!(
            w.write_all(b"hello!"),
            Err(Error::SizeMismatch { found: 6, .. })
        ));
        drop(w);
        // Abandoned without a commit.
        let mut w = s.ingest(&d, Some(5)).unwrap();
        w.write_all(b"he").unwrap();
        drop(w);
        assert_eq!(blobs_in(&s), 0);
        assert_eq!(ingests_in(&s), 0);
    }

    #[test]
    fn concurrent_writers_of_one_digest_all_succeed_and_store_it_once() {
        let (_t, s) = store();
        let data = vec![7u8; 3 << 20];
        let d = Digest::of(Algorithm::Sha256, &data);
        let placed: Vec<bool> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    sc.spawn(|| {
                        let mut w = s.ingest(&d, Some(data.len() as u64)).unwrap();
                        for chunk in data.chunks(64 << 10) {
                            w.write_all(chunk).unwrap();
                        }
                        w.commit().unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(placed.iter().filter(|p| **p).count() <= 1, "{placed:?}");
        assert_eq!(fs::read(s.blob_path(&d)).unwrap(), data);
        assert_eq!(blobs_in(&s), 1);
        assert_eq!(ingests_in(&s), 0);
    }

    #[test]
    fn reads_check_stored_sizes_and_small_blob_content() {
        let (_t, s) = store();
        let d = Digest::of(Algorithm::Sha256, b"{}");
        let mut w = s.ingest(&d, None).unwrap();
        w.write_all(b"{}").unwrap();
        w.commit().unwrap();
        let mut desc = crate::oci::tests::desc("application/json", d.clone(), 2);
        assert_eq!(s.read_small(&desc).unwrap(), b"{}");
        desc.size = 3;
        assert!(matches!(
            s.open_blob(&desc),
            Err(Error::SizeMismatch { .. })
        ));
        // Damage on disk is caught when a manifest is read.
        let p = s.blob_path(&d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"[]").unwrap();
        desc.size = 2;
        assert!(matches!(
            s.read_small(&desc),
            Err(Error::DigestMismatch { .. })
        ));
        let other = Digest::of(Algorithm::Sha256, b"other");
        desc.digest = other;
        assert!(matches!(s.open_blob(&desc), Err(Error::MissingBlob { .. })));
    }
}
