//! A docker archive (`docker save`, skopeo's and podman's `docker-archive:`) unpacked into a
//! repository directory with `tar -x`: its `manifest.json`, once closed there (or renamed
//! there), registers its images, as `index.json` does for a layout. What the archive means is
//! `crate::docker`'s; what is the mount's own here:
//!
//! - The files it names are the scratch files of the repository directory's tree (uploads,
//!   hashed while written; or files that became blobs under `blobs/<alg>/`), reached through
//!   the links written there (`fs::links`), one hop. A layer's digest is its upload's; a plain
//!   tar's diff_id is that digest, a gzip or zstd one is read back from its upload.
//! - Each image's OCI manifest is made by `docker::synthesize`; the files it uses and the
//!   manifest are committed as blobs through the upload's own ingest writer (the path every
//!   upload commits through), held by the mount's lease until the records hold them; the
//!   images are registered in one change: each `RepoTags` name as written, an image with none
//!   as `REPO@<digest>` in the repository directory's own name. The archive's files stay as
//!   the scratch they are (temporary files, gone at unmount), as a layout's do.
//! - A path it names that is not written yet (manifest.json first, or a link GNU tar makes only
//!   at the end, an empty placeholder file until then) makes it wait: it is tried again when a
//!   file of that repository is closed or renamed, or a link is made there.
//! - A bad archive (its shape, a link, a wrong diff_id, a count) fails the close that applied it
//!   (EIO, the message naming `<repo>/manifest.json` and the reason); nothing is registered.
//! - A repository into which `index.json` was written is a layout: its `manifest.json` (docker
//!   25's, beside `index.json`) stays a temporary file. `repositories`, `VERSION` and `json`
//!   always do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::content::Change;
use crate::digest::{Algorithm, Digest};
use crate::docker::{self, Compression, Item, Layer, Links, MANIFEST_FILE, MAX_MANIFEST_SIZE};
use crate::error::Error;
use crate::oci::{self, Descriptor};
use crate::reference::Reference;

use super::error::{FsError, FsResult};
use super::images::{missing_blobs, writer_holder};
use super::inode::Node;
use super::state::{LayoutRule, ScratchKind, Shared};
use super::upload::Upload;

/// A file `manifest.json` names, as the repository directory's tree holds it.
#[derive(Clone)]
enum Found {
    /// A scratch file being written (its scratch id, its upload).
    Upload(u64, Shared),
    /// A blob in the store (a file that became one, or one under `blobs/<alg>/`).
    Blob(Digest, u64),
}

/// The repository directory's tree: files by path below it, and its links.
struct Tree {
    files: BTreeMap<String, Found>,
    links: Links,
}

/// An image of the archive, made: its names (none: untagged) and manifest.
struct Made {
    tags: Vec<Reference>,
    manifest: Vec<u8>,
    desc: Descriptor,
}

/// The configs and layers the items of one `manifest.json` use, by resolved path, each read
/// once however many items name it.
#[derive(Default)]
struct Known {
    configs: HashMap<String, Arc<docker::ImageConfig>>,
    layers: HashMap<String, Layer>,
}

/// What trying a `manifest.json` came to.
enum Tried {
    Applied,
    /// Paths it names are not written yet (all of them, resolved).
    Waits(BTreeSet<String>),
}

impl super::Fs {
    /// The `manifest.json` files that wait for a file they name (`<repo>/manifest.json`).
    pub fn waiting_archives(&self) -> Vec<String> {
        let w = self.write.lock();
        w.waiting_archives()
            .into_iter()
            .filter(|r| {
                let dir = self.inodes.get(&Node::Dir(Arc::from(r.as_str())));
                dir.and_then(|d| w.lookup(d, MANIFEST_FILE)).is_some()
            })
            .map(|r| format!("{r}/{MANIFEST_FILE}"))
            .collect()
    }

