//! Congestion control of a stream's sender (RFC 5681 / RFC 9002
//! vocabulary), counted in events rather than bytes: relays limit events
//! per second, and every event costs the relay the same work whatever its
//! size.
//!
//! - The **congestion window** bounds the events in flight (besides the
//!   peer's flow-control window). It starts at [`INITIAL_WINDOW`] events.
//! - **Slow start** grows it by one event per event acknowledged, until
//!   the slow-start threshold, a loss, or a rising round trip (queues
//!   building in front of a relay that throttles: the window stops growing
//!   when the latest round trip exceeds the smallest seen by half, as
//!   HyStart does).
//! - **Congestion avoidance** grows it by one event per window acknowledged,
//!   and not at all while round trips stay high.
//! - A **loss** (a gap the receiver reported) cuts it to 0.7 (CUBIC's
//!   beta: relays also lose events for reasons other than congestion),
//!   once per round trip (a recovery period); a **retransmission timeout**
//!   drops it to [`MIN_WINDOW`].
//! - **Pacing** spreads a window's events over a round trip (at 1.25 times
//!   the window per smoothed round trip, with a burst of
//!   [`PACING_BURST`]) instead of sending them at once.
//!
//! Relay feedback (`rate-limited:` answers, `NOTICE`s) slows the relay
//! connection's own pace, which every stream through it shares
//! (`nws-core`'s `path` module); what the relays refuse then shows up here
//! as loss.

use std::time::{Duration, Instant};

/// Congestion window at the start, in events.
pub(super) const INITIAL_WINDOW: f64 = 10.0;
/// Smallest congestion window, in events: enough for selective
/// acknowledgements to reveal a loss without waiting for a timeout.
pub(super) const MIN_WINDOW: f64 = 4.0;
/// Multiplicative decrease on a loss (CUBIC's beta): relays lose events
/// for reasons other than congestion, so a loss costs less than half.
const LOSS_DECREASE: f64 = 0.7;
/// Events a paced sender may send back to back.
const PACING_BURST: f64 = 4.0;
/// Pacing rate over window per round trip.
const PACING_GAIN: f64 = 1.25;

/// One stream's congestion controller.
#[derive(Debug, Clone)]
pub(super) struct Congestion {
    /// Congestion window, events.
    cwnd: f64,
    /// Slow-start threshold, events.
    ssthresh: f64,
    /// Losses of segments sent before this instant belong to the recovery
    /// already under way.
    recovery_start: Option<Instant>,
    /// Smallest round trip seen.
    min_rtt: Option<Duration>,
    /// Latest round trip sample.
    latest_rtt: Option<Duration>,
    /// Pacing tokens (events) and when they were counted.
    tokens: f64,
    tokens_at: Instant,
    /// Times the window was cut (losses and timeouts), for statistics.
    pub(super) reductions: u64,
}

