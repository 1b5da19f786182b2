//! Several `nws exit` processes sharing one key file on one relay
//! (`docs/PROTOCOL.md`, section 8): streams are spread over the live
//! instances by rendezvous hashing, each served exactly once; an instance
//! killed mid-download fails only its own streams, and new streams go to
//! the others; an instance that joins breaks nothing and gets new streams.
//! Also the metrics endpoint (`--metrics-listen`) of exit and entry.
//!
//! Each exit stands in front of its own backend, which names itself in
//! every answer, so the client sees which instance served a stream.
//! Real processes, 127.0.0.1 only; bounds are correctness bounds (a failed
//! download must fail within 10 s), not speed measurements.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nws_tests::process::NwsProcess;
use nws_tests::{http_client_via, pseudo_random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes of one slow download.
const SLOW_LEN: usize = 120 * 8192;
/// A slow download sends 8 KiB every this often (about 12 s in all).
const SLOW_PAUSE: Duration = Duration::from_millis(100);

/// A backend that names itself: `GET /s/<id>` answers `instance <name>
/// <path>`; `GET /slow/<id>` answers [`SLOW_LEN`] pseudo-random bytes
/// slowly, with `X-Instance: <name>`. Requests are counted per path.
struct Backend {
    addr: SocketAddr,
    per_path: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(name: String) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let per_path = Arc::new(Mutex::new(HashMap::new()));
        let counts = per_path.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                let counts = counts.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, &name, &counts).await;
                });
            }
        });
        Backend {
            addr,
            per_path,
            task,
        }
    }

    fn count(&self, path: &str) -> usize {
        self.per_path
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn paths(&self) -> HashMap<String, usize> {
        self.per_path.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut sock: TcpStream,
    name: &str,
    counts: &Mutex<HashMap<String, usize>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await?;
        if n == 0 || head.len() > 65536 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    *counts.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
    if path.starts_with("/slow/") {
        let body = slow_body(&path);
        sock.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Instance: {name}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
        for chunk in body.chunks(8192) {
            sock.write_all(chunk).await?;
            tokio::time::sleep(SLOW_PAUSE).await;
        }
    } else {
        let body = format!("instance {name} {path}\n");
        sock.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Instance: {name}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    }
    sock.shutdown().await
}

fn slow_body(path: &str) -> Vec<u8> {
    let seed = path
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    pseudo_random_bytes(SLOW_LEN, seed)
}

/// GETs `http://host:port/metrics` and returns the body.
async fn scrape(addr: &str) -> String {
    let addr = addr
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut s = TcpStream::connect(addr).await.expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "metrics answer: {text}");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of the sample whose name and labels contain all of `parts`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            (series == name || series.starts_with(&format!("{name}{{")))
                && labels.iter().all(|p| series.contains(p))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{text}"))
}

/// A relay, one entry, and exit instances sharing one key.
struct Cluster {
    relay: String,
    key: std::path::PathBuf,
    exits: Vec<Option<NwsProcess>>,
    backends: Vec<Backend>,
    entry: NwsProcess,
    domain: String,
    _relay: NwsProcess,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(instances: usize) -> Cluster {
        let relay_p = NwsProcess::spawn(&["relay", "--listen", "127.0.0.1:0"]).await;
        let relay = relay_p.value("relay").to_string();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("exit.key");
        let entry = NwsProcess::entry(&[&relay], true, &[]).await;
        let mut c = Cluster {
            relay,
            key,
            exits: Vec::new(),
            backends: Vec::new(),
            entry,
            domain: String::new(),
            _relay: relay_p,
            _dir: dir,
        };
        for _ in 0..instances {
            c.add_exit().await;
        }
        c.wait_active(instances).await;
        c
    }

