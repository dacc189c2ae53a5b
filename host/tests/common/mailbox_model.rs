//! A pure model of the mailbox state machine and a proptest property that
//! drives any [`Mailbox`] with random operations, checking every answer
//! against the model.
//!
//! Time never decides an outcome: leases are either [`LeaseLen::Long`] (an
//! hour: never lapses during a case) or [`LeaseLen::Zero`] (lapsed at once),
//! and retry delays are zero or an hour. The contract leaves open *when* a
//! lapsed lease returns to the ready queue (at any operation, or only at
//! [`Mailbox::reap`]), so the model keeps lapsed messages in a `Lapsed`
//! state that may answer either way: a claim may or may not return them,
//! depth may count them as ready or in flight, an operation with their old
//! lease may succeed or be refused with `LeaseLost`, and `reap` settles them.
//! Everything else is exact: attempts, payloads, duplicates, first reply
//! wins, dead-letter reasons and order, stale leases refused.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use wink_host::mailbox::{
    Acked, DeadLetterReason, DeadSelection, Depth, Lease, Mailbox, MailboxError, PurgeScope, Reply, Sent,
};

/// Request ids are drawn from a small pool, so duplicates and collisions are common.
pub const IDS: usize = 4;
/// A lease or delay that outlives any test case.
const LONG: Duration = Duration::from_secs(60 * 60);

fn request_id(index: usize) -> String {
    format!("req-{index}")
}

/// How long a claim or extension leases for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseLen {
    /// An hour: held for the rest of the case.
    Long,
    /// Zero: lapsed as soon as it is given.
    Zero,
}

impl LeaseLen {
    fn duration(self) -> Duration {
        match self {
            Self::Long => LONG,
            Self::Zero => Duration::ZERO,
        }
    }
}

/// Which lease an operation uses.
#[derive(Debug, Clone, Copy)]
pub enum LeasePick {
    /// The n-th (mod count) lease whose message is still in flight under it.
    Current(usize),
    /// The n-th (mod count) lease ever given, usually stale.
    Any(usize),
}

/// One mailbox operation.
#[derive(Debug, Clone)]
pub enum Op {
    Send {
        id: usize,
    },
    Claim {
        max: usize,
        lease: LeaseLen,
    },
    Extend {
        lease: LeasePick,
        len: LeaseLen,
    },
    /// Reply as `answers` (another request id) instead of the message's own.
    Ack {
        lease: LeasePick,
        answers: Option<usize>,
    },
    AckBatch {
        items: Vec<(LeasePick, Option<usize>)>,
    },
    Nack {
        lease: LeasePick,
        delayed: bool,
    },
    DeadLetter {
        lease: LeasePick,
        kind: usize,
    },
    Reap,
    Depth,
    Purge {
        dead: bool,
    },
    DeadLetters {
        limit: usize,
    },
    Requeue {
        all: bool,
        ids: Vec<usize>,
    },
    Reply {
        id: usize,
    },
}

fn lease_pick() -> impl Strategy<Value = LeasePick> {
    prop_oneof![
        6 => any::<usize>().prop_map(LeasePick::Current),
        1 => any::<usize>().prop_map(LeasePick::Any),
    ]
}

fn lease_len() -> impl Strategy<Value = LeaseLen> {
    prop_oneof![3 => Just(LeaseLen::Long), 1 => Just(LeaseLen::Zero)]
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..IDS;
    prop_oneof![
        6 => id.clone().prop_map(|id| Op::Send { id }),
        5 => (0..4usize, lease_len()).prop_map(|(max, lease)| Op::Claim { max, lease }),
        2 => (lease_pick(), lease_len()).prop_map(|(lease, len)| Op::Extend { lease, len }),
        4 => (lease_pick(), proptest::option::weighted(0.25, id.clone()))
            .prop_map(|(lease, answers)| Op::Ack { lease, answers }),
        1 => proptest::collection::vec((lease_pick(), proptest::option::weighted(0.25, id.clone())), 0..4)
            .prop_map(|items| Op::AckBatch { items }),
        2 => (lease_pick(), any::<bool>()).prop_map(|(lease, delayed)| Op::Nack { lease, delayed }),
        3 => (lease_pick(), 0..2usize).prop_map(|(lease, kind)| Op::DeadLetter { lease, kind }),
        1 => Just(Op::Reap),
        2 => Just(Op::Depth),
        1 => proptest::bool::weighted(0.3).prop_map(|dead| Op::Purge { dead }),
        2 => (0..4usize).prop_map(|limit| Op::DeadLetters { limit }),
        1 => (any::<bool>(), proptest::collection::vec(id.clone(), 0..3))
            .prop_map(|(all, ids)| Op::Requeue { all, ids }),
        1 => id.prop_map(|id| Op::Reply { id }),
    ]
}

