//! Emulators of the reference implementation's (asmogo/nws) legacy peers,
//! for interoperability tests: [`LegacyExit`] and [`LegacyEntry`].
//!
//! They speak the legacy format (`docs/PROTOCOL.md` part 1: `CONNECT`, then
//! `SOCKS5RESPONSE` data both ways, no sequence numbers, no close) through
//! nostr-sdk [`Client`]s, and reproduce the reference's behaviour that a
//! sender has to live with:
//!
//! * every incoming event is handled in a task of its own after a small
//!   random delay ([`Reorder`], seeded), so events that arrive close together
//!   reach the socket in either order;
//! * the exit drops data for a stream whose backend dial has not finished;
//! * the entry subscribes for answers only at its client's first write, on
//!   a new websocket, racing its own publish, so a quick answer is lost;
//! * every publish waits for the relays' `OK` (nostr-sdk's timeout);
//! * every stream is closed a fixed time after it opened (10 s in the
//!   reference; [`LegacyExitConfig::lifetime`], [`LegacyEntryConfig::lifetime`]).
//!
//! Everything listens and dials on 127.0.0.1 only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nostr_sdk::prelude::{
    Client, Event, Filter, Keys, PublicKey, RelayMessage, RelayPoolNotification, RelayUrl,
    Timestamp,
};
use nws_core::protocol::{build_stream_event, stream_kind, Cipher, HostPort, Message, MessageType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Stream bytes the emulators put into one data event, at most (as our
/// default, so events stay under the usual 64 KiB relay message cap).
pub const LEGACY_CHUNK: usize = 30_000;

/// The reference's stream lifetime: it closes every stream 10 s after opening it.
pub const REFERENCE_LIFETIME: Duration = Duration::from_secs(10);

/// How long the emulators wait for a relay connection or subscription.
const RELAY_WAIT: Duration = Duration::from_secs(10);

/// How incoming events are reordered: each is handled after a delay drawn
/// uniformly from `0..max_delay` (milliseconds resolution) by an RNG seeded
/// with `seed`. A `max_delay` of zero handles them in arrival order (still
/// each in a task of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reorder {
    /// Seed of the delay generator.
    pub seed: u64,
    /// Exclusive upper bound of the per-event delay.
    pub max_delay: Duration,
}

impl Reorder {
    /// Delays of `0..max_delay_ms` milliseconds from `seed`.
    pub fn new(seed: u64, max_delay_ms: u64) -> Self {
        Self {
            seed,
            max_delay: Duration::from_millis(max_delay_ms),
        }
    }

    /// No delay (arrival order, as far as task scheduling keeps it).
    pub fn none() -> Self {
        Self::new(0, 0)
    }
}

impl Default for Reorder {
    /// Seed 1, delays of 0..10 ms.
    fn default() -> Self {
        Self::new(1, 10)
    }
}

/// The seeded per-event delay generator.
struct Jitter {
    rng: Mutex<StdRng>,
    max_ms: u64,
}

impl Jitter {
    fn new(r: Reorder) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(r.seed)),
            max_ms: r.max_delay.as_millis() as u64,
        }
    }

    fn next(&self) -> Duration {
        if self.max_ms == 0 {
            return Duration::ZERO;
        }
        let ms = match self.rng.lock() {
            Ok(mut rng) => rng.random_range(0..self.max_ms),
            Err(_) => 0,
        };
        Duration::from_millis(ms)
    }
}

/// What an emulator did, counted (all counters only grow).
#[derive(Debug, Default)]
pub struct LegacyStats {
    /// Stream events received (after the pool's de-duplication).
    pub events: AtomicU64,
    /// Streams opened (exit: backend dialled; entry: `CONNECT` published).
    pub streams: AtomicU64,
    /// Data events dropped because their stream was unknown: not yet
    /// dialled, already closed, or never opened (exit only).
    pub dropped: AtomicU64,
    /// Data events published.
    pub data_sent: AtomicU64,
    /// Streams closed by the lifetime.
    pub closed_by_lifetime: AtomicU64,
    /// Stream bytes written to local sockets (backend or client).
    pub bytes_delivered: AtomicU64,
}

