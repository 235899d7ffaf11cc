//! Docker archives for the tests, built byte for byte with no outside tool: tiny deterministic
//! layer tars (and their gzip and zstd forms), configs with `rootfs.diff_ids`, `manifest.json`
//! items, the shapes real producers write (skopeo and podman `docker-archive:`, docker before 25
//! with v1 directories and duplicate-layer links that may come before their targets, docker 25+
//! as an OCI layout plus `manifest.json`), and raw control for bad input: entry order, links to
//! any target, a header claiming any size, two entries of one path, a cut anywhere. Every header
//! is ustar, mode fixed, owner 0, mtime 0, so the same call always gives the same bytes.
//! `expected_manifest` says, independently of the product, which manifest an import of an
//! image must synthesise (the one docker >= 26 `save` writes into its index).

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// The import's cap on `manifest.json`.
pub const MANIFEST_JSON_CAP: usize = 4 << 20;
/// What a bzip2 stream starts with (magic, block size 9, block magic).
pub const BZIP2_HEAD: &[u8] = b"BZh91AY&SY";
/// What an xz stream starts with.
pub const XZ_HEAD: &[u8] = &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
/// What `oci-layout` holds.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const ZSTD_LEVEL: i32 = 3;
const BLOCK: usize = 512;
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
/// What docker writes in a v1 directory's `VERSION`.
const V1_VERSION: &[u8] = b"1.0";
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// A layer tar holding `files` (path, contents), as `tar --owner=0 --mtime=@0` writes one.
pub fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A small layer of its own for each `seed`: a file `seed-<seed>` of a few hundred bytes.
pub fn layer(seed: u8) -> Vec<u8> {
    let body: Vec<u8> = (0..300u32)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    layer_tar(&[(&format!("seed-{seed}"), &body)])
}

/// gzip of `bytes` (mtime 0, no file name: deterministic).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, ZSTD_LEVEL).unwrap()
}

/// What a layer blob holds uncompressed (gzip and zstd told apart by their magic bytes).
pub fn uncompressed(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if bytes.starts_with(GZIP_MAGIC) {
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
    } else if bytes.starts_with(ZSTD_MAGIC) {
        out = zstd::stream::decode_all(bytes).unwrap();
    } else {
        out = bytes.to_vec();
    }
    out
}

/// The OCI media type of a layer stored as `bytes`.
pub fn layer_media_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(GZIP_MAGIC) {
        MEDIA_LAYER_GZIP
    } else if bytes.starts_with(ZSTD_MAGIC) {
        MEDIA_LAYER_ZSTD
    } else {
        MEDIA_LAYER
    }
}

/// A compact image config over `diff_ids` (each `sha256:<hex>`), running `cmd`.
pub fn config(diff_ids: &[String], cmd: &str) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["{cmd}"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}},"history":[]}}"#,
        ids.join(",")
    )
    .into_bytes()
}

/// The manifest an import synthesises for `config` and the layers as stored, in order: compact,
/// no trailing newline, exactly these fields in this order (docker >= 26 `save`, ocispec).
pub fn expected_manifest(config: &[u8], stored_layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<String> = stored_layers
        .iter()
        .map(|l| {
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{}}}"#,
                layer_media_type(l),
                digest(l),
                l.len()
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_MANIFEST}","config":{{"mediaType":"{MEDIA_CONFIG}","digest":"{}","size":{}}},"layers":[{}]}}"#,
        digest(config),
        config.len(),
        layers.join(",")
    )
    .into_bytes()
}

/// An image as an archive holds it: its config, its layers as stored (repeats kept), its tags.
#[derive(Clone)]
pub struct Image {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
    /// `RepoTags` as written; `None` leaves the key out.
    pub tags: Option<Vec<String>>,
}

impl Image {
    /// An image of `layers` (stored bytes) whose config is right for them, running `cmd`.
    pub fn new(layers: Vec<Vec<u8>>, cmd: &str, tags: &[&str]) -> Image {
        let diff_ids: Vec<String> = layers.iter().map(|l| digest(&uncompressed(l))).collect();
        Image {
            config: config(&diff_ids, cmd),
            layers,
            tags: Some(tags.iter().map(|t| (*t).to_owned()).collect()),
        }
    }

    /// The same image with no `RepoTags` key.
    pub fn untagged(mut self) -> Image {
        self.tags = None;
        self
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers
            .iter()
            .map(|l| digest(&uncompressed(l)))
            .collect()
    }

    pub fn config_hex(&self) -> String {
        sha256_hex(&self.config)
    }

