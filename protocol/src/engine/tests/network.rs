//! Whole transfers through the simulated network ([`crate::engine::sim`]):
//! loss, duplication, reordering, slow readers and closed windows.

use super::*;

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
fn version_2_json_delivers_through_loss_too() {
    // Every other transfer here speaks version 3 (frames); this one JSON.
    let config = StreamConfig {
        max_version: 2,
        ..sim_config()
    };
    for seed in 0..5 {
        let up = random_bytes(seed, 20_000);
        let down = random_bytes(seed + 100, 20_000);
        let t = transfer(
            seed,
            Net {
                loss: 0.1,
                dup: 0.1,
                max_delay_ms: 30,
            },
            config.clone(),
            [up.clone(), down.clone()],
        );
        assert!(t.got[1] == up && t.got[0] == down, "seed {seed}");
    }
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
        assert!(
            t.got[1] == up,
            "seed {seed} loss {loss}: up differs ({} of {}; {:?}, closed {:?}, {} messages)",
            t.got[1].len(),
            up.len(),
            t.ended,
            t.closed,
            t.messages
        );
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

#[test]
fn a_rate_limited_relay_is_met_with_a_smaller_window_and_few_refusals() {
    // 100 events/s with bursts of 10, 20 ms each way: 300 events of data
    // cannot go faster than 3 s. The window shrinks to what the relay
    // takes, so most events are taken the first time.
    let mut net = RateLimited::new(100.0, 10.0, Duration::from_millis(20));
    let up = random_bytes(5, 300_000);
    let t = run(
        &mut net,
        sim_config(),
        [up.clone(), Vec::new()],
        None,
        2_000_000,
    );
    assert!(t.ended.is_none(), "{:?}", t.ended);
    assert!(
        t.got[1] == up,
        "up differs ({} of {})",
        t.got[1].len(),
        up.len()
    );
    let (refused, taken) = (net.refused[1], net.taken[1]);
    let share = refused as f64 / (refused + taken) as f64;
    let (window, cuts) = t.streams[0].congestion();
    eprintln!(
        "rate-limited: {taken} taken, {refused} refused ({:.1} %), window {window}, {cuts} cuts, done in {:.2} s",
        share * 100.0,
        t.read_all_at[1].as_secs_f64()
    );
    assert!(cuts > 0, "the window never shrank");
    assert!(share < 0.25, "{:.1} % refused", share * 100.0);
    // No faster than the relay lets through: a burst of 10, then 100/s.
    let floor = (taken.saturating_sub(10)) as f64 / 100.0;
    assert!(t.read_all_at[1].as_secs_f64() >= floor * 0.99, "{floor} s");
}

#[test]
fn loss_halves_the_window_and_the_transfer_completes() {
    let up = random_bytes(6, 200_000);
    let t = transfer(
        6,
        Net {
            loss: 0.05,
            dup: 0.0,
            max_delay_ms: 30,
        },
        sim_config(),
        [up.clone(), Vec::new()],
    );
    assert!(t.got[1] == up);
    let (window, cuts) = t.streams[0].congestion();
    assert!(cuts > 0, "no cut through 5 % loss");
    assert!(window >= 2, "window {window}");
}
