//! The writers matrix of issue 13: real tools write OCI layouts into the mount, each case with
//! its own store and mount, so the cases run in parallel and fail apart. Each is checked by
//! `layoutfs images` (the names, every image complete), an export of each image compared blob
//! by blob with the source, what the mount shows (the tags of `index.json`, every listed name
//! found, the layout's fixed modes whatever the writer set), a daemon log without errors and,
//! after the unmount, a clean store. A writer that exits non-zero fails its case with its own
//! error and the daemon's log. The tools must be installed (scripts/setup): a missing one fails.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::gen::LayoutBuilder;
use common::mount::{kernel_has_passthrough, Mounted};
use common::podman::podman;
use common::writers_support::{
    blobs_of, exported_blobs, incomplete, modes_not_fixed, names, run_writer, same_blobs,
    store_is_clean, tags_of,
};
use common::{require, sh, tree, umoci_layout, Env};

/// The tags of the source layout's two images.
const TAGS: [&str; 2] = ["1", "2"];
/// The owner given to the source's files, so that writers that keep owners call chown.
const ODD_OWNER: &str = "4321:4321";
/// The time given to the source's files, so that writers that keep times call utimensat.
const ODD_TIME: &str = "2001-02-03 04:05:06";

/// One case: a store, its mount, and a source layout of two images.
struct Case {
    // Dropped first: the mount goes before its temporary directory is removed.
    m: Mounted,
    env: Env,
    src: PathBuf,
}

impl Case {
    /// A store, its mount on `mnt`, and a layout `src` with images tagged `1` (two layers of
    /// 200 kB) and `2` (two layers of 1 MiB and a bit).
    fn new() -> Case {
        let env = Env::new();
        let src = env.path("src");
        let mut b = LayoutBuilder::new(&src);
        b.small_image(TAGS[0], 2, 200_000, 1);
        b.small_image(TAGS[1], 2, (1 << 20) + 17, 2);
        let m = Mounted::start(&env, "mnt", &[]);
        Case { m, env, src }
    }

    /// A store, its mount, and a layout `src` made by umoci, for the writers that read or
    /// convert layers (gzip-compressed tars, as registries serve them: skopeo and podman
    /// compress the random uncompressed layers of `new`, and podman unpacks layers): image
    /// `1` holds /etc/hello and a 2 MiB file, `2` is the same with another config.
    fn with_real_layers() -> Case {
        require("umoci");
        let env = Env::new();
        let src = env.path("src");
        let image = |tag: &str| format!("{}:{tag}", src.display());
        umoci_layout(&env, &src);
        let env_var = format!("{CONFIG_ENV}2");
        sh(Command::new("umoci")
            .args(["config", "--image", &image("base"), "--tag", TAGS[1]])
            .args(["--config.env", &env_var]));
        sh(Command::new("umoci").args(["tag", "--image", &image("base"), TAGS[0]]));
        sh(Command::new("umoci").args(["rm", "--image", &image("base")]));
        let m = Mounted::start(&env, "mnt", &[]);
        Case { m, env, src }
    }

    /// `new`, with the source's files given modes (0600 files and 0700 directories, as umoci
    /// leaves them), an owner and times of their own, for the writers that keep them.
    fn with_odd_attributes() -> Case {
        let c = Case::new();
        sh(Command::new("chmod").args(["-R", "u=rwX,go="]).arg(&c.src));
        sh(Command::new("chown").args(["-R", ODD_OWNER]).arg(&c.src));
        sh(Command::new("find")
            .arg(&c.src)
            .args(["-exec", "touch", "-h", "-d", ODD_TIME, "{}", "+"]));
        c
    }

    fn run(&self, cmd: &mut Command) -> String {
        run_writer(&self.m, cmd)
    }

    /// Reads a file of the mount; an error fails the test with the daemon's log.
    fn read(&self, path: &Path) -> Vec<u8> {
        fs::read(path).unwrap_or_else(|e| {
            panic!(
                "read {}: {e}\n--- the daemon's log ---\n{}",
                path.display(),
                self.m.log()
            )
        })
    }

    /// Writes a file as a writer would; an error fails the test with the daemon's log.
    fn write(&self, path: &Path, bytes: &[u8]) {
        if let Err(e) = fs::write(path, bytes) {
            panic!(
                "write {}: {e}\n--- the daemon's log ---\n{}",
                path.display(),
                self.m.log()
            );
        }
    }

