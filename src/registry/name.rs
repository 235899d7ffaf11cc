//! What an image name on the command line means on a registry: `HOST[:PORT]/REPO[:TAG|@DIGEST]`
//! normalised the way docker reads it (`busybox` is `docker.io/library/busybox:latest`), the
//! name it is stored under (the host is part of the stored repository), the reference sent on
//! the wire, and two facts about a registry host: whether it is on this machine and which key
//! its credentials are kept under.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::{check_repository, check_tag, Reference, ReferenceError, Target};

/// The registry a name without a host means.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's old name, read as [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// Docker Hub's registry endpoint, which some configurations name.
const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
/// Where Docker Hub's official images live: `busybox` is `library/busybox`.
const OFFICIAL_NAMESPACE: &str = "library";
/// The tag meant when a name has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// The key `docker login` keeps Docker Hub's credentials under.
pub const DOCKER_HUB_CREDENTIAL_KEY: &str = "https://index.docker.io/v1/";
/// The host name that always means this machine.
const LOCALHOST: &str = "localhost";

/// An image on a registry, normalised: the registry host as written (`127.0.0.1:5000`,
/// `registry.example.com`, `docker.io`), the repository path on it, and a tag, a digest, or
/// both (the tag names the image in the store, the digest is what is asked for on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl RemoteRef {
    /// Parses a name from the command line, normalised as docker does: the first `/`-separated
    /// component is a registry host only if it holds `.` or `:` or is `localhost`; otherwise the
    /// name is on Docker Hub, where a one-component path gets `library/`; `index.docker.io` is
    /// `docker.io`; no tag and no digest means `latest`.
    pub fn parse(s: &str) -> Result<RemoteRef> {
        let invalid = |why: &'static str| Error::Reference(ReferenceError::Invalid(s.into(), why));
        if s.is_empty() {
            return Err(invalid("empty image name"));
        }
        let (name, digest) = match s.split_once('@') {
            Some((name, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|e| Error::Reference(ReferenceError::Digest(s.into(), e)))?;
                (name, Some(digest))
            }
            None => (s, None),
        };
        // A ':' after the last '/' starts a tag; one before it belongs to host:port.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].find(':') {
            Some(i) => {
                let tag = &name[last_slash + i + 1..];
                check_tag(tag).map_err(invalid)?;
                (&name[..last_slash + i], Some(tag.to_owned()))
            }
            None => (name, None),
        };
        let (registry, path) = split_registry(name);
        if registry.starts_with('[') {
            return Err(invalid(
                "IPv6 registry addresses are not supported: use a host name",
            ));
        }
        if let Some((_, port)) = registry.rsplit_once(':') {
            if !port.parse::<u16>().is_ok_and(|p| p > 0) {
                return Err(invalid("a registry port is a number from 1 to 65535"));
            }
        }
        let registry = if registry == DOCKER_HUB_LEGACY {
            DOCKER_HUB
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path.to_owned()
        };
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("the repository path must be lowercase"));
        }
        if path.is_empty() {
            return Err(invalid("no repository after the registry host"));
        }
        check_repository(&format!("{registry}/{repository}")).map_err(invalid)?;
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag,
        };
        Ok(RemoteRef {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }

    /// A stored image name as a remote one: its repository must start with a registry host
    /// (push's destination defaults to the image's own name).
    pub fn from_stored(r: &Reference) -> Result<RemoteRef> {
        let repo = r.repository();
        let has_host = repo
            .split_once('/')
            .is_some_and(|(first, _)| is_host_component(first));
        if !has_host {
            return Err(Error::Invalid(format!(
                "{r}: the name has no registry host (its first component has no '.' or ':' and is not localhost): give a destination"
            )));
        }
        RemoteRef::parse(&r.to_string())
    }

    /// The registry host as written (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path on the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The name the image gets in the store: host and path as the repository, the tag if there
    /// is one, else the digest (`docker.io/library/busybox:latest`).
    pub fn stored_name(&self) -> Reference {
        let repository = format!("{}/{}", self.registry, self.repository);
        let target = match (&self.tag, &self.digest) {
            (Some(t), _) => Target::Tag(t.clone()),
            (None, Some(d)) => Target::Digest(d.clone()),
            // parse() and with_digest() keep a tag or a digest.
            (None, None) => Target::Tag(DEFAULT_TAG.to_owned()),
        };
        let made = match target {
            Target::Tag(t) => Reference::tagged(&repository, &t),
            Target::Digest(d) => Reference::digested(&repository, d),
        };
        // parse() checked the repository and tag with the same rules.
        made.expect("a parsed remote name is a valid stored name")
    }

    /// The same image pinned to `digest` (the tag, if any, stays for the stored name).
    pub fn with_digest(&self, digest: Digest) -> RemoteRef {
        RemoteRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The reference for oci-client, which maps `docker.io` to Docker Hub's endpoint itself.
    pub fn to_oci(&self) -> oci_client::Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                t.clone(),
                d.to_string(),
            ),
            (_, Some(d)) => oci_client::Reference::with_digest(registry, repository, d.to_string()),
            (t, None) => oci_client::Reference::with_tag(
                registry,
                repository,
                t.clone().unwrap_or_else(|| DEFAULT_TAG.to_owned()),
            ),
        }
    }
}

