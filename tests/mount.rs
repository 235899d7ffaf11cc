//! Real mounts (root and /dev/fuse, as in CI; these tests never skip): the tree through the
//! kernel with ls, stat, find, cat, du and tar; skopeo, umoci and a private containerd reading
//! the mount; live updates; unmounting by signal and by umount; and the errors of faults.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::gen::LayoutBuilder;
use common::mount::{is_mounted, kernel_has_passthrough, Mounted};
use common::{
    require, sh, skopeo_digest, stderr, tree, umoci_layout, within_a_second, Containerd, Env,
};

/// An environment with two images of "busybox" sharing layers, also named
/// docker.io/library/busybox:1.36.
fn busybox_env() -> Env {
    let env = Env::new();
    let dir = env.path("src");
    let mut b = LayoutBuilder::new(&dir);
    let shared = b.add_random_layer(1 << 20, 1);
    let own = b.add_random_layer(3 << 20, 2);
    let m1 = b.add_manifest(std::slice::from_ref(&shared), "amd64");
    let m2 = b.add_manifest(&[shared, own], "amd64");
    b.tag(&m1, Some("latest"))
        .tag(&m2, Some("big"))
        .write_index();
    env.ok(&["import", "--name", "busybox", dir.to_str().unwrap()]);
    env.ok(&["tag", "busybox:latest", "docker.io/library/busybox:1.36"]);
    env
}

/// The contents of the tar archive `bytes`, extracted into `dir`.
fn untar(bytes: &[u8], dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs::create_dir_all(dir).unwrap();
    let mut child = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-xf")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), bytes).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    tree(dir)
}

#[test]
fn ls_stat_find_cat_du_and_tar_through_the_mount() {
    let env = busybox_env();
    let m = Mounted::start(&env, "mnt", &[]);
    let mnt = m.dir.to_str().unwrap().to_owned();

    assert_eq!(
        sh(Command::new("ls").arg(m.path("busybox"))),
        "blobs\nindex.json\noci-layout\n"
    );
    assert_eq!(sh(Command::new("ls").arg(&m.dir)), "busybox\ndocker.io\n");
    assert_eq!(
        sh(Command::new("stat")
            .args(["-c", "%n %F %a %s"])
            .arg(m.path("busybox/oci-layout"))
            .arg(m.path("busybox/blobs"))),
        format!(
            "{mnt}/busybox/oci-layout regular file 444 30\n{mnt}/busybox/blobs directory 755 4096\n"
        )
    );

    // Every blob listed is the store's file, byte for byte, with its size and mode.
    let found = sh(Command::new("find")
        .arg(&mnt)
        .args(["-type", "f", "-path", "*/blobs/*"]));
    let blobs: Vec<&str> = found.lines().collect();
    assert!(blobs.len() >= 8, "{found}"); // two repositories, each 2 manifests and 2 layers or more
    for b in &blobs {
        let hex = Path::new(b).file_name().unwrap().to_str().unwrap();
        let store_file = env.store.join("blobs/sha256").join(hex);
        let meta = fs::metadata(b).unwrap();
        assert_eq!(meta.len(), fs::metadata(&store_file).unwrap().len());
        assert_eq!(meta.mode() & 0o777, 0o444);
        let cat = Command::new("cat").arg(b).output().unwrap();
        assert!(cat.status.success(), "cat {b}: {}", stderr(&cat));
        assert!(
            cat.stdout == fs::read(&store_file).unwrap(),
            "cat {b}: other bytes"
        );
    }
    // du counts what the store holds.
    let du = sh(Command::new("du")
        .args(["-sb"])
        .arg(m.path("busybox/blobs")));
    let total: u64 = blobs
        .iter()
        .filter(|b| b.contains("/busybox/blobs/") && !b.contains("docker.io"))
        .map(|b| fs::metadata(b).unwrap().len())
        .sum();
    let du_bytes: u64 = du.split_whitespace().next().unwrap().parse().unwrap();
    assert!(du_bytes >= total, "du {du_bytes} < {total}");

    // tar of the directory is the export, file for file.
    let tarred = Command::new("tar")
        .arg("-C")
        .arg(m.path("busybox"))
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(tarred.status.success(), "{}", stderr(&tarred));
    let exported = env.run(&["export", "busybox"]);
    assert!(exported.status.success());
    assert_eq!(
        untar(&tarred.stdout, &env.path("from-mount")),
        untar(&exported.stdout, &env.path("from-export"))
    );
    let exported = env.run(&["export", "docker.io/library/busybox"]);
    let tarred = Command::new("tar")
        .arg("-C")
        .arg(m.path("docker.io/library/busybox"))
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert_eq!(
        untar(&tarred.stdout, &env.path("from-mount-2")),
        untar(&exported.stdout, &env.path("from-export-2"))
    );

    let log = m.log();
    if kernel_has_passthrough() {
        assert!(log.contains("passthrough=true"), "{log}");
    }
    assert!(!log.contains("passthrough unavailable"), "{log}");
    assert_eq!(m.errors(), Vec::<String>::new(), "{log}");
}

