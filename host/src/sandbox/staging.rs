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
//! A commit is all or nothing: it first checks that each granted directory
//! is still as the host left it (otherwise it refuses: something else wrote
//! there during the call), and it saves every entry it is about to replace
//! or remove in an undo journal; if any step fails, the journal puts back
//! what was already applied, over all grants of the call.
//!
//! The whole grant is copied once, at the job's first call that needs it;
//! every later call costs a metadata walk plus copies of what changed, so a
//! workspace of thousands of files is not copied per call. A tool cannot
//! fake "unchanged": writing a file changes its ctime, which WASI cannot set.
//! If the workspace changed behind the host's back between calls, the
//! staging copy is rebuilt.
//!
//! Every filesystem access here goes through cap-std directory handles: the
//! workspace side through the handle of the granted directory (opened
//! through the workspace's capability), the staging side through the handle
//! of a private directory created under the system temp dir, the only path
//! opened with ambient authority.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, DirBuilder, DirBuilderExt, Metadata, MetadataExt, Permissions, PermissionsExt};

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

impl Kind {
    fn of(meta: &Metadata) -> Self {
        match meta.file_type() {
            t if t.is_symlink() => Self::Symlink,
            t if t.is_dir() => Self::Dir,
            _ => Self::File,
        }
    }
}

/// Every entry below a root, by relative path (the root itself excluded).
type Manifest = BTreeMap<PathBuf, Meta>;

/// The staging copy of one read-write grant.
#[derive(Debug)]
struct Stage {
    /// Its name in the staging root.
    name: String,
    dir: Dir,
    /// The workspace side as of the last sync.
    original: Manifest,
    /// The staging side as of the last sync.
    staged: Manifest,
}

/// The private directory holding one workspace's staging copies.
#[derive(Debug)]
struct Root {
    path: PathBuf,
    dir: Dir,
}

/// The staging copies of one workspace's read-write grants.
#[derive(Debug)]
pub(crate) struct Stagings {
    /// Where the root goes (the system temp dir).
    parent: PathBuf,
    /// The root's name in `parent`; it must not exist before.
    name: String,
    /// Created at the first read-write call.
    root: Option<Root>,
    stages: HashMap<GrantPath, Stage>,
}

