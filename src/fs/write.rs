//! The write side of the mount: copying a layout in imports it.
//!
//! - `mkdir` makes a repository (its name checked, EINVAL otherwise), kept in the records with
//!   or without images until removed; inside a repository, a directory whose name is no
//!   repository component (`.umoci-*`), or is 64 lowercase hex digits (a docker archive's
//!   `<v1 id>/`: docker refuses such repository names too), is scratch. An empty repository
//!   shows its layout names (`oci-layout`, an `index.json` listing nothing, `blobs/sha256/`) to
//!   every process but the one that made it here, which sees what it wrote (cp -r creates each
//!   name exclusively; `Viewer`). A directory its maker made and then made a directory in,
//!   before anything else (`mkdir -p`), only leads to repositories: not kept, no layout shown,
//!   until a layout name is written in it.
//! - Temporary names: a name beginning with `.` anywhere in a repository, and a file's name that
//!   is no layout name; they move only within their repository (`fs::moves`); a directory of
//!   blobs renamed into place is verified whole and committed (`fs::staged`).
//! - Every regular file written is an `Upload` in the store's ingest area. What happens to it
//!   depends on where it is when it is closed, fsynced or renamed: at `blobs/<alg>/<hex>` it
//!   is verified and committed (a mismatch fails that call with EIO and nothing enters the
//!   store); as `index.json` it sets the repository's images; as `oci-layout` it is checked; under
//!   any other name it is a temporary file that reads back what was written and vanishes at
//!   unmount; a docker archive's `manifest.json` among them registers images
//!   (`fs::docker_archive`), and symbolic links are kept as written there (`fs::links`).
//! - `index.json` sets the repository's images to what it lists. A writer removes only images it
//!   saw: if the writing process read `index.json` before, the names it read are what it may
//!   remove, so two tools adding tags at once lose none; otherwise (cp, tar) every image of the
//!   repository not listed goes. An image whose blobs are not all in the store yet waits
//!   (pending, shown in `index.json`) and is registered when its last blob commits.
//! - `rm -r` of a repository removes its images (unlinking `index.json` does, and readdir lists
//!   it first); unlinking a blob, `oci-layout` or `rmdir` of `blobs/` changes no image, as
//!   blobs leave the store only by gc. A blob an image of the repository (registered or
//!   pending) needs is EBUSY to unlink while the image is there; others (umoci gc) go.
//!   `mv` of a repository directory renames its images; what is being written into it goes on
//!   under the new name (files open there, pending images, what processes read of its
//!   `index.json`, the lease on what was written), as `fs::state` keeps no copied names.
//!
//! What the writes keep in memory, and the lock order of the whole core: `fs::state`; what
//! `index.json` does to the image records, and the lease: `fs::images`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::sync::Arc;

use crate::content::Change;
use crate::digest::{Algorithm, Digest};
use crate::error::Error;
use crate::layout::Entry;
use crate::oci;
use crate::reference::check_repository;

use super::images::writer_holder;
pub use super::images::{missing_blobs, name_in_repo, parse_index};
use super::moves::Moved;

use super::error::{FsError, FsResult};
use super::inode::Node;
use super::state::{RepoState, ScratchKind, Shared, SharedUpload, WriteState, Writing};
use super::upload::Upload;
use super::view::LAYOUT_NAMES;

/// The process a release acts for: the kernel does not say which closed the file last, and
/// a process no writer has (none is 0) read nothing, so it removes what a cp would.
const RELEASE_PID: u32 = 0;

/// The maker of a directory made through the core's `mkdir`, which is given no process.
const UNKNOWN_PID: u32 = 0;

/// Bytes copied at a time when a temporary file that became a blob is opened for writing.
const REOPEN_CHUNK: usize = 1 << 20;

/// Threads removing temporary files' ingests at unmount.
const DROP_THREADS: usize = 32;

/// Scratch directories nested deeper than this are taken for a cycle (a directory moved into
/// itself, which the kernel refuses) and belong to no repository.
const MAX_SCRATCH_DEPTH: usize = 4096;

impl super::Fs {
    /// Whether the layout name `name` shows in repository directory `path` to `viewer`, by
    /// the one rule (`state::LayoutRule`).
    pub(super) fn layout_visible(
        &self,
        snapshot: &super::view::Snapshot,
        path: &str,
        name: &str,
        viewer: super::Viewer,
    ) -> bool {
        match snapshot.dir(path) {
            Some(d) if d.repository => self.write.lock().layout_rule(path, name).shows(viewer),
            _ => false,
        }
    }

    /// How long the kernel may keep the entry of layout name `name` of `repo`: nothing while
    /// whether it shows depends on who looks (see `Viewer`), so that each process is asked.
    pub(super) fn entry_ttl(&self, repo: &str, name: &str) -> std::time::Duration {
        if self.write.lock().layout_rule(repo, name).by_viewer() {
            std::time::Duration::ZERO
        } else {
            super::DYNAMIC_TTL
        }
    }

    /// The blobs listed in `repo`'s `blobs/<alg>/`: those of its images that the rule lists
    /// (`WriteState::listed`).
    pub(super) fn visible_blobs(
        &self,
        repo: &str,
        alg: Algorithm,
    ) -> FsResult<BTreeMap<Digest, u64>> {
        let view = self.repo(repo)?;
        let w = self.write.lock();
        Ok(view
            .blobs
            .iter()
            .filter(|(d, _)| d.algorithm() == alg && w.listed(repo, d))
            .map(|(d, desc)| (d.clone(), desc.size))
            .collect())
    }

