//! The sans-IO stream engine: one NWS stream's state machine, with no I/O,
//! no clock and no async inside (the shape of `quinn-proto`).
//!
//! The driver feeds it what happened, with the current time — a message
//! arrived ([`Stream::handle_message`]), the local socket produced bytes
//! ([`Stream::write`]) or reached end of file ([`Stream::finish`]), a timer
//! expired ([`Stream::handle_timeout`]), the exit's backend dial finished
//! ([`Stream::backend_connected`], [`Stream::backend_failed`]) — and drains
//! [`Output`]s with [`Stream::poll_output`]: messages to publish, bytes to
//! deliver in order, and the stream's open and close results. It arms its
//! next timer through [`Stream::poll_timeout`].
//!
//! Between two peers of ours the stream speaks version 2 (`docs/PROTOCOL.md`):
//! `seq` is the byte offset of a message's data (TCP style, so a message can
//! be split smaller when it is retransmitted), `ack` the next offset the
//! sender of the message expects, `window` how many bytes past `ack` it will
//! accept. Lost, duplicated and reordered messages cost latency, never bytes:
//! unacknowledged data is retransmitted after a timeout that follows the
//! measured round trip (RFC 6298) or at once on a gap report, the receiver
//! reorders through a bounded buffer, and `CLOSE` is a reliable half-close
//! that occupies one offset like a TCP FIN.
//!
//! With a legacy peer it speaks the reference format: `SOCKS5RESPONSE` data
//! without sequence numbers, delivered in arrival order, never retransmitted
//! (the peer would see duplicates), and no close.
//!
//! Inside, the parts live in rooms of their own (the layout of
//! `quinn-proto`'s `connection/streams`): `send` owns segmentation,
//! acknowledgement and retransmission, `recv` reassembles the peer's bytes,
//! `timer` holds every deadline, and `legacy` is the whole legacy dialect.
//! This module is the public API; `wiring` turns what the parts return into
//! [`Output`]s. With the `sim` feature, `sim` is a simulated network
//! between two engines, for tests and fuzzing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::codec::Framing;
use crate::frame::Sender;
use crate::message::{ErrorReason, Message, MessageType, PROTOCOL_VERSION};

mod congestion;
mod keepalive;
mod legacy;
mod recv;
mod rtt;
mod send;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod timer;

use keepalive::Keepalive;
use recv::{Delivery, Recv};
use send::{RtoOutcome, Send, Transmit};
use timer::{Timer, TimerTable};

/// Which format a stream speaks with its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Version 2: offsets, acknowledgements, open result and close.
    V2,
    /// The reference implementation's format (`docs/PROTOCOL.md`, "Legacy").
    Legacy,
}

/// Longest an exit's version-3 `CONNECTED` waits for the backend's first
/// bytes to carry (when the request rode in the `CONNECT`).
pub const CONNECTED_HOLD: Duration = Duration::from_millis(5);

/// Once the backend's answer has begun while `CONNECTED` is held, how long
/// it may wait for more (its end, say) to go in the same message: zero, so
/// the message goes out as soon as the driver has read what the backend
/// socket already holds (a backend that closes right after answering is
/// caught in the same message; one that keeps the connection open is not
/// waited for). It was 1 ms, which tokio's millisecond timer made 1-2 ms:
/// through `nws-bench`'s SOCKS5 port with `--early-reply` (a keep-alive
/// backend) that was 4.0 ms to the first byte against 1.7 ms through the
/// HTTP port, whose requests carry `Connection: close`.
pub const DATA_HOLD: Duration = Duration::ZERO;

