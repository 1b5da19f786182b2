//! An embedded Nostr relay (nostr-relay-builder) for local use: `nws relay`,
//! `nws demo`, and tests. It keeps events in memory only.
//!
//! The builder's default rate limit (60 events per minute per connection) is
//! far below what one stream needs, so it is raised to limits that suit a
//! relay on loopback.

use std::net::SocketAddr;

use nostr::RelayUrl;
use nostr_relay_builder::prelude::{LocalRelay, RateLimit, RelayBuilder};
use nws_core::accept::accept_loop;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Events per minute one connection may publish to the embedded relay.
pub const EVENTS_PER_MINUTE: u32 = 1_000_000;
/// Subscriptions one connection may hold on the embedded relay.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;

/// Errors starting the embedded relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay could not listen on the address.
    #[error("cannot start the embedded relay on {addr}: {reason}")]
    Start {
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
}

/// A running embedded relay; it stops when [`EmbeddedRelay::shutdown`] is
/// called or the value is dropped.
#[derive(Debug)]
pub struct EmbeddedRelay {
    relay: LocalRelay,
    url: RelayUrl,
    accept: tokio::task::JoinHandle<nws_core::accept::Stopped>,
}

impl EmbeddedRelay {
    /// Starts a relay listening on `addr` (port 0 picks a free port).
    ///
    /// Connections are accepted here rather than by nostr-relay-builder so
    /// that they get `TCP_NODELAY`: without it every small websocket frame
    /// waits for the peer's delayed acknowledgement (about 40 ms on Linux),
    /// which dominated both latency and throughput.
    pub async fn start(addr: SocketAddr) -> Result<Self, RelayError> {
        Self::start_with(addr, Self::builder()).await
    }

    /// The relay builder `start` uses: memory only, limits raised for streams.
    /// Add policies to it (a counting write policy in the benchmark, say)
    /// and pass it to [`EmbeddedRelay::start_with`].
    pub fn builder() -> RelayBuilder {
        RelayBuilder::default().rate_limit(RateLimit {
            max_reqs: MAX_SUBSCRIPTIONS,
            notes_per_minute: EVENTS_PER_MINUTE,
        })
    }

    /// Starts a relay from `builder` listening on `addr` (port 0 picks a
    /// free port); the builder's own address and port are replaced.
    pub async fn start_with(addr: SocketAddr, builder: RelayBuilder) -> Result<Self, RelayError> {
        let err = |reason: String| RelayError::Start { addr, reason };
        let listener = nws_core::accept::listen(addr).map_err(|e| err(e.to_string()))?;
        let local = listener.local_addr().map_err(|e| err(e.to_string()))?;
        let relay = LocalRelay::new(builder.addr(local.ip()).port(local.port()));
        let url = RelayUrl::parse(&format!("ws://{local}")).map_err(|e| err(e.to_string()))?;
        let for_serve = relay.clone();
        let accept = tokio::spawn(accept_loop(
            listener,
            "relay",
            CancellationToken::new(),
            None,
            move |sock, peer| serve(sock, peer, for_serve.clone()),
            |_, _| async {},
        ));
        Ok(Self { relay, url, accept })
    }

    /// The relay's websocket URL (`ws://127.0.0.1:PORT`).
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// Stops accepting connections and ends the open ones.
    pub fn shutdown(&self) {
        self.accept.abort();
        self.relay.shutdown();
    }
}

impl Drop for EmbeddedRelay {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serves one connection: the websocket upgrade here (so that the socket
/// keeps `TCP_NODELAY`), then the relay takes it.
async fn serve(mut stream: TcpStream, peer: SocketAddr, relay: LocalRelay) {
    match upgrade(&mut stream).await {
        Ok(()) => {
            if let Err(e) = relay.take_connection(stream, peer).await {
                log::debug!("relay: connection from {peer}: {e}");
            }
        }
        Err(e) => log::debug!("relay: bad websocket handshake from {peer}: {e}"),
    }
}

/// Answers a websocket upgrade request (RFC 6455 §4.2) on `stream`, leaving
/// it ready for frames; a request that is not an upgrade gets 400.
async fn upgrade(stream: &mut TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut head = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    // The client sends nothing after its request until it has our answer, so
    // reading byte by byte up to the blank line consumes exactly the request.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || stream.read(&mut byte).await? == 0 {
            return Err(bad("request head too long or cut short"));
        }
        head.push(byte[0]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&head).map_err(|e| bad(&e.to_string()))?;
    let key = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .map(|h| h.value);
    let Some(key) = key else {
        let body = "this is a Nostr relay: connect with a websocket\n";
        let resp = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(resp.as_bytes()).await?;
        return Err(bad("not a websocket upgrade"));
    };
    let accept = tungstenite::handshake::derive_accept_key(key);
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(resp.as_bytes()).await
}
