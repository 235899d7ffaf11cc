//! The OCI image layout as an import format: `oci-layout` (checked), `index.json` (the
//! images), and blobs under `blobs/<alg>/<hex>`, each checked against the digest its path
//! names; symbolic links are refused. Docker's `manifest.json` beside them is size-checked and
//! ignored here (names come from `index.json`; `format::docker` reads both); anything else
//! outside `blobs/` is ignored.

use std::collections::BTreeMap;
use std::io::{self, Read};

use crate::digest::Digest;
use crate::docker::Compression;
use crate::error::{Error, Result};
use crate::oci::{self, Descriptor, ImageIndex, MAX_INDEX_JSON_SIZE, MAX_JSON_SIZE};

use super::super::intake::Intake;
use super::super::pull::Blobs;
use super::super::source::{Entry, Tree};
use super::{StreamFormat, TreeFormat};

pub(super) const LAYOUT_FILE: &str = "oci-layout";
pub(super) const INDEX_FILE: &str = "index.json";
const DOCKER_MANIFEST: &str = "manifest.json";

/// An OCI layout read from a tree (a directory).
pub struct Layout;

impl TreeFormat for Layout {
    fn open<'t>(&self, tree: &'t dyn Tree) -> Result<(ImageIndex, Box<dyn Blobs + 't>)> {
        let layout_file = required(tree, LAYOUT_FILE, MAX_JSON_SIZE)?;
        oci::check_layout_file(&tree.locate(LAYOUT_FILE), &layout_file)?;
        let index_bytes = required(tree, INDEX_FILE, MAX_INDEX_JSON_SIZE)?;
        let index = ImageIndex::parse(&tree.locate(INDEX_FILE), &index_bytes)?;
        Ok((index, Box::new(LayoutBlobs { tree })))
    }
}

/// A small file the layout must have.
fn required(tree: &dyn Tree, name: &str, cap: u64) -> Result<Vec<u8>> {
    tree.read_file(name, cap)?
        .ok_or_else(|| Error::layout(tree.locate(name), "missing: not an OCI image layout"))
}

/// The blobs of a layout tree, by the path their digest names.
struct LayoutBlobs<'t> {
    tree: &'t dyn Tree,
}

impl Blobs for LayoutBlobs<'_> {
    fn size(&self, desc: &Descriptor) -> Result<Option<u64>> {
        self.tree.size(&desc.digest.blob_path())
    }

    fn open(&self, desc: &Descriptor, offset: u64) -> Result<(Box<dyn Read + Send + '_>, String)> {
        let path = desc.digest.blob_path();
        match self.tree.open(&path)? {
            Some(mut r) => {
                // A tree's file is read from its start: an offset skips that many bytes.
                if offset > 0 {
                    std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink())
                        .map_err(|e| Error::io(self.tree.locate(&path), e))?;
                }
                Ok((r, self.tree.locate(&path)))
            }
            None => Err(Error::MissingBlob {
                digest: desc.digest.clone(),
                referrer: None,
            }),
        }
    }
}

/// An OCI layout read from a stream of entries (a tar archive): each blob goes from its
/// entry straight into an ingest.
pub struct LayoutStream {
    label: String,
    layout_file: Option<Vec<u8>>,
    index_bytes: Option<Vec<u8>>,
    /// The blobs met so far, with how each is compressed: a second copy is skipped.
    seen: BTreeMap<Digest, Compression>,
}

impl LayoutStream {
    /// `label` names the stream in errors.
    pub fn new(label: &str) -> LayoutStream {
        LayoutStream {
            label: label.to_owned(),
            layout_file: None,
            index_bytes: None,
            seen: BTreeMap::new(),
        }
    }

    fn bad(&self, message: String) -> Error {
        Error::archive(&self.label, message)
    }

    /// Whether `oci-layout` went by: the archive is an OCI layout.
    pub fn has_layout_file(&self) -> bool {
        self.layout_file.is_some()
    }

    /// How blob `digest` of the stream is compressed, if it went by.
    pub fn compression(&self, digest: &Digest) -> Option<Compression> {
        self.seen.get(digest).copied()
    }

    /// After the last entry: the index of the images, from `oci-layout` and `index.json`.
    pub fn index(&self) -> Result<ImageIndex> {
        let layout_file = self
            .layout_file
            .as_deref()
            .ok_or_else(|| self.bad("oci-layout is missing: not an OCI archive".into()))?;
        oci::check_layout_file(&format!("{}: {LAYOUT_FILE}", self.label), layout_file)?;
        let index_bytes = self
            .index_bytes
            .as_deref()
            .ok_or_else(|| self.bad("index.json is missing".into()))?;
        ImageIndex::parse(&format!("{}: {INDEX_FILE}", self.label), index_bytes)
    }

