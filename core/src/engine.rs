//! The sans-IO stream engine: one NWS stream's state machine, with no I/O and
//! no async inside (the shape of `quinn-proto`).
//!
//! The driver feeds it what happened — a message arrived
//! ([`Stream::handle_message`]), the local socket produced bytes
//! ([`Stream::write`]) or reached end of file ([`Stream::finish`]), the exit's
//! backend dial finished ([`Stream::backend_connected`],
//! [`Stream::backend_failed`]) — and drains [`Output`]s with
//! [`Stream::poll_output`]: messages to publish, bytes to deliver in order,
//! and the stream's open/close results.
//!
//! Between two peers of ours the stream speaks version 2 (PROTOCOL.md part
//! 2): `CONNECT` carries `version`, the exit answers `CONNECTED` or `ERROR`,
//! every `DATA` and `CLOSE` carries a per-direction `seq` and the receiver
//! reorders through a bounded buffer, and `CLOSE` half-closes like TCP FIN.
//! With a legacy peer it speaks the reference format: `SOCKS5RESPONSE` data
//! without sequence numbers, delivered in arrival order, and no close.

use std::collections::{BTreeMap, VecDeque};

use crate::protocol::{ErrorReason, Message, MessageType, PROTOCOL_VERSION};

/// Which format a stream speaks with its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Version 2: sequence numbers, open result and close (PROTOCOL.md part 2).
    V2,
    /// The reference implementation's format (PROTOCOL.md part 1).
    Legacy,
}

/// Limits of one stream.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Largest number of stream bytes in one message, in bytes.
    pub max_data_per_message: usize,
    /// How many messages past the next expected `seq` the receiver buffers;
    /// a message further ahead is a protocol error.
    pub reorder_window: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            max_data_per_message: crate::protocol::DEFAULT_MAX_DATA_PER_EVENT,
            reorder_window: 4096,
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
    /// The stream was aborted (by the peer, or by a protocol error here).
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
    /// The local side wrote after it finished, or the stream is over.
    #[error("the stream is closed for writing")]
    WriteClosed,
}

/// Where the stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Entry: `CONNECT` sent, no answer yet. Exit: backend dial under way.
    Connecting,
    /// Data flows (each direction may still finish on its own).
    Open,
    /// Refused, aborted, or both directions finished.
    Closed,
}

/// One item of the receive sequence space.
#[derive(Debug)]
enum Item {
    Data(Vec<u8>),
    Finish,
}

/// Receive side of a version-2 stream: delivers items in `seq` order once.
#[derive(Debug, Default)]
struct Reassembler {
    next: u64,
    pending: BTreeMap<u64, Item>,
    finished: bool,
}

/// Whether a message has the entry or the exit side of a stream.
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
    state: State,
    config: StreamConfig,
    destination: String,
    next_send_seq: u64,
    send_finished: bool,
    recv: Reassembler,
    out: VecDeque<Output>,
}

impl Stream {
    /// Entry side: opens a stream to `destination` (`host:port`).
    ///
    /// Queues the `CONNECT`. With [`Dialect::V2`] the stream opens when the
    /// exit answers `CONNECTED`; with [`Dialect::Legacy`] there is no answer
    /// and the stream counts as open at once.
    pub fn open(config: StreamConfig, key: String, destination: String, dialect: Dialect) -> Self {
        let mut s = Self::new(config, key, Side::Entry, dialect, destination.clone());
        let mut connect = Message::new(s.key.clone(), MessageType::Connect);
        connect.destination = destination;
        if dialect == Dialect::V2 {
            connect.version = Some(PROTOCOL_VERSION);
        }
        s.out.push_back(Output::Publish(connect));
        if dialect == Dialect::Legacy {
            s.state = State::Open;
            s.out.push_back(Output::Opened);
        }
        s
    }

