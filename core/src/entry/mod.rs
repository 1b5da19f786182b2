//! The entry node: a local proxy (SOCKS5 and HTTP) that turns each client
//! TCP connection into an NWS stream to the exit its host names.
//!
//! [`Entry`] opens streams (routing a `.nostr`, `npub1…` or `nprofile1…`
//! host to that exit, never asking the system resolver; any other host,
//! when enabled, to a public exit, discovered or pinned, with the name left
//! for the exit to resolve); [`EntryProxy`]
//! listens on loopback and serves SOCKS5 ([`socks5`]) and HTTP proxy
//! ([`http`]) clients with it.

pub mod http;
mod reverse;
pub mod socks5;

use crate::sync::lock;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nostr::{Keys, PublicKey, RelayUrl, SubscriptionId};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::discovery::Directory;
use crate::driver::{pump, wait_open, Conn, End, Inbox, Link, OpenSlot, Stats};
use crate::engine::{Dialect, Output, Stream, StreamConfig};
use crate::names::{encode_nostr_domain, parse_host, ExitAddress, NameError};
use crate::protocol::{build_stream_event, Cipher, ErrorReason, Message, MessageType};
use crate::transport::{entry_stream_filter, Transport, TransportError};

pub use socks5::Credentials;

/// Configuration of an entry node.
#[derive(Debug, Clone)]
pub struct EntryConfig {
    /// Relays used for names that carry none (an `npub1…` host, say).
    pub relays: Vec<RelayUrl>,
    /// Where the SOCKS5 proxy listens (`None`: no SOCKS5).
    pub socks_listen: Option<SocketAddr>,
    /// Where the HTTP proxy listens (`None`: no HTTP proxy).
    pub http_listen: Option<SocketAddr>,
    /// Credentials clients must present (SOCKS5 RFC 1929, HTTP
    /// `Proxy-Authorization: Basic`); `None` accepts every local client.
    pub credentials: Option<Credentials>,
    /// How long to wait for a relay connection and then for the exit's answer.
    pub connect_timeout: Duration,
    /// How long a client may take to send its proxy request.
    pub handshake_timeout: Duration,
    /// A stream with no traffic either way for this long is aborted.
    pub idle_timeout: Duration,
    /// Exits known to speak only the legacy format (the reference implementation).
    pub legacy_exits: Vec<PublicKey>,
    /// Speak the legacy format to every exit.
    pub legacy_all: bool,
    /// Most client connections served at once. A client past the cap waits
    /// for a free slot for up to `handshake_timeout` (so a flood of silent
    /// clients delays others by at most that long); then it is refused with
    /// SOCKS5 reply 1 "general failure" or HTTP 503 and a log line. The
    /// connections already served are not disturbed.
    pub max_connections: usize,
    /// A persistent key for every stream (for exits that allow only listed
    /// entries); `None` (the default) uses a fresh key per stream, so
    /// streams cannot be linked to each other.
    pub keys: Option<Keys>,
    /// Per-stream limits.
    pub stream: StreamConfig,
    /// Send hosts that are not NWS names through public exits discovered
    /// from their kind-38333 announcements on `relays`.
    pub public_exits: bool,
    /// Send hosts that are not NWS names through this exit (a public exit
    /// named by npub or nprofile; its relays, else `relays`). Wins over
    /// `public_exits`.
    pub exit: Option<ExitAddress>,
    /// Reverse connect (`CONNECTR`): listen on this address, put it in
    /// every stream's `entryPublicAddress`, and take the stream's bytes
    /// over the plain TCP connection the exit makes to it (no Nostr, no
    /// encryption). Bound by [`EntryProxy::start`] or
    /// [`Entry::listen_public`].
    pub public_address: Option<SocketAddr>,
}

impl EntryConfig {
    /// Defaults: no listeners, no credentials, 10 s connect and handshake
    /// timeouts, 5 min idle timeout, 512 connections.
    pub fn new(relays: Vec<RelayUrl>) -> Self {
        Self {
            relays,
            socks_listen: None,
            http_listen: None,
            credentials: None,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            legacy_exits: Vec::new(),
            legacy_all: false,
            max_connections: 512,
            keys: None,
            stream: StreamConfig::default(),
            public_exits: false,
            exit: None,
            public_address: None,
        }
    }
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The host looks like an NWS name but does not decode.
    #[error("bad NWS name `{host}`: {source}")]
    BadName {
        /// The host as the client gave it.
        host: String,
        /// What is wrong with it.
        source: NameError,
    },
    /// The host is not an NWS name, and public exits are not enabled.
    #[error(
        "`{0}` is not an NWS name (.nostr, npub1…, nprofile1…) and public exits are not enabled"
    )]
    NotNws(String),
    /// No relay of the exit could be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The exit refused the stream.
    #[error("the exit refused the stream: {0}")]
    Refused(ErrorReason),
    /// The exit did not answer in time.
    #[error("the exit did not answer within {0:?}")]
    Timeout(Duration),
    /// Public exits are enabled but none has announced itself recently.
    #[error("no public exit announced within {0:?}")]
    NoPublicExit(Duration),
}

