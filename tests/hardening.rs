//! Findings of the adversarial review (issue 11) that concern names, closures and archives,
//! each driven through the binary: a name pinned to a digest naming other content, a manifest
//! reached under two media types, an `index.json` too large to read back, blobs no image
//! reaches, a second `oci-layout`, and GNU sparse entries.

mod common;

use std::collections::BTreeSet;
use std::fs;

use common::gen::{LayoutBuilder, MEDIA_LAYER};
use common::{stderr, tar_dir, Env};
use layoutfs::digest::Digest;
use layoutfs::oci::{self, Descriptor, ImageIndex, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME};

/// The blob files of a store, as digests.
fn store_blobs(env: &Env) -> BTreeSet<String> {
    let dir = env.store.join("blobs/sha256");
    fs::read_dir(&dir)
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect()
}

/// The blob paths of an exported archive.
fn archive_blobs(archive: &[u8]) -> BTreeSet<String> {
    tar::Archive::new(archive)
        .entries()
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path().unwrap().to_string_lossy().into_owned();
            p.strip_prefix("blobs/sha256/")
                .filter(|h| !h.is_empty())
                .map(|h| format!("sha256:{h}"))
        })
        .collect()
}

fn write_index(b: &LayoutBuilder, manifests: Vec<Descriptor>) {
    fs::write(
        b.dir.join("index.json"),
        ImageIndex::new(manifests).to_bytes(),
    )
    .unwrap();
}

fn annotated(d: &Descriptor, key: &str, value: &str) -> Descriptor {
    let mut d = d.clone();
    d.platform = None;
    d.annotations.insert(key.into(), value.into());
    d
}

