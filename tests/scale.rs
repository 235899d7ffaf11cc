//! The store at scale (issue 16), in CI: the checks of `scripts/bench-scale` on stores of 1,000
//! and 10,000 small images (`tests/common/scale.rs`: 100 and 1,000 repositories, tags t0..t9,
//! two of eight shared layers each), with the debug binary. Each CLI command and the mount are
//! checked for what they show (image count, `ls -lR` entry count, one repository's
//! `index.json`, a new tag appearing live) and timed against generous bounds: absolute ones at
//! 10,000 images (several times the goals scaled to 10,000, for a debug build on a
//! shared machine) and the growth from 1,000 to 10,000 images, which is about 10x when linear
//! and 100x when quadratic: `MAX_GROWTH` catches the latter.
//!
//! The stores are written straight into the store (blobs as files, names through the records)
//! rather than imported: import speed is the business of other tests, and one fsync per blob
//! would take most of the time budget.

mod common;
#[path = "common/scale.rs"]
mod scale;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::Mounted;
use common::Env;
use layoutfs::oci::ImageIndex;

/// GNU time, for the peak RSS of a command (scripts/setup installs it).
const TIME: &str = "/usr/bin/time";
/// Growth from 1,000 to 10,000 images allowed for any measure: linear is 10x, quadratic 100x.
const MAX_GROWTH: f64 = 40.0;
/// Times under this at 1,000 images are mostly process start: growth is measured from here.
const GROWTH_FLOOR: Duration = Duration::from_millis(100);
/// Bounds at 10,000 images (debug build), generous: on this 2-core machine shared by five
/// agents (load 8-11) the debug build took images 6.3 s, gc 10 s, fsck 10.6 s, ls -lR 19 s,
/// mount start 1 s, live update 0.75 s; a quiet run takes a third of that. The goals of issue 16 at 100,000 are: images < 2 s,
/// gc < 5 s, index.json < 10 ms, live update <= 1 s, mount start < 0.5 s, daemon RSS < 200 MiB,
/// CLI RSS < 64 MiB; ls -lR of 10,000 < 2 s, a root of 10,000 repositories < 1 s.
const CLI_BOUND: Duration = Duration::from_secs(30);
const FSCK_BOUND: Duration = Duration::from_secs(60);
const MOUNT_START_BOUND: Duration = Duration::from_secs(3);
const LS_ROOT_BOUND: Duration = Duration::from_secs(2);
const LS_LR_BOUND: Duration = Duration::from_secs(60);
const INDEX_LOOKUP_BOUND: Duration = Duration::from_millis(200);
const LIVE_UPDATE_BOUND: Duration = Duration::from_secs(3);
/// Peak RSS of a CLI command at 10,000 images (goal: < 64 MiB at 100,000).
const CLI_RSS_BOUND_KIB: u64 = 64 << 10;
/// The daemon's peak RSS after `ls -lR` of 10,000 images (goal: < 200 MiB at 100,000).
const DAEMON_RSS_BOUND_KIB: u64 = 200 << 10;

/// Writes the `n`-image store of `tests/common/scale.rs` into `env`'s store.
fn build(env: &Env, n: u64) {
    scale::write_store(&env.store, n).unwrap();
}

/// Runs `layoutfs ARGS` on `env`'s store, insists on success; its time, peak RSS (KiB) and
/// standard output.
/// The RSS comes from GNU time: the rusage of a child of this process would count the RSS of
/// this process, which the kernel carries over through fork and exec.
fn timed(env: &Env, args: &[&str]) -> (Duration, u64, String) {
    let rss_file = env.path("rss");
    let out_file = env.path("stdout");
    let mut cmd = Command::new(TIME);
    cmd.args(["-f", "%M", "-o"])
        .arg(&rss_file)
        .arg(env!("CARGO_BIN_EXE_layoutfs"))
        .arg("--store")
        .arg(&env.store)
        .args(args)
        .env_remove("LAYOUTFS_STORE")
        .env_remove("RUST_LOG")
        .env_remove("LAYOUTFS_LOG")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_file).unwrap());
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "layoutfs {args:?}: {}: {}",
        out.status,
        common::stderr(&out)
    );
    let rss = fs::read_to_string(&rss_file).unwrap();
    let stdout = fs::read_to_string(&out_file).unwrap();
    (took, rss.trim().parse().unwrap(), stdout)
}

/// Every entry under `dir`, as `ls -lR` lists them (lstat of each, directories recursed).
fn walk(dir: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = fs::symlink_metadata(e.path()).unwrap();
        n += 1;
        if meta.is_dir() {
            n += walk(&e.path());
        }
    }
    n
}

