//! The host configuration file: settings an operator would otherwise repeat
//! on every command line.
//!
//! `--config FILE` or `WINK_CONFIG` names it (see `docs/config.md` for a
//! full example). Every section and every key is optional. A command-line
//! flag beats its environment variable, which beats the file, which beats
//! the built-in default. Unknown keys are rejected with their name and line,
//! as in policy files, so a typo never silently falls back to a default.
//!
//! # Adding a section
//!
//! A section is a struct deriving `Default` and `Deserialize` with
//! `#[serde(deny_unknown_fields)]`, kept in its own file under `config/` (or
//! in the module it configures). Add it to [`HostConfig`] as one field with
//! `#[serde(default)]`; nothing else here changes. Keep its keys optional
//! (`Option`) when flags or environment variables may override them, so
//! "not set in the file" stays distinguishable from a default value.

mod model;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{ModelSpec, Price};
use crate::policy::Budget;
use crate::worker::WorkerConfig;

pub use model::{BedrockSection, BreakerSection, GuardrailSection, ModelSection, RetrySection};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// `[model]`: which provider serves model calls.
    #[serde(default)]
    pub model: ModelSection,
    /// `[bedrock]`: how to reach Amazon Bedrock, retries, circuit breaker, guardrail.
    #[serde(default)]
    pub bedrock: BedrockSection,
    /// `[budget]`: budgets of jobs whose policy and flags leave a dimension unset.
    #[serde(default)]
    pub budget: Budget,
    /// `[prices]`: model prices by id prefix, added to or replacing the built-in table.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    /// `[worker]`: how `wink-host worker` claims, runs, retries and releases
    /// jobs; every key is optional and its `--flag`/`WINK_*` variable beats it.
    #[serde(default)]
    pub worker: WorkerConfig,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or an invalid value.
    #[error("config {origin}:{line}:{column}: {message}")]
    Parse {
        /// The file, or `<inline>`.
        origin: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key or value.
        message: String,
    },
    /// A value, from the file or a flag, is well-formed but unusable.
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        /// The key, with the flag that also sets it.
        setting: String,
        /// What is wrong, naming the value.
        message: String,
    },
}

impl ConfigError {
    fn invalid(setting: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            setting: setting.to_owned(),
            message: message.into(),
        }
    }
}

impl HostConfig {
    /// Read and validate a configuration file. A relative `scripted:` model
    /// path in it is taken relative to the file's directory.
    pub async fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = tokio::fs::read_to_string(path).await;
        Self::from_file(path, text)
    }

    /// [`load`](Self::load), blocking the thread: for what must be known
    /// before the async runtime exists (how many threads it gets).
    pub fn load_blocking(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file(path, std::fs::read_to_string(path))
    }

    /// The configuration in `text`, as read from the file at `path`.
    fn from_file(path: &Path, text: std::io::Result<String>) -> Result<Self, ConfigError> {
        let text = text.map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        if let Some(ModelSpec::Scripted(script)) = &mut config.model.default
            && script.is_relative()
            && let Some(dir) = path.parent()
        {
            *script = dir.join(&*script);
        }
        Ok(config)
    }

    /// Parse and validate configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|err| {
            let (line, column) = toml_position(text, &err);
            ConfigError::Parse {
                origin: origin.to_owned(),
                line,
                column,
                message: err.message().replace('\n', " "),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks serde cannot express: numbers that must not be negative.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(usd) = self.budget.max_usd
            && !(usd.is_finite() && usd >= 0.0)
        {
            return Err(ConfigError::invalid(
                "budget.max_usd",
                format!("{usd} is not a non-negative number of US dollars"),
            ));
        }
        for (model, price) in &self.prices {
            for (field, value) in [
                ("input_usd_per_mtok", price.input_usd_per_mtok),
                ("output_usd_per_mtok", price.output_usd_per_mtok),
            ] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(ConfigError::invalid(
                        &format!("prices.{model:?}.{field}"),
                        format!("{value} is not a non-negative price"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// 1-based line and column of a TOML error (its start), for one-line
/// messages that point at the offending key.
pub(crate) fn toml_position(text: &str, err: &toml::de::Error) -> (usize, usize) {
    let offset = err.span().map_or(0, |span| span.start);
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}
