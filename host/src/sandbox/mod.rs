//! The sandbox a guest runs in: what it can see of the host.
//!
//! A guest gets exactly: its workspace preopened at [`GUEST_WORKSPACE`]
//! (read-only for agents), captured and bounded stdout/stderr, an empty
//! stdin, clocks and randomness. It gets no environment variables, no
//! arguments, no other preopens and no sockets.

mod capture;
mod staging;
mod workspace;

use std::path::{Path, PathBuf};

use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

pub use capture::{Capture, Captured};

use tokio::sync::OwnedMutexGuard;

use crate::policy::{Access, GrantPath, ToolPolicy};
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
    /// The staging copy of a read-write grant could not be prepared or synced.
    #[error("cannot stage read-write grant {path:?}: {source}")]
    Staging {
        /// The granted path, relative to the workspace.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A successful tool call's changes could not be committed.
    #[error("cannot commit the tool's changes to read-write grant {path:?}: {reason}")]
    Commit {
        /// The granted path, relative to the workspace.
        path: String,
        /// What failed, and whether the workspace was left as it was.
        reason: String,
    },
    /// A filesystem grant cannot be given safely.
    #[error("filesystem grant {path:?} denied: {reason}")]
    Grant {
        /// The granted path, relative to the workspace.
        path: String,
        /// Why it was refused.
        reason: String,
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
    let (mut builder, stdio) = isolated_builder(stdio_bytes);
    if let Some(workspace) = workspace {
        let perms = match access {
            WorkspaceAccess::ReadOnly => FsPerms::ReadOnly,
            WorkspaceAccess::ReadWrite => FsPerms::ReadWrite,
        };
        preopen_dir(&mut builder, workspace.path(), GUEST_WORKSPACE, perms)?;
    }
    Ok((builder.build(), stdio))
}

/// One directory preopened for a tool call.
#[derive(Debug, Clone)]
pub struct Preopen {
    /// The host directory (for read-write grants, the staging copy).
    pub host: PathBuf,
    /// The grant, which gives the guest path `/workspace/<path>`.
    pub grant: GrantPath,
    /// How the tool may use it.
    pub access: Access,
}

/// The workspace side of one tool call: its preopens, and for read-write
/// grants the staging copies to commit or reset when the call ends.
pub struct ToolCallFs {
    /// What to preopen.
    pub preopens: Vec<Preopen>,
    /// Each staged grant with its workspace directory.
    staged: Vec<(GrantPath, cap_std::fs::Dir)>,
    guard: Option<OwnedMutexGuard<staging::Stagings>>,
}

impl ToolCallFs {
    /// Resolve `policy`'s grants in `workspace`; read-write grants are
    /// redirected to staging copies (see `docs/policy.md`, transactions).
    pub async fn begin(workspace: Option<&Workspace>, policy: &ToolPolicy) -> Result<Self, SandboxError> {
        let mut call = Self {
            preopens: Vec::new(),
            staged: Vec::new(),
            guard: None,
        };
        let Some(workspace) = workspace else {
            return Ok(call);
        };
        for grant in &policy.fs {
            if let Some(host) = workspace.resolve_grant(&grant.path)? {
                call.preopens.push(Preopen {
                    host,
                    grant: grant.path.clone(),
                    access: grant.access,
                });
            }
        }
        if call.preopens.iter().any(|p| p.access == Access::ReadWrite) {
            let guard = workspace.staging().clone().lock_owned().await;
            let originals = call
                .preopens
                .iter()
                .filter(|p| p.access == Access::ReadWrite)
                .map(|p| {
                    workspace
                        .open_grant_dir(&p.grant)
                        .map_err(|source| SandboxError::Staging {
                            path: p.grant.as_str().to_owned(),
                            source,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (guard, preopens, staged) = {
                let preopens = std::mem::take(&mut call.preopens);
                blocking(move || stage(guard, preopens, originals))
            }
            .await?;
            call = Self {
                preopens,
                staged,
                guard: Some(guard),
            };
        }
        Ok(call)
    }

    /// End the call: on `commit`, apply the staged changes to the
    /// workspace; otherwise discard them, leaving the workspace untouched.
    pub async fn finish(mut self, commit: bool) -> Result<(), SandboxError> {
        let Some(mut guard) = self.guard.take() else {
            return Ok(());
        };
        let staged = std::mem::take(&mut self.staged);
        blocking(move || {
            guard.finish(&staged, commit).map_err(|err| SandboxError::Commit {
                path: err.grant.as_str().to_owned(),
                reason: err.to_string(),
            })
        })
        .await
    }
}

impl Drop for ToolCallFs {
    /// A call dropped before [`ToolCallFs::finish`] (its job cancelled or
    /// timed out mid-call) may have written its staging copies: they are
    /// forgotten, so that nothing of that call is ever committed.
    fn drop(&mut self) {
        if let Some(guard) = &mut self.guard {
            for (grant, _) in &self.staged {
                guard.forget(grant);
            }
        }
    }
}

type Staged = (
    OwnedMutexGuard<staging::Stagings>,
    Vec<Preopen>,
    Vec<(GrantPath, cap_std::fs::Dir)>,
);

/// Point each read-write preopen at its staging copy; `originals` are the
/// read-write grants' workspace directories, in order.
fn stage(
    mut guard: OwnedMutexGuard<staging::Stagings>,
    mut preopens: Vec<Preopen>,
    originals: Vec<cap_std::fs::Dir>,
) -> Result<Staged, SandboxError> {
    let mut staged = Vec::new();
    let read_write = preopens.iter_mut().filter(|p| p.access == Access::ReadWrite);
    for (preopen, original) in read_write.zip(originals) {
        preopen.host = guard
            .begin(&preopen.grant, &original)
            .map_err(|source| SandboxError::Staging {
                path: preopen.grant.as_str().to_owned(),
                source,
            })?;
        staged.push((preopen.grant.clone(), original));
    }
    Ok((guard, preopens, staged))
}

/// Run filesystem-heavy work off the async worker threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|err| {
        Err(SandboxError::Staging {
            path: String::new(),
            source: std::io::Error::other(err.to_string()),
        })
    })
}

/// Build the WASI context for one tool call: only `preopens`, each at
/// `/workspace/<path>`, and only the environment variables `env` names,
/// with their values from the host's environment.
///
/// Overlapping grants (say `.` read-only and `out` read-write) work because
/// the guest's libc resolves a path through the longest matching preopen.
///
/// The context's filesystem calls block the thread that runs the guest: the
/// host never polls a tool instance on a thread that is an async worker at
/// the time (see `tools::without_blocking_workers`).
pub fn tool_context(
    preopens: &[Preopen],
    env: &[String],
    stdio_bytes: usize,
) -> Result<(WasiCtx, Stdio), SandboxError> {
    let (mut builder, stdio) = isolated_builder(stdio_bytes);
    builder.allow_blocking_current_thread(true);
    for name in env {
        if let Ok(value) = std::env::var(name) {
            builder.env(name, value);
        }
    }
    for preopen in preopens {
        let guest_path = match preopen.grant.relative().as_os_str().is_empty() {
            true => GUEST_WORKSPACE.to_owned(),
            false => format!("{GUEST_WORKSPACE}/{}", preopen.grant),
        };
        let perms = match preopen.access {
            Access::ReadOnly => FsPerms::ReadOnly,
            Access::ReadWrite => FsPerms::ReadWrite,
        };
        preopen_dir(&mut builder, &preopen.host, &guest_path, perms)?;
    }
    Ok((builder.build(), stdio))
}

/// A context builder with captured stdio and no network, files or environment.
fn isolated_builder(stdio_bytes: usize) -> (WasiCtxBuilder, Stdio) {
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
    (builder, stdio)
}

fn preopen_dir(builder: &mut WasiCtxBuilder, host: &Path, guest: &str, perms: FsPerms) -> Result<(), SandboxError> {
    builder
        .preopened_dir(host, guest, perms)
        .map(|_| ())
        .map_err(|err| SandboxError::Preopen {
            path: host.to_path_buf(),
            message: err.to_string(),
        })
}
