//! The leases one [`super::SqsMailbox`] handed out.
//!
//! SQS accepts an old receipt handle after the message was received again
//! (DeleteMessage and ChangeMessageVisibility act on the message, not on the
//! receive), so SQS alone cannot refuse a stale lease holder. This table can,
//! for every lease its own mailbox handle claimed: a lease is held until its
//! deadline on this process's monotonic clock, measured from *before* the
//! receive (or extend) request was sent. SQS starts its visibility timeout
//! later than that, so a lease this table still calls held is still
//! invisible on SQS, up to [`FINISH_MARGIN`] for the finishing request to
//! arrive.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use tokio::time::Instant;

use crate::mailbox::{Lease, MailboxError};

/// A lease is refused this long before its deadline, so the request that
/// finishes it reaches SQS while the message is still invisible.
pub(super) const FINISH_MARGIN: Duration = Duration::from_millis(250);

/// How long a lapsed or given-back lease is remembered (and so refused
/// locally). After that, SQS's own, weaker check applies.
const REMEMBER: Duration = Duration::from_secs(60 * 60);

/// How often [`LocalLeases::prune`] actually scans the table.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What a held lease needs to be dead-lettered: the message as received.
#[derive(Debug, Clone)]
pub(super) struct Received {
    /// The body exactly as SQS returned it.
    pub body: String,
    /// The message attributes as SQS returned them.
    pub attributes: HashMap<String, MessageAttributeValue>,
    /// The delivery's attempt number.
    pub attempt: u32,
    /// When the message was first sent, in Unix milliseconds.
    pub enqueued_at_ms: u64,
    /// Its copy is on the dead-letter queue already: a dead letter whose
    /// delete failed, retried, must not send a second copy.
    pub dead_letter_sent: bool,
}

#[derive(Debug)]
enum State {
    /// Held until `until`, minus the margin.
    Held { until: Instant, received: Box<Received> },
    /// Given back with a nack, or superseded by a later receive of the same message.
    Released { at: Instant },
}

#[derive(Debug)]
struct Entry {
    message_id: String,
    state: State,
}

#[derive(Debug, Default)]
struct Table {
    /// Receipt handle -> lease.
    by_token: HashMap<String, Entry>,
    /// SQS message id -> the receipt handle of its latest receive.
    latest: HashMap<String, String>,
    /// When the table was last pruned.
    pruned_at: Option<Instant>,
}

/// What the table knows of a lease.
#[derive(Debug)]
pub(super) enum Known<T> {
    /// This handle claimed it and still holds it.
    Held(T),
    /// Not claimed by this handle, or forgotten: only SQS can judge it.
    Unknown,
}

/// The leases of one mailbox handle.
#[derive(Debug, Default)]
pub(super) struct LocalLeases {
    table: Mutex<Table>,
}

impl LocalLeases {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record a fresh receive; an earlier lease on the same message is stale from now on.
    pub fn record(&self, lease: &Lease, until: Instant, received: Received) {
        let now = Instant::now();
        let mut table = self.table();
        if let Some(previous) = table.latest.insert(lease.message_id.clone(), lease.token.clone())
            && let Some(entry) = table.by_token.get_mut(&previous)
        {
            entry.state = State::Released { at: now };
        }
        table.by_token.insert(
            lease.token.clone(),
            Entry {
                message_id: lease.message_id.clone(),
                state: State::Held {
                    until,
                    received: Box::new(received),
                },
            },
        );
    }

    /// Whether `lease` may still finish its message.
    pub fn check(&self, lease: &Lease) -> Result<Known<()>, MailboxError> {
        self.held(lease, |_| ())
    }

    /// The message `lease` holds, as received, if the lease may still finish it.
    pub fn received(&self, lease: &Lease) -> Result<Known<Received>, MailboxError> {
        self.held(lease, Clone::clone)
    }

    fn held<T>(&self, lease: &Lease, view: impl FnOnce(&Received) -> T) -> Result<Known<T>, MailboxError> {
        let table = self.table();
        let Some(entry) = table.by_token.get(&lease.token) else {
            return Ok(Known::Unknown);
        };
        match &entry.state {
            State::Held { until, received }
                if entry.message_id == lease.message_id && Instant::now() + FINISH_MARGIN < *until =>
            {
                Ok(Known::Held(view(received)))
            }
            _ => Err(lost(lease)),
        }
    }

    /// The message's copy is on the dead-letter queue.
    pub fn mark_dead_letter_sent(&self, lease: &Lease) {
        if let Some(Entry {
            state: State::Held { received, .. },
            ..
        }) = self.table().by_token.get_mut(&lease.token)
        {
            received.dead_letter_sent = true;
        }
    }

