//! Docker 25 and later save an OCI layout with `manifest.json` beside it. `index.json` names
//! the images; `manifest.json` is read for what the index lacks or got wrong:
//! - an image the index leaves unnamed takes the `RepoTags` of the item with its config and
//!   its layers (the same blobs in the same order);
//! - an image the index lists with the item's config and the item's layers in another order
//!   (docker 25.0 built those manifests from a Go map: moby 17fd6562bf) is replaced by the
//!   manifest made from the item, which `docker load` would read, checked against the config's
//!   diff_ids, under the index's names;
//! - an item no image of the index (nor a manifest of an index in it) has is made and added
//!   (docker 25 leaves an untagged image out of `index.json`: moby#51389).
//!
//! Every index image and every distinct item is looked at once, through maps keyed by config
//! and layers: however many times an archive repeats them, the work and the names made grow
//! with what it holds, not with products of it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::digest::Digest;
use crate::error::Result;
use crate::oci::{self, Descriptor, ImageIndex, Kind};
use crate::reference::Reference;

use super::super::super::intake::Intake;
use super::{is_named, named, ArchiveStream};

/// An image by its config and the digests of its layers, in order.
type Shape = (Digest, Vec<Digest>);

/// The images of an index.
#[derive(Default)]
struct Listed {
    /// Top-level manifests by config and layers: the positions listing them.
    exact: BTreeMap<Shape, Vec<usize>>,
    /// Top-level manifests by config and the set of their layers.
    loose: BTreeMap<(Digest, BTreeSet<Digest>), Vec<usize>>,
    /// The shapes of the manifests of indexes listed (a multi-platform image).
    nested: HashSet<Shape>,
}

/// What the items make of the index, by position: new targets, and names for the unnamed.
#[derive(Default)]
struct Changes {
    retarget: BTreeMap<usize, Descriptor>,
    names: BTreeMap<usize, BTreeSet<Reference>>,
    added: Vec<Descriptor>,
}

impl ArchiveStream {
    /// Reads `manifest.json` into `index` (see the module doc).
    pub(super) fn merge_docker(&self, index: &mut ImageIndex, intake: &Intake<'_>) -> Result<()> {
        let items = self.items()?;
        self.check_links()?;
        let listed = listed(index, intake)?;
        // Items of one shape are one image: their tags are pooled, and it is made once.
        let mut shapes: BTreeMap<Shape, (usize, BTreeSet<Reference>)> = BTreeMap::new();
        for (n, item) in items.iter().enumerate() {
            let config = self.config(item, intake)?;
            let shape = (config.digest.clone(), self.layer_digests(item)?);
            let slot = shapes.entry(shape).or_insert_with(|| (n, BTreeSet::new()));
            slot.1.extend(item.repo_tags.iter().cloned());
        }
        let mut changes = Changes::default();
        let mut stored = HashSet::new();
        for (shape, (n, tags)) in &shapes {
            let item = &items[*n];
            if let Some(slots) = listed.exact.get(shape) {
                changes.name(index, slots, tags);
                continue;
            }
            let set: BTreeSet<Digest> = shape.1.iter().cloned().collect();
            let reordered = listed.loose.get(&(shape.0.clone(), set));
            if reordered.is_none() && listed.nested.contains(shape) {
                continue;
            }
            let desc = self.make_image(n + 1, item, intake, &mut stored)?;
            match reordered {
                Some(slots) => {
                    for &i in slots {
                        changes.retarget.insert(i, desc.clone());
                    }
                    changes.name(index, slots, tags);
                }
                None => changes.added.extend(named(&desc, tags)),
            }
        }
        changes.apply(index);
        Ok(())
    }
}

impl Changes {
    /// Gives `tags` to the unnamed images at `slots` (once each: all of one digest become one
    /// entry per tag).
    fn name(&mut self, index: &ImageIndex, slots: &[usize], tags: &BTreeSet<Reference>) {
        if tags.is_empty() {
            return;
        }
        let mut first_of: HashMap<&Digest, usize> = HashMap::new();
        for &i in slots {
            let d = &index.manifests[i];
            if !is_named(d) {
                let first = *first_of.entry(&d.digest).or_insert(i);
                self.names
                    .entry(first)
                    .or_default()
                    .extend(tags.iter().cloned());
                if first != i {
                    // Named through the first of its digest; listed once.
                    self.names.entry(i).or_default();
                }
            }
        }
    }

    /// The index with the changes made: retargeted entries keep their names; an unnamed
    /// entry given names becomes one entry per name (or is dropped, when the first entry of
    /// its digest carries them).
    fn apply(self, index: &mut ImageIndex) {
        let old = std::mem::take(&mut index.manifests);
        for (i, d) in old.into_iter().enumerate() {
            let d = match self.retarget.get(&i) {
                Some(new) => Descriptor {
                    annotations: d.annotations.clone(),
                    ..new.clone()
                },
                None => d,
            };
            match self.names.get(&i) {
                Some(tags) if tags.is_empty() => {}
                Some(tags) => index.manifests.extend(named(&d, tags)),
                None => index.manifests.push(d),
            }
        }
        index.manifests.extend(self.added);
    }
}

/// The images `index` lists, each manifest read once.
fn listed(index: &ImageIndex, intake: &Intake<'_>) -> Result<Listed> {
    let mut shapes: HashMap<Digest, Option<Shape>> = HashMap::new();
    let mut shape_of = |m: &Descriptor| -> Result<Option<Shape>> {
        if let Some(known) = shapes.get(&m.digest) {
            return Ok(known.clone());
        }
        let shape = if intake.has(&m.digest)? {
            let children = oci::children(m, &intake.read_small(m)?)?;
            children.split_first().map(|(config, layers)| {
                let layers = layers.iter().map(|l| l.digest.clone()).collect();
                (config.digest.clone(), layers)
            })
        } else {
            None
        };
        shapes.insert(m.digest.clone(), shape.clone());
        Ok(shape)
    };
    let mut out = Listed::default();
    let mut indexes_read = HashSet::new();
    for (i, d) in index.manifests.iter().enumerate() {
        match oci::kind_of(&d.media_type) {
            Kind::Manifest => {
                if let Some(shape) = shape_of(d)? {
                    let set = shape.1.iter().cloned().collect();
                    out.loose.entry((shape.0.clone(), set)).or_default().push(i);
                    out.exact.entry(shape).or_default().push(i);
                }
            }
            Kind::Index if indexes_read.insert(d.digest.clone()) && intake.has(&d.digest)? => {
                for c in oci::children(d, &intake.read_small(d)?)? {
                    if oci::kind_of(&c.media_type) == Kind::Manifest {
                        if let Some(shape) = shape_of(&c)? {
                            out.nested.insert(shape);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
