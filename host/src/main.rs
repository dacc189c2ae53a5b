//! The `wink-host` binary: parse arguments, set up logging and tracing, run the command.

use std::process::ExitCode;

use clap::Parser;
use wink_host::cli::{Cli, exit_code};
use wink_host::telemetry::{self, LogFormat, Redactor};

/// mimalloc instead of glibc's malloc: a worker allocates on one thread and
/// frees on another all the time (job futures, SDK requests, spans handed to
/// the export thread), which glibc serves through locked arenas. Measured in
/// docs/benchmarks.md ("Allocator", 2026-12-06).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    wink_host::allocator::tune();
    let mut cli = Cli::parse();
    let redactor = match Redactor::from_env() {
        Ok(redactor) => redactor,
        Err(err) => {
            eprintln!("error: {err} (from WINK_REDACT_PATTERNS)");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match cli.async_threads() {
        Ok(Some(threads)) => {
            builder.worker_threads(threads);
        }
        Ok(None) => {}
        Err(err) => {
            eprintln!("error: {}", redactor.redact(&format!("{err:#}")));
            return ExitCode::from(exit_code(&err));
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime's context: the gRPC exporter spawns onto it.
    let installed = {
        let _context = runtime.enter();
        telemetry::init(LogFormat::from_env(), redactor.clone())
    };
    let telemetry = match installed {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli.execute());
    // Flush the last spans while the runtime that carries gRPC export still runs.
    if let Err(err) = telemetry.shutdown() {
        tracing::warn!(error = %err, "could not export the last spans");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The final reason bypasses the log pipeline, so redact it here.
            eprintln!("error: {}", redactor.redact(&format!("{err:#}")));
            ExitCode::from(exit_code(&err))
        }
    }
}