#[test]
fn skopeo_umoci_and_containerd_read_the_mount() {
    require("skopeo");
    require("umoci");
    let env = Env::new();
    let layout = env.path("umoci-layout");
    let digest = umoci_layout(&env, &layout);
    env.ok(&["import", "--name", "demo", layout.to_str().unwrap()]);
    let m = Mounted::start(&env, "mnt", &[]);
    let repo = m.path("demo");
    let oci_ref = format!("oci:{}:base", repo.display());

    assert_eq!(skopeo_digest(&oci_ref), digest);
    let out = env.path("copied");
    sh(Command::new("skopeo")
        .args(["copy", &oci_ref])
        .arg(format!("oci:{}:base", out.display())));
    assert_eq!(
        skopeo_digest(&format!("oci:{}:base", out.display())),
        digest
    );

    let bundle = env.path("bundle");
    sh(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:base", repo.display()))
        .arg(&bundle));
    assert_eq!(
        fs::read(bundle.join("rootfs/etc/hello")).unwrap(),
        b"hello from layoutfs\n"
    );

    // tar of the mount piped into containerd.
    let ctrd = Containerd::start();
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&repo)
        .args(["-cf", "-", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let imported = ctrd
        .ctr()
        .args(["images", "import", "--no-unpack", "-"])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success());
    assert!(imported.status.success(), "{}", stderr(&imported));
    let listed = sh(ctrd.ctr().args(["images", "ls", "-q"]));
    assert!(listed.lines().any(|l| l == "demo:base"), "{listed}");
    let check = sh(ctrd.ctr().args(["images", "check"]));
    assert!(check.contains("complete"), "{check}");
    assert!(check.contains(&digest), "{check}");
}

#[test]
fn images_imported_tagged_and_removed_show_within_a_second() {
    let env = busybox_env();
    let m = Mounted::start(&env, "mnt", &[]);
    // Look first, so that the kernel has something cached to invalidate.
    assert!(m.path("busybox/index.json").exists());
    assert!(!m.path("alpine").exists());

    let dir = env.path("alpine-src");
    LayoutBuilder::new(&dir).small_image("3", 1, 1000, 7);
    env.ok(&["import", "--name", "alpine", dir.to_str().unwrap()]);
    within_a_second("import", || m.path("alpine/index.json").exists());

    env.ok(&["tag", "alpine:3", "alpine:latest"]);
    within_a_second("tag", || {
        fs::read_to_string(m.path("alpine/index.json")).is_ok_and(|s| s.contains("\"latest\""))
    });
    let exported = env.run(&["export", "alpine"]);
    let index = untar(&exported.stdout, &env.path("x"))["index.json"].clone();
    assert_eq!(fs::read(m.path("alpine/index.json")).unwrap(), index);

    env.ok(&["rm", "alpine"]);
    within_a_second("rm", || !m.path("alpine").exists());
    within_a_second("rm from the listing", || {
        sh(Command::new("ls").arg(&m.dir)) == "busybox\ndocker.io\n"
    });
}