    /// `name` was written into directory `dir` by process `pid` (a file closed, renamed or
    /// linked): a `manifest.json` of its repository that waits is tried again once every path
    /// it found missing has been written (so a manifest waiting for one file is not read again
    /// at every close).
    pub(super) fn written_in(&self, dir: u64, name: &str, pid: u32) -> FsResult<()> {
        let (repo, path) = match self.inodes.node(dir) {
            Some(Node::Blobs(r)) => (r, format!("blobs/{name}")),
            Some(Node::AlgDir(r, alg)) => (r, format!("blobs/{}/{name}", alg.name())),
            _ => match self.dir_in_repo(dir) {
                Some((r, mut within)) => {
                    within.push(name.to_owned());
                    (r, within.join("/"))
                }
                None => return Ok(()),
            },
        };
        let repo_ino = self.inodes.ino(&Node::Dir(repo.clone()));
        let waiting = {
            let mut w = self.write.lock();
            if !w.repo(&repo).is_some_and(|r| r.manifest_waits) {
                return Ok(());
            }
            let missing = &mut w.repo_mut(&repo).manifest_missing;
            // The path written, and what is below it (a directory renamed into place).
            let below = format!("{path}/");
            missing.retain(|m| m != &path && !m.starts_with(&below));
            if !missing.is_empty() {
                return Ok(());
            }
            let shared = w
                .lookup(repo_ino, MANIFEST_FILE)
                .and_then(|id| w.upload_of(id));
            if shared.is_none() {
                // Unlinked or renamed away meanwhile: nothing waits any more.
                w.repo_mut(&repo).manifest_waits = false;
            }
            shared
        };
        match waiting {
            Some(shared) => self.manifest_json_closed(repo_ino, &shared, pid),
            None => Ok(()),
        }
    }

    /// Scratch file `id` (`shared`) was closed or renamed into place by `pid`: a repository
    /// directory's `manifest.json` is applied; any other wakes one that waits.
    pub(super) fn scratch_written(&self, id: u64, shared: &Shared, pid: u32) -> FsResult<()> {
        let (parent, name) = {
            let w = self.write.lock();
            match w.scratch.get(&id) {
                Some(s) => (s.parent, s.name.clone()),
                None => return Ok(()),
            }
        };
        let in_repo_dir = matches!(self.inodes.node(parent), Some(Node::Dir(r)) if !r.is_empty());
        if name == MANIFEST_FILE && in_repo_dir {
            self.manifest_json_closed(parent, shared, pid)
        } else {
            self.written_in(parent, &name, pid)
        }
    }

    /// Applies `manifest.json` (`shared`) of repository directory `repo_ino`, or has it wait.
    fn manifest_json_closed(&self, repo_ino: u64, shared: &Shared, pid: u32) -> FsResult<()> {
        let Some(Node::Dir(repo)) = self.inodes.node(repo_ino) else {
            return Ok(());
        };
        {
            let mut w = self.write.lock();
            if w.layout_rule(&repo, "index.json") == LayoutRule::Written(true) {
                // A layout: index.json names its images, and nothing waits here.
                if let Some(r) = w.repo_mut_if(&repo) {
                    r.manifest_waits = false;
                }
                return Ok(());
            }
        }
        let Some(bytes) = read_manifest(&repo, shared)? else {
            return Ok(()); // written empty first (a shell's redirection): acted on when written
        };
        let tried = self.try_manifest(repo_ino, &repo, &bytes, pid);
        let waited = {
            let mut w = self.write.lock();
            if let Ok(Tried::Waits(missing)) = &tried {
                // Kept for a repository made outside the mount too (`repo_mut` makes it).
                let r = w.repo_mut(&repo);
                r.manifest_missing = missing.clone();
                std::mem::replace(&mut r.manifest_waits, true)
            } else {
                w.repo_mut_if(&repo)
                    .is_some_and(|r| std::mem::replace(&mut r.manifest_waits, false))
            }
        };
        match tried? {
            // Said once; each later try that still waits only to the debug log.
            Tried::Waits(paths) if !waited => {
                let path = paths.first().cloned().unwrap_or_default();
                tracing::info!(
                    "{repo}/{MANIFEST_FILE} waits for {path:?} ({} missing)",
                    paths.len()
                )
            }
            Tried::Waits(paths) => {
                let path = paths.first().cloned().unwrap_or_default();
                tracing::debug!("{repo}/{MANIFEST_FILE} still waits for {path:?}")
            }
            Tried::Applied => shared.lock().dirty = false,
        }
        Ok(())
    }

