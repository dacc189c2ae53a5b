//! The embedded mailbox: one process, nothing survives a restart.
//!
//! Also the reference model: the Redis and SQS backends are tested against
//! the behaviour of this one.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use super::{
    Acked, DeadLetter, DeadLetterReason, DeadSelection, Delivery, Depth, Lease, Mailbox, MailboxError, PurgeScope,
    Reply, Sent, unix_ms,
};

/// How long a stored reply is remembered by default (and so how long a
/// re-sent request id is refused as a duplicate).
pub const DEFAULT_REPLY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// An in-process [`Mailbox`].
#[derive(Debug)]
pub struct MemoryMailbox {
    queue: String,
    reply_ttl: Duration,
    state: Mutex<State>,
    /// Woken whenever a message may have become claimable.
    claimable: Notify,
}

#[derive(Debug, Default)]
struct State {
    messages: HashMap<String, Message>,
    ready: VecDeque<String>,
    /// (lease expiry ms, message id)
    in_flight: BTreeSet<(u64, String)>,
    /// (due ms, message id)
    delayed: BTreeSet<(u64, String)>,
    dead: VecDeque<String>,
    /// request id -> (reply, expiry ms)
    replies: HashMap<String, (Bytes, u64)>,
    next_token: u64,
}

#[derive(Debug)]
struct Message {
    payload: Bytes,
    attempts: u32,
    enqueued_at_ms: u64,
    place: Place,
}

#[derive(Debug)]
enum Place {
    Ready,
    InFlight { token: String, expires_at_ms: u64 },
    Delayed,
    Dead { reason: DeadLetterReason, dead_at_ms: u64 },
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl MemoryMailbox {
    /// An empty queue named `queue`, remembering replies for [`DEFAULT_REPLY_TTL`].
    pub fn new(queue: impl Into<String>) -> Self {
        Self::with_reply_ttl(queue, DEFAULT_REPLY_TTL)
    }

    /// An empty queue remembering replies for `reply_ttl`.
    pub fn with_reply_ttl(queue: impl Into<String>, reply_ttl: Duration) -> Self {
        Self {
            queue: queue.into(),
            reply_ttl,
            state: Mutex::new(State::default()),
            claimable: Notify::new(),
        }
    }

    /// The state, with due delayed messages and lapsed leases made ready.
    fn state(&self) -> (MutexGuard<'_, State>, u64) {
        let now = now_ms();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.promote_due(now);
        state.reap(now);
        (state, now)
    }
}

impl State {
    fn promote_due(&mut self, now: u64) -> u64 {
        let mut promoted = 0;
        while let Some((due, _)) = self.delayed.first()
            && *due <= now
        {
            let Some((_, id)) = self.delayed.pop_first() else { break };
            self.make_ready(id);
            promoted += 1;
        }
        promoted
    }

    fn reap(&mut self, now: u64) -> u64 {
        let mut reaped = 0;
        while let Some((expiry, _)) = self.in_flight.first()
            && *expiry <= now
        {
            let Some((_, id)) = self.in_flight.pop_first() else {
                break;
            };
            self.make_ready(id);
            reaped += 1;
        }
        reaped
    }

    fn make_ready(&mut self, id: String) {
        if let Some(message) = self.messages.get_mut(&id) {
            message.place = Place::Ready;
            self.ready.push_back(id);
        }
    }

    /// The in-flight message `lease` names, if the lease is still held; it is
    /// taken out of the in-flight index.
    fn take_leased(&mut self, lease: &Lease) -> Result<&mut Message, MailboxError> {
        let lost = || MailboxError::LeaseLost {
            message_id: lease.message_id.clone(),
        };
        let message = self.messages.get_mut(&lease.message_id).ok_or_else(lost)?;
        let Place::InFlight { token, expires_at_ms } = &message.place else {
            return Err(lost());
        };
        if *token != lease.token {
            return Err(lost());
        }
        self.in_flight.remove(&(*expires_at_ms, lease.message_id.clone()));
        Ok(message)
    }

    fn claim(&mut self, max: usize, lease_for: Duration, now: u64) -> Vec<Delivery> {
        let mut batch = Vec::new();
        while batch.len() < max {
            let Some(id) = self.ready.pop_front() else { break };
            self.next_token += 1;
            let token = self.next_token.to_string();
            let expires_at_ms = now.saturating_add(ms(lease_for));
            let Some(message) = self.messages.get_mut(&id) else {
                continue;
            };
            message.attempts += 1;
            message.place = Place::InFlight {
                token: token.clone(),
                expires_at_ms,
            };
            self.in_flight.insert((expires_at_ms, id.clone()));
            batch.push(Delivery {
                lease: Lease { message_id: id, token },
                payload: message.payload.clone(),
                attempt: message.attempts,
                enqueued_at_ms: message.enqueued_at_ms,
                lease_expires_at_ms: expires_at_ms,
            });
        }
        batch
    }

    /// When the next delayed message comes due or lease lapses.
    fn next_change_ms(&self) -> Option<u64> {
        let delayed = self.delayed.first().map(|(due, _)| *due);
        let lease = self.in_flight.first().map(|(expiry, _)| *expiry);
        delayed.into_iter().chain(lease).min()
    }

    fn has_reply(&self, request_id: &str, now: u64) -> bool {
        self.replies.get(request_id).is_some_and(|(_, expires)| *expires > now)
    }
}

#[async_trait]
impl Mailbox for MemoryMailbox {
    fn queue(&self) -> &str {
        &self.queue
    }

