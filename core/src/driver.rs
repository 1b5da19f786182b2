//! The thin async driver around the sans-IO [`engine`](crate::engine): it
//! moves bytes between a local socket (the entry's client, or the exit's
//! backend) and the engine, seals and publishes the engine's messages, and
//! opens and feeds it the peer's events.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Data and `CLOSE` messages of finished version-2 streams, first sends.
    pub segments_sent: AtomicU64,
    /// Data and `CLOSE` messages of finished version-2 streams sent again
    /// (retransmissions and split resends).
    pub segments_resent: AtomicU64,
}

impl Stats {
    /// Adds a finished stream's message counts and logs them (debug).
    fn record(&self, engine: &Stream, end: End) -> End {
        let (sent, resent) = engine.segment_counts();
        self.segments_sent.fetch_add(sent, Ordering::Relaxed);
        self.segments_resent.fetch_add(resent, Ordering::Relaxed);
        log::debug!(
            "stream {}: ended ({end:?}); {sent} data messages sent, {resent} sent again",
            engine.key()
        );
        end
    }
}

/// One stream counted in [`Stats::streams_open`] until dropped. A stream
/// stops counting when it only lingers after closing.
pub(crate) struct OpenSlot(Arc<Stats>);

impl OpenSlot {
    /// Counts a new open stream.
    pub fn new(stats: Arc<Stats>) -> Self {
        stats.streams_open.fetch_add(1, Ordering::Relaxed);
        stats.streams_total.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
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
        rx: mpsc::Receiver<Event>,
        cipher: Cipher,
        peer: PublicKey,
    },
    /// Messages the exit's dispatcher already opened.
    Messages(mpsc::Receiver<Message>),
}

/// Messages a stream's inbox holds before further ones are dropped (the
/// peer retransmits them): the stream takes them as fast as they come, so
/// only a flood fills it.
pub(crate) const STREAM_INBOX: usize = 256;

