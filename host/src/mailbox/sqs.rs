//! The SQS mailbox: a queue in Amazon SQS (or anything speaking its API)
//! plus a dead-letter queue beside it.
//!
//! How the contract maps onto SQS (docs/mailbox.md, "SQS backend"):
//! - a claim is a ReceiveMessage whose visibility timeout is the lease (whole
//!   seconds, at most 12 hours); the receipt handle is the lease token;
//!   `extend` and `nack` are ChangeMessageVisibility; a lapsed lease makes the
//!   message visible again by itself, so [`Mailbox::reap`] has nothing to do;
//! - attempts are SQS's ApproximateReceiveCount;
//! - a dead letter is a copy sent to the dead-letter queue with the reason in
//!   message attributes, then the original is deleted; a redrive policy on
//!   the queue may also move messages there by itself;
//! - stale leases are refused by this handle's own lease table
//!   ([`leases`]): SQS honours old receipt handles, so a stale holder using
//!   a different mailbox handle (another process) is refused only where SQS
//!   refuses it (message deleted, or visible and not yet received again);
//! - `send` is idempotent only on FIFO queues (MessageDeduplicationId =
//!   request id, a 5-minute window); a standard queue accepts every send;
//! - SQS stores no replies: `ack` sends the reply to the `replies` queue when
//!   one is configured, and [`Mailbox::reply`] is unsupported;
//! - depth comes from GetQueueAttributes and is approximate.

mod leases;
mod options;
mod size;

use std::collections::{HashMap, HashSet, VecDeque};
use std::error::Error as StdError;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message, MessageAttributeValue,
    MessageSystemAttributeName, QueueAttributeName,
};
use aws_smithy_types::error::display::DisplayErrorContext;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use self::leases::{Known, LocalLeases, Received, lost};
pub use self::options::SqsOptions;
use self::options::{checked_queue_name, default_dlq_name, is_fifo, queue_name_from_arn};
use self::size::{DEAD_LETTER_ROOM, message_size, text_room};
use super::{
    Acked, DeadLetter, DeadLetterReason, DeadSelection, Delivery, Depth, Lease, Mailbox, MailboxError, PurgeScope,
    Reply, Sent, unix_ms, validate_request_id,
};

/// The longest visibility timeout (lease or retry delay) SQS accepts, in seconds.
const MAX_VISIBILITY_SECS: u64 = 12 * 60 * 60;
/// The longest long-poll SQS accepts, in seconds.
const MAX_WAIT_SECS: u64 = 20;
/// The most messages one SQS call receives, deletes or changes.
const SQS_BATCH: usize = 10;
/// How long listing, requeueing and purging hold the messages they receive.
const HOLD_SECS: i32 = 60;
/// How long listing, requeueing and purging long-poll before deciding a queue
/// is empty (a zero-second poll of a standard queue samples only some servers).
const SCAN_WAIT_SECS: i32 = 1;
/// Purging stops after the queue's approximate size plus this many, so
/// producers that outpace it cannot keep it running forever.
const DRAIN_SLACK: u64 = 1000;
/// `ack` confirms a lease this handle did not claim by setting its
/// visibility to this many seconds: time enough for the delete that follows.
const CONFIRM_SECS: i32 = 30;
/// SQS FIFO queues drop a send whose deduplication id was used this recently.
const FIFO_DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Sends older than the window minus this are no longer reported as duplicates,
/// since SQS measures the window from when it accepted the first send.
const DEDUP_MARGIN: Duration = Duration::from_secs(10);
/// The dead-letter reason kind of a job whose reply its replies queue
/// cannot take.
const REPLY_TOO_LARGE: &str = "reply_too_large";
/// Longest dead-letter reason message kept, in bytes.
const MAX_REASON_BYTES: usize = 4096;

/// Message attributes this backend writes (SQS allows ten per message).
mod attr {
    pub const REQUEST_ID: &str = "wink-request-id";
    pub const ENQUEUED_AT: &str = "wink-enqueued-at";
    /// `base64` or `empty` when the payload is not sendable as SQS text.
    pub const BODY: &str = "wink-body";
    pub const MESSAGE_ID: &str = "wink-message-id";
    pub const DEAD_KIND: &str = "wink-dead-kind";
    pub const DEAD_MESSAGE: &str = "wink-dead-message";
    pub const DEAD_AT: &str = "wink-dead-at";
    pub const ATTEMPTS: &str = "wink-attempts";
    /// Carried from the queue to the dead-letter queue and back.
    pub const KEPT: [&str; 3] = [REQUEST_ID, ENQUEUED_AT, BODY];
}

/// A [`Mailbox`] on an SQS queue and its dead-letter queue.
pub struct SqsMailbox {
    queue: String,
    client: Client,
    queue_url: String,
    dlq_url: String,
    /// The queue's `MaximumMessageSize` at open, when SQS reported it.
    max_message_bytes: Option<usize>,
    /// The dead-letter queue's (at least the queue's), or the queue's when
    /// the dead-letter queue's could not be read.
    dlq_max_message_bytes: Option<usize>,
    replies: Option<RepliesQueue>,
    fifo: bool,
    /// The redrive policy's maxReceiveCount: how many deliveries a message
    /// moved by SQS itself had.
    redrive_receives: Option<u32>,
    leases: LocalLeases,
    /// FIFO only: the request ids this handle sent inside SQS's deduplication window.
    recent_sends: Mutex<RecentSends>,
}

/// The queue replies are forwarded to.
#[derive(Debug)]
struct RepliesQueue {
    url: String,
    /// Its `MaximumMessageSize` at open, when SQS reported it.
    max: Option<usize>,
}

impl fmt::Debug for SqsMailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsMailbox")
            .field("queue_url", &self.queue_url)
            .field("dlq_url", &self.dlq_url)
            .field("replies", &self.replies)
            .finish_non_exhaustive()
    }
}