/// Why a call's changes could not be committed.
#[derive(Debug)]
pub(crate) struct CommitError {
    /// The grant whose commit failed.
    pub(crate) grant: GrantPath,
    /// What failed.
    pub(crate) source: io::Error,
    /// Set when putting back what was already applied failed too.
    pub(crate) rollback: Option<io::Error>,
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; ", self.source)?;
        match &self.rollback {
            None => f.write_str("every change was rolled back, the workspace is as it was before the call"),
            Some(err) => write!(
                f,
                "rolling back also failed ({err}), the workspace may be partly changed"
            ),
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl Stagings {
    /// Staging copies kept in a fresh private directory under `parent`.
    pub(crate) fn new(parent: &Path) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Self {
            parent: parent.to_path_buf(),
            name: format!("wink-staging-{}-{id}", std::process::id()),
            root: None,
            stages: HashMap::new(),
        }
    }

    fn root(&mut self) -> io::Result<&Root> {
        if self.root.is_none() {
            let parent = Dir::open_ambient_dir(&self.parent, ambient_authority())?;
            // Not recursive: a directory (or symlink) planted at this
            // predictable name by someone else makes this fail.
            parent.create_dir_with(&self.name, DirBuilder::new().mode(0o700))?;
            self.root = Some(Root {
                path: self.parent.join(&self.name),
                dir: parent.open_dir(&self.name)?,
            });
        }
        Ok(self.root.as_ref().expect("set just above"))
    }

    /// Prepare the staging copy of `grant` (workspace directory `original`)
    /// for a call and return the host path to preopen instead of it.
    pub(crate) fn begin(&mut self, grant: &GrantPath, original: &Dir) -> io::Result<PathBuf> {
        let current = scan(original)?;
        if let (Some(stage), Some(root)) = (self.stages.get(grant), &self.root)
            && stage.original == current
        {
            return Ok(root.path.join(&stage.name));
        }
        // First use, or the workspace changed since the last sync: rebuild.
        if let Some(old) = self.stages.remove(grant) {
            remove_any(&self.root()?.dir, Path::new(&old.name))?;
        }
        let name = NEXT_ID.fetch_add(1, Ordering::Relaxed).to_string();
        let root = self.root()?;
        root.dir.create_dir(&name)?;
        root.dir
            .set_permissions(&name, Permissions::from_mode(original.dir_metadata()?.mode()))?;
        let dir = root.dir.open_dir(&name)?;
        let path = root.path.join(&name);
        for entry in current.keys() {
            copy_entry(original, &dir, entry)?;
        }
        let staged = scan(&dir)?;
        let stage = Stage {
            name,
            dir,
            original: current,
            staged,
        };
        self.stages.insert(grant.clone(), stage);
        Ok(path)
    }

    /// End a call over `grants` (each with its workspace directory): on
    /// `commit`, apply every staging copy's changes to the workspace, all or
    /// nothing; otherwise reset the staging copies from the workspace. On
    /// error the call's staging copies are discarded and rebuilt next time.
    pub(crate) fn finish(&mut self, grants: &[(GrantPath, Dir)], commit: bool) -> Result<(), CommitError> {
        let result = if commit {
            self.commit(grants)
        } else {
            grants.iter().try_for_each(|(grant, original)| {
                self.reset(grant, original).map_err(|source| CommitError {
                    grant: grant.clone(),
                    source,
                    rollback: None,
                })
            })
        };
        if result.is_err() {
            // A half-synced copy must never be trusted.
            for (grant, _) in grants {
                if let (Some(stage), Some(root)) = (self.stages.remove(grant), &self.root) {
                    let _ = remove_any(&root.dir, Path::new(&stage.name));
                }
            }
        }
        result
    }

    /// Make the staging copy of `grant` what the workspace is again.
    fn reset(&mut self, grant: &GrantPath, original: &Dir) -> io::Result<()> {
        let Some(stage) = self.stages.get_mut(grant) else {
            return Ok(());
        };
        let after = scan(&stage.dir)?;
        let changed = changed_paths(&stage.staged, &after);
        apply(original, &stage.dir, &stage.original, &changed, None)?;
        stage.staged = scan(&stage.dir)?;
        Ok(())
    }

    fn commit(&mut self, grants: &[(GrantPath, Dir)]) -> Result<(), CommitError> {
        let undo_name = format!("undo-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let fail = |grant: &GrantPath, source| CommitError {
            grant: grant.clone(),
            source,
            rollback: None,
        };
        let Some((first, _)) = grants.first() else {
            return Ok(());
        };
        let root = self.root().map_err(|err| fail(first, err))?;
        let backups = root
            .dir
            .create_dir(&undo_name)
            .and_then(|()| root.dir.open_dir(&undo_name))
            .map_err(|err| fail(first, err))?;
        let mut journal = Journal::new(&backups);
        let mut applied = Vec::new();
        let mut result = Ok(());
        for (index, (grant, original)) in grants.iter().enumerate() {
            match self.apply_grant(grant, original, index, &mut journal) {
                Ok(Some(done)) => applied.push((grant, done)),
                Ok(None) => {}
                Err(source) => {
                    let rollback = journal.undo(grants).err();
                    result = Err(CommitError {
                        grant: grant.clone(),
                        source,
                        rollback,
                    });
                    break;
                }
            }
        }
        if result.is_ok() {
            for (grant, (original, staged)) in applied {
                if let Some(stage) = self.stages.get_mut(grant) {
                    stage.original = original;
                    stage.staged = staged;
                }
            }
        }
        if let Some(root) = &self.root {
            // Leftover backups are only disk space; the commit stands.
            let _ = root.dir.remove_dir_all(&undo_name);
        }
        result
    }

    /// Apply one grant's changes, journaled; the manifests to keep after
    /// the whole commit succeeds.
    fn apply_grant(
        &self,
        grant: &GrantPath,
        original: &Dir,
        index: usize,
        journal: &mut Journal<'_>,
    ) -> io::Result<Option<(Manifest, Manifest)>> {
        let Some(stage) = self.stages.get(grant) else {
            return Ok(None);
        };
        if scan(original)? != stage.original {
            return Err(io::Error::other(
                "the granted directory changed during the call (overlapping read-write grants, or another process)",
            ));
        }
        let after = scan(&stage.dir)?;
        let changed = changed_paths(&stage.staged, &after);
        journal.grant = index;
        apply(&stage.dir, original, &after, &changed, Some(journal))?;
        Ok(Some((scan(original)?, after)))
    }

    /// Stop trusting the staging copy of `grant`, as after a call that ended
    /// without `finish` (its future dropped mid-call): what that call wrote
    /// there must never reach a later call's commit. The next call rebuilds
    /// the copy; the old one, no longer reachable, goes with the staging
    /// root. No filesystem access, so it may run anywhere.
    pub(crate) fn forget(&mut self, grant: &GrantPath) {
        self.stages.remove(grant);
    }

    /// Remove every staging copy.
    pub(crate) fn remove_all(&mut self) -> io::Result<()> {
        self.stages.clear();
        match self.root.take() {
            Some(root) => root.dir.remove_open_dir_all(),
            None => Ok(()),
        }
    }
}

/// An entry as it was before a commit replaced or removed it.
enum Saved {
    /// Content kept in the backup directory under `backup`.
    File {
        backup: String,
        mode: u32,
        mtime: SystemTime,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: PathBuf,
    },
}

/// What undoes one step of a commit.
enum Undo {
    /// The step created the entry.
    Remove(PathBuf),
    /// The step replaced or removed the entry.
    Restore(PathBuf, Saved),
}

/// The undo log of one commit, over all its grants.
struct Journal<'a> {
    backups: &'a Dir,
    /// The grant (index into the call's grants) being applied.
    grant: usize,
    steps: Vec<(usize, Undo)>,
}

