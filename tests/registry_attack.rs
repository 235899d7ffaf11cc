//! Attack run on the registry commands (issue 14): what a malicious or broken registry can make
//! `pull` and `push` do. Each test names the behaviour that should hold; the comment above it
//! says the attack, what was observed when it was written, and what should happen. Faults are
//! served by the proxy of tests/common/proxy.rs in front of a real registry, or by `Hostile`
//! below, a tiny HTTP server whose every answer the test writes (headers, endless bodies,
//! connections cut after a byte).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use common::proxy::{Fault, Proxy};
use common::registry::{Registry, Seeded};
use common::{run_bounded, stderr, Env};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn cmd(env: &Env, args: &[&str]) -> Command {
    common::registry::layoutfs(env, None, args)
}

fn run(env: &Env, args: &[&str]) -> Output {
    cmd(env, args).output().unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn seeded_index(env: &Env, reg: &Registry, repo_tag: &str) -> Seeded {
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    reg.seed_index(&scratch, repo_tag)
}

// ---------------------------------------------------------------------------------------------
// A registry whose every answer the test writes.

/// One request as `Hostile` received it.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What `Hostile` answers.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The Content-Length to state (default: the body's); the connection is closed after the
    /// body when it differs.
    declared: Option<u64>,
    /// Instead of `body`: a chunked body of zeros, this many bytes (or until the client goes).
    endless: Option<u64>,
}

impl Reply {
    fn new(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
            declared: None,
            endless: None,
        }
    }

    fn json(status: u16, content_type: &str, v: &serde_json::Value) -> Reply {
        let body = serde_json::to_vec(v).unwrap();
        let mut r = Reply::new(status, content_type, body.clone());
        r.headers
            .push(("Docker-Content-Digest".into(), sha256(&body)));
        r
    }

    fn not_found() -> Reply {
        Reply::new(
            404,
            "application/json",
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#.to_vec(),
        )
    }
}

type Handler = dyn Fn(&Req) -> Reply + Send + Sync;

struct Hostile {
    host: String,
    log: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Hostile {
    fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Hostile {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = l.local_addr().unwrap().to_string();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (st, lg) = (stop.clone(), log.clone());
        let accept = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        let (st, lg, h) = (st.clone(), lg.clone(), handler.clone());
                        std::thread::spawn(move || serve(s, &st, &lg, &*h));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Hostile {
            host,
            log,
            stop,
            accept: Some(accept),
        }
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn read_head(s: &mut TcpStream, stop: &AtomicBool) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    let start = Instant::now();
    while !head.ends_with(b"\r\n\r\n") {
        if stop.load(Ordering::SeqCst) || start.elapsed() > Duration::from_secs(60) {
            return None;
        }
        match s.read(&mut b) {
            Ok(0) => return None,
            Ok(_) => head.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return None,
        }
        if head.len() > 64 << 10 {
            return None;
        }
    }
    Some(head)
}

fn serve(mut s: TcpStream, stop: &AtomicBool, log: &Mutex<Vec<Req>>, h: &Handler) {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // A TLS hello (the loopback HTTPS probe) gets a plain HTTP answer, as Go's server gives.
    let mut first = [0u8; 1];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        match s.peek(&mut first) {
            Ok(0) => return,
            Ok(_) => break,
            Err(_) => {}
        }
    }
    if first[0] == 0x16 {
        let _ = s.write_all(
            b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
        );
        let _ = s.shutdown(Shutdown::Both);
        return;
    }
    while let Some(head) = read_head(&mut s, stop) {
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let first: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let req = Req {
            method: first.first().copied().unwrap_or_default().to_owned(),
            path: first.get(1).copied().unwrap_or_default().to_owned(),
            headers,
        };
        // A request body (uploads): read and drop it.
        let mut left: u64 = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut buf = vec![0u8; 64 << 10];
        let start = Instant::now();
        while left > 0 && start.elapsed() < Duration::from_secs(20) {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            match s.read(&mut buf[..want]) {
                Ok(0) => return,
                Ok(n) => left -= n as u64,
                Err(_) => {}
            }
        }
        log.lock().unwrap().push(req.clone());
        let r = h(&req);
        let mut out = format!("HTTP/1.1 {} X\r\n", r.status);
        for (n, v) in &r.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        let close = match (r.endless, r.declared) {
            (Some(_), _) => {
                out.push_str("Transfer-Encoding: chunked\r\n\r\n");
                false
            }
            (None, Some(n)) => {
                out.push_str(&format!("Content-Length: {n}\r\n\r\n"));
                n != r.body.len() as u64
            }
            (None, None) => {
                out.push_str(&format!("Content-Length: {}\r\n\r\n", r.body.len()));
                false
            }
        };
        if s.write_all(out.as_bytes()).is_err() {
            return;
        }
        if let Some(limit) = r.endless {
            let chunk = vec![b'x'; 1 << 20];
            let mut sent = 0u64;
            while sent < limit && !stop.load(Ordering::SeqCst) {
                let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
                piece.extend_from_slice(&chunk);
                piece.extend_from_slice(b"\r\n");
                if s.write_all(&piece).is_err() {
                    return;
                }
                sent += chunk.len() as u64;
            }
            if s.write_all(b"0\r\n\r\n").is_err() {
                return;
            }
        } else if req.method != "HEAD" && s.write_all(&r.body).is_err() {
            return;
        }
        if close {
            let _ = s.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// The answer to `GET /v2/` of an anonymous registry.
fn base(req: &Req) -> Option<Reply> {
    (req.path == "/v2/" || req.path == "/v2")
        .then(|| Reply::new(200, "application/json", b"{}".to_vec()))
}

// ---------------------------------------------------------------------------------------------
// Findings.

/// Attack: a registry answers the referrers API of a multi-platform index with an index that
/// lists the *arm64* manifest (a platform this `pull --platform linux/amd64 --referrers` leaves
/// out), its descriptor carrying a `platform`. The referrer is registered as `REPO@<digest>` and
/// walked with `OnMissing::SkipPlatforms`; `RegistryBlobs::size` says None for the left-out
/// digest and the walk skips it as "a platform left out".
/// Observed: the pull succeeds (exit 0) and registers `HOST/multi@sha256:<arm64>` whose root
/// manifest is not in the store (`images`: `0 B  1 missing`); from then on `fsck` fails for
/// good and blames the honest image too: `missing blob sha256:<arm64> (breaks HOST/multi:1,
/// HOST/multi@sha256:<arm64>)`, exit 1. (gc still runs.)
/// Should: an image's own root is never skippable (a referrer, like any registered image, is
/// pulled whole or the pull fails, nothing registered); fsck stays clean.
#[test]
fn a_referrer_that_is_a_platform_left_out_is_pulled_whole_or_refused() {
    let env = Env::new();
    let reg = Registry::plain();
    let s = seeded_index(&env, &reg, "multi:1");
    let proxy = Proxy::start(&reg.host);
    let arm = &s.manifest["manifests"][1];
    assert_eq!(arm["platform"]["architecture"], "arm64");
    let hostile = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": arm["digest"],
            "size": arm["size"],
            "platform": {"os": "linux", "architecture": "arm64"},
        }],
    });
    proxy.add(
        "GET",
        "/referrers/",
        Fault::Serve {
            content_type: OCI_INDEX.into(),
            body: serde_json::to_vec(&hostile).unwrap(),
            status: 200,
        },
        None,
    );
    let reference = format!("{}/multi:1", proxy.host);
    let out = run(
        &env,
        &[
            "pull",
            "--platform",
            "linux/amd64",
            "--referrers",
            &reference,
        ],
    );
    eprintln!("pull: {} {}", out.status, stderr(&out));
    let arm_digest = arm["digest"].as_str().unwrap();
    let arm_in_store = env
        .store
        .join("blobs/sha256")
        .join(&arm_digest["sha256:".len()..])
        .exists();
    let images = env.images();
    eprintln!("images: {images:?}");
    let gc = run(&env, &["gc", "--grace", "0s"]);
    eprintln!("gc: {}", stderr(&gc));
    let table = run(&env, &["images"]);
    eprintln!("images: {}", String::from_utf8_lossy(&table.stdout));
    let fsck = run(&env, &["fsck"]);
    eprintln!(
        "fsck: {} {}{}",
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout),
        stderr(&fsck)
    );
    assert!(
        arm_in_store || images.iter().all(|(_, d)| d != arm_digest),
        "an image {arm_digest} was registered without its root manifest: {images:?}"
    );
    assert!(
        gc.status.success(),
        "gc refuses after the pull: {}",
        stderr(&gc)
    );
    assert!(
        fsck.status.success(),
        "fsck fails after the pull: {}",
        stderr(&fsck)
    );
}

