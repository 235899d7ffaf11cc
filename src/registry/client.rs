//! One registry host as layoutfs talks to it: the scheme (HTTPS with the system's roots and
//! the registry's own CA from a `certs.d` directory; plain HTTP with `--plain-http` and, as
//! docker does, for a loopback registry that does not speak TLS), the credential (see `auth`),
//! the `oci-client` client for blobs, uploads and mounts, and a `reqwest` client of our own for
//! manifests: `oci-client` reads a manifest whole with no size limit and drops its media type,
//! so manifests are fetched here, capped at 4 MiB while reading.
//!
//! Every failure becomes a `Failure`: transient (a dropped or refused connection, a timeout,
//! 408, 429, 5xx) or not, with a one-line message naming the registry and what was asked.
//! `retry` runs an operation again on transient failures with bounded exponential backoff.
//! Authorization is never sent to another host: `reqwest` strips it on a redirect that changes
//! host, port or scheme, and `oci-client` sends none to a layer's foreign URLs.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;

use crate::error::{Error, Result};

use super::auth::{self, Credential, Places};
use super::name::is_loopback;

/// Directories laid out like docker's `certs.d` (`<dir>/<host[:port]>/*.crt` are CAs),
/// searched in order when `LAYOUTFS_CERTS_D` (colon-separated) does not name others.
pub const CERTS_DIRS: &[&str] = &["/etc/containers/certs.d", "/etc/docker/certs.d"];
/// The environment variable naming other `certs.d` directories (tests use it).
pub const CERTS_ENV: &str = "LAYOUTFS_CERTS_D";
/// Bytes of an error answer's body read for its message.
const ERROR_BODY: usize = 4096;
/// The largest answer of a token service read.
const MAX_TOKEN_ANSWER: usize = 64 << 10;
/// The largest manifest or index accepted from a registry (distribution's own limit).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Tries of one operation on transient failures, the first included.
pub const TRIES: u32 = 6;
/// The first wait between tries; each next one doubles, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// The longest `Retry-After` honoured (a longer one is waited this long).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A connection that delivers nothing for this long is dropped (and the blob resumed).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the HTTPS probe of a loopback registry may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const USER_AGENT: &str = concat!("layoutfs/", env!("CARGO_PKG_VERSION"));

/// The manifest media types asked for (never docker schema 1).
pub const MANIFEST_TYPES: &[&str] = &[
    crate::oci::MEDIA_OCI_INDEX,
    crate::oci::MEDIA_OCI_MANIFEST,
    crate::oci::MEDIA_DOCKER_LIST,
    crate::oci::MEDIA_DOCKER_MANIFEST,
];

/// How to reach registries: what the command line and environment say.
#[derive(Debug, Clone)]
pub struct Options {
    /// Plain HTTP for every registry (`--plain-http`).
    pub plain_http: bool,
    /// `certs.d`-style directories.
    pub certs_dirs: Vec<PathBuf>,
    /// Where credentials are kept.
    pub places: Places,
}

impl Options {
    pub fn from_env(plain_http: bool) -> Options {
        let certs_dirs = match std::env::var_os(CERTS_ENV) {
            Some(v) => std::env::split_paths(&v).collect(),
            None => CERTS_DIRS.iter().map(PathBuf::from).collect(),
        };
        Options {
            plain_http,
            certs_dirs,
            places: Places::from_env(),
        }
    }
}

