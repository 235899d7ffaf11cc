//! What is on disk and what an image's closure looks like in it: the blob files of the store,
//! and the tolerant form of the one closure walk (`oci::walk`), which goes on past a missing or
//! damaged blob and says which. gc, fsck and `layoutfs images` share these, and the ways they
//! go through every image record of a large store with bounded memory: one record at a time
//! (`each_image`), a bounded cache of walks (`WalkCache`) and of the sizes of shared layers
//! (`LeafSizes`), so that 100,000 images cost neither a list of them all nor a stat of the
//! same layer per image.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::digest::{Algorithm, Digest};
use crate::error::{IoContext, Result};
use crate::oci::{self, BlobSource, Descriptor, Kind, Policy};

use super::records::{self, Image};
use super::{Store, BLOBS_DIR};

/// How many walks (or sizes) a cache keeps before it starts again: bounds its memory (a few
/// MiB) whatever the number of images, and still spares the repeated walk of a target named
/// several times in a row (the tags of one repository come together in name order).
pub const CACHE_ENTRIES: usize = 1024;

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
    each_blob_file(store, |f| {
        out.push(f);
        Ok(())
    })?;
    Ok(out)
}

/// Runs `f` on every file under `blobs/<alg>/`, in directory order, without listing them all
/// first.
pub fn each_blob_file(store: &Store, mut f: impl FnMut(BlobFile) -> Result<()>) -> Result<()> {
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
            f(match digest {
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
            })?;
        }
    }
    Ok(())
}

/// A digest as its bytes: what sets of every blob of a large store hold (40 bytes a sha256
/// digest, against about 110 for a `Digest` and its string).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BlobKey {
    Sha256([u8; 32]),
    Sha512(Box<[u8; 64]>),
}

impl BlobKey {
    pub fn of(d: &Digest) -> BlobKey {
        match d.algorithm() {
            Algorithm::Sha256 => {
                let mut b = [0u8; 32];
                unhex(d.hex(), &mut b);
                BlobKey::Sha256(b)
            }
            Algorithm::Sha512 => {
                let mut b = Box::new([0u8; 64]);
                unhex(d.hex(), &mut b[..]);
                BlobKey::Sha512(b)
            }
        }
    }

    /// The digest again.
    pub fn digest(&self) -> Digest {
        let (alg, bytes) = match self {
            BlobKey::Sha256(b) => (Algorithm::Sha256, &b[..]),
            BlobKey::Sha512(b) => (Algorithm::Sha512, &b[..]),
        };
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Digest::from_parts(alg.name(), &hex).expect("the bytes of a digest make its hex again")
    }
}

/// Decodes the lowercase hex of a valid digest into `out` (as many bytes as it holds).
fn unhex(hex: &str, out: &mut [u8]) {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    };
    for (o, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *o = nibble(pair[0]) << 4 | nibble(pair[1]);
    }
}

pub use crate::oci::Closure;

/// Runs `f` on every image record, sorted by name, one at a time, through a connection of
/// its own (so `f` may use the store's records).
pub fn each_image(store: &Store, f: impl FnMut(Image) -> Result<()>) -> Result<()> {
    records::for_each_in(&store.connect()?, f)
}

/// The number of characters of the longest image name.
pub fn longest_name(store: &Store) -> Result<usize> {
    records::longest_name_in(&store.connect()?)
}

/// A cache of at most `CACHE_ENTRIES` values keyed by an image's target (digest and media
/// type: one digest walked as another type is another walk); emptied when full.
pub struct WalkCache<T> {
    map: HashMap<(Digest, String), T>,
}

impl<T> Default for WalkCache<T> {
    fn default() -> Self {
        WalkCache {
            map: HashMap::new(),
        }
    }
}

impl<T> WalkCache<T> {
    /// The value for `target`, made by `make` unless cached.
    pub fn get_or(&mut self, target: &Descriptor, make: impl FnOnce() -> T) -> &T {
        let key = (target.digest.clone(), target.media_type.clone());
        if !self.map.contains_key(&key) && self.map.len() >= CACHE_ENTRIES {
            self.map.clear();
        }
        self.map.entry(key).or_insert_with(make)
    }
}

/// A source that remembers the sizes of the leaf blobs (layers, configs) it was asked about,
/// at most `CACHE_ENTRIES` of them: the layers many images share are looked up once. Only for
/// one command's walks: a blob removed meanwhile would still be seen.
pub struct LeafSizes<'a> {
    src: &'a dyn BlobSource,
    sizes: RefCell<HashMap<Digest, Option<u64>>>,
}

impl<'a> LeafSizes<'a> {
    pub fn new(src: &'a dyn BlobSource) -> LeafSizes<'a> {
        LeafSizes {
            src,
            sizes: RefCell::new(HashMap::new()),
        }
    }
}

impl BlobSource for LeafSizes<'_> {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.src.blob_size(digest)
    }

    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        self.src.read_small(desc)
    }

    fn blob_size_of(&self, desc: &Descriptor) -> Result<Option<u64>> {
        if oci::kind_of(&desc.media_type) != Kind::Leaf {
            return self.src.blob_size_of(desc);
        }
        if let Some(size) = self.sizes.borrow().get(&desc.digest) {
            return Ok(*size);
        }
        let size = self.src.blob_size_of(desc)?;
        let mut sizes = self.sizes.borrow_mut();
        if sizes.len() >= CACHE_ENTRIES {
            sizes.clear();
        }
        sizes.insert(desc.digest.clone(), size);
        Ok(size)
    }
}

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
    fn a_blob_key_gives_its_digest_back() {
        for alg in Algorithm::ALL {
            let d = Digest::of(alg, b"layoutfs");
            assert_eq!(BlobKey::of(&d).digest(), d);
            assert_ne!(BlobKey::of(&d), BlobKey::of(&Digest::of(alg, b"other")));
        }
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
