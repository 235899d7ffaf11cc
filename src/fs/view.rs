//! What the mount shows, computed from the image records and the store: a snapshot of the
//! directory tree (which repository paths exist, and how many images each has: one grouped
//! query over the records' repository index, no descriptor parsed) rebuilt when the records
//! change, and, per
//! repository, its layout view (`index.json` bytes and the blobs reachable from its images, with
//! their sizes), computed lazily the first time the repository is looked at and kept while its
//! images stay the same, in a cache bounded by `MAX_VIEWS` and `MAX_VIEW_WEIGHT` (least
//! recently used first out). A view reads its repository's records when it is computed; every
//! view is dropped when the records change (the tree does not hold the images to tell which
//! repositories changed), and computed again when its repository is next looked at. Startup
//! reads the summary only; no image record or manifest is read until its repository is.
//!
//! Changes made by other processes are noticed through SQLite's `data_version`, checked at most
//! every `REFRESH_INTERVAL`, so an image imported, tagged or removed elsewhere shows within it.
//!
//! A repository exists while it has images or is kept (`Catalog::repositories`: made with
//! mkdir in the mount, or by an `index.json` written there, and kept with no image until
//! removed). What the mount's writes add to the records (pending images, directories made with
//! mkdir that only lead to repositories made in them) is read from the write side's state
//! (`Additions`) whenever the tree is rebuilt. A change the mount makes itself (mkdir, rmdir)
//! patches the tree in place (`Views::patch`), so that each costs the same however many
//! repositories there are.
//!
//! Lock order: `State` is locked alone, or before the additions' lock (see `fs::state`);
//! repository views are computed outside it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::content::Image;
use crate::content::Provider;
use crate::content::{summarize, Content, Summary};
use crate::digest::{Algorithm, Digest};
use crate::error::Result;
use crate::layout::{self, Entry};
use crate::oci::{Descriptor, OnMissing};

use super::error::{FsError, FsResult};

/// At most this many repository views are kept (the least recently used go first): each holds
/// its images, `index.json` and blob list, and a walk of every repository (`ls -lR`) would
/// otherwise keep them all. A view dropped is computed again when its repository is next
/// looked at (the kernel keeps what it looked up: that is rare).
pub const MAX_VIEWS: usize = 512;
/// And at most this many images and blobs in all the views kept (the last one used is always
/// kept, however big).
pub const MAX_VIEW_WEIGHT: usize = 1 << 18;

/// How often the records are checked for changes made by other processes.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// Names a repository directory holds besides its sub-repositories; a sub-repository with one
/// of these names is shadowed by the layout file.
pub const LAYOUT_NAMES: [&str; 3] = ["blobs", "index.json", "oci-layout"];

/// One directory of the tree: the root, a repository, or a path leading to repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirInfo {
    /// Sub-directory names (the next component of longer repository names).
    pub children: BTreeSet<String>,
    /// Whether this path is itself a repository (and so holds a layout): it has images
    /// (pending ones too) or is kept.
    pub repository: bool,
    /// Whether the records keep it as a repository with or without images.
    pub kept: bool,
    /// Made with mkdir in this mount as a directory leading to repositories (no repository
    /// itself): it stays while empty, until rmdir.
    pub made: bool,
    /// The latest update of any image at or below this path.
    pub updated: SystemTime,
}

impl Default for DirInfo {
    fn default() -> Self {
        DirInfo {
            children: BTreeSet::new(),
            repository: false,
            kept: false,
            made: false,
            updated: UNIX_EPOCH,
        }
    }
}

/// The tree as the records give it at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    dirs: HashMap<String, DirInfo>,
    /// What each repository has of images (not the images themselves: a view reads them).
    repos: HashMap<String, RepoImages>,
}

/// What the tree knows of a repository's images: how many are registered (their records are
/// read when its view is computed), and the mount's pending ones.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepoImages {
    pub registered: usize,
    pub pending: Vec<Entry>,
}

