//! Public exits: their kind-38333 announcements, and the entry's directory
//! of exits announced recently.
//!
//! A public exit (`nws exit --public`) publishes, every
//! [`ANNOUNCE_INTERVAL`], an event of kind 38333 with empty content and a
//! NIP-40 `["expiration", <unix seconds>]` tag ([`announcement_event`];
//! `docs/PROTOCOL.md` §6). An entry with `--public-exits`
//! subscribes to that kind on its relays and keeps, in a [`Directory`], the
//! exits whose latest announcement is fresh ([`is_fresh`]); it picks one per
//! stream, in turn, and avoids for a while an exit that just failed.

use crate::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nostr::{Event, EventBuilder, Filter, Keys, Kind, PublicKey, RelayUrl, Tag, Timestamp};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::{CodecError, KIND_EXIT_ANNOUNCEMENT};
use crate::transport::Transport;

/// How often a public exit re-publishes its announcement.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(10);
/// How far in the future an announcement's `expiration` lies. The
/// reference implementation uses 10 s (its interval); 30 s leaves room for
/// a slow relay or a missed round without the exit dropping out.
pub const ANNOUNCE_LIFETIME: Duration = Duration::from_secs(30);
/// The lifetime of the announcement a public exit publishes when it stops
/// ([`crate::exit::ExitNode::stop`]): it replaces the last one, so entries
/// drop the exit when it expires.
pub const WITHDRAWAL_LIFETIME: Duration = Duration::from_secs(2);
/// An announcement older than this (by its `created_at`) is stale, whatever
/// its `expiration` says.
pub const MAX_ANNOUNCEMENT_AGE: Duration = Duration::from_secs(30);
/// How long an exit that failed to open a stream is tried only after the
/// others.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(30);
/// Tolerated clock skew for a `created_at` in the future, in seconds.
const FUTURE_SKEW_SECS: u64 = 60;

/// The kind-38333 announcement of a public exit: empty content, tags
/// `["expiration", now + lifetime]` (NIP-40, unix seconds) and `["d", ""]`,
/// signed by the exit's `keys`.
///
/// # Errors
///
/// [`CodecError::Sign`] if signing fails.
pub fn announcement_event(keys: &Keys, lifetime: Duration) -> Result<Event, CodecError> {
    let expiration = Timestamp::now() + lifetime;
    EventBuilder::new(Kind::Custom(KIND_EXIT_ANNOUNCEMENT), "")
        .tag(Tag::expiration(expiration))
        // Kind 38333 is addressable (NIP-01): with an empty `d` tag each
        // announcement replaces the last; some relays (nostr-relay-builder)
        // reject addressable events without one.
        .tag(Tag::identifier(""))
        .sign_with_keys(keys)
        .map_err(|e| CodecError::Sign(e.to_string()))
}

/// Whether `event` is a usable announcement at `now`: kind 38333, created
/// at most `max_age` ago (and at most a minute ahead, for clock skew), and
/// not expired (NIP-40; an announcement without `expiration` counts on its
/// age alone).
pub fn is_fresh(event: &Event, now: Timestamp, max_age: Duration) -> bool {
    if event.kind.as_u16() != KIND_EXIT_ANNOUNCEMENT {
        return false;
    }
    let created = event.created_at.as_secs();
    let now_s = now.as_secs();
    if created + max_age.as_secs() < now_s || created > now_s + FUTURE_SKEW_SECS {
        return false;
    }
    event.tags.expiration().is_none_or(|e| *e > now)
}

/// The filter for announcements: kind 38333, created in the last
/// [`MAX_ANNOUNCEMENT_AGE`].
pub fn announcement_filter() -> Filter {
    let since = Timestamp::now()
        .as_secs()
        .saturating_sub(MAX_ANNOUNCEMENT_AGE.as_secs());
    Filter::new()
        .kind(Kind::Custom(KIND_EXIT_ANNOUNCEMENT))
        .since(Timestamp::from_secs(since))
}

/// One exit's latest announcement.
#[derive(Debug, Clone, Copy)]
struct Seen {
    created_at: Timestamp,
    expiration: Option<Timestamp>,
}

