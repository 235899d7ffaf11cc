//! The tar streamer, the destination an export writes today: an OCI archive whose records
//! are sorted by name (`blobs/`, then each algorithm's directory and its blobs by digest,
//! then `index.json`, Docker's `manifest.json` if asked, `oci-layout`, Docker's
//! `repositories` if asked), each blob once, with fixed modes, owner and times, so the same
//! images always give the same bytes. Blob bytes move with copy_file_range or sendfile (whichever the output allows), never through a
//! buffer of the blob's size, and each blob's size is checked while it is copied; `verify`
//! re-hashes instead, through a small buffer.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use crate::content::Provider;
use crate::digest::Algorithm;
use crate::error::{Error, Result};
use crate::oci::{self, Descriptor};
use crate::progress::Progress;
use crate::store::COPY_CHUNK;

use super::super::tarfmt::{self, EntryKind};
use super::dest::{Destination, Images, Order};

/// Mode of blob files and `oci-layout` in an archive.
pub const MODE_READ_ONLY: u32 = 0o444;
/// Mode of `index.json`, `manifest.json` and `repositories`.
pub const MODE_FILE: u32 = 0o644;
/// Mode of directories.
pub const MODE_DIR: u32 = 0o755;
/// Bytes of small records gathered before they are written.
const PENDING_CAPACITY: usize = 64 << 10;
/// Most bytes asked of one copy_file_range or sendfile call.
const MAX_CALL: usize = 1 << 30;

/// An OCI archive streamed to a file, pipe or socket.
pub struct TarWriter<'a> {
    sink: Sink<'a>,
    /// Re-hash every blob while streaming it.
    verify: bool,
    progress: &'a Progress,
    /// The algorithms whose `blobs/<alg>/` record is written.
    dirs: BTreeSet<Algorithm>,
}

impl<'a> TarWriter<'a> {
    /// An archive to `out`; `progress` is told of blob bytes as they go.
    pub fn new(out: &'a File, verify: bool, progress: &'a Progress) -> Result<TarWriter<'a>> {
        let mut sink = Sink::new(out)?;
        sink.put(&tarfmt::header("blobs/", EntryKind::Dir, MODE_DIR, 0))?;
        Ok(TarWriter {
            sink,
            verify,
            progress,
            dirs: BTreeSet::new(),
        })
    }

    /// A small file's record.
    fn file(&mut self, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let len = bytes.len() as u64;
        self.sink
            .put(&tarfmt::header(path, EntryKind::File, mode, len))?;
        self.sink.put(bytes)?;
        self.sink.pad(len)
    }
}

impl Destination for TarWriter<'_> {
    /// Records sorted by name: blobs by path.
    fn order(&self) -> Order {
        Order::ByPath
    }

    fn blob(&mut self, from: &dyn Provider, desc: &Descriptor) -> Result<()> {
        let alg = desc.digest.algorithm();
        if self.dirs.insert(alg) {
            let dir = format!("blobs/{alg}/");
            self.sink
                .put(&tarfmt::header(&dir, EntryKind::Dir, MODE_DIR, 0))?;
        }
        let path = desc.digest.blob_path();
        self.sink.put(&tarfmt::header(
            &path,
            EntryKind::File,
            MODE_READ_ONLY,
            desc.size,
        ))?;
        let file = from.open(desc)?;
        self.sink.blob(desc, &file, self.verify, self.progress)?;
        self.sink.pad(desc.size)
    }

    fn finish(&mut self, images: &Images<'_>) -> Result<()> {
        self.file("index.json", images.index_json, MODE_FILE)?;
        if let Some(bytes) = images.docker_manifest {
            self.file("manifest.json", bytes, MODE_FILE)?;
        }
        self.file("oci-layout", &oci::layout_file_bytes(), MODE_READ_ONLY)?;
        if let Some(bytes) = images.repositories {
            self.file("repositories", bytes, MODE_FILE)?;
        }
        self.sink.put(&tarfmt::trailer())?;
        self.sink.flush()
    }
}

/// How blob bytes reach the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    CopyFileRange,
    SendFile,
    ReadWrite,
}

/// The output: small writes go through a buffer that is flushed before each blob is moved
/// by the kernel from file to output.
struct Sink<'a> {
    out: &'a File,
    fd: RawFd,
    pending: Vec<u8>,
    method: Method,
}

