//! The proxy's request head: `CONNECT host:port` (HTTPS tunnels) or a
//! plain HTTP request with an absolute URI (`GET http://host/path`) or a
//! Host header. Sans-IO and bounded: the caller reads at most
//! [`MAX_HEAD`] bytes looking for the blank line.

use std::net::IpAddr;

use super::policy::normalize_name;

/// Largest request head (request line + headers) the proxy reads.
pub const MAX_HEAD: usize = 16 * 1024;

/// Most headers a request may carry.
const MAX_HEADERS: usize = 64;

/// Headers meant for the proxy, or for one hop, that are not forwarded
/// (the proxy sets its own `Host` and `Connection: close`).
const HOP_HEADERS: [&str; 6] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
];

/// A request head the proxy cannot serve (answered with 400).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    /// No blank line within [`MAX_HEAD`] bytes.
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    /// Not HTTP/1.x, or not a proxy request kiln serves.
    #[error("{0}")]
    Malformed(&'static str),
}

/// Where a request goes: a DNS name (normalized) or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A domain name, lower-case, without a trailing dot.
    Name(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A parsed proxy request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    /// The target host.
    pub host: Host,
    /// The target port.
    pub port: u16,
    /// `None` for CONNECT (a tunnel: the client speaks first after the
    /// 200); for plain HTTP the head to send upstream (origin-form request
    /// line, `Host`, `Connection: close`, the end-to-end headers).
    pub forward: Option<Vec<u8>>,
}

/// Where the head ends (the index after its blank line), if it does.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses `host[:port]` or `[v6][:port]`.
fn authority(s: &str, default_port: Option<u16>) -> Result<(Host, u16), HeadError> {
    let bad = HeadError::Malformed("invalid host or port");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or(bad.clone())?;
        let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| bad.clone())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(bad.clone())?),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (name, port) = match s.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        };
        let host = match name.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => Host::Ip(IpAddr::V4(ip)),
            Err(_) => Host::Name(normalize_name(name).ok_or(bad.clone())?),
        };
        (host, port)
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or(bad)?,
        None => default_port.ok_or(HeadError::Malformed("CONNECT needs host:port"))?,
    };
    Ok((host, port))
}

/// Splits `http://authority/path?q` into the authority and the
/// origin-form target.
fn absolute_uri(uri: &str) -> Result<(&str, &str), HeadError> {
    let scheme_end = uri.find("://").ok_or(HeadError::Malformed("invalid URI"))?;
    if !uri[..scheme_end].eq_ignore_ascii_case("http") {
        return Err(HeadError::Malformed(
            "only http:// URIs are proxied; use CONNECT for https",
        ));
    }
    let rest = &uri[scheme_end + 3..];
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (auth, path) = rest.split_at(split);
    if auth.contains('@') {
        return Err(HeadError::Malformed(
            "credentials in the URI are not proxied",
        ));
    }
    let path = match path.as_bytes().first() {
        None => "/",
        Some(b'/') => path,
        Some(_) => return Err(HeadError::Malformed("invalid URI")),
    };
    Ok((auth, path))
}

/// Parses a complete head (up to and including its blank line).
pub fn parse_head(head: &[u8]) -> Result<ProxyRequest, HeadError> {
    if head.len() > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("incomplete request")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Malformed("too many headers"))
        }
        Err(_) => return Err(HeadError::Malformed("not an HTTP/1.x request")),
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HeadError::Malformed("not an HTTP/1.x request"));
    };
    if method == "CONNECT" {
        let (host, port) = authority(target, None)?;
        return Ok(ProxyRequest {
            host,
            port,
            forward: None,
        });
    }
    let (auth, path) = if target.starts_with('/') {
        let host = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .ok_or(HeadError::Malformed(
                "a request without an absolute URI needs a Host header",
            ))?;
        let host = std::str::from_utf8(host.value)
            .map_err(|_| HeadError::Malformed("invalid host or port"))?;
        (host.trim(), target)
    } else {
        absolute_uri(target)?
    };
    let (host, port) = authority(auth, Some(80))?;
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {auth}\r\n").into_bytes();
    for h in req.headers.iter() {
        if HOP_HEADERS.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(ProxyRequest {
        host,
        port,
        forward: Some(out),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ProxyRequest, HeadError> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn connect_names_host_and_port() {
        let r = parse("CONNECT PyPI.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n").expect("ok");
        assert_eq!(r.host, Host::Name("pypi.org".into()));
        assert_eq!((r.port, r.forward), (443, None));
        let r = parse("CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n\r\n").expect("v6");
        assert_eq!(r.host, Host::Ip("2001:db8::1".parse().expect("ip")));
        assert_eq!(r.host.to_string(), "[2001:db8::1]");
        let r = parse("CONNECT 10.0.0.1:22 HTTP/1.0\r\n\r\n").expect("v4");
        assert_eq!(
            (r.host, r.port),
            (Host::Ip("10.0.0.1".parse().expect("ip")), 22)
        );
    }

    #[test]
    fn absolute_uri_is_rewritten_to_origin_form() {
        let r = parse(
            "GET http://example.com:8080/a/b?c=1 HTTP/1.1\r\nHost: other\r\n\
             Proxy-Connection: keep-alive\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
        )
        .expect("ok");
        assert_eq!((r.host, r.port), (Host::Name("example.com".into()), 8080));
        let fwd = String::from_utf8(r.forward.expect("forward")).expect("utf8");
        assert_eq!(
            fwd,
            "GET /a/b?c=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\
             Connection: close\r\n\r\n"
        );
        let r = parse("HEAD http://example.com HTTP/1.1\r\n\r\n").expect("no path");
        assert_eq!(r.port, 80);
        assert!(r
            .forward
            .expect("fwd")
            .starts_with(b"HEAD / HTTP/1.1\r\nHost: example.com\r\n"));
    }

    #[test]
    fn origin_form_uses_the_host_header() {
        let r = parse("GET /x HTTP/1.1\r\nhost: localhost:9000\r\n\r\n").expect("ok");
        assert_eq!((r.host, r.port), (Host::Name("localhost".into()), 9000));
        assert!(parse("GET /x HTTP/1.1\r\n\r\n").is_err(), "no Host header");
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "CONNECT pypi.org HTTP/1.1\r\n\r\n",
            "CONNECT pypi.org:0 HTTP/1.1\r\n\r\n",
            "CONNECT pypi.org:99999 HTTP/1.1\r\n\r\n",
            "CONNECT [::1 HTTP/1.1\r\n\r\n",
            "CONNECT a b:1 HTTP/1.1\r\n\r\n",
            "CONNECT ev!l.com:443 HTTP/1.1\r\n\r\n",
            "GET https://pypi.org/ HTTP/1.1\r\n\r\n",
            "GET ftp://pypi.org/ HTTP/1.1\r\n\r\n",
            "GET http://u:p@pypi.org/ HTTP/1.1\r\n\r\n",
            "GET pypi.org HTTP/1.1\r\n\r\n",
            "\r\n\r\n",
            "GARBAGE\r\n\r\n",
            "GET http://a.com/ HTTP/2.0\r\n\r\n",
            "GET http://a.com/ HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
        let many = format!(
            "GET http://a.com/ HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(65)
        );
        assert_eq!(parse(&many), Err(HeadError::Malformed("too many headers")));
        let huge = format!("GET http://a.com/{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&huge), Err(HeadError::TooLarge));
    }

    #[test]
    fn the_head_ends_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
