//! The filesystem core over a store in a temporary directory, driven as the kernel would drive
//! it (lookups from the root, open, read, release): for the tests that need no mount.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::sync::Arc;

use layoutfs::fs::{Attr, Fs, FsError, FsOptions};
use layoutfs::store::Store;

/// Bytes asked for per read call.
const READ_SIZE: u32 = 64 << 10;

pub struct Harness {
    pub tmp: tempfile::TempDir,
    pub store: Arc<Store>,
    pub fs: Fs,
}

impl Harness {
    pub fn new() -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&tmp.path().join("store")).unwrap());
        let fs = Fs::new(store.clone(), FsOptions::default());
        Harness { tmp, store, fs }
    }

    /// Looks `path` up component by component from the root.
    pub fn walk(&self, path: &str) -> Result<Attr, FsError> {
        let mut attr = self.fs.getattr(layoutfs::fs::root_ino())?;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            attr = self.fs.lookup(attr.ino, OsStr::new(c))?;
        }
        Ok(attr)
    }

    /// The names in directory `path`, without `.` and `..`.
    pub fn list(&self, path: &str) -> Result<Vec<String>, FsError> {
        let fh = self.fs.opendir(self.walk(path)?.ino)?;
        let names = self.fs.readdir(fh, 0);
        self.fs.releasedir(fh);
        Ok(names?
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n != "." && n != "..")
            .collect())
    }

    /// The whole file at `path`, read by process `pid`; the handle is released on error too.
    pub fn read_as(&self, path: &str, pid: u32) -> Result<Vec<u8>, FsError> {
        let attr = self.walk(path)?;
        let opened = self.fs.open(attr.ino, libc::O_RDONLY, pid)?;
        let mut out = Vec::new();
        let result = loop {
            match self.fs.read(opened.fh, out.len() as u64, READ_SIZE) {
                Ok(chunk) if chunk.is_empty() => break Ok(out),
                Ok(chunk) => out.extend(chunk),
                Err(e) => break Err(e),
            }
        };
        self.fs.release(opened.fh);
        result
    }
}
