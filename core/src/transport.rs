//! Relay transport over nostr-sdk's relay pool: connect to relays, publish
//! stream events in order without stalling on `OK`, subscribe, and route each
//! incoming event to the stream (or exit) it is addressed to.
//!
//! Routing is by recipient: every stream event carries `["p", <recipient>]`,
//! and [`Transport::route`] hands out a channel per recipient key (an entry
//! stream's ephemeral key, or an exit's long-term key). The pool does not
//! de-duplicate ephemeral events that arrive through several relays, so the
//! router drops repeated event ids (bounded cache) before they reach a stream.
//!
//! Relays that drop the connection (or cannot be reached) are reconnected
//! with exponential backoff, from [`RETRY_MIN`] doubling to [`RETRY_MAX`],
//! back to the start after a connection succeeds or when the app says the
//! network changed ([`Transport::network_changed`]); their subscriptions
//! are sent again. An offline phone's radio is thus woken less and less,
//! not every 2 s.

use crate::sync::lock;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nostr::{Event, EventId, Filter, PublicKey, RelayUrl, SubscriptionId};
use nostr_sdk::prelude::{
    ClientMessage, RelayMessage, RelayOptions, RelayPool, RelayPoolNotification, RelayPoolOptions,
    ReqExitPolicy, SubscribeOptions,
};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::nip11::EVENT_OVERHEAD_BYTES;
use crate::path::socket::{Paths, RelaySockets, StreamEvents};
use crate::path::BASE_MESSAGE;
use crate::protocol::{recipient, KIND_STREAM};

/// How often a disconnected relay is retried.
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts to one relay.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Default replay window: events further than this from now are dropped.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(60);
/// How many event ids the router remembers to drop duplicates.
const SEEN_IDS: usize = 16_384;
/// Messages queued for one relay's websocket above which publishing waits.
const MAX_RELAY_QUEUE: usize = 256;
/// Relay notifications buffered for the router. The channel allocates every
/// slot up front (about 350 bytes each), and the router only moves events
/// on, so a few thousand are plenty; a router that falls further behind
/// loses events, which version-2 streams retransmit.
const NOTIFICATION_CHANNEL: usize = 4096;
/// Events one route ([`Transport::route`]) holds for a receiver that has
/// not taken them yet; more are dropped.
pub const ROUTE_CAPACITY: usize = 4096;
/// How long a relay's NIP-11 document may take to arrive.
const NIP11_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the relay transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// None of the relays could be connected within the timeout.
    #[error("no relay reachable (tried {0})")]
    NoRelayReachable(String),
    /// No relay was given.
    #[error("no relays configured")]
    NoRelays,
    /// The relay pool refused the operation (a relay URL it cannot use, say).
    #[error("relay pool: {0}")]
    Pool(String),
    /// No relay took the event: every relay is disconnected or its queue
    /// refused it. The text names each relay and why.
    #[error("no relay took the event ({0})")]
    NotPublished(String),
    /// The transport was shut down.
    #[error("transport is shut down")]
    Shutdown,
}

/// What the relays answered to one published event (NIP-01 `OK`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Relays that answered `OK true`.
    pub accepted: Vec<RelayUrl>,
    /// Relays that answered `OK false`, with their message.
    pub rejected: Vec<(RelayUrl, String)>,
    /// Relays that did not answer within the timeout (some relays never
    /// answer for ephemeral events: unknown, not failure).
    pub unknown: Vec<RelayUrl>,
}

/// A relay connection that came up or went down ([`Transport::relay_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayChange {
    /// The relay.
    pub url: RelayUrl,
    /// Whether it is connected now (false: the connection ended).
    pub connected: bool,
}

/// Relay changes buffered for a slow reader of [`Transport::relay_changes`].
const RELAY_CHANGES: usize = 64;

type OkSender = mpsc::UnboundedSender<(RelayUrl, bool, String)>;

struct Routes {
    streams: HashMap<PublicKey, mpsc::Sender<Event>>,
    /// Non-stream kinds (exit announcements, say) and where they go.
    kinds: HashMap<u16, mpsc::UnboundedSender<Event>>,
    pending_ok: HashMap<EventId, OkSender>,
    seen: HashSet<EventId>,
    seen_order: VecDeque<EventId>,
}

