//! The HTTP proxy's socket side: reads one request head from a client into
//! a buffer for the sans-IO parser ([`nws_protocol::http::parse`]) and
//! writes the proxy's answers.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::http::{error_response, parse, CONNECT_ESTABLISHED};
pub use crate::protocol::http::{
    HttpProxyError, ProxyRequest, RequestBody, MAX_HEADERS, MAX_HEAD_BYTES,
};

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::ReadBuf;

use super::socks5::Credentials;

/// Bytes asked for per read while looking for the end of the head.
const READ_CHUNK: usize = 8 * 1024;

/// Why reading a proxy request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Reading the request from the client failed.
    #[error("I/O error reading the request: {0}")]
    Io(#[from] std::io::Error),
    /// The request is refused; [`HttpProxyError::status`] says how to answer.
    #[error(transparent)]
    Http(#[from] HttpProxyError),
}

impl RequestError {
    /// The status to answer with (400 for an I/O failure).
    pub fn status(&self) -> u16 {
        match self {
            Self::Io(_) => 400,
            Self::Http(e) => e.status(),
        }
    }

    /// Whether the client can still be answered (not gone or failed).
    pub fn can_answer(&self) -> bool {
        !matches!(self, Self::Io(_) | Self::Http(HttpProxyError::ClosedEarly))
    }
}

/// Reads one request head from `stream` and classifies it with
/// [`nws_protocol::http::parse`] (RFC 9112 §3).
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
/// * [`RequestError::Io`] / [`HttpProxyError::ClosedEarly`]: reading failed
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
) -> Result<ProxyRequest, RequestError>
where
    S: AsyncRead + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(HttpProxyError::ClosedEarly.into());
        }
        buf.extend_from_slice(chunk.get(..read).unwrap_or_default());
        if let Some((request, _)) = parse(&buf, credentials)? {
            return Ok(request);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HttpProxyError::HeaderTooLarge.into());
        }
    }
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
    stream.write_all(CONNECT_ESTABLISHED).await?;
    stream.flush().await
}

/// Writes a short error response ([`nws_protocol::http::error_response`])
/// and flushes.
///
/// # Errors
///
/// Any I/O error from writing or flushing `stream`.
pub async fn write_error<S>(stream: &mut S, status: u16, message: &str) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(&error_response(status, message)).await?;
    stream.flush().await
}

/// The client side of a forwarded request ([`ProxyRequest::Forward`]): reads
/// pass through until the request's body has been read, then the next byte
/// the client sends (a second request on a kept-alive connection, which
/// may be for another host) fails the read with `ConnectionAborted`, so the
/// stream is reset and the client retries on a new connection, where the
/// request is parsed and routed on its own. End of file passes through.
///
/// A stream carries exactly one request: the head sent to the origin says
/// `Connection: close`, but an origin that ignores it would otherwise get
/// the client's next request unparsed, whatever host it names.
pub struct OneRequest<S> {
    inner: S,
    /// Body bytes still to pass; `None` after a chunked body's head (passes
    /// everything: see [`OneRequest::new`]).
    left: Option<u64>,
}

impl<S> OneRequest<S> {
    /// Wraps `inner`, whose next bytes are the rest of a request body of
    /// `body` framing of which `already` bytes were read with the head. A
    /// chunked body is not bounded (the connection is passed as it is).
    pub fn new(inner: S, body: RequestBody, already: usize) -> Self {
        let left = match body {
            RequestBody::Length(n) => Some(n.saturating_sub(already as u64)),
            RequestBody::Chunked => None,
        };
        Self { inner, left }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for OneRequest<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match this.left {
            None => Pin::new(&mut this.inner).poll_read(cx, buf),
            Some(0) => {
                let mut probe = [0u8; 1];
                let mut probe = ReadBuf::new(&mut probe);
                match Pin::new(&mut this.inner).poll_read(cx, &mut probe) {
                    Poll::Ready(Ok(())) if probe.filled().is_empty() => Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "a second request on a forwarded connection",
                    ))),
                    other => other,
                }
            }
            Some(left) => {
                let room = buf
                    .remaining()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                let mut part = ReadBuf::new(buf.initialize_unfilled_to(room));
                let polled = Pin::new(&mut this.inner).poll_read(cx, &mut part);
                let n = part.filled().len();
                if let Poll::Ready(Ok(())) = polled {
                    buf.advance(n);
                    this.left = Some(left - n as u64);
                }
                polled
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for OneRequest<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
        match read_request(&mut reader, credentials).await {
            Ok(r) => Ok(r),
            Err(RequestError::Http(e)) => Err(e),
            Err(RequestError::Io(e)) => panic!("in-memory reader failed: {e}"),
        }
    }

    fn forward_parts(request: ProxyRequest) -> (String, u16, String, Vec<u8>) {
        match request {
            ProxyRequest::Forward {
                host,
                port,
                head,
                leftover,
                ..
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

    #[tokio::test]
    async fn one_request_passes_the_body_then_refuses_a_second_request() {
        let (mut client, proxy_side) = tokio::io::duplex(1024);
        let mut side = OneRequest::new(proxy_side, RequestBody::Length(10), 4);
        client.write_all(b"567890GET http://other/").await.unwrap();
        let mut body = [0u8; 6];
        side.read_exact(&mut body).await.unwrap();
        assert_eq!(&body, b"567890");
        let err = side.read(&mut [0u8; 64]).await.expect_err("second request");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn one_request_passes_the_end_of_file() {
        let (client, proxy_side) = tokio::io::duplex(1024);
        let mut side = OneRequest::new(proxy_side, RequestBody::Length(0), 0);
        drop(client);
        assert_eq!(side.read(&mut [0u8; 64]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn one_request_does_not_bound_a_chunked_body() {
        let (mut client, proxy_side) = tokio::io::duplex(1024);
        let mut side = OneRequest::new(proxy_side, RequestBody::Chunked, 0);
        client.write_all(b"5\r\nhello\r\n0\r\n\r\n").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        side.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"5\r\nhello\r\n0\r\n\r\n");
    }

    #[tokio::test]
    async fn body_framing_is_read_from_the_head() {
        let body = |input: &'static [u8]| async move {
            match read(input, None).await {
                Ok(ProxyRequest::Forward { body, .. }) => Ok(body),
                Ok(other) => panic!("expected Forward, got {other:?}"),
                Err(e) => Err(e.status()),
            }
        };
        assert_eq!(
            body(b"GET http://h/ HTTP/1.1\r\n\r\n").await,
            Ok(RequestBody::Length(0))
        );
        assert_eq!(
            body(b"POST http://h/ HTTP/1.1\r\nContent-Length: 12\r\n\r\n").await,
            Ok(RequestBody::Length(12))
        );
        assert_eq!(
            body(b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n").await,
            Ok(RequestBody::Chunked)
        );
        assert_eq!(
            body(b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").await,
            Err(400)
        );
        assert_eq!(
            body(b"POST http://h/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n")
                .await,
            Err(400)
        );
        assert_eq!(
            body(b"POST http://h/ HTTP/1.1\r\nContent-Length: +3\r\n\r\n").await,
            Err(400)
        );
    }
}
