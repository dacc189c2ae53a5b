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
        self.cargo_in(&self.target)
    }

    /// A `cargo` command run from the root, building into `target`.
    ///
    /// The variables `cargo run` set for xtask itself (`CARGO_PKG_NAME`,
    /// `CARGO_MANIFEST_DIR` and the like) are left out: ring's build script
    /// reruns when cargo's own value of one of them changes, so with them a
    /// build from xtask and a plain `cargo` build (or xtask in another
    /// checkout) kept rebuilding ring and everything above it, minutes each
    /// time.
    pub fn cargo_in(&self, target: &Path) -> Cmd {
        let cargo = Cmd::new("cargo").dir(&self.root).env("CARGO_TARGET_DIR", target);
        env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| set_by_cargo_run(name))
            .fold(cargo, |cargo, name| cargo.env_remove(&name))
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
        self.apt_install(&packages)?;
        if let Some((check, package)) = missing.iter().find(|(check, _)| !present(check)) {
            bail!("apt package {package} is installed but {check} is still missing");
        }
        Ok(())
    }

    /// `apt-get install -y packages`, after one `apt-get update` per xtask run.
    fn apt_install(&mut self, packages: &[&str]) -> Result<()> {
        if !self.apt_updated {
            apt_get().arg("update").run()?;
            self.apt_updated = true;
        }
        apt_get().args(["install", "-y"]).args(packages).run()
    }

    /// The virtualenv pip tools are installed into: `T/tools/venv` (Debian's
    /// system pip refuses to install outside one, and the system stays clean).
    pub fn tools_venv(&self) -> PathBuf {
        self.target.join("tools").join("venv")
    }

    /// Installs, with pip into [`Ctx::tools_venv`], the packages whose binary
    /// is neither on `PATH` nor in the venv. Each pair is `(binary, pip
    /// package)`. Returns the venv's `bin` directory, to put first on `PATH`.
    pub fn ensure_pip_packages(&mut self, wanted: &[(&str, &str)]) -> Result<PathBuf> {
        let venv = self.tools_venv();
        let bin = venv.join("bin");
        let installed = |binary: &str| bin.join(binary).is_file() || present(binary);
        let packages: Vec<_> = wanted
            .iter()
            .filter(|(binary, _)| !installed(binary))
            .map(|(_, package)| *package)
            .collect();
        if packages.is_empty() {
            return Ok(bin);
        }
        if !bin.join("pip").is_file() {
            self.ensure_apt_packages(&[("python3", "python3")])?;
            let create = || Cmd::new("python3").args(["-m", "venv"]).arg(&venv).run();
            if create().is_err() {
                // Debian's python3 keeps venv's pip bootstrap in a separate package.
                self.apt_install(&["python3-venv"])?;
                create()?;
            }
        }
        eprintln!("xtask: installing pip packages {}...", packages.join(" "));
        Cmd::new(bin.join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(&packages)
            .run()?;
        if let Some((binary, package)) = wanted.iter().find(|(binary, _)| !installed(binary)) {
            bail!("pip package {package} is installed but {binary} is still missing");
        }
        Ok(bin)
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

/// Whether `name` is one of the variables `cargo run` sets for the binary
/// it runs, describing that binary's package.
fn set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(name, "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_variables_cargo_run_sets_are_left_out() {
        for name in [
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_PRE",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_LINKS",
            "CARGO_CRATE_NAME",
        ] {
            assert!(set_by_cargo_run(name), "{name}");
        }
        for name in ["CARGO", "CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_TERM_COLOR", "PATH"] {
            assert!(!set_by_cargo_run(name), "{name}");
        }
    }

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
