//! `cargo xtask test`: installs what the tests need, then runs the suite.

use anyhow::{Context, Result};

use crate::ctx::Ctx;
use crate::guests;
use crate::python;
use crate::toolchain::Toolchain;

/// System tools the tests use, as `(binary, apt package)` pairs.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("bwrap", "bubblewrap"),
    // promtool lints a real /metrics scrape in the host's tests.
    ("promtool", "prometheus"),
];

/// Python packages the tests use, as `(module, pip requirement)` pairs.
const TEST_PYTHON_PACKAGES: &[(&str, &str)] = &[
    // moto's server emulates SQS for the SQS mailbox tests.
    ("moto.server", "moto[server]==5.2.1"),
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
    python::ensure_packages(ctx, TEST_PYTHON_PACKAGES).context("installing Python test dependencies")?;
    eprintln!("xtask: building guests...");
    guests::build(ctx, toolchain, guests::DEFAULT_PROFILE)?;
    eprintln!("xtask: testing the guest SDK (native)...");
    ctx.cargo()
        .args(["test", "-p", "wink-guest", "--features", "agent,tool"])
        .run()?;
    eprintln!("xtask: testing the host...");
    ctx.cargo()
        .env("WINK_GUEST_DIR", ctx.wasm_dir())
        .args(["test", "-p", "wink-host", "-p", "xtask"])
        .args(extra)
        .run()?;
    eprintln!("xtask: all tests passed");
    Ok(())
}
