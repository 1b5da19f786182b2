//! The exit node, private-service mode: it listens on its relays for stream
//! events addressed to its key and turns each stream into a TCP connection to
//! its one configured backend, whatever the `CONNECT`'s destination says.
//!
//! Each entry author gets one conversation key, derived on its first
//! `CONNECT` and kept while it has streams open; every stream runs in its own
//! task through the shared [`driver`](crate::driver).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nostr::{Event, Keys, PublicKey, RelayUrl};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::driver::{pump, Conn, Inbox, Link, OpenSlot, Stats};
use crate::engine::{Stream, StreamConfig};
use crate::names::{encode_nostr_domain, NameError};
use crate::protocol::{Cipher, ErrorReason, Message, MessageType};
use crate::transport::{exit_filter, Transport, TransportError};

/// Configuration of an exit node.
#[derive(Debug, Clone)]
pub struct ExitConfig {
    /// Relays the exit listens and answers on.
    pub relays: Vec<RelayUrl>,
    /// The exit's long-term keys (its public key is its address).
    pub keys: Keys,
    /// The one backend every stream is dialled to (`host:port`).
    pub backend: String,
    /// Most streams open at once; a `CONNECT` beyond it is refused with
    /// `too-many-streams`.
    pub max_streams: usize,
    /// How long a backend dial may take.
    pub connect_timeout: Duration,
    /// A stream with no traffic either way for this long is aborted.
    pub idle_timeout: Duration,
    /// How long to wait for a first relay connection at start.
    pub relay_timeout: Duration,
    /// Per-stream limits.
    pub stream: StreamConfig,
    /// Answer every entry in the legacy format, as the reference exit does
    /// (for interoperability tests).
    pub legacy: bool,
    /// Events whose `created_at` is further than this from now are dropped
    /// (replay protection; default 60 s).
    pub replay_window: Duration,
    /// Entry keys allowed to open streams (`None`: anyone). Useful with
    /// entries that use a persistent key.
    pub allowed_entries: Option<Vec<PublicKey>>,
    /// Most streams one entry key may have open at once.
    pub max_streams_per_entry: usize,
    /// Most new streams one entry key may open per minute.
    pub max_new_streams_per_minute: u32,
}

impl ExitConfig {
    /// A configuration with defaults: 256 streams (64 per entry key, 600 new
    /// ones per entry key and minute), anyone may connect, 10 s dial
    /// timeout, 5 min idle timeout, 10 s relay timeout, 60 s replay window.
    pub fn new(relays: Vec<RelayUrl>, keys: Keys, backend: impl Into<String>) -> Self {
        Self {
            relays,
            keys,
            backend: backend.into(),
            max_streams: 256,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            relay_timeout: Duration::from_secs(10),
            stream: StreamConfig::default(),
            legacy: false,
            replay_window: crate::transport::DEFAULT_REPLAY_WINDOW,
            allowed_entries: None,
            max_streams_per_entry: 64,
            max_new_streams_per_minute: 600,
        }
    }
}

/// Errors starting an exit node.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// The relays could not be used.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The exit's `.nostr` name cannot be written with these relays.
    #[error(transparent)]
    Name(#[from] NameError),
}

/// Streams of one entry author.
struct Author {
    cipher: Cipher,
    streams: HashMap<String, mpsc::Sender<Message>>,
}

type Authors = Arc<Mutex<HashMap<PublicKey, Author>>>;

