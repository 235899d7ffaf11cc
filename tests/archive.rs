//! The seams of import and export, driven with implementations that are not the built-in
//! ones: an in-memory tree, an in-memory stream of entries and an in-memory source of blobs
//! by digest plug into the importer; a recording destination plugs into export and must get
//! every blob after its children. And the tar streamer's bytes, pinned: the archive of a
//! fixed set of images is what it was before export was split.

mod common;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;

use common::gen::{LayoutBuilder, MEDIA_LAYER};
use common::Env;
use layoutfs::archive::export::{send, Destination, Images, Order, Shipment};
use layoutfs::archive::import::format::StreamFormat;
use layoutfs::archive::import::pull::Blobs;
use layoutfs::archive::import::source::{Entries, Entry, Tree};
use layoutfs::archive::import::{import_from, Input, Intake};
use layoutfs::archive::ExportOptions;
use layoutfs::content::Provider;
use layoutfs::digest::{Algorithm, Digest};
use layoutfs::error::{Error, Result};
use layoutfs::layout;
use layoutfs::oci::{self, BlobSource, Descriptor, ImageIndex, Kind, OnMissing};
use layoutfs::store::Store;

/// A layout with nesting: `nested` is an index over an index (two platforms) and a third
/// manifest; `plain` a single manifest; two images share a layer.
fn nested_layout(dir: &Path) -> LayoutBuilder {
    let mut b = LayoutBuilder::new(dir);
    let shared = b.add_random_layer(3000, 1);
    let amd = b.add_manifest(&[shared.clone(), b.add_random_layer(700, 2)], "amd64");
    let arm = b.add_manifest(&[shared.clone(), b.add_random_layer(900, 3)], "arm64");
    let riscv = b.add_manifest(&[b.add_random_layer(1200, 4)], "riscv64");
    let inner = b.add_index(vec![amd, arm]);
    let outer = b.add_index(vec![inner, riscv]);
    b.tag(&outer, Some("nested"));
    let plain = b.add_manifest(&[shared], "amd64");
    b.tag(&plain, Some("plain"));
    b.write_index();
    b
}

/// Every file under `dir`, by relative path.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    common::tree(dir)
}

fn open_store(env: &Env) -> Store {
    Store::open(&env.store).unwrap()
}

fn names(store: &Store) -> Vec<String> {
    common::core::image_names(store)
}

fn blob_count(store: &Store) -> usize {
    let dir = store.root().join("blobs/sha256");
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

// ---- import: sources that are not a directory or a tar ----------------------------------

/// A tree held in memory.
struct MemTree(BTreeMap<String, Vec<u8>>);

impl Tree for MemTree {
    fn label(&self) -> String {
        "memory".into()
    }

    fn locate(&self, path: &str) -> String {
        format!("memory:{path}")
    }

    fn read_file(&self, path: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        match self.0.get(path) {
            Some(b) if b.len() as u64 > cap => Err(Error::TooLarge {
                file: self.locate(path),
                size: b.len() as u64,
                cap,
            }),
            b => Ok(b.cloned()),
        }
    }

    fn size(&self, path: &str) -> Result<Option<u64>> {
        Ok(self.0.get(path).map(|b| b.len() as u64))
    }

    fn open(&self, path: &str) -> Result<Option<Box<dyn Read + Send + '_>>> {
        Ok(self
            .0
            .get(path)
            .map(|b| Box::new(&b[..]) as Box<dyn Read + Send>))
    }
}

#[test]
fn an_in_memory_tree_imports_through_the_tree_seam() {
    let env = Env::new();
    let b = nested_layout(&env.path("src"));
    let store = open_store(&env);
    let mem = MemTree(files(&b.dir));
    let got = import_from(&store, Input::oci_tree(&mem), "memory", Some("mem")).unwrap();
    let want = ["mem:nested", "mem:plain"];
    assert_eq!(names(&store), want);
    assert_eq!(got.new_blobs, files(&b.dir).len() - 2, "every blob once");
    for (path, bytes) in files(&b.dir) {
        if path.starts_with("blobs/") {
            assert_eq!(std::fs::read(store.root().join(&path)).unwrap(), bytes);
        }
    }

    // A blob missing from the tree: nothing registered, nothing left behind.
    let other = Env::new();
    let store = open_store(&other);
    let mut broken = files(&b.dir);
    let layer = broken
        .iter()
        .find(|(p, b)| p.starts_with("blobs/") && b.len() == 1200)
        .map(|(p, _)| p.clone())
        .unwrap();
    broken.remove(&layer);
    let err = import_from(
        &store,
        Input::oci_tree(&MemTree(broken)),
        "memory",
        Some("m"),
    )
    .unwrap_err();
    assert!(matches!(err, Error::MissingBlob { .. }), "{err}");
    assert!(names(&store).is_empty());
    assert_eq!(blob_count(&store), 0, "the blobs it placed are taken back");
}

