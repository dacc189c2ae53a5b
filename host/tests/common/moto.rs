//! A real moto server (the AWS API emulator, `pip install "moto[server]"`)
//! on a free loopback port, started by a test and killed when dropped.
//!
//! `cargo xtask test` installs moto (into its tools venv, first on the tests'
//! `PATH`, unless `moto_server` is already on `PATH`). The server binary is
//! `moto_server` unless `WINK_MOTO_SERVER` names another one.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;

/// How long moto may take to start listening (it imports a lot of Python).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `moto_server`, reaped on drop (PID 1 here reaps no orphans).
pub struct Moto {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Start a server; panics with its log if it does not come up.
    pub async fn start() -> Self {
        // A free port can be taken between probing and binding: try a few.
        let mut last_log = String::new();
        for _ in 0..3 {
            let mut moto = Self::spawn(free_port());
            match moto.wait_ready().await {
                Ok(()) => return moto,
                Err(log) => last_log = log,
            }
        }
        panic!("moto_server did not start; its log:\n{last_log}");
    }

    fn spawn(port: u16) -> Self {
        let server = std::env::var("WINK_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let log = tempfile::NamedTempFile::new().expect("moto log file");
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::options().append(true).open(log.path()).expect("moto log"))
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot run `{server}` (is moto installed? `cargo xtask test` installs it): {err}")
            });
        Self { child, port, log }
    }

    /// Ready once the port accepts connections; `Err(log)` if moto exits or never listens.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{status} (is moto installed? `cargo xtask test` installs it)\n{}",
                    self.log_text()
                ));
            }
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("not listening after {START_TIMEOUT:?}\n{}", self.log_text()))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An endpoint in front of this server, through a proxy that passes
    /// the first `passes` requests of SQS operation `operation`
    /// (`b"AmazonSQS.ReceiveMessage"`) and cuts every later one: SQS going
    /// away partway through.
    pub async fn cut_off_endpoint(&self, operation: &'static [u8], passes: usize) -> String {
        let proxy = super::proxy::cutting_after(&format!("127.0.0.1:{}", self.port), operation, passes).await;
        format!("http://{proxy}")
    }

    /// An SDK configuration with static credentials (moto accepts any) and a
    /// fixed region, so nothing consults the environment or instance metadata.
    pub fn sdk_config(&self) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing", "testing", None, None, "moto",
            )))
            .endpoint_url(self.endpoint())
            .build()
    }

    /// Make SQS queue `name` take messages of up to `bytes` bytes from now on.
    pub async fn set_max_message_size(&self, name: &str, bytes: usize) {
        let client = aws_sdk_sqs::Client::new(&self.sdk_config());
        let url = client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .unwrap_or_else(|err| panic!("the URL of {name}: {err:?}"));
        client
            .set_queue_attributes()
            .set_queue_url(url.queue_url)
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize,
                bytes.to_string(),
            )
            .send()
            .await
            .unwrap_or_else(|err| panic!("resizing {name}: {err:?}"));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}
