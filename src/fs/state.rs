//! The write side's state, in memory: one `RepoState` per repository name (what was written,
//! unlinked and made there, its pending images, what each process read of its `index.json`),
//! the table of scratch entries (temporary files and directories, numbered like inodes), and
//! the sizes pending images want. What a repository directory shows, and to whom, is decided
//! from it by one rule (`LayoutRule`, `WriteState::algorithms`, `WriteState::listed`), which
//! lookup, readdir, getattr, rmdir and unlink all ask. A rename of a repository moves its entry
//! and those of the repositories below it; `rmdir` drops one.
//!
//! A scratch entry keeps no repository name: its repository is found through its parent chain
//! (`Fs::scratch_repo`), so a file open in a repository that is renamed meanwhile lands in the
//! new name.
//!
//! # Locks
//! Every lock of the filesystem core, in the order they are taken: a lock is only ever taken
//! while holding none, or only locks above it in this list.
//! 0. `Fs::entries`: held shared across a write that hands the kernel an entry (create, mkdir,
//!    symlink) until its lookup is counted, and exclusive by `forget`, so that no number is
//!    freed between; never taken twice by one thread (nothing under it forgets or releases).
//! 1. `Fs::write_lock`: serialises every change of image records and pending images, and the
//!    renames of repositories; held across store I/O. Lookup, getattr and readdir never take it.
//!    Who named a repository before taking it names it again under it, from the inode (a
//!    rename meanwhile moved it); a change of a `RepoState` alone names its repository from
//!    the inode with this `WriteState` held, as a rename moves inodes and state under it.
//! 2. `Views::state`: the snapshot of the tree and the cache of repository views; held while
//!    the records are read to rebuild the snapshot, never while a view is built.
//! 3. `Fs::write` (this `WriteState`): memory only; never held across I/O, a call into the
//!    views, or while waiting for an upload.
//! 4. Leaves, under which nothing is taken: `Inodes::table`, `Fs::handles`, `Fs::open_inos`,
//!    `Fs::blob_files`, `Fs::mtimes`, the verifier's table.
//!
//! An upload's own lock (`SharedUpload::lock`) is apart: it is taken with no other lock held,
//! and nothing is taken under it. A write holds it across its disk write and hash, so what a
//! lookup or getattr needs of an upload (its size and time) is kept beside it in atomics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, MutexGuard};

use crate::digest::{Algorithm, Digest};
use crate::error::Result;
use crate::layout::Entry;
use crate::reference::{check_repository, Reference, ReferenceError};

use super::upload::Upload;
use super::view::Extra;
use super::Viewer;

/// Bound on remembered `index.json` reads; past it the oldest knowledge is dropped.
const MAX_SEEN: usize = 4096;

/// An upload and whether it changed since it was last acted on.
pub struct Writing {
    pub upload: Option<Upload>,
    pub dirty: bool,
    /// Why a write failed: the upload is dropped then (giving its space back on a full disk),
    /// and close fails with the same error.
    pub failed: Option<(i32, String)>,
}

/// An upload shared by its handles and its scratch entry: the upload behind its own lock, and
/// its size and modification time outside it, so that a stat never waits for a write.
pub struct SharedUpload {
    writing: Mutex<Writing>,
    len: AtomicU64,
    /// Nanoseconds since the epoch.
    mtime: AtomicU64,
}

pub type Shared = Arc<SharedUpload>;

impl SharedUpload {
    pub fn new(upload: Upload) -> Shared {
        let len = upload.len();
        let shared = Arc::new(SharedUpload {
            writing: Mutex::new(Writing {
                upload: Some(upload),
                dirty: true,
                failed: None,
            }),
            len: AtomicU64::new(0),
            mtime: AtomicU64::new(0),
        });
        shared.touch(len);
        shared
    }

    /// The upload, locked: with no other lock held (see the lock order above).
    pub fn lock(&self) -> MutexGuard<'_, Writing> {
        self.writing.lock()
    }

    /// Records the upload's size after a change, and the time of the change.
    pub fn touch(&self, len: u64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.len.store(len, Ordering::Release);
        self.mtime.store(now, Ordering::Release);
    }

    /// The size after the last change, without waiting for a write in progress.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The time of the last change.
    pub fn mtime(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.mtime.load(Ordering::Acquire))
    }
}

