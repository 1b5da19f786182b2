//! `host:port` as streams name their destinations (a `CONNECT`'s
//! `destination`, an HTTP proxy request's authority, `entryPublicAddress`):
//! the one parser and printer every side uses.
//!
//! The host is a DNS name, an IPv4 literal, or an IPv6 literal in brackets
//! (`[::1]:80`, RFC 3986 §3.2.2); the port is decimal, 1 to 65535. An IPv6
//! literal without brackets is read up to its last colon (`::1:80` is host
//! `::1`, port 80), as the reference implementation's Go side accepts it.
//! Names are not validated here: that is the resolver's (exit) or the HTTP
//! parser's business.

use std::fmt;

/// Why a `host:port` text does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// The host part is empty.
    #[error("empty host in `{0}`")]
    EmptyHost(String),
    /// A `[` opens an IPv6 literal that no `]` closes.
    #[error("unterminated IPv6 literal in `{0}`")]
    UnterminatedIpv6(String),
    /// Something other than `:port` follows an IPv6 literal.
    #[error("junk after the IPv6 literal in `{0}`")]
    JunkAfterIpv6(String),
    /// There is no port, and none is implied.
    #[error("missing port in `{0}`")]
    MissingPort(String),
    /// The port is not a decimal number.
    #[error("port not a decimal number in `{0}`")]
    BadPort(String),
    /// The port is a number but not from 1 to 65535.
    #[error("port not from 1 to 65535 in `{0}`")]
    PortOutOfRange(String),
}

/// A destination: host (brackets removed from an IPv6 literal) and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// DNS name or IP literal, without brackets.
    pub host: String,
    /// TCP port, 1 to 65535.
    pub port: u16,
}

impl HostPort {
    /// A destination from its parts.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }

    /// Parses `host:port` (the port is required).
    ///
    /// # Errors
    ///
    /// Every [`AddrError`] but none other.
    pub fn parse(text: &str) -> Result<Self, AddrError> {
        Self::parse_with_default(text, None)
    }

    /// Parses `host[:port]`, taking `default_port` when the port is absent
    /// or empty (`None`: the port is required). Used for HTTP authorities
    /// (RFC 9110 §4.2: `http` URIs default to 80).
    ///
    /// # Errors
    ///
    /// [`AddrError`].
    pub fn parse_with_default(text: &str, default_port: Option<u16>) -> Result<Self, AddrError> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let close = rest
                .find(']')
                .ok_or_else(|| AddrError::UnterminatedIpv6(text.into()))?;
            let (host, after) = (&rest[..close], &rest[close + 1..]);
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(AddrError::JunkAfterIpv6(text.into())),
                },
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        if host.is_empty() {
            return Err(AddrError::EmptyHost(text.into()));
        }
        let port = match port.filter(|p| !p.is_empty()) {
            Some(p) if !p.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(AddrError::BadPort(text.into()))
            }
            Some(p) => parse_port(p).ok_or_else(|| AddrError::PortOutOfRange(text.into()))?,
            None => default_port.ok_or_else(|| AddrError::MissingPort(text.into()))?,
        };
        Ok(Self::new(host, port))
    }

    /// Whether the host is an IPv6 literal (it is printed in brackets).
    pub fn is_ipv6(&self) -> bool {
        self.host.contains(':')
    }
}

/// A decimal port from 1 to 65535 (digits only: no sign, no spaces).
fn parse_port(text: &str) -> Option<u16> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&p| p != 0)
}

impl fmt::Display for HostPort {
    /// `host:port`, with an IPv6 host in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ipv6() {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for HostPort {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_ipv4_and_bracketed_ipv6() {
        assert_eq!(
            HostPort::parse("example.org:443"),
            Ok(HostPort::new("example.org", 443))
        );
        assert_eq!(
            HostPort::parse("10.0.0.1:80"),
            Ok(HostPort::new("10.0.0.1", 80))
        );
        assert_eq!(HostPort::parse("[::1]:80"), Ok(HostPort::new("::1", 80)));
        assert_eq!(HostPort::parse("::1:80"), Ok(HostPort::new("::1", 80)));
    }

    #[test]
    fn refuses_what_is_not_host_and_port() {
        for bad in [
            "",
            ":80",
            "host",
            "host:",
            "host:0",
            "host:65536",
            "host:+80",
            "host: 80",
            "[::1",
            "[::1]x",
            "[]:80",
            "garbage",
        ] {
            assert!(HostPort::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_default_port_fills_a_missing_one() {
        assert_eq!(
            HostPort::parse_with_default("x.nostr", Some(80)),
            Ok(HostPort::new("x.nostr", 80))
        );
        assert_eq!(
            HostPort::parse_with_default("[::1]:", Some(80)),
            Ok(HostPort::new("::1", 80))
        );
        assert_eq!(
            HostPort::parse_with_default("x.nostr", None),
            Err(AddrError::MissingPort("x.nostr".into()))
        );
    }

    #[test]
    fn prints_what_it_parses() {
        for text in [
            "example.org:443",
            "[::1]:80",
            "[2001:db8::1]:8080",
            "1.2.3.4:1",
        ] {
            assert_eq!(HostPort::parse(text).unwrap().to_string(), text);
        }
    }
}
