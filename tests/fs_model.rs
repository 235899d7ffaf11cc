//! A model-based test of the mount's write side, driving the filesystem core with no kernel:
//! random sequences of mkdir, writes of layout names and temporary names, renames into place,
//! unlinks, rmdir and `rm -r` in a few repositories, each checked against a small model of
//! what must hold (README: "The mount" and "Copying a layout in imports it").
//!
//! After every step: what readdir lists is what lookup finds (for a reader, the repository's
//! maker and another process), each listing is the one the model gives, the registered and
//! pending images are the model's, every registered image's closure is in the store, the store
//! holds exactly the blobs committed, and every `index.json` lists what was written.
//!
//! Replay a failure with `LAYOUTFS_TEST_SEED=<seed> cargo test --test fs_model`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;

use common::core::{Backend, Harness};

/// The core over any store: the model runs against the local store and content in memory.
type H = Harness<dyn Backend>;
use common::gen::{LayoutBuilder, SplitMix};
use layoutfs::fs::{DirEntry, FsError, Kind};
use layoutfs::oci::{self, Descriptor, ImageIndex};

/// The process that makes every repository (as `cp -r` / `mkdir -p` would).
const MAKER: u32 = 10;
/// Another writer (tar, skopeo): sees a pending repository's layout names.
const OTHER: u32 = 20;
/// Reads `index.json` in the checks; never writes (so no writer ever read an index).
const READER: u32 = 30;
/// Repositories written into; `n` is made by `mkdir -p n/b` and is a repository itself.
const REPOS: [&str; 4] = ["a", "d", "n/b", "n/c"];
/// Directories removed (rmdir, rm -r): the repositories, `n`, and `m` (where `mv n m` puts
/// `n/b` and `n/c`).
const REMOVABLE: [&str; 6] = ["a", "d", "n/b", "n/c", "n", "m"];
/// Where repositories are moved to (`mv`): any existing repository is moved to one of these
/// that does not exist, its parent missing or not.
const DESTS: [&str; 7] = ["a", "d", "n/b", "n/c", "n/d", "m", "m/b"];
/// The name of the file kept open across steps: in the repository's directory, or as `.open`
/// at a blob's own name in `blobs/sha256` (cp writes there).
const OPEN_TMP: &str = ".tmp-open";
const LAYOUT_NAMES: [&str; 3] = ["index.json", "oci-layout", "blobs"];
const TMP_ROOT: [&str; 2] = [".tmp-0", ".tmp-1"];
/// Temporary names in `blobs/sha256` for blob `<hex>`: go-containerregistry's `<hex><random>`,
/// a `.part`, and rsync's `.<hex>.XXXXXX`.
const TMP_ALG_FORMS: [(&str, &str); 3] = [("", "1234"), ("", ".part"), (".", ".Xa3bQz")];
/// Operations per run, and runs (each on a fresh store, seeds seed, seed+1, ...).
const STEPS: usize = 500;
const RUNS: u64 = 3;
/// Bytes per write call.
const CHUNK: usize = 1024;
/// Concurrent runs (each in repositories of its own), their rounds, and the steps each takes
/// per round before all stop for a check.
const THREADS: usize = 3;
const ROUNDS: usize = 10;
const ROUND_STEPS: usize = 40;
/// How long a concurrent run may take before it is taken for a deadlock.
const CONCURRENT_BOUND: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Viewer {
    Reader,
    Pid(u32),
}

const VIEWERS: [Viewer; 3] = [Viewer::Reader, Viewer::Pid(MAKER), Viewer::Pid(OTHER)];

// ---------------------------------------------------------------------------------------------
// Prepared images

struct Img {
    tag: String,
    desc: Descriptor,
    manifest: String,
    /// Manifest, config, layers (hex).
    blobs: Vec<String>,
}

struct Fixture {
    images: Vec<Img>,
    bytes: BTreeMap<String, Vec<u8>>,
}

impl Fixture {
    /// Four small images; images 0 and 2 share a layer.
    fn new(h: &H) -> Fixture {
        let dir = h.tmp.path().join("src");
        let b = LayoutBuilder::new(&dir);
        let shared = b.add_random_layer(700, 1);
        let layer = |seed: u64| b.add_random_layer(200 + seed * 37, seed);
        let sets = [
            vec![layer(10), shared.clone()],
            vec![layer(11)],
            vec![shared.clone(), layer(12)],
            vec![layer(13), layer(14)],
        ];
        let mut images = Vec::new();
        for (i, layers) in sets.iter().enumerate() {
            let m = b.add_manifest(layers, ["amd64", "arm64", "s390x", "ppc64le"][i]);
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(b.blob_path(&m)).unwrap()).unwrap();
            let config = v["config"]["digest"].as_str().unwrap()["sha256:".len()..].to_owned();
            let mut desc = m.clone();
            desc.platform = None;
            desc.annotations
                .insert(oci::ANNOTATION_REF_NAME.into(), format!("t{i}"));
            let mut blobs = vec![m.digest.hex().to_owned(), config];
            blobs.extend(layers.iter().map(|l| l.digest.hex().to_owned()));
            images.push(Img {
                tag: format!("t{i}"),
                desc,
                manifest: m.digest.hex().to_owned(),
                blobs,
            });
        }
        let bytes = std::fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| !e.file_name().to_str().unwrap().starts_with('.'))
            .map(|e| {
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        Fixture { images, bytes }
    }

    fn index(&self, images: &[usize]) -> Vec<u8> {
        ImageIndex::new(
            images
                .iter()
                .map(|i| self.images[*i].desc.clone())
                .collect(),
        )
        .to_bytes()
    }

    fn hexes(&self) -> Vec<String> {
        self.bytes.keys().cloned().collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The model

/// What a temporary file holds.
#[derive(Clone, Debug)]
enum Content {
    /// An `index.json` listing these images.
    Index(Vec<usize>),
    /// The bytes of blob `hex`, right or wrong.
    Blob { hex: String, good: bool },
    /// A file open and half written (`Open` in the run): not renamed or rewritten meanwhile.
    Open,
}

#[derive(Default, Clone, Debug)]
struct RepoM {
    /// Layout names written (true) or unlinked (false) in this mount; absent: shown to all
    /// but the maker (every repository here is made by MAKER).
    written: BTreeMap<&'static str, bool>,
    /// `blobs/sha256` made (true) or removed (false); absent: shown to all but the maker.
    alg: Option<bool>,
    /// A directory that only leads to repositories (`mkdir -p n/b` made `n` and nothing was
    /// written in `n`): no layout names, until one is written.
    path: bool,
    /// Made, and nothing done in it since (a `mkdir` below it then makes it a path).
    fresh: bool,
    /// What the last `index.json` written lists: tag -> image.
    desired: BTreeMap<String, usize>,
    /// Temporary files in the repository's directory.
    tmps: BTreeMap<String, Content>,
    /// Files in `blobs/sha256`: committed blobs (None) and temporary files.
    alg_files: BTreeMap<String, Option<Content>>,
}

struct Model<'a> {
    fx: &'a Fixture,
    repos: BTreeMap<String, RepoM>,
    /// Blobs in the store (nothing leaves it: there is no gc here).
    store: BTreeSet<String>,
}

impl Model<'_> {
    fn shown(&self, repo: &str, name: &'static str, v: Viewer) -> bool {
        let Some(r) = self.repos.get(repo) else {
            return false;
        };
        if r.path {
            return false;
        }
        match r.written.get(name) {
            Some(shown) => *shown,
            // Every repository here was made with mkdir by MAKER: an empty repository's
            // layout shows to every other process.
            None => v != Viewer::Pid(MAKER),
        }
    }

    /// Whether `repo/blobs` lists `sha256` to `v`.
    fn alg_shown(&self, repo: &str, v: Viewer) -> bool {
        match self.repos[repo].alg {
            Some(made) => made,
            None => v != Viewer::Pid(MAKER),
        }
    }

    /// Whether `rmdir` of repository `dir` succeeds: nothing written in it and no image, no
    /// directory below it (its implicit layout goes with it).
    fn rmdir_ok(&self, dir: &str) -> bool {
        let r = &self.repos[dir];
        r.tmps.is_empty()
            && r.alg_files.is_empty()
            && r.desired.is_empty()
            && self.children(dir).is_empty()
            && !r.written.values().any(|w| *w)
            && r.alg != Some(true)
    }

    /// Something was done in `repo` (it is no longer fresh); writing a layout name makes a
    /// path a repository again.
    fn touch(&mut self, repo: &str, layout_written: bool) {
        if let Some(r) = self.repos.get_mut(repo) {
            r.fresh = false;
            if layout_written {
                r.path = false;
            }
        }
    }

    fn complete(&self, img: usize) -> bool {
        self.fx.images[img]
            .blobs
            .iter()
            .all(|b| self.store.contains(b))
    }

    /// (name, manifest hex) of the registered images, and the pending names.
    fn images(&self) -> (Vec<(String, String)>, Vec<String>) {
        let mut reg = Vec::new();
        let mut pending = Vec::new();
        for (repo, r) in &self.repos {
            for (tag, i) in &r.desired {
                let name = format!("{repo}:{tag}");
                if self.complete(*i) {
                    reg.push((name, self.fx.images[*i].manifest.clone()));
                } else {
                    pending.push(name);
                }
            }
        }
        reg.sort();
        pending.sort();
        (reg, pending)
    }

    /// The blobs of image `img` the store has and the mount knows of: its manifest, and its
    /// config and layers once the manifest is in the store.
    fn known(&self, img: usize, hex: &str) -> bool {
        let i = &self.fx.images[img];
        hex == i.manifest || (self.store.contains(&i.manifest) && i.blobs.iter().any(|b| b == hex))
    }

    /// Whether an image of `repo` (registered or pending) needs blob `hex`: EBUSY to unlink.
    fn needed(&self, repo: &str, hex: &str) -> bool {
        self.store.contains(hex)
            && self
                .repos
                .get(repo)
                .is_some_and(|r| r.desired.values().any(|i| self.known(*i, hex)))
    }

    /// Whether a pending image waits for `hex` with a known size (a write past it is EFBIG).
    fn wanted(&self, hex: &str) -> bool {
        !self.store.contains(hex)
            && self.repos.values().any(|r| {
                r.desired
                    .values()
                    .any(|i| !self.complete(*i) && self.known(*i, hex))
            })
    }

    /// Sub-repository names directly below `path`.
    fn children(&self, path: &str) -> Vec<String> {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        self.repos
            .keys()
            .filter_map(|r| r.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .map(str::to_owned)
            .collect()
    }

    /// Whether directory `path` exists for `v`.
    fn dir_exists(&self, path: &str, v: Viewer) -> bool {
        if path.is_empty() {
            return true;
        }
        if let Some(repo) = path.strip_suffix("/blobs/sha256") {
            return self.shown(repo, "blobs", v) && self.alg_shown(repo, v);
        }
        if let Some(repo) = path.strip_suffix("/blobs") {
            return self.shown(repo, "blobs", v);
        }
        self.repos.contains_key(path)
    }

    /// What directory `path` lists to `v`, in order.
    fn listing(&self, path: &str, v: Viewer) -> Vec<String> {
        if let Some(repo) = path.strip_suffix("/blobs/sha256") {
            return self.repos[repo].alg_files.keys().cloned().collect();
        }
        if let Some(repo) = path.strip_suffix("/blobs") {
            return if self.alg_shown(repo, v) {
                vec!["sha256".into()]
            } else {
                vec![]
            };
        }
        let mut out: Vec<String> = Vec::new();
        if !path.is_empty() {
            for n in LAYOUT_NAMES {
                if self.shown(path, n, v) {
                    out.push(n.into());
                }
            }
        }
        out.extend(self.children(path));
        if let Some(r) = self.repos.get(path) {
            out.extend(r.tmps.keys().cloned());
        }
        out
    }

    fn remove_tree(&mut self, repo: &str) {
        let prefix = format!("{repo}/");
        self.repos
            .retain(|r, _| r != repo && !r.starts_with(&prefix));
    }
}

// ---------------------------------------------------------------------------------------------
// Driving the core

fn lookup_v(h: &H, parent: u64, name: &str, v: Viewer) -> Result<layoutfs::fs::Attr, FsError> {
    match v {
        Viewer::Reader => h.fs.lookup(parent, OsStr::new(name)),
        Viewer::Pid(pid) => h.fs.lookup_as(parent, OsStr::new(name), &|| pid),
    }
}

fn walk_v(h: &H, path: &str, v: Viewer) -> Result<u64, FsError> {
    let mut ino = layoutfs::fs::root_ino();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        ino = lookup_v(h, ino, c, v)?.ino;
    }
    Ok(ino)
}

