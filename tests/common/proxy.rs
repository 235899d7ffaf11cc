//! A fault-injecting HTTP/1.1 proxy in front of a plain-HTTP registry, and a `Recorder` (a
//! second tiny server, the target of redirects). Std only; both bind 127.0.0.1 on a free port,
//! serve each connection on a thread of its own with keep-alive (a reqwest/hyper client reuses
//! its connections), and stop when dropped. Every read and write is bounded.
//!
//! The proxy forwards each request on a new connection to the upstream, with `Host` rewritten
//! and the body streamed in its own framing (Content-Length or chunked), and rewrites a `Location` that points at the upstream so the client keeps talking to the
//! proxy. Rules (method + path substring) inject faults into the first `times` matching
//! requests, then let them pass. Every request is logged.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Longest wait for any one read or write of the upstream or the client mid-request.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a kept-alive client connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(60);
/// Granularity at which blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Longest a `Stall` holds its connection when the proxy is not dropped.
const STALL_MAX: Duration = Duration::from_secs(600);
const MAX_HEAD: usize = 64 << 10;
/// Bodies the proxy holds whole (responses without Content-Length; the recorder's requests).
const MAX_BUFFERED: usize = 512 << 20;

/// What a rule does to a matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// The upstream's answer with one body byte (the middle one) flipped: same length, same
    /// headers (Docker-Content-Digest included).
    CorruptBody,
    /// Headers with the full Content-Length, then only `n` body bytes, then the connection closes.
    Truncate(u64),
    /// This status instead of the upstream's, with a small OCI error body and `Retry-After` when
    /// given.
    Status { code: u16, retry_after: Option<u32> },
    /// Headers and `after` body bytes of the upstream's answer, then nothing until the proxy is
    /// dropped (or the client goes away).
    Stall { after: u64 },
    /// `307 Location: http://<host_port><same path and query>`.
    RedirectTo(String),
    /// These bytes instead of the upstream's answer, with Content-Length and a
    /// `Docker-Content-Digest` of their sha256.
    Serve {
        content_type: String,
        body: Vec<u8>,
        status: u16,
    },
}

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Fault::CorruptBody => "corrupt",
            Fault::Truncate(_) => "truncate",
            Fault::Status { .. } => "status",
            Fault::Stall { .. } => "stall",
            Fault::RedirectTo(_) => "redirect",
            Fault::Serve { .. } => "serve",
        }
    }
}

/// One request as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    /// Path with query, as the client sent it (origin form).
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// Whether an `Authorization` header came with it.
    pub authorization: bool,
    /// The status the client was given (502 when the upstream could not be reached).
    pub status: u16,
    /// The fault applied, if a rule matched: "corrupt", "truncate", "status", "stall",
    /// "redirect", "serve".
    pub fault: Option<&'static str>,
}

struct Rule {
    method: String,
    path: String,
    fault: Fault,
    left: Option<u32>,
}

struct State {
    host: String,
    upstream: String,
    stop: Arc<AtomicBool>,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Logged>>,
}

impl State {
    fn take_fault(&self, method: &str, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        for r in rules.iter_mut() {
            if (r.method == "*" || r.method == method) && path.contains(&r.path) {
                match &mut r.left {
                    Some(0) => continue,
                    Some(n) => *n -= 1,
                    None => {}
                }
                return Some(r.fault.clone());
            }
        }
        None
    }
}