    /// `layoutfs images` lists exactly `repo:TAG` for each of `tags`, every one complete; the
    /// mount shows the repository's layout with the fixed modes, no temporary name left, and
    /// the tags in `index.json`; each image exports blobs of `source`, all shown in the mount.
    fn imported(&self, repo: &str, tags: &[&str], source: &Path) {
        let mut want: Vec<String> = tags.iter().map(|t| format!("{repo}:{t}")).collect();
        want.sort();
        assert_eq!(names(&self.env), want, "{}", self.m.log());
        assert_eq!(incomplete(&self.env), Vec::<String>::new());
        let dir = self.m.path(repo);
        let wrong = modes_not_fixed(&dir);
        assert!(wrong.is_empty(), "{wrong:#?}\n{}", self.m.log());
        assert_eq!(listing(&dir), ["blobs", "index.json", "oci-layout"]);
        assert_eq!(listing(&dir.join("blobs")), ["sha256"]);
        let mut tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        tags.sort();
        assert_eq!(tags_of(&self.read(&dir.join("index.json"))), tags);
        let shown = blobs_of(&dir);
        same_blobs(&shown, &blobs_of(source));
        for name in &want {
            let exported = exported_blobs(&self.env, name);
            same_blobs(&exported, &blobs_of(source));
            let absent: Vec<&String> = exported
                .keys()
                .filter(|k| !shown.contains_key(*k))
                .collect();
            assert!(
                absent.is_empty(),
                "{name}: the mount does not list {absent:?}"
            );
        }
    }

    /// `mkdir MNT/NAME`, as a user's shell runs it (the process that makes a repository sees
    /// only what it wrote there).
    fn mkdir(&self, name: &str) {
        self.run(Command::new("mkdir").arg(self.m.path(name)));
    }

    /// The digest `layoutfs images` gives `name`.
    fn digest(&self, name: &str) -> String {
        let images = self.env.images();
        let found = images.iter().find(|(n, _)| n == name);
        found
            .unwrap_or_else(|| panic!("no {name} in {images:?}"))
            .1
            .clone()
    }

    /// No error in the daemon's log; after the unmount, a clean store.
    fn finish(self) {
        assert_eq!(self.m.errors(), Vec::<String>::new(), "{}", self.m.log());
        drop(self.m);
        store_is_clean(&self.env);
    }
}

/// The names in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A directory's path with a trailing slash: its contents, to rsync.
fn contents(dir: &Path) -> String {
    format!("{}/", dir.display())
}

/// Waits for a writer started with `spawn` (standard error piped); fails as `run_writer` does.
fn wait_writer(m: &Mounted, child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} exited with {}:\n{}\n--- the daemon's log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
}

#[test]
fn cp_r() {
    let c = Case::new();
    c.run(Command::new("cp").arg("-r").arg(&c.src).arg(c.m.path("r")));
    c.imported("r", &TAGS, &c.src);
    c.finish();
}

#[test]
fn cp_a() {
    let c = Case::with_odd_attributes();
    c.run(Command::new("cp").arg("-a").arg(&c.src).arg(c.m.path("r")));
    c.imported("r", &TAGS, &c.src);
    c.finish();
}

/// `tar -cf` of the source's contents (`./…`) or, with `top`, of the source as directory `top/`.
fn tar_of(c: &Case, top: Option<&str>) -> PathBuf {
    let archive = c.env.path("src.tar");
    let mut cmd = Command::new("tar");
    cmd.arg("-cf").arg(&archive);
    match top {
        None => cmd.arg("-C").arg(&c.src).arg("."),
        Some(t) => cmd
            .arg("-C")
            .arg(c.env.tmp.path())
            .arg(format!("--transform=s,^src,{t},"))
            .arg("src"),
    };
    sh(&mut cmd);
    archive
}

#[test]
fn tar_x_into_a_repository_made_with_mkdir() {
    // Root's tar keeps owners and modes by default: these options make it a user's plain -x.
    let c = Case::with_odd_attributes();
    let archive = tar_of(&c, None);
    c.mkdir("r");
    c.run(
        Command::new("tar")
            .args(["--no-same-owner", "--no-same-permissions", "-C"])
            .arg(c.m.path("r"))
            .arg("-xf")
            .arg(&archive),
    );
    c.imported("r", &TAGS, &c.src);
    c.finish();
}

