//! The exit node: it listens on its relays for stream events addressed to
//! its key and turns each stream into a TCP connection.
//!
//! Where a stream goes ([`ExitConfig`]):
//! * a **private-service** exit dials its one configured backend, whatever
//!   the `CONNECT`'s destination says;
//! * a **public** exit (`public`) also dials ordinary `host:port`
//!   destinations, resolving names itself and checking every address
//!   against its [`EgressPolicy`]; `.nostr`/npub/nprofile destinations still
//!   go to its backend;
//! * with an **HTTPS front** (`https`), a stream whose destination port is
//!   the front's port (or every stream, without a backend) goes to an
//!   in-process TLS terminator that serves the exit's
//!   [`FrontCertificate`] and forwards the decrypted bytes to the front's
//!   target, as the reference implementation's `HTTPS_PORT`/`HTTPS_TARGET`.
//!
//! A `CONNECTR` (reverse connect, `PROTOCOL.md`) makes the exit dial the
//! entry's public address, write the stream's 36-character key, wait for
//! one byte `0x01`, and copy raw bytes between that connection and the
//! destination: plain TCP, no Nostr, no encryption added.
//!
//! Each entry author gets one conversation key, derived on its first
//! `CONNECT` and kept while it has streams open; every stream runs in its own
//! task through the shared [`driver`](crate::driver).

use crate::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nostr::{Event, Filter, Keys, Kind, PublicKey, RelayUrl};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::demux::{Demux, Routed};
use crate::discovery::{
    announcement_event, ANNOUNCE_INTERVAL, ANNOUNCE_LIFETIME, WITHDRAWAL_LIFETIME,
};
use crate::driver::{pump, Conn, Inbox};
use crate::engine::{Stream, StreamConfig};
use crate::link::Link;
use crate::names::{encode_nostr_domain, is_nws_host, NameError};
use crate::policy::EgressPolicy;
use crate::protocol::{
    Cipher, ErrorReason, Message, MessageType, KIND_EXIT_CERTIFICATE, KIND_EXIT_KEY_BACKUP,
};
use crate::stats::{OpenSlot, Stats};
use crate::tls::{front_domains, FrontCertificate, TlsError};
use crate::transport::{exit_filter, Transport, TransportError};

/// The HTTPS front of an exit: TLS for its `.nostr` names, terminated in
/// the exit, the decrypted bytes forwarded to `target`.
#[derive(Debug, Clone)]
pub struct HttpsFront {
    /// Destination port that selects the front (the port in the
    /// application's `https://<name>.nostr:<port>/` URL; 443 by default).
    pub port: u16,
    /// Where the decrypted bytes go, `host:port` (plain TCP, typically the
    /// HTTP backend).
    pub target: String,
}

