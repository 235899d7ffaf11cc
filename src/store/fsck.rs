//! fsck: re-hash every blob file on all cores, walk every image record, and say what is
//! wrong: blobs that do not hash to their name, blobs an image needs that are missing or the
//! wrong size, manifests that do not parse, files under `blobs/` that are no blob. `--repair`
//! moves the blobs that do not match their digest to `quarantine/<alg>/<hex>`: the store then
//! lacks them, so a re-import of an image that needs one writes it again.
//!
//! A store whose records were lost (`meta.db` created, missing or empty, while `blobs/` held
//! blobs: see `Store::adopted`) is a problem too; `--repair` then registers every index or
//! manifest in the store that no other one refers to (and that is no referrer: those gc keeps
//! by their subject) as `lost-found@<digest>`, and clears the mark, so that gc keeps what the
//! lost images needed until the user tags what they want and removes `lost-found`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::oci::{self, Descriptor, Kind, MAX_JSON_SIZE};
use crate::progress::Progress;
use crate::reference::Reference;

use super::check::{self, BlobFile, BlobKey};
use super::verified::Identity;
use super::{
    adopted_in, clear_adopted, ensure_dir, Store, COPY_CHUNK, PRIVATE_DIR_MODE, QUARANTINE_DIR,
};

/// The repository under which `fsck --repair` registers the images it finds in a store whose
/// records were lost.
pub const LOST_FOUND: &str = "lost-found";

#[derive(Debug, Clone, Default)]
pub struct FsckOptions {
    pub repair: bool,
    /// Threads that hash [default: the cores].
    pub threads: Option<usize>,
}

/// One thing wrong, with the images it breaks (sorted names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The file does not hash to its name.
    Corrupt {
        digest: Digest,
        found: Digest,
        images: Vec<String>,
    },
    /// An image needs the blob and the store lacks it.
    Missing { digest: Digest, images: Vec<String> },
    /// The blob is there but wrong for what refers to it (size, JSON, nesting).
    Damaged {
        digest: Digest,
        message: String,
        images: Vec<String>,
    },
    /// A file under `blobs/` that is no blob.
    Stray { path: PathBuf, why: &'static str },
    /// A blob file that could not be read.
    Unreadable { digest: Digest, message: String },
    /// `meta.db` was created (missing or empty) while the store held `blobs` blob files.
    NoRecords { blobs: u64 },
    /// A name with a digest whose record names other content (made before such records were
    /// refused).
    Misnamed { name: String, target: Digest },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let breaks = |images: &[String]| {
            if images.is_empty() {
                String::from(" (no image needs it)")
            } else {
                format!(" (breaks {})", images.join(", "))
            }
        };
        match self {
            Problem::Corrupt {
                digest,
                found,
                images,
            } => write!(
                f,
                "corrupt blob {digest}: content hashes to {found}{}",
                breaks(images)
            ),
            Problem::Missing { digest, images } => {
                write!(f, "missing blob {digest}{}", breaks(images))
            }
            Problem::Damaged {
                digest,
                message,
                images,
            } => write!(f, "damaged blob {digest}: {message}{}", breaks(images)),
            Problem::Stray { path, why } => write!(f, "stray file {}: {why}", path.display()),
            Problem::Unreadable { digest, message } => {
                write!(f, "unreadable blob {digest}: {message}")
            }
            Problem::Misnamed { name, target } => write!(
                f,
                "image {name} names {target}: a name with a digest must name that content \
                 (layoutfs rm {name})"
            ),
            Problem::NoRecords { blobs } => write!(
                f,
                "no image records: meta.db was created (missing or empty) while the store held \
                 {blobs} blobs; gc refuses until fsck --repair registers the images it finds as \
                 {LOST_FOUND}@<digest>, or gc --force"
            ),
        }
    }
}

#[derive(Debug, Default)]
pub struct FsckReport {
    pub blobs: usize,
    pub bytes: u64,
    pub images: usize,
    /// Images whose closure is incomplete or damaged.
    pub broken_images: usize,
    pub problems: Vec<Problem>,
    /// Blobs moved to quarantine by `--repair`, and where.
    pub quarantined: Vec<(Digest, PathBuf)>,
    /// Images `--repair` registered in a store whose records were lost.
    pub recovered: Vec<Reference>,
    /// Blobs no image, referrer or lease needs: what gc would remove (count, bytes); None
    /// when gc would refuse (an index or manifest of an image cannot be read).
    pub unreferenced: Option<(usize, u64)>,
}

