//! The server side of a SOCKS5 handshake without I/O: RFC 1928 (SOCKS
//! Protocol Version 5) with RFC 1929 username/password authentication.
//!
//! [`Handshake`] is fed the bytes the client sent so far and answers with
//! the next [`Step`]: bytes to send back (the method choice, the
//! authentication status), or the address the client asked for, each with
//! how many input bytes it used. `Ok(None)` means more input is needed.
//! Only `CONNECT` is supported. The caller opens the stream and answers with
//! [`reply`]; input past the request is the client's first stream bytes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::credentials::Credentials;

/// SOCKS protocol version byte (RFC 1928 §3).
const SOCKS_VERSION: u8 = 0x05;
/// Version byte of the username/password sub-negotiation (RFC 1929 §2).
const AUTH_VERSION: u8 = 0x01;
/// Method: no authentication required (RFC 1928 §3).
const METHOD_NO_AUTH: u8 = 0x00;
/// Method: username/password (RFC 1928 §3, RFC 1929).
const METHOD_USER_PASS: u8 = 0x02;
/// Method reply: no acceptable methods (RFC 1928 §3).
const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;
/// Sub-negotiation status: success (RFC 1929 §2).
const AUTH_SUCCESS: u8 = 0x00;
/// Sub-negotiation status: failure (RFC 1929 §2).
const AUTH_FAILURE: u8 = 0x01;
/// Command: CONNECT (RFC 1928 §4).
const CMD_CONNECT: u8 = 0x01;
/// Address type: IPv4, 4 octets (RFC 1928 §5).
const ATYP_IPV4: u8 = 0x01;
/// Address type: domain name, one length octet then the name (RFC 1928 §5).
const ATYP_DOMAIN: u8 = 0x03;
/// Address type: IPv6, 16 octets (RFC 1928 §5).
const ATYP_IPV6: u8 = 0x04;

/// The address a SOCKS5 client asked to connect to (RFC 1928 §4–5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAddr {
    /// A domain name (ATYP 0x03) as sent, which may be an NWS name, and a port.
    /// Not resolved and not lower-cased.
    Domain(String, u16),
    /// An IPv4 (ATYP 0x01) or IPv6 (ATYP 0x04) address and port.
    Ip(SocketAddr),
}

impl TargetAddr {
    /// The host part: the domain name, or the IP address in text form
    /// (IPv6 without brackets, e.g. `::1`).
    pub fn host(&self) -> String {
        match self {
            Self::Domain(domain, _) => domain.clone(),
            Self::Ip(addr) => addr.ip().to_string(),
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Domain(_, port) => *port,
            Self::Ip(addr) => addr.port(),
        }
    }
}

impl fmt::Display for TargetAddr {
    /// `host:port`, or `[v6]:port` for IPv6 addresses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Domain(domain, port) => write!(f, "{domain}:{port}"),
            Self::Ip(addr) => write!(f, "{addr}"),
        }
    }
}

/// Reply codes, the `REP` field of a SOCKS5 reply (RFC 1928 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyCode {
    /// 0x00: succeeded.
    Succeeded = 0x00,
    /// 0x01: general SOCKS server failure.
    GeneralFailure = 0x01,
    /// 0x02: connection not allowed by ruleset.
    ConnectionNotAllowed = 0x02,
    /// 0x03: network unreachable.
    NetworkUnreachable = 0x03,
    /// 0x04: host unreachable.
    HostUnreachable = 0x04,
    /// 0x05: connection refused.
    ConnectionRefused = 0x05,
    /// 0x06: TTL expired.
    TtlExpired = 0x06,
    /// 0x07: command not supported.
    CommandNotSupported = 0x07,
    /// 0x08: address type not supported.
    AddressTypeNotSupported = 0x08,
}

/// The 10 bytes of a SOCKS5 reply (RFC 1928 §6) with `code`, `ATYP` IPv4,
/// `BND.ADDR` 0.0.0.0 and `BND.PORT` 0 (the entry has no meaningful bound
/// address): `05 REP 00 01 00 00 00 00 00 00`.
pub fn reply(code: ReplyCode) -> [u8; 10] {
    [SOCKS_VERSION, code as u8, 0x00, ATYP_IPV4, 0, 0, 0, 0, 0, 0]
}

