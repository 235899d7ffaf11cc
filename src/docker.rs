//! Docker's image archive, as `docker save` before 25, `podman save` and skopeo's
//! `docker-archive:` write it: `manifest.json` lists each image by the paths of its config
//! and layer files (`Config`, `Layers`) and its names (`RepoTags`); layers may be reached
//! through relative symbolic links; layer files are plain tars or compressed ones, named by
//! no digest of theirs. This module owns what such an archive means, whoever reads it (the
//! import stream, the mount's write side): the shape of `manifest.json`, paths and links
//! resolved without ever leaving the archive, compression told apart by magic bytes, the
//! uncompressed hash (diff_id) of a layer, and the OCI manifest made for each image, whose
//! bytes depend on nothing but the config and the layers, so the same archive always gives
//! the same manifest digest. Messages are plain strings: callers say which file they are of.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::oci::{
    Descriptor, Platform, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_ZSTD, MEDIA_OCI_MANIFEST,
};
use crate::reference::Reference;

/// The file that lists an archive's images.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Docker's legacy list of names (read by nobody since manifest.json exists; ignored).
pub const REPOSITORIES_FILE: &str = "repositories";
/// Largest `manifest.json` read (containers/image reads 1 MiB; docker has no limit).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Most symbolic links one archive may hold.
pub const MAX_LINKS: usize = 100_000;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// A zstd skippable frame: `0x184D2A50..=0x184D2A5F`, little-endian.
const ZSTD_SKIPPABLE_TAIL: &[u8] = &[0x2a, 0x4d, 0x18];
const BZIP2_MAGIC: &[u8] = b"BZh";
const XZ_MAGIC: &[u8] = &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];

/// One image of `manifest.json`: paths cleaned (no `./`), names checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub config: String,
    pub repo_tags: Vec<Reference>,
    pub layers: Vec<String>,
}

