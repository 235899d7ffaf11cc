//! The OCI image-layout view of a set of images: which descriptors `index.json` lists and how
//! they are named, and the blobs a layout holds. Export and (later) the mount both take their
//! `index.json` bytes from here, so the two always agree.

use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::{
    self, BlobSource, Descriptor, ImageIndex, OnMissing, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME,
};
use crate::reference::Reference;
use crate::store::Image;

/// An image as a layout shows it: its full name and the descriptor `index.json` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Reference,
    pub target: Descriptor,
}

impl From<Image> for Entry {
    fn from(i: Image) -> Entry {
        Entry {
            name: i.name,
            target: i.target,
        }
    }
}

/// The descriptor `index.json` lists for an image: its target, with
/// `org.opencontainers.image.ref.name` = the tag (tagged images only) and
/// `io.containerd.image.name` = the full name.
pub fn named_descriptor(e: &Entry) -> Descriptor {
    let mut d = e.target.clone();
    if let Some(tag) = e.name.tag() {
        d.annotations
            .insert(ANNOTATION_REF_NAME.to_owned(), tag.to_owned());
    }
    d.annotations
        .insert(ANNOTATION_IMAGE_NAME.to_owned(), e.name.to_string());
    d
}

/// A target descriptor as the store records it: without the naming annotations, which belong
/// to the name, not the content.
pub fn unnamed_descriptor(d: &Descriptor) -> Descriptor {
    let mut d = d.clone();
    d.annotations.remove(ANNOTATION_REF_NAME);
    d.annotations.remove(ANNOTATION_IMAGE_NAME);
    d
}

/// Adds `name` -> `target` to the images one `index.json` (`file`, for errors) lists: a name
/// listed twice must name the same content as the same kind of blob.
pub fn add_listed(
    out: &mut BTreeMap<Reference, Descriptor>,
    name: Reference,
    target: Descriptor,
    file: &str,
) -> Result<()> {
    if let Some(prev) = out.get(&name) {
        if prev.digest != target.digest || prev.media_type != target.media_type {
            return Err(Error::layout(
                file,
                format!(
                    "{name} names both {} ({}) and {} ({})",
                    prev.digest, prev.media_type, target.digest, target.media_type
                ),
            ));
        }
    }
    out.insert(name, target);
    Ok(())
}

/// The `index.json` bytes of a layout holding `entries`, listed by name.
pub fn index_json(entries: &[Entry]) -> Vec<u8> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.name.to_string());
    ImageIndex::new(sorted.into_iter().map(named_descriptor).collect()).to_bytes()
}

/// The blobs of a layout holding `entries`: the union of their closures, sorted by digest.
pub fn blobs(
    src: &dyn BlobSource,
    entries: &[Entry],
    on_missing: OnMissing,
) -> Result<BTreeMap<Digest, Descriptor>> {
    let mut all = BTreeMap::new();
    for e in entries {
        all.extend(oci::closure(src, &e.target, on_missing)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn index_json_names_each_image_and_is_sorted() {
        let d = oci::tests::desc(
            oci::MEDIA_OCI_MANIFEST,
            Digest::of(Algorithm::Sha256, b"m"),
            1,
        );
        let entries = vec![
            Entry {
                name: "busybox:latest".parse().unwrap(),
                target: d.clone(),
            },
            Entry {
                name: format!("busybox@{}", d.digest).parse().unwrap(),
                target: d.clone(),
            },
            Entry {
                name: "busybox:1.36".parse().unwrap(),
                target: d.clone(),
            },
        ];
        let idx: ImageIndex = serde_json::from_slice(&index_json(&entries)).unwrap();
        let names: Vec<(Option<&str>, &str)> = idx
            .manifests
            .iter()
            .map(|m| {
                (
                    m.annotations.get(ANNOTATION_REF_NAME).map(String::as_str),
                    m.annotations[ANNOTATION_IMAGE_NAME].as_str(),
                )
            })
            .collect();
        let untagged = format!("busybox@{}", d.digest);
        assert_eq!(
            names,
            [
                (Some("1.36"), "busybox:1.36"),
                (Some("latest"), "busybox:latest"),
                (None, untagged.as_str())
            ]
        );
        assert_eq!(unnamed_descriptor(&idx.manifests[0]), d);
        // The same images give the same bytes whatever their order.
        let mut rev = entries.clone();
        rev.reverse();
        assert_eq!(index_json(&rev), index_json(&entries));
    }
}