/// Attack: the referrers answer (API or `sha256-<hex>` tag, which anyone who may push a tag
/// to the repository can write) lists an ordinary image of the repository that has no
/// `subject` at all (or another subject). `pull::referrers` registers every manifest listed,
/// without reading its `subject`.
/// Observed: `pull --referrers HOST/r:1` exits 0 and registers `HOST/r@sha256:<r:2's
/// manifest>` with its config and layers: content the user never asked for, kept by gc as an
/// image.
/// Should: a referrer is kept only when its manifest's `subject` is the manifest it was
/// listed for (what makes it a referrer); others are left out with a warning.
#[test]
fn a_listed_referrer_whose_subject_is_not_the_image_is_not_registered() {
    let env = Env::new();
    let reg = Registry::plain();
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    reg.seed_oci(&scratch, "r:1");
    let other = reg.seed_oci(&scratch, "r:2");
    assert!(other.manifest.get("subject").is_none());
    let proxy = Proxy::start(&reg.host);
    let hostile = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": other.digest, "size": other.size}],
    });
    proxy.add(
        "GET",
        "/referrers/",
        Fault::Serve {
            content_type: OCI_INDEX.into(),
            body: serde_json::to_vec(&hostile).unwrap(),
            status: 200,
        },
        None,
    );
    let out = run(
        &env,
        &["pull", "--referrers", &format!("{}/r:1", proxy.host)],
    );
    eprintln!("pull: {} {}", out.status, stderr(&out));
    let images = env.images();
    eprintln!("images: {images:?}");
    assert!(
        images.iter().all(|(_, d)| d != &other.digest),
        "an image without a subject was registered as a referrer: {images:?}"
    );
}

/// A hostile registry serving `manifest` at `/v2/x/manifests/1` and the blobs of `blobs` by
/// digest; everything else is 404.
fn serving(manifest: serde_json::Value, blobs: Vec<Vec<u8>>) -> Hostile {
    let blobs: Vec<(String, Vec<u8>)> = blobs.into_iter().map(|b| (sha256(&b), b)).collect();
    let media = manifest["mediaType"]
        .as_str()
        .unwrap_or(OCI_MANIFEST)
        .to_owned();
    Hostile::start(move |req| {
        if let Some(r) = base(req) {
            return r;
        }
        if req.path == "/v2/x/manifests/1" || req.path.starts_with("/v2/x/manifests/sha256:") {
            return Reply::json(200, &media, &manifest);
        }
        for (d, b) in &blobs {
            if req.path == format!("/v2/x/blobs/{d}") {
                return Reply::new(200, "application/octet-stream", b.clone());
            }
        }
        Reply::not_found()
    })
}

