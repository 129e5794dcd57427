//! Pods' service-account tokens while their volumes are mounted: a file per
//! target in root's state directory, which the volume's daemon re-reads at
//! each renewal.

use std::io::Write;
use std::path::{Path, PathBuf};

use tonic::Status;

use crate::auth::Secret;
use crate::local_dir::LocalDir;

/// Pods' tokens while their volumes are mounted: a file per target in root's
/// state directory, used through its descriptor.
pub(super) struct Tokens(pub(super) LocalDir);

impl Tokens {
    /// The file's name for the volume published at `target`.
    pub(super) fn name(target: &Path) -> String {
        let hash = blake3::hash(target.as_os_str().as_encoded_bytes());
        format!("{}.token", &hash.to_hex()[..32])
    }

    pub(super) fn has(&self, target: &Path) -> bool {
        self.0.open_file(&Self::name(target)).is_ok()
    }

    /// Replaces the token of `target`'s volume, atomically: the daemon reading
    /// it at a renewal sees the old token or the new one, never half. Returns
    /// the file's path, for the daemon.
    pub(super) fn keep(&self, target: &Path, token: &Secret) -> Result<PathBuf, Status> {
        let name = Self::name(target);
        let partial = format!("{name}.partial");
        let written = self.0.open_read_write(&partial, true).and_then(|mut file| {
            file.set_len(0)?;
            file.write_all(token.expose().as_bytes())?;
            file.sync_all()?;
            self.0.rename(&partial, &name)
        });
        let path = self.0.path().join(&name);
        written.map_err(|e| {
            Status::internal(format!(
                "cannot keep the pod's token in {}: {e}",
                path.display()
            ))
        })?;
        Ok(path)
    }

    pub(super) fn forget(&self, target: &Path) {
        let _ = self.0.remove_file(&Self::name(target));
    }
}
