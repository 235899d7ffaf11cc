//! Helpers shared by the integration tests: running the `layoutfs` binary against a store in
//! a temporary directory, the peer tools (which must be installed: scripts/setup does it;
//! a missing tool fails the test rather than skipping it), and a private containerd.
#![allow(dead_code)]

pub mod core;
pub mod docker_archive;
pub mod gen;
pub mod layout_dir;
pub mod memory;
pub mod mount;
pub mod podman;
pub mod proxy;
pub mod registry;
pub mod tokensrv;
pub mod user;
pub mod writers_support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a private containerd may take to start.
const CONTAINERD_START: Duration = Duration::from_secs(30);

/// A store in a temporary directory and a way to run the binary on it.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        Env { tmp, store }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_layoutfs"));
        c.arg("--store").arg(&self.store).args(args);
        c.env_remove("LAYOUTFS_STORE")
            .env_remove("RUST_LOG")
            .env_remove("LAYOUTFS_LOG");
        c
    }

    /// Runs the binary and returns its output, whatever its exit.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs the binary, feeding `input` on standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || {
            // The binary may stop reading early on bad input; that is not this test's error.
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        out
    }

    /// Runs the binary and insists on success; returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "layoutfs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `layoutfs images --format json` as (name, digest) pairs.
    pub fn images(&self) -> Vec<(String, String)> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["images", "--format", "json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap().to_owned(),
                    i["digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

/// Packs a directory into a tar archive (through the tar crate, as any tool would).
pub fn tar_dir(dir: &Path, out: &Path) {
    let f = fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// Waits until `f` holds, for at most a second (what layoutfs promises for live changes).
pub fn within_a_second(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what}: not within a second"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Standard error as one trimmed string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

/// Runs an outside command and insists on success; returns standard output.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/setup to install the peers)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `c` (standard input empty) for at most `limit` and while its resident memory stays
/// under `max_rss` bytes; returns its exit status (None: killed for going past either), its
/// standard error, its peak resident memory in bytes and the time it took.
pub fn run_bounded(
    mut c: Command,
    limit: Duration,
    max_rss: u64,
) -> (Option<std::process::ExitStatus>, String, u64, Duration) {
    use std::io::Read;
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut peak = 0u64;
    let status = loop {
        if let Ok(st) = fs::read_to_string(format!("/proc/{}/status", child.id())) {
            for l in st.lines() {
                if let Some(v) = l.strip_prefix("VmHWM:") {
                    let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak = peak.max(kb * 1024);
                }
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > limit || peak > max_rss {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap(), peak, start.elapsed())
}

/// GNU `tar -x -f archive` in `dir`; its output, whatever the exit.
pub fn untar(archive: &Path, dir: &Path) -> Output {
    require("tar");
    Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-xf")
        .arg(archive)
        .output()
        .unwrap()
}

/// Fails (never skips) when a peer tool is absent.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run scripts/setup (tests never skip what CI must run)"
    );
}

/// Every file under `dir`, relative path -> bytes.
pub fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A containerd of the test's own: root, state and socket in a temporary directory, CRI off.
pub struct Containerd {
    child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        require("containerd");
        require("ctr");
        let dir = tempfile::Builder::new()
            .prefix("ctrd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let socket = d.join("c.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
        );
        fs::write(d.join("config.toml"), config).unwrap();
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut c = Containerd {
            child,
            socket,
            _dir: dir,
        };
        let start = Instant::now();
        loop {
            if c.socket.exists()
                && Command::new("ctr")
                    .args(["-a"])
                    .arg(&c.socket)
                    .arg("version")
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            {
                return c;
            }
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!(
                    "containerd exited with {status}: {}",
                    fs::read_to_string(c._dir.path().join("containerd.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < CONTAINERD_START,
                "containerd did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr -a SOCKET -n layoutfs-test ARGS...`
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.socket).args(["-n", "layoutfs-test"]);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: signalling a child we own.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A layout made by umoci at `dir` with image `:base` holding /etc/hello and a 2 MiB file.
pub fn umoci_layout(env: &Env, dir: &Path) -> String {
    require("umoci");
    let rootfs = env.path("rootfs");
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(rootfs.join("etc/hello"), b"hello from layoutfs\n").unwrap();
    let big: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    fs::write(rootfs.join("etc/big"), &big).unwrap();
    let image = format!("{}:base", dir.display());
    sh(Command::new("umoci").args(["init", "--layout"]).arg(dir));
    sh(Command::new("umoci").args(["new", "--image", &image]));
    sh(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(rootfs.join("etc"))
        .arg("/etc"));
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

pub fn skopeo_digest(transport_ref: &str) -> String {
    require("skopeo");
    let out = sh(Command::new("skopeo").args(["inspect", "--raw", transport_ref]));
    let v = sh(Command::new("skopeo").args(["inspect", transport_ref]));
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert!(!out.is_empty());
    v["Digest"].as_str().unwrap().to_owned()
}

/// A tmpfs of `mib` MiB mounted on `dir` for the life of the guard (the tests run as root).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, mib: u64) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        sh(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir));
        Tmpfs(dir.to_path_buf())
    }

    /// Gives the filesystem a new size (space freed, as a user would free it).
    pub fn resize(&self, mib: u64) {
        self.remount(&format!("size={mib}m"));
    }

    /// Mounts it again with `options` (`ro`, `rw`, `size=…`).
    pub fn remount(&self, options: &str) {
        sh(Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs `layoutfs fsck` and insists that it finds nothing wrong.
pub fn fsck_clean(env: &Env) {
    let out = env.run(&["fsck"]);
    assert!(
        out.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

/// A seed for randomised tests: `LAYOUTFS_TEST_SEED` when set (to replay a failure), else the
/// clock. Tests print it.
pub fn seed() -> u64 {
    std::env::var("LAYOUTFS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}
