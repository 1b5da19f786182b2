//! The entry's stream opener ([`Entry`]): routes a host to its exit (a
//! `.nostr`, `npub1…` or `nprofile1…` name decoded locally, never through
//! the system resolver; any other host, when enabled, to a pinned or
//! discovered public exit, the name left for the exit to resolve), sets up
//! the stream's key, route and subscription, publishes `CONNECT` and waits
//! for the exit's answer.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nostr::{PublicKey, RelayUrl};
use tokio_util::sync::CancellationToken;

use crate::demux::Demux;
use crate::discovery::Directory;
use crate::driver::{wait_open, Conn, Inbox, StreamError};
use crate::engine::{Dialect, Output, Stream};
use crate::link::Link;
use crate::names::{encode_nostr_domain, parse_host, ExitAddress};
use crate::pacing::Pacer;
use crate::protocol::{ErrorReason, HostPort, Message};
use crate::stats::Stats;
use crate::sync::lock;
use crate::transport::{Transport, TransportError};

use super::reverse::Reverse;
use super::subscriptions::{persistent_key_demux, ExitSubscriptions, StreamRoute};
use super::{EntryConfig, EntryError, EntryStream, OpenError};

/// Opens NWS streams; shared by the proxy listeners and direct users.
#[derive(Clone)]
pub struct Entry {
    pub(super) config: Arc<EntryConfig>,
    pub(super) transport: Transport,
    pub(super) stats: Arc<Stats>,
    subscriptions: Arc<ExitSubscriptions>,
    /// With a persistent key: the demultiplexer of its streams.
    demux: Option<Arc<Demux>>,
    /// Exits that answered a version-2 `CONNECT` (bounded): streams to them
    /// send their first bytes inside the `CONNECT` (0-RTT).
    v2_exits: Arc<Mutex<HashSet<PublicKey>>>,
    /// With public exits: the exits announced recently.
    directory: Option<Arc<Directory>>,
    /// With a public address: the listener for the exits' reverse connections.
    pub(super) reverse: Arc<std::sync::OnceLock<Arc<Reverse>>>,
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
            .map(|keys| persistent_key_demux(&transport, keys));
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
        let rev = Reverse::bind(addr, self.config.handshake_timeout, self.cancel.clone())
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

    /// Where the entry listens for exits' reverse connections (`CONNECTR`).
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.reverse.get().map(|r| r.addr())
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

    /// A snapshot of the entry's counters (streams, bytes, events,
    /// refusals, relays), for the metrics endpoint.
    pub async fn metrics(&self) -> crate::stats::NodeMetrics {
        let relays = self.transport.relay_counts().await;
        crate::stats::NodeMetrics::new(&self.stats, self.transport.event_counts(), relays)
    }

    /// Number of relays connected and known.
    pub async fn relay_counts(&self) -> (usize, usize) {
        self.transport.relay_counts().await
    }

    /// The relays connected now.
    pub async fn connected_relays(&self) -> Vec<RelayUrl> {
        self.transport.connected_relays().await
    }

    /// Relay connections as they come up and go down
    /// ([`Transport::relay_changes`]).
    pub fn relay_changes(&self) -> tokio::sync::broadcast::Receiver<crate::transport::RelayChange> {
        self.transport.relay_changes()
    }

    /// The device's network changed: relays not connected are tried again
    /// at once, their reconnection backoff reset
    /// ([`Transport::network_changed`]).
    pub fn network_changed(&self) {
        self.transport.network_changed();
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
    pub async fn open(&self, host: &str, port: u16) -> Result<EntryStream, OpenError> {
        self.open_early(host, port, &[]).await.map(|(s, _)| s)
    }

    /// Stream keys the entry's subscriptions name now, across exits: one per
    /// open stream (lingering ones excluded) and the spare keys kept ready
    /// for new streams (4 per exit). What each REQ carries; for diagnostics.
    pub async fn subscribed_keys(&self) -> usize {
        self.subscriptions.key_count().await
    }

    /// Whether a stream to `host` could be opened at all, without opening
    /// one: the name parses, and a host that is not an NWS name has a way
    /// out (a fixed exit or public-exit discovery). What
    /// [`EntryConfig::early_reply`] checks before it answers a client.
    ///
    /// # Errors
    /// [`OpenError::BadName`] or [`OpenError::NotNws`], as [`Entry::open`]
    /// would return them.
    pub fn check_route(&self, host: &str) -> Result<(), OpenError> {
        match parse_host(host) {
            Ok(Some(_)) => Ok(()),
            Ok(None) if self.config.exit.is_some() || self.directory.is_some() => Ok(()),
            Ok(None) => Err(OpenError::NotNws(host.to_string())),
            Err(source) => Err(OpenError::BadName {
                host: host.to_string(),
                source,
            }),
        }
    }

    /// Whether `host` is an NWS name (`.nostr`, `npub1…`, `nprofile1…`) that
    /// parses: what the WebView listener ([`EntryConfig::webview_listen`])
    /// checks before it opens a stream, so that it never uses the fixed exit
    /// or public exits.
    ///
    /// # Errors
    /// [`OpenError::BadName`] for a name that does not parse,
    /// [`OpenError::NamesOnly`] for any other host.
    pub fn check_nws_name(&self, host: &str) -> Result<(), OpenError> {
        match parse_host(host) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(OpenError::NamesOnly(host.to_string())),
            Err(source) => Err(OpenError::BadName {
                host: host.to_string(),
                source,
            }),
        }
    }