/// Why a SOCKS5 handshake failed. Where the protocol has a way to say so,
/// the [`Failure`] carries the bytes that tell the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Socks5Error {
    /// The client's first byte is not the SOCKS version 5 (it may speak SOCKS4 or HTTP).
    #[error("not a SOCKS5 client: version byte {version:#04x}")]
    NotSocks5 {
        /// The version byte the client sent.
        version: u8,
    },
    /// The client offered no method the server accepts (answered with method 0xFF).
    #[error("client offered no acceptable SOCKS5 authentication method")]
    NoAcceptableMethod,
    /// The username/password sub-negotiation did not start with version 0x01
    /// (RFC 1929; answered with status 0x01).
    #[error("bad username/password sub-negotiation version {0:#04x}")]
    BadAuthVersion(u8),
    /// The client's username or password is wrong (answered with status 0x01).
    #[error("SOCKS5 authentication failed")]
    AuthFailed,
    /// The client asked for a command other than CONNECT (answered with reply 0x07).
    #[error("SOCKS5 command {0:#04x} not supported (only CONNECT)")]
    CommandNotSupported(u8),
    /// The request used an unknown address type (answered with reply 0x08).
    #[error("SOCKS5 address type {0:#04x} not supported")]
    AddressTypeNotSupported(u8),
    /// The requested domain name is empty or not UTF-8 (answered with reply 0x01).
    #[error("SOCKS5 request has an empty or non-UTF-8 domain name")]
    BadDomain,
    /// The client's input ended before the handshake did.
    #[error("SOCKS5 I/O error: the client closed the connection mid-handshake")]
    Truncated,
}

/// A failed handshake: why, and what to send the client before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub error: Socks5Error,
    /// Bytes that tell the client, where the protocol has a way to.
    pub answer: Vec<u8>,
}

/// What the handshake does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes to the client, then feed it more input.
    Answer(Vec<u8>),
    /// The handshake is complete: the client asked for this address. The
    /// caller answers with [`reply`] once it knows the stream's fate.
    Request(TargetAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    Auth,
    Request,
    Done,
}

/// The server side of one SOCKS5 handshake. See the module docs.
#[derive(Debug)]
pub struct Handshake<'a> {
    credentials: Option<&'a Credentials>,
    phase: Phase,
}

impl<'a> Handshake<'a> {
    /// A handshake that requires `credentials` (username/password,
    /// compared in constant time), or no authentication when `None`.
    pub fn new(credentials: Option<&'a Credentials>) -> Self {
        Self {
            credentials,
            phase: Phase::Greeting,
        }
    }

    /// Takes the client's bytes not yet used (`input`) and returns the next
    /// step with how many of them it used, `Ok(None)` if a complete message
    /// is not there yet, or the failure. After [`Step::Request`] or a
    /// failure the handshake is over and returns `Ok(None)`.
    ///
    /// # Errors
    ///
    /// [`Failure`]: a [`Socks5Error`] and the bytes to send the client.
    pub fn step(&mut self, input: &[u8]) -> Result<Option<(Step, usize)>, Failure> {
        let result = match self.phase {
            Phase::Greeting => self.greeting(input),
            Phase::Auth => self.auth(input),
            Phase::Request => request(input).map(|r| r.map(|(t, n)| (Step::Request(t), n))),
            Phase::Done => Ok(None),
        };
        match &result {
            Ok(Some((Step::Request(_), _))) | Err(_) => self.phase = Phase::Done,
            _ => {}
        }
        result
    }

