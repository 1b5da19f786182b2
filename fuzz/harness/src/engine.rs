//! The sans-IO stream engine fed arbitrary message sequences, local writes
//! and timer ticks, with the peer played by the fuzzer.
//!
//! Input: a header (which side, which dialect, whether the simulated peer is
//! *consistent*, a configuration, the length `L` of the peer's byte stream)
//! and a list of [`Op`]s, in a compact byte format that [`EngineInput::encode`]
//! writes and [`EngineInput::decode`] reads (every byte string decodes).
//!
//! A consistent peer sends only bytes `f(0..L)` of one fixed stream (any
//! order, duplicates, any segmentation, any subset), closes at `L`, and
//! acknowledges only offsets it was sent. Whatever it does, the engine must
//! deliver a prefix of `f(0..L)` exactly once and in order, signal the end
//! only after all `L` bytes, and never call it a protocol error. An
//! inconsistent peer (raw sequence numbers, foreign bytes, data without
//! `seq`) may get the stream aborted, never a panic or unbounded buffers.
//!
//! The same input then drives a second check, [`through_network`]: an entry
//! and an exit engine talk through the engine's own simulated network
//! (`nws_protocol::engine::sim`), with the fuzzer deciding each message's
//! fate (lost, delayed, duplicated) instead of an RNG.

use std::time::{Duration, Instant};

use nws_protocol::engine::{sim, Dialect, EngineError, Output, Stream, StreamConfig};
use nws_protocol::{ErrorReason, Message, MessageType};

const KEY: &str = "3b1f09a8-2b10-4daa-880c-2a392e781f09";
/// Most ops run per input (bounded work per run).
const MAX_OPS: usize = 400;

/// Byte `i` of the simulated peer's stream.
pub fn peer_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (i >> 9) as u8
}

/// Byte `i` of what the local side writes.
pub fn local_byte(i: u64) -> u8 {
    (i.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 56) as u8 ^ 0x5A
}

fn peer_bytes(from: u64, len: u64) -> Vec<u8> {
    (from..from + len).map(peer_byte).collect()
}

/// One step of the simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Jump to the engine's next timer and fire it.
    Tick,
    /// Let `ms` milliseconds pass, firing the timer if it is due.
    Advance(u16),
    /// Peer data from its stream at `seq` (consistent: modulo `L + 1`), `len` bytes.
    PeerData {
        seq: u32,
        len: u16,
        ack: u32,
        window: u32,
        socks5: bool,
    },
    /// Peer data at any 64-bit `seq` with any bytes (inconsistent).
    PeerRawData { seq: u64, data: Vec<u8> },
    /// A standalone acknowledgement with up to four `[start, end)` sack ranges.
    PeerAck {
        ack: u32,
        window: u32,
        sack: Vec<(u32, u32)>,
    },
    /// The peer's `CLOSE` (consistent: at `L`).
    PeerClose { seq: u32, ack: u32 },
    /// `CONNECTED`.
    PeerConnected { ack: u32, window: u32 },
    /// `ERROR` with a reason picked by the byte.
    PeerError(u8),
    /// A repeated `CONNECT`.
    PeerConnect,
    /// A message of an unknown type (or `CONNECTR`).
    PeerUnknown(bool),
    /// Data without `seq` (legacy format; inconsistent toward v2).
    PeerPlainData(Vec<u8>),
    /// The local socket produced `len` bytes.
    Write(u16),
    /// The local socket reached end of file.
    Finish,
    /// The driver aborts.
    Abort,
    /// A relay's size limit caps segments.
    LimitSegment(u16),
    /// No relay takes messages (or one does again).
    PathDown(bool),
    /// Exit side: the backend dial succeeded.
    BackendConnected,
    /// Exit side: the backend dial failed.
    BackendFailed,
    /// A message for another stream reaches this one.
    WrongKey,
    /// The `i`-th earlier peer message arrives again.
    Replay(u8),
}

