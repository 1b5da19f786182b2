//! The server side of a SOCKS5 handshake: RFC 1928 (SOCKS Protocol
//! Version 5) with RFC 1929 username/password authentication.
//!
//! [`accept`] runs the handshake up to and including the client's request and
//! returns the address asked for; the caller then opens the stream and
//! answers with [`reply`]. Only `CONNECT` is supported. The handshake never
//! reads past the request, so bytes the client sends early (optimistic data)
//! stay in the stream for the caller.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
/// Command: CONNECT (RFC 1928 §4).
const CMD_CONNECT: u8 = 0x01;
/// Address type: IPv4, 4 octets (RFC 1928 §5).
const ATYP_IPV4: u8 = 0x01;
/// Address type: domain name, one length octet then the name (RFC 1928 §5).
const ATYP_DOMAIN: u8 = 0x03;
/// Address type: IPv6, 16 octets (RFC 1928 §5).
const ATYP_IPV6: u8 = 0x04;

/// Credentials for SOCKS5 username/password authentication (RFC 1929) and
/// for HTTP `Proxy-Authorization: Basic` (RFC 7617). RFC 1929 carries each
/// field in at most 255 bytes, so longer values can never match over SOCKS5.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name, compared byte for byte.
    pub username: String,
    /// The password, compared byte for byte.
    pub password: String,
}

impl fmt::Debug for Credentials {
    /// Shows the user name; the password is redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Fresh random credentials: user `nws-` plus 8 hex characters, and a
    /// 32-character hex password (128 bits from the OS generator). An app
    /// starts its in-process proxy with these so that other apps on the
    /// device, which can reach loopback too, cannot use it.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut user = [0u8; 4];
        let mut pass = [0u8; 16];
        rand::rng().fill_bytes(&mut user);
        rand::rng().fill_bytes(&mut pass);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        Self {
            username: format!("nws-{}", hex(&user)),
            password: hex(&pass),
        }
    }

    /// Whether `username` and `password` (raw bytes as received) equal these
    /// credentials. The comparison takes the same time wherever the first
    /// difference is, so it does not reveal how much of a guess was right
    /// (lengths may still leak).
    pub fn matches(&self, username: &[u8], password: &[u8]) -> bool {
        // Evaluate both, without short-circuiting, so timing does not reveal
        // which field was wrong.
        let user_ok = constant_time_eq(self.username.as_bytes(), username);
        let pass_ok = constant_time_eq(self.password.as_bytes(), password);
        user_ok & pass_ok
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

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

/// Why a SOCKS5 handshake failed. Where the protocol has a way to say so,
/// [`accept`] has already told the client before returning the error.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    /// Reading from or writing to the client failed, or it closed the connection mid-handshake.
    #[error("SOCKS5 I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The client's first byte is not the SOCKS version 5 (it may speak SOCKS4 or HTTP).
    #[error("not a SOCKS5 client: version byte {version:#04x}")]
    NotSocks5 {
        /// The version byte the client sent.
        version: u8,
    },
    /// The client offered no method the server accepts; it was sent method 0xFF.
    #[error("client offered no acceptable SOCKS5 authentication method")]
    NoAcceptableMethod,
    /// The username/password sub-negotiation did not start with version 0x01 (RFC 1929).
    #[error("bad username/password sub-negotiation version {0:#04x}")]
    BadAuthVersion(u8),
    /// The client's username or password is wrong; it was sent status 0x01.
    #[error("SOCKS5 authentication failed")]
    AuthFailed,
    /// The client asked for a command other than CONNECT; it was sent reply 0x07.
    #[error("SOCKS5 command {0:#04x} not supported (only CONNECT)")]
    CommandNotSupported(u8),
    /// The request used an unknown address type; it was sent reply 0x08.
    #[error("SOCKS5 address type {0:#04x} not supported")]
    AddressTypeNotSupported(u8),
    /// The requested domain name is empty or not UTF-8; it was sent reply 0x01.
    #[error("SOCKS5 request has an empty or non-UTF-8 domain name")]
    BadDomain,
}