/// Hands `msg` to a stream's inbox without waiting; a full inbox drops it.
pub(crate) fn offer(tx: &mpsc::Sender<Message>, msg: Message) {
    if let Err(mpsc::error::TrySendError::Full(m)) = tx.try_send(msg) {
        log::debug!("stream {}: inbox full, {} dropped", m.key, m.kind);
    }
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

/// A stream with everything it needs to run: the engine, the way to the
/// peer, and what must live as long as the stream (its route, say), which
/// is dropped only after lingering.
pub(crate) struct Conn {
    pub engine: Stream,
    pub link: Link,
    pub inbox: Inbox,
    pub keep: Box<dyn std::any::Any + Send>,
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

/// Most bytes a legacy stream (no flow control) may hold for a local socket
/// that does not read; past it the stream is aborted rather than grow.
const LEGACY_DELIVERY_CAP: usize = 8 * 1024 * 1024;

/// Bytes the engine delivered that the local socket has not taken yet, and
/// whether the peer's half-close is still to be applied after them. Writing
/// happens in the driver's `select!`, so a local reader that stalls never
/// stops timers, acknowledgements or the peer's `ERROR` from being handled;
/// for a version-2 stream the engine's window bounds it.
#[derive(Default)]
struct Delivery {
    chunks: std::collections::VecDeque<Vec<u8>>,
    /// Bytes of the first chunk already written.
    offset: usize,
    bytes: usize,
    shutdown: bool,
}

impl Delivery {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Writes some of the held bytes; returns how many.
    async fn write_some<W: AsyncWrite + Unpin>(
        &mut self,
        socket: &mut W,
    ) -> std::io::Result<usize> {
        let Some(first) = self.chunks.front() else {
            return std::future::pending().await;
        };
        let n = socket.write(&first[self.offset..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        Ok(n)
    }

    /// Marks `n` bytes written.
    fn advance(&mut self, n: usize) {
        self.offset += n;
        self.bytes -= n;
        if self.chunks.front().is_some_and(|c| self.offset >= c.len()) {
            self.chunks.pop_front();
            self.offset = 0;
        }
    }
}

/// Publishes the engine's queued messages and queues its delivered bytes
/// for the local socket. Returns `Some(end)` when the stream is over.
///
/// A failed publish is a lost message for a version-2 stream (it is
/// retransmitted); a legacy stream cannot recover and ends.
async fn flush(engine: &mut Stream, link: &Link, delivery: &mut Delivery) -> Option<End> {
    while let Some(out) = engine.poll_output() {
        match out {
            Output::Publish(m) => {
                if let Err(e) = link.send(&m).await {
                    if engine.dialect() == Dialect::V2 {
                        log::debug!(
                            "stream {}: {} not published ({e}); will retry",
                            engine.key(),
                            m.kind
                        );
                        continue;
                    }
                    log::warn!("stream {}: cannot publish {}: {e}", engine.key(), m.kind);
                    let reason = ErrorReason::Other("relay-failure".into());
                    engine.abort(reason.clone());
                    return Some(End::Aborted(reason));
                }
            }
            Output::Deliver(bytes) => {
                delivery.bytes += bytes.len();
                delivery.chunks.push_back(bytes);
                if engine.dialect() == Dialect::Legacy && delivery.bytes > LEGACY_DELIVERY_CAP {
                    log::warn!(
                        "stream {}: local reader too slow for a legacy peer ({} bytes held), aborting",
                        engine.key(),
                        delivery.bytes
                    );
                    return Some(abort_and_tell(engine, link, "overflow").await);
                }
            }
            Output::PeerFinished => delivery.shutdown = true,
            Output::Aborted(reason) | Output::Refused(reason) => {
                return Some(End::Aborted(reason));
            }
            Output::Opened => {}
        }
    }
    None
}

/// Aborts the stream with `reason` and publishes the engine's last
/// messages (its `ERROR`) before ending.
async fn abort_and_tell(engine: &mut Stream, link: &Link, reason: &str) -> End {
    let reason = ErrorReason::Other(reason.into());
    engine.abort(reason.clone());
    while let Some(out) = engine.poll_output() {
        if let Output::Publish(m) = out {
            let _ = link.send(&m).await;
        }
    }
    End::Aborted(reason)
}

/// Publishes the engine's messages until it reports the open result
/// (entry side, or an exit's early refusal). Waits at most until `deadline`.
#[cfg(feature = "entry")]
pub(crate) async fn wait_open(
    engine: &mut Stream,
    link: &Link,
    inbox: &mut Inbox,
    deadline: tokio::time::Instant,
) -> Result<(), Option<ErrorReason>> {
    loop {
        while let Some(out) = engine.poll_output() {
            match out {
                Output::Publish(m) => {
                    if let Err(e) = link.send(&m).await {
                        log::debug!("stream {}: {} not published: {e}", engine.key(), m.kind);
                    }
                }
                Output::Opened => return Ok(()),
                Output::Refused(r) | Output::Aborted(r) => return Err(Some(r)),
                Output::Deliver(_) | Output::PeerFinished => {}
            }
        }
        let timer = engine.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            m = inbox.next() => match m {
                Some(m) => {
                    if let Err(e) = engine.handle_message(m, Instant::now()) {
                        log::debug!("{e}");
                    }
                }
                None => return Err(Some(ErrorReason::Other("route-closed".into()))),
            },
            _ = sleep_until_opt(timer) => engine.handle_timeout(Instant::now()),
            _ = tokio::time::sleep_until(deadline) => return Err(None),
        }
    }
}

/// Sleeps until `t`, or forever when there is no timer.
async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Runs an open stream until it ends: local bytes go to the peer as far as
/// the engine takes them (a full window stops reading the socket), the
/// peer's bytes go to the local socket, end of file becomes `CLOSE`, timers
/// drive retransmission, and a stream with no event at all for
/// `idle_timeout` is aborted.
///
/// `first` are bytes to send before reading the socket (an HTTP request head
/// already read by the proxy, for instance).
pub(crate) async fn pump<S>(
    conn: Conn,
    socket: S,
    first: Vec<u8>,
    idle_timeout: Duration,
    slot: OpenSlot,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Conn {
        mut engine,
        link,
        mut inbox,
        keep,
    } = conn;
    let stats = slot.0.clone();
    let (mut rd, mut wr) = tokio::io::split(socket);
    let mut buf = vec![0u8; READ_CHUNK];
    stats
        .bytes_sent
        .fetch_add(first.len() as u64, Ordering::Relaxed);
    // Bytes read from the socket that the engine has not taken yet.
    let mut pending = first;
    let mut local_eof = false;
    let mut delivery = Delivery::default();
    loop {
        let now = Instant::now();
        if let Some(limit) = link.transport.content_limit() {
            engine.limit_segment(crate::protocol::max_data_for_content(limit), now);
        }
        if !pending.is_empty() && engine.send_capacity() > 0 {
            match engine.write(&pending, now) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(_) => pending.clear(),
            }
        }
        if local_eof && pending.is_empty() && !engine.is_finished() {
            engine.finish(now);
        }
        if let Some(end) = flush(&mut engine, &link, &mut delivery).await {
            return stats.record(&engine, end);
        }
        if engine.is_closed() {
            return stats.record(&engine, End::Closed);
        }
        if delivery.is_empty() && delivery.shutdown {
            delivery.shutdown = false;
            let _ = wr.shutdown().await;
        }
        if engine.is_lingering() && delivery.is_empty() {
            // Done for the local side: release the socket and the caller, and
            // acknowledge the peer's last retransmissions in the background.
            stats.record(&engine, End::Closed);
            drop((rd, wr, slot));
            tokio::spawn(async move {
                linger(engine, link, inbox).await;
                drop(keep);
            });
            return End::Closed;
        }
        if local_eof && engine.dialect() == Dialect::Legacy {
            // A legacy peer has no close message: the local side ending is the end.
            return stats.record(&engine, End::Closed);
        }
        let can_read = !local_eof && pending.is_empty() && engine.send_capacity() > 0;
        let timer = engine.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = delivery.write_some(&mut wr), if !delivery.is_empty() => match r {
                Ok(n) => {
                    delivery.advance(n);
                    engine.consumed(n);
                    stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    log::debug!("stream {}: local write failed: {e}", engine.key());
                    let end = abort_and_tell(&mut engine, &link, "connection-reset").await;
                    return stats.record(&engine, end);
                }
            },
            r = rd.read(&mut buf), if can_read => match r {
                Ok(0) | Err(_) => local_eof = true,
                Ok(n) => {
                    stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                    pending.extend_from_slice(&buf[..n]);
                }
            },
            m = inbox.next() => match m {
                Some(m) => {
                    if let Err(e) = engine.handle_message(m, Instant::now()) {
                        log::warn!("stream {}: {e}", engine.key());
                    }
                }
                None => {
                    let end = End::Aborted(ErrorReason::Other("route-closed".into()));
                    return stats.record(&engine, end);
                }
            },
            _ = sleep_until_opt(timer) => engine.handle_timeout(Instant::now()),
            _ = tokio::time::sleep(idle_timeout) => {
                log::info!("stream {}: idle for {idle_timeout:?}, aborting", engine.key());
                engine.abort(ErrorReason::Timeout);
                let _ = flush(&mut engine, &link, &mut delivery).await;
                return stats.record(&engine, End::Aborted(ErrorReason::Timeout));
            }
        }
    }
}

/// Keeps a finished stream (socket closed, no longer counted as open) until
/// it has acknowledged the peer's last retransmissions.
async fn linger(mut engine: Stream, link: Link, mut inbox: Inbox) {
    loop {
        while let Some(out) = engine.poll_output() {
            if let Output::Publish(m) = out {
                let _ = link.send(&m).await;
            }
        }
        if engine.is_closed() {
            return;
        }
        let timer = engine.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            m = inbox.next() => match m {
                Some(m) => {
                    let _ = engine.handle_message(m, Instant::now());
                }
                None => return,
            },
            _ = sleep_until_opt(timer) => engine.handle_timeout(Instant::now()),
        }
    }
}
