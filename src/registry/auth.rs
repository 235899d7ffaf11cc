//! Registry credentials where docker, podman and skopeo keep them: finding one for a host
//! (`REGISTRY_AUTH_FILE` alone when set, else containers' two `auth.json` files, then docker's
//! `config.json` with its credential helpers), and writing or removing one (`login`, `logout`)
//! so that all three tools find what layoutfs wrote. Entries are parsed by `docker_credential`;
//! the helpers (`docker-credential-NAME get|store|erase`) are run here, from a search path the
//! caller gives, with a time limit. Within one file the order is docker_credential's:
//! `credHelpers[host]`, then the `auths` entry, then `credsStore`. A missing file, or one with
//! nothing for the host, passes to the next; a malformed one is an error naming it.
//!
//! `store` writes `REGISTRY_AUTH_FILE`, else docker's `config.json` (or the helper it configures
//! for the host), under docker's key (`https://index.docker.io/v1/` for Docker Hub), and removes
//! the host's entries from the files read before it, so that the new credential is the one found.
//! Files are rewritten whole: the JSON is read, one entry changed, every other key kept, and a
//! temporary file (mode 0600, created exclusively, never through a link) is synced and renamed
//! over the old one. A credentials file that is a symbolic link is refused for writing (with the
//! link's target in the message) rather than replaced by a file or written through: the link is
//! the user's (a dotfile manager's, say) and where it points is theirs to choose.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use docker_credential::{CredentialRetrievalError, DockerCredential};
use serde_json::{Map, Value};

use crate::error::{printable, Error, IoContext, Result};
use crate::registry::name::{credential_key, is_docker_hub, DOCKER_HUB};

/// Largest credentials file read (real ones are a few kilobytes).
const MAX_CONFIG_SIZE: u64 = 4 << 20;
/// Largest answer read from a credential helper.
const MAX_HELPER_OUTPUT: u64 = 1 << 20;
/// How long a credential helper may take (it may be waiting for a keyring to unlock).
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a running helper is checked on.
const HELPER_POLL: Duration = Duration::from_millis(10);
/// Mode of a credentials file written here.
const FILE_MODE: u32 = 0o600;
/// Mode of a directory made for one.
const DIR_MODE: u32 = 0o700;
/// A credential helper's program name is this prefix and the configured name.
const HELPER_PREFIX: &str = "docker-credential-";
/// What docker's credential helpers print when they hold nothing for a server.
const HELPER_NOT_FOUND: &str = "credentials not found";
/// The user name a helper answers with when its secret is an identity token.
const HELPER_TOKEN_USER: &str = "<token>";
/// The file name of docker's configuration in its directory.
const DOCKER_CONFIG_FILE: &str = "config.json";
/// containers' file, under `$XDG_RUNTIME_DIR` and `$XDG_CONFIG_HOME`.
const CONTAINERS_AUTH_FILE: &str = "containers/auth.json";

/// Where credentials are looked for and written: the environment, read once by
/// [`Places::from_env`], or set by hand (tests). `None` means "no such place".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Places {
    /// `$REGISTRY_AUTH_FILE`: when set, the only file read and written (containers' rule).
    pub auth_file: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR/containers/auth.json`, or `/run/containers/UID/auth.json` without it
    /// (where podman and skopeo write by default).
    pub runtime_auth: Option<PathBuf>,
    /// `${XDG_CONFIG_HOME:-$HOME/.config}/containers/auth.json`.
    pub config_auth: Option<PathBuf>,
    /// `$DOCKER_CONFIG`, or `$HOME/.docker`: the directory of docker's `config.json`.
    pub docker_dir: Option<PathBuf>,
    /// The search path for `docker-credential-NAME` programs (`$PATH`).
    pub helper_path: Option<OsString>,
}

impl Places {
    /// The places the environment names, as docker, podman and skopeo read it.
    pub fn from_env() -> Places {
        // SAFETY: getuid cannot fail and has no preconditions.
        let uid = unsafe { libc::getuid() };
        Places::from_vars(|name| std::env::var_os(name), uid)
    }

    /// The places variables name (`var` reads one; an empty value counts as unset), for the
    /// user `uid` (whose runtime directory is `/run/containers/UID` without `XDG_RUNTIME_DIR`).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>, uid: u32) -> Places {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let path = |name: &str| var(name).map(PathBuf::from);
        let home = path("HOME");
        Places {
            auth_file: path("REGISTRY_AUTH_FILE"),
            runtime_auth: Some(match path("XDG_RUNTIME_DIR") {
                Some(dir) => dir.join(CONTAINERS_AUTH_FILE),
                None => PathBuf::from(format!("/run/containers/{uid}/auth.json")),
            }),
            config_auth: path("XDG_CONFIG_HOME")
                .or_else(|| home.as_ref().map(|h| h.join(".config")))
                .map(|d| d.join(CONTAINERS_AUTH_FILE)),
            docker_dir: path("DOCKER_CONFIG").or_else(|| home.map(|h| h.join(".docker"))),
            helper_path: var("PATH"),
        }
    }

    /// docker's `config.json`.
    pub fn docker_config(&self) -> Option<PathBuf> {
        self.docker_dir.as_ref().map(|d| d.join(DOCKER_CONFIG_FILE))
    }

    /// The files looked in, in order.
    pub fn files(&self) -> Vec<PathBuf> {
        match &self.auth_file {
            Some(f) => vec![f.clone()],
            None => [
                self.runtime_auth.clone(),
                self.config_auth.clone(),
                self.docker_config(),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }
    }

    /// The file `store` writes: `REGISTRY_AUTH_FILE`, else docker's `config.json` (which docker
    /// reads, and podman and skopeo read after their own files).
    pub fn store_file(&self) -> Result<PathBuf> {
        self.auth_file
            .clone()
            .or_else(|| self.docker_config())
            .ok_or_else(|| {
                Error::Invalid(
                    "no place for credentials: set HOME, DOCKER_CONFIG or REGISTRY_AUTH_FILE"
                        .into(),
                )
            })
    }
}

/// A credential for a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        user: String,
        password: String,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`).
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    /// Never shows the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { user, .. } => write!(f, "Basic {{ user: {user:?}, .. }}"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(..)"),
        }
    }
}

