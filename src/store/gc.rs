//! Garbage collection: mark every blob an image record reaches (indexes, manifests, configs,
//! layers), every blob an untagged image reaches whose OCI 1.1 `subject` is a kept manifest
//! (signatures, SBOMs), and every blob a live lease holds; sweep the other blob files; remove
//! the ingests of processes that are gone once they are older than the grace period, and the
//! kept ingests (`ingest/r-<alg>-<hex>`, for resuming a pull) that no writer holds once their
//! data is untouched for it; younger or held ones are kept and counted.
//!
//! Mark and sweep run inside one write transaction of `meta.db`, the lock every lease and
//! every record change also takes: see `leases` for why that makes gc safe while imports,
//! exports and a mount run in other processes. A record whose index or manifest cannot be read
//! makes gc stop before it removes anything, as the blobs behind it are unknown.
//!
//! A store whose `meta.db` was created while `blobs/` held blobs (the records were lost: see
//! `Store::adopted`) makes gc refuse too, until `gc_forced` (`gc --force`) or `fsck --repair`
//! clears the mark. Under `ingest/`, only directories of ours named as ingests are swept,
//! never through a link; anything else is left alone and reported.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rusqlite::TransactionBehavior;
use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::oci::{self, Descriptor, Kind, MAX_JSON_SIZE};

use super::check::{self, BlobFile, BlobKey};
use super::ingest::{process_alive, sweep_kept, sweepable, IngestKind, KeptSweep, DATA_FILE};
use super::leases;
use super::records::{self, now_ms};
use super::{adopted_in, clear_adopted, Store, DB_FILE, INGEST_DIR};

/// How long an abandoned ingest or lease, or a kept ingest no writer holds, stays before gc
/// removes it, unless `--grace` says (as long as a new mount keeps a kept ingest).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Say what would go, remove nothing.
    pub dry_run: bool,
    /// Ingests and leases of processes that are gone, and kept ingests no writer holds, are
    /// removed once this old.
    pub grace: Duration,
}

impl Default for GcOptions {
    fn default() -> GcOptions {
        GcOptions {
            dry_run: false,
            grace: DEFAULT_GRACE,
        }
    }
}

/// What a gc removed (or, dry, would remove).
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    /// The blobs swept, with their sizes.
    pub blobs: Vec<(Digest, u64)>,
    /// Blobs kept.
    pub kept: usize,
    /// Kept only because a live lease holds them.
    pub leased: usize,
    /// Ingests removed: of processes that are gone, and kept ones past the grace period.
    pub ingests: usize,
    pub ingest_bytes: u64,
    /// Kept ingests left for a pull to resume (a live writer holds them, or they are younger
    /// than the grace period), and the bytes they hold.
    pub partial: usize,
    pub partial_bytes: u64,
    /// Leases of processes that are gone, released.
    pub leases: usize,
    /// Entries under `ingest/` that are no ingest (a name not in the id format, a link, a
    /// file), left alone, and why.
    pub left_alone: Vec<(PathBuf, &'static str)>,
    /// The store's records were lost (see `Store::adopted`): a dry run tells what a forced gc
    /// would remove; a forced gc cleared the mark.
    pub adopted: Option<super::Adopted>,
}

impl GcReport {
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, s)| s).sum()
    }
}

/// The fields of a manifest that tie it to its subject.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Referrer {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    subject: Option<Subject>,
}

#[derive(Deserialize)]
struct Subject {
    digest: Digest,
}

/// Collects garbage; refuses, removing nothing, while the store's records are lost.
pub fn gc(store: &Store, opts: &GcOptions) -> Result<GcReport> {
    let mut report = collect(store, opts, &Scope::All { force: false })?;
    sweep_ingests(store, opts, &mut report)?;
    Ok(report)
}

/// Collects garbage even when the store's records were lost, and then clears that mark:
/// `gc --force`, the user's word that blobs no record reaches may go.
pub fn gc_forced(store: &Store, opts: &GcOptions) -> Result<GcReport> {
    let mut report = collect(store, opts, &Scope::All { force: true })?;
    sweep_ingests(store, opts, &mut report)?;
    Ok(report)
}

/// How far the clocks of processes sharing a store may disagree about when a record changed.
const RECORD_CLOCK_MARGIN_MS: i64 = 60_000;

pub use crate::content::TakeBack;

/// Removes those of `t.placed` that nothing needs: how an import takes back the blobs it
/// placed and no image of it reaches (or all of them, when it failed), while a blob another
/// import, the mount or an image also uses stays.
///
/// No full walk: the blobs were absent before the import, so a record that needs one either
/// was incomplete already (it stays as it was) or was made since by a process that held the
/// blob in a lease before it looked (leases are read), and registered it after the import
/// began: only the records changed since `since_ms` are walked, so this costs little in a
/// large store and keeps the write lock briefly.
pub fn remove_unneeded(store: &Store, t: &TakeBack<'_>) -> Result<GcReport> {
    if t.placed.is_empty() {
        return Ok(GcReport::default());
    }
    collect(store, &GcOptions::default(), &Scope::Only(t))
}