/// Attack: a manifest whose layers state sizes near `i64::MAX` (valid JSON numbers, accepted by
/// the descriptor parser). `import::pull::pull` sums the sizes of the blobs it lacks for the
/// progress bar: `wanted.values().map(|d| d.size).sum()`.
/// Observed: the sum overflows and the binary panics ("attempt to add with overflow", exit 101,
/// a backtrace hint instead of a one-line error); a release build wraps silently.
/// Should: a one-line error naming the blob (a size over a sane bound, or no larger than the
/// registry can hold), exit 1, nothing registered; never a panic.
#[test]
fn descriptor_sizes_that_overflow_a_sum_fail_with_one_line_not_a_panic() {
    let env = Env::new();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let big = i64::MAX as u64;
    let layers: Vec<serde_json::Value> = (0..3)
        .map(|i| {
            serde_json::json!({
                "mediaType": OCI_LAYER,
                "digest": sha256(format!("layer {i}").as_bytes()),
                "size": big,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": layers,
    });
    let h = serving(manifest, vec![config]);
    let (status, err, _, _) = run_bounded(
        cmd(&env, &["pull", &format!("{}/x:1", h.host)]),
        Duration::from_secs(30),
        u64::MAX,
    );
    eprintln!("pull: {status:?} {err}");
    let status = status.expect("the pull did not end within 30 s");
    assert_eq!(status.code(), Some(1), "not a plain failure: {err}");
    assert!(!err.contains("panicked"), "a panic: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(env.images().is_empty());
}

/// Attack: the registry answers the manifest request with `400` and an endless (chunked)
/// error body. `Remote::get_small` reads an error's body whole (`res.bytes().await`) before
/// cutting it to 200 bytes for the message (oci-client's blob and upload calls do the same
/// with `response.bytes()` / `res.text()`); a 5xx does it 6 times.
/// Observed: the pull holds the whole error body in memory: a 128 MiB body gives a peak
/// resident memory over 128 MiB (a 256 MiB body answered to 5xx: 589 MiB); an endless body
/// grows it without limit (no overall timeout; the 30 s read timeout never fires while bytes
/// flow).
/// Should: an error body is read up to a few KiB (then the connection dropped), so memory
/// stays small whatever the registry sends.
#[test]
fn an_endless_error_body_is_not_held_in_memory() {
    let env = Env::new();
    let h = Hostile::start(|req| {
        if let Some(r) = base(req) {
            return r;
        }
        let mut r = Reply::new(400, "application/json", Vec::new());
        r.endless = Some(128 << 20);
        r
    });
    let (status, err, peak, _) = run_bounded(
        cmd(&env, &["pull", &format!("{}/x:1", h.host)]),
        Duration::from_secs(20),
        1 << 30,
    );
    eprintln!("pull: {status:?}, peak {} MiB: {err}", peak >> 20);
    assert!(
        peak < 96 << 20,
        "the pull held {} MiB of an error body",
        peak >> 20
    );
    assert!(status.is_some(), "the pull did not end within 20 s");
}

/// Attack: the registry answers every (Range) request for a 1 MiB layer with `206` and the
/// right Content-Length, sends one byte, and closes the connection. `BlobReader::read` resets
/// its count of failures whenever a chunk arrives, so one byte of progress per connection
/// keeps it going.
/// Observed: the pull never gives up: a request every 0.25-0.5 s (the first backoff, reset each
/// time), one byte each, so the 1 MiB layer would take days; the pull was still running after
/// 12 s and 28 to 47 requests (runs vary).
/// Should: progress that small does not count as progress (e.g. reset the failures only after
/// a sizeable amount, or bound the reconnections of one blob), so such a registry fails the
/// pull within the stated 6 tries' backoff (~8 s).
#[test]
fn a_registry_that_sends_one_byte_per_connection_is_given_up() {
    let env = Env::new();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let layer_digest = sha256(&layer);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": layer.len()}],
    });
    let config_digest = sha256(&config);
    let h = Hostile::start(move |req| {
        if let Some(r) = base(req) {
            return r;
        }
        if req.path.contains("/manifests/") {
            return Reply::json(200, OCI_MANIFEST, &manifest);
        }
        if req.path.ends_with(&config_digest) {
            return Reply::new(200, "application/octet-stream", config.clone());
        }
        if req.path.ends_with(&layer_digest) {
            let from: usize = req
                .header("range")
                .and_then(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
                .unwrap_or(0);
            let from = from.min(layer.len() - 1);
            let mut r = Reply::new(206, "application/octet-stream", vec![layer[from]]);
            r.headers.push((
                "Content-Range".into(),
                format!("bytes {from}-{}/{}", layer.len() - 1, layer.len()),
            ));
            r.declared = Some((layer.len() - from) as u64);
            return r;
        }
        Reply::not_found()
    });
    let (status, err, _, _) = run_bounded(
        cmd(&env, &["pull", &format!("{}/x:1", h.host)]),
        Duration::from_secs(12),
        u64::MAX,
    );
    let asked = h
        .requests()
        .iter()
        .filter(|r| r.path.contains("/blobs/") && !r.path.ends_with(&sha256(b"")))
        .count();
    eprintln!("pull: {status:?} after {asked} blob requests: {err}");
    assert!(
        status.is_some(),
        "the pull was still going after 12 s and {asked} requests of one byte each"
    );
    assert!(env.images().is_empty());
}

/// A registry serving one image `x:1` of `config` and `layer`; Range requests of the layer are
/// answered with 206 from the byte asked.
fn honest(config: Vec<u8>, layer: Vec<u8>) -> Hostile {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(&layer), "size": layer.len()}],
    });
    let (cd, ld) = (sha256(&config), sha256(&layer));
    Hostile::start(move |req| {
        if let Some(r) = base(req) {
            return r;
        }
        if req.path.contains("/manifests/") {
            return Reply::json(200, OCI_MANIFEST, &manifest);
        }
        if req.path.ends_with(&cd) {
            return Reply::new(200, "application/octet-stream", config.clone());
        }
        if req.path.ends_with(&ld) {
            let from: usize = req
                .header("range")
                .and_then(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
                .unwrap_or(0)
                .min(layer.len());
            let mut r = Reply::new(206, "application/octet-stream", layer[from..].to_vec());
            r.headers.push((
                "Content-Range".into(),
                format!("bytes {from}-{}/{}", layer.len() - 1, layer.len()),
            ));
            return r;
        }
        Reply::not_found()
    })
}

