//! The reply document: a job's answer, stored under its request id and sent
//! to its `reply_to` queue (docs/mailbox.md, "Reply document").

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The reply format version this host writes.
pub const REPLY_VERSION: u32 = 1;

/// How the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStatus {
    /// The agent returned an output.
    Succeeded,
    /// The job failed for good (or its deadline passed); see `error`.
    Failed,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyError {
    /// Stable class: a [`crate::job::JobError::kind`] or `deadline_exceeded`.
    pub kind: String,
    /// Human-readable explanation.
    pub message: String,
    /// Refinement of the kind: the limit hit (`fuel`, `memory`, ...) or the
    /// agent's own failure class (`invalid_input`, `budget_exceeded`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// What the answering attempt consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyUsage {
    /// Prompt tokens of this attempt's model calls.
    pub input_tokens: u64,
    /// Generated tokens of this attempt's model calls.
    pub output_tokens: u64,
    /// Model calls made by this attempt.
    pub model_calls: u32,
    /// Tool calls made by this attempt.
    pub tool_calls: u32,
    /// Fuel burned by this attempt's agent code.
    pub fuel: u64,
}

/// What the request spent across all its attempts, from the usage ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplySpent {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Spend in micro-US-dollars.
    pub micro_usd: u64,
    /// Model calls that got an answer.
    pub turns: u32,
}

/// When things happened (Unix milliseconds) and how long they took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTimings {
    /// When the message was first sent (mailbox clock).
    pub enqueued_at_ms: u64,
    /// When the answering attempt started (worker clock).
    pub started_at_ms: u64,
    /// When it finished (worker clock).
    pub finished_at_ms: u64,
    /// From first send to the answering attempt's start.
    pub queued_ms: u64,
    /// The answering attempt's run time, in microseconds.
    pub run_us: u64,
}

/// A reply document as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyDocument {
    /// Format version ([`REPLY_VERSION`]).
    pub version: u32,
    /// The request answered.
    pub request_id: String,
    /// The answering attempt's job id.
    pub job_id: String,
    /// The worker that answered.
    pub worker_id: String,
    /// How the job ended.
    pub status: ReplyStatus,
    /// The agent's output, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReplyError>,
    /// Which delivery answered (1 = the first).
    pub attempts: u32,
    /// What the answering attempt consumed.
    pub usage: ReplyUsage,
    /// What the request spent across attempts.
    pub spent: ReplySpent,
    /// Timestamps and durations.
    pub timings: ReplyTimings,
    /// The envelope's tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl ReplyDocument {
    /// Parse a stored reply.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Everything of a reply but the output, borrowed, for writing.
#[derive(Debug, Serialize)]
pub(crate) struct ReplyHead<'a> {
    pub(crate) version: u32,
    pub(crate) request_id: &'a str,
    pub(crate) job_id: &'a str,
    pub(crate) worker_id: &'a str,
    pub(crate) status: ReplyStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<ReplyError>,
    pub(crate) attempts: u32,
    pub(crate) usage: ReplyUsage,
    pub(crate) spent: ReplySpent,
    pub(crate) timings: ReplyTimings,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) tags: &'a BTreeMap<String, String>,
}

impl ReplyHead<'_> {
    /// The document as JSON. `output` is JSON text the runtime already
    /// validated, spliced in as is rather than parsed and written again.
    pub(crate) fn encode(&self, output: Option<&str>) -> Bytes {
        let mut json = Vec::with_capacity(320 + output.map_or(0, str::len));
        // Plain data with string keys: writing it into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut json, self);
        if let Some(output) = output
            && json.last() == Some(&b'}')
        {
            json.pop();
            json.extend_from_slice(b",\"output\":");
            json.extend_from_slice(output.as_bytes());
            json.push(b'}');
        }
        Bytes::from(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spliced_output_reads_back_as_json() {
        let tags = BTreeMap::from([("team".to_owned(), "search".to_owned())]);
        let head = ReplyHead {
            version: REPLY_VERSION,
            request_id: "r1",
            job_id: "w-1",
            worker_id: "w",
            status: ReplyStatus::Succeeded,
            error: None,
            attempts: 2,
            usage: ReplyUsage {
                fuel: 10,
                ..ReplyUsage::default()
            },
            spent: ReplySpent::default(),
            timings: ReplyTimings::default(),
            tags: &tags,
        };
        let document = ReplyDocument::parse(&head.encode(Some(" {\"ok\": [1, 2]}\n"))).unwrap();
        assert_eq!(document.output, Some(serde_json::json!({"ok": [1, 2]})));
        assert_eq!((document.attempts, document.usage.fuel), (2, 10));
        assert_eq!(document.tags, tags);

        let failed = ReplyHead {
            status: ReplyStatus::Failed,
            error: Some(ReplyError {
                kind: "trap".into(),
                message: "agent trapped".into(),
                cause: None,
            }),
            ..head
        };
        let document = ReplyDocument::parse(&failed.encode(None)).unwrap();
        assert_eq!(document.output, None);
        assert_eq!(document.error.map(|e| e.kind), Some("trap".to_owned()));
    }
}