    /// The lease now runs until `until`.
    pub fn extend(&self, lease: &Lease, until: Instant) {
        if let Some(Entry {
            state: State::Held { until: held_until, .. },
            ..
        }) = self.table().by_token.get_mut(&lease.token)
        {
            *held_until = until;
        }
    }

    /// The lease was given back while its message stays on the queue: refuse it from now on.
    pub fn release(&self, lease: &Lease) {
        if let Some(entry) = self.table().by_token.get_mut(&lease.token) {
            entry.state = State::Released { at: Instant::now() };
        }
    }

    /// The message is gone from the queue: SQS itself refuses the handle now.
    pub fn forget(&self, lease: &Lease) {
        let mut table = self.table();
        if table.by_token.remove(&lease.token).is_some() && table.latest.get(&lease.message_id) == Some(&lease.token) {
            table.latest.remove(&lease.message_id);
        }
    }

    /// Drop what has been lapsed or released for longer than [`REMEMBER`];
    /// scans at most once per [`PRUNE_EVERY`].
    pub fn prune(&self) {
        let now = Instant::now();
        let mut table = self.table();
        if table.pruned_at.is_some_and(|at| now.duration_since(at) < PRUNE_EVERY) {
            return;
        }
        table.pruned_at = Some(now);
        table.by_token.retain(|_, entry| {
            let since = match &entry.state {
                State::Held { until, .. } => *until,
                State::Released { at } => *at,
            };
            now.saturating_duration_since(since) < REMEMBER
        });
        let Table { by_token, latest, .. } = &mut *table;
        latest.retain(|_, token| by_token.contains_key(token));
    }
}

/// The error for a lease that is no longer held.
pub(super) fn lost(lease: &Lease) -> MailboxError {
    MailboxError::LeaseLost {
        message_id: lease.message_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(message: &str, token: &str) -> Lease {
        Lease {
            message_id: message.into(),
            token: token.into(),
        }
    }

    fn received() -> Received {
        Received {
            body: "job".into(),
            attributes: HashMap::new(),
            attempt: 1,
            enqueued_at_ms: 0,
            dead_letter_sent: false,
        }
    }

    const LONG: Duration = Duration::from_secs(600);

    #[test]
    fn a_later_receive_supersedes_the_earlier_lease() {
        let leases = LocalLeases::default();
        let first = lease("m", "r1");
        let second = lease("m", "r2");
        leases.record(&first, Instant::now() + LONG, received());
        assert!(matches!(leases.received(&first), Ok(Known::Held(r)) if r.body == "job"));
        leases.record(&second, Instant::now() + LONG, received());
        assert!(matches!(leases.check(&first), Err(MailboxError::LeaseLost { .. })));
        assert!(matches!(leases.check(&second), Ok(Known::Held(_))));
    }

    #[test]
    fn a_sent_dead_letter_is_remembered_for_its_lease_only() {
        let leases = LocalLeases::default();
        let first = lease("m", "r1");
        leases.record(&first, Instant::now() + LONG, received());
        leases.mark_dead_letter_sent(&first);
        assert!(matches!(leases.received(&first), Ok(Known::Held(r)) if r.dead_letter_sent));
        // The message received again (its delete never happened) is a fresh delivery.
        let second = lease("m", "r2");
        leases.record(&second, Instant::now() + LONG, received());
        assert!(matches!(leases.received(&second), Ok(Known::Held(r)) if !r.dead_letter_sent));
    }

    #[test]
    fn a_lease_past_its_deadline_or_released_is_refused() {
        let leases = LocalLeases::default();
        let short = lease("a", "r1");
        leases.record(&short, Instant::now() + FINISH_MARGIN / 2, received());
        assert!(leases.check(&short).is_err());
        leases.extend(&short, Instant::now() + LONG);
        assert!(leases.check(&short).is_ok());
        leases.release(&short);
        assert!(leases.check(&short).is_err());
        leases.forget(&short);
        assert!(matches!(leases.check(&short), Ok(Known::Unknown)));
    }

    #[test]
    fn a_token_under_another_message_id_is_refused() {
        let leases = LocalLeases::default();
        leases.record(&lease("a", "r1"), Instant::now() + LONG, received());
        assert!(leases.check(&lease("b", "r1")).is_err());
    }

    #[test]
    fn pruning_keeps_recent_entries() {
        let leases = LocalLeases::default();
        let held = lease("a", "r1");
        leases.record(&held, Instant::now() + LONG, received());
        leases.prune();
        assert!(matches!(leases.check(&held), Ok(Known::Held(_))));
    }
}
