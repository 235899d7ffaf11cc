//! A token server for the registry's `auth: token:` mode (docker's token protocol), std only:
//! JWTs signed RS256 by `openssl dgst`, with the signing certificate in the `x5c` header (the
//! registry checks that chain against its `rootcertbundle`).
//!
//! `GET /token?service=..&scope=..` (scope may repeat, or hold several scopes space-separated),
//! optional `Authorization: Basic`: alice/secret gets the actions asked for, an anonymous client
//! gets `pull` only, a wrong user or password gets 401 with a JSON body.

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

use super::proxy::{accept_loop, request_line, respond, Conn};
use super::registry::{PASSWORD, USER};
use super::{require, sh};

/// The `service` (JWT audience) the registry is configured with.
pub const SERVICE: &str = "test-registry";
/// The JWT issuer the registry is configured with.
pub const ISSUER: &str = "test-issuer";

/// One request the token server received.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// Path with query, as sent.
    pub path: String,
    /// Whether `Authorization: Basic` came with it.
    pub basic: bool,
    /// The user named by Basic credentials, if any.
    pub user: Option<String>,
    /// The answer: 200, 401 (bad credentials) or 404 (another path).
    pub status: u16,
}

struct Signer {
    key: PathBuf,
    der: Vec<u8>,
    jti: AtomicU64,
}

/// A running token server.
pub struct TokenServer {
    /// `127.0.0.1:PORT`
    pub host: String,
    /// `http://127.0.0.1:PORT/token`, the registry's realm.
    pub realm: String,
    /// The signing certificate: the registry's `rootcertbundle`.
    pub cert: PathBuf,
    signer: Arc<Signer>,
    log: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Makes a signing key and certificate in `dir` and starts serving.
    pub fn start(dir: &Path) -> TokenServer {
        require("openssl");
        std::fs::create_dir_all(dir).unwrap();
        let key = dir.join("sign.key");
        let cert = dir.join("sign.crt");
        sh(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-days", "2", "-subj", "/CN=layoutfs-token-signer"]));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(der.status.success(), "openssl x509 -outform DER failed");
        let signer = Arc::new(Signer {
            key,
            der: der.stdout,
            jti: AtomicU64::new(1),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (st, lg, sg) = (stop.clone(), log.clone(), signer.clone());
        let accept = std::thread::spawn(move || {
            let stop2 = st.clone();
            accept_loop(vec![listener], &stop2, move |s| {
                let (st, lg, sg) = (st.clone(), lg.clone(), sg.clone());
                std::thread::spawn(move || serve(s, st, &lg, &sg));
            })
        });
        TokenServer {
            realm: format!("http://{host}/token"),
            host,
            cert,
            signer,
            log,
            stop,
            accept: Some(accept),
        }
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }

    /// A token for `user` ("" = anonymous) granting `scopes` (`repository:NAME:pull,push`) as
    /// the server would (anonymous: pull only), without a request and without logging.
    pub fn mint(&self, user: &str, scopes: &[&str]) -> String {
        self.signer.token(user, scopes.iter().copied())
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Signer {
    fn token<'a>(&self, user: &str, scopes: impl Iterator<Item = &'a str>) -> String {
        let mut access = Vec::new();
        for one in scopes.flat_map(|s| s.split(' ')).filter(|s| !s.is_empty()) {
            // type:name:actions, where a name may hold a port's ':' (type is first, actions last).
            let (Some((kind, rest)), true) = (one.split_once(':'), one.matches(':').count() >= 2)
            else {
                continue;
            };
            let (name, actions) = rest.rsplit_once(':').unwrap();
            let asked: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
            let granted: Vec<&str> = if user.is_empty() {
                asked.into_iter().filter(|a| *a == "pull").collect()
            } else {
                asked
            };
            access.push(serde_json::json!({"type": kind, "name": name, "actions": granted}));
        }
        let now = now();
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": user, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", self.jti.fetch_add(1, Ordering::SeqCst)),
            "access": access,
        });
        let head =
            serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [STANDARD.encode(&self.der)]});
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(head.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(msg.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "openssl dgst -sign: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RFC 3339 UTC time of `secs` since the epoch.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Decodes `%XX` and `+` of a query component.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(s: TcpStream, stop: Arc<AtomicBool>, log: &Mutex<Vec<TokenRequest>>, signer: &Signer) {
    let mut c = Conn::new(s, stop);
    let Ok(Some(head)) = c.read_head(Duration::from_secs(30)) else {
        return;
    };
    let (method, target, _) = request_line(&head);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut entry = TokenRequest {
        path: target.clone(),
        basic: false,
        user: None,
        status: 200,
    };
    let creds = head
        .get("authorization")
        .and_then(|a| {
            a.strip_prefix("Basic ")
                .or_else(|| a.strip_prefix("basic "))
        })
        .map(|b| {
            let raw = STANDARD.decode(b.trim()).unwrap_or_default();
            let raw = String::from_utf8_lossy(&raw).into_owned();
            let (u, p) = raw.split_once(':').unwrap_or((&raw, ""));
            (u.to_owned(), p.to_owned())
        });
    entry.basic = creds.is_some();
    entry.user = creds.as_ref().map(|(u, _)| u.clone());
    let json = [
        ("Content-Type", "application/json"),
        ("Connection", "close"),
    ];
    let bad_creds = creds
        .as_ref()
        .is_some_and(|(u, p)| u != USER || p != PASSWORD);
    let (status, body) = if method != "GET" || path != "/token" {
        (404, br#"{"details":"not found"}"#.to_vec())
    } else if bad_creds {
        (401, br#"{"details":"bad credentials"}"#.to_vec())
    } else {
        let scopes: Vec<String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == "scope")
            .map(|(_, v)| percent_decode(v))
            .collect();
        let user = creds.map(|(u, _)| u).unwrap_or_default();
        let tok = signer.token(&user, scopes.iter().map(String::as_str));
        let body = serde_json::json!({
            "token": tok, "access_token": tok, "expires_in": 300, "issued_at": rfc3339(now()),
        });
        (200, body.to_string().into_bytes())
    };
    entry.status = status;
    // Logged before the answer goes: a client that has its answer finds its request logged.
    log.lock().unwrap().push(entry);
    let _ = respond(&mut c.s, &method, status, &json, &body);
    let _ = c.s.shutdown(Shutdown::Both);
}
