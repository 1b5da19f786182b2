//! Pacing of a legacy-format stream's data events (`docs/PROTOCOL.md`,
//! "What we do toward legacy peers").
//!
//! The legacy format has no sequence numbers, and the reference
//! implementation (asmogo/nws) handles every incoming event in a goroutine
//! of its own: two events that arrive close together reach the socket in
//! either order, and data that arrives before its exit has dialled the
//! backend is dropped. Its entry subscribes for answers only at its first
//! write, so an answer that comes quickly is lost too. Nothing of that can be
//! repaired afterwards, so toward a legacy peer we send so that it does not
//! happen: one data event at a time, at least [`LegacyPacing::interval`]
//! apart and, while every relay answers `OK`, only after the relays accepted
//! the previous one; the first only after a hold (the exit's dial, the
//! entry's subscription). An event every relay rejected (a rate limit, say)
//! never reached the peer, so it is published again (bounded): that cannot
//! make a duplicate.

use std::time::Duration;

use tokio::time::Instant;

use crate::link::{Link, SendError};
use crate::protocol::Message;
use crate::transport::TransportError;

/// How a stream in the legacy format paces its data events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyPacing {
    /// Least time between two data events of one stream. It must be longer
    /// than the window in which the peer's per-event tasks can overtake one
    /// another. Zero sends every event at once (no pacing).
    pub interval: Duration,
    /// How long to wait for the relays' `OK` to a data event before the next
    /// one. A stream that sees a relay not answer within it (some relays
    /// never answer for ephemeral events) stops waiting for `OK`s and paces
    /// by `interval` alone. Zero never waits.
    pub ok_wait: Duration,
    /// Entry side: time between the relays' `OK` to the `CONNECT` and the
    /// first data event, so that the exit has dialled its backend (the
    /// reference drops data for a stream it has not finished dialling).
    pub dial_allowance: Duration,
    /// Exit side: time between the entry's first data event and our first
    /// one, so that the entry's subscription is in place (the reference
    /// subscribes only when it first writes).
    pub subscribe_allowance: Duration,
    /// Exit side: longest hold of our first data event while the entry has
    /// written nothing (a protocol where the server speaks first), counted
    /// from the backend connection.
    pub max_hold: Duration,
    /// How often an event that every relay rejected is published again
    /// before the stream gives up.
    pub retries: u32,
}

impl Default for LegacyPacing {
    /// 30 ms between events, up to 1 s for an `OK`, 300 ms dial allowance,
    /// 500 ms subscribe allowance, at most 2 s hold, 5 retries.
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(30),
            ok_wait: Duration::from_secs(1),
            dial_allowance: Duration::from_millis(300),
            subscribe_allowance: Duration::from_millis(500),
            max_hold: Duration::from_secs(2),
            retries: 5,
        }
    }
}

impl LegacyPacing {
    /// No pacing at all: every event goes out at once, as the engine
    /// produces it (what a naive sender does; for tests).
    pub fn none() -> Self {
        Self {
            interval: Duration::ZERO,
            ok_wait: Duration::ZERO,
            dial_allowance: Duration::ZERO,
            subscribe_allowance: Duration::ZERO,
            max_hold: Duration::ZERO,
            retries: 0,
        }
    }
}

/// When the first data event may go.
#[derive(Debug, Clone, Copy)]
enum Hold {
    /// Not before this instant.
    Until(Instant),
    /// Until the peer's first data event plus `allowance`, but never after
    /// `deadline`.
    #[cfg_attr(not(feature = "exit"), allow(dead_code))]
    PeerWrites {
        allowance: Duration,
        deadline: Instant,
    },
}

/// One legacy stream's pacing state.
#[derive(Debug)]
pub(crate) struct Pacer {
    config: LegacyPacing,
    hold: Option<Hold>,
    /// When the last data event went out.
    last: Option<Instant>,
    /// Whether every relay has answered `OK` so far (then we wait for it).
    relays_answer: bool,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new(LegacyPacing::default())
    }
}

impl Pacer {
    /// A pacer with no hold.
    pub fn new(config: LegacyPacing) -> Self {
        Self {
            relays_answer: !config.ok_wait.is_zero(),
            config,
            hold: None,
            last: None,
        }
    }