    /// Starts one more exit instance, `i<n>`, with a backend of its own.
    async fn add_exit(&mut self) -> usize {
        let n = self.exits.len();
        let name = format!("i{n}");
        let backend = Backend::start(name.clone()).await;
        let addr = backend.addr.to_string();
        let exit = NwsProcess::spawn(&[
            "exit",
            "--relay",
            &self.relay,
            "--key-file",
            self.key.to_str().unwrap(),
            "--backend",
            &addr,
            "--instance",
            &name,
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .await;
        assert_eq!(exit.value("instance"), name);
        self.domain = exit.value("domain").to_string();
        self.exits.push(Some(exit));
        self.backends.push(backend);
        n
    }

    /// Waits (at most 30 s) until every running instance sees `n` active.
    async fn wait_active(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut all = true;
            for e in self.exits.iter().flatten() {
                let m = scrape(e.value("metrics")).await;
                all &= sample(&m, "nws_exit_instances_active", &[]) as usize == n;
            }
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "instances never all active");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn client(&self) -> reqwest::Client {
        http_client_via(&format!("http://{}", self.entry.value("http")))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.domain)
    }
}

/// Fetches `/s/<tag>-<i>` for `count` streams, 30 at a time; returns the
/// responder of each (`None`: failed) and how long each took.
async fn small_streams(
    c: &Cluster,
    tag: &str,
    count: usize,
) -> Vec<(String, Option<String>, Duration)> {
    let client = c.client();
    futures_util::stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            let path = format!("/s/{tag}-{i}");
            let url = c.url(&path);
            async move {
                let t = Instant::now();
                let got = async {
                    let r = client.get(&url).send().await.ok()?;
                    if !r.status().is_success() {
                        return None;
                    }
                    let body = r.text().await.ok()?;
                    let mut words = body.split_whitespace();
                    (words.next() == Some("instance")).then_some(())?;
                    let who = words.next()?.to_string();
                    (words.next() == Some(path.as_str())).then_some(who)
                }
                .await;
                (path, got, t.elapsed())
            }
        })
        .buffer_unordered(30)
        .collect()
        .await
}

/// Checks that each path of `results` reached exactly one backend once,
/// the one that answered it.
fn served_once(c: &Cluster, results: &[(String, Option<String>, Duration)]) {
    for (path, who, _) in results {
        let dials: Vec<(usize, usize)> = c
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b.count(path)))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(dials.len(), 1, "{path} dialled at {dials:?}");
        assert_eq!(dials[0].1, 1, "{path} dialled {} times", dials[0].1);
        if let Some(who) = who {
            assert_eq!(*who, format!("i{}", dials[0].0), "{path}");
        }
    }
}

/// One slow download: its responder (from `X-Instance`) once the headers
/// are in, then its outcome (`Ok` intact, `Err` and when it failed).
struct Download {
    who: String,
    done: tokio::task::JoinHandle<Result<(), (Instant, String)>>,
}

