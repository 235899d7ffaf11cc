//! A directory of blobs written under a temporary name and renamed into place: `mv .stage
//! blobs` in a repository (its algorithm directories inside), or `mv .stage blobs/sha256`. On
//! a disk every file arrives with its directory at once; here each one at a digest's name is
//! verified first (a mismatch fails the rename with EIO and nothing moves), then committed,
//! and the directories become the repository's `blobs/` and `blobs/<alg>/`, their inodes
//! with them. Anything else inside (a sub-directory, a name that is neither a digest nor
//! temporary) refuses the rename with EINVAL, naming it.

use crate::digest::{Algorithm, Digest};

use super::error::{FsError, FsResult};
use super::images::writer_holder;
use super::inode::Node;
use super::state::{ScratchKind, Shared};
use super::write::is_temporary;

/// One file of the staged tree.
struct StagedFile {
    id: u64,
    /// The algorithm directory it goes into.
    alg: Algorithm,
    name: String,
    /// Its upload and the blob it must be, when its name is a digest.
    blob: Option<(Shared, Digest)>,
}

/// The staged tree: its algorithm directories (scratch ids) and files.
struct Staged {
    dirs: Vec<(u64, Algorithm)>,
    files: Vec<StagedFile>,
}

impl super::Fs {
    /// Renames scratch directory `id` onto `newname` in `newparent` when that is a place of
    /// the blobs tree (`blobs` in a repository, or an algorithm in `blobs/`); Ok(false) when
    /// it is not, for the caller to move it as any directory.
    pub(super) fn rename_staged(
        &self,
        id: u64,
        newparent: u64,
        newname: &str,
        pid: u32,
    ) -> FsResult<bool> {
        let (repo, staged, root_alg) = match self.node(newparent)? {
            Node::Dir(repo)
                if newname == "blobs" && self.views.snapshot()?.dir(&repo).is_some() =>
            {
                let dirs = self.staged_algorithms(&repo, id)?;
                (repo, self.staged_files(&dirs)?, None)
            }
            Node::Blobs(repo) => {
                let Some(alg) = Algorithm::from_name(newname) else {
                    return Ok(false);
                };
                let dirs = vec![(id, alg)];
                (repo, self.staged_files(&dirs)?, Some(alg))
            }
            _ => return Ok(false),
        };
        let target = self.lookup_in(
            newparent,
            std::ffi::OsStr::new(newname),
            super::Viewer::Maker,
        );
        if let Ok(a) = target {
            if !self.dir_is_empty(a.ino)? {
                return Err(FsError::NotEmpty);
            }
        }
        self.keep_repo(newparent)?;
        self.commit_staged(&repo, &staged, newparent, pid)?;
        self.place_staged(&repo, id, &staged, root_alg);
        self.views.forget_repo(&repo);
        self.register_pending()?;
        Ok(true)
    }

    /// The algorithm directories directly in scratch directory `id` (to become `blobs/`):
    /// every entry must be one.
    fn staged_algorithms(&self, repo: &str, id: u64) -> FsResult<Vec<(u64, Algorithm)>> {
        let w = self.write.lock();
        let mut dirs = Vec::new();
        for (name, child) in w.children(self.inodes.ino(&Node::Scratch(id))) {
            let is_dir = matches!(
                w.scratch.get(&child).map(|s| &s.kind),
                Some(ScratchKind::Dir)
            );
            match Algorithm::from_name(&name) {
                Some(alg) if is_dir => dirs.push((child, alg)),
                _ => {
                    return Err(FsError::Invalid(format!(
                        "{repo}/blobs/{name}: renamed into blobs/, which holds only algorithm \
                         directories (sha256, sha512)"
                    )))
                }
            }
        }
        Ok(dirs)
    }