/// Sequences of operations, as the property draws them.
pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..60)
}

#[derive(Debug, Clone, PartialEq)]
enum Place {
    Ready,
    /// In flight under lease number `lease`, which has not lapsed.
    Held {
        lease: usize,
    },
    /// In flight under lease number `lease`, which has lapsed: the backend
    /// may treat it as ready or as still in flight until it is reaped.
    Lapsed {
        lease: usize,
    },
    Delayed,
    Dead {
        reason: DeadLetterReason,
    },
}

#[derive(Debug)]
struct Message {
    payload: Bytes,
    attempts: u32,
    place: Place,
}

/// The model's state, plus what it learned of the backend's message ids.
#[derive(Debug, Default)]
pub struct Model {
    messages: BTreeMap<usize, Message>,
    /// Request id index -> stored reply.
    replies: BTreeMap<usize, Bytes>,
    /// Every lease given, with the request id index it was given for.
    leases: Vec<(Lease, usize)>,
    /// Dead request ids, oldest first.
    dead: Vec<usize>,
    /// Request id index -> the backend's message id, from its latest delivery.
    message_ids: BTreeMap<usize, String>,
    sends: u64,
}

/// Whether an operation on a lapsed lease was honoured or refused.
enum LapsedOutcome {
    Honoured,
    Refused,
}

impl Model {
    fn count(&self, wanted: impl Fn(&Place) -> bool) -> u64 {
        self.messages.values().filter(|m| wanted(&m.place)).count() as u64
    }

    /// The index of the picked lease; `None` if no lease was ever given.
    fn pick(&self, pick: LeasePick) -> Option<usize> {
        match pick {
            LeasePick::Current(n) => {
                let current: Vec<usize> = self
                    .messages
                    .values()
                    .filter_map(|m| match m.place {
                        Place::Held { lease } | Place::Lapsed { lease } => Some(lease),
                        _ => None,
                    })
                    .collect();
                if current.is_empty() {
                    self.pick(LeasePick::Any(n))
                } else {
                    Some(current[n % current.len()])
                }
            }
            LeasePick::Any(n) => (!self.leases.is_empty()).then(|| n % self.leases.len()),
        }
    }

    /// The place of the message lease `index` was given for, if that lease is its current one.
    fn current_place(&self, index: usize) -> Option<&Place> {
        let id = self.leases[index].1;
        self.messages
            .get(&id)
            .map(|m| &m.place)
            .filter(|place| matches!(place, Place::Held { lease } | Place::Lapsed { lease } if *lease == index))
    }

    /// Judge a lease operation's result before its effect is applied:
    /// `Ok(Some(_))` means the lease was honoured and the effect applies.
    fn judge<T>(&self, index: usize, result: &Result<T, MailboxError>) -> Result<Option<LapsedOutcome>, String>
    where
        T: std::fmt::Debug,
    {
        let lost = matches!(result, Err(MailboxError::LeaseLost { .. }));
        match (self.current_place(index), result) {
            (Some(Place::Held { .. }), Ok(_)) => Ok(Some(LapsedOutcome::Honoured)),
            (Some(Place::Held { .. }), _) => Err(format!("a held lease was refused: {result:?}")),
            (Some(Place::Lapsed { .. }), Ok(_)) => Ok(Some(LapsedOutcome::Honoured)),
            (Some(Place::Lapsed { .. }), _) if lost => Ok(Some(LapsedOutcome::Refused)),
            (None, _) if lost => Ok(None),
            (_, _) => Err(format!("a stale lease got {result:?}, not LeaseLost")),
        }
    }

    fn finish(&mut self, index: usize) -> Option<&mut Message> {
        let id = self.leases[index].1;
        self.messages.get_mut(&id)
    }

    fn remove(&mut self, id: usize) {
        self.messages.remove(&id);
        self.message_ids.remove(&id);
        self.dead.retain(|dead| *dead != id);
    }

