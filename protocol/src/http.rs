//! The request side of an HTTP/1.1 forward proxy without I/O (RFC 9110,
//! RFC 9112) with optional Basic authentication (RFC 7617, RFC 9110
//! §11.7.1).
//!
//! [`parse`] checks one request head in a buffer and says where the stream
//! should go: a `CONNECT host:port` tunnel ([`ProxyRequest::Connect`]) or a
//! plain-HTTP request in absolute form ([`ProxyRequest::Forward`], whose
//! head is rewritten for the origin server). Errors map to a status code
//! ([`HttpProxyError::status`]) and [`error_response`] writes the answer.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

use crate::addr::{AddrError, HostPort};
use crate::credentials::Credentials;

/// Largest request head accepted, in bytes (request line, headers and the
/// blank line).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted in one request head.
pub const MAX_HEADERS: usize = 128;
/// Standard base64 (RFC 4648 §4) that accepts credentials with or without padding.
const BASIC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What a proxy client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRequest {
    /// `CONNECT host:port` (authority form, RFC 9110 §9.3.6): open a tunnel.
    /// The caller answers with `200 Connection established` and then relays
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
        ///   after its response, and so does the proxy; and should an origin
        ///   keep the connection open anyway, the proxy resets a client that
        ///   sends a second request on it rather than pass the request on
        ///   unparsed (`body` says where this one ends).
        ///
        /// Other headers keep their order, names and values.
        head: Vec<u8>,
        /// Body bytes the client sent after the head, already read.
        leftover: Vec<u8>,
        /// How long the request's body is (RFC 9112 §6.3), so that the
        /// proxy can tell where this request ends and refuse a second one
        /// on the same connection.
        body: RequestBody,
    },
}

/// The framing of a forwarded request's body (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    /// Exactly this many bytes follow the head (0 without `Content-Length`
    /// and `Transfer-Encoding`).
    Length(u64),
    /// `Transfer-Encoding: chunked`: the body ends with its last chunk.
    Chunked,
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpProxyError {
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
    /// The HTTP status code to answer with: 400 Bad Request for an early
    /// close and malformed requests, 407 Proxy Authentication Required,
    /// 431 Request Header Fields Too Large, 501 Not Implemented for an
    /// unsupported scheme.
    pub fn status(&self) -> u16 {
        match self {
            Self::ClosedEarly | Self::BadRequest(_) => 400,
            Self::AuthRequired => 407,
            Self::HeaderTooLarge => 431,
            Self::UnsupportedScheme(_) => 501,
        }
    }
}

/// Parses one request head from the start of `buf` and classifies it (RFC
/// 9112 §3, parsed with `httparse`): `Ok(None)` while the head is not
/// complete, else the request and the head's length in bytes (whatever
/// follows in `buf` is also in the request's `leftover`).
///
/// The head may be at most [`MAX_HEAD_BYTES`] (64 KiB) and 128 header
/// fields; a caller that has buffered that much without a complete head
/// answers [`HttpProxyError::HeaderTooLarge`].
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
/// * [`HttpProxyError::HeaderTooLarge`]: over 64 KiB or 128 headers.
/// * [`HttpProxyError::BadRequest`]: malformed head, origin-form target
///   (`GET /x`, meant for a server rather than a proxy), CONNECT without a
///   port, userinfo in the target, invalid host or port.
/// * [`HttpProxyError::AuthRequired`]: credentials configured, missing or
///   wrong in the request.
/// * [`HttpProxyError::UnsupportedScheme`]: absolute form with a scheme other
///   than `http` (e.g. `https://`, which clients send through CONNECT).
pub fn parse(
    buf: &[u8],
    credentials: Option<&Credentials>,
) -> Result<Option<(ProxyRequest, usize)>, HttpProxyError> {
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
        let request = ProxyRequest::Connect {
            host: authority.host,
            port: authority.port,
            leftover,
        };
        return Ok(Some((request, head_len)));
    }

    let body = request_body(request.headers)?;
    let (authority_text, origin_form) = split_absolute_form(target)?;
    let authority = parse_authority(authority_text, Some(80))?;
    let head = rewrite_head(
        method,
        origin_form,
        version,
        authority_text,
        request.headers,
    );
    let request = ProxyRequest::Forward {
        host: authority.host,
        port: authority.port,
        head,
        leftover,
        body,
    };
    Ok(Some((request, head_len)))
}

