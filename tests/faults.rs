//! Faults and concurrency through the binary: several processes importing overlapping images,
//! exporting, removing and collecting garbage at once; `layoutfs import` killed with SIGKILL
//! at random points; an import that fills the disk. Afterwards fsck is clean, nothing is half
//! registered, and every registered image exports byte for byte as it did from a clean store.
//! (The mount daemon killed mid-copy is in tests/mount_write.rs.)

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::gen::{LayoutBuilder, SplitMix};
use common::{fsck_clean, seed, stderr, tar_dir, Env, Tmpfs};

/// How long the stress test keeps its workers busy.
const STRESS: Duration = Duration::from_secs(15);
/// Rounds of the import crash test.
const CRASH_ROUNDS: u64 = 20;

/// An image's archive from `env`, or the one-line error.
fn export(env: &Env, name: &str) -> Result<Vec<u8>, String> {
    let out = env.cmd(&["export", name]).output().unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(stderr(&out))
    }
}

/// The blob files of a store, by name, with their sizes.
fn blob_files(store: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for alg in ["sha256", "sha512"] {
        if let Ok(d) = fs::read_dir(store.join("blobs").join(alg)) {
            for e in d {
                let e = e.unwrap();
                out.insert(
                    format!("{alg}:{}", e.file_name().to_string_lossy()),
                    e.metadata().unwrap().len(),
                );
            }
        }
    }
    out
}

fn ingests(store: &Path) -> usize {
    fs::read_dir(store.join("ingest")).map_or(0, |d| d.count())
}

fn names(env: &Env) -> Vec<String> {
    env.images().into_iter().map(|(n, _)| n).collect()
}

/// Layouts `img0..img{n}` over a pool of shared layers, with one layer of their own each:
/// each tagged `1`, so that their images are `imgN:1`. Odd ones are also packed as archives.
fn overlapping_layouts(env: &Env, n: usize) -> Vec<PathBuf> {
    const POOL: [u64; 6] = [100_000, 700_000, 2_000_000, 300_000, 1_200_000, 50_000];
    (0..n)
        .map(|i| {
            let dir = env.path(&format!("img{i}"));
            let mut b = LayoutBuilder::new(&dir);
            let mut layers: Vec<_> = [i, i + 1, i + 3]
                .iter()
                .map(|&k| b.add_random_layer(POOL[k % POOL.len()], k as u64 % POOL.len() as u64))
                .collect();
            layers.push(b.add_random_layer(40_000 + i as u64, 100 + i as u64));
            let m = b.add_manifest(&layers, "amd64");
            b.tag(&m, Some("1")).write_index();
            if i % 2 == 1 {
                let tar = env.path(&format!("img{i}.tar"));
                tar_dir(&dir, &tar);
                return tar;
            }
            dir
        })
        .collect()
}

/// The archives a clean store exports for these sources: what every later export must equal.
fn reference_exports(sources: &[PathBuf]) -> BTreeMap<String, Vec<u8>> {
    let clean = Env::new();
    let mut out = BTreeMap::new();
    for (i, src) in sources.iter().enumerate() {
        clean.ok(&["import", src.to_str().unwrap()]);
        let name = format!("img{i}:1");
        out.insert(name.clone(), export(&clean, &name).unwrap());
    }
    out
}