impl RepoImages {
    pub fn is_empty(&self) -> bool {
        self.registered == 0 && self.pending.is_empty()
    }
}

/// What the mount itself adds to the records: directories made with mkdir that only lead to
/// repositories made in them (no repository themselves), and images written into the mount
/// that wait for blobs.
#[derive(Debug, Default, Clone)]
pub struct Extra {
    pub paths: BTreeSet<String>,
    pub pending: BTreeMap<String, Vec<Entry>>,
}

/// Where the views read what the mount adds to the records (the write side's state).
pub trait Additions: Send + Sync {
    fn additions(&self) -> Extra;
}

impl Snapshot {
    pub fn build(images: Vec<Image>) -> Snapshot {
        Self::build_with(summarize(&images), &[], &Extra::default(), None)
    }

    /// The tree of the repositories with images (`summaries`: name, how many, latest update in
    /// milliseconds), the repositories `kept` and what the mount adds (`extra`). A kept
    /// repository or a directory made with mkdir has no time in the records: it keeps the one
    /// it had in `before` (the tree this one replaces), else it is new now.
    pub fn build_with(
        summaries: Vec<Summary>,
        kept: &[String],
        extra: &Extra,
        before: Option<&Snapshot>,
    ) -> Snapshot {
        let mut s = Snapshot::default();
        s.dirs.insert(String::new(), DirInfo::default());
        let now = SystemTime::now();
        let since = |path: &str| {
            before
                .and_then(|b| b.dirs.get(path))
                .filter(|d| d.kept || d.made)
                .map_or(now, |d| d.updated)
        };
        for Summary {
            repository: repo,
            images,
            updated,
        } in summaries
        {
            let updated = UNIX_EPOCH + Duration::from_millis(updated.max(0) as u64);
            s.add_dir(&repo, true, updated);
            s.repos.entry(repo).or_default().registered = images;
        }
        for e in extra.pending.values().flatten() {
            let repo = e.name.repository().to_owned();
            s.add_dir(&repo, true, now);
            s.repos.entry(repo).or_default().pending.push(e.clone());
        }
        for repo in kept {
            s.add_kept(repo, since(repo));
        }
        for path in &extra.paths {
            s.add_path(path, since(path));
        }
        s
    }

    /// Adds directory `path`, made with mkdir to lead to repositories (see `DirInfo::made`).
    pub fn add_path(&mut self, path: &str, updated: SystemTime) {
        self.add_dir(path, false, updated);
        if let Some(d) = self.dirs.get_mut(path) {
            d.made = true;
        }
    }

    /// Removes directory `path` made with mkdir, if nothing is below it (rmdir).
    pub fn remove_path(&mut self, path: &str) {
        if let Some(d) = self.dirs.get_mut(path) {
            d.made = false;
        }
        self.remove_if_empty(path);
    }

    /// Adds directory `path` (a repository when `repository`), and its name in each directory
    /// above it, each updated at `updated` at least.
    fn add_dir(&mut self, path: &str, repository: bool, updated: SystemTime) {
        let mut path = path.to_owned();
        let mut child: Option<String> = None;
        loop {
            let dir = self.dirs.entry(path.clone()).or_default();
            dir.updated = dir.updated.max(updated);
            match child.take() {
                Some(c) => {
                    dir.children.insert(c);
                }
                None if repository => {
                    dir.repository = true;
                    self.repos.entry(path.clone()).or_default();
                }
                None => {}
            }
            if path.is_empty() {
                break;
            }
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
            child = Some(name.to_owned());
            path = parent.to_owned();
        }
    }

    /// Adds the kept repository `repo`, with no image of its own needed.
    pub fn add_kept(&mut self, repo: &str, updated: SystemTime) {
        self.add_dir(repo, true, updated);
        if let Some(d) = self.dirs.get_mut(repo) {
            d.kept = true;
        }
    }