/// Runs the server side of a SOCKS5 handshake on `stream` and returns the
/// address the client asked for (RFC 1928, RFC 1929).
///
/// 1. Greeting: `VER NMETHODS METHODS…`. The server picks 0x02
///    (username/password) if `credentials` is `Some`, else 0x00 (no
///    authentication); if the client does not offer it, the server answers
///    0xFF and fails.
/// 2. With credentials, the RFC 1929 sub-negotiation: status 0x00 if user
///    name and password match (compared in constant time), else status 0x01.
/// 3. The request `VER CMD RSV ATYP DST.ADDR DST.PORT`. Only CONNECT is
///    accepted; the `RSV` byte is ignored.
///
/// On success nothing has been written for the request: the caller must
/// answer with [`reply`] (usually [`ReplyCode::Succeeded`] once the stream is
/// open). Nothing past the request is read.
///
/// # Errors
///
/// * [`Socks5Error::Io`]: I/O failure or the client closed early (truncated
///   input).
/// * [`Socks5Error::NotSocks5`]: a version byte other than 0x05; nothing is
///   written.
/// * [`Socks5Error::NoAcceptableMethod`]: method 0xFF was written.
/// * [`Socks5Error::BadAuthVersion`], [`Socks5Error::AuthFailed`]: status
///   0x01 was written.
/// * [`Socks5Error::CommandNotSupported`]: reply 0x07 was written (BIND,
///   UDP ASSOCIATE, anything else).
/// * [`Socks5Error::AddressTypeNotSupported`]: reply 0x08 was written.
/// * [`Socks5Error::BadDomain`]: reply 0x01 was written.
pub async fn accept<S>(
    stream: &mut S,
    credentials: Option<&Credentials>,
) -> Result<TargetAddr, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    negotiate_method(stream, credentials).await?;
    if let Some(credentials) = credentials {
        authenticate(stream, credentials).await?;
    }
    read_request(stream).await
}

/// Greeting and method selection (RFC 1928 §3).
async fn negotiate_method<S>(
    stream: &mut S,
    credentials: Option<&Credentials>,
) -> Result<(), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let version = stream.read_u8().await?;
    if version != SOCKS_VERSION {
        return Err(Socks5Error::NotSocks5 { version });
    }
    let count = usize::from(stream.read_u8().await?);
    let mut methods = vec![0u8; count];
    stream.read_exact(&mut methods).await?;

    let wanted = if credentials.is_some() {
        METHOD_USER_PASS
    } else {
        METHOD_NO_AUTH
    };
    if !methods.contains(&wanted) {
        write_flush(stream, &[SOCKS_VERSION, METHOD_NONE_ACCEPTABLE]).await?;
        return Err(Socks5Error::NoAcceptableMethod);
    }
    write_flush(stream, &[SOCKS_VERSION, wanted]).await?;
    Ok(())
}

/// Username/password sub-negotiation (RFC 1929 §2).
async fn authenticate<S>(stream: &mut S, credentials: &Credentials) -> Result<(), Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    const STATUS_SUCCESS: u8 = 0x00;
    const STATUS_FAILURE: u8 = 0x01;

    let version = stream.read_u8().await?;
    if version != AUTH_VERSION {
        write_flush(stream, &[AUTH_VERSION, STATUS_FAILURE]).await?;
        return Err(Socks5Error::BadAuthVersion(version));
    }
    let username = read_length_prefixed(stream).await?;
    let password = read_length_prefixed(stream).await?;
    if credentials.matches(&username, &password) {
        write_flush(stream, &[AUTH_VERSION, STATUS_SUCCESS]).await?;
        Ok(())
    } else {
        write_flush(stream, &[AUTH_VERSION, STATUS_FAILURE]).await?;
        Err(Socks5Error::AuthFailed)
    }
}

/// Reads one length octet and that many bytes.
async fn read_length_prefixed<S>(stream: &mut S) -> std::io::Result<Vec<u8>>
where
    S: AsyncRead + Unpin,
{
    let len = usize::from(stream.read_u8().await?);
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await?;
    Ok(bytes)
}

