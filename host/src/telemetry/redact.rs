//! Scrubbing secrets from log output before it reaches any sink.
//!
//! Every formatted log line passes through a [`Redactor`] on its way to the
//! writer, so a secret that reaches a log call by accident (an AWS key in an
//! error message, an `Authorization` header in a debug dump, a guest echoing
//! its input) is replaced by `[REDACTED]` no matter which module logged it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{self, Write};

use aho_corasick::{AhoCorasick, MatchKind};
use regex::{Regex, RegexSet};
use tracing_subscriber::fmt::MakeWriter;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Built-in patterns. In those with a `keep` group, only the text after it
/// (the value) is replaced, so the log still says which field held a secret.
/// Names match in any ASCII case, not with Unicode case folding (under
/// which a Kelvin sign would match the `k` of `token`): the word search
/// that screens texts for them lowercases ASCII only.
const BUILT_IN: &[&str] = &[
    // AWS access key ids: long-term (AKIA), temporary (ASIA) and others.
    r"\b(?:AKIA|ASIA|AROA|AIDA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b",
    // AWS secret keys and session tokens, by the names they travel under.
    r#"(?P<keep>(?i-u:aws_?secret_?access_?key|secret_?access_?key|aws_?session_?token|session_?token|x-amz-security-token)["']?\s*[:=]\s*["']?)[A-Za-z0-9/+=]{16,}"#,
    // Authorization headers and bearer tokens, whatever the scheme.
    r#"(?P<keep>(?i-u:authorization)["']?\s*[:=]\s*["']?)[^"'\r\n]+"#,
    r"(?P<keep>\b(?i-u:bearer)\s+)[A-Za-z0-9._~+/=-]{8,}",
];

/// A word of each built-in pattern that every match of it contains, in
/// ASCII lowercase (the patterns match names in any ASCII case, and key ids
/// in upper case): a text that holds none of them once lowercased holds no
/// built-in secret. Searching for these few words is a single SIMD pass;
/// the patterns' own case-insensitive prefilter read a log line a byte at a
/// time, a microsecond per line. Keep in step with [`BUILT_IN`].
const BUILT_IN_WORDS: &[&str] = &[
    "akia",
    "asia",
    "aroa",
    "aida",
    "anpa",
    "anva",
    "aipa",
    "secret",
    "session",
    "x-amz-security-token",
    "authorization",
    "bearer",
];

/// The length of the longest of [`BUILT_IN_WORDS`].
const LONGEST_WORD: usize = {
    let mut longest = 0;
    let mut i = 0;
    while i < BUILT_IN_WORDS.len() {
        if BUILT_IN_WORDS[i].len() > longest {
            longest = BUILT_IN_WORDS[i].len();
        }
        i += 1;
    }
    longest
};

/// Text is lowercased for the word search this many bytes at a time, so
/// that the buffer stays small whatever the text's length.
const LOWERCASE_CHUNK: usize = 4096;

// Each chunk must get past the previous one's overlap.
const _: () = assert!(LONGEST_WORD < LOWERCASE_CHUNK);

thread_local! {
    /// The buffer each thread lowercases text into.
    static LOWERCASED: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(LOWERCASE_CHUNK));
}

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
    /// Finds [`BUILT_IN_WORDS`] in lowercased text.
    built_in_words: AhoCorasick,
    /// The fewest bytes a built-in pattern matches: shorter texts (most
    /// span attributes) are let through without a search.
    shortest_built_in_match: usize,
    /// The built-in patterns, to tell which ones matched once a word was
    /// found.
    built_in: RegexSet,
    /// The configured patterns and secret values, when there are any.
    configured: Option<RegexSet>,
    /// Every pattern, built-in ones first, in the order of the two sets.
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
        let combined = |sources: &[String]| {
            RegexSet::new(sources).map_err(|err| RedactError {
                pattern: "(combined)".into(),
                message: err.to_string(),
            })
        };
        let (built_in, configured) = sources.split_at(BUILT_IN.len());
        // Leftmost-first, because only then does the search use its SIMD
        // prefilter (Teddy); which word is found does not matter.
        let built_in_words = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(BUILT_IN_WORDS)
            .map_err(|err| RedactError {
                pattern: "(built-in words)".into(),
                message: err.to_string(),
            })?;
        Ok(Self {
            built_in_words,
            shortest_built_in_match: shortest_match(BUILT_IN)?,
            built_in: combined(built_in)?,
            configured: if configured.is_empty() {
                None
            } else {
                Some(combined(configured)?)
            },
            patterns,
        })
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
        // Nearly every text is clean: the word search, and `is_match` for
        // the configured patterns, say so without the per-pattern
        // bookkeeping (and allocation) of `matches`.
        let built_in = self
            .has_built_in_word(text.as_bytes())
            .then(|| self.built_in.matches(text));
        let configured = self
            .configured
            .as_ref()
            .filter(|set| set.is_match(text))
            .map(|set| set.matches(text));
        let mut matched = built_in
            .iter()
            .flat_map(|matches| matches.iter())
            .chain(
                configured
                    .iter()
                    .flat_map(|matches| matches.iter().map(|index| BUILT_IN.len() + index)),
            )
            .peekable();
        if matched.peek().is_none() {
            return Cow::Borrowed(text);
        }
        let mut text = text.to_owned();
        for index in matched {
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

    /// Whether `text`, lowercased, contains one of [`BUILT_IN_WORDS`]. It is
    /// lowercased a chunk at a time, each chunk starting far enough before
    /// the last one's end that no word is split between the two.
    fn has_built_in_word(&self, text: &[u8]) -> bool {
        if text.len() < self.shortest_built_in_match {
            return false;
        }
        // Without its buffer (a thread being torn down, or a redaction
        // inside a redaction), a text is treated as if it held a word: the
        // regexes then decide.
        let searched = LOWERCASED.try_with(|buffer| {
            let mut lowercased = buffer.try_borrow_mut().ok()?;
            let mut start = 0;
            loop {
                let end = text.len().min(start + LOWERCASE_CHUNK);
                lowercased.clear();
                lowercased.extend_from_slice(&text[start..end]);
                lowercased.make_ascii_lowercase();
                if self.built_in_words.is_match(lowercased.as_slice()) {
                    return Some(true);
                }
                if end == text.len() {
                    return Some(false);
                }
                start = end - (LONGEST_WORD - 1);
            }
        });
        searched.ok().flatten().unwrap_or(true)
    }
}