/// A stream of entries held in memory, in a given order.
struct MemStream(Vec<(String, Vec<u8>)>);

impl Entries for MemStream {
    fn label(&self) -> String {
        "memory stream".into()
    }

    fn for_each(&mut self, visit: &mut dyn FnMut(Entry<'_>) -> Result<()>) -> Result<()> {
        let read_error = |e: io::Error| Error::archive("memory stream", e.to_string());
        for (path, bytes) in &self.0 {
            visit(Entry {
                path,
                is_dir: false,
                link: None,
                size: bytes.len() as u64,
                reader: &mut &bytes[..],
                read_error: &read_error,
            })?;
        }
        Ok(())
    }
}

#[test]
fn an_in_memory_stream_imports_through_the_entries_seam() {
    let env = Env::new();
    let b = nested_layout(&env.path("src"));
    let store = open_store(&env);
    // index.json first, blobs in reverse order, one blob twice: a stream's order is its own.
    let mut entries: Vec<(String, Vec<u8>)> = files(&b.dir).into_iter().rev().collect();
    let dup = entries.iter().find(|e| e.0.starts_with("blobs/")).unwrap();
    entries.push(dup.clone());
    let mut stream = MemStream(entries);
    let got = import_from(&store, Input::oci_stream(&mut stream), "s", Some("st")).unwrap();
    assert_eq!(names(&store), ["st:nested", "st:plain"]);
    assert_eq!(got.new_blobs, files(&b.dir).len() - 2);

    // Without oci-layout the format refuses it, in the stream's name.
    let other = Env::new();
    let store = open_store(&other);
    let mut stream = MemStream(
        files(&b.dir)
            .into_iter()
            .filter(|(p, _)| p != "oci-layout")
            .collect(),
    );
    let err = import_from(&store, Input::oci_stream(&mut stream), "s", Some("st")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "memory stream: oci-layout is missing: not an OCI archive"
    );
    assert_eq!(blob_count(&store), 0, "the blobs it placed are taken back");
}

/// A format whose blobs are named only once hashed, as a `docker save` archive's layers are:
/// every entry but `index.json` is a blob, whatever its name.
#[derive(Default)]
struct Unnamed {
    index: Option<Vec<u8>>,
    named: Vec<Digest>,
}

impl StreamFormat for Unnamed {
    fn entry(&mut self, entry: Entry<'_>, intake: &Intake<'_>) -> Result<()> {
        if entry.path == "index.json" {
            let mut bytes = Vec::new();
            entry.reader.read_to_end(&mut bytes).unwrap();
            self.index = Some(bytes);
            return Ok(());
        }
        let (digest, size) = intake.copy_unnamed(Algorithm::Sha256, entry.reader, entry.path)?;
        assert_eq!(size, entry.size);
        self.named.push(digest);
        Ok(())
    }

    fn finish(self: Box<Self>, _intake: &Intake<'_>) -> Result<ImageIndex> {
        ImageIndex::parse("index.json", self.index.as_deref().unwrap_or_default())
    }
}

#[test]
fn a_format_that_names_blobs_by_their_hash_plugs_into_the_stream_seam() {
    let env = Env::new();
    let b = nested_layout(&env.path("src"));
    let store = open_store(&env);
    // Blobs under names that say nothing of their digests.
    let all = files(&b.dir);
    let mut entries: Vec<(String, Vec<u8>)> = all
        .iter()
        .filter(|(p, _)| p.starts_with("blobs/"))
        .enumerate()
        .map(|(i, (_, bytes))| (format!("{i}/layer.tar"), bytes.clone()))
        .collect();
    entries.push(("index.json".into(), all["index.json"].clone()));
    let mut stream = MemStream(entries);
    let input = Input::Stream {
        entries: &mut stream,
        format: Box::<Unnamed>::default(),
    };
    let got = import_from(&store, input, "unnamed", Some("u")).unwrap();
    assert_eq!(names(&store), ["u:nested", "u:plain"]);
    assert_eq!(got.new_blobs, all.len() - 2);

    // One blob short: the closure check fails, and the blobs it named are taken back.
    let other = Env::new();
    let store = open_store(&other);
    let mut short = MemStream(stream.0.split_off(1));
    let input = Input::Stream {
        entries: &mut short,
        format: Box::<Unnamed>::default(),
    };
    let err = import_from(&store, input, "unnamed", Some("u")).unwrap_err();
    assert!(matches!(err, Error::MissingBlob { .. }), "{err}");
    assert!(names(&store).is_empty());
    assert_eq!(blob_count(&store), 0, "the blobs it placed are taken back");
}

/// Blobs by digest, as a registry gives them; counts the opens.
struct MemBlobs {
    blobs: BTreeMap<Digest, Vec<u8>>,
    opened: std::sync::Mutex<Vec<Digest>>,
}

impl Blobs for MemBlobs {
    fn size(&self, desc: &Descriptor) -> Result<Option<u64>> {
        Ok(self.blobs.get(&desc.digest).map(|b| b.len() as u64))
    }

