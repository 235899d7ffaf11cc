//! Proof that the registry fixtures (tests/common/registry.rs, tokensrv.rs, proxy.rs) work,
//! driven by curl and skopeo only: the registry commands' tests build on them.

mod common;

use std::process::{Command, Output};

use common::proxy::{Fault, Proxy, Recorder};
use common::registry::{
    referrers_tag, Auth, Options, Registry, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST, PASSWORD, REFERRER_ARTIFACT_TYPE, USER,
};
use common::require;
use common::tokensrv::TokenServer;

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("regharness")
        .tempdir_in("/tmp")
        .unwrap()
}

fn curl(args: &[&str]) -> Output {
    require("curl");
    Command::new("curl")
        .args(["-s", "-S", "--noproxy", "*", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap()
}

fn http_code(args: &[&str]) -> u16 {
    let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    a.extend_from_slice(args);
    let out = curl(&a);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn skopeo(args: &[&str]) -> Output {
    require("skopeo");
    Command::new("skopeo")
        .env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every blob of an oci: layout copied out, by digest.
fn layout_blobs(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    v.sort();
    v
}

#[test]
fn plain_registry_takes_a_push_serves_it_and_survives_a_restart() {
    let s = scratch();
    let mut r = Registry::plain();
    assert!(r.host.starts_with("127.0.0.1:") && !r.host.ends_with(":5000"));
    assert_eq!(http_code(&[&format!("http://{}/v2/", r.host)]), 200);
    let img = r.seed_oci(s.path(), "x/hello:1");
    assert_eq!(img.media_type, MEDIA_OCI_MANIFEST);
    assert_eq!(img.layers().len(), 2);
    assert!(img.layers().iter().all(|(_, _, m)| m.ends_with("+gzip")));
    assert_eq!(r.tags("x/hello"), ["1"]);
    assert!(r.tags("nothing").is_empty());
    // skopeo reads back what was pushed, blob for blob.
    let out = s.path().join("out");
    r.skopeo_copy_out("x/hello:1", &format!("oci:{}:1", out.display()), &[]);
    let mut want: Vec<String> = img.blobs.iter().map(|b| b.0.clone()).collect();
    want.push(img.digest.clone());
    want.sort();
    assert_eq!(layout_blobs(&out), want);
    // Stop: nothing answers; restart: same port, same content.
    r.stop();
    assert!(!r.running());
    assert_eq!(http_code(&[&format!("http://{}/v2/", r.host)]), 0);
    r.restart();
    assert!(r.running());
    let m = r.manifest("x/hello", "1");
    assert_eq!(m.status, 200);
    assert_eq!(m.header("docker-content-digest"), Some(img.digest.as_str()));
}

#[test]
fn tls_registry_is_trusted_through_its_ca_only() {
    let s = scratch();
    let r = Registry::start(Options {
        tls: true,
        auth: Auth::Anonymous,
    });
    let url = format!("https://{}/v2/", r.host);
    let ca = r.ca();
    assert_eq!(http_code(&["--cacert", ca.to_str().unwrap(), &url]), 200);
    // Also by name (the leaf is for localhost too), and never without the CA.
    let by_name = url.replace("127.0.0.1", "localhost");
    assert_eq!(
        http_code(&["--cacert", ca.to_str().unwrap(), &by_name]),
        200
    );
    assert_eq!(http_code(&[&url]), 0, "trusted without the CA");
    // The CA is no end entity: the leaf is signed by it.
    let certs_d = r.certs_d.clone().unwrap();
    assert!(certs_d.join(&r.host).join("ca.crt").is_file());
    let img = r.seed_oci(s.path(), "tls/img:1");
    let cert_dir = certs_d.join(&r.host);
    let out = s.path().join("out");
    ok(&skopeo(&[
        "copy",
        "--src-cert-dir",
        cert_dir.to_str().unwrap(),
        &format!("docker://{}/tls/img:1", r.host),
        &format!("oci:{}:1", out.display()),
    ]));
    assert!(layout_blobs(&out).contains(&img.digest));
    // skopeo without the CA fails.
    let o = skopeo(&[
        "inspect",
        "--raw",
        &format!("docker://{}/tls/img:1", r.host),
    ]);
    assert!(!o.status.success());
}

#[test]
fn htpasswd_registry_wants_alice() {
    let s = scratch();
    let r = Registry::start(Options {
        tls: false,
        auth: Auth::Htpasswd,
    });
    let url = format!("http://{}/v2/", r.host);
    assert_eq!(http_code(&[&url]), 401);
    let unauth = r.request_as(false, "GET", "/v2/", &[], None);
    assert!(unauth
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic realm="));
    assert_eq!(http_code(&["-u", &format!("{USER}:{PASSWORD}"), &url]), 200);
    assert_eq!(http_code(&["-u", &format!("{USER}:wrong"), &url]), 401);
    let img = r.seed_oci(s.path(), "auth/img:1");
    assert_eq!(r.tags("auth/img"), ["1"]);
    let o = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "alice:wrong",
        &format!("docker://{}/auth/img:1", r.host),
    ]);
    assert!(!o.status.success(), "wrong password accepted");
    assert_eq!(r.skopeo_raw("auth/img:1").len() as u64, img.size);
}

#[test]
fn token_registry_takes_alice_and_refuses_a_wrong_password() {
    let s = scratch();
    let r = Registry::start(Options {
        tls: false,
        auth: Auth::Token,
    });
    let t = r.token.as_ref().unwrap();
    let unauth = r.request_as(false, "GET", "/v2/", &[], None);
    assert_eq!(unauth.status, 401);
    let challenge = unauth.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"{}\"", t.realm)),
        "{challenge}"
    );
    let img = r.seed_oci(s.path(), "tok/img:1");
    let asked = t.requests();
    assert!(
        asked
            .iter()
            .any(|q| q.basic && q.status == 200 && q.path.contains("scope=repository")),
        "{asked:?}"
    );
    // A wrong password: the token server says 401 and skopeo fails.
    t.clear_log();
    let src = img.source.clone();
    let o = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:wrong",
        &src,
        &format!("docker://{}/tok/other:1", r.host),
    ]);
    assert!(!o.status.success(), "pushed with a wrong password");
    assert!(t.requests().iter().any(|q| q.basic && q.status == 401));
    // Anonymous: a pull token only (the registry refuses a push with it).
    let tok = curl(&[&format!(
        "http://{}/token?service=test-registry&scope=repository%3Atok%2Fimg%3Apull%2Cpush",
        t.host
    )]);
    let v: serde_json::Value = serde_json::from_str(&ok(&tok)).unwrap();
    assert_eq!(v["expires_in"], 300);
    let jwt = v["token"].as_str().unwrap();
    let claims = jwt.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "tok/img", "actions": ["pull"]}])
    );
    let bearer = format!("Authorization: Bearer {jwt}");
    let base = format!("http://{}/v2/tok/img", r.host);
    assert_eq!(
        http_code(&[
            "-H",
            &bearer,
            "-H",
            &format!("Accept: {MEDIA_OCI_MANIFEST}"),
            &format!("{base}/manifests/1")
        ]),
        200
    );
    assert_eq!(
        http_code(&[
            "-X",
            "POST",
            "-H",
            &bearer,
            &format!("{base}/blobs/uploads/")
        ]),
        401
    );
    assert_eq!(r.tags("tok/img"), ["1"]);
}