fn list_v(h: &H, ino: u64, v: Viewer) -> Result<Vec<DirEntry>, FsError> {
    let fh = match v {
        Viewer::Reader => h.fs.opendir(ino)?,
        Viewer::Pid(pid) => h.fs.opendir_as(ino, &|| pid)?,
    };
    let entries = h.fs.readdir(fh, 0);
    h.fs.releasedir(fh);
    Ok(entries?
        .into_iter()
        .filter(|e| e.name != "." && e.name != "..")
        .collect())
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// Writes `bytes` at `path` as process `pid` does with cp: lookup, open with O_TRUNC or
/// create, writes, close; the first error, and the handle is always released.
fn put(h: &H, path: &str, bytes: &[u8], pid: u32) -> Result<(), FsError> {
    let (parent, name) = split(path);
    let p = walk_v(h, parent, Viewer::Pid(pid))?;
    let fh = match lookup_v(h, p, name, Viewer::Pid(pid)) {
        Ok(a) => h.fs.open(a.ino, libc::O_WRONLY | libc::O_TRUNC, pid)?.fh,
        Err(_) => h.fs.create(p, name)?.1.fh,
    };
    let mut result = Ok(());
    for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
        if let Err(e) = h.fs.write(fh, (i * CHUNK) as u64, chunk) {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        result = h.fs.flush(fh, pid);
    }
    h.fs.release(fh);
    result
}

/// `rm -r` as process `v`: each entry in readdir's order, depth first, then the directory.
/// `after` is called after each unlink and rmdir (to check the tree while it is removed).
fn rm_r(h: &H, parent: u64, name: &str, v: Viewer, after: &dyn Fn()) -> Result<(), FsError> {
    let ino = lookup_v(h, parent, name, v)?.ino;
    for e in list_v(h, ino, v)? {
        match e.kind {
            Kind::Dir => rm_r(h, ino, &e.name, v, after)?,
            Kind::File | Kind::Symlink => h.fs.unlink(ino, &e.name)?,
        }
        after();
    }
    h.fs.rmdir(parent, name)
}

fn code<T>(r: Result<T, FsError>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno(),
    }
}

fn errname(c: i32) -> &'static str {
    match c {
        0 => "ok",
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::EIO => "EIO",
        libc::EBUSY => "EBUSY",
        libc::EFBIG => "EFBIG",
        libc::EINVAL => "EINVAL",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EISDIR => "EISDIR",
        libc::ENOTDIR => "ENOTDIR",
        libc::EPERM => "EPERM",
        _ => "other",
    }
}

// ---------------------------------------------------------------------------------------------
// The random run

/// The names a run works with, and what it may do: alone, or beside other runs in other
/// repositories (concurrent), where nothing it expects may depend on what they do.
struct Names {
    repos: Vec<String>,
    removable: Vec<String>,
    dests: Vec<String>,
    /// No unlink of a blob (EBUSY depends on whether another run committed a manifest) and no
    /// over-long blob (EFBIG depends on what another run's pending images want).
    concurrent: bool,
}

impl Names {
    fn single() -> Names {
        let own = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        Names {
            repos: own(&REPOS),
            removable: own(&REMOVABLE),
            dests: own(&DESTS),
            concurrent: false,
        }
    }

    /// The names of concurrent run `i`: `pI` and `pI/b`, moved to `qI` and back.
    fn of_thread(i: usize) -> Names {
        let (p, q) = (format!("p{i}"), format!("q{i}"));
        let sub = |r: &str| format!("{r}/b");
        Names {
            repos: vec![p.clone(), sub(&p)],
            removable: vec![p.clone(), sub(&p), q.clone(), sub(&q)],
            dests: vec![p.clone(), sub(&p), q.clone(), sub(&q)],
            concurrent: true,
        }
    }
}

