//! The tar streamer: images out of the store as an OCI archive. Records are sorted by name,
//! each blob appears once, modes, owner and times are fixed, so the same images always give
//! the same bytes. Blob bytes move with copy_file_range or sendfile (whichever the output
//! allows), never through a buffer of the blob's size, and each blob's size is checked while
//! it is copied; `verify` re-hashes instead, through a small buffer.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use serde::Serialize;

use crate::content::Provider;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::layout::{self, Entry};
use crate::oci::{self, Descriptor, Kind, OnMissing, PlatformSpec};
use crate::progress::Progress;
use crate::store::{Lease, COPY_CHUNK, WHOLE};

use super::tarfmt::{self, EntryKind};

/// Mode of blob files and `oci-layout` in an archive.
pub const MODE_READ_ONLY: u32 = 0o444;
/// Mode of `index.json` and `manifest.json`.
pub const MODE_FILE: u32 = 0o644;
/// Mode of directories.
pub const MODE_DIR: u32 = 0o755;

#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Keep one platform of each image index.
    pub platform: Option<PlatformSpec>,
    /// Add Docker's `manifest.json` for `docker load`.
    pub docker_manifest: bool,
    /// Re-hash every blob while streaming it.
    pub verify: bool,
}

/// What an archive holds, decided before a byte is written.
pub struct Plan {
    records: Vec<(String, Record)>,
    total: u64,
}

enum Record {
    Dir,
    Bytes(Vec<u8>, u32),
    Blob(Box<Descriptor>),
}

impl Plan {
    /// The archive of `entries`: every blob of their closures must be in the store.
    pub fn new(store: &dyn Provider, entries: &[Entry], opts: &ExportOptions) -> Result<Plan> {
        let entries = match &opts.platform {
            Some(p) => entries
                .iter()
                .map(|e| pick_platform(store, e, p))
                .collect::<Result<Vec<_>>>()?,
            None => entries.to_vec(),
        };
        let blobs = layout::blobs(store, &entries, OnMissing::Fail)?;
        let mut records: BTreeMap<String, Record> = BTreeMap::new();
        records.insert("blobs/".into(), Record::Dir);
        for (digest, desc) in &blobs {
            records.insert(format!("blobs/{}/", digest.algorithm()), Record::Dir);
            records.insert(digest.blob_path(), Record::Blob(Box::new(desc.clone())));
        }
        // Whatever is exported must import again.
        let index = layout::index_json(&entries);
        oci::check_index_size("index.json", index.len() as u64)?;
        records.insert("index.json".into(), Record::Bytes(index, MODE_FILE));
        records.insert(
            "oci-layout".into(),
            Record::Bytes(oci::layout_file_bytes(), MODE_READ_ONLY),
        );
        if opts.docker_manifest {
            let bytes = docker_manifest(store, &entries, opts.platform.as_ref())?;
            oci::check_index_size("manifest.json", bytes.len() as u64)?;
            records.insert("manifest.json".into(), Record::Bytes(bytes, MODE_FILE));
        }
        let total = blobs.values().map(|d| d.size).sum();
        Ok(Plan {
            records: records.into_iter().collect(),
            total,
        })
    }

    /// Holds every blob of the archive in `lease` and checks that each is there with its
    /// size: after this, a gc in another process cannot take one away mid-stream, so an
    /// export fails before its first byte or not at all.
    pub fn hold(&self, store: &dyn Provider, lease: &Lease) -> Result<()> {
        let blobs: Vec<&Descriptor> = self
            .records
            .iter()
            .filter_map(|(_, r)| match r {
                Record::Blob(d) => Some(&**d),
                _ => None,
            })
            .collect();
        lease.hold(WHOLE, blobs.iter().map(|d| &d.digest))?;
        for d in blobs {
            match store.blob_size(&d.digest)? {
                Some(size) if size == d.size => {}
                Some(size) => {
                    return Err(Error::SizeMismatch {
                        digest: d.digest.clone(),
                        expected: d.size,
                        found: size,
                    })
                }
                None => {
                    return Err(Error::MissingBlob {
                        digest: d.digest.clone(),
                        referrer: None,
                    })
                }
            }
        }
        Ok(())
    }

    /// Bytes of blob content the archive carries.
    pub fn blob_bytes(&self) -> u64 {
        self.total
    }

