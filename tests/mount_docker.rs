//! A docker archive unpacked into the mount (`mkdir mnt/app && tar -C mnt/app -x -f F`): its
//! v1 layer directories are scratch (never sub-repositories), its symlinks are kept as links,
//! and its `manifest.json` registers the images. The first tests drive the filesystem core
//! with no kernel; the rest mount for real, with archives written by skopeo and podman and
//! hand-made ones in the shapes docker writes.

mod common;

use common::core::Harness;
use layoutfs::fs::{FsError, Kind};

const V1: &str = "45fd3016ef4208425183abcac9f2c0cdf31a78a9e1100852924a703032e3b85a";
const V1B: &str = "248dcd57ec3ae05adeece8d04a1f9bdfb6cf8cee324453fced2ea4854bdca7ef";

fn errno(r: Result<impl std::fmt::Debug, FsError>) -> i32 {
    r.unwrap_err().errno()
}

#[test]
fn a_64_hex_directory_in_a_repository_is_scratch_and_goes_like_scratch() {
    let h = Harness::new();
    h.mkdir_p("app").unwrap();
    h.mkdir_p(&format!("app/{V1}")).unwrap();
    h.put(&format!("app/{V1}/VERSION"), b"1.0", 1).unwrap();
    assert_eq!(h.kept(), ["app"], "no sub-repository");
    assert_eq!(h.walk(&format!("app/{V1}")).unwrap().kind, Kind::Dir);
    assert!(h.list("app").unwrap().contains(&V1.to_owned()));
    assert_eq!(h.read_as(&format!("app/{V1}/VERSION"), 2).unwrap(), b"1.0");

    // Renamed like other scratch, then removed.
    h.mv(&format!("app/{V1}"), &format!("app/{V1B}"), 1)
        .unwrap();
    assert!(h.walk(&format!("app/{V1}")).is_err());
    assert_eq!(errno(h.rmdir(&format!("app/{V1B}"))), libc::ENOTEMPTY);
    h.rm(&format!("app/{V1B}/VERSION")).unwrap();
    h.rmdir(&format!("app/{V1B}")).unwrap();
    assert!(h.walk(&format!("app/{V1B}")).is_err());
    assert_eq!(h.kept(), ["app"]);
    assert!(h.images().is_empty());

    // A 64-hex name one digit short, or in uppercase hex, is no v1 id: a sub-repository
    // (as before) or scratch (uppercase is no repository name at all).
    h.mkdir_p(&format!("app/{}", &V1[1..])).unwrap();
    assert_eq!(h.kept(), ["app", &format!("app/{}", &V1[1..])]);
}

