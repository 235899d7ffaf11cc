//! An upload: the bytes of a file written into the mount, kept in an ingest directory of the
//! store (`ingest/<id>/data`) and hashed while they arrive in order. Whatever name the file has,
//! its bytes stay here until it is committed as a blob (verified against the digest its name
//! gives), read as `index.json` or `oci-layout`, or dropped. Writes out of order are allowed;
//! the hash is then computed from the file at commit. Dropping an upload removes its directory.
//! An upload nothing has open (a temporary file after close) is parked: its descriptors are
//! closed and the file is opened again from its ingest path at the next access, so that
//! thousands of temporary files hold no descriptor of the daemon's.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};
use crate::store::{self, Store};

/// Read size while hashing an upload that was not written in order.
const HASH_CHUNK: usize = 1 << 20;
/// Alignment of offsets, lengths and memory for O_DIRECT writes (a page: enough for every
/// logical block size in use).
const DIRECT_ALIGN: usize = 4096;

/// A page-aligned buffer, one per thread, for O_DIRECT writes.
#[repr(C, align(4096))]
struct Page([u8; DIRECT_ALIGN]);

thread_local! {
    static DIRECT_BUF: std::cell::RefCell<Vec<Page>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes `buf` (a whole number of pages, at a page offset) through the O_DIRECT descriptor
/// `file`, copied into this thread's aligned buffer. Ok(false) when the filesystem refuses
/// O_DIRECT here (EINVAL): nothing was written, and the caller writes it buffered.
fn write_direct(file: &File, buf: &[u8], offset: u64) -> io::Result<bool> {
    DIRECT_BUF.with(|cell| {
        let mut pages = cell.borrow_mut();
        let n = buf.len() / DIRECT_ALIGN;
        if pages.len() < n {
            pages.resize_with(n, || Page([0; DIRECT_ALIGN]));
        }
        // SAFETY: `Page` is a C-layout array of bytes with no padding, and the vector's pages
        // are contiguous, so its first `n` pages are `n * DIRECT_ALIGN` initialised bytes,
        // borrowed mutably and only here.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(pages.as_mut_ptr().cast::<u8>(), n * DIRECT_ALIGN)
        };
        bytes.copy_from_slice(buf);
        match file.write_all_at(bytes, offset) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(e),
        }
    })
}

/// Writes at least this large are hashed on a second thread while they are written (below it,
/// starting the thread costs more than it saves).
const PARALLEL_HASH_MIN: usize = 256 << 10;

pub struct Upload {
    dir: PathBuf,
    /// The data file, read and write; None while parked.
    file: Option<File>,
    /// The same file opened with O_DIRECT, for large aligned writes: they go to the disk from
    /// a buffer of this thread's instead of into newly allocated page cache (the slow part of a
    /// copy into the mount), and leave little for the fsync at commit. None where the
    /// filesystem has no O_DIRECT (tmpfs) or after it failed once, and while parked.
    direct: Option<File>,
    /// Whether O_DIRECT is worth opening again after a park (it worked when last tried).
    direct_ok: bool,
    /// Running hash of bytes 0..len, while every write has continued where the last ended.
    hasher: Option<Hasher>,
    len: u64,
    /// Left in the ingest area when dropped (see `abandon`).
    keep: bool,
}

impl Upload {
    /// A new, empty upload; `alg` is the hash kept while it is written.
    pub fn new(store: &Store, alg: Algorithm) -> Result<Upload> {
        let (dir, file) = store::new_ingest(store)?;
        let direct = open_direct(&dir.join(store::DATA_FILE));
        Ok(Upload {
            dir,
            file: Some(file),
            direct_ok: direct.is_some(),
            direct,
            hasher: Some(alg.hasher()),
            len: 0,
            keep: false,
        })
    }

    /// Drops the upload but leaves its ingest directory, as a process that died would: the
    /// next mount, or gc, removes it (the daemon's exit does not wait for the disk).
    pub fn abandon(mut self) {
        self.keep = true;
    }

    /// Closes the upload's descriptors; the next access opens the data file again.
    pub fn park(&mut self) {
        self.file = None;
        self.direct = None;
    }

    /// Whether the upload holds descriptors now.
    pub fn is_parked(&self) -> bool {
        self.file.is_none()
    }