/// The fault-injecting proxy.
pub struct Proxy {
    /// `127.0.0.1:PORT`, what clients are pointed at.
    pub host: String,
    /// The registry behind it.
    pub upstream: String,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy for `upstream_host` (`127.0.0.1:PORT` of a plain-HTTP registry).
    pub fn start(upstream_host: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(State {
            host: host.clone(),
            upstream: upstream_host.to_owned(),
            stop: stop.clone(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            accept_loop(vec![listener], &stop, move |s| {
                let st = st.clone();
                std::thread::spawn(move || proxy_client(&st, s));
            })
        });
        Proxy {
            host,
            upstream: upstream_host.to_owned(),
            state,
            accept: Some(accept),
        }
    }

    /// Applies `fault` to the first `times` requests (None: all) whose method is `method` ("*":
    /// any) and whose path with query contains `path_contains`. Rules are tried in the order
    /// added; a used-up rule lets requests through to the next.
    pub fn add(&self, method: &str, path_contains: &str, fault: Fault, times: Option<u32>) {
        self.state.rules.lock().unwrap().push(Rule {
            method: method.to_owned(),
            path: path_contains.to_owned(),
            fault,
            left: times,
        });
    }

    /// Removes every rule: everything passes from now on.
    pub fn clear_rules(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// Every request received since the start or the last `clear_log`, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// How many logged requests had `method` ("*": any) and a path containing `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| (method == "*" || l.method == method) && l.path.contains(path_contains))
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Accepts on `listeners` until `stop`, handing each connection to `serve`.
pub(crate) fn accept_loop(
    listeners: Vec<TcpListener>,
    stop: &AtomicBool,
    mut serve: impl FnMut(TcpStream),
) {
    for l in &listeners {
        l.set_nonblocking(true).unwrap();
    }
    while !stop.load(Ordering::SeqCst) {
        let mut got = false;
        for l in &listeners {
            if let Ok((s, _)) = l.accept() {
                got = true;
                if s.set_nonblocking(false).is_ok() {
                    serve(s);
                }
            }
        }
        if !got {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 pieces shared with the token server and the recorder.

/// A message head: the first line and the header fields in order.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    pub first: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn new(first: String) -> Head {
        Head {
            first,
            headers: Vec::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.headers.push((name.to_owned(), value.to_owned()));
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("{}\r\n", self.first);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    fn parse(bytes: &[u8]) -> io::Result<Head> {
        let text = std::str::from_utf8(bytes).map_err(|_| bad("head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let first = lines.next().unwrap_or_default().to_owned();
        if first.is_empty() {
            return Err(bad("empty first line"));
        }
        let mut headers = Vec::new();
        for l in lines.filter(|l| !l.is_empty()) {
            let (k, v) = l.split_once(':').ok_or_else(|| bad("header without ':'"))?;
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Ok(Head { first, headers })
    }

    fn chunked(&self) -> bool {
        self.get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> Option<u64> {
        self.get("content-length").and_then(|v| v.parse().ok())
    }

    /// The status code of a response head.
    pub fn status(&self) -> u16 {
        self.first
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// A stream with a read buffer; every read is bounded by a time without progress and by the
/// owner's stop flag.
pub(crate) struct Conn {
    pub s: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    tmp: Vec<u8>,
    stop: Arc<AtomicBool>,
}

impl Conn {
    pub fn new(s: TcpStream, stop: Arc<AtomicBool>) -> Conn {
        let _ = s.set_read_timeout(Some(POLL));
        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
        let _ = s.set_nodelay(true);
        Conn {
            s,
            buf: Vec::new(),
            pos: 0,
            tmp: vec![0; 64 << 10],
            stop,
        }
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more bytes into the buffer; Ok(0) at end of stream.
    fn fill(&mut self, idle: Duration) -> io::Result<usize> {
        let start = Instant::now();
        loop {
            match self.s.read(&mut self.tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&self.tmp[..n]);
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if self.stop.load(Ordering::SeqCst) {
                        return Err(io::Error::other("stopped"));
                    }
                    if start.elapsed() > idle {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next message head; None at a clean end of stream before it.
    pub fn read_head(&mut self, idle: Duration) -> io::Result<Option<Head>> {
        loop {
            if self.avail().first() == Some(&0x16) {
                // A TLS ClientHello (a client trying https first, as Go's do): answer in plain
                // HTTP at once, as Go's server does, rather than wait for a head that never
                // comes.
                let _ = self
                    .s
                    .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nThis port speaks plain HTTP.\n");
                return Err(bad("TLS on a plain-HTTP port"));
            }
            if let Some(i) = find(self.avail(), b"\r\n\r\n") {
                let h = Head::parse(&self.avail()[..i])?;
                self.consume(i + 4);
                return Ok(Some(h));
            }
            if self.avail().len() > MAX_HEAD {
                return Err(bad("head too long"));
            }
            if self.fill(idle)? == 0 {
                return if self.avail().is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Up to `max` bytes (at least one unless at end of stream).
    fn read_some(&mut self, max: usize) -> io::Result<Vec<u8>> {
        if self.avail().is_empty() && self.fill(IO_TIMEOUT)? == 0 {
            return Ok(Vec::new());
        }
        let n = self.avail().len().min(max);
        let v = self.avail()[..n].to_vec();
        self.consume(n);
        Ok(v)
    }

    fn read_exact_n(&mut self, n: u64) -> io::Result<Vec<u8>> {
        if n > MAX_BUFFERED as u64 {
            return Err(bad("body too large to hold"));
        }
        let mut out = Vec::with_capacity(n as usize);
        while (out.len() as u64) < n {
            let part = self.read_some((n - out.len() as u64) as usize)?;
            if part.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            out.extend_from_slice(&part);
        }
        Ok(out)
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(self.avail(), b"\r\n") {
                let l = String::from_utf8_lossy(&self.avail()[..i]).into_owned();
                self.consume(i + 2);
                return Ok(l);
            }
            if self.avail().len() > MAX_HEAD {
                return Err(bad("line too long"));
            }
            if self.fill(IO_TIMEOUT)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// A chunked body, decoded (trailers dropped).
    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line = self.read_line()?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                while !self.read_line()?.is_empty() {}
                return Ok(out);
            }
            if out.len() as u64 + size > MAX_BUFFERED as u64 {
                return Err(bad("chunked body too large"));
            }
            out.extend_from_slice(&self.read_exact_n(size)?);
            if !self.read_line()?.is_empty() {
                return Err(bad("chunk not followed by CRLF"));
            }
        }
    }

    /// Everything until the end of stream.
    fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let part = self.read_some(1 << 20)?;
            if part.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&part);
            if out.len() > MAX_BUFFERED {
                return Err(bad("body too large to hold"));
            }
        }
    }

    /// Copies the body of a request with head `h` to `out` as it comes, in its own framing
    /// (chunked stays chunked), or discards it when `out` is None. A failed write to `out`
    /// turns the rest into discarding (the client's side of the connection stays in step);
    /// returns whether every byte was written.
    fn pipe_request_body(&mut self, h: &Head, mut out: Option<&mut TcpStream>) -> io::Result<bool> {
        let mut ok = true;
        let mut put = |out: &mut Option<&mut TcpStream>, b: &[u8]| {
            if let Some(o) = out {
                if o.write_all(b).is_err() {
                    ok = false;
                    *out = None;
                }
            }
        };
        if h.chunked() {
            loop {
                let line = self.read_line()?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
                put(&mut out, format!("{size:x}\r\n").as_bytes());
                if size == 0 {
                    while !self.read_line()?.is_empty() {}
                    put(&mut out, b"\r\n");
                    break;
                }
                let mut left = size;
                while left > 0 {
                    let part = self.read_some(left.min(1 << 20) as usize)?;
                    if part.is_empty() {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    put(&mut out, &part);
                    left -= part.len() as u64;
                }
                if !self.read_line()?.is_empty() {
                    return Err(bad("chunk not followed by CRLF"));
                }
                put(&mut out, b"\r\n");
            }
        } else if let Some(n) = h.content_length() {
            let mut left = n;
            while left > 0 {
                let part = self.read_some(left.min(1 << 20) as usize)?;
                if part.is_empty() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                put(&mut out, &part);
                left -= part.len() as u64;
            }
        }
        if let Some(o) = out {
            if o.flush().is_err() {
                ok = false;
            }
        }
        Ok(ok)
    }

    /// The body of a request with head `h` (Content-Length or chunked; none otherwise).
    pub fn read_request_body(&mut self, h: &Head) -> io::Result<Vec<u8>> {
        if h.chunked() {
            self.read_chunked()
        } else if let Some(n) = h.content_length() {
            self.read_exact_n(n)
        } else {
            Ok(Vec::new())
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Method and origin-form target of a request head (an absolute-form target loses its scheme
/// and authority).
pub(crate) fn request_line(h: &Head) -> (String, String, String) {
    let mut it = h.first.split(' ');
    let method = it.next().unwrap_or("").to_owned();
    let mut target = it.next().unwrap_or("/").to_owned();
    let version = it.next().unwrap_or("HTTP/1.1").to_owned();
    if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        target = rest.find('/').map_or("/".into(), |i| rest[i..].to_owned());
    }
    (method, target, version)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a whole response with a Content-Length (no body sent for HEAD).
pub(crate) fn respond(
    s: &mut TcpStream,
    method: &str,
    code: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut h = Head::new(format!("HTTP/1.1 {code} {}", reason(code)));
    for (k, v) in headers {
        h.set(k, v);
    }
    h.set("Content-Length", &body.len().to_string());
    let mut out = h.to_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body);
    }
    s.write_all(&out)?;
    s.flush()
}

// ---------------------------------------------------------------------------------------------
// The proxy's connection handling.

fn proxy_client(state: &State, client: TcpStream) {
    let mut c = Conn::new(client, state.stop.clone());
    while let Ok(Some(head)) = c.read_head(IDLE) {
        let (method, path, version) = request_line(&head);
        if head
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && c.s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            break;
        }
        let close = version == "HTTP/1.0"
            || head
                .get("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let fault = state.take_fault(&method, &path);
        let mut entry = Logged {
            method: method.clone(),
            path: path.clone(),
            range: head.get("range").map(str::to_owned),
            authorization: head.get("authorization").is_some(),
            status: 0,
            fault: fault.as_ref().map(Fault::name),
        };
        let keep = answer(state, &mut c, &head, &method, &path, fault, &mut entry);
        if !keep.unwrap_or(false) || close {
            break;
        }
    }
    let _ = c.s.shutdown(Shutdown::Both);
}

/// Logs a request with the status it gets, before any of the answer is sent (a client that
/// has its answer finds the request logged).
fn record(state: &State, entry: &mut Logged, status: u16) {
    entry.status = status;
    state.log.lock().unwrap().push(entry.clone());
}

/// Answers one request; Ok(true) when the connection may serve another.
#[allow(clippy::too_many_arguments)]
fn answer(
    state: &State,
    c: &mut Conn,
    head: &Head,
    method: &str,
    path: &str,
    fault: Option<Fault>,
    entry: &mut Logged,
) -> io::Result<bool> {
    if matches!(
        fault,
        Some(Fault::Status { .. } | Fault::RedirectTo(_) | Fault::Serve { .. })
    ) {
        c.pipe_request_body(head, None)?;
    }
    match &fault {
        Some(Fault::Status { code, retry_after }) => {
            record(state, entry, *code);
            let name = match code {
                401 => "UNAUTHORIZED",
                404 => "NOT_FOUND",
                429 => "TOOMANYREQUESTS",
                503 => "UNAVAILABLE",
                _ => "UNKNOWN",
            };
            let err = serde_json::json!({"errors": [{
                "code": name,
                "message": format!("injected by the test proxy: {code}"),
            }]})
            .to_string();
            let ra = retry_after.map(|s| s.to_string());
            let mut hs = vec![("Content-Type", "application/json")];
            if let Some(ra) = &ra {
                hs.push(("Retry-After", ra));
            }
            respond(&mut c.s, method, *code, &hs, err.as_bytes())?;
            return Ok(true);
        }
        Some(Fault::RedirectTo(to)) => {
            record(state, entry, 307);
            let loc = format!("http://{to}{path}");
            respond(&mut c.s, method, 307, &[("Location", &loc)], b"")?;
            return Ok(true);
        }
        Some(Fault::Serve {
            content_type,
            body,
            status,
        }) => {
            record(state, entry, *status);
            let digest = format!("sha256:{:x}", Sha256::digest(body));
            respond(
                &mut c.s,
                method,
                *status,
                &[
                    ("Content-Type", content_type),
                    ("Docker-Content-Digest", &digest),
                    ("Docker-Distribution-Api-Version", "registry/2.0"),
                ],
                body,
            )?;
            return Ok(true);
        }
        _ => {}
    }
    let mut up = match connect_upstream(state) {
        Ok(s) => Conn::new(s, state.stop.clone()),
        Err(e) => {
            record(state, entry, 502);
            c.pipe_request_body(head, None)?;
            respond(&mut c.s, method, 502, &[], e.to_string().as_bytes())?;
            return Ok(true);
        }
    };
    // The request on a connection of its own, its body streamed in its own framing.
    let mut h = head.clone();
    h.first = format!("{method} {path} HTTP/1.1");
    h.set("Host", &state.upstream);
    for hop in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "expect",
        "te",
        "upgrade",
    ] {
        h.remove(hop);
    }
    if head.chunked() {
        h.remove("content-length");
    }
    h.set("Connection", "close");
    let head_sent = up.s.write_all(&h.to_bytes()).is_ok();
    let out = if head_sent { Some(&mut up.s) } else { None };
    // The upstream may answer without reading it all (a 401 to an upload): the rest is read
    // from the client and dropped, and the upstream's answer passed on.
    c.pipe_request_body(head, out)?;
    let mut rh = match up.read_head(IO_TIMEOUT) {
        Ok(Some(rh)) => rh,
        other => {
            record(state, entry, 502);
            let why = match other {
                Err(e) => e.to_string(),
                _ => "upstream closed".into(),
            };
            respond(&mut c.s, method, 502, &[], why.as_bytes())?;
            return Ok(true);
        }
    };
    while (100..200).contains(&rh.status()) {
        match up.read_head(IO_TIMEOUT)? {
            Some(next) => rh = next,
            None => return Ok(false),
        }
    }
    let status = rh.status();
    record(state, entry, status);
    for (k, v) in rh.headers.iter_mut() {
        if k.eq_ignore_ascii_case("location") {
            let from = format!("http://{}", state.upstream);
            if let Some(rest) = v.strip_prefix(&from) {
                *v = format!("http://{}{rest}", state.host);
            }
        }
    }
    rh.remove("connection");
    rh.remove("keep-alive");
    let no_body =
        method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
    if no_body {
        c.s.write_all(&rh.to_bytes())?;
        return Ok(true);
    }
    // The body: streamed when its length is known, else held whole and sent with a length.
    let mut held: Option<Vec<u8>> = None;
    let len = match (rh.chunked(), rh.content_length()) {
        (false, Some(n)) => n,
        (true, _) => {
            let b = up.read_chunked()?;
            rh.remove("transfer-encoding");
            held = Some(b);
            held.as_ref().unwrap().len() as u64
        }
        (false, None) => {
            let b = up.read_to_end()?;
            held = Some(b);
            held.as_ref().unwrap().len() as u64
        }
    };
    if held.is_some() {
        rh.set("Content-Length", &len.to_string());
    }
    let limit = match &fault {
        Some(Fault::Truncate(n)) => (*n).min(len),
        Some(Fault::Stall { after }) => (*after).min(len),
        _ => len,
    };
    let flip = matches!(fault, Some(Fault::CorruptBody)).then_some(len / 2);
    c.s.write_all(&rh.to_bytes())?;
    let mut sent = 0u64;
    while sent < limit {
        let mut part = match &mut held {
            Some(b) => b[sent as usize..limit as usize].to_vec(),
            None => up.read_some((limit - sent).min(1 << 20) as usize)?,
        };
        if part.is_empty() {
            // The upstream ended early: so does the answer.
            return Ok(false);
        }
        if let Some(at) = flip {
            if (sent..sent + part.len() as u64).contains(&at) {
                part[(at - sent) as usize] ^= 0xff;
            }
        }
        c.s.write_all(&part)?;
        sent += part.len() as u64;
    }
    c.s.flush()?;
    match fault {
        Some(Fault::Truncate(_)) if limit < len => Ok(false),
        Some(Fault::Stall { .. }) if limit < len => {
            stall(state, c);
            Ok(false)
        }
        _ => Ok(true),
    }
}

fn connect_upstream(state: &State) -> io::Result<TcpStream> {
    let addr = state
        .upstream
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| bad("upstream has no address"))?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
}

/// Holds the connection until the proxy stops, the client goes away, or STALL_MAX.
fn stall(state: &State, c: &mut Conn) {
    let start = Instant::now();
    let mut b = [0u8; 4096];
    while !state.stop.load(Ordering::SeqCst) && start.elapsed() < STALL_MAX {
        match c.s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The recorder.

/// A server for redirect targets: answers every GET (and HEAD) with the given bytes and records
/// each request (whether it carried `Authorization` above all).
pub struct Recorder {
    /// `localhost:PORT`: another host than the proxy's `127.0.0.1:PORT` for credential rules.
    pub host: String,
    /// `127.0.0.1:PORT`, the same server by address.
    pub addr: String,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Listens on 127.0.0.1 (and [::1] on the same port when it can, since `localhost` may
    /// resolve there first) and serves `body` for any GET path.
    pub fn start(body: Vec<u8>) -> Recorder {
        let l4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l4.local_addr().unwrap().port();
        let mut listeners = vec![l4];
        if let Ok(l6) = TcpListener::bind(("::1", port)) {
            listeners.push(l6);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let body = Arc::new(body);
        let (st, lg) = (stop.clone(), log.clone());
        let accept = std::thread::spawn(move || {
            let stop2 = st.clone();
            accept_loop(listeners, &stop2, move |s| {
                let (st, lg, body) = (st.clone(), lg.clone(), body.clone());
                std::thread::spawn(move || record_client(s, st, &lg, &body));
            })
        });
        Recorder {
            host: format!("localhost:{port}"),
            addr: format!("127.0.0.1:{port}"),
            log,
            stop,
            accept: Some(accept),
        }
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

fn record_client(s: TcpStream, stop: Arc<AtomicBool>, log: &Mutex<Vec<Logged>>, body: &[u8]) {
    let mut c = Conn::new(s, stop);
    while let Ok(Some(head)) = c.read_head(IDLE) {
        let (method, path, _) = request_line(&head);
        if c.read_request_body(&head).is_err() {
            break;
        }
        let status = if method == "GET" || method == "HEAD" {
            200
        } else {
            405
        };
        log.lock().unwrap().push(Logged {
            method: method.clone(),
            path,
            range: head.get("range").map(str::to_owned),
            authorization: head.get("authorization").is_some(),
            status,
            fault: None,
        });
        let b = if status == 200 { body } else { b"" };
        let ct = [("Content-Type", "application/octet-stream")];
        if respond(&mut c.s, &method, status, &ct, b).is_err() {
            break;
        }
    }
    let _ = c.s.shutdown(Shutdown::Both);
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