#[test]
fn symlinks_in_a_repository_are_kept_as_written_and_never_followed() {
    let h = Harness::new();
    h.mkdir_p(&format!("app/{V1}")).unwrap();
    h.put("app/a.tar", b"layer bytes", 1).unwrap();
    let link = format!("app/{V1}/layer.tar");
    let a = h.symlink(&link, "../a.tar").unwrap();
    assert_eq!(a.kind, Kind::Symlink);
    assert_eq!(a.size, "../a.tar".len() as u64);
    assert_eq!(h.walk(&link).unwrap().kind, Kind::Symlink);
    assert_eq!(h.readlink(&link).unwrap(), "../a.tar");
    assert_eq!(errno(h.fs.open(a.ino, libc::O_RDONLY, 1)), libc::ELOOP);
    assert_eq!(errno(h.fs.open(a.ino, libc::O_WRONLY, 1)), libc::ELOOP);
    assert_eq!(
        errno(h.fs.readlink(h.walk("app/a.tar").unwrap().ino)),
        libc::EINVAL
    );
    let fh =
        h.fs.opendir(h.walk(&format!("app/{V1}")).unwrap().ino)
            .unwrap();
    let entries = h.fs.readdir(fh, 0).unwrap();
    h.fs.releasedir(fh);
    let e = entries.iter().find(|e| e.name == "layer.tar").unwrap();
    assert_eq!(e.kind, Kind::Symlink);
    assert_eq!(errno(h.symlink(&link, "../a.tar")), libc::EEXIST);

    // Links in the repository directory itself, and a chain, are made (only manifest.json
    // reads them, one hop).
    h.symlink("app/b.tar", "a.tar").unwrap();
    h.symlink("app/c.tar", "./b.tar").unwrap();
    assert_eq!(h.readlink("app/c.tar").unwrap(), "./b.tar");

    // Refused: absolute, escaping, at the root, among blobs, at a layout name.
    for (path, target) in [
        (format!("app/{V1}/abs"), "/etc/passwd"),
        (format!("app/{V1}/esc"), "../../other/a.tar"),
        ("app/esc".to_owned(), "../a.tar"),
        ("app/empty".to_owned(), ""),
        ("top".to_owned(), "app/a.tar"),
        ("app/index.json".to_owned(), "a.tar"),
        ("app/blobs".to_owned(), "a.tar"),
    ] {
        assert_eq!(errno(h.symlink(&path, target)), libc::EPERM, "{path}");
        assert!(
            h.walk(&path).map_or(true, |a| a.kind != Kind::Symlink),
            "{path}"
        );
    }
    h.mkdir_p("app/blobs/sha256").unwrap();
    assert_eq!(errno(h.symlink("app/blobs/sha256/l", "x")), libc::EPERM);
    assert_eq!(errno(h.symlink("app/blobs/l", "x")), libc::EPERM);

    // Renamed: within the repository when the target still stays in it; not into blobs/.
    h.mv(&link, &format!("app/{V1}/moved.tar"), 1).unwrap();
    assert_eq!(
        h.readlink(&format!("app/{V1}/moved.tar")).unwrap(),
        "../a.tar"
    );
    assert_eq!(
        errno(h.mv(&format!("app/{V1}/moved.tar"), "app/moved.tar", 1)),
        libc::EPERM,
        "../a.tar from app/ leaves it"
    );
    assert_eq!(
        errno(h.mv("app/b.tar", "app/blobs/sha256/b", 1)),
        libc::EPERM
    );
    h.mv("app/b.tar", &format!("app/{V1}/b.tar"), 1).unwrap();
    assert_eq!(h.readlink(&format!("app/{V1}/b.tar")).unwrap(), "a.tar");

    // Unlinked like a file; nothing was registered, and the directory goes.
    for l in ["moved.tar", "b.tar"] {
        h.rm(&format!("app/{V1}/{l}")).unwrap();
    }
    h.rmdir(&format!("app/{V1}")).unwrap();
    assert!(h.images().is_empty());
    assert_eq!(h.kept(), ["app"]);
}

// ---------------------------------------------------------------------------------------------
// Archives, hand-made in the shapes docker, skopeo and podman write.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::mount::Mounted;
use common::{require, sh, stderr, untar, Env};
use layoutfs::digest::{Algorithm, Digest};

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One entry of an archive.
#[derive(Clone)]
enum E {
    Dir,
    File(Vec<u8>),
    Link(String),
}

/// An archive's entries, in stream order.
#[derive(Clone, Default)]
struct Archive(Vec<(String, E)>);

impl Archive {
    fn dir(mut self, p: &str) -> Self {
        self.0.push((p.to_owned(), E::Dir));
        self
    }

    fn file(mut self, p: &str, b: &[u8]) -> Self {
        self.0.push((p.to_owned(), E::File(b.to_vec())));
        self
    }

    fn link(mut self, p: &str, target: &str) -> Self {
        self.0.push((p.to_owned(), E::Link(target.to_owned())));
        self
    }

    /// Writes it as a tar file (USTAR, mode 0444, owner 0, time 0, as skopeo does).
    fn write(&self, out: &Path) {
        let mut b = tar::Builder::new(fs::File::create(out).unwrap());
        for (path, e) in &self.0 {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            match e {
                E::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
                E::File(bytes) => {
                    h.set_mode(0o444);
                    h.set_size(bytes.len() as u64);
                    b.append_data(&mut h, path, &bytes[..]).unwrap();
                }
                E::Link(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).unwrap();
                }
            }
        }
        b.finish().unwrap();
    }

    /// Writes it into the core under `dir` in stream order (mkdir, put, symlink), by pid 1.
    fn put_into(&self, h: &Harness, dir: &str) -> Result<(), FsError> {
        for (path, e) in &self.0 {
            let at = format!("{dir}/{}", path.trim_end_matches('/'));
            match e {
                E::Dir => h.mkdir_p(&at)?,
                E::File(b) => h.put(&at, b, 1)?,
                E::Link(t) => h.symlink(&at, t).map(|_| ())?,
            }
        }
        Ok(())
    }
}

/// The bytes of file `path` of `archive`.
fn archive_file(archive: &Archive, path: &str) -> Vec<u8> {
    archive
        .0
        .iter()
        .find_map(|(p, e)| match e {
            E::File(b) if p == path => Some(b.clone()),
            _ => None,
        })
        .unwrap()
}

fn sha(b: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, b)
}

