//! What `docker load` and `podman load` read beside an OCI archive's files (the shape docker
//! 25 and later save): `manifest.json`, one item per image manifest with its config and
//! layers by path and the tags that name it; `repositories`, each tag's top layer; and, for
//! `--format docker`, an `index.json` naming images as docker save does
//! (`io.containerd.image.name` the docker-normalised full name, `org.opencontainers.image.ref.name`
//! the tag), which docker's containerd image store and podman name images by.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::content::Provider;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::{self, Entry};
use crate::oci::{self, Descriptor, ImageIndex, Kind, PlatformSpec, ANNOTATION_IMAGE_NAME};
use crate::reference::Reference;
use crate::registry::RemoteRef;

/// Largest `manifest.json` written: containers/image (skopeo, podman) refuses a larger one
/// (`iolimits.MaxTarFileManifestSize`).
pub const MAX_MANIFEST_JSON_SIZE: u64 = 1 << 20;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// One image manifest of the archive, as `manifest.json` describes it.
pub(super) struct Item {
    config: Descriptor,
    layers: Vec<Descriptor>,
    /// The stored names with a tag that name it, sorted.
    tags: Vec<Reference>,
}

/// The items of `manifest.json`: one per image manifest, sorted by its digest (an index
/// contributes the manifest of the requested platform, else of this host's).
pub(super) fn items(
    store: &dyn Provider,
    entries: &[Entry],
    platform: Option<&PlatformSpec>,
) -> Result<Vec<Item>> {
    let host = PlatformSpec::host();
    let platform = platform.unwrap_or(&host);
    let mut by_manifest: BTreeMap<Digest, (Descriptor, Vec<Reference>)> = BTreeMap::new();
    for e in entries {
        let Some(m) = oci::select_platform(store, &e.target, platform)? else {
            return Err(Error::Invalid(format!(
                "{}: no manifest for platform {platform} to put in manifest.json (choose one with --platform)",
                e.name
            )));
        };
        let slot = by_manifest
            .entry(m.digest.clone())
            .or_insert_with(|| (m, Vec::new()));
        if e.name.tag().is_some() {
            slot.1.push(e.name.clone());
        }
    }
    let mut out = Vec::new();
    for (m, mut tags) in by_manifest.into_values() {
        if oci::kind_of(&m.media_type) != Kind::Manifest {
            return Err(Error::Invalid(format!(
                "blob {}: {} cannot be described in manifest.json",
                m.digest, m.media_type
            )));
        }
        let children = oci::children(&m, &store.read_small(&m)?)?;
        let (config, layers) = children
            .split_first()
            .ok_or_else(|| Error::Invalid(format!("blob {}: manifest without config", m.digest)))?;
        tags.sort();
        tags.dedup();
        out.push(Item {
            config: config.clone(),
            layers: layers.to_vec(),
            tags,
        });
    }
    Ok(out)
}

/// Docker's `manifest.json` of `items`: Config and Layers as `blobs/<alg>/<hex>` paths (the
/// blobs as stored: gzip stays gzip), RepoTags the stored names as written. Refused over
/// `MAX_MANIFEST_JSON_SIZE`.
pub(super) fn manifest_json(items: &[Item]) -> Result<Vec<u8>> {
    let out: Vec<DockerManifest> = items
        .iter()
        .map(|i| DockerManifest {
            config: i.config.digest.blob_path(),
            repo_tags: i.tags.iter().map(Reference::to_string).collect(),
            layers: i.layers.iter().map(|l| l.digest.blob_path()).collect(),
        })
        .collect();
    let mut bytes = serde_json::to_vec(&out).map_err(|e| Error::Invalid(e.to_string()))?;
    bytes.push(b'\n');
    let size = bytes.len() as u64;
    if size > MAX_MANIFEST_JSON_SIZE {
        return Err(Error::Invalid(format!(
            "manifest.json would be {size} bytes, over the {MAX_MANIFEST_JSON_SIZE}-byte limit of skopeo and podman: export fewer images or tags at once"
        )));
    }
    Ok(bytes)
}

/// Docker's `repositories`: `{"<repository>":{"<tag>":"<top layer hex>"}}`, keys sorted, a
/// newline at the end, as docker writes it; None when no image has a tag (docker then writes
/// none). An image without layers has no top layer and is left out.
pub(super) fn repositories(items: &[Item]) -> Result<Option<Vec<u8>>> {
    let mut repos: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for item in items {
        let Some(top) = item.layers.last() else {
            continue;
        };
        for name in &item.tags {
            if let Some(tag) = name.tag() {
                repos
                    .entry(name.repository())
                    .or_default()
                    .insert(tag, top.digest.hex());
            }
        }
    }
    if repos.is_empty() {
        return Ok(None);
    }
    let mut bytes = serde_json::to_vec(&repos).map_err(|e| Error::Invalid(e.to_string()))?;
    bytes.push(b'\n');
    Ok(Some(bytes))
}

/// The name docker save writes in `io.containerd.image.name`: the stored name normalised as
/// docker reads it (`busybox:1` is `docker.io/library/busybox:1`; a name with a registry host
/// stays; a digest stays). A stored name docker cannot read (an uppercase host) stays as it is.
pub fn docker_image_name(name: &Reference) -> String {
    RemoteRef::parse(&name.to_string()).map_or_else(|_| name.to_string(), |r| r.to_string())
}

