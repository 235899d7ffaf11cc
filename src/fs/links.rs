//! Symbolic links written into a repository: what `tar -x` of a docker archive makes (`<v1
//! id>/layer.tar -> ../<diff id>.tar`). A link is a scratch entry (`ScratchKind::Link`) that
//! holds its target as written: readlink gives it back, getattr says it is a link, and the
//! mount never follows it (an open of it is ELOOP). Only a docker archive's `manifest.json`
//! reads it, one hop (`fs::docker_archive`).
//!
//! A link is made only inside a repository directory, at any depth of scratch directories in
//! it, never at the root, among `blobs/`, or at a layout name. Its target must be relative,
//! `..` only at its start, and stay inside the repository directory when read from the link's
//! directory (the same check when it, or a directory holding it, is renamed elsewhere);
//! anything else is EPERM, logged with the link's path and the reason. Hard links stay refused (`fuse`).

use std::sync::Arc;

use super::error::{FsError, FsResult};
use super::inode::Node;
use super::state::ScratchKind;
use super::view::LAYOUT_NAMES;

/// Scratch directories nested deeper than this are taken for a cycle (see `fs::write`).
const MAX_DEPTH: usize = 4096;

/// What a link's `target` names, read lexically from directory `dir` (its components below
/// the repository directory): the path below the repository directory, or why it is refused.
/// `..` may only lead the target (`../<id>/layer.tar`, docker's form): the kernel reads a
/// leading `..` from the link's real directory, whose depth is known, but a `..` after a
/// name that is itself a link would climb from wherever that link leads, so links chained
/// through each other could reach out of the repository, and of the mount.
pub(crate) fn resolve_link(dir: &[String], target: &str) -> Result<String, &'static str> {
    if target.is_empty() {
        return Err("an empty target");
    }
    if target.starts_with('/') {
        return Err("an absolute target");
    }
    let mut out: Vec<&str> = dir.iter().map(String::as_str).collect();
    let mut named = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if named => return Err("a '..' after a name (only leading '..' is allowed)"),
            ".." => {
                out.pop()
                    .ok_or("a target outside the repository directory")?;
            }
            c => {
                named = true;
                out.push(c);
            }
        }
    }
    if out.is_empty() {
        return Err("a target that is the repository directory itself");
    }
    Ok(out.join("/"))
}

