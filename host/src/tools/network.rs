//! The network side of a tool call: `wasi:http` requests, each checked
//! against the tool's allowlist before any connection is made.
//!
//! Only the tool linker gets `wasi:http`; agents have no network at all.
//! Every outgoing request of a tool passes [`NetworkGate::send_request`],
//! which parses the request's URL and admits it only if an allowlist entry
//! matches its scheme, host, port and path prefix. The check is on the
//! parsed URL, never on a resolved address, and the request that goes out is
//! rebuilt from that parsed URL, so what is checked is exactly what is sent.
//! A denied request fails in the guest with `HttpRequestDenied` and is
//! recorded; the tool call then returns a `denied` tool error naming the URL
//! and the reason, whatever the tool itself returned.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::policy::{AllowedUrl, NetworkRule, is_private_ip_literal};
use crate::runtime::SandboxState;

/// Select aws-lc-rs as rustls' process-wide provider, unless one is set.
///
/// wasmtime-wasi-http's sender builds its TLS config with rustls' default
/// provider, which rustls cannot pick on its own when (as in this build,
/// through different dependencies) both of its providers are compiled in:
/// without this, the first https request of a tool panics. aws-lc-rs is the
/// provider the AWS SDK uses already.
pub(crate) fn ensure_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing one is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// The tool-specific part of a tool call's store: its `wasi:http` context
/// and the gate its requests go through.
pub(crate) struct ToolHost {
    http: WasiHttpCtx,
    gate: NetworkGate,
}

impl ToolHost {
    pub(crate) fn new(gate: NetworkGate) -> Self {
        Self {
            http: WasiHttpCtx::new(),
            gate,
        }
    }

    /// The requests denied so far in this call.
    pub(crate) fn denials(&self) -> &Denials {
        &self.gate.denials
    }
}

impl WasiHttpView for SandboxState<ToolHost> {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.host.http,
            table: &mut self.table,
            hooks: &mut self.host.gate,
        }
    }
}

/// One denied request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDenial {
    /// The request's URL, as the tool sent it.
    pub url: String,
    /// Why it was denied.
    pub reason: String,
}

impl fmt::Display for NetworkDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network request to {} denied: {}", self.url, self.reason)
    }
}

/// Denials logged per tool call: a tool looping on a denied request
/// would otherwise fill the logs. Later ones are counted.
const LOGGED_DENIALS: u64 = 8;

/// The most bytes of a denied URL, or of the reason, kept and logged (a
/// tool chooses the URL, and may make it as long as its memory).
const MAX_DENIAL_TEXT: usize = 2048;

/// The requests denied during one tool call: the first, which is reported,
/// and how many there were. A tool looping on denied requests costs the
/// host a counter, not memory.
#[derive(Debug, Default)]
pub(crate) struct Denials {
    first: Option<NetworkDenial>,
    count: u64,
}

impl Denials {
    fn record(&mut self, denial: NetworkDenial) {
        self.count += 1;
        self.first.get_or_insert(denial);
    }

    /// The first denial and how many followed it, if any request was denied.
    pub(crate) fn first_and_more(&self) -> Option<(&NetworkDenial, u64)> {
        Some((self.first.as_ref()?, self.count - 1))
    }
}

/// `text`, cut to [`MAX_DENIAL_TEXT`] bytes.
fn shortened(text: &str) -> String {
    crate::telemetry::clipped(format_args!("{text}"), MAX_DENIAL_TEXT)
}

/// Admits or denies a tool's outgoing HTTP requests.
pub(crate) struct NetworkGate {
    allowlist: Arc<[NetworkRule]>,
    tool: Arc<str>,
    /// The tool call's span (a child of the job's, so denials carry the
    /// job's `request_id` and `job_id`).
    span: tracing::Span,
    /// No request outlives the tool call.
    deadline: Instant,
    denials: Denials,
}

impl NetworkGate {
    pub(crate) fn new(allowlist: Arc<[NetworkRule]>, tool: Arc<str>, span: tracing::Span, deadline: Instant) -> Self {
        Self {
            allowlist,
            tool,
            span,
            deadline,
            denials: Denials::default(),
        }
    }

