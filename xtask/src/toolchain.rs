//! Choosing (and if needed installing) the compiler that builds guests for
//! `wasm32-wasip2`.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::Path;

use anyhow::{Context, Result};

use crate::ctx::Ctx;
use crate::runner::Cmd;

/// The guest target triple.
pub const GUEST_TARGET: &str = "wasm32-wasip2";

/// Debian's wasi-libc sysroot, linked into rustc-web's target directories.
const WASI_LIBC: &str = "/usr/lib/wasm32-wasi";

/// What the Debian route needs, as `(path to check, apt package)` pairs.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/rustc", "rustc-web"),
    ("/usr/lib/rustlib/src/rust/library", "rust-web-src"),
    ("/usr/bin/wasm-ld", "lld"),
    (WASI_LIBC, "wasi-libc"),
];

/// The rustc target directories that get the wasi-libc links.
const DEBIAN_WASI_TARGETS: &[&str] = &["wasm32-wasip1", "wasm32-wasip2"];

/// How guests are compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toolchain {
    /// The active rustup toolchain, which has the `wasm32-wasip2` target.
    Rustup,
    /// Debian's `rustc-web` with a std built from source (`-Zbuild-std`).
    Debian,
}

impl Toolchain {
    /// Picks the toolchain, installing and preparing the Debian one if the
    /// rustup toolchain lacks `wasm32-wasip2`.
    pub fn ensure(ctx: &mut Ctx) -> Result<Self> {
        if rustup_has_guest_target(ctx) {
            eprintln!("xtask: guest toolchain: rustup ({GUEST_TARGET} installed)");
            return Ok(Self::Rustup);
        }
        eprintln!("xtask: guest toolchain: Debian rustc-web with -Zbuild-std");
        ctx.ensure_apt_packages(DEBIAN_PACKAGES)
            .context("installing the Debian guest toolchain")?;
        for target in DEBIAN_WASI_TARGETS {
            link_wasi_libc(Path::new(WASI_LIBC), target)?;
        }
        Ok(Self::Debian)
    }

    /// `cargo build` for guests with `profile`, into `T/guests`; the caller
    /// adds the `-p` flags.
    pub fn cargo_build(self, ctx: &Ctx, profile: &str) -> Cmd {
        let cmd = ctx.cargo_in(&ctx.guest_target());
        let cmd = match self {
            Self::Rustup => cmd,
            Self::Debian => cmd.env("RUSTC", "/usr/bin/rustc").env("RUSTC_BOOTSTRAP", "1"),
        };
        let cmd = cmd.args(["build", "--profile", profile]);
        let cmd = match self {
            Self::Rustup => cmd,
            Self::Debian => cmd.arg("-Zbuild-std=std,panic_abort"),
        };
        cmd.args(["--target", GUEST_TARGET])
    }
}

/// Whether `rustup target list --installed` lists the guest target.
fn rustup_has_guest_target(ctx: &Ctx) -> bool {
    Cmd::new("rustup")
        .dir(&ctx.root)
        .args(["target", "list", "--installed"])
        .capture()
        .is_ok_and(|out| out.lines().any(|line| line.trim() == GUEST_TARGET))
}

/// Symlinks every entry of `libc_dir` into
/// `/usr/lib/rustlib/<target>/lib/self-contained` (like `ln -sf`), skipping
/// links that are already right.
fn link_wasi_libc(libc_dir: &Path, target: &str) -> Result<()> {
    let dest = Path::new("/usr/lib/rustlib").join(target).join("lib/self-contained");
    fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    let entries = fs::read_dir(libc_dir).with_context(|| format!("listing {}", libc_dir.display()))?;
    let mut linked = 0;
    for entry in entries {
        let source = entry.with_context(|| format!("listing {}", libc_dir.display()))?.path();
        let Some(name) = source.file_name() else {
            continue;
        };
        if replace_symlink(&source, &dest.join(name))? {
            linked += 1;
        }
    }
    if linked > 0 {
        eprintln!("xtask: linked {linked} wasi-libc files into {}", dest.display());
    }
    Ok(())
}

/// Makes `link` a symlink to `source`; returns whether anything changed.
fn replace_symlink(source: &Path, link: &Path) -> Result<bool> {
    match fs::read_link(link) {
        Ok(current) if current == source => return Ok(false),
        Ok(_) => fs::remove_file(link),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        // Exists but is not a symlink: replace a file, like `ln -sf`.
        Err(_) => fs::remove_file(link),
    }
    .with_context(|| format!("removing {}", link.display()))?;
    symlink(source, link)
        .with_context(|| format!("linking {} -> {} (are you root?)", link.display(), source.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_symlink_is_idempotent() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-symlink-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let (a, b, link) = (dir.join("a"), dir.join("b"), dir.join("link"));
        fs::write(&a, "a")?;
        fs::write(&b, "b")?;
        fs::write(&link, "plain file")?;
        assert!(replace_symlink(&a, &link)?);
        assert!(!replace_symlink(&a, &link)?);
        assert!(replace_symlink(&b, &link)?);
        assert_eq!(fs::read_to_string(&link)?, "b");
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