    /// Greeting and method selection (RFC 1928 §3).
    fn greeting(&mut self, input: &[u8]) -> Result<Option<(Step, usize)>, Failure> {
        let mut r = Reader::new(input);
        let Some(version) = r.byte() else {
            return Ok(None);
        };
        if version != SOCKS_VERSION {
            return Err(fail(Socks5Error::NotSocks5 { version }, &[]));
        }
        let Some(methods) = r.length_prefixed() else {
            return Ok(None);
        };
        let wanted = if self.credentials.is_some() {
            METHOD_USER_PASS
        } else {
            METHOD_NO_AUTH
        };
        if !methods.contains(&wanted) {
            return Err(fail(
                Socks5Error::NoAcceptableMethod,
                &[SOCKS_VERSION, METHOD_NONE_ACCEPTABLE],
            ));
        }
        self.phase = if self.credentials.is_some() {
            Phase::Auth
        } else {
            Phase::Request
        };
        Ok(Some((Step::Answer(vec![SOCKS_VERSION, wanted]), r.used())))
    }

    /// Username/password sub-negotiation (RFC 1929 §2).
    fn auth(&mut self, input: &[u8]) -> Result<Option<(Step, usize)>, Failure> {
        let mut r = Reader::new(input);
        let Some(version) = r.byte() else {
            return Ok(None);
        };
        if version != AUTH_VERSION {
            return Err(fail(
                Socks5Error::BadAuthVersion(version),
                &[AUTH_VERSION, AUTH_FAILURE],
            ));
        }
        let (Some(username), Some(password)) = (r.length_prefixed(), r.length_prefixed()) else {
            return Ok(None);
        };
        let matches = self
            .credentials
            .is_some_and(|c| c.matches(username, password));
        if !matches {
            return Err(fail(Socks5Error::AuthFailed, &[AUTH_VERSION, AUTH_FAILURE]));
        }
        self.phase = Phase::Request;
        Ok(Some((
            Step::Answer(vec![AUTH_VERSION, AUTH_SUCCESS]),
            r.used(),
        )))
    }
}

/// The client's request (RFC 1928 §4–5).
fn request(input: &[u8]) -> Result<Option<(TargetAddr, usize)>, Failure> {
    let mut r = Reader::new(input);
    let Some(&[version, command, _reserved, address_type]) = r.take(4) else {
        return Ok(None);
    };
    if version != SOCKS_VERSION {
        return Err(fail(Socks5Error::NotSocks5 { version }, &[]));
    }
    if command != CMD_CONNECT {
        return Err(fail(
            Socks5Error::CommandNotSupported(command),
            &reply(ReplyCode::CommandNotSupported),
        ));
    }
    let target = match address_type {
        ATYP_IPV4 => {
            let (Some(o), Some(port)) = (r.take(4), r.port()) else {
                return Ok(None);
            };
            let o: [u8; 4] = [o[0], o[1], o[2], o[3]];
            TargetAddr::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port))
        }
        ATYP_IPV6 => {
            let (Some(o), Some(port)) = (r.take(16), r.port()) else {
                return Ok(None);
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(o);
            TargetAddr::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        ATYP_DOMAIN => {
            let (Some(name), Some(port)) = (r.length_prefixed(), r.port()) else {
                return Ok(None);
            };
            match std::str::from_utf8(name) {
                Ok(domain) if !domain.is_empty() => TargetAddr::Domain(domain.to_string(), port),
                _ => {
                    return Err(fail(
                        Socks5Error::BadDomain,
                        &reply(ReplyCode::GeneralFailure),
                    ))
                }
            }
        }
        other => {
            return Err(fail(
                Socks5Error::AddressTypeNotSupported(other),
                &reply(ReplyCode::AddressTypeNotSupported),
            ))
        }
    };
    Ok(Some((target, r.used())))
}

fn fail(error: Socks5Error, answer: &[u8]) -> Failure {
    Failure {
        error,
        answer: answer.to_vec(),
    }
}

/// Reads fields off the front of a buffer; `None` when it runs out.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    /// One length octet and that many bytes.
    fn length_prefixed(&mut self) -> Option<&'a [u8]> {
        let n = self.byte()?;
        self.take(usize::from(n))
    }
    /// A port in network byte order.
    fn port(&mut self) -> Option<u16> {
        self.take(2).map(|p| u16::from_be_bytes([p[0], p[1]]))
    }
    fn used(&self) -> usize {
        self.pos
    }
}