struct Run<'a> {
    h: &'a H,
    fx: &'a Fixture,
    names: &'a Names,
    /// Files other runs hold open (when this run checks for all of them).
    others_open: usize,
    m: Model<'a>,
    rng: SplitMix,
    log: Vec<String>,
    /// A file open across steps, written half before and half after whatever comes between
    /// (renames of its repository among them).
    open: Option<Open>,
    /// Files finished after their repository was renamed, and of those, blobs committed.
    finished_moved: usize,
    committed_moved: usize,
}

/// A file created and half written, to be finished by a later step.
struct Open {
    /// Its repository now (following renames), and whether it is in `blobs/sha256`.
    repo: String,
    in_alg: bool,
    name: String,
    fh: u64,
    pid: u32,
    bytes: Vec<u8>,
    hex: String,
    good: bool,
    /// Unlinked, or replaced by a rename onto its name: its close then does nothing.
    detached: bool,
    /// Its repository was renamed since it was opened.
    moved: bool,
}

impl Run<'_> {
    fn below(&mut self, n: usize) -> usize {
        (self.rng.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.rng.next() % 100 < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    fn writer(&mut self) -> u32 {
        if self.chance(70) {
            MAKER
        } else {
            OTHER
        }
    }

    fn fail(&self, what: String) -> ! {
        let tail: Vec<&String> = self.log.iter().rev().take(40).rev().collect();
        panic!(
            "{what}\nafter {} steps; the last:\n  {}",
            self.log.len(),
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }

    fn expect(&self, got: i32, want: i32) {
        if got != want {
            self.fail(format!(
                "{}: got {}, the model says {}",
                self.log.last().unwrap(),
                errname(got),
                errname(want)
            ));
        }
    }

    /// Bytes for blob `hex`: right, or wrong in one of three ways (flipped, short, long).
    fn blob_bytes(&mut self, hex: &str, good: bool) -> (Vec<u8>, &'static str) {
        let mut b = self.fx.bytes[hex].clone();
        if good {
            return (b, "good");
        }
        let ways = if self.names.concurrent { 2 } else { 3 };
        match self.below(ways) {
            0 => {
                let i = self.below(b.len());
                b[i] ^= 1;
                (b, "flipped")
            }
            1 => {
                b.pop();
                (b, "short")
            }
            _ => {
                b.push(0);
                (b, "long")
            }
        }
    }

    /// A blob for `repo`: mostly one of the images its index names.
    fn some_blob(&mut self, repo: &str) -> String {
        let named: Vec<usize> = self
            .m
            .repos
            .get(repo)
            .map_or_else(Vec::new, |r| r.desired.values().copied().collect());
        if !named.is_empty() && self.chance(75) {
            let i = self.pick(&named);
            let blobs = self.fx.images[i].blobs.clone();
            self.pick(&blobs)
        } else {
            let all = self.fx.hexes();
            self.pick(&all)
        }
    }

    fn step(&mut self) {
        let repo = self.pick(&self.names.repos);
        let pid = self.writer();
        match self.below(122) {
            0..=5 => self.mkdir(&repo),
            6..=11 => self.mkdir_blobs(&repo, pid),
            12..=15 => self.put_layout_file(&repo, pid),
            16..=23 => {
                let images = self.some_images();
                self.log
                    .push(format!("put {repo}/index.json {images:?} as {pid}"));
                let got = code(put(
                    self.h,
                    &format!("{repo}/index.json"),
                    &self.fx.index(&images),
                    pid,
                ));
                let exists = self.m.repos.contains_key(&repo);
                self.expect(got, if exists { 0 } else { libc::ENOENT });
                if exists {
                    self.set_index(&repo, &images);
                }
            }
            24..=45 => self.put_blob(&repo, pid),
            46..=50 => self.put_tmp_root(&repo, pid),
            51..=55 => self.put_tmp_alg(&repo, pid),
            56 => {
                let hex = self.some_blob(&repo);
                let path = format!("{repo}/blobs/sha256/x{hex}");
                self.log.push(format!("put {path} as {pid}"));
                let got = code(put(self.h, &path, b"x", pid));
                // Neither a digest's name nor a temporary one (README: "a name in blobs/<alg>/
                // that is neither a digest nor temporary is EINVAL").
                let exists = self
                    .m
                    .dir_exists(&format!("{repo}/blobs/sha256"), Viewer::Pid(pid));
                self.expect(got, if exists { libc::EINVAL } else { libc::ENOENT });
            }
            57..=66 => self.rename_tmp(&repo, pid),
            67..=70 => self.unlink_layout(&repo),
            71..=78 if self.names.concurrent => self.put_blob(&repo, pid),
            71..=78 => self.unlink_alg(&repo),
            79..=80 => self.unlink_tmp(&repo),
            81..=84 => self.rmdir_alg(&repo),
            85..=88 => self.rmdir_blobs(&repo),
            89..=94 => {
                let dir = self.pick(&self.names.removable);
                self.rmdir_repo(&dir)
            }
            95..=99 => {
                let dir = self.pick(&self.names.removable);
                self.rm_r(&dir)
            }
            100..=109 => self.mv_repo(pid),
            110..=117 => self.open_begin(pid),
            _ => self.open_end(),
        }
    }

    fn put_layout_file(&mut self, repo: &str, pid: u32) {
        self.log.push(format!("put {repo}/oci-layout as {pid}"));
        let path = format!("{repo}/oci-layout");
        let got = code(put(self.h, &path, &oci::layout_file_bytes(), pid));
        let exists = self.m.repos.contains_key(repo);
        self.expect(got, if exists { 0 } else { libc::ENOENT });
        self.m.touch(repo, true);
        if let Some(r) = self.m.repos.get_mut(repo) {
            r.written.insert("oci-layout", true);
        }
    }

    /// Unlinks the first temporary file in `repo`'s directory.
    fn unlink_tmp(&mut self, repo: &str) {
        let Some(name) = self
            .m
            .repos
            .get(repo)
            .and_then(|r| r.tmps.keys().next().cloned())
        else {
            return self.step();
        };
        self.log.push(format!("unlink {repo}/{name}"));
        let parent = walk_v(self.h, repo, Viewer::Reader).unwrap();
        self.expect(code(self.h.fs.unlink(parent, &name)), 0);
        self.m.repos.get_mut(repo).unwrap().tmps.remove(&name);
        self.detach(repo, false, &name);
    }

    /// `rm -r dir`, run as a process other than the repository's maker. Run by the maker, it
    /// does not see a blobs/ shown only to others, and its last rmdir is ENOTEMPTY
    /// (rmdir_of_a_repository_that_lists_files_is_enotempty). Not driven here.
    fn rm_r(&mut self, dir: &str) {
        let v = Viewer::Pid(OTHER);
        self.log.push(format!("rm -r {dir} as {v:?}"));
        let (parent, name) = split(dir);
        let got = match walk_v(self.h, parent, v) {
            Ok(p) => code(rm_r(self.h, p, name, v, &|| {
                // Half removed: what readdir lists, lookup finds, and the other way round
                // (alone: beside other runs, their trees change meanwhile).
                if !self.names.concurrent {
                    for v in VIEWERS {
                        self.check_dir_agrees("", v);
                    }
                }
            })),
            Err(e) => e.errno(),
        };
        let exists = self.m.repos.contains_key(dir);
        self.expect(got, if exists { 0 } else { libc::ENOENT });
        self.m.remove_tree(dir);
        if let Some(o) = self.open.as_mut() {
            o.detached |= o.repo == dir || o.repo.starts_with(&format!("{dir}/"));
        }
    }

    /// 0 to 3 distinct images, in random order.
    fn some_images(&mut self) -> Vec<usize> {
        let n = self.below(4);
        let mut all: Vec<usize> = (0..self.fx.images.len()).collect();
        let mut out = Vec::new();
        for _ in 0..n {
            let i = self.below(all.len());
            out.push(all.remove(i));
        }
        out
    }

    fn set_index(&mut self, repo: &str, images: &[usize]) {
        let tags: BTreeMap<String, usize> = images
            .iter()
            .map(|i| (self.fx.images[*i].tag.clone(), *i))
            .collect();
        self.m.touch(repo, true);
        let r = self.m.repos.get_mut(repo).unwrap();
        r.written.insert("index.json", true);
        r.desired = tags;
    }

    fn mkdir(&mut self, repo: &str) {
        self.log.push(format!("mkdir -p {repo} as {MAKER}"));
        let (parent, name) = split(repo);
        let fresh = RepoM {
            fresh: true,
            ..RepoM::default()
        };
        if !parent.is_empty() && !self.m.repos.contains_key(parent) {
            let root = layoutfs::fs::root_ino();
            self.expect(code(self.h.fs.mkdir_as(root, parent, MAKER)), 0);
            self.m.repos.insert(parent.to_owned(), fresh.clone());
        }
        let p = walk_v(self.h, parent, Viewer::Pid(MAKER)).unwrap();
        let got = code(self.h.fs.mkdir_as(p, name, MAKER));
        let exists = self.m.repos.contains_key(repo);
        self.expect(got, if exists { libc::EEXIST } else { 0 });
        if exists {
            return;
        }
        // Its maker makes a directory in a repository it just made: that one only leads here.
        let leads_only = !parent.is_empty() && {
            let r = &self.m.repos[parent];
            !r.path && r.fresh && r.desired.is_empty() && self.m.children(parent).is_empty()
        };
        if leads_only {
            let r = self.m.repos.get_mut(parent).unwrap();
            r.path = true;
            r.fresh = false;
        }
        self.m.repos.insert(repo.to_owned(), fresh);
    }

    /// `mkdir -p repo/blobs/sha256` as `pid`.
    fn mkdir_blobs(&mut self, repo: &str, pid: u32) {
        self.log
            .push(format!("mkdir -p {repo}/blobs/sha256 as {pid}"));
        let v = Viewer::Pid(pid);
        let Ok(r) = walk_v(self.h, repo, v) else {
            self.expect(
                libc::ENOENT,
                if self.m.repos.contains_key(repo) {
                    0
                } else {
                    libc::ENOENT
                },
            );
            return;
        };
        self.expect(
            0,
            if self.m.repos.contains_key(repo) {
                0
            } else {
                libc::ENOENT
            },
        );
        let blobs = match lookup_v(self.h, r, "blobs", v) {
            Ok(a) => {
                self.expect(0, i32::from(!self.m.shown(repo, "blobs", v)) * libc::ENOENT);
                a.ino
            }
            Err(_) => {
                self.expect(
                    libc::ENOENT,
                    i32::from(!self.m.shown(repo, "blobs", v)) * libc::ENOENT,
                );
                let a = match self.h.fs.mkdir_as(r, "blobs", pid) {
                    Ok(a) => a,
                    Err(e) => return self.expect(e.errno(), 0),
                };
                self.m.touch(repo, true);
                self.m
                    .repos
                    .get_mut(repo)
                    .unwrap()
                    .written
                    .insert("blobs", true);
                a.ino
            }
        };
        let found = lookup_v(self.h, blobs, "sha256", v).is_ok();
        let want = self.m.alg_shown(repo, v);
        if found != want {
            self.fail(format!(
                "{repo}/blobs/sha256 found: {found}, the model says {want}"
            ));
        }
        if !found {
            self.expect(code(self.h.fs.mkdir_as(blobs, "sha256", pid)), 0);
            self.m.touch(repo, false);
            self.m.repos.get_mut(repo).unwrap().alg = Some(true);
        }
    }

    fn put_blob(&mut self, repo: &str, pid: u32) {
        let hex = self.some_blob(repo);
        if self.is_open(repo, true, &hex) {
            return self.step();
        }
        let good = self.chance(80);
        let (bytes, how) = self.blob_bytes(&hex, good);
        let path = format!("{repo}/blobs/sha256/{hex}");
        self.log.push(format!("put {path} ({how}) as {pid}"));
        let got = code(put(self.h, &path, &bytes, pid));
        if !self
            .m
            .dir_exists(&format!("{repo}/blobs/sha256"), Viewer::Pid(pid))
        {
            return self.expect(got, libc::ENOENT);
        }
        let want = match how {
            "good" => 0,
            "long" if self.m.wanted(&hex) => libc::EFBIG,
            _ => libc::EIO,
        };
        self.expect(got, want);
        self.m.touch(repo, false);
        let r = self.m.repos.get_mut(repo).unwrap();
        if good {
            r.alg_files.insert(hex.clone(), None);
            self.m.store.insert(hex);
        } else if !matches!(r.alg_files.get(&hex), Some(None)) {
            // A file at a blob's name that never became the blob goes at its last close; a
            // blob committed there stays what it is (the rewrite fails, and is dropped).
            r.alg_files.remove(&hex);
        }
    }

    fn tmp_content(&mut self, repo: &str, index_ok: bool) -> (Content, Vec<u8>) {
        if index_ok && self.chance(40) {
            let images = self.some_images();
            let bytes = self.fx.index(&images);
            (Content::Index(images), bytes)
        } else {
            let hex = self.some_blob(repo);
            let good = self.chance(80);
            let (bytes, _) = self.blob_bytes(&hex, good);
            (Content::Blob { hex, good }, bytes)
        }
    }

    fn put_tmp_root(&mut self, repo: &str, pid: u32) {
        let name = self.pick(&TMP_ROOT);
        let (content, bytes) = self.tmp_content(repo, true);
        self.log
            .push(format!("put {repo}/{name} ({content:?}) as {pid}"));
        let got = code(put(self.h, &format!("{repo}/{name}"), &bytes, pid));
        let exists = self.m.repos.contains_key(repo);
        self.expect(got, if exists { 0 } else { libc::ENOENT });
        if exists {
            self.m.touch(repo, false);
            self.m
                .repos
                .get_mut(repo)
                .unwrap()
                .tmps
                .insert(name.into(), content);
        }
    }

    fn put_tmp_alg(&mut self, repo: &str, pid: u32) {
        let (content, bytes) = self.tmp_content(repo, false);
        let Content::Blob { hex, .. } = &content else {
            unreachable!()
        };
        let (before, after) = self.pick(&TMP_ALG_FORMS);
        let name = format!("{before}{hex}{after}");
        let path = format!("{repo}/blobs/sha256/{name}");
        self.log.push(format!("put {path} ({content:?}) as {pid}"));
        let got = code(put(self.h, &path, &bytes, pid));
        if !self
            .m
            .dir_exists(&format!("{repo}/blobs/sha256"), Viewer::Pid(pid))
        {
            return self.expect(got, libc::ENOENT);
        }
        self.expect(got, 0);
        self.m.touch(repo, false);
        self.m
            .repos
            .get_mut(repo)
            .unwrap()
            .alg_files
            .insert(name, Some(content));
    }

    /// Renames a temporary file onto its final name: `index.json`, or `blobs/sha256/<hex>`.
    fn rename_tmp(&mut self, repo: &str, pid: u32) {
        let Some(r) = self.m.repos.get(repo) else {
            return self.step();
        };
        let mut temps: Vec<(bool, String, Content)> = r
            .tmps
            .iter()
            .map(|(n, c)| (true, n.clone(), c.clone()))
            .collect();
        temps.extend(
            r.alg_files
                .iter()
                .filter_map(|(n, c)| c.clone().map(|c| (false, n.clone(), c))),
        );
        temps.retain(|(_, _, c)| !matches!(c, Content::Open));
        if temps.is_empty() {
            return self.step();
        }
        let (in_root, name, content) = self.pick(&temps);
        let v = Viewer::Pid(pid);
        let from_dir = if in_root {
            repo.to_owned()
        } else {
            format!("{repo}/blobs/sha256")
        };
        let (to_dir, to_name) = match &content {
            Content::Index(_) => (repo.to_owned(), "index.json".to_owned()),
            Content::Blob { hex, .. } => (format!("{repo}/blobs/sha256"), hex.clone()),
            Content::Open => unreachable!("open files are not picked"),
        };
        self.log.push(format!(
            "rename {from_dir}/{name} ({content:?}) -> {to_dir}/{to_name} as {pid}"
        ));
        let from = walk_v(self.h, &from_dir, v);
        let to = walk_v(self.h, &to_dir, v);
        let moved = from
            .as_ref()
            .ok()
            .and_then(|f| lookup_v(self.h, *f, &name, v).ok());
        let got = match (from, to) {
            (Ok(f), Ok(t)) => code(self.h.fs.rename(f, &name, t, &to_name, false, pid)),
            (Err(e), _) | (_, Err(e)) => e.errno(),
        };
        if !self.m.dir_exists(&from_dir, v) || !self.m.dir_exists(&to_dir, v) {
            return self.expect(got, libc::ENOENT);
        }
        if let (0, Some(moved)) = (got, moved) {
            self.check_inode_followed(&name, moved.ino, &format!("{to_dir}/{to_name}"), v);
        }
        match content {
            Content::Index(images) => {
                self.expect(got, 0);
                self.m.repos.get_mut(repo).unwrap().tmps.remove(&name);
                self.set_index(repo, &images);
            }
            Content::Blob { good: false, .. } => {
                // Verified first: the file keeps its name and bytes.
                self.expect(got, libc::EIO);
            }
            Content::Blob { hex, good: true } => {
                self.expect(got, 0);
                let r = self.m.repos.get_mut(repo).unwrap();
                if in_root {
                    r.tmps.remove(&name);
                } else {
                    r.alg_files.remove(&name);
                }
                r.alg_files.insert(hex.clone(), None);
                // A file open at that name is replaced.
                self.detach(repo, true, &hex);
                self.m.store.insert(hex);
            }
            Content::Open => {}
        }
    }

    /// As on a disk, a renamed file keeps its inode under the new name `to`: the kernel asks
    /// for that inode next (a stat, an open) without a lookup.
    fn check_inode_followed(&self, name: &str, ino: u64, to: &str, v: Viewer) {
        let at = walk_v(self.h, to, v);
        let attr = self.h.fs.getattr(ino);
        if at.as_ref().ok() != Some(&ino) || attr.is_err() {
            self.fail(format!(
                "renamed {name} (inode {ino}) is {at:?} at {to}; getattr: {:?}",
                attr.map(|a| a.ino)
            ));
        }
    }

    fn unlink_layout(&mut self, repo: &str) {
        let name = self.pick(&["index.json", "oci-layout"]);
        self.log.push(format!("unlink {repo}/{name}"));
        let got = match walk_v(self.h, repo, Viewer::Reader) {
            Ok(p) => code(self.h.fs.unlink(p, name)),
            Err(e) => e.errno(),
        };
        if !self.m.shown(repo, name, Viewer::Reader) {
            return self.expect(got, libc::ENOENT);
        }
        self.expect(got, 0);
        self.m.touch(repo, false);
        if name == "index.json" {
            // What shows stays until removed itself; the images go.
            let keep: Vec<&'static str> = ["oci-layout", "blobs"]
                .into_iter()
                .filter(|n| self.m.shown(repo, n, Viewer::Reader))
                .collect();
            let alg = self.m.alg_shown(repo, Viewer::Reader);
            let r = self.m.repos.get_mut(repo).unwrap();
            for n in keep {
                r.written.insert(n, true);
            }
            if alg {
                r.alg = Some(true);
            }
            r.desired.clear();
        }
        self.m
            .repos
            .get_mut(repo)
            .unwrap()
            .written
            .insert(name, false);
    }

    fn unlink_alg(&mut self, repo: &str) {
        let listed: Vec<String> = self
            .m
            .repos
            .get(repo)
            .map_or_else(Vec::new, |r| r.alg_files.keys().cloned().collect());
        let name = if !listed.is_empty() && self.chance(80) {
            self.pick(&listed)
        } else {
            self.some_blob(repo)
        };
        self.log.push(format!("unlink {repo}/blobs/sha256/{name}"));
        let dir = format!("{repo}/blobs/sha256");
        let got = match walk_v(self.h, &dir, Viewer::Reader) {
            Ok(p) => code(self.h.fs.unlink(p, &name)),
            Err(e) => e.errno(),
        };
        if !self.m.dir_exists(&dir, Viewer::Reader) {
            return self.expect(got, libc::ENOENT);
        }
        // README: `rm` of a blob that an image of the repository needs is EBUSY.
        if self.m.needed(repo, &name) {
            return self.expect(got, libc::EBUSY);
        }
        let r = self.m.repos.get_mut(repo).unwrap();
        let want = if r.alg_files.remove(&name).is_some() {
            0
        } else {
            libc::ENOENT
        };
        self.expect(got, want);
        if want == 0 {
            self.detach(repo, true, &name);
        }
    }

    fn rmdir_alg(&mut self, repo: &str) {
        self.log.push(format!("rmdir {repo}/blobs/sha256"));
        let got = match walk_v(self.h, &format!("{repo}/blobs"), Viewer::Reader) {
            Ok(p) => code(self.h.fs.rmdir(p, "sha256")),
            Err(e) => e.errno(),
        };
        if !self
            .m
            .dir_exists(&format!("{repo}/blobs/sha256"), Viewer::Reader)
        {
            return self.expect(got, libc::ENOENT);
        }
        let r = self.m.repos.get_mut(repo).unwrap();
        if r.alg_files.is_empty() {
            r.alg = Some(false);
            r.fresh = false;
            self.expect(got, 0);
        } else {
            self.expect(got, libc::ENOTEMPTY);
        }
    }

    fn rmdir_blobs(&mut self, repo: &str) {
        self.log.push(format!("rmdir {repo}/blobs"));
        let got = match walk_v(self.h, repo, Viewer::Reader) {
            Ok(p) => code(self.h.fs.rmdir(p, "blobs")),
            Err(e) => e.errno(),
        };
        if !self.m.dir_exists(&format!("{repo}/blobs"), Viewer::Reader) {
            return self.expect(got, libc::ENOENT);
        }
        // An algorithm directory made with mkdir, or a file in one, is content; the one an
        // empty repository shows is its own.
        let r = &self.m.repos[repo];
        if r.alg == Some(true) || !r.alg_files.is_empty() {
            self.expect(got, libc::ENOTEMPTY);
        } else {
            let r = self.m.repos.get_mut(repo).unwrap();
            r.written.insert("blobs", false);
            r.alg = Some(false);
            r.fresh = false;
            self.expect(got, 0);
        }
    }

    fn rmdir_repo(&mut self, dir: &str) {
        self.log.push(format!("rmdir {dir}"));
        let (parent, name) = split(dir);
        let got = match walk_v(self.h, parent, Viewer::Reader) {
            Ok(p) => code(self.h.fs.rmdir(p, name)),
            Err(e) => e.errno(),
        };
        if !self.m.repos.contains_key(dir) {
            return self.expect(got, libc::ENOENT);
        }
        if self.m.rmdir_ok(dir) {
            self.expect(got, 0);
            self.m.remove_tree(dir);
        } else {
            self.expect(got, libc::ENOTEMPTY);
        }
    }

    // -----------------------------------------------------------------------------------------
    // The checks

    fn check(&self) {
        for v in VIEWERS {
            self.check_dir("", v);
        }
        let h = self.h;
        let (reg, pending) = self.m.images();
        let records = h.store.catalog().list().unwrap();
        let mut got: Vec<(String, String)> = records
            .iter()
            .map(|i| (i.name.to_string(), i.target.digest.hex().to_owned()))
            .collect();
        got.sort();
        if got != reg {
            self.fail(format!("registered: {got:?}\nthe model says: {reg:?}"));
        }
        let mut got_pending: Vec<String> = h.fs.pending().iter().map(|r| r.to_string()).collect();
        got_pending.sort();
        if got_pending != pending {
            self.fail(format!(
                "pending: {got_pending:?}\nthe model says: {pending:?}"
            ));
        }
        // Every registered image's closure is in the store.
        for i in &records {
            let missing = layoutfs::fs::write::missing_blobs(h.fs.content(), &i.target).unwrap();
            if !missing.is_empty() {
                self.fail(format!(
                    "{} registered with {} blob(s) missing",
                    i.name,
                    missing.len()
                ));
            }
        }
        let store = h.store.blob_hexes();
        if store != self.m.store {
            self.fail(format!(
                "store: {store:?}\nthe model says: {:?}",
                self.m.store
            ));
        }
        // index.json lists what was written, pending images included.
        for (repo, r) in &self.m.repos {
            if !self.m.shown(repo, "index.json", Viewer::Reader) {
                continue;
            }
            let bytes = h.read_as(&format!("{repo}/index.json"), READER).unwrap();
            let index: ImageIndex = serde_json::from_slice(&bytes).unwrap();
            let mut listed: Vec<(String, String)> = index
                .manifests
                .iter()
                .map(|d| {
                    (
                        d.annotations[oci::ANNOTATION_REF_NAME].clone(),
                        d.digest.hex().to_owned(),
                    )
                })
                .collect();
            listed.sort();
            let want: Vec<(String, String)> = r
                .desired
                .iter()
                .map(|(t, i)| (t.clone(), self.fx.images[*i].manifest.clone()))
                .collect();
            if listed != want {
                self.fail(format!(
                    "{repo}/index.json lists {listed:?}\nthe model says {want:?}"
                ));
            }
        }
        let open = usize::from(self.open.is_some()) + self.others_open;
        if h.fs.open_handles() != open {
            self.fail(format!("{} handles open, not {open}", h.fs.open_handles()));
        }
    }

    /// Names lookup is tried with in directory `path`, besides what it lists.
    fn candidates(&self, path: &str) -> Vec<String> {
        if path.ends_with("/blobs/sha256") {
            let mut out = self.fx.hexes();
            for hex in self.fx.hexes() {
                for (before, after) in TMP_ALG_FORMS {
                    out.push(format!("{before}{hex}{after}"));
                }
                out.push(format!("x{hex}"));
            }
            return out;
        }
        if path.ends_with("/blobs") {
            return vec!["sha256".into(), "sha512".into()];
        }
        let mut out: Vec<String> = ["a", "n", "b", "c", "x", "d", "m"]
            .map(String::from)
            .to_vec();
        for i in 0..THREADS {
            out.extend([format!("p{i}"), format!("q{i}")]);
        }
        out.extend(LAYOUT_NAMES.map(String::from));
        out.extend(TMP_ROOT.map(String::from));
        out
    }

    /// What `path` lists to `v` is what lookup finds there, and what the model says.
    fn check_dir(&self, path: &str, v: Viewer) {
        self.check_dir_as(path, v, true);
    }

    /// What `path` lists to `v` is what lookup finds there (at any moment, the model aside).
    fn check_dir_agrees(&self, path: &str, v: Viewer) {
        self.check_dir_as(path, v, false);
    }

    fn check_dir_as(&self, path: &str, v: Viewer, with_model: bool) {
        let h = self.h;
        let ino = match walk_v(h, path, v) {
            Ok(ino) => ino,
            Err(e) => self.fail(format!("{v:?}: {path:?} listed but not walked: {e}")),
        };
        let entries = list_v(h, ino, v)
            .unwrap_or_else(|e| self.fail(format!("{v:?}: readdir {path:?}: {e}")));
        let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
        if with_model && names != self.m.listing(path, v) {
            let want = self.m.listing(path, v);
            self.fail(format!(
                "{v:?}: {path:?} lists {names:?}\nthe model says {want:?}"
            ));
        }
        for e in &entries {
            match lookup_v(h, ino, &e.name, v) {
                Ok(a) if a.ino == e.ino && a.kind == e.kind => {}
                Ok(a) => self.fail(format!(
                    "{v:?}: {path}/{} listed as {:?} {}, found as {:?} {}",
                    e.name, e.kind, e.ino, a.kind, a.ino
                )),
                Err(err) => self.fail(format!(
                    "{v:?}: {path}/{} listed but lookup fails: {err}",
                    e.name
                )),
            }
        }
        for c in self.candidates(path) {
            if lookup_v(h, ino, &c, v).is_ok() && !names.contains(&c) {
                self.fail(format!(
                    "{v:?}: {path}/{c} found by lookup but not listed in {names:?}"
                ));
            }
        }
        for e in &entries {
            if e.kind == Kind::Dir {
                let child = if path.is_empty() {
                    e.name.clone()
                } else {
                    format!("{path}/{}", e.name)
                };
                self.check_dir_as(&child, v, with_model);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Renames of repositories, and a file open across steps

impl Run<'_> {
    /// Whether the open file is `name` in `repo` (in `blobs/sha256` or not).
    fn is_open(&self, repo: &str, in_alg: bool, name: &str) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| !o.detached && o.repo == repo && o.in_alg == in_alg && o.name == name)
    }

    /// The open file, if it is `name` in `repo`, is gone from its directory.
    fn detach(&mut self, repo: &str, in_alg: bool, name: &str) {
        if self.is_open(repo, in_alg, name) {
            if let Some(o) = self.open.as_mut() {
                o.detached = true;
            }
        }
    }

    /// `mv` of an existing repository to one of the run's destinations that does not exist.
    fn mv_repo(&mut self, pid: u32) {
        let sources: Vec<String> = self.m.repos.keys().cloned().collect();
        if sources.is_empty() {
            return self.step();
        }
        // Mostly the repository of the open file, or one above it, when a file is open.
        let open_in: Vec<String> = match &self.open {
            Some(o) if !o.detached => sources
                .iter()
                .filter(|r| o.repo == **r || o.repo.starts_with(&format!("{r}/")))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        let from = if !open_in.is_empty() && self.chance(70) {
            self.pick(&open_in)
        } else {
            self.pick(&sources)
        };
        let below = format!("{from}/");
        let dests: Vec<String> = self
            .names
            .dests
            .iter()
            .filter(|d| !self.m.repos.contains_key(*d) && !d.starts_with(&below))
            .cloned()
            .collect();
        if dests.is_empty() {
            return self.step();
        }
        let to = self.pick(&dests);
        self.log.push(format!("mv {from} {to} as {pid}"));
        let ((fp, fname), (tp, tname)) = (split(&from), split(&to));
        let got = match (
            walk_v(self.h, fp, Viewer::Reader),
            walk_v(self.h, tp, Viewer::Reader),
        ) {
            (Ok(f), Ok(t)) => code(self.h.fs.rename(f, fname, t, tname, false, pid)),
            (Err(e), _) | (_, Err(e)) => e.errno(),
        };
        if !tp.is_empty() && !self.m.repos.contains_key(tp) {
            return self.expect(got, libc::ENOENT);
        }
        self.expect(got, 0);
        let moved: Vec<String> = sources
            .into_iter()
            .filter(|r| *r == from || r.starts_with(&below))
            .collect();
        for old in moved {
            let new = format!("{to}{}", &old[from.len()..]);
            let state = self.m.repos.remove(&old).unwrap();
            self.m.repos.insert(new, state);
        }
        if let Some(o) = self.open.as_mut() {
            if o.repo == from || o.repo.starts_with(&below) {
                o.repo = format!("{to}{}", &o.repo[from.len()..]);
                o.moved = true;
            }
        }
    }

    /// Creates a file and writes half of it, to be finished by `open_end`: a blob at its name
    /// in `blobs/sha256` (cp), or a temporary file in the repository's directory (skopeo).
    fn open_begin(&mut self, pid: u32) {
        let repos: Vec<String> = self.m.repos.keys().cloned().collect();
        if self.open.is_some() || repos.is_empty() {
            return self.step();
        }
        let repo = &self.pick(&repos);
        let hex = self.some_blob(repo);
        let alg = format!("{repo}/blobs/sha256");
        let in_alg = self.m.dir_exists(&alg, Viewer::Pid(pid)) && self.chance(70);
        let (dir, name) = if in_alg {
            (format!("{repo}/blobs/sha256"), hex.clone())
        } else {
            (repo.to_owned(), OPEN_TMP.to_owned())
        };
        let r = &self.m.repos[repo];
        let taken = if in_alg {
            r.alg_files.contains_key(&name)
        } else {
            r.tmps.contains_key(&name)
        };
        if taken || !self.m.dir_exists(&dir, Viewer::Pid(pid)) {
            return self.step();
        }
        let good = self.chance(80);
        let mut bytes = self.fx.bytes[&hex].clone();
        if !good {
            let i = self.below(bytes.len());
            bytes[i] ^= 1;
        }
        self.log.push(format!(
            "open {dir}/{name} ({hex}, good: {good}) as {pid}, write half"
        ));
        let parent = walk_v(self.h, &dir, Viewer::Pid(pid)).unwrap();
        let fh = match self.h.fs.create(parent, &name) {
            Ok((_, opened)) => opened.fh,
            Err(e) => return self.expect(e.errno(), 0),
        };
        self.m.touch(repo, false);
        let half = bytes.len() / 2;
        self.expect(code(self.h.fs.write(fh, 0, &bytes[..half])), 0);
        let r = self.m.repos.get_mut(repo).unwrap();
        if in_alg {
            r.alg_files.insert(name.clone(), Some(Content::Open));
        } else {
            r.tmps.insert(name.clone(), Content::Open);
        }
        let (repo, detached, moved) = (repo.to_owned(), false, false);
        self.open = Some(Open {
            repo,
            in_alg,
            name,
            fh,
            pid,
            bytes,
            hex,
            good,
            detached,
            moved,
        });
    }

    /// Writes the rest of the open file and closes it, wherever its repository is now: a blob
    /// at its name is verified and committed (registering what waited for it); a temporary
    /// file stays, to be renamed into place by a later step.
    fn open_end(&mut self) {
        let Some(o) = self.open.take() else {
            return self.step();
        };
        self.log.push(format!(
            "finish {}/{}{} ({}, good: {}, detached: {}) as {}",
            o.repo,
            if o.in_alg { "blobs/sha256/" } else { "" },
            o.name,
            o.hex,
            o.good,
            o.detached,
            o.pid
        ));
        let half = o.bytes.len() / 2;
        let mut got = code(self.h.fs.write(o.fh, half as u64, &o.bytes[half..]));
        if got == 0 {
            got = code(self.h.fs.flush(o.fh, o.pid));
        }
        self.h.fs.release(o.fh);
        if o.detached {
            return self.expect(got, 0);
        }
        self.finished_moved += usize::from(o.moved);
        self.committed_moved += usize::from(o.moved && o.in_alg && o.good);
        let r = self.m.repos.get_mut(&o.repo).unwrap();
        if !o.in_alg {
            let content = Content::Blob {
                hex: o.hex,
                good: o.good,
            };
            r.tmps.insert(o.name, content);
            return self.expect(got, 0);
        }
        if o.good {
            r.alg_files.insert(o.name, None);
            self.m.store.insert(o.hex);
            self.expect(got, 0);
        } else {
            // A file at a blob's name that never became the blob goes at its last close.
            r.alg_files.remove(&o.name);
            self.expect(got, libc::EIO);
        }
    }
}

fn run(new: fn() -> H, seed: u64) {
    let h = new();
    let fx = Fixture::new(&h);
    let names = Names::single();
    let mut r = Run {
        h: &h,
        fx: &fx,
        names: &names,
        others_open: 0,
        m: Model {
            fx: &fx,
            repos: BTreeMap::new(),
            store: BTreeSet::new(),
        },
        rng: SplitMix(seed),
        log: Vec::new(),
        open: None,
        finished_moved: 0,
        committed_moved: 0,
    };
    r.check();
    for _ in 0..STEPS {
        r.step();
        r.check();
    }
    let moves = r.log.iter().filter(|l| l.starts_with("mv ")).count();
    eprintln!(
        "seed {seed}: {moves} mv, {} files finished after a mv of their repository, {} of \
         them blobs committed",
        r.finished_moved, r.committed_moved
    );
}

#[test]
fn random_writes_keep_the_mount_consistent_with_the_model() {
    let seed = common::seed();
    eprintln!("seed {seed} (replay with LAYOUTFS_TEST_SEED={seed})");
    let start = std::time::Instant::now();
    for i in 0..RUNS {
        run(H::local, seed.wrapping_add(i));
    }
    eprintln!("{RUNS} runs of {STEPS} steps in {:?}", start.elapsed());
}

/// The same model over content held in memory (tests/common/memory.rs): the mount's core
/// asks nothing of the local store that the content interfaces do not say.
#[test]
fn random_writes_over_content_in_memory_keep_the_mount_consistent_with_the_model() {
    let seed = common::seed();
    eprintln!("seed {seed} (replay with LAYOUTFS_TEST_SEED={seed})");
    for i in 0..RUNS {
        run(H::in_memory, seed.wrapping_add(i));
    }
}

/// What a concurrent run hands over at a quiescent point: its repositories, the blobs it
/// committed, and whether it holds a file open.
type Handover = (BTreeMap<String, RepoM>, BTreeSet<String>, bool);

/// Walks the whole tree as a reader, stat by stat, until `stop`: errors are allowed (the tree
/// changes under it), waiting is not. Each pass holds `gate` shared, so that a check (which
/// counts open handles) waits for the pass to end. Returns the operations made and the
/// slowest getattr.
fn stat_walk(
    h: &H,
    stop: &std::sync::atomic::AtomicBool,
    gate: &std::sync::RwLock<()>,
) -> (usize, std::time::Duration) {
    let (mut ops, mut slowest) = (0, std::time::Duration::ZERO);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let _pass = gate.read().unwrap_or_else(|e| e.into_inner());
        let mut dirs = vec![layoutfs::fs::root_ino()];
        while let Some(ino) = dirs.pop() {
            let Ok(entries) = list_v(h, ino, Viewer::Reader) else {
                continue;
            };
            for e in entries {
                let t = std::time::Instant::now();
                let attr = h.fs.getattr(e.ino);
                slowest = slowest.max(t.elapsed());
                let found = h.fs.lookup(ino, OsStr::new(&e.name));
                ops += 2;
                if e.kind == Kind::Dir && attr.is_ok() && found.is_ok() {
                    dirs.push(e.ino);
                }
            }
        }
    }
    (ops, slowest)
}

/// One concurrent run: `ROUNDS` rounds of `ROUND_STEPS` steps in its own repositories, handing
/// its model over and waiting at the barrier after each.
fn concurrent_run(
    h: &H,
    fx: &Fixture,
    i: usize,
    seed: u64,
    barrier: &std::sync::Barrier,
    out: &std::sync::Mutex<Handover>,
    failed: &std::sync::atomic::AtomicBool,
) {
    let names = Names::of_thread(i);
    let mut r = Run {
        h,
        fx,
        names: &names,
        others_open: 0,
        m: Model {
            fx,
            repos: BTreeMap::new(),
            store: BTreeSet::new(),
        },
        rng: SplitMix(seed.wrapping_add(1000 * i as u64)),
        log: Vec::new(),
        open: None,
        finished_moved: 0,
        committed_moved: 0,
    };
    for _ in 0..ROUNDS {
        // A failure is noted, not thrown: the others must not wait at the barrier for ever.
        if !failed.load(std::sync::atomic::Ordering::Relaxed) {
            let steps = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for _ in 0..ROUND_STEPS {
                    r.step();
                }
            }));
            if steps.is_err() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        *out.lock().unwrap() = (r.m.repos.clone(), r.m.store.clone(), r.open.is_some());
        barrier.wait();
        barrier.wait();
    }
    if let Some(o) = r.open.take() {
        h.fs.release(o.fh);
    }
}

/// At a quiescent point: the runs' models merged into one, checked as a single run's is.
fn check_merged(h: &H, fx: &Fixture, handed: &[std::sync::Mutex<Handover>], round: usize) {
    let names = Names::single();
    let mut merged = Run {
        h,
        fx,
        names: &names,
        others_open: 0,
        m: Model {
            fx,
            repos: BTreeMap::new(),
            store: BTreeSet::new(),
        },
        rng: SplitMix(0),
        log: vec![format!("the check after round {round}")],
        open: None,
        finished_moved: 0,
        committed_moved: 0,
    };
    for slot in handed {
        let (repos, store, open) = slot.lock().unwrap().clone();
        merged.m.repos.extend(repos);
        merged.m.store.extend(store);
        merged.others_open += usize::from(open);
    }
    merged.check();
}

/// The seeds the concurrent test runs in CI (or `LAYOUTFS_TEST_SEED`'s): fixed, so that it
/// fails when the code changes, not by the draw. Random seeds found the failures that
/// `concurrent_writers_known_failures` replays (a known gap, README "Known gaps").
const CONCURRENT_SEEDS: [u64; 2] = [1, 2];

/// Seeds with which the mount shows `blobs/sha256/` in a directory that two processes'
/// `mkdir -p`, `rmdir` and `mv` of it and its parents left a path (only leading to a
/// repository), where the model has none: `rmdir p1/blobs/sha256: got ok, the model says
/// ENOENT`. Found by random seeds on 2026-11-29, and present before issue 14 (ef4b148).
const CONCURRENT_KNOWN_FAILURES: [u64; 3] = [
    1795932132595192246,
    1795932783940239617,
    1795932895718251272,
];

#[test]
fn concurrent_writers_and_a_stat_walk_keep_the_mount_consistent() {
    let seeds = match std::env::var("LAYOUTFS_TEST_SEED") {
        Ok(_) => vec![common::seed()],
        Err(_) => CONCURRENT_SEEDS.to_vec(),
    };
    for seed in seeds {
        concurrent_writers_with(H::local, seed);
    }
}

#[test]
fn concurrent_writers_over_content_in_memory_keep_the_mount_consistent() {
    concurrent_writers_with(H::in_memory, CONCURRENT_SEEDS[0]);
}

#[test]
#[ignore = "known gap: a path directory left by two processes' mkdir -p, rmdir and mv shows blobs/ (README)"]
fn concurrent_writers_known_failures() {
    for seed in CONCURRENT_KNOWN_FAILURES {
        concurrent_writers_with(H::local, seed);
    }
}

fn concurrent_writers_with(new: fn() -> H, seed: u64) {
    // Each run writes, renames and removes in repositories of its own while a reader walks
    // the whole tree; at the end of every round all stop, and the merged models are checked.
    eprintln!("seed {seed} (replay with LAYOUTFS_TEST_SEED={seed})");
    let (done, finished) = std::sync::mpsc::channel();
    // Detached: a deadlock must fail the test, not hang it.
    std::thread::spawn(move || {
        let h = new();
        let fx = Fixture::new(&h);
        let barrier = std::sync::Barrier::new(THREADS + 1);
        let handed: Vec<std::sync::Mutex<Handover>> =
            (0..THREADS).map(|_| Default::default()).collect();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let gate = std::sync::RwLock::new(());
        let (ops, slowest) = std::thread::scope(|s| {
            let walker = s.spawn(|| stat_walk(&h, &stop, &gate));
            for (i, out) in handed.iter().enumerate() {
                let (h, fx, barrier, failed) = (&h, &fx, &barrier, &failed);
                s.spawn(move || concurrent_run(h, fx, i, seed, barrier, out, failed));
            }
            for round in 0..ROUNDS {
                barrier.wait();
                if !failed.load(std::sync::atomic::Ordering::Relaxed) {
                    let quiet = gate.write().unwrap_or_else(|e| e.into_inner());
                    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        check_merged(&h, &fx, &handed, round)
                    }));
                    drop(quiet);
                    if checked.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                barrier.wait();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            walker.join().unwrap()
        });
        // The failure itself was printed where it happened.
        assert!(!failed.into_inner(), "a concurrent run or a check failed");
        done.send((ops, slowest)).unwrap();
    });
    match finished.recv_timeout(CONCURRENT_BOUND) {
        Ok((ops, slowest)) => {
            eprintln!("the stat walk made {ops} lookups and stats; the slowest stat {slowest:?}")
        }
        Err(e) => panic!("the concurrent run failed or hung: {e}"),
    }
}

