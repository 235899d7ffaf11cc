//! Export: images out of a store. `set` decides what is sent (the blobs of the images'
//! closures, their `index.json`) and in which order (by path, or children before parents);
//! `dest` says what a destination of blobs and images is; `tar` is the one destination
//! today, the deterministic, zero-copy OCI archive streamer. `Plan` ties them together for
//! the CLI: an OCI archive of some images.

mod dest;
mod docker;
mod set;
mod tar;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use crate::content::Provider;
use crate::error::{Error, IoContext, Result};
use crate::layout::Entry;
use crate::oci::PlatformSpec;
use crate::progress::Progress;
use crate::store::Lease;

pub use dest::{send, Destination, Images, Order};
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

/// An OCI archive of some images, decided before a byte is written.
pub struct Plan {
    shipment: Shipment,
}

impl Plan {
    /// The archive of `entries`: every blob of their closures must be in the store.
    pub fn new(store: &dyn Provider, entries: &[Entry], opts: &ExportOptions) -> Result<Plan> {
        Ok(Plan {
            shipment: Shipment::new(store, entries, opts)?,
        })
    }

    /// Holds every blob of the archive in `lease` and checks that each is there with its
    /// size: after this, a gc in another process cannot take one away mid-stream, so an
    /// export fails before its first byte or not at all.
    pub fn hold(&self, store: &dyn Provider, lease: &Lease) -> Result<()> {
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
