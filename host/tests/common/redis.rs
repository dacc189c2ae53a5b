//! Real `redis-server` processes for the tests: one server, or a 3-node
//! cluster, on free loopback ports, started as direct children and killed
//! and reaped on drop (PID 1 here does not reap orphans).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer PING after it is started (an AOF
/// replay included).
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn redis_server_binary() -> &'static str {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "redis-server is not installed (or not on PATH): these tests need a real Redis. \
         Install it with `apt-get install redis-server`, or run `cargo xtask test`, which installs it."
    );
    "redis-server"
}

/// A loopback port that is free now; for a cluster node, `port + 10000`
/// (its cluster bus) is free too.
fn free_port(with_bus: bool) -> u16 {
    for _ in 0..200 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
        let port = listener.local_addr().expect("local addr").port();
        if !with_bus {
            return port;
        }
        if let Some(bus) = port.checked_add(10_000)
            && TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port (with a free cluster bus port) found");
}

/// Whether a server answers PING with PONG (not, say, LOADING) on `port`.
fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Run `redis-cli -p PORT ARGS...` and return its output (`redis-cli` comes
/// with `redis-server`).
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli (it comes with redis-server)");
    assert!(output.status.success(), "redis-cli {args:?} failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One `redis-server`, optionally persisting every write to an append-only
/// file so it can be killed and restarted without losing acknowledged data.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::launch(false, &[])
    }

    /// A server with `appendonly yes`, `appendfsync always` in its own directory.
    pub fn start_durable() -> Self {
        Self::launch(true, &[])
    }

    fn launch(durable: bool, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let dir_arg = dir.path().display().to_string();
        args.extend(["--dir".into(), dir_arg]);
        if durable {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        args.extend(extra.iter().map(ToString::to_string));
        let with_bus = extra.contains(&"--cluster-enabled");
        let mut server = Self {
            child: None,
            port: free_port(with_bus),
            dir,
            args,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        loop {
            if let Some(status) = child.try_wait().expect("poll redis-server") {
                panic!(
                    "redis-server on port {} exited with {status} before answering; its log:\n{}",
                    self.port,
                    self.log()
                );
            }
            if answers_ping(self.port) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server on port {} did not answer PING; its log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL it (no shutdown, no final fsync) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port with the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Run a command through `redis-cli`; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three cluster-enabled servers sharing the 16384 slots, no replicas.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::launch(
                    false,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run `redis-cli --cluster create` (redis-cli comes with redis-server)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_until_ok();
        cluster
    }

    /// Every node agrees the cluster is up and knows all three nodes.
    fn wait_until_ok(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.nodes.iter().all(|node| {
            let info = cluster_info(node.port());
            info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
        }) {
            assert!(Instant::now() < deadline, "the cluster did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The node servers.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

/// `CLUSTER INFO` of the node on `port` (empty if it does not answer).
fn cluster_info(port: u16) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "cluster", "info"])
        .stdin(Stdio::null())
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}
