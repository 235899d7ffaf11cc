//! What is on disk and what an image's closure looks like in it: the blob files of the store,
//! and the tolerant form of the one closure walk (`oci::walk`), which goes on past a missing or
//! damaged blob and says which. gc, fsck and `layoutfs images` share these.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::digest::{Algorithm, Digest};
use crate::error::{IoContext, Result};
use crate::oci::{self, BlobSource, Descriptor, Policy};

use super::{Store, BLOBS_DIR};

/// A file under `blobs/`.
#[derive(Debug, Clone)]
pub enum BlobFile {
    /// A regular file named by a valid digest.
    Blob { digest: Digest, size: u64 },
    /// Anything else: a name that is no digest, a directory, a link.
    Stray { path: PathBuf, why: &'static str },
}

/// Every file under `blobs/<alg>/`, in directory order.
pub fn blob_files(store: &Store) -> Result<Vec<BlobFile>> {
    let mut out = Vec::new();
    for alg in Algorithm::ALL {
        let dir = store.root().join(BLOBS_DIR).join(alg.name());
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            let path = e.path();
            let meta = e.metadata().at(&path)?;
            let name = e.file_name();
            let digest = name
                .to_str()
                .and_then(|n| Digest::from_parts(alg.name(), n).ok());
            out.push(match digest {
                None => BlobFile::Stray {
                    path,
                    why: "not named by a digest",
                },
                Some(_) if !meta.is_file() => BlobFile::Stray {
                    path,
                    why: "not a regular file",
                },
                Some(digest) => BlobFile::Blob {
                    digest,
                    size: meta.size(),
                },
            });
        }
    }
    Ok(out)
}

pub use crate::oci::Closure;

/// Walks the image rooted at `root` through `src`, going on past what is wrong (the one walk
/// of `oci::walk`, under `OnMissing::Report`).
pub fn walk(src: &dyn BlobSource, root: &Descriptor) -> Closure {
    oci::walk(src, root, Policy::REPORT).unwrap_or_else(|e| Closure {
        damaged: vec![(root.clone(), e)],
        ..Closure::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::tests::MemSource;
    use crate::oci::{MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};

    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

    fn manifest(src: &mut MemSource, config: &Descriptor, layers: &[&Descriptor]) -> Descriptor {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": config,
            "layers": layers,
        });
        src.add(MEDIA_OCI_MANIFEST, serde_json::to_vec(&m).unwrap())
    }

    #[test]
    fn a_walk_goes_on_past_what_is_missing_or_damaged() {
        let mut src = MemSource::default();
        let config = src.add(CONFIG, b"{}".to_vec());
        let layer = src.add(LAYER, b"layer".to_vec());
        let gone = src.add(LAYER, b"gone".to_vec());
        let m1 = manifest(&mut src, &config, &[&layer, &gone]);
        let m2 = manifest(&mut src, &config, &[&layer]);
        let idx = serde_json::json!({"schemaVersion": 2, "manifests": [m1, m2]});
        let root = src.add(MEDIA_OCI_INDEX, serde_json::to_vec(&idx).unwrap());
        let whole = walk(&src, &root);
        assert!(whole.is_complete(), "{:?}", whole.first_problem());
        assert_eq!(whole.present.len(), 6);

        src.0.remove(&gone.digest);
        let c = walk(&src, &root);
        assert!(!c.is_complete());
        assert!(!c.has_unknown_children(), "a missing layer hides nothing");
        assert_eq!(c.missing.len(), 1);
        assert_eq!(c.present.len(), 5);

        // A manifest that is gone hides its children; one that is damaged too.
        src.0.remove(&m1.digest);
        src.0.insert(m2.digest.clone(), b"[not json".to_vec());
        let c = walk(&src, &root);
        assert!(c.has_unknown_children());
        assert_eq!(c.missing.len(), 1);
        assert_eq!(c.damaged.len(), 1);
        assert!(c.first_problem().unwrap().contains(&m1.digest.to_string()));
    }
}
