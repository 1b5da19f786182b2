//! Egress policy of a public exit: which destinations it may dial.
//!
//! A public exit dials whatever host a `CONNECT` names (`PROTOCOL.md`,
//! "Public exits"). Without a policy anyone on Nostr could make it reach its
//! own loopback services, its LAN, its cloud metadata endpoint
//! (`169.254.169.254`) and so on. [`EgressPolicy`] refuses those special
//! ranges by default (list below), lets the operator allow some back
//! (`allow_nets`), deny more (`deny_nets`) and restrict ports
//! (`allow_ports`).
//!
//! Names are resolved **at the exit** by [`EgressPolicy::resolve`], which
//! checks every address a name resolves to and returns the ones to dial:
//! the caller must dial exactly those (never the name again), so that a
//! name cannot be re-pointed inside between the check and the dial (DNS
//! rebinding).
//!
//! # Ranges refused by default
//!
//! Unless `allow_nets` matches, these are refused; the refusal's `why`
//! names the range (IANA special-purpose registries, RFC 6890):
//!
//! | IPv4 | | IPv6 | |
//! |---|---|---|---|
//! | `0.0.0.0/8` | "this network" (RFC 1122) | `::/128` | unspecified |
//! | `127.0.0.0/8` | loopback | `::1/128` | loopback |
//! | `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` | private (RFC 1918) | `fc00::/7` | unique local (RFC 4193) |
//! | `100.64.0.0/10` | shared / CGNAT (RFC 6598) | `fe80::/10` | link-local |
//! | `169.254.0.0/16` | link-local (RFC 3927) | `fec0::/10` | site-local (deprecated, RFC 3879) |
//! | `192.0.0.0/24` | IETF protocol assignments | `ff00::/8` | multicast |
//! | `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24` | documentation (RFC 5737) | `2001:db8::/32`, `3fff::/20` | documentation (RFC 3849, RFC 9637) |
//! | `198.18.0.0/15` | benchmarking (RFC 2544) | `100::/64` | discard-only (RFC 6666) |
//! | `224.0.0.0/4` | multicast | `::/96` | IPv4-compatible (deprecated, RFC 4291) |
//! | `240.0.0.0/4` | reserved | `64:ff9b:1::/48` | local-use IPv4/IPv6 translation (RFC 8215) |
//! | `255.255.255.255/32` | limited broadcast | | |
//!
//! IPv4-mapped (`::ffff:0:0/96`) and NAT64-translated (`64:ff9b::/96`,
//! RFC 6052) IPv6 addresses are judged by the IPv4 address they embed, so
//! `::ffff:127.0.0.1` is refused as loopback; `allow_nets` and `deny_nets`
//! match either form.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::protocol::ErrorReason;

/// An IPv4 or IPv6 network in CIDR form (`10.0.0.0/8`, `2001:db8::/32`), as
/// `allow_nets` and `deny_nets` hold them. Read them with [`parse_net`],
/// which takes a bare address as a single host and clears host bits.
pub use ipnet::IpNet;

/// Why a string is not a network for [`parse_net`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetParseError {
    /// The part before `/` is not an IPv4 or IPv6 address.
    #[error("`{0}` is not an IP address")]
    BadAddress(String),
    /// The part after `/` is not a number within the family's bit width.
    #[error("`{prefix}` is not a prefix length for {family} (0..={max})")]
    BadPrefix {
        /// The prefix text as given.
        prefix: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// Largest prefix length of the family (32 or 128).
        max: u8,
    },
}

/// Parses a network in CIDR form: `10.0.0.0/8`, `2001:db8::/32`.
///
/// Surrounding whitespace is ignored; a bare address is a single host (`/32`
/// for IPv4, `/128` for IPv6); the prefix length is decimal digits only;
/// host bits below the prefix are cleared (`192.168.1.7/24` is
/// `192.168.1.0/24`), so that the network displays as what it matches.
/// Unlike [`IpNet`]'s own `FromStr`, which needs the prefix and keeps host
/// bits.
///
/// # Errors
///
/// [`IpNetParseError::BadAddress`] or [`IpNetParseError::BadPrefix`].
pub fn parse_net(s: &str) -> Result<IpNet, IpNetParseError> {
    let s = s.trim();
    let (addr_text, prefix_text) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| IpNetParseError::BadAddress(addr_text.to_owned()))?;
    let (family, max) = match addr {
        IpAddr::V4(_) => ("IPv4", 32u8),
        IpAddr::V6(_) => ("IPv6", 128u8),
    };
    let bad_prefix = |p: &str| IpNetParseError::BadPrefix {
        prefix: p.to_owned(),
        family,
        max,
    };
    let prefix_len = match prefix_text {
        None => max,
        Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(bad_prefix(p))
        }
        Some(p) => p.parse::<u8>().map_err(|_| bad_prefix(p))?,
    };
    IpNet::new(addr, prefix_len)
        .map(|net| net.trunc())
        .map_err(|_| bad_prefix(prefix_text.unwrap_or_default()))
}