/// A v1 layer directory's name (64 hex digits), made of `byte`.
fn v1(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

/// A small layer: a tar holding one file of `seed` bytes.
fn layer(seed: u8) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let body = vec![seed; 3000 + usize::from(seed)];
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_size(body.len() as u64);
    b.append_data(&mut h, format!("file{seed}"), &body[..])
        .unwrap();
    b.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut e, b).unwrap();
    e.finish().unwrap()
}

fn config(diff_ids: &[&Digest]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| d.to_string()).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/hi"]},
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .unwrap()
}

fn manifest_json(items: &[(&str, &[&str], &[&str])]) -> Vec<u8> {
    let items: Vec<serde_json::Value> = items
        .iter()
        .map(|(c, tags, layers)| {
            serde_json::json!({"Config": c, "RepoTags": tags, "Layers": layers})
        })
        .collect();
    serde_json::to_vec(&items).unwrap()
}

/// The OCI manifest an image of a docker archive must get, written out here independently of
/// the code under test: config and (media type, bytes) of each layer.
fn expected_manifest(config: &[u8], layers: &[(&str, &[u8])]) -> (Digest, Vec<u8>) {
    let layers: Vec<String> = layers
        .iter()
        .map(|(m, b)| {
            format!(
                r#"{{"mediaType":"{m}","digest":"{}","size":{}}}"#,
                sha(b),
                b.len()
            )
        })
        .collect();
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_MANIFEST}","config":{{"mediaType":"{MEDIA_CONFIG}","digest":"{}","size":{}}},"layers":[{}]}}"#,
        sha(config),
        config.len(),
        layers.join(",")
    );
    (sha(m.as_bytes()), m.into_bytes())
}

