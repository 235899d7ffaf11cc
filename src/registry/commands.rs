//! The registry commands as the command line runs them: references parsed, the password read
//! (from standard input, or asked on the terminal without echo), the work done through the
//! module's blocking interface, and the result printed as lines or as JSON.

use std::io::{BufRead, IsTerminal, Write};

use serde::Serialize;

use crate::cli::{print_json, stdout_err};
use crate::content::{Content, Image};
use crate::error::{Error, Result};

use super::{Options, PullOptions, RemoteRef};

/// `layoutfs pull`: prints each name stored (or, with `json`, what was pulled).
pub fn pull(
    store: &dyn Content,
    refs: &[String],
    opts: &PullOptions,
    plain_http: bool,
    json: bool,
) -> Result<()> {
    let refs = refs
        .iter()
        .map(|r| RemoteRef::parse(r))
        .collect::<Result<Vec<_>>>()?;
    let pulled = super::pull(store, &refs, opts, &Options::from_env(plain_http))?;
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Row {
        name: String,
        source: String,
        digest: String,
        media_type: String,
        new_blobs: usize,
        new_bytes: u64,
        referrers: usize,
    }
    let rows: Vec<Row> = pulled
        .iter()
        .map(|p| Row {
            name: p.name.to_string(),
            source: p.source.clone(),
            digest: p.target.digest.to_string(),
            media_type: p.target.media_type.clone(),
            new_blobs: p.imported.new_blobs,
            new_bytes: p.imported.new_bytes,
            referrers: p.referrers,
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        return print_json(&mut out, &rows);
    }
    for r in &rows {
        writeln!(out, "{}", r.name).map_err(stdout_err)?;
    }
    Ok(())
}

/// `layoutfs push`: prints each destination (or, with `json`, what was sent).
pub fn push(
    store: &dyn Content,
    images: &[Image],
    dest: Option<&str>,
    referrers: bool,
    plain_http: bool,
    json: bool,
) -> Result<()> {
    let dest = match dest {
        Some(d) => {
            let r = RemoteRef::parse(d)?;
            if images.len() > 1 && names_one_image(d) {
                return Err(Error::Invalid(format!(
                    "{d}: a tag or digest names one image, and the source has {}: give a repository",
                    images.len()
                )));
            }
            Some(r)
        }
        None => None,
    };
    let pushed = super::push(
        store,
        images,
        dest.as_ref(),
        referrers,
        &Options::from_env(plain_http),
    )?;
    let mut out = std::io::stdout().lock();
    if json {
        return print_json(&mut out, &pushed);
    }
    for d in &pushed.destinations {
        writeln!(out, "{d}").map_err(stdout_err)?;
    }
    Ok(())
}

/// Whether a reference as written has a tag or a digest (a `:` after its last `/`, or `@`).
fn names_one_image(r: &str) -> bool {
    r.contains('@')
        || r.rsplit('/').next().is_some_and(|last| last.contains(':')) && r.contains('/')
}

/// `layoutfs login`: checks the credential, keeps it, says where.
pub fn login(
    registry: &str,
    user: Option<&str>,
    password_stdin: bool,
    plain_http: bool,
) -> Result<()> {
    let registry = registry_host(registry)?;
    let stdin = std::io::stdin();
    let user = match user {
        Some(u) => u.to_owned(),
        None if stdin.is_terminal() && !password_stdin => prompt("Username: ", true)?,
        None => return Err(Error::Invalid("login: no user name: pass -u USER".into())),
    };
    let password = if password_stdin {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::Stream {
                what: "standard input".into(),
                source: e,
            })?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else if stdin.is_terminal() {
        prompt("Password: ", false)?
    } else {
        return Err(Error::Invalid(
            "login: no password: pass --password-stdin and write it to standard input".into(),
        ));
    };
    if password.is_empty() {
        return Err(Error::Invalid("login: empty password".into()));
    }
    let to = super::login(&registry, &user, &password, &Options::from_env(plain_http))?;
    eprintln!("Login succeeded: credential of {user} for {registry} kept in {to}");
    Ok(())
}

/// `layoutfs logout`.
pub fn logout(registry: &str) -> Result<()> {
    let registry = registry_host(registry)?;
    let from = super::logout(&registry, &Options::from_env(false))?;
    if from.is_empty() {
        return Err(Error::Invalid(format!("not logged in to {registry}")));
    }
    eprintln!(
        "Removed the credential for {registry} from {}",
        from.join(", ")
    );
    Ok(())
}

/// A registry host as given to login/logout (`docker.io`, `HOST:PORT`, a URL's host).
fn registry_host(s: &str) -> Result<String> {
    let s = s
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if s.is_empty() || s.contains('/') {
        return Err(Error::Invalid(format!("{s:?}: a registry is HOST[:PORT]")));
    }
    // A reference on that host tells whether it is one (and maps index.docker.io).
    let r = RemoteRef::parse(&format!("{s}/x"))?;
    Ok(r.registry().to_owned())
}

/// Asks on the terminal; without echo for a password.
fn prompt(question: &str, echo: bool) -> Result<String> {
    let err = |e: std::io::Error| Error::Stream {
        what: "the terminal".into(),
        source: e,
    };
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios calls on standard input with a zeroed struct they fill in.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if !echo && libc::tcgetattr(fd, &mut t) == 0 {
            let old = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(fd, libc::TCSANOW, &t);
            Some(old)
        } else {
            None
        }
    };
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if let Some(old) = saved {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
        eprintln!();
    }
    read.map_err(err)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}