/// Which destinations a public exit may dial.
///
/// [`EgressPolicy::default`] refuses the special ranges listed in the
/// [module docs](self) and allows every other address on every port: the
/// right default for a public exit. A private-service exit that dials its
/// one configured backend (often on loopback) does not need a policy for it.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Networks allowed even though they lie in a range refused by default
    /// (for example the exit's own backend at `127.0.0.1/32`).
    pub allow_nets: Vec<IpNet>,
    /// Networks always refused; they win over `allow_nets`.
    pub deny_nets: Vec<IpNet>,
    /// Destination ports allowed; empty allows every port (except 0). Applies
    /// to every address, including those in `allow_nets`.
    pub allow_ports: Vec<u16>,
}

/// Why a destination is refused, or could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The address is in `deny_nets` or in a range refused by default.
    #[error("destination {addr} is not allowed: {why}")]
    NotAllowed {
        /// The refused address and port, as resolved.
        addr: SocketAddr,
        /// The range that refuses it, e.g. `"loopback (127.0.0.0/8)"`, or
        /// `"in deny_nets"`.
        why: &'static str,
    },
    /// The port is not in `allow_ports` (or is 0).
    #[error("destination port {0} is not allowed")]
    PortNotAllowed(u16),
    /// Resolving the host name failed.
    #[error("cannot resolve `{host}`: {source}")]
    Resolve {
        /// The host name as given.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The host name resolved to no address at all.
    #[error("`{0}` resolves to no address")]
    NoAddress(String),
}

impl PolicyError {
    /// The v2 `ERROR` reason to send the entry for this error:
    /// `not-allowed` for a refusal, `host-unreachable` for a resolution
    /// failure.
    pub fn reason(&self) -> ErrorReason {
        match self {
            Self::NotAllowed { .. } | Self::PortNotAllowed(_) => ErrorReason::NotAllowed,
            Self::Resolve { .. } | Self::NoAddress(_) => ErrorReason::HostUnreachable,
        }
    }
}

/// `why` of an address refused by `deny_nets`.
const WHY_DENIED: &str = "in deny_nets";

/// `a.b.c.d/len`, for the tables below (a typo in them fails the build).
const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

/// `s0:s1:s2::/len`, for the tables below.
const fn v6(s0: u16, s1: u16, s2: u16, len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(s0, s1, s2, 0, 0, 0, 0, 0), len)
}

/// IPv4 ranges refused by default, each with why.
/// Narrower ranges come before the wider ones that contain them.
const SPECIAL_V4: &[(Ipv4Net, &str)] = &[
    (
        v4(255, 255, 255, 255, 32),
        "limited broadcast (255.255.255.255/32)",
    ),
    (v4(0, 0, 0, 0, 8), "\"this network\" (0.0.0.0/8, RFC 1122)"),
    (v4(127, 0, 0, 0, 8), "loopback (127.0.0.0/8)"),
    (v4(10, 0, 0, 0, 8), "private (10.0.0.0/8, RFC 1918)"),
    (v4(172, 16, 0, 0, 12), "private (172.16.0.0/12, RFC 1918)"),
    (v4(192, 168, 0, 0, 16), "private (192.168.0.0/16, RFC 1918)"),
    (
        v4(100, 64, 0, 0, 10),
        "shared address space / CGNAT (100.64.0.0/10, RFC 6598)",
    ),
    (
        v4(169, 254, 0, 0, 16),
        "link-local (169.254.0.0/16, RFC 3927)",
    ),
    (
        v4(192, 0, 0, 0, 24),
        "IETF protocol assignments (192.0.0.0/24, RFC 6890)",
    ),
    (
        v4(192, 0, 2, 0, 24),
        "documentation (192.0.2.0/24, RFC 5737)",
    ),
    (
        v4(198, 51, 100, 0, 24),
        "documentation (198.51.100.0/24, RFC 5737)",
    ),
    (
        v4(203, 0, 113, 0, 24),
        "documentation (203.0.113.0/24, RFC 5737)",
    ),
    (
        v4(198, 18, 0, 0, 15),
        "benchmarking (198.18.0.0/15, RFC 2544)",
    ),
    (v4(224, 0, 0, 0, 4), "multicast (224.0.0.0/4)"),
    (v4(240, 0, 0, 0, 4), "reserved (240.0.0.0/4)"),
];

