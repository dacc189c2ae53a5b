//! Liveness, readiness and metrics over HTTP.
//!
//! `/health/live` answers 200 while the process serves at all.
//! `/health/ready` answers 200 only while the claim loop has turned, and the
//! mailbox has answered, within the ready threshold, and not while draining;
//! 503 with the reason otherwise. `/metrics` is the Prometheus scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::telemetry::{Metrics, PROMETHEUS_TEXT_CONTENT_TYPE};

/// What the worker's loops last reported, for the readiness probe.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    threshold: Duration,
    /// Milliseconds after `epoch` plus one; zero means never.
    loop_beat: AtomicU64,
    mailbox_ok: AtomicU64,
    mailbox_failing: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// Nothing reported yet, so not ready.
    pub fn new(threshold: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            threshold,
            loop_beat: AtomicU64::new(0),
            mailbox_ok: AtomicU64::new(0),
            mailbox_failing: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).map_or(u64::MAX, |ms| ms.saturating_add(1))
    }

    /// The claim loop turned.
    pub fn loop_beat(&self) {
        self.loop_beat.store(self.now(), Ordering::Relaxed);
    }

    /// The mailbox answered a call.
    pub fn mailbox_answered(&self) {
        self.mailbox_ok.store(self.now(), Ordering::Relaxed);
        self.mailbox_failing.store(false, Ordering::Relaxed);
    }

    /// A mailbox call failed.
    pub fn mailbox_failed(&self) {
        self.mailbox_failing.store(true, Ordering::Relaxed);
    }

    /// The worker stopped claiming to shut down.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Ready, or why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining for shutdown".into());
        }
        let now = self.now();
        let threshold = u64::try_from(self.threshold.as_millis()).unwrap_or(u64::MAX);
        let stale = |beat: &AtomicU64| {
            let at = beat.load(Ordering::Relaxed);
            at == 0 || now.saturating_sub(at) > threshold
        };
        if stale(&self.mailbox_ok) {
            let failing = if self.mailbox_failing.load(Ordering::Relaxed) {
                " (its last call failed)"
            } else {
                ""
            };
            return Err(format!(
                "the mailbox has not answered within {} ms{failing}",
                self.threshold.as_millis()
            ));
        }
        if stale(&self.loop_beat) {
            return Err(format!(
                "the claim loop has not run within {} ms",
                self.threshold.as_millis()
            ));
        }
        Ok(())
    }
}

/// The health server: runs until dropped or [`shut down`](Self::shutdown).
#[derive(Debug)]
pub struct HealthServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HealthServer {
    /// Listen on `addr` (port 0 picks a free one) and serve in the background.
    pub async fn start(addr: SocketAddr, health: Arc<Health>, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept(listener, health, metrics));
        Ok(Self { addr, task })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening.
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, health: Arc<Health>, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: pause, keep serving.
                tracing::warn!(error = %err, "health server cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &health, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %err, "health connection ended with an error");
            }
        });
    }
}

fn respond(request: &Request<Incoming>, health: &Health, metrics: &Metrics) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match request.uri().path() {
        "/health/live" => text(StatusCode::OK, "live\n".into()),
        "/health/ready" => match health.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
        },
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT_CONTENT_TYPE));
            response
        }
        other => text(StatusCode::NOT_FOUND, format!("no such path {other}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_both_beats_within_the_threshold_and_no_drain() {
        let health = Health::new(Duration::from_millis(50));
        assert!(health.readiness().unwrap_err().contains("mailbox"));
        health.mailbox_answered();
        assert!(health.readiness().unwrap_err().contains("claim loop"));
        health.loop_beat();
        assert_eq!(health.readiness(), Ok(()));
        std::thread::sleep(Duration::from_millis(80));
        health.mailbox_failed();
        assert!(health.readiness().unwrap_err().contains("last call failed"));
        health.mailbox_answered();
        health.loop_beat();
        assert_eq!(health.readiness(), Ok(()));
        health.set_draining();
        assert!(health.readiness().unwrap_err().contains("draining"));
    }
}