    /// Streams the archive to `out` (a file, pipe or socket).
    pub fn write(
        &self,
        store: &dyn Provider,
        out: &File,
        verify: bool,
        progress: &Progress,
    ) -> Result<()> {
        let mut sink = Sink::new(out)?;
        for (path, record) in &self.records {
            match record {
                Record::Dir => sink.put(&tarfmt::header(path, EntryKind::Dir, MODE_DIR, 0))?,
                Record::Bytes(bytes, mode) => {
                    let len = bytes.len() as u64;
                    sink.put(&tarfmt::header(path, EntryKind::File, *mode, len))?;
                    sink.put(bytes)?;
                    sink.pad(len)?;
                }
                Record::Blob(desc) => {
                    sink.put(&tarfmt::header(
                        path,
                        EntryKind::File,
                        MODE_READ_ONLY,
                        desc.size,
                    ))?;
                    let file = store.open(desc)?;
                    sink.blob(desc, &file, verify, progress)?;
                    sink.pad(desc.size)?;
                }
            }
        }
        sink.put(&tarfmt::trailer())?;
        sink.flush()
    }
}

/// An image with its index target replaced by the manifest for `platform`.
fn pick_platform(store: &dyn Provider, e: &Entry, platform: &PlatformSpec) -> Result<Entry> {
    match oci::select_platform(store, &e.target, platform)? {
        Some(target) => Ok(Entry {
            name: e.name.clone(),
            target,
        }),
        None => Err(Error::Invalid(format!(
            "{}: no manifest for platform {platform}",
            e.name
        ))),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Docker's `manifest.json`: one entry per image manifest (an index contributes the manifest
/// of the requested platform, else of this host's).
fn docker_manifest(
    store: &dyn Provider,
    entries: &[Entry],
    platform: Option<&PlatformSpec>,
) -> Result<Vec<u8>> {
    let host = PlatformSpec::host();
    let platform = platform.unwrap_or(&host);
    let mut by_manifest: BTreeMap<Digest, (Descriptor, Vec<String>)> = BTreeMap::new();
    for e in entries {
        let Some(m) = oci::select_platform(store, &e.target, platform)? else {
            return Err(Error::Invalid(format!(
                "{}: no manifest for platform {platform} to put in manifest.json",
                e.name
            )));
        };
        let slot = by_manifest
            .entry(m.digest.clone())
            .or_insert_with(|| (m, Vec::new()));
        if e.name.tag().is_some() {
            slot.1.push(e.name.to_string());
        }
    }
    let mut out = Vec::new();
    for (m, repo_tags) in by_manifest.into_values() {
        if oci::kind_of(&m.media_type) != Kind::Manifest {
            return Err(Error::Invalid(format!(
                "blob {}: {} cannot be described in manifest.json",
                m.digest, m.media_type
            )));
        }
        let children = oci::children(&m, &store.read_small(&m)?)?;
        let (config, layers) = children
            .split_first()
            .ok_or_else(|| Error::Invalid(format!("blob {}: manifest without config", m.digest)))?;
        out.push(DockerManifest {
            config: config.digest.blob_path(),
            repo_tags,
            layers: layers.iter().map(|l| l.digest.blob_path()).collect(),
        });
    }
    let mut bytes = serde_json::to_vec(&out).map_err(|e| Error::Invalid(e.to_string()))?;
    bytes.push(b'\n');
    Ok(bytes)
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
            pending: Vec::with_capacity(64 << 10),
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
                .min(1 << 30);
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

fn stream_err(e: io::Error) -> Error {
    Error::Stream {
        what: "writing the archive".into(),
        source: e,
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

/// Opens the export's output: a new file, or a duplicate of standard output for `-`.
pub fn open_output(path: Option<&std::path::Path>) -> Result<File> {
    match path {
        Some(p) if p != std::path::Path::new("-") => File::create(p).at(p),
        _ => {
            use std::io::IsTerminal;
            if io::stdout().is_terminal() {
                return Err(Error::Invalid(
                    "refusing to write an archive to a terminal: use -o FILE or a pipe".into(),
                ));
            }
            let fd = io::stdout().as_raw_fd();
            // SAFETY: dup of an open descriptor; the new one is owned by the returned File.
            let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return Err(stream_err(io::Error::last_os_error()));
            }
            // SAFETY: `dup` is a fresh descriptor nobody else owns.
            Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(dup) })
        }
    }
}
