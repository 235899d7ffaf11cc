//! A docker archive unpacked into the mount (`mkdir mnt/app && tar -C mnt/app -x -f F`): its
//! v1 layer directories are scratch (never sub-repositories), its symlinks are kept as links,
//! and its `manifest.json` registers the images. The first tests drive the filesystem core
//! with no kernel; the rest mount for real, with archives written by skopeo and podman and
//! hand-made ones in the shapes docker writes.

mod common;

use common::core::Harness;
use layoutfs::fs::{FsError, Kind};

const V1: &str = "45fd3016ef4208425183abcac9f2c0cdf31a78a9e1100852924a703032e3b85a";
const V1B: &str = "248dcd57ec3ae05adeece8d04a1f9bdfb6cf8cee324453fced2ea4854bdca7ef";

fn errno(r: Result<impl std::fmt::Debug, FsError>) -> i32 {
    r.unwrap_err().errno()
}

#[test]
fn a_64_hex_directory_in_a_repository_is_scratch_and_goes_like_scratch() {
    let h = Harness::new();
    h.mkdir_p("app").unwrap();
    h.mkdir_p(&format!("app/{V1}")).unwrap();
    h.put(&format!("app/{V1}/VERSION"), b"1.0", 1).unwrap();
    assert_eq!(h.kept(), ["app"], "no sub-repository");
    assert_eq!(h.walk(&format!("app/{V1}")).unwrap().kind, Kind::Dir);
    assert!(h.list("app").unwrap().contains(&V1.to_owned()));
    assert_eq!(h.read_as(&format!("app/{V1}/VERSION"), 2).unwrap(), b"1.0");

    // Renamed like other scratch, then removed.
    h.mv(&format!("app/{V1}"), &format!("app/{V1B}"), 1)
        .unwrap();
    assert!(h.walk(&format!("app/{V1}")).is_err());
    assert_eq!(errno(h.rmdir(&format!("app/{V1B}"))), libc::ENOTEMPTY);
    h.rm(&format!("app/{V1B}/VERSION")).unwrap();
    h.rmdir(&format!("app/{V1B}")).unwrap();
    assert!(h.walk(&format!("app/{V1B}")).is_err());
    assert_eq!(h.kept(), ["app"]);
    assert!(h.images().is_empty());

    // A 64-hex name one digit short, or in uppercase hex, is no v1 id: a sub-repository
    // (as before) or scratch (uppercase is no repository name at all).
    h.mkdir_p(&format!("app/{}", &V1[1..])).unwrap();
    assert_eq!(h.kept(), ["app", &format!("app/{}", &V1[1..])]);
}

#[test]
fn symlinks_in_a_repository_are_kept_as_written_and_never_followed() {
    let h = Harness::new();
    h.mkdir_p(&format!("app/{V1}")).unwrap();
    h.put("app/a.tar", b"layer bytes", 1).unwrap();
    let link = format!("app/{V1}/layer.tar");
    let a = h.symlink(&link, "../a.tar").unwrap();
    assert_eq!(a.kind, Kind::Symlink);
    assert_eq!(a.size, "../a.tar".len() as u64);
    assert_eq!(h.walk(&link).unwrap().kind, Kind::Symlink);
    assert_eq!(h.readlink(&link).unwrap(), "../a.tar");
    assert_eq!(errno(h.fs.open(a.ino, libc::O_RDONLY, 1)), libc::ELOOP);
    assert_eq!(errno(h.fs.open(a.ino, libc::O_WRONLY, 1)), libc::ELOOP);
    assert_eq!(
        errno(h.fs.readlink(h.walk("app/a.tar").unwrap().ino)),
        libc::EINVAL
    );
    let fh =
        h.fs.opendir(h.walk(&format!("app/{V1}")).unwrap().ino)
            .unwrap();
    let entries = h.fs.readdir(fh, 0).unwrap();
    h.fs.releasedir(fh);
    let e = entries.iter().find(|e| e.name == "layer.tar").unwrap();
    assert_eq!(e.kind, Kind::Symlink);
    assert_eq!(errno(h.symlink(&link, "../a.tar")), libc::EEXIST);

    // Links in the repository directory itself, and a chain, are made (only manifest.json
    // reads them, one hop).
    h.symlink("app/b.tar", "a.tar").unwrap();
    h.symlink("app/c.tar", "./b.tar").unwrap();
    assert_eq!(h.readlink("app/c.tar").unwrap(), "./b.tar");

    // Refused: absolute, escaping, at the root, among blobs, at a layout name.
    for (path, target) in [
        (format!("app/{V1}/abs"), "/etc/passwd"),
        (format!("app/{V1}/esc"), "../../other/a.tar"),
        ("app/esc".to_owned(), "../a.tar"),
        ("app/empty".to_owned(), ""),
        ("top".to_owned(), "app/a.tar"),
        ("app/index.json".to_owned(), "a.tar"),
        ("app/blobs".to_owned(), "a.tar"),
    ] {
        assert_eq!(errno(h.symlink(&path, target)), libc::EPERM, "{path}");
        assert!(
            h.walk(&path).map_or(true, |a| a.kind != Kind::Symlink),
            "{path}"
        );
    }
    h.mkdir_p("app/blobs/sha256").unwrap();
    assert_eq!(errno(h.symlink("app/blobs/sha256/l", "x")), libc::EPERM);
    assert_eq!(errno(h.symlink("app/blobs/l", "x")), libc::EPERM);

    // Renamed: within the repository when the target still stays in it; not into blobs/.
    h.mv(&link, &format!("app/{V1}/moved.tar"), 1).unwrap();
    assert_eq!(
        h.readlink(&format!("app/{V1}/moved.tar")).unwrap(),
        "../a.tar"
    );
    assert_eq!(
        errno(h.mv(&format!("app/{V1}/moved.tar"), "app/moved.tar", 1)),
        libc::EPERM,
        "../a.tar from app/ leaves it"
    );
    assert_eq!(
        errno(h.mv("app/b.tar", "app/blobs/sha256/b", 1)),
        libc::EPERM
    );
    h.mv("app/b.tar", &format!("app/{V1}/b.tar"), 1).unwrap();
    assert_eq!(h.readlink(&format!("app/{V1}/b.tar")).unwrap(), "a.tar");

    // Unlinked like a file; nothing was registered, and the directory goes.
    for l in ["moved.tar", "b.tar"] {
        h.rm(&format!("app/{V1}/{l}")).unwrap();
    }
    h.rmdir(&format!("app/{V1}")).unwrap();
    assert!(h.images().is_empty());
    assert_eq!(h.kept(), ["app"]);
}
