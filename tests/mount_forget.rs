//! A real mount (root and /dev/fuse, as in CI; this test never skips) giving memory back: after
//! `ls -lR` the kernel holds an inode per entry; once it drops its caches (`drop_caches`) it
//! forgets them, the daemon's inode table shrinks to the root, and a second walk sees the same
//! inode numbers.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::gen::LayoutBuilder;
use common::mount::Mounted;
use common::Env;

const REPOS: usize = 40;
const TAGS: usize = 2;
/// How long the kernel may take to send its forgets after dropping its caches.
const FORGET_WAIT: Duration = Duration::from_secs(20);
/// Inodes the table may keep after the kernel dropped its caches: the root (pinned), and the
/// few the kernel may still hold (its reference on the mount's root dentry).
const LIVE_AFTER_DROP: usize = 4;

/// A store of `REPOS` repositories of `TAGS` images each, named by their
/// `io.containerd.image.name` annotations in one layout.
fn many_env() -> Env {
    let env = Env::new();
    let dir = env.path("src");
    let mut b = LayoutBuilder::new(&dir);
    let shared = b.add_random_layer(4096, 1);
    for r in 0..REPOS {
        for t in 0..TAGS {
            let own = b.add_random_layer(512, 100 + (r * TAGS + t) as u64);
            let mut m = b.add_manifest(&[shared.clone(), own], "amd64");
            m.annotations
                .insert("io.containerd.image.name".into(), format!("r{r:03}:t{t}"));
            b.tag(&m, Some(&format!("t{t}")));
        }
    }
    b.write_index();
    env.ok(&["import", dir.to_str().unwrap()]);
    env
}

/// Every path below `dir` with its inode number, as `ls -lR` reads them (readdir, lstat).
fn walk(dir: &Path, out: &mut BTreeMap<String, u64>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = fs::symlink_metadata(e.path()).unwrap();
        out.insert(e.path().display().to_string(), meta.ino());
        if meta.is_dir() {
            walk(&e.path(), out);
        }
    }
}

/// The `live` counts of the daemon's forget lines in `log`.
fn live_counts(log: &str) -> Vec<usize> {
    log.lines()
        .filter(|l| l.contains("forget"))
        .filter_map(|l| l.split("live=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn forgotten_inodes_are_freed_and_come_back_with_their_numbers() {
    let env = many_env();
    let m = Mounted::start_logging(&env, "mnt", &[], "info,layoutfs::fuse=debug");
    let mut first = BTreeMap::new();
    walk(&m.dir, &mut first);
    // Per repository its directory, index.json, oci-layout, blobs/ and sha256/, and per image a
    // manifest, a config and a layer, besides the layer all share.
    assert_eq!(first.len(), REPOS * (5 + 3 * TAGS) + REPOS);
    let distinct: std::collections::BTreeSet<u64> = first.values().copied().collect();
    assert_eq!(
        distinct.len(),
        REPOS * (5 + 3 * TAGS) + 1,
        "one inode per node, the shared layer one node"
    );

    fs::write("/proc/sys/vm/drop_caches", "2")
        .expect("writing /proc/sys/vm/drop_caches (this test runs as root, as CI does)");
    let start = Instant::now();
    let least = loop {
        let least = live_counts(&m.log()).into_iter().min();
        if least.is_some_and(|n| n <= LIVE_AFTER_DROP) || start.elapsed() > FORGET_WAIT {
            break least;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let least = least.expect("the daemon logged no forget");
    assert!(
        least <= LIVE_AFTER_DROP,
        "{least} inodes still live of {}",
        distinct.len()
    );

    let mut again = BTreeMap::new();
    walk(&m.dir, &mut again);
    assert_eq!(
        first, again,
        "the same inode numbers after the kernel forgot them"
    );
    assert!(m.errors().is_empty(), "{:?}", m.errors());
}
