//! Where the files of an import come from, before anything interprets them: a `Tree` is read
//! at random by path (a layout directory), `Entries` go by one after another (a tar stream
//! from a file, a compressed file or standard input). Sources know paths, sizes and bytes,
//! and refuse what is unsafe to read (hard links, `..`, special files); a symbolic link is
//! passed on as data (its target, never followed), for the format to judge; sources know
//! nothing of image layouts, which `format` reads.

pub mod dir;
pub mod tar;

use std::io::{self, Read};

use crate::error::{Error, Result};

/// Files read at random, by a relative path with `/` separators.
pub trait Tree: Sync {
    /// What errors call this source (its path).
    fn label(&self) -> String;
    /// Where `path` is, for messages.
    fn locate(&self, path: &str) -> String;
    /// The whole file `path`, refused over `cap` bytes (`Error::TooLarge`); None when it is
    /// not there.
    fn read_file(&self, path: &str, cap: u64) -> Result<Option<Vec<u8>>>;
    /// The size of the regular file `path`; None when it is not there.
    fn size(&self, path: &str) -> Result<Option<u64>>;
    /// Opens the regular file `path` for reading; None when it is not there.
    fn open(&self, path: &str) -> Result<Option<Box<dyn Read + Send + '_>>>;
}

/// Entries one after another, each read (or skipped) before the next.
pub trait Entries {
    /// What errors call this source (a path, or "standard input").
    fn label(&self) -> String;
    /// Calls `visit` with every entry in turn, then checks that the stream ended whole. An
    /// entry `visit` does not read to its end is skipped.
    fn for_each(&mut self, visit: &mut dyn FnMut(Entry<'_>) -> Result<()>) -> Result<()>;
}

/// One entry of a stream.
pub struct Entry<'a> {
    /// Relative, checked: no `..`, not absolute, UTF-8.
    pub path: &'a str,
    pub is_dir: bool,
    /// A symbolic link's target, as written (UTF-8; never followed by the source).
    pub link: Option<&'a str>,
    /// Bytes of content the entry says it has.
    pub size: u64,
    pub reader: &'a mut dyn Read,
    /// Turns an error reading this entry into the source's own words.
    pub read_error: &'a dyn Fn(io::Error) -> Error,
}

impl Entry<'_> {
    /// The path, fit for a one-line message.
    pub fn shown(&self) -> String {
        crate::error::printable(self.path)
    }

    /// Reads what is left of the entry and drops it.
    pub fn skip(&mut self) -> Result<()> {
        io::copy(self.reader, &mut io::sink()).map_err(self.read_error)?;
        Ok(())
    }
}