/// Docker < 25's shape: lexical order with directory entries; the duplicate layer's
/// `layer.tar` is a link to the first copy, and comes before it; manifest.json after every
/// `<hex>` entry, `repositories` last. Returns the archive and the expected manifest digest.
fn docker24(tag: &str) -> (Archive, Digest) {
    let (l1, l2) = (layer(1), layer(2));
    let cfg = config(&[&sha(&l1), &sha(&l2), &sha(&l1)]);
    let cfg_name = format!("{}.json", sha(&cfg).hex());
    let (a, b, c) = (v1(0x11), v1(0x22), v1(0x33));
    let la = format!("{a}/layer.tar");
    let lb = format!("{b}/layer.tar");
    let lc = format!("{c}/layer.tar");
    let mut archive = Archive::default();
    for (dir, body) in [(&a, None), (&b, Some(&l1)), (&c, Some(&l2))] {
        archive = archive
            .dir(&format!("{dir}/"))
            .file(&format!("{dir}/VERSION"), b"1.0")
            .file(
                &format!("{dir}/json"),
                format!(r#"{{"id":"{dir}"}}"#).as_bytes(),
            );
        archive = match body {
            Some(body) => archive.file(&format!("{dir}/layer.tar"), body),
            None => archive.link(&la, &format!("../{lb}")),
        };
    }
    let archive = archive
        .file(&cfg_name, &cfg)
        .file(
            "manifest.json",
            &manifest_json(&[(&cfg_name, &[tag], &[&lb, &lc, &la])]),
        )
        .file("repositories", br#"{"hand/dup":{"1":"x"}}"#);
    let (digest, _) = expected_manifest(
        &cfg,
        &[(MEDIA_TAR, &l1), (MEDIA_TAR, &l2), (MEDIA_TAR, &l1)],
    );
    (archive, digest)
}

/// manifest.json first, gzip layers named `<hex>.tar.gz` at the top (crane's naming), one
/// item without tags. Returns the archive and the expected manifest digest.
fn gzip_first() -> (Archive, Digest) {
    let (l1, l2) = (layer(3), layer(4));
    let (g1, g2) = (gzip(&l1), gzip(&l2));
    let cfg = config(&[&sha(&l1), &sha(&l2)]);
    let cfg_name = format!("sha256:{}", sha(&cfg).hex());
    let n1 = format!("{}.tar.gz", sha(&g1).hex());
    let n2 = format!("{}.tar.gz", sha(&g2).hex());
    let archive = Archive::default()
        .file(
            "manifest.json",
            &manifest_json(&[(&cfg_name, &[], &[&n1, &n2])]),
        )
        .file(&cfg_name, &cfg)
        .file(&n1, &g1)
        .file(&n2, &g2);
    let (digest, _) = expected_manifest(&cfg, &[(MEDIA_GZIP, &g1), (MEDIA_GZIP, &g2)]);
    (archive, digest)
}

/// The blobs of the core's store, by name.
fn blob_names(h: &Harness) -> std::collections::BTreeSet<String> {
    h.store_blobs()
}

#[test]
fn core_a_docker_24_archive_registers_once_its_link_is_made() {
    let h = Harness::new();
    let (archive, want) = docker24("hand/dup:1");
    // As GNU tar writes it: a link whose target has `..` is first an empty placeholder, made a
    // link only at the end (after manifest.json, which waits for it meanwhile).
    let mut placeholders = Archive::default();
    let mut links = Vec::new();
    for (path, e) in &archive.0 {
        match e {
            E::Link(t) => {
                placeholders = placeholders.file(path, b"");
                links.push((path.clone(), t.clone()));
            }
            e => placeholders.0.push((path.clone(), e.clone())),
        }
    }
    placeholders.put_into(&h, "app").unwrap();
    assert!(h.images().is_empty(), "waits for the link");
    assert_eq!(h.kept(), ["app"]);
    for (path, target) in links {
        h.rm(&format!("app/{path}")).unwrap();
        h.symlink(&format!("app/{path}"), &target).unwrap();
    }
    assert_eq!(h.images(), ["hand/dup:1"]);
    let image = h
        .store
        .records()
        .get(&"hand/dup:1".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(image.target.digest, want);
    assert_eq!(h.kept(), ["app"], "no v1 directory became a repository");
    // The layout of the image shows, with its manifest, config and two layers.
    let blobs = h.list("hand/dup/blobs/sha256").unwrap();
    assert_eq!(blobs.len(), 4, "{blobs:?}");
    assert!(blobs.contains(&want.hex().to_owned()));
}

#[test]
fn core_manifest_json_first_waits_and_gzip_layers_are_checked_by_diff_id() {
    let h = Harness::new();
    let (archive, want) = gzip_first();
    h.mkdir_p("gz").unwrap();
    let mut entries = archive.0.iter();
    let (first, E::File(bytes)) = entries.next().unwrap() else {
        unreachable!()
    };
    h.put(&format!("gz/{first}"), bytes, 1).unwrap();
    assert!(h.images().is_empty());
    assert_eq!(h.fs.waiting_archives(), ["gz/manifest.json"]);
    for (path, e) in entries {
        let E::File(b) = e else { unreachable!() };
        h.put(&format!("gz/{path}"), b, 1).unwrap();
    }
    // No tags: named by its digest in the directory's repository.
    assert_eq!(h.images(), [format!("gz@{want}")]);
    assert!(h.fs.waiting_archives().is_empty());

    // A manifest.json that waits, then unlinked: nothing waits.
    h.mkdir_p("gone").unwrap();
    h.put(
        "gone/manifest.json",
        &archive_file(&archive, "manifest.json"),
        1,
    )
    .unwrap();
    assert_eq!(h.fs.waiting_archives(), ["gone/manifest.json"]);
    h.rm("gone/manifest.json").unwrap();
    assert!(h.fs.waiting_archives().is_empty());
    h.put("gone/other", b"x", 1).unwrap();
    assert!(h.images().iter().all(|n| !n.starts_with("gone")));
    assert!(h.list("gz").unwrap().contains(&"index.json".to_owned()));

    // The archive's files stay temporary files with their bytes (now blobs), and are written
    // again as such (tar --overwrite): the image keeps what it had.
    let (n1, E::File(g1)) = &archive.0[2] else {
        unreachable!()
    };
    let at = format!("gz/{n1}");
    assert_eq!(&h.read_as(&at, 2).unwrap(), g1);
    h.put(&at, b"rewritten", 1).unwrap();
    assert_eq!(h.read_as(&at, 2).unwrap(), b"rewritten");
    assert_eq!(h.images(), [format!("gz@{want}")]);
    assert!(h.store_blobs().contains(sha(g1).hex()));
}

#[test]
fn core_bad_archives_fail_the_close_and_register_nothing() {
    let (l1, l2) = (layer(5), layer(6));
    let cfg = config(&[&sha(&l1), &sha(&l2)]);
    let cfg_name = format!("{}.json", sha(&cfg).hex());
    let good = Archive::default().file(&cfg_name, &cfg);
    let cases: Vec<(&str, Archive, &str)> = vec![
        (
            "wrong diff_id",
            good.clone().file("a.tar", &l1).file("b.tar", &l1).file(
                "manifest.json",
                &manifest_json(&[(&cfg_name, &["bad/x:1"], &["a.tar", "b.tar"])]),
            ),
            "uncompressed content is",
        ),
        (
            "count",
            good.clone().file("a.tar", &l1).file(
                "manifest.json",
                &manifest_json(&[(&cfg_name, &["bad/x:1"], &["a.tar"])]),
            ),
            "1 layers, config has 2 diff_ids",
        ),
        (
            "config name",
            Archive::default()
                .file(&format!("{}.json", sha(b"other").hex()), &cfg)
                .file("a.tar", &l1)
                .file("b.tar", &l2)
                .file(
                    "manifest.json",
                    &manifest_json(&[(
                        &format!("{}.json", sha(b"other").hex()),
                        &["bad/x:1"],
                        &["a.tar", "b.tar"],
                    )]),
                ),
            "hashes to",
        ),
        (
            "shape",
            good.clone().file("manifest.json", br#"{"Config":"x"}"#),
            "not a docker archive's list of images",
        ),
        (
            "tag",
            good.clone().file("a.tar", &l1).file(
                "manifest.json",
                &manifest_json(&[(&cfg_name, &["Bad/Tag:1"], &["a.tar"])]),
            ),
            "is not NAME:TAG",
        ),
        (
            "one tag, two images",
            good.clone().file("a.tar", &l1).file("b.tar", &l2).file(
                "manifest.json",
                &manifest_json(&[
                    (&cfg_name, &["bad/x:1"], &["a.tar", "b.tar"]),
                    (&cfg_name, &["bad/x:1"], &["b.tar", "a.tar"]),
                ]),
            ),
            "names two images",
        ),
        (
            "link to a link",
            good.clone()
                .file("a.tar", &l1)
                .file("b.tar", &l2)
                .link("l1", "a.tar")
                .link("l2", "l1")
                .file(
                    "manifest.json",
                    &manifest_json(&[(&cfg_name, &["bad/x:1"], &["l2", "b.tar"])]),
                ),
            "points to another link",
        ),
    ];
    for (what, archive, says) in cases {
        let h = Harness::new();
        h.mkdir_p("bad").unwrap();
        let (last, rest) = archive.0.split_last().unwrap();
        Archive(rest.to_vec()).put_into(&h, "bad").unwrap();
        let before = blob_names(&h);
        let E::File(bytes) = &last.1 else {
            unreachable!()
        };
        let e = h.put(&format!("bad/{}", last.0), bytes, 1).unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{what}: {e}");
        let msg = e.to_string();
        assert!(msg.starts_with("bad/manifest.json: "), "{what}: {msg}");
        assert!(msg.contains(says), "{what}: {msg}");
        assert!(h.images().is_empty(), "{what}");
        assert_eq!(blob_names(&h), before, "{what}: the store as before");
    }
}

#[test]
fn core_manifest_json_in_a_layout_stays_a_temporary_file() {
    let h = Harness::new();
    let src = h.layout("src", 1, 7);
    h.copy_in(&src, "lay", false).unwrap();
    let before = h.images();
    assert_eq!(before, ["lay:t0"]);
    let (archive, _) = gzip_first();
    archive.put_into(&h, "lay").unwrap();
    assert_eq!(
        h.images(),
        before,
        "index.json was written: a layout, not an archive"
    );
    assert!(h.list("lay").unwrap().contains(&"manifest.json".to_owned()));
}

// ---------------------------------------------------------------------------------------------
// Real mounts: tar -x of what the peers write.

/// The files of a tar archive, by path (links left out).
fn members(archive: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut a = tar::Archive::new(fs::File::open(archive).unwrap());
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() == tar::EntryType::Regular {
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut b).unwrap();
            out.insert(p, b);
        }
    }
    out
}

/// The manifest digest a skopeo or podman docker archive (one item, uncompressed layers
/// named by path) must give, computed here from its files.
fn expected_of(archive: &Path) -> Digest {
    let files = members(archive);
    let items: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let item = &items[0];
    let cfg = &files[item["Config"].as_str().unwrap()];
    let layers: Vec<(&str, &[u8])> = item["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (MEDIA_TAR, &files[l.as_str().unwrap()][..]))
        .collect();
    expected_manifest(cfg, &layers).0
}

/// The image `name`'s manifest digest in `env`'s store.
fn digest_of(env: &Env, name: &str) -> Option<String> {
    env.images()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, d)| d)
}

/// Checks through the mount that image `repo`'s layer blobs hash to its config's diff_ids.
fn layers_are_diff_ids(m: &Mounted, repo: &str, manifest: &str) {
    let blob = |d: &str| {
        let hex = d.strip_prefix("sha256:").unwrap();
        fs::read(m.path(&format!("{repo}/blobs/sha256/{hex}"))).unwrap()
    };
    let man: serde_json::Value = serde_json::from_slice(&blob(manifest)).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&blob(man["config"]["digest"].as_str().unwrap())).unwrap();
    let diff_ids: Vec<&str> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    let layers: Vec<String> = man["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| sha(&blob(l["digest"].as_str().unwrap())).to_string())
        .collect();
    assert!(!layers.is_empty());
    assert_eq!(layers, diff_ids);
}

/// No repository of the store is named by 64 hex digits (a v1 layer directory).
fn no_hex_repositories(env: &Env) {
    let out = env.ok(&["repositories"]);
    for line in out.lines() {
        let repo = line.split_whitespace().next().unwrap_or("");
        let last = repo.rsplit('/').next().unwrap();
        assert!(
            !(last.len() == 64 && last.bytes().all(|b| b.is_ascii_hexdigit())),
            "{out}"
        );
    }
}

/// A skopeo `docker-archive:` of a umoci image, tagged `example.com/app:v1`.
fn skopeo_archive(env: &Env) -> std::path::PathBuf {
    require("skopeo");
    let src = env.path("umoci");
    common::umoci_layout(env, &src);
    let out = env.path("sk.tar");
    sh(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:base", src.display()),
        &format!("docker-archive:{}:example.com/app:v1", out.display()),
    ]));
    out
}

