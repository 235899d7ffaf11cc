//! What `index.json` written into the mount does to image records: the names it gives, the
//! images it sets (registered at once when their blobs are all in the store, else pending), the
//! pending images registered when their last blob commits, and the holders in the mount's lease
//! that keep what was written, and what pending images need, from a gc meanwhile. Every change
//! is made under `Fs::write_lock`, which serialises them (see `fs::state` for the lock order).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::content::Change;
use crate::content::Held;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::{self, Entry};
use crate::oci::{self, BlobSource, Descriptor, ImageIndex};
use crate::reference::{check_tag, Reference};

use super::error::{FsError, FsResult};
use super::inode::Node;

/// The name an image listed in a repository's `index.json` gets in that repository: the tag in
/// `org.opencontainers.image.ref.name` (or the tag of a full name there), else its digest.
pub fn name_in_repo(repo: &str, d: &Descriptor) -> Result<Reference> {
    match d.annotations.get(oci::ANNOTATION_REF_NAME) {
        Some(r) if check_tag(r).is_ok() => Ok(Reference::tagged(repo, r)?),
        Some(r) => {
            let full: Reference = r.parse().map_err(|_| {
                Error::layout(
                    format!("{repo}/index.json"),
                    format!(
                        "{} {r:?} is neither a tag nor a full image name",
                        oci::ANNOTATION_REF_NAME
                    ),
                )
            })?;
            match full.tag() {
                Some(t) => Ok(Reference::tagged(repo, t)?),
                None => {
                    // As import: a name with a digest names exactly that content.
                    full.check_target(&d.digest)
                        .map_err(|e| Error::layout(format!("{repo}/index.json"), e.to_string()))?;
                    Ok(Reference::digested(repo, d.digest.clone())?)
                }
            }
        }
        None => Ok(Reference::digested(repo, d.digest.clone())?),
    }
}

/// Parses `index.json` bytes written into `repo` into the images it names.
pub fn parse_index(repo: &str, bytes: &[u8]) -> Result<BTreeMap<Reference, Descriptor>> {
    let index = ImageIndex::parse(&format!("{repo}/index.json"), bytes)?;
    let mut out = BTreeMap::new();
    for d in &index.manifests {
        let name = name_in_repo(repo, d)?;
        let target = layout::unnamed_descriptor(d);
        layout::add_listed(&mut out, name, target, &format!("{repo}/index.json"))?;
    }
    Ok(out)
}

/// The blobs below `root` (itself included) that the store does not have yet. Blobs that are
/// there are checked for size, and manifests and indexes among them are read (and re-hashed);
/// anything damaged fails. The one closure walk (`oci::walk`), as import and `images` use it.
pub fn missing_blobs(store: &dyn BlobSource, root: &Descriptor) -> Result<Vec<Descriptor>> {
    let c = oci::walk(store, root, oci::Policy::REPORT)?;
    match c.damaged.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(c.missing),
    }
}

/// The lease holder of the blobs process `pid` wrote into the repository of id `repo` (`*`
/// when the repository is not known): released when that process writes the repository's
/// `index.json`, or the repository goes. By id, so that it follows a rename.
pub(super) fn writer_holder(repo: Option<u64>, pid: u32) -> String {
    match repo {
        Some(id) => format!("w {id} {pid}"),
        None => format!("w * {pid}"),
    }
}

/// Image records to put: name and target.
type Images = Vec<(Reference, Descriptor)>;

/// The lease holder of a pending image's blobs, by its repository's id and its name there (so
/// that it follows a rename): released when it is registered or dropped.
fn pending_holder(repo: u64, name: &Reference) -> String {
    let full = name.to_string();
    let in_repo = full.get(name.repository().len()..).unwrap_or(&full);
    format!("p {repo} {in_repo}")
}

impl super::Fs {
    /// Holds `digest` in the mount's lease before it is committed (or found in the store).
    pub(super) fn hold(&self, holder: &str, digest: &Digest) -> Result<()> {
        match &self.lease {
            Some(lease) => lease.hold(holder, &[digest]),
            None => Ok(()),
        }
    }

    pub(super) fn unhold(&self, holders: impl IntoIterator<Item = String>) -> Result<()> {
        if let Some(lease) = &self.lease {
            for h in holders {
                lease.release(&h)?;
            }
        }
        Ok(())
    }

