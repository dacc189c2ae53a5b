//! A span processor that encodes each span on the thread that ends it and
//! posts the encoded spans in batches from a thread of its own.
//!
//! It keeps the batch processor's contract: ending a span never blocks on
//! the collector; at most `max_queue_size` spans wait, and further ones are
//! dropped (and counted); a batch leaves when `max_export_batch_size` spans
//! are waiting or `schedule_delay` after the last timed export; flush and
//! shutdown send what waits. What waits is bytes, not `SpanData`: the span
//! is freed where it was allocated, and batches reuse their buffers.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};

use super::encode;
use crate::telemetry::Redactor;
use crate::telemetry::traces::BatchSettings;

/// How long [`SpanProcessor::force_flush`] waits for the batches to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Least time between two warnings about dropped spans or failing exports.
const WARNING_INTERVAL: Duration = Duration::from_secs(30);

/// Where encoded requests go.
pub(super) trait Transport: Send + Sync + 'static {
    /// Deliver one encoded `ExportTraceServiceRequest`, retrying as it sees
    /// fit; the error says why it was not delivered.
    fn send(&self, body: Bytes) -> Result<(), String>;
}

/// Encodes spans as they end; a thread of its own posts them in batches.
pub(crate) struct EncodingBatchProcessor {
    shared: Arc<Shared>,
    redactor: Redactor,
    shipper: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for EncodingBatchProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodingBatchProcessor")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

struct Shared {
    settings: BatchSettings,
    state: Mutex<State>,
    /// Wakes the shipper: a batch filled up, a flush was asked for, or
    /// shutdown began.
    wake: Condvar,
    /// Wakes flushes and shutdown: a flush was served or the shipper stopped.
    served: Condvar,
    /// The encoded `resource` and `schema_url` of every request.
    resource: Mutex<Arc<[u8]>>,
    redactor: Redactor,
    /// The last request body's buffer, back from the HTTP client: a batch
    /// is a few hundred kilobytes, and fresh pages for each cost more than
    /// encoding it.
    spare_body: Arc<Mutex<Vec<u8>>>,
}

/// A request body that goes back to the shipper once the HTTP client has
/// dropped it.
struct Recycled {
    body: Vec<u8>,
    spare: Arc<Mutex<Vec<u8>>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        *lock(&self.spare) = std::mem::take(&mut self.body);
    }
}

#[derive(Default)]
struct State {
    /// Encoded spans waiting to leave, oldest first; each batch holds at
    /// most `max_export_batch_size` spans.
    waiting: VecDeque<Batch>,
    /// Spans in `waiting`.
    queued: usize,
    /// Sent batches, emptied, to be filled again.
    spare: Vec<Batch>,
    /// Spans dropped since the shipper last reported it.
    dropped: u64,
    /// Flushes asked for, and the last one the shipper served with why an
    /// export it made for it failed, if one did.
    flushes_asked: u64,
    flushes_served: u64,
    flush_error: Option<String>,
    stopping: bool,
    stopped: bool,
}

/// The encoded spans of one request, by instrumentation scope (in
/// practice one: the host's tracer).
#[derive(Default)]
struct Batch {
    scopes: Vec<ScopeSpans>,
    spans: usize,
}

struct ScopeSpans {
    scope: InstrumentationScope,
    encoded: Vec<u8>,
}

impl Batch {
    fn push(&mut self, scope: &InstrumentationScope, span: &[u8]) {
        let index = match self.scopes.iter().position(|entry| entry.scope == *scope) {
            Some(index) => index,
            None => {
                self.scopes.push(ScopeSpans {
                    scope: scope.clone(),
                    encoded: Vec::new(),
                });
                self.scopes.len() - 1
            }
        };
        self.scopes[index].encoded.extend_from_slice(span);
        self.spans += 1;
    }

    /// Empty it, keeping its buffers (and scopes, which the next spans
    /// most likely share).
    fn clear(&mut self) {
        for entry in &mut self.scopes {
            entry.encoded.clear();
        }
        self.spans = 0;
    }
}

