//! A private registry for the registry commands' tests: Debian's `docker-registry`
//! (distribution 2.8.2) on a free 127.0.0.1 port with filesystem storage in a temporary
//! directory, plain HTTP or TLS (a CA and a leaf made by openssl), anonymous, htpasswd or token
//! auth; images seeded with skopeo; a referrer put the OCI 1.1 tag-fallback way (this registry
//! has no referrers API); a small curl-based client that handles the variant's TLS and auth.
//!
//! Never the system service, never port 5000 by assumption.
//!
//! Typical uses (see tests/registry_harness.rs for each working):
//! ```text
//! let r = Registry::plain();                                   // http://127.0.0.1:PORT
//! let img = r.seed_oci(env.tmp.path(), "x/hello:1");           // img.digest, img.blobs...
//! env.cmd(&["pull", &img.reference]) ...                       // layoutfs under test
//! let r = Registry::start(Options { tls: true, auth: Auth::Htpasswd });
//! cmd.env("LAYOUTFS_CERTS_D", r.certs_d.as_ref().unwrap());   // <dir>/<host>/ca.crt
//! let p = Proxy::start(&r.host);                               // faults: proxy.rs
//! r.stop(); r.restart();                                       // same port and storage
//! ```

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::gen::{LayoutBuilder, SplitMix};
use super::tokensrv::TokenServer;
use super::{require, sh, Env};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";
/// alice:secret, bcrypt (the only hash distribution's htpasswd accepts).
pub const HTPASSWD: &str = "alice:$2b$10$OotA7lF0CwGCdSeFZOHAS.xVsGOGWQyD16P5Muxes7ejtjZxoIMg.\n";
const BINARY: &str = "/usr/bin/docker-registry";
const READY: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 5;

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The `artifactType` of referrers made by `put_referrer`.
pub const REFERRER_ARTIFACT_TYPE: &str = "application/vnd.layoutfs.test.sbom.v1";
/// Every manifest type, for `Accept`.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    Anonymous,
    /// Basic auth against the bcrypt fixture (alice/secret).
    Htpasswd,
    /// Bearer tokens from a `TokenServer` started with the registry.
    Token,
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub tls: bool,
    pub auth: Auth,
}

/// An answer read by `Registry::request`.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// An image pushed by one of the `seed_*` fixtures, as the registry serves it.
#[derive(Clone, Debug)]
pub struct Seeded {
    pub repo: String,
    pub tag: String,
    /// `127.0.0.1:PORT/repo:tag`
    pub reference: String,
    /// The digest of the manifest (or index) at the tag: sha256 of the bytes served, equal to
    /// the registry's Docker-Content-Digest.
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// The top manifest (or index) as served.
    pub manifest: serde_json::Value,
    /// For an index, its children's manifest digests in order; else empty.
    pub children: Vec<String>,
    /// (digest, size, media type) of every config and layer of every image under the tag.
    pub blobs: Vec<(String, u64, String)>,
    /// The configs' digests (the rest of `blobs` are layers).
    pub configs: Vec<String>,
    /// The local source pushed (`oci:DIR:TAG`).
    pub source: String,
}

impl Seeded {
    /// The layers' descriptors only (no configs).
    pub fn layers(&self) -> Vec<(String, u64, String)> {
        self.blobs
            .iter()
            .filter(|(d, _, _)| !self.configs.contains(d))
            .cloned()
            .collect()
    }
}

