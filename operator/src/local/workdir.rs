//! The driver's private temporary directory and the cluster secret in it.
//!
//! The directory is created `0700` under the system temp dir and holds the peer-link secret
//! (`0600`); the driver removes it on shutdown. Node logs do not go here, so they survive it.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Error;

/// Bytes of randomness in the cluster secret.
const SECRET_BYTES: usize = 32;

/// A temporary directory removed by [`WorkDir::remove`] (and, as a backstop, on drop).
#[derive(Debug)]
pub(crate) struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// Creates a fresh private directory.
    pub(crate) fn create() -> Result<WorkDir, Error> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Unique per process and per call, so two clusters in one test binary never collide.
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "roomshard-local-{}-{n}-{nanos:09}",
            std::process::id()
        ));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
        Ok(WorkDir { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a random secret (hex) into a new `0600` file and returns its path.
    pub(crate) fn write_secret(&self) -> Result<PathBuf, Error> {
        let mut bytes = [0u8; SECRET_BYTES];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| Error::io("cannot read /dev/urandom", e))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.path.join("cluster-secret");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(hex.as_bytes()))
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        Ok(path)
    }

    /// Removes the directory and everything in it.
    pub(crate) fn remove(&self) -> Result<(), Error> {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("cannot remove {}", self.path.display()),
                e,
            )),
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_secret_is_private_random_and_removed_with_the_directory() -> Result<(), Error> {
        let dir = WorkDir::create()?;
        let secret = dir.write_secret()?;
        let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777).ok();
        assert_eq!(mode(dir.path()), Some(0o700));
        assert_eq!(mode(&secret), Some(0o600));
        let text = fs::read_to_string(&secret).map_err(|e| Error::io("read", e))?;
        assert_eq!(text.len(), SECRET_BYTES * 2);
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
        let other = WorkDir::create()?;
        assert_ne!(
            other
                .write_secret()
                .ok()
                .map(fs::read_to_string)
                .and_then(Result::ok),
            Some(text)
        );
        dir.remove()?;
        assert!(!dir.path().exists());
        Ok(())
    }
}
