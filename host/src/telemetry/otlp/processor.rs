//! A span processor that encodes each span on the thread that ends it (or,
//! when that thread's runtime leaves cores free, on its own thread) and
//! posts the encoded spans in batches from a thread of its own.
//!
//! It keeps the batch processor's contract: ending a span never blocks on
//! the collector; at most `max_queue_size` spans wait in full batches (plus
//! the batch each thread is filling), and further ones are dropped (and
//! counted); a batch leaves when `max_export_batch_size` spans fill it (or
//! [`MAX_BATCH_BYTES`] of them), and every batch, full or not,
//! `schedule_delay` after the last timed export;
//! flush and shutdown send what waits. What waits is mostly bytes, not
//! `SpanData`: a span encoded where it ends is freed where it was
//! allocated, and batches reuse their buffers.
//!
//! Each thread fills a batch of its own (a shard, taken by turns), so that
//! threads ending spans at the same time do not pass the queue's lock and
//! buffers between their cores for every span: on two busy cores that
//! traffic cost more than encoding the spans.
//!
//! A thread whose tokio runtime leaves at least half the cores free (a
//! worker running few jobs at a time for the machine's cores) hands its
//! spans to the export thread instead, which encodes and frees them on a
//! free core, off the jobs' path: for a worker running one job at a time,
//! encoding and freeing were most of what export cost each job
//! ([`Placement`]).

use std::cell::Cell;
use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use tracing::dispatcher::WeakDispatch;

use super::answer::PartialSuccess;
use super::encode;
use crate::telemetry::traces::BatchSettings;
use crate::telemetry::{Redactor, SubscriberSlot};

/// How long [`SpanProcessor::force_flush`] waits for the batches to leave.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Least time between two warnings about dropped spans or failing exports.
const WARNING_INTERVAL: Duration = Duration::from_secs(30);

/// Encoded bytes at which a batch leaves, however few spans it holds, so
/// that a batch of large spans is not refused whole: gRPC servers take 4
/// MiB in one message by default (the OpenTelemetry Collector's, Jaeger's
/// and the Datadog Agent's among them), and proxies in front of HTTP
/// collectors often 1 MiB (nginx's default body size).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Where encoded requests go.
pub(super) trait Transport: Send + Sync + 'static {
    /// Deliver one encoded `ExportTraceServiceRequest`, retrying as it sees
    /// fit: the spans the collector took it with but rejected, if it says
    /// so; the error says why it was not delivered.
    fn send(&self, body: Bytes) -> Result<Option<PartialSuccess>, String>;
}

/// Where a span is encoded once it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// On the export thread for spans ended on a thread whose tokio runtime
    /// has no more worker threads than half the cores the process may use;
    /// on the ending thread otherwise, and outside a runtime. When the
    /// runtime's threads fill the cores, moving spans to the export thread
    /// saves no CPU and costs the traffic of their data between cores; and
    /// one export thread encoding for many busy threads could fall behind
    /// them (it takes about a fifteenth of a trivial job's CPU).
    Auto,
    /// Always on the export thread.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "tests pin it, on threads outside any runtime")
    )]
    ExportThread,
}

impl Placement {
    /// Whether a span ended on this thread is encoded here.
    fn encodes_here(self) -> bool {
        match self {
            Self::Auto => AUTO_ENCODES_HERE
                .try_with(|decided| match decided.get() {
                    Some(here) => here,
                    None => {
                        let here = runtime_fills_the_cores();
                        decided.set(Some(here));
                        here
                    }
                })
                .unwrap_or(true),
            Self::ExportThread => false,
        }
    }
}

/// Whether the tokio runtime this thread belongs to has worker threads
/// for more than half the cores the process may use (or this thread
/// belongs to none).
fn runtime_fills_the_cores() -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return true;
    };
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    fills_the_cores(runtime.metrics().num_workers(), cores)
}

/// Whether `threads` busy threads leave too few of `cores` free for the
/// export thread to encode their spans: more than half of them.
fn fills_the_cores(threads: usize, cores: usize) -> bool {
    threads.saturating_mul(2) > cores
}

/// Encodes spans as they end (or has its thread encode them); a thread of
/// its own posts them in batches.
pub(crate) struct EncodingBatchProcessor {
    shared: Arc<Shared>,
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
    /// Where ended spans are encoded.
    placement: Placement,
    /// The batches being filled, one per thread by turns.
    shards: Box<[Shard]>,
    /// Spans in full batches waiting in `state.waiting` (written under the
    /// state's lock, read without it by the threads ending spans).
    waiting_spans: AtomicUsize,
    /// Spans dropped since the shipper last reported it.
    dropped: AtomicU64,
    /// Shutdown began: spans ending from now on are dropped, flushes are
    /// refused. Set under the state's lock.
    stopping: AtomicBool,
    state: Mutex<State>,
    /// Wakes the shipper: a batch filled up, a flush was asked for, or
    /// shutdown began.
    wake: Condvar,
    /// Wakes flushes and shutdown: a flush was served or the shipper stopped.
    served: Condvar,
    /// The encoded `resource` and `schema_url` of every request.
    resource: Mutex<Arc<[u8]>>,
    redactor: Redactor,
    /// The last request body's buffer, back from the transport, to take
    /// the place of the next batch buffer that leaves as a request: a batch
    /// is a few hundred kilobytes, and fresh pages for each cost more than
    /// encoding it.
    spare_body: Arc<Mutex<Vec<u8>>>,
    /// Where the shipper's warnings go.
    subscriber: SubscriberSlot,
}

/// A request body that goes back to the shipper once the transport has
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

/// One thread's batch being filled, on a cache line (pair) of its own.
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<Batch>);

thread_local! {
    /// This thread's shard number, taken by turns on its first span.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    /// Whether [`Placement::Auto`] encodes this thread's spans here,
    /// decided on its first span and kept, as a hint: a runtime's worker
    /// threads stay in it for life, and a thread that enters runtimes by
    /// turns (`main`, say) keeps the first answer, wrong at worst about
    /// where its few spans cost CPU.
    static AUTO_ENCODES_HERE: Cell<Option<bool>> = const { Cell::new(None) };
}

/// The next shard number to hand out.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

fn shard_number() -> usize {
    SHARD
        .try_with(|shard| match shard.get() {
            Some(number) => number,
            None => {
                let number = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
                shard.set(Some(number));
                number
            }
        })
        .unwrap_or(0)
}

/// Shards per processor: enough that the runtime's threads, one per core,
/// each get their own.
fn shard_count() -> usize {
    std::thread::available_parallelism().map_or(8, |cores| cores.get() * 4)
}