    /// The manifest an import must synthesise for this image, and its digest.
    pub fn manifest(&self) -> Vec<u8> {
        let layers: Vec<&[u8]> = self.layers.iter().map(Vec::as_slice).collect();
        expected_manifest(&self.config, &layers)
    }

    pub fn manifest_digest(&self) -> String {
        digest(&self.manifest())
    }

    pub fn tag_list(&self) -> Vec<String> {
        self.tags.clone().unwrap_or_default()
    }

    /// The item of `manifest.json` naming its config and layers by these paths.
    pub fn item(&self, config: &str, layers: &[String]) -> Item {
        Item {
            config: config.to_owned(),
            repo_tags: self.tags.clone(),
            layers: layers.to_vec(),
        }
    }

    /// The distinct stored layers, in first-use order.
    pub fn distinct_layers(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for l in &self.layers {
            if !out.contains(l) {
                out.push(l.clone());
            }
        }
        out
    }
}

/// One item of `manifest.json`.
#[derive(Clone)]
pub struct Item {
    pub config: String,
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

/// `manifest.json` for `items`, keys in the order producers write them, no trailing newline.
pub fn manifest_json(items: &[Item]) -> Vec<u8> {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let list = |v: &[String]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(",");
    let items: Vec<String> = items
        .iter()
        .map(|i| {
            let tags = match &i.repo_tags {
                Some(t) => format!(r#","RepoTags":[{}]"#, list(t)),
                None => String::new(),
            };
            format!(
                r#"{{"Config":{}{tags},"Layers":[{}]}}"#,
                q(&i.config),
                list(&i.layers)
            )
        })
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

/// What one entry of a built tar is.
#[derive(Clone, Debug)]
pub enum Body {
    File(Vec<u8>),
    Dir,
    /// A symbolic link (typeflag 2) to this target, as written.
    Symlink(String),
    /// A regular-file header claiming `size` bytes, followed by `data` (fewer, or more) only.
    Claim {
        size: u64,
        data: Vec<u8>,
    },
}

/// A tar archive being built, entry by entry, in the order given (which can be changed).
#[derive(Clone, Default)]
pub struct Tar {
    pub entries: Vec<(String, Body)>,
}

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    pub fn file(mut self, path: &str, bytes: &[u8]) -> Tar {
        self.entries
            .push((path.to_owned(), Body::File(bytes.to_vec())));
        self
    }

    pub fn dir(mut self, path: &str) -> Tar {
        self.entries.push((path.to_owned(), Body::Dir));
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Tar {
        self.entries
            .push((path.to_owned(), Body::Symlink(target.to_owned())));
        self
    }

    /// A header for `path` claiming `size` bytes, then only `data`.
    pub fn claim(mut self, path: &str, size: u64, data: &[u8]) -> Tar {
        self.entries.push((
            path.to_owned(),
            Body::Claim {
                size,
                data: data.to_vec(),
            },
        ));
        self
    }

    fn position(&self, path: &str) -> usize {
        self.entries
            .iter()
            .position(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("no entry {path} in the fixture"))
    }

    /// Moves the (first) entry `path` to the front.
    pub fn move_first(mut self, path: &str) -> Tar {
        let e = self.entries.remove(self.position(path));
        self.entries.insert(0, e);
        self
    }

    /// Moves the (first) entry `path` to the end.
    pub fn move_last(mut self, path: &str) -> Tar {
        let e = self.entries.remove(self.position(path));
        self.entries.push(e);
        self
    }

    /// Replaces what the (first) entry `path` is.
    pub fn replace(mut self, path: &str, body: Body) -> Tar {
        let i = self.position(path);
        self.entries[i].1 = body;
        self
    }

    pub fn remove(mut self, path: &str) -> Tar {
        self.entries.remove(self.position(path));
        self
    }

    pub fn has(&self, path: &str) -> bool {
        self.entries.iter().any(|(p, _)| p == path)
    }

    /// The contents of the (first) regular file `path`.
    pub fn get(&self, path: &str) -> &[u8] {
        match &self.entries[self.position(path)].1 {
            Body::File(b) => b,
            other => panic!("{path} is {other:?}, not a file"),
        }
    }

    /// Where the (first) entry `path` is in the stream.
    pub fn index_of(&self, path: &str) -> usize {
        self.position(path)
    }

    /// The archive, with its two end-of-archive blocks.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.body_bytes();
        out.resize(out.len() + 2 * BLOCK, 0);
        out
    }

    /// The entries only (no end-of-archive blocks).
    pub fn body_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, body) in &self.entries {
            write_entry(&mut out, path, body);
        }
        out
    }