/// Limits and timings of one stream.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Largest number of stream bytes in one message, in bytes.
    pub max_segment: usize,
    /// Smallest segment the engine shrinks to when large messages keep
    /// getting lost (a relay that silently drops events above its size
    /// limit), in bytes.
    pub min_segment: usize,
    /// Receive window advertised to the peer: bytes past the acknowledged
    /// offset the peer may send. Also bounds the reorder buffer.
    pub window: u64,
    /// Bytes the local side may queue beyond what is in flight, in bytes.
    pub send_buffer: usize,
    /// Longest an acknowledgement waits to ride on data or be combined.
    pub ack_delay: Duration,
    /// Longest a small write waits to be combined with more while earlier
    /// data is unacknowledged (Nagle's rule, bounded).
    pub coalesce_delay: Duration,
    /// Retransmission timeout before the first round trip is measured.
    pub initial_rto: Duration,
    /// Lower bound of the retransmission timeout.
    pub min_rto: Duration,
    /// Upper bound of the retransmission timeout.
    pub max_rto: Duration,
    /// Abort with `timeout` after this long without progress while data is
    /// outstanding (a peer that never acknowledges).
    pub give_up_after: Duration,
    /// Keepalive pings in a row the peer may leave unanswered before the
    /// stream aborts with `timeout` (see the keepalive room).
    pub keepalive_pings: u32,
    /// Highest stream protocol version this side offers (entry, in
    /// `CONNECT`) or accepts (exit): 3 (the default, binary frames), or 2
    /// (JSON only, as older peers of ours speak). The stream speaks the
    /// lower of the two sides' versions.
    pub max_version: u32,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_segment: crate::message::MAX_FRAME_DATA_PER_EVENT,
            min_segment: 1024,
            window: 1024 * 1024,
            send_buffer: 256 * 1024,
            ack_delay: Duration::from_millis(20),
            coalesce_delay: Duration::from_millis(2),
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(8),
            give_up_after: Duration::from_secs(60),
            keepalive_pings: keepalive::MAX_PINGS,
            max_version: PROTOCOL_VERSION,
        }
    }
}

/// What the driver must do next, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Seal this message and publish it to the peer.
    Publish(Message),
    /// The stream is open: the entry may tell its client so.
    Opened,
    /// The exit refused the stream before it opened.
    Refused(ErrorReason),
    /// Bytes for the local socket, in stream order, each exactly once.
    Deliver(Vec<u8>),
    /// The peer sent its last byte (half-close): shut down the local write side.
    PeerFinished,
    /// The stream was aborted (by the peer, or here: protocol error, timeout).
    Aborted(ErrorReason),
}

/// Errors returned to the driver for input it should not have given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A `CONNECT` was expected to accept a stream, and this message is not one.
    #[error("expected a CONNECT message, got {0}")]
    NotConnect(String),
    /// The message belongs to another stream.
    #[error("message for stream {got} delivered to stream {expected}")]
    WrongStream {
        /// This stream's key.
        expected: String,
        /// The message's key.
        got: String,
    },
    /// The local side wrote after it finished, or the stream is not open.
    #[error("the stream is closed for writing")]
    WriteClosed,
}

/// Where the stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Entry: `CONNECT` sent, no answer yet. Exit: backend dial under way.
    Connecting,
    /// Data flows (each direction may finish on its own).
    Open,
    /// Both directions are finished and acknowledged; the stream lingers
    /// until [`Timer::Linger`] to acknowledge a retransmitted `CLOSE` once
    /// more.
    Lingering,
    /// Over: refused, aborted, or lingered out.
    Closed,
}

/// Whether this is the entry or the exit side of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Entry,
    Exit,
}

/// One NWS stream's state machine. See the module documentation.
#[derive(Debug)]
pub struct Stream {
    key: String,
    side: Side,
    /// An entry that asked for v2 switches to legacy if the exit answers plain data.
    dialect: Dialect,
    /// The version-2 dialect's version in use: 2 (JSON) or 3 (binary
    /// frames); an entry speaks 2 until `CONNECTED` says 3.
    version: u32,
    state: State,
    config: StreamConfig,
    destination: String,
    send: Send,
    recv: Recv,
    /// The `CONNECT` as sent, retransmitted until the exit answers (entry, v2).
    connect: Option<Message>,
    /// Exit, version 3: `CONNECTED` waits (at most [`CONNECTED_HOLD`]) to
    /// carry the backend's first bytes, one event instead of two.
    connected_pending: bool,
    timers: TimerTable,
    keepalive: Keepalive,
    out: VecDeque<Output>,
}

