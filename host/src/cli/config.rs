//! `--config FILE`, shared by every subcommand that reads the host configuration.

use std::path::PathBuf;

use clap::Args;

use crate::config::{ConfigError, HostConfig};

/// Where the host configuration comes from; flatten it into a subcommand's
/// arguments with `#[command(flatten)]`.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// Host configuration file (TOML, see docs/config.md). Flags and their
    /// environment variables override its values [default: none, built-in defaults].
    #[arg(id = "config", long = "config", env = "WINK_CONFIG", value_name = "FILE")]
    pub path: Option<PathBuf>,
}

impl ConfigArgs {
    /// The file's configuration, or the built-in defaults when none is named.
    pub async fn load(&self) -> Result<HostConfig, ConfigError> {
        match &self.path {
            Some(path) => HostConfig::load(path).await,
            None => Ok(HostConfig::default()),
        }
    }

    /// [`load`](Self::load), blocking the thread.
    pub fn load_blocking(&self) -> Result<HostConfig, ConfigError> {
        match &self.path {
            Some(path) => HostConfig::load_blocking(path),
            None => Ok(HostConfig::default()),
        }
    }
}