pub enum ScratchKind {
    Dir,
    File(Shared),
    /// A file that became the blob `digest`: it stays listed under its name for the mount's
    /// life, so that what the writer does next (chmod, utime, stat) finds it.
    Committed(Digest, u64),
    /// A symbolic link (`fs::links`): its target as written, read back by readlink and never
    /// followed by the mount.
    Link(String),
}

/// A temporary file or directory, by its place: the inode of its directory and its name.
pub struct Scratch {
    pub parent: u64,
    pub name: String,
    pub kind: ScratchKind,
}

/// What the writes of this mount keep for one repository name.
#[derive(Default)]
pub struct RepoState {
    /// Stable over renames: names the lease holders of what was written into the repository.
    pub id: u64,
    /// The process that made the repository with mkdir in this mount: its layout names show
    /// to it only once written, as on a disk (see `Viewer`). None: not made here.
    pub maker: Option<u32>,
    /// A directory made with mkdir in this mount that only leads to repositories made in it by
    /// its maker (`mkdir -p`, skopeo's MkdirAll): no repository itself, and not kept.
    pub path: bool,
    /// Layout names (`oci-layout`, `index.json`, `blobs`) shown (true) or unlinked (false)
    /// whatever the images: a repository made with mkdir starts empty so that cp and tar can
    /// create its files, and a name tar unlinks before rewriting it is gone until written again.
    layout: BTreeMap<String, bool>,
    /// Algorithm directories made with mkdir (true) or removed with rmdir (false), whatever the
    /// images.
    pub alg_dirs: BTreeMap<Algorithm, bool>,
    /// Blobs unlinked from the listing (tar unlinks before it rewrites a file; rm -r unlinks
    /// everything). They stay in the store, and show again when written again.
    pub hidden: BTreeSet<Digest>,
    /// Images written into the mount that wait for blobs.
    pub pending: Vec<Entry>,
    /// Whether a lease holder was named for what was written here (`writer_holder` by `id`):
    /// such a state is never forgotten as idle, so no holder outlives the id that names it; it
    /// goes with rmdir, which releases the holders.
    pub held: bool,
    /// The names each process last read in `index.json`: what it may remove.
    seen: HashMap<u32, BTreeSet<Reference>>,
    /// A docker archive's `manifest.json` here waits for a file it names (`fs::docker_archive`).
    pub manifest_waits: bool,
    /// The paths (below the repository directory) it found missing when last tried: it is
    /// tried again only once each has been written.
    pub manifest_missing: BTreeSet<String>,
    /// Just made with mkdir: nothing was done in it since (every change of the state, every
    /// file or directory made in the repository, clears it; see `WriteState::repo_mut`).
    pub fresh: bool,
}

impl RepoState {
    /// Shows (true) or hides (false) layout name `name` for everyone.
    pub fn set_layout_name(&mut self, name: &str, shown: bool) {
        self.layout.insert(name.to_owned(), shown);
    }

    /// Whether process `pid` made the repository here and nothing changed it since.
    pub fn untouched_by(&self, pid: u32) -> bool {
        self.fresh && self.maker == Some(pid)
    }

    /// Whether a layout name or an algorithm directory was written here (and not removed).
    pub fn holds_written(&self) -> bool {
        self.layout.values().any(|shown| *shown) || self.alg_dirs.values().any(|made| *made)
    }

    /// Whether the entry keeps nothing (it may be dropped).
    fn is_idle(&self) -> bool {
        self.maker.is_none()
            && !self.path
            && self.layout.is_empty()
            && self.alg_dirs.is_empty()
            && self.hidden.is_empty()
            && self.pending.is_empty()
            && !self.manifest_waits
            && self.seen.is_empty()
            && !self.held
    }
}

