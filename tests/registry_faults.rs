//! What a pull or push does when the registry misbehaves, each fault served by a proxy of the
//! test's own in front of a real docker-registry (tests/common/proxy.rs): one line naming the
//! image or blob, a non-zero exit, nothing registered; or, for what is transient (429, 503, a
//! dropped connection, a killed registry or client), retries and resumption that end in a
//! complete image.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy, Recorder};
use common::registry::{self, Auth, Options, Registry, Seeded, PASSWORD};
use common::{stderr, Env};

/// How long a pull may take to fail for good (six tries with backoff, ~8 s, plus slack).
const GIVE_UP: Duration = Duration::from_secs(60);

fn cmd(env: &Env, args: &[&str]) -> Command {
    registry::layoutfs(env, None, args)
}

fn run(env: &Env, args: &[&str]) -> Output {
    cmd(env, args).output().unwrap()
}

/// Runs a command that must fail with one line containing each of `words`, registering
/// nothing.
fn fails(env: &Env, args: &[&str], words: &[&str]) -> String {
    let out = run(env, args);
    let e = stderr(&out);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    for w in words {
        assert!(e.contains(w), "{w:?} not in: {e}");
    }
    assert!(env.images().is_empty(), "something was registered: {e}");
    eprintln!("{args:?}: {e}");
    e
}

fn seeded(env: &Env, reg: &Registry, repo_tag: &str) -> Seeded {
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    reg.seed_oci(&scratch, repo_tag)
}

/// The largest layer of an image (the one worth cutting off midway).
fn big_layer(s: &Seeded) -> (String, u64) {
    let (d, n, _) = s.layers().into_iter().max_by_key(|l| l.1).unwrap();
    (d, n)
}

fn has_blob(env: &Env, digest: &str) -> bool {
    env.store
        .join("blobs/sha256")
        .join(&digest["sha256:".len()..])
        .exists()
}

#[test]
fn an_unknown_repository_or_tag_is_not_found() {
    let env = Env::new();
    let reg = Registry::plain();
    seeded(&env, &reg, "there:1");
    fails(
        &env,
        &["pull", &format!("{}/there:2", reg.host)],
        &["there:2", "not found"],
    );
    fails(
        &env,
        &["pull", &format!("{}/nowhere:1", reg.host)],
        &["nowhere:1", "not found"],
    );
}

