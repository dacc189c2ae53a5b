//! The behaviour every [`Mailbox`] backend shares, written once against
//! `dyn Mailbox` and run for each backend: `mailbox_contract_tests!(factory)`
//! makes one `#[tokio::test]` per case; `run_all(&factory)` runs every case in
//! turn (for backends that are slow to start, such as a Redis Cluster).
//! [`wink_host::mailbox::MemoryMailbox`] is the reference model.

// The cases are test bodies that live outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use wink_host::mailbox::{
    Acked, DeadLetterReason, DeadSelection, Delivery, Lease, Mailbox, MailboxError, PurgeScope, Reply, Sent,
};

/// Makes fresh, empty queues of one backend.
#[async_trait]
pub trait MailboxFactory: Send + Sync {
    /// A new empty queue that keeps replies for `reply_ttl`.
    async fn fresh(&self, reply_ttl: Duration) -> Arc<dyn Mailbox>;
}

const LEASE: Duration = Duration::from_secs(30);
const NO_WAIT: Duration = Duration::ZERO;
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Long enough that a lapsed lease is not confused with a slow machine.
const SHORT_LEASE: Duration = Duration::from_millis(100);
const AFTER_SHORT_LEASE: Duration = Duration::from_millis(300);

/// Every case, in the order `run_all` runs them. The callback gets the list.
#[macro_export]
macro_rules! mailbox_contract_cases {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback! { $($args)* ;
            send_is_idempotent_on_request_id_until_the_reply_expires,
            send_batch_answers_each_message_in_order,
            claim_takes_a_batch_of_distinct_leases,
            claims_come_in_send_order,
            a_lapsed_lease_is_redelivered_and_the_stale_holder_is_refused,
            a_lapsed_lease_is_refused_before_anyone_reclaims_it,
            extending_keeps_the_lease,
            nack_with_delay_parks_then_redelivers,
            nack_without_delay_makes_it_ready_at_once,
            claim_waits_for_a_send,
            several_waiting_claimers_are_all_woken,
            claim_waits_for_a_delayed_message_to_come_due,
            claim_with_nothing_ready_waits_then_returns_empty,
            dead_letters_keep_their_reason_and_can_be_requeued,
            requeue_all_moves_every_dead_letter,
            a_second_reply_to_the_same_request_is_dropped,
            a_finished_lease_cannot_finish_again,
            ack_batch_answers_each_item_in_order,
            reap_returns_lapsed_leases,
            purge_pending_leaves_in_flight_messages_alone,
            dead_ids_stay_known_until_purged,
            depth_counts_each_state,
            concurrent_claimers_never_share_a_message,
        }
    };
}