impl SqsMailbox {
    /// Open queue `queue` with credentials and region from the AWS SDK's
    /// default chain (environment, profile, web identity, instance metadata).
    pub async fn open(queue: &str, options: &SqsOptions) -> Result<Self, MailboxError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        Self::connect(&loader.load().await, queue, options).await
    }

    /// Open queue `queue` with an already loaded SDK configuration.
    pub async fn connect(sdk_config: &SdkConfig, queue: &str, options: &SqsOptions) -> Result<Self, MailboxError> {
        let queue = checked_queue_name(queue).map_err(MailboxError::Invalid)?;
        let mut config = aws_sdk_sqs::config::Builder::from(sdk_config);
        if let Some(url) = &options.endpoint_url {
            config = config.endpoint_url(url);
        }
        if let Some(region) = &options.region {
            config = config.region(Region::new(region.clone()));
        }
        let admin = Admin {
            client: Client::from_conf(config.build()),
            account: options.account.clone(),
        };
        let fifo = is_fifo(queue);
        let (queue_url, dlq_url, redrive_receives) = admin.main_and_dead(queue, options).await?;
        let (max_message_bytes, dlq_max_message_bytes) = admin.max_message_sizes(&queue_url, &dlq_url).await?;
        let replies = match &options.replies {
            Some(name) => {
                let url = admin.queue_url(name, options.create, None).await?;
                let max = admin
                    .max_message_size_if_readable(&url, "leaving the size of replies to SQS")
                    .await;
                Some(RepliesQueue { url, max })
            }
            None => None,
        };
        Ok(Self {
            queue: queue.to_owned(),
            client: admin.client,
            queue_url,
            dlq_url,
            max_message_bytes,
            dlq_max_message_bytes,
            replies,
            fifo,
            redrive_receives,
            leases: LocalLeases::default(),
            recent_sends: Mutex::new(RecentSends::default()),
        })
    }

    /// Refuse a message that would leave no room for a dead-letter copy's
    /// attributes under the queue's `MaximumMessageSize`: SQS would take it,
    /// but not its dead letter.
    fn check_dead_letter_room(
        &self,
        request_id: &str,
        body: &str,
        attributes: &HashMap<String, MessageAttributeValue>,
    ) -> Result<(), MailboxError> {
        let Some(max) = self.max_message_bytes else {
            return Ok(());
        };
        let size = message_size(body, attributes);
        if size + DEAD_LETTER_ROOM > max {
            return Err(MailboxError::Invalid(format!(
                "request `{request_id}` is {size} bytes as an SQS message; queue `{}` takes {} \
                 (its MaximumMessageSize, {max}, less {DEAD_LETTER_ROOM} kept for a dead letter's attributes)",
                self.queue,
                max.saturating_sub(DEAD_LETTER_ROOM)
            )));
        }
        Ok(())
    }

    fn sends(&self) -> MutexGuard<'_, RecentSends> {
        self.recent_sends.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The URL of the queue jobs are claimed from.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The URL of the dead-letter queue.
    pub fn dlq_url(&self) -> &str {
        &self.dlq_url
    }

    async fn receive(
        &self,
        url: &str,
        max: usize,
        visibility_secs: i32,
        wait_secs: i32,
    ) -> Result<Vec<Message>, MailboxError> {
        let output = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, SQS_BATCH) as i32)
            .visibility_timeout(visibility_secs)
            .wait_time_seconds(wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|err| sdk_error("ReceiveMessage", err))?;
        Ok(output.messages.unwrap_or_default())
    }

    /// One message received by a claim that started at `started`.
    fn delivery(&self, message: Message, started: Instant, started_ms: u64, lease_secs: u64) -> Option<Delivery> {
        let (Some(message_id), Some(token)) = (message.message_id.clone(), message.receipt_handle.clone()) else {
            tracing::warn!(queue = %self.queue, "SQS returned a message without id or receipt handle; skipped");
            return None;
        };
        let attempt = system_attr(&message, MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|count| count.parse().ok())
            .unwrap_or(1);
        let enqueued_at_ms = enqueued_at_ms(&message);
        let body = message.body.unwrap_or_default();
        let attributes = message.message_attributes.unwrap_or_default();
        let lease = Lease { message_id, token };
        let delivery = Delivery {
            payload: decode_body(&body, attr_str(&attributes, attr::BODY)),
            lease: lease.clone(),
            attempt,
            enqueued_at_ms,
            lease_expires_at_ms: started_ms.saturating_add(lease_secs * 1000),
        };
        self.leases.record(
            &lease,
            started + Duration::from_secs(lease_secs),
            Received {
                body,
                attributes,
                attempt,
                enqueued_at_ms,
                dead_letter_sent: false,
            },
        );
        Some(delivery)
    }

    /// Set the lease's message to become visible in `secs`, if the lease is still good.
    async fn set_visibility(&self, lease: &Lease, secs: i32) -> Result<(), MailboxError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(&lease.token)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(|err| self.lease_error(lease, "ChangeMessageVisibility", err))?;
        Ok(())
    }

    /// Fail unless `lease` is still held; a lease this handle did not claim is
    /// asked of SQS, which holds the message for [`CONFIRM_SECS`] meanwhile.
    async fn confirm(&self, lease: &Lease) -> Result<(), MailboxError> {
        match self.leases.check(lease)? {
            Known::Held(_) => Ok(()),
            Known::Unknown => self.set_visibility(lease, CONFIRM_SECS).await,
        }
    }

    async fn delete(&self, lease: &Lease) -> Result<(), MailboxError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(&lease.token)
            .send()
            .await
            .map_err(|err| self.lease_error(lease, "DeleteMessage", err))?;
        self.leases.forget(lease);
        Ok(())
    }

    /// An SDK error from an operation on a lease: SQS's "no such receive" codes mean it is lost.
    fn lease_error<E, R>(&self, lease: &Lease, operation: &str, err: SdkError<E, R>) -> MailboxError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
        R: fmt::Debug,
    {
        if err
            .as_service_error()
            .is_some_and(|service| is_lease_lost(service.code(), service.message()))
        {
            self.leases.forget(lease);
            return lost(lease);
        }
        sdk_error(operation, err)
    }

    /// Send `reply` to the replies queue, if there is one. A reply larger
    /// than that queue takes is not sent: the reason it cannot be kept
    /// comes back instead, for the job's message to be dead-lettered with,
    /// since failing the ack would only run the job again, forever.
    async fn forward_reply(&self, reply: &Reply) -> Result<Option<DeadLetterReason>, MailboxError> {
        let Some(replies) = &self.replies else {
            tracing::debug!(request_id = %reply.request_id, "no replies queue: the reply is not kept");
            return Ok(None);
        };
        let (body, attributes) = request_message(&reply.request_id, &reply.body)?;
        let size = message_size(&body, &attributes);
        if let Some(max) = replies.max
            && size > max
        {
            return Ok(Some(DeadLetterReason {
                kind: REPLY_TOO_LARGE.to_owned(),
                message: format!(
                    "the reply is {size} bytes as an SQS message, more than the {max} replies queue {} takes \
                     (MaximumMessageSize)",
                    replies.url
                ),
            }));
        }
        let url = &replies.url;
        let mut request = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .set_message_attributes(Some(attributes));
        if url.ends_with(options::FIFO_SUFFIX) {
            let id = fifo_id(&reply.request_id);
            request = request.message_group_id(&id).message_deduplication_id(id);
        }
        request
            .send()
            .await
            .map_err(|err| sdk_error("SendMessage (reply)", err))?;
        Ok(None)
    }

    /// The approximate counts of one queue: (visible, not visible, delayed).
    async fn counts(&self, url: &str) -> Result<(u64, u64, u64), MailboxError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|err| sdk_error("GetQueueAttributes", err))?;
        let attributes = output.attributes.unwrap_or_default();
        let count = |name: QueueAttributeName| {
            attributes
                .get(&name)
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((
            count(QueueAttributeName::ApproximateNumberOfMessages),
            count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        ))
    }

    /// Receive the next batch of a scan of `url`, holding it for [`HOLD_SECS`].
    async fn scan(&self, url: &str, max: usize) -> Result<Vec<Message>, MailboxError> {
        self.receive(url, max, HOLD_SECS, SCAN_WAIT_SECS).await
    }

    /// Make held messages visible again at once. Failures only delay them by
    /// [`HOLD_SECS`], so they are logged, not returned.
    async fn release(&self, url: &str, tokens: &[String]) {
        for chunk in tokens.chunks(SQS_BATCH) {
            let entries = chunk.iter().enumerate().filter_map(|(index, token)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(index.to_string())
                    .receipt_handle(token)
                    .visibility_timeout(0)
                    .build()
                    .ok()
            });
            let result = self
                .client
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(entries.collect()))
                .send()
                .await;
            if let Err(err) = result {
                tracing::warn!(queue = %self.queue, error = %DisplayErrorContext(&err), "could not release held messages; they reappear in {HOLD_SECS} s");
            }
        }
    }

    /// Delete received messages from `url`; how many SQS deleted.
    async fn delete_all(&self, url: &str, messages: &[Message]) -> Result<u64, MailboxError> {
        let entries: Vec<_> = messages
            .iter()
            .enumerate()
            .filter_map(|(index, message)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .set_receipt_handle(message.receipt_handle.clone())
                    .build()
                    .ok()
            })
            .collect();
        if entries.is_empty() {
            return Ok(0);
        }
        let output = self
            .client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|err| sdk_error("DeleteMessageBatch", err))?;
        Ok(output.successful.len() as u64)
    }

    /// Remove every visible message of `url`; how many were removed.
    async fn drain(&self, url: &str) -> Result<u64, MailboxError> {
        let (visible, _, _) = self.counts(url).await?;
        let bound = visible.saturating_add(DRAIN_SLACK);
        let mut removed = 0;
        while removed < bound {
            let batch = self.scan(url, SQS_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            removed += self.delete_all(url, &batch).await?;
        }
        Ok(removed)
    }

    /// Send a dead letter back to the queue as a new message, then delete it
    /// from the dead-letter queue; one the queue refuses stays where it is.
    async fn requeue(&self, dead: &Message) -> Result<Requeued, RequeueFailure> {
        let unsent = |error| RequeueFailure { sent: false, error };
        let attributes = dead.message_attributes.clone().unwrap_or_default();
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(dead.body.clone().unwrap_or_default())
            .set_message_attributes(Some(kept_attributes(&attributes)))
            .message_attributes(attr::ENQUEUED_AT, number_attr(enqueued_at_ms(dead)).map_err(unsent)?);
        if self.fifo {
            let identity = attr_str(&attributes, attr::REQUEST_ID)
                .or(dead.message_id.as_deref())
                .unwrap_or_default();
            // A fresh deduplication id: the request id itself may be inside
            // SQS's window still, and the requeued copy must not be dropped.
            let requeue_id = hex::encode(Sha256::digest(format!(
                "{identity}\u{0}requeued\u{0}{}",
                dead.message_id.as_deref().unwrap_or_default()
            )));
            request = request
                .message_group_id(fifo_id(identity))
                .message_deduplication_id(requeue_id);
        }
        match request
            .send()
            .await
            .map_err(|err| sdk_error("SendMessage (requeue)", err))
        {
            Ok(_) => {}
            Err(MailboxError::Invalid(reason)) => return Ok(Requeued::Refused(reason)),
            Err(error) => return Err(unsent(error)),
        }
        self.delete_all(&self.dlq_url, std::slice::from_ref(dead))
            .await
            .map_err(|error| RequeueFailure { sent: true, error })?;
        Ok(Requeued::Moved)
    }

    /// A message of the dead-letter queue as a [`DeadLetter`].
    fn dead_letter_of(&self, message: &Message) -> DeadLetter {
        let attributes = message.message_attributes.clone().unwrap_or_default();
        let get = |name| attr_str(&attributes, name);
        let enqueued_at_ms = enqueued_at_ms(message);
        let reason = match get(attr::DEAD_KIND) {
            Some(kind) => DeadLetterReason {
                kind: kind.to_owned(),
                message: get(attr::DEAD_MESSAGE).unwrap_or_default().to_owned(),
            },
            None => DeadLetterReason {
                kind: "redrive".into(),
                message: "moved to the dead-letter queue by SQS (redrive policy) or sent there directly".into(),
            },
        };
        DeadLetter {
            message_id: dead_message_id(message).to_owned(),
            payload: decode_body(message.body.as_deref().unwrap_or_default(), get(attr::BODY)),
            reason,
            attempts: get(attr::ATTEMPTS)
                .and_then(|value| value.parse().ok())
                .or(self.redrive_receives)
                .unwrap_or(0),
            enqueued_at_ms,
            dead_at_ms: get(attr::DEAD_AT)
                .and_then(|value| value.parse().ok())
                .unwrap_or(enqueued_at_ms),
        }
    }
}