/// Where a credential was found, written or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// The helper `docker-credential-NAME`, as configured in `config`.
    Helper {
        name: String,
        config: PathBuf,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Helper { name, config } => write!(
                f,
                "credential helper {HELPER_PREFIX}{name} (configured in {})",
                config.display()
            ),
        }
    }
}

/// The credential for `registry` (a host as in [`crate::registry::name::RemoteRef::registry`]),
/// from the first place that has one; `None` when none has (pull anonymously).
pub fn lookup(places: &Places, registry: &str) -> Result<Option<(Credential, Source)>> {
    for file in places.files() {
        let Some(config) = read_config(&file)? else {
            continue;
        };
        if let Some(name) = helper_for(&config, registry, Entry::PerHost, &file)? {
            match helper_get(places, &name, &file, registry)? {
                Some(c) => return Ok(Some((c, Source::Helper { name, config: file }))),
                None => continue,
            }
        }
        if let Some(c) = entry_credential(&config, registry, &file)? {
            return Ok(Some((c, Source::File(file))));
        }
        if let Some(name) = helper_for(&config, registry, Entry::Store, &file)? {
            if let Some(c) = helper_get(places, &name, &file, registry)? {
                return Ok(Some((c, Source::Helper { name, config: file })));
            }
        }
    }
    Ok(None)
}

/// What [`store`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Where the credential went.
    pub to: Source,
    /// Older credentials for the registry removed because [`lookup`] (and podman and skopeo)
    /// would have found them first: entries of files read before `to`, and a plain entry kept
    /// beside the helper now configured.
    pub replaced: Vec<Source>,
}

/// Keeps `user`'s credential for `registry` where docker, podman and skopeo all find it
/// ([`Places::store_file`], or the credential helper that file configures for the host), in
/// place of any it had: credentials for the registry that would be found before it are
/// removed (see [`Stored::replaced`]).
pub fn store(places: &Places, registry: &str, user: &str, password: &str) -> Result<Stored> {
    if user.is_empty() || password.is_empty() {
        return Err(Error::Invalid(format!(
            "{registry}: a user name and a password are both needed"
        )));
    }
    if user.contains(':') {
        return Err(Error::Invalid(format!(
            "{registry}: the user name {:?} holds ':', which the credential format cannot keep",
            printable(user)
        )));
    }
    let file = places.store_file()?;
    let mut config = read_config(&file)?.unwrap_or_else(|| Value::Object(Map::new()));
    let helper = match helper_for(&config, registry, Entry::PerHost, &file)? {
        Some(h) => Some(h),
        None => helper_for(&config, registry, Entry::Store, &file)?,
    };
    // Files read before this one: checked now, cleaned once the credential is kept.
    let earlier: Vec<PathBuf> = places
        .files()
        .into_iter()
        .take_while(|f| *f != file)
        .collect();
    for f in &earlier {
        read_config(f)?;
    }
    let mut replaced = Vec::new();
    let auths = auths_mut(&mut config, &file)?;
    let had_entry = auths.keys().any(|k| same_registry(k, registry));
    auths.retain(|k, _| !same_registry(k, registry));
    if let Some(name) = helper {
        let input = serde_json::json!({
            "ServerURL": credential_key(registry),
            "Username": user,
            "Secret": password,
        });
        let out = run_helper(places, &name, &file, "store", input.to_string().as_bytes())?;
        if !out.success {
            return Err(out.failure(&name, "store", registry));
        }
        // A plain entry beside a credsStore would be read before the store.
        if had_entry {
            write_config(&file, &config)?;
            replaced.push(Source::File(file.clone()));
        }
        for f in &earlier {
            erase_in(places, f, registry, &mut replaced)?;
        }
        let to = Source::Helper { name, config: file };
        return Ok(Stored { to, replaced });
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    auths.insert(
        credential_key(registry).to_owned(),
        serde_json::json!({ "auth": encoded }),
    );
    write_config(&file, &config)?;
    for f in &earlier {
        erase_in(places, f, registry, &mut replaced)?;
    }
    Ok(Stored {
        to: Source::File(file),
        replaced,
    })
}

/// Removes `registry`'s credential from every place [`lookup`] reads (and from the helpers
/// those files configure for it), keeping everything else. Returns where something was
/// removed: empty when nothing was stored.
pub fn erase(places: &Places, registry: &str) -> Result<Vec<Source>> {
    let mut removed = Vec::new();
    for file in places.files() {
        erase_in(places, &file, registry, &mut removed)?;
    }
    Ok(removed)
}

/// Removes `registry`'s entries from `file`, and its credential from the helper `file`
/// configures for it; adds where something was removed to `removed`.
fn erase_in(places: &Places, file: &Path, registry: &str, removed: &mut Vec<Source>) -> Result<()> {
    let Some(mut config) = read_config(file)? else {
        return Ok(());
    };
    for which in [Entry::PerHost, Entry::Store] {
        if let Some(name) = helper_for(&config, registry, which, file)? {
            let server = credential_key(registry);
            let out = run_helper(places, &name, file, "erase", server.as_bytes())?;
            if out.success {
                removed.push(Source::Helper {
                    name,
                    config: file.to_owned(),
                });
            } else if !out.not_found() {
                return Err(out.failure(&name, "erase", registry));
            }
            break;
        }
    }
    let auths = auths_mut(&mut config, file)?;
    let before = auths.len();
    auths.retain(|k, _| !same_registry(k, registry));
    if auths.len() != before {
        write_config(file, &config)?;
        removed.push(Source::File(file.to_owned()));
    }
    Ok(())
}

/// Which helper setting of a file: `credHelpers[host]` or `credsStore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    PerHost,
    Store,
}

