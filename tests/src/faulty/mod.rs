//! [`FaultyRelay`]: a fault-injecting websocket middlebox between Nostr clients and a
//! real upstream relay.
//!
//! Every client connection accepted on `127.0.0.1:PORT` gets its own upstream
//! connection; frames are copied both ways. Client messages (`EVENT`, `REQ`,
//! `AUTH`) and relay messages (`EVENT`, `OK`) are inspected and may be dropped,
//! rejected, rewritten or answered by the middlebox itself according to a
//! [`FaultConfig`] (whose fields document the exact wire behaviour of each mode);
//! every other frame (`CLOSE`, `EOSE`, `NOTICE`, binary, ping, pong, close)
//! passes through unchanged. When either side closes or fails, the other side
//! is closed too.
//!
//! The modes model relays as deployed (see `shared/RELAYS.md`): size limits with
//! explicit, opaque or silent refusals; throttling after refusals; per-connection
//! rate limits; no `OK` for ephemeral events; ephemeral events kept for minutes
//! and replayed to later subscriptions; NIP-42 authentication; and `wss://` with
//! a certificate from a test CA ([`FaultyRelay::start_tls`], [`TestCa`]).
//!
//! Decisions are drawn from seeded [`StdRng`]s, one for each direction, so a run that
//! sends the same events in the same order drops the same ones: the n-th `EVENT` seen
//! in a direction (counted across all connections since the last
//! [`FaultyRelay::set_config`]) uses the n-th draw of that direction's RNG.
//!
//! An HTTP request with `Accept: application/nostr+json` (and no websocket
//! upgrade) is answered with a NIP-11 document, over TLS too.
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

mod config;
mod judge;
mod tls;

pub use config::{
    FaultConfig, FaultStats, DEFAULT_THROTTLE_BASE, EPHEMERAL_MAX_AGE, THROTTLE_MAX_DOUBLINGS,
};
pub use tls::{TestCa, TEST_CA_NAMES};

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nws_core::sync::lock;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use config::{bump, Counters};
use judge::{ClientSide, Kept, Outcome, Upstream};
use tls::Rewind;

/// Longest HTTP request head read from a client, in bytes.
const MAX_HEAD_BYTES: usize = 8192;
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
        Self::listen(upstream, config, None).await
    }

    /// Like [`start`](Self::start), but clients connect with TLS (`wss://`): the
    /// middlebox serves `ca`'s server certificate (valid for `localhost` and
    /// `127.0.0.1`), and [`url`](Self::url) is `wss://localhost:PORT`. The
    /// upstream connection stays as `upstream` says.
    ///
    /// # Panics
    ///
    /// If no port can be bound on 127.0.0.1.
    pub async fn start_tls(upstream: &str, config: FaultConfig, ca: &TestCa) -> FaultyRelay {
        let acceptor = TlsAcceptor::from(ca.server_config());
        Self::listen(upstream, config, Some(acceptor)).await
    }

    async fn listen(upstream: &str, config: FaultConfig, tls: Option<TlsAcceptor>) -> FaultyRelay {
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
            tls,
            store: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FaultyRelay {
            shared,
            accept: tokio::sync::Mutex::new(Some(accept)),
        }
    }

    /// The middlebox's websocket URL: `ws://127.0.0.1:PORT`, or
    /// `wss://localhost:PORT` if started with [`start_tls`](Self::start_tls).
    pub fn url(&self) -> String {
        match self.shared.tls {
            None => format!("ws://127.0.0.1:{}", self.shared.port),
            Some(_) => format!("wss://localhost:{}", self.shared.port),
        }
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
    /// Ephemeral events kept by `store_ephemeral` are kept (as on disk).
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

    /// Counters: events seen/dropped/rejected each way, and what each mode did.
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
    /// reseeded from `config.seed`, so what follows is repeatable as well. State
    /// kept per connection (throttle count, token bucket, NIP-42 authentication)
    /// and the ephemeral events kept by `store_ephemeral` survive the change.
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
    /// TLS for clients ([`FaultyRelay::start_tls`]).
    tls: Option<TlsAcceptor>,
    /// Ephemeral events kept by `store_ephemeral`, oldest first.
    store: Mutex<Vec<Kept>>,
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

/// Reads the client's request head; answers NIP-11 requests itself; otherwise
/// connects upstream, completes the client's websocket handshake, then proxies
/// until either side ends. If the upstream relay is unreachable the client's
/// connection is closed before its websocket handshake completes.
async fn handle_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    match shared.tls.clone() {
        None => serve_client(stream, &shared).await,
        Some(acceptor) => {
            if let Ok(Ok(tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                serve_client(tls, &shared).await;
            }
        }
    }
}

/// [`handle_connection`] once the transport (plain or TLS) is up.
async fn serve_client<S>(mut stream: S, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some((head, read)) = read_head(&mut stream).await else {
        return;
    };
    let lower = head.to_ascii_lowercase();
    if !lower.contains("upgrade: websocket") && lower.contains("application/nostr+json") {
        let config = lock(&shared.faults).config;
        serve_nip11(&mut stream, &config).await;
        return;
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
        tokio_tungstenite::accept_async(Rewind::new(read, stream)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        _ => return,
    };
    proxy(client, upstream, shared).await;
}

/// Reads the client's request head (up to the blank line, at most
/// [`MAX_HEAD_BYTES`]): the head as text and every byte read (which may go
/// past the head).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while buf.len() < MAX_HEAD_BYTES {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(String::from_utf8_lossy(&buf[..end]).into_owned());
            }
        }
        None
    };
    let head = tokio::time::timeout(HANDSHAKE_TIMEOUT, read).await.ok()??;
    Some((head, buf))
}