    /// Keeps a small file of the layout; a second copy would silently replace the first.
    fn keep(&mut self, member: &Member, entry: Entry<'_>) -> Result<()> {
        let what = format!("{}: {}", self.label, entry.path);
        match member {
            Member::Index | Member::DockerManifest => oci::check_index_size(&what, entry.size)?,
            _ => oci::check_json_size(&what, entry.size)?,
        }
        let mut bytes = Vec::with_capacity(entry.size as usize);
        entry
            .reader
            .read_to_end(&mut bytes)
            .map_err(entry.read_error)?;
        let twice = match member {
            Member::LayoutFile => self.layout_file.replace(bytes).is_some(),
            Member::Index => self.index_bytes.replace(bytes).is_some(),
            _ => false, // Docker's manifest.json: names come from index.json.
        };
        if twice {
            return Err(self.bad(format!("{} appears twice", entry.shown())));
        }
        Ok(())
    }

    /// Streams one blob entry into an ingest, checked against `digest` and the entry's size,
    /// unless it was met before or the store has it; its first bytes say how it is
    /// compressed.
    fn blob(&mut self, digest: Digest, mut entry: Entry<'_>, intake: &Intake<'_>) -> Result<()> {
        if self.seen.contains_key(&digest) {
            return entry.skip();
        }
        let head = read_head(entry.reader).map_err(entry.read_error)?;
        self.seen.insert(digest.clone(), Compression::sniff(&head));
        intake.hold(&digest)?;
        if intake.has(&digest)? {
            return entry.skip();
        }
        let what = format!("{}: {}", self.label, entry.path);
        let size = entry.size;
        let mut w = intake.start(&digest, size)?;
        w.write_all(&head)?;
        w.copy_from(entry.reader, &what, &mut |_| {})
            .map_err(|e| match e {
                Error::Stream { source, .. } => (entry.read_error)(source),
                e => e,
            })?;
        if w.written() != size {
            return Err((entry.read_error)(io::ErrorKind::UnexpectedEof.into()));
        }
        intake.commit(w, &digest, size)
    }
}

/// The first bytes of an entry (fewer if it is shorter), enough to tell its compression.
pub(super) fn read_head(r: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(Compression::SNIFF_LEN);
    r.take(Compression::SNIFF_LEN as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

impl StreamFormat for LayoutStream {
    fn entry(&mut self, entry: Entry<'_>, intake: &Intake<'_>) -> Result<()> {
        if entry.link.is_some() {
            return Err(self.bad(format!(
                "entry {}: symbolic links are refused",
                entry.shown()
            )));
        }
        let member = classify(entry.path, entry.is_dir)
            .map_err(|e| self.bad(format!("entry {}: {e}", entry.shown())))?;
        match member {
            Member::Dir | Member::Other => Ok(()),
            Member::Blob(digest) => self.blob(digest, entry, intake),
            m => self.keep(&m, entry),
        }
    }

    fn finish(self: Box<Self>, _intake: &Intake<'_>) -> Result<ImageIndex> {
        self.index()
    }
}

/// What an entry is, by its path.
enum Member {
    LayoutFile,
    Index,
    DockerManifest,
    Blob(Digest),
    Dir,
    Other,
}

fn classify(path: &str, is_dir: bool) -> Result<Member> {
    if is_dir {
        return Ok(Member::Dir);
    }
    Ok(match path {
        LAYOUT_FILE => Member::LayoutFile,
        INDEX_FILE => Member::Index,
        DOCKER_MANIFEST => Member::DockerManifest,
        _ => match path
            .strip_prefix("blobs/")
            .map(|r| r.split('/').collect::<Vec<_>>())
        {
            Some(parts) if parts.len() == 2 => {
                Member::Blob(Digest::from_parts(parts[0], parts[1])?)
            }
            Some(_) => {
                return Err(Error::Invalid(format!(
                    "unexpected file {path:?} under blobs/"
                )))
            }
            None => Member::Other,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_members() {
        let hex = "a".repeat(64);
        assert!(matches!(
            classify(&format!("blobs/sha256/{hex}"), false),
            Ok(Member::Blob(_))
        ));
        for bad in [
            format!("blobs/sha384/{hex}"),
            format!("blobs/sha256/{}", hex.to_uppercase()),
            "blobs/sha256/abc".into(),
            format!("blobs/x/sha256/{hex}"),
        ] {
            assert!(classify(&bad, false).is_err(), "{bad}");
        }
        assert!(matches!(classify("blobs/sha256", true), Ok(Member::Dir)));
        assert!(matches!(classify("repositories", false), Ok(Member::Other)));
    }
}
