//! Engine tests: single steps, and a deterministic simulated network that
//! drops, duplicates, delays and reorders messages (seeded), no sockets and
//! no sleeps.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// Everything the engine has to say; delivered bytes count as written to
/// the local socket at once (a fast reader).
fn drain(s: &mut Stream) -> Vec<Output> {
    let outs: Vec<Output> = std::iter::from_fn(|| s.poll_output()).collect();
    for o in &outs {
        if let Output::Deliver(d) = o {
            s.consumed(d.len());
        }
    }
    outs
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

fn cfg(max_segment: usize) -> StreamConfig {
    StreamConfig {
        max_segment,
        min_segment: 1,
        ..Default::default()
    }
}

/// An entry and an exit, opened through CONNECT/CONNECTED at `t0`.
fn open_pair(config: StreamConfig, t0: Instant) -> (Stream, Stream) {
    let mut entry = Stream::open(
        config.clone(),
        "k".into(),
        "x.nostr:80".into(),
        Dialect::V2,
        t0,
    );
    let connect = published(&drain(&mut entry)).remove(0);
    assert_eq!(connect.version, Some(2));
    let mut exit = Stream::accept(config, connect, t0).unwrap();
    exit.backend_connected(t0);
    let outs = drain(&mut exit);
    assert!(outs.contains(&Output::Opened));
    for m in published(&outs) {
        entry.handle_message(m, t0).unwrap();
    }
    assert_eq!(drain(&mut entry), vec![Output::Opened]);
    (entry, exit)
}

#[test]
fn splits_writes_into_offsets() {
    let t0 = Instant::now();
    let (mut entry, _) = open_pair(cfg(4), t0);
    assert_eq!(entry.write(b"0123456789", t0), Ok(10));
    let mut msgs = published(&drain(&mut entry));
    assert_eq!(msgs.len(), 2, "the 2-byte tail waits to be coalesced");
    let t1 = entry.poll_timeout().unwrap();
    assert_eq!(t1, t0 + StreamConfig::default().coalesce_delay);
    entry.handle_timeout(t1);
    msgs.extend(published(&drain(&mut entry)));
    let seqs: Vec<_> = msgs.iter().map(|m| m.seq.unwrap()).collect();
    assert_eq!(seqs, vec![0, 4, 8]);
    assert_eq!(msgs[2].data, b"89");
    assert!(msgs
        .iter()
        .all(|m| m.kind == MessageType::Data && m.ack == Some(0)));
}

#[test]
fn reorders_out_of_order_messages_and_drops_duplicates() {
    let t0 = Instant::now();
    let (mut entry, mut exit) = open_pair(cfg(2), t0);
    entry.write(b"aabbccdd", t0).unwrap();
    entry.finish(t0);
    let mut msgs = published(&drain(&mut entry));
    assert_eq!(msgs.last().unwrap().kind, MessageType::Close);
    assert_eq!(msgs.last().unwrap().seq, Some(8));
    msgs.reverse();
    msgs.push(msgs[1].clone());
    let mut outs = Vec::new();
    for m in msgs {
        exit.handle_message(m, t0).unwrap();
        outs.extend(drain(&mut exit));
    }
    assert_eq!(delivered(&outs), b"aabbccdd");
    assert!(outs.contains(&Output::PeerFinished));
    assert!(exit.is_peer_finished());
    // Gaps were reported with standalone acknowledgements.
    assert!(published(&outs).iter().any(|m| m.kind == MessageType::Ack));
}

#[test]
fn close_both_ways_lingers_then_ends() {
    let t0 = Instant::now();
    let (mut entry, mut exit) = open_pair(StreamConfig::default(), t0);
    exit.write(b"response", t0).unwrap();
    exit.finish(t0);
    for m in published(&drain(&mut exit)) {
        entry.handle_message(m, t0).unwrap();
    }
    let outs = drain(&mut entry);
    assert_eq!(delivered(&outs), b"response");
    assert!(outs.contains(&Output::PeerFinished));
    entry.finish(t0);
    let to_exit = published(&drain(&mut entry));
    assert_eq!(to_exit.last().unwrap().kind, MessageType::Close);
    for m in to_exit {
        exit.handle_message(m, t0).unwrap();
    }
    for m in published(&drain(&mut exit)) {
        entry.handle_message(m, t0).unwrap();
    }
    drain(&mut entry);
    assert!(!entry.is_open() && !entry.is_closed(), "entry lingers");
    let linger = entry.poll_timeout().unwrap();
    assert_eq!(linger, t0 + StreamConfig::default().give_up_after);
    entry.handle_timeout(linger);
    assert!(entry.is_closed());
    assert_eq!(entry.write(b"late", linger), Err(EngineError::WriteClosed));
}

#[test]
fn refusal_reaches_the_entry() {
    let t0 = Instant::now();
    let mut entry = Stream::open(
        StreamConfig::default(),
        "k".into(),
        "x:80".into(),
        Dialect::V2,
        t0,
    );
    let connect = published(&drain(&mut entry)).remove(0);
    let mut exit = Stream::accept(StreamConfig::default(), connect, t0).unwrap();
    exit.backend_failed(ErrorReason::ConnectionRefused);
    let err = published(&drain(&mut exit)).remove(0);
    assert_eq!(err.reason.as_deref(), Some("connection-refused"));
    assert!(exit.is_closed());
    entry.handle_message(err, t0).unwrap();
    assert_eq!(
        drain(&mut entry),
        vec![Output::Refused(ErrorReason::ConnectionRefused)]
    );
    assert!(entry.is_closed());
}

#[test]
fn connect_is_retransmitted_until_answered() {
    let t0 = Instant::now();
    let mut entry = Stream::open(
        StreamConfig::default(),
        "k".into(),
        "x:80".into(),
        Dialect::V2,
        t0,
    );
    drain(&mut entry);
    let t1 = entry.poll_timeout().unwrap();
    assert_eq!(t1, t0 + StreamConfig::default().initial_rto);
    entry.handle_timeout(t1);
    let again = published(&drain(&mut entry));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].kind, MessageType::Connect);
    // The exit answers a repeated CONNECT with CONNECTED again.
    let mut exit = Stream::accept(StreamConfig::default(), again[0].clone(), t1).unwrap();
    exit.backend_connected(t1);
    drain(&mut exit);
    exit.handle_message(again[0].clone(), t1).unwrap();
    assert_eq!(published(&drain(&mut exit))[0].kind, MessageType::Connected);
}

