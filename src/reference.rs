//! Image names: a repository (the distribution reference grammar, never normalised) with a tag
//! or a digest. `busybox`, `library/busybox` and `docker.io/library/busybox` are three
//! different repositories.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// Longest repository name the distribution grammar allows.
pub const MAX_REPOSITORY_LEN: usize = 255;
/// Longest tag the distribution grammar allows.
pub const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid image name {0:?}: {1}")]
    Invalid(String, &'static str),
    #[error("invalid image name {0:?}: {1}")]
    Digest(String, DigestError),
    /// A name pinned to one digest given to other content.
    #[error("image name {name} is pinned to its digest and cannot name {target}")]
    Pinned { name: String, target: Digest },
}

/// What follows the repository in a reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Tag(String),
    Digest(Digest),
}

/// A full image name: repository plus tag or digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    repository: String,
    target: Target,
}

impl Reference {
    pub fn tagged(repository: &str, tag: &str) -> Result<Reference, ReferenceError> {
        let full = format!("{repository}:{tag}");
        check_repository(repository).map_err(|why| ReferenceError::Invalid(full.clone(), why))?;
        check_tag(tag).map_err(|why| ReferenceError::Invalid(full, why))?;
        Ok(Reference {
            repository: repository.to_owned(),
            target: Target::Tag(tag.to_owned()),
        })
    }

