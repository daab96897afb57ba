//! Page origins: the allowlist entries of a write key (`OriginPattern`:
//! `example.com`, `*.example.com`, `https://example.com:8443`) and the
//! browser's `Origin` header they are matched against. A leaf module: the
//! config checks the entries, `http::auth` matches requests with them.

/// One allowlist entry: `example.com`, `*.example.com`, `https://example.com:8443`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: Option<String>,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`.
    Subdomain(String),
}

impl OriginPattern {
    /// Parses an allowlist entry; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = match text.split_once("://") {
            Some((s, r)) if s == "http" || s == "https" => (Some(s.to_string()), r),
            Some((s, _)) => return Err(format!("`{text}`: scheme `{s}` is not http or https")),
            None => (None, text),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| format!("`{text}`: port `{p}` is not a number"))?)),
            None => (rest, None),
        };
        let host = host.to_ascii_lowercase();
        let (wild, bare) = match host.strip_prefix("*.") {
            Some(b) => (true, b.to_string()),
            None => (false, host.clone()),
        };
        let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if bare.is_empty() || !bare.split('.').all(label_ok) {
            return Err(format!("`{text}`: expected a host name such as example.com or *.example.com"));
        }
        let host = if wild { HostPattern::Subdomain(bare) } else { HostPattern::Exact(bare) };
        Ok(OriginPattern { scheme, host, port })
    }

    /// Whether a browser `Origin` header value (`scheme://host[:port]`) matches.
    pub fn matches(&self, origin: &Origin<'_>) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != origin.scheme) {
            return false;
        }
        if self.port.is_some_and(|p| Some(p) != origin.port) {
            return false;
        }
        match &self.host {
            HostPattern::Exact(h) => origin.host.eq_ignore_ascii_case(h),
            HostPattern::Subdomain(suffix) => {
                let host = origin.host;
                host.len() > suffix.len() + 1
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

/// A parsed `Origin` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
}

impl<'a> Origin<'a> {
    /// Parses `scheme://host[:port]`; `None` for `null` and anything else.
    pub fn parse(header: &'a str) -> Option<Self> {
        let (scheme, rest) = header.split_once("://")?;
        if rest.is_empty() || rest.contains('/') {
            return None;
        }
        let (host, port) = if rest.starts_with('[') {
            // IPv6 literal: [::1]:8080
            let end = rest.find(']')?;
            let after = &rest[end + 1..];
            let port = if after.is_empty() { None } else { Some(after.strip_prefix(':')?.parse().ok()?) };
            (&rest[..=end], port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p.parse().ok()?)),
                None => (rest, None),
            }
        };
        Some(Origin { scheme, host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(pattern: &str, origin: &str) -> bool {
        OriginPattern::parse(pattern).unwrap().matches(&Origin::parse(origin).unwrap())
    }

    #[test]
    fn exact_hosts() {
        assert!(allows("example.com", "https://example.com"));
        assert!(allows("example.com", "http://EXAMPLE.com:8080"));
        assert!(!allows("example.com", "https://www.example.com"));
        assert!(!allows("example.com", "https://example.com.evil.test"));
        assert!(!allows("example.com", "https://notexample.com"));
    }

    #[test]
    fn wildcard_subdomains() {
        assert!(allows("*.example.com", "https://a.example.com"));
        assert!(allows("*.example.com", "https://a.b.example.com"));
        assert!(!allows("*.example.com", "https://example.com"));
        assert!(!allows("*.example.com", "https://badexample.com"));
        assert!(!allows("*.example.com", "https://a.example.com.evil.test"));
    }

    #[test]
    fn scheme_and_port_when_given() {
        assert!(allows("https://example.com", "https://example.com"));
        assert!(!allows("https://example.com", "http://example.com"));
        assert!(allows("http://localhost:8080", "http://localhost:8080"));
        assert!(!allows("http://localhost:8080", "http://localhost:9090"));
        assert!(!allows("http://localhost:8080", "http://localhost"));
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(OriginPattern::parse("ftp://x.com").unwrap_err().contains("scheme"));
        assert!(OriginPattern::parse("x.com:http").unwrap_err().contains("port"));
        assert!(OriginPattern::parse("*.").is_err());
        assert!(OriginPattern::parse("a b.com").is_err());
    }

    #[test]
    fn origin_header_forms() {
        assert_eq!(Origin::parse("null"), None);
        assert_eq!(Origin::parse("https://x.test/path"), None);
        assert_eq!(Origin::parse("http://[::1]:8080").unwrap().port, Some(8080));
        assert_eq!(Origin::parse("http://[::1]").unwrap().port, None);
    }
}
