//! What the store refuses and what it keeps when its directory is not what layoutfs made:
//! links planted by another user, a store owned by someone else, modes under `umask 000`,
//! entries under `ingest/` that are no ingest, a `meta.db` that vanished while `blobs/` is full,
//! a store on a read-only filesystem, and `--store` naming a file. Through the binary, as root
//! (as CI runs); the second user is made by the test and removed after it.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::gen::LayoutBuilder;
use common::mount::Mounted;
use common::user::OtherUser;
use common::{sh, stderr, Env, Tmpfs};

/// Every name under `dir`, recursively, relative to it (links are not followed).
fn names_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn blob_count(store: &Path) -> usize {
    fs::read_dir(store.join("blobs/sha256")).unwrap().count()
}

/// Sets a path's modification time two days back (not following a link), so that gc's
/// default grace of a day has passed for it.
fn age(path: &Path) {
    sh(Command::new("touch")
        .args(["-h", "-d", "2 days ago"])
        .arg(path));
}

/// Asserts that a command failed with one line on standard error holding every `needle`.
fn refused(out: &Output, what: &str, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{what}: {err:?} lacks {n:?}");
    }
}

/// A directory outside the store that a planted link points at, with something in it.
fn victim(env: &Env) -> PathBuf {
    let dir = env.path("victim");
    fs::create_dir_all(dir.join("important")).unwrap();
    fs::write(dir.join("important/keep"), b"precious").unwrap();
    age(&dir.join("important"));
    dir
}

fn victim_intact(dir: &Path, what: &str) {
    assert_eq!(
        fs::read(dir.join("important/keep")).unwrap_or_default(),
        b"precious",
        "{what}: the link's target was touched"
    );
    assert_eq!(names_under(dir), ["important", "important/keep"], "{what}");
}

#[test]
fn a_store_owned_by_another_user_with_planted_links_is_refused() {
    let env = Env::new();
    let user = OtherUser::create();
    let target = victim(&env);
    let elsewhere = env.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    // What the other user makes: a store directory whose meta.db and ingest/ point out of it.
    let store = &env.store;
    fs::create_dir_all(store.join("blobs/sha256")).unwrap();
    fs::create_dir_all(store.join("blobs/sha512")).unwrap();
    symlink(elsewhere.join("meta.db"), store.join("meta.db")).unwrap();
    symlink(&target, store.join("ingest")).unwrap();
    for p in [
        "",
        "blobs",
        "blobs/sha256",
        "blobs/sha512",
        "meta.db",
        "ingest",
    ] {
        user.chown(&store.join(p));
    }
    let mut l = LayoutBuilder::new(&env.path("img"));
    l.small_image("1", 1, 2_000, 1);
    let img = env.path("img");
    let store_name = store.display().to_string();
    for args in [
        vec!["import", img.to_str().unwrap()],
        vec!["gc"],
        vec!["gc", "--grace", "0s"],
        vec!["images"],
        vec!["fsck"],
    ] {
        let out = env.run(&args);
        refused(
            &out,
            &format!("{args:?}"),
            &[&store_name, "owned by user", &user.uid.to_string()],
        );
        assert!(
            names_under(&elsewhere).is_empty(),
            "{args:?}: a file was made through the planted meta.db"
        );
        victim_intact(&target, &format!("{args:?}"));
    }
}

#[test]
fn links_planted_in_an_own_store_are_refused_and_nothing_is_followed() {
    let env = Env::new();
    let target = victim(&env);
    let elsewhere = env.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("meta.db"), b"").unwrap();
    let mut l = LayoutBuilder::new(&env.path("img"));
    l.small_image("1", 1, 2_000, 2);
    let img = env.path("img");
    // Each part of the store in turn replaced by a link out of it.
    let cases: [(&str, &Path); 5] = [
        ("ingest", &target),
        ("meta.db", &elsewhere.join("meta.db")),
        ("blobs/sha256", &target),
        ("blobs", &target),
        ("quarantine", &target),
    ];
    for (part, to) in cases {
        let env = Env::new();
        env.ok(&["import", img.to_str().unwrap()]);
        let path = env.store.join(part);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::rename(&path, env.path("moved-away")).unwrap(),
            Ok(_) => fs::remove_file(&path).unwrap(),
            Err(_) => {}
        }
        let _ = fs::remove_file(env.store.join("meta.db-wal"));
        let _ = fs::remove_file(env.store.join("meta.db-shm"));
        symlink(to, &path).unwrap();
        for args in [
            vec!["import", img.to_str().unwrap()],
            vec!["gc", "--grace", "0s"],
            vec!["images"],
            vec!["fsck", "--repair"],
        ] {
            let out = env.run(&args);
            refused(
                &out,
                &format!("{part}: {args:?}"),
                &[&path.display().to_string(), "is a symbolic link"],
            );
            victim_intact(&target, &format!("{part}: {args:?}"));
            assert_eq!(
                names_under(&elsewhere),
                ["meta.db"],
                "{part}: {args:?}: made files elsewhere"
            );
            assert_eq!(fs::metadata(elsewhere.join("meta.db")).unwrap().len(), 0);
        }
    }
}

