//! The `wink-host` command line.

mod policy;
mod run;
mod worker;

use clap::{Parser, Subcommand};

pub use policy::PolicyArgs;
pub use run::RunArgs;
pub use worker::{WorkerArgs, WorkerOptions};

/// Runs AI agents and the tools they call as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "wink-host", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process: boxing `RunArgs` would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one agent job in-process and print its output JSON on stdout.
    Run(RunArgs),
    /// Validate policy files and print the effective policy.
    Policy(PolicyArgs),
    /// Claim jobs from a mailbox queue and run them until SIGTERM/SIGINT.
    Worker(WorkerArgs),
}

impl Cli {
    /// Run the selected command; the error is the one-line reason to print.
    pub async fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => args.execute().await,
            Command::Policy(args) => args.execute().await,
            Command::Worker(args) => args.execute().await,
        }
    }
}
