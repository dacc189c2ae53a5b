//! The SQS mailbox against a real moto server started by each test.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::moto::Moto;
use wink_host::mailbox::{
    Acked, DeadLetterReason, DeadSelection, Delivery, Lease, Mailbox, MailboxError, PurgeScope, Reply, Sent,
    SqsMailbox, SqsOptions,
};

const LEASE: Duration = Duration::from_secs(30);
const NO_WAIT: Duration = Duration::ZERO;
/// Long enough for any redelivery these tests expect; claims return as soon as one comes.
const PATIENCE: Duration = Duration::from_secs(10);

/// A moto server and mailboxes on it.
struct Sqs {
    moto: Moto,
}

impl Sqs {
    async fn start() -> Self {
        Self {
            moto: Moto::start().await,
        }
    }

    fn url(&self, params: &str) -> String {
        format!("sqs://?endpoint={}{params}", self.moto.endpoint())
    }

    /// Queue `queue`, created with its dead-letter queue; `params` adds URL parameters.
    async fn mailbox(&self, queue: &str, params: &str) -> SqsMailbox {
        self.try_open(queue, &format!("&create=true{params}"))
            .await
            .unwrap_or_else(|err| panic!("opening {queue}: {err}"))
    }

    async fn try_open(&self, queue: &str, params: &str) -> Result<SqsMailbox, MailboxError> {
        let options = SqsOptions::from_url(&self.url(params))?;
        SqsMailbox::connect(&self.moto.sdk_config(), queue, &options).await
    }
}

