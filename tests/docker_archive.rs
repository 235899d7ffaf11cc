//! Importing docker archives (issue 15), through the binary: what skopeo and podman write
//! (`docker-archive:` with one tag, several and none; `podman save` in its default format, with
//! `-m`, and as an OCI archive), hand-made legacy archives (docker before 25 with v1 directories
//! and a duplicate-layer link before its target, gzip and zstd layers, `manifest.json` first,
//! an untagged item, an odd config name), standard input, a gzip'd archive, and docker 25+
//! archives (an OCI layout plus `manifest.json`). Each image must get the names its archive
//! gives, the manifest `expected_manifest` synthesises (its digest is deterministic), layers
//! whose uncompressed hashes are the config's diff_ids, a clean fsck, and a place in the mount.
//! Each bad archive must fail with one line naming it, leaving the store as it was.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::docker_archive::{
    self as da, digest, docker24_shape, docker25_shape, gzip, layer, layer_media_type,
    manifest_json, oci_archive, oci_dir, sample, sha256_hex, skopeo_shape, uncompressed, zstd,
    Body, Image, IndexNames, Item, Tar, BZIP2_HEAD, MANIFEST_JSON_CAP, XZ_HEAD,
};
use common::mount::Mounted;
use common::podman::podman;
use common::{fsck_clean, require, sh, stderr, tar_dir, Env};

const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

// ---------------------------------------------------------------------------------------------
// Checking what an import left

/// (repository, tag) of a stored name: `repo:tag` or `repo@digest`.
fn split_name(name: &str) -> (String, Option<String>) {
    if let Some((repo, _)) = name.split_once('@') {
        return (repo.to_owned(), None);
    }
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[slash..].rfind(':') {
        Some(i) => (
            name[..slash + i].to_owned(),
            Some(name[slash + i + 1..].to_owned()),
        ),
        None => (name.to_owned(), None),
    }
}

/// Reads blob `digest` of repository `repo` through the mount and checks its hash.
fn read_blob(m: &Mounted, repo: &str, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let bytes = fs::read(m.path(&format!("{repo}/blobs/sha256/{hex}")))
        .unwrap_or_else(|e| panic!("{repo}: blob {digest} in the mount: {e}"));
    assert_eq!(sha256_hex(&bytes), hex, "{repo}: blob {digest} reads back");
    bytes
}

/// Checks image `name` through the mount: its repository's `index.json` lists `want` (under
/// its tag), and every blob reads back: the config's diff_ids are the uncompressed hashes of
/// the layers, each layer's media type says its compression. Returns the manifest bytes.
fn check_in_mount(m: &Mounted, name: &str, want: &str) -> Vec<u8> {
    let (repo, tag) = split_name(name);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(m.path(&format!("{repo}/index.json"))).unwrap()).unwrap();
    let listed = index["manifests"].as_array().unwrap().iter().any(|d| {
        d["digest"] == want
            && tag
                .as_deref()
                .is_none_or(|t| d["annotations"][ANNOTATION_REF_NAME] == t)
    });
    assert!(listed, "{name}: {want} not in {repo}/index.json: {index}");
    let manifest_bytes = read_blob(m, &repo, want);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let cfg = &manifest["config"];
    let config_bytes = read_blob(m, &repo, cfg["digest"].as_str().unwrap());
    assert_eq!(
        cfg["size"],
        config_bytes.len() as u64,
        "{name}: config size"
    );
    let config: serde_json::Value = serde_json::from_slice(&config_bytes).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len(), "{name}: layers and diff_ids");
    assert!(!layers.is_empty(), "{name}: no layers");
    for (l, diff_id) in layers.iter().zip(diff_ids) {
        let bytes = read_blob(m, &repo, l["digest"].as_str().unwrap());
        assert_eq!(l["size"], bytes.len() as u64, "{name}: layer size");
        assert_eq!(
            l["mediaType"],
            layer_media_type(&bytes),
            "{name}: media type"
        );
        assert_eq!(
            digest(&uncompressed(&bytes)),
            diff_id.as_str().unwrap(),
            "{name}: a layer's uncompressed hash is not its diff_id"
        );
    }
    manifest_bytes
}

/// The names and digests of the store, sorted.
fn stored(env: &Env) -> Vec<(String, String)> {
    let mut v = env.images();
    v.sort();
    v
}

fn sorted(want: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = want
        .iter()
        .map(|(n, d)| ((*n).to_owned(), (*d).to_owned()))
        .collect();
    v.sort();
    v
}

/// Insists the store holds exactly `want` (name, manifest digest), that fsck finds it
/// sound, and that each image shows in a mount with all its blobs.
fn assert_store(env: &Env, want: &[(&str, &str)]) {
    assert_eq!(stored(env), sorted(want), "the images imported");
    fsck_clean(env);
    let m = Mounted::start(env, "mnt", &[]);
    for (name, d) in want {
        check_in_mount(&m, name, d);
    }
    assert!(m.errors().is_empty(), "mount log: {:?}", m.errors());
}

/// Imports archive `path` (with `args` before it) and insists on success.
fn import(env: &Env, args: &[&str], path: &Path) -> String {
    let mut all = vec!["import"];
    all.extend_from_slice(args);
    all.push(path.to_str().unwrap());
    env.ok(&all)
}

/// Writes `t` as `name` in `env`'s directory.
fn put(env: &Env, name: &str, t: &Tar) -> PathBuf {
    let p = env.path(name);
    t.write(&p);
    p
}

/// The entries of a tar file: (path, type flag, link target).
fn listing(path: &Path) -> Vec<(String, u8, String)> {
    let f = fs::File::open(path).unwrap();
    tar::Archive::new(f)
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().entry_type().as_byte(),
                link,
            )
        })
        .collect()
}