#[test]
fn a_blob_that_is_a_link_is_never_read_through() {
    let env = Env::new();
    let mut l = LayoutBuilder::new(&env.path("img"));
    let m = l.small_image("1", 1, 2_000, 3);
    env.ok(&["import", env.path("img").to_str().unwrap()]);
    // The manifest's file replaced by a link to a file outside with the same bytes.
    let blob = env.store.join(m.digest.blob_path());
    let outside = env.path("outside-manifest");
    fs::copy(&blob, &outside).unwrap();
    fs::remove_file(&blob).unwrap();
    symlink(&outside, &blob).unwrap();
    let out = env.run(&[
        "export",
        "-o",
        env.path("out.tar").to_str().unwrap(),
        "img:1",
    ]);
    assert_eq!(out.status.code(), Some(1), "export read through a link");
    let out = env.run(&["fsck", "--repair"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stray file") && text.contains(m.digest.hex()),
        "{text}"
    );
    assert!(fs::symlink_metadata(&blob).unwrap().is_symlink());
    assert!(outside.exists(), "the link's target was moved or removed");
}

#[test]
fn under_umask_000_the_store_gets_fixed_modes() {
    let env = Env::new();
    let mut cmd = env.cmd(&["images"]);
    // SAFETY: umask is async-signal-safe and touches only this child's state.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |p: &str| fs::symlink_metadata(env.store.join(p)).unwrap().mode() & 0o7777;
    for (part, want) in [
        ("", 0o755),
        ("blobs", 0o755),
        ("blobs/sha256", 0o755),
        ("blobs/sha512", 0o755),
        ("ingest", 0o700),
    ] {
        assert_eq!(mode(part), want, "{part:?}: {:o}", mode(part));
    }
    assert_eq!(mode("meta.db") & 0o022, 0, "meta.db: {:o}", mode("meta.db"));

    // A store part another user may write into is refused, naming it.
    fs::set_permissions(env.store.join("ingest"), fs::Permissions::from_mode(0o777)).unwrap();
    let out = env.run(&["images"]);
    refused(
        &out,
        "world-writable ingest",
        &[
            &env.store.join("ingest").display().to_string(),
            "writable by other users",
        ],
    );
}

#[test]
fn under_umask_000_missing_parents_and_ingests_get_fixed_modes_too() {
    let env = Env::new();
    let store = env.path("a/b/store");
    let umask0 = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_layoutfs"));
        cmd.arg("--store").arg(&store).args(args);
        // SAFETY: umask is async-signal-safe and touches only this child's state.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    // The parents made on first use are not left writable by others (which the store's own
    // check would then refuse).
    let out = umask0(&["images"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for p in ["a", "a/b"] {
        let mode = fs::symlink_metadata(env.path(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{p}: {mode:o}");
    }
    // An import under umask 000 keeps each ingest private while it writes: a slow source
    // (a pipe that stalls) leaves its ingest to look at.
    let mut b = common::gen::LayoutBuilder::new(&env.path("src"));
    b.small_image("1", 1, 4096, 3);
    let t = env.path("src.tar");
    common::tar_dir(&b.dir, &t);
    let bytes = fs::read(&t).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_layoutfs"));
    cmd.arg("--store")
        .arg(&store)
        .args(["import", "--name", "src", "-"])
        .stdin(std::process::Stdio::piped());
    // SAFETY: as above.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    // Up to the middle of the layer's bytes, so that its ingest is open.
    let layer = fs::read_dir(b.dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .find(|b| b.len() == 4096)
        .unwrap();
    let cut = bytes
        .windows(layer.len())
        .position(|w| w == layer.as_slice())
        .unwrap()
        + 100;
    stdin.write_all(&bytes[..cut]).unwrap();
    stdin.flush().unwrap();
    // Ingests of the blobs before the layer may still be there, and go as they commit: only
    // the modes of the entries that stay long enough to be looked at are checked, and the
    // stalled layer's ingest stays until the rest of the archive comes.
    let ingest = store.join("ingest");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut modes = Vec::new();
    while modes.is_empty() && std::time::Instant::now() < deadline {
        for e in fs::read_dir(&ingest).unwrap() {
            let path = e.unwrap().path();
            match fs::symlink_metadata(&path) {
                Ok(m) => modes.push((path, m.mode() & 0o7777)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !modes.is_empty(),
        "no ingest while the layer was half written"
    );
    for (dir, mode) in &modes {
        assert_eq!(mode & 0o077, 0, "{}: {mode:o}", dir.display());
    }
    stdin.write_all(&bytes[cut..]).unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn gc_removes_only_ingests_and_never_follows_a_link() {
    let env = Env::new();
    env.ok(&["images"]);
    let target = victim(&env);
    let dead = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let ingest = env.store.join("ingest");
    let keep = [
        "important".to_owned(),
        format!("{dead}"),
        format!("{dead}-0"),
        format!("{dead}-x-1"),
        format!("{dead}-0-1-2"),
        format!("-{dead}-0-1"),
    ];
    for n in &keep {
        fs::create_dir(ingest.join(n)).unwrap();
        fs::write(ingest.join(n).join("data"), b"not mine").unwrap();
    }
    let link = format!("{dead}-0-7");
    symlink(&target, ingest.join(&link)).unwrap();
    let file = format!("{dead}-0-8");
    fs::write(ingest.join(&file), b"a file").unwrap();
    let abandoned = format!("{dead}-0-9");
    fs::create_dir(ingest.join(&abandoned)).unwrap();
    fs::write(ingest.join(&abandoned).join("data"), b"partial").unwrap();
    for n in fs::read_dir(&ingest).unwrap() {
        let p = n.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            age(&p.join("data"));
        }
        age(&p);
    }

    let out = env.run(&["gc", "--grace", "0s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("and 1 abandoned ingest (7 B)"), "{text}");
    let err = stderr(&out);
    for n in [&link, &file] {
        assert!(err.contains(n.as_str()), "{n} not reported: {err}");
    }
    let mut left = names_under(&ingest)
        .into_iter()
        .filter(|n| !n.contains('/'))
        .collect::<Vec<_>>();
    left.sort();
    let mut want: Vec<String> = keep.iter().cloned().chain([link, file]).collect();
    want.sort();
    assert_eq!(left, want, "gc removed what is no ingest of its own");
    victim_intact(&target, "gc");

    // What a mount does at start (remove_abandoned) leaves them too.
    let s = layoutfs::store::Store::open(&env.store).unwrap();
    assert_eq!(layoutfs::store::remove_abandoned(&s).unwrap(), 0);
    assert_eq!(names_under(&ingest).len(), left.len() + keep.len());
    victim_intact(&target, "remove_abandoned");
}

/// How a store loses its records.
#[derive(Debug, Clone, Copy)]
enum Lost {
    /// `: > meta.db`, its -wal and -shm gone.
    Emptied,
    /// `rm meta.db*`.
    Deleted,
}

fn lose_records(env: &Env, how: Lost) {
    for ext in ["-wal", "-shm"] {
        let _ = fs::remove_file(env.store.join(format!("meta.db{ext}")));
    }
    match how {
        Lost::Emptied => fs::write(env.store.join("meta.db"), b"").unwrap(),
        Lost::Deleted => fs::remove_file(env.store.join("meta.db")).unwrap(),
    }
}

#[test]
fn a_store_whose_meta_db_vanished_keeps_its_blobs_until_told() {
    for how in [Lost::Emptied, Lost::Deleted] {
        let env = Env::new();
        let mut l = LayoutBuilder::new(&env.path("img"));
        let m = l.small_image("1", 2, 3_000, 4);
        env.ok(&["import", env.path("img").to_str().unwrap()]);
        let reference = env.cmd(&["export", "img:1"]).output().unwrap().stdout;
        let blobs = blob_count(&env.store);
        assert_eq!(blobs, 4);
        lose_records(&env, how);

        // images lists nothing and says why on standard error.
        let out = env.run(&["images"]);
        assert!(out.status.success(), "{how:?}: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
        let err = stderr(&out);
        assert!(
            err.contains("no image records") && err.contains("4 blobs"),
            "{how:?}: {err}"
        );
        // gc refuses, removing nothing; a dry run shows what --force would remove.
        let out = env.run(&["gc"]);
        refused(
            &out,
            &format!("{how:?}: gc"),
            &["meta.db", "--force", "fsck --repair"],
        );
        assert_eq!(blob_count(&env.store), blobs, "{how:?}: gc removed blobs");
        let out = env.run(&["gc", "--grace", "0s"]);
        assert_eq!(out.status.code(), Some(1), "{how:?}");
        let dry = env.ok(&["gc", "--dry-run"]);
        assert!(dry.contains("would remove 4 blobs"), "{how:?}: {dry}");
        assert_eq!(blob_count(&env.store), blobs);
        // fsck names the problem.
        let out = env.run(&["fsck"]);
        assert_eq!(out.status.code(), Some(1), "{how:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("no image records"), "{how:?}: {text}");

        match how {
            Lost::Emptied => {
                // fsck --repair registers what it can find: the image's manifest, by digest.
                let out = env.run(&["fsck", "--repair"]);
                let text = String::from_utf8_lossy(&out.stdout);
                let recovered = format!("lost-found@{}", m.digest);
                assert!(text.contains(&recovered), "{text}");
                assert_eq!(env.images(), [(recovered.clone(), m.digest.to_string())]);
                let out = env.ok(&["gc"]);
                assert!(out.starts_with("removed 0 blobs"), "{out}");
                assert_eq!(blob_count(&env.store), blobs);
                env.ok(&["tag", &recovered, "img:1"]);
                env.ok(&["rm", "lost-found"]);
                env.ok(&["fsck"]);
                let again = env.cmd(&["export", "img:1"]).output().unwrap().stdout;
                assert!(
                    again == reference,
                    "the recovered image exports differently"
                );
            }
            Lost::Deleted => {
                // The user says the blobs may go.
                let out = env.ok(&["gc", "--force"]);
                assert!(out.starts_with("removed 4 blobs"), "{out}");
                assert_eq!(blob_count(&env.store), 0);
                let out = env.run(&["images"]);
                assert!(stderr(&out).is_empty(), "{}", stderr(&out));
                env.ok(&["gc"]);
            }
        }
    }
}

#[test]
fn a_store_on_a_read_only_filesystem_can_be_read_but_not_written() {
    let mut env = Env::new();
    let mut l = LayoutBuilder::new(&env.path("img"));
    l.small_image("1", 2, 3_000, 5);
    let fs_dir = env.path("ro");
    let tmpfs = Tmpfs::mount(&fs_dir, 16);
    env.store = fs_dir.join("store");
    env.ok(&["import", env.path("img").to_str().unwrap()]);
    let reference = env.cmd(&["export", "img:1"]).output().unwrap().stdout;
    sh(Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&fs_dir));

    assert_eq!(env.images().len(), 1);
    let out = env.run(&["export", "img:1"]);
    assert!(out.status.success(), "export: {}", stderr(&out));
    assert!(
        out.stdout == reference,
        "export differs on a read-only store"
    );
    let out = env.run(&["fsck"]);
    assert!(out.status.success(), "fsck: {}", stderr(&out));
    let dry = env.ok(&["gc", "--dry-run"]);
    assert!(dry.contains("would remove 0 blobs"), "{dry}");
    {
        let m = Mounted::start(&env, "mnt", &["--read-only"]);
        let index = fs::read(m.path("img/index.json")).unwrap();
        assert!(!index.is_empty());
    }

    let store = env.store.display().to_string();
    let img = env.path("img");
    for args in [
        vec!["import", img.to_str().unwrap()],
        vec!["tag", "img:1", "img:2"],
        vec!["rm", "img:1"],
        vec!["gc"],
        vec!["fsck", "--repair"],
    ] {
        let out = env.run(&args);
        refused(&out, &format!("{args:?}"), &[&store, "read-only"]);
    }
    assert_eq!(env.images().len(), 1);
    drop(tmpfs);
}

#[test]
fn a_store_path_that_is_a_file_says_not_a_directory() {
    let mut env = Env::new();
    env.store = env.path("plain-file");
    fs::write(&env.store, b"x").unwrap();
    let out = env.run(&["images"]);
    refused(
        &out,
        "--store FILE",
        &[&format!("--store {}: not a directory", env.store.display())],
    );
}

#[test]
fn a_link_another_user_made_on_the_way_to_the_store_is_refused() {
    let env = Env::new();
    let user = OtherUser::create();
    // A sticky directory all may write, as /tmp is; in it, the other user's link to a
    // directory of root's.
    let public = env.path("public");
    fs::create_dir(&public).unwrap();
    fs::set_permissions(&public, fs::Permissions::from_mode(0o1777)).unwrap();
    let target = env.path("rootowned");
    fs::create_dir(&target).unwrap();
    let link = public.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    user.chown(&link);
    let store = link.join("store");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_layoutfs"))
        .arg("--store")
        .arg(&store)
        .arg("images")
        .output()
        .unwrap();
    refused(&out, "another user's link", &[&link.display().to_string()]);
    assert!(!target.join("store").exists(), "created through the link");
    // The caller's own link is followed.
    let own = public.join("own");
    std::os::unix::fs::symlink(&target, &own).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_layoutfs"))
        .arg("--store")
        .arg(own.join("store"))
        .arg("images")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_meta_db_that_is_no_database_is_named() {
    let env = Env::new();
    env.ok(&["images"]);
    let db = env.store.join("meta.db");
    for companion in ["meta.db-wal", "meta.db-shm"] {
        let _ = fs::remove_file(env.store.join(companion));
    }
    fs::write(&db, vec![0x42u8; 8192]).unwrap();
    let out = env.run(&["images"]);
    refused(
        &out,
        "garbage meta.db",
        &[&db.display().to_string(), "not a database"],
    );
}