impl LegacyStats {
    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A nostr-sdk client with `keys` connected to `relays` (waits at most
/// [`RELAY_WAIT`]).
async fn connect_client(keys: Keys, relays: &[RelayUrl]) -> Result<Client, String> {
    let client = Client::new(keys);
    for r in relays {
        client
            .add_relay(r.as_str())
            .await
            .map_err(|e| format!("add relay {r}: {e}"))?;
    }
    client.try_connect(RELAY_WAIT).await;
    Ok(client)
}

/// Subscribes `client` to `filter` and waits (bounded) for the relays'
/// end of stored events, so that the subscription is live on return.
async fn subscribe_live(client: &Client, filter: Filter) -> Result<(), String> {
    let mut notes = client.notifications();
    let out = client
        .subscribe(filter, None)
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    let id = out.val;
    let wait = async {
        loop {
            match notes.recv().await {
                Ok(RelayPoolNotification::Message {
                    message: RelayMessage::EndOfStoredEvents(sub),
                    ..
                }) if *sub == id => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    };
    tokio::time::timeout(RELAY_WAIT, wait)
        .await
        .map_err(|_| "no end of stored events from the relays".to_string())
}

/// A data message (`SOCKS5RESPONSE`) of stream `key`, the destination
/// filled in as the reference does.
fn data_message(key: &str, destination: &str, data: Vec<u8>) -> Message {
    let mut m = Message::new(key.to_string(), MessageType::Socks5Response);
    m.destination = destination.to_string();
    m.data = data;
    m
}

/// Seals `msg` for `to` and publishes it through `client` to `relays`,
/// waiting for their `OK` (nostr-sdk's timeout). Returns whether a relay
/// accepted it.
async fn publish(
    client: &Client,
    keys: &Keys,
    cipher: &Cipher,
    to: &PublicKey,
    relays: &[RelayUrl],
    msg: &Message,
) -> bool {
    let Ok(content) = cipher.seal(msg) else {
        return false;
    };
    let Ok(event) = build_stream_event(keys, to, content) else {
        return false;
    };
    match client.send_event_to(relays.iter().cloned(), &event).await {
        Ok(out) => !out.success.is_empty(),
        Err(e) => {
            log::debug!("legacy emulator: publish failed: {e}");
            false
        }
    }
}

// ---------------------------------------------------------------------------
// Exit
// ---------------------------------------------------------------------------

/// Configuration of a [`LegacyExit`].
#[derive(Debug, Clone)]
pub struct LegacyExitConfig {
    /// Relays it listens on.
    pub relays: Vec<RelayUrl>,
    /// Its long-term keys.
    pub keys: Keys,
    /// Where a `CONNECT` to a `.nostr` destination goes (`host:port`).
    pub backend: String,
    /// How incoming events are reordered.
    pub reorder: Reorder,
    /// Time from a stream's backend dial to its close.
    pub lifetime: Duration,
    /// Extra time every backend dial takes (the dial to an internet host).
    pub dial_delay: Duration,
}

impl LegacyExitConfig {
    /// Fresh keys, [`Reorder::default`], the reference's 10 s lifetime, no
    /// extra dial time.
    pub fn new(relays: Vec<RelayUrl>, backend: impl Into<String>) -> Self {
        Self {
            relays,
            keys: Keys::generate(),
            backend: backend.into(),
            reorder: Reorder::default(),
            lifetime: REFERENCE_LIFETIME,
            dial_delay: Duration::ZERO,
        }
    }
}

/// One stream's write side toward the backend.
type BackendWriter = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

struct ExitShared {
    config: LegacyExitConfig,
    client: Client,
    jitter: Jitter,
    stats: Arc<LegacyStats>,
    streams: Mutex<HashMap<String, BackendWriter>>,
    tasks: Mutex<JoinSet<()>>,
}

/// An emulated reference exit (module docs): answers `CONNECT`s to its key
/// by dialling the destination, and relays bytes both ways in the legacy
/// format, with the reference's races.
pub struct LegacyExit {
    shared: Arc<ExitShared>,
    task: JoinHandle<()>,
}

impl LegacyExit {
    /// Connects to the relays, subscribes to events `p`-tagged to its key
    /// and starts handling them.
    ///
    /// # Errors
    ///
    /// A text when no relay can be used or the subscription fails.
    pub async fn start(config: LegacyExitConfig) -> Result<LegacyExit, String> {
        let client = connect_client(config.keys.clone(), &config.relays).await?;
        let filter = Filter::new()
            .kind(stream_kind())
            .pubkey(config.keys.public_key())
            .since(Timestamp::now());
        let notes = client.notifications();
        subscribe_live(&client, filter).await?;
        let shared = Arc::new(ExitShared {
            jitter: Jitter::new(config.reorder),
            config,
            client,
            stats: Arc::default(),
            streams: Mutex::default(),
            tasks: Mutex::new(JoinSet::new()),
        });
        let task = tokio::spawn(exit_loop(shared.clone(), notes));
        Ok(LegacyExit { shared, task })
    }

    /// Its public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.config.keys.public_key()
    }

    /// Its `.nostr` name with its relays (what a client puts in the URL).
    pub fn nostr_domain(&self) -> String {
        nws_core::names::encode_nostr_domain(&self.public_key(), &self.shared.config.relays)
            .unwrap_or_default()
    }

    /// What it did so far.
    pub fn stats(&self) -> &LegacyStats {
        &self.shared.stats
    }
}

impl Drop for LegacyExit {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut t) = self.shared.tasks.lock() {
            t.abort_all();
        }
    }
}

async fn exit_loop(
    shared: Arc<ExitShared>,
    mut notes: tokio::sync::broadcast::Receiver<RelayPoolNotification>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let (relay, event) = match notes.recv().await {
            Ok(RelayPoolNotification::Event {
                relay_url, event, ..
            }) => (relay_url, event),
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        if event.kind != stream_kind() {
            continue;
        }
        shared.stats.events.fetch_add(1, Ordering::Relaxed);
        // One task per event, as the reference's goroutine per event.
        let delay = shared.jitter.next();
        let s = shared.clone();
        spawn_in(&shared.tasks, async move {
            tokio::time::sleep(delay).await;
            exit_handle(s, relay, *event).await;
        });
    }
}

/// Spawns `f` into `set`, first reaping the tasks that finished.
fn spawn_in<F>(set: &Mutex<JoinSet<()>>, f: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    if let Ok(mut set) = set.lock() {
        while set.try_join_next().is_some() {}
        set.spawn(f);
    }
}

async fn exit_handle(shared: Arc<ExitShared>, relay: RelayUrl, event: Event) {
    let keys = &shared.config.keys;
    let Ok(cipher) = Cipher::derive(keys.secret_key(), &event.pubkey) else {
        return;
    };
    let Ok(msg) = cipher.open(&event.content) else {
        log::debug!("legacy exit: event {} does not open: dropped", event.id);
        return;
    };
    match msg.kind {
        MessageType::Connect => exit_connect(shared, relay, event.pubkey, cipher, msg).await,
        MessageType::Socks5Response | MessageType::Data => {
            let writer = shared
                .streams
                .lock()
                .ok()
                .and_then(|m| m.get(&msg.key).cloned());
            match writer {
                Some(w) => {
                    if w.lock().await.write_all(&msg.data).await.is_ok() {
                        shared
                            .stats
                            .bytes_delivered
                            .fetch_add(msg.data.len() as u64, Ordering::Relaxed);
                    }
                }
                None => {
                    log::debug!("legacy exit: data for unknown stream {}: dropped", msg.key);
                    shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        _ => {}
    }
}

async fn exit_connect(
    shared: Arc<ExitShared>,
    relay: RelayUrl,
    entry: PublicKey,
    cipher: Cipher,
    msg: Message,
) {
    let target = match HostPort::parse(&msg.destination) {
        Ok(hp) if hp.host.ends_with(".nostr") => shared.config.backend.clone(),
        Ok(hp) => hp.to_string(),
        Err(_) => return,
    };
    tokio::time::sleep(shared.config.dial_delay).await;
    let Ok(sock) = TcpStream::connect(target.as_str()).await else {
        log::debug!("legacy exit: dial {target} failed");
        return;
    };
    let _ = sock.set_nodelay(true);
    let (mut rd, wr) = sock.into_split();
    let writer: BackendWriter = Arc::new(tokio::sync::Mutex::new(wr));
    if let Ok(mut m) = shared.streams.lock() {
        m.insert(msg.key.clone(), writer.clone());
    }
    shared.stats.streams.fetch_add(1, Ordering::Relaxed);
    let key = msg.key.clone();
    let destination = msg.destination.clone();
    let s = shared.clone();
    let reader = async move {
        let mut buf = vec![0u8; LEGACY_CHUNK];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let m = data_message(&key, &destination, buf[..n].to_vec());
            let keys = &s.config.keys;
            if publish(
                &s.client,
                keys,
                &cipher,
                &entry,
                std::slice::from_ref(&relay),
                &m,
            )
            .await
            {
                s.stats.data_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let lifetime = shared.config.lifetime;
    let s = shared.clone();
    spawn_in(&shared.tasks, async move {
        // The reference closes the stream a fixed time after opening it (and
        // not before, even when the backend has finished).
        let until_closed = async {
            reader.await;
            std::future::pending::<()>().await
        };
        let _ = tokio::time::timeout(lifetime, until_closed).await;
        if let Ok(mut m) = s.streams.lock() {
            m.remove(&msg.key);
        }
        let _ = writer.lock().await.shutdown().await;
        s.stats.closed_by_lifetime.fetch_add(1, Ordering::Relaxed);
    });
}

// ---------------------------------------------------------------------------
// Entry
// ---------------------------------------------------------------------------

/// What a [`LegacyEntry`]'s clients speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyListen {
    /// SOCKS5 (no authentication, `CONNECT` only); the request names the
    /// destination.
    Socks5,
    /// Plain TCP: every connection goes to this destination (`host:port`).
    Plain(String),
}

/// Configuration of a [`LegacyEntry`].
#[derive(Debug, Clone)]
pub struct LegacyEntryConfig {
    /// Relays it publishes to and subscribes on.
    pub relays: Vec<RelayUrl>,
    /// The exit every stream goes to.
    pub exit: PublicKey,
    /// Where it listens (a loopback address; port 0 picks one).
    pub listen: SocketAddr,
    /// What its clients speak.
    pub mode: LegacyListen,
    /// How incoming events are reordered.
    pub reorder: Reorder,
    /// Time from a stream's `CONNECT` to its close.
    pub lifetime: Duration,
}

impl LegacyEntryConfig {
    /// SOCKS5 on a free loopback port, [`Reorder::default`], the
    /// reference's 10 s lifetime.
    pub fn new(relays: Vec<RelayUrl>, exit: PublicKey) -> Self {
        Self {
            relays,
            exit,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            mode: LegacyListen::Socks5,
            reorder: Reorder::default(),
            lifetime: REFERENCE_LIFETIME,
        }
    }
}

struct EntryShared {
    config: LegacyEntryConfig,
    /// Publishes every stream's events (they are signed per stream).
    client: Client,
    jitter: Jitter,
    stats: Arc<LegacyStats>,
}

/// An emulated reference entry (module docs): one stream to the exit per
/// accepted connection, with the reference's races.
pub struct LegacyEntry {
    addr: SocketAddr,
    shared: Arc<EntryShared>,
    task: JoinHandle<()>,
}

impl LegacyEntry {
    /// Connects to the relays and starts listening.
    ///
    /// # Errors
    ///
    /// A text when it cannot listen or reach a relay.
    pub async fn start(config: LegacyEntryConfig) -> Result<LegacyEntry, String> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let client = connect_client(Keys::generate(), &config.relays).await?;
        let shared = Arc::new(EntryShared {
            jitter: Jitter::new(config.reorder),
            config,
            client,
            stats: Arc::default(),
        });
        let task = tokio::spawn(entry_accept(listener, shared.clone()));
        Ok(LegacyEntry { addr, shared, task })
    }

    /// The address its clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it did so far.
    pub fn stats(&self) -> &LegacyStats {
        &self.shared.stats
    }
}

impl Drop for LegacyEntry {
    fn drop(&mut self) {
        // The accept task owns every stream's task: aborting it ends them all.
        self.task.abort();
    }
}

async fn entry_accept(listener: TcpListener, shared: Arc<EntryShared>) {
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            a = listener.accept() => match a {
                Ok((sock, _)) => {
                    let s = shared.clone();
                    streams.spawn(async move {
                        if let Err(e) = entry_stream(s, sock).await {
                            log::debug!("legacy entry: stream ended: {e}");
                        }
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}

/// The SOCKS5 handshake (no authentication, `CONNECT`), answered with
/// success at once as the reference does; returns the destination.
async fn socks5_accept(sock: &mut TcpStream) -> std::io::Result<String> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad SOCKS5 request");
    let mut head = [0u8; 2];
    sock.read_exact(&mut head).await?;
    let mut methods = vec![0u8; head[1] as usize];
    sock.read_exact(&mut methods).await?;
    if head[0] != 5 || !methods.contains(&0) {
        return Err(bad());
    }
    sock.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    sock.read_exact(&mut req).await?;
    if req[0] != 5 || req[1] != 1 {
        return Err(bad());
    }
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            sock.read_exact(&mut a).await?;
            std::net::Ipv4Addr::from(a).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            sock.read_exact(&mut len).await?;
            let mut name = vec![0u8; len[0] as usize];
            sock.read_exact(&mut name).await?;
            String::from_utf8(name).map_err(|_| bad())?
        }
        4 => {
            let mut a = [0u8; 16];
            sock.read_exact(&mut a).await?;
            format!("[{}]", std::net::Ipv6Addr::from(a))
        }
        _ => return Err(bad()),
    };
    let mut port = [0u8; 2];
    sock.read_exact(&mut port).await?;
    sock.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    Ok(format!("{host}:{}", u16::from_be_bytes(port)))
}

/// One stream: `CONNECT`, then the client's bytes as data events; the
/// subscription for answers starts only at the first of them.
async fn entry_stream(shared: Arc<EntryShared>, mut sock: TcpStream) -> Result<(), String> {
    let _ = sock.set_nodelay(true);
    let destination = match &shared.config.mode {
        LegacyListen::Socks5 => socks5_accept(&mut sock).await.map_err(|e| e.to_string())?,
        LegacyListen::Plain(d) => d.clone(),
    };
    let keys = Keys::generate();
    let exit = shared.config.exit;
    let relays = shared.config.relays.clone();
    let cipher = Cipher::derive(keys.secret_key(), &exit).map_err(|e| e.to_string())?;
    let key = uuid::Uuid::new_v4().to_string();
    let mut connect = Message::new(key.clone(), MessageType::Connect);
    connect.destination = destination.clone();
    let client = &shared.client;
    if !publish(client, &keys, &cipher, &exit, &relays, &connect).await {
        return Err("CONNECT not published".into());
    }
    shared.stats.streams.fetch_add(1, Ordering::Relaxed);
    let (mut rd, wr) = sock.into_split();
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    // Owned here: the subscription and every delivery end with the stream.
    let mut tasks = JoinSet::new();
    let pump = async {
        let mut buf = vec![0u8; LEGACY_CHUNK];
        let mut subscribed = false;
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !subscribed {
                // The reference subscribes at the first write, on a new
                // websocket, while that write is being published.
                subscribed = true;
                tasks.spawn(entry_answers(
                    shared.clone(),
                    keys.clone(),
                    cipher.clone(),
                    wr.clone(),
                ));
            }
            let m = data_message(&key, &destination, buf[..n].to_vec());
            if publish(client, &keys, &cipher, &exit, &relays, &m).await {
                shared.stats.data_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        // The client stopped writing; answers may still come until the lifetime.
        std::future::pending::<()>().await
    };
    let _ = tokio::time::timeout(shared.config.lifetime, pump).await;
    shared
        .stats
        .closed_by_lifetime
        .fetch_add(1, Ordering::Relaxed);
    tasks.abort_all();
    let _ = wr.lock().await.shutdown().await;
    Ok(())
}

/// The stream's subscription on a client of its own: every answer is
/// written to the client socket from a task of its own after a random delay.
async fn entry_answers(
    shared: Arc<EntryShared>,
    keys: Keys,
    cipher: Cipher,
    wr: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let me = keys.public_key();
    let Ok(client) = connect_client(keys, &shared.config.relays).await else {
        return;
    };
    let mut notes = client.notifications();
    let filter = Filter::new()
        .kind(stream_kind())
        .author(shared.config.exit)
        .pubkey(me)
        .since(Timestamp::now());
    if client.subscribe(filter, None).await.is_err() {
        return;
    }
    let mut deliveries = JoinSet::new();
    loop {
        let event = match notes.recv().await {
            Ok(RelayPoolNotification::Event { event, .. }) => event,
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => break,
        };
        shared.stats.events.fetch_add(1, Ordering::Relaxed);
        let Ok(msg) = cipher.open(&event.content) else {
            continue;
        };
        if !msg.kind.is_data() || msg.data.is_empty() {
            continue;
        }
        let delay = shared.jitter.next();
        let wr = wr.clone();
        let stats = shared.stats.clone();
        while deliveries.try_join_next().is_some() {}
        deliveries.spawn(async move {
            tokio::time::sleep(delay).await;
            if wr.lock().await.write_all(&msg.data).await.is_ok() {
                stats
                    .bytes_delivered
                    .fetch_add(msg.data.len() as u64, Ordering::Relaxed);
            }
        });
    }
    client.shutdown().await;
}