    /// Exit side: accepts a stream from a `CONNECT` message.
    ///
    /// The dialect follows the entry: `version` ≥ 2 means v2, none means
    /// legacy. Bytes that ride in the `CONNECT` are delivered first. The driver
    /// then dials and calls [`Stream::backend_connected`] or
    /// [`Stream::backend_failed`].
    pub fn accept(config: StreamConfig, connect: Message) -> Result<Self, EngineError> {
        if connect.kind != MessageType::Connect {
            return Err(EngineError::NotConnect(connect.kind.to_string()));
        }
        let dialect = match connect.version {
            Some(v) if v >= 2 => Dialect::V2,
            _ => Dialect::Legacy,
        };
        let mut s = Self::new(
            config,
            connect.key,
            Side::Exit,
            dialect,
            connect.destination,
        );
        if !connect.data.is_empty() {
            s.out.push_back(Output::Deliver(connect.data));
        }
        Ok(s)
    }

    fn new(
        config: StreamConfig,
        key: String,
        side: Side,
        dialect: Dialect,
        destination: String,
    ) -> Self {
        Self {
            key,
            side,
            dialect,
            state: State::Connecting,
            config,
            destination,
            next_send_seq: 0,
            send_finished: false,
            recv: Reassembler::default(),
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
    /// finished. The driver then releases it.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the peer's direction has ended (all its bytes were delivered).
    pub fn is_peer_finished(&self) -> bool {
        self.recv.finished
    }

    /// Exit side: the backend accepted the connection. Answers `CONNECTED` (v2).
    pub fn backend_connected(&mut self) {
        if self.side != Side::Exit || self.state != State::Connecting {
            return;
        }
        self.state = State::Open;
        if self.dialect == Dialect::V2 {
            let mut m = Message::new(self.key.clone(), MessageType::Connected);
            m.version = Some(PROTOCOL_VERSION);
            self.out.push_back(Output::Publish(m));
        }
        self.out.push_back(Output::Opened);
    }

    /// Exit side: the backend could not be reached. Answers `ERROR` (v2; a
    /// legacy entry learns nothing, as with the reference exit).
    pub fn backend_failed(&mut self, reason: ErrorReason) {
        if self.side != Side::Exit || self.state == State::Closed {
            return;
        }
        self.abort(reason);
    }

    /// Queues local bytes for the peer, split into messages of at most
    /// `max_data_per_message` bytes. Writing nothing is a no-op.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        if self.state != State::Open || self.send_finished {
            return Err(EngineError::WriteClosed);
        }
        for chunk in bytes.chunks(self.config.max_data_per_message.max(1)) {
            let mut msg = match self.dialect {
                Dialect::V2 => {
                    let mut m = Message::new(self.key.clone(), MessageType::Data);
                    m.seq = Some(self.take_seq());
                    m
                }
                Dialect::Legacy => {
                    let mut m = Message::new(self.key.clone(), MessageType::Socks5Response);
                    // The reference fills the destination on data messages too.
                    m.destination = self.destination.clone();
                    m
                }
            };
            msg.data = chunk.to_vec();
            self.out.push_back(Output::Publish(msg));
        }
        Ok(())
    }

    /// The local side sent its last byte (half-close): queues `CLOSE` with
    /// the final `seq` (v2). A legacy stream has no close message.
    pub fn finish(&mut self) {
        if self.send_finished || self.state == State::Closed {
            return;
        }
        self.send_finished = true;
        if self.dialect == Dialect::V2 {
            let mut m = Message::new(self.key.clone(), MessageType::Close);
            m.seq = Some(self.take_seq());
            self.out.push_back(Output::Publish(m));
        }
        self.check_done();
    }

    /// Aborts the stream, like a TCP reset: queues `ERROR` with `reason` (v2).
    pub fn abort(&mut self, reason: ErrorReason) {
        if self.state == State::Closed {
            return;
        }
        if self.dialect == Dialect::V2 {
            let mut m = Message::new(self.key.clone(), MessageType::Error);
            m.reason = Some(reason.as_str().to_string());
            self.out.push_back(Output::Publish(m));
        }
        self.state = State::Closed;
    }

