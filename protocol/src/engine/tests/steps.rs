//! Single steps: one message, write, timer or driver call at a time, and
//! what the engine answers.

use super::*;

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
    // Done both ways, the exit acknowledges the entry's CLOSE at once.
    let t1 = t0;
    for m in published(&drain(&mut exit)) {
        entry.handle_message(m, t1).unwrap();
    }
    drain(&mut entry);
    assert!(!entry.is_open() && !entry.is_closed(), "entry lingers");
    let linger = entry.poll_timeout().unwrap();
    assert_eq!(linger, t1 + StreamConfig::default().give_up_after);
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

/// Fires timers until one publishes data (keepalive pings in between are
/// skipped); returns the data messages and when that was.
fn next_data(entry: &mut Stream) -> (Vec<Message>, Instant) {
    for _ in 0..10 {
        let t = entry.poll_timeout().unwrap();
        entry.handle_timeout(t);
        let data: Vec<Message> = published(&drain(entry))
            .into_iter()
            .filter(|m| m.kind == MessageType::Data)
            .collect();
        if !data.is_empty() {
            return (data, t);
        }
    }
    panic!("no retransmission");
}

#[test]
fn retransmits_after_timeout_with_backoff_and_keeps_the_segment_size() {
    let t0 = Instant::now();
    let mut c = cfg(8);
    c.min_segment = 2;
    let (mut entry, mut exit) = open_pair(c, t0);
    entry.write(b"abcdefgh", t0).unwrap();
    let lost = published(&drain(&mut entry));
    assert_eq!(lost.len(), 1);
    let (retry, t1) = next_data(&mut entry);
    assert_eq!(retry[0].data, b"abcdefgh");
    let (again, t2) = next_data(&mut entry);
    assert!(t2 - t1 > t1 - t0, "backoff doubles the timeout");
    assert_eq!(again.len(), 1, "same size after two timeouts");
    // Sizes are the relay connection's to find: timeouts alone never
    // shrink the segments (random loss is no size limit).
    let (same, t3) = next_data(&mut entry);
    assert_eq!(same.len(), 1, "the same segment after the third timeout");
    assert_eq!(same[0].data, b"abcdefgh");
    for m in same {
        exit.handle_message(m, t3).unwrap();
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
    // The keepalive's unanswered pings end it well before `give_up_after`:
    // a peer that answers nothing at all is gone within seconds.
    assert!(now - t0 < Duration::from_secs(30), "{:?}", now - t0);
    assert!(now - t0 >= Duration::from_secs(10), "{:?}", now - t0);
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
    // (A version-2 exit: version 3 would hold CONNECTED for the answer.)
    let v2 = StreamConfig {
        max_version: 2,
        ..Default::default()
    };
    let mut exit = Stream::accept(v2, again[0].clone(), t1).unwrap();
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

#[test]
fn a_quiet_peer_is_pinged_and_a_live_one_answers_at_once() {
    let t0 = Instant::now();
    let (mut entry, mut exit) = open_pair(StreamConfig::default(), t0);
    let t = entry.poll_timeout().unwrap();
    assert!(t >= t0 + Duration::from_secs(4), "{:?}", t - t0);
    entry.handle_timeout(t);
    let pings = published(&drain(&mut entry));
    assert_eq!(pings.len(), 1);
    assert_eq!(pings[0].kind, MessageType::Ping);
    exit.handle_message(pings[0].clone(), t).unwrap();
    let answers = published(&drain(&mut exit));
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].kind, MessageType::Ack);
    entry.handle_message(answers[0].clone(), t).unwrap();
    assert!(drain(&mut entry).is_empty());
    // Answered but idle: the next ping waits twice as long.
    let next = entry.poll_timeout().unwrap();
    assert!(next >= t + Duration::from_secs(8), "{:?}", next - t);
    assert!(entry.is_open() && !entry.is_closed());
}

