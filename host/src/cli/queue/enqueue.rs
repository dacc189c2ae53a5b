//! `wink-host enqueue`: one job from flags, or many from a JSONL file of envelopes.
//!
//! Every envelope is validated before it is sent, so the worker never sees a
//! job the CLI could have refused. Sending is idempotent on the request id,
//! which makes re-running a half-sent file safe: lines already sent come back
//! as duplicates.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::task::JoinSet;

use super::{EXIT_CODES_HELP, MailboxArgs, print_line, time};
use crate::cli::BudgetArgs;
use crate::cli::exit::Exit;
use crate::mailbox::{Envelope, Mailbox, MailboxError, Sent, unix_ms};
use crate::policy::{PolicyNarrowing, parse_duration};

/// Sends retried after the mailbox reports itself unavailable, with doubling pauses.
const SEND_RETRIES: u32 = 3;
/// Pause before the first retry.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Rejected lines listed in the summary; the rest are only counted, so a
/// file of garbage cannot fill memory or the terminal.
pub const MAX_LISTED_REJECTIONS: usize = 1000;
/// Longest JSONL line accepted; longer ones are rejected without being held in memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Flags that describe one job, so make no sense with `--jsonl` (listed one
/// by one, so that clap's error names the one given).
const SINGLE_JOB_ARGS: [&str; 14] = [
    "agent",
    "input",
    "request_id",
    "reply_to",
    "deadline",
    "tags",
    "narrow",
    "traceparent",
    "max_input_tokens",
    "max_output_tokens",
    "max_total_tokens",
    "max_usd",
    "max_turns",
    "timeout",
];

/// Arguments of `wink-host enqueue`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct EnqueueArgs {
    /// The queue.
    #[command(flatten)]
    pub mailbox: MailboxArgs,

    /// The agent component, as the worker sees it: a path, a file:// URL or s3://BUCKET/KEY.
    #[arg(long, required_unless_present = "jsonl")]
    pub agent: Option<String>,

    /// The job input: JSON text, or @FILE to read it from a file.
    #[arg(long, default_value = "{}", value_name = "JSON|@FILE")]
    pub input: String,

    /// The request id (idempotency key): one reply per id, however often it
    /// is sent [default: a fresh time-ordered UUID].
    #[arg(long)]
    pub request_id: Option<String>,

    /// Also send the reply to this queue (it is always stored under the request id).
    #[arg(long, value_name = "QUEUE")]
    pub reply_to: Option<String>,

    /// When the job stops being worth running: a duration from now (90s, 10m,
    /// 2h), an RFC 3339 time (2026-11-23T15:00:00Z) or Unix milliseconds.
    #[arg(long, value_name = "WHEN")]
    pub deadline: Option<String>,

    /// A label carried into the job's logs and reply; repeat for several.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,

    /// The job's budget, narrowing the agent policy's.
    #[command(flatten)]
    pub budget: BudgetArgs,

    /// Wall-clock limit of the job once it runs, e.g. 30s, 5m.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Narrow the agent's policy for this job (TOML, docs/policy.md).
    #[arg(long, value_name = "FILE")]
    pub narrow: Option<PathBuf>,

    /// The caller's W3C trace context (00-TRACEID-SPANID-FLAGS), continued by the job's trace.
    #[arg(long)]
    pub traceparent: Option<String>,

    /// Enqueue every envelope of this JSONL file (one JSON envelope per line,
    /// docs/mailbox.md); `-` reads standard input. Bad lines are reported
    /// with their numbers and skipped.
    #[arg(long, value_name = "FILE", conflicts_with_all = SINGLE_JOB_ARGS)]
    pub jsonl: Option<PathBuf>,

    /// With --jsonl: stop at the first rejected line (lines before it stay enqueued).
    #[arg(long)]
    pub strict: bool,

    /// Validate only; send nothing (no mailbox connection is made).
    #[arg(long)]
    pub dry_run: bool,

    /// With --jsonl: most sends in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub concurrency: u16,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// Send, retrying while the mailbox says it is unavailable. Safe to retry:
/// a send that did land comes back as a duplicate.
pub async fn send_with_retry(mailbox: &dyn Mailbox, request_id: &str, payload: Bytes) -> Result<Sent, MailboxError> {
    let mut pause = FIRST_RETRY_PAUSE;
    for _ in 0..SEND_RETRIES {
        match mailbox.send(request_id, payload.clone()).await {
            Err(MailboxError::Unavailable(reason)) => {
                tracing::warn!(request_id, %reason, ?pause, "mailbox unavailable; retrying the send");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
    mailbox.send(request_id, payload).await
}

/// How [`enqueue_jsonl`] runs.
#[derive(Debug, Clone, Copy)]
pub struct JsonlOptions {
    /// Most sends in flight at once (at least 1).
    pub concurrency: usize,
    /// Stop reading at the first rejected line.
    pub strict: bool,
}

/// One line that was not enqueued, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// 1-based line number in the file (blank lines count).
    pub line: u64,
    /// Why, in one line.
    pub reason: String,
}

/// What an [`enqueue_jsonl`] run did with every line it read (printed by
/// `enqueue --jsonl --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnqueueSummary {
    /// Non-blank lines read.
    pub lines: u64,
    /// Lines holding a valid envelope.
    pub valid: u64,
    /// Envelopes now queued.
    pub enqueued: u64,
    /// Envelopes whose request id was already known (nothing added).
    pub duplicates: u64,
    /// Lines refused: not a valid envelope, or refused by the mailbox.
    pub rejected: u64,
    /// The first [`MAX_LISTED_REJECTIONS`] rejected lines, by line number.
    pub rejections: Vec<Rejection>,
    /// Valid lines whose send failed because the mailbox failed.
    pub failed: Vec<Rejection>,
    /// The last line read, when reading stopped before the end of the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_after_line: Option<u64>,
    /// Why reading stopped early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

impl EnqueueSummary {
    fn reject(&mut self, line: u64, reason: String) {
        self.rejected += 1;
        if self.rejections.len() < MAX_LISTED_REJECTIONS {
            self.rejections.push(Rejection { line, reason });
        }
    }

    fn stop(&mut self, line: u64, reason: String) {
        if self.stopped_after_line.is_none() {
            self.stopped_after_line = Some(line);
            self.stop_reason = Some(reason);
        }
    }

    fn record_send(&mut self, line: u64, result: Result<Sent, MailboxError>) {
        match result {
            Ok(Sent::Enqueued) => self.enqueued += 1,
            Ok(Sent::Duplicate) => self.duplicates += 1,
            // The backend refused this payload (e.g. too large): the line is bad, not the mailbox.
            Err(MailboxError::Invalid(reason)) => self.reject(line, reason),
            Err(err) => self.failed.push(Rejection {
                line,
                reason: err.to_string(),
            }),
        }
    }

    /// The summary as text: a count line, then one line per listed rejection or failure.
    pub fn render(&self, dry_run: bool) -> String {
        let mut text = if dry_run {
            format!(
                "{} lines: {} valid, {} rejected (dry run: nothing sent)",
                self.lines, self.valid, self.rejected
            )
        } else {
            format!(
                "{} lines: {} enqueued, {} duplicates, {} rejected, {} failed",
                self.lines,
                self.enqueued,
                self.duplicates,
                self.rejected,
                self.failed.len()
            )
        };
        for rejection in &self.rejections {
            text.push_str(&format!("\nline {}: rejected: {}", rejection.line, rejection.reason));
        }
        let unlisted = self.rejected.saturating_sub(self.rejections.len() as u64);
        if unlisted > 0 {
            text.push_str(&format!("\n... and {unlisted} more rejected lines"));
        }
        for failure in &self.failed {
            text.push_str(&format!("\nline {}: not sent: {}", failure.line, failure.reason));
        }
        if let (Some(line), Some(reason)) = (self.stopped_after_line, &self.stop_reason) {
            text.push_str(&format!(
                "\nstopped after line {line}: {reason}; later lines were not read"
            ));
        }
        text
    }

    fn progress_message(&self) -> String {
        format!(
            "{} enqueued, {} duplicates, {} rejected",
            self.enqueued, self.duplicates, self.rejected
        )
    }
}

/// Why [`enqueue_jsonl`] could not finish reading.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// The input could not be read.
    #[error("cannot read the JSONL input after line {line}: {source}")]
    Read {
        /// The last line read completely.
        line: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A send task died (a bug, never bad input).
    #[error("a send task failed: {0}")]
    Task(String),
}

/// Validate every line of `reader` as an [`Envelope`] and, with a mailbox,
/// send the valid ones with up to `options.concurrency` sends in flight.
/// Without a mailbox (a dry run) only validates.
///
/// A rejected line never stops the run unless `options.strict`; a failing
/// mailbox does (after retries), since every later send would fail too.
/// `progress` advances by the bytes read.
pub async fn enqueue_jsonl<R>(
    mut reader: R,
    mailbox: Option<Arc<dyn Mailbox>>,
    options: JsonlOptions,
    progress: &ProgressBar,
) -> Result<EnqueueSummary, JsonlError>
where
    R: AsyncBufRead + Unpin,
{
    let concurrency = options.concurrency.max(1);
    let mut summary = EnqueueSummary::default();
    let mut sends: JoinSet<(u64, Result<Sent, MailboxError>)> = JoinSet::new();
    let mut buffer = Vec::new();
    let mut line = 0;
    loop {
        buffer.clear();
        let read = read_line_capped(&mut reader, &mut buffer)
            .await
            .map_err(|source| JsonlError::Read { line, source })?;
        if read.bytes == 0 {
            break;
        }
        line += 1;
        progress.inc(read.bytes);
        let text = buffer.trim_ascii();
        if text.is_empty() && !read.too_long {
            continue;
        }
        summary.lines += 1;
        if read.too_long {
            summary.reject(line, format!("longer than {MAX_LINE_BYTES} bytes"));
            if options.strict {
                summary.stop(line, format!("--strict, and line {line} was rejected"));
                break;
            }
            continue;
        }
        let envelope = match Envelope::parse(text) {
            Ok(envelope) => envelope,
            Err(err) => {
                summary.reject(line, err.to_string());
                if options.strict {
                    summary.stop(line, format!("--strict, and line {line} was rejected"));
                    break;
                }
                continue;
            }
        };
        summary.valid += 1;
        let Some(mailbox) = &mailbox else { continue };
        while sends.len() >= concurrency {
            if let Some(done) = sends.join_next().await {
                record(&mut summary, done)?;
            }
        }
        while let Some(done) = sends.try_join_next() {
            record(&mut summary, done)?;
        }
        if let Some(failure) = summary.failed.first() {
            let reason = format!("the mailbox failed: {}", failure.reason);
            // This line was read but not sent: report it, so nothing is lost silently.
            summary.failed.push(Rejection {
                line,
                reason: "not attempted: the mailbox had failed".into(),
            });
            summary.stop(line, reason);
            break;
        }
        let mailbox = Arc::clone(mailbox);
        sends.spawn(async move {
            let payload = Bytes::from(envelope.to_bytes());
            (line, send_with_retry(&*mailbox, &envelope.request_id, payload).await)
        });
        if line % 256 == 0 {
            progress.set_message(summary.progress_message());
        }
    }
    while let Some(done) = sends.join_next().await {
        record(&mut summary, done)?;
    }
    summary.rejections.sort_by_key(|r| r.line);
    summary.failed.sort_by_key(|r| r.line);
    progress.set_message(summary.progress_message());
    Ok(summary)
}

/// One line read by [`read_line_capped`].
struct LineRead {
    /// Bytes consumed, newline included; 0 at the end of the input.
    bytes: u64,
    /// The line was longer than [`MAX_LINE_BYTES`]: the buffer holds only its
    /// start, and the rest was skipped.
    too_long: bool,
}

/// Read one line into `buffer`, holding at most [`MAX_LINE_BYTES`] of it in
/// memory: a file without newlines cannot exhaust memory.
async fn read_line_capped<R: AsyncBufRead + Unpin>(reader: &mut R, buffer: &mut Vec<u8>) -> std::io::Result<LineRead> {
    let cap = MAX_LINE_BYTES as u64 + 1;
    let mut bytes = (&mut *reader).take(cap).read_until(b'\n', buffer).await? as u64;
    let too_long = bytes == cap && buffer.last() != Some(&b'\n');
    if too_long {
        // Skip to the end of the line without keeping it.
        loop {
            let chunk = reader.fill_buf().await?;
            if chunk.is_empty() {
                break;
            }
            let (used, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(end) => (end + 1, true),
                None => (chunk.len(), false),
            };
            reader.consume(used);
            bytes += used as u64;
            if done {
                break;
            }
        }
    }
    Ok(LineRead { bytes, too_long })
}

fn record(
    summary: &mut EnqueueSummary,
    done: Result<(u64, Result<Sent, MailboxError>), tokio::task::JoinError>,
) -> Result<(), JsonlError> {
    let (line, result) = done.map_err(|err| JsonlError::Task(err.to_string()))?;
    summary.record_send(line, result);
    Ok(())
}

/// A progress bar on stderr: by bytes when the input's size is known, else a
/// spinner. Hidden when stderr is not a terminal, so logs and pipes stay clean.
fn progress_bar(total_bytes: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total_bytes {
        Some(total) => (
            ProgressBar::new(total),
            "{bar:30} {bytes}/{total_bytes} {elapsed_precise} eta {eta} {msg}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {bytes} read {elapsed_precise} {msg}",
        ),
    };
    match ProgressStyle::with_template(template) {
        Ok(style) => bar.with_style(style),
        Err(_) => bar,
    }
}

/// `wink-host enqueue` of one job: what it printed.
#[derive(Debug, Serialize)]
struct SingleResult<'a> {
    request_id: &'a str,
    result: &'a str,
}

impl EnqueueArgs {
    /// Run the command.
    pub async fn execute(self) -> anyhow::Result<()> {
        match &self.jsonl {
            Some(path) => self.enqueue_file(path).await,
            None if self.strict => Err(Exit::new(Exit::USAGE, "--strict applies only with --jsonl FILE").into()),
            None => self.enqueue_one().await,
        }
    }

    async fn enqueue_one(&self) -> anyhow::Result<()> {
        let envelope = self.envelope().await?;
        let result = if self.dry_run {
            "valid"
        } else {
            let mailbox = self.mailbox.open().await?;
            let sent = send_with_retry(&*mailbox, &envelope.request_id, Bytes::from(envelope.to_bytes()))
                .await
                .with_context(|| format!("cannot enqueue request `{}`", envelope.request_id))?;
            match sent {
                Sent::Enqueued => "enqueued",
                Sent::Duplicate => "duplicate",
            }
        };
        let view = SingleResult {
            request_id: &envelope.request_id,
            result,
        };
        if self.json {
            print_line(&serde_json::to_string(&view).context("cannot print the result")?)
        } else {
            print_line(&format!("{result} {}", envelope.request_id))
        }
    }

    /// The envelope the flags describe, validated.
    async fn envelope(&self) -> anyhow::Result<Envelope> {
        let agent = self.agent.clone().unwrap_or_default();
        let request_id = self
            .request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let mut envelope = Envelope::new(request_id, agent);
        envelope.input = self.read_input().await?;
        envelope.budget = self.budget.budget(self.timeout);
        envelope.deadline = match &self.deadline {
            Some(text) => Some(
                time::parse_deadline(text, unix_ms(SystemTime::now()))
                    .map_err(|reason| anyhow::anyhow!("invalid --deadline: {reason}"))?,
            ),
            None => None,
        };
        envelope.policy = match &self.narrow {
            Some(path) => Some(read_narrowing(path).await?),
            None => None,
        };
        envelope.reply_to = self.reply_to.clone();
        envelope.traceparent = self.traceparent.clone();
        envelope.tags = self.tags.iter().cloned().collect::<BTreeMap<_, _>>();
        envelope.validate()?;
        Ok(envelope)
    }

    async fn read_input(&self) -> anyhow::Result<serde_json::Value> {
        let (text, origin) = match self.input.strip_prefix('@') {
            Some(path) => (
                tokio::fs::read_to_string(path)
                    .await
                    .with_context(|| format!("cannot read input file {path}"))?,
                format!("input file {path}"),
            ),
            None => (self.input.clone(), "--input".to_owned()),
        };
        serde_json::from_str(&text).with_context(|| format!("{origin} is not valid JSON"))
    }

    async fn enqueue_file(&self, path: &Path) -> anyhow::Result<()> {
        let mailbox = if self.dry_run {
            None
        } else {
            Some(self.mailbox.open().await?)
        };
        let options = JsonlOptions {
            concurrency: usize::from(self.concurrency),
            strict: self.strict,
        };
        let summary = if path == Path::new("-") {
            let progress = progress_bar(None);
            let summary = enqueue_jsonl(BufReader::new(tokio::io::stdin()), mailbox, options, &progress).await;
            progress.finish_and_clear();
            summary?
        } else {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open JSONL file {}", path.display()))?;
            let size = file.metadata().await.ok().map(|meta| meta.len());
            let progress = progress_bar(size);
            let summary = enqueue_jsonl(BufReader::new(file), mailbox, options, &progress).await;
            progress.finish_and_clear();
            summary.with_context(|| format!("JSONL file {}", path.display()))?
        };
        if self.json {
            print_line(&serde_json::to_string(&summary).context("cannot print the summary")?)?;
        } else {
            print_line(&summary.render(self.dry_run))?;
        }
        verdict(&summary)
    }
}

/// The exit status of a JSONL run: failures beat rejections.
fn verdict(summary: &EnqueueSummary) -> anyhow::Result<()> {
    if let Some(first) = summary.failed.first() {
        return Err(Exit::new(
            Exit::FAILURE,
            format!(
                "{} lines were not sent (first: line {}: {}); re-running the same input is safe, sent lines count as duplicates",
                summary.failed.len(),
                first.line,
                first.reason
            ),
        )
        .into());
    }
    if summary.rejected > 0 {
        return Err(Exit::new(
            Exit::PARTIAL,
            format!("{} of {} lines rejected", summary.rejected, summary.lines),
        )
        .into());
    }
    Ok(())
}

async fn read_narrowing(path: &Path) -> anyhow::Result<PolicyNarrowing> {
    let text = tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("cannot read narrowing {}", path.display()))?;
    Ok(PolicyNarrowing::parse(&text, &path.display().to_string())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_bad_values() {
        assert_eq!(parse_tag("team=search=x"), Ok(("team".into(), "search=x".into())));
        assert!(parse_tag("=x").unwrap_err().contains("`=x`"));
        assert!(parse_tag("team").unwrap_err().contains("`team` is not KEY=VALUE"));
    }
}
