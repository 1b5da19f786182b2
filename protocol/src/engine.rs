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

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::message::{ErrorReason, Message, MessageType, PROTOCOL_VERSION};

/// Segments after a missing one that must be selectively acknowledged
/// before it counts as lost (relays may reorder a little).
const REORDER_SEGMENTS: u32 = 2;
/// Selective acknowledgement ranges carried in one message.
const MAX_SACK_RANGES: usize = 16;
/// Consecutive retransmission timeouts of the same data after which the
/// segment size is halved (a relay may drop large events silently).
const SHRINK_AFTER_TIMEOUTS: u32 = 3;
/// Acknowledgements with progress after which a shrunken segment size doubles.
const GROW_AFTER_ACKS: u32 = 64;

/// Which format a stream speaks with its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Version 2: offsets, acknowledgements, open result and close.
    V2,
    /// The reference implementation's format (`docs/PROTOCOL.md`, "Legacy").
    Legacy,
}

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
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_segment: crate::message::DEFAULT_MAX_DATA_PER_EVENT,
            min_segment: 1024,
            window: 512 * 1024,
            send_buffer: 256 * 1024,
            ack_delay: Duration::from_millis(20),
            coalesce_delay: Duration::from_millis(2),
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(8),
            give_up_after: Duration::from_secs(60),
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
    /// until the deadline to acknowledge a retransmitted `CLOSE` once more.
    Lingering(Instant),
    /// Over: refused, aborted, or lingered out.
    Closed,
}

/// Whether this is the entry or the exit side of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Entry,
    Exit,
}

/// A message in flight: data at `offset`, or the `CLOSE` (one offset unit).
#[derive(Debug, Clone)]
struct Segment {
    offset: u64,
    data: Vec<u8>,
    fin: bool,
    sent_at: Instant,
    retransmitted: bool,
    /// The receiver reported holding it (selective acknowledgement).
    sacked: bool,
}

impl Segment {
    /// Offsets this segment occupies.
    fn len(&self) -> u64 {
        self.data.len() as u64 + u64::from(self.fin)
    }
    fn end(&self) -> u64 {
        self.offset + self.len()
    }
}

/// Round-trip estimate and retransmission timeout (RFC 6298).
#[derive(Debug, Clone)]
struct Rtt {
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
}

impl Rtt {
    fn new(initial: Duration) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            rto: initial,
        }
    }

    fn sample(&mut self, r: Duration, cfg: &StreamConfig) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.rto = (srtt + (self.rttvar * 4).max(Duration::from_millis(10)))
            .clamp(cfg.min_rto, cfg.max_rto);
    }
}

/// Send direction of a version-2 stream.
#[derive(Debug)]
struct Send {
    /// Bytes written locally and not yet put into a message.
    unsent: VecDeque<u8>,
    /// When the oldest unsent byte was written (for coalescing).
    unsent_since: Option<Instant>,
    /// Offset of the next new byte.
    next_offset: u64,
    /// Lowest unacknowledged offset.
    acked: u64,
    in_flight: VecDeque<Segment>,
    /// Right edge of the peer's receive window: the highest `ack + window`
    /// it advertised (it never moves left, so reordered acks do no harm).
    peer_edge: u64,
    fin_queued: bool,
    fin_sent: bool,
    /// Acknowledgements that made progress since the last timeout; enough
    /// of them let a shrunken segment size grow again.
    good_acks: u32,
    rtt: Rtt,
    /// Consecutive timeouts without progress (exponential backoff).
    backoff: u32,
    /// Offset of the zero-window probe byte in flight, if one is: sent past
    /// a closed window, the receiver most likely dropped it.
    probe_at: Option<u64>,
    /// Consecutive timeouts without progress that fired while the peer's
    /// window was open and the path up: only these say that segments may
    /// be too large (a zero-window probe's timeouts do not).
    lost_timeouts: u32,
    rto_deadline: Option<Instant>,
    /// When acknowledgements last made progress (for giving up).
    progress_at: Instant,
    max_segment: usize,
    /// Hard cap on `max_segment` (see [`Stream::limit_segment`]).
    ceiling: usize,
    /// The driver could not hand messages to any relay: timeouts now say
    /// nothing about message size.
    path_down: bool,
    /// Data and `CLOSE` messages queued for the first time.
    segments_sent: u64,
    /// Data and `CLOSE` messages queued again (retransmissions, splits).
    segments_resent: u64,
}

/// Receive direction of a version-2 stream.
#[derive(Debug, Default)]
struct Recv {
    /// Next offset to deliver.
    next: u64,
    /// Out-of-order data by offset.
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
    /// Offset of the peer's `CLOSE`, once known.
    fin_at: Option<u64>,
    finished: bool,
    /// Bytes delivered since the last acknowledgement went out.
    unacked_bytes: u64,
    /// Bytes handed to the driver ([`Output::Deliver`]) that it has not yet
    /// written to the local socket ([`Stream::consumed`]); they shrink the
    /// advertised window, so a slow local reader slows the peer.
    undelivered: u64,
    /// Right edge of our window as last advertised (`ack + window`).
    edge_sent: u64,
    ack_deadline: Option<Instant>,
    ack_now: bool,
}

