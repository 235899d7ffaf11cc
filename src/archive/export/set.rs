//! What an export sends, decided before a byte is written: the images (one platform of each
//! index, when asked), every blob of their closures once, their `index.json` and, when
//! asked, Docker's `manifest.json`; and the order the blobs go in, by path or children
//! before parents, as the destination asks.

use std::collections::{BTreeMap, HashSet};

use crate::content::Provider;
use crate::content::{Lease, WHOLE};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::{self, Entry};
use crate::oci::{self, Descriptor, Kind, OnMissing, PlatformSpec};

use super::dest::{Images, Order};
use super::docker;
use super::{ArchiveFormat, ExportOptions};

/// The images and blobs of one export.
pub struct Shipment {
    entries: Vec<Entry>,
    /// Every blob of the images' closures, keyed by digest.
    blobs: BTreeMap<Digest, Descriptor>,
    index_json: Vec<u8>,
    docker_manifest: Option<Vec<u8>>,
    repositories: Option<Vec<u8>>,
}

impl Shipment {
    /// What an export of `entries` sends: every blob of their closures must be in `from`.
    pub fn new(from: &dyn Provider, entries: &[Entry], opts: &ExportOptions) -> Result<Shipment> {
        Shipment::archive(from, entries, opts, ArchiveFormat::Oci)
    }

    /// What an archive of `entries` in `format` holds: under `ArchiveFormat::Docker`, docker's
    /// `manifest.json` and `repositories` too, and `index.json` names images as docker does.
    pub fn archive(
        from: &dyn Provider,
        entries: &[Entry],
        opts: &ExportOptions,
        format: ArchiveFormat,
    ) -> Result<Shipment> {
        let entries = match &opts.platform {
            Some(p) => entries
                .iter()
                .map(|e| pick_platform(from, e, p))
                .collect::<Result<Vec<_>>>()?,
            None => entries.to_vec(),
        };
        let blobs = layout::blobs(from, &entries, OnMissing::Fail)?;
        // Whatever is exported must import again.
        let index_json = match format {
            ArchiveFormat::Oci => layout::index_json(&entries),
            ArchiveFormat::Docker => docker::index_json(&entries),
        };
        oci::check_index_size("index.json", index_json.len() as u64)?;
        let (mut docker_manifest, mut repositories) = (None, None);
        if opts.docker_manifest || format == ArchiveFormat::Docker {
            let items = docker::items(from, &entries, opts.platform.as_ref())?;
            docker_manifest = Some(docker::manifest_json(&items)?);
            if format == ArchiveFormat::Docker {
                repositories = docker::repositories(&items)?;
            }
        }
        Ok(Shipment {
            entries,
            blobs,
            index_json,
            docker_manifest,
            repositories,
        })
    }

    /// Holds every blob in `lease` and checks that each is in `from` with its size: after
    /// this, a gc in another process cannot take one away mid-stream, so an export fails
    /// before its first byte or not at all.
    pub fn hold(&self, from: &dyn Provider, lease: &dyn Lease) -> Result<()> {
        lease.hold(WHOLE, &self.blobs.keys().collect::<Vec<_>>())?;
        for d in self.blobs.values() {
            match from.blob_size(&d.digest)? {
                Some(size) if size == d.size => {}
                Some(size) => {
                    return Err(Error::SizeMismatch {
                        digest: d.digest.clone(),
                        expected: d.size,
                        found: size,
                    })
                }
                None => {
                    return Err(Error::MissingBlob {
                        digest: d.digest.clone(),
                        referrer: None,
                    })
                }
            }
        }
        Ok(())
    }

    /// The digest of every blob sent.
    pub fn digests(&self) -> impl Iterator<Item = &Digest> {
        self.blobs.keys()
    }

