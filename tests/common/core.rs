//! The filesystem core over a store in a temporary directory, driven as the kernel would drive
//! it (lookups from the root, open, read, release): for the tests that need no mount.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::sync::Arc;

use std::collections::BTreeSet;
use std::path::Path;

use layoutfs::content::Content;
use layoutfs::fs::{Attr, Fs, FsError, FsOptions, Kind};
use layoutfs::store::Store;

use super::memory::Memory;

use super::gen::LayoutBuilder;

/// Bytes asked for per read call.
const READ_SIZE: u32 = 64 << 10;
/// Bytes per write call, as cp issues them.
const CHUNK: usize = 64 << 10;

/// The core over a store of type `C`: the local `Store` (most tests), or `dyn Backend`, any
/// implementation of the content interfaces (the local store or content in memory), for the
/// tests that run against each.
pub struct Harness<C: ?Sized = Store> {
    pub tmp: tempfile::TempDir,
    pub store: Arc<C>,
    pub fs: Fs,
}

/// What the core's tests ask of a store besides what the mount takes: the blobs it holds.
pub trait Backend: Content {
    /// The hex digests of its sha256 blobs.
    fn blob_hexes(&self) -> BTreeSet<String>;
}

impl Backend for Store {
    fn blob_hexes(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.root().join("blobs/sha256"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Backend for Memory {
    fn blob_hexes(&self) -> BTreeSet<String> {
        self.digests()
            .into_iter()
            .filter(|d| d.algorithm() == layoutfs::digest::Algorithm::Sha256)
            .map(|d| d.hex().to_owned())
            .collect()
    }
}

impl Harness<dyn Backend> {
    /// The core over the local store, seen only through the content interfaces.
    pub fn local() -> Harness<dyn Backend> {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn Backend> = Arc::new(Store::open(&tmp.path().join("store")).unwrap());
        Harness::over(tmp, store)
    }

    /// The core over content held in memory (tests/common/memory.rs).
    pub fn in_memory() -> Harness<dyn Backend> {
        Harness::over(tempfile::tempdir().unwrap(), Arc::new(Memory::new()))
    }

    fn over(tmp: tempfile::TempDir, store: Arc<dyn Backend>) -> Harness<dyn Backend> {
        let content: Arc<dyn Content> = store.clone();
        let fs = Fs::new(content, FsOptions::default());
        Harness { tmp, store, fs }
    }
}

impl Harness {
    pub fn new() -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&tmp.path().join("store")).unwrap());
        let fs = Fs::new(store.clone(), FsOptions::default());
        Harness { tmp, store, fs }
    }

    pub fn images(&self) -> Vec<String> {
        image_names(&self.store)
    }

    /// Imports `src` as `filler` and gives its first image `n` more names: many records, so
    /// that what lists or rewrites them all (a rename's records I/O) takes a while.
    pub fn fill_records(&self, src: &Path, n: usize) {
        let imported = layoutfs::archive::import::import(
            &*self.store,
            &layoutfs::archive::import::Source::Dir(src.to_owned()),
            Some("filler"),
        )
        .unwrap();
        let target = self
            .store
            .records()
            .get(&imported.names[0])
            .unwrap()
            .unwrap()
            .target;
        let filler: Vec<_> = (0..n)
            .map(|i| (format!("filler{i}:t").parse().unwrap(), target.clone()))
            .collect();
        self.store.records().put(&filler).unwrap();
    }

    /// A gc in another process, with no grace for anything abandoned: the blobs it removed.
    pub fn gc_now(&self) -> Vec<String> {
        let options = layoutfs::store::gc::GcOptions {
            dry_run: false,
            grace: std::time::Duration::ZERO,
        };
        let other = Store::open(self.store.root()).unwrap();
        let report = layoutfs::store::gc::gc(&other, &options).unwrap();
        report
            .blobs
            .iter()
            .map(|(d, _)| d.hex().to_owned())
            .collect()
    }

    pub fn store_blobs(&self) -> BTreeSet<String> {
        self.store.blob_hexes()
    }