/// One NWS stream's state machine. See the module documentation.
#[derive(Debug)]
pub struct Stream {
    key: String,
    side: Side,
    /// An entry that asked for v2 switches to legacy if the exit answers plain data.
    dialect: Dialect,
    state: State,
    config: StreamConfig,
    destination: String,
    send: Send,
    recv: Recv,
    /// The `CONNECT` as sent, retransmitted until the exit answers (entry, v2).
    connect: Option<Message>,
    connect_deadline: Option<Instant>,
    out: VecDeque<Output>,
}

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
        let mut taken = 0;
        if dialect == Dialect::V2 {
            connect.version = Some(PROTOCOL_VERSION);
            connect.window = Some(s.recv_window());
            taken = early
                .len()
                .min(s.send.max_segment)
                .min(usize::try_from(s.send.peer_edge).unwrap_or(usize::MAX));
            if taken > 0 {
                connect.seq = Some(0);
                connect.data = early[..taken].to_vec();
                s.send.in_flight.push_back(Segment {
                    offset: 0,
                    data: connect.data.clone(),
                    fin: false,
                    sent_at: now,
                    retransmitted: false,
                    sacked: false,
                });
                s.send.next_offset = taken as u64;
            }
            s.connect = Some(connect.clone());
            s.connect_deadline = Some(now + s.send.rtt.rto);
        }
        s.out.push_back(Output::Publish(connect));
        if dialect == Dialect::Legacy {
            s.state = State::Open;
            s.out.push_back(Output::Opened);
        }
        (s, taken)
    }

    /// Exit side: accepts a stream from a `CONNECT` message at `now`.
    ///
    /// The dialect follows the entry: `version` ≥ 2 means v2, none means
    /// legacy. Bytes that ride in the `CONNECT` are delivered first. The driver
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
        if let Some(w) = connect.window {
            s.send.peer_edge = w;
        }
        if !connect.data.is_empty() {
            match dialect {
                Dialect::V2 => s.on_data(connect.seq.unwrap_or(0), connect.data, now),
                Dialect::Legacy => s.out.push_back(Output::Deliver(connect.data)),
            }
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
        let send = Send {
            unsent: VecDeque::new(),
            unsent_since: None,
            next_offset: 0,
            acked: 0,
            in_flight: VecDeque::new(),
            peer_edge: config.window,
            fin_queued: false,
            fin_sent: false,
            good_acks: 0,
            rtt: Rtt::new(config.initial_rto),
            backoff: 0,
            lost_timeouts: 0,
            probe_at: None,
            rto_deadline: None,
            progress_at: now,
            max_segment: config.max_segment.max(1),
            ceiling: config.max_segment.max(1),
            path_down: false,
            segments_sent: 0,
            segments_resent: 0,
        };
        let recv = Recv {
            edge_sent: config.window,
            ..Recv::default()
        };
        Self {
            key,
            side,
            dialect,
            state: State::Connecting,
            config,
            destination,
            send,
            recv,
            connect: None,
            connect_deadline: None,
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
        if self.dialect == Dialect::Legacy {
            return self.config.send_buffer;
        }
        let in_flight: usize = self.send.in_flight.iter().map(|s| s.data.len()).sum();
        let window = usize::try_from(self.send.peer_edge.saturating_sub(self.send.acked))
            .unwrap_or(usize::MAX);
        let limit = self
            .config
            .send_buffer
            .saturating_add(window.min(self.config.window as usize));
        limit.saturating_sub(in_flight + self.send.unsent.len())
    }

    /// Bytes the engine holds for this stream (unsent, in flight and
    /// out-of-order received), for accounting.
    pub fn buffered_bytes(&self) -> usize {
        let in_flight: usize = self.send.in_flight.iter().map(|s| s.data.len()).sum();
        in_flight + self.send.unsent.len() + self.recv.pending_bytes
    }

    /// Exit side: the backend accepted the connection. Answers `CONNECTED` (v2).
    pub fn backend_connected(&mut self, now: Instant) {
        if self.side != Side::Exit || self.state != State::Connecting {
            return;
        }
        self.state = State::Open;
        self.out.push_back(Output::Opened);
        // Bytes that rode in the CONNECT (0-RTT) wait until now; CONNECTED
        // then acknowledges them.
        self.drain_in_order(now);
        if self.dialect == Dialect::V2 {
            self.send_connected();
        }
        self.transmit(now);
    }

    fn send_connected(&mut self) {
        let mut m = Message::new(self.key.clone(), MessageType::Connected);
        m.version = Some(PROTOCOL_VERSION);
        m.ack = Some(self.recv.next);
        m.window = Some(self.recv_window());
        self.out.push_back(Output::Publish(m));
        self.acknowledged_in_data();
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
        if self.dialect == Dialect::Legacy {
            for chunk in bytes.chunks(self.send.max_segment) {
                let mut m = Message::new(self.key.clone(), MessageType::Socks5Response);
                // The reference fills the destination on data messages too.
                m.destination = self.destination.clone();
                m.data = chunk.to_vec();
                self.out.push_back(Output::Publish(m));
            }
            return Ok(bytes.len());
        }
        let n = bytes.len().min(self.send_capacity());
        if n > 0 {
            if self.send.unsent.is_empty() {
                self.send.unsent_since = Some(now);
            }
            self.send.unsent.extend(&bytes[..n]);
            self.transmit(now);
        }
        Ok(n)
    }

    /// The local side sent its last byte (half-close): queues `CLOSE` after
    /// the data (v2). A legacy stream has no close message.
    pub fn finish(&mut self, now: Instant) {
        if self.send.fin_queued || matches!(self.state, State::Closed | State::Lingering(_)) {
            return;
        }
        self.send.fin_queued = true;
        if self.dialect == Dialect::V2 {
            self.transmit(now);
        }
        self.check_done(now);
    }

    /// Aborts the stream, like a TCP reset: queues `ERROR` with `reason` (v2).
    pub fn abort(&mut self, reason: ErrorReason) {
        if self.state == State::Closed {
            return;
        }
        if self.dialect == Dialect::V2 {
            self.out
                .push_back(Output::Publish(Message::error(self.key.clone(), &reason)));
        }
        self.state = State::Closed;
    }

    /// Caps the segment size for good (a relay said an event was too
    /// large): segments never grow back above the cap, and data in flight
    /// in larger messages (which the relay rejected) is split and sent again
    /// at once.
    pub fn limit_segment(&mut self, bytes: usize, now: Instant) {
        let cap = bytes.max(1);
        if cap >= self.send.ceiling {
            return;
        }
        self.send.ceiling = cap;
        self.send.max_segment = self.send.max_segment.min(cap);
        if self.send.in_flight.iter().all(|seg| seg.data.len() <= cap) {
            return;
        }
        let old = std::mem::take(&mut self.send.in_flight);
        for seg in old {
            if seg.data.len() <= cap {
                self.send.in_flight.push_back(seg);
                continue;
            }
            let n = seg.data.len().div_ceil(cap);
            for (i, chunk) in seg.data.chunks(cap).enumerate() {
                let piece = Segment {
                    offset: seg.offset + (i * cap) as u64,
                    data: chunk.to_vec(),
                    fin: seg.fin && i + 1 == n,
                    sent_at: now,
                    retransmitted: true,
                    sacked: false,
                };
                let msg = self.segment_message(&piece);
                self.send.segments_resent += 1;
                self.out.push_back(Output::Publish(msg));
                self.send.in_flight.push_back(piece);
            }
        }
        self.acknowledged_in_data();
    }

    /// Tells the engine whether the last publish reached no relay at all
    /// (`true`) or at least one (`false`). While no relay takes messages,
    /// retransmission timeouts do not shrink segments.
    pub fn set_path_down(&mut self, down: bool) {
        self.send.path_down = down;
    }

    /// The largest segment now in use, in bytes.
    pub fn max_segment(&self) -> usize {
        self.send.max_segment
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
        if let State::Lingering(_) = self.state {
            // The peer is still talking (its acknowledgement of our CLOSE, or
            // a retransmission): stay until it has been quiet for a while.
            self.state = State::Lingering(now + self.linger());
        }
        if self.dialect == Dialect::Legacy {
            if msg.kind.is_data() {
                self.deliver(msg.data);
            }
            return Ok(());
        }
        match msg.kind {
            MessageType::Connected => self.on_connected(now),
            MessageType::Error => {
                self.on_error(msg.reason.as_deref().unwrap_or(""));
                return Ok(());
            }
            MessageType::Connect => {
                // The entry did not hear our answer: say it again.
                if self.side == Side::Exit && self.state != State::Connecting {
                    self.send_connected();
                }
            }
            MessageType::Data | MessageType::Socks5Response => {
                if msg.seq.is_none() && self.side == Side::Entry && self.state == State::Connecting
                {
                    // Plain data instead of an answer: the exit speaks legacy.
                    log::info!("stream {}: exit answered in the legacy format", self.key);
                    self.dialect = Dialect::Legacy;
                    self.connect = None;
                    self.connect_deadline = None;
                    self.state = State::Open;
                    self.out.push_back(Output::Opened);
                    self.deliver(msg.data);
                    // 0-RTT bytes a legacy exit ignored go again as plain data.
                    let early: Vec<Segment> = self.send.in_flight.drain(..).collect();
                    self.send.rto_deadline = None;
                    for seg in early {
                        let mut m = Message::new(self.key.clone(), MessageType::Socks5Response);
                        m.destination = self.destination.clone();
                        m.data = seg.data;
                        self.out.push_back(Output::Publish(m));
                    }
                    return Ok(());
                }
            }
            MessageType::Close | MessageType::Ack => {}
            MessageType::ConnectReverse | MessageType::Unknown(_) => {
                log::debug!("stream {}: {} ignored", self.key, msg.kind);
                return Ok(());
            }
        }
        if msg.kind.is_data() || msg.kind == MessageType::Close || msg.kind == MessageType::Ack {
            // Data from a v2 exit proves the stream open even if CONNECTED was lost.
            if self.state == State::Connecting && self.side == Side::Entry && msg.seq.is_some() {
                self.on_connected(now);
            }
        }
        if let Some(ack) = msg.ack {
            self.on_ack(ack, msg.window, msg.sack.as_deref().unwrap_or(&[]), now);
            if self.state == State::Closed {
                // The acknowledgement aborted the stream: nothing else counts.
                return Ok(());
            }
        }
        match msg.kind {
            MessageType::Data | MessageType::Socks5Response => match msg.seq {
                Some(seq) => self.on_data(seq, msg.data, now),
                None => {
                    log::warn!("stream {}: data without seq on a v2 stream", self.key);
                    self.protocol_error();
                }
            },
            MessageType::Close => match msg.seq {
                Some(seq) => self.on_fin(seq, now),
                None => log::debug!("stream {}: CLOSE without seq ignored", self.key),
            },
            _ => {}
        }
        self.transmit(now);
        Ok(())
    }

    /// When the engine next needs [`Stream::handle_timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed || self.dialect == Dialect::Legacy {
            return None;
        }
        if let State::Lingering(t) = self.state {
            return Some(t);
        }
        let coalesce = if self.send.unsent.is_empty() || !self.can_send_more() {
            None
        } else {
            self.send
                .unsent_since
                .map(|t| t + self.config.coalesce_delay)
        };
        [
            self.send.rto_deadline,
            self.recv.ack_deadline,
            self.connect_deadline,
            coalesce,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles every timer that expired at or before `now`: retransmission,
    /// delayed acknowledgement, coalesced data, lingering.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.dialect == Dialect::Legacy {
            return;
        }
        if let State::Lingering(t) = self.state {
            if now >= t {
                self.state = State::Closed;
            }
            return;
        }
        if self.state == State::Closed {
            return;
        }
        if let Some(t) = self.connect_deadline {
            if now >= t {
                self.retransmit_connect(now);
            }
        }
        if let Some(t) = self.send.rto_deadline {
            if now >= t {
                self.on_rto(now);
                if self.state == State::Closed {
                    return;
                }
            }
        }
        if let Some(t) = self.recv.ack_deadline {
            if now >= t {
                self.recv.ack_now = true;
            }
        }
        self.transmit_inner(now, true);
    }

    /// Next output for the driver, or `None` when there is nothing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    // ---- open ---------------------------------------------------------------

    fn on_connected(&mut self, now: Instant) {
        if self.side == Side::Entry && self.state == State::Connecting {
            self.state = State::Open;
            self.connect = None;
            self.connect_deadline = None;
            self.send.backoff = 0;
            self.out.push_back(Output::Opened);
            // 0-RTT bytes not acknowledged by the answer are retransmitted
            // as data from now on.
            if !self.send.in_flight.is_empty() && self.send.rto_deadline.is_none() {
                self.send.rto_deadline = Some(now + self.send.rtt.rto);
            }
            // Data that overtook the answer waits in the reorder buffer.
            self.drain_in_order(now);
        }
    }

    fn retransmit_connect(&mut self, now: Instant) {
        let Some(connect) = self.connect.clone() else {
            self.connect_deadline = None;
            return;
        };
        self.send.backoff += 1;
        let rto = self.backed_off_rto();
        self.connect_deadline = Some(now + rto);
        self.out.push_back(Output::Publish(connect));
    }

    fn on_error(&mut self, code: &str) {
        let reason = ErrorReason::parse(code);
        let before_open = self.state == State::Connecting;
        self.state = State::Closed;
        self.out
            .push_back(if before_open && self.side == Side::Entry {
                Output::Refused(reason)
            } else {
                Output::Aborted(reason)
            });
    }

    // ---- receive ------------------------------------------------------------

    fn deliver(&mut self, data: Vec<u8>) {
        if !data.is_empty() && !self.recv.finished {
            if self.dialect == Dialect::V2 {
                self.recv.undelivered += data.len() as u64;
            }
            self.out.push_back(Output::Deliver(data));
        }
    }

    /// Receive window to advertise now: the configured window less what the
    /// driver still holds undelivered, in bytes.
    fn recv_window(&self) -> u64 {
        self.config.window.saturating_sub(self.recv.undelivered)
    }

    /// The driver wrote `n` more delivered bytes to the local socket. The
    /// window opens again; once it has opened by a quarter since it was
    /// last advertised, an acknowledgement tells the peer (a window update).
    pub fn consumed(&mut self, n: usize) {
        self.recv.undelivered = self.recv.undelivered.saturating_sub(n as u64);
        if self.dialect != Dialect::V2 || matches!(self.state, State::Closed | State::Connecting) {
            return;
        }
        let edge = self.recv.next + self.recv_window();
        if edge >= self.recv.edge_sent + self.config.window / 4 {
            self.recv.ack_now = true;
            self.flush_ack();
        }
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

    fn on_data(&mut self, seq: u64, data: Vec<u8>, now: Instant) {
        let end = seq.saturating_add(data.len() as u64);
        if let Some(fin) = self.recv.fin_at {
            if end > fin {
                log::warn!("stream {}: data past the peer's CLOSE", self.key);
                self.protocol_error();
                return;
            }
        }
        if data.is_empty() {
            return;
        }
        let window = self.config.window;
        let recv_window = self.recv_window();
        let connecting = self.state == State::Connecting;
        let r = &mut self.recv;
        if end <= r.next {
            // A retransmission of what we have: our acknowledgement was lost.
            r.ack_now = true;
            return;
        }
        if end > r.next.saturating_add(recv_window) {
            log::debug!(
                "stream {}: data at {seq}..{end} beyond the window (next {}): dropped",
                self.key,
                r.next
            );
            r.ack_now = true;
            return;
        }
        if seq > r.next || connecting {
            // Keep it (bounded by twice the window) until the gap is filled
            // or the stream opens; a gap is reported at once.
            let bound = usize::try_from(window.saturating_mul(2)).unwrap_or(usize::MAX);
            if !r.pending.contains_key(&seq) && r.pending_bytes + data.len() <= bound {
                r.pending_bytes += data.len();
                r.pending.insert(seq, data);
            }
            if seq > r.next {
                r.ack_now = true;
            }
            return;
        }
        let fresh = data[(r.next - seq) as usize..].to_vec();
        r.next = end;
        r.unacked_bytes += fresh.len() as u64;
        self.deliver(fresh);
        self.drain_in_order(now);
    }

    /// Delivers buffered data that has become contiguous, then the peer's
    /// `CLOSE` if it is next, and schedules the acknowledgement.
    fn drain_in_order(&mut self, now: Instant) {
        if self.state == State::Connecting {
            return;
        }
        loop {
            let r = &mut self.recv;
            let Some((&off, _)) = r.pending.iter().next() else {
                break;
            };
            if off > r.next {
                break;
            }
            let data = r.pending.remove(&off).unwrap_or_default();
            r.pending_bytes -= data.len();
            let end = off + data.len() as u64;
            if end <= r.next {
                continue;
            }
            let fresh = data[(r.next - off) as usize..].to_vec();
            r.next = end;
            r.unacked_bytes += fresh.len() as u64;
            self.deliver(fresh);
        }
        if self.recv.fin_at == Some(self.recv.next) && !self.recv.finished {
            self.recv.finished = true;
            self.recv.next += 1;
            self.recv.pending.clear();
            self.recv.pending_bytes = 0;
            self.recv.ack_now = true;
            self.out.push_back(Output::PeerFinished);
            self.check_done(now);
        }
        if self.recv.unacked_bytes > 0 {
            self.schedule_ack(now);
        }
    }

    fn on_fin(&mut self, seq: u64, now: Instant) {
        if let Some(f) = self.recv.fin_at {
            if f != seq {
                log::warn!("stream {}: CLOSE moved from {f} to {seq}", self.key);
                self.protocol_error();
            } else {
                // A retransmitted CLOSE: acknowledge it (again).
                self.recv.ack_now = true;
            }
            return;
        }
        let highest = self
            .recv
            .pending
            .iter()
            .map(|(o, d)| o + d.len() as u64)
            .max()
            .unwrap_or(0)
            .max(self.recv.next);
        if seq < highest {
            log::warn!(
                "stream {}: CLOSE at {seq} before data at {highest}",
                self.key
            );
            self.protocol_error();
            return;
        }
        self.recv.fin_at = Some(seq);
        self.recv.ack_now = true;
        self.drain_in_order(now);
    }

    fn schedule_ack(&mut self, now: Instant) {
        // Acknowledge every quarter window at the latest, otherwise after a
        // short delay, so a bulk transfer costs few acknowledgement events.
        let r = &mut self.recv;
        if r.unacked_bytes >= self.config.window / 4 {
            r.ack_now = true;
        } else if r.ack_deadline.is_none() {
            r.ack_deadline = Some(now + self.config.ack_delay);
        }
    }

    // ---- send ---------------------------------------------------------------

    fn on_ack(&mut self, ack: u64, window: Option<u64>, sack: &[[u64; 2]], now: Instant) {
        let s = &mut self.send;
        if ack > s.next_offset {
            log::warn!(
                "stream {}: ack {ack} beyond what was sent ({})",
                self.key,
                s.next_offset
            );
            self.protocol_error();
            return;
        }
        if let Some(w) = window {
            s.peer_edge = s.peer_edge.max(ack.saturating_add(w));
            if w == 0 {
                // The peer is there but its reader is slow: waiting on a
                // closed window is not a peer that stopped acknowledging.
                s.progress_at = now;
            }
        }
        if ack > s.acked {
            s.acked = ack;
            s.backoff = 0;
            s.lost_timeouts = 0;
            s.progress_at = now;
            s.good_acks += 1;
            let mut newest = None;
            while s.in_flight.front().is_some_and(|seg| seg.end() <= ack) {
                newest = s.in_flight.pop_front();
            }
            // Sample the round trip from the newest segment this ack covers,
            // unless it was resent (Karn) or already reported held (then this
            // ack only closes a hole before it and its delay says nothing).
            if let Some(seg) = newest.filter(|seg| !seg.retransmitted && !seg.sacked) {
                s.rtt
                    .sample(now.saturating_duration_since(seg.sent_at), &self.config);
            }
            if let Some(seg) = s.in_flight.front_mut() {
                if seg.offset < ack {
                    // Partially acknowledged: keep only the rest.
                    let cut = (ack - seg.offset) as usize;
                    seg.data.drain(..cut.min(seg.data.len()));
                    seg.offset = ack;
                }
            }
            s.rto_deadline = if s.in_flight.is_empty() {
                None
            } else {
                Some(now + s.rtt.rto)
            };
            // Segments shrunk after timeouts grow back once things go well
            // (a lossy stretch is not a size limit).
            if s.good_acks >= GROW_AFTER_ACKS && s.max_segment < s.ceiling {
                s.max_segment = (s.max_segment * 2).min(s.ceiling);
                s.good_acks = 0;
            }
        }
        if let Some(p) = s.probe_at {
            if s.acked > p {
                s.probe_at = None;
            } else if s.peer_edge > p {
                // The window reopened over the probe byte, which the receiver
                // dropped while it was closed: send it again now rather than
                // after a retransmission timeout (the data sent after it
                // would wait behind the gap), and forget the probe's
                // timeouts, which were no loss.
                s.probe_at = None;
                s.backoff = 0;
                s.lost_timeouts = 0;
                if s.in_flight.front().is_some_and(|seg| seg.offset == p) {
                    self.resend_segment(0, now);
                    self.send.rto_deadline = Some(now + self.send.rtt.rto);
                    self.acknowledged_in_data();
                }
            }
        }
        let s = &mut self.send;
        if !sack.is_empty() {
            for seg in s.in_flight.iter_mut() {
                if !seg.sacked && sack.iter().any(|r| r[0] <= seg.offset && seg.end() <= r[1]) {
                    seg.sacked = true;
                }
            }
            self.retransmit_sacked_holes(now);
        }
        self.check_done(now);
    }

    /// Retransmits every segment the receiver evidently lost: one that is
    /// not selectively acknowledged while at least [`REORDER_SEGMENTS`]
    /// segments sent after it are, and that was not already resent within
    /// the last round trip.
    fn retransmit_sacked_holes(&mut self, now: Instant) {
        let rtt = self.send.rtt.srtt.unwrap_or(self.send.rtt.rto);
        let mut sacked_after = 0u32;
        let mut lost = Vec::new();
        for (i, seg) in self.send.in_flight.iter().enumerate().rev() {
            if seg.sacked {
                sacked_after += 1;
            } else if sacked_after >= REORDER_SEGMENTS
                && (!seg.retransmitted || now >= seg.sent_at + rtt)
            {
                lost.push(i);
            }
        }
        for &i in lost.iter().rev() {
            self.resend_segment(i, now);
        }
        if !lost.is_empty() {
            self.acknowledged_in_data();
        }
    }

    fn on_rto(&mut self, now: Instant) {
        if self.send.in_flight.is_empty() {
            self.send.rto_deadline = None;
            return;
        }
        if now.saturating_duration_since(self.send.progress_at) >= self.config.give_up_after {
            log::info!(
                "stream {}: no acknowledgement for {:?}, aborting",
                self.key,
                self.config.give_up_after
            );
            self.abort(ErrorReason::Timeout);
            self.out.push_back(Output::Aborted(ErrorReason::Timeout));
            return;
        }
        self.send.backoff += 1;
        self.send.good_acks = 0;
        // Big events that keep vanishing while relays take them may exceed a
        // relay's size limit (some relays drop them without an answer): try
        // smaller ones.
        // A timeout while the window is closed is a zero-window probe's
        // (the receiver drops the probe byte): it says nothing of size.
        let window_closed = self.send.peer_edge <= self.send.acked;
        if !self.send.path_down && !window_closed {
            self.send.lost_timeouts += 1;
        }
        if self.send.lost_timeouts >= SHRINK_AFTER_TIMEOUTS {
            let smaller = (self.send.max_segment / 2).max(self.config.min_segment);
            if smaller < self.send.max_segment {
                log::info!(
                    "stream {}: retransmissions keep failing, segments {} -> {smaller} bytes",
                    self.key,
                    self.send.max_segment
                );
                self.send.max_segment = smaller;
            }
        }
        self.retransmit_first(now);
        // Every other hole the receiver reported is lost too by now.
        let holes: Vec<usize> = self.holes_below_sacked().collect();
        for i in holes {
            self.resend_segment(i, now);
        }
    }

    /// Indexes (after the first) of in-flight segments that are not
    /// selectively acknowledged while a later one is.
    fn holes_below_sacked(&self) -> impl Iterator<Item = usize> + '_ {
        let last_sacked = self.send.in_flight.iter().rposition(|seg| seg.sacked);
        self.send
            .in_flight
            .iter()
            .enumerate()
            .skip(1)
            .take_while(move |(i, _)| last_sacked.is_some_and(|l| *i < l))
            .filter(|(_, seg)| !seg.sacked)
            .map(|(i, _)| i)
    }

    fn backed_off_rto(&self) -> Duration {
        let factor = 1u32 << self.send.backoff.min(6);
        (self.send.rtt.rto * factor).min(self.config.max_rto)
    }

    /// Sends the first unacknowledged segment again, split to the current
    /// largest segment if it is bigger.
    fn retransmit_first(&mut self, now: Instant) {
        let max = self.send.max_segment;
        let Some(first) = self.send.in_flight.pop_front() else {
            return;
        };
        let mut pieces: Vec<Segment> = Vec::new();
        let mut off = first.offset;
        let chunks: Vec<&[u8]> = if first.data.is_empty() {
            vec![&[]]
        } else {
            first.data.chunks(max).collect()
        };
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            pieces.push(Segment {
                offset: off,
                data: c.to_vec(),
                fin: first.fin && i + 1 == n,
                sent_at: now,
                retransmitted: true,
                sacked: false,
            });
            off += c.len() as u64;
        }
        for seg in pieces.iter() {
            let msg = self.segment_message(seg);
            self.send.segments_resent += 1;
            self.out.push_back(Output::Publish(msg));
        }
        for seg in pieces.into_iter().rev() {
            self.send.in_flight.push_front(seg);
        }
        self.acknowledged_in_data();
        let rto = self.backed_off_rto();
        self.send.rto_deadline = Some(now + rto);
    }

    /// Sends in-flight segment `i` again as it is (marked resent at `now`).
    fn resend_segment(&mut self, i: usize, now: Instant) {
        let Some(seg) = self.send.in_flight.get_mut(i) else {
            return;
        };
        seg.sent_at = now;
        seg.retransmitted = true;
        let msg = self.segment_message(&self.send.in_flight[i]);
        self.send.segments_resent += 1;
        self.out.push_back(Output::Publish(msg));
    }

    /// Every data message carries the current acknowledgement.
    fn acknowledged_in_data(&mut self) {
        self.recv.ack_now = false;
        self.recv.ack_deadline = None;
        self.recv.unacked_bytes = 0;
        self.recv.edge_sent = self.recv.next + self.recv_window();
    }

    fn segment_message(&self, seg: &Segment) -> Message {
        let kind = if seg.fin && seg.data.is_empty() {
            MessageType::Close
        } else {
            MessageType::Data
        };
        let mut m = Message::new(self.key.clone(), kind);
        m.seq = Some(seg.offset);
        m.data = seg.data.clone();
        m.ack = Some(self.recv.next);
        m.window = Some(self.recv_window());
        m.sack = self.sack_ranges();
        m
    }

    /// Ranges of out-of-order data held, for the peer to skip when it
    /// retransmits (at most [`MAX_SACK_RANGES`], lowest first).
    fn sack_ranges(&self) -> Option<Vec<[u64; 2]>> {
        let mut ranges: Vec<[u64; 2]> = Vec::new();
        for (&off, data) in &self.recv.pending {
            let end = off + data.len() as u64;
            let full = ranges.len() == MAX_SACK_RANGES;
            match ranges.last_mut() {
                Some(last) if off <= last[1] => last[1] = last[1].max(end),
                _ if full => break,
                _ => ranges.push([off, end]),
            }
        }
        (!ranges.is_empty()).then_some(ranges)
    }

    fn can_send_more(&self) -> bool {
        self.send.next_offset < self.send.peer_edge
    }

    fn transmit(&mut self, now: Instant) {
        self.transmit_inner(now, false);
    }

    /// Puts unsent bytes (and the `CLOSE`) into messages as far as the
    /// peer's window allows, and sends a standalone acknowledgement if one is
    /// due and no data carried it.
    fn transmit_inner(&mut self, now: Instant, timer: bool) {
        if self.dialect != Dialect::V2 {
            return;
        }
        match self.state {
            State::Open => self.segment_unsent(now, timer),
            State::Lingering(_) => {}
            State::Connecting | State::Closed => return,
        }
        self.flush_ack();
    }

    fn segment_unsent(&mut self, now: Instant, timer: bool) {
        loop {
            let room = usize::try_from(self.send.peer_edge.saturating_sub(self.send.next_offset))
                .unwrap_or(usize::MAX);
            if self.send.unsent.is_empty() {
                break;
            }
            if room == 0 {
                if self.send.in_flight.is_empty() {
                    // Zero-window probe: one byte past the closed window,
                    // retransmitted on timeout, draws an acknowledgement
                    // with the current window even if a window update was
                    // lost (TCP's persist timer).
                    let probe: Vec<u8> = self.send.unsent.drain(..1).collect();
                    self.send.probe_at = Some(self.send.next_offset);
                    self.push_segment(probe, false, now);
                }
                break;
            }
            let size = self.send.unsent.len().min(self.send.max_segment).min(room);
            // Nagle's rule, bounded by the coalescing delay: a small message
            // waits while earlier data is unacknowledged.
            let waited_enough = timer
                && self
                    .send
                    .unsent_since
                    .is_some_and(|t| now >= t + self.config.coalesce_delay);
            if size < self.send.max_segment
                && !self.send.in_flight.is_empty()
                && !self.send.fin_queued
                && !waited_enough
            {
                break;
            }
            let data: Vec<u8> = self.send.unsent.drain(..size).collect();
            self.send.unsent_since = if self.send.unsent.is_empty() {
                None
            } else {
                Some(now)
            };
            self.push_segment(data, false, now);
        }
        if self.send.fin_queued && !self.send.fin_sent && self.send.unsent.is_empty() {
            self.send.fin_sent = true;
            self.push_segment(Vec::new(), true, now);
        }
    }

    fn push_segment(&mut self, data: Vec<u8>, fin: bool, now: Instant) {
        let seg = Segment {
            offset: self.send.next_offset,
            data,
            fin,
            sent_at: now,
            retransmitted: false,
            sacked: false,
        };
        self.send.next_offset = seg.end();
        let msg = self.segment_message(&seg);
        self.send.segments_sent += 1;
        self.send.in_flight.push_back(seg);
        if self.send.rto_deadline.is_none() {
            self.send.rto_deadline = Some(now + self.backed_off_rto());
        }
        self.out.push_back(Output::Publish(msg));
        self.acknowledged_in_data();
    }

    fn flush_ack(&mut self) {
        if !self.recv.ack_now || self.dialect != Dialect::V2 || self.state == State::Connecting {
            return;
        }
        let mut m = Message::new(self.key.clone(), MessageType::Ack);
        m.ack = Some(self.recv.next);
        m.window = Some(self.recv_window());
        m.sack = self.sack_ranges();
        self.out.push_back(Output::Publish(m));
        self.acknowledged_in_data();
    }

    fn protocol_error(&mut self) {
        self.abort(ErrorReason::ProtocolError);
        self.out
            .push_back(Output::Aborted(ErrorReason::ProtocolError));
    }

    fn check_done(&mut self, now: Instant) {
        if self.state != State::Open {
            return;
        }
        let send_done = match self.dialect {
            Dialect::V2 => self.send.fin_sent && self.send.in_flight.is_empty(),
            Dialect::Legacy => self.send.fin_queued,
        };
        if send_done && self.recv.finished {
            // Linger so that data or a CLOSE retransmitted because our last
            // acknowledgement was lost is acknowledged again, instead of the
            // peer retrying until it gives up (TCP's TIME-WAIT).
            self.state = State::Lingering(now + self.linger());
        }
    }

    /// How long a finished stream stays after the peer's last message: as
    /// long as the peer may keep retransmitting before it gives up. Only the
    /// state machine stays (no buffers).
    fn linger(&self) -> Duration {
        self.config.give_up_after
    }

    /// Whether both directions are done and the stream only lingers to
    /// acknowledge retransmissions (see [`Stream::is_closed`]).
    pub fn is_lingering(&self) -> bool {
        matches!(self.state, State::Lingering(_))
    }
}

#[cfg(test)]
mod tests;