    fn open(&self, desc: &Descriptor, offset: u64) -> Result<(Box<dyn Read + Send + '_>, String)> {
        let digest = &desc.digest;
        self.opened.lock().unwrap().push(digest.clone());
        let bytes = self.blobs.get(digest).ok_or_else(|| Error::MissingBlob {
            digest: digest.clone(),
            referrer: None,
        })?;
        Ok((
            Box::new(&bytes[offset as usize..]),
            format!("memory blob {digest}"),
        ))
    }
}

#[test]
fn blobs_by_digest_are_pulled_once_each_through_the_blobs_seam() {
    let env = Env::new();
    let b = nested_layout(&env.path("src"));
    let store = open_store(&env);
    let blobs: BTreeMap<Digest, Vec<u8>> = files(&b.dir)
        .into_iter()
        .filter_map(|(p, bytes)| {
            let hex = p.strip_prefix("blobs/sha256/")?;
            Some((Digest::from_parts("sha256", hex).unwrap(), bytes))
        })
        .collect();
    let source = MemBlobs {
        blobs,
        opened: Default::default(),
    };
    let index = ImageIndex::new(b.index.clone());
    let input = Input::Blobs {
        index,
        blobs: &source,
        on_missing: OnMissing::Fail,
    };
    import_from(&store, input, "registry", Some("reg")).unwrap();
    assert_eq!(names(&store), ["reg:nested", "reg:plain"]);
    let mut opened = source.opened.into_inner().unwrap();
    let all = opened.len();
    opened.sort();
    opened.dedup();
    assert_eq!(all, opened.len(), "no blob fetched twice");
    assert_eq!(opened.len(), source.blobs.len(), "every blob fetched");
}

// ---- export: a destination that is not the tar streamer ----------------------------------

/// Records what it is sent.
struct Recorder {
    order: Order,
    blobs: Vec<Descriptor>,
    finished: Vec<Vec<u8>>,
}

impl Destination for Recorder {
    fn order(&self) -> Order {
        self.order
    }

    fn blob(&mut self, from: &dyn Provider, desc: &Descriptor) -> Result<()> {
        assert!(self.finished.is_empty(), "a blob after finish");
        from.open(desc)?;
        self.blobs.push(desc.clone());
        Ok(())
    }