/// `manifest.json` of a tar file.
fn manifest_of(path: &Path) -> serde_json::Value {
    let f = fs::File::open(path).unwrap();
    let mut a = tar::Archive::new(f);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap() == Path::new("manifest.json") {
            return serde_json::from_reader(&mut e).unwrap();
        }
    }
    panic!("{}: no manifest.json", path.display());
}

// ---------------------------------------------------------------------------------------------
// Real producers

/// The source image for the peers, in an OCI layout at `dir` under tag `v1`: layers l1, l2, l1
/// gzip'd (skopeo and podman write them uncompressed), and `base` with l1 only. Returns the
/// images as a docker archive holds them (uncompressed layers, the same configs).
fn peer_source(dir: &Path) -> (Image, Image) {
    let (l1, l2) = (layer(1), layer(2));
    let v1 = Image::new(vec![gzip(&l1), gzip(&l2), gzip(&l1)], "/bin/hi", &[]);
    let base = Image::new(vec![gzip(&l1)], "/bin/sh", &[]);
    oci_dir(dir, &[(v1.clone(), "v1"), (base.clone(), "base")]);
    let plain = |i: &Image| Image {
        config: i.config.clone(),
        layers: i.layers.iter().map(|l| uncompressed(l)).collect(),
        tags: None,
    };
    (plain(&v1), plain(&base))
}

/// `skopeo copy oci:SRC:v1 docker-archive:OUT[:REF]` with `extra` arguments.
fn skopeo_to_archive(src: &Path, out: &Path, reference: Option<&str>, extra: &[&str]) {
    require("skopeo");
    let dest = match reference {
        Some(r) => format!("docker-archive:{}:{r}", out.display()),
        None => format!("docker-archive:{}", out.display()),
    };
    sh(Command::new("skopeo")
        .args(["copy", "-q"])
        .args(extra)
        .arg(format!("oci:{}:v1", src.display()))
        .arg(dest));
}

/// Whether `path` holds a layer linked to through a symbolic link, as the producers write.
fn has_layer_links(path: &Path) -> bool {
    listing(path)
        .iter()
        .any(|(p, kind, link)| *kind == b'2' && p.ends_with("/layer.tar") && !link.is_empty())
}

#[test]
fn skopeo_docker_archive_with_one_tag() {
    let env = Env::new();
    let (v1, _) = peer_source(&env.path("src"));
    let out = env.path("sk1.tar");
    skopeo_to_archive(&env.path("src"), &out, Some("example.com/app:v1"), &[]);
    assert!(has_layer_links(&out), "skopeo no longer writes layer links");
    assert_eq!(
        manifest_of(&out)[0]["RepoTags"],
        serde_json::json!(["example.com/app:v1"])
    );
    assert_eq!(import(&env, &[], &out), "example.com/app:v1\n");
    let want = v1.manifest_digest();
    assert_store(&env, &[("example.com/app:v1", &want)]);
}

#[test]
fn skopeo_docker_archive_with_several_tags_is_one_manifest() {
    let env = Env::new();
    let (v1, _) = peer_source(&env.path("src"));
    let out = env.path("sk2.tar");
    let extra = [
        "--additional-tag",
        "example.com/app:latest",
        "--additional-tag",
        "other/app:x",
    ];
    skopeo_to_archive(&env.path("src"), &out, Some("example.com/app:v1"), &extra);
    let tags: Vec<String> = manifest_of(&out)[0]["RepoTags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    // skopeo writes full names: other/app:x is docker.io/other/app:x; kept as written.
    let want_tags = [
        "example.com/app:v1",
        "example.com/app:latest",
        "docker.io/other/app:x",
    ];
    assert_eq!(
        tags.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        want_tags.into_iter().collect::<BTreeSet<_>>()
    );
    import(&env, &[], &out);
    let want = v1.manifest_digest();
    let expect: Vec<(&str, &str)> = tags.iter().map(|t| (t.as_str(), want.as_str())).collect();
    assert_store(&env, &expect);
}

#[test]
fn skopeo_docker_archive_without_a_tag_is_stored_by_digest() {
    let env = Env::new();
    let (v1, _) = peer_source(&env.path("src"));
    let out = env.path("noname.tar");
    skopeo_to_archive(&env.path("src"), &out, None, &[]);
    assert_eq!(manifest_of(&out)[0]["RepoTags"], serde_json::json!([]));
    let want = v1.manifest_digest();
    // Under --name...
    let named = format!("x@{want}");
    assert_eq!(import(&env, &["--name", "x"], &out), format!("{named}\n"));
    assert_store(&env, &[(&named, &want)]);
    // ...else under the archive's base name.
    let other = Env::new();
    let by_file = format!("noname@{want}");
    assert_eq!(import(&other, &[], &out), format!("{by_file}\n"));
    assert_store(&other, &[(&by_file, &want)]);
}

/// Loads the peer source into podman (fresh state under `env`) and tags v1 and base.
fn podman_with_source(env: &Env) -> (Image, Image) {
    let (v1, base) = peer_source(&env.path("src"));
    // From an archive: podman names an image pulled from oci:DIR after DIR, which must be
    // lowercase.
    let src = env.path("src.tar");
    tar_dir(&env.path("src"), &src);
    for (tag, names) in [
        ("v1", &["example.com/app:v1", "localhost/other:2"][..]),
        ("base", &["example.com/base:1"][..]),
    ] {
        let id = sh(podman(env)
            .args(["pull", "-q"])
            .arg(format!("oci-archive:{}:{tag}", src.display())));
        let mut c = podman(env);
        c.arg("tag").arg(id.trim()).args(names);
        sh(&mut c);
    }
    (v1, base)
}

#[test]
fn podman_save_in_its_default_format() {
    let env = Env::new();
    let (v1, _) = podman_with_source(&env);
    let out = env.path("pd1.tar");
    sh(podman(&env)
        .args(["save", "-o"])
        .arg(&out)
        .arg("example.com/app:v1"));
    assert!(
        has_layer_links(&out),
        "podman save no longer writes layer links"
    );
    import(&env, &[], &out);
    assert_store(&env, &[("example.com/app:v1", &v1.manifest_digest())]);
}

#[test]
fn podman_save_of_two_images_sharing_a_layer() {
    let env = Env::new();
    let (v1, base) = podman_with_source(&env);
    let out = env.path("pdm.tar");
    sh(podman(&env).args(["save", "-m", "-o"]).arg(&out).args([
        "example.com/app:v1",
        "localhost/other:2",
        "example.com/base:1",
    ]));
    let m = manifest_of(&out);
    assert_eq!(m.as_array().unwrap().len(), 2, "{m}");
    // The shared layer is in the archive once.
    let layers = listing(&out)
        .into_iter()
        .filter(|(p, kind, _)| *kind == b'0' && p.ends_with(".tar"))
        .count();
    assert_eq!(layers, 2, "{:?}", listing(&out));
    import(&env, &[], &out);
    let (a, b) = (v1.manifest_digest(), base.manifest_digest());
    assert_store(
        &env,
        &[
            ("example.com/app:v1", &a),
            ("localhost/other:2", &a),
            ("example.com/base:1", &b),
        ],
    );
}

#[test]
fn podman_save_as_an_oci_archive() {
    let env = Env::new();
    podman_with_source(&env);
    let out = env.path("po.tar");
    sh(podman(&env)
        .args(["save", "--format", "oci-archive", "-o"])
        .arg(&out)
        .arg("example.com/app:v1"));
    // podman re-serialises the manifest: the digest is the one its index.json lists.
    let f = fs::File::open(&out).unwrap();
    let mut index = None;
    for e in tar::Archive::new(f).entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap() == Path::new("index.json") {
            index = Some(serde_json::from_reader::<_, serde_json::Value>(&mut e).unwrap());
        }
    }
    let index = index.unwrap();
    let want = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    import(&env, &[], &out);
    assert_store(&env, &[("example.com/app:v1", &want)]);
}

