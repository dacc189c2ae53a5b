//! Batched acks: replies that complete together are stored with one
//! `ack_batch` call, so a busy worker pays one mailbox round trip for many jobs.
//! A batch waits up to `ack_linger` for more jobs to finish before it goes,
//! so that jobs finishing a little apart share its span (and, where the
//! backend batches, its call) too.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{MAILBOX_RETRY, Shared};
use crate::mailbox::{Acked, Lease, MailboxError, Reply};
use crate::telemetry::{BatchOperation, BatchSpans, SpanLink};

/// Attempts at acking a job while the mailbox is unreachable; after them
/// the lease lapses and the job runs again (its reply is deduplicated where
/// the backend stores replies; a queue a reply was sent to gets it twice).
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
        /// The job's span, for the ack's span to link to.
        job_span: Option<SpanLink>,
    },
    /// Everything sent before this is acked: answer and stop.
    Stop(oneshot::Sender<()>),
}

/// Ack whatever is queued, a batch at a time, until told to stop.
pub(crate) async fn run(shared: Arc<Shared>, mut queue: mpsc::Receiver<AckItem>) {
    let cap = BatchCap::new(
        shared.config.ack_batch,
        shared.batch_spans.as_ref().map(BatchSpans::max_links),
    );
    let linger = shared.config.ack_linger.0;
    // What was received and not yet acked: a batch cut short by its span's
    // links leaves the rest here for the next.
    let mut items = Vec::with_capacity(cap.jobs);
    let mut batch = Vec::with_capacity(cap.jobs);
    let mut succeeded = Vec::with_capacity(cap.jobs);
    let mut job_spans = Vec::new();
    loop {
        if items.is_empty() && queue.recv_many(&mut items, cap.jobs).await == 0 {
            return;
        }
        linger_for_more(&mut queue, &mut items, cap, linger).await;
        let mut stop = None;
        let batched = cap.batched(&items);
        for item in items.drain(..batched) {
            match item {
                AckItem::Ack {
                    lease,
                    reply,
                    succeeded: ok,
                    job_span,
                } => {
                    batch.push((lease, reply));
                    succeeded.push(ok);
                    job_spans.extend(job_span);
                }
                AckItem::Stop(done) => stop = Some(done),
            }
        }
        if !batch.is_empty() {
            ack(&shared, &batch, &succeeded, job_spans.drain(..)).await;
            batch.clear();
            succeeded.clear();
        }
        if let Some(done) = stop {
            let _ = done.send(());
            return;
        }
    }
}

/// How much one batch of acks holds: at most `jobs` (`ack_batch`), and
/// where acks are spans (keeping at most `links` links each), no more jobs
/// with a span to link than one span keeps, so that every job's link is
/// kept. Jobs whose spans are not exported (unsampled) take no link, so
/// under a sampling ratio a batch can hold more of them. A span that keeps
/// no links at all caps nothing: its links are gone whatever the batch.
#[derive(Debug, Clone, Copy)]
struct BatchCap {
    jobs: usize,
    links: usize,
}

impl BatchCap {
    fn new(ack_batch: usize, max_links: Option<usize>) -> Self {
        Self {
            jobs: ack_batch.max(1),
            links: max_links.filter(|links| *links > 0).unwrap_or(usize::MAX),
        }
    }

    /// Whether `items` fill a batch.
    fn is_full(self, items: &[AckItem]) -> bool {
        items.len() >= self.jobs || links(items) >= self.links
    }

    /// How many of `items`, from the first, one batch takes: at least one,
    /// as both caps are.
    fn batched(self, items: &[AckItem]) -> usize {
        let mut links = 0;
        for (taken, item) in items.iter().enumerate() {
            if taken == self.jobs || links + item.links() > self.links {
                return taken;
            }
            links += item.links();
        }
        items.len()
    }
}

impl AckItem {
    /// The links to job spans the ack's span takes for this item.
    fn links(&self) -> usize {
        usize::from(matches!(self, Self::Ack { job_span: Some(_), .. }))
    }
}

/// The links to job spans the ack's span takes for `items`.
fn links(items: &[AckItem]) -> usize {
    items.iter().map(AckItem::links).sum()
}