/// Configuration of an exit node.
#[derive(Debug, Clone)]
pub struct ExitConfig {
    /// Relays the exit listens and answers on.
    pub relays: Vec<RelayUrl>,
    /// The exit's long-term keys (its public key is its address).
    pub keys: Keys,
    /// The backend that streams to the exit's own names are dialled to
    /// (`host:port`); for a private-service exit, every stream. Empty: none
    /// (a public exit or an HTTPS front alone).
    pub backend: String,
    /// Public exit: dial ordinary `host:port` destinations (through
    /// `egress`) and announce the exit (kind 38333) every 10 s.
    pub public: bool,
    /// Which destinations a public exit may dial, and which entry public
    /// addresses a `CONNECTR` may make it dial.
    pub egress: EgressPolicy,
    /// Optional HTTPS front.
    pub https: Option<HttpsFront>,
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
            public: false,
            egress: EgressPolicy::default(),
            https: None,
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
    /// The HTTPS front's certificate could not be made, restored or used.
    #[error("HTTPS front: {0}")]
    Tls(#[from] TlsError),
    /// Nothing to dial: no backend, not public, no HTTPS front.
    #[error("the exit has nothing to serve: give a backend, the public mode or an HTTPS front")]
    NothingToServe,
}

/// A running exit node. Dropping it does not stop it; call [`ExitNode::stop`].
pub struct ExitNode {
    public_key: PublicKey,
    relays: Vec<RelayUrl>,
    transport: Transport,
    cancel: CancellationToken,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
    certificate: Option<FrontCertificate>,
    /// A public exit's announcing task and key, to withdraw the
    /// announcement on [`ExitNode::stop`].
    announcing: Option<(tokio::task::JoinHandle<()>, Keys)>,
}

/// How long the exit waits for its own certificate events at start.
const CERTIFICATE_FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The front certificate: the one the exit published earlier (its newest
/// kind-38334 and kind-38335 events on its relays), or a new one for its
/// `.nostr` names, published before it is used.
async fn front_certificate(
    transport: &Transport,
    keys: &Keys,
    relays: &[RelayUrl],
) -> Result<FrontCertificate, ExitError> {
    let own = keys.public_key();
    let filter = Filter::new()
        .author(own)
        .kinds([
            Kind::Custom(KIND_EXIT_CERTIFICATE),
            Kind::Custom(KIND_EXIT_KEY_BACKUP),
        ])
        .pubkey(own);
    match transport
        .fetch(filter, relays, CERTIFICATE_FETCH_TIMEOUT)
        .await
    {
        Ok(events) => {
            // Newest first: the first of each kind is the current one.
            let cert = events
                .iter()
                .find(|e| e.kind.as_u16() == KIND_EXIT_CERTIFICATE);
            let key = events
                .iter()
                .find(|e| e.kind.as_u16() == KIND_EXIT_KEY_BACKUP);
            if let (Some(cert), Some(key)) = (cert, key) {
                match FrontCertificate::from_events(cert, key, keys) {
                    Ok(c) => {
                        log::info!("HTTPS front: reusing the published certificate");
                        return Ok(c);
                    }
                    Err(e) => log::warn!(
                        "HTTPS front: published certificate unusable ({e}); making a new one"
                    ),
                }
            }
        }
        Err(e) => log::warn!("HTTPS front: cannot fetch the published certificate ({e})"),
    }
    let domains = match front_domains(&own, relays) {
        Ok(d) => d,
        Err(_) => vec![encode_nostr_domain(&own, &[])?],
    };
    let cert = match FrontCertificate::generate(&domains) {
        Ok(c) => c,
        // With many relays the full name is too long for DNS: bare name only.
        Err(_) => FrontCertificate::generate(&[encode_nostr_domain(&own, &[])?])?,
    };
    for event in [cert.certificate_event(keys)?, cert.key_backup_event(keys)?] {
        let report = transport
            .publish_confirmed(&event, relays, Duration::from_secs(5))
            .await?;
        if report.accepted.is_empty() {
            log::warn!(
                "HTTPS front: no relay confirmed event kind {} ({:?})",
                event.kind.as_u16(),
                report.rejected
            );
        }
    }
    log::info!("HTTPS front: new certificate for {}", domains.join(", "));
    Ok(cert)
}

impl ExitNode {
    /// Connects to the relays (at least one within `relay_timeout`),
    /// subscribes for events addressed to the exit, and starts serving.
    ///
    /// With an HTTPS front, first restores or makes and publishes the front
    /// certificate; a public exit publishes its first announcement before
    /// this returns and then one every 10 s.
    ///
    /// # Errors
    ///
    /// [`ExitError::NothingToServe`], [`ExitError::Transport`] if no relay
    /// connects, [`ExitError::Tls`] for the front certificate.
    pub async fn start(config: ExitConfig) -> Result<Self, ExitError> {
        if config.backend.is_empty() && !config.public && config.https.is_none() {
            return Err(ExitError::NothingToServe);
        }
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
        let certificate = match &config.https {
            Some(_) => Some(front_certificate(&transport, &config.keys, &config.relays).await?),
            None => None,
        };
        let tls = certificate
            .as_ref()
            .map(FrontCertificate::acceptor)
            .transpose()?;
        let cancel = CancellationToken::new();
        let announcing = if config.public {
            let task = announce(&transport, &config, cancel.clone()).await;
            Some((task, config.keys.clone()))
        } else {
            None
        };
        let stats = Arc::new(Stats::default());
        let server = Server {
            tls,
            config: Arc::new(config.clone()),
            transport: transport.clone(),
            demux: Demux::new(config.keys.clone(), false),
            rates: Mutex::new(HashMap::new()),
            stats: stats.clone(),
            cancel: cancel.clone(),
        };
        let task = tokio::spawn(server.run(inbox));
        log::info!(
            "exit {public_key} serving backend `{}`{}{}",
            config.backend,
            if config.public { ", public" } else { "" },
            match &config.https {
                Some(h) => format!(", HTTPS front on port {} to {}", h.port, h.target),
                None => String::new(),
            }
        );
        Ok(Self {
            public_key,
            relays: config.relays,
            transport,
            cancel,
            stats,
            task,
            certificate,
            announcing,
        })
    }

    /// The HTTPS front's certificate, if the exit has a front.
    pub fn front_certificate(&self) -> Option<&FrontCertificate> {
        self.certificate.as_ref()
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
    /// A public exit first withdraws its announcement: it publishes one
    /// that expires [`WITHDRAWAL_LIFETIME`] from now (waiting up to 2 s for
    /// the relays), so entries stop picking it then instead of trying it
    /// until the last announcement ages out.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        if let Some((task, keys)) = self.announcing {
            // No periodic announcement may land after the withdrawal.
            let _ = task.await;
            match announcement_event(&keys, WITHDRAWAL_LIFETIME) {
                Ok(ev) => {
                    match self
                        .transport
                        .publish_confirmed(&ev, &self.relays, Duration::from_secs(2))
                        .await
                    {
                        Ok(_) => log::info!("announcement withdrawn"),
                        Err(e) => log::warn!("cannot withdraw the exit announcement: {e}"),
                    }
                }
                Err(e) => log::warn!("cannot sign the announcement withdrawal: {e}"),
            }
        }
        self.transport.shutdown().await;
    }
}

/// Publishes the first announcement now and the next ones every
/// [`ANNOUNCE_INTERVAL`] until `cancel`; returns the task doing so.
async fn announce(
    transport: &Transport,
    config: &ExitConfig,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let publish = {
        let transport = transport.clone();
        let keys = config.keys.clone();
        let relays = config.relays.clone();
        move || {
            let transport = transport.clone();
            let keys = keys.clone();
            let relays = relays.clone();
            async move {
                match announcement_event(&keys, ANNOUNCE_LIFETIME) {
                    Ok(ev) => {
                        if let Err(e) = transport.publish(&ev, &relays).await {
                            log::warn!("cannot publish the exit announcement: {e}");
                        }
                    }
                    Err(e) => log::warn!("cannot sign the exit announcement: {e}"),
                }
            }
        }
    };
    publish().await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ANNOUNCE_INTERVAL) => publish().await,
                _ = cancel.cancelled() => return,
            }
        }
    })
}