fn reply(request_id: &str, body: &str) -> Reply {
    Reply {
        request_id: request_id.into(),
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

fn reason(kind: &str, message: &str) -> DeadLetterReason {
    DeadLetterReason {
        kind: kind.into(),
        message: message.into(),
    }
}

async fn claim_one(mailbox: &SqsMailbox, lease: Duration, wait: Duration) -> Delivery {
    let mut batch = mailbox.claim(1, lease, wait).await.expect("claim");
    assert_eq!(batch.len(), 1, "expected one delivery, got {batch:?}");
    batch.remove(0)
}

fn assert_lost<T: std::fmt::Debug>(result: Result<T, MailboxError>) {
    assert!(
        matches!(result, Err(MailboxError::LeaseLost { .. })),
        "expected LeaseLost, got {result:?}"
    );
}

#[tokio::test]
async fn send_claim_ack_round_trip_any_payload() {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs", "").await;
    let payloads = [
        ("json", Bytes::from_static(br#"{"version":1}"#)),
        ("empty", Bytes::new()),
        ("binary", Bytes::from_static(b"\x00\xffnot text")),
    ];
    for (id, payload) in &payloads {
        assert_eq!(mailbox.send(id, payload.clone()).await.unwrap(), Sent::Enqueued);
    }
    let mut batch = mailbox.claim(10, LEASE, PATIENCE).await.unwrap();
    while batch.len() < payloads.len() {
        batch.extend(mailbox.claim(10, LEASE, PATIENCE).await.unwrap());
    }
    assert_eq!(batch.len(), payloads.len());
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    for (_, payload) in &payloads {
        let delivery = batch
            .iter()
            .find(|d| d.payload == payload)
            .unwrap_or_else(|| panic!("{payload:?} not delivered"));
        assert_eq!(delivery.attempt, 1);
        assert!(delivery.enqueued_at_ms <= now_ms && delivery.enqueued_at_ms + 60_000 > now_ms);
        assert!(delivery.lease_expires_at_ms > now_ms);
    }
    for delivery in &batch {
        assert_eq!(
            mailbox.ack(&delivery.lease, &reply("r", "done")).await.unwrap(),
            Acked::Replied
        );
        assert_lost(mailbox.ack(&delivery.lease, &reply("r", "again")).await);
    }
    assert!(mailbox.claim(10, LEASE, NO_WAIT).await.unwrap().is_empty());
    assert_eq!(mailbox.depth().await.unwrap().backlog(), 0);
}

#[tokio::test]
async fn a_lapsed_lease_is_redelivered_and_the_stale_holder_is_refused() {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs", "").await;
    mailbox.send("r1", Bytes::from_static(b"job")).await.unwrap();
    let first = claim_one(&mailbox, Duration::from_secs(1), PATIENCE).await;
    assert_eq!(first.attempt, 1);
    let second = claim_one(&mailbox, LEASE, PATIENCE).await;
    assert_eq!(second.attempt, 2, "ApproximateReceiveCount counts the lapsed delivery");
    assert_eq!(second.lease.message_id, first.lease.message_id);
    assert_lost(mailbox.extend(&first.lease, LEASE).await);
    assert_lost(mailbox.nack(&first.lease, Duration::ZERO).await);
    assert_lost(mailbox.ack(&first.lease, &reply("r1", "stale")).await);
    assert_lost(
        mailbox
            .dead_letter(&first.lease, &reason("stale", "must not win"))
            .await,
    );
    // SQS itself would have let the stale handle delete the message: it is still there.
    assert_eq!(mailbox.depth().await.unwrap().in_flight, 1);
    assert_eq!(
        mailbox.ack(&second.lease, &reply("r1", "fresh")).await.unwrap(),
        Acked::Replied
    );
    assert_eq!(mailbox.depth().await.unwrap().backlog(), 0);
}

#[tokio::test]
async fn extending_keeps_the_lease() {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs", "").await;
    mailbox.send("r1", Bytes::new()).await.unwrap();
    let delivery = claim_one(&mailbox, Duration::from_secs(2), PATIENCE).await;
    // Held for 4 s in all, twice its first lease.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        mailbox.extend(&delivery.lease, Duration::from_secs(3)).await.unwrap();
    }
    assert!(mailbox.claim(1, LEASE, NO_WAIT).await.unwrap().is_empty());
    mailbox.ack(&delivery.lease, &reply("r1", "ok")).await.unwrap();
    assert_lost(mailbox.extend(&delivery.lease, LEASE).await);
}

#[tokio::test]
async fn nack_delays_the_retry_and_ends_the_lease() {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs", "").await;
    mailbox.send("r1", Bytes::new()).await.unwrap();
    let first = claim_one(&mailbox, LEASE, PATIENCE).await;
    mailbox.nack(&first.lease, Duration::from_secs(2)).await.unwrap();
    assert!(mailbox.claim(1, LEASE, NO_WAIT).await.unwrap().is_empty());
    // SQS cannot tell a delayed retry from a lease: both are "not visible".
    assert_eq!(mailbox.depth().await.unwrap().in_flight, 1);
    assert_lost(mailbox.ack(&first.lease, &reply("r1", "gave it back")).await);
    let second = claim_one(&mailbox, LEASE, PATIENCE).await;
    assert_eq!(second.attempt, 2);
    mailbox.nack(&second.lease, Duration::ZERO).await.unwrap();
    let third = claim_one(&mailbox, LEASE, NO_WAIT).await;
    assert_eq!(third.attempt, 3);
}

#[tokio::test]
async fn dead_letters_keep_their_reason_and_can_be_requeued() {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs", "").await;
    for id in ["a", "b"] {
        mailbox.send(id, Bytes::from(id)).await.unwrap();
    }
    let mut ids = std::collections::HashMap::new();
    for _ in 0..2 {
        let delivery = claim_one(&mailbox, LEASE, PATIENCE).await;
        let why = reason("malformed_envelope", "not json: \u{0} control chars survive");
        mailbox.dead_letter(&delivery.lease, &why).await.unwrap();
        ids.insert(delivery.payload.clone(), delivery.lease.message_id.clone());
    }
    let depth = mailbox.depth().await.unwrap();
    assert_eq!((depth.ready, depth.in_flight, depth.dead), (0, 0, 2));
    let dead = mailbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    for letter in &dead {
        assert_eq!(letter.reason.kind, "malformed_envelope");
        assert_eq!(letter.reason.message, "not json: \u{FFFD} control chars survive");
        assert_eq!(letter.attempts, 1);
        assert_eq!(ids[&letter.payload], letter.message_id);
        assert!(letter.dead_at_ms >= letter.enqueued_at_ms);
    }
    assert!(dead[0].dead_at_ms <= dead[1].dead_at_ms, "oldest first");
    assert_eq!(mailbox.dead_letters(1).await.unwrap().len(), 1);
    // Listing gives them back: still two dead, none ready.
    assert_eq!(mailbox.depth().await.unwrap().dead, 2);

    let b = ids[&Bytes::from("b")].clone();
    let moved = mailbox
        .requeue_dead(&DeadSelection::Ids(vec![b, "no-such-id".into()]))
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let again = claim_one(&mailbox, LEASE, PATIENCE).await;
    assert_eq!(
        (again.payload.as_ref(), again.attempt),
        (&b"b"[..], 1),
        "fresh attempt count"
    );
    let remaining = mailbox.dead_letters(10).await.unwrap();
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].payload, Bytes::from("a"));
    mailbox
        .dead_letter(&again.lease, &reason("max_attempts", "gave up"))
        .await
        .unwrap();
    assert_eq!(mailbox.purge(PurgeScope::Dead).await.unwrap(), 2);
    assert_eq!(mailbox.depth().await.unwrap().dead, 0);
    assert_eq!(mailbox.requeue_dead(&DeadSelection::All).await.unwrap(), 0);
}

#[tokio::test]
async fn requeue_all_moves_every_dead_letter_back() {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs", "").await;
    dead_letters(&mailbox, 12).await;
    assert_eq!(mailbox.requeue_dead(&DeadSelection::All).await.unwrap(), 12);
    let depth = mailbox.depth().await.unwrap();
    assert_eq!((depth.ready, depth.dead), (12, 0));
}

#[tokio::test]
async fn a_dead_letter_the_queue_refuses_stays_dead_and_the_others_are_requeued() {
    let sqs = Sqs::start().await;
    create_sized_queues(&sqs, 2048, 2048).await;
    let mailbox = sqs.try_open("jobs", "").await.expect("open");
    let big = Bytes::from(vec![b'x'; 1200]);
    mailbox.send("big", big.clone()).await.unwrap();
    mailbox.send("small", Bytes::from("small")).await.unwrap();
    let mut big_id = None;
    for _ in 0..2 {
        let delivery = claim_one(&mailbox, LEASE, PATIENCE).await;
        if delivery.payload == big {
            big_id = Some(delivery.lease.message_id.clone());
        }
        mailbox.dead_letter(&delivery.lease, &reason("k", "m")).await.unwrap();
    }
    let big_id = big_id.expect("the big message was claimed");
    // The queue now takes less than the big dead letter holds.
    sqs.moto.set_max_message_size("jobs", 1024).await;

    let err = mailbox.requeue_dead(&DeadSelection::All).await.unwrap_err();
    let MailboxError::RequeueRefused { moved, refused, first } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((moved, refused), (&1, &1));
    assert!(
        first.contains(&format!("`{big_id}`")) && first.contains("1024"),
        "{first}"
    );
    let back = claim_one(&mailbox, LEASE, PATIENCE).await;
    assert_eq!(back.payload, Bytes::from("small"));
    let dead = mailbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0].message_id.as_str(), &dead[0].payload), (big_id.as_str(), &big));
}