/// The helper `config` names for `registry`, if any.
fn helper_for(config: &Value, registry: &str, which: Entry, file: &Path) -> Result<Option<String>> {
    let name = match which {
        Entry::PerHost => match config.get("credHelpers") {
            None | Some(Value::Null) => None,
            Some(Value::Object(helpers)) => helpers
                .iter()
                .find(|(k, _)| same_registry(k, registry))
                .map(|(_, v)| v),
            Some(_) => return Err(json_error(file, "credHelpers is not an object")),
        },
        Entry::Store => config.get("credsStore"),
    };
    match name {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if is_plain_name(s) => Ok(Some(s.clone())),
        Some(Value::String(s)) => Err(json_error(
            file,
            &format!(
                "credential helper name {:?} is not a plain name",
                printable(s)
            ),
        )),
        Some(_) => Err(json_error(file, "a credential helper name is not a string")),
    }
}

/// A helper name becomes part of a program name: letters, digits, '.', '_' and '-' only.
fn is_plain_name(s: &str) -> bool {
    !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The credential in `config`'s `auths` for `registry`, read by docker_credential (with the
/// helper settings taken out: helpers are run by [`lookup`]).
fn entry_credential(config: &Value, registry: &str, file: &Path) -> Result<Option<Credential>> {
    let auths = match config.get("auths") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(auths)) => auths,
        Some(_) => return Err(json_error(file, "auths is not an object")),
    };
    let only_auths = serde_json::json!({ "auths": auths });
    let server = if is_docker_hub(registry) {
        DOCKER_HUB
    } else {
        registry
    };
    match docker_credential::get_credential_from_reader(only_auths.to_string().as_bytes(), server) {
        Ok(c) => Ok(Some(c.into())),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
        Err(CredentialRetrievalError::CredentialDecodingError) => Err(json_error(
            file,
            &format!("the credential for {registry} is not base64 of USER:PASSWORD"),
        )),
        Err(CredentialRetrievalError::CredentialMismatchError) => Err(json_error(
            file,
            &format!("the credential for {registry}: auth does not match username and password"),
        )),
        Err(e) => Err(json_error(
            file,
            &format!("auths entries must be objects of strings ({e})"),
        )),
    }
}

impl From<DockerCredential> for Credential {
    fn from(c: DockerCredential) -> Credential {
        match c {
            DockerCredential::UsernamePassword(user, password) => {
                Credential::Basic { user, password }
            }
            DockerCredential::IdentityToken(t) => Credential::IdentityToken(t),
        }
    }
}

/// Whether a key of `auths` or `credHelpers` names `registry`: the same host, also when the key
/// is a URL (`https://HOST/v1/`), all of Docker Hub's names being one. A key with a path but
/// no scheme (`quay.io/org/repo`, containers' per-repository entries) is not the host's.
fn same_registry(key: &str, registry: &str) -> bool {
    fn host(key: &str) -> &str {
        match key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
        {
            Some(rest) => rest.split('/').next().unwrap_or(rest),
            None => key,
        }
    }
    let (k, r) = (host(key), host(registry));
    k == r || (is_docker_hub(k) && is_docker_hub(r))
}

/// `config.auths`, made if missing.
fn auths_mut<'a>(config: &'a mut Value, file: &Path) -> Result<&'a mut Map<String, Value>> {
    let Value::Object(top) = config else {
        return Err(json_error(file, "not a JSON object"));
    };
    let auths = top
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if auths.is_null() {
        *auths = Value::Object(Map::new());
    }
    match auths {
        Value::Object(m) => Ok(m),
        _ => Err(json_error(file, "auths is not an object")),
    }
}

fn json_error(file: &Path, message: &str) -> Error {
    Error::Json {
        file: file.display().to_string(),
        message: message.to_owned(),
    }
}

