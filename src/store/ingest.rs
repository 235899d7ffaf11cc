//! The ingest area, `ingest/`: each blob being written has a directory `ingest/<id>/` (0700)
//! holding its bytes in `data` (created exclusively, 0600). The writer (`BlobWriter`, in
//! `writer.rs`, what `Store::ingest` and `Store::resume` return) hashes them and calls `place`
//! at commit: fsync, mode 0444, rename into `blobs/<alg>/<hex>` without replacing, a check that
//! the file placed is the file written, fsync of the directory. A blob already present is a
//! success. Nothing is under `blobs/` before its size and digest are checked.
//!
//! Two kinds of ingest. A temporary one is named `<pid>-<n>-<nanoseconds>` (decimal numbers)
//! and goes with its writer. A kept one, `r-<alg>-<hex>` (`open_kept`), is the one ingest of a
//! digest that outlives its writer (dropped, or its process killed) so that the next
//! `Store::resume` of the digest continues from its bytes; its live writer holds an exclusive
//! `flock` on the directory, so two writers never share it. Sweeping (`remove_abandoned`, and
//! gc's) removes temporary ingests of processes that are gone, and kept ones that no writer
//! holds once their data is untouched for `RESUME_KEEP` (gc: its grace). It removes only
//! directories named so, of ours, never through a link, and a kept one only when it holds
//! nothing but a data file of ours: anything else under `ingest/` is left alone and reported.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result, StoreProblem};

use super::verified::{Identity, Verified};
use super::{caller, check_meta, Kind, Store};

/// Mode of a committed blob: read-only for everyone.
pub const BLOB_MODE: u32 = 0o444;
/// Bytes moved per read/write while copying into an ingest.
pub const COPY_CHUNK: usize = 1 << 20;
/// Dirty bytes after which the kernel is asked to start writing back, so that the final fsync
/// finds little left to do and disk writes overlap hashing.
pub(super) const WRITEBACK_STEP: u64 = 16 << 20;

/// Mode of one ingest's directory.
const INGEST_ENTRY_MODE: u32 = 0o700;
/// Mode of an ingest's data file.
const DATA_MODE: u32 = 0o600;

/// What a kept ingest's directory name starts with: `r-<alg>-<hex>`.
const KEPT_PREFIX: &str = "r-";

/// How long a kept ingest that no writer holds stays, by its data file's modification time, so
/// that a pull killed and run again resumes it: a new mount removes older ones, gc those older
/// than its grace (`gc::DEFAULT_GRACE`, as long, unless `--grace` says).
pub const RESUME_KEEP: Duration = Duration::from_secs(24 * 3600);

/// The file in an ingest directory that holds the bytes.
pub const DATA_FILE: &str = "data";

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Checks that `len` bytes are the size a descriptor gives for `expected`, when it gives one.
pub(super) fn check_size(expected: &Digest, expected_size: Option<u64>, len: u64) -> Result<()> {
    match expected_size {
        Some(size) if size != len => Err(Error::SizeMismatch {
            digest: expected.clone(),
            expected: size,
            found: len,
        }),
        _ => Ok(()),
    }
}

/// Checks that bytes hashing to `found` are the blob `expected`.
pub(super) fn check_digest(expected: &Digest, found: Digest) -> Result<()> {
    if found == *expected {
        Ok(())
    } else {
        Err(Error::DigestMismatch {
            expected: expected.clone(),
            found,
        })
    }
}

/// `<pid>-<n>-<nanoseconds>`: unique among this process's ids of one counter, and across
/// processes and pid reuse; the owner's pid comes first for `process_alive`.
pub(super) fn process_unique_id(counter: &AtomicU64) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        counter.fetch_add(1, Ordering::Relaxed)
    )
}

/// The owner's pid of an ingest named `name`, when the name is an ingest id as
/// `process_unique_id` makes it (`<pid>-<n>-<nanoseconds>`, decimal); None for anything else.
pub(super) fn ingest_owner(name: &std::ffi::OsStr) -> Option<i32> {
    let name = name.to_str()?;
    let mut parts = name.split('-');
    let (pid, n, nanos) = (parts.next()?, parts.next()?, parts.next()?);
    let decimal = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if parts.next().is_some() || ![pid, n, nanos].into_iter().all(decimal) {
        return None;
    }
    n.parse::<u64>().ok()?;
    nanos.parse::<u128>().ok()?;
    pid.parse::<i32>().ok().filter(|p| *p > 0)
}