#[test]
fn seeded_index_zstd_v2s2_and_big_images_are_served_as_made() {
    let s = scratch();
    let r = Registry::plain();
    let idx = r.seed_index(s.path(), "multi:1");
    assert_eq!(idx.media_type, MEDIA_OCI_INDEX);
    assert_eq!(idx.children.len(), 2);
    // Two shared layers, one of each platform's own, two configs.
    assert_eq!(idx.layers().len(), 4);
    assert_eq!(idx.blobs.len(), 6);
    let z = r.seed_zstd(s.path(), "zst:1");
    assert!(z.layers().iter().all(|l| l.2.ends_with("+zstd")));
    let v = r.seed_v2s2(s.path(), "v2s2:1");
    assert_eq!(v.media_type, MEDIA_DOCKER_MANIFEST);
    assert_eq!(v.configs.len(), 1);
    assert_eq!(v.layers().len(), 2);
    assert!(v
        .layers()
        .iter()
        .all(|l| l.2 == "application/vnd.docker.image.rootfs.diff.tar.gzip"));
    assert_eq!(
        v.manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let b = r.seed_big(s.path(), "big:1", 3 << 20);
    assert_eq!(b.layers().len(), 1);
    assert_eq!(b.layers()[0].1, 3 << 20);
    assert_eq!(b.layers()[0].2, "application/vnd.oci.image.layer.v1.tar");
    let blob = r.request(
        "HEAD",
        &format!("/v2/big/blobs/{}", b.layers()[0].0),
        &[],
        None,
    );
    assert_eq!(blob.status, 200);
    assert_eq!(blob.header("content-length"), Some("3145728"));
}

#[test]
fn referrer_is_listed_at_the_fallback_tag() {
    let s = scratch();
    let r = Registry::plain();
    let img = r.seed_oci(s.path(), "ref/img:1");
    let a = r.put_referrer("ref/img", &img.digest, img.size, &img.media_type);
    let b = r.put_referrer("ref/img", &img.digest, img.size, &img.media_type);
    assert_ne!(a, b);
    let idx = r.manifest("ref/img", &referrers_tag(&img.digest));
    assert_eq!(idx.status, 200);
    assert_eq!(idx.header("content-type"), Some(MEDIA_OCI_INDEX));
    let listed: Vec<&str> = idx.json()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["artifactType"], REFERRER_ARTIFACT_TYPE);
            m["digest"].as_str().unwrap()
        })
        .map(|d| {
            if d == a {
                "a"
            } else if d == b {
                "b"
            } else {
                "?"
            }
        })
        .collect();
    assert_eq!(listed, ["a", "b"]);
    let art = r.manifest("ref/img", &a).json();
    assert_eq!(art["subject"]["digest"], img.digest.as_str());
    // The registry has no referrers API (what the fallback is for).
    assert_eq!(
        r.get(&format!("/v2/ref/img/referrers/{}", img.digest))
            .status,
        404
    );
}

