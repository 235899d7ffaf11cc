//! The content store: verified read-only blobs under `blobs/<alg>/<hex>` (containerd's layout,
//! which is also an OCI layout's), ingests under `ingest/`, and the image records in `meta.db`.
//! Several processes may share one store: blobs appear only by atomic rename, records change
//! only in SQLite transactions.

pub mod check;
pub mod fsck;
pub mod gc;
mod ingest;
mod leases;
mod records;

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, IoContext, Result};
use crate::oci::{self, BlobSource, Descriptor};

pub use ingest::{
    check_digest, check_size, new_ingest, place, process_alive, remove_abandoned, sync_dir, Ingest,
    BLOB_MODE, COPY_CHUNK, DATA_FILE,
};
pub use leases::{Held, Lease, Leases, WHOLE};
pub use records::{Image, Records};

/// Directory of verified blobs.
pub const BLOBS_DIR: &str = "blobs";
/// Directory of blobs being written.
pub const INGEST_DIR: &str = "ingest";
/// Where fsck --repair moves blobs that do not match their digest.
pub const QUARANTINE_DIR: &str = "quarantine";
/// The image-record database.
pub const DB_FILE: &str = "meta.db";
/// Environment variable naming the store when `--store` is absent.
pub const STORE_ENV: &str = "LAYOUTFS_STORE";
/// Store of the root user when nothing else is said.
pub const SYSTEM_STORE: &str = "/var/lib/layoutfs";

/// An open store.
pub struct Store {
    root: PathBuf,
    records: Records,
    leases: std::sync::Arc<Leases>,
}

impl Store {
    /// Opens the store at `root`, creating it on first use.
    pub fn open(root: &Path) -> Result<Store> {
        for dir in [root.to_path_buf(), root.join(INGEST_DIR)]
            .into_iter()
            .chain(Algorithm::ALL.map(|a| root.join(BLOBS_DIR).join(a.name())))
        {
            fs::create_dir_all(&dir).at(&dir)?;
        }
        let records = Records::open(&root.join(DB_FILE))?;
        let leases = std::sync::Arc::new(Leases::open(&root.join(DB_FILE))?);
        Ok(Store {
            root: root.to_path_buf(),
            records,
            leases,
        })
    }

    /// The store to use when `--store` is not given: `$LAYOUTFS_STORE`, else the system store
    /// for root, else `$XDG_DATA_HOME/layoutfs` or `~/.local/share/layoutfs`.
    pub fn default_root() -> Result<PathBuf> {
        if let Some(p) = std::env::var_os(STORE_ENV).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return Ok(PathBuf::from(SYSTEM_STORE));
        }
        if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p).join("layoutfs"));
        }
        match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(h) => Ok(PathBuf::from(h).join(".local/share/layoutfs")),
            None => Err(Error::Invalid(
                "no store: pass --store DIR or set LAYOUTFS_STORE".into(),
            )),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn records(&self) -> &Records {
        &self.records
    }

    /// Starts a lease: what it holds, gc keeps (see `leases`).
    pub fn lease(&self) -> Result<Lease> {
        self.leases.create()
    }

    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.blob_path())
    }

    pub fn has_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blob_size(digest)?.is_some())
    }

    /// Starts writing a blob that must hash to `expected` (and be `size` bytes, if known).
    pub fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Ingest<'_>> {
        Ingest::start(self, expected, size)
    }

    /// Opens a blob for reading and checks that its size is `desc.size`: stored sizes are
    /// never trusted blindly.
    pub fn open_blob(&self, desc: &Descriptor) -> Result<File> {
        let path = self.blob_path(&desc.digest);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingBlob {
                digest: desc.digest.clone(),
                referrer: None,
            },
            _ => Error::io(&path, e),
        })?;
        let size = file.metadata().at(&path)?.size();
        if size != desc.size {
            return Err(Error::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                found: size,
            });
        }
        Ok(file)
    }
}

impl BlobSource for Store {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.size())),
            Ok(_) => Err(Error::io(
                &path,
                std::io::Error::other("not a regular file"),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Reads a manifest or index and re-hashes it: they are small, and a damaged one would
    /// mislead every walk.
    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        oci::check_json_size(&format!("blob {}", desc.digest), desc.size)?;
        let mut bytes = Vec::with_capacity(desc.size as usize);
        self.open_blob(desc)?
            .take(desc.size + 1)
            .read_to_end(&mut bytes)
            .at(self.blob_path(&desc.digest))?;
        check_bytes(desc, &bytes)?;
        Ok(bytes)
    }
}

