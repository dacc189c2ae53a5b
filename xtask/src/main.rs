//! Developer commands for wink-host, run as `cargo xtask <command>`.
//!
//! Guests (agents, tools, test guests) are built for `wasm32-wasip2` into
//! their own target directory `T/guests` and copied to `T/wasm/<name>.wasm`,
//! where `T` is `$CARGO_TARGET_DIR` or `<repo>/target`.

mod bench;
mod ctx;
mod demo;
mod guests;
mod instructions;
mod runner;
mod suite;
mod toolchain;

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::ctx::Ctx;

/// Developer commands for wink-host: build guests, run the demo, the tests
/// and the benchmarks.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    /// The command to run.
    #[command(subcommand)]
    command: Command,
}

/// The xtask commands.
#[derive(Subcommand)]
enum Command {
    /// Build every guest crate to a component in `T/wasm/<name>.wasm`.
    ///
    /// Guests are the crates under examples/, tests/guests/ (agents) and
    /// tools/ (tools); agents and tools build in separate cargo invocations.
    /// Uses the rustup toolchain when it has the wasm32-wasip2 target, else
    /// Debian's rustc-web with -Zbuild-std (installed with apt if missing).
    Guests {
        /// Cargo profile for the guest build.
        #[arg(long, value_name = "PROFILE", default_value = guests::DEFAULT_PROFILE)]
        release_profile: String,
    },
    /// Build guests and the host, then run the file-digest and hello examples.
    Demo,
    /// Check formatting, install test dependencies, build guests and run all tests.
    ///
    /// Runs `cargo fmt --all --check`, installs the guest toolchain, the
    /// system tools tests need (redis-server, bubblewrap, promtool) and the
    /// deploy-file linters and moto's SQS server (pip, into
    /// T/tools/venv), builds guests, runs the guest SDK's native tests, then
    /// `cargo test -p wink-host -p xtask` with WINK_GUEST_DIR=T/wasm. This is
    /// what CI runs (alias `ci`).
    #[command(visible_alias = "ci")]
    Test {
        /// Extra arguments for the host `cargo test`, after `--` (e.g. a test
        /// filter: `cargo xtask test -- sandbox -- --nocapture`).
        #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
        cargo_test_args: Vec<String>,
    },
    /// Build guests, run one host benchmark and print its JSON result.
    ///
    /// Runs `cargo bench -p wink-host --bench <SCENARIO>` with
    /// WINK_GUEST_DIR=T/wasm and WINK_BENCH_OUT=T/bench/<SCENARIO>.json.
    Bench {
        /// The scenario to run: instantiate, concurrency, model, tool, throughput or spans.
        scenario: String,
        /// Also measure with telemetry on (sets WINK_BENCH_OTEL=1):
        /// throughput runs each case with JSON logs alone and with JSON logs
        /// plus OTLP trace export to an in-process endpoint, and reports what
        /// each costs.
        #[arg(long)]
        otel: bool,
        /// With `throughput --otel`: count what the export adds to each
        /// job's instructions under callgrind (valgrind, installed if
        /// missing) instead of timing it, at concurrency 1 and 8 in memory;
        /// writes T/bench/throughput-instructions.json. Takes a few minutes.
        #[arg(long)]
        instructions: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the parsed command.
fn run(cli: Cli) -> Result<()> {
    let mut ctx = Ctx::new()?;
    match cli.command {
        Command::Guests { release_profile } => {
            eprintln!("xtask: building guests...");
            guests::ensure_and_build(&mut ctx, &release_profile).map(drop)
        }
        Command::Demo => demo::run(&mut ctx),
        Command::Test { cargo_test_args } => suite::run(&mut ctx, &cargo_test_args),
        Command::Bench {
            scenario,
            otel,
            instructions: true,
        } => {
            if scenario != "throughput" || !otel {
                bail!(
                    "--instructions counts the export of the throughput bench: cargo xtask bench throughput --otel --instructions"
                );
            }
            instructions::run(&mut ctx)
        }
        Command::Bench { scenario, otel, .. } => bench::run(&mut ctx, &scenario, otel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_trailing_args() -> Result<()> {
        let cli = Cli::try_parse_from(["xtask", "ci", "--", "sandbox", "--", "--nocapture"])?;
        let Command::Test { cargo_test_args } = cli.command else {
            bail!("`ci` did not parse as `test`");
        };
        assert_eq!(cargo_test_args, ["sandbox", "--", "--nocapture"]);
        Ok(())
    }

    #[test]
    fn instructions_only_count_the_throughput_export() -> Result<()> {
        let without_otel: &[&str] = &["xtask", "bench", "throughput", "--instructions"];
        let other_scenario: &[&str] = &["xtask", "bench", "spans", "--otel", "--instructions"];
        for args in [without_otel, other_scenario] {
            let err = run(Cli::try_parse_from(args)?)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert_eq!(
                err,
                "--instructions counts the export of the throughput bench: cargo xtask bench throughput --otel --instructions"
            );
        }
        Ok(())
    }

    #[test]
    fn unknown_scenario_is_one_line() -> Result<()> {
        let mut ctx = Ctx::new()?;
        let err = bench::run(&mut ctx, "nonsense", false)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert_eq!(
            err,
            "unknown bench scenario `nonsense` (known: instantiate, concurrency, model, tool, throughput, spans)"
        );
        Ok(())
    }
}