impl Routes {
    /// Remembers an id; false if it was seen before.
    fn first_sight(&mut self, id: EventId) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.seen_order.push_back(id);
        if self.seen_order.len() > SEEN_IDS {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

struct Inner {
    pool: RelayPool,
    routes: Mutex<Routes>,
    router: Mutex<Option<JoinHandle<()>>>,
    published: AtomicU64,
    received: AtomicU64,
    /// What each relay connection learned (sizes, `OK` habit, pace).
    paths: Arc<Paths>,
    /// Events whose `created_at` is further than this from now, in
    /// seconds, are dropped (replay protection).
    replay_window: AtomicU64,
    /// Wakes the relay supervisors: reconnect now ([`Transport::network_changed`]).
    network_changed: Arc<tokio::sync::Notify>,
    /// Set by [`Transport::shutdown`]: supervisors stop reconnecting.
    shutting_down: std::sync::atomic::AtomicBool,
    /// Longest wait between reconnection attempts, in milliseconds.
    retry_max_ms: AtomicU64,
    /// Relay connections that came up or went down.
    relay_changes: broadcast::Sender<RelayChange>,
}

/// A connection to a set of relays, shared by every stream of an entry or exit.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport")
    }
}

impl Transport {
    /// Creates the pool and starts the router. Relays are added with
    /// [`Transport::add_relays`]. Must be called inside a tokio runtime.
    /// A relay that asks for authentication (NIP-42) gets it with a key made
    /// for this transport; see [`Transport::with_auth_keys`].
    pub fn new() -> Self {
        Self::with_auth_keys(nostr::Keys::generate())
    }

    /// Like [`Transport::new`], authenticating to relays that ask (NIP-42
    /// `AUTH`) with `keys`.
    pub fn with_auth_keys(keys: nostr::Keys) -> Self {
        let paths = Arc::new(Paths::default());
        let events = Arc::new(StreamEvents::default());
        let mut builder = RelayPool::builder()
            .websocket_transport(RelaySockets::new(Arc::clone(&paths), Arc::clone(&events)))
            .opts(RelayPoolOptions::new().notification_channel_size(NOTIFICATION_CHANNEL));
        builder.__signer = Some(Arc::new(keys));
        let pool = builder.build();
        let inner = Arc::new(Inner {
            pool,
            routes: Mutex::new(Routes {
                streams: HashMap::new(),
                kinds: HashMap::new(),
                pending_ok: HashMap::new(),
                seen: HashSet::new(),
                seen_order: VecDeque::new(),
            }),
            router: Mutex::new(None),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            paths,
            replay_window: AtomicU64::new(DEFAULT_REPLAY_WINDOW.as_secs()),
            network_changed: Arc::new(tokio::sync::Notify::new()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            retry_max_ms: AtomicU64::new(RETRY_MAX.as_millis() as u64),
            relay_changes: broadcast::channel(RELAY_CHANGES).0,
        });
        let weak = Arc::downgrade(&inner);
        events.set(move |event| {
            if let Some(inner) = weak.upgrade() {
                route_stream_event(&inner, event);
            }
        });
        let notifications = inner.pool.notifications();
        let task = tokio::spawn(run_router(Arc::downgrade(&inner), notifications));
        *lock(&inner.router) = Some(task);
        Self { inner }
    }

    /// Adds relays (if new) and starts connecting to them; returns at once.
    pub async fn add_relays(&self, relays: &[RelayUrl]) -> Result<(), TransportError> {
        for url in relays {
            // The pool does not reconnect by itself: `supervise` does, with backoff.
            let opts = RelayOptions::new().reconnect(false);
            let added = self
                .inner
                .pool
                .add_relay(url.clone(), opts)
                .await
                .map_err(|e| TransportError::Pool(e.to_string()))?;
            if added {
                log::debug!("relay {url}: added");
                if let Ok(relay) = self.inner.pool.relay(url).await {
                    tokio::spawn(supervise(
                        Arc::downgrade(&self.inner),
                        Arc::clone(&self.inner.network_changed),
                        relay.clone(),
                        relay.notifications(),
                    ));
                }
                self.inner
                    .pool
                    .connect_relay(url.clone())
                    .await
                    .map_err(|e| TransportError::Pool(e.to_string()))?;
                self.learn_limits(url.clone());
            }
        }
        Ok(())
    }

    /// Reads `relay`'s NIP-11 document in the background; a published size
    /// limit becomes that relay's starting size before any event is lost to
    /// it (the relay connection's prober waits for it a moment).
    fn learn_limits(&self, relay: RelayUrl) {
        let path = self.inner.paths.get(relay.as_str());
        tokio::spawn(async move {
            match crate::nip11::fetch_limits(&relay, NIP11_TIMEOUT).await {
                Ok(limits) => match limits.content_limit() {
                    Some(limit) => {
                        log::info!(
                            "relay {relay}: NIP-11 limits {limits:?}: event content kept under {limit} bytes"
                        );
                        path.nip11(Some(limit + EVENT_OVERHEAD_BYTES));
                    }
                    None => {
                        log::debug!("relay {relay}: NIP-11 document without size limits");
                        path.nip11(None);
                    }
                },
                Err(e) => {
                    log::debug!("relay {relay}: no NIP-11 limits ({e})");
                    path.nip11(None);
                }
            }
        });
    }

    /// Adds `relays` and waits up to `timeout` until at least one of them is
    /// connected. Returns the connected ones, or
    /// [`TransportError::NoRelayReachable`].
    pub async fn ensure_connected(
        &self,
        relays: &[RelayUrl],
        timeout: Duration,
    ) -> Result<Vec<RelayUrl>, TransportError> {
        if relays.is_empty() {
            return Err(TransportError::NoRelays);
        }
        self.add_relays(relays).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut wait = Duration::from_millis(5);
        loop {
            let connected = self.connected_among(relays).await;
            if !connected.is_empty() {
                return Ok(connected);
            }
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<String> = relays.iter().map(|r| r.to_string()).collect();
                return Err(TransportError::NoRelayReachable(names.join(", ")));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(200));
        }
    }