#[test]
fn sigterm_sigint_and_umount_end_the_daemon_with_success() {
    let env = busybox_env();
    for (how, name) in [
        ("SIGTERM", "a"),
        ("SIGINT", "b"),
        ("umount", "c"),
        ("fusermount3 -u", "d"),
    ] {
        let m = Mounted::start(&env, name, &[]);
        let dir = m.dir.clone();
        // A reader holds a file open while the signal comes.
        let mut open = fs::File::open(m.path("busybox/index.json")).unwrap();
        let mut s = String::new();
        open.read_to_string(&mut s).unwrap();
        drop(open);
        match how {
            "SIGTERM" => unsafe {
                libc::kill(m.pid(), libc::SIGTERM);
            },
            "SIGINT" => unsafe {
                libc::kill(m.pid(), libc::SIGINT);
            },
            "umount" => {
                sh(Command::new("umount").arg(&dir));
            }
            _ => {
                require("fusermount3");
                sh(Command::new("fusermount3").arg("-u").arg(&dir));
            }
        }
        let status = m.wait();
        assert!(status.success(), "{how}: {status}");
        assert!(!is_mounted(&dir), "{how}: still mounted");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }
}

#[test]
fn faults_get_errors_and_the_store_is_untouched() {
    let env = busybox_env();
    let before = env.images();

    // Not an empty directory, not a directory, a store that cannot be opened: one line each.
    let full = env.path("full");
    fs::create_dir_all(&full).unwrap();
    fs::write(full.join("x"), b"x").unwrap();
    let file = env.path("file");
    fs::write(&file, b"x").unwrap();
    for (mp, what) in [
        (&full, "not an empty directory"),
        (&file, "not an empty directory"),
    ] {
        let out = env.run(&["mount", mp.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(what) && err.contains(mp.to_str().unwrap()),
            "{err}"
        );
        assert!(!is_mounted(mp));
    }
    let empty = env.path("empty");
    fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_layoutfs"))
        .arg("--store")
        .arg(&file)
        .arg("mount")
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(!is_mounted(&empty));

    let m = Mounted::start(&env, "mnt", &["--read-only"]);
    // Unknown paths, and writes into a read-only mount.
    let enoent = fs::metadata(m.path("busybox/nope")).unwrap_err();
    assert_eq!(enoent.raw_os_error(), Some(libc::ENOENT));
    for attempt in [
        fs::write(m.path("busybox/new"), b"x"),
        fs::write(m.path("busybox/index.json"), b"{}"),
        fs::create_dir(m.path("newrepo")),
        fs::remove_file(m.path("busybox/oci-layout")),
        fs::remove_dir_all(m.path("busybox")),
        fs::rename(m.path("busybox"), m.path("other")),
        fs::set_permissions(
            m.path("busybox/index.json"),
            fs::Permissions::from_mode(0o600),
        ),
    ] {
        assert_eq!(attempt.unwrap_err().raw_os_error(), Some(libc::EROFS));
    }

    // A blob vanished from the store: EIO and a log line naming it.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(m.path("busybox/index.json")).unwrap()).unwrap();
    let manifest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let hex = manifest.strip_prefix("sha256:").unwrap();
    let store_file = env.store.join("blobs/sha256").join(hex);
    let saved = fs::read(&store_file).unwrap();
    fs::remove_file(&store_file).unwrap();
    let err = fs::read(m.path(&format!("busybox/blobs/sha256/{hex}"))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(m.log().contains(&manifest), "{}", m.log());
    fs::write(&store_file, &saved).unwrap();
    assert_eq!(
        fs::read(m.path(&format!("busybox/blobs/sha256/{hex}"))).unwrap(),
        saved
    );
    drop(m);
    assert_eq!(env.images(), before);
}

#[test]
fn no_passthrough_and_read_only_mounts_serve_the_same_bytes() {
    let env = busybox_env();
    let m = Mounted::start(&env, "mnt", &["--no-passthrough", "--read-only"]);
    let dir = m.path("busybox/blobs/sha256");
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let store_file = env.store.join("blobs/sha256").join(p.file_name().unwrap());
        assert_eq!(fs::read(&p).unwrap(), fs::read(store_file).unwrap());
    }
    assert_eq!(
        fs::metadata(m.path("busybox")).unwrap().mode() & 0o777,
        0o555
    );
    assert_eq!(
        fs::write(m.path("busybox/new"), b"x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );
    assert!(m.log().contains("passthrough=false"), "{}", m.log());
}
