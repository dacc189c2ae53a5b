//! A job's workspace directory, held as a capability.

use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use super::SandboxError;

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
}

impl Workspace {
    /// Open an existing directory as a workspace.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SandboxError> {
        let path = path.as_ref().to_path_buf();
        let dir = Dir::open_ambient_dir(&path, ambient_authority()).map_err(|source| SandboxError::Workspace {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path, dir })
    }

    /// The host path this workspace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The capability handle for host-side access.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }
}
