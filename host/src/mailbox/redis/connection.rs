//! Redis URLs, connections that reconnect, and error mapping, shared by the
//! mailbox and the usage ledger.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::cluster::{ClusterClient, ClusterConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, RetryMethod, Value};

use crate::mailbox::MailboxError;
use crate::policy::parse_duration;

/// How long a command may take before it fails as unavailable. Generous,
/// because with `appendfsync always` every write waits for the disk.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to one server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A cluster request, retries and redirections included, gives up after this.
const CLUSTER_OVERALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Reconnection attempts per failed command before it reports the failure;
/// the next command starts over, so a restarted server is picked up again.
const RECONNECT_ATTEMPTS: usize = 3;

/// Where a Redis deployment is, and the options given in its URL.
#[derive(Debug, Clone)]
pub(crate) struct RedisUrl {
    target: Target,
    /// The URL with any password replaced, for messages and logs.
    pub(crate) display: String,
    /// `?reply_ttl=`: how long replies are kept (mailbox only).
    pub(crate) reply_ttl: Option<Duration>,
}

#[derive(Debug, Clone)]
enum Target {
    Single(Box<Client>),
    Cluster(Box<ClusterClients>),
}

#[derive(Debug, Clone)]
struct ClusterClients {
    /// Normal requests: bounded by [`RESPONSE_TIMEOUT`].
    client: ClusterClient,
    /// Blocking waits: no response timeout of their own.
    blocking: ClusterClient,
}

/// A connection that reconnects by itself after the server restarts or the
/// network drops; cheap to clone (clones share the connection).
#[derive(Clone)]
pub(crate) enum Connection {
    /// One server (or a proxy in front of several).
    Single(ConnectionManager),
    /// One server, without reconnection: for blocking commands, whose
    /// caller opens a new connection after a failure.
    Multiplexed(MultiplexedConnection),
    /// Redis Cluster: commands are routed by key slot.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Connection::Single",
            Self::Multiplexed(_) => "Connection::Multiplexed",
            Self::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Multiplexed(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Multiplexed(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Multiplexed(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

impl RedisUrl {
    /// Parse `redis://`, `rediss://` (TLS), `redis+cluster://host:port,host:port`
    /// and `rediss+cluster://...` URLs. Errors name the URL, password hidden.
    pub(crate) fn parse(url: &str) -> Result<Self, MailboxError> {
        let (scheme, rest) = url.split_once("://").unwrap_or((url, ""));
        let cluster_scheme = match scheme {
            "redis" | "rediss" => None,
            "redis+cluster" => Some("redis"),
            "rediss+cluster" => Some("rediss"),
            _ => {
                return Err(MailboxError::Invalid(format!(
                    "`{}` is not a Redis URL (expected redis://, rediss://, redis+cluster:// or rediss+cluster://)",
                    redact(url)
                )));
            }
        };
        // `#insecure` (rediss without certificate checks) follows the query.
        let (rest, fragment) = rest
            .split_once('#')
            .map_or((rest, String::new()), |(r, f)| (r, format!("#{f}")));
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let display = redact(url);
        let invalid = |reason: String| MailboxError::Invalid(format!("invalid Redis URL `{display}`: {reason}"));
        let mut reply_ttl = None;
        let mut passed_on = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("reply_ttl", value)) => {
                    let ttl = parse_duration(value).map_err(|err| invalid(format!("reply_ttl: {err}")))?;
                    if ttl < Duration::from_millis(1) {
                        return Err(invalid(format!("reply_ttl `{value}` must be at least 1ms")));
                    }
                    reply_ttl = Some(ttl);
                }
                _ => passed_on.push(pair),
            }
        }
        let query = if passed_on.is_empty() {
            fragment
        } else {
            format!("?{}{fragment}", passed_on.join("&"))
        };
        let target = match cluster_scheme {
            None => {
                let client =
                    Client::open(format!("{scheme}://{rest}{query}")).map_err(|err| invalid(err.to_string()))?;
                Target::Single(Box::new(client))
            }
            Some(node_scheme) => {
                let nodes = cluster_nodes(node_scheme, rest, &query).map_err(invalid)?;
                let build = |blocking: bool| {
                    let builder = ClusterClient::builder(nodes.clone())
                        .connection_timeout(CONNECT_TIMEOUT)
                        .retries(RECONNECT_ATTEMPTS as u32);
                    let builder = if blocking {
                        builder.overall_response_timeout(None)
                    } else {
                        builder
                            .response_timeout(RESPONSE_TIMEOUT)
                            .overall_response_timeout(Some(CLUSTER_OVERALL_TIMEOUT))
                    };
                    builder.build().map_err(|err| invalid(err.to_string()))
                };
                Target::Cluster(Box::new(ClusterClients {
                    client: build(false)?,
                    blocking: build(true)?,
                }))
            }
        };
        Ok(Self {
            target,
            display,
            reply_ttl,
        })
    }

    /// Connect (for the first time; the connection then reconnects by itself).
    pub(crate) async fn connect(&self) -> Result<Connection, MailboxError> {
        let connected = match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(RECONNECT_ATTEMPTS)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_with_config(Client::clone(client), config)
                    .await
                    .map(Connection::Single)
            }
            Target::Cluster(clients) => clients.client.get_async_connection().await.map(Connection::Cluster),
        };
        connected.map_err(|err| self.unreachable(&err))
    }

    /// A fresh connection of its own for blocking commands (BLPOP), which
    /// would stall every other request on a shared, multiplexed connection.
    /// It has no response timeout: the caller bounds the wait.
    pub(crate) async fn connect_blocking(&self) -> Result<Connection, MailboxError> {
        let connected = match &self.target {
            Target::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(None);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Multiplexed)
            }
            Target::Cluster(clients) => clients
                .blocking
                .get_async_connection_with_config(ClusterConfig::new().set_connection_timeout(CONNECT_TIMEOUT))
                .await
                .map(Connection::Cluster),
        };
        connected.map_err(|err| self.unreachable(&err))
    }

    fn unreachable(&self, err: &RedisError) -> MailboxError {
        MailboxError::Unavailable(format!("cannot connect to Redis at `{}`: {err}", self.display))
    }
}