    /// Entry side: the relays accepted the `CONNECT` now; data waits for
    /// the dial allowance.
    pub fn connect_accepted(&mut self) {
        self.hold = Some(Hold::Until(Instant::now() + self.config.dial_allowance));
    }

    /// Exit side: the backend is connected now; data waits for the entry's
    /// first write (plus the subscribe allowance), at most `max_hold`.
    #[cfg_attr(not(feature = "exit"), allow(dead_code))]
    pub fn backend_connected(&mut self) {
        let now = Instant::now();
        self.hold = Some(Hold::PeerWrites {
            allowance: self.config.subscribe_allowance,
            deadline: now + self.config.max_hold,
        });
    }

    /// The peer sent a data event.
    pub fn peer_wrote(&mut self) {
        if let Some(Hold::PeerWrites {
            allowance,
            deadline,
        }) = self.hold
        {
            let at = (Instant::now() + allowance).min(deadline);
            self.hold = Some(Hold::Until(at));
        }
    }

    /// When the next data event may go, if not at once.
    fn not_before(&self) -> Option<Instant> {
        let held = match self.hold {
            Some(Hold::Until(t)) => Some(t),
            Some(Hold::PeerWrites { deadline, .. }) => Some(deadline),
            None => None,
        };
        let spaced = self.last.map(|t| t + self.config.interval);
        held.max(spaced)
    }

    /// Publishes one data event of a legacy stream, paced (module docs).
    ///
    /// # Errors
    ///
    /// [`SendError`] when the event cannot be built or no relay took it
    /// (after the retries, for an event every relay rejected).
    pub async fn publish(&mut self, link: &Link, msg: &Message) -> Result<(), SendError> {
        if let Some(t) = self.not_before() {
            tokio::time::sleep_until(t).await;
        }
        self.hold = None;
        let event = link.event(msg)?;
        let transport = link.transport();
        let mut attempt = 0;
        loop {
            self.last = Some(Instant::now());
            if !self.relays_answer {
                transport.publish(&event, link.relays()).await?;
                break;
            }
            let report = transport
                .publish_confirmed(&event, link.relays(), self.config.ok_wait)
                .await?;
            if !report.unknown.is_empty() {
                log::debug!(
                    "stream {}: {} gave no OK within {:?}: pacing by time alone",
                    msg.key,
                    report.unknown.len(),
                    self.config.ok_wait
                );
                self.relays_answer = false;
            }
            if !report.accepted.is_empty() || !report.unknown.is_empty() {
                break;
            }
            // Every relay rejected it: the peer has not seen it, so sending it
            // again cannot duplicate anything.
            let why: Vec<String> = report
                .rejected
                .iter()
                .map(|(u, m)| format!("{u}: {m}"))
                .collect();
            if attempt >= self.config.retries {
                return Err(TransportError::NotPublished(why.join("; ")).into());
            }
            attempt += 1;
            log::debug!(
                "stream {}: data event rejected ({}); again in a moment (attempt {attempt})",
                msg.key,
                why.join("; ")
            );
            tokio::time::sleep(Duration::from_millis(200) * attempt).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_event_waits_for_the_hold_and_later_ones_for_the_interval() {
        let config = LegacyPacing::default();
        let mut p = Pacer::new(config.clone());
        assert_eq!(p.not_before(), None);

        // Entry: the dial allowance after the CONNECT's OK.
        let before = Instant::now();
        p.connect_accepted();
        let t = p.not_before().unwrap();
        assert!(t >= before + config.dial_allowance);

        // Exit: held until the entry writes (at most `max_hold`), then the
        // subscribe allowance from its first write.
        let before = Instant::now();
        p.backend_connected();
        let held = p.not_before().unwrap();
        assert!(held >= before + config.max_hold);
        p.peer_wrote();
        let t = p.not_before().unwrap();
        assert!(t >= before + config.subscribe_allowance && t <= held);

        // After an event, the next waits for the interval.
        p.hold = None;
        let sent = Instant::now();
        p.last = Some(sent);
        assert_eq!(p.not_before(), Some(sent + config.interval));
        assert!(Pacer::new(LegacyPacing::none()).not_before().is_none());
    }
}
