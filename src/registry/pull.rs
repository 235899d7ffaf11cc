//! `layoutfs pull`: a reference resolved to its manifest or index (OCI and docker schema 2;
//! schema 1 refused), the platform chosen, and the image brought in through the same import
//! every other source uses (`archive::import::import_from` with `Input::Blobs`): blobs the
//! store has are skipped, the others streamed from the registry into ingests several at
//! once, hashed as they arrive, and nothing is registered until the closure is in the store
//! and verified. A connection that breaks is taken up again with a Range request from where
//! the ingest stopped, and a pull that was killed leaves its ingests for the next one.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::manifest::OciDescriptor;
use parking_lot::Mutex;

use crate::archive::import::pull::Blobs;
use crate::archive::import::{import_from, Imported, Input};
use crate::content::Content;
use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::oci::{
    self, Descriptor, ImageIndex, Kind, OnMissing, PlatformSpec, ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME, MEDIA_OCI_INDEX as OCI_INDEX, MEDIA_OCI_MANIFEST,
};
use crate::reference::{check_repository, Reference, Target};

use super::client::{backoff, one_line, retry, Failure, Fetched, Remote, MANIFEST_TYPES, TRIES};
use super::name::RemoteRef;
use super::runtime::block_on;

/// Blobs copied at once from a registry.
const PARALLEL_BLOBS: usize = 4;
/// Bytes a connection must bring before its failure no longer counts against the tries.
const PROGRESS: u64 = 1 << 20;
/// Most referrers one pull brings (a registry's listing is not trusted to be small).
const MAX_REFERRERS: usize = 1000;

/// Which platforms of an index are pulled.
#[derive(Debug, Clone)]
pub enum Platforms {
    /// The one this machine runs.
    This,
    Only(PlatformSpec),
    All,
}

/// What `pull` is asked for beyond the reference.
#[derive(Debug, Clone)]
pub struct PullOptions {
    pub platforms: Platforms,
    /// The stored name (`name:tag`, or a repository taking the reference's tag or digest).
    pub name: Option<String>,
    /// Also pull the OCI 1.1 referrers of each manifest.
    pub referrers: bool,
}

/// What a pull brought.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The reference as resolved.
    pub source: String,
    /// The name it is stored under.
    pub name: Reference,
    pub target: Descriptor,
    /// The referrers registered with it (by digest).
    pub referrers: usize,
    pub imported: Imported,
}

/// Pulls `rref` from `remote` into `store`.
pub fn pull(
    store: &dyn Content,
    remote: &Remote,
    rref: &RemoteRef,
    opts: &PullOptions,
) -> Result<Pulled> {
    remote.authorize(rref.repository(), false)?;
    let (top, bytes) = resolve(remote, rref)?;
    let name = stored_name(rref, opts.name.as_deref(), &top.digest)?;
    let mut target = top.clone();
    target
        .annotations
        .insert(ANNOTATION_IMAGE_NAME.to_owned(), name.to_string());
    if let Some(tag) = name.tag() {
        target
            .annotations
            .insert(ANNOTATION_REF_NAME.to_owned(), tag.to_owned());
    }
    let (wanted, excluded) = choose_platforms(rref, &top, &bytes, &opts.platforms)?;
    let mut prefetched = HashMap::from([(top.digest.clone(), bytes)]);
    let mut images = vec![target.clone()];
    if opts.referrers {
        let mut subjects: Vec<&Descriptor> = std::iter::once(&top).chain(&wanted).collect();
        subjects.sort_by(|a, b| a.digest.cmp(&b.digest));
        subjects.dedup_by(|a, b| a.digest == b.digest);
        let mut found = Referrers::default();
        for subject in subjects {
            referrers(remote, rref, subject, &excluded, &mut found)?;
        }
        images.extend(found.descriptors);
        prefetched.extend(found.bytes);
    }
    let referrers = images.len() - 1;
    let source = RegistryBlobs {
        remote,
        repository: rref.repository().to_owned(),
        excluded,
        prefetched: Mutex::new(prefetched),
    };
    let label = rref.to_string();
    let input = Input::Blobs {
        index: ImageIndex::new(images),
        blobs: &source,
        on_missing: OnMissing::SkipPlatforms,
    };
    let imported = import_from(store, input, &label, Some(name.repository()))?;
    note_origins(store, remote, rref, &top);
    Ok(Pulled {
        source: rref.with_digest(top.digest.clone()).to_string(),
        name,
        target: top,
        referrers,
        imported,
    })
}