/// Which blobs a collection may remove.
enum Scope<'a> {
    /// Every blob file; `force` runs in spite of lost records.
    All { force: bool },
    /// What an import placed.
    Only(&'a TakeBack<'a>),
}

fn collect(store: &Store, opts: &GcOptions, scope: &Scope<'_>) -> Result<GcReport> {
    let mut conn = store.connect()?;
    // A dry run removes nothing: a read transaction (all a read-only store allows) sees one
    // snapshot of leases and records.
    let behavior = if opts.dry_run {
        TransactionBehavior::Deferred
    } else {
        TransactionBehavior::Immediate
    };
    let tx = conn.transaction_with_behavior(behavior)?;
    let mut report = GcReport::default();
    if let Scope::All { force } = scope {
        report.adopted = adopted_in(&tx)?;
        if let Some(a) = report.adopted.filter(|_| !force && !opts.dry_run) {
            return Err(Error::NoRecords {
                db: store.root().join(DB_FILE),
                blobs: a.blobs,
            });
        }
    }
    let (void, leased) = mark_leases(&tx, opts, scope)?;
    report.leases = void.len();
    // Sets of every blob of a large store: as bytes (`BlobKey`), not strings.
    let mut keep: HashSet<BlobKey> = leased.iter().map(BlobKey::of).collect();
    mark_records(store, &tx, scope, &mut keep)?;

    // What is on disk, and the untagged images whose subject is kept.
    let placed = match scope {
        Scope::Only(t) => Some(t.placed),
        Scope::All { .. } => None,
    };
    let mut on_disk = Vec::new();
    check::each_blob_file(store, |f| {
        if let BlobFile::Blob { digest, size } = f {
            if placed.is_none_or(|p| p.contains(&digest)) {
                on_disk.push((BlobKey::of(&digest), size));
            }
        }
        Ok(())
    })?;
    let present_subjects = matches!(scope, Scope::Only(t) if t.keep_referrers);
    mark_referrers(store, &on_disk, &mut keep, present_subjects);
    sweep_blobs(store, opts, on_disk, &keep, &mut report)?;
    report.leased = leased
        .iter()
        .filter(|d| store.blob_path(d).exists())
        .count();
    if !opts.dry_run {
        if report.adopted.is_some() {
            clear_adopted(&tx)?;
        }
        for id in &void {
            leases::delete_in(&tx, id)?;
        }
        // Where a removed blob was seen on a registry is of no use to a push any more.
        records::forget_origins_in(&tx, report.blobs.iter().map(|(d, _)| d))?;
        // Nor what was verified of it: a blob made again is another file.
        super::verified::forget_in(&tx, report.blobs.iter().map(|(d, _)| d))?;
        tx.commit()?;
    }
    Ok(report)
}

/// The leases of processes that are gone and older than the grace period (void: deleted by
/// a full gc), and every blob the other leases hold. Taking back an import's blobs voids none
/// and ignores the import's own lease.
fn mark_leases(
    tx: &rusqlite::Transaction<'_>,
    opts: &GcOptions,
    scope: &Scope<'_>,
) -> Result<(HashSet<String>, HashSet<Digest>)> {
    let cutoff = now_ms() - i64::try_from(opts.grace.as_millis()).unwrap_or(i64::MAX);
    let mut void: HashSet<String> = leases::all_in(tx)?
        .into_iter()
        .filter(|l| l.created <= cutoff && !i32::try_from(l.pid).is_ok_and(process_alive))
        .map(|l| l.id)
        .collect();
    let mut ignored = HashSet::new();
    if let Scope::Only(t) = scope {
        void.clear();
        ignored.insert(t.own.to_owned());
    }
    let held = leases::holds_in(tx)?
        .into_iter()
        .filter(|(lease, _)| !void.contains(lease) && !ignored.contains(lease))
        .map(|(_, d)| d)
        .collect();
    Ok((void, held))
}

/// Adds to `keep` the closure of every record (one record at a time; a target named several
/// times in a row walked once, the layers images share looked up once), or of those changed
/// since an import began; fails, removing nothing, when a closure cannot be told.
fn mark_records(
    store: &Store,
    tx: &rusqlite::Transaction<'_>,
    scope: &Scope<'_>,
    keep: &mut HashSet<BlobKey>,
) -> Result<()> {
    let since = match scope {
        Scope::All { .. } => i64::MIN,
        Scope::Only(t) => t.since_ms.saturating_sub(RECORD_CLOCK_MARGIN_MS),
    };
    let src = check::LeafSizes::new(store);
    let mut walked: check::WalkCache<()> = check::WalkCache::default();
    records::each_changed_since_in(tx, since, |name, json| {
        let target: Descriptor = serde_json::from_str(json)
            .map_err(|e| Error::Invalid(format!("gc: image record {name:?}: {e}")))?;
        let mut fresh = false;
        walked.get_or(&target, || fresh = true);
        if !fresh {
            return Ok(());
        }
        let c = check::walk(&src, &target);
        if c.has_unknown_children() {
            return Err(Error::Invalid(format!(
                "gc: image {name}: {}: nothing was removed (run layoutfs fsck; re-import or remove the image)",
                c.first_problem().unwrap_or_default()
            )));
        }
        keep.extend(c.present.keys().map(BlobKey::of));
        Ok(())
    })
}

