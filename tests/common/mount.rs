//! A real mount for tests: `layoutfs mount` run as a child process, waited for until the kernel
//! lists the mount, and unmounted (then killed, if need be) when the guard drops.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::Env;

/// How long a mount may take to appear, or a daemon to exit after it is unmounted.
const MOUNT_WAIT: Duration = Duration::from_secs(20);

pub struct Mounted {
    child: Option<Child>,
    pub dir: PathBuf,
    log: PathBuf,
}

/// Whether `dir` is a mount point, from the kernel's own list.
pub fn is_mounted(dir: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(dir))
}

impl Mounted {
    /// Mounts `env`'s store on a new directory `name` of its temporary directory.
    pub fn start(env: &Env, name: &str, extra: &[&str]) -> Mounted {
        Self::start_with(env, name, extra, |_| {})
    }

    /// Like `start`, with the daemon's log filtered by `filter` (`LAYOUTFS_LOG`).
    pub fn start_logging(env: &Env, name: &str, extra: &[&str], filter: &str) -> Mounted {
        let filter = filter.to_owned();
        Self::start_with(env, name, extra, move |cmd| {
            cmd.env("LAYOUTFS_LOG", filter);
        })
    }

    /// Like `start`, with the daemon's soft limit on open descriptors lowered to `soft` (as a
    /// login shell's usual 1024), to see the daemon raise it.
    pub fn start_with_nofile(env: &Env, name: &str, extra: &[&str], soft: u64) -> Mounted {
        use std::os::unix::process::CommandExt;
        Self::start_with(env, name, extra, move |cmd| {
            // SAFETY: the closure runs in the child before exec and only calls getrlimit and
            // setrlimit, which are async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = soft.min(lim.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
    }

    fn start_with(
        env: &Env,
        name: &str,
        extra: &[&str],
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> Mounted {
        let dir = env.path(name);
        fs::create_dir_all(&dir).unwrap();
        let log = env.path(&format!("{name}.log"));
        let mut args = vec!["mount", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut cmd = env.cmd(&args);
        cmd.env("LAYOUTFS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        adjust(&mut cmd);
        let child = cmd.spawn().unwrap();
        let mut m = Mounted {
            child: Some(child),
            dir,
            log,
        };
        let start = Instant::now();
        while !is_mounted(&m.dir) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("layoutfs mount exited with {status}: {}", m.log());
            }
            assert!(start.elapsed() < MOUNT_WAIT, "no mount: {}", m.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        m
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// The daemon's (soft, hard) limits on open descriptors.
    pub fn nofile_limits(&self) -> (u64, u64) {
        let limits = fs::read_to_string(format!("/proc/{}/limits", self.pid())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let mut n = line.split_whitespace().skip(3).map(|v| v.parse().unwrap());
        (n.next().unwrap(), n.next().unwrap())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The error lines of the daemon's log, less one that is not a fault: fuser answers
    /// each FUSE_INTERRUPT (Go programs such as skopeo raise them all the time: the
    /// runtime preempts its threads with signals) with ENOSYS, and when the interrupted
    /// request has been answered first the kernel refuses that answer with ENOENT, which
    /// fuser logs as an error ("Failed to send FUSE reply: No such file or directory").
    pub fn errors(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("ERROR") && !is_late_interrupt_answer(l))
            .map(str::to_owned)
            .collect()
    }

    /// Waits for the daemon to exit (after something unmounted it) and returns its status.
    pub fn wait(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < MOUNT_WAIT,
                "daemon still running: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let c = std::ffi::CString::new(self.dir.to_str().unwrap()).unwrap();
            // SAFETY: a plain syscall on a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if let Some(mut child) = self.child.take() {
            let start = Instant::now();
            while start.elapsed() < MOUNT_WAIT {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a log line is fuser's report of an answer the kernel no longer waited for.
fn is_late_interrupt_answer(line: &str) -> bool {
    line.contains("fuser::reply")
        && line.contains("Failed to send FUSE reply: No such file or directory")
}

/// Whether the kernel offers FUSE passthrough (6.9 and later).
pub fn kernel_has_passthrough() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    (major, minor) >= (6, 9)
}