#[test]
fn tar_xp_makes_the_repository_and_keeps_owners_and_modes() {
    let c = Case::with_odd_attributes();
    let archive = tar_of(&c, Some("r"));
    c.run(
        Command::new("tar")
            .args(["--same-owner", "-C"])
            .arg(&c.m.dir)
            .arg("-xpf")
            .arg(&archive),
    );
    c.imported("r", &TAGS, &c.src);
    c.finish();
}

/// `rsync OPTIONS SRC/ MNT/r/`.
fn rsync(c: &Case, options: &[&str]) {
    require("rsync");
    c.run(
        Command::new("rsync")
            .args(options)
            .arg(contents(&c.src))
            .arg(contents(&c.m.path("r"))),
    );
}

#[test]
fn rsync_a_into_a_repository_made_with_mkdir() {
    let c = Case::with_odd_attributes();
    c.mkdir("r");
    rsync(&c, &["-a"]);
    c.imported("r", &TAGS, &c.src);
    c.finish();
}

#[test]
fn rsync_a_makes_the_repository() {
    let c = Case::with_odd_attributes();
    rsync(&c, &["-a"]);
    c.imported("r", &TAGS, &c.src);
    c.finish();
}

#[test]
fn rsync_a_inplace_into_a_repository_made_with_mkdir() {
    let c = Case::with_odd_attributes();
    c.mkdir("r");
    rsync(&c, &["-a", "--inplace"]);
    c.imported("r", &TAGS, &c.src);
    c.finish();
}

/// `rsync OPTIONS` twice over one repository: the second exits 0 and changes nothing. The
/// mount keeps the times rsync set for its life, so the second run finds the blobs unchanged
/// and sends only `index.json` (the mount writes its own, of another size).
fn rsync_twice(options: &[&str]) {
    let c = Case::with_odd_attributes();
    rsync(&c, options);
    c.imported("r", &TAGS, &c.src);
    let blob = blobs_of(&c.src).into_keys().next().unwrap();
    let at = |root: &Path| {
        fs::metadata(root.join("blobs/sha256").join(&blob))
            .unwrap()
            .modified()
            .unwrap()
    };
    assert_eq!(at(&c.m.path("r")), at(&c.src), "rsync -a's time is kept");
    let images = c.env.images();
    let index = c.read(&c.m.path("r/index.json"));
    let stored = blobs_of(&c.env.store);
    rsync(&c, options);
    assert_eq!(c.env.images(), images);
    assert_eq!(c.read(&c.m.path("r/index.json")), index);
    assert_eq!(blobs_of(&c.env.store), stored);
    c.imported("r", &TAGS, &c.src);
    c.finish();
}

#[test]
fn rsync_a_a_second_time_changes_nothing() {
    rsync_twice(&["-a"]);
}

#[test]
fn rsync_a_inplace_a_second_time_changes_nothing() {
    rsync_twice(&["-a", "--inplace"]);
}

#[test]
fn skopeo_copy_one_image() {
    require("skopeo");
    let c = Case::with_real_layers();
    let src = format!("oci:{}:{}", c.src.display(), TAGS[0]);
    let dst = format!("oci:{}:1.0", c.m.path("sk").display());
    c.run(Command::new("skopeo").args(["copy", "-q", &src, &dst]));
    c.imported("sk", &["1.0"], &c.src);
    c.finish();
}

#[test]
fn skopeo_copy_three_at_once_into_one_repository() {
    require("skopeo");
    let c = Case::with_real_layers();
    let copies = [("a", TAGS[0]), ("b", TAGS[1]), ("c", TAGS[0])];
    let children: Vec<(Child, String)> = copies
        .iter()
        .map(|(to, from)| {
            let src = format!("oci:{}:{from}", c.src.display());
            let dst = format!("oci:{}:{to}", c.m.path("sk").display());
            let child = Command::new("skopeo")
                .args(["copy", "-q", &src, &dst])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (child, format!("skopeo copy {src} {dst}"))
        })
        .collect();
    for (child, what) in children {
        wait_writer(&c.m, child, &what);
    }
    c.imported("sk", &["a", "b", "c"], &c.src);
    c.finish();
}