/// Send `count` jobs (`r0`, `r1`, ...) and dead-letter every one.
async fn dead_letters(mailbox: &SqsMailbox, count: usize) {
    for index in 0..count {
        mailbox
            .send(&format!("r{index}"), Bytes::from("x"))
            .await
            .expect("send");
    }
    let mut dead = 0;
    while dead < count {
        for delivery in mailbox.claim(10, LEASE, PATIENCE).await.expect("claim") {
            mailbox
                .dead_letter(&delivery.lease, &reason("k", "m"))
                .await
                .expect("dead-letter");
            dead += 1;
        }
    }
}

/// Fifteen dead letters requeued through a proxy that lets `passes`
/// requests of SQS operation `operation` through and cuts the later ones:
/// the requeue's error, how many requeuing again at once (without the
/// proxy) moves, and then the ready and dead messages.
async fn requeue_cut_off(operation: &'static [u8], passes: usize) -> (MailboxError, u64, (u64, u64)) {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs", "").await;
    dead_letters(&mailbox, 15).await;
    let endpoint = sqs.moto.cut_off_endpoint(operation, passes).await;
    let options = SqsOptions::from_url(&format!("sqs://?endpoint={endpoint}")).expect("url");
    let cut_off = SqsMailbox::connect(&sqs.moto.sdk_config(), "jobs", &options)
        .await
        .expect("open through the proxy");

    let err = cut_off
        .requeue_dead(&DeadSelection::All)
        .await
        .expect_err("the requeue is cut off");
    let again = mailbox.requeue_dead(&DeadSelection::All).await.expect("requeue again");
    let depth = mailbox.depth().await.expect("depth");
    (err, again, (depth.ready, depth.dead))
}

