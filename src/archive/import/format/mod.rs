//! What the files of a source mean: a format turns a tree or a stream of entries into blobs
//! ingested and the index of the images they make (descriptors, named by their
//! annotations). `oci` reads the OCI image layout (`oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`); `docker` reads any image archive as a stream: an OCI layout, a
//! `docker save` archive (`manifest.json` and layer tars, named only once hashed, through
//! `Ingester::ingest_unnamed`), or docker 25's both at once.

pub mod docker;
pub mod oci;

use crate::error::Result;
use crate::oci::ImageIndex;

use super::intake::Intake;
use super::pull::Blobs;
use super::source::{Entry, Tree};

/// A format read from a tree at random: it reads what names the images and gives blobs by
/// digest, which the pull then copies in.
pub trait TreeFormat {
    /// The index of the images in `tree`, and its blobs.
    fn open<'t>(&self, tree: &'t dyn Tree) -> Result<(ImageIndex, Box<dyn Blobs + 't>)>;
}

/// A format read from entries as they go by: blobs go into `intake` as they pass, the rest is
/// kept for `finish`.
pub trait StreamFormat {
    /// Takes one entry (reading it, or leaving it to be skipped).
    fn entry(&mut self, entry: Entry<'_>, intake: &Intake<'_>) -> Result<()>;
    /// After the last entry: the index of the images that arrived (what only the whole
    /// stream tells, such as a docker archive's manifests, is written into `intake` now).
    fn finish(self: Box<Self>, intake: &Intake<'_>) -> Result<ImageIndex>;
}
