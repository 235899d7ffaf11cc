//! Any image archive read as one stream, whatever wrote it and in whatever order: an OCI
//! layout (`oci-layout`, `index.json`, `blobs/`, read by `LayoutStream`), a `docker save`
//! archive of docker before 25, podman or skopeo (`manifest.json`, layer and config files
//! under names of their own, relative symbolic links to them), or docker 25's layout with a
//! `manifest.json` beside it. Every regular file outside `blobs/` goes, as it passes, into
//! an ingest hashed while written and named at commit (a small one is kept in memory and
//! stored only if an image uses it), so memory stays flat; the tar a gzip or zstd layer holds
//! is hashed (its diff_id) at the end, only for layers an image uses, read back once. Links are
//! checked as they pass (absolute or escaping targets refused) and followed one hop, only at
//! the end. At the end, each `manifest.json` item becomes an OCI manifest
//! (`crate::docker::synthesize`), its layers checked against the config's diff_ids, named
//! by its `RepoTags`; with an OCI layout, `index.json` names the images and `manifest.json`
//! only adds names to unnamed ones, the images the index lacks, and mends docker 25.0's
//! manifests whose layers it listed out of order (`merge`).

mod merge;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{self, Read};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::digest::{Algorithm, Digest};
use crate::docker::{
    self, check_config_name, Compression, ImageConfig, Item, Layer, Links, MANIFEST_FILE,
    MAX_MANIFEST_SIZE, REPOSITORIES_FILE,
};
use crate::error::{Error, Result};
use crate::oci::{
    Descriptor, ImageIndex, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, MAX_JSON_SIZE,
};
use crate::reference::Reference;

use super::super::intake::Intake;
use super::super::source::Entry;
use super::oci::{read_head, LayoutStream, INDEX_FILE, LAYOUT_FILE};
use super::StreamFormat;

/// A file at most this large is kept in memory until the end (configs, v1 `json` files).
const SMALL_FILE: u64 = 1 << 20;
/// Most bytes of small files kept in memory at once; past it they go to ingests.
const SMALL_BUDGET: u64 = 64 << 20;
/// Most files outside `blobs/` one archive may hold (a record each: about 200 bytes).
const MAX_FILES: usize = 100_000;
/// Most bytes of file paths, link paths and link targets kept until the end.
const MAX_NAME_BYTES: u64 = 16 << 20;

/// A regular file of the archive outside `blobs/`.
struct File {
    digest: Digest,
    size: u64,
    compression: Compression,
    body: Body,
}

enum Body {
    /// Kept in memory; stored only if an image uses it.
    Memory(Vec<u8>),
    /// In the store already.
    Stored,
}

/// What a path of `manifest.json` names.
enum Found<'a> {
    File(&'a File),
    /// A blob of the layout part (`blobs/<alg>/<hex>`).
    Blob(Digest),
}

impl Found<'_> {
    fn digest(&self) -> &Digest {
        match self {
            Found::File(f) => &f.digest,
            Found::Blob(d) => d,
        }
    }
}

/// An image archive read as a stream.
pub struct ArchiveStream {
    label: String,
    layout: LayoutStream,
    manifest: Option<Vec<u8>>,
    links: Links,
    files: BTreeMap<String, File>,
    small_bytes: u64,
    /// Bytes of the paths and link targets kept.
    name_bytes: u64,
    /// The diff_ids of compressed layers worked out at the end, so that a layer listed many
    /// times is decompressed once.
    diff_ids: Mutex<BTreeMap<Digest, std::result::Result<Digest, String>>>,
    /// The configs read, so that one used by many images is read and parsed once.
    configs: Mutex<BTreeMap<Digest, Arc<ImageConfig>>>,
}

impl ArchiveStream {
    /// `label` names the stream in errors.
    pub fn new(label: &str) -> ArchiveStream {
        ArchiveStream {
            label: label.to_owned(),
            layout: LayoutStream::new(label),
            manifest: None,
            links: Links::new(),
            files: BTreeMap::new(),
            small_bytes: 0,
            name_bytes: 0,
            diff_ids: Default::default(),
            configs: Default::default(),
        }
    }

    fn bad(&self, message: impl Into<String>) -> Error {
        Error::archive(&self.label, message)
    }