/// The name of the kept ingest of `digest`: `r-<alg>-<hex>`.
pub(super) fn kept_name(digest: &Digest) -> String {
    format!(
        "{KEPT_PREFIX}{}-{}",
        digest.algorithm().name(),
        digest.hex()
    )
}

/// Whether `name` is the name of a kept ingest, as `kept_name` makes it.
fn is_kept_name(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    name.strip_prefix(KEPT_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .and_then(|(alg, hex)| Digest::from_parts(alg, hex).ok())
        .is_some_and(|d| kept_name(&d) == name)
}

/// What an entry of `ingest/` a sweep may look at is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IngestKind {
    /// `<pid>-<n>-<nanoseconds>`, of process `pid`.
    Temporary { pid: i32 },
    /// `r-<alg>-<hex>`, for `Store::resume`.
    Kept,
}

/// An entry of `ingest/` that a sweep may look at: named as an ingest, a directory (not a
/// link to one) and ours. Otherwise why it is left alone.
pub(super) fn sweepable(entry: &fs::DirEntry) -> std::result::Result<IngestKind, &'static str> {
    let name = entry.file_name();
    let kind = match ingest_owner(&name) {
        Some(pid) => IngestKind::Temporary { pid },
        None if is_kept_name(&name) => IngestKind::Kept,
        None => return Err("not named as an ingest (<pid>-<n>-<nanoseconds> or r-<alg>-<hex>)"),
    };
    // DirEntry::metadata does not follow a link.
    match entry.metadata() {
        Ok(m) if m.file_type().is_symlink() => Err("a symbolic link, not an ingest directory"),
        Ok(m) if !m.is_dir() => Err("not a directory"),
        Ok(m) if m.uid() != caller() => Err("owned by another user"),
        Ok(_) => Ok(kind),
        Err(_) => Err("unreadable"),
    }
}

/// Creates `ingest/<id>/` in the store at `root`, with an empty `data` file in it (mode 0600),
/// for one blob's bytes. The id starts with this process's pid, so that a later process can
/// tell abandoned ingests.
pub(super) fn new_ingest(root: &Path) -> Result<(PathBuf, File)> {
    let dir = new_ingest_dir(root)?;
    let data = dir.join(DATA_FILE);
    match create_data(&data) {
        Ok(f) => Ok((dir, f)),
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            Err(Error::io(data, e))
        }
    }
}

/// Creates an empty `ingest/<id>/` (0700) in the store at `root`, named as `new_ingest`'s: a
/// temporary ingest of this process. A batch holds the data files of all its blobs in one
/// (`new_data_in`), swept as one when the process is gone.
pub(super) fn new_ingest_dir(root: &Path) -> Result<PathBuf> {
    let id = process_unique_id(&NEXT_ID);
    let dir = root.join(super::INGEST_DIR).join(id);
    // Private whatever the umask (it can only take bits away): no one else may replace the
    // data file between its check and its rename into place.
    fs::DirBuilder::new()
        .mode(INGEST_ENTRY_MODE)
        .create(&dir)
        .at(&dir)?;
    Ok(dir)
}

/// Creates the data file `<dir>/<n>` (empty, 0600) in a batch's ingest directory `dir`.
pub(super) fn new_data_in(dir: &Path, n: u64) -> Result<(PathBuf, File)> {
    let data = dir.join(n.to_string());
    let file = create_data(&data).at(&data)?;
    Ok((data, file))
}