struct Server {
    /// The HTTPS front's TLS acceptor.
    tls: Option<tokio_rustls::TlsAcceptor>,
    config: Arc<ExitConfig>,
    transport: Transport,
    demux: Arc<Demux>,
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
        let open_by_author = self.demux.streams_of(author);
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
            self.dispatch(ev);
        }
    }

    /// Hands one event to its stream, or starts a stream on `CONNECT`.
    /// Never waits on the network: refusals and answers go out from the
    /// stream's own task, so one slow publish cannot stall every stream.
    fn dispatch(&self, ev: Event) {
        match self.demux.route(&ev) {
            Routed::Delivered | Routed::Dropped => {}
            Routed::Unclaimed {
                author,
                cipher,
                msg,
            } => match msg.kind {
                MessageType::Connect => self.accept(author, cipher, msg),
                MessageType::ConnectReverse => self.accept_reverse(author, cipher, msg),
                kind => log::debug!("stream {}: {kind} for an unknown stream: dropped", msg.key),
            },
        }
    }

    /// Starts serving a `CONNECTR` if the entry is admitted. A version-2
    /// entry (`version` on its `CONNECTR`) hears of a refusal or failure as
    /// an `ERROR` with the reason; a legacy entry only sees no connection.
    fn accept_reverse(&self, author: PublicKey, cipher: Cipher, msg: Message) {
        if msg.key.len() != 36 {
            log::warn!(
                "CONNECTR from {author} with a key of {} bytes: dropped",
                msg.key.len()
            );
            return;
        }
        let answer =
            (msg.version.is_some() && !self.config.legacy).then(|| self.link(author, cipher));
        if let Some(reason) = self.admission(&author) {
            log::warn!(
                "reverse stream {} from {author}: refused ({reason})",
                msg.key
            );
            if let Some(link) = answer {
                tokio::spawn(async move { refuse_reverse(&link, &msg.key, reason).await });
            }
            return;
        }
        let config = self.config.clone();
        let tls = self.tls.clone();
        let cancel = self.cancel.clone();
        let slot = OpenSlot::new(self.stats.clone());
        tokio::spawn(async move {
            let key = msg.key.clone();
            tokio::select! {
                r = serve_reverse(&config, tls.as_ref(), msg) => {
                    if let Err((reason, e)) = r {
                        log::info!("reverse stream {key}: {e}");
                        if let Some(link) = answer {
                            refuse_reverse(&link, &key, reason).await;
                        }
                    }
                }
                _ = cancel.cancelled() => {}
            }
            drop(slot);
        });
    }

    /// The link back to `author` for one of its streams.
    fn link(&self, author: PublicKey, cipher: Cipher) -> Link {
        Link::new(
            &self.transport,
            self.config.keys.clone(),
            author,
            cipher,
            self.config.relays.clone(),
        )
    }

    /// Starts a stream from a `CONNECT`: admits it (or refuses it with an
    /// `ERROR` sent from its own task), registers it with the demultiplexer
    /// and serves it in a task of its own.
    fn accept(&self, author: PublicKey, cipher: Cipher, mut connect: Message) {
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
        let link = self.link(author, cipher.clone());
        if let Some(reason) = self.admission(&author) {
            log::warn!("stream {key} from {author}: refused ({reason})");
            engine.backend_failed(reason);
            let mut conn = Conn::new(
                engine,
                link,
                Inbox::Messages(mpsc::channel(1).1),
                Box::new(()),
            );
            tokio::spawn(async move { conn.flush().await });
            return;
        }
        let (rx, registration) = self.demux.register(author, cipher, &key);
        let slot = OpenSlot::new(self.stats.clone());
        let config = self.config.clone();
        let tls = self.tls.clone();
        let cancel = self.cancel.clone();
        // The registration lives until the stream has ended and lingered.
        let conn = Conn::new(engine, link, Inbox::Messages(rx), Box::new(registration));
        tokio::spawn(async move {
            tokio::select! {
                _ = serve_stream(conn, &config, tls.as_ref(), slot) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

/// A local connection a stream is joined to: a TCP socket, or the near end
/// of the HTTPS front's pipe.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where a stream's destination leads.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// The configured backend.
    Backend,
    /// The HTTPS front.
    Front,
    /// An internet host, through the egress policy (public exits).
    Egress { host: String, port: u16 },
}

/// Splits `host:port` (IPv6 in brackets) into host (brackets removed) and
/// port.
pub(crate) fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}

/// Chooses where `destination` goes (module docs).
fn choose_target(config: &ExitConfig, destination: &str) -> Result<Target, ErrorReason> {
    let parsed = split_host_port(destination);
    let own = match &parsed {
        Some((host, _)) => !config.public || is_nws_host(host),
        None => true,
    };
    if !own {
        let (host, port) = parsed.ok_or(ErrorReason::NotAllowed)?;
        return Ok(Target::Egress { host, port });
    }
    if let Some(front) = &config.https {
        let port = parsed.as_ref().map(|(_, p)| *p);
        if config.backend.is_empty() || port == Some(front.port) {
            return Ok(Target::Front);
        }
    }
    if config.backend.is_empty() {
        return Err(ErrorReason::NotAllowed);
    }
    Ok(Target::Backend)
}

/// Dials `addr` within `timeout`.
async fn dial<A: tokio::net::ToSocketAddrs>(
    addr: A,
    timeout: Duration,
) -> Result<TcpStream, ErrorReason> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(ErrorReason::from_io(&e)),
        Err(_) => Err(ErrorReason::Timeout),
    }
}