#[test]
fn data_that_overtakes_connected_waits() {
    let t0 = Instant::now();
    let mut entry = Stream::open(
        StreamConfig::default(),
        "k".into(),
        "x:80".into(),
        Dialect::V2,
        t0,
    );
    drain(&mut entry);
    let mut data = Message::new("k", MessageType::Data);
    data.seq = Some(2);
    data.ack = Some(0);
    data.data = b"llo".to_vec();
    let mut first = data.clone();
    first.seq = Some(0);
    first.data = b"he".to_vec();
    // Data from a v2 exit opens the stream; the gap before it holds delivery.
    entry.handle_message(data, t0).unwrap();
    let outs = drain(&mut entry);
    assert_eq!(outs[0], Output::Opened);
    assert!(delivered(&outs).is_empty());
    let mut connected = Message::new("k", MessageType::Connected);
    connected.version = Some(2);
    entry.handle_message(connected, t0).unwrap();
    assert!(delivered(&drain(&mut entry)).is_empty());
    entry.handle_message(first, t0).unwrap();
    assert_eq!(delivered(&drain(&mut entry)), b"hello");
}

#[test]
fn data_from_a_v2_exit_opens_the_stream_when_connected_was_lost() {
    let t0 = Instant::now();
    let mut entry = Stream::open(
        StreamConfig::default(),
        "k".into(),
        "x:80".into(),
        Dialect::V2,
        t0,
    );
    drain(&mut entry);
    let mut data = Message::new("k", MessageType::Data);
    data.seq = Some(0);
    data.ack = Some(0);
    data.data = b"hi".to_vec();
    entry.handle_message(data, t0).unwrap();
    let outs = drain(&mut entry);
    assert_eq!(outs[0], Output::Opened);
    assert_eq!(delivered(&outs), b"hi");
}

#[test]
fn retransmits_after_timeout_and_shrinks_segments_that_keep_vanishing() {
    let t0 = Instant::now();
    let mut c = cfg(8);
    c.min_segment = 2;
    let (mut entry, mut exit) = open_pair(c, t0);
    entry.write(b"abcdefgh", t0).unwrap();
    let lost = published(&drain(&mut entry));
    assert_eq!(lost.len(), 1);
    let t1 = entry.poll_timeout().unwrap();
    entry.handle_timeout(t1);
    let retry = published(&drain(&mut entry));
    assert_eq!(retry[0].data, b"abcdefgh");
    let t2 = entry.poll_timeout().unwrap();
    assert!(t2 - t1 > t1 - t0, "backoff doubles the timeout");
    entry.handle_timeout(t2);
    assert_eq!(
        published(&drain(&mut entry)).len(),
        1,
        "same size after two timeouts"
    );
    let t2 = entry.poll_timeout().unwrap();
    entry.handle_timeout(t2);
    let smaller = published(&drain(&mut entry));
    assert_eq!(smaller.len(), 2, "split in half after the third timeout");
    assert_eq!((smaller[0].seq, smaller[1].seq), (Some(0), Some(4)));
    for m in smaller {
        exit.handle_message(m, t2).unwrap();
    }
    assert_eq!(delivered(&drain(&mut exit)), b"abcdefgh");
}

#[test]
fn a_segment_limit_resends_larger_messages_in_flight_split() {
    let t0 = Instant::now();
    let (mut entry, mut exit) = open_pair(cfg(8), t0);
    entry.write(b"abcdefghABCDEFGH", t0).unwrap();
    assert_eq!(published(&drain(&mut entry)).len(), 2);
    // The relay rejected both as too large.
    entry.limit_segment(3, t0);
    let resent = published(&drain(&mut entry));
    let seqs: Vec<_> = resent.iter().map(|m| m.seq.unwrap()).collect();
    assert_eq!(seqs, vec![0, 3, 6, 8, 11, 14]);
    assert!(resent.iter().all(|m| m.data.len() <= 3));
    for m in resent {
        exit.handle_message(m, t0).unwrap();
    }
    assert_eq!(delivered(&drain(&mut exit)), b"abcdefghABCDEFGH");
    assert_eq!(entry.max_segment(), 3);
}