    async fn connected_among(&self, relays: &[RelayUrl]) -> Vec<RelayUrl> {
        let all = self.inner.pool.relays().await;
        relays
            .iter()
            .filter(|u| all.get(*u).is_some_and(|r| r.is_connected()))
            .cloned()
            .collect()
    }

    /// Relay connections as they come up and go down, from now on (one
    /// change per transition; a reader more than 64 changes behind gets
    /// `Lagged` and should read [`Transport::relay_counts`] again).
    pub fn relay_changes(&self) -> broadcast::Receiver<RelayChange> {
        self.inner.relay_changes.subscribe()
    }

    /// The relays connected now.
    pub async fn connected_relays(&self) -> Vec<RelayUrl> {
        let all = self.inner.pool.relays().await;
        all.iter()
            .filter(|(_, r)| r.is_connected())
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Number of relays connected and known, in that order.
    pub async fn relay_counts(&self) -> (usize, usize) {
        let all = self.inner.pool.relays().await;
        (all.values().filter(|r| r.is_connected()).count(), all.len())
    }

    /// Drops incoming events whose `created_at` is further than `window`
    /// from now (seconds resolution). Together with the cache of event ids
    /// already seen, this keeps a relay that replays an old `CONNECT` from
    /// making an exit repeat a request.
    pub fn set_replay_window(&self, window: Duration) {
        self.inner
            .replay_window
            .store(window.as_secs().max(1), Ordering::Relaxed);
    }

    /// Routes events `p`-tagged to `recipient` into the returned channel,
    /// replacing any earlier route for that key. The channel holds at most
    /// [`ROUTE_CAPACITY`] events; while it is full, further events for the
    /// recipient are dropped (version-2 peers retransmit), so a flood cannot
    /// grow memory without bound.
    pub fn route(&self, recipient: PublicKey) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(ROUTE_CAPACITY);
        lock(&self.inner.routes).streams.insert(recipient, tx);
        rx
    }

