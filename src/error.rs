//! The crate's error type: one enum for the store, OCI parsing, import and export, each variant
//! naming the file, digest or image it is about so that the CLI can print it as one line.

use std::io;
use std::path::PathBuf;

use crate::digest::{Digest, DigestError};
use crate::reference::ReferenceError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("{what}: {source}")]
    Stream { what: String, source: io::Error },

    #[error(transparent)]
    Digest(#[from] DigestError),

    #[error(transparent)]
    Reference(#[from] ReferenceError),

    #[error("blob {expected}: content does not match its digest (got {found})")]
    DigestMismatch { expected: Digest, found: Digest },

    #[error("blob {digest}: size is {found} bytes, expected {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        found: u64,
    },

    #[error("blob {digest}: missing{}", .referrer.as_ref().map(|r| format!(" (referenced by {r})")).unwrap_or_default())]
    MissingBlob {
        digest: Digest,
        referrer: Option<String>,
    },

    #[error("{file}: {message}")]
    Json { file: String, message: String },

    #[error("{file}: {size} bytes is larger than the {cap}-byte limit")]
    TooLarge { file: String, size: u64, cap: u64 },

    #[error("{file}: {message}")]
    Layout { file: String, message: String },

    #[error("{archive}: {message}")]
    Archive { archive: String, message: String },

    #[error("no such image: {0}")]
    NotFound(String),

    #[error("image store database: {0}")]
    Db(#[from] rusqlite::Error),

    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn layout(file: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Layout {
            file: file.into(),
            message: message.into(),
        }
    }

    pub fn archive(archive: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Archive {
            archive: archive.into(),
            message: message.into(),
        }
    }
}

/// Attaches a path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