impl OpenError {
    /// The SOCKS5 reply code for this error (RFC 1928 §6).
    pub fn socks_reply(&self) -> socks5::ReplyCode {
        use socks5::ReplyCode as R;
        match self {
            Self::BadName { .. } => R::HostUnreachable,
            Self::NotNws(_) => R::ConnectionNotAllowed,
            Self::Transport(_) | Self::NoPublicExit(_) => R::NetworkUnreachable,
            Self::Timeout(_) => R::HostUnreachable,
            Self::Refused(reason) => match reason {
                ErrorReason::ConnectionRefused => R::ConnectionRefused,
                ErrorReason::HostUnreachable => R::HostUnreachable,
                ErrorReason::NetworkUnreachable => R::NetworkUnreachable,
                ErrorReason::NotAllowed => R::ConnectionNotAllowed,
                ErrorReason::Timeout => R::TtlExpired,
                _ => R::GeneralFailure,
            },
        }
    }

    /// The HTTP status for this error: 403 for a host that is not routed
    /// or that the exit is not allowed to reach, 504 when the exit did not
    /// answer, 502 otherwise (including failure to connect).
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NotNws(_) | Self::Refused(ErrorReason::NotAllowed) => 403,
            Self::Timeout(_) => 504,
            _ => 502,
        }
    }
}

/// Opens NWS streams; shared by the proxy listeners and direct users.
#[derive(Clone)]
pub struct Entry {
    config: Arc<EntryConfig>,
    transport: Transport,
    stats: Arc<Stats>,
    subscriptions: Arc<ExitSubscriptions>,
    /// With a persistent key: the demultiplexer of its streams.
    demux: Option<Arc<Demux>>,
    /// Exits that answered a version-2 `CONNECT` (bounded): streams to them
    /// send their first bytes inside the `CONNECT` (0-RTT).
    v2_exits: Arc<Mutex<HashSet<PublicKey>>>,
    /// With public exits: the exits announced recently.
    directory: Option<Arc<Directory>>,
    /// With a public address: the listener for the exits' reverse connections.
    reverse: Arc<std::sync::OnceLock<Arc<reverse::Reverse>>>,
    /// Stops the background tasks on shutdown.
    cancel: CancellationToken,
}

/// Most exits remembered as speaking version 2; the set starts over when full.
const V2_EXITS_REMEMBERED: usize = 1024;

impl Entry {
    /// Creates an entry over its own relay pool and starts connecting to the
    /// configured relays (in the background).
    pub async fn new(config: EntryConfig) -> Result<Self, TransportError> {
        let transport = Transport::new();
        transport.add_relays(&config.relays).await?;
        let demux = config
            .keys
            .clone()
            .map(|keys| Demux::start(&transport, keys));
        let cancel = CancellationToken::new();
        let directory = (config.public_exits && config.exit.is_none())
            .then(|| Directory::start(&transport, config.relays.clone(), cancel.clone()));
        Ok(Self {
            config: Arc::new(config),
            transport,
            stats: Arc::new(Stats::default()),
            subscriptions: Arc::default(),
            demux,
            v2_exits: Arc::default(),
            directory,
            reverse: Arc::default(),
            cancel,
        })
    }

