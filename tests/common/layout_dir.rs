//! An OCI layout directory as a `Provider`: blobs read where they lie, sizes and small blobs
//! checked as they are read (the directory's files are not verified beforehand). A third
//! implementation of the interface for the conformance suite, and a source export can read.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use layoutfs::content::Provider;
use layoutfs::digest::Digest;
use layoutfs::error::{Error, Result};
use layoutfs::oci::{self, BlobSource, Descriptor};

/// Blobs of a layout directory, unverified on disk: sizes and small blobs are checked here.
pub struct LayoutDir(pub PathBuf);

impl BlobSource for LayoutDir {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        match std::fs::symlink_metadata(self.0.join(digest.blob_path())) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Err(Error::Invalid(format!(
                "{}: not a file",
                self.locate(digest)
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(self.locate(digest), e)),
        }
    }

    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        oci::check_json_size(&format!("blob {}", desc.digest), desc.size)?;
        let mut bytes = Vec::new();
        self.open(desc)?
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(self.locate(&desc.digest), e))?;
        layoutfs::store::check_bytes(desc, &bytes)?;
        Ok(bytes)
    }
}

impl Provider for LayoutDir {
    fn open(&self, desc: &Descriptor) -> Result<File> {
        let f = self.open_file(&desc.digest).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::MissingBlob {
                digest: desc.digest.clone(),
                referrer: None,
            },
            _ => Error::io(self.locate(&desc.digest), e),
        })?;
        let size = f
            .metadata()
            .map_err(|e| Error::io(self.locate(&desc.digest), e))?
            .len();
        if size != desc.size {
            return Err(Error::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                found: size,
            });
        }
        Ok(f)
    }

    fn open_file(&self, digest: &Digest) -> io::Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.0.join(digest.blob_path()))
    }

    fn locate(&self, digest: &Digest) -> String {
        self.0.join(digest.blob_path()).display().to_string()
    }
}