/// Add to `items` what is already queued, then, unless that fills a batch
/// or the acker is told to stop, wait `linger` and add what arrived
/// meanwhile, until they fill a batch. The acker sleeps through the linger
/// rather than waking for each job that finishes in it.
async fn linger_for_more(
    queue: &mut mpsc::Receiver<AckItem>,
    items: &mut Vec<AckItem>,
    cap: BatchCap,
    linger: Duration,
) {
    take_ready(queue, items, cap);
    if linger.is_zero() || stopping(items) || cap.is_full(items) {
        return;
    }
    tokio::time::sleep(linger).await;
    take_ready(queue, items, cap);
}

/// Add to `items` what is already queued, until they fill a batch or hold
/// the stop (after which nothing is sent).
fn take_ready(queue: &mut mpsc::Receiver<AckItem>, items: &mut Vec<AckItem>, cap: BatchCap) {
    let mut links = links(items);
    while items.len() < cap.jobs && links < cap.links && !stopping(items) {
        match queue.try_recv() {
            Ok(item) => {
                links += item.links();
                items.push(item);
            }
            Err(_) => return,
        }
    }
}

/// Whether `items` end with the stop, the last item the acker is sent.
fn stopping(items: &[AckItem]) -> bool {
    items.last().is_some_and(|item| matches!(item, AckItem::Stop(_)))
}

async fn ack(
    shared: &Shared,
    batch: &[(Lease, Reply)],
    succeeded: &[bool],
    job_spans: impl IntoIterator<Item = SpanLink>,
) {
    let call = shared.batch_spans.as_ref().map(BatchSpans::start);
    let results = ack_with_retries(shared, batch).await;
    if let Some(call) = call {
        // A job dead-lettered for want of room for its reply was not acked.
        let failed = results
            .iter()
            .filter(|result| !matches!(result, Ok(Acked::Replied | Acked::AlreadyReplied)))
            .count();
        call.end(BatchOperation::Ack, batch.len(), failed, job_spans);
    }
    let mut acked = 0;
    for (((lease, reply), ok), result) in batch.iter().zip(succeeded).zip(results) {
        match result {
            Ok(Acked::DeadLettered { kind }) => {
                shared.count_dead_letter(kind);
                tracing::warn!(
                    request_id = %reply.request_id,
                    message_id = %lease.message_id,
                    kind,
                    "the reply could not be kept; the message was dead-lettered instead"
                );
                shared.forget(&reply.request_id).await;
            }
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
            // Already reported when the retries gave up.
            Err(MailboxError::Unavailable(_)) => {}
            Err(err) => tracing::warn!(request_id = %reply.request_id, error = %err, "ack failed"),
        }
    }
    if acked > 0 {
        shared.runtime.metrics().mailbox_acked(shared.queue(), acked);
    }
}

/// The per-item results of acking `batch`, reporting the mailbox's health.
async fn ack_with_retries(shared: &Shared, batch: &[(Lease, Reply)]) -> Vec<Result<Acked, MailboxError>> {
    retrying_unreachable(batch, MAILBOX_RETRY, &mut WorkerAcks(shared)).await
}

/// The per-item results of one `ack_batch` call, or why it failed as a whole.
type BatchAnswer = Result<Vec<Result<Acked, MailboxError>>, MailboxError>;

/// Where acks go: the worker's mailbox (or, in tests, a script).
trait AckBatch {
    fn ack_batch(&mut self, items: &[(Lease, Reply)]) -> impl Future<Output = BatchAnswer> + Send;

    /// The reply stored for `request_id`, if the backend stores replies and
    /// answers.
    fn stored_reply(&mut self, request_id: &str) -> impl Future<Output = Option<Bytes>> + Send;
}

/// The worker's mailbox, its health told of each answer.
struct WorkerAcks<'a>(&'a Shared);

impl AckBatch for WorkerAcks<'_> {
    async fn ack_batch(&mut self, items: &[(Lease, Reply)]) -> BatchAnswer {
        let answer = self.0.mailbox.ack_batch(items).await;
        match &answer {
            Ok(_) => self.0.health.mailbox_answered(),
            Err(_) => self.0.health.mailbox_failed(),
        }
        answer
    }

    async fn stored_reply(&mut self, request_id: &str) -> Option<Bytes> {
        self.0.mailbox.reply(request_id).await.ok().flatten()
    }
}