/// The source's `index.json` with only the images tagged one of `keep`.
fn index_with(src: &Path, keep: &[&str]) -> Vec<u8> {
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(src.join("index.json")).unwrap()).unwrap();
    index["manifests"].as_array_mut().unwrap().retain(|d| {
        let tag = d["annotations"]["org.opencontainers.image.ref.name"].as_str();
        keep.iter().any(|k| Some(*k) == tag)
    });
    serde_json::to_vec(&index).unwrap()
}

#[test]
fn index_json_rewritten_in_place_with_o_trunc_applies() {
    let c = Case::new();
    c.run(Command::new("cp").arg("-r").arg(&c.src).arg(c.m.path("r")));
    for keep in [&TAGS[1..], &TAGS[..]] {
        let new = c.env.path("new-index.json");
        fs::write(&new, index_with(&c.src, keep)).unwrap();
        // The shell's `>`: open(O_WRONLY|O_CREAT|O_TRUNC), then cat writes.
        c.run(
            Command::new("sh")
                .args(["-c", "cat \"$1\" > \"$2\"", "sh"])
                .arg(&new)
                .arg(c.m.path("r/index.json")),
        );
        c.imported("r", keep, &c.src);
    }
    c.finish();
}

#[test]
fn index_json_replaced_by_rename_applies() {
    let c = Case::new();
    c.run(Command::new("cp").arg("-r").arg(&c.src).arg(c.m.path("r")));
    let steps: [(&str, &[&str]); 3] = [
        (".index.json.tmp", &TAGS[1..]),
        ("index.json.new", &TAGS[..1]),
        ("blobs/.index.json", &TAGS[..]),
    ];
    for (temporary, keep) in steps {
        let tmp = c.m.path(&format!("r/{temporary}"));
        c.write(&tmp, &index_with(&c.src, keep));
        c.run(Command::new("mv").arg(&tmp).arg(c.m.path("r/index.json")));
        assert!(!tmp.exists(), "{temporary} is still there");
        c.imported("r", keep, &c.src);
    }
    c.finish();
}

/// What /etc/hello holds in the bundle before `umoci repack`.
const REPACKED_HELLO: &[u8] = b"changed in the bundle, then repacked\n";
/// The variable `umoci config` adds.
const CONFIG_ENV: &str = "LAYOUTFS_WRITERS=umoci";

/// A directory for `umoci insert` as /etc: hello, dir/small and a 2 MiB file big.
fn rootfs_etc(env: &Env) -> PathBuf {
    let etc = env.path("rootfs/etc");
    fs::create_dir_all(etc.join("dir")).unwrap();
    fs::write(etc.join("hello"), b"hello from layoutfs\n").unwrap();
    fs::write(etc.join("dir/small"), b"small\n").unwrap();
    let big: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    fs::write(etc.join("big"), big).unwrap();
    etc
}

/// `umoci ARGS`, which must succeed.
fn umoci(c: &Case, args: &[&str]) -> String {
    require("umoci");
    c.run(Command::new("umoci").args(args))
}

fn json(c: &Case, path: &Path) -> serde_json::Value {
    serde_json::from_slice(&c.read(path)).unwrap()
}

/// `umoci init` makes an empty repository: a layout with no images, kept by the mount.
fn umoci_init(c: &Case, lay: &Path) {
    umoci(c, &["init", "--layout", lay.to_str().unwrap()]);
    assert_eq!(names(&c.env), Vec::<String>::new());
    empty_layout(c, lay);
}

/// The blobs (hex) that the images of layout `dir` need: each manifest, its config, its layers.
fn needed(c: &Case, dir: &Path) -> BTreeSet<String> {
    let hex = |d: &serde_json::Value| d["digest"].as_str().unwrap()["sha256:".len()..].to_owned();
    let mut out = BTreeSet::new();
    for d in json(c, &dir.join("index.json"))["manifests"]
        .as_array()
        .unwrap()
    {
        let manifest = json(c, &dir.join("blobs/sha256").join(hex(d)));
        out.insert(hex(d));
        out.insert(hex(&manifest["config"]));
        out.extend(manifest["layers"].as_array().unwrap().iter().map(hex));
    }
    out
}

