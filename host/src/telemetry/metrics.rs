//! Prometheus metrics, named and unitted per Prometheus conventions.
//!
//! One [`Metrics`] lives in the [`Runtime`](crate::runtime::Runtime); the
//! runtime records every job and tool call into it, and the health server
//! exposes [`Metrics::encode`] at `/metrics`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of a finished job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct JobLabels {
    agent: String,
    /// `succeeded`, or the error kind (`limit_exceeded`, `trap`, `agent`, ...).
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    /// `agent` or `tool`.
    guest: String,
    limit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ToolLabels {
    tool: String,
    /// `succeeded`, or the tool error kind (`denied`, `limit_exceeded`, ...).
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ToolNameLabels {
    tool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelCallLabels {
    model: String,
    /// `succeeded`, or the model error kind (`throttled`, `budget_exceeded`, ...).
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    /// `input` or `output`, as in the GenAI conventions' `gen_ai.token.type`.
    r#type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DenialLabels {
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeadLetterLabels {
    queue: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueStateLabels {
    queue: String,
    /// `ready`, `in_flight`, `delayed` or `dead`.
    state: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A counter of fractional amounts (US dollars).
type FloatCounter = Counter<f64, AtomicU64>;

/// A model's circuit breaker state, as the `wink_model_circuit_state` gauge
/// encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through (gauge value 0).
    Closed,
    /// One probe call is let through after the cool-down (gauge value 1).
    HalfOpen,
    /// Calls fail fast (gauge value 2).
    Open,
}

impl CircuitState {
    fn gauge_value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

/// What one finished model call used, for [`Metrics::model_call_finished`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModelCallRecord<'a> {
    /// The metric label for the model (bounded; see `model_label` in the runtime).
    pub(crate) model: &'a str,
    /// `succeeded` or the model error kind.
    pub(crate) outcome: &'a str,
    pub(crate) elapsed: Duration,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) micro_usd: u64,
}

/// The process's metrics registry and the instruments the host records into.
pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Counter>,
    job_duration: HistogramFamily<AgentLabels>,
    jobs_active: Gauge,
    fuel: Family<AgentLabels, Counter>,
    limit_hits: Family<LimitLabels, Counter>,
    tool_calls: Family<ToolLabels, Counter>,
    tool_duration: HistogramFamily<ToolNameLabels>,
    model_calls: Family<ModelCallLabels, Counter>,
    model_duration: HistogramFamily<ModelLabels>,
    model_tokens: Family<TokenLabels, Counter>,
    model_cost: Family<ModelLabels, FloatCounter>,
    model_throttles: Family<ModelLabels, Counter>,
    circuit_state: Family<ModelLabels, Gauge>,
    policy_denials: Family<DenialLabels, Counter>,
    mailbox_claimed: Family<QueueLabels, Counter>,
    mailbox_acked: Family<QueueLabels, Counter>,
    mailbox_nacked: Family<QueueLabels, Counter>,
    mailbox_dead_lettered: Family<DeadLetterLabels, Counter>,
    mailbox_depth: Family<QueueStateLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Seconds buckets from 100 µs to about 8 minutes (478 s), so that jobs up
/// to the default 300 s deadline land in a finite bucket.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 3.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every instrument registered under the `wink` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wink");
        let metrics = Self {
            jobs: Family::default(),
            job_duration: Family::new_with_constructor(duration_histogram),
            jobs_active: Gauge::default(),
            fuel: Family::default(),
            limit_hits: Family::default(),
            tool_calls: Family::default(),
            tool_duration: Family::new_with_constructor(duration_histogram),
            model_calls: Family::default(),
            model_duration: Family::new_with_constructor(duration_histogram),
            model_tokens: Family::default(),
            model_cost: Family::default(),
            model_throttles: Family::default(),
            circuit_state: Family::default(),
            policy_denials: Family::default(),
            mailbox_claimed: Family::default(),
            mailbox_acked: Family::default(),
            mailbox_nacked: Family::default(),
            mailbox_dead_lettered: Family::default(),
            mailbox_depth: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "jobs",
            "Agent jobs finished, by agent and outcome",
            metrics.jobs.clone(),
        );
        registry.register_with_unit(
            "job_duration",
            "Wall-clock time of agent jobs",
            Unit::Seconds,
            metrics.job_duration.clone(),
        );
        registry.register("jobs_active", "Agent jobs running now", metrics.jobs_active.clone());
        registry.register("fuel_consumed", "Fuel burned by agent code", metrics.fuel.clone());
        registry.register(
            "sandbox_limit_hits",
            "Guests stopped by a sandbox limit, by guest kind and limit",
            metrics.limit_hits.clone(),
        );
        registry.register(
            "tool_calls",
            "Tool calls finished, by tool and outcome",
            metrics.tool_calls.clone(),
        );
        registry.register_with_unit(
            "tool_call_duration",
            "Wall-clock time of tool calls",
            Unit::Seconds,
            metrics.tool_duration.clone(),
        );
        metrics.register_model_instruments(&mut registry);
        metrics.register_mailbox_instruments(&mut registry);
        Self { registry, ..metrics }
    }

    fn register_model_instruments(&self, registry: &mut Registry) {
        registry.register(
            "model_calls",
            "Model calls finished, by model and outcome",
            self.model_calls.clone(),
        );
        registry.register_with_unit(
            "model_call_duration",
            "Wall-clock time of model calls, retries included",
            Unit::Seconds,
            self.model_duration.clone(),
        );
        registry.register(
            "model_tokens",
            "Tokens accounted by model calls, by model and type (input or output)",
            self.model_tokens.clone(),
        );
        // Dollars, not a base unit Prometheus knows: `Unit::Other` keeps the
        // suffix in the name, so the series is wink_model_cost_usd_total.
        registry.register_with_unit(
            "model_cost",
            "Model spend in US dollars, priced with the job's price table",
            Unit::Other("usd".into()),
            self.model_cost.clone(),
        );
        registry.register(
            "model_throttles",
            "Model call attempts the provider throttled, by model",
            self.model_throttles.clone(),
        );
        registry.register(
            "model_circuit_state",
            "Circuit breaker state by model: 0 closed, 1 half-open, 2 open",
            self.circuit_state.clone(),
        );
        registry.register(
            "policy_denials",
            "Requests the policy refused, by kind",
            self.policy_denials.clone(),
        );
    }

    fn register_mailbox_instruments(&self, registry: &mut Registry) {
        registry.register(
            "mailbox_claimed",
            "Messages claimed from a mailbox queue",
            self.mailbox_claimed.clone(),
        );
        registry.register(
            "mailbox_acked",
            "Messages acknowledged (done) on a mailbox queue",
            self.mailbox_acked.clone(),
        );
        registry.register(
            "mailbox_nacked",
            "Messages released for redelivery on a mailbox queue",
            self.mailbox_nacked.clone(),
        );
        registry.register(
            "mailbox_dead_lettered",
            "Messages moved to a mailbox queue's dead-letter set, by reason",
            self.mailbox_dead_lettered.clone(),
        );
        registry.register(
            "mailbox_depth",
            "Messages in a mailbox queue by state (ready, in_flight, delayed, dead)",
            self.mailbox_depth.clone(),
        );
    }

    /// The registry, for other modules to register their own instruments.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Every metric in the Prometheus text exposition format (version 0.0.4),
    /// which every Prometheus and `promtool check metrics` accept.
    pub fn encode(&self) -> String {
        let mut open_metrics = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry);
        to_prometheus_text(&open_metrics)
    }

    /// Count a job as running until the guard is dropped.
    pub(crate) fn job_started(self: &Arc<Self>) -> ActiveJob {
        self.jobs_active.inc();
        ActiveJob(self.clone())
    }

    /// Record a finished job.
    pub(crate) fn job_finished(&self, agent: &str, outcome: &str, elapsed: Duration, fuel: u64) {
        self.jobs
            .get_or_create(&JobLabels {
                agent: agent.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        let agent = AgentLabels {
            agent: agent.to_owned(),
        };
        self.job_duration.get_or_create(&agent).observe(elapsed.as_secs_f64());
        self.fuel.get_or_create(&agent).inc_by(fuel);
    }

    /// Record a guest stopped by a limit.
    pub(crate) fn limit_hit(&self, guest: &str, limit: &str) {
        self.limit_hits
            .get_or_create(&LimitLabels {
                guest: guest.to_owned(),
                limit: limit.to_owned(),
            })
            .inc();
    }

    /// Record a finished tool call.
    pub(crate) fn tool_call_finished(&self, tool: &str, outcome: &str, elapsed: Duration) {
        self.tool_calls
            .get_or_create(&ToolLabels {
                tool: tool.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.tool_duration
            .get_or_create(&ToolNameLabels { tool: tool.to_owned() })
            .observe(elapsed.as_secs_f64());
    }

    /// Record a finished model call: count, latency, tokens and spend.
    pub(crate) fn model_call_finished(&self, call: &ModelCallRecord<'_>) {
        self.model_calls
            .get_or_create(&ModelCallLabels {
                model: call.model.to_owned(),
                outcome: call.outcome.to_owned(),
            })
            .inc();
        let model = ModelLabels {
            model: call.model.to_owned(),
        };
        self.model_duration
            .get_or_create(&model)
            .observe(call.elapsed.as_secs_f64());
        for (kind, tokens) in [("input", call.input_tokens), ("output", call.output_tokens)] {
            if tokens > 0 {
                self.model_tokens
                    .get_or_create(&TokenLabels {
                        model: call.model.to_owned(),
                        r#type: kind.to_owned(),
                    })
                    .inc_by(tokens);
            }
        }
        if call.micro_usd > 0 {
            self.model_cost
                .get_or_create(&model)
                .inc_by(call.micro_usd as f64 / 1e6);
        }
    }

    /// Record one throttled attempt of a model call.
    pub(crate) fn model_throttled(&self, model: &str) {
        self.model_throttles
            .get_or_create(&ModelLabels {
                model: model.to_owned(),
            })
            .inc();
    }

    /// Record a model's circuit breaker entering `state`.
    pub(crate) fn circuit_state(&self, model: &str, state: CircuitState) {
        self.circuit_state
            .get_or_create(&ModelLabels {
                model: model.to_owned(),
            })
            .set(state.gauge_value());
    }

    /// Record a request the policy refused. `kind` is one of
    /// `model_not_allowed`, `budget_exceeded`, `tool_not_granted`, `tool_fs_denied`.
    pub(crate) fn policy_denied(&self, kind: &str) {
        self.policy_denials
            .get_or_create(&DenialLabels { kind: kind.to_owned() })
            .inc();
    }

    /// Count `n` messages claimed from `queue`.
    pub fn mailbox_claimed(&self, queue: &str, n: u64) {
        self.mailbox_claimed.get_or_create(&queue_labels(queue)).inc_by(n);
    }

    /// Count `n` messages of `queue` acknowledged as done.
    pub fn mailbox_acked(&self, queue: &str, n: u64) {
        self.mailbox_acked.get_or_create(&queue_labels(queue)).inc_by(n);
    }

    /// Count `n` messages of `queue` released for redelivery.
    pub fn mailbox_nacked(&self, queue: &str, n: u64) {
        self.mailbox_nacked.get_or_create(&queue_labels(queue)).inc_by(n);
    }

    /// Count `n` messages of `queue` dead-lettered for `reason` (a short,
    /// bounded label such as `max_attempts` or `invalid_message`).
    pub fn mailbox_dead_lettered(&self, queue: &str, reason: &str, n: u64) {
        self.mailbox_dead_lettered
            .get_or_create(&DeadLetterLabels {
                queue: queue.to_owned(),
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    /// Set the current depth of `queue` by message state. The backlog is
    /// `ready + in_flight`; alerts derive it from the gauge.
    pub fn mailbox_depth(&self, queue: &str, ready: u64, in_flight: u64, delayed: u64, dead: u64) {
        for (state, count) in [
            ("ready", ready),
            ("in_flight", in_flight),
            ("delayed", delayed),
            ("dead", dead),
        ] {
            self.mailbox_depth
                .get_or_create(&QueueStateLabels {
                    queue: queue.to_owned(),
                    state: state.to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

fn queue_labels(queue: &str) -> QueueLabels {
    QueueLabels {
        queue: queue.to_owned(),
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Convert the OpenMetrics text that prometheus-client writes into the classic
/// Prometheus text format: OpenMetrics names a counter family without its
/// `_total` suffix in `# HELP`/`# TYPE` and adds `# UNIT` and `# EOF` lines,
/// which the classic parser (and promtool's linter) does not understand.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: Vec<&str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(&name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

/// Decrements the active-jobs gauge when dropped, however the job ends.
pub(crate) struct ActiveJob(Arc<Metrics>);

impl Drop for ActiveJob {
    fn drop(&mut self) {
        self.0.jobs_active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_recorded_values_with_conventional_names() {
        let metrics = Arc::new(Metrics::new());
        {
            let _active = metrics.job_started();
            metrics.job_finished("hello", "succeeded", Duration::from_millis(3), 1000);
            assert!(metrics.encode().contains("wink_jobs_active 1"));
        }
        metrics.limit_hit("agent", "fuel");
        metrics.tool_call_finished("read_file", "denied", Duration::from_micros(80));
        let text = metrics.encode();
        for line in [
            r#"wink_jobs_total{agent="hello",outcome="succeeded"} 1"#,
            r#"wink_fuel_consumed_total{agent="hello"} 1000"#,
            r#"wink_job_duration_seconds_count{agent="hello"} 1"#,
            "wink_jobs_active 0",
            r#"wink_sandbox_limit_hits_total{guest="agent",limit="fuel"} 1"#,
            r#"wink_tool_calls_total{tool="read_file",outcome="denied"} 1"#,
            r#"wink_tool_call_duration_seconds_count{tool="read_file"} 1"#,
            "# TYPE wink_jobs_total counter",
            "# HELP wink_jobs_total Agent jobs finished, by agent and outcome.",
            "# TYPE wink_job_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    }
}
