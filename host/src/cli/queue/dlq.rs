//! `wink-host dlq list | requeue | purge`: inspect and recover dead letters.

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use serde::Serialize;

use super::{EXIT_CODES_HELP, MailboxArgs, PurgeArgs, print_line, time::format_rfc3339_ms};
use crate::cli::exit::Exit;
use crate::mailbox::{DeadLetter, DeadLetterReason, DeadSelection, Mailbox, MailboxError, PurgeScope};

/// Characters of a payload shown by `dlq list`.
pub const PAYLOAD_PREVIEW_CHARS: usize = 120;

/// Arguments of `wink-host dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    /// What to do with the dead-letter queue.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first: id, attempts, when it died, why, and
    /// the start of its payload.
    #[command(after_help = EXIT_CODES_HELP)]
    List {
        /// The queue.
        #[command(flatten)]
        mailbox: MailboxArgs,
        /// Most dead letters to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print a JSON array (with timestamps in RFC 3339 and Unix milliseconds).
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back to the ready queue with a fresh attempt count
    /// (exit 3 when the queue refuses some, which stay dead; exit 4 when some
    /// given ids are not dead letters; exit 1, after printing how many moved,
    /// when the mailbox fails partway: run it again for the rest).
    #[command(after_help = EXIT_CODES_HELP, group(ArgGroup::new("which").required(true).args(["all", "ids"])))]
    Requeue {
        /// The queue.
        #[command(flatten)]
        mailbox: MailboxArgs,
        /// Requeue every dead letter.
        #[arg(long)]
        all: bool,
        /// The message ids to requeue (as `dlq list` shows them).
        #[arg(value_name = "ID")]
        ids: Vec<String>,
    },
    /// Delete every dead letter. Asks nothing, so it needs `--yes`.
    #[command(after_help = EXIT_CODES_HELP)]
    Purge(PurgeArgs),
}

/// One dead letter as `dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterView {
    /// The backend's message id (what `dlq requeue` takes).
    pub id: String,
    /// Why it died.
    pub reason: DeadLetterReason,
    /// Deliveries made before it died.
    pub attempts: u32,
    /// When it was first sent (RFC 3339, UTC).
    pub enqueued_at: String,
    /// When it was first sent (Unix milliseconds).
    pub enqueued_at_ms: u64,
    /// When it died (RFC 3339, UTC).
    pub dead_at: String,
    /// When it died (Unix milliseconds).
    pub dead_at_ms: u64,
    /// Size of the whole payload.
    pub payload_bytes: usize,
    /// The payload's first [`PAYLOAD_PREVIEW_CHARS`] characters, control
    /// characters escaped, `…` appended when cut.
    pub payload_preview: String,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(dead: &DeadLetter) -> Self {
        Self {
            id: dead.message_id.clone(),
            reason: dead.reason.clone(),
            attempts: dead.attempts,
            enqueued_at: format_rfc3339_ms(dead.enqueued_at_ms),
            enqueued_at_ms: dead.enqueued_at_ms,
            dead_at: format_rfc3339_ms(dead.dead_at_ms),
            dead_at_ms: dead.dead_at_ms,
            payload_bytes: dead.payload.len(),
            payload_preview: preview(&dead.payload),
        }
    }
}

/// Up to `limit` dead letters of `mailbox`, oldest first.
pub async fn dead_letter_views(mailbox: &dyn Mailbox, limit: usize) -> Result<Vec<DeadLetterView>, MailboxError> {
    Ok(mailbox
        .dead_letters(limit)
        .await?
        .iter()
        .map(DeadLetterView::from)
        .collect())
}

/// Dead letters as a JSON array, or as text: one line per dead letter,
/// tab-separated (id, attempts, dead at, kind: message, payload preview).
pub fn render_dead_letters(views: &[DeadLetterView], json: bool) -> Result<String, serde_json::Error> {
    if json {
        return serde_json::to_string(views);
    }
    let mut text = String::from("ID\tATTEMPTS\tDEAD_AT\tREASON\tPAYLOAD");
    for view in views {
        text.push_str(&format!(
            "\n{}\t{}\t{}\t{}: {}\t{}",
            one_line(&view.id),
            view.attempts,
            view.dead_at,
            one_line(&view.reason.kind),
            one_line(&view.reason.message),
            view.payload_preview
        ));
    }
    Ok(text)
}

/// The start of a payload, printable on one line.
fn preview(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    let mut chars = text.chars();
    let shown: String = chars.by_ref().take(PAYLOAD_PREVIEW_CHARS).collect();
    let mut preview = one_line(&shown);
    if chars.next().is_some() {
        preview.push('…');
    }
    preview
}

/// `text` with control characters (newlines, tabs, escapes) escaped, so one
/// record stays one line and cannot drive the terminal.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl DlqArgs {
    /// Run the subcommand.
    pub async fn execute(self) -> anyhow::Result<()> {
        match self.command {
            DlqCommand::List { mailbox, limit, json } => {
                let mailbox = mailbox.open().await?;
                let views = dead_letter_views(&*mailbox, limit)
                    .await
                    .context("cannot list dead letters")?;
                print_line(&render_dead_letters(&views, json).context("cannot print dead letters")?)?;
                if !json && views.len() == limit {
                    let total = mailbox.depth().await.map(|depth| depth.dead).unwrap_or(0);
                    if total > limit as u64 {
                        eprintln!("showing the oldest {limit} of {total} dead letters (--limit N for more)");
                    }
                }
                Ok(())
            }
            DlqCommand::Requeue { mailbox, all, mut ids } => {
                ids.sort();
                ids.dedup();
                let mailbox = mailbox.open().await?;
                let selection = if all {
                    DeadSelection::All
                } else {
                    DeadSelection::Ids(ids.clone())
                };
                let (moved, partial) = match mailbox.requeue_dead(&selection).await {
                    Ok(moved) => (moved, None),
                    Err(
                        err @ (MailboxError::RequeueRefused { moved, .. }
                        | MailboxError::RequeueInterrupted { moved, .. }),
                    ) => (moved, Some(err)),
                    Err(err) => return Err(anyhow::Error::new(err).context("cannot requeue dead letters")),
                };
                print_line(&format!("requeued {moved} dead letters to queue {}", mailbox.queue()))?;
                if let Some(err) = partial {
                    // Refused letters are done with until the limit is
                    // raised; an interrupted requeue is a failure to retry.
                    let code = match err {
                        MailboxError::RequeueRefused { .. } => Exit::PARTIAL,
                        _ => Exit::FAILURE,
                    };
                    return Err(Exit::new(code, err.to_string()).into());
                }
                let asked = ids.len() as u64;
                if !all && moved < asked {
                    return Err(Exit::new(
                        Exit::NOT_FOUND,
                        format!(
                            "{} of the {asked} given ids are not in the dead-letter queue",
                            asked - moved
                        ),
                    )
                    .into());
                }
                Ok(())
            }
            DlqCommand::Purge(purge) => {
                purge
                    .run(PurgeScope::Dead, "dlq purge deletes every dead letter", "dead letters")
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_one_line_and_marked_when_cut() {
        assert_eq!(preview(b"{\"a\":\n1}"), "{\"a\":\\n1}");
        let long = "x".repeat(PAYLOAD_PREVIEW_CHARS + 1);
        let shown = preview(long.as_bytes());
        assert_eq!(shown.chars().count(), PAYLOAD_PREVIEW_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(preview(b"\xff\x1b[31m"), "\u{fffd}\\u{1b}[31m");
    }
}
