//! The thin async driver around the sans-IO [`engine`](crate::engine): it
//! moves bytes between a local socket (the entry's client, or the exit's
//! backend) and the engine, seals and publishes the engine's messages
//! through the stream's [`Link`], and feeds it the peer's messages from its
//! [`Inbox`].
//!
//! Every output of the engine goes through one place, [`Driver::drain`],
//! whatever the stream's state: messages are published (a publish that no
//! relay takes tells the engine the path is down), delivered bytes are
//! queued for the local socket, and the open result and the end are
//! recorded. [`wait_open`] and [`pump`] only differ in what they wait for.

// Only the entry and the exit drive streams; a build with neither (the
// embedded relay's) uses just the accept loop and the transport.
#![cfg_attr(not(any(feature = "entry", feature = "exit")), allow(dead_code))]

use std::time::{Duration, Instant};

use nostr::{Event, PublicKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::engine::{Dialect, Output, Stream};
use crate::link::Link;
use crate::pacing::Pacer;
use crate::protocol::{open_stream_event, Cipher, ErrorReason, Message, Sender};
use crate::stats::OpenSlot;

/// Where a stream's incoming messages come from.
pub(crate) enum Inbox {
    /// Raw events routed to an entry stream's ephemeral key; opened and
    /// proven here ([`open_stream_event`]).
    // Only the entry makes these; an exit-only build still matches them.
    #[cfg_attr(not(feature = "entry"), allow(dead_code))]
    Events {
        rx: mpsc::Receiver<Event>,
        cipher: Cipher,
        peer: PublicKey,
    },
    /// Messages a [`Demux`](crate::demux::Demux) already opened.
    Messages(mpsc::Receiver<Message>),
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
                match open_stream_event(cipher, &ev, Sender::Exit) {
                    Ok(m) => return Some(m),
                    Err(e) => log::warn!("event {}: {e}: dropped", ev.id),
                }
            },
        }
    }
}

/// Why a stream ended without both directions closing cleanly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The stream was refused or aborted with a reason that crossed the
    /// wire: the peer's `ERROR`, or ours (timeout, protocol error, local
    /// socket reset), which the peer was sent.
    #[error("stream aborted: {0}")]
    Aborted(ErrorReason),
    /// No relay took a message of a legacy stream: the legacy format cannot
    /// retransmit, so the stream cannot go on.
    #[error("no relay took a message of this legacy-format stream")]
    RelayFailure,
    /// A legacy peer (no flow control) sent more than the local socket
    /// read: more than 8 MiB were held for it.
    #[error("the local reader is too slow for a legacy-format peer")]
    LegacyOverflow,
    /// The local socket failed while a raw reverse-connect stream copied bytes.
    #[error("local connection failed: {0}")]
    Io(std::io::ErrorKind),
    /// The entry or exit is shutting down: the stream's route is gone.
    #[error("the node is shutting down")]
    Shutdown,
}

/// How a pumped stream ended.
pub(crate) type End = Result<(), StreamError>;

/// What must live as long as a stream (its route, its registration), told
/// when the stream starts to linger (done both ways, only acknowledging the
/// peer's last retransmissions) and dropped after.
pub(crate) trait Keep: Send {
    /// The stream is done and lingers; by default nothing changes.
    fn lingering(&mut self) {}
}

impl Keep for crate::demux::Registration {}

/// A stream with everything it needs to run: the engine, the way to the
/// peer, its inbox, bytes already delivered for the local socket, and what
/// must live as long as the stream ([`Keep`]), which is dropped only after
/// lingering.
pub(crate) struct Conn {
    pub engine: Stream,
    pub link: Link,
    pub inbox: Inbox,
    pub keep: Box<dyn Keep>,
    delivery: Delivery,
}

impl Conn {
    /// A stream ready to be driven.
    pub fn new(engine: Stream, link: Link, inbox: Inbox, keep: Box<dyn Keep>) -> Self {
        Self {
            engine,
            link,
            inbox,
            keep,
            delivery: Delivery::default(),
        }
    }

    /// The stream's key.
    pub fn key(&self) -> &str {
        self.engine.key()
    }

    /// The pacing of the stream's data events while it speaks the legacy
    /// format (unused in version 2).
    pub fn legacy_pacer(&mut self) -> &mut Pacer {
        &mut self.delivery.pacer
    }
}

