//! The request side of an HTTP/1.1 forward proxy (RFC 9110, RFC 9112) with
//! optional Basic authentication (RFC 7617, RFC 9110 §11.7.1).
//!
//! [`read_request`] reads and checks one request head and says where the
//! stream should go: a `CONNECT host:port` tunnel ([`ProxyRequest::Connect`],
//! answered with [`write_connect_established`]) or a plain-HTTP request in
//! absolute form ([`ProxyRequest::Forward`], whose head is rewritten for the
//! origin server). Errors map to a status code ([`HttpProxyError::status`])
//! for [`write_error`].

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::entry::socks5::Credentials;

/// Largest request head accepted, in bytes (request line, headers and the
/// blank line).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted in one request head.
const MAX_HEADERS: usize = 128;
/// Bytes asked for per read while looking for the end of the head.
const READ_CHUNK: usize = 8 * 1024;
/// Standard base64 (RFC 4648 §4) that accepts credentials with or without padding.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What a proxy client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRequest {
    /// `CONNECT host:port` (authority form, RFC 9110 §9.3.6): open a tunnel.
    /// The caller answers with [`write_connect_established`] and then relays
    /// bytes both ways, starting with `leftover`.
    Connect {
        /// Host name or IP address (IPv6 without brackets), lower case, IDNA
        /// to ASCII; may be an NWS name.
        host: String,
        /// TCP port (required in CONNECT, never 0).
        port: u16,
        /// Bytes the client sent after the head, already read from the
        /// socket (e.g. an eager TLS ClientHello).
        leftover: Vec<u8>,
    },
    /// A plain-HTTP request in absolute form, e.g.
    /// `GET http://host[:port]/path HTTP/1.1` (RFC 9112 §3.2.2). The caller
    /// writes `head` and then `leftover` to the stream and relays the rest.
    Forward {
        /// Host name or IP address (IPv6 without brackets), lower case, IDNA
        /// to ASCII; may be an NWS name.
        host: String,
        /// TCP port; 80 when the URL has none.
        port: u16,
        /// The request head rewritten for the origin server, ending in
        /// `\r\n\r\n`:
        ///
        /// * request line in origin form (`GET /path?q HTTP/1.1`), fragment
        ///   dropped, path and query byte for byte as the client sent them;
        /// * `Host` set to the URL's authority (RFC 9112 §3.2.2: a proxy
        ///   replaces any received `Host` with the request target's), as the
        ///   first header;
        /// * every `Proxy-*` header (`Proxy-Authorization`,
        ///   `Proxy-Connection`, …) removed, and the hop-by-hop headers
        ///   `Connection`, `Keep-Alive` and any named in `Connection`
        ///   (RFC 9110 §7.6.1) removed;
        /// * `Connection: close` appended: one stream carries exactly one
        ///   request, because the stream was opened for this request's host
        ///   and the proxy does not parse later requests on the connection,
        ///   which might be for another host. The origin therefore closes
        ///   after its response, and so does the proxy.
        ///
        /// Other headers keep their order, names and values.
        head: Vec<u8>,
        /// Body bytes the client sent after the head, already read.
        leftover: Vec<u8>,
    },
}

impl ProxyRequest {
    /// The host the stream should go to (an NWS name or an ordinary host).
    pub fn host(&self) -> &str {
        match self {
            Self::Connect { host, .. } | Self::Forward { host, .. } => host,
        }
    }

    /// The TCP port the stream should go to.
    pub fn port(&self) -> u16 {
        match self {
            Self::Connect { port, .. } | Self::Forward { port, .. } => *port,
        }
    }
}