#[test]
fn stress_of_imports_exports_removals_and_gc_loses_nothing() {
    let env = Env::new();
    let sources = overlapping_layouts(&env, 8);
    let reference = reference_exports(&sources);
    // img0 and img1 stay throughout; the others come and go.
    for src in &sources[..2] {
        env.ok(&["import", src.to_str().unwrap()]);
    }
    let volatile = 2..sources.len();
    let seed = seed();
    eprintln!("seed {seed}");
    let deadline = Instant::now() + STRESS;
    let counts: [AtomicUsize; 4] = Default::default();
    let (imports, exports, removals, gcs) = (&counts[0], &counts[1], &counts[2], &counts[3]);
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let (env, sources, volatile) = (&env, &sources, volatile.clone());
            s.spawn(move || {
                let mut rng = SplitMix(seed ^ w);
                while Instant::now() < deadline {
                    let i = volatile.start + (rng.next() as usize) % volatile.len();
                    let out = env.run(&["import", sources[i].to_str().unwrap()]);
                    assert!(out.status.success(), "import img{i}: {}", stderr(&out));
                    imports.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let (env, reference) = (&env, &reference);
        s.spawn(move || {
            let mut rng = SplitMix(seed ^ 7);
            while Instant::now() < deadline {
                let i = (rng.next() % 8) as usize;
                let name = format!("img{i}:1");
                match export(env, &name) {
                    Ok(bytes) => assert!(bytes == reference[&name], "{name} exported differently"),
                    // A volatile image may be removed (and its blobs collected) before its
                    // export holds them: that fails cleanly, before any output.
                    Err(e) => assert!(
                        i >= 2 && (e.contains("no such image") || e.contains("missing")),
                        "export {name}: {e}"
                    ),
                }
                exports.fetch_add(1, Ordering::Relaxed);
            }
        });
        let volatile2 = volatile.clone();
        s.spawn(move || {
            let mut rng = SplitMix(seed ^ 11);
            while Instant::now() < deadline {
                let i = volatile2.start + (rng.next() as usize) % volatile2.len();
                let out = env.run(&["rm", &format!("img{i}")]);
                assert!(
                    out.status.success() || stderr(&out).contains("no such image"),
                    "rm img{i}: {}",
                    stderr(&out)
                );
                removals.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(rng.next() % 50));
            }
        });
        s.spawn(move || {
            while Instant::now() < deadline {
                let out = env.run(&["gc", "--grace", "0"]);
                assert!(out.status.success(), "gc: {}", stderr(&out));
                gcs.fetch_add(1, Ordering::Relaxed);
            }
        });
    });
    let counts: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    eprintln!("imports, exports, removals, gcs: {counts:?}");
    assert!(
        counts.iter().all(|c| *c >= 3),
        "every worker ran: {counts:?}"
    );

    // Nothing lost: fsck is clean, every registered image is complete and exports as it did
    // from a clean store; then a last gc keeps all of that.
    for round in 0..2 {
        fsck_clean(&env);
        let names = names(&env);
        assert!(names.contains(&"img0:1".to_owned()) && names.contains(&"img1:1".to_owned()));
        let v: serde_json::Value =
            serde_json::from_str(&env.ok(&["images", "--format", "json"])).unwrap();
        for row in v.as_array().unwrap() {
            assert_eq!(row["complete"], true, "round {round}: {row}");
        }
        for name in &names {
            assert!(
                export(&env, name).unwrap() == reference[name],
                "round {round}: {name} exported differently"
            );
        }
        env.ok(&["gc", "--grace", "0"]);
    }
    assert_eq!(ingests(&env.store), 0);
}

/// A layout of two images (`big:1`, `big:2`) of `layers` layers of `mib` MiB each.
fn two_image_layout(env: &Env, name: &str, layers: u64, mib: u64) -> PathBuf {
    let dir = env.path(name);
    let mut b = LayoutBuilder::new(&dir);
    for tag in 1..=2u64 {
        let ls: Vec<_> = (0..layers)
            .map(|i| b.add_random_layer(mib << 20, tag * 100 + i))
            .collect();
        let m = b.add_manifest(&ls, "amd64");
        b.tag(&m, Some(&tag.to_string()));
    }
    b.write_index();
    dir
}