#[derive(Default)]
struct State {
    /// Batches ready to leave, oldest first: full ones, and at a flush,
    /// timed export or shutdown, every thread's partial one.
    waiting: VecDeque<Batch>,
    /// Sent batches, emptied, to be filled again.
    spare: Vec<Batch>,
    /// Flushes asked for, and the last one the shipper served.
    flushes_asked: u64,
    flushes_served: u64,
    /// Exports that failed so far, and why the last one did: a flush (or
    /// shutdown) fails when one failed while it waited.
    failures: u64,
    last_failure: Option<String>,
    stopped: bool,
}

impl State {
    /// `batch`, taken from its shard for sending, with a spare batch in
    /// its place, whose buffers keep their size: a fresh batch would grow
    /// its buffer again, a dozen reallocations into fresh pages.
    fn take_for_sending(&mut self, batch: &mut Batch) -> Batch {
        std::mem::replace(batch, self.spare.pop().unwrap_or_default())
    }
}

/// The spans of one request: encoded, by instrumentation scope (in
/// practice one: the host's tracer), and still to be encoded by the export
/// thread.
#[derive(Default)]
struct Batch {
    scopes: Vec<ScopeSpans>,
    /// Spans the export thread encodes before it sends the batch.
    deferred: Vec<SpanData>,
    /// Spans, encoded or deferred.
    spans: usize,
    /// The encoded spans' bytes.
    bytes: usize,
    /// The deferred spans' bytes, roughly ([`approximate_size`]).
    deferred_bytes: usize,
}

/// Bytes each batch buffer keeps free before its spans, for the head of
/// the request ([`encode::request_head`]: the resource, above all), so that
/// the request is written around the spans rather than copied from them. A
/// head that does not fit (a resource of kilobytes) is sent by copying.
const HEAD_ROOM: usize = 4096;

struct ScopeSpans {
    scope: InstrumentationScope,
    /// [`HEAD_ROOM`] bytes, then the encoded spans; empty before the first.
    encoded: Vec<u8>,
}

impl ScopeSpans {
    fn spans(&self) -> &[u8] {
        self.encoded.get(HEAD_ROOM..).unwrap_or_default()
    }
}

impl Batch {
    /// Append `span`, encoded here, its strings redacted.
    fn push(&mut self, span: &SpanData, redactor: &Redactor) {
        self.encode(span, redactor);
        self.spans += 1;
    }

    /// Append a span for the export thread to encode.
    fn defer(&mut self, span: SpanData) {
        self.deferred_bytes += approximate_size(&span);
        self.deferred.push(span);
        self.spans += 1;
    }

    /// Encode `span`, counted already, among the spans of its scope.
    fn encode(&mut self, span: &SpanData, redactor: &Redactor) {
        let scope = &span.instrumentation_scope;
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
        let encoded = &mut self.scopes[index].encoded;
        if encoded.is_empty() {
            encoded.resize(HEAD_ROOM, 0);
        }
        let before = encoded.len();
        encode::span(encoded, span, redactor);
        self.bytes += encoded.len() - before;
    }

    /// Whether it should leave now: it holds `max_spans` spans, or
    /// [`MAX_BATCH_BYTES`] of them (deferred ones as they will be about).
    fn is_full(&self, max_spans: usize) -> bool {
        self.spans >= max_spans || self.bytes + self.deferred_bytes >= MAX_BATCH_BYTES
    }

    /// Empty it, keeping its buffers (and scopes, which the next spans
    /// most likely share).
    fn clear(&mut self) {
        for entry in &mut self.scopes {
            entry.encoded.clear();
        }
        self.deferred.clear();
        self.spans = 0;
        self.bytes = 0;
        self.deferred_bytes = 0;
    }
}

/// About the bytes `span` takes encoded: the text and numbers it carries,
/// without the protobuf's tags and lengths. Enough for a batch of large
/// spans to leave near [`MAX_BATCH_BYTES`] without being encoded first; the
/// export thread splits what it finds larger.
fn approximate_size(span: &SpanData) -> usize {
    /// Ids, times, kind, flags and status.
    const FIXED: usize = 64;
    /// A link's ids and flags.
    const LINK: usize = 32;
    let attributes = |attributes: &[opentelemetry::KeyValue]| -> usize {
        attributes
            .iter()
            .map(|attribute| attribute.key.as_str().len() + value_size(&attribute.value))
            .sum()
    };
    FIXED
        + span.name.len()
        + attributes(&span.attributes)
        + span
            .events
            .iter()
            .map(|event| FIXED + event.name.len() + attributes(&event.attributes))
            .sum::<usize>()
        + span
            .links
            .iter()
            .map(|link| LINK + attributes(&link.attributes))
            .sum::<usize>()
        + match &span.status {
            opentelemetry::trace::Status::Error { description } => description.len(),
            _ => 0,
        }
}

fn value_size(value: &opentelemetry::Value) -> usize {
    use opentelemetry::{Array, Value};
    /// A number or a flag, with its tag, at most.
    const SCALAR: usize = 11;
    match value {
        Value::String(text) => text.as_str().len(),
        Value::Array(Array::String(texts)) => texts.iter().map(|text| text.as_str().len()).sum(),
        Value::Array(Array::Bool(items)) => items.len() * SCALAR,
        Value::Array(Array::I64(items)) => items.len() * SCALAR,
        Value::Array(Array::F64(items)) => items.len() * SCALAR,
        _ => SCALAR,
    }
}

impl EncodingBatchProcessor {
    /// Start the shipper thread, posting through `transport`, encoding
    /// spans where `placement` says and logging to `subscriber` once there
    /// is one.
    pub(super) fn start(
        transport: impl Transport,
        redactor: Redactor,
        settings: BatchSettings,
        placement: Placement,
        subscriber: SubscriberSlot,
    ) -> Result<Self, String> {
        let shared = Arc::new(Shared {
            settings: sane(settings),
            placement,
            shards: (0..shard_count()).map(|_| Shard::default()).collect(),
            waiting_spans: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            state: Mutex::default(),
            wake: Condvar::new(),
            served: Condvar::new(),
            resource: Mutex::new(encode::resource(&Resource::builder_empty().build(), &redactor).into()),
            redactor,
            spare_body: Arc::default(),
            subscriber,
        });
        let shipper = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn({
                let shared = shared.clone();
                move || shared.ship(&transport)
            })
            .map_err(|err| format!("cannot start the export thread: {err}"))?;
        Ok(Self {
            shared,
            shipper: Mutex::new(Some(shipper)),
        })
    }

    fn on_shipper_thread(&self) -> bool {
        lock(&self.shipper)
            .as_ref()
            .is_some_and(|shipper| shipper.thread().id() == std::thread::current().id())
    }
}

/// `settings` made workable, as the SDK's batch processor does: a queue of
/// at least one span, batches no larger than it, and a delay the shipper
/// cannot spin on.
fn sane(settings: BatchSettings) -> BatchSettings {
    let max_queue_size = settings.max_queue_size.max(1);
    BatchSettings {
        max_queue_size,
        max_export_batch_size: settings.max_export_batch_size.clamp(1, max_queue_size),
        schedule_delay: settings.schedule_delay.max(Duration::from_millis(1)),
    }
}

