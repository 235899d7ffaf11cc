//! An upload: the bytes of a file written into the mount, in a `content::Draft` of the store
//! (the local store's is one of its ingest writers, `store::BlobWriter`, made `hash_behind`:
//! what large writes append is hashed on a thread of its own, read back from the file, while
//! the next writes arrive; writes go to the page cache and the kernel is asked to write them
//! back every few MiB, so the disk works while the next writes arrive, as import's writes do).
//! An fsync that commits nothing waits for them (`sync`), and a commit makes the blob durable,
//! so a failed writeback is reported to the writer there. Whatever name the file has, its bytes stay in the
//! ingest until it is committed as a blob (verified against the digest its name gives), read
//! as `index.json` or `oci-layout`, or dropped. Writes out of order are allowed; the digest is
//! then computed from the file. Dropping an upload removes its ingest. An upload nothing has
//! open (a temporary file after close) is parked: its descriptors are closed and the file is
//! opened again at the next access, so that thousands of temporary files hold no descriptor of
//! the daemon's. The daemon keeps no bytes of an upload in memory, so its memory does not grow
//! with the size or the number of files written. What is the mount's own here: reading a small
//! file whole (`read_small`).

use std::io;

use crate::content::{Content, Draft};
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};

pub struct Upload(Box<dyn Draft>);

impl Upload {
    /// A new, empty upload in `content`; `alg` is the hash kept while it is written.
    pub fn new(content: &dyn Content, alg: Algorithm) -> Result<Upload> {
        Ok(Upload(content.draft(alg)?))
    }

    /// Drops the upload but may leave its bytes, as a process that died would: the next
    /// mount, or gc, removes them (the daemon's exit does not wait for the disk).
    pub fn abandon(self) {
        self.0.abandon();
    }

    /// Closes the upload's descriptors; the next access opens the data file again.
    pub fn park(&mut self) {
        self.0.park();
    }

    /// Whether the upload holds no descriptor now.
    pub fn is_parked(&self) -> bool {
        self.0.is_parked()
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Writes `buf` at `offset`. After an error the upload is not to be committed.
    pub fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        self.0.write_at(offset, buf)
    }

    /// Waits until the bytes written are on the disk; a failed writeback is reported here.
    /// After an error the upload is not to be committed.
    pub fn sync(&mut self) -> Result<()> {
        self.0.sync()
    }

    pub fn read_at(&mut self, offset: u64, size: u32, buf: &mut Vec<u8>) -> Result<()> {
        self.0.read_at(offset, size, buf)
    }

    pub fn truncate(&mut self, size: u64) -> Result<()> {
        self.0.truncate(size)
    }

    /// The whole content, for small files (`index.json`, `oci-layout`): at most `cap` bytes.
    pub fn read_small(&mut self, what: &str, cap: u64) -> Result<Vec<u8>> {
        let len = self.0.len();
        let Some(size) = u32::try_from(len).ok().filter(|_| len <= cap) else {
            return Err(Error::TooLarge {
                file: what.to_owned(),
                size: len,
                cap,
            });
        };
        let mut buf = Vec::new();
        self.0.read_at(0, size, &mut buf)?;
        Ok(buf)
    }

    /// The digest of the content with `alg` (the running hash when the writes came in order).
    pub fn digest(&mut self, alg: Algorithm) -> Result<Digest> {
        self.0.digest(alg)
    }

    /// The content from its start, as a reader (a layer read back for its diff_id).
    pub fn reader(&mut self) -> UploadReader<'_> {
        UploadReader {
            upload: self,
            at: 0,
            buf: Vec::new(),
        }
    }

    /// Checks the content against the blob `expected` (and `size` bytes, when a descriptor
    /// gives it), leaving the upload as it is.
    pub fn verify(&mut self, expected: &Digest, size: Option<u64>) -> Result<()> {
        self.0.verify(expected, size)
    }

    /// Verifies the content as the blob `expected` and makes it a blob of the store it was
    /// made in. Returns false when the store had it already. The upload is spent either way.
    pub fn commit(self, expected: &Digest, size: Option<u64>) -> Result<bool> {
        self.0.commit(expected, size)
    }
}

/// Bytes one read of an `UploadReader` asks of the ingest file at most.
const READ_CHUNK: usize = 1 << 20;

/// An upload's content read in order (`Upload::reader`).
pub struct UploadReader<'a> {
    upload: &'a mut Upload,
    at: u64,
    buf: Vec<u8>,
}

impl io::Read for UploadReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let want = out.len().min(READ_CHUNK) as u32;
        self.upload
            .read_at(self.at, want, &mut self.buf)
            .map_err(io::Error::other)?;
        let n = self.buf.len();
        out[..n].copy_from_slice(&self.buf);
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn large_writes_in_order_commit_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let content: Vec<u8> = (0..(2u32 << 20) + 100)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let d = Digest::of(Algorithm::Sha256, &content);
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        for (i, chunk) in content.chunks(1 << 20).enumerate() {
            u.write_at((i << 20) as u64, chunk).unwrap();
        }
        let mut back = Vec::new();
        u.read_at((1 << 20) - 10, 20, &mut back).unwrap();
        assert_eq!(back, &content[(1 << 20) - 10..(1 << 20) + 10]);
        assert!(u.commit(&d, Some(content.len() as u64)).unwrap());
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), content);
    }

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
        assert!(u.commit(&d, Some(content.len() as u64)).unwrap());
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), content);

        // In order again: already there.
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        u.write_at(0, &content).unwrap();
        assert!(!u.commit(&d, None).unwrap());

        // Wrong bytes, wrong size, truncated: nothing enters the store, nothing is left.
        let other = Digest::of(Algorithm::Sha256, b"other");
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        u.write_at(0, &content).unwrap();
        assert!(matches!(
            u.commit(&other, None),
            Err(Error::DigestMismatch { .. })
        ));
        let mut u = Upload::new(&store, Algorithm::Sha256).unwrap();
        u.write_at(0, &content).unwrap();
        u.truncate(10).unwrap();
        assert!(matches!(
            u.commit(&d, Some(content.len() as u64)),
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