#[test]
fn does_not_shrink_segments_while_no_relay_takes_messages() {
    let t0 = Instant::now();
    let (mut entry, _) = open_pair(cfg(8), t0);
    entry.write(b"abcdefgh", t0).unwrap();
    drain(&mut entry);
    entry.set_path_down(true);
    for _ in 0..4 {
        let t = entry.poll_timeout().unwrap();
        entry.handle_timeout(t);
        drain(&mut entry);
    }
    assert_eq!(entry.max_segment(), 8);
}

#[test]
fn fast_retransmits_on_gap_reports() {
    let t0 = Instant::now();
    let (mut entry, mut exit) = open_pair(cfg(1), t0);
    entry.write(b"abcd", t0).unwrap();
    let msgs = published(&drain(&mut entry));
    assert_eq!(msgs.len(), 4);
    // The first is lost; the other three each make the exit report the gap.
    let mut acks = Vec::new();
    for m in msgs[1..].iter().cloned() {
        exit.handle_message(m, t0).unwrap();
        acks.extend(published(&drain(&mut exit)));
    }
    assert!(acks
        .iter()
        .all(|a| a.kind == MessageType::Ack && a.ack == Some(0)));
    let mut resent = Vec::new();
    for a in acks {
        entry.handle_message(a, t0).unwrap();
        resent.extend(published(&drain(&mut entry)));
    }
    assert_eq!(
        resent.len(),
        1,
        "one fast retransmission, before any timeout"
    );
    assert_eq!(resent[0].seq, Some(0));
    exit.handle_message(resent[0].clone(), t0).unwrap();
    assert_eq!(delivered(&drain(&mut exit)), b"abcd");
}

#[test]
fn window_bounds_bytes_in_flight() {
    let t0 = Instant::now();
    let c = StreamConfig {
        max_segment: 100,
        window: 1000,
        send_buffer: 500,
        ..Default::default()
    };
    let (mut entry, _) = open_pair(c, t0);
    let big = vec![7u8; 10_000];
    let taken = entry.write(&big, t0).unwrap();
    assert_eq!(taken, 1500, "window plus send buffer");
    let sent: usize = published(&drain(&mut entry))
        .iter()
        .map(|m| m.data.len())
        .sum();
    assert_eq!(sent, 1000, "no more than the window in flight");
    assert_eq!(entry.send_capacity(), 0);
    assert_eq!(entry.write(&big, t0), Ok(0));
}

#[test]
fn gives_up_on_a_peer_that_never_acknowledges() {
    let t0 = Instant::now();
    let (mut entry, _) = open_pair(StreamConfig::default(), t0);
    entry.write(b"x", t0).unwrap();
    drain(&mut entry);
    let mut now = t0;
    let mut aborted = false;
    for _ in 0..1000 {
        let Some(t) = entry.poll_timeout() else { break };
        now = t;
        entry.handle_timeout(now);
        if drain(&mut entry).contains(&Output::Aborted(ErrorReason::Timeout)) {
            aborted = true;
            break;
        }
    }
    assert!(aborted);
    assert!(entry.is_closed());
    assert!(now - t0 >= StreamConfig::default().give_up_after);
}

#[test]
fn protocol_errors_abort() {
    let t0 = Instant::now();
    let (_, mut exit) = open_pair(StreamConfig::default(), t0);
    let mut m = Message::new("k", MessageType::Ack);
    m.ack = Some(5); // nothing was sent
    exit.handle_message(m, t0).unwrap();
    let outs = drain(&mut exit);
    assert_eq!(published(&outs)[0].kind, MessageType::Error);
    assert!(outs.contains(&Output::Aborted(ErrorReason::ProtocolError)));

    let (_, mut exit) = open_pair(StreamConfig::default(), t0);
    let mut close = Message::new("k", MessageType::Close);
    close.seq = Some(2);
    exit.handle_message(close, t0).unwrap();
    let mut late = Message::new("k", MessageType::Data);
    late.seq = Some(2);
    late.data = b"zz".to_vec();
    exit.handle_message(late, t0).unwrap();
    assert!(drain(&mut exit).contains(&Output::Aborted(ErrorReason::ProtocolError)));
}

#[test]
fn data_far_beyond_the_window_is_dropped_not_buffered() {
    let t0 = Instant::now();
    let (_, mut exit) = open_pair(StreamConfig::default(), t0);
    let mut m = Message::new("k", MessageType::Data);
    m.seq = Some(10 * StreamConfig::default().window);
    m.data = vec![1; 100];
    exit.handle_message(m, t0).unwrap();
    assert_eq!(exit.buffered_bytes(), 0);
    assert!(!exit.is_closed());
}