    /// Reads the tree, makes every image, commits what they use and registers them.
    fn try_manifest(&self, repo_ino: u64, repo: &str, bytes: &[u8], pid: u32) -> FsResult<Tried> {
        let bad = |m: String| bad(repo, m);
        let items = docker::parse_manifest(bytes).map_err(bad)?;
        let tree = self.tree_of(repo_ino, repo).map_err(bad)?;
        let mut found = HashMap::new();
        let mut missing = BTreeSet::new();
        for item in &items {
            for path in std::iter::once(&item.config).chain(&item.layers) {
                let resolved = tree.links.resolve(path).map_err(bad)?;
                match self.find(&tree, resolved)? {
                    Some(f) => {
                        found.insert(path.clone(), (resolved.to_owned(), f));
                    }
                    None => {
                        missing.insert(resolved.to_owned());
                    }
                }
            }
        }
        if !missing.is_empty() {
            return Ok(Tried::Waits(missing));
        }
        let mut known = Known::default();
        let mut made = Vec::new();
        for (n, item) in items.iter().enumerate() {
            made.push(self.make(repo, n + 1, item, &found, &mut known)?);
        }
        self.commit_found(repo_ino, found.values().map(|(_, f)| f), pid)?;
        self.commit_manifests(repo_ino, &made, pid)?;
        self.register_made(repo_ino, &made, pid)?;
        Ok(Tried::Applied)
    }

    /// The files and links of repository directory `repo_ino`'s tree of scratch entries, and
    /// of its `blobs/<alg>/`.
    fn tree_of(&self, repo_ino: u64, repo: &str) -> Result<Tree, String> {
        let mut files = BTreeMap::new();
        let mut links = Vec::new();
        let repo: Arc<str> = Arc::from(repo);
        let mut dirs = vec![(repo_ino, String::new())];
        for alg in Algorithm::ALL {
            if let Some(ino) = self.inodes.get(&Node::AlgDir(repo.clone(), alg)) {
                dirs.push((ino, format!("blobs/{}/", alg.name())));
            }
        }
        let w = self.write.lock();
        while let Some((dir, prefix)) = dirs.pop() {
            for (name, id) in w.children(dir) {
                let path = format!("{prefix}{name}");
                match w.scratch.get(&id).map(|s| &s.kind) {
                    Some(ScratchKind::Dir) => {
                        dirs.push((self.inodes.ino(&Node::Scratch(id)), format!("{path}/")))
                    }
                    Some(ScratchKind::File(s)) => {
                        files.insert(path, Found::Upload(id, s.clone()));
                    }
                    Some(ScratchKind::Committed(d, size)) => {
                        files.insert(path, Found::Blob(d.clone(), *size));
                    }
                    Some(ScratchKind::Link(target)) => links.push((path, target.clone())),
                    None => {}
                }
            }
        }
        drop(w);
        let mut l = Links::new();
        for (path, target) in links {
            l.add(&path, &target)?;
        }
        Ok(Tree { files, links: l })
    }

    /// The file at `path` (resolved), if it is written: a scratch file that is not empty (GNU
    /// tar leaves an empty placeholder where it makes a link at the end), or a blob under
    /// `blobs/<alg>/` that the store holds.
    fn find(&self, tree: &Tree, path: &str) -> FsResult<Option<Found>> {
        match tree.files.get(path) {
            Some(Found::Upload(_, s)) if s.is_empty() => Ok(None),
            Some(f) => Ok(Some(f.clone())),
            None => {
                let Some((alg, hex)) = path.strip_prefix("blobs/").and_then(|p| p.split_once('/'))
                else {
                    return Ok(None);
                };
                let Ok(digest) = Digest::from_parts(alg, hex) else {
                    return Ok(None);
                };
                let size = self.content().blob_size(&digest)?;
                Ok(size.map(|size| Found::Blob(digest, size)))
            }
        }
    }

