//! Filesystem grants and network allowlist entries, validated as they are parsed.

use std::fmt;
use std::net::IpAddr;
use std::path::{Component, Path};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a tool may use a granted path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read files and list directories.
    ReadOnly,
    /// Also create, write, rename and remove.
    ReadWrite,
}

/// One filesystem grant of a tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsGrant {
    /// A directory inside the workspace; `.` is the whole workspace.
    pub path: GrantPath,
    /// What the tool may do there.
    pub access: Access,
}

impl FsGrant {
    /// Whether this grant allows everything `other` does.
    pub fn covers(&self, other: &FsGrant) -> bool {
        self.path.contains(&other.path) && (self.access == Access::ReadWrite || other.access == Access::ReadOnly)
    }
}

/// A relative path inside the workspace, normalized: no `.`, `..` or root.
///
/// The check here is syntactic; when a tool is instantiated the host also
/// resolves the path through the workspace capability, so a symlink cannot
/// lead a grant outside the workspace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantPath(String);

impl GrantPath {
    /// Validate and normalize `text`.
    pub fn new(text: &str) -> Result<Self, String> {
        let path = Path::new(text);
        let mut parts = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => {
                    parts.push(part.to_str().ok_or_else(|| format!("fs path {text:?} is not UTF-8"))?)
                }
                Component::CurDir => {}
                Component::ParentDir => return Err(format!("fs path {text:?} must not contain `..`")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(format!("fs path {text:?} must be relative to the workspace"));
                }
            }
        }
        if text.is_empty() {
            return Err("fs path is empty (use \".\" for the whole workspace)".into());
        }
        Ok(Self(parts.join("/")))
    }

    /// The whole workspace.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// The normalized path; `.` for the workspace root.
    pub fn as_str(&self) -> &str {
        if self.0.is_empty() { "." } else { &self.0 }
    }

    /// The path relative to the workspace root (empty for the root itself).
    pub fn relative(&self) -> &Path {
        Path::new(&self.0)
    }

    /// Whether `other` is this path or lies below it.
    pub fn contains(&self, other: &GrantPath) -> bool {
        other.relative().starts_with(self.relative())
    }
}

impl fmt::Display for GrantPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for GrantPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Serialize for GrantPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A network destination prefix: scheme, host, port and path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedUrl {
    scheme: String,
    host: url::Host,
    port: u16,
    path_prefix: String,
}

impl AllowedUrl {
    /// Parse `text`: `http` or `https`, a host, an optional port (default
    /// the scheme's), a path prefix (default `/`), no user, query or fragment.
    pub fn new(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|err| format!("network url {text:?}: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("network url {text:?}: the scheme must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "network url {text:?}: must not have a user, password, query or fragment"
            ));
        }
        let host = url
            .host()
            .ok_or_else(|| format!("network url {text:?} has no host"))?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("network url {text:?} has no port"))?;
        Ok(Self {
            scheme: url.scheme().to_owned(),
            host,
            port,
            path_prefix: url.path().to_owned(),
        })
    }

    /// Whether this entry allows `url`: same scheme, host and port, and a
    /// path starting with the prefix. The check is on the parsed URL only;
    /// names are never resolved, so DNS cannot change the answer.
    pub fn allows(&self, url: &url::Url) -> bool {
        self.mismatch(url).is_none()
    }

    /// How many of scheme, port and path prefix `url` matches (0 to 3).
    pub fn matching_parts(&self, url: &url::Url) -> usize {
        [
            url.scheme() == self.scheme,
            url.port_or_known_default() == Some(self.port),
            url.path().starts_with(&self.path_prefix),
        ]
        .into_iter()
        .filter(|matched| *matched)
        .count()
    }

    /// Whether this entry names `url`'s host (same host, whatever the
    /// scheme, port or path).
    pub fn names_host_of(&self, url: &url::Url) -> bool {
        url.host().is_some_and(|host| host.to_owned() == self.host)
    }

    /// Why this entry does not allow `url`: the first of scheme, host, port
    /// and path prefix that differs, or `None` when it allows it.
    pub fn mismatch(&self, url: &url::Url) -> Option<String> {
        if url.scheme() != self.scheme {
            return Some(format!("scheme {} is not {}", url.scheme(), self.scheme));
        }
        if !self.names_host_of(url) {
            let host = url.host_str().unwrap_or("(none)");
            return Some(format!("host {host} is not {}", self.host));
        }
        match url.port_or_known_default() {
            Some(port) if port == self.port => {}
            port => {
                let port = port.map_or_else(|| "(none)".to_owned(), |p| p.to_string());
                return Some(format!("port {port} is not {}", self.port));
            }
        }
        if !url.path().starts_with(&self.path_prefix) {
            return Some(format!("path {} does not start with {}", url.path(), self.path_prefix));
        }
        None
    }

    /// Whether this entry allows everything `other` does.
    pub fn covers(&self, other: &AllowedUrl) -> bool {
        self.scheme == other.scheme
            && self.host == other.host
            && self.port == other.port
            && other.path_prefix.starts_with(&self.path_prefix)
    }
}

