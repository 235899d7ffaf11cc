//! OCI image-spec types and the walk over an image's closure: descriptors, `index.json`, the
//! children of indexes and manifests (OCI and Docker media types), platforms, and the set of
//! blobs reachable from a root descriptor, with size checks, a JSON size cap and cycle detection.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_ARTIFACT: &str = "application/vnd.oci.artifact.manifest.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's image config.
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker's layer types.
pub const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MEDIA_DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
pub const MEDIA_DOCKER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar";
pub const MEDIA_DOCKER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// OCI's config and layer types.
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_OCI_NONDIST: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const MEDIA_OCI_NONDIST_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// `org.opencontainers.image.ref.name`: the tag, in a layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// `io.containerd.image.name`: the full image name, as containerd writes and reads it.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// The only image-layout version there is.
pub const LAYOUT_VERSION: &str = "1.0.0";
/// Largest manifest, index blob, config read as JSON, or `oci-layout` accepted: they are read
/// whole into memory, and a walk reads many.
pub const MAX_JSON_SIZE: u64 = 4 << 20;
/// Largest `index.json` of a layout accepted: a flat list with one descriptor per image (about
/// 250 bytes a tag), so a repository of 60,000 tags still fits, while what parsing it costs
/// (up to about 16 times its size for hostile JSON of tiny strings) stays bounded. What
/// `export` and the mount write must read back, so export refuses to write a larger one.
pub const MAX_INDEX_JSON_SIZE: u64 = 16 << 20;
/// Largest descriptor of one image in `index.json` (and in an image record), as compact JSON:
/// room for many annotations, none for a record that every later `images` must parse.
pub const MAX_DESCRIPTOR_SIZE: u64 = 16 << 10;
/// Deepest nesting of indexes accepted (index -> index -> ... -> manifest).
pub const MAX_DEPTH: usize = 8;

/// What a media type says about a blob's children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Index,
    Manifest,
    Artifact,
    Leaf,
}

pub fn kind_of(media_type: &str) -> Kind {
    match media_type {
        MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => Kind::Index,
        MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST => Kind::Manifest,
        MEDIA_OCI_ARTIFACT => Kind::Artifact,
        _ => Kind::Leaf,
    }
}

/// Layers that registries may refuse to carry; a layout may lack them.
pub fn is_non_distributable(media_type: &str) -> bool {
    media_type.contains("nondistributable") || media_type.contains(".foreign.")
}

/// An OCI content descriptor. Fields are written in a fixed order and annotations sorted, so
/// the same descriptor always serialises to the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    #[serde(deserialize_with = "non_negative_size")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Descriptor {
    /// A descriptor with nothing but its media type, digest and size.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: None,
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            data: None,
        }
    }
}

fn non_negative_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    let n = i64::deserialize(d)?;
    u64::try_from(n).map_err(|_| serde::de::Error::custom(format!("negative size {n}")))
}

/// The platform a manifest runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A platform asked for on the command line: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl PlatformSpec {
    pub fn matches(&self, p: &Platform) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && self
                .variant
                .as_ref()
                .is_none_or(|v| p.variant.as_deref() == Some(v))
    }

    /// The platform this program runs on, in OCI's words.
    pub fn host() -> PlatformSpec {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        PlatformSpec {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }
}