#[test]
fn tar_x_of_a_skopeo_docker_archive_registers_its_image() {
    let env = Env::new();
    let archive = skopeo_archive(&env);
    let want = expected_of(&archive);
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir(m.path("app")).unwrap();
    let out = untar(&archive, &m.path("app"));
    assert!(out.status.success(), "tar: {}", stderr(&out));
    assert_eq!(
        digest_of(&env, "example.com/app:v1").as_deref(),
        Some(want.to_string().as_str()),
        "{}",
        m.log()
    );
    layers_are_diff_ids(&m, "example.com/app", &want.to_string());
    // The links tar made are links, read back as written.
    let links: Vec<_> = fs::read_dir(m.path("app"))
        .unwrap()
        .map(|e| e.unwrap().path().join("layer.tar"))
        .filter(|p| p.is_symlink())
        .collect();
    assert!(!links.is_empty());
    for l in &links {
        assert!(fs::read_link(l).unwrap().starts_with(".."), "{l:?}");
    }
    no_hex_repositories(&env);
    assert!(m.errors().is_empty(), "{}", m.log());
    // skopeo reads the image back from the layout the mount shows.
    sh(Command::new("skopeo").args([
        "inspect",
        &format!("oci:{}:v1", m.path("example.com/app").display()),
    ]));
}

