//! Tool `http_fetch`: an HTTP GET or POST through `wasi:http`.
//!
//! Input: `{"url", "method"?: "GET" | "POST", "headers"?: {name: value},
//! "body"?: string, "max_bytes"?: integer, "max_redirects"?: integer}`.
//! Output: `{"url", "status", "headers", "body", "bytes", "truncated",
//! "redirects"}`.
//!
//! The tool only asks; the host decides. Every request, including each hop
//! of a redirect (followed here, one fresh request per hop), goes through
//! the host's outgoing handler, which checks it against the tool's network
//! allowlist before connecting. A denied request comes back as
//! `HttpRequestDenied` and becomes a `denied` tool error.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_json::json;
use url::Url;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingResponse, Method as WireMethod, OutgoingBody, OutgoingRequest, Scheme,
};
use wink_guest::{Tool, ToolError, ToolSpec};

const DEFAULT_MAX_BYTES: u64 = 64 * 1024;
const MAX_MAX_BYTES: u64 = 1024 * 1024;
const DEFAULT_MAX_REDIRECTS: u32 = 5;
const MAX_MAX_REDIRECTS: u32 = 10;

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default, Debug)]
enum Method {
    #[default]
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    #[serde(default)]
    method: Method,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    #[serde(default = "default_max_redirects")]
    max_redirects: u32,
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

fn default_max_redirects() -> u32 {
    DEFAULT_MAX_REDIRECTS
}

#[derive(Serialize)]
struct Output {
    /// The URL of the final response (after redirects).
    url: String,
    status: u16,
    /// Response headers, lower-case names; repeated ones joined with ", ".
    headers: BTreeMap<String, String>,
    /// The body as UTF-8 (invalid bytes replaced), at most `max_bytes`.
    body: String,
    /// Bytes of body returned.
    bytes: u64,
    /// Whether the body was longer than `max_bytes`.
    truncated: bool,
    /// Every URL redirected to, in order.
    redirects: Vec<String>,
}

/// One request to send: the first, or a redirect hop.
struct Request {
    url: Url,
    method: Method,
    headers: BTreeMap<String, String>,
    body: Option<String>,
}

struct HttpFetch;

impl Tool for HttpFetch {
    type Input = Input;
    type Output = Output;

    fn spec() -> ToolSpec {
        ToolSpec::new(
            "http_fetch",
            "Send an HTTP GET or POST request and return the response status, headers and body \
             (as UTF-8 text, truncated to max_bytes). Redirects are followed up to max_redirects. \
             Only destinations allowed by the tool's network policy can be reached; others are \
             denied with the reason.",
            json!({
                "type": "object",
                "properties": {
                    "url": {
                        "type": "string",
                        "description": "Absolute http:// or https:// URL, e.g. \"https://api.example.com/v1/items?id=3\".",
                        "minLength": 1
                    },
                    "method": {
                        "type": "string",
                        "enum": ["GET", "POST"],
                        "default": "GET"
                    },
                    "headers": {
                        "type": "object",
                        "description": "Request headers by name, e.g. {\"accept\": \"application/json\"}.",
                        "additionalProperties": {"type": "string"}
                    },
                    "body": {
                        "type": "string",
                        "description": "Request body (POST only)."
                    },
                    "max_bytes": {
                        "type": "integer",
                        "description": "Most bytes of response body to return.",
                        "minimum": 1,
                        "maximum": MAX_MAX_BYTES,
                        "default": DEFAULT_MAX_BYTES
                    },
                    "max_redirects": {
                        "type": "integer",
                        "description": "Most redirects to follow; 0 returns the redirect response itself.",
                        "minimum": 0,
                        "maximum": MAX_MAX_REDIRECTS,
                        "default": DEFAULT_MAX_REDIRECTS
                    }
                },
                "required": ["url"],
                "additionalProperties": false
            }),
        )
    }