/// A whole fuzz input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInput {
    /// Bit 0: exit side (else entry). Bit 1: legacy dialect. Bit 2:
    /// consistent peer. Bits 3-4: configuration. Bit 5: the exit's
    /// `CONNECT` carries the peer's first bytes.
    pub flags: u8,
    /// Length `L` of a consistent peer's stream, in bytes.
    pub peer_len: u16,
    pub ops: Vec<Op>,
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    fn vec(&mut self) -> Vec<u8> {
        let n = usize::from(self.u8());
        (0..n).map(|_| self.u8()).collect()
    }
}

impl EngineInput {
    /// Reads an input; every byte string is one.
    pub fn decode(data: &[u8]) -> Self {
        let mut b = Bytes(data);
        let flags = b.u8();
        let peer_len = b.u16();
        let mut ops = Vec::new();
        while !b.0.is_empty() && ops.len() < MAX_OPS {
            let op = match b.u8() % 20 {
                0 => Op::Tick,
                1 => Op::Advance(b.u16()),
                2 => Op::PeerData {
                    seq: b.u32(),
                    len: b.u16(),
                    ack: b.u32(),
                    window: b.u32(),
                    socks5: b.u8() & 1 == 1,
                },
                3 => Op::PeerRawData {
                    seq: b.u64(),
                    data: b.vec(),
                },
                4 => {
                    let ack = b.u32();
                    let window = b.u32();
                    let n = b.u8() % 5;
                    let sack = (0..n).map(|_| (b.u32(), b.u32())).collect();
                    Op::PeerAck { ack, window, sack }
                }
                5 => Op::PeerClose {
                    seq: b.u32(),
                    ack: b.u32(),
                },
                6 => Op::PeerConnected {
                    ack: b.u32(),
                    window: b.u32(),
                },
                7 => Op::PeerError(b.u8()),
                8 => Op::PeerConnect,
                9 => Op::PeerUnknown(b.u8() & 1 == 1),
                10 => Op::PeerPlainData(b.vec()),
                11 => Op::Write(b.u16()),
                12 => Op::Finish,
                13 => Op::Abort,
                14 => Op::LimitSegment(b.u16()),
                15 => Op::PathDown(b.u8() & 1 == 1),
                16 => Op::BackendConnected,
                17 => Op::BackendFailed,
                18 => Op::WrongKey,
                _ => Op::Replay(b.u8()),
            };
            ops.push(op);
        }
        Self {
            flags,
            peer_len,
            ops,
        }
    }

    /// Writes the input in the format [`EngineInput::decode`] reads.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.flags];
        v.extend_from_slice(&self.peer_len.to_le_bytes());
        let u32le = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
        for op in &self.ops {
            match op {
                Op::Tick => v.push(0),
                Op::Advance(ms) => {
                    v.push(1);
                    v.extend_from_slice(&ms.to_le_bytes());
                }
                Op::PeerData {
                    seq,
                    len,
                    ack,
                    window,
                    socks5,
                } => {
                    v.push(2);
                    u32le(&mut v, *seq);
                    v.extend_from_slice(&len.to_le_bytes());
                    u32le(&mut v, *ack);
                    u32le(&mut v, *window);
                    v.push(u8::from(*socks5));
                }
                Op::PeerRawData { seq, data } => {
                    v.push(3);
                    v.extend_from_slice(&seq.to_le_bytes());
                    v.push(data.len().min(255) as u8);
                    v.extend_from_slice(&data[..data.len().min(255)]);
                }
                Op::PeerAck { ack, window, sack } => {
                    v.push(4);
                    u32le(&mut v, *ack);
                    u32le(&mut v, *window);
                    v.push(sack.len().min(4) as u8);
                    for (s, e) in sack.iter().take(4) {
                        u32le(&mut v, *s);
                        u32le(&mut v, *e);
                    }
                }
                Op::PeerClose { seq, ack } => {
                    v.push(5);
                    u32le(&mut v, *seq);
                    u32le(&mut v, *ack);
                }
                Op::PeerConnected { ack, window } => {
                    v.push(6);
                    u32le(&mut v, *ack);
                    u32le(&mut v, *window);
                }
                Op::PeerError(r) => v.extend_from_slice(&[7, *r]),
                Op::PeerConnect => v.push(8),
                Op::PeerUnknown(r) => v.extend_from_slice(&[9, u8::from(*r)]),
                Op::PeerPlainData(d) => {
                    v.push(10);
                    v.push(d.len().min(255) as u8);
                    v.extend_from_slice(&d[..d.len().min(255)]);
                }
                Op::Write(n) => {
                    v.push(11);
                    v.extend_from_slice(&n.to_le_bytes());
                }
                Op::Finish => v.push(12),
                Op::Abort => v.push(13),
                Op::LimitSegment(n) => {
                    v.push(14);
                    v.extend_from_slice(&n.to_le_bytes());
                }
                Op::PathDown(d) => v.extend_from_slice(&[15, u8::from(*d)]),
                Op::BackendConnected => v.push(16),
                Op::BackendFailed => v.push(17),
                Op::WrongKey => v.push(18),
                Op::Replay(i) => v.extend_from_slice(&[19, *i]),
            }
        }
        v
    }
}

