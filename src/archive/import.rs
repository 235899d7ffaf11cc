//! The importer: an OCI layout directory, or an OCI archive (tar, gzip or zstd, told apart by
//! their magic bytes) from a file or standard input, into the store. Archives are streamed:
//! each blob goes from its tar entry straight into an ingest, checked against the digest its
//! path names. Directories are walked from `index.json`, manifests first, then the remaining
//! blobs are copied in parallel with their sizes and digests checked. Nothing is registered
//! until the closure of every listed image is present and verified; then all names are
//! registered in one transaction.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::layout;
use crate::oci::{
    self, BlobSource, Descriptor, ImageIndex, OnMissing, ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME, MAX_INDEX_JSON_SIZE, MAX_JSON_SIZE,
};
use crate::progress::Progress;
use crate::reference::{check_repository, check_tag, Reference};
use crate::store::gc::{remove_unneeded, TakeBack};
use crate::store::{Lease, Store, WHOLE};

use super::tarfmt;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// Where a tar header block says "ustar".
const USTAR_MAGIC_AT: std::ops::Range<usize> = 257..262;
/// Bytes read ahead to recognise a stream.
const SNIFF_LEN: usize = 512;
/// Extensions dropped from a file name to make the default repository name.
const ARCHIVE_EXTENSIONS: &[&str] = &[
    ".tar.gz",
    ".tar.zst",
    ".tar.zstd",
    ".tgz",
    ".tzst",
    ".tar",
    ".oci",
    ".gz",
    ".zst",
];

/// Where an import reads from.
#[derive(Debug, Clone)]
pub enum Source {
    Dir(PathBuf),
    Archive(PathBuf),
    Stdin,
}

impl Source {
    /// `-` is standard input, a directory is a layout, anything else an archive.
    pub fn from_arg(arg: &Path) -> Result<Source> {
        if arg == Path::new("-") {
            return Ok(Source::Stdin);
        }
        let meta = fs::metadata(arg).at(arg)?;
        Ok(if meta.is_dir() {
            Source::Dir(arg.to_path_buf())
        } else {
            Source::Archive(arg.to_path_buf())
        })
    }

    /// The name errors use for this source.
    fn label(&self) -> String {
        match self {
            Source::Dir(p) | Source::Archive(p) => p.display().to_string(),
            Source::Stdin => "standard input".into(),
        }
    }

    /// The repository an image named only by tag or digest goes to, when `--name` is absent.
    fn default_repository(&self) -> Option<String> {
        let path = match self {
            Source::Dir(p) | Source::Archive(p) => p,
            Source::Stdin => return None,
        };
        let canon = fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        let base = canon.file_name()?.to_str()?.to_owned();
        let stem = ARCHIVE_EXTENSIONS
            .iter()
            .find_map(|ext| base.strip_suffix(ext))
            .unwrap_or(&base);
        Some(stem.to_owned())
    }
}

/// What an import registered.
#[derive(Debug, Clone)]
pub struct Imported {
    pub names: Vec<Reference>,
    /// Blobs newly written to the store (others were there already).
    pub new_blobs: usize,
    pub new_bytes: u64,
}

