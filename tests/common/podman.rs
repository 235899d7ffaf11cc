//! `podman` for the tests: every call runs with a store, run root, temporary directory and home
//! of the test's own (the vfs driver, cgroupfs, no event log), so it works offline as root with
//! no configuration. Podman reuses layers it already holds by diff_id, so a test that expects a
//! load to fail uses a fresh directory (`podman_at`) for each attempt.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::{require, Env};

/// `podman` whose whole state lives under `dir` (made if missing).
pub fn podman_at(dir: &Path) -> Command {
    require("podman");
    for sub in ["home", "run", "tmp", "xdg"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let mut c = Command::new("podman");
    c.env("HOME", dir.join("home"))
        .env("XDG_RUNTIME_DIR", dir.join("xdg"))
        .env("XDG_CONFIG_HOME", dir.join("home/.config"))
        .env("XDG_DATA_HOME", dir.join("home/.local/share"))
        .env("XDG_CACHE_HOME", dir.join("home/.cache"))
        // oci-archive loads unpack into $TMPDIR (/var/tmp by default).
        .env("TMPDIR", dir.join("tmp"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .arg("--tmpdir")
        .arg(dir.join("tmp"))
        .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
        .args(["--events-backend", "none"]);
    c
}

/// `podman` with the test's own state, in `env`'s directory `podman/`.
pub fn podman(env: &Env) -> Command {
    podman_at(&env.path("podman"))
}