    /// Listens on `addr` for the exits' reverse connections (`CONNECTR`);
    /// from then on every stream is opened with `CONNECTR` and
    /// `entryPublicAddress` = the bound address. Returns that address.
    ///
    /// # Errors
    ///
    /// [`EntryError::Bind`] if the address cannot be bound, or if a public
    /// address is already set.
    pub async fn listen_public(&self, addr: SocketAddr) -> Result<SocketAddr, EntryError> {
        let rev = reverse::Reverse::bind(addr, self.config.handshake_timeout, self.cancel.clone())
            .await
            .map_err(|source| EntryError::Bind { addr, source })?;
        let local = rev.addr();
        self.reverse.set(rev).map_err(|_| EntryError::Bind {
            addr,
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a public address is already set",
            ),
        })?;
        Ok(local)
    }

    /// The exits announced recently (with public exits enabled), in the
    /// order the next stream would try them.
    pub fn public_exits(&self) -> Vec<PublicKey> {
        self.directory
            .as_ref()
            .map(|d| d.candidates())
            .unwrap_or_default()
    }

    /// Counters of this entry's streams.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Number of relays connected and known.
    pub async fn relay_counts(&self) -> (usize, usize) {
        self.transport.relay_counts().await
    }

    /// Stream events published and received (see [`Transport::event_counts`]).
    pub fn event_counts(&self) -> (u64, u64) {
        self.transport.event_counts()
    }

    /// Opens a stream to `host:port`.
    ///
    /// An NWS name (`.nostr`, npub, nprofile) is decoded locally and names
    /// the exit. Any other host goes, unresolved, to the pinned exit
    /// (`exit`) or to a public exit from the directory (`public_exits`;
    /// waits up to `connect_timeout` for a first announcement, and tries the
    /// next exit, up to three, when one cannot be reached or is full);
    /// without either it is refused ([`OpenError::NotNws`]). No DNS query
    /// is made here.
    ///
    /// Generates a fresh ephemeral key for the stream (unless the entry has
    /// a persistent key), subscribes for the exit's answers, publishes
    /// `CONNECT` and (version 2) waits for `CONNECTED` or `ERROR`. With a
    /// public address, sends `CONNECTR` and waits for the exit's TCP
    /// connection instead.
    pub async fn open(&self, host: &str, port: u16) -> Result<NwsStream, OpenError> {
        self.open_early(host, port, &[]).await.map(|(s, _)| s)
    }

    /// Like [`Entry::open`], offering the stream's first bytes (an HTTP
    /// request head, say). Toward an exit that already answered this entry
    /// in version 2, up to one segment of them rides inside the `CONNECT`
    /// (0-RTT: the request reaches the backend one relay round trip
    /// sooner). Returns the stream and how many of `early` were sent; pass
    /// the rest to [`NwsStream::run`].
    pub async fn open_early(
        &self,
        host: &str,
        port: u16,
        early: &[u8],
    ) -> Result<(NwsStream, usize), OpenError> {
        let bad_name = |source| OpenError::BadName {
            host: host.to_string(),
            source,
        };
        match parse_host(host) {
            Ok(Some(exit)) => {
                // The reference exit routes only `.nostr` destinations to its backend.
                let label = encode_nostr_domain(&exit.public_key, &[]).map_err(bad_name)?;
                self.open_via(&exit, format!("{label}:{port}"), early).await
            }
            Ok(None) => self.open_public(host, port, early).await,
            Err(source) => {
                log::warn!("cannot route `{host}`: {source}");
                Err(bad_name(source))
            }
        }
    }

    /// Opens a stream to an ordinary host through a public exit.
    async fn open_public(
        &self,
        host: &str,
        port: u16,
        early: &[u8],
    ) -> Result<(NwsStream, usize), OpenError> {
        let destination = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if let Some(exit) = &self.config.exit {
            return self.open_via(exit, destination, early).await;
        }
        let Some(directory) = &self.directory else {
            return Err(OpenError::NotNws(host.to_string()));
        };
        let timeout = self.config.connect_timeout;
        let candidates = directory.wait_candidates(timeout).await;
        let mut last = OpenError::NoPublicExit(timeout);
        for exit in candidates.into_iter().take(3) {
            let address = ExitAddress {
                public_key: exit,
                relays: Vec::new(),
            };
            match self.open_via(&address, destination.clone(), early).await {
                Ok(s) => return Ok(s),
                Err(
                    e @ (OpenError::Transport(_)
                    | OpenError::Timeout(_)
                    | OpenError::Refused(ErrorReason::TooManyStreams)),
                ) => {
                    log::info!("public exit {exit} failed ({e}); trying the next one");
                    directory.mark_failed(exit);
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Opens a stream through `exit` with `destination` in its `CONNECT`,
    /// `early` bytes inside it when the exit is known to speak version 2;
    /// returns the stream and how many of `early` it sent.
    async fn open_via(
        &self,
        exit: &ExitAddress,
        destination: String,
        early: &[u8],
    ) -> Result<(NwsStream, usize), OpenError> {
        let relays = if exit.relays.is_empty() {
            self.config.relays.clone()
        } else {
            exit.relays.clone()
        };
        let timeout = self.config.connect_timeout;
        self.transport.ensure_connected(&relays, timeout).await?;

        let key = uuid::Uuid::new_v4().to_string();
        if let Some(rev) = self.reverse.get() {
            let stream = self
                .open_reverse(rev, exit, relays, key, destination)
                .await?;
            return Ok((stream, 0));
        }
        let (keys, cipher, mut inbox, guard) = self.answers(exit, &relays, &key).await?;

        let dialect = if self.is_legacy_exit(&exit.public_key) {
            Dialect::Legacy
        } else {
            Dialect::V2
        };
        let known_v2 = lock(&self.v2_exits).contains(&exit.public_key);
        let early = if dialect == Dialect::V2 && known_v2 {
            early
        } else {
            &[]
        };
        let (mut engine, taken) = Stream::open_early(
            self.config.stream.clone(),
            key,
            destination,
            dialect,
            early,
            Instant::now(),
        );
        let link = Link {
            transport: self.transport.clone(),
            keys,
            peer: exit.public_key,
            cipher,
            relays,
        };
        if dialect == Dialect::Legacy {
            // A legacy exit drops data that overtakes its CONNECT: wait for
            // the relays' OK (bounded) before any data goes out.
            if let Some(Output::Publish(connect)) = engine.poll_output() {
                self.publish_legacy_connect(&link, &connect).await?;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        match wait_open(&mut engine, &link, &mut inbox, deadline).await {
            Ok(()) => {}
            Err(Some(reason)) => return Err(OpenError::Refused(reason)),
            Err(None) => return Err(OpenError::Timeout(timeout)),
        }
        {
            let mut known = lock(&self.v2_exits);
            if engine.dialect() == Dialect::V2 {
                if known.len() >= V2_EXITS_REMEMBERED {
                    known.clear();
                }
                known.insert(exit.public_key);
            } else {
                known.remove(&exit.public_key);
            }
        }
        self.stats
            .bytes_sent
            .fetch_add(taken as u64, Ordering::Relaxed);
        let stream = NwsStream {
            inner: Inner::Nostr {
                engine,
                link,
                inbox,
                guard,
                idle_timeout: self.config.idle_timeout,
            },
            stats: self.stats.clone(),
        };
        Ok((stream, taken))
    }

    /// Whether `exit` gets the legacy format (`--legacy`, `--legacy-exit`).
    fn is_legacy_exit(&self, exit: &PublicKey) -> bool {
        self.config.legacy_all || self.config.legacy_exits.contains(exit)
    }

    /// The key, cipher and inbox for a stream's answers from `exit`, and
    /// the guard that keeps its route and subscription while it lives: a
    /// fresh key per stream, or the persistent key's demultiplexer.
    async fn answers(
        &self,
        exit: &ExitAddress,
        relays: &[RelayUrl],
        key: &str,
    ) -> Result<StreamAnswers, OpenError> {
        let pool_err = |e: crate::protocol::CodecError| TransportError::Pool(e.to_string());
        let answers: StreamAnswers = match &self.demux {
            None => {
                // A fresh key per stream: relays and exits cannot link streams.
                let keys = Keys::generate();
                let cipher =
                    Cipher::derive(keys.secret_key(), &exit.public_key).map_err(pool_err)?;
                let rx = self.transport.route(keys.public_key());
                let mut guard = RouteGuard {
                    transport: self.transport.clone(),
                    recipient: keys.public_key(),
                    keys: Arc::default(),
                };
                guard.keys = self
                    .subscriptions
                    .add(&self.transport, exit.public_key, relays, keys.public_key())
                    .await?;
                let inbox = Inbox::Events {
                    rx,
                    cipher: cipher.clone(),
                    peer: exit.public_key,
                };
                (keys, cipher, inbox, Box::new(guard))
            }
            Some(demux) => {
                let cipher = demux.cipher_for(&exit.public_key).map_err(pool_err)?;
                let rx = demux.register(key);
                self.subscriptions
                    .add(
                        &self.transport,
                        exit.public_key,
                        relays,
                        demux.keys.public_key(),
                    )
                    .await?;
                let guard = DemuxGuard {
                    demux: demux.clone(),
                    key: key.to_string(),
                };
                (
                    demux.keys.clone(),
                    cipher,
                    Inbox::Messages(rx),
                    Box::new(guard),
                )
            }
        };
        Ok(answers)
    }

    /// Opens a stream by reverse connect: publishes `CONNECTR` and waits
    /// for the exit to dial the public address with the stream's key.
    ///
    /// Toward an exit not marked legacy the `CONNECTR` carries `version: 2`,
    /// and an `ERROR` the exit sends back (refused entry, destination or
    /// entry address that failed) ends the wait at once with
    /// [`OpenError::Refused`]; a legacy exit never answers, so its failures
    /// are an [`OpenError::Timeout`] after `connect_timeout`.
    async fn open_reverse(
        &self,
        rev: &reverse::Reverse,
        exit: &ExitAddress,
        relays: Vec<RelayUrl>,
        key: String,
        destination: String,
    ) -> Result<NwsStream, OpenError> {
        let (keys, cipher, mut inbox, _guard) = self.answers(exit, &relays, &key).await?;
        let link = Link {
            transport: self.transport.clone(),
            keys,
            peer: exit.public_key,
            cipher,
            relays,
        };
        let mut msg = Message::new(key.clone(), MessageType::ConnectReverse);
        msg.destination = destination;
        msg.entry_public_address = rev.addr().to_string();
        if !self.is_legacy_exit(&exit.public_key) {
            msg.version = Some(crate::protocol::PROTOCOL_VERSION);
        }
        let waiting = rev.expect(&key);
        link.send(&msg).await?;
        let timeout = self.config.connect_timeout;
        let refusal = async {
            while let Some(m) = inbox.next().await {
                if m.key == key && m.kind == MessageType::Error {
                    return ErrorReason::parse(m.reason.as_deref().unwrap_or(""));
                }
            }
            std::future::pending().await
        };
        let socket = tokio::select! {
            r = tokio::time::timeout(timeout, waiting) => match r {
                Ok(Ok(s)) => s,
                _ => {
                    rev.forget(&key);
                    return Err(OpenError::Timeout(timeout));
                }
            },
            reason = refusal => {
                rev.forget(&key);
                log::info!("stream {key}: the exit refused the reverse connect ({reason})");
                return Err(OpenError::Refused(reason));
            }
        };
        log::debug!("stream {key}: reverse connection from the exit");
        Ok(NwsStream {
            inner: Inner::Reverse { key, socket },
            stats: self.stats.clone(),
        })
    }

    async fn publish_legacy_connect(
        &self,
        link: &Link,
        connect: &Message,
    ) -> Result<(), OpenError> {
        let pool = |e: crate::protocol::CodecError| TransportError::Pool(e.to_string());
        let content = link.cipher.seal(connect).map_err(pool)?;
        let event = build_stream_event(&link.keys, &link.peer, content).map_err(pool)?;
        let report = self
            .transport
            .publish_confirmed(&event, &link.relays, Duration::from_secs(2))
            .await?;
        if report.accepted.is_empty() && report.unknown.is_empty() {
            let why: Vec<String> = report
                .rejected
                .iter()
                .map(|(u, m)| format!("{u}: {m}"))
                .collect();
            return Err(TransportError::Pool(format!(
                "relays rejected CONNECT ({})",
                why.join("; ")
            ))
            .into());
        }
        Ok(())
    }

    /// Stops discovery and the public-address listener, and disconnects
    /// from every relay.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.transport.shutdown().await;
    }
}

/// What [`Entry::answers`] gives a stream: its key, cipher, inbox, and the
/// guard that keeps its route while it lives.
type StreamAnswers = (Keys, Cipher, Inbox, Box<dyn std::any::Any + Send>);

/// Removes a stream's route, and its key from the shared subscription, when
/// the stream is dropped.
struct RouteGuard {
    transport: Transport,
    recipient: PublicKey,
    keys: Arc<Mutex<HashSet<PublicKey>>>,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.transport.unroute(&self.recipient);
        // The relays keep the stale key until the next stream to this exit
        // re-sends the subscription: an extra REQ per close buys nothing.
        lock(&self.keys).remove(&self.recipient);
    }
}

/// Streams of an entry with a persistent key share one recipient key, so
/// the router hands all their events to one channel; this task opens them
/// (one conversation key per exit) and passes each message to its stream by
/// the message's stream key.
struct Demux {
    keys: Keys,
    streams: Mutex<HashMap<String, tokio::sync::mpsc::Sender<Message>>>,
    ciphers: Mutex<HashMap<PublicKey, Cipher>>,
}

impl Demux {
    fn start(transport: &Transport, keys: Keys) -> Arc<Self> {
        let demux = Arc::new(Self {
            keys,
            streams: Mutex::default(),
            ciphers: Mutex::default(),
        });
        let mut rx = transport.route(demux.keys.public_key());
        let weak = Arc::downgrade(&demux);
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let Some(demux) = weak.upgrade() else { return };
                let cipher = match demux.cipher_for(&ev.pubkey) {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("event {} from {}: {e}: dropped", ev.id, ev.pubkey);
                        continue;
                    }
                };
                match cipher.open(&ev.content) {
                    Ok(msg) => match lock(&demux.streams).get(&msg.key) {
                        Some(tx) => crate::driver::offer(tx, msg),
                        None => log::debug!("message for unknown stream {}: dropped", msg.key),
                    },
                    Err(e) => log::warn!("event {} from {}: {e}: dropped", ev.id, ev.pubkey),
                }
            }
        });
        demux
    }

    fn cipher_for(&self, exit: &PublicKey) -> Result<Cipher, crate::protocol::CodecError> {
        let mut ciphers = lock(&self.ciphers);
        if let Some(c) = ciphers.get(exit) {
            return Ok(c.clone());
        }
        let c = Cipher::derive(self.keys.secret_key(), exit)?;
        ciphers.insert(*exit, c.clone());
        Ok(c)
    }

    fn register(&self, key: &str) -> tokio::sync::mpsc::Receiver<Message> {
        let (tx, rx) = tokio::sync::mpsc::channel(crate::driver::STREAM_INBOX);
        lock(&self.streams).insert(key.to_string(), tx);
        rx
    }
}