    /// Run `op` on `mailbox` and check its answer.
    pub async fn step(&mut self, mailbox: &dyn Mailbox, op: &Op) -> Result<(), String> {
        match op {
            Op::Send { id } => self.send(mailbox, *id).await,
            Op::Claim { max, lease } => self.claim(mailbox, *max, *lease).await,
            Op::Extend { lease, len } => self.on_lease(mailbox, *lease, LeaseOp::Extend(*len)).await,
            Op::Ack { lease, answers } => self.on_lease(mailbox, *lease, LeaseOp::Ack(*answers)).await,
            Op::AckBatch { items } => self.ack_batch(mailbox, items).await,
            Op::Nack { lease, delayed } => self.on_lease(mailbox, *lease, LeaseOp::Nack(*delayed)).await,
            Op::DeadLetter { lease, kind } => self.on_lease(mailbox, *lease, LeaseOp::DeadLetter(*kind)).await,
            Op::Reap => self.reap(mailbox).await,
            Op::Depth => self.depth(mailbox).await,
            Op::Purge { dead } => self.purge(mailbox, *dead).await,
            Op::DeadLetters { limit } => self.dead_letters(mailbox, *limit).await,
            Op::Requeue { all, ids } => self.requeue(mailbox, *all, ids).await,
            Op::Reply { id } => {
                let got = mailbox.reply(&request_id(*id)).await.map_err(|e| e.to_string())?;
                expect_eq("reply", got.as_ref(), self.replies.get(id))
            }
        }
    }