    /// The store, with every blob a walk looks up held under `holder` first (plain on a
    /// mount without a lease).
    pub(super) fn held<'a>(&'a self, holder: &'a str) -> Box<dyn BlobSource + 'a> {
        match &self.lease {
            Some(lease) => Box::new(Held {
                source: self.content(),
                lease: &**lease,
                holder,
            }),
            None => Box::new(self.content()),
        }
    }

    /// Sets the images of the repository whose `index.json` is `ino` from bytes written by
    /// process `pid`. The repository's name is read under the serialising lock, so a rename
    /// meanwhile applies them under its new name.
    pub(super) fn apply_index(&self, ino: u64, bytes: &[u8], pid: u32) -> FsResult<()> {
        let _serial = self.write_lock.lock();
        let Node::Index(repo) = self.node(ino)? else {
            return Err(FsError::NotFound);
        };
        let desired = parse_index(&repo, bytes)?;
        let records = self.content().catalog();
        let registered: BTreeSet<Reference> = records
            .of_repository(&repo)?
            .into_iter()
            .map(|i| i.name)
            .collect();
        let (pending_now, seen, id) = {
            let mut w = self.write.lock();
            let seen = w.seen_by(pid, &repo);
            (w.pending_of(&repo), seen, w.repo_id(&repo))
        };
        let base = seen.unwrap_or_else(|| {
            let pending = pending_now.iter().map(|e| e.name.clone());
            registered.iter().cloned().chain(pending).collect()
        });
        let (put, wait) = self.complete_or_waiting(id, &desired)?;
        let remove: Vec<Reference> = registered
            .iter()
            .filter(|n| base.contains(n) && !desired.contains_key(n))
            .cloned()
            .collect();
        tracing::debug!(
            pid,
            %repo,
            base = ?base.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            desired = ?desired.keys().map(|n| n.to_string()).collect::<Vec<_>>(),
            removed = ?remove.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "index.json applied"
        );
        // The repository stays, with or without images, until removed.
        records.apply(&Change {
            put: &put,
            remove: &remove,
            keep: &[repo.to_string()],
            ..Change::default()
        })?;
        {
            let mut w = self.write.lock();
            let state = w.repo_mut(&repo);
            state
                .pending
                .retain(|e| !base.contains(&e.name) && !desired.contains_key(&e.name));
            state.pending.extend(wait);
            state.path = false;
            state.set_layout_name("index.json", true);
        }
        self.views.invalidate();
        self.views.forget_repo(&repo);
        self.refresh_wanted()?;
        // Registered images are held by their records now, pending ones by their own holders;
        // what this writer wrote and no image here names is garbage.
        let still = self.pending();
        let done = desired.keys().chain(base.iter());
        let done = done.filter(|n| !still.contains(n));
        self.unhold(done.map(|n| pending_holder(id, n)))?;
        self.unhold([writer_holder(Some(id), pid), writer_holder(None, pid)])?;
        Ok(())
    }

    /// The images of `desired` whose blobs are all in the store (to register), and the others
    /// (to wait), each pending image's blobs held under its own holder.
    pub(super) fn complete_or_waiting(
        &self,
        repo_id: u64,
        desired: &BTreeMap<Reference, Descriptor>,
    ) -> FsResult<(Images, Vec<Entry>)> {
        let mut put = Vec::new();
        let mut wait = Vec::new();
        for (name, target) in desired {
            let holder = pending_holder(repo_id, name);
            let missing = missing_blobs(&*self.held(&holder), target)?;
            if missing.is_empty() {
                put.push((name.clone(), target.clone()));
            } else {
                tracing::warn!(
                    "{name} waits for {} blob(s), first {}",
                    missing.len(),
                    missing[0].digest
                );
                wait.push(Entry {
                    name: name.clone(),
                    target: target.clone(),
                });
            }
        }
        Ok((put, wait))
    }

    /// Registers every pending image whose blobs are all in the store now.
    pub(super) fn register_pending(&self) -> FsResult<()> {
        let _serial = self.write_lock.lock();
        let pending: Vec<(u64, Entry)> = {
            let mut w = self.write.lock();
            let entries: Vec<Entry> = w.pending().cloned().collect();
            entries
                .into_iter()
                .map(|e| (w.repo_id(e.name.repository()), e))
                .collect()
        };
        let mut put = Vec::new();
        let mut holders = Vec::new();
        for (id, e) in pending {
            let holder = pending_holder(id, &e.name);
            if missing_blobs(&*self.held(&holder), &e.target)?.is_empty() {
                put.push((e.name, e.target));
                holders.push(holder);
            }
        }
        if put.is_empty() {
            // A manifest that arrived makes its layers known: their sizes are wanted now.
            return self.refresh_wanted();
        }
        self.content().catalog().update(&put, &[])?;
        for (name, _) in &put {
            tracing::info!("{name} registered: its last blob arrived");
        }
        self.unhold(holders)?;
        let done: Vec<Reference> = put.into_iter().map(|(n, _)| n).collect();
        self.write.lock().drop_pending(&done);
        self.views.invalidate();
        self.refresh_wanted()
    }