/// Removes a stream from the demultiplexer when the stream is dropped.
struct DemuxGuard {
    demux: Arc<Demux>,
    key: String,
}

impl Drop for DemuxGuard {
    fn drop(&mut self) {
        lock(&self.demux.streams).remove(&self.key);
    }
}

/// One subscription per exit (and relay set) for the answers to all of the
/// entry's streams to it: `authors [exit]`, `#p [every open stream's key]`.
///
/// Relays cap subscriptions per connection (nostr-rs-relay at 32), so one
/// REQ per stream would fail under load; instead each new stream re-sends
/// the exit's REQ with the same id and the current keys, which replaces the
/// filter (NIP-01) before the stream's `CONNECT` goes out on the same
/// connection.
#[derive(Default)]
struct ExitSubscriptions {
    by_exit: tokio::sync::Mutex<HashMap<(PublicKey, Vec<RelayUrl>), ExitSubscription>>,
}

struct ExitSubscription {
    id: SubscriptionId,
    keys: Arc<Mutex<HashSet<PublicKey>>>,
}

impl ExitSubscriptions {
    /// Adds `key` to the exit's subscription and re-sends it; returns the
    /// key set the stream's guard removes itself from.
    async fn add(
        &self,
        transport: &Transport,
        exit: PublicKey,
        relays: &[RelayUrl],
        key: PublicKey,
    ) -> Result<Arc<Mutex<HashSet<PublicKey>>>, TransportError> {
        // Held across the REQ so two opens cannot send their filters out of order.
        let mut map = self.by_exit.lock().await;
        let sub = map
            .entry((exit, relays.to_vec()))
            .or_insert_with(|| ExitSubscription {
                id: SubscriptionId::generate(),
                keys: Arc::new(Mutex::new(HashSet::new())),
            });
        let filter = {
            let mut keys = lock(&sub.keys);
            keys.insert(key);
            entry_stream_filter(&exit, keys.iter().copied())
        };
        transport
            .subscribe_with_id(sub.id.clone(), filter, relays)
            .await?;
        Ok(sub.keys.clone())
    }
}

