//! Hostile input and resource limits (issue 7), across processes: the real
//! `nws relay`, `nws exit` and `nws entry`, a real HTTP backend, raw
//! clients that send exactly the bytes chosen here, and raw Nostr peers
//! that publish crafted events to the relay the exit listens on.
//!
//! Every hostile input must get a clear answer (a reply code, a status, or
//! a log line naming the event and why it was dropped), leave the process
//! running, and leave other streams untouched: each test runs a normal
//! transfer through the proxy beside the hostile input and checks its
//! bytes. Figures (memory peaks, delays) are printed, never asserted on
//! time except for generous upper bounds on what must be bounded.
//!
//! The last tests drive `nws-core` in-process, where idle timeouts and
//! linger times can be set to seconds.

use std::time::{Duration, Instant};

use nostr_sdk::prelude::{Event, EventBuilder, Keys, Kind, PublicKey, RelayUrl, Tag};
use nws_core::engine::{Dialect, Output as EngineOutput, Stream, StreamConfig};
use nws_core::protocol::{
    build_stream_event, stream_kind, Cipher, ErrorReason, Message, MessageType,
};
use nws_core::transport::{entry_stream_filter, Transport};
use nws_tests::hostile::{fd_count, memory_kib, probe, read_until_closed, socks5_open, Probe};
use nws_tests::process::NwsProcess;
use nws_tests::{curl, sha256_hex, CurlOutput, HttpBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The path under attack
// ---------------------------------------------------------------------------

/// Relay, backend, exit and entry on loopback.
struct Net {
    relay: NwsProcess,
    backend: HttpBackend,
    exit: NwsProcess,
    entry: NwsProcess,
    _dir: tempfile::TempDir,
}

impl Net {
    async fn start(exit_args: &[&str], entry_args: &[&str]) -> Net {
        let backend = HttpBackend::start().await;
        let addr = backend.host_port();
        Self::start_with(backend, &addr, exit_args, entry_args).await
    }

    async fn start_with(
        backend: HttpBackend,
        backend_addr: &str,
        exit_args: &[&str],
        entry_args: &[&str],
    ) -> Net {
        let relay = NwsProcess::spawn(&["relay", "--listen", "127.0.0.1:0"]).await;
        let url = relay.value("relay").to_string();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("exit.key");
        let mut args = vec![
            "exit",
            "--relay",
            &url,
            "--key-file",
            key.to_str().unwrap(),
            "--backend",
            backend_addr,
        ];
        args.extend_from_slice(exit_args);
        let exit = NwsProcess::spawn(&args).await;
        let entry = Self::spawn_entry(&url, entry_args).await;
        Net {
            relay,
            backend,
            exit,
            entry,
            _dir: dir,
        }
    }

    async fn spawn_entry(relay: &str, extra: &[&str]) -> NwsProcess {
        NwsProcess::entry(&[relay], true, extra).await
    }

    fn relay_url(&self) -> &str {
        self.relay.value("relay")
    }
    fn domain(&self) -> &str {
        self.exit.value("domain")
    }
    fn exit_key(&self) -> PublicKey {
        PublicKey::parse(self.exit.value("npub")).unwrap()
    }
    fn socks(&self) -> &str {
        self.entry.value("socks5")
    }
    fn http(&self) -> &str {
        self.entry.value("http")
    }
    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.domain())
    }

    /// Starts fetching `file` through the SOCKS5 proxy in the background.
    fn fetch_in_background(&self, file: &str) -> JoinHandle<CurlOutput> {
        let (socks, url) = (self.socks().to_string(), self.url(file));
        tokio::spawn(async move { curl(&["--socks5-hostname", &socks, &url]).await })
    }

    /// Awaits a background fetch and checks every byte.
    async fn assert_fetched(&self, fetch: JoinHandle<CurlOutput>, file: &str) {
        let out = fetch.await.unwrap();
        assert_eq!(out.status, 0, "the other stream failed: {out:?}");
        assert_eq!(
            sha256_hex(&out.stdout),
            self.backend.sha256(file),
            "{file} corrupted"
        );
    }

    /// A fetch through each proxy port still works, and both processes run.
    async fn assert_still_serving(&mut self) {
        let fetch = self.fetch_in_background("64k");
        self.assert_fetched(fetch, "64k").await;
        let out = curl(&[
            "--proxy",
            &format!("http://{}", self.http()),
            &self.url("hello"),
        ])
        .await;
        assert_eq!(out.stdout, self.backend.file("hello"), "{out:?}");
        assert!(alive(self.exit.pid()), "exit died");
        assert!(alive(self.entry.pid()), "entry died");
    }

    /// Waits until the exit's log has a line containing every one of `parts`.
    async fn exit_logged(&self, parts: &[&str]) -> String {
        wait_for_log(|| self.exit.stderr(), parts).await
    }

    async fn entry_logged(&self, parts: &[&str]) -> String {
        wait_for_log(|| self.entry.stderr(), parts).await
    }
}

fn alive(pid: Option<u32>) -> bool {
    pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
}