/// Imports `source`; `name` is the repository for images named only by tag or digest.
pub fn import(store: &Store, source: &Source, name: Option<&str>) -> Result<Imported> {
    let label = source.label();
    let repository = match name {
        Some(n) => {
            check_repository(n).map_err(|why| {
                Error::Invalid(format!("--name {n:?} is not a repository name: {why}"))
            })?;
            Some(n.to_owned())
        }
        None => source.default_repository(),
    };
    // Every blob is held before the store is asked whether it has it, and until the images
    // are registered: a gc in another process keeps them (see store::leases).
    let lease = store.lease()?;
    let since_ms = crate::store::now_ms();
    let written = Mutex::new(Written::default());
    let result = read_source(store, &lease, source, &label, &written)
        .and_then(|index| register(store, &index, repository.as_deref(), &label));
    let mut written = written.into_inner();
    let take_back = |placed: &HashSet<Digest>, keep_referrers: bool| {
        let t = TakeBack {
            placed,
            own: lease.id(),
            since_ms,
            keep_referrers,
        };
        remove_unneeded(store, &t)
    };
    match result {
        Ok((images, reached)) => {
            // An archive may carry blobs no image of it reaches (a 2 GiB blob of zeros packs
            // into a few KiB): they are taken back now rather than left for gc.
            let unreached: HashSet<Digest> = written.placed.difference(&reached).cloned().collect();
            if !unreached.is_empty() {
                match take_back(&unreached, true) {
                    Ok(r) => {
                        for (digest, size) in &r.blobs {
                            written.take_back(digest, *size);
                        }
                        tracing::info!(
                            "removed {} blobs of {label} that no image reaches",
                            r.blobs.len()
                        );
                    }
                    Err(e) => tracing::warn!(
                        "{label}: removing the blobs no image reaches failed ({e}): gc will"
                    ),
                }
            }
            Ok(Imported {
                names: images.into_iter().map(|(n, _)| n).collect(),
                new_blobs: written.count,
                new_bytes: written.bytes,
            })
        }
        Err(e) => {
            // Take back the blobs this import placed that nothing else needs: the store is as
            // it was (a blob another import also wrote meanwhile, or an image uses, stays).
            match take_back(&written.placed, false) {
                Ok(r) if !r.blobs.is_empty() => tracing::info!(
                    "import failed: removed the {} blobs it had placed",
                    r.blobs.len()
                ),
                Ok(_) => {}
                Err(c) => tracing::warn!("import failed, and so did removing its blobs: {c}"),
            }
            Err(e)
        }
    }
}

/// Brings the blobs of `source` into the store (verified, held by `lease`) and returns its
/// `index.json`.
fn read_source(
    store: &Store,
    lease: &Lease,
    source: &Source,
    label: &str,
    written: &Mutex<Written>,
) -> Result<ImageIndex> {
    match source {
        Source::Dir(dir) => import_dir(store, lease, dir, written),
        Source::Archive(path) => {
            let file = File::open(path).at(path)?;
            let size = file.metadata().at(path)?.len();
            import_stream(store, lease, Box::new(file), label, Some(size), written)
        }
        Source::Stdin => {
            let stdin = Box::new(io::stdin().lock());
            import_stream(store, lease, stdin, label, None, written)
        }
    }
}

/// Images by name, as an import registers them.
type Images = Vec<(Reference, Descriptor)>;

/// Names the images of `index` and registers them, all at once, once the closure of each is
/// in the store and sound; returns them and every blob they reach.
fn register(
    store: &Store,
    index: &ImageIndex,
    repository: Option<&str>,
    label: &str,
) -> Result<(Images, HashSet<Digest>)> {
    let images = name_images(index, repository, label)?;
    // Each target once, however many names it has.
    let mut reached = HashSet::new();
    let mut walked = HashSet::new();
    for (_, target) in &images {
        if walked.insert((&target.digest, &target.media_type)) {
            reached.extend(oci::closure(store, target, OnMissing::Fail)?.into_keys());
        }
    }
    store.records().put(&images)?;
    Ok((images, reached))
}

#[derive(Default)]
struct Written {
    count: usize,
    bytes: u64,
    /// The blobs this import placed (they were not in the store before).
    placed: HashSet<Digest>,
}

impl Written {
    fn add(&mut self, placed: bool, digest: &Digest, size: u64) {
        if placed {
            self.count += 1;
            self.bytes += size;
            self.placed.insert(digest.clone());
        }
    }

    fn take_back(&mut self, digest: &Digest, size: u64) {
        if self.placed.remove(digest) {
            self.count -= 1;
            self.bytes -= size;
        }
    }
}

