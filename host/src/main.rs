//! The `wink-host` binary: parse arguments, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use wink_host::cli::{Cli, exit_code};
use wink_host::telemetry::{LogFormat, Redactor, init_logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let redactor = match Redactor::from_env() {
        Ok(redactor) => redactor,
        Err(err) => {
            eprintln!("error: {err} (from WINK_REDACT_PATTERNS)");
            return ExitCode::FAILURE;
        }
    };
    init_logging(LogFormat::from_env(), redactor.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.execute()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The final reason bypasses the log pipeline, so redact it here.
            eprintln!("error: {}", redactor.redact(&format!("{err:#}")));
            ExitCode::from(exit_code(&err))
        }
    }
}