/// Whether a layout name shows in a repository directory (one with images, pending ones too,
/// or kept), before asking who looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutRule {
    /// Written (true) or unlinked (false) in this mount: so for everyone.
    Written(bool),
    /// Shown, as the repository is there.
    Shown,
    /// Shown to every process but the one that made the repository here (cp -r creates each
    /// name exclusively and must not find it there first): to it once written.
    ShownExceptMaker(u32),
}

impl LayoutRule {
    /// The rule: whether the name shows to `viewer`.
    pub(crate) fn shows(self, viewer: Viewer) -> bool {
        match (self, viewer) {
            (LayoutRule::Written(shown), _) => shown,
            (LayoutRule::Shown, _) | (LayoutRule::ShownExceptMaker(_), Viewer::Reader) => true,
            (LayoutRule::ShownExceptMaker(_), Viewer::Maker) => false,
            (LayoutRule::ShownExceptMaker(maker), Viewer::Process(pid)) => pid() != maker,
        }
    }

    /// Whether the answer depends on who looks (the kernel must then not cache the entry).
    pub fn by_viewer(self) -> bool {
        matches!(self, LayoutRule::ShownExceptMaker(_))
    }
}

/// What the writes of this mount hold in memory.
#[derive(Default)]
pub struct WriteState {
    repos: BTreeMap<String, RepoState>,
    next_repo: u64,
    pub scratch: HashMap<u64, Scratch>,
    /// The scratch entries of each directory (by inode), by name: a directory's own entries
    /// are found without looking at any other's.
    names: HashMap<u64, BTreeMap<String, u64>>,
    next: u64,
    /// Sizes of the blobs pending images wait for, to refuse a write past them.
    pub wanted: HashMap<Digest, u64>,
    /// How many `index.json` reads are remembered, over every repository.
    seen: usize,
}

impl WriteState {
    pub fn repo(&self, repo: &str) -> Option<&RepoState> {
        self.repos.get(repo)
    }

    /// The state of `repo`, to change: made empty (with a new id) if nothing was kept for it,
    /// and no longer fresh.
    pub fn repo_mut(&mut self, repo: &str) -> &mut RepoState {
        if !self.repos.contains_key(repo) {
            self.next_repo += 1;
            let state = RepoState {
                id: self.next_repo,
                ..RepoState::default()
            };
            self.repos.insert(repo.to_owned(), state);
        }
        let state = self.repos.entry(repo.to_owned()).or_default();
        state.fresh = false;
        state
    }

    /// The state of `repo`, if something is kept for it.
    pub fn repo_mut_if(&mut self, repo: &str) -> Option<&mut RepoState> {
        self.repos.get_mut(repo)
    }

    /// The id of `repo` (see `RepoState::id`).
    pub fn repo_id(&mut self, repo: &str) -> u64 {
        self.repo_mut(repo).id
    }

    /// The repositories a rename of `from` moves: itself and those below it.
    fn moved_by(&self, from: &str) -> Vec<String> {
        let below = format!("{from}/");
        let itself = self.repos.contains_key(from).then(|| from.to_owned());
        itself
            .into_iter()
            .chain(
                self.repos
                    .range(below.clone()..)
                    .map(|(k, _)| k)
                    .take_while(|k| k.starts_with(&below))
                    .cloned(),
            )
            .collect()
    }

    /// What a rename of `from` to `to` makes of the state: each moved repository's old and new
    /// names, and its pending images renamed. An error (a name grown too long) changes nothing.
    fn renamed(&self, from: &str, to: &str) -> Result<Vec<(String, String, Vec<Entry>)>> {
        let mut out = Vec::new();
        for old in self.moved_by(from) {
            let new = format!("{to}{}", &old[from.len()..]);
            check_repository(&new).map_err(|why| ReferenceError::Invalid(new.clone(), why))?;
            let pending = self.repos[&old]
                .pending
                .iter()
                .map(|e| {
                    Ok(Entry {
                        name: e.name.with_repository(&new)?,
                        target: e.target.clone(),
                    })
                })
                .collect::<Result<Vec<Entry>>>()?;
            out.push((old, new, pending));
        }
        Ok(out)
    }