fn test_config() -> Vec<u8> {
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec()
}

fn test_layer(n: usize, salt: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_add(salt).wrapping_mul(2654435761) >> 24) as u8)
        .collect()
}

/// Attack: a hostile registry lists a layer it does not have under the digest D of a well-known
/// layer, sends 512 KiB of garbage for it, then refuses (400). The pull fails, and the garbage
/// stays as the kept ingest `ingest/r-sha256-D` "for the next pull to resume". The next pull
/// of D, from an honest registry, asks for the rest with a Range request from byte 524288.
/// Observed: the honest pull fails: `blob sha256:D from HONEST/x: content does not match its
/// digest (got sha256:…)`, blaming the honest registry for the hostile one's bytes (only a
/// third pull succeeds, the kept ingest having been dropped).
/// Should: a resumed ingest whose commit fails its digest is started over from byte 0 once
/// (without a Range request) before the pull fails, so an earlier source's bytes can never
/// fail or be blamed on a later one.
#[test]
fn a_kept_ingest_left_by_a_hostile_registry_does_not_fail_an_honest_pull() {
    let env = Env::new();
    let config = test_config();
    let layer = test_layer(1 << 20, 7);
    let d = sha256(&layer);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": layer.len()}],
    });
    let (cd, ld, len) = (sha256(&config), d.clone(), layer.len());
    let cfg = config.clone();
    let served = Arc::new(AtomicBool::new(false));
    let hostile = Hostile::start(move |req| {
        if let Some(r) = base(req) {
            return r;
        }
        if req.path.contains("/manifests/") {
            return Reply::json(200, OCI_MANIFEST, &manifest);
        }
        if req.path.ends_with(&cd) {
            return Reply::new(200, "application/octet-stream", cfg.clone());
        }
        if req.path.ends_with(&ld) && !served.swap(true, Ordering::SeqCst) {
            let mut r = Reply::new(200, "application/octet-stream", vec![0u8; 512 << 10]);
            r.declared = Some(len as u64);
            return r;
        }
        Reply::new(
            400,
            "application/json",
            br#"{"errors":[{"code":"DENIED","message":"no"}]}"#.to_vec(),
        )
    });
    let out = run(&env, &["pull", &format!("{}/x:1", hostile.host)]);
    eprintln!("hostile pull: {} {}", out.status, stderr(&out));
    assert!(!out.status.success());
    let kept = env
        .store
        .join("ingest")
        .join(format!("r-sha256-{}", &d["sha256:".len()..]));
    eprintln!(
        "kept ingest: {:?}",
        fs::metadata(kept.join("data")).map(|m| m.len())
    );
    let good = honest(config, layer);
    let out = run(&env, &["pull", &format!("{}/x:1", good.host)]);
    eprintln!("honest pull: {} {}", out.status, stderr(&out));
    if !out.status.success() {
        let again = run(&env, &["pull", &format!("{}/x:1", good.host)]);
        eprintln!("honest pull again: {} {}", again.status, stderr(&again));
    }
    assert!(
        out.status.success(),
        "the honest registry's pull failed on the hostile one's bytes: {}",
        stderr(&out)
    );
}

/// Attack: an index lists one manifest M 20,000 times without a platform (2.6 MB, under the
/// 4 MiB cap), and the referrers API answers every subject with an index of 25,000
/// descriptors (3.9 MB). `pull --referrers` (single platform) asks the referrers of the index
/// and of every `wanted` manifest (all listings without a platform, duplicates included) and
/// collects every descriptor answered into one `Vec` before anything is pulled.
/// Observed: one referrers request per listing (20,001 planned for one distinct subject), and
/// the descriptors pile up, about 11 MiB of memory per answer: after 10 s, ~20 requests and
/// ~230 MiB resident and growing (500 million descriptors, hundreds of GB, in the end); the
/// test kills it.
/// Should: referrers asked once per distinct subject digest, referrers deduplicated by digest,
/// and their total bounded (as a manifest's size is), failing with one line past it.
#[test]
fn referrers_of_a_repeated_subject_are_asked_once_and_bounded() {
    let env = Env::new();
    let config = test_config();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [],
    });
    let m_bytes = serde_json::to_vec(&manifest).unwrap();
    let m = sha256(&m_bytes);
    let entry = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": m, "size": m_bytes.len()});
    let mut listed = vec![entry.clone(); 20_000];
    let mut amd64 = entry.clone();
    amd64["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    listed.insert(0, amd64);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": listed,
    });
    let referrers = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": vec![entry; 25_000],
    });
    let referrers = Arc::new(serde_json::to_vec(&referrers).unwrap());
    assert!(referrers.len() < 4 << 20);
    let (cd, mpath) = (sha256(&config), format!("/manifests/{m}"));
    let h = Hostile::start(move |req| {
        if let Some(r) = base(req) {
            return r;
        }
        if req.path.contains("/referrers/") {
            return Reply::new(200, OCI_INDEX, referrers.to_vec());
        }
        if req.path.ends_with(&mpath) {
            return Reply::json(200, OCI_MANIFEST, &manifest);
        }
        if req.path.contains("/manifests/") {
            return Reply::json(200, OCI_INDEX, &index);
        }
        if req.path.ends_with(&cd) {
            return Reply::new(200, "application/octet-stream", config.clone());
        }
        Reply::not_found()
    });
    let (status, err, peak, _) = run_bounded(
        cmd(
            &env,
            &[
                "pull",
                "--platform",
                "linux/amd64",
                "--referrers",
                &format!("{}/x:1", h.host),
            ],
        ),
        Duration::from_secs(10),
        768 << 20,
    );
    let asked = h
        .requests()
        .iter()
        .filter(|r| r.path.contains("/referrers/"))
        .count();
    eprintln!(
        "pull: {status:?}, peak {} MiB, {asked} referrers requests: {err}",
        peak >> 20
    );
    assert!(
        asked <= 2,
        "{asked} referrers requests for one distinct subject"
    );
    assert!(
        peak < 128 << 20,
        "the pull reached {} MiB of referrers",
        peak >> 20
    );
}

