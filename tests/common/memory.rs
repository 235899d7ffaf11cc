//! Content held in memory: a second implementation of the content interfaces (`Provider`,
//! `Ingester`, `Catalog`), built only from their contracts, so that the conformance suite in
//! tests/store.rs tests the contracts and not one store's accidents. Blobs are served as
//! memfd files, so `open` gives a real `File` as the store's does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use layoutfs::content::{Catalog, Change, Ingester, Provider, Writer};
use layoutfs::digest::{Algorithm, Digest, Hasher};
use layoutfs::error::{Error, Result};
use layoutfs::oci::{self, BlobSource, Descriptor};
use layoutfs::reference::{check_repository, Reference, ReferenceError};
use layoutfs::store::{check_bytes, check_record, now_ms, Image};

#[derive(Default)]
pub struct Memory {
    blobs: Mutex<HashMap<Digest, Arc<Vec<u8>>>>,
    images: Mutex<BTreeMap<String, Image>>,
    repositories: Mutex<BTreeSet<String>>,
    version: AtomicI64,
}

impl Memory {
    pub fn new() -> Memory {
        Memory::default()
    }
}

/// A sealed-size anonymous file holding `bytes`, at offset 0.
fn memfd(bytes: &[u8]) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal; the returned descriptor is owned below.
    let fd = unsafe { libc::memfd_create(c"layoutfs-memory-blob".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    f.rewind()?;
    Ok(f)
}

impl BlobSource for Memory {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.blobs.lock().get(digest).map(|b| b.len() as u64))
    }

    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        oci::check_json_size(&format!("blob {}", desc.digest), desc.size)?;
        let mut bytes = Vec::new();
        self.open(desc)?
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(self.locate(&desc.digest), e))?;
        check_bytes(desc, &bytes)?;
        Ok(bytes)
    }
}

impl Provider for Memory {
    fn open(&self, desc: &Descriptor) -> Result<File> {
        let Some(bytes) = self.blobs.lock().get(&desc.digest).cloned() else {
            return Err(Error::MissingBlob {
                digest: desc.digest.clone(),
                referrer: None,
            });
        };
        if bytes.len() as u64 != desc.size {
            return Err(Error::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                found: bytes.len() as u64,
            });
        }
        memfd(&bytes).map_err(|e| Error::io(self.locate(&desc.digest), e))
    }

    fn open_file(&self, digest: &Digest) -> io::Result<File> {
        let bytes = self.blobs.lock().get(digest).cloned();
        match bytes {
            Some(b) => memfd(&b),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn locate(&self, digest: &Digest) -> String {
        format!("memory:{digest}")
    }
}

struct MemoryWriter<'m> {
    memory: &'m Memory,
    bytes: Vec<u8>,
    hasher: Hasher,
    expected: Option<(Digest, Option<u64>)>,
}

impl Writer for MemoryWriter<'_> {
    fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        let after = (self.bytes.len() + buf.len()) as u64;
        if let Some((digest, Some(size))) = &self.expected {
            if after > *size {
                return Err(Error::SizeMismatch {
                    digest: digest.clone(),
                    expected: *size,
                    found: after,
                });
            }
        }
        self.hasher.update(buf);
        self.bytes.extend_from_slice(buf);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn commit_named(self: Box<Self>) -> Result<(Digest, bool)> {
        let found = self.hasher.finish();
        if let Some((expected, size)) = self.expected {
            let len = self.bytes.len() as u64;
            if size.is_some_and(|s| s != len) {
                return Err(Error::SizeMismatch {
                    digest: expected,
                    expected: size.unwrap_or(0),
                    found: len,
                });
            }
            if found != expected {
                return Err(Error::DigestMismatch { expected, found });
            }
        }
        let mut blobs = self.memory.blobs.lock();
        let placed = !blobs.contains_key(&found);
        if placed {
            blobs.insert(found.clone(), Arc::new(self.bytes));
        }
        Ok((found, placed))
    }
}

impl Ingester for Memory {
    fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(MemoryWriter {
            memory: self,
            bytes: Vec::new(),
            hasher: expected.algorithm().hasher(),
            expected: Some((expected.clone(), size)),
        }))
    }

    fn ingest_unnamed(&self, alg: Algorithm) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(MemoryWriter {
            memory: self,
            bytes: Vec::new(),
            hasher: alg.hasher(),
            expected: None,
        }))
    }

    /// Nothing outlives a writer in memory: every resume starts at 0.
    fn resume(&self, expected: &Digest, size: u64) -> Result<Box<dyn Writer + '_>> {
        self.ingest(expected, Some(size))
    }
}

impl Catalog for Memory {
    fn list(&self) -> Result<Vec<Image>> {
        Ok(self.images.lock().values().cloned().collect())
    }

    fn of_repository(&self, repository: &str) -> Result<Vec<Image>> {
        Ok(self
            .images
            .lock()
            .values()
            .filter(|i| i.name.repository() == repository)
            .cloned()
            .collect())
    }

    fn get(&self, name: &Reference) -> Result<Option<Image>> {
        Ok(self.images.lock().get(&name.to_string()).cloned())
    }

    fn version(&self) -> Result<i64> {
        Ok(self.version.load(Ordering::SeqCst))
    }

    fn repositories(&self) -> Result<Vec<String>> {
        Ok(self.repositories.lock().iter().cloned().collect())
    }

    fn apply(&self, change: &Change) -> Result<()> {
        for repo in change.keep {
            check_repository(repo).map_err(|why| ReferenceError::Invalid(repo.clone(), why))?;
        }
        let mut images = self.images.lock();
        let mut repositories = self.repositories.lock();
        let mut next = images.clone();
        for name in change.remove {
            next.remove(&name.to_string());
        }
        let now = now_ms();
        for (name, target) in change.put {
            name.check_target(&target.digest)?;
            let old = next.get(&name.to_string()).map(|i| &i.target);
            check_record(name, target, old)?;
            let created = next.get(&name.to_string()).map_or(now, |i| i.created);
            let image = Image {
                name: name.clone(),
                target: target.clone(),
                created,
                updated: now,
            };
            next.insert(name.to_string(), image);
        }
        *images = next;
        for repo in change.forget {
            repositories.remove(repo);
        }
        repositories.extend(change.keep.iter().cloned());
        self.version.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