impl<'a> Sink<'a> {
    fn new(out: &'a File) -> Result<Sink<'a>> {
        let meta = out.metadata().map_err(stream_err)?;
        let method = if meta.is_file() {
            Method::CopyFileRange
        } else {
            Method::SendFile
        };
        Ok(Sink {
            out,
            fd: out.as_raw_fd(),
            pending: Vec::with_capacity(PENDING_CAPACITY),
            method,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= COPY_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn pad(&mut self, size: u64) -> Result<()> {
        let n = tarfmt::padding(size);
        self.pending.resize(self.pending.len() + n, 0);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let mut out = self.out;
        out.write_all(&self.pending).map_err(stream_err)?;
        self.pending.clear();
        Ok(())
    }

    /// Moves one blob's bytes, checking that exactly `desc.size` of them arrive.
    fn blob(
        &mut self,
        desc: &Descriptor,
        file: &File,
        verify: bool,
        progress: &Progress,
    ) -> Result<()> {
        self.flush()?;
        let mut copied = 0u64;
        if verify {
            return self.read_write(desc, file, copied, true, progress);
        }
        while copied < desc.size {
            let want = usize::try_from(desc.size - copied)
                .unwrap_or(usize::MAX)
                .min(MAX_CALL);
            let r = match self.method {
                Method::CopyFileRange => copy_file_range(file.as_raw_fd(), self.fd, want),
                Method::SendFile => sendfile(file.as_raw_fd(), self.fd, want),
                Method::ReadWrite => return self.read_write(desc, file, copied, false, progress),
            };
            match r {
                Ok(0) => {
                    return Err(Error::SizeMismatch {
                        digest: desc.digest.clone(),
                        expected: desc.size,
                        found: copied,
                    })
                }
                Ok(n) => {
                    copied += n as u64;
                    progress.add(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if copied == 0 && falls_back(&e) => {
                    // This pairing of files does not support the call: try the next method.
                    self.method = match self.method {
                        Method::CopyFileRange => Method::SendFile,
                        _ => Method::ReadWrite,
                    };
                }
                Err(e) => return Err(stream_err(e)),
            }
        }
        self.check_no_more(desc, file)
    }

    /// The plain path: read into a small buffer (hashing if asked) and write it out.
    fn read_write(
        &mut self,
        desc: &Descriptor,
        mut file: &File,
        mut copied: u64,
        verify: bool,
        progress: &Progress,
    ) -> Result<()> {
        let mut hasher = verify.then(|| desc.digest.algorithm().hasher());
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut out = self.out;
        while copied < desc.size {
            let want = usize::try_from(desc.size - copied)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("blob {}", desc.digest), e)),
            };
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            out.write_all(&buf[..n]).map_err(stream_err)?;
            copied += n as u64;
            progress.add(n as u64);
        }
        if copied != desc.size {
            return Err(Error::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                found: copied,
            });
        }
        if let Some(h) = hasher {
            let found = h.finish();
            if found != desc.digest {
                return Err(Error::DigestMismatch {
                    expected: desc.digest.clone(),
                    found,
                });
            }
        }
        self.check_no_more(desc, file)
    }

    /// A blob that grew while it was copied is as wrong as one that shrank.
    fn check_no_more(&self, desc: &Descriptor, mut file: &File) -> Result<()> {
        let mut probe = [0u8; 1];
        match file.read(&mut probe) {
            Ok(0) => Ok(()),
            Ok(_) => Err(Error::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                found: desc.size + 1,
            }),
            Err(e) => Err(Error::io(format!("blob {}", desc.digest), e)),
        }
    }
}

/// Errors that say "this call cannot join these two files", not "the copy failed".
fn falls_back(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EXDEV
                | libc::EINVAL
                | libc::ENOSYS
                | libc::EOPNOTSUPP
                | libc::EBADF
                | libc::ESPIPE
        )
    )
}

fn copy_file_range(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets make the kernel use and advance both files' positions; the
    // descriptors are open for the duration of the call.
    let n = unsafe {
        libc::copy_file_range(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, 0)
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn sendfile(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: a null offset makes the kernel read from and advance `from`'s position.
    let n = unsafe { libc::sendfile(to, from, std::ptr::null_mut(), len) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// What a failed write of the archive says.
pub(super) fn stream_err(e: io::Error) -> Error {
    Error::Stream {
        what: "writing the archive".into(),
        source: e,
    }
}
