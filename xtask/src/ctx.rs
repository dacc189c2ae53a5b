//! The state shared by all commands: workspace paths and what this run has
//! already done (such as `apt-get update`).

use std::collections::BTreeSet;
use std::env;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::runner::Cmd;

/// Paths of the workspace and per-run state.
pub struct Ctx {
    /// The repository root (the workspace directory).
    pub root: PathBuf,
    /// The native target directory: `$CARGO_TARGET_DIR`, else `<root>/target`.
    pub target: PathBuf,
    /// Whether `apt-get update` already ran during this xtask run.
    apt_updated: bool,
}

impl Ctx {
    /// Locates the workspace from xtask's own manifest directory.
    ///
    /// `cargo run` sets `CARGO_MANIFEST_DIR` for the running binary; that is
    /// preferred over the compile-time value, because a target directory
    /// shared between checkouts can hand this checkout an xtask binary built
    /// in another one, whose baked-in path points there.
    pub fn new() -> Result<Self> {
        let manifest_dir =
            env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        let root = manifest_dir
            .parent()
            .with_context(|| format!("{} has no parent directory", manifest_dir.display()))?
            .to_path_buf();
        let target = match env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => env::current_dir().context("reading the current directory")?.join(dir),
            _ => root.join("target"),
        };
        Ok(Self {
            root,
            target,
            apt_updated: false,
        })
    }

    /// Where finished guest components are copied: `T/wasm`.
    pub fn wasm_dir(&self) -> PathBuf {
        self.target.join("wasm")
    }

    /// The separate cargo target directory for guest builds: `T/guests`.
    pub fn guest_target(&self) -> PathBuf {
        self.target.join("guests")
    }

    /// Where benchmarks write their JSON results: `T/bench`.
    pub fn bench_dir(&self) -> PathBuf {
        self.target.join("bench")
    }

    /// A native `cargo` command run from the root with the target directory
    /// made explicit (so a relative `$CARGO_TARGET_DIR` cannot drift).
    pub fn cargo(&self) -> Cmd {
        Cmd::new("cargo").dir(&self.root).env("CARGO_TARGET_DIR", &self.target)
    }

    /// Installs, with apt, the packages whose check is missing.
    ///
    /// Each pair is `(check, package)`: `check` is an absolute path that must
    /// exist, or a binary name that must be on `PATH`. `apt-get update` runs at
    /// most once per xtask run.
    pub fn ensure_apt_packages(&mut self, wanted: &[(&str, &str)]) -> Result<()> {
        let missing: Vec<_> = wanted.iter().filter(|(check, _)| !present(check)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let checks: Vec<_> = missing.iter().map(|(check, _)| *check).collect();
        let packages: BTreeSet<_> = missing.iter().map(|(_, package)| *package).collect();
        let packages: Vec<_> = packages.into_iter().collect();
        if !present("apt-get") {
            bail!(
                "missing {} and apt-get is not available: install {} manually",
                checks.join(", "),
                packages.join(" ")
            );
        }
        eprintln!(
            "xtask: installing apt packages {} (missing: {})...",
            packages.join(" "),
            checks.join(", ")
        );
        if !self.apt_updated {
            apt_get().arg("update").run()?;
            self.apt_updated = true;
        }
        apt_get().args(["install", "-y"]).args(&packages).run()?;
        if let Some((check, package)) = missing.iter().find(|(check, _)| !present(check)) {
            bail!("apt package {package} is installed but {check} is still missing");
        }
        Ok(())
    }
}

/// A non-interactive `apt-get` command.
fn apt_get() -> Cmd {
    Cmd::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive")
}

/// Whether `check` exists: an absolute path, or a binary name found on `PATH`.
pub fn present(check: &str) -> bool {
    if check.contains('/') {
        return Path::new(check).exists();
    }
    env::var_os("PATH").is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(check).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_checks_paths_and_path_binaries() {
        assert!(present("/"));
        assert!(present("sh"));
        assert!(!present("/definitely/not/here"));
        assert!(!present("definitely-not-a-binary-xtask"));
    }

    #[test]
    fn nothing_to_install_runs_nothing() -> Result<()> {
        let mut ctx = Ctx::new()?;
        ctx.ensure_apt_packages(&[("sh", "dash")])?;
        assert!(!ctx.apt_updated);
        Ok(())
    }
}
