//! A tar stream as a source: plain, gzip or zstd (told apart by their magic bytes), from a
//! file or standard input, read once from start to end. Every entry's path is made relative
//! and checked; regular files, directories and symbolic links pass (a link as its target,
//! for the format to judge: it is never followed here); hard links, devices and GNU sparse
//! files are refused; an archive cut short, even at an entry boundary, is refused at the end.

use std::io::{self, Read};
use std::path::{Component, Path};

use crate::archive::tarfmt;
use crate::error::{Error, Result};
use crate::progress::Progress;

use super::{Entries, Entry};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// Where a tar header block says "ustar".
const USTAR_MAGIC_AT: std::ops::Range<usize> = 257..262;
/// Bytes read ahead to recognise a stream.
const SNIFF_LEN: usize = 512;
/// Buffer in front of the gzip decoder.
const GZIP_BUFFER: usize = 1 << 20;

/// What a GNU sparse entry (`tar --sparse`) gets: its holes would need filling, and no tool
/// writes blobs that way.
const SPARSE_REFUSED: &str = "sparse files (GNU tar --sparse) are not supported";
/// What the tar crate's errors say about a GNU sparse header it could not read.
const SPARSE_ERRORS: &[&str] = &["sparse", "real_size"];
/// The PAX keys of GNU tar's sparse formats 0.0, 0.1 and 1.0 (`--format=posix --sparse`).
const PAX_SPARSE_PREFIX: &str = "GNU.sparse.";

/// A tar stream, read once.
pub struct TarStream<'r> {
    reader: Option<Box<dyn Read + 'r>>,
    label: String,
    /// The stream's size when known (a file), for the progress bar.
    size: Option<u64>,
}

impl<'r> TarStream<'r> {
    /// The stream `reader` yields; `label` names it in errors.
    pub fn new(reader: Box<dyn Read + 'r>, label: &str, size: Option<u64>) -> TarStream<'r> {
        TarStream {
            reader: Some(reader),
            label: label.to_owned(),
            size,
        }
    }
}

impl Entries for TarStream<'_> {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn for_each(&mut self, visit: &mut dyn FnMut(Entry<'_>) -> Result<()>) -> Result<()> {
        let errs = ArchiveErrors { label: &self.label };
        let reader = self
            .reader
            .take()
            .ok_or_else(|| errs.bad("read twice".into()))?;
        let progress = Progress::bytes("importing", self.size);
        let counted = Counting {
            inner: reader,
            progress: &progress,
        };
        let mut tail = Tail {
            inner: decompress(Box::new(counted), &self.label)?,
            last: [0xff; tarfmt::BLOCK],
        };
        let mut archive = tar::Archive::new(&mut tail);
        let read_error = |e| errs.tar(e);
        for entry in archive.entries().map_err(read_error)? {
            let mut entry = entry.map_err(read_error)?;
            let raw = entry.path().map_err(read_error)?.into_owned();
            let path = safe_path(&raw).map_err(|m| errs.bad(format!("entry {m}")))?;
            let shown = crate::error::printable(&path);
            let kind = check_kind(&mut entry, &shown, &errs)?;
            let link = match kind {
                Kind::Symlink => Some(link_target(&entry, &shown, &errs)?),
                _ => None,
            };
            let size = if link.is_some() { 0 } else { entry.size() };
            visit(Entry {
                path: &path,
                is_dir: kind == Kind::Dir,
                link: link.as_deref(),
                size,
                reader: &mut entry,
                read_error: &read_error,
            })?;
        }
        if tail.last.iter().any(|b| *b != 0) {
            return Err(
                errs.bad("truncated: the archive ends without its end-of-archive blocks".into())
            );
        }
        progress.finish();
        Ok(())
    }
}

/// Recognises gzip and zstd by their magic bytes; anything else must be a tar.
fn decompress<'r>(mut r: Box<dyn Read + 'r>, label: &str) -> Result<Box<dyn Read + 'r>> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut r)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::Stream {
            what: label.to_owned(),
            source: e,
        })?;
    let whole: Box<dyn Read + 'r> = Box::new(io::Cursor::new(head.clone()).chain(r));
    if head.starts_with(GZIP_MAGIC) {
        return Ok(Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(GZIP_BUFFER, whole),
        )));
    }
    if head.starts_with(ZSTD_MAGIC) {
        let z = zstd::stream::read::Decoder::new(whole).map_err(|e| Error::Stream {
            what: label.to_owned(),
            source: e,
        })?;
        return Ok(Box::new(z));
    }
    if head.len() < SNIFF_LEN || &head[USTAR_MAGIC_AT] != b"ustar" {
        return Err(Error::archive(
            label,
            "not a tar archive (nor gzip or zstd compressed)",
        ));
    }
    Ok(whole)
}

