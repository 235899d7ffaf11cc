//! The filesystem core: the store's repositories as a tree of OCI layouts, with lookup, getattr,
//! readdir, open, read and statfs returning plain results. It knows nothing of fuser; the
//! `fuse` module is a thin adapter over it, and the tests drive it with no kernel.
//!
//! ```text
//! /                        Node::Dir("")
//!   docker.io/library/     Node::Dir(path) for each prefix of a repository name
//!     busybox/             Node::Dir(repo), a repository: holds the three layout names
//!       oci-layout         Node::LayoutFile(repo)
//!       index.json         Node::Index(repo): the export's bytes for the same images
//!       blobs/             Node::Blobs(repo)
//!         sha256/          Node::AlgDir(repo, alg)
//!           <hex>          Node::Blob(digest, size): the store's file, checked on open
//! ```
//!
//! An open blob holds its store file once per inode, however many opens (`blob_files`): the
//! descriptor is shared by reads and by passthrough, and closed at the last release.
//!
//! The lock order of the whole core is written once, in `state`.

mod docker_archive;
pub mod error;
pub mod images;
pub mod inode;
mod links;
mod moves;
mod staged;
pub mod state;
pub mod upload;
pub mod verify;
pub mod view;
pub mod write;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::content::Content;
use crate::digest::{Algorithm, Digest};
use crate::error::Error;
use crate::oci;

pub use error::{FsError, FsResult};
use inode::{Inodes, Node, ROOT_INO};
use state::{ScratchKind, Shared, WriteState};
use verify::Verifier;
use view::{RepoView, Views, LAYOUT_NAMES};

/// How long the kernel may cache what changes when images come and go: directory entries,
/// directory attributes, `index.json`'s attributes, and the name of every file.
pub const DYNAMIC_TTL: Duration = Duration::from_millis(500);
/// How long the kernel may cache the attributes of what never changes: a blob, `oci-layout`.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(3600);
/// The size of a directory in `stat`, and the block size `statfs` reports.
pub const BLOCK_SIZE: u32 = 4096;
/// The preferred I/O size `stat` reports (`st_blksize`): cp, cat and tar size their buffers by
/// it, and one large request through FUSE costs much less than many small ones.
pub const IO_SIZE: u32 = 1 << 20;
/// The unit of `st_blocks`.
const STAT_BLOCK: u64 = 512;

const DIR_MODE: u16 = 0o755;
const DIR_MODE_RO: u16 = 0o555;
const BLOB_MODE: u16 = 0o444;
const LAYOUT_FILE_MODE: u16 = 0o444;
const INDEX_MODE: u16 = 0o644;
const INDEX_MODE_RO: u16 = 0o444;
/// A symbolic link's mode, as on a disk (its target's decides access).
const LINK_MODE: u16 = 0o777;

/// Who looks into a repository directory. A repository made with mkdir in this mount shows its
/// layout names (and `blobs/sha256/`) to every process but its maker, which sees each once it
/// is written, as on a disk: it goes on creating them exclusively (cp -r: open with O_EXCL,
/// mkdir) and must not find them there first.
#[derive(Clone, Copy)]
pub(crate) enum Viewer<'a> {
    /// Any process but the maker (the core's own reads, tests).
    Reader,
    /// The maker, or the mount acting for a write: what was written.
    Maker,
    /// A process, by id, asked only when the answer depends on it.
    Process(&'a dyn Fn() -> u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    /// A symbolic link written into a repository (`fs::links`).
    Symlink,
}

/// A node's attributes, with how long the kernel may cache them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub blocks: u64,
    pub perm: u16,
    pub nlink: u32,
    pub mtime: SystemTime,
    pub uid: u32,
    pub gid: u32,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

/// How the kernel should cache an opened file's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caching {
    /// Keep pages across opens (immutable content).
    Keep,
    /// No page cache at all: every read comes here (content that changes with the images).
    Direct,
}

/// An open file.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    pub caching: Caching,
    /// The store file behind a blob, for the adapter to hand to the kernel (passthrough).
    pub backing: Option<Arc<File>>,
}

/// Filesystem statistics (of the store's filesystem).
pub type Statfs = crate::content::Space;

enum Handle {
    Blob {
        ino: u64,
        digest: Digest,
        size: u64,
        /// Shared by every open of this inode (see `Fs::blob_files`).
        file: Arc<File>,
    },
    Bytes(Arc<[u8]>),
    Dir(Arc<Listing>),
    /// A file open for writing: its upload, shared with its scratch entry if it has one.
    Upload {
        ino: u64,
        shared: Shared,
    },
}

