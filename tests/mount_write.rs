//! Writing into a real mount imports (root and /dev/fuse, as in CI; these tests never skip):
//! `cp -r` of a umoci layout, `tar -x` of what `ctr images export` writes, `skopeo copy` (two at
//! once into one repository), `rm -r` and `mv`, each checked with `layoutfs images` and an
//! export compared byte for byte with the source; and the faults: bad blobs, links, a full
//! disk, and the daemon killed in the middle of a copy.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gen::LayoutBuilder;
use common::mount::{is_mounted, Mounted};
use common::writers_support::{blobs_of, exported_blobs, names, same_blobs, store_is_clean};
use common::{
    require, sh, skopeo_digest, stderr, tree, umoci_layout, within_a_second, Containerd, Env, Tmpfs,
};

/// Rounds of the daemon crash test: a kill at a random point of a copy, then a whole copy.
const CRASH_ROUNDS: u64 = 20;

/// `cp -r SRC DST`, whatever its exit.
fn cp_r(src: impl AsRef<Path>, dst: impl AsRef<Path>) -> std::process::Output {
    Command::new("cp")
        .arg("-r")
        .arg(src.as_ref())
        .arg(dst.as_ref())
        .output()
        .unwrap()
}

/// `cp -r SRC DST`, which must succeed.
fn cp_r_ok(src: impl AsRef<Path>, dst: impl AsRef<Path>) {
    let out = cp_r(src, dst);
    assert!(out.status.success(), "cp -r: {}", stderr(&out));
}