/// Resolves `host:port` at the exit, checks every address against the
/// policy, and dials them in turn until one answers, all within `timeout`.
async fn dial_checked(
    policy: &EgressPolicy,
    host: &str,
    port: u16,
    timeout: Duration,
    key: &str,
) -> Result<TcpStream, ErrorReason> {
    let work = async {
        let addrs = policy.resolve(host, port).await.map_err(|e| {
            log::info!("stream {key}: {e}");
            e.reason()
        })?;
        let mut last = ErrorReason::HostUnreachable;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => {
                    log::info!("stream {key}: {addr} failed: {e}");
                    last = ErrorReason::from_io(&e);
                }
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ErrorReason::Timeout))
}

/// Opens the local end of a stream to `destination`.
async fn open_target(
    config: &ExitConfig,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    destination: &str,
    key: &str,
) -> Result<Box<dyn Io>, ErrorReason> {
    let target = choose_target(config, destination).inspect_err(|r| {
        log::info!("stream {key}: destination `{destination}` refused ({r})");
    })?;
    let timeout = config.connect_timeout;
    match target {
        Target::Backend => {
            let s = dial(config.backend.as_str(), timeout)
                .await
                .inspect_err(|r| {
                    log::info!("stream {key}: backend {} failed ({r})", config.backend);
                })?;
            Ok(Box::new(s))
        }
        Target::Egress { host, port } => Ok(Box::new(
            dial_checked(&config.egress, &host, port, timeout, key).await?,
        )),
        Target::Front => {
            let (Some(front), Some(acceptor)) = (&config.https, tls) else {
                return Err(ErrorReason::NotAllowed);
            };
            let mut upstream = dial(front.target.as_str(), timeout)
                .await
                .inspect_err(|r| {
                    log::info!("stream {key}: HTTPS target {} failed ({r})", front.target);
                })?;
            let (near, far) = tokio::io::duplex(64 * 1024);
            let acceptor = acceptor.clone();
            let key = key.to_string();
            tokio::spawn(async move {
                match acceptor.accept(far).await {
                    Ok(mut tls) => {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                    }
                    Err(e) => log::info!("stream {key}: TLS handshake failed: {e}"),
                }
            });
            Ok(Box::new(near))
        }
    }
}

