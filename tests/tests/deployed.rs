//! End to end through relays as deployed: real `nws` processes, an embedded
//! relay behind a [`FaultyRelay`] in each of its modes (opaque content cap
//! with throttling, no `OK` for ephemerals, ephemerals stored for minutes, a
//! per-connection rate limit, NIP-42, `wss://` with a test CA), and
//! nostr-rs-relay with its own rate and size limits; curl through the
//! entry's SOCKS5 and HTTP ports, every body checked by SHA-256.
//!
//! Each test prints one line starting with `DEPLOYED` with the figures the
//! release note's table takes (`grep DEPLOYED`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nostr::{ClientMessage, EventBuilder, JsonUtil, Keys, Kind};
use nws_tests::faulty::{FaultConfig, FaultStats, FaultyRelay, TestCa, DEFAULT_THROTTLE_BASE};
use nws_tests::process::NwsProcess;
use nws_tests::{
    curl, curl_http, pseudo_random_bytes, sha256_hex, HttpBackend, RelayLimits, ThirdPartyRelay,
    HELLO_BODY,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Size of the upload of each mode test.
const UPLOAD_BYTES: usize = 1024 * 1024;
/// Sequential small requests of each mode test.
const SMALL_REQUESTS: usize = 20;
/// Seed of the upload's pseudo-random bytes.
const UPLOAD_SEED: u64 = 0x5550_4C4F_4144;

/// An `nws relay` process on a free loopback port.
async fn nws_relay() -> NwsProcess {
    NwsProcess::spawn(&["relay", "--listen", "127.0.0.1:0"]).await
}

/// Starts `nws exit` with the key in `key` (created on first use) in front of
/// `backend` on `relays`, with extra environment variables.
async fn spawn_exit(
    key: &Path,
    backend: &HttpBackend,
    relays: &[String],
    env: &[(&str, &str)],
) -> NwsProcess {
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
    NwsProcess::spawn_env(&args, env).await
}

/// Starts an open entry (`--no-auth`) on `relays` with SOCKS5 and HTTP ports
/// on free loopback ports, with extra environment variables.
async fn spawn_entry(relays: &[String], env: &[(&str, &str)]) -> NwsProcess {
    let mut args = vec![
        "entry",
        "--no-auth",
        "--socks",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ];
    for r in relays {
        args.extend_from_slice(&["--relay", r]);
    }
    NwsProcess::spawn_env(&args, env).await
}

/// An exit in front of `backend` and an entry, both on `relays` only, with
/// `env`; the temp dir holds the exit's key file (`exit.key`).
async fn exit_and_entry(
    relays: &[String],
    backend: &HttpBackend,
    env: &[(&str, &str)],
) -> (NwsProcess, NwsProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let exit = spawn_exit(&dir.path().join("exit.key"), backend, relays, env).await;
    let entry = spawn_entry(relays, env).await;
    (exit, entry, dir)
}

/// Downloads `file` from the exit's backend through the entry's SOCKS5 port
/// with curl; checks the length and the SHA-256 and returns the time taken,
/// or what went wrong.
async fn try_download(
    entry: &NwsProcess,
    domain: &str,
    backend: &HttpBackend,
    file: &str,
) -> Result<Duration, String> {
    let url = format!("http://{domain}/{file}");
    let t = Instant::now();
    let out = curl(&["--socks5-hostname", entry.value("socks5"), &url]).await;
    let took = t.elapsed();
    if out.status != 0 {
        return Err(format!(
            "download of {file}: curl {} after {:.1} s: {}",
            out.status,
            took.as_secs_f64(),
            out.stderr.trim()
        ));
    }
    if out.stdout.len() != backend.file(file).len() {
        return Err(format!(
            "download of {file}: {} of {} bytes",
            out.stdout.len(),
            backend.file(file).len()
        ));
    }
    if sha256_hex(&out.stdout) != backend.sha256(file) {
        return Err(format!("download of {file}: SHA-256 differs"));
    }
    Ok(took)
}

/// [`try_download`] that panics on failure and prints the time.
async fn download(
    label: &str,
    entry: &NwsProcess,
    domain: &str,
    backend: &HttpBackend,
    file: &str,
) -> Duration {
    let took = try_download(entry, domain, backend, file)
        .await
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    eprintln!("{label}: {file} in {:.1} s", took.as_secs_f64());
    took
}

/// POSTs `body` to `http://{domain}/{path}` (a `/sha256…` path of the
/// backend) through the entry's HTTP proxy port with curl, and returns the
/// hash the backend answered (without the newline), or what went wrong.
async fn post_for_hash(
    entry: &NwsProcess,
    domain: &str,
    path: &str,
    body: &[u8],
) -> Result<String, String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let data = format!("@{}", file.path().display());
    let proxy = format!("http://{}", entry.value("http"));
    let url = format!("http://{domain}/{path}");
    let out = curl_http(&[
        "--proxy",
        &proxy,
        // No `Expect: 100-continue` (curl would wait a second for it).
        "-H",
        "Expect:",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &data,
        &url,
    ])
    .await;
    if !out.success() || out.http_code != 200 {
        return Err(format!(
            "POST /{path}: curl {}, HTTP {}: {}",
            out.status,
            out.http_code,
            out.stderr.trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.body).trim().to_string())
}

/// Uploads `UPLOAD_BYTES` of pseudo-random bytes and checks the backend's
/// hash of them; returns the time taken, or what went wrong.
async fn try_upload(entry: &NwsProcess, domain: &str) -> Result<Duration, String> {
    let body = pseudo_random_bytes(UPLOAD_BYTES, UPLOAD_SEED);
    let t = Instant::now();
    let hash = post_for_hash(entry, domain, "sha256", &body).await?;
    let took = t.elapsed();
    if hash != sha256_hex(&body) {
        return Err(format!("upload arrived altered: backend hashed {hash}"));
    }
    Ok(took)
}

/// One `GET /hello` through the SOCKS5 port (`socks`) or the HTTP port;
/// checks the answer.
async fn try_hello(entry: &NwsProcess, domain: &str, socks: bool) -> Result<(), String> {
    let url = format!("http://{domain}/hello");
    let proxy = format!("http://{}", entry.value("http"));
    let out = if socks {
        curl_http(&["--socks5-hostname", entry.value("socks5"), &url]).await
    } else {
        curl_http(&["--proxy", &proxy, &url]).await
    };
    if !out.success() || out.http_code != 200 || out.body != HELLO_BODY {
        return Err(format!(
            "GET /hello via {}: curl {}, HTTP {}, {} bytes: {}",
            if socks { "SOCKS5" } else { "HTTP proxy" },
            out.status,
            out.http_code,
            out.body.len(),
            out.stderr.trim()
        ));
    }
    Ok(())
}

/// `SMALL_REQUESTS` sequential `GET /hello`, each a new stream, alternating
/// the SOCKS5 and the HTTP port; returns the time taken, or the first
/// failure.
async fn try_small_requests(entry: &NwsProcess, domain: &str) -> Result<Duration, String> {
    let t = Instant::now();
    for i in 0..SMALL_REQUESTS {
        try_hello(entry, domain, i % 2 == 0)
            .await
            .map_err(|e| format!("small request {i}: {e}"))?;
    }
    Ok(t.elapsed())
}

/// Seconds of an outcome for the `DEPLOYED` line: `12.3`, or `FAIL`.
fn secs<T>(r: &Result<Duration, T>) -> String {
    match r {
        Ok(d) => format!("{:.1}", d.as_secs_f64()),
        Err(_) => "FAIL".into(),
    }
}

/// The per-stream summaries a process logged so far (debug: `stream K:
/// ended (…); N data messages sent, M sent again`), as (N, M) pairs. Waits
/// up to 10 s for at least `streams` of them.
async fn stream_summaries(p: &NwsProcess, streams: usize) -> Vec<(u64, u64)> {
    let mut counts = Vec::new();
    for _ in 0..100 {
        counts = p
            .stderr()
            .lines()
            .filter(|l| l.contains("data messages sent"))
            .filter_map(|l| {
                let tail = l.rsplit("); ").next()?;
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
    counts
}

/// Share of the data messages of the exit's largest stream so far (the
/// download just done) that the exit sent again, or `None` if it logged no
/// stream within 10 s. Waits for `streams` summaries.
async fn download_resent_share(exit: &NwsProcess, streams: usize) -> Option<f64> {
    let counts = stream_summaries(exit, streams).await;
    let (sent, again) = counts.into_iter().max_by_key(|(s, a)| s + a)?;
    (sent + again > 0).then(|| again as f64 / (sent + again) as f64)
}

/// The last `max` bytes of `s` (on a char boundary).
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Log lines of `p` that contain any of `needles`, at most `max` of them
/// (the last ones), for the diagnosis printed after a test.
fn log_lines(p: &NwsProcess, needles: &[&str], max: usize) -> String {
    let log = p.stderr();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .collect();
    lines[lines.len().saturating_sub(max)..].join("\n")
}

/// One mode of [`FaultyRelay`] in front of an `nws relay`: a `GET /hello`
/// right after both ends started (as a user's first request), then a 10 MiB
/// download (SOCKS5), a 1 MiB upload (HTTP proxy) and 20 small requests,
/// all checked. Every step runs even if one before failed; the `DEPLOYED`
/// line is printed, then the test fails with every failure. With `tls`,
/// the middlebox serves `wss://` with a test CA, given to both processes
/// through `NWS_RELAY_CA`.
async fn mode_test(mode: &str, config: FaultConfig, tls: bool) -> (FaultStats, NwsProcess) {
    let backend = HttpBackend::start().await;
    let relay = nws_relay().await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path: PathBuf = ca_dir.path().join("ca.pem");
    let faulty = if tls {
        let ca = TestCa::new();
        ca.write_pem(&ca_path).unwrap();
        FaultyRelay::start_tls(relay.value("relay"), config, &ca).await
    } else {
        FaultyRelay::start(relay.value("relay"), config).await
    };
    let ca = ca_path.to_str().unwrap().to_string();
    let env: Vec<(&str, &str)> = if tls {
        vec![("NWS_RELAY_CA", ca.as_str())]
    } else {
        Vec::new()
    };
    let relays = [faulty.url()];
    let (exit, entry, _dir) = exit_and_entry(&relays, &backend, &env).await;
    let domain = exit.value("domain").to_string();
    let label = format!("mode {mode}");

    let t = Instant::now();
    let first = try_hello(&entry, &domain, true).await;
    let first_s = t.elapsed();
    let mib10 = try_download(&entry, &domain, &backend, "10m").await;
    let resent = match mib10 {
        // The first request's stream and the download's.
        Ok(_) => download_resent_share(&exit, 2).await,
        Err(_) => None,
    };
    let up = try_upload(&entry, &domain).await;
    let small = try_small_requests(&entry, &domain).await;
    let total = t.elapsed();

    let stats = faulty.stats();
    println!(
        "DEPLOYED mode={mode} first_s={} mib10_s={} upload_s={} small20_s={} total_s={:.1} events={} refused={} resent_share={}",
        if first.is_ok() { format!("{:.1}", first_s.as_secs_f64()) } else { "FAIL".into() },
        secs(&mib10),
        secs(&up),
        secs(&small),
        total.as_secs_f64(),
        stats.publish_seen,
        stats.publish_rejected,
        resent.map_or("n/a".to_string(), |s| format!("{:.3}", s)),
    );
    eprintln!("{label}: {stats:?}");
    let failures: Vec<String> = [
        first.err().map(|e| format!("first request: {e}")),
        mib10.err(),
        up.err(),
        small.err(),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        failures.is_empty(),
        "{label}:\n{}\nexit log tail:\n{}\nentry log tail:\n{}",
        failures.join("\n"),
        tail(&exit.stderr(), 3000),
        tail(&entry.stderr(), 3000)
    );
    (stats, exit)
}

/// (a) A 4096-character content cap refused with an opaque, empty-id
/// `OK false`, and the connection throttled after each refusal (2 s, then
/// doubling), as deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_cap_with_throttle() {
    let (stats, _exit) = mode_test(
        "content_cap_4096_throttle",
        FaultConfig {
            content_cap: Some(4096),
            throttle_after_reject: true,
            throttle_base: DEFAULT_THROTTLE_BASE,
            ..FaultConfig::default()
        },
        false,
    )
    .await;
    // Every refusal is a size probe, never stream data: few of them.
    assert!(
        stats.rejected_opaque > 0,
        "the cap was never hit: {stats:?}"
    );
    assert!(stats.rejected_opaque <= 8, "{stats:?}");
}

/// (b) The relay never answers ephemeral events (`OK` withheld).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ok_for_ephemeral() {
    let (stats, _exit) = mode_test(
        "no_ok_for_ephemeral",
        FaultConfig {
            no_ok_for_ephemeral: true,
            ..FaultConfig::default()
        },
        false,
    )
    .await;
    assert!(stats.ok_swallowed > 0, "{stats:?}");
}

/// (c) Ephemeral events kept for 300 s and replayed to later subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_ephemeral_300s() {
    let (stats, _exit) = mode_test(
        "store_ephemeral_300s",
        FaultConfig {
            store_ephemeral: Some(Duration::from_secs(300)),
            ..FaultConfig::default()
        },
        false,
    )
    .await;
    assert_eq!(
        stats.publish_rejected, 0,
        "events refused as too old: {stats:?}"
    );
}

/// (d) A per-connection limit of 50 events per second (`OK false
/// rate-limited:` beyond it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_50_events_per_sec() {
    let (stats, _exit) = mode_test(
        "max_events_per_sec_50",
        FaultConfig {
            max_events_per_sec: Some(50),
            ..FaultConfig::default()
        },
        false,
    )
    .await;
    // Pacing after the first refusals keeps them a small share.
    assert!(
        (stats.rate_limited as f64) <= 0.10 * stats.publish_seen as f64,
        "{stats:?}"
    );
}