    fn finish(&mut self, images: &Images<'_>) -> Result<()> {
        self.finished.push(images.index_json.to_vec());
        Ok(())
    }
}

fn entries_of(store: &Store) -> Vec<layout::Entry> {
    store
        .records()
        .list()
        .unwrap()
        .into_iter()
        .map(|i| layout::Entry {
            name: i.name,
            target: i.target,
        })
        .collect()
}

fn record(store: &Store, order: Order) -> Recorder {
    let entries = entries_of(store);
    let shipment = Shipment::new(store, &entries, &ExportOptions::default()).unwrap();
    let mut rec = Recorder {
        order,
        blobs: Vec::new(),
        finished: Vec::new(),
    };
    send(store, &shipment, &mut rec).unwrap();
    assert_eq!(rec.finished, [layout::index_json(&entries)]);
    rec
}

#[test]
fn a_destination_gets_every_blob_after_its_children() {
    let env = Env::new();
    let b = nested_layout(&env.path("src"));
    env.ok(&["import", "--name", "n", b.dir.to_str().unwrap()]);
    let store = open_store(&env);
    let rec = record(&store, Order::ChildrenFirst);
    let pos: BTreeMap<&Digest, usize> = rec
        .blobs
        .iter()
        .enumerate()
        .map(|(i, d)| (&d.digest, i))
        .collect();
    assert_eq!(pos.len(), rec.blobs.len(), "each blob once");
    assert_eq!(pos.len(), files(&b.dir).len() - 2, "every blob");
    let mut checked = 0;
    for d in &rec.blobs {
        if oci::kind_of(&d.media_type) == Kind::Leaf {
            continue;
        }
        for child in oci::children(d, &store.read_small(d).unwrap()).unwrap() {
            assert!(
                pos[&child.digest] < pos[&d.digest],
                "{} ({}) is sent before its child {}",
                d.digest,
                d.media_type,
                child.digest
            );
            checked += 1;
        }
    }
    // 2 indexes (2 + 2 children) and 4 manifests (config + layers: 3 + 3 + 2 + 2).
    assert_eq!(checked, 14);

    let by_path = record(&store, Order::ByPath);
    let paths: Vec<String> = by_path.blobs.iter().map(|d| d.digest.blob_path()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
}

/// A manifest also listed as a layer by another image is still sent after its children,
/// whichever image is walked first (images go by name).
#[test]
fn a_manifest_also_listed_as_a_layer_comes_after_its_children() {
    for (m_tag, wrapper_tag) in [("z-m", "a-wrapper"), ("a-m", "z-wrapper")] {
        let env = Env::new();
        let mut b = LayoutBuilder::new(&env.path("src"));
        let m = b.add_manifest(&[b.add_random_layer(100, 7)], "amd64");
        let mut as_layer = m.clone();
        as_layer.media_type = MEDIA_LAYER.into();
        as_layer.platform = None;
        let wrapper = b.add_manifest(&[as_layer], "amd64");
        b.tag(&wrapper, Some(wrapper_tag));
        b.tag(&m, Some(m_tag));
        b.write_index();
        env.ok(&["import", "--name", "w", b.dir.to_str().unwrap()]);
        let store = open_store(&env);
        let rec = record(&store, Order::ChildrenFirst);
        let at = |d: &Digest| rec.blobs.iter().position(|x| &x.digest == d).unwrap();
        for child in oci::children(&m, &store.read_small(&m).unwrap()).unwrap() {
            assert!(
                at(&child.digest) < at(&m.digest),
                "{m_tag}: {}",
                child.digest
            );
        }
        assert!(at(&m.digest) < at(&wrapper.digest), "{m_tag}");
    }
}

// ---- the tar streamer's bytes -----------------------------------------------------------

/// Arguments, images, and the SHA-256 of the archive `layoutfs export` wrote for them before
/// export was split into a set and a destination. (A nested index has no manifest of one
/// platform: `--platform` takes the others.)
type Pinned = (
    &'static [&'static str],
    &'static [&'static str],
    &'static str,
);
const PINNED: [Pinned; 2] = [
    (
        &["export"],
        &["n:nested", "n:plain", "s:v1"],
        "ef49b4a2d8167287955b7cdf8657496bccb1f0b98ae0d53c7d3b8748765fd24b",
    ),
    (
        &["export", "--docker-manifest", "--platform", "linux/amd64"],
        &["n:plain", "s:v1"],
        "a912b070a672e677ffb488927a169cbd7b045cc5ad64921a226014202022af72",
    ),
];

#[test]
fn the_archive_bytes_are_pinned() {
    let env = Env::new();
    nested_layout(&env.path("nested"));
    let mut b = LayoutBuilder::with_algorithm(&env.path("s512"), Algorithm::Sha512);
    b.small_image("v1", 2, 5000, 11);
    env.ok(&[
        "import",
        "--name",
        "n",
        env.path("nested").to_str().unwrap(),
    ]);
    env.ok(&["import", "--name", "s", b.dir.to_str().unwrap()]);
    let mut got = Vec::new();
    for (args, refs, _) in PINNED {
        let mut all = args.to_vec();
        all.extend(refs);
        let out = env.cmd(&all).output().unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
        got.push(Digest::of(Algorithm::Sha256, &out.stdout).to_string());
    }
    let want: Vec<String> = PINNED
        .iter()
        .map(|(_, _, h)| format!("sha256:{h}"))
        .collect();
    assert_eq!(got, want);
}