/// Answers a NIP-11 request with a relay information document:
/// `supported_nips` `[1, 11]` (and 42 with `auth_required`), and a
/// `limitation` object with `max_message_length` (from
/// `nip11_max_message_length`) and `auth_required` when those are set.
async fn serve_nip11<S: AsyncWrite + Unpin>(stream: &mut S, config: &FaultConfig) {
    let mut nips = vec![1, 11];
    if config.auth_required {
        nips.push(42);
    }
    let mut doc = serde_json::json!({
        "name": "nws-tests faulty relay",
        "supported_nips": nips,
    });
    let mut limitation = serde_json::Map::new();
    if let Some(m) = config.nip11_max_message_length {
        limitation.insert("max_message_length".into(), m.into());
    }
    if config.auth_required {
        limitation.insert("auth_required".into(), true.into());
    }
    if !limitation.is_empty() {
        doc["limitation"] = limitation.into();
    }
    let body = doc.to_string();
    let response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/nostr+json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Copies frames both ways, applying the faults, until either side closes or fails;
/// then closes the other side.
///
/// Everything runs in one task (so aborting it cuts both sockets), but the two
/// directions never wait for each other: frames for the client go through a queue
/// drained by their own writer, so OK replies and deliveries interleave freely,
/// and a throttle sleep of the client reader holds up nothing else.
async fn proxy<C, U>(client: WebSocketStream<C>, upstream: WebSocketStream<U>, shared: &Shared)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_tx, mut client_rx) = client.split();
    let (mut upstream_tx, mut upstream_rx) = upstream.split();
    let (to_client, mut to_client_rx) = mpsc::channel::<Message>(CLIENT_QUEUE);
    // Ephemeral ids published on this connection whose OK is to be withheld.
    let swallow = Mutex::new(HashSet::new());
    let mut side = ClientSide::new();
    if lock(&shared.faults).config.auth_required {
        if let Some(frame) = side.challenge_frame() {
            let _ = to_client.send(Message::text(frame)).await;
        }
    }

    {
        let client_to_relay = async {
            while let Some(Ok(msg)) = client_rx.next().await {
                let closing = matches!(msg, Message::Close(_));
                let outcome = match &msg {
                    Message::Text(text) => {
                        shared.on_client_text(&mut side, text.as_str(), &swallow)
                    }
                    _ => Outcome::forward(),
                };
                let sent = match outcome.upstream {
                    Upstream::Original => upstream_tx.send(msg).await,
                    Upstream::Text(text) => upstream_tx.send(Message::text(text)).await,
                    Upstream::Nothing => Ok(()),
                };
                if sent.is_err() {
                    return;
                }
                for reply in outcome.replies {
                    if to_client.send(Message::text(reply)).await.is_err() {
                        return;
                    }
                }
                if let Some(pause) = outcome.pause {
                    tokio::time::sleep(pause).await;
                }
                if closing {
                    return;
                }
            }
        };
        let relay_to_client = async {
            while let Some(Ok(msg)) = upstream_rx.next().await {
                let closing = matches!(msg, Message::Close(_));
                let pass = match &msg {
                    Message::Text(text) => shared.on_relay_text(text.as_str(), &swallow),
                    _ => true,
                };
                if pass && to_client.send(msg).await.is_err() {
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