/// (e) NIP-42: nothing is taken before the client authenticates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_required() {
    let (stats, _exit) = mode_test(
        "auth_required",
        FaultConfig {
            auth_required: true,
            ..FaultConfig::default()
        },
        false,
    )
    .await;
    // The exit and the entry each authenticated their connection.
    assert!(stats.auth_ok >= 2, "{stats:?}");
    assert_eq!(stats.auth_failed, 0, "{stats:?}");
}

/// (f) `wss://` with a certificate from a test CA that both processes are
/// given through `NWS_RELAY_CA`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_test_ca() {
    let (stats, exit) = mode_test("tls_test_ca", FaultConfig::default(), true).await;
    assert!(stats.connections >= 2, "{stats:?}");
    assert!(!exit.stderr().contains("NWS_RELAY_CA"), "{}", exit.stderr());
}

// ---------------------------------------------------------------------------
// nostr-rs-relay with its own limits
// ---------------------------------------------------------------------------

/// nostr-rs-relay's rate for [`nostr_rs_relay_rate_and_size_limits`].
const RATE: u32 = 20;
/// nostr-rs-relay's `max_event_bytes` for the same test.
const MAX_EVENT: usize = 8192;

/// Empties nostr-rs-relay's rate bucket: its limiter (governor,
/// `Quota::per_minute(60 × rate)`) lets a burst of `60 × rate` events
/// through at once before it paces at `rate`, so a fresh relay would not
/// limit a short download at all. A relay as deployed has spent its burst
/// on other users' events: this publishes `60 × rate + rate` tiny
/// ephemeral events and waits (≤ 60 s) until the relay has handed the last
/// one to our own subscription, i.e. until it has written all of them.
async fn drain_rate_bucket(url: &str, rate: u32) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let keys = Keys::generate();
    let kind = Kind::Custom(20_999);
    let req = format!(
        r#"["REQ","drain",{{"kinds":[{}],"authors":["{}"]}}]"#,
        kind.as_u16(),
        keys.public_key().to_hex()
    );
    ws.send(Message::text(req)).await.unwrap();
    let n = (60 * rate + rate) as usize;
    let mut last = String::new();
    for i in 0..n {
        let event = EventBuilder::new(kind, format!("drain {i}"))
            .sign_with_keys(&keys)
            .unwrap();
        last = event.id.to_hex();
        ws.send(Message::text(ClientMessage::event(event).as_json()))
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = 0usize;
    let done = loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.as_str().starts_with(r#"["EVENT","drain""#) {
                    seen += 1;
                    if t.as_str().contains(&last) {
                        break true;
                    }
                }
            }
            Ok(Some(Ok(_))) => continue,
            _ => break false,
        }
    };
    assert!(
        done,
        "the relay wrote only {seen} of {n} drain events in 60 s"
    );
    let _ = ws.close(None).await;
}

