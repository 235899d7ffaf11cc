//! Findings of the review of the write-side restructuring (issue 12): each test reproduces one.

mod common;

use std::ffi::OsStr;

use common::core::Harness;
use common::gen::LayoutBuilder;
use layoutfs::fs::FsError;

const CHUNK: usize = 64 << 10;

fn layout(h: &Harness, name: &str, images: usize, seed: u64) -> std::path::PathBuf {
    let dir = h.tmp.path().join(name);
    let mut b = LayoutBuilder::new(&dir);
    for i in 0..images {
        b.small_image(&format!("t{i}"), 2, 5000 + i as u64, seed + i as u64);
    }
    dir
}

fn split<'a>(h: &Harness, path: &'a str) -> (u64, &'a str) {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    (h.walk(parent).unwrap().ino, name)
}

fn mkdir_p(h: &Harness, path: &str) -> Result<(), FsError> {
    let mut done = String::new();
    for c in path.split('/') {
        let parent = h.walk(&done)?.ino;
        if h.fs.lookup(parent, OsStr::new(c)).is_err() {
            h.fs.mkdir(parent, c)?;
        }
        done = if done.is_empty() {
            c.to_owned()
        } else {
            format!("{done}/{c}")
        };
    }
    Ok(())
}

fn put(h: &Harness, path: &str, bytes: &[u8], pid: u32) -> Result<(), FsError> {
    let (parent, name) = split(h, path);
    let fh = match h.fs.lookup(parent, OsStr::new(name)) {
        Ok(a) => h.fs.open(a.ino, libc::O_WRONLY | libc::O_TRUNC, pid)?.fh,
        Err(_) => h.fs.create(parent, name)?.1.fh,
    };
    let mut result = Ok(());
    for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
        if let Err(e) = h.fs.write(fh, (i * CHUNK) as u64, chunk) {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        result = h.fs.flush(fh, pid);
    }
    h.fs.release(fh);
    result
}

fn blobs_of(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn images(h: &Harness) -> Vec<String> {
    let mut v: Vec<String> = h
        .store
        .records()
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.name.to_string())
        .collect();
    v.sort();
    v
}

/// Not a finding (it passes): a stress of renames, uploads closing, index.json writes,
/// lookups, stats and listings at once, with a watchdog, finds no deadlock.
#[test]
fn sound_no_deadlock_under_renames_closes_and_lookups() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let h = Arc::new(Harness::new());
    let src = layout(&h, "src", 2, 81);
    let index = std::fs::read(src.join("index.json")).unwrap();
    let blobs = blobs_of(&src);
    mkdir_p(&h, "p/a/blobs/sha256").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut threads = Vec::new();
    {
        let (h, stop, progress) = (h.clone(), stop.clone(), progress.clone());
        threads.push(std::thread::spawn(move || {
            let root = layoutfs::fs::root_ino();
            let mut flip = false;
            while !stop.load(Ordering::Relaxed) {
                let (f, t) = if flip { ("q", "p") } else { ("p", "q") };
                if h.fs.rename(root, f, root, t, false, 5).is_ok() {
                    flip = !flip;
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for w in 0..2u32 {
        let (h, stop, progress, blobs, index) = (
            h.clone(),
            stop.clone(),
            progress.clone(),
            blobs.clone(),
            index.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let repo = if h.walk("p").is_ok() { "p/a" } else { "q/a" };
                let Ok(alg) = h.walk(&format!("{repo}/blobs/sha256")) else {
                    continue;
                };
                let (name, bytes) = &blobs[i % blobs.len()];
                if let Ok((_, o)) = h.fs.create(alg.ino, &format!("{name}.{w}tmp")) {
                    let _ = h.fs.write(o.fh, 0, bytes);
                    let _ = h.fs.flush(o.fh, 10 + w);
                    h.fs.release(o.fh);
                }
                if i % 7 == 0 {
                    if let Ok(dir) = h.walk(repo) {
                        let fh = match h.fs.lookup(dir.ino, OsStr::new("index.json")) {
                            Ok(a) => {
                                h.fs.open(a.ino, libc::O_WRONLY | libc::O_TRUNC, 10 + w)
                                    .map(|o| o.fh)
                            }
                            Err(_) => h.fs.create(dir.ino, "index.json").map(|c| c.1.fh),
                        };
                        if let Ok(fh) = fh {
                            let _ = h.fs.write(fh, 0, &index);
                            let _ = h.fs.flush(fh, 10 + w);
                            h.fs.release(fh);
                        }
                    }
                }
                i += 1;
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        let (h, stop, progress) = (h.clone(), stop.clone(), progress.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for p in [
                    "p/a",
                    "q/a",
                    "p/a/blobs/sha256",
                    "q/a/blobs/sha256",
                    "p",
                    "q",
                ] {
                    let _ = h.list(p);
                    let _ = h
                        .walk(&format!("{p}/index.json"))
                        .and_then(|a| h.fs.getattr(a.ino));
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut last = 0;
    for _ in 0..6 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = progress.load(Ordering::Relaxed);
        assert!(now > last, "no progress in 500 ms: a deadlock");
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    h.fs.invalidate();
    let live = if h.walk("p").is_ok() { "p/a:" } else { "q/a:" };
    let all = images(&h);
    assert!(
        all.iter().all(|n| n.starts_with(live)),
        "images {all:?}, but only {live} exists; root lists {:?}",
        h.list("")
    );
}

/// Finding 7: a blob that reaches `blobs/<alg>/<hex>` by the rename of a directory above it (a
/// staging directory renamed onto `blobs`, or `blobs/.tmp` onto `blobs/sha256`) is never
/// committed: a scratch directory is only renamed (`move_to`), its files stay temporary files
/// under a scratch directory that shadows the layout's `blobs`, and the image written next waits
/// for blobs that are listed right there.
#[test]
fn blobs_that_arrive_by_renaming_their_directory_are_never_committed() {
    let h = Harness::new();
    let src = layout(&h, "src", 1, 91);
    mkdir_p(&h, "r").unwrap();
    let r = h.walk("r").unwrap().ino;
    h.fs.mkdir(r, ".stage").unwrap();
    let stage = h.walk("r/.stage").unwrap().ino;
    h.fs.mkdir(stage, "sha256").unwrap();
    let alg = h.walk("r/.stage/sha256").unwrap().ino;
    for (name, bytes) in blobs_of(&src) {
        let fh = h.fs.create(alg, &name).unwrap().1.fh;
        h.fs.write(fh, 0, &bytes).unwrap();
        h.fs.flush(fh, 1).unwrap();
        h.fs.release(fh);
    }
    h.fs.rename(r, ".stage", r, "blobs", false, 1).unwrap();
    put(
        &h,
        "r/oci-layout",
        &std::fs::read(src.join("oci-layout")).unwrap(),
        1,
    )
    .unwrap();
    put(
        &h,
        "r/index.json",
        &std::fs::read(src.join("index.json")).unwrap(),
        1,
    )
    .unwrap();
    let mut listed = h.list("r/blobs/sha256").unwrap_or_default();
    listed.sort();
    assert!(
        h.fs.pending().is_empty() && images(&h) == ["r:t0"],
        "every blob is listed at r/blobs/sha256 ({} of them), yet pending: {:?}, registered: {:?}",
        listed.len(),
        h.fs.pending()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        images(&h)
    );
}
