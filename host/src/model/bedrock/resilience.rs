//! Retries with exponential backoff and full jitter, bounded by the job's
//! deadline, and a per-model circuit breaker.
//!
//! The SDK's own retries are disabled: only this layer knows the job's
//! deadline and feeds the breaker, so it owns every retry decision.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::model::ModelError;
use crate::telemetry::{CircuitState, Metrics};

/// How failed attempts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1: never retry).
    pub max_attempts: u32,
    /// Backoff ceiling before the first retry; doubles on each retry.
    pub base_delay: Duration,
    /// Largest backoff ceiling.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts, 200 ms doubling to at most 10 s: about 20 s of backoff in
    /// the worst case, enough to ride out a burst of throttling.
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// Time a retry needs after its pause to be worth making. Without it, a pause
/// that ends just before the deadline starts an attempt the deadline then
/// cuts, and the job fails on its deadline instead of handing the guest a
/// typed `throttled` error it still has time to act on.
const MIN_ATTEMPT_TIME: Duration = Duration::from_millis(250);

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based), or none when the
    /// attempts are used up or the pause would leave less than
    /// [`MIN_ATTEMPT_TIME`] before `deadline`.
    pub(super) fn backoff(&self, retry: u32, deadline: Instant) -> Option<Duration> {
        if retry >= self.max_attempts {
            return None;
        }
        let ceiling = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let delay = full_jitter(ceiling);
        (Instant::now() + delay + MIN_ATTEMPT_TIME < deadline).then_some(delay)
    }
}

/// A uniformly random duration in `[0, ceiling]` ("full jitter"), so that
/// jobs throttled together do not retry together.
fn full_jitter(ceiling: Duration) -> Duration {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    ceiling.mul_f64(hasher.finish() as f64 / u64::MAX as f64)
}

/// When a model's circuit opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed attempts that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit rejects calls before one probe is let through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 10,
            cool_down: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// One model's circuit.
#[derive(Debug)]
pub(super) struct Breaker {
    config: BreakerConfig,
    model: String,
    state: Mutex<State>,
}

impl Breaker {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tell `metrics` (when there are any) that the circuit is now `state`.
    fn report(&self, metrics: Option<&Metrics>, state: CircuitState) {
        if let Some(metrics) = metrics {
            metrics.circuit_state(&self.model, state);
        }
    }

    /// Let an attempt through, or fail fast while the circuit is open. After
    /// the cool-down exactly one attempt (the probe) goes through.
    ///
    /// The attempt owes the breaker a verdict: the returned [`Admission`]
    /// gives one even when the attempt is dropped unfinished.
    pub(super) fn admit<'b>(
        &'b self,
        metrics: Option<&'b Metrics>,
        deadline: Instant,
    ) -> Result<Admission<'b>, ModelError> {
        let mut state = self.state();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => {}
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { probing: true };
                tracing::info!(model = %self.model, "circuit half-open: probing");
                self.report(metrics, CircuitState::HalfOpen);
            }
            State::HalfOpen { probing: false } => *state = State::HalfOpen { probing: true },
            State::Open { until } => return Err(self.open_error(until.saturating_duration_since(now))),
            State::HalfOpen { probing: true } => return Err(self.open_error(Duration::ZERO)),
        }
        Ok(Admission {
            breaker: self,
            metrics,
            deadline,
            settled: false,
        })
    }

    fn open_error(&self, left: Duration) -> ModelError {
        ModelError::Provider(format!(
            "circuit open for model {}: too many consecutive failures; retry in {} ms",
            self.model,
            left.as_millis()
        ))
    }

    fn success(&self, metrics: Option<&Metrics>) {
        let mut state = self.state();
        if !matches!(*state, State::Closed { failures: 0 }) {
            tracing::info!(model = %self.model, "circuit closed");
        }
        *state = State::Closed { failures: 0 };
        // Also on the first success, so the gauge shows every model in use.
        self.report(metrics, CircuitState::Closed);
    }

    fn failure(&self, metrics: Option<&Metrics>) {
        let mut state = self.state();
        let open = State::Open {
            until: Instant::now() + self.config.cool_down,
        };
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                State::Closed { failures: failures + 1 }
            }
            State::Open { until } => State::Open { until },
            _ => {
                tracing::warn!(model = %self.model, cool_down_ms = self.config.cool_down.as_millis() as u64, "circuit opened");
                self.report(metrics, CircuitState::Open);
                open
            }
        };
    }

    /// An attempt that says nothing about the model's health (e.g. an
    /// invalid request) ends: release the probe slot without a verdict.
    fn neutral(&self) {
        let mut state = self.state();
        if let State::HalfOpen { probing: true } = *state {
            *state = State::HalfOpen { probing: false };
        }
    }
}

/// An attempt the breaker let through, until its verdict is in.
///
/// An attempt can end without one: its job is cancelled (lease lost,
/// shutdown) or cut at its deadline while the call is in flight. Dropped
/// unsettled, it counts as a failure when the deadline has passed (the model
/// did not answer in time) and as neither otherwise, so that a cancelled
/// probe frees the half-open circuit's probe slot instead of holding it
/// forever.
#[must_use = "an admission settles on drop; give the attempt's verdict"]
pub(super) struct Admission<'b> {
    breaker: &'b Breaker,
    metrics: Option<&'b Metrics>,
    deadline: Instant,
    settled: bool,
}

