//! Checks shared by the tests of writers into the mount (`tests/writers.rs`): the blobs of a
//! layout, an export compared blob by blob with a source, the names and completeness that
//! `layoutfs images` reports, a tool run that fails with its own error and the daemon's log,
//! the layout's fixed modes, and a store left clean. `blobs_of`, `same_blobs`, `names` and
//! `store_is_clean` are the checks `tests/mount_write.rs` keeps for itself; `exported_blobs`
//! here also clears an earlier export of the same name.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use layoutfs::digest::{Algorithm, Digest};

use super::mount::Mounted;
use super::{fsck_clean, sh, tree, Env};

/// Modes the mount shows whatever a writer sets (README, "The mount").
const DIR_MODE: u32 = 0o755;
const BLOB_MODE: u32 = 0o444;
const LAYOUT_FILE_MODE: u32 = 0o444;
const INDEX_MODE: u32 = 0o644;

/// The blobs of a layout or extracted archive directory: name -> digest of the bytes.
pub fn blobs_of(dir: &Path) -> BTreeMap<String, String> {
    tree(&dir.join("blobs/sha256"))
        .into_iter()
        .map(|(name, bytes)| (name, Digest::of(Algorithm::Sha256, &bytes).to_string()))
        .collect()
}

/// Every blob of `exported` is the source's blob of that name, byte for byte (a source layout
/// may hold blobs no image uses: umoci keeps the manifests it replaced).
pub fn same_blobs(exported: &BTreeMap<String, String>, source: &BTreeMap<String, String>) {
    assert!(!exported.is_empty());
    for (name, digest) in exported {
        assert_eq!(source.get(name), Some(digest), "blob {name}");
        assert_eq!(*digest, format!("sha256:{name}"));
    }
}

/// Exports `what` from `env`'s store, extracts it into a new directory (an earlier export
/// of the same name is removed first, so that its blobs are not counted), and returns its
/// blobs.
pub fn exported_blobs(env: &Env, what: &str) -> BTreeMap<String, String> {
    let archive = env.path(&format!("{}.tar", what.replace(['/', ':'], "_")));
    env.ok(&["export", "-o", archive.to_str().unwrap(), what]);
    let dir = env.path(&format!("{}.x", what.replace(['/', ':'], "_")));
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    fs::create_dir(&dir).unwrap();
    sh(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-xf")
        .arg(&archive));
    blobs_of(&dir)
}

/// The names `layoutfs images` lists, sorted as it prints them.
pub fn names(env: &Env) -> Vec<String> {
    env.images().into_iter().map(|(n, _)| n).collect()
}

/// The names `layoutfs images --format json` calls incomplete (a blob missing or damaged).
pub fn incomplete(env: &Env) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["images", "--format", "json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|i| i["complete"] != serde_json::Value::Bool(true))
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Every blob file in the store hashes to its name, and no ingest is left.
pub fn store_is_clean(env: &Env) {
    fsck_clean(env);
    for (hex, bytes) in tree(&env.store.join("blobs/sha256")) {
        assert_eq!(
            Digest::of(Algorithm::Sha256, &bytes).hex(),
            hex,
            "a store blob does not match its name"
        );
    }
    let ingests = fs::read_dir(env.store.join("ingest"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(ingests, 0, "ingests left behind");
}

/// Runs a writer; a non-zero exit, or an error in the daemon's log (a writer may ignore a
/// failed close: umoci does), fails the test with the tool's output and the daemon's log.
/// Returns standard output.
pub fn run_writer(m: &Mounted, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/setup to install the writers)"));
    assert!(
        out.status.success(),
        "{cmd:?} exited with {}:\n{}{}\n--- the daemon's log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
    assert_eq!(
        m.errors(),
        Vec::<String>::new(),
        "{cmd:?} succeeded, and the daemon logged errors:\n{}",
        m.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What in repository directory `dir` is not found by lookup (`lstat`) though listed, or
/// shows other modes than the layout's fixed ones: directories 0755, blobs and `oci-layout`
/// 0444, `index.json` 0644. Empty when all is well.
pub fn modes_not_fixed(dir: &Path) -> Vec<String> {
    let mut wrong = Vec::new();
    // `want` None: a name readdir listed, which lookup must find.
    let mut check = |p: &Path, want: Option<u32>| match fs::symlink_metadata(p) {
        Err(e) if want.is_none() => wrong.push(format!("{}: listed, yet {e}", p.display())),
        Err(e) => wrong.push(format!("{}: {e}", p.display())),
        Ok(md) if want.is_some_and(|w| md.mode() & 0o7777 != w) => {
            wrong.push(format!("{}: mode {:o}", p.display(), md.mode() & 0o7777))
        }
        Ok(_) => {}
    };
    check(dir, Some(DIR_MODE));
    check(&dir.join("oci-layout"), Some(LAYOUT_FILE_MODE));
    check(&dir.join("index.json"), Some(INDEX_MODE));
    check(&dir.join("blobs"), Some(DIR_MODE));
    let sha = dir.join("blobs/sha256");
    check(&sha, Some(DIR_MODE));
    for e in fs::read_dir(&sha).into_iter().flatten() {
        check(&e.unwrap().path(), Some(BLOB_MODE));
    }
    for e in fs::read_dir(dir).into_iter().flatten() {
        check(&e.unwrap().path(), None);
    }
    wrong
}

/// The tags (`org.opencontainers.image.ref.name`) an `index.json` lists, sorted.
pub fn tags_of(index: &[u8]) -> Vec<String> {
    let index: serde_json::Value = serde_json::from_slice(index).unwrap();
    let mut tags: Vec<String> = index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("index.json: {index}"))
        .iter()
        .map(|d| {
            d["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    tags.sort();
    tags
}