/// What went wrong with one request: whether trying again may help, and the one line to say.
#[derive(Debug)]
pub struct Failure {
    pub transient: bool,
    pub message: String,
    /// The wait the server asked for (`Retry-After`), when it said.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn fatal(message: impl Into<String>) -> Failure {
        Failure {
            transient: false,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn transient(message: impl Into<String>) -> Failure {
        Failure {
            transient: true,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        Error::Registry(f.message)
    }
}

/// A manifest or index as a registry served it.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// The response's `Content-Type`, without parameters.
    pub content_type: Option<String>,
    /// The response's `Docker-Content-Digest`.
    pub digest_header: Option<String>,
}

/// One registry host.
pub struct Remote {
    /// The host as written (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The host requests go to (`index.docker.io` for `docker.io`).
    wire: String,
    scheme: &'static str,
    pub oci: oci_client::Client,
    http: reqwest::Client,
    auth: RegistryAuth,
    /// The user name and the file the credential came from, for messages.
    credential: Option<(String, String)>,
    /// Tokens for our own manifest requests, by repository and operation.
    tokens: Mutex<HashMap<(String, bool), Option<String>>>,
}

impl Remote {
    /// Reaches `registry` (as written in a reference) with the credential kept for it.
    pub fn connect(registry: &str, opts: &Options) -> Result<Remote> {
        let found = auth::lookup(&opts.places, registry)?;
        let (auth, credential) = match found {
            None => (RegistryAuth::Anonymous, None),
            Some((Credential::Basic { user, password }, from)) => (
                RegistryAuth::Basic(user.clone(), password),
                Some((user, from.to_string())),
            ),
            Some((Credential::IdentityToken(_), from)) => {
                return Err(Error::Registry(format!(
                    "{registry}: the credential in {} is an identity token, which layoutfs cannot use: run layoutfs login {registry}",
                    from
                )))
            }
        };
        Remote::with_auth(registry, opts, auth, credential)
    }