/// An item as written; `Parent`, `LayerSources` and anything else are ignored.
#[derive(Deserialize)]
#[serde(expecting = "an image {\"Config\", \"RepoTags\", \"Layers\"}")]
struct RawItem {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Reads `manifest.json`: an array of items, each with a config path, layer paths and
/// `NAME:TAG` names (absent, null or empty: the image has none).
pub fn parse_manifest(bytes: &[u8]) -> Result<Vec<Item>, String> {
    let raw: Option<Vec<RawItem>> = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a docker archive's list of images: {e}"))?;
    let raw = raw.ok_or("is null, not a list of images")?;
    let mut items = Vec::with_capacity(raw.len());
    for (n, r) in raw.into_iter().enumerate() {
        let at = |m: String| format!("item {}: {m}", n + 1);
        let config = clean_path(&r.config).map_err(|m| at(format!("Config: {m}")))?;
        let layers = r
            .layers
            .iter()
            .map(|l| clean_path(l).map_err(|m| at(format!("Layers: {m}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let mut repo_tags: Vec<Reference> = Vec::new();
        let mut seen = BTreeSet::new();
        for t in r.repo_tags.unwrap_or_default() {
            let name = repo_tag(&t).map_err(&at)?;
            if seen.insert(name.clone()) {
                repo_tags.push(name);
            }
        }
        items.push(Item {
            config,
            repo_tags,
            layers,
        });
    }
    check_tags_unique(&items)?;
    Ok(items)
}

/// No name may be given to two different images (an item's own repeats are dropped already).
fn check_tags_unique(items: &[Item]) -> Result<(), String> {
    let mut first: BTreeMap<&Reference, usize> = BTreeMap::new();
    for (n, item) in items.iter().enumerate() {
        for tag in &item.repo_tags {
            let Some(earlier) = first.insert(tag, n + 1) else {
                continue;
            };
            let other = &items[earlier - 1];
            if other.config != item.config || other.layers != item.layers {
                return Err(format!(
                    "RepoTags {tag} names two images (items {earlier} and {})",
                    n + 1
                ));
            }
        }
    }
    Ok(())
}

/// A `RepoTags` entry: a name with a tag, no digest, taken as written.
fn repo_tag(t: &str) -> Result<Reference, String> {
    let bad = |why: String| format!("RepoTags {:?} is not NAME:TAG ({why})", printable(t));
    let name: Reference = t.parse().map_err(|e| bad(format!("{e}")))?;
    if name.tag().is_none() {
        return Err(bad("a digest is not a tag".into()));
    }
    Ok(name)
}

fn printable(s: &str) -> String {
    crate::error::printable(s)
}

/// A path inside the archive with `.` and empty parts dropped; absolute paths and `..` are
/// refused.
pub fn clean_path(p: &str) -> Result<String, String> {
    if p.starts_with('/') {
        return Err(format!("{:?}: absolute paths are refused", printable(p)));
    }
    let mut parts = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{:?}: '..' is refused", printable(p))),
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(format!("{:?}: not a file's path", printable(p)));
    }
    Ok(parts.join("/"))
}

/// The symbolic links of an archive, each resolved to the path it names inside it.
#[derive(Debug, Default)]
pub struct Links {
    to: BTreeMap<String, String>,
}

impl Links {
    pub fn new() -> Links {
        Links::default()
    }

    /// Records link `path` (a cleaned path) to `target`, read from the link's directory. An
    /// absolute target, or one whose `..` leaves the archive, is refused.
    pub fn add(&mut self, path: &str, target: &str) -> Result<(), String> {
        let shown = || format!("symbolic link {} -> {}", printable(path), printable(target));
        if target.starts_with('/') {
            return Err(format!(
                "{}: a link to an absolute path is refused",
                shown()
            ));
        }
        let mut parts: Vec<&str> = path.split('/').collect();
        parts.pop();
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(format!("{}: escapes the archive", shown()));
                    }
                }
                _ => parts.push(part),
            }
        }
        if parts.is_empty() {
            return Err(format!("{}: names no file", shown()));
        }
        if self.to.len() >= MAX_LINKS {
            return Err(format!("more than {MAX_LINKS} symbolic links"));
        }
        if self.to.insert(path.to_owned(), parts.join("/")).is_some() {
            return Err(format!("{} appears twice", printable(path)));
        }
        Ok(())
    }

    /// Whether `path` is a link.
    pub fn is_link(&self, path: &str) -> bool {
        self.to.contains_key(path)
    }

    /// What `path` names: itself when it is no link, its target when it is one (one hop: a
    /// link to a link is refused, as containers/image refuses it).
    pub fn resolve<'a>(&'a self, path: &'a str) -> Result<&'a str, String> {
        match self.to.get(path) {
            None => Ok(path),
            Some(t) if self.to.contains_key(t) => Err(format!(
                "symbolic link {} points to another link, {}",
                printable(path),
                printable(t)
            )),
            Some(t) => Ok(t),
        }
    }

    /// Every link and the path it resolves to.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.to.iter().map(|(a, b)| (a.as_str(), b.as_str()))
    }
}

/// How a layer file is compressed, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

impl Compression {
    /// Bytes `sniff` needs to tell them all apart.
    pub const SNIFF_LEN: usize = 6;

    pub fn sniff(head: &[u8]) -> Compression {
        let zstd_skippable =
            head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == *ZSTD_SKIPPABLE_TAIL;
        if head.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(ZSTD_MAGIC) || zstd_skippable {
            Compression::Zstd
        } else if head.starts_with(BZIP2_MAGIC) {
            Compression::Bzip2
        } else if head.starts_with(XZ_MAGIC) {
            Compression::Xz
        } else {
            Compression::None
        }
    }

    /// The OCI media type of a layer so compressed; bzip2 and xz have none.
    pub fn layer_media_type(self) -> Result<&'static str, String> {
        match self {
            Compression::None => Ok(MEDIA_OCI_LAYER),
            Compression::Gzip => Ok(MEDIA_OCI_LAYER_GZIP),
            Compression::Zstd => Ok(MEDIA_OCI_LAYER_ZSTD),
            Compression::Bzip2 => {
                Err("bzip2 compression is not supported (OCI has no media type for it)".into())
            }
            Compression::Xz => {
                Err("xz compression is not supported (OCI has no media type for it)".into())
            }
        }
    }
}