impl super::Fs {
    /// Makes symbolic link `name` to `target` in directory `parent`, for process `pid`.
    pub fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        pid: u32,
    ) -> FsResult<super::Attr> {
        if self.options.read_only {
            return Err(FsError::ReadOnly);
        }
        let exists = self.lookup_in(parent, std::ffi::OsStr::new(name), super::Viewer::Maker);
        if exists.is_ok() {
            return Err(FsError::Exists);
        }
        self.check_link_at(parent, name, target)?;
        let id = self.add_scratch(parent, name, ScratchKind::Link(target.to_owned()));
        let child = Node::Scratch(id);
        let ino = self.inodes.ino(&child);
        let attr = self.attr(ino, &child)?;
        // A docker archive's manifest.json may have waited for this link.
        self.written_in(parent, name, pid)?;
        Ok(attr)
    }

    /// The target of link `ino`, as written.
    pub fn readlink(&self, ino: u64) -> FsResult<String> {
        let Node::Scratch(id) = self.node(ino)? else {
            return Err(FsError::Invalid("not a symbolic link".into()));
        };
        match self.write.lock().scratch.get(&id).map(|s| &s.kind) {
            Some(ScratchKind::Link(target)) => Ok(target.clone()),
            Some(_) => Err(FsError::Invalid("not a symbolic link".into())),
            None => Err(FsError::NotFound),
        }
    }

    /// Checks that a link `name` to `target` may stand in directory `dir`.
    pub(super) fn check_link_at(&self, dir: u64, name: &str, target: &str) -> FsResult<()> {
        let Some((repo, within)) = self.dir_in_repo(dir) else {
            return Err(FsError::LinkRefused(format!(
                "symlink {name:?}: links are made only inside a repository directory (not at \
                 the root, not among blobs)"
            )));
        };
        if within.is_empty() && LAYOUT_NAMES.contains(&name) {
            return Err(FsError::LinkRefused(format!(
                "{repo}/{name}: a layout name, never a symbolic link"
            )));
        }
        resolve_link(&within, target).map(|_| ()).map_err(|why| {
            let mut path = within.clone();
            path.push(name.to_owned());
            FsError::LinkRefused(format!(
                "{repo}/{}: symbolic link to {target:?} refused: {why}",
                path.join("/")
            ))
        })
    }

    /// Checks that every link below scratch directory `id` still stays inside its repository
    /// directory once `id` is `newname` in directory `newparent` (its depth may change).
    pub(super) fn check_links_moved(&self, id: u64, newparent: u64, newname: &str) -> FsResult<()> {
        let links = self.links_below(id);
        if links.is_empty() {
            return Ok(());
        }
        let Some((repo, mut at)) = self.dir_in_repo(newparent) else {
            return Ok(()); // refused elsewhere: a directory goes only into a repository
        };
        at.push(newname.to_owned());
        for (below, name, target) in links {
            let mut dir = at.clone();
            dir.extend(below);
            if let Err(why) = resolve_link(&dir, &target) {
                dir.push(name);
                return Err(FsError::LinkRefused(format!(
                    "{repo}/{}: a directory moved with symbolic link to {target:?} refused: {why}",
                    dir.join("/")
                )));
            }
        }
        Ok(())
    }

    /// Every link below scratch directory `id`: its directory's path below `id`, its name and
    /// its target.
    fn links_below(&self, id: u64) -> Vec<(Vec<String>, String, String)> {
        let entries: Vec<(u64, String, u64, Option<String>)> = {
            let w = self.write.lock();
            w.scratch
                .iter()
                .map(|(sid, s)| {
                    let target = match &s.kind {
                        ScratchKind::Link(t) => Some(t.clone()),
                        _ => None,
                    };
                    (*sid, s.name.clone(), s.parent, target)
                })
                .collect()
        };
        let by_id: std::collections::HashMap<u64, (&str, u64)> = entries
            .iter()
            .map(|(sid, name, parent, _)| (*sid, (name.as_str(), *parent)))
            .collect();
        let mut out = Vec::new();
        for (_, name, parent, target) in &entries {
            let Some(target) = target else { continue };
            let mut below = Vec::new();
            let mut at = *parent;
            for _ in 0..MAX_DEPTH {
                match self.inodes.node(at) {
                    Some(Node::Scratch(d)) if d == id => {
                        below.reverse();
                        out.push((below, name.clone(), target.clone()));
                        break;
                    }
                    Some(Node::Scratch(d)) => match by_id.get(&d) {
                        Some((n, p)) => {
                            below.push((*n).to_owned());
                            at = *p;
                        }
                        None => break,
                    },
                    _ => break,
                }
            }
        }
        out
    }

    /// The repository directory `ino` is in, and its path below it (directory names), when it
    /// is the repository's own directory or a scratch directory in it; None elsewhere (the
    /// root, `blobs/` and what is below it).
    pub(super) fn dir_in_repo(&self, ino: u64) -> Option<(Arc<str>, Vec<String>)> {
        let mut names = Vec::new();
        let mut node = self.inodes.node(ino)?;
        for _ in 0..MAX_DEPTH {
            match node {
                Node::Dir(repo) if !repo.is_empty() => {
                    names.reverse();
                    return Some((repo, names));
                }
                Node::Scratch(id) => {
                    let parent = {
                        let w = self.write.lock();
                        let s = w.scratch.get(&id)?;
                        if !matches!(s.kind, ScratchKind::Dir) {
                            return None;
                        }
                        names.push(s.name.clone());
                        s.parent
                    };
                    node = self.inodes.node(parent)?;
                }
                _ => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets_stay_in_the_repository_directory() {
        let dir = |d: &str| -> Vec<String> {
            d.split('/')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        };
        for (d, target, want) in [
            ("", "a.tar", Ok("a.tar")),
            ("v1", "../a.tar", Ok("a.tar")),
            ("v1", "./../x/./a.tar", Ok("x/a.tar")),
            ("v1", "layer.tar", Ok("v1/layer.tar")),
            ("a/b", "../../c", Ok("c")),
            (
                "v1",
                "../../a.tar",
                Err("a target outside the repository directory"),
            ),
            (
                "",
                "../a.tar",
                Err("a target outside the repository directory"),
            ),
            ("", "/a.tar", Err("an absolute target")),
            ("v1", "/etc/passwd", Err("an absolute target")),
            (
                "v1",
                "..",
                Err("a target that is the repository directory itself"),
            ),
            ("", "", Err("an empty target")),
            (
                "a/b",
                "c/../d",
                Err("a '..' after a name (only leading '..' is allowed)"),
            ),
            (
                "v1/b/c",
                "y/../../..",
                Err("a '..' after a name (only leading '..' is allowed)"),
            ),
        ] {
            let want: Result<&str, &str> = want;
            assert_eq!(
                resolve_link(&dir(d), target),
                want.map(str::to_owned),
                "{d} {target}"
            );
        }
    }
}