/// The names the images of `index` get: `io.containerd.image.name` if present, else
/// `org.opencontainers.image.ref.name` when it is a full name, else `REPO:<ref.name>`, and
/// `REPO@<digest>` for a descriptor with no name at all.
fn name_images(
    index: &ImageIndex,
    repository: Option<&str>,
    label: &str,
) -> Result<Vec<(Reference, Descriptor)>> {
    let mut out: BTreeMap<Reference, Descriptor> = BTreeMap::new();
    let need_repo = |what: String| -> Result<&str> {
        let repo = repository.ok_or_else(|| {
            Error::Invalid(format!("{label}: {what} needs a repository: pass --name"))
        })?;
        check_repository(repo).map_err(|why| {
            Error::Invalid(format!(
                "{label}: {repo:?} is not a repository name ({why}): pass --name"
            ))
        })?;
        Ok(repo)
    };
    for d in &index.manifests {
        let name = if let Some(full) = d.annotations.get(ANNOTATION_IMAGE_NAME) {
            full.parse::<Reference>()
                .map_err(|e| Error::layout("index.json", format!("{ANNOTATION_IMAGE_NAME}: {e}")))?
        } else if let Some(r) = d.annotations.get(ANNOTATION_REF_NAME) {
            if check_tag(r).is_ok() {
                Reference::tagged(need_repo(format!("tag {r:?}"))?, r)?
            } else {
                r.parse::<Reference>().map_err(|_| {
                    Error::layout(
                        "index.json",
                        format!(
                            "{ANNOTATION_REF_NAME} {r:?} is neither a tag nor a full image name"
                        ),
                    )
                })?
            }
        } else {
            Reference::digested(
                need_repo(format!("untagged image {}", d.digest))?,
                d.digest.clone(),
            )?
        };
        name.check_target(&d.digest)
            .map_err(|e| Error::layout(format!("{label}: index.json"), e.to_string()))?;
        let target = layout::unnamed_descriptor(d);
        if let Some(prev) = out.get(&name) {
            if prev.digest != target.digest || prev.media_type != target.media_type {
                return Err(Error::layout(
                    format!("{label}: index.json"),
                    format!(
                        "{name} names both {} ({}) and {} ({})",
                        prev.digest, prev.media_type, target.digest, target.media_type
                    ),
                ));
            }
        }
        out.insert(name, target);
    }
    Ok(out.into_iter().collect())
}

// ---- directories ------------------------------------------------------------------------

/// Reads a small file of a layout, refusing links and anything over `cap` bytes.
fn read_layout_file(dir: &Path, name: &str, cap: u64) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let file = open_regular(&path).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => Error::layout(
            path.display().to_string(),
            "missing: not an OCI image layout",
        ),
        e => e,
    })?;
    let size = file.metadata().at(&path)?.len();
    let too_large = |size| Error::TooLarge {
        file: path.display().to_string(),
        size,
        cap,
    };
    if size > cap {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(cap + 1).read_to_end(&mut bytes).at(&path)?;
    if bytes.len() as u64 > cap {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Opens a regular file without following a symbolic link.
fn open_regular(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::io(path, io::Error::other("symbolic links are refused")),
            _ => Error::io(path, e),
        })?;
    let meta = file.metadata().at(path)?;
    if !meta.is_file() {
        return Err(Error::io(path, io::Error::other("not a regular file")));
    }
    Ok(file)
}

fn import_dir(
    store: &Store,
    lease: &Lease,
    dir: &Path,
    written: &Mutex<Written>,
) -> Result<ImageIndex> {
    let layout_path = dir.join("oci-layout").display().to_string();
    oci::check_layout_file(
        &layout_path,
        &read_layout_file(dir, "oci-layout", MAX_JSON_SIZE)?,
    )?;
    let index_path = dir.join("index.json").display().to_string();
    let index = ImageIndex::parse(
        &index_path,
        &read_layout_file(dir, "index.json", MAX_INDEX_JSON_SIZE)?,
    )?;

    // Walk the closure, copying manifests and indexes in as they are met (their children are
    // read from the verified copy) and collecting the other blobs the store lacks.
    let src = DirSource {
        store,
        lease,
        dir,
        written,
    };
    let mut wanted: BTreeMap<Digest, Descriptor> = BTreeMap::new();
    let mut walked = HashSet::new();
    for d in &index.manifests {
        if !walked.insert((&d.digest, &d.media_type)) {
            continue;
        }
        for (digest, desc) in oci::closure(&src, d, OnMissing::Fail)? {
            if !store.has_blob(&digest)? {
                wanted.insert(digest, desc);
            }
        }
    }
    let total = wanted.values().map(|d| d.size).sum();
    let progress = Progress::bytes("importing", Some(total));
    let mut jobs: Vec<Descriptor> = wanted.into_values().collect();
    jobs.sort_by_key(|d| std::cmp::Reverse(d.size));
    parallel_ingest(store, dir, jobs, &progress, written)?;
    progress.finish();
    Ok(index)
}