fn config(variant: u8) -> StreamConfig {
    let base = StreamConfig::default();
    match variant & 3 {
        0 => base,
        1 => StreamConfig {
            max_segment: 512,
            min_segment: 64,
            window: 4096,
            send_buffer: 2048,
            ..base
        },
        2 => StreamConfig {
            max_segment: 1000,
            min_segment: 1,
            window: 65_536,
            send_buffer: 8192,
            ..base
        },
        _ => StreamConfig {
            max_segment: 7,
            min_segment: 1,
            window: 1024,
            send_buffer: 100,
            ..base
        },
    }
}

const REASONS: &[&str] = &[
    "connection-refused",
    "host-unreachable",
    "not-allowed",
    "too-many-streams",
    "timeout",
    "protocol-error",
    "",
    "something-else",
];

/// The simulation and what it has observed.
struct Sim {
    stream: Stream,
    config: StreamConfig,
    now: Instant,
    /// Peer bytes form one consistent stream of this length.
    consistent: bool,
    peer_len: u64,
    /// The dialect at the start (a v2 entry may fall back to legacy).
    v2: bool,
    delivered: u64,
    peer_finished: bool,
    terminal: Option<Output>,
    opened: bool,
    /// Local bytes accepted by `write`.
    written: u64,
    finished: bool,
    /// End of the highest offset published (data, or the CLOSE's one offset).
    sent_end: u64,
    peer_sent_protocol_error: bool,
    history: Vec<Message>,
}

impl Sim {
    fn msg(&self, kind: MessageType) -> Message {
        Message::new(KEY, kind)
    }

    /// A consistent peer acknowledges at most what it was sent.
    fn map_ack(&self, ack: u32) -> u64 {
        if self.consistent {
            u64::from(ack) % (self.sent_end + 1)
        } else {
            u64::from(ack)
        }
    }

    fn map_window(window: u32) -> Option<u64> {
        (window != 0).then_some(u64::from(window))
    }