    /// Counts `names` into the bytes of names kept; refused past `MAX_NAME_BYTES`.
    fn count_names(&mut self, names: &[&str]) -> Result<()> {
        self.name_bytes += names.iter().map(|n| n.len() as u64).sum::<u64>();
        if self.name_bytes > MAX_NAME_BYTES {
            return Err(self.bad(format!(
                "the paths and link targets of its files pass {MAX_NAME_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Records a symbolic link, refusing it where the layout needs a file and when its target
    /// is absolute or leaves the archive.
    fn link(&mut self, path: &str, target: &str) -> Result<()> {
        if self.files.contains_key(path) {
            return Err(self.bad(format!(
                "entry {} appears twice",
                crate::error::printable(path)
            )));
        }
        if is_layout_member(path) || path == MANIFEST_FILE {
            return Err(self.bad(format!(
                "entry {}: symbolic links are refused here",
                crate::error::printable(path)
            )));
        }
        self.count_names(&[path, target])?;
        self.links.add(path, target).map_err(|m| self.bad(m))
    }

    fn keep_manifest(&mut self, entry: Entry<'_>) -> Result<()> {
        let what = format!("{}: {}", self.label, entry.shown());
        if entry.size > MAX_MANIFEST_SIZE {
            return Err(Error::TooLarge {
                file: what,
                size: entry.size,
                cap: MAX_MANIFEST_SIZE,
            });
        }
        let mut bytes = Vec::with_capacity(entry.size as usize);
        entry
            .reader
            .read_to_end(&mut bytes)
            .map_err(entry.read_error)?;
        if self.manifest.replace(bytes).is_some() {
            return Err(self.bad(format!("{} appears twice", entry.shown())));
        }
        Ok(())
    }

    /// A regular file outside the layout: kept in memory when small, else copied into an
    /// ingest named by its hash at the end.
    fn file(&mut self, entry: Entry<'_>, intake: &Intake<'_>) -> Result<()> {
        if self.files.contains_key(entry.path) || self.links.is_link(entry.path) {
            return Err(self.bad(format!("entry {} appears twice", entry.shown())));
        }
        if self.files.len() >= MAX_FILES {
            return Err(self.bad(format!("more than {MAX_FILES} files")));
        }
        self.count_names(&[entry.path])?;
        let size = entry.size;
        let what = format!("{}: {}", self.label, entry.shown());
        let head = read_head(entry.reader).map_err(entry.read_error)?;
        let compression = Compression::sniff(&head);
        let mut whole = (&head[..]).chain(&mut *entry.reader);
        let small = size <= SMALL_FILE && self.small_bytes + size <= SMALL_BUDGET;
        let (digest, body) = if small {
            let mut bytes = Vec::with_capacity(size as usize);
            whole.read_to_end(&mut bytes).map_err(entry.read_error)?;
            self.small_bytes += size;
            (Digest::of(Algorithm::Sha256, &bytes), Body::Memory(bytes))
        } else {
            let (digest, written) = intake
                .copy_unnamed(Algorithm::Sha256, &mut whole, &what)
                .map_err(|e| match e {
                    Error::Stream { source, .. } => (entry.read_error)(source),
                    e => e,
                })?;
            if written != size {
                return Err((entry.read_error)(io::ErrorKind::UnexpectedEof.into()));
            }
            (digest, Body::Stored)
        };
        let file = File {
            digest,
            size,
            compression,
            body,
        };
        self.files.insert(entry.path.to_owned(), file);
        Ok(())
    }

    /// What `path` (of `what`: "config" or "layer") names, one link followed.
    fn find(&self, what: &str, path: &str) -> Result<(String, Found<'_>)> {
        let resolved = self.links.resolve(path).map_err(|m| self.bad(m))?;
        if let Some(f) = self.files.get(resolved) {
            return Ok((resolved.to_owned(), Found::File(f)));
        }
        if let Some(d) = blob_path_digest(resolved) {
            if self.layout.compression(&d).is_some() {
                return Ok((resolved.to_owned(), Found::Blob(d)));
            }
        }
        let via = if resolved == path {
            String::new()
        } else {
            format!(" (a link to {:?})", crate::error::printable(resolved))
        };
        Err(self.bad(format!(
            "{what} {:?}{via} is not in the archive",
            crate::error::printable(path)
        )))
    }

    /// An item's config, which must hash to its name if it has one; read and parsed once
    /// however many items use it.
    fn config(&self, item: &Item, intake: &Intake<'_>) -> Result<Arc<ImageConfig>> {
        let (resolved, found) = self.find("config", &item.config)?;
        let digest = found.digest().clone();
        check_config_name(&resolved, &digest).map_err(|m| self.bad(m))?;
        if let Some(known) = self.configs.lock().get(&digest) {
            return Ok(known.clone());
        }
        let size = match &found {
            Found::File(f) => f.size,
            Found::Blob(d) => intake.size(d)?.unwrap_or(0),
        };
        if size > MAX_JSON_SIZE {
            return Err(Error::TooLarge {
                file: format!("{}: {}", self.label, crate::error::printable(&resolved)),
                size,
                cap: MAX_JSON_SIZE,
            });
        }
        let parsed = match found {
            Found::File(File {
                body: Body::Memory(b),
                ..
            }) => ImageConfig::parse(&resolved, &digest, b),
            _ => {
                let bytes = intake.read_small(&Descriptor::new("", digest.clone(), size))?;
                ImageConfig::parse(&resolved, &digest, &bytes)
            }
        };
        let parsed = Arc::new(parsed.map_err(|m| self.bad(m))?);
        self.configs.lock().insert(digest, parsed.clone());
        Ok(parsed)
    }

    /// A layer as `synthesize` needs it: digest, size, compression and diff_id.
    fn layer(&self, path: &str, intake: &Intake<'_>) -> Result<Layer> {
        let (resolved, found) = self.find("layer", path)?;
        let shown = crate::error::printable(&resolved);
        let (digest, size, compression, diff_id) = match found {
            Found::File(f) => {
                let diff_id = match &f.body {
                    Body::Memory(b) => self.diff_id(&f.digest, || {
                        docker::layer_diff_id(&mut &b[..], f.compression, &f.digest)
                    }),
                    Body::Stored => {
                        self.stored_diff_id(intake, &f.digest, f.size, f.compression)?
                    }
                };
                (f.digest.clone(), f.size, f.compression, diff_id)
            }
            Found::Blob(d) => {
                let size = intake.size(&d)?.unwrap_or(0);
                let c = self.layout.compression(&d).unwrap_or(Compression::None);
                let diff_id = self.stored_diff_id(intake, &d, size, c)?;
                (d, size, c, diff_id)
            }
        };
        let diff_id = diff_id.map_err(|m| self.bad(format!("layer {shown:?}: {m}")))?;
        Ok(Layer {
            digest,
            size,
            compression,
            diff_id,
        })
    }

    /// The diff_id of the layer the store holds as `digest` (`size` bytes, compressed with
    /// `c`): its digest when it is a plain tar, else what it decompresses to, read back once.
    fn stored_diff_id(
        &self,
        intake: &Intake<'_>,
        digest: &Digest,
        size: u64,
        c: Compression,
    ) -> Result<std::result::Result<Digest, String>> {
        if c == Compression::None {
            return Ok(Ok(digest.clone()));
        }
        if let Some(known) = self.diff_ids.lock().get(digest) {
            return Ok(known.clone());
        }
        let mut file = intake.open(&Descriptor::new("", digest.clone(), size))?;
        Ok(self.diff_id(digest, || docker::layer_diff_id(&mut file, c, digest)))
    }

    /// The diff_id of compressed layer `digest`, worked out by `compute` the first time.
    fn diff_id(
        &self,
        digest: &Digest,
        compute: impl FnOnce() -> std::result::Result<Digest, String>,
    ) -> std::result::Result<Digest, String> {
        if let Some(known) = self.diff_ids.lock().get(digest) {
            return known.clone();
        }
        let found = compute();
        self.diff_ids.lock().insert(digest.clone(), found.clone());
        found
    }

    /// Stores the small files `paths` name (those kept in memory), once each.
    fn store_used(
        &self,
        paths: &[&str],
        intake: &Intake<'_>,
        stored: &mut HashSet<Digest>,
    ) -> Result<()> {
        for p in paths {
            let resolved = self.links.resolve(p).map_err(|m| self.bad(m))?;
            if let Some(File {
                digest,
                body: Body::Memory(bytes),
                ..
            }) = self.files.get(resolved)
            {
                if stored.insert(digest.clone()) {
                    intake.put(digest, bytes)?;
                }
            }
        }
        Ok(())
    }

    /// The manifest of `item` (number `n`, from 1), stored with what it uses; returns its
    /// descriptor.
    fn make_image(
        &self,
        n: usize,
        item: &Item,
        intake: &Intake<'_>,
        stored: &mut HashSet<Digest>,
    ) -> Result<Descriptor> {
        let config = self.config(item, intake)?;
        let layers = item
            .layers
            .iter()
            .map(|p| self.layer(p, intake))
            .collect::<Result<Vec<_>>>()?;
        let (bytes, desc) =
            docker::synthesize(n, item, &config, &layers).map_err(|m| self.bad(m))?;
        let mut used: Vec<&str> = vec![&item.config];
        used.extend(item.layers.iter().map(String::as_str));
        self.store_used(&used, intake, stored)?;
        if stored.insert(desc.digest.clone()) {
            intake.put(&desc.digest, &bytes)?;
        }
        Ok(desc)
    }

    fn items(&self) -> Result<Vec<Item>> {
        let bytes = self.manifest.as_deref().unwrap_or_default();
        docker::parse_manifest(bytes).map_err(|m| self.bad(format!("{MANIFEST_FILE}: {m}")))
    }

    /// Every link must name a file of the archive (no loader makes sense of a dangling one).
    fn check_links(&self) -> Result<()> {
        for (path, target) in self.links.iter() {
            let known = self.files.contains_key(target)
                || self.links.is_link(target)
                || blob_path_digest(target).is_some_and(|d| self.layout.compression(&d).is_some());
            if !known {
                return Err(self.bad(format!(
                    "symbolic link {} points to {}, which is not in the archive",
                    crate::error::printable(path),
                    crate::error::printable(target)
                )));
            }
        }
        Ok(())
    }

    /// A `docker save` archive: one image per `manifest.json` item, named by its RepoTags.
    fn docker_index(&self, intake: &Intake<'_>) -> Result<ImageIndex> {
        let items = self.items()?;
        if items.is_empty() {
            return Err(self.bad(format!("{MANIFEST_FILE} lists no image")));
        }
        self.check_links()?;
        let mut stored = HashSet::new();
        let mut out = Vec::new();
        let mut listed = BTreeSet::new();
        for (n, item) in items.iter().enumerate() {
            let desc = self.make_image(n + 1, item, intake, &mut stored)?;
            for d in named(&desc, &item.repo_tags) {
                if listed.insert((d.digest.clone(), name_of(&d).map(str::to_owned))) {
                    out.push(d);
                }
            }
        }
        Ok(ImageIndex::new(out))
    }

    /// The digests of an item's layers as the archive holds them.
    fn layer_digests(&self, item: &Item) -> Result<Vec<Digest>> {
        item.layers
            .iter()
            .map(|p| Ok(self.find("layer", p)?.1.digest().clone()))
            .collect()
    }
}

impl StreamFormat for ArchiveStream {
    fn entry(&mut self, entry: Entry<'_>, intake: &Intake<'_>) -> Result<()> {
        if let Some(target) = entry.link {
            return self.link(entry.path, target);
        }
        if entry.is_dir {
            return Ok(());
        }
        match entry.path {
            MANIFEST_FILE => self.keep_manifest(entry),
            REPOSITORIES_FILE => Ok(()),
            p if is_layout_member(p) => self.layout.entry(entry, intake),
            _ => self.file(entry, intake),
        }
    }

    fn finish(self: Box<Self>, intake: &Intake<'_>) -> Result<ImageIndex> {
        if self.layout.has_layout_file() {
            let mut index = self.layout.index()?;
            if self.manifest.is_some() {
                self.merge_docker(&mut index, intake)?;
            }
            return Ok(index);
        }
        if self.manifest.is_some() {
            return self.docker_index(intake);
        }
        Err(self.bad(format!(
            "neither {LAYOUT_FILE} nor {MANIFEST_FILE}: not an image archive"
        )))
    }
}

/// Whether `path` belongs to the OCI layout part of an archive.
fn is_layout_member(path: &str) -> bool {
    path == LAYOUT_FILE || path == INDEX_FILE || path.starts_with("blobs/")
}

/// The digest a `blobs/<alg>/<hex>` path names.
fn blob_path_digest(path: &str) -> Option<Digest> {
    let (alg, hex) = path.strip_prefix("blobs/")?.split_once('/')?;
    Digest::from_parts(alg, hex).ok()
}

/// Whether an index descriptor names its image.
fn is_named(d: &Descriptor) -> bool {
    d.annotations.contains_key(ANNOTATION_IMAGE_NAME)
        || d.annotations.contains_key(ANNOTATION_REF_NAME)
}

/// The name an index descriptor gives, if any.
fn name_of(d: &Descriptor) -> Option<&str> {
    d.annotations
        .get(ANNOTATION_IMAGE_NAME)
        .or_else(|| d.annotations.get(ANNOTATION_REF_NAME))
        .map(String::as_str)
}

/// The index entries of image `desc`: one per name of `tags`, or one without a name.
fn named<'a>(
    desc: &'a Descriptor,
    tags: impl IntoIterator<Item = &'a Reference>,
) -> Vec<Descriptor> {
    let mut unnamed = desc.clone();
    unnamed.annotations.remove(ANNOTATION_IMAGE_NAME);
    unnamed.annotations.remove(ANNOTATION_REF_NAME);
    let out: Vec<Descriptor> = tags
        .into_iter()
        .map(|tag| {
            let mut d = unnamed.clone();
            d.annotations
                .insert(ANNOTATION_IMAGE_NAME.to_owned(), tag.to_string());
            d
        })
        .collect();
    if out.is_empty() {
        vec![unnamed]
    } else {
        out
    }
}