#[async_trait]
impl Mailbox for SqsMailbox {
    fn queue(&self) -> &str {
        &self.queue
    }

    /// Queue `queue` beside this one, for sending replies to: its URL is
    /// this queue's with the other name (queue URLs of one account and
    /// region differ only in it), so nothing is looked up, created or
    /// required of it (no dead-letter queue, no size read at open). Opened
    /// as the worker's own queue is, a reply queue needed a dead-letter
    /// queue of its own, and `create=true` made the worker create the
    /// queues callers named. It has no dead-letter queue: send to it only.
    fn sibling(&self, queue: &str) -> Option<std::sync::Arc<dyn Mailbox>> {
        let name = checked_queue_name(queue).ok()?;
        let (prefix, _) = self.queue_url.rsplit_once('/')?;
        let queue_url = format!("{prefix}/{name}");
        // Replies posing as dead letters would be requeued as jobs.
        if queue_url == self.dlq_url {
            return None;
        }
        Some(std::sync::Arc::new(Self {
            queue: name.to_owned(),
            client: self.client.clone(),
            queue_url,
            dlq_url: String::new(),
            max_message_bytes: None,
            dlq_max_message_bytes: None,
            replies: None,
            fifo: is_fifo(name),
            redrive_receives: None,
            leases: LocalLeases::default(),
            recent_sends: Mutex::new(RecentSends::default()),
        }))
    }

