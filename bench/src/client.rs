//! The HTTP client: one hyper 1 HTTP/1.1 connection per request, either
//! straight to the backend (the direct-TCP baseline), to the entry's HTTP
//! proxy with an absolute-form request (`GET http://<name>.nostr/small`), or
//! through the entry's SOCKS5 port (RFC 1928 `CONNECT` to the domain name
//! `<name>.nostr` port 80, unresolved, with RFC 1929 username/password) and
//! then an origin-form request (`GET /small`). Through the entry each request
//! is one new NWS stream.
//!
//! Each request measures time to first byte (from before the TCP connect,
//! so including any SOCKS5 handshake, until the response head is parsed) and total time (until the last body
//! byte), and checks the body byte for byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_socks::tcp::Socks5Stream;

use crate::backend::{BulkData, ChunkedBody, SMALL_BODY};

/// The port a SOCKS5 request asks the entry for (the `.nostr` name's HTTP
/// port).
const SOCKS_TARGET_PORT: u16 = 80;

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The TCP address to connect to (backend or entry proxy).
    pub connect: SocketAddr,
    /// The origin's authority (`Host` header; in the URI when through an
    /// HTTP proxy; the SOCKS5 target host name through a SOCKS5 proxy).
    pub authority: String,
    /// How the request reaches the origin from `connect`.
    pub route: Route,
}

/// How a [`Target`]'s requests reach the origin.
#[derive(Debug, Clone)]
pub enum Route {
    /// `connect` is the origin itself (origin-form request target).
    Direct,
    /// `connect` is an HTTP proxy (absolute-form request target).
    HttpProxy {
        /// `Proxy-Authorization` header value, if the proxy wants one.
        auth: Option<String>,
    },
    /// `connect` is a SOCKS5 proxy, asked for the authority's host name
    /// (not resolved locally) on port 80 with username/password
    /// authentication (RFC 1929); then an origin-form request.
    Socks5 {
        /// The RFC 1929 user name.
        username: String,
        /// The RFC 1929 password.
        password: String,
    },
}

impl Target {
    /// Requests straight to the backend at `addr`.
    pub fn direct(addr: SocketAddr) -> Self {
        Self {
            connect: addr,
            authority: addr.to_string(),
            route: Route::Direct,
        }
    }

    /// Requests to `host` through the HTTP proxy at `proxy`, with Basic
    /// credentials `user:pass` when given.
    pub fn via_proxy(proxy: SocketAddr, host: &str, credentials: Option<&str>) -> Self {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine as _;
        Self {
            connect: proxy,
            authority: host.to_string(),
            route: Route::HttpProxy {
                auth: credentials.map(|c| format!("Basic {}", STANDARD.encode(c))),
            },
        }
    }

    /// Requests to `host` port 80 through the SOCKS5 proxy at `proxy`,
    /// authenticating with `credentials` (`user:pass`, split at the first
    /// colon).
    pub fn via_socks5(proxy: SocketAddr, host: &str, credentials: &str) -> Self {
        let (username, password) = credentials.split_once(':').unwrap_or((credentials, ""));
        Self {
            connect: proxy,
            authority: host.to_string(),
            route: Route::Socks5 {
                username: username.to_string(),
                password: password.to_string(),
            },
        }
    }
}

/// What a request expects back (checked; any difference is an error).
#[derive(Clone)]
pub enum Expect {
    /// `200` with [`SMALL_BODY`].
    Small,
    /// `200` with exactly this data.
    Bulk(BulkData),
    /// `200` with the decimal byte count the backend received, then `\n`.
    UploadAck(usize),
}

/// The timings of one successful request.
#[derive(Debug, Clone, Copy)]
pub struct Fetched {
    /// The TCP connect alone, without any SOCKS5 handshake (a dropped SYN
    /// shows here as about 1 s).
    pub connect: Duration,
    /// From before the TCP connect until the response head was parsed.
    pub ttfb: Duration,
    /// From before the TCP connect until the last body byte.
    pub total: Duration,
}

type ReqBody = Either<Empty<Bytes>, ChunkedBody>;

/// Sends one request on a new connection and reads the whole response,
/// giving up after `timeout`. `upload` is sent as the body of a `POST`;
/// without it the request is a `GET`.
pub async fn fetch(
    target: &Target,
    path: &str,
    upload: Option<Bytes>,
    expect: &Expect,
    timeout: Duration,
) -> Result<Fetched, String> {
    match tokio::time::timeout(timeout, fetch_inner(target, path, upload, expect)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no complete response within {timeout:?}")),
    }
}

async fn fetch_inner(
    target: &Target,
    path: &str,
    upload: Option<Bytes>,
    expect: &Expect,
) -> Result<Fetched, String> {
    let start = Instant::now();
    let tcp = TcpStream::connect(target.connect)
        .await
        .map_err(|e| format!("connect {}: {e}", target.connect))?;
    let connect = start.elapsed();
    let _ = tcp.set_nodelay(true);
    let tcp = match &target.route {
        Route::Socks5 { username, password } => Socks5Stream::connect_with_password_and_socket(
            tcp,
            (target.authority.as_str(), SOCKS_TARGET_PORT),
            username,
            password,
        )
        .await
        .map_err(|e| format!("socks5 connect via {}: {e}", target.connect))?
        .into_inner(),
        Route::Direct | Route::HttpProxy { .. } => tcp,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, ReqBody>(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn_task = tokio::spawn(conn);
    let uri = match &target.route {
        Route::HttpProxy { .. } => format!("http://{}{path}", target.authority),
        Route::Direct | Route::Socks5 { .. } => path.to_string(),
    };
    let (method, body) = match upload {
        Some(data) => (Method::POST, Either::Right(ChunkedBody::new(data))),
        None => (Method::GET, Either::Left(Empty::new())),
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, &target.authority);
    if let Route::HttpProxy { auth: Some(auth) } = &target.route {
        builder = builder.header("proxy-authorization", auth);
    }
    let req = builder.body(body).map_err(|e| format!("request: {e}"))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let ttfb = start.elapsed();
        let status = resp.status();
        let mut body = resp.into_body();
        let mut received: Vec<u8> = Vec::new();
        let mut count = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body after {count} bytes: {e}"))?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            match expect {
                Expect::Bulk(data) if status.is_success() => {
                    if !data.matches_at(count, &chunk) {
                        return Err(format!("wrong body bytes at offset {count}"));
                    }
                }
                _ => {
                    if received.len() < 4096 {
                        received.extend_from_slice(&chunk);
                    }
                }
            }
            count += chunk.len();
        }
        let total = start.elapsed();
        if !status.is_success() {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&received).trim()
            ));
        }
        let ok = match expect {
            Expect::Small => received == SMALL_BODY,
            Expect::Bulk(data) => count == data.len(),
            Expect::UploadAck(n) => received == format!("{n}\n").as_bytes(),
        };
        if !ok {
            return Err(format!(
                "unexpected body ({count} bytes: {:?})",
                String::from_utf8_lossy(&received[..received.len().min(80)])
            ));
        }
        Ok(Fetched {
            connect,
            ttfb,
            total,
        })
    }
    .await;
    conn_task.abort();
    result
}
