//! The sandbox a guest runs in: what it can see of the host.
//!
//! A guest gets exactly: its workspace preopened at [`GUEST_WORKSPACE`]
//! (read-only for agents), captured and bounded stdout/stderr, an empty
//! stdin, clocks and randomness. It gets no environment variables, no
//! arguments, no other preopens and no sockets.

mod capture;
mod workspace;

use std::path::PathBuf;

use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

pub use capture::{Capture, Captured};
pub use workspace::{GUEST_WORKSPACE, Workspace};

/// Errors setting up a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The workspace directory could not be opened.
    #[error("cannot open workspace {path}: {source}")]
    Workspace {
        /// The directory.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// wasmtime-wasi refused the preopen.
    #[error("cannot preopen workspace {path}: {message}")]
    Preopen {
        /// The directory.
        path: PathBuf,
        /// wasmtime-wasi's reason.
        message: String,
    },
}

/// How a guest may use its workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceAccess {
    /// Read files and list directories.
    ReadOnly,
    /// Also create, write, rename and remove.
    ReadWrite,
}

/// The captured standard streams of one guest.
#[derive(Debug, Clone)]
pub struct Stdio {
    /// The guest's stdout.
    pub stdout: Capture,
    /// The guest's stderr.
    pub stderr: Capture,
}

/// Build the WASI context for one guest instance.
pub fn wasi_context(
    workspace: Option<&Workspace>,
    access: WorkspaceAccess,
    stdio_bytes: usize,
) -> Result<(WasiCtx, Stdio), SandboxError> {
    let stdio = Stdio {
        stdout: Capture::new(stdio_bytes),
        stderr: Capture::new(stdio_bytes),
    };
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(stdio.stdout.clone())
        .stderr(stdio.stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    if let Some(workspace) = workspace {
        let perms = match access {
            WorkspaceAccess::ReadOnly => FsPerms::ReadOnly,
            WorkspaceAccess::ReadWrite => FsPerms::ReadWrite,
        };
        builder
            .preopened_dir(workspace.path(), GUEST_WORKSPACE, perms)
            .map_err(|err| SandboxError::Preopen {
                path: workspace.path().to_path_buf(),
                message: err.to_string(),
            })?;
    }
    Ok((builder.build(), stdio))
}