#[test]
fn legacy_entry_gets_legacy_format() {
    let t0 = Instant::now();
    let connect = Message {
        destination: "abc.nostr:80".into(),
        ..Message::new("k", MessageType::Connect)
    };
    let mut exit = Stream::accept(StreamConfig::default(), connect, t0).unwrap();
    assert_eq!(exit.dialect(), Dialect::Legacy);
    exit.backend_connected(t0);
    assert_eq!(drain(&mut exit), vec![Output::Opened]);
    exit.write(b"hello", t0).unwrap();
    let m = published(&drain(&mut exit)).remove(0);
    assert_eq!(m.kind, MessageType::Socks5Response);
    assert_eq!((m.seq, m.ack), (None, None));
    assert_eq!(m.destination, "abc.nostr:80");
    exit.finish(t0);
    assert!(published(&drain(&mut exit)).is_empty());
    assert_eq!(exit.poll_timeout(), None, "legacy streams never retransmit");
    let mut d = Message::new("k", MessageType::Data);
    d.data = b"req".to_vec();
    exit.handle_message(d.clone(), t0).unwrap();
    exit.handle_message(d, t0).unwrap();
    assert_eq!(
        delivered(&drain(&mut exit)),
        b"reqreq",
        "arrival order, as given"
    );
}

#[test]
fn entry_falls_back_when_exit_answers_plain_data() {
    let t0 = Instant::now();
    let mut entry = Stream::open(
        StreamConfig::default(),
        "k".into(),
        "x:80".into(),
        Dialect::V2,
        t0,
    );
    drain(&mut entry);
    let mut d = Message::new("k", MessageType::Socks5Response);
    d.data = b"legacy".to_vec();
    entry.handle_message(d, t0).unwrap();
    assert_eq!(
        drain(&mut entry),
        vec![Output::Opened, Output::Deliver(b"legacy".to_vec())]
    );
    assert_eq!(entry.dialect(), Dialect::Legacy);
    assert_eq!(
        entry.poll_timeout(),
        None,
        "no CONNECT retransmission to a legacy exit"
    );
    entry.write(b"x", t0).unwrap();
    assert_eq!(
        published(&drain(&mut entry))[0].kind,
        MessageType::Socks5Response
    );
}

#[test]
fn rejects_messages_of_other_streams() {
    let t0 = Instant::now();
    let (mut entry, _) = open_pair(StreamConfig::default(), t0);
    assert!(matches!(
        entry.handle_message(Message::new("other", MessageType::Data), t0),
        Err(EngineError::WrongStream { .. })
    ));
    assert!(Stream::accept(
        StreamConfig::default(),
        Message::new("k", MessageType::Data),
        t0
    )
    .is_err());
}

// ---- simulated network -------------------------------------------------------

/// A lossy network between two engines: each message is dropped with
/// probability `loss`, duplicated with `dup`, and delayed by a random
/// 1..=`max_delay_ms` (which reorders).
struct Net {
    loss: f64,
    dup: f64,
    max_delay_ms: u64,
}