#[test]
fn import_killed_at_random_points_leaves_nothing_half_registered() {
    let env = Env::new();
    let dir = two_image_layout(&env, "big", 4, 8);
    let tar = env.path("big.tar");
    tar_dir(&dir, &tar);
    let both = ["big:1".to_owned(), "big:2".to_owned()];
    let reference: Vec<Vec<u8>> = {
        let clean = Env::new();
        let t = Instant::now();
        clean.ok(&["import", dir.to_str().unwrap()]);
        eprintln!("a whole import takes {:?}", t.elapsed());
        both.iter().map(|n| export(&clean, n).unwrap()).collect()
    };
    let whole = {
        let clean = Env::new();
        let t = Instant::now();
        clean.ok(&["import", tar.to_str().unwrap()]);
        t.elapsed().as_millis() as u64
    };
    eprintln!("an import of the archive takes {whole} ms");
    let seed = seed();
    let mut rng = SplitMix(seed);
    let mut killed_mid_way = 0;
    for round in 0..CRASH_ROUNDS {
        let delay = rng.next() % whole.max(1);
        let (how, mut child) = match round % 3 {
            0 => ("dir", env.cmd(&["import", dir.to_str().unwrap()])),
            1 => ("archive", env.cmd(&["import", tar.to_str().unwrap()])),
            _ => {
                let mut c = env.cmd(&["import", "--name", "big", "-"]);
                c.stdin(fs::File::open(&tar).unwrap());
                ("stdin", c)
            }
        };
        let mut child = child
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        let found = names(&env);
        eprintln!(
            "round {round}: {how}, killed after {delay} ms (seed {seed}): {status}, {found:?}"
        );
        // All of the import's names or none of them.
        assert!(
            found.is_empty() || found == both,
            "round {round}: half registered: {found:?}"
        );
        if status.success() {
            assert_eq!(found, both);
        }
        fsck_clean(&env);
        if found.is_empty() {
            killed_mid_way += 1;
        }
        // A second import completes over whatever the killed one left, and its images are as
        // from a clean store.
        env.ok(&["import", dir.to_str().unwrap()]);
        assert_eq!(names(&env), both, "round {round}");
        for (n, want) in both.iter().zip(&reference) {
            assert!(
                export(&env, n).unwrap() == *want,
                "round {round}: {n} exported differently"
            );
        }
        fsck_clean(&env);
        // The next round starts from an empty store: the dead import's leases and ingests go
        // with the images' blobs.
        env.ok(&["rm", "big"]);
        env.ok(&["gc", "--grace", "0"]);
        assert!(blob_files(&env.store).is_empty(), "round {round}");
        assert_eq!(ingests(&env.store), 0, "round {round}");
    }
    assert!(
        killed_mid_way >= CRASH_ROUNDS / 4,
        "{killed_mid_way} kills landed mid-import"
    );
}

#[test]
fn a_full_disk_fails_an_import_with_enospc_and_leaves_the_store_as_it_was() {
    let mut env = Env::new();
    let small = two_image_layout(&env, "small", 1, 1);
    let big = two_image_layout(&env, "big", 2, 10);
    let big_tar = env.path("big.tar");
    tar_dir(&big, &big_tar);
    let reference: Vec<Vec<u8>> = {
        let clean = Env::new();
        clean.ok(&["import", big.to_str().unwrap()]);
        ["big:1", "big:2"]
            .map(|n| export(&clean, n).unwrap())
            .to_vec()
    };
    env.store = env.path("tmpfs/store");
    let tmpfs = Tmpfs::mount(&env.path("tmpfs"), 24);
    env.ok(&["import", small.to_str().unwrap()]);
    let images = env.images();
    let blobs = blob_files(&env.store);

    let src_dir = big.to_str().unwrap().to_owned();
    let src_tar = big_tar.to_str().unwrap().to_owned();
    for args in [
        vec!["import", src_dir.as_str()],
        vec!["import", src_tar.as_str()],
    ] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        full_disk_error(&err, &format!("{args:?}"));
        // The store is as it was: same images, same blobs, no ingest, nothing wrong.
        assert_eq!(env.images(), images);
        assert_eq!(blob_files(&env.store), blobs, "{args:?}");
        assert_eq!(ingests(&env.store), 0);
        fsck_clean(&env);
    }
    // Standard input too.
    let out = env
        .cmd(&["import", "--name", "big", "-"])
        .stdin(fs::File::open(&big_tar).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "stdin");
    full_disk_error(&stderr(&out), "stdin");
    assert_eq!(blob_files(&env.store), blobs);
    assert_eq!(ingests(&env.store), 0);

    // Space freed: the import succeeds and its images are whole.
    tmpfs.resize(96);
    env.ok(&["import", src_dir.as_str()]);
    for (n, want) in ["big:1", "big:2"].iter().zip(&reference) {
        assert!(
            export(&env, n).unwrap() == *want,
            "{n} exported differently"
        );
    }
    fsck_clean(&env);
    drop(tmpfs);
    let _ = Command::new("true").status();
}

