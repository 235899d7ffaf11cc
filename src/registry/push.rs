//! `layoutfs push`: the images of the store sent to a registry repository through the
//! export's seam (`archive::export::send` with a `Destination`), children before parents.
//! Each blob is asked for first (HEAD) and uploaded only when the registry lacks it, streamed
//! from the store's file in one PUT, several at once; manifests and indexes go byte for byte
//! (their digests unchanged) once every blob under them is there, and the tags last. With
//! `--referrers`, the store's untagged images whose OCI 1.1 `subject` is a pushed manifest go
//! too, and the `<alg>-<hex>` tag that lists a subject's referrers is brought up to date on a
//! registry without the referrers API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::HeaderValue;
use tokio::task::JoinHandle;

use crate::archive::export::{send, Destination, ExportOptions, Images, Order, Shipment};
use crate::content::Provider;
use crate::content::{Content, Image};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::Entry;
use crate::oci::{self, Descriptor, ImageIndex, Kind, MEDIA_OCI_INDEX as OCI_INDEX};
use crate::progress::Progress;
use crate::reference::Target;

use super::client::{retry, Failure, Remote};
use super::name::RemoteRef;
use super::runtime::{block_on, spawn};

/// Blobs uploaded at once.
const PARALLEL_UPLOADS: usize = 4;
/// Bytes read from a blob file per piece of an upload.
const UPLOAD_PIECE: usize = 1 << 20;

/// What a push did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pushed {
    /// `HOST/REPO:TAG` (or `@digest`) of each image pushed.
    pub destinations: Vec<String>,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Blobs the registry had already.
    pub present: usize,
    /// Blobs the registry mounted from another of its repositories.
    pub mounted: usize,
    pub manifests: usize,
    pub referrers: usize,
}

/// Pushes `images` (of one repository's worth of destination) to `dest`'s repository: each
/// tagged with `dest`'s tag when it has one (one image), else its own tag, else by digest.
pub fn push(
    store: &dyn Content,
    remote: Arc<Remote>,
    images: &[Image],
    dest: &RemoteRef,
    with_referrers: bool,
) -> Result<Pushed> {
    remote.authorize(dest.repository(), true)?;
    let mut entries: Vec<Entry> = images.iter().cloned().map(Entry::from).collect();
    let referrers = if with_referrers {
        referrers_in_store(store, images)?
    } else {
        Vec::new()
    };
    entries.extend(referrers.iter().cloned());
    let shipment = Shipment::new(store, &entries, &ExportOptions::default())?;
    let lease = store.lease()?;
    shipment.hold(store, &*lease)?;
    let mut tags: BTreeMap<String, (Digest, Option<String>)> = BTreeMap::new();
    for i in images {
        let tag = match (dest.tag(), dest.digest()) {
            (Some(t), _) if images.len() == 1 => Some(t.to_owned()),
            (_, Some(d)) if images.len() == 1 && d != &i.target.digest => {
                return Err(Error::Invalid(format!(
                    "{dest}: the image {} is {}",
                    i.name, i.target.digest
                )))
            }
            _ => i.name.tag().map(str::to_owned),
        };
        tags.insert(i.name.to_string(), (i.target.digest.clone(), tag));
    }
    let progress = Progress::bytes("pushing", Some(shipment.blob_bytes()));
    let mut to = RegistryDest {
        store,
        remote: remote.clone(),
        repository: dest.repository().to_owned(),
        tags,
        pending: Vec::new(),
        pushed: Pushed::default(),
        progress: &progress,
    };
    send(store, &shipment, &mut to)?;
    progress.finish();
    let mut pushed = to.pushed;
    pushed.referrers = referrers.len();
    let sent: Vec<Digest> = shipment.digests().cloned().collect();
    if let Err(e) = store.note_sources(&remote.registry, dest.repository(), &sent) {
        tracing::warn!("{dest}: noting where its blobs are: {e}");
    }
    if !referrers.is_empty() {
        update_referrers_tags(store, &remote, dest, &referrers)?;
    }
    Ok(pushed)
}

/// The store's untagged images of the pushed images' repositories whose `subject` is in the
/// pushed images' closures (signatures, SBOMs), as entries.
fn referrers_in_store(store: &dyn Content, images: &[Image]) -> Result<Vec<Entry>> {
    let entries: Vec<Entry> = images.iter().cloned().map(Entry::from).collect();
    let closure: HashSet<Digest> = crate::layout::blobs(store, &entries, oci::OnMissing::Fail)?
        .into_keys()
        .collect();
    let repos: HashSet<&str> = images.iter().map(|i| i.name.repository()).collect();
    let mut out = Vec::new();
    for repo in repos {
        for img in store.catalog().of_repository(repo)? {
            if !matches!(img.name.target(), Target::Digest(_))
                || closure.contains(&img.target.digest)
            {
                continue;
            }
            if subject_of(store, &img.target)?.is_some_and(|s| closure.contains(&s)) {
                out.push(Entry::from(img));
            }
        }
    }
    Ok(out)
}

