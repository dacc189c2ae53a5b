//! A job's workspace directory, held as a capability.

use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use std::sync::Arc;

use tokio::sync::Mutex;

use super::SandboxError;
use super::staging::Stagings;
use crate::policy::GrantPath;

/// The guest path at which every job's workspace is preopened.
pub const GUEST_WORKSPACE: &str = "/workspace";

/// A directory on the host that one job may see.
///
/// The host opens the directory once, by path, and from then on reaches its
/// contents only through the cap-std [`Dir`] handle, which refuses `..`,
/// absolute paths and symlinks that resolve outside it.
#[derive(Debug)]
pub struct Workspace {
    path: PathBuf,
    dir: Dir,
    /// Staging copies of read-write grants; the lock also serializes the
    /// transactional tool calls of this workspace.
    staging: Arc<Mutex<Stagings>>,
}

impl Workspace {
    /// Open an existing directory as a workspace.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SandboxError> {
        let path = path.as_ref().to_path_buf();
        let dir = Dir::open_ambient_dir(&path, ambient_authority()).map_err(|source| SandboxError::Workspace {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            dir,
            staging: Arc::new(Mutex::new(Stagings::new(&std::env::temp_dir()))),
        })
    }

    /// The host path this workspace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn staging(&self) -> &Arc<Mutex<Stagings>> {
        &self.staging
    }

    /// The capability handle for host-side access.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The host directory a filesystem grant names, or `None` if it does not
    /// exist (the tool then sees nothing there).
    ///
    /// Every component of the path is checked through the workspace
    /// capability and must be a real directory, not a symlink: a tool that
    /// planted a symlink during an earlier call cannot redirect a later
    /// call's preopen outside the workspace.
    pub fn resolve_grant(&self, grant: &GrantPath) -> Result<Option<PathBuf>, SandboxError> {
        let mut prefix = PathBuf::new();
        for part in grant.relative().components() {
            prefix.push(part);
            let metadata = match self.dir.symlink_metadata(&prefix) {
                Ok(metadata) => metadata,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(self.grant_error(grant, source.to_string())),
            };
            if metadata.file_type().is_symlink() {
                return Err(self.grant_error(grant, format!("{} is a symlink", prefix.display())));
            }
            if !metadata.is_dir() {
                return Err(self.grant_error(grant, format!("{} is not a directory", prefix.display())));
            }
        }
        Ok(Some(self.path.join(grant.relative())))
    }

    /// The directory a grant names, opened through the workspace capability.
    pub(crate) fn open_grant_dir(&self, grant: &GrantPath) -> std::io::Result<Dir> {
        match grant.relative().as_os_str().is_empty() {
            true => self.dir.try_clone(),
            false => self.dir.open_dir(grant.relative()),
        }
    }

    fn grant_error(&self, grant: &GrantPath, reason: String) -> SandboxError {
        SandboxError::Grant {
            path: grant.as_str().to_owned(),
            reason,
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let staging = self.staging.clone();
        let remove = move || {
            if let Ok(mut staging) = staging.try_lock()
                && let Err(err) = staging.remove_all()
            {
                tracing::warn!(error = %err, "cannot remove tool staging copies");
            }
        };
        // Removing a tree blocks: keep it off the async worker threads.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}