/// Publishes whatever `engine` has queued (its `ERROR` after a refusal, say)
/// for a stream that ends before it has a local socket.
// Only the exit refuses a stream before it has a connection.
#[cfg_attr(not(feature = "exit"), allow(dead_code))]
pub(crate) async fn flush(engine: &mut Stream, link: &Link) {
    let _ = drain(engine, link, &mut Delivery::default()).await;
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
    /// The engine reported the stream open.
    opened: bool,
    /// How data events go out while the stream speaks the legacy format
    /// (it travels with the stream through every `drain`, like the bytes).
    pacer: Pacer,
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

/// Handles every output the engine has queued, in order: publishes
/// messages (telling the engine whether any relay took them), queues
/// delivered bytes and the peer's half-close for the local socket, and
/// records the open result. Returns `Some(end)` when the stream is over.
///
/// A message no relay took is a lost message for a version-2 stream (it is
/// retransmitted); a legacy stream cannot recover and ends.
async fn drain(engine: &mut Stream, link: &Link, delivery: &mut Delivery) -> Option<End> {
    while let Some(out) = engine.poll_output() {
        match out {
            Output::Publish(m) => match publish(engine, link, &mut delivery.pacer, &m).await {
                Ok(()) => engine.set_path_down(false),
                Err(e) => {
                    engine.set_path_down(e.is_path_down());
                    if engine.dialect() == Dialect::V2 {
                        log::debug!(
                            "stream {}: {} not published ({e}); will retry",
                            engine.key(),
                            m.kind
                        );
                        continue;
                    }
                    log::warn!("stream {}: cannot publish {}: {e}", engine.key(), m.kind);
                    engine.abort(ErrorReason::ConnectionReset);
                    return Some(Err(StreamError::RelayFailure));
                }
            },
            Output::Deliver(bytes) => {
                delivery.bytes += bytes.len();
                delivery.chunks.push_back(bytes);
                if engine.dialect() == Dialect::Legacy && delivery.bytes > LEGACY_DELIVERY_CAP {
                    log::warn!(
                        "stream {}: local reader too slow for a legacy peer ({} bytes held), aborting",
                        engine.key(),
                        delivery.bytes
                    );
                    // A legacy stream has no ERROR to send: the abort only ends it here.
                    engine.abort(ErrorReason::ConnectionReset);
                    return Some(Err(StreamError::LegacyOverflow));
                }
            }
            Output::PeerFinished => delivery.shutdown = true,
            Output::Opened => delivery.opened = true,
            Output::Aborted(reason) | Output::Refused(reason) => {
                return Some(Err(StreamError::Aborted(reason)));
            }
        }
    }
    None
}

/// Publishes one message: paced for a legacy stream's data
/// ([`Pacer::publish`]), at once otherwise.
async fn publish(
    engine: &Stream,
    link: &Link,
    pacer: &mut Pacer,
    m: &Message,
) -> Result<(), crate::link::SendError> {
    if engine.dialect() == Dialect::Legacy && m.kind.is_data() {
        pacer.publish(link, m).await
    } else {
        link.send_as(m, engine.framing()).await
    }
}

/// Aborts the stream with `reason` and publishes the engine's last
/// messages (its `ERROR`) before ending.
async fn abort_and_tell(engine: &mut Stream, link: &Link, reason: ErrorReason) -> End {
    engine.abort(reason.clone());
    let mut rest = Delivery::default();
    let _ = drain(engine, link, &mut rest).await;
    Err(StreamError::Aborted(reason))
}

/// Publishes the engine's messages and feeds it the peer's until it
/// reports the open result (entry side). Waits at most until `deadline`:
/// `Err(None)` then. Bytes delivered meanwhile stay in `conn` for
/// [`pump`].
#[cfg(feature = "entry")]
pub(crate) async fn wait_open(
    conn: &mut Conn,
    deadline: tokio::time::Instant,
) -> Result<(), Option<StreamError>> {
    let Conn {
        engine,
        link,
        inbox,
        delivery,
        ..
    } = conn;
    loop {
        if let Some(end) = drain(engine, link, delivery).await {
            return Err(end.err());
        }
        if delivery.opened {
            return Ok(());
        }
        let timer = engine.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            m = inbox.next() => match m {
                Some(m) => {
                    if let Err(e) = engine.handle_message(m, Instant::now()) {
                        log::debug!("{e}");
                    }
                }
                None => return Err(Some(StreamError::Shutdown)),
            },
            _ = sleep_until_opt(timer) => engine.handle_timeout(Instant::now()),
            _ = tokio::time::sleep_until(deadline) => return Err(None),
        }
    }
}

