//! `layoutfs pull`, `push` and `login` against Debian's docker-registry started by each test
//! (plain HTTP, TLS with a CA of the test's own, htpasswd basic auth, token auth), with the
//! peers reading what layoutfs wrote and writing what it reads: skopeo pushes the images
//! pulled (OCI, docker schema 2, zstd layers, a multi-platform index), and reads back what
//! layoutfs pushed, as does a private containerd.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::proxy::Proxy;
use common::registry::{self, Auth, Options, Registry, Seeded, MEDIA_OCI_MANIFEST, PASSWORD, USER};
use common::{sh, stderr, Containerd, Env};

/// Runs layoutfs with the test's own credentials and the registry's CAs.
fn lf(env: &Env, reg: Option<&Registry>, args: &[&str]) -> Output {
    let certs = reg.and_then(|r| r.certs_d.as_deref());
    registry::layoutfs(env, certs, args).output().unwrap()
}

fn lf_ok(env: &Env, reg: Option<&Registry>, args: &[&str]) -> String {
    let out = lf(env, reg, args);
    assert!(
        out.status.success(),
        "layoutfs {args:?} failed: {}",
        stderr(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn login(env: &Env, reg: &Registry, password: &str) -> Output {
    registry::login(env, reg.certs_d.as_deref(), &reg.host, password)
}

/// Every file under `dir/blobs`, by relative path.
fn blobs_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    common::tree(&dir.join("blobs"))
}

/// The store's images exported and unpacked in `dir`.
fn export_to(env: &Env, name: &str, dir: &Path) {
    let tar = env.path(&format!(
        "{}.tar",
        dir.file_name().unwrap().to_string_lossy()
    ));
    env.ok(&["export", "-o", tar.to_str().unwrap(), name]);
    fs::create_dir_all(dir).unwrap();
    sh(Command::new("tar").arg("-C").arg(dir).arg("-xf").arg(&tar));
}

#[test]
fn pulls_of_oci_docker_and_zstd_images_match_skopeo_blob_for_blob() {
    let env = Env::new();
    let reg = Registry::plain();
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let seeds = [
        reg.seed_oci(&scratch, "oci:1"),
        reg.seed_v2s2(&scratch, "v2s2:1"),
        reg.seed_zstd(&scratch, "zstd:1"),
    ];
    for s in &seeds {
        let out = lf_ok(&env, Some(&reg), &["pull", &s.reference]);
        assert_eq!(
            out.trim(),
            s.reference,
            "the stored name is the full reference"
        );
        let images = env.images();
        let (_, digest) = images.iter().find(|(n, _)| n == &s.reference).unwrap();
        assert_eq!(
            digest, &s.digest,
            "{}: the digest the registry serves",
            s.reference
        );
        // What skopeo copies out of the registry, blob for blob (digests preserved: skopeo
        // would convert a docker schema 2 manifest for an OCI layout).
        let theirs = env.path(&format!("skopeo-{}", s.repo));
        reg.skopeo_copy_out(
            &format!("{}:{}", s.repo, s.tag),
            &format!("oci:{}:x", theirs.display()),
            &["--preserve-digests"],
        );
        let ours = env.path(&format!("ours-{}", s.repo));
        export_to(&env, &s.reference, &ours);
        let (a, b) = (blobs_of(&ours), blobs_of(&theirs));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{}: the same blobs",
            s.reference
        );
        assert!(a == b, "{}: the same bytes", s.reference);
        let manifest = reg.skopeo_raw(&format!("{}:{}", s.repo, s.tag));
        assert_eq!(
            a[&format!("sha256/{}", &s.digest["sha256:".len()..])],
            manifest,
            "{}: the manifest byte for byte",
            s.reference
        );
    }
}

#[test]
fn an_index_is_pulled_for_this_platform_one_asked_for_or_all() {
    let env = Env::new();
    let reg = Registry::plain();
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let s = reg.seed_index(&scratch, "multi:1");
    let (amd64, arm64) = (&s.children[0], &s.children[1]);
    let has = |d: &str| {
        env.store
            .join("blobs/sha256")
            .join(&d["sha256:".len()..])
            .exists()
    };
    // This machine's platform (the tests run on amd64): the index whole, one child.
    lf_ok(&env, Some(&reg), &["pull", &s.reference]);
    assert!(has(&s.digest) && has(amd64));
    assert!(!has(arm64), "a platform not asked for was pulled");
    // gc keeps what was pulled: the missing platform is not an unknown child; fsck does not
    // count it as a problem.
    env.ok(&["gc", "--grace", "0s"]);
    assert!(has(amd64));
    common::fsck_clean(&env);
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["images", "--format", "json"])).unwrap();
    assert_eq!(
        json[0]["missing"], 1,
        "images says what was left out: {json}"
    );
    // Another platform, into another store.
    let env2 = Env::new();
    lf_ok(
        &env2,
        Some(&reg),
        &["pull", "--platform", "linux/arm64", &s.reference],
    );
    let has2 = |d: &str| env2.store.join("blobs/sha256").join(&d[7..]).exists();
    assert!(has2(arm64) && !has2(amd64));
    // All of them: exported, the index is complete.
    let env3 = Env::new();
    lf_ok(
        &env3,
        Some(&reg),
        &["pull", "--all-platforms", &s.reference],
    );
    let has3 = |d: &str| env3.store.join("blobs/sha256").join(&d[7..]).exists();
    assert!(has3(arm64) && has3(amd64));
    export_to(&env3, &s.reference, &env3.path("out"));
    // A platform the index does not have: a clear error, nothing stored.
    let env4 = Env::new();
    let out = lf(
        &env4,
        Some(&reg),
        &["pull", "--platform", "linux/s390x", &s.reference],
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("linux/s390x") && e.contains("linux/amd64") && e.contains("linux/arm64"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn a_second_pull_fetches_no_blob_and_a_second_push_uploads_nothing() {
    let env = Env::new();
    let reg = Registry::plain();
    let proxy = Proxy::start(&reg.host);
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let s = reg.seed_oci(&scratch, "x:1");
    let via = format!("{}/x:1", proxy.host);
    lf_ok(&env, None, &["pull", &via]);
    let blob_gets = |p: &Proxy| {
        p.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
            .count()
    };
    assert_eq!(blob_gets(&proxy), s.blobs.len(), "each blob once");
    proxy.clear_log();
    lf_ok(&env, None, &["pull", &via]);
    assert_eq!(blob_gets(&proxy), 0, "the store had them all");

    // Push to a new repository of the same registry: the blobs were pulled from x, so the
    // registry mounts them; a second push finds them all there.
    proxy.clear_log();
    let out = lf_ok(
        &env,
        None,
        &[
            "push",
            "--format",
            "json",
            &via,
            &format!("{}/y:2", proxy.host),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mounted"], s.blobs.len(), "{v}");
    assert_eq!(v["uploaded"], 0, "{v}");
    assert!(proxy
        .requests()
        .iter()
        .any(|r| r.method == "POST" && r.path.contains("mount=")));
    let out = lf_ok(
        &env,
        None,
        &[
            "push",
            "--format",
            "json",
            &via,
            &format!("{}/y:2", proxy.host),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["present"], s.blobs.len(), "{v}");
    assert_eq!(v["uploaded"], 0, "{v}");
    assert_eq!(reg.skopeo_raw("y:2"), reg.skopeo_raw("x:1"));
}

#[test]
fn a_pushed_image_is_read_back_by_skopeo_and_containerd() {
    let env = Env::new();
    let reg = Registry::plain();
    let layout = env.path("layout");
    let digest = common::umoci_layout(&env, &layout);
    env.ok(&["import", "--name", "local", layout.to_str().unwrap()]);
    let dest = format!("{}/pushed:v1", reg.host);
    let out = lf_ok(&env, Some(&reg), &["push", "local:base", &dest]);
    assert_eq!(out.trim(), dest);
    // Byte for byte: the digest is the store's.
    let raw = reg.skopeo_raw("pushed:v1");
    assert_eq!(format!("sha256:{}", sha256_hex(&raw)), digest);
    let back = env.path("back");
    reg.skopeo_copy_out("pushed:v1", &format!("oci:{}:v1", back.display()), &[]);
    sh(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:v1", back.display()))
        .arg(env.path("bundle")));
    assert_eq!(
        fs::read(env.path("bundle/rootfs/etc/hello")).unwrap(),
        b"hello from layoutfs\n"
    );
    let ctrd = Containerd::start();
    sh(ctrd.ctr().args(["images", "pull", "--plain-http", &dest]));
    let listed = sh(ctrd.ctr().args(["images", "ls", "-q"]));
    assert!(listed.lines().any(|l| l == dest), "{listed}");
    // DEST defaults to the image's own name when that names a registry.
    env.ok(&["tag", "local:base", &format!("{}/own:2", reg.host)]);
    lf_ok(&env, Some(&reg), &["push", &format!("{}/own:2", reg.host)]);
    assert_eq!(reg.skopeo_raw("own:2"), raw);
    // A name without a registry host cannot go anywhere by default.
    let out = lf(&env, Some(&reg), &["push", "local:base"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no registry host"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_pulled_image_shows_in_the_mount() {
    let env = Env::new();
    let reg = Registry::plain();
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let s = reg.seed_oci(&scratch, "shown:1");
    let m = common::mount::Mounted::start(&env, "mnt", &[]);
    assert!(lf(&env, Some(&reg), &["pull", &s.reference])
        .status
        .success());
    let dir = m.path(&format!("{}/shown", reg.host));
    common::within_a_second("the pulled image in the mount", || {
        dir.join("index.json").exists()
    });
    // skopeo's oci: transport cannot name a path with a ':' (HOST:PORT): read the files.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        s.digest.as_str(),
        "{index}"
    );
    let manifest = fs::read(dir.join("blobs/sha256").join(&s.digest[7..])).unwrap();
    assert_eq!(manifest, reg.skopeo_raw("shown:1"));
    for (d, size, _) in &s.blobs {
        let len = fs::metadata(dir.join("blobs/sha256").join(&d[7..]))
            .unwrap()
            .len();
        assert_eq!(len, *size, "{d}");
    }
}

#[test]
fn tls_works_with_the_registry_ca_and_without_it_the_error_names_the_host() {
    let env = Env::new();
    let reg = Registry::start(Options {
        tls: true,
        auth: Auth::Anonymous,
    });
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let s = reg.seed_oci(&scratch, "secure:1");
    lf_ok(&env, Some(&reg), &["pull", &s.reference]);
    // No CA: the certificate is not trusted, and the message says how to give one.
    let env2 = Env::new();
    let out = lf(&env2, None, &["pull", &s.reference]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(&reg.host) && e.contains("not trusted") && e.contains("ca.crt"),
        "{e}"
    );
    assert!(env2.images().is_empty());
    // A CA file that is no certificate is named.
    let bad = env2.path("bad.d");
    fs::create_dir_all(bad.join(&reg.host)).unwrap();
    fs::write(bad.join(&reg.host).join("ca.crt"), "garbage").unwrap();
    let out = registry::layoutfs(&env2, Some(&bad), &["pull", &s.reference])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ca.crt: not a PEM certificate"),
        "{}",
        stderr(&out)
    );
}

/// A wrong password is refused by `login`; the right one kept, then `s` pulled and pushed to
/// `dest_repo` of the same registry, byte for byte.
fn logs_in_then_pulls_and_pushes(env: &Env, reg: &Registry, s: &Seeded, dest_repo: &str) {
    let out = login(env, reg, "wrong");
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("wrong user name or password"), "{e}");
    let out = login(env, reg, PASSWORD);
    assert!(out.status.success(), "{}", stderr(&out));
    lf_ok(env, Some(reg), &["pull", &s.reference]);
    let dest = format!("{}/{dest_repo}:1", reg.host);
    lf_ok(env, Some(reg), &["push", &s.reference, &dest]);
    let theirs = reg.skopeo_raw(&format!("{}:{}", s.repo, s.tag));
    assert_eq!(reg.skopeo_raw(&format!("{dest_repo}:1")), theirs);
}

#[test]
fn basic_auth_needs_a_login_and_refuses_a_wrong_password() {
    let env = Env::new();
    let reg = Registry::start(Options {
        tls: false,
        auth: Auth::Htpasswd,
    });
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let s = reg.seed_oci(&scratch, "private:1");
    let out = lf(&env, Some(&reg), &["pull", &s.reference]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains(&format!("layoutfs login {}", reg.host)), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    logs_in_then_pulls_and_pushes(&env, &reg, &s, "mine");
    // A credential that became wrong is named as such.
    let cfg = env.path("home/.docker/config.json");
    let text = fs::read_to_string(&cfg).unwrap();
    use base64::Engine;
    let good = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let bad = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:nope"));
    fs::write(&cfg, text.replace(&good, &bad)).unwrap();
    let out = lf(&env, Some(&reg), &["pull", &s.reference]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused the credential of alice"),
        "{}",
        stderr(&out)
    );
    assert!(lf(&env, Some(&reg), &["logout", &reg.host])
        .status
        .success());
    assert!(!fs::read_to_string(&cfg).unwrap().contains(&bad));
}

#[test]
fn token_auth_pulls_and_pushes_after_login() {
    let env = Env::new();
    let reg = Registry::start(Options {
        tls: false,
        auth: Auth::Token,
    });
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let s = reg.seed_oci(&scratch, "tok:1");
    logs_in_then_pulls_and_pushes(&env, &reg, &s, "tok2");
}

#[test]
fn referrers_are_pulled_and_pushed_with_their_subject() {
    let env = Env::new();
    let reg = Registry::plain();
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let s = reg.seed_oci(&scratch, "signed:1");
    let referrer = reg.put_referrer("signed", &s.digest, s.size, MEDIA_OCI_MANIFEST);
    // Without --referrers: the image only.
    lf_ok(&env, Some(&reg), &["pull", &s.reference]);
    assert_eq!(env.images().len(), 1);
    lf_ok(&env, Some(&reg), &["pull", "--referrers", &s.reference]);
    let names: Vec<String> = env.images().into_iter().map(|(n, _)| n).collect();
    let by_digest = format!("{}/signed@{referrer}", reg.host);
    assert!(names.contains(&by_digest), "{names:?}");
    // Pushed elsewhere with --referrers: the referrer and the fallback tag listing it.
    lf_ok(
        &env,
        Some(&reg),
        &[
            "push",
            "--referrers",
            &s.reference,
            &format!("{}/copy:1", reg.host),
        ],
    );
    let tag = common::registry::referrers_tag(&s.digest);
    let index = reg.manifest("copy", &tag);
    assert_eq!(
        index.status,
        200,
        "{}",
        String::from_utf8_lossy(&index.body)
    );
    let listed: Vec<String> = index.json()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_owned())
        .collect();
    assert!(listed.contains(&referrer), "{listed:?}");
}

#[test]
fn names_on_the_command_line_are_read_as_docker_reads_them() {
    let env = Env::new();
    let reg = Registry::plain();
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let s = reg.seed_oci(&scratch, "library/app:7");
    // --name as a repository takes the reference's tag; as a full name, is used as given.
    lf_ok(
        &env,
        Some(&reg),
        &["pull", "--name", "mine/app", &s.reference],
    );
    lf_ok(
        &env,
        Some(&reg),
        &["pull", "--name", "other:v", &s.reference],
    );
    let by_digest = format!("{}/library/app@{}", reg.host, s.digest);
    lf_ok(&env, Some(&reg), &["pull", &by_digest]);
    let names: Vec<String> = env.images().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"mine/app:7".to_owned()), "{names:?}");
    assert!(names.contains(&"other:v".to_owned()), "{names:?}");
    assert!(names.contains(&by_digest), "{names:?}");
    // A bad reference is one line naming it, before any connection.
    let out = lf(&env, None, &["pull", "Host.example/Upper"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Host.example/Upper"),
        "{}",
        stderr(&out)
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}