// ---------------------------------------------------------------------------------------------
// Guards: attacks that held when tried (each can fail).

/// Guard. Attack: the registry redirects the manifest request (our own `reqwest` client in
/// `Remote::get_small`, which sets `Authorization` by hand, unlike oci-client's blob calls) to
/// another host. Held: the credential is not sent there (reqwest drops it on a cross-host
/// redirect), while the registry itself got it.
#[test]
fn a_manifest_redirected_to_another_host_gets_no_credential() {
    use common::proxy::Recorder;
    use common::registry::{Auth, Options, PASSWORD, USER};
    let env = Env::new();
    let reg = Registry::start(Options {
        tls: false,
        auth: Auth::Htpasswd,
    });
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let s = reg.seed_oci(&scratch, "x:1");
    let proxy = Proxy::start(&reg.host);
    let recorder = Recorder::start(serde_json::to_vec(&s.manifest).unwrap());
    proxy.add(
        "GET",
        "/manifests/1",
        Fault::RedirectTo(recorder.host.clone()),
        None,
    );
    let mut child = cmd(
        &env,
        &["login", "-u", USER, "--password-stdin", &proxy.host],
    )
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    assert!(child.wait().unwrap().success());
    let out = run(&env, &["pull", &format!("{}/x:1", proxy.host)]);
    eprintln!("pull: {} {}", out.status, stderr(&out));
    let there = recorder.requests();
    assert!(!there.is_empty(), "the redirect was not followed");
    assert!(
        there.iter().all(|r| !r.authorization),
        "a credential went to another host: {there:?}"
    );
    assert!(proxy.requests().iter().any(|r| r.authorization));
}

/// Guard. Attack: on `push`, the registry answers the upload's POST with `202` and a
/// `Location` on another host. Held: the blob's PUT goes there without the credential
/// (oci-client authenticates only requests whose URL is the registry's host and port), while
/// the registry's own requests carried it.
#[test]
fn an_upload_location_on_another_host_gets_no_credential() {
    use common::proxy::Recorder;
    let env = Env::new();
    let reg = Registry::plain();
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    reg.seed_oci(&scratch, "x:1");
    let source = format!("{}/x:1", reg.host);
    let out = run(&env, &["pull", "--name", "local/x:1", &source]);
    assert!(out.status.success(), "{}", stderr(&out));
    let recorder = Recorder::start(Vec::new());
    let elsewhere = format!("http://{}/upload/1", recorder.host);
    let h = Hostile::start(move |req| {
        if req.header("authorization").is_none() {
            let mut r = Reply::new(401, "application/json", b"{}".to_vec());
            r.headers
                .push(("WWW-Authenticate".into(), r#"Basic realm="hostile""#.into()));
            return r;
        }
        if let Some(r) = base(req) {
            return r;
        }
        if req.method == "POST" && req.path.contains("/blobs/uploads/") {
            let mut r = Reply::new(202, "application/json", Vec::new());
            r.headers.push(("Location".into(), elsewhere.clone()));
            return r;
        }
        Reply::not_found()
    });
    let mut child = cmd(&env, &["login", "-u", "alice", "--password-stdin", &h.host])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "secret").unwrap();
    assert!(child.wait().unwrap().success());
    let out = run(&env, &["push", "local/x:1", &format!("{}/y:1", h.host)]);
    eprintln!("push: {} {}", out.status, stderr(&out));
    let there = recorder.requests();
    assert!(
        there.iter().any(|r| r.method == "PUT"),
        "no upload went to the Location: {there:?}"
    );
    assert!(
        there.iter().all(|r| !r.authorization),
        "a credential went to the upload's other host: {there:?}"
    );
    assert!(h
        .requests()
        .iter()
        .any(|r| r.header("authorization").is_some()));
}

/// A registry serving `x:1` of `config` and `layer` whose first answer for the layer is cut
/// after `cut` bytes (the right ones), and whose later answers `later` makes from the Range
/// asked (the start byte).
fn cutting(
    config: Vec<u8>,
    layer: Vec<u8>,
    cut: usize,
    later: impl Fn(&[u8], usize) -> Reply + Send + Sync + 'static,
) -> Hostile {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(&layer), "size": layer.len()}],
    });
    let (cd, ld) = (sha256(&config), sha256(&layer));
    let first = AtomicBool::new(true);
    Hostile::start(move |req| {
        if let Some(r) = base(req) {
            return r;
        }
        if req.path.contains("/manifests/") {
            return Reply::json(200, OCI_MANIFEST, &manifest);
        }
        if req.path.ends_with(&cd) {
            return Reply::new(200, "application/octet-stream", config.clone());
        }
        if req.path.ends_with(&ld) {
            if first.swap(false, Ordering::SeqCst) {
                let mut r = Reply::new(200, "application/octet-stream", layer[..cut].to_vec());
                r.declared = Some(layer.len() as u64);
                return r;
            }
            let from: usize = req
                .header("range")
                .and_then(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
                .unwrap_or(0);
            return later(&layer, from);
        }
        Reply::not_found()
    })
}