async fn start_downloads(c: &Cluster, tag: &str, count: usize) -> Vec<Download> {
    let client = c.client();
    let mut started = Vec::new();
    for i in 0..count {
        let client = client.clone();
        let path = format!("/slow/{tag}-{i}");
        let url = c.url(&path);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = tokio::spawn(async move {
            let mut resp = match client.get(&url).send().await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(String::new());
                    return Err((Instant::now(), format!("no response: {e}")));
                }
            };
            let who = resp
                .headers()
                .get("x-instance")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let _ = tx.send(who);
            let mut body = Vec::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(b)) => body.extend_from_slice(&b),
                    Ok(None) => break,
                    Err(e) => {
                        return Err((Instant::now(), format!("after {} bytes: {e}", body.len())))
                    }
                }
            }
            if body == slow_body(&path) {
                Ok(())
            } else {
                Err((Instant::now(), format!("{} bytes, not intact", body.len())))
            }
        });
        started.push((rx, done));
    }
    let mut downloads = Vec::new();
    for (rx, done) in started {
        let who = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("download headers within 30 s")
            .unwrap_or_default();
        assert!(!who.is_empty(), "a download did not start");
        downloads.push(Download { who, done });
    }
    downloads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_split_300_streams_and_serve_each_once() {
    let c = Cluster::start(3).await;
    let results = small_streams(&c, "split", 300).await;
    let mut per: HashMap<String, usize> = HashMap::new();
    for (path, who, _) in &results {
        let who = who.clone().unwrap_or_else(|| panic!("{path} failed"));
        *per.entry(who).or_insert(0) += 1;
    }
    println!("split over 3 instances: {per:?}");
    for i in 0..3 {
        let n = per.get(&format!("i{i}")).copied().unwrap_or(0);
        assert!((75..=125).contains(&n), "instance i{i} served {n}: {per:?}");
    }
    served_once(&c, &results);
    let total: usize = c
        .backends
        .iter()
        .map(|b| b.paths().values().sum::<usize>())
        .sum();
    assert_eq!(total, 300, "backend requests");
    // Each exit counted exactly the streams its backend saw.
    for (i, e) in c.exits.iter().enumerate() {
        let m = scrape(e.as_ref().unwrap().value("metrics")).await;
        let streams = sample(&m, "nws_streams_total", &[]) as usize;
        assert_eq!(streams, per[&format!("i{i}")], "exit i{i} streams_total");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instance_fails_only_its_streams_and_the_others_take_new_ones() {
    let mut c = Cluster::start(3).await;
    let downloads = start_downloads(&c, "kill", 30).await;
    let victim = "i1";
    let victims = downloads.iter().filter(|d| d.who == victim).count();
    assert!(victims > 0, "no download on {victim}");
    let killed_at = Instant::now();
    c.exits[1].as_mut().unwrap().kill().await;
    c.exits[1] = None;
    // 100 new streams, started after the kill.
    let results = small_streams(&c, "after-kill", 100).await;
    let mut slowest = Duration::ZERO;
    let mut fastest = Duration::MAX;
    let gap = results
        .iter()
        .filter(|(_, _, took)| *took > Duration::from_secs(1))
        .count();
    for (path, who, took) in &results {
        fastest = fastest.min(*took);
        let who = who
            .clone()
            .unwrap_or_else(|| panic!("{path} failed after the kill"));
        assert_ne!(who, victim, "{path} served by the killed instance");
        slowest = slowest.max(*took);
    }
    served_once(&c, &results);
    let mut failed_after = Vec::new();
    for d in downloads {
        let outcome = d.done.await.unwrap();
        if d.who == victim {
            let (when, why) = outcome.expect_err("a download of the killed instance completed");
            let after = when.duration_since(killed_at);
            assert!(
                after <= Duration::from_secs(10),
                "failed {after:?} after the kill ({why})"
            );
            failed_after.push(after);
        } else if let Err((_, why)) = outcome {
            panic!("a download of {} failed: {why}", d.who);
        }
    }
    failed_after.sort();
    println!(
        "kill: {victims} downloads of the killed instance failed after {failed_after:?}; \
         100 new streams all served by the others: first after {fastest:?}, slowest {slowest:?}, \
         {gap} took over 1 s (hashed to the killed instance, served after its lapse)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_instance_breaks_no_download_and_gets_new_streams() {
    let mut c = Cluster::start(3).await;
    let downloads = start_downloads(&c, "join", 30).await;
    let joined_at = Instant::now();
    let n = c.add_exit().await;
    c.wait_active(4).await;
    let active_after = joined_at.elapsed();
    let results = small_streams(&c, "after-join", 100).await;
    let mut per: HashMap<String, usize> = HashMap::new();
    for (path, who, _) in &results {
        let who = who
            .clone()
            .unwrap_or_else(|| panic!("{path} failed after the join"));
        *per.entry(who).or_insert(0) += 1;
    }
    served_once(&c, &results);
    for d in downloads {
        assert_ne!(d.who, format!("i{n}"));
        if let Err((_, why)) = d.done.await.unwrap() {
            panic!("a download of {} broke during the join: {why}", d.who);
        }
    }
    // No slow download reached the joiner's backend.
    assert!(c.backends[n]
        .paths()
        .keys()
        .all(|p| !p.starts_with("/slow/")));
    let joiner = per.get(&format!("i{n}")).copied().unwrap_or(0);
    println!("join: active on all after {active_after:?}; 100 new streams: {per:?}");
    assert!(joiner > 0, "no new stream reached the joiner: {per:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_a_download_on_exit_and_entry() {
    let relay_p = NwsProcess::spawn(&["relay", "--listen", "127.0.0.1:0"]).await;
    let relay = relay_p.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("exit.key");
    let backend = Backend::start("solo".into()).await;
    let addr = backend.addr.to_string();
    let exit = NwsProcess::spawn(&[
        "exit",
        "--relay",
        &relay,
        "--key-file",
        key.to_str().unwrap(),
        "--backend",
        &addr,
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .await;
    let entry = NwsProcess::entry(&[&relay], true, &["--metrics-listen", "127.0.0.1:0"]).await;
    let (em, nm) = (exit.value("metrics"), entry.value("metrics"));
    // Relays connect in the background after `ready`.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (before_exit, before_entry) = loop {
        let (x, n) = (scrape(em).await, scrape(nm).await);
        let up = |t: &str| sample(t, "nws_relays_connected", &[]) == 1.0;
        if (up(&x) && up(&n)) || Instant::now() > deadline {
            break (x, n);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(sample(&before_exit, "nws_exit_instances_live", &[]), 1.0);
    assert_eq!(sample(&before_exit, "nws_relays_connected", &[]), 1.0);
    assert_eq!(sample(&before_exit, "nws_relays_known", &[]), 1.0);
    assert_eq!(sample(&before_entry, "nws_relays_connected", &[]), 1.0);

    let t0 = Instant::now();
    eprintln!("[metrics] started nodes");
    let path = "/slow/metrics";
    let client = http_client_via(&format!("http://{}", entry.value("http")));
    let url = format!("http://{}{path}", exit.value("domain"));
    let body = client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.as_ref(), slow_body(path).as_slice());
    assert_eq!(backend.count(path), 1);
    eprintln!("[metrics] downloaded after {:?}", t0.elapsed());
    // Counters move when the stream has ended on both sides.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (after_exit, after_entry) = loop {
        let (x, n) = (scrape(em).await, scrape(nm).await);
        if sample(&x, "nws_streams_open", &[]) == 0.0 && sample(&n, "nws_streams_open", &[]) == 0.0
        {
            break (x, n);
        }
        assert!(Instant::now() < deadline, "streams never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("[metrics] closed after {:?}", t0.elapsed());
    let delta = |a: &str, b: &str, name: &str, labels: &[&str]| {
        sample(a, name, labels) - sample(b, name, labels)
    };
    let size = SLOW_LEN as f64;
    assert_eq!(
        delta(&after_exit, &before_exit, "nws_streams_total", &[]),
        1.0
    );
    assert_eq!(
        delta(&after_entry, &before_entry, "nws_streams_total", &[]),
        1.0
    );
    let sent = delta(
        &after_exit,
        &before_exit,
        "nws_stream_bytes_total",
        &["direction=\"sent\""],
    );
    assert!(sent >= size, "exit sent {sent} bytes for {size}");
    let got = delta(
        &after_entry,
        &before_entry,
        "nws_stream_bytes_total",
        &["direction=\"received\""],
    );
    assert!(got >= size, "entry received {got} bytes for {size}");
    let up = delta(
        &after_entry,
        &before_entry,
        "nws_stream_bytes_total",
        &["direction=\"sent\""],
    );
    assert!(up > 0.0 && up < size, "entry sent {up} bytes (the request)");
    // At least one event per 40 KiB of data, and acknowledgements back.
    let events = delta(
        &after_exit,
        &before_exit,
        "nws_stream_events_total",
        &["direction=\"sent\""],
    );
    assert!(
        events >= (SLOW_LEN / 40_448) as f64,
        "exit sent {events} events"
    );
    let acks = delta(
        &after_exit,
        &before_exit,
        "nws_stream_events_total",
        &["direction=\"received\""],
    );
    assert!(acks >= 2.0, "exit received {acks} events");
    // The exit's published events also count its heartbeats.
    let arrived = delta(
        &after_entry,
        &before_entry,
        "nws_stream_events_total",
        &["direction=\"received\""],
    );
    assert!(
        arrived >= (SLOW_LEN / 40_448) as f64 && arrived <= events,
        "entry received {arrived}, exit sent {events}"
    );

    // A host that is not an NWS name is refused by the entry, and counted.
    let refused = client.get("http://example.org/").send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let counted = scrape(nm).await;
    assert_eq!(
        sample(&counted, "nws_refusals_total", &["reason=\"not-nws\""]),
        1.0,
        "{counted}"
    );

    // Only GET /metrics.
    eprintln!("[metrics] deltas checked after {:?}", t0.elapsed());
    let raw = |req: &'static str| async move {
        let mut s = TcpStream::connect(
            em.trim_start_matches("http://")
                .trim_end_matches("/metrics"),
        )
        .await
        .unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).to_string()
    };
    assert!(
        raw("GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404")
    );
    assert!(raw(
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .await
    .starts_with("HTTP/1.1 405"));
    eprintln!("[metrics] all done after {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_heartbeats_are_logged_and_disturb_nothing() {
    use futures_util::SinkExt;
    use nostr::{EventBuilder, Keys, Kind};
    use tokio_tungstenite::tungstenite::Message;

    let c = Cluster::start(1).await;
    let secret = std::fs::read_to_string(&c.key).unwrap();
    let exit_keys = Keys::parse(secret.trim()).unwrap();
    let kind = Kind::Custom(nws_core::exit::instances::KIND_EXIT_HEARTBEAT);
    let bad_json = nostr::nips::nip44::encrypt(
        exit_keys.secret_key(),
        &exit_keys.public_key(),
        "{\"instance\":\"../x\",\"active_from\":1}",
        nostr::nips::nip44::Version::V2,
    )
    .unwrap();
    let events = [
        // Signed by the exit key, content that does not decrypt.
        EventBuilder::new(kind, "not nip44").sign_with_keys(&exit_keys),
        // Decrypts, but the instance id is not allowed.
        EventBuilder::new(kind, bad_json).sign_with_keys(&exit_keys),
        // Another key's heartbeat (the relay's filter should not even pass it).
        EventBuilder::new(kind, "x").sign_with_keys(&Keys::generate()),
    ];
    let (mut ws, _) = tokio_tungstenite::connect_async(c.relay.as_str())
        .await
        .unwrap();
    for ev in events {
        let ev = ev.unwrap();
        let msg = serde_json::json!(["EVENT", ev]).to_string();
        ws.send(Message::text(msg)).await.unwrap();
    }
    let exit = c.exits[0].as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while exit.stderr().matches("heartbeat event").count() < 2 {
        assert!(Instant::now() < deadline, "no log line:\n{}", exit.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = exit.stderr();
    assert!(log.contains("does not decrypt"), "{log}");
    assert!(log.contains("instance id"), "{log}");
    // Still alone, still serving everything.
    let m = scrape(exit.value("metrics")).await;
    assert_eq!(sample(&m, "nws_exit_instances_live", &[]), 1.0);
    let results = small_streams(&c, "after-junk", 10).await;
    assert!(results
        .iter()
        .all(|(_, who, _)| who.as_deref() == Some("i0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_stopped_with_sigterm_leaves_at_once() {
    let mut c = Cluster::start(2).await;
    let stopping = c.exits[1].take().unwrap();
    let stopped_at = Instant::now();
    assert_eq!(stopping.terminate().await, Some(0));
    // Its last heartbeat says it leaves: the other drops it well before
    // the 6 s lapse.
    let survivor = c.exits[0].as_ref().unwrap();
    loop {
        let m = scrape(survivor.value("metrics")).await;
        if sample(&m, "nws_exit_instances_live", &[]) == 1.0 {
            break;
        }
        assert!(
            stopped_at.elapsed() < nws_core::exit::instances::LAPSE,
            "the stopped instance was not dropped before its lapse"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "sigterm: the survivor dropped the instance {:?} after the stop began",
        stopped_at.elapsed()
    );
    let results = small_streams(&c, "after-stop", 30).await;
    assert!(results
        .iter()
        .all(|(_, who, _)| who.as_deref() == Some("i0")));
}