impl FromStr for PlatformSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<PlatformSpec> {
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(Error::Invalid(format!(
                "invalid platform {s:?}: expected os/arch[/variant]"
            )));
        }
        Ok(PlatformSpec {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A layout's `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// `null` reads as none: umoci writes an empty layout's index so.
    #[serde(deserialize_with = "null_as_empty")]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A list that may be written as `null` for none (Go's encoding of a nil slice).
fn null_as_empty<'de, D, T>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

impl ImageIndex {
    pub fn new(manifests: Vec<Descriptor>) -> ImageIndex {
        ImageIndex {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_INDEX.to_owned()),
            manifests,
            annotations: BTreeMap::new(),
        }
    }

    /// Parses `index.json`; `file` names it in errors.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<ImageIndex> {
        check_index_size(file, bytes.len() as u64)?;
        let index: ImageIndex = parse_json(file, bytes)?;
        if index.schema_version != 2 {
            return Err(Error::layout(
                file,
                format!("schemaVersion {} is not 2", index.schema_version),
            ));
        }
        for d in &index.manifests {
            let size = serde_json::to_vec(d).map_or(u64::MAX, |v| v.len() as u64);
            if size > MAX_DESCRIPTOR_SIZE {
                return Err(Error::layout(
                    file,
                    format!(
                        "the descriptor of {} is {size} bytes, over the {MAX_DESCRIPTOR_SIZE}-byte limit",
                        d.digest
                    ),
                ));
            }
        }
        Ok(index)
    }

    /// The canonical bytes of this index: compact JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("an index always serialises");
        v.push(b'\n');
        v
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutFile {
    image_layout_version: String,
}

/// The bytes of a valid `oci-layout` file.
pub fn layout_file_bytes() -> Vec<u8> {
    format!("{{\"imageLayoutVersion\":\"{LAYOUT_VERSION}\"}}").into_bytes()
}

/// Checks an `oci-layout` file.
pub fn check_layout_file(file: &str, bytes: &[u8]) -> Result<()> {
    check_json_size(file, bytes.len() as u64)?;
    let l: LayoutFile = parse_json(file, bytes)?;
    if l.image_layout_version != LAYOUT_VERSION {
        return Err(Error::layout(
            file,
            format!(
                "imageLayoutVersion {:?} is not supported (only {LAYOUT_VERSION})",
                l.image_layout_version
            ),
        ));
    }
    Ok(())
}

pub fn check_json_size(file: &str, size: u64) -> Result<()> {
    check_cap(file, size, MAX_JSON_SIZE)
}

/// Refuses a layout's `index.json` over `MAX_INDEX_JSON_SIZE` before it is read.
pub fn check_index_size(file: &str, size: u64) -> Result<()> {
    check_cap(file, size, MAX_INDEX_JSON_SIZE)
}

fn check_cap(file: &str, size: u64, cap: u64) -> Result<()> {
    if size > cap {
        return Err(Error::TooLarge {
            file: file.to_owned(),
            size,
            cap,
        });
    }
    Ok(())
}

fn parse_json<'a, T: Deserialize<'a>>(file: &str, bytes: &'a [u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Json {
        file: file.to_owned(),
        message: format!("invalid JSON: {e}"),
    })
}

/// The fields of an index or manifest that lead to other blobs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Links {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    blobs: Option<Vec<Descriptor>>,
}

/// The child descriptors of the blob `desc` whose bytes are `bytes`.
pub fn children(desc: &Descriptor, bytes: &[u8]) -> Result<Vec<Descriptor>> {
    let kind = kind_of(&desc.media_type);
    if kind == Kind::Leaf {
        return Ok(Vec::new());
    }
    let file = format!("blob {}", desc.digest);
    let links: Links = parse_json(&file, bytes)?;
    if let Some(mt) = &links.media_type {
        if kind_of(mt) != kind {
            return Err(Error::Json {
                file,
                message: format!(
                    "mediaType {mt} does not match its descriptor's {}",
                    desc.media_type
                ),
            });
        }
    }
    let missing = |field: &str| Error::Json {
        file: file.clone(),
        message: format!("{} without {field}", desc.media_type),
    };
    Ok(match kind {
        Kind::Index => links.manifests.ok_or_else(|| missing("manifests"))?,
        Kind::Manifest => {
            let mut v = vec![links.config.ok_or_else(|| missing("config"))?];
            v.extend(links.layers.unwrap_or_default());
            v
        }
        Kind::Artifact => links.blobs.unwrap_or_default(),
        Kind::Leaf => Vec::new(),
    })
}

/// Where a walk finds blobs: the store, or a layout being imported.
pub trait BlobSource {
    /// The size of the blob if it is present.
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;
    /// The whole content of a present blob of at most `MAX_JSON_SIZE` bytes, verified against
    /// `desc` (size, and digest where the source has not verified it already).
    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>>;
    /// The size of the blob `desc` names if it is present: a source that cannot tell a
    /// blob's size without asking for it (a registry) answers from the descriptor.
    fn blob_size_of(&self, desc: &Descriptor) -> Result<Option<u64>> {
        self.blob_size(&desc.digest)
    }
}

/// A borrowed source is a source (so a caller can pick one of several at run time).
impl<T: BlobSource + ?Sized> BlobSource for &T {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        (**self).blob_size(digest)
    }

    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        (**self).read_small(desc)
    }

    fn blob_size_of(&self, desc: &Descriptor) -> Result<Option<u64>> {
        (**self).blob_size_of(desc)
    }
}