/// Opening, and what the driver may ask.
impl Stream {
    /// Entry side: opens a stream to `destination` (`host:port`) at `now`.
    ///
    /// Queues the `CONNECT`. With [`Dialect::V2`] the stream opens when the
    /// exit answers `CONNECTED` (the `CONNECT` is retransmitted until then);
    /// with [`Dialect::Legacy`] there is no answer and the stream counts as
    /// open at once.
    pub fn open(
        config: StreamConfig,
        key: String,
        destination: String,
        dialect: Dialect,
        now: Instant,
    ) -> Self {
        Self::open_early(config, key, destination, dialect, &[], now).0
    }

    /// Entry side: like [`Stream::open`], with the stream's first bytes
    /// inside the `CONNECT` (0-RTT, version 2 only): they occupy offsets
    /// from 0, ride every retransmitted `CONNECT`, and count as in flight
    /// until the exit acknowledges them. Returns the stream and how many of
    /// `early` it took (at most one segment; none for a legacy stream). Use
    /// it only toward exits known to speak version 2: a legacy exit never
    /// answers a version-2 `CONNECT`.
    pub fn open_early(
        config: StreamConfig,
        key: String,
        destination: String,
        dialect: Dialect,
        early: &[u8],
        now: Instant,
    ) -> (Self, usize) {
        let mut s = Self::new(config, key, Side::Entry, dialect, destination.clone(), now);
        let mut connect = Message::new(s.key.clone(), MessageType::Connect);
        connect.destination = destination;
        if dialect == Dialect::Legacy {
            return (legacy::open(s, connect), 0);
        }
        connect.version = Some(s.config.max_version.max(2));
        connect.window = Some(s.recv.window(&s.config));
        let taken = s.send.take_early(early, now);
        if taken > 0 {
            connect.seq = Some(0);
            connect.data = early[..taken].to_vec();
        }
        s.connect = Some(connect.clone());
        s.timers.set(Timer::Connect, now + s.send.rtt.rto);
        s.out.push_back(Output::Publish(connect));
        (s, taken)
    }

    /// Exit side: accepts a stream from a `CONNECT` message at `now`.
    ///
    /// The dialect follows the entry: `version` ≥ 2 means v2, none means
    /// legacy; the stream speaks the lower of the entry's version and
    /// [`StreamConfig::max_version`] (3: binary frames). Bytes that ride in the `CONNECT` are delivered first. The driver
    /// then dials and calls [`Stream::backend_connected`] or
    /// [`Stream::backend_failed`].
    pub fn accept(
        config: StreamConfig,
        connect: Message,
        now: Instant,
    ) -> Result<Self, EngineError> {
        if connect.kind != MessageType::Connect {
            return Err(EngineError::NotConnect(connect.kind.to_string()));
        }
        let dialect = match connect.version {
            Some(v) if v >= 2 => Dialect::V2,
            _ => Dialect::Legacy,
        };
        let mut s = Self::new(
            config,
            connect.key.clone(),
            Side::Exit,
            dialect,
            connect.destination.clone(),
            now,
        );
        if let Some(v) = connect.version {
            s.version = v.min(s.config.max_version).max(2);
            s.send.fin_rides = s.version >= 3;
        }
        if let Some(w) = connect.window {
            s.send.peer_edge = w;
        }
        if dialect == Dialect::Legacy {
            legacy::accept(&mut s, connect.data);
        } else if !connect.data.is_empty() {
            s.on_data(connect.seq.unwrap_or(0), connect.data, now);
        }
        Ok(s)
    }

