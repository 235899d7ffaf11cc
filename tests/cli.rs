//! The binary as a user runs it: import from directories, archives and standard input, export,
//! images, repositories (kept ones with no image too), rm and tag; and every bad input of the import table, each failing with one line that
//! names the file or digest while the store's images stay as they were.

mod common;

use std::fs;
use std::io::Read;

use common::gen::{self, LayoutBuilder};
use common::{stderr, tar_dir, Env};
use layoutfs::content::Change;
use layoutfs::digest::Algorithm;
use layoutfs::oci::{self, ImageIndex};
use layoutfs::store::Store;

/// A store holding one image `keep:1`, and a second layout `src` with image `src:1.0`.
fn env_with_image() -> (Env, LayoutBuilder) {
    let env = Env::new();
    let mut keep = LayoutBuilder::new(&env.path("keep"));
    keep.small_image("1", 1, 1000, 1);
    env.ok(&["import", env.path("keep").to_str().unwrap()]);
    let mut src = LayoutBuilder::new(&env.path("src"));
    src.small_image("1.0", 2, 70_000, 2);
    (env, src)
}

fn tar_entries(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    let mut a = tar::Archive::new(archive);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().mode().unwrap(),
                body,
            )
        })
        .collect()
}

#[test]
fn import_export_round_trip_from_dir_archive_and_stdin() {
    let (env, src) = env_with_image();
    let dir = src.dir.to_str().unwrap().to_owned();
    assert_eq!(env.ok(&["import", &dir]), "src:1.0\n");
    let out = env.path("out.tar");
    env.ok(&["export", "-o", out.to_str().unwrap(), "src:1.0"]);
    let archive = fs::read(&out).unwrap();
    let entries = tar_entries(&archive);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "records are sorted by name");
    assert_eq!(names[..2], ["blobs/", "blobs/sha256/"]);
    assert_eq!(names[names.len() - 2..], ["index.json", "oci-layout"]);
    // Every blob of the source's image is there once with its bytes, read-only.
    let source = common::tree(&src.dir);
    for (path, mode, body) in &entries {
        if path.starts_with("blobs/sha256/") && path.len() > 13 {
            assert_eq!(&source[path.as_str()], body, "{path}");
            assert_eq!(*mode, 0o444);
        }
    }
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.0.len() > 13 && e.0.starts_with("blobs/"))
            .count(),
        4
    );
    let idx = ImageIndex::parse(
        "index.json",
        &entries.iter().find(|e| e.0 == "index.json").unwrap().2,
    )
    .unwrap();
    assert_eq!(
        idx.manifests[0].annotations[oci::ANNOTATION_REF_NAME],
        "1.0"
    );
    assert_eq!(
        idx.manifests[0].annotations[oci::ANNOTATION_IMAGE_NAME],
        "src:1.0"
    );

    // The same images give the same bytes, to a file and through a pipe alike.
    env.ok(&[
        "export",
        "-o",
        env.path("again.tar").to_str().unwrap(),
        "src",
    ]);
    assert_eq!(fs::read(env.path("again.tar")).unwrap(), archive);
    let piped = env.cmd(&["export", "src:1.0"]).output().unwrap();
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert_eq!(piped.stdout, archive);
    let verified = env
        .cmd(&["export", "--verify", "src:1.0"])
        .output()
        .unwrap();
    assert_eq!(verified.stdout, archive);

    // A second store imports the archive from a file, from stdin, gzip'd and zstd'd.
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &archive).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&archive[..], 1).unwrap();
    for (label, bytes) in [("tar", &archive), ("gzip", &gz), ("zstd", &zst)] {
        let other = Env::new();
        let o = other.run_with_stdin(&["import", "-"], bytes);
        assert!(o.status.success(), "{label}: {}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "src:1.0\n", "{label}");
        let f = other.path(&format!("x.{label}"));
        fs::write(&f, bytes).unwrap();
        let again = Env {
            tmp: tempfile::tempdir().unwrap(),
            store: other.path("store2"),
        };
        assert_eq!(
            again.ok(&["import", f.to_str().unwrap()]),
            "src:1.0\n",
            "{label}"
        );
        let o2 = again.cmd(&["export", "src:1.0"]).output().unwrap();
        assert_eq!(
            o2.stdout, archive,
            "{label}: export after import is identical"
        );
    }
}