/// `umoci gc` unlinks the blobs no image needs, and only those; every image stays complete.
fn umoci_gc(c: &Case, lay: &Path) {
    let before: BTreeSet<String> = blobs_of(lay).into_keys().collect();
    let needed = needed(c, lay);
    let absent: Vec<&String> = needed.difference(&before).collect();
    assert!(absent.is_empty(), "blobs/sha256 does not list {absent:?}");
    umoci(c, &["gc", "--layout", lay.to_str().unwrap()]);
    let after: BTreeSet<String> = blobs_of(lay).into_keys().collect();
    assert_eq!(after, needed, "umoci gc left or removed the wrong blobs");
    assert_eq!(incomplete(&c.env), Vec::<String>::new());
    eprintln!("umoci gc removed {} blobs", before.len() - after.len());
}

/// `umoci new`, `insert` of `etc` as /etc, `unpack`, a change to /etc/hello in the bundle,
/// `repack` and `config` of image `base` of layout `lay`: each applies (a new digest).
fn umoci_build(c: &Case, lay: &Path, etc: &Path) {
    let base = format!("{}:base", lay.display());
    umoci(c, &["new", "--image", &base]);
    assert_eq!(names(&c.env), ["umo:base"]);
    let mut seen = vec![c.digest("umo:base")];
    let mut applied = |step: &str| {
        let now = c.digest("umo:base");
        assert!(
            !seen.contains(&now),
            "umoci {step}: umo:base is still {now}"
        );
        seen.push(now);
    };
    umoci(
        c,
        &["insert", "--image", &base, etc.to_str().unwrap(), "/etc"],
    );
    applied("insert");
    let bundle = c.env.path("bundle");
    umoci(c, &["unpack", "--image", &base, bundle.to_str().unwrap()]);
    fs::write(bundle.join("rootfs/etc/hello"), REPACKED_HELLO).unwrap();
    umoci(c, &["repack", "--image", &base, bundle.to_str().unwrap()]);
    applied("repack");
    umoci(c, &["config", "--image", &base, "--config.env", CONFIG_ENV]);
    applied("config");
}

#[test]
fn umoci_init_new_insert_repack_config_tag_rm_gc_then_unpack() {
    let c = Case::new();
    let lay = c.m.path("umo");
    let image = |tag: &str| format!("{}:{tag}", lay.display());
    umoci_init(&c, &lay);
    let etc = rootfs_etc(&c.env);
    umoci_build(&c, &lay, &etc);
    umoci(&c, &["tag", "--image", &image("base"), "v2"]);
    assert_eq!(c.digest("umo:v2"), c.digest("umo:base"));
    umoci(&c, &["tag", "--image", &image("base"), "gone"]);
    assert_eq!(names(&c.env), ["umo:base", "umo:gone", "umo:v2"]);
    umoci(&c, &["rm", "--image", &image("gone")]);
    assert_eq!(names(&c.env), ["umo:base", "umo:v2"]);
    umoci_gc(&c, &lay);
    c.imported("umo", &["base", "v2"], &lay);
    // Unpacked from the mount: the directory inserted, with the change repacked.
    let unpacked = c.env.path("unpacked");
    umoci(
        &c,
        &[
            "unpack",
            "--image",
            &image("v2"),
            unpacked.to_str().unwrap(),
        ],
    );
    let mut want = tree(&etc);
    want.insert("hello".into(), REPACKED_HELLO.to_vec());
    assert_eq!(tree(&unpacked.join("rootfs/etc")), want);
    let config = json(&c, &unpacked.join("config.json"));
    let env = config["process"]["env"].as_array().unwrap();
    assert!(env.iter().any(|v| v == CONFIG_ENV), "{config}");
    c.finish();
}

/// `podman save --format oci-dir` of writers:1 to `dir`, then `podman push` of writers:2 into it.
fn podman_save_and_push(c: &Case, dir: &Path) {
    c.run(
        podman(&c.env)
            .args(["save", "-q", "--format", "oci-dir", "-o"])
            .arg(dir)
            .arg("localhost/writers:1"),
    );
    c.run(
        podman(&c.env)
            .args(["push", "-q", "localhost/writers:2"])
            .arg(format!("oci:{}:2", dir.display())),
    );
}

