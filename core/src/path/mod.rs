//! What the transport learns about each relay it talks to, from what the
//! relay does rather than what it promises (the relay as a network path):
//!
//! - **size** ([`SizeSearch`]): the largest event message it takes, found
//!   like packetization-layer path MTU discovery (RFC 8899). Streams start
//!   at a size almost every relay takes ([`BASE_MESSAGE`]) or at the
//!   relay's NIP-11 figure, and the relay connection probes upward with
//!   probe events of its own (never stream data), one at a time, each
//!   followed by a tiny control event: an answer (`OK true`, or the relay
//!   echoing the probe to our own subscription) confirms the size; an
//!   `OK false` of any wording, empty or unmatched id included, or the
//!   control coming back while the probe does not (a black hole), rejects
//!   it. The search never goes back above a rejected size on that relay.
//! - **`OK` answers**: whether the relay answers ephemeral events at all
//!   (nostr-rs-relay does not), so nothing waits for an answer that never
//!   comes.
//! - **rate** ([`Pacer`]): after a `rate-limited:` answer or a `NOTICE`
//!   about rates, events to that relay are paced (a token bucket whose rate
//!   is cut on each signal and grows back slowly), and every stream through
//!   the relay shares that rate.
//!
//! [`socket`] is the websocket transport nostr-sdk's pool connects with: it
//! sees every frame of a relay connection and feeds these.

pub mod socket;

use std::time::{Duration, Instant};

/// Size of an `["EVENT", …]` message almost every relay takes, in bytes
/// (a 4 KiB content cap leaves room for it; about 1 KB of stream data):
/// streams use it until the relay's real limit is known.
pub const BASE_MESSAGE: usize = 4_000;
/// The largest event message streams ever need, in bytes (a full data
/// event of 30,000 bytes is about 55,300): the search stops there.
pub const MAX_MESSAGE: usize = 56_000;
/// Failed probes after which a relay's size search stops for good: the
/// optimistic first one, and the one that ends the walk up.
const MAX_FAILED_PROBES: u32 = 2;
/// Each probe of the walk up is this much larger than the confirmed size.
const STEP_UP: f64 = 1.25;

/// The size search of one relay (RFC 8899 vocabulary: the confirmed size is
/// the PLPMTU, the ceiling the largest size not known to fail). Sizes are
/// bytes of the whole `["EVENT", {…}]` websocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeSearch {
    /// Largest message size known to pass.
    pub confirmed: usize,
    /// Largest message size not known to fail (one less than the smallest
    /// rejected size, or the relay's published limit).
    pub ceiling: usize,
    /// Probes that failed.
    pub failed: u32,
}

impl Default for SizeSearch {
    fn default() -> Self {
        Self {
            confirmed: BASE_MESSAGE,
            ceiling: MAX_MESSAGE,
            failed: 0,
        }
    }
}

impl SizeSearch {
    /// The next size to probe, or `None` when the search is over.
    ///
    /// The first probe is the largest size streams need (most relays take
    /// it: one round trip). After a refusal the search walks up from the
    /// confirmed size in steps of a quarter, and the next refusal ends it:
    /// refusals are what cost (some relays throttle a connection harder
    /// after each one), so a relay is refused at most twice, and the size
    /// found is within a step of its limit.
    pub fn next_probe(&self) -> Option<usize> {
        if self.confirmed >= self.ceiling || self.failed >= MAX_FAILED_PROBES {
            return None;
        }
        if self.failed == 0 && self.ceiling >= MAX_MESSAGE {
            return Some(MAX_MESSAGE);
        }
        let next = ((self.confirmed as f64 * STEP_UP) as usize).min(self.ceiling);
        (next > self.confirmed).then_some(next)
    }

    /// A message of `size` bytes was taken.
    pub fn accepted(&mut self, size: usize) {
        if size > self.confirmed {
            self.confirmed = size.min(self.ceiling.max(BASE_MESSAGE));
        }
    }