/// An open NWS stream, ready to be joined to a local socket with
/// [`NwsStream::run`].
pub struct NwsStream {
    inner: Inner,
    stats: Arc<Stats>,
}

// One per stream, moved once into `run`: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum Inner {
    /// Bytes travel as Nostr events.
    Nostr {
        engine: Stream,
        link: Link,
        inbox: Inbox,
        guard: Box<dyn std::any::Any + Send>,
        idle_timeout: Duration,
    },
    /// `CONNECTR`: bytes travel over the exit's plain TCP connection.
    Reverse { key: String, socket: TcpStream },
}

impl NwsStream {
    /// The stream's key (a UUID string).
    pub fn key(&self) -> &str {
        match &self.inner {
            Inner::Nostr { engine, .. } => engine.key(),
            Inner::Reverse { key, .. } => key,
        }
    }

    /// Whether the exit speaks version 2 on this stream (a reverse
    /// connection counts as legacy: raw bytes, no stream protocol).
    pub fn dialect(&self) -> Dialect {
        match &self.inner {
            Inner::Nostr { engine, .. } => engine.dialect(),
            Inner::Reverse { .. } => Dialect::Legacy,
        }
    }

    /// Copies bytes both ways between `socket` and the stream until both
    /// directions are closed, the stream is aborted, or it idles out.
    /// `first` is sent before anything read from `socket`.
    pub async fn run<S>(self, socket: S, first: Vec<u8>) -> Result<(), ErrorReason>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let slot = OpenSlot::new(self.stats.clone());
        let (engine, link, inbox, guard, idle_timeout) = match self.inner {
            Inner::Nostr {
                engine,
                link,
                inbox,
                guard,
                idle_timeout,
            } => (engine, link, inbox, guard, idle_timeout),
            Inner::Reverse {
                socket: mut remote, ..
            } => {
                let mut socket = socket;
                let copied = async {
                    remote.write_all(&first).await?;
                    tokio::io::copy_bidirectional(&mut socket, &mut remote).await
                };
                let result = copied.await;
                drop(slot);
                return match result {
                    Ok((up, down)) => {
                        self.stats
                            .bytes_sent
                            .fetch_add(up + first.len() as u64, Ordering::Relaxed);
                        self.stats.bytes_received.fetch_add(down, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(_) => Err(ErrorReason::Other("connection-reset".into())),
                };
            }
        };
        let conn = Conn {
            engine,
            link,
            inbox,
            keep: guard,
        };
        let end = pump(conn, socket, first, idle_timeout, slot).await;
        match end {
            End::Closed => Ok(()),
            End::Aborted(r) => Err(r),
        }
    }
}

/// Errors starting the entry proxy.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The relays could not be used.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// A running entry proxy with its SOCKS5 and HTTP listeners.
pub struct EntryProxy {
    entry: Entry,
    socks_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Accept loops still running.
    listening: Arc<AtomicUsize>,
}

#[derive(Clone, Copy)]
enum Protocol {
    Socks5,
    Http,
}

impl EntryProxy {
    /// Binds the configured listeners and starts serving. On error nothing
    /// is left running.
    pub async fn start(config: EntryConfig) -> Result<Self, EntryError> {
        let entry = Entry::new(config.clone()).await?;
        if let Some(addr) = config.public_address {
            if let Err(e) = entry.listen_public(addr).await {
                entry.shutdown().await;
                return Err(e);
            }
        }
        let cancel = CancellationToken::new();
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let listening = Arc::new(AtomicUsize::new(0));
        let mut proxy = Self {
            entry,
            socks_addr: None,
            http_addr: None,
            cancel,
            tasks: Vec::new(),
            listening,
        };
        for (addr, proto) in [
            (config.socks_listen, Protocol::Socks5),
            (config.http_listen, Protocol::Http),
        ] {
            let Some(addr) = addr else { continue };
            match proxy.listen(addr, proto, limit.clone()).await {
                Ok(local) => match proto {
                    Protocol::Socks5 => proxy.socks_addr = Some(local),
                    Protocol::Http => proxy.http_addr = Some(local),
                },
                Err(e) => {
                    proxy.stop().await;
                    return Err(e);
                }
            }
        }
        Ok(proxy)
    }