    /// Makes `repo` no longer kept: it stays while it has images or directories below it (a
    /// path leading to them), and each directory above it left with nothing below goes.
    pub fn remove_kept(&mut self, repo: &str) {
        let Some(dir) = self.dirs.get_mut(repo) else {
            return;
        };
        dir.kept = false;
        if self.repos.get(repo).is_some_and(|e| !e.is_empty()) {
            return;
        }
        dir.repository = false;
        self.repos.remove(repo);
        self.remove_if_empty(repo);
    }

    /// Removes directory `path` if nothing is below it and it is no repository, then each
    /// directory above it left so.
    fn remove_if_empty(&mut self, path: &str) {
        let mut path = path.to_owned();
        while !path.is_empty() {
            let empty = self
                .dirs
                .get(&path)
                .is_some_and(|d| d.children.is_empty() && !d.repository && !d.made);
            if !empty {
                return;
            }
            self.dirs.remove(&path);
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
            if let Some(dir) = self.dirs.get_mut(parent) {
                dir.children.remove(name);
            }
            path = parent.to_owned();
        }
    }

    pub fn dir(&self, path: &str) -> Option<&DirInfo> {
        self.dirs.get(path)
    }

    /// What `repo` has of images, if it is a repository.
    pub fn images(&self, repo: &str) -> Option<&RepoImages> {
        self.repos.get(repo)
    }
}

/// What a repository view keeps of a blob: its size (all that lookup, stat and listing need).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobSize {
    pub size: u64,
}

/// One repository as a layout.
#[derive(Debug)]
pub struct RepoView {
    /// The images: the records of the repository, then its pending images.
    pub entries: Arc<[Entry]>,
    pub index: Arc<[u8]>,
    /// The blobs reachable from the entries that are in the store, with their sizes.
    pub blobs: Arc<BTreeMap<Digest, BlobSize>>,
}

impl RepoView {
    pub fn build(store: &dyn Provider, entries: Arc<[Entry]>) -> Result<RepoView> {
        let blobs = layout::blobs(store, &entries, OnMissing::Skip)?
            .into_iter()
            .map(|(d, desc): (Digest, Descriptor)| (d, BlobSize { size: desc.size }))
            .collect();
        let index = Arc::from(layout::index_json(&entries));
        Ok(RepoView {
            entries,
            index,
            blobs: Arc::new(blobs),
        })
    }

    /// What the view weighs in the cache (`MAX_VIEW_WEIGHT`).
    fn weight(&self) -> usize {
        self.entries.len() + self.blobs.len()
    }

    /// The algorithm directories under `blobs/`: sha256 always (as every layout has it), and
    /// any other algorithm some blob uses.
    pub fn algorithms(&self) -> BTreeSet<Algorithm> {
        let mut algs: BTreeSet<Algorithm> = self.blobs.keys().map(Digest::algorithm).collect();
        algs.insert(Algorithm::Sha256);
        algs
    }
}

struct State {
    snapshot: Arc<Snapshot>,
    /// `data_version` when the snapshot was built; None forces a rebuild.
    version: Option<i64>,
    checked: Option<Instant>,
    repos: HashMap<String, Cached>,
    /// Counts uses of views, for the least recently used to go first.
    tick: u64,
    /// The weight of the views kept (`RepoView::weight`).
    weight: usize,
    /// Counts the times every view was dropped (the records changed): a view computed from
    /// records read before is not kept.
    generation: u64,
}

struct Cached {
    view: Arc<RepoView>,
    used: u64,
}

