//! [`FaultConfig`] (what to inject) and [`FaultStats`] (what was injected).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Default [`FaultConfig::throttle_base`]: the first throttle sleep, 2 s.
pub const DEFAULT_THROTTLE_BASE: Duration = Duration::from_secs(2);
/// The throttle sleep stops doubling after this many doublings: at most
/// `throttle_base × 32` (64 s with the default base).
pub const THROTTLE_MAX_DOUBLINGS: u32 = 5;
/// Ephemeral events whose `created_at` is further than this in the past are
/// refused while [`FaultConfig::store_ephemeral`] is on (strfry: 60 s).
pub const EPHEMERAL_MAX_AGE: Duration = Duration::from_secs(60);

/// What faults a [`FaultyRelay`](super::FaultyRelay) injects. [`Default`] injects none.
///
/// Client `EVENT`s go through the checks in this order; the first that refuses
/// one decides its answer: `auth_required`, `max_events_per_sec`,
/// `max_event_bytes`, `content_cap`, the too-old check of `store_ephemeral`,
/// then `drop_publish`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultConfig {
    /// Probability of dropping an EVENT the client publishes (never forwarded, no OK).
    pub drop_publish: f64,
    /// Probability of dropping an EVENT the relay delivers to the client.
    pub drop_deliver: f64,
    /// Events whose JSON (the event object) is larger than this many bytes are not
    /// forwarded; the client gets
    /// `["OK", id, false, "invalid: event too large (N > LIMIT bytes)"]`.
    ///
    /// The size is that of the event object's compact JSON serialization (what
    /// nostr-sdk sends). The limit also applies to events the relay delivers: those
    /// are silently withheld from the client (counted in
    /// [`FaultStats::deliver_rejected`]).
    pub max_event_bytes: Option<usize>,
    /// Client EVENTs over `max_event_bytes` vanish without an `OK` (as
    /// nostr-rs-relay does) instead of `OK false`.
    pub silent_size_drops: bool,
    /// `limitation.max_message_length` of the NIP-11 document served to an
    /// HTTP `GET` with `Accept: application/nostr+json`; `None` serves a
    /// document without limits.
    pub nip11_max_message_length: Option<usize>,
    /// Subscriptions are widened to their `kinds` alone (authors, tags and
    /// ids are dropped from every `REQ` filter): the client gets every
    /// event of those kinds, from anyone to anyone, as from a relay that
    /// ignores filters.
    pub ignore_filters: bool,
    /// Opaque content cap: a client EVENT whose `content` is longer than this
    /// many characters (Unicode scalar values, not bytes) is not forwarded and
    /// is answered `["OK","",false,"invalid: rejected"]`: an empty event id
    /// and a reason that names neither size nor limit. Counted in
    /// [`FaultStats::rejected_opaque`] (and `publish_rejected`). Not
    /// advertised in the NIP-11 document.
    pub content_cap: Option<usize>,
    /// After each refusal by `content_cap` or `max_event_bytes` (silent ones
    /// included), the connection stops reading from the client for
    /// `throttle_base × 2^(n-1)` where n counts such refusals on that
    /// connection (2, 4, 8, 16, 32 s with the default base), at most
    /// `throttle_base × 32` (64 s); never reset while the connection lives.
    /// The refusal itself is sent first, and frames from the relay keep
    /// flowing during the sleep. Counted in [`FaultStats::throttle_sleeps`].
    pub throttle_after_reject: bool,
    /// First sleep of `throttle_after_reject` ([`DEFAULT_THROTTLE_BASE`]: 2 s).
    pub throttle_base: Duration,
    /// Client EVENTs of kinds 20000..=29999 are forwarded, but the relay's
    /// `OK` for them is withheld from the client, as nostr-rs-relay never
    /// answers ephemeral events. Only the first `OK` for each such id on that
    /// connection is withheld. Counted in [`FaultStats::ok_swallowed`].
    pub no_ok_for_ephemeral: bool,
    /// The middlebox keeps a copy of every forwarded client EVENT of kinds
    /// 20000..=29999 for this long (shared by all connections of this
    /// middlebox). After forwarding a client's `REQ`, it sends that client
    /// `["EVENT", subid, event]` for each kept event that matches one of the
    /// `REQ`'s filters (ids, kinds, authors, tags, `since`, `until`; `limit`
    /// ignored), oldest first, independently of the relay's EOSE (counted in
    /// [`FaultStats::stored_replayed`]). It also refuses ephemeral events whose
    /// `created_at` is more than 60 s ([`EPHEMERAL_MAX_AGE`]) in the past:
    /// `["OK", id, false, "invalid: event too old"]` (counted in
    /// `publish_rejected`). Models relays that keep ephemerals for minutes
    /// (strfry: 5 min).
    pub store_ephemeral: Option<Duration>,
    /// Per connection, client EVENTs beyond this rate (a token bucket
    /// refilled at this many per second, holding at most as many) are not
    /// forwarded and are answered `["OK", id, false, "rate-limited: slow
    /// down"]`. `Some(0)` refuses every EVENT. Counted in
    /// [`FaultStats::rate_limited`] (and `publish_rejected`).
    pub max_events_per_sec: Option<u32>,
    /// NIP-42. Each connection gets a random challenge, sent as
    /// `["AUTH", "<challenge>"]` right after the websocket handshake (or
    /// before the first refusal, if this was switched on later). Until the
    /// client sends `["AUTH", <event>]` with a validly signed kind-22242 event
    /// whose `challenge` tag equals the challenge and that has a `relay` tag
    /// (answered `["OK", <id>, true, ""]`; otherwise
    /// `["OK", <id>, false, "invalid: <why>"]`), every client EVENT is answered
    /// `["OK", id, false, "auth-required: please authenticate"]` and every
    /// `REQ` `["CLOSED", subid, "auth-required: please authenticate"]`; neither
    /// is forwarded. `AUTH` messages are never forwarded to the relay once a
    /// challenge was sent. Counted in [`FaultStats::auth_rejected`],
    /// [`FaultStats::auth_ok`] and [`FaultStats::auth_failed`].
    pub auth_required: bool,
    /// RNG seed.
    pub seed: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            drop_publish: 0.0,
            drop_deliver: 0.0,
            max_event_bytes: None,
            silent_size_drops: false,
            nip11_max_message_length: None,
            ignore_filters: false,
            content_cap: None,
            throttle_after_reject: false,
            throttle_base: DEFAULT_THROTTLE_BASE,
            no_ok_for_ephemeral: false,
            store_ephemeral: None,
            max_events_per_sec: None,
            auth_required: false,
            seed: 0,
        }
    }
}