    /// Reaches `registry` with `auth` (login checks a credential before it is stored).
    pub fn with_auth(
        registry: &str,
        opts: &Options,
        auth: RegistryAuth,
        credential: Option<(String, String)>,
    ) -> Result<Remote> {
        let wire = oci_client::Reference::with_tag(registry.to_owned(), "x".into(), "x".into())
            .resolve_registry()
            .to_owned();
        let roots = ca_files(registry, &opts.certs_dirs)?;
        let http = http_client(&roots, None)?;
        let scheme = if opts.plain_http {
            "http"
        } else if is_loopback(registry) {
            probe_scheme(registry, &wire, &roots)?
        } else {
            "https"
        };
        let config = ClientConfig {
            protocol: if scheme == "http" {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: roots
                .iter()
                .map(|(_, pem)| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            use_monolithic_push: true,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let oci = oci_client::Client::try_from(config)
            .map_err(|e| Error::Registry(format!("{registry}: {e}")))?;
        Ok(Remote {
            registry: registry.to_owned(),
            wire,
            scheme,
            oci,
            http,
            auth,
            credential,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The scheme requests use (`https` or `http`).
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// `oci-client`'s reference for `repository` at `reference` (a tag or a digest).
    pub fn oci_ref(&self, repository: &str, reference: &str) -> oci_client::Reference {
        if reference.contains(':') {
            oci_client::Reference::with_digest(
                self.registry.clone(),
                repository.to_owned(),
                reference.to_owned(),
            )
        } else {
            oci_client::Reference::with_tag(
                self.registry.clone(),
                repository.to_owned(),
                reference.to_owned(),
            )
        }
    }

    /// Authenticates for `repository` (`push`: pull and push), so that a wrong password is
    /// told as such, and keeps the token for our own requests.
    pub fn authorize(&self, repository: &str, push: bool) -> Result<()> {
        let image = self.oci_ref(repository, "latest");
        let op = if push {
            RegistryOperation::Push
        } else {
            RegistryOperation::Pull
        };
        let what = format!("{}/{repository}", self.registry);
        self.check_token_service(repository, push, &what)?;
        let token = super::runtime::block_on(retry(|| async {
            self.oci
                .auth(&image, &self.auth, op)
                .await
                .map_err(|e| self.failure(&what, e))
        }))??;
        self.tokens
            .lock()
            .insert((repository.to_owned(), push), token);
        Ok(())
    }

    /// Before `oci-client` asks the registry's token service (it reads the answer whole and
    /// sends the credential wherever the challenge says): the service of an HTTPS registry
    /// must be HTTPS, and its answer is read here first, capped at `MAX_TOKEN_ANSWER` bytes.
    fn check_token_service(&self, repository: &str, push: bool, what: &str) -> Result<()> {
        let Some((scheme, params)) = block_on_result(self.challenge(what))? else {
            return Ok(());
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Ok(());
        }
        let realm = params.get("realm").ok_or_else(|| {
            Error::Registry(format!("{what}: a Bearer challenge without a realm"))
        })?;
        self.check_realm(realm, what)?;
        let actions = if push { "pull,push" } else { "pull" };
        let mut query = vec![("scope", format!("repository:{repository}:{actions}"))];
        if let Some(s) = params.get("service") {
            query.push(("service", s.clone()));
        }
        block_on_result(async {
            let mut req = self.http.get(realm).query(&query);
            if let RegistryAuth::Basic(u, p) = &self.auth {
                req = req.basic_auth(u, Some(p));
            }
            let res = req.send().await.map_err(|e| {
                Error::from(self.failure(what, OciDistributionError::RequestError(e)))
            })?;
            if matches!(
                res.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ) {
                return Err(self.unauthorized(what).into());
            }
            let mut res = res;
            let mut n = 0usize;
            while let Some(c) = res.chunk().await.map_err(|e| {
                Error::from(self.failure(what, OciDistributionError::RequestError(e)))
            })? {
                n += c.len();
                if n > MAX_TOKEN_ANSWER {
                    return Err(Error::Registry(format!(
                        "{what}: the token service's answer is over {MAX_TOKEN_ANSWER} bytes"
                    )));
                }
            }
            Ok(())
        })
    }

    /// The registry's challenge to an unauthenticated `GET /v2/`: None when it needs none.
    async fn challenge(&self, what: &str) -> Result<Option<(String, HashMap<String, String>)>> {
        let url = format!("{}://{}/v2/", self.scheme, self.wire);
        let res =
            self.http.get(&url).send().await.map_err(|e| {
                Error::from(self.failure(what, OciDistributionError::RequestError(e)))
            })?;
        if res.status() != StatusCode::UNAUTHORIZED {
            return Ok(None);
        }
        Ok(res
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(parse_challenge))
    }

    /// A token service of an HTTPS registry must be HTTPS: the credential goes there.
    fn check_realm(&self, realm: &str, what: &str) -> Result<()> {
        let url = reqwest::Url::parse(realm).map_err(|_| {
            Error::Registry(format!(
                "{what}: the registry's token service {:?} is not a URL",
                one_line(realm)
            ))
        })?;
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.scheme == "http" => Ok(()),
            _ => Err(Error::Registry(format!(
                "{what}: the registry is HTTPS but its token service is {}: refusing to send a credential there",
                one_line(realm)
            ))),
        }
    }

    /// The `Authorization` header of our own requests for `repository`.
    fn authorization(&self, repository: &str) -> Option<String> {
        let tokens = self.tokens.lock();
        let token = tokens
            .get(&(repository.to_owned(), false))
            .or_else(|| tokens.get(&(repository.to_owned(), true)));
        match (token, &self.auth) {
            (Some(Some(t)), _) => Some(format!("Bearer {t}")),
            (_, RegistryAuth::Basic(u, p)) => {
                use base64::Engine;
                let raw = format!("{u}:{p}");
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
            _ => None,
        }
    }

    /// GETs `/v2/<repository>/<path>` (a manifest or the referrers API), accepting `accept`,
    /// at most `MAX_MANIFEST` bytes. Ok(None): 404.
    pub async fn get_small(
        &self,
        repository: &str,
        path: &str,
        accept: &[&str],
        what: &str,
    ) -> Result<Option<Fetched>, Failure> {
        let url = format!("{}://{}/v2/{repository}/{path}", self.scheme, self.wire);
        let headers = self.small_headers(repository, accept, what)?;
        let res = self
            .http
            .get(&url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| self.failure(what, OciDistributionError::RequestError(e)))?;
        let status = res.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.error_answer(res, url, what).await);
        }
        self.read_small(res, what).await.map(Some)
    }

    /// The headers of a `get_small` request: `Accept` and, if there is one, `Authorization`.
    fn small_headers(
        &self,
        repository: &str,
        accept: &[&str],
        what: &str,
    ) -> Result<HeaderMap, Failure> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            accept
                .join(", ")
                .parse()
                .map_err(|_| Failure::fatal(format!("{what}: bad Accept header")))?,
        );
        if let Some(a) = self.authorization(repository) {
            let v = a
                .parse()
                .map_err(|_| Failure::fatal(format!("{what}: bad credential")))?;
            headers.insert(AUTHORIZATION, v);
        }
        Ok(headers)
    }

    /// The failure an unsuccessful answer to `url` says, with its `Retry-After`; the body is
    /// read up to `ERROR_BODY` bytes for the message.
    async fn error_answer(&self, mut res: reqwest::Response, url: String, what: &str) -> Failure {
        let code = res.status().as_u16();
        let retry_after = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // What an error says is read up to `ERROR_BODY` bytes: a registry may send forever.
        let mut body = Vec::new();
        while body.len() < ERROR_BODY {
            match res.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        body.truncate(ERROR_BODY);
        let e = match serde_json::from_slice::<oci_client::errors::OciEnvelope>(&body) {
            Ok(envelope) if (400..500).contains(&code) && code != 401 => {
                OciDistributionError::RegistryError { envelope, url }
            }
            _ => OciDistributionError::ServerError {
                code,
                url,
                message: String::from_utf8_lossy(&body).into_owned(),
            },
        };
        let mut f = self.failure(what, e);
        f.retry_after = retry_after;
        f
    }

    /// The body of a successful `get_small` answer with its media type and digest header,
    /// refused once it is over `MAX_MANIFEST` bytes (said or read).
    async fn read_small(&self, mut res: reqwest::Response, what: &str) -> Result<Fetched, Failure> {
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(CONTENT_TYPE.as_str())
            .map(|t| t.split(';').next().unwrap_or_default().trim().to_owned());
        let digest_header = header("docker-content-digest");
        let too_large = |n: u64| {
            Failure::fatal(format!(
                "{what}: the registry's manifest is {n} bytes, over the {MAX_MANIFEST}-byte limit"
            ))
        };
        if let Some(n) = res.content_length() {
            if n > MAX_MANIFEST {
                return Err(too_large(n));
            }
        }
        let mut bytes = Vec::new();
        loop {
            match res.chunk().await {
                Ok(Some(chunk)) => {
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() as u64 > MAX_MANIFEST {
                        return Err(too_large(bytes.len() as u64));
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(self.failure(what, OciDistributionError::RequestError(e))),
            }
        }
        Ok(Fetched {
            bytes,
            content_type,
            digest_header,
        })
    }

    /// `e` in one line about `what` (none when empty: the caller names it), and whether
    /// trying again may help.
    pub fn failure(&self, what: &str, e: OciDistributionError) -> Failure {
        about(what, self.failure_of(e))
    }

    /// A refused or missing credential, about `what`.
    fn unauthorized(&self, what: &str) -> Failure {
        about(what, self.unauthorized_of())
    }

    /// What `e` was, without saying about what.
    fn failure_of(&self, e: OciDistributionError) -> Failure {
        let host = &self.registry;
        match e {
            OciDistributionError::UnauthorizedError { .. } => self.unauthorized_of(),
            OciDistributionError::AuthenticationFailure(reason) => {
                let mut f = self.unauthorized_of();
                if self.credential.is_none() {
                    f.message = format!("the registry's token service refused anonymous access ({}): run layoutfs login {host}", one_line(&reason));
                }
                f
            }
            OciDistributionError::RegistryError { envelope, .. } => self.refusal_of(&envelope),
            OciDistributionError::ServerError { code, message, .. } => {
                self.status_failure(code, &message)
            }
            OciDistributionError::RequestError(e) => self.transport(&e),
            OciDistributionError::DigestError(e) => Failure::fatal(format!("from {host}: {e}")),
            OciDistributionError::IoError(e) => Failure::transient(format!("from {host}: {e}")),
            other => Failure::fatal(format!("{host}: {}", one_line(&other.to_string()))),
        }
    }

    /// What the registry's error envelope says: not found, denied, busy (transient) or refused.
    fn refusal_of(&self, envelope: &oci_client::errors::OciEnvelope) -> Failure {
        let host = &self.registry;
        let busy = envelope
            .errors
            .iter()
            .any(|e| e.code == OciErrorCode::Toomanyrequests);
        let unknown = envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
            )
        });
        let denied = envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Denied | OciErrorCode::Unauthorized));
        let said = envelope_said(envelope);
        if unknown {
            Failure::fatal(format!("not found in {host} ({})", one_line(&said)))
        } else if denied && self.credential.is_some() {
            Failure::fatal(format!(
                "{host} denied access ({}) to the credential of {}",
                one_line(&said),
                self.credential.as_ref().map_or("", |(u, _)| u.as_str())
            ))
        } else if denied {
            Failure::fatal(format!(
                "{host} denied access ({}): if it needs a credential, run layoutfs login {host}",
                one_line(&said)
            ))
        } else if busy {
            Failure::transient(format!("{host} is busy (429 {})", one_line(&said)))
        } else {
            Failure::fatal(format!("{host} refused: {}", one_line(&said)))
        }
    }

