//! The ingest area, `ingest/`: each blob being written has a directory `ingest/<id>/` (0700)
//! holding its bytes in `data` (created exclusively, 0600). The writer (`BlobWriter`, in
//! `writer.rs`, what `Store::ingest` returns) hashes them and calls `place` at commit:
//! fsync, mode 0444, rename into `blobs/<alg>/<hex>` without replacing, a check that the file
//! placed is the file written, fsync of the directory. A blob already present is a success.
//! Nothing is under `blobs/` before its size and digest are checked.
//!
//! An ingest is a directory named `<pid>-<n>-<nanoseconds>` (decimal numbers). Sweeping
//! abandoned ones (`remove_abandoned`, and gc's) removes only directories named so, never
//! through a link: anything else under `ingest/` is left alone and reported.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};

use super::Store;

/// Mode of a committed blob: read-only for everyone.
pub const BLOB_MODE: u32 = 0o444;
/// Bytes moved per read/write while copying into an ingest.
pub const COPY_CHUNK: usize = 1 << 20;
/// Dirty bytes after which the kernel is asked to start writing back, so that the final fsync
/// finds little left to do and disk writes overlap hashing.
pub(super) const WRITEBACK_STEP: u64 = 16 << 20;

/// Mode of one ingest's directory.
const INGEST_ENTRY_MODE: u32 = 0o700;

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

/// An entry of `ingest/` that a sweep may remove: named as an ingest id and a directory (not
/// a link to one). Otherwise why it is left alone.
pub(super) fn sweepable(entry: &fs::DirEntry) -> std::result::Result<i32, &'static str> {
    let Some(pid) = ingest_owner(&entry.file_name()) else {
        return Err("not named as an ingest (<pid>-<n>-<nanoseconds>)");
    };
    match entry.file_type() {
        Ok(t) if t.is_symlink() => Err("a symbolic link, not an ingest directory"),
        Ok(t) if t.is_dir() => Ok(pid),
        Ok(_) => Err("not a directory"),
        Err(_) => Err("unreadable"),
    }
}

/// Creates `ingest/<id>/` in the store at `root`, with an empty `data` file in it (mode 0600),
/// for one blob's bytes. The id starts with this process's pid, so that a later process can
/// tell abandoned ingests.
pub(super) fn new_ingest(root: &Path) -> Result<(PathBuf, File)> {
    let id = process_unique_id(&NEXT_ID);
    let dir = root.join(super::INGEST_DIR).join(id);
    // Private whatever the umask (it can only take bits away): no one else may replace the
    // data file between its check and its rename into place.
    fs::DirBuilder::new()
        .mode(INGEST_ENTRY_MODE)
        .create(&dir)
        .at(&dir)?;
    let data = dir.join(DATA_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&data);
    match file {
        Ok(f) => Ok((dir, f)),
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            Err(Error::io(data, e))
        }
    }
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
/// when the blob was already there (the data is left for the caller to remove).
pub(super) fn place(root: &Path, file: &File, data: &Path, expected: &Digest) -> Result<bool> {
    let target = root.join(expected.blob_path());
    if fs::symlink_metadata(&target).is_ok() {
        return Ok(false);
    }
    file.sync_all()
        .map_err(|e| writing(format!("blob {expected}"), data, e))?;
    file.set_permissions(Permissions::from_mode(BLOB_MODE))
        .at(data)?;
    let placed = rename_no_replace(data, &target).at(&target)?;
    if placed {
        // What went into place must be the file that was written and checked.
        let written = file.metadata().at(data)?;
        let there = fs::symlink_metadata(&target).at(&target)?;
        if (there.dev(), there.ino()) != (written.dev(), written.ino()) {
            return Err(Error::io(
                &target,
                io::Error::other(format!(
                    "not the file written and checked for blob {expected} (its ingest was \
                     replaced): left for fsck"
                )),
            ));
        }
        sync_dir(target.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(placed)
}

/// Removes the ingests of processes that are gone (killed mid-write): their data can never be
/// committed. Returns how many were removed. What is no ingest (see `sweepable`) is left
/// alone, with a warning.
pub fn remove_abandoned(store: &Store) -> Result<usize> {
    let dir = store.root().join(super::INGEST_DIR);
    let mut removed = 0;
    for e in fs::read_dir(&dir).at(&dir)? {
        let e = e.at(&dir)?;
        let pid = match sweepable(&e) {
            Ok(pid) => pid,
            Err(why) => {
                tracing::warn!("left {} alone: {why}", e.path().display());
                continue;
            }
        };
        if !process_alive(pid) && fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
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
