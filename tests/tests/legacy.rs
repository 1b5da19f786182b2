//! Our entry and exit against emulated reference peers (asmogo/nws, legacy
//! format; `nws_tests::legacy`) that reorder the events they receive:
//! everything in this process, one embedded relay, curl as the client, and
//! every body checked (SHA-256 for the 10 MiB download).
//!
//! The naive tests run our side with pacing off ([`LegacyPacing::none`]),
//! as a sender that ignores the reference's races, and show that the
//! emulator then loses or reorders data: the pacing is what makes the
//! other tests pass.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nostr_sdk::prelude::{Keys, PublicKey, RelayUrl};
use nws_core::entry::{EntryConfig, EntryProxy};
use nws_core::exit::{ExitConfig, ExitNode};
use nws_core::pacing::LegacyPacing;
use nws_relay::EmbeddedRelay;
use nws_tests::legacy::{
    LegacyEntry, LegacyEntryConfig, LegacyExit, LegacyExitConfig, LegacyStats, Reorder,
};
use nws_tests::{curl, sha256_hex, HttpBackend};

/// The reordering every test uses: per-event delays of 0..10 ms.
const MAX_DELAY_MS: u64 = 10;
/// Stream lifetime of the emulators where a test needs the whole transfer.
const LONG_LIFETIME: Duration = Duration::from_secs(120);
/// Small requests per direction, and the files they cycle through (one,
/// one or two, and three data events).
const SMALL_REQUESTS: usize = 20;
const SMALL_FILES: &[&str] = &["hello", "1k", "64k"];

/// Idle timeout of our side where a test needs the whole transfer.
const IDLE: Duration = Duration::from_secs(300);
/// The tests measure time and pace events: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn relay() -> (EmbeddedRelay, Vec<RelayUrl>) {
    let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let relays = vec![relay.url().clone()];
    (relay, relays)
}

/// Our entry (SOCKS5 on loopback) speaking the legacy format to `exit`.
async fn our_entry(
    relays: &[RelayUrl],
    exit: PublicKey,
    pacing: LegacyPacing,
    idle: Duration,
) -> (EntryProxy, String) {
    let mut c = EntryConfig::new(relays.to_vec());
    c.socks_listen = Some("127.0.0.1:0".parse().unwrap());
    c.legacy_exits = vec![exit];
    c.legacy_pacing = pacing;
    c.idle_timeout = idle;
    let proxy = EntryProxy::start(c).await.unwrap();
    let socks = proxy.socks_addr().unwrap().to_string();
    (proxy, socks)
}

/// Our exit in front of `backend`.
async fn our_exit(
    relays: &[RelayUrl],
    backend: &HttpBackend,
    pacing: LegacyPacing,
    idle: Duration,
) -> ExitNode {
    let mut c = ExitConfig::new(relays.to_vec(), Keys::generate(), backend.host_port());
    c.legacy_pacing = pacing;
    c.idle_timeout = idle;
    ExitNode::start(c).await.unwrap()
}

async fn legacy_exit(relays: &[RelayUrl], backend: &HttpBackend, lifetime: Duration) -> LegacyExit {
    let mut c = LegacyExitConfig::new(relays.to_vec(), backend.host_port());
    c.reorder = Reorder::new(7, MAX_DELAY_MS);
    c.lifetime = lifetime;
    LegacyExit::start(c).await.unwrap()
}

async fn legacy_entry(relays: &[RelayUrl], exit: PublicKey, lifetime: Duration) -> LegacyEntry {
    let mut c = LegacyEntryConfig::new(relays.to_vec(), exit);
    c.reorder = Reorder::new(11, MAX_DELAY_MS);
    c.lifetime = lifetime;
    LegacyEntry::start(c).await.unwrap()
}

/// `GET http://{domain}/{file}` through the SOCKS5 proxy at `socks`.
async fn get(socks: &str, domain: &str, file: &str, max_time: u64) -> nws_tests::CurlOutput {
    let url = format!("http://{domain}/{file}");
    let max = max_time.to_string();
    curl(&["--socks5-hostname", socks, "--max-time", &max, &url]).await
}

