//! One model call as telemetry sees it: a `chat` span with the OpenTelemetry
//! GenAI attributes, and the model metrics.

use std::time::Instant;

use opentelemetry::{Array, StringValue, Value};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::bindings::model::StopReason;
use crate::model::{
    CallAccount, CallContext, ConverseRequest, ConverseResponse, ModelError, ModelPolicy, ModelProvider,
};
use crate::telemetry::{Metrics, ModelCallRecord};

/// The metric label of calls that named no model.
const NO_MODEL_LABEL: &str = "_none";
/// The metric label of models the policy does not know: the name is the
/// guest's to choose, so it must not mint series.
const UNKNOWN_MODEL_LABEL: &str = "_other";
/// The outcome of a call dropped with its job before its deadline.
const CANCELLED: &str = "cancelled";

/// Serve `request` through `policy` and `provider` in a `chat` span under `parent`,
/// recording the call's attributes, outcome and cost.
pub(super) async fn converse(
    policy: &ModelPolicy,
    provider: &dyn ModelProvider,
    request: ConverseRequest,
    context: &CallContext,
    metrics: &Metrics,
    parent: &tracing::Span,
) -> Result<ConverseResponse, ModelError> {
    let model = policy.resolve_model(&request, provider);
    let name = model
        .as_deref()
        .map_or_else(|| "chat".to_owned(), |model| format!("chat {model}"));
    let span = tracing::info_span!(
        parent: parent,
        "model_call",
        otel.name = %name,
        otel.kind = "client",
        otel.status_code = Empty,
        request_id = %context.request_id,
        job_id = %context.job_id,
        // Signed integers throughout: the tracing bridge exports unsigned ones as strings.
        turn = i64::from(context.turn),
        gen_ai.operation.name = "chat",
        gen_ai.system = provider.provider_name(),
        gen_ai.request.model = model.as_deref(),
        gen_ai.request.max_tokens = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        error.type = Empty,
    );
    let started = Instant::now();
    let in_flight = InFlight {
        policy,
        provider,
        model: model.as_deref(),
        span: &span,
        metrics,
        started,
        deadline: context.deadline,
        ended: false,
    };
    let mut account = CallAccount::default();
    let response = policy
        .converse_accounted(provider, request, context, &mut account)
        .instrument(span.clone())
        .await;
    in_flight.ended();
    if let Some(max_tokens) = account.max_tokens {
        span.record("gen_ai.request.max_tokens", i64::from(max_tokens));
    }
    let (input_tokens, output_tokens) = match &response {
        Ok(response) => {
            record_response(&span, response);
            (
                u64::from(response.usage.input_tokens),
                u64::from(response.usage.output_tokens),
            )
        }
        Err(err) => {
            record_failure(&span, err, metrics);
            (0, 0)
        }
    };
    // An answer proves the model exists, so its name is a fair label.
    let label = match (&response, account.model.as_deref()) {
        (Ok(_), Some(model)) => model,
        (_, model) => unanswered_label(policy, provider, model),
    };
    metrics.model_call_finished(&ModelCallRecord {
        model: label,
        outcome: response.as_ref().map_or_else(ModelError::kind, |_| "succeeded"),
        elapsed: started.elapsed(),
        input_tokens,
        output_tokens,
        micro_usd: account.micro_usd,
    });
    response
}

/// The metric label of `model` for a call that got no answer: only names
/// the policy knows become series.
fn unanswered_label<'m>(policy: &ModelPolicy, provider: &dyn ModelProvider, model: Option<&'m str>) -> &'m str {
    match model {
        None => NO_MODEL_LABEL,
        Some(model) if policy.knows_model(model, provider) => model,
        Some(_) => UNKNOWN_MODEL_LABEL,
    }
}

/// A model call until it ends. Its job can drop it first: the job's
/// deadline timer cuts it (providers arm no timer of their own), or the job
/// is cancelled (lease lost, shutdown). Dropped unended, it records the call
/// as `deadline_exceeded` or `cancelled`, so that the call keeps its metric
/// and its span an error status.
struct InFlight<'a> {
    policy: &'a ModelPolicy,
    provider: &'a dyn ModelProvider,
    model: Option<&'a str>,
    span: &'a tracing::Span,
    metrics: &'a Metrics,
    started: Instant,
    deadline: Instant,
    ended: bool,
}

impl InFlight<'_> {
    /// The call returned: its own outcome gets recorded.
    fn ended(mut self) {
        self.ended = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let outcome = if Instant::now() >= self.deadline {
            ModelError::DeadlineExceeded.kind()
        } else {
            CANCELLED
        };
        self.span.record("otel.status_code", "error");
        self.span.record("error.type", outcome);
        tracing::warn!(parent: self.span, outcome, "model call ended with its job");
        self.metrics.model_call_finished(&ModelCallRecord {
            model: unanswered_label(self.policy, self.provider, self.model),
            outcome,
            elapsed: self.started.elapsed(),
            input_tokens: 0,
            output_tokens: 0,
            micro_usd: 0,
        });
    }
}

fn record_response(span: &tracing::Span, response: &ConverseResponse) {
    span.record("gen_ai.usage.input_tokens", i64::from(response.usage.input_tokens));
    span.record("gen_ai.usage.output_tokens", i64::from(response.usage.output_tokens));
    // The conventions make this a string array, which tracing fields cannot hold.
    span.set_attribute(
        "gen_ai.response.finish_reasons",
        Value::Array(Array::String(vec![StringValue::from(finish_reason(
            response.stop_reason,
        ))])),
    );
}

fn record_failure(span: &tracing::Span, err: &ModelError, metrics: &Metrics) {
    span.record("otel.status_code", "error");
    span.record("error.type", err.kind());
    let denial = match err {
        ModelError::NotAllowed(_) => Some("model_not_allowed"),
        ModelError::BudgetExceeded(_) => Some("budget_exceeded"),
        _ => None,
    };
    match denial {
        Some(kind) => {
            metrics.policy_denied(kind);
            tracing::warn!(parent: span, denial.kind = kind, error = %err, "policy denied");
        }
        None => tracing::warn!(parent: span, error = %err, "model call failed"),
    }
}

/// The Bedrock name of a stop reason, as `gen_ai.response.finish_reasons` carries it.
fn finish_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndTurn => "end_turn",
        StopReason::ToolUse => "tool_use",
        StopReason::MaxTokens => "max_tokens",
        StopReason::StopSequence => "stop_sequence",
        StopReason::GuardrailIntervened => "guardrail_intervened",
        StopReason::ContentFiltered => "content_filtered",
    }
}
