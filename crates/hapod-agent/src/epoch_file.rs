//! The last applied epoch, kept in a file across agent restarts (an `emptyDir` survives a
//! container restart), so that a restarted agent refuses orders it or a predecessor already
//! applied: a captured order cannot be replayed into it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct EpochFile {
    path: PathBuf,
}

impl EpochFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EpochFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored epoch; 0 when the file does not exist yet. Anything but a decimal number
    /// (and an optional newline) is an error: guessing could let an old order back in.
    pub fn load(&self) -> io::Result<u64> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(error),
        };
        text.trim_end_matches('\n').parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "epoch file {} holds {text:?}, not a decimal epoch; remove it to start over \
                     (the agent then accepts any epoch once)",
                    self.path.display()
                ),
            )
        })
    }

    /// Stores `epoch` durably: a temporary file in the same folder, synced, then renamed over
    /// the old one, so that a crash leaves either the old or the new epoch.
    pub fn store(&self, epoch: u64) -> io::Result<()> {
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        let mut file = fs::File::create(&temporary)?;
        writeln!(file, "{epoch}")?;
        file.sync_all()?;
        fs::rename(&temporary, &self.path)?;
        if let Some(folder) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::File::open(folder)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_epoch_zero_and_a_stored_epoch_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = EpochFile::new(dir.path().join("epoch"));
        assert_eq!(file.load().unwrap(), 0);
        file.store(7 << 32 | 2).unwrap();
        assert_eq!(file.load().unwrap(), 7 << 32 | 2);
        file.store(8 << 32).unwrap();
        assert_eq!(EpochFile::new(file.path()).load().unwrap(), 8 << 32);
    }

    #[test]
    fn garbage_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epoch");
        fs::write(&path, "seven").unwrap();
        let error = EpochFile::new(&path).load().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains(&path.display().to_string()));
    }
}