/// Reads a credentials file: `None` when it does not exist; an error naming it when it cannot
/// be read, is too large or is not a JSON object.
fn read_config(file: &Path) -> Result<Option<Value>> {
    // Non-blocking, so that a FIFO put there cannot hang the open; it is refused below.
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(file)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(file, e)),
    };
    let meta = f.metadata().at(file)?;
    if !meta.is_file() {
        return Err(json_error(file, "not a regular file"));
    }
    if meta.len() > MAX_CONFIG_SIZE {
        return Err(Error::TooLarge {
            file: file.display().to_string(),
            size: meta.len(),
            cap: MAX_CONFIG_SIZE,
        });
    }
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_SIZE + 1)
        .read_to_end(&mut bytes)
        .at(file)?;
    if bytes.len() as u64 > MAX_CONFIG_SIZE {
        return Err(Error::TooLarge {
            file: file.display().to_string(),
            size: bytes.len() as u64,
            cap: MAX_CONFIG_SIZE,
        });
    }
    // An empty file is an empty configuration (docker and containers read it so).
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Value::Object(Map::new())));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        json_error(
            file,
            &format!(
                "not valid JSON (line {}, column {}): refusing to use it",
                e.line(),
                e.column()
            ),
        )
    })?;
    if !value.is_object() {
        return Err(json_error(file, "not a JSON object: refusing to use it"));
    }
    Ok(Some(value))
}

/// Distinguishes temporary files of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `file` with `config`: a new file (mode 0600) in the same directory, synced and
/// renamed over it. The directory is made (0700) if missing; a `file` that is a symbolic link
/// or not a regular file is refused.
fn write_config(file: &Path, config: &Value) -> Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = file
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file name", file.display())))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .at(dir)?;
    match fs::symlink_metadata(file) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = fs::read_link(file).unwrap_or_default();
            return Err(Error::Invalid(format!(
                "{}: is a symbolic link (to {}): not writing through it or replacing it; point DOCKER_CONFIG or REGISTRY_AUTH_FILE at the real file",
                file.display(),
                target.display()
            )));
        }
        Ok(m) if !m.is_file() => return Err(json_error(file, "not a regular file")),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(file, e)),
    }
    let mut bytes = serde_json::to_vec_pretty(config)
        .map_err(|e| json_error(file, &format!("cannot encode: {e}")))?;
    bytes.push(b'\n');
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".layoutfs-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        // The umask may only have taken bits away; make it exactly 0600.
        f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, file)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(file, e));
    }
    File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
    Ok(())
}

/// What a helper run printed.
struct HelperOutput {
    success: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl HelperOutput {
    /// Whether the helper said it holds nothing for the server.
    fn not_found(&self) -> bool {
        !self.success
            && [&self.stdout, &self.stderr]
                .iter()
                .any(|b| String::from_utf8_lossy(b).contains(HELPER_NOT_FOUND))
    }

    fn failure(&self, name: &str, action: &str, registry: &str) -> Error {
        let said = [&self.stderr, &self.stdout]
            .iter()
            .map(|b| String::from_utf8_lossy(b).trim().to_owned())
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        let first_line = said.lines().next().unwrap_or("no message");
        Error::Invalid(format!(
            "{HELPER_PREFIX}{name} {action} for {registry} failed: {}",
            printable(first_line)
        ))
    }
}

/// Asks helper `name` (configured in `file`) for `registry`'s credential.
fn helper_get(
    places: &Places,
    name: &str,
    file: &Path,
    registry: &str,
) -> Result<Option<Credential>> {
    let server = credential_key(registry);
    let out = run_helper(places, name, file, "get", server.as_bytes())?;
    if out.not_found() {
        return Ok(None);
    }
    if !out.success {
        return Err(out.failure(name, "get", registry));
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        username: String,
        secret: String,
    }
    let answer: Answer = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::Invalid(format!(
            "{HELPER_PREFIX}{name} get for {registry}: not a credential in its answer ({e})"
        ))
    })?;
    Ok(Some(if answer.username == HELPER_TOKEN_USER {
        Credential::IdentityToken(answer.secret)
    } else {
        Credential::Basic {
            user: answer.username,
            password: answer.secret,
        }
    }))
}

/// The helper program `docker-credential-NAME` on the search path.
fn find_helper(places: &Places, name: &str, file: &Path) -> Result<PathBuf> {
    let program = format!("{HELPER_PREFIX}{name}");
    let dirs = places
        .helper_path
        .as_ref()
        .map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(&program))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{program} (configured in {}): not found in PATH",
                file.display()
            ))
        })
}

/// Runs `docker-credential-NAME ACTION` with `input` on its standard input, for at most
/// [`HELPER_TIMEOUT`].
fn run_helper(
    places: &Places,
    name: &str,
    file: &Path,
    action: &str,
    input: &[u8],
) -> Result<HelperOutput> {
    run_helper_within(places, name, file, action, input, HELPER_TIMEOUT)
}

