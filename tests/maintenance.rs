//! gc, fsck and the completeness column of `images`, through the binary: what gc sweeps and
//! what it keeps (shared layers, untagged signatures and SBOMs by their OCI 1.1 `subject`),
//! what fsck finds (corrupt, missing, stray) and names the images it breaks, and how
//! `fsck --repair` plus a re-import restores a damaged image.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::gen::{LayoutBuilder, MEDIA_LAYER};
use common::{stderr, tar_dir, Env};
use layoutfs::digest::Digest;
use layoutfs::oci::{self, Descriptor};

fn blob_file(env: &Env, d: &Digest) -> std::path::PathBuf {
    env.store.join(d.blob_path())
}

fn blobs_in_store(env: &Env) -> usize {
    fs::read_dir(env.store.join("blobs/sha256"))
        .unwrap()
        .count()
}

/// Overwrites a stored blob with other bytes of the same length.
fn corrupt(env: &Env, d: &Digest) {
    let p = blob_file(env, d);
    let mut bytes = fs::read(&p).unwrap();
    bytes[0] ^= 0xff;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&p, bytes).unwrap();
}

/// An image's archive, as `layoutfs export` writes it to standard output.
fn export(env: &Env, name: &str) -> Vec<u8> {
    let out = env.cmd(&["export", name]).output().unwrap();
    assert!(out.status.success(), "export {name}: {}", stderr(&out));
    out.stdout
}

/// The JSON row of `images` for `name`.
fn image_row(env: &Env, name: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["images", "--format", "json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed"))
        .clone()
}

#[test]
fn gc_sweeps_what_no_image_needs_and_keeps_shared_layers() {
    let env = Env::new();
    let a = LayoutBuilder::new(&env.path("a"));
    let shared = a.add_random_layer(300_000, 1);
    let only_a = a.add_random_layer(10_000, 2);
    let m = a.add_manifest(&[shared.clone(), only_a], "amd64");
    let mut a = a;
    a.tag(&m, Some("1")).write_index();
    let b = LayoutBuilder::new(&env.path("b"));
    assert_eq!(
        b.add_random_layer(300_000, 1),
        shared,
        "same seed, same layer"
    );
    let only_b = b.add_random_layer(20_000, 3);
    let mb = b.add_manifest(&[shared.clone(), only_b.clone()], "arm64");
    let mut b = b;
    b.tag(&mb, Some("1")).write_index();
    env.ok(&["import", env.path("a").to_str().unwrap()]);
    env.ok(&["import", env.path("b").to_str().unwrap()]);
    assert_eq!(blobs_in_store(&env), 7, "shared layer stored once");
    let before_export = export(&env, "a:1");

    // Nothing to do while both images are there.
    let out = env.ok(&["gc"]);
    assert!(out.starts_with("removed 0 blobs"), "{out}");
    // Where blobs were seen on a registry (a pull or push notes it): kept while the blob is.
    let origins = |d: &Digest| {
        let s = layoutfs::store::Store::open(&env.store).unwrap();
        s.records().origins(d, "r.example:5000").unwrap()
    };
    {
        let s = layoutfs::store::Store::open(&env.store).unwrap();
        let seen = [shared.digest.clone(), only_b.digest.clone()];
        s.records()
            .note_origins("r.example:5000", "b", &seen)
            .unwrap();
    }

    env.ok(&["rm", "b:1"]);
    let dry = env.ok(&["gc", "--dry-run"]);
    assert_eq!(dry.lines().count(), 4, "three blobs and a summary: {dry}");
    assert!(dry.contains(&only_b.digest.to_string()), "{dry}");
    assert!(dry.contains(&mb.digest.to_string()), "{dry}");
    assert!(dry.contains("would remove 3 blobs"), "{dry}");
    assert_eq!(blobs_in_store(&env), 7, "a dry run removes nothing");

    assert_eq!(origins(&only_b.digest), ["b"], "a dry run forgets nothing");
    let out = env.ok(&["gc"]);
    assert!(out.starts_with("removed 3 blobs"), "{out}");
    assert_eq!(blobs_in_store(&env), 4);
    assert!(
        origins(&only_b.digest).is_empty(),
        "a removed blob's origin stays"
    );
    assert_eq!(origins(&shared.digest), ["b"]);
    assert!(blob_file(&env, &shared.digest).exists());
    assert!(!blob_file(&env, &only_b.digest).exists());
    assert_eq!(export(&env, "a:1"), before_export);
    env.ok(&["fsck"]);
    let out = env.ok(&["gc"]);
    assert!(out.starts_with("removed 0 blobs"), "{out}");
}