#[test]
fn tar_x_of_a_podman_save_registers_what_skopeo_gives() {
    let env = Env::new();
    let skopeo = skopeo_archive(&env);
    // Pulled from skopeo's archive (podman names an `oci:` image by its path, and a
    // temporary directory's has capitals), saved by podman's own writer.
    sh(common::podman::podman(&env).args([
        "pull",
        "-q",
        &format!("docker-archive:{}", skopeo.display()),
    ]));
    let archive = env.path("pd.tar");
    sh(common::podman::podman(&env)
        .args(["save", "-o"])
        .arg(&archive)
        .arg("example.com/app:v1"));
    let want = expected_of(&archive);
    assert_eq!(
        want,
        expected_of(&skopeo),
        "podman and skopeo write the same image"
    );
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir(m.path("pm")).unwrap();
    let out = untar(&archive, &m.path("pm"));
    assert!(out.status.success(), "tar: {}", stderr(&out));
    assert_eq!(
        digest_of(&env, "example.com/app:v1").as_deref(),
        Some(want.to_string().as_str()),
        "{}",
        m.log()
    );
    layers_are_diff_ids(&m, "example.com/app", &want.to_string());
    no_hex_repositories(&env);
}

#[test]
fn tar_x_of_docker_24_and_manifest_first_archives() {
    let env = Env::new();
    let m = Mounted::start(&env, "mnt", &[]);
    let (dup, want_dup) = docker24("hand/dup:1");
    dup.write(&env.path("dup.tar"));
    fs::create_dir(m.path("dup")).unwrap();
    let out = untar(&env.path("dup.tar"), &m.path("dup"));
    assert!(out.status.success(), "tar: {}", stderr(&out));
    assert_eq!(
        digest_of(&env, "hand/dup:1").as_deref(),
        Some(want_dup.to_string().as_str()),
        "{}",
        m.log()
    );
    layers_are_diff_ids(&m, "hand/dup", &want_dup.to_string());
    assert_eq!(
        fs::read_link(m.path(&format!("dup/{}/layer.tar", v1(0x11)))).unwrap(),
        Path::new(&format!("../{}/layer.tar", v1(0x22)))
    );

    let (gz, want_gz) = gzip_first();
    gz.write(&env.path("gz.tar"));
    fs::create_dir(m.path("gz")).unwrap();
    let out = untar(&env.path("gz.tar"), &m.path("gz"));
    assert!(out.status.success(), "tar: {}", stderr(&out));
    let name = format!("gz@{want_gz}");
    assert_eq!(
        digest_of(&env, &name),
        Some(want_gz.to_string()),
        "{}",
        m.log()
    );
    no_hex_repositories(&env);
    assert!(m.errors().is_empty(), "{}", m.log());
}