#[test]
fn names_come_from_annotations_name_option_and_file_name() {
    let env = Env::new();
    let mut b = LayoutBuilder::new(&env.path("busybox-layout"));
    let layer = b.add_random_layer(100, 1);
    let m1 = b.add_manifest(std::slice::from_ref(&layer), "amd64");
    let m2 = b.add_manifest(&[], "amd64");
    let mut full = m1.clone();
    full.annotations.insert(
        oci::ANNOTATION_IMAGE_NAME.into(),
        "docker.io/library/busybox:latest".into(),
    );
    b.tag(&full, Some("latest"))
        .tag(&m1, Some("1.36"))
        .tag(&m2, None);
    b.write_index();
    let dir = b.dir.to_str().unwrap();
    let out = env.ok(&["import", dir]);
    assert_eq!(
        out,
        format!(
            "busybox-layout:1.36\nbusybox-layout@{}\ndocker.io/library/busybox:latest\n",
            m2.digest
        )
    );
    let out = env.ok(&["import", "--name", "mine", dir]);
    assert!(out.contains("mine:1.36\n"), "{out}");
    let bad = env.run(&["import", "--name", "Mine", dir]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--name \"Mine\""), "{}", stderr(&bad));
    // Standard input has no file name: --name is needed for tag-only images.
    tar_dir(&b.dir, &env.path("a.tar"));
    let o = env.run_with_stdin(&["import", "-"], &fs::read(env.path("a.tar")).unwrap());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("pass --name"), "{}", stderr(&o));
}