    /// Byte offset of the header of the (first) entry `path`.
    pub fn offset_of(&self, path: &str) -> usize {
        let end = self.position(path);
        let head = Tar {
            entries: self.entries[..end].to_vec(),
        };
        head.body_bytes().len()
    }

    pub fn write(&self, to: &Path) {
        std::fs::write(to, self.bytes()).unwrap();
    }
}

/// Appends one ustar entry: names written as bytes (no checks, so any bad path can be made).
fn write_entry(out: &mut Vec<u8>, path: &str, body: &Body) {
    let mut h = tar::Header::new_ustar();
    let (prefix, name) = split_path(path);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_ustar_mut().unwrap().prefix[..prefix.len()].copy_from_slice(prefix.as_bytes());
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    let data: &[u8] = match body {
        Body::File(b) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o444);
            h.set_size(b.len() as u64);
            b
        }
        Body::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            &[]
        }
        Body::Symlink(target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            assert!(target.len() <= NAME_LEN, "link target too long: {target}");
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            &[]
        }
        Body::Claim { size, data } => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o444);
            h.set_size(*size);
            data
        }
    };
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
}

/// A path as ustar holds it: (prefix, name), split at a slash when longer than a name field.
fn split_path(path: &str) -> (&str, &str) {
    if path.len() <= NAME_LEN {
        return ("", path);
    }
    let cut = path
        .char_indices()
        .filter(|&(i, c)| c == '/' && i <= PREFIX_LEN && path.len() - i - 1 <= NAME_LEN)
        .map(|(i, _)| i)
        .next()
        .unwrap_or_else(|| panic!("path too long for ustar: {path}"));
    (&path[..cut], &path[cut + 1..])
}

/// A 64-hex v1 id for layer position `i` of `image`, starting with `lead` (to choose the
/// lexical order of v1 directories, as docker's chain-derived ids fall).
fn v1_id(lead: u8, image: &Image, i: usize) -> String {
    let tail = sha256_hex(format!("v1 {} {i}", image.config_hex()).as_bytes());
    format!("{lead:02x}{}", &tail[2..])
}