/// An artifact manifest whose subject is `subject`, with one blob of `payload`.
fn referrer(
    l: &LayoutBuilder,
    subject: &Descriptor,
    artifact_type: &str,
    payload: &[u8],
) -> Descriptor {
    let empty = l.add_blob("application/vnd.oci.empty.v1+json", b"{}");
    let body = l.add_blob(MEDIA_LAYER, payload);
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MEDIA_OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty,
        "layers": [body],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
    });
    l.add_blob(oci::MEDIA_OCI_MANIFEST, &serde_json::to_vec(&m).unwrap())
}

#[test]
fn gc_keeps_untagged_signatures_and_sboms_while_their_subject_is_kept() {
    let env = Env::new();
    let mut l = LayoutBuilder::new(&env.path("signed"));
    let m = l.small_image("1", 1, 5_000, 10);
    let sig = referrer(
        &l,
        &m,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        b"signature",
    );
    let sbom = referrer(
        &l,
        &m,
        "application/spdx+json",
        b"{\"spdxVersion\":\"SPDX-2.3\"}",
    );
    let sig_of_sbom = referrer(
        &l,
        &sbom,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        b"sig2",
    );
    // A referrer whose subject is in no image: garbage.
    let stray_subject = l.add_blob(oci::MEDIA_OCI_MANIFEST, b"{\"schemaVersion\":2}");
    let orphan = referrer(&l, &stray_subject, "application/example", b"orphan");
    fs::remove_file(l.blob_path(&stray_subject)).unwrap();
    l.write_index();
    // index.json lists only the image; the archive carries every blob, referrers too.
    tar_dir(&l.dir, &env.path("signed.tar"));
    env.ok(&["import", env.path("signed.tar").to_str().unwrap()]);
    // The import takes back what none of its images needs, by gc's rules: the orphan referrer
    // and its layer go (its empty config is shared with the others); the referrers of the
    // image stay though index.json does not list them.
    assert!(!blob_file(&env, &orphan.digest).exists());
    for d in [&sig, &sbom, &sig_of_sbom] {
        assert!(blob_file(&env, &d.digest).exists(), "{} swept", d.digest);
    }
    let stored = blobs_in_store(&env);
    let out = env.ok(&["gc"]);
    assert!(out.starts_with("removed 0 blobs"), "{out}");
    assert_eq!(blobs_in_store(&env), stored);

    // Without their image, the signatures and the SBOM go too.
    env.ok(&["rm", "signed"]);
    env.ok(&["gc"]);
    assert_eq!(blobs_in_store(&env), 0);
}

#[test]
fn fsck_names_what_is_corrupt_and_repair_then_reimport_restores_it() {
    let env = Env::new();
    let mut l = LayoutBuilder::new(&env.path("img"));
    let layer = l.add_random_layer(200_000, 20);
    let m = l.add_manifest(std::slice::from_ref(&layer), "amd64");
    l.tag(&m, Some("1")).write_index();
    env.ok(&["import", env.path("img").to_str().unwrap()]);
    let mut other = LayoutBuilder::new(&env.path("other"));
    other.small_image("2", 1, 1_000, 21);
    env.ok(&["import", env.path("other").to_str().unwrap()]);
    let clean = env.ok(&["fsck"]);
    assert!(clean.contains("0 problems"), "{clean}");
    let reference = export(&env, "img:1");

    corrupt(&env, &layer.digest);
    let out = env.run(&["fsck"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("corrupt blob {}", layer.digest)) && text.contains("(breaks img:1)"),
        "{text}"
    );
    assert!(!text.contains("other:2"), "other:2 is sound: {text}");
    assert!(
        stderr(&out).contains("fsck: 1 problem;"),
        "{}",
        stderr(&out)
    );
    // export --verify catches it too, naming the digest.
    let v = env.run(&["export", "--verify", "-o", "/dev/null", "img:1"]);
    assert!(!v.status.success());
    assert!(stderr(&v).contains(&layer.digest.to_string()));

    let out = env.run(&["fsck", "--repair"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("quarantined"), "{text}");
    assert!(env
        .store
        .join("quarantine/sha256")
        .join(layer.digest.hex())
        .exists());
    let row = image_row(&env, "img:1");
    assert_eq!(
        (row["complete"].as_bool(), row["missing"].as_u64()),
        (Some(false), Some(1))
    );
    assert!(env.ok(&["images"]).contains("1 missing"));
    let e = env.run(&["export", "-o", "/dev/null", "img:1"]);
    assert!(stderr(&e).contains("missing"), "{}", stderr(&e));

    // The missing blob is reported until a re-import writes it again.
    let out = env.run(&["fsck"]);
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains(&format!("missing blob {} (breaks img:1)", layer.digest)));
    env.ok(&["import", env.path("img").to_str().unwrap()]);
    env.ok(&["fsck"]);
    assert_eq!(image_row(&env, "img:1")["complete"], true);
    assert_eq!(export(&env, "img:1"), reference);
}

