//! An upload: the bytes of a file written into the mount, kept in an ingest directory of the
//! store (`ingest/<id>/data`) and hashed while they arrive in order. Whatever name the file has,
//! its bytes stay here until it is committed as a blob (verified against the digest its name
//! gives), read as `index.json` or `oci-layout`, or dropped. Writes out of order are allowed;
//! the hash is then computed from the file at commit. Dropping an upload removes its directory.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};
use crate::store::{self, Store};

/// Read size while hashing an upload that was not written in order.
const HASH_CHUNK: usize = 1 << 20;

pub struct Upload {
    dir: PathBuf,
    file: File,
    /// Running hash of bytes 0..len, while every write has continued where the last ended.
    hasher: Option<Hasher>,
    len: u64,
}

impl Upload {
    /// A new, empty upload; `alg` is the hash kept while it is written.
    pub fn new(store: &Store, alg: Algorithm) -> Result<Upload> {
        let (dir, file) = store::new_ingest(store)?;
        Ok(Upload {
            dir,
            file,
            hasher: Some(alg.hasher()),
            len: 0,
        })
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(self.data(), e))?;
        match &mut self.hasher {
            Some(h) if offset == self.len => h.update(buf),
            _ => self.hasher = None,
        }
        self.len = self.len.max(offset + buf.len() as u64);
        Ok(())
    }

    pub fn read_at(&self, offset: u64, size: u32, buf: &mut Vec<u8>) -> Result<()> {
        let want = self.len.saturating_sub(offset).min(u64::from(size)) as usize;
        buf.clear();
        buf.resize(want, 0);
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(self.data(), e))
    }

    pub fn truncate(&mut self, size: u64) -> Result<()> {
        self.file
            .set_len(size)
            .map_err(|e| Error::io(self.data(), e))?;
        if size == 0 {
            if let Some(h) = &self.hasher {
                self.hasher = Some(h.algorithm().hasher());
            }
        } else if size != self.len {
            self.hasher = None;
        }
        self.len = size;
        Ok(())
    }

    /// The whole content, for small files (`index.json`, `oci-layout`): at most `cap` bytes.
    pub fn read_small(&self, what: &str, cap: u64) -> Result<Vec<u8>> {
        crate::oci::check_json_size(what, self.len)?;
        if self.len > cap {
            return Err(Error::TooLarge {
                file: what.to_owned(),
                size: self.len,
                cap,
            });
        }
        let mut buf = Vec::new();
        self.read_at(0, self.len as u32, &mut buf)?;
        Ok(buf)
    }

    /// The digest of the content with `alg`.
    fn digest(&self, alg: Algorithm) -> io::Result<Digest> {
        if let Some(h) = &self.hasher {
            if h.algorithm() == alg {
                return Ok(h.clone().finish());
            }
        }
        let mut h = alg.hasher();
        let mut buf = vec![0u8; HASH_CHUNK];
        let mut offset = 0;
        while offset < self.len {
            let n = (self.len - offset).min(HASH_CHUNK as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], offset)?;
            h.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(h.finish())
    }

    /// Checks the content against the blob `expected` (and `size` bytes, when a descriptor
    /// gives it), leaving the upload as it is.
    pub fn verify(&self, expected: &Digest, size: Option<u64>) -> Result<()> {
        if let Some(size) = size {
            if self.len != size {
                return Err(Error::SizeMismatch {
                    digest: expected.clone(),
                    expected: size,
                    found: self.len,
                });
            }
        }
        let found = self
            .digest(expected.algorithm())
            .map_err(|e| Error::io(self.data(), e))?;
        if found != *expected {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                found,
            });
        }
        Ok(())
    }

    /// Verifies the content as the blob `expected` and moves it into the store. Returns false
    /// when the store had it already. The upload is spent either way.
    pub fn commit(self, store: &Store, expected: &Digest, size: Option<u64>) -> Result<bool> {
        self.verify(expected, size)?;
        store::place(store, &self.file, &self.data(), expected)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_out_of_order_writes_commit_or_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let content = b"hello, layout".repeat(1000);
        let d = Digest::of(Algorithm::Sha256, &content);

        // Out of order, with a rewrite: hashed from the file at commit.
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        u.write_at(5000, &content[5000..]).unwrap();
        u.write_at(0, &[0u8; 5000]).unwrap();
        u.write_at(0, &content[..5000]).unwrap();
        let mut back = Vec::new();
        u.read_at(4990, 20, &mut back).unwrap();
        assert_eq!(back, &content[4990..5010]);
        assert!(u.commit(&store, &d, Some(content.len() as u64)).unwrap());
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), content);

        // In order again: already there.
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        u.write_at(0, &content).unwrap();
        assert!(!u.commit(&store, &d, None).unwrap());

        // Wrong bytes, wrong size, truncated: nothing enters the store, nothing is left.
        let other = Digest::of(Algorithm::Sha256, b"other");
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        u.write_at(0, &content).unwrap();
        assert!(matches!(
            u.commit(&store, &other, None),
            Err(Error::DigestMismatch { .. })
        ));
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        u.write_at(0, &content).unwrap();
        u.truncate(10).unwrap();
        assert!(matches!(
            u.commit(&store, &d, Some(content.len() as u64)),
            Err(Error::SizeMismatch { .. })
        ));
        assert!(!store.blob_path(&other).exists());
        assert_eq!(
            std::fs::read_dir(tmp.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }
}
