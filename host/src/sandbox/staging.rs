//! Transactional tool calls: read-write grants run against a staging copy.
//!
//! A tool with a read-write grant never writes the workspace directly. The
//! host keeps, per job and per read-write grant, a staging copy of the
//! granted directory outside the workspace, and preopens that copy instead.
//! After the call the host compares the staging tree with a manifest taken
//! before it (name, kind, size, mode, inode, ctime and mtime of every entry):
//!
//! * on success, the entries that changed are applied to the workspace;
//! * on failure (error, trap, limit), the workspace was never touched, so it
//!   is byte-identical to before the call, and the changed entries of the
//!   staging copy are reset from the workspace.
//!
//! The whole grant is copied once, at the job's first call that needs it;
//! every later call costs a metadata walk plus copies of what changed, so a
//! workspace of thousands of files is not copied per call. A tool cannot
//! fake "unchanged": writing a file changes its ctime, which WASI cannot set.
//! If the workspace changed behind the host's back between calls, the
//! staging copy is rebuilt.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::policy::GrantPath;

/// What the host remembers of one entry to tell whether it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    kind: Kind,
    len: u64,
    mode: u32,
    ino: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// Every entry below a root, by relative path (the root itself excluded).
type Manifest = BTreeMap<PathBuf, Meta>;

/// The staging copy of one read-write grant.
#[derive(Debug)]
struct Stage {
    dir: PathBuf,
    /// The workspace side as of the last sync.
    original: Manifest,
    /// The staging side as of the last sync.
    staged: Manifest,
}

/// The staging copies of one workspace's read-write grants.
#[derive(Debug)]
pub(crate) struct Stagings {
    root: PathBuf,
    /// Whether this process created `root` (it must not exist before).
    created: bool,
    stages: HashMap<GrantPath, Stage>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl Stagings {
    /// Staging copies kept in a fresh private directory under `parent`.
    pub(crate) fn new(parent: &Path) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Self {
            root: parent.join(format!("wink-staging-{}-{id}", std::process::id())),
            created: false,
            stages: HashMap::new(),
        }
    }

    /// Prepare the staging copy of `grant` (host directory `original`) for a
    /// call and return the directory to preopen instead of `original`.
    pub(crate) fn begin(&mut self, grant: &GrantPath, original: &Path) -> io::Result<PathBuf> {
        let current = scan(original)?;
        if let Some(stage) = self.stages.get(grant)
            && stage.original == current
        {
            return Ok(stage.dir.clone());
        }
        // First use, or the workspace changed since the last sync: rebuild.
        let dir = self.root.join(NEXT_ID.fetch_add(1, Ordering::Relaxed).to_string());
        if let Some(old) = self.stages.remove(grant) {
            remove_any(&old.dir)?;
        }
        if !self.created {
            // Not recursive: a directory (or symlink) planted at this
            // predictable name by someone else makes this fail.
            fs::DirBuilder::new().mode(0o700).create(&self.root)?;
            self.created = true;
        }
        copy_entry(original, &dir)?;
        copy_tree(original, &dir, &current)?;
        let staged = scan(&dir)?;
        let stage = Stage {
            dir: dir.clone(),
            original: current,
            staged,
        };
        self.stages.insert(grant.clone(), stage);
        Ok(dir)
    }

    /// End a call: apply the staging copy's changes to `original` when
    /// `commit`, otherwise reset the staging copy from `original`.
    pub(crate) fn finish(&mut self, grant: &GrantPath, original: &Path, commit: bool) -> io::Result<()> {
        let result = self.sync(grant, original, commit);
        if result.is_err() {
            // A half-synced copy must never be trusted: rebuild it next time.
            if let Some(stage) = self.stages.remove(grant) {
                let _ = remove_any(&stage.dir);
            }
        }
        result
    }

    fn sync(&mut self, grant: &GrantPath, original: &Path, commit: bool) -> io::Result<()> {
        let Some(stage) = self.stages.get_mut(grant) else {
            return Ok(());
        };
        let after = scan(&stage.dir)?;
        let changed = changed_paths(&stage.staged, &after);
        if commit {
            apply(&stage.dir, original, &after, &changed)?;
            stage.original = scan(original)?;
            stage.staged = after;
        } else {
            apply(original, &stage.dir, &stage.original, &changed)?;
            stage.staged = scan(&stage.dir)?;
        }
        Ok(())
    }

    /// Remove every staging copy.
    pub(crate) fn remove_all(&mut self) -> io::Result<()> {
        self.stages.clear();
        if !std::mem::take(&mut self.created) {
            return Ok(());
        }
        match fs::remove_dir_all(&self.root) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }
}

/// Paths added, removed or modified between two manifests.
fn changed_paths(before: &Manifest, after: &Manifest) -> BTreeSet<PathBuf> {
    let removed_or_changed = before.iter().filter(|(p, m)| after.get(*p) != Some(m)).map(|(p, _)| p);
    let added = after.keys().filter(|p| !before.contains_key(*p));
    removed_or_changed.chain(added).cloned().collect()
}

/// Make each of `changed` in `to` what it is in `from` (`source` is `from`'s
/// manifest): removals first, deepest first, then copies, parents first.
fn apply(from: &Path, to: &Path, source: &Manifest, changed: &BTreeSet<PathBuf>) -> io::Result<()> {
    for path in changed.iter().rev().filter(|p| !source.contains_key(*p)) {
        remove_any(&to.join(path))?;
    }
    for path in changed.iter().filter(|p| source.contains_key(*p)) {
        copy_entry(&from.join(path), &to.join(path))?;
    }
    Ok(())
}

/// Copy every entry of `manifest` from `from` to `to`, parents first.
fn copy_tree(from: &Path, to: &Path, manifest: &Manifest) -> io::Result<()> {
    for path in manifest.keys() {
        copy_entry(&from.join(path), &to.join(path))?;
    }
    Ok(())
}

/// Make `to` a copy of the single entry `from`: same kind, content and mode
/// (and mtime for files). A directory's children are not copied.
fn copy_entry(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let existing = fs::symlink_metadata(to).ok();
    if let Some(existing) = &existing
        && (existing.file_type() != meta.file_type() || meta.file_type().is_symlink())
    {
        remove_any(to)?;
    }
    let kind = meta.file_type();
    if kind.is_symlink() {
        return std::os::unix::fs::symlink(fs::read_link(from)?, to);
    }
    if kind.is_dir() {
        if existing.as_ref().is_none_or(|e| !e.is_dir()) {
            fs::create_dir(to)?;
        }
        return fs::set_permissions(to, fs::Permissions::from_mode(meta.mode()));
    }
    fs::copy(from, to)?;
    let file = fs::File::options().write(true).open(to)?;
    file.set_modified(meta.modified()?)?;
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode()))
}

fn remove_any(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) => Err(err),
    };
    match result {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// The manifest of every entry below `root`, without following symlinks.
fn scan(root: &Path) -> io::Result<Manifest> {
    let mut manifest = Manifest::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in fs::read_dir(root.join(&relative))? {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            let meta = entry.metadata()?;
            let kind = match meta.file_type() {
                t if t.is_symlink() => Kind::Symlink,
                t if t.is_dir() => Kind::Dir,
                _ => Kind::File,
            };
            if kind == Kind::Dir {
                pending.push(path.clone());
            }
            manifest.insert(
                path,
                Meta {
                    kind,
                    len: meta.len(),
                    mode: meta.mode(),
                    ino: meta.ino(),
                    ctime: (meta.ctime(), meta.ctime_nsec()),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                },
            );
        }
    }
    Ok(manifest)
}