    /// The URL to send `request` to, if the allowlist admits it; otherwise
    /// the denial, recorded and logged.
    fn admit(&mut self, request: &http::Request<WasiBody>) -> Result<url::Url, ()> {
        let text = request.uri().to_string();
        let decision = url::Url::parse(&text)
            .map_err(|err| format!("not a valid URL ({err})"))
            .and_then(|url| check(&self.allowlist, &url).map(|()| url));
        match decision {
            Ok(url) => {
                tracing::debug!(parent: &self.span, tool = &*self.tool, url = %url, "network request allowed");
                Ok(url)
            }
            Err(reason) => {
                let denial = NetworkDenial {
                    url: shortened(&text),
                    reason: shortened(&reason),
                };
                if self.denials.count < LOGGED_DENIALS {
                    tracing::warn!(
                        parent: &self.span,
                        tool = &*self.tool,
                        url = %denial.url,
                        reason = %denial.reason,
                        "network request denied"
                    );
                }
                self.denials.record(denial);
                Err(())
            }
        }
    }
}

/// Whether `allowlist` admits `url`, and if not, why, in words for the model.
pub(crate) fn check(allowlist: &[NetworkRule], url: &url::Url) -> Result<(), String> {
    if allowlist.is_empty() {
        return Err("the tool's policy grants no network access".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URLs with a user or password are not allowed".into());
    }
    if allowlist.iter().any(|rule| rule.url.allows(url)) {
        return Ok(());
    }
    let host = url.host_str().unwrap_or("(none)");
    // Explain against the entry for the same host that the tool most likely
    // meant: the first with the most of scheme, port and path matching.
    let closest = allowlist
        .iter()
        .map(|rule| &rule.url)
        .filter(|rule| rule.names_host_of(url))
        .fold(None, |best: Option<(&AllowedUrl, usize)>, rule| {
            let score = rule.matching_parts(url);
            match best {
                Some((_, best_score)) if best_score >= score => best,
                _ => Some((rule, score)),
            }
        });
    if let Some((rule, why)) = closest.and_then(|(rule, _)| rule.mismatch(url).map(|why| (rule, why))) {
        return Err(format!("no allowlist entry matches ({why} as in {rule})"));
    }
    if is_private_ip_literal(url) {
        return Err(format!(
            "{host} is a private, loopback or link-local address and no allowlist entry names it"
        ));
    }
    Err(format!("host {host} is not in the tool's network allowlist"))
}

/// A checked URL in the forms the sender needs.
struct AllowedTarget {
    uri: http::Uri,
    host_header: http::HeaderValue,
}

impl AllowedTarget {
    fn new(mut url: url::Url) -> Option<Self> {
        url.set_fragment(None);
        let uri = http::Uri::try_from(url.as_str()).ok()?;
        let host = &url[url::Position::BeforeHost..url::Position::AfterPort];
        let host_header = http::HeaderValue::from_str(host).ok()?;
        Some(Self { uri, host_header })
    }

    /// `request` addressed to this target: its URI rebuilt from the checked
    /// URL and a `Host` header naming the same host.
    fn address(self, mut request: http::Request<WasiBody>) -> http::Request<WasiBody> {
        *request.uri_mut() = self.uri;
        request.headers_mut().insert(http::header::HOST, self.host_header);
        request
    }
}

/// `options` with every timeout at most what is left until `deadline`.
fn bounded(options: Option<RequestOptions>, deadline: Instant) -> RequestOptions {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let cap = |timeout: Option<Duration>| Some(timeout.map_or(left, |t| t.min(left)));
    let options = options.unwrap_or_default();
    RequestOptions {
        connect_timeout: cap(options.connect_timeout),
        first_byte_timeout: cap(options.first_byte_timeout),
        between_bytes_timeout: cap(options.between_bytes_timeout),
    }
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for NetworkGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        // Decided here, synchronously, before the future that connects
        // exists: a denied request never reaches a socket.
        let Ok(url) = self.admit(&request) else {
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        let Some(target) = AllowedTarget::new(url) else {
            return Box::new(async { Err(HttpError::HttpRequestUriInvalid) });
        };
        let deadline = self.deadline;
        let options = bounded(options, deadline);
        let request = target.address(request);
        Box::new(async move {
            let send = wasmtime_wasi_http::default_send_request(request, Some(options));
            let (response, io) = tokio::time::timeout_at(deadline.into(), send)
                .await
                .map_err(|_| HttpError::ConnectionTimeout)??;
            let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(io);
            Ok((response.map(BodyExt::boxed_unsync), io))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(urls: &[&str]) -> Vec<NetworkRule> {
        urls.iter()
            .map(|u| NetworkRule {
                url: AllowedUrl::new(u).expect("rule"),
            })
            .collect()
    }

    fn denied(allowlist: &[NetworkRule], url: &str) -> String {
        check(allowlist, &url::Url::parse(url).expect("url")).expect_err(url)
    }

    #[test]
    fn a_call_keeps_its_first_denial_shortened_and_counts_the_rest() {
        let long_url = format!("http://example.org/{}", "é".repeat(40_000));
        let mut denials = Denials::default();
        for _ in 0..10_000 {
            denials.record(NetworkDenial {
                url: shortened(&long_url),
                reason: shortened("not allowed"),
            });
        }
        let (first, more) = denials.first_and_more().expect("denied");
        assert_eq!(more, 9_999);
        assert!(
            first.url.len() <= MAX_DENIAL_TEXT + '…'.len_utf8(),
            "{}",
            first.url.len()
        );
        assert!(first.url.starts_with("http://example.org/é") && first.url.ends_with('…'));
        assert_eq!(first.reason, "not allowed");
        assert!(Denials::default().first_and_more().is_none());
    }

    #[test]
    fn requests_are_checked_on_all_four_parts_and_denials_say_why() {
        let allowlist = rules(&["http://127.0.0.1:8080/api/", "https://api.example.com/v1/"]);
        assert_eq!(
            check(
                &allowlist,
                &url::Url::parse("http://127.0.0.1:8080/api/x?q=1").expect("url")
            ),
            Ok(())
        );
        assert_eq!(
            denied(&allowlist, "http://127.0.0.1:9090/api/x"),
            "no allowlist entry matches (port 9090 is not 8080 as in http://127.0.0.1:8080/api/)"
        );
        assert_eq!(
            denied(&allowlist, "http://api.example.com/v1/"),
            "no allowlist entry matches (scheme http is not https as in https://api.example.com:443/v1/)"
        );
        assert_eq!(
            denied(&allowlist, "http://10.0.0.1/"),
            "10.0.0.1 is a private, loopback or link-local address and no allowlist entry names it"
        );
        assert_eq!(
            denied(&allowlist, "http://example.org/"),
            "host example.org is not in the tool's network allowlist"
        );
        assert_eq!(
            denied(&allowlist, "http://user:pw@127.0.0.1:8080/api/"),
            "URLs with a user or password are not allowed"
        );
        assert_eq!(
            denied(&[], "http://127.0.0.1:8080/api/"),
            "the tool's policy grants no network access"
        );
    }

    #[test]
    fn a_listed_private_address_is_allowed() {
        let allowlist = rules(&["http://169.254.169.254/latest/"]);
        assert_eq!(
            check(
                &allowlist,
                &url::Url::parse("http://169.254.169.254/latest/x").expect("url")
            ),
            Ok(())
        );
        assert!(denied(&allowlist, "http://169.254.169.254/other").contains("path /other"));
    }

    #[test]
    fn requests_go_to_the_checked_url() {
        let target =
            AllowedTarget::new(url::Url::parse("http://127.0.0.1:8080/api/../x?q#frag").expect("url")).expect("target");
        assert_eq!(target.uri.to_string(), "http://127.0.0.1:8080/x?q");
        assert_eq!(target.host_header, "127.0.0.1:8080");
        let default_port = AllowedTarget::new(url::Url::parse("https://example.com/").expect("url")).expect("target");
        assert_eq!(default_port.host_header, "example.com");
    }

    #[test]
    fn request_timeouts_never_outlive_the_call() {
        let deadline = Instant::now() + Duration::from_secs(2);
        let options = bounded(
            Some(RequestOptions {
                connect_timeout: Some(Duration::from_secs(60)),
                first_byte_timeout: Some(Duration::from_millis(10)),
                between_bytes_timeout: None,
            }),
            deadline,
        );
        assert!(options.connect_timeout.is_some_and(|t| t <= Duration::from_secs(2)));
        assert_eq!(options.first_byte_timeout, Some(Duration::from_millis(10)));
        assert!(
            options
                .between_bytes_timeout
                .is_some_and(|t| t <= Duration::from_secs(2))
        );
    }
}
