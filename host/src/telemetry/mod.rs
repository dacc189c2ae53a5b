//! Logging setup.
//!
//! Human-readable lines on a terminal, JSON lines otherwise (or with
//! `WINK_LOG_FORMAT=json`); the level comes from `WINK_LOG`, then
//! `RUST_LOG`, defaulting to `info`. Logs always go to stderr, keeping stdout
//! for command output, and pass through a [`Redactor`] first.

mod metrics;
mod redact;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

pub use metrics::{Metrics, PROMETHEUS_TEXT_CONTENT_TYPE};
pub use redact::{REDACTED, RedactError, RedactingMakeWriter, RedactingWriter, Redactor};

/// Output format for log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, for terminals.
    Text,
    /// One JSON object per line, for collectors.
    Json,
}

impl LogFormat {
    /// The format selected by `WINK_LOG_FORMAT` (`json` or `text`), else by
    /// whether stderr is a terminal.
    pub fn from_env() -> Self {
        match std::env::var("WINK_LOG_FORMAT").as_deref() {
            Ok("json") => Self::Json,
            Ok("text") => Self::Text,
            _ if std::io::stderr().is_terminal() => Self::Text,
            _ => Self::Json,
        }
    }
}

/// Install the global subscriber, redacting with `redactor`. Calling it twice
/// is harmless.
pub fn init_logging(format: LogFormat, redactor: Redactor) {
    let filter = std::env::var("WINK_LOG")
        .ok()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingMakeWriter::new(std::io::stderr, redactor))
        .with_span_events(FmtSpan::NONE);
    let _ = match format {
        // The span list carries the job's ids on lines logged inside nested
        // spans (a tool call inside a job), not only the innermost span's fields.
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