/// A sha256 of what is written.
struct HashWriter(Hasher);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn hash_writer() -> HashWriter {
    HashWriter(Algorithm::Sha256.hasher())
}

/// The diff_id of a layer whose own digest is `digest`, compressed with `c`: that digest for
/// a plain tar (no second hash), else the hash of what `r` (its bytes) decompresses to; bzip2
/// and xz have no OCI media type and are refused.
pub fn layer_diff_id(r: &mut dyn Read, c: Compression, digest: &Digest) -> Result<Digest, String> {
    match c {
        Compression::None => Ok(digest.clone()),
        Compression::Gzip | Compression::Zstd => {
            diff_id_of(r, c).map_err(|e| format!("cannot decompress it: {e}"))
        }
        other => Err(other.layer_media_type().err().unwrap_or_default()),
    }
}

/// The sha256 of what `r` holds once decompressed (`c`), read to its end.
pub fn diff_id_of(r: &mut dyn Read, c: Compression) -> io::Result<Digest> {
    let mut hw = hash_writer();
    match c {
        Compression::None => {
            io::copy(r, &mut hw)?;
        }
        Compression::Gzip => {
            io::copy(
                &mut flate2::read::MultiGzDecoder::new(io::BufReader::new(r)),
                &mut hw,
            )?;
        }
        Compression::Zstd => {
            io::copy(&mut zstd::stream::read::Decoder::new(r)?, &mut hw)?;
        }
        other => {
            let why = other.layer_media_type().err().unwrap_or_default();
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
    }
    Ok(hw.0.finish())
}

/// A layer file as read: its digest and size as stored, how it is compressed, and the
/// digest of its uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub compression: Compression,
    pub diff_id: Digest,
}