/// nostr-rs-relay with `messages_per_sec = 20` and `max_event_bytes = 8192`
/// (its rate bucket emptied first, see [`drain_rate_bucket`]): a 2 MiB
/// download arrives intact at 70 % or more of what the limit allows
/// (rate × data per 8 KiB event), with at most 10 % of events refused.
///
/// nostr-rs-relay tells of neither limit in an `OK`: an event over
/// `max_event_bytes` gets a `NOTICE` ("event exceeded max size") and is
/// dropped; at the rate limit it answers nothing at all, its (one,
/// relay-wide) database writer sleeps and events queue. So refusals are
/// counted from its log ("client sent command larger"), and events sent by
/// a pass-through [`FaultyRelay`] (no faults) in front of it (`events`
/// counts what was handed to the relay, which may still sit in its queue).
///
/// The rate is relay-wide: the entry's acknowledgements and both ends'
/// probes and pings take from the same 20 events per second as the exit's
/// data, so with one acknowledgement per two data events at most about
/// two thirds of `rate × data per event` is reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nostr_rs_relay_rate_and_size_limits() {
    let backend = HttpBackend::start().await;
    let relay = ThirdPartyRelay::start_with(RelayLimits {
        messages_per_sec: Some(RATE),
        max_event_bytes: MAX_EVENT,
    })
    .await
    .unwrap_or_else(|e| panic!("nostr-rs-relay is required: {e}"));
    let counter = FaultyRelay::start(relay.url(), FaultConfig::default()).await;
    let relays = [counter.url()];
    let (exit, entry, _dir) = exit_and_entry(&relays, &backend, &[]).await;
    let domain = exit.value("domain").to_string();
    // A first small request: both ends have found the relay's size by now.
    let first = curl(&[
        "--socks5-hostname",
        entry.value("socks5"),
        &format!("http://{domain}/hello"),
    ])
    .await;
    assert_eq!(first.stdout, HELLO_BODY, "{first:?}");

    let t = Instant::now();
    drain_rate_bucket(relay.url(), RATE).await;
    eprintln!("rate bucket drained in {:.1} s", t.elapsed().as_secs_f64());
    let before = counter.stats();

    let file = "1m";
    let bytes = 2 * backend.file(file).len();
    let t = Instant::now();
    // 2 MiB: the 1 MiB file twice over one connection (keep-alive), one stream.
    let url = format!("http://{domain}/{file}");
    let out = curl(&["--socks5-hostname", entry.value("socks5"), &url, &url]).await;
    let took = t.elapsed();
    assert_eq!(
        out.status,
        0,
        "{out:?}\nexit log tail:\n{}",
        tail(&exit.stderr(), 4000)
    );
    assert_eq!(out.stdout.len(), bytes);
    assert_eq!(sha256_hex(&out.stdout[..bytes / 2]), backend.sha256(file));
    assert_eq!(sha256_hex(&out.stdout[bytes / 2..]), backend.sha256(file));

    let after = counter.stats();
    let events = after.publish_seen - before.publish_seen;
    let log = relay.log();
    if let Some(dir) = std::env::var_os("NWS_TEST_LOG_DIR") {
        let _ = std::fs::write(PathBuf::from(dir).join("nostr-rs-relay.log"), &log);
    }
    let refused = log.matches("client sent command larger").count() as u64;
    let rate_lines = log.matches("rate limit reached").count();
    let per_event = nws_core::protocol::max_data_for_content(MAX_EVENT - 600);
    let limit = RATE as f64 * per_event as f64;
    let throughput = bytes as f64 / took.as_secs_f64();
    let resent = download_resent_share(&exit, 2).await;
    println!(
        "DEPLOYED mode=nostr-rs-relay_20ps_8k mib2_s={:.1} throughput_kib_s={:.1} limit_kib_s={:.1} share_of_limit={:.2} events={events} events_total={} refused={refused} resent_share={}",
        took.as_secs_f64(),
        throughput / 1024.0,
        limit / 1024.0,
        throughput / limit,
        after.publish_seen,
        resent.map_or("n/a".to_string(), |s| format!("{:.3}", s)),
    );
    eprintln!(
        "nostr-rs-relay: {rate_lines} 'rate limit reached' log lines, {refused} size NOTICEs; data per {MAX_EVENT}-byte event: {per_event} bytes"
    );
    eprintln!(
        "exit's path lines:\n{}",
        log_lines(&exit, &["probe", "size", "pac", "rate", "NOTICE"], 20)
    );
    assert!(
        throughput >= 0.7 * limit,
        "{:.1} KiB/s is below 70 % of the limit's {:.1} KiB/s",
        throughput / 1024.0,
        limit / 1024.0
    );
    assert!(
        refused as f64 <= 0.10 * after.publish_seen as f64,
        "{refused} of {} events refused",
        after.publish_seen
    );
}