    async fn send(&self, request_id: &str, payload: Bytes) -> Result<Sent, MailboxError> {
        validate_request_id(request_id).map_err(|err| MailboxError::Invalid(err.to_string()))?;
        let (body, mut attributes) = request_message(request_id, &payload)?;
        attributes.insert(attr::ENQUEUED_AT.to_owned(), number_attr(unix_ms(SystemTime::now()))?);
        self.check_dead_letter_room(request_id, &body, &attributes)?;
        let sent_at = Instant::now();
        if self.fifo && !self.sends().reserve(request_id, sent_at) {
            return Ok(Sent::Duplicate);
        }
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .set_message_attributes(Some(attributes));
        if self.fifo {
            // One message group per request: no head-of-line blocking between jobs.
            let id = fifo_id(request_id);
            request = request.message_group_id(&id).message_deduplication_id(id);
        }
        if let Err(err) = request.send().await {
            if self.fifo {
                self.sends().cancel(request_id, sent_at);
            }
            return Err(sdk_error("SendMessage", err));
        }
        Ok(Sent::Enqueued)
    }

    async fn claim(&self, max: usize, lease: Duration, wait: Duration) -> Result<Vec<Delivery>, MailboxError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.leases.prune();
        let lease_secs = whole_seconds(lease, MAX_VISIBILITY_SECS);
        let give_up = Instant::now() + wait;
        let mut batch = Vec::new();
        loop {
            // Long-poll only while nothing came; then take what is there at once.
            let wait_secs = if batch.is_empty() {
                whole_seconds(give_up.saturating_duration_since(Instant::now()), MAX_WAIT_SECS)
            } else {
                0
            };
            let (started, started_ms) = (Instant::now(), unix_ms(SystemTime::now()));
            let messages = self
                .receive(&self.queue_url, max - batch.len(), lease_secs as i32, wait_secs as i32)
                .await?;
            let received = messages.len();
            batch.extend(
                messages
                    .into_iter()
                    .filter_map(|message| self.delivery(message, started, started_ms, lease_secs)),
            );
            let timed_out = Instant::now() >= give_up;
            if batch.len() >= max || (received == 0 && (!batch.is_empty() || timed_out)) {
                return Ok(batch);
            }
        }
    }

    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<(), MailboxError> {
        self.leases.check(lease)?;
        let secs = whole_seconds(lease_for, MAX_VISIBILITY_SECS);
        let started = Instant::now();
        self.set_visibility(lease, secs as i32).await?;
        self.leases.extend(lease, started + Duration::from_secs(secs));
        Ok(())
    }

    async fn ack(&self, lease: &Lease, reply: &Reply) -> Result<Acked, MailboxError> {
        self.confirm(lease).await?;
        // Reply first: a crash in between repeats the job, never loses the answer.
        if let Some(unkept) = self.forward_reply(reply).await? {
            self.dead_letter(lease, &unkept).await?;
            return Ok(Acked::DeadLettered { kind: REPLY_TOO_LARGE });
        }
        self.delete(lease).await?;
        Ok(Acked::Replied)
    }

    async fn nack(&self, lease: &Lease, delay: Duration) -> Result<(), MailboxError> {
        self.leases.check(lease)?;
        self.set_visibility(lease, whole_seconds(delay, MAX_VISIBILITY_SECS) as i32)
            .await?;
        self.leases.release(lease);
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, reason: &DeadLetterReason) -> Result<(), MailboxError> {
        let Known::Held(received) = self.leases.received(lease)? else {
            return Err(MailboxError::Invalid(format!(
                "cannot dead-letter SQS message `{}`: its lease was not claimed through this mailbox handle, \
                 so its body is not at hand",
                lease.message_id
            )));
        };
        // A retry after a failed delete: the copy is there already.
        if received.dead_letter_sent {
            return self.delete(lease).await;
        }
        let attributes = dead_letter_attributes(
            &received,
            &lease.message_id,
            reason,
            unix_ms(SystemTime::now()),
            self.dlq_max_message_bytes,
        )?;
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(received.body)
            .set_message_attributes(Some(attributes));
        if self.fifo {
            let id = fifo_id(&lease.message_id);
            request = request.message_group_id(&id).message_deduplication_id(id);
        }
        request
            .send()
            .await
            .map_err(|err| sdk_error("SendMessage (dead letter)", err))?;
        self.leases.mark_dead_letter_sent(lease);
        self.delete(lease).await
    }

    async fn reap(&self) -> Result<u64, MailboxError> {
        // SQS makes a message visible again by itself when its lease lapses.
        self.leases.prune();
        Ok(0)
    }

    async fn depth(&self) -> Result<Depth, MailboxError> {
        let (main, dead) = tokio::try_join!(self.counts(&self.queue_url), self.counts(&self.dlq_url))?;
        Ok(Depth {
            ready: main.0,
            in_flight: main.1,
            delayed: main.2,
            dead: dead.0 + dead.1 + dead.2,
        })
    }

    async fn purge(&self, scope: PurgeScope) -> Result<u64, MailboxError> {
        match scope {
            PurgeScope::Pending => self.drain(&self.queue_url).await,
            PurgeScope::Dead => self.drain(&self.dlq_url).await,
        }
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, MailboxError> {
        let mut held = Vec::new();
        while held.len() < limit {
            let batch = self.scan(&self.dlq_url, limit - held.len()).await?;
            if batch.is_empty() {
                break;
            }
            held.extend(batch);
        }
        let tokens: Vec<String> = held.iter().filter_map(|m| m.receipt_handle.clone()).collect();
        self.release(&self.dlq_url, &tokens).await;
        let mut letters: Vec<DeadLetter> = held.iter().map(|message| self.dead_letter_of(message)).collect();
        letters.sort_by_key(|letter| letter.dead_at_ms);
        Ok(letters)
    }

    async fn requeue_dead(&self, selection: &DeadSelection) -> Result<u64, MailboxError> {
        let (visible, _, _) = self.counts(&self.dlq_url).await?;
        let bound = visible.saturating_add(DRAIN_SLACK);
        let (mut moved, mut seen) = (0, 0);
        let mut skipped = Vec::new();
        // The ids the queue refused (a letter may come round again once its
        // hold lapses on a long run), and why it refused the first.
        let (mut refused, mut first_refusal) = (HashSet::new(), None);
        let outcome = async {
            while seen < bound {
                let batch = self.scan(&self.dlq_url, SQS_BATCH).await?;
                if batch.is_empty() {
                    break;
                }
                seen += batch.len() as u64;
                let mut messages = batch.into_iter();
                while let Some(message) = messages.next() {
                    let chosen = match selection {
                        DeadSelection::All => true,
                        DeadSelection::Ids(ids) => ids.iter().any(|id| id == dead_message_id(&message)),
                    };
                    if !chosen {
                        skipped.extend(message.receipt_handle);
                        continue;
                    }
                    match self.requeue(&message).await {
                        Ok(Requeued::Moved) => moved += 1,
                        // It stays dead, and does not hold back the others.
                        Ok(Requeued::Refused(reason)) => {
                            let id = dead_message_id(&message).to_owned();
                            first_refusal.get_or_insert_with(|| format!("`{id}`: {reason}"));
                            refused.insert(id);
                            skipped.extend(message.receipt_handle);
                        }
                        Err(failure) => {
                            // Given back at once, so that requeuing again
                            // finds them: the batch's letters not tried yet,
                            // and this one unless its copy is in the queue.
                            // A copy sent counts as moved; its dead original
                            // comes back when its hold lapses.
                            if failure.sent {
                                moved += 1;
                            } else {
                                skipped.extend(message.receipt_handle);
                            }
                            skipped.extend(messages.filter_map(|rest| rest.receipt_handle));
                            return Err(failure.error);
                        }
                    }
                }
            }
            Ok::<_, MailboxError>(())
        }
        .await;
        self.release(&self.dlq_url, &skipped).await;
        outcome.map_err(|err| err.after_requeuing(moved, refused.len() as u64))?;
        match first_refusal {
            None => Ok(moved),
            Some(first) => Err(MailboxError::RequeueRefused {
                moved,
                refused: refused.len() as u64,
                first,
            }),
        }
    }

    async fn reply(&self, request_id: &str) -> Result<Option<Bytes>, MailboxError> {
        Err(MailboxError::Unsupported(format!(
            "the sqs mailbox stores no replies, so the reply to `{request_id}` cannot be looked up: \
             read it from the replies queue (?replies=NAME) or the job's reply_to queue"
        )))
    }
}