/// What a walk does with a blob that is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissing {
    /// Fail, naming the blob and what referred to it; damage fails too.
    Fail,
    /// Leave it and its children out (a partial pull of a multi-platform image); damage fails.
    Skip,
    /// Leave out a manifest an index lists for a platform (one not pulled) and its children;
    /// anything else missing fails, as damage does.
    SkipPlatforms,
    /// Go on past what is missing or damaged and say which (images, fsck, gc, the mount's
    /// pending images).
    Report,
}

/// How a walk treats what it meets: the one policy every consumer states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub on_missing: OnMissing,
    /// Most ancestors a blob may have: an index nested `max_depth` deep is refused.
    pub max_depth: usize,
}

impl Policy {
    pub const FAIL: Policy = Policy::new(OnMissing::Fail);
    pub const SKIP: Policy = Policy::new(OnMissing::Skip);
    pub const REPORT: Policy = Policy::new(OnMissing::Report);

    pub const fn new(on_missing: OnMissing) -> Policy {
        Policy {
            on_missing,
            max_depth: MAX_DEPTH,
        }
    }
}

/// An image's closure as a walk found it.
#[derive(Debug, Default)]
pub struct Closure {
    /// Blobs that are there with the size their descriptor gives, keyed by digest (the first
    /// descriptor met for each).
    pub present: BTreeMap<Digest, Descriptor>,
    /// Blobs that are not there (non-distributable layers are not counted); only filled under
    /// `OnMissing::Report` and `OnMissing::Skip`.
    pub missing: Vec<Descriptor>,
    /// Blobs that are there but wrong: a size that does not match, an index or manifest that
    /// does not hash to its digest or does not parse, a loop or a walk too deep. Only filled
    /// under `OnMissing::Report`: other policies fail instead.
    pub damaged: Vec<(Descriptor, Error)>,
    /// Of `missing`, the manifests an index lists for a platform: a platform left out of a
    /// pull (never the image's own root).
    pub left_out: Vec<Descriptor>,
}

impl Closure {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.damaged.is_empty()
    }

    /// Whether the walk could not tell every blob the image refers to, so gc must not sweep:
    /// an index or manifest is missing, or anything is damaged (a damaged blob is not counted
    /// as present, and a walk too deep or in a loop stops before the blobs below). A platform's
    /// manifest an index lists is not unknown when it is missing: a single-platform pull leaves
    /// the others out, as containerd's does, and their blobs belong to no image here.
    pub fn has_unknown_children(&self) -> bool {
        !self.damaged.is_empty()
            || self
                .missing
                .iter()
                .any(|d| kind_of(&d.media_type) != Kind::Leaf && !self.left_out.contains(d))
    }

    /// One line on the first thing wrong, for messages.
    pub fn first_problem(&self) -> Option<String> {
        if let Some(d) = self.missing.first() {
            return Some(format!("blob {} is missing", d.digest));
        }
        self.damaged.first().map(|(_, e)| e.to_string())
    }
}

/// Every blob reachable from `root`, root included, keyed by digest.
pub fn closure(
    src: &dyn BlobSource,
    root: &Descriptor,
    on_missing: OnMissing,
) -> Result<BTreeMap<Digest, Descriptor>> {
    Ok(walk(src, root, Policy::new(on_missing))?.present)
}

/// The one walk of an image's closure: import, export, `images`, gc, fsck and the mount all
/// call it, so they agree on what an image needs.
///
/// A blob is what its descriptor's media type says: an index, a manifest, an artifact
/// manifest, or an opaque leaf (layers, configs and every media type this walk does not know,
/// as containerd's `images.ChildrenHandler` treats them). A digest is walked once per kind it
/// is reached as: a manifest listed once under a layer media type and once as a manifest is
/// walked as a manifest too, so its config and layers belong to the image. Under
/// `OnMissing::Report` the walk never fails: problems are in the result.
pub fn walk(src: &dyn BlobSource, root: &Descriptor, policy: Policy) -> Result<Closure> {
    let mut w = Walker {
        src,
        policy,
        out: Closure::default(),
        seen: HashSet::new(),
        path: Vec::new(),
    };
    w.visit(root, None)?;
    Ok(w.out)
}

struct Walker<'a> {
    src: &'a dyn BlobSource,
    policy: Policy,
    out: Closure,
    /// What was walked already, and as what.
    seen: HashSet<(Digest, Kind)>,
    /// The ancestors of the blob being walked.
    path: Vec<Digest>,
}