    /// Routes every event of `kind` (other than the stream kind 28333) into
    /// the returned channel, replacing any earlier route for that kind.
    /// Events are de-duplicated by id but not checked against the replay
    /// window: the receiver judges freshness itself (kind 38333
    /// announcements carry a NIP-40 `expiration`).
    pub fn route_kind(&self, kind: u16) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.routes).kinds.insert(kind, tx);
        rx
    }

    /// Fetches stored events matching `filter` from `relays` (connecting to
    /// them first), waiting at most `timeout` for every relay's
    /// end-of-stored-events (NIP-01 `EOSE`). Signatures are verified by the
    /// pool. Returns the events, newest first.
    ///
    /// # Errors
    ///
    /// [`TransportError::NoRelays`], [`TransportError::NoRelayReachable`]
    /// if none connects within `timeout`, [`TransportError::Pool`].
    pub async fn fetch(
        &self,
        filter: Filter,
        relays: &[RelayUrl],
        timeout: Duration,
    ) -> Result<Vec<Event>, TransportError> {
        self.ensure_connected(relays, timeout).await?;
        let events = self
            .inner
            .pool
            .fetch_events_from(
                relays.iter().cloned(),
                filter,
                timeout,
                ReqExitPolicy::ExitOnEOSE,
            )
            .await
            .map_err(|e| TransportError::Pool(e.to_string()))?;
        let mut events: Vec<Event> = events.into_iter().collect();
        events.sort_by_key(|e| std::cmp::Reverse(e.created_at));
        Ok(events)
    }

    /// Removes the route for `recipient`.
    pub fn unroute(&self, recipient: &PublicKey) {
        lock(&self.inner.routes).streams.remove(recipient);
    }

    /// Subscribes to `filter` on `relays` (kept and re-sent after reconnects).
    pub async fn subscribe(
        &self,
        filter: Filter,
        relays: &[RelayUrl],
    ) -> Result<SubscriptionId, TransportError> {
        let id = SubscriptionId::generate();
        self.subscribe_with_id(id.clone(), filter, relays).await?;
        Ok(id)
    }

    /// Subscribes with a chosen id; a later call with the same id replaces
    /// the filter on the relays (NIP-01).
    pub async fn subscribe_with_id(
        &self,
        id: SubscriptionId,
        filter: Filter,
        relays: &[RelayUrl],
    ) -> Result<(), TransportError> {
        self.inner
            .pool
            .subscribe_with_id_to(
                relays.iter().cloned(),
                id.clone(),
                filter,
                SubscribeOptions::default(),
            )
            .await
            .map_err(|e| TransportError::Pool(e.to_string()))?;
        Ok(())
    }

    /// Closes a subscription on every relay.
    pub async fn unsubscribe(&self, id: &SubscriptionId) {
        self.inner.pool.unsubscribe(id).await;
    }

    /// Publishes `event` to `relays` without waiting for `OK`.
    ///
    /// Events given to one relay go out in call order. When a relay's send
    /// queue is long, this waits (bounded) so a fast sender cannot grow it
    /// without limit.
    ///
    /// # Errors
    ///
    /// [`TransportError::NotPublished`] if no relay took the event;
    /// [`TransportError::Pool`] if the pool refused the call.
    pub async fn publish(&self, event: &Event, relays: &[RelayUrl]) -> Result<(), TransportError> {
        // Relays known to refuse an event this large are skipped while
        // another may take it.
        let size = event.content.len() + EVENT_OVERHEAD_BYTES;
        let fitting: Vec<RelayUrl> = relays
            .iter()
            .filter(|r| {
                self.inner
                    .paths
                    .find(r.as_str())
                    .is_none_or(|p| p.confirmed() >= size)
            })
            .cloned()
            .collect();
        let relays: &[RelayUrl] = if fitting.is_empty() { relays } else { &fitting };
        self.wait_for_queue_room(relays).await;
        let out = self
            .inner
            .pool
            .send_msg_to(
                relays.iter().cloned(),
                ClientMessage::Event(std::borrow::Cow::Borrowed(event)),
            )
            .await
            .map_err(|e| TransportError::Pool(e.to_string()))?;
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        if out.success.is_empty() {
            let why: Vec<String> = out
                .failed
                .iter()
                .map(|(u, e)| format!("{u}: {e}"))
                .collect();
            return Err(TransportError::NotPublished(why.join("; ")));
        }
        Ok(())
    }

    /// Publishes like [`Transport::publish`] and then collects the relays'
    /// `OK` answers for up to `timeout`.
    pub async fn publish_confirmed(
        &self,
        event: &Event,
        relays: &[RelayUrl],
        timeout: Duration,
    ) -> Result<PublishReport, TransportError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&self.inner.routes).pending_ok.insert(event.id, tx);
        let result = self.publish(event, relays).await;
        let mut report = PublishReport::default();
        if result.is_ok() {
            // Relays that never answer ephemeral events are not waited for.
            let silent = |r: &RelayUrl| {
                event.kind.is_ephemeral()
                    && self
                        .inner
                        .paths
                        .find(r.as_str())
                        .is_some_and(|p| p.answers_ok() == Some(false))
            };
            report.unknown = relays.iter().filter(|r| silent(r)).cloned().collect();
            let mut waiting: HashSet<RelayUrl> =
                relays.iter().filter(|r| !silent(r)).cloned().collect();
            let deadline = tokio::time::Instant::now() + timeout;
            while !waiting.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((url, ok, message))) => {
                        if waiting.remove(&url) {
                            if ok {
                                report.accepted.push(url);
                            } else {
                                report.rejected.push((url, message));
                            }
                        }
                    }
                    _ => break,
                }
            }
            report.unknown.extend(waiting);
        }
        lock(&self.inner.routes).pending_ok.remove(&event.id);
        result.map(|_| report)
    }

    async fn wait_for_queue_room(&self, relays: &[RelayUrl]) {
        // The pool's per-relay queue is a bounded channel that fails when full;
        // waiting here turns a slow relay into back-pressure on the stream.
        for _ in 0..2_000 {
            let all = self.inner.pool.relays().await;
            let busy = relays
                .iter()
                .filter_map(|u| all.get(u))
                .any(|r| r.is_connected() && r.queue() > MAX_RELAY_QUEUE);
            if !busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stream events published (each counted once, whatever the number of
    /// relays) and stream events received and routed (after de-duplication).
    pub fn event_counts(&self) -> (u64, u64) {
        (
            self.inner.published.load(Ordering::Relaxed),
            self.inner.received.load(Ordering::Relaxed),
        )
    }

    /// Largest event content (bytes) worth sending through `relays`: the
    /// largest size confirmed on any of them (events too large for some
    /// relays skip those), or what almost every relay takes while nothing
    /// is known.
    pub fn content_limit(&self, relays: &[RelayUrl]) -> usize {
        relays
            .iter()
            .filter_map(|r| self.inner.paths.find(r.as_str()))
            .map(|p| p.confirmed())
            .max()
            .unwrap_or(BASE_MESSAGE)
            .saturating_sub(EVENT_OVERHEAD_BYTES)
    }

    /// What the transport learned about `relay`: largest message size
    /// confirmed (bytes), whether it answers ephemeral events with `OK`,
    /// and the pace it is held to (events per second), if any.
    pub fn relay_path(&self, relay: &RelayUrl) -> Option<(usize, Option<bool>, Option<f64>)> {
        let p = self.inner.paths.find(relay.as_str())?;
        Some((p.confirmed(), p.answers_ok(), p.pace()))
    }

    /// Disconnects from every relay and stops the router.
    /// Caps the wait between reconnection attempts to one relay (default
    /// [`RETRY_MAX`], 60 s, for a phone's radio; an exit, which serves
    /// others, sets a few seconds).
    pub fn set_retry_max(&self, max: Duration) {
        let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        self.inner
            .retry_max_ms
            .store(ms.max(RETRY_MIN.as_millis() as u64), Ordering::Relaxed);
    }

    /// The device's network changed (or came back): every relay not
    /// connected now is tried again at once, with its backoff reset.
    pub fn network_changed(&self) {
        self.inner.network_changed.notify_waiters();
    }

    pub async fn shutdown(&self) {
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.network_changed.notify_waiters();
        self.inner.pool.shutdown().await;
        if let Some(task) = lock(&self.inner.router).take() {
            task.abort();
        }
    }
}

impl Default for Transport {
    fn default() -> Self {
        Self::new()
    }
}

async fn run_router(
    inner: std::sync::Weak<Inner>,
    mut notifications: broadcast::Receiver<RelayPoolNotification>,
) {
    loop {
        let n = match notifications.recv().await {
            Ok(n) => n,
            Err(broadcast::error::RecvError::Lagged(k)) => {
                log::warn!("router fell behind: {k} relay notifications lost");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        match n {
            RelayPoolNotification::Event { event, .. } => {
                let kind = event.kind.as_u16();
                if kind != KIND_STREAM {
                    let mut routes = lock(&inner.routes);
                    if routes.kinds.contains_key(&kind) && routes.first_sight(event.id) {
                        let gone = routes
                            .kinds
                            .get(&kind)
                            .is_some_and(|tx| tx.send(*event).is_err());
                        if gone {
                            routes.kinds.remove(&kind);
                        }
                    }
                    continue;
                }
                route_stream_event(&inner, *event);
            }
            RelayPoolNotification::Message {
                relay_url,
                message:
                    RelayMessage::Ok {
                        event_id,
                        status,
                        message,
                    },
            } => {
                let routes = lock(&inner.routes);
                if let Some(tx) = routes.pending_ok.get(&event_id) {
                    let _ = tx.send((relay_url, status, message.into_owned()));
                } else if !status {
                    log::debug!("relay {relay_url} rejected event {event_id}: {message}");
                }
            }
            RelayPoolNotification::Shutdown => return,
            _ => {}
        }
    }
}

/// What tells two copies of a stream event apart: SHA-256 of its author
/// and content (the NIP-44 payload, whose MAC the receiver checks), as an
/// [`EventId`] so that one bounded cache holds both kinds of key.
fn copy_key(event: &Event) -> EventId {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(event.pubkey.to_bytes());
    h.update(event.content.as_bytes());
    EventId::from_byte_array(h.finalize().into())
}

/// Keeps one relay connected: when its connection ends (or an attempt
/// fails), waits [`RETRY_MIN`], then twice as long after each failure up
/// to the transport's cap ([`RETRY_MAX`] unless
/// [`Transport::set_retry_max`]), with ±20 % jitter so that many clients do
/// not come back in step, and connects again. The backoff starts over once
/// a connection has stayed up for [`STAYED_UP`] (a relay that accepts and
/// then closes at once is not hammered), or at
/// [`Transport::network_changed`]. Ends with the transport.
async fn supervise(
    inner: std::sync::Weak<Inner>,
    network_changed: Arc<tokio::sync::Notify>,
    relay: nostr_sdk::Relay,
    mut status: broadcast::Receiver<nostr_sdk::pool::RelayNotification>,
) {
    use nostr_sdk::pool::RelayNotification;
    use nostr_sdk::RelayStatus;
    let mut backoff = RETRY_MIN;
    let mut up_since: Option<tokio::time::Instant> = None;
    loop {
        let n = match status.recv().await {
            Ok(n) => n,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        match n {
            RelayNotification::RelayStatus {
                status: RelayStatus::Connected,
            } => {
                up_since = Some(tokio::time::Instant::now());
                if let Some(i) = inner.upgrade() {
                    let _ = i.relay_changes.send(RelayChange {
                        url: relay.url().clone(),
                        connected: true,
                    });
                }
            }
            RelayNotification::RelayStatus {
                status: RelayStatus::Terminated,
            } => {
                let cap = match inner.upgrade() {
                    Some(i) if !i.shutting_down.load(Ordering::Relaxed) => {
                        if up_since.is_some() {
                            let _ = i.relay_changes.send(RelayChange {
                                url: relay.url().clone(),
                                connected: false,
                            });
                        }
                        Duration::from_millis(i.retry_max_ms.load(Ordering::Relaxed))
                    }
                    _ => return,
                };
                if up_since.take().is_some_and(|t| t.elapsed() >= STAYED_UP) {
                    backoff = RETRY_MIN;
                }
                let wait = jittered(backoff.min(cap));
                let woken = network_changed.notified();
                log::debug!("relay {}: reconnecting in {wait:?}", relay.url());
                let reset = tokio::select! {
                    _ = tokio::time::sleep(wait) => false,
                    _ = woken => true,
                };
                if reset {
                    // Let the pool's connection task finish winding down.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                match inner.upgrade() {
                    Some(i) if !i.shutting_down.load(Ordering::Relaxed) => {}
                    _ => return,
                }
                backoff = if reset {
                    RETRY_MIN
                } else {
                    (backoff * 2).min(cap)
                };
                relay.connect();
            }
            RelayNotification::Shutdown => return,
            _ => {}
        }
    }
}

/// A connection that lasted this long resets the reconnection backoff.
pub const STAYED_UP: Duration = Duration::from_secs(10);

/// `d` scaled by a random factor in [0.8, 1.2].
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..=1.2))
}

/// Hands a stream event to the route of its recipient (the first `p`
/// tag), unless it is off the clock (replay window), seen before, or for
/// nobody here. Events come straight from the relay sockets
/// ([`StreamEvents`]), or from the pool for a frame the sockets could not
/// parse; either way the receiver proves the author
/// ([`crate::protocol::open_stream_event`]).
fn route_stream_event(inner: &Inner, event: Event) {
    let Some(to) = recipient(&event) else {
        log::debug!("event {} has no p tag: dropped", event.id);
        return;
    };
    let window = inner.replay_window.load(Ordering::Relaxed);
    let now = nostr::Timestamp::now().as_secs();
    let age = now.abs_diff(event.created_at.as_secs());
    if age > window {
        log::warn!(
            "event {} from {} is {age} s off the clock (window {window} s): dropped as a possible replay",
            event.id,
            event.pubkey
        );
        return;
    }
    // Copies are told apart by what the receiver will authenticate (author
    // and content), not by the id: stream events reach here unverified, and
    // a relay that sent a forged copy under a real event's id first would
    // otherwise have the real copy from another relay dropped.
    let seen_as = copy_key(&event);
    let mut routes = lock(&inner.routes);
    if !routes.first_sight(seen_as) {
        log::debug!("event {} seen before: dropped", event.id);
        return;
    }
    match routes.streams.get(&to) {
        Some(tx) => {
            inner.received.fetch_add(1, Ordering::Relaxed);
            match tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => log::debug!(
                    "event {} for {to}: receiver {ROUTE_CAPACITY} events behind, dropped",
                    ev.id
                ),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    routes.streams.remove(&to);
                }
            }
        }
        None => log::debug!("event {} for unknown recipient {to}: dropped", event.id),
    }
}

/// The filter an exit subscribes with: kind 28333 events addressed to it,
/// created since `since` (Unix seconds: its start, less clock skew, so
/// that relays that store ephemeral events hand it nothing older).
pub fn exit_filter(exit: &PublicKey, since: u64) -> Filter {
    Filter::new()
        .kind(crate::protocol::stream_kind())
        .pubkey(*exit)
        .since(nostr::Timestamp::from_secs(since))
}

/// The filter an entry subscribes with for its streams to one exit: kind
/// 28333 events from the exit, addressed to any of the streams' ephemeral keys.
pub fn entry_stream_filter(
    exit: &PublicKey,
    ephemeral: impl IntoIterator<Item = PublicKey>,
) -> Filter {
    Filter::new()
        .kind(crate::protocol::stream_kind())
        .author(*exit)
        .pubkeys(ephemeral)
        .since(since_now())
}

/// `since` for live subscriptions: now, less a margin for clock skew between
/// peers (relays do not store ephemeral events, so nothing old is replayed).
fn since_now() -> nostr::Timestamp {
    nostr::Timestamp::from_secs(nostr::Timestamp::now().as_secs().saturating_sub(30))
}