// ---------------------------------------------------------------------------
// The exit crashes
// ---------------------------------------------------------------------------

/// What [`slow_get`] saw: body bytes (after the head), whether the read
/// ended with an error, and when it ended.
struct SlowRead {
    body: usize,
    error: Option<String>,
    ended: Instant,
}

/// GETs `http://{domain}/{file}` through the SOCKS5 proxy and reads it at
/// about 300 KiB/s with a 64 KiB socket receive buffer (so that neither the
/// kernel nor curl soaks up the file), until end of file, an error, or 120 s.
async fn slow_get(socks: &str, domain: &str, file: &str) -> SlowRead {
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
    let pause = Duration::from_secs_f64(chunk as f64 / (300.0 * 1024.0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut raw = 0usize;
    let mut head = None;
    let mut first = Vec::new();
    let mut buf = vec![0u8; chunk];
    let mut error = None;
    for _ in 0..1_000_000 {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => {
                error = Some("no end within 120 s".to_string());
                break;
            }
            Ok(Err(e)) => {
                error = Some(e.to_string());
                break;
            }
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                if head.is_none() {
                    first.extend_from_slice(&buf[..n]);
                    head = first
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|p| p + 4);
                }
                raw += n;
                tokio::time::sleep(pause.mul_f64(n as f64 / chunk as f64)).await;
            }
        }
    }
    SlowRead {
        body: raw.saturating_sub(head.unwrap_or(raw)),
        error,
        ended: Instant::now(),
    }
}

