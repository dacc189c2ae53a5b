//! One delivery from claim to its end: refused as poison, run under a
//! heartbeat-extended lease, then answered, retried, dead-lettered or given
//! back.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tracing::Instrument;

use super::Shared;
use super::acker::AckItem;
use super::agents::{AgentError, source_name};
use super::reply::{REPLY_VERSION, ReplyError, ReplyHead, ReplySpent, ReplyStatus, ReplyTimings, ReplyUsage};
use crate::job::{AgentFailureKind, JobError, JobReport, JobRequest, JobStats};
use crate::mailbox::{AgentRef, DeadLetterReason, Delivery, Envelope, EnvelopeError, Lease, MailboxError, Reply};
use crate::policy::PolicyError;
use crate::runtime::{Limit, LoadError};
use crate::telemetry::SpanLink;

/// The error kind of a job whose deadline passed before or while it ran.
pub const DEADLINE_EXCEEDED: &str = "deadline_exceeded";

/// Why a delivery goes straight to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Poison {
    /// The dead-letter kind (docs/mailbox.md lists them).
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl Poison {
    pub(crate) fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<EnvelopeError> for Poison {
    fn from(err: EnvelopeError) -> Self {
        let kind = match err {
            EnvelopeError::Malformed(_) => "malformed_envelope",
            EnvelopeError::Version(_) => "unsupported_envelope_version",
            EnvelopeError::Field { .. } => "invalid_envelope",
        };
        Self::new(kind, err.to_string())
    }
}

impl From<LoadError> for Poison {
    fn from(err: LoadError) -> Self {
        let kind = match err {
            LoadError::Read { .. } | LoadError::CacheDir { .. } => "component_unreadable",
            LoadError::Invalid { .. } => "component_invalid",
            LoadError::WrongWorld { .. } => "component_wrong_world",
        };
        Self::new(kind, err.to_string())
    }
}

impl From<PolicyError> for Poison {
    fn from(err: PolicyError) -> Self {
        Self::new("policy_refused", err.to_string())
    }
}

/// Whether a failed job is worth another attempt (docs/mailbox.md, "Retries
/// and the dead-letter queue"). Retried: what another attempt, later or on
/// another worker, can change: a model call that failed (throttling, an
/// outage), the deadline (a slow model or a busy host; a checkpointed
/// session lets the retry resume), host-side setup (instance pool
/// exhausted, sandbox setup) and host services that failed mid-job (the
/// usage ledger). Not retried: what the same input and component
/// would do again: traps, the other limits, invalid input or output, and
/// the agent's own refusals.
pub fn is_retryable(error: &JobError) -> bool {
    match error {
        JobError::LimitExceeded(hit) => hit.limit == Limit::Deadline,
        JobError::Agent { kind, .. } => *kind == AgentFailureKind::Model,
        JobError::Instantiate(_) | JobError::Sandbox(_) | JobError::Host(_) => true,
        JobError::Load(_) | JobError::InvalidInput(_) | JobError::Trap(_) | JobError::InvalidOutput(_) => false,
    }
}

/// Why work under a job's lease stopped before it finished.
enum Interrupted {
    /// Another worker holds the message now.
    LeaseLost,
    /// Shutdown gave the job back unfinished.
    Released,
}

/// What a job's reply and ack know it by.
struct JobIdentity {
    /// The worker's id for this run of the job.
    id: String,
    /// The link to its exported span, for the span of the ack that settles
    /// it.
    link: Option<SpanLink>,
}

/// A job's answer, before it is written.
enum Answer {
    Output(String),
    Failed(ReplyError),
}

fn unix_ms_now() -> u64 {
    crate::mailbox::unix_ms(SystemTime::now())
}

impl Shared {
    pub(super) async fn process(&self, delivery: Delivery, claim: Option<SpanLink>) {
        let parsed = Envelope::parse(&delivery.payload).and_then(|envelope| {
            let source = envelope.agent_ref()?;
            self.config.reply_queues.check(&envelope)?;
            Ok((envelope, source))
        });
        let (envelope, source) = match parsed {
            Ok(parsed) => parsed,
            Err(err) => return self.dead_letter(&delivery, None, &err.into()).await,
        };
        let job_id = self.next_job_id();
        // One span per delivery, an OpenTelemetry consumer span that
        // continues the producer's trace and stands for the job too: the
        // runtime runs the agent in it, so the caller, the job and its model
        // and tool calls are one trace, and the worker's own lines (retries,
        // dead letters) carry the job's ids. It is named for the agent, as
        // the GenAI conventions name an `invoke_agent` span.
        let agent = source_name(&source);
        let span = tracing::info_span!(
            "job",
            otel.name = %format_args!("invoke_agent {agent}"),
            otel.kind = "consumer",
            messaging.operation.type = "process",
            messaging.destination.name = %self.queue(),
            messaging.message.id = %delivery.lease.message_id,
            request_id = %envelope.request_id,
            job_id = %job_id,
            // Signed: OpenTelemetry has no unsigned integers.
            attempt = i64::from(delivery.attempt),
            worker_id = %self.id,
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = %agent,
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        crate::telemetry::continue_trace(&span, envelope.traceparent.as_deref());
        let job = JobIdentity {
            id: job_id,
            link: self.batch_spans.as_ref().and_then(|spans| spans.join(&span, claim)),
        };
        self.run_job(&delivery, &envelope, source, job, &span)
            .instrument(span.clone())
            .await;
    }

    async fn run_job(
        &self,
        delivery: &Delivery,
        envelope: &Envelope,
        source: AgentRef,
        job: JobIdentity,
        span: &tracing::Span,
    ) {
        let max = self.config.max_attempts;
        if delivery.attempt > max {
            let poison = Poison::new(
                "max_attempts",
                format!(
                    "delivery {} is over the limit of {max} attempts: earlier deliveries ended without an \
                     answer (worker crash or kill, or a lapsed lease)",
                    delivery.attempt
                ),
            );
            return self.dead_letter(delivery, Some(envelope), &poison).await;
        }
        let started_at_ms = unix_ms_now();
        if let Some(deadline) = envelope.deadline
            && deadline <= started_at_ms
        {
            let late = started_at_ms - deadline;
            let error = ReplyError {
                kind: DEADLINE_EXCEEDED.to_owned(),
                message: format!("the job's deadline passed {late} ms before it could start"),
                cause: None,
            };
            let stats = JobStats::default();
            return self
                .answer(delivery, envelope, &job, started_at_ms, &stats, Answer::Failed(error))
                .await;
        }
        // Under the lease: fetching and compiling a cold agent can take longer
        // than a lease, and shutdown must not wait on it.
        let agent = match self
            .run_leased(&delivery.lease, Box::pin(self.agents.get(&envelope.agent, &source)))
            .await
        {
            Ok(agent) => agent,
            Err(interrupted) => return self.interrupted(delivery, interrupted).await,
        };
        let agent = match agent {
            Ok(agent) => agent,
            Err(AgentError::Poison(poison)) => return self.dead_letter(delivery, Some(envelope), &poison).await,
            Err(AgentError::Unavailable(message)) => {
                return self
                    .retry_or_dead_letter(delivery, envelope, "component_unavailable", &message)
                    .await;
            }
        };
        let mut limits = self.limits;
        if let Some(deadline) = envelope.deadline {
            limits.deadline = limits.deadline.min(Duration::from_millis(deadline - started_at_ms));
        }
        let env = match agent.job_env(&self.runtime, &self.resources, envelope, limits) {
            Ok(env) => env,
            Err(poison) => return self.dead_letter(delivery, Some(envelope), &poison).await,
        };
        let request = JobRequest {
            request_id: envelope.request_id.clone(),
            job_id: job.id.clone(),
            attempt: delivery.attempt,
            input: envelope.input.to_string(),
            // The span carries the trace.
            traceparent: None,
        };
        // Boxed: the sandbox's future is kilobytes, and held inline it
        // would make the job's future that much larger, and with it every
        // copy made of the job's states as they are built.
        let run = Box::pin(self.runtime.run_agent_in(&agent.component, request, env, span.clone()));
        match self.run_leased(&delivery.lease, run).await {
            Ok(report) => self.conclude(delivery, envelope, &job, started_at_ms, report).await,
            Err(interrupted) => self.interrupted(delivery, interrupted).await,
        }
    }

    async fn interrupted(&self, delivery: &Delivery, interrupted: Interrupted) {
        match interrupted {
            Interrupted::LeaseLost => {
                self.counters.lease_lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "lease lost before the job finished; stopped it without a reply (the lease holder answers)"
                );
            }
            Interrupted::Released => self.release(delivery).await,
        }
    }

    /// Run `work` (loading the agent, running the job), extending the lease
    /// every heartbeat from this same task: a task that stops being
    /// scheduled stops extending, so a stuck job's lease lapses and another
    /// worker takes it over.
    async fn run_leased<T>(&self, lease: &Lease, mut work: impl Future<Output = T> + Unpin) -> Result<T, Interrupted> {
        let heartbeat = self.config.heartbeat.0;
        let beat = tokio::time::sleep(heartbeat);
        tokio::pin!(beat);
        loop {
            tokio::select! {
                biased;
                done = &mut work => return Ok(done),
                () = self.release.cancelled() => return Err(Interrupted::Released),
                () = &mut beat => {
                    match self.mailbox.extend(lease, self.config.lease.0).await {
                        Ok(()) => {}
                        Err(MailboxError::LeaseLost { .. }) => return Err(Interrupted::LeaseLost),
                        Err(err) => tracing::warn!(error = %err, "cannot extend the lease; trying again next heartbeat"),
                    }
                    beat.as_mut().reset(tokio::time::Instant::now() + heartbeat);
                }
            }
        }
    }

    /// Reply, retry or dead-letter a job that ran.
    async fn conclude(
        &self,
        delivery: &Delivery,
        envelope: &Envelope,
        job: &JobIdentity,
        started_at_ms: u64,
        report: JobReport,
    ) {
        let JobReport { outcome, stats } = report;
        let err = match outcome {
            Ok(output) => {
                let answer = Answer::Output(output);
                return self
                    .answer(delivery, envelope, job, started_at_ms, &stats, answer)
                    .await;
            }
            Err(err) => err,
        };
        let deadline_passed = envelope.deadline.is_some_and(|deadline| deadline <= unix_ms_now());
        let answer = if deadline_passed && matches!(&err, JobError::LimitExceeded(hit) if hit.limit == Limit::Deadline)
        {
            ReplyError {
                kind: DEADLINE_EXCEEDED.to_owned(),
                message: format!("the job's deadline passed while it ran: {err}"),
                cause: None,
            }
        } else if is_retryable(&err) {
            return self.retry_or_dead_letter(delivery, envelope, err.kind(), &err).await;
        } else {
            reply_error(&err)
        };
        self.answer(delivery, envelope, job, started_at_ms, &stats, Answer::Failed(answer))
            .await;
    }

    /// Write the reply, send it to `reply_to`, and queue its ack.
    async fn answer(
        &self,
        delivery: &Delivery,
        envelope: &Envelope,
        job: &JobIdentity,
        started_at_ms: u64,
        stats: &JobStats,
        answer: Answer,
    ) {
        let spent = self
            .resources
            .model_policy
            .ledger
            .spent(&envelope.request_id)
            .await
            .unwrap_or_else(|err| {
                tracing::warn!(error = %err, "the reply reports no spend: the usage ledger cannot be read");
                crate::model::Spent::default()
            });
        let finished_at_ms = unix_ms_now();
        let (status, error, output) = match answer {
            Answer::Output(output) => (ReplyStatus::Succeeded, None, Some(output)),
            Answer::Failed(error) => {
                mark_failed(&error.kind);
                (ReplyStatus::Failed, Some(error), None)
            }
        };
        let head = ReplyHead {
            version: REPLY_VERSION,
            request_id: &envelope.request_id,
            job_id: &job.id,
            worker_id: &self.id,
            status,
            error,
            attempts: delivery.attempt,
            usage: ReplyUsage {
                input_tokens: stats.usage.input_tokens,
                output_tokens: stats.usage.output_tokens,
                model_calls: stats.model_calls,
                tool_calls: stats.tool_calls,
                fuel: stats.fuel_consumed,
            },
            spent: ReplySpent {
                input_tokens: spent.input_tokens,
                output_tokens: spent.output_tokens,
                micro_usd: spent.micro_usd,
                turns: spent.turns,
            },
            timings: ReplyTimings {
                enqueued_at_ms: delivery.enqueued_at_ms,
                started_at_ms,
                finished_at_ms,
                queued_ms: started_at_ms.saturating_sub(delivery.enqueued_at_ms),
                run_us: u64::try_from(stats.elapsed.as_micros()).unwrap_or(u64::MAX),
            },
            tags: &envelope.tags,
        };
        let body = head.encode(output.as_deref());
        if let Some(queue) = &envelope.reply_to {
            self.send_reply_to(queue, &envelope.request_id, body.clone()).await;
        }
        let item = AckItem::Ack {
            lease: delivery.lease.clone(),
            reply: Reply {
                request_id: envelope.request_id.clone(),
                body,
            },
            succeeded: status == ReplyStatus::Succeeded,
            job_span: job.link.clone(),
        };
        // The acker outlives every job task: it stops only after they end.
        let _ = self.acks.send(item).await;
    }

    /// Send the reply to the envelope's `reply_to` queue before the ack, so
    /// a crash in between leaves the message to run again and send again
    /// (deduplicated by request id), never an ack without the reply sent.
    async fn send_reply_to(&self, queue: &str, request_id: &str, body: bytes::Bytes) {
        let mut pause = super::MAILBOX_RETRY;
        for attempt in 1..=3 {
            match self.routes.send(queue, request_id, body.clone()).await {
                Ok(_) => return,
                Err(err @ MailboxError::Unavailable(_)) if attempt < 3 => {
                    tracing::warn!(reply_to = queue, error = %err, "cannot send the reply; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(err) => {
                    tracing::error!(reply_to = queue, error = %err, "cannot send the reply to reply_to; it is kept only where the mailbox keeps replies");
                    return;
                }
            }
        }
    }

    /// Give a failed delivery back with a backoff, or dead-letter it as
    /// `kind` once it has had its attempts.
    async fn retry_or_dead_letter(
        &self,
        delivery: &Delivery,
        envelope: &Envelope,
        kind: &'static str,
        err: &(dyn std::fmt::Display + Sync),
    ) {
        let (attempt, max) = (delivery.attempt, self.config.max_attempts);
        if attempt >= max {
            let poison = Poison::new(kind, format!("{err} (attempt {attempt} of {max})"));
            return self.dead_letter(delivery, Some(envelope), &poison).await;
        }
        mark_failed(kind);
        let delay = self.config.backoff(attempt);
        match self.mailbox.nack(&delivery.lease, delay).await {
            Ok(()) => {
                self.runtime.metrics().mailbox_nacked(self.queue(), 1);
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    error.kind = kind,
                    error = %err,
                    "job failed; retrying after a backoff"
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot give the job back for a retry; it returns when its lease lapses")
            }
        }
    }

    /// Give a job back unfinished, claimable again at once (shutdown).
    async fn release(&self, delivery: &Delivery) {
        match self.mailbox.nack(&delivery.lease, Duration::ZERO).await {
            Ok(()) => {
                self.runtime.metrics().mailbox_nacked(self.queue(), 1);
                self.counters.released.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("job given back unfinished at shutdown");
            }
            Err(err) => tracing::warn!(error = %err, "cannot give the job back; it returns when its lease lapses"),
        }
    }

    async fn dead_letter(&self, delivery: &Delivery, envelope: Option<&Envelope>, poison: &Poison) {
        let reason = DeadLetterReason {
            kind: poison.kind.to_owned(),
            message: poison.message.clone(),
        };
        mark_failed(poison.kind);
        match self.mailbox.dead_letter(&delivery.lease, &reason).await {
            Ok(()) => {
                self.count_dead_letter(poison.kind);
                tracing::warn!(
                    message_id = %delivery.lease.message_id,
                    attempt = delivery.attempt,
                    kind = poison.kind,
                    reason = %poison.message,
                    "message dead-lettered"
                );
                if let Some(envelope) = envelope {
                    self.forget(&envelope.request_id).await;
                }
            }
            Err(err) => tracing::warn!(
                message_id = %delivery.lease.message_id,
                error = %err,
                "cannot dead-letter the message; it returns when its lease lapses"
            ),
        }
    }

    /// Count a message just dead-lettered with reason `kind`.
    pub(super) fn count_dead_letter(&self, kind: &str) {
        self.runtime.metrics().mailbox_dead_lettered(self.queue(), kind, 1);
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// Drop a finished request's spend and session checkpoint.
    pub(super) async fn forget(&self, request_id: &str) {
        self.resources.model_policy.ledger.forget(request_id).await;
        self.resources.sessions.forget(request_id).await;
    }
}

/// Mark the delivery's span failed with `kind` (an OpenTelemetry error
/// status): once per delivery, as the span keeps every value recorded.
fn mark_failed(kind: &str) {
    let span = tracing::Span::current();
    span.record("otel.status_code", "error");
    span.record("error.type", kind);
}

/// The reply error of a job that failed for good.
fn reply_error(err: &JobError) -> ReplyError {
    let cause = match err {
        JobError::LimitExceeded(hit) => Some(hit.limit.as_str().to_owned()),
        JobError::Agent { kind, .. } => Some(kind.as_str().to_owned()),
        _ => None,
    };
    ReplyError {
        kind: err.kind().to_owned(),
        message: err.to_string(),
        cause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{LimitExceeded, Limits};

    #[test]
    fn transient_failures_retry_and_deterministic_ones_do_not() {
        let limits = Limits::default();
        let agent = |kind| JobError::Agent {
            kind,
            message: "m".into(),
        };
        let retried = [
            JobError::LimitExceeded(LimitExceeded::of(Limit::Deadline, &limits)),
            agent(AgentFailureKind::Model),
            JobError::Instantiate("pool exhausted".into()),
            JobError::Host("cannot read the job's budget: connection refused".into()),
        ];
        let final_ = [
            JobError::LimitExceeded(LimitExceeded::of(Limit::Fuel, &limits)),
            JobError::LimitExceeded(LimitExceeded::of(Limit::Memory, &limits)),
            JobError::Trap("unreachable".into()),
            agent(AgentFailureKind::Failed),
            agent(AgentFailureKind::InvalidInput),
            agent(AgentFailureKind::BudgetExceeded),
            JobError::InvalidOutput("x".into()),
        ];
        assert!(retried.iter().all(is_retryable));
        assert!(!final_.iter().any(is_retryable));
    }

    #[test]
    fn poison_kinds_follow_the_error() {
        let malformed = Envelope::parse(b"{").unwrap_err();
        assert_eq!(Poison::from(malformed).kind, "malformed_envelope");
        let version = Envelope::parse(br#"{"version":9,"request_id":"r","agent":"a.wasm"}"#).unwrap_err();
        assert_eq!(Poison::from(version).kind, "unsupported_envelope_version");
        let invalid = LoadError::Invalid {
            name: "x".into(),
            message: "bad magic".into(),
        };
        assert_eq!(Poison::from(invalid).kind, "component_invalid");
    }
}