/// A running private registry.
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub host: String,
    /// The registry's temporary directory (config, storage under `data/`, log, certificates).
    pub dir: PathBuf,
    /// With TLS: a directory laid out like /etc/containers/certs.d: `<certs_d>/<host>/ca.crt`.
    pub certs_d: Option<PathBuf>,
    pub options: Options,
    /// With token auth: its token server.
    pub token: Option<TokenServer>,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Plain HTTP, anonymous.
    pub fn plain() -> Registry {
        Registry::start(Options {
            tls: false,
            auth: Auth::Anonymous,
        })
    }

    /// Starts a registry: answers `GET /v2/` (200 or 401) when this returns.
    pub fn start(options: Options) -> Registry {
        assert!(
            Path::new(BINARY).is_file(),
            "{BINARY} is not installed: run scripts/setup (tests never skip what CI must run)"
        );
        require("openssl");
        require("curl");
        let tmp = tempfile::Builder::new()
            .prefix("registry")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = tmp.path().to_path_buf();
        fs::create_dir_all(dir.join("data")).unwrap();
        if options.tls {
            make_certs(&dir.join("tls"));
        }
        if options.auth == Auth::Htpasswd {
            fs::write(dir.join("htpasswd"), HTPASSWD).unwrap();
        }
        let token = (options.auth == Auth::Token).then(|| TokenServer::start(&dir.join("token")));
        let mut r = Registry {
            host: String::new(),
            dir,
            certs_d: None,
            options,
            token,
            child: None,
            _tmp: tmp,
        };
        let mut why = String::new();
        for _ in 0..START_ATTEMPTS {
            r.host = format!("127.0.0.1:{}", free_port());
            r.write_config();
            match r.spawn_and_wait() {
                Ok(()) => {
                    if options.tls {
                        let d = r.dir.join("certs.d");
                        fs::create_dir_all(d.join(&r.host)).unwrap();
                        fs::copy(r.dir.join("tls/ca.crt"), d.join(&r.host).join("ca.crt")).unwrap();
                        r.certs_d = Some(d);
                    }
                    return r;
                }
                Err(log) if log.contains("address already in use") => why = log,
                Err(log) => panic!("docker-registry did not start on {}: {log}", r.host),
            }
        }
        panic!("docker-registry found no free port in {START_ATTEMPTS} attempts: {why}");
    }

    fn write_config(&self) {
        let d = self.dir.display();
        let mut c = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n  secret: layoutfs-test-secret\n",
            self.host
        );
        if self.options.tls {
            c.push_str(&format!(
                "  tls:\n    certificate: {d}/tls/cert.pem\n    key: {d}/tls/key.pem\n"
            ));
        }
        match self.options.auth {
            Auth::Anonymous => {}
            Auth::Htpasswd => c.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {d}/htpasswd\n"
            )),
            Auth::Token => {
                let t = self.token.as_ref().unwrap();
                c.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    t.realm,
                    super::tokensrv::SERVICE,
                    super::tokensrv::ISSUER,
                    t.cert.display()
                ));
            }
        }
        fs::write(self.dir.join("config.yml"), c).unwrap();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    /// The registry's log so far (stdout and stderr of every start).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Spawns the registry on `self.host` and waits until `/v2/` answers; Err(log) when it
    /// exits or does not answer in time.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let log_start = log.metadata().unwrap().len() as usize;
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{BINARY}: {e}"));
        self.child = Some(child);
        let start = Instant::now();
        let this_log = |r: &Registry| r.log().get(log_start..).unwrap_or_default().to_owned();
        loop {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                self.child = None;
                return Err(format!("exited with {status}: {}", this_log(self)));
            }
            if TcpStream::connect(&self.host).is_ok() {
                let code = self.curl_status("/v2/");
                if code == 200 || code == 401 {
                    // Another server could hold the port: ours is alive and serving.
                    std::thread::sleep(Duration::from_millis(20));
                    if let Ok(None) = self.child.as_mut().unwrap().try_wait() {
                        return Ok(());
                    }
                }
            }
            if start.elapsed() > READY {
                self.kill();
                return Err(format!(
                    "GET /v2/ did not answer 200 or 401 within {READY:?}: {}",
                    this_log(self)
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the registry (SIGKILL, as a crash would) and waits for it.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the registry again: same port, storage, certificates and token server.
    pub fn restart(&mut self) {
        self.kill();
        let start = Instant::now();
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(log) if log.contains("address already in use") && start.elapsed() < READY => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(log) => panic!("docker-registry did not restart on {}: {log}", self.host),
            }
        }
    }

    /// Whether the registry process is running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `http://` or `https://` and the host.
    pub fn base_url(&self) -> String {
        let scheme = if self.options.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host)
    }

    /// The CA certificate (TLS only).
    pub fn ca(&self) -> PathBuf {
        assert!(self.options.tls, "ca(): this registry has no TLS");
        self.dir.join("tls/ca.crt")
    }

    /// The directory skopeo's `--*-cert-dir` wants (holds `ca.crt`), TLS only.
    pub fn cert_dir(&self) -> PathBuf {
        self.certs_d.as_ref().expect("TLS only").join(&self.host)
    }

    // ---------------------------------------------------------------------------------------
    // HTTP through curl, with the variant's CA and credentials.

    fn curl_status(&self, path: &str) -> u16 {
        let mut c = self.curl_base();
        c.args(["-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"]);
        c.arg(format!("{}{path}", self.base_url()));
        c.output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    }

    fn curl_base(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(["-s", "-S", "--noproxy", "*"]);
        if self.options.tls {
            c.arg("--cacert").arg(self.ca());
        }
        c
    }

    /// The Authorization header value the variant needs for `path` (a token for the repository
    /// named in it, pull and push, for token auth), or None (anonymous).
    pub fn authorization(&self, path: &str) -> Option<String> {
        use base64::Engine as _;
        match self.options.auth {
            Auth::Anonymous => None,
            Auth::Htpasswd => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
            )),
            Auth::Token => {
                let p = path.split('?').next().unwrap_or(path);
                let p = p.split_once("/v2/").map_or(p, |(_, rest)| rest);
                let scope = if p.starts_with("_catalog") {
                    Some("registry:catalog:*".to_owned())
                } else {
                    ["/manifests/", "/blobs/", "/tags/", "/referrers/"]
                        .iter()
                        .filter_map(|m| p.find(m))
                        .min()
                        .map(|i| format!("repository:{}:pull,push", &p[..i]))
                };
                let scopes: Vec<&str> = scope.iter().map(String::as_str).collect();
                Some(format!(
                    "Bearer {}",
                    self.token.as_ref().unwrap().mint(USER, &scopes)
                ))
            }
        }
    }

    /// A request with the variant's credentials: `path` is `/v2/...` or a full URL (as in a
    /// `Location`).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        self.request_as(true, method, path, headers, body)
    }

    /// As `request`, but with credentials only when `auth`.
    pub fn request_as(
        &self,
        auth: bool,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base_url())
        };
        let mut c = self.curl_base();
        c.args(["-i", "--max-time", "60", "-H", "Expect:"]);
        if method == "HEAD" {
            c.arg("-I");
        } else {
            c.args(["-X", method]);
        }
        let auth_header = if auth { self.authorization(&url) } else { None };
        if let Some(a) = auth_header {
            c.arg("-H").arg(format!("Authorization: {a}"));
        }
        for (k, v) in headers {
            c.arg("-H").arg(format!("{k}: {v}"));
        }
        if body.is_some() {
            c.args(["--data-binary", "@-"]);
        }
        c.arg(&url);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("curl: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let data = body.map(<[u8]>::to_vec).unwrap_or_default();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        assert!(
            out.status.success(),
            "curl {method} {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_curl_i(&out.stdout)
    }

    /// `GET path` with the variant's credentials.
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], None)
    }

    /// The manifest (or index) of `repo` at `reference` (tag or digest), any manifest type.
    pub fn manifest(&self, repo: &str, reference: &str) -> Response {
        self.request(
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", ACCEPT_MANIFESTS)],
            None,
        )
    }

    /// The tags of `repo` (empty when it has none or does not exist).
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let r = self.get(&format!("/v2/{repo}/tags/list"));
        if r.status == 404 {
            return Vec::new();
        }
        assert_eq!(
            r.status,
            200,
            "tags/list: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }

    // ---------------------------------------------------------------------------------------
    // skopeo.

    fn skopeo(&self) -> Command {
        require("skopeo");
        let mut c = Command::new("skopeo");
        // No system policy needed, and never the user's credentials.
        c.env("REGISTRY_AUTH_FILE", self.dir.join("no-auth.json"))
            .arg("--insecure-policy");
        c
    }

    /// skopeo's TLS and credential flags for this registry, `side` "src" or "dest".
    pub fn skopeo_args(&self, side: &str) -> Vec<String> {
        let mut a = Vec::new();
        if self.options.tls {
            a.push(format!("--{side}-cert-dir"));
            a.push(self.cert_dir().display().to_string());
        } else {
            a.push(format!("--{side}-tls-verify=false"));
        }
        if self.options.auth != Auth::Anonymous {
            a.push(format!("--{side}-creds"));
            a.push(format!("{USER}:{PASSWORD}"));
        }
        a
    }

    /// `skopeo copy EXTRA... SRC docker://HOST/DEST` (src e.g. `oci:/dir:tag`, dest `repo:tag`).
    pub fn push_layout(&self, src: &str, dest: &str, extra: &[&str]) {
        sh(self
            .skopeo()
            .arg("copy")
            .args(extra)
            .args(self.skopeo_args("dest"))
            .arg(src)
            .arg(format!("docker://{}/{dest}", self.host)));
    }

    /// `skopeo copy docker://HOST/SRC DEST` (src `repo:tag` or `repo@digest`, dest e.g.
    /// `oci:/dir:tag`).
    pub fn skopeo_copy_out(&self, src: &str, dest: &str, extra: &[&str]) {
        sh(self
            .skopeo()
            .arg("copy")
            .args(extra)
            .args(self.skopeo_args("src"))
            .arg(format!("docker://{}/{src}", self.host))
            .arg(dest));
    }

    /// `skopeo inspect --raw` of `repo:tag` (the manifest bytes as served).
    pub fn skopeo_raw(&self, src: &str) -> Vec<u8> {
        let out = self
            .skopeo()
            .args(["inspect", "--raw"])
            .args(
                self.skopeo_args("src")
                    .iter()
                    .map(|a| a.replace("--src-", "--")),
            )
            .arg(format!("docker://{}/{src}", self.host))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo inspect: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    // ---------------------------------------------------------------------------------------
    // Images.

    /// A single-platform OCI image (two gzip layers made by umoci: /etc/hello and 1 MiB of
    /// incompressible bytes at /data/blob; linux/amd64), pushed to `repo_tag`. `scratch` is a
    /// directory of the test's own.
    pub fn seed_oci(&self, scratch: &Path, repo_tag: &str) -> Seeded {
        let src = umoci_image(scratch, "amd64", 1 << 20);
        self.push_layout(&src, repo_tag, &[]);
        self.seeded(repo_tag, src, MEDIA_OCI_MANIFEST)
    }

    /// The same image as `seed_oci`, pushed as docker schema 2 (`--format v2s2`).
    pub fn seed_v2s2(&self, scratch: &Path, repo_tag: &str) -> Seeded {
        let src = umoci_image(scratch, "amd64", 1 << 20);
        self.push_layout(&src, repo_tag, &["--format", "v2s2"]);
        self.seeded(repo_tag, src, MEDIA_DOCKER_MANIFEST)
    }

    /// The same image with zstd layers (copied to zstd locally, then pushed with
    /// `--preserve-digests`); checks the registry serves `+zstd` layers starting with zstd's
    /// magic.
    pub fn seed_zstd(&self, scratch: &Path, repo_tag: &str) -> Seeded {
        let gz = umoci_image(scratch, "amd64", 1 << 20);
        let zdir = unique_dir(scratch, "zstd");
        let zsrc = format!("oci:{}:1", zdir.display());
        sh(self.skopeo().args([
            "copy",
            "--dest-compress-format",
            "zstd",
            "--dest-compress",
            &gz,
            &zsrc,
        ]));
        self.push_layout(&zsrc, repo_tag, &["--preserve-digests"]);
        let s = self.seeded(repo_tag, zsrc, MEDIA_OCI_MANIFEST);
        let layers = s.layers();
        assert!(!layers.is_empty());
        for (d, _, m) in &layers {
            assert_eq!(
                m, "application/vnd.oci.image.layer.v1.tar+zstd",
                "seed_zstd: layer {d}"
            );
            let b = self.get(&format!("/v2/{}/blobs/{d}", s.repo));
            assert_eq!(b.status, 200);
            assert_eq!(&b.body[..4], &[0x28, 0xb5, 0x2f, 0xfd], "not zstd: {d}");
        }
        s
    }

    /// A multi-platform OCI index over linux/amd64 and linux/arm64 images (each with a layer of
    /// its own at /arch besides the shared ones), pushed with `skopeo copy --all`. `children`
    /// are [amd64, arm64].
    pub fn seed_index(&self, scratch: &Path, repo_tag: &str) -> Seeded {
        let src = umoci_index(scratch);
        self.push_layout(&src, repo_tag, &["--all"]);
        let s = self.seeded(repo_tag, src, MEDIA_OCI_INDEX);
        let plats: Vec<String> = s.manifest["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(plats, ["amd64", "arm64"], "seed_index: platforms");
        s
    }

    /// An image of `size` bytes of random uncompressed layers (at most 256 MiB each; made by
    /// gen.rs: not real tars), pushed with `--preserve-digests` (layers stay uncompressed).
    pub fn seed_big(&self, scratch: &Path, repo_tag: &str, size: u64) -> Seeded {
        const MAX_LAYER: u64 = 256 << 20;
        let dir = unique_dir(scratch, "big");
        let mut b = LayoutBuilder::new(&dir);
        let n = size.div_ceil(MAX_LAYER).max(1);
        let seed = SplitMix(SEQ.fetch_add(1, Ordering::SeqCst) ^ std::process::id() as u64).next();
        let layers: Vec<_> = (0..n)
            .map(|i| {
                let len = size / n + u64::from(i < size % n);
                b.add_random_layer(len, seed.wrapping_add(i))
            })
            .collect();
        let m = b.add_manifest(&layers, "amd64");
        b.tag(&m, Some("1"));
        b.write_index();
        let src = format!("oci:{}:1", dir.display());
        self.push_layout(&src, repo_tag, &["--preserve-digests"]);
        let s = self.seeded(repo_tag, src, MEDIA_OCI_MANIFEST);
        assert_eq!(s.digest, m.digest.to_string(), "seed_big: digest not kept");
        s
    }

    /// Reads back what was pushed at `repo_tag`, checking digest and media type.
    fn seeded(&self, repo_tag: &str, source: String, media_type: &str) -> Seeded {
        let (repo, tag) = repo_tag.rsplit_once(':').expect("repo:tag");
        let r = self.manifest(repo, tag);
        assert_eq!(
            r.status,
            200,
            "{repo_tag}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let digest = format!("sha256:{:x}", Sha256::digest(&r.body));
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
        assert_eq!(r.header("content-type"), Some(media_type), "{repo_tag}");
        let manifest = r.json();
        let mut children = Vec::new();
        let mut blobs = Vec::new();
        let mut images = Vec::new();
        if let Some(ms) = manifest["manifests"].as_array() {
            for m in ms {
                let d = m["digest"].as_str().unwrap().to_owned();
                let c = self.manifest(repo, &d);
                assert_eq!(c.status, 200, "{repo}@{d}");
                children.push(d);
                images.push(c.json());
            }
        } else {
            images.push(manifest.clone());
        }
        let mut configs = Vec::new();
        for im in &images {
            configs.push(im["config"]["digest"].as_str().unwrap().to_owned());
            for d in std::iter::once(&im["config"]).chain(im["layers"].as_array().unwrap()) {
                let e = (
                    d["digest"].as_str().unwrap().to_owned(),
                    d["size"].as_u64().unwrap(),
                    d["mediaType"].as_str().unwrap().to_owned(),
                );
                if !blobs.contains(&e) {
                    blobs.push(e);
                }
            }
        }
        Seeded {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            reference: format!("{}/{repo_tag}", self.host),
            digest,
            media_type: media_type.to_owned(),
            size: r.body.len() as u64,
            manifest,
            children,
            blobs,
            configs,
            source,
        }
    }

    /// Uploads `bytes` as a blob of `repo` (POST then PUT); returns its digest.
    pub fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        let r = self.request(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Some(b""),
        );
        assert_eq!(
            r.status,
            202,
            "POST upload: {}",
            String::from_utf8_lossy(&r.body)
        );
        let loc = r.header("location").expect("upload Location").to_owned();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self.request(
            "PUT",
            &format!("{loc}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            Some(bytes),
        );
        assert_eq!(
            r.status,
            201,
            "PUT blob: {}",
            String::from_utf8_lossy(&r.body)
        );
        digest
    }

    /// PUTs `bytes` as a manifest of `repo` at `reference` (tag or digest); returns the digest
    /// the registry answered.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let r = self.request(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            Some(bytes),
        );
        assert_eq!(
            r.status,
            201,
            "PUT manifest {repo}:{reference}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.header("docker-content-digest").unwrap().to_owned()
    }

    /// A referrer of the manifest `subject_digest` put the OCI 1.1 tag-fallback way: the empty
    /// config `{}` uploaded, an artifact manifest (artifactType `REFERRER_ARTIFACT_TYPE`,
    /// `subject` the given descriptor) PUT by digest, and the index at tag
    /// `sha256-<hex of subject>` extended (made if absent) to list it. Returns the referrer's
    /// digest.
    pub fn put_referrer(
        &self,
        repo: &str,
        subject_digest: &str,
        subject_size: u64,
        subject_media_type: &str,
    ) -> String {
        let empty = self.put_blob(repo, b"{}");
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let art = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "artifactType": REFERRER_ARTIFACT_TYPE,
            "config": {"mediaType": MEDIA_EMPTY, "digest": empty, "size": 2},
            "layers": [{"mediaType": MEDIA_EMPTY, "digest": empty, "size": 2}],
            "subject": {"mediaType": subject_media_type, "digest": subject_digest, "size": subject_size},
            "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z", "layoutfs.test.n": n.to_string()},
        });
        let art = serde_json::to_vec(&art).unwrap();
        let digest = format!("sha256:{:x}", Sha256::digest(&art));
        let got = self.put_manifest(repo, &digest, MEDIA_OCI_MANIFEST, &art);
        assert_eq!(got, digest);
        let tag = referrers_tag(subject_digest);
        let r = self.request(
            "GET",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Accept", MEDIA_OCI_INDEX)],
            None,
        );
        let mut index = if r.status == 200 {
            r.json()
        } else {
            serde_json::json!({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": []})
        };
        index["manifests"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "mediaType": MEDIA_OCI_MANIFEST,
                "digest": digest,
                "size": art.len(),
                "artifactType": REFERRER_ARTIFACT_TYPE,
                "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
            }));
        self.put_manifest(
            repo,
            &tag,
            MEDIA_OCI_INDEX,
            &serde_json::to_vec(&index).unwrap(),
        );
        digest
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The tag-fallback tag of the referrers of `digest` (`sha256:HEX` -> `sha256-HEX`).
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// A fresh directory under `scratch` (unique within the process).
fn unique_dir(scratch: &Path, what: &str) -> PathBuf {
    let d = scratch.join(format!(
        "{what}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    fs::create_dir_all(&d).unwrap();
    d
}

/// Splits curl `-i` output into the final response (1xx heads skipped).
fn parse_curl_i(out: &[u8]) -> Response {
    let mut rest = out;
    loop {
        let i = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("curl -i: no head in {:?}", String::from_utf8_lossy(out)));
        let head = String::from_utf8_lossy(&rest[..i]).into_owned();
        let body = &rest[i + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        return Response {
            status,
            headers,
            body: body.to_vec(),
        };
    }
}

/// Bytes that do not compress (so a layer keeps about their size).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0; len];
    SplitMix(seed).fill(&mut v);
    v
}

/// An OCI layout made by umoci under `scratch` holding image `1` for linux/`arch`: a layer with
/// /etc/hello and one with `big` incompressible bytes at /data/blob. Returns `oci:DIR:1`.
fn umoci_image(scratch: &Path, arch: &str, big: usize) -> String {
    require("umoci");
    let dir = unique_dir(scratch, "oci");
    let layout = dir.join("layout");
    let image = format!("{}:1", layout.display());
    let etc = dir.join("etc");
    let data = dir.join("data");
    fs::create_dir_all(&etc).unwrap();
    fs::create_dir_all(&data).unwrap();
    fs::write(etc.join("hello"), b"hello from layoutfs\n").unwrap();
    let seed = SEQ.fetch_add(1, Ordering::SeqCst) ^ (std::process::id() as u64) << 32;
    fs::write(data.join("blob"), noise(big, seed)).unwrap();
    sh(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    sh(Command::new("umoci").args(["new", "--image", &image]));
    sh(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--os",
        "linux",
        "--architecture",
        arch,
    ]));
    sh(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(&etc)
        .arg("/etc"));
    sh(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(&data)
        .arg("/data"));
    format!("oci:{}", image)
}

/// An OCI layout with tag `multi`: an index over linux/amd64 and linux/arm64 images sharing
/// two layers, each with a layer of its own (/arch). Returns `oci:DIR:multi`.
fn umoci_index(scratch: &Path) -> String {
    let src = umoci_image(scratch, "amd64", 256 << 10);
    let image = src.strip_prefix("oci:").unwrap().to_owned();
    let layout = PathBuf::from(image.rsplit_once(':').unwrap().0);
    let arm = format!("{}:arm", layout.display());
    sh(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--tag",
        "arm",
        "--architecture",
        "arm64",
    ]));
    for (img, arch) in [(&image, "amd64"), (&arm, "arm64")] {
        let d = layout.parent().unwrap().join(format!("arch-{arch}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(arch), arch.as_bytes()).unwrap();
        sh(Command::new("umoci")
            .args(["insert", "--image", img])
            .arg(&d)
            .arg("/arch"));
    }
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let by_ref = |r: &str| {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == r)
            .unwrap_or_else(|| panic!("umoci layout has no {r}"))
            .clone()
    };
    let mut children = Vec::new();
    for (r, arch) in [("1", "amd64"), ("arm", "arm64")] {
        let m = by_ref(r);
        children.push(serde_json::json!({
            "mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let idx = serde_json::json!({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": children});
    let bytes = serde_json::to_vec(&idx).unwrap();
    let hex = format!("{:x}", Sha256::digest(&bytes));
    fs::write(layout.join("blobs/sha256").join(&hex), &bytes).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": MEDIA_OCI_INDEX, "digest": format!("sha256:{hex}"), "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    format!("oci:{}:multi", layout.display())
}

/// A CA and a leaf for IP:127.0.0.1 and DNS:localhost signed by it, in `dir` (ca.crt,
/// cert.pem, key.pem): rustls refuses a self-signed leaf (CaUsedAsEndEntity).
fn make_certs(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let p = |f: &str| dir.join(f);
    sh(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt"))
        .args(["-days", "2", "-subj", "/CN=layoutfs-test-ca"]));
    sh(Command::new("openssl")
        .args(["req", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(p("key.pem"))
        .arg("-out")
        .arg(p("leaf.csr"))
        .args(["-subj", "/CN=127.0.0.1"]));
    fs::write(
        p("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    sh(Command::new("openssl")
        .args(["x509", "-req", "-in"])
        .arg(p("leaf.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-CAcreateserial")
        .args(["-days", "2", "-out"])
        .arg(p("cert.pem"))
        .arg("-extfile")
        .arg(p("leaf.ext")));
}

/// `layoutfs ARGS` on `env`'s store with credentials and CAs of the test's own: HOME,
/// DOCKER_CONFIG and the XDG directories under `env`, no REGISTRY_AUTH_FILE, and
/// `LAYOUTFS_CERTS_D` = `certs_d` (a registry's, for TLS) or a place with none. Nothing of the
/// machine's is read or written.
pub fn layoutfs(env: &Env, certs_d: Option<&Path>, args: &[&str]) -> Command {
    let mut c = env.cmd(args);
    let home = env.path("home");
    fs::create_dir_all(&home).unwrap();
    c.env("HOME", &home)
        .env("DOCKER_CONFIG", home.join(".docker"))
        .env("XDG_RUNTIME_DIR", env.path("run"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env(
            "LAYOUTFS_CERTS_D",
            certs_d.map_or_else(|| env.path("no-certs.d"), Path::to_path_buf),
        )
        .env_remove("REGISTRY_AUTH_FILE")
        .stdin(Stdio::null());
    c
}

/// `layoutfs login -u alice --password-stdin HOST`, fed `password` and a newline.
pub fn login(
    env: &Env,
    certs_d: Option<&Path>,
    host: &str,
    password: &str,
) -> std::process::Output {
    let mut child = layoutfs(
        env,
        certs_d,
        &["login", "-u", USER, "--password-stdin", host],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}