/// The exit is SIGKILLed 3 s into a slowly read 10 MiB download and started
/// again 2 s later with the same key on the same relay: the download fails
/// (error or truncated) within 10 s of the restart, and a new request
/// afterwards succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_killed_and_restarted_mid_download() {
    let backend = HttpBackend::start().await;
    let relay = nws_relay().await;
    let relays = [relay.value("relay").to_string()];
    let (mut exit, entry, dir) = exit_and_entry(&relays, &backend, &[]).await;
    let domain = exit.value("domain").to_string();
    let key = dir.path().join("exit.key");
    let socks = entry.value("socks5").to_string();
    let full = backend.file("10m").len();

    let (read, (killed, restarted, exit2)) =
        tokio::join!(slow_get(&socks, &domain, "10m"), async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            exit.kill().await;
            let killed = Instant::now();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let exit2 = spawn_exit(&key, &backend, &relays, &[]).await;
            (killed, Instant::now(), exit2)
        });
    assert_eq!(exit2.value("domain"), domain, "same key, same address");
    let after_restart = read.ended.saturating_duration_since(restarted);
    println!(
        "DEPLOYED mode=exit_restart body={} of {full} error={:?} ended_after_kill_s={:.1} ended_after_restart_s={:.1}",
        read.body,
        read.error,
        read.ended.saturating_duration_since(killed).as_secs_f64(),
        after_restart.as_secs_f64()
    );
    eprintln!(
        "entry's lines about the stream:\n{}",
        log_lines(
            &entry,
            &["unknown", "ping", "PING", "timeout", "ended", "abort"],
            20
        )
    );
    eprintln!(
        "restarted exit's lines:\n{}",
        log_lines(&exit2, &["unknown", "ping", "PING", "ERROR", "stream"], 20)
    );
    assert!(
        read.error.is_some() || read.body < full,
        "the download went on as if nothing happened"
    );
    assert!(
        read.ended <= restarted + Duration::from_secs(10),
        "the download ended {:.1} s after the restart",
        after_restart.as_secs_f64()
    );
    let out = curl_http(&[
        "--socks5-hostname",
        &socks,
        &format!("http://{domain}/hello"),
    ])
    .await;
    assert!(out.success() && out.http_code == 200, "{out:?}");
    assert_eq!(out.body, HELLO_BODY);
    download("after restart", &entry, &domain, &backend, "1m").await;
}