    /// Feeds one message from the peer.
    ///
    /// Duplicates are dropped; out-of-order v2 messages wait in the reorder
    /// buffer; a message too far ahead, or data after the peer's `CLOSE`,
    /// aborts the stream with [`ErrorReason::ProtocolError`]. Unknown types
    /// are ignored.
    pub fn handle_message(&mut self, msg: Message) -> Result<(), EngineError> {
        if msg.key != self.key {
            return Err(EngineError::WrongStream {
                expected: self.key.clone(),
                got: msg.key,
            });
        }
        if self.state == State::Closed {
            return Ok(());
        }
        match msg.kind {
            MessageType::Connected => self.on_connected(),
            MessageType::Error => self.on_error(msg.reason.as_deref().unwrap_or("")),
            MessageType::Data | MessageType::Socks5Response => self.on_data(msg.seq, msg.data),
            MessageType::Close => match msg.seq {
                Some(seq) if self.dialect == Dialect::V2 => self.on_item(seq, Item::Finish),
                _ => log::debug!("stream {}: CLOSE without seq ignored", self.key),
            },
            MessageType::Connect | MessageType::ConnectReverse | MessageType::Unknown(_) => {
                log::debug!("stream {}: {} ignored", self.key, msg.kind);
            }
        }
        Ok(())
    }