struct Sim {
    rng: StdRng,
    now: Instant,
    queue: BinaryHeap<Reverse<(Instant, u64, usize, MessageBox)>>,
    n: u64,
    net: Net,
    peak_buffered: usize,
    messages: u64,
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

impl Sim {
    fn send(&mut self, to: usize, m: Message) {
        self.messages += 1;
        if self.rng.random_bool(self.net.loss) {
            return;
        }
        let copies = if self.rng.random_bool(self.net.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = Duration::from_millis(self.rng.random_range(1..=self.net.max_delay_ms));
            self.n += 1;
            self.queue
                .push(Reverse((self.now + d, self.n, to, MessageBox(m.clone()))));
        }
    }
}

/// Result of one simulated transfer.
struct Transfer {
    got: [Vec<u8>; 2],
    finished: [bool; 2],
    closed: [bool; 2],
    peak_buffered: usize,
    messages: u64,
    /// Most bytes delivered and not yet read, on either side.
    peak_undelivered: u64,
    /// Simulated time from the start until each side had read everything.
    read_all_at: [Duration; 2],
    /// Simulated time at which each side's reader left its slow phase.
    slow_ended_at: [Option<Duration>; 2],
    /// Each side's largest segment when the transfer ended, in bytes.
    max_segment_at_end: [usize; 2],
}

/// A slow application reader: `chunk` bytes every `period`, for its first
/// `slow_for` bytes; then it reads everything at once.
#[derive(Clone, Copy)]
struct Reader {
    chunk: usize,
    period: Duration,
    slow_for: usize,
}

impl Reader {
    fn slow(chunk: usize, period: Duration) -> Self {
        Self {
            chunk,
            period,
            slow_for: usize::MAX,
        }
    }
}

/// Sends `data[0]` from entry to exit and `data[1]` back, both finishing,
/// through `net`; runs (bounded) until both streams close.
fn transfer(seed: u64, net: Net, config: StreamConfig, data: [Vec<u8>; 2]) -> Transfer {
    transfer_with_reader(seed, net, config, data, None)
}

/// [`transfer`], with slow local readers ([`Reader`]) when given.
fn transfer_with_reader(
    seed: u64,
    net: Net,
    config: StreamConfig,
    data: [Vec<u8>; 2],
    reader: Option<Reader>,
) -> Transfer {
    let t0 = Instant::now();
    let mut sim = Sim {
        rng: StdRng::seed_from_u64(seed),
        now: t0,
        queue: BinaryHeap::new(),
        n: 0,
        net,
        peak_buffered: 0,
        messages: 0,
    };
    let (entry, exit) = open_pair(config.clone(), t0);
    let mut ends = [entry, exit];
    let mut written = [0usize, 0usize];
    let mut got = [Vec::new(), Vec::new()];
    let mut finished = [false, false];
    // Delivered bytes the slow reader has not read yet, and when it reads next.
    let mut held: [VecDeque<u8>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut next_read = [t0, t0];
    let mut peak_undelivered = 0u64;
    let mut read_all_at = [Duration::ZERO; 2];
    let mut slow_ended_at = [None; 2];
    for _step in 0..4_000_000 {
        // The applications write what the engines take, then finish.
        for i in 0..2 {
            let s = &mut ends[i];
            if s.is_open() && written[i] < data[i].len() {
                let end = (written[i] + 3000).min(data[i].len());
                written[i] += s.write(&data[i][written[i]..end], sim.now).unwrap();
            }
            if written[i] == data[i].len() {
                s.finish(sim.now);
            }
            sim.peak_buffered = sim.peak_buffered.max(s.buffered_bytes());
        }
        for i in 0..2 {
            while let Some(o) = ends[i].poll_output() {
                match o {
                    Output::Publish(m) => sim.send(1 - i, m),
                    Output::Deliver(d) => match reader {
                        None => {
                            ends[i].consumed(d.len());
                            got[i].extend(d)
                        }
                        Some(_) => held[i].extend(d),
                    },
                    Output::PeerFinished => finished[i] = true,
                    Output::Aborted(r) => {
                        for (j, e) in ends.iter().enumerate() {
                            eprintln!(
                                "side {j}: state {:?} acked {} next {} in_flight {:?} fin_q {} fin_sent {} recv.next {} fin_at {:?} finished {} pending {:?} unsent {}",
                                e.state, e.send.acked, e.send.next_offset,
                                e.send.in_flight.iter().map(|s| (s.offset, s.data.len(), s.fin)).collect::<Vec<_>>(),
                                e.send.fin_queued, e.send.fin_sent, e.recv.next, e.recv.fin_at, e.recv.finished,
                                e.recv.pending.iter().map(|(o, d)| (*o, d.len())).collect::<Vec<_>>(), e.send.unsent.len()
                            );
                        }
                        panic!("seed {seed}: side {i} aborted: {r}")
                    }
                    Output::Refused(r) => panic!("seed {seed}: refused: {r}"),
                    Output::Opened => {}
                }
            }
        }
        if let Some(r) = reader {
            for i in 0..2 {
                peak_undelivered = peak_undelivered.max(ends[i].undelivered_bytes());
                let fast = got[i].len() >= r.slow_for;
                if fast && slow_ended_at[i].is_none() {
                    slow_ended_at[i] = Some(sim.now - t0);
                }
                if !held[i].is_empty() && (fast || sim.now >= next_read[i]) {
                    let n = if fast {
                        held[i].len()
                    } else {
                        r.chunk.min(held[i].len())
                    };
                    got[i].extend(held[i].drain(..n));
                    ends[i].consumed(n);
                    next_read[i] = sim.now + r.period;
                }
            }
        }
        for i in 0..2 {
            if got[i].len() < data[1 - i].len() {
                read_all_at[i] = sim.now - t0;
            }
        }
        if ends.iter().all(|s| s.is_closed()) && held.iter().all(|h| h.is_empty()) {
            break;
        }
        // Advance to the next event: a message arriving, a timer, a read.
        let next_msg = sim.queue.peek().map(|Reverse((t, ..))| *t);
        let next_timer = ends.iter().filter_map(|s| s.poll_timeout()).min();
        let next_reads = (0..2)
            .filter(|&i| !held[i].is_empty())
            .map(|i| next_read[i].max(sim.now))
            .min();
        let Some(next) = [next_msg, next_timer, next_reads]
            .into_iter()
            .flatten()
            .min()
        else {
            break;
        };
        sim.now = sim.now.max(next);
        while let Some(Reverse((t, ..))) = sim.queue.peek() {
            if *t > sim.now {
                break;
            }
            let Some(Reverse((_, _, to, MessageBox(m)))) = sim.queue.pop() else {
                break;
            };
            ends[to].handle_message(m, sim.now).unwrap();
        }
        for s in ends.iter_mut() {
            if s.poll_timeout().is_some_and(|t| t <= sim.now) {
                s.handle_timeout(sim.now);
            }
        }
    }
    Transfer {
        // got[0] is what the entry received (sent by the exit) and vice versa.
        got,
        finished,
        closed: [ends[0].is_closed(), ends[1].is_closed()],
        peak_buffered: sim.peak_buffered,
        messages: sim.messages,
        peak_undelivered,
        read_all_at,
        slow_ended_at,
        max_segment_at_end: [ends[0].max_segment(), ends[1].max_segment()],
    }
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    (0..len).map(|_| rng.random()).collect()
}

fn sim_config() -> StreamConfig {
    StreamConfig {
        max_segment: 1000,
        min_segment: 250,
        window: 16_000,
        send_buffer: 8_000,
        give_up_after: Duration::from_secs(600),
        ..Default::default()
    }
}

fn check(seed: u64, loss: f64, len: usize) {
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

#[test]
fn delivers_exactly_once_in_order_on_a_perfect_network() {
    let data = random_bytes(1, 200_000);
    let t = transfer(
        1,
        Net {
            loss: 0.0,
            dup: 0.0,
            max_delay_ms: 1,
        },
        sim_config(),
        [data.clone(), Vec::new()],
    );
    assert!(t.got[1] == data);
    // Acknowledgements are batched: far fewer than one per data message.
    let data_msgs = 200_000 / 1000;
    assert!(
        t.messages < data_msgs as u64 * 3 / 2,
        "{} messages",
        t.messages
    );
}

#[test]
fn delivers_exactly_once_in_order_through_loss_duplication_and_reordering() {
    for seed in 0..40 {
        for loss in [0.0, 0.05, 0.1, 0.2, 0.3] {
            check(seed, loss, 20_000);
        }
    }
}

#[test]
fn first_bytes_ride_in_the_connect_and_are_acknowledged_by_connected() {
    let t0 = Instant::now();
    let (mut entry, taken) = Stream::open_early(
        StreamConfig::default(),
        "k".into(),
        "x.nostr:80".into(),
        Dialect::V2,
        b"GET / HTTP/1.1\r\n\r\n",
        t0,
    );
    assert_eq!(taken, 18);
    let connect = published(&drain(&mut entry)).remove(0);
    assert_eq!(connect.kind, MessageType::Connect);
    assert_eq!(
        (connect.seq, &connect.data[..]),
        (Some(0), &b"GET / HTTP/1.1\r\n\r\n"[..])
    );
    // The CONNECT is lost once: its retransmission carries the bytes again.
    let t1 = entry.poll_timeout().unwrap();
    entry.handle_timeout(t1);
    let again = published(&drain(&mut entry));
    assert_eq!(
        again.len(),
        1,
        "only the CONNECT, no separate data: {again:?}"
    );
    assert_eq!(again[0].data, connect.data);
    let mut exit = Stream::accept(StreamConfig::default(), again[0].clone(), t1).unwrap();
    exit.backend_connected(t1);
    let outs = drain(&mut exit);
    assert_eq!(delivered(&outs), b"GET / HTTP/1.1\r\n\r\n");
    let connected = published(&outs);
    assert_eq!(connected[0].kind, MessageType::Connected);
    assert_eq!(
        connected[0].ack,
        Some(18),
        "CONNECTED acknowledges the 0-RTT bytes"
    );
    for m in connected {
        entry.handle_message(m, t1).unwrap();
    }
    assert!(drain(&mut entry).contains(&Output::Opened));
    assert_eq!(entry.buffered_bytes(), 0, "nothing left in flight");
    // Later bytes follow at offset 18.
    entry.write(b"more", t1).unwrap();
    let m = published(&drain(&mut entry)).remove(0);
    assert_eq!(m.seq, Some(18));
}

#[test]
fn first_bytes_not_acknowledged_are_retransmitted_as_data() {
    let t0 = Instant::now();
    let (mut entry, _) = Stream::open_early(
        StreamConfig::default(),
        "k".into(),
        "x.nostr:80".into(),
        Dialect::V2,
        b"hello",
        t0,
    );
    drain(&mut entry);
    // An exit that answers without acknowledging (ack 0).
    let mut connected = Message::new("k", MessageType::Connected);
    connected.version = Some(2);
    connected.ack = Some(0);
    connected.window = Some(1000);
    entry.handle_message(connected, t0).unwrap();
    drain(&mut entry);
    let t1 = entry.poll_timeout().expect("a retransmission timer");
    entry.handle_timeout(t1);
    let resent = published(&drain(&mut entry));
    assert_eq!(resent[0].kind, MessageType::Data);
    assert_eq!(
        (resent[0].seq, &resent[0].data[..]),
        (Some(0), &b"hello"[..])
    );
}

#[test]
fn first_bytes_go_again_as_plain_data_to_an_exit_that_answers_legacy() {
    let t0 = Instant::now();
    let (mut entry, _) = Stream::open_early(
        StreamConfig::default(),
        "k".into(),
        "x.nostr:80".into(),
        Dialect::V2,
        b"hello",
        t0,
    );
    drain(&mut entry);
    let mut plain = Message::new("k", MessageType::Socks5Response);
    plain.data = b"hi".to_vec();
    entry.handle_message(plain, t0).unwrap();
    let outs = drain(&mut entry);
    assert_eq!(entry.dialect(), Dialect::Legacy);
    let sent = published(&outs);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].seq, &sent[0].data[..]), (None, &b"hello"[..]));
}

