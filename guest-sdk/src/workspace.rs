//! Paths in the job's workspace, for tools, and the tool errors of failed
//! file operations.
//!
//! The host preopens only the directories a tool's policy grants, under
//! [`WORKSPACE`]; these helpers turn a model-supplied relative path into a
//! guest path and an I/O failure into a [`ToolError`] the model can act on.
//! The host's preopens are the real barrier: the checks here only give a
//! clear reason instead of an opaque I/O error.

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::ToolError;

/// Where the host preopens the job's workspace (or the granted parts of it).
pub const WORKSPACE: &str = "/workspace";

/// wasi-libc's `ENOTCAPABLE`: the path lies under no preopened directory.
const ENOTCAPABLE: i32 = 76;

/// `/workspace/<path>` for a relative path that stays inside the workspace.
pub fn path(path: &str) -> Result<PathBuf, ToolError> {
    let relative = Path::new(path);
    if path.is_empty() {
        return Err(ToolError::InvalidInput("path is empty".into()));
    }
    if relative.has_root() {
        return Err(ToolError::Denied(format!(
            "{path}: the path must be relative to the workspace"
        )));
    }
    if relative.components().any(|c| c == Component::ParentDir) {
        return Err(ToolError::Denied(format!("{path}: the path must not contain `..`")));
    }
    Ok(Path::new(WORKSPACE).join(relative))
}

/// The tool error for a failed operation on `path`: permission problems and
/// paths outside the tool's grants are denials, naming the path.
pub fn io_error(path: &str, err: &io::Error) -> ToolError {
    match err.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            ToolError::Denied(format!("{path}: not permitted by the tool's filesystem grants ({err})"))
        }
        _ if err.raw_os_error() == Some(ENOTCAPABLE) => {
            ToolError::Denied(format!("{path}: outside the tool's filesystem grants"))
        }
        _ => ToolError::Failed(format!("{path}: {err}")),
    }
}

/// What a directory entry is. Symlinks are reported, never followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

impl EntryKind {
    /// `"file"`, `"dir"` or `"symlink"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "dir",
            Self::Symlink => "symlink",
        }
    }
}

/// One entry met by [`walk`].
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path relative to the workspace root, `/`-separated.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Size in bytes (of the link itself for a symlink).
    pub bytes: u64,
}

/// Visit every entry below the workspace directory `start`, one directory
/// after another, each in name order, without following symlinks, until
/// `visit` returns `false`.
/// Subdirectories that cannot be read (outside the grants) are skipped.
pub fn walk(start: &str, mut visit: impl FnMut(&Entry) -> bool) -> Result<(), ToolError> {
    let root = path(start)?;
    let mut pending = vec![(root, relative_prefix(start))];
    let mut first = true;
    while let Some((dir, prefix)) = pending.pop() {
        let entries = match read_sorted(&dir) {
            Ok(entries) => entries,
            Err(err) if first => return Err(io_error(start, &err)),
            Err(_) => continue,
        };
        first = false;
        let mut subdirs = Vec::new();
        for (name, metadata) in entries {
            let kind = match metadata.file_type() {
                t if t.is_symlink() => EntryKind::Symlink,
                t if t.is_dir() => EntryKind::Dir,
                _ => EntryKind::File,
            };
            let entry = Entry {
                path: format!("{prefix}{name}"),
                kind,
                bytes: metadata.len(),
            };
            if !visit(&entry) {
                return Ok(());
            }
            if kind == EntryKind::Dir {
                subdirs.push((dir.join(&name), format!("{}/", entry.path)));
            }
        }
        // Reversed so that the stack pops them in name order.
        pending.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

fn relative_prefix(start: &str) -> String {
    let trimmed = start.trim_start_matches("./").trim_end_matches('/');
    match trimmed {
        "" | "." => String::new(),
        dir => format!("{dir}/"),
    }
}

fn read_sorted(dir: &Path) -> io::Result<Vec<(String, std::fs::Metadata)>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        entries.push((name, entry.metadata()?));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_under_the_workspace() {
        assert_eq!(path("a/b.txt"), Ok(PathBuf::from("/workspace/a/b.txt")));
        assert_eq!(path("./notes.txt"), Ok(PathBuf::from("/workspace/./notes.txt")));
    }

    #[test]
    fn escaping_paths_are_denied() {
        assert!(matches!(path("/etc/passwd"), Err(ToolError::Denied(_))));
        assert!(matches!(path("a/../../b"), Err(ToolError::Denied(_))));
        assert!(matches!(path(""), Err(ToolError::InvalidInput(_))));
    }

    #[test]
    fn walk_prefixes_are_relative_to_the_workspace() {
        assert_eq!(relative_prefix("."), "");
        assert_eq!(relative_prefix("./docs/"), "docs/");
        assert_eq!(relative_prefix("a/b"), "a/b/");
    }

    #[test]
    fn permission_errors_are_denials_naming_the_path() {
        let err = io_error("out/x", &io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(
            matches!(&err, ToolError::Denied(m) if m.starts_with("out/x: not permitted")),
            "{err:?}"
        );
        let err = io_error("x", &io::Error::from_raw_os_error(ENOTCAPABLE));
        assert!(matches!(&err, ToolError::Denied(m) if m.contains("outside")), "{err:?}");
    }
}