pub fn fsck(store: &Store, opts: &FsckOptions) -> Result<FsckReport> {
    let mut report = FsckReport::default();
    // Every blob of the store, as bytes (`BlobKey`): a third of the memory of `Digest`s.
    let mut blobs = Vec::new();
    check::each_blob_file(store, |f| {
        match f {
            BlobFile::Blob { digest, size } => blobs.push((BlobKey::of(&digest), size)),
            BlobFile::Stray { path, why } => report.problems.push(Problem::Stray { path, why }),
        }
        Ok(())
    })?;
    report.blobs = blobs.len();
    report.bytes = blobs.iter().map(|(_, s)| s).sum();

    let hashed = rehash_all(store, &blobs, opts.threads)?;
    check_records_lost(store, opts, &blobs, &hashed, &mut report)?;
    let mut needs = walk_images(store, &hashed, &mut report)?;

    for (key, _) in &blobs {
        let digest = &key.digest();
        match hashed.get(digest) {
            Some(Hashed::Mismatch(found, hashed_file)) => {
                let mut images = names(digest, &needs.needed_by);
                if let Some((_, more)) = needs.damaged.remove(digest) {
                    images.extend(more);
                    images.sort();
                    images.dedup();
                }
                report.problems.push(Problem::Corrupt {
                    digest: digest.clone(),
                    found: found.clone(),
                    images,
                });
                if opts.repair {
                    if let Some(to) = quarantine(store, digest, *hashed_file)? {
                        report.quarantined.push((digest.clone(), to));
                    }
                }
            }
            Some(Hashed::Failed(message)) => report.problems.push(Problem::Unreadable {
                digest: digest.clone(),
                message: message.clone(),
            }),
            _ => {}
        }
    }
    for (digest, images) in needs.missing {
        report.problems.push(Problem::Missing {
            digest,
            images: images.into_iter().collect(),
        });
    }
    for (digest, (message, images)) in needs.damaged {
        report.problems.push(Problem::Damaged {
            digest,
            message,
            images: images.into_iter().collect(),
        });
    }
    // The list of every blob is not needed by gc's own walk: freed first, the two peaks
    // do not add up.
    drop(blobs);
    drop(hashed);
    let dry = super::gc::GcOptions {
        dry_run: true,
        ..Default::default()
    };
    // What gc would sweep; a store whose records cannot be walked has problems listed already.
    report.unreferenced = super::gc::gc(store, &dry)
        .ok()
        .map(|g| (g.blobs.len(), g.bytes()));
    Ok(report)
}

/// Reports a store whose records were lost; with `--repair`, registers the top images it
/// finds among the sound blobs under `lost-found` and clears the mark.
fn check_records_lost(
    store: &Store,
    opts: &FsckOptions,
    blobs: &[(BlobKey, u64)],
    hashed: &BTreeMap<Digest, Hashed>,
    report: &mut FsckReport,
) -> Result<()> {
    let Some(adopted) = adopted_in(&store.connect()?)? else {
        return Ok(());
    };
    report.problems.push(Problem::NoRecords {
        blobs: adopted.blobs,
    });
    if opts.repair {
        let sound: Vec<(Digest, u64)> = blobs
            .iter()
            .map(|(k, size)| (k.digest(), *size))
            .filter(|(d, _)| !hashed.contains_key(d))
            .collect();
        let found = roots(store, &sound.iter().collect::<Vec<_>>())?;
        store.records().put(&found)?;
        clear_adopted(&store.connect()?)?;
        report.recovered = found.into_iter().map(|(name, _)| name).collect();
    }
    Ok(())
}

/// Which images need each blob that failed its re-hash, and what the walks found missing or
/// damaged: only what is wrong is kept per name, so the memory follows the problems, not the
/// store (a layer 100,000 images share is not listed with their names).
#[derive(Default)]
struct Needs {
    needed_by: BTreeMap<Digest, BTreeSet<String>>,
    missing: BTreeMap<Digest, BTreeSet<String>>,
    damaged: BTreeMap<Digest, (String, BTreeSet<String>)>,
}