    pub(super) fn refresh_wanted(&self) -> FsResult<()> {
        let pending: Vec<Entry> = self.write.lock().pending().cloned().collect();
        let mut wanted = HashMap::new();
        for e in &pending {
            for d in missing_blobs(self.content(), &e.target)? {
                wanted.insert(d.digest, d.size);
            }
        }
        self.write.lock().wanted = wanted;
        Ok(())
    }

    /// Images written into the mount that still wait for blobs.
    pub fn pending(&self) -> Vec<Reference> {
        let w = self.write.lock();
        w.pending().map(|e| e.name.clone()).collect()
    }

    /// Removes every image of `repo` (what unlinking its `index.json` does), with
    /// `Fs::write_lock` held by the caller, which named `repo` under it.
    pub(super) fn clear_repo(&self, repo: &str) -> FsResult<()> {
        let names: Vec<Reference> = self
            .content()
            .catalog()
            .of_repository(repo)?
            .into_iter()
            .map(|i| i.name)
            .collect();
        // The repository stays, with no image, until removed.
        self.content().catalog().apply(&Change {
            remove: &names,
            keep: &[repo.to_owned()],
            ..Change::default()
        })?;
        let (dropped, id) = {
            let mut w = self.write.lock();
            let state = w.repo_mut(repo);
            let dropped = std::mem::take(&mut state.pending);
            // Its writers' holders are released below.
            state.held = false;
            (dropped, state.id)
        };
        self.views.invalidate();
        self.unhold(dropped.iter().map(|e| pending_holder(id, &e.name)))?;
        if let Some(lease) = &self.lease {
            lease.release_prefix(&format!("w {id} "))?;
        }
        if !dropped.is_empty() {
            // The sizes the dropped images gave their blobs no longer bind writes.
            self.refresh_wanted()?;
        }
        Ok(())
    }

    /// Releases every lease holder named for the repository of id `id` (its state forgotten):
    /// what was written there, and what its pending images needed.
    pub(super) fn release_repo(&self, id: Option<u64>) -> FsResult<()> {
        if let (Some(lease), Some(id)) = (&self.lease, id) {
            lease.release_prefix(&format!("w {id} "))?;
            lease.release_prefix(&format!("p {id} "))?;
        }
        Ok(())
    }

    /// The image of `repo` (registered or pending) whose closure holds `digest`, if any: its
    /// blob may not be unlinked from the layout while the image is there, or the layout would
    /// no longer hold what its `index.json` names.
    pub(super) fn needed_by(&self, repo: &str, digest: &Digest) -> FsResult<Option<Reference>> {
        let Some(view) = self.views.repo(repo)? else {
            return Ok(None);
        };
        // Walked here, not read from the view's blobs: a blob committed through another
        // repository (a pending image's manifest) changes what the images need without
        // changing the images, so the view may be older than the store.
        for e in view.entries.iter() {
            let closure = oci::closure(self.content(), &e.target, oci::OnMissing::Skip).map_err(
                |source| FsError::Repository {
                    repository: repo.to_owned(),
                    source,
                },
            )?;
            if closure.contains_key(digest) {
                return Ok(Some(e.name.clone()));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn image_names() {
        let d = crate::oci::tests::desc(
            oci::MEDIA_OCI_MANIFEST,
            Digest::of(Algorithm::Sha256, b"m"),
            1,
        );
        let with = |r: &str| {
            let mut d = d.clone();
            d.annotations
                .insert(oci::ANNOTATION_REF_NAME.into(), r.into());
            d
        };
        assert_eq!(
            name_in_repo("x", &with("1.0")).unwrap().to_string(),
            "x:1.0"
        );
        assert_eq!(
            name_in_repo("x", &with("docker.io/library/busybox:1.36"))
                .unwrap()
                .to_string(),
            "x:1.36"
        );
        assert_eq!(
            name_in_repo("x", &d).unwrap().to_string(),
            format!("x@{}", d.digest)
        );
        assert!(name_in_repo("x", &with("Not A Tag!")).is_err());
    }
}