/// Dials the stream's destination (module docs), answers, and pumps it.
async fn serve_stream(
    mut conn: Conn,
    config: &ExitConfig,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    slot: OpenSlot,
) {
    let key = conn.key().to_string();
    let destination = conn.engine.destination().to_string();
    let local = match open_target(config, tls, &destination, &key).await {
        Ok(s) => s,
        Err(reason) => {
            conn.engine.backend_failed(reason);
            conn.flush().await;
            return;
        }
    };
    conn.engine.backend_connected(Instant::now());
    log::debug!("stream {key}: open to `{destination}`");
    let end = pump(conn, local, Vec::new(), config.idle_timeout, slot).await;
    log::debug!("stream {key}: ended ({end:?})");
}

/// How long a `CONNECTR` may take to reach the entry and get its `0x01`.
const REVERSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one `CONNECTR`: opens the destination as for a `CONNECT`, dials
/// the entry's public address (checked against the egress policy), writes
/// the stream key, waits for `0x01` and copies bytes both ways. Fails, before
/// any byte is copied, with the reason to send a version-2 entry and a line
/// for the log.
async fn serve_reverse(
    config: &ExitConfig,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    msg: Message,
) -> Result<(), (ErrorReason, String)> {
    let key = &msg.key;
    let (host, port) = split_host_port(&msg.entry_public_address).ok_or_else(|| {
        (
            ErrorReason::ProtocolError,
            format!("bad entryPublicAddress `{}`", msg.entry_public_address),
        )
    })?;
    let mut local = open_target(config, tls, &msg.destination, key)
        .await
        .map_err(|r| (r.clone(), format!("destination `{}`: {r}", msg.destination)))?;
    let mut entry = dial_checked(&config.egress, &host, port, config.connect_timeout, key)
        .await
        .map_err(|r| {
            let line = format!("entry address {}: {r}", msg.entry_public_address);
            (r, line)
        })?;
    let handshake = async {
        entry.write_all(key.as_bytes()).await?;
        let mut ok = [0u8; 1];
        entry.read_exact(&mut ok).await?;
        Ok::<_, std::io::Error>(ok[0])
    };
    match tokio::time::timeout(REVERSE_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(1)) => {}
        Ok(Ok(b)) => {
            return Err((
                ErrorReason::ProtocolError,
                format!("entry answered {b:#04x}, not 0x01"),
            ))
        }
        Ok(Err(e)) => return Err((ErrorReason::from_io(&e), format!("entry handshake: {e}"))),
        Err(_) => return Err((ErrorReason::Timeout, "entry handshake timed out".into())),
    }
    log::debug!(
        "stream {key}: reverse connection open to `{}`",
        msg.destination
    );
    let _ = tokio::io::copy_bidirectional(&mut entry, &mut local).await;
    Ok(())
}

