//! The layer that turns the host's spans into OpenTelemetry spans, as the
//! subscriber holds it.

use std::any::TypeId;

use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::Context;

use super::batch_calls::BatchTracer;

/// The OpenTelemetry layer (`spans`, behind its per-layer filter), told of
/// everything but span enters and exits, and the batch tracer, which
/// [`BatchSpans::current`](super::BatchSpans::current) finds through the
/// subscriber.
///
/// Enters and exits are left out because a job's span is entered and exited
/// on every poll of its future: each enter cost a registry lookup in the
/// per-layer filter (for a layer that then did nothing), and each exit that
/// lookup, another in the OpenTelemetry layer, two locks and a clock read,
/// to note the exit's time as the span's end. Without them a span ends when
/// it closes: when its work ends for the host's spans, which are dropped
/// as it ends; later for a span held after its work, or one whose child
/// spans (which keep it open) outlive it.
///
/// The batch tracer is held here, rather than as a layer of its own, so
/// that no further per-layer filter looks up each span the registry
/// reports.
pub(super) struct ExportLayer<L> {
    spans: L,
    batch_tracer: Option<BatchTracer>,
}

impl<L> ExportLayer<L> {
    /// `spans`, with `batch_tracer` when mailbox spans are exported.
    pub(super) fn new(spans: L, batch_tracer: Option<BatchTracer>) -> Self {
        Self { spans, batch_tracer }
    }
}

impl<S, L> Layer<S> for ExportLayer<L>
where
    S: Subscriber,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        self.spans.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.spans.on_layer(subscriber);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.spans.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.spans.enabled(metadata, ctx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.spans.max_level_hint()
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        self.spans.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, span: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        self.spans.on_record(span, values, ctx);
    }

    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.spans.on_follows_from(span, follows, ctx);
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.spans.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.spans.on_event(event, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.spans.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, S>) {
        self.spans.on_id_change(old, new, ctx);
    }

    // SAFETY: each pointer is to a value of the type asked for, which lives
    // as long as `self`: `Self`, the batch tracer, or whatever `spans`
    // vouches for.
    #[allow(unsafe_code)] // tracing finds layers (and their parts) only through this method
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            return Some(std::ptr::from_ref(self).cast());
        }
        if id == TypeId::of::<BatchTracer>() {
            return self
                .batch_tracer
                .as_ref()
                .map(|tracer| std::ptr::from_ref(tracer).cast());
        }
        // SAFETY: forwarded, under the same contract.
        unsafe { self.spans.downcast_raw(id) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracing_subscriber::Registry;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::telemetry::batch_calls::tests::recording;

    #[test]
    fn a_span_ends_when_it_closes_not_at_its_last_exit() {
        const HELD: Duration = Duration::from_millis(50);
        let (ended, tracer) = recording();
        // As the host configures it, behind its filter, which takes this
        // module's target.
        let layer = ExportLayer::new(crate::telemetry::trace_layer(tracer), None);
        tracing::subscriber::with_default(Registry::default().with(layer), || {
            let span = tracing::info_span!("held after its work");
            span.in_scope(|| {});
            std::thread::sleep(HELD);
            drop(span);
        });
        let ended = ended.0.lock().expect("spans");
        let [span] = ended.as_slice() else {
            panic!("one span: {ended:#?}")
        };
        let lasted = span
            .end_time
            .duration_since(span.start_time)
            .expect("it ends after it starts");
        assert!(lasted >= HELD, "ended {lasted:?} after it started, at its exit");
    }
}