/// The first log line containing every one of `parts`, waiting up to 10 s.
async fn wait_for_log(log: impl Fn() -> String, parts: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(line) = log().lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_string();
        }
        if Instant::now() > deadline {
            panic!("no log line with {parts:?}; log:\n{}", tail(&log(), 6000));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

// ---------------------------------------------------------------------------
// A raw Nostr peer: crafted events and a hand-driven stream
// ---------------------------------------------------------------------------

/// A peer of the exit with its own key, on the exit's relay, that
/// publishes whatever it is told to: sealed messages or raw events.
struct RawPeer {
    transport: Transport,
    keys: Keys,
    exit: PublicKey,
    cipher: Cipher,
    relays: Vec<RelayUrl>,
    rx: Receiver<Event>,
}

impl RawPeer {
    async fn connect(relay: &str, exit: PublicKey) -> RawPeer {
        let relays = vec![RelayUrl::parse(relay).unwrap()];
        let transport = Transport::new();
        transport.ensure_connected(&relays, WAIT).await.unwrap();
        let keys = Keys::generate();
        let rx = transport.route(keys.public_key());
        transport
            .subscribe(entry_stream_filter(&exit, [keys.public_key()]), &relays)
            .await
            .unwrap();
        let cipher = Cipher::derive(keys.secret_key(), &exit).unwrap();
        RawPeer {
            transport,
            keys,
            exit,
            cipher,
            relays,
            rx,
        }
    }

    /// Seals `msg` to the exit, signs it with this peer's key, publishes it.
    async fn send(&self, msg: &Message) -> Event {
        let content = self.cipher.seal(msg).unwrap();
        let event = build_stream_event(&self.keys, &self.exit, content).unwrap();
        self.publish(&event).await;
        event
    }

    async fn publish(&self, event: &Event) {
        self.transport.publish(event, &self.relays).await.unwrap();
    }

    /// A kind-28333 event from this peer with raw `content` and `tags`.
    fn raw_event(&self, content: String, tags: Vec<Tag>) -> Event {
        EventBuilder::new(stream_kind(), content)
            .tags(tags)
            .sign_with_keys(&self.keys)
            .unwrap()
    }

    /// The next message the exit sent this peer, within `wait`.
    async fn recv(&mut self, wait: Duration) -> Option<Message> {
        let ev = tokio::time::timeout(wait, self.rx.recv()).await.ok()??;
        Some(self.cipher.open(&ev.content).expect("exit's event opens"))
    }
}

/// A version-2 stream to the exit driven by the engine over a [`RawPeer`],
/// so that the test knows its key and can put crafted messages beside it.
struct PeerStream {
    peer: RawPeer,
    engine: Stream,
    received: Vec<u8>,
    peer_done: bool,
    ended: Option<ErrorReason>,
}

impl PeerStream {
    /// Opens a stream and waits for `CONNECTED`.
    async fn open(peer: RawPeer) -> PeerStream {
        let key = uuid_like();
        let engine = Stream::open(
            StreamConfig::default(),
            key,
            "x.nostr:80".into(),
            Dialect::V2,
            Instant::now(),
        );
        let mut s = PeerStream {
            peer,
            engine,
            received: Vec::new(),
            peer_done: false,
            ended: None,
        };
        let deadline = Instant::now() + WAIT;
        while !s.engine.is_open() {
            assert!(s.ended.is_none(), "refused: {:?}", s.ended);
            assert!(Instant::now() < deadline, "no CONNECTED");
            s.step(Duration::from_millis(100)).await;
        }
        s
    }

    fn key(&self) -> String {
        self.engine.key().to_string()
    }

    /// Publishes queued output, then waits up to `wait` for one message or timer.
    async fn step(&mut self, wait: Duration) {
        self.drain().await;
        let timer = self.engine.poll_timeout();
        let wait = timer
            .map(|t| t.saturating_duration_since(Instant::now()).min(wait))
            .unwrap_or(wait);
        match tokio::time::timeout(wait, self.peer.rx.recv()).await {
            Ok(Some(ev)) => {
                if let Ok(m) = self.peer.cipher.open(&ev.content) {
                    let _ = self.engine.handle_message(m, Instant::now());
                }
            }
            Ok(None) => panic!("route closed"),
            Err(_) => self.engine.handle_timeout(Instant::now()),
        }
        self.drain().await;
    }

    async fn drain(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                EngineOutput::Publish(m) => {
                    self.peer.send(&m).await;
                }
                EngineOutput::Deliver(b) => self.received.extend_from_slice(&b),
                EngineOutput::PeerFinished => self.peer_done = true,
                EngineOutput::Aborted(r) | EngineOutput::Refused(r) => self.ended = Some(r),
                EngineOutput::Opened => {}
            }
        }
    }

    async fn write_all(&mut self, mut bytes: &[u8]) {
        let deadline = Instant::now() + WAIT;
        while !bytes.is_empty() {
            let n = self.engine.write(bytes, Instant::now()).unwrap();
            bytes = &bytes[n..];
            if !bytes.is_empty() {
                assert!(Instant::now() < deadline, "window never opened");
                self.step(Duration::from_millis(50)).await;
            }
        }
        self.drain().await;
    }

    /// Reads until the exit's end (the backend answers and closes), or an
    /// abort, within `wait`, then half-closes too. (Half-closing first would
    /// race the backend: hyper drops a connection whose client half-closes
    /// before the answer is written.)
    async fn read_then_finish(&mut self, wait: Duration) -> Vec<u8> {
        let deadline = Instant::now() + wait;
        while !self.peer_done && self.ended.is_none() && Instant::now() < deadline {
            self.step(Duration::from_millis(100)).await;
        }
        assert!(
            self.peer_done || self.ended.is_some(),
            "stream {} not finished within {wait:?}; {} bytes received",
            self.key(),
            self.received.len()
        );
        if self.ended.is_none() {
            self.engine.finish(Instant::now());
            self.drain().await;
        }
        self.received.clone()
    }
}

fn uuid_like() -> String {
    let k = Keys::generate().public_key().to_hex();
    format!(
        "{}-{}-{}-{}-{}",
        &k[..8],
        &k[8..12],
        &k[12..16],
        &k[16..20],
        &k[20..32]
    )
}

/// An HTTP/1.1 request for the backend's `/echo`, closing after the answer.
fn echo_request(body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

/// The body of an HTTP response (after the blank line).
fn body_of(response: &[u8]) -> &[u8] {
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(response)));
    &response[at + 4..]
}

// ---------------------------------------------------------------------------
// Malformed proxy requests
// ---------------------------------------------------------------------------

/// Every malformed, truncated or refused SOCKS5 request gets the RFC 1928
/// answer (or none, where RFC 1928 has none) and the connection is closed;
/// the entry logs why; a download through the same proxy is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_truncated_socks5_requests_are_refused() {
    let mut net = Net::start(&[], &[]).await;
    let fetch = net.fetch_in_background("10m");
    let socks = net.socks().to_string();
    let nws = net.domain().to_string();
    let with_request = |req: &[u8]| [&[5u8, 1, 0][..], req].concat();
    let domain = |name: &str| {
        let mut v = vec![5, 1, 0, 3, name.len() as u8];
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&[0, 80]);
        v
    };
    let reply = |code: u8| vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0];
    // (what, bytes sent, expected answer, log text)
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "SOCKS4",
            vec![4, 1, 0, 80, 127, 0, 0, 1, 0],
            vec![],
            "not a SOCKS5 client",
        ),
        (
            "HTTP on the SOCKS port",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            vec![],
            "version byte 0x47",
        ),
        ("no methods", vec![5, 0], vec![5, 0xFF], "no acceptable"),
        ("only GSSAPI", vec![5, 1, 1], vec![5, 0xFF], "no acceptable"),
        (
            "BIND",
            with_request(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 80]),
            [vec![5, 0], reply(7)].concat(),
            "command 0x02",
        ),
        (
            "UDP ASSOCIATE",
            with_request(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]),
            [vec![5, 0], reply(7)].concat(),
            "command 0x03",
        ),
        (
            "address type 9",
            with_request(&[5, 1, 0, 9, 1, 2]),
            [vec![5, 0], reply(8)].concat(),
            "address type 0x09",
        ),
        (
            "empty domain",
            with_request(&[5, 1, 0, 3, 0, 0, 80]),
            [vec![5, 0], reply(1)].concat(),
            "empty or non-UTF-8",
        ),
        (
            "non-UTF-8 domain",
            with_request(&[5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80]),
            [vec![5, 0], reply(1)].concat(),
            "empty or non-UTF-8",
        ),
        (
            "request version 4",
            with_request(&[4, 1, 0, 1, 127, 0, 0, 1, 0, 80]),
            vec![5, 0],
            "version byte 0x04",
        ),
        (
            "not an NWS name",
            with_request(&domain("example.com")),
            [vec![5, 0], reply(2)].concat(),
            "not an NWS name",
        ),
        (
            "IP address",
            with_request(&[5, 1, 0, 1, 127, 0, 0, 1, 0, 80]),
            [vec![5, 0], reply(2)].concat(),
            "not an NWS name",
        ),
        (
            "bad .nostr name",
            with_request(&domain("zz.nostr")),
            [vec![5, 0], reply(4)].concat(),
            "bad NWS name",
        ),
        (
            "bad npub",
            with_request(&domain("npub1qqqq")),
            [vec![5, 0], reply(4)].concat(),
            "bad NWS name",
        ),
        (
            "longest domain",
            with_request(&domain(&"a".repeat(255))),
            [vec![5, 0], reply(2)].concat(),
            "not an NWS name",
        ),
    ];
    for (what, bytes, want, log) in cases {
        let p = probe(&socks, &bytes, false, WAIT).await;
        assert!(p.closed, "{what}: connection left open: {p:?}");
        assert_eq!(p.reply, want, "{what}");
        net.entry_logged(&[log]).await;
    }
    // Truncated at every length of a valid request, then end of file: no
    // answer beyond the method choice, the connection is closed.
    let full = with_request(&domain(&nws)[..]);
    for cut in 0..full.len() {
        let p = probe(&socks, &full[..cut], true, WAIT).await;
        assert!(p.closed, "cut at {cut}: left open");
        let want: &[u8] = if cut >= 3 { &[5, 0] } else { &[] };
        assert_eq!(p.reply, want, "cut at {cut}");
    }
    net.entry_logged(&["SOCKS5 client refused", "I/O error"])
        .await;
    net.assert_fetched(fetch, "10m").await;
    net.assert_still_serving().await;
}