impl FaultConfig {
    /// The sleep after the `n`-th throttled refusal on a connection (n ≥ 1).
    pub fn throttle_delay(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(THROTTLE_MAX_DOUBLINGS);
        self.throttle_base * (1u32 << doublings)
    }
}

/// Defines [`FaultStats`] and its atomic twin `Counters` from one list.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters of a [`FaultyRelay`](super::FaultyRelay) since it started.
        ///
        /// For each direction, `seen = forwarded + dropped + rejected` once the
        /// middlebox is idle (`seen` is counted just before the decision is taken).
        /// The per-mode counters below add detail to those totals.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct FaultStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        #[derive(Default)]
        pub(super) struct Counters {
            $(pub(super) $name: AtomicU64,)*
        }

        impl Counters {
            pub(super) fn snapshot(&self) -> FaultStats {
                FaultStats {
                    $($name: self.$name.load(Ordering::SeqCst),)*
                }
            }
        }
    };
}

counters! {
    /// Client connections accepted (TCP level, before the websocket handshake).
    connections,
    /// EVENT messages received from clients.
    publish_seen,
    /// Client EVENTs handed to the upstream relay.
    publish_forwarded,
    /// Client EVENTs dropped by `drop_publish` (no OK sent).
    publish_dropped,
    /// Client EVENTs refused by any mode (`max_event_bytes`, `content_cap`,
    /// `max_events_per_sec`, `auth_required`, too old for `store_ephemeral`).
    publish_rejected,
    /// EVENT messages received from the upstream relay.
    deliver_seen,
    /// Relay EVENTs handed to the client.
    deliver_forwarded,
    /// Relay EVENTs dropped by `drop_deliver`.
    deliver_dropped,
    /// Relay EVENTs withheld by `max_event_bytes`.
    deliver_rejected,
    /// Client EVENTs refused by `content_cap` (the empty-id OK).
    rejected_opaque,
    /// Sleeps taken by `throttle_after_reject`.
    throttle_sleeps,
    /// Relay OKs withheld by `no_ok_for_ephemeral`.
    ok_swallowed,
    /// Kept ephemeral events sent to a client after its REQ (`store_ephemeral`).
    stored_replayed,
    /// Client EVENTs refused by `max_events_per_sec`.
    rate_limited,
    /// Client EVENTs and REQs refused with `auth-required:`.
    auth_rejected,
    /// AUTH messages accepted.
    auth_ok,
    /// AUTH messages refused (bad signature, kind, challenge or tags).
    auth_failed,
}

/// Adds one to `counter`.
pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}