/// The body framing of a request (RFC 9112 §6.3): `Transfer-Encoding`
/// whose last coding is `chunked` wins over `Content-Length`; any other
/// transfer coding, or `Content-Length` values that are not one decimal
/// number, are a bad request (the request smuggling cases of §6.3 and §11.2).
fn request_body(headers: &[httparse::Header<'_>]) -> Result<RequestBody, HttpProxyError> {
    let mut codings = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(|c| c.trim_ascii())
        .filter(|c| !c.is_empty())
        .peekable();
    if codings.peek().is_some() {
        return match codings.last() {
            Some(last) if last.eq_ignore_ascii_case(b"chunked") => Ok(RequestBody::Chunked),
            _ => Err(HttpProxyError::BadRequest(
                "a request's last transfer coding must be chunked".into(),
            )),
        };
    }
    let mut length = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for value in h.value.split(|&b| b == b',') {
            let text = std::str::from_utf8(value.trim_ascii()).unwrap_or("");
            let n = (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| HttpProxyError::BadRequest("invalid Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpProxyError::BadRequest(
                    "conflicting Content-Length values".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(RequestBody::Length(length.unwrap_or(0)))
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

/// Parses `uri-host [":" port]` (RFC 3986 §3.2.2–3.2.3) with the shared
/// `host:port` parser, the host then validated and normalized by the `url`
/// crate (WHATWG host parser: IDNA to ASCII, lower case, bracketed IPv6).
/// `default_port` of `None` makes the port mandatory (CONNECT).
fn parse_authority(text: &str, default_port: Option<u16>) -> Result<Authority, HttpProxyError> {
    let bad = |why: &str| HttpProxyError::BadRequest(format!("{why} in `{text}`"));
    if text.contains('@') {
        // RFC 9110 §4.2.4: userinfo in an http URI is to be treated as an error.
        return Err(bad("userinfo not allowed"));
    }
    let parsed = HostPort::parse_with_default(text, default_port).map_err(|e| {
        let why = match e {
            AddrError::EmptyHost(_) => "empty host",
            AddrError::UnterminatedIpv6(_) => "unterminated IPv6 literal",
            AddrError::JunkAfterIpv6(_) => "junk after IPv6 literal",
            AddrError::MissingPort(_) => "missing port",
            AddrError::BadPort(_) => "invalid port",
            AddrError::PortOutOfRange(_) => "port out of range",
        };
        bad(why)
    })?;
    // `url` wants an IPv6 literal in brackets, as in a URL.
    let host_text = if parsed.is_ipv6() {
        format!("[{}]", parsed.host)
    } else {
        parsed.host
    };
    let host = match url::Host::parse(&host_text) {
        Ok(url::Host::Domain(domain)) => domain,
        Ok(url::Host::Ipv4(ip)) => ip.to_string(),
        Ok(url::Host::Ipv6(ip)) => ip.to_string(),
        Err(e) => return Err(bad(&format!("invalid host ({e})"))),
    };
    Ok(Authority {
        host,
        port: parsed.port,
    })
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

/// The answer to a successful `CONNECT` (RFC 9110 §9.3.6).
pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// A short error response:
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
/// A `status` outside 100–599 is sent as 500; the reason phrase is the
/// registered one (`http::StatusCode`). `message` goes only in the body, so
/// it cannot inject headers.
pub fn error_response(status: u16, message: &str) -> Vec<u8> {
    let status = http::StatusCode::from_u16(status)
        .ok()
        .filter(|s| (100..=599).contains(&s.as_u16()))
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let body = format!("{message}\n");
    let mut response = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len()
    );
    if status == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        response.push_str("Proxy-Authenticate: Basic realm=\"nws\"\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&body);
    response.into_bytes()
}