/// Notes where the blobs of the image came from, so that a push to another repository of the
/// registry mounts them rather than sending them again. A failure only costs that.
fn note_origins(store: &dyn Content, remote: &Remote, rref: &RemoteRef, top: &Descriptor) {
    let noted = oci::closure(store, top, OnMissing::SkipPlatforms).and_then(|c| {
        let digests: Vec<Digest> = c.into_keys().collect();
        store.note_sources(&remote.registry, rref.repository(), &digests)
    });
    if let Err(e) = noted {
        tracing::warn!("{rref}: noting where its blobs came from: {e}");
    }
}

/// The name a pull of `rref` stores its image under: `--name` (a full name, or a repository
/// that takes the reference's tag, else its digest), else the reference in full. Known before
/// anything is asked of the registry, so a bad `--name` costs no request.
pub fn planned_name(rref: &RemoteRef, name: Option<&str>) -> Result<Reference> {
    let Some(n) = name else {
        return Ok(rref.stored_name());
    };
    if check_repository(n).is_ok() {
        return Ok(match (rref.tag(), rref.digest()) {
            (Some(tag), _) => Reference::tagged(n, tag)?,
            (None, Some(d)) => Reference::digested(n, d.clone())?,
            (None, None) => Reference::tagged(n, "latest")?,
        });
    }
    n.parse()
        .map_err(|e| Error::Invalid(format!("--name {:?}: {e}", one_line(n))))
}

/// `planned_name`, checked against the digest pulled: a name pinned to another digest is
/// refused.
fn stored_name(rref: &RemoteRef, name: Option<&str>, digest: &Digest) -> Result<Reference> {
    let r = planned_name(rref, name)?;
    if let Target::Digest(d) = r.target() {
        if d != digest {
            return Err(Error::Invalid(format!("{r}: the image pulled is {digest}")));
        }
    }
    Ok(r)
}

/// The manifest or index `rref` names, and its bytes.
fn resolve(remote: &Remote, rref: &RemoteRef) -> Result<(Descriptor, Vec<u8>)> {
    let what = rref.to_string();
    let reference = match rref.digest() {
        Some(d) => d.to_string(),
        None => rref.tag().unwrap_or("latest").to_owned(),
    };
    let path = format!("manifests/{reference}");
    let fetched = block_on(retry(|| {
        remote.get_small(rref.repository(), &path, MANIFEST_TYPES, &what)
    }))??;
    let Some(fetched) = fetched else {
        return Err(Error::Registry(format!(
            "{what}: not found in {} (no such repository, tag or digest)",
            remote.registry
        )));
    };
    let media_type = media_type_of(&fetched, &what)?;
    let digest = Digest::of(Algorithm::Sha256, &fetched.bytes);
    if let Some(want) = rref.digest() {
        let got = Digest::of(want.algorithm(), &fetched.bytes);
        if &got != want {
            return Err(Error::Registry(format!(
                "{what}: the registry served content that hashes to {got}"
            )));
        }
    }
    if let Some(said) = fetched
        .digest_header
        .as_deref()
        .and_then(|h| h.parse::<Digest>().ok())
    {
        if Digest::of(said.algorithm(), &fetched.bytes) != said {
            return Err(Error::Registry(format!(
                "{what}: the registry says the manifest is {said}, but its bytes hash to {digest}"
            )));
        }
    }
    let digest = rref.digest().cloned().unwrap_or(digest);
    let desc = Descriptor::new(media_type, digest, fetched.bytes.len() as u64);
    Ok((desc, fetched.bytes))
}

/// The media type of a served manifest: the one its body states, else the response's, else
/// what its fields make it. Docker schema 1 is refused.
fn media_type_of(f: &Fetched, what: &str) -> Result<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        schema_version: Option<i64>,
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let schema1 = |t: &str| t.contains("distribution.manifest.v1");
    if f.content_type.as_deref().is_some_and(schema1) {
        return Err(schema1_error(what));
    }
    let head: Head = serde_json::from_slice(&f.bytes).map_err(|e| {
        Error::Registry(format!("{what}: the registry's manifest is not JSON: {e}"))
    })?;
    if head.schema_version == Some(1) || head.media_type.as_deref().is_some_and(schema1) {
        return Err(schema1_error(what));
    }
    if let Some(t) = head.media_type {
        return Ok(t);
    }
    if let Some(t) = &f.content_type {
        if MANIFEST_TYPES.contains(&t.as_str()) {
            return Ok(t.clone());
        }
    }
    match (head.manifests.is_some(), head.layers.is_some()) {
        (true, false) => Ok(OCI_INDEX.to_owned()),
        (false, true) => Ok(MEDIA_OCI_MANIFEST.to_owned()),
        _ => Err(Error::Registry(format!(
            "{what}: the registry's answer is neither a manifest nor an index"
        ))),
    }
}