/// Malformed, truncated, oversized and unsupported HTTP proxy requests get
/// a 4xx/5xx status with the reason in the body; nothing reaches the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_truncated_and_oversized_http_requests_are_refused() {
    let mut net = Net::start(&[], &[]).await;
    let fetch = net.fetch_in_background("10m");
    let http = net.http().to_string();
    let nws = net.domain().to_string();
    let mut too_many = "GET http://a.nostr/ HTTP/1.1\r\n".to_string();
    for i in 0..200 {
        too_many.push_str(&format!("X-{i}: v\r\n"));
    }
    too_many.push_str("\r\n");
    // Exactly 64 KiB with no end of head: read whole, then refused.
    let mut at_limit = format!("GET http://{nws}/ HTTP/1.1\r\nX-Big: ").into_bytes();
    at_limit.resize(64 * 1024, b'a');
    // (what, bytes, status, reason in body and log, whether the answer can
    // be read: past 64 KiB the proxy stops reading, and closing a socket
    // with unread bytes may reset the connection before the client reads)
    let cases: Vec<(&str, Vec<u8>, u16, &str, bool)> = vec![
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n".to_vec(),
            400,
            "malformed request head",
            true,
        ),
        (
            "no target",
            b"GET\r\n\r\n".to_vec(),
            400,
            "malformed request head",
            true,
        ),
        (
            "bad version",
            b"GET http://h/ HTTP/9\r\n\r\n".to_vec(),
            400,
            "malformed request head",
            true,
        ),
        (
            "origin form",
            b"GET /index.html HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
            400,
            "origin-form",
            true,
        ),
        (
            "CONNECT without port",
            format!("CONNECT {nws} HTTP/1.1\r\n\r\n").into_bytes(),
            400,
            "missing port",
            true,
        ),
        (
            "CONNECT port 0",
            format!("CONNECT {nws}:0 HTTP/1.1\r\n\r\n").into_bytes(),
            400,
            "port out of range",
            true,
        ),
        (
            "userinfo",
            format!("GET http://u:p@{nws}/ HTTP/1.1\r\n\r\n").into_bytes(),
            400,
            "userinfo",
            true,
        ),
        (
            "https absolute form",
            format!("GET https://{nws}/ HTTP/1.1\r\n\r\n").into_bytes(),
            501,
            "unsupported URL scheme",
            true,
        ),
        (
            "not an NWS name",
            b"GET http://example.com/ HTTP/1.1\r\n\r\n".to_vec(),
            403,
            "not an NWS name",
            true,
        ),
        (
            "bad .nostr name",
            b"CONNECT zz.nostr:443 HTTP/1.1\r\n\r\n".to_vec(),
            502,
            "bad NWS name",
            true,
        ),
        (
            "too many headers",
            too_many.into_bytes(),
            431,
            "larger than 64 KiB or 128",
            true,
        ),
        (
            "64 KiB head without its end",
            at_limit,
            431,
            "larger than 64 KiB or 128",
            true,
        ),
        (
            "70 KiB header",
            format!(
                "GET http://{nws}/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(70 * 1024)
            )
            .into_bytes(),
            431,
            "larger than 64 KiB or 128",
            false,
        ),
        (
            "1 MiB without a line end",
            "A".repeat(1024 * 1024).into_bytes(),
            431,
            "larger than 64 KiB or 128",
            false,
        ),
    ];
    for (what, bytes, status, reason, readable) in cases {
        let p = probe(&http, &bytes, false, WAIT).await;
        assert!(p.closed, "{what}: connection left open: {p:?}");
        if readable || !p.reply.is_empty() {
            assert_eq!(p.http_status(), Some(status), "{what}: {}", p.text());
            assert!(p.text().contains(reason), "{what}: {}", p.text());
        }
        net.entry_logged(&[reason]).await;
    }
    // Truncated heads followed by end of file: closed without an answer.
    let full = format!("GET http://{nws}/hello HTTP/1.1\r\nHost: x\r\n\r\n");
    for cut in [0, 1, 10, full.len() / 2, full.len() - 2] {
        let p = probe(&http, &full.as_bytes()[..cut], true, WAIT).await;
        assert!(p.closed && p.reply.is_empty(), "cut at {cut}: {p:?}");
    }
    net.entry_logged(&["closed the connection before the request head was complete"])
        .await;
    net.assert_fetched(fetch, "10m").await;
    assert_eq!(
        net.backend.request_count(),
        1,
        "a refused request reached the backend"
    );
    net.assert_still_serving().await;
}

