//! The `wink-host` command line.

mod exit;
mod policy;
pub mod queue;
mod run;

use clap::{Parser, Subcommand};

pub use exit::{Exit, exit_code};
pub use policy::PolicyArgs;
pub use run::RunArgs;

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
    /// Put jobs on a queue: one from flags, or many from a JSONL file of envelopes.
    Enqueue(queue::EnqueueArgs),
    /// Inspect a queue: depth by state, stored replies; purge pending jobs.
    Queue(queue::QueueArgs),
    /// Inspect, requeue or purge a queue's dead letters.
    Dlq(queue::DlqArgs),
}

impl Cli {
    /// Run the selected command; the error is the one-line reason to print.
    pub async fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => args.execute().await,
            Command::Policy(args) => args.execute().await,
            Command::Enqueue(args) => args.execute().await,
            Command::Queue(args) => args.execute().await,
            Command::Dlq(args) => args.execute().await,
        }
    }
}
