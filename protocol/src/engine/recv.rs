//! Receive direction of a version-2 stream: an assembler (the shape of
//! `quinn-proto`'s `streams/recv.rs` and `assembler.rs`) that puts the
//! peer's segments back in order through a bounded reorder buffer, finds
//! the peer's `CLOSE`, reports held ranges (SACK) and accounts the window.
//! It returns what became deliverable; the stream turns that into outputs.

use std::collections::BTreeMap;
use std::time::Instant;

use super::timer::{Timer, TimerTable};
use super::StreamConfig;

/// Selective acknowledgement ranges carried in one message.
const MAX_SACK_RANGES: usize = 16;

/// What a message from the peer made deliverable, in stream order.
#[derive(Debug, Default)]
pub(super) struct Delivery {
    /// Bytes for the local socket, each exactly once.
    pub(super) data: Vec<Vec<u8>>,
    /// The peer's `CLOSE` came next: its direction is over.
    pub(super) finished: bool,
}

/// The peer broke the protocol.
#[derive(Debug)]
pub(super) enum RecvError {
    /// Data past the peer's `CLOSE`.
    PastClose,
    /// A second `CLOSE` at another offset.
    CloseMoved { from: u64, to: u64 },
    /// A `CLOSE` below data already received.
    CloseBeforeData { at: u64, highest: u64 },
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PastClose => write!(f, "data past the peer's CLOSE"),
            Self::CloseMoved { from, to } => write!(f, "CLOSE moved from {from} to {to}"),
            Self::CloseBeforeData { at, highest } => {
                write!(f, "CLOSE at {at} before data at {highest}")
            }
        }
    }
}

/// Receive direction of a version-2 stream.
#[derive(Debug, Default)]
pub(super) struct Recv {
    /// Next offset to deliver.
    pub(super) next: u64,
    /// Out-of-order data by offset.
    pub(super) pending: BTreeMap<u64, Vec<u8>>,
    pub(super) pending_bytes: usize,
    /// Offset of the peer's `CLOSE`, once known.
    pub(super) fin_at: Option<u64>,
    pub(super) finished: bool,
    /// Bytes delivered since the last acknowledgement went out.
    unacked_bytes: u64,
    /// Bytes handed to the driver ([`super::Output::Deliver`]) that it has
    /// not yet written to the local socket ([`super::Stream::consumed`]);
    /// they shrink the advertised window, so a slow local reader slows the
    /// peer.
    pub(super) undelivered: u64,
    /// Right edge of our window as last advertised (`ack + window`).
    edge_sent: u64,
    /// An acknowledgement is due now (a gap, a duplicate, a window update).
    pub(super) ack_now: bool,
}

impl Recv {
    pub(super) fn new(config: &StreamConfig) -> Self {
        Self {
            edge_sent: config.window,
            ..Self::default()
        }
    }

    /// Receive window to advertise now: the configured window less what the
    /// driver still holds undelivered, in bytes.
    pub(super) fn window(&self, cfg: &StreamConfig) -> u64 {
        cfg.window.saturating_sub(self.undelivered)
    }

    /// Ranges of out-of-order data held, for the peer to skip when it
    /// retransmits (at most [`MAX_SACK_RANGES`], lowest first).
    pub(super) fn sack_ranges(&self) -> Option<Vec<[u64; 2]>> {
        let mut ranges: Vec<[u64; 2]> = Vec::new();
        for (&off, data) in &self.pending {
            let end = off + data.len() as u64;
            let full = ranges.len() == MAX_SACK_RANGES;
            match ranges.last_mut() {
                Some(last) if off <= last[1] => last[1] = last[1].max(end),
                _ if full => break,
                _ => ranges.push([off, end]),
            }
        }
        (!ranges.is_empty()).then_some(ranges)
    }

    /// A message carrying the current acknowledgement went out.
    pub(super) fn acknowledged(&mut self, cfg: &StreamConfig, timers: &mut TimerTable) {
        self.ack_now = false;
        timers.stop(Timer::Ack);
        self.unacked_bytes = 0;
        self.edge_sent = self.next + self.window(cfg);
    }

    /// The driver wrote `n` delivered bytes; returns whether the window has
    /// opened by a quarter since it was last advertised (a window update is
    /// due).
    pub(super) fn consumed(&mut self, n: usize, cfg: &StreamConfig) -> bool {
        self.undelivered = self.undelivered.saturating_sub(n as u64);
        let edge = self.next + self.window(cfg);
        edge >= self.edge_sent + cfg.window / 4
    }