/// What became of a dead letter sent back to the queue.
enum Requeued {
    /// It is in the queue, and no longer dead.
    Moved,
    /// The queue refused it (larger than the queue now takes, say), for
    /// this reason: it stays dead.
    Refused(String),
}

/// Why a dead letter could not be requeued, and whether its copy had
/// reached the queue by then (it is then both requeued and dead).
struct RequeueFailure {
    sent: bool,
    error: MailboxError,
}

/// The request ids one handle sent to a FIFO queue within SQS's
/// deduplication window, which SQS is sure to drop if sent again.
#[derive(Debug, Default)]
struct RecentSends {
    /// Request id -> when its send started.
    sent_at: HashMap<String, Instant>,
    /// The same, oldest first, to expire them in order.
    order: VecDeque<(Instant, String)>,
}

impl RecentSends {
    /// Claim `request_id` for a send starting `now`; false if SQS would drop it.
    fn reserve(&mut self, request_id: &str, now: Instant) -> bool {
        // SQS starts the window when it accepts the send, a little after `at`.
        let expired = |at: Instant| now.saturating_duration_since(at) + DEDUP_MARGIN >= FIFO_DEDUP_WINDOW;
        while let Some((at, _)) = self.order.front()
            && expired(*at)
        {
            let Some((at, id)) = self.order.pop_front() else { break };
            if self.sent_at.get(&id) == Some(&at) {
                self.sent_at.remove(&id);
            }
        }
        if self.sent_at.contains_key(request_id) {
            return false;
        }
        self.sent_at.insert(request_id.to_owned(), now);
        self.order.push_back((now, request_id.to_owned()));
        true
    }

    /// The send reserved at `at` failed: SQS never saw it.
    fn cancel(&mut self, request_id: &str, at: Instant) {
        if self.sent_at.get(request_id) == Some(&at) {
            self.sent_at.remove(request_id);
        }
    }
}

/// Finding and creating the queues at open.
struct Admin {
    client: Client,
    account: Option<String>,
}

impl Admin {
    /// The URLs of the queue and its dead-letter queue, and the redrive policy's maxReceiveCount.
    async fn main_and_dead(
        &self,
        queue: &str,
        options: &SqsOptions,
    ) -> Result<(String, String, Option<u32>), MailboxError> {
        let fifo = is_fifo(queue);
        let mut dlq_name = options.dlq.clone().unwrap_or_else(|| default_dlq_name(queue));
        let queue_url = if options.create {
            check_same_kind(queue, &dlq_name)?;
            let dlq_url = self.create(&dlq_name, fifo, None).await?;
            let redrive = match options.max_receives {
                Some(count) => Some((self.arn(&dlq_url).await?, count)),
                None => None,
            };
            self.create(queue, fifo, redrive).await?
        } else {
            self.queue_url(queue, false, None).await?
        };
        let redrive = self.redrive_policy(&queue_url).await?;
        let mut dlq_account = None;
        if let Some((arn, _)) = &redrive {
            let (account, name) = queue_name_from_arn(arn).ok_or_else(|| {
                MailboxError::Backend(format!(
                    "queue `{queue}` has a redrive target `{arn}` that is not an SQS queue ARN"
                ))
            })?;
            match &options.dlq {
                Some(wanted) if wanted != name => {
                    return Err(MailboxError::Invalid(format!(
                        "dlq `{wanted}` was given, but queue `{queue}`'s redrive policy sends dead letters to `{name}`"
                    )));
                }
                _ => dlq_name = name.to_owned(),
            }
            dlq_account = Some(account.to_owned());
        }
        check_same_kind(queue, &dlq_name)?;
        let dlq_url = self.queue_url(&dlq_name, false, dlq_account.as_deref()).await?;
        Ok((queue_url, dlq_url, redrive.map(|(_, count)| count)))
    }

    /// The URL of queue `name`, created first if `create` is set.
    async fn queue_url(&self, name: &str, create: bool, account: Option<&str>) -> Result<String, MailboxError> {
        let name = checked_queue_name(name).map_err(MailboxError::Invalid)?;
        if create {
            return self.create(name, is_fifo(name), None).await;
        }
        let output = self
            .client
            .get_queue_url()
            .queue_name(name)
            .set_queue_owner_aws_account_id(account.map(str::to_owned).or_else(|| self.account.clone()))
            .send()
            .await
            .map_err(|err| match err.as_service_error().and_then(|service| service.code()) {
                Some("QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue") => MailboxError::Invalid(
                    format!("SQS queue `{name}` does not exist (create it, or add create=true to the mailbox URL)"),
                ),
                _ => sdk_error("GetQueueUrl", err),
            })?;
        output
            .queue_url
            .ok_or_else(|| MailboxError::Backend(format!("SQS GetQueueUrl returned no URL for `{name}`")))
    }