    /// The data file, opened again if the upload was parked.
    fn file(&mut self) -> Result<&File> {
        let file = match self.file.take() {
            Some(f) => f,
            None => {
                let data = self.data();
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&data)
                    .map_err(|e| Error::io(&data, e))?;
                if self.direct_ok {
                    self.direct = open_direct(&data);
                    self.direct_ok = self.direct.is_some();
                }
                file
            }
        };
        Ok(self.file.insert(file))
    }

    fn data(&self) -> PathBuf {
        self.dir.join(store::DATA_FILE)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `buf` at `offset`. A large write that continues the hashed bytes is hashed on
    /// another thread while it is written, so that a copy into the mount pays for the slower of
    /// the two, not both. After an error the upload is not to be committed.
    pub fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        self.file()?;
        let direct = self.direct.as_ref().filter(|_| {
            offset % DIRECT_ALIGN as u64 == 0
                && buf.len() % DIRECT_ALIGN == 0
                && buf.len() >= PARALLEL_HASH_MIN
        });
        let Some(file) = self.file.as_ref() else {
            return Err(Error::io(
                self.data(),
                io::Error::other("the upload is parked"),
            ));
        };
        let write = || match direct {
            Some(d) => write_direct(d, buf, offset),
            None => file.write_all_at(buf, offset).map(|()| true),
        };
        let written = match &mut self.hasher {
            Some(h) if offset == self.len && buf.len() >= PARALLEL_HASH_MIN => {
                std::thread::scope(|s| {
                    let hashing = s.spawn(move || h.update(buf));
                    let w = write();
                    hashing
                        .join()
                        .map_err(|_| io::Error::other("the hashing thread panicked"))
                        .and(w)
                })
            }
            Some(h) if offset == self.len => {
                h.update(buf);
                write()
            }
            _ => {
                self.hasher = None;
                write()
            }
        };
        match written {
            Ok(true) => {}
            // The filesystem refused O_DIRECT for this write: buffered from now on.
            Ok(false) => {
                self.direct = None;
                self.direct_ok = false;
                let data = self.data();
                self.file()?
                    .write_all_at(buf, offset)
                    .map_err(|e| Error::io(data, e))?;
            }
            Err(e) => return Err(Error::io(self.data(), e)),
        }
        self.len = self.len.max(offset + buf.len() as u64);
        Ok(())
    }

    pub fn read_at(&mut self, offset: u64, size: u32, buf: &mut Vec<u8>) -> Result<()> {
        let want = self.len.saturating_sub(offset).min(u64::from(size)) as usize;
        buf.clear();
        buf.resize(want, 0);
        let data = self.data();
        self.file()?
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(data, e))
    }

    pub fn truncate(&mut self, size: u64) -> Result<()> {
        let data = self.data();
        self.file()?.set_len(size).map_err(|e| Error::io(data, e))?;
        if size == 0 {
            if let Some(h) = &self.hasher {
                self.hasher = Some(h.algorithm().hasher());
            }
        } else if size != self.len {
            self.hasher = None;
        }
        self.len = size;
        Ok(())
    }

    /// The whole content, for small files (`index.json`, `oci-layout`): at most `cap` bytes.
    pub fn read_small(&mut self, what: &str, cap: u64) -> Result<Vec<u8>> {
        if self.len > cap {
            return Err(Error::TooLarge {
                file: what.to_owned(),
                size: self.len,
                cap,
            });
        }
        let mut buf = Vec::new();
        self.read_at(0, self.len as u32, &mut buf)?;
        Ok(buf)
    }

    /// The digest of the content with `alg`.
    fn digest(&mut self, alg: Algorithm) -> Result<Digest> {
        if let Some(h) = &self.hasher {
            if h.algorithm() == alg {
                return Ok(h.clone().finish());
            }
        }
        let mut buf = vec![0u8; HASH_CHUNK];
        let (len, data) = (self.len, self.data());
        let file = self.file()?;
        crate::digest::hash_file(alg, file, Some(len), &mut buf, |_| {})
            .map_err(|e| Error::io(&data, e))
    }

    /// Checks the content against the blob `expected` (and `size` bytes, when a descriptor
    /// gives it), leaving the upload as it is.
    pub fn verify(&mut self, expected: &Digest, size: Option<u64>) -> Result<()> {
        store::check_size(expected, size, self.len)?;
        let found = self.digest(expected.algorithm())?;
        store::check_digest(expected, found)
    }

    /// Verifies the content as the blob `expected` and moves it into the store. Returns false
    /// when the store had it already. The upload is spent either way.
    pub fn commit(mut self, store: &Store, expected: &Digest, size: Option<u64>) -> Result<bool> {
        self.verify(expected, size)?;
        let data = self.data();
        store::place(store, self.file()?, &data, expected)
    }
}

/// The data file at `data` opened again with O_DIRECT, where the filesystem allows it.
fn open_direct(data: &std::path::Path) -> Option<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(data)
        .ok()
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_aligned_writes_go_direct_and_commit_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let content: Vec<u8> = (0..(2u32 << 20) + 100)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let d = Digest::of(Algorithm::Sha256, &content);
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        for (i, chunk) in content.chunks(1 << 20).enumerate() {
            u.write_at((i << 20) as u64, chunk).unwrap();
        }
        let mut back = Vec::new();
        u.read_at((1 << 20) - 10, 20, &mut back).unwrap();
        assert_eq!(back, &content[(1 << 20) - 10..(1 << 20) + 10]);
        assert!(u.commit(&store, &d, Some(content.len() as u64)).unwrap());
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), content);
    }

    #[test]
    fn in_order_and_out_of_order_writes_commit_or_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let content = b"hello, layout".repeat(1000);
        let d = Digest::of(Algorithm::Sha256, &content);

        // Out of order, with a rewrite: hashed from the file at commit.
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        u.write_at(5000, &content[5000..]).unwrap();
        u.write_at(0, &[0u8; 5000]).unwrap();
        u.write_at(0, &content[..5000]).unwrap();
        let mut back = Vec::new();
        u.read_at(4990, 20, &mut back).unwrap();
        assert_eq!(back, &content[4990..5010]);
        assert!(u.commit(&store, &d, Some(content.len() as u64)).unwrap());
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), content);

        // In order again: already there.
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        u.write_at(0, &content).unwrap();
        assert!(!u.commit(&store, &d, None).unwrap());

        // Wrong bytes, wrong size, truncated: nothing enters the store, nothing is left.
        let other = Digest::of(Algorithm::Sha256, b"other");
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        u.write_at(0, &content).unwrap();
        assert!(matches!(
            u.commit(&store, &other, None),
            Err(Error::DigestMismatch { .. })
        ));
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        u.write_at(0, &content).unwrap();
        u.truncate(10).unwrap();
        assert!(matches!(
            u.commit(&store, &d, Some(content.len() as u64)),
            Err(Error::SizeMismatch { .. })
        ));
        assert!(!store.blob_path(&other).exists());
        assert_eq!(
            std::fs::read_dir(tmp.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }
}
