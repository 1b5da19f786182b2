//! The entry proxy ([`EntryProxy`]): SOCKS5 and HTTP listeners on loopback
//! that turn each client connection into a stream through the [`Entry`].
//! Accepting, the connection cap and refusals past it are the shared
//! [`accept_loop`](crate::accept::accept_loop).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::accept::{accept_loop, Cap, Stopped};

use super::{http, socks5, Entry, EntryConfig, EntryError};

/// Clients past `max_connections` waiting for a slot at once; more are
/// closed unanswered.
const WAITING_AT_MOST: usize = 256;

/// A running entry proxy with its SOCKS5, HTTP and WebView listeners.
pub struct EntryProxy {
    entry: Entry,
    socks_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    webview_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Accept loops still running.
    listening: Arc<AtomicUsize>,
    /// Notified (once, with a stored permit) when a listener is lost.
    lost: Arc<Notify>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Socks5,
    Http,
    /// HTTP without credentials, NWS names only ([`EntryConfig::webview_listen`]).
    WebView,
}

impl EntryProxy {
    /// Binds the configured listeners and starts serving. On error nothing
    /// is left running.
    pub async fn start(config: EntryConfig) -> Result<Self, EntryError> {
        let entry = Entry::new(config.clone()).await?;
        if let Some(addr) = config.public_address {
            if let Err(e) = entry.listen_public(addr).await {
                entry.shutdown().await;
                return Err(e);
            }
        }
        let cancel = CancellationToken::new();
        let cap = Cap {
            connections: config.max_connections,
            waiting: WAITING_AT_MOST,
            wait: config.handshake_timeout,
        };
        let limit = cap.semaphore();
        let listening = Arc::new(AtomicUsize::new(0));
        let mut proxy = Self {
            entry,
            socks_addr: None,
            http_addr: None,
            webview_addr: None,
            cancel,
            tasks: Vec::new(),
            listening,
            lost: Arc::new(Notify::new()),
        };
        for (addr, proto) in [
            (config.socks_listen, Protocol::Socks5),
            (config.http_listen, Protocol::Http),
            (config.webview_listen, Protocol::WebView),
        ] {
            let Some(addr) = addr else { continue };
            match proxy.listen(addr, proto, (cap, limit.clone())).await {
                Ok(local) => match proto {
                    Protocol::Socks5 => proxy.socks_addr = Some(local),
                    Protocol::Http => proxy.http_addr = Some(local),
                    Protocol::WebView => proxy.webview_addr = Some(local),
                },
                Err(e) => {
                    proxy.stop().await;
                    return Err(e);
                }
            }
        }
        Ok(proxy)
    }

    async fn listen(
        &mut self,
        addr: SocketAddr,
        proto: Protocol,
        cap: (Cap, Arc<Semaphore>),
    ) -> Result<SocketAddr, EntryError> {
        let listener =
            crate::accept::listen(addr).map_err(|source| EntryError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| EntryError::Bind { addr, source })?;
        self.listening.fetch_add(1, Ordering::Relaxed);
        let (serve_entry, refuse_entry) = (self.entry.clone(), self.entry.clone());
        let serve = move |sock, _peer| {
            let entry = serve_entry.clone();
            async move {
                match proto {
                    Protocol::Socks5 => serve_socks(&entry, sock).await,
                    Protocol::Http | Protocol::WebView => serve_http(&entry, sock, proto).await,
                }
            }
        };
        let refuse_client = move |sock, _peer| {
            let entry = refuse_entry.clone();
            async move { refuse(&entry, sock, proto).await }
        };
        let name = match proto {
            Protocol::Socks5 => "SOCKS5 proxy",
            Protocol::Http => "HTTP proxy",
            Protocol::WebView => "WebView proxy",
        };
        let (listening, lost) = (self.listening.clone(), self.lost.clone());
        let cancel = self.cancel.clone();
        self.tasks.push(tokio::spawn(async move {
            let stopped =
                accept_loop(listener, name, cancel, Some(cap), serve, refuse_client).await;
            listening.fetch_sub(1, Ordering::Relaxed);
            if stopped == Stopped::ListenerGone {
                log::warn!("{name}: start the proxy again to listen again");
                lost.notify_one();
            }
        }));
        Ok(local)
    }

