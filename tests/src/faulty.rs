//! [`FaultyRelay`]: a fault-injecting websocket middlebox between Nostr clients and a
//! real upstream relay.
//!
//! Every client connection accepted on `127.0.0.1:PORT` gets its own upstream
//! connection; frames are copied both ways. NIP-01 `EVENT` messages are inspected
//! (client→relay `["EVENT", {..}]`, relay→client `["EVENT", "<subid>", {..}]`) and may
//! be dropped or rejected according to a [`FaultConfig`]; every other frame (`REQ`,
//! `CLOSE`, `OK`, `EOSE`, `NOTICE`, binary, ping, pong, close) passes through
//! unchanged. When either side closes or fails, the other side is closed too.
//!
//! Decisions are drawn from seeded [`StdRng`]s, one for each direction, so a run that
//! sends the same events in the same order drops the same ones: the n-th `EVENT` seen
//! in a direction (counted across all connections since the last
//! [`FaultyRelay::set_config`]) uses the n-th draw of that direction's RNG.
//!
//! ```no_run
//! # async fn demo(upstream: &str) {
//! use nws_tests::faulty::{FaultConfig, FaultyRelay};
//!
//! let relay = FaultyRelay::start(upstream, FaultConfig { drop_publish: 0.1, seed: 7, ..FaultConfig::default() }).await;
//! // point clients at relay.url() ...
//! relay.stop().await; // relay "goes down"
//! relay.resume().await; // and comes back on the same port
//! println!("{:?}", relay.stats());
//! # }
//! ```

use nws_core::sync::lock;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Time allowed for the upstream connect and for the client's websocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to flush queued frames and send close frames when a connection ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames queued for one client before the relay→client pump waits.
const CLIENT_QUEUE: usize = 1024;
/// How long [`FaultyRelay::resume`] retries binding the old port.
const REBIND_ATTEMPTS: u32 = 100;
/// Pause between two bind attempts.
const REBIND_PAUSE: Duration = Duration::from_millis(50);
/// How long [`FaultyRelay::stop`] waits for each aborted task to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Mixed into the seed of the relay→client RNG so both directions draw differently.
const DELIVER_SEED_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// What faults a [`FaultyRelay`] injects. [`Default`] injects none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultConfig {
    /// Probability of dropping an EVENT the client publishes (never forwarded, no OK).
    pub drop_publish: f64,
    /// Probability of dropping an EVENT the relay delivers to the client.
    pub drop_deliver: f64,
    /// Events whose JSON (the event object) is larger than this many bytes are not
    /// forwarded; the client gets
    /// `["OK", id, false, "invalid: event too large (N > LIMIT bytes)"]`.
    ///
    /// The size is that of the event object's compact JSON serialization (what
    /// nostr-sdk sends). The limit also applies to events the relay delivers: those
    /// are silently withheld from the client (counted in
    /// [`FaultStats::deliver_rejected`]).
    pub max_event_bytes: Option<usize>,
    /// Client EVENTs over `max_event_bytes` vanish without an `OK` (as
    /// nostr-rs-relay does) instead of `OK false`.
    pub silent_size_drops: bool,
    /// `limitation.max_message_length` of the NIP-11 document served to an
    /// HTTP `GET` with `Accept: application/nostr+json`; `None` serves a
    /// document without limits.
    pub nip11_max_message_length: Option<usize>,
    /// Subscriptions are widened to their `kinds` alone (authors, tags and
    /// ids are dropped from every `REQ` filter): the client gets every
    /// event of those kinds, from anyone to anyone, as from a relay that
    /// ignores filters.
    pub ignore_filters: bool,
    /// RNG seed.
    pub seed: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            drop_publish: 0.0,
            drop_deliver: 0.0,
            max_event_bytes: None,
            silent_size_drops: false,
            nip11_max_message_length: None,
            ignore_filters: false,
            seed: 0,
        }
    }
}

/// Counters of a [`FaultyRelay`] since it started.
///
/// For each direction, `seen = forwarded + dropped + rejected` once the middlebox is
/// idle (`seen` is counted just before the decision is taken).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Client connections accepted (TCP level, before the websocket handshake).
    pub connections: u64,
    /// EVENT messages received from clients.
    pub publish_seen: u64,
    /// Client EVENTs handed to the upstream relay.
    pub publish_forwarded: u64,
    /// Client EVENTs dropped by `drop_publish` (no OK sent).
    pub publish_dropped: u64,
    /// Client EVENTs rejected by `max_event_bytes` (answered with `OK false`).
    pub publish_rejected: u64,
    /// EVENT messages received from the upstream relay.
    pub deliver_seen: u64,
    /// Relay EVENTs handed to the client.
    pub deliver_forwarded: u64,
    /// Relay EVENTs dropped by `drop_deliver`.
    pub deliver_dropped: u64,
    /// Relay EVENTs withheld by `max_event_bytes`.
    pub deliver_rejected: u64,
}

