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
    let mut account = CallAccount::default();
    let response = policy
        .converse_accounted(provider, request, context, &mut account)
        .instrument(span.clone())
        .await;
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
    let label = match account.model.as_deref() {
        None => NO_MODEL_LABEL,
        Some(model) if response.is_ok() || policy.knows_model(model, provider) => model,
        Some(_) => UNKNOWN_MODEL_LABEL,
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