#[test]
fn tar_x_of_bad_archives_fails_and_registers_nothing() {
    let env = Env::new();
    let m = Mounted::start(&env, "mnt", &[]);
    let (l1, l2) = (layer(7), layer(8));
    let cfg = config(&[&sha(&l1), &sha(&l2)]);
    let cfg_name = format!("{}.json", sha(&cfg).hex());
    let stored = |env: &Env| common::tree(&env.store.join("blobs"));

    // An escaping link: refused when tar makes it (at the end: its target has `..`), so the
    // manifest.json that names it never applies.
    let esc = Archive::default()
        .file(&cfg_name, &cfg)
        .file("b.tar", &l2)
        .link(&format!("{}/layer.tar", v1(0x44)), "../../a.tar")
        .file(
            "manifest.json",
            &manifest_json(&[(
                &cfg_name,
                &["bad/esc:1"],
                &[&format!("{}/layer.tar", v1(0x44)), "b.tar"],
            )]),
        );
    esc.write(&env.path("esc.tar"));
    fs::create_dir(m.path("esc")).unwrap();
    let before = stored(&env);
    let out = untar(&env.path("esc.tar"), &m.path("esc"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("layer.tar"), "{}", stderr(&out));
    assert!(m.log().contains("refused: a target outside"), "{}", m.log());
    assert!(env.images().is_empty());
    assert_eq!(stored(&env), before);

    // A layer that is not what the config says: the close of manifest.json fails (EIO).
    let wrong = Archive::default()
        .file(&cfg_name, &cfg)
        .file("a.tar", &l1)
        .file("b.tar", &l1)
        .file(
            "manifest.json",
            &manifest_json(&[(&cfg_name, &["bad/diff:1"], &["a.tar", "b.tar"])]),
        );
    wrong.write(&env.path("wrong.tar"));
    fs::create_dir(m.path("wrong")).unwrap();
    let before = stored(&env);
    let out = untar(&env.path("wrong.tar"), &m.path("wrong"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("manifest.json"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
    let log = m.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("wrong/manifest.json"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("uncompressed content is"), "{log}");
    assert!(env.images().is_empty());
    assert_eq!(stored(&env), before, "the store as before");
    no_hex_repositories(&env);

    // The escaping link's manifest.json never applied: said at unmount.
    let log = env.path("mnt.log");
    sh(Command::new("umount").arg(&m.dir));
    assert!(m.wait().success());
    let log = fs::read_to_string(log).unwrap();
    assert!(log.contains("esc/manifest.json was never applied"), "{log}");
}

#[test]
fn the_mount_and_import_agree_on_a_docker_archive() {
    let env = Env::new();
    let archive = skopeo_archive(&env);
    let other = Env::new();
    other.ok(&["import", archive.to_str().unwrap()]);
    let imported = digest_of(&other, "example.com/app:v1").expect("import names it");
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir(m.path("app")).unwrap();
    let out = untar(&archive, &m.path("app"));
    assert!(out.status.success(), "tar: {}", stderr(&out));
    assert_eq!(digest_of(&env, "example.com/app:v1"), Some(imported));
}

#[test]
fn core_a_waiting_manifest_json_fails_the_close_of_the_bad_layer_it_waited_for() {
    let h = Harness::new();
    let (l1, l2) = (layer(9), layer(10));
    let cfg = config(&[&sha(&l1), &sha(&l2)]);
    let cfg_name = format!("{}.json", sha(&cfg).hex());
    h.mkdir_p("late").unwrap();
    let m = manifest_json(&[(&cfg_name, &["late/x:1"], &["a.tar", "b.tar"])]);
    h.put("late/manifest.json", &m, 1).unwrap();
    h.put(&format!("late/{cfg_name}"), &cfg, 1).unwrap();
    h.put("late/a.tar", &l1, 1).unwrap();
    let before = h.store_blobs();
    let e = h.put("late/b.tar", &l1, 1).unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert!(e.to_string().starts_with("late/manifest.json: "), "{e}");
    assert!(h.images().is_empty());
    assert_eq!(h.store_blobs(), before);
    // It waits no more: the next file closed there is not refused for it.
    h.put("late/repositories", b"{}", 1).unwrap();
    // Written right, the archive applies.
    h.put("late/b.tar", &l2, 1).unwrap();
    h.put("late/manifest.json", &m, 1).unwrap();
    assert_eq!(h.images(), ["late/x:1"]);
}

#[test]
fn tar_x_of_a_docker_25_archive_takes_its_images_from_index_json() {
    let env = Env::new();
    let l1 = layer(11);
    let cfg = config(&[&sha(&l1)]);
    let (digest, manifest) = expected_manifest(&cfg, &[(MEDIA_TAR, &l1)]);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": digest.to_string(),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": "docker.io/hand/d25:1",
                "org.opencontainers.image.ref.name": "1",
            },
        }],
    });
    let blob = |b: &[u8]| format!("blobs/sha256/{}", sha(b).hex());
    let mut blobs = vec![(blob(&l1), l1.clone()), (blob(&cfg), cfg.clone())];
    blobs.push((blob(&manifest), manifest.clone()));
    blobs.sort();
    // Lexical order, as docker 25 writes it: blobs/, index.json, manifest.json, oci-layout.
    let mut archive = Archive::default().dir("blobs/").dir("blobs/sha256/");
    for (p, b) in &blobs {
        archive = archive.file(p, b);
    }
    let archive = archive
        .file("index.json", &serde_json::to_vec(&index).unwrap())
        .file(
            "manifest.json",
            &manifest_json(&[(&blob(&cfg), &["hand/d25:1"], &[&blob(&l1)])]),
        )
        .file("oci-layout", br#"{"imageLayoutVersion": "1.0.0"}"#)
        .file("repositories", br#"{"hand/d25":{"1":"x"}}"#);
    archive.write(&env.path("d25.tar"));
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir(m.path("d25")).unwrap();
    let out = untar(&env.path("d25.tar"), &m.path("d25"));
    assert!(out.status.success(), "tar: {}", stderr(&out));
    // index.json was written first: a layout; manifest.json stays a temporary file.
    assert_eq!(
        env.images(),
        [("d25:1".to_owned(), digest.to_string())],
        "{}",
        m.log()
    );
    assert!(m.path("d25/manifest.json").is_file());
    assert!(m.errors().is_empty(), "{}", m.log());
}

/// Every shape the import reads from a file without index.json (skopeo's and docker < 25's,
/// with gzip and zstd layers, a layer repeated, images sharing layers, one untagged), built by
/// tests/common/docker_archive: `tar -x` into the mount registers exactly what `layoutfs
/// import --name DIR` registers in another store, digests included.
#[test]
fn tar_x_and_import_agree_on_every_shape_of_archive() {
    use common::docker_archive as da;
    let env = Env::new();
    let m = Mounted::start(&env, "mnt", &[]);
    let (l1, l2, l3) = (
        da::layer(21),
        da::gzip(&da::layer(22)),
        da::zstd(&da::layer(23)),
    );
    let a = da::Image::new(
        vec![l1.clone(), l2.clone(), l1.clone()],
        "/a",
        &["shapes/a:1", "shapes/a:2"],
    );
    let b = da::Image::new(vec![l1, l3], "/b", &[]).untagged();
    let shapes = [
        ("sk", da::skopeo_shape(&[a.clone(), b.clone()])),
        ("dock", da::docker24_shape(&[a, b])),
    ];
    for (dir, tar) in shapes {
        let file = env.path(&format!("{dir}.tar"));
        tar.write(&file);
        let other = Env::new();
        other.ok(&["import", "--name", dir, file.to_str().unwrap()]);
        let want = other.images();
        assert_eq!(want.len(), 3, "{dir}: {want:?}");
        fs::create_dir(m.path(dir)).unwrap();
        let out = untar(&file, &m.path(dir));
        assert!(out.status.success(), "{dir}: tar: {}", stderr(&out));
        for (name, digest) in want {
            assert_eq!(
                digest_of(&env, &name),
                Some(digest),
                "{dir}: {name}: {}",
                m.log()
            );
        }
    }
    no_hex_repositories(&env);
    assert!(m.errors().is_empty(), "{}", m.log());
}