/// The v1 `json` of a layer directory.
fn v1_json(id: &str, parent: Option<&str>) -> Vec<u8> {
    match parent {
        Some(p) => format!(r#"{{"id":"{id}","parent":"{p}"}}"#).into_bytes(),
        None => format!(r#"{{"id":"{id}"}}"#).into_bytes(),
    }
}

/// `repositories` for the tagged images: `{"repo":{"tag":"<id>"}}`, repositories sorted.
fn repositories(images: &[(&Image, String)]) -> Option<Vec<u8>> {
    let mut map: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> =
        Default::default();
    for (image, id) in images {
        for t in image.tag_list() {
            if let Some((repo, tag)) = t.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
                map.entry(repo.to_owned())
                    .or_default()
                    .insert(tag.to_owned(), id.clone());
            }
        }
    }
    (!map.is_empty()).then(|| serde_json::to_vec(&map).unwrap())
}

/// What skopeo and podman write for `docker-archive:` (containers/image): each distinct layer
/// once as `<sha256>.tar` at the top, then the configs as `<hex>.json`, then for each layer
/// position a v1 directory (no directory entry) whose `layer.tar` links to `../<sha256>.tar`
/// after its target, with `VERSION` and `json`; then `manifest.json`, then `repositories`.
pub fn skopeo_shape(images: &[Image]) -> Tar {
    let mut t = Tar::new();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for image in images {
        for l in image.distinct_layers() {
            if !seen.contains(&l) {
                t = t.file(&format!("{}.tar", sha256_hex(&l)), &l);
                seen.push(l);
            }
        }
        let cfg = format!("{}.json", image.config_hex());
        if !t.has(&cfg) {
            t = t.file(&cfg, &image.config);
        }
    }
    let mut items = Vec::new();
    let mut tops = Vec::new();
    for (n, image) in images.iter().enumerate() {
        let mut parent: Option<String> = None;
        for (i, l) in image.layers.iter().enumerate() {
            let id = v1_id(0x10 + n as u8, image, i);
            if !t.has(&format!("{id}/layer.tar")) {
                t = t
                    .symlink(
                        &format!("{id}/layer.tar"),
                        &format!("../{}.tar", sha256_hex(l)),
                    )
                    .file(&format!("{id}/VERSION"), V1_VERSION)
                    .file(&format!("{id}/json"), &v1_json(&id, parent.as_deref()));
            }
            parent = Some(id);
        }
        let paths: Vec<String> = image
            .layers
            .iter()
            .map(|l| format!("{}.tar", sha256_hex(l)))
            .collect();
        items.push(image.item(&format!("{}.json", image.config_hex()), &paths));
        tops.push((image, parent.unwrap_or_default()));
    }
    t = t.file("manifest.json", &manifest_json(&items));
    if let Some(r) = repositories(&tops) {
        t = t.file("repositories", &r);
    }
    t
}

/// What docker before 25 writes (moby `tarexport/save.go` at v24): a directory walked in
/// lexical order, with directory entries. Each layer position has a v1 directory with
/// `VERSION`, `json` and `layer.tar`; a layer repeated is a link `../<first v1 id>/layer.tar`.
/// The v1 ids of later positions sort first, so a duplicate's link comes BEFORE its target.
pub fn docker24_shape(images: &[Image]) -> Tar {
    let mut files: std::collections::BTreeMap<String, Body> = Default::default();
    let mut items = Vec::new();
    let mut tops = Vec::new();
    let mut first_use: Vec<(Vec<u8>, String)> = Vec::new();
    for (n, image) in images.iter().enumerate() {
        let mut parent: Option<String> = None;
        let mut paths = Vec::new();
        for (i, l) in image.layers.iter().enumerate() {
            let id = v1_id(0xf0 - (16 * n + i) as u8, image, i);
            files.insert(format!("{id}/"), Body::Dir);
            files.insert(format!("{id}/VERSION"), Body::File(V1_VERSION.to_vec()));
            let json = v1_json(&id, parent.as_deref());
            files.insert(format!("{id}/json"), Body::File(json));
            let body = match first_use.iter().find(|(b, _)| b == l) {
                Some((_, first)) => Body::Symlink(format!("../{first}/layer.tar")),
                None => {
                    first_use.push((l.clone(), id.clone()));
                    Body::File(l.clone())
                }
            };
            files.insert(format!("{id}/layer.tar"), body);
            paths.push(format!("{id}/layer.tar"));
            parent = Some(id);
        }
        let cfg = format!("{}.json", image.config_hex());
        files.insert(cfg.clone(), Body::File(image.config.clone()));
        items.push(image.item(&cfg, &paths));
        tops.push((image, parent.unwrap_or_default()));
    }
    files.insert("manifest.json".into(), Body::File(manifest_json(&items)));
    if let Some(r) = repositories(&tops) {
        files.insert("repositories".into(), Body::File(r));
    }
    Tar {
        entries: files.into_iter().collect(),
    }
}

/// The full name docker writes in `io.containerd.image.name` for a familiar `RepoTags` entry.
pub fn docker_full_name(tag: &str) -> String {
    let first = tag.split('/').next().unwrap_or(tag);
    if tag.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost") {
        tag.to_owned()
    } else if tag.contains('/') {
        format!("docker.io/{tag}")
    } else {
        format!("docker.io/library/{tag}")
    }
}

/// How a docker-25 archive's `index.json` names its images.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IndexNames {
    /// One descriptor per tag, as docker writes: `io.containerd.image.name` the full name,
    /// `org.opencontainers.image.ref.name` the tag.
    Docker,
    /// One descriptor per image with no annotation at all.
    None,
}