/// A client that sends nothing, or trickles its request one byte at a
/// time, is cut off at the handshake timeout (10 s): SOCKS5 by closing,
/// HTTP with 408. Meanwhile other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_are_cut_off_at_the_handshake_timeout() {
    let mut net = Net::start(&[], &[]).await;
    let socks = net.socks().to_string();
    let http = net.http().to_string();
    let silent_socks =
        tokio::spawn(async move { probe(&socks, &[5], false, Duration::from_secs(30)).await });
    let silent_http = {
        let http = http.clone();
        tokio::spawn(
            async move { probe(&http, b"GET http://", false, Duration::from_secs(30)).await },
        )
    };
    let trickle = {
        let http = http.clone();
        let request = format!(
            "GET http://{}/hello HTTP/1.1\r\nHost: x\r\n\r\n",
            net.domain()
        );
        tokio::spawn(async move {
            let start = Instant::now();
            let sock = TcpStream::connect(&http).await.unwrap();
            let (mut rd, mut wr) = sock.into_split();
            let writer = tokio::spawn(async move {
                for b in request.bytes() {
                    if wr.write_all(&[b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                wr
            });
            let mut reply = Vec::new();
            let mut buf = [0u8; 1024];
            let closed = loop {
                match tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break true,
                    Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
                    Err(_) => break false,
                }
            };
            let took = start.elapsed();
            writer.abort();
            Probe {
                reply,
                closed,
                took,
            }
        })
    };
    net.assert_still_serving().await;
    for (what, p) in [
        ("silent SOCKS5", silent_socks.await.unwrap()),
        ("silent HTTP", silent_http.await.unwrap()),
        ("trickling HTTP", trickle.await.unwrap()),
    ] {
        eprintln!("{what}: closed after {:.1} s", p.took.as_secs_f64());
        assert!(p.closed, "{what}: never closed");
        assert!(
            p.took < Duration::from_secs(25),
            "{what}: held {:?}",
            p.took
        );
        if what.contains("HTTP") {
            assert_eq!(p.http_status(), Some(408), "{what}: {}", p.text());
        } else {
            assert!(p.reply.is_empty(), "{what}: {:?}", p.reply);
        }
    }
    net.entry_logged(&["SOCKS5 client too slow"]).await;
    net.entry_logged(&["HTTP proxy client too slow"]).await;
}

/// More silent clients than the entry serves at once (512): a real client
/// waits for a slot, at most about one handshake timeout, and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_flood_delays_other_clients_by_at_most_the_handshake_timeout() {
    let net = Net::start(&[], &[]).await;
    let mut idle = Vec::new();
    for _ in 0..600 {
        let mut s = TcpStream::connect(net.socks()).await.unwrap();
        s.write_all(&[5]).await.unwrap();
        idle.push(s);
    }
    let start = Instant::now();
    let out = curl(&["--socks5-hostname", net.socks(), &net.url("hello")]).await;
    let took = start.elapsed();
    eprintln!(
        "600 silent clients: a real request took {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(out.stdout, net.backend.file("hello"), "{out:?}");
    assert!(took < Duration::from_secs(40), "held {took:?}");
    drop(idle);
}

// ---------------------------------------------------------------------------
// Crafted events
// ---------------------------------------------------------------------------

/// Events addressed to the exit that do not decrypt or do not hold a
/// message are dropped, each with a log line naming the event and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecryptable_events_are_dropped_with_a_log_line() {
    let mut net = Net::start(&[], &[]).await;
    let fetch = net.fetch_in_background("10m");
    let exit = net.exit_key();
    let peer = RawPeer::connect(net.relay_url(), exit).await;
    let p = |pk: PublicKey| Tag::public_key(pk);
    // Sealed for someone else (MAC fails for the exit's key).
    let other = Keys::generate();
    let foreign = Cipher::derive(peer.keys.secret_key(), &other.public_key()).unwrap();
    let sealed_elsewhere = foreign
        .seal(&Message::new("k", MessageType::Connect))
        .unwrap();
    // Sealed for the exit, but not a message.
    let not_json = nostr_sdk::prelude::nip44::encrypt(
        peer.keys.secret_key(),
        &exit,
        "not json at all",
        nostr_sdk::prelude::nip44::Version::V2,
    )
    .unwrap();
    let no_key = peer
        .cipher
        .seal(&Message::new("", MessageType::Connect))
        .unwrap();
    let cases = [
        ("not base64 !!!".to_string(), "content is not base64"),
        ("AAAA".repeat(50), "cannot decrypt the event content"),
        (sealed_elsewhere, "cannot decrypt the event content"),
        (not_json, "malformed message JSON"),
        (no_key, "message without key"),
    ];
    for (content, why) in cases {
        let ev = peer.raw_event(content, vec![p(exit)]);
        peer.publish(&ev).await;
        let line = net.exit_logged(&[&ev.id.to_hex(), "dropped"]).await;
        assert!(line.contains(why), "{line}");
    }
    net.assert_fetched(fetch, "10m").await;
    net.assert_still_serving().await;
}

/// Another author cannot join or disturb a stream: data sent with a live
/// stream's key from a different key is not the stream's (the exit keeps
/// streams per author), a `CONNECT` with that key opens the attacker's own
/// stream, and the real stream's bytes arrive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_a_wrong_author_cannot_join_a_stream() {
    let mut net = Net::start(&[], &[]).await;
    let fetch = net.fetch_in_background("10m");
    let exit = net.exit_key();
    let mut victim = PeerStream::open(RawPeer::connect(net.relay_url(), exit).await).await;
    let mut attacker = RawPeer::connect(net.relay_url(), exit).await;
    let key = victim.key();
    let mut evil = Message::new(key.clone(), MessageType::Data);
    evil.seq = Some(0);
    evil.ack = Some(0);
    evil.data = b"GET /1m HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let injected = attacker.send(&evil).await;
    let mut close = Message::new(key.clone(), MessageType::Close);
    close.seq = Some(evil.data.len() as u64);
    attacker.send(&close).await;
    let mut ack = Message::new(key.clone(), MessageType::Ack);
    ack.ack = Some(1 << 40);
    attacker.send(&ack).await;
    // The attacker's own stream of that key does not exist: it is told
    // `unknown-stream` (the victim's stream is not disturbed).
    net.exit_logged(&[&key, "for an unknown stream: answering unknown-stream"])
        .await;
    // The same key in a CONNECT is a separate stream of the attacker's.
    let mut connect = Message::new(key.clone(), MessageType::Connect);
    connect.version = Some(2);
    connect.destination = "x.nostr:80".into();
    attacker.send(&connect).await;
    // The attacker was told `unknown-stream` for its injected messages first.
    let mut answer = None;
    for _ in 0..5 {
        let m = attacker
            .recv(WAIT)
            .await
            .expect("the attacker's own stream answers");
        if m.kind == MessageType::Error {
            assert_eq!(m.reason.as_deref(), Some("unknown-stream"));
            continue;
        }
        answer = Some(m);
        break;
    }
    assert_eq!(answer.map(|m| m.kind), Some(MessageType::Connected));

    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    victim.write_all(&echo_request(&body)).await;
    let response = victim.read_then_finish(Duration::from_secs(90)).await;
    assert_eq!(victim.ended, None, "victim stream aborted");
    assert_eq!(body_of(&response), &body[..], "victim's bytes changed");
    eprintln!("injected event {} was not the victim's", injected.id);
    net.assert_fetched(fetch, "10m").await;
    net.assert_still_serving().await;
}

/// Events whose first `p` tag is not the exit (but a later one is, so the
/// relay delivers them) are not routed; events of another kind or without
/// the exit's tag never reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mis_tagged_events_are_dropped() {
    let mut net = Net::start(&[], &[]).await;
    let fetch = net.fetch_in_background("10m");
    let exit = net.exit_key();
    let peer = RawPeer::connect(net.relay_url(), exit).await;
    let other = Keys::generate().public_key();
    let mut connect = Message::new("k1", MessageType::Connect);
    connect.version = Some(2);
    let content = peer.cipher.seal(&connect).unwrap();
    let two_tags = peer.raw_event(
        content.clone(),
        vec![Tag::public_key(other), Tag::public_key(exit)],
    );
    peer.publish(&two_tags).await;
    net.exit_logged(&[&two_tags.id.to_hex(), "unknown recipient", "dropped"])
        .await;
    let elsewhere = peer.raw_event(content.clone(), vec![Tag::public_key(other)]);
    let untagged = peer.raw_event(content.clone(), vec![]);
    let kind_1 = EventBuilder::new(Kind::TextNote, content)
        .tag(Tag::public_key(exit))
        .sign_with_keys(&peer.keys)
        .unwrap();
    for ev in [&elsewhere, &untagged, &kind_1] {
        peer.publish(ev).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = net.exit.stderr();
    for ev in [&elsewhere, &untagged, &kind_1] {
        assert!(!log.contains(&ev.id.to_hex()), "{} reached the exit", ev.id);
    }
    assert!(
        !log.contains("stream k1"),
        "a mis-tagged CONNECT opened a stream"
    );
    net.assert_fetched(fetch, "10m").await;
    net.assert_still_serving().await;
}