/// Repository `a` made by the maker with `blobs/sha256/` holding one blob written there;
/// returns the inode of `a` and the blob's hex.
fn repo_with_one_blob(h: &H, fx: &Fixture) -> (u64, String) {
    let hex = fx.images[1].blobs[2].clone();
    h.fs.mkdir_as(layoutfs::fs::root_ino(), "a", MAKER).unwrap();
    let a = walk_v(h, "a", Viewer::Reader).unwrap();
    let blobs = h.fs.mkdir_as(a, "blobs", MAKER).unwrap().ino;
    h.fs.mkdir_as(blobs, "sha256", MAKER).unwrap();
    put(h, &format!("a/blobs/sha256/{hex}"), &fx.bytes[&hex], MAKER).unwrap();
    (a, hex)
}

/// Makes `a/blobs/sha256` again (after an rmdir that should have failed) and lists it.
fn remake_and_list(h: &H, a: u64) -> Vec<String> {
    let blobs = match h.fs.mkdir_as(a, "blobs", MAKER) {
        Ok(attr) => attr.ino,
        Err(_) => walk_v(h, "a/blobs", Viewer::Reader).unwrap(),
    };
    h.fs.mkdir_as(blobs, "sha256", MAKER).unwrap();
    h.list("a/blobs/sha256").unwrap()
}