/// `h1:p1,h2:p2` (with optional `user:pass@` before the list and an optional
/// trailing `/`) as one URL per node.
fn cluster_nodes(scheme: &str, rest: &str, query: &str) -> Result<Vec<String>, String> {
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
    if hosts.contains('/') {
        return Err("a cluster URL lists nodes only (no database path): HOST:PORT,HOST:PORT".into());
    }
    let nodes: Vec<String> = hosts
        .split(',')
        .map(|node| {
            let port = node.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
            match port {
                Some((host, Ok(_))) if !host.is_empty() => Ok(format!("{scheme}://{userinfo}{node}{query}")),
                _ => Err(format!("cluster node `{node}` is not HOST:PORT")),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(nodes)
}

/// The URL with the password (if any) replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = userinfo.split_once(':').map_or("", |(user, _)| user);
    if user.is_empty() && !userinfo.contains(':') {
        // `redis://token@host`: a bare userinfo is a password for Redis.
        return format!("{scheme}://***@{hosts}{tail}");
    }
    format!("{scheme}://{user}:***@{hosts}{tail}")
}

/// Connection trouble is worth retrying; anything else is a backend error.
pub(crate) fn mailbox_error(err: RedisError) -> MailboxError {
    match err.retry_method() {
        RetryMethod::NoRetry => MailboxError::Backend(err.to_string()),
        _ => MailboxError::Unavailable(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("redis://user:pw@h:1/0"), "redis://user:***@h:1/0");
        assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://pw@h:1?x=1"), "redis://***@h:1?x=1");
        assert_eq!(redact("redis+cluster://u:p@a:1,b:2"), "redis+cluster://u:***@a:1,b:2");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        let err = RedisUrl::parse("redis://u:secret@h:notaport").unwrap_err().to_string();
        assert!(
            err.contains("redis://u:***@h:notaport") && !err.contains("secret"),
            "{err}"
        );
    }

    #[test]
    fn bad_urls_are_refused_naming_the_value() {
        for (url, expected) in [
            ("http://h:1", "`http://h:1` is not a Redis URL"),
            ("redis://h:99999", "`redis://h:99999`"),
            ("redis+cluster://a:1,b", "cluster node `b` is not HOST:PORT"),
            ("redis+cluster://", "cluster node `` is not HOST:PORT"),
            ("redis+cluster://a:1/3", "no database path"),
            ("redis://h:1?reply_ttl=soon", "reply_ttl"),
            ("redis://h:1?reply_ttl=0s", "at least 1ms"),
        ] {
            let err = RedisUrl::parse(url).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    #[test]
    fn options_are_read_and_the_rest_passed_on() {
        let tls = RedisUrl::parse("rediss://127.0.0.1:6379?reply_ttl=1h#insecure").unwrap();
        assert_eq!(tls.reply_ttl, Some(Duration::from_secs(3600)));
        let url = RedisUrl::parse("redis://127.0.0.1:6379/2?reply_ttl=90s&protocol=resp2").unwrap();
        assert_eq!(url.reply_ttl, Some(Duration::from_secs(90)));
        let Target::Single(client) = &url.target else {
            panic!("single")
        };
        assert_eq!(client.get_connection_info().redis_settings().db(), 2);
        let cluster = RedisUrl::parse("rediss+cluster://u:p@127.0.0.1:7000,[::1]:7001/").unwrap();
        assert!(matches!(cluster.target, Target::Cluster(_)));
        assert_eq!(
            cluster_nodes("redis", "a:1,b:2", "").unwrap(),
            ["redis://a:1", "redis://b:2"]
        );
    }
}