#[test]
fn proxy_passes_pulls_and_pushes_through_and_logs_them() {
    let s = scratch();
    let r = Registry::plain();
    let img = r.seed_oci(s.path(), "p/img:1");
    let p = Proxy::start(&r.host);
    let out = s.path().join("out");
    ok(&skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/p/img:1", p.host),
        &format!("oci:{}:1", out.display()),
    ]));
    assert!(layout_blobs(&out).contains(&img.digest));
    let log = p.requests();
    for (d, _, _) in &img.blobs {
        assert!(
            log.iter()
                .any(|l| l.method == "GET" && l.path.ends_with(d.as_str()) && l.status == 200),
            "no GET of {d}: {log:?}"
        );
    }
    // A push through the proxy: uploads (PATCH with a streamed body, PUT) stay on the proxy
    // because it rewrites Location.
    p.clear_log();
    ok(&skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &img.source,
        &format!("docker://{}/p/copy:1", p.host),
    ]));
    let log = p.requests();
    assert!(p.count("POST", "/blobs/uploads/") >= 1, "{log:?}");
    assert_eq!(p.count("GET", "/blobs/"), 0, "{log:?}");
    assert!(
        log.iter().any(|l| l.method == "PATCH" && l.status == 202),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.method == "PUT" && l.path.contains("/manifests/") && l.status == 201),
        "{log:?}"
    );
    let m = r.manifest("p/copy", "1");
    assert_eq!(m.header("docker-content-digest"), Some(img.digest.as_str()));

    // An upload by hand: POST, a chunked PATCH, then PUT, each at the Location before.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let file = s.path().join("chunk");
    std::fs::write(&file, &data).unwrap();
    use sha2::Digest as _;
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(&data));
    let post = curl(&[
        "-i",
        "-X",
        "POST",
        &format!("http://{}/v2/p/up/blobs/uploads/", p.host),
    ]);
    let post = ok(&post);
    let loc = post
        .lines()
        .find_map(|l| l.strip_prefix("Location: "))
        .unwrap_or_else(|| panic!("{post}"))
        .trim()
        .to_owned();
    assert!(
        loc.starts_with(&format!("http://{}/", p.host)),
        "Location not rewritten: {loc}"
    );
    let patch = curl(&[
        "-i",
        "-X",
        "PATCH",
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        &loc,
    ]);
    let text = ok(&patch);
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    assert!(text.contains("Range: 0-299999"), "{text}");
    let loc = text
        .lines()
        .find_map(|l| l.strip_prefix("Location: "))
        .unwrap()
        .trim()
        .to_owned();
    let put = format!("{loc}&digest={digest}");
    assert_eq!(http_code(&["-X", "PUT", &put]), 201);
    // Keep-alive: a second request on the same connection (no new connect).
    let v2 = format!("http://{}/v2/", p.host);
    let two = curl(&[
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}/%{num_connects} ",
        &v2,
        &v2,
    ]);
    assert_eq!(ok(&two).trim(), "200/1 200/0");
    let got = r.get(&format!("/v2/p/up/blobs/{digest}"));
    assert_eq!(got.status, 200);
    assert!(got.body == data, "uploaded bytes differ");
}