thread_local! {
    /// Where a span is encoded before it is queued, outside the queue's lock.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl EncodingBatchProcessor {
    /// Start the shipper thread, posting through `transport`.
    pub(super) fn start(
        transport: impl Transport,
        redactor: Redactor,
        settings: BatchSettings,
    ) -> Result<Self, String> {
        let shared = Arc::new(Shared {
            settings,
            state: Mutex::default(),
            wake: Condvar::new(),
            served: Condvar::new(),
            resource: Mutex::new(encode::resource(&Resource::builder_empty().build(), &redactor).into()),
            redactor: redactor.clone(),
            spare_body: Arc::default(),
        });
        let shipper = std::thread::Builder::new()
            .name("otlp-http-export".into())
            .spawn({
                let shared = shared.clone();
                move || shared.ship(&transport)
            })
            .map_err(|err| format!("cannot start the export thread: {err}"))?;
        Ok(Self {
            shared,
            redactor,
            shipper: Mutex::new(Some(shipper)),
        })
    }
}

impl SpanProcessor for EncodingBatchProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            encode::span(scratch, &span, &self.redactor);
            self.shared.enqueue(&span.instrumentation_scope, scratch);
        });
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.shared.flush(FLUSH_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let outcome = self.shared.stop(timeout);
        if outcome.is_ok()
            && let Some(shipper) = lock(&self.shipper).take()
        {
            // It has stopped: this returns at once.
            let _ = shipper.join();
        }
        outcome
    }

    fn set_resource(&mut self, resource: &Resource) {
        *lock(&self.shared.resource) = encode::resource(resource, &self.redactor).into();
    }
}

