//! Export: images out of a store. `set` decides what is sent (the blobs of the images'
//! closures, their `index.json`) and in which order (by path, or children before parents);
//! `dest` says what a destination of blobs and images is; `tar` is the one destination
//! today, the deterministic, zero-copy archive streamer; `docker` adds what `docker load`
//! reads (`manifest.json`, `repositories`, docker's names in `index.json`). `Plan` ties them
//! together for the CLI: an OCI or docker archive of some images; `convert_to_oci` gives the
//! images OCI media types first (`--oci`).

mod dest;
mod docker;
mod set;
mod tar;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use crate::content::{Ingester, Provider};
use crate::content::{Lease, WHOLE};
use crate::convert;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::layout::Entry;
use crate::oci::{Descriptor, PlatformSpec};
use crate::progress::Progress;

pub use dest::{send, Destination, Images, Order};
pub use docker::{docker_image_name, MAX_MANIFEST_JSON_SIZE};
pub use set::Shipment;
pub use tar::{TarWriter, MODE_DIR, MODE_FILE, MODE_READ_ONLY};

use tar::stream_err;

#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Keep one platform of each image index.
    pub platform: Option<PlatformSpec>,
    /// Add Docker's `manifest.json` for `docker load`.
    pub docker_manifest: bool,
    /// Re-hash every blob while streaming it.
    pub verify: bool,
}

/// What an archive is laid out for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout (plus `manifest.json` with `ExportOptions::docker_manifest`).
    #[default]
    Oci,
    /// The shape docker 25 and later save: the OCI layout, `manifest.json`, `repositories`,
    /// and `index.json` naming images as docker does (see `docker`).
    Docker,
}

/// An archive of some images, decided before a byte is written.
pub struct Plan {
    shipment: Shipment,
}

impl Plan {
    /// The OCI archive of `entries`: every blob of their closures must be in the store.
    pub fn new(store: &dyn Provider, entries: &[Entry], opts: &ExportOptions) -> Result<Plan> {
        Plan::with_format(store, entries, opts, ArchiveFormat::Oci)
    }

    /// The archive of `entries` in `format`.
    pub fn with_format(
        store: &dyn Provider,
        entries: &[Entry],
        opts: &ExportOptions,
        format: ArchiveFormat,
    ) -> Result<Plan> {
        Ok(Plan {
            shipment: Shipment::archive(store, entries, opts, format)?,
        })
    }

    /// Holds every blob of the archive in `lease` and checks that each is there with its
    /// size: after this, a gc in another process cannot take one away mid-stream, so an
    /// export fails before its first byte or not at all.
    pub fn hold(&self, store: &dyn Provider, lease: &dyn Lease) -> Result<()> {
        self.shipment.hold(store, lease)
    }

    /// Bytes of blob content the archive carries.
    pub fn blob_bytes(&self) -> u64 {
        self.shipment.blob_bytes()
    }

    /// Streams the archive to `out` (a file, pipe or socket).
    pub fn write(
        &self,
        store: &dyn Provider,
        out: &File,
        verify: bool,
        progress: &Progress,
    ) -> Result<()> {
        let mut tar = TarWriter::new(out, verify, progress)?;
        send(store, &self.shipment, &mut tar)
    }
}

/// `entries` with OCI media types (`export --oci`): each image's docker-typed indexes and
/// manifests rewritten by `convert::to_oci`, the new blobs held in `lease` and then written
/// into `into` (as containerd's converter writes into its content store: no record refers to
/// them, so gc removes them once the lease is gone). Images with nothing docker-typed come back
/// as they are, and nothing is written for them.
pub fn convert_to_oci(
    from: &dyn Provider,
    into: &dyn Ingester,
    lease: &dyn Lease,
    entries: &[Entry],
) -> Result<Vec<Entry>> {
    let mut put = |d: &Descriptor, bytes: &[u8]| -> Result<()> {
        lease.hold(WHOLE, &[&d.digest])?;
        let mut w = into.ingest(&d.digest, Some(d.size))?;
        w.write_all(bytes)?;
        w.commit().map(|_| ())
    };
    // An image under several names is converted once.
    let mut done: HashMap<(Digest, String), Descriptor> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let key = (e.target.digest.clone(), e.target.media_type.clone());
        let new = match done.get(&key) {
            Some(t) => t.clone(),
            None => {
                let t = convert::to_oci(from, &mut put, &e.target)?;
                done.insert(key, t.clone());
                t
            }
        };
        out.push(converted_entry(e, &new)?);
    }
    Ok(out)
}

/// `e` pointing at its converted target `new` (its media type, digest and size; the rest of
/// the record's descriptor kept). A name pinned to the old digest names the new one.
fn converted_entry(e: &Entry, new: &Descriptor) -> Result<Entry> {
    Ok(Entry {
        name: e.name.follow(&e.target.digest, &new.digest)?,
        target: Descriptor {
            media_type: new.media_type.clone(),
            digest: new.digest.clone(),
            size: new.size,
            ..e.target.clone()
        },
    })
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