/// Why a proxy request was refused; [`HttpProxyError::status`] gives the
/// status code to answer with.
#[derive(Debug, thiserror::Error)]
pub enum HttpProxyError {
    /// Reading the request from the client failed.
    #[error("I/O error reading the request: {0}")]
    Io(#[from] std::io::Error),
    /// The client closed the connection before sending a complete request head.
    #[error("client closed the connection before the request head was complete")]
    ClosedEarly,
    /// The request head is malformed or its request target is unusable; the text says how.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Credentials are configured and the request lacks a matching `Proxy-Authorization: Basic`.
    #[error("proxy authentication required")]
    AuthRequired,
    /// The request head exceeds 64 KiB or 128 header fields.
    #[error("request head larger than 64 KiB or 128 header fields")]
    HeaderTooLarge,
    /// The absolute-form target uses a scheme other than `http` (for TLS, clients use CONNECT).
    #[error("unsupported URL scheme `{0}`; only http:// is forwarded (use CONNECT for https)")]
    UnsupportedScheme(String),
}

impl HttpProxyError {
    /// The HTTP status code to answer with: 400 Bad Request for I/O, early
    /// close and malformed requests, 407 Proxy Authentication Required,
    /// 431 Request Header Fields Too Large, 501 Not Implemented for an
    /// unsupported scheme.
    pub fn status(&self) -> u16 {
        match self {
            Self::Io(_) | Self::ClosedEarly | Self::BadRequest(_) => 400,
            Self::AuthRequired => 407,
            Self::HeaderTooLarge => 431,
            Self::UnsupportedScheme(_) => 501,
        }
    }
}

/// Reads one request head from `stream` and classifies it (RFC 9112 §3,
/// parsed with `httparse`).
///
/// The head may be at most [`MAX_HEAD_BYTES`] (64 KiB) and 128 header
/// fields. Reading stops once the head is complete; whatever else the last
/// read returned is handed back as `leftover`, and nothing further is read.
///
/// When `credentials` is `Some`, the request must carry
/// `Proxy-Authorization: Basic base64(user:pass)` (RFC 7617) matching them;
/// this is checked before the request target.
///
/// `CONNECT` takes an authority-form target `host:port` (IPv6 in brackets,
/// e.g. `[::1]:8080`). Every other method takes an absolute-form `http://`
/// target (see [`ProxyRequest::Forward`] for the rewrite).
///
/// # Errors
///
/// * [`HttpProxyError::Io`] / [`HttpProxyError::ClosedEarly`]: reading failed
///   or the client closed before the head ended.
/// * [`HttpProxyError::HeaderTooLarge`]: over 64 KiB or 128 headers.
/// * [`HttpProxyError::BadRequest`]: malformed head, origin-form target
///   (`GET /x`, meant for a server rather than a proxy), CONNECT without a
///   port, userinfo in the target, invalid host or port.
/// * [`HttpProxyError::AuthRequired`]: credentials configured, missing or
///   wrong in the request.
/// * [`HttpProxyError::UnsupportedScheme`]: absolute form with a scheme other
///   than `http` (e.g. `https://`, which clients send through CONNECT).
pub async fn read_request<S>(
    stream: &mut S,
    credentials: Option<&Credentials>,
) -> Result<ProxyRequest, HttpProxyError>
where
    S: AsyncRead + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(HttpProxyError::ClosedEarly);
        }
        buf.extend_from_slice(chunk.get(..read).unwrap_or_default());
        if let Some(request) = parse_head(&buf, credentials)? {
            return Ok(request);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HttpProxyError::HeaderTooLarge);
        }
    }
}

/// Parses `buf` if it holds a complete head: `Ok(None)` if more is needed.
fn parse_head(
    buf: &[u8],
    credentials: Option<&Credentials>,
) -> Result<Option<ProxyRequest>, HttpProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return Err(HttpProxyError::HeaderTooLarge),
        Err(e) => {
            return Err(HttpProxyError::BadRequest(format!(
                "malformed request head: {e}"
            )))
        }
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(HttpProxyError::HeaderTooLarge);
    }
    let leftover = buf.get(head_len..).unwrap_or_default().to_vec();

    // A complete parse always sets these; treat their absence as malformed.
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HttpProxyError::BadRequest("incomplete request line".into()));
    };
    if let Some(credentials) = credentials {
        check_basic_auth(request.headers, credentials)?;
    }

    if method == "CONNECT" {
        let authority = parse_authority(target, None)?;
        return Ok(Some(ProxyRequest::Connect {
            host: authority.host,
            port: authority.port,
            leftover,
        }));
    }

    let (authority_text, origin_form) = split_absolute_form(target)?;
    let authority = parse_authority(authority_text, Some(80))?;
    let head = rewrite_head(
        method,
        origin_form,
        version,
        authority_text,
        request.headers,
    );
    Ok(Some(ProxyRequest::Forward {
        host: authority.host,
        port: authority.port,
        head,
        leftover,
    }))
}