/// A running exit node. Dropping it does not stop it; call [`ExitNode::stop`].
pub struct ExitNode {
    public_key: PublicKey,
    relays: Vec<RelayUrl>,
    transport: Transport,
    cancel: CancellationToken,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl ExitNode {
    /// Connects to the relays (at least one within `relay_timeout`),
    /// subscribes for events addressed to the exit, and starts serving.
    pub async fn start(config: ExitConfig) -> Result<Self, ExitError> {
        let transport = Transport::new();
        transport.set_replay_window(config.replay_window);
        transport
            .ensure_connected(&config.relays, config.relay_timeout)
            .await?;
        let public_key = config.keys.public_key();
        let inbox = transport.route(public_key);
        transport
            .subscribe(exit_filter(&public_key), &config.relays)
            .await?;
        let cancel = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let server = Server {
            config: Arc::new(config.clone()),
            transport: transport.clone(),
            authors: Arc::new(Mutex::new(HashMap::new())),
            rates: Mutex::new(HashMap::new()),
            stats: stats.clone(),
            cancel: cancel.clone(),
        };
        let task = tokio::spawn(server.run(inbox));
        log::info!("exit {public_key} serving backend {}", config.backend);
        Ok(Self {
            public_key,
            relays: config.relays,
            transport,
            cancel,
            stats,
            task,
        })
    }

    /// The exit's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// The exit's `.nostr` domain with its relays (fails if a relay URL is
    /// too long for a DNS label).
    pub fn nostr_domain(&self) -> Result<String, NameError> {
        encode_nostr_domain(&self.public_key, &self.relays)
    }

    /// The exit's NIP-19 `nprofile` with its relays.
    pub fn nprofile(&self) -> String {
        use nostr::nips::nip19::{Nip19Profile, ToBech32};
        Nip19Profile::new(self.public_key, self.relays.clone())
            .to_bech32()
            .unwrap_or_default()
    }

    /// Stream events published and received (see [`Transport::event_counts`]).
    pub fn event_counts(&self) -> (u64, u64) {
        self.transport.event_counts()
    }

    /// Counters of the exit's streams.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Stops accepting streams, aborts open ones and disconnects from relays.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        self.transport.shutdown().await;
    }
}

struct Server {
    config: Arc<ExitConfig>,
    transport: Transport,
    authors: Authors,
    /// New streams per entry key in the current minute: (minute start, count).
    rates: Mutex<HashMap<PublicKey, (Instant, u32)>>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
}

/// The period of the per-entry-key new-stream limit.
const RATE_PERIOD: Duration = Duration::from_secs(60);

impl Server {
    /// Why a new stream from `author` must be refused, if it must: not on the
    /// allow list, the exit's or this entry key's concurrent streams at their
    /// cap, or too many new streams from this key in the last minute.
    fn admission(&self, author: &PublicKey) -> Option<ErrorReason> {
        let c = &self.config;
        if c.allowed_entries
            .as_ref()
            .is_some_and(|list| !list.contains(author))
        {
            return Some(ErrorReason::NotAllowed);
        }
        if self.stats.streams_open.load(Ordering::Relaxed) >= c.max_streams {
            return Some(ErrorReason::TooManyStreams);
        }
        let open_by_author = lock(&self.authors)
            .get(author)
            .map_or(0, |a| a.streams.len());
        if open_by_author >= c.max_streams_per_entry {
            return Some(ErrorReason::TooManyStreams);
        }
        let now = Instant::now();
        let mut rates = lock(&self.rates);
        if rates.len() > 10_000 {
            rates.retain(|_, (start, _)| now.duration_since(*start) < RATE_PERIOD);
        }
        let (start, count) = rates.entry(*author).or_insert((now, 0));
        if now.duration_since(*start) >= RATE_PERIOD {
            *start = now;
            *count = 0;
        }
        if *count >= c.max_new_streams_per_minute {
            return Some(ErrorReason::TooManyStreams);
        }
        *count += 1;
        None
    }

    async fn run(self, mut inbox: mpsc::Receiver<Event>) {
        loop {
            let ev = tokio::select! {
                ev = inbox.recv() => match ev { Some(ev) => ev, None => return },
                _ = self.cancel.cancelled() => return,
            };
            self.dispatch(ev).await;
        }
    }