    pub fn digested(repository: &str, digest: Digest) -> Result<Reference, ReferenceError> {
        check_repository(repository)
            .map_err(|why| ReferenceError::Invalid(format!("{repository}@{digest}"), why))?;
        Ok(Reference {
            repository: repository.to_owned(),
            target: Target::Digest(digest),
        })
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The same tag or digest in another repository.
    pub fn with_repository(&self, repository: &str) -> Result<Reference, ReferenceError> {
        match &self.target {
            Target::Tag(t) => Reference::tagged(repository, t),
            Target::Digest(d) => Reference::digested(repository, d.clone()),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Checks that this name may name content of digest `target`: a name with a digest names
    /// exactly that content, and nothing else, wherever names are made.
    pub fn check_target(&self, target: &Digest) -> Result<(), ReferenceError> {
        match &self.target {
            Target::Digest(d) if d != target => Err(ReferenceError::Pinned {
                name: self.to_string(),
                target: target.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// This name once its content `old` is rewritten as `new` (a conversion of media types):
    /// a name pinned to `old` names `new`; any other stays as it is.
    pub fn follow(&self, old: &Digest, new: &Digest) -> Result<Reference, ReferenceError> {
        match &self.target {
            Target::Digest(d) if d == old && old != new => {
                Reference::digested(&self.repository, new.clone())
            }
            _ => Ok(self.clone()),
        }
    }

    pub fn tag(&self) -> Option<&str> {
        match &self.target {
            Target::Tag(t) => Some(t),
            Target::Digest(_) => None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Tag(t) => write!(f, "{}:{}", self.repository, t),
            Target::Digest(d) => write!(f, "{}@{}", self.repository, d),
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    /// Parses `repo:tag` or `repo@digest`. A bare repository is not a full reference: see
    /// [`RefQuery`] for the command-line forms that allow one.
    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        match RefQuery::from_str(s)? {
            RefQuery::Image(r) => Ok(r),
            RefQuery::Repository(_) => Err(ReferenceError::Invalid(
                s.to_owned(),
                "a tag (:TAG) or digest (@DIGEST) is required",
            )),
        }
    }
}

/// What a user names on the command line: one image, or every image of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefQuery {
    Image(Reference),
    Repository(String),
}

impl FromStr for RefQuery {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<RefQuery, ReferenceError> {
        if let Some((repo, digest)) = s.split_once('@') {
            let digest = digest
                .parse()
                .map_err(|e| ReferenceError::Digest(s.to_owned(), e))?;
            return Reference::digested(repo, digest).map(RefQuery::Image);
        }
        // A ':' after the last '/' starts a tag; one before it belongs to host:port.
        let last_slash = s.rfind('/').map_or(0, |i| i + 1);
        match s[last_slash..].find(':') {
            Some(i) => {
                let colon = last_slash + i;
                Reference::tagged(&s[..colon], &s[colon + 1..]).map(RefQuery::Image)
            }
            None => {
                check_repository(s).map_err(|why| ReferenceError::Invalid(s.to_owned(), why))?;
                Ok(RefQuery::Repository(s.to_owned()))
            }
        }
    }
}

/// Checks a tag against `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), &'static str> {
    let bytes = tag.as_bytes();
    let Some(first) = bytes.first() else {
        return Err("empty tag");
    };
    if bytes.len() > MAX_TAG_LEN {
        return Err("tag longer than 128 characters");
    }
    if !(first.is_ascii_alphanumeric() || *first == b'_') {
        return Err("a tag starts with a letter, digit or '_'");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("a tag holds only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// Checks a repository name: an optional `host[:port]/` and then lowercase path components
/// of `[a-z0-9]` joined by `.`, `_`, `__` or runs of `-`, separated by `/`.
pub fn check_repository(repo: &str) -> Result<(), &'static str> {
    if repo.is_empty() {
        return Err("empty repository name");
    }
    if repo.len() > MAX_REPOSITORY_LEN {
        return Err("repository name longer than 255 characters");
    }
    let mut components = repo.split('/').peekable();
    let first = components.next().unwrap_or_default();
    let has_more = components.peek().is_some();
    if has_more && looks_like_host(first) {
        check_host(first)?;
    } else {
        check_named_component(first)?;
    }
    for c in components {
        check_named_component(c)?;
    }
    Ok(())
}

/// Digits of a component that reads as an image ID.
const IMAGE_ID_HEX_LEN: usize = 64;

/// A path component that is not 64 hexadecimal digits: docker refuses such a name (it reads
/// as an image ID), and in the mount a directory so named inside a repository is a docker
/// archive's layer directory, never a repository.
fn check_named_component(c: &str) -> Result<(), &'static str> {
    check_path_component(c)?;
    if c.len() == IMAGE_ID_HEX_LEN && c.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("a component of 64 hexadecimal digits reads as an image ID");
    }
    Ok(())
}

/// The first component is a host when it has a '.' or ':' or is `localhost`, or holds
/// uppercase letters (which only a host may).
fn looks_like_host(c: &str) -> bool {
    c.contains('.')
        || c.contains(':')
        || c == "localhost"
        || c.bytes().any(|b| b.is_ascii_uppercase())
}

fn check_host(host: &str) -> Result<(), &'static str> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err("a registry port is digits");
        }
    }
    for label in name.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-';
        if !ok {
            return Err("invalid registry host");
        }
    }
    Ok(())
}

fn check_path_component(c: &str) -> Result<(), &'static str> {
    const WHY: &str = "path components are lowercase [a-z0-9] joined by '.', '_', '__' or '-'";
    let b = c.as_bytes();
    if b.is_empty() {
        return Err("empty path component");
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        // A run of [a-z0-9]+.
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return Err(WHY);
        }
        if i == b.len() {
            return Ok(());
        }
        // A separator: '.', '_', '__' or '-'+.
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return Err(WHY),
        }
        if i == b.len() {
            return Err(WHY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_references() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases = [
            ("busybox:latest", "busybox", Some("latest")),
            ("library/busybox:1.36", "library/busybox", Some("1.36")),
            (
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox",
                Some("latest"),
            ),
            ("localhost:5000/a/b:v1", "localhost:5000/a/b", Some("v1")),
            ("a-b__c.d_e--f:_x", "a-b__c.d_e--f", Some("_x")),
            (
                "Registry.Example.com/x:Tag-1",
                "Registry.Example.com/x",
                Some("Tag-1"),
            ),
        ];
        for (s, repo, tag) in cases {
            let r: Reference = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(r.repository(), repo, "{s}");
            assert_eq!(r.tag(), tag, "{s}");
            assert_eq!(r.to_string(), s);
        }
        let r: Reference = format!("busybox@{d}").parse().unwrap();
        assert_eq!(r.target(), &Target::Digest(d.parse().unwrap()));
    }

    #[test]
    fn invalid_references() {
        let long_tag = format!("x:{}", "a".repeat(129));
        let id = "0123456789abcdef".repeat(4);
        let (id_whole, id_inside) = (format!("{id}:1"), format!("app/{id}:1"));
        let cases = [
            &id_whole,
            &id_inside,
            "",
            "Busybox:latest",
            "busybox:",
            "busybox:-x",
            "busybox:a/b",
            "a//b:x",
            "/a:x",
            "a/:x",
            "a..b:x",
            "a___b:x",
            "a-:x",
            "-a:x",
            "a b:x",
            "host:port/a:x",
            "busybox@sha256:abc",
            "busybox@md5:00",
            "../etc:x",
            "a/../b:x",
            &long_tag,
        ];
        let hexish = format!("app/{}:1", "a".repeat(63));
        assert!(
            hexish.parse::<Reference>().is_ok(),
            "63 hex digits are a name"
        );
        for s in cases {
            assert!(s.parse::<Reference>().is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn queries_allow_bare_repositories() {
        assert_eq!(
            "docker.io/library/alpine".parse::<RefQuery>().unwrap(),
            RefQuery::Repository("docker.io/library/alpine".into())
        );
        assert_eq!(
            "localhost:5000/alpine".parse::<RefQuery>().unwrap(),
            RefQuery::Repository("localhost:5000/alpine".into())
        );
        assert!("alpine".parse::<Reference>().is_err());
        assert!(matches!(
            "alpine:3".parse::<RefQuery>().unwrap(),
            RefQuery::Image(_)
        ));
    }
}