/// [`run_helper`] with the time limit given: the helper is killed when it runs out.
fn run_helper_within(
    places: &Places,
    name: &str,
    file: &Path,
    action: &str,
    input: &[u8],
    timeout: Duration,
) -> Result<HelperOutput> {
    let exe = find_helper(places, name, file)?;
    let what = format!("{HELPER_PREFIX}{name} {action}");
    let failed = |e: io::Error| Error::Stream {
        what: what.clone(),
        source: e,
    };
    let mut child = Command::new(&exe)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = pipe {
                let _ = p.take(MAX_HELPER_OUTPUT).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_thread = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_thread = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input fails on its own; its status says so.
        let _ = stdin.write_all(input);
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(failed)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Invalid(format!(
                "{what}: no answer within {timeout:?}"
            )));
        }
        thread::sleep(HELPER_POLL);
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    Ok(HelperOutput {
        success: status.success(),
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "127.0.0.1:5000";

    /// Every place inside one temporary directory.
    struct Home {
        dir: tempfile::TempDir,
        places: Places,
    }

    impl Home {
        fn new() -> Home {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path();
            let places = Places {
                auth_file: None,
                runtime_auth: Some(p.join("run/containers/auth.json")),
                config_auth: Some(p.join("config/containers/auth.json")),
                docker_dir: Some(p.join("docker")),
                helper_path: Some(p.join("bin").into_os_string()),
            };
            Home { dir, places }
        }

        fn docker(&self) -> PathBuf {
            self.places.docker_config().unwrap()
        }

        fn write(&self, file: &Path, text: &str) {
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(file, text).unwrap();
        }

        /// A credential helper `docker-credential-fake` keeping entries as files beside it.
        fn fake_helper(&self) {
            let bin = self.dir.path().join("bin");
            fs::create_dir_all(&bin).unwrap();
            let script = bin.join("docker-credential-fake");
            fs::write(
                &script,
                r#"#!/bin/sh
store="$(dirname "$0")/fake-store"; mkdir -p "$store"
key() { printf %s "$1" | tr -c 'A-Za-z0-9' _; }
case "$1" in
get) url=$(cat); f="$store/$(key "$url")"
     case "$url" in *fail*) echo "keyring locked" >&2; exit 3 ;; *slow*) exec sleep 30 ;; esac
     if [ -f "$f" ]; then cat "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
store) in=$(cat); url=$(printf %s "$in" | sed -n 's/.*"ServerURL":"\([^"]*\)".*/\1/p')
     printf %s "$in" > "$store/$(key "$url")" ;;
erase) url=$(cat); f="$store/$(key "$url")"
     if [ -f "$f" ]; then rm "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