#[test]
fn proxy_faults_corrupt_truncate_status_stall_serve() {
    let s = scratch();
    let r = Registry::plain();
    let img = r.seed_oci(s.path(), "f/img:1");
    let (big, big_size, _) = img.layers().into_iter().max_by_key(|l| l.1).unwrap();
    let p = Proxy::start(&r.host);
    let blob_url = format!("http://{}/v2/f/img/blobs/{big}", p.host);

    // CorruptBody: same length, same digest header, a byte differs; skopeo notices.
    p.add("GET", &big, Fault::CorruptBody, Some(1));
    let good = r.get(&format!("/v2/f/img/blobs/{big}")).body;
    let o = curl(&[
        "-D",
        "-",
        "-o",
        s.path().join("bad").to_str().unwrap(),
        &blob_url,
    ]);
    let head = ok(&o).to_ascii_lowercase();
    assert!(
        head.contains(&format!("docker-content-digest: {big}")),
        "{head}"
    );
    let bad = std::fs::read(s.path().join("bad")).unwrap();
    assert_eq!(bad.len(), good.len());
    assert_eq!(bad.iter().zip(&good).filter(|(a, b)| a != b).count(), 1);
    p.add("GET", &big, Fault::CorruptBody, None);
    let o = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/f/img:1", p.host),
        &format!("oci:{}:1", s.path().join("out1").display()),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(err.contains("digest did not match"), "{err}");
    p.clear_rules();

    // Truncate: curl reports the short body (exit 18).
    p.add("GET", &big, Fault::Truncate(1000), Some(1));
    let o = curl(&["-o", "/dev/null", &blob_url]);
    assert_eq!(
        o.status.code(),
        Some(18),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(http_code(&[&blob_url]), 200, "Truncate applied twice");

    // Status 503 once, with Retry-After, then the real answer.
    p.add(
        "GET",
        "/manifests/1",
        Fault::Status {
            code: 503,
            retry_after: Some(2),
        },
        Some(1),
    );
    let murl = format!("http://{}/v2/f/img/manifests/1", p.host);
    let accept = format!("Accept: {MEDIA_OCI_MANIFEST}");
    let o = curl(&["-i", "-H", &accept, &murl]);
    let text = ok(&o);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("Retry-After: 2"), "{text}");
    assert!(text.contains("\"errors\""), "{text}");
    assert_eq!(http_code(&["-H", &accept, &murl]), 200);

    // Stall: headers and 4096 bytes, then nothing (curl gives up on its own clock).
    p.add("GET", &big, Fault::Stall { after: 4096 }, Some(1));
    let part = s.path().join("part");
    let o = curl(&["--max-time", "2", "-o", part.to_str().unwrap(), &blob_url]);
    assert_eq!(
        o.status.code(),
        Some(28),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 4096);
    // A range request passes and is logged with its Range.
    let o = curl(&["-r", "4096-", "-o", part.to_str().unwrap(), &blob_url]);
    ok(&o);
    assert_eq!(std::fs::metadata(&part).unwrap().len(), big_size - 4096);
    let log = p.requests();
    assert_eq!(log.last().unwrap().range.as_deref(), Some("bytes=4096-"));
    assert_eq!(log.last().unwrap().status, 206);

    // Serve: a schema 1 manifest with its digest header.
    let schema1 = br#"{"schemaVersion":1,"name":"f/img","tag":"old","fsLayers":[],"history":[]}"#;
    p.add(
        "GET",
        "/manifests/old",
        Fault::Serve {
            content_type: "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
            body: schema1.to_vec(),
            status: 200,
        },
        None,
    );
    let o = curl(&["-i", &format!("http://{}/v2/f/img/manifests/old", p.host)]);
    let text = ok(&o);
    use sha2::Digest as _;
    let d = format!("sha256:{:x}", sha2::Sha256::digest(schema1));
    assert!(
        text.contains(&format!("Docker-Content-Digest: {d}")),
        "{text}"
    );
    assert!(text.contains("prettyjws"), "{text}");
    assert!(text.ends_with(std::str::from_utf8(schema1).unwrap()));
    let faults: Vec<_> = p.requests().iter().filter_map(|l| l.fault).collect();
    assert_eq!(
        faults,
        ["corrupt", "corrupt", "truncate", "status", "stall", "serve"]
    );

    // A stalled answer ends when the proxy is dropped: curl sees a short body (exit 18).
    p.add("GET", &big, Fault::Stall { after: 100 }, None);
    let child = Command::new("curl")
        .args([
            "-s",
            "--noproxy",
            "*",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            &blob_url,
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t = std::time::Instant::now();
    drop(p);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(18));
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn redirect_to_another_host_drops_credentials() {
    let r = Registry::start(Options {
        tls: false,
        auth: Auth::Htpasswd,
    });
    let body = b"the blob elsewhere".to_vec();
    let rec = Recorder::start(body.clone());
    let p = Proxy::start(&r.host);
    p.add("GET", "/blobs/", Fault::RedirectTo(rec.host.clone()), None);
    let url = format!("http://{}/v2/x/blobs/sha256:00?a=b", p.host);
    let o = curl(&["-L", "-u", &format!("{USER}:{PASSWORD}"), &url]);
    assert_eq!(ok(&o).as_bytes(), body.as_slice());
    let sent = p.requests();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].authorization);
    assert_eq!(sent[0].status, 307);
    let got = rec.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].path, "/v2/x/blobs/sha256:00?a=b");
    assert!(!got[0].authorization, "credentials followed the redirect");
    // The proxy passes the client's Authorization to an htpasswd registry.
    p.clear_rules();
    let v2 = format!("http://{}/v2/", p.host);
    assert_eq!(http_code(&["-u", &format!("{USER}:{PASSWORD}"), &v2]), 200);
    assert_eq!(http_code(&[&v2]), 401);
}