#[test]
fn cp_tar_and_skopeo_copy_import_into_the_mount() {
    require("skopeo");
    let env = Env::new();
    let layout = env.path("umoci-layout");
    let digest = umoci_layout(&env, &layout);
    let m = Mounted::start(&env, "mnt", &[]);

    // cp -r of a umoci layout.
    cp_r_ok(&layout, m.path("copied"));
    assert_eq!(env.images(), [("copied:base".to_owned(), digest.clone())]);
    same_blobs(&exported_blobs(&env, "copied:base"), &blobs_of(&layout));
    // The mount shows the blobs copied; index.json and oci-layout are its own renderings.
    same_blobs(&blobs_of(&m.path("copied")), &blobs_of(&layout));
    let shown: serde_json::Value =
        serde_json::from_slice(&fs::read(m.path("copied/index.json")).unwrap()).unwrap();
    assert_eq!(shown["manifests"][0]["digest"], digest.as_str());

    // tar -x of what containerd exports, into a directory made with mkdir.
    let archive = env.path("demo.tar");
    env.ok(&["export", "-o", archive.to_str().unwrap(), "copied:base"]);
    let ctrd = Containerd::start();
    sh(ctrd
        .ctr()
        .args(["images", "import", "--no-unpack"])
        .arg(&archive));
    let ctr_tar = env.path("ctr.tar");
    sh(ctrd
        .ctr()
        .args(["images", "export"])
        .arg(&ctr_tar)
        .arg("copied:base"));
    fs::create_dir(m.path("fromctr")).unwrap();
    sh(Command::new("tar")
        .arg("-C")
        .arg(m.path("fromctr"))
        .arg("-xf")
        .arg(&ctr_tar));
    assert!(
        names(&env).contains(&"fromctr:base".to_owned()),
        "{:?}",
        names(&env)
    );
    same_blobs(&exported_blobs(&env, "fromctr:base"), &blobs_of(&layout));
    // Again over the same directory. Plain tar unlinks each file it finds before writing it,
    // and the archive lists blobs before index.json: the blobs the image needs are EBUSY
    // (tar: "Cannot open: File exists"), and the image stays whole.
    let again = Command::new("tar")
        .arg("-C")
        .arg(m.path("fromctr"))
        .arg("-xf")
        .arg(&ctr_tar)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(stderr(&again).contains("File exists"), "{}", stderr(&again));
    assert!(names(&env).contains(&"fromctr:base".to_owned()));
    same_blobs(&exported_blobs(&env, "fromctr:base"), &blobs_of(&layout));
    // With --overwrite tar rewrites each file in place: each blob is verified again.
    sh(Command::new("tar")
        .arg("--overwrite")
        .arg("-C")
        .arg(m.path("fromctr"))
        .arg("-xf")
        .arg(&ctr_tar));
    assert!(names(&env).contains(&"fromctr:base".to_owned()));

    // skopeo copy into the mount, then two at once into one repository.
    let src = format!("oci:{}:base", layout.display());
    let dst = |tag: &str| format!("oci:{}:{tag}", m.path("sk").display());
    sh(Command::new("skopeo").args(["copy", "-q", &src, &dst("1.0")]));
    let mut children: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|t| {
            Command::new("skopeo")
                .args(["copy", "-q", &src, &dst(t)])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children.drain(..) {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sk: Vec<String> = names(&env)
        .into_iter()
        .filter(|n| n.starts_with("sk:"))
        .collect();
    assert_eq!(sk, ["sk:1.0", "sk:a", "sk:b", "sk:c"], "no tag lost");
    for tag in ["1.0", "a", "b", "c"] {
        assert_eq!(skopeo_digest(&dst(tag)), digest);
        same_blobs(
            &exported_blobs(&env, &format!("sk:{tag}")),
            &blobs_of(&layout),
        );
    }
    // Deduplicated: one copy of each blob in the store, none that the source lacks.
    let stored = blobs_of(&env.store);
    same_blobs(&stored, &blobs_of(&layout));
    assert_eq!(m.errors(), Vec::<String>::new(), "{}", m.log());
    drop(m);
    store_is_clean(&env);
}

#[test]
fn rm_r_removes_a_repository_and_mv_renames_it() {
    let env = Env::new();
    let src = env.path("src");
    let mut b = LayoutBuilder::new(&src);
    b.small_image("1", 2, 70_000, 1);
    b.small_image("2", 2, 80_000, 2);
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir_all(m.path("team")).unwrap();
    cp_r_ok(&src, m.path("team/app"));
    cp_r_ok(&src, m.path("other"));
    assert_eq!(
        names(&env),
        ["other:1", "other:2", "team/app:1", "team/app:2"]
    );
    let stored = tree(&env.store.join("blobs/sha256")).len();

    sh(Command::new("mv").arg(m.path("team")).arg(m.path("group")));
    assert_eq!(
        names(&env),
        ["group/app:1", "group/app:2", "other:1", "other:2"]
    );
    same_blobs(&exported_blobs(&env, "group/app"), &blobs_of(&src));
    assert!(!m.path("team").exists());
    sh(Command::new("mv")
        .arg(m.path("group/app"))
        .arg(m.path("group/renamed")));
    assert_eq!(
        names(&env),
        ["group/renamed:1", "group/renamed:2", "other:1", "other:2"]
    );

    sh(Command::new("rm").arg("-r").arg(m.path("group")));
    assert_eq!(names(&env), ["other:1", "other:2"]);
    assert!(!m.path("group").exists());
    assert_eq!(fs::read_dir(&m.dir).unwrap().count(), 1);
    // Blobs stay in the store (gc frees them), and the other repository is whole.
    assert_eq!(tree(&env.store.join("blobs/sha256")).len(), stored);
    same_blobs(&exported_blobs(&env, "other"), &blobs_of(&src));

    // A tag is removed by editing index.json.
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(m.path("other/index.json")).unwrap()).unwrap();
    index["manifests"].as_array_mut().unwrap().remove(0);
    fs::write(
        m.path("other/index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    assert_eq!(names(&env), ["other:2"]);

    // A repository imported by another process, whose files the mount never saw written.
    env.ok(&["import", src.to_str().unwrap(), "--name", "outside"]);
    within_a_second("the import shows", || m.path("outside/index.json").exists());
    sh(Command::new("rm").arg("-r").arg(m.path("outside")));
    assert!(!m.path("outside").exists());
    assert_eq!(names(&env), ["other:2"]);
}

#[test]
fn mv_of_a_repository_while_its_files_are_written_imports_under_the_new_name() {
    // Every file open (its index.json first, then each blob at its name, as cp writes them)
    // and half written before `mv r s`, finished and closed after it.
    use std::io::Write;
    let env = Env::new();
    let src = env.path("src");
    let mut b = LayoutBuilder::new(&src);
    b.small_image("1", 2, 90_000, 7);
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir_all(m.path("r/blobs/sha256")).unwrap();
    let mut files: Vec<(fs::File, Vec<u8>)> = Vec::new();
    let mut open = |path: PathBuf, bytes: Vec<u8>| {
        let mut f = fs::File::create(path).unwrap();
        f.write_all(&bytes[..bytes.len() / 2]).unwrap();
        files.push((f, bytes));
    };
    open(
        m.path("r/index.json"),
        fs::read(src.join("index.json")).unwrap(),
    );
    for (name, bytes) in tree(&src.join("blobs/sha256")) {
        open(m.path(&format!("r/blobs/sha256/{name}")), bytes);
    }
    sh(Command::new("mv").arg(m.path("r")).arg(m.path("s")));
    assert!(!m.path("r").exists());
    for (mut f, bytes) in files {
        f.write_all(&bytes[bytes.len() / 2..]).unwrap();
        drop(f);
    }
    fs::write(
        m.path("s/oci-layout"),
        fs::read(src.join("oci-layout")).unwrap(),
    )
    .unwrap();
    assert_eq!(names(&env), ["s:1"]);
    same_blobs(&exported_blobs(&env, "s:1"), &blobs_of(&src));
    store_is_clean(&env);
}

/// A layout with one image of `mib` MiB of layers: `big:1`.
fn big_layout(env: &Env, name: &str, mib: u64) -> PathBuf {
    let dir = env.path(name);
    let mut b = LayoutBuilder::new(&dir);
    let l1 = b.add_random_layer(mib << 20, 7);
    let l2 = b.add_random_layer(1 << 20, 8);
    let m = b.add_manifest(&[l1, l2], "amd64");
    b.tag(&m, Some("1")).write_index();
    dir
}

#[test]
fn bad_blobs_and_links_are_refused_and_nothing_enters_the_store() {
    let env = Env::new();
    let src = env.path("src");
    let mut b = LayoutBuilder::new(&src);
    b.small_image("1", 2, 100_000, 3);
    let m = Mounted::start(&env, "mnt", &[]);
    cp_r_ok(&src, m.path("good"));
    let before = env.images();

    // A copy whose layer is corrupted: cp fails on that file, naming it.
    let bad = env.path("bad");
    LayoutBuilder::new(&bad).small_image("1", 2, 100_000, 33);
    let (hex, bytes) = tree(&bad.join("blobs/sha256"))
        .into_iter()
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    let file = bad.join("blobs/sha256").join(&hex);
    let mut damaged = bytes.clone();
    damaged[100] ^= 0xff;
    fs::write(&file, &damaged).unwrap();
    let out = cp_r(&bad, m.path("bad"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&hex), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
    assert!(m.log().contains(&hex), "{}", m.log());
    assert_eq!(env.images(), before, "nothing half-registered");
    assert!(
        !env.store.join("blobs/sha256").join(&hex).exists(),
        "the damaged blob entered the store"
    );
    // The layout's good blobs are in (deduplicated for a later copy), nothing else.
    let stored = blobs_of(&env.store);
    same_blobs(&stored, &{
        let mut all = blobs_of(&src);
        all.extend(blobs_of(&bad));
        all
    });

    // Blob names that are no digest, and sha384: EINVAL.
    let dir = m.path("good/blobs/sha256");
    for name in [hex.to_uppercase(), hex[1..].to_owned()] {
        let e = fs::write(dir.join(&name), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{name}");
    }
    let e = fs::create_dir(m.path("good/blobs/sha384")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let e = fs::create_dir(m.path("Not_A_Name")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));

    // Symlinks, hard links and device nodes: EPERM.
    let target = dir.join(blobs_of(&src).keys().next().unwrap());
    let e = std::os::unix::fs::symlink(&target, m.path("good/link")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    let e = fs::hard_link(&target, m.path("good/hard")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    let fifo = std::ffi::CString::new(m.path("good/fifo").to_str().unwrap()).unwrap();
    // SAFETY: a plain syscall on a NUL-terminated path.
    let r = unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    // Blobs never change in place.
    let e = fs::OpenOptions::new()
        .append(true)
        .open(&target)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"x").and_then(|_| f.sync_all()))
        .unwrap_err();
    assert!(
        [libc::EFBIG, libc::EIO, libc::EACCES].contains(&e.raw_os_error().unwrap()),
        "{e}"
    );
    assert_eq!(env.images(), before);
    assert_eq!(blobs_of(&env.store), stored);
    drop(m);
    store_is_clean(&env);
}

#[test]
fn a_full_disk_is_enospc_to_the_writer_and_the_store_is_unchanged() {
    let mut env = Env::new();
    let small = big_layout(&env, "small", 1);
    let big = big_layout(&env, "big", 24);
    env.store = env.path("tmpfs/store");
    let _tmpfs = Tmpfs::mount(&env.path("tmpfs"), 16);
    let m = Mounted::start(&env, "mnt", &[]);
    cp_r_ok(&small, m.path("small"));
    let before = env.images();
    let stored = blobs_of(&env.store);

    let out = cp_r(&big, m.path("big"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.images(), before);
    // What was stored is still there; the big layer is not; the small blobs of the big
    // layout that fitted are whole.
    let now = blobs_of(&env.store);
    assert!(stored.iter().all(|(k, v)| now.get(k) == Some(v)));
    let (big_layer, _) = tree(&big.join("blobs/sha256"))
        .into_iter()
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    assert!(!now.contains_key(&big_layer));
    same_blobs(&now, &{
        let mut all = blobs_of(&small);
        all.extend(blobs_of(&big));
        all
    });
    // The space is given back: the failed upload left nothing.
    let ingests = fs::read_dir(env.store.join("ingest")).unwrap().count();
    assert_eq!(ingests, 0);
    // And the mount still works.
    cp_r_ok(&small, m.path("again"));
    assert!(names(&env).contains(&"again:1".to_owned()));
    drop(m);
}

#[test]
fn the_daemon_killed_mid_copy_leaves_nothing_half_done() {
    let env = Env::new();
    let big = big_layout(&env, "big", 128);
    // A whole copy first, to know how long one takes (and that it works).
    let m = Mounted::start(&env, "mnt", &[]);
    let t = Instant::now();
    cp_r_ok(&big, m.path("big"));
    let whole = t.elapsed().as_millis() as u64;
    assert_eq!(names(&env), ["big:1"]);
    same_blobs(&exported_blobs(&env, "big:1"), &blobs_of(&big));
    sh(Command::new("rm").arg("-r").arg(m.path("big")));
    drop(m);
    env.ok(&["gc", "--grace", "0"]);
    assert!(blobs_of(&env.store).is_empty());
    eprintln!("a whole cp -r takes {whole} ms");

    let seed = common::seed();
    let mut rng = common::gen::SplitMix(seed);
    let mut killed_mid_way = 0;
    for round in 0..CRASH_ROUNDS {
        let m = Mounted::start(&env, "mnt", &[]);
        let mut cp = Command::new("cp")
            .arg("-r")
            .arg(&big)
            .arg(m.path("big"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = rng.next() % whole.max(1);
        std::thread::sleep(Duration::from_millis(delay));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(m.pid(), libc::SIGKILL) };
        let _ = cp.wait();
        drop(m); // lazily unmounts the dead mount
        assert!(!is_mounted(&env.path("mnt")));
        let registered = names(&env);
        eprintln!("round {round}: killed after {delay} ms (seed {seed}): {registered:?}");
        assert!(
            registered.is_empty() || registered == ["big:1"],
            "round {round}: {registered:?}"
        );

        // A new mount cleans the dead daemon's ingests; the store has only whole blobs.
        let m = Mounted::start(&env, "mnt", &[]);
        if registered.is_empty() {
            killed_mid_way += 1;
            // The directory cp made is kept (an empty repository, as on a disk a killed cp
            // leaves its directory), with no image: nothing half-copied is registered.
            if m.path("big").exists() {
                let index: serde_json::Value =
                    serde_json::from_slice(&fs::read(m.path("big/index.json")).unwrap()).unwrap();
                assert_eq!(index["manifests"], serde_json::json!([]), "round {round}");
                sh(Command::new("rm").arg("-r").arg(m.path("big")));
            }
        } else {
            sh(Command::new("rm").arg("-r").arg(m.path("big")));
        }
        store_is_clean(&env);
        // A second copy completes over whatever the killed one left.
        cp_r_ok(&big, m.path("big"));
        assert_eq!(names(&env), ["big:1"], "round {round}");
        same_blobs(&exported_blobs(&env, "big:1"), &blobs_of(&big));
        // The next round starts from an empty store.
        sh(Command::new("rm").arg("-r").arg(m.path("big")));
        drop(m);
        store_is_clean(&env);
        env.ok(&["gc", "--grace", "0"]);
        assert!(blobs_of(&env.store).is_empty(), "round {round}");
    }
    assert!(
        killed_mid_way >= CRASH_ROUNDS / 4,
        "{killed_mid_way} kills landed mid-copy"
    );
}

/// Temporary files written before the timed unmount, and opens of one blob held at once.
const MANY_FILES: usize = 3000;
/// A login shell's usual soft limit on open descriptors.
const LOW_NOFILE: u64 = 1024;
/// How long the daemon may take to exit after an unmount, with `MANY_FILES` temporary files.
const EXIT_WITHIN: Duration = Duration::from_secs(1);

/// The descriptors process `pid` has open.
fn fds_of(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn isatty_shell_redirection_unmount_and_many_files_leave_a_quiet_log_and_a_fast_exit() {
    let env = Env::new();
    let src = env.path("src");
    let mut b = LayoutBuilder::new(&src);
    b.small_image("1", 2, 50_000, 3);
    b.small_image("2", 2, 60_000, 4);
    // Started with a soft limit below the opens to come: the daemon raises it to the hard one.
    let m = Mounted::start_with_nofile(&env, "mnt", &[], LOW_NOFILE);
    let (soft, hard) = m.nofile_limits();
    assert!(
        hard > LOW_NOFILE,
        "the hard limit ({hard}) leaves nothing to raise"
    );
    assert_eq!(soft, hard, "the daemon's soft limit on descriptors");
    cp_r_ok(&src, m.path("r"));
    let idle = fds_of(m.pid());

    // isatty() on mount files: an ioctl the mount answers ENOTTY, quietly.
    let out = Command::new("sh")
        .arg("-c")
        .arg("test -t 0 < \"$1\"/oci-layout; test -t 0 < \"$1\"/index.json; echo $?")
        .arg("sh")
        .arg(m.path("r"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "not a tty"
    );

    // bash's `echo … > index.json`: an empty first close, then the bytes.
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(m.path("r/index.json")).unwrap()).unwrap();
    index["manifests"].as_array_mut().unwrap().remove(0);
    let out = Command::new("bash")
        .arg("-c")
        .arg("echo \"$2\" > \"$1\"/index.json")
        .arg("bash")
        .arg(m.path("r"))
        .arg(serde_json::to_string(&index).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "echo > index.json: {}", stderr(&out));
    assert_eq!(names(&env), ["r:2"]);

    // Many opens of one blob share one descriptor of the daemon's.
    let blob = blobs_of(&src).into_keys().next().unwrap();
    let held: Vec<fs::File> = (0..MANY_FILES)
        .map(|_| fs::File::open(m.path(&format!("r/blobs/sha256/{blob}"))).unwrap())
        .collect();
    let with_opens = fds_of(m.pid());
    drop(held);
    // Closed temporary files hold no descriptor of the daemon's.
    for i in 0..MANY_FILES {
        fs::write(m.path(&format!("r/tmp{i}")), b"temporary").unwrap();
    }
    let with_files = fds_of(m.pid());
    assert_eq!(fs::read(m.path("r/tmp7")).unwrap(), b"temporary");
    assert!(
        with_opens < idle + 10 && with_files < idle + 10,
        "daemon descriptors: {idle} idle, {with_opens} with {MANY_FILES} opens of one blob, \
         {with_files} with {MANY_FILES} closed temporary files"
    );

    // The unmount, and the daemon's exit with thousands of temporary files to drop.
    let start = Instant::now();
    sh(Command::new("umount").arg(&m.dir));
    let log_path = env.path("mnt.log");
    let status = m.wait();
    let took = start.elapsed();
    let log = fs::read_to_string(log_path).unwrap();
    assert!(status.success(), "{status}");
    eprintln!(
        "daemon descriptors: {idle} idle, {with_opens} with {MANY_FILES} opens of one blob, \
         {with_files} with {MANY_FILES} closed temporary files; exit after umount {took:?}"
    );
    let noises = ["Not Implemented", "ioctl", "Failed to umount", "ERROR"];
    let found: Vec<&str> = noises.into_iter().filter(|n| log.contains(n)).collect();
    assert!(found.is_empty(), "{found:?} in the log:\n{log}");
    assert!(took < EXIT_WITHIN, "the daemon took {took:?} to exit");
    // What the exit had no time to remove, the next mount does.
    drop(Mounted::start(&env, "again", &[]));
    store_is_clean(&env);
}

#[test]
fn rm_of_a_blob_an_image_needs_is_ebusy_and_rm_r_still_removes_the_repository() {
    let env = Env::new();
    let src = env.path("src");
    let mut b = LayoutBuilder::new(&src);
    let m1 = b.small_image("1", 2, 40_000, 5);
    let m = Mounted::start(&env, "mnt", &[]);
    cp_r_ok(&src, m.path("r"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(src.join("blobs/sha256").join(m1.digest.hex())).unwrap())
            .unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let hex = config.strip_prefix("sha256:").unwrap();
    let path = m.path(&format!("r/blobs/sha256/{hex}"));
    let out = Command::new("rm").arg(&path).output().unwrap();
    assert!(!out.status.success(), "rm of a needed blob succeeded");
    assert!(
        stderr(&out).contains("Device or resource busy"),
        "{}",
        stderr(&out)
    );
    assert!(path.exists(), "the blob is still listed");
    assert_eq!(
        fs::read(&path).unwrap(),
        fs::read(src.join("blobs/sha256").join(hex)).unwrap()
    );
    let log = m.log();
    let warned = log
        .lines()
        .any(|l| l.contains("WARN") && l.contains(&config) && l.contains("r:1"));
    assert!(warned, "no warning naming the blob and the image:\n{log}");
    // rm -r removes index.json first: then nothing needs the blobs.
    sh(Command::new("rm").arg("-r").arg(m.path("r")));
    assert!(!m.path("r").exists());
    assert!(names(&env).is_empty());
    drop(m);
    store_is_clean(&env);
}

#[test]
fn a_pending_repository_shows_a_layout_and_cp_r_with_index_json_first_still_works() {
    let env = Env::new();
    let src = env.path("src");
    let mut b = LayoutBuilder::new(&src);
    b.small_image("1", 2, 30_000, 6);
    // The same layout with index.json made first: cp -r copies in inode order, so index.json
    // (its images pending) comes before oci-layout and blobs/, which cp then creates with
    // O_EXCL and mkdir.
    let first = env.path("index-first");
    fs::create_dir(&first).unwrap();
    for name in ["index.json", "oci-layout"] {
        fs::copy(src.join(name), first.join(name)).unwrap();
    }
    cp_r_ok(src.join("blobs"), first.join("blobs"));
    let m = Mounted::start(&env, "mnt", &[]);

    // mkdir, then index.json alone: pending; ls (not the maker) sees a layout.
    sh(Command::new("mkdir").arg(m.path("p")));
    sh(Command::new("cp")
        .arg(src.join("index.json"))
        .arg(m.path("p/")));
    assert!(names(&env).is_empty(), "pending");
    assert_eq!(
        sh(Command::new("ls").arg(m.path("p"))),
        "blobs\nindex.json\noci-layout\n"
    );
    for name in ["index.json", "oci-layout", "blobs"] {
        sh(Command::new("stat").arg(m.path(&format!("p/{name}"))));
    }
    // The rest arrives by another cp: the image registers.
    sh(Command::new("cp")
        .arg("-r")
        .arg(src.join("blobs"))
        .arg(m.path("p/")));
    assert_eq!(names(&env), ["p:1"]);

    cp_r_ok(&first, m.path("q"));
    assert_eq!(names(&env), ["p:1", "q:1"]);
    assert_eq!(
        sh(Command::new("ls").arg(m.path("q"))),
        "blobs\nindex.json\noci-layout\n"
    );
    assert_eq!(m.errors(), Vec::<String>::new(), "{}", m.log());
    drop(m);
    store_is_clean(&env);
}

/// Files written at once by `many_concurrent_large_uploads_keep_the_daemon_small`, and the
/// size of each.
const CONCURRENT_UPLOADS: usize = 8;
const UPLOAD_MIB: usize = 32;
/// The daemon's peak resident memory allowed while they are written: it keeps no bytes of an
/// upload, so this does not grow with their size or number (about 18 MiB after `cp -r` of
/// the 2 GiB bench layout; 256 MiB are written here).
const DAEMON_PEAK_RSS_KIB: u64 = 64 << 10;

/// `mib` MiB that differ from file to file and from MiB to MiB.
fn pattern(seed: usize, mib: usize) -> Vec<u8> {
    (0..(mib << 20) as u64)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 11) as u8) ^ seed as u8)
        .collect()
}

/// Writes `data` into `path` in 1 MiB writes (as cp does), whatever happens: returns the
/// file and the first error.
fn write_mib_chunks(path: &Path, data: &[u8]) -> (fs::File, std::io::Result<()>) {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap();
    let r = data.chunks(1 << 20).try_for_each(|c| f.write_all(c));
    (f, r)
}

#[test]
fn many_concurrent_large_uploads_keep_the_daemon_small() {
    let env = Env::new();
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir_all(m.path("up/blobs/sha256")).unwrap();
    std::thread::scope(|s| {
        for i in 0..CONCURRENT_UPLOADS {
            let path = m.path(&format!("up/blobs/sha256/.tmp-{i}"));
            s.spawn(move || {
                let data = pattern(i, UPLOAD_MIB);
                let (f, r) = write_mib_chunks(&path, &data);
                r.unwrap();
                // fsync of a file that stays an upload waits for its bytes (and succeeds).
                f.sync_all().unwrap();
                drop(f);
                let back = fs::read(&path).unwrap();
                assert!(back == data, "{}: read back differs", path.display());
            });
        }
    });
    let status = fs::read_to_string(format!("/proc/{}/status", m.pid())).unwrap();
    let peak: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        peak < DAEMON_PEAK_RSS_KIB,
        "the daemon peaked at {peak} KiB writing {CONCURRENT_UPLOADS} files of {UPLOAD_MIB} MiB"
    );
    drop(m);
}

/// Room on the tmpfs under `ShortDisk`'s loop device, the size of its ext4 filesystem, and the
/// bytes written into it by `a_failed_writeback_fails_fsync_close_and_rename`: the writes fit
/// the filesystem, not the disk under it.
const SHORT_DISK_ROOM_MIB: u64 = 48;
const SHORT_DISK_FS_MIB: u64 = 512;
const SHORT_WRITE_MIB: usize = 96;

/// An ext4 filesystem on a loop device whose backing file sits on a tmpfs too small for it:
/// writes succeed into the page cache and fail when written back (the loop device gets ENOSPC
/// from the tmpfs and reports EIO), as a failing disk does. Unmounted and detached on drop.
struct ShortDisk {
    dir: PathBuf,
    device: String,
    _room: Tmpfs,
}

impl ShortDisk {
    fn new(env: &Env) -> ShortDisk {
        let room = Tmpfs::mount(&env.path("room"), SHORT_DISK_ROOM_MIB);
        let image = env.path("room/disk.img");
        fs::File::create(&image)
            .unwrap()
            .set_len(SHORT_DISK_FS_MIB << 20)
            .unwrap();
        sh(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&image));
        let device = sh(Command::new("losetup").args(["-f", "--show"]).arg(&image))
            .trim()
            .to_owned();
        let dir = env.path("disk");
        fs::create_dir_all(&dir).unwrap();
        let disk = ShortDisk {
            dir,
            device,
            _room: room,
        };
        sh(Command::new("mount").arg(&disk.device).arg(&disk.dir));
        disk
    }
}

impl Drop for ShortDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// The errno of `r`, which must be an error.
fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>, what: &str) -> i32 {
    let e = r.expect_err(what);
    e.raw_os_error().unwrap_or_else(|| panic!("{what}: {e}"))
}

#[test]
fn a_failed_writeback_fails_fsync_close_and_rename() {
    require("mkfs.ext4");
    require("losetup");
    let mut env = Env::new();
    let disk = ShortDisk::new(&env);
    env.store = disk.dir.join("store");
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir_all(m.path("r/blobs/sha256")).unwrap();
    let data = pattern(1, SHORT_WRITE_MIB);
    let hex = sha256_hex(&data);
    let io_errors = [libc::EIO, libc::ENOSPC];

    // A temporary file: every write succeeds (into the page cache); the fsync reports the
    // failed writeback, and so do a later write, the close and a rename onto its blob name.
    let tmp = m.path("r/blobs/sha256/.tmp");
    let (mut f, r) = write_mib_chunks(&tmp, &data);
    r.unwrap();
    let e = errno_of(f.sync_all(), "fsync after a failed writeback");
    assert!(io_errors.contains(&e), "fsync: errno {e}");
    let e = errno_of(
        std::io::Write::write_all(&mut f, b"more"),
        "a write after it",
    );
    assert!(io_errors.contains(&e), "write: errno {e}");
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: `fd` is the descriptor just taken from `f`, closed once here.
    let closed = unsafe { libc::close(fd) };
    assert_eq!(closed, -1, "close after a failed writeback");
    let e = std::io::Error::last_os_error().raw_os_error().unwrap();
    assert!(io_errors.contains(&e), "close: errno {e}");
    let e = errno_of(
        fs::rename(&tmp, m.path(&format!("r/blobs/sha256/{hex}"))),
        "rename onto the blob name",
    );
    assert!(io_errors.contains(&e), "rename: errno {e}");

    // At its blob name: the close (which commits) reports it.
    let (f, r) = write_mib_chunks(&m.path(&format!("r/blobs/sha256/{hex}")), &data);
    if let Err(e) = r {
        assert!(io_errors.contains(&e.raw_os_error().unwrap()), "write: {e}");
    }
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: as above.
    let closed = unsafe { libc::close(fd) };
    assert_eq!(closed, -1, "close of a blob whose writeback failed");
    assert!(env.images().is_empty());
    assert!(
        !env.store.join(format!("blobs/sha256/{hex}")).exists(),
        "a blob whose bytes did not reach the disk was placed"
    );
    drop(m);
}

/// The sha256 of `data` in hex.
fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