/// The digest a manifest's `subject` names, if it has one.
fn subject_of(store: &dyn Content, desc: &Descriptor) -> Result<Option<Digest>> {
    if oci::kind_of(&desc.media_type) == Kind::Leaf {
        return Ok(None);
    }
    Ok(oci::subject_of(&store.read_small(desc)?).map(|s| s.digest))
}

/// On a registry without the referrers API, adds each referrer to the index tagged
/// `<alg>-<hex>` of its subject (the OCI 1.1 fallback a client keeps up to date).
fn update_referrers_tags(
    store: &dyn Content,
    remote: &Remote,
    dest: &RemoteRef,
    referrers: &[Entry],
) -> Result<()> {
    let repo = dest.repository();
    let mut by_subject: HashMap<Digest, Vec<Descriptor>> = HashMap::new();
    for r in referrers {
        if let Some(s) = subject_of(store, &r.target)? {
            let mut d = r.target.clone();
            d.annotations.clear();
            if d.artifact_type.is_none() {
                d.artifact_type = artifact_type(store, &r.target)?;
            }
            by_subject.entry(s).or_default().push(d);
        }
    }
    for (subject, descs) in by_subject {
        let what = format!("{dest}: referrers of {subject}");
        let api = format!("referrers/{subject}");
        let native = block_on(retry(|| remote.get_small(repo, &api, &[OCI_INDEX], &what)))??
            .is_some_and(|f| f.content_type.as_deref() == Some(OCI_INDEX));
        if native {
            continue;
        }
        let tag = format!("{}-{}", subject.algorithm().name(), subject.hex());
        let path = format!("manifests/{tag}");
        let mut index =
            match block_on(retry(|| remote.get_small(repo, &path, &[OCI_INDEX], &what)))?? {
                Some(f) => ImageIndex::parse(&what, &f.bytes)?,
                None => ImageIndex::new(Vec::new()),
            };
        for d in descs {
            if !index.manifests.iter().any(|m| m.digest == d.digest) {
                index.manifests.push(d);
            }
        }
        let bytes = index.to_bytes();
        put_manifest(remote, repo, &tag, OCI_INDEX, Bytes::from(bytes), &what)?;
    }
    Ok(())
}

/// A manifest's `artifactType`, else its config's media type (what the referrers list shows).
fn artifact_type(store: &dyn Content, desc: &Descriptor) -> Result<Option<String>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Fields {
        artifact_type: Option<String>,
        config: Option<Descriptor>,
    }
    let bytes = store.read_small(desc)?;
    Ok(serde_json::from_slice::<Fields>(&bytes)
        .ok()
        .and_then(|f| f.artifact_type.or(f.config.map(|c| c.media_type))))
}

/// PUTs a manifest's exact bytes at `reference` (a digest or a tag).
fn put_manifest(
    remote: &Remote,
    repository: &str,
    reference: &str,
    media_type: &str,
    bytes: Bytes,
    what: &str,
) -> Result<()> {
    let image = remote.oci_ref(repository, reference);
    let content_type = HeaderValue::from_str(media_type).map_err(|_| {
        Error::Registry(format!(
            "{what}: media type {media_type:?} is not a header value"
        ))
    })?;
    block_on(retry(|| async {
        remote
            .oci
            .push_manifest_raw(&image, bytes.clone(), content_type.clone())
            .await
            .map(|_| ())
            .map_err(|e| remote.failure(what, e))
    }))??;
    Ok(())
}

/// How one upload ended.
enum Sent {
    Present,
    Mounted,
    Uploaded(u64),
}

/// A registry repository as a destination of blobs.
struct RegistryDest<'p> {
    store: &'p dyn Content,
    remote: Arc<Remote>,
    repository: String,
    /// Each image's stored name -> its target and the tag it gets there.
    tags: BTreeMap<String, (Digest, Option<String>)>,
    pending: Vec<JoinHandle<Result<Sent, Failure>>>,
    pushed: Pushed,
    progress: &'p Progress,
}

impl RegistryDest<'_> {
    /// Waits for every upload started; the first failure is the error.
    fn wait_all(&mut self) -> Result<()> {
        let mut first = None;
        for h in std::mem::take(&mut self.pending) {
            let r = block_on(h)?
                .map_err(|e| Failure::fatal(format!("upload task: {e}")))
                .and_then(|r| r);
            match r {
                Ok(s) => self.count(s),
                Err(f) => {
                    first.get_or_insert(f);
                }
            }
        }
        match first {
            Some(f) => Err(f.into()),
            None => Ok(()),
        }
    }

    fn count(&mut self, s: Sent) {
        match s {
            Sent::Present => self.pushed.present += 1,
            Sent::Mounted => self.pushed.mounted += 1,
            Sent::Uploaded(n) => {
                self.pushed.uploaded += 1;
                self.pushed.uploaded_bytes += n;
            }
        }
    }

    fn what(&self, desc: &Descriptor) -> String {
        format!(
            "blob {} to {}/{}",
            desc.digest, self.remote.registry, self.repository
        )
    }
}

