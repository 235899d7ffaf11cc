//! Content held in memory: a second implementation of the content interfaces (`Provider`,
//! `Ingester`, `Catalog`, and `Content` with its `Draft`s and `Lease`s), built only from their
//! contracts, so that the conformance suite in tests/store.rs tests the contracts and not one
//! store's accidents, and the mount's core (tests/fs_model.rs), import and export
//! (tests/content.rs) run over it. Each blob is one sealed memfd (it can neither grow, shrink
//! nor be written), opened again through /proc/self/fd for each reader: `open` gives a real
//! `File` of its own offset, with the same identity while the blob lives, as the store's does.
//! Nothing is ever removed (there is no gc), so a lease only records what it holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use layoutfs::content::{
    Catalog, Change, Content, Direct, Draft, Ingester, Lease, Provider, Space, Staging, TakeBack,
    Writer,
};
use layoutfs::digest::{Algorithm, Digest, Hasher};
use layoutfs::error::{Error, Result};
use layoutfs::oci::{self, BlobSource, Descriptor};
use layoutfs::reference::{check_repository, Reference, ReferenceError};
use layoutfs::store::{check_bytes, check_record, now_ms, Image};

/// Each blob's sealed memfd, by digest.
type Blobs = Arc<Mutex<HashMap<Digest, Arc<File>>>>;

/// The most a draft of content in memory holds: a write or truncate past it is refused.
const MAX_DRAFT: u64 = 1 << 30;

/// Stores `bytes` as blob `digest` in `blobs` unless it is there: whether it was placed.
fn place(blobs: &Blobs, digest: &Digest, bytes: &[u8]) -> Result<bool> {
    let mut blobs = blobs.lock();
    if blobs.contains_key(digest) {
        return Ok(false);
    }
    let file = sealed_memfd(bytes).map_err(|e| Error::io(format!("memory:{digest}"), e))?;
    blobs.insert(digest.clone(), Arc::new(file));
    Ok(true)
}

