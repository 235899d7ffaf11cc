//! `export --format docker` and `export --oci` against the real loaders (issue 15): podman
//! loads the archive (a fresh state directory each time) under the names docker's rules give,
//! skopeo reads it as `docker-archive:` with the layers the config's diff_ids say, the bytes
//! are the same every time, layoutfs imports it again under the same manifest digests, gzip
//! layers go out as stored, an index exports the platform asked for, and `--oci` turns a
//! docker schema 2 image (made offline by `skopeo copy --format v2s2` into a `dir:`) into an
//! OCI one with the same config and layers that skopeo copies and layoutfs imports again, and
//! a docker manifest list into an OCI index with its platforms.
//! The peers must be installed (scripts/setup): a missing one fails the test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use common::podman::podman_at;
use common::{require, sh, stderr, umoci_layout, Env};

const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Every entry of an archive: path -> bytes, in the order written.
fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut a = tar::Archive::new(archive);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        out.push((path, bytes));
    }
    out
}

fn file<'a>(entries: &'a [(String, Vec<u8>)], path: &str) -> &'a [u8] {
    &entries
        .iter()
        .find(|e| e.0 == path)
        .unwrap_or_else(|| panic!("{path} is not in the archive"))
        .1
}

fn json_of(entries: &[(String, Vec<u8>)], path: &str) -> Value {
    serde_json::from_slice(file(entries, path)).unwrap()
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// `layoutfs export ARGS` to standard output.
fn export(env: &Env, args: &[&str]) -> Vec<u8> {
    let out = env.cmd(&[&["export"], args].concat()).output().unwrap();
    assert!(out.status.success(), "export {args:?}: {}", stderr(&out));
    out.stdout
}

/// A store with `srcimg:base` (umoci's image: OCI media types, one gzip layer) and
/// `dockerimg:v1` (the same image as docker schema 2, from `skopeo copy --format v2s2`), also
/// tagged `example.com/team/app:2`. Returns the docker manifest's digest.
fn store_with_images(env: &Env) -> String {
    require("skopeo");
    let src = env.path("src");
    umoci_layout(env, &src);
    env.ok(&["import", "--name", "srcimg", src.to_str().unwrap()]);
    let digest = docker_layout(env, &src, &env.path("dk"));
    env.ok(&[
        "import",
        "--name",
        "dockerimg",
        env.path("dk").to_str().unwrap(),
    ]);
    env.ok(&["tag", "dockerimg:v1", "example.com/team/app:2"]);
    digest
}

/// `src:base` copied as docker schema 2 into a `dir:`, laid out again as an OCI layout whose
/// `index.json` lists the docker manifest as `v1`. Returns the manifest's digest.
fn docker_layout(env: &Env, src: &Path, out: &Path) -> String {
    let dir = env.path("v2s2");
    sh(Command::new("skopeo")
        .args(["copy", "--format", "v2s2"])
        .arg(format!("oci:{}:base", src.display()))
        .arg(format!("dir:{}", dir.display())));
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        if name.len() == 64 {
            fs::copy(&p, blobs.join(&name)).unwrap();
        }
    }
    let manifest = fs::read(dir.join("manifest.json")).unwrap();
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(m["mediaType"], MEDIA_DOCKER_MANIFEST);
    assert_eq!(m["config"]["mediaType"], MEDIA_DOCKER_CONFIG);
    assert_eq!(m["layers"][0]["mediaType"], MEDIA_DOCKER_LAYER_GZIP);
    let hex = sha256_hex(&manifest);
    fs::write(blobs.join(&hex), &manifest).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": MEDIA_DOCKER_MANIFEST, "digest": format!("sha256:{hex}"),
        "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "v1"},
    }]});
    fs::write(out.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    format!("sha256:{hex}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    layoutfs::digest::Digest::of(layoutfs::digest::Algorithm::Sha256, bytes)
        .hex()
        .to_owned()
}

/// `podman load` of `archive` in a state of its own under `dir`; returns the names it holds
/// (`REPOSITORY:TAG`) and, per name, the image ID.
fn podman_load(dir: &Path, archive: &Path) -> BTreeMap<String, String> {
    sh(podman_at(dir).arg("load").arg("-i").arg(archive));
    let out = sh(podman_at(dir).args([
        "images",
        "--no-trunc",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}}",
    ]));
    out.lines()
        .map(|l| {
            let (name, id) = l.split_once(' ').unwrap();
            (name.to_owned(), id.trim_start_matches("sha256:").to_owned())
        })
        .collect()
}