    /// A message of `size` bytes was refused or vanished while smaller
    /// ones passed. Returns whether the confirmed size fell (data already
    /// sized to it must be split again).
    pub fn rejected(&mut self, size: usize) -> bool {
        if size > self.confirmed {
            self.failed += 1;
            self.ceiling = self.ceiling.min(size - 1);
            return false;
        }
        if size <= BASE_MESSAGE {
            // Below the base size a refusal is about something else.
            return false;
        }
        // The relay refused a size it took before: its limit went down.
        self.ceiling = size - 1;
        self.confirmed = (size / 2).max(BASE_MESSAGE);
        true
    }

    /// The relay publishes a limit of `limit` message bytes (NIP-11): it is
    /// the ceiling, and trusted as confirmed unless the relay contradicted
    /// it already.
    pub fn published(&mut self, limit: usize) {
        self.ceiling = self.ceiling.min(limit.max(BASE_MESSAGE));
        self.confirmed = self.confirmed.max(self.ceiling.min(limit));
    }
}

/// Events per second a relay is allowed, once it said it wants fewer (a
/// token bucket; `None` rate while no signal came).
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: Option<f64>,
    tokens: f64,
    at: Instant,
    /// Events sent in the current one-second window and the one before
    /// (the send rate when the first signal comes).
    window_start: Instant,
    sent_now: u32,
    sent_before: u32,
    last_signal: Option<Instant>,
}

/// Lowest pace, events per second.
const MIN_RATE: f64 = 1.0;
/// Pace the first rate-limit signal starts from when nothing was measured.
const FIRST_RATE: f64 = 10.0;
/// Multiplicative decrease on each rate-limit signal.
const RATE_DECREASE: f64 = 0.7;
/// Signals closer together than this count once.
const SIGNAL_HOLDOFF: Duration = Duration::from_millis(500);
/// Additive increase, events per second per second without a signal.
const RATE_INCREASE_PER_S: f64 = 0.5;

impl Pacer {
    /// No pace yet: events go at once.
    pub fn new(now: Instant) -> Self {
        Self {
            rate: None,
            tokens: 0.0,
            at: now,
            window_start: now,
            sent_now: 0,
            sent_before: 0,
            last_signal: None,
        }
    }

    /// The pace in force, events per second.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        if let Some(rate) = self.rate.as_mut() {
            if self
                .last_signal
                .is_some_and(|t| now > t + Duration::from_secs(2))
            {
                *rate += RATE_INCREASE_PER_S * dt;
            }
            self.tokens = (self.tokens + *rate * dt).min(rate.max(1.0));
        }
    }

    /// When an event may go (now, or later), and takes its token.
    pub fn reserve(&mut self, now: Instant) -> Instant {
        if now >= self.window_start + Duration::from_secs(1) {
            self.sent_before = if now >= self.window_start + Duration::from_secs(2) {
                0
            } else {
                self.sent_now
            };
            self.sent_now = 0;
            self.window_start = now;
        }
        self.sent_now += 1;
        let Some(rate) = self.rate else {
            return now;
        };
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-self.tokens / rate)
        }
    }

    /// The relay said it wants fewer events (`rate-limited:`, a `NOTICE`).
    pub fn slow_down(&mut self, now: Instant) {
        if self.last_signal.is_some_and(|t| now < t + SIGNAL_HOLDOFF) {
            return;
        }
        self.last_signal = Some(now);
        self.refill(now);
        let measured = f64::from(self.sent_now.max(self.sent_before));
        let next = match self.rate {
            Some(r) => r * RATE_DECREASE,
            None if measured > 0.0 => measured * RATE_DECREASE,
            None => FIRST_RATE,
        };
        self.rate = Some(next.max(MIN_RATE));
        self.tokens = self.tokens.min(0.0);
    }
}

/// Whether an `OK false` message is about something other than the event's
/// size (NIP-01 machine-readable prefixes): rates, authentication, a
/// duplicate, proof of work, policy. Anything else (`invalid:`, `error:`,
/// no prefix, any wording) may be a size limit.
pub fn is_not_about_size(message: &str) -> bool {
    const OTHER: [&str; 7] = [
        "rate-limited:",
        "auth-required:",
        "duplicate:",
        "pow:",
        "blocked:",
        "restricted:",
        "mute:",
    ];
    let m = message.trim_start().to_ascii_lowercase();
    OTHER.iter().any(|p| m.starts_with(p))
}