    async fn listen(
        &mut self,
        addr: SocketAddr,
        proto: Protocol,
        limit: Arc<Semaphore>,
    ) -> Result<SocketAddr, EntryError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| EntryError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| EntryError::Bind { addr, source })?;
        self.listening.fetch_add(1, Ordering::Relaxed);
        self.tasks.push(tokio::spawn(accept_loop(
            listener,
            proto,
            self.entry.clone(),
            self.cancel.clone(),
            limit,
            self.listening.clone(),
        )));
        Ok(local)
    }

    /// Whether every configured listener is still accepting connections.
    /// False once the OS has taken a listening socket away (iOS does so in
    /// the background); start the proxy again then.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed) == self.tasks.len()
    }

    /// Where the SOCKS5 proxy listens.
    pub fn socks_addr(&self) -> Option<SocketAddr> {
        self.socks_addr
    }

    /// Where the HTTP proxy listens.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Where the entry listens for exits' reverse connections (`CONNECTR`).
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.entry.reverse.get().map(|r| r.addr())
    }

    /// The entry the proxy uses, for opening streams directly.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Stops listening, ends every client connection, disconnects relays.
    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.entry.shutdown().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    proto: Protocol,
    entry: Entry,
    cancel: CancellationToken,
    limit: Arc<Semaphore>,
    listening: Arc<AtomicUsize>,
) {
    // Counts this loop as listening until it returns, whatever the reason.
    struct Listening(Arc<AtomicUsize>);
    impl Drop for Listening {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _listening = Listening(listening);
    let mut failures = 0u32;
    // Clients past the cap waiting for a slot; beyond these they are closed.
    let waiting = Arc::new(Semaphore::new(WAITING_AT_MOST));
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    failures = 0;
                    x
                }
                Err(e) if listener_is_gone(&e) => {
                    log::warn!("listener closed by the system ({e}); start the proxy again");
                    return;
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, bounded.
                    failures += 1;
                    log::warn!("accept failed: {e}");
                    let wait = Duration::from_millis(50 << failures.min(6));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => return,
                    }
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let _ = sock.set_nodelay(true);
        let entry = entry.clone();
        let cancel = cancel.clone();
        let ready = limit.clone().try_acquire_owned().ok();
        let wait = match ready {
            Some(_) => None,
            None => match waiting.clone().try_acquire_owned() {
                Ok(w) => Some(w),
                Err(_) => {
                    log::warn!("client {peer}: too many clients waiting for a slot, closed");
                    continue;
                }
            },
        };
        let limit = limit.clone();
        tokio::spawn(async move {
            let permit = match ready {
                Some(p) => p,
                None => {
                    let slot = tokio::select! {
                        p = tokio::time::timeout(
                            entry.config.handshake_timeout,
                            limit.acquire_owned(),
                        ) => p.ok().and_then(Result::ok),
                        _ = cancel.cancelled() => return,
                    };
                    drop(wait);
                    match slot {
                        Some(p) => p,
                        None => {
                            log::warn!(
                                "client {peer}: {} connections already served, refused",
                                entry.config.max_connections
                            );
                            tokio::select! {
                                _ = refuse(&entry, sock, proto) => {}
                                _ = cancel.cancelled() => {}
                            }
                            return;
                        }
                    }
                }
            };
            let serve = async {
                match proto {
                    Protocol::Socks5 => serve_socks(&entry, sock).await,
                    Protocol::Http => serve_http(&entry, sock).await,
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = cancel.cancelled() => {}
            }
            log::trace!("client {peer} done");
            drop(permit);
        });
    }
}