    fn writable(&self) -> FsResult<()> {
        if self.options.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// The repository a directory-like node belongs to, if any. Any directory but the root is
    /// one or may become one: a directory that only leads to repositories becomes one when a
    /// layout name is written into it.
    pub(super) fn repo_of(&self, node: &Node) -> Option<Arc<str>> {
        match node {
            Node::Dir(p) if p.is_empty() => None,
            Node::Dir(p) => {
                let snapshot = self.views.snapshot().ok()?;
                snapshot.dir(p).map(|_| p.clone())
            }
            Node::Blobs(r) | Node::AlgDir(r, _) | Node::Index(r) | Node::LayoutFile(r) => {
                Some(r.clone())
            }
            Node::Scratch(id) => self.scratch_repo(*id),
            Node::Blob(..) => None,
        }
    }

    /// The id of the repository of directory `dir` (`blobs/<alg>/`, `blobs/` or the repository's
    /// own), read with the write state `w` held: a rename moves the inodes and the state under
    /// it, so the name read here is the one the state is kept under.
    pub(super) fn repo_id_at(&self, w: &mut WriteState, dir: u64) -> Option<u64> {
        match self.inodes.node(dir)? {
            Node::AlgDir(repo, _) | Node::Blobs(repo) | Node::Dir(repo) => {
                // Asked to name a lease holder: the state is kept until the holder is released.
                let state = w.repo_mut(&repo);
                state.held = true;
                Some(state.id)
            }
            _ => None,
        }
    }

    /// The repository scratch entry `id` is in, through its parent chain (so always its
    /// current name, whatever was renamed since it was made).
    pub(super) fn scratch_repo(&self, id: u64) -> Option<Arc<str>> {
        let mut id = id;
        for _ in 0..MAX_SCRATCH_DEPTH {
            let parent = self.write.lock().scratch.get(&id)?.parent;
            match self.inodes.node(parent)? {
                Node::Scratch(up) => id = up,
                node => return self.repo_of(&node),
            }
        }
        None
    }

    /// Makes a directory, as process `UNKNOWN_PID` (see `mkdir_as`).
    pub fn mkdir(&self, parent: u64, name: &str) -> FsResult<super::Attr> {
        self.mkdir_as(parent, name, UNKNOWN_PID)
    }

    /// Makes a directory for process `pid`: a new repository's maker (see `Viewer`).
    pub fn mkdir_as(&self, parent: u64, name: &str, pid: u32) -> FsResult<super::Attr> {
        self.writable()?;
        let exists = self.lookup_in(parent, std::ffi::OsStr::new(name), super::Viewer::Maker);
        if exists.is_ok() {
            return Err(FsError::Exists);
        }
        let node = self.node(parent)?;
        let child = match &node {
            Node::Dir(path) if name == "blobs" && self.repo_of(&node).is_some() => {
                self.keep_repo(parent)?;
                self.show_layout_name_at(parent, name, true);
                Node::Blobs(path.clone())
            }
            Node::Dir(_) => {
                if self.repo_of(&node).is_some() && is_scratch_dir(name) {
                    Node::Scratch(self.add_scratch(parent, name, ScratchKind::Dir))
                } else {
                    Node::Dir(self.make_repo(parent, name, pid)?)
                }
            }
            Node::Blobs(_) | Node::AlgDir(..) if is_temporary(name) => {
                self.repo_of(&node).ok_or(FsError::NotFound)?;
                Node::Scratch(self.add_scratch(parent, name, ScratchKind::Dir))
            }
            Node::Blobs(repo) => {
                let alg = Algorithm::from_name(name).ok_or_else(|| {
                    FsError::Invalid(format!(
                        "{repo}/blobs/{name}: neither a digest algorithm (sha256, sha512) nor \
                         a temporary name (one beginning with '.')"
                    ))
                })?;
                self.keep_repo(parent)?;
                self.with_repo_at(parent, |r| r.alg_dirs.insert(alg, true));
                // Named as the inode is now (a rename meanwhile moved it).
                match self.node(parent)? {
                    Node::Blobs(repo) => Node::AlgDir(repo, alg),
                    _ => return Err(FsError::NotFound),
                }
            }
            Node::Scratch(_) => {
                self.repo_of(&node).ok_or(FsError::NotFound)?;
                Node::Scratch(self.add_scratch(parent, name, ScratchKind::Dir))
            }
            Node::AlgDir(repo, alg) => {
                return Err(FsError::Invalid(format!(
                    "{repo}/blobs/{}/{name}: no directories among blobs but temporary ones \
                     (a name beginning with '.')",
                    alg.name()
                )))
            }
            _ => return Err(FsError::NotDir),
        };
        let ino = self.inodes.ino(&child);
        self.attr(ino, &child)
    }

    /// Makes repository `name` in directory `parent` for process `pid`, kept in the records,
    /// named under the serialising lock: a rename of a directory above meanwhile is followed.
    /// A repository that its maker made, left untouched, and now makes a directory in (`mkdir
    /// -p`, skopeo's MkdirAll) only leads to it: it is no longer kept, and stays a directory.
    fn make_repo(&self, parent: u64, name: &str, pid: u32) -> FsResult<Arc<str>> {
        let _serial = self.write_lock.lock();
        let Node::Dir(path) = self.node(parent)? else {
            return Err(FsError::NotFound);
        };
        self.check_sub_repository(&path, name)?;
        let new = super::child_path(&path, name);
        check_repository(&new)
            .map_err(|why| FsError::Invalid(format!("{new:?} is not a repository name: {why}")))?;
        let leads_only = self.only_made_by(parent, &path, pid)?;
        let stale = {
            let mut w = self.write.lock();
            let (state, stale) = w.remake_repo(&new);
            state.maker = Some(pid);
            state.fresh = true;
            if leads_only {
                w.repo_mut(&path).path = true;
            }
            stale
        };
        // Holders named by a repository of that name removed from outside the mount.
        self.release_repo(stale)?;
        let forget = if leads_only {
            vec![path.to_string()]
        } else {
            Vec::new()
        };
        let change = Change {
            keep: &[new.to_string()],
            forget: &forget,
            ..Change::default()
        };
        let now = std::time::SystemTime::now();
        let changed = self.change_records(&change, |s| {
            if leads_only {
                s.add_path(&path, now);
                s.remove_kept(&path);
            }
            s.add_kept(&new, now);
        });
        if let Err(e) = changed {
            let mut w = self.write.lock();
            w.forget_repo(&new);
            if leads_only {
                w.repo_mut(&path).path = false;
            }
            return Err(e);
        }
        Ok(new)
    }

    /// Whether repository `path` (directory `ino`) was made here by process `pid` and holds
    /// nothing yet: no image, nothing written, nothing below it.
    fn only_made_by(&self, ino: u64, path: &str, pid: u32) -> FsResult<bool> {
        if path.is_empty() {
            return Ok(false);
        }
        let snapshot = self.views.snapshot()?;
        let Some(dir) = snapshot.dir(path) else {
            return Ok(false);
        };
        let empty = dir.kept
            && dir.children.is_empty()
            && snapshot
                .images(path)
                .is_none_or(super::view::RepoImages::is_empty);
        let w = self.write.lock();
        Ok(empty && !w.has_children(ino) && w.repo(path).is_some_and(|r| r.untouched_by(pid)))
    }

    /// Keeps the repository of node `ino` (its directory, a layout file, `blobs/`) in the
    /// records, with or without images: a layout name was written into it.
    pub(super) fn keep_repo(&self, ino: u64) -> FsResult<()> {
        let _serial = self.write_lock.lock();
        let repo = match self.node(ino)? {
            Node::Dir(r) | Node::LayoutFile(r) | Node::Index(r) | Node::Blobs(r) => r,
            Node::AlgDir(r, _) => r,
            _ => return Err(FsError::NotFound),
        };
        if self.views.snapshot()?.dir(&repo).is_some_and(|d| d.kept) {
            return Ok(());
        }
        let now = std::time::SystemTime::now();
        self.change_records(
            &Change {
                keep: &[repo.to_string()],
                ..Change::default()
            },
            |s| s.add_kept(&repo, now),
        )?;
        if let Some(state) = self.write.lock().repo_mut_if(&repo) {
            state.path = false;
        }
        Ok(())
    }

    /// Makes `change` in the records, and the same change in the views' tree by `patch`.
    pub(super) fn change_records(
        &self,
        change: &Change,
        patch: impl FnOnce(&mut super::view::Snapshot),
    ) -> FsResult<()> {
        let records = self.content().catalog();
        let before = records.version()?;
        records.apply(change)?;
        let after = records.version()?;
        self.views.patch(before, after, patch);
        Ok(())
    }

    /// Refuses a sub-repository `name` of directory `path` when `name` is a layout name and
    /// `path` is not the root: any directory but the root is a repository or may become one
    /// (a layout name written into it), and lookup and readdir never show such a sub-repository
    /// there. EINVAL, as for any other name a repository may not have (EPERM would say the
    /// name could be made by someone else, and no one can make it through the mount).
    fn check_sub_repository(&self, path: &str, name: &str) -> FsResult<()> {
        if !path.is_empty() && LAYOUT_NAMES.contains(&name) {
            return Err(FsError::Invalid(format!(
                "{path}/{name}: a layout name, not a sub-repository, in a repository"
            )));
        }
        Ok(())
    }

    /// Runs `f` on the state of the repository of node `ino` (its directory, a layout file,
    /// `blobs/` or `blobs/<alg>/`), named from the inode with the write state held: a rename
    /// moves the inodes and the state at once, so the name is the current one.
    fn with_repo_at<R>(&self, ino: u64, f: impl FnOnce(&mut RepoState) -> R) -> Option<R> {
        let mut w = self.write.lock();
        match self.inodes.node(ino)? {
            Node::Dir(repo)
            | Node::Index(repo)
            | Node::LayoutFile(repo)
            | Node::Blobs(repo)
            | Node::AlgDir(repo, _) => Some(f(w.repo_mut(&repo))),
            _ => None,
        }
    }

    /// Creates a regular file: an upload, at a blob's name or a temporary one.
    pub fn create(&self, parent: u64, name: &str) -> FsResult<(super::Attr, super::Opened)> {
        self.writable()?;
        let node = self.node(parent)?;
        let repo = self.repo_of(&node).ok_or_else(|| {
            FsError::Invalid(format!(
                "{name}: files go into a repository directory (mkdir one first)"
            ))
        })?;
        if let (Node::Dir(path), "index.json" | "oci-layout") = (&node, name) {
            self.keep_repo(parent)?;
            self.show_layout_name_at(parent, name, true);
            let child = if name == "index.json" {
                Node::Index(path.clone())
            } else {
                Node::LayoutFile(path.clone())
            };
            let ino = self.inodes.ino(&child);
            let fh = self.open_for_write(ino, &child, libc::O_TRUNC)?;
            let attr = self.attr(ino, &child)?;
            return Ok((
                attr,
                super::Opened {
                    fh,
                    caching: super::Caching::Direct,
                    backing: None,
                },
            ));
        }
        let alg = match &node {
            Node::AlgDir(_, alg) => {
                check_blob_name(&repo, *alg, name)?;
                if let Ok(d) = Digest::from_parts(alg.name(), name) {
                    self.with_repo_at(parent, |r| r.hidden.remove(&d));
                }
                *alg
            }
            Node::Dir(_) | Node::Blobs(_) | Node::Scratch(_) => Algorithm::Sha256,
            _ => return Err(FsError::NotDir),
        };
        let shared = SharedUpload::new(Upload::new(self.content(), alg)?);
        let id = self.add_scratch(parent, name, ScratchKind::File(shared.clone()));
        let child = Node::Scratch(id);
        let ino = self.inodes.ino(&child);
        let attr = self.attr(ino, &child)?;
        let fh = self.add_handle(super::Handle::Upload { ino, shared });
        Ok((
            attr,
            super::Opened {
                fh,
                caching: super::Caching::Direct,
                backing: None,
            },
        ))
    }

    /// Opens an existing file for writing: a new upload that replaces nothing until it is
    /// acted on.
    pub(super) fn open_for_write(&self, ino: u64, node: &Node, flags: i32) -> FsResult<u64> {
        self.writable()?;
        let truncate = flags & libc::O_TRUNC != 0;
        let shared = match node {
            Node::Scratch(id) => {
                let kind = match self.write.lock().scratch.get(id).map(|s| &s.kind) {
                    Some(ScratchKind::File(shared)) => Ok(shared.clone()),
                    Some(ScratchKind::Committed(digest, size)) => Err((digest.clone(), *size)),
                    Some(ScratchKind::Dir) => return Err(FsError::IsDir),
                    Some(ScratchKind::Link(_)) => return Err(FsError::IsLink),
                    None => return Err(FsError::NotFound),
                };
                match kind {
                    Ok(shared) => shared,
                    // A temporary name holding a blob (a file a docker archive used).
                    Err((digest, size)) if self.scratch_blob(*id).is_none() => {
                        self.reopen_temporary(*id, &digest, size, truncate)?
                    }
                    // Written again (skopeo rewrites a manifest it finds): a new upload,
                    // verified against the same name when it is closed.
                    Err((digest, _)) => {
                        let w = SharedUpload::new(Upload::new(self.content(), digest.algorithm())?);
                        w.lock().dirty = false;
                        w
                    }
                }
            }
            Node::Index(repo) | Node::LayoutFile(repo) => {
                let mut upload = Upload::new(self.content(), Algorithm::Sha256)?;
                if !truncate {
                    let current = match node {
                        Node::Index(_) => self.repo(repo)?.index.to_vec(),
                        _ => self.layout_file.to_vec(),
                    };
                    upload.write_at(0, &current)?;
                }
                let w = SharedUpload::new(upload);
                w.lock().dirty = truncate;
                w
            }
            Node::Blob(digest, _) => {
                let w = SharedUpload::new(Upload::new(self.content(), digest.algorithm())?);
                w.lock().dirty = false;
                w
            }
            _ => return Err(FsError::IsDir),
        };
        if truncate {
            let mut w = shared.lock();
            if let Some(u) = w.upload.as_mut() {
                u.truncate(0)?;
                shared.touch(0);
            }
            w.dirty = true;
        }
        Ok(self.add_handle(super::Handle::Upload { ino, shared }))
    }

    /// Temporary file `id`, which became blob `digest` (`size` bytes; a file a docker
    /// archive's manifest.json used), opened for writing: a temporary file again, holding
    /// the blob's bytes unless `truncate`d (`tar --overwrite` rewrites it so).
    fn reopen_temporary(
        &self,
        id: u64,
        digest: &Digest,
        size: u64,
        truncate: bool,
    ) -> FsResult<Shared> {
        use std::os::unix::fs::FileExt;
        let mut upload = Upload::new(self.content(), Algorithm::Sha256)?;
        if !truncate {
            let file = self.verifier.open(self.content(), digest, size)?;
            let mut buf = vec![0u8; REOPEN_CHUNK];
            let mut at = 0;
            while at < size {
                let n = (size - at).min(REOPEN_CHUNK as u64) as usize;
                file.read_exact_at(&mut buf[..n], at)
                    .map_err(|e| Error::io(self.content().locate(digest), e))?;
                upload.write_at(at, &buf[..n])?;
                at += n as u64;
            }
        }
        let shared = SharedUpload::new(upload);
        if let Some(s) = self.write.lock().scratch.get_mut(&id) {
            s.kind = ScratchKind::File(shared.clone());
        }
        Ok(shared)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (ino, shared) = self.upload_handle(fh)?;
        let node = self.node(ino)?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| FsError::PastCap(format!("a write at {offset} ends past 2^64")))?;
        check_cap(&node, end)?;
        let limit = match node {
            Node::Blob(digest, size) => Some((digest, size)),
            Node::Scratch(id) => self.scratch_blob(id).and_then(|(_, d)| {
                let size = *self.write.lock().wanted.get(&d)?;
                Some((d, size))
            }),
            Node::Index(_) | Node::LayoutFile(_) => None,
            _ => return Err(FsError::IsDir),
        };
        if let Some((digest, size)) = limit {
            if end > size {
                return Err(FsError::TooLarge { digest, size });
            }
        }
        let mut w = shared.lock();
        earlier_failure(&w)?;
        let upload = w
            .upload
            .as_mut()
            .ok_or(FsError::NotPermitted("a committed blob never changes"))?;
        let written = upload.write_at(offset, data);
        shared.touch(upload.len());
        if let Err(e) = written {
            return Err(failed(&mut w, e.into(), "an earlier write"));
        }
        w.dirty = true;
        drop(w);
        // Written after its time was set: the time of the write counts again.
        self.mtimes.lock().remove(&ino);
        Ok(data.len() as u32)
    }

