//! SOCKS5 handshakes (RFC 1928, RFC 1929), checked against a reference
//! parser written straight from the RFCs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nws_protocol::credentials::Credentials;
use nws_protocol::socks5::{Handshake, Socks5Error, Step, TargetAddr};

/// The credentials used when the first input byte asks for authentication.
fn creds() -> Credentials {
    Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    }
}

/// What a handshake ends in, comparably.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Target(TargetAddr),
    Io,
    NotSocks5(u8),
    NoAcceptableMethod,
    BadAuthVersion(u8),
    AuthFailed,
    CommandNotSupported(u8),
    AddressTypeNotSupported(u8),
    BadDomain,
}

impl From<Result<TargetAddr, Socks5Error>> for Outcome {
    fn from(r: Result<TargetAddr, Socks5Error>) -> Self {
        match r {
            Ok(t) => Self::Target(t),
            Err(Socks5Error::Truncated) => Self::Io,
            Err(Socks5Error::NotSocks5 { version }) => Self::NotSocks5(version),
            Err(Socks5Error::NoAcceptableMethod) => Self::NoAcceptableMethod,
            Err(Socks5Error::BadAuthVersion(v)) => Self::BadAuthVersion(v),
            Err(Socks5Error::AuthFailed) => Self::AuthFailed,
            Err(Socks5Error::CommandNotSupported(c)) => Self::CommandNotSupported(c),
            Err(Socks5Error::AddressTypeNotSupported(a)) => Self::AddressTypeNotSupported(a),
            Err(Socks5Error::BadDomain) => Self::BadDomain,
        }
    }
}

/// Target `socks5_request`: bit 0 of the first byte turns credentials on,
/// the rest is what the client sends (read in sizes from the second byte).
pub fn socks5_request(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let credentials = (flags & 1 == 1).then(creds);
    let reads = match flags >> 1 {
        0 => Vec::new(),
        n => vec![usize::from(n)],
    };
    let (got, written, consumed) = run(rest, &reads, credentials.as_ref());
    let (want, want_written, want_consumed) = reference(rest, credentials.as_ref());
    assert_eq!(got, want, "outcome differs from the reference");
    assert_eq!(written, want_written, "bytes written differ");
    // A successful handshake uses exactly the client's messages: the rest is
    // the stream's first bytes. (After a failure the connection is closed,
    // so what was used does not matter.)
    if matches!(want, Outcome::Target(_)) {
        assert_eq!(consumed, want_consumed, "bytes consumed differ");
    }
}

/// Drives the sans-IO handshake the way the entry's socket side does, with
/// the client's bytes arriving in pieces of the sizes in `reads` (cycled;
/// empty: all at once): outcome, bytes answered, bytes the handshake used.
fn run(
    input: &[u8],
    reads: &[usize],
    credentials: Option<&Credentials>,
) -> (Outcome, Vec<u8>, usize) {
    let mut handshake = Handshake::new(credentials);
    let mut written = Vec::new();
    let (mut arrived, mut used, mut read) = (0usize, 0usize, 0usize);
    loop {
        match handshake.step(&input[used..arrived]) {
            Ok(Some((Step::Answer(bytes), n))) => {
                used += n;
                written.extend_from_slice(&bytes);
            }
            Ok(Some((Step::Request(target), n))) => {
                return (Outcome::Target(target), written, used + n);
            }
            Ok(None) => {
                if arrived == input.len() {
                    return (Outcome::Io, written, used);
                }
                let size = match reads {
                    [] => input.len(),
                    r => r[read % r.len()].max(1),
                };
                read += 1;
                arrived = arrived.saturating_add(size).min(input.len());
            }
            Err(failure) => {
                written.extend_from_slice(&failure.answer);
                return (Err(failure.error).into(), written, used);
            }
        }
    }
}

/// A byte reader that reports running out.
struct Cursor<'a>(&'a [u8], usize);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.0.get(self.1..self.1 + n)?;
        self.1 += n;
        Some(s)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
}

fn reply(code: u8) -> [u8; 10] {
    [5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// The handshake by the RFCs: outcome, bytes the server writes, bytes it reads.
fn reference(input: &[u8], credentials: Option<&Credentials>) -> (Outcome, Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut c = Cursor(input, 0);
    let outcome = (|| {
        let version = c.byte()?;
        if version != 5 {
            return Some(Outcome::NotSocks5(version));
        }
        let n = c.byte()?;
        let methods = c.take(usize::from(n))?;
        let wanted = if credentials.is_some() { 2 } else { 0 };
        if !methods.contains(&wanted) {
            out.extend_from_slice(&[5, 0xFF]);
            return Some(Outcome::NoAcceptableMethod);
        }
        out.extend_from_slice(&[5, wanted]);
        if let Some(creds) = credentials {
            let v = c.byte()?;
            if v != 1 {
                out.extend_from_slice(&[1, 1]);
                return Some(Outcome::BadAuthVersion(v));
            }
            let ulen = c.byte()?;
            let user = c.take(usize::from(ulen))?.to_vec();
            let plen = c.byte()?;
            let pass = c.take(usize::from(plen))?;
            if user != creds.username.as_bytes() || pass != creds.password.as_bytes() {
                out.extend_from_slice(&[1, 1]);
                return Some(Outcome::AuthFailed);
            }
            out.extend_from_slice(&[1, 0]);
        }
        let head = c.take(4)?;
        let (version, command, atyp) = (head[0], head[1], head[3]);
        if version != 5 {
            return Some(Outcome::NotSocks5(version));
        }
        if command != 1 {
            out.extend_from_slice(&reply(7));
            return Some(Outcome::CommandNotSupported(command));
        }
        let port = |c: &mut Cursor| c.take(2).map(|p| u16::from_be_bytes([p[0], p[1]]));
        Some(match atyp {
            1 => {
                let o: [u8; 4] = c.take(4)?.try_into().ok()?;
                let p = port(&mut c)?;
                Outcome::Target(TargetAddr::Ip(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(o)),
                    p,
                )))
            }
            4 => {
                let o: [u8; 16] = c.take(16)?.try_into().ok()?;
                let p = port(&mut c)?;
                Outcome::Target(TargetAddr::Ip(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(o)),
                    p,
                )))
            }
            3 => {
                let len = c.byte()?;
                let name = c.take(usize::from(len))?.to_vec();
                let p = port(&mut c)?;
                match String::from_utf8(name) {
                    Ok(d) if !d.is_empty() => Outcome::Target(TargetAddr::Domain(d, p)),
                    _ => {
                        out.extend_from_slice(&reply(1));
                        Outcome::BadDomain
                    }
                }
            }
            other => {
                out.extend_from_slice(&reply(8));
                Outcome::AddressTypeNotSupported(other)
            }
        })
    })()
    .unwrap_or(Outcome::Io);
    (outcome, out, c.1)
}
