//! The importer: image sets into the store, from a source through a format, then
//! registered. A source yields files (`source::dir`, a layout directory read at random;
//! `source::tar`, an archive streamed from a file or standard input); a format reads them
//! (`format::oci`, the OCI image layout); a source of blobs by digest (a registry, next)
//! skips the format and is pulled directly (`pull`). Blobs are written through `Intake`,
//! verified against their digests, and nothing is registered until the closure of every
//! listed image is present and sound (`register`); then all names are registered in one
//! transaction. A failed import takes back the blobs it placed; a successful one those no
//! image reaches.

pub mod format;
mod intake;
pub mod pull;
mod register;
pub mod source;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::content::{Content, TakeBack};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::oci::{Descriptor, ImageIndex, OnMissing, ANNOTATION_IMAGE_NAME};
use crate::reference::{check_repository, Reference};
use crate::store::{now_ms, pause_point};

use format::docker::ArchiveStream;
use format::oci::{Layout, LayoutStream};
use format::{StreamFormat, TreeFormat};
use intake::Written;
use pull::Blobs;
use register::{register, Images};
use source::dir::DirTree;
use source::tar::TarStream;
use source::{Entries, Tree};

pub use intake::Intake;

/// Extensions dropped from a file name to make the default repository name.
const ARCHIVE_EXTENSIONS: &[&str] = &[
    ".tar.gz",
    ".tar.zst",
    ".tar.zstd",
    ".tgz",
    ".tzst",
    ".tar",
    ".oci",
    ".gz",
    ".zst",
];

/// Where an import reads from.
#[derive(Debug, Clone)]
pub enum Source {
    Dir(PathBuf),
    Archive(PathBuf),
    Stdin,
}

impl Source {
    /// `-` is standard input, a directory is a layout, anything else an archive.
    pub fn from_arg(arg: &Path) -> Result<Source> {
        if arg == Path::new("-") {
            return Ok(Source::Stdin);
        }
        let meta = fs::metadata(arg).at(arg)?;
        Ok(if meta.is_dir() {
            Source::Dir(arg.to_path_buf())
        } else {
            Source::Archive(arg.to_path_buf())
        })
    }

    /// The name errors use for this source.
    fn label(&self) -> String {
        match self {
            Source::Dir(p) | Source::Archive(p) => p.display().to_string(),
            Source::Stdin => "standard input".into(),
        }
    }

    /// The repository an image named only by tag or digest goes to, when `--name` is absent.
    fn default_repository(&self) -> Option<String> {
        let path = match self {
            Source::Dir(p) | Source::Archive(p) => p,
            Source::Stdin => return None,
        };
        let canon = fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        let base = canon.file_name()?.to_str()?.to_owned();
        let stem = ARCHIVE_EXTENSIONS
            .iter()
            .find_map(|ext| base.strip_suffix(ext))
            .unwrap_or(&base);
        Some(stem.to_owned())
    }
}

/// What an import registered.
#[derive(Debug, Clone)]
pub struct Imported {
    pub names: Vec<Reference>,
    /// Blobs newly written to the store (others were there already).
    pub new_blobs: usize,
    pub new_bytes: u64,
}

/// What an import reads: a source with the format to read it as, or blobs by digest with
/// the index of their images.
pub enum Input<'a> {
    /// Files read at random (a layout directory).
    Tree {
        tree: &'a dyn Tree,
        format: &'a dyn TreeFormat,
    },
    /// Entries one after another (a tar stream).
    Stream {
        entries: &'a mut dyn Entries,
        format: Box<dyn StreamFormat + 'a>,
    },
    /// Blobs fetched by descriptor (a registry), and the images they make; `on_missing`
    /// says what a blob the source leaves out means (`SkipPlatforms`: a platform not pulled).
    Blobs {
        index: ImageIndex,
        blobs: &'a dyn Blobs,
        on_missing: OnMissing,
    },
}