    fn upload_handle(&self, fh: u64) -> FsResult<(u64, Shared)> {
        match self.handles.lock().get(&fh) {
            Some(super::Handle::Upload { ino, shared }) => Ok((*ino, shared.clone())),
            Some(_) => Err(FsError::NotPermitted("not open for writing")),
            None => Err(FsError::BadHandle(fh)),
        }
    }

    /// The repository and digest a scratch file is named for, when it sits at
    /// `blobs/<alg>/<hex>`.
    fn scratch_blob(&self, id: u64) -> Option<(Arc<str>, Digest)> {
        let (parent, name) = {
            let w = self.write.lock();
            let s = w.scratch.get(&id)?;
            (s.parent, s.name.clone())
        };
        match self.inodes.node(parent)? {
            Node::AlgDir(repo, alg) => Digest::from_parts(alg.name(), &name)
                .ok()
                .map(|d| (repo, d)),
            _ => None,
        }
    }

    /// Runs `f` while the upload of handle `fh` is locked, as a write in progress holds it: for
    /// tests that a stat or lookup does not wait for a write.
    #[doc(hidden)]
    pub fn while_upload_locked<R>(&self, fh: u64, f: impl FnOnce() -> R) -> FsResult<R> {
        let (_, shared) = self.upload_handle(fh)?;
        let _locked = shared.lock();
        Ok(f())
    }