/// The public exits an entry has seen announced, fed by a subscription to
/// kind 38333 on the entry's relays ([`Directory::start`]).
#[derive(Debug, Default)]
pub struct Directory {
    exits: Mutex<HashMap<PublicKey, Seen>>,
    failed: Mutex<HashMap<PublicKey, Instant>>,
    turn: AtomicUsize,
    changed: Notify,
}

impl Directory {
    /// Subscribes to announcements on `relays` through `transport` (once a
    /// relay is connected; retried until `cancel`) and keeps the directory
    /// current in a background task.
    pub fn start(
        transport: &Transport,
        relays: Vec<RelayUrl>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let dir = Arc::new(Self::default());
        let mut rx = transport.route_kind(KIND_EXIT_ANNOUNCEMENT);
        let weak = Arc::downgrade(&dir);
        let transport = transport.clone();
        tokio::spawn(async move {
            let subscribe = async {
                loop {
                    let ok = transport
                        .ensure_connected(&relays, Duration::from_secs(10))
                        .await
                        .is_ok()
                        && transport
                            .subscribe(announcement_filter(), &relays)
                            .await
                            .is_ok();
                    if ok {
                        return;
                    }
                    log::warn!("cannot subscribe to exit announcements yet; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            };
            tokio::select! {
                _ = subscribe => {}
                _ = cancel.cancelled() => return,
            }
            loop {
                let ev = tokio::select! {
                    ev = rx.recv() => match ev { Some(ev) => ev, None => return },
                    _ = cancel.cancelled() => return,
                };
                let Some(dir) = weak.upgrade() else { return };
                dir.insert(&ev);
            }
        });
        dir
    }

    /// Records an announcement if it is fresh and newer than the one held
    /// for its exit. Returns whether it was recorded.
    pub fn insert(&self, event: &Event) -> bool {
        let now = Timestamp::now();
        if !is_fresh(event, now, MAX_ANNOUNCEMENT_AGE) {
            // An expired announcement at least as new as the one held (a
            // withdrawal that arrived late) drops the exit.
            let expired = event.tags.expiration().is_some_and(|e| *e <= now);
            let mut exits = lock(&self.exits);
            if expired
                && event.kind.as_u16() == KIND_EXIT_ANNOUNCEMENT
                && exits
                    .get(&event.pubkey)
                    .is_some_and(|s| s.created_at <= event.created_at)
            {
                exits.remove(&event.pubkey);
                log::info!("public exit {} withdrawn", event.pubkey);
                return false;
            }
            log::debug!(
                "stale announcement {} from {}: ignored",
                event.id,
                event.pubkey
            );
            return false;
        }
        let seen = Seen {
            created_at: event.created_at,
            expiration: event.tags.expiration().copied(),
        };
        {
            let mut exits = lock(&self.exits);
            let entry = exits.entry(event.pubkey).or_insert(seen);
            if entry.created_at > seen.created_at {
                return false;
            }
            let new = entry.created_at == seen.created_at;
            *entry = seen;
            if new {
                log::info!("public exit {} announced", event.pubkey);
            }
        }
        self.changed.notify_waiters();
        true
    }

    /// The exits usable now: announced fresh, taken in turn (each call
    /// starts one further along, to spread streams), exits that failed in
    /// the last [`FAILURE_BACKOFF`] last.
    pub fn candidates(&self) -> Vec<PublicKey> {
        let now = Timestamp::now();
        let max_age = MAX_ANNOUNCEMENT_AGE.as_secs();
        let mut fresh: Vec<PublicKey> = {
            let mut exits = lock(&self.exits);
            exits.retain(|_, s| {
                s.created_at.as_secs() + max_age >= now.as_secs()
                    && s.expiration.is_none_or(|e| e > now)
            });
            exits.keys().copied().collect()
        };
        fresh.sort_by_key(|pk| pk.to_bytes());
        if !fresh.is_empty() {
            let shift = self.turn.fetch_add(1, Ordering::Relaxed) % fresh.len();
            fresh.rotate_left(shift);
        }
        let failed = {
            let mut failed = lock(&self.failed);
            failed.retain(|_, at| at.elapsed() < FAILURE_BACKOFF);
            failed.clone()
        };
        let (bad, mut good): (Vec<_>, Vec<_>) =
            fresh.into_iter().partition(|pk| failed.contains_key(pk));
        good.extend(bad);
        good
    }

    /// [`Directory::candidates`], waiting up to `timeout` for a first
    /// announcement if there is none yet.
    pub async fn wait_candidates(&self, timeout: Duration) -> Vec<PublicKey> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let found = self.candidates();
            if !found.is_empty() {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Vec::new();
            }
        }
    }

    /// Remembers that `exit` failed to open a stream (unreachable, no
    /// answer, full): it goes last for [`FAILURE_BACKOFF`].
    pub fn mark_failed(&self, exit: PublicKey) {
        lock(&self.failed).insert(exit, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_carries_an_expiration_and_is_fresh() {
        let keys = Keys::generate();
        let ev = announcement_event(&keys, ANNOUNCE_LIFETIME).unwrap();
        assert_eq!(ev.kind.as_u16(), 38333);
        assert!(ev.content.is_empty());
        let exp = ev.tags.expiration().copied().unwrap();
        assert!(exp > ev.created_at);
        assert!(is_fresh(&ev, Timestamp::now(), MAX_ANNOUNCEMENT_AGE));
        // At its expiration it no longer counts.
        assert!(!is_fresh(&ev, exp, Duration::from_secs(3600)));
    }

    #[test]
    fn old_announcements_are_stale() {
        let keys = Keys::generate();
        let ev = EventBuilder::new(Kind::Custom(KIND_EXIT_ANNOUNCEMENT), "")
            .custom_created_at(Timestamp::from_secs(Timestamp::now().as_secs() - 120))
            .sign_with_keys(&keys)
            .unwrap();
        assert!(!is_fresh(&ev, Timestamp::now(), MAX_ANNOUNCEMENT_AGE));
        let dir = Directory::default();
        assert!(!dir.insert(&ev));
        assert!(dir.candidates().is_empty());
    }

    #[test]
    fn candidates_take_turns_and_failed_exits_go_last() {
        let dir = Directory::default();
        let a = Keys::generate();
        let b = Keys::generate();
        for k in [&a, &b] {
            assert!(dir.insert(&announcement_event(k, ANNOUNCE_LIFETIME).unwrap()));
        }
        let first = dir.candidates();
        let second = dir.candidates();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0], second[1]);
        assert_eq!(first[1], second[0]);
        dir.mark_failed(a.public_key());
        for _ in 0..3 {
            assert_eq!(dir.candidates(), vec![b.public_key(), a.public_key()]);
        }
    }

    /// An announcement of `keys` created `created` seconds from now,
    /// expiring `expires` seconds from now (negative: in the past).
    fn announcement_at(keys: &Keys, created: i64, expires: i64) -> Event {
        let at = |d: i64| Timestamp::from_secs(Timestamp::now().as_secs().saturating_add_signed(d));
        EventBuilder::new(Kind::Custom(KIND_EXIT_ANNOUNCEMENT), "")
            .tag(Tag::expiration(at(expires)))
            .custom_created_at(at(created))
            .sign_with_keys(keys)
            .unwrap()
    }

    #[test]
    fn a_withdrawal_drops_the_exit_late_or_on_time() {
        let dir = Directory::default();
        let (a, b) = (Keys::generate(), Keys::generate());
        for k in [&a, &b] {
            assert!(dir.insert(&announcement_at(k, -5, 25)));
        }
        // On time: a newer announcement with a short lifetime replaces the
        // last one (it counts until it expires).
        assert!(dir.insert(&announcement_at(
            &a,
            -1,
            WITHDRAWAL_LIFETIME.as_secs() as i64
        )));
        // Late: already expired, but newer than the one held: dropped now.
        assert!(!dir.insert(&announcement_at(&b, -1, -1)));
        assert_eq!(dir.candidates(), vec![a.public_key()]);
        // An expired announcement older than the one held changes nothing.
        assert!(!dir.insert(&announcement_at(&a, -10, -1)));
        assert_eq!(dir.candidates(), vec![a.public_key()]);
    }
}
