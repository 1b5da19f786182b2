//! Streams over failing relays (issue: acknowledgements, retransmission,
//! flow control, multi-relay failover): real `nws` processes, real relays,
//! curl, and every transfer checked by SHA-256.

use std::time::{Duration, Instant};

use nws_tests::faulty::{FaultConfig, FaultyRelay};
use nws_tests::process::NwsProcess;
use nws_tests::{curl, sha256_hex, HttpBackend, ThirdPartyRelay};

/// An exit in front of `backend` on `relays`, and an entry.
async fn exit_and_entry(
    relays: &[String],
    backend: &HttpBackend,
    exit_args: &[&str],
    entry_args: &[&str],
) -> (NwsProcess, NwsProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("exit.key");
    let backend_addr = backend.host_port();
    let mut args = vec![
        "exit",
        "--key-file",
        key.to_str().unwrap(),
        "--backend",
        &backend_addr,
    ];
    for r in relays {
        args.extend_from_slice(&["--relay", r]);
    }
    args.extend_from_slice(exit_args);
    let exit = NwsProcess::spawn(&args).await;
    let relays: Vec<&str> = relays.iter().map(String::as_str).collect();
    let entry = NwsProcess::entry(&relays, true, entry_args).await;
    (exit, entry, dir)
}

async fn nws_relay() -> NwsProcess {
    NwsProcess::spawn(&["relay", "--listen", "127.0.0.1:0"]).await
}

/// Downloads `file` through the entry's SOCKS5 port while `during` runs;
/// asserts the SHA-256 and reports the time.
async fn download_while<F: std::future::Future<Output = ()>>(
    label: &str,
    entry: &NwsProcess,
    domain: &str,
    backend: &HttpBackend,
    file: &str,
    extra: &[&str],
    during: F,
) {
    let url = format!("http://{domain}/{file}");
    let socks = entry.value("socks5").to_string();
    let mut args = vec!["--socks5-hostname", socks.as_str()];
    args.extend_from_slice(extra);
    args.push(&url);
    let t = Instant::now();
    let (out, ()) = tokio::join!(curl(&args), during);
    assert_eq!(out.status, 0, "{label}: {out:?}");
    assert_eq!(out.stdout.len(), backend.file(file).len(), "{label}");
    assert_eq!(sha256_hex(&out.stdout), backend.sha256(file), "{label}");
    eprintln!("{label}: {file} in {:.1} s", t.elapsed().as_secs_f64());
}

/// What the exit says (debug log) about its finished streams: data
/// messages sent for the first time and sent again. Waits up to 10 s for
/// `streams` of them to have ended.
async fn exit_messages(exit: &NwsProcess, streams: usize) -> (u64, u64) {
    let mut counts = Vec::new();
    for _ in 0..100 {
        counts = exit
            .stderr()
            .lines()
            .filter_map(|l| {
                let tail = l.split("); ").nth(1)?;
                let mut words = tail.split_whitespace();
                let sent: u64 = words.next()?.parse().ok()?;
                let again: u64 = words.nth(3)?.parse().ok()?;
                Some((sent, again))
            })
            .collect();
        if counts.len() >= streams {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counts.len() >= streams, "{}", exit.stderr());
    counts.iter().fold((0, 0), |(a, b), (s, r)| (a + s, b + r))
}

/// Prints the download's cost in the exit's data messages: per MiB, and the
/// share that were retransmissions.
async fn report_messages(label: &str, exit: &NwsProcess, bytes: usize) {
    let (sent, again) = exit_messages(exit, 1).await;
    assert!(sent > 0, "{label}: the exit sent no data message");
    let mib = bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "{label}: exit sent {} data messages for {mib:.0} MiB ({:.1} per MiB), {again} of them again ({:.1} %)",
        sent + again,
        (sent + again) as f64 / mib,
        100.0 * again as f64 / (sent + again) as f64
    );
}

/// Two relays; one is killed in the middle of a 50 MiB download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_survives_losing_one_of_two_relays() {
    let backend = HttpBackend::start().await;
    let mut a = nws_relay().await;
    let b = nws_relay().await;
    let relays = [a.value("relay").to_string(), b.value("relay").to_string()];
    let (exit, entry, _dir) = exit_and_entry(&relays, &backend, &[], &[]).await;
    let domain = exit.value("domain").to_string();
    download_while(
        "one of two relays killed",
        &entry,
        &domain,
        &backend,
        "50m",
        &[],
        async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            a.kill().await;
        },
    )
    .await;
    report_messages("one of two relays killed", &exit, backend.file("50m").len()).await;
}

