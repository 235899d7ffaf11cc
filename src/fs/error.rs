//! Errors of the filesystem core, and the one place where they become errno values: the fuse
//! adapter replies with `errno()` and logs whatever maps to EIO, which always names its file or
//! digest.

use crate::digest::Digest;
use crate::error::Error as StoreError;

pub type FsResult<T> = std::result::Result<T, FsError>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system")]
    ReadOnly,
    #[error("{0}")]
    Invalid(String),
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// A blob an image of the repository needs: it stays while the image does.
    #[error("blob {digest} is needed by image {image}: remove the image (write index.json without it) before its blobs")]
    Busy { digest: Digest, image: String },
    #[error("blob {digest}: a write past its size of {size} bytes")]
    TooLarge { digest: Digest, size: u64 },
    /// A write or truncate past what a file may hold (`index.json` past its cap, an end past
    /// u64): the message names it.
    #[error("{0}")]
    PastCap(String),
    /// A symbolic link refused (an absolute target, one leaving its repository, a link outside
    /// a repository): the message names it.
    #[error("{0}")]
    LinkRefused(String),
    /// A symbolic link opened as a file: the mount never follows one.
    #[error("a symbolic link, never followed by the mount")]
    IsLink,
    #[error("unknown file handle {0}")]
    BadHandle(u64),
    /// A rename of something written in one repository into another: `mv` copies instead, so
    /// that what is written is held by the repository that lists it.
    #[error("{0}: renamed from another repository (a copy is made instead)")]
    CrossRepository(String),
    /// A blob read through passthrough: the kernel has every open of it use the store's
    /// (read-only) file, so it cannot be opened for writing until those close.
    #[error("blob {0}: open for reading through passthrough, so not for writing until those opens close (a blob never changes: `rsync --inplace` over one already there needs `--no-passthrough`, or rsync without `--inplace`)")]
    ReadThroughPassthrough(Digest),
    /// A write to this file failed before (its bytes were dropped); close reports it again.
    #[error("{message}")]
    WriteFailed { errno: i32, message: String },
    #[error("blob {digest}: {message}")]
    Damaged { digest: Digest, message: String },
    #[error("repository {repository}: {source}")]
    Repository {
        repository: String,
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FsError {
    /// The errno the kernel passes on to the caller.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::CrossRepository(_) => libc::EXDEV,
            FsError::ReadThroughPassthrough(_) => libc::ETXTBSY,
            FsError::WriteFailed { errno, .. } => *errno,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NotPermitted(_) | FsError::LinkRefused(_) => libc::EPERM,
            FsError::IsLink => libc::ELOOP,
            FsError::TooLarge { .. } | FsError::PastCap(_) => libc::EFBIG,
            FsError::Busy { .. } => libc::EBUSY,
            FsError::Damaged { .. } => libc::EIO,
            FsError::Repository { source, .. } | FsError::Store(source) => store_errno(source),
        }
    }

    /// Whether the error is a fault worth an error line in the log.
    pub fn is_fault(&self) -> bool {
        self.errno() == libc::EIO || self.errno() == libc::ENOSPC
    }

    /// Whether the error refuses bad input worth a warning in the log (a name, a write).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            FsError::Invalid(_)
                | FsError::TooLarge { .. }
                | FsError::PastCap(_)
                | FsError::NotPermitted(_)
                | FsError::LinkRefused(_)
                | FsError::Busy { .. }
                | FsError::ReadThroughPassthrough(_)
                | FsError::CrossRepository(_)
        )
    }
}

/// Disk-full and quota errors reach the caller as they are; every other store fault is EIO.
fn store_errno(e: &StoreError) -> i32 {
    let io = match e {
        StoreError::Io { source, .. }
        | StoreError::Stream { source, .. }
        | StoreError::Write { source, .. } => source,
        _ => return libc::EIO,
    };
    match io.raw_os_error() {
        Some(code @ (libc::ENOSPC | libc::EDQUOT)) => code,
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn errno_table() {
        let digest: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let cases: Vec<(FsError, i32)> = vec![
            (FsError::NotFound, libc::ENOENT),
            (FsError::NotDir, libc::ENOTDIR),
            (FsError::IsDir, libc::EISDIR),
            (FsError::ReadOnly, libc::EROFS),
            (FsError::BadHandle(7), libc::EBADF),
            (FsError::LinkRefused("r/l".into()), libc::EPERM),
            (FsError::IsLink, libc::ELOOP),
            (FsError::PastCap("r/index.json".into()), libc::EFBIG),
            (FsError::CrossRepository("r/x".into()), libc::EXDEV),
            (
                FsError::ReadThroughPassthrough(digest.clone()),
                libc::ETXTBSY,
            ),
            (
                FsError::Busy {
                    digest: digest.clone(),
                    image: "r:1".into(),
                },
                libc::EBUSY,
            ),
            (
                FsError::Damaged {
                    digest: digest.clone(),
                    message: "gone".into(),
                },
                libc::EIO,
            ),
            (
                StoreError::io("/s/blobs", io::Error::from_raw_os_error(libc::ENOSPC)).into(),
                libc::ENOSPC,
            ),
            (
                StoreError::io("/s/blobs", io::Error::from_raw_os_error(libc::EACCES)).into(),
                libc::EIO,
            ),
            (
                StoreError::MissingBlob {
                    digest,
                    referrer: None,
                }
                .into(),
                libc::EIO,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.errno(), want, "{e}");
        }
    }
}