/// IPv6 ranges refused by default, each with why.
/// Narrower ranges come before the wider ones that contain them.
/// IPv4-mapped and NAT64 addresses never reach this table (see
/// [`embedded_v4`]).
const SPECIAL_V6: &[(Ipv6Net, &str)] = &[
    (v6(0, 0, 0, 128), "unspecified (::/128)"),
    (
        Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128),
        "loopback (::1/128)",
    ),
    (
        v6(0, 0, 0, 96),
        "IPv4-compatible, deprecated (::/96, RFC 4291)",
    ),
    (
        v6(0x64, 0xff9b, 1, 48),
        "local-use IPv4/IPv6 translation (64:ff9b:1::/48, RFC 8215)",
    ),
    (v6(0x100, 0, 0, 64), "discard-only (100::/64, RFC 6666)"),
    (
        v6(0x2001, 0xdb8, 0, 32),
        "documentation (2001:db8::/32, RFC 3849)",
    ),
    (v6(0x3fff, 0, 0, 20), "documentation (3fff::/20, RFC 9637)"),
    (v6(0xfc00, 0, 0, 7), "unique local (fc00::/7, RFC 4193)"),
    (v6(0xfe80, 0, 0, 10), "link-local (fe80::/10)"),
    (
        v6(0xfec0, 0, 0, 10),
        "site-local, deprecated (fec0::/10, RFC 3879)",
    ),
    (v6(0xff00, 0, 0, 8), "multicast (ff00::/8)"),
];

/// The IPv4 address an IPv6 address stands for, if it is IPv4-mapped
/// (`::ffff:a.b.c.d`) or NAT64-translated with the well-known prefix
/// (`64:ff9b::a.b.c.d`, RFC 6052).
fn embedded_v4(addr: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(addr);
    let prefix = bits >> 32;
    // Truncation keeps exactly the low 32 bits: the embedded address.
    let v4 = Ipv4Addr::from(bits as u32);
    if prefix == 0xffff || prefix == 0x0064_ff9b_0000_0000_0000_0000 {
        Some(v4)
    } else {
        None
    }
}

/// The range refused by default that contains `ip`, if any.
fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => SPECIAL_V4
            .iter()
            .find(|(net, _)| net.contains(&a))
            .map(|(_, why)| *why),
        IpAddr::V6(a) => match embedded_v4(a) {
            Some(v4) => special_range(IpAddr::V4(v4)),
            None => SPECIAL_V6
                .iter()
                .find(|(net, _)| net.contains(&a))
                .map(|(_, why)| *why),
        },
    }
}

impl EgressPolicy {
    /// Whether any of `nets` contains `ip` or the IPv4 address it embeds.
    fn matches(nets: &[IpNet], ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(a) => embedded_v4(a).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        nets.iter()
            .any(|n| n.contains(&ip) || embedded.is_some_and(|e| n.contains(&e)))
    }

    /// Checks one resolved address and port.
    ///
    /// In order: an address in `deny_nets` is refused; one in `allow_nets`
    /// skips the default refusal; otherwise an address in a special range
    /// (module docs) is refused; finally the port must be in `allow_ports`
    /// (when that is not empty) and never 0. IPv4-mapped and NAT64 addresses
    /// are judged by the IPv4 address they embed.
    ///
    /// # Errors
    ///
    /// [`PolicyError::NotAllowed`] naming the range, or
    /// [`PolicyError::PortNotAllowed`].
    pub fn check(&self, addr: SocketAddr) -> Result<(), PolicyError> {
        let ip = addr.ip();
        if Self::matches(&self.deny_nets, ip) {
            return Err(PolicyError::NotAllowed {
                addr,
                why: WHY_DENIED,
            });
        }
        if !Self::matches(&self.allow_nets, ip) {
            if let Some(why) = special_range(ip) {
                return Err(PolicyError::NotAllowed { addr, why });
            }
        }
        self.check_port(addr.port())
    }