/// `index.json` as docker save writes it: the same descriptors as an OCI export's, sorted by
/// stored name, with `io.containerd.image.name` the docker-normalised name (the tag stays in
/// `org.opencontainers.image.ref.name`; a name with only a digest has none, as in an OCI
/// export).
pub(super) fn index_json(entries: &[Entry]) -> Vec<u8> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.name.to_string());
    let descriptors = sorted
        .into_iter()
        .map(|e| {
            let mut d = layout::named_descriptor(e);
            d.annotations
                .insert(ANNOTATION_IMAGE_NAME.to_owned(), docker_image_name(&e.name));
            d
        })
        .collect();
    ImageIndex::new(descriptors).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;
    use crate::oci::ANNOTATION_REF_NAME;

    fn d(media_type: &str, seed: &[u8]) -> Descriptor {
        Descriptor::new(media_type, Digest::of(Algorithm::Sha256, seed), 1)
    }

    fn item(layers: usize, tags: &[&str]) -> Item {
        Item {
            config: d("application/vnd.oci.image.config.v1+json", b"c"),
            layers: (0..layers)
                .map(|i| d("application/vnd.oci.image.layer.v1.tar", &[i as u8]))
                .collect(),
            tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn docker_names_are_normalised_as_docker_reads_them() {
        let digest = Digest::of(Algorithm::Sha256, b"m");
        let cases = [
            ("busybox:1", "docker.io/library/busybox:1".to_owned()),
            (
                "library/busybox:1",
                "docker.io/library/busybox:1".to_owned(),
            ),
            ("me/app:v2", "docker.io/me/app:v2".to_owned()),
            ("docker.io/library/x:y", "docker.io/library/x:y".to_owned()),
            ("index.docker.io/x:y", "docker.io/library/x:y".to_owned()),
            ("localhost/app:1", "localhost/app:1".to_owned()),
            (
                "example.com:5000/a/b:c",
                "example.com:5000/a/b:c".to_owned(),
            ),
            (
                &format!("busybox@{digest}"),
                format!("docker.io/library/busybox@{digest}"),
            ),
            // Docker reads no uppercase host without a '.' or ':': kept as stored.
            ("UPPER/app:1", "UPPER/app:1".to_owned()),
        ];
        for (stored, want) in cases {
            let r: Reference = stored.parse().unwrap();
            assert_eq!(docker_image_name(&r), want, "{stored}");
        }
    }

    #[test]
    fn index_json_has_the_normalised_name_and_the_tag_and_a_digest_name_has_no_tag() {
        let target = d(oci::MEDIA_OCI_MANIFEST, b"m");
        let entries: Vec<Entry> = ["busybox:1", &format!("app@{}", target.digest)]
            .iter()
            .map(|n| Entry {
                name: n.parse().unwrap(),
                target: target.clone(),
            })
            .collect();
        let index = ImageIndex::parse("index.json", &index_json(&entries)).unwrap();
        let names: Vec<(Option<&str>, Option<&str>)> = index
            .manifests
            .iter()
            .map(|m| {
                (
                    m.annotations.get(ANNOTATION_IMAGE_NAME).map(String::as_str),
                    m.annotations.get(ANNOTATION_REF_NAME).map(String::as_str),
                )
            })
            .collect();
        let digest_name = format!("docker.io/library/app@{}", target.digest);
        assert_eq!(
            names,
            [
                (Some(digest_name.as_str()), None),
                (Some("docker.io/library/busybox:1"), Some("1")),
            ]
        );
        // The same images listed as an OCI export lists them, only the full name differs.
        let oci_index = ImageIndex::parse("index.json", &layout::index_json(&entries)).unwrap();
        assert_eq!(oci_index.manifests.len(), index.manifests.len());
        for (a, b) in oci_index.manifests.iter().zip(&index.manifests) {
            assert_eq!((&a.digest, &a.media_type), (&b.digest, &b.media_type));
            assert_eq!(
                a.annotations.get(ANNOTATION_REF_NAME),
                b.annotations.get(ANNOTATION_REF_NAME)
            );
        }
    }

    #[test]
    fn repositories_names_each_tag_s_top_layer_sorted_and_is_omitted_without_tags() {
        let a = item(2, &["b/app:v1", "a:latest", "b/app:v0"]);
        let b = item(1, &["b/app:v2"]);
        let no_layers = item(0, &["c:1"]);
        let got = repositories(&[a, b, no_layers]).unwrap().unwrap();
        let top2 = Digest::of(Algorithm::Sha256, &[1]).hex().to_owned();
        let top1 = Digest::of(Algorithm::Sha256, &[0]).hex().to_owned();
        let want = format!(
            "{{\"a\":{{\"latest\":\"{top2}\"}},\"b/app\":{{\"v0\":\"{top2}\",\"v1\":\"{top2}\",\"v2\":\"{top1}\"}}}}\n"
        );
        assert_eq!(String::from_utf8(got).unwrap(), want);
        assert!(repositories(&[item(2, &[]), item(0, &["x:1"])])
            .unwrap()
            .is_none());
    }

    #[test]
    fn manifest_json_over_a_mebibyte_is_refused() {
        let tags: Vec<String> = (0..40_000)
            .map(|i| format!("example.com/repository/name:t{i}"))
            .collect();
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let Err(err) = manifest_json(&[item(1, &tags)]) else {
            panic!("a manifest.json over 1 MiB was written");
        };
        let err = err.to_string();
        assert!(
            err.contains("manifest.json would be") && err.contains("1048576"),
            "{err}"
        );
        let ok = manifest_json(&[item(1, &tags[..100])]).unwrap();
        assert!(ok.ends_with(b"]\n"));
    }
}