#[test]
fn rmdir_of_a_repository_that_lists_files_is_enotempty() {
    let h = H::local();
    let fx = Fixture::new(&h);
    let root = layoutfs::fs::root_ino();
    let (_, hex) = repo_with_one_blob(&h, &fx);
    // A reader sees the empty repository's own layout names besides what was written.
    assert_eq!(h.list("a").unwrap(), ["index.json", "oci-layout", "blobs"]);
    assert_eq!(
        h.list("a/blobs/sha256").unwrap(),
        std::slice::from_ref(&hex)
    );
    let e = h.fs.rmdir(root, "a");
    // Before the fix rmdir succeeded, and the file written under it came back in a new
    // repository of that name once its blobs/sha256 was made again.
    let back = if e.is_ok() {
        h.fs.mkdir_as(root, "a", MAKER).unwrap();
        remake_and_list(&h, walk_v(&h, "a", Viewer::Reader).unwrap())
    } else {
        vec![]
    };
    assert_eq!(
        code(e),
        libc::ENOTEMPTY,
        "a new a/blobs/sha256 lists {back:?}"
    );
}

#[test]
fn rmdir_of_blobs_holding_sha256_is_enotempty() {
    let h = H::local();
    let fx = Fixture::new(&h);
    let (a, _) = repo_with_one_blob(&h, &fx);
    assert_eq!(h.list("a/blobs").unwrap(), ["sha256"]);
    let e = h.fs.rmdir(a, "blobs");
    // Before the fix rmdir succeeded, and the file written under it came back once
    // blobs/sha256 was made again.
    let back = if e.is_ok() {
        remake_and_list(&h, a)
    } else {
        vec![]
    };
    assert_eq!(
        code(e),
        libc::ENOTEMPTY,
        "a new a/blobs/sha256 lists {back:?}"
    );
}