/// A config whose file name is its digest (`<hex>.json`, crane's `sha256:<hex>`, docker
/// 25's `blobs/sha256/<hex>`) must hash to it.
pub fn check_config_name(path: &str, digest: &Digest) -> Result<(), String> {
    let base = path.rsplit('/').next().unwrap_or(path);
    let named = if let Some(hex) = path.strip_prefix("blobs/sha256/") {
        Some(hex)
    } else if let Some(hex) = base.strip_prefix("sha256:") {
        Some(hex)
    } else {
        base.strip_suffix(".json")
    };
    match named {
        Some(hex) if is_sha256_hex(hex) && hex != digest.hex() => {
            Err(format!("config {:?} hashes to {digest}", printable(path)))
        }
        _ => Ok(()),
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == Algorithm::Sha256.hex_len()
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a config says of its layers and platform.
#[derive(Deserialize)]
struct ConfigView {
    rootfs: RootFs,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<Digest>,
}

/// The manifest made for an image: fields in this order, nothing else.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// What a made manifest needs of an image config: read once, however many images use it.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    pub digest: Digest,
    pub size: u64,
    pub diff_ids: Vec<Digest>,
    pub platform: Option<Platform>,
}

impl ImageConfig {
    /// Reads config `bytes` (of digest `digest`), found at `path` (for messages).
    pub fn parse(path: &str, digest: &Digest, bytes: &[u8]) -> Result<ImageConfig, String> {
        let view: ConfigView = serde_json::from_slice(bytes)
            .map_err(|e| format!("config {:?} is not an image config: {e}", printable(path)))?;
        if view.rootfs.kind != "layers" {
            return Err(format!(
                "config {:?}: rootfs type {:?}, expected \"layers\"",
                printable(path),
                printable(&view.rootfs.kind)
            ));
        }
        let platform = match (view.architecture, view.os) {
            (Some(architecture), Some(os)) => Some(Platform {
                architecture,
                os,
                os_version: None,
                os_features: None,
                variant: view.variant,
            }),
            _ => None,
        };
        Ok(ImageConfig {
            digest: digest.clone(),
            size: bytes.len() as u64,
            diff_ids: view.rootfs.diff_ids,
            platform,
        })
    }
}

/// The OCI manifest of manifest.json's item number `item` (from 1): its config (kept byte
/// for byte) and its layers as stored, in order, each checked against the config's
/// `rootfs.diff_ids`. Returns the manifest's bytes and its descriptor (with the config's
/// platform).
pub fn synthesize(
    item: usize,
    item_ref: &Item,
    config: &ImageConfig,
    layers: &[Layer],
) -> Result<(Vec<u8>, Descriptor), String> {
    let diff_ids = &config.diff_ids;
    if diff_ids.len() != layers.len() || item_ref.layers.len() != layers.len() {
        return Err(format!(
            "manifest.json item {item}: {} layers, config has {} diff_ids",
            item_ref.layers.len(),
            diff_ids.len()
        ));
    }
    let mut descs = Vec::with_capacity(layers.len());
    for ((layer, want), path) in layers.iter().zip(diff_ids).zip(&item_ref.layers) {
        if &layer.diff_id != want {
            return Err(format!(
                "layer {:?}: uncompressed content is {}, config says {want}",
                printable(path),
                layer.diff_id
            ));
        }
        let media = layer
            .compression
            .layer_media_type()
            .map_err(|m| format!("layer {:?}: {m}", printable(path)))?;
        descs.push(Descriptor::new(media, layer.digest.clone(), layer.size));
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_OCI_MANIFEST,
        config: Descriptor::new(MEDIA_OCI_CONFIG, config.digest.clone(), config.size),
        layers: descs,
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let mut desc = Descriptor::new(
        MEDIA_OCI_MANIFEST,
        Digest::of(Algorithm::Sha256, &bytes),
        bytes.len() as u64,
    );
    desc.platform = config.platform.clone();
    Ok((bytes, desc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, b)
    }

    #[test]
    fn manifest_shapes() {
        let ok = br#"[{"Config":"./c.json","RepoTags":["a/b:1","a/b:1","x.io/y:z"],"Layers":["l/layer.tar"],"Parent":"p"},{"Config":"d","Layers":[]},{"Config":"e","RepoTags":null,"Layers":[]}]"#;
        let items = parse_manifest(ok).unwrap();
        assert_eq!(items[0].config, "c.json");
        assert_eq!(items[0].repo_tags.len(), 2);
        assert_eq!(items[0].layers, ["l/layer.tar"]);
        assert!(items[1].repo_tags.is_empty() && items[2].repo_tags.is_empty());
        for bad in [
            &b"{}"[..],
            b"null",
            b"[1]",
            br#"[{"Config":3,"Layers":[]}]"#,
            br#"[{"Config":"c","Layers":"x"}]"#,
            b"[",
            br#"[{"Config":"/etc/c","Layers":[]}]"#,
            br#"[{"Config":"c","Layers":["../x"]}]"#,
        ] {
            assert!(
                parse_manifest(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for tag in [
            "Bad/Tag:1",
            "noTagAtAll",
            "",
            &format!("a@sha256:{}", "0".repeat(64)),
        ] {
            let m = format!(r#"[{{"Config":"c","RepoTags":[{tag:?}],"Layers":[]}}]"#);
            let e = parse_manifest(m.as_bytes()).unwrap_err();
            assert!(e.contains("RepoTags") && e.starts_with("item 1:"), "{e}");
        }
    }

    #[test]
    fn links_stay_inside() {
        let mut l = Links::new();
        l.add("v1/layer.tar", "../abc.tar").unwrap();
        l.add("v2/layer.tar", "../v1/layer.tar").unwrap();
        l.add("x/y", "./z").unwrap();
        assert_eq!(l.resolve("v1/layer.tar").unwrap(), "abc.tar");
        assert_eq!(l.resolve("x/y").unwrap(), "x/z");
        assert_eq!(l.resolve("plain").unwrap(), "plain");
        assert!(l
            .resolve("v2/layer.tar")
            .unwrap_err()
            .contains("another link"));
        assert!(l
            .add("a/b", "/etc/passwd")
            .unwrap_err()
            .contains("absolute"));
        assert!(l.add("a/b", "../../x").unwrap_err().contains("escapes"));
        assert!(l.add("top", "..").unwrap_err().contains("escapes"));
        assert!(l.add("v1/layer.tar", "x").unwrap_err().contains("twice"));
    }

    #[test]
    fn sniffs_compression() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(
            Compression::sniff(&[0x5a, 0x2a, 0x4d, 0x18]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"BZh91AY&SY"), Compression::Bzip2);
        assert_eq!(
            Compression::sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
            Compression::Xz
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
        assert_eq!(Compression::sniff(b""), Compression::None);
        assert!(Compression::Bzip2.layer_media_type().is_err());
    }

    #[test]
    fn diff_ids_of_compressed_layers() {
        let tar: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let want = sha(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&tar[..], 1).unwrap();
        for (bytes, c) in [(&gz, Compression::Gzip), (&zs, Compression::Zstd)] {
            assert_eq!(Compression::sniff(bytes), c);
            assert_eq!(diff_id_of(&mut &bytes[..], c).unwrap(), want);
            let cut = &bytes[..bytes.len() / 2];
            assert!(
                diff_id_of(&mut &cut[..], c).is_err(),
                "a cut {c:?} stream has no diff_id"
            );
        }
        assert_eq!(diff_id_of(&mut &tar[..], Compression::None).unwrap(), want);
    }

    #[test]
    fn config_names() {
        let d = sha(b"cfg");
        let other = "0".repeat(64);
        assert!(check_config_name(&format!("{}.json", d.hex()), &d).is_ok());
        assert!(check_config_name("cfg.json", &d).is_ok());
        for p in [
            format!("{other}.json"),
            format!("sha256:{other}"),
            format!("blobs/sha256/{other}"),
        ] {
            assert!(
                check_config_name(&p, &d).unwrap_err().contains("hashes to"),
                "{p}"
            );
        }
    }

    #[test]
    fn made_manifests_are_exact() {
        let l1 = b"layer one".to_vec();
        let l2 = b"layer two".to_vec();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}","{}","{}"]}}}}"#,
            sha(&l1),
            sha(&l2),
            sha(&l1)
        );
        let layer = |b: &[u8]| Layer {
            digest: sha(b),
            size: b.len() as u64,
            compression: Compression::None,
            diff_id: sha(b),
        };
        let item = Item {
            config: "c.json".into(),
            repo_tags: vec![],
            layers: vec!["a".into(), "b".into(), "a".into()],
        };
        let layers = [layer(&l1), layer(&l2), layer(&l1)];
        let cd = sha(config.as_bytes());
        let parsed = ImageConfig::parse("c.json", &cd, config.as_bytes()).unwrap();
        let (bytes, desc) = synthesize(1, &item, &parsed, &layers).unwrap();
        let l = |b: &[u8]| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}"#,
                sha(b),
                b.len()
            )
        };
        let want = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{},{},{}]}}"#,
            config.len(),
            l(&l1),
            l(&l2),
            l(&l1)
        );
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), want);
        assert_eq!(desc.digest, sha(&bytes));
        assert_eq!(desc.platform.unwrap().architecture, "amd64");

        let short = Item {
            layers: vec!["a".into(), "b".into()],
            ..item.clone()
        };
        let e = synthesize(2, &short, &parsed, &layers[..2]).unwrap_err();
        assert!(e.contains("item 2: 2 layers, config has 3 diff_ids"), "{e}");
        let swapped = [layer(&l2), layer(&l2), layer(&l1)];
        let e = synthesize(1, &item, &parsed, &swapped).unwrap_err();
        assert!(
            e.contains("layer \"a\"") && e.contains("config says"),
            "{e}"
        );
    }
}