    fn feed(&mut self, m: Message) {
        self.history.push(m.clone());
        if self.history.len() > 64 {
            self.history.remove(0);
        }
        let r = self.stream.handle_message(m, self.now);
        assert_eq!(r, Ok(()), "message for this stream refused");
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Tick => {
                if let Some(t) = self.stream.poll_timeout() {
                    self.now = self.now.max(t);
                    self.stream.handle_timeout(self.now);
                    if let Some(next) = self.stream.poll_timeout() {
                        assert!(
                            next > self.now,
                            "the timer fired and is due again at once (the driver would spin)"
                        );
                    }
                }
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                if self.stream.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.stream.handle_timeout(self.now);
                }
            }
            Op::PeerData {
                seq,
                len,
                ack,
                window,
                socks5,
            } => {
                let (seq, len) = if self.consistent {
                    let seq = u64::from(*seq) % (self.peer_len + 1);
                    (seq, u64::from(*len).min(self.peer_len - seq))
                } else {
                    (u64::from(*seq), u64::from(*len) % 2048)
                };
                let kind = if *socks5 {
                    MessageType::Socks5Response
                } else {
                    MessageType::Data
                };
                let mut m = self.msg(kind);
                m.seq = Some(seq);
                m.data = peer_bytes(seq, len);
                m.ack = Some(self.map_ack(*ack));
                m.window = Self::map_window(*window);
                self.feed(m);
            }
            Op::PeerRawData { seq, data } => {
                self.consistent = false;
                let mut m = self.msg(MessageType::Data);
                m.seq = Some(*seq);
                m.data = data.clone();
                self.feed(m);
            }
            Op::PeerAck { ack, window, sack } => {
                let mut m = self.msg(MessageType::Ack);
                m.ack = Some(self.map_ack(*ack));
                m.window = Self::map_window(*window);
                if !sack.is_empty() {
                    let ranges = sack
                        .iter()
                        .map(|&(s, e)| {
                            let (s, e) = (self.map_ack(s), self.map_ack(e));
                            [s.min(e), s.max(e)]
                        })
                        .collect();
                    m.sack = Some(ranges);
                }
                self.feed(m);
            }
            Op::PeerClose { seq, ack } => {
                let mut m = self.msg(MessageType::Close);
                m.seq = Some(if self.consistent {
                    self.peer_len
                } else {
                    u64::from(*seq)
                });
                m.ack = Some(self.map_ack(*ack));
                self.feed(m);
            }
            Op::PeerConnected { ack, window } => {
                let mut m = self.msg(MessageType::Connected);
                m.version = Some(2);
                m.ack = Some(self.map_ack(*ack));
                m.window = Self::map_window(*window);
                self.feed(m);
            }
            Op::PeerError(r) => {
                let reason = REASONS[usize::from(*r) % REASONS.len()];
                self.peer_sent_protocol_error |= reason == "protocol-error";
                let mut m = self.msg(MessageType::Error);
                m.reason = (!reason.is_empty()).then(|| reason.to_string());
                self.feed(m);
            }
            Op::PeerConnect => {
                let mut m = self.msg(MessageType::Connect);
                m.version = self.v2.then_some(2);
                m.destination = "x.nostr:80".into();
                self.feed(m);
            }
            Op::PeerUnknown(reverse) => {
                let kind = if *reverse {
                    MessageType::ConnectReverse
                } else {
                    MessageType::Unknown("PING".into())
                };
                let mut m = self.msg(kind);
                m.seq = Some(u64::MAX);
                m.ack = Some(u64::MAX);
                self.feed(m);
            }
            Op::PeerPlainData(data) => {
                self.consistent = false;
                let mut m = self.msg(MessageType::Socks5Response);
                m.data = data.clone();
                self.feed(m);
            }
            Op::Write(n) => {
                let capacity = self.stream.send_capacity();
                let bytes: Vec<u8> = (self.written..self.written + u64::from(*n))
                    .map(local_byte)
                    .collect();
                match self.stream.write(&bytes, self.now) {
                    Ok(taken) => {
                        if self.stream.dialect() == Dialect::V2 {
                            assert!(
                                taken <= capacity,
                                "write took {taken} > capacity {capacity}"
                            );
                        }
                        self.written += taken as u64;
                    }
                    Err(EngineError::WriteClosed) => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
            Op::Finish => {
                self.stream.finish(self.now);
                self.finished = true;
            }
            Op::Abort => self.stream.abort(ErrorReason::Other("local".into())),
            Op::LimitSegment(n) => self.stream.limit_segment(usize::from(*n), self.now),
            Op::PathDown(d) => self.stream.set_path_down(*d),
            Op::BackendConnected => self.stream.backend_connected(self.now),
            Op::BackendFailed => self.stream.backend_failed(ErrorReason::ConnectionRefused),
            Op::WrongKey => {
                let mut m = Message::new("another-stream", MessageType::Data);
                m.seq = Some(0);
                m.data = b"x".to_vec();
                let r = self.stream.handle_message(m, self.now);
                assert!(matches!(r, Err(EngineError::WrongStream { .. })), "{r:?}");
            }
            Op::Replay(i) => {
                if !self.history.is_empty() {
                    let m = self.history[usize::from(*i) % self.history.len()].clone();
                    self.feed(m);
                }
            }
        }
    }