/// The per-item results of acking `batch` through `ack_batch`, retried while
/// the mailbox is unreachable: the whole batch when the call fails, then the
/// items it could not reach (SQS, say, throttling some deletes). Pauses
/// start at `pause` and double.
async fn retrying_unreachable(
    batch: &[(Lease, Reply)],
    mut pause: Duration,
    mailbox: &mut impl AckBatch,
) -> Vec<Result<Acked, MailboxError>> {
    let mut results: Vec<Result<Acked, MailboxError>> = batch
        .iter()
        .map(|_| Err(MailboxError::Unavailable("no answer for this ack".into())))
        .collect();
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    // Items sent in a call that failed as a whole: it may have acked them
    // before its answer was lost.
    let mut in_doubt = vec![false; batch.len()];
    for attempt in 1..=ACK_TRIES {
        let retried: Vec<(Lease, Reply)>;
        let items = if pending.len() == batch.len() {
            batch
        } else {
            retried = pending.iter().map(|&index| batch[index].clone()).collect();
            &retried
        };
        match mailbox.ack_batch(items).await {
            Ok(answers) => {
                let mut unreached = Vec::new();
                for (&index, answer) in pending.iter().zip(answers) {
                    if matches!(answer, Err(MailboxError::Unavailable(_))) {
                        unreached.push(index);
                    }
                    results[index] = answer;
                }
                pending = unreached;
            }
            Err(err) => {
                tracing::warn!(jobs = pending.len(), attempt, error = %err, "batch ack failed");
                let message = err.to_string();
                for &index in &pending {
                    results[index] = Err(MailboxError::Unavailable(message.clone()));
                    in_doubt[index] = true;
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        if attempt < ACK_TRIES {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    if !pending.is_empty() {
        tracing::error!(
            jobs = pending.len(),
            "giving up on acking; these jobs run again when their leases lapse"
        );
    }
    resolve_doubts(batch, &mut results, &in_doubt, mailbox).await;
    results
}

/// A lease "lost" on the retry of a call whose answer was lost is most
/// likely that call's own ack: where the stored reply is the item's, it
/// counts as acked (the job is done, and its session and spend can be
/// forgotten).
async fn resolve_doubts(
    batch: &[(Lease, Reply)],
    results: &mut [Result<Acked, MailboxError>],
    in_doubt: &[bool],
    mailbox: &mut impl AckBatch,
) {
    for (((_, reply), result), &doubt) in batch.iter().zip(results).zip(in_doubt) {
        if doubt
            && matches!(result, Err(MailboxError::LeaseLost { .. }))
            && mailbox.stored_reply(&reply.request_id).await.as_ref() == Some(&reply.body)
        {
            *result = Ok(Acked::Replied);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An item to ack, its job span exported or not.
    fn ack_item(n: u32, sampled: bool) -> AckItem {
        let (lease, reply) = item(n);
        AckItem::Ack {
            lease,
            reply,
            succeeded: true,
            job_span: sampled.then(crate::telemetry::SpanLink::sampled_for_tests),
        }
    }

    #[test]
    fn a_batch_holds_no_more_linked_jobs_than_its_span_keeps() {
        let linked = |count: u32| (0..count).map(|n| ack_item(n, true)).collect::<Vec<_>>();
        let cap = |ack_batch, max_links| BatchCap::new(ack_batch, max_links);
        assert_eq!(cap(256, None).batched(&linked(300)), 256, "acks are no spans");
        assert_eq!(cap(256, Some(128)).batched(&linked(300)), 128);
        assert_eq!(cap(64, Some(128)).batched(&linked(300)), 64);
        assert_eq!(
            cap(256, Some(0)).batched(&linked(300)),
            256,
            "a span that keeps no links caps nothing"
        );
        assert_eq!(cap(0, None).batched(&linked(3)), 1);
        assert_eq!(cap(256, Some(128)).batched(&linked(5)), 5, "fewer than either cap");
        assert!(cap(256, Some(4)).is_full(&linked(4)));
        assert!(!cap(256, Some(4)).is_full(&linked(3)));
    }

    #[test]
    fn jobs_whose_spans_are_not_exported_take_no_link() {
        // Every third job sampled: the fourth sampled job, the tenth item,
        // takes the last link, so the batch stops before the fifth, the
        // thirteenth.
        let items: Vec<AckItem> = (0..30).map(|n| ack_item(n, n % 3 == 0)).collect();
        let cap = BatchCap::new(256, Some(4));
        assert_eq!(cap.batched(&items), 12);
        assert!(!cap.is_full(&items[..9]), "3 links");
        assert!(cap.is_full(&items[..10]), "4 links");
        let unsampled: Vec<AckItem> = (0..300).map(|n| ack_item(n, false)).collect();
        assert_eq!(cap.batched(&unsampled), 256, "ack_batch still caps");
    }

    #[test]
    fn a_stop_behind_a_full_batch_waits_for_the_next() {
        let (done, _) = oneshot::channel();
        let mut items: Vec<AckItem> = (0..5).map(|n| ack_item(n, true)).chain([AckItem::Stop(done)]).collect();
        let cap = BatchCap::new(256, Some(4));
        assert_eq!(cap.batched(&items), 4);
        items.drain(..4);
        assert_eq!(cap.batched(&items), 2, "the last job and the stop");
    }

    fn item(n: u32) -> (Lease, Reply) {
        let id = format!("request-{n}");
        let lease = Lease {
            message_id: id.clone(),
            token: "t".into(),
        };
        (
            lease,
            Reply {
                request_id: id,
                body: Bytes::from_static(b"{}"),
            },
        )
    }

    /// Answers each call with what `answer` says for (call number, message id),
    /// or fails the call as a whole where it says so for message id "".
    struct Scripted<F> {
        calls: Vec<Vec<String>>,
        answer: F,
        stored: Vec<Reply>,
    }

    impl<F> AckBatch for Scripted<F>
    where
        F: FnMut(usize, &str) -> Result<Acked, MailboxError> + Send,
    {
        async fn ack_batch(&mut self, items: &[(Lease, Reply)]) -> BatchAnswer {
            self.calls
                .push(items.iter().map(|(lease, _)| lease.message_id.clone()).collect());
            let call = self.calls.len();
            (self.answer)(call, "")?;
            Ok(items
                .iter()
                .map(|(lease, _)| (self.answer)(call, &lease.message_id))
                .collect())
        }

        async fn stored_reply(&mut self, request_id: &str) -> Option<Bytes> {
            let stored = self.stored.iter().find(|reply| reply.request_id == request_id)?;
            Some(stored.body.clone())
        }
    }

    #[tokio::test]
    async fn items_the_mailbox_could_not_reach_are_retried_alone_until_acked() {
        let batch: Vec<_> = (0..3).map(item).collect();
        let mut mailbox = Scripted {
            calls: Vec::new(),
            stored: Vec::new(),
            // The second delete is throttled the first time.
            answer: |call, id: &str| match (call, id) {
                (1, "request-1") => Err(MailboxError::Unavailable("throttled".into())),
                _ => Ok(Acked::Replied),
            },
        };
        let results = retrying_unreachable(&batch, Duration::ZERO, &mut mailbox).await;
        assert!(
            results.iter().all(|result| matches!(result, Ok(Acked::Replied))),
            "{results:?}"
        );
        assert_eq!(
            mailbox.calls,
            [vec!["request-0", "request-1", "request-2"], vec!["request-1"]]
        );
    }

    #[tokio::test]
    async fn an_item_never_reached_is_given_up_after_the_tries_and_the_rest_kept() {
        let batch: Vec<_> = (0..2).map(item).collect();
        let mut mailbox = Scripted {
            calls: Vec::new(),
            stored: Vec::new(),
            answer: |call, id: &str| match (call, id) {
                (2, "") => Err(MailboxError::Unavailable("connection reset".into())),
                (_, "request-1") => Err(MailboxError::Unavailable("throttled".into())),
                _ => Ok(Acked::Replied),
            },
        };
        let results = retrying_unreachable(&batch, Duration::ZERO, &mut mailbox).await;
        assert_eq!(mailbox.calls.len(), ACK_TRIES as usize);
        assert!(matches!(results[0], Ok(Acked::Replied)), "{results:?}");
        assert!(
            matches!(&results[1], Err(MailboxError::Unavailable(m)) if m == "throttled"),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn a_lease_lost_after_a_call_whose_answer_was_lost_is_acked_if_its_reply_is_stored() {
        let batch: Vec<_> = (0..3).map(item).collect();
        let mut mailbox = Scripted {
            calls: Vec::new(),
            // The first call acked everything, but its answer was lost.
            answer: |call, id: &str| match (call, id) {
                (1, "") => Err(MailboxError::Unavailable("connection reset".into())),
                (_, "") => Ok(Acked::Replied),
                (_, id) => Err(MailboxError::LeaseLost { message_id: id.into() }),
            },
            // Another worker answered request-2 with a reply of its own.
            stored: vec![
                batch[0].1.clone(),
                batch[1].1.clone(),
                Reply {
                    request_id: "request-2".into(),
                    body: Bytes::from_static(b"{\"theirs\": true}"),
                },
            ],
        };
        let results = retrying_unreachable(&batch, Duration::ZERO, &mut mailbox).await;
        assert!(matches!(results[0], Ok(Acked::Replied)), "{results:?}");
        assert!(matches!(results[1], Ok(Acked::Replied)), "{results:?}");
        assert!(matches!(results[2], Err(MailboxError::LeaseLost { .. })), "{results:?}");
    }

    /// `linger_for_more` over `sent` (each after its pause), starting with one
    /// item already received: how many items it ended with, and how long it took.
    async fn linger(linger: Duration, cap: BatchCap, sent: Vec<(Duration, AckItem)>) -> (usize, Duration) {
        let (sender, mut queue) = mpsc::channel(16);
        let sending = tokio::spawn(async move {
            for (pause, item) in sent {
                tokio::time::sleep(pause).await;
                let _ = sender.send(item).await;
            }
        });
        let mut items = vec![ack_item(0, false)];
        let started = std::time::Instant::now();
        linger_for_more(&mut queue, &mut items, cap, linger).await;
        let took = started.elapsed();
        sending.abort();
        (items.len(), took)
    }

    #[tokio::test]
    async fn a_batch_takes_in_the_jobs_finishing_within_the_linger() {
        let ms = Duration::from_millis;
        let later = vec![
            (ms(20), ack_item(1, false)),
            (ms(20), ack_item(2, false)),
            (ms(2_000), ack_item(3, false)),
        ];
        let (taken, took) = linger(ms(300), BatchCap::new(10, None), later).await;
        assert_eq!(taken, 3, "the two sent within 300 ms, not the one after");
        assert!(took >= ms(300), "{took:?}");

        let (taken, _) = linger(
            Duration::ZERO,
            BatchCap::new(10, None),
            vec![(ms(0), ack_item(1, false))],
        )
        .await;
        assert_eq!(taken, 1, "no linger: the batch goes as it is");
    }

    #[tokio::test]
    async fn a_batch_takes_no_more_than_its_limit() {
        let ms = Duration::from_millis;
        let soon = (1..5).map(|n| (ms(10), ack_item(n, false))).collect();
        let (taken, _) = linger(ms(300), BatchCap::new(3, None), soon).await;
        assert_eq!(taken, 3);
    }

    #[tokio::test]
    async fn a_batch_takes_no_more_linked_jobs_than_its_span_keeps() {
        let ms = Duration::from_millis;
        let soon = (1..5).map(|n| (ms(10), ack_item(n, true))).collect();
        let (taken, _) = linger(ms(300), BatchCap::new(256, Some(2)), soon).await;
        assert_eq!(taken, 3, "the first job, unsampled, and two linked ones");
    }

    #[tokio::test]
    async fn a_batch_the_queue_already_fills_goes_at_once() {
        let (sender, mut queue) = mpsc::channel(8);
        for n in 1..6 {
            sender.send(ack_item(n, true)).await.expect("send");
        }
        // Say, what a batch cut short by its links left behind.
        let mut items = vec![ack_item(0, true)];
        let started = std::time::Instant::now();
        let cap = BatchCap::new(256, Some(4));
        linger_for_more(&mut queue, &mut items, cap, Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(items.len(), 4, "as many as the span links");
    }

    #[tokio::test]
    async fn a_batch_told_to_stop_goes_at_once() {
        let (sender, mut queue) = mpsc::channel(4);
        sender.send(ack_item(2, false)).await.expect("send");
        let (done, _) = tokio::sync::oneshot::channel();
        let mut items = vec![ack_item(1, false), AckItem::Stop(done)];
        let started = std::time::Instant::now();
        linger_for_more(&mut queue, &mut items, BatchCap::new(10, None), Duration::from_secs(10)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(items.len(), 2);
    }
}