/// What `ls -lR` of the mount of `n` images lists: per repository its directory, `blobs`,
/// `blobs/sha256`, `index.json`, `oci-layout`, each image's config and manifest and the pool
/// layers its images use.
fn expected_entries(n: u64) -> usize {
    let repos = n.div_ceil(scale::TAGS_PER_REPO);
    (0..repos)
        .map(|r| {
            let images = r * scale::TAGS_PER_REPO..((r + 1) * scale::TAGS_PER_REPO).min(n);
            let layers: BTreeSet<u64> = images.clone().flat_map(scale::layers_of).collect();
            5 + 2 * images.count() + layers.len()
        })
        .sum()
}

fn daemon_status(pid: i32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One size's measures.
#[derive(Debug, Default)]
struct Measures {
    cli: Vec<(&'static str, Duration, u64)>,
    mount_start: Duration,
    ls_root: Duration,
    ls_lr: Duration,
    index_lookup: Duration,
    live_update: Duration,
    daemon_hwm_kib: u64,
}

impl Measures {
    fn cli(&self, name: &str) -> Duration {
        self.cli.iter().find(|c| c.0 == name).unwrap().1
    }
}

/// Mounts `env`'s store: the time until the root lists, and the mount.
fn mount(env: &Env, name: &str) -> (Duration, Mounted) {
    let start = Instant::now();
    let m = Mounted::start(env, name, &[]);
    fs::read_dir(&m.dir).unwrap().next();
    (start.elapsed(), m)
}

fn measure(n: u64) -> Measures {
    let env = Env::new();
    let t = Instant::now();
    build(&env, n);
    eprintln!("scale {n}: store built in {:?}", t.elapsed());
    let repos = (n / scale::TAGS_PER_REPO) as usize;
    let mut m = Measures::default();

    // The CLI.
    let first_1000: Vec<String> = (0..(n / scale::TAGS_PER_REPO).min(100))
        .map(|r| format!("r{r:05}"))
        .collect();
    let out = env.path("out.tar");
    let export: Vec<&str> = ["export", "-o", out.to_str().unwrap()]
        .into_iter()
        .chain(first_1000.iter().map(String::as_str))
        .collect();
    let cmds: [(&'static str, Vec<&str>); 7] = [
        ("images", vec!["images"]),
        ("images --format json", vec!["images", "--format", "json"]),
        ("tag", vec!["tag", "r00000:t0", "scale:tagged"]),
        ("rm", vec!["rm", "scale:tagged"]),
        ("gc", vec!["gc"]),
        ("fsck", vec!["fsck"]),
        ("export 1,000", export),
    ];
    let mut listed = Vec::new();
    for (name, args) in cmds {
        let (took, rss, stdout) = timed(&env, &args);
        m.cli.push((name, took, rss));
        match name {
            "images --format json" => {
                let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                listed = v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| {
                        (
                            i["name"].as_str().unwrap().to_owned(),
                            i["digest"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect();
            }
            "images" => assert_eq!(
                stdout.lines().count(),
                n as usize + 1,
                "images: a heading and a line an image"
            ),
            _ => {}
        }
    }
    assert_eq!(listed.len(), n as usize, "images lists every image");
    assert!(listed.iter().any(|(name, _)| name == "r00000:t0"));
    let tar = fs::metadata(&out).unwrap().len();
    assert!(
        tar > 1000 * 500,
        "the export of 1,000 images is {tar} bytes"
    );
    fs::remove_file(&out).unwrap();
    // The mount, fresh for each measure.
    let (took, mnt) = mount(&env, "mnt");
    m.mount_start = took;
    drop(mnt);
    let (_, mnt) = mount(&env, "mnt");
    let t = Instant::now();
    let root = fs::read_dir(&mnt.dir).unwrap().count();
    m.ls_root = t.elapsed();
    assert_eq!(root, repos, "the root lists every repository");
    drop(mnt);
    let (_, mnt) = mount(&env, "mnt");
    let t = Instant::now();
    let entries = walk(&mnt.dir);
    m.ls_lr = t.elapsed();
    assert_eq!(entries, expected_entries(n), "ls -lR of the mount");
    m.daemon_hwm_kib = daemon_status(mnt.pid(), "VmHWM:");
    drop(mnt);
    let (_, mnt) = mount(&env, "mnt");
    let one = scale::repo(n / 2);
    let path = mnt.path(&format!("{one}/index.json"));
    let t = Instant::now();
    let bytes = fs::read(&path).unwrap();
    m.index_lookup = t.elapsed();
    let index = ImageIndex::parse("index.json", &bytes).unwrap();
    let tags: BTreeSet<String> = index
        .manifests
        .iter()
        .map(|d| d.annotations[layoutfs::oci::ANNOTATION_REF_NAME].clone())
        .collect();
    let want: BTreeSet<String> = (0..scale::TAGS_PER_REPO).map(|t| format!("t{t}")).collect();
    assert_eq!(tags, want, "{one}/index.json");
    let digest_t3 = &listed
        .iter()
        .find(|(name, _)| *name == format!("{one}:t3"))
        .unwrap()
        .1;
    assert!(
        index
            .manifests
            .iter()
            .any(|d| d.digest.to_string() == *digest_t3
                && d.annotations[layoutfs::oci::ANNOTATION_REF_NAME] == "t3"),
        "{one}/index.json names t3 as images does"
    );
    // The live update: a new tag shows in the mount's index.json.
    let t = Instant::now();
    env.ok(&["tag", &format!("{one}:t0"), &format!("{one}:live")]);
    loop {
        let bytes = fs::read(&path).unwrap();
        if String::from_utf8_lossy(&bytes).contains("\"live\"") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{one}:live never showed in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    m.live_update = t.elapsed();
    assert!(mnt.errors().is_empty(), "{:?}", mnt.errors());
    drop(mnt);
    // gc --dry-run with half the repositories removed: their configs and manifests go.
    let half: Vec<String> = (0..repos).step_by(2).map(|r| format!("r{r:05}")).collect();
    let mut rm = vec!["rm"];
    rm.extend(half.iter().map(String::as_str));
    env.ok(&rm);
    let (took, rss, dry) = timed(&env, &["gc", "--dry-run"]);
    m.cli.push(("gc --dry-run (half removed)", took, rss));
    let would = dry.lines().filter(|l| l.starts_with("sha256:")).count();
    assert_eq!(
        would,
        half.len() * 20,
        "gc --dry-run: {}",
        dry.lines().last().unwrap()
    );
    eprintln!("scale {n}: {m:#?}");
    m
}

#[test]
fn the_store_at_10000_images_grows_linearly_and_keeps_its_bounds() {
    assert!(
        Path::new(TIME).is_file(),
        "{TIME} is not installed: run scripts/setup (tests never skip what CI must run)"
    );
    let small = measure(1_000);
    let big = measure(10_000);
    let mut failed = Vec::new();
    let mut bound = |what: &str, v: Duration, max: Duration| {
        if v > max {
            failed.push(format!("{what} at 10,000 images: {v:?} > {max:?}"));
        }
    };
    for (name, took, _) in &big.cli {
        let max = if *name == "fsck" {
            FSCK_BOUND
        } else {
            CLI_BOUND
        };
        bound(name, *took, max);
    }
    bound("mount start", big.mount_start, MOUNT_START_BOUND);
    bound("ls of the root", big.ls_root, LS_ROOT_BOUND);
    bound("ls -lR", big.ls_lr, LS_LR_BOUND);
    bound(
        "cat of one index.json",
        big.index_lookup,
        INDEX_LOOKUP_BOUND,
    );
    bound("live update", big.live_update, LIVE_UPDATE_BOUND);
    for (name, _, rss) in &big.cli {
        if *rss > CLI_RSS_BOUND_KIB {
            failed.push(format!("peak RSS of {name}: {rss} KiB"));
        }
    }
    if big.daemon_hwm_kib > DAEMON_RSS_BOUND_KIB {
        failed.push(format!(
            "the daemon's peak RSS after ls -lR: {} KiB",
            big.daemon_hwm_kib
        ));
    }
    let mut growth = |what: &str, a: Duration, b: Duration| {
        let g = b.as_secs_f64() / a.max(GROWTH_FLOOR).as_secs_f64();
        if g > MAX_GROWTH {
            failed.push(format!(
                "{what}: {a:?} at 1,000 images, {b:?} at 10,000 ({g:.0}x)"
            ));
        }
    };
    for (name, took, _) in &big.cli {
        growth(name, small.cli(name), *took);
    }
    growth("mount start", small.mount_start, big.mount_start);
    growth("ls of the root", small.ls_root, big.ls_root);
    growth("ls -lR", small.ls_lr, big.ls_lr);
    growth("live update", small.live_update, big.live_update);
    let hwm = big.daemon_hwm_kib as f64 / small.daemon_hwm_kib as f64;
    if hwm > MAX_GROWTH {
        failed.push(format!("the daemon's peak RSS grew {hwm:.0}x"));
    }
    assert!(failed.is_empty(), "{failed:#?}");
}
