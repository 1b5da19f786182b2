//! The relay the benchmark runs through, and the count of stream events
//! that pass it.
//!
//! By default the relay is embedded in the bench process: the same
//! nostr-relay-builder `LocalRelay` with the same raised limits as
//! `nws relay` ([`nws_relay`]), plus a write-policy plugin that counts
//! every kind-28333 event the relay admits — exact events per MiB.
//!
//! With an external relay (`--relay URL`, or `nws relay` as its own process)
//! a [`Monitor`] client subscribes to every kind-28333 event on it and
//! counts what it receives; that adds one subscriber to the relay's fan-out.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nostr::util::BoxedFuture;
use nostr::{Event, Filter, Kind, PublicKey, RelayUrl};
use nostr_relay_builder::prelude::{PolicyResult, WritePolicy};
use nostr_sdk::prelude::{Client, ClientOptions, RelayPoolNotification, RelayPoolOptions};
use nws_core::protocol::KIND_STREAM;
use nws_relay::EmbeddedRelay;
use serde::Serialize;

/// Stream events seen at the relay, split by direction.
#[derive(Debug, Default)]
pub struct EventCounter {
    exit_key: std::sync::OnceLock<PublicKey>,
    to_exit: AtomicU64,
    from_exit: AtomicU64,
    content_bytes: AtomicU64,
}

/// A reading of an [`EventCounter`]; subtract two to get one phase's share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventCount {
    /// Events not authored by the exit (entry streams, echo baseline).
    pub to_exit: u64,
    /// Events authored by the exit.
    pub from_exit: u64,
    /// Sum of the events' `content` lengths, in bytes.
    pub content_bytes: u64,
}

impl EventCount {
    /// Events either way.
    pub fn total(&self) -> u64 {
        self.to_exit + self.from_exit
    }

    /// What was counted between `earlier` and `self`.
    pub fn since(&self, earlier: &EventCount) -> EventCount {
        EventCount {
            to_exit: self.to_exit.saturating_sub(earlier.to_exit),
            from_exit: self.from_exit.saturating_sub(earlier.from_exit),
            content_bytes: self.content_bytes.saturating_sub(earlier.content_bytes),
        }
    }
}

impl EventCounter {
    /// Tells the counter which author is the exit (set once).
    pub fn set_exit(&self, exit: PublicKey) {
        let _ = self.exit_key.set(exit);
    }

    /// Counts one event if it is a stream event.
    pub fn count(&self, event: &Event) {
        if event.kind.as_u16() != KIND_STREAM {
            return;
        }
        if self.exit_key.get() == Some(&event.pubkey) {
            self.from_exit.fetch_add(1, Ordering::Relaxed);
        } else {
            self.to_exit.fetch_add(1, Ordering::Relaxed);
        }
        self.content_bytes
            .fetch_add(event.content.len() as u64, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn read(&self) -> EventCount {
        EventCount {
            to_exit: self.to_exit.load(Ordering::Relaxed),
            from_exit: self.from_exit.load(Ordering::Relaxed),
            content_bytes: self.content_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Notifications the monitor's pool may queue before it falls behind.
const NOTIFICATION_CHANNEL: usize = 65_536;

/// The write policy that counts admitted events and accepts them all.
#[derive(Debug)]
struct CountingPolicy(Arc<EventCounter>);

impl WritePolicy for CountingPolicy {
    fn admit_event<'a>(
        &'a self,
        event: &'a Event,
        _addr: &'a SocketAddr,
    ) -> BoxedFuture<'a, PolicyResult> {
        self.0.count(event);
        Box::pin(async { PolicyResult::Accept })
    }
}

/// The embedded relay on a free port of 127.0.0.1; stops when dropped.
pub struct CountingRelay {
    relay: EmbeddedRelay,
}

impl CountingRelay {
    /// Starts the relay with `nws relay`'s limits and the counting policy.
    pub async fn start(counter: Arc<EventCounter>) -> Result<Self, String> {
        let builder = EmbeddedRelay::builder().write_policy(CountingPolicy(counter));
        let addr = SocketAddr::from((IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
        let relay = EmbeddedRelay::start_with(addr, builder)
            .await
            .map_err(|e| format!("embedded relay: {e}"))?;
        Ok(Self { relay })
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> &RelayUrl {
        self.relay.url()
    }
}

/// A client subscribed to every stream event on an external relay.
pub struct Monitor {
    client: Client,
    task: tokio::task::JoinHandle<()>,
    lost: Arc<AtomicU64>,
}

impl Monitor {
    /// Connects to `url` (within 10 s), subscribes to kind 28333 and counts
    /// every event it receives into `counter`.
    pub async fn start(url: &RelayUrl, counter: Arc<EventCounter>) -> Result<Self, String> {
        let opts = ClientOptions::new()
            .pool(RelayPoolOptions::new().notification_channel_size(NOTIFICATION_CHANNEL));
        let client = Client::builder().opts(opts).build();
        client
            .add_relay(url.clone())
            .await
            .map_err(|e| format!("monitor: {e}"))?;
        let connected = client.try_connect(Duration::from_secs(10)).await;
        if connected.success.is_empty() {
            return Err(format!("monitor: cannot connect to {url}"));
        }
        let mut notifications = client.notifications();
        client
            .subscribe(Filter::new().kind(Kind::Custom(KIND_STREAM)), None)
            .await
            .map_err(|e| format!("monitor: subscribe: {e}"))?;
        let lost = Arc::new(AtomicU64::new(0));
        let lost_in_task = lost.clone();
        let task = tokio::spawn(async move {
            let lost = lost_in_task;
            loop {
                match notifications.recv().await {
                    Ok(RelayPoolNotification::Event { event, .. }) => counter.count(&event),
                    Ok(RelayPoolNotification::Shutdown) => return,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        lost.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Self { client, task, lost })
    }

    /// Notifications the monitor fell behind on (events not counted).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Disconnects.
    pub async fn stop(self) {
        self.task.abort();
        self.client.shutdown().await;
    }
}
