//! The synthetic store of issue 16, shared by `examples/mklayout.rs --scale` and `tests/scale.rs`:
//! N small images in N/10 repositories `r00000`.., tags `t0`..`t9`, each image a unique config
//! (naming its number) and a manifest over two layers of a shared pool of eight 4 KiB layers.
//! Blobs are written straight to files (no hashing of big data, no temporary files) so 100,000
//! images take seconds. An `index.json` is capped at `oci::MAX_INDEX_JSON_SIZE`, so more than
//! `IMAGES_PER_LAYOUT` images are written as several layouts `part-000`.. under the directory.
#![allow(dead_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use layoutfs::digest::{Algorithm, Digest};
use layoutfs::oci::{self, Descriptor, ImageIndex};

/// Tags per repository: image `i` is `r<i/10>:t<i%10>`.
pub const TAGS_PER_REPO: u64 = 10;
/// Layers in the shared pool; each image names two of them.
pub const LAYER_POOL: u64 = 8;
/// Bytes of each pool layer.
pub const LAYER_SIZE: usize = 4096;
/// Images per layout: their `index.json` (about 250 bytes an entry) stays under the 16 MiB cap.
pub const IMAGES_PER_LAYOUT: u64 = 50_000;
/// The seed of the pool layers: the same in every part, so parts share them.
const POOL_SEED: u64 = 0x5ca1e;

/// The repository of image `i`.
pub fn repo(i: u64) -> String {
    format!("r{:05}", i / TAGS_PER_REPO)
}

/// The tag of image `i`.
pub fn tag(i: u64) -> String {
    format!("t{}", i % TAGS_PER_REPO)
}

/// The two pool layers of image `i` (always two different ones).
pub fn layers_of(i: u64) -> [u64; 2] {
    let a = i % LAYER_POOL;
    let b = (a + 1 + (i / LAYER_POOL) % (LAYER_POOL - 1)) % LAYER_POOL;
    [a, b]
}

/// The layouts written for `n` images under `dir`: `dir` itself, or its parts.
pub fn layout_dirs(dir: &Path, n: u64) -> Vec<PathBuf> {
    if n <= IMAGES_PER_LAYOUT {
        return vec![dir.to_path_buf()];
    }
    (0..n.div_ceil(IMAGES_PER_LAYOUT))
        .map(|p| dir.join(format!("part-{p:03}")))
        .collect()
}

/// Writes the `n`-image store's layouts under `dir` (see `layout_dirs`).
pub fn write(dir: &Path, n: u64) -> io::Result<Vec<PathBuf>> {
    let dirs = layout_dirs(dir, n);
    for (p, d) in dirs.iter().enumerate() {
        let first = p as u64 * IMAGES_PER_LAYOUT;
        let count = (n - first).min(IMAGES_PER_LAYOUT);
        write_layout(d, first, count)?;
    }
    Ok(dirs)
}

fn put(blobs: &Path, bytes: &[u8]) -> io::Result<Digest> {
    let d = Digest::of(Algorithm::Sha256, bytes);
    fs::write(blobs.join(d.hex()), bytes)?;
    Ok(d)
}

/// One layout at `dir` holding images `first..first+count`.
pub fn write_layout(dir: &Path, first: u64, count: u64) -> io::Result<()> {
    let blobs = dir.join("blobs").join(Algorithm::Sha256.name());
    fs::create_dir_all(&blobs)?;
    fs::write(dir.join("oci-layout"), oci::layout_file_bytes())?;
    let index = write_images(&blobs, first, count)?;
    fs::write(dir.join("index.json"), ImageIndex::new(index).to_bytes())
}

/// Writes the blobs of images `first..first+count` (and the layer pool) into `blobs` (a
/// `blobs/sha256` directory) and returns their `index.json` entries, in order.
pub fn write_images(blobs: &Path, first: u64, count: u64) -> io::Result<Vec<Descriptor>> {
    let mut pool = Vec::new();
    for l in 0..LAYER_POOL {
        pool.push(Descriptor::new(
            oci::MEDIA_OCI_LAYER,
            put(blobs, &pool_layer(l))?,
            LAYER_SIZE as u64,
        ));
    }
    let mut index = Vec::with_capacity(count as usize);
    for i in first..first + count {
        let ls: Vec<&Descriptor> = layers_of(i).iter().map(|&l| &pool[l as usize]).collect();
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": {"scale.image": i.to_string()}},
            "rootfs": {"type": "layers", "diff_ids": ls.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>()},
        });
        let config = serde_json::to_vec(&config).map_err(io::Error::other)?;
        let config = Descriptor::new(
            oci::MEDIA_OCI_CONFIG,
            put(blobs, &config)?,
            config.len() as u64,
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": oci::MEDIA_OCI_MANIFEST,
            "config": config, "layers": ls,
        });
        let manifest = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
        let mut d = Descriptor::new(
            oci::MEDIA_OCI_MANIFEST,
            put(blobs, &manifest)?,
            manifest.len() as u64,
        );
        d.annotations.insert(
            oci::ANNOTATION_IMAGE_NAME.into(),
            format!("{}:{}", repo(i), tag(i)),
        );
        d.annotations
            .insert(oci::ANNOTATION_REF_NAME.into(), tag(i));
        index.push(d);
    }
    Ok(index)
}

/// The bytes of pool layer `l`: the same in every layout, so parts and stores share them.
pub fn pool_layer(l: u64) -> Vec<u8> {
    let mut rng = SplitMix(POOL_SEED + l);
    let mut bytes = vec![0u8; LAYER_SIZE];
    for c in bytes.chunks_mut(8) {
        c.copy_from_slice(&rng.next().to_le_bytes()[..c.len()]);
    }
    bytes
}

/// A small fast generator of the pool's bytes (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Writes the `n`-image store straight into the store at `root` (not through import: for
/// benches and tests of everything but import): the blob files, then every name in one
/// transaction. The store is opened (so `meta.db` exists) before any blob is written, so it
/// is not taken for a store whose records were lost.
pub fn write_store(root: &Path, n: u64) -> layoutfs::error::Result<()> {
    let store = layoutfs::store::Store::open(root)?;
    let blobs = root.join("blobs").join(Algorithm::Sha256.name());
    let index = write_images(&blobs, 0, n).map_err(|e| layoutfs::error::Error::io(&blobs, e))?;
    let mut names = Vec::with_capacity(index.len());
    for (i, d) in index.iter().enumerate() {
        let name = format!("{}:{}", repo(i as u64), tag(i as u64));
        let name: layoutfs::reference::Reference = name.parse()?;
        names.push((
            name,
            Descriptor::new(d.media_type.clone(), d.digest.clone(), d.size),
        ));
    }
    store.records().put(&names)
}
