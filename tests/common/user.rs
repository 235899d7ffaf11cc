//! A second local user for the tests that check what the store refuses when another user owns
//! it: made with `useradd` under a name unique to this process and test, and removed with
//! `userdel` when the guard drops (on a panic too). The tests run as root, as CI does.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::sh;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A local user that exists for the life of the guard.
pub struct OtherUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl OtherUser {
    pub fn create() -> OtherUser {
        super::require("useradd");
        // useradd allows 32 characters: "lfst" + pid + counter stays well under.
        let name = format!(
            "lfst{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(Command::new("useradd")
            .args([
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
            ])
            .arg(&name));
        // From here on the guard removes the user, whatever happens next.
        let mut user = OtherUser {
            name,
            uid: 0,
            gid: 0,
        };
        let id = |flag: &str| -> u32 {
            sh(Command::new("id").arg(flag).arg(&user.name))
                .trim()
                .parse()
                .unwrap()
        };
        user.uid = id("-u");
        user.gid = id("-g");
        assert_ne!(user.uid, 0, "the other user must not be root");
        user
    }

    /// Gives `path` (not following a link) to this user.
    pub fn chown(&self, path: &std::path::Path) {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).unwrap();
    }
}

impl Drop for OtherUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}