/// Oversized events (far beyond what NIP-44 can carry) are dropped with a
/// log line; the exit keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_events_are_dropped() {
    let mut net = Net::start(&[], &[]).await;
    let fetch = net.fetch_in_background("10m");
    let exit = net.exit_key();
    let peer = RawPeer::connect(net.relay_url(), exit).await;
    for size in [100 * 1024, 1024 * 1024] {
        let ev = peer.raw_event("QUFB".repeat(size / 4), vec![Tag::public_key(exit)]);
        peer.publish(&ev).await;
        let line = net.exit_logged(&[&ev.id.to_hex(), "dropped"]).await;
        eprintln!("{size} bytes: {line}");
        assert!(line.contains("cannot decrypt"), "{line}");
    }
    net.assert_fetched(fetch, "10m").await;
    net.assert_still_serving().await;
}

/// Messages of unknown types are ignored, with a debug line, both for no
/// stream and inside a live one, which goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_with_unknown_types_are_ignored() {
    let mut net = Net::start(&[], &[]).await;
    let fetch = net.fetch_in_background("10m");
    let exit = net.exit_key();
    let stranger = RawPeer::connect(net.relay_url(), exit).await;
    stranger
        .send(&Message::new(
            "no-such-stream",
            MessageType::Unknown("HELLO".into()),
        ))
        .await;
    net.exit_logged(&["no-such-stream", "HELLO for an unknown stream: dropped"])
        .await;
    // A reverse connect whose key is not a 36-character stream key.
    let mut reverse = Message::new("reverse", MessageType::ConnectReverse);
    reverse.entry_public_address = "127.0.0.1:9".into();
    stranger.send(&reverse).await;
    net.exit_logged(&["CONNECTR from", "key of 7 bytes: dropped"])
        .await;

    let mut s = PeerStream::open(RawPeer::connect(net.relay_url(), exit).await).await;
    let key = s.key();
    let mut odd = Message::new(key.clone(), MessageType::Unknown("FROB".into()));
    odd.seq = Some(1 << 50);
    odd.data = b"junk".to_vec();
    s.peer.send(&odd).await;
    net.exit_logged(&[&key, "FROB ignored"]).await;
    let body = b"still fine".to_vec();
    s.write_all(&echo_request(&body)).await;
    let response = s.read_then_finish(Duration::from_secs(90)).await;
    assert_eq!(s.ended, None);
    assert_eq!(body_of(&response), &body[..]);
    net.assert_fetched(fetch, "10m").await;
    net.assert_still_serving().await;
}

/// Data far outside the receive window is dropped (and logged) without
/// hurting the stream; an acknowledgement of bytes never sent aborts only
/// that stream, with `protocol-error` sent back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_far_outside_the_window_is_dropped_and_a_bogus_ack_aborts_only_its_stream() {
    let mut net = Net::start(&[], &[]).await;
    let fetch = net.fetch_in_background("10m");
    let exit = net.exit_key();
    let mut s = PeerStream::open(RawPeer::connect(net.relay_url(), exit).await).await;
    let key = s.key();
    for seq in [1u64 << 40, u64::MAX - 2, 1536 * 1024] {
        let mut m = Message::new(key.clone(), MessageType::Data);
        m.seq = Some(seq);
        m.data = b"far away".to_vec();
        s.peer.send(&m).await;
        net.exit_logged(&[&key, &format!("data at {seq}.."), "beyond the window"])
            .await;
    }
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    s.write_all(&echo_request(&body)).await;
    let response = s.read_then_finish(Duration::from_secs(90)).await;
    assert_eq!(s.ended, None, "aborted");
    assert_eq!(body_of(&response), &body[..], "bytes changed");

    let mut t = PeerStream::open(RawPeer::connect(net.relay_url(), exit).await).await;
    let key = t.key();
    let mut bogus = Message::new(key.clone(), MessageType::Ack);
    bogus.ack = Some(1_000_000_000);
    t.peer.send(&bogus).await;
    net.exit_logged(&[&key, "ack 1000000000 beyond what was sent"])
        .await;
    let deadline = Instant::now() + WAIT;
    while t.ended.is_none() && Instant::now() < deadline {
        t.step(Duration::from_millis(100)).await;
    }
    assert_eq!(t.ended, Some(ErrorReason::ProtocolError));
    net.assert_fetched(fetch, "10m").await;
    net.assert_still_serving().await;
}

/// A peer that never acknowledges gets at most one window of data, and
/// once it has answered none of the keepalive pings (about 19 s) the exit
/// aborts with `timeout` and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_acknowledges_is_given_one_window_then_dropped() {
    let mut net = Net::start(&[], &[]).await;
    let exit = net.exit_key();
    let mut peer = RawPeer::connect(net.relay_url(), exit).await;
    let key = uuid_like();
    let window = 64 * 1024;
    let mut connect = Message::new(key.clone(), MessageType::Connect);
    connect.version = Some(2);
    connect.window = Some(window);
    connect.destination = "x.nostr:80".into();
    peer.send(&connect).await;
    let answer = peer.recv(WAIT).await.expect("answer");
    assert_eq!(answer.kind, MessageType::Connected);
    let mut request = Message::new(key.clone(), MessageType::Data);
    request.seq = Some(0);
    request.ack = Some(0);
    request.window = Some(window);
    request.data = b"GET /10m HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    peer.send(&request).await;
    let start = Instant::now();
    let (mut highest, mut messages, mut error) = (0u64, 0usize, None);
    while start.elapsed() < Duration::from_secs(120) {
        let Some(m) = peer.recv(Duration::from_secs(5)).await else {
            continue;
        };
        messages += 1;
        if m.kind == MessageType::Data {
            highest = highest.max(m.seq.unwrap_or(0) + m.data.len() as u64);
        }
        if m.kind == MessageType::Error {
            error = m.reason;
            break;
        }
    }
    let (_, peak) = memory_kib(net.exit.pid().unwrap());
    eprintln!(
        "never-acking peer: {highest} bytes offered in {messages} messages, aborted after {:.0} s; exit peak {peak} KiB",
        start.elapsed().as_secs_f64()
    );
    assert!(
        highest <= window,
        "{highest} bytes past a window of {window}"
    );
    assert_eq!(error.as_deref(), Some("timeout"));
    // The keepalive gives it up first: it answers none of the pings.
    net.exit_logged(&[&key, "keepalive pings, aborting"]).await;
    net.assert_still_serving().await;
}

/// A relay that ignores filters hands every client every stream event, from
/// anyone to anyone. Two entries download through one exit at the same
/// time: each gets exactly its own bytes, and each saw (and dropped) the
/// other's traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_ignores_filters_leaks_nothing_into_a_stream() {
    use nws_tests::faulty::{FaultConfig, FaultyRelay};
    let backend = HttpBackend::start().await;
    let relay = NwsProcess::spawn(&["relay", "--listen", "127.0.0.1:0"]).await;
    let faulty = FaultyRelay::start(
        relay.value("relay"),
        FaultConfig {
            ignore_filters: true,
            ..FaultConfig::default()
        },
    )
    .await;
    let url = faulty.url();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("exit.key");
    let exit = NwsProcess::spawn(&[
        "exit",
        "--relay",
        &url,
        "--key-file",
        key.to_str().unwrap(),
        "--backend",
        &backend.host_port(),
    ])
    .await;
    let a = NwsProcess::entry(&[&url], false, &[]).await;
    let b = NwsProcess::entry(&[&url], false, &[]).await;
    let page = format!("http://{}/1m", exit.value("domain"));
    let args_a = ["--socks5-hostname", a.value("socks5"), &page];
    let args_b = ["--socks5-hostname", b.value("socks5"), &page];
    let (out_a, out_b) = tokio::join!(curl(&args_a), curl(&args_b));
    for (name, out) in [("a", &out_a), ("b", &out_b)] {
        assert_eq!(out.status, 0, "{name}: {out:?}");
        assert_eq!(sha256_hex(&out.stdout), backend.sha256("1m"), "{name}");
    }
    for (name, p) in [("a", &a), ("b", &b)] {
        assert!(
            p.stderr().contains("for unknown recipient"),
            "entry {name} never saw foreign traffic (filters not ignored?):\n{}",
            tail(&p.stderr(), 2000)
        );
    }
    assert!(
        !exit.stderr().contains("protocol-error"),
        "{}",
        tail(&exit.stderr(), 2000)
    );
}