/// Copies blobs from a layout directory into the store on all cores, largest first.
fn parallel_ingest(
    store: &Store,
    dir: &Path,
    jobs: Vec<Descriptor>,
    progress: &Progress,
    written: &Mutex<Written>,
) -> Result<()> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len().max(1));
    let queue = Mutex::new(jobs.into_iter());
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let Some(desc) = queue.lock().next() else {
                    return;
                };
                match ingest_file(store, dir, &desc, progress) {
                    Ok(placed) => written.lock().add(placed, &desc.digest, desc.size),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        first_error.lock().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match first_error.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copies one blob of a layout directory into the store, verified against `desc`.
fn ingest_file(store: &Store, dir: &Path, desc: &Descriptor, progress: &Progress) -> Result<bool> {
    let path = dir.join(desc.digest.blob_path());
    let mut file = open_regular(&path).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            Error::MissingBlob {
                digest: desc.digest.clone(),
                referrer: None,
            }
        }
        e => e,
    })?;
    let mut w = store.ingest(&desc.digest, Some(desc.size))?;
    w.copy_from(&mut file, &path.display().to_string(), &mut |n| {
        progress.add(n)
    })?;
    w.commit()
}

/// A layout directory seen through the store: blobs the store has are read from it; others
/// are found in the directory, and manifests are copied in (verified) before being read.
struct DirSource<'a> {
    store: &'a Store,
    lease: &'a Lease,
    dir: &'a Path,
    written: &'a Mutex<Written>,
}

impl BlobSource for DirSource<'_> {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.lease.hold(WHOLE, [digest])?;
        if let Some(size) = self.store.blob_size(digest)? {
            return Ok(Some(size));
        }
        let path = self.dir.join(digest.blob_path());
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => Err(Error::io(
                &path,
                io::Error::other("symbolic links are refused"),
            )),
            Ok(m) if m.is_file() => Ok(Some(m.size())),
            Ok(_) => Err(Error::io(&path, io::Error::other("not a regular file"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        if !self.store.has_blob(&desc.digest)? {
            let placed = ingest_file(self.store, self.dir, desc, &Progress::hidden())?;
            self.written.lock().add(placed, &desc.digest, desc.size);
        }
        self.store.read_small(desc)
    }
}

// ---- archives ---------------------------------------------------------------------------

/// Recognises gzip and zstd by their magic bytes; anything else must be a tar.
fn decompress<'r>(mut r: Box<dyn Read + 'r>, label: &str) -> Result<Box<dyn Read + 'r>> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut r)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::Stream {
            what: label.to_owned(),
            source: e,
        })?;
    let whole: Box<dyn Read + 'r> = Box::new(io::Cursor::new(head.clone()).chain(r));
    if head.starts_with(GZIP_MAGIC) {
        return Ok(Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(1 << 20, whole),
        )));
    }
    if head.starts_with(ZSTD_MAGIC) {
        let z = zstd::stream::read::Decoder::new(whole).map_err(|e| Error::Stream {
            what: label.to_owned(),
            source: e,
        })?;
        return Ok(Box::new(z));
    }
    if head.len() < SNIFF_LEN || &head[USTAR_MAGIC_AT] != b"ustar" {
        return Err(Error::archive(
            label,
            "not a tar archive (nor gzip or zstd compressed)",
        ));
    }
    Ok(whole)
}

/// What an archive entry is, by its path.
enum Member {
    LayoutFile,
    Index,
    DockerManifest,
    Blob(Digest),
    Dir,
    Other,
}