impl Congestion {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            cwnd: INITIAL_WINDOW,
            ssthresh: f64::INFINITY,
            recovery_start: None,
            min_rtt: None,
            latest_rtt: None,
            tokens: PACING_BURST,
            tokens_at: now,
            reductions: 0,
        }
    }

    /// The congestion window, whole events.
    pub(super) fn window(&self) -> usize {
        self.cwnd as usize
    }

    /// Whether round trips are well above the smallest seen (a queue).
    fn queueing(&self) -> bool {
        match (self.latest_rtt, self.min_rtt) {
            (Some(l), Some(m)) => l > m + m / 2 + Duration::from_millis(4),
            _ => false,
        }
    }

    /// A round-trip sample.
    pub(super) fn on_rtt(&mut self, sample: Duration) {
        self.latest_rtt = Some(sample);
        self.min_rtt = Some(self.min_rtt.map_or(sample, |m| m.min(sample)));
        if self.cwnd < self.ssthresh && self.queueing() {
            // Leave slow start before the queue overflows.
            self.ssthresh = self.cwnd;
        }
    }

    /// `n` events were newly acknowledged.
    pub(super) fn on_acked(&mut self, n: usize) {
        let n = n as f64;
        if self.cwnd < self.ssthresh {
            self.cwnd += n;
        } else if !self.queueing() {
            self.cwnd += n / self.cwnd;
        }
    }

    /// A segment sent at `sent_at` was lost (the receiver reported a gap).
    pub(super) fn on_loss(&mut self, sent_at: Instant, now: Instant) {
        if self.recovery_start.is_some_and(|r| sent_at < r) {
            return;
        }
        self.recovery_start = Some(now);
        self.ssthresh = (self.cwnd * LOSS_DECREASE).max(MIN_WINDOW);
        self.cwnd = self.ssthresh;
        self.reductions += 1;
    }

    /// The retransmission timer fired.
    pub(super) fn on_timeout(&mut self, now: Instant) {
        if self.recovery_start.is_none_or(|r| now > r) {
            self.ssthresh = (self.cwnd * LOSS_DECREASE).max(MIN_WINDOW);
            self.reductions += 1;
        }
        self.cwnd = MIN_WINDOW;
        self.recovery_start = Some(now);
    }

    fn refill(&mut self, now: Instant, srtt: Option<Duration>) {
        let dt = now.saturating_duration_since(self.tokens_at).as_secs_f64();
        self.tokens_at = now;
        let Some(srtt) = srtt.filter(|s| !s.is_zero()) else {
            self.tokens = PACING_BURST;
            return;
        };
        let rate = PACING_GAIN * self.cwnd / srtt.as_secs_f64();
        self.tokens = (self.tokens + rate * dt).min(PACING_BURST.max(self.cwnd / 4.0));
    }

    /// Whether an event may go now; if so its pacing token is taken.
    /// Otherwise, when it may.
    pub(super) fn pace(&mut self, now: Instant, srtt: Option<Duration>) -> Result<(), Instant> {
        self.refill(now, srtt);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let srtt = srtt.unwrap_or(Duration::from_millis(1));
        let rate = PACING_GAIN * self.cwnd / srtt.as_secs_f64().max(1e-6);
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / rate);
        Err(now + wait.max(Duration::from_micros(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_then_one_cut_per_recovery() {
        let t0 = Instant::now();
        let mut c = Congestion::new(t0);
        assert_eq!(c.window(), 10);
        c.on_acked(10);
        assert_eq!(c.window(), 20);
        let t1 = t0 + Duration::from_millis(100);
        c.on_loss(t0, t1);
        assert_eq!(c.window(), 14);
        // Another loss of a segment sent before the recovery began: no cut.
        c.on_loss(
            t0 + Duration::from_millis(50),
            t1 + Duration::from_millis(1),
        );
        assert_eq!(c.window(), 14);
        // Congestion avoidance: one event per window.
        c.on_acked(14);
        assert_eq!(c.window(), 15);
        c.on_timeout(t1 + Duration::from_secs(1));
        assert_eq!(c.window(), 4);
        assert_eq!(c.reductions, 2);
    }

    #[test]
    fn rising_round_trips_end_slow_start() {
        let t0 = Instant::now();
        let mut c = Congestion::new(t0);
        c.on_rtt(Duration::from_millis(20));
        c.on_acked(10);
        assert_eq!(c.window(), 20);
        c.on_rtt(Duration::from_millis(60));
        c.on_acked(10);
        // Out of slow start, and no growth while the queue stands.
        assert_eq!(c.window(), 20);
        c.on_rtt(Duration::from_millis(21));
        c.on_acked(20);
        assert_eq!(c.window(), 21);
    }

    #[test]
    fn pacing_spreads_a_window_over_a_round_trip() {
        let t0 = Instant::now();
        let mut c = Congestion::new(t0);
        let srtt = Some(Duration::from_millis(100));
        let mut sent = 0;
        while c.pace(t0, srtt).is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 4, "a burst, then paced");
        let next = c.pace(t0, srtt).unwrap_err();
        // 10 events per 100 ms at gain 1.25: one every 8 ms.
        let gap = next - t0;
        assert!(
            gap >= Duration::from_millis(7) && gap <= Duration::from_millis(9),
            "{gap:?}"
        );
        assert!(c.pace(next, srtt).is_ok());
    }
}