/// Checks that `bytes` are the content `desc` describes.
pub fn check_bytes(desc: &Descriptor, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 != desc.size {
        return Err(Error::SizeMismatch {
            digest: desc.digest.clone(),
            expected: desc.size,
            found: bytes.len() as u64,
        });
    }
    let found = Digest::of(desc.digest.algorithm(), bytes);
    if found != desc.digest {
        return Err(Error::DigestMismatch {
            expected: desc.digest.clone(),
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store")).unwrap();
        (dir, s)
    }

    #[test]
    fn many_first_opens_of_a_new_store_at_once_all_succeed() {
        // SQLite refuses some of these at once with BUSY (no busy handler runs): the journal
        // switch to WAL and the first schema write race.
        const HANDLES: usize = 8;
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("store");
            let start = std::sync::Barrier::new(HANDLES);
            std::thread::scope(|scope| {
                let opened: Vec<_> = (0..HANDLES)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            Store::open(&root).map(|_| ())
                        })
                    })
                    .collect();
                for h in opened {
                    h.join().unwrap().unwrap();
                }
            });
        }
    }

    fn blobs_in(s: &Store) -> usize {
        Algorithm::ALL
            .iter()
            .map(|a| {
                fs::read_dir(s.root().join(BLOBS_DIR).join(a.name()))
                    .unwrap()
                    .count()
            })
            .sum()
    }

    fn ingests_in(s: &Store) -> usize {
        fs::read_dir(s.root().join(INGEST_DIR)).unwrap().count()
    }

    #[test]
    fn commit_verifies_then_places_a_read_only_blob() {
        let (_t, s) = store();
        for alg in Algorithm::ALL {
            let d = Digest::of(alg, b"hello");
            let mut w = s.ingest(&d, Some(5)).unwrap();
            w.write_all(b"hel").unwrap();
            assert!(!s.has_blob(&d).unwrap(), "visible before commit");
            w.write_all(b"lo").unwrap();
            assert!(w.commit().unwrap());
            let meta = fs::metadata(s.blob_path(&d)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, BLOB_MODE);
            assert_eq!(fs::read(s.blob_path(&d)).unwrap(), b"hello");
            // Committing the same content again is a success that stores nothing new.
            let mut w = s.ingest(&d, None).unwrap();
            w.write_all(b"hello").unwrap();
            assert!(!w.commit().unwrap());
        }
        assert_eq!(blobs_in(&s), 2);
        assert_eq!(ingests_in(&s), 0);
    }

    #[test]
    fn failed_ingests_leave_nothing() {
        let (_t, s) = store();
        let d = Digest::of(Algorithm::Sha256, b"hello");
        type Case = (&'static [u8], Option<u64>, fn(&Error) -> bool);
        let cases: [Case; 4] = [
            (b"hellp", Some(5), |e| {
                matches!(e, Error::DigestMismatch { .. })
            }),
            (b"hell", Some(5), |e| {
                matches!(e, Error::SizeMismatch { found: 4, .. })
            }),
            (b"hello!", None, |e| {
                matches!(e, Error::DigestMismatch { .. })
            }),
            (b"hell", None, |e| matches!(e, Error::DigestMismatch { .. })),
        ];
        for (bytes, size, want) in cases {
            let mut w = s.ingest(&d, size).unwrap();
            w.write_all(bytes).unwrap();
            let err = w.commit().unwrap_err();
            assert!(want(&err), "{bytes:?}: {err}");
        }
        // A write past the known size fails at once.
        let mut w = s.ingest(&d, Some(5)).unwrap();
        assert!(matches!(
            w.write_all(b"hello!"),
            Err(Error::SizeMismatch { found: 6, .. })
        ));
        drop(w);
        // Abandoned without a commit.
        let mut w = s.ingest(&d, Some(5)).unwrap();
        w.write_all(b"he").unwrap();
        drop(w);
        assert_eq!(blobs_in(&s), 0);
        assert_eq!(ingests_in(&s), 0);
    }

    #[test]
    fn concurrent_writers_of_one_digest_all_succeed_and_store_it_once() {
        let (_t, s) = store();
        let data = vec![7u8; 3 << 20];
        let d = Digest::of(Algorithm::Sha256, &data);
        let placed: Vec<bool> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    sc.spawn(|| {
                        let mut w = s.ingest(&d, Some(data.len() as u64)).unwrap();
                        for chunk in data.chunks(64 << 10) {
                            w.write_all(chunk).unwrap();
                        }
                        w.commit().unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(placed.iter().filter(|p| **p).count() <= 1, "{placed:?}");
        assert_eq!(fs::read(s.blob_path(&d)).unwrap(), data);
        assert_eq!(blobs_in(&s), 1);
        assert_eq!(ingests_in(&s), 0);
    }

    #[test]
    fn reads_check_stored_sizes_and_small_blob_content() {
        let (_t, s) = store();
        let d = Digest::of(Algorithm::Sha256, b"{}");
        let mut w = s.ingest(&d, None).unwrap();
        w.write_all(b"{}").unwrap();
        w.commit().unwrap();
        let mut desc = crate::oci::tests::desc("application/json", d.clone(), 2);
        assert_eq!(s.read_small(&desc).unwrap(), b"{}");
        desc.size = 3;
        assert!(matches!(
            s.open_blob(&desc),
            Err(Error::SizeMismatch { .. })
        ));
        // Damage on disk is caught when a manifest is read.
        let p = s.blob_path(&d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"[]").unwrap();
        desc.size = 2;
        assert!(matches!(
            s.read_small(&desc),
            Err(Error::DigestMismatch { .. })
        ));
        let other = Digest::of(Algorithm::Sha256, b"other");
        desc.digest = other;
        assert!(matches!(s.open_blob(&desc), Err(Error::MissingBlob { .. })));
    }
}