// ---------------------------------------------------------------------------------------------
// Hand-made archives

#[test]
fn docker_before_25_with_a_duplicate_layer_linked_before_its_target() {
    let env = Env::new();
    let (_, _, image) = sample(&["hand/dup:1"]);
    let t = docker24_shape(std::slice::from_ref(&image));
    // The fixture is what it claims: directory entries, v1 files, and the third layer a link
    // to the first's layer.tar, written before it.
    let m: serde_json::Value = serde_json::from_slice(t.get("manifest.json")).unwrap();
    let (first, dup) = (
        m[0]["Layers"][0].as_str().unwrap(),
        m[0]["Layers"][2].as_str().unwrap(),
    );
    let link = t
        .entries
        .iter()
        .find(|(p, _)| p == dup)
        .map(|(_, b)| b.clone());
    assert!(
        matches!(link, Some(Body::Symlink(ref l)) if *l == format!("../{first}")),
        "{link:?}"
    );
    assert!(t.index_of(dup) < t.index_of(first), "the link comes first");
    assert!(t.entries.iter().any(|(_, b)| matches!(b, Body::Dir)));
    assert!(t.has("repositories"));
    let path = put(&env, "dup.tar", &t);
    assert_eq!(import(&env, &[], &path), "hand/dup:1\n");
    assert_store(&env, &[("hand/dup:1", &image.manifest_digest())]);
}