impl Walker<'_> {
    fn visit(&mut self, desc: &Descriptor, referrer: Option<&Digest>) -> Result<()> {
        if self.path.contains(&desc.digest) {
            let e = Error::Json {
                file: format!("blob {}", referrer.unwrap_or(&desc.digest)),
                message: format!("refers to itself through {}", desc.digest),
            };
            return self.damaged(desc, e);
        }
        if self.path.len() >= self.policy.max_depth {
            let e = Error::Json {
                file: format!("blob {}", desc.digest),
                message: format!("nested deeper than {} levels", self.policy.max_depth),
            };
            return self.damaged(desc, e);
        }
        let kind = kind_of(&desc.media_type);
        if !self.seen.insert((desc.digest.clone(), kind)) {
            return Ok(());
        }
        let size = match self.src.blob_size_of(desc) {
            Ok(Some(size)) => size,
            Ok(None) => return self.missing(desc, referrer),
            Err(e) => return self.damaged(desc, e),
        };
        if size != desc.size {
            let e = Error::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                found: size,
            };
            return self.damaged(desc, e);
        }
        self.out
            .present
            .entry(desc.digest.clone())
            .or_insert_with(|| desc.clone());
        if kind == Kind::Leaf {
            return Ok(());
        }
        let children = check_json_size(&format!("blob {}", desc.digest), desc.size)
            .and_then(|()| self.src.read_small(desc))
            .and_then(|bytes| children(desc, &bytes));
        let children = match children {
            Ok(c) => c,
            Err(e) => return self.damaged(desc, e),
        };
        self.path.push(desc.digest.clone());
        let walked = children
            .iter()
            .try_for_each(|child| self.visit(child, Some(&desc.digest)));
        self.path.pop();
        walked
    }

    fn missing(&mut self, desc: &Descriptor, referrer: Option<&Digest>) -> Result<()> {
        if is_non_distributable(&desc.media_type) {
            // Allowed to be absent here, but not as whatever else refers to the same digest:
            // a later reference must look again.
            self.seen
                .remove(&(desc.digest.clone(), kind_of(&desc.media_type)));
            return Ok(());
        }
        // A platform's manifest an index lists; an image's own root never is one.
        let left_out = referrer.is_some() && is_platform_child(desc);
        let skippable = match self.policy.on_missing {
            OnMissing::Fail => false,
            OnMissing::SkipPlatforms => left_out,
            OnMissing::Skip | OnMissing::Report => true,
        };
        if !skippable {
            return Err(Error::MissingBlob {
                digest: desc.digest.clone(),
                referrer: Some(
                    referrer.map_or_else(|| "index.json".to_owned(), |r| format!("blob {r}")),
                ),
            });
        }
        if left_out {
            self.out.left_out.push(desc.clone());
        }
        self.out.missing.push(desc.clone());
        Ok(())
    }

    fn damaged(&mut self, desc: &Descriptor, e: Error) -> Result<()> {
        if self.policy.on_missing != OnMissing::Report {
            return Err(e);
        }
        self.out.damaged.push((desc.clone(), e));
        Ok(())
    }
}

/// The descriptor a manifest's OCI 1.1 `subject` names, if its bytes have one.
pub fn subject_of(bytes: &[u8]) -> Option<Descriptor> {
    #[derive(Deserialize)]
    struct WithSubject {
        subject: Option<Descriptor>,
    }
    serde_json::from_slice::<WithSubject>(bytes).ok()?.subject
}

/// Whether `desc` is a manifest for one platform (what an index lists): when an index refers
/// to it and it is missing, a platform left out of a pull.
pub fn is_platform_child(desc: &Descriptor) -> bool {
    desc.platform.is_some() && kind_of(&desc.media_type) == Kind::Manifest
}