probe) ;;
*) echo "unknown action $1" >&2; exit 2 ;;
esac
"#,
            )
            .unwrap();
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
            // Another test thread's fork may hold the new file open for a moment (ETXTBSY).
            for _ in 0..100 {
                match Command::new(&script).arg("probe").status() {
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    r => {
                        assert!(r.unwrap().success());
                        return;
                    }
                }
            }
            panic!("{} stays busy", script.display());
        }

        fn helper_entries(&self) -> usize {
            fs::read_dir(self.dir.path().join("bin/fake-store"))
                .map(|d| d.count())
                .unwrap_or(0)
        }
    }

    fn basic(user: &str, password: &str) -> Credential {
        Credential::Basic {
            user: user.into(),
            password: password.into(),
        }
    }

    fn auth(user: &str, password: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    }

    fn json(file: &Path) -> Value {
        serde_json::from_slice(&fs::read(file).unwrap()).unwrap()
    }

    #[test]
    fn store_then_lookup_keeps_everything_else() {
        let h = Home::new();
        let docker = h.docker();
        let before = serde_json::json!({
            "auths": {
                "other.example.com": { "auth": auth("bob", "pw"), "email": "b@x" },
                "127.0.0.1:5000": { "auth": auth("old", "old") },
            },
            "credHelpers": { "gcr.io": "gcloud" },
            "psFormat": "table {{.ID}}",
        });
        h.write(&docker, &before.to_string());
        fs::set_permissions(&docker, fs::Permissions::from_mode(0o644)).unwrap();

        let wrote = store(&h.places, HOST, "alice", "s3cr:t").unwrap();
        assert_eq!(wrote.to, Source::File(docker.clone()));
        assert_eq!(wrote.replaced, []);
        let (cred, from) = lookup(&h.places, HOST).unwrap().unwrap();
        assert_eq!(cred, basic("alice", "s3cr:t"));
        assert_eq!(from, Source::File(docker.clone()));

        let after = json(&docker);
        let mut expected = before.clone();
        expected["auths"][HOST] = serde_json::json!({ "auth": auth("alice", "s3cr:t") });
        assert_eq!(after, expected);
        let mode = fs::metadata(&docker).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, FILE_MODE);
        // No temporary file left beside it.
        let names: Vec<_> = fs::read_dir(docker.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [OsString::from("config.json")]);
        assert_eq!(
            lookup(&h.places, "other.example.com").unwrap().unwrap().0,
            basic("bob", "pw")
        );
    }

    #[test]
    fn store_removes_credentials_that_would_shadow_it() {
        let h = Home::new();
        let runtime = h.places.runtime_auth.clone().unwrap();
        let config = h.places.config_auth.clone().unwrap();
        let old = serde_json::json!({ "auths": {
            HOST: { "auth": auth("old", "old") },
            "keep.example.com": { "auth": auth("k", "k") },
        }})
        .to_string();
        h.write(&runtime, &old);
        h.write(&config, &old);
        let stored = store(&h.places, HOST, "alice", "pw").unwrap();
        assert_eq!(stored.to, Source::File(h.docker()));
        assert_eq!(
            stored.replaced,
            [Source::File(runtime.clone()), Source::File(config)]
        );
        assert_eq!(
            lookup(&h.places, HOST).unwrap(),
            Some((basic("alice", "pw"), Source::File(h.docker())))
        );
        assert_eq!(
            lookup(&h.places, "keep.example.com").unwrap().unwrap().1,
            Source::File(runtime.clone())
        );

        // A malformed file read first stops it before anything is written.
        let h = Home::new();
        h.write(&runtime_of(&h), "{oops");
        let err = store(&h.places, HOST, "alice", "pw")
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.json"), "{err}");
        assert!(!h.docker().exists());
    }

    fn runtime_of(h: &Home) -> PathBuf {
        h.places.runtime_auth.clone().unwrap()
    }

    #[test]
    fn store_makes_a_private_directory() {
        let h = Home::new();
        store(&h.places, HOST, "alice", "secret").unwrap();
        let dir = h.places.docker_dir.clone().unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            DIR_MODE
        );
        assert_eq!(
            fs::metadata(h.docker()).unwrap().permissions().mode() & 0o777,
            FILE_MODE
        );
    }

    #[test]
    fn docker_hub_uses_dockers_key() {
        let h = Home::new();
        // As `docker login` writes it, next to a stale entry under another of Hub's names.
        h.write(
            &h.docker(),
            &serde_json::json!({ "auths": {
                "https://index.docker.io/v1/": { "auth": auth("hubuser", "pw") },
            }})
            .to_string(),
        );
        for name in ["docker.io", "index.docker.io"] {
            assert_eq!(
                lookup(&h.places, name).unwrap().unwrap().0,
                basic("hubuser", "pw"),
                "{name}"
            );
        }
        h.write(
            &h.docker(),
            &serde_json::json!({ "auths": { "docker.io": { "auth": auth("stale", "x") } } })
                .to_string(),
        );
        store(&h.places, "docker.io", "alice", "pw2").unwrap();
        let auths = json(&h.docker())["auths"].clone();
        assert_eq!(
            auths,
            serde_json::json!({ "https://index.docker.io/v1/": { "auth": auth("alice", "pw2") } })
        );
        assert_eq!(
            lookup(&h.places, "docker.io").unwrap().unwrap().0,
            basic("alice", "pw2")
        );
    }

    #[test]
    fn malformed_files_are_named_and_never_overwritten() {
        let cases = [
            "{\"auths\": {",
            "[1, 2]",
            "{\"auths\": []}",
            "{\"credHelpers\": 3}",
        ];
        for text in cases {
            let h = Home::new();
            let docker = h.docker();
            h.write(&docker, text);
            let shown = docker.display().to_string();
            let err = lookup(&h.places, HOST).unwrap_err().to_string();
            assert!(
                err.starts_with(&shown) && !err.contains('\n'),
                "{text}: {err}"
            );
            let err = store(&h.places, HOST, "alice", "pw")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&shown), "{text}: {err}");
            let err = erase(&h.places, HOST).unwrap_err().to_string();
            assert!(err.starts_with(&shown), "{text}: {err}");
            assert_eq!(fs::read_to_string(&docker).unwrap(), text);
        }
        // A bad entry for the host asked about, too.
        let h = Home::new();
        h.write(
            &h.docker(),
            r#"{"auths": {"127.0.0.1:5000": {"auth": "%%%"}}}"#,
        );
        let err = lookup(&h.places, HOST).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("base64"),
            "{err}"
        );
    }

    #[test]
    fn missing_files_and_entries_mean_anonymous() {
        let h = Home::new();
        assert_eq!(lookup(&h.places, HOST).unwrap(), None);
        h.write(&h.docker(), "");
        h.write(
            h.places.runtime_auth.as_ref().unwrap(),
            &serde_json::json!({ "auths": { "quay.io": { "auth": auth("q", "q") } } }).to_string(),
        );
        assert_eq!(lookup(&h.places, HOST).unwrap(), None);
        assert_eq!(erase(&h.places, HOST).unwrap(), []);
    }

    #[test]
    fn lookup_order_and_registry_auth_file() {
        let mut h = Home::new();
        let entry = |u: &str| {
            serde_json::json!({ "auths": { HOST: { "auth": auth(u, "pw") } } }).to_string()
        };
        let runtime = h.places.runtime_auth.clone().unwrap();
        let config = h.places.config_auth.clone().unwrap();
        h.write(&h.docker(), &entry("docker"));
        assert_eq!(
            lookup(&h.places, HOST).unwrap().unwrap().0,
            basic("docker", "pw")
        );
        h.write(&config, &entry("config"));
        assert_eq!(
            lookup(&h.places, HOST).unwrap().unwrap().0,
            basic("config", "pw")
        );
        h.write(&runtime, &entry("runtime"));
        let (cred, from) = lookup(&h.places, HOST).unwrap().unwrap();
        assert_eq!(
            (cred, from),
            (basic("runtime", "pw"), Source::File(runtime))
        );

        // REGISTRY_AUTH_FILE is the only place once set: read and written.
        let file = h.dir.path().join("elsewhere/auth.json");
        h.places.auth_file = Some(file.clone());
        assert_eq!(lookup(&h.places, HOST).unwrap(), None);
        assert_eq!(
            store(&h.places, HOST, "alice", "pw").unwrap().to,
            Source::File(file.clone())
        );
        assert_eq!(
            lookup(&h.places, HOST).unwrap().unwrap().0,
            basic("alice", "pw")
        );
        assert_eq!(
            json(&h.docker()),
            serde_json::from_str::<Value>(&entry("docker")).unwrap()
        );
        assert_eq!(erase(&h.places, HOST).unwrap(), [Source::File(file)]);
        h.places.auth_file = None;
        assert_eq!(
            lookup(&h.places, HOST).unwrap().unwrap().0,
            basic("runtime", "pw")
        );
    }

    #[test]
    fn erase_removes_from_every_file_and_keeps_the_rest() {
        let h = Home::new();
        let both = serde_json::json!({ "auths": {
            HOST: { "auth": auth("a", "b") },
            "https://127.0.0.1:5000/v2/": { "auth": auth("a", "b") },
            "keep.example.com": { "auth": auth("k", "k") },
        }})
        .to_string();
        let files = [
            h.places.runtime_auth.clone().unwrap(),
            h.places.config_auth.clone().unwrap(),
            h.docker(),
        ];
        for f in &files {
            h.write(f, &both);
        }
        let removed = erase(&h.places, HOST).unwrap();
        assert_eq!(
            removed,
            files.iter().cloned().map(Source::File).collect::<Vec<_>>()
        );
        assert_eq!(lookup(&h.places, HOST).unwrap(), None);
        for f in &files {
            assert_eq!(
                json(f),
                serde_json::json!({ "auths": { "keep.example.com": { "auth": auth("k", "k") } } })
            );
        }
        assert_eq!(erase(&h.places, HOST).unwrap(), []);
    }

    #[test]
    fn symlinked_files_are_read_but_not_written() {
        let h = Home::new();
        let real = h.dir.path().join("dotfiles/config.json");
        let text =
            serde_json::json!({ "auths": { HOST: { "auth": auth("linked", "pw") } } }).to_string();
        h.write(&real, &text);
        fs::create_dir_all(h.places.docker_dir.as_ref().unwrap()).unwrap();
        std::os::unix::fs::symlink(&real, h.docker()).unwrap();

        assert_eq!(
            lookup(&h.places, HOST).unwrap().unwrap().0,
            basic("linked", "pw")
        );
        for err in [
            store(&h.places, HOST, "alice", "pw").unwrap_err(),
            erase(&h.places, HOST).unwrap_err(),
        ] {
            let err = err.to_string();
            assert!(
                err.contains("symbolic link") && err.contains(&real.display().to_string()),
                "{err}"
            );
        }
        assert!(fs::symlink_metadata(h.docker())
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&real).unwrap(), text);
    }

    #[test]
    fn bad_user_names_are_refused() {
        let h = Home::new();
        for (user, password) in [("a:b", "pw"), ("", "pw"), ("alice", "")] {
            assert!(store(&h.places, HOST, user, password).is_err(), "{user:?}");
        }
        assert!(!h.docker().exists());
    }

    #[test]
    fn identity_tokens_are_read() {
        let h = Home::new();
        h.write(
            &h.docker(),
            r#"{"auths": {"127.0.0.1:5000": {"identitytoken": "tok"}}}"#,
        );
        let (cred, _) = lookup(&h.places, HOST).unwrap().unwrap();
        assert_eq!(cred, Credential::IdentityToken("tok".into()));
        assert_eq!(format!("{cred:?}"), "IdentityToken(..)");
        assert!(!format!("{:?}", basic("u", "hidden")).contains("hidden"));
    }

    #[test]
    fn credential_helpers_store_lookup_and_erase() {
        let h = Home::new();
        h.fake_helper();
        let config = serde_json::json!({
            "auths": { "keep.example.com": { "auth": auth("k", "k") } },
            "credHelpers": { HOST: "fake" },
        })
        .to_string();
        h.write(&h.docker(), &config);
        let helper = Source::Helper {
            name: "fake".into(),
            config: h.docker(),
        };

        assert_eq!(lookup(&h.places, HOST).unwrap(), None);
        assert_eq!(store(&h.places, HOST, "alice", "pw").unwrap().to, helper);
        assert_eq!(h.helper_entries(), 1);
        assert_eq!(fs::read_to_string(h.docker()).unwrap(), config);
        assert_eq!(
            lookup(&h.places, HOST).unwrap(),
            Some((basic("alice", "pw"), helper.clone()))
        );
        // Not configured for another host: that one is looked up in auths.
        assert_eq!(
            lookup(&h.places, "keep.example.com").unwrap().unwrap().1,
            Source::File(h.docker())
        );
        assert_eq!(erase(&h.places, HOST).unwrap(), [helper]);
        assert_eq!(h.helper_entries(), 0);
        assert_eq!(lookup(&h.places, HOST).unwrap(), None);
        assert_eq!(erase(&h.places, HOST).unwrap(), []);
    }

    #[test]
    fn creds_store_gets_docker_hub_under_dockers_key() {
        let h = Home::new();
        h.fake_helper();
        h.write(&h.docker(), r#"{"credsStore": "fake"}"#);
        store(&h.places, "docker.io", "alice", "pw").unwrap();
        let kept = h
            .dir
            .path()
            .join("bin/fake-store/https___index_docker_io_v1_");
        assert!(fs::read_to_string(&kept)
            .unwrap()
            .contains("\"Username\":\"alice\""));
        let (cred, from) = lookup(&h.places, "docker.io").unwrap().unwrap();
        assert_eq!(cred, basic("alice", "pw"));
        assert!(
            from.to_string().contains("docker-credential-fake"),
            "{from}"
        );
        // An entry in auths wins over the store, as in docker_credential.
        h.write(
            &h.docker(),
            &serde_json::json!({ "credsStore": "fake", "auths": { "docker.io": { "auth": auth("file", "pw") } } })
                .to_string(),
        );
        assert_eq!(
            lookup(&h.places, "docker.io").unwrap().unwrap().0,
            basic("file", "pw")
        );
    }

    #[test]
    fn places_from_the_environment() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let p = Places::from_vars(
            vars(&[("HOME", "/h"), ("PATH", "/bin"), ("XDG_RUNTIME_DIR", "")]),
            1000,
        );
        assert_eq!(
            p,
            Places {
                auth_file: None,
                runtime_auth: Some("/run/containers/1000/auth.json".into()),
                config_auth: Some("/h/.config/containers/auth.json".into()),
                docker_dir: Some("/h/.docker".into()),
                helper_path: Some("/bin".into()),
            }
        );
        assert_eq!(
            p.files(),
            [
                PathBuf::from("/run/containers/1000/auth.json"),
                "/h/.config/containers/auth.json".into(),
                "/h/.docker/config.json".into(),
            ]
        );
        assert_eq!(
            p.store_file().unwrap(),
            PathBuf::from("/h/.docker/config.json")
        );
        let p = Places::from_vars(
            vars(&[
                ("HOME", "/h"),
                ("REGISTRY_AUTH_FILE", "/a.json"),
                ("XDG_RUNTIME_DIR", "/r"),
                ("XDG_CONFIG_HOME", "/c"),
                ("DOCKER_CONFIG", "/d"),
            ]),
            0,
        );
        assert_eq!(p.runtime_auth, Some("/r/containers/auth.json".into()));
        assert_eq!(p.config_auth, Some("/c/containers/auth.json".into()));
        assert_eq!(p.docker_config(), Some("/d/config.json".into()));
        assert_eq!(p.files(), [PathBuf::from("/a.json")]);
        assert_eq!(p.store_file().unwrap(), PathBuf::from("/a.json"));
        let none = Places::from_vars(vars(&[]), 0);
        assert_eq!(none.files(), [PathBuf::from("/run/containers/0/auth.json")]);
        assert!(store(&none, HOST, "alice", "pw")
            .unwrap_err()
            .to_string()
            .contains("set HOME"));
    }

    #[test]
    fn a_plain_entry_beside_a_creds_store_is_replaced() {
        let h = Home::new();
        h.fake_helper();
        h.write(
            &h.docker(),
            &serde_json::json!({ "credsStore": "fake", "auths": { HOST: { "auth": auth("old", "old") } } })
                .to_string(),
        );
        let stored = store(&h.places, HOST, "alice", "pw").unwrap();
        let helper = Source::Helper {
            name: "fake".into(),
            config: h.docker(),
        };
        assert_eq!(stored.to, helper);
        assert_eq!(stored.replaced, [Source::File(h.docker())]);
        assert_eq!(
            lookup(&h.places, HOST).unwrap(),
            Some((basic("alice", "pw"), helper))
        );
    }

    #[test]
    fn a_failing_helper_is_one_line_naming_it() {
        let h = Home::new();
        h.fake_helper();
        h.write(&h.docker(), r#"{"credsStore": "fake"}"#);
        let err = lookup(&h.places, "fail.example.com")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "docker-credential-fake get for fail.example.com failed: keyring locked"
        );
    }

    #[test]
    fn a_helper_that_hangs_is_killed() {
        let h = Home::new();
        h.fake_helper();
        let limit = Duration::from_millis(300);
        let started = Instant::now();
        let result = run_helper_within(
            &h.places,
            "fake",
            &h.docker(),
            "get",
            b"slow.example.com",
            limit,
        );
        let err = result
            .err()
            .expect("a hanging helper must fail")
            .to_string();
        assert_eq!(err, "docker-credential-fake get: no answer within 300ms");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_fifo_is_refused_without_hanging() {
        let h = Home::new();
        fs::create_dir_all(h.places.docker_dir.as_ref().unwrap()).unwrap();
        let c = std::ffi::CString::new(h.docker().into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = lookup(&h.places, HOST).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_missing_or_odd_helper_is_an_error_naming_it() {
        let h = Home::new();
        h.write(
            &h.docker(),
            r#"{"credHelpers": {"127.0.0.1:5000": "nope"}}"#,
        );
        let err = lookup(&h.places, HOST).unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-nope") && err.contains("config.json"),
            "{err}"
        );
        h.write(&h.docker(), r#"{"credsStore": "../../bin/sh"}"#);
        let err = lookup(&h.places, HOST).unwrap_err().to_string();
        assert!(err.contains("not a plain name"), "{err}");
    }
}
