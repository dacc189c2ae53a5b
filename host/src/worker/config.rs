//! Worker options: every one has a default, and the whole set reads from a
//! config file section as well as from flags (docs/mailbox.md, "Worker").

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{ByteSize, HumanDuration};
use crate::runtime::Limits;
use crate::worker::ReplyQueues;

/// How a worker claims, runs, retries and releases jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Names this worker in logs, spans and replies. Default: the runtime's
    /// (`HOSTNAME-PID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// Jobs run at once; the worker claims only what it has room for.
    pub concurrency: usize,
    /// How long a claim (and each extension) holds a message before it
    /// returns to the queue.
    pub lease: HumanDuration,
    /// How often a running job's task extends its lease. A task that stops
    /// being scheduled stops extending, so its lease lapses and another
    /// worker takes the job. Must be under half the lease.
    pub heartbeat: HumanDuration,
    /// Deliveries per message, counting lapsed leases: a message delivered
    /// more often is dead-lettered at claim (`max_attempts`), and a retryable
    /// failure on the last attempt is dead-lettered with its error.
    pub max_attempts: u32,
    /// Retry delay after the first failed attempt; doubles each attempt.
    pub backoff_base: HumanDuration,
    /// Longest retry delay.
    pub backoff_max: HumanDuration,
    /// On shutdown, how long jobs in flight may take to finish before they
    /// are given back to the queue.
    pub grace_period: HumanDuration,
    /// Longest wait of one claim for a message to arrive; also bounds how
    /// long a shutdown waits for the claim loop.
    pub poll_wait: HumanDuration,
    /// How often this worker returns lapsed leases (any worker may).
    pub reap_interval: HumanDuration,
    /// How often the queue depth is read for metrics (and as a mailbox probe).
    pub depth_interval: HumanDuration,
    /// `/health/ready` fails when the claim loop has not run, or the mailbox
    /// has not answered, for this long.
    pub ready_threshold: HumanDuration,
    /// Most replies acknowledged in one batch. While acks are exported as
    /// spans, a batch also holds no more jobs with sampled spans than a
    /// span keeps links.
    pub ack_batch: usize,
    /// How long a batch of acks waits for more finished jobs before it goes
    /// (zero: at once); below `heartbeat`, so a finished job's lease outlasts
    /// it. Replies become visible that much later; a crash in between runs
    /// those jobs again, as any crash before the ack does.
    pub ack_linger: HumanDuration,
    /// How long a cached agent component is trusted before its source is
    /// checked again for changes (a file's size, mtime and inode; an S3
    /// object's ETag).
    pub agent_recheck: HumanDuration,
    /// How long a loaded agent no job has used is kept before it is
    /// forgotten (with its compiled component): checked when another agent
    /// loads and every `agent_idle`, so an agent goes within about twice this.
    pub agent_idle: HumanDuration,
    /// An S3-compatible endpoint for `s3://` agents (MinIO, Ceph, moto),
    /// addressed path-style. Default: AWS's endpoint for the region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    /// The region of `s3://` agents' buckets. Default: the AWS default
    /// chain's (`AWS_REGION`, the profile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    /// Wall-clock limit of one job (lowered by the policy's and the job's
    /// budget `timeout` and by the job's `deadline`).
    pub job_timeout: HumanDuration,
    /// CPU limit of one job, in fuel.
    pub fuel: u64,
    /// Linear-memory limit of one job.
    pub memory: ByteSize,
    /// Largest output of one job.
    pub max_output: ByteSize,
    /// The queues an envelope's `reply_to` may name: names, and prefixes
    /// ending in `*`. A job naming another is dead-lettered before it runs
    /// (`invalid_envelope`). Default: any (`*`).
    pub reply_queues: ReplyQueues,
    /// Address the health server listens on.
    pub health_host: IpAddr,
    /// Port of the health server; 0 picks a free one (logged).
    pub health_port: u16,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            worker_id: None,
            concurrency: 16,
            lease: HumanDuration(Duration::from_secs(60)),
            heartbeat: HumanDuration(Duration::from_secs(10)),
            max_attempts: 3,
            backoff_base: HumanDuration(Duration::from_secs(1)),
            backoff_max: HumanDuration(Duration::from_secs(300)),
            grace_period: HumanDuration(Duration::from_secs(30)),
            poll_wait: HumanDuration(Duration::from_secs(1)),
            reap_interval: HumanDuration(Duration::from_secs(5)),
            depth_interval: HumanDuration(Duration::from_secs(5)),
            ready_threshold: HumanDuration(Duration::from_secs(15)),
            ack_batch: 256,
            ack_linger: HumanDuration(Duration::from_millis(1)),
            agent_recheck: HumanDuration(Duration::from_secs(1)),
            agent_idle: HumanDuration(Duration::from_secs(600)),
            s3_endpoint: None,
            s3_region: None,
            job_timeout: HumanDuration(limits.deadline),
            fuel: limits.fuel,
            memory: ByteSize(limits.memory_bytes),
            max_output: ByteSize(limits.output_bytes),
            reply_queues: ReplyQueues::any(),
            health_host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            health_port: 9090,
        }
    }
}

impl WorkerConfig {
    /// Async runtime threads for a process that runs this worker, on a
    /// machine with `cores` cores: one per core, but no more than the jobs
    /// that run at once. A worker running one job at a time on several
    /// threads spends its time waking them: its claim loop, job and acker
    /// take turns on different cores (docs/deploy.md, "Async threads at low
    /// concurrency").
    pub fn async_threads(&self, cores: usize) -> usize {
        self.concurrency.clamp(1, cores.max(1))
    }

