//! The store's fs-verity path on a kernel that has fs-verity: `scripts/verity-vm` boots Debian
//! 12's kernel in qemu (KVM where it works, else TCG: never skipped) with this test's binary
//! and two layouts made here, and its init (`scripts/vm/init`) checks that importing into a
//! store on an ext4 with `-O verity` seals every blob and records the kernel's measurement,
//! that a mount trusts those records without hashing (and `--verify-reads` hashes all), that
//! blobs copied into the mount and blobs the store had no record of end up sealed and
//! recorded, that another sealed file put in a blob's place is refused with EIO, that a byte
//! changed on the disk under a sealed blob (its identity and record unchanged) is refused by
//! the kernel while the other blobs are served, that fsck finds it, and that a store of an
//! ordinary user (blobs 0444) is sealed too. Each check is one `VERITY-VM PASS name` line on
//! the VM's console; every name below must pass.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::gen::LayoutBuilder;

/// The checks of `scripts/vm/init`, each of which must print a PASS line.
const CHECKS: &[&str] = &[
    "modules",
    "kernel-seals",
    "import",
    "import-sealed-and-recorded",
    "mount-says-fs-verity",
    "mount-trusts-without-hashing",
    "mount-serves-every-blob",
    "verify-reads-hashes-every-blob",
    "copy-into-mount",
    "copy-sealed-and-recorded",
    "unrecorded-blob-hashed-then-sealed-and-recorded",
    "sealed-by-the-mount-then-trusted",
    "substitute-refused",
    "restored-blob-served",
    "before-corruption-sealed-and-recorded",
    "corruption-under-seal",
    "others-still-served",
    "fsck-finds-corruption",
    "user-import",
    "user-store-sealed-and-recorded",
    "user-blobs-stay-0444",
];

/// How long the VM may run. Under TCG with the debug binary it ran 107-124 s on 2 shared, busy
/// cores; fetching the kernel package first adds about 35 s, and a /dev/kvm whose guests hang
/// costs the script's 60 s wait before it falls back to TCG.
const VM_TIMEOUT: Duration = Duration::from_secs(420);

/// The layouts the VM imports (`import/`: layers of 1, 2 and 3 MiB, so Merkle trees of more
/// than one level, plus small config and manifest blobs) and copies into its mount (`copy/`).
fn layouts(dir: &Path) {
    const MIB: u64 = 1 << 20;
    let mut b = LayoutBuilder::new(&dir.join("import"));
    let layers: Vec<_> = (1..=3)
        .map(|i| b.add_random_layer(i * MIB, 700 + i))
        .collect();
    let m = b.add_manifest(&layers, "amd64");
    b.tag(&m, Some("v1"));
    b.write_index();
    let mut c = LayoutBuilder::new(&dir.join("copy"));
    let layer = c.add_random_layer(4 * MIB, 800);
    let m = c.add_manifest(&[layer], "amd64");
    c.tag(&m, Some("v2"));
    c.write_index();
}

#[test]
fn fs_verity_seals_blobs_and_the_kernel_refuses_what_changed_under_the_seal() {
    let tmp = tempfile::tempdir().unwrap();
    layouts(tmp.path());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(repo.join("scripts/verity-vm"));
    cmd.arg(env!("CARGO_BIN_EXE_layoutfs"))
        .env("VERITY_VM_LAYOUTS", tmp.path())
        .env("VERITY_VM_TIMEOUT", VM_TIMEOUT.as_secs().to_string());
    if std::env::var_os("VERITY_VM_DIR").is_none() {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| repo.join("target"));
        cmd.env("VERITY_VM_DIR", target.join("verity-vm"));
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}{stdout}verity-vm took {:?}", start.elapsed());
    let passed: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("VERITY-VM PASS "))
        .collect();
    let missing: Vec<&&str> = CHECKS.iter().filter(|c| !passed.contains(c)).collect();
    assert!(
        missing.is_empty() && out.status.success(),
        "checks not passed in the VM: {missing:?} (exit {:?}); see the output above",
        out.status.code()
    );
}