    fn new(
        config: StreamConfig,
        key: String,
        side: Side,
        dialect: Dialect,
        destination: String,
        now: Instant,
    ) -> Self {
        Self {
            key,
            side,
            dialect,
            version: 2,
            state: State::Connecting,
            send: Send::new(&config, now),
            recv: Recv::new(&config),
            config,
            destination,
            connect: None,
            connected_pending: false,
            timers: TimerTable::default(),
            keepalive: Keepalive::new(),
            out: VecDeque::new(),
        }
    }

    /// The stream's key (a UUID string).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The dialect in use.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The stream protocol version in use: 2 or 3 for the version-2
    /// dialect (3 only once both sides said so), 0 for legacy.
    pub fn version(&self) -> u32 {
        match self.dialect {
            Dialect::Legacy => 0,
            Dialect::V2 => self.version,
        }
    }

    /// How this side writes its messages now: a version-3 binary frame once
    /// both sides speak version 3 (and the stream key is at most
    /// [`crate::frame::MAX_PLANNED_KEY`] bytes), JSON otherwise.
    pub fn framing(&self) -> Framing {
        // A stream key longer than a frame's planned header allows (ours are
        // UUIDs) is written as JSON, which a version-3 peer reads too.
        if self.version() >= 3 && self.key.len() <= crate::frame::MAX_PLANNED_KEY {
            Framing::Binary(match self.side {
                Side::Entry => Sender::Entry,
                Side::Exit => Sender::Exit,
            })
        } else {
            Framing::Json
        }
    }

    /// Which peer this stream's messages come from.
    pub fn peer_side(&self) -> Sender {
        match self.side {
            Side::Entry => Sender::Exit,
            Side::Exit => Sender::Entry,
        }
    }

    fn is_legacy(&self) -> bool {
        self.dialect == Dialect::Legacy
    }

    /// The destination from the `CONNECT`.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// Whether the stream is open (data may flow).
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the stream is over: refused, aborted, or both directions
    /// finished and acknowledged. The driver then releases it.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether both directions are done and the stream only lingers to
    /// acknowledge retransmissions (see [`Stream::is_closed`]).
    pub fn is_lingering(&self) -> bool {
        self.state == State::Lingering
    }

    /// Whether the peer's direction has ended (all its bytes were delivered).
    pub fn is_peer_finished(&self) -> bool {
        self.recv.finished
    }

    /// Whether the local side has finished writing.
    pub fn is_finished(&self) -> bool {
        self.send.fin_queued
    }

    /// How many more bytes [`Stream::write`] accepts now. Zero while the
    /// peer's window and the send buffer are full: the driver then stops
    /// reading its socket, which is how a slow reader slows the writer.
    pub fn send_capacity(&self) -> usize {
        if self.state != State::Open || self.send.fin_queued {
            return 0;
        }
        if self.is_legacy() {
            return legacy::send_capacity(self);
        }
        self.send.capacity(&self.config)
    }

    /// Bytes the engine holds for this stream (unsent, in flight and
    /// out-of-order received), for accounting.
    pub fn buffered_bytes(&self) -> usize {
        self.send.in_flight_bytes() + self.send.unsent.len() + self.recv.pending_bytes
    }

    /// The largest segment now in use, in bytes.
    pub fn max_segment(&self) -> usize {
        self.send.max_segment
    }

    /// Bytes delivered to the driver and not yet reported consumed.
    pub fn undelivered_bytes(&self) -> u64 {
        self.recv.undelivered
    }

    /// Data and `CLOSE` messages this stream queued: `(first sends,
    /// retransmissions)`; a split resend counts each piece. 0-RTT bytes in
    /// the `CONNECT` are not counted.
    pub fn segment_counts(&self) -> (u64, u64) {
        (self.send.segments_sent, self.send.segments_resent)
    }