#[test]
fn unknown_stream_from_a_restarted_peer_aborts_the_stream() {
    let t0 = Instant::now();
    let (mut entry, _) = open_pair(StreamConfig::default(), t0);
    entry
        .handle_message(Message::error("k", &ErrorReason::UnknownStream), t0)
        .unwrap();
    let outs = drain(&mut entry);
    assert!(
        outs.contains(&Output::Aborted(ErrorReason::UnknownStream)),
        "{outs:?}"
    );
    assert!(entry.is_closed());
    // Nothing is sent back: an ERROR never answers an ERROR.
    assert!(published(&outs).is_empty());
}

#[test]
fn versions_meet_at_the_lower_one_and_frames_follow() {
    use crate::codec::Framing;
    use crate::frame::Sender;
    let t0 = Instant::now();
    for (entry_v, exit_v, spoken) in [(3, 3, 3), (3, 2, 2), (2, 3, 2), (2, 2, 2)] {
        let mut ec = cfg(100);
        ec.max_version = entry_v;
        let mut xc = cfg(100);
        xc.max_version = exit_v;
        let mut entry = Stream::open(ec, "k".into(), "x.nostr:80".into(), Dialect::V2, t0);
        let connect = published(&drain(&mut entry)).remove(0);
        assert_eq!(connect.version, Some(entry_v));
        // CONNECT is JSON whatever the entry speaks: the exit may be older.
        assert_eq!(entry.framing(), Framing::Json);
        let mut exit = Stream::accept(xc, over_the_wire(&entry, connect), t0).unwrap();
        exit.backend_connected(t0);
        assert_eq!(exit.version(), spoken);
        let answers = published(&drain(&mut exit));
        assert_eq!(answers[0].kind, MessageType::Connected);
        assert_eq!(answers[0].version, Some(spoken));
        for m in answers {
            entry.handle_message(over_the_wire(&exit, m), t0).unwrap();
        }
        assert_eq!(entry.version(), spoken, "{entry_v}/{exit_v}");
        let (to_exit, to_entry) = if spoken == 3 {
            (
                Framing::Binary(Sender::Entry),
                Framing::Binary(Sender::Exit),
            )
        } else {
            (Framing::Json, Framing::Json)
        };
        assert_eq!((entry.framing(), exit.framing()), (to_exit, to_entry));
        entry.write(b"ping", t0).unwrap();
        entry.finish(t0);
        exit.write(b"pong", t0).unwrap();
        exit.finish(t0);
        let got_at_exit = exchange(&mut entry, &mut exit, t0, true);
        let got_at_entry = delivered(&drain(&mut entry));
        assert_eq!(got_at_exit, b"ping");
        assert_eq!(got_at_entry, b"pong");
    }
}

/// An entry and a version-3 exit whose CONNECT carried `request` (0-RTT),
/// the backend connected at `t0`; the CONNECT as sent.
fn opened_with_request(request: &[u8], t0: Instant) -> (Stream, Stream, Message) {
    let (mut entry, taken) = Stream::open_early(
        cfg(1000),
        "k".into(),
        "x.nostr:80".into(),
        Dialect::V2,
        request,
        t0,
    );
    assert_eq!(taken, request.len());
    let connect = published(&drain(&mut entry)).remove(0);
    let mut exit = Stream::accept(cfg(1000), connect.clone(), t0).unwrap();
    exit.backend_connected(t0);
    let outs = drain(&mut exit);
    // The request is delivered; CONNECTED waits for the answer.
    assert!(outs.contains(&Output::Opened));
    assert_eq!(delivered(&outs), request);
    assert!(published(&outs).is_empty(), "{outs:?}");
    assert_eq!(exit.poll_timeout(), Some(t0 + CONNECTED_HOLD));
    (entry, exit, connect)
}