/// An anonymous file holding `bytes`, sealed: it can no longer grow, shrink or be written.
fn sealed_memfd(bytes: &[u8]) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal; the returned descriptor is owned below.
    let fd = unsafe {
        libc::memfd_create(
            c"layoutfs-memory-blob".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS takes a descriptor we own and an integer.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// A new open of blob file `f` (its own offset, from the start; the same inode), read-only.
fn reopen(f: &File) -> io::Result<File> {
    File::open(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

#[derive(Default)]
pub struct Memory {
    blobs: Blobs,
    /// What the leases hold: (lease, holder, digest).
    held: Arc<Mutex<BTreeSet<(u64, String, Digest)>>>,
    leases: AtomicI64,
    images: Mutex<BTreeMap<String, Image>>,
    repositories: Mutex<BTreeSet<String>>,
    version: AtomicI64,
}

impl Memory {
    pub fn new() -> Memory {
        Memory::default()
    }

    /// Every blob's digest.
    pub fn digests(&self) -> Vec<Digest> {
        self.blobs.lock().keys().cloned().collect()
    }

    /// Whether blob `d` is a manifest whose subject is here.
    fn refers_to_present(&self, d: &Digest) -> bool {
        let Some(size) = self.blob_size(d).ok().flatten() else {
            return false;
        };
        let desc = Descriptor::new(oci::MEDIA_OCI_MANIFEST, d.clone(), size);
        self.read_small(&desc)
            .ok()
            .and_then(|b| oci::subject_of(&b))
            .is_some_and(|s| self.blob_size(&s.digest).ok().flatten().is_some())
    }

    /// How many (holder, digest) pairs the leases hold now.
    pub fn held(&self) -> usize {
        self.held.lock().len()
    }
}

/// EFBIG for `what` at `at`: past what a draft in memory holds.
fn too_large(what: &str, at: u64) -> Error {
    Error::io(
        format!("memory: {what} at {at}, past {MAX_DRAFT} bytes"),
        io::Error::from_raw_os_error(libc::EFBIG),
    )
}

/// A blob being drafted, its bytes in memory.
struct MemoryDraft {
    blobs: Blobs,
    bytes: Vec<u8>,
}

impl MemoryDraft {
    fn check(&self, expected: &Digest, size: Option<u64>) -> Result<()> {
        let len = self.bytes.len() as u64;
        if let Some(size) = size.filter(|s| *s != len) {
            return Err(Error::SizeMismatch {
                digest: expected.clone(),
                expected: size,
                found: len,
            });
        }
        let found = Digest::of(expected.algorithm(), &self.bytes);
        if found != *expected {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                found,
            });
        }
        Ok(())
    }
}

impl Draft for MemoryDraft {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= MAX_DRAFT)
            .ok_or_else(|| too_large("a write", offset))?;
        let (start, end) = (offset as usize, end as usize);
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn read_at(&mut self, offset: u64, size: u32, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        let end = start.saturating_add(size as usize).min(self.bytes.len());
        buf.extend_from_slice(&self.bytes[start..end]);
        Ok(())
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        if size > MAX_DRAFT {
            return Err(too_large("a truncate", size));
        }
        self.bytes.resize(size as usize, 0);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn sync(&mut self) -> Result<()> {
        Ok(())
    }

    fn park(&mut self) {}

    fn is_parked(&self) -> bool {
        true
    }

    fn digest(&mut self, alg: Algorithm) -> Result<Digest> {
        Ok(Digest::of(alg, &self.bytes))
    }

    fn verify(&mut self, expected: &Digest, size: Option<u64>) -> Result<()> {
        self.check(expected, size)
    }

    fn commit(self: Box<Self>, expected: &Digest, size: Option<u64>) -> Result<bool> {
        self.check(expected, size)?;
        place(&self.blobs, expected, &self.bytes)
    }

    fn abandon(self: Box<Self>) {}
}

/// A lease of content in memory: records what it holds, and lets go when dropped.
struct MemoryLease {
    id: u64,
    name: String,
    held: Arc<Mutex<BTreeSet<(u64, String, Digest)>>>,
}

impl Lease for MemoryLease {
    fn id(&self) -> &str {
        &self.name
    }

    fn hold(&self, holder: &str, digests: &[&Digest]) -> Result<()> {
        let mut held = self.held.lock();
        for d in digests {
            held.insert((self.id, holder.to_owned(), (*d).clone()));
        }
        Ok(())
    }

    fn release(&self, holder: &str) -> Result<()> {
        self.held
            .lock()
            .retain(|(id, h, _)| *id != self.id || h != holder);
        Ok(())
    }

    fn release_prefix(&self, prefix: &str) -> Result<()> {
        self.held
            .lock()
            .retain(|(id, h, _)| *id != self.id || !h.starts_with(prefix));
        Ok(())
    }
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        self.held.lock().retain(|(id, _, _)| *id != self.id);
    }
}

impl Content for Memory {
    fn catalog(&self) -> &dyn Catalog {
        self
    }

    /// Hashed at the end whatever `alg` is: nothing is gained by hashing bytes in memory
    /// as they come.
    fn draft(&self, _alg: Algorithm) -> Result<Box<dyn Draft>> {
        Ok(Box::new(MemoryDraft {
            blobs: self.blobs.clone(),
            bytes: Vec::new(),
        }))
    }

    fn lease(&self) -> Result<Box<dyn Lease>> {
        let id = self.leases.fetch_add(1, Ordering::SeqCst) as u64;
        Ok(Box::new(MemoryLease {
            id,
            name: format!("memory-{id}"),
            held: self.held.clone(),
        }))
    }

    /// Straight in: every commit is visible at once.
    fn staging<'a>(&'a self, lease: &'a dyn Lease) -> Result<Box<dyn Staging + 'a>> {
        Ok(Box::new(Direct::new(self, lease)))
    }

    /// Removes those of `t.placed` that no image reaches and no other lease holds; with
    /// `keep_referrers`, a placed manifest whose subject is here stays.
    fn take_back(&self, t: &TakeBack<'_>) -> Result<Vec<(Digest, u64)>> {
        let mut needed: HashSet<Digest> = self
            .held
            .lock()
            .iter()
            .filter(|(id, _, _)| format!("memory-{id}") != t.own)
            .map(|(_, _, d)| d.clone())
            .collect();
        for image in self.list()? {
            for d in oci::closure(self, &image.target, oci::OnMissing::Skip)?.into_keys() {
                needed.insert(d);
            }
        }
        let mut removed = Vec::new();
        for d in t.placed {
            if needed.contains(d) || (t.keep_referrers && self.refers_to_present(d)) {
                continue;
            }
            if let Some(f) = self.blobs.lock().remove(d) {
                removed.push((d.clone(), f.metadata().map_or(0, |m| m.len())));
            }
        }
        Ok(removed)
    }

    fn is_read_only(&self) -> bool {
        false
    }

    /// What is stored, as used blocks of 4 KiB, with plenty free.
    fn space(&self) -> Result<Space> {
        let used: u64 = self
            .blobs
            .lock()
            .values()
            .map(|f| f.metadata().map_or(0, |m| m.len()))
            .sum();
        let total = (1u64 << 40) / 4096;
        let blocks_used = used.div_ceil(4096);
        Ok(Space {
            blocks: total,
            bfree: total - blocks_used,
            bavail: total - blocks_used,
            files: 1 << 20,
            ffree: (1u64 << 20).saturating_sub(self.blobs.lock().len() as u64),
            bsize: 4096,
            namelen: 255,
            frsize: 4096,
        })
    }
}

impl BlobSource for Memory {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self
            .blobs
            .lock()
            .get(digest)
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len()))
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
        let file = self.open_file(&desc.digest).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::MissingBlob {
                digest: desc.digest.clone(),
                referrer: None,
            },
            _ => Error::io(self.locate(&desc.digest), e),
        })?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(self.locate(&desc.digest), e))?
            .len();
        if len != desc.size {
            return Err(Error::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                found: len,
            });
        }
        Ok(file)
    }

    fn open_file(&self, digest: &Digest) -> io::Result<File> {
        let file = self.blobs.lock().get(digest).cloned();
        match file {
            Some(f) => reopen(&f),
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
        let placed = place(&self.memory.blobs, &found, &self.bytes)?;
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
