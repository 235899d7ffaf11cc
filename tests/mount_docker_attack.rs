//! Attacks on the mount's docker-archive write path (issue 15): symbolic links kept in a
//! repository directory, which the kernel follows (relative to the link's directory) though
//! the mount never does; `manifest.json` files that cost more than their size; who may write
//! them. A test whose doc comment says "guard" checks a defence that holds; every other test
//! here shows a problem and fails until it is fixed.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::core::Harness;
use common::mount::Mounted;
use common::{require, stderr, untar, Env};

/// A v1 layer directory's name (64 hex digits), made of `byte`: scratch in a repository.
fn v1(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

/// A tar archive of directories (`dirs`), symbolic links (path, target) and files.
fn archive(out: &Path, dirs: &[&str], links: &[(&str, &str)], files: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    for d in dirs {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_size(0);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    for (path, target) in links {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_mtime(0);
        h.set_size(0);
        b.append_link(&mut h, path, target).unwrap();
    }
    for (path, bytes) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(bytes.len() as u64);
        b.append_data(&mut h, path, *bytes).unwrap();
    }
    b.finish().unwrap();
}

/// A link through a link: `y -> ../..` and `x -> y/../../..` in `app/<v1>/b/c` each stay in
/// the repository directory when read lexically from their own directory, so the mount makes
/// both; but the kernel resolves `x` through `y` (`app/<v1>`) and then climbs three levels:
/// `app`, the mount's root, and the directory holding the mount point, on the host. One
/// archive unpacked with `tar -x` (as the README tells) leaves such links; a second one (or
/// any process that follows links: `cp -rL`, `tar -h`, a root shell) then reads and writes
/// the host through the mount.
#[test]
fn a_link_through_a_link_reaches_the_host_beside_the_mount_point() {
    let env = Env::new();
    fs::write(env.path("secret"), b"host file beside the mount point\n").unwrap();
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir(m.path("app")).unwrap();
    let d = v1(0x11);
    let (b, c) = (format!("{d}/b/"), format!("{d}/b/c/"));
    let (y, x) = (format!("{d}/b/c/y"), format!("{d}/b/c/x"));
    archive(
        &env.path("links.tar"),
        &[&format!("{d}/"), &b, &c],
        &[(&y, "../.."), (&x, "y/../../..")],
        &[],
    );
    let out = untar(&env.path("links.tar"), &m.path("app"));
    let made = out.status.success();
    let pwned = format!("{d}/b/c/x/pwned");
    archive(
        &env.path("write.tar"),
        &[],
        &[],
        &[(&pwned, b"written through the mount\n")],
    );
    let _ = untar(&env.path("write.tar"), &m.path("app"));
    let read = fs::read(m.path(&format!("app/{x}/secret")));
    let written = env.path("pwned").exists();
    drop(m);
    assert!(
        !(made && (read.is_ok() || written)),
        "app/{x} (-> y/../../.., y -> ../..) leads out of the mount: host file read through \
         it: {:?}; a second tar -x wrote {} on the host: {written}",
        read.map(|b| String::from_utf8_lossy(&b).into_owned()),
        env.path("pwned").display(),
    );
}

/// A directory holding a link, renamed up: `l -> ../../../secret` in `app/<v1>/b/c` stays in
/// the repository directory, and a link renamed is checked again from its new place, but a
/// directory renamed carries its links along unchecked. `mv app/<v1>/b/c app/<v2>` leaves
/// `app/<v2>/l` three levels up from `app/<v2>`: the directory holding the mount point.
#[test]
fn a_directory_renamed_up_carries_its_link_out_of_the_mount() {
    let env = Env::new();
    fs::write(env.path("secret"), b"host file beside the mount point\n").unwrap();
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir(m.path("app")).unwrap();
    let d = v1(0x11);
    let l = format!("{d}/b/c/l");
    archive(
        &env.path("link.tar"),
        &[&format!("{d}/"), &format!("{d}/b/"), &format!("{d}/b/c/")],
        &[(&l, "../../../secret")],
        &[],
    );
    let out = untar(&env.path("link.tar"), &m.path("app"));
    assert!(out.status.success(), "tar: {}", stderr(&out));
    let moved = fs::rename(
        m.path(&format!("app/{d}/b/c")),
        m.path(&format!("app/{}", v1(0x22))),
    );
    let read = fs::read(m.path(&format!("app/{}/l", v1(0x22))));
    drop(m);
    assert!(
        moved.is_err() || read.is_err(),
        "mv app/{d}/b/c app/{} succeeded and its link l -> ../../../secret now reads the \
         host's {}: {:?}",
        v1(0x22),
        env.path("secret").display(),
        read.map(|b| String::from_utf8_lossy(&b).into_owned()),
    );
}

/// A `manifest.json` of one item with many distinct `RepoTags` (4 MiB holds about 300,000):
/// `docker::parse_manifest` drops an item's repeated tags with a linear search per tag, so
/// the close that applies it does quadratic work. 20,000 tags (under 300 KiB) must be parsed
/// in seconds, as `import` and the mount read it; it takes far longer now. The close is made
/// on a thread and waited for at most `LIMIT` (the thread is left to finish).
#[test]
fn core_a_manifest_json_with_many_repo_tags_is_applied_in_linear_time() {
    const TAGS: usize = 20_000;
    const LIMIT: Duration = Duration::from_secs(10);
    let tags: Vec<String> = (0..TAGS).map(|i| format!("r:t{i}")).collect();
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": "missing.json", "RepoTags": tags, "Layers": ["missing.tar"]}
    ]))
    .unwrap();
    assert!(manifest.len() < 300 << 10);
    let (done, wait) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let h = Harness::new();
        h.mkdir_p("app").unwrap();
        // It names files not written: it only waits (nothing to register), after parsing.
        let r = h.put("app/manifest.json", &manifest, 1);
        let _ = done.send(r.map_err(|e| e.to_string()));
    });
    let got = wait.recv_timeout(LIMIT);
    assert!(
        matches!(got, Ok(Ok(()))),
        "closing a {TAGS}-tag manifest.json: {got:?} after {:?}",
        start.elapsed()
    );
}