/// A legacy archive: the config as `config_name`, `layers` at their paths, then
/// `manifest.json` with `items`.
fn legacy(config_name: &str, config: &[u8], layers: &[(&str, &[u8])], items: &[Item]) -> Tar {
    let mut t = Tar::new().file(config_name, config);
    for (p, b) in layers {
        t = t.file(p, b);
    }
    t.file("manifest.json", &manifest_json(items))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn gzip_layers_with_manifest_json_first() {
    let env = Env::new();
    let (l1, l2) = (gzip(&layer(1)), gzip(&layer(2)));
    let image = Image::new(
        vec![l1.clone(), l2.clone(), l1.clone()],
        "/bin/hi",
        &["hand/gz:1"],
    );
    let cfg = format!("{}.json", image.config_hex());
    let paths = strings(&["x1/layer.tar", "x2/layer.tar", "x1/layer.tar"]);
    let t = legacy(
        &cfg,
        &image.config,
        &[("x1/layer.tar", &l1), ("x2/layer.tar", &l2)],
        &[image.item(&cfg, &paths)],
    )
    .move_first("manifest.json");
    assert_eq!(t.index_of("manifest.json"), 0);
    let path = put(&env, "gz.tar", &t);
    import(&env, &[], &path);
    let want = image.manifest_digest();
    assert_store(&env, &[("hand/gz:1", &want)]);
    // The blobs are the gzip bytes as they were, under +gzip (the manifest stored is this one:
    // the digests are equal).
    let manifest: serde_json::Value = serde_json::from_slice(&image.manifest()).unwrap();
    assert_eq!(manifest["layers"][0]["mediaType"], da::MEDIA_LAYER_GZIP);
    assert_eq!(manifest["layers"][0]["digest"], digest(&l1));
}

#[test]
fn a_zstd_layer_and_an_odd_config_name() {
    let env = Env::new();
    let (l1, l2) = (zstd(&layer(1)), layer(2));
    let image = Image::new(
        vec![l1.clone(), l2.clone(), l1.clone()],
        "/bin/hi",
        &["hand/zst:1"],
    );
    let paths = strings(&["l1.tar.zst", "l2", "l1.tar.zst"]);
    let t = legacy(
        "cfg.json",
        &image.config,
        &[("l1.tar.zst", &l1), ("l2", &l2)],
        &[image.item("cfg.json", &paths)],
    );
    let path = put(&env, "zst.tar", &t);
    import(&env, &[], &path);
    let want = image.manifest_digest();
    let expected = String::from_utf8(image.manifest()).unwrap();
    assert!(
        expected.contains(da::MEDIA_LAYER_ZSTD)
            && expected.contains(&format!("\"{}\"", da::MEDIA_LAYER))
    );
    assert_store(&env, &[("hand/zst:1", &want)]);
}

#[test]
fn two_items_sharing_layers_one_untagged() {
    let env = Env::new();
    let (l1, l2, big) = sample(&[]);
    let big = big.untagged();
    let small = Image::new(
        vec![l1.clone()],
        "/bin/sh",
        &["hand/two:base", "docker.io/library/hand2:x"],
    );
    let h = |b: &[u8]| format!("{}.tar", sha256_hex(b));
    let t = Tar::new()
        .file(&format!("{}.json", big.config_hex()), &big.config)
        .file(&format!("{}.json", small.config_hex()), &small.config)
        .file(&h(&l1), &l1)
        .file(&h(&l2), &l2)
        .file(
            "manifest.json",
            &manifest_json(&[
                big.item(
                    &format!("{}.json", big.config_hex()),
                    &[h(&l1), h(&l2), h(&l1)],
                ),
                small.item(&format!("{}.json", small.config_hex()), &[h(&l1)]),
            ]),
        );
    assert!(!String::from_utf8_lossy(t.get("manifest.json")).contains("\"RepoTags\":[]"));
    let path = put(&env, "two.tar", &t);
    import(&env, &[], &path);
    let (b, s) = (big.manifest_digest(), small.manifest_digest());
    let untagged = format!("two@{b}");
    assert_store(
        &env,
        &[
            (&untagged, &b),
            ("hand/two:base", &s),
            ("docker.io/library/hand2:x", &s),
        ],
    );
}

#[test]
fn repo_tags_absent_null_or_empty_mean_untagged() {
    let (_, _, image) = sample(&[]);
    let want = image.manifest_digest();
    let t = skopeo_shape(std::slice::from_ref(&image));
    let listed = String::from_utf8(t.get("manifest.json").to_vec()).unwrap();
    assert!(listed.contains(r#""RepoTags":[]"#), "{listed}");
    for (case, tags) in [
        ("absent", ""),
        ("null", r#","RepoTags":null"#),
        ("empty", r#","RepoTags":[]"#),
    ] {
        let env = Env::new();
        let m = listed.replace(r#","RepoTags":[]"#, tags);
        let path = put(
            &env,
            &format!("{case}.tar"),
            &t.clone()
                .replace("manifest.json", Body::File(m.into_bytes())),
        );
        import(&env, &["--name", "u"], &path);
        let name = format!("u@{want}");
        assert_eq!(stored(&env), sorted(&[(&name, &want)]), "{case}");
    }
}

#[test]
fn repositories_and_v1_files_are_ignored() {
    // Names come from RepoTags alone; `repositories`, `VERSION` and `json` may say anything.
    let env = Env::new();
    let (_, _, image) = sample(&["hand/rep:1"]);
    let mut t = skopeo_shape(std::slice::from_ref(&image));
    t = t.replace(
        "repositories",
        Body::File(br#"{"other/name":{"x":"00"}}"#.to_vec()),
    );
    for (p, b) in t.entries.iter_mut() {
        if p.ends_with("/json") || p.ends_with("/VERSION") {
            *b = Body::File(b"not json".to_vec());
        }
    }
    let path = put(&env, "rep.tar", &t);
    assert_eq!(import(&env, &[], &path), "hand/rep:1\n");
    assert_eq!(
        stored(&env),
        sorted(&[("hand/rep:1", &image.manifest_digest())])
    );
}

#[test]
fn crane_names_the_config_by_digest_and_gzips_the_layers() {
    // go-containerregistry's tarball.Write: config `sha256:<hex>`, layers `<hex>.tar.gz`.
    let env = Env::new();
    let (l1, l2) = (gzip(&layer(1)), gzip(&layer(2)));
    let image = Image::new(vec![l1.clone(), l2.clone()], "/bin/crane", &["crane/app:1"]);
    let cfg = format!("sha256:{}", image.config_hex());
    let names = [l1.clone(), l2.clone()].map(|l| format!("{}.tar.gz", sha256_hex(&l)));
    let t = legacy(
        &cfg,
        &image.config,
        &[(&names[0], &l1), (&names[1], &l2)],
        &[image.item(&cfg, &names)],
    );
    let path = put(&env, "crane.tar", &t);
    import(&env, &[], &path);
    assert_store(&env, &[("crane/app:1", &image.manifest_digest())]);
}

#[test]
fn an_archive_tarred_again_with_dot_slash_paths_imports() {
    // `tar -C extracted -cf x.tar .` of an extracted archive: every path starts with `./`.
    let env = Env::new();
    let (_, _, image) = sample(&["hand/dot:1"]);
    let mut t = docker24_shape(std::slice::from_ref(&image));
    for (p, _) in t.entries.iter_mut() {
        *p = format!("./{p}");
    }
    t.entries.insert(0, ("./".into(), Body::Dir));
    let path = put(&env, "dot.tar", &t);
    import(&env, &[], &path);
    assert_store(&env, &[("hand/dot:1", &image.manifest_digest())]);
}

#[test]
fn names_are_kept_as_written() {
    let env = Env::new();
    let (_, _, image) = sample(&["busybox:latest"]);
    let path = put(&env, "bb.tar", &skopeo_shape(std::slice::from_ref(&image)));
    assert_eq!(import(&env, &[], &path), "busybox:latest\n");
    assert_store(&env, &[("busybox:latest", &image.manifest_digest())]);
}

#[test]
fn from_standard_input_and_gzip_compressed() {
    let env = Env::new();
    let (_, _, image) = sample(&["hand/in:1"]);
    let bytes = skopeo_shape(std::slice::from_ref(&image)).bytes();
    let out = env.run_with_stdin(&["import", "--name", "x", "-"], &bytes);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = image.manifest_digest();
    assert_store(&env, &[("hand/in:1", &want)]);

    // An untagged image from standard input goes under --name.
    let other = Env::new();
    let untagged = skopeo_shape(&[image.clone().untagged()]).bytes();
    let out = other.run_with_stdin(&["import", "--name", "x", "-"], &untagged);
    assert!(out.status.success(), "{}", stderr(&out));
    let x = format!("x@{want}");
    assert_store(&other, &[(&x, &want)]);

    // A .tar.gz (and a .tar.zst) of a docker archive, untagged: named after the file without
    // its extensions.
    for (file, bytes) in [
        ("packed.tar.gz", gzip(&untagged)),
        ("packed.tar.zst", zstd(&untagged)),
    ] {
        let third = Env::new();
        let p = third.path(file);
        fs::write(&p, bytes).unwrap();
        import(&third, &[], &p);
        let packed = format!("packed@{want}");
        assert_store(&third, &[(&packed, &want)]);
    }
}

#[test]
fn docker_25_with_names_and_an_untagged_item_the_index_lacks() {
    let env = Env::new();
    let (l1, l2, image) = sample(&["d25:1"]);
    let lost = Image::new(vec![l2.clone(), l1.clone()], "/bin/lost", &[]);
    let t = docker25_shape(
        std::slice::from_ref(&image),
        std::slice::from_ref(&lost),
        IndexNames::Docker,
    );
    let index = String::from_utf8(t.get("index.json").to_vec()).unwrap();
    assert!(
        !index.contains(&lost.manifest_digest()),
        "the index lacks it"
    );
    assert!(String::from_utf8_lossy(t.get("manifest.json")).contains(&lost.config_hex()));
    let path = put(&env, "d25.tar", &t);
    import(&env, &[], &path);
    let (a, b) = (image.manifest_digest(), lost.manifest_digest());
    let untagged = format!("d25@{b}");
    assert_store(&env, &[("docker.io/library/d25:1", &a), (&untagged, &b)]);
}

#[test]
fn docker_25_with_compressed_layers_keeps_them() {
    // Docker's containerd store saves the layers as stored: gzip or zstd blobs, the manifest
    // in index.json naming them; manifest.json then adds nothing.
    let env = Env::new();
    let (l1, l2) = (layer(1), layer(2));
    let image = Image::new(
        vec![gzip(&l1), zstd(&l2), l1.clone()],
        "/bin/c8d",
        &["c8d:1"],
    );
    let t = docker25_shape(std::slice::from_ref(&image), &[], IndexNames::Docker);
    let path = put(&env, "c8d.tar", &t);
    import(&env, &[], &path);
    assert_store(
        &env,
        &[("docker.io/library/c8d:1", &image.manifest_digest())],
    );
}

#[test]
fn docker_25_index_without_names_takes_the_repo_tags() {
    let env = Env::new();
    let (_, _, image) = sample(&["d25/app:1", "d25/app:2"]);
    let t = docker25_shape(std::slice::from_ref(&image), &[], IndexNames::None);
    assert!(!String::from_utf8_lossy(t.get("index.json")).contains("annotations"));
    let path = put(&env, "d25n.tar", &t);
    import(&env, &[], &path);
    let a = image.manifest_digest();
    assert_store(&env, &[("d25/app:1", &a), ("d25/app:2", &a)]);
}

#[test]
fn manifest_json_of_exactly_the_cap_imports() {
    let env = Env::new();
    let (_, _, image) = sample(&["hand/cap:1"]);
    let t = skopeo_shape(std::slice::from_ref(&image));
    let mut m = t.get("manifest.json").to_vec();
    m.resize(MANIFEST_JSON_CAP, b' ');
    let path = put(&env, "cap.tar", &t.replace("manifest.json", Body::File(m)));
    import(&env, &[], &path);
    assert_store(&env, &[("hand/cap:1", &image.manifest_digest())]);
}

// ---------------------------------------------------------------------------------------------
// Determinism

#[test]
fn the_same_archive_gives_the_same_digest_in_two_stores() {
    let (_, _, image) = sample(&["hand/det:1"]);
    let want = image.manifest_digest();
    let archive = skopeo_shape(std::slice::from_ref(&image));
    assert_eq!(
        archive.bytes(),
        skopeo_shape(std::slice::from_ref(&image)).bytes()
    );
    for _ in 0..2 {
        let env = Env::new();
        let path = put(&env, "det.tar", &archive);
        import(&env, &[], &path);
        assert_eq!(stored(&env), sorted(&[("hand/det:1", &want)]));
    }
}

#[test]
fn legacy_and_docker_25_archives_of_the_same_layers_give_the_same_digest() {
    let (_, _, image) = sample(&["hand/same:1"]);
    let want = image.manifest_digest();
    let shapes = [
        ("skopeo", skopeo_shape(std::slice::from_ref(&image))),
        ("docker24", docker24_shape(std::slice::from_ref(&image))),
        (
            "docker25",
            docker25_shape(std::slice::from_ref(&image), &[], IndexNames::None),
        ),
    ];
    for (shape, t) in shapes {
        let env = Env::new();
        let path = put(&env, &format!("{shape}.tar"), &t);
        import(&env, &[], &path);
        assert_eq!(stored(&env), sorted(&[("hand/same:1", &want)]), "{shape}");
    }
}

// ---------------------------------------------------------------------------------------------
// The fixtures themselves, read by a real reader

#[test]
fn the_hand_made_fixtures_read_in_skopeo() {
    require("skopeo");
    let env = Env::new();
    let (l1, _, image) = sample(&["hand/fx:1"]);
    let gz = Image::new(vec![gzip(&l1)], "/bin/gz", &["hand/fx:2"]);
    let zs = Image::new(vec![zstd(&l1)], "/bin/zs", &["hand/fx:3"]);
    let shapes = [
        ("skopeo", skopeo_shape(std::slice::from_ref(&image))),
        ("docker24", docker24_shape(std::slice::from_ref(&image))),
        (
            "docker25",
            docker25_shape(std::slice::from_ref(&image), &[], IndexNames::Docker),
        ),
        ("gz", skopeo_shape(&[gz])),
        ("zs", skopeo_shape(&[zs])),
    ];
    for (shape, t) in shapes {
        assert_eq!(t.bytes(), t.clone().bytes(), "{shape}: deterministic");
        let path = put(&env, &format!("{shape}.tar"), &t);
        let raw = sh(Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("docker-archive:{}", path.display())));
        let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
        // containers/image lists the diff_ids as the layer digests.
        let layers: Vec<&str> = raw["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        let config: serde_json::Value = serde_json::from_slice(&t_config(&t)).unwrap();
        let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        assert_eq!(layers, diff_ids, "{shape}");
    }
}

/// The config of the first item of a built archive.
fn t_config(t: &Tar) -> Vec<u8> {
    let m: serde_json::Value = serde_json::from_slice(t.get("manifest.json")).unwrap();
    t.get(m[0]["Config"].as_str().unwrap()).to_vec()
}

// ---------------------------------------------------------------------------------------------
// Bad input

/// The blob files of a store.
fn store_blobs(env: &Env) -> BTreeSet<String> {
    fs::read_dir(env.store.join("blobs/sha256"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn ingests(env: &Env) -> usize {
    fs::read_dir(env.store.join("ingest")).map_or(0, |d| d.count())
}

/// Imports `bytes` as archive `file` and insists it fails as it must: one line, naming the
/// archive, with `fragment`, the store's images and blobs as they were, nothing half-written.
fn refused_once(env: &Env, file: &str, bytes: &[u8], fragment: &str) {
    let path = env.path(file);
    fs::write(&path, bytes).unwrap();
    let (images, blobs) = (stored(env), store_blobs(env));
    let out = env.run(&["import", path.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "{file}: imported: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(err.lines().count(), 1, "{file}: {err}");
    assert!(
        err.starts_with(&format!("layoutfs: {}: ", path.display())),
        "{file}: the error does not name the archive: {err}"
    );
    assert!(err.contains(fragment), "{file}: {err:?} lacks {fragment:?}");
    assert_eq!(stored(env), images, "{file}: images");
    assert_eq!(store_blobs(env), blobs, "{file}: blobs");
    assert_eq!(ingests(env), 0, "{file}: ingests left");
}

/// A bad archive refused in an empty store, and again in a store holding an image that shares
/// its layers (which stays whole).
fn refused(file: &str, bytes: &[u8], fragment: &str) {
    let env = Env::new();
    refused_once(&env, file, bytes, fragment);
    assert!(stored(&env).is_empty(), "{file}");
    assert!(store_blobs(&env).is_empty(), "{file}");

    // The earlier images hold the bad archives' config and layers, plain, gzip and zstd.
    let (l1, _, earlier) = sample(&["earlier/img:1"]);
    let packed = Image::new(
        vec![gzip(&l1), zstd(&l1)],
        "/bin/packed",
        &["earlier/img:2"],
    );
    let p = put(&env, "earlier.tar", &oci_archive(&[earlier, packed]));
    import(&env, &[], &p);
    assert_eq!(stored(&env).len(), 2);
    refused_once(&env, file, bytes, fragment);
    fsck_clean(&env);
}

/// The bad archives' starting point: layers l1 and l2 and the sample image over l1, l2, l1
/// (the same config as the earlier images of `refused`); the archives hold them as `c.json`,
/// `a.tar` and `b.tar`, the item's Layers a, b, a, unless a case says otherwise.
fn base() -> (Vec<u8>, Vec<u8>, Image) {
    sample(&["bad/x:1"])
}

fn item(image: &Image, config: &str, layers: &[&str]) -> Item {
    image.item(config, &strings(layers))
}

#[test]
fn a_layer_count_other_than_the_diff_ids_is_refused() {
    let (l1, l2, img) = base();
    let t = legacy(
        "c.json",
        &img.config,
        &[("a.tar", &l1), ("b.tar", &l2)],
        &[item(&img, "c.json", &["a.tar", "b.tar"])],
    );
    refused("count.tar", &t.bytes(), "diff_ids");
}

#[test]
fn a_layer_whose_hash_is_not_its_diff_id_is_refused() {
    // b.tar, the second layer, holds l1 (whose hash is the first diff_id, not the second).
    let (l1, _, img) = base();
    for (case, b) in [
        ("plain", l1.clone()),
        ("gzip", gzip(&l1)),
        ("zstd", zstd(&l1)),
    ] {
        let t = legacy(
            "c.json",
            &img.config,
            &[("a.tar", &l1), ("b.tar", &b)],
            &[item(&img, "c.json", &["a.tar", "b.tar", "a.tar"])],
        );
        refused(&format!("diffid-{case}.tar"), &t.bytes(), "config says");
    }
}

#[test]
fn a_config_whose_name_is_not_its_hash_is_refused() {
    // As docker names it, and as crane (go-containerregistry) does.
    let (l1, l2, img) = base();
    let other = sha256_hex(b"other bytes");
    for (n, name) in [format!("{other}.json"), format!("sha256:{other}")]
        .iter()
        .enumerate()
    {
        let t = legacy(
            name,
            &img.config,
            &[("a.tar", &l1), ("b.tar", &l2)],
            &[item(&img, name, &["a.tar", "b.tar", "a.tar"])],
        );
        refused(&format!("cfgname{n}.tar"), &t.bytes(), "hashes to");
    }
}

#[test]
fn a_missing_layer_or_config_is_refused() {
    let (l1, _, img) = base();
    let t = legacy(
        "c.json",
        &img.config,
        &[("a.tar", &l1)],
        &[item(&img, "c.json", &["a.tar", "b.tar", "a.tar"])],
    );
    refused("nolayer.tar", &t.bytes(), "not in the archive");
    let t = legacy(
        "c.json",
        &img.config,
        &[("a.tar", &l1), ("b.tar", &layer(2))],
        &[item(&img, "nothere.json", &["a.tar", "b.tar", "a.tar"])],
    );
    refused("noconfig.tar", &t.bytes(), "not in the archive");
}

/// The base archive with a link `x/l` (to `target`) used as the first layer, and `extra` links.
fn with_link(target: &str, extra: &[(&str, &str)]) -> Tar {
    let (l1, l2, img) = base();
    let mut t = legacy(
        "c.json",
        &img.config,
        &[("a.tar", &l1), ("b.tar", &l2)],
        &[item(&img, "c.json", &["x/l", "b.tar", "a.tar"])],
    );
    t = t.symlink("x/l", target).move_first("x/l");
    for (p, to) in extra {
        t = t.symlink(p, to).move_first(p);
    }
    t
}

#[test]
fn links_that_escape_are_absolute_chained_or_dangling_are_refused() {
    refused(
        "escape.tar",
        &with_link("../../a.tar", &[]).bytes(),
        "escapes the archive",
    );
    refused(
        "absolute.tar",
        &with_link("/a.tar", &[]).bytes(),
        "absolute",
    );
    refused(
        "chain.tar",
        &with_link("../l1", &[("l1", "a.tar")]).bytes(),
        "another link",
    );
    refused(
        "dangling.tar",
        &with_link("nothere.tar", &[]).bytes(),
        "not in the archive",
    );
}

#[test]
fn a_link_that_stays_inside_is_followed() {
    // The control for the cases above: `x/l -> ../a.tar` is a layer like any other.
    let env = Env::new();
    let (_, _, img) = base();
    let path = put(&env, "inside.tar", &with_link("../a.tar", &[]));
    import(&env, &[], &path);
    assert_store(&env, &[("bad/x:1", &img.manifest_digest())]);
}

#[test]
fn invalid_repo_tags_are_refused() {
    let (l1, l2, img) = base();
    let zero = format!("bad/notag@sha256:{}", "0".repeat(64));
    for (n, tag) in ["Bad/Tag:1", &zero, "noTagAtAll", ""].iter().enumerate() {
        let mut i = item(&img, "c.json", &["a.tar", "b.tar", "a.tar"]);
        i.repo_tags = Some(vec![(*tag).to_owned()]);
        let t = legacy(
            "c.json",
            &img.config,
            &[("a.tar", &l1), ("b.tar", &l2)],
            &[i],
        );
        refused(&format!("tag{n}.tar"), &t.bytes(), "RepoTags");
    }
}

#[test]
fn a_manifest_json_over_the_cap_is_refused() {
    let (_, _, img) = base();
    let t = skopeo_shape(std::slice::from_ref(&img));
    let mut m = t.get("manifest.json").to_vec();
    m.resize(MANIFEST_JSON_CAP + 1, b' ');
    let big = t.clone().replace("manifest.json", Body::File(m));
    refused("big.tar", &big.bytes(), "larger than");
    // A header claiming 1 GiB is refused on its size, before any of it is read.
    let claim = t.replace(
        "manifest.json",
        Body::Claim {
            size: 1 << 30,
            data: b"[".to_vec(),
        },
    );
    refused("claim.tar", &claim.body_bytes(), "larger than");
}

#[test]
fn a_manifest_json_of_the_wrong_shape_is_refused() {
    let (_, _, img) = base();
    let t = skopeo_shape(std::slice::from_ref(&img));
    let shapes: [&[u8]; 7] = [
        b"[]",
        b"{}",
        b"null",
        b"[1]",
        br#"[{"Config":3}]"#,
        br#"[{"Config":"c","Layers":"x"}]"#,
        b"[{\"Config\":",
    ];
    for (n, bad) in shapes.iter().enumerate() {
        let t = t.clone().replace("manifest.json", Body::File(bad.to_vec()));
        refused(&format!("shape{n}.tar"), &t.bytes(), "manifest.json");
    }
}

#[test]
fn a_truncated_archive_is_refused() {
    let (_, _, img) = base();
    let t = skopeo_shape(std::slice::from_ref(&img));
    let body = t.bytes();
    // Cut at an entry boundary: before manifest.json, without the end-of-archive blocks.
    let at = t.offset_of("manifest.json");
    refused("cut-entry.tar", &body[..at], "truncated");
    // Cut inside a layer.
    let first = t.entries[0].0.clone();
    assert!(first.ends_with(".tar"), "{first}");
    refused("cut-layer.tar", &body[..512 + 100], "truncated");
}

#[test]
fn the_same_path_twice_is_refused() {
    let (l1, l2, img) = base();
    let t = legacy(
        "c.json",
        &img.config,
        &[("a.tar", &l1), ("b.tar", &l2), ("a.tar", &l1)],
        &[item(&img, "c.json", &["a.tar", "b.tar", "a.tar"])],
    );
    refused("twice.tar", &t.bytes(), "appears twice");
    let t = skopeo_shape(std::slice::from_ref(&img));
    let m = t.get("manifest.json").to_vec();
    refused(
        "twice-manifest.tar",
        &t.file("manifest.json", &m).bytes(),
        "appears twice",
    );
}

#[test]
fn a_bzip2_layer_is_refused() {
    let (l1, _, img) = base();
    let mut bz = BZIP2_HEAD.to_vec();
    bz.extend_from_slice(&[0x5a; 200]);
    let t = legacy(
        "c.json",
        &img.config,
        &[("a.tar", &l1), ("b.tar", &bz)],
        &[item(&img, "c.json", &["a.tar", "b.tar", "a.tar"])],
    );
    refused("bzip2.tar", &t.bytes(), "not supported");
}

#[test]
fn an_archive_with_neither_layout_nor_manifest_is_refused() {
    let (l1, _, img) = base();
    let t = Tar::new().file("c.json", &img.config).file("a.tar", &l1);
    refused(
        "neither.tar",
        &t.bytes(),
        "neither oci-layout nor manifest.json",
    );
}

#[test]
fn an_untagged_image_from_standard_input_needs_a_name() {
    let env = Env::new();
    let (_, _, img) = base();
    let bytes = skopeo_shape(&[img.untagged()]).bytes();
    let out = env.run_with_stdin(&["import", "-"], &bytes);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("standard input") && err.contains("pass --name"),
        "{err}"
    );
    assert!(stored(&env).is_empty());
    assert!(store_blobs(&env).is_empty());
}

#[test]
fn a_bad_item_after_a_good_one_registers_neither() {
    let (l1, l2, img) = base();
    let good = Image::new(vec![l1.clone()], "/bin/good", &["good/one:1"]);
    let t = legacy(
        "c.json",
        &img.config,
        &[("a.tar", &l1), ("b.tar", &l2), ("g.json", &good.config)],
        &[
            good.item("g.json", &strings(&["a.tar"])),
            item(&img, "c.json", &["a.tar", "gone.tar", "a.tar"]),
        ],
    );
    refused("good-then-bad.tar", &t.bytes(), "not in the archive");
}

#[test]
fn a_bad_item_only_in_the_manifest_json_of_a_docker_25_archive_is_refused() {
    // The item index.json lacks is checked like any other: its second layer is l1's bytes.
    let (l1, l2, img) = base();
    let lost = Image {
        layers: vec![l1.clone(), l1.clone()],
        ..Image::new(vec![l1.clone(), l2.clone()], "/bin/lost", &[])
    };
    let t = docker25_shape(std::slice::from_ref(&img), &[lost], IndexNames::Docker);
    refused("d25-bad.tar", &t.bytes(), "config says");
}

#[test]
fn an_xz_layer_is_refused() {
    let (l1, _, img) = base();
    let mut xz = XZ_HEAD.to_vec();
    xz.extend_from_slice(&[0x5a; 200]);
    let t = legacy(
        "c.json",
        &img.config,
        &[("a.tar", &l1), ("b.tar", &xz)],
        &[item(&img, "c.json", &["a.tar", "b.tar", "a.tar"])],
    );
    refused("xz.tar", &t.bytes(), "not supported");
}

#[test]
fn layer_paths_that_are_absolute_or_climb_are_refused() {
    let (l1, l2, img) = base();
    for (n, (path, fragment)) in [("/a.tar", "absolute"), ("x/../../a.tar", "'..'")]
        .into_iter()
        .enumerate()
    {
        let t = legacy(
            "c.json",
            &img.config,
            &[("a.tar", &l1), ("b.tar", &l2)],
            &[item(&img, "c.json", &[path, "b.tar", "a.tar"])],
        );
        refused(&format!("layer-path{n}.tar"), &t.bytes(), fragment);
    }
}

#[test]
fn a_link_and_a_file_at_one_path_are_refused() {
    let t = with_link("../a.tar", &[]).file("x/l", &layer(1));
    refused("link-and-file.tar", &t.bytes(), "appears twice");
}

#[test]
fn a_dangling_link_no_item_uses_is_refused() {
    let t = with_link("../a.tar", &[("y/unused", "nothere.tar")]);
    refused("unused-dangling.tar", &t.bytes(), "not in the archive");
}

#[test]
fn one_tag_on_two_images_is_refused() {
    let (l1, l2, img) = base();
    let other = Image::new(vec![l1.clone()], "/bin/other", &["bad/x:1"]);
    let t = legacy(
        "c.json",
        &img.config,
        &[("a.tar", &l1), ("b.tar", &l2), ("o.json", &other.config)],
        &[
            item(&img, "c.json", &["a.tar", "b.tar", "a.tar"]),
            other.item("o.json", &strings(&["a.tar"])),
        ],
    );
    refused("one-tag-two-images.tar", &t.bytes(), "bad/x:1");
}
