//! The queue commands: `wink-host enqueue`, `wink-host queue ...` and
//! `wink-host dlq ...` (docs/mailbox.md, "Queue CLI").
//!
//! The library functions here ([`enqueue_jsonl`], [`dead_letter_views`], ...)
//! do the work; the `*Args` types only parse flags and print.

mod dlq;
mod enqueue;
mod time;

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::cli::exit::Exit;
use crate::mailbox::{self, Depth, Mailbox, PurgeScope, validate_request_id};

pub use dlq::{DeadLetterView, DlqArgs, DlqCommand, PAYLOAD_PREVIEW_CHARS, dead_letter_views, render_dead_letters};
pub use enqueue::{
    EnqueueArgs, EnqueueSummary, JsonlError, JsonlOptions, MAX_LINE_BYTES, MAX_LISTED_REJECTIONS, Rejection,
    enqueue_jsonl, send_with_retry,
};
pub use time::{format_rfc3339_ms, parse_deadline};

/// Exit statuses, as documented in every queue command's `--help`.
const EXIT_CODES_HELP: &str = "Exit status: 0 success, 1 failure (bad value, unreachable mailbox, \
                               a requeue cut off partway), \
                               2 usage error, 3 partly done (some JSONL lines rejected, some dead \
                               letters refused by the queue), 4 not found.";

/// Where the queue is: shared by every queue command.
#[derive(Debug, Clone, Args)]
pub struct MailboxArgs {
    /// Mailbox URL: `redis://...`, `sqs://[?region=R&endpoint=URL&...]`
    /// (docs/mailbox.md), or `memory://` (inside this one process: only for
    /// trying flags).
    #[arg(long, env = "WINK_MAILBOX", value_name = "URL")]
    pub mailbox: Option<String>,

    /// Queue name: 1-128 letters, digits, `-`, `_`, `.`, `:`.
    #[arg(long, env = "WINK_QUEUE", value_name = "NAME")]
    pub queue: Option<String>,
}

impl MailboxArgs {
    /// Connect to the queue. Passwords in the URL never reach an error message.
    pub async fn open(&self) -> anyhow::Result<Arc<dyn Mailbox>> {
        let url = self
            .mailbox
            .as_deref()
            .ok_or_else(|| Exit::new(Exit::USAGE, "no mailbox given: pass --mailbox URL or set WINK_MAILBOX"))?;
        let queue = self
            .queue
            .as_deref()
            .ok_or_else(|| Exit::new(Exit::USAGE, "no queue given: pass --queue NAME or set WINK_QUEUE"))?;
        mailbox::open(url, queue).await.map_err(|err| {
            let reason = redact_url_password(url, &err.to_string());
            anyhow::anyhow!(
                "cannot open queue `{queue}` at {}: {reason}",
                redact_url_password(url, url)
            )
        })
    }
}

/// `text` with the password of `url` (if it has one) replaced by `[REDACTED]`.
pub fn redact_url_password(url: &str, text: &str) -> String {
    let password = url::Url::parse(url)
        .ok()
        .and_then(|parsed| parsed.password().map(str::to_owned));
    match password {
        Some(password) if !password.is_empty() => text.replace(&password, crate::telemetry::REDACTED),
        _ => text.to_owned(),
    }
}

/// Arguments of `wink-host queue`.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// What to do with the queue.
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// The `queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Print how many messages are ready, in flight, delayed and dead, and the
    /// backlog (ready + in flight + delayed) that autoscaling follows.
    #[command(after_help = EXIT_CODES_HELP)]
    Stats {
        /// The queue.
        #[command(flatten)]
        mailbox: MailboxArgs,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the stored reply to a request (exit 4 when there is none yet).
    #[command(after_help = EXIT_CODES_HELP)]
    Reply {
        /// The request id the job was enqueued with.
        request_id: String,
        /// The queue.
        #[command(flatten)]
        mailbox: MailboxArgs,
    },
    /// Remove every ready and delayed message; in-flight jobs are left to
    /// finish and dead letters stay. Asks nothing, so it needs `--yes`.
    #[command(after_help = EXIT_CODES_HELP)]
    Purge(PurgeArgs),
}