    /// Bytes of blob content sent.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.values().map(|d| d.size).sum()
    }

    /// The images, sent after the blobs.
    pub fn images(&self) -> Images<'_> {
        Images {
            entries: &self.entries,
            index_json: &self.index_json,
            docker_manifest: self.docker_manifest.as_deref(),
            repositories: self.repositories.as_deref(),
        }
    }

    /// Every blob once, in `order`; `from` gives the indexes and manifests that say which
    /// blob is whose child.
    pub fn blobs_in(&self, order: Order, from: &dyn Provider) -> Result<Vec<&Descriptor>> {
        match order {
            Order::ByPath => {
                let mut all: Vec<(String, &Descriptor)> = self
                    .blobs
                    .iter()
                    .map(|(digest, desc)| (digest.blob_path(), desc))
                    .collect();
                all.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(all.into_iter().map(|(_, desc)| desc).collect())
            }
            Order::ChildrenFirst => self.children_first(from),
        }
    }

    /// Every blob after its children: a depth-first walk from each image that emits a blob
    /// once all it refers to is out. A blob no image reaches (there is none) would go last.
    fn children_first(&self, from: &dyn Provider) -> Result<Vec<&Descriptor>> {
        let deps = self.dependencies(from)?;
        let roots: Vec<&Digest> = self.entries.iter().map(|e| &e.target.digest).collect();
        let mut order = post_order(&roots, &deps);
        let emitted: HashSet<&Digest> = order.iter().copied().collect();
        let rest: Vec<&Digest> = self.blobs.keys().filter(|d| !emitted.contains(d)).collect();
        order.extend(rest);
        Ok(order
            .into_iter()
            .filter_map(|d| self.blobs.get(d))
            .collect())
    }

    /// The children of every index and manifest of the set, as every kind it is reached as
    /// (a manifest also listed as a layer is still a manifest).
    fn dependencies(&self, from: &dyn Provider) -> Result<BTreeMap<Digest, Vec<Digest>>> {
        let mut deps: BTreeMap<Digest, Vec<Digest>> = BTreeMap::new();
        let mut seen: HashSet<(Digest, Kind)> = HashSet::new();
        let mut queue: Vec<Descriptor> = self.entries.iter().map(|e| e.target.clone()).collect();
        while let Some(desc) = queue.pop() {
            let kind = oci::kind_of(&desc.media_type);
            if kind == Kind::Leaf
                || !self.blobs.contains_key(&desc.digest)
                || !seen.insert((desc.digest.clone(), kind))
            {
                continue;
            }
            for child in oci::children(&desc, &from.read_small(&desc)?)? {
                if self.blobs.contains_key(&child.digest) {
                    deps.entry(desc.digest.clone())
                        .or_default()
                        .push(child.digest.clone());
                    queue.push(child);
                }
            }
        }
        Ok(deps)
    }
}

/// `roots` and all they reach through `deps`, each after everything it reaches (content
/// addressing makes `deps` acyclic; a blob met again is not walked again either way).
fn post_order<'a>(
    roots: &[&'a Digest],
    deps: &'a BTreeMap<Digest, Vec<Digest>>,
) -> Vec<&'a Digest> {
    let mut out = Vec::new();
    let mut met: HashSet<&Digest> = HashSet::new();
    for &root in roots {
        if !met.insert(root) {
            continue;
        }
        let mut stack: Vec<(&Digest, usize)> = vec![(root, 0)];
        while let Some(top) = stack.last_mut() {
            let digest = top.0;
            let kids = deps.get(digest).map_or(&[][..], Vec::as_slice);
            match kids.get(top.1) {
                Some(kid) => {
                    top.1 += 1;
                    if met.insert(kid) {
                        stack.push((kid, 0));
                    }
                }
                None => {
                    out.push(digest);
                    stack.pop();
                }
            }
        }
    }
    out
}

/// An image with its index target replaced by the manifest for `platform`.
fn pick_platform(from: &dyn Provider, e: &Entry, platform: &PlatformSpec) -> Result<Entry> {
    match oci::select_platform(from, &e.target, platform)? {
        Some(target) => Ok(Entry {
            name: e.name.clone(),
            target,
        }),
        None => Err(Error::Invalid(format!(
            "{}: no manifest for platform {platform}",
            e.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn post_order_puts_children_first() {
        let d: Vec<Digest> = (0..5u8)
            .map(|i| Digest::of(Algorithm::Sha256, &[i]))
            .collect();
        // 0 -> {1, 2}; 1 -> {3}; 2 -> {3, 4}; a second root 2.
        let mut deps = BTreeMap::new();
        deps.insert(d[0].clone(), vec![d[1].clone(), d[2].clone()]);
        deps.insert(d[1].clone(), vec![d[3].clone()]);
        deps.insert(d[2].clone(), vec![d[3].clone(), d[4].clone()]);
        let got = post_order(&[&d[0], &d[2]], &deps);
        let pos = |x: &Digest| got.iter().position(|g| *g == x).unwrap();
        assert_eq!(got.len(), 5, "each once");
        for (parent, kids) in &deps {
            for k in kids {
                assert!(pos(k) < pos(parent), "{k} before {parent}");
            }
        }
    }
}