#[tokio::test]
async fn a_requeue_the_mailbox_fails_partway_through_counts_what_it_moved() {
    // SQS goes away after one scan of ten.
    let (err, again, depth) = requeue_cut_off(b"AmazonSQS.ReceiveMessage", 1).await;
    let MailboxError::RequeueInterrupted { moved, refused, source } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((moved, refused), (&10, &0));
    assert!(matches!(**source, MailboxError::Unavailable(_)), "{source:?}");
    assert!(
        err.to_string()
            .starts_with("requeued 10 dead letters, then the mailbox failed: mailbox unavailable"),
        "{err}"
    );
    assert_eq!(again, 5, "the ten stay moved");
    assert_eq!(depth, (15, 0));
}

#[tokio::test]
async fn a_requeue_cut_off_within_a_scan_gives_back_the_letters_it_had_not_moved() {
    // SQS goes away at the fourth letter's send, within the first scan.
    let (err, again, depth) = requeue_cut_off(b"AmazonSQS.SendMessage", 3).await;
    assert!(
        matches!(
            err,
            MailboxError::RequeueInterrupted {
                moved: 3,
                refused: 0,
                ..
            }
        ),
        "{err:?}"
    );
    // Those of the cut-off scan included: none is left hidden.
    assert_eq!(again, 12);
    assert_eq!(depth, (15, 0));
}

#[tokio::test]
async fn a_letter_requeued_but_not_deleted_when_sqs_goes_away_counts_as_moved() {
    // SQS goes away at the fourth letter's delete, after its copy was sent.
    let (err, again, depth) = requeue_cut_off(b"AmazonSQS.DeleteMessage", 3).await;
    assert!(
        matches!(
            err,
            MailboxError::RequeueInterrupted {
                moved: 4,
                refused: 0,
                ..
            }
        ),
        "{err:?}"
    );
    // Requeuing again at once finds the other eleven; the fourth's dead
    // original stays held until its hold lapses (then it is requeued twice).
    assert_eq!(again, 11);
    assert_eq!(depth, (15, 1));
}

#[tokio::test]
async fn a_reply_queue_beside_the_queue_needs_no_dead_letter_queue_and_is_never_created() {
    let sqs = Sqs::start().await;
    // Even on a mailbox that creates its own queues.
    let mailbox = sqs.mailbox("jobs", "").await;
    create_sized_queue(&sqs, "callers", 262_144).await;
    let callers = mailbox.sibling("callers").expect("a reply queue");
    assert_eq!(callers.queue(), "callers");
    assert_eq!(
        callers.send("r1", Bytes::from("the reply")).await.unwrap(),
        Sent::Enqueued
    );
    let client = aws_sdk_sqs::Client::new(&sqs.moto.sdk_config());
    let url = client.get_queue_url().queue_name("callers").send().await.unwrap();
    let message = only_message(&client, url.queue_url).await;
    assert!(
        message.body().is_some_and(|body| body.contains("the reply")),
        "{message:?}"
    );
    let request_id = message
        .message_attributes()
        .and_then(|attributes| attributes.get("wink-request-id"))
        .and_then(|value| value.string_value());
    assert_eq!(request_id, Some("r1"), "{message:?}");

    let nowhere = mailbox.sibling("nowhere").expect("a reply queue");
    let err = nowhere.send("r2", Bytes::from("lost")).await.unwrap_err().to_string();
    assert!(
        err.contains("NonExistentQueue") || err.contains("QueueDoesNotExist"),
        "{err}"
    );
    let listed = client.list_queues().send().await.unwrap();
    assert!(
        !listed.queue_urls().iter().any(|url| url.contains("nowhere")),
        "{listed:?}"
    );
    assert!(mailbox.sibling("not a queue name").is_none());
    assert!(mailbox.sibling("jobs-dlq").is_none(), "never the dead-letter queue");
}