    /// Like [`Entry::open`], offering the stream's first bytes (an HTTP
    /// request head, say). Toward an exit that already answered this entry
    /// in version 2, up to one segment of them rides inside the `CONNECT`
    /// (0-RTT: the request reaches the backend one relay round trip
    /// sooner). Returns the stream and how many of `early` were sent; pass
    /// the rest to [`EntryStream::run`].
    pub async fn open_early(
        &self,
        host: &str,
        port: u16,
        early: &[u8],
    ) -> Result<(EntryStream, usize), OpenError> {
        let opened = self.open_early_uncounted(host, port, early).await;
        if let Err(e) = &opened {
            self.stats.refusals.count_code(e.code());
        }
        opened
    }

    /// [`Entry::open_early`] without counting a failure in the refusals.
    async fn open_early_uncounted(
        &self,
        host: &str,
        port: u16,
        early: &[u8],
    ) -> Result<(EntryStream, usize), OpenError> {
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
    ) -> Result<(EntryStream, usize), OpenError> {
        let destination = HostPort::new(host, port).to_string();
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
    ) -> Result<(EntryStream, usize), OpenError> {
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
        // The CONNECT must fit what the relays take, like any event.
        let fits = crate::protocol::max_data_for_content(self.transport.content_limit(&relays));
        let (link, inbox, route) = self.answers(exit, relays, &key).await?;

        let dialect = if self.is_legacy_exit(&exit.public_key) {
            Dialect::Legacy
        } else {
            Dialect::V2
        };
        let known_v2 = lock(&self.v2_exits).contains(&exit.public_key);
        let early = if dialect == Dialect::V2 && known_v2 {
            &early[..early.len().min(fits)]
        } else {
            &[]
        };
        let (engine, taken) = Stream::open_early(
            self.config.stream.clone(),
            key,
            destination,
            dialect,
            early,
            Instant::now(),
        );
        let mut conn = Conn::new(engine, link, inbox, route);
        // Data in the legacy format (also after a fallback) is paced (`crate::pacing`).
        *conn.legacy_pacer() = Pacer::new(self.config.legacy_pacing.clone());
        if dialect == Dialect::Legacy {
            // A legacy exit drops data that overtakes its CONNECT: wait for
            // the relays' OK (bounded), then for its dial, before any data
            // goes out.
            if let Some(Output::Publish(connect)) = conn.engine.poll_output() {
                self.publish_legacy_connect(&conn.link, &connect).await?;
            }
            conn.legacy_pacer().connect_accepted();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        match wait_open(&mut conn, deadline).await {
            Ok(()) => {}
            Err(Some(StreamError::Aborted(reason))) => return Err(OpenError::Refused(reason)),
            Err(Some(e)) => {
                log::info!("stream {}: {e} before it opened", conn.key());
                return Err(OpenError::Transport(TransportError::Shutdown));
            }
            Err(None) => return Err(OpenError::Timeout(timeout)),
        }
        log::debug!(
            "stream {}: open, speaking version {} ({:?})",
            conn.key(),
            conn.engine.version(),
            conn.engine.framing()
        );
        {
            let mut known = lock(&self.v2_exits);
            if conn.engine.dialect() == Dialect::V2 {
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
        let stream = EntryStream::nostr(conn, self.config.idle_timeout, self.stats.clone());
        Ok((stream, taken))
    }

    /// Whether `exit` gets the legacy format (`--legacy`, `--legacy-exit`).
    pub(super) fn is_legacy_exit(&self, exit: &PublicKey) -> bool {
        self.config.legacy_all || self.config.legacy_exits.contains(exit)
    }

    /// The link to `exit` for stream `key`, its inbox, and the route that
    /// keeps its answers coming while it lives (dropped with the stream): a
    /// fresh key per stream, or the persistent key's demultiplexer.
    pub(super) async fn answers(
        &self,
        exit: &ExitAddress,
        relays: Vec<RelayUrl>,
        key: &str,
    ) -> Result<(Link, Inbox, Box<dyn crate::driver::Keep>), OpenError> {
        let peer = exit.public_key;
        match &self.demux {
            None => {
                // A fresh key per stream: relays and exits cannot link
                // streams. It is already subscribed (a spare) unless this
                // is the first stream to the exit.
                let fresh = self
                    .subscriptions
                    .take(&self.transport, peer, &relays)
                    .await?;
                let (keys, cipher) = (fresh.keys, fresh.cipher);
                let rx = self.transport.route(keys.public_key());
                let route = StreamRoute {
                    transport: self.transport.clone(),
                    recipient: keys.public_key(),
                    keys: fresh.subscribed,
                };
                let inbox = Inbox::Events {
                    rx,
                    cipher: cipher.clone(),
                    peer,
                };
                let link = Link::new(&self.transport, keys, peer, cipher, relays);
                Ok((link, inbox, Box::new(route)))
            }
            Some(demux) => {
                let cipher = demux.cipher_for(&peer)?;
                let (rx, registration) = demux.register(peer, cipher.clone(), key);
                let own = demux.keys().public_key();
                self.subscriptions
                    .add(&self.transport, peer, &relays, own)
                    .await?;
                let link = Link::new(&self.transport, demux.keys().clone(), peer, cipher, relays);
                Ok((link, Inbox::Messages(rx), Box::new(registration)))
            }
        }
    }

    async fn publish_legacy_connect(
        &self,
        link: &Link,
        connect: &Message,
    ) -> Result<(), OpenError> {
        let event = link.event(connect)?;
        let report = self
            .transport
            .publish_confirmed(&event, link.relays(), Duration::from_secs(2))
            .await?;
        if report.accepted.is_empty() && report.unknown.is_empty() {
            let why: Vec<String> = report
                .rejected
                .iter()
                .map(|(u, m)| format!("{u}: {m}"))
                .collect();
            return Err(TransportError::NotPublished(format!(
                "relays rejected CONNECT: {}",
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
