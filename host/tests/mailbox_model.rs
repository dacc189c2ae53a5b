//! The mailbox property: random operation sequences, checked step by step
//! against the pure model in common/mailbox_model.rs. Any backend plugs in
//! through a factory of fresh mailboxes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::mailbox_model;
use wink_host::mailbox::{
    Acked, DeadLetter, DeadLetterReason, DeadSelection, Delivery, Depth, Lease, Mailbox, MailboxError, MemoryMailbox,
    PurgeScope, Reply, Sent,
};

#[test]
fn the_memory_mailbox_follows_the_model() {
    let result = mailbox_model::check(512, || async {
        Arc::new(MemoryMailbox::new("model")) as Arc<dyn Mailbox>
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

/// A deliberately broken backend: the property must catch every fault, or
/// it proves nothing about the real ones.
#[derive(Debug, Clone, Copy)]
enum Fault {
    DuplicateSendsEnqueue,
    StaleExtendSucceeds,
    NackIgnoresDelay,
    SecondReplyWins,
    DeadLettersNewestFirst,
    RequeueKeepsDeadLetters,
}

#[derive(Debug)]
struct Broken {
    inner: MemoryMailbox,
    fault: Fault,
}

#[async_trait]
impl Mailbox for Broken {
    fn queue(&self) -> &str {
        self.inner.queue()
    }

    async fn send(&self, request_id: &str, payload: Bytes) -> Result<Sent, MailboxError> {
        let sent = self.inner.send(request_id, payload).await?;
        Ok(match self.fault {
            Fault::DuplicateSendsEnqueue => Sent::Enqueued,
            _ => sent,
        })
    }

    async fn claim(&self, max: usize, lease: Duration, wait: Duration) -> Result<Vec<Delivery>, MailboxError> {
        self.inner.claim(max, lease, wait).await
    }

    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<(), MailboxError> {
        match (self.inner.extend(lease, lease_for).await, self.fault) {
            (Err(MailboxError::LeaseLost { .. }), Fault::StaleExtendSucceeds) => Ok(()),
            (result, _) => result,
        }
    }

    async fn ack(&self, lease: &Lease, reply: &Reply) -> Result<Acked, MailboxError> {
        let acked = self.inner.ack(lease, reply).await?;
        Ok(match self.fault {
            Fault::SecondReplyWins => Acked::Replied,
            _ => acked,
        })
    }

    async fn nack(&self, lease: &Lease, delay: Duration) -> Result<(), MailboxError> {
        let delay = match self.fault {
            Fault::NackIgnoresDelay => Duration::ZERO,
            _ => delay,
        };
        self.inner.nack(lease, delay).await
    }

    async fn dead_letter(&self, lease: &Lease, reason: &DeadLetterReason) -> Result<(), MailboxError> {
        self.inner.dead_letter(lease, reason).await
    }

    async fn reap(&self) -> Result<u64, MailboxError> {
        self.inner.reap().await
    }

    async fn depth(&self) -> Result<Depth, MailboxError> {
        self.inner.depth().await
    }

    async fn purge(&self, scope: PurgeScope) -> Result<u64, MailboxError> {
        self.inner.purge(scope).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, MailboxError> {
        let mut letters = self.inner.dead_letters(usize::MAX).await?;
        if let Fault::DeadLettersNewestFirst = self.fault {
            letters.reverse();
        }
        letters.truncate(limit);
        Ok(letters)
    }

    async fn requeue_dead(&self, selection: &DeadSelection) -> Result<u64, MailboxError> {
        match self.fault {
            // Reports the move without making it.
            Fault::RequeueKeepsDeadLetters => Ok(self.inner.depth().await?.dead.min(1)),
            _ => self.inner.requeue_dead(selection).await,
        }
    }

    async fn reply(&self, request_id: &str) -> Result<Option<Bytes>, MailboxError> {
        self.inner.reply(request_id).await
    }
}

#[test]
fn the_property_catches_broken_backends() {
    let faults = [
        Fault::DuplicateSendsEnqueue,
        Fault::StaleExtendSucceeds,
        Fault::NackIgnoresDelay,
        Fault::SecondReplyWins,
        Fault::DeadLettersNewestFirst,
        Fault::RequeueKeepsDeadLetters,
    ];
    for fault in faults {
        let result = mailbox_model::check(512, || async move {
            Arc::new(Broken {
                inner: MemoryMailbox::new("broken"),
                fault,
            }) as Arc<dyn Mailbox>
        });
        assert!(result.is_err(), "the property missed {fault:?}");
    }
}
