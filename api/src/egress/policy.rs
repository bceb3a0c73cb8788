//! The allowlist: exact names, `*.example.com` wildcards (subdomains, not
//! the apex) and CIDRs for IP literals; parsed and checked once, matched
//! per connection.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::EgressSpec;

/// Most entries an allowlist may hold (names and CIDRs each).
pub const MAX_ENTRIES: usize = 256;

/// An allowlist that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// Not a domain name (or wildcard) kiln accepts.
    #[error("invalid egress name {0:?}: use a domain name (pypi.org) or a wildcard over at least two labels (*.npmjs.org); IP addresses go in cidrs")]
    Name(String),
    /// Not a CIDR or an IP address.
    #[error("invalid egress CIDR {0:?}: use 203.0.113.0/24, 2001:db8::/32 or a single address")]
    Cidr(String),
    /// More entries than [`MAX_ENTRIES`].
    #[error("an egress allowlist holds at most {MAX_ENTRIES} names and {MAX_ENTRIES} CIDRs")]
    TooMany,
    /// A create asked for more than its template allows.
    #[error(
        "egress entry {0:?} is not within the template's allowlist (a create may only narrow it)"
    )]
    Wider(String),
}

/// A checked allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    exact: BTreeSet<String>,
    /// Wildcard suffixes without the `*.`.
    wildcards: BTreeSet<String>,
    cidrs: Vec<IpNet>,
}

/// Lower-cases a host name and drops one trailing dot; `None` unless it
/// is a DNS name: labels of 1-63 of `[a-z0-9_-]`, not starting or ending
/// with `-`, at most 253 bytes in all.
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (!name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)).then_some(name)
}

impl Allowlist {
    /// Checks and compiles `spec`.
    pub fn parse(spec: &EgressSpec) -> Result<Self, PolicyError> {
        if spec.allow.len() > MAX_ENTRIES || spec.cidrs.len() > MAX_ENTRIES {
            return Err(PolicyError::TooMany);
        }
        let mut list = Allowlist::default();
        for entry in &spec.allow {
            let bad = || PolicyError::Name(entry.clone());
            if entry.parse::<IpAddr>().is_ok() {
                return Err(bad());
            }
            match entry.strip_prefix("*.") {
                Some(suffix) => {
                    let suffix = normalize_name(suffix).ok_or_else(bad)?;
                    if !suffix.contains('.') {
                        return Err(bad());
                    }
                    list.wildcards.insert(suffix);
                }
                None => {
                    list.exact.insert(normalize_name(entry).ok_or_else(bad)?);
                }
            }
        }
        for entry in &spec.cidrs {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| PolicyError::Cidr(entry.clone()))?;
            list.cidrs.push(net.trunc());
        }
        Ok(list)
    }

    /// Whether it allows nothing.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty() && self.cidrs.is_empty()
    }

    /// Whether the (normalized) name `host` is listed, exactly or under a
    /// wildcard.
    pub fn allows_name(&self, host: &str) -> bool {
        self.exact.contains(host) || self.wildcard_covers(host)
    }

    fn wildcard_covers(&self, host: &str) -> bool {
        // Every proper suffix after a dot: a.b.c -> b.c, c.
        host.match_indices('.')
            .any(|(i, _)| self.wildcards.contains(&host[i + 1..]))
    }

    /// Whether an IP literal falls in one of the CIDRs.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|net| net.contains(&ip))
    }

    /// Checks that everything this allows, `outer` allows too (a create
    /// narrowing its template's allowlist).
    pub fn within(&self, outer: &Allowlist) -> Result<(), PolicyError> {
        if let Some(name) = self.exact.iter().find(|n| !outer.allows_name(n)) {
            return Err(PolicyError::Wider(name.clone()));
        }
        let wider = self
            .wildcards
            .iter()
            .find(|s| !outer.wildcards.contains(*s) && !outer.wildcard_covers(s));
        if let Some(suffix) = wider {
            return Err(PolicyError::Wider(format!("*.{suffix}")));
        }
        if let Some(net) = self
            .cidrs
            .iter()
            .find(|n| !outer.cidrs.iter().any(|o| o.contains(*n)))
        {
            return Err(PolicyError::Wider(net.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(allow: &[&str], cidrs: &[&str]) -> Result<Allowlist, PolicyError> {
        Allowlist::parse(&EgressSpec {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn exact_names_and_wildcards_match_as_documented() {
        let l = list(&["PyPI.org.", "*.npmjs.org"], &[]).expect("valid");
        assert!(l.allows_name("pypi.org"));
        assert!(!l.allows_name("files.pypi.org"), "exact is not a wildcard");
        assert!(!l.allows_name("evilpypi.org"));
        assert!(l.allows_name("registry.npmjs.org"));
        assert!(l.allows_name("a.b.npmjs.org"));
        assert!(!l.allows_name("npmjs.org"), "the apex is not a subdomain");
        assert!(!l.allows_name("evilnpmjs.org"));
        assert!(!l.allows_name("npmjs.org.evil.com"));
        assert!(!l.allows_ip("104.16.0.1".parse().expect("ip")));
    }

    #[test]
    fn cidrs_match_ip_literals_only() {
        let l = list(&[], &["203.0.113.7/24", "2001:db8::/32", "198.51.100.1"]).expect("valid");
        assert!(l.allows_ip("203.0.113.200".parse().expect("ip")));
        assert!(!l.allows_ip("203.0.114.1".parse().expect("ip")));
        assert!(l.allows_ip("2001:db8::5".parse().expect("ip")));
        assert!(l.allows_ip("198.51.100.1".parse().expect("ip")));
        assert!(!l.allows_ip("198.51.100.2".parse().expect("ip")));
        assert!(!l.allows_name("203.0.113.200"));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "",
            "*",
            "*.com",
            "*.",
            "a..b",
            "-a.com",
            "a-.com",
            "a b.com",
            "x.*.com",
            "a/b",
            "10.0.0.1",
            "::1",
            "pypi.org:443",
            "user@pypi.org",
        ] {
            assert!(
                matches!(list(&[bad], &[]), Err(PolicyError::Name(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            list(&[&"a".repeat(64)], &[]),
            Err(PolicyError::Name(_))
        ));
        for bad in ["10.0.0.0/33", "pypi.org", "10.0.0", "::/129", ""] {
            assert!(
                matches!(list(&[], &[bad]), Err(PolicyError::Cidr(_))),
                "{bad:?}"
            );
        }
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("h{i}.com")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(list(&refs, &[]), Err(PolicyError::TooMany));
    }

    #[test]
    fn a_create_may_only_narrow_its_template() {
        let outer = list(&["pypi.org", "*.npmjs.org"], &["203.0.113.0/24"]).expect("outer");
        let ok = |a: &[&str], c: &[&str]| list(a, c).expect("inner").within(&outer);
        ok(&["pypi.org"], &[]).expect("same name");
        ok(&["registry.npmjs.org", "*.x.npmjs.org", "*.npmjs.org"], &[])
            .expect("under the wildcard");
        ok(&[], &["203.0.113.128/25"]).expect("a smaller range");
        assert_eq!(
            ok(&["npmjs.org"], &[]),
            Err(PolicyError::Wider("npmjs.org".into()))
        );
        assert!(
            ok(&["*.pypi.org"], &[]).is_err(),
            "exact does not cover subdomains"
        );
        assert!(ok(&["files.pypi.org"], &[]).is_err());
        assert!(ok(&[], &["203.0.0.0/16"]).is_err());
    }
}