impl Drop for EncodingBatchProcessor {
    /// Without a shutdown, the shipper still stops, sending what waits.
    fn drop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.wake.notify_one();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent between statements: a panic elsewhere
    // while holding it leaves nothing half-done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn enqueue(&self, scope: &InstrumentationScope, span: &[u8]) {
        let batch_size = self.settings.max_export_batch_size;
        let mut state = lock(&self.state);
        if state.stopping || state.queued >= self.settings.max_queue_size {
            state.dropped += 1;
            return;
        }
        if state.waiting.back().is_none_or(|batch| batch.spans >= batch_size) {
            let batch = state.spare.pop().unwrap_or_default();
            state.waiting.push_back(batch);
        }
        state.queued += 1;
        let Some(batch) = state.waiting.back_mut() else {
            return;
        };
        batch.push(scope, span);
        if batch.spans == batch_size {
            self.wake.notify_one();
        }
    }

    /// Ask the shipper to send everything waiting, and wait up to
    /// `timeout` for the outcome.
    fn flush(&self, timeout: Duration) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        if state.stopping {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        state.flushes_asked += 1;
        let ticket = state.flushes_asked;
        self.wake.notify_one();
        while state.flushes_served < ticket {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
            else {
                return Err(OTelSdkError::Timeout(timeout));
            };
            if state.stopped {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            state = self
                .served
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state
            .flush_error
            .clone()
            .map_or(Ok(()), |err| Err(OTelSdkError::InternalFailure(err)))
    }

    /// Stop the shipper once it has sent everything waiting, waiting up to
    /// `timeout` for it; the outcome of that last export.
    fn stop(&self, timeout: Duration) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        if state.stopping {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        state.stopping = true;
        self.wake.notify_one();
        while !state.stopped {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
            else {
                return Err(OTelSdkError::Timeout(timeout));
            };
            state = self
                .served
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state
            .flush_error
            .clone()
            .map_or(Ok(()), |err| Err(OTelSdkError::InternalFailure(err)))
    }

    /// The shipper thread: send full batches as they fill up, everything
    /// every `schedule_delay` and when a flush asks, until stopped.
    fn ship(&self, transport: &impl Transport) {
        let mut next_timed_export = Instant::now() + self.settings.schedule_delay;
        let mut warnings = Warnings::default();
        loop {
            let round = self.next_round(&mut next_timed_export);
            let mut error = None;
            for batch in &round.batches {
                match self.send(transport, batch) {
                    Ok(()) => warnings.export_succeeded(),
                    Err(err) => {
                        warnings.export_failed(&err);
                        error = Some(err);
                    }
                }
            }
            let mut state = lock(&self.state);
            warnings.dropped(std::mem::take(&mut state.dropped));
            for mut batch in round.batches {
                batch.clear();
                state.spare.push(batch);
            }
            if let Some(ticket) = round.flush {
                state.flushes_served = ticket;
                state.flush_error = error;
                self.served.notify_all();
            }
            if round.last {
                state.stopped = true;
                self.served.notify_all();
                return;
            }
        }
    }

    /// Wait until there is something to send, and take it.
    fn next_round(&self, next_timed_export: &mut Instant) -> Round {
        let batch_size = self.settings.max_export_batch_size;
        let mut state = lock(&self.state);
        loop {
            let flushing = state.stopping || state.flushes_asked > state.flushes_served;
            let now = Instant::now();
            let timed = now >= *next_timed_export;
            if flushing || timed {
                if timed {
                    *next_timed_export = now + self.settings.schedule_delay;
                }
                let batches: Vec<Batch> = state.waiting.drain(..).collect();
                state.queued = 0;
                return Round {
                    batches,
                    flush: flushing.then_some(state.flushes_asked),
                    last: state.stopping,
                };
            }
            if state.waiting.front().is_some_and(|batch| batch.spans >= batch_size) {
                let full = state
                    .waiting
                    .iter()
                    .take_while(|batch| batch.spans >= batch_size)
                    .count();
                let batches: Vec<Batch> = state.waiting.drain(..full).collect();
                state.queued -= batches.iter().map(|batch| batch.spans).sum::<usize>();
                return Round {
                    batches,
                    flush: None,
                    last: false,
                };
            }
            state = self
                .wake
                .wait_timeout(state, *next_timed_export - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn send(&self, transport: &impl Transport, batch: &Batch) -> Result<(), String> {
        if batch.spans == 0 {
            return Ok(());
        }
        let resource = lock(&self.resource).clone();
        let mut body = std::mem::take(&mut *lock(&self.spare_body));
        body.clear();
        encode::request(
            &mut body,
            &resource,
            batch
                .scopes
                .iter()
                .filter(|entry| !entry.encoded.is_empty())
                .map(|entry| (&entry.scope, entry.encoded.as_slice())),
            &self.redactor,
        );
        transport.send(Bytes::from_owner(Recycled {
            body,
            spare: self.spare_body.clone(),
        }))
    }
}

/// What the shipper sends in one go.
struct Round {
    batches: Vec<Batch>,
    /// The flush this round serves, if any.
    flush: Option<u64>,
    /// Whether the shipper stops after it.
    last: bool,
}

/// Warnings about lost spans, at most one per [`WARNING_INTERVAL`] each, so
/// that a collector that is down does not flood the logs.
#[derive(Default)]
struct Warnings {
    failing: bool,
    last_failure_warning: Option<Instant>,
    dropped: u64,
    last_drop_warning: Option<Instant>,
}

impl Warnings {
    fn export_failed(&mut self, error: &str) {
        self.failing = true;
        if self
            .last_failure_warning
            .is_none_or(|at| at.elapsed() >= WARNING_INTERVAL)
        {
            self.last_failure_warning = Some(Instant::now());
            tracing::warn!(error, "span export failed; its batch is dropped");
        }
    }

    fn export_succeeded(&mut self) {
        if std::mem::take(&mut self.failing) {
            self.last_failure_warning = None;
            tracing::info!("span export works again");
        }
    }

    fn dropped(&mut self, spans: u64) {
        self.dropped += spans;
        if self.dropped > 0 && self.last_drop_warning.is_none_or(|at| at.elapsed() >= WARNING_INTERVAL) {
            self.last_drop_warning = Some(Instant::now());
            tracing::warn!(
                spans = std::mem::take(&mut self.dropped),
                "spans dropped: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::SystemTime;

    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;

    /// Hands each request to the test, after `gate` lets it through.
    struct Recorder {
        requests: Mutex<mpsc::Sender<Bytes>>,
        entered: Mutex<mpsc::Sender<()>>,
        gate: Mutex<mpsc::Receiver<()>>,
        gated: bool,
        fail: bool,
    }

    struct Recorded {
        requests: mpsc::Receiver<Bytes>,
        entered: mpsc::Receiver<()>,
        gate: mpsc::Sender<()>,
    }

    impl Transport for Recorder {
        fn send(&self, body: Bytes) -> Result<(), String> {
            let _ = lock(&self.entered).send(());
            if self.gated {
                let _ = lock(&self.gate).recv();
            }
            let _ = lock(&self.requests).send(body);
            if self.fail {
                return Err("the collector answered 400 Bad Request".into());
            }
            Ok(())
        }
    }

    fn processor(queue: usize, batch: usize, gated: bool, fail: bool) -> (EncodingBatchProcessor, Recorded) {
        let (requests, requests_rx) = mpsc::channel();
        let (entered, entered_rx) = mpsc::channel();
        let (gate, gate_rx) = mpsc::channel();
        let recorder = Recorder {
            requests: Mutex::new(requests),
            entered: Mutex::new(entered),
            gate: Mutex::new(gate_rx),
            gated,
            fail,
        };
        let settings = BatchSettings {
            max_queue_size: queue,
            max_export_batch_size: batch,
            schedule_delay: Duration::from_secs(600),
        };
        let processor =
            EncodingBatchProcessor::start(recorder, Redactor::new([], []).expect("redactor"), settings).expect("start");
        let recorded = Recorded {
            requests: requests_rx,
            entered: entered_rx,
            gate,
        };
        (processor, recorded)
    }

    fn span(n: u64, sampled: bool) -> SpanData {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanData {
            span_context: SpanContext::new(TraceId::from(7), SpanId::from(n), flags, false, TraceState::default()),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: format!("span {n}").into(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: vec![opentelemetry::KeyValue::new("n", n as i64)],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("wink-host").build(),
        }
    }

    /// The ids of the spans in one request.
    fn span_ids(body: &Bytes) -> Vec<u64> {
        let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("protobuf");
        request
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| &scope.spans)
            .map(|span| u64::from_be_bytes(span.span_id.as_slice().try_into().expect("8 bytes")))
            .collect()
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn full_batches_leave_at_once_and_a_flush_sends_the_rest() {
        let (processor, recorded) = processor(8, 3, false, false);
        for n in 1..=7 {
            processor.on_end(span(n, true));
        }
        processor.on_end(span(99, false));
        // Two full batches leave without a flush (the timer is ten minutes off).
        assert_eq!(
            span_ids(&recorded.requests.recv_timeout(WAIT).expect("first")),
            [1, 2, 3]
        );
        assert_eq!(
            span_ids(&recorded.requests.recv_timeout(WAIT).expect("second")),
            [4, 5, 6]
        );
        processor.force_flush().expect("flush");
        // The unsampled span is not exported.
        assert_eq!(span_ids(&recorded.requests.try_recv().expect("flushed")), [7]);
        // Nothing waits: a flush sends nothing.
        processor.force_flush().expect("empty flush");
        assert!(recorded.requests.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_drops_the_spans_that_do_not_fit() {
        let (processor, recorded) = processor(4, 2, true, false);
        processor.on_end(span(1, true));
        processor.on_end(span(2, true));
        // The shipper holds the first batch, stuck in a slow export...
        recorded.entered.recv_timeout(WAIT).expect("the export starts");
        // ...while four spans fill the queue and three more are dropped.
        for n in 3..=9 {
            processor.on_end(span(n, true));
        }
        for _ in 0..3 {
            recorded.gate.send(()).expect("gate");
        }
        processor.force_flush().expect("flush");
        let delivered: Vec<u64> = recorded.requests.try_iter().flat_map(|body| span_ids(&body)).collect();
        assert_eq!(delivered, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_failed_export_fails_the_flush_and_shutdown_stops_the_export() {
        let (processor, recorded) = processor(8, 4, false, true);
        processor.on_end(span(1, true));
        let err = processor.force_flush().expect_err("the export failed").to_string();
        assert!(err.contains("400 Bad Request"), "{err}");
        assert_eq!(span_ids(&recorded.requests.try_recv().expect("sent")), [1]);

        processor.on_end(span(2, true));
        assert!(processor.shutdown().is_err(), "the last export failed too");
        assert_eq!(span_ids(&recorded.requests.try_recv().expect("sent at shutdown")), [2]);
        // Spans ended after shutdown go nowhere, and a second shutdown says so.
        processor.on_end(span(3, true));
        assert!(matches!(processor.shutdown(), Err(OTelSdkError::AlreadyShutdown)));
        assert!(recorded.requests.try_recv().is_err());
    }
}
