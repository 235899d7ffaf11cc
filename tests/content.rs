//! The content interfaces with an implementation other than the store: an OCI layout
//! directory as a `Provider` (blobs read where they lie, checked) feeds the same export plan
//! and writer the store does, and the archive is byte for byte what `layoutfs export` writes
//! from a store holding the same image.

mod common;

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use common::gen::LayoutBuilder;
use common::Env;
use layoutfs::archive::{ExportOptions, Plan};
use layoutfs::content::Provider;
use layoutfs::digest::Digest;
use layoutfs::error::{Error, Result};
use layoutfs::layout::Entry;
use layoutfs::oci::{BlobSource, Descriptor};
use layoutfs::progress::Progress;

/// Blobs of a layout directory, unverified on disk: sizes and small blobs are checked here.
struct LayoutDir(PathBuf);

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
        let f = self
            .open_file(&desc.digest)
            .map_err(|e| Error::io(self.locate(&desc.digest), e))?;
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

#[test]
fn a_layout_directory_as_a_provider_exports_what_the_store_exports() {
    let env = Env::new();
    let mut b = LayoutBuilder::new(&env.path("src"));
    let m = b.small_image("1.0", 2, 30_000, 40);
    env.ok(&["import", b.dir.to_str().unwrap()]);
    let from_store = env.path("store.tar");
    env.ok(&["export", "-o", from_store.to_str().unwrap(), "src:1.0"]);

    let provider = LayoutDir(b.dir.clone());
    let entries = [Entry {
        name: "src:1.0".parse().unwrap(),
        target: layoutfs::oci::Descriptor {
            platform: None,
            ..m.clone()
        },
    }];
    let opts = ExportOptions {
        platform: None,
        docker_manifest: false,
        verify: true,
    };
    let plan = Plan::new(&provider, &entries, &opts).unwrap();
    let out_path = env.path("dir.tar");
    let out = File::create(&out_path).unwrap();
    plan.write(&provider, &out, true, &Progress::hidden())
        .unwrap();
    drop(out);
    assert_eq!(
        std::fs::read(&out_path).unwrap(),
        std::fs::read(&from_store).unwrap()
    );

    // A damaged blob in the directory is caught as the store's would be.
    let layer = std::fs::read_dir(b.dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() == 30_000)
        .unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&layer, bytes).unwrap();
    let out = File::create(&out_path).unwrap();
    let err = plan
        .write(&provider, &out, true, &Progress::hidden())
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}