fn schema1_error(what: &str) -> Error {
    Error::Registry(format!(
        "{what}: a docker schema 1 manifest, which layoutfs does not support: push the image again with a current tool (schema 2 or OCI)"
    ))
}

/// For an index: the manifests pulled and the platforms' manifests left out.
fn choose_platforms(
    rref: &RemoteRef,
    top: &Descriptor,
    bytes: &[u8],
    platforms: &Platforms,
) -> Result<(Vec<Descriptor>, HashSet<Digest>)> {
    if oci::kind_of(&top.media_type) != Kind::Index {
        return Ok((Vec::new(), HashSet::new()));
    }
    let children = oci::children(top, bytes)?;
    let manifests: Vec<Descriptor> = children
        .into_iter()
        .filter(|d| oci::kind_of(&d.media_type) == Kind::Manifest)
        .collect();
    let spec = match platforms {
        Platforms::All => return Ok((manifests, HashSet::new())),
        Platforms::This => PlatformSpec::host(),
        Platforms::Only(p) => p.clone(),
    };
    let chosen = manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| spec.matches(p)))
        .cloned();
    let Some(chosen) = chosen else {
        let offered: Vec<String> = manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| {
                let mut s = format!("{}/{}", p.os, p.architecture);
                if let Some(v) = &p.variant {
                    s.push('/');
                    s.push_str(v);
                }
                one_line(&s)
            })
            .collect();
        return Err(Error::Registry(format!(
            "{rref}: the index has no manifest for {spec} (it has: {}): pass --platform or --all-platforms",
            offered.join(", ")
        )));
    };
    let excluded = manifests
        .iter()
        .filter(|d| oci::is_platform_child(d) && d.digest != chosen.digest)
        .map(|d| d.digest.clone())
        .collect();
    let wanted = manifests
        .into_iter()
        .filter(|d| d.digest == chosen.digest || d.platform.is_none())
        .collect();
    Ok((wanted, excluded))
}

/// The referrers a pull brings: descriptors to register by digest, and their manifests' bytes.
#[derive(Default)]
struct Referrers {
    descriptors: Vec<Descriptor>,
    bytes: HashMap<Digest, Vec<u8>>,
}

/// Adds to `found` the OCI 1.1 referrers of `subject` (the referrers API, else the
/// `<alg>-<hex>` tag): each manifest fetched and kept only when its `subject` is this one (a
/// listing is the registry's word; the manifest is the referrer's), never a manifest of a
/// platform left out, each once, at most `MAX_REFERRERS` in all.
fn referrers(
    remote: &Remote,
    rref: &RemoteRef,
    subject: &Descriptor,
    excluded: &HashSet<Digest>,
    found: &mut Referrers,
) -> Result<()> {
    let what = format!("{rref}: referrers of {}", subject.digest);
    let repo = rref.repository();
    let api = format!("referrers/{}", subject.digest);
    let tag = format!(
        "manifests/{}-{}",
        subject.digest.algorithm().name(),
        subject.digest.hex()
    );
    let mut listing = block_on(retry(|| remote.get_small(repo, &api, &[OCI_INDEX], &what)))??;
    let is_index = |f: &Fetched| {
        f.content_type.as_deref() == Some(OCI_INDEX)
            || serde_json::from_slice::<serde_json::Value>(&f.bytes)
                .is_ok_and(|v| v.get("manifests").is_some())
    };
    if !listing.as_ref().is_some_and(is_index) {
        listing = block_on(retry(|| remote.get_small(repo, &tag, &[OCI_INDEX], &what)))??;
    }
    let Some(f) = listing else {
        return Ok(());
    };
    let index = ImageIndex::parse(&what, &f.bytes)?;
    for mut d in index.manifests {
        if oci::kind_of(&d.media_type) == Kind::Leaf
            || excluded.contains(&d.digest)
            || d.digest == subject.digest
            || found.bytes.contains_key(&d.digest)
        {
            continue;
        }
        if found.descriptors.len() >= MAX_REFERRERS {
            return Err(Error::Registry(format!(
                "{what}: more than {MAX_REFERRERS} referrers: pull without --referrers"
            )));
        }
        oci::check_json_size(&format!("{what}: {}", d.digest), d.size)?;
        let path = format!("manifests/{}", d.digest);
        let got = block_on(retry(|| {
            remote.get_small(repo, &path, MANIFEST_TYPES, &what)
        }))??;
        let Some(m) = got else {
            tracing::warn!("{what}: {} is listed but not there: left out", d.digest);
            continue;
        };
        if Digest::of(d.digest.algorithm(), &m.bytes) != d.digest {
            return Err(Error::Registry(format!(
                "{what}: the registry served {} with content that hashes otherwise",
                d.digest
            )));
        }
        let names_subject = oci::subject_of(&m.bytes).is_some_and(|s| s.digest == subject.digest);
        if !names_subject {
            tracing::warn!(
                "{what}: {} is listed, but its subject is not {}: left out",
                d.digest,
                subject.digest
            );
            continue;
        }
        // Registered by digest: a name or platform in the listing is the registry's word.
        d.annotations.remove(ANNOTATION_IMAGE_NAME);
        d.annotations.remove(ANNOTATION_REF_NAME);
        d.platform = None;
        found.bytes.insert(d.digest.clone(), m.bytes);
        found.descriptors.push(d);
    }
    Ok(())
}