/// Reads the client's request (RFC 1928 §4–5).
async fn read_request<S>(stream: &mut S) -> Result<TargetAddr, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let [version, command, _reserved, address_type] = header;
    if version != SOCKS_VERSION {
        return Err(Socks5Error::NotSocks5 { version });
    }
    if command != CMD_CONNECT {
        reply(stream, ReplyCode::CommandNotSupported).await?;
        return Err(Socks5Error::CommandNotSupported(command));
    }
    let target = match address_type {
        ATYP_IPV4 => {
            let mut octets = [0u8; 4];
            stream.read_exact(&mut octets).await?;
            let port = stream.read_u16().await?;
            TargetAddr::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(octets)), port))
        }
        ATYP_IPV6 => {
            let mut octets = [0u8; 16];
            stream.read_exact(&mut octets).await?;
            let port = stream.read_u16().await?;
            TargetAddr::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        ATYP_DOMAIN => {
            let name = read_length_prefixed(stream).await?;
            let port = stream.read_u16().await?;
            match String::from_utf8(name) {
                Ok(domain) if !domain.is_empty() => TargetAddr::Domain(domain, port),
                _ => {
                    reply(stream, ReplyCode::GeneralFailure).await?;
                    return Err(Socks5Error::BadDomain);
                }
            }
        }
        other => {
            reply(stream, ReplyCode::AddressTypeNotSupported).await?;
            return Err(Socks5Error::AddressTypeNotSupported(other));
        }
    };
    Ok(target)
}

/// Writes a SOCKS5 reply (RFC 1928 §6) with `code`, `ATYP` IPv4, `BND.ADDR`
/// 0.0.0.0 and `BND.PORT` 0 (the entry has no meaningful bound address), and
/// flushes: 10 bytes `05 REP 00 01 00 00 00 00 00 00`.
///
/// # Errors
///
/// Any I/O error from writing or flushing `stream`.
pub async fn reply<S>(stream: &mut S, code: ReplyCode) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let bytes = [SOCKS_VERSION, code as u8, 0x00, ATYP_IPV4, 0, 0, 0, 0, 0, 0];
    write_flush(stream, &bytes).await
}