    async fn create(&self, name: &str, fifo: bool, redrive: Option<(String, u32)>) -> Result<String, MailboxError> {
        let mut request = self.client.create_queue().queue_name(name);
        if fifo {
            request = request.attributes(QueueAttributeName::FifoQueue, "true");
        }
        if let Some((dlq_arn, max_receives)) = redrive {
            let policy = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives});
            request = request.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
        }
        let output = request
            .send()
            .await
            .map_err(|err| sdk_error(&format!("CreateQueue `{name}`"), err))?;
        output
            .queue_url
            .ok_or_else(|| MailboxError::Backend(format!("SQS CreateQueue returned no URL for `{name}`")))
    }

    async fn attribute(&self, url: &str, name: QueueAttributeName) -> Result<Option<String>, MailboxError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(name.clone())
            .send()
            .await
            .map_err(|err| sdk_error("GetQueueAttributes", err))?;
        Ok(output.attributes.and_then(|mut attributes| attributes.remove(&name)))
    }

    /// The `MaximumMessageSize` of the queue and of its dead-letter queue,
    /// refusing a dead-letter queue that takes smaller messages: a job it
    /// cannot hold could never be dead-lettered, and would come back
    /// forever. A dead-letter queue whose size cannot be read (one in
    /// another account may grant only sending and receiving) is taken to
    /// be the queue's.
    async fn max_message_sizes(
        &self,
        queue_url: &str,
        dlq_url: &str,
    ) -> Result<(Option<usize>, Option<usize>), MailboxError> {
        let main = self.max_message_size(queue_url).await?;
        let dead = self.max_message_size_if_readable(dlq_url, "assuming the queue's").await;
        if let (Some(main), Some(dead)) = (main, dead)
            && dead < main
        {
            return Err(MailboxError::Invalid(format!(
                "dead-letter queue {dlq_url} takes messages of up to {dead} bytes, fewer than the {main} \
                 of queue {queue_url}: a larger job could not be dead-lettered and would come back forever; \
                 raise its MaximumMessageSize to {main}"
            )));
        }
        Ok((main, dead.or(main)))
    }

    /// The queue's `MaximumMessageSize`, or none, with a warning saying
    /// what is assumed instead, when it cannot be read: a queue of another
    /// producer or account may grant only sending and receiving.
    async fn max_message_size_if_readable(&self, url: &str, assumed: &str) -> Option<usize> {
        self.max_message_size(url).await.unwrap_or_else(|err| {
            tracing::warn!(url, error = %err, "cannot read the queue's MaximumMessageSize; {assumed}");
            None
        })
    }

    /// The queue's `MaximumMessageSize`, when SQS reports one.
    async fn max_message_size(&self, url: &str) -> Result<Option<usize>, MailboxError> {
        let value = self.attribute(url, QueueAttributeName::MaximumMessageSize).await?;
        Ok(value.and_then(|bytes| match bytes.parse() {
            Ok(bytes) => Some(bytes),
            Err(_) => {
                tracing::warn!(url, value = %bytes, "SQS reported a MaximumMessageSize that is not a number; ignoring it");
                None
            }
        }))
    }

    async fn arn(&self, url: &str) -> Result<String, MailboxError> {
        self.attribute(url, QueueAttributeName::QueueArn)
            .await?
            .ok_or_else(|| MailboxError::Backend(format!("SQS returned no QueueArn for {url}")))
    }

    /// The queue's redrive policy: (dead-letter queue ARN, maxReceiveCount).
    async fn redrive_policy(&self, url: &str) -> Result<Option<(String, u32)>, MailboxError> {
        let Some(policy) = self.attribute(url, QueueAttributeName::RedrivePolicy).await? else {
            return Ok(None);
        };
        let bad = || MailboxError::Backend(format!("cannot read the redrive policy `{policy}` of {url}"));
        let value: serde_json::Value = serde_json::from_str(&policy).map_err(|_| bad())?;
        let arn = value["deadLetterTargetArn"].as_str().ok_or_else(bad)?.to_owned();
        // SQS writes maxReceiveCount as a number or as a string, depending on who set it.
        let count = match &value["maxReceiveCount"] {
            serde_json::Value::Number(number) => number.as_u64(),
            serde_json::Value::String(text) => text.parse().ok(),
            _ => None,
        };
        Ok(Some((arn, count.and_then(|c| u32::try_from(c).ok()).ok_or_else(bad)?)))
    }
}

/// SQS needs a FIFO queue's dead-letter queue to be FIFO too, and a standard one's standard.
fn check_same_kind(queue: &str, dlq: &str) -> Result<(), MailboxError> {
    if is_fifo(queue) != is_fifo(dlq) {
        return Err(MailboxError::Invalid(format!(
            "queue `{queue}` and its dead-letter queue `{dlq}` must both be FIFO (.fifo) or both standard"
        )));
    }
    Ok(())
}

/// `duration` in whole seconds, rounded up (a lease is never shorter than
/// asked), at most `max`.
fn whole_seconds(duration: Duration, max: u64) -> u64 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    secs.min(max)
}

/// SQS error codes meaning the receipt handle no longer names an in-flight receive.
fn is_lease_lost(code: Option<&str>, message: Option<&str>) -> bool {
    match code {
        Some("ReceiptHandleIsInvalid" | "MessageNotInflight" | "AWS.SimpleQueueService.MessageNotInflight") => true,
        // Expired FIFO receipt handles come back as a parameter error.
        Some("InvalidParameterValue") => {
            message.is_some_and(|m| m.contains("ReceiptHandle") || m.contains("receipt handle"))
        }
        _ => false,
    }
}

/// Sort an SDK error: network and throttling are worth retrying, bad input is
/// the caller's, the rest is the backend's.
fn sdk_error<E, R>(operation: &str, err: SdkError<E, R>) -> MailboxError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: fmt::Debug,
{
    let Some(service) = err.as_service_error() else {
        let text = format!("SQS {operation}: {}", DisplayErrorContext(&err));
        return match err {
            SdkError::ConstructionFailure(_) => MailboxError::Invalid(text),
            _ => MailboxError::Unavailable(text),
        };
    };
    let code = service.code().unwrap_or("UnknownError");
    let text = format!("SQS {operation}: {code}: {}", service.message().unwrap_or("no message"));
    match code {
        "ThrottlingException"
        | "RequestThrottled"
        | "KmsThrottled"
        | "OverLimit"
        | "ServiceUnavailable"
        | "InternalError"
        | "InternalFailure" => MailboxError::Unavailable(text),
        "InvalidParameterValue"
        | "InvalidAttributeName"
        | "InvalidAttributeValue"
        | "InvalidMessageContents"
        | "MissingParameter"
        | "UnsupportedOperation"
        | "BatchEntryIdsNotDistinct" => MailboxError::Invalid(text),
        _ => MailboxError::Backend(text),
    }
}