impl Handle {
    /// The inode a handle keeps from being freed (see `Fs::pinned`).
    fn ino(&self) -> Option<u64> {
        match self {
            Handle::Blob { ino, .. } | Handle::Upload { ino, .. } => Some(*ino),
            Handle::Bytes(_) | Handle::Dir(_) => None,
        }
    }
}

/// An open directory's entries, read at opendir, with the node of each (None for `..` of a
/// temporary directory, known by number only) for readdirplus to count and describe.
pub(crate) struct Listing {
    entries: Vec<DirEntry>,
    nodes: Vec<Option<Node>>,
}

/// How the mount behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsOptions {
    pub read_only: bool,
    /// Hash every blob on its first open, whatever the store recorded (`fs::verify`).
    pub verify_reads: bool,
}

/// The filesystem over one store.
pub struct Fs {
    views: Views,
    inodes: Inodes,
    verifier: Verifier,
    handles: Mutex<HashMap<u64, Handle>>,
    /// How many open handles each inode has (`Handle::ino`): such an inode is never freed.
    open_inos: Mutex<HashMap<u64, u32>>,
    /// Held (shared) from a write that hands the kernel an entry (create, mkdir, symlink) until
    /// its lookup is counted, and (exclusive) by `forget`: a number is never freed between.
    entries: parking_lot::RwLock<()>,
    /// The store file behind each blob inode while any open of it lasts: one descriptor per
    /// blob, for reads and passthrough alike, however many opens; dropped with the last.
    blob_files: Mutex<HashMap<u64, std::sync::Weak<File>>>,
    /// Modification times set on files (utimensat), by inode, for the mount's life.
    mtimes: Mutex<HashMap<u64, SystemTime>>,
    next_fh: AtomicU64,
    options: FsOptions,
    uid: u32,
    gid: u32,
    layout_file: Arc<[u8]>,
    /// The time of directories with no image below them (an empty store's root).
    started: SystemTime,
    /// The write side's state (see `state`); the views read what it adds to the records.
    write: Arc<Mutex<WriteState>>,
    /// Serialises every change of image records and pending images made through the mount.
    write_lock: Mutex<()>,
    /// What keeps blobs written through a writable mount, and those of pending images, from
    /// a gc before an image record holds them (see `fs::write`).
    lease: Option<Box<dyn crate::content::Lease>>,
}