/// Whether an accept error means the listening socket itself is gone
/// (closed or invalidated by the OS) rather than a passing condition.
fn listener_is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_codes::EBADF | libc_codes::EINVAL | libc_codes::ENOTSOCK)
    )
}

/// The POSIX error numbers `listener_is_gone` looks for (same values on
/// Linux, Android, macOS and iOS).
mod libc_codes {
    pub const EBADF: i32 = 9;
    pub const EINVAL: i32 = 22;
    pub const ENOTSOCK: i32 = if cfg!(any(target_os = "macos", target_os = "ios")) {
        38
    } else {
        88
    };
}

/// Clients past `max_connections` waiting for a slot at once; more are
/// closed unanswered.
const WAITING_AT_MOST: usize = 256;

/// Answers a client past the connection cap: reads its request (credentials
/// are checked as usual, within the handshake timeout) and refuses it with
/// SOCKS5 reply 1 "general failure" or HTTP 503.
async fn refuse(entry: &Entry, mut sock: TcpStream, proto: Protocol) {
    let creds = entry.config.credentials.as_ref();
    let deadline = entry.config.handshake_timeout;
    match proto {
        Protocol::Socks5 => {
            if let Ok(Ok(_)) =
                tokio::time::timeout(deadline, socks5::accept(&mut sock, creds)).await
            {
                let _ = socks5::reply(&mut sock, socks5::ReplyCode::GeneralFailure).await;
            }
        }
        Protocol::Http => {
            if let Ok(Ok(_)) =
                tokio::time::timeout(deadline, http::read_request(&mut sock, creds)).await
            {
                let msg = "too many connections to the proxy; try again later";
                let _ = http::write_error(&mut sock, 503, msg).await;
            }
        }
    }
}