#[test]
fn a_slow_reader_closes_the_window_and_loses_nothing() {
    // The reader takes 500 bytes every 50 ms (10 KB/s) while the peer could
    // send far faster: the window closes, zero-window probes and window
    // updates reopen it, through loss, and the undelivered backlog never
    // exceeds the window.
    for (seed, loss) in [(1, 0.0), (2, 0.1), (3, 0.2)] {
        let up = random_bytes(seed, 5_000);
        let down = random_bytes(seed + 1, 60_000);
        let t = transfer_with_reader(
            seed,
            Net {
                loss,
                dup: 0.1,
                max_delay_ms: 40,
            },
            sim_config(),
            [up.clone(), down.clone()],
            Some(Reader::slow(500, Duration::from_millis(50))),
        );
        assert!(t.got[1] == up, "seed {seed} loss {loss}: up differs");
        assert!(t.got[0] == down, "seed {seed} loss {loss}: down differs");
        assert_eq!(t.closed, [true, true], "seed {seed} loss {loss}");
        assert!(
            t.peak_undelivered <= sim_config().window,
            "undelivered {} > window",
            t.peak_undelivered
        );
        assert!(
            t.peak_undelivered >= sim_config().window / 2,
            "the window filled ({}): the reader was the bottleneck",
            t.peak_undelivered
        );
    }
}