fn classify(path: &str, is_dir: bool) -> Result<Member> {
    if is_dir {
        return Ok(Member::Dir);
    }
    Ok(match path {
        "oci-layout" => Member::LayoutFile,
        "index.json" => Member::Index,
        "manifest.json" => Member::DockerManifest,
        _ => match path
            .strip_prefix("blobs/")
            .map(|r| r.split('/').collect::<Vec<_>>())
        {
            Some(parts) if parts.len() == 2 => {
                Member::Blob(Digest::from_parts(parts[0], parts[1])?)
            }
            Some(_) => {
                return Err(Error::Invalid(format!(
                    "unexpected file {path:?} under blobs/"
                )))
            }
            None => Member::Other,
        },
    })
}

/// A path from an archive, fit for a one-line message.
fn quoted(raw: &Path) -> String {
    crate::error::printable(&raw.to_string_lossy())
}

/// A tar entry's path made relative and checked: no absolute paths, no `..`.
fn safe_path(raw: &Path) -> std::result::Result<String, String> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(
                p.to_str()
                    .ok_or_else(|| format!("{}: not UTF-8", quoted(raw)))?,
            ),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("{}: '..' is refused", quoted(raw))),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{}: absolute paths are refused", quoted(raw)))
            }
        }
    }
    Ok(parts.join("/"))
}

fn import_stream(
    store: &Store,
    lease: &Lease,
    reader: Box<dyn Read + '_>,
    label: &str,
    size: Option<u64>,
    written: &Mutex<Written>,
) -> Result<ImageIndex> {
    let progress = Progress::bytes("importing", size);
    let counted = Counting {
        inner: reader,
        progress: &progress,
    };
    let reader = decompress(Box::new(counted), label)?;
    let mut tail = Tail {
        inner: reader,
        last: [0xff; tarfmt::BLOCK],
    };
    let mut archive = tar::Archive::new(&mut tail);
    let errs = ArchiveErrors { label };
    let mut layout_file = None;
    let mut index_bytes = None;
    let mut seen = BTreeSet::new();
    for entry in archive.entries().map_err(|e| errs.tar(e))? {
        let mut entry = entry.map_err(|e| errs.tar(e))?;
        let raw = entry.path().map_err(|e| errs.tar(e))?.into_owned();
        let path = safe_path(&raw).map_err(|m| errs.bad(format!("entry {m}")))?;
        let shown = crate::error::printable(&path);
        let is_dir = check_kind(&mut entry, &shown, &errs)?;
        let member =
            classify(&path, is_dir).map_err(|e| errs.bad(format!("entry {shown}: {e}")))?;
        let entry_size = entry.size();
        match member {
            Member::Dir | Member::Other => {}
            Member::LayoutFile | Member::Index | Member::DockerManifest => {
                let what = format!("{label}: {path}");
                match member {
                    Member::Index | Member::DockerManifest => {
                        oci::check_index_size(&what, entry_size)?
                    }
                    _ => oci::check_json_size(&what, entry_size)?,
                }
                let mut bytes = Vec::with_capacity(entry_size as usize);
                entry.read_to_end(&mut bytes).map_err(|e| errs.tar(e))?;
                // A second copy would silently replace the first: refused.
                let twice = match member {
                    Member::LayoutFile => layout_file.replace(bytes).is_some(),
                    Member::Index => index_bytes.replace(bytes).is_some(),
                    _ => false, // Docker's manifest.json: names come from index.json.
                };
                if twice {
                    return Err(errs.bad(format!("{shown} appears twice")));
                }
            }
            Member::Blob(digest) => {
                let first = seen.insert(digest.clone());
                if first {
                    lease.hold(WHOLE, [&digest])?;
                }
                if !first || store.has_blob(&digest)? {
                    io::copy(&mut entry, &mut io::sink()).map_err(|e| errs.tar(e))?;
                    continue;
                }
                let what = format!("{label}: {path}");
                let placed = ingest_entry(store, &mut entry, &digest, &what, &errs)?;
                written.lock().add(placed, &digest, entry_size);
            }
        }
    }
    if tail.last.iter().any(|b| *b != 0) {
        return Err(
            errs.bad("truncated: the archive ends without its end-of-archive blocks".into())
        );
    }
    progress.finish();
    let layout_file =
        layout_file.ok_or_else(|| errs.bad("oci-layout is missing: not an OCI archive".into()))?;
    oci::check_layout_file(&format!("{label}: oci-layout"), &layout_file)?;
    let index_bytes = index_bytes.ok_or_else(|| errs.bad("index.json is missing".into()))?;
    ImageIndex::parse(&format!("{label}: index.json"), &index_bytes)
}