#[tokio::test]
async fn a_fifo_reply_queue_beside_a_standard_one_gets_each_reply_once() {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs", "").await;
    let client = aws_sdk_sqs::Client::new(&sqs.moto.sdk_config());
    let created = client
        .create_queue()
        .queue_name("callers.fifo")
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap();
    let callers = mailbox.sibling("callers.fifo").expect("a reply queue");
    for expected in [Sent::Enqueued, Sent::Duplicate] {
        assert_eq!(callers.send("r1", Bytes::from("the reply")).await.unwrap(), expected);
    }
    let message = only_message(&client, created.queue_url).await;
    assert!(
        message.attributes().is_some_and(
            |attributes| attributes.contains_key(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId)
        ),
        "{message:?}"
    );
}

#[tokio::test]
async fn purge_removes_pending_messages_but_not_leased_ones() {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs", "").await;
    for id in ["a", "b", "c"] {
        mailbox.send(id, Bytes::from(id)).await.unwrap();
    }
    let leased = claim_one(&mailbox, LEASE, PATIENCE).await;
    let depth = mailbox.depth().await.unwrap();
    assert_eq!((depth.ready, depth.in_flight, depth.delayed, depth.dead), (2, 1, 0, 0));
    assert_eq!(mailbox.purge(PurgeScope::Pending).await.unwrap(), 2);
    let depth = mailbox.depth().await.unwrap();
    assert_eq!((depth.ready, depth.in_flight), (0, 1));
    assert_eq!(
        mailbox.ack(&leased.lease, &reply("a", "ok")).await.unwrap(),
        Acked::Replied
    );
    assert_eq!(mailbox.depth().await.unwrap().backlog(), 0);
}

#[tokio::test]
async fn a_fifo_queue_drops_duplicate_sends_and_still_requeues() {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs.fifo", "").await;
    let other_handle = sqs.mailbox("jobs.fifo", "").await;
    assert!(mailbox.dlq_url().ends_with("jobs-dlq.fifo"));
    assert_eq!(
        mailbox.send("r1", Bytes::from_static(b"first")).await.unwrap(),
        Sent::Enqueued
    );
    assert_eq!(
        mailbox.send("r1", Bytes::from_static(b"second")).await.unwrap(),
        Sent::Duplicate
    );
    // Another handle cannot know, but SQS drops it all the same.
    other_handle.send("r1", Bytes::from_static(b"third")).await.unwrap();
    mailbox.send("r2", Bytes::from_static(b"other")).await.unwrap();
    let mut batch = mailbox.claim(10, LEASE, PATIENCE).await.unwrap();
    batch.extend(mailbox.claim(10, LEASE, Duration::from_secs(2)).await.unwrap());
    let mut payloads: Vec<_> = batch.iter().map(|d| d.payload.clone()).collect();
    payloads.sort();
    assert_eq!(payloads, [Bytes::from_static(b"first"), Bytes::from_static(b"other")]);

    // Dead-lettering and requeueing inside the 5-minute window must not be
    // swallowed by deduplication. Moto deduplicates only against messages
    // still queued (SQS remembers an id for 5 minutes even after deletion),
    // so queue another copy of r1 for a requeue reusing the id to collide with.
    let first = batch.iter().find(|d| d.payload == "first").unwrap();
    mailbox.dead_letter(&first.lease, &reason("k", "m")).await.unwrap();
    let fresh_handle = sqs.try_open("jobs.fifo", "").await.unwrap();
    assert_eq!(
        fresh_handle.send("r1", Bytes::from_static(b"fourth")).await.unwrap(),
        Sent::Enqueued
    );
    assert_eq!(mailbox.requeue_dead(&DeadSelection::All).await.unwrap(), 1);
    let mut payloads = Vec::new();
    loop {
        let batch = mailbox.claim(10, LEASE, Duration::from_secs(2)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        payloads.extend(batch.into_iter().map(|delivery| delivery.payload));
    }
    assert!(
        payloads.contains(&Bytes::from_static(b"first")),
        "the requeued message never came back; got {payloads:?}"
    );
}

#[tokio::test]
async fn the_redrive_policy_dead_letters_messages_that_keep_lapsing() {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs", "&max_receives=2").await;
    mailbox
        .send("r1", Bytes::from_static(b"crashes workers"))
        .await
        .unwrap();
    for attempt in 1..=2 {
        // A zero lease lapses at once, like a worker dying mid-job.
        let delivery = claim_one(&mailbox, Duration::ZERO, PATIENCE).await;
        assert_eq!(delivery.attempt, attempt);
    }
    assert!(
        mailbox
            .claim(1, LEASE, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    let dead = mailbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason.kind, "redrive");
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].payload, Bytes::from_static(b"crashes workers"));
    // A handle opened without naming the dead-letter queue finds it through the policy.
    let reopened = sqs.try_open("jobs", "").await.unwrap();
    assert_eq!(reopened.dlq_url(), mailbox.dlq_url());
}