    /// Checks that a rename of `from` to `to` gives every repository below `from` and every
    /// pending image there a valid name, before anything is moved.
    pub fn check_rename(&self, from: &str, to: &str) -> Result<()> {
        self.renamed(from, to).map(|_| ())
    }

    /// Moves the state of `from` and of every repository below it to the same place under
    /// `to`; the names of their pending images follow. Every new name is made first: on an
    /// error nothing moved. Returns the ids of the states replaced (an empty directory's).
    pub fn rename_repo(&mut self, from: &str, to: &str) -> Result<Vec<u64>> {
        let mut replaced = Vec::new();
        for (old, new, pending) in self.renamed(from, to)? {
            let Some(mut state) = self.repos.remove(&old) else {
                continue;
            };
            state.pending = pending;
            if let Some(gone) = self.repos.insert(new, state) {
                self.seen -= gone.seen.len();
                replaced.push(gone.id);
            }
        }
        Ok(replaced)
    }

    /// Starts `repo` afresh (made with mkdir where no repository is): what was kept for a
    /// repository of that name removed from outside the mount (`layoutfs rm`) goes, except
    /// what processes read there (a process that found no repository adds to the new one and
    /// removes nothing). Returns the old id when lease holders were named by it, for the caller
    /// to release them (with this state let go).
    pub fn remake_repo(&mut self, repo: &str) -> (&mut RepoState, Option<u64>) {
        let old = self.repos.remove(repo);
        self.next_repo += 1;
        let mut state = RepoState {
            id: self.next_repo,
            ..RepoState::default()
        };
        let released = old.and_then(|o| {
            state.seen = o.seen;
            (o.held || !o.pending.is_empty()).then_some(o.id)
        });
        let state = self.repos.entry(repo.to_owned()).or_insert(state);
        (state, released)
    }

    /// Forgets what was kept for `repo` (removed with rmdir); returns its id when lease holders
    /// were named by it, for the caller to release them (with this state let go).
    pub fn forget_repo(&mut self, repo: &str) -> Option<u64> {
        let state = self.repos.remove(repo)?;
        self.seen -= state.seen.len();
        (state.held || !state.pending.is_empty()).then_some(state.id)
    }

    /// What the mount adds to the records, for the views: repositories kept as directories,
    /// and pending images.
    pub fn extra(&self) -> Extra {
        let mut x = Extra::default();
        for (name, r) in &self.repos {
            if r.path {
                x.paths.insert(name.clone());
            }
            if !r.pending.is_empty() {
                x.pending.insert(name.clone(), r.pending.clone());
            }
        }
        x
    }

    /// Every pending image.
    pub fn pending(&self) -> impl Iterator<Item = &Entry> {
        self.repos.values().flat_map(|r| r.pending.iter())
    }