impl State {
    /// Keeps `view` of `repo`, dropping the least recently used views past the bounds.
    fn keep(&mut self, repo: &str, view: Arc<RepoView>) {
        self.tick += 1;
        self.weight += view.weight();
        let cached = Cached {
            view,
            used: self.tick,
        };
        if let Some(old) = self.repos.insert(repo.to_owned(), cached) {
            self.weight -= old.view.weight();
        }
        if self.repos.len() <= MAX_VIEWS && self.weight <= MAX_VIEW_WEIGHT {
            return;
        }
        // A quarter of the bound goes at once, so that each eviction's sort is paid rarely.
        let mut by_use: Vec<(u64, String)> = self
            .repos
            .iter()
            .map(|(name, c)| (c.used, name.clone()))
            .collect();
        by_use.sort_unstable();
        let keep_views = MAX_VIEWS - MAX_VIEWS / 4;
        let keep_weight = MAX_VIEW_WEIGHT - MAX_VIEW_WEIGHT / 4;
        for (used, name) in by_use {
            if used == self.tick || (self.repos.len() <= keep_views && self.weight <= keep_weight) {
                break;
            }
            if let Some(gone) = self.repos.remove(&name) {
                self.weight -= gone.view.weight();
            }
        }
    }

    /// Drops every view (the records changed: any repository's images may have).
    fn drop_views(&mut self) {
        self.repos.clear();
        self.weight = 0;
        self.generation += 1;
    }
}

/// The live view of one store.
pub struct Views {
    content: Arc<dyn Content>,
    state: Mutex<State>,
    additions: Arc<dyn Additions>,
    /// Repository views computed so far (each reads that repository's manifests).
    built: AtomicUsize,
}

impl Views {
    pub fn new(content: Arc<dyn Content>, additions: Arc<dyn Additions>) -> Views {
        Views {
            content,
            state: Mutex::new(State {
                snapshot: Arc::new(Snapshot::default()),
                version: None,
                checked: None,
                repos: HashMap::new(),
                tick: 0,
                weight: 0,
                generation: 0,
            }),
            built: AtomicUsize::new(0),
            additions,
        }
    }

    /// The store the views show.
    pub fn content(&self) -> &dyn Content {
        &*self.content
    }