/// Tells a version-2 entry that its `CONNECTR` failed: one `ERROR` with
/// `reason`, published once (if the relays lose it, the entry times out).
async fn refuse_reverse(link: &Link, key: &str, reason: ErrorReason) {
    if let Err(e) = link.send(&Message::error(key, &reason)).await {
        log::warn!("reverse stream {key}: cannot send ERROR {reason}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backend: &str, public: bool, https: Option<u16>) -> ExitConfig {
        let mut c = ExitConfig::new(Vec::new(), Keys::generate(), backend);
        c.public = public;
        c.https = https.map(|port| HttpsFront {
            port,
            target: "127.0.0.1:1".into(),
        });
        c
    }

    #[test]
    fn private_exit_dials_its_backend_whatever_the_destination() {
        let c = config("127.0.0.1:8080", false, None);
        for d in ["example.org:80", "127.0.0.1:22", "x.nostr:80", "garbage"] {
            assert_eq!(choose_target(&c, d), Ok(Target::Backend), "{d}");
        }
    }

    #[test]
    fn public_exit_sends_ordinary_hosts_through_the_policy() {
        let c = config("127.0.0.1:8080", true, None);
        assert_eq!(
            choose_target(&c, "example.org:443"),
            Ok(Target::Egress {
                host: "example.org".into(),
                port: 443
            })
        );
        assert_eq!(
            choose_target(&c, "[::1]:80"),
            Ok(Target::Egress {
                host: "::1".into(),
                port: 80
            })
        );
        assert_eq!(choose_target(&c, "abc.nostr:80"), Ok(Target::Backend));
        let bare = config("", true, None);
        assert_eq!(
            choose_target(&bare, "abc.nostr:80"),
            Err(ErrorReason::NotAllowed)
        );
    }

    #[test]
    fn https_front_takes_its_port_or_everything_without_backend() {
        let both = config("127.0.0.1:8080", false, Some(8443));
        assert_eq!(choose_target(&both, "abc.nostr:8443"), Ok(Target::Front));
        assert_eq!(choose_target(&both, "abc.nostr:80"), Ok(Target::Backend));
        let front = config("", false, Some(443));
        assert_eq!(choose_target(&front, "abc.nostr:80"), Ok(Target::Front));
    }
}
