//! Which resolved addresses the proxy refuses to connect to: everything
//! that is not a public unicast address, checked after resolution so a
//! name that resolves (or rebinds) to an inside address gets nowhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918, IPv6 unique local (`fc00::/7`), site-local.
    Private,
    /// A cloud metadata service (`169.254.169.254`, `fd00:ec2::254`).
    Metadata,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// Carrier-grade NAT, `100.64.0.0/10`.
    SharedCgnat,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// Broadcast, reserved, documentation, benchmarking and protocol
    /// assignment ranges.
    Reserved,
}

impl Refusal {
    /// A word for logs and the 403 body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::Metadata => "metadata",
            Self::LinkLocal => "link-local",
            Self::SharedCgnat => "shared (CGNAT)",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved",
        }
    }
}

/// Why `ip` is refused, or `None` for a public unicast address. IPv6
/// forms that carry an IPv4 address (v4-mapped, NAT64 `64:ff9b::/96`,
/// 6to4 `2002::/16`) are judged by that address.
pub fn classify(ip: IpAddr) -> Option<Refusal> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<Refusal> {
    let table: [([u8; 4], u32, Refusal); 15] = [
        ([169, 254, 169, 254], 32, Refusal::Metadata),
        ([0, 0, 0, 0], 8, Refusal::Unspecified),
        ([127, 0, 0, 0], 8, Refusal::Loopback),
        ([10, 0, 0, 0], 8, Refusal::Private),
        ([172, 16, 0, 0], 12, Refusal::Private),
        ([192, 168, 0, 0], 16, Refusal::Private),
        ([169, 254, 0, 0], 16, Refusal::LinkLocal),
        ([100, 64, 0, 0], 10, Refusal::SharedCgnat),
        ([224, 0, 0, 0], 4, Refusal::Multicast),
        ([240, 0, 0, 0], 4, Refusal::Reserved), // and 255.255.255.255
        ([192, 0, 0, 0], 24, Refusal::Reserved),
        ([192, 0, 2, 0], 24, Refusal::Reserved),
        ([198, 18, 0, 0], 15, Refusal::Reserved),
        ([198, 51, 100, 0], 24, Refusal::Reserved),
        ([203, 0, 113, 0], 24, Refusal::Reserved),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Refusal> {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let seg = ip.segments();
    if ip.is_unspecified() {
        Some(Refusal::Unspecified)
    } else if ip.is_loopback() {
        Some(Refusal::Loopback)
    } else if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        Some(Refusal::Metadata)
    } else if seg[0] & 0xfe00 == 0xfc00 || seg[0] & 0xffc0 == 0xfec0 {
        Some(Refusal::Private)
    } else if seg[0] & 0xffc0 == 0xfe80 {
        Some(Refusal::LinkLocal)
    } else if seg[0] & 0xff00 == 0xff00 {
        Some(Refusal::Multicast)
    } else if seg[0] == 0x2001 && seg[1] == 0x0db8 || seg[..6] == [0; 6] || seg[0] == 0x0100 {
        // Documentation, IPv4-compatible (deprecated), discard-only.
        Some(Refusal::Reserved)
    } else {
        None
    }
}

/// The IPv4 address inside a v4-mapped, NAT64 or 6to4 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let o = ip.octets();
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else if seg[0] == 0x2002 {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(s: &str) -> Option<Refusal> {
        classify(s.parse().expect("ip"))
    }

    #[test]
    fn inside_addresses_are_refused_v4() {
        for (ip, r) in [
            ("0.0.0.0", Refusal::Unspecified),
            ("127.0.0.1", Refusal::Loopback),
            ("127.255.1.2", Refusal::Loopback),
            ("10.1.2.3", Refusal::Private),
            ("172.16.0.1", Refusal::Private),
            ("172.31.255.255", Refusal::Private),
            ("192.168.1.1", Refusal::Private),
            ("169.254.169.254", Refusal::Metadata),
            ("169.254.1.1", Refusal::LinkLocal),
            ("100.64.0.1", Refusal::SharedCgnat),
            ("100.127.255.254", Refusal::SharedCgnat),
            ("224.0.0.1", Refusal::Multicast),
            ("239.255.255.250", Refusal::Multicast),
            ("255.255.255.255", Refusal::Reserved),
            ("192.0.2.1", Refusal::Reserved),
        ] {
            assert_eq!(why(ip), Some(r), "{ip}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "151.101.0.223",
            "2606:4700::6810:84e5",
            "2a04:4e42::223",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(why(ip), None, "{ip}");
        }
    }

    #[test]
    fn inside_addresses_are_refused_v6_and_embedded_v4() {
        for (ip, r) in [
            ("::", Refusal::Unspecified),
            ("::1", Refusal::Loopback),
            ("fd12:3456::1", Refusal::Private),
            ("fc00::1", Refusal::Private),
            ("fec0::1", Refusal::Private),
            ("fe80::1", Refusal::LinkLocal),
            ("ff02::1", Refusal::Multicast),
            ("fd00:ec2::254", Refusal::Metadata),
            ("2001:db8::1", Refusal::Reserved),
            ("::ffff:127.0.0.1", Refusal::Loopback),
            ("::ffff:169.254.169.254", Refusal::Metadata),
            ("::ffff:10.0.0.1", Refusal::Private),
            ("64:ff9b::a00:1", Refusal::Private),
            ("2002:7f00:1::", Refusal::Loopback),
            ("::127.0.0.1", Refusal::Reserved),
        ] {
            assert_eq!(why(ip), Some(r), "{ip}");
        }
    }
}