#[test]
fn gc_stops_before_removing_anything_when_an_image_cannot_be_walked() {
    let env = Env::new();
    let mut l = LayoutBuilder::new(&env.path("x"));
    let m = l.small_image("1", 2, 3_000, 30);
    env.ok(&["import", env.path("x").to_str().unwrap()]);
    let mut junk = LayoutBuilder::new(&env.path("junk"));
    junk.small_image("1", 1, 3_000, 31);
    env.ok(&["import", env.path("junk").to_str().unwrap()]);
    env.ok(&["rm", "junk:1"]);
    let before = blobs_in_store(&env);

    // The manifest of x:1 is gone: which layers it needs is unknown.
    fs::remove_file(blob_file(&env, &m.digest)).unwrap();
    let out = env.run(&["gc"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("x:1") && err.contains(&m.digest.to_string()),
        "{err}"
    );
    assert!(err.contains("nothing was removed"), "{err}");
    assert_eq!(blobs_in_store(&env), before - 1);
    assert!(env.ok(&["images"]).contains("1 missing"));
    let out = env.run(&["fsck"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("missing blob {} (breaks x:1)", m.digest)),
        "{report}"
    );
    // It cannot say what gc would free: gc would not run.
    assert!(report.contains("gc would refuse"), "{report}");

    // Re-importing restores the manifest; gc then sweeps junk's blobs.
    env.ok(&["import", env.path("x").to_str().unwrap()]);
    let out = env.ok(&["gc"]);
    assert!(out.starts_with("removed 3 blobs"), "{out}");
}

#[test]
fn fsck_reports_stray_files_and_damaged_manifests() {
    let env = Env::new();
    let mut l = LayoutBuilder::new(&env.path("y"));
    let m = l.small_image("1", 1, 3_000, 40);
    env.ok(&["import", env.path("y").to_str().unwrap()]);
    fs::write(env.store.join("blobs/sha256/not-a-digest"), b"x").unwrap();
    corrupt(&env, &m.digest);
    let out = env.run(&["fsck"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stray file") && text.contains("not-a-digest"),
        "{text}"
    );
    assert!(
        text.contains(&format!("corrupt blob {}", m.digest)) && text.contains("(breaks y:1)"),
        "{text}"
    );
    assert!(stderr(&out).contains("2 problems"), "{}", stderr(&out));
    // A gc refuses too: the damaged manifest hides its layers.
    assert!(!env.run(&["gc"]).status.success());
    assert!(env.ok(&["images"]).contains("damaged"));
}

#[test]
fn gc_reports_the_partial_ingests_it_keeps_for_a_pull_to_resume() {
    let env = Env::new();
    let data = b"partial content of a layer";
    let d = Digest::of(layoutfs::digest::Algorithm::Sha256, data);
    {
        let s = layoutfs::store::Store::open(&env.store).unwrap();
        let mut w = s.resume(&d, data.len() as u64).unwrap();
        w.write_all(&data[..7]).unwrap();
    }
    let out = env.ok(&["gc"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "removed 0 blobs (0 B) and 0 abandoned ingests (0 B); kept 0 blobs (0 held by leases)",
            "kept 1 partial ingest (7 B) for a pull to resume",
        ],
        "{out}"
    );
    let out = env.ok(&["gc", "--grace", "0s"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["removed 0 blobs (0 B) and 1 abandoned ingest (7 B); kept 0 blobs (0 held by leases)"],
        "{out}"
    );
    assert_eq!(fs::read_dir(env.store.join("ingest")).unwrap().count(), 0);
}