    /// Whether `fh` was opened for writing (only then has a close anything to act on).
    pub fn is_upload(&self, fh: u64) -> bool {
        matches!(
            self.handles.lock().get(&fh),
            Some(super::Handle::Upload { .. })
        )
    }

    /// Acts on what was written through `fh` (on close and fsync): commits a blob, applies
    /// `index.json`, checks `oci-layout`. Temporary files wait.
    pub fn flush(&self, fh: u64, pid: u32) -> FsResult<()> {
        let (ino, shared) = match self.upload_handle(fh) {
            Ok(h) => h,
            Err(FsError::NotPermitted(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        {
            let w = shared.lock();
            earlier_failure(&w)?;
            if !w.dirty {
                return Ok(());
            }
        }
        self.finish(ino, &shared, pid, false)
    }

    /// An fsync of `fh`: acts on what was written as a close does (a blob is committed, and the
    /// commit fsyncs it), then waits until what stays an upload (a temporary file, `index.json`,
    /// `oci-layout`) is on the disk. A failed writeback fails this fsync, and the upload is
    /// dropped as after a failed write: later writes, closes and renames of the file fail too.
    pub fn fsync(&self, fh: u64, pid: u32) -> FsResult<()> {
        self.flush(fh, pid)?;
        let shared = match self.upload_handle(fh) {
            Ok((_, shared)) => shared,
            Err(FsError::NotPermitted(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut w = shared.lock();
        let Some(upload) = w.upload.as_mut() else {
            return Ok(());
        };
        if let Err(e) = upload.sync() {
            return Err(failed(&mut w, e.into(), "an earlier writeback"));
        }
        Ok(())
    }

    /// Acts on what was written to `ino`; `last_close` when nothing will write it again
    /// (its last release, or a rename into place).
    fn finish(&self, ino: u64, shared: &Shared, pid: u32, last_close: bool) -> FsResult<()> {
        match self.node(ino)? {
            Node::Index(_) => {
                let bytes = {
                    let mut w = shared.lock();
                    let u = w.upload.as_mut().ok_or(FsError::BadHandle(ino))?;
                    // A shell's `echo … > index.json` closes an empty first descriptor (after
                    // dup2) before it writes: an empty index.json is acted on at its last close.
                    if u.is_empty() && !last_close {
                        return Ok(());
                    }
                    let b = u.read_small("index.json", oci::MAX_INDEX_JSON_SIZE)?;
                    w.dirty = false;
                    b
                };
                self.apply_index(ino, &bytes, pid)
            }
            Node::LayoutFile(repo) => {
                let mut w = shared.lock();
                let u = w.upload.as_mut().ok_or(FsError::BadHandle(ino))?;
                if u.is_empty() && !last_close {
                    return Ok(());
                }
                let what = format!("{repo}/oci-layout");
                oci::check_layout_file(&what, &u.read_small(&what, oci::MAX_JSON_SIZE)?)?;
                w.dirty = false;
                drop(w);
                self.keep_repo(ino)?;
                // Written: it shows to every process from now on, its maker too.
                self.show_layout_name_at(ino, "oci-layout", true);
                Ok(())
            }
            Node::Blob(digest, size) => {
                if let Some(u) = take_verified(shared, &digest, Some(size))? {
                    self.hold(&writer_holder(None, pid), &digest)?;
                    u.commit(&digest, Some(size))?;
                }
                Ok(())
            }
            Node::Scratch(id) => {
                let Some((repo, digest)) = self.scratch_blob(id) else {
                    // A temporary file: a docker archive's manifest.json, or one it names.
                    return self.scratch_written(id, shared, pid);
                };
                self.commit_scratch(id, &repo, &digest, shared, pid)
            }
            _ => Ok(()),
        }
    }

    fn commit_scratch(
        &self,
        id: u64,
        repo: &str,
        digest: &Digest,
        shared: &Shared,
        pid: u32,
    ) -> FsResult<()> {
        let (wanted, repo_id) = {
            let mut w = self.write.lock();
            let parent = w.scratch.get(&id).map(|s| s.parent);
            let repo_id = parent.and_then(|p| self.repo_id_at(&mut w, p));
            (w.wanted.get(digest).copied(), repo_id)
        };
        let Some(upload) = take_verified(shared, digest, wanted)? else {
            return Ok(());
        };
        let size = upload.len();
        self.hold(&writer_holder(repo_id, pid), digest)?;
        if let Err(e) = upload.commit(digest, wanted) {
            // Nothing entered the store (a full disk), and the name holds nothing: it is gone.
            self.remove_scratch(id);
            return Err(e.into());
        }
        let parent = {
            let mut w = self.write.lock();
            let s = w.scratch.get_mut(&id);
            s.map(|s| {
                s.kind = ScratchKind::Committed(digest.clone(), size);
                (s.parent, s.name.clone())
            })
        };
        self.views.forget_repo(repo);
        self.register_pending()?;
        match parent {
            // A docker archive's manifest.json may name it (docker 25's `blobs/sha256/<hex>`).
            Some((parent, name)) => self.written_in(parent, &name, pid),
            None => Ok(()),
        }
    }

    pub fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        if let Node::AlgDir(_, alg) = self.node(parent)? {
            if let Ok(digest) = Digest::from_parts(alg.name(), name) {
                return self.unlink_blob(parent, name, digest);
            }
        }
        let gone = {
            let mut w = self.write.lock();
            match w.lookup(parent, name) {
                Some(id) => match w.scratch.get(&id).map(|s| &s.kind) {
                    Some(ScratchKind::Dir) => return Err(FsError::IsDir),
                    _ => Some(w.remove(id)),
                },
                None => None,
            }
        };
        if let Some(gone) = gone {
            // An upload's ingest is removed with the write state let go.
            drop(gone);
            return Ok(());
        }
        let attr = self.lookup(parent, std::ffi::OsStr::new(name))?;
        match self.node(attr.ino)? {
            Node::Index(_) => self.unlink_index(attr.ino, name),
            Node::LayoutFile(_) => {
                self.show_layout_name_at(attr.ino, name, false);
                Ok(())
            }
            _ => Err(FsError::IsDir),
        }
    }

    /// Unlinks blob `name` (`digest`) from directory `parent` (`blobs/<alg>/`): EBUSY while an
    /// image of the repository needs it. Under the serialising lock, the repository named from
    /// the inode there: a rename or an `index.json` meanwhile is followed.
    fn unlink_blob(&self, parent: u64, name: &str, digest: Digest) -> FsResult<()> {
        let _serial = self.write_lock.lock();
        let Node::AlgDir(repo, _) = self.node(parent)? else {
            return Err(FsError::NotFound);
        };
        if let Some(image) = self.needed_by(&repo, &digest)? {
            return Err(FsError::Busy {
                digest,
                image: image.to_string(),
            });
        }
        let mut w = self.write.lock();
        let gone = match w.lookup(parent, name) {
            Some(id) => w.remove(id),
            None => {
                // A blob of the images: listed here, or there is nothing to unlink.
                drop(w);
                self.lookup(parent, std::ffi::OsStr::new(name))?;
                w = self.write.lock();
                None
            }
        };
        // The blob leaves this listing (the same blob may be listed through the images too);
        // it leaves the store only by gc.
        w.repo_mut(&repo).hidden.insert(digest);
        drop(w);
        // An upload's ingest is removed with the write state let go.
        drop(gone);
        Ok(())
    }

    /// Unlinks `index.json` (node `ino`): every image of its repository goes. Under the
    /// serialising lock, the repository named from the inode: a rename meanwhile is followed.
    fn unlink_index(&self, ino: u64, name: &str) -> FsResult<()> {
        let _serial = self.write_lock.lock();
        let Node::Index(repo) = self.node(ino)? else {
            return Err(FsError::NotFound);
        };
        // What shows now stays until removed itself (`rm -r` unlinks it next), though the
        // repository has no image left to show it for.
        let snapshot = self.views.snapshot()?;
        let shown: Vec<&str> = LAYOUT_NAMES
            .into_iter()
            .filter(|n| {
                *n != name && self.layout_visible(&snapshot, &repo, n, super::Viewer::Reader)
            })
            .collect();
        drop(snapshot);
        let algs = self.algorithms(&repo, super::Viewer::Reader)?;
        {
            let mut w = self.write.lock();
            let state = w.repo_mut(&repo);
            for n in shown {
                state.set_layout_name(n, true);
            }
            state
                .alg_dirs
                .extend(algs.into_iter().map(|alg| (alg, true)));
        }
        self.clear_repo(&repo)?;
        self.show_layout_name_at(ino, name, false);
        Ok(())
    }

    /// Shows or hides layout name `name` in the repository of node `ino` (its layout file or
    /// directory), named with the write state held so that a rename meanwhile is followed.
    fn show_layout_name_at(&self, ino: u64, name: &str, shown: bool) {
        self.with_repo_at(ino, |r| r.set_layout_name(name, shown));
    }

    /// Whether directory `ino` is empty: no scratch entry in it; for a repository's directory,
    /// no image (pending ones too), no directory below it (a sub-repository named like a layout
    /// name included), nothing written into its `blobs/`, and no layout name written; for
    /// `blobs/`, no algorithm directory made with mkdir and no blob in any; for `blobs/<alg>/`,
    /// no blob. An empty repository's `oci-layout`, `index.json` and `blobs/sha256/` are the
    /// repository's own, not what was put in it, and go with it (as they came with mkdir).
    pub(super) fn dir_is_empty(&self, ino: u64) -> FsResult<bool> {
        if self.write.lock().has_children(ino) {
            return Ok(false);
        }
        match self.node(ino)? {
            Node::Dir(path) => {
                if !self.blobs_empty(&path, true)? {
                    return Ok(false);
                }
                let snapshot = self.views.snapshot()?;
                let dir = snapshot.dir(&path).ok_or(FsError::NotFound)?;
                let images = snapshot.images(&path).is_some_and(|e| !e.is_empty());
                let written = self
                    .write
                    .lock()
                    .repo(&path)
                    .is_some_and(RepoState::holds_written);
                Ok(!images && dir.children.is_empty() && !written)
            }
            Node::Blobs(repo) => self.blobs_empty(&repo, false),
            Node::AlgDir(repo, alg) => Ok(self.visible_blobs(&repo, alg)?.is_empty()),
            _ => Ok(true),
        }
    }

    /// Whether `repo`'s `blobs/` holds nothing: no algorithm directory made with mkdir, no blob
    /// listed or written in any, and (`with_itself`) nothing written in `blobs/` itself.
    fn blobs_empty(&self, repo: &Arc<str>, with_itself: bool) -> FsResult<bool> {
        let w = self.write.lock();
        if w.repo(repo)
            .is_some_and(|r| r.alg_dirs.values().any(|made| *made))
        {
            return Ok(false);
        }
        let itself = std::iter::once(Node::Blobs(repo.clone())).filter(|_| with_itself);
        let algs = Algorithm::ALL
            .into_iter()
            .map(|alg| Node::AlgDir(repo.clone(), alg));
        let written = itself
            .chain(algs)
            .filter_map(|n| self.inodes.get(&n))
            .any(|i| w.has_children(i));
        drop(w);
        if written {
            return Ok(false);
        }
        let images = self
            .views
            .snapshot()?
            .images(repo)
            .is_some_and(|e| !e.is_empty());
        if !images {
            return Ok(true);
        }
        for alg in Algorithm::ALL {
            if !self.visible_blobs(repo, alg)?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let attr = self.lookup(parent, std::ffi::OsStr::new(name))?;
        let ino = attr.ino;
        let node = self.node(ino)?;
        if !self.dir_is_empty(ino)? {
            return Err(FsError::NotEmpty);
        }
        match node {
            Node::Scratch(id) => {
                let is_dir = matches!(
                    self.write.lock().scratch.get(&id).map(|s| &s.kind),
                    Some(ScratchKind::Dir)
                );
                if !is_dir {
                    return Err(FsError::NotDir);
                }
                self.remove_scratch(id);
                Ok(())
            }
            Node::Blobs(repo) => {
                for alg in Algorithm::ALL {
                    if !self.visible_blobs(&repo, alg)?.is_empty() {
                        return Err(FsError::NotEmpty);
                    }
                }
                self.with_repo_at(ino, |state| {
                    state.set_layout_name(name, false);
                    state.alg_dirs = Algorithm::ALL.into_iter().map(|a| (a, false)).collect();
                });
                Ok(())
            }
            Node::AlgDir(repo, alg) => {
                if !self.visible_blobs(&repo, alg)?.is_empty() {
                    return Err(FsError::NotEmpty);
                }
                self.with_repo_at(ino, |r| r.alg_dirs.insert(alg, false));
                Ok(())
            }
            Node::Dir(_) => {
                let _serial = self.write_lock.lock();
                // Named and checked again under the lock: a rename or an index.json meanwhile.
                let Node::Dir(path) = self.node(ino)? else {
                    return Err(FsError::NotFound);
                };
                if !self.dir_is_empty(ino)? {
                    return Err(FsError::NotEmpty);
                }
                self.remove_repo(&path)
            }
            _ => Err(FsError::NotDir),
        }
    }

    /// Removes repository (or directory) `path`, found empty under the serialising lock,
    /// which the caller holds: forgotten in the records and in memory.
    fn remove_repo(&self, path: &str) -> FsResult<()> {
        if self.views.snapshot()?.dir(path).is_some_and(|d| d.kept) {
            self.change_records(
                &Change {
                    forget: &[path.to_owned()],
                    ..Change::default()
                },
                |s| s.remove_kept(path),
            )?;
        }
        let forgotten = self.write.lock().forget_repo(path);
        self.views.patch_additions(|s| s.remove_path(path));
        // What was written there is held by nothing now: gc may take it.
        self.release_repo(forgotten)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
        noreplace: bool,
        pid: u32,
    ) -> FsResult<()> {
        self.writable()?;
        let src = self.lookup(parent, std::ffi::OsStr::new(name))?;
        let target_exists = self
            .lookup(newparent, std::ffi::OsStr::new(newname))
            .is_ok();
        if noreplace && target_exists {
            return Err(FsError::Exists);
        }
        match self.node(src.ino)? {
            Node::Scratch(id) => self.rename_scratch(id, newparent, newname, pid),
            Node::Dir(_) => self.rename_repo(parent, name, newparent, newname),
            _ => Err(FsError::NotPermitted(
                "layout files and blobs keep their names; write index.json to change images",
            )),
        }
    }

    fn rename_scratch(&self, id: u64, newparent: u64, newname: &str, pid: u32) -> FsResult<()> {
        let (shared, moved) = match self.write.lock().scratch.get(&id).map(|s| &s.kind) {
            Some(kind @ ScratchKind::File(s)) => (Some(s.clone()), Moved::of(kind)),
            Some(kind) => (None, Moved::of(kind)),
            None => return Err(FsError::NotFound),
        };
        self.check_move(id, &moved, newparent, newname)?;
        let is_dir = moved == Moved::Dir;
        let target = self.node(newparent)?;
        let Some(shared) = shared else {
            // A directory of blobs renamed into place commits them (`fs::staged`); any other
            // directory, or a committed blob: only its name changes.
            if is_dir && self.rename_staged(id, newparent, newname, pid)? {
                return Ok(());
            }
            self.move_scratch(id, newparent, newname);
            // A docker archive's manifest.json may name what is below it now.
            return self.written_in(newparent, newname, pid);
        };
        // What was written is lost (a failed write or writeback): no name makes it a blob.
        earlier_failure(&shared.lock())?;
        match &target {
            Node::AlgDir(repo, alg) => {
                check_blob_name(repo, *alg, newname)?;
                if let Ok(digest) = Digest::from_parts(alg.name(), newname) {
                    let (repo, digest) = (repo.clone(), digest);
                    // Verify first: on a mismatch the file keeps its old name and bytes.
                    let (wanted, repo_id) = {
                        let mut w = self.write.lock();
                        let repo_id = self.repo_id_at(&mut w, newparent);
                        (w.wanted.get(&digest).copied(), repo_id)
                    };
                    let upload = {
                        let mut w = shared.lock();
                        if let Some(u) = w.upload.as_mut() {
                            u.verify(&digest, wanted)?;
                        }
                        w.upload.take()
                    };
                    if let Some(upload) = upload {
                        let size = upload.len();
                        self.hold(&writer_holder(repo_id, pid), &digest)?;
                        upload.commit(&digest, wanted)?;
                        let mut w = self.write.lock();
                        if let Some(s) = w.scratch.get_mut(&id) {
                            s.kind = ScratchKind::Committed(digest.clone(), size);
                        }
                        let replaced = w.move_to(id, newparent, newname);
                        drop(w);
                        drop(replaced);
                    }
                    self.views.forget_repo(&repo);
                    self.register_pending()?;
                    // A docker archive's manifest.json may name it.
                    return self.written_in(newparent, newname, pid);
                }
            }
            Node::Dir(repo) if newname == "index.json" || newname == "oci-layout" => {
                let node = if newname == "index.json" {
                    Node::Index(repo.clone())
                } else {
                    Node::LayoutFile(repo.clone())
                };
                let ino = self.inodes.ino(&node);
                shared.lock().dirty = true;
                self.finish(ino, &shared, pid, true)?;
                self.show_layout_name_at(ino, newname, true);
                self.remove_scratch(id);
                // The kernel keeps the renamed file's inode for the name: it is the name's.
                self.rebind(self.inodes.ino(&Node::Scratch(id)), &node);
                return Ok(());
            }
            _ => {}
        }
        self.move_scratch(id, newparent, newname);
        // A docker archive's manifest.json renamed into place, or a file it names.
        self.scratch_written(id, &shared, pid)
    }

    /// Enters a scratch entry; what it replaces (an upload, whose ingest is a directory to
    /// remove) is dropped with the write state let go.
    pub(super) fn add_scratch(&self, parent: u64, name: &str, kind: ScratchKind) -> u64 {
        self.touch(parent);
        let (id, replaced) = self.write.lock().add(parent, name, kind);
        drop(replaced);
        id
    }

    /// Makes inode `ino` stand for `node` (`Inodes::rebind`): a time set on what it was is not
    /// the new node's.
    pub(super) fn rebind(&self, ino: u64, node: &Node) {
        self.inodes.rebind(ino, node);
        self.mtimes.lock().remove(&ino);
    }

    /// Notes that something was made in directory `dir`: its repository is no longer fresh
    /// (see `RepoState::fresh`).
    fn touch(&self, dir: u64) {
        let repo = self.node(dir).ok().and_then(|node| self.repo_of(&node));
        if let Some(repo) = repo {
            self.write.lock().repo_mut(&repo);
        }
    }

    /// Removes scratch entry `id`, dropping it (and its upload) with the write state let go.
    fn remove_scratch(&self, id: u64) {
        let gone = self.write.lock().remove(id);
        drop(gone);
    }

    /// Moves scratch entry `id`, dropping what it replaces with the write state let go.
    fn move_scratch(&self, id: u64, parent: u64, name: &str) {
        self.touch(parent);
        let replaced = self.write.lock().move_to(id, parent, name);
        drop(replaced);
    }

    /// Renames repository directory `name` of `parent` to `newname` in `newparent`, both named
    /// from their inodes under the serialising lock: a rename of a directory above meanwhile
    /// (which the kernel does not serialise with this one) is followed.
    fn rename_repo(&self, parent: u64, name: &str, newparent: u64, newname: &str) -> FsResult<()> {
        let _serial = self.write_lock.lock();
        let (Node::Dir(dir), Node::Dir(newdir)) = (self.node(parent)?, self.node(newparent)?)
        else {
            return Err(FsError::Invalid(format!(
                "{newname}: a repository moves only among repository directories"
            )));
        };
        self.check_sub_repository(&newdir, newname)?;
        let (from, to) = (
            super::child_path(&dir, name),
            super::child_path(&newdir, newname),
        );
        let (from, to) = (&*from, &*to);
        if self.views.snapshot()?.dir(from).is_none() {
            return Err(FsError::NotFound);
        }
        check_repository(to)
            .map_err(|why| FsError::Invalid(format!("{to:?} is not a repository name: {why}")))?;
        // rename(2) replaces only an empty directory: nothing written there either (a copy in
        // progress), as every process sees it.
        if self.views.snapshot()?.dir(to).is_some() {
            let target = self.inodes.ino(&Node::Dir(Arc::from(to)));
            if !self.dir_is_empty(target)? {
                return Err(FsError::NotEmpty);
            }
        }
        let moved = |repo: &str| -> Option<String> {
            if repo == from {
                Some(to.to_owned())
            } else {
                repo.strip_prefix(from)
                    .filter(|rest| rest.starts_with('/'))
                    .map(|rest| format!("{to}{rest}"))
            }
        };
        // Every name the rename makes is checked before anything moves.
        self.write.lock().check_rename(from, to)?;
        let mut put = Vec::new();
        let mut remove = Vec::new();
        for image in self.content().catalog().list()? {
            if let Some(repo) = moved(image.name.repository()) {
                put.push((
                    image.name.with_repository(&repo).map_err(Error::from)?,
                    image.target,
                ));
                remove.push(image.name);
            }
        }
        let records = self.content().catalog();
        let (mut forget, mut keep) = (Vec::new(), Vec::new());
        for repo in records.repositories()? {
            if let Some(new) = moved(&repo) {
                forget.push(repo);
                keep.push(new);
            }
        }
        // The directory replaced (empty) is no longer kept: the one moved takes its place.
        forget.push(to.to_owned());
        records.apply(&Change {
            put: &put,
            remove: &remove,
            forget: &forget,
            keep: &keep,
        })?;
        let replaced = {
            // The inodes and the state move together: who reads a name through an inode with
            // the write state held (`repo_id_at`) finds that name's state.
            let mut w = self.write.lock();
            self.inodes.rename_tree(from, to);
            w.rename_repo(from, to)?
        };
        self.views.invalidate();
        // The empty directory replaced held nothing of its own any more.
        for id in replaced {
            self.release_repo(Some(id))?;
        }
        Ok(())
    }

    /// Applies an attribute change. Sizes truncate an upload; a size of 0 on a layout file or
    /// blob is the truncation before a rewrite, done by the upload the open makes, and a
    /// blob's own size changes nothing; a file's modification time is kept for the mount's life
    /// (`cp -a`, `rsync -a` and `tar -x` set them, and rsync finds a file unchanged by size and
    /// time); modes and owners are accepted and not kept (the layout's modes are fixed).
    pub fn setattr(
        &self,
        ino: u64,
        fh: Option<u64>,
        size: Option<u64>,
        mtime: Option<std::time::SystemTime>,
    ) -> FsResult<super::Attr> {
        self.writable()?;
        let node = self.node(ino)?;
        if let (Some(t), Node::Blob(..) | Node::Scratch(_)) = (mtime, &node) {
            self.mtimes.lock().insert(ino, t);
        }
        if let Some(size) = size {
            let shared = match fh.map(|fh| self.upload_handle(fh)) {
                Some(Ok((_, s))) => Some(s),
                _ => match &node {
                    Node::Scratch(id) => {
                        // Asked with the write state let go: `attr` takes it again.
                        let committed = match self.write.lock().scratch.get(id).map(|s| &s.kind) {
                            Some(ScratchKind::File(s)) => Err(s.clone()),
                            Some(ScratchKind::Committed(..)) => Ok(true),
                            _ => Ok(false),
                        };
                        let now = self.attr(ino, &node)?.size;
                        match committed {
                            Err(s) => Some(s),
                            Ok(true) if size == 0 || size == now => return self.attr(ino, &node),
                            Ok(_) => None,
                        }
                    }
                    _ => None,
                },
            };
            match (shared, &node) {
                (Some(s), _) => {
                    check_cap(&node, size)?;
                    let mut w = s.lock();
                    if let Some(u) = w.upload.as_mut() {
                        u.truncate(size)?;
                        s.touch(u.len());
                        w.dirty = true;
                    }
                }
                (None, Node::Index(_) | Node::LayoutFile(_) | Node::Blob(..)) if size == 0 => {}
                (None, Node::Blob(_, own)) if size == *own => {}
                (None, Node::Dir(_) | Node::Blobs(_) | Node::AlgDir(..)) => {
                    return Err(FsError::IsDir)
                }
                _ => return Err(FsError::NotPermitted("a blob never changes in place")),
            }
        }
        self.attr(ino, &node)
    }

    /// The release of a handle open for writing. At the last one: an `index.json` or
    /// `oci-layout` still unapplied (written empty) is acted on now, and its error logged; a file
    /// at a blob's name that never became the blob (its bytes did not match) goes, as nothing
    /// entered the store; a temporary file closes its descriptors until it is opened again.
    pub(super) fn release_upload(&self, ino: u64, shared: &Shared) {
        match self.node(ino) {
            Ok(Node::Index(repo) | Node::LayoutFile(repo)) => {
                // Not in the scratch table: this handle is the last when it is the only one.
                let last = Arc::strong_count(shared) <= 1;
                if last && shared.lock().dirty {
                    let name = match self.node(ino) {
                        Ok(Node::Index(_)) => "index.json",
                        _ => "oci-layout",
                    };
                    if let Err(e) = self.finish(ino, shared, RELEASE_PID, true) {
                        tracing::error!("{repo}/{name}: closed with nothing applied: {e}");
                    }
                }
            }
            Ok(Node::Scratch(id)) => {
                // The scratch table and this handle: no other descriptor has it open.
                if Arc::strong_count(shared) > 2 {
                    return;
                }
                // A blob written again (its own upload, never the entry's): its close acted
                // on it; the entry stays the blob it is.
                if self
                    .write
                    .lock()
                    .upload_of(id)
                    .is_none_or(|s| !Arc::ptr_eq(&s, shared))
                {
                    return;
                }
                // Asked before the upload is locked: the scratch table comes first.
                let at_blob_name = self.scratch_blob(id).is_some();
                let mut w = shared.lock();
                if w.upload.is_some() && at_blob_name {
                    drop(w);
                    self.remove_scratch(id);
                } else if let Some(u) = w.upload.as_mut() {
                    u.park();
                }
            }
            _ => {}
        }
    }

    /// Drops every temporary file's upload (at unmount), removing their ingests many at a
    /// time: each is a directory to remove, which waits on the disk far more than on the CPU
    /// (3,000 took 2 to 7 s one after another here). With a `budget`, what is not removed by
    /// then is left as a dead process's ingests, which the next mount (or gc) removes.
    /// Returns how many were left.
    pub fn drop_uploads(&self, budget: Option<std::time::Duration>) -> usize {
        // Each upload is locked with the write state let go (see the lock order).
        let shared = self.write.lock().uploads();
        let mut uploads: Vec<Upload> = shared
            .iter()
            .filter_map(|s| s.lock().upload.take())
            .collect();
        let deadline = budget.map(|b| std::time::Instant::now() + b);
        let left = std::sync::atomic::AtomicUsize::new(0);
        let drop_all = |chunk: Vec<Upload>| {
            for u in chunk {
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    u.abandon();
                    left.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    drop(u);
                }
            }
        };
        let per_thread = uploads.len().div_ceil(DROP_THREADS).max(1);
        std::thread::scope(|scope| {
            while !uploads.is_empty() {
                let chunk = uploads.split_off(uploads.len().saturating_sub(per_thread));
                let spawned = std::thread::Builder::new()
                    .name("drop-uploads".into())
                    .spawn_scoped(scope, || drop_all(chunk));
                if let Err(e) = spawned {
                    tracing::debug!("removing ingests on this thread: {e}");
                }
            }
        });
        left.into_inner()
    }

    /// Remembers that process `pid` looked for `name` in directory `parent` and did not find
    /// it. A process that found no `index.json` in a repository, or no repository directory
    /// at all, saw no images there: what it writes later adds to the repository and removes
    /// nothing (skopeo checks for the file, makes the directory, then writes a new index).
    /// `pid` is asked only when the name matters (it reads /proc).
    pub fn note_absent(&self, parent: u64, name: &OsStr, pid: impl FnOnce() -> u32) {
        let (Ok(Node::Dir(path)), Some(name)) = (self.node(parent), name.to_str()) else {
            return;
        };
        let repo = if name == "index.json" {
            path.to_string()
        } else {
            super::child_path(&path, name).to_string()
        };
        if check_repository(&repo).is_ok() {
            self.write
                .lock()
                .remember_read(pid(), &repo, BTreeSet::new());
        }
    }

    /// Remembers which images process `pid` saw in `repo`'s `index.json`.
    pub(super) fn remember_index_read(&self, pid: u32, repo: &str, entries: &[Entry]) {
        let names = entries.iter().map(|e| e.name.clone()).collect();
        self.write.lock().remember_read(pid, repo, names);
    }
}

/// The upload of `shared`, taken for commit once its content is the blob `digest`. Nothing is
/// taken while nothing was written (dd creates the file, then closes a first descriptor before
/// writing through its duplicate), and on a mismatch the upload stays: the error goes to this
/// close, and later writes through another descriptor may still complete it.
/// Records that what was written to an upload is lost (`what` failed with `e`): the upload is
/// dropped, giving its space back, and every later write, close, fsync or rename of the file
/// fails with the same error. Returns `e`.
fn failed(w: &mut Writing, e: FsError, what: &str) -> FsError {
    w.upload = None;
    w.failed = Some((e.errno(), format!("{what} failed: {e}")));
    e
}

/// The error of an earlier failed write or writeback of an upload, if one failed.
fn earlier_failure(w: &Writing) -> FsResult<()> {
    match &w.failed {
        Some((errno, message)) => Err(FsError::WriteFailed {
            errno: *errno,
            message: message.clone(),
        }),
        None => Ok(()),
    }
}

fn take_verified(shared: &Shared, digest: &Digest, size: Option<u64>) -> FsResult<Option<Upload>> {
    let mut w = shared.lock();
    let Some(u) = w.upload.as_mut() else {
        return Ok(None);
    };
    if u.is_empty() && size != Some(0) && *digest != Digest::of(digest.algorithm(), b"") {
        return Ok(None);
    }
    u.verify(digest, size)?;
    Ok(w.upload.take())
}

/// Checks a file name in `blobs/<alg>/`: the algorithm's hex length in lowercase hex (a blob),
/// or a temporary name: one beginning with `.` (rsync's `.<name>.XXXXXX`, mkstemp's), or a
/// longer name starting with such hex (go-containerregistry's `<hex><random>tmp`).
fn check_blob_name(repo: &str, alg: Algorithm, name: &str) -> FsResult<()> {
    let n = alg.hex_len();
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = (name.len() == n && hex(name))
        || is_temporary(name)
        || (name.len() > n && name.is_char_boundary(n) && hex(&name[..n]));
    if ok {
        Ok(())
    } else {
        Err(FsError::Invalid(format!(
            "{repo}/blobs/{}/{name}: neither a {} digest in lowercase hex nor a temporary \
             name (one beginning with '.')",
            alg.name(),
            alg.name()
        )))
    }
}

/// Whether a directory named `name` in a repository directory is scratch, not a sub-repository:
/// no repository component, or 64 lowercase hex digits (a docker archive's v1 layer directory;
/// docker refuses such a repository name, "cannot specify 64-byte hexadecimal strings").
pub(super) fn is_scratch_dir(name: &str) -> bool {
    check_repository(name).is_err() || is_hex64(name)
}

/// Whether `name` is 64 lowercase hex digits.
fn is_hex64(name: &str) -> bool {
    name.len() == HEX64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The length of a name docker takes for an image id, never a repository.
const HEX64: usize = 64;

/// Whether `name` is a temporary name wherever it is: one beginning with `.` (not `.` and
/// `..`, which the kernel never passes as a name to create).
pub(super) fn is_temporary(name: &str) -> bool {
    name.len() > 1 && name.starts_with('.') && name != ".."
}

/// Refuses an end past what a layout file may hold (`index.json` 16 MiB, `oci-layout` 4 MiB,
/// as read at close) when it is written, not at close: whatever keeps an upload's bytes is
/// never asked to hold more.
fn check_cap(node: &Node, end: u64) -> FsResult<()> {
    let (name, repo, cap) = match node {
        Node::Index(repo) => ("index.json", repo, oci::MAX_INDEX_JSON_SIZE),
        Node::LayoutFile(repo) => ("oci-layout", repo, oci::MAX_JSON_SIZE),
        _ => return Ok(()),
    };
    if end > cap {
        return Err(FsError::PastCap(format!(
            "{repo}/{name}: {end} bytes is more than the {cap} it may hold"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_directory_names() {
        let hex = "0123456789abcdef".repeat(4);
        for (name, scratch) in [
            (hex.as_str(), true),
            (&hex[..63], false),
            (&hex[1..], false),
            (".umoci-x", true),
            ("Upper", true),
            ("app", false),
            ("v1", false),
        ] {
            assert_eq!(is_scratch_dir(name), scratch, "{name}");
        }
        assert!(is_scratch_dir(&hex.to_uppercase()));
    }

    #[test]
    fn blob_names() {
        let hex = "a".repeat(64);
        for (name, ok) in [
            (hex.clone(), true),
            (format!("{hex}1234tmp"), true),
            (format!(".{hex}.ogIyfK"), true),
            (".tmp".into(), true),
            ("tmp".into(), false),
            (".".into(), false),
            (hex.to_uppercase(), false),
            (hex[..63].to_owned(), false),
            ("x".repeat(64), false),
            ("".into(), false),
        ] {
            assert_eq!(
                check_blob_name("r", Algorithm::Sha256, &name).is_ok(),
                ok,
                "{name}"
            );
        }
    }
}