    /// Opens one event and hands it to its stream, or starts a stream on `CONNECT`.
    async fn dispatch(&self, ev: Event) {
        let author = ev.pubkey;
        let known = lock(&self.authors).get(&author).map(|a| a.cipher.clone());
        let cipher = match known {
            Some(c) => c,
            None => match Cipher::derive(self.config.keys.secret_key(), &author) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("event {} from {author}: {e}: dropped", ev.id);
                    return;
                }
            },
        };
        let msg = match cipher.open(&ev.content) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("event {} from {author}: {e}: dropped", ev.id);
                return;
            }
        };
        if msg.key.is_empty() {
            log::warn!(
                "event {} from {author}: message without key: dropped",
                ev.id
            );
            return;
        }
        {
            let authors = lock(&self.authors);
            if let Some(tx) = authors.get(&author).and_then(|a| a.streams.get(&msg.key)) {
                crate::driver::offer(tx, msg);
                return;
            }
        }
        match msg.kind {
            MessageType::Connect => self.accept(author, cipher, msg).await,
            MessageType::ConnectReverse => {
                log::warn!("stream {}: reverse connect is not supported yet", msg.key)
            }
            kind => log::debug!("stream {}: {kind} for an unknown stream: dropped", msg.key),
        }
    }

    async fn accept(&self, author: PublicKey, cipher: Cipher, mut connect: Message) {
        let key = connect.key.clone();
        if self.config.legacy {
            connect.version = None;
        }
        let mut engine = match Stream::accept(self.config.stream.clone(), connect, Instant::now()) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("stream {key}: {e}");
                return;
            }
        };
        if engine.dialect() == crate::engine::Dialect::Legacy {
            log::info!("stream {key}: legacy entry (CONNECT without version)");
        }
        let link = Link {
            transport: self.transport.clone(),
            keys: self.config.keys.clone(),
            peer: author,
            cipher: cipher.clone(),
            relays: self.config.relays.clone(),
        };
        if let Some(reason) = self.admission(&author) {
            log::warn!("stream {key} from {author}: refused ({reason})");
            engine.backend_failed(reason);
            send_all(&mut engine, &link).await;
            return;
        }
        let (tx, rx) = mpsc::channel(crate::driver::STREAM_INBOX);
        lock(&self.authors)
            .entry(author)
            .or_insert_with(|| Author {
                cipher,
                streams: HashMap::new(),
            })
            .streams
            .insert(key.clone(), tx);
        let slot = OpenSlot::new(self.stats.clone());
        let config = self.config.clone();
        let authors = self.authors.clone();
        let cancel = self.cancel.clone();
        // Forgets the stream (and its author when it was the last) once the
        // stream has ended and lingered.
        let forget = OnDrop(Some(move || {
            let mut authors = lock(&authors);
            if let Some(a) = authors.get_mut(&author) {
                a.streams.remove(&key);
                if a.streams.is_empty() {
                    authors.remove(&author);
                }
            }
        }));
        let conn = Conn {
            engine,
            link,
            inbox: Inbox::Messages(rx),
            keep: Box::new(forget),
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = serve_stream(conn, &config, slot) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

/// Dials the backend for one accepted stream, answers, and pumps it.
async fn serve_stream(mut conn: Conn, config: &ExitConfig, slot: OpenSlot) {
    let Conn { engine, link, .. } = &mut conn;
    let key = engine.key().to_string();
    let dial = tokio::time::timeout(config.connect_timeout, TcpStream::connect(&config.backend));
    let backend = match dial.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            log::info!("stream {key}: backend {} failed: {e}", config.backend);
            engine.backend_failed(ErrorReason::from_io(&e));
            send_all(engine, link).await;
            return;
        }
        Err(_) => {
            log::info!("stream {key}: backend {} timed out", config.backend);
            engine.backend_failed(ErrorReason::Timeout);
            send_all(engine, link).await;
            return;
        }
    };
    let _ = backend.set_nodelay(true);
    engine.backend_connected(Instant::now());
    log::debug!("stream {key}: open to {}", config.backend);
    let end = pump(conn, backend, Vec::new(), config.idle_timeout, slot).await;
    log::debug!("stream {key}: ended ({end:?})");
}

/// Publishes whatever the engine queued (used when the stream ends early).
async fn send_all(engine: &mut Stream, link: &Link) {
    while let Some(out) = engine.poll_output() {
        if let crate::engine::Output::Publish(m) = out {
            if let Err(e) = link.send(&m).await {
                log::warn!("stream {}: cannot publish {}: {e}", engine.key(), m.kind);
            }
        }
    }
}

/// Runs a closure when dropped.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