    /// Checks only the port: not 0, and in `allow_ports` unless that is empty.
    fn check_port(&self, port: u16) -> Result<(), PolicyError> {
        if port == 0 || !(self.allow_ports.is_empty() || self.allow_ports.contains(&port)) {
            return Err(PolicyError::PortNotAllowed(port));
        }
        Ok(())
    }

    /// Resolves `host:port` at the exit and checks every address it gives.
    ///
    /// `host` is a DNS name, an IPv4 literal or an IPv6 literal with or
    /// without brackets (`[::1]`); a literal needs no lookup. Names go
    /// through the system resolver ([`tokio::net::lookup_host`]); the caller
    /// bounds the time with a timeout if it wants one. The port is checked
    /// before any lookup. If **any** resolved address is refused the whole
    /// name is refused, so a name cannot smuggle an inside address among
    /// public ones.
    ///
    /// Returns the addresses to dial, in the resolver's order, without
    /// duplicates. Dial exactly these, never the name again (DNS rebinding).
    ///
    /// # Errors
    ///
    /// [`PolicyError::PortNotAllowed`], [`PolicyError::Resolve`],
    /// [`PolicyError::NoAddress`], or [`PolicyError::NotAllowed`] for the
    /// first refused address.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, PolicyError> {
        self.check_port(port)?;
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            let addr = SocketAddr::new(ip, port);
            self.check(addr)?;
            return Ok(vec![addr]);
        }
        if host.is_empty() {
            return Err(PolicyError::NoAddress(String::new()));
        }
        let resolved = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| PolicyError::Resolve {
                host: host.to_owned(),
                source,
            })?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in resolved {
            self.check(addr)?;
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(PolicyError::NoAddress(host.to_owned()));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        parse_net(s).expect("test network parses")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address parses")
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().expect("test socket address parses")
    }

    fn why(policy: &EgressPolicy, addr: &str) -> Option<&'static str> {
        match policy.check(sock(addr)) {
            Ok(()) => None,
            Err(PolicyError::NotAllowed { why, .. }) => Some(why),
            Err(e) => panic!("unexpected error for {addr}: {e}"),
        }
    }

    #[test]
    fn parses_networks() {
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("192.168.1.7/24").to_string(), "192.168.1.0/24");
        assert_eq!(net("1.2.3.4").to_string(), "1.2.3.4/32");
        assert_eq!(net("::1").to_string(), "::1/128");
        assert_eq!(net("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(net("0.0.0.0/0").prefix_len(), 0);
        assert!(net("0.0.0.0/0").contains(&ip("8.8.8.8")));
        assert!(net("::/0").contains(&ip("2606:4700::1")));
        assert!(!net("::/0").contains(&ip("8.8.8.8")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "x/8",
            "1.2.3.4/+8",
        ] {
            assert!(parse_net(bad).is_err(), "{bad:?} parsed");
        }
        assert!(IpNet::new(ip("10.0.0.0"), 33).is_err());
    }

    #[test]
    fn refuses_special_ipv4_ranges() {
        let p = EgressPolicy::default();
        let cases = [
            ("0.0.0.0:80", "this network"),
            ("0.1.2.3:80", "this network"),
            ("127.0.0.1:80", "loopback"),
            ("127.255.0.9:80", "loopback"),
            ("10.1.2.3:80", "10.0.0.0/8"),
            ("172.16.0.1:80", "172.16.0.0/12"),
            ("172.31.255.255:80", "172.16.0.0/12"),
            ("192.168.0.1:80", "192.168.0.0/16"),
            ("100.64.0.1:80", "CGNAT"),
            ("100.127.255.254:80", "CGNAT"),
            ("169.254.169.254:80", "link-local"),
            ("192.0.0.8:80", "IETF protocol assignments"),
            ("192.0.2.1:80", "documentation"),
            ("198.51.100.1:80", "documentation"),
            ("203.0.113.1:80", "documentation"),
            ("198.18.0.1:80", "benchmarking"),
            ("198.19.255.1:80", "benchmarking"),
            ("224.0.0.1:80", "multicast"),
            ("239.255.255.250:80", "multicast"),
            ("240.0.0.1:80", "reserved"),
            ("255.255.255.254:80", "reserved"),
            ("255.255.255.255:80", "broadcast"),
        ];
        for (addr, expected) in cases {
            let got = why(&p, addr).unwrap_or_else(|| panic!("{addr} allowed"));
            assert!(got.contains(expected), "{addr}: {got}");
        }
        assert!(why(&p, "10.0.0.1:80").unwrap().contains("RFC 1918"));
    }

    #[test]
    fn allows_public_ipv4_next_to_special_ranges() {
        let p = EgressPolicy::default();
        for addr in [
            "1.1.1.1:443",
            "8.8.8.8:53",
            "9.255.255.255:80",
            "11.0.0.1:80",
            "100.63.255.255:80",
            "100.128.0.1:80",
            "126.255.255.255:80",
            "128.0.0.1:80",
            "169.253.255.255:80",
            "172.15.255.255:80",
            "172.32.0.0:80",
            "192.0.1.1:80",
            "192.167.255.255:80",
            "192.169.0.0:80",
            "198.17.255.255:80",
            "198.20.0.0:80",
            "223.255.255.255:80",
        ] {
            assert_eq!(why(&p, addr), None, "{addr} refused");
        }
    }

    #[test]
    fn refuses_special_ipv6_ranges() {
        let p = EgressPolicy::default();
        let cases = [
            ("[::]:80", "unspecified"),
            ("[::1]:80", "loopback (::1/128)"),
            ("[::7f00:1]:80", "IPv4-compatible"),
            ("[fc00::1]:80", "RFC 4193"),
            ("[fd12:3456::1]:80", "RFC 4193"),
            ("[fe80::1]:80", "link-local"),
            ("[febf::1]:80", "link-local"),
            ("[fec0::1]:80", "site-local"),
            ("[ff02::1]:80", "multicast"),
            ("[2001:db8::1]:80", "documentation"),
            ("[3fff::1]:80", "documentation"),
            ("[100::1]:80", "discard"),
            ("[64:ff9b:1::a00:1]:80", "translation"),
        ];
        for (addr, expected) in cases {
            let got = why(&p, addr).unwrap_or_else(|| panic!("{addr} allowed"));
            assert!(got.contains(expected), "{addr}: {got}");
        }
        for addr in [
            "[2606:4700:4700::1111]:443",
            "[2001:4860:4860::8888]:53",
            "[100:0:0:1::1]:80",
            "[2001:db9::1]:80",
            "[fbff::1]:80",
        ] {
            assert_eq!(why(&p, addr), None, "{addr} refused");
        }
    }

    #[test]
    fn judges_mapped_and_translated_ipv6_by_the_ipv4_inside() {
        let p = EgressPolicy::default();
        assert!(why(&p, "[::ffff:127.0.0.1]:80")
            .unwrap()
            .contains("loopback"));
        assert!(why(&p, "[::ffff:10.0.0.1]:80")
            .unwrap()
            .contains("RFC 1918"));
        assert!(why(&p, "[64:ff9b::192.168.1.1]:80")
            .unwrap()
            .contains("RFC 1918"));
        assert!(why(&p, "[64:ff9b::169.254.169.254]:80")
            .unwrap()
            .contains("link-local"));
        assert_eq!(why(&p, "[::ffff:1.1.1.1]:80"), None);
        assert_eq!(why(&p, "[64:ff9b::8.8.8.8]:80"), None);

        // allow_nets and deny_nets written as IPv4 match the mapped form too.
        let allow = EgressPolicy {
            allow_nets: vec![net("127.0.0.0/8")],
            ..Default::default()
        };
        assert_eq!(why(&allow, "[::ffff:127.0.0.1]:80"), None);
        let deny = EgressPolicy {
            deny_nets: vec![net("1.1.1.0/24")],
            ..Default::default()
        };
        assert_eq!(why(&deny, "[::ffff:1.1.1.1]:80"), Some(WHY_DENIED));
        assert_eq!(why(&deny, "[64:ff9b::1.1.1.1]:80"), Some(WHY_DENIED));
    }

    #[test]
    fn allow_nets_override_the_default_refusal() {
        let p = EgressPolicy {
            allow_nets: vec![net("10.1.0.0/16"), net("::1")],
            ..Default::default()
        };
        assert_eq!(why(&p, "10.1.2.3:8080"), None);
        assert_eq!(why(&p, "[::1]:8080"), None);
        assert!(why(&p, "10.2.0.1:8080").is_some());
        assert!(why(&p, "127.0.0.1:8080").is_some());
    }

    #[test]
    fn deny_nets_win_over_allow_nets() {
        let p = EgressPolicy {
            allow_nets: vec![net("10.0.0.0/8")],
            deny_nets: vec![net("10.9.0.0/16"), net("8.8.8.8")],
            ..Default::default()
        };
        assert_eq!(why(&p, "10.1.0.1:80"), None);
        assert_eq!(why(&p, "10.9.0.1:80"), Some(WHY_DENIED));
        assert_eq!(why(&p, "8.8.8.8:53"), Some(WHY_DENIED));
        assert_eq!(why(&p, "8.8.4.4:53"), None);
    }

    #[test]
    fn restricts_ports() {
        let p = EgressPolicy {
            allow_ports: vec![80, 443],
            allow_nets: vec![net("127.0.0.1")],
            ..Default::default()
        };
        assert!(p.check(sock("1.1.1.1:443")).is_ok());
        assert!(matches!(
            p.check(sock("1.1.1.1:22")),
            Err(PolicyError::PortNotAllowed(22))
        ));
        // Ports apply to allowed networks as well.
        assert!(p.check(sock("127.0.0.1:80")).is_ok());
        assert!(matches!(
            p.check(sock("127.0.0.1:6379")),
            Err(PolicyError::PortNotAllowed(6379))
        ));
        // No port list: every port but 0.
        let any = EgressPolicy::default();
        assert!(any.check(sock("1.1.1.1:22")).is_ok());
        assert!(matches!(
            any.check(sock("1.1.1.1:0")),
            Err(PolicyError::PortNotAllowed(0))
        ));
    }

    #[test]
    fn errors_map_to_protocol_reasons() {
        let p = EgressPolicy::default();
        let err = p.check(sock("127.0.0.1:80")).unwrap_err();
        assert_eq!(err.reason(), ErrorReason::NotAllowed);
        assert!(err.to_string().contains("127.0.0.1:80"), "{err}");
        assert_eq!(
            PolicyError::NoAddress("x".into()).reason(),
            ErrorReason::HostUnreachable
        );
    }

    // The resolver tests below use only literals and `localhost` (from
    // /etc/hosts): no packet leaves the machine, and nothing is dialled.

    #[tokio::test]
    async fn resolve_refuses_localhost() {
        let err = EgressPolicy::default()
            .resolve("localhost", 80)
            .await
            .unwrap_err();
        match err {
            PolicyError::NotAllowed { addr, why } => {
                assert!(addr.ip().is_loopback(), "{addr}");
                assert!(why.contains("loopback"), "{why}");
            }
            other => panic!("expected a refusal, got {other}"),
        }
    }

    #[tokio::test]
    async fn resolve_literals_without_lookup() {
        let p = EgressPolicy {
            allow_nets: vec![net("127.0.0.0/8"), net("::1")],
            ..Default::default()
        };
        assert_eq!(
            p.resolve("127.0.0.1", 80).await.unwrap(),
            vec![sock("127.0.0.1:80")]
        );
        assert_eq!(
            p.resolve("[::1]", 443).await.unwrap(),
            vec![sock("[::1]:443")]
        );
        assert_eq!(
            p.resolve("::1", 443).await.unwrap(),
            vec![sock("[::1]:443")]
        );
        let default = EgressPolicy::default();
        assert!(matches!(
            default.resolve("127.0.0.1", 80).await,
            Err(PolicyError::NotAllowed { .. })
        ));
        assert!(matches!(
            default.resolve("10.0.0.1", 80).await,
            Err(PolicyError::NotAllowed { .. })
        ));
        assert!(matches!(
            default.resolve("", 80).await,
            Err(PolicyError::NoAddress(_))
        ));
    }

    #[tokio::test]
    async fn resolve_checks_the_port_before_looking_up() {
        let p = EgressPolicy {
            allow_ports: vec![443],
            ..Default::default()
        };
        // A name that would need a lookup is refused on its port first.
        assert!(matches!(
            p.resolve("example.invalid", 25).await,
            Err(PolicyError::PortNotAllowed(25))
        ));
    }
}