    /// The congestion window, in events, and how often it was cut (losses
    /// and timeouts) so far.
    pub fn congestion(&self) -> (usize, u64) {
        (self.send.cc.window(), self.send.cc.reductions)
    }

    /// When the engine next needs [`Stream::handle_timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            _ if self.is_legacy() => None,
            State::Closed => None,
            State::Lingering => self.timers.get(Timer::Linger),
            State::Connecting | State::Open => self.timers.next_expiring(&[
                Timer::Retransmit,
                Timer::Ack,
                Timer::Connect,
                Timer::Coalesce,
                Timer::Keepalive,
                Timer::Pace,
                Timer::ConnectedHold,
            ]),
        }
    }

    /// Next output for the driver, or `None` when there is nothing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}

/// What happened: the driver's events.
impl Stream {
    /// Exit side: the backend accepted the connection. Answers `CONNECTED` (v2).
    pub fn backend_connected(&mut self, now: Instant) {
        if self.side != Side::Exit || self.state != State::Connecting {
            return;
        }
        if self.is_legacy() {
            return legacy::backend_connected(self);
        }
        self.state = State::Open;
        self.out.push_back(Output::Opened);
        let at = self.keepalive.heard(now, true);
        self.timers.set(Timer::Keepalive, at);
        // Bytes that rode in the CONNECT (0-RTT) wait until now; CONNECTED
        // then acknowledges them.
        self.drain_in_order(now);
        if self.version >= 3 && self.recv.next > 0 {
            // The request rode in the CONNECT: the answer's first bytes are
            // likely soon, and CONNECTED rides with them (version 3).
            self.connected_pending = true;
            self.send.hold = true;
            self.timers.set(Timer::ConnectedHold, now + CONNECTED_HOLD);
        } else {
            self.send_connected();
        }
        self.transmit(now);
        self.sync_coalesce();
    }

    /// Exit side: the backend could not be reached. Answers `ERROR` (v2; a
    /// legacy entry learns nothing, as with the reference exit).
    pub fn backend_failed(&mut self, reason: ErrorReason) {
        if self.side != Side::Exit || self.state == State::Closed {
            return;
        }
        self.abort(reason);
    }

    /// Queues local bytes for the peer; returns how many were taken (at most
    /// [`Stream::send_capacity`]).
    pub fn write(&mut self, bytes: &[u8], now: Instant) -> Result<usize, EngineError> {
        if self.state != State::Open || self.send.fin_queued {
            return Err(EngineError::WriteClosed);
        }
        if self.is_legacy() {
            return Ok(legacy::write(self, bytes));
        }
        let n = bytes.len().min(self.send_capacity());
        if n > 0 && self.connected_pending {
            // The answer has begun: it waits at most DATA_HOLD for its end.
            let until = now + DATA_HOLD;
            if self
                .timers
                .get(Timer::ConnectedHold)
                .is_some_and(|t| t > until)
            {
                self.timers.set(Timer::ConnectedHold, until);
            }
        }
        if n > 0 {
            self.send.queue(&bytes[..n], now);
            self.transmit(now);
            self.sync_coalesce();
        }
        Ok(n)
    }

    /// The local side sent its last byte (half-close): queues `CLOSE` after
    /// the data (v2). A legacy stream has no close message.
    pub fn finish(&mut self, now: Instant) {
        if self.send.fin_queued || matches!(self.state, State::Closed | State::Lingering) {
            return;
        }
        if self.is_legacy() {
            return legacy::finish(self);
        }
        self.send.fin_queued = true;
        self.transmit(now);
        self.check_done(now);
        self.sync_coalesce();
    }

    /// Aborts the stream, like a TCP reset: queues `ERROR` with `reason` (v2).
    pub fn abort(&mut self, reason: ErrorReason) {
        if self.state == State::Closed {
            return;
        }
        if self.is_legacy() {
            return legacy::abort(self);
        }
        self.out
            .push_back(Output::Publish(Message::error(self.key.clone(), &reason)));
        self.state = State::Closed;
    }

