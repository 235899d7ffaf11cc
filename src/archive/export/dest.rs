//! Where an export goes: a `Destination` takes blobs one by one, in the order it asks for,
//! then the images they make. The tar streamer (`tar::TarWriter`) is one; a registry push,
//! which needs every blob of a manifest before the manifest, plugs in as another.

use crate::content::Provider;
use crate::error::Result;
use crate::layout::Entry;
use crate::oci::Descriptor;

use super::set::Shipment;

/// The order a destination takes blobs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Every blob after the blobs it refers to: layers and config before their manifest,
    /// manifests before their index (a registry refuses a manifest whose blobs it lacks).
    ChildrenFirst,
    /// By path, `blobs/<alg>/<hex>`: the record order of a deterministic archive.
    ByPath,
}

/// The images an export carries, sent after their blobs.
pub struct Images<'a> {
    /// Name and target of each image (the tags a registry push sets).
    pub entries: &'a [Entry],
    /// The layout's `index.json`.
    pub index_json: &'a [u8],
    /// Docker's `manifest.json`, when asked for.
    pub docker_manifest: Option<&'a [u8]>,
    /// Docker's `repositories`, in a docker archive with tagged images.
    pub repositories: Option<&'a [u8]>,
}

/// A destination of blobs and the images they make.
pub trait Destination {
    /// The order `blob` is called in.
    fn order(&self) -> Order;
    /// Sends one blob, read from `from`.
    fn blob(&mut self, from: &dyn Provider, desc: &Descriptor) -> Result<()>;
    /// After the last blob: sends the images.
    fn finish(&mut self, images: &Images<'_>) -> Result<()>;
}

/// Sends everything `what` holds from `from` to `to`, blobs in the order `to` asks for.
pub fn send(from: &dyn Provider, what: &Shipment, to: &mut dyn Destination) -> Result<()> {
    for desc in what.blobs_in(to.order(), from)? {
        to.blob(from, desc)?;
    }
    to.finish(&what.images())
}
