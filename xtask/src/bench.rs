//! `cargo xtask bench <scenario>`: runs one host benchmark against the built
//! guests and prints its JSON result.

use std::fs;

use anyhow::{Context, Result, bail};

use crate::ctx::Ctx;
use crate::guests;

/// The scenarios with a bench target `host/benches/<scenario>.rs`.
pub const SCENARIOS: &[&str] = &["instantiate", "concurrency", "model", "tool", "throughput", "spans"];

/// Runs `scenario` (with telemetry export when `otel`) and prints the JSON
/// file it wrote to `T/bench/<scenario>.json`.
pub fn run(ctx: &mut Ctx, scenario: &str, otel: bool) -> Result<()> {
    if !SCENARIOS.contains(&scenario) {
        bail!("unknown bench scenario `{scenario}` (known: {})", SCENARIOS.join(", "));
    }
    guests::ensure_and_build(ctx, guests::DEFAULT_PROFILE)?;
    let dir = ctx.bench_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(format!("{scenario}.json"));
    match fs::remove_file(&out) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("removing stale {}", out.display()));
        }
        _ => {}
    }
    eprintln!("xtask: running bench {scenario}...");
    let cmd = ctx
        .cargo()
        .env("WINK_GUEST_DIR", ctx.wasm_dir())
        .env("WINK_BENCH_OUT", &out);
    let cmd = if otel { cmd.env("WINK_BENCH_OTEL", "1") } else { cmd };
    cmd.args(["bench", "-p", "wink-host", "--bench", scenario]).run()?;
    let text = fs::read_to_string(&out).with_context(|| format!("bench {scenario} did not write {}", out.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", out.display()))?;
    eprintln!("xtask: results in {}:", out.display());
    println!("{json:#}");
    Ok(())
}