/// The errors of one archive, named by its label.
struct ArchiveErrors<'a> {
    label: &'a str,
}

impl ArchiveErrors<'_> {
    fn bad(&self, message: String) -> Error {
        Error::archive(self.label, message)
    }

    /// A read error of the tar stream, as one printable line.
    fn tar(&self, e: io::Error) -> Error {
        // The tar crate fails on many GNU sparse headers before it yields the entry, in
        // words of its own.
        let text = e.to_string();
        if SPARSE_ERRORS.iter().any(|w| text.contains(w)) {
            return self.bad(SPARSE_REFUSED.into());
        }
        self.bad(format!(
            "truncated or corrupt tar: {}",
            crate::error::printable(&text)
        ))
    }
}

/// Refuses every kind of entry but regular files and directories; says whether it is a
/// directory.
fn check_kind<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    shown: &str,
    errs: &ArchiveErrors<'_>,
) -> Result<bool> {
    let kind = entry.header().entry_type();
    if is_pax_sparse(entry).map_err(|e| errs.tar(e))? {
        return Err(errs.bad(format!("entry {shown}: {SPARSE_REFUSED}")));
    }
    if kind.is_file() || kind.is_dir() {
        return Ok(kind.is_dir());
    }
    let what = if kind.is_gnu_sparse() {
        SPARSE_REFUSED
    } else if kind.is_symlink() {
        "symbolic links are refused"
    } else if kind.is_hard_link() {
        "hard links are refused"
    } else {
        "only regular files and directories are accepted"
    };
    Err(errs.bad(format!("entry {shown}: {what}")))
}

/// Streams one blob entry into an ingest, checked against `digest` and the entry's size;
/// returns whether it was placed (false: the store had it).
fn ingest_entry<R: Read>(
    store: &Store,
    entry: &mut tar::Entry<'_, R>,
    digest: &Digest,
    what: &str,
    errs: &ArchiveErrors<'_>,
) -> Result<bool> {
    let size = entry.size();
    let mut w = store.ingest(digest, Some(size))?;
    w.copy_from(entry, what, &mut |_| {}).map_err(|e| match e {
        Error::Stream { source, .. } => errs.tar(source),
        e => e,
    })?;
    if w.written() != size {
        return Err(errs.tar(io::ErrorKind::UnexpectedEof.into()));
    }
    w.commit()
}

/// What a GNU sparse entry (`tar --sparse`) gets: its holes would need filling, and no tool
/// writes blobs that way.
const SPARSE_REFUSED: &str = "sparse files (GNU tar --sparse) are not supported";
/// What the tar crate's errors say about a GNU sparse header it could not read.
const SPARSE_ERRORS: &[&str] = &["sparse", "real_size"];
/// The PAX keys of GNU tar's sparse formats 0.0, 0.1 and 1.0 (`--format=posix --sparse`).
const PAX_SPARSE_PREFIX: &str = "GNU.sparse.";

