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
use std::time::Duration;

use nostr::{Keys, PublicKey, RelayUrl, SubscriptionId};

use super::OpenError;
use crate::demux::{Demux, Routed};
use crate::protocol::Cipher;
use crate::sync::lock;
use crate::transport::{entry_stream_filter, Transport, TransportError};

/// One subscription per exit (and relay set) for the answers to all of the
/// entry's streams to it: `authors [exit]`, `#p [every open stream's key,
/// and the spare keys]`.
///
/// Relays cap subscriptions per connection (nostr-rs-relay at 32), so one
/// REQ per stream would fail under load; instead the exit's REQ is re-sent
/// with the same id and the current keys, which replaces the filter
/// (NIP-01).
///
/// A new stream must not wait for that: each exit's subscription keeps
/// [`SPARE_KEYS`] fresh keys (and their conversation keys with the exit)
/// already in its filter. A stream takes one ([`ExitSubscriptions::take`])
/// and sends its `CONNECT` at once; a replacement is made and subscribed in
/// the background. Each key still serves one stream only, so streams stay
/// unlinkable. Only the first stream to an exit subscribes before its
/// `CONNECT` (on the same connection, so the relay knows the key first).
#[derive(Default)]
pub(crate) struct ExitSubscriptions {
    by_exit: Arc<tokio::sync::Mutex<ByExit>>,
}

/// Each exit's subscription, by exit and relay set.
type ByExit = HashMap<(PublicKey, Vec<RelayUrl>), ExitSubscription>;

/// Fresh keys each exit's subscription holds ready for the next streams.
pub(crate) const SPARE_KEYS: usize = 4;

/// How long after a spare key is taken its replacement is subscribed.
///
/// Not at once: the REQ would reach the relay right behind the stream's
/// `CONNECT`, and a relay reads one connection's messages in order, so the
/// `CONNECT` would wait while the relay processes a filter of every open
/// stream's key (seen with strace through nostr-relay-builder: the `EVENT`
/// went out to the exit only after the `EOSE` for the REQ). Waiting also
/// makes one REQ of the spares taken by a burst of streams.
pub(crate) const REPLENISH_DELAY: Duration = Duration::from_millis(5);

struct ExitSubscription {
    id: SubscriptionId,
    keys: SubscribedKeys,
    /// Keys in the filter that no stream has used yet.
    spares: Vec<(Keys, Cipher)>,
    /// A replenishment is scheduled ([`REPLENISH_DELAY`]).
    replenishing: bool,
}

/// The recipient keys of one exit's subscription, shared with the streams'
/// routes so that each removes itself when it ends.
pub(crate) type SubscribedKeys = Arc<Mutex<HashSet<PublicKey>>>;

/// A stream's fresh key, its conversation key with the exit, and the key
/// set its route removes it from.
pub(crate) struct FreshKey {
    pub keys: Keys,
    pub cipher: Cipher,
    pub subscribed: SubscribedKeys,
}

impl ExitSubscriptions {
    /// A fresh key for a new stream to `exit`, already in the exit's
    /// subscription on `relays`: a spare if there is one (replaced in the
    /// background), else a new key subscribed now, with the spares.
    pub(crate) async fn take(
        &self,
        transport: &Transport,
        exit: PublicKey,
        relays: &[RelayUrl],
    ) -> Result<FreshKey, OpenError> {
        let mut map = self.by_exit.lock().await;
        let sub = subscription(&mut map, exit, relays);
        if let Some((keys, cipher)) = sub.spares.pop() {
            let subscribed = sub.keys.clone();
            if !std::mem::replace(&mut sub.replenishing, true) {
                self.replenish(transport, exit, relays);
            }
            drop(map);
            return Ok(FreshKey {
                keys,
                cipher,
                subscribed,
            });
        }
        let keys = Keys::generate();
        let cipher = Cipher::derive(keys.secret_key(), &exit)?;
        lock(&sub.keys).insert(keys.public_key());
        while sub.spares.len() < SPARE_KEYS {
            sub.spares.push(new_spare(&exit, &sub.keys)?);
        }
        // Held across the REQ so that filters go out in the order they were made.
        if let Err(e) = resubscribe(transport, sub, exit, relays).await {
            lock(&sub.keys).remove(&keys.public_key());
            return Err(e.into());
        }
        Ok(FreshKey {
            keys,
            cipher,
            subscribed: sub.keys.clone(),
        })
    }