// ---------------------------------------------------------------------------
// Resource limits
// ---------------------------------------------------------------------------

/// The entry serves at most `--max-connections` clients at once (both
/// ports together); one more waits for a free slot up to the handshake
/// timeout and then gets a clear refusal (SOCKS5 reply 1, HTTP 503), the
/// clients being served are not disturbed, and a freed slot is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_caps_client_connections_with_a_clear_refusal() {
    let mut net = Net::start(&[], &["--max-connections", "2"]).await;
    // Two clients hold both slots with open (idle) streams.
    let domain = net.domain().to_string();
    let (a, code_a) = socks5_open(net.socks(), &domain, 80).await;
    let (b, code_b) = socks5_open(net.socks(), &domain, 80).await;
    assert_eq!((code_a, code_b), (0, 0));
    let mut request = vec![5, 1, 0, 5, 1, 0, 3, domain.len() as u8];
    request.extend_from_slice(domain.as_bytes());
    request.extend_from_slice(&[0, 80]);
    let get = format!("GET http://{domain}/hello HTTP/1.1\r\nHost: {domain}\r\n\r\n");
    let long = Duration::from_secs(30);
    let (s, h) = tokio::join!(
        probe(net.socks(), &request, false, long),
        probe(net.http(), get.as_bytes(), false, long)
    );
    assert_eq!(
        s.reply,
        vec![5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
        "method accepted, then reply 1 (general failure)"
    );
    assert!(s.closed);
    assert_eq!(h.http_status(), Some(503), "{}", h.text());
    assert!(h.text().contains("too many connections"), "{}", h.text());
    // Both refusals are logged (the log is read from a pipe: wait for it).
    net.entry_logged(&["SOCKS5", "connections already served"])
        .await;
    net.entry_logged(&["HTTP proxy", "connections already served"])
        .await;
    assert_eq!(
        net.entry
            .stderr()
            .matches("connections already served")
            .count(),
        2,
        "{}",
        net.entry.stderr()
    );
    assert_eq!(
        net.backend.request_count(),
        0,
        "a refused client was served"
    );
    // The held clients leave: their slots serve again.
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(300)).await;
    net.assert_still_serving().await;
}

/// `--max-streams N`: stream N+1 is refused with `too-many-streams` (SOCKS5
/// reply 1, HTTP 502 naming the reason) and gets a slot once one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_caps_concurrent_streams_with_a_clear_refusal() {
    let net = Net::start(&["--max-streams", "3"], &[]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (sock, code) = socks5_open(net.socks(), net.domain(), 80).await;
        assert_eq!(code, 0);
        held.push(sock);
    }
    let (_, code) = socks5_open(net.socks(), net.domain(), 80).await;
    assert_eq!(code, 1, "SOCKS5 past the cap");
    net.exit_logged(&["refused (too-many-streams)"]).await;
    net.entry_logged(&["too-many-streams"]).await;
    let request = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", net.url("hello"));
    let p = probe(net.http(), request.as_bytes(), false, WAIT).await;
    assert_eq!(p.http_status(), Some(502), "{}", p.text());
    assert!(p.text().contains("too-many-streams"), "{}", p.text());
    // One closes: its slot comes back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = curl(&["--socks5-hostname", net.socks(), &net.url("hello")]).await;
        if out.stdout == net.backend.file("hello") {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {out:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `--max-streams-per-entry N`: an entry with a persistent key gets N
/// streams, the next one is refused with `too-many-streams`, while another
/// entry key is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_caps_concurrent_streams_per_entry_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("entry.key");
    let net = Net::start(
        &["--max-streams-per-entry", "2"],
        &["--key-file", key.to_str().unwrap()],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let (sock, code) = socks5_open(net.socks(), net.domain(), 80).await;
        assert_eq!(code, 0);
        held.push(sock);
    }
    let (_, code) = socks5_open(net.socks(), net.domain(), 80).await;
    assert_eq!(code, 1, "SOCKS5 past the per-key cap");
    let line = net.exit_logged(&["refused (too-many-streams)"]).await;
    let entry_key = PublicKey::parse(net.entry.value("entry-npub")).unwrap();
    assert!(line.contains(&entry_key.to_hex()), "{line}");
    // Another entry key is not affected.
    let other = Net::spawn_entry(net.relay_url(), &[]).await;
    let out = curl(&[
        "--socks5-hostname",
        other.value("socks5"),
        &net.url("hello"),
    ])
    .await;
    assert_eq!(out.stdout, net.backend.file("hello"), "{out:?}");
    drop(held);
}

/// 1,000 idle streams (two entries of 500, one exit): memory per stream
/// stays small; after the clients close, every socket is released again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_with_1000_idle_streams_and_all_is_freed_after_close() {
    let net = Net::start(&["--max-streams", "2000"], &[]).await;
    let entry2 = Net::spawn_entry(net.relay_url(), &[]).await;
    let exit_pid = net.exit.pid().unwrap();
    let entry_pids = [net.entry.pid().unwrap(), entry2.pid().unwrap()];
    // Warm up both entries (relay connections, first subscription).
    for socks in [net.socks(), entry2.value("socks5")] {
        let out = curl(&["--socks5-hostname", socks, &net.url("hello")]).await;
        assert_eq!(out.stdout, net.backend.file("hello"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fds_before = (fd_count(exit_pid), entry_pids.map(fd_count));
    let mem_before = (memory_kib(exit_pid), entry_pids.map(memory_kib));
    let start = Instant::now();
    let mut held = Vec::new();
    for socks in [net.socks().to_string(), entry2.value("socks5").to_string()] {
        for chunk in 0..10 {
            let mut opening = Vec::new();
            for _ in 0..50 {
                let (socks, domain) = (socks.clone(), net.domain().to_string());
                opening.push(tokio::spawn(async move {
                    socks5_open(&socks, &domain, 80).await
                }));
            }
            for o in opening {
                let (sock, code) = o.await.unwrap();
                assert_eq!(code, 0, "stream refused (batch {chunk})");
                held.push(sock);
            }
        }
    }
    let opened_in = start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mem_open = (memory_kib(exit_pid), entry_pids.map(memory_kib));
    let fds_open = (fd_count(exit_pid), entry_pids.map(fd_count));
    let grow = |a: u64, b: u64| b.saturating_sub(a);
    let exit_growth = grow(mem_before.0 .0, mem_open.0 .0);
    let entry_growth = [0, 1].map(|i| grow(mem_before.1[i].0, mem_open.1[i].0));
    eprintln!(
        "1000 idle streams opened in {:.1} s; exit RSS {} -> {} KiB (peak {} KiB, {} KiB per stream); \
         entries RSS {:?} -> {:?} KiB (peaks {:?}); fds exit {} -> {}, entries {:?} -> {:?}",
        opened_in.as_secs_f64(),
        mem_before.0 .0,
        mem_open.0 .0,
        mem_open.0 .1,
        exit_growth / 1000,
        mem_before.1.map(|m| m.0),
        mem_open.1.map(|m| m.0),
        mem_open.1.map(|m| m.1),
        fds_before.0,
        fds_open.0,
        fds_before.1,
        fds_open.1,
    );
    assert!(
        fds_open.0 >= fds_before.0 + 1000,
        "exit does not hold 1000 backend sockets"
    );
    assert!(
        exit_growth < 200 * 1024,
        "exit grew {exit_growth} KiB for 1000 idle streams"
    );
    for g in entry_growth {
        assert!(g < 150 * 1024, "an entry grew {g} KiB for 500 idle streams");
    }
    // Close every client: every socket is released on both sides.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = (fd_count(exit_pid), entry_pids.map(fd_count));
        if now.0 <= fds_before.0 + 2
            && now.1[0] <= fds_before.1[0] + 2
            && now.1[1] <= fds_before.1[1] + 2
        {
            eprintln!("after close: fds exit {}, entries {:?}", now.0, now.1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sockets not released: {now:?} vs {fds_before:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A TCP backend that reads and discards everything (or, with `read` off,
/// accepts and never reads).
async fn sink_backend(read: bool) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            if read {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            } else {
                held.push(sock);
            }
        }
    });
    (addr, task)
}

/// Floods one stream with 80 MiB of data events, ignoring the window;
/// returns the exit's resident memory before and its peak after, in KiB.
async fn flood(net: &Net, events: usize) -> (u64, u64) {
    let exit_pid = net.exit.pid().unwrap();
    let s = PeerStream::open(RawPeer::connect(net.relay_url(), net.exit_key()).await).await;
    let key = s.key();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, _) = memory_kib(exit_pid);
    let chunk = 40 * 1024;
    let mut seq = 0u64;
    for _ in 0..events {
        let mut m = Message::new(key.clone(), MessageType::Data);
        m.seq = Some(seq);
        m.ack = Some(0);
        m.data = vec![0x5A; chunk];
        s.peer.send(&m).await;
        seq += chunk as u64;
    }
    // Let the exit work through what it was sent.
    let mut last = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss, _) = memory_kib(exit_pid);
        if rss == last {
            break;
        }
        last = rss;
    }
    let (_, peak) = memory_kib(exit_pid);
    (before, peak)
}

/// A peer floods a stream with data far past its window while the backend
/// reads: the exit drops what is outside the window; its memory stays
/// bounded (peak printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_when_a_peer_floods_data() {
    let (addr, _sink) = sink_backend(true).await;
    let mut net = Net::start_with(HttpBackend::start().await, &addr, &[], &[]).await;
    let (before, peak) = flood(&net, 2000).await;
    eprintln!(
        "flood of 2000 x 40 KiB events, backend reading: exit RSS {before} KiB, peak {peak} KiB (+{} KiB)",
        peak.saturating_sub(before)
    );
    assert!(
        peak.saturating_sub(before) < 64 * 1024,
        "exit grew {} KiB",
        peak - before
    );
    assert!(alive(net.exit.pid()), "exit died");
    let _ = &mut net;
}