    /// Sets the largest number of stream bytes one message may carry now,
    /// as the relays' size limits allow (at most
    /// [`StreamConfig::max_segment`]). It may grow or shrink; when it
    /// shrinks, data in flight in larger messages (which the relay refused,
    /// or will) is split and sent again at once, and nothing is ever
    /// retransmitted above it.
    pub fn limit_segment(&mut self, bytes: usize, now: Instant) {
        let mut tx = Vec::new();
        self.send.limit_segment(bytes, &self.config, now, &mut tx);
        self.publish(tx);
    }

    /// Tells the engine whether the last publish reached no relay at all
    /// (`true`) or at least one (`false`). While no relay takes messages,
    /// retransmission timeouts do not shrink segments.
    pub fn set_path_down(&mut self, down: bool) {
        self.send.path_down = down;
    }

    /// Feeds one message from the peer, received at `now`.
    ///
    /// Duplicates are dropped; out-of-order data waits in the reorder buffer;
    /// data beyond the window is dropped (the peer retransmits it); data
    /// after the peer's `CLOSE` aborts the stream with
    /// [`ErrorReason::ProtocolError`]. Unknown types are ignored.
    pub fn handle_message(&mut self, msg: Message, now: Instant) -> Result<(), EngineError> {
        if msg.key != self.key {
            return Err(EngineError::WrongStream {
                expected: self.key.clone(),
                got: msg.key,
            });
        }
        if self.state == State::Closed {
            return Ok(());
        }
        if self.state == State::Lingering {
            // The peer is still talking (its acknowledgement of our CLOSE, or
            // a retransmission): stay until it has been quiet for a while.
            self.timers.set(Timer::Linger, now + self.linger());
        }
        if self.is_legacy() {
            legacy::handle_message(self, msg);
            return Ok(());
        }
        self.on_message(msg, now);
        self.sync_coalesce();
        Ok(())
    }

    /// Handles every timer that expired at or before `now`: retransmission,
    /// delayed acknowledgement, coalesced data, lingering.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_legacy() {
            return;
        }
        match self.state {
            State::Lingering => {
                if self.timers.is_expired(Timer::Linger, now) {
                    self.state = State::Closed;
                }
                return;
            }
            State::Closed => return,
            State::Connecting | State::Open => {}
        }
        // One by one, in this order: a retransmission carries the delayed
        // acknowledgement, which then no longer fires on its own.
        if self.timers.is_expired(Timer::Connect, now) {
            self.retransmit_connect(now);
        }
        if self.timers.is_expired(Timer::Retransmit, now) {
            self.on_rto(now);
            if self.state == State::Closed {
                return;
            }
        }
        if self.timers.is_expired(Timer::Keepalive, now) {
            self.on_keepalive(now);
            if self.state == State::Closed {
                return;
            }
        }
        if self.timers.is_expired(Timer::Ack, now) {
            self.recv.ack_now = true;
        }
        if self.timers.is_expired(Timer::Pace, now) {
            self.timers.stop(Timer::Pace);
        }
        if self.timers.is_expired(Timer::ConnectedHold, now) {
            self.end_connected_hold();
        }
        self.transmit_inner(now, true);
        self.sync_coalesce();
    }

    /// The driver wrote `n` more delivered bytes to the local socket. The
    /// window opens again; once it has opened by a quarter since it was
    /// last advertised, an acknowledgement tells the peer (a window update).
    pub fn consumed(&mut self, n: usize) {
        let update_due = self.recv.consumed(n, &self.config);
        if self.is_legacy() || matches!(self.state, State::Closed | State::Connecting) {
            return;
        }
        if update_due {
            self.recv.ack_now = true;
            self.flush_ack();
        }
    }
}

mod wiring;

#[cfg(test)]
mod tests;
