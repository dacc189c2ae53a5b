//! Batched acks: replies that complete together are stored with one
//! `ack_batch` call, so a busy worker pays one mailbox round trip for many jobs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use super::{MAILBOX_RETRY, Shared};
use crate::mailbox::{Acked, Lease, MailboxError, Reply};

/// Attempts at one batch while the mailbox is unreachable; after them the
/// leases lapse and the jobs run again (their replies are deduplicated).
const ACK_TRIES: u32 = 5;

/// What the job tasks hand the acker.
#[derive(Debug)]
pub(crate) enum AckItem {
    /// Store this reply and finish the delivery.
    Ack {
        lease: Lease,
        reply: Reply,
        /// Whether the reply says `succeeded` (for the counters).
        succeeded: bool,
    },
    /// Everything sent before this is acked: answer and stop.
    Stop(oneshot::Sender<()>),
}

/// Ack whatever is queued, a batch at a time, until told to stop.
pub(crate) async fn run(shared: Arc<Shared>, mut queue: mpsc::Receiver<AckItem>) {
    let limit = shared.config.ack_batch;
    let mut items = Vec::with_capacity(limit);
    let mut batch = Vec::with_capacity(limit);
    let mut succeeded = Vec::with_capacity(limit);
    loop {
        if queue.recv_many(&mut items, limit).await == 0 {
            return;
        }
        let mut stop = None;
        for item in items.drain(..) {
            match item {
                AckItem::Ack {
                    lease,
                    reply,
                    succeeded: ok,
                } => {
                    batch.push((lease, reply));
                    succeeded.push(ok);
                }
                AckItem::Stop(done) => stop = Some(done),
            }
        }
        if !batch.is_empty() {
            ack(&shared, &batch, &succeeded).await;
            batch.clear();
            succeeded.clear();
        }
        if let Some(done) = stop {
            let _ = done.send(());
            return;
        }
    }
}

async fn ack(shared: &Shared, batch: &[(Lease, Reply)], succeeded: &[bool]) {
    let Some(results) = ack_with_retries(shared, batch).await else {
        return;
    };
    let mut acked = 0;
    for (((lease, reply), ok), result) in batch.iter().zip(succeeded).zip(results) {
        match result {
            Ok(outcome) => {
                acked += 1;
                let counter = if *ok {
                    &shared.counters.succeeded
                } else {
                    &shared.counters.failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if outcome == Acked::AlreadyReplied {
                    tracing::info!(request_id = %reply.request_id, "request was already answered; this reply was dropped");
                }
                shared.forget(&reply.request_id).await;
            }
            Err(MailboxError::LeaseLost { .. }) => {
                shared.counters.lease_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    request_id = %reply.request_id,
                    message_id = %lease.message_id,
                    "lease lost before the ack; this reply was dropped (the lease holder answers)"
                );
            }
            Err(err) => tracing::warn!(request_id = %reply.request_id, error = %err, "ack failed"),
        }
    }
    if acked > 0 {
        shared.runtime.metrics().mailbox_acked(shared.queue(), acked);
    }
}

/// The per-item results, retrying the whole batch while the mailbox is unreachable.
async fn ack_with_retries(shared: &Shared, batch: &[(Lease, Reply)]) -> Option<Vec<Result<Acked, MailboxError>>> {
    let mut pause = MAILBOX_RETRY;
    for attempt in 1..=ACK_TRIES {
        match shared.mailbox.ack_batch(batch).await {
            Ok(results) => {
                shared.health.mailbox_answered();
                return Some(results);
            }
            Err(err) => {
                shared.health.mailbox_failed();
                tracing::warn!(jobs = batch.len(), attempt, error = %err, "batch ack failed");
                if attempt < ACK_TRIES {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }
    tracing::error!(
        jobs = batch.len(),
        "giving up on a batch ack; the jobs run again when their leases lapse"
    );
    None
}
