//! Mailboxes: where jobs wait, are leased to one worker at a time, and are
//! answered exactly once.
//!
//! Delivery is at-least-once: a claim is a lease with a deadline and a token,
//! and a lease that lapses (a crashed or stuck worker) returns the message to
//! the ready queue. Replies are stored under the request id and only the first
//! one is kept, so a job that runs twice still answers once. Only the holder
//! of the current lease can ack, nack, extend or dead-letter a message.
//!
//! [`Mailbox`] is the contract; [`MemoryMailbox`] is the embedded backend and
//! the reference model the other backends are tested against;
//! [`RedisMailbox`] keeps queues in Redis or Redis Cluster.

mod envelope;
mod memory;
mod redis;
mod sqs;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::LedgerError;

pub use self::redis::{DEFAULT_USAGE_TTL, RedisMailbox, RedisUsageLedger};
pub use envelope::{
    AgentRef, ENVELOPE_VERSION, Envelope, EnvelopeError, MAX_REQUEST_ID_BYTES, validate_queue_name, validate_request_id,
};
pub use memory::MemoryMailbox;
pub use sqs::{SqsMailbox, SqsOptions};

/// What [`Mailbox::send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The message is now queued.
    Enqueued,
    /// A message with this request id is already queued, running, dead or
    /// answered; nothing was added.
    Duplicate,
}

/// The right to finish one delivery. Opaque to callers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The backend's id of the message (the request id, where the backend keys by it).
    pub message_id: String,
    /// Changes on every claim, so a previous holder's lease is refused.
    pub token: String,
}

/// One claimed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The lease to finish it with.
    pub lease: Lease,
    /// The message as sent: normally an [`Envelope`], but producers can put
    /// anything on a queue, so it is parsed by the worker, not the mailbox.
    pub payload: Bytes,
    /// Which delivery this is, starting at 1; counts lapsed leases too.
    pub attempt: u32,
    /// When the message was first sent, in Unix milliseconds.
    pub enqueued_at_ms: u64,
    /// When the lease lapses unless extended, in Unix milliseconds (backend clock).
    pub lease_expires_at_ms: u64,
}

/// A job's answer, stored under its request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request answered.
    pub request_id: String,
    /// The reply document (JSON, docs/mailbox.md).
    pub body: Bytes,
}

/// What [`Mailbox::ack`] did with the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// The reply is stored and the message removed.
    Replied,
    /// An earlier run already answered this request; its reply stands and
    /// this one was dropped. The message was removed.
    AlreadyReplied,
    /// The reply could not be kept (larger than the backend's replies queue
    /// takes, say), so the message went to the dead-letter queue with a
    /// reason of this kind instead of being removed: the job does not run
    /// again, and its message is not lost.
    DeadLettered {
        /// The dead-letter reason's kind.
        kind: &'static str,
    },
}

/// Why a message went to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterReason {
    /// Stable machine-readable class, e.g. `malformed_envelope`, `max_attempts`.
    pub kind: String,
    /// Human-readable explanation.
    pub message: String,
}

/// A message in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The backend's id of the message.
    pub message_id: String,
    /// The message as sent.
    pub payload: Bytes,
    /// Why it is here.
    pub reason: DeadLetterReason,
    /// Deliveries made before it was dead-lettered.
    pub attempts: u32,
    /// When it was first sent, in Unix milliseconds.
    pub enqueued_at_ms: u64,
    /// When it was dead-lettered, in Unix milliseconds.
    pub dead_at_ms: u64,
}

/// How many messages are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Depth {
    /// Waiting to be claimed.
    pub ready: u64,
    /// Claimed, lease not yet finished (includes lapsed leases not yet reaped).
    pub in_flight: u64,
    /// Waiting for a retry delay to pass.
    pub delayed: u64,
    /// In the dead-letter queue.
    pub dead: u64,
}

impl Depth {
    /// Work not yet finished: what autoscaling should follow (ready + in flight + delayed).
    pub fn backlog(&self) -> u64 {
        self.ready + self.in_flight + self.delayed
    }
}

/// Which messages [`Mailbox::purge`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeScope {
    /// Ready and delayed messages (in-flight ones are left to finish).
    Pending,
    /// The dead-letter queue.
    Dead,
}

/// Which dead letters [`Mailbox::requeue_dead`] moves back to the ready queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadSelection {
    /// Every dead letter.
    All,
    /// These message ids (ids not in the dead-letter queue are skipped).
    Ids(Vec<String>),
}