/// The exit is SIGKILLed 3 s into a slowly read 10 MiB download and never
/// comes back: the download fails within 30 s of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_killed_for_good_mid_download() {
    let backend = HttpBackend::start().await;
    let relay = nws_relay().await;
    let relays = [relay.value("relay").to_string()];
    let (mut exit, entry, _dir) = exit_and_entry(&relays, &backend, &[]).await;
    let domain = exit.value("domain").to_string();
    let socks = entry.value("socks5").to_string();
    let full = backend.file("10m").len();

    let (read, killed) = tokio::join!(slow_get(&socks, &domain, "10m"), async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        exit.kill().await;
        Instant::now()
    });
    let after_kill = read.ended.saturating_duration_since(killed);
    println!(
        "DEPLOYED mode=exit_gone body={} of {full} error={:?} ended_after_kill_s={:.1}",
        read.body,
        read.error,
        after_kill.as_secs_f64()
    );
    eprintln!(
        "entry's lines about the stream:\n{}",
        log_lines(
            &entry,
            &["unknown", "ping", "PING", "timeout", "ended", "abort"],
            20
        )
    );
    assert!(
        read.error.is_some() || read.body < full,
        "the download went on as if nothing happened"
    );
    assert!(
        after_kill <= Duration::from_secs(30),
        "the download ended {:.1} s after the kill",
        after_kill.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// A relay that stores ephemeral events, and an exit that restarts
// ---------------------------------------------------------------------------

/// A relay that keeps ephemeral events for 300 s and replays them to new
/// subscriptions; one POST goes through, then the exit restarts with the
/// same key 2 s later and subscribes again, getting the stored `CONNECT`
/// (with its 0-RTT request) once more. The backend must see the POST
/// exactly once, counted 10 s after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_request_is_not_replayed_after_exit_restart() {
    let backend = HttpBackend::start().await;
    let relay = nws_relay().await;
    let faulty = FaultyRelay::start(
        relay.value("relay"),
        FaultConfig {
            store_ephemeral: Some(Duration::from_secs(300)),
            ..FaultConfig::default()
        },
    )
    .await;
    let relays = [faulty.url()];
    let (exit, entry, dir) = exit_and_entry(&relays, &backend, &[]).await;
    let domain = exit.value("domain").to_string();
    let key = dir.path().join("exit.key");
    let path = "sha256/once";
    let body = b"pay 10 coins to bob, once".to_vec();

    let hash = post_for_hash(&entry, &domain, path, &body)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(hash, sha256_hex(&body));
    assert_eq!(backend.path_count(path), 1);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let code = exit.terminate().await;
    let replayed_before = faulty.stats().stored_replayed;
    let exit2 = spawn_exit(&key, &backend, &relays, &[]).await;
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let count = backend.path_count(path);
    let stats = faulty.stats();
    println!(
        "DEPLOYED mode=stored_replay_after_restart backend_saw={count} stored_replayed_to_new_exit={} first_exit_code={code:?} waited_s={:.1}",
        stats.stored_replayed - replayed_before,
        restarted.elapsed().as_secs_f64()
    );
    eprintln!(
        "restarted exit's lines:\n{}",
        log_lines(
            &exit2,
            &["CONNECT", "replay", "stream", "duplicate", "old"],
            30
        )
    );
    assert_eq!(
        count, 1,
        "the backend saw the POST {count} times (the restarted exit acted on stored events)"
    );
}