/// A `manifest.json` that waits is parsed again, whole, and the repository directory's tree
/// read again, at every close of a file in that repository: a 4 MiB manifest.json first
/// (what is allowed), naming a file never written, then many small files, costs a full parse
/// per file (about 0.4 s in a test build: a tar of 10,000 small files after it takes an
/// hour). The closes of 20 small files after it must not take much longer than without it.
#[test]
fn core_a_waiting_manifest_json_is_not_parsed_again_at_every_close() {
    const FILES: usize = 20;
    const MANIFEST_SIZE: usize = (4 << 20) - 200;
    // A big valid list: one item waiting for a file never written, then padding items.
    let mut items = vec![serde_json::json!(
        {"Config": "never.json", "RepoTags": ["w:1"], "Layers": ["never.tar"]}
    )];
    let mut size = 0;
    while size < MANIFEST_SIZE {
        let n = items.len();
        let item = serde_json::json!(
            {"Config": format!("c{n}.json"), "RepoTags": null, "Layers": [format!("l{n}.tar")]}
        );
        size += serde_json::to_vec(&item).unwrap().len() + 1;
        items.push(item);
    }
    let manifest = serde_json::to_vec(&items).unwrap();
    let closes = |with_manifest: bool| -> Duration {
        let h = Harness::new();
        h.mkdir_p("app").unwrap();
        h.put("app/VERSION", b"1.0", 1).unwrap();
        if with_manifest {
            h.put("app/manifest.json", &manifest, 1).unwrap();
        }
        let start = Instant::now();
        for i in 0..FILES {
            h.put(&format!("app/f{i}.json"), b"{}", 1).unwrap();
        }
        start.elapsed()
    };
    let plain = closes(false);
    let waiting = closes(true);
    assert!(
        waiting < plain * 20 + Duration::from_secs(2),
        "{FILES} closes took {waiting:?} with a 4 MiB manifest.json waiting, {plain:?} without"
    );
}