/// The same flood toward a backend that has stopped reading.
///
/// Was a bug: the exit's driver awaited the backend write while the
/// stream's unbounded message channel kept filling. Now delivery waits in
/// the driver's `select!`, undelivered bytes shrink the advertised window,
/// data past it is dropped, and inboxes are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_when_a_peer_floods_a_stream_whose_backend_stalls() {
    let (addr, _sink) = sink_backend(false).await;
    let net = Net::start_with(HttpBackend::start().await, &addr, &[], &[]).await;
    let (before, peak) = flood(&net, 2000).await;
    eprintln!(
        "flood of 2000 x 40 KiB events, backend stalled: exit RSS {before} KiB, peak {peak} KiB (+{} KiB)",
        peak.saturating_sub(before)
    );
    assert!(
        peak.saturating_sub(before) < 64 * 1024,
        "exit grew {} KiB",
        peak - before
    );
}

// ---------------------------------------------------------------------------
// In-process: stream state counted before and after
// ---------------------------------------------------------------------------

mod in_process {
    use super::*;
    use nws_core::entry::{EntryConfig, EntryProxy};
    use nws_core::exit::{ExitConfig, ExitNode};
    use nws_relay::EmbeddedRelay;

    pub struct Local {
        pub relay: EmbeddedRelay,
        pub exit: ExitNode,
        pub proxy: EntryProxy,
        pub domain: String,
    }

    /// Relay, exit and entry in this process with `secs`-second idle
    /// timeouts and linger.
    pub async fn start(backend: &str, secs: u64) -> Local {
        let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let relays = vec![relay.url().clone()];
        let stream = StreamConfig {
            give_up_after: Duration::from_secs(secs),
            ..StreamConfig::default()
        };
        let mut ec = ExitConfig::new(relays.clone(), Keys::generate(), backend);
        ec.idle_timeout = Duration::from_secs(secs);
        ec.stream = stream.clone();
        let exit = ExitNode::start(ec).await.unwrap();
        let domain = exit.nostr_domain().unwrap();
        let mut pc = EntryConfig::new(relays);
        pc.socks_listen = Some("127.0.0.1:0".parse().unwrap());
        pc.idle_timeout = Duration::from_secs(secs);
        pc.stream = stream;
        let proxy = EntryProxy::start(pc).await.unwrap();
        Local {
            relay,
            exit,
            proxy,
            domain,
        }
    }

    pub fn open_counts(l: &Local) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            l.exit.stats().streams_open.load(Relaxed),
            l.proxy.entry().stats().streams_open.load(Relaxed),
        )
    }

    pub fn alive_tasks() -> usize {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    }

    /// Waits until `f` holds, up to `secs` seconds.
    pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Streams counted open on both sides (and their tasks) go back to the
/// count before, after an idle timeout and after a normal close plus linger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_is_freed_after_idle_timeout_and_after_close() {
    use in_process::*;
    let backend = HttpBackend::start().await;
    let l = start(&backend.host_port(), 2).await;
    let socks = l.proxy.socks_addr().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tasks_before = alive_tasks();
    assert_eq!(open_counts(&l), (0, 0));

    // 20 idle streams: aborted by the idle timeout on both sides.
    let mut held = Vec::new();
    for _ in 0..20 {
        let (sock, code) = socks5_open(&socks, &l.domain, 80).await;
        assert_eq!(code, 0);
        held.push(sock);
    }
    // The entry counts a stream once its client has the reply: a moment later.
    eventually(10, "20 streams not counted open", || {
        open_counts(&l) == (20, 20)
    })
    .await;
    let tasks_open = alive_tasks();
    eventually(30, "idle streams not freed", || open_counts(&l) == (0, 0)).await;
    for sock in &mut held {
        let (_, closed) = read_until_closed(sock, Instant::now() + WAIT).await;
        assert!(closed, "client socket of an idled-out stream left open");
    }
    drop(held);
    eventually(30, "tasks of idled-out streams remain", || {
        alive_tasks() <= tasks_before + 2
    })
    .await;
    let tasks_after_idle = alive_tasks();

    // 20 streams that finish normally: counted closed at once, state gone
    // after the linger.
    for _ in 0..20 {
        let (mut sock, code) = socks5_open(&socks, &l.domain, 80).await;
        assert_eq!(code, 0);
        sock.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (reply, closed) = read_until_closed(&mut sock, Instant::now() + WAIT).await;
        assert!(closed && body_of(&reply) == backend.file("hello"));
    }
    eventually(10, "closed streams still counted", || {
        open_counts(&l) == (0, 0)
    })
    .await;
    eventually(30, "lingering state not freed", || {
        alive_tasks() <= tasks_before + 2
    })
    .await;
    eprintln!(
        "tasks: {tasks_before} before, {tasks_open} with 20 streams, {tasks_after_idle} after idle timeout, {} after close and linger",
        alive_tasks()
    );
    l.proxy.stop().await;
    l.exit.stop().await;
    drop(l.relay);
}