#[test]
fn images_tag_rm_and_export_selection() {
    let (env, src) = env_with_image();
    env.ok(&["import", src.dir.to_str().unwrap()]);
    env.ok(&["tag", "src:1.0", "registry.local:5000/team/src:2"]);
    let imgs = env.images();
    assert_eq!(
        imgs.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(),
        ["keep:1", "registry.local:5000/team/src:2", "src:1.0"]
    );
    assert_eq!(imgs[1].1, imgs[2].1);
    let table = env.ok(&["images"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("src:1.0"), "{table}");
    // Two names of one image: both listed, the shared blobs once.
    let out = env
        .cmd(&[
            "export",
            "src:1.0",
            "registry.local:5000/team/src:2",
            "keep",
        ])
        .output()
        .unwrap();
    let entries = tar_entries(&out.stdout);
    let idx = ImageIndex::parse(
        "index.json",
        &entries.iter().find(|e| e.0 == "index.json").unwrap().2,
    )
    .unwrap();
    assert_eq!(idx.manifests.len(), 3);
    let blob_paths: Vec<_> = entries
        .iter()
        .filter(|e| e.0.starts_with("blobs/sha256/") && e.0.len() > 13)
        .map(|e| &e.0)
        .collect();
    let unique: std::collections::BTreeSet<_> = blob_paths.iter().collect();
    assert_eq!(blob_paths.len(), unique.len());
    for missing in ["nothere:1", "nothere"] {
        let o = env.run(&["export", "-o", env.path("x.tar").to_str().unwrap(), missing]);
        assert!(!o.status.success());
        assert_eq!(stderr(&o), format!("layoutfs: no such image: {missing}"));
    }
    assert_eq!(env.ok(&["rm", "src"]), "src:1.0\n");
    let o = env.run(&["rm", "keep:1", "nothere:1"]);
    assert!(!o.status.success());
    assert_eq!(env.images().len(), 2, "a failed rm removes nothing");
}

#[test]
fn multi_platform_index_imports_whole_and_exports_one_platform() {
    let env = Env::new();
    let mut b = LayoutBuilder::new(&env.path("multi"));
    let l1 = b.add_random_layer(5000, 1);
    let l2 = b.add_random_layer(5000, 2);
    let amd = b.add_manifest(&[l1], "amd64");
    let arm = b.add_manifest(&[l2], "arm64");
    let idx = b.add_index(vec![amd.clone(), arm.clone()]);
    b.tag(&idx, Some("latest"));
    b.write_index();
    env.ok(&["import", b.dir.to_str().unwrap()]);
    for (platform, want) in [("linux/arm64", &arm), ("linux/amd64", &amd)] {
        let out = env
            .cmd(&["export", "--platform", platform, "multi:latest"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let entries = tar_entries(&out.stdout);
        let i = ImageIndex::parse(
            "index.json",
            &entries.iter().find(|e| e.0 == "index.json").unwrap().2,
        )
        .unwrap();
        assert_eq!(i.manifests[0].digest, want.digest);
        assert_eq!(
            entries
                .iter()
                .filter(|e| e.0.len() > 13 && e.0.starts_with("blobs/sha256/"))
                .count(),
            3
        );
    }
    let o = env.run(&[
        "export",
        "--platform",
        "linux/s390x",
        "-o",
        "/dev/null",
        "multi:latest",
    ]);
    assert!(
        stderr(&o).contains("no manifest for platform linux/s390x"),
        "{}",
        stderr(&o)
    );
    // Docker's manifest.json names the config and layers of the host platform.
    let out = env
        .cmd(&["export", "--docker-manifest", "multi:latest"])
        .output()
        .unwrap();
    let entries = tar_entries(&out.stdout);
    let m: serde_json::Value =
        serde_json::from_slice(&entries.iter().find(|e| e.0 == "manifest.json").unwrap().2)
            .unwrap();
    assert_eq!(m[0]["RepoTags"][0], "multi:latest");
    assert!(m[0]["Config"]
        .as_str()
        .unwrap()
        .starts_with("blobs/sha256/"));
}

#[test]
fn sha512_layouts_round_trip_with_long_tar_names() {
    let env = Env::new();
    let mut b = LayoutBuilder::with_algorithm(&env.path("s512"), Algorithm::Sha512);
    b.small_image("v1", 1, 3000, 9);
    env.ok(&["import", b.dir.to_str().unwrap()]);
    let out = env.cmd(&["export", "s512:v1"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let entries = tar_entries(&out.stdout);
    let source = common::tree(&b.dir);
    let blobs: Vec<_> = entries
        .iter()
        .filter(|e| e.0.starts_with("blobs/sha512/") && e.0.len() > 13)
        .collect();
    assert_eq!(blobs.len(), 3);
    for (path, _, body) in blobs {
        assert_eq!(&source[path.as_str()], body);
    }
    let other = Env::new();
    let o = other.run_with_stdin(&["import", "--name", "s512", "-"], &out.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A bad input: how to spoil a good layout, and what the one-line error must contain when the
/// layout is imported as a directory and as an archive. An archive is streamed, so a blob's
/// bytes are checked against the digest its path names before any descriptor is read: a blob
/// of the wrong length shows there as a digest mismatch.
struct Bad {
    name: &'static str,
    spoil: fn(&LayoutBuilder) -> (String, String),
}

fn same(s: String) -> (String, String) {
    (s.clone(), s)
}

fn manifest_desc(b: &LayoutBuilder) -> oci::Descriptor {
    ImageIndex::parse("index.json", &fs::read(b.dir.join("index.json")).unwrap())
        .unwrap()
        .manifests[0]
        .clone()
}

fn largest_layer(b: &LayoutBuilder) -> (std::path::PathBuf, String) {
    let m = manifest_desc(b);
    let bytes = fs::read(b.blob_path(&m)).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let d = v["layers"][0]["digest"].as_str().unwrap().to_owned();
    (b.dir.join(format!("blobs/sha256/{}", &d[7..])), d)
}

/// Rewrites index.json's first descriptor field `key` as the raw JSON `value`.
fn set_index_field(b: &LayoutBuilder, key: &str, value: serde_json::Value) {
    let mut v: serde_json::Value =
        serde_json::from_slice(&fs::read(b.dir.join("index.json")).unwrap()).unwrap();
    v["manifests"][0][key] = value;
    fs::write(b.dir.join("index.json"), serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Points index.json at a new manifest blob holding `bytes`.
fn replace_manifest(b: &LayoutBuilder, bytes: &[u8]) -> String {
    let d = b.add_blob(oci::MEDIA_OCI_MANIFEST, bytes);
    set_index_field(b, "digest", d.digest.to_string().into());
    set_index_field(b, "size", d.size.into());
    d.digest.to_string()
}

const BAD_INPUTS: &[Bad] = &[
    Bad {
        name: "blob bytes do not match its name",
        spoil: |b| {
            let (p, d) = largest_layer(b);
            let mut bytes = fs::read(&p).unwrap();
            bytes[10] ^= 1;
            fs::write(&p, bytes).unwrap();
            same(format!("blob {d}: content does not match its digest"))
        },
    },
    Bad {
        name: "blob one byte short",
        spoil: |b| {
            let (p, d) = largest_layer(b);
            let mut bytes = fs::read(&p).unwrap();
            bytes.pop();
            fs::write(&p, bytes).unwrap();
            (
                format!("blob {d}: size is 69999 bytes, expected 70000"),
                format!("blob {d}: content does not match its digest"),
            )
        },
    },
    Bad {
        name: "blob one byte long",
        spoil: |b| {
            let (p, d) = largest_layer(b);
            let mut bytes = fs::read(&p).unwrap();
            bytes.push(0);
            fs::write(&p, bytes).unwrap();
            (
                format!("blob {d}: size is 70001 bytes, expected 70000"),
                format!("blob {d}: content does not match its digest"),
            )
        },
    },
    Bad {
        name: "descriptor names a missing blob",
        spoil: |b| {
            let (p, d) = largest_layer(b);
            fs::remove_file(p).unwrap();
            same(format!("blob {d}: missing"))
        },
    },
    Bad {
        name: "invalid JSON in index.json",
        spoil: |b| {
            fs::write(
                b.dir.join("index.json"),
                b"{\"schemaVersion\":2,\"manifests\":[",
            )
            .unwrap();
            same("index.json: invalid JSON".into())
        },
    },
    Bad {
        name: "invalid JSON in a manifest",
        spoil: |b| {
            let d = replace_manifest(b, b"{\"schemaVersion\":2,\"config\":{");
            same(format!("blob {d}: invalid JSON"))
        },
    },
    Bad {
        name: "index.json over the cap",
        spoil: |b| {
            let mut bytes = fs::read(b.dir.join("index.json")).unwrap();
            bytes.resize(oci::MAX_INDEX_JSON_SIZE as usize + 10, b' ');
            fs::write(b.dir.join("index.json"), bytes).unwrap();
            same(format!(
                "index.json: {} bytes is larger than the {}-byte limit",
                oci::MAX_INDEX_JSON_SIZE + 10,
                oci::MAX_INDEX_JSON_SIZE
            ))
        },
    },
    Bad {
        name: "manifest over the cap",
        spoil: |b| {
            let mut bytes = fs::read(b.blob_path(&manifest_desc(b))).unwrap();
            bytes.resize(oci::MAX_JSON_SIZE as usize + 1, b' ');
            let d = replace_manifest(b, &bytes);
            same(format!(
                "blob {d}: 4194305 bytes is larger than the 4194304-byte limit"
            ))
        },
    },
    Bad {
        name: "negative size",
        spoil: |b| {
            set_index_field(b, "size", (-1).into());
            same("index.json: invalid JSON: negative size -1".into())
        },
    },
    Bad {
        name: "oci-layout missing",
        spoil: |b| {
            fs::remove_file(b.dir.join("oci-layout")).unwrap();
            same("oci-layout".into())
        },
    },
    Bad {
        name: "oci-layout of another version",
        spoil: |b| {
            fs::write(
                b.dir.join("oci-layout"),
                br#"{"imageLayoutVersion":"1.1.0"}"#,
            )
            .unwrap();
            same("oci-layout: imageLayoutVersion \"1.1.0\" is not supported".into())
        },
    },
    Bad {
        name: "digest of an unknown algorithm",
        spoil: |b| {
            set_index_field(b, "digest", format!("sha384:{}", "a".repeat(96)).into());
            same("unsupported algorithm".into())
        },
    },
    Bad {
        name: "digest in uppercase hex",
        spoil: |b| {
            let d = manifest_desc(b)
                .digest
                .to_string()
                .to_uppercase()
                .replace("SHA256", "sha256");
            set_index_field(b, "digest", d.into());
            same("hex must be lowercase".into())
        },
    },
    Bad {
        name: "digest of the wrong length",
        spoil: |b| {
            set_index_field(b, "digest", format!("sha256:{}", "a".repeat(63)).into());
            same("sha256 wants 64 hex characters".into())
        },
    },
    Bad {
        name: "digest holding a path",
        spoil: |b| {
            set_index_field(
                b,
                "digest",
                format!("sha256:../../{}", "a".repeat(58)).into(),
            );
            same("invalid digest".into())
        },
    },
    Bad {
        name: "manifest with a media type of another kind",
        spoil: |b| {
            let d = replace_manifest(
                b,
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
                    oci::MEDIA_OCI_INDEX
                )
                .as_bytes(),
            );
            same(format!("blob {d}: mediaType"))
        },
    },
];

#[test]
fn bad_layouts_fail_with_one_line_and_change_nothing() {
    for as_archive in [false, true] {
        for case in BAD_INPUTS {
            let (env, src) = env_with_image();
            let (want_dir, want_archive) = (case.spoil)(&src);
            let want = if as_archive { want_archive } else { want_dir };
            let before = env.images();
            let source = if as_archive {
                let a = env.path("spoiled.tar");
                tar_dir(&src.dir, &a);
                a
            } else {
                src.dir.clone()
            };
            let o = env.run(&["import", "--name", "src", source.to_str().unwrap()]);
            let err = stderr(&o);
            assert!(!o.status.success(), "{}: import succeeded", case.name);
            assert_eq!(err.lines().count(), 1, "{}: {err}", case.name);
            assert!(err.starts_with("layoutfs: "), "{}: {err}", case.name);
            assert!(
                err.contains(&want),
                "{} (archive {as_archive}): {err:?} lacks {want:?}",
                case.name
            );
            assert_eq!(env.images(), before, "{}", case.name);
            // Nothing is left half-written.
            assert_eq!(
                fs::read_dir(env.store.join("ingest")).unwrap().count(),
                0,
                "{}",
                case.name
            );
        }
    }
}

/// Writes a raw tar header for `path` (bypassing the tar crate's own path checks).
fn raw_entry(out: &mut Vec<u8>, path: &str, kind: tar::EntryType, body: &[u8], link: &str) {
    let mut h = tar::Header::new_ustar();
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    if !link.is_empty() {
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

#[test]
fn hostile_archives_are_refused() {
    let (env, src) = env_with_image();
    tar_dir(&src.dir, &env.path("good.tar"));
    let good = fs::read(env.path("good.tar")).unwrap();
    let body = good[..good.len() - 1024].to_vec(); // without the end-of-archive blocks
    let hex = "a".repeat(64);
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "truncated",
            good[..good.len() / 2 + 100].to_vec(),
            "truncated or corrupt tar".into(),
        ),
        (
            "cut at an entry boundary",
            good[..good.len() / 2].to_vec(),
            "ends without its end-of-archive blocks".into(),
        ),
        (
            "not a tar",
            b"hello world".repeat(100),
            "not a tar archive".into(),
        ),
        (
            "dot-dot",
            {
                let mut v = body.clone();
                raw_entry(&mut v, "../evil", tar::EntryType::Regular, b"x", "");
                v
            },
            "'..' is refused".into(),
        ),
        (
            "absolute",
            {
                let mut v = body.clone();
                raw_entry(&mut v, "/etc/evil", tar::EntryType::Regular, b"x", "");
                v
            },
            "absolute paths are refused".into(),
        ),
        (
            "symlink",
            {
                let mut v = body.clone();
                raw_entry(
                    &mut v,
                    &format!("blobs/sha256/{hex}"),
                    tar::EntryType::Symlink,
                    b"",
                    "/etc/passwd",
                );
                v
            },
            "symbolic links are refused".into(),
        ),
        (
            "hard link",
            {
                let mut v = body.clone();
                raw_entry(
                    &mut v,
                    &format!("blobs/sha256/{hex}"),
                    tar::EntryType::Link,
                    b"",
                    "oci-layout",
                );
                v
            },
            "hard links are refused".into(),
        ),
        (
            "sha384 blob",
            {
                let mut v = body.clone();
                raw_entry(
                    &mut v,
                    &format!("blobs/sha384/{hex}"),
                    tar::EntryType::Regular,
                    b"x",
                    "",
                );
                v
            },
            "unsupported algorithm".into(),
        ),
        (
            "uppercase blob",
            {
                let mut v = body.clone();
                raw_entry(
                    &mut v,
                    &format!("blobs/sha256/{}", "A".repeat(64)),
                    tar::EntryType::Regular,
                    b"x",
                    "",
                );
                v
            },
            "hex must be lowercase".into(),
        ),
        (
            "wrong blob",
            {
                let mut v = body.clone();
                raw_entry(
                    &mut v,
                    &format!("blobs/sha256/{hex}"),
                    tar::EntryType::Regular,
                    b"x",
                    "",
                );
                v
            },
            format!("blob sha256:{hex}: content does not match"),
        ),
    ];
    for (name, bytes, want) in cases {
        let before = env.images();
        let o = env.run_with_stdin(&["import", "--name", "src", "-"], &bytes);
        let err = stderr(&o);
        assert!(!o.status.success(), "{name}: import succeeded");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.contains(&want), "{name}: {err:?} lacks {want:?}");
        assert_eq!(env.images(), before, "{name}");
    }
    // The good archive still imports after all that.
    assert_eq!(
        String::from_utf8_lossy(
            &env.run_with_stdin(&["import", "--name", "src", "-"], &good)
                .stdout
        ),
        "src:1.0\n"
    );
    assert!(gen::MEDIA_LAYER.contains("layer"));
}

#[test]
fn symlinked_blobs_in_a_directory_are_refused() {
    let (env, src) = env_with_image();
    let (p, _) = largest_layer(&src);
    let moved = env.path("elsewhere");
    fs::rename(&p, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &p).unwrap();
    let o = env.run(&["import", src.dir.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("symbolic links are refused"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_wrong_copy_of_a_blob_the_store_has_is_never_read() {
    // As containerd's importer: content already in the store is not written again, so an
    // archive's damaged copy of it neither fails the import nor replaces the verified blob.
    let (env, src) = env_with_image();
    let dir = src.dir.to_str().unwrap().to_owned();
    env.ok(&["import", &dir]);
    let export = || {
        let out = env.run(&["export", "src:1.0"]);
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    let before = export();
    let (layer, _) = largest_layer(&src);
    let mut bytes = fs::read(&layer).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&layer, &bytes).unwrap();
    let archive = env.path("damaged.tar");
    tar_dir(&src.dir, &archive);
    for source in [&dir, &archive.to_str().unwrap().to_owned()] {
        assert_eq!(env.ok(&["import", "--name", "src", source]), "src:1.0\n");
        assert!(export() == before, "{source}");
    }
    // Into a store without it, the same copy fails and registers nothing.
    let fresh = Env::new();
    let out = fresh.run(&["import", "--name", "src", &dir]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("content does not match its digest"),
        "{}",
        stderr(&out)
    );
    assert!(fresh.images().is_empty());
}

/// Keeps `repos` in the store's records, as a mkdir in the mount does (nothing in the command
/// line makes a kept repository).
fn keep(env: &Env, repos: &[&str]) {
    let store = Store::open(&env.store).unwrap();
    let keep: Vec<String> = repos.iter().map(|r| (*r).to_owned()).collect();
    store
        .records()
        .apply(&Change {
            keep: &keep,
            ..Change::default()
        })
        .unwrap();
}

/// `layoutfs repositories --format json` as (name, images, kept).
fn repositories(env: &Env) -> Vec<(String, u64, bool)> {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["repositories", "--format", "json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["images"].as_u64().unwrap(),
                r["kept"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn repo(name: &str, images: u64, kept: bool) -> (String, u64, bool) {
    (name.to_owned(), images, kept)
}

#[test]
fn repositories_lists_kept_ones_with_no_image_and_images_lists_images_only() {
    let (env, src) = env_with_image();
    env.ok(&["import", src.dir.to_str().unwrap()]);
    env.ok(&["tag", "src:1.0", "src:2"]);
    let images_before = (env.images(), env.ok(&["images"]));
    keep(&env, &["src", "localhost:5000/team/empty", "empty"]);
    assert_eq!(
        env.ok(&["repositories"]),
        "REPOSITORY                 IMAGES  KEPT\n\
         empty                           0  yes\n\
         keep                            1  no\n\
         localhost:5000/team/empty       0  yes\n\
         src                             2  yes\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["repos", "--format", "json"])).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"name": "empty", "images": 0, "kept": true},
            {"name": "keep", "images": 1, "kept": false},
            {"name": "localhost:5000/team/empty", "images": 0, "kept": true},
            {"name": "src", "images": 2, "kept": true},
        ])
    );
    // `images` lists images, as before: a repository with none is no image.
    assert_eq!((env.images(), env.ok(&["images"])), images_before);
    // An empty store lists the header alone.
    let empty = Env::new();
    assert_eq!(empty.ok(&["repositories"]), "REPOSITORY  IMAGES  KEPT\n");
}

#[test]
fn rm_of_a_repository_removes_it_kept_or_not_and_rm_of_its_last_image_leaves_it_kept() {
    let (env, src) = env_with_image();
    let dir = src.dir.to_str().unwrap().to_owned();
    env.ok(&["import", &dir]);
    env.ok(&["tag", "src:1.0", "src:2"]);
    keep(&env, &["src", "empty", "other"]);
    // The last images of a kept repository go, the repository stays.
    assert_eq!(env.ok(&["rm", "src:1.0", "src:2"]), "src:1.0\nsrc:2\n");
    assert!(repositories(&env).contains(&repo("src", 0, true)));
    // A name that is neither an image nor a repository fails the whole rm, in one line.
    for refs in [
        &["nothere"][..],
        &["empty", "nothere"],
        &["empty", "keep:2"],
    ] {
        let before = (repositories(&env), env.images());
        let mut args = vec!["rm"];
        args.extend_from_slice(refs);
        let o = env.run(&args);
        assert!(!o.status.success(), "{refs:?}");
        let missing = refs[refs.len() - 1];
        assert_eq!(stderr(&o), format!("layoutfs: no such image: {missing}"));
        assert_eq!((repositories(&env), env.images()), before, "{refs:?}");
    }
    // A kept repository with no image goes by its name; one with images goes with them,
    // named once however often it is given; one not kept goes with its images as before.
    assert_eq!(env.ok(&["rm", "empty", "src", "empty"]), "empty\nsrc\n");
    env.ok(&["import", &dir]);
    assert_eq!(
        env.ok(&["rm", "other", "keep", "src"]),
        "keep:1\nsrc:1.0\nother\n"
    );
    assert_eq!(repositories(&env), []);
    assert_eq!(env.images(), []);
    // What is gone is not found again.
    let o = env.run(&["rm", "src"]);
    assert_eq!(stderr(&o), "layoutfs: no such image: src");
}
