//! Symbolic links written into a repository: what `tar -x` of a docker archive makes (`<v1
//! id>/layer.tar -> ../<diff id>.tar`). A link is a scratch entry (`ScratchKind::Link`) that
//! holds its target as written: readlink gives it back, getattr says it is a link, and the
//! mount never follows it (an open of it is ELOOP). Only a docker archive's `manifest.json`
//! reads it, one hop (`fs::docker_archive`).
//!
//! A link is made only inside a repository directory, at any depth of scratch directories in
//! it, never at the root, among `blobs/`, or at a layout name. Its target must be relative and
//! stay inside the repository directory when read lexically from the link's directory (the
//! same check when it is renamed elsewhere); anything else is EPERM, logged with the link's
//! path and the reason. Hard links stay refused (`fuse`).

use std::sync::Arc;

use super::error::{FsError, FsResult};
use super::inode::Node;
use super::state::ScratchKind;
use super::view::LAYOUT_NAMES;

/// Scratch directories nested deeper than this are taken for a cycle (see `fs::write`).
const MAX_DEPTH: usize = 4096;

/// What a link's `target` names, read lexically from directory `dir` (its components below
/// the repository directory): the path below the repository directory, or why it is refused.
pub(crate) fn resolve_link(dir: &[String], target: &str) -> Result<String, &'static str> {
    if target.is_empty() {
        return Err("an empty target");
    }
    if target.starts_with('/') {
        return Err("an absolute target");
    }
    let mut out: Vec<&str> = dir.iter().map(String::as_str).collect();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()
                    .ok_or("a target outside the repository directory")?;
            }
            c => out.push(c),
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
        self.written_in(parent, pid)?;
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