    pub fn ingests(&self) -> usize {
        std::fs::read_dir(self.store.root().join("ingest"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn import_dir(&self, src: &std::path::Path, repo: &str) {
        layoutfs::archive::import::import(
            &*self.store,
            &layoutfs::archive::import::Source::Dir(src.to_owned()),
            Some(repo),
        )
        .unwrap();
        self.fs.invalidate();
    }

    pub fn kept(&self) -> Vec<String> {
        self.store.records().repositories().unwrap()
    }
}

impl<C: ?Sized> Harness<C> {
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

    /// A layout of `images` small images tagged t0, t1...; returns its directory.
    pub fn layout(&self, name: &str, images: usize, seed: u64) -> std::path::PathBuf {
        let dir = self.tmp.path().join(name);
        let mut b = LayoutBuilder::new(&dir);
        for i in 0..images {
            b.small_image(&format!("t{i}"), 2, 5000 + i as u64, seed + i as u64);
        }
        dir
    }

    pub fn split<'a>(&self, path: &'a str) -> (u64, &'a str) {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        (self.walk(parent).unwrap().ino, name)
    }

    pub fn mkdir_p(&self, path: &str) -> Result<(), FsError> {
        let mut done = String::new();
        for c in path.split('/') {
            let parent = self.walk(&done)?.ino;
            if self.fs.lookup(parent, OsStr::new(c)).is_err() {
                self.fs.mkdir(parent, c)?;
            }
            done = if done.is_empty() {
                c.to_owned()
            } else {
                format!("{done}/{c}")
            };
        }
        Ok(())
    }

    /// Writes `bytes` to `path` as cp does (create or truncate, writes, close) by process
    /// `pid`; the first error is returned, and the handle is always released.
    pub fn put(&self, path: &str, bytes: &[u8], pid: u32) -> Result<(), FsError> {
        let (parent, name) = self.split(path);
        let fh = match self.fs.lookup(parent, OsStr::new(name)) {
            Ok(a) => self.fs.open(a.ino, libc::O_WRONLY | libc::O_TRUNC, pid)?.fh,
            Err(_) => self.fs.create(parent, name)?.1.fh,
        };
        let mut result = Ok(());
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            if let Err(e) = self.fs.write(fh, (i * CHUNK) as u64, chunk) {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() {
            result = self.fs.flush(fh, pid);
        }
        self.fs.release(fh);
        result
    }

    /// Copies layout `src` into the mount at `dst` (mkdir first), index.json first or last.
    pub fn copy_in(&self, src: &Path, dst: &str, index_first: bool) -> Result<(), FsError> {
        self.mkdir_p(dst)?;
        let index = std::fs::read(src.join("index.json")).unwrap();
        if index_first {
            self.put(&format!("{dst}/index.json"), &index, 1)?;
        }
        self.put(
            &format!("{dst}/oci-layout"),
            &std::fs::read(src.join("oci-layout")).unwrap(),
            1,
        )?;
        self.mkdir_p(&format!("{dst}/blobs/sha256"))?;
        for e in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            self.put(
                &format!("{dst}/blobs/sha256/{name}"),
                &std::fs::read(e.path()).unwrap(),
                1,
            )?;
        }
        if !index_first {
            self.put(&format!("{dst}/index.json"), &index, 1)?;
        }
        Ok(())
    }
    /// `rm -r path` as coreutils does it: readdir, unlink files, recurse into directories,
    /// rmdir. Returns the first error.
    pub fn rm_r(&self, path: &str) -> Result<(), FsError> {
        for name in self.list(path)? {
            let child = format!("{path}/{name}");
            let attr = self.walk(&child)?;
            if attr.kind == Kind::Dir {
                self.rm_r(&child)?;
            } else {
                let (parent, n) = self.split(&child);
                self.fs.unlink(parent, n)?;
            }
        }
        let (parent, n) = self.split(path);
        self.fs.rmdir(parent, n)
    }
}

impl<C: ?Sized> Harness<C> {
    /// `ln -s target path`.
    pub fn symlink(&self, path: &str, target: &str) -> Result<Attr, FsError> {
        let (parent, name) = self.split(path);
        self.fs.symlink(parent, name, target, 1)
    }

    /// `readlink path`.
    pub fn readlink(&self, path: &str) -> Result<String, FsError> {
        self.fs.readlink(self.walk(path)?.ino)
    }

    /// `rm path` (a file or a link).
    pub fn rm(&self, path: &str) -> Result<(), FsError> {
        let (parent, name) = self.split(path);
        self.fs.unlink(parent, name)
    }

    /// `rmdir path`.
    pub fn rmdir(&self, path: &str) -> Result<(), FsError> {
        let (parent, name) = self.split(path);
        self.fs.rmdir(parent, name)
    }

    /// `mv from to`, by process `pid`.
    pub fn mv(&self, from: &str, to: &str, pid: u32) -> Result<(), FsError> {
        let (p, n) = self.split(from);
        let (np, nn) = self.split(to);
        self.fs.rename(p, n, np, nn, false, pid)
    }
}

/// The (name -> bytes) of every blob of a layout directory.
pub fn source_blobs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The names of a store's images, sorted.
pub fn image_names(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = store
        .records()
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.name.to_string())
        .collect();
    v.sort();
    v
}