/// A fault-injecting websocket proxy in front of a Nostr relay; see the
/// [module documentation](self).
///
/// Dropping it aborts the listener and every connection.
pub struct FaultyRelay {
    shared: Arc<Shared>,
    /// The accept loop; `None` while stopped.
    accept: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl FaultyRelay {
    /// Listens on 127.0.0.1:0 and proxies every client connection to `upstream` (ws://…).
    ///
    /// # Panics
    ///
    /// If no port can be bound on 127.0.0.1.
    pub async fn start(upstream: &str, config: FaultConfig) -> FaultyRelay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("FaultyRelay: cannot bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("FaultyRelay: no local address")
            .port();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            port,
            faults: Mutex::new(Faults::new(config)),
            counters: Counters::default(),
            conns: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FaultyRelay {
            shared,
            accept: tokio::sync::Mutex::new(Some(accept)),
        }
    }

    /// The middlebox's websocket URL: `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.shared.port)
    }

    /// The port it listens on (kept across [`stop`](Self::stop) / [`resume`](Self::resume)).
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// The upstream relay URL given to [`start`](Self::start).
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    /// Closes every open client connection and refuses new ones (TCP listener closed)
    /// until [`resume`](Self::resume).
    ///
    /// Connections are cut abruptly (sockets dropped, no websocket close frame), as if
    /// the relay process died; their upstream connections are dropped too. When this
    /// returns, the listener is closed and every connection task has ended.
    pub async fn stop(&self) {
        let mut accept = self.accept.lock().await;
        if let Some(handle) = accept.take() {
            handle.abort();
            let _ = tokio::time::timeout(STOP_TIMEOUT, handle).await;
        }
        // The accept loop is gone, so no connection can be added behind our back.
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for handle in &conns {
            handle.abort();
        }
        for handle in conns {
            let _ = tokio::time::timeout(STOP_TIMEOUT, handle).await;
        }
    }

    /// Listens again on the same port. Does nothing if it is already listening.
    ///
    /// # Panics
    ///
    /// If the port cannot be bound again within about 5 s (another socket took it).
    pub async fn resume(&self) {
        let mut accept = self.accept.lock().await;
        if accept.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let mut last_err = None;
        for _ in 0..REBIND_ATTEMPTS {
            match TcpListener::bind(("127.0.0.1", self.shared.port)).await {
                Ok(listener) => {
                    *accept = Some(tokio::spawn(accept_loop(
                        listener,
                        Arc::clone(&self.shared),
                    )));
                    return;
                }
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(REBIND_PAUSE).await;
                }
            }
        }
        panic!(
            "FaultyRelay: cannot listen on 127.0.0.1:{} again: {:?}",
            self.shared.port, last_err
        );
    }

    /// Counters: events seen/dropped/rejected each way.
    pub fn stats(&self) -> FaultStats {
        self.shared.counters.snapshot()
    }

    /// The fault configuration in force.
    pub fn config(&self) -> FaultConfig {
        lock(&self.shared.faults).config
    }

    /// Change fault rates at run time (e.g. start dropping mid-transfer).
    ///
    /// Applies to the next frame of every open and future connection. Both RNGs are
    /// reseeded from `config.seed`, so what follows is repeatable as well.
    pub fn set_config(&self, config: FaultConfig) {
        *lock(&self.shared.faults) = Faults::new(config);
    }
}

impl fmt::Debug for FaultyRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyRelay")
            .field("url", &self.url())
            .field("upstream", &self.shared.upstream)
            .field("config", &self.config())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for FaultyRelay {
    fn drop(&mut self) {
        if let Some(handle) = self.accept.get_mut().take() {
            handle.abort();
        }
        for handle in lock(&self.shared.conns).drain(..) {
            handle.abort();
        }
    }
}

/// State shared by the handle, the accept loop and the connection tasks.
struct Shared {
    upstream: String,
    port: u16,
    faults: Mutex<Faults>,
    counters: Counters,
    /// Connection tasks (finished ones are pruned on each accept).
    conns: Mutex<Vec<JoinHandle<()>>>,
}

/// The configuration and the RNGs it seeds, replaced together by `set_config`.
struct Faults {
    config: FaultConfig,
    publish_rng: StdRng,
    deliver_rng: StdRng,
}

