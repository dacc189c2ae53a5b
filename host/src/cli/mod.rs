//! The `wink-host` command line.

mod policy;
mod run;

use clap::{Parser, Subcommand};

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
}

impl Cli {
    /// Run the selected command; the error is the one-line reason to print.
    pub async fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => args.execute().await,
            Command::Policy(args) => args.execute().await,
        }
    }
}

/// Parse a duration such as `250ms`, `30s`, `5m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (expected e.g. 500ms, 30s, 5m)"))?;
    let millis = match unit {
        "ms" => Some(value),
        "" | "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => return Err(format!("invalid duration unit in {text:?} (use ms, s, m or h)")),
    };
    millis
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_durations_and_names_bad_ones() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("3 weeks").unwrap_err().contains("\"3 weeks\""));
        assert!(parse_duration("ms").unwrap_err().contains("invalid duration"));
    }
}