impl fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Docker's rule: a first component is a registry host if it holds '.' or ':' or is
/// `localhost`. (docker's `splitDockerDomain` also takes a component with uppercase letters for
/// a host, so that `UPPER/x` names a registry called `UPPER`; here it is a repository path and
/// refused for its uppercase, which says more than a failed lookup of the host `UPPER` would.)
fn is_host_component(c: &str) -> bool {
    c.contains('.') || c.contains(':') || c == LOCALHOST
}

/// Splits `name` (no tag, no digest) into the registry host and the path on it.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest)) if is_host_component(first) => (first, rest),
        _ => (DOCKER_HUB, name),
    }
}

/// Whether a registry host (`HOST[:PORT]`) is this machine: `localhost`, an address in
/// 127.0.0.0/8, or `::1` (containerd's `IsLocalhost`; the port does not matter).
pub fn is_loopback(registry: &str) -> bool {
    let host = host_part(registry);
    if host.eq_ignore_ascii_case(LOCALHOST) {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.is_loopback(),
        Ok(IpAddr::V6(a)) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// The host of `HOST[:PORT]`, `[V6]:PORT`, `[V6]` or a bare IPv6 address.
fn host_part(registry: &str) -> &str {
    if registry.parse::<Ipv6Addr>().is_ok() {
        return registry;
    }
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    registry.rsplit_once(':').map_or(registry, |(h, _)| h)
}

/// The key a registry's credentials are kept under in docker's `config.json` and containers'
/// `auth.json`: Docker Hub's is `https://index.docker.io/v1/` (what `docker login` writes, and
/// what skopeo and podman read too), every other registry's is its host as written.
pub fn credential_key(registry: &str) -> &str {
    if is_docker_hub(registry) {
        DOCKER_HUB_CREDENTIAL_KEY
    } else {
        registry
    }
}

/// Whether `registry` is one of Docker Hub's names.
pub fn is_docker_hub(registry: &str) -> bool {
    matches!(
        registry,
        DOCKER_HUB | DOCKER_HUB_LEGACY | DOCKER_HUB_ENDPOINT | DOCKER_HUB_CREDENTIAL_KEY
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn normalises_like_docker() {
        let da = d('a');
        // input, registry, repository, tag, display
        #[rustfmt::skip]
        let cases: &[[&str; 5]] = &[
            ["busybox", "docker.io", "library/busybox", "latest", "docker.io/library/busybox:latest"],
            ["busybox:1.36", "docker.io", "library/busybox", "1.36", "docker.io/library/busybox:1.36"],
            ["library/busybox", "docker.io", "library/busybox", "latest", "docker.io/library/busybox:latest"],
            ["docker.io/busybox", "docker.io", "library/busybox", "latest", "docker.io/library/busybox:latest"],
            ["index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", "docker.io/library/busybox:latest"],
            ["index.docker.io/busybox", "docker.io", "library/busybox", "latest", "docker.io/library/busybox:latest"],
            ["user/app", "docker.io", "user/app", "latest", "docker.io/user/app:latest"],
            ["user/app:1", "docker.io", "user/app", "1", "docker.io/user/app:1"],
            ["a/b/c", "docker.io", "a/b/c", "latest", "docker.io/a/b/c:latest"],
            ["localhost/x", "localhost", "x", "latest", "localhost/x:latest"],
            ["localhost:5000/x", "localhost:5000", "x", "latest", "localhost:5000/x:latest"],
            ["127.0.0.1:5000/a/b:c", "127.0.0.1:5000", "a/b", "c", "127.0.0.1:5000/a/b:c"],
            ["Registry.Example.com/x:Tag", "Registry.Example.com", "x", "Tag", "Registry.Example.com/x:Tag"],
            ["registry-1.docker.io/x", "registry-1.docker.io", "x", "latest", "registry-1.docker.io/x:latest"],
            // "test.com" without a '/' after it is a repository name on Docker Hub.
            ["test.com:5000", "docker.io", "library/test.com", "5000", "docker.io/library/test.com:5000"],
        ];
        for &[input, registry, repository, tag, shown] in cases {
            let r = RemoteRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry(), registry, "{input}");
            assert_eq!(r.repository(), repository, "{input}");
            assert_eq!(r.tag(), Some(tag), "{input}");
            assert_eq!(r.digest(), None, "{input}");
            assert_eq!(r.to_string(), shown, "{input}");
            // What oci-client makes of the normalised form agrees.
            let theirs: oci_client::Reference = shown.parse().unwrap();
            assert_eq!(r.to_oci(), theirs, "{input}");
            assert_eq!(r.stored_name().to_string(), shown, "{input}");
        }

        let r = RemoteRef::parse(&format!("registry.example.com/x@{da}")).unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("registry.example.com", "x", None)
        );
        assert_eq!(r.digest().unwrap().to_string(), da);
        assert_eq!(
            r.stored_name().to_string(),
            format!("registry.example.com/x@{da}")
        );
        assert_eq!(r.to_oci().digest(), Some(da.as_str()));
        assert_eq!(r.to_oci().tag(), None);

        // Tag and digest: the tag names it in the store, the digest goes on the wire.
        let r = RemoteRef::parse(&format!("x:t@{da}")).unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("docker.io", "library/x", Some("t"))
        );
        assert_eq!(r.stored_name().to_string(), "docker.io/library/x:t");
        assert_eq!(r.to_string(), format!("docker.io/library/x:t@{da}"));
        assert_eq!(r.to_oci().digest(), Some(da.as_str()));
        assert_eq!(r.to_oci().tag(), Some("t"));
        assert_eq!(r.to_oci().resolve_registry(), "index.docker.io");
    }

    #[test]
    fn refuses_bad_names_naming_them() {
        let long_tag = format!("x:{}", "a".repeat(129));
        let long_repo = format!("example.com/{}", "a".repeat(250));
        let short_digest = "x@sha256:abc".to_owned();
        let md5 = format!("x@md5:{}", "0".repeat(32));
        let upper_digest = format!("x@sha256:{}", "A".repeat(64));
        let cases: &[&str] = &[
            "",
            // UPPER is not a host (no '.' or ':', not localhost), so it is a path: uppercase.
            "UPPER/x",
            "Busybox",
            "x/Y",
            "example.com/Y:1",
            "x::1",
            "x:",
            "x:-t",
            "localhost:5000/",
            "example.com/",
            "/x",
            "x//y",
            "a..b",
            "host:port/x",
            "[::1]:5000/x",
            "x y",
            &long_tag,
            &long_repo,
            &short_digest,
            &md5,
            &upper_digest,
        ];
        for &input in cases {
            let err = match RemoteRef::parse(input) {
                Ok(r) => panic!("{input:?} should be refused, got {r}"),
                Err(e) => e.to_string(),
            };
            assert!(!err.contains('\n'), "{err}");
            let quoted = format!("{input:?}");
            assert!(
                err.contains(&quoted[..quoted.len().min(40)]),
                "{err} should name {input:?}"
            );
        }
        assert!(RemoteRef::parse("UPPER/x")
            .unwrap_err()
            .to_string()
            .contains("lowercase"));
    }

    #[test]
    fn stored_names_come_back() {
        for s in [
            "127.0.0.1:5000/a/b:c",
            "docker.io/library/busybox:latest",
            "localhost/x:1",
        ] {
            let stored: Reference = s.parse().unwrap();
            let r = RemoteRef::from_stored(&stored).unwrap();
            assert_eq!(r.to_string(), s);
            assert_eq!(r.stored_name(), stored);
        }
        let stored: Reference = format!("example.com/x@{}", d('b')).parse().unwrap();
        assert_eq!(
            RemoteRef::from_stored(&stored).unwrap().stored_name(),
            stored
        );
        // index.docker.io is docker.io; a bare name has no host to push to.
        let stored: Reference = "index.docker.io/x/y:1".parse().unwrap();
        assert_eq!(
            RemoteRef::from_stored(&stored).unwrap().to_string(),
            "docker.io/x/y:1"
        );
        for s in ["busybox:latest", "library/busybox:1", "UPPER/x:1"] {
            let err = RemoteRef::from_stored(&s.parse().unwrap())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(s) && err.contains("no registry host"),
                "{err}"
            );
        }
    }

    #[test]
    fn with_digest_pins_and_keeps_the_tag() {
        let r = RemoteRef::parse("127.0.0.1:5000/x:1").unwrap();
        let pinned = r.with_digest(d('c').parse().unwrap());
        assert_eq!(pinned.to_string(), format!("127.0.0.1:5000/x:1@{}", d('c')));
        assert_eq!(pinned.stored_name(), r.stored_name());
        assert_eq!(pinned.to_oci().digest(), Some(d('c').as_str()));
    }

    #[test]
    fn loopback_hosts() {
        let cases = [
            ("localhost", true),
            ("localhost:5000", true),
            ("LocalHost:5000", true),
            ("127.0.0.1", true),
            ("127.0.0.1:5000", true),
            ("127.1.2.3:443", true),
            ("[::1]:5000", true),
            ("[::1]", true),
            ("::1", true),
            ("[::ffff:127.0.0.1]:5000", true),
            ("128.0.0.1:5000", false),
            ("10.0.0.1", false),
            ("[::2]:5000", false),
            ("localhost.example.com", false),
            ("docker.io", false),
            ("example.com:5000", false),
            ("", false),
        ];
        for (host, want) in cases {
            assert_eq!(is_loopback(host), want, "{host}");
        }
    }

    #[test]
    fn credential_keys() {
        for hub in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(credential_key(hub), "https://index.docker.io/v1/");
        }
        assert_eq!(credential_key("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(credential_key("quay.io"), "quay.io");
        let r = RemoteRef::parse("busybox").unwrap();
        assert_eq!(credential_key(r.registry()), DOCKER_HUB_CREDENTIAL_KEY);
    }
}