/// One repository of a registry as a source of blobs.
struct RegistryBlobs<'a> {
    remote: &'a Remote,
    repository: String,
    /// Manifests of platforms not pulled.
    excluded: HashSet<Digest>,
    /// Bytes fetched already (the top manifest or index).
    prefetched: Mutex<HashMap<Digest, Vec<u8>>>,
}

impl RegistryBlobs<'_> {
    fn label(&self, desc: &Descriptor) -> String {
        format!(
            "blob {} from {}/{}",
            desc.digest, self.remote.registry, self.repository
        )
    }

    /// A manifest or index, by digest, from `/manifests/`: registries keep them apart.
    fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if let Some(b) = self.prefetched.lock().remove(&desc.digest) {
            return Ok(b);
        }
        let what = self.label(desc);
        let path = format!("manifests/{}", desc.digest);
        let accept: Vec<&str> = std::iter::once(desc.media_type.as_str())
            .chain(MANIFEST_TYPES.iter().copied())
            .collect();
        let found = block_on(retry(|| {
            self.remote
                .get_small(&self.repository, &path, &accept, &what)
        }))??;
        found.map(|f| f.bytes).ok_or_else(|| Error::MissingBlob {
            digest: desc.digest.clone(),
            referrer: Some(format!("the registry ({})", self.remote.registry)),
        })
    }
}

impl Blobs for RegistryBlobs<'_> {
    fn size(&self, desc: &Descriptor) -> Result<Option<u64>> {
        // Sizes come from the descriptors (the copy checks them): no request per blob.
        Ok((!self.excluded.contains(&desc.digest)).then_some(desc.size))
    }

    fn open(&self, desc: &Descriptor, offset: u64) -> Result<(Box<dyn Read + Send + '_>, String)> {
        let label = self.label(desc);
        if oci::kind_of(&desc.media_type) != Kind::Leaf {
            let bytes = self.manifest(desc)?;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            return Ok((Box::new(io::Cursor::new(bytes[start..].to_vec())), label));
        }
        let reader = BlobReader {
            blobs: self,
            desc: desc.clone(),
            offset,
            skip: 0,
            stream: None,
            buf: bytes::Bytes::new(),
            failures: 0,
            since_open: 0,
            label: label.clone(),
        };
        Ok((Box::new(reader), label))
    }

    fn resumable(&self) -> bool {
        true
    }

    fn parallelism(&self) -> usize {
        PARALLEL_BLOBS
    }

    fn activity(&self) -> &'static str {
        "pulling"
    }
}