    fn invoke(input: Input) -> Result<Output, ToolError> {
        if !(1..=MAX_MAX_BYTES).contains(&input.max_bytes) {
            return Err(ToolError::InvalidInput(format!(
                "max_bytes must be between 1 and {MAX_MAX_BYTES}"
            )));
        }
        if input.max_redirects > MAX_MAX_REDIRECTS {
            return Err(ToolError::InvalidInput(format!(
                "max_redirects must be at most {MAX_MAX_REDIRECTS}"
            )));
        }
        if input.body.is_some() && input.method == Method::Get {
            return Err(ToolError::InvalidInput("a GET request has no body; use POST".into()));
        }
        let mut request = Request {
            url: parse_url(&input.url).map_err(ToolError::InvalidInput)?,
            method: input.method,
            headers: input.headers,
            body: input.body,
        };
        let mut redirects = Vec::new();
        loop {
            let response = send(&request)?;
            let status = response.status();
            let headers = headers(&response);
            let Some(location) = redirect_location(status, &headers) else {
                return finish(&request.url, status, headers, &response, input.max_bytes, redirects);
            };
            if input.max_redirects == 0 {
                return finish(&request.url, status, headers, &response, input.max_bytes, redirects);
            }
            if redirects.len() >= input.max_redirects as usize {
                return Err(ToolError::Failed(format!(
                    "{}: stopped after {} redirects (next: {location})",
                    input.url, input.max_redirects
                )));
            }
            drop(response);
            request = follow(request, status, &location)?;
            redirects.push(request.url.to_string());
        }
    }
}

/// An absolute http(s) URL, or why not.
fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| format!("url {text:?}: {err}"))?;
    match url.scheme() {
        "http" | "https" if url.has_host() => Ok(url),
        "http" | "https" => Err(format!("url {text:?} has no host")),
        other => Err(format!("url {text:?}: scheme {other} is not http or https")),
    }
}

/// The `Location` of a redirect response, if `status` is a redirect.
fn redirect_location(status: u16, headers: &BTreeMap<String, String>) -> Option<String> {
    matches!(status, 301 | 302 | 303 | 307 | 308)
        .then(|| headers.get("location").cloned())
        .flatten()
}

/// The next hop after a redirect, as browsers and curl do it: 303 (and 301
/// or 302 after a POST) becomes a GET without body; credentials are not
/// sent to another origin.
fn follow(request: Request, status: u16, location: &str) -> Result<Request, ToolError> {
    let url = request
        .url
        .join(location)
        .map_err(|err| ToolError::Failed(format!("{}: bad redirect location {location:?}: {err}", request.url)))
        .and_then(|url| parse_url(url.as_str()).map_err(ToolError::Failed))?;
    let mut headers = request.headers;
    if url.origin() != request.url.origin() {
        headers.retain(|name, _| !matches!(name.to_ascii_lowercase().as_str(), "authorization" | "cookie"));
    }
    let to_get = status == 303 || (matches!(status, 301 | 302) && request.method == Method::Post);
    let (method, body) = if to_get {
        headers.retain(|name, _| !name.eq_ignore_ascii_case("content-type"));
        (Method::Get, None)
    } else {
        (request.method, request.body)
    };
    Ok(Request {
        url,
        method,
        headers,
        body,
    })
}

/// Send one request through the host's outgoing handler and wait for the
/// response head.
fn send(request: &Request) -> Result<IncomingResponse, ToolError> {
    let url = &request.url;
    let fields = Fields::new();
    if let Some(body) = &request.body {
        // A known length, not chunked encoding, which some servers refuse.
        let length = body.len().to_string();
        fields
            .set("content-length", &[length.into_bytes()])
            .map_err(|err| ToolError::InvalidInput(format!("header \"content-length\": {err:?}")))?;
    }
    // The length is the tool's to state: a wrong one would fail the request.
    let headers = request
        .headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("content-length"));
    for (name, value) in headers {
        fields
            .append(name, value.as_bytes())
            .map_err(|err| ToolError::InvalidInput(format!("header {name:?}: {err:?}")))?;
    }
    let outgoing = OutgoingRequest::new(fields);
    let scheme = if url.scheme() == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let method = match request.method {
        Method::Get => WireMethod::Get,
        Method::Post => WireMethod::Post,
    };
    let authority = &url[url::Position::BeforeHost..url::Position::AfterPort];
    let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let invalid = |what: &str| ToolError::InvalidInput(format!("{url}: invalid {what}"));
    outgoing.set_method(&method).map_err(|()| invalid("method"))?;
    outgoing.set_scheme(Some(&scheme)).map_err(|()| invalid("scheme"))?;
    outgoing.set_authority(Some(authority)).map_err(|()| invalid("host"))?;
    outgoing.set_path_with_query(Some(path)).map_err(|()| invalid("path"))?;
    let body = outgoing
        .body()
        .map_err(|()| failed(url, "cannot open the request body"))?;
    let pending = outgoing_handler::handle(outgoing, None).map_err(|code| transport_error(url, code))?;
    write_body(url, body, request.body.as_deref().unwrap_or(""))?;
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(code))) => Err(transport_error(url, code)),
        Some(Err(())) | None => Err(failed(url, "the response was already taken")),
    }
}