/// The manifest of `index` (read from `src`) that runs on `platform`; the first match wins.
pub fn select_platform(
    src: &dyn BlobSource,
    index: &Descriptor,
    platform: &PlatformSpec,
) -> Result<Option<Descriptor>> {
    if kind_of(&index.media_type) != Kind::Index {
        return Ok(Some(index.clone()));
    }
    let bytes = src.read_small(index)?;
    Ok(children(index, &bytes)?.into_iter().find(|d| {
        kind_of(&d.media_type) == Kind::Manifest
            && d.platform.as_ref().is_some_and(|p| platform.matches(p))
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::digest::Algorithm;
    use std::collections::{BTreeSet, HashMap};

    /// Blobs in memory, unverified, so tests can build graphs hashing never allows.
    #[derive(Default)]
    pub struct MemSource(pub HashMap<Digest, Vec<u8>>);

    impl MemSource {
        pub fn add(&mut self, media_type: &str, bytes: Vec<u8>) -> Descriptor {
            let digest = Digest::of(Algorithm::Sha256, &bytes);
            let d = desc(media_type, digest.clone(), bytes.len() as u64);
            self.0.insert(digest, bytes);
            d
        }
    }

    impl BlobSource for MemSource {
        fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
            Ok(self.0.get(digest).map(|b| b.len() as u64))
        }
        fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
            Ok(self.0[&desc.digest].clone())
        }
    }

    pub fn desc(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor::new(media_type, digest, size)
    }

    fn manifest_json(config: &Descriptor, layers: &[&Descriptor]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
            "config": config, "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn an_index_with_null_or_no_manifests_lists_none_and_a_missing_list_is_refused() {
        for bytes in [
            &br#"{"schemaVersion":2,"manifests":null}"#[..],
            br#"{"schemaVersion":2,"manifests":[]}"#,
        ] {
            let index = ImageIndex::parse("x/index.json", bytes).unwrap();
            assert!(index.manifests.is_empty());
        }
        let err = ImageIndex::parse("x/index.json", br#"{"schemaVersion":2}"#).unwrap_err();
        assert!(err.to_string().contains("manifests"), "{err}");
    }

    #[test]
    fn closure_of_an_index_covers_manifests_configs_and_layers() {
        let mut src = MemSource::default();
        let layer = src.add("application/vnd.oci.image.layer.v1.tar", b"layer".to_vec());
        let config = src.add("application/vnd.oci.image.config.v1+json", b"{}".to_vec());
        let m = src.add(
            MEDIA_OCI_MANIFEST,
            manifest_json(&config, &[&layer, &layer]),
        );
        let idx_bytes = serde_json::to_vec(&ImageIndex::new(vec![m.clone()])).unwrap();
        let idx = src.add(MEDIA_OCI_INDEX, idx_bytes);
        let c = closure(&src, &idx, OnMissing::Fail).unwrap();
        let got: BTreeSet<_> = c.keys().cloned().collect();
        let want: BTreeSet<_> = [&layer, &config, &m, &idx]
            .iter()
            .map(|d| d.digest.clone())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn closure_faults_name_the_blob() {
        let mut src = MemSource::default();
        let config = src.add("application/vnd.oci.image.config.v1+json", b"{}".to_vec());
        let absent = desc(
            "application/vnd.oci.image.layer.v1.tar",
            Digest::of(Algorithm::Sha256, b"x"),
            1,
        );
        let missing = src.add(MEDIA_OCI_MANIFEST, manifest_json(&config, &[&absent]));
        let mut short = config.clone();
        short.size -= 1;
        let wrong_size = src.add(MEDIA_OCI_MANIFEST, manifest_json(&short, &[]));
        let bad_json = src.add(MEDIA_OCI_MANIFEST, b"{\"config\":".to_vec());
        let wrong_type = src.add(
            MEDIA_OCI_MANIFEST,
            br#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec(),
        );
        let no_config = src.add(MEDIA_OCI_MANIFEST, br#"{"layers":[]}"#.to_vec());
        let cases: [(&Descriptor, String); 5] = [
            (
                &missing,
                format!(
                    "blob {}: missing (referenced by blob {})",
                    absent.digest, missing.digest
                ),
            ),
            (
                &wrong_size,
                format!("blob {}: size is 2 bytes, expected 1", config.digest),
            ),
            (&bad_json, format!("blob {}: invalid JSON", bad_json.digest)),
            (
                &wrong_type,
                format!("blob {}: mediaType", wrong_type.digest),
            ),
            (
                &no_config,
                format!(
                    "blob {}: {MEDIA_OCI_MANIFEST} without config",
                    no_config.digest
                ),
            ),
        ];
        for (root, want) in cases {
            let err = closure(&src, root, OnMissing::Fail)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&want),
                "{err:?} does not start with {want:?}"
            );
        }
        // Skipping leaves the missing layer out instead.
        let c = closure(&src, &missing, OnMissing::Skip).unwrap();
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_digest_missing_as_a_foreign_layer_is_still_required_elsewhere() {
        let mut src = MemSource::default();
        let config = src.add("application/vnd.oci.image.config.v1+json", b"{}".to_vec());
        let absent = Digest::of(Algorithm::Sha256, b"absent");
        let foreign = desc(
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            absent.clone(),
            6,
        );
        let regular = desc("application/vnd.oci.image.layer.v1.tar", absent.clone(), 6);
        for layers in [[&foreign, &regular], [&regular, &foreign]] {
            let m = src.add(MEDIA_OCI_MANIFEST, manifest_json(&config, &layers));
            let err = closure(&src, &m, OnMissing::Fail).unwrap_err().to_string();
            assert!(err.contains(&format!("blob {absent}: missing")), "{err}");
            let c = walk(&src, &m, Policy::REPORT).unwrap();
            assert_eq!(c.missing.len(), 1, "{:?}", c.missing);
        }
        // Alone, a foreign layer may be absent.
        let m = src.add(MEDIA_OCI_MANIFEST, manifest_json(&config, &[&foreign]));
        assert!(walk(&src, &m, Policy::REPORT).unwrap().is_complete());
    }

    #[test]
    fn an_index_that_refers_to_itself_is_refused() {
        // Content can only name itself when nobody checks digests; the walk must not loop.
        let mut src = MemSource::default();
        let fake = Digest::of(Algorithm::Sha256, b"self");
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{MEDIA_OCI_INDEX}","digest":"{fake}","size":SIZE}}]}}"#
        );
        let len = body.len() - 4 + 3; // "SIZE" replaced by a three-digit number
        let body = body.replace("SIZE", &len.to_string());
        assert_eq!(body.len(), len);
        src.0.insert(fake.clone(), body.into_bytes());
        let root = desc(MEDIA_OCI_INDEX, fake.clone(), len as u64);
        let err = closure(&src, &root, OnMissing::Fail)
            .unwrap_err()
            .to_string();
        assert!(err.contains("refers to itself"), "{err}");
    }

    #[test]
    fn descriptors_refuse_negative_sizes_and_bad_digests() {
        let hex = "a".repeat(64);
        let bad = [
            (
                format!(r#"{{"mediaType":"x","digest":"sha256:{hex}","size":-1}}"#),
                "negative size -1",
            ),
            (
                format!(r#"{{"mediaType":"x","digest":"sha256:../{hex}","size":1}}"#),
                "invalid digest",
            ),
            (
                format!(r#"{{"mediaType":"x","digest":"SHA256:{hex}","size":1}}"#),
                "invalid digest",
            ),
            (
                format!(r#"{{"digest":"sha256:{hex}","size":1}}"#),
                "missing field `mediaType`",
            ),
        ];
        for (json, want) in bad {
            let err = serde_json::from_str::<Descriptor>(&json)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn layout_file_and_index_checks() {
        check_layout_file("oci-layout", &layout_file_bytes()).unwrap();
        for bad in [
            &br#"{"imageLayoutVersion":"2.0.0"}"#[..],
            b"{}",
            b"not json",
        ] {
            assert!(check_layout_file("oci-layout", bad).is_err());
        }
        let big = vec![b' '; MAX_INDEX_JSON_SIZE as usize + 1];
        let err = ImageIndex::parse("index.json", &big)
            .unwrap_err()
            .to_string();
        let want = format!("index.json: {} bytes is larger", MAX_INDEX_JSON_SIZE + 1);
        assert!(err.starts_with(&want), "{err}");
        // Blobs keep the smaller cap.
        assert!(check_json_size("blob", MAX_JSON_SIZE + 1).is_err());
        let err =
            ImageIndex::parse("index.json", br#"{"schemaVersion":1,"manifests":[]}"#).unwrap_err();
        assert!(err.to_string().contains("schemaVersion 1"));
    }

    #[test]
    fn platforms_parse_and_match() {
        let spec: PlatformSpec = "linux/arm64/v8".parse().unwrap();
        let p = Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            os_version: None,
            os_features: None,
            variant: Some("v8".into()),
        };
        assert!(spec.matches(&p));
        assert!("linux/arm64".parse::<PlatformSpec>().unwrap().matches(&p));
        assert!(!"linux/amd64".parse::<PlatformSpec>().unwrap().matches(&p));
        for bad in ["linux", "linux/", "a/b/c/d", ""] {
            assert!(bad.parse::<PlatformSpec>().is_err(), "{bad}");
        }
    }
}