/// Accepts the request if any `Proxy-Authorization` header carries Basic
/// credentials (RFC 7617 §2) equal to `credentials`.
fn check_basic_auth(
    headers: &[httparse::Header<'_>],
    credentials: &Credentials,
) -> Result<(), HttpProxyError> {
    let authorized = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
        .any(|h| basic_credentials_match(h.value, credentials));
    if authorized {
        Ok(())
    } else {
        Err(HttpProxyError::AuthRequired)
    }
}

/// Whether one `Proxy-Authorization` value is `Basic <token68>` (scheme
/// case-insensitive, RFC 9110 §11.1) whose decoded `user-id:password` matches.
fn basic_credentials_match(value: &[u8], credentials: &Credentials) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = BASIC_BASE64.decode(token.trim()) else {
        return false;
    };
    // RFC 7617 §2: the user-id cannot contain a colon; the password may.
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    let (user, rest) = decoded.split_at(colon);
    credentials.matches(user, rest.get(1..).unwrap_or_default())
}

/// A validated `host[:port]`.
struct Authority {
    /// Host as text: lower-case ASCII domain, dotted IPv4, or IPv6 without brackets.
    host: String,
    /// The port, or the default.
    port: u16,
}

/// Parses `uri-host [":" port]` (RFC 3986 §3.2.2–3.2.3), with the host
/// validated and normalized by the `url` crate (WHATWG host parser: IDNA to
/// ASCII, lower case, bracketed IPv6). `default_port` of `None` makes the
/// port mandatory (CONNECT).
fn parse_authority(text: &str, default_port: Option<u16>) -> Result<Authority, HttpProxyError> {
    let bad = |why: &str| HttpProxyError::BadRequest(format!("{why} in `{text}`"));
    if text.is_empty() {
        return Err(bad("empty host"));
    }
    if text.contains('@') {
        // RFC 9110 §4.2.4: userinfo in an http URI is to be treated as an error.
        return Err(bad("userinfo not allowed"));
    }
    let (host_text, port_text) = if text.starts_with('[') {
        let close = text
            .find(']')
            .ok_or_else(|| bad("unterminated IPv6 literal"))?;
        let (host, rest) = text.split_at(close + 1);
        match rest {
            "" => (host, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(bad("junk after IPv6 literal")),
            },
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };

    let port = match port_text.filter(|p| !p.is_empty()) {
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("port out of range")),
            Ok(port) => port,
        },
        Some(_) => return Err(bad("invalid port")),
        None => default_port.ok_or_else(|| bad("missing port"))?,
    };

    if host_text.is_empty() {
        return Err(bad("empty host"));
    }
    let host = match url::Host::parse(host_text) {
        Ok(url::Host::Domain(domain)) => domain,
        Ok(url::Host::Ipv4(ip)) => ip.to_string(),
        Ok(url::Host::Ipv6(ip)) => ip.to_string(),
        Err(e) => return Err(bad(&format!("invalid host ({e})"))),
    };
    Ok(Authority { host, port })
}