    /// The repositories whose docker archive's `manifest.json` waits for a file.
    pub fn waiting_archives(&self) -> Vec<String> {
        self.repos
            .iter()
            .filter(|(_, r)| r.manifest_waits)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The pending images of `repo`.
    pub fn pending_of(&self, repo: &str) -> Vec<Entry> {
        self.repos
            .get(repo)
            .map_or_else(Vec::new, |r| r.pending.clone())
    }

    /// Drops the pending images `done` names (registered or dropped).
    pub fn drop_pending(&mut self, done: &[Reference]) {
        for r in self.repos.values_mut() {
            r.pending.retain(|e| !done.contains(&e.name));
        }
    }

    // -----------------------------------------------------------------------------------------
    // The visibility rule: what a repository directory shows, and to whom.

    /// The rule for layout name `name` in `repo`.
    pub fn layout_rule(&self, repo: &str, name: &str) -> LayoutRule {
        let state = self.repos.get(repo);
        match state.and_then(|r| r.layout.get(name)) {
            Some(shown) => LayoutRule::Written(*shown),
            None => match state.and_then(|r| r.maker) {
                Some(maker) => LayoutRule::ShownExceptMaker(maker),
                None => LayoutRule::Shown,
            },
        }
    }

    /// Shows (true) or hides (false) layout name `name` in `repo` for everyone.
    pub fn set_layout_name(&mut self, repo: &str, name: &str, shown: bool) {
        self.repo_mut(repo).set_layout_name(name, shown);
    }

    /// The algorithm directories of `repo` under `blobs/` that `viewer` sees: those of its
    /// images (`of_images`, sha256 always) by the rule of the layout names (not to the process
    /// that made the repository here: it sees what it made, as on a disk), with those made
    /// with mkdir and less those removed with rmdir, for everyone.
    pub(crate) fn algorithms(
        &self,
        repo: &str,
        viewer: Viewer,
        of_images: impl FnOnce() -> BTreeSet<Algorithm>,
    ) -> BTreeSet<Algorithm> {
        let state = self.repos.get(repo);
        let rule = match state.and_then(|r| r.maker) {
            Some(maker) => LayoutRule::ShownExceptMaker(maker),
            None => LayoutRule::Shown,
        };
        let mut algs = if rule.shows(viewer) {
            of_images()
        } else {
            BTreeSet::new()
        };
        for (alg, made) in state.iter().flat_map(|r| r.alg_dirs.iter()) {
            if *made {
                algs.insert(*alg);
            } else {
                algs.remove(alg);
            }
        }
        algs
    }

    /// Whether what `repo`'s `blobs/` lists depends on who looks.
    pub fn algorithms_by_viewer(&self, repo: &str) -> bool {
        self.repos.get(repo).is_some_and(|r| r.maker.is_some())
    }

    /// Whether blob `digest` of `repo`'s images is listed in its `blobs/<alg>/`: not in a
    /// repository made with mkdir here (it lists what was written), nor once unlinked.
    pub fn listed(&self, repo: &str, digest: &Digest) -> bool {
        self.repos
            .get(repo)
            .is_none_or(|r| r.maker.is_none() && !r.hidden.contains(digest))
    }

    // -----------------------------------------------------------------------------------------
    // What processes read

    /// What process `pid` saw of `repo`, forgetting it: the names it read, or none when it
    /// found the repository (or a directory above it) missing.
    pub fn seen_by(&mut self, pid: u32, repo: &str) -> Option<BTreeSet<Reference>> {
        if let Some(names) = self.repos.get_mut(repo).and_then(|r| r.seen.remove(&pid)) {
            self.seen -= 1;
            return Some(names);
        }
        let mut prefix = repo;
        while let Some((up, _)) = prefix.rsplit_once('/') {
            if self
                .repos
                .get(up)
                .is_some_and(|r| r.seen.contains_key(&pid))
            {
                return Some(BTreeSet::new());
            }
            prefix = up;
        }
        None
    }

    pub fn remember_read(&mut self, pid: u32, repo: &str, names: BTreeSet<Reference>) {
        if self.seen >= MAX_SEEN {
            for r in self.repos.values_mut() {
                r.seen.clear();
            }
            self.repos.retain(|_, r| !r.is_idle());
            self.seen = 0;
        }
        if self.repo_mut(repo).seen.insert(pid, names).is_none() {
            self.seen += 1;
        }
    }

    // -----------------------------------------------------------------------------------------
    // Scratch entries

    /// Enters a scratch entry as `name` in `parent`: its id, and the entry it replaced, for the
    /// caller to drop with this state let go (an upload's drop removes its ingest from disk).
    #[must_use]
    pub fn add(&mut self, parent: u64, name: &str, kind: ScratchKind) -> (u64, Option<Scratch>) {
        self.next += 1;
        let id = self.next;
        let replaced = self
            .link(parent, name, id)
            .and_then(|old| self.scratch.remove(&old));
        self.scratch.insert(
            id,
            Scratch {
                parent,
                name: name.to_owned(),
                kind,
            },
        );
        (id, replaced)
    }

    /// Enters `id` as `name` in `parent`, returning what was there.
    fn link(&mut self, parent: u64, name: &str, id: u64) -> Option<u64> {
        self.names
            .entry(parent)
            .or_default()
            .insert(name.to_owned(), id)
    }

    /// Removes `name` from `parent`, returning what was there.
    fn unlink_name(&mut self, parent: u64, name: &str) -> Option<u64> {
        let dir = self.names.get_mut(&parent)?;
        let id = dir.remove(name);
        if dir.is_empty() {
            self.names.remove(&parent);
        }
        id
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
        self.names.get(&parent)?.get(name).copied()
    }

    /// Removes scratch entry `id`, returning it for the caller to drop with this state let go.
    #[must_use]
    pub fn remove(&mut self, id: u64) -> Option<Scratch> {
        let s = self.scratch.remove(&id)?;
        self.unlink_name(s.parent, &s.name);
        Some(s)
    }

    /// The scratch entries of directory `parent`, by name.
    pub fn children(&self, parent: u64) -> Vec<(String, u64)> {
        self.names.get(&parent).map_or_else(Vec::new, |d| {
            d.iter().map(|(n, id)| (n.clone(), *id)).collect()
        })
    }

    /// Whether directory `parent` has scratch entries.
    pub fn has_children(&self, parent: u64) -> bool {
        self.names.contains_key(&parent)
    }

    /// Moves scratch entry `id` to `name` in `parent`, returning the entry it replaced for the
    /// caller to drop with this state let go.
    #[must_use]
    pub fn move_to(&mut self, id: u64, parent: u64, name: &str) -> Option<Scratch> {
        let replaced = self
            .unlink_name(parent, name)
            .filter(|old| *old != id)
            .and_then(|old| self.scratch.remove(&old));
        let Some((old_parent, old_name)) = self.scratch.get_mut(&id).map(|s| {
            (
                std::mem::replace(&mut s.parent, parent),
                std::mem::replace(&mut s.name, name.to_owned()),
            )
        }) else {
            return replaced;
        };
        self.unlink_name(old_parent, &old_name);
        self.link(parent, name, id);
        replaced
    }

    /// The upload of scratch file `id`, if it is one being written.
    pub fn upload_of(&self, id: u64) -> Option<Shared> {
        match self.scratch.get(&id).map(|s| &s.kind) {
            Some(ScratchKind::File(shared)) => Some(shared.clone()),
            _ => None,
        }
    }

    /// Every upload of a scratch file (to drop them at unmount).
    pub fn uploads(&self) -> Vec<Shared> {
        self.scratch
            .keys()
            .filter_map(|id| self.upload_of(*id))
            .collect()
    }
}

impl super::view::Additions for Mutex<WriteState> {
    fn additions(&self) -> Extra {
        self.lock().extra()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_moves_a_repository_and_those_below_it_only() {
        let mut w = WriteState::default();
        for r in ["a", "a/b", "a/b/c", "a-x", "a.y", "ab", "b"] {
            w.repo_mut(r).path = true;
        }
        let ids: Vec<u64> = ["a", "a/b", "a/b/c"]
            .iter()
            .map(|r| w.repo(r).unwrap().id)
            .collect();
        w.rename_repo("a", "z/q").unwrap();
        let names: Vec<&String> = w.repos.keys().collect();
        assert_eq!(names, ["a-x", "a.y", "ab", "b", "z/q", "z/q/b", "z/q/b/c"]);
        let moved: Vec<u64> = ["z/q", "z/q/b", "z/q/b/c"]
            .iter()
            .map(|r| w.repo(r).unwrap().id)
            .collect();
        assert_eq!(moved, ids);
    }

    #[test]
    fn the_layout_rule_by_viewer() {
        let maker = || 7;
        let other = || 8;
        let rules = [
            (LayoutRule::Written(true), [true, true, true, true]),
            (LayoutRule::Written(false), [false, false, false, false]),
            (LayoutRule::Shown, [true, true, true, true]),
            (LayoutRule::ShownExceptMaker(7), [true, false, false, true]),
        ];
        for (rule, want) in rules {
            let got = [
                rule.shows(Viewer::Reader),
                rule.shows(Viewer::Maker),
                rule.shows(Viewer::Process(&maker)),
                rule.shows(Viewer::Process(&other)),
            ];
            assert_eq!(got, want, "{rule:?}");
        }
    }
}