    /// Makes manifest.json's item number `n`: its config read and checked, its layers'
    /// digests and diff_ids (each config and layer read once, by resolved path: `known`), its
    /// manifest.
    fn make(
        &self,
        repo: &str,
        n: usize,
        item: &Item,
        found: &HashMap<String, (String, Found)>,
        known: &mut Known,
    ) -> FsResult<Made> {
        let bad = |m: String| bad(repo, m);
        let (resolved, config_file) = &found[&item.config];
        let config = match known.configs.get(resolved) {
            Some(c) => c.clone(),
            None => {
                let bytes = self.read_config(repo, &item.config, config_file)?;
                let digest = Digest::of(Algorithm::Sha256, &bytes);
                let parsed = docker::ImageConfig::parse(&item.config, &digest, &bytes);
                let parsed = Arc::new(parsed.map_err(bad)?);
                known.configs.insert(resolved.clone(), parsed.clone());
                parsed
            }
        };
        docker::check_config_name(&item.config, &config.digest).map_err(bad)?;
        let mut item_layers = Vec::with_capacity(item.layers.len());
        for path in &item.layers {
            let (resolved, file) = &found[path];
            if !known.layers.contains_key(resolved) {
                let layer = self.layer_of(repo, path, file)?;
                known.layers.insert(resolved.clone(), layer);
            }
            item_layers.push(known.layers[resolved].clone());
        }
        let (manifest, desc) = docker::synthesize(n, item, &config, &item_layers).map_err(bad)?;
        Ok(Made {
            tags: item.repo_tags.clone(),
            manifest,
            desc,
        })
    }

    /// The bytes of config `path` (at most `oci::MAX_JSON_SIZE`).
    fn read_config(&self, repo: &str, path: &str, file: &Found) -> FsResult<Vec<u8>> {
        let what = format!("{repo}/{path}");
        match file {
            Found::Upload(_, shared) => {
                let mut w = shared.lock();
                let u = w.upload.as_mut().ok_or_else(|| gone(repo, path))?;
                Ok(u.read_small(&what, oci::MAX_JSON_SIZE)?)
            }
            Found::Blob(digest, size) => {
                if *size > oci::MAX_JSON_SIZE {
                    return Err(Error::TooLarge {
                        file: what,
                        size: *size,
                        cap: oci::MAX_JSON_SIZE,
                    }
                    .into());
                }
                let desc = Descriptor::new(oci::MEDIA_OCI_CONFIG, digest.clone(), *size);
                Ok(self.content().read_small(&desc)?)
            }
        }
    }

    /// Layer file `path`: its digest and size as written, its compression, its diff_id (its
    /// digest for a plain tar; a compressed one read back).
    fn layer_of(&self, repo: &str, path: &str, file: &Found) -> FsResult<Layer> {
        let failed = |m: String| bad(repo, format!("layer {path:?}: {m}"));
        let mut head = Vec::new();
        match file {
            Found::Upload(_, shared) => {
                let mut w = shared.lock();
                let u = w.upload.as_mut().ok_or_else(|| gone(repo, path))?;
                u.read_at(0, Compression::SNIFF_LEN as u32, &mut head)?;
                let digest = u.digest(Algorithm::Sha256)?;
                let compression = Compression::sniff(&head);
                let diff_id =
                    docker::layer_diff_id(&mut u.reader(), compression, &digest).map_err(failed)?;
                Ok(Layer {
                    digest,
                    size: u.len(),
                    compression,
                    diff_id,
                })
            }
            Found::Blob(digest, size) => {
                let desc = Descriptor::new(oci::MEDIA_OCI_LAYER, digest.clone(), *size);
                let mut file = crate::content::Provider::open(self.content(), &desc)?;
                let mut reader = std::io::Read::take(&mut file, Compression::SNIFF_LEN as u64);
                std::io::Read::read_to_end(&mut reader, &mut head)
                    .map_err(|e| failed(e.to_string()))?;
                let compression = Compression::sniff(&head);
                // The bytes already read, then the rest of the same file.
                let mut whole = std::io::Read::chain(&head[..], &mut file);
                let diff_id =
                    docker::layer_diff_id(&mut whole, compression, digest).map_err(failed)?;
                Ok(Layer {
                    digest: digest.clone(),
                    size: *size,
                    compression,
                    diff_id,
                })
            }
        }
    }
}

