//! The roles a store of content plays for everything else, in containerd's vocabulary: a
//! `Provider` gives blobs (their size, a size-checked `File` so that passthrough and
//! `copy_file_range` keep working, small blobs read whole and verified), an `Ingester` takes
//! new blobs (expecting a digest, or naming the content by its hash at commit, or resuming
//! what an earlier writer of a digest left), and a
//! `Catalog` keeps the image records (name -> target descriptor, with a change counter).
//!
//! The local store implements all three (`Store`, its `Records`). Export and the mount's
//! verifier take a `Provider`; the mount's views read a `Catalog`. A registry-backed provider
//! or a read-only catalog plugs in here.

use std::fs::File;
use std::io::{self, Read};

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::oci::{BlobSource, Descriptor};
use crate::reference::Reference;
use crate::store::{BlobWriter, Image, Records, Store, COPY_CHUNK};

/// Where blobs come from. `BlobSource` gives `blob_size` and `read_small` (whole, verified).
pub trait Provider: BlobSource + Send + Sync {
    /// Opens the blob `desc` names and checks its size: stored sizes are never trusted.
    fn open(&self, desc: &Descriptor) -> Result<File>;
    /// Opens the file of blob `digest`, never through a link, for a caller that checks it.
    fn open_file(&self, digest: &Digest) -> io::Result<File>;
    /// Where blob `digest` lives, for messages.
    fn locate(&self, digest: &Digest) -> String;
}

/// One blob being written: hashed as it goes, checked and made visible at commit. A writer
/// dropped without a commit leaves nothing behind, but one from `Ingester::resume`, which
/// keeps its bytes for the next.
pub trait Writer: Send {
    /// Appends bytes; writing past an expected size fails at once.
    fn write_all(&mut self, buf: &[u8]) -> Result<()>;
    /// Bytes written so far, counting those a resumed writer started with.
    fn written(&self) -> u64;
    /// Checks size and digest and makes the blob visible. Ok(false): it was already there.
    /// A writer that expects no digest commits under the digest its content hashes to.
    fn commit(self: Box<Self>) -> Result<bool> {
        self.commit_named().map(|(_, placed)| placed)
    }
    /// As `commit`, and returns the digest the content hashes to.
    fn commit_named(self: Box<Self>) -> Result<(Digest, bool)>;

    /// Copies everything `r` yields; `what` names the source in errors; `progress` is told of
    /// each chunk.
    fn copy_from(
        &mut self,
        r: &mut dyn Read,
        what: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Stream {
                        what: what.to_owned(),
                        source: e,
                    })
                }
            };
            self.write_all(&buf[..n])?;
            progress(n as u64);
        }
    }
}

/// Where blobs go.
pub trait Ingester: Send + Sync {
    /// A writer of a blob that must hash to `expected` (and be `size` bytes, if known).
    fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Box<dyn Writer + '_>>;
    /// A writer of a blob whose digest is known only at the end: it is hashed with `alg` and
    /// named by that hash at commit (`Writer::commit_named`).
    fn ingest_unnamed(&self, alg: Algorithm) -> Result<Box<dyn Writer + '_>>;
    /// A writer of blob `expected` (`size` bytes) whose bytes outlive it: dropped without a
    /// commit, or its process killed, it leaves them under a name made from the digest, and the
    /// next `resume` of the digest (in this process or another, once no live writer holds
    /// them) continues from them. `written()` says how many bytes it starts with (re-hashed
    /// when it opens, so the commit still checks the whole); the caller sends only the rest,
    /// from that offset. Kept bytes longer than `size` are dropped (it starts at 0); a commit
    /// that finds the digest wrong drops them too, so the try after starts at 0. While a live
    /// writer holds them: an ordinary writer starting at 0. An ingester may always start at 0.
    fn resume(&self, expected: &Digest, size: u64) -> Result<Box<dyn Writer + '_>>;
}

/// One change of the records, made in one transaction: images removed then registered, and
/// repositories forgotten then kept (a name in both ends kept; see `Catalog::repositories`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Change<'a> {
    /// Images removed (names that are not there are ignored).
    pub remove: &'a [Reference],
    /// Images registered or re-pointed.
    pub put: &'a [(Reference, Descriptor)],
    /// Repositories no longer kept (names that are not kept are ignored).
    pub forget: &'a [String],
    /// Repositories kept from now on, with images or without (names checked).
    pub keep: &'a [String],
}

/// The image records, and the repositories kept with no image required.
pub trait Catalog: Send + Sync {
    /// Every image, sorted by name.
    fn list(&self) -> Result<Vec<Image>>;
    /// The images of one repository, sorted by name.
    fn of_repository(&self, repository: &str) -> Result<Vec<Image>>;
    fn get(&self, name: &Reference) -> Result<Option<Image>>;
    /// The repositories kept whether they have images or not (a directory made in the mount,
    /// an `index.json` written there that lists nothing), sorted. A repository with images
    /// exists whether it is kept or not; a kept one exists with none.
    fn repositories(&self) -> Result<Vec<String>>;
    /// A number that changes whenever the records change, through this catalog or any other
    /// handle on the same records (another process too).
    fn version(&self) -> Result<i64>;
    /// Makes `change`, all or nothing.
    fn apply(&self, change: &Change) -> Result<()>;
    /// In one transaction: removes `remove` and registers `put`.
    fn update(&self, put: &[(Reference, Descriptor)], remove: &[Reference]) -> Result<()> {
        self.apply(&Change {
            put,
            remove,
            ..Change::default()
        })
    }
}

impl Provider for Store {
    fn open(&self, desc: &Descriptor) -> Result<File> {
        self.open_blob(desc)
    }

    fn open_file(&self, digest: &Digest) -> io::Result<File> {
        self.open_blob_file(digest)
    }

    fn locate(&self, digest: &Digest) -> String {
        self.blob_path(digest).display().to_string()
    }
}

impl Writer for BlobWriter {
    fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        BlobWriter::write_all(self, buf)
    }

    fn written(&self) -> u64 {
        BlobWriter::written(self)
    }

    fn commit_named(self: Box<Self>) -> Result<(Digest, bool)> {
        BlobWriter::commit_named(*self)
    }
}

impl Ingester for Store {
    fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(Store::ingest(self, expected, size)?))
    }

    fn ingest_unnamed(&self, alg: Algorithm) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(Store::ingest_unnamed(self, alg)?))
    }

    fn resume(&self, expected: &Digest, size: u64) -> Result<Box<dyn Writer + '_>> {
        Ok(Box::new(Store::resume(self, expected, size)?))
    }
}

impl Catalog for Records {
    fn list(&self) -> Result<Vec<Image>> {
        Records::list(self)
    }

    fn of_repository(&self, repository: &str) -> Result<Vec<Image>> {
        Records::of_repository(self, repository)
    }

    fn get(&self, name: &Reference) -> Result<Option<Image>> {
        Records::get(self, name)
    }

    fn repositories(&self) -> Result<Vec<String>> {
        Records::repositories(self)
    }

    fn version(&self) -> Result<i64> {
        Records::version(self)
    }

    fn apply(&self, change: &Change) -> Result<()> {
        Records::apply(self, change)
    }
}
