//! An I/O error together with the path it happened on, read as `<path>: <error>`: the node's
//! file system errors (pod folders, volumes, mounts) all name their path, and this is the one
//! type that does it.

use std::io;
use std::path::{Path, PathBuf};

/// An I/O error on `path`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", path.display())]
pub struct PathError {
    pub path: PathBuf,
    pub error: io::Error,
}

/// Attaches the path to an I/O result: `std::fs::create_dir_all(&dir).at(&dir)?`.
pub trait AtPath<T> {
    fn at(self, path: &Path) -> Result<T, PathError>;
}

impl<T> AtPath<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, PathError> {
        self.map_err(|error| PathError {
            path: path.to_path_buf(),
            error,
        })
    }
}
