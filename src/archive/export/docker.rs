//! Docker's `manifest.json`, which `docker load` reads beside an OCI archive's files: one
//! entry per image manifest, its config and layers by path, with the tags that name it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::content::Provider;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::Entry;
use crate::oci::{self, Descriptor, Kind, PlatformSpec};

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Docker's `manifest.json`: one entry per image manifest (an index contributes the manifest
/// of the requested platform, else of this host's).
pub(super) fn docker_manifest(
    store: &dyn Provider,
    entries: &[Entry],
    platform: Option<&PlatformSpec>,
) -> Result<Vec<u8>> {
    let host = PlatformSpec::host();
    let platform = platform.unwrap_or(&host);
    let mut by_manifest: BTreeMap<Digest, (Descriptor, Vec<String>)> = BTreeMap::new();
    for e in entries {
        let Some(m) = oci::select_platform(store, &e.target, platform)? else {
            return Err(Error::Invalid(format!(
                "{}: no manifest for platform {platform} to put in manifest.json",
                e.name
            )));
        };
        let slot = by_manifest
            .entry(m.digest.clone())
            .or_insert_with(|| (m, Vec::new()));
        if e.name.tag().is_some() {
            slot.1.push(e.name.to_string());
        }
    }
    let mut out = Vec::new();
    for (m, repo_tags) in by_manifest.into_values() {
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
        out.push(DockerManifest {
            config: config.digest.blob_path(),
            repo_tags,
            layers: layers.iter().map(|l| l.digest.blob_path()).collect(),
        });
    }
    let mut bytes = serde_json::to_vec(&out).map_err(|e| Error::Invalid(e.to_string()))?;
    bytes.push(b'\n');
    Ok(bytes)
}