    /// What an answer with HTTP status `code` and body `message` was: transient for 408,
    /// 429 and 5xx.
    fn status_failure(&self, code: u16, message: &str) -> Failure {
        let host = &self.registry;
        let said = one_line(message);
        match code {
            401 => self.unauthorized_of(),
            403 => Failure::fatal(format!("{host} denied access (403)")),
            404 => Failure::fatal(format!("not found in {host}")),
            408 | 429 | 500..=599 => Failure::transient(format!(
                "{host} answered {code}{}",
                if said.is_empty() {
                    String::new()
                } else {
                    format!(" ({said})")
                }
            )),
            _ => Failure::fatal(format!("{host} answered {code} ({said})")),
        }
    }

    /// A refused or missing credential, without saying about what.
    fn unauthorized_of(&self) -> Failure {
        let host = &self.registry;
        match &self.credential {
            None => Failure::fatal(format!(
                "{host} requires authentication: run layoutfs login {host}"
            )),
            Some((user, from)) => Failure::fatal(format!(
                "{host} refused the credential of {user} (from {from}): wrong user name or password? run layoutfs login {host}"
            )),
        }
    }

    /// Checks `user` and `password` the way `docker login` does: `GET /v2/`, then, as the
    /// registry's challenge asks, the same with Basic authentication, or a token from its
    /// token service (no scope) with them.
    pub fn check_login(&self, user: &str, password: &str) -> Result<()> {
        let host = &self.registry;
        let url = format!("{}://{}/v2/", self.scheme, self.wire);
        let what = format!("login to {host}");
        let fail = |e: reqwest::Error| {
            Error::from(self.failure(&what, OciDistributionError::RequestError(e)))
        };
        let refused = || {
            Error::Registry(format!(
                "{host}: login failed for {user}: wrong user name or password"
            ))
        };
        block_on_result(async {
            let res = self.http.get(&url).send().await.map_err(fail)?;
            if res.status() != StatusCode::UNAUTHORIZED {
                return check_status(res.status(), &what);
            }
            let challenge = res
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let (scheme, params) = parse_challenge(&challenge);
            let res = if scheme.eq_ignore_ascii_case("bearer") {
                let realm = params.get("realm").ok_or_else(|| {
                    Error::Registry(format!("{what}: a Bearer challenge without a realm"))
                })?;
                self.check_realm(realm, &what)?;
                let mut query = vec![("account", user.to_owned())];
                if let Some(s) = params.get("service") {
                    query.push(("service", s.clone()));
                }
                self.http
                    .get(realm)
                    .query(&query)
                    .basic_auth(user, Some(password))
                    .send()
                    .await
                    .map_err(fail)?
            } else {
                self.http
                    .get(&url)
                    .basic_auth(user, Some(password))
                    .send()
                    .await
                    .map_err(fail)?
            };
            match res.status() {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(refused()),
                s => check_status(s, &what),
            }
        })
    }