/// A FIFO MessageGroupId / MessageDeduplicationId for `value`: itself when it
/// fits SQS's rules (1-128 printable ASCII characters), else its SHA-256.
fn fifo_id(value: &str) -> String {
    if !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic()) {
        value.to_owned()
    } else {
        hex::encode(Sha256::digest(value.as_bytes()))
    }
}

/// Whether SQS accepts `c` in a message body or attribute.
fn is_sqs_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// The body and attributes of a message carrying `payload` for request
/// `request_id`, a job or a reply: the body as SQS text, the request id,
/// and how the body was encoded when it is not the payload itself.
fn request_message(
    request_id: &str,
    payload: &[u8],
) -> Result<(String, HashMap<String, MessageAttributeValue>), MailboxError> {
    let (body, encoding) = encode_body(payload);
    let mut attributes = HashMap::from([(attr::REQUEST_ID.to_owned(), text_attr(request_id)?)]);
    if let Some(encoding) = encoding {
        attributes.insert(attr::BODY.to_owned(), text_attr(encoding)?);
    }
    Ok((body, attributes))
}

/// `payload` as an SQS body, and the `wink-body` encoding when it is not the payload as is.
fn encode_body(payload: &[u8]) -> (String, Option<&'static str>) {
    if payload.is_empty() {
        // SQS refuses empty bodies.
        return ("-".into(), Some("empty"));
    }
    match std::str::from_utf8(payload) {
        Ok(text) if text.chars().all(is_sqs_char) => (text.to_owned(), None),
        _ => (aws_smithy_types::base64::encode(payload), Some("base64")),
    }
}

/// The payload of an SQS body. A body whose encoding is unknown or broken is
/// delivered as it is, for the worker to dead-letter as malformed.
fn decode_body(body: &str, encoding: Option<&str>) -> Bytes {
    match encoding {
        Some("empty") => Bytes::new(),
        Some("base64") => match aws_smithy_types::base64::decode(body) {
            Ok(payload) => Bytes::from(payload),
            Err(_) => Bytes::copy_from_slice(body.as_bytes()),
        },
        _ => Bytes::copy_from_slice(body.as_bytes()),
    }
}

/// `text` with the characters SQS refuses replaced, cut to at most `max` bytes.
fn sqs_text(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().map(|c| if is_sqs_char(c) { c } else { '\u{FFFD}' }) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

fn attribute(data_type: &str, value: String) -> Result<MessageAttributeValue, MailboxError> {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(value)
        .build()
        .map_err(|err| MailboxError::Backend(format!("building an SQS message attribute: {err}")))
}

fn text_attr(value: &str) -> Result<MessageAttributeValue, MailboxError> {
    attribute("String", value.to_owned())
}

fn number_attr(value: u64) -> Result<MessageAttributeValue, MailboxError> {
    attribute("Number", value.to_string())
}

fn attr_str<'a>(attributes: &'a HashMap<String, MessageAttributeValue>, name: &str) -> Option<&'a str> {
    attributes.get(name).and_then(MessageAttributeValue::string_value)
}

/// The attributes of `received`'s dead-letter copy: those that travel
/// with it, where it died, how often it ran, when and why it died. The
/// reason's message is clipped to what room the dead-letter queue's
/// `MaximumMessageSize` (`max`) leaves; a copy too large even without it
/// (a message sent without [`DEAD_LETTER_ROOM`], by another producer) is
/// refused rather than sent with its kind clipped, which would misname it.
fn dead_letter_attributes(
    received: &Received,
    message_id: &str,
    reason: &DeadLetterReason,
    dead_at_ms: u64,
    max: Option<usize>,
) -> Result<HashMap<String, MessageAttributeValue>, MailboxError> {
    let mut attributes = kept_attributes(&received.attributes);
    attributes.insert(attr::MESSAGE_ID.into(), text_attr(message_id)?);
    attributes.insert(attr::ENQUEUED_AT.into(), number_attr(received.enqueued_at_ms)?);
    attributes.insert(attr::ATTEMPTS.into(), number_attr(u64::from(received.attempt))?);
    attributes.insert(attr::DEAD_AT.into(), number_attr(dead_at_ms)?);
    let kind = sqs_text(&reason.kind, MAX_REASON_BYTES);
    if !kind.is_empty() {
        attributes.insert(attr::DEAD_KIND.into(), text_attr(&kind)?);
    }
    let room = max.map_or(MAX_REASON_BYTES, |max| {
        text_room(attr::DEAD_MESSAGE, message_size(&received.body, &attributes), max).min(MAX_REASON_BYTES)
    });
    let message = sqs_text(&reason.message, room);
    if !message.is_empty() {
        attributes.insert(attr::DEAD_MESSAGE.into(), text_attr(&message)?);
    }
    let size = message_size(&received.body, &attributes);
    match max {
        Some(max) if size > max => Err(MailboxError::Invalid(format!(
            "the dead letter of SQS message `{message_id}` would be {size} bytes, more than the {max} \
             its dead-letter queue takes (MaximumMessageSize)"
        ))),
        _ => Ok(attributes),
    }
}