impl Admission<'_> {
    /// The model answered.
    pub(super) fn success(mut self) {
        self.settled = true;
        self.breaker.success(self.metrics);
    }

    /// The model failed (5xx, network, no answer before the deadline).
    pub(super) fn failure(mut self) {
        self.settled = true;
        self.breaker.failure(self.metrics);
    }

    /// The attempt says nothing about the model's health.
    pub(super) fn neutral(mut self) {
        self.settled = true;
        self.breaker.neutral();
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if Instant::now() >= self.deadline {
            self.breaker.failure(self.metrics);
        } else {
            self.breaker.neutral();
        }
    }
}

impl std::fmt::Debug for Admission<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("model", &self.breaker.model)
            .field("settled", &self.settled)
            .finish()
    }
}

/// The circuits of every model a provider has called.
#[derive(Debug, Default)]
pub(super) struct Breakers {
    config: BreakerConfig,
    by_model: Mutex<HashMap<String, Arc<Breaker>>>,
}

impl Breakers {
    pub(super) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            by_model: Mutex::default(),
        }
    }

    pub(super) fn get(&self, model: &str) -> Arc<Breaker> {
        let mut map = self.by_model.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Look up before inserting: `entry` would allocate the key on every call.
        if let Some(breaker) = map.get(model) {
            return breaker.clone();
        }
        let breaker = Arc::new(Breaker {
            config: self.config,
            model: model.to_owned(),
            state: Mutex::new(State::Closed { failures: 0 }),
        });
        map.insert(model.to_owned(), breaker.clone());
        breaker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_stays_under_its_ceiling_and_respects_the_deadline() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
        };
        let far = Instant::now() + Duration::from_secs(60);
        for retry in 1..10 {
            let delay = policy.backoff(retry, far).expect("time left");
            let ceiling = Duration::from_millis(100 * (1 << (retry - 1).min(2)));
            assert!(delay <= ceiling, "retry {retry}: {delay:?} > {ceiling:?}");
        }
        assert_eq!(policy.backoff(10, far), None, "attempts used up");
        assert_eq!(policy.backoff(1, Instant::now()), None, "no time left");
        let soon = Instant::now() + MIN_ATTEMPT_TIME;
        assert_eq!(
            policy.backoff(1, soon),
            None,
            "no time left for the attempt after the pause"
        );
    }

    #[test]
    fn breaker_opens_fails_fast_then_probes_once_and_closes() {
        let breakers = breakers(2, Duration::from_millis(30));
        let breaker = breakers.get("m");
        let recorded = Metrics::new();
        let gauge = || {
            recorded
                .encode()
                .lines()
                .find_map(|line| line.strip_prefix(r#"wink_model_circuit_state{model="m"} "#))
                .map(str::to_owned)
        };
        let metrics = Some(&recorded);
        let far = Instant::now() + Duration::from_secs(60);
        let admit = || breaker.admit(metrics, far);
        admit().expect("closed").failure();
        admit().expect("one failure keeps it closed").failure();
        assert_eq!(gauge().as_deref(), Some("2"), "open");
        let err = admit().unwrap_err().to_string();
        assert!(err.contains("circuit open for model m"), "{err}");
        std::thread::sleep(Duration::from_millis(40));
        let probe = admit().expect("the probe goes through");
        assert_eq!(gauge().as_deref(), Some("1"), "half-open");
        assert!(admit().is_err(), "only one probe at a time");
        probe.success();
        assert_eq!(gauge().as_deref(), Some("0"), "closed");
        let (first, second) = (admit(), admit());
        assert!(first.is_ok() && second.is_ok(), "closed: no limit on attempts");
    }

    fn breakers(failure_threshold: u32, cool_down: Duration) -> Breakers {
        Breakers::new(BreakerConfig {
            failure_threshold,
            cool_down,
        })
    }

    /// Opens a breaker with threshold 1 and waits out its cool-down, so the
    /// next admission is the probe.
    fn half_open(breakers: &Breakers) -> Arc<Breaker> {
        let breaker = breakers.get("m");
        let far = Instant::now() + Duration::from_secs(60);
        breaker.admit(None, far).expect("closed").failure();
        std::thread::sleep(Duration::from_millis(15));
        breaker
    }

    #[test]
    fn a_probe_dropped_before_its_deadline_frees_the_probe_slot() {
        let breakers = breakers(1, Duration::from_millis(10));
        let breaker = half_open(&breakers);
        let far = Instant::now() + Duration::from_secs(60);
        // A job cancelled mid-probe (lease lost, shutdown) says nothing
        // about the model: the next attempt may probe.
        drop(breaker.admit(None, far).expect("the probe"));
        let next = breaker.admit(None, far).expect("the slot is free again");
        next.success();
        assert!(matches!(*breaker.state(), State::Closed { failures: 0 }));
    }

    #[test]
    fn an_attempt_dropped_at_its_deadline_counts_as_a_failure() {
        let breakers = breakers(1, Duration::from_secs(60));
        let breaker = breakers.get("m");
        let deadline = Instant::now() + Duration::from_millis(5);
        let attempt = breaker.admit(None, deadline).expect("closed");
        std::thread::sleep(Duration::from_millis(10));
        drop(attempt);
        assert!(
            breaker.admit(None, Instant::now() + Duration::from_secs(60)).is_err(),
            "a model that did not answer before the deadline opened the circuit"
        );
    }
}