    /// Makes spare keys for `exit` up to [`SPARE_KEYS`] and re-sends its
    /// subscription, in the background after [`REPLENISH_DELAY`].
    fn replenish(&self, transport: &Transport, exit: PublicKey, relays: &[RelayUrl]) {
        let by_exit = Arc::clone(&self.by_exit);
        let transport = transport.clone();
        let relays = relays.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(REPLENISH_DELAY).await;
            let mut map = by_exit.lock().await;
            let Some(sub) = map.get_mut(&(exit, relays.clone())) else {
                return;
            };
            sub.replenishing = false;
            while sub.spares.len() < SPARE_KEYS {
                match new_spare(&exit, &sub.keys) {
                    Ok(spare) => sub.spares.push(spare),
                    Err(e) => {
                        log::warn!("spare stream key for {exit}: {e}");
                        return;
                    }
                }
            }
            if let Err(e) = resubscribe(&transport, sub, exit, &relays).await {
                log::debug!("subscription for {exit} not re-sent: {e}");
            }
        });
    }
}

/// `exit`'s subscription on `relays`, made (empty) if there is none yet.
fn subscription<'a>(
    map: &'a mut ByExit,
    exit: PublicKey,
    relays: &[RelayUrl],
) -> &'a mut ExitSubscription {
    map.entry((exit, relays.to_vec()))
        .or_insert_with(|| ExitSubscription {
            id: SubscriptionId::generate(),
            keys: Arc::default(),
            spares: Vec::new(),
            replenishing: false,
        })
}

/// A new spare key for `exit`, added to the subscribed key set.
fn new_spare(exit: &PublicKey, subscribed: &SubscribedKeys) -> Result<(Keys, Cipher), OpenError> {
    let keys = Keys::generate();
    let cipher = Cipher::derive(keys.secret_key(), exit)?;
    lock(subscribed).insert(keys.public_key());
    Ok((keys, cipher))
}

/// Re-sends `sub`'s REQ with every key it holds now (NIP-01 replaces the filter).
async fn resubscribe(
    transport: &Transport,
    sub: &ExitSubscription,
    exit: PublicKey,
    relays: &[RelayUrl],
) -> Result<(), TransportError> {
    let keys: Vec<PublicKey> = lock(&sub.keys).iter().copied().collect();
    log::debug!("subscription for {exit}: {} stream keys", keys.len());
    let filter = entry_stream_filter(&exit, keys);
    transport
        .subscribe_with_id(sub.id.clone(), filter, relays)
        .await
}

impl ExitSubscriptions {
    /// Stream keys in all exits' subscriptions now: open streams' (not
    /// lingering ones') and the spares.
    pub(crate) async fn key_count(&self) -> usize {
        let map = self.by_exit.lock().await;
        map.values().map(|sub| lock(&sub.keys).len()).sum()
    }

    /// Puts a persistent entry key into `exit`'s subscription on `relays`
    /// (the REQ goes once, before the first stream's `CONNECT`; the pool
    /// sends it again after reconnects).
    pub(crate) async fn add(
        &self,
        transport: &Transport,
        exit: PublicKey,
        relays: &[RelayUrl],
        key: PublicKey,
    ) -> Result<(), TransportError> {
        let mut map = self.by_exit.lock().await;
        let sub = subscription(&mut map, exit, relays);
        if !lock(&sub.keys).insert(key) {
            return Ok(());
        }
        resubscribe(transport, sub, exit, relays).await
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
        lock(&self.keys).remove(&self.recipient);
    }
}

impl crate::driver::Keep for StreamRoute {
    /// A lingering stream's key leaves the key set (the route stays until
    /// the stream is dropped). The relays keep it in their filter until the
    /// next stream to this exit re-sends the subscription (an extra REQ per
    /// close buys nothing), so the peer's last retransmissions still arrive
    /// meanwhile; without this, every stream of the last `give_up_after`
    /// (60 s) stayed in each REQ: 617 keys, 40 KB, after 300 requests in
    /// `nws-bench`, 208 KB after 3,000.
    fn lingering(&mut self) {
        lock(&self.keys).remove(&self.recipient);
    }
}

/// Starts routing events addressed to a persistent entry key through a
/// [`Demux`]; messages no stream claims are dropped with a log line.
pub(crate) fn persistent_key_demux(transport: &Transport, keys: Keys) -> Arc<Demux> {
    let demux = Demux::new(keys, true, crate::protocol::Sender::Exit);
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