/// Whether a `NOTICE` (or an `OK false`) says the connection sends too fast.
pub fn is_rate_signal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.starts_with("rate-limited:")
        || m.contains("rate limit")
        || m.contains("rate-limit")
        || m.contains("too many")
        || m.contains("slow down")
        || m.contains("too fast")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay that refuses messages above `cap`: the probes the search
    /// sends, and where it stops.
    fn search_against(cap: usize) -> (SizeSearch, Vec<usize>) {
        let mut s = SizeSearch::default();
        let mut probes = Vec::new();
        while let Some(p) = s.next_probe() {
            probes.push(p);
            assert!(probes.len() < 20, "search does not end: {probes:?}");
            if p <= cap {
                s.accepted(p);
            } else {
                s.rejected(p);
            }
        }
        (s, probes)
    }

    #[test]
    fn a_relay_that_takes_everything_costs_one_probe() {
        let (s, probes) = search_against(1 << 20);
        assert_eq!(probes, vec![MAX_MESSAGE]);
        assert_eq!(s.confirmed, MAX_MESSAGE);
    }

    #[test]
    fn caps_are_found_with_two_rejections_and_never_exceeded() {
        for cap in [4_096 + 450, 9_000, 17_000, 50_000] {
            check_cap(cap);
        }
    }

    fn check_cap(cap: usize) {
        let (s, probes) = search_against(cap);
        let rejected = probes.iter().filter(|&&p| p > cap).count();
        assert!(rejected <= 2, "{probes:?}");
        assert!(s.confirmed <= cap && s.confirmed as f64 >= cap as f64 / STEP_UP);
        assert!(s.ceiling >= s.confirmed);
        // No probe above a size already rejected.
        for (i, &p) in probes.iter().enumerate() {
            let min_rejected = probes[..i].iter().filter(|&&q| q > cap).min();
            assert!(min_rejected.is_none_or(|&r| p < r), "{probes:?}");
        }
    }

    #[test]
    fn a_cap_below_the_base_stops_the_search_at_the_base() {
        let (s, probes) = search_against(1_000);
        assert_eq!(s.confirmed, BASE_MESSAGE);
        assert!(probes.len() <= MAX_FAILED_PROBES as usize, "{probes:?}");
    }

    #[test]
    fn a_limit_that_falls_later_lowers_the_confirmed_size() {
        let mut s = SizeSearch::default();
        s.accepted(MAX_MESSAGE);
        assert!(s.rejected(20_000));
        assert_eq!(s.confirmed, 10_000);
        assert_eq!(s.ceiling, 19_999);
        assert_eq!(s.next_probe(), Some(12_500));
    }

    #[test]
    fn a_published_limit_is_the_start_and_the_ceiling() {
        let mut s = SizeSearch::default();
        s.published(16_384);
        assert_eq!((s.confirmed, s.ceiling), (16_384, 16_384));
        assert_eq!(s.next_probe(), None);
    }

    #[test]
    fn size_and_rate_words() {
        assert!(!is_not_about_size("invalid: rejected"));
        assert!(!is_not_about_size(""));
        assert!(is_not_about_size("rate-limited: slow down"));
        assert!(is_not_about_size("auth-required: please"));
        assert!(is_rate_signal("rate-limited: slow down"));
        assert!(is_rate_signal("you are sending too many events"));
        assert!(!is_rate_signal("invalid: rejected"));
    }

    #[test]
    fn the_pacer_cuts_on_signals_and_spaces_events() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        for _ in 0..50 {
            assert_eq!(p.reserve(t0), t0);
        }
        p.slow_down(t0);
        let rate = p.rate().unwrap();
        assert!((rate - 35.0).abs() < 1e-6, "{rate}");
        let a = p.reserve(t0);
        let b = p.reserve(t0);
        assert!(b > a);
        let gap = b.duration_since(a).as_secs_f64();
        assert!((gap - 1.0 / 35.0).abs() < 1e-3, "{gap}");
        // A second signal within the hold-off counts once.
        p.slow_down(t0 + Duration::from_millis(10));
        assert_eq!(p.rate(), Some(rate));
        p.slow_down(t0 + Duration::from_secs(1));
        assert!(p.rate().unwrap() < rate);
    }
}