/// Hands everything the entry queued to the exit and the exit's answers
/// back, all at `now`; returns the bytes the exit delivered. The exit's
/// reader reads them at once when `exit_reads`, else they stay undelivered
/// (a stalled reader).
fn exchange(entry: &mut Stream, exit: &mut Stream, now: Instant, exit_reads: bool) -> Vec<u8> {
    for m in published(&drain(entry)) {
        exit.handle_message(m, now).unwrap();
    }
    let outs: Vec<Output> = if exit_reads {
        drain(exit)
    } else {
        std::iter::from_fn(|| exit.poll_output()).collect()
    };
    for m in published(&outs) {
        entry.handle_message(m, now).unwrap();
    }
    delivered(&outs)
}

/// Fires the earlier of both ends' next timers unless it lies past `until`;
/// returns its time, or `None` when no timer is due by then.
fn fire_next_timer(entry: &mut Stream, exit: &mut Stream, until: Instant) -> Option<Instant> {
    let t = [entry.poll_timeout(), exit.poll_timeout()]
        .into_iter()
        .flatten()
        .min()
        .filter(|t| *t <= until)?;
    entry.handle_timeout(t);
    exit.handle_timeout(t);
    Some(t)
}

#[test]
fn a_closed_window_is_probed_and_never_given_up() {
    // The reader stops for ten minutes (longer than give_up_after) and the
    // window update that reopens the window is lost: the writer keeps
    // probing and the stream neither aborts nor loses a byte.
    let t0 = Instant::now();
    let c = StreamConfig {
        max_segment: 100,
        window: 1000,
        give_up_after: Duration::from_secs(60),
        ..Default::default()
    };
    let (mut entry, mut exit) = open_pair(c, t0);
    let data = random_bytes(9, 3000);
    assert_eq!(entry.write(&data, t0).unwrap(), 3000);
    let mut got = Vec::new();
    let mut now = t0;
    // Deliver everything the entry sends, but the exit's reader never reads.
    for _ in 0..10_000 {
        got.extend(exchange(&mut entry, &mut exit, now, false));
        match fire_next_timer(&mut entry, &mut exit, t0 + Duration::from_secs(600)) {
            Some(t) => now = t,
            None => break,
        }
    }
    assert_eq!(
        got.len(),
        1000,
        "exactly one window delivered while stalled"
    );
    assert_eq!(exit.undelivered_bytes(), 1000);
    assert!(
        !entry.is_closed(),
        "the writer did not give up on a closed window"
    );
    // The reader reads everything; its window update is lost.
    exit.consumed(1000);
    let lost_update = published(&drain(&mut exit));
    assert_eq!(lost_update.len(), 1);
    assert_eq!(lost_update[0].window, Some(1000));
    // The next probe draws a fresh acknowledgement and the transfer finishes.
    for _ in 0..10_000 {
        got.extend(exchange(&mut entry, &mut exit, now, true));
        if got.len() == data.len() {
            break;
        }
        match fire_next_timer(&mut entry, &mut exit, now + Duration::from_secs(3600)) {
            Some(t) => now = t,
            None => break,
        }
    }
    assert!(got == data, "all bytes, in order");
}

#[test]
fn nothing_follows_an_abort_for_a_bogus_ack() {
    let t0 = Instant::now();
    let (_, mut exit) = open_pair(StreamConfig::default(), t0);
    let mut m = Message::new("k", MessageType::Data);
    m.seq = Some(0);
    m.data = b"late".to_vec();
    m.ack = Some(99); // nothing was sent
    exit.handle_message(m, t0).unwrap();
    let outs = drain(&mut exit);
    assert!(outs.contains(&Output::Aborted(ErrorReason::ProtocolError)));
    assert_eq!(delivered(&outs), b"", "no data delivered after the abort");
    assert!(exit.is_closed());
}

mod prop {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn bytes_delivered_equal_bytes_written(seed in any::<u64>(), loss in 0.0f64..0.3, len in 0usize..30_000) {
            super::check(seed, loss, len);
        }
    }
}

