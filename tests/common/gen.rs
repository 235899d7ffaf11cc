//! A generator of OCI layouts for tests and benchmarks: random uncompressed layers streamed to
//! disk while hashed, configs, manifests, indexes and `index.json`, with no outside tool.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use layoutfs::digest::{Algorithm, Digest};
use layoutfs::oci::{self, Descriptor, ImageIndex, Platform};

/// Media type of an uncompressed OCI layer.
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of an OCI image config.
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const CHUNK: usize = 1 << 20;

/// A layout directory being built.
pub struct LayoutBuilder {
    pub dir: PathBuf,
    pub alg: Algorithm,
    pub index: Vec<Descriptor>,
}

pub fn desc(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    serde_json::from_value(serde_json::json!({
        "mediaType": media_type, "digest": digest.to_string(), "size": size,
    }))
    .unwrap()
}

impl LayoutBuilder {
    pub fn new(dir: &Path) -> LayoutBuilder {
        Self::with_algorithm(dir, Algorithm::Sha256)
    }

    pub fn with_algorithm(dir: &Path, alg: Algorithm) -> LayoutBuilder {
        fs::create_dir_all(dir.join("blobs").join(alg.name())).unwrap();
        fs::write(dir.join("oci-layout"), oci::layout_file_bytes()).unwrap();
        LayoutBuilder {
            dir: dir.to_path_buf(),
            alg,
            index: Vec::new(),
        }
    }

    pub fn blob_path(&self, d: &Descriptor) -> PathBuf {
        self.dir.join(d.digest.blob_path())
    }

    pub fn add_blob(&self, media_type: &str, bytes: &[u8]) -> Descriptor {
        let digest = Digest::of(self.alg, bytes);
        fs::write(self.dir.join(digest.blob_path()), bytes).unwrap();
        desc(media_type, digest, bytes.len() as u64)
    }

    /// A layer of `size` pseudo-random bytes from `seed`, written without holding it whole.
    pub fn add_random_layer(&self, size: u64, seed: u64) -> Descriptor {
        let tmp = self.dir.join("blobs").join(".layer.tmp");
        let mut f = File::create(&tmp).unwrap();
        let mut h = self.alg.hasher();
        let mut rng = SplitMix(seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut buf = vec![0u8; CHUNK];
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            rng.fill(&mut buf[..n]);
            h.update(&buf[..n]);
            f.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        drop(f);
        let digest = h.finish();
        fs::rename(&tmp, self.dir.join(digest.blob_path())).unwrap();
        desc(MEDIA_LAYER, digest, size)
    }

    /// A config and manifest over `layers`; returns the manifest's descriptor.
    pub fn add_manifest(&self, layers: &[Descriptor], arch: &str) -> Descriptor {
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>()},
            "history": layers.iter().map(|_| serde_json::json!({"created_by": "layoutfs test"})).collect::<Vec<_>>(),
        });
        let config = self.add_blob(MEDIA_CONFIG, &serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": oci::MEDIA_OCI_MANIFEST,
            "config": config, "layers": layers,
        });
        let mut d = self.add_blob(
            oci::MEDIA_OCI_MANIFEST,
            &serde_json::to_vec(&manifest).unwrap(),
        );
        d.platform = Some(Platform {
            architecture: arch.into(),
            os: "linux".into(),
            os_version: None,
            os_features: None,
            variant: None,
        });
        d
    }

    /// An image index over `manifests` (which keep their platforms).
    pub fn add_index(&self, manifests: Vec<Descriptor>) -> Descriptor {
        let idx = ImageIndex::new(manifests);
        self.add_blob(oci::MEDIA_OCI_INDEX, &serde_json::to_vec(&idx).unwrap())
    }

    /// Lists `d` in `index.json` under the tag `tag` (no platform: as skopeo writes).
    pub fn tag(&mut self, d: &Descriptor, tag: Option<&str>) -> &mut Self {
        let mut d = d.clone();
        d.platform = None;
        if let Some(t) = tag {
            d.annotations
                .insert(oci::ANNOTATION_REF_NAME.into(), t.into());
        }
        self.index.push(d);
        self
    }

    pub fn write_index(&self) {
        fs::write(
            self.dir.join("index.json"),
            ImageIndex::new(self.index.clone()).to_bytes(),
        )
        .unwrap();
    }

    /// A small single-platform image with `layers` layers of `size` bytes, tagged `tag`.
    pub fn small_image(&mut self, tag: &str, layers: usize, size: u64, seed: u64) -> Descriptor {
        let ls: Vec<_> = (0..layers)
            .map(|i| self.add_random_layer(size, seed * 100 + i as u64))
            .collect();
        let m = self.add_manifest(&ls, "amd64");
        self.tag(&m, Some(tag));
        self.write_index();
        m
    }
}

/// A small fast generator of test bytes (SplitMix64).
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