/// Attack (a broken registry or a cache in front of one): after a connection is cut at
/// 512 KiB, the Range request `bytes=524288-` is answered `206` with `Content-Range: bytes
/// 0-…` and the whole blob from byte 0. `BlobReader::open` takes any 206 as starting at the
/// byte it asked for and appends the body there.
/// Observed: the blob's bytes are misplaced and the pull fails: `blob sha256:… from HOST/x:
/// content does not match its digest (got sha256:…)`, though every byte the registry sent
/// was right for where it said it was.
/// Should: the start in `Content-Range` is checked: a 206 that does not start at the byte asked
/// is read as a 200 (skip to the byte reached) or refused as a transient failure, never
/// appended at the wrong place.
#[test]
fn a_partial_answer_starting_elsewhere_than_asked_is_not_appended_at_the_wrong_place() {
    let env = Env::new();
    let layer = test_layer(1 << 20, 11);
    let h = cutting(test_config(), layer.clone(), 512 << 10, |layer, _from| {
        let mut r = Reply::new(206, "application/octet-stream", layer.to_vec());
        r.headers.push((
            "Content-Range".into(),
            format!("bytes 0-{}/{}", layer.len() - 1, layer.len()),
        ));
        r
    });
    let out = run(&env, &["pull", &format!("{}/x:1", h.host)]);
    eprintln!("pull: {} {}", out.status, stderr(&out));
    let ranges: Vec<Option<String>> = h
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&sha256(&layer)))
        .map(|r| r.header("range").map(str::to_owned))
        .collect();
    eprintln!("layer requests' ranges: {ranges:?}");
    assert!(out.status.success(), "{}", stderr(&out));
    common::fsck_clean(&env);
}

/// Guard. Attack: a pull cut at 512 KiB leaves a kept ingest; the next pull's Range request is
/// answered `200` with the whole blob (a registry that ignores Range). Held: the first 512 KiB
/// of the answer are skipped, the blob commits with the right digest, fsck is clean.
#[test]
fn a_200_answer_to_a_range_request_resumes_correctly() {
    let env = Env::new();
    let layer = test_layer(1 << 20, 13);
    let refuse = |_: &[u8], _| {
        Reply::new(
            400,
            "application/json",
            br#"{"errors":[{"code":"DENIED","message":"no"}]}"#.to_vec(),
        )
    };
    let h = cutting(test_config(), layer.clone(), 512 << 10, refuse);
    let out = run(&env, &["pull", &format!("{}/x:1", h.host)]);
    assert!(!out.status.success());
    let kept = env
        .store
        .join("ingest")
        .join(format!("r-sha256-{}", &sha256(&layer)["sha256:".len()..]));
    assert_eq!(fs::metadata(kept.join("data")).unwrap().len(), 512 << 10);
    let whole = |layer: &[u8], _| Reply::new(200, "application/octet-stream", layer.to_vec());
    let h = cutting(test_config(), layer.clone(), layer.len(), whole);
    let out = run(&env, &["pull", &format!("{}/x:1", h.host)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ranges: Vec<Option<String>> = h
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&sha256(&layer)))
        .map(|r| r.header("range").map(str::to_owned))
        .collect();
    assert_eq!(ranges, [Some(format!("bytes={}-", 512 << 10))]);
    common::fsck_clean(&env);
}

/// Attack (a command line that looks harmless): `pull --name mine HOST/a:1 HOST/b:1`, two
/// different images whose tags are the same. `--name` being a repository, each takes its
/// reference's tag, so both are stored as `mine:1`.
/// Observed: exit 0; `mine:1` is b's image and a's is gone from the store's names without a
/// word (pulled, then replaced by the second reference in the same command).
/// Should: refused before anything is pulled (`--name mine: HOST/a:1 and HOST/b:1 would
/// both be stored as mine:1`), as a name with a tag is refused for several references.
#[test]
fn two_references_pulled_under_one_name_do_not_replace_each_other() {
    let env = Env::new();
    let reg = Registry::plain();
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let a = reg.seed_oci(&scratch, "a:1");
    let b = reg.seed_oci(&scratch, "b:1");
    assert_ne!(a.digest, b.digest);
    let out = run(
        &env,
        &[
            "pull",
            "--name",
            "mine",
            &format!("{}/a:1", reg.host),
            &format!("{}/b:1", reg.host),
        ],
    );
    let images = env.images();
    eprintln!("pull: {} {}; images: {images:?}", out.status, stderr(&out));
    assert!(
        !out.status.success() || images.iter().any(|(_, d)| d == &a.digest),
        "a's image was pulled and silently replaced: {images:?}"
    );
}

/// Attack: a hostile `--name` (`../x`, `a/../b`, `/abs`, `x:y:z`, upper case). `stored_name`
/// checks it only after the registry was reached and the manifest fetched.
/// Observed: each is refused with one good line (`--name "a/../b": invalid image name …`), but
/// only after the registry was asked (10 requests for 5 names: `/v2/`, the manifest); with the
/// registry down the error is `cannot connect`, not the bad name. Nothing is registered: the
/// name never reaches the store.
/// Should: `--name` is parsed with the other arguments, before any connection: `--name
/// "a/../b": …` and no request.
#[test]
fn a_bad_name_is_refused_before_the_registry_is_asked() {
    let env = Env::new();
    let config = test_config();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [],
    });
    let h = serving(manifest, vec![config]);
    for bad in ["../x", "a/../b", "/abs", "x:y:z", "Upper"] {
        let out = run(&env, &["pull", "--name", bad, &format!("{}/x:1", h.host)]);
        eprintln!("--name {bad}: {}", stderr(&out));
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(bad),
            "the error does not name --name {bad:?}: {}",
            stderr(&out)
        );
    }
    let asked = h.requests();
    assert!(
        asked.is_empty(),
        "the registry was asked {} times before bad names were refused",
        asked.len()
    );
    assert!(env.images().is_empty());
}