#[test]
fn a_name_with_a_digest_names_exactly_that_content() {
    let env = Env::new();
    let mut first = LayoutBuilder::new(&env.path("a"));
    let x = first.small_image("unused", 1, 1000, 1);
    first.index.clear();
    first.tag(&x, None).write_index();
    let dir = first.dir.to_str().unwrap().to_owned();
    assert_eq!(env.ok(&["import", &dir]), format!("a@{}\n", x.digest));
    let pinned = format!("a@{}", x.digest);
    let before = env.images();

    // Another image Y whose descriptor claims X's pinned name, through either annotation.
    let zero = Digest::from_parts("sha256", &"0".repeat(64)).unwrap();
    let other = LayoutBuilder::new(&env.path("y"));
    let y = other.add_manifest(&[other.add_random_layer(900, 2)], "amd64");
    let spoofs = [
        (ANNOTATION_IMAGE_NAME, pinned.clone()),
        (ANNOTATION_REF_NAME, pinned.clone()),
        (ANNOTATION_REF_NAME, format!("a@{zero}")),
        (ANNOTATION_IMAGE_NAME, format!("c@{zero}")),
    ];
    for (key, name) in spoofs {
        write_index(&other, vec![annotated(&y, key, &name)]);
        for source in ["dir", "tar"] {
            let arg = match source {
                "dir" => other.dir.clone(),
                _ => {
                    let t = env.path("y.tar");
                    tar_dir(&other.dir, &t);
                    t
                }
            };
            let out = env.run(&["import", arg.to_str().unwrap()]);
            let err = stderr(&out);
            assert!(
                !out.status.success(),
                "{key}={name} from a {source} was accepted"
            );
            assert!(
                err.contains("index.json") && err.contains("pinned") && err.contains(&name),
                "{err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert_eq!(env.images(), before, "{key}={name} from a {source}");
        }
    }
    // The same digest under another media type: it would change what gc keeps.
    let b2 = LayoutBuilder::new(&env.path("rekind"));
    fs::copy(first.blob_path(&x), b2.blob_path(&x)).unwrap();
    let mut leaf = annotated(&x, ANNOTATION_IMAGE_NAME, &pinned);
    leaf.media_type = "application/octet-stream".into();
    write_index(&b2, vec![leaf.clone()]);
    let out = env.run(&["import", b2.dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refusing to make it application/octet-stream"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.images(), before);
    // One name twice in one index.json, under two media types.
    let mut again = annotated(&x, ANNOTATION_IMAGE_NAME, "r/b:1");
    again.media_type = oci::MEDIA_OCI_MANIFEST.into();
    leaf.annotations
        .insert(ANNOTATION_IMAGE_NAME.into(), "r/b:1".into());
    for e in fs::read_dir(first.dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), b2.dir.join("blobs/sha256").join(e.file_name())).unwrap();
    }
    write_index(&b2, vec![again, leaf]);
    let out = env.run(&["import", b2.dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("r/b:1 names both"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.images(), before);

    // The export of the pinned name is still X's content.
    let out = env.path("a.tar");
    env.ok(&["export", "-o", out.to_str().unwrap(), &pinned]);
    assert!(archive_blobs(&fs::read(&out).unwrap()).contains(&x.digest.to_string()));

    // tag: a pinned target must be the source's digest.
    let bad = env.run(&["tag", &pinned, &format!("c@{zero}")]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("pinned"), "{}", stderr(&bad));
    let good = format!("c@{}", x.digest);
    env.ok(&["tag", &pinned, &good]);
    assert!(env.images().contains(&(good, x.digest.to_string())));
}

#[test]
fn a_manifest_reached_as_a_layer_and_as_a_manifest_keeps_its_children() {
    let env = Env::new();
    let b = LayoutBuilder::new(&env.path("twice"));
    let layer = b.add_random_layer(5000, 3);
    let m = b.add_manifest(std::slice::from_ref(&layer), "amd64");
    let config = {
        let bytes = fs::read(b.blob_path(&m)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["config"]["digest"].as_str().unwrap().to_owned()
    };
    // An index listing M first under a layer media type, then as the manifest it is.
    let mut as_layer = m.clone();
    as_layer.media_type = MEDIA_LAYER.into();
    as_layer.platform = None;
    let idx = b.add_index(vec![as_layer, m.clone()]);
    write_index(&b, vec![annotated(&idx, ANNOTATION_REF_NAME, "1")]);
    let want: BTreeSet<String> = [&idx.digest, &m.digest, &layer.digest]
        .iter()
        .map(|d| d.to_string())
        .chain([config])
        .collect();

    // From a directory and from an archive, into fresh stores.
    for source in ["dir", "tar"] {
        let env = Env::new();
        let arg = match source {
            "dir" => b.dir.clone(),
            _ => {
                let t = env.path("twice.tar");
                tar_dir(&b.dir, &t);
                t
            }
        };
        env.ok(&["import", arg.to_str().unwrap()]);
        assert_eq!(store_blobs(&env), want, "{source}: what the import stored");
        let out = env.path("out.tar");
        env.ok(&["export", "-o", out.to_str().unwrap(), "twice:1"]);
        assert_eq!(
            archive_blobs(&fs::read(&out).unwrap()),
            want,
            "{source}: export"
        );
        env.ok(&["gc", "--grace", "0s"]);
        assert_eq!(
            store_blobs(&env),
            want,
            "{source}: gc removed a needed blob"
        );
        common::fsck_clean(&env);
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["images", "--format", "json"])).unwrap();
        assert_eq!(v[0]["complete"], true, "{v}");
        // The export imports into another store, complete.
        let again = Env::new();
        again.ok(&["import", out.to_str().unwrap()]);
        assert_eq!(store_blobs(&again), want);
    }
}

#[test]
fn a_manifest_under_an_unknown_media_type_is_an_opaque_blob_everywhere() {
    // The media type of a descriptor says what a blob is; one this project does not know is a
    // leaf, as containerd treats it. import, export, images, gc and fsck all agree on that.
    let env = Env::new();
    let b = LayoutBuilder::new(&env.path("opaque"));
    let m = b.add_manifest(&[b.add_random_layer(3000, 4)], "amd64");
    let mut odd = annotated(&m, ANNOTATION_REF_NAME, "1");
    odd.media_type = "application/vnd.example.unknown+json".into();
    write_index(&b, vec![odd]);
    let t = env.path("opaque.tar");
    tar_dir(&b.dir, &t);
    env.ok(&["import", t.to_str().unwrap()]);
    let only_m: BTreeSet<String> = [m.digest.to_string()].into();
    // The archive carried the config and layer too; no image reaches them, so they went.
    assert_eq!(store_blobs(&env), only_m);
    let out = env.path("out.tar");
    env.ok(&["export", "-o", out.to_str().unwrap(), "opaque:1"]);
    assert_eq!(archive_blobs(&fs::read(&out).unwrap()), only_m);
    env.ok(&["gc", "--grace", "0s"]);
    assert_eq!(store_blobs(&env), only_m);
    common::fsck_clean(&env);
}

#[test]
fn a_descriptor_over_16_kib_is_refused_wherever_records_are_made() {
    let env = Env::new();
    let mut b = LayoutBuilder::new(&env.path("big"));
    let m = b.small_image("1", 1, 500, 13);
    let huge = "x".repeat(oci::MAX_DESCRIPTOR_SIZE as usize);
    let d = annotated(&m, "org.example.note", &huge);
    write_index(&b, vec![annotated(&d, ANNOTATION_REF_NAME, "1")]);
    let t = env.path("big.tar");
    tar_dir(&b.dir, &t);
    for arg in [&b.dir, &t] {
        let out = env.run(&["import", arg.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("index.json") && err.contains("16384-byte limit"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(env.images().is_empty());
    assert_eq!(store_blobs(&env).len(), 0, "a refused import keeps nothing");
}

#[test]
fn an_index_json_of_20000_tags_round_trips() {
    const TAGS: usize = 20_000;
    let env = Env::new();
    let mut b = LayoutBuilder::new(&env.path("many"));
    let m = b.add_manifest(&[b.add_random_layer(100, 5)], "amd64");
    for i in 0..TAGS {
        b.tag(&m, Some(&format!("tag-{i:05}")));
    }
    b.write_index();
    env.ok(&["import", b.dir.to_str().unwrap()]);
    assert_eq!(env.images().len(), TAGS);
    let out = env.path("many.tar");
    env.ok(&["export", "-o", out.to_str().unwrap(), "many"]);
    let archive = fs::read(&out).unwrap();
    let index_len = tar::Archive::new(archive.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().to_str() == Some("index.json"))
        .unwrap()
        .size();
    assert!(
        index_len > oci::MAX_JSON_SIZE,
        "the exported index.json ({index_len} bytes) must pass the cap on other JSON"
    );
    let again = Env::new();
    again.ok(&["import", out.to_str().unwrap()]);
    assert_eq!(again.images(), env.images());
    // And once more from the export of the re-imported store: the same bytes.
    let out2 = env.path("many2.tar");
    again.ok(&["export", "-o", out2.to_str().unwrap(), "many"]);
    assert_eq!(fs::read(&out2).unwrap(), archive);
}

#[test]
fn blobs_no_image_reaches_are_taken_back_after_an_import() {
    let env = Env::new();
    let mut b = LayoutBuilder::new(&env.path("extra"));
    b.small_image("1", 1, 2000, 6);
    // A large blob of zeros that nothing references packs into a few KiB.
    let zeros = vec![0u8; 8 << 20];
    let stray = b.add_blob(MEDIA_LAYER, &zeros);
    for (name, compress) in [("extra.tar", None), ("extra.tar.zst", Some("zstd"))] {
        let env = Env::new();
        let t = env.path("extra.tar");
        tar_dir(&b.dir, &t);
        let arg = match compress {
            None => t,
            Some(tool) => {
                common::sh(
                    std::process::Command::new(tool)
                        .args(["-q", "--rm"])
                        .arg(&t),
                );
                env.path(name)
            }
        };
        let out = env.run(&["import", arg.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let blobs = store_blobs(&env);
        assert_eq!(blobs.len(), 3, "{name}: {blobs:?}");
        assert!(!blobs.contains(&stray.digest.to_string()), "{name}");
        common::fsck_clean(&env);
    }
    // A blob the store already had, unreached by this import, stays.
    let env = Env::new();
    let keep = LayoutBuilder::new(&env.path("keep"));
    let kept = keep.add_manifest(&[keep.add_blob(MEDIA_LAYER, &zeros)], "amd64");
    let mut keep = keep;
    keep.tag(&kept, Some("1")).write_index();
    env.ok(&["import", keep.dir.to_str().unwrap()]);
    let t = env.path("extra.tar");
    tar_dir(&b.dir, &t);
    env.ok(&["import", t.to_str().unwrap()]);
    assert!(store_blobs(&env).contains(&stray.digest.to_string()));
}

/// A tar header block for `path` with type flag `flag`, its checksum set.
fn header(path: &str, flag: u8, size: u64, gnu: bool) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::new(flag));
    if !gnu {
        h.as_mut_bytes()[257..265].copy_from_slice(b"ustar\x0000");
    }
    h.set_cksum();
    h.as_bytes().to_vec()
}

#[test]
fn archive_oddities_get_their_own_one_line_errors() {
    let env = Env::new();
    let mut b = LayoutBuilder::new(&env.path("odd"));
    b.small_image("1", 1, 700, 7);
    let t = env.path("odd.tar");
    tar_dir(&b.dir, &t);
    let good = fs::read(&t).unwrap();
    let body_end = good.len() - 1024; // the two end-of-archive blocks
    let mut cases: Vec<(String, Vec<u8>, &str)> = Vec::new();

    // A second oci-layout after the first.
    let mut twice = good[..body_end].to_vec();
    let layout = oci::layout_file_bytes();
    twice.extend(header("oci-layout", b'0', layout.len() as u64, false));
    let mut body = layout.clone();
    body.resize(512, 0);
    twice.extend(body);
    twice.extend([0u8; 1024]);
    cases.push((
        "a second oci-layout".into(),
        twice,
        "oci-layout appears twice",
    ));

    // GNU sparse entries, with a damaged real size and with a sound one.
    for (what, real_size) in [("damaged", None), ("sound", Some(512u64))] {
        let mut sparse = good[..body_end].to_vec();
        let mut h = header("blobs/sha256/sparse", b'S', 512, true);
        if let Some(n) = real_size {
            // One data region of 512 bytes at offset 0; real size 512.
            let field = |v: u64| format!("{v:011o}\0").into_bytes();
            h[386..398].copy_from_slice(&field(0));
            h[398..410].copy_from_slice(&field(512));
            h[483..495].copy_from_slice(&field(n));
            let mut t = tar::Header::from_byte_slice(&h).clone();
            t.set_cksum();
            h = t.as_bytes().to_vec();
        }
        sparse.extend(h);
        sparse.extend([0u8; 512]);
        sparse.extend([0u8; 1024]);
        cases.push((
            what.into(),
            sparse,
            "sparse files (GNU tar --sparse) are not supported",
        ));
    }

    // GNU tar's own sparse archives, in each of its formats.
    let mut sparse = LayoutBuilder::new(&env.path("sparse"));
    let holes = vec![0u8; 1 << 20];
    let layer = sparse.add_blob(MEDIA_LAYER, &holes);
    let path = sparse.blob_path(&layer);
    fs::remove_file(&path).unwrap();
    fs::File::create(&path)
        .unwrap()
        .set_len(holes.len() as u64)
        .unwrap();
    let m = sparse.add_manifest(&[layer], "amd64");
    sparse.tag(&m, Some("1")).write_index();
    let formats: [&[&str]; 4] = [
        &["--format=gnu"],
        &["--format=posix", "--sparse-version=0.0"],
        &["--format=posix", "--sparse-version=0.1"],
        &["--format=posix", "--sparse-version=1.0"],
    ];
    for format in formats {
        let out = env.path("sparse.tar");
        common::sh(
            std::process::Command::new("tar")
                .arg("-C")
                .arg(&sparse.dir)
                .arg("--sparse")
                .args(format)
                .arg("-cf")
                .arg(&out)
                .arg("."),
        );
        let what = format!("tar --sparse {}", format.join(" "));
        cases.push((
            what,
            fs::read(&out).unwrap(),
            "sparse files (GNU tar --sparse) are not supported",
        ));
    }

    // A truncated archive whose last data block looks like a sparse header is truncated.
    let mut fake = LayoutBuilder::new(&env.path("fake"));
    let mut block = vec![b'x'; 1024];
    block[156] = b'S';
    block[257..262].copy_from_slice(b"ustar");
    let looks = fake.add_blob(MEDIA_LAYER, &block);
    let m = fake.add_manifest(&[looks], "amd64");
    fake.tag(&m, Some("1")).write_index();
    let t = env.path("fake.tar");
    tar_dir(&fake.dir, &t);
    let whole = fs::read(&t).unwrap();
    let at = whole
        .windows(block.len())
        .position(|w| w == block.as_slice())
        .unwrap();
    cases.push((
        "truncated after a block that looks like a sparse header".into(),
        whole[..at + 512].to_vec(),
        "truncated or corrupt tar",
    ));

    for (what, bytes, want) in cases {
        let out = env.run_with_stdin(&["import", "--name", "odd", "-"], &bytes);
        let err = stderr(&out);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(err.contains(want), "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
        assert!(env.images().is_empty(), "{what}");
    }
}

#[test]
fn what_held_in_the_attack_run_still_holds() {
    let env = Env::new();
    // A blob entry twice in one archive, a good copy then a bad one: the good one is kept.
    let mut b = LayoutBuilder::new(&env.path("dup"));
    let m = b.small_image("1", 1, 600, 8);
    let t = env.path("dup.tar");
    tar_dir(&b.dir, &t);
    let good = fs::read(&t).unwrap();
    let layer_path = {
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(b.blob_path(&m)).unwrap()).unwrap();
        let d: Digest = v["layers"][0]["digest"].as_str().unwrap().parse().unwrap();
        d.blob_path()
    };
    let mut dup = good[..good.len() - 1024].to_vec();
    dup.extend(header(&layer_path, b'0', 600, false));
    dup.extend([0x5a; 600]);
    dup.extend([0u8; 2 * 512 - 600]); // padded to whole blocks
    dup.extend([0u8; 1024]);
    let out = env.run_with_stdin(&["import", "--name", "dup", "-"], &dup);
    assert!(out.status.success(), "{}", stderr(&out));
    common::fsck_clean(&env);

    // A manifest of 25,000 layer descriptors (one blob) imports, exports and walks at once.
    let many = LayoutBuilder::new(&env.path("layers"));
    let layer = many.add_random_layer(64, 9);
    let layers = vec![layer; 25_000];
    let m = many.add_manifest(&layers, "amd64");
    let mut many = many;
    many.tag(&m, Some("1")).write_index();
    let started = std::time::Instant::now();
    env.ok(&["import", many.dir.to_str().unwrap()]);
    env.ok(&["images"]);
    env.ok(&["gc", "--grace", "0s"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "25,000 layers took {:?}",
        started.elapsed()
    );

    // The longest names the grammar allows (255-byte repository, 128-byte tag), and no longer.
    let repo = format!("{}/{}", "a".repeat(127), "b".repeat(127));
    assert_eq!(repo.len(), 255);
    let tag = "t".repeat(128);
    env.ok(&["tag", "layers:1", &format!("{repo}:{tag}")]);
    for bad in [format!("{repo}c:1"), format!("{repo}:{tag}x")] {
        let out = env.run(&["tag", "layers:1", &bad]);
        assert!(!out.status.success(), "{bad} accepted");
        assert!(stderr(&out).contains("longer than"), "{}", stderr(&out));
    }
}

#[test]
fn with_allow_other_another_user_reads_the_mount_and_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let mut b = LayoutBuilder::new(&env.path("shared"));
    b.small_image("1", 1, 900, 10);
    env.ok(&["import", b.dir.to_str().unwrap()]);
    let user = common::user::OtherUser::create();
    // The other user must be able to reach the mount point: the test's directory is 0700.
    fs::set_permissions(env.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let m = common::mount::Mounted::start(&env, "mnt", &["--allow-other"]);
    let mnt = m.dir.to_str().unwrap().to_owned();
    let as_user = |script: &str| {
        std::process::Command::new("setpriv")
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .args(["--clear-groups", "sh", "-c", script])
            .env("M", &mnt)
            .output()
            .unwrap()
    };
    let read = as_user("ls $M/shared/blobs/sha256 >/dev/null && cat $M/shared/index.json");
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(read.stdout, fs::read(m.path("shared/index.json")).unwrap());
    let changes = [
        "mkdir $M/new",
        "touch $M/shared/x",
        "rm $M/shared/index.json",
        "mv $M/shared $M/moved",
        "rm -r $M/shared",
        "echo '{}' > $M/shared/index.json",
        "cp $M/shared/oci-layout $M/shared/blobs/sha256/",
    ];
    for script in changes {
        let out = as_user(&format!("LC_ALL=C {script}"));
        assert!(!out.status.success(), "{script}: succeeded");
        assert!(
            stderr(&out).contains("Permission denied"),
            "{script}: {}",
            stderr(&out)
        );
    }
    assert_eq!(env.images().len(), 1);
    assert_eq!(
        fs::read_dir(m.path("")).unwrap().count(),
        1,
        "only the one repository"
    );
    common::fsck_clean(&env);
}

#[test]
fn fsck_names_a_pinned_name_an_older_version_let_through() {
    let env = Env::new();
    let mut b = LayoutBuilder::new(&env.path("a"));
    let x = b.small_image("unused", 1, 800, 11);
    b.index.clear();
    b.tag(&x, None).write_index();
    env.ok(&["import", b.dir.to_str().unwrap()]);
    let mut other = LayoutBuilder::new(&env.path("y"));
    let y = other.small_image("1", 1, 700, 12);
    env.ok(&["import", other.dir.to_str().unwrap()]);
    // What a store written before 2026-11-28 could hold: a@X pointing at Y.
    let db = rusqlite::Connection::open(env.store.join("meta.db")).unwrap();
    let y_json: String = db
        .query_row(
            "SELECT descriptor FROM images WHERE name = 'y:1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let spoofed = format!("a@{}", x.digest);
    let n = db
        .execute(
            "UPDATE images SET descriptor = ?1 WHERE name = ?2",
            [&y_json, &spoofed],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    let out = env.run(&["fsck"]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    let want = format!("image {spoofed} names {}", y.digest);
    assert!(report.contains(&want), "{report}");
    env.ok(&["rm", &spoofed]);
    common::fsck_clean(&env);
}

/// The deepest nesting of indexes above a manifest that every consumer accepts: a blob may
/// have at most `oci::MAX_DEPTH - 1` ancestors, and a manifest's config and layers sit one
/// level below it.
const DEEPEST_ACCEPTED: usize = oci::MAX_DEPTH - 2;

#[test]
fn import_export_images_gc_fsck_and_the_mount_agree_on_nesting_depths() {
    let env = Env::new();
    let m = common::mount::Mounted::start(&env, "mnt", &[]);
    for depth in 1..=10usize {
        let name = format!("deep{depth}");
        let mut b = LayoutBuilder::new(&env.path(&name));
        let mut top = b.add_manifest(&[b.add_random_layer(300, depth as u64)], "amd64");
        for _ in 0..depth {
            top = b.add_index(vec![top]);
        }
        b.tag(&top, Some("1")).write_index();
        let accepted = depth <= DEEPEST_ACCEPTED;
        let tag = format!("{name}:1");

        let out = env.run(&["import", b.dir.to_str().unwrap()]);
        assert_eq!(
            out.status.success(),
            accepted,
            "import of {depth}: {}",
            stderr(&out)
        );
        if !accepted {
            assert!(
                stderr(&out).contains("nested deeper than"),
                "{}",
                stderr(&out)
            );
        }
        // The mount answers the same: cp -r registers the image or fails at index.json.
        let into = m.path(&format!("m{name}"));
        let cp = std::process::Command::new("cp")
            .arg("-r")
            .arg(&b.dir)
            .arg(&into)
            .output()
            .unwrap();
        assert_eq!(
            cp.status.success(),
            accepted,
            "cp -r of {depth}: {}",
            stderr(&cp)
        );
        let names: Vec<String> = env.images().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names.contains(&format!("m{name}:1")),
            accepted,
            "mount, {depth}"
        );

        if !accepted {
            // Register it behind import's back (as an older version's mount could): the other
            // consumers all call it damaged.
            for e in fs::read_dir(b.dir.join("blobs/sha256")).unwrap() {
                let e = e.unwrap();
                let to = env.store.join("blobs/sha256").join(e.file_name());
                if !to.exists() {
                    fs::copy(e.path(), &to).unwrap();
                }
            }
            let db = rusqlite::Connection::open(env.store.join("meta.db")).unwrap();
            let json = serde_json::to_string(&b.index[0]).unwrap();
            db.execute(
                "INSERT INTO images (name, repository, descriptor, created, updated) \
                 VALUES (?1, ?2, ?3, 0, 0)",
                [&tag, &name, &json],
            )
            .unwrap();
        }
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["images", "--format", "json"])).unwrap();
        let row = v
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == tag.as_str())
            .unwrap();
        assert_eq!(row["complete"], accepted, "images, {depth}: {row}");
        let out = env.path(&format!("{name}.tar"));
        let export = env.run(&["export", "-o", out.to_str().unwrap(), &tag]);
        assert_eq!(export.status.success(), accepted, "export, {depth}");
        assert_eq!(
            env.run(&["fsck"]).status.success(),
            accepted,
            "fsck, {depth}"
        );
        let gc = env.run(&["gc", "--grace", "0s"]);
        assert_eq!(
            gc.status.success(),
            accepted,
            "gc, {depth}: {}",
            stderr(&gc)
        );
        if accepted {
            let again = Env::new();
            again.ok(&["import", out.to_str().unwrap()]);
            assert_eq!(again.images().len(), 1);
        } else {
            env.ok(&["rm", &tag]);
        }
    }
}

#[test]
fn taking_back_walks_only_records_changed_since_the_import_began() {
    let env = Env::new();
    // An old image whose manifest is gone: a full walk of the store would stop at it.
    let mut old = LayoutBuilder::new(&env.path("old"));
    let old_m = old.small_image("1", 1, 400, 14);
    env.ok(&["import", old.dir.to_str().unwrap()]);
    let mut signed = LayoutBuilder::new(&env.path("signed"));
    let subject = signed.small_image("1", 1, 300, 15);
    env.ok(&["import", signed.dir.to_str().unwrap()]);
    let db = rusqlite::Connection::open(env.store.join("meta.db")).unwrap();
    db.execute("UPDATE images SET updated = updated - 3600000", [])
        .unwrap();
    drop(db);
    fs::remove_file(env.store.join(old_m.digest.blob_path())).unwrap();

    // An archive of a new image, carrying a stray blob and a signature of signed:1.
    let mut b = LayoutBuilder::new(&env.path("new"));
    b.small_image("1", 1, 500, 16);
    let stray = b.add_blob(MEDIA_LAYER, &[7u8; 4096]);
    let empty = b.add_blob("application/vnd.oci.empty.v1+json", b"{}");
    let body = b.add_blob(MEDIA_LAYER, b"signature");
    let sig = serde_json::json!({
        "schemaVersion": 2, "mediaType": oci::MEDIA_OCI_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": empty, "layers": [body],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
    });
    let sig = b.add_blob(oci::MEDIA_OCI_MANIFEST, &serde_json::to_vec(&sig).unwrap());
    let t = env.path("new.tar");
    tar_dir(&b.dir, &t);
    let out = env
        .cmd(&["import", t.to_str().unwrap()])
        .env("LAYOUTFS_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let blobs = store_blobs(&env);
    assert!(
        !blobs.contains(&stray.digest.to_string()),
        "{}",
        stderr(&out)
    );
    for kept in [&sig.digest, &body.digest, &empty.digest] {
        assert!(blobs.contains(&kept.to_string()), "{kept} taken back");
    }
}
