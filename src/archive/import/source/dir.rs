//! A directory as a source: its files read at random by relative path, regular files only
//! (a symbolic link or anything else in a file's place is refused, never followed), small
//! files read with a cap.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

use super::Tree;

/// The files under one directory.
pub struct DirTree {
    root: PathBuf,
}

impl DirTree {
    pub fn new(root: &Path) -> DirTree {
        DirTree {
            root: root.to_path_buf(),
        }
    }
}

impl Tree for DirTree {
    fn label(&self) -> String {
        self.root.display().to_string()
    }

    fn locate(&self, path: &str) -> String {
        self.root.join(path).display().to_string()
    }

    fn read_file(&self, path: &str, cap: u64) -> Result<Option<Vec<u8>>> {
        let path = self.root.join(path);
        let Some(file) = open_regular(&path)? else {
            return Ok(None);
        };
        let size = file.metadata().at(&path)?.len();
        let too_large = |size| Error::TooLarge {
            file: path.display().to_string(),
            size,
            cap,
        };
        if size > cap {
            return Err(too_large(size));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(cap + 1).read_to_end(&mut bytes).at(&path)?;
        if bytes.len() as u64 > cap {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(Some(bytes))
    }

    fn size(&self, path: &str) -> Result<Option<u64>> {
        let path = self.root.join(path);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => Err(Error::io(
                &path,
                io::Error::other("symbolic links are refused"),
            )),
            Ok(m) if m.is_file() => Ok(Some(m.size())),
            Ok(_) => Err(Error::io(&path, io::Error::other("not a regular file"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn open(&self, path: &str) -> Result<Option<Box<dyn Read + Send + '_>>> {
        let file = open_regular(&self.root.join(path))?;
        Ok(file.map(|f| Box::new(f) as Box<dyn Read + Send>))
    }
}

/// Opens a regular file without following a symbolic link; None when it is not there.
fn open_regular(path: &Path) -> Result<Option<File>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Error::io(
                path,
                io::Error::other("symbolic links are refused"),
            ))
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let meta = file.metadata().at(path)?;
    if !meta.is_file() {
        return Err(Error::io(path, io::Error::other("not a regular file")));
    }
    Ok(Some(file))
}