/// The bytes of `manifest.json` (None: empty, as a shell's redirection first leaves it).
fn read_manifest(repo: &str, shared: &Shared) -> FsResult<Option<Vec<u8>>> {
    let mut w = shared.lock();
    let Some(u) = w.upload.as_mut().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let what = format!("{repo}/{MANIFEST_FILE}");
    Ok(Some(u.read_small(&what, MAX_MANIFEST_SIZE)?))
}

/// An error of the archive in `repo`: EIO, naming its `manifest.json`.
fn bad(repo: &str, message: String) -> FsError {
    FsError::Store(Error::archive(format!("{repo}/{MANIFEST_FILE}"), message))
}

/// A file whose upload went meanwhile (committed or rewritten): tried again at its close.
fn gone(repo: &str, path: &str) -> FsError {
    bad(repo, format!("{path:?} changed while it was read"))
}

impl super::Fs {
    /// Commits every file used (each scratch upload once) as the blob it hashes to, held for
    /// the writer `pid` until the images are registered.
    fn commit_found<'a>(
        &self,
        repo_ino: u64,
        files: impl Iterator<Item = &'a Found>,
        pid: u32,
    ) -> FsResult<()> {
        let holder = {
            let mut w = self.write.lock();
            writer_holder(self.repo_id_at(&mut w, repo_ino), pid)
        };
        let mut done = std::collections::BTreeSet::new();
        for f in files {
            match f {
                Found::Blob(digest, _) => self.hold(&holder, digest)?,
                Found::Upload(id, shared) => {
                    if !done.insert(*id) {
                        continue;
                    }
                    let Some(mut upload) = shared.lock().upload.take() else {
                        continue;
                    };
                    let digest = upload.digest(Algorithm::Sha256)?;
                    let size = upload.len();
                    self.hold(&holder, &digest)?;
                    upload.commit(&digest, Some(size))?;
                    if let Some(s) = self.write.lock().scratch.get_mut(id) {
                        s.kind = ScratchKind::Committed(digest, size);
                    }
                }
            }
        }
        Ok(())
    }

    /// Commits each made manifest as a blob, through an upload (the one ingest writer).
    fn commit_manifests(&self, repo_ino: u64, made: &[Made], pid: u32) -> FsResult<()> {
        let holder = {
            let mut w = self.write.lock();
            writer_holder(self.repo_id_at(&mut w, repo_ino), pid)
        };
        for m in made {
            let mut upload = Upload::new(self.content(), Algorithm::Sha256)?;
            upload.write_at(0, &m.manifest)?;
            self.hold(&holder, &m.desc.digest)?;
            upload.commit(&m.desc.digest, Some(m.desc.size))?;
        }
        Ok(())
    }

    /// Registers the made images in one change, under the serialising lock (the repository
    /// named again from its inode: a rename meanwhile is followed).
    fn register_made(&self, repo_ino: u64, made: &[Made], pid: u32) -> FsResult<()> {
        let _serial = self.write_lock.lock();
        let Node::Dir(repo) = self.node(repo_ino)? else {
            return Err(FsError::NotFound);
        };
        let mut put: Vec<(Reference, Descriptor)> = Vec::new();
        for m in made {
            let missing = missing_blobs(self.content(), &m.desc)?;
            if let Some(d) = missing.first() {
                return Err(bad(
                    &repo,
                    format!("blob {} went before it was registered", d.digest),
                ));
            }
            let names = if m.tags.is_empty() {
                vec![Reference::digested(&repo, m.desc.digest.clone()).map_err(Error::from)?]
            } else {
                m.tags.clone()
            };
            for name in names {
                if !put.iter().any(|(n, _)| *n == name) {
                    put.push((name, m.desc.clone()));
                }
            }
        }
        self.content().catalog().apply(&Change {
            put: &put,
            keep: &[repo.to_string()],
            ..Change::default()
        })?;
        for (name, desc) in &put {
            tracing::info!(
                "{name} registered from {repo}/{MANIFEST_FILE} ({})",
                desc.digest
            );
        }
        let id = self.write.lock().repo_id(&repo);
        self.views.invalidate();
        self.views.forget_repo(&repo);
        for (name, _) in &put {
            self.views.forget_repo(name.repository());
        }
        self.unhold([writer_holder(Some(id), pid), writer_holder(None, pid)])?;
        Ok(())
    }
}