/// Creates an ingest's data file, empty, 0600 (less the umask), where nothing is.
fn create_data(data: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(DATA_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(data)
}

/// A kept ingest opened by its one writer: its directory, whose descriptor holds the lock,
/// and its data file (read and write), as it was left.
pub(super) struct KeptIngest {
    pub dir: PathBuf,
    pub lock: File,
    pub file: File,
}

/// Opens the kept ingest of `expected` in the store at `root` for writing, creating it when
/// absent, and locks it. None when a live writer holds it. Refuses, naming the path, a
/// directory or data file that is a link, not of its kind, not ours, writable by others or
/// (the data) with other hard links: nothing of it is touched then.
pub(super) fn open_kept(root: &Path, expected: &Digest) -> Result<Option<KeptIngest>> {
    let dir = root.join(super::INGEST_DIR).join(kept_name(expected));
    let made = match fs::DirBuilder::new().mode(INGEST_ENTRY_MODE).create(&dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(Error::io(dir, e)),
    };
    let Some(lock) = lock_kept(&dir)? else {
        return Ok(None);
    };
    match open_kept_data(&dir.join(DATA_FILE)) {
        Ok(file) => Ok(Some(KeptIngest { dir, lock, file })),
        Err(e) => {
            if made {
                // Only ever empty here: nothing else was made in it.
                let _ = fs::remove_dir(&dir);
            }
            Err(e)
        }
    }
}

/// Opens the kept ingest directory `dir` (checked as a store part: no link, a directory,
/// ours, not writable by others) and takes its lock without waiting. None when another
/// writer holds it, or `dir` is no longer the directory opened (committed or swept since).
fn lock_kept(dir: &Path) -> Result<Option<File>> {
    let found = fs::symlink_metadata(dir).at(dir)?;
    check_meta(dir, &found, Kind::Dir)?;
    let lock = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::store(dir, StoreProblem::Symlink),
            _ => Error::io(dir, e),
        })?;
    let meta = lock.metadata().at(dir)?;
    if !same_file(&found, &meta) || !try_lock(&lock).at(dir)? {
        return Ok(None);
    }
    match fs::symlink_metadata(dir) {
        Ok(now) if same_file(&now, &meta) => Ok(Some(lock)),
        _ => Ok(None),
    }
}

/// Takes an exclusive `flock` on `file` without waiting: false when another open file holds
/// one (in this process or another). Released when the file is closed.
fn try_lock(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: flock only reads the open descriptor and its integer operation.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// Checks a kept ingest's data file as a writer of ours left it: no link, a regular file,
/// ours, with no other hard link.
fn check_data(data: &Path, meta: &fs::Metadata) -> Result<()> {
    let problem = if meta.file_type().is_symlink() {
        StoreProblem::Symlink
    } else if !meta.is_file() {
        StoreProblem::NotAFile
    } else if meta.uid() != caller() {
        StoreProblem::Owner {
            owner: meta.uid(),
            you: caller(),
        }
    } else if meta.nlink() != 1 {
        StoreProblem::HardLinks {
            links: meta.nlink(),
        }
    } else {
        return Ok(());
    };
    Err(Error::store(data, problem))
}

/// Opens the data file of a locked kept ingest for reading and writing, creating it when
/// absent; one that is there must pass `check_data` before it is opened (a device is never
/// opened) and be the same file once opened. A mode other than 0600 (0444 from a commit that
/// failed after it) is set back.
fn open_kept_data(data: &Path) -> Result<File> {
    let found = match fs::symlink_metadata(data) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return create_data(data).at(data),
        Err(e) => return Err(Error::io(data, e)),
    };
    check_data(data, &found)?;
    let replaced = || {
        Error::io(
            data,
            io::Error::other("replaced while it was being opened: left alone"),
        )
    };
    // Read-only first: a 0444 file can be given its mode back through it.
    let read = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(data)
        .at(data)?;
    let meta = read.metadata().at(data)?;
    if !same_file(&found, &meta) {
        return Err(replaced());
    }
    if meta.mode() & 0o7777 != DATA_MODE {
        read.set_permissions(Permissions::from_mode(DATA_MODE))
            .at(data)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(data)
        .at(data)?;
    if !same_file(&meta, &file.metadata().at(data)?) {
        return Err(replaced());
    }
    Ok(file)
}

/// What a sweep found in one kept ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeptSweep {
    /// Held by a live writer, or younger than the time to keep it: its data's bytes.
    Kept { bytes: u64 },
    /// Removed (or, dry, would be): the bytes freed.
    Removed { bytes: u64 },
    /// Gone before it could be looked at (committed meanwhile).
    Gone,
    /// Not what a writer of ours leaves: why.
    LeftAlone(&'static str),
}

/// Removes the kept ingest `dir` when no writer holds it and its data (or, without data, the
/// directory) is untouched for `keep`, holding its lock meanwhile so that no writer takes it
/// up; with `remove` false, only says what it would do. Only a directory of ours holding
/// nothing but a data file of ours is removed, file then directory, never through a link.
pub(super) fn sweep_kept(dir: &Path, keep: Duration, remove: bool) -> Result<KeptSweep> {
    let data = dir.join(DATA_FILE);
    let data_meta = || fs::symlink_metadata(&data).ok();
    let _lock = match lock_kept(dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return Ok(KeptSweep::Kept {
                bytes: data_meta().filter(|m| m.is_file()).map_or(0, |m| m.len()),
            })
        }
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(KeptSweep::Gone)
        }
        Err(_) => return Ok(KeptSweep::LeftAlone("not a private directory of ours")),
    };
    let mut only_data = true;
    for e in fs::read_dir(dir).at(dir)? {
        only_data &= e.at(dir)?.file_name() == DATA_FILE;
    }
    let found = data_meta();
    if !only_data
        || found
            .as_ref()
            .is_some_and(|m| check_data(&data, m).is_err())
    {
        return Ok(KeptSweep::LeftAlone(
            "holds something other than a data file of ours",
        ));
    }
    let touched = match &found {
        Some(m) => m.modified(),
        None => fs::symlink_metadata(dir).and_then(|m| m.modified()),
    }
    .unwrap_or_else(|_| SystemTime::now());
    let bytes = found.as_ref().map_or(0, |m| m.len());
    let idle = SystemTime::now()
        .duration_since(touched)
        .unwrap_or_default();
    if idle < keep {
        return Ok(KeptSweep::Kept { bytes });
    }
    if remove {
        if found.is_some() {
            fs::remove_file(&data).at(&data)?;
        }
        fs::remove_dir(dir).at(dir)?;
    }
    Ok(KeptSweep::Removed { bytes })
}