impl Faults {
    fn new(config: FaultConfig) -> Self {
        Self {
            config,
            publish_rng: StdRng::seed_from_u64(config.seed),
            deliver_rng: StdRng::seed_from_u64(config.seed ^ DELIVER_SEED_MIX),
        }
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    publish_seen: AtomicU64,
    publish_forwarded: AtomicU64,
    publish_dropped: AtomicU64,
    publish_rejected: AtomicU64,
    deliver_seen: AtomicU64,
    deliver_forwarded: AtomicU64,
    deliver_dropped: AtomicU64,
    deliver_rejected: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> FaultStats {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        FaultStats {
            connections: get(&self.connections),
            publish_seen: get(&self.publish_seen),
            publish_forwarded: get(&self.publish_forwarded),
            publish_dropped: get(&self.publish_dropped),
            publish_rejected: get(&self.publish_rejected),
            deliver_seen: get(&self.deliver_seen),
            deliver_forwarded: get(&self.deliver_forwarded),
            deliver_dropped: get(&self.deliver_dropped),
            deliver_rejected: get(&self.deliver_rejected),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

/// Which way a frame travels.
#[derive(Clone, Copy)]
enum Direction {
    /// Client → relay (`["EVENT", {..}]`).
    Publish,
    /// Relay → client (`["EVENT", "<subid>", {..}]`).
    Deliver,
}

/// What to do with a frame.
enum Verdict {
    /// Pass it on.
    Forward,
    /// Swallow it.
    Drop,
    /// Swallow it and send this text frame back to the sender (publish only).
    Reply(String),
    /// Pass this text on instead (publish only).
    Rewrite(String),
}

impl Shared {
    /// Applies the fault configuration to a text frame travelling in `dir`.
    fn judge(&self, dir: Direction, text: &str) -> Verdict {
        if !is_event_message(text) {
            if matches!(dir, Direction::Publish) && lock(&self.faults).config.ignore_filters {
                return widen_req(text).map_or(Verdict::Forward, Verdict::Rewrite);
            }
            return Verdict::Forward;
        }
        let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else {
            // Malformed: not ours to judge; the relay/client will complain.
            return Verdict::Forward;
        };
        let event = match dir {
            Direction::Publish => items.get(1),
            Direction::Deliver => items.get(2),
        };
        let Some(event @ Value::Object(fields)) = event else {
            return Verdict::Forward;
        };
        let c = &self.counters;
        let (seen, forwarded, dropped, rejected) = match dir {
            Direction::Publish => (
                &c.publish_seen,
                &c.publish_forwarded,
                &c.publish_dropped,
                &c.publish_rejected,
            ),
            Direction::Deliver => (
                &c.deliver_seen,
                &c.deliver_forwarded,
                &c.deliver_dropped,
                &c.deliver_rejected,
            ),
        };
        bump(seen);

        let (config, draw) = {
            let mut faults = lock(&self.faults);
            let draw: f64 = match dir {
                Direction::Publish => faults.publish_rng.random(),
                Direction::Deliver => faults.deliver_rng.random(),
            };
            (faults.config, draw)
        };
        if let Some(limit) = config.max_event_bytes {
            let size = json_len(event);
            if size > limit {
                bump(rejected);
                return match dir {
                    Direction::Publish if config.silent_size_drops => Verdict::Drop,
                    Direction::Publish => {
                        let id = fields.get("id").and_then(Value::as_str).unwrap_or("");
                        let reason = format!("invalid: event too large ({size} > {limit} bytes)");
                        Verdict::Reply(serde_json::json!(["OK", id, false, reason]).to_string())
                    }
                    Direction::Deliver => Verdict::Drop,
                };
            }
        }
        let p = match dir {
            Direction::Publish => config.drop_publish,
            Direction::Deliver => config.drop_deliver,
        };
        // `draw` is in [0, 1): p <= 0 (or NaN) never drops, p >= 1 always does.
        if draw < p {
            bump(dropped);
            Verdict::Drop
        } else {
            bump(forwarded);
            Verdict::Forward
        }
    }
}

/// Cheap pre-filter: does this text frame start like `["EVENT"`?
fn is_event_message(text: &str) -> bool {
    text.trim_start()
        .strip_prefix('[')
        .is_some_and(|rest| rest.trim_start().starts_with("\"EVENT\""))
}

/// Length in bytes of `value`'s compact JSON serialization, without building it.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Accepts client connections until aborted (stop/drop).
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        bump(&shared.counters.connections);
        let task = tokio::spawn(handle_connection(stream, Arc::clone(&shared)));
        let mut conns = lock(&shared.conns);
        conns.retain(|h| !h.is_finished());
        conns.push(task);
    }
}

/// Connects upstream, completes the client's handshake, then proxies until either
/// side ends. If the upstream relay is unreachable the client's TCP connection is
/// closed before its websocket handshake completes.
async fn handle_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    if let Some(head) = peek_head(&stream).await {
        let lower = head.to_ascii_lowercase();
        if !lower.contains("upgrade: websocket") && lower.contains("application/nostr+json") {
            let limit = lock(&shared.faults).config.nip11_max_message_length;
            serve_nip11(&mut stream, limit).await;
            return;
        }
    }
    let upstream = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(shared.upstream.as_str(), None, true),
    )
    .await
    {
        Ok(Ok((ws, _response))) => ws,
        _ => return,
    };
    let client = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_async(stream),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        _ => return,
    };
    proxy(client, upstream, &shared).await;
}

