//! The roles a store of content plays for everything else, in containerd's vocabulary: a
//! `Provider` gives blobs (their size, a size-checked `File` so that passthrough and
//! `copy_file_range` keep working, small blobs read whole and verified), an `Ingester` takes
//! new blobs (expecting a digest, or naming the content by its hash at commit), and a
//! `Catalog` keeps the image records (name -> target descriptor, with a change counter).
//!
//! The local store implements all three (`Store`, its `Records`). Export and the mount's
//! verifier take a `Provider`; the mount's views read a `Catalog`. A registry-backed provider
//! or a read-only catalog plugs in here.

use std::fs::File;
use std::io;

use crate::digest::{Algorithm, Digest};
use crate::error::Result;
use crate::oci::{BlobSource, Descriptor};
use crate::reference::Reference;
use crate::store::{Image, Ingest, Records, Store};

/// Where blobs come from. `BlobSource` gives `blob_size` and `read_small` (whole, verified).
pub trait Provider: BlobSource + Send + Sync {
    /// Opens the blob `desc` names and checks its size: stored sizes are never trusted.
    fn open(&self, desc: &Descriptor) -> Result<File>;
    /// Opens the file of blob `digest`, never through a link, for a caller that checks it.
    fn open_file(&self, digest: &Digest) -> io::Result<File>;
    /// Where blob `digest` lives, for messages.
    fn locate(&self, digest: &Digest) -> String;
}

/// Where blobs go: each write is hashed as it goes and checked at commit.
pub trait Ingester {
    /// A writer of a blob that must hash to `expected` (and be `size` bytes, if known).
    fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Ingest<'_>>;
    /// A writer of a blob whose digest is known only at the end (`Ingest::commit_named`).
    fn ingest_unnamed(&self, alg: Algorithm) -> Result<Ingest<'_>>;
}

/// The image records.
pub trait Catalog: Send + Sync {
    /// Every image, sorted by name.
    fn list(&self) -> Result<Vec<Image>>;
    /// The images of one repository, sorted by name.
    fn of_repository(&self, repository: &str) -> Result<Vec<Image>>;
    fn get(&self, name: &Reference) -> Result<Option<Image>>;
    /// A number that changes whenever the records change (in another process too).
    fn version(&self) -> Result<i64>;
    /// In one transaction: removes `remove` and registers `put`.
    fn update(&self, put: &[(Reference, Descriptor)], remove: &[Reference]) -> Result<()>;
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

impl Ingester for Store {
    fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Ingest<'_>> {
        Store::ingest(self, expected, size)
    }

    fn ingest_unnamed(&self, alg: Algorithm) -> Result<Ingest<'_>> {
        Store::ingest_unnamed(self, alg)
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

    fn version(&self) -> Result<i64> {
        self.data_version()
    }

    fn update(&self, put: &[(Reference, Descriptor)], remove: &[Reference]) -> Result<()> {
        Records::update(self, put, remove)
    }
}