/// Attack: the registry's Bearer challenge names a token realm (its own or another host) that
/// answers `200` with an endless body. oci-client's `Client::auth` (called by
/// `Remote::authorize` before every pull and push) reads the token answer whole
/// (`auth_res.text().await`) and only then parses it; the same for a refused token request.
/// Observed: a 128 MiB token answer gives a peak resident memory over 128 MiB; an endless
/// one grows without limit.
/// Should: the token answer read up to a small limit (a token is a few KiB): the token dance
/// done with our own capped reader (as `get_small` does for manifests), one-line error past it.
#[test]
fn an_endless_token_answer_is_not_held_in_memory() {
    let env = Env::new();
    let me: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let host = me.clone();
    let h = Hostile::start(move |req| {
        if req.path.starts_with("/token") {
            let mut r = Reply::new(200, "application/json", Vec::new());
            r.endless = Some(128 << 20);
            return r;
        }
        let mut r = Reply::new(401, "application/json", b"{}".to_vec());
        let realm = format!(
            r#"Bearer realm="http://{}/token",service="hostile""#,
            host.lock().unwrap()
        );
        r.headers.push(("WWW-Authenticate".into(), realm));
        r
    });
    *me.lock().unwrap() = h.host.clone();
    let (status, err, peak, _) = run_bounded(
        cmd(&env, &["pull", &format!("{}/x:1", h.host)]),
        Duration::from_secs(20),
        1 << 30,
    );
    eprintln!("pull: {status:?}, peak {} MiB: {err}", peak >> 20);
    assert!(
        peak < 96 << 20,
        "the pull held {} MiB of a token answer",
        peak >> 20
    );
    assert!(status.is_some(), "the pull did not end within 20 s");
}

/// Attack: an HTTPS registry (trusted CA) whose Bearer challenge names a token realm in plain
/// `http://` (any registry can say so; here the harness's token server). `Remote::check_login`
/// sends `basic_auth(user, password)` to whatever realm the challenge names, and oci-client's
/// `Client::auth` does the same on every pull and push.
/// Observed: `login` succeeds and the password goes in cleartext: the token server got
/// `Authorization: Basic` (alice's password) over plain HTTP, once for login and again for
/// the pull, though the user only ever named an HTTPS registry.
/// Should: a credential is never sent to an `http://` realm of a registry reached over HTTPS
/// (refuse with one line naming the realm, unless `--plain-http`), and the README's "never
/// sent to another host" states where the token dance does send it.
#[test]
fn a_credential_never_goes_in_cleartext_to_the_token_realm_of_an_https_registry() {
    use common::registry::{Auth, Options, PASSWORD, USER};
    let env = Env::new();
    let reg = Registry::start(Options {
        tls: true,
        auth: Auth::Token,
    });
    let token = reg.token.as_ref().unwrap();
    assert!(token.realm.starts_with("http://"));
    let certs_d = reg.certs_d.clone().unwrap();
    let mut c = cmd(&env, &["login", "-u", USER, "--password-stdin", &reg.host]);
    c.env("LAYOUTFS_CERTS_D", &certs_d);
    let mut child = c
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!("login: {} {}", out.status, stderr(&out));
    let mut c = cmd(&env, &["pull", &format!("{}/nothing:1", reg.host)]);
    c.env("LAYOUTFS_CERTS_D", &certs_d);
    let pull = c.output().unwrap();
    eprintln!("pull: {} {}", pull.status, stderr(&pull));
    let cleartext: Vec<_> = token.requests().into_iter().filter(|r| r.basic).collect();
    eprintln!("token requests with Basic over http: {cleartext:?}");
    assert!(
        cleartext.is_empty(),
        "the password went to {} in cleartext {} times",
        token.realm,
        cleartext.len()
    );
}