/// A blob read from a registry as `std::io::Read`: a connection that breaks or ends early is
/// opened again with a Range request from the byte reached, up to `TRIES` times in a row
/// without progress. The bytes are checked by the ingest they go into, not here.
struct BlobReader<'a> {
    blobs: &'a RegistryBlobs<'a>,
    desc: Descriptor,
    /// Bytes of the blob delivered so far (from the start of the blob).
    offset: u64,
    /// Bytes still to drop from a response that started at 0 when asked for `offset`.
    skip: u64,
    stream: Option<BoxStream<'static, std::result::Result<bytes::Bytes, io::Error>>>,
    buf: bytes::Bytes,
    /// Failures since the last open that brought `PROGRESS` bytes.
    failures: u32,
    /// Bytes since the last open.
    since_open: u64,
    label: String,
}

impl BlobReader<'_> {
    /// Opens the blob at `self.offset`.
    fn open(&mut self) -> Result<(), Failure> {
        let remote = self.blobs.remote;
        let image = remote.oci_ref(&self.blobs.repository, &self.desc.digest.to_string());
        let layer = OciDescriptor {
            digest: self.desc.digest.to_string(),
            size: i64::try_from(self.desc.size).unwrap_or(i64::MAX),
            media_type: self.desc.media_type.clone(),
            urls: self.desc.urls.clone(),
            ..OciDescriptor::default()
        };
        let offset = self.offset;
        let res = block_on(async {
            remote
                .oci
                .pull_blob_stream_partial(&image, &layer, offset, None)
                .await
        })
        .map_err(|e| Failure::fatal(e.to_string()))?;
        self.since_open = 0;
        match res {
            Ok(BlobResponse::Partial(s)) => {
                // A 206 must be what was asked: the rest from `offset`; one that is the whole
                // blob is taken as a 200; anything else is not appended anywhere.
                let rest = self.desc.size - offset;
                match s.content_length {
                    Some(n) if n == rest || n == 0 && rest == 0 => self.skip = 0,
                    Some(n) if n == self.desc.size => self.skip = offset,
                    None => self.skip = 0,
                    Some(n) => {
                        return Err(Failure::transient(format!(
                        "the registry answered a request for bytes {offset}- with {n} bytes of {}",
                        self.desc.size
                    )))
                    }
                }
                self.stream = Some(s.stream);
            }
            Ok(BlobResponse::Full(s)) => {
                // A server that ignores Range sends the whole blob: drop what we have.
                self.skip = offset;
                self.stream = Some(s.stream);
            }
            Err(e) => return Err(remote.failure("", e)),
        }
        Ok(())
    }

    /// Counts a failure; Err once there were `TRIES` in a row.
    fn failed(&mut self, f: Failure) -> io::Result<()> {
        self.stream = None;
        self.failures += 1;
        if !f.transient || self.failures >= TRIES {
            let suffix = if f.transient {
                format!(" (after {} tries)", self.failures)
            } else {
                String::new()
            };
            return Err(io::Error::other(format!("{}{suffix}", f.message)));
        }
        tracing::info!(
            "{}: {} (again from byte {})",
            self.label,
            f.message,
            self.offset
        );
        std::thread::sleep(backoff(self.failures));
        Ok(())
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.buf.is_empty() {
                let n = out.len().min(self.buf.len());
                out[..n].copy_from_slice(&self.buf.split_to(n));
                self.offset += n as u64;
                return Ok(n);
            }
            if self.offset >= self.desc.size {
                return Ok(0);
            }
            if self.stream.is_none() {
                if let Err(f) = self.open() {
                    self.failed(f)?;
                    continue;
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let next = block_on(stream.next()).map_err(io::Error::other)?;
            match next {
                Some(Ok(mut chunk)) => {
                    if self.skip > 0 {
                        let drop = usize::try_from(self.skip)
                            .unwrap_or(usize::MAX)
                            .min(chunk.len());
                        let _ = chunk.split_to(drop);
                        self.skip -= drop as u64;
                    }
                    let left = usize::try_from(self.desc.size - self.offset).unwrap_or(usize::MAX);
                    chunk.truncate(left);
                    self.since_open += chunk.len() as u64;
                    // Tries count again only after real progress: a server that sends a byte
                    // per connection runs out of them.
                    if self.since_open >= PROGRESS {
                        self.failures = 0;
                    }
                    self.buf = chunk;
                }
                Some(Err(e)) => {
                    self.failed(Failure::transient(e.to_string()))?;
                }
                None => {
                    let f = Failure::transient(format!(
                        "the connection ended after {} of {} bytes",
                        self.offset, self.desc.size
                    ));
                    self.failed(f)?;
                }
            }
        }
    }
}