/// Sleeps until `t`, or forever when there is no timer.
///
/// A deadline already reached only yields to other tasks once: tokio's
/// timer rounds every deadline up to its next millisecond tick, so a timer
/// due now (the engine's zero [`DATA_HOLD`](crate::engine::DATA_HOLD), an
/// acknowledgement due at once) would otherwise wait up to 1 ms (seen with
/// strace at the exit: `epoll_wait(…, 1)` between the backend's answer and
/// its event).
async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) if t <= tokio::time::Instant::now() => tokio::task::yield_now().await,
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
        mut keep,
        mut delivery,
    } = conn;
    let stats = slot.0.clone();
    let (mut rd, mut wr) = tokio::io::split(socket);
    let mut buf = vec![0u8; READ_CHUNK];
    stats.bytes_sent.fetch_add(first.len() as u64, RELAXED);
    // Bytes read from the socket that the engine has not taken yet.
    let mut pending = first;
    let mut local_eof = false;
    loop {
        let now = Instant::now();
        let limit = link.transport().content_limit(link.relays());
        let fits = crate::protocol::max_data_for_content_in(limit, engine.framing());
        engine.limit_segment(fits, now);
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
        if let Some(end) = drain(&mut engine, &link, &mut delivery).await {
            return stats.record(&engine, end);
        }
        if engine.is_closed() {
            return stats.record(&engine, Ok(()));
        }
        if delivery.is_empty() && delivery.shutdown {
            delivery.shutdown = false;
            let _ = wr.shutdown().await;
        }
        if engine.is_lingering() && delivery.is_empty() {
            // Done for the local side: release the socket and the caller, and
            // acknowledge the peer's last retransmissions in the background.
            let end = stats.record(&engine, Ok(()));
            drop((rd, wr, slot));
            keep.lingering();
            tokio::spawn(async move {
                linger(engine, link, inbox).await;
                drop(keep);
            });
            return end;
        }
        if local_eof && engine.dialect() == Dialect::Legacy {
            // A legacy peer has no close message: the local side ending is the end.
            return stats.record(&engine, Ok(()));
        }
        let can_read = !local_eof && pending.is_empty() && engine.send_capacity() > 0;
        let timer = engine.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = delivery.write_some(&mut wr), if !delivery.is_empty() => match r {
                Ok(n) => {
                    delivery.advance(n);
                    engine.consumed(n);
                    stats.bytes_received.fetch_add(n as u64, RELAXED);
                }
                Err(e) => {
                    log::debug!("stream {}: local write failed: {e}", engine.key());
                    let end = abort_and_tell(&mut engine, &link, ErrorReason::ConnectionReset).await;
                    return stats.record(&engine, end);
                }
            },
            r = rd.read(&mut buf), if can_read => match r {
                Ok(0) | Err(_) => local_eof = true,
                Ok(n) => {
                    stats.bytes_sent.fetch_add(n as u64, RELAXED);
                    pending.extend_from_slice(&buf[..n]);
                }
            },
            m = inbox.next() => match m {
                Some(m) => {
                    if m.kind.is_data() {
                        delivery.pacer.peer_wrote();
                    }
                    if let Err(e) = engine.handle_message(m, Instant::now()) {
                        log::warn!("stream {}: {e}", engine.key());
                    }
                }
                None => return stats.record(&engine, Err(StreamError::Shutdown)),
            },
            _ = sleep_until_opt(timer) => engine.handle_timeout(Instant::now()),
            _ = tokio::time::sleep(idle_timeout) => {
                log::info!("stream {}: idle for {idle_timeout:?}, aborting", engine.key());
                let end = abort_and_tell(&mut engine, &link, ErrorReason::Timeout).await;
                return stats.record(&engine, end);
            }
        }
    }
}

const RELAXED: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

/// Keeps a finished stream (socket closed, no longer counted as open) until
/// it has acknowledged the peer's last retransmissions.
async fn linger(mut engine: Stream, link: Link, mut inbox: Inbox) {
    let mut ignored = Delivery::default();
    loop {
        if drain(&mut engine, &link, &mut ignored).await.is_some() || engine.is_closed() {
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