/// Attack: an index whose platforms' `os` and `architecture` hold terminal control sequences
/// (ESC `]0;…` BEL retitles the terminal, ESC `[2J` clears it). A pull for a platform the index
/// lacks prints the platforms it offers: `choose_platforms` formats `p.os`/`p.architecture` raw
/// into `the index has no manifest for linux/amd64 (it has: …)`.
/// Observed: the error line carries the raw ESC and BEL bytes to the user's terminal.
/// Should: registry-supplied strings are printed escaped (`{:?}`, or `one_line`'s control
/// filtering) in every message.
#[test]
fn registry_strings_in_messages_carry_no_control_characters() {
    let env = Env::new();
    let config = test_config();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": [],
    });
    let m = serde_json::to_vec(&manifest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": sha256(&m),
            "size": m.len(),
            "platform": {"os": "\u{1b}]0;owned\u{7}\u{1b}[2J", "architecture": "\u{1b}[31mred"},
        }],
    });
    let h = serving(index, vec![]);
    let out = run(
        &env,
        &[
            "pull",
            "--platform",
            "linux/amd64",
            &format!("{}/x:1", h.host),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("pull: {} {err:?}", out.status);
    assert!(!out.status.success());
    assert!(
        !err.trim_end().chars().any(|c| c.is_control()),
        "control characters from the registry reached the terminal: {err:?}"
    );
}

/// Guard. Attack: `$DOCKER_CONFIG/config.json` is a symbolic link to a file elsewhere (planted,
/// or a user's own dotfiles link), and the umask is 000. Held: `login` refuses to write
/// through or replace the link (one line naming it), the link's target is unchanged, and no
/// temporary file is left; with no link, the file written is mode 0600 whatever the umask.
#[test]
fn login_never_writes_through_a_link_nor_leaves_a_readable_file() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let h = Hostile::start(|req| {
        if req.header("authorization").is_none() {
            let mut r = Reply::new(401, "application/json", b"{}".to_vec());
            r.headers
                .push(("WWW-Authenticate".into(), r#"Basic realm="r""#.into()));
            return r;
        }
        Reply::new(200, "application/json", b"{}".to_vec())
    });
    let docker = env.path("home/.docker");
    fs::create_dir_all(&docker).unwrap();
    let target = env.path("elsewhere.json");
    fs::write(&target, b"{\"keep\": true}\n").unwrap();
    std::os::unix::fs::symlink(&target, docker.join("config.json")).unwrap();
    let run_login = || {
        let mut c = cmd(&env, &["login", "-u", "alice", "--password-stdin", &h.host]);
        umask_000(&mut c);
        let mut child = c
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "secret").unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run_login();
    eprintln!("login over a link: {} {}", out.status, stderr(&out));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert_eq!(fs::read(&target).unwrap(), b"{\"keep\": true}\n");
    let left: Vec<_> = fs::read_dir(&docker)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["config.json"], "temporary files left: {left:?}");
    fs::remove_file(docker.join("config.json")).unwrap();
    let out = run_login();
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = fs::metadata(docker.join("config.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "config.json is {:o}", mode & 0o777);
}

/// Runs `c` under umask 000.
fn umask_000(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask is async-signal-safe and touches only the child's own state.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
}

/// Attack: a reference whose port is out of range (`localhost:99999/x:1`; also
/// `127.0.0.1:65536/…`). `RemoteRef::parse` checks that a port is digits, not that it is a
/// port, and the bad URL then fails inside reqwest as a transient "request failed".
/// Observed: `layoutfs: localhost:99999/x: localhost:99999: request failed (after 6 tries)`,
/// exit 1 after 7.9 s of retries with backoff.
/// Should: refused at once by the parser: `invalid image name "localhost:99999/x:1": a
/// registry port is 1-65535`, no retry.
#[test]
fn a_port_out_of_range_is_refused_at_once() {
    let env = Env::new();
    let start = Instant::now();
    let (status, err, _, _) = run_bounded(
        cmd(&env, &["pull", "localhost:99999/x:1"]),
        Duration::from_secs(20),
        u64::MAX,
    );
    let took = start.elapsed();
    eprintln!("pull: {status:?} in {took:?}: {err}");
    assert!(status.is_some_and(|s| !s.success()));
    assert!(
        err.contains("invalid image name") && took < Duration::from_secs(2),
        "not refused by the parser at once ({took:?}): {err}"
    );
}

/// Guard. Attack: the store saw the image's blobs in repositories `a` and `c` of the registry
/// (pulls; the two images share blobs), and `a:1` is pushed to `b`. Held: every write (POST,
/// PUT, PATCH) goes to `/v2/b/…` only; `a` or `c` is named only as the `from=` of a mount into
/// `b` (of a blob the store saw there), and nothing is written to any other repository.
#[test]
fn a_push_writes_only_to_the_repository_asked() {
    let env = Env::new();
    let reg = Registry::plain();
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    reg.seed_oci(&scratch, "a:1");
    reg.seed_oci(&scratch, "c:1");
    let proxy = Proxy::start(&reg.host);
    for r in ["a:1", "c:1"] {
        let out = run(&env, &["pull", &format!("{}/{r}", proxy.host)]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    proxy.clear_log();
    let src = format!("{}/a:1", proxy.host);
    let out = run(&env, &["push", &src, &format!("{}/b:1", proxy.host)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let writes: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET" && r.method != "HEAD")
        .collect();
    assert!(!writes.is_empty());
    let mounted = writes.iter().filter(|r| r.path.contains("from=a")).count();
    eprintln!("{} writes, {mounted} mounts from a", writes.len());
    assert!(mounted > 0, "no mount from a: {writes:?}");
    for w in &writes {
        assert!(w.path.starts_with("/v2/b/"), "a write outside b: {w:?}");
    }
}

/// Attack (a message a registry can make misleading): a blob request answered `403` with the
/// OCI error `DENIED` on an anonymous pull.
/// Observed: `layoutfs: blob sha256:… from HOST/x: blob sha256:… from HOST/x: HOST requires
/// authentication: run layoutfs login HOST`: the blob named twice (`copy_one`'s `copy_from`
/// prefixes the label `BlobReader::failed` already put in its error), and a refusal told as
/// a missing login (`Remote::failure` maps `DENIED` to `unauthorized`).
/// Should: one mention of the blob, and `denied` told as such (`HOST denied access (403)`).
#[test]
fn a_denied_blob_is_named_once_and_told_as_denied() {
    let env = Env::new();
    let layer = test_layer(4096, 3);
    let deny = |_: &[u8], _| {
        Reply::new(
            403,
            "application/json",
            br#"{"errors":[{"code":"DENIED","message":"no"}]}"#.to_vec(),
        )
    };
    let h = cutting(test_config(), layer.clone(), 0, deny);
    let out = run(&env, &["pull", &format!("{}/x:1", h.host)]);
    let err = stderr(&out);
    eprintln!("pull: {} {err}", out.status);
    assert!(!out.status.success());
    assert_eq!(err.matches(&sha256(&layer)).count(), 1, "{err}");
    assert!(!err.contains("requires authentication"), "{err}");
}