    async fn send(&self, request_id: &str, payload: Bytes) -> Result<Sent, MailboxError> {
        let (mut state, now) = self.state();
        if state.messages.contains_key(request_id) || state.has_reply(request_id, now) {
            return Ok(Sent::Duplicate);
        }
        state.messages.insert(
            request_id.to_owned(),
            Message {
                payload,
                attempts: 0,
                enqueued_at_ms: now,
                place: Place::Ready,
            },
        );
        state.ready.push_back(request_id.to_owned());
        drop(state);
        self.claimable.notify_waiters();
        Ok(Sent::Enqueued)
    }

    async fn claim(&self, max: usize, lease_for: Duration, wait: Duration) -> Result<Vec<Delivery>, MailboxError> {
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.claimable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_change = {
                let (mut state, now) = self.state();
                let batch = state.claim(max, lease_for, now);
                if !batch.is_empty() || max == 0 {
                    return Ok(batch);
                }
                state
                    .next_change_ms()
                    .map(|at| tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now)))
            };
            let wake = next_change.map_or(give_up, |at| at.min(give_up));
            if tokio::time::Instant::now() >= give_up {
                return Ok(Vec::new());
            }
            let _ = tokio::time::timeout_at(wake, notified).await;
        }
    }

    async fn extend(&self, lease: &Lease, lease_for: Duration) -> Result<(), MailboxError> {
        let (mut state, now) = self.state();
        let message = state.take_leased(lease)?;
        let expires_at_ms = now.saturating_add(ms(lease_for));
        message.place = Place::InFlight {
            token: lease.token.clone(),
            expires_at_ms,
        };
        state.in_flight.insert((expires_at_ms, lease.message_id.clone()));
        Ok(())
    }

    async fn ack(&self, lease: &Lease, reply: &Reply) -> Result<Acked, MailboxError> {
        let (mut state, now) = self.state();
        state.take_leased(lease)?;
        state.messages.remove(&lease.message_id);
        if state.has_reply(&reply.request_id, now) {
            return Ok(Acked::AlreadyReplied);
        }
        let expires = now.saturating_add(ms(self.reply_ttl));
        state
            .replies
            .insert(reply.request_id.clone(), (reply.body.clone(), expires));
        Ok(Acked::Replied)
    }

    async fn nack(&self, lease: &Lease, delay: Duration) -> Result<(), MailboxError> {
        let (mut state, now) = self.state();
        let message = state.take_leased(lease)?;
        if delay.is_zero() {
            message.place = Place::Ready;
            state.ready.push_back(lease.message_id.clone());
            drop(state);
            self.claimable.notify_waiters();
        } else {
            let due_ms = now.saturating_add(ms(delay));
            message.place = Place::Delayed;
            state.delayed.insert((due_ms, lease.message_id.clone()));
        }
        Ok(())
    }

    async fn dead_letter(&self, lease: &Lease, reason: &DeadLetterReason) -> Result<(), MailboxError> {
        let (mut state, now) = self.state();
        let message = state.take_leased(lease)?;
        message.place = Place::Dead {
            reason: reason.clone(),
            dead_at_ms: now,
        };
        state.dead.push_back(lease.message_id.clone());
        Ok(())
    }

    async fn reap(&self) -> Result<u64, MailboxError> {
        let now = now_ms();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let reaped = state.reap(now);
        drop(state);
        if reaped > 0 {
            self.claimable.notify_waiters();
        }
        Ok(reaped)
    }

    async fn depth(&self) -> Result<Depth, MailboxError> {
        let (state, _) = self.state();
        Ok(Depth {
            ready: state.ready.len() as u64,
            in_flight: state.in_flight.len() as u64,
            delayed: state.delayed.len() as u64,
            dead: state.dead.len() as u64,
        })
    }

    async fn purge(&self, scope: PurgeScope) -> Result<u64, MailboxError> {
        let (mut state, _) = self.state();
        let removed: Vec<String> = match scope {
            PurgeScope::Pending => {
                let mut ids: Vec<String> = state.ready.drain(..).collect();
                ids.extend(std::mem::take(&mut state.delayed).into_iter().map(|(_, id)| id));
                ids
            }
            PurgeScope::Dead => state.dead.drain(..).collect(),
        };
        for id in &removed {
            state.messages.remove(id);
        }
        Ok(removed.len() as u64)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, MailboxError> {
        let (state, _) = self.state();
        Ok(state
            .dead
            .iter()
            .filter_map(|id| {
                let message = state.messages.get(id)?;
                let Place::Dead { reason, dead_at_ms } = &message.place else {
                    return None;
                };
                Some(DeadLetter {
                    message_id: id.clone(),
                    payload: message.payload.clone(),
                    reason: reason.clone(),
                    attempts: message.attempts,
                    enqueued_at_ms: message.enqueued_at_ms,
                    dead_at_ms: *dead_at_ms,
                })
            })
            .take(limit)
            .collect())
    }

    async fn requeue_dead(&self, selection: &DeadSelection) -> Result<u64, MailboxError> {
        let (mut state, _) = self.state();
        let chosen: Vec<String> = match selection {
            DeadSelection::All => state.dead.drain(..).collect(),
            DeadSelection::Ids(ids) => {
                let chosen: Vec<String> = state.dead.iter().filter(|id| ids.contains(id)).cloned().collect();
                state.dead.retain(|id| !ids.contains(id));
                chosen
            }
        };
        for id in &chosen {
            if let Some(message) = state.messages.get_mut(id) {
                message.attempts = 0;
            }
            state.make_ready(id.clone());
        }
        drop(state);
        self.claimable.notify_waiters();
        Ok(chosen.len() as u64)
    }

    async fn reply(&self, request_id: &str) -> Result<Option<Bytes>, MailboxError> {
        let (state, now) = self.state();
        Ok(state
            .replies
            .get(request_id)
            .filter(|(_, expires)| *expires > now)
            .map(|(body, _)| body.clone()))
    }
}
