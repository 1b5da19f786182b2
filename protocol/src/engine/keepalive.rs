//! Liveness of an open version-2 stream (TCP keepalive's idea, with the
//! bounded probes of a retransmission timer): when the peer has been quiet
//! for a while, a `PING` asks it to answer; a peer that answers nothing to
//! [`MAX_PINGS`] pings in a row is gone and the stream aborts with
//! `timeout`. A peer that restarted answers `ERROR` `unknown-stream` to the
//! first ping, which aborts the stream at once.
//!
//! The quiet interval starts at [`IDLE_FIRST`] after the peer's last data
//! and doubles (up to [`IDLE_MAX`]) with every ping the peer answers while
//! sending nothing: a stream that waits mid-transfer is checked within
//! seconds, an idle pooled connection costs a ping a minute.

use std::time::{Duration, Instant};

/// Quiet interval before the first ping after the peer's last data.
pub(super) const IDLE_FIRST: Duration = Duration::from_secs(4);
/// Longest quiet interval between pings of a peer that answers them.
pub(super) const IDLE_MAX: Duration = Duration::from_secs(60);
/// Unanswered pings in a row after which the peer counts as gone.
pub(super) const MAX_PINGS: u32 = 4;
/// Shortest wait for a ping's answer.
const MIN_PING_WAIT: Duration = Duration::from_millis(500);

/// The keepalive state of one stream.
#[derive(Debug, Clone)]
pub(super) struct Keepalive {
    /// Quiet interval before the next first ping.
    idle: Duration,
    /// Pings sent since the peer was last heard.
    unanswered: u32,
}

/// What the keepalive timer asks for when it fires.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// Send a ping, and look again at the given time.
    Ping(Instant),
    /// The peer answered none of the pings: abort.
    GiveUp,
}

impl Keepalive {
    pub(super) fn new() -> Self {
        Self {
            idle: IDLE_FIRST,
            unanswered: 0,
        }
    }

    /// The peer was heard at `now` (`data`: it sent stream bytes, or
    /// closed). Returns when to ping next if it goes quiet.
    pub(super) fn heard(&mut self, now: Instant, data: bool) -> Instant {
        if data {
            self.idle = IDLE_FIRST;
        } else if self.unanswered > 0 {
            // It answered a ping and has nothing to say: ask less often.
            self.idle = (self.idle * 2).min(IDLE_MAX);
        }
        self.unanswered = 0;
        now + self.idle
    }

    /// The timer fired at `now`; `rto` is the stream's retransmission
    /// timeout (a ping is answered within about one round trip).
    pub(super) fn fire(&mut self, now: Instant, rto: Duration) -> Due {
        if self.unanswered >= MAX_PINGS {
            return Due::GiveUp;
        }
        let wait = (rto * (1 << self.unanswered.min(6))).max(MIN_PING_WAIT);
        self.unanswered += 1;
        Due::Ping(now + wait)
    }

    /// Pings sent and not answered yet.
    pub(super) fn unanswered(&self) -> u32 {
        self.unanswered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_is_given_up_after_bounded_pings() {
        let t0 = Instant::now();
        let mut k = Keepalive::new();
        let mut at = k.heard(t0, true);
        assert_eq!(at, t0 + IDLE_FIRST);
        let mut pings = 0;
        loop {
            match k.fire(at, Duration::from_secs(1)) {
                Due::Ping(next) => {
                    pings += 1;
                    assert!(next > at);
                    at = next;
                }
                Due::GiveUp => break,
            }
            assert!(pings <= MAX_PINGS);
        }
        assert_eq!(pings, MAX_PINGS);
        // 4 s quiet, then 1 + 2 + 4 + 8 s of unanswered pings.
        assert_eq!(at, t0 + Duration::from_secs(19));
    }

    #[test]
    fn an_answering_but_idle_peer_is_asked_less_and_less_often() {
        let t0 = Instant::now();
        let mut k = Keepalive::new();
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            let at = k.heard(now, false);
            gaps.push(at - now);
            assert!(matches!(
                k.fire(at, Duration::from_millis(100)),
                Due::Ping(_)
            ));
            now = at + Duration::from_millis(50);
        }
        assert_eq!(gaps[0], IDLE_FIRST);
        assert_eq!(gaps[1], IDLE_FIRST * 2);
        assert_eq!(*gaps.last().unwrap(), IDLE_MAX);
        // Data brings the short interval back.
        assert_eq!(k.heard(now, true), now + IDLE_FIRST);
    }
}
