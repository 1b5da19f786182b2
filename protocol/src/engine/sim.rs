//! A simulated network between an entry and an exit engine, with no sockets
//! and no sleeps: the engine's own tests and the fuzz harness drive streams
//! through it (public with the `sim` feature).
//!
//! Two ways to move messages:
//! - [`exchange`] and [`fire_next_timer`]: a perfect network in lockstep,
//!   for tests that look at the streams between steps.
//! - [`run`]: a whole transfer through a [`Network`] that decides each
//!   message's fate (lost, delayed, duplicated), driven by a seeded RNG
//!   ([`Lossy`], behind [`transfer`]) or by anything else, such as fuzzer
//!   bytes (a closure is a [`Network`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Dialect, Output, Stream, StreamConfig};
use crate::message::Message;

/// Everything the engine has to say; delivered bytes count as written to
/// the local socket at once (a fast reader).
pub fn drain(s: &mut Stream) -> Vec<Output> {
    let outs: Vec<Output> = std::iter::from_fn(|| s.poll_output()).collect();
    for o in &outs {
        if let Output::Deliver(d) = o {
            s.consumed(d.len());
        }
    }
    outs
}

/// The messages among `outs`, in order.
pub fn published(outs: &[Output]) -> Vec<Message> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Publish(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// The bytes delivered among `outs`, concatenated.
pub fn delivered(outs: &[Output]) -> Vec<u8> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Deliver(d) => Some(d.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// An entry and an exit (key `k`), opened through CONNECT/CONNECTED at `t0`
/// on a perfect network. Panics if they do not open.
pub fn open_pair(config: StreamConfig, t0: Instant) -> (Stream, Stream) {
    let mut entry = Stream::open(
        config.clone(),
        "k".into(),
        "x.nostr:80".into(),
        Dialect::V2,
        t0,
    );
    let connect = published(&drain(&mut entry)).remove(0);
    assert_eq!(connect.version, Some(config.max_version.max(2)));
    let mut exit = Stream::accept(config.clone(), over_the_wire(&entry, connect), t0).unwrap();
    exit.backend_connected(t0);
    let outs = drain(&mut exit);
    assert!(outs.contains(&Output::Opened));
    for m in published(&outs) {
        entry.handle_message(over_the_wire(&exit, m), t0).unwrap();
    }
    assert_eq!(drain(&mut entry), vec![Output::Opened]);
    assert_eq!(entry.version(), config.max_version.clamp(2, 3));
    (entry, exit)
}

/// `msg` as its peer reads it after `from` wrote it in its framing
/// ([`Stream::framing`]): JSON or a version-3 frame, encoded and decoded.
/// Panics if it does not come back the same, or with the wrong sender.
pub fn over_the_wire(from: &Stream, msg: Message) -> Message {
    let back = match from.framing() {
        crate::codec::Framing::Json => Message::from_json(msg.to_json().as_bytes()).unwrap(),
        crate::codec::Framing::Binary(sender) => {
            let frame = crate::frame::encode(&msg, sender).unwrap();
            let (back, got) = crate::frame::decode(&frame).unwrap();
            assert_eq!(got, sender);
            assert_ne!(got, from.peer_side());
            back
        }
    };
    // A data message written as plain SOCKS5RESPONSE comes back as DATA in a frame.
    if msg.kind.is_data() {
        assert!(back.kind.is_data());
        assert_eq!(
            (&back.data, back.seq, back.ack),
            (&msg.data, msg.seq, msg.ack)
        );
        return msg;
    }
    assert_eq!(back, msg);
    back
}

/// Hands everything the entry queued to the exit and the exit's answers
/// back, all at `now`; returns the bytes the exit delivered. The exit's
/// reader reads them at once when `exit_reads`, else they stay undelivered
/// (a stalled reader).
pub fn exchange(entry: &mut Stream, exit: &mut Stream, now: Instant, exit_reads: bool) -> Vec<u8> {
    for m in published(&drain(entry)) {
        exit.handle_message(over_the_wire(entry, m), now).unwrap();
    }
    let outs: Vec<Output> = if exit_reads {
        drain(exit)
    } else {
        std::iter::from_fn(|| exit.poll_output()).collect()
    };
    for m in published(&outs) {
        entry.handle_message(over_the_wire(exit, m), now).unwrap();
    }
    delivered(&outs)
}

/// Fires the earlier of both ends' next timers unless it lies past `until`;
/// returns its time, or `None` when no timer is due by then.
pub fn fire_next_timer(entry: &mut Stream, exit: &mut Stream, until: Instant) -> Option<Instant> {
    let t = [entry.poll_timeout(), exit.poll_timeout()]
        .into_iter()
        .flatten()
        .min()
        .filter(|t| *t <= until)?;
    entry.handle_timeout(t);
    exit.handle_timeout(t);
    Some(t)
}

/// Decides what becomes of each message published: the delays after which
/// its copies arrive, none if it is lost, two or more if it is duplicated.
/// Different delays reorder.
pub trait Network {
    /// The fate of `msg`, published toward side `to` (0: entry, 1: exit).
    fn fate(&mut self, to: usize, msg: &Message) -> Vec<Duration>;

    /// The fate of `msg` published at `now` (networks that depend on time
    /// override this; by default it is [`Network::fate`]).
    fn fate_at(&mut self, _now: Instant, to: usize, msg: &Message) -> Vec<Duration> {
        self.fate(to, msg)
    }
}

/// A relay that takes at most `rate` events per second in each direction
/// (a token bucket with a burst of `burst`) and refuses the rest, as relays
/// with a rate limit do; what it takes arrives after `delay`.
#[derive(Debug)]
pub struct RateLimited {
    rate: f64,
    burst: f64,
    delay: Duration,
    tokens: [f64; 2],
    at: [Option<Instant>; 2],
    /// Events refused, per direction.
    pub refused: [u64; 2],
    /// Events taken, per direction.
    pub taken: [u64; 2],
}

impl RateLimited {
    /// A relay taking `rate` events per second with bursts of `burst`.
    pub fn new(rate: f64, burst: f64, delay: Duration) -> Self {
        Self {
            rate,
            burst,
            delay,
            tokens: [burst; 2],
            at: [None; 2],
            refused: [0; 2],
            taken: [0; 2],
        }
    }
}

impl Network for RateLimited {
    fn fate(&mut self, _to: usize, _msg: &Message) -> Vec<Duration> {
        vec![self.delay]
    }

    fn fate_at(&mut self, now: Instant, to: usize, _msg: &Message) -> Vec<Duration> {
        if let Some(t) = self.at[to] {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            self.tokens[to] = (self.tokens[to] + dt * self.rate).min(self.burst);
        }
        self.at[to] = Some(now);
        if self.tokens[to] < 1.0 {
            self.refused[to] += 1;
            return Vec::new();
        }
        self.tokens[to] -= 1.0;
        self.taken[to] += 1;
        vec![self.delay]
    }
}

impl<F: FnMut(usize, &Message) -> Vec<Duration>> Network for F {
    fn fate(&mut self, to: usize, msg: &Message) -> Vec<Duration> {
        self(to, msg)
    }
}

/// A lossy network's odds: each message is dropped with probability
/// `loss`, duplicated with `dup`, and delayed by a random
/// 1..=`max_delay_ms` milliseconds (which reorders).
#[derive(Debug, Clone, Copy)]
pub struct Net {
    /// Probability that a message is lost, 0..=1.
    pub loss: f64,
    /// Probability that a message arrives twice, 0..=1.
    pub dup: f64,
    /// Longest delay, in milliseconds (at least 1).
    pub max_delay_ms: u64,
}

/// [`Net`]'s odds drawn from a seeded RNG: the same seed, the same fates.
#[derive(Debug)]
pub struct Lossy {
    net: Net,
    rng: StdRng,
}

impl Lossy {
    /// A network with `net`'s odds, deterministic for `seed`.
    pub fn new(seed: u64, net: Net) -> Self {
        Self {
            net,
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl Network for Lossy {
    fn fate(&mut self, _to: usize, _msg: &Message) -> Vec<Duration> {
        if self.rng.random_bool(self.net.loss) {
            return Vec::new();
        }
        let copies = if self.rng.random_bool(self.net.dup) {
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| Duration::from_millis(self.rng.random_range(1..=self.net.max_delay_ms)))
            .collect()
    }
}

/// Messages on their way, earliest first.
struct Queue {
    heap: BinaryHeap<Reverse<(Instant, u64, usize, MessageBox)>>,
    /// Sequence number of the last message queued (ties keep send order).
    n: u64,
}

/// Orders messages in the queue by time only.
struct MessageBox(Message);
impl PartialEq for MessageBox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for MessageBox {}
impl PartialOrd for MessageBox {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for MessageBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Queue {
    fn send(&mut self, net: &mut impl Network, now: Instant, to: usize, m: Message) {
        for d in net.fate_at(now, to, &m) {
            self.n += 1;
            self.heap
                .push(Reverse((now + d, self.n, to, MessageBox(m.clone()))));
        }
    }

    fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, ..))| *t)
    }

    /// The next message due at `now`, with the side it is for.
    fn pop_due(&mut self, now: Instant) -> Option<(usize, Message)> {
        if self.next_at()? > now {
            return None;
        }
        let Reverse((_, _, to, MessageBox(m))) = self.heap.pop()?;
        Some((to, m))
    }
}

/// Result of one simulated transfer. Index 0 is the entry, 1 the exit.
#[derive(Debug)]
pub struct Transfer {
    /// What each side received: `got[0]` was sent by the exit.
    pub got: [Vec<u8>; 2],
    /// Whether each side saw [`Output::PeerFinished`].
    pub finished: [bool; 2],
    /// Whether each stream ended closed.
    pub closed: [bool; 2],
    /// The side that aborted or was refused first, and why; the transfer
    /// stopped there.
    pub ended: Option<(usize, Output)>,
    /// Most bytes [`Stream::buffered_bytes`] held on either side.
    pub peak_buffered: usize,
    /// Messages published (lost ones included).
    pub messages: u64,
    /// Most bytes delivered and not yet read, on either side.
    pub peak_undelivered: u64,
    /// Simulated time from the start until each side had read everything.
    pub read_all_at: [Duration; 2],
    /// Simulated time at which each side's reader left its slow phase.
    pub slow_ended_at: [Option<Duration>; 2],
    /// Each side's largest segment when the transfer ended, in bytes.
    pub max_segment_at_end: [usize; 2],
    /// The two streams as the transfer left them.
    pub streams: [Stream; 2],
}

/// A slow application reader: `chunk` bytes every `period`, for its first
/// `slow_for` bytes; then it reads everything at once.
#[derive(Debug, Clone, Copy)]
pub struct Reader {
    /// Bytes taken per read.
    pub chunk: usize,
    /// Time between reads.
    pub period: Duration,
    /// Bytes read slowly before the reader turns fast.
    pub slow_for: usize,
}

impl Reader {
    /// A reader that stays slow.
    pub fn slow(chunk: usize, period: Duration) -> Self {
        Self {
            chunk,
            period,
            slow_for: usize::MAX,
        }
    }
}

/// Sends `data[0]` from entry to exit and `data[1]` back, both finishing,
/// through a [`Lossy`] `net` seeded with `seed`; runs (bounded) until both
/// streams close. Panics if a side aborts or is refused.
pub fn transfer(seed: u64, net: Net, config: StreamConfig, data: [Vec<u8>; 2]) -> Transfer {
    transfer_with_reader(seed, net, config, data, None)
}

/// [`transfer`], with slow local readers ([`Reader`]) when given.
pub fn transfer_with_reader(
    seed: u64,
    net: Net,
    config: StreamConfig,
    data: [Vec<u8>; 2],
    reader: Option<Reader>,
) -> Transfer {
    let t = run(&mut Lossy::new(seed, net), config, data, reader, 4_000_000);
    match &t.ended {
        Some((i, Output::Aborted(r))) => {
            for (j, e) in t.streams.iter().enumerate() {
                eprintln!("side {j}: {}", debug_state(e));
            }
            panic!("seed {seed}: side {i} aborted: {r}")
        }
        Some((_, Output::Refused(r))) => panic!("seed {seed}: refused: {r}"),
        _ => t,
    }
}

/// Sends `data[0]` from entry to exit and `data[1]` back through `net`,
/// both finishing, from a pair opened by [`open_pair`]; runs until both
/// streams close, a side aborts or is refused ([`Transfer::ended`]), nothing
/// is left to happen, or `max_steps` events passed. With a `reader`, both
/// sides read slowly; without, at once.
pub fn run(
    net: &mut impl Network,
    config: StreamConfig,
    data: [Vec<u8>; 2],
    reader: Option<Reader>,
    max_steps: usize,
) -> Transfer {
    let t0 = Instant::now();
    let mut now = t0;
    let mut queue = Queue {
        heap: BinaryHeap::new(),
        n: 0,
    };
    let mut messages = 0u64;
    let mut peak_buffered = 0usize;
    let (entry, exit) = open_pair(config, t0);
    let mut ends = [entry, exit];
    let mut written = [0usize, 0usize];
    let mut got = [Vec::new(), Vec::new()];
    let mut finished = [false, false];
    let mut ended = None;
    // Delivered bytes the slow reader has not read yet, and when it reads next.
    let mut held: [VecDeque<u8>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut next_read = [t0, t0];
    let mut peak_undelivered = 0u64;
    let mut read_all_at = [Duration::ZERO; 2];
    let mut slow_ended_at = [None; 2];
    'steps: for _step in 0..max_steps {
        // The applications write what the engines take, then finish.
        for i in 0..2 {
            let s = &mut ends[i];
            if s.is_open() && written[i] < data[i].len() {
                let end = (written[i] + 3000).min(data[i].len());
                written[i] += s.write(&data[i][written[i]..end], now).unwrap();
            }
            if written[i] == data[i].len() {
                s.finish(now);
            }
            peak_buffered = peak_buffered.max(s.buffered_bytes());
        }
        for i in 0..2 {
            while let Some(o) = ends[i].poll_output() {
                match o {
                    Output::Publish(m) => {
                        messages += 1;
                        let m = over_the_wire(&ends[i], m);
                        queue.send(net, now, 1 - i, m);
                    }
                    Output::Deliver(d) => match reader {
                        None => {
                            ends[i].consumed(d.len());
                            got[i].extend(d)
                        }
                        Some(_) => held[i].extend(d),
                    },
                    Output::PeerFinished => finished[i] = true,
                    Output::Aborted(_) | Output::Refused(_) => {
                        ended = Some((i, o));
                        break 'steps;
                    }
                    Output::Opened => {}
                }
            }
        }
        if let Some(r) = reader {
            for i in 0..2 {
                peak_undelivered = peak_undelivered.max(ends[i].undelivered_bytes());
                let fast = got[i].len() >= r.slow_for;
                if fast && slow_ended_at[i].is_none() {
                    slow_ended_at[i] = Some(now - t0);
                }
                if !held[i].is_empty() && (fast || now >= next_read[i]) {
                    let n = if fast {
                        held[i].len()
                    } else {
                        r.chunk.min(held[i].len())
                    };
                    got[i].extend(held[i].drain(..n));
                    ends[i].consumed(n);
                    next_read[i] = now + r.period;
                }
            }
        }
        for i in 0..2 {
            if got[i].len() < data[1 - i].len() {
                read_all_at[i] = now - t0;
            }
        }
        if ends.iter().all(|s| s.is_closed()) && held.iter().all(|h| h.is_empty()) {
            break;
        }
        // Advance to the next event: a message arriving, a timer, a read.
        let next_timer = ends.iter().filter_map(|s| s.poll_timeout()).min();
        let next_reads = (0..2)
            .filter(|&i| !held[i].is_empty())
            .map(|i| next_read[i].max(now))
            .min();
        let Some(next) = [queue.next_at(), next_timer, next_reads]
            .into_iter()
            .flatten()
            .min()
        else {
            break;
        };
        now = now.max(next);
        while let Some((to, m)) = queue.pop_due(now) {
            ends[to].handle_message(m, now).unwrap();
        }
        for s in ends.iter_mut() {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
    }
    Transfer {
        got,
        finished,
        closed: [ends[0].is_closed(), ends[1].is_closed()],
        ended,
        peak_buffered,
        messages,
        peak_undelivered,
        read_all_at,
        slow_ended_at,
        max_segment_at_end: [ends[0].max_segment(), ends[1].max_segment()],
        streams: ends,
    }
}

/// The engine's insides, for a failure message.
fn debug_state(e: &Stream) -> String {
    format!(
        "state {:?} acked {} next {} in_flight {:?} fin_q {} fin_sent {} recv.next {} fin_at {:?} finished {} pending {:?} unsent {}",
        e.state, e.send.acked, e.send.next_offset,
        e.send.in_flight.iter().map(|s| (s.offset, s.data.len(), s.fin)).collect::<Vec<_>>(),
        e.send.fin_queued, e.send.fin_sent, e.recv.next, e.recv.fin_at, e.recv.finished,
        e.recv.pending.iter().map(|(o, d)| (*o, d.len())).collect::<Vec<_>>(), e.send.unsent.len()
    )
}

/// `len` bytes, the same for the same `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    (0..len).map(|_| rng.random()).collect()
}

/// Small limits that make a transfer of tens of kilobytes take many
/// segments, windows and retransmissions.
pub fn sim_config() -> StreamConfig {
    StreamConfig {
        max_segment: 1000,
        min_segment: 250,
        window: 16_000,
        send_buffer: 8_000,
        give_up_after: Duration::from_secs(600),
        // Through 30 % loss, a few pings in a row can go unanswered.
        keepalive_pings: 20,
        ..Default::default()
    }
}

/// The engine's promise through a lossy network (`loss`, 10 % duplicates,
/// up to 40 ms of delay): `len` bytes one way and `2 * len` the other
/// arrive exactly once and in order, both sides finish and close, and
/// buffers stay bounded. Panics otherwise.
pub fn check(seed: u64, loss: f64, len: usize) {
    let up = random_bytes(seed, len);
    let down = random_bytes(seed + 1, len * 2);
    let t = transfer(
        seed,
        Net {
            loss,
            dup: 0.1,
            max_delay_ms: 40,
        },
        sim_config(),
        [up.clone(), down.clone()],
    );
    assert!(
        t.got[1] == up,
        "seed {seed} loss {loss}: entry->exit bytes differ"
    );
    assert!(
        t.got[0] == down,
        "seed {seed} loss {loss}: exit->entry bytes differ"
    );
    assert_eq!(t.finished, [true, true], "seed {seed} loss {loss}");
    assert_eq!(
        t.closed,
        [true, true],
        "seed {seed} loss {loss}: not closed"
    );
    let c = sim_config();
    let bound = c.send_buffer + 2 * c.window as usize + c.window as usize * 2;
    assert!(
        t.peak_buffered <= bound,
        "buffered {} > {bound}",
        t.peak_buffered
    );
}