/// The one line a failed import prints on a full disk: the disk is named as the cause, never
/// the input.
fn full_disk_error(err: &str, what: &str) {
    assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
    assert!(
        err.contains("No space left on device") || err.contains("database or disk is full"),
        "{what}: {err}"
    );
    assert!(!err.contains("corrupt"), "{what}: blames the input: {err}");
}

/// Where `layoutfs import` stops when asked (`LAYOUTFS_TEST_PAUSE_AT`), in its batch's order:
/// every blob written and checked but not yet synced nor placed; after the first rename into
/// `blobs/` of several; everything durable and placed, nothing registered yet.
const PAUSE_POINTS: [&str; 3] = ["staged", "renaming", "registering"];

/// Runs `cmd` (an import) stopped at `point`, waits until it says it is there and kills it
/// with SIGKILL.
fn import_killed_at(mut cmd: Command, point: &str) {
    use std::io::BufRead;
    let mut child = cmd
        .env("LAYOUTFS_TEST_PAUSE_AT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let said = lines.find_map(|l| l.ok().filter(|l| l.contains("paused at")));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    assert_eq!(
        said.as_deref(),
        Some(format!("layoutfs: paused at {point}").as_str()),
        "{point}: {status}"
    );
}

#[test]
fn import_killed_inside_its_batch_registers_nothing_and_places_only_whole_blobs() {
    let env = Env::new();
    let dir = two_image_layout(&env, "big", 3, 1);
    let tar = env.path("big.tar");
    tar_dir(&dir, &tar);
    let both = ["big:1".to_owned(), "big:2".to_owned()];
    let (reference, all_blobs) = {
        let clean = Env::new();
        clean.ok(&["import", dir.to_str().unwrap()]);
        let exports: Vec<Vec<u8>> = both.iter().map(|n| export(&clean, n).unwrap()).collect();
        (exports, blob_files(&clean.store))
    };
    for (round, point) in PAUSE_POINTS.iter().enumerate() {
        for how in ["dir", "archive", "stdin"] {
            let cmd = match how {
                "dir" => env.cmd(&["import", dir.to_str().unwrap()]),
                "archive" => env.cmd(&["import", tar.to_str().unwrap()]),
                _ => {
                    let mut c = env.cmd(&["import", "--name", "big", "-"]);
                    c.stdin(fs::File::open(&tar).unwrap());
                    c
                }
            };
            import_killed_at(cmd, point);
            let case = format!("killed at {point}, {how}");
            assert!(
                names(&env).is_empty(),
                "{case}: registered {:?}",
                names(&env)
            );
            // What is under blobs/ is whole: fsck re-hashes every blob; and only blobs of
            // the import, of their full size.
            fsck_clean(&env);
            let found = blob_files(&env.store);
            for (name, size) in &found {
                assert_eq!(all_blobs.get(name), Some(size), "{case}: {name}");
            }
            match round {
                0 => assert!(
                    found.is_empty(),
                    "{case}: placed before the sync: {found:?}"
                ),
                1 => assert!(
                    !found.is_empty() && found.len() < all_blobs.len(),
                    "{case}: {} of {} placed",
                    found.len(),
                    all_blobs.len()
                ),
                _ => assert_eq!(found, all_blobs, "{case}: all placed before registering"),
            }
            // A second import completes over what the killed one left, as from a clean store.
            env.ok(&["import", dir.to_str().unwrap()]);
            assert_eq!(names(&env), both, "{case}");
            for (n, want) in both.iter().zip(&reference) {
                assert!(export(&env, n).unwrap() == *want, "{case}: {n} differs");
            }
            fsck_clean(&env);
            env.ok(&["rm", "big"]);
            env.ok(&["gc", "--grace", "0"]);
            assert!(blob_files(&env.store).is_empty(), "{case}");
            assert_eq!(ingests(&env.store), 0, "{case}");
        }
    }
}
