//! Compatibility with the real peers from Debian: umoci builds a layout, layoutfs imports and
//! exports it, skopeo and umoci read the export, a private containerd imports it with
//! `ctr images import`, and what `ctr images export` and `skopeo copy` write imports back.
//! The tools must be installed (scripts/setup); a missing one fails the test.

mod common;

use std::fs;
use std::process::Command;

use common::gen::LayoutBuilder;
use common::{sh, skopeo_digest, stderr, umoci_layout, Containerd, Env};

#[test]
fn umoci_layout_exports_to_skopeo_umoci_and_containerd_and_back() {
    let env = Env::new();
    let layout = env.path("umoci-layout");
    let digest = umoci_layout(&env, &layout);
    assert_eq!(
        env.ok(&["import", "--name", "demo", layout.to_str().unwrap()]),
        "demo:base\n"
    );
    let archive = env.path("demo.tar");
    env.ok(&["export", "-o", archive.to_str().unwrap(), "demo:base"]);

    // skopeo reads the archive and copies it into a layout of its own.
    let a = format!("oci-archive:{}", archive.display());
    assert_eq!(skopeo_digest(&a), digest);
    let copy = env.path("skopeo-copy");
    sh(Command::new("skopeo").args(["copy", &a, &format!("oci:{}:copied", copy.display())]));
    assert_eq!(
        skopeo_digest(&format!("oci:{}:copied", copy.display())),
        digest
    );

    // tar -x then umoci unpack gives back the files.
    let x = env.path("extracted");
    fs::create_dir(&x).unwrap();
    sh(Command::new("tar")
        .arg("-C")
        .arg(&x)
        .arg("-xf")
        .arg(&archive));
    let bundle = env.path("bundle");
    sh(Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:base", x.display())])
        .arg(&bundle));
    assert_eq!(
        fs::read(bundle.join("rootfs/etc/hello")).unwrap(),
        b"hello from layoutfs\n"
    );

    // What skopeo writes as an archive imports, under the tag skopeo gave it.
    let sk = env.path("skopeo.tar");
    sh(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:base", layout.display()),
        &format!("oci-archive:{}:v2", sk.display()),
    ]));
    let other = Env::new();
    assert_eq!(
        other.ok(&["import", "--name", "fromskopeo", sk.to_str().unwrap()]),
        "fromskopeo:v2\n"
    );
    // And a skopeo layout directory as well.
    assert_eq!(
        other.ok(&["import", "--name", "fromskopeo", copy.to_str().unwrap()]),
        "fromskopeo:copied\n"
    );
    let imgs = other.images();
    assert!(imgs.iter().all(|(_, d)| d == &digest), "{imgs:?}");

    // containerd imports the export; what it exports imports back byte for byte.
    let ctrd = Containerd::start();
    sh(ctrd
        .ctr()
        .args(["images", "import", "--no-unpack"])
        .arg(&archive));
    let ls = sh(ctrd.ctr().args(["images", "ls", "-q"]));
    assert_eq!(ls.trim(), "demo:base");
    let ctr_tar = env.path("ctr.tar");
    sh(ctrd
        .ctr()
        .args(["images", "export"])
        .arg(&ctr_tar)
        .arg("demo:base"));
    let back = Env::new();
    assert_eq!(
        back.ok(&["import", ctr_tar.to_str().unwrap()]),
        "demo:base\n"
    );
    let again = back.cmd(&["export", "demo:base"]).output().unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        again.stdout,
        fs::read(&archive).unwrap(),
        "ctr round trip changes no byte of the export"
    );
    // The same through a pipe: `ctr images export -` streams into `layoutfs import -`.
    let piped = Env::new();
    let ctr_out = ctrd
        .ctr()
        .args(["images", "export", "-", "demo:base"])
        .output()
        .unwrap();
    assert!(ctr_out.status.success(), "{}", stderr(&ctr_out));
    let o = piped.run_with_stdin(&["import", "-"], &ctr_out.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn containerd_takes_multi_platform_indexes_both_ways() {
    let env = Env::new();
    let mut b = LayoutBuilder::new(&env.path("multi"));
    let l1 = b.add_random_layer(300_000, 1);
    let l2 = b.add_random_layer(300_000, 2);
    let amd = b.add_manifest(&[l1], "amd64");
    let arm = b.add_manifest(&[l2], "arm64");
    let idx = b.add_index(vec![amd, arm]);
    b.tag(&idx, Some("latest"));
    b.write_index();
    env.ok(&[
        "import",
        "--name",
        "docker.io/library/multi",
        b.dir.to_str().unwrap(),
    ]);
    let archive = env.path("multi.tar");
    env.ok(&[
        "export",
        "-o",
        archive.to_str().unwrap(),
        "docker.io/library/multi",
    ]);

    let ctrd = Containerd::start();
    sh(ctrd
        .ctr()
        .args(["images", "import", "--all-platforms", "--no-unpack"])
        .arg(&archive));
    let ls = sh(ctrd.ctr().args(["images", "ls"]));
    assert!(ls.contains("linux/amd64,linux/arm64"), "{ls}");
    let out = env.path("ctr-multi.tar");
    sh(ctrd
        .ctr()
        .args(["images", "export", "--all-platforms"])
        .arg(&out)
        .arg("docker.io/library/multi:latest"));
    let back = Env::new();
    assert_eq!(
        back.ok(&["import", out.to_str().unwrap()]),
        "docker.io/library/multi:latest\n"
    );
    assert_eq!(back.images()[0].1, idx.digest.to_string());
    // skopeo picks this host's platform from the exported index.
    let m = skopeo_digest(&format!("oci-archive:{}", archive.display()));
    assert!(m.starts_with("sha256:"));
}