/// Whether `entry` is a sparse file in one of the PAX forms.
fn is_pax_sparse<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<bool> {
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(false);
    };
    for ext in exts {
        if ext?.key_bytes().starts_with(PAX_SPARSE_PREFIX.as_bytes()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Remembers the last block that went by: a whole archive ends with a zero block, one cut at
/// an entry boundary does not.
struct Tail<R> {
    inner: R,
    last: [u8; tarfmt::BLOCK],
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = &buf[..n];
        let len = self.last.len();
        if n >= len {
            self.last.copy_from_slice(&got[n - len..]);
        } else {
            self.last.copy_within(n.., 0);
            self.last[len - n..].copy_from_slice(got);
        }
        Ok(n)
    }
}

/// Counts the compressed bytes read, for the progress bar.
struct Counting<'a, R> {
    inner: R,
    progress: &'a Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        let ok = [
            ("./blobs/sha256/x", "blobs/sha256/x"),
            ("index.json", "index.json"),
            ("./", ""),
        ];
        for (raw, want) in ok {
            assert_eq!(safe_path(Path::new(raw)).unwrap(), want);
        }
        for raw in ["/etc/passwd", "../x", "blobs/../../x", "a/../b"] {
            assert!(safe_path(Path::new(raw)).is_err(), "{raw}");
        }
    }

    #[test]
    fn classify_members() {
        let hex = "a".repeat(64);
        assert!(matches!(
            classify(&format!("blobs/sha256/{hex}"), false),
            Ok(Member::Blob(_))
        ));
        for bad in [
            format!("blobs/sha384/{hex}"),
            format!("blobs/sha256/{}", hex.to_uppercase()),
            "blobs/sha256/abc".into(),
            format!("blobs/x/sha256/{hex}"),
        ] {
            assert!(classify(&bad, false).is_err(), "{bad}");
        }
        assert!(matches!(classify("blobs/sha256", true), Ok(Member::Dir)));
        assert!(matches!(classify("repositories", false), Ok(Member::Other)));
    }

    #[test]
    fn default_repository_drops_archive_extensions() {
        let cases = [
            ("x/busybox.tar", "busybox"),
            ("alpine.tar.gz", "alpine"),
            ("a.tgz", "a"),
            ("img.oci", "img"),
            ("plain", "plain"),
        ];
        for (p, want) in cases {
            assert_eq!(
                Source::Archive(p.into()).default_repository().as_deref(),
                Some(want)
            );
        }
        assert_eq!(Source::Stdin.default_repository(), None);
    }

    #[test]
    fn names_follow_the_annotations() {
        use crate::digest::Algorithm;
        let mk = |ann: &[(&str, &str)], seed: &[u8]| {
            let mut d = oci::tests::desc(
                oci::MEDIA_OCI_MANIFEST,
                Digest::of(Algorithm::Sha256, seed),
                1,
            );
            for (k, v) in ann {
                d.annotations.insert((*k).into(), (*v).into());
            }
            d
        };
        let untagged = mk(&[], b"d");
        let index = ImageIndex::new(vec![
            mk(
                &[
                    (ANNOTATION_IMAGE_NAME, "docker.io/library/busybox:latest"),
                    (ANNOTATION_REF_NAME, "latest"),
                ],
                b"a",
            ),
            mk(&[(ANNOTATION_REF_NAME, "1.0")], b"b"),
            mk(&[(ANNOTATION_REF_NAME, "quay.io/x/y:2")], b"c"),
            untagged.clone(),
        ]);
        let got: Vec<String> = name_images(&index, Some("mine"), "src")
            .unwrap()
            .iter()
            .map(|(n, d)| {
                assert!(
                    d.annotations.is_empty(),
                    "naming annotations are not stored"
                );
                n.to_string()
            })
            .collect();
        let want = [
            "docker.io/library/busybox:latest".to_owned(),
            "mine:1.0".into(),
            format!("mine@{}", untagged.digest),
            "quay.io/x/y:2".into(),
        ];
        assert_eq!(got, want);
        let err = name_images(&index, None, "standard input")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pass --name"), "{err}");
        let bad = ImageIndex::new(vec![mk(&[(ANNOTATION_REF_NAME, "a/b:c/d")], b"e")]);
        assert!(name_images(&bad, Some("r"), "src").is_err());
        let clash = ImageIndex::new(vec![
            mk(&[(ANNOTATION_REF_NAME, "1")], b"a"),
            mk(&[(ANNOTATION_REF_NAME, "1")], b"b"),
        ]);
        assert!(name_images(&clash, Some("r"), "src")
            .unwrap_err()
            .to_string()
            .contains("names both"));
    }
}