/// Runs [`SMALL_REQUESTS`] sequential requests; returns how many came back
/// intact.
async fn small_requests(socks: &str, domain: &str, backend: &HttpBackend, max_time: u64) -> usize {
    let mut intact = 0;
    for i in 0..SMALL_REQUESTS {
        let file = SMALL_FILES[i % SMALL_FILES.len()];
        let out = get(socks, domain, file, max_time).await;
        if out.status == 0 && out.stdout == backend.file(file) {
            intact += 1;
        } else {
            eprintln!(
                "request {i} ({file}): curl {} with {} of {} bytes, intact prefix: {}; {}",
                out.status,
                out.stdout.len(),
                backend.file(file).len(),
                backend.file(file).starts_with(&out.stdout),
                out.stderr.trim()
            );
        }
    }
    intact
}

/// Downloads `10m` and asserts it is intact; returns the time it took.
async fn download_10m(label: &str, socks: &str, domain: &str, backend: &HttpBackend) -> Duration {
    let t = Instant::now();
    let out = get(socks, domain, "10m", 120).await;
    let took = t.elapsed();
    assert_eq!(out.status, 0, "{label}: {}", out.stderr);
    assert_eq!(out.stdout.len(), backend.file("10m").len(), "{label}");
    assert_eq!(sha256_hex(&out.stdout), backend.sha256("10m"), "{label}");
    eprintln!("{label}: 10 MiB intact in {:.1} s", took.as_secs_f64());
    took
}

/// Waits up to `secs` seconds for `f` to hold.
async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    LegacyStats::get(c)
}

/// Our entry → emulated reference exit reordering 0..10 ms: 20 of 20
/// small requests and 10 MiB intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_entry_survives_a_reordering_legacy_exit() {
    let _serial = SERIAL.lock().await;
    let backend = HttpBackend::start().await;
    let (_relay, relays) = relay().await;
    let exit = legacy_exit(&relays, &backend, LONG_LIFETIME).await;
    let (_entry, socks) =
        our_entry(&relays, exit.public_key(), LegacyPacing::default(), IDLE).await;
    let domain = exit.nostr_domain();
    let t = Instant::now();
    let intact = small_requests(&socks, &domain, &backend, 20).await;
    eprintln!(
        "our entry → legacy exit: {intact}/{SMALL_REQUESTS} small requests intact in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(intact, SMALL_REQUESTS);
    download_10m("our entry → legacy exit", &socks, &domain, &backend).await;
    assert_eq!(
        count(&exit.stats().dropped),
        0,
        "the legacy exit dropped data"
    );
}

/// Emulated reference entry reordering 0..10 ms → our exit: 20 of 20
/// small requests and 10 MiB intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_exit_survives_a_reordering_legacy_entry() {
    let _serial = SERIAL.lock().await;
    let backend = HttpBackend::start().await;
    let (_relay, relays) = relay().await;
    let exit = our_exit(&relays, &backend, LegacyPacing::default(), IDLE).await;
    let entry = legacy_entry(&relays, exit.public_key(), LONG_LIFETIME).await;
    let socks = entry.addr().to_string();
    let domain = exit.nostr_domain().unwrap();
    let t = Instant::now();
    let intact = small_requests(&socks, &domain, &backend, 20).await;
    eprintln!(
        "legacy entry → our exit: {intact}/{SMALL_REQUESTS} small requests intact in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(intact, SMALL_REQUESTS);
    download_10m("legacy entry → our exit", &socks, &domain, &backend).await;
}

/// Without pacing, our entry's data overtakes its `CONNECT` at the
/// reordering exit, which drops it: requests fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_entry_loses_requests_to_a_reordering_legacy_exit() {
    let _serial = SERIAL.lock().await;
    let backend = HttpBackend::start().await;
    let (_relay, relays) = relay().await;
    let exit = legacy_exit(&relays, &backend, LONG_LIFETIME).await;
    let (_entry, socks) = our_entry(&relays, exit.public_key(), LegacyPacing::none(), IDLE).await;
    let intact = small_requests(&socks, &exit.nostr_domain(), &backend, 3).await;
    eprintln!("naive entry → legacy exit: {intact}/{SMALL_REQUESTS} small requests intact");
    assert!(
        intact < SMALL_REQUESTS,
        "every request came through unpaced"
    );
    assert!(
        count(&exit.stats().dropped) > 0,
        "the legacy exit dropped nothing"
    );
}