/// Walks every image, one record at a time (a target named several times in a row walked
/// once), counting the images broken and the names pinned to other content.
fn walk_images(
    store: &Store,
    hashed: &BTreeMap<Digest, Hashed>,
    report: &mut FsckReport,
) -> Result<Needs> {
    let mut needs = Needs::default();
    let src = check::LeafSizes::new(store);
    let mut walked: check::WalkCache<check::Closure> = check::WalkCache::default();
    check::each_image(store, |img| {
        report.images += 1;
        let name = img.name.to_string();
        if img.name.check_target(&img.target.digest).is_err() {
            report.problems.push(Problem::Misnamed {
                name: name.clone(),
                target: img.target.digest.clone(),
            });
        }
        let c = walked.get_or(&img.target, || check::walk(&src, &img.target));
        let mut broken = !c.is_complete();
        for d in c.present.keys() {
            if matches!(
                hashed.get(d),
                Some(Hashed::Mismatch(..) | Hashed::Failed(_))
            ) {
                broken = true;
                needs
                    .needed_by
                    .entry(d.clone())
                    .or_default()
                    .insert(name.clone());
            }
        }
        // A platform's manifest an index lists and the store lacks is a platform a pull left
        // out (see `Closure::left_out`): not a problem of the store.
        for d in c.missing.iter().filter(|d| !c.left_out.contains(d)) {
            needs
                .missing
                .entry(d.digest.clone())
                .or_default()
                .insert(name.clone());
        }
        for (d, e) in &c.damaged {
            let entry = needs
                .damaged
                .entry(d.digest.clone())
                .or_insert_with(|| (e.to_string(), BTreeSet::new()));
            entry.1.insert(name.clone());
        }
        report.broken_images += usize::from(broken);
        Ok(())
    })?;
    Ok(needs)
}

/// The names in `map` for `d`, sorted.
fn names(d: &Digest, map: &BTreeMap<Digest, BTreeSet<String>>) -> Vec<String> {
    map.get(d)
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default()
}

enum Hashed {
    /// What the file hashed to, and which file it was (device, inode).
    Mismatch(Digest, (u64, u64)),
    Failed(String),
}

/// Hashes every blob on `threads` threads, largest first; returns only what is wrong.
fn rehash_all(
    store: &Store,
    blobs: &[(BlobKey, u64)],
    threads: Option<usize>,
) -> Result<BTreeMap<Digest, Hashed>> {
    let mut jobs: Vec<&(BlobKey, u64)> = blobs.iter().collect();
    jobs.sort_by_key(|(_, s)| std::cmp::Reverse(*s));
    let total = jobs.iter().map(|(_, s)| s).sum();
    let progress = Progress::bytes("checking", Some(total));
    let workers = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, jobs.len().max(1));
    let queue = Mutex::new(jobs.into_iter());
    let out = Mutex::new(BTreeMap::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let mut buf = vec![0u8; COPY_CHUNK];
                while !stop.load(Ordering::Relaxed) {
                    let Some((key, _)) = queue.lock().next() else {
                        return;
                    };
                    let digest = &key.digest();
                    match hash_file(store, digest, &mut buf, &progress) {
                        Ok((found, _, identity)) if found == *digest => {
                            if !store.is_read_only() {
                                store.verified().note(digest, identity, store.root());
                            }
                        }
                        Ok((found, file, _)) => {
                            out.lock()
                                .insert(digest.clone(), Hashed::Mismatch(found, file));
                        }
                        // Gone since it was listed (a gc in another process): not a problem.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            out.lock()
                                .insert(digest.clone(), Hashed::Failed(e.to_string()));
                        }
                    }
                }
            });
        }
    });
    progress.finish();
    let out = out.into_inner();
    // What hashed right is recorded as verified (later mounts trust it while unchanged); what
    // did not is forgotten, so no reader trusts a record of it.
    let wrong: Vec<Digest> = out.keys().cloned().collect();
    let recorded = store
        .flush_verified()
        .and_then(|()| store.verified().forget(&wrong));
    if let Err(e) = recorded {
        tracing::warn!("verified records not updated: {e}");
    }
    Ok(out)
}

fn hash_file(
    store: &Store,
    digest: &Digest,
    buf: &mut [u8],
    progress: &Progress,
) -> io::Result<(Digest, (u64, u64), Identity)> {
    let file = store.open_blob_file(digest)?;
    // Taken before hashing: a change while it is read leaves a record no file matches.
    let meta = file.metadata()?;
    let found =
        crate::digest::hash_file(digest.algorithm(), &file, None, buf, |n| progress.add(n))?;
    Ok((found, (meta.dev(), meta.ino()), Identity::of(&meta)))
}

