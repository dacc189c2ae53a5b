//! Scrubbing secrets from log output before it reaches any sink.
//!
//! Every formatted log line passes through a [`Redactor`] on its way to the
//! writer, so a secret that reaches a log call by accident (an AWS key in an
//! error message, an `Authorization` header in a debug dump, a guest echoing
//! its input) is replaced by `[REDACTED]` no matter which module logged it.

use std::borrow::Cow;
use std::io::{self, Write};

use regex::{Regex, RegexSet};
use tracing_subscriber::fmt::MakeWriter;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Built-in patterns. In those with a `keep` group, only the text after it
/// (the value) is replaced, so the log still says which field held a secret.
const BUILT_IN: &[&str] = &[
    // AWS access key ids: long-term (AKIA), temporary (ASIA) and others.
    r"\b(?:AKIA|ASIA|AROA|AIDA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b",
    // AWS secret keys and session tokens, by the names they travel under.
    r#"(?i)(?P<keep>(?:aws_?secret_?access_?key|secret_?access_?key|aws_?session_?token|session_?token|x-amz-security-token)["']?\s*[:=]\s*["']?)[A-Za-z0-9/+=]{16,}"#,
    // Authorization headers and bearer tokens, whatever the scheme.
    r#"(?i)(?P<keep>authorization["']?\s*[:=]\s*["']?)[^"'\r\n]+"#,
    r"(?i)(?P<keep>\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}",
];

/// Values of environment variables shorter than this are not treated as
/// secrets: redacting `1` or `on` everywhere would garble every log line.
const MIN_SECRET_LEN: usize = 6;

/// Errors building a redactor from configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid redaction pattern {pattern:?}: {message}")]
pub struct RedactError {
    pattern: String,
    message: String,
}

/// Replaces secrets in text.
#[derive(Debug, Clone)]
pub struct Redactor {
    set: RegexSet,
    patterns: Vec<Regex>,
}

