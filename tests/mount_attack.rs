//! Findings of fs_attack shown through a real mount (root and /dev/fuse): what a user's
//! `mv`, `rm -r` and a descriptor left open do to what the kernel serves.

mod common;

use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::gen::LayoutBuilder;
use common::mount::Mounted;
use common::Env;
use layoutfs::digest::{Algorithm, Digest};

fn names(env: &Env) -> Vec<String> {
    env.images().into_iter().map(|(n, _)| n).collect()
}

/// `mv blobs/sha256/<A> blobs/sha256/<B>` of a blob written there: `<B>` then reads A's bytes.
#[test]
fn mount_a_written_blob_moved_to_another_digest_reads_the_wrong_bytes() {
    let env = Env::new();
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir_all(m.path("r/blobs/sha256")).unwrap();
    let a = b"blob A written at its name".to_vec();
    let b = b"blob B, never written".to_vec();
    let (da, db) = (
        Digest::of(Algorithm::Sha256, &a),
        Digest::of(Algorithm::Sha256, &b),
    );
    fs::write(m.path(&format!("r/blobs/sha256/{}", da.hex())), &a).unwrap();
    let moved = fs::rename(
        m.path(&format!("r/blobs/sha256/{}", da.hex())),
        m.path(&format!("r/blobs/sha256/{}", db.hex())),
    );
    let read = fs::read(m.path(&format!("r/blobs/sha256/{}", db.hex())));
    let ok = match &read {
        Ok(bytes) => Digest::of(Algorithm::Sha256, bytes) == db,
        Err(_) => true,
    };
    assert!(
        ok,
        "mv <A> <B> gave {moved:?}; <B> reads {:?}",
        read.map(|b| String::from_utf8_lossy(&b).into_owned())
    );
}

/// A kept row `""` (or `a//b`) in meta.db: the root is taken for a repository, or its listing
/// carries names the kernel refuses.
#[test]
fn mount_a_bad_kept_name_in_the_records_breaks_the_root() {
    let env = Env::new();
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir(m.path("ok")).unwrap();
    {
        let db = rusqlite::Connection::open(env.store.join("meta.db")).unwrap();
        for bad in ["", "a//b"] {
            db.execute(
                "INSERT INTO repositories (name, created) VALUES (?1, 0)",
                [bad],
            )
            .unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let listed: Result<Vec<String>, std::io::Error> = fs::read_dir(&m.dir).and_then(|d| {
        d.map(|e| e.map(|e| e.file_name().into_string().unwrap()))
            .collect()
    });
    let ok = listed.as_ref().is_ok_and(|l| {
        !l.iter()
            .any(|n| n == "index.json" || n == "oci-layout" || n == "blobs")
    });
    assert!(ok, "ls of the mount's root: {listed:?}");
}

/// `mkdir -p x/y`, then `mkdir x/index.json` (another process), then x's `oci-layout`: `rm -r x`
/// fails with ENOTEMPTY, and no command through the mount removes x.
#[test]
fn mount_rm_r_of_a_repository_with_a_hidden_sub_repository_fails() {
    let env = Env::new();
    let m = Mounted::start(&env, "mnt", &[]);
    let st = Command::new("mkdir")
        .arg("-p")
        .arg(m.path("x/y"))
        .status()
        .unwrap();
    assert!(st.success());
    let made = fs::create_dir(m.path("x/index.json"));
    fs::write(m.path("x/oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let out = Command::new("rm")
        .arg("-r")
        .arg(m.path("x"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && !m.path("x").exists(),
        "mkdir x/index.json gave {made:?}; rm -r x: {}; kept: {}",
        String::from_utf8_lossy(&out.stderr),
        env.ok(&["repositories"])
    );
}

/// A descriptor still open on a temporary file renamed onto index.json, after a second one
/// replaced it: a write and close through it (on a disk, to an orphan) sets r's images again
/// and a tag goes.
#[test]
fn mount_a_write_through_a_replaced_index_json_s_descriptor_drops_a_tag() {
    let env = Env::new();
    let one = env.path("one");
    let two = env.path("two");
    LayoutBuilder::new(&one).small_image("t0", 2, 5000, 81);
    {
        let mut b = LayoutBuilder::new(&two);
        b.small_image("t0", 2, 5000, 81);
        b.small_image("t1", 2, 5001, 82);
    }
    env.ok(&["import", two.to_str().unwrap(), "--name", "elsewhere"]);
    let m = Mounted::start(&env, "mnt", &[]);
    fs::create_dir(m.path("r")).unwrap();
    let index_one = fs::read(one.join("index.json")).unwrap();
    let index_two = fs::read(two.join("index.json")).unwrap();
    let mut first = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(m.path("r/.index.1"))
        .unwrap();
    first.write_all(&index_one).unwrap();
    fs::rename(m.path("r/.index.1"), m.path("r/index.json")).unwrap();
    fs::write(m.path("r/.index.2"), &index_two).unwrap();
    fs::rename(m.path("r/.index.2"), m.path("r/index.json")).unwrap();
    let before = names(&env);
    assert!(before.contains(&"r:t1".to_owned()), "{before:?}");
    // The first writer writes its file again, now an orphan, and closes it.
    use std::os::unix::fs::FileExt;
    let wrote = first.write_at(&index_one, 0);
    drop(first);
    std::thread::sleep(Duration::from_millis(300));
    let after = names(&env);
    assert_eq!(
        after, before,
        "a write ({wrote:?}) and close through the replaced file's descriptor changed the images"
    );
}