impl SpanProcessor for EncodingBatchProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        self.shared.enqueue(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.shared.flush(FLUSH_TIMEOUT)
    }

    /// Unlike the SDK's batch processor, reports a failed last export.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.on_shipper_thread() {
            // The shipper dropped the provider's last owner while logging:
            // it cannot wait for itself, and stops once this returns.
            self.shared.begin_stopping(&mut lock(&self.shared.state));
            return Ok(());
        }
        let outcome = self.shared.stop(timeout);
        if lock(&self.shared.state).stopped
            && let Some(shipper) = lock(&self.shipper).take()
        {
            // It has stopped: this returns at once.
            let _ = shipper.join();
        }
        outcome
    }

    fn set_resource(&mut self, resource: &Resource) {
        *lock(&self.shared.resource) = encode::resource(resource, &self.shared.redactor).into();
    }
}

impl Drop for EncodingBatchProcessor {
    /// Without a shutdown, the shipper still stops, sending what waits.
    fn drop(&mut self) {
        self.shared.begin_stopping(&mut lock(&self.shared.state));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent between statements: a panic elsewhere
    // while holding it leaves nothing half-done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Encode `span` into this thread's batch, or leave it there for the
    /// shipper to encode, as the placement says. The batch is this
    /// thread's own: no other thread waits on its lock but the shipper,
    /// when it takes the batch.
    fn enqueue(&self, span: SpanData) {
        // Before the lock: a thread's first answer reads the cgroup's files.
        let encode_here = self.placement.encodes_here();
        let shard = &self.shards[shard_number() % self.shards.len()];
        let mut batch = lock(&shard.0);
        // Read under the shard's lock: `stopping` is set before the shipper
        // takes the shards' batches for the last time.
        if self.is_stopping()
            || self.waiting_spans.load(Ordering::Relaxed) + batch.spans >= self.settings.max_queue_size
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if encode_here {
            batch.push(&span, &self.redactor);
        } else {
            batch.defer(span);
        }
        if batch.is_full(self.settings.max_export_batch_size) {
            let mut state = lock(&self.state);
            let full = state.take_for_sending(&mut batch);
            self.waiting_spans.fetch_add(full.spans, Ordering::Relaxed);
            state.waiting.push_back(full);
            self.wake.notify_one();
        }
    }

    /// Say that shutdown began, and wake the shipper to send what waits.
    /// It takes the state's guard: the shipper checks the flag under that
    /// lock before it sleeps, so holding it means the wake-up is not missed.
    fn begin_stopping(&self, _held: &mut State) {
        self.stopping.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Every thread's partial batch, taken for sending.
    fn take_partial_batches(&self) -> Vec<Batch> {
        self.shards
            .iter()
            .filter_map(|shard| {
                let mut batch = lock(&shard.0);
                if batch.spans == 0 {
                    return None;
                }
                // The shard's lock, then the state's, as `enqueue` takes them.
                Some(lock(&self.state).take_for_sending(&mut batch))
            })
            .collect()
    }

    /// Ask the shipper to send everything waiting, and wait up to
    /// `timeout` for the outcome.
    fn flush(&self, timeout: Duration) -> OTelSdkResult {
        let mut state = lock(&self.state);
        if self.is_stopping() {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        state.flushes_asked += 1;
        let ticket = state.flushes_asked;
        self.wake.notify_one();
        self.wait(state, timeout, |state| {
            if state.flushes_served >= ticket {
                Some(Ok(()))
            } else if state.stopped {
                Some(Err(OTelSdkError::AlreadyShutdown))
            } else {
                None
            }
        })
    }

    /// Stop the shipper once it has sent everything waiting, waiting up to
    /// `timeout` for it; the outcome of that last export.
    fn stop(&self, timeout: Duration) -> OTelSdkResult {
        let mut state = lock(&self.state);
        if self.is_stopping() {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        self.begin_stopping(&mut state);
        self.wait(state, timeout, |state| state.stopped.then_some(Ok(())))
    }

    /// Wait up to `timeout` for the shipper to get where `done` says, then
    /// report an export that failed meanwhile.
    fn wait(
        &self,
        mut state: MutexGuard<'_, State>,
        timeout: Duration,
        done: impl Fn(&State) -> Option<OTelSdkResult>,
    ) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let failures_before = state.failures;
        loop {
            if let Some(outcome) = done(&state) {
                if outcome.is_ok() && state.failures > failures_before {
                    let why = state.last_failure.clone().unwrap_or_default();
                    return Err(OTelSdkError::InternalFailure(why));
                }
                return outcome;
            }
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
    }

    /// The shipper thread: send each batch as it fills up, everything
    /// waiting every `schedule_delay` and when a flush asks, one batch per
    /// request (or more, for deferred spans larger encoded than estimated),
    /// until stopped.
    fn ship(&self, transport: &impl Transport) {
        let _stopped = MarkStopped(self);
        let mut shipper = Shipper {
            next_timed_export: Instant::now() + self.settings.schedule_delay,
            draining: 0,
            serving: None,
            final_drain: false,
            warnings: Warnings {
                subscriber: self.subscriber.clone(),
                ..Warnings::default()
            },
        };
        loop {
            match self.next_step(&mut shipper) {
                Step::Send(mut batch) => {
                    self.send_all(transport, &mut batch, |outcome| {
                        if let Err(err) = &outcome {
                            let mut state = lock(&self.state);
                            state.failures += 1;
                            state.last_failure = Some(err.clone());
                        }
                        shipper.warnings.export(outcome);
                    });
                    let mut state = lock(&self.state);
                    // Partial batches taken at timed exports come back too;
                    // keep no more than the shards can take.
                    if state.spare.len() <= self.shards.len() {
                        state.spare.push(batch);
                    }
                }
                Step::Served(ticket) => {
                    lock(&self.state).flushes_served = ticket;
                    self.served.notify_all();
                }
                Step::Stop => {
                    // Reported, unthrottled, as the shipper stops.
                    self.dropped
                        .fetch_add(std::mem::take(&mut shipper.warnings.dropped), Ordering::Relaxed);
                    return;
                }
            }
            shipper.warnings.dropped(self.dropped.swap(0, Ordering::Relaxed));
        }
    }

    /// Wait until there is something to do, and say what.
    fn next_step(&self, shipper: &mut Shipper) -> Step {
        let mut state = lock(&self.state);
        loop {
            if shipper.draining == 0 && shipper.serving.is_none() {
                let now = Instant::now();
                let flush_asked = state.flushes_asked > state.flushes_served;
                let timed = now >= shipper.next_timed_export;
                if timed {
                    shipper.next_timed_export = now + self.settings.schedule_delay;
                }
                let stop_asked = self.is_stopping() && !shipper.final_drain;
                if stop_asked || flush_asked || timed {
                    let ticket = state.flushes_asked;
                    // The shards are locked before the state, never after.
                    drop(state);
                    let partial = self.take_partial_batches();
                    state = lock(&self.state);
                    let spans: usize = partial.iter().map(|batch| batch.spans).sum();
                    self.waiting_spans.fetch_add(spans, Ordering::Relaxed);
                    state.waiting.extend(partial);
                    // What waits now; spans ended meanwhile wait their turn.
                    shipper.final_drain |= stop_asked;
                    shipper.draining = state.waiting.len();
                    shipper.serving = (stop_asked || flush_asked).then_some(ticket);
                }
            }
            if shipper.draining > 0 {
                shipper.draining -= 1;
                if let Some(batch) = self.pop_waiting(&mut state) {
                    return Step::Send(batch);
                }
            }
            if let Some(ticket) = shipper.serving.take() {
                return Step::Served(ticket);
            }
            if shipper.final_drain {
                return Step::Stop;
            }
            // Between drains, only full batches wait.
            if let Some(batch) = self.pop_waiting(&mut state) {
                return Step::Send(batch);
            }
            let wait = shipper.next_timed_export.saturating_duration_since(Instant::now());
            state = self
                .wake
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn pop_waiting(&self, state: &mut State) -> Option<Batch> {
        let batch = state.waiting.pop_front()?;
        self.waiting_spans.fetch_sub(batch.spans, Ordering::Relaxed);
        Some(batch)
    }

    /// Post `batch`, which holds a span at least, encoding its deferred
    /// spans first: in one request, or in as many as [`MAX_BATCH_BYTES`]
    /// takes once they are encoded. Each request's outcome goes to `sent`;
    /// the batch is left empty.
    fn send_all(
        &self,
        transport: &impl Transport,
        batch: &mut Batch,
        mut sent: impl FnMut(Result<Option<PartialSuccess>, String>),
    ) {
        let mut deferred = std::mem::take(&mut batch.deferred);
        let mut spans = deferred.drain(..);
        loop {
            for span in spans.by_ref() {
                batch.encode(&span, &self.redactor);
                if batch.bytes >= MAX_BATCH_BYTES {
                    break;
                }
            }
            sent(self.send(transport, batch));
            batch.clear();
            if spans.len() == 0 {
                break;
            }
        }
        drop(spans);
        // Its room, for the shard that takes this batch next.
        batch.deferred = deferred;
    }

    /// Post `batch`'s encoded spans, of which it holds one at least: full
    /// batches do, partial ones are taken only when they hold some, and
    /// [`Self::send_all`] encodes one at least of those it defers.
    fn send(&self, transport: &impl Transport, batch: &mut Batch) -> Result<Option<PartialSuccess>, String> {
        let resource = lock(&self.resource).clone();
        let mut filled = batch.scopes.iter_mut().filter(|entry| !entry.spans().is_empty());
        let body = match (filled.next(), filled.next()) {
            (Some(only), None) => self.written_around(only, &resource),
            _ => None,
        };
        let body = body.unwrap_or_else(|| self.copied(batch, &resource));
        transport.send(body)
    }

    /// The request for the spans of one scope, written around them in
    /// their buffer, which leaves with the request; the buffer of the last
    /// request sent takes its place. None when the head does not fit.
    fn written_around(&self, entry: &mut ScopeSpans, resource: &[u8]) -> Option<Bytes> {
        let mut head = Vec::new();
        encode::request_head(&mut head, resource, &entry.scope, entry.spans().len(), &self.redactor);
        let start = HEAD_ROOM.checked_sub(head.len())?;
        entry.encoded[start..HEAD_ROOM].copy_from_slice(&head);
        encode::scope_trailer(&mut entry.encoded, &entry.scope);
        let mut spare = self.spare_body();
        // Before the first request comes back there is no spare: reserve
        // the room once rather than grow into it span by span.
        spare.reserve(entry.encoded.len());
        let body = std::mem::replace(&mut entry.encoded, spare);
        Some(self.recycled(body).slice(start..))
    }

    /// The request for `batch`, copied from its buffers.
    fn copied(&self, batch: &Batch, resource: &[u8]) -> Bytes {
        let mut body = self.spare_body();
        encode::request(
            &mut body,
            resource,
            batch
                .scopes
                .iter()
                .filter(|entry| !entry.spans().is_empty())
                .map(|entry| (&entry.scope, entry.spans())),
            &self.redactor,
        );
        self.recycled(body)
    }

    /// The last request's buffer, emptied (none before it comes back).
    fn spare_body(&self) -> Vec<u8> {
        let mut body = std::mem::take(&mut *lock(&self.spare_body));
        body.clear();
        body
    }

    /// `body`, whose buffer comes back as the spare once the transport
    /// has dropped it.
    fn recycled(&self, body: Vec<u8>) -> Bytes {
        Bytes::from_owner(Recycled {
            body,
            spare: self.spare_body.clone(),
        })
    }
}

/// What the shipper does next.
enum Step {
    Send(Batch),
    /// Everything waiting when the flush (or shutdown) with this ticket
    /// was asked for has been sent.
    Served(u64),
    Stop,
}

/// The shipper thread's own state.
struct Shipper {
    next_timed_export: Instant,
    /// Batches still to send before the flush being served, or the timed
    /// export, is done.
    draining: usize,
    /// The flush (or shutdown) being served.
    serving: Option<u64>,
    /// Shutdown began: what waited then is being (or has been) sent.
    final_drain: bool,
    warnings: Warnings,
}

/// Marks the shipper stopped however it ends, a panic included, so that
/// flushes and shutdown never wait for a shipper that is gone.
struct MarkStopped<'a>(&'a Shared);

impl Drop for MarkStopped<'_> {
    fn drop(&mut self) {
        // No span enters a shard from now on; count those still there.
        self.0.stopping.store(true, Ordering::Release);
        let in_shards: usize = self.0.take_partial_batches().iter().map(|batch| batch.spans).sum();
        let mut state = lock(&self.0.state);
        if std::thread::panicking() {
            state.failures += 1;
            state.last_failure = Some("the export thread panicked".into());
        }
        state.stopped = true;
        let unsent = self.0.waiting_spans.load(Ordering::Relaxed) + in_shards;
        let dropped = self.0.dropped.swap(0, Ordering::Relaxed) + unsent as u64;
        drop(state);
        self.0.served.notify_all();
        if dropped > 0 {
            logging_to(&self.0.subscriber, || {
                tracing::warn!(
                    spans = dropped,
                    "spans dropped: the export queue was full or export had stopped"
                );
            });
        }
    }
}

/// Run `log` with the subscriber the spans come from as the thread's
/// default (not the global one, which may be another's or none), if it
/// still exists. Only around the export's own warnings, which are rare:
/// while any thread has a default of its own, every thread's events take
/// tracing's slower path.
fn logging_to<R>(subscriber: &SubscriberSlot, log: impl FnOnce() -> R) -> R {
    match subscriber.get().and_then(WeakDispatch::upgrade) {
        Some(subscriber) => tracing::dispatcher::with_default(&subscriber, log),
        None => log(),
    }
}

/// Whether a warning last given at `last` may be given again, at most one
/// per [`WARNING_INTERVAL`]; if so, it is taken as given now.
fn warning_due(last: &mut Option<Instant>) -> bool {
    let due = last.is_none_or(|at| at.elapsed() >= WARNING_INTERVAL);
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// Warnings about lost spans, at most one per [`WARNING_INTERVAL`] each, so
/// that a collector that is down does not flood the logs.
#[derive(Default)]
struct Warnings {
    /// Where they go.
    subscriber: SubscriberSlot,
    /// An export failed and was warned about; none has succeeded since.
    warned_failing: bool,
    last_failure_warning: Option<Instant>,
    dropped: u64,
    last_drop_warning: Option<Instant>,
    last_rejection_warning: Option<Instant>,
}

impl Warnings {
    fn export(&mut self, outcome: Result<Option<PartialSuccess>, String>) {
        match outcome {
            Ok(partial) => {
                if std::mem::take(&mut self.warned_failing) {
                    logging_to(&self.subscriber, || tracing::info!("span export works again"));
                }
                if let Some(partial) = partial {
                    self.rejected(&partial);
                }
            }
            Err(error) => {
                if warning_due(&mut self.last_failure_warning) {
                    self.warned_failing = true;
                    logging_to(&self.subscriber, || {
                        tracing::warn!(error, "span export failed; its batch is dropped");
                    });
                }
            }
        }
    }

    /// A partial success: spans the collector took the request of but
    /// rejected, or a warning of its own (not retried, as the OTLP
    /// specification says, only reported).
    fn rejected(&mut self, partial: &PartialSuccess) {
        /// Enough of the collector's message to say what went wrong.
        const MAX_REASON_CHARS: usize = 512;
        if !warning_due(&mut self.last_rejection_warning) {
            return;
        }
        let reason: String = partial.error_message.chars().take(MAX_REASON_CHARS).collect();
        logging_to(&self.subscriber, || {
            if partial.rejected_spans == 0 {
                tracing::warn!(reason, "the collector took the spans with a warning");
            } else {
                tracing::warn!(
                    rejected_spans = partial.rejected_spans,
                    reason,
                    "the collector rejected spans it was sent"
                );
            }
        });
    }

    fn dropped(&mut self, spans: u64) {
        self.dropped += spans;
        if self.dropped > 0 && warning_due(&mut self.last_drop_warning) {
            let spans = std::mem::take(&mut self.dropped);
            logging_to(&self.subscriber, || {
                tracing::warn!(
                    spans,
                    "spans dropped: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE)"
                );
            });
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

    /// What the test transport does with a request.
    #[derive(Clone, Copy, PartialEq)]
    enum Answer {
        Deliver,
        Fail,
        Panic,
    }

    /// Hands each request to the test, once `gate` lets it through when
    /// gated, answering as `answers` say in turn, then delivering.
    struct Recorder {
        requests: Mutex<mpsc::Sender<Bytes>>,
        entered: Mutex<mpsc::Sender<()>>,
        gate: Mutex<mpsc::Receiver<()>>,
        gated: bool,
        answers: Mutex<VecDeque<Answer>>,
    }

    struct Recorded {
        requests: mpsc::Receiver<Bytes>,
        entered: mpsc::Receiver<()>,
        gate: mpsc::Sender<()>,
    }

    impl Transport for Recorder {
        fn send(&self, body: Bytes) -> Result<Option<PartialSuccess>, String> {
            let _ = lock(&self.entered).send(());
            if self.gated {
                let _ = lock(&self.gate).recv();
            }
            let answer = lock(&self.answers).pop_front().unwrap_or(Answer::Deliver);
            match answer {
                Answer::Deliver => {
                    let _ = lock(&self.requests).send(body);
                    Ok(None)
                }
                Answer::Fail => {
                    let _ = lock(&self.requests).send(body);
                    Err("the collector answered 400 Bad Request".into())
                }
                Answer::Panic => panic!("the transport broke"),
            }
        }
    }

    fn settings(queue: usize, batch: usize) -> BatchSettings {
        BatchSettings {
            max_queue_size: queue,
            max_export_batch_size: batch,
            schedule_delay: Duration::from_secs(600),
        }
    }

    /// A processor placing spans as in production: on a thread in no
    /// runtime, as the tests' own are, it encodes them where they end.
    fn processor(settings: BatchSettings, gated: bool, answers: &[Answer]) -> (EncodingBatchProcessor, Recorded) {
        placed_processor(settings, Placement::Auto, gated, answers)
    }

    fn placed_processor(
        settings: BatchSettings,
        placement: Placement,
        gated: bool,
        answers: &[Answer],
    ) -> (EncodingBatchProcessor, Recorded) {
        let (recorder, recorded) = recorder(gated, answers);
        let processor = EncodingBatchProcessor::start(
            recorder,
            Redactor::new([], []).expect("redactor"),
            settings,
            placement,
            Arc::default(),
        )
        .expect("start");
        (processor, recorded)
    }

    fn recorder(gated: bool, answers: &[Answer]) -> (Recorder, Recorded) {
        let (requests, requests_rx) = mpsc::channel();
        let (entered, entered_rx) = mpsc::channel();
        let (gate, gate_rx) = mpsc::channel();
        let recorder = Recorder {
            requests: Mutex::new(requests),
            entered: Mutex::new(entered),
            gate: Mutex::new(gate_rx),
            gated,
            answers: Mutex::new(answers.iter().copied().collect()),
        };
        let recorded = Recorded {
            requests: requests_rx,
            entered: entered_rx,
            gate,
        };
        (recorder, recorded)
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

    fn delivered(recorded: &Recorded) -> Vec<Vec<u64>> {
        recorded.requests.try_iter().map(|body| span_ids(&body)).collect()
    }

    const WAIT: Duration = Duration::from_secs(10);

    /// A processor whose export of its first batch, spans 1 and 2, hangs
    /// until the test opens the gate.
    fn stuck_on_the_first_batch(settings: BatchSettings, placement: Placement) -> (EncodingBatchProcessor, Recorded) {
        let (processor, recorded) = placed_processor(settings, placement, true, &[]);
        processor.on_end(span(1, true));
        processor.on_end(span(2, true));
        recorded.entered.recv_timeout(WAIT).expect("the export starts");
        (processor, recorded)
    }

    #[test]
    fn full_batches_leave_at_once_and_a_flush_sends_the_rest() {
        let (processor, recorded) = processor(settings(8, 3), false, &[]);
        for n in 1..=7 {
            processor.on_end(span(n, true));
        }
        processor.on_end(span(99, false));
        // Two full batches leave without a flush (the timer is ten minutes off).
        for expected in [[1, 2, 3], [4, 5, 6]] {
            let body = recorded.requests.recv_timeout(WAIT).expect("a full batch");
            assert_eq!(span_ids(&body), expected);
        }
        processor.force_flush().expect("flush");
        // The unsampled span is not exported.
        assert_eq!(delivered(&recorded), [[7]]);
        // Nothing waits: a flush sends nothing.
        processor.force_flush().expect("empty flush");
        assert!(delivered(&recorded).is_empty());
    }

    #[test]
    fn a_batch_of_large_spans_leaves_once_it_reaches_the_byte_limit() {
        let (processor, recorded) = processor(settings(1_000, 100), false, &[]);
        let large = |n| {
            let mut span = span(n, true);
            span.attributes.push(opentelemetry::KeyValue::new(
                "text",
                "x".repeat(MAX_BATCH_BYTES / 7 + 1),
            ));
            span
        };
        for n in 1..=8 {
            processor.on_end(large(n));
        }
        // Seven spans reach the limit and leave, far short of 100 spans.
        let body = recorded.requests.recv_timeout(WAIT).expect("a batch at the byte limit");
        assert_eq!(span_ids(&body), [1, 2, 3, 4, 5, 6, 7]);
        processor.force_flush().expect("flush");
        assert_eq!(delivered(&recorded), [[8]]);
    }

    #[test]
    fn spans_encoded_on_the_export_thread_are_sent_as_those_encoded_where_they_end() {
        let sent = |placement| {
            let (processor, recorded) = placed_processor(settings(8, 3), placement, false, &[]);
            let mut with_event = span(4, true);
            with_event.events.events.push(opentelemetry::trace::Event::new(
                "limit hit",
                SystemTime::UNIX_EPOCH,
                vec![opentelemetry::KeyValue::new("limit", "fuel")],
                0,
            ));
            for span in [
                span(1, true),
                span(2, true),
                span(3, true),
                with_event,
                span(5, false),
                span(6, true),
            ] {
                processor.on_end(span);
            }
            let full = recorded.requests.recv_timeout(WAIT).expect("a full batch");
            let deferred = this_threads_batch(&processor).deferred.len();
            processor.force_flush().expect("flush");
            let Ok([rest]) = <[Bytes; 1]>::try_from(recorded.requests.try_iter().collect::<Vec<_>>()) else {
                panic!("one request for the rest")
            };
            (full, rest, deferred)
        };
        let (full, rest, deferred) = sent(Placement::ExportThread);
        assert_eq!(span_ids(&full), [1, 2, 3]);
        assert_eq!(span_ids(&rest), [4, 6]);
        assert_eq!(deferred, 2, "spans 4 and 6 wait unencoded");
        // This thread is in no runtime: it encodes its spans itself.
        let (full_here, rest_here, deferred_here) = sent(Placement::Auto);
        assert_eq!(deferred_here, 0);
        // Byte for byte, but for the times the spans were made at.
        assert_eq!(without_times(&full), without_times(&full_here));
        assert_eq!(without_times(&rest), without_times(&rest_here));
    }

    /// The batch this thread fills.
    fn this_threads_batch(processor: &EncodingBatchProcessor) -> MutexGuard<'_, Batch> {
        let shards = &processor.shared.shards;
        lock(&shards[shard_number() % shards.len()].0)
    }

    /// A span of `n` with text enough that seven fill a batch.
    fn large_span(n: u64) -> SpanData {
        let mut span = span(n, true);
        span.attributes.push(opentelemetry::KeyValue::new(
            "text",
            "x".repeat(MAX_BATCH_BYTES / 7 + 1),
        ));
        span
    }

    /// A request with its spans' start and end times zeroed.
    fn without_times(body: &Bytes) -> ExportTraceServiceRequest {
        let mut request = ExportTraceServiceRequest::decode(body.as_ref()).expect("protobuf");
        for span in request
            .resource_spans
            .iter_mut()
            .flat_map(|resource| &mut resource.scope_spans)
            .flat_map(|scope| &mut scope.spans)
        {
            span.start_time_unix_nano = 0;
            span.end_time_unix_nano = 0;
        }
        request
    }

    #[test]
    fn a_batch_of_large_deferred_spans_leaves_once_it_reaches_the_byte_limit() {
        let (processor, recorded) = placed_processor(settings(1_000, 100), Placement::ExportThread, false, &[]);
        for n in 1..=8 {
            processor.on_end(large_span(n));
        }
        // By their estimated size, as spans encoded where they end leave.
        let body = recorded.requests.recv_timeout(WAIT).expect("a batch at the byte limit");
        assert_eq!(span_ids(&body), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(this_threads_batch(&processor).deferred.len(), 1);
        processor.force_flush().expect("flush");
        assert_eq!(delivered(&recorded), [[8]]);
    }

    #[test]
    fn deferred_spans_larger_than_their_batch_leave_in_requests_of_the_byte_limit() {
        let (recorder, recorded) = recorder(false, &[Answer::Fail]);
        let (processor, _unused) = processor(settings(1_000, 100), false, &[]);
        let mut batch = Batch::default();
        for n in 1..=15 {
            batch.defer(large_span(n));
        }
        let mut outcomes = Vec::new();
        processor
            .shared
            .send_all(&recorder, &mut batch, |outcome| outcomes.push(outcome.is_ok()));
        assert_eq!(
            delivered(&recorded),
            [vec![1, 2, 3, 4, 5, 6, 7], vec![8, 9, 10, 11, 12, 13, 14], vec![15]]
        );
        // The first request failed; the others were still sent.
        assert_eq!(outcomes, [false, true, true]);
        assert_eq!(
            (batch.spans, batch.bytes, batch.deferred_bytes, batch.deferred.len()),
            (0, 0, 0, 0)
        );
        assert!(batch.deferred.capacity() >= 15, "the batch keeps its room");
    }

    #[test]
    fn a_runtime_with_threads_for_at_most_half_the_cores_leaves_its_spans_to_the_export_thread() {
        // Threads, cores: whether the threads encode their own spans.
        for (threads, cores, fills) in [
            (1, 1, true),
            (1, 2, false),
            (2, 2, true),
            (2, 4, false),
            (3, 4, true),
            (8, 16, false),
            (9, 16, true),
        ] {
            assert_eq!(
                fills_the_cores(threads, cores),
                fills,
                "{threads} threads, {cores} cores"
            );
        }
    }

    #[test]
    fn a_thread_places_its_spans_by_its_runtimes_threads_and_encodes_them_itself_outside_any() {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let deferred_on = |runtime: tokio::runtime::Runtime| {
            let (processor, _recorded) = processor(settings(64, 64), false, &[]);
            let processor = Arc::new(processor);
            let ending = processor.clone();
            runtime.block_on(async move {
                tokio::spawn(async move {
                    ending.on_end(span(1, true));
                    this_threads_batch(&ending).deferred.len()
                })
                .await
                .expect("task")
            })
        };
        // A one-thread runtime leaves a core free on two cores or more.
        let one_thread = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        assert_eq!(deferred_on(one_thread), usize::from(cores >= 2));
        let per_core = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .build()
            .expect("runtime");
        assert_eq!(deferred_on(per_core), 0);
        // Outside any runtime, here.
        assert!(runtime_fills_the_cores());
    }

    #[test]
    fn requests_hold_the_resource_and_every_scope_however_they_are_written() {
        let (mut processor, recorded) = processor(settings(64, 64), false, &[]);
        let small = Resource::builder_empty().with_service_name("agents").build();
        // Too big for the room kept before the spans: the request is copied.
        let big = "x".repeat(2 * HEAD_ROOM);
        let huge = Resource::builder_empty()
            .with_service_name("agents")
            .with_attribute(opentelemetry::KeyValue::new("big", big.clone()))
            .build();
        let other = InstrumentationScope::builder("other").with_version("2").build();
        for (resource, scopes) in [(&small, 1), (&small, 2), (&huge, 1), (&small, 1)] {
            processor.set_resource(resource);
            processor.on_end(span(1, true));
            if scopes == 2 {
                let mut span = span(2, true);
                span.instrumentation_scope = other.clone();
                processor.on_end(span);
            }
            processor.force_flush().expect("flush");
            let body = recorded.requests.recv_timeout(WAIT).expect("a request");
            let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("protobuf");
            let [sent] = request.resource_spans.as_slice() else {
                panic!("one resource: {request:?}")
            };
            let attributes = &sent.resource.as_ref().expect("a resource").attributes;
            assert_eq!(attributes.len(), resource.len());
            let sent_big = attributes.iter().find(|attribute| attribute.key == "big");
            assert_eq!(sent_big.is_some(), std::ptr::eq(resource, &huge));
            let scope_names: Vec<&str> = sent
                .scope_spans
                .iter()
                .map(|scope_spans| scope_spans.scope.as_ref().map_or("", |scope| scope.name.as_str()))
                .collect();
            assert_eq!(scope_names, ["wink-host", "other"][..scopes]);
            assert_eq!(span_ids(&body), [1, 2][..scopes]);
        }
    }

    #[test]
    fn a_flush_leaves_the_thread_a_batch_that_keeps_its_room() {
        let (processor, recorded) = processor(settings(64, 4), false, &[]);
        // A full batch leaves, and comes back emptied as a spare.
        for n in 1..=4 {
            processor.on_end(span(n, true));
        }
        recorded.requests.recv_timeout(WAIT).expect("a full batch");
        processor.on_end(span(5, true));
        processor.force_flush().expect("flush");
        assert_eq!(delivered(&recorded), [[5]]);
        let shards = &processor.shared.shards;
        let batch = lock(&shards[shard_number() % shards.len()].0);
        let room: usize = batch.scopes.iter().map(|entry| entry.encoded.capacity()).sum();
        assert!(
            room > 0,
            "the flush left this thread an empty buffer, to grow again span by span"
        );
    }

    #[test]
    fn spans_ended_on_many_threads_at_once_arrive_once_each() {
        for placement in [Placement::Auto, Placement::ExportThread] {
            let (processor, recorded) = placed_processor(settings(100_000, 64), placement, false, &[]);
            let processor = Arc::new(processor);
            let threads: Vec<_> = (0..4_u64)
                .map(|thread| {
                    let processor = processor.clone();
                    std::thread::spawn(move || {
                        for n in 0..1_000 {
                            processor.on_end(span(thread * 1_000 + n + 1, true));
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().expect("thread");
            }
            processor.force_flush().expect("flush");
            let mut ids: Vec<u64> = delivered(&recorded).into_iter().flatten().collect();
            ids.sort_unstable();
            assert_eq!(ids, (1..=4_000).collect::<Vec<u64>>(), "{placement:?}");
        }
    }

    #[test]
    fn a_partial_batch_leaves_after_the_schedule_delay() {
        let delay = Duration::from_millis(50);
        let (processor, recorded) = processor(
            BatchSettings {
                schedule_delay: delay,
                ..settings(8, 4)
            },
            false,
            &[],
        );
        let ended = Instant::now();
        processor.on_end(span(1, true));
        let body = recorded.requests.recv_timeout(WAIT).expect("a timed export");
        assert_eq!(span_ids(&body), [1]);
        assert!(
            ended.elapsed() >= delay,
            "sent before its batch filled or its time came"
        );
    }

    #[test]
    fn a_full_queue_drops_the_spans_that_do_not_fit() {
        for placement in [Placement::Auto, Placement::ExportThread] {
            // The shipper holds the first batch, stuck in a slow export...
            let (processor, recorded) = stuck_on_the_first_batch(settings(4, 2), placement);
            // ...while four spans fill the queue and three more are dropped.
            for n in 3..=9 {
                processor.on_end(span(n, true));
            }
            assert_eq!(processor.shared.dropped.load(Ordering::Relaxed), 3, "{placement:?}");
            for _ in 0..3 {
                recorded.gate.send(()).expect("gate");
            }
            processor.force_flush().expect("flush");
            assert_eq!(delivered(&recorded), [[1, 2], [3, 4], [5, 6]], "{placement:?}");
        }
    }

    #[test]
    fn a_stuck_export_times_out_flush_and_shutdown_and_the_queue_still_drains() {
        let (processor, recorded) = stuck_on_the_first_batch(settings(8, 2), Placement::Auto);
        processor.on_end(span(3, true));
        // Stuck: the flush gives up, and so does a shutdown.
        assert!(matches!(
            processor.shared.flush(Duration::from_millis(50)),
            Err(OTelSdkError::Timeout(_))
        ));
        assert!(matches!(
            processor.shutdown_with_timeout(Duration::from_millis(50)),
            Err(OTelSdkError::Timeout(_))
        ));
        recorded.gate.send(()).expect("gate");
        recorded.gate.send(()).expect("gate");
        // Once unstuck, the shipper sends what waited at shutdown and stops.
        let body = recorded.requests.recv_timeout(WAIT).expect("the batch in flight");
        assert_eq!(span_ids(&body), [1, 2]);
        let body = recorded.requests.recv_timeout(WAIT).expect("the batch behind it");
        assert_eq!(span_ids(&body), [3]);
        let stopped = Instant::now() + WAIT;
        while !lock(&processor.shared.state).stopped {
            assert!(Instant::now() < stopped, "the shipper did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(processor.shutdown(), Err(OTelSdkError::AlreadyShutdown)));
    }

    #[test]
    fn a_flush_returns_once_the_export_in_flight_and_what_queued_behind_it_are_sent() {
        let (processor, recorded) = stuck_on_the_first_batch(settings(8, 2), Placement::Auto);
        processor.on_end(span(3, true));
        let processor = Arc::new(processor);
        let flush = std::thread::spawn({
            let processor = processor.clone();
            move || processor.force_flush()
        });
        recorded.gate.send(()).expect("gate");
        // The flush's own export of span 3 starts: the flush must wait for it.
        recorded.entered.recv_timeout(WAIT).expect("the flush's export starts");
        assert!(!flush.is_finished(), "the flush returned with spans still waiting");
        recorded.gate.send(()).expect("gate");
        flush.join().expect("flush thread").expect("flush");
        assert_eq!(delivered(&recorded), [vec![1, 2], vec![3]]);
    }

    #[test]
    fn a_flush_fails_only_for_an_export_that_failed_while_it_waited() {
        let (processor, recorded) = processor(settings(8, 4), false, &[Answer::Fail]);
        processor.on_end(span(1, true));
        assert!(processor.force_flush().is_err());
        processor.on_end(span(2, true));
        processor.force_flush().expect("the next flush delivers");
        assert_eq!(delivered(&recorded), [[1], [2]]);
    }

    #[test]
    fn a_failed_export_fails_the_flush_and_the_shutdown() {
        let (processor, recorded) = processor(settings(8, 4), false, &[Answer::Fail, Answer::Fail]);
        processor.on_end(span(1, true));
        let err = processor.force_flush().expect_err("the export failed").to_string();
        assert!(err.contains("400 Bad Request"), "{err}");
        assert_eq!(delivered(&recorded), [[1]]);

        processor.on_end(span(2, true));
        assert!(processor.shutdown().is_err(), "the last export failed too");
        assert_eq!(delivered(&recorded), [[2]]);
        // Spans ended after shutdown are dropped, and counted.
        processor.on_end(span(3, true));
        let shared = &processor.shared;
        assert_eq!(shared.waiting_spans.load(Ordering::Relaxed), 0);
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn dropping_the_processor_still_sends_what_waits() {
        for placement in [Placement::Auto, Placement::ExportThread] {
            let (processor, recorded) = placed_processor(settings(8, 4), placement, false, &[]);
            processor.on_end(span(1, true));
            drop(processor);
            let body = recorded.requests.recv_timeout(WAIT).expect("sent on drop");
            assert_eq!(span_ids(&body), [1], "{placement:?}");
        }
    }

    #[test]
    fn a_shipper_that_panicked_fails_flushes_at_once() {
        let (processor, recorded) = processor(settings(8, 1), false, &[Answer::Panic]);
        processor.on_end(span(1, true));
        recorded.entered.recv_timeout(WAIT).expect("the export starts");
        let started = Instant::now();
        assert!(matches!(processor.force_flush(), Err(OTelSdkError::AlreadyShutdown)));
        assert!(started.elapsed() < FLUSH_TIMEOUT, "the flush waited for a dead shipper");
    }

    #[test]
    fn a_panic_in_the_last_export_fails_the_shutdown() {
        let (processor, _recorded) = processor(settings(8, 4), false, &[Answer::Panic]);
        processor.on_end(span(1, true));
        let err = processor.shutdown().expect_err("the last export panicked").to_string();
        assert!(err.contains("panicked"), "{err}");
    }

    #[test]
    fn unworkable_settings_are_made_workable() {
        let sane = sane(BatchSettings {
            max_queue_size: 0,
            max_export_batch_size: 10,
            schedule_delay: Duration::ZERO,
        });
        assert_eq!(
            sane,
            BatchSettings {
                max_queue_size: 1,
                max_export_batch_size: 1,
                schedule_delay: Duration::from_millis(1),
            }
        );
    }

    /// The log lines `run` writes, as a user would see them.
    fn logged(run: impl FnOnce()) -> String {
        let sink = crate::telemetry::TestSink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        sink.text()
    }

    #[test]
    fn failing_exports_and_dropped_spans_are_warned_about_once_per_interval() {
        let mut warnings = Warnings::default();
        let first = logged(|| {
            warnings.export(Err("the collector answered 400 Bad Request".into()));
            warnings.dropped(3);
        });
        assert!(
            first.contains("span export failed; its batch is dropped")
                && first.contains("the collector answered 400 Bad Request"),
            "{first}"
        );
        assert!(
            first.contains("spans dropped: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE)")
                && first.contains("spans=3"),
            "{first}"
        );
        // Within the interval, more of the same stays quiet, but the drops
        // are still counted...
        let quiet = logged(|| {
            warnings.export(Err("cannot reach the collector".into()));
            warnings.dropped(2);
        });
        assert_eq!(quiet, "");
        assert_eq!(warnings.dropped, 2);
        // ...and a working export is said once.
        let recovered = logged(|| {
            warnings.export(Ok(None));
            warnings.export(Ok(None));
        });
        assert_eq!(recovered.matches("span export works again").count(), 1, "{recovered}");
    }

    #[test]
    fn spans_the_collector_rejects_are_warned_about_once_per_interval() {
        let rejected = |rejected_spans, reason: &str| {
            Ok(Some(PartialSuccess {
                rejected_spans,
                error_message: reason.into(),
            }))
        };
        let mut warnings = Warnings::default();
        let first = logged(|| {
            warnings.export(rejected(3, "span too large"));
            warnings.export(rejected(3, "span too large"));
        });
        assert_eq!(first.lines().count(), 1, "{first}");
        assert!(
            first.contains("the collector rejected spans it was sent")
                && first.contains("rejected_spans=3")
                && first.contains("reason=\"span too large\""),
            "{first}"
        );
        let mut warnings = Warnings::default();
        let warning = logged(|| warnings.export(rejected(0, &"x".repeat(600))));
        assert!(
            warning.contains("the collector took the spans with a warning")
                && warning.contains(&format!("reason=\"{}\"", "x".repeat(512))),
            "{warning}"
        );
        assert!(!warning.contains(&"x".repeat(513)), "{warning}");
        assert_eq!(logged(|| warnings.export(Ok(None))), "");
    }

    #[test]
    fn spans_left_unsent_are_warned_about_as_the_shipper_stops() {
        let (processor, _recorded) = processor(settings(8, 4), false, &[]);
        processor.shutdown().expect("shutdown");
        processor.on_end(span(1, true));
        // As the shipper's own end does, on this thread, where the log is read.
        let stopping = logged(|| drop(MarkStopped(&processor.shared)));
        assert!(
            stopping.contains("spans dropped: the export queue was full or export had stopped")
                && stopping.contains("spans=1"),
            "{stopping}"
        );
    }
}