    /// Next output for the driver, or `None` when there is nothing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.next_send_seq;
        self.next_send_seq += 1;
        s
    }

    fn on_connected(&mut self) {
        if self.side == Side::Entry && self.state == State::Connecting {
            self.state = State::Open;
            self.out.push_back(Output::Opened);
            // Data that overtook the answer waits in the reassembler.
            self.drain_in_order();
        }
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

    fn on_data(&mut self, seq: Option<u64>, data: Vec<u8>) {
        match (self.dialect, seq) {
            (Dialect::V2, Some(seq)) => self.on_item(seq, Item::Data(data)),
            (Dialect::V2, None) if self.side == Side::Entry && self.state == State::Connecting => {
                // Plain data instead of an answer: the exit speaks legacy.
                log::info!("stream {}: exit answered in the legacy format", self.key);
                self.dialect = Dialect::Legacy;
                self.state = State::Open;
                self.out.push_back(Output::Opened);
                self.deliver(data);
            }
            (Dialect::V2, None) => {
                log::warn!("stream {}: data without seq on a v2 stream", self.key);
                self.protocol_error();
            }
            (Dialect::Legacy, _) => self.deliver(data),
        }
    }

    fn deliver(&mut self, data: Vec<u8>) {
        if !data.is_empty() && !self.recv.finished {
            self.out.push_back(Output::Deliver(data));
        }
    }

    fn on_item(&mut self, seq: u64, item: Item) {
        let r = &mut self.recv;
        if seq < r.next || r.pending.contains_key(&seq) {
            return; // duplicate (another relay, or a replay)
        }
        if seq - r.next >= self.config.reorder_window {
            log::warn!(
                "stream {}: seq {seq} is beyond the reorder window (next {})",
                self.key,
                r.next
            );
            self.protocol_error();
            return;
        }
        if let Some((&fin, _)) = r.pending.iter().find(|(_, i)| matches!(i, Item::Finish)) {
            if seq > fin || matches!(item, Item::Finish) {
                self.protocol_error();
                return;
            }
        }
        r.pending.insert(seq, item);
        if self.state == State::Open {
            self.drain_in_order();
        }
    }

    fn drain_in_order(&mut self) {
        while let Some(item) = self.recv.pending.remove(&self.recv.next) {
            self.recv.next += 1;
            match item {
                Item::Data(d) => self.deliver(d),
                Item::Finish => {
                    self.recv.finished = true;
                    self.recv.pending.clear();
                    self.out.push_back(Output::PeerFinished);
                    self.check_done();
                    return;
                }
            }
        }
    }

    fn protocol_error(&mut self) {
        self.abort(ErrorReason::ProtocolError);
        self.out
            .push_back(Output::Aborted(ErrorReason::ProtocolError));
    }

    fn check_done(&mut self) {
        if self.send_finished && self.recv.finished {
            self.state = State::Closed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Stream) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn published(outs: &[Output]) -> Vec<Message> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Publish(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn delivered(outs: &[Output]) -> Vec<u8> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Deliver(d) => Some(d.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// An entry and an exit, opened through CONNECT/CONNECTED.
    fn open_pair(config: StreamConfig) -> (Stream, Stream) {
        let mut entry = Stream::open(config.clone(), "k".into(), "x.nostr:80".into(), Dialect::V2);
        let connect = published(&drain(&mut entry)).remove(0);
        assert_eq!(connect.version, Some(2));
        let mut exit = Stream::accept(config, connect).unwrap();
        exit.backend_connected();
        let outs = drain(&mut exit);
        assert!(outs.contains(&Output::Opened));
        for m in published(&outs) {
            entry.handle_message(m).unwrap();
        }
        assert_eq!(drain(&mut entry), vec![Output::Opened]);
        (entry, exit)
    }

    #[test]
    fn splits_writes_and_numbers_them() {
        let cfg = StreamConfig {
            max_data_per_message: 4,
            ..Default::default()
        };
        let (mut entry, _) = open_pair(cfg);
        entry.write(b"0123456789").unwrap();
        let msgs = published(&drain(&mut entry));
        let seqs: Vec<_> = msgs.iter().map(|m| m.seq.unwrap()).collect();
        assert_eq!(seqs, vec![0, 1, 2]);
        assert_eq!(msgs[2].data, b"89");
        assert!(msgs.iter().all(|m| m.kind == MessageType::Data));
    }

    #[test]
    fn reorders_out_of_order_messages_and_drops_duplicates() {
        let cfg = StreamConfig {
            max_data_per_message: 2,
            ..Default::default()
        };
        let (mut entry, mut exit) = open_pair(cfg);
        entry.write(b"aabbccdd").unwrap();
        entry.finish();
        let mut msgs = published(&drain(&mut entry));
        msgs.reverse();
        msgs.push(msgs[1].clone());
        let mut outs = Vec::new();
        for m in msgs {
            exit.handle_message(m).unwrap();
            outs.extend(drain(&mut exit));
        }
        assert_eq!(delivered(&outs), b"aabbccdd");
        assert_eq!(outs.last(), Some(&Output::PeerFinished));
        assert!(exit.is_peer_finished());
        assert!(!exit.is_closed());
        exit.finish();
        assert!(exit.is_closed());
    }

    #[test]
    fn close_both_ways_ends_the_stream() {
        let (mut entry, mut exit) = open_pair(StreamConfig::default());
        exit.write(b"response").unwrap();
        exit.finish();
        for m in published(&drain(&mut exit)) {
            entry.handle_message(m).unwrap();
        }
        let outs = drain(&mut entry);
        assert_eq!(delivered(&outs), b"response");
        assert!(outs.contains(&Output::PeerFinished));
        assert!(!entry.is_closed());
        entry.finish();
        let close = published(&drain(&mut entry));
        assert_eq!(close[0].kind, MessageType::Close);
        assert_eq!(close[0].seq, Some(0));
        assert!(entry.is_closed());
        exit.handle_message(close[0].clone()).unwrap();
        assert!(exit.is_closed());
        assert_eq!(entry.write(b"late"), Err(EngineError::WriteClosed));
    }

    #[test]
    fn refusal_reaches_the_entry() {
        let mut entry = Stream::open(
            StreamConfig::default(),
            "k".into(),
            "x.nostr:80".into(),
            Dialect::V2,
        );
        let connect = published(&drain(&mut entry)).remove(0);
        let mut exit = Stream::accept(StreamConfig::default(), connect).unwrap();
        exit.backend_failed(ErrorReason::ConnectionRefused);
        let err = published(&drain(&mut exit)).remove(0);
        assert_eq!(err.reason.as_deref(), Some("connection-refused"));
        assert!(exit.is_closed());
        entry.handle_message(err).unwrap();
        assert_eq!(
            drain(&mut entry),
            vec![Output::Refused(ErrorReason::ConnectionRefused)]
        );
        assert!(entry.is_closed());
    }

    #[test]
    fn data_that_overtakes_connected_waits() {
        let (mut entry0, mut exit) = open_pair(StreamConfig::default());
        // A fresh entry in the Connecting state receives DATA before CONNECTED.
        let mut entry = Stream::open(
            StreamConfig::default(),
            "k".into(),
            "x.nostr:80".into(),
            Dialect::V2,
        );
        drain(&mut entry);
        drain(&mut entry0);
        exit.write(b"hi").unwrap();
        let data = published(&drain(&mut exit)).remove(0);
        entry.handle_message(data).unwrap();
        assert!(drain(&mut entry).is_empty());
        let mut connected = Message::new("k", MessageType::Connected);
        connected.version = Some(2);
        entry.handle_message(connected).unwrap();
        assert_eq!(
            drain(&mut entry),
            vec![Output::Opened, Output::Deliver(b"hi".to_vec())]
        );
    }

    #[test]
    fn seq_beyond_window_aborts() {
        let cfg = StreamConfig {
            reorder_window: 8,
            ..Default::default()
        };
        let (_, mut exit) = open_pair(cfg);
        let mut m = Message::new("k", MessageType::Data);
        m.seq = Some(8);
        m.data = b"x".to_vec();
        exit.handle_message(m).unwrap();
        let outs = drain(&mut exit);
        assert_eq!(published(&outs)[0].kind, MessageType::Error);
        assert!(outs.contains(&Output::Aborted(ErrorReason::ProtocolError)));
        assert!(exit.is_closed());
    }

    #[test]
    fn legacy_entry_gets_legacy_format() {
        let connect = Message {
            destination: "abc.nostr:80".into(),
            ..Message::new("k", MessageType::Connect)
        };
        let mut exit = Stream::accept(StreamConfig::default(), connect).unwrap();
        assert_eq!(exit.dialect(), Dialect::Legacy);
        exit.backend_connected();
        assert_eq!(drain(&mut exit), vec![Output::Opened]);
        exit.write(b"hello").unwrap();
        let m = published(&drain(&mut exit)).remove(0);
        assert_eq!(m.kind, MessageType::Socks5Response);
        assert_eq!(m.seq, None);
        assert_eq!(m.destination, "abc.nostr:80");
        exit.finish();
        assert!(published(&drain(&mut exit)).is_empty());
        // Legacy data is delivered in arrival order, DATA accepted too.
        let mut d = Message::new("k", MessageType::Data);
        d.data = b"req".to_vec();
        exit.handle_message(d).unwrap();
        assert_eq!(delivered(&drain(&mut exit)), b"req");
    }

    #[test]
    fn entry_falls_back_when_exit_answers_plain_data() {
        let mut entry = Stream::open(
            StreamConfig::default(),
            "k".into(),
            "x.nostr:80".into(),
            Dialect::V2,
        );
        drain(&mut entry);
        let mut d = Message::new("k", MessageType::Socks5Response);
        d.data = b"legacy".to_vec();
        entry.handle_message(d).unwrap();
        assert_eq!(
            drain(&mut entry),
            vec![Output::Opened, Output::Deliver(b"legacy".to_vec())]
        );
        assert_eq!(entry.dialect(), Dialect::Legacy);
        entry.write(b"x").unwrap();
        assert_eq!(
            published(&drain(&mut entry))[0].kind,
            MessageType::Socks5Response
        );
    }

    #[test]
    fn legacy_entry_is_open_at_once_and_sends_no_version() {
        let mut entry = Stream::open(
            StreamConfig::default(),
            "k".into(),
            "x.nostr:80".into(),
            Dialect::Legacy,
        );
        let outs = drain(&mut entry);
        assert_eq!(published(&outs)[0].version, None);
        assert_eq!(outs[1], Output::Opened);
    }

    #[test]
    fn rejects_messages_of_other_streams() {
        let (mut entry, _) = open_pair(StreamConfig::default());
        assert!(matches!(
            entry.handle_message(Message::new("other", MessageType::Data)),
            Err(EngineError::WrongStream { .. })
        ));
        assert!(Stream::accept(
            StreamConfig::default(),
            Message::new("k", MessageType::Data)
        )
        .is_err());
    }
}