impl Fs {
    /// The mount's core over `content` (the local store, or any other `Content`); read-only
    /// when asked or when the content is.
    pub fn new(content: Arc<dyn Content>, mut options: FsOptions) -> Fs {
        options.read_only |= content.is_read_only();
        // SAFETY: geteuid and getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let lease = if options.read_only {
            None
        } else {
            content
                .lease()
                .map_err(|e| tracing::warn!("no lease: a gc may remove blobs being copied in: {e}"))
                .ok()
        };
        let write = Arc::new(Mutex::new(WriteState::default()));
        Fs {
            lease,
            views: Views::new(content, write.clone()),
            inodes: Inodes::new(),
            verifier: Verifier::new(options.verify_reads),
            handles: Mutex::new(HashMap::new()),
            open_inos: Mutex::new(HashMap::new()),
            entries: parking_lot::RwLock::new(()),
            blob_files: Mutex::new(HashMap::new()),
            mtimes: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            options,
            uid,
            gid,
            layout_file: Arc::from(oci::layout_file_bytes()),
            started: SystemTime::now(),
            write,
            write_lock: Mutex::new(()),
        }
    }

    /// The store the mount shows.
    pub fn content(&self) -> &dyn Content {
        self.views.content()
    }

    /// Forgets the cached view of the records (after this process changed them).
    pub fn invalidate(&self) {
        self.views.invalidate();
    }

    fn node(&self, ino: u64) -> FsResult<Node> {
        self.inodes.node(ino).ok_or(FsError::NotFound)
    }

    fn repo(&self, repo: &str) -> FsResult<Arc<RepoView>> {
        self.views.repo(repo)?.ok_or(FsError::NotFound)
    }

    /// Looks `name` up in `parent` as any reader does (see `Viewer`).
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        self.lookup_in(parent, name, Viewer::Reader)
    }

    /// Looks `name` up for a process, whose id `pid` gives when asked (only a repository made
    /// with mkdir in this mount asks, see `Viewer`).
    pub fn lookup_as(&self, parent: u64, name: &OsStr, pid: &dyn Fn() -> u32) -> FsResult<Attr> {
        self.lookup_in(parent, name, Viewer::Process(pid))
    }

    /// Looks `name` up in `parent` for the mount's own use: no lookup counted.
    pub(crate) fn lookup_in(&self, parent: u64, name: &OsStr, viewer: Viewer) -> FsResult<Attr> {
        let child = self.child(parent, name, viewer)?;
        let ino = self.inodes.ino(&child);
        self.attr(ino, &child)
    }

    /// Looks `name` up in `parent` for the kernel, which is handed the entry: one lookup is
    /// counted on it (see `forget`). `pid` gives the process when asked (None: any reader).
    pub fn lookup_entry(
        &self,
        parent: u64,
        name: &OsStr,
        pid: Option<&dyn Fn() -> u32>,
    ) -> FsResult<Attr> {
        let viewer = pid.map_or(Viewer::Reader, Viewer::Process);
        let child = self.child(parent, name, viewer)?;
        let ino = self.inodes.entry(&child);
        self.attr(ino, &child).inspect_err(|_| self.forget(ino, 1))
    }

    /// The node `name` in `parent` stands for.
    fn child(&self, parent: u64, name: &OsStr, viewer: Viewer) -> FsResult<Node> {
        let name = name.to_str().ok_or(FsError::NotFound)?;
        let scratch = self.write.lock().lookup(parent, name);
        if let Some(id) = scratch {
            return Ok(Node::Scratch(id));
        }
        Ok(match self.node(parent)? {
            Node::Dir(path) => {
                let snapshot = self.views.snapshot()?;
                let dir = snapshot.dir(&path).ok_or(FsError::NotFound)?;
                match name {
                    "oci-layout" if self.layout_visible(&snapshot, &path, name, viewer) => {
                        Node::LayoutFile(path)
                    }
                    "index.json" if self.layout_visible(&snapshot, &path, name, viewer) => {
                        Node::Index(path)
                    }
                    "blobs" if self.layout_visible(&snapshot, &path, name, viewer) => {
                        Node::Blobs(path)
                    }
                    // Inside a repository a layout name is never a sub-repository (readdir
                    // leaves those out too): one made by import elsewhere is not reachable here.
                    _ if dir.repository && LAYOUT_NAMES.contains(&name) => {
                        return Err(FsError::NotFound)
                    }
                    _ if dir.children.contains(name) => Node::Dir(child_path(&path, name)),
                    _ => return Err(FsError::NotFound),
                }
            }
            Node::Blobs(repo) => {
                let alg = Algorithm::from_name(name).ok_or(FsError::NotFound)?;
                if !self.algorithms(&repo, viewer)?.contains(&alg) {
                    return Err(FsError::NotFound);
                }
                Node::AlgDir(repo, alg)
            }
            Node::AlgDir(repo, alg) => {
                let digest = Digest::from_parts(alg.name(), name).map_err(|_| FsError::NotFound)?;
                let size = self
                    .visible_blob(&repo, &digest)?
                    .ok_or(FsError::NotFound)?;
                Node::Blob(digest, size)
            }
            Node::Scratch(id) => {
                return match self.write.lock().scratch.get(&id).map(|s| &s.kind) {
                    Some(ScratchKind::Dir) => Err(FsError::NotFound),
                    Some(_) => Err(FsError::NotDir),
                    None => Err(FsError::NotFound),
                }
            }
            Node::LayoutFile(_) | Node::Index(_) | Node::Blob(..) => return Err(FsError::NotDir),
        })
    }

    /// The kernel dropped `n` references to inode `ino` (FUSE forget): at none left the
    /// number is freed unless something else pins it (`pinned`). A node freed and looked up
    /// again gets the same number (see `inode`).
    pub fn forget(&self, ino: u64, n: u64) {
        let _entries = self.entries.write();
        self.forget_locked(ino, n);
    }

    /// `forget` of many inodes at once (FUSE batch forget).
    pub fn batch_forget(&self, nodes: impl IntoIterator<Item = (u64, u64)>) {
        let _entries = self.entries.write();
        for (ino, n) in nodes {
            self.forget_locked(ino, n);
        }
    }

    fn forget_locked(&self, ino: u64, n: u64) {
        if let Some(node) = self.inodes.forget(ino, n) {
            if !self.pinned(ino, &node) {
                self.inodes.free(ino);
            }
        }
    }

    /// Frees inode `ino` if the kernel forgot every reference to it and nothing pins it
    /// (after what pinned it went: a last handle closed).
    fn free_if_unused(&self, ino: u64) {
        if self.inodes.lookups(ino) != Some(0) {
            return;
        }
        let _entries = self.entries.write();
        if let Some(node) = self.inodes.node(ino) {
            if self.inodes.lookups(ino) == Some(0) && !self.pinned(ino, &node) {
                self.inodes.free(ino);
            }
        }
    }

    /// Whether inode `ino` (standing for `node`) must keep its number though the kernel forgot
    /// it: the root; an open handle on it; a time set on it; a temporary entry still alive, or
    /// a directory with temporary entries in it (the write state names them by number).
    fn pinned(&self, ino: u64, node: &Node) -> bool {
        if ino == ROOT_INO
            || self.open_inos.lock().contains_key(&ino)
            || self.blob_files.lock().contains_key(&ino)
            || self.mtimes.lock().contains_key(&ino)
        {
            return true;
        }
        let w = self.write.lock();
        w.has_children(ino) || matches!(node, Node::Scratch(id) if w.scratch.contains_key(id))
    }

    /// Runs `f`, a write that hands the kernel an entry (create, mkdir, symlink), and counts
    /// one lookup on the inode `ino_of` names in its result, with no forget between.
    pub fn with_entry<T>(
        &self,
        f: impl FnOnce() -> FsResult<T>,
        ino_of: impl FnOnce(&T) -> u64,
    ) -> FsResult<T> {
        let _entries = self.entries.read();
        let r = f()?;
        self.inodes.add_lookup(ino_of(&r));
        Ok(r)
    }

    /// The references the kernel holds to `ino` by the counts (None: not live; for tests).
    pub fn lookups(&self, ino: u64) -> Option<u64> {
        self.inodes.lookups(ino)
    }

    /// Live inode numbers (the root included): what the kernel still holds, and what the mount
    /// pins (for tests and logs).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// The algorithm directories of `repo`, by the rule (`WriteState::algorithms`).
    pub(super) fn algorithms(
        &self,
        repo: &str,
        viewer: Viewer,
    ) -> FsResult<std::collections::BTreeSet<Algorithm>> {
        let view = self.repo(repo)?;
        Ok(self
            .write
            .lock()
            .algorithms(repo, viewer, || view.algorithms()))
    }

    /// The blob inode `ino` stands for, if it is one (listed, or written at a blob's name).
    pub fn blob_digest(&self, ino: u64) -> Option<Digest> {
        match self.inodes.node(ino)? {
            Node::Blob(digest, _) => Some(digest),
            Node::Scratch(id) => match &self.write.lock().scratch.get(&id)?.kind {
                ScratchKind::Committed(digest, _) => Some(digest.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let node = self.node(ino)?;
        self.attr(ino, &node)
    }

    fn attr(&self, ino: u64, node: &Node) -> FsResult<Attr> {
        let dir_mode = if self.options.read_only {
            DIR_MODE_RO
        } else {
            DIR_MODE
        };
        let base = Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            blocks: 0,
            perm: dir_mode,
            nlink: 2,
            mtime: UNIX_EPOCH,
            uid: self.uid,
            gid: self.gid,
            attr_ttl: DYNAMIC_TTL,
            entry_ttl: DYNAMIC_TTL,
        };
        let attr = match node {
            Node::Dir(path) => self.dir_attr(path, base)?,
            Node::LayoutFile(repo) => {
                let mtime = self.repo_updated(repo)?;
                Attr {
                    entry_ttl: self.entry_ttl(repo, "oci-layout"),
                    ..file_attr(
                        base,
                        self.layout_file.len() as u64,
                        LAYOUT_FILE_MODE,
                        mtime,
                        IMMUTABLE_TTL,
                    )
                }
            }
            Node::Index(repo) => self.index_attr(repo, base)?,
            Node::Blobs(repo) => Attr {
                entry_ttl: self.entry_ttl(repo, "blobs"),
                nlink: 2 + self.algorithms(repo, Viewer::Reader)?.len() as u32,
                mtime: self.repo_updated(repo)?,
                size: BLOCK_SIZE.into(),
                ..base
            },
            Node::AlgDir(repo, alg) => {
                // It exists if any process sees it; who does is asked at each lookup.
                if !self.algorithms(repo, Viewer::Reader)?.contains(alg) {
                    return Err(FsError::NotFound);
                }
                let by_viewer = self.write.lock().algorithms_by_viewer(repo);
                Attr {
                    entry_ttl: if by_viewer {
                        Duration::ZERO
                    } else {
                        DYNAMIC_TTL
                    },
                    mtime: self.repo_updated(repo)?,
                    size: BLOCK_SIZE.into(),
                    ..base
                }
            }
            Node::Blob(digest, size) => {
                // Blocks and times from the store's file; if it vanished, reads say so.
                let (blocks, mtime) = match self.content().info(digest) {
                    Ok(Some(i)) => (i.blocks, i.modified),
                    Ok(None) | Err(_) => (size.div_ceil(STAT_BLOCK), UNIX_EPOCH),
                };
                Attr {
                    blocks,
                    ..file_attr(base, *size, BLOB_MODE, mtime, IMMUTABLE_TTL)
                }
            }
            Node::Scratch(id) => self.scratch_attr(*id, base)?,
        };
        if attr.kind != Kind::Dir {
            if let Some(t) = self.mtimes.lock().get(&ino) {
                return Ok(Attr { mtime: *t, ..attr });
            }
        }
        Ok(attr)
    }

    /// A repository's `index.json`.
    fn index_attr(&self, repo: &str, base: Attr) -> FsResult<Attr> {
        let view = self.repo(repo)?;
        // A writable index.json is rewritten from what it lists, so the size the kernel saw
        // written is not its size: no attribute caching there.
        let (mode, ttl) = if self.options.read_only {
            (INDEX_MODE_RO, DYNAMIC_TTL)
        } else {
            (INDEX_MODE, Duration::ZERO)
        };
        let mtime = self.repo_updated(repo)?;
        Ok(Attr {
            entry_ttl: self.entry_ttl(repo, "index.json"),
            ..file_attr(base, view.index.len() as u64, mode, mtime, ttl)
        })
    }

    /// A directory of the tree: its link count without walking its children (the root may
    /// have thousands).
    fn dir_attr(&self, path: &str, base: Attr) -> FsResult<Attr> {
        let snapshot = self.views.snapshot()?;
        let dir = snapshot.dir(path).ok_or(FsError::NotFound)?;
        let shadowed = if dir.repository {
            LAYOUT_NAMES
                .iter()
                .filter(|n| dir.children.contains(**n))
                .count()
        } else {
            0
        };
        let subdirs = dir.children.len() - shadowed + usize::from(dir.repository);
        Ok(Attr {
            nlink: 2 + subdirs as u32,
            mtime: if dir.updated == UNIX_EPOCH {
                self.started
            } else {
                dir.updated
            },
            size: BLOCK_SIZE.into(),
            ..base
        })
    }

    /// A temporary file or directory. A file being written gives its size and time from
    /// outside its upload's lock: a stat never waits for a write in progress.
    fn scratch_attr(&self, id: u64, base: Attr) -> FsResult<Attr> {
        let w = self.write.lock();
        let s = w.scratch.get(&id).ok_or(FsError::NotFound)?;
        Ok(match &s.kind {
            ScratchKind::Dir => Attr {
                mtime: self.started,
                size: BLOCK_SIZE.into(),
                ..base
            },
            ScratchKind::File(shared) => {
                let (len, mtime) = (shared.len(), shared.mtime());
                file_attr(base, len, INDEX_MODE, mtime, Duration::ZERO)
            }
            ScratchKind::Committed(_, size) => {
                file_attr(base, *size, BLOB_MODE, self.started, IMMUTABLE_TTL)
            }
            ScratchKind::Link(target) => Attr {
                kind: Kind::Symlink,
                ..file_attr(
                    base,
                    target.len() as u64,
                    LINK_MODE,
                    self.started,
                    DYNAMIC_TTL,
                )
            },
        })
    }

    fn repo_updated(&self, repo: &str) -> FsResult<SystemTime> {
        let snapshot = self.views.snapshot()?;
        let dir = snapshot.dir(repo).filter(|d| d.repository);
        Ok(dir.ok_or(FsError::NotFound)?.updated)
    }

    /// Opens a directory: its entries are read now, so that offsets stay valid while it is
    /// read even if images change meanwhile.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        self.opendir_in(ino, Viewer::Reader)
    }

    /// Opens a directory for a process, whose id `pid` gives when asked (see `lookup_as`).
    pub fn opendir_as(&self, ino: u64, pid: &dyn Fn() -> u32) -> FsResult<u64> {
        self.opendir_in(ino, Viewer::Process(pid))
    }

    fn opendir_in(&self, ino: u64, viewer: Viewer) -> FsResult<u64> {
        let listing = self.dir_entries(ino, viewer)?;
        Ok(self.add_handle(Handle::Dir(Arc::new(listing))))
    }

    /// The entries of an open directory from `offset` on; an entry's offset is its index + 1.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let listing = self.listing(fh)?;
        Ok(listing
            .entries
            .iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    /// Readdirplus: hands `add` each entry of an open directory from `offset` on with its
    /// attributes, until it says its buffer is full (true, the entry not taken). Each entry
    /// taken but `.` and `..` hands the kernel a reference, counted as a lookup. An entry
    /// gone since opendir is passed with no attributes (the kernel then only lists its name).
    pub fn readdirplus(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &DirEntry, Option<&Attr>) -> bool,
    ) -> FsResult<()> {
        let listing = self.listing(fh)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let rows = listing.entries.iter().zip(&listing.nodes).enumerate();
        for (i, (e, node)) in rows.skip(start) {
            let next = i as u64 + 1;
            let dots = e.name == "." || e.name == "..";
            let attr = match node {
                Some(node) if !dots => {
                    let ino = self.inodes.entry(node);
                    match self.attr(ino, node) {
                        Ok(a) => Some(a),
                        Err(_) => {
                            self.forget(ino, 1);
                            None
                        }
                    }
                }
                _ => self.getattr(e.ino).ok(),
            };
            if add(next, e, attr.as_ref()) {
                if let (Some(a), false) = (&attr, dots) {
                    self.forget(a.ino, 1);
                }
                break;
            }
        }
        Ok(())
    }

    fn listing(&self, fh: u64) -> FsResult<Arc<Listing>> {
        match self.handles.lock().get(&fh) {
            Some(Handle::Dir(listing)) => Ok(listing.clone()),
            Some(_) => Err(FsError::NotDir),
            None => Err(FsError::BadHandle(fh)),
        }
    }

    /// A directory's entries. Their numbers are the ones they have, or would get (`peek`):
    /// a listing assigns none, so the table holds only what the kernel looks up.
    pub(super) fn dir_entries(&self, ino: u64, viewer: Viewer) -> FsResult<Listing> {
        let node = self.node(ino)?;
        let mut out = Listing {
            entries: Vec::new(),
            nodes: Vec::new(),
        };
        let push = |out: &mut Listing, name: &str, kind: Kind, node: Node| {
            out.entries.push(DirEntry {
                ino: self.inodes.peek(&node),
                kind,
                name: name.to_owned(),
            });
            out.nodes.push(Some(node));
        };
        match node {
            Node::Dir(path) => {
                let snapshot = self.views.snapshot()?;
                let info = snapshot.dir(&path).ok_or(FsError::NotFound)?;
                push(&mut out, ".", Kind::Dir, Node::Dir(path.clone()));
                push(&mut out, "..", Kind::Dir, Node::Dir(parent_path(&path)));
                // index.json first: `rm -r` removes in this order, and a blob an image needs
                // may be unlinked only once index.json (and so every image) is gone.
                if self.layout_visible(&snapshot, &path, "index.json", viewer) {
                    push(
                        &mut out,
                        "index.json",
                        Kind::File,
                        Node::Index(path.clone()),
                    );
                }
                if self.layout_visible(&snapshot, &path, "oci-layout", viewer) {
                    let n = Node::LayoutFile(path.clone());
                    push(&mut out, "oci-layout", Kind::File, n);
                }
                if self.layout_visible(&snapshot, &path, "blobs", viewer) {
                    push(&mut out, "blobs", Kind::Dir, Node::Blobs(path.clone()));
                }
                for c in &info.children {
                    if info.repository && LAYOUT_NAMES.contains(&c.as_str()) {
                        continue;
                    }
                    push(&mut out, c, Kind::Dir, Node::Dir(child_path(&path, c)));
                }
            }
            Node::Blobs(repo) => {
                push(&mut out, ".", Kind::Dir, Node::Blobs(repo.clone()));
                push(&mut out, "..", Kind::Dir, Node::Dir(repo.clone()));
                for alg in self.algorithms(&repo, viewer)? {
                    let n = Node::AlgDir(repo.clone(), alg);
                    push(&mut out, alg.name(), Kind::Dir, n);
                }
            }
            Node::AlgDir(repo, alg) => {
                push(&mut out, ".", Kind::Dir, Node::AlgDir(repo.clone(), alg));
                push(&mut out, "..", Kind::Dir, Node::Blobs(repo.clone()));
                for (digest, size) in self.visible_blobs(&repo, alg)? {
                    let name = digest.hex().to_owned();
                    push(&mut out, &name, Kind::File, Node::Blob(digest, size));
                }
            }
            Node::Scratch(id) => {
                let parent = self.scratch_dir_parent(id)?;
                push(&mut out, ".", Kind::Dir, Node::Scratch(id));
                out.entries.push(DirEntry {
                    ino: parent,
                    kind: Kind::Dir,
                    name: "..".into(),
                });
                out.nodes.push(None);
            }
            Node::LayoutFile(_) | Node::Index(_) | Node::Blob(..) => return Err(FsError::NotDir),
        }
        self.add_written(ino, &mut out);
        Ok(out)
    }

    /// The parent inode of scratch directory `id`.
    fn scratch_dir_parent(&self, id: u64) -> FsResult<u64> {
        let w = self.write.lock();
        let s = w.scratch.get(&id).ok_or(FsError::NotFound)?;
        if !matches!(s.kind, ScratchKind::Dir) {
            return Err(FsError::NotDir);
        }
        Ok(s.parent)
    }

    /// Adds to a listing of directory `ino` what was written there: temporary files and
    /// directories, and blobs committed (which take the place of a name listed already).
    fn add_written(&self, ino: u64, out: &mut Listing) {
        let w = self.write.lock();
        for (name, id) in w.children(ino) {
            let kind = match w.scratch.get(&id).map(|s| &s.kind) {
                Some(ScratchKind::Dir) => Kind::Dir,
                Some(ScratchKind::Link(_)) => Kind::Symlink,
                _ => Kind::File,
            };
            let node = Node::Scratch(id);
            let entry = DirEntry {
                ino: self.inodes.peek(&node),
                kind,
                name,
            };
            match out.entries.iter().position(|e| e.name == entry.name) {
                Some(i) => {
                    out.entries[i] = entry;
                    out.nodes[i] = Some(node);
                }
                None => {
                    out.entries.push(entry);
                    out.nodes.push(Some(node));
                }
            }
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }

    /// The size of blob `digest` if `repo`'s `blobs/<alg>/` lists it: one look in the
    /// repository's view, not a listing of it.
    fn visible_blob(&self, repo: &str, digest: &Digest) -> FsResult<Option<u64>> {
        let view = self.repo(repo)?;
        let Some(size) = view.blobs.get(digest).map(|d| d.size) else {
            return Ok(None);
        };
        Ok(self.write.lock().listed(repo, digest).then_some(size))
    }

    /// Opens a file; `flags` are open(2)'s, `pid` the opening process.
    pub fn open(&self, ino: u64, flags: i32, pid: u32) -> FsResult<Opened> {
        let node = self.node(ino)?;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            if let Node::Dir(_) | Node::Blobs(_) | Node::AlgDir(..) = node {
                return Err(FsError::IsDir);
            }
            return Ok(Opened {
                fh: self.open_for_write(ino, &node, flags)?,
                caching: Caching::Direct,
                backing: None,
            });
        }
        let (handle, caching, backing) = match node {
            Node::Dir(_) | Node::Blobs(_) | Node::AlgDir(..) => return Err(FsError::IsDir),
            Node::LayoutFile(repo) => {
                self.repo_updated(&repo)?;
                (Handle::Bytes(self.layout_file.clone()), Caching::Keep, None)
            }
            // index.json changes with the images: no page cache, and every open reads the
            // current bytes whatever size the kernel last saw.
            Node::Index(repo) => {
                let view = self.repo(&repo)?;
                if !self.options.read_only {
                    self.remember_index_read(pid, &repo, &view.entries);
                }
                (Handle::Bytes(view.index.clone()), Caching::Direct, None)
            }
            Node::Scratch(id) => {
                let kind = match self.write.lock().scratch.get(&id).map(|s| &s.kind) {
                    Some(ScratchKind::File(shared)) => Ok(shared.clone()),
                    Some(ScratchKind::Committed(d, size)) => Err((d.clone(), *size)),
                    Some(ScratchKind::Dir) => return Err(FsError::IsDir),
                    Some(ScratchKind::Link(_)) => return Err(FsError::IsLink),
                    None => return Err(FsError::NotFound),
                };
                match kind {
                    Ok(shared) => (Handle::Upload { ino, shared }, Caching::Direct, None),
                    Err((digest, size)) => self.blob_opening(ino, digest, size)?,
                }
            }
            Node::Blob(digest, size) => self.blob_opening(ino, digest, size)?,
        };
        Ok(Opened {
            fh: self.add_handle(handle),
            caching,
            backing,
        })
    }

    /// Reads up to `size` bytes at `offset`; fewer only at the end of the file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(fh, offset, size, &mut buf)?;
        Ok(buf)
    }

    /// Like `read`, into `buf` (cleared first), so that a caller serving many reads reuses one
    /// buffer instead of allocating and faulting in fresh pages for each.
    pub fn read_into(&self, fh: u64, offset: u64, size: u32, buf: &mut Vec<u8>) -> FsResult<()> {
        enum Src {
            Blob(Digest, u64, Arc<File>),
            Bytes(Arc<[u8]>),
            Upload(Shared),
        }
        let src = match self.handles.lock().get(&fh) {
            Some(Handle::Blob {
                digest, size, file, ..
            }) => Src::Blob(digest.clone(), *size, file.clone()),
            Some(Handle::Bytes(b)) => Src::Bytes(b.clone()),
            Some(Handle::Upload { shared, .. }) => Src::Upload(shared.clone()),
            Some(Handle::Dir(_)) => return Err(FsError::IsDir),
            None => return Err(FsError::BadHandle(fh)),
        };
        buf.clear();
        match src {
            // A file being written reads back what was written so far.
            Src::Upload(shared) => match shared.lock().upload.as_mut() {
                Some(u) => u.read_at(offset, size, buf)?,
                None => return Err(FsError::NotPermitted("the upload was committed")),
            },
            Src::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                buf.extend_from_slice(&b[start..end]);
            }
            Src::Blob(digest, total, file) => {
                let want = total.saturating_sub(offset).min(u64::from(size)) as usize;
                buf.resize(want, 0);
                file.read_exact_at(buf, offset).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        FsError::Damaged {
                            digest: digest.clone(),
                            message: format!("store file shorter than {total} bytes"),
                        }
                    } else {
                        FsError::Store(Error::io(self.content().locate(&digest), e))
                    }
                })?;
            }
        }
        Ok(())
    }

    pub fn release(&self, fh: u64) {
        let handle = self.handles.lock().remove(&fh);
        let ino = handle.as_ref().and_then(Handle::ino);
        match handle {
            Some(Handle::Upload { ino, shared }) => self.release_upload(ino, &shared),
            Some(Handle::Blob { ino, file, .. }) => {
                drop(file);
                let mut files = self.blob_files.lock();
                if files.get(&ino).is_some_and(|f| f.strong_count() == 0) {
                    files.remove(&ino);
                }
            }
            _ => {}
        }
        if let Some(ino) = ino {
            let last = {
                let mut open = self.open_inos.lock();
                let n = open.get_mut(&ino).map(|n| {
                    *n -= 1;
                    *n
                });
                if n == Some(0) {
                    open.remove(&ino);
                }
                n == Some(0)
            };
            if last {
                self.free_if_unused(ino);
            }
        }
    }

    /// A handle on a committed blob: its shared, checked descriptor, kept in the page cache and
    /// handed to the kernel for passthrough.
    fn blob_opening(
        &self,
        ino: u64,
        digest: Digest,
        size: u64,
    ) -> FsResult<(Handle, Caching, Option<Arc<File>>)> {
        let file = self.open_blob(ino, &digest, size)?;
        let backing = Some(file.clone());
        let handle = Handle::Blob {
            ino,
            digest,
            size,
            file,
        };
        Ok((handle, Caching::Keep, backing))
    }

    /// Opens blob inode `ino`, checked: the descriptor already open for it when it is the
    /// same store file, else the one just checked (which the next opens share).
    fn open_blob(&self, ino: u64, digest: &Digest, size: u64) -> FsResult<Arc<File>> {
        let checked = self.verifier.open(self.content(), digest, size)?;
        let mut files = self.blob_files.lock();
        if let Some(open) = files.get(&ino).and_then(std::sync::Weak::upgrade) {
            if same_file(&open, &checked) {
                return Ok(open);
            }
        }
        let file = Arc::new(checked);
        files.insert(ino, Arc::downgrade(&file));
        Ok(file)
    }

    /// How this mount checks blobs, for its log (the README's trust model).
    pub fn blob_checks(&self) -> &'static str {
        self.verifier.mode(self.content())
    }

    /// How many blobs this mount hashed on open, rather than trusting the store's record of
    /// their verification (for tests and logs).
    pub fn blobs_hashed(&self) -> u64 {
        self.verifier.hashed()
    }

    /// How many blob inodes hold an open store file (for tests and logs).
    pub fn open_blob_files(&self) -> usize {
        self.blob_files.lock().len()
    }

    /// How many repository views were computed so far: each reads that repository's manifests,
    /// and none is computed before its repository is looked at.
    pub fn repo_views_built(&self) -> usize {
        self.views.built()
    }

    /// How many repository views are kept now (bounded: `view::MAX_VIEWS`).
    pub fn repo_views_kept(&self) -> usize {
        self.views.kept()
    }

    /// The number of open files and directories (for tests and logs).
    pub fn open_handles(&self) -> usize {
        self.handles.lock().len()
    }

    pub fn statfs(&self) -> FsResult<Statfs> {
        Ok(self.content().space()?)
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if let Some(ino) = h.ino() {
            *self.open_inos.lock().entry(ino).or_default() += 1;
        }
        self.handles.lock().insert(fh, h);
        fh
    }
}

/// Whether two descriptors are of the same file (device and inode).
fn same_file(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.drop_uploads(None);
    }
}

fn file_attr(base: Attr, size: u64, perm: u16, mtime: SystemTime, attr_ttl: Duration) -> Attr {
    Attr {
        kind: Kind::File,
        size,
        blocks: size.div_ceil(STAT_BLOCK),
        perm,
        nlink: 1,
        mtime,
        attr_ttl,
        ..base
    }
}

fn child_path(path: &str, name: &str) -> Arc<str> {
    if path.is_empty() {
        Arc::from(name)
    } else {
        Arc::from(format!("{path}/{name}"))
    }
}

fn parent_path(path: &str) -> Arc<str> {
    Arc::from(path.rsplit_once('/').map_or("", |(p, _)| p))
}

/// The root's inode number, for the adapter.
pub const fn root_ino() -> u64 {
    ROOT_INO
}