/// Without pacing, our exit's answers miss the entry's late subscription or
/// swap places in its per-event tasks: requests and the download fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_exit_loses_answers_to_a_reordering_legacy_entry() {
    let _serial = SERIAL.lock().await;
    let backend = HttpBackend::start().await;
    let (_relay, relays) = relay().await;
    let exit = our_exit(&relays, &backend, LegacyPacing::none(), IDLE).await;
    let entry = legacy_entry(&relays, exit.public_key(), LONG_LIFETIME).await;
    let socks = entry.addr().to_string();
    let domain = exit.nostr_domain().unwrap();
    let intact = small_requests(&socks, &domain, &backend, 3).await;
    eprintln!("legacy entry → naive exit: {intact}/{SMALL_REQUESTS} small requests intact");
    assert!(intact < SMALL_REQUESTS, "every answer came through unpaced");
    let out = get(&socks, &domain, "1m", 20).await;
    let whole = out.status == 0 && sha256_hex(&out.stdout) == backend.sha256("1m");
    eprintln!(
        "legacy entry → naive exit: 1 MiB: curl {}, {} bytes, intact: {whole}",
        out.status,
        out.stdout.len()
    );
    assert!(!whole, "1 MiB came through unpaced and intact");
}

/// The reference exit closes every stream after its lifetime (2 s here):
/// the client through our entry gets an intact prefix, our entry's stream
/// ends (its idle timeout, the legacy format has no close), and the next
/// stream works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_exit_lifetime_ends_our_entry_stream_cleanly() {
    let _serial = SERIAL.lock().await;
    let backend = HttpBackend::start().await;
    let (_relay, relays) = relay().await;
    let exit = legacy_exit(&relays, &backend, Duration::from_secs(2)).await;
    let (entry, socks) = our_entry(
        &relays,
        exit.public_key(),
        LegacyPacing::default(),
        Duration::from_secs(3),
    )
    .await;
    let domain = exit.nostr_domain();
    let t = Instant::now();
    let out = get(&socks, &domain, "50m", 60).await;
    let file = backend.file("50m");
    eprintln!(
        "legacy exit closing at 2 s: curl {} after {:.1} s with {} of {} bytes",
        out.status,
        t.elapsed().as_secs_f64(),
        out.stdout.len(),
        file.len()
    );
    assert_ne!(out.status, 0, "50 MiB cannot come in 2 s");
    assert_ne!(
        out.status, 28,
        "curl had to time out: our entry never ended the stream"
    );
    assert!(!out.stdout.is_empty() && out.stdout.len() < file.len());
    assert!(
        file.starts_with(&out.stdout),
        "the bytes before the close are not intact"
    );
    assert!(count(&exit.stats().closed_by_lifetime) >= 1);
    let stats = entry.entry().stats().clone();
    eventually(30, "our entry still counts the stream open", || {
        stats.streams_open.load(Relaxed) == 0
    })
    .await;
    let out = get(&socks, &domain, "hello", 20).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(out.stdout, backend.file("hello"));
}

/// The reference entry closes every stream after its lifetime (2 s here)
/// in the middle of a 10 MiB download: its client gets an intact prefix, our
/// exit's stream ends (once the download is sent and the idle timeout has
/// passed: nothing tells it the entry is gone), and the next request works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_entry_lifetime_ends_our_exit_stream_cleanly() {
    let _serial = SERIAL.lock().await;
    let backend = HttpBackend::start().await;
    let (_relay, relays) = relay().await;
    // The backend keeps the connection (keep-alive) and the legacy format
    // has no close: the stream ends by the idle timeout, 5 s here.
    let exit = our_exit(
        &relays,
        &backend,
        LegacyPacing::default(),
        Duration::from_secs(5),
    )
    .await;
    let entry = legacy_entry(&relays, exit.public_key(), Duration::from_secs(2)).await;
    let socks = entry.addr().to_string();
    let domain = exit.nostr_domain().unwrap();
    let t = Instant::now();
    let out = get(&socks, &domain, "10m", 60).await;
    let file = backend.file("10m");
    eprintln!(
        "legacy entry closing at 2 s: curl {} after {:.1} s with {} of {} bytes",
        out.status,
        t.elapsed().as_secs_f64(),
        out.stdout.len(),
        file.len()
    );
    assert_ne!(out.status, 0, "10 MiB cannot come in 2 s");
    assert_ne!(
        out.status, 28,
        "curl had to time out: the stream never ended"
    );
    assert!(!out.stdout.is_empty() && out.stdout.len() < file.len());
    assert!(
        file.starts_with(&out.stdout),
        "the bytes before the close are not intact"
    );
    let stats = exit.stats().clone();
    eventually(60, "our exit still counts the stream open", || {
        stats.streams_open.load(Relaxed) == 0
    })
    .await;
    let out = get(&socks, &domain, "hello", 20).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(out.stdout, backend.file("hello"));
}