/// Guard: with `--allow-other` (the daemon as root, every directory 0755 and root's), another
/// user can make no link, no v1 directory and no `manifest.json` in a repository directory,
/// so cannot register names (RepoTags may name any repository) through an archive.
#[test]
fn guard_another_user_writes_no_archive_or_link_with_allow_other() {
    use std::os::unix::fs::PermissionsExt;
    require("setpriv");
    let env = Env::new();
    let user = common::user::OtherUser::create();
    fs::set_permissions(env.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mounted::start(&env, "mnt", &["--allow-other"]);
    fs::create_dir(m.path("app")).unwrap();
    fs::write(m.path("app/VERSION"), b"1.0").unwrap();
    let d = v1(0x11);
    let mnt = m.dir.to_str().unwrap().to_owned();
    for script in [
        "ln -s VERSION $M/app/l".to_owned(),
        format!("mkdir $M/app/{d}"),
        r#"echo '[{"Config":"c.json","RepoTags":["victim:1"],"Layers":[]}]' > $M/app/manifest.json"#
            .to_owned(),
        "mkdir $M/mine".to_owned(),
    ] {
        let out = Command::new("setpriv")
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .args(["--clear-groups", "sh", "-c", &format!("LC_ALL=C {script}")])
            .env("M", &mnt)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{script}: succeeded");
        assert!(
            stderr(&out).contains("Permission denied"),
            "{script}: {}",
            stderr(&out)
        );
    }
    assert!(env.images().is_empty());
}

/// Guard: the daemon killed (SIGKILL) while a `manifest.json` close reads a gzip layer back
/// for its diff_id (a layer of 6.4 GB of zeros in 100 gzip members, 6 MB written) leaves
/// nothing registered, a store that fsck finds clean, and nothing that a gc keeps.
#[test]
fn guard_the_daemon_killed_while_an_archive_applies_leaves_a_clean_store() {
    const MEMBER: usize = 64 << 20;
    const MEMBERS: usize = 100;
    let env = Env::new();
    let mut member = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut member, &vec![0u8; MEMBER]).unwrap();
    let member = member.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "0".repeat(64))]},
    }))
    .unwrap();
    let config_name = format!(
        "{}.json",
        layoutfs::digest::Digest::of(layoutfs::digest::Algorithm::Sha256, &config).hex()
    );
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": ["bomb:1"], "Layers": ["layer.tar.gz"]}
    ]))
    .unwrap();
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir(m.path("app")).unwrap();
    fs::write(m.path(&format!("app/{config_name}")), &config).unwrap();
    {
        let mut f = fs::File::create(m.path("app/layer.tar.gz")).unwrap();
        for _ in 0..MEMBERS {
            std::io::Write::write_all(&mut f, &member).unwrap();
        }
    }
    let path = m.path("app/manifest.json");
    let writer = std::thread::spawn(move || fs::write(path, manifest));
    std::thread::sleep(Duration::from_secs(2));
    assert!(!writer.is_finished(), "the apply ended before the kill");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(m.pid(), libc::SIGKILL) };
    // std's close drops its error: the dead mount's answer is not seen here.
    let _ = writer.join().unwrap();
    drop(m); // lazily unmounts the dead mount
    assert!(env.images().is_empty());
    drop(Mounted::start(&env, "mnt", &[])); // a new mount cleans the dead daemon's ingests
    common::fsck_clean(&env);
    env.ok(&["gc", "--grace", "0"]);
    assert!(env.images().is_empty());
    let blobs = env.store.join("blobs/sha256");
    let left = fs::read_dir(&blobs).unwrap().count();
    assert_eq!(left, 0, "blobs left in {}", blobs.display());
}

/// `RepoTags` naming a repository whose last component is 64 hex digits (`app/<v1 id>:1`,
/// which docker's parser accepts: it refuses only a whole name of 64 hex digits) registers a
/// repository the mount's own rules hide: in a repository a 64-hex directory is scratch. After
/// a remount, the same archive unpacked into `app` again finds `app/<v1>` a sub-repository
/// (mkdir EEXIST, so tar writes into it), and its `manifest.json` waits for ever for
/// `<v1>/layer.tar`, which `app`'s tree no longer holds: nothing registered, no error. Such a
/// name should be refused (EIO at the close, naming it), as a 64-hex mkdir is never one.
#[test]
fn core_repo_tags_naming_a_64_hex_repository_break_the_next_unpack() {
    use common::docker_archive::{layer, Image};
    let d = v1(0x33);
    let tag = format!("app/{d}:1");
    let image = Image::new(vec![layer(1)], "/bin/hi", &[&tag]);
    let config = format!("{}.json", image.config_hex());
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config, "RepoTags": [tag], "Layers": [format!("{d}/layer.tar")]}
    ]))
    .unwrap();
    let unpack = |h: &Harness| -> Result<(), layoutfs::fs::FsError> {
        if h.walk("app").is_err() {
            h.mkdir_p("app")?;
        }
        if h.walk(&format!("app/{d}")).is_err() {
            h.fs.mkdir_as(h.walk("app")?.ino, &d, 2)?;
        }
        h.put(&format!("app/{d}/layer.tar"), &image.layers[0], 2)?;
        h.put(&format!("app/{config}"), &image.config, 2)?;
        h.put("app/manifest.json", &manifest, 2)
    };
    let h = Harness::new();
    let first = unpack(&h);
    let registered = h.images();
    // A remount: a new core over the same store (the scratch of the first is gone).
    let h = Harness {
        fs: layoutfs::fs::Fs::new(h.store.clone(), layoutfs::fs::FsOptions::default()),
        ..h
    };
    let again = unpack(&h);
    let waiting = h.fs.waiting_archives();
    assert!(
        first.is_err() || (again.is_ok() && waiting.is_empty()),
        "first unpack {first:?} registered {registered:?}; the second unpack: {again:?}, \
         waiting: {waiting:?}; repositories kept: {:?}",
        h.kept(),
    );
}