/// A backend that stops reading must not hold a stream (and an exit slot)
/// forever: the idle timeout and the peer's give-up must still end it.
///
/// Was a bug: `driver::pump` awaited `write_all` to the local socket outside
/// its `select!`, so while the backend did not read, neither the idle timer
/// nor the peer's `ERROR` was seen and any client could pin `max_streams`
/// streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_reading_does_not_pin_a_stream_forever() {
    use in_process::*;
    let (addr, _sink) = sink_backend(false).await;
    let l = start(&addr, 2).await;
    let socks = l.proxy.socks_addr().unwrap().to_string();
    let (mut sock, code) = socks5_open(&socks, &l.domain, 80).await;
    assert_eq!(code, 0);
    // Far more than the kernel buffers between exit and backend hold.
    let chunk = vec![0u8; 1024 * 1024];
    let writer = tokio::spawn(async move {
        for _ in 0..64 {
            if tokio::time::timeout(Duration::from_secs(5), sock.write_all(&chunk))
                .await
                .is_err()
            {
                break;
            }
        }
        sock
    });
    let _sock = writer.await.unwrap();
    // 2 s idle timeout, 2 s give-up: 20 s is plenty for both sides.
    eventually(20, "the exit still counts the stalled stream open", || {
        open_counts(&l).0 == 0
    })
    .await;
}

// ---------------------------------------------------------------------------
// Fuzzer findings (fuzz/regressions/), as plain tests
// ---------------------------------------------------------------------------

/// An `Aborted` output ends a stream: nothing may follow it. Found by the
/// `engine` fuzz target (`fuzz/regressions/engine/`): `handle_message` went
/// on with a message whose bogus `ack` had just aborted the stream.
#[test]
fn nothing_follows_an_abort_for_a_bogus_ack() {
    let t0 = Instant::now();
    for kind in [MessageType::Close, MessageType::Data] {
        let mut entry = Stream::open(
            StreamConfig::default(),
            "k".into(),
            "x:80".into(),
            Dialect::V2,
            t0,
        );
        while entry.poll_output().is_some() {}
        let mut m = Message::new("k", kind.clone());
        m.seq = Some(0);
        m.ack = Some(1000);
        if kind == MessageType::Data {
            m.data = b"after the end".to_vec();
        }
        entry.handle_message(m, t0).unwrap();
        let outs: Vec<EngineOutput> = std::iter::from_fn(|| entry.poll_output()).collect();
        let end = outs
            .iter()
            .position(|o| matches!(o, EngineOutput::Aborted(_)))
            .unwrap_or_else(|| panic!("{kind}: no abort in {outs:?}"));
        assert!(
            outs[end + 1..].is_empty(),
            "{kind}: outputs after Aborted: {:?}",
            &outs[end + 1..]
        );
    }
}

/// A `.nostr` name that decodes re-encodes to a name for the same relays.
/// Found by the `names` fuzz target (`fuzz/regressions/names/`): a relay
/// label whose URL normalizes to a path ending in `/` (`ws://o/a/.` -> path
/// `/a/`) used to lose that slash when encoded again.
#[test]
fn a_decoded_relay_url_survives_encoding() {
    use nws_core::names::{decode_nostr_domain, encode_nostr_domain};
    let pk = Keys::generate().public_key();
    let label = data_encoding::BASE32HEX_NOPAD
        .encode(b"ws://o/a/.")
        .to_lowercase();
    let key = encode_nostr_domain(&pk, &[]).unwrap();
    let name = format!("{label}.{key}");
    let first = decode_nostr_domain(&name).unwrap();
    assert_eq!(first.relays.len(), 1, "{name}");
    let again = decode_nostr_domain(&encode_nostr_domain(&pk, &first.relays).unwrap()).unwrap();
    assert_eq!(again, first, "{:?} became {:?}", first.relays, again.relays);
}

/// A backend that ignores `Connection: close` (keeps the connection open
/// after its answer) cannot receive a second request from the same client
/// connection: the entry forwards one request per connection and resets the
/// client when it sends another, which may name another host (here one the
/// WebView listener must refuse). The client's retry on a new connection is
/// routed on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_forwarded_connection_carries_one_request_only() {
    use nws_core::entry::{EntryConfig, EntryProxy};
    use nws_core::exit::{ExitConfig, ExitNode};
    use nws_relay::EmbeddedRelay;
    use std::sync::{Arc, Mutex};

    // The backend: answers each request head it sees, never closes, and
    // records every byte it receives.
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap().to_string();
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = backend.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });

    let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let relays = vec![relay.url().clone()];
    let exit = ExitNode::start(ExitConfig::new(
        relays.clone(),
        Keys::generate(),
        &backend_addr,
    ))
    .await
    .unwrap();
    let domain = exit.nostr_domain().unwrap();
    let mut pc = EntryConfig::new(relays);
    pc.webview_listen = Some("127.0.0.1:0".parse().unwrap());
    let proxy = EntryProxy::start(pc).await.unwrap();
    let webview = proxy.webview_addr().unwrap();

    let mut client = TcpStream::connect(webview).await.unwrap();
    let first = format!("GET http://{domain}/first HTTP/1.1\r\nHost: {domain}\r\n\r\n");
    client.write_all(first.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok") {
        let n = tokio::time::timeout(Duration::from_secs(20), client.read(&mut buf))
            .await
            .expect("the first answer in time")
            .unwrap();
        assert!(n > 0, "closed before the first answer");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{answer:?}");

    // The same connection, kept alive by the backend, now asks for a host
    // that the WebView listener refuses.
    client
        .write_all(b"GET http://example.org/second HTTP/1.1\r\nHost: example.org\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was not ended");
    assert!(rest.is_empty(), "a second answer came: {rest:?}");
    let got = String::from_utf8_lossy(&received.lock().unwrap()).to_string();
    assert!(got.contains("GET /first HTTP/1.1"), "{got}");
    assert!(
        !got.contains("second"),
        "the second request reached the backend: {got}"
    );
    assert!(!got.contains("example.org"), "{got}");

    // Retried on a new connection, it is routed (here: refused) on its own.
    let mut retry = TcpStream::connect(webview).await.unwrap();
    retry
        .write_all(b"GET http://example.org/second HTTP/1.1\r\nHost: example.org\r\n\r\n")
        .await
        .unwrap();
    let (refused, _) =
        read_until_closed(&mut retry, Instant::now() + Duration::from_secs(10)).await;
    assert!(
        refused.starts_with(b"HTTP/1.1 403"),
        "{:?}",
        String::from_utf8_lossy(&refused)
    );
    proxy.stop().await;
    exit.stop().await;
    drop(relay);
}