    /// The current tree, rebuilt first if the records changed since it was built.
    pub fn snapshot(&self) -> FsResult<Arc<Snapshot>> {
        let mut st = self.state.lock();
        if st.checked.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL) {
            return Ok(st.snapshot.clone());
        }
        let records = self.content.catalog();
        let version = records.version()?;
        st.checked = Some(Instant::now());
        if st.version != Some(version) {
            let extra = self.additions.additions();
            let snapshot = Snapshot::build_with(
                records.summaries()?,
                &records.repositories()?,
                &extra,
                Some(&st.snapshot),
            );
            // Views are computed again as their repositories are looked at (the snapshot no
            // longer holds the images to tell which changed).
            st.drop_views();
            st.snapshot = Arc::new(snapshot);
            st.version = Some(version);
            tracing::debug!(version, "records changed; tree rebuilt");
        }
        Ok(st.snapshot.clone())
    }

    /// Patches the tree in place after a change of the records this mount made itself (and
    /// of its additions, made first), which took the records' version from `before` to `after`:
    /// a rebuild reads every record, which made each mkdir cost as much as all before. When
    /// another change came between (the version moved more), the next look rebuilds instead.
    pub fn patch(&self, before: i64, after: i64, f: impl FnOnce(&mut Snapshot)) {
        let mut st = self.state.lock();
        if st.version == Some(before) && after == before.wrapping_add(1) {
            f(Arc::make_mut(&mut st.snapshot));
            st.version = Some(after);
        } else {
            st.version = None;
            st.checked = None;
        }
    }

    /// Patches the tree in place after a change of the mount's additions alone.
    pub fn patch_additions(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut st = self.state.lock();
        // With no version, the next look rebuilds the tree from the records and additions.
        if st.version.is_some() {
            f(Arc::make_mut(&mut st.snapshot));
        }
    }

    /// Drops the cached view of `repo`, whose blobs changed without its images changing.
    pub fn forget_repo(&self, repo: &str) {
        let mut st = self.state.lock();
        if let Some(gone) = st.repos.remove(repo) {
            st.weight -= gone.view.weight();
        }
        // A view being computed meanwhile may have read the blobs before the change.
        st.generation += 1;
    }

    /// Forgets what was read, so that the next call reads the records again (after this
    /// process changed them itself, which `data_version` does not report).
    pub fn invalidate(&self) {
        let mut st = self.state.lock();
        st.version = None;
        st.checked = None;
    }

    /// How many repository views were computed (each reads that repository's manifests).
    pub fn built(&self) -> usize {
        self.built.load(Ordering::Relaxed)
    }

    /// How many repository views are kept now (at most `MAX_VIEWS`).
    pub fn kept(&self) -> usize {
        self.state.lock().repos.len()
    }

    /// The layout view of `repo`, or None if no image has that repository.
    pub fn repo(&self, repo: &str) -> FsResult<Option<Arc<RepoView>>> {
        let snapshot = self.snapshot()?;
        let Some(images) = snapshot.images(repo) else {
            return Ok(None);
        };
        let generation = {
            let mut st = self.state.lock();
            st.tick += 1;
            let tick = st.tick;
            if let Some(c) = st.repos.get_mut(repo) {
                c.used = tick;
                return Ok(Some(c.view.clone()));
            }
            st.generation
        };
        let repository = |source| FsError::Repository {
            repository: repo.to_owned(),
            source,
        };
        let mut entries: Vec<Entry> = if images.registered > 0 {
            let records = self.content.catalog().of_repository(repo);
            records
                .map_err(repository)?
                .into_iter()
                .map(Entry::from)
                .collect()
        } else {
            Vec::new()
        };
        entries.extend(images.pending.iter().cloned());
        let view = RepoView::build(&*self.content, Arc::from(entries)).map_err(|source| {
            FsError::Repository {
                repository: repo.to_owned(),
                source,
            }
        })?;
        self.built.fetch_add(1, Ordering::Relaxed);
        let view = Arc::new(view);
        let mut st = self.state.lock();
        if st.generation == generation {
            st.keep(repo, view.clone());
        }
        Ok(Some(view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::tests::desc;
    use crate::oci::MEDIA_OCI_MANIFEST;

    fn image(name: &str, updated: i64) -> Image {
        Image {
            name: name.parse().unwrap(),
            target: desc(
                MEDIA_OCI_MANIFEST,
                Digest::of(Algorithm::Sha256, name.as_bytes()),
                1,
            ),
            created: updated,
            updated,
        }
    }

    #[test]
    fn snapshot_nests_repositories_by_path() {
        let s = Snapshot::build(vec![
            image("busybox:latest", 5),
            image("busybox:1.36", 7),
            image("docker.io/library/alpine:3", 9),
            image("docker.io/library/alpine/sub:1", 3),
        ]);
        let root = s.dir("").unwrap();
        assert!(!root.repository);
        assert_eq!(
            root.children.iter().collect::<Vec<_>>(),
            ["busybox", "docker.io"]
        );
        assert_eq!(root.updated, UNIX_EPOCH + Duration::from_millis(9));
        let bb = s.dir("busybox").unwrap();
        assert!(bb.repository && bb.children.is_empty());
        assert_eq!(bb.updated, UNIX_EPOCH + Duration::from_millis(7));
        assert!(!s.dir("docker.io").unwrap().repository);
        let alpine = s.dir("docker.io/library/alpine").unwrap();
        assert!(alpine.repository);
        assert_eq!(alpine.children.iter().collect::<Vec<_>>(), ["sub"]);
        assert!(s.dir("docker.io/library/alpine/sub").unwrap().repository);
        assert!(s.dir("docker.io/library/alpin").is_none());
        assert_eq!(s.images("busybox").unwrap().registered, 2);
        assert!(s.images("docker.io").is_none());
    }
}