#[tokio::test]
async fn replies_go_to_the_replies_queue_and_cannot_be_looked_up() {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs", "&replies=answers").await;
    let answers = sqs.mailbox("answers", "").await;
    mailbox.send("r1", Bytes::from_static(b"job")).await.unwrap();
    let delivery = claim_one(&mailbox, LEASE, PATIENCE).await;
    mailbox
        .ack(&delivery.lease, &reply("r1", r#"{"ok":true}"#))
        .await
        .unwrap();
    let answer = claim_one(&answers, LEASE, PATIENCE).await;
    assert_eq!(answer.payload, Bytes::from_static(br#"{"ok":true}"#));
    let err = mailbox.reply("r1").await.unwrap_err();
    assert!(matches!(err, MailboxError::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("sqs mailbox stores no replies"), "{err}");
}

#[tokio::test]
async fn a_lease_from_another_handle_is_refused_once_its_message_is_gone() {
    let sqs = Sqs::start().await;
    let mailbox = sqs.mailbox("jobs", "").await;
    let other = sqs.try_open("jobs", "").await.unwrap();
    mailbox.send("r1", Bytes::new()).await.unwrap();
    let delivery = claim_one(&mailbox, LEASE, PATIENCE).await;
    mailbox.ack(&delivery.lease, &reply("r1", "ok")).await.unwrap();
    assert_lost(other.ack(&delivery.lease, &reply("r1", "late")).await);
    let forged = Lease {
        message_id: "nope".into(),
        token: "not-a-receipt-handle".into(),
    };
    assert!(other.extend(&forged, LEASE).await.is_err());
}

#[tokio::test]
async fn claim_long_polls_until_a_send() {
    let sqs = Sqs::start().await;
    let mailbox = std::sync::Arc::new(sqs.mailbox("jobs", "").await);
    let waiter = tokio::spawn({
        let mailbox = mailbox.clone();
        async move { mailbox.claim(5, LEASE, Duration::from_secs(15)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "claim returned before anything was sent");
    mailbox.send("r1", Bytes::from_static(b"late")).await.unwrap();
    let batch = waiter.await.unwrap().unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].payload, Bytes::from_static(b"late"));
}

#[tokio::test]
async fn opening_refuses_bad_names_and_missing_queues_by_name() {
    let sqs = Sqs::start().await;
    let missing = sqs.try_open("nowhere", "").await.unwrap_err().to_string();
    assert!(missing.contains("`nowhere` does not exist"), "{missing}");
    let bad = sqs.try_open("a:b", "").await.unwrap_err().to_string();
    assert!(bad.contains("`a:b`"), "{bad}");
    let mixed = sqs
        .try_open("jobs.fifo", "&create=true&dlq=plain")
        .await
        .unwrap_err()
        .to_string();
    assert!(mixed.contains("`plain`"), "{mixed}");
    let scheme = wink_host::mailbox::open("sqs://?colour=blue", "jobs")
        .await
        .unwrap_err()
        .to_string();
    assert!(scheme.contains("unknown parameter `colour`"), "{scheme}");
}

/// Queue `name`, made here rather than by a mailbox, taking messages of up
/// to `max` bytes.
async fn create_sized_queue(sqs: &Sqs, name: &str, max: usize) {
    aws_sdk_sqs::Client::new(&sqs.moto.sdk_config())
        .create_queue()
        .queue_name(name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
            max.to_string(),
        )
        .send()
        .await
        .unwrap_or_else(|err| panic!("creating {name}: {err:?}"));
}

/// Queues `jobs` and `jobs-dlq` taking messages of up to `main` and `dead` bytes.
async fn create_sized_queues(sqs: &Sqs, main: usize, dead: usize) {
    create_sized_queue(sqs, "jobs", main).await;
    create_sized_queue(sqs, "jobs-dlq", dead).await;
}

#[tokio::test]
async fn opening_refuses_a_dead_letter_queue_that_takes_smaller_messages() {
    let sqs = Sqs::start().await;
    create_sized_queues(&sqs, 2048, 1024).await;
    let err = sqs.try_open("jobs", "").await.unwrap_err().to_string();
    assert!(
        err.contains("jobs-dlq takes messages of up to 1024 bytes")
            && err.contains("raise its MaximumMessageSize to 2048"),
        "{err}"
    );
}

#[tokio::test]
async fn every_message_sent_can_be_dead_lettered_with_its_reason_clipped_to_fit() {
    let sqs = Sqs::start().await;
    create_sized_queues(&sqs, 1024, 1024).await;
    let mailbox = sqs.try_open("jobs", "").await.expect("open");

    // A payload that fits the queue but would leave no room for a dead
    // letter's attributes is refused up front, naming the sizes.
    let refused = mailbox
        .send("big", Bytes::from(vec![b'x'; 1000]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("`big`") && refused.contains("MaximumMessageSize, 1024"),
        "{refused}"
    );

    // The largest that fits: 1024 less the room kept (512) and the
    // attributes `send` writes (`wink-request-id`: 15 + 6 + 4;
    // `wink-enqueued-at`: 16 + 6 + 13).
    let largest = vec![b'x'; 1024 - 512 - 25 - 35];
    let refused = mailbox.send("fits", Bytes::from(vec![b'x'; largest.len() + 1])).await;
    assert!(matches!(refused, Err(MailboxError::Invalid(_))), "{refused:?}");
    mailbox.send("fits", Bytes::from(largest.clone())).await.expect("send");
    let delivery = claim_one(&mailbox, LEASE, PATIENCE).await;
    let why = reason("malformed_envelope", &"y".repeat(4000));
    mailbox
        .dead_letter(&delivery.lease, &why)
        .await
        .expect("the dead letter fits");
    let dead = mailbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, Bytes::from(largest));
    assert_eq!(dead[0].reason.kind, "malformed_envelope");
    let kept = dead[0].reason.message.len();
    assert!(kept > 0 && kept < 512, "{kept} bytes of the reason kept");
}

#[tokio::test]
async fn a_reply_larger_than_the_replies_queue_takes_dead_letters_the_job_instead_of_failing_the_ack() {
    let sqs = Sqs::start().await;
    create_sized_queue(&sqs, "answers", 1024).await;
    let mailbox = sqs.mailbox("jobs", "&replies=answers").await;
    for id in ["small", "large"] {
        mailbox.send(id, Bytes::from(id)).await.expect("send");
    }
    for _ in 0..2 {
        let delivery = claim_one(&mailbox, LEASE, PATIENCE).await;
        let id = String::from_utf8(delivery.payload.to_vec()).expect("utf-8");
        let body = if id == "large" {
            "r".repeat(2000)
        } else {
            "ok".to_owned()
        };
        let acked = mailbox.ack(&delivery.lease, &reply(&id, &body)).await.expect("ack");
        let expected = if id == "large" {
            Acked::DeadLettered {
                kind: "reply_too_large",
            }
        } else {
            Acked::Replied
        };
        assert_eq!(acked, expected, "{id}");
    }
    let depth = mailbox.depth().await.unwrap();
    assert_eq!(
        (depth.ready, depth.in_flight, depth.dead),
        (0, 0, 1),
        "nothing to run again"
    );
    let dead = mailbox.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].payload, Bytes::from("large"));
    assert_eq!(dead[0].reason.kind, "reply_too_large");
    assert!(
        dead[0].reason.message.contains("more than the 1024"),
        "{}",
        dead[0].reason.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dead_letters_a_job_whose_reply_its_replies_queue_cannot_take() {
    use common::worker_jobs::{dead_letters, envelope, eventually, send};
    use wink_host::worker::ReplyRoutes;

    let sqs = Sqs::start().await;
    create_sized_queue(&sqs, "answers", 1024).await;
    let mailbox = std::sync::Arc::new(sqs.mailbox("jobs", "&replies=answers").await);
    let worker = sqs_worker(mailbox.clone(), ReplyRoutes::registered_only());
    // The trivial agent echoes its input: this one's reply is over 2 KB.
    let large = envelope("large", "trivial", serde_json::json!({"text": "t".repeat(2000)}));
    send(mailbox.as_ref(), &large).await;
    send(mailbox.as_ref(), &envelope("small", "trivial", serde_json::json!({}))).await;

    let dead = dead_letters(mailbox.as_ref(), 1).await;
    assert_eq!(dead[0].reason.kind, "reply_too_large", "{dead:?}");
    eventually("both jobs settled", Duration::from_secs(10), || async {
        let depth = mailbox.depth().await.expect("depth");
        (depth.ready == 0 && depth.in_flight == 0).then_some(())
    })
    .await;
    let summary = worker.stop().await;
    assert_eq!(
        (summary.dead_lettered, summary.succeeded, summary.claimed),
        (1, 1, 2),
        "{summary:?}"
    );
    assert_eq!(mailbox.depth().await.expect("depth").dead, 1);
}

#[tokio::test]
async fn a_worker_sends_replies_to_a_plain_reply_to_queue_and_creates_none() {
    use common::worker_jobs::{envelope, eventually, send};
    use wink_host::worker::ReplyRoutes;

    let sqs = Sqs::start().await;
    create_sized_queue(&sqs, "callers", 262_144).await;
    // A worker that creates its own queues, as its URL says.
    let url = sqs.url("&create=true");
    let mailbox = std::sync::Arc::new(sqs.mailbox("jobs", "").await);
    let worker = sqs_worker(mailbox.clone(), ReplyRoutes::beside(mailbox.clone(), url));
    let mut answered = envelope("answered", "trivial", serde_json::json!({"n": 1}));
    answered.reply_to = Some("callers".into());
    send(mailbox.as_ref(), &answered).await;
    let mut unanswered = envelope("unanswered", "trivial", serde_json::json!({"n": 2}));
    unanswered.reply_to = Some("nowhere".into());
    send(mailbox.as_ref(), &unanswered).await;

    let client = aws_sdk_sqs::Client::new(&sqs.moto.sdk_config());
    let callers = client.get_queue_url().queue_name("callers").send().await.unwrap();
    let reply = eventually("the reply in callers", Duration::from_secs(20), || async {
        let received = client
            .receive_message()
            .set_queue_url(callers.queue_url.clone())
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        received
            .messages()
            .first()
            .and_then(|message| message.body().map(str::to_owned))
    })
    .await;
    assert!(reply.contains("answered") && reply.contains("succeeded"), "{reply}");
    eventually("both jobs settled", Duration::from_secs(20), || async {
        let depth = mailbox.depth().await.expect("depth");
        (depth.ready == 0 && depth.in_flight == 0).then_some(())
    })
    .await;
    let summary = worker.stop().await;
    assert_eq!((summary.succeeded, summary.dead_lettered), (2, 0), "{summary:?}");
    let listed = client.list_queues().send().await.unwrap();
    assert!(
        !listed.queue_urls().iter().any(|url| url.contains("nowhere")),
        "{listed:?}"
    );
}

/// The one message waiting in the queue at `url`, with its attributes.
async fn only_message(client: &aws_sdk_sqs::Client, url: Option<String>) -> aws_sdk_sqs::types::Message {
    let received = client
        .receive_message()
        .set_queue_url(url)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap_or_else(|err| panic!("receiving: {err:?}"));
    match received.messages() {
        [message] => message.clone(),
        _ => panic!("one message: {received:?}"),
    }
}

/// A worker on `mailbox`, sending replies by `routes`, polling briskly.
fn sqs_worker(
    mailbox: std::sync::Arc<SqsMailbox>,
    routes: wink_host::worker::ReplyRoutes,
) -> common::worker_jobs::Running<SqsMailbox> {
    let config = wink_host::worker::WorkerConfig {
        worker_id: Some("sqs-worker".into()),
        poll_wait: common::worker_jobs::ms(200),
        ..wink_host::worker::WorkerConfig::default()
    };
    common::worker_jobs::Running::start(
        common::runtime(),
        mailbox,
        config,
        wink_host::worker::JobResources::default(),
        routes,
    )
}