/// Why a mailbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The lease is no longer held: it lapsed and was reaped or reclaimed, or
    /// the message was finished by someone else.
    #[error("lease on message `{message_id}` is no longer held")]
    LeaseLost {
        /// The message.
        message_id: String,
    },
    /// The backend cannot be reached; the operation may be retried.
    #[error("mailbox unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with something unexpected.
    #[error("mailbox backend error: {0}")]
    Backend(String),
    /// A caller-supplied value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// This backend cannot do that at all (e.g. SQS stores no replies).
    #[error("{0}")]
    Unsupported(String),
    /// Some dead letters were requeued, but the queue refused others, which
    /// stay dead ([`Mailbox::requeue_dead`]).
    #[error(
        "requeued {moved} dead letters, but the queue refused {refused}, which stay dead (the first: {first}); \
         raise the queue's message size limit and requeue them again"
    )]
    RequeueRefused {
        /// Dead letters moved back to the queue.
        moved: u64,
        /// Dead letters the queue refused.
        refused: u64,
        /// The first refused one's id, and why it was refused.
        first: String,
    },
    /// The mailbox failed partway through [`Mailbox::requeue_dead`], after
    /// it had moved some dead letters back (they stay moved) or seen some
    /// refused. Requeuing again takes up the rest.
    #[error(
        "requeued {moved} dead letters{}, then the mailbox failed: {source}",
        refused_note(*.refused)
    )]
    RequeueInterrupted {
        /// Dead letters moved back to the queue before the failure.
        moved: u64,
        /// Dead letters the queue refused before the failure (they stay dead).
        refused: u64,
        /// The failure.
        #[source]
        source: Box<MailboxError>,
    },
}

/// How [`MailboxError::RequeueInterrupted`] mentions refused letters: not at
/// all when there were none.
fn refused_note(refused: u64) -> String {
    if refused == 0 {
        String::new()
    } else {
        format!(" (the queue refused {refused}, which stay dead)")
    }
}

impl MailboxError {
    /// This error, met by [`Mailbox::requeue_dead`] after it had moved
    /// `moved` dead letters and seen `refused` refused: with those counts,
    /// unless there are none to report.
    pub(crate) fn after_requeuing(self, moved: u64, refused: u64) -> Self {
        if moved == 0 && refused == 0 {
            return self;
        }
        Self::RequeueInterrupted {
            moved,
            refused,
            source: Box::new(self),
        }
    }
}

/// A job queue with leases, retries, a dead-letter queue and stored replies.
#[async_trait]
pub trait Mailbox: Send + Sync + fmt::Debug {
    /// The queue's name, for logs and metrics.
    fn queue(&self) -> &str;

    /// Queue `queue` of the same backend on this handle's connection, for
    /// sending replies to it; none where queues cannot share one (each
    /// in-process queue is its own) or the name is not valid. A connection
    /// per reply queue would run the backend out of connections when
    /// callers each name their own queue.
    fn sibling(&self, _queue: &str) -> Option<std::sync::Arc<dyn Mailbox>> {
        None
    }

    /// Queue a message, unless one with this request id is already queued,
    /// in flight, delayed, dead or answered (replies are remembered for the
    /// backend's reply TTL).
    async fn send(&self, request_id: &str, payload: Bytes) -> Result<Sent, MailboxError>;

    /// Queue several `(request id, payload)` messages; one result per item,
    /// in order, as [`Mailbox::send`] would answer them one after another.
    /// Backends override this to batch the round trips.
    async fn send_batch(&self, messages: &[(String, Bytes)]) -> Result<Vec<Result<Sent, MailboxError>>, MailboxError> {
        let mut results = Vec::with_capacity(messages.len());
        for (request_id, payload) in messages {
            results.push(self.send(request_id, payload.clone()).await);
        }
        Ok(results)
    }

    /// Claim up to `max` ready messages, each leased for `lease`. When none is
    /// ready, wait up to `wait` for one; an empty batch means none came.
    async fn claim(&self, max: usize, lease: Duration, wait: Duration) -> Result<Vec<Delivery>, MailboxError>;

    /// Push the lease's deadline to `lease` from now.
    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<(), MailboxError>;

    /// Finish a delivery: store the reply (unless one is already stored) and
    /// remove the message.
    async fn ack(&self, lease: &Lease, reply: &Reply) -> Result<Acked, MailboxError>;

    /// Finish several deliveries; one result per item, in order. Backends
    /// override this to batch the round trips.
    async fn ack_batch(&self, acks: &[(Lease, Reply)]) -> Result<Vec<Result<Acked, MailboxError>>, MailboxError> {
        let mut results = Vec::with_capacity(acks.len());
        for (lease, reply) in acks {
            results.push(self.ack(lease, reply).await);
        }
        Ok(results)
    }

