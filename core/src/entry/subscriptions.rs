//! How an entry hears its streams' answers: one subscription per exit (and
//! relay set) for all its streams to that exit, and the route of each
//! stream's recipient key.
//!
//! With a fresh key per stream (the default), the transport routes events
//! by recipient, so each stream has its own route ([`StreamRoute`]). With a
//! persistent entry key, every stream shares one recipient key, and the
//! shared [`Demux`] hands each message to its stream by author × stream
//! key ([`persistent_key_demux`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use nostr::{Keys, PublicKey, RelayUrl, SubscriptionId};

use crate::demux::{Demux, Routed};
use crate::sync::lock;
use crate::transport::{entry_stream_filter, Transport, TransportError};

/// One subscription per exit (and relay set) for the answers to all of the
/// entry's streams to it: `authors [exit]`, `#p [every open stream's key]`.
///
/// Relays cap subscriptions per connection (nostr-rs-relay at 32), so one
/// REQ per stream would fail under load; instead each new stream re-sends
/// the exit's REQ with the same id and the current keys, which replaces the
/// filter (NIP-01) before the stream's `CONNECT` goes out on the same
/// connection.
#[derive(Default)]
pub(crate) struct ExitSubscriptions {
    by_exit: tokio::sync::Mutex<HashMap<(PublicKey, Vec<RelayUrl>), ExitSubscription>>,
}

struct ExitSubscription {
    id: SubscriptionId,
    keys: Arc<Mutex<HashSet<PublicKey>>>,
}

/// The recipient keys of one exit's subscription, shared with the streams'
/// routes so that each removes itself when it ends.
pub(crate) type SubscribedKeys = Arc<Mutex<HashSet<PublicKey>>>;

impl ExitSubscriptions {
    /// Adds `key` to the exit's subscription and re-sends it; returns the
    /// key set the stream's route removes itself from.
    pub(crate) async fn add(
        &self,
        transport: &Transport,
        exit: PublicKey,
        relays: &[RelayUrl],
        key: PublicKey,
    ) -> Result<SubscribedKeys, TransportError> {
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

/// A fresh-key stream's route: removes the route, and the key from the
/// exit's subscription, when the stream is dropped.
pub(crate) struct StreamRoute {
    pub(crate) transport: Transport,
    pub(crate) recipient: PublicKey,
    pub(crate) keys: SubscribedKeys,
}

impl Drop for StreamRoute {
    fn drop(&mut self) {
        self.transport.unroute(&self.recipient);
        // The relays keep the stale key until the next stream to this exit
        // re-sends the subscription: an extra REQ per close buys nothing.
        lock(&self.keys).remove(&self.recipient);
    }
}

/// Starts routing events addressed to a persistent entry key through a
/// [`Demux`]; messages no stream claims are dropped with a log line.
pub(crate) fn persistent_key_demux(transport: &Transport, keys: Keys) -> Arc<Demux> {
    let demux = Demux::new(keys, true);
    let mut rx = transport.route(demux.keys().public_key());
    let weak = Arc::downgrade(&demux);
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let Some(demux) = weak.upgrade() else { return };
            if let Routed::Unclaimed { msg, .. } = demux.route(&ev) {
                log::debug!("message for unknown stream {}: dropped", msg.key);
            }
        }
    });
    demux
}