/// Moves a blob to `quarantine/<alg>/<hex>`, replacing an earlier quarantined copy, if the
/// file there is still the one that hashed wrong (`hashed`: device, inode): one replaced since
/// (by a gc and a re-import in another process) is left alone, and None returned.
fn quarantine(store: &Store, digest: &Digest, hashed: (u64, u64)) -> Result<Option<PathBuf>> {
    let dir = store
        .root()
        .join(QUARANTINE_DIR)
        .join(digest.algorithm().name());
    ensure_dir(&store.root().join(QUARANTINE_DIR), PRIVATE_DIR_MODE)?;
    ensure_dir(&dir, PRIVATE_DIR_MODE)?;
    let to = dir.join(digest.hex());
    let from = store.blob_path(digest);
    match fs::symlink_metadata(&from) {
        Ok(m) if (m.dev(), m.ino()) == hashed => {}
        Ok(_) => {
            tracing::warn!("blob {digest} changed since it was hashed: not moved to quarantine");
            return Ok(None);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&from, e)),
    }
    fs::rename(&from, &to).at(&from)?;
    super::sync_dir(from.parent().unwrap_or(store.root()))?;
    Ok(Some(to))
}

/// What tells an index or manifest among blobs: its media type, or the fields of one.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<IgnoredAny>,
    #[serde(default)]
    config: Option<IgnoredAny>,
    #[serde(default)]
    layers: Option<IgnoredAny>,
    #[serde(default)]
    subject: Option<IgnoredAny>,
}

/// The indexes and manifests among `blobs` that no other one refers to and that are no
/// referrer, as `lost-found@<digest>` records, sorted by digest.
fn roots(store: &Store, blobs: &[&(Digest, u64)]) -> Result<Vec<(Reference, Descriptor)>> {
    let mut candidates = Vec::new();
    for (digest, size) in blobs {
        if *size > MAX_JSON_SIZE || *size < 2 {
            continue;
        }
        let mut bytes = Vec::new();
        let read = store
            .open_blob_file(digest)
            .and_then(|f| f.take(MAX_JSON_SIZE).read_to_end(&mut bytes));
        if read.is_err() || bytes.first() != Some(&b'{') {
            continue;
        }
        let Ok(p) = serde_json::from_slice::<Probe>(&bytes) else {
            continue;
        };
        if p.subject.is_some() {
            continue;
        }
        let media_type = match p.media_type {
            Some(m) => m,
            None if p.manifests.is_some() => oci::MEDIA_OCI_INDEX.to_owned(),
            None if p.config.is_some() && p.layers.is_some() => oci::MEDIA_OCI_MANIFEST.to_owned(),
            None => continue,
        };
        if oci::kind_of(&media_type) == Kind::Leaf {
            continue;
        }
        candidates.push(Descriptor::new(media_type, digest.clone(), *size));
    }
    let mut referenced = BTreeSet::new();
    for desc in &candidates {
        let c = check::walk(store, desc);
        referenced.extend(c.present.into_keys().filter(|d| *d != desc.digest));
    }
    let mut out = Vec::new();
    for desc in candidates {
        if referenced.contains(&desc.digest) {
            continue;
        }
        let name: Reference = format!("{LOST_FOUND}@{}", desc.digest)
            .parse()
            .map_err(Error::Reference)?;
        out.push((name, desc));
    }
    out.sort_by(|a, b| a.1.digest.cmp(&b.1.digest));
    Ok(out)
}

impl FsckReport {
    /// Whether anything is wrong (stray files included).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn quarantine_moves_only_the_file_that_hashed_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let d = Digest::of(Algorithm::Sha256, b"blob");
        let mut w = store.ingest(&d, Some(4)).unwrap();
        w.write_all(b"blob").unwrap();
        w.commit().unwrap();
        let path = store.blob_path(&d);
        // Another file is there now than the one hashed (a gc and a re-import meanwhile).
        assert_eq!(quarantine(&store, &d, (0, 0)).unwrap(), None);
        assert!(path.exists());
        let m = fs::symlink_metadata(&path).unwrap();
        let to = quarantine(&store, &d, (m.dev(), m.ino())).unwrap().unwrap();
        assert!(!path.exists());
        assert_eq!(fs::read(to).unwrap(), b"blob");
    }
}