impl Destination for RegistryDest<'_> {
    fn order(&self) -> Order {
        Order::ChildrenFirst
    }

    fn blob(&mut self, from: &dyn Provider, desc: &Descriptor) -> Result<()> {
        let what = self.what(desc);
        if oci::kind_of(&desc.media_type) != Kind::Leaf {
            // A registry refuses a manifest whose blobs it lacks: every upload ends first.
            self.wait_all()?;
            let bytes = Bytes::from(from.read_small(desc)?);
            put_manifest(
                &self.remote,
                &self.repository,
                &desc.digest.to_string(),
                &desc.media_type,
                bytes,
                &what,
            )?;
            self.pushed.manifests += 1;
            self.progress.add(desc.size);
            return Ok(());
        }
        while self.pending.len() >= PARALLEL_UPLOADS {
            let h = self.pending.remove(0);
            let r = block_on(h)?
                .map_err(|e| Failure::fatal(format!("upload task: {e}")))
                .and_then(|r| r)?;
            self.count(r);
        }
        let file = from.open(desc)?;
        // A repository of this registry the store saw the blob in: the registry can mount it
        // from there rather than take it again.
        let mount_from = match self.store.sources(&desc.digest, &self.remote.registry) {
            Ok(repos) => repos.into_iter().find(|r| r != &self.repository),
            Err(e) => {
                tracing::warn!("{what}: the store's record of where blobs came from: {e}");
                None
            }
        };
        let remote = self.remote.clone();
        let image = remote.oci_ref(&self.repository, &desc.digest.to_string());
        let desc = desc.clone();
        let size = desc.size;
        let handle = spawn(async move {
            let from = mount_from.map(|r| remote.oci_ref(&r, &desc.digest.to_string()));
            upload(&remote, &image, &desc, Arc::new(file), from.as_ref(), &what).await
        })?;
        self.pending.push(handle);
        self.progress.add(size);
        Ok(())
    }

    fn finish(&mut self, images: &Images<'_>) -> Result<()> {
        self.wait_all()?;
        for e in images.entries {
            let Some((digest, Some(tag))) = self.tags.get(&e.name.to_string()) else {
                continue;
            };
            let what = format!("{}/{}:{tag}", self.remote.registry, self.repository);
            if digest != &e.target.digest {
                return Err(Error::Invalid(format!(
                    "{what}: {} changed during the push",
                    e.name
                )));
            }
            let bytes = Bytes::from(self.store.read_small(&e.target)?);
            put_manifest(
                &self.remote,
                &self.repository,
                tag,
                &e.target.media_type,
                bytes,
                &what,
            )?;
            self.pushed.destinations.push(format!(
                "{}/{}:{tag}",
                self.remote.registry, self.repository
            ));
        }
        Ok(())
    }
}

/// Uploads one blob unless the registry has it in this repository, or can mount it from
/// `mount_from` (any failure to mount falls back to the upload: a token for one repository
/// does not allow it, and a registry may answer 202 and open an upload instead).
async fn upload(
    remote: &Remote,
    image: &oci_client::Reference,
    desc: &Descriptor,
    file: Arc<File>,
    mount_from: Option<&oci_client::Reference>,
    what: &str,
) -> Result<Sent, Failure> {
    let digest = desc.digest.to_string();
    retry(|| async {
        let present = remote
            .oci
            .blob_exists(image, &digest)
            .await
            .map_err(|e| remote.failure(what, e))?;
        if present {
            return Ok(Sent::Present);
        }
        if let Some(from) = mount_from {
            match remote.oci.mount_blob(image, from, &digest).await {
                Ok(()) => return Ok(Sent::Mounted),
                Err(e) => tracing::info!(
                    "{what}: mounting it from {} failed ({e}): uploading it",
                    from.repository()
                ),
            }
        }
        let stream = file_stream(file.clone(), desc.size);
        remote
            .oci
            .push_blob_stream(image, stream, &digest, Some(desc.size))
            .await
            .map_err(|e| remote.failure(what, e))?;
        Ok(Sent::Uploaded(desc.size))
    })
    .await
}

/// The bytes of `file` from its start, `size` of them, in pieces: never the whole blob in
/// memory. Positional reads, so a retry starts again from byte 0 with the same file.
fn file_stream(
    file: Arc<File>,
    size: u64,
) -> impl futures_util::Stream<Item = oci_client::errors::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(0u64, move |offset| {
        let file = file.clone();
        async move {
            if offset >= size {
                return None;
            }
            let want = usize::try_from(size - offset)
                .unwrap_or(usize::MAX)
                .min(UPLOAD_PIECE);
            let mut buf = vec![0u8; want];
            match file.read_at(&mut buf, offset) {
                Ok(0) => Some((
                    Err(oci_client::errors::OciDistributionError::IoError(
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the blob file is shorter than its size",
                        ),
                    )),
                    size,
                )),
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), offset + n as u64))
                }
                Err(e) => Some((
                    Err(oci_client::errors::OciDistributionError::IoError(e)),
                    size,
                )),
            }
        }
    })
}
