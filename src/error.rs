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

    /// `blob` is `blob <digest>`, or what an ingest that names its content at commit is.
    #[error("{blob}: writing {}: {source}", path.display())]
    Write {
        blob: String,
        path: PathBuf,
        source: io::Error,
    },

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

    #[error("image {name}: {message}")]
    Image { name: String, message: String },

    #[error("no such image: {0}")]
    NotFound(String),

    #[error("image store database: {0}")]
    Db(#[from] rusqlite::Error),

    /// The store directory, or a part of it, is not what layoutfs made and may trust.
    #[error("{}: {problem}", path.display())]
    Store {
        path: PathBuf,
        problem: StoreProblem,
    },

    /// gc's refusal while the records of a store with blobs are lost (see `store::Adopted`).
    #[error("gc: {} has no image records but the store holds {blobs} blobs (the database was missing or empty when it was opened): nothing was removed; run layoutfs fsck --repair to register the images it finds as lost-found@<digest>, or layoutfs gc --force to remove every unreferenced blob", db.display())]
    NoRecords { db: PathBuf, blobs: u64 },

    /// A registry's refusal or failure, said in one line that names the registry and image.
    #[error("{0}")]
    Registry(String),

    #[error("{0}")]
    Invalid(String),
}

/// What is wrong with a store directory or one of its parts (see `store::Store::open`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreProblem {
    #[error("is a symbolic link: refusing to follow it (a store's parts must be its own)")]
    Symlink,
    #[error("not a directory")]
    NotADirectory,
    #[error("not a regular file")]
    NotAFile,
    #[error(
        "owned by user {owner}, not by you (user {you}): refusing a store another user controls"
    )]
    Owner { owner: u32, you: u32 },
    #[error("writable by other users (mode {mode:04o}): refusing a store they could change (chmod go-w it)")]
    Writable { mode: u32 },
    #[error("owned by user {owner}, who could replace the store below it: refusing it")]
    AncestorOwner { owner: u32 },
    #[error("writable by other users (mode {mode:04o}, no sticky bit), who could replace the store below it: refusing it")]
    AncestorWritable { mode: u32 },
    #[error("the store's filesystem is read-only")]
    ReadOnly,
    #[error("has {links} hard links: refusing a file that may be another's")]
    HardLinks { links: u64 },
}

impl Error {
    /// A problem with the store part at `path`.
    pub fn store(path: impl Into<PathBuf>, problem: StoreProblem) -> Error {
        Error::Store {
            path: path.into(),
            problem,
        }
    }

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

/// Longest text taken from input (or from a parser's message about input) into an error.
const MAX_QUOTED: usize = 120;

/// `text` as one short line for an error message: bytes that are not printable ASCII (from
/// hostile or garbage input, which parsers echo) become `?`, and it is cut at `MAX_QUOTED`.
pub fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().nth(MAX_QUOTED).is_some() {
        out.push_str("...");
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_is_one_short_line() {
        assert_eq!(printable("blobs/sha256/ab"), "blobs/sha256/ab");
        assert_eq!(printable("a\nb\u{1b}[2Jc\u{fffd}"), "a?b?[2Jc?");
        let long = "x".repeat(500);
        assert_eq!(printable(&long), format!("{}...", "x".repeat(MAX_QUOTED)));
    }
}
