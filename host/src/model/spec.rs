//! Parsing `--model SPEC`.

use std::path::PathBuf;
use std::str::FromStr;

/// Which provider serves a job's model calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// The built-in echo script: every call answers with the last user text.
    Echo,
    /// Responses replayed in order from a script file.
    Scripted(PathBuf),
    /// Amazon Bedrock; the model or inference-profile id serves requests that name none.
    Bedrock(String),
}

impl Default for ModelSpec {
    /// Echo: works on a fresh machine with no credentials and no files.
    fn default() -> Self {
        Self::Echo
    }
}

/// A model spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid model spec {spec:?}: {reason} (expected `echo`, `scripted:FILE` or `bedrock:MODEL_ID`)")]
pub struct ModelSpecError {
    spec: String,
    reason: &'static str,
}

/// A spec in a configuration file: the same text as `--model`.
impl<'de> serde::Deserialize<'de> for ModelSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for ModelSpec {
    type Err = ModelSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let error = |reason| ModelSpecError {
            spec: spec.to_owned(),
            reason,
        };
        match spec.split_once(':') {
            None if spec == "echo" => Ok(Self::Echo),
            Some(("scripted", "")) => Err(error("scripted needs a file")),
            Some(("scripted", file)) => Ok(Self::Scripted(PathBuf::from(file))),
            Some(("bedrock", "")) => Err(error("bedrock needs a model id")),
            // Model ids contain `:` themselves (`anthropic.claude-3-haiku-20240307-v1:0`).
            Some(("bedrock", model)) => Ok(Self::Bedrock(model.to_owned())),
            _ => Err(error("unknown provider")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_specs_and_names_bad_ones() {
        assert_eq!("echo".parse(), Ok(ModelSpec::Echo));
        assert_eq!(
            "scripted:a/b.json".parse(),
            Ok(ModelSpec::Scripted(PathBuf::from("a/b.json")))
        );
        let err = "gpt:4".parse::<ModelSpec>().unwrap_err().to_string();
        assert!(err.contains("\"gpt:4\"") && err.contains("unknown provider"), "{err}");
        assert_eq!(
            "bedrock:us.anthropic.claude-3-5-haiku-20241022-v1:0".parse(),
            Ok(ModelSpec::Bedrock("us.anthropic.claude-3-5-haiku-20241022-v1:0".into()))
        );
        let err = "bedrock:".parse::<ModelSpec>().unwrap_err().to_string();
        assert!(err.contains("needs a model id"), "{err}");
        let err = "scripted:".parse::<ModelSpec>().unwrap_err().to_string();
        assert!(err.contains("needs a file"), "{err}");
    }
}