#[test]
fn a_removed_pending_image_still_limits_writes() {
    let h = H::local();
    let fx = Fixture::new(&h);
    let root = layoutfs::fs::root_ino();
    let manifest = fx.images[1].manifest.clone();
    let mut long = fx.bytes[&manifest].clone();
    long.push(0);
    for repo in ["a", "b"] {
        h.fs.mkdir_as(root, repo, MAKER).unwrap();
        let r = walk_v(&h, repo, Viewer::Reader).unwrap();
        let blobs = h.fs.mkdir_as(r, "blobs", MAKER).unwrap().ino;
        h.fs.mkdir_as(blobs, "sha256", MAKER).unwrap();
    }
    // a:t1 is pending, waiting for its manifest (whose size index.json gives).
    put(&h, "a/index.json", &fx.index(&[1]), MAKER).unwrap();
    assert_eq!(h.fs.pending().len(), 1);
    let path = format!("b/blobs/sha256/{manifest}");
    assert_eq!(code(put(&h, &path, &long, MAKER)), libc::EFBIG);
    // Once a's index.json is gone, nothing waits for that blob: a write of the wrong size is
    // the EIO of a mismatch at close, as before a:t1 was written.
    h.fs.unlink(walk_v(&h, "a", Viewer::Reader).unwrap(), "index.json")
        .unwrap();
    assert!(h.fs.pending().is_empty());
    assert_eq!(code(put(&h, &path, &long, MAKER)), libc::EIO);
}