/// The claims of a JWT (not verified: the registry tests verify).
fn jwt_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1).unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

#[test]
fn token_server_grants_what_is_asked_to_alice_and_pull_to_anyone() {
    let s = scratch();
    let t = TokenServer::start(&s.path().join("tok"));
    let url = format!(
        "http://{}/token?service=test-registry&scope=repository%3Aa%2Fb%3Apull%2Cpush&scope=repository:c:pull+repository:d:push",
        t.host
    );
    let access = |out: &Output| {
        let v: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
        assert_eq!(v["token"], v["access_token"]);
        assert_eq!(v["expires_in"], 300);
        let issued = v["issued_at"].as_str().unwrap();
        assert!(issued.len() == 20 && issued.ends_with('Z'), "{issued}");
        let c = jwt_claims(v["token"].as_str().unwrap());
        assert_eq!(c["aud"], "test-registry");
        assert_eq!(c["iss"], "test-issuer");
        c["access"].clone()
    };
    let alice = access(&curl(&["-u", "alice:secret", &url]));
    assert_eq!(
        alice,
        serde_json::json!([
            {"type": "repository", "name": "a/b", "actions": ["pull", "push"]},
            {"type": "repository", "name": "c", "actions": ["pull"]},
            {"type": "repository", "name": "d", "actions": ["push"]},
        ])
    );
    let anon = access(&curl(&[&url]));
    assert_eq!(
        anon,
        serde_json::json!([
            {"type": "repository", "name": "a/b", "actions": ["pull"]},
            {"type": "repository", "name": "c", "actions": ["pull"]},
            {"type": "repository", "name": "d", "actions": []},
        ])
    );
    let wrong = curl(&["-i", "-u", "alice:wrong", &url]);
    let text = ok(&wrong);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.ends_with(r#"{"details":"bad credentials"}"#), "{text}");
    let other = format!("http://{}/other", t.host);
    assert_eq!(http_code(&[&other]), 404);
    let log: Vec<_> = t
        .requests()
        .iter()
        .map(|q| (q.basic, q.user.clone(), q.status))
        .collect();
    assert_eq!(
        log,
        [
            (true, Some("alice".to_owned()), 200),
            (false, None, 200),
            (true, Some("alice".to_owned()), 401),
            (false, None, 404),
        ]
    );
    assert!(t.requests()[0]
        .path
        .starts_with("/token?service=test-registry&scope="));
}

#[test]
fn tls_combines_with_htpasswd_and_token_auth() {
    let s = scratch();
    for auth in [Auth::Htpasswd, Auth::Token] {
        let r = Registry::start(Options { tls: true, auth });
        let url = format!("https://{}/v2/", r.host);
        let ca = r.ca();
        assert_eq!(http_code(&["--cacert", ca.to_str().unwrap(), &url]), 401);
        let img = r.seed_oci(s.path(), "both/img:1");
        assert_eq!(r.skopeo_raw("both/img:1").len() as u64, img.size);
        assert_eq!(r.tags("both/img"), ["1"]);
        let out = s.path().join(format!("out-{auth:?}"));
        r.skopeo_copy_out("both/img:1", &format!("oci:{}:1", out.display()), &[]);
        assert!(layout_blobs(&out).contains(&img.digest));
    }
}