/// The config's hex digest and diff_ids of manifest `digest`, read from an archive.
fn config_of(entries: &[(String, Vec<u8>)], manifest: &str) -> (String, Vec<String>) {
    let m = json_of(entries, &blob_path(manifest));
    let cfg = m["config"]["digest"].as_str().unwrap();
    let c = json_of(entries, &blob_path(cfg));
    let diff_ids = c["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    (cfg.trim_start_matches("sha256:").to_owned(), diff_ids)
}

#[test]
fn podman_loads_a_docker_export_under_docker_s_names() {
    let env = Env::new();
    let docker_digest = store_with_images(&env);
    // One image: podman takes the archive as an OCI archive and names the image by
    // io.containerd.image.name, the docker-normalised name.
    let one = env.path("one.tar");
    fs::write(&one, export(&env, &["--format", "docker", "dockerimg:v1"])).unwrap();
    let (config_hex, _) = config_of(&entries(&fs::read(&one).unwrap()), &docker_digest);
    let got = podman_load(&env.path("podman-one"), &one);
    let want: BTreeMap<String, String> = [(
        "docker.io/library/dockerimg:v1".to_owned(),
        config_hex.clone(),
    )]
    .into();
    assert_eq!(got, want);
    // Several: podman's OCI-archive path takes one image only, so it reads manifest.json,
    // whose RepoTags are the stored names, and prefixes localhost/ to those without a registry.
    let many = env.path("many.tar");
    let names = ["dockerimg:v1", "example.com/team/app:2", "srcimg:base"];
    fs::write(
        &many,
        export(&env, &[&["--format", "docker"], &names[..]].concat()),
    )
    .unwrap();
    let got = podman_load(&env.path("podman-many"), &many);
    let want: BTreeMap<String, String> = [
        "localhost/dockerimg:v1",
        "example.com/team/app:2",
        "localhost/srcimg:base",
    ]
    .iter()
    .map(|n| ((*n).to_owned(), config_hex.clone()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn skopeo_reads_the_archive_with_the_config_s_diff_ids_and_the_bytes_are_the_same_every_time() {
    require("skopeo");
    let env = Env::new();
    let docker_digest = store_with_images(&env);
    let names = ["dockerimg:v1", "example.com/team/app:2", "srcimg:base"];
    let a = export(&env, &[&["--format", "docker"], &names[..]].concat());
    let mut reversed = names;
    reversed.reverse();
    let b = export(&env, &[&["--format", "docker"], &reversed[..]].concat());
    assert!(a == b, "two exports of the same images differ");
    let es = entries(&a);
    let paths: Vec<&str> = es.iter().map(|e| e.0.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "records sorted by name");
    assert_eq!(
        &paths[paths.len() - 4..],
        ["index.json", "manifest.json", "oci-layout", "repositories"]
    );
    let m = json_of(&es, "manifest.json");
    assert_eq!(m.as_array().unwrap().len(), 2, "{m}: one item per manifest");
    // Each item, read by skopeo as docker-archive:FILE:NAME, has the config's diff_ids.
    let archive = env.path("d.tar");
    fs::write(&archive, &a).unwrap();
    let (_, diff_ids) = config_of(&es, &docker_digest);
    for name in names {
        let v: Value = serde_json::from_str(&sh(Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}:{name}", archive.display()))))
        .unwrap();
        let layers: Vec<String> = v["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(layers, diff_ids, "{name}");
    }
    // repositories: each tag's top layer, as stored.
    let top = m[0]["Layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap();
    let hex = top.rsplit('/').next().unwrap();
    assert_eq!(
        json_of(&es, "repositories"),
        json!({"dockerimg": {"v1": hex}, "example.com/team/app": {"2": hex}, "srcimg": {"base": hex}})
    );
}

#[test]
fn a_docker_export_imports_again_under_the_same_manifest_digests() {
    let env = Env::new();
    store_with_images(&env);
    let before: BTreeMap<String, String> = env.images().into_iter().collect();
    let archive = export(
        &env,
        &[
            "--format",
            "docker",
            "dockerimg:v1",
            "example.com/team/app:2",
            "srcimg:base",
        ],
    );
    let other = Env::new();
    let out = other.run_with_stdin(&["import", "-"], &archive);
    assert!(out.status.success(), "{}", stderr(&out));
    let after: BTreeMap<String, String> = other.images().into_iter().collect();
    let want: BTreeMap<String, String> = [
        ("docker.io/library/dockerimg:v1", "dockerimg:v1"),
        ("example.com/team/app:2", "example.com/team/app:2"),
        ("docker.io/library/srcimg:base", "srcimg:base"),
    ]
    .iter()
    .map(|(new, old)| ((*new).to_owned(), before[*old].clone()))
    .collect();
    assert_eq!(after, want);
}

#[test]
fn gzip_layers_go_out_as_stored_and_load() {
    let env = Env::new();
    store_with_images(&env);
    let archive = export(&env, &["--format", "docker", "srcimg:base"]);
    let es = entries(&archive);
    let index = json_of(&es, "index.json");
    let manifest = json_of(
        &es,
        &blob_path(index["manifests"][0]["digest"].as_str().unwrap()),
    );
    let m = json_of(&es, "manifest.json");
    let layers: Vec<&Value> = manifest["layers"].as_array().unwrap().iter().collect();
    assert!(!layers.is_empty());
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["mediaType"], MEDIA_OCI_LAYER_GZIP);
        let path = blob_path(l["digest"].as_str().unwrap());
        assert_eq!(m[0]["Layers"][i], path.as_str(), "the stored blob, by path");
        assert_eq!(file(&es, &path)[..2], GZIP_MAGIC, "gzip bytes as stored");
    }
    let path = env.path("gz.tar");
    fs::write(&path, &archive).unwrap();
    let got = podman_load(&env.path("podman"), &path);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["docker.io/library/srcimg:base"]
    );
    let v: Value = serde_json::from_str(&sh(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}", path.display()))))
    .unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), layers.len());
}

/// The OCI architecture name of this machine (what export picks without --platform).
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no test platform for {other}"),
    }
}

/// A layout `multi:multi`: an index over umoci's manifest (amd64) and a copy for arm64 (its
/// config says arm64, the same layers). Returns (arch, manifest digest, config digest) each.
fn index_layout(env: &Env, dir: &Path) -> Vec<(String, String, String)> {
    umoci_layout(env, dir);
    let blobs = dir.join("blobs/sha256");
    let read = |d: &str| fs::read(blobs.join(d.trim_start_matches("sha256:"))).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        fs::write(blobs.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let index: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let m_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let m: Value = serde_json::from_slice(&read(&m_digest)).unwrap();
    let mut out = Vec::new();
    let mut listed = Vec::new();
    for arch in ["amd64", "arm64"] {
        let mut config: Value =
            serde_json::from_slice(&read(m["config"]["digest"].as_str().unwrap())).unwrap();
        config["architecture"] = json!(arch);
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_digest = put(&config_bytes);
        let mut m2 = m.clone();
        m2["config"]["digest"] = json!(config_digest);
        m2["config"]["size"] = json!(config_bytes.len());
        let m2_bytes = serde_json::to_vec(&m2).unwrap();
        let m2_digest = put(&m2_bytes);
        listed.push(json!({"mediaType": MEDIA_OCI_MANIFEST, "digest": m2_digest,
            "size": m2_bytes.len(), "platform": {"os": "linux", "architecture": arch}}));
        out.push((arch.to_owned(), m2_digest, config_digest));
    }
    let idx = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": listed}),
    )
    .unwrap();
    let idx_digest = put(&idx);
    let top = json!({"schemaVersion": 2, "manifests": [{"mediaType": MEDIA_OCI_INDEX,
        "digest": idx_digest, "size": idx.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    out
}

#[test]
fn an_index_exports_the_platform_asked_for_else_the_host_s() {
    let env = Env::new();
    let platforms = index_layout(&env, &env.path("multi"));
    env.ok(&["import", env.path("multi").to_str().unwrap()]);
    for (asked, want_arch) in [(Some("linux/arm64"), "arm64"), (None, host_arch())] {
        let mut args = vec!["--format", "docker"];
        if let Some(p) = asked {
            args.extend(["--platform", p]);
        }
        args.push("multi:multi");
        let archive = export(&env, &args);
        let es = entries(&archive);
        let (_, m_digest, config) = platforms.iter().find(|p| p.0 == want_arch).unwrap();
        let m = json_of(&es, "manifest.json");
        assert_eq!(m.as_array().unwrap().len(), 1, "{m}");
        assert_eq!(m[0]["Config"], blob_path(config).as_str(), "{asked:?}");
        assert_eq!(m[0]["RepoTags"], json!(["multi:multi"]));
        let index = json_of(&es, "index.json");
        let listed = index["manifests"][0]["digest"].as_str().unwrap();
        let other = platforms.iter().find(|p| p.0 != want_arch).unwrap();
        if asked.is_some() {
            // The index is left out: the archive is the one platform.
            assert_eq!(listed, m_digest);
            assert!(!es.iter().any(|e| e.0 == blob_path(&other.1)));
        } else {
            assert_eq!(index["manifests"][0]["mediaType"], MEDIA_OCI_INDEX);
            assert!(es.iter().any(|e| e.0 == blob_path(&other.1)));
        }
        let path = env.path("multi.tar");
        fs::write(&path, &archive).unwrap();
        let v: Value = serde_json::from_str(&sh(Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}", path.display()))))
        .unwrap();
        assert_eq!(v["Architecture"], want_arch, "{asked:?}");
    }
    // A platform the index lacks: one line, nothing written.
    let out = env
        .cmd(&[
            "export",
            "--format",
            "docker",
            "--platform",
            "linux/s390x",
            "-o",
        ])
        .arg(env.path("none.tar"))
        .arg("multi:multi")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no manifest for platform linux/s390x"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1);
}

/// `export --oci --format FORMAT dockerimg:v1`: deterministic, OCI media types everywhere, a
/// new manifest digest over the same config and layers; skopeo copies it, layoutfs imports
/// it again (and podman loads the docker format).
fn check_oci_export(env: &Env, format: &str, docker_digest: &str) {
    let archive = export(env, &["--oci", "--format", format, "dockerimg:v1"]);
    assert!(
        archive == export(env, &["--oci", "--format", format, "dockerimg:v1"]),
        "--oci --format {format} is not deterministic"
    );
    let es = entries(&archive);
    let index = json_of(&es, "index.json");
    let d = &index["manifests"][0];
    assert_eq!(d["mediaType"], MEDIA_OCI_MANIFEST);
    let new_digest = d["digest"].as_str().unwrap();
    assert_ne!(new_digest, docker_digest, "a new digest");
    let old = entries(&export(env, &["dockerimg:v1"]));
    let old_m = json_of(&old, &blob_path(docker_digest));
    let new_m = json_of(&es, &blob_path(new_digest));
    assert_eq!(new_m["mediaType"], MEDIA_OCI_MANIFEST);
    assert_eq!(new_m["config"]["mediaType"], MEDIA_OCI_CONFIG);
    assert_eq!(new_m["config"]["digest"], old_m["config"]["digest"]);
    let (old_l, new_l) = (
        old_m["layers"].as_array().unwrap(),
        new_m["layers"].as_array().unwrap(),
    );
    assert_eq!(old_l.len(), new_l.len());
    for (o, n) in old_l.iter().zip(new_l) {
        assert_eq!(n["mediaType"], MEDIA_OCI_LAYER_GZIP);
        assert_eq!((&n["digest"], &n["size"]), (&o["digest"], &o["size"]));
    }
    // Every manifest in the archive is OCI now.
    for (path, bytes) in &es {
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            assert!(
                !v.to_string().contains("application/vnd.docker"),
                "{path} still has a docker media type"
            );
        }
    }
    if format == "docker" {
        // podman loads the converted archive under the docker name.
        let loaded = podman_load(&env.path("podman-oci"), &{
            let p = env.path("conv-load.tar");
            fs::write(&p, &archive).unwrap();
            p
        });
        assert_eq!(
            loaded.keys().collect::<Vec<_>>(),
            ["docker.io/library/dockerimg:v1"]
        );
        let m = json_of(&es, "manifest.json");
        assert_eq!(
            m[0]["Config"],
            old_m["config"]["digest"]
                .as_str()
                .map(blob_path)
                .unwrap()
                .as_str()
        );
    }
    // skopeo copies it (as an OCI archive, tag v1) into an OCI layout, digest kept.
    let path = env.path(&format!("conv-{format}.tar"));
    fs::write(&path, &archive).unwrap();
    let copy = env.path(&format!("copy-{format}"));
    sh(Command::new("skopeo")
        .args(["copy", "--preserve-digests"])
        .arg(format!("oci-archive:{}:v1", path.display()))
        .arg(format!("oci:{}:v1", copy.display())));
    let copied: Value =
        serde_json::from_slice(&fs::read(copy.join("index.json")).unwrap()).unwrap();
    assert_eq!(copied["manifests"][0]["digest"], new_digest);
    // And layoutfs imports it again, under the new digest.
    let other = Env::new();
    let out = other.run_with_stdin(&["import", "--name", "conv", "-"], &archive);
    assert!(out.status.success(), "{}", stderr(&out));
    let digests: BTreeSet<String> = other.images().into_iter().map(|i| i.1).collect();
    assert_eq!(digests, [new_digest.to_owned()].into());
}

#[test]
fn export_oci_converts_a_docker_image_to_oci_media_types_that_skopeo_copies_and_layoutfs_imports() {
    require("skopeo");
    let env = Env::new();
    let docker_digest = store_with_images(&env);
    let store_blobs = |env: &Env| -> BTreeSet<String> {
        fs::read_dir(env.store.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let blobs_before = store_blobs(&env);
    for format in ["oci", "docker"] {
        check_oci_export(&env, format, &docker_digest);
    }
    // The converted manifest went into the store under the export's lease; nothing registers
    // it, so gc removes it once the export is over, and the images stay whole.
    let new_blobs: Vec<String> = store_blobs(&env)
        .difference(&blobs_before)
        .cloned()
        .collect();
    assert_eq!(new_blobs.len(), 1, "{new_blobs:?}");
    env.ok(&["gc", "--grace", "0s"]);
    assert_eq!(store_blobs(&env), blobs_before);
    common::fsck_clean(&env);
    // An OCI image has nothing to convert: the same bytes as without --oci.
    assert!(export(&env, &["--oci", "srcimg:base"]) == export(&env, &["srcimg:base"]));
}

#[test]
fn a_digest_only_name_has_no_repo_tags_and_an_archive_without_tags_no_repositories() {
    let env = Env::new();
    let docker_digest = store_with_images(&env);
    let pinned = format!("pinned@{docker_digest}");
    env.ok(&["tag", "dockerimg:v1", &pinned]);
    let archive = export(&env, &["--format", "docker", &pinned]);
    let es = entries(&archive);
    assert!(!es.iter().any(|e| e.0 == "repositories"));
    assert_eq!(json_of(&es, "manifest.json")[0]["RepoTags"], json!([]));
    let d = &json_of(&es, "index.json")["manifests"][0];
    assert_eq!(
        d["annotations"],
        json!({"io.containerd.image.name": format!("docker.io/library/{pinned}")})
    );
    let other = Env::new();
    let out = other.run_with_stdin(&["import", "-"], &archive);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        other.images(),
        [(format!("docker.io/library/{pinned}"), docker_digest.clone())]
    );
    // Under --oci the pinned name follows its image to the new digest.
    let archive = export(&env, &["--oci", "--format", "docker", &pinned]);
    let d = json_of(&entries(&archive), "index.json")["manifests"][0].clone();
    let new_digest = d["digest"].as_str().unwrap();
    assert_eq!(
        d["annotations"]["io.containerd.image.name"],
        format!("docker.io/library/pinned@{new_digest}").as_str()
    );
}

#[test]
fn a_manifest_json_over_skopeo_s_mebibyte_is_refused_and_nothing_is_written() {
    let env = Env::new();
    let mut b = common::gen::LayoutBuilder::new(&env.path("many"));
    let m = b.small_image("t0", 1, 100, 1);
    for i in 1..20_000 {
        b.tag(&m, Some(&format!("t{i}")));
    }
    b.write_index();
    let repo = "registry.example.com/a/rather/long/repository/name";
    env.ok(&["import", "--name", repo, env.path("many").to_str().unwrap()]);
    let out_path = env.path("big.tar");
    for format in [&["--format", "docker"][..], &["--docker-manifest"][..]] {
        let out = env
            .cmd(
                &[
                    &["export", "-o", out_path.to_str().unwrap()],
                    format,
                    &[repo],
                ]
                .concat(),
            )
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("manifest.json would be") && err.contains("1048576"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!out_path.exists(), "nothing written");
    }
}

/// A docker manifest list over `dk`'s docker manifest, listed for this host and for
/// linux/s390x, imported as `dlist:v1`. Returns the list's digest.
fn docker_list(env: &Env, docker_digest: &str) -> String {
    let dk = env.path("dk");
    let blobs = dk.join("blobs/sha256");
    let manifest = fs::read(blobs.join(docker_digest.trim_start_matches("sha256:"))).unwrap();
    let entry = |arch: &str| {
        json!({"mediaType": MEDIA_DOCKER_MANIFEST, "digest": docker_digest,
            "size": manifest.len(), "platform": {"architecture": arch, "os": "linux"}})
    };
    let list = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": MEDIA_DOCKER_LIST,
        "manifests": [entry(host_arch()), entry("s390x")]}))
    .unwrap();
    let hex = sha256_hex(&list);
    fs::write(blobs.join(&hex), &list).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": MEDIA_DOCKER_LIST,
        "digest": format!("sha256:{hex}"), "size": list.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    fs::write(dk.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    env.ok(&["import", "--name", "dlist", dk.to_str().unwrap()]);
    format!("sha256:{hex}")
}

#[test]
fn export_oci_turns_a_docker_manifest_list_into_an_oci_index_keeping_its_platforms() {
    let env = Env::new();
    let docker_digest = store_with_images(&env);
    let list_digest = docker_list(&env, &docker_digest);
    let archive = export(&env, &["--oci", "--format", "docker", "dlist:v1"]);
    let es = entries(&archive);
    let listed = &json_of(&es, "index.json")["manifests"][0];
    assert_eq!(listed["mediaType"], MEDIA_OCI_INDEX);
    let index_digest = listed["digest"].as_str().unwrap().to_owned();
    assert_ne!(index_digest, list_digest);
    let index = json_of(&es, &blob_path(&index_digest));
    assert_eq!(index["mediaType"], MEDIA_OCI_INDEX);
    let kids = index["manifests"].as_array().unwrap();
    let platforms: Vec<&str> = kids
        .iter()
        .map(|k| k["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, [host_arch(), "s390x"]);
    for k in kids {
        assert_eq!(k["mediaType"], MEDIA_OCI_MANIFEST);
        assert_ne!(k["digest"], docker_digest.as_str());
        let m = json_of(&es, &blob_path(k["digest"].as_str().unwrap()));
        assert_eq!(m["config"]["mediaType"], MEDIA_OCI_CONFIG);
    }
    // The same converted manifest, whichever platform is asked for.
    let one = export(&env, &["--oci", "--platform", "linux/s390x", "dlist:v1"]);
    let one_listed = &json_of(&entries(&one), "index.json")["manifests"][0];
    assert_eq!(one_listed["digest"], kids[1]["digest"]);
    assert_eq!(one_listed["platform"]["architecture"], "s390x");
    // layoutfs imports the converted index again, every platform of it.
    let other = Env::new();
    let out = other.run_with_stdin(&["import", "-"], &archive);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        other.images(),
        [("docker.io/library/dlist:v1".to_owned(), index_digest)]
    );
}
