//! `wink-host worker` as a child process: logs go to a pipe (JSON), so the
//! health address it picked is read from its "health server listening" line.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// A running `wink-host worker`, killed on drop.
pub struct WorkerProcess {
    child: Child,
    health: SocketAddr,
    stderr: Receiver<String>,
}

impl WorkerProcess {
    /// Start `wink-host worker ARGS` polling every 100 ms with its health
    /// server on a free loopback port; returns once it is listening.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    /// [`spawn`](Self::spawn) with `env` set too.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wink-host"))
            .arg("worker")
            .args([
                "--health-host",
                "127.0.0.1",
                "--health-port",
                "0",
                "--poll-wait",
                "100ms",
            ])
            .args(args)
            .env("WINK_LOG", "info")
            .env("WINK_LOG_FORMAT", "json")
            .env_remove("WINK_MAILBOX")
            .env_remove("WINK_QUEUE")
            .env_remove("WINK_MODEL")
            .env_remove("WINK_CONCURRENCY")
            .env_remove("WINK_CONFIG")
            .env_remove("TOKIO_WORKER_THREADS")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wink-host worker");
        let (lines, stderr) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let give_up = Instant::now() + Duration::from_secs(60);
        let health = loop {
            let line = stderr
                .recv_timeout(give_up.saturating_duration_since(Instant::now()))
                .expect("the worker logs its health address");
            let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if record["fields"]["message"] == "health server listening" {
                break record["fields"]["addr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("addr");
            }
        };
        Self { child, health, stderr }
    }

    /// `GET path` on the health server: status and body (0 and empty when
    /// it does not answer).
    pub fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut stream) = TcpStream::connect(self.health) else {
            return (0, String::new());
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut response = String::new();
        if stream.write_all(request.as_bytes()).is_err() || stream.read_to_string(&mut response).is_err() {
            return (0, String::new());
        }
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        (status, body.to_owned())
    }

    /// The status of `GET path` on the health server (0 when it does not answer).
    pub fn status(&self, path: &str) -> u16 {
        self.get(path).0
    }

    /// Wait for `/health/ready` to answer 200.
    pub fn wait_ready(&self) {
        let give_up = Instant::now() + Duration::from_secs(30);
        while self.status("/health/ready") != 200 {
            assert!(Instant::now() < give_up, "the worker never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send it a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGKILL it (no drain, no acks, no lease given back) and reap it.
    pub fn kill(mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().expect("reap the worker")
    }

    /// The exit status, and every log line it wrote.
    pub fn wait(mut self, limit: Duration) -> (ExitStatus, Vec<String>) {
        let give_up = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > give_up {
                let _ = self.child.kill();
                panic!("the worker did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, self.stderr.try_iter().collect())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // Never leave a worker behind a failed test (PID 1 here does not reap).
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