/// What docker 25+ writes (graphdriver store, moby PR #44598, with the layer order fixed in 26):
/// an OCI layout whose layers are `blobs/sha256/<diff_id>` uncompressed (as stored here), the
/// configs and the synthesised manifests as blobs, a v1 config nothing references, then in
/// lexical order `index.json`, `manifest.json` (`blobs/sha256/…` paths, `LayerSources`),
/// `oci-layout`, `repositories`. `indexed` are in both files; `extra` only in `manifest.json`
/// (moby#51389: an untagged image after a tagged one is missing from `index.json`).
pub fn docker25_shape(indexed: &[Image], extra: &[Image], names: IndexNames) -> Tar {
    let mut blobs: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    let mut descriptors = Vec::new();
    for image in indexed {
        let m = image.manifest();
        let d = format!(
            r#"{{"mediaType":"{MEDIA_MANIFEST}","digest":"{}","size":{}"#,
            digest(&m),
            m.len()
        );
        match names {
            IndexNames::Docker => {
                for t in image.tag_list() {
                    let tag = t.rsplit_once(':').map_or("latest", |(_, t)| t);
                    descriptors.push(format!(
                        r#"{d},"annotations":{{"{ANNOTATION_IMAGE_NAME}":"{}","{ANNOTATION_REF_NAME}":"{tag}"}}}}"#,
                        docker_full_name(&t)
                    ));
                }
            }
            IndexNames::None => descriptors.push(format!("{d}}}")),
        }
        blobs.insert(sha256_hex(&m), m);
    }
    let mut items = Vec::new();
    let mut tops = Vec::new();
    for image in indexed.iter().chain(extra) {
        blobs.insert(image.config_hex(), image.config.clone());
        let mut paths = Vec::new();
        for l in &image.layers {
            blobs.insert(sha256_hex(l), l.clone());
            paths.push(format!("blobs/sha256/{}", sha256_hex(l)));
        }
        let mut item = image.item(&format!("blobs/sha256/{}", image.config_hex()), &paths);
        item.layers = paths;
        items.push(item);
        let last = image
            .layers
            .last()
            .map(|l| sha256_hex(l))
            .unwrap_or_default();
        tops.push((image, last));
    }
    let junk = format!(
        r#"{{"id":"{}","created":"1970-01-01T00:00:00Z"}}"#,
        "0".repeat(64)
    );
    blobs.insert(sha256_hex(junk.as_bytes()), junk.into_bytes());
    let mut t = Tar::new().dir("blobs/").dir("blobs/sha256/");
    for (hex, b) in &blobs {
        t = t.file(&format!("blobs/sha256/{hex}"), b);
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_INDEX}","manifests":[{}]}}"#,
        descriptors.join(",")
    );
    t = t
        .file("index.json", format!("{index}\n").as_bytes())
        .file("manifest.json", &with_layer_sources(&items));
    t = t.file("oci-layout", OCI_LAYOUT);
    if let Some(r) = repositories(&tops) {
        t = t.file("repositories", &[r, b"\n".to_vec()].concat());
    }
    t
}

/// `manifest.json` as docker 25+ writes it: each item also has `LayerSources` (diff_id ->
/// descriptor of the uncompressed layer), which the import must ignore.
fn with_layer_sources(items: &[Item]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&manifest_json(items)).unwrap();
    for item in v.as_array_mut().unwrap() {
        let mut sources = serde_json::Map::new();
        for l in item["Layers"].as_array().unwrap() {
            let hex = l.as_str().unwrap().trim_start_matches("blobs/sha256/");
            sources.insert(
                format!("sha256:{hex}"),
                serde_json::json!({"mediaType": MEDIA_LAYER, "digest": format!("sha256:{hex}"), "size": 0}),
            );
        }
        item["LayerSources"] = serde_json::Value::Object(sources);
    }
    let mut out = serde_json::to_vec(&v).unwrap();
    out.push(b'\n');
    out
}

/// An OCI layout archive (as `layoutfs export` or `skopeo … oci-archive:` writes one) of
/// `images`, each manifest the synthesised one, named by `io.containerd.image.name` = its tags.
pub fn oci_archive(images: &[Image]) -> Tar {
    let mut t = docker25_shape(images, &[], IndexNames::Docker);
    t = t.remove("manifest.json");
    if t.has("repositories") {
        t = t.remove("repositories");
    }
    t
}

/// An OCI layout directory at `dir` holding `images` (gzip layers stay gzip), each under
/// `ref.name` = the tag part of its first tag: a source for skopeo and podman.
pub fn oci_dir(dir: &Path, images: &[(Image, &str)]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut descriptors = Vec::new();
    for (image, tag) in images {
        let m = image.manifest();
        for b in image.layers.iter().chain([&image.config, &m]) {
            std::fs::write(blobs.join(sha256_hex(b)), b).unwrap();
        }
        descriptors.push(format!(
            r#"{{"mediaType":"{MEDIA_MANIFEST}","digest":"{}","size":{},"annotations":{{"{ANNOTATION_REF_NAME}":"{tag}"}}}}"#,
            digest(&m),
            m.len()
        ));
    }
    std::fs::write(dir.join("oci-layout"), OCI_LAYOUT).unwrap();
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_INDEX}","manifests":[{}]}}"#,
            descriptors.join(",")
        ),
    )
    .unwrap();
}

/// The two sample layers and the sample image over them: layers l1, l2, l1 (the first and
/// third the same), uncompressed, tagged `tags`.
pub fn sample(tags: &[&str]) -> (Vec<u8>, Vec<u8>, Image) {
    let (l1, l2) = (layer(1), layer(2));
    let image = Image::new(vec![l1.clone(), l2.clone(), l1.clone()], "/bin/hi", tags);
    (l1, l2, image)
}