    /// Check the options against each other; the error names the bad value.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("lease", self.lease),
            ("heartbeat", self.heartbeat),
            ("poll_wait", self.poll_wait),
            ("reap_interval", self.reap_interval),
            ("depth_interval", self.depth_interval),
            ("ready_threshold", self.ready_threshold),
            ("job_timeout", self.job_timeout),
            ("agent_idle", self.agent_idle),
        ];
        if let Some((name, value)) = positive.iter().find(|(_, value)| value.0.is_zero()) {
            return Err(format!("worker option {name} must be above zero, not {value}"));
        }
        if self.concurrency == 0 {
            return Err("worker option concurrency must be at least 1, not 0".into());
        }
        if self.max_attempts == 0 {
            return Err("worker option max_attempts must be at least 1, not 0".into());
        }
        if self.ack_batch == 0 {
            return Err("worker option ack_batch must be at least 1, not 0".into());
        }
        if self.heartbeat.0 * 2 > self.lease.0 {
            return Err(format!(
                "worker option heartbeat {} must be at most half the lease {}, so one slow extension cannot lose it",
                self.heartbeat, self.lease
            ));
        }
        if self.ack_linger >= self.heartbeat {
            return Err(format!(
                "worker option ack_linger {} must be below heartbeat {}, so a finished job's lease outlasts its ack",
                self.ack_linger, self.heartbeat
            ));
        }
        if self.backoff_base > self.backoff_max {
            return Err(format!(
                "worker option backoff_base {} is above backoff_max {}",
                self.backoff_base, self.backoff_max
            ));
        }
        if self.poll_wait >= self.ready_threshold {
            return Err(format!(
                "worker option poll_wait {} must be below ready_threshold {}, or an idle worker would flap unready",
                self.poll_wait, self.ready_threshold
            ));
        }
        if let Some(endpoint) = &self.s3_endpoint {
            check_endpoint(endpoint)?;
        }
        Ok(())
    }

    /// The limits every job starts from.
    pub fn job_limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            deadline: self.job_timeout.0,
            memory_bytes: self.memory.0,
            output_bytes: self.max_output.0,
            ..Limits::default()
        }
    }

    /// The retry delay after failed attempt `attempt` (1-based): the base
    /// doubled per attempt, capped at the maximum, then "equal jitter" (half
    /// fixed, half random) so that jobs failing together do not retry
    /// together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let delay = self
            .backoff_base
            .0
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max.0);
        let half = delay / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(fastrand::u64(0..=jitter_ms))
    }
}

/// An S3 endpoint must be an http(s) URL with a host.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let bad = |why: &str| format!("worker option s3_endpoint `{endpoint}` is not an S3 endpoint URL: {why}");
    let url = url::Url::parse(endpoint).map_err(|err| bad(&err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_threads_are_one_per_core_but_no_more_than_the_jobs_at_once() {
        let with = |concurrency| WorkerConfig {
            concurrency,
            ..WorkerConfig::default()
        };
        assert_eq!(with(1).async_threads(8), 1);
        assert_eq!(with(4).async_threads(8), 4);
        assert_eq!(with(64).async_threads(8), 8);
        assert_eq!(with(16).async_threads(0), 1, "at least one");
    }

    #[test]
    fn reads_a_partial_config_and_refuses_unknown_keys() {
        let config: WorkerConfig = toml::from_str("concurrency = 4\nlease = \"2m\"\n").unwrap();
        assert_eq!(config.concurrency, 4);
        assert_eq!(config.lease.0, Duration::from_secs(120));
        assert_eq!(config.max_attempts, WorkerConfig::default().max_attempts);
        let err = toml::from_str::<WorkerConfig>("concurency = 4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("concurency"), "{err}");
    }

    #[test]
    fn validation_names_the_bad_option() {
        let mut config = WorkerConfig::default();
        assert_eq!(config.validate(), Ok(()));
        config.heartbeat = HumanDuration(Duration::from_secs(40));
        assert!(config.validate().unwrap_err().contains("heartbeat 40000ms"));
        let config = WorkerConfig {
            concurrency: 0,
            ..WorkerConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("concurrency"));
        let config = WorkerConfig {
            poll_wait: HumanDuration(Duration::from_secs(20)),
            ..WorkerConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("poll_wait"));
        let config = WorkerConfig {
            ack_linger: HumanDuration(Duration::from_secs(10)),
            ..WorkerConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("ack_linger 10000ms"));
        for endpoint in ["localhost:9000", "ftp://host", "not a url"] {
            let config = WorkerConfig {
                s3_endpoint: Some(endpoint.to_owned()),
                ..WorkerConfig::default()
            };
            let err = config.validate().unwrap_err();
            assert!(err.contains("s3_endpoint") && err.contains(endpoint), "{err}");
        }
        let config = WorkerConfig {
            s3_endpoint: Some("http://127.0.0.1:9000".to_owned()),
            ..WorkerConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let config = WorkerConfig {
            backoff_base: HumanDuration(Duration::from_millis(100)),
            backoff_max: HumanDuration(Duration::from_millis(1000)),
            ..WorkerConfig::default()
        };
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)] {
            for _ in 0..50 {
                let delay = config.backoff(attempt).as_millis();
                assert!((full / 2..=full).contains(&delay), "attempt {attempt}: {delay} ms");
            }
        }
    }
}