/// Removes (or, dry, lists) the blobs of `on_disk` that are not in `keep`.
fn sweep_blobs(
    store: &Store,
    opts: &GcOptions,
    on_disk: Vec<(BlobKey, u64)>,
    keep: &HashSet<BlobKey>,
    report: &mut GcReport,
) -> Result<()> {
    for (key, size) in on_disk {
        if keep.contains(&key) {
            report.kept += 1;
            continue;
        }
        let digest = key.digest();
        if !opts.dry_run {
            let path = store.blob_path(&digest);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        report.blobs.push((digest, size));
    }
    Ok(())
}

/// Adds to `keep` the closures of the untagged images among `on_disk` whose `subject` is
/// kept (or, with `present_subjects`, is in the store at all), until nothing changes (a
/// signature of a signature stays too). Only blobs small enough to be a manifest are read,
/// and each at most once.
fn mark_referrers(
    store: &Store,
    on_disk: &[(BlobKey, u64)],
    keep: &mut HashSet<BlobKey>,
    present_subjects: bool,
) {
    let mut referrers: HashMap<Digest, (Descriptor, Digest)> = HashMap::new();
    for (key, size) in on_disk {
        if keep.contains(key) || *size > MAX_JSON_SIZE || *size < 2 {
            continue;
        }
        let digest = &key.digest();
        let Some(bytes) = read_small_file(store, digest, *size) else {
            continue;
        };
        if bytes.first() != Some(&b'{') {
            continue;
        }
        let Ok(r) = serde_json::from_slice::<Referrer>(&bytes) else {
            continue;
        };
        let (Some(media_type), Some(subject)) = (r.media_type, r.subject) else {
            continue;
        };
        if oci::kind_of(&media_type) == Kind::Leaf {
            continue;
        }
        let desc = Descriptor::new(media_type, digest.clone(), *size);
        referrers.insert(digest.clone(), (desc, subject.digest));
    }
    loop {
        let ready: Vec<Digest> = referrers
            .iter()
            .filter(|(_, (_, subject))| {
                keep.contains(&BlobKey::of(subject))
                    || (present_subjects
                        && !referrers.contains_key(subject)
                        && store.has_blob(subject).unwrap_or(false))
            })
            .map(|(d, _)| d.clone())
            .collect();
        if ready.is_empty() {
            return;
        }
        for d in ready {
            if let Some((desc, _)) = referrers.remove(&d) {
                keep.extend(check::walk(store, &desc).present.keys().map(BlobKey::of));
                keep.insert(BlobKey::of(&d));
            }
        }
    }
}

fn read_small_file(store: &Store, digest: &Digest, size: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(size as usize);
    store
        .open_blob_file(digest)
        .ok()?
        .take(MAX_JSON_SIZE)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// Removes the ingests of processes that are gone, once untouched for the grace period, and
/// the kept ingests no writer holds, once as old; counts the kept ones it keeps.
fn sweep_ingests(store: &Store, opts: &GcOptions, report: &mut GcReport) -> Result<()> {
    let dir = store.root().join(INGEST_DIR);
    let now = SystemTime::now();
    for e in fs::read_dir(&dir).at(&dir)? {
        let e = e.at(&dir)?;
        let path = e.path();
        let pid = match sweepable(&e) {
            Ok(IngestKind::Temporary { pid }) => pid,
            Ok(IngestKind::Kept) => {
                match sweep_kept(&path, opts.grace, !opts.dry_run)? {
                    KeptSweep::Kept { bytes } => {
                        report.partial += 1;
                        report.partial_bytes += bytes;
                    }
                    KeptSweep::Removed { bytes } => {
                        report.ingests += 1;
                        report.ingest_bytes += bytes;
                    }
                    KeptSweep::Gone => {}
                    KeptSweep::LeftAlone(why) => report.left_alone.push((path, why)),
                }
                continue;
            }
            Err(why) => {
                report.left_alone.push((path, why));
                continue;
            }
        };
        if process_alive(pid) {
            continue;
        }
        let data = fs::symlink_metadata(path.join(DATA_FILE)).ok();
        let touched = data
            .clone()
            .or_else(|| e.metadata().ok())
            .and_then(|m| m.modified().ok())
            .unwrap_or(now);
        let idle = now.duration_since(touched).unwrap_or_default();
        if idle < opts.grace {
            continue;
        }
        if !opts.dry_run {
            match fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        report.ingests += 1;
        report.ingest_bytes += data.map_or(0, |m| m.size());
    }
    Ok(())
}