    /// Drains the outputs and checks every invariant.
    fn check(&mut self) {
        while let Some(out) = self.stream.poll_output() {
            let v2_now = self.v2 && self.stream.dialect() == Dialect::V2;
            match &out {
                Output::Publish(m) => {
                    assert_eq!(m.key, KEY);
                    if v2_now {
                        self.check_published(m);
                    }
                }
                Output::Deliver(bytes) => {
                    assert!(
                        self.terminal.is_none(),
                        "bytes delivered after {:?}",
                        self.terminal
                    );
                    assert!(!self.peer_finished, "bytes delivered after the peer's end");
                    assert!(!bytes.is_empty(), "empty delivery");
                    if self.consistent && v2_now {
                        let want = peer_bytes(self.delivered, bytes.len() as u64);
                        assert!(
                            *bytes == want,
                            "delivered bytes at {} are not the peer's stream",
                            self.delivered
                        );
                    }
                    self.delivered += bytes.len() as u64;
                    // A fast local reader: the bytes are written at once.
                    self.stream.consumed(bytes.len());
                }
                Output::PeerFinished => {
                    assert!(!self.peer_finished, "peer finished twice");
                    assert!(
                        self.terminal.is_none(),
                        "peer finished after {:?}",
                        self.terminal
                    );
                    if self.consistent && v2_now {
                        assert_eq!(self.delivered, self.peer_len, "end before all bytes");
                    }
                    self.peer_finished = true;
                }
                Output::Opened => {
                    assert!(!self.opened, "opened twice");
                    assert!(self.terminal.is_none(), "opened after {:?}", self.terminal);
                    self.opened = true;
                }
                Output::Aborted(reason) | Output::Refused(reason) => {
                    assert!(
                        self.terminal.is_none(),
                        "second end {out:?} after {:?}",
                        self.terminal
                    );
                    if self.consistent && v2_now && !self.peer_sent_protocol_error {
                        assert_ne!(
                            *reason,
                            ErrorReason::ProtocolError,
                            "a consistent peer was called a protocol error"
                        );
                    }
                    self.terminal = Some(out.clone());
                }
            }
        }
        if self.terminal.is_some() {
            assert!(self.stream.is_closed(), "ended but not closed");
        }
        // Memory per stream is bounded whatever the peer does.
        let c = &self.config;
        let bound = c.send_buffer + 3 * c.window as usize;
        let held = self.stream.buffered_bytes();
        assert!(held <= bound, "stream holds {held} bytes, bound {bound}");
    }

    fn check_published(&mut self, m: &Message) {
        match m.kind {
            MessageType::Data => {
                let seq = m.seq.expect("v2 data has seq");
                let end = seq + m.data.len() as u64;
                assert!(end <= self.written, "sent bytes {seq}..{end} never written");
                let want: Vec<u8> = (seq..end).map(local_byte).collect();
                assert!(
                    m.data == want,
                    "sent bytes at {seq} differ from those written"
                );
                self.sent_end = self.sent_end.max(end);
            }
            MessageType::Close => {
                assert!(self.finished, "CLOSE without finish");
                assert_eq!(m.seq, Some(self.written), "CLOSE not after the last byte");
                self.sent_end = self.sent_end.max(self.written + 1);
            }
            _ => {}
        }
        if let Some(ack) = m.ack {
            let most = self.delivered + u64::from(self.peer_finished);
            assert!(ack <= most, "acknowledged {ack}, only {most} delivered");
        }
    }
}