    /// Give a delivery back, to be claimable again after `delay`.
    async fn nack(&self, lease: &Lease, delay: Duration) -> Result<(), MailboxError>;

    /// Move a delivery to the dead-letter queue.
    async fn dead_letter(&self, lease: &Lease, reason: &DeadLetterReason) -> Result<(), MailboxError>;

    /// Return lapsed leases to the ready queue; how many were returned. Any
    /// worker may call it; it is atomic, so no leader is needed.
    async fn reap(&self) -> Result<u64, MailboxError>;

    /// How many messages are in each state.
    async fn depth(&self) -> Result<Depth, MailboxError>;

    /// Remove messages; how many were removed.
    async fn purge(&self, scope: PurgeScope) -> Result<u64, MailboxError>;

    /// Up to `limit` dead letters, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, MailboxError>;

    /// Move dead letters back to the ready queue with a fresh attempt count;
    /// how many were moved. A dead letter the queue refuses (on SQS, one
    /// larger than the queue now takes) stays dead: the others are still
    /// moved, and the call then fails with [`MailboxError::RequeueRefused`],
    /// so that one oversized letter does not hold back the rest. A failure
    /// after some were moved or refused is a
    /// [`MailboxError::RequeueInterrupted`] that counts them.
    async fn requeue_dead(&self, selection: &DeadSelection) -> Result<u64, MailboxError>;

    /// The stored reply to a request, if any.
    async fn reply(&self, request_id: &str) -> Result<Option<Bytes>, MailboxError>;
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// URL schemes served by [`RedisMailbox`].
const REDIS_SCHEMES: [&str; 4] = ["redis", "rediss", "redis+cluster", "rediss+cluster"];

/// The scheme of a mailbox URL (all of it when it has no `://`).
fn scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(scheme, _)| scheme)
}

/// The usage ledger for workers of the mailbox at `url`. On Redis it is
/// [`RedisUsageLedger`] on the same server, so every worker reads the same
/// totals and a job redelivered to another worker continues its budget;
/// otherwise an in-process [`MemoryUsageLedger`](crate::model::MemoryUsageLedger)
/// (with `sqs://` a job redelivered to another worker starts a fresh budget).
pub async fn open_usage_ledger(url: &str) -> Result<std::sync::Arc<dyn crate::model::UsageLedger>, LedgerError> {
    if REDIS_SCHEMES.contains(&scheme(url)) {
        Ok(std::sync::Arc::new(RedisUsageLedger::open(url).await?))
    } else {
        Ok(std::sync::Arc::new(crate::model::MemoryUsageLedger::default()))
    }
}

/// Open queue `queue` of the mailbox at `url`. Schemes: `memory://` (this
/// process only); `redis://`, `rediss://` (TLS), `redis+cluster://host:port,host:port`
/// and `rediss+cluster://` (see [`RedisMailbox::open`]); `sqs://`
/// ([`SqsOptions::from_url`]; credentials from the AWS SDK's default chain).
pub async fn open(url: &str, queue: &str) -> Result<std::sync::Arc<dyn Mailbox>, MailboxError> {
    validate_queue_name(queue).map_err(MailboxError::Invalid)?;
    match scheme(url) {
        "memory" => Ok(std::sync::Arc::new(MemoryMailbox::new(queue))),
        "sqs" => Ok(std::sync::Arc::new(
            SqsMailbox::open(queue, &SqsOptions::from_url(url)?).await?,
        )),
        scheme if REDIS_SCHEMES.contains(&scheme) => Ok(std::sync::Arc::new(RedisMailbox::open(url, queue).await?)),
        other => Err(MailboxError::Invalid(format!(
            "unsupported mailbox URL scheme `{other}` in `{}` (expected memory://, sqs://, redis://, rediss://, \
             redis+cluster:// or rediss+cluster://)",
            self::redis::redact(url)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::MailboxError;

    #[test]
    fn a_requeue_failing_partway_counts_what_it_did_only_when_it_did_something() {
        let unavailable = || MailboxError::Unavailable("connection reset".into());
        assert!(matches!(
            unavailable().after_requeuing(0, 0),
            MailboxError::Unavailable(_)
        ));
        assert_eq!(
            unavailable().after_requeuing(10, 0).to_string(),
            "requeued 10 dead letters, then the mailbox failed: mailbox unavailable: connection reset"
        );
        assert_eq!(
            unavailable().after_requeuing(0, 2).to_string(),
            "requeued 0 dead letters (the queue refused 2, which stay dead), then the mailbox failed: \
             mailbox unavailable: connection reset"
        );
    }
}