/// Splits an absolute-form `http://authority/path?query#fragment` target
/// into the authority text and the origin form (`/path?query`, at least
/// `/`; the fragment is dropped).
fn split_absolute_form(target: &str) -> Result<(&str, String), HttpProxyError> {
    if target.starts_with('/') {
        return Err(HttpProxyError::BadRequest(format!(
            "origin-form target `{target}`: this is a proxy, send absolute-form `http://host/…`"
        )));
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err(HttpProxyError::BadRequest(format!(
            "request target `{target}` is not absolute-form `http://host/…`"
        )));
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(HttpProxyError::UnsupportedScheme(
            scheme.to_ascii_lowercase(),
        ));
    }
    let without_fragment = rest.split_once('#').map_or(rest, |(before, _)| before);
    let authority_end = without_fragment
        .find(['/', '?'])
        .unwrap_or(without_fragment.len());
    let (authority, path) = without_fragment.split_at(authority_end);
    let origin_form = if path.is_empty() {
        "/".to_owned()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Ok((authority, origin_form))
}

/// Builds the origin-form head described at [`ProxyRequest::Forward`].
fn rewrite_head(
    method: &str,
    origin_form: String,
    version: u8,
    authority: &str,
    headers: &[httparse::Header<'_>],
) -> Vec<u8> {
    // Header names listed in `Connection` are hop-by-hop (RFC 9110 §7.6.1).
    let connection_options: Vec<String> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect();
    let is_dropped = |name: &str| {
        let name = name.to_ascii_lowercase();
        name.starts_with("proxy-")
            || matches!(name.as_str(), "host" | "connection" | "keep-alive")
            || connection_options.contains(&name)
    };

    let mut head = Vec::with_capacity(1024);
    head.extend_from_slice(format!("{method} {origin_form} HTTP/1.{version}\r\n").as_bytes());
    head.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
    for header in headers.iter().filter(|h| !is_dropped(h.name)) {
        head.extend_from_slice(header.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(header.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    head
}

/// Writes `HTTP/1.1 200 Connection established\r\n\r\n` (the answer to a
/// successful CONNECT, RFC 9110 §9.3.6) and flushes.
///
/// # Errors
///
/// Any I/O error from writing or flushing `stream`.
pub async fn write_connect_established<S>(stream: &mut S) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    stream.flush().await
}

/// The reason phrase for the status codes this proxy uses.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Writes a short error response and flushes:
///
/// ```text
/// HTTP/1.1 <status> <reason>\r\n
/// Content-Type: text/plain; charset=utf-8\r\n
/// Content-Length: <len>\r\n
/// Connection: close\r\n
/// [Proxy-Authenticate: Basic realm="nws"\r\n]   (407 only, RFC 7617 §2)
/// \r\n
/// <message>\n
/// ```
///
/// A `status` outside 100–599 is sent as 500. `message` goes only in the
/// body, so it cannot inject headers.
///
/// # Errors
///
/// Any I/O error from writing or flushing `stream`.
pub async fn write_error<S>(stream: &mut S, status: u16, message: &str) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let status = if (100..=599).contains(&status) {
        status
    } else {
        500
    };
    let body = format!("{message}\n");
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    if status == 407 {
        response.push_str("Proxy-Authenticate: Basic realm=\"nws\"\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&body);
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn creds() -> Credentials {
        Credentials {
            username: "alice".into(),
            password: "pa:ss".into(),
        }
    }

    /// Reads a request from `input` (as if the client sent it and then
    /// waited).
    async fn read(
        input: &[u8],
        credentials: Option<&Credentials>,
    ) -> Result<ProxyRequest, HttpProxyError> {
        let mut reader = input;
        read_request(&mut reader, credentials).await
    }

    fn forward_parts(request: ProxyRequest) -> (String, u16, String, Vec<u8>) {
        match request {
            ProxyRequest::Forward {
                host,
                port,
                head,
                leftover,
            } => (
                host,
                port,
                String::from_utf8(head).expect("ASCII head"),
                leftover,
            ),
            other => panic!("expected Forward, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn parses_connect() {
        let request = read(
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            None,
        )
        .await
        .expect("parses");
        assert_eq!(
            request,
            ProxyRequest::Connect {
                host: "example.com".into(),
                port: 443,
                leftover: Vec::new(),
            }
        );
    }

    #[tokio::test]
    async fn connect_keeps_bytes_after_the_head() {
        let request = read(
            b"CONNECT a.nostr:443 HTTP/1.1\r\n\r\n\x16\x03\x01hello",
            None,
        )
        .await
        .expect("parses");
        assert_eq!(
            request,
            ProxyRequest::Connect {
                host: "a.nostr".into(),
                port: 443,
                leftover: b"\x16\x03\x01hello".to_vec(),
            }
        );
    }

    #[tokio::test]
    async fn connect_to_ipv6_literal_strips_brackets() {
        let request = read(b"CONNECT [::1]:8080 HTTP/1.1\r\n\r\n", None)
            .await
            .expect("parses");
        assert_eq!(request.host(), "::1");
        assert_eq!(request.port(), 8080);
    }

    #[tokio::test]
    async fn connect_lowercases_host() {
        let request = read(b"CONNECT NPUB1ABC:80 HTTP/1.1\r\n\r\n", None)
            .await
            .expect("parses");
        assert_eq!(request.host(), "npub1abc");
    }

    #[tokio::test]
    async fn connect_without_port_is_bad_request() {
        let err = read(b"CONNECT example.com HTTP/1.1\r\n\r\n", None)
            .await
            .expect_err("no port");
        assert!(matches!(err, HttpProxyError::BadRequest(_)), "{err:?}");
        assert_eq!(err.status(), 400);
    }

    #[tokio::test]
    async fn connect_with_bad_port_is_bad_request() {
        for target in [
            "a.com:0",
            "a.com:65536",
            "a.com:+80",
            "a.com:8a",
            "[::1]x:80",
            ":80",
        ] {
            let input = format!("CONNECT {target} HTTP/1.1\r\n\r\n");
            let err = read(input.as_bytes(), None).await.expect_err(target);
            assert!(
                matches!(err, HttpProxyError::BadRequest(_)),
                "{target}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn rewrites_absolute_form_to_origin_form() {
        let input = b"GET http://example.com:8080/a/b?x=1#frag HTTP/1.1\r\n\
                      Host: example.com:8080\r\n\
                      User-Agent: test/1\r\n\
                      Accept: */*\r\n\r\n";
        let (host, port, head, leftover) = forward_parts(read(input, None).await.expect("parses"));
        assert_eq!(host, "example.com");
        assert_eq!(port, 8080);
        assert_eq!(
            head,
            "GET /a/b?x=1 HTTP/1.1\r\n\
             Host: example.com:8080\r\n\
             User-Agent: test/1\r\n\
             Accept: */*\r\n\
             Connection: close\r\n\r\n"
        );
        assert!(leftover.is_empty());
    }

    #[tokio::test]
    async fn defaults_port_to_80_and_path_to_slash() {
        let (host, port, head, _) = forward_parts(
            read(b"GET http://Example.COM HTTP/1.0\r\n\r\n", None)
                .await
                .expect("parses"),
        );
        assert_eq!(host, "example.com");
        assert_eq!(port, 80);
        assert_eq!(
            head,
            "GET / HTTP/1.0\r\nHost: Example.COM\r\nConnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn query_without_path_gets_a_slash() {
        let (_, _, head, _) = forward_parts(
            read(b"GET http://h?q=1 HTTP/1.1\r\n\r\n", None)
                .await
                .expect("parses"),
        );
        assert!(head.starts_with("GET /?q=1 HTTP/1.1\r\n"), "{head}");
    }

    #[tokio::test]
    async fn removes_proxy_headers_and_hop_by_hop_headers() {
        let input = b"GET http://h.example/ HTTP/1.1\r\n\
                      Host: h.example\r\n\
                      Proxy-Connection: keep-alive\r\n\
                      Proxy-Authorization: Basic YWxpY2U6cGE6c3M=\r\n\
                      PROXY-Foo: bar\r\n\
                      Connection: keep-alive, X-Hop\r\n\
                      Keep-Alive: timeout=5\r\n\
                      X-Hop: 1\r\n\
                      X-End: 2\r\n\r\n";
        let (_, _, head, _) = forward_parts(read(input, Some(&creds())).await.expect("parses"));
        assert_eq!(
            head,
            "GET / HTTP/1.1\r\nHost: h.example\r\nX-End: 2\r\nConnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn replaces_host_header_with_target_authority() {
        let input = b"GET http://real.example:81/ HTTP/1.1\r\nHost: other.example\r\n\r\n";
        let (host, port, head, _) = forward_parts(read(input, None).await.expect("parses"));
        assert_eq!((host.as_str(), port), ("real.example", 81));
        assert_eq!(
            head,
            "GET / HTTP/1.1\r\nHost: real.example:81\r\nConnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn returns_body_bytes_read_with_the_head() {
        let input = b"POST http://h/form HTTP/1.1\r\nContent-Length: 9\r\n\r\nname=test";
        let (_, _, head, leftover) = forward_parts(read(input, None).await.expect("parses"));
        assert_eq!(
            head,
            "POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(leftover, b"name=test");
    }

    #[tokio::test]
    async fn forwards_to_ipv6_literal() {
        let input = b"GET http://[::1]:8080/x HTTP/1.1\r\n\r\n";
        let (host, port, head, _) = forward_parts(read(input, None).await.expect("parses"));
        assert_eq!((host.as_str(), port), ("::1", 8080));
        assert!(
            head.starts_with("GET /x HTTP/1.1\r\nHost: [::1]:8080\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn reads_head_split_across_many_writes() {
        let (mut client, mut server) = duplex(16);
        let writer = tokio::spawn(async move {
            for piece in [
                &b"CONNECT h:1 HT"[..],
                b"TP/1.1\r\nX: y",
                b"\r\n\r",
                b"\nrest",
            ] {
                client.write_all(piece).await.expect("write");
            }
        });
        let request = read_request(&mut server, None).await.expect("parses");
        writer.await.expect("writer");
        let ProxyRequest::Connect {
            host,
            port,
            mut leftover,
        } = request
        else {
            panic!("expected Connect, got {request:?}");
        };
        assert_eq!((host.as_str(), port), ("h", 1));
        // Whatever was not already read is still in the stream, in order.
        server.read_to_end(&mut leftover).await.expect("read rest");
        assert_eq!(leftover, b"rest");
    }

    #[tokio::test]
    async fn accepts_correct_basic_credentials() {
        // base64("alice:pa:ss"); the password itself contains a colon.
        let input =
            b"CONNECT h:443 HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6cGE6c3M=\r\n\r\n";
        let request = read(input, Some(&creds())).await.expect("authorized");
        assert_eq!(request.host(), "h");
        let lower = b"CONNECT h:443 HTTP/1.1\r\nproxy-authorization: basic YWxpY2U6cGE6c3M\r\n\r\n";
        read(lower, Some(&creds()))
            .await
            .expect("scheme is case-insensitive, padding optional");
    }

    #[tokio::test]
    async fn missing_credentials_need_407() {
        let err = read(b"CONNECT h:443 HTTP/1.1\r\n\r\n", Some(&creds()))
            .await
            .expect_err("no auth");
        assert!(matches!(err, HttpProxyError::AuthRequired), "{err:?}");
        assert_eq!(err.status(), 407);
    }

    #[tokio::test]
    async fn wrong_credentials_need_407() {
        // base64("alice:wrong"), then a non-Basic scheme, then garbage base64.
        for value in [
            "Basic YWxpY2U6d3Jvbmc=",
            "Bearer YWxpY2U6cGE6c3M=",
            "Basic !!!",
            "Basic",
        ] {
            let input = format!("GET http://h/ HTTP/1.1\r\nProxy-Authorization: {value}\r\n\r\n");
            let err = read(input.as_bytes(), Some(&creds()))
                .await
                .expect_err(value);
            assert_eq!(err.status(), 407, "{value}");
        }
    }

    #[tokio::test]
    async fn oversized_head_is_431() {
        let mut input = b"GET http://h/ HTTP/1.1\r\nX-Big: ".to_vec();
        input.extend_from_slice(&vec![b'a'; MAX_HEAD_BYTES]);
        input.extend_from_slice(b"\r\n\r\n");
        let err = read(&input, None).await.expect_err("too large");
        assert!(matches!(err, HttpProxyError::HeaderTooLarge), "{err:?}");
        assert_eq!(err.status(), 431);
    }

    #[tokio::test]
    async fn oversized_unterminated_head_is_431() {
        let input = vec![b'a'; MAX_HEAD_BYTES + 10];
        let mut with_line = b"GET http://h/ HTTP/1.1\r\nX: ".to_vec();
        with_line.extend_from_slice(&input);
        let err = read(&with_line, None).await.expect_err("too large");
        assert_eq!(err.status(), 431);
    }

    #[tokio::test]
    async fn too_many_headers_is_431() {
        let mut input = b"GET http://h/ HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            input.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        let err = read(&input, None).await.expect_err("too many");
        assert_eq!(err.status(), 431);
    }

    #[tokio::test]
    async fn malformed_head_is_400() {
        for input in [
            &b"GET\r\n\r\n"[..],
            b"G@T http://h/ HTTP/1.1\r\n\r\n",
            b"GET http://h/ HTTP/9\r\n\r\n",
        ] {
            let err = read(input, None).await.expect_err("malformed");
            assert!(matches!(err, HttpProxyError::BadRequest(_)), "{err:?}");
            assert_eq!(err.status(), 400);
        }
    }

    #[tokio::test]
    async fn origin_form_is_400() {
        let err = read(b"GET /index.html HTTP/1.1\r\nHost: h\r\n\r\n", None)
            .await
            .expect_err("origin");
        assert!(matches!(err, HttpProxyError::BadRequest(_)), "{err:?}");
        assert_eq!(err.status(), 400);
    }

    #[tokio::test]
    async fn userinfo_in_target_is_400() {
        let err = read(b"GET http://u:p@h/ HTTP/1.1\r\n\r\n", None)
            .await
            .expect_err("userinfo");
        assert_eq!(err.status(), 400);
    }

    #[tokio::test]
    async fn https_absolute_form_is_unsupported_scheme() {
        let err = read(b"GET https://h/ HTTP/1.1\r\n\r\n", None)
            .await
            .expect_err("https");
        assert!(
            matches!(&err, HttpProxyError::UnsupportedScheme(s) if s == "https"),
            "{err:?}"
        );
        assert_eq!(err.status(), 501);
    }

    #[tokio::test]
    async fn early_close_is_an_error() {
        for input in [&b""[..], b"GET http://h/ HTTP/1.1\r\nHost"] {
            let err = read(input, None).await.expect_err("closed");
            assert!(matches!(err, HttpProxyError::ClosedEarly), "{err:?}");
        }
    }

    #[tokio::test]
    async fn writes_connect_established() {
        let mut out = Vec::new();
        write_connect_established(&mut out).await.expect("write");
        assert_eq!(out, b"HTTP/1.1 200 Connection established\r\n\r\n");
    }

    #[tokio::test]
    async fn writes_plain_error() {
        let mut out = Vec::new();
        write_error(&mut out, 502, "exit unreachable")
            .await
            .expect("write");
        assert_eq!(
            String::from_utf8(out).expect("ASCII"),
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 17\r\nConnection: close\r\n\r\nexit unreachable\n"
        );
    }

    #[tokio::test]
    async fn writes_407_with_basic_challenge() {
        let mut out = Vec::new();
        write_error(&mut out, 407, "login").await.expect("write");
        let text = String::from_utf8(out).expect("ASCII");
        assert!(
            text.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nProxy-Authenticate: Basic realm=\"nws\"\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nlogin\n"), "{text}");
    }

    #[tokio::test]
    async fn out_of_range_status_becomes_500() {
        let mut out = Vec::new();
        write_error(&mut out, 42, "x").await.expect("write");
        assert!(out.starts_with(b"HTTP/1.1 500 Internal Server Error\r\n"));
    }
}