#[test]
fn a_layer_is_needed_once_the_manifest_arrives_through_another_repository() {
    let h = H::local();
    let fx = Fixture::new(&h);
    let root = layoutfs::fs::root_ino();
    let img = &fx.images[1];
    let layer = img.blobs[2].clone();
    for repo in ["a", "b"] {
        h.fs.mkdir_as(root, repo, MAKER).unwrap();
        let r = walk_v(&h, repo, Viewer::Reader).unwrap();
        let blobs = h.fs.mkdir_as(r, "blobs", MAKER).unwrap().ino;
        h.fs.mkdir_as(blobs, "sha256", MAKER).unwrap();
    }
    // a:t1 waits; its layer is written into a, its manifest into b (config still missing).
    put(&h, "a/index.json", &fx.index(&[1]), MAKER).unwrap();
    put(
        &h,
        &format!("a/blobs/sha256/{layer}"),
        &fx.bytes[&layer],
        MAKER,
    )
    .unwrap();
    // a's view is computed now (any look at its index.json does it), before the manifest.
    h.read_as("a/index.json", READER).unwrap();
    put(
        &h,
        &format!("b/blobs/sha256/{}", img.manifest),
        &fx.bytes[&img.manifest],
        MAKER,
    )
    .unwrap();
    assert_eq!(h.fs.pending().len(), 1);
    // README: a pending image's layer counts as needed once its manifest is in the store.
    let alg = walk_v(&h, "a/blobs/sha256", Viewer::Reader).unwrap();
    assert_eq!(code(h.fs.unlink(alg, &layer)), libc::EBUSY);
}