    /// The files of the staged algorithm directories `dirs`, each at a digest's name (to
    /// verify and commit) or a temporary one (moved as it is); anything else is refused.
    fn staged_files(&self, dirs: &[(u64, Algorithm)]) -> FsResult<Staged> {
        let w = self.write.lock();
        let mut files = Vec::new();
        for (dir, alg) in dirs {
            for (name, child) in w.children(self.inodes.ino(&Node::Scratch(*dir))) {
                let kind = w.scratch.get(&child).map(|s| &s.kind);
                let digest = Digest::from_parts(alg.name(), &name).ok();
                let blob = match (kind, digest) {
                    (Some(ScratchKind::File(shared)), Some(d)) => Some((shared.clone(), d)),
                    (Some(ScratchKind::File(_) | ScratchKind::Committed(..)), None)
                        if is_temporary(&name) =>
                    {
                        None
                    }
                    (Some(ScratchKind::Committed(..)), Some(_)) => None,
                    _ => {
                        return Err(FsError::Invalid(format!(
                            "blobs/{}/{name}: renamed into blobs/, where a file is named by its \
                             digest or temporarily (beginning with '.'), and no directory is",
                            alg.name()
                        )))
                    }
                };
                files.push(StagedFile {
                    id: child,
                    alg: *alg,
                    name,
                    blob,
                });
            }
        }
        Ok(Staged {
            dirs: dirs.to_vec(),
            files,
        })
    }

    /// Verifies every staged blob, then commits each: a mismatch fails before anything is
    /// committed; a fault while committing (a full disk) leaves those committed so far.
    fn commit_staged(&self, repo: &str, staged: &Staged, dir: u64, pid: u32) -> FsResult<()> {
        let (wanted, repo_id) = {
            let mut w = self.write.lock();
            let repo_id = self.repo_id_at(&mut w, dir);
            (w.wanted.clone(), repo_id)
        };
        for f in &staged.files {
            if let Some((shared, digest)) = &f.blob {
                if let Some(u) = shared.lock().upload.as_mut() {
                    u.verify(digest, wanted.get(digest).copied())
                        .inspect_err(|e| {
                            tracing::warn!(
                                "{repo}/blobs/{}/{}: not renamed into place: {e}",
                                f.alg.name(),
                                f.name
                            )
                        })?;
                }
            }
        }
        for f in &staged.files {
            let Some((shared, digest)) = &f.blob else {
                continue;
            };
            let Some(upload) = shared.lock().upload.take() else {
                continue;
            };
            let size = upload.len();
            self.hold(&writer_holder(repo_id, pid), digest)?;
            upload.commit(digest, wanted.get(digest).copied())?;
            if let Some(s) = self.write.lock().scratch.get_mut(&f.id) {
                s.kind = ScratchKind::Committed(digest.clone(), size);
            }
        }
        Ok(())
    }

    /// Makes the staged directories `repo`'s `blobs/` (scratch directory `id`, unless the
    /// rename was of one algorithm directory: `root_alg`) and algorithm directories, their
    /// files moved under them; the directories' inodes become the places they took (first, so
    /// that the files are entered under the inode the places have from now on).
    fn place_staged(&self, repo: &str, id: u64, staged: &Staged, root_alg: Option<Algorithm>) {
        let repo: std::sync::Arc<str> = std::sync::Arc::from(repo);
        for (dir, alg) in &staged.dirs {
            let ino = self.inodes.ino(&Node::Scratch(*dir));
            self.rebind(ino, &Node::AlgDir(repo.clone(), *alg));
        }
        if root_alg.is_none() {
            let ino = self.inodes.ino(&Node::Scratch(id));
            self.rebind(ino, &Node::Blobs(repo.clone()));
        }
        let mut gone = Vec::new();
        {
            let mut w = self.write.lock();
            for f in &staged.files {
                let alg_ino = self.inodes.ino(&Node::AlgDir(repo.clone(), f.alg));
                gone.extend(w.move_to(f.id, alg_ino, &f.name));
            }
            for (dir, _) in &staged.dirs {
                gone.extend(w.remove(*dir));
            }
            if root_alg.is_none() {
                gone.extend(w.remove(id));
            }
            let state = w.repo_mut(&repo);
            if root_alg.is_none() {
                state.set_layout_name("blobs", true);
            }
            for (_, alg) in &staged.dirs {
                state.alg_dirs.insert(*alg, true);
            }
        }
        // What they replaced (uploads) is dropped with the write state let go.
        drop(gone);
    }
}
