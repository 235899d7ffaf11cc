//! Where a scratch entry (a temporary file, a temporary directory, a file that became a blob)
//! may be renamed to: the one rule `rename` checks before it moves anything. Within its own
//! repository only (EXDEV across, and `mv` then copies, so that what was written is held by
//! the repository that lists it); never to the mount's root; a file that became a blob keeps
//! its digest's name or takes a temporary one; a directory never stands at a blob's name,
//! `index.json`, `oci-layout` or a sub-repository's name; a file never at `blobs`, an algorithm
//! directory's name or a directory that exists; a symbolic link only among a repository's own
//! files and directories (never into `blobs/`), its target checked again from its new place.

use crate::digest::{Algorithm, Digest};

use super::error::{FsError, FsResult};
use super::inode::Node;
use super::state::ScratchKind;
use super::write::{is_scratch_dir, is_temporary};

/// What is moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Moved {
    File,
    Dir,
    /// A file that became this blob.
    Blob(Digest),
    /// A symbolic link, with its target.
    Link(String),
}

impl Moved {
    pub(super) fn of(kind: &ScratchKind) -> Moved {
        match kind {
            ScratchKind::File(_) => Moved::File,
            ScratchKind::Dir => Moved::Dir,
            ScratchKind::Committed(digest, _) => Moved::Blob(digest.clone()),
            ScratchKind::Link(target) => Moved::Link(target.clone()),
        }
    }
}

impl super::Fs {
    /// Checks that scratch entry `id` (`moved`) may become `newname` in directory `newparent`.
    pub(super) fn check_move(
        &self,
        id: u64,
        moved: &Moved,
        newparent: u64,
        newname: &str,
    ) -> FsResult<()> {
        let target = self.node(newparent)?;
        let to = self.repo_of(&target).ok_or_else(|| {
            FsError::Invalid(format!(
                "{newname}: files and directories written go into a repository"
            ))
        })?;
        if self.scratch_repo(id).as_deref() != Some(&*to) {
            return Err(FsError::CrossRepository(format!("{to}/{newname}")));
        }
        let exists = self
            .lookup_in(
                newparent,
                std::ffi::OsStr::new(newname),
                super::Viewer::Reader,
            )
            .ok();
        match (&exists, moved) {
            (Some(a), Moved::File | Moved::Blob(_) | Moved::Link(_))
                if a.kind == super::Kind::Dir =>
            {
                return Err(FsError::IsDir)
            }
            (Some(a), Moved::Dir) if a.kind != super::Kind::Dir => return Err(FsError::NotDir),
            (Some(a), Moved::Dir) if !self.dir_is_empty(a.ino)? => return Err(FsError::NotEmpty),
            _ => {}
        }
        if *moved == Moved::Dir {
            self.check_links_moved(id, newparent, newname)?;
        }
        let refused = |why: &str| Err(FsError::Invalid(format!("{to}/{newname}: {why}")));
        match (&target, moved) {
            (Node::Dir(_), Moved::Blob(_)) if is_layout_file(newname) => Err(
                FsError::NotPermitted("a blob is not index.json or oci-layout; write those"),
            ),
            (Node::Dir(_), Moved::Dir) if is_layout_file(newname) => Err(FsError::NotDir),
            (Node::Dir(_), Moved::File | Moved::Blob(_)) if newname == "blobs" => {
                Err(FsError::IsDir)
            }
            (Node::Dir(_), Moved::Dir)
                if !is_temporary(newname) && newname != "blobs" && !is_scratch_dir(newname) =>
            {
                refused("a directory renamed to a repository's name (make one with mkdir)")
            }
            (_, Moved::Link(link)) => self.check_link_at(newparent, newname, link),
            (Node::Blobs(_), Moved::File | Moved::Blob(_))
                if Algorithm::from_name(newname).is_some() =>
            {
                refused("an algorithm directory's name, for a file")
            }
            (Node::Blobs(_), Moved::Dir)
                if Algorithm::from_name(newname).is_none() && !is_temporary(newname) =>
            {
                refused("blobs/ holds algorithm directories and temporary names")
            }
            (Node::AlgDir(..), Moved::Dir) if !is_temporary(newname) => {
                refused("no directories among blobs but temporary ones")
            }
            (Node::AlgDir(_, alg), Moved::Blob(digest)) => {
                let own = digest.algorithm() == *alg && digest.hex() == newname;
                if own
                    || (is_temporary(newname) && Digest::from_parts(alg.name(), newname).is_err())
                {
                    Ok(())
                } else {
                    refused(&format!(
                        "blob {digest} keeps its own name, or a temporary one"
                    ))
                }
            }
            _ => Ok(()),
        }
    }
}

fn is_layout_file(name: &str) -> bool {
    name == "index.json" || name == "oci-layout"
}