/// The fewest bytes any of `patterns` matches.
fn shortest_match(patterns: &[&str]) -> Result<usize, RedactError> {
    patterns.iter().try_fold(usize::MAX, |shortest, pattern| {
        let hir = regex_syntax::parse(pattern).map_err(|err| RedactError {
            pattern: (*pattern).to_owned(),
            message: err.to_string(),
        })?;
        Ok(shortest.min(hir.properties().minimum_len().unwrap_or(0)))
    })
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
        // Lines are nearly always valid UTF-8, which `from_utf8` checks
        // several times faster than the lossy conversion's own scan.
        let text = match std::str::from_utf8(buf) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(buf),
        };
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

    /// A writer of [`redactor`]'s that writes into `sink`.
    fn redacting_writer_to(sink: &TestSink) -> RedactingMakeWriter<impl Fn() -> TestSink + use<>> {
        let sink = sink.clone();
        RedactingMakeWriter::new(move || sink.clone(), redactor())
    }

    /// Each `(input, expected)` of `cases` redacts to what is expected.
    fn assert_redacts(r: &Redactor, cases: &[(&str, &str)]) {
        for (input, expected) in cases {
            assert_eq!(r.redact(input), *expected, "input: {input}");
        }
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
        assert_redacts(&r, &cases);
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
        let lines = [
            "job on worker-1 finished: fuel=42 AKIA short",
            // Names of secrets, with no secret after them.
            "session started; authorization pending; bearer of news",
        ];
        for line in lines {
            assert!(matches!(r.redact(line), Cow::Borrowed(_)), "{line}");
        }
    }

    #[test]
    fn names_match_in_any_ascii_case() {
        let r = redactor();
        let cases = [
            ("AUTHORIZATION: Basic dXNlcjpwYXNz", "AUTHORIZATION: [REDACTED]"),
            ("bEaReR abcdefghijklmnop", "bEaReR [REDACTED]"),
            (
                "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "AWS_SECRET_ACCESS_KEY=[REDACTED]",
            ),
            (
                "X-Amz-Security-Token: IQoJb3JpZ2luX2VjEXAMPLE",
                "X-Amz-Security-Token: [REDACTED]",
            ),
        ];
        assert_redacts(&r, &cases);
    }

    #[test]
    fn finds_secrets_across_the_lowercasing_chunks() {
        let r = redactor();
        // The word straddles the first chunk's end, and a key id sits in the third chunk.
        let padding = "x".repeat(LOWERCASE_CHUNK - 3);
        let text = format!("{padding} Bearer abcdefghijklmnop {padding} {padding} AKIAIOSFODNN7EXAMPLE end");
        let expected = format!("{padding} Bearer [REDACTED] {padding} {padding} [REDACTED] end");
        assert_eq!(r.redact(&text), expected);
    }

    #[test]
    fn the_shortest_built_in_match_is_not_overlooked() {
        let r = redactor();
        assert_eq!(r.shortest_built_in_match, "bearer 12345678".len());
        assert_eq!(r.redact("bearer 12345678"), "bearer [REDACTED]");
    }

    #[test]
    fn a_write_that_is_not_utf8_is_redacted_too() {
        let sink = TestSink::default();
        let writer = redacting_writer_to(&sink);
        writer
            .make_writer()
            .write_all(b"key AKIAIOSFODNN7EXAMPLE \xff\n")
            .expect("write");
        assert_eq!(sink.text(), "key [REDACTED] \u{FFFD}\n");
    }

    #[test]
    fn invalid_patterns_are_named() {
        let err = Redactor::new(["(unclosed"], []).expect_err("must fail").to_string();
        assert!(err.starts_with("invalid redaction pattern \"(unclosed\""), "{err}");
    }

    #[test]
    fn secrets_never_reach_the_sink_through_a_real_subscriber() {
        let sink = TestSink::default();
        let writer = redacting_writer_to(&sink);
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