/// One `#[tokio::test]` per contract case, each with a factory from `$factory`.
#[macro_export]
macro_rules! mailbox_contract_tests {
    ($factory:expr) => {
        $crate::mailbox_contract_cases!(mailbox_contract_test_fns!($factory));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! mailbox_contract_test_fns {
    ($factory:expr ; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let factory = $factory;
                $crate::common::mailbox_contract::$case(&factory).await;
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! mailbox_contract_run_all {
    ( ; $($case:ident),* $(,)?) => {
        /// Every case, one after another, on queues from `factory`.
        pub async fn run_all(factory: &dyn MailboxFactory) {
            $(
                eprintln!("mailbox contract: {}", stringify!($case));
                $case(factory).await;
            )*
        }
    };
}

crate::mailbox_contract_cases!(mailbox_contract_run_all!());

fn reply(request_id: &str, body: &'static str) -> Reply {
    Reply {
        request_id: request_id.into(),
        body: Bytes::from_static(body.as_bytes()),
    }
}

async fn claim_one(mailbox: &dyn Mailbox, lease: Duration) -> Delivery {
    let mut batch = mailbox.claim(1, lease, NO_WAIT).await.unwrap();
    assert_eq!(batch.len(), 1, "expected one delivery");
    batch.remove(0)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn is_lease_lost<T: std::fmt::Debug>(result: Result<T, MailboxError>) -> bool {
    matches!(result, Err(MailboxError::LeaseLost { .. }))
}

async fn send_all(mailbox: &dyn Mailbox, ids: &[&str]) {
    for id in ids {
        assert_eq!(
            mailbox.send(id, Bytes::from(id.to_string())).await.unwrap(),
            Sent::Enqueued,
            "{id}"
        );
    }
}

fn ids(batch: &[Delivery]) -> Vec<&str> {
    batch.iter().map(|d| d.lease.message_id.as_str()).collect()
}

pub async fn send_is_idempotent_on_request_id_until_the_reply_expires(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(Duration::from_millis(300)).await;
    assert_eq!(
        mailbox.send("r1", Bytes::from_static(b"a")).await.unwrap(),
        Sent::Enqueued
    );
    assert_eq!(
        mailbox.send("r1", Bytes::from_static(b"b")).await.unwrap(),
        Sent::Duplicate
    );
    let delivery = claim_one(&*mailbox, LEASE).await;
    assert_eq!(delivery.payload, Bytes::from_static(b"a"));
    assert_eq!(
        mailbox.send("r1", Bytes::from_static(b"c")).await.unwrap(),
        Sent::Duplicate,
        "in flight"
    );
    mailbox.ack(&delivery.lease, &reply("r1", "done")).await.unwrap();
    assert_eq!(
        mailbox.send("r1", Bytes::from_static(b"d")).await.unwrap(),
        Sent::Duplicate,
        "answered"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(mailbox.reply("r1").await.unwrap(), None, "the reply expired");
    assert_eq!(
        mailbox.send("r1", Bytes::from_static(b"e")).await.unwrap(),
        Sent::Enqueued
    );
    assert_eq!(claim_one(&*mailbox, LEASE).await.payload, Bytes::from_static(b"e"));
}

pub async fn send_batch_answers_each_message_in_order(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    mailbox.send("known", Bytes::new()).await.unwrap();
    let messages: Vec<(String, Bytes)> = ["a", "known", "b", "a"]
        .iter()
        .map(|id| (id.to_string(), Bytes::from(format!("payload of {id}"))))
        .collect();
    let results: Vec<Sent> = mailbox
        .send_batch(&messages)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        results,
        [Sent::Enqueued, Sent::Duplicate, Sent::Enqueued, Sent::Duplicate],
        "the second `a` repeats the first"
    );
    assert!(mailbox.send_batch(&[]).await.unwrap().is_empty());
    let batch = mailbox.claim(10, LEASE, NO_WAIT).await.unwrap();
    assert_eq!(ids(&batch), ["known", "a", "b"]);
    assert_eq!(batch[1].payload, Bytes::from("payload of a"), "the first `a` was kept");
}

pub async fn claim_takes_a_batch_of_distinct_leases(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    let before = now_ms();
    send_all(&*mailbox, &["a", "b", "c", "d", "e"]).await;
    let first = mailbox.claim(3, LEASE, NO_WAIT).await.unwrap();
    let rest = mailbox.claim(10, LEASE, NO_WAIT).await.unwrap();
    assert_eq!((first.len(), rest.len()), (3, 2));
    let all: Vec<&Delivery> = first.iter().chain(&rest).collect();
    let claimed: BTreeSet<&str> = all.iter().map(|d| d.lease.message_id.as_str()).collect();
    assert_eq!(claimed, BTreeSet::from(["a", "b", "c", "d", "e"]));
    // A token may be shared within one claim's batch, never across claims.
    let tokens = |batch: &[Delivery]| batch.iter().map(|d| d.lease.token.clone()).collect::<BTreeSet<_>>();
    assert!(tokens(&first).is_disjoint(&tokens(&rest)), "two claims shared a token");
    let after = now_ms();
    for delivery in all {
        assert_eq!(delivery.attempt, 1);
        assert_eq!(delivery.payload, Bytes::from(delivery.lease.message_id.clone()));
        // The backend's clock is this machine's (loopback); allow for skew anyway.
        assert!(
            delivery.enqueued_at_ms + 2_000 >= before && delivery.enqueued_at_ms <= after + 2_000,
            "enqueued_at_ms {} not near {before}..{after}",
            delivery.enqueued_at_ms
        );
        let lease_ms = LEASE.as_millis() as u64;
        assert!(
            delivery.lease_expires_at_ms + 2_000 >= before + lease_ms
                && delivery.lease_expires_at_ms <= after + lease_ms + 2_000,
            "lease_expires_at_ms {} is not {lease_ms} ms from now",
            delivery.lease_expires_at_ms
        );
    }
    assert!(mailbox.claim(10, LEASE, NO_WAIT).await.unwrap().is_empty());
    assert!(mailbox.claim(0, LEASE, NO_WAIT).await.unwrap().is_empty());
    assert_eq!(mailbox.depth().await.unwrap().in_flight, 5);
}

pub async fn claims_come_in_send_order(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    send_all(&*mailbox, &["a", "b", "c", "d"]).await;
    let first = mailbox.claim(2, LEASE, NO_WAIT).await.unwrap();
    assert_eq!(ids(&first), ["a", "b"]);
    mailbox.nack(&first[0].lease, NO_WAIT).await.unwrap();
    let rest = mailbox.claim(10, LEASE, NO_WAIT).await.unwrap();
    assert_eq!(ids(&rest), ["c", "d", "a"], "a given-back message goes to the back");
}

pub async fn a_lapsed_lease_is_redelivered_and_the_stale_holder_is_refused(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    mailbox.send("r1", Bytes::from_static(b"job")).await.unwrap();
    let first = claim_one(&*mailbox, SHORT_LEASE).await;
    assert_eq!(first.attempt, 1);
    let second = mailbox
        .claim(1, LEASE, Duration::from_secs(5))
        .await
        .unwrap()
        .pop()
        .expect("redelivered after the lease lapsed");
    assert_eq!(second.attempt, 2);
    assert_eq!(second.lease.message_id, first.lease.message_id);
    assert_ne!(second.lease.token, first.lease.token);
    assert!(is_lease_lost(mailbox.ack(&first.lease, &reply("r1", "stale")).await));
    assert!(is_lease_lost(mailbox.extend(&first.lease, LEASE).await));
    assert!(is_lease_lost(mailbox.nack(&first.lease, NO_WAIT).await));
    let reason = DeadLetterReason {
        kind: "stale".into(),
        message: "stale".into(),
    };
    assert!(is_lease_lost(mailbox.dead_letter(&first.lease, &reason).await));
    assert_eq!(mailbox.reply("r1").await.unwrap(), None, "the stale ack stored nothing");
    assert_eq!(
        mailbox.ack(&second.lease, &reply("r1", "fresh")).await.unwrap(),
        Acked::Replied
    );
    assert_eq!(mailbox.reply("r1").await.unwrap(), Some(Bytes::from_static(b"fresh")));
}

pub async fn a_lapsed_lease_is_refused_before_anyone_reclaims_it(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    mailbox.send("r1", Bytes::new()).await.unwrap();
    let late = claim_one(&*mailbox, SHORT_LEASE).await;
    tokio::time::sleep(AFTER_SHORT_LEASE).await;
    assert!(is_lease_lost(mailbox.extend(&late.lease, LEASE).await));
    assert!(is_lease_lost(mailbox.ack(&late.lease, &reply("r1", "late")).await));
    assert_eq!(mailbox.reply("r1").await.unwrap(), None);
    let again = claim_one(&*mailbox, LEASE).await;
    assert_eq!(again.attempt, 2);
}

pub async fn extending_keeps_the_lease(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    mailbox.send("r1", Bytes::new()).await.unwrap();
    let lease = Duration::from_millis(400);
    let delivery = claim_one(&*mailbox, lease).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        mailbox.extend(&delivery.lease, lease).await.unwrap();
    }
    assert!(mailbox.claim(1, LEASE, NO_WAIT).await.unwrap().is_empty());
    assert_eq!(mailbox.depth().await.unwrap().in_flight, 1);
    assert_eq!(
        mailbox.ack(&delivery.lease, &reply("r1", "ok")).await.unwrap(),
        Acked::Replied
    );
}

pub async fn nack_with_delay_parks_then_redelivers(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    mailbox.send("r1", Bytes::new()).await.unwrap();
    let delivery = claim_one(&*mailbox, LEASE).await;
    mailbox.nack(&delivery.lease, Duration::from_millis(200)).await.unwrap();
    let depth = mailbox.depth().await.unwrap();
    assert_eq!((depth.ready, depth.in_flight, depth.delayed), (0, 0, 1));
    assert!(mailbox.claim(1, LEASE, NO_WAIT).await.unwrap().is_empty());
    assert!(is_lease_lost(mailbox.ack(&delivery.lease, &reply("r1", "x")).await));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = mailbox.claim(1, LEASE, NO_WAIT).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
}

pub async fn nack_without_delay_makes_it_ready_at_once(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    mailbox.send("r1", Bytes::new()).await.unwrap();
    let delivery = claim_one(&*mailbox, LEASE).await;
    mailbox.nack(&delivery.lease, NO_WAIT).await.unwrap();
    assert_eq!(mailbox.depth().await.unwrap().ready, 1);
    let again = claim_one(&*mailbox, LEASE).await;
    assert_eq!(again.attempt, 2);
}

pub async fn claim_waits_for_a_send(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    let waiter = tokio::spawn({
        let mailbox = mailbox.clone();
        async move { mailbox.claim(8, LEASE, Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    mailbox.send("r1", Bytes::new()).await.unwrap();
    let batch = waiter.await.unwrap().unwrap();
    assert_eq!(ids(&batch), ["r1"]);
}

pub async fn several_waiting_claimers_are_all_woken(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let mailbox = mailbox.clone();
            tokio::spawn(async move { mailbox.claim(1, LEASE, Duration::from_secs(10)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    send_all(&*mailbox, &["a", "b", "c"]).await;
    let mut got = BTreeSet::new();
    for waiter in waiters {
        let batch = waiter.await.unwrap().unwrap();
        assert_eq!(batch.len(), 1, "each waiter gets one of the three");
        got.insert(batch[0].lease.message_id.clone());
    }
    assert_eq!(got, BTreeSet::from(["a".into(), "b".into(), "c".into()]));
}

pub async fn claim_waits_for_a_delayed_message_to_come_due(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    mailbox.send("r1", Bytes::new()).await.unwrap();
    let delivery = claim_one(&*mailbox, LEASE).await;
    mailbox.nack(&delivery.lease, Duration::from_millis(300)).await.unwrap();
    let again = mailbox.claim(1, LEASE, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ids(&again), ["r1"]);
    assert_eq!(again[0].attempt, 2);
}

pub async fn claim_with_nothing_ready_waits_then_returns_empty(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    let started = Instant::now();
    let batch = mailbox.claim(4, LEASE, Duration::from_millis(300)).await.unwrap();
    assert!(batch.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "returned after {:?}, before the wait was over",
        started.elapsed()
    );
}

pub async fn dead_letters_keep_their_reason_and_can_be_requeued(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    send_all(&*mailbox, &["a", "b"]).await;
    let reason = DeadLetterReason {
        kind: "malformed_envelope".into(),
        message: "not json: \"{\" at 1".into(),
    };
    let before = now_ms();
    for delivery in mailbox.claim(2, LEASE, NO_WAIT).await.unwrap() {
        mailbox.dead_letter(&delivery.lease, &reason).await.unwrap();
    }
    let dead = mailbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].reason, reason);
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(
        dead.iter().map(|d| d.message_id.as_str()).collect::<BTreeSet<_>>(),
        BTreeSet::from(["a", "b"])
    );
    for letter in &dead {
        assert_eq!(letter.payload, Bytes::from(letter.message_id.clone()));
        assert!(letter.dead_at_ms + 2_000 >= before && letter.dead_at_ms <= now_ms() + 2_000);
        assert!(letter.enqueued_at_ms <= letter.dead_at_ms);
    }
    assert_eq!(mailbox.dead_letters(1).await.unwrap().len(), 1);
    assert!(mailbox.dead_letters(0).await.unwrap().is_empty());
    let moved = mailbox
        .requeue_dead(&DeadSelection::Ids(vec!["b".into(), "missing".into()]))
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let depth = mailbox.depth().await.unwrap();
    assert_eq!((depth.ready, depth.dead), (1, 1));
    let again = claim_one(&*mailbox, LEASE).await;
    assert_eq!((again.lease.message_id.as_str(), again.attempt), ("b", 1));
    assert_eq!(mailbox.purge(PurgeScope::Dead).await.unwrap(), 1);
    assert_eq!(mailbox.depth().await.unwrap().dead, 0);
    assert!(mailbox.dead_letters(10).await.unwrap().is_empty());
}

pub async fn requeue_all_moves_every_dead_letter(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    send_all(&*mailbox, &["a", "b", "c"]).await;
    let reason = DeadLetterReason {
        kind: "max_attempts".into(),
        message: "failed 3 times".into(),
    };
    for delivery in mailbox.claim(3, LEASE, NO_WAIT).await.unwrap() {
        mailbox.dead_letter(&delivery.lease, &reason).await.unwrap();
    }
    assert_eq!(mailbox.requeue_dead(&DeadSelection::All).await.unwrap(), 3);
    assert_eq!(mailbox.requeue_dead(&DeadSelection::All).await.unwrap(), 0);
    let batch = mailbox.claim(10, LEASE, NO_WAIT).await.unwrap();
    assert_eq!(batch.len(), 3);
    assert!(batch.iter().all(|d| d.attempt == 1), "attempts start over");
}

pub async fn a_second_reply_to_the_same_request_is_dropped(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    mailbox.send("r1", Bytes::new()).await.unwrap();
    let first = claim_one(&*mailbox, LEASE).await;
    assert_eq!(mailbox.reply("r1").await.unwrap(), None);
    mailbox.ack(&first.lease, &reply("r1", "one")).await.unwrap();
    // A producer that lost track re-sends under another id, answering the same request.
    mailbox.send("r1-copy", Bytes::new()).await.unwrap();
    let copy = claim_one(&*mailbox, LEASE).await;
    assert_eq!(
        mailbox.ack(&copy.lease, &reply("r1", "two")).await.unwrap(),
        Acked::AlreadyReplied
    );
    assert_eq!(mailbox.reply("r1").await.unwrap(), Some(Bytes::from_static(b"one")));
    assert_eq!(mailbox.depth().await.unwrap().backlog(), 0, "both messages are gone");
}

pub async fn a_finished_lease_cannot_finish_again(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    mailbox.send("r1", Bytes::new()).await.unwrap();
    let delivery = claim_one(&*mailbox, LEASE).await;
    mailbox.ack(&delivery.lease, &reply("r1", "one")).await.unwrap();
    assert!(is_lease_lost(mailbox.ack(&delivery.lease, &reply("r1", "two")).await));
    assert!(is_lease_lost(mailbox.nack(&delivery.lease, NO_WAIT).await));
    assert!(is_lease_lost(mailbox.extend(&delivery.lease, LEASE).await));
    let forged = Lease {
        message_id: "never-sent".into(),
        token: delivery.lease.token.clone(),
    };
    assert!(is_lease_lost(mailbox.ack(&forged, &reply("never-sent", "x")).await));
    assert_eq!(mailbox.depth().await.unwrap().backlog(), 0);
}

pub async fn ack_batch_answers_each_item_in_order(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    send_all(&*mailbox, &["a", "b", "c"]).await;
    let batch = mailbox.claim(3, LEASE, NO_WAIT).await.unwrap();
    let by_id = |id: &str| batch.iter().find(|d| d.lease.message_id == id).unwrap().lease.clone();
    let wrong_token = Lease {
        message_id: "b".into(),
        token: format!("{}-not", by_id("b").token),
    };
    let results = mailbox
        .ack_batch(&[
            (by_id("a"), reply("a", "A")),
            (wrong_token, reply("b", "B?")),
            (by_id("c"), reply("c", "C")),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert!(matches!(results[0], Ok(Acked::Replied)));
    assert!(matches!(&results[1], Err(MailboxError::LeaseLost { message_id }) if message_id == "b"));
    assert!(matches!(results[2], Ok(Acked::Replied)));
    assert!(mailbox.ack_batch(&[]).await.unwrap().is_empty());
    assert_eq!(mailbox.reply("b").await.unwrap(), None);
    assert_eq!(mailbox.depth().await.unwrap().in_flight, 1, "b is still held");
    assert_eq!(
        mailbox.ack(&by_id("b"), &reply("b", "B")).await.unwrap(),
        Acked::Replied
    );
    for (id, body) in [("a", "A"), ("b", "B"), ("c", "C")] {
        assert_eq!(mailbox.reply(id).await.unwrap(), Some(Bytes::from(body)));
    }
}

pub async fn reap_returns_lapsed_leases(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    send_all(&*mailbox, &["a", "b", "c"]).await;
    let short = mailbox.claim(2, SHORT_LEASE, NO_WAIT).await.unwrap();
    let long = claim_one(&*mailbox, LEASE).await;
    tokio::time::sleep(AFTER_SHORT_LEASE).await;
    assert_eq!(mailbox.reap().await.unwrap(), 2);
    assert_eq!(mailbox.reap().await.unwrap(), 0);
    let depth = mailbox.depth().await.unwrap();
    assert_eq!((depth.ready, depth.in_flight), (2, 1));
    for delivery in &short {
        assert!(is_lease_lost(mailbox.extend(&delivery.lease, LEASE).await));
    }
    mailbox.extend(&long.lease, LEASE).await.unwrap();
}

pub async fn purge_pending_leaves_in_flight_messages_alone(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    send_all(&*mailbox, &["a", "b", "c", "d"]).await;
    let claimed = mailbox.claim(2, LEASE, NO_WAIT).await.unwrap();
    mailbox.nack(&claimed[1].lease, Duration::from_secs(600)).await.unwrap();
    assert_eq!(mailbox.purge(PurgeScope::Pending).await.unwrap(), 3);
    let depth = mailbox.depth().await.unwrap();
    assert_eq!((depth.ready, depth.in_flight, depth.delayed), (0, 1, 0));
    assert_eq!(
        mailbox
            .ack(&claimed[0].lease, &reply(&claimed[0].lease.message_id, "ok"))
            .await
            .unwrap(),
        Acked::Replied
    );
    let purged = &claimed[1].lease.message_id;
    assert_eq!(
        mailbox.send(purged, Bytes::new()).await.unwrap(),
        Sent::Enqueued,
        "a purged id is forgotten"
    );
    assert_eq!(mailbox.purge(PurgeScope::Pending).await.unwrap(), 1);
    assert_eq!(mailbox.purge(PurgeScope::Pending).await.unwrap(), 0);
}

pub async fn dead_ids_stay_known_until_purged(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    mailbox.send("a", Bytes::new()).await.unwrap();
    let delivery = claim_one(&*mailbox, LEASE).await;
    let reason = DeadLetterReason {
        kind: "poison".into(),
        message: "crashed the worker".into(),
    };
    mailbox.dead_letter(&delivery.lease, &reason).await.unwrap();
    assert_eq!(mailbox.send("a", Bytes::new()).await.unwrap(), Sent::Duplicate);
    assert_eq!(mailbox.purge(PurgeScope::Dead).await.unwrap(), 1);
    assert_eq!(mailbox.send("a", Bytes::new()).await.unwrap(), Sent::Enqueued);
}

pub async fn depth_counts_each_state(factory: &dyn MailboxFactory) {
    let mailbox = factory.fresh(DAY).await;
    send_all(&*mailbox, &["a", "b", "c", "d", "e", "f", "g"]).await;
    let claimed = mailbox.claim(4, LEASE, NO_WAIT).await.unwrap();
    mailbox.nack(&claimed[0].lease, Duration::from_secs(600)).await.unwrap();
    let reason = DeadLetterReason {
        kind: "k".into(),
        message: "m".into(),
    };
    mailbox.dead_letter(&claimed[1].lease, &reason).await.unwrap();
    let depth = mailbox.depth().await.unwrap();
    assert_eq!((depth.ready, depth.in_flight, depth.delayed, depth.dead), (3, 2, 1, 1));
    assert_eq!(depth.backlog(), 6);
}

pub async fn concurrent_claimers_never_share_a_message(factory: &dyn MailboxFactory) {
    const MESSAGES: usize = 300;
    let mailbox = factory.fresh(DAY).await;
    let claimers: Vec<_> = (0..4)
        .map(|_| {
            let mailbox = mailbox.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = mailbox.claim(7, LEASE, Duration::from_millis(500)).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    let acks: Vec<(Lease, Reply)> = batch
                        .iter()
                        .map(|d| {
                            let request_id = d.lease.message_id.clone();
                            (
                                d.lease.clone(),
                                Reply {
                                    request_id,
                                    body: Bytes::new(),
                                },
                            )
                        })
                        .collect();
                    for result in mailbox.ack_batch(&acks).await.unwrap() {
                        assert_eq!(result.unwrap(), Acked::Replied);
                    }
                    got.extend(batch.into_iter().map(|d| d.lease.message_id));
                }
            })
        })
        .collect();
    for i in 0..MESSAGES {
        mailbox.send(&format!("m{i}"), Bytes::new()).await.unwrap();
    }
    let mut seen = BTreeSet::new();
    for claimer in claimers {
        for id in claimer.await.unwrap() {
            assert!(seen.insert(id.clone()), "{id} was delivered twice");
        }
    }
    assert_eq!(seen.len(), MESSAGES);
    assert_eq!(mailbox.depth().await.unwrap().backlog(), 0);
}