#[test]
fn a_reader_that_was_slow_gets_full_speed_back() {
    // Default limits; the entry's reader takes 4 KiB every 53 ms (75 KiB/s)
    // for its first 4 MiB, then reads as fast as data comes. While it is
    // slow the window stays closed for seconds at a time, so zero-window
    // probes time out again and again; that must not be taken for loss
    // (segments halved, as a relay's silent size limit would have them).
    // Once fast, the rest must come as fast as on a fresh stream.
    let down = random_bytes(11, 12 << 20);
    let t = transfer_with_reader(
        11,
        Net {
            loss: 0.0,
            dup: 0.0,
            max_delay_ms: 5,
        },
        StreamConfig::default(),
        [Vec::new(), down.clone()],
        Some(Reader {
            chunk: 4 * 1024,
            period: Duration::from_millis(53),
            slow_for: 4 << 20,
        }),
    );
    assert!(t.got[0] == down, "down differs");
    let slow_end = t.slow_ended_at[0].expect("the slow phase ended");
    let fast = t.read_all_at[0] - slow_end;
    // The same 8 MiB on a fresh stream with a fast reader, in simulated
    // time (the simulated writer, not the window, sets this pace).
    let rest = down[4 << 20..].to_vec();
    let net = Net {
        loss: 0.0,
        dup: 0.0,
        max_delay_ms: 5,
    };
    let fresh = transfer_with_reader(11, net, StreamConfig::default(), [Vec::new(), rest], None);
    eprintln!(
        "slow phase {:.1} s, then 8 MiB in {:.2} s (a fresh stream: {:.2} s); exit segment {} bytes",
        slow_end.as_secs_f64(),
        fast.as_secs_f64(),
        fresh.read_all_at[0].as_secs_f64(),
        t.max_segment_at_end[1],
    );
    assert_eq!(t.max_segment_at_end[1], StreamConfig::default().max_segment);
    // Still paced by the slow phase, the 8 MiB would take ~27 s.
    assert!(
        fast.as_secs_f64() < 1.5 * fresh.read_all_at[0].as_secs_f64(),
        "the fast phase took {fast:?}"
    );
}

#[test]
fn probe_timeouts_are_no_loss_and_a_reopened_window_resends_the_probe() {
    // The reader stalls long enough for several zero-window probes to time
    // out (the receiver drops each probe byte), then reads a quarter window:
    // its window update reopens the window over the dropped probe. The
    // writer must send the probe byte again at once, and the probe timeouts
    // must not count as loss: a timeout that fires before the new data is
    // acknowledged (a slow round trip) must not halve the segments, as it
    // did when probe timeouts counted toward the size-limit guess.
    let t0 = Instant::now();
    let c = StreamConfig {
        max_segment: 100,
        min_segment: 10,
        window: 1000,
        ..Default::default()
    };
    let (mut entry, mut exit) = open_pair(c, t0);
    let data = random_bytes(12, 3000);
    assert_eq!(entry.write(&data, t0).unwrap(), 3000);
    let mut got = Vec::new();
    let mut now = t0;
    // The window fills, then probes time out while the reader sleeps.
    loop {
        got.extend(exchange(&mut entry, &mut exit, now, false));
        match fire_next_timer(&mut entry, &mut exit, t0 + Duration::from_secs(30)) {
            Some(t) => now = t,
            None => break,
        }
    }
    assert_eq!(got.len(), 1000);
    assert_eq!(entry.send.probe_at, Some(1000));
    assert!(entry.send.backoff >= 4, "backoff {}", entry.send.backoff);
    // The reader takes a quarter window: the update reopens it.
    exit.consumed(250);
    let update = published(&drain(&mut exit));
    assert_eq!(update.len(), 1);
    assert_eq!((update[0].ack, update[0].window), (Some(1000), Some(250)));
    entry.handle_message(update[0].clone(), now).unwrap();
    let sent = published(&drain(&mut entry));
    assert_eq!(
        sent.iter()
            .map(|m| (m.seq.unwrap_or(0), m.data.len()))
            .collect::<Vec<_>>(),
        [(1000, 1), (1001, 100), (1101, 100)],
        "the probe byte again, then what the window allows"
    );
    assert_eq!((entry.send.backoff, entry.send.lost_timeouts), (0, 0));
    // None of it is acknowledged before the retransmission timeout fires
    // (a slow round trip): one timeout with the window open is no reason
    // to shrink the segments.
    now = entry.poll_timeout().unwrap();
    entry.handle_timeout(now);
    drain(&mut entry);
    assert_eq!(entry.max_segment(), 100);
    // Everything arrives, in order, once.
    for m in sent {
        exit.handle_message(m, now).unwrap();
    }
    let n = exit.undelivered_bytes() as usize;
    exit.consumed(n);
    for _ in 0..10_000 {
        got.extend(exchange(&mut entry, &mut exit, now, true));
        if got.len() == data.len() {
            break;
        }
        match fire_next_timer(&mut entry, &mut exit, now + Duration::from_secs(3600)) {
            Some(t) => now = t,
            None => break,
        }
    }
    assert!(got == data);
    assert_eq!(entry.max_segment(), 100);
}
