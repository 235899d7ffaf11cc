//! Registries: `pull`, `push`, `login` and `logout` over the distribution API, with a
//! blocking interface for the rest of the program. `name` reads references the way docker
//! does; `auth` finds and keeps credentials where docker, podman and skopeo do; `client` is
//! one registry host (TLS, scheme, credential, retries, one-line errors); `pull` and `push`
//! plug a registry repository into the import's and the export's seams (`Blobs`,
//! `Destination`); `runtime` is the one async runtime, private to this module.

pub mod auth;
pub mod client;
pub mod commands;
pub mod name;
pub mod pull;
pub mod push;
mod runtime;

use std::sync::Arc;

use oci_client::secrets::RegistryAuth;

use crate::content::{Content, Image};
use crate::error::{Error, Result};

pub use client::{Options, Remote};
pub use name::RemoteRef;
pub use pull::{Platforms, PullOptions, Pulled};
pub use push::Pushed;

/// Pulls each of `refs` into `store`, one after another.
pub fn pull(
    store: &dyn Content,
    refs: &[RemoteRef],
    opts: &PullOptions,
    net: &Options,
) -> Result<Vec<Pulled>> {
    // Every name is known before the first request: a bad one, or two references that would
    // be stored under one name (the second replacing the first), are refused up front.
    let mut names = std::collections::HashSet::new();
    for r in refs {
        let name = pull::planned_name(r, opts.name.as_deref())?;
        if !names.insert(name.clone()) {
            return Err(Error::Invalid(format!(
                "{name}: two of the references would be stored under this one name: pull them one by one, or give --name a repository"
            )));
        }
    }
    let mut remotes: Vec<(String, Remote)> = Vec::new();
    let mut out = Vec::new();
    for r in refs {
        let i = match remotes.iter().position(|(h, _)| h == r.registry()) {
            Some(i) => i,
            None => {
                remotes.push((r.registry().to_owned(), Remote::connect(r.registry(), net)?));
                remotes.len() - 1
            }
        };
        out.push(pull::pull(store, &remotes[i].1, r, opts)?);
    }
    Ok(out)
}

/// Pushes `images` to `dest` (or, without it, each to the registry its own name names). One
/// image takes `dest`'s tag; several keep their own tags (the caller refuses a `dest` with a
/// tag for several).
pub fn push(
    store: &dyn Content,
    images: &[Image],
    dest: Option<&RemoteRef>,
    referrers: bool,
    net: &Options,
) -> Result<Pushed> {
    let mut groups: Vec<(RemoteRef, Vec<Image>)> = Vec::new();
    for img in images {
        let to = match dest {
            Some(d) => d.clone(),
            None => RemoteRef::from_stored(&img.name)?,
        };
        match groups
            .iter_mut()
            .find(|(r, _)| r.registry() == to.registry() && r.repository() == to.repository())
        {
            Some((_, v)) => v.push(img.clone()),
            None => groups.push((to, vec![img.clone()])),
        }
    }
    let mut total = Pushed::default();
    let mut remotes: Vec<(String, Arc<Remote>)> = Vec::new();
    for (to, imgs) in groups {
        let remote = match remotes.iter().find(|(h, _)| h == to.registry()) {
            Some((_, r)) => r.clone(),
            None => {
                let r = Arc::new(Remote::connect(to.registry(), net)?);
                remotes.push((to.registry().to_owned(), r.clone()));
                r
            }
        };
        let p = push::push(store, remote, &imgs, &to, referrers)?;
        total.destinations.extend(p.destinations);
        total.uploaded += p.uploaded;
        total.uploaded_bytes += p.uploaded_bytes;
        total.present += p.present;
        total.mounted += p.mounted;
        total.manifests += p.manifests;
        total.referrers += p.referrers;
    }
    Ok(total)
}

/// Checks `user`'s `password` with `registry` and keeps it where docker and podman find it
/// too; returns where.
pub fn login(registry: &str, user: &str, password: &str, net: &Options) -> Result<String> {
    let auth = RegistryAuth::Basic(user.to_owned(), password.to_owned());
    let remote = Remote::with_auth(
        registry,
        net,
        auth,
        Some((user.to_owned(), "the command line".to_owned())),
    )?;
    remote.check_login(user, password)?;
    let stored = auth::store(&net.places, registry, user, password)?;
    let mut said = stored.to.to_string();
    if !stored.replaced.is_empty() {
        let old: Vec<String> = stored.replaced.iter().map(ToString::to_string).collect();
        said.push_str(&format!(" (replacing the one in {})", old.join(", ")));
    }
    Ok(said)
}

/// Forgets the credential kept for `registry`; returns where it was.
pub fn logout(registry: &str, net: &Options) -> Result<Vec<String>> {
    Ok(auth::erase(&net.places, registry)?
        .iter()
        .map(ToString::to_string)
        .collect())
}