    /// A transport error: TLS trust, a non-TLS server, refused or dropped connections.
    fn transport(&self, e: &reqwest::Error) -> Failure {
        let host = &self.registry;
        if let Some(tls) = find_source::<rustls::Error>(e) {
            return match tls {
                rustls::Error::InvalidCertificate(why) => Failure::fatal(format!(
                    "the TLS certificate of {host} is not trusted ({why:?}): put the registry's CA in /etc/containers/certs.d/{host}/ca.crt (or a directory named by {CERTS_ENV}), or pass --plain-http for a registry without TLS"
                )),
                rustls::Error::InvalidMessage(_) => Failure::fatal(format!(
                    "{host} does not speak TLS: pass --plain-http"
                )),
                other => Failure::fatal(format!("TLS with {host}: {other}")),
            };
        }
        if let Some(io) = find_source::<std::io::Error>(e) {
            return Failure::transient(format!("{host}: {io}"));
        }
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "cannot connect"
        } else if e.is_body() || e.is_decode() {
            "the connection broke"
        } else {
            "request failed"
        };
        Failure::transient(format!("{host}: {kind}"))
    }
}

/// `f` said about `what` (as it is when `what` is empty: the caller names it).
fn about(what: &str, mut f: Failure) -> Failure {
    if !what.is_empty() {
        f.message = format!("{what}: {}", f.message);
    }
    f
}