impl Redactor {
    /// The built-in patterns, plus `extra` regexes, plus the literal values
    /// of `secret_env` variables that are set.
    pub fn new<'a>(
        extra: impl IntoIterator<Item = &'a str>,
        secret_values: impl IntoIterator<Item = String>,
    ) -> Result<Self, RedactError> {
        let literals = secret_values
            .into_iter()
            .filter(|value| value.len() >= MIN_SECRET_LEN)
            .map(|value| regex::escape(&value));
        let sources: Vec<String> = BUILT_IN
            .iter()
            .copied()
            .chain(extra)
            .map(str::to_owned)
            .chain(literals)
            .collect();
        let patterns = sources
            .iter()
            .map(|source| {
                Regex::new(source).map_err(|err| RedactError {
                    pattern: source.clone(),
                    message: err.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let set = RegexSet::new(&sources).map_err(|err| RedactError {
            pattern: "(combined)".into(),
            message: err.to_string(),
        })?;
        Ok(Self { set, patterns })
    }

    /// From the environment: `WINK_REDACT_PATTERNS` (regexes, one per line)
    /// and `WINK_SECRET_ENV` (comma-separated names of variables whose
    /// values are secrets). `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`
    /// are always treated as secret, and so are the values of the OTLP
    /// exporter's headers (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`), which
    /// usually carry an API key.
    pub fn from_env() -> Result<Self, RedactError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Self::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, RedactError> {
        let extra = var("WINK_REDACT_PATTERNS").unwrap_or_default();
        let names = var("WINK_SECRET_ENV").unwrap_or_default();
        let header_values: Vec<String> = super::traces::HEADER_VARS
            .into_iter()
            .flat_map(|name| {
                // A malformed variable is reported when tracing is set up.
                super::traces::parse_pairs(name, var(name).as_deref()).unwrap_or_default()
            })
            .map(|(_, value)| value)
            .collect();
        let secret_values: Vec<String> = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
            .into_iter()
            .chain(names.split(',').map(str::trim))
            .filter(|name| !name.is_empty())
            .filter_map(&var)
            .chain(header_values)
            .collect();
        Self::new(extra.lines().map(str::trim).filter(|l| !l.is_empty()), secret_values)
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        // Nearly every text is clean: `is_match` answers that without the
        // per-pattern bookkeeping (and allocation) of `matches`.
        if !self.set.is_match(text) {
            return Cow::Borrowed(text);
        }
        let matched = self.set.matches(text);
        let mut text = text.to_owned();
        for index in matched.iter() {
            let replacement = if self.patterns[index].capture_names().any(|n| n == Some("keep")) {
                format!("${{keep}}{REDACTED}")
            } else {
                REDACTED.to_owned()
            };
            text = self.patterns[index]
                .replace_all(&text, replacement.as_str())
                .into_owned();
        }
        Cow::Owned(text)
    }
}

/// A [`MakeWriter`] whose writers redact each write before passing it on.
///
/// tracing-subscriber's fmt layer formats a whole event into a buffer and
/// writes it with one `write_all`, so each write is one complete line.
#[derive(Debug, Clone)]
pub struct RedactingMakeWriter<M> {
    inner: M,
    redactor: Redactor,
}

impl<M> RedactingMakeWriter<M> {
    /// Wrap `inner`.
    pub fn new(inner: M, redactor: Redactor) -> Self {
        Self { inner, redactor }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<M> {
    type Writer = RedactingWriter<'a, M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer(),
            redactor: &self.redactor,
        }
    }
}

/// One redacting writer; see [`RedactingMakeWriter`].
#[derive(Debug)]
pub struct RedactingWriter<'a, W> {
    inner: W,
    redactor: &'a Redactor,
}

impl<W: Write> Write for RedactingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.inner.write_all(self.redactor.redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::TestSink;

    fn redactor() -> Redactor {
        Redactor::new(["ticket-[0-9]{4}"], ["s3cr3t-value".to_owned(), "on".to_owned()]).expect("redactor")
    }

    #[test]
    fn redacts_each_kind_of_secret() {
        let r = redactor();
        let cases = [
            ("key AKIAIOSFODNN7EXAMPLE used", "key [REDACTED] used"),
            ("temp ASIAZZZZZZZZZZZZZZZZ!", "temp [REDACTED]!"),
            (
                "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "aws_secret_access_key=[REDACTED]",
            ),
            (
                r#"{"SessionToken": "FwoGZXIvYXdzEBYaDH7gJvA0example+token=="}"#,
                r#"{"SessionToken": "[REDACTED]"}"#,
            ),
            (
                "x-amz-security-token: IQoJb3JpZ2luX2VjEXAMPLE",
                "x-amz-security-token: [REDACTED]",
            ),
            (
                "Authorization: AWS4-HMAC-SHA256 Credential=AKIA.../aws4_request, Signature=abc",
                "Authorization: [REDACTED]",
            ),
            (
                r#""authorization":"Basic dXNlcjpwYXNz","x":1"#,
                r#""authorization":"[REDACTED]","x":1"#,
            ),
            (
                "sent Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig now",
                "sent Bearer [REDACTED] now",
            ),
            ("env leaked s3cr3t-value here", "env leaked [REDACTED] here"),
            ("see ticket-1234", "see [REDACTED]"),
        ];
        for (input, expected) in cases {
            assert_eq!(r.redact(input), expected, "input: {input}");
        }
    }

    #[test]
    fn the_environment_names_secrets_by_value_and_pattern() {
        let env = [
            ("AWS_SECRET_ACCESS_KEY", "plainSecretKeyValue42"),
            ("AWS_SESSION_TOKEN", "sessionTokenValue99"),
            ("WINK_SECRET_ENV", "DB_PASSWORD, API_TOKEN"),
            ("DB_PASSWORD", "hunter2-long"),
            ("WINK_REDACT_PATTERNS", "order-[0-9]+\n\ncust_[a-z]+"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=lsv2_key%2Fabc,Langsmith-Project=p",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "dd-api-key=ddsecret123"),
        ];
        let r = Redactor::from_vars(|name| env.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned()))
            .expect("redactor");
        let line = "plainSecretKeyValue42 sessionTokenValue99 hunter2-long order-17 cust_bob lsv2_key/abc ddsecret123";
        assert_eq!(r.redact(line), ["[REDACTED]"; 7].join(" "));
        // Short values (the project name "p") are not treated as secrets.
        assert_eq!(r.redact("project p"), "project p");
    }

    #[test]
    fn leaves_ordinary_text_alone_and_ignores_short_env_values() {
        let r = redactor();
        let line = "job on worker-1 finished: fuel=42 AKIA short";
        assert!(matches!(r.redact(line), Cow::Borrowed(_)));
    }

    #[test]
    fn invalid_patterns_are_named() {
        let err = Redactor::new(["(unclosed"], []).expect_err("must fail").to_string();
        assert!(err.starts_with("invalid redaction pattern \"(unclosed\""), "{err}");
    }

    #[test]
    fn secrets_never_reach_the_sink_through_a_real_subscriber() {
        let sink = TestSink::default();
        let writer = RedactingMakeWriter::new(
            {
                let sink = sink.clone();
                move || sink.clone()
            },
            redactor(),
        );
        let subscriber = tracing_subscriber::fmt().json().with_writer(writer).finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("job", request_id = "r-1");
            let _entered = span.enter();
            tracing::warn!(header = "Bearer abcdefghijklmnop", "calling with AKIAIOSFODNN7EXAMPLE");
        });
        let logged = sink.text();
        assert!(!logged.contains("AKIAIOSFODNN7EXAMPLE"), "{logged}");
        assert!(!logged.contains("abcdefghijklmnop"), "{logged}");
        assert!(logged.contains("[REDACTED]") && logged.contains("r-1"), "{logged}");
    }
}
