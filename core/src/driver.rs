//! The thin async driver around the sans-IO [`engine`](crate::engine): it
//! moves bytes between a local socket (the entry's client, or the exit's
//! backend) and the engine, seals and publishes the engine's messages, and
//! opens and feeds it the peer's events.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nostr::{Event, Keys, PublicKey, RelayUrl};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::engine::{Dialect, Output, Stream};
use crate::protocol::{build_stream_event, Cipher, ErrorReason, Message};
use crate::transport::{Transport, TransportError};

/// Counters shared by every stream of an entry or exit.
#[derive(Debug, Default)]
pub struct Stats {
    /// Streams open now.
    pub streams_open: AtomicUsize,
    /// Streams opened since start.
    pub streams_total: AtomicU64,
    /// Bytes read from local sockets and sent to peers.
    pub bytes_sent: AtomicU64,
    /// Bytes received from peers and written to local sockets.
    pub bytes_received: AtomicU64,
}

/// Everything one stream needs to talk to its peer through relays.
#[derive(Clone)]
pub(crate) struct Link {
    pub transport: Transport,
    /// Our signing keys: an entry stream's ephemeral keys, or the exit's keys.
    pub keys: Keys,
    pub peer: PublicKey,
    /// The stream's conversation key, derived once.
    pub cipher: Cipher,
    /// Relays the stream publishes to.
    pub relays: Vec<RelayUrl>,
}

impl Link {
    /// Seals, signs and publishes one message to the peer.
    pub async fn send(&self, msg: &Message) -> Result<(), TransportError> {
        let content = self
            .cipher
            .seal(msg)
            .map_err(|e| TransportError::Pool(e.to_string()))?;
        let event = build_stream_event(&self.keys, &self.peer, content)
            .map_err(|e| TransportError::Pool(e.to_string()))?;
        self.transport.publish(&event, &self.relays).await
    }
}

/// Where a stream's incoming messages come from.
pub(crate) enum Inbox {
    /// Raw events routed to an entry stream's ephemeral key; opened here.
    Events {
        rx: mpsc::UnboundedReceiver<Event>,
        cipher: Cipher,
        peer: PublicKey,
    },
    /// Messages the exit's dispatcher already opened.
    Messages(mpsc::UnboundedReceiver<Message>),
}

impl Inbox {
    /// Next message from the peer; `None` when the route is gone. Events
    /// from another author or that do not decrypt are dropped with a log line.
    pub async fn next(&mut self) -> Option<Message> {
        match self {
            Inbox::Messages(rx) => rx.recv().await,
            Inbox::Events { rx, cipher, peer } => loop {
                let ev = rx.recv().await?;
                if ev.pubkey != *peer {
                    log::warn!(
                        "event {} from unexpected author {}: dropped",
                        ev.id,
                        ev.pubkey
                    );
                    continue;
                }
                match cipher.open(&ev.content) {
                    Ok(m) => return Some(m),
                    Err(e) => log::warn!("event {}: {e}: dropped", ev.id),
                }
            },
        }
    }
}

/// How a pumped stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// Both directions finished (v2), or the local side ended (legacy).
    Closed,
    /// The stream was aborted for this reason.
    Aborted(ErrorReason),
}

/// Size of one read from the local socket, in bytes.
const READ_CHUNK: usize = 64 * 1024;

/// Publishes the engine's queued messages and applies its other outputs to
/// the local socket. Returns `Some(end)` when the stream is over.
async fn flush<W: AsyncWrite + Unpin>(
    engine: &mut Stream,
    link: &Link,
    socket: &mut W,
    stats: &Stats,
) -> Option<End> {
    while let Some(out) = engine.poll_output() {
        match out {
            Output::Publish(m) => {
                if let Err(e) = link.send(&m).await {
                    log::warn!("stream {}: cannot publish {}: {e}", engine.key(), m.kind);
                    engine.abort(ErrorReason::Other("relay-failure".into()));
                    return Some(End::Aborted(ErrorReason::Other("relay-failure".into())));
                }
            }
            Output::Deliver(bytes) => {
                if let Err(e) = socket.write_all(&bytes).await {
                    log::debug!("stream {}: local write failed: {e}", engine.key());
                    engine.abort(ErrorReason::Other("connection-reset".into()));
                    // Tell the peer before ending.
                    while let Some(Output::Publish(m)) = engine.poll_output() {
                        let _ = link.send(&m).await;
                    }
                    return Some(End::Aborted(ErrorReason::Other("connection-reset".into())));
                }
                stats
                    .bytes_received
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Output::PeerFinished => {
                let _ = socket.shutdown().await;
            }
            Output::Aborted(reason) | Output::Refused(reason) => {
                return Some(End::Aborted(reason));
            }
            Output::Opened => {}
        }
    }
    None
}

/// Runs an open stream until it ends: local bytes go to the peer, the peer's
/// bytes to the local socket, end of file becomes `CLOSE`, and an idle stream
/// (nothing either way for `idle_timeout`) is aborted.
///
/// `first` are bytes to send before reading the socket (an HTTP request head
/// already read by the proxy, for instance).
pub(crate) async fn pump<S>(
    mut engine: Stream,
    link: Link,
    mut inbox: Inbox,
    socket: S,
    first: Vec<u8>,
    idle_timeout: Duration,
    stats: Arc<Stats>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(socket);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut local_eof = false;
    if !first.is_empty() {
        stats
            .bytes_sent
            .fetch_add(first.len() as u64, Ordering::Relaxed);
        let _ = engine.write(&first);
    }
    loop {
        if let Some(end) = flush(&mut engine, &link, &mut wr, &stats).await {
            return end;
        }
        if engine.is_closed() {
            return End::Closed;
        }
        if local_eof && engine.dialect() == Dialect::Legacy {
            // A legacy peer has no close message: the local side ending is the end.
            return End::Closed;
        }
        tokio::select! {
            r = rd.read(&mut buf), if !local_eof => match r {
                Ok(0) | Err(_) => {
                    local_eof = true;
                    engine.finish();
                }
                Ok(n) => {
                    stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                    if engine.write(&buf[..n]).is_err() {
                        local_eof = true;
                    }
                }
            },
            m = inbox.next() => match m {
                Some(m) => {
                    if let Err(e) = engine.handle_message(m) {
                        log::warn!("stream {}: {e}", engine.key());
                    }
                }
                None => return End::Aborted(ErrorReason::Other("route-closed".into())),
            },
            _ = tokio::time::sleep(idle_timeout) => {
                log::info!("stream {}: idle for {idle_timeout:?}, aborting", engine.key());
                engine.abort(ErrorReason::Timeout);
                let _ = flush(&mut engine, &link, &mut wr, &stats).await;
                return End::Aborted(ErrorReason::Timeout);
            }
        }
    }
}