/// Runs `f` on the runtime, flattening its error.
fn block_on_result<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    super::runtime::block_on(f)?
}

fn check_status(s: StatusCode, what: &str) -> Result<()> {
    if s.is_success() {
        Ok(())
    } else {
        Err(Error::Registry(format!(
            "{what}: the registry answered {s}"
        )))
    }
}

/// The scheme and parameters of a `WWW-Authenticate` header (`Bearer realm="…",service="…"`).
fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => match q.split_once('"') {
                Some((v, n)) => (v.to_owned(), n),
                None => (q.to_owned(), ""),
            },
            None => match after.split_once(',') {
                Some((v, n)) => (v.trim().to_owned(), n),
                None => (after.trim().to_owned(), ""),
            },
        };
        params.insert(key, value);
        rest = next.trim_start().trim_start_matches(',');
    }
    (scheme.to_owned(), params)
}

/// The first error of type `T` in `e`'s chain of sources.
fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        // An io::Error's source is its inner error's source, not the inner error: step in.
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => err.source(),
        };
    }
    None
}

/// What the errors of a registry's envelope say, joined with "; " (an error without a
/// message by its code).
fn envelope_said(envelope: &oci_client::errors::OciEnvelope) -> String {
    envelope
        .errors
        .iter()
        .map(|e| {
            if e.message.is_empty() {
                format!("{:?}", e.code)
            } else {
                e.message.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `s` on one line, at most 200 characters: what a registry says, fit for a message (its
/// control characters, escape sequences included, become spaces).
pub fn one_line(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.trim();
    match flat.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat.to_owned(),
    }
}

/// Runs `op` until it succeeds, fails for good, or has been tried `TRIES` times.
pub async fn retry<T, F, Fut>(mut op: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut wait = FIRST_BACKOFF;
    let mut tries = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(f) if f.transient && tries < TRIES => {
                // The server's own wait, when it asks for a longer one, within reason.
                let pause = f
                    .retry_after
                    .map_or(wait, |r| r.min(MAX_RETRY_AFTER).max(wait));
                tracing::info!("{} (try {tries} of {TRIES}; again in {pause:?})", f.message);
                tokio::time::sleep(pause).await;
                wait = (wait * 2).min(MAX_BACKOFF);
                tries += 1;
            }
            Err(mut f) => {
                if f.transient {
                    f.message = format!("{} (after {tries} tries)", f.message);
                }
                return Err(f);
            }
        }
    }
}

/// The wait before try `n` (counted from 1) of an operation being retried by hand.
pub fn backoff(n: u32) -> Duration {
    let shift = n.saturating_sub(1).min(8);
    (FIRST_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
}

/// The CA files for `registry`: every `*.crt` in `<dir>/<registry>/` of each directory, read
/// and checked to hold PEM certificates (a file that holds none is an error naming it).
fn ca_files(registry: &str, dirs: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    for dir in dirs {
        let host_dir = dir.join(registry);
        let entries = match std::fs::read_dir(&host_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&host_dir, e)),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        files.sort();
        for f in files {
            let pem = std::fs::read(&f).map_err(|e| Error::io(&f, e))?;
            check_pem(&f, &pem)?;
            out.push((f, pem));
        }
    }
    Ok(out)
}

fn check_pem(path: &Path, pem: &[u8]) -> Result<()> {
    let text = String::from_utf8_lossy(pem);
    let parsed = reqwest::Certificate::from_pem_bundle(pem);
    if !text.contains("-----BEGIN CERTIFICATE-----") || parsed.map_or(true, |c| c.is_empty()) {
        return Err(Error::Registry(format!(
            "{}: not a PEM certificate (a registry CA file holds -----BEGIN CERTIFICATE----- blocks)",
            path.display()
        )));
    }
    Ok(())
}

/// Our own HTTP client, trusting the system's roots and `roots`.
fn http_client(roots: &[(PathBuf, Vec<u8>)], timeout: Option<Duration>) -> Result<reqwest::Client> {
    // The runtime installs the TLS provider; make sure it is up before a client is built.
    super::runtime::block_on(async {})?;
    let mut certs = Vec::new();
    for (path, pem) in roots {
        let mut c = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| Error::Registry(format!("{}: {e}", path.display())))?;
        certs.append(&mut c);
    }
    let mut b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .tls_certs_merge(certs);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build()
        .map_err(|e| Error::Registry(format!("building the HTTP client: {e}")))
}

/// Whether a loopback registry speaks TLS: HTTPS when it does (verified as any other: a
/// certificate it cannot prove is an error, never a silent fallback), HTTP when its answer
/// is not TLS at all.
fn probe_scheme(registry: &str, wire: &str, roots: &[(PathBuf, Vec<u8>)]) -> Result<&'static str> {
    let client = http_client(roots, Some(PROBE_TIMEOUT))?;
    let url = format!("https://{wire}/v2/");
    let res = super::runtime::block_on(async { client.get(&url).send().await })?;
    match res {
        Ok(_) => Ok("https"),
        Err(e) => match find_source::<rustls::Error>(&e) {
            Some(rustls::Error::InvalidMessage(_)) => Ok("http"),
            Some(rustls::Error::InvalidCertificate(why)) => Err(Error::Registry(format!(
                "{registry}: the TLS certificate is not trusted ({why:?}): put the registry's CA in /etc/containers/certs.d/{registry}/ca.crt (or a directory named by {CERTS_ENV}), or pass --plain-http for a registry without TLS"
            ))),
            _ if e.is_connect() => Err(Error::Registry(format!(
                "{registry}: cannot connect ({})",
                find_source::<std::io::Error>(&e)
                    .map_or_else(|| e.to_string(), |io| io.to_string())
            ))),
            _ => Ok("http"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="test-registry",scope="repository:x:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "http://127.0.0.1:1/token");
        assert_eq!(p["service"], "test-registry");
        assert_eq!(p["scope"], "repository:x:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="basic-realm""#);
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "basic-realm");
        assert_eq!(parse_challenge("").0, "");
    }

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff(100), MAX_BACKOFF);
    }

    #[test]
    fn one_line_flattens_and_cuts() {
        assert_eq!(one_line("a\nb"), "a b");
        assert_eq!(one_line(&"x".repeat(300)).chars().count(), 201);
    }
}