    /// Whether every configured listener is still accepting connections.
    /// False once the OS has taken a listening socket away (iOS does so in
    /// the background); start the proxy again then.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed) == self.tasks.len()
    }

    /// Where the SOCKS5 proxy listens.
    pub fn socks_addr(&self) -> Option<SocketAddr> {
        self.socks_addr
    }

    /// Where the HTTP proxy listens.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Where the WebView listener listens ([`EntryConfig::webview_listen`]).
    pub fn webview_addr(&self) -> Option<SocketAddr> {
        self.webview_addr
    }

    /// Resolves once a listener has been lost (the OS closed or invalidated
    /// its socket; iOS does so to suspended apps), at once if that already
    /// happened; never if it does not. The proxy does not listen again by
    /// itself: stop it and start a new one on the same addresses. The future
    /// holds no borrow of the proxy.
    pub fn listener_lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let lost = self.lost.clone();
        async move { lost.notified().await }
    }

    /// Where the entry listens for exits' reverse connections (`CONNECTR`).
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.entry.public_addr()
    }

    /// The entry the proxy uses, for opening streams directly.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Stops listening, ends every client connection, disconnects relays.
    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.entry.shutdown().await;
    }
}

/// Answers a client past the connection cap: reads its request (credentials
/// are checked as usual, within the handshake timeout) and refuses it with
/// SOCKS5 reply 1 "general failure" or HTTP 503.
async fn refuse(entry: &Entry, mut sock: TcpStream, proto: Protocol) {
    entry.stats().refusals.count_code("too-many-clients");
    let creds = credentials(entry, proto);
    let deadline = entry.config.handshake_timeout;
    match proto {
        Protocol::Socks5 => {
            if let Ok(Ok(_)) =
                tokio::time::timeout(deadline, socks5::accept(&mut sock, creds)).await
            {
                let _ = socks5::reply(&mut sock, socks5::ReplyCode::GeneralFailure).await;
            }
        }
        Protocol::Http | Protocol::WebView => {
            if let Ok(Ok(_)) =
                tokio::time::timeout(deadline, http::read_request(&mut sock, creds)).await
            {
                let msg = "too many connections to the proxy; try again later";
                let _ = http::write_error(&mut sock, 503, msg).await;
            }
        }
    }
}

/// The credentials clients of a `proto` listener must present: the WebView
/// listener asks for none.
fn credentials(entry: &Entry, proto: Protocol) -> Option<&super::Credentials> {
    match proto {
        Protocol::WebView => None,
        Protocol::Socks5 | Protocol::Http => entry.config.credentials.as_ref(),
    }
}

async fn serve_socks(entry: &Entry, mut sock: TcpStream) {
    let creds = entry.config.credentials.as_ref();
    let (target, first) = match tokio::time::timeout(
        entry.config.handshake_timeout,
        socks5::accept(&mut sock, creds),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            log::info!("SOCKS5 client refused: {e}");
            return;
        }
        Err(_) => {
            log::info!("SOCKS5 client too slow to send its request");
            return;
        }
    };
    if entry.config.early_reply {
        return serve_early(
            entry,
            sock,
            Protocol::Socks5,
            target.host(),
            target.port(),
            first,
        )
        .await;
    }
    match entry.open(&target.host(), target.port()).await {
        Err(e) => {
            log::info!("SOCKS5 {target}: {e}");
            let _ = socks5::reply(&mut sock, e.socks_reply()).await;
        }
        Ok(stream) => {
            if socks5::reply(&mut sock, socks5::ReplyCode::Succeeded)
                .await
                .is_ok()
            {
                if let Err(r) = stream.run(&mut sock, first).await {
                    log::debug!("SOCKS5 {target}: stream ended: {r}");
                    reset(sock);
                }
            }
        }
    }
}

