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

    /// The configuration, once [`preload`](Self::preload) read it: the
    /// file is read once, whatever asks (it may be a pipe).
    #[arg(skip)]
    loaded: Option<HostConfig>,
}

impl ConfigArgs {
    /// The file's configuration, or the built-in defaults when none is named.
    /// Later calls return the configuration [`preload`](Self::preload) read.
    pub async fn load(&self) -> Result<HostConfig, ConfigError> {
        match (&self.loaded, &self.path) {
            (Some(loaded), _) => Ok(loaded.clone()),
            (None, Some(path)) => HostConfig::load(path).await,
            (None, None) => Ok(HostConfig::default()),
        }
    }

    /// Read the configuration now, blocking the thread, for what must be
    /// known before the async runtime exists; [`load`](Self::load) then
    /// returns it without reading again.
    pub fn preload(&mut self) -> Result<&HostConfig, ConfigError> {
        let loaded = match (self.loaded.take(), &self.path) {
            (Some(loaded), _) => loaded,
            (None, Some(path)) => HostConfig::load_blocking(path)?,
            (None, None) => HostConfig::default(),
        };
        Ok(self.loaded.insert(loaded))
    }
}