#[test]
fn a_version_3_answer_is_one_event_with_its_close() {
    let t0 = Instant::now();
    let (mut entry, mut exit, connect) = opened_with_request(b"GET / HTTP/1.1\r\n\r\n", t0);
    exit.write(b"HTTP/1.1 200 OK\r\n\r\n", t0).unwrap();
    // The answer waits a moment for its end ...
    assert!(published(&drain(&mut exit)).is_empty());
    assert_eq!(exit.poll_timeout(), Some(t0 + DATA_HOLD));
    exit.finish(t0);
    // ... and goes with it: data, close, version and acknowledgement in one.
    let answer = published(&drain(&mut exit));
    assert_eq!(answer.len(), 1, "one event: {answer:?}");
    let m = &answer[0];
    assert_eq!(m.kind, MessageType::Close);
    assert_eq!((m.version, m.seq, m.ack), (Some(3), Some(0), Some(18)));
    assert_eq!(m.data, b"HTTP/1.1 200 OK\r\n\r\n");
    entry
        .handle_message(over_the_wire(&exit, m.clone()), t0)
        .unwrap();
    let outs = drain(&mut entry);
    assert_eq!(outs[0], Output::Opened);
    assert_eq!(delivered(&outs), b"HTTP/1.1 200 OK\r\n\r\n");
    assert!(outs.contains(&Output::PeerFinished));
    assert_eq!(entry.version(), 3);
    // The entry's own close carries its acknowledgement of all that.
    entry.finish(t0);
    let close = published(&drain(&mut entry));
    assert_eq!(close.len(), 1, "{close:?}");
    assert_eq!(
        (close[0].kind.clone(), close[0].ack),
        (MessageType::Close, Some(20))
    );
    // A retransmitted CONNECT is answered by a plain CONNECTED.
    exit.handle_message(connect, t0).unwrap();
    let again = published(&drain(&mut exit));
    assert_eq!(again[0].kind, MessageType::Connected);
}

#[test]
fn an_answer_that_does_not_end_goes_after_the_data_hold() {
    let t0 = Instant::now();
    let (mut entry, mut exit, _) = opened_with_request(b"GET / HTTP/1.1\r\n\r\n", t0);
    exit.write(b"HTTP/1.1 200 OK\r\n", t0).unwrap();
    let t1 = exit.poll_timeout().unwrap();
    assert_eq!(t1, t0 + DATA_HOLD);
    exit.handle_timeout(t1);
    let answer = published(&drain(&mut exit));
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0].kind, MessageType::Data);
    assert_eq!(answer[0].version, Some(3));
    entry
        .handle_message(over_the_wire(&exit, answer[0].clone()), t1)
        .unwrap();
    let outs = drain(&mut entry);
    assert_eq!(outs[0], Output::Opened);
    assert_eq!(delivered(&outs), b"HTTP/1.1 200 OK\r\n");
    // Later data flows as usual, and the close rides on the last of it.
    exit.write(b"body", t1).unwrap();
    exit.finish(t1);
    let rest = published(&drain(&mut exit));
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(
        (rest[0].kind.clone(), rest[0].seq),
        (MessageType::Close, Some(17))
    );
    assert_eq!(rest[0].version, None);
}

#[test]
fn a_held_connected_goes_alone_when_the_backend_is_slow() {
    let t0 = Instant::now();
    let (mut entry, _) = Stream::open_early(
        cfg(1000),
        "k".into(),
        "x.nostr:80".into(),
        Dialect::V2,
        b"GET /slow HTTP/1.1\r\n\r\n",
        t0,
    );
    let connect = published(&drain(&mut entry)).remove(0);
    let mut exit = Stream::accept(cfg(1000), connect, t0).unwrap();
    exit.backend_connected(t0);
    assert!(published(&drain(&mut exit)).is_empty());
    let t1 = exit.poll_timeout().unwrap();
    exit.handle_timeout(t1);
    let answer = published(&drain(&mut exit));
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].kind, MessageType::Connected);
    assert_eq!(answer[0].ack, Some(22));
    // Without 0-RTT bytes there is nothing to wait for, and a version-2
    // stream never holds it.
    for (early, version) in [(&b""[..], 3), (&b"GET"[..], 2)] {
        let mut c = cfg(1000);
        c.max_version = version;
        let (mut e, _) = Stream::open_early(
            c.clone(),
            "k".into(),
            "x.nostr:80".into(),
            Dialect::V2,
            early,
            t0,
        );
        let connect = published(&drain(&mut e)).remove(0);
        let mut x = Stream::accept(c, connect, t0).unwrap();
        x.backend_connected(t0);
        let answer = published(&drain(&mut x));
        assert_eq!(answer[0].kind, MessageType::Connected, "{version}");
    }
}