impl<'a> Input<'a> {
    /// A tree read as an OCI layout.
    pub fn oci_tree(tree: &'a dyn Tree) -> Input<'a> {
        Input::Tree {
            tree,
            format: &Layout,
        }
    }

    /// A stream of entries read as an OCI layout.
    pub fn oci_stream(entries: &'a mut dyn Entries) -> Input<'a> {
        let format = Box::new(LayoutStream::new(&entries.label()));
        Input::Stream { entries, format }
    }

    /// A stream of entries read as any image archive: an OCI layout, a `docker save`
    /// archive, or both.
    pub fn archive_stream(entries: &'a mut dyn Entries) -> Input<'a> {
        let format = Box::new(ArchiveStream::new(&entries.label()));
        Input::Stream { entries, format }
    }
}

/// How an import names and converts what it reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions<'a> {
    /// The repository for images named only by tag or digest (`--name`).
    pub name: Option<&'a str>,
    /// Convert docker schema 2 manifests, indexes and configs to OCI media types (`--oci`).
    pub oci: bool,
}

/// Imports `source`; `name` is the repository for images named only by tag or digest.
pub fn import(store: &dyn Content, source: &Source, name: Option<&str>) -> Result<Imported> {
    import_with(store, source, &ImportOptions { name, oci: false })
}

/// Imports `source` as `opts` say.
pub fn import_with(
    store: &dyn Content,
    source: &Source,
    opts: &ImportOptions<'_>,
) -> Result<Imported> {
    let repository = match opts.name {
        Some(n) => {
            check_repository(n).map_err(|why| {
                Error::Invalid(format!("--name {n:?} is not a repository name: {why}"))
            })?;
            Some(n.to_owned())
        }
        None => source.default_repository(),
    };
    let label = source.label();
    let naming = Naming {
        repository: repository.as_deref(),
        oci: opts.oci,
    };
    match source {
        Source::Dir(dir) => {
            let tree = DirTree::new(dir);
            import_named(store, Input::oci_tree(&tree), &label, &naming)
        }
        Source::Archive(path) => {
            let file = File::open(path).at(path)?;
            let size = file.metadata().at(path)?.len();
            let mut entries = TarStream::new(Box::new(file), &label, Some(size));
            import_named(store, Input::archive_stream(&mut entries), &label, &naming)
        }
        Source::Stdin => {
            let mut entries = TarStream::new(Box::new(io::stdin().lock()), &label, None);
            import_named(store, Input::archive_stream(&mut entries), &label, &naming)
        }
    }
}

/// Where the images of an import go, and in which media types.
#[derive(Debug, Clone, Copy, Default)]
pub struct Naming<'a> {
    /// Takes the images named only by tag or digest.
    pub repository: Option<&'a str>,
    /// Docker schema 2 converted to OCI media types before registering.
    pub oci: bool,
}

/// Imports `input` into `store`; `label` names it in errors, `repository` takes the images
/// named only by tag or digest.
pub fn import_from(
    store: &dyn Content,
    input: Input<'_>,
    label: &str,
    repository: Option<&str>,
) -> Result<Imported> {
    let naming = Naming {
        repository,
        oci: false,
    };
    import_named(store, input, label, &naming)
}

/// Imports `input` into `store` as `naming` says; `label` names it in errors.
pub fn import_named(
    store: &dyn Content,
    input: Input<'_>,
    label: &str,
    naming: &Naming<'_>,
) -> Result<Imported> {
    let repository = naming.repository;
    // Every blob is held before the store is asked whether it has it, and until the images
    // are registered: a gc in another process keeps them (see store::leases).
    let lease = store.lease()?;
    let since_ms = now_ms();
    let batch = store.staging(&*lease)?;
    let intake = Intake::new(&*batch, &*lease);
    let on_missing = match &input {
        Input::Blobs { on_missing, .. } => *on_missing,
        _ => OnMissing::Fail,
    };
    // The blobs are durable and in place before the conversion reads them from the store, and
    // all of them before anything is registered (see store::batch).
    let result = read(input, &intake)
        .and_then(|index| match naming.oci {
            true => intake.finish().and_then(|()| to_oci(store, &intake, index)),
            false => Ok(index),
        })
        .and_then(|index| {
            intake.finish()?;
            pause_point("registering");
            register(
                store,
                store.catalog(),
                &index,
                repository,
                label,
                on_missing,
            )
        });
    let written = intake.into_written();
    let take_back = |placed: &HashSet<Digest>, keep_referrers: bool| {
        let t = TakeBack {
            placed,
            own: lease.id(),
            since_ms,
            keep_referrers,
        };
        store.take_back(&t)
    };
    match result {
        Ok((images, reached)) => Ok(succeeded(images, &reached, written, label, take_back)),
        Err(e) => {
            // Take back the blobs this import placed that nothing else needs: the store is as
            // it was (a blob another import also wrote meanwhile, or an image uses, stays).
            match take_back(&written.placed, false) {
                Ok(r) if !r.is_empty() => {
                    tracing::info!("import failed: removed the {} blobs it had placed", r.len())
                }
                Ok(_) => {}
                Err(c) => tracing::warn!("import failed, and so did removing its blobs: {c}"),
            }
            Err(e)
        }
    }
}

/// Brings the blobs of `input` into the store and returns the index of its images.
fn read(input: Input<'_>, intake: &Intake<'_>) -> Result<ImageIndex> {
    match input {
        Input::Tree { tree, format } => {
            let (index, blobs) = format.open(tree)?;
            pull::pull(&*blobs, &index, intake, OnMissing::Fail)?;
            Ok(index)
        }
        Input::Stream {
            entries,
            mut format,
        } => {
            entries.for_each(&mut |entry| format.entry(entry, intake))?;
            format.finish(intake)
        }
        Input::Blobs {
            index,
            blobs,
            on_missing,
        } => {
            pull::pull(blobs, &index, intake, on_missing)?;
            Ok(index)
        }
    }
}

/// `index` with every image converted to OCI media types (`convert::to_oci`), the new
/// indexes and manifests written through `intake`; a name pinned to an image's old digest
/// names the new one. The old blobs, reached by no image now, are taken back at the end.
fn to_oci(store: &dyn Content, intake: &Intake<'_>, mut index: ImageIndex) -> Result<ImageIndex> {
    let mut put = |d: &Descriptor, bytes: &[u8]| intake.put(&d.digest, bytes);
    for d in &mut index.manifests {
        let mut new = crate::convert::to_oci(store, &mut put, d)?;
        if let Some(name) = new.annotations.get_mut(ANNOTATION_IMAGE_NAME) {
            // A name that does not parse is left for `register` to refuse, in its own words.
            if let Ok(r) = name.parse::<Reference>() {
                *name = r.follow(&d.digest, &new.digest)?.to_string();
            }
        }
        *d = new;
    }
    Ok(index)
}

/// What a successful import reports. A source may carry blobs no image of it reaches (a
/// 2 GiB blob of zeros packs into a few KiB): they are taken back now rather than left for
/// gc.
fn succeeded(
    images: Images,
    reached: &HashSet<Digest>,
    mut written: Written,
    label: &str,
    take_back: impl Fn(&HashSet<Digest>, bool) -> Result<Vec<(Digest, u64)>>,
) -> Imported {
    let unreached: HashSet<Digest> = written.placed.difference(reached).cloned().collect();
    if !unreached.is_empty() {
        match take_back(&unreached, true) {
            Ok(removed) => {
                for (digest, size) in &removed {
                    written.take_back(digest, *size);
                }
                tracing::info!(
                    "removed {} blobs of {label} that no image reaches",
                    removed.len()
                );
            }
            Err(e) => {
                tracing::warn!("{label}: removing the blobs no image reaches failed ({e}): gc will")
            }
        }
    }
    Imported {
        names: images.into_iter().map(|(n, _)| n).collect(),
        new_blobs: written.count,
        new_bytes: written.bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_repository_drops_archive_extensions() {
        let cases = [
            ("x/busybox.tar", "busybox"),
            ("alpine.tar.gz", "alpine"),
            ("a.tgz", "a"),
            ("img.oci", "img"),
            ("plain", "plain"),
        ];
        for (p, want) in cases {
            assert_eq!(
                Source::Archive(p.into()).default_repository().as_deref(),
                Some(want)
            );
        }
        assert_eq!(Source::Stdin.default_repository(), None);
    }
}