/// A path from an archive, fit for a one-line message.
fn quoted(raw: &Path) -> String {
    crate::error::printable(&raw.to_string_lossy())
}

/// A tar entry's path made relative and checked: no absolute paths, no `..`.
fn safe_path(raw: &Path) -> std::result::Result<String, String> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(
                p.to_str()
                    .ok_or_else(|| format!("{}: not UTF-8", quoted(raw)))?,
            ),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("{}: '..' is refused", quoted(raw))),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{}: absolute paths are refused", quoted(raw)))
            }
        }
    }
    Ok(parts.join("/"))
}

/// The errors of one archive, named by its label.
struct ArchiveErrors<'a> {
    label: &'a str,
}

impl ArchiveErrors<'_> {
    fn bad(&self, message: String) -> Error {
        Error::archive(self.label, message)
    }

    /// A read error of the tar stream, as one printable line.
    fn tar(&self, e: io::Error) -> Error {
        // The tar crate fails on many GNU sparse headers before it yields the entry, in
        // words of its own.
        let text = e.to_string();
        if SPARSE_ERRORS.iter().any(|w| text.contains(w)) {
            return self.bad(SPARSE_REFUSED.into());
        }
        self.bad(format!(
            "truncated or corrupt tar: {}",
            crate::error::printable(&text)
        ))
    }
}

/// The kinds of entry a tar source passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// Refuses every kind of entry but regular files, directories and symbolic links.
fn check_kind<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    shown: &str,
    errs: &ArchiveErrors<'_>,
) -> Result<Kind> {
    let kind = entry.header().entry_type();
    if is_pax_sparse(entry).map_err(|e| errs.tar(e))? {
        return Err(errs.bad(format!("entry {shown}: {SPARSE_REFUSED}")));
    }
    if kind.is_file() {
        return Ok(Kind::File);
    }
    if kind.is_dir() {
        return Ok(Kind::Dir);
    }
    if kind.is_symlink() {
        return Ok(Kind::Symlink);
    }
    let what = if kind.is_gnu_sparse() {
        SPARSE_REFUSED
    } else if kind.is_hard_link() {
        "hard links are refused"
    } else {
        "only regular files and directories are accepted"
    };
    Err(errs.bad(format!("entry {shown}: {what}")))
}

/// A symbolic link's target, which must be UTF-8 and not empty.
fn link_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    shown: &str,
    errs: &ArchiveErrors<'_>,
) -> Result<String> {
    let target = entry.link_name().map_err(|e| errs.tar(e))?;
    let target = target
        .as_deref()
        .and_then(|t| t.to_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            errs.bad(format!(
                "entry {shown}: symbolic link without a UTF-8 target"
            ))
        })?;
    Ok(target.to_owned())
}

/// Whether `entry` is a sparse file in one of the PAX forms.
fn is_pax_sparse<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<bool> {
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(false);
    };
    for ext in exts {
        if ext?.key_bytes().starts_with(PAX_SPARSE_PREFIX.as_bytes()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Remembers the last block that went by: a whole archive ends with a zero block, one cut at
/// an entry boundary does not.
struct Tail<R> {
    inner: R,
    last: [u8; tarfmt::BLOCK],
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = &buf[..n];
        let len = self.last.len();
        if n >= len {
            self.last.copy_from_slice(&got[n - len..]);
        } else {
            self.last.copy_within(n.., 0);
            self.last[len - n..].copy_from_slice(got);
        }
        Ok(n)
    }
}

/// Counts the compressed bytes read, for the progress bar.
struct Counting<'a, R> {
    inner: R,
    progress: &'a Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        let ok = [
            ("./blobs/sha256/x", "blobs/sha256/x"),
            ("index.json", "index.json"),
            ("./", ""),
        ];
        for (raw, want) in ok {
            assert_eq!(safe_path(Path::new(raw)).unwrap(), want);
        }
        for raw in ["/etc/passwd", "../x", "blobs/../../x", "a/../b"] {
            assert!(safe_path(Path::new(raw)).is_err(), "{raw}");
        }
    }
}