/// Serves one client of the HTTP proxy or (`proto` WebView) of the WebView
/// listener, which asks for no credentials and refuses hosts that are not
/// NWS names with 403.
async fn serve_http(entry: &Entry, mut sock: TcpStream, proto: Protocol) {
    let creds = credentials(entry, proto);
    let req = match tokio::time::timeout(
        entry.config.handshake_timeout,
        http::read_request(&mut sock, creds),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            log::info!("HTTP proxy client refused: {e}");
            if e.can_answer() {
                let _ = http::write_error(&mut sock, e.status(), &e.to_string()).await;
            }
            return;
        }
        Err(_) => {
            log::info!("HTTP proxy client too slow to send its request");
            let _ = http::write_error(&mut sock, 408, "request head not received in time").await;
            return;
        }
    };
    let (host, port) = (req.host().to_string(), req.port());
    if proto == Protocol::WebView {
        if let Err(e) = entry.check_nws_name(&host) {
            entry.stats().refusals.count_code(e.code());
            log::info!("WebView proxy {host}:{port}: {e}");
            let _ = http::write_error(&mut sock, e.http_status(), &e.to_string()).await;
            return;
        }
    }
    // A forwarded request is known before the stream opens: its head can
    // ride in the CONNECT (0-RTT). A CONNECT client waits for our 200.
    let (connect, mut first, body) = match req {
        http::ProxyRequest::Connect { leftover, .. } => (true, leftover, None),
        http::ProxyRequest::Forward {
            mut head,
            mut leftover,
            body,
            ..
        } => {
            if let http::RequestBody::Length(n) = body {
                // Bytes past the body are a pipelined second request: not
                // for this stream (see `http::OneRequest`).
                leftover.truncate(usize::try_from(n).unwrap_or(usize::MAX));
            }
            if body == http::RequestBody::Chunked && proto == Protocol::WebView {
                // The end of a chunked body is not tracked, so a second
                // request could follow it unparsed; a browser sends chunked
                // request bodies only over HTTP/2, which this is not.
                log::info!("WebView proxy {host}:{port}: chunked request body refused");
                let msg = "a chunked request body is not accepted here; send Content-Length";
                let _ = http::write_error(&mut sock, 411, msg).await;
                return;
            }
            let already = leftover.len();
            head.extend_from_slice(&leftover);
            (false, head, Some((body, already)))
        }
    };
    if connect && entry.config.early_reply {
        return serve_early(entry, sock, proto, host, port, first).await;
    }
    let early: &[u8] = if connect { &[] } else { &first };
    let stream = match entry.open_early(&host, port, early).await {
        Ok((s, sent)) => {
            first.drain(..sent);
            s
        }
        Err(e) => {
            log::info!("HTTP proxy {host}:{port}: {e}");
            let _ = http::write_error(&mut sock, e.http_status(), &e.to_string()).await;
            return;
        }
    };
    if connect && http::write_connect_established(&mut sock).await.is_err() {
        return;
    }
    let ran = match body {
        None => stream.run(&mut sock, first).await,
        Some((body, already)) => {
            let one = http::OneRequest::new(&mut sock, body, already);
            stream.run(one, first).await
        }
    };
    if let Err(r) = ran {
        log::debug!("HTTP proxy {host}:{port}: stream ended: {r}");
        reset(sock);
    }
}

/// How long an early-replied client's first bytes are waited for before the
/// stream opens without them (a protocol where the server speaks first).
const EARLY_WAIT: Duration = Duration::from_millis(30);

/// Largest number of a client's first bytes read for the `CONNECT`, in bytes
/// (a TLS ClientHello fits; what does not fit in the `CONNECT` follows it).
const EARLY_READ: usize = 16 * 1024;

/// A SOCKS5 or HTTP `CONNECT` client under [`EntryConfig::early_reply`]:
/// answered with success once the name routes, then its first bytes (read
/// for at most [`EARLY_WAIT`]) ride in the stream's `CONNECT`. A stream that
/// then fails to open resets the client connection.
///
/// [`EntryConfig::early_reply`]: super::EntryConfig::early_reply
async fn serve_early(
    entry: &Entry,
    mut sock: TcpStream,
    proto: Protocol,
    host: String,
    port: u16,
    mut first: Vec<u8>,
) {
    if let Err(e) = entry.check_route(&host) {
        entry.stats().refusals.count_code(e.code());
        log::info!("{proto:?} {host}:{port}: {e}");
        let _ = match proto {
            Protocol::Socks5 => socks5::reply(&mut sock, e.socks_reply()).await,
            Protocol::Http | Protocol::WebView => {
                http::write_error(&mut sock, e.http_status(), &e.to_string()).await
            }
        };
        return;
    }
    let answered = match proto {
        Protocol::Socks5 => socks5::reply(&mut sock, socks5::ReplyCode::Succeeded).await,
        Protocol::Http | Protocol::WebView => http::write_connect_established(&mut sock).await,
    };
    if answered.is_err() {
        return;
    }
    if first.is_empty() {
        first.resize(EARLY_READ, 0);
        let n = match tokio::time::timeout(EARLY_WAIT, sock.read(&mut first)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return,
            Err(_) => 0,
        };
        first.truncate(n);
    }
    let stream = match entry.open_early(&host, port, &first).await {
        Ok((s, sent)) => {
            log::debug!(
                "{proto:?} {host}:{port}: replied early; {sent} of the client's first {} bytes \
                 rode in the CONNECT",
                first.len()
            );
            first.drain(..sent);
            s
        }
        Err(e) => {
            log::info!("{proto:?} {host}:{port} (replied early): {e}");
            reset(sock);
            return;
        }
    };
    if let Err(r) = stream.run(&mut sock, first).await {
        log::debug!("{proto:?} {host}:{port}: stream ended: {r}");
        reset(sock);
    }
}

/// Closes a client connection whose stream was aborted with a TCP reset
/// (`SO_LINGER` 0) rather than a normal close: the client must not take a
/// truncated body for a complete one, and bytes still queued for it are
/// dropped instead of trickling out after the stream is gone.
fn reset(sock: TcpStream) {
    // Deprecated because a non-zero linger blocks the dropping thread; a
    // zero one resets at once and never blocks.
    #[allow(deprecated)]
    let lingered = sock.set_linger(Some(std::time::Duration::ZERO));
    if let Err(e) = lingered {
        log::debug!("cannot reset the client connection: {e}");
    }
    drop(sock);
}