impl<'a> Journal<'a> {
    fn new(backups: &'a Dir) -> Self {
        Self {
            backups,
            grant: 0,
            steps: Vec::new(),
        }
    }

    /// Record how to undo a change of `path` in `to`, before making it.
    fn record(&mut self, to: &Dir, path: &Path) -> io::Result<()> {
        let meta = match to.symlink_metadata(path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                self.steps.push((self.grant, Undo::Remove(path.to_path_buf())));
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        let saved = match Kind::of(&meta) {
            Kind::Symlink => Saved::Symlink {
                target: to.read_link_contents(path)?,
            },
            Kind::Dir => Saved::Dir { mode: meta.mode() },
            Kind::File => {
                let backup = self.steps.len().to_string();
                to.copy(path, self.backups, &backup)?;
                Saved::File {
                    backup,
                    mode: meta.mode(),
                    mtime: meta.modified()?.into_std(),
                }
            }
        };
        self.steps.push((self.grant, Undo::Restore(path.to_path_buf(), saved)));
        Ok(())
    }

    /// Put back everything recorded, newest first. Keeps going after a
    /// failed step and reports the first failure.
    fn undo(self, grants: &[(GrantPath, Dir)]) -> io::Result<()> {
        let mut first_error = None;
        for (grant, step) in self.steps.into_iter().rev() {
            let Some((_, to)) = grants.get(grant) else {
                continue;
            };
            let result = match step {
                Undo::Remove(path) => remove_any(to, &path),
                Undo::Restore(path, saved) => restore(to, &path, saved, self.backups),
            };
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn restore(to: &Dir, path: &Path, saved: Saved, backups: &Dir) -> io::Result<()> {
    let existing = to.symlink_metadata(path).ok();
    let keep_dir = matches!(saved, Saved::Dir { .. }) && existing.as_ref().is_some_and(Metadata::is_dir);
    if existing.is_some() && !keep_dir {
        remove_any(to, path)?;
    }
    match saved {
        Saved::Symlink { target } => to.symlink_contents(target, path),
        Saved::Dir { mode } => {
            if !keep_dir {
                to.create_dir(path)?;
            }
            to.set_permissions(path, Permissions::from_mode(mode))
        }
        Saved::File { backup, mode, mtime } => {
            backups.copy(&backup, to, path)?;
            finish_file(to, path, mode, mtime)
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
/// With a journal, each step is recorded before it is made, and a directory
/// is only ever removed empty (its entries were removed, and saved, first),
/// so nothing is lost without a record.
fn apply(
    from: &Dir,
    to: &Dir,
    source: &Manifest,
    changed: &BTreeSet<PathBuf>,
    mut journal: Option<&mut Journal<'_>>,
) -> io::Result<()> {
    for path in changed.iter().rev().filter(|p| !source.contains_key(*p)) {
        if let Some(journal) = journal.as_deref_mut() {
            journal.record(to, path)?;
            remove_one(to, path)?;
        } else {
            remove_any(to, path)?;
        }
    }
    for path in changed.iter().filter(|p| source.contains_key(*p)) {
        if let Some(journal) = journal.as_deref_mut() {
            journal.record(to, path)?;
        }
        copy_entry(from, to, path)?;
    }
    Ok(())
}

/// Make `path` in `to` a copy of the single entry `path` in `from`: same
/// kind, content and mode (and mtime for files). A directory's children
/// are not copied.
fn copy_entry(from: &Dir, to: &Dir, path: &Path) -> io::Result<()> {
    let meta = from.symlink_metadata(path)?;
    let kind = Kind::of(&meta);
    let existing = to.symlink_metadata(path).ok();
    if let Some(existing) = &existing
        && (Kind::of(existing) != kind || kind == Kind::Symlink)
    {
        remove_one(to, path)?;
    }
    match kind {
        Kind::Symlink => to.symlink_contents(from.read_link_contents(path)?, path),
        Kind::Dir => {
            if existing.as_ref().is_none_or(|e| !e.is_dir()) {
                to.create_dir(path)?;
            }
            to.set_permissions(path, Permissions::from_mode(meta.mode()))
        }
        Kind::File => {
            from.copy(path, to, path)?;
            finish_file(to, path, meta.mode(), meta.modified()?.into_std())
        }
    }
}

/// Give a copied file its original mode and mtime.
fn finish_file(dir: &Dir, path: &Path, mode: u32, mtime: SystemTime) -> io::Result<()> {
    // futimens needs ownership, not write access: a read-only open will do.
    dir.open(path)?.into_std().set_modified(mtime)?;
    dir.set_permissions(path, Permissions::from_mode(mode))
}

/// Remove one entry; a directory must be empty.
fn remove_one(dir: &Dir, path: &Path) -> io::Result<()> {
    match dir.symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => dir.remove_dir(path),
        Ok(_) => dir.remove_file(path),
        Err(err) => Err(err),
    }
}

/// Remove an entry and everything below it; a missing entry is fine.
fn remove_any(dir: &Dir, path: &Path) -> io::Result<()> {
    let result = match dir.symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => dir.remove_dir_all(path),
        Ok(_) => dir.remove_file(path),
        Err(err) => Err(err),
    };
    match result {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// The manifest of every entry below `root`, without following symlinks.
fn scan(root: &Dir) -> io::Result<Manifest> {
    let mut manifest = Manifest::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let entries = match relative.as_os_str().is_empty() {
            true => root.entries()?,
            false => root.read_dir(&relative)?,
        };
        for entry in entries {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            // Like std's, cap-std's `DirEntry::metadata` does not follow symlinks.
            let meta = entry.metadata()?;
            let kind = Kind::of(&meta);
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