/// `wink-host queue stats --json`: the depth, labelled with its queue.
#[derive(Debug, Serialize)]
struct StatsView<'a> {
    queue: &'a str,
    #[serde(flatten)]
    depth: Depth,
    backlog: u64,
}

impl QueueArgs {
    /// Run the subcommand.
    pub async fn execute(self) -> anyhow::Result<()> {
        match self.command {
            QueueCommand::Stats { mailbox, json } => {
                let mailbox = mailbox.open().await?;
                let depth = mailbox.depth().await.context("cannot read the queue depth")?;
                let text = if json {
                    let view = StatsView {
                        queue: mailbox.queue(),
                        depth,
                        backlog: depth.backlog(),
                    };
                    serde_json::to_string(&view).context("cannot print the depth")?
                } else {
                    render_depth(&depth)
                };
                print_line(&text)
            }
            QueueCommand::Reply { request_id, mailbox } => {
                validate_request_id(&request_id)?;
                let mailbox = mailbox.open().await?;
                let reply = mailbox.reply(&request_id).await.context("cannot read the reply")?;
                let Some(body) = reply else {
                    return Err(Exit::new(
                        Exit::NOT_FOUND,
                        format!(
                            "no reply stored for request id `{request_id}` (not answered yet, unknown, or expired)"
                        ),
                    )
                    .into());
                };
                print_line(&String::from_utf8_lossy(&body))
            }
            QueueCommand::Purge(purge) => {
                purge
                    .run(
                        PurgeScope::Pending,
                        "queue purge removes every ready and delayed message",
                        "pending messages",
                    )
                    .await
            }
        }
    }
}

/// The depth as an aligned table, one state per line.
fn render_depth(depth: &Depth) -> String {
    [
        ("ready", depth.ready),
        ("in_flight", depth.in_flight),
        ("delayed", depth.delayed),
        ("dead", depth.dead),
        ("backlog", depth.backlog()),
    ]
    .iter()
    .map(|(state, count)| format!("{state:<10} {count}"))
    .collect::<Vec<_>>()
    .join("\n")
}

/// A purge: the queue, and the confirmation it needs (`queue purge`, `dlq purge`).
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// The queue.
    #[command(flatten)]
    pub mailbox: MailboxArgs,
    /// Confirm the purge.
    #[arg(long)]
    pub yes: bool,
}

impl PurgeArgs {
    /// Purge `scope` once confirmed; `loss` says what the purge deletes and
    /// `purged` names what was removed in the summary line.
    async fn run(self, scope: PurgeScope, loss: &str, purged: &str) -> anyhow::Result<()> {
        confirm(self.yes, loss)?;
        let mailbox = self.mailbox.open().await?;
        let removed = mailbox.purge(scope).await.context("cannot purge")?;
        print_line(&format!("purged {removed} {purged} from queue {}", mailbox.queue()))
    }
}

/// Refuse a destructive command unless `--yes` was given.
fn confirm(yes: bool, what: &str) -> anyhow::Result<()> {
    if yes {
        Ok(())
    } else {
        Err(Exit::new(Exit::USAGE, format!("{what}; pass --yes to confirm")).into())
    }
}

/// Print `text` and a newline on stdout.
fn print_line(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted() {
        let url = "redis://:hunter22@127.0.0.1:6379/0";
        assert_eq!(redact_url_password(url, url), "redis://:[REDACTED]@127.0.0.1:6379/0");
        assert_eq!(redact_url_password("memory://", "memory://"), "memory://");
    }

    #[test]
    fn depth_table_lists_every_state_and_the_backlog() {
        let depth = Depth {
            ready: 3,
            in_flight: 2,
            delayed: 1,
            dead: 7,
        };
        let table = render_depth(&depth);
        assert!(table.contains("ready      3"), "{table}");
        assert!(table.contains("dead       7"), "{table}");
        assert!(table.ends_with("backlog    6"), "{table}");
    }
}