/// Whether `url`'s host is an IP literal in a private, loopback, link-local
/// or otherwise non-public range: such destinations are denied unless an
/// allowlist entry names them exactly.
pub fn is_private_ip_literal(url: &url::Url) -> bool {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4),
        _ => return false,
    };
    match ip {
        IpAddr::V4(ip) => {
            ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

impl fmt::Display for AllowedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}{}", self.scheme, self.host, self.port, self.path_prefix)
    }
}

impl<'de> Deserialize<'de> for AllowedUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Serialize for AllowedUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> url::Url {
        url::Url::parse(text).expect("url")
    }

    #[test]
    fn grant_paths_are_normalized_and_escapes_refused() {
        assert_eq!(
            GrantPath::new("./out/").map(|p| p.as_str().to_owned()),
            Ok("out".into())
        );
        assert_eq!(GrantPath::new(".").map(|p| p.as_str().to_owned()), Ok(".".into()));
        assert!(GrantPath::new("a/../../etc").unwrap_err().contains("`..`"));
        assert!(GrantPath::new("/etc").unwrap_err().contains("relative"));
        assert!(GrantPath::new("").is_err());
    }

    #[test]
    fn grants_cover_narrower_paths_and_access() {
        let grant = |p: &str, access| FsGrant {
            path: GrantPath::new(p).expect("path"),
            access,
        };
        assert!(grant(".", Access::ReadWrite).covers(&grant("out/x", Access::ReadOnly)));
        assert!(!grant("out", Access::ReadOnly).covers(&grant("out", Access::ReadWrite)));
        assert!(!grant("out", Access::ReadWrite).covers(&grant("outside", Access::ReadOnly)));
    }

    #[test]
    fn urls_match_on_scheme_host_port_and_path_prefix() {
        let allowed = AllowedUrl::new("http://127.0.0.1:8080/api/").expect("url");
        assert!(allowed.allows(&url("http://127.0.0.1:8080/api/v1?q=1")));
        assert!(!allowed.allows(&url("http://127.0.0.1:8081/api/v1")));
        assert!(!allowed.allows(&url("https://127.0.0.1:8080/api/v1")));
        assert!(!allowed.allows(&url("http://127.0.0.1:8080/admin")));
        assert!(!allowed.allows(&url("http://localhost:8080/api/")));
        // The prefix is matched on the normalized path, as it is sent.
        assert!(!allowed.allows(&url("http://127.0.0.1:8080/api/../admin")));
        assert!(!allowed.allows(&url("http://127.0.0.1:8080/api/%2e%2e/admin")));
        assert_eq!(
            allowed.mismatch(&url("http://127.0.0.1:8081/api/v1")).as_deref(),
            Some("port 8081 is not 8080")
        );
        assert_eq!(
            allowed.mismatch(&url("https://127.0.0.1:8080/api/")).as_deref(),
            Some("scheme https is not http")
        );
        assert_eq!(
            allowed.mismatch(&url("http://127.0.0.1:8080/admin")).as_deref(),
            Some("path /admin does not start with /api/")
        );
        assert!(
            AllowedUrl::new("ftp://example.com/")
                .unwrap_err()
                .contains("http or https")
        );
        assert!(AllowedUrl::new("http://u:p@example.com/").is_err());
    }

    #[test]
    fn private_ip_literals_are_recognized() {
        for private in [
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://169.254.169.254/",
            "http://[::1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[fd00::1]/",
            "http://0.0.0.0/",
        ] {
            assert!(is_private_ip_literal(&url(private)), "{private}");
        }
        assert!(!is_private_ip_literal(&url("http://93.184.216.34/")));
        assert!(!is_private_ip_literal(&url("http://example.com/")));
    }
}