    async fn send(&mut self, mailbox: &dyn Mailbox, id: usize) -> Result<(), String> {
        self.sends += 1;
        let payload = Bytes::from(format!("{}#{}", request_id(id), self.sends));
        let got = mailbox
            .send(&request_id(id), payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        let known = self.messages.contains_key(&id) || self.replies.contains_key(&id);
        expect_eq("send", got, if known { Sent::Duplicate } else { Sent::Enqueued })?;
        if got == Sent::Enqueued {
            self.messages.insert(
                id,
                Message {
                    payload,
                    attempts: 0,
                    place: Place::Ready,
                },
            );
        }
        Ok(())
    }

    async fn claim(&mut self, mailbox: &dyn Mailbox, max: usize, len: LeaseLen) -> Result<(), String> {
        let batch = mailbox
            .claim(max, len.duration(), Duration::ZERO)
            .await
            .map_err(|e| e.to_string())?;
        let ready = self.count(|p| *p == Place::Ready) as usize;
        let lapsed = self.count(|p| matches!(p, Place::Lapsed { .. })) as usize;
        let (least, most) = (max.min(ready), max.min(ready + lapsed));
        if batch.len() < least || batch.len() > most {
            return Err(format!(
                "claim({max}) returned {} messages; {ready} ready and {lapsed} lapsed allow {least}..={most}",
                batch.len()
            ));
        }
        for delivery in batch {
            let id = id_of(&delivery.payload)?;
            let lease_index = self.leases.len();
            let message = self
                .messages
                .get_mut(&id)
                .ok_or_else(|| format!("claim returned {:?}, which is not queued", delivery.payload))?;
            expect_eq("claimed payload", &delivery.payload, &message.payload)?;
            if !matches!(message.place, Place::Ready | Place::Lapsed { .. }) {
                return Err(format!("claim returned {id} while it is {:?}", message.place));
            }
            message.attempts += 1;
            expect_eq("attempt", delivery.attempt, message.attempts)?;
            message.place = match len {
                LeaseLen::Long => Place::Held { lease: lease_index },
                LeaseLen::Zero => Place::Lapsed { lease: lease_index },
            };
            self.message_ids.insert(id, delivery.lease.message_id.clone());
            self.leases.push((delivery.lease, id));
        }
        Ok(())
    }

    async fn on_lease(&mut self, mailbox: &dyn Mailbox, pick: LeasePick, op: LeaseOp) -> Result<(), String> {
        let Some(index) = self.pick(pick) else {
            return Ok(());
        };
        let (lease, id) = self.leases[index].clone();
        match op {
            LeaseOp::Extend(len) => {
                let result = mailbox.extend(&lease, len.duration()).await;
                if let Some(LapsedOutcome::Honoured) = self.judge(index, &result)? {
                    let message = self.finish(index).ok_or("extended message vanished")?;
                    message.place = match len {
                        LeaseLen::Long => Place::Held { lease: index },
                        LeaseLen::Zero => Place::Lapsed { lease: index },
                    };
                }
            }
            LeaseOp::Ack(answers) => {
                let reply = self.reply_for(index, answers);
                let result = mailbox.ack(&lease, &reply).await;
                self.acked(index, &reply, result)?;
            }
            LeaseOp::Nack(delayed) => {
                let delay = if delayed { LONG } else { Duration::ZERO };
                let result = mailbox.nack(&lease, delay).await;
                if let Some(LapsedOutcome::Honoured) = self.judge(index, &result)? {
                    let message = self.finish(index).ok_or("nacked message vanished")?;
                    message.place = if delayed { Place::Delayed } else { Place::Ready };
                }
            }
            LeaseOp::DeadLetter(kind) => {
                let reason = DeadLetterReason {
                    kind: format!("kind-{kind}"),
                    message: format!("lease {index}"),
                };
                let result = mailbox.dead_letter(&lease, &reason).await;
                if let Some(LapsedOutcome::Honoured) = self.judge(index, &result)? {
                    let message = self.finish(index).ok_or("dead-lettered message vanished")?;
                    message.place = Place::Dead { reason };
                    self.dead.push(id);
                }
            }
        }
        Ok(())
    }

    /// The reply an ack with lease `index` sends: as its own request, or as `answers`.
    fn reply_for(&self, index: usize, answers: Option<usize>) -> Reply {
        Reply {
            request_id: request_id(answers.unwrap_or(self.leases[index].1)),
            body: Bytes::from(format!("reply-{index}-{}", self.sends)),
        }
    }

    fn acked(&mut self, index: usize, reply: &Reply, result: Result<Acked, MailboxError>) -> Result<(), String> {
        if let Some(LapsedOutcome::Honoured) = self.judge(index, &result)? {
            let answered = id_of_request(&reply.request_id)?;
            let expected = match self.replies.entry(answered) {
                Entry::Occupied(_) => Acked::AlreadyReplied,
                Entry::Vacant(slot) => {
                    slot.insert(reply.body.clone());
                    Acked::Replied
                }
            };
            expect_eq("ack", result.ok(), Some(expected))?;
            self.remove(self.leases[index].1);
        }
        Ok(())
    }

    /// Several acks in one call, judged in order: a later item sees the effect of an earlier one.
    async fn ack_batch(&mut self, mailbox: &dyn Mailbox, items: &[(LeasePick, Option<usize>)]) -> Result<(), String> {
        let mut batch = Vec::new();
        for (pick, answers) in items {
            if let Some(index) = self.pick(*pick) {
                batch.push((index, self.reply_for(index, *answers)));
            }
        }
        let acks: Vec<(Lease, Reply)> = batch
            .iter()
            .map(|(index, reply)| (self.leases[*index].0.clone(), reply.clone()))
            .collect();
        let results = mailbox.ack_batch(&acks).await.map_err(|e| e.to_string())?;
        expect_eq("ack_batch results", results.len(), batch.len())?;
        for ((index, reply), result) in batch.iter().zip(results) {
            self.acked(*index, reply, result)
                .map_err(|err| format!("item for lease {index}: {err}"))?;
        }
        Ok(())
    }

    async fn reap(&mut self, mailbox: &dyn Mailbox) -> Result<(), String> {
        let reaped = mailbox.reap().await.map_err(|e| e.to_string())?;
        let lapsed = self.count(|p| matches!(p, Place::Lapsed { .. }));
        if reaped > lapsed {
            return Err(format!("reap returned {reaped} with only {lapsed} lapsed leases"));
        }
        for message in self.messages.values_mut() {
            if matches!(message.place, Place::Lapsed { .. }) {
                message.place = Place::Ready;
            }
        }
        Ok(())
    }

    async fn depth(&self, mailbox: &dyn Mailbox) -> Result<(), String> {
        let got = mailbox.depth().await.map_err(|e| e.to_string())?;
        let ready = self.count(|p| *p == Place::Ready);
        let held = self.count(|p| matches!(p, Place::Held { .. }));
        let lapsed = self.count(|p| matches!(p, Place::Lapsed { .. }));
        let expected = Depth {
            ready,
            in_flight: held,
            delayed: self.count(|p| *p == Place::Delayed),
            dead: self.count(|p| matches!(p, Place::Dead { .. })),
        };
        let lapsed_as_ready = got.ready.wrapping_sub(ready);
        let fits = got.delayed == expected.delayed
            && got.dead == expected.dead
            && lapsed_as_ready <= lapsed
            && got.in_flight == held + lapsed - lapsed_as_ready;
        if !fits {
            return Err(format!(
                "depth {got:?}; expected {expected:?} with {lapsed} lapsed counted either way"
            ));
        }
        Ok(())
    }

    async fn purge(&mut self, mailbox: &dyn Mailbox, dead: bool) -> Result<(), String> {
        let scope = if dead { PurgeScope::Dead } else { PurgeScope::Pending };
        let removed = mailbox.purge(scope).await.map_err(|e| e.to_string())?;
        let doomed = |place: &Place| match place {
            Place::Dead { .. } => dead,
            Place::Ready | Place::Delayed => !dead,
            _ => false,
        };
        let base: Vec<usize> = self.ids_where(doomed);
        let lapsed: Vec<usize> = if dead {
            Vec::new()
        } else {
            self.ids_where(|p| matches!(p, Place::Lapsed { .. }))
        };
        let mut gone = base.clone();
        if removed == (base.len() + lapsed.len()) as u64 {
            gone.extend(lapsed);
        } else if removed != base.len() as u64 {
            return Err(format!(
                "purge({scope:?}) removed {removed}; expected {} (or {} with the lapsed leases)",
                base.len(),
                base.len() + lapsed.len()
            ));
        }
        for id in gone {
            self.remove(id);
        }
        Ok(())
    }

    fn ids_where(&self, wanted: impl Fn(&Place) -> bool) -> Vec<usize> {
        self.messages
            .iter()
            .filter(|(_, m)| wanted(&m.place))
            .map(|(id, _)| *id)
            .collect()
    }

    async fn dead_letters(&self, mailbox: &dyn Mailbox, limit: usize) -> Result<(), String> {
        let got = mailbox.dead_letters(limit).await.map_err(|e| e.to_string())?;
        let expected: Vec<usize> = self.dead.iter().take(limit).copied().collect();
        let got_ids = got
            .iter()
            .map(|letter| id_of(&letter.payload))
            .collect::<Result<Vec<_>, _>>()?;
        expect_eq("dead letters (oldest first)", &got_ids, &expected)?;
        for (letter, id) in got.iter().zip(expected) {
            let message = &self.messages[&id];
            let Place::Dead { reason } = &message.place else {
                return Err(format!("{id} is listed dead but is {:?}", message.place));
            };
            expect_eq("dead letter reason", &letter.reason, reason)?;
            expect_eq("dead letter attempts", letter.attempts, message.attempts)?;
            expect_eq("dead letter payload", &letter.payload, &message.payload)?;
            expect_eq("dead letter id", Some(&letter.message_id), self.message_ids.get(&id))?;
        }
        Ok(())
    }

    async fn requeue(&mut self, mailbox: &dyn Mailbox, all: bool, ids: &[usize]) -> Result<(), String> {
        let selection = if all {
            DeadSelection::All
        } else {
            DeadSelection::Ids(
                ids.iter()
                    .map(|id| {
                        self.message_ids
                            .get(id)
                            .cloned()
                            .unwrap_or_else(|| format!("never-claimed-{id}"))
                    })
                    .collect(),
            )
        };
        let moved = mailbox.requeue_dead(&selection).await.map_err(|e| e.to_string())?;
        let chosen: Vec<usize> = self.dead.iter().copied().filter(|id| all || ids.contains(id)).collect();
        expect_eq("requeued", moved, chosen.len() as u64)?;
        for id in chosen {
            if let Some(message) = self.messages.get_mut(&id) {
                message.place = Place::Ready;
                message.attempts = 0;
            }
            self.dead.retain(|dead| *dead != id);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum LeaseOp {
    Extend(LeaseLen),
    Ack(Option<usize>),
    Nack(bool),
    DeadLetter(usize),
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, expected: T) -> Result<(), String> {
    if got == expected {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {expected:?}"))
    }
}

/// The request id index a model payload (`req-N#SEQ`) was sent under.
fn id_of(payload: &Bytes) -> Result<usize, String> {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|text| text.strip_prefix("req-"))
        .and_then(|rest| rest.split('#').next())
        .and_then(|index| index.parse().ok())
        .ok_or_else(|| format!("payload {payload:?} was not sent by the model"))
}

/// The index of a model request id (`req-N`).
fn id_of_request(request_id: &str) -> Result<usize, String> {
    request_id
        .strip_prefix("req-")
        .and_then(|index| index.parse().ok())
        .ok_or_else(|| format!("request id `{request_id}` is not the model's"))
}

/// Run `ops` against a fresh mailbox; the first disagreement, with its step.
pub async fn run(mailbox: &dyn Mailbox, ops: &[Op]) -> Result<(), String> {
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        model
            .step(mailbox, op)
            .await
            .map_err(|err| format!("step {step} {op:?}: {err}"))?;
    }
    Ok(())
}

/// Check the property on `cases` random sequences (`PROPTEST_CASES`
/// overrides), each against a fresh mailbox from `factory`; the shrunk
/// failing sequence on error.
pub fn check<F, Fut>(cases: u32, factory: F) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Mailbox>>,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(cases);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&ops(), |ops| {
            runtime
                .block_on(async {
                    let mailbox = factory().await;
                    run(mailbox.as_ref(), &ops).await
                })
                .map_err(TestCaseError::fail)
        })
        .map_err(|err| err.to_string())
}