#[test]
fn a_blob_whose_bytes_do_not_match_its_digest_is_refused() {
    let env = Env::new();
    let reg = Registry::plain();
    let s = seeded(&env, &reg, "x:1");
    let proxy = Proxy::start(&reg.host);
    let (layer, _) = big_layer(&s);
    proxy.add("GET", &format!("/blobs/{layer}"), Fault::CorruptBody, None);
    fails(
        &env,
        &["pull", &format!("{}/x:1", proxy.host)],
        &[&layer, "does not match its digest"],
    );
    assert!(!has_blob(&env, &layer));
    // The registry mended: the next pull completes.
    proxy.clear_rules();
    let out = run(&env, &["pull", &format!("{}/x:1", proxy.host)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(has_blob(&env, &layer));
}

#[test]
fn a_truncated_body_is_resumed_with_a_range_request() {
    let env = Env::new();
    let reg = Registry::plain();
    let s = seeded(&env, &reg, "x:1");
    let proxy = Proxy::start(&reg.host);
    let (layer, size) = big_layer(&s);
    let cut = size / 3;
    proxy.add(
        "GET",
        &format!("/blobs/{layer}"),
        Fault::Truncate(cut),
        Some(1),
    );
    let out = run(&env, &["pull", &format!("{}/x:1", proxy.host)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&layer))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(
        gets[1].range.as_deref(),
        Some(&*format!("bytes={cut}-")),
        "{gets:?}"
    );
    common::fsck_clean(&env);
}

#[test]
fn busy_answers_are_retried() {
    let env = Env::new();
    let reg = Registry::plain();
    let s = seeded(&env, &reg, "x:1");
    let proxy = Proxy::start(&reg.host);
    let (layer, _) = big_layer(&s);
    let busy = |code| Fault::Status {
        code,
        retry_after: Some(0),
    };
    proxy.add("GET", "/manifests/1", busy(429), Some(2));
    proxy.add("GET", &format!("/blobs/{layer}"), busy(503), Some(2));
    let out = run(&env, &["pull", &format!("{}/x:1", proxy.host)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let faults = proxy
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert_eq!(faults, 4);
    // A push retried too: the upload's first PUT answered 503.
    proxy.add("PUT", "/blobs/uploads/", busy(503), Some(1));
    let out = run(
        &env,
        &[
            "push",
            &format!("{}/x:1", proxy.host),
            &format!("{}/y:1", reg.host),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Busy for good: the error says so, after the tries.
    proxy.add("GET", "/manifests/2", busy(503), None);
    let env2 = Env::new();
    fails(
        &env2,
        &["pull", &format!("{}/x:2", proxy.host)],
        &["503", "tries"],
    );
}

#[test]
fn a_retry_after_on_a_manifest_is_waited() {
    let env = Env::new();
    let reg = Registry::plain();
    seeded(&env, &reg, "x:1");
    let proxy = Proxy::start(&reg.host);
    let busy = Fault::Status {
        code: 429,
        retry_after: Some(2),
    };
    proxy.add("GET", "/manifests/1", busy, Some(1));
    let start = Instant::now();
    let out = run(&env, &["pull", &format!("{}/x:1", proxy.host)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "did not wait as asked: {took:?}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn oversized_and_schema_1_manifests_are_refused() {
    let env = Env::new();
    let reg = Registry::plain();
    seeded(&env, &reg, "x:1");
    let proxy = Proxy::start(&reg.host);
    let mut big = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 5 << 20));
    big.extend(br#""}}"#);
    proxy.add(
        "GET",
        "/manifests/big",
        Fault::Serve {
            content_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body: big,
            status: 200,
        },
        None,
    );
    fails(
        &env,
        &["pull", &format!("{}/x:big", proxy.host)],
        &["x:big", "limit"],
    );
    let schema1 = br#"{"schemaVersion":1,"name":"x","tag":"old","architecture":"amd64","fsLayers":[],"history":[],"signatures":[]}"#;
    proxy.add(
        "GET",
        "/manifests/old",
        Fault::Serve {
            content_type: "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
            body: schema1.to_vec(),
            status: 200,
        },
        None,
    );
    fails(
        &env,
        &["pull", &format!("{}/x:old", proxy.host)],
        &["x:old", "schema 1"],
    );
}

#[test]
fn a_redirect_to_another_host_gets_no_credential() {
    let env = Env::new();
    let reg = Registry::start(Options {
        tls: false,
        auth: Auth::Htpasswd,
    });
    let s = seeded(&env, &reg, "x:1");
    let proxy = Proxy::start(&reg.host);
    let (layer, _) = big_layer(&s);
    let bytes = reg.get(&format!("/v2/x/blobs/{layer}")).body;
    let recorder = Recorder::start(bytes);
    proxy.add(
        "GET",
        &format!("/blobs/{layer}"),
        Fault::RedirectTo(recorder.host.clone()),
        None,
    );
    let out = registry::login(&env, None, &proxy.host, PASSWORD);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&env, &["pull", &format!("{}/x:1", proxy.host)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let there = recorder.requests();
    assert!(!there.is_empty(), "the redirect was not followed");
    assert!(
        there.iter().all(|r| !r.authorization),
        "a credential went to another host: {there:?}"
    );
    assert!(
        proxy.requests().iter().any(|r| r.authorization),
        "the registry itself was sent the credential"
    );
}

/// Starts a pull of `reference` in the background and waits until its ingest of the stalled
/// layer holds at least `bytes`; returns the child.
fn pull_until_stalled(env: &Env, reference: &str, bytes: u64) -> std::process::Child {
    let child = cmd(env, &["pull", reference])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while ingest_bytes(&env.store) < bytes {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the pull did not reach the stall"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Bytes in the store's ingests.
fn ingest_bytes(store: &Path) -> u64 {
    let Ok(dirs) = fs::read_dir(store.join("ingest")) else {
        return 0;
    };
    dirs.filter_map(|d| d.ok())
        .filter_map(|d| fs::metadata(d.path().join("data")).ok())
        .map(|m| m.len())
        .sum()
}

/// The first byte asked for by a Range request of `layer`, if one was made.
fn resumed_from(proxy: &Proxy, layer: &str) -> Option<u64> {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(layer))
        .filter_map(|r| r.range.as_deref())
        .filter_map(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .find(|n: &u64| *n > 0)
}

/// Where the big layer's first GET stalls.
const STALL: u64 = 8 << 20;

/// `big:1` (24 MiB) in `reg`, and a proxy in front whose first GET of its largest layer stalls
/// after `stall` bytes; returns the proxy and that layer.
fn stalling(env: &Env, reg: &Registry, stall: u64) -> (Proxy, String) {
    let scratch = env.path("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let s = reg.seed_big(&scratch, "big:1", 24 << 20);
    let proxy = Proxy::start(&reg.host);
    let (layer, _) = big_layer(&s);
    proxy.add(
        "GET",
        &format!("/blobs/{layer}"),
        Fault::Stall { after: stall },
        Some(1),
    );
    (proxy, layer)
}

#[test]
fn a_pull_killed_midway_is_resumed_by_the_next() {
    let env = Env::new();
    let reg = Registry::plain();
    let (proxy, layer) = stalling(&env, &reg, STALL);
    let reference = format!("{}/big:1", proxy.host);
    let mut child = pull_until_stalled(&env, &reference, STALL);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(env.images().is_empty());
    let out = run(&env, &["pull", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    let from = resumed_from(&proxy, &layer).expect("no Range request: the pull started over");
    assert!(from >= STALL / 2, "resumed from byte {from} of {STALL}");
    assert!(has_blob(&env, &layer));
    common::fsck_clean(&env);
}

#[test]
fn a_registry_killed_midway_fails_the_pull_and_the_next_resumes() {
    let env = Env::new();
    let mut reg = Registry::plain();
    let (proxy, layer) = stalling(&env, &reg, STALL);
    let child = pull_until_stalled(&env, &format!("{}/big:1", proxy.host), STALL);
    // The registry dies, and with it every connection to it.
    reg.stop();
    drop(proxy);
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(start.elapsed() < GIVE_UP);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains(&layer) || e.contains("big:1"), "{e}");
    assert!(env.images().is_empty());
    reg.restart();
    let proxy = Proxy::start(&reg.host);
    let out = run(&env, &["pull", &format!("{}/big:1", proxy.host)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let from = resumed_from(&proxy, &layer).expect("no Range request: the pull started over");
    assert!(from >= STALL / 2, "resumed from byte {from} of {STALL}");
    common::fsck_clean(&env);
}