    /// Data at `seq` from the peer. Until the stream is `open`, everything
    /// waits in the reorder buffer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_data(
        &mut self,
        seq: u64,
        data: Vec<u8>,
        open: bool,
        now: Instant,
        cfg: &StreamConfig,
        timers: &mut TimerTable,
        key: &str,
    ) -> Result<Delivery, RecvError> {
        let end = seq.saturating_add(data.len() as u64);
        if self.fin_at.is_some_and(|fin| end > fin) {
            return Err(RecvError::PastClose);
        }
        if data.is_empty() {
            return Ok(Delivery::default());
        }
        if end <= self.next {
            // A retransmission of what we have: our acknowledgement was lost.
            self.ack_now = true;
            return Ok(Delivery::default());
        }
        if end > self.next.saturating_add(self.window(cfg)) {
            log::debug!(
                "stream {key}: data at {seq}..{end} beyond the window (next {}): dropped",
                self.next
            );
            self.ack_now = true;
            return Ok(Delivery::default());
        }
        if seq > self.next || !open {
            // Keep it (bounded by twice the window) until the gap is filled
            // or the stream opens; a gap is reported at once.
            let bound = usize::try_from(cfg.window.saturating_mul(2)).unwrap_or(usize::MAX);
            if !self.pending.contains_key(&seq) && self.pending_bytes + data.len() <= bound {
                self.pending_bytes += data.len();
                self.pending.insert(seq, data);
            }
            if seq > self.next {
                self.ack_now = true;
            }
            return Ok(Delivery::default());
        }
        let mut delivery = Delivery::default();
        let fresh = data[(self.next - seq) as usize..].to_vec();
        self.advance(end, fresh, &mut delivery);
        self.drain_into(open, now, cfg, timers, &mut delivery);
        Ok(delivery)
    }

    /// The peer's `CLOSE` at `seq`.
    pub(super) fn on_fin(
        &mut self,
        seq: u64,
        open: bool,
        now: Instant,
        cfg: &StreamConfig,
        timers: &mut TimerTable,
    ) -> Result<Delivery, RecvError> {
        if let Some(f) = self.fin_at {
            if f != seq {
                return Err(RecvError::CloseMoved { from: f, to: seq });
            }
            // A retransmitted CLOSE: acknowledge it (again).
            self.ack_now = true;
            return Ok(Delivery::default());
        }
        let highest = self
            .pending
            .iter()
            .map(|(o, d)| o + d.len() as u64)
            .max()
            .unwrap_or(0)
            .max(self.next);
        if seq < highest {
            return Err(RecvError::CloseBeforeData { at: seq, highest });
        }
        self.fin_at = Some(seq);
        if seq > self.next {
            // Data is missing before it: report the gap at once.
            self.ack_now = true;
        }
        Ok(self.drain(open, now, cfg, timers))
    }

    /// Delivers buffered data that has become contiguous, then the peer's
    /// `CLOSE` if it is next, and schedules the acknowledgement. Nothing
    /// while the stream is not `open`.
    pub(super) fn drain(
        &mut self,
        open: bool,
        now: Instant,
        cfg: &StreamConfig,
        timers: &mut TimerTable,
    ) -> Delivery {
        let mut delivery = Delivery::default();
        self.drain_into(open, now, cfg, timers, &mut delivery);
        delivery
    }

    fn drain_into(
        &mut self,
        open: bool,
        now: Instant,
        cfg: &StreamConfig,
        timers: &mut TimerTable,
        delivery: &mut Delivery,
    ) {
        if !open {
            return;
        }
        while let Some((&off, _)) = self.pending.first_key_value() {
            if off > self.next {
                break;
            }
            let data = self.pending.remove(&off).unwrap_or_default();
            self.pending_bytes -= data.len();
            let end = off + data.len() as u64;
            if end <= self.next {
                continue;
            }
            let fresh = data[(self.next - off) as usize..].to_vec();
            self.advance(end, fresh, delivery);
        }
        if self.fin_at == Some(self.next) && !self.finished {
            self.finished = true;
            self.next += 1;
            self.pending.clear();
            self.pending_bytes = 0;
            // Acknowledged after the short ack delay, like data: the local
            // side often closes at once, and its CLOSE then carries it.
            self.unacked_bytes += 1;
            delivery.finished = true;
        }
        if self.unacked_bytes > 0 {
            self.schedule_ack(now, cfg, timers);
        }
    }

    /// Delivers `fresh`, the bytes up to `end` (it is never empty).
    fn advance(&mut self, end: u64, fresh: Vec<u8>, delivery: &mut Delivery) {
        self.next = end;
        self.unacked_bytes += fresh.len() as u64;
        self.undelivered += fresh.len() as u64;
        delivery.data.push(fresh);
    }

    fn schedule_ack(&mut self, now: Instant, cfg: &StreamConfig, timers: &mut TimerTable) {
        // Acknowledge every quarter window at the latest, otherwise after a
        // short delay, so a bulk transfer costs few acknowledgement events.
        if self.unacked_bytes >= cfg.window / 4 {
            self.ack_now = true;
        } else if !timers.is_set(Timer::Ack) {
            timers.set(Timer::Ack, now + cfg.ack_delay);
        }
    }
}
