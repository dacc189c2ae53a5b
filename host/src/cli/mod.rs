//! The `wink-host` command line.

mod config;
mod engine;
mod exit;
mod policy;
pub mod queue;
mod run;
mod worker;

use clap::{Parser, Subcommand};

pub use config::ConfigArgs;
pub use engine::{BedrockArgs, BudgetArgs, Engine, EngineArgs, ModelPolicyArgs, model_provider};
pub use exit::{Exit, exit_code};
pub use policy::PolicyArgs;
pub use run::RunArgs;
pub use worker::{WorkerArgs, WorkerOptions};

/// Telemetry settings, which every command reads from the environment.
const TELEMETRY_HELP: &str = "\
Logging and tracing (environment; see docs/observability.md):
  WINK_LOG, RUST_LOG                  log filter [default: info]
  WINK_LOG_FORMAT                     json or text [default: text on a terminal, else json]
  WINK_SECRET_ENV, WINK_REDACT_PATTERNS
                                      more secrets to redact from logs and spans
  OTEL_EXPORTER_OTLP_ENDPOINT         export spans over OTLP to this URL [default: no export]
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  full traces URL, overriding the above
  OTEL_EXPORTER_OTLP_PROTOCOL         grpc or http/protobuf [default: http/protobuf]
  OTEL_EXPORTER_OTLP_HEADERS          key=value,... sent with every export (e.g. an API key)
  OTEL_EXPORTER_OTLP_TIMEOUT          export timeout in ms [default: 10000]
  OTEL_SERVICE_NAME                   service.name [default: wink-host]
  OTEL_RESOURCE_ATTRIBUTES            more resource attributes, key=value,...
  OTEL_SPAN_LINK_COUNT_LIMIT          most links a span keeps; caps the sampled jobs in a worker's ack batch [default: 128]
  WINK_TRACE_MAILBOX_SPANS            false: no claim and ack spans from workers [default: true]";

/// `TOKIO_WORKER_THREADS`, which tokio would read itself, but with a panic
/// for a value that is not a number above zero.
fn tokio_worker_threads() -> anyhow::Result<Option<usize>> {
    let Some(value) = std::env::var_os("TOKIO_WORKER_THREADS") else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    match value.trim().parse() {
        Ok(threads) if threads > 0 => Ok(Some(threads)),
        _ => anyhow::bail!("TOKIO_WORKER_THREADS `{value}` is not a number of threads above zero"),
    }
}

/// Runs AI agents and the tools they call as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "wink-host", version, about, long_about = None, after_help = TELEMETRY_HELP)]
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
    /// Claim jobs from a mailbox queue and run them until SIGTERM/SIGINT.
    Worker(WorkerArgs),
}

impl Cli {
    /// How many threads the async runtime should get: `TOKIO_WORKER_THREADS`
    /// when set, else the command's choice (a worker's:
    /// [`WorkerArgs::async_threads`]); `None` leaves tokio's default, one
    /// per core. Call it before the runtime exists: a worker reads its
    /// configuration file here.
    pub fn async_threads(&mut self) -> anyhow::Result<Option<usize>> {
        let wanted = match &mut self.command {
            Command::Worker(args) => Some(args.async_threads()?),
            _ => None,
        };
        Ok(tokio_worker_threads()?.or(wanted))
    }

    /// Run the selected command; the error is the one-line reason to print.
    pub async fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => args.execute().await,
            Command::Policy(args) => args.execute().await,
            Command::Enqueue(args) => args.execute().await,
            Command::Queue(args) => args.execute().await,
            Command::Dlq(args) => args.execute().await,
            Command::Worker(args) => args.execute().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// clap checks a command's definition only when that subcommand is
    /// parsed; this checks all of them (duplicate ids from flattened argument
    /// groups, conflicting short flags) without running any.
    #[test]
    fn every_subcommand_is_well_formed() {
        Cli::command().debug_assert();
    }
}