/// Target `engine`: see the module documentation.
pub fn engine(data: &[u8]) {
    let input = EngineInput::decode(data);
    let exit = input.flags & 1 == 1;
    let legacy = input.flags & 2 == 2;
    let config = config(input.flags >> 3);
    let peer_len = u64::from(input.peer_len);
    let now = Instant::now();
    let stream = if exit {
        let mut connect = Message::new(KEY, MessageType::Connect);
        connect.destination = "x.nostr:80".into();
        if !legacy {
            connect.version = Some(2);
            connect.window = Some(65_536);
        }
        if input.flags & 32 == 32 {
            let n = peer_len.min(300);
            connect.data = peer_bytes(0, n);
            connect.seq = (!legacy).then_some(0);
        }
        Stream::accept(config.clone(), connect, now).expect("CONNECT accepted")
    } else {
        let dialect = if legacy { Dialect::Legacy } else { Dialect::V2 };
        Stream::open(
            config.clone(),
            KEY.into(),
            "x.nostr:80".into(),
            dialect,
            now,
        )
    };
    let mut sim = Sim {
        stream,
        config,
        now,
        consistent: input.flags & 4 == 4 && !legacy,
        peer_len,
        v2: !legacy,
        delivered: 0,
        peer_finished: false,
        terminal: None,
        opened: false,
        written: 0,
        finished: false,
        sent_end: 0,
        peer_sent_protocol_error: false,
        history: Vec::new(),
    };
    sim.check();
    for op in &input.ops {
        sim.apply(op);
        sim.check();
    }
    through_network(data);
}

/// Most bytes each way in [`through_network`].
const MAX_TRANSFER: u16 = 2048;

/// Two engines, entry and exit, send each other a few kilobytes and finish,
/// through [`sim::run`]. The header's configuration bits and peer length
/// pick the configuration and the sizes; every following byte is the fate
/// of one message: its low two bits 1 lose it, 2 duplicate it (the next
/// byte delays the copy), anything else delivers it once, after `1 + (byte
/// >> 2)` ms. Once the bytes run out the network is perfect.
///
/// Whatever the fates, each side receives a prefix of what the other
/// wrote, exactly once and in order, buffers stay bounded, and the only
/// way to end early is giving up on a peer that stopped acknowledging
/// ([`ErrorReason::Timeout`]): never a protocol error. Otherwise everything
/// arrives and both streams finish and close.
pub fn through_network(data: &[u8]) {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let config = config(byte(0) >> 3);
    let len = u16::from_le_bytes([byte(1), byte(2)]);
    let up: Vec<u8> = (0..u64::from(len % MAX_TRANSFER)).map(local_byte).collect();
    let down = peer_bytes(0, u64::from((len >> 5) % MAX_TRANSFER));
    let mut fates = data.iter().skip(3).copied();
    let ms = |b: u8| Duration::from_millis(1 + u64::from(b >> 2));
    let mut network = |_to: usize, _m: &Message| match fates.next() {
        None => vec![Duration::from_millis(1)],
        Some(b) => match b & 3 {
            1 => Vec::new(),
            2 => vec![ms(b), ms(fates.next().unwrap_or(0))],
            _ => vec![ms(b)],
        },
    };
    let t = sim::run(
        &mut network,
        config.clone(),
        [up.clone(), down.clone()],
        None,
        1_000_000,
    );
    assert!(up.starts_with(&t.got[1]), "the exit got other bytes");
    assert!(down.starts_with(&t.got[0]), "the entry got other bytes");
    let bound = config.send_buffer + 3 * config.window as usize;
    assert!(
        t.peak_buffered <= bound,
        "held {} bytes, bound {bound}",
        t.peak_buffered
    );
    match &t.ended {
        None => {
            assert!(
                t.got[1] == up,
                "the exit got {} of {} bytes",
                t.got[1].len(),
                up.len()
            );
            assert!(
                t.got[0] == down,
                "the entry got {} of {} bytes",
                t.got[0].len(),
                down.len()
            );
            assert_eq!(t.finished, [true, true], "not both finished");
            assert_eq!(t.closed, [true, true], "not both closed");
        }
        Some((_, Output::Aborted(ErrorReason::Timeout))) => {}
        Some((side, end)) => panic!("side {side} ended with {end:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fate_keeps_the_transfer_whole() {
        // Perfect, then lossy with duplicates and delays, on each configuration.
        for flags in [0u8, 8, 16, 24] {
            through_network(&[flags, 0xff, 0x3f]);
            let mut input = vec![flags, 0x40, 0x21];
            input.extend((0..600u32).map(|i| (i * 37 % 251) as u8));
            through_network(&input);
        }
    }
}
