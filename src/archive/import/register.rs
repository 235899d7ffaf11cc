//! The one step every import ends with, whatever its source and format: the images of an
//! index are named (by their annotations, or in the repository the user gave), the closure
//! of each is checked to be in the store and sound, and then all names are registered in one
//! transaction of the catalog.

use std::collections::{BTreeMap, HashSet};

use crate::content::Catalog;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout;
use crate::oci::{
    self, BlobSource, Descriptor, ImageIndex, OnMissing, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME,
};
use crate::reference::{check_repository, check_tag, Reference};

/// Images by name, as an import registers them.
pub type Images = Vec<(Reference, Descriptor)>;

/// Names the images of `index` and registers them in `catalog`, all at once, once the
/// closure of each is in `blobs` and sound (`on_missing`: `Fail`, or `SkipPlatforms` for a
/// pull of some platforms of an index); returns them and every blob they reach. `label`
/// names the source in errors.
pub fn register(
    blobs: &dyn BlobSource,
    catalog: &dyn Catalog,
    index: &ImageIndex,
    repository: Option<&str>,
    label: &str,
    on_missing: OnMissing,
) -> Result<(Images, HashSet<Digest>)> {
    let images = name_images(index, repository, label)?;
    // Each target once, however many names it has.
    let mut reached = HashSet::new();
    let mut walked = HashSet::new();
    for (_, target) in &images {
        if walked.insert((&target.digest, &target.media_type)) {
            reached.extend(oci::closure(blobs, target, on_missing)?.into_keys());
        }
    }
    catalog.update(&images, &[])?;
    Ok((images, reached))
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
        layout::add_listed(&mut out, name, target, &format!("{label}: index.json"))?;
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