/// A `REQ` with every filter cut down to its `kinds` (and `since`), or
/// `None` for any other message.
fn widen_req(text: &str) -> Option<String> {
    let Ok(Value::Array(mut items)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    if items.first().and_then(Value::as_str) != Some("REQ") {
        return None;
    }
    for filter in items.iter_mut().skip(2) {
        if let Value::Object(f) = filter {
            f.retain(|k, _| k == "kinds" || k == "since");
        }
    }
    Some(Value::Array(items).to_string())
}

/// The client's request head (up to the blank line), without consuming it.
async fn peek_head(stream: &TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 8192];
    let peek = async {
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(String::from_utf8_lossy(&buf[..end]).into_owned());
            }
            if n == buf.len() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, peek)
        .await
        .ok()
        .flatten()
}

/// Answers a NIP-11 request with a relay information document.
async fn serve_nip11(stream: &mut TcpStream, max_message_length: Option<usize>) {
    let mut doc = serde_json::json!({
        "name": "nws-tests faulty relay",
        "supported_nips": [1, 11],
    });
    if let Some(m) = max_message_length {
        doc["limitation"] = serde_json::json!({ "max_message_length": m });
    }
    let body = doc.to_string();
    let response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/nostr+json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut head = vec![0u8; 8192];
    let _ = stream.read(&mut head).await;
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Copies frames both ways, applying the faults, until either side closes or fails;
/// then closes the other side.
///
/// Everything runs in one task (so aborting it cuts both sockets), but the two
/// directions never wait for each other: frames for the client go through a queue
/// drained by their own writer, so OK replies and deliveries interleave freely.
async fn proxy<C, U>(client: WebSocketStream<C>, upstream: WebSocketStream<U>, shared: &Shared)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_tx, mut client_rx) = client.split();
    let (mut upstream_tx, mut upstream_rx) = upstream.split();
    let (to_client, mut to_client_rx) = mpsc::channel::<Message>(CLIENT_QUEUE);

    {
        let client_to_relay = async {
            while let Some(Ok(msg)) = client_rx.next().await {
                let closing = matches!(msg, Message::Close(_));
                let verdict = match &msg {
                    Message::Text(text) => shared.judge(Direction::Publish, text.as_str()),
                    _ => Verdict::Forward,
                };
                match verdict {
                    Verdict::Forward => {
                        if upstream_tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Verdict::Drop => {}
                    Verdict::Reply(reply) => {
                        if to_client.send(Message::text(reply)).await.is_err() {
                            return;
                        }
                    }
                    Verdict::Rewrite(text) => {
                        if upstream_tx.send(Message::text(text)).await.is_err() {
                            return;
                        }
                    }
                }
                if closing {
                    return;
                }
            }
        };
        let relay_to_client = async {
            while let Some(Ok(msg)) = upstream_rx.next().await {
                let closing = matches!(msg, Message::Close(_));
                let verdict = match &msg {
                    Message::Text(text) => shared.judge(Direction::Deliver, text.as_str()),
                    _ => Verdict::Forward,
                };
                if matches!(verdict, Verdict::Forward) && to_client.send(msg).await.is_err() {
                    return;
                }
                if closing {
                    return;
                }
            }
        };
        let client_writer = async {
            while let Some(msg) = to_client_rx.recv().await {
                if client_tx.send(msg).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = client_to_relay => {}
            _ = relay_to_client => {}
            _ = client_writer => {}
        }
    }

    // One side is done: flush what is queued for the client (e.g. a last OK or the
    // relay's close frame), then close both sides.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Ok(msg) = to_client_rx.try_recv() {
            if client_tx.feed(msg).await.is_err() {
                break;
            }
        }
        let _ = client_tx.close().await;
    })
    .await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, upstream_tx.close()).await;
}