/// The attributes that travel with a message between its queues.
fn kept_attributes(attributes: &HashMap<String, MessageAttributeValue>) -> HashMap<String, MessageAttributeValue> {
    attributes
        .iter()
        .filter(|(name, _)| attr::KEPT.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The id a dead letter is listed and requeued by: its id in the queue it died in.
fn dead_message_id(message: &Message) -> &str {
    message
        .message_attributes
        .as_ref()
        .and_then(|attributes| attr_str(attributes, attr::MESSAGE_ID))
        .or(message.message_id.as_deref())
        .unwrap_or_default()
}

fn system_attr(message: &Message, name: MessageSystemAttributeName) -> Option<&str> {
    message.attributes.as_ref()?.get(&name).map(String::as_str)
}

/// When the message was first sent: our attribute (kept across the
/// dead-letter queue), else SQS's SentTimestamp.
fn enqueued_at_ms(message: &Message) -> u64 {
    message
        .message_attributes
        .as_ref()
        .and_then(|attributes| attr_str(attributes, attr::ENQUEUED_AT))
        .or_else(|| system_attr(message, MessageSystemAttributeName::SentTimestamp))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as received from a queue, as this backend sends them.
    fn received(body: &str) -> Received {
        Received {
            body: body.to_owned(),
            attributes: HashMap::from([
                (attr::REQUEST_ID.to_owned(), text_attr("request-1").expect("attribute")),
                (attr::ENQUEUED_AT.to_owned(), number_attr(u64::MAX).expect("attribute")),
            ]),
            attempt: u32::MAX,
            enqueued_at_ms: u64::MAX,
            dead_letter_sent: false,
        }
    }

    fn reason(kind: &str, message: &str) -> DeadLetterReason {
        DeadLetterReason {
            kind: kind.to_owned(),
            message: message.to_owned(),
        }
    }

    #[test]
    fn a_message_sent_at_the_limit_can_still_be_dead_lettered_with_some_of_its_reason() {
        let max = 4096;
        let mut message = received("");
        let attributes = message_size("", &message.attributes);
        // As large as `send` lets through: the limit less the room kept.
        message.body = "b".repeat(max - DEAD_LETTER_ROOM - attributes);
        // Longer than any SQS message id (a UUID) or kind the worker writes.
        let why = reason(&"k".repeat(64), &"x".repeat(4000));
        let dead = dead_letter_attributes(&message, &"m".repeat(64), &why, u64::MAX, Some(max)).expect("fits");
        assert_eq!(
            message_size(&message.body, &dead),
            max,
            "the reason fills the room exactly"
        );
        assert_eq!(attr_str(&dead, attr::DEAD_KIND), Some("k".repeat(64).as_str()));
        assert!(attr_str(&dead, attr::DEAD_MESSAGE).is_some_and(|kept| kept.len() > 100));
    }

    #[test]
    fn a_dead_letters_reason_is_clipped_to_the_room_its_queue_leaves() {
        let max = 1024;
        let message = received(&"b".repeat(max - DEAD_LETTER_ROOM - 100));
        assert!(message_size(&message.body, &message.attributes) + DEAD_LETTER_ROOM <= max);
        let why = reason("malformed_envelope", &"x".repeat(4000));

        let dead = dead_letter_attributes(&message, "m-1", &why, 1, Some(max)).expect("attributes");
        assert_eq!(message_size(&message.body, &dead), max);
        assert_eq!(attr_str(&dead, attr::DEAD_KIND), Some("malformed_envelope"));
        let clipped = attr_str(&dead, attr::DEAD_MESSAGE).expect("some of the reason fits");
        assert!(clipped.len() > 100 && clipped.len() < 4000, "{} bytes", clipped.len());

        let unbounded = dead_letter_attributes(&message, "m-1", &why, 1, None).expect("attributes");
        assert_eq!(attr_str(&unbounded, attr::DEAD_MESSAGE).map(str::len), Some(4000));
    }

    #[test]
    fn a_dead_letter_too_large_even_without_its_reason_is_refused_naming_its_size() {
        let message = received(&"b".repeat(1020));
        let err = dead_letter_attributes(&message, "m-1", &reason("poison", "why"), 1, Some(1024))
            .expect_err("too large")
            .to_string();
        assert!(err.contains("`m-1`") && err.contains("more than the 1024"), "{err}");
        // Its kind is not clipped to fit: a clipped or missing kind would misname it.
        let at_the_edge = received(&"b".repeat(1024 - 250));
        let err = dead_letter_attributes(&at_the_edge, "m-1", &reason(&"k".repeat(200), ""), 1, Some(1024));
        assert!(err.is_err(), "{err:?}");
    }

    #[test]
    fn bodies_round_trip_whatever_the_bytes() {
        for payload in [
            &b""[..],
            b"{\"a\":1}",
            b"\x00\xff binary",
            "caf\u{e9}".as_bytes(),
            b"bell\x07",
        ] {
            let (body, encoding) = encode_body(payload);
            assert!(!body.is_empty());
            assert!(body.chars().all(is_sqs_char));
            assert_eq!(
                decode_body(&body, encoding),
                Bytes::copy_from_slice(payload),
                "{payload:?}"
            );
        }
        assert_eq!(encode_body(b"{}").1, None, "JSON travels as plain text");
        assert_eq!(
            decode_body("not base64!", Some("base64")),
            Bytes::from_static(b"not base64!")
        );
    }

    #[test]
    fn fifo_ids_fit_sqs_rules() {
        assert_eq!(fifo_id("order-7"), "order-7");
        for odd in ["caf\u{e9}", &"x".repeat(200)] {
            let id = fifo_id(odd);
            assert_eq!(id.len(), 64);
            assert_ne!(id, fifo_id("other"));
        }
    }

    #[test]
    fn a_fifo_send_is_a_duplicate_only_inside_the_window() {
        let mut sends = RecentSends::default();
        let start = Instant::now();
        assert!(sends.reserve("a", start));
        assert!(!sends.reserve("a", start + Duration::from_secs(60)));
        sends.cancel("b", start);
        assert!(!sends.reserve("a", start + FIFO_DEDUP_WINDOW - DEDUP_MARGIN - Duration::from_secs(1)));
        assert!(sends.reserve("a", start + FIFO_DEDUP_WINDOW));
        assert!(sends.reserve("b", start + FIFO_DEDUP_WINDOW));
        sends.cancel("b", start + FIFO_DEDUP_WINDOW);
        assert!(
            sends.reserve("b", start + FIFO_DEDUP_WINDOW),
            "a failed send is forgotten"
        );
        assert_eq!(sends.sent_at.len(), 2);
    }

    #[test]
    fn leases_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO, 10), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1), 10), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2), 10), 2);
        assert_eq!(whole_seconds(Duration::from_secs(99), 10), 10);
    }

    #[test]
    fn reasons_are_cleaned_and_bounded() {
        assert_eq!(sqs_text("a\u{0}b", 100), "a\u{FFFD}b");
        assert_eq!(sqs_text("\u{e9}\u{e9}", 3), "\u{e9}");
    }

    #[test]
    fn stale_receipt_codes_mean_a_lost_lease() {
        assert!(is_lease_lost(Some("ReceiptHandleIsInvalid"), None));
        assert!(is_lease_lost(
            Some("InvalidParameterValue"),
            Some("Value x for parameter ReceiptHandle is invalid. Reason: The receipt handle has expired.")
        ));
        assert!(!is_lease_lost(
            Some("InvalidParameterValue"),
            Some("VisibilityTimeout too large")
        ));
        assert!(!is_lease_lost(Some("ThrottlingException"), None));
    }
}