/// A failed write (ENOSPC, EIO) of the ingest of `blob` at `data`, naming both.
fn writing(blob: String, data: &Path, source: io::Error) -> Error {
    Error::Write {
        blob,
        path: data.to_owned(),
        source,
    }
}

/// Moves `file`, the verified content of `expected` at `data`, into the store at `root`: fsync,
/// mode 0444, rename unless the blob is there already, fsync of the directory. Returns false
/// when the blob was already there (the data is left for the caller to remove). One blob's
/// way (the mount's uploads, a lone writer); import places many at once (`batch.rs`). A blob
/// placed is noted in `verified` with the identity of its file there.
pub(super) fn place(
    root: &Path,
    file: &File,
    data: &Path,
    expected: &Digest,
    verified: &Verified,
) -> Result<bool> {
    let target = root.join(expected.blob_path());
    if fs::symlink_metadata(&target).is_ok() {
        return Ok(false);
    }
    file.sync_all()
        .map_err(|e| writing(format!("blob {expected}"), data, e))?;
    file.set_permissions(Permissions::from_mode(BLOB_MODE))
        .at(data)?;
    let written = file.metadata().at(data)?;
    let Some(there) = move_into_place(root, data, expected, (written.dev(), written.ino()))? else {
        return Ok(false);
    };
    sync_dir(target.parent().unwrap_or(Path::new(".")))?;
    verified.note(expected, Identity::of(&there), root);
    Ok(true)
}

/// Renames `data`, the checked content of `expected` whose file is `identity` (device,
/// inode), to `blobs/<alg>/<hex>` in the store at `root` unless the blob is there, and checks
/// that what went there is that file. Some(its metadata there) when it renamed, None when the blob was
/// there (`data` is left for the caller). The data must be durable, and its mode 0444,
/// before: a crash must never leave a torn blob in place.
pub(super) fn move_into_place(
    root: &Path,
    data: &Path,
    expected: &Digest,
    identity: (u64, u64),
) -> Result<Option<fs::Metadata>> {
    let target = root.join(expected.blob_path());
    if !rename_no_replace(data, &target).at(&target)? {
        return Ok(None);
    }
    // What went into place must be the file that was written and checked.
    let there = fs::symlink_metadata(&target).at(&target)?;
    if (there.dev(), there.ino()) != identity {
        return Err(Error::io(
            &target,
            io::Error::other(format!(
                "not the file written and checked for blob {expected} (its ingest was \
                 replaced): left for fsck"
            )),
        ));
    }
    Ok(Some(there))
}