async fn serve_socks(entry: &Entry, mut sock: TcpStream) {
    let creds = entry.config.credentials.as_ref();
    let target = match tokio::time::timeout(
        entry.config.handshake_timeout,
        socks5::accept(&mut sock, creds),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            log::info!("SOCKS5 client refused: {e}");
            return;
        }
        Err(_) => {
            log::info!("SOCKS5 client too slow to send its request");
            return;
        }
    };
    match entry.open(&target.host(), target.port()).await {
        Err(e) => {
            log::info!("SOCKS5 {target}: {e}");
            let _ = socks5::reply(&mut sock, e.socks_reply()).await;
        }
        Ok(stream) => {
            if socks5::reply(&mut sock, socks5::ReplyCode::Succeeded)
                .await
                .is_ok()
            {
                if let Err(r) = stream.run(sock, Vec::new()).await {
                    log::debug!("SOCKS5 {target}: stream ended: {r}");
                }
            }
        }
    }
}

async fn serve_http(entry: &Entry, mut sock: TcpStream) {
    let creds = entry.config.credentials.as_ref();
    let req = match tokio::time::timeout(
        entry.config.handshake_timeout,
        http::read_request(&mut sock, creds),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            log::info!("HTTP proxy client refused: {e}");
            if !matches!(
                e,
                http::HttpProxyError::Io(_) | http::HttpProxyError::ClosedEarly
            ) {
                let _ = http::write_error(&mut sock, e.status(), &e.to_string()).await;
            }
            return;
        }
        Err(_) => {
            log::info!("HTTP proxy client too slow to send its request");
            let _ = http::write_error(&mut sock, 408, "request head not received in time").await;
            return;
        }
    };
    let (host, port) = (req.host().to_string(), req.port());
    // A forwarded request is known before the stream opens: its head can
    // ride in the CONNECT (0-RTT). A CONNECT client waits for our 200.
    let (connect, mut first) = match req {
        http::ProxyRequest::Connect { leftover, .. } => (true, leftover),
        http::ProxyRequest::Forward {
            mut head, leftover, ..
        } => {
            head.extend_from_slice(&leftover);
            (false, head)
        }
    };
    let early: &[u8] = if connect { &[] } else { &first };
    let stream = match entry.open_early(&host, port, early).await {
        Ok((s, sent)) => {
            first.drain(..sent);
            s
        }
        Err(e) => {
            log::info!("HTTP proxy {host}:{port}: {e}");
            let _ = http::write_error(&mut sock, e.http_status(), &e.to_string()).await;
            return;
        }
    };
    if connect && http::write_connect_established(&mut sock).await.is_err() {
        return;
    }
    if let Err(r) = stream.run(sock, first).await {
        log::debug!("HTTP proxy {host}:{port}: stream ended: {r}");
    }
}