/// Writes all of `bytes` and flushes.
async fn write_flush<S>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(bytes).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_credentials_differ_and_have_the_documented_shape() {
        let a = super::Credentials::random();
        let b = super::Credentials::random();
        assert_ne!(a, b);
        assert!(a.username.starts_with("nws-") && a.username.len() == 12);
        assert_eq!(a.password.len(), 32);
        assert!(a.password.chars().all(|c| c.is_ascii_hexdigit()));
    }

    use super::*;
    use tokio::io::{duplex, DuplexStream};

    fn creds() -> Credentials {
        Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        }
    }

    /// Runs `accept` against a client that sends `input` then closes its
    /// write side; returns the result and every byte the server wrote.
    async fn run(
        input: &[u8],
        credentials: Option<&Credentials>,
    ) -> (Result<TargetAddr, Socks5Error>, Vec<u8>) {
        let (mut client, mut server): (DuplexStream, DuplexStream) = duplex(4096);
        client.write_all(input).await.expect("write input");
        client.shutdown().await.expect("shutdown");
        let result = accept(&mut server, credentials).await;
        drop(server);
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.expect("read output");
        (result, written)
    }

    const NO_AUTH_GREETING: [u8; 3] = [5, 1, 0];

    fn with_greeting(greeting: &[u8], request: &[u8]) -> Vec<u8> {
        [greeting, request].concat()
    }

    #[tokio::test]
    async fn accepts_no_auth_domain_request() {
        let mut input = NO_AUTH_GREETING.to_vec();
        input.extend_from_slice(&[5, 1, 0, 3, 11]);
        input.extend_from_slice(b"example.com");
        input.extend_from_slice(&443u16.to_be_bytes());
        let (result, written) = run(&input, None).await;
        let target = result.expect("accepted");
        assert_eq!(target, TargetAddr::Domain("example.com".into(), 443));
        assert_eq!(target.host(), "example.com");
        assert_eq!(target.port(), 443);
        assert_eq!(target.to_string(), "example.com:443");
        assert_eq!(written, vec![5, 0]);
    }

    #[tokio::test]
    async fn accepts_no_auth_ipv4_request() {
        let input = with_greeting(&NO_AUTH_GREETING, &[5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90]);
        let (result, written) = run(&input, None).await;
        let target = result.expect("accepted");
        assert_eq!(
            target,
            TargetAddr::Ip("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(target.host(), "127.0.0.1");
        assert_eq!(target.to_string(), "127.0.0.1:8080");
        assert_eq!(written, vec![5, 0]);
    }

    #[tokio::test]
    async fn accepts_no_auth_ipv6_request() {
        let mut request = vec![5, 1, 0, 4];
        request.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        request.extend_from_slice(&80u16.to_be_bytes());
        let (result, _) = run(&with_greeting(&NO_AUTH_GREETING, &request), None).await;
        let target = result.expect("accepted");
        assert_eq!(target.host(), "::1");
        assert_eq!(target.port(), 80);
        assert_eq!(target.to_string(), "[::1]:80");
    }

    #[tokio::test]
    async fn leaves_bytes_after_the_request_unread() {
        let (mut client, mut server) = duplex(4096);
        let mut input = with_greeting(&NO_AUTH_GREETING, &[5, 1, 0, 1, 10, 0, 0, 1, 0, 80]);
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        client.write_all(&input).await.expect("write");
        client.shutdown().await.expect("shutdown");
        accept(&mut server, None).await.expect("accepted");
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("read rest");
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn accepts_correct_credentials() {
        let mut input = vec![5, 2, 0, 2, 1, 5];
        input.extend_from_slice(b"alice");
        input.push(6);
        input.extend_from_slice(b"s3cret");
        input.extend_from_slice(&[5, 1, 0, 3, 4]);
        input.extend_from_slice(b"a.io");
        input.extend_from_slice(&[0, 80]);
        let (result, written) = run(&input, Some(&creds())).await;
        assert_eq!(
            result.expect("accepted"),
            TargetAddr::Domain("a.io".into(), 80)
        );
        assert_eq!(written, vec![5, 2, 1, 0]);
    }

    #[tokio::test]
    async fn rejects_wrong_password_with_status_1() {
        let mut input = vec![5, 1, 2, 1, 5];
        input.extend_from_slice(b"alice");
        input.push(5);
        input.extend_from_slice(b"wrong");
        let (result, written) = run(&input, Some(&creds())).await;
        assert!(matches!(result, Err(Socks5Error::AuthFailed)), "{result:?}");
        assert_eq!(written, vec![5, 2, 1, 1]);
    }

    #[tokio::test]
    async fn rejects_bad_auth_version() {
        let (result, written) = run(&[5, 1, 2, 5, 0, 0], Some(&creds())).await;
        assert!(
            matches!(result, Err(Socks5Error::BadAuthVersion(5))),
            "{result:?}"
        );
        assert_eq!(written, vec![5, 2, 1, 1]);
    }

    #[tokio::test]
    async fn answers_ff_when_client_offers_no_auth_but_credentials_required() {
        let (result, written) = run(&NO_AUTH_GREETING, Some(&creds())).await;
        assert!(
            matches!(result, Err(Socks5Error::NoAcceptableMethod)),
            "{result:?}"
        );
        assert_eq!(written, vec![5, 0xFF]);
    }

    #[tokio::test]
    async fn answers_ff_when_client_offers_only_gssapi() {
        let (result, written) = run(&[5, 1, 1], None).await;
        assert!(
            matches!(result, Err(Socks5Error::NoAcceptableMethod)),
            "{result:?}"
        );
        assert_eq!(written, vec![5, 0xFF]);
    }

    #[tokio::test]
    async fn answers_ff_to_empty_method_list() {
        let (result, written) = run(&[5, 0], None).await;
        assert!(
            matches!(result, Err(Socks5Error::NoAcceptableMethod)),
            "{result:?}"
        );
        assert_eq!(written, vec![5, 0xFF]);
    }

    #[tokio::test]
    async fn replies_7_to_bind() {
        let input = with_greeting(&NO_AUTH_GREETING, &[5, 2, 0, 1, 127, 0, 0, 1, 0, 80]);
        let (result, written) = run(&input, None).await;
        assert!(
            matches!(result, Err(Socks5Error::CommandNotSupported(2))),
            "{result:?}"
        );
        assert_eq!(written, vec![5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn replies_7_to_udp_associate() {
        let input = with_greeting(&NO_AUTH_GREETING, &[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]);
        let (result, written) = run(&input, None).await;
        assert!(
            matches!(result, Err(Socks5Error::CommandNotSupported(3))),
            "{result:?}"
        );
        assert_eq!(written[2..4], [5, 7]);
    }

    #[tokio::test]
    async fn replies_8_to_unknown_address_type() {
        let input = with_greeting(&NO_AUTH_GREETING, &[5, 1, 0, 9, 1, 2, 3]);
        let (result, written) = run(&input, None).await;
        assert!(
            matches!(result, Err(Socks5Error::AddressTypeNotSupported(9))),
            "{result:?}"
        );
        assert_eq!(written, vec![5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn rejects_empty_and_non_utf8_domains() {
        for name in [&b""[..], &[0xff, 0xfe][..]] {
            let mut request = vec![5, 1, 0, 3, name.len() as u8];
            request.extend_from_slice(name);
            request.extend_from_slice(&[0, 80]);
            let (result, written) = run(&with_greeting(&NO_AUTH_GREETING, &request), None).await;
            assert!(matches!(result, Err(Socks5Error::BadDomain)), "{result:?}");
            assert_eq!(written[2..4], [5, 1]);
        }
    }

    #[tokio::test]
    async fn truncated_input_is_an_error_at_every_length() {
        let mut full = NO_AUTH_GREETING.to_vec();
        full.extend_from_slice(&[5, 1, 0, 3, 4]);
        full.extend_from_slice(b"a.io");
        full.extend_from_slice(&[0, 80]);
        for cut in 0..full.len() {
            let (result, _) = run(&full[..cut], None).await;
            match result {
                Err(Socks5Error::Io(e)) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "cut {cut}")
                }
                other => panic!("cut {cut}: unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn truncated_auth_is_an_error() {
        let (result, _) = run(&[5, 1, 2, 1, 5, b'a', b'l'], Some(&creds())).await;
        assert!(matches!(result, Err(Socks5Error::Io(_))), "{result:?}");
    }

    #[tokio::test]
    async fn rejects_wrong_version_byte_without_answering() {
        let (result, written) = run(&[4, 1, 0, 80, 127, 0, 0, 1, 0], None).await;
        assert!(
            matches!(result, Err(Socks5Error::NotSocks5 { version: 4 })),
            "{result:?}"
        );
        assert!(written.is_empty());
    }

    #[tokio::test]
    async fn rejects_wrong_version_byte_in_request() {
        let input = with_greeting(&NO_AUTH_GREETING, &[4, 1, 0, 1, 127, 0, 0, 1, 0, 80]);
        let (result, _) = run(&input, None).await;
        assert!(
            matches!(result, Err(Socks5Error::NotSocks5 { version: 4 })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn reply_writes_ten_bytes_with_zero_bound_address() {
        let (mut client, mut server) = duplex(64);
        reply(&mut server, ReplyCode::HostUnreachable)
            .await
            .expect("reply");
        drop(server);
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.expect("read");
        assert_eq!(written, vec![5, 4, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn credentials_match_only_exact_values() {
        let c = creds();
        assert!(c.matches(b"alice", b"s3cret"));
        assert!(!c.matches(b"alice", b"s3cres"));
        assert!(!c.matches(b"alice", b"s3cret!"));
        assert!(!c.matches(b"bob", b"s3cret"));
        assert!(!c.matches(b"", b""));
    }

    #[test]
    fn credentials_debug_redacts_password() {
        let shown = format!("{:?}", creds());
        assert!(shown.contains("alice"));
        assert!(!shown.contains("s3cret"));
    }
}