/// Removes the ingests of processes that are gone (killed mid-write): their data can never be
/// committed; and the kept ingests that no writer holds and are untouched for `RESUME_KEEP`.
/// Returns how many were removed. What is no ingest (see `sweepable`) is left alone, with a
/// warning.
pub fn remove_abandoned(store: &Store) -> Result<usize> {
    let dir = store.root().join(super::INGEST_DIR);
    let mut removed = 0;
    for e in fs::read_dir(&dir).at(&dir)? {
        let e = e.at(&dir)?;
        let path = e.path();
        match sweepable(&e) {
            Ok(IngestKind::Temporary { pid }) => {
                if !process_alive(pid) && fs::remove_dir_all(&path).is_ok() {
                    removed += 1;
                }
            }
            Ok(IngestKind::Kept) => match sweep_kept(&path, RESUME_KEEP, true) {
                Ok(KeptSweep::Removed { .. }) => removed += 1,
                Ok(KeptSweep::LeftAlone(why)) => {
                    tracing::warn!("left {} alone: {why}", path.display());
                }
                Ok(_) => {}
                Err(err) => tracing::warn!("left {} alone: {err}", path.display()),
            },
            Err(why) => tracing::warn!("left {} alone: {why}", path.display()),
        }
    }
    Ok(removed)
}

/// Whether process `pid` exists (on this host, in this pid namespace). A process we may not
/// signal exists too.
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    pid == std::process::id() as i32
        || unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Renames `from` to `to` unless `to` exists; returns whether it renamed. A blob in place is
/// never replaced, so open readers and concurrent writers of one digest all see one file.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (cf, ct) = (c(from)?, c(to)?);
    // SAFETY: both arguments are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        // A filesystem without RENAME_NOREPLACE: replacing identical content is harmless.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => fs::rename(from, to).map(|()| true),
        _ => Err(err),
    }
}

/// Makes a directory's entries durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Asks the kernel to begin writing a range back without waiting for it (a hint: failure is
/// harmless, the fsync at commit is what makes the data durable).
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments and the open descriptor.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn only_canonical_digests_name_a_kept_ingest() {
        let sha256 = Digest::of(crate::digest::Algorithm::Sha256, b"x");
        let sha512 = Digest::of(crate::digest::Algorithm::Sha512, b"x");
        for d in [&sha256, &sha512] {
            let name = kept_name(d);
            assert!(name.starts_with("r-sha"), "{name}");
            assert!(is_kept_name(OsStr::new(&name)), "{name}");
        }
        let hex = sha256.hex();
        let refused = [
            format!("r-sha256-{}", hex.to_uppercase()),
            format!("r-sha256-{}", &hex[1..]),
            format!("r-sha256-{hex}0"),
            format!("r-sha256-{hex}-1"),
            format!("r-sha512-{hex}"),
            format!("r-md5-{hex}"),
            format!("r-sha256:{hex}"),
            format!("d-sha256-{hex}"),
            format!("sha256-{hex}"),
            format!(
                "r-sha256-{}",
                &hex.replace(|c: char| c.is_ascii_digit(), "/")
            ),
            "r-".to_owned(),
            "r-sha256-".to_owned(),
        ];
        for name in refused {
            assert!(!is_kept_name(OsStr::new(&name)), "{name}");
            assert_eq!(ingest_owner(OsStr::new(&name)), None, "{name}");
        }
    }

    #[test]
    fn only_ingest_ids_name_an_owner() {
        let made = process_unique_id(&AtomicU64::new(0));
        assert_eq!(
            ingest_owner(OsStr::new(&made)),
            Some(std::process::id() as i32)
        );
        let cases: [(&str, Option<i32>); 12] = [
            ("12-0-1764300000000000000", Some(12)),
            ("1-18446744073709551615-0", Some(1)),
            ("important", None),
            ("12", None),
            ("12-0", None),
            ("12-0-1-2", None),
            ("-12-0-1", None),
            ("12-x-1", None),
            ("12--1", None),
            ("0-0-1", None),
            ("99999999999-0-1", None),
            ("+12-0-1", None),
        ];
        for (name, want) in cases {
            assert_eq!(ingest_owner(OsStr::new(name)), want, "{name}");
        }
    }
}