fn write_body(url: &Url, body: OutgoingBody, content: &str) -> Result<(), ToolError> {
    {
        let stream = body
            .write()
            .map_err(|()| failed(url, "cannot write the request body"))?;
        for chunk in content.as_bytes().chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|err| failed(url, &format!("writing the request body: {err:?}")))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|code| transport_error(url, code))
}

/// The response's headers, lower-case names, repeated values joined.
fn headers(response: &IncomingResponse) -> BTreeMap<String, String> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in response.headers().entries() {
        let value = String::from_utf8_lossy(&value).into_owned();
        headers
            .entry(name.to_ascii_lowercase())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    headers
}

/// Read at most `max_bytes` of the final response's body.
fn finish(
    url: &Url,
    status: u16,
    headers: BTreeMap<String, String>,
    response: &IncomingResponse,
    max_bytes: u64,
    redirects: Vec<String>,
) -> Result<Output, ToolError> {
    let body = response
        .consume()
        .map_err(|()| failed(url, "the response body was already taken"))?;
    let mut content = Vec::new();
    let truncated = {
        let mut stream = body
            .stream()
            .map_err(|()| failed(url, "cannot read the response body"))?;
        let read_error = |err: std::io::Error| failed(url, &format!("reading the response body: {err}"));
        // `InputStream` has inherent `read`/`take` methods of its own.
        Read::take(&mut stream, max_bytes)
            .read_to_end(&mut content)
            .map_err(read_error)?;
        // One byte more tells whether the body went on.
        Read::read(&mut stream, &mut [0u8; 1]).map_err(read_error)? > 0
    };
    drop(body);
    Ok(Output {
        url: url.to_string(),
        status,
        headers,
        bytes: content.len() as u64,
        body: String::from_utf8_lossy(&content).into_owned(),
        truncated,
        redirects,
    })
}

fn failed(url: &Url, what: &str) -> ToolError {
    ToolError::Failed(format!("{url}: {what}"))
}

/// A `wasi:http` error code as a tool error: the host's denials stay denials.
fn transport_error(url: &Url, code: ErrorCode) -> ToolError {
    match code {
        ErrorCode::HttpRequestDenied => ToolError::Denied(format!("{url}: denied by the tool's network policy")),
        other => ToolError::Failed(format!("{url}: {other:?}")),
    }
}

wink_guest::export_tool!(HttpFetch);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(url: &str, method: Method) -> Request {
        Request {
            url: Url::parse(url).expect("url"),
            method,
            headers: BTreeMap::from([
                ("Authorization".into(), "Bearer t".into()),
                ("content-type".into(), "text/plain".into()),
            ]),
            body: (method == Method::Post).then(|| "data".into()),
        }
    }

    #[test]
    fn urls_must_be_absolute_http() {
        assert!(parse_url("https://example.com/x").is_ok());
        assert!(parse_url("ftp://example.com/").unwrap_err().contains("scheme ftp"));
        assert!(parse_url("/relative").is_err());
    }

    #[test]
    fn redirects_follow_browser_rules() {
        let next = follow(request("http://a.test/x/y", Method::Post), 302, "../z").expect("follow");
        assert_eq!(next.url.as_str(), "http://a.test/z");
        assert_eq!(next.method, Method::Get);
        assert!(next.body.is_none() && !next.headers.contains_key("content-type"));
        assert!(
            next.headers.contains_key("Authorization"),
            "same origin keeps credentials"
        );

        let next = follow(request("http://a.test/x", Method::Post), 307, "http://b.test/").expect("follow");
        assert_eq!((next.method, next.body.as_deref()), (Method::Post, Some("data")));
        assert!(
            !next.headers.contains_key("Authorization"),
            "credentials stay with their origin"
        );

        assert!(follow(request("http://a.test/", Method::Get), 301, "file:///etc/passwd").is_err());
    }

    #[test]
    fn only_redirect_statuses_with_a_location_redirect() {
        let headers = BTreeMap::from([("location".to_owned(), "/next".to_owned())]);
        assert_eq!(redirect_location(302, &headers).as_deref(), Some("/next"));
        assert_eq!(redirect_location(200, &headers), None);
        assert_eq!(redirect_location(304, &headers), None);
        assert_eq!(redirect_location(301, &BTreeMap::new()), None);
    }
}