#[test]
fn podman_save_oci_dir_and_push_oci() {
    let c = Case::with_real_layers();
    let archive = tar_of(&c, None);
    for tag in TAGS {
        let from = format!("oci-archive:{}:{tag}", archive.display());
        let id = sh(podman(&c.env).args(["pull", "-q", &from]));
        sh(podman(&c.env).args(["tag", id.trim(), &format!("localhost/writers:{tag}")]));
    }
    let plain = c.env.path("plain");
    podman_save_and_push(&c, &plain);
    podman_save_and_push(&c, &c.m.path("pod"));
    c.imported("pod", &TAGS, &plain);
    c.finish();
}

/// The layout an empty repository shows: `oci-layout`, an `index.json` listing no image,
/// and `blobs/sha256/`, with the fixed modes.
fn empty_layout(c: &Case, dir: &Path) {
    let index = json(c, &dir.join("index.json"));
    assert_eq!(index["schemaVersion"], 2, "{}: {index}", dir.display());
    assert_eq!(
        index["manifests"],
        serde_json::json!([]),
        "{}: {index}",
        dir.display()
    );
    let wrong = modes_not_fixed(dir);
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", c.m.log());
}

#[test]
fn empty_repositories_show_a_layout_and_survive_a_remount() {
    let c = Case::new();
    let repos = ["made", "umoci", "listed", "null"];
    c.mkdir("made");
    umoci(
        &c,
        &["init", "--layout", c.m.path("umoci").to_str().unwrap()],
    );
    for (repo, manifests) in [("listed", "[]"), ("null", "null")] {
        c.mkdir(repo);
        let index = format!("{{\"schemaVersion\":2,\"manifests\":{manifests}}}");
        c.write(&c.m.path(&format!("{repo}/index.json")), index.as_bytes());
    }
    for repo in repos {
        empty_layout(&c, &c.m.path(repo));
    }
    assert_eq!(names(&c.env), Vec::<String>::new());
    let Case { m, env, src } = c;
    assert_eq!(m.errors(), Vec::<String>::new(), "{}", m.log());
    drop(m);
    let c = Case {
        m: Mounted::start(&env, "again", &[]),
        env,
        src,
    };
    for repo in repos {
        empty_layout(&c, &c.m.path(repo));
    }
    let listed = c.env.ok(&["repositories"]);
    for repo in repos {
        assert!(
            listed
                .lines()
                .any(|l| l.split_whitespace().eq([repo, "0", "yes"])),
            "{repo} kept with no image:\n{listed}"
        );
    }
    // Removed by `rm -r` and `rmdir` in the mount, and by `layoutfs rm`.
    c.run(Command::new("rm").arg("-r").arg(c.m.path("made")));
    c.run(Command::new("rmdir").arg(c.m.path("null")));
    c.env.ok(&["rm", "umoci"]);
    common::within_a_second("umoci removed by layoutfs rm", || {
        !c.m.path("umoci").exists()
    });
    assert_eq!(listing(&c.m.dir), ["listed"]);
    let listed = c.env.ok(&["repositories"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    c.finish();
}

/// Where a writer cannot be served: a blob read through passthrough cannot be opened for
/// writing meanwhile (the kernel has every open of the inode use the store's file). `rsync
/// --inplace` over a repository whose times the mount no longer knows (after a remount) does
/// so; the open fails with ETXTBSY ("Text file busy") and the daemon's log says why.
#[test]
fn a_blob_read_through_passthrough_is_text_file_busy_to_a_writer() {
    let c = Case::new();
    c.run(Command::new("cp").arg("-r").arg(&c.src).arg(c.m.path("r")));
    let blob = blobs_of(&c.src).into_keys().next().unwrap();
    let path = c.m.path("r/blobs/sha256").join(&blob);
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 3< "$1"; exec 4>> "$1""#)
        .arg("sh")
        .arg(&path)
        .output()
        .unwrap();
    if kernel_has_passthrough() {
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Text file busy"), "{stderr}");
        let log = c.m.log();
        assert!(
            log.contains(&format!(
                "sha256:{blob}: open for reading through passthrough"
            )),
            "{log}"
        );
    } else {
        // Without passthrough (a kernel before 6.9) the two opens go through the daemon.
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.finish();
}