/// The only relay (nostr-rs-relay) restarts in the middle of a download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_survives_a_relay_restart() {
    let backend = HttpBackend::start().await;
    let mut relay = ThirdPartyRelay::start()
        .await
        .unwrap_or_else(|e| panic!("nostr-rs-relay is required: {e}"));
    let relays = [relay.url().to_string()];
    let (exit, entry, _dir) = exit_and_entry(&relays, &backend, &[], &[]).await;
    let domain = exit.value("domain").to_string();
    download_while(
        "relay restarted",
        &entry,
        &domain,
        &backend,
        "10m",
        &[],
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            relay.stop();
            tokio::time::sleep(Duration::from_secs(1)).await;
            relay.restart().await.unwrap();
        },
    )
    .await;
    report_messages("relay restart", &exit, backend.file("10m").len()).await;
}

/// A relay path that drops a share of events both ways.
async fn download_through_lossy_relay(drop: f64, seed: u64) {
    let backend = HttpBackend::start().await;
    let relay = nws_relay().await;
    let faulty = FaultyRelay::start(
        relay.value("relay"),
        FaultConfig {
            drop_publish: drop / 2.0,
            drop_deliver: drop / 2.0,
            seed,
            ..FaultConfig::default()
        },
    )
    .await;
    let relays = [faulty.url()];
    let (exit, entry, _dir) = exit_and_entry(&relays, &backend, &[], &[]).await;
    let domain = exit.value("domain").to_string();
    download_while(
        &format!("{:.0}% dropped", drop * 100.0),
        &entry,
        &domain,
        &backend,
        "10m",
        &[],
        async {},
    )
    .await;
    report_messages(
        &format!("{:.0} % event loss", drop * 100.0),
        &exit,
        backend.file("10m").len(),
    )
    .await;
    let s = faulty.stats();
    assert!(s.publish_dropped + s.deliver_dropped > 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_survives_5_percent_event_loss() {
    download_through_lossy_relay(0.05, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_survives_20_percent_event_loss() {
    download_through_lossy_relay(0.20, 20).await;
}

/// A relay that rejects events above 8 KiB (`OK false`): streams learn to
/// send smaller events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_adapts_to_a_relay_size_limit() {
    let backend = HttpBackend::start().await;
    let relay = nws_relay().await;
    let faulty = FaultyRelay::start(
        relay.value("relay"),
        FaultConfig {
            max_event_bytes: Some(8 * 1024),
            ..FaultConfig::default()
        },
    )
    .await;
    let relays = [faulty.url()];
    let (exit, entry, _dir) = exit_and_entry(&relays, &backend, &[], &[]).await;
    let domain = exit.value("domain").to_string();
    download_while(
        "8 KiB event limit",
        &entry,
        &domain,
        &backend,
        "1m",
        &[],
        async {},
    )
    .await;
    report_messages("8 KiB event limit", &exit, backend.file("1m").len()).await;
    assert!(faulty.stats().publish_rejected > 0);
    assert!(exit.stderr().contains("too large"), "{}", exit.stderr());
}

/// A relay that drops events above 16 KiB without a word (as nostr-rs-relay
/// does) but publishes the limit in its NIP-11 document: both ends read it
/// at start, and not one event of a 1 MiB download is too large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_keeps_under_a_limit_published_in_nip11() {
    let backend = HttpBackend::start().await;
    let relay = nws_relay().await;
    let faulty = FaultyRelay::start(
        relay.value("relay"),
        FaultConfig {
            max_event_bytes: Some(16 * 1024),
            silent_size_drops: true,
            nip11_max_message_length: Some(16 * 1024),
            ..FaultConfig::default()
        },
    )
    .await;
    let relays = [faulty.url()];
    let (exit, entry, _dir) = exit_and_entry(&relays, &backend, &[], &[]).await;
    for (name, p) in [("exit", &exit), ("entry", &entry)] {
        let mut learned = false;
        for _ in 0..100 {
            if p.stderr().contains("NIP-11 limits") {
                learned = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            learned,
            "{name} did not read the NIP-11 limit:\n{}",
            p.stderr()
        );
    }
    let domain = exit.value("domain").to_string();
    download_while(
        "16 KiB limit from NIP-11",
        &entry,
        &domain,
        &backend,
        "1m",
        &[],
        async {},
    )
    .await;
    report_messages("16 KiB limit from NIP-11", &exit, backend.file("1m").len()).await;
    let stats = faulty.stats();
    assert_eq!(
        stats.publish_rejected, 0,
        "events over the limit: {stats:?}"
    );
    assert!(stats.publish_forwarded > 60, "{stats:?}");
}

/// GETs `http://{domain}/{file}` through the SOCKS5 proxy and reads the
/// first `slow_bytes` of the response at about `rate` bytes per second (16
/// KiB at a time) and the rest at full speed, with a small socket receive
/// buffer so that the kernel cannot soak up the file; returns the body.
async fn slow_get(
    socks: &str,
    domain: &str,
    file: &str,
    rate: usize,
    slow_bytes: usize,
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let tcp = socket.connect(socks.parse().unwrap()).await.unwrap();
    let mut s = tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, (domain, 80))
        .await
        .unwrap()
        .into_inner();
    let req = format!("GET /{file} HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let chunk = 16 * 1024;
    let pause = Duration::from_secs_f64(chunk as f64 / rate as f64);
    let mut raw = Vec::new();
    let mut buf = vec![0u8; chunk];
    for _ in 0..1_000_000 {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() < slow_bytes {
            tokio::time::sleep(pause.mul_f64(n as f64 / chunk as f64)).await;
        }
    }
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    raw.split_off(head_end)
}

/// A client reading a 50 MiB download at 300 KiB/s for its first 12 MiB
/// (about 40 s), far slower than the path, then at full speed: the exit and
/// the entry hold about a window's worth of data, not the backlog (some 38
/// MiB at the end of the slow part without flow control). The whole body
/// is checked by SHA-256; the peaks are high-water marks, so they cover the
/// slow part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_keeps_memory_bounded() {
    let backend = HttpBackend::start().await;
    let relay = nws_relay().await;
    let relays = [relay.value("relay").to_string()];
    let (exit, entry, _dir) = exit_and_entry(&relays, &backend, &[], &[]).await;
    let domain = exit.value("domain").to_string();
    let before = (exit.peak_rss_kib().unwrap(), entry.peak_rss_kib().unwrap());
    let t = Instant::now();
    let body = slow_get(entry.value("socks5"), &domain, "50m", 300 * 1024, 12 << 20).await;
    let took = t.elapsed();
    assert_eq!(sha256_hex(&body), backend.sha256("50m"));
    let after = (exit.peak_rss_kib().unwrap(), entry.peak_rss_kib().unwrap());
    eprintln!(
        "slow reader, 300 KiB/s for 12 MiB then full speed: 50m in {:.1} s; peak RSS: exit {} -> {} KiB, entry {} -> {} KiB",
        took.as_secs_f64(),
        before.0,
        after.0,
        before.1,
        after.1
    );
    // A stream's buffers are bounded by its window (1 MiB) and send
    // buffer (256 KiB) on each side; the rest is allocator slack from
    // moving 50 MiB through 55 KiB events.
    // Zero-window probes time out again and again while the reader is
    // slow; that is no loss, so segments should keep their size (printed,
    // not asserted: a loaded machine may time out for real).
    let exit_log = exit.stderr();
    eprintln!(
        "slow reader: exit halved its segments {} times; {}",
        exit_log.matches("retransmissions keep failing").count(),
        exit_log
            .lines()
            .find(|l| l.contains("data messages sent"))
            .unwrap_or("(no stream summary)")
    );
    let grew = (after.0 - before.0, after.1 - before.1);
    assert!(grew.0 < 16 * 1024, "exit grew by {} KiB", grew.0);
    assert!(grew.1 < 16 * 1024, "entry grew by {} KiB", grew.1);
}

/// Legacy both ways against our own implementation: a legacy entry to our
/// exit, and our entry to an exit forced into the legacy format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_mode_both_ways() {
    let backend = HttpBackend::start().await;
    let relay = nws_relay().await;
    let relays = [relay.value("relay").to_string()];
    let (exit, entry, _dir) = exit_and_entry(&relays, &backend, &[], &["--legacy"]).await;
    let domain = exit.value("domain").to_string();
    download_while(
        "legacy entry",
        &entry,
        &domain,
        &backend,
        "1m",
        &[],
        async {},
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("legacy.key");
    let legacy_exit = NwsProcess::spawn(&[
        "exit",
        "--relay",
        &relays[0],
        "--key-file",
        key.to_str().unwrap(),
        "--backend",
        &backend.host_port(),
        "--legacy",
    ])
    .await;
    let npub = legacy_exit.value("npub").to_string();
    let entry2 = NwsProcess::entry(&[&relays[0]], false, &["--legacy-exit", &npub]).await;
    let domain = legacy_exit.value("domain").to_string();
    download_while(
        "legacy exit",
        &entry2,
        &domain,
        &backend,
        "1m",
        &[],
        async {},
    )
    .await;
    assert!(legacy_exit.stderr().contains("legacy entry"));
}
