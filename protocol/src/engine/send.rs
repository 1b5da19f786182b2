//! Send direction of a version-2 stream (the shape of `quinn-proto`'s
//! `streams/send.rs`): segmentation of written bytes, the segments in
//! flight, acknowledgements (cumulative and selective), retransmission,
//! the zero-window probe and the segment size. It never builds messages:
//! what to publish comes back as [`Transmit`]s, which the stream turns into
//! messages carrying its current acknowledgement.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::congestion::Congestion;
use super::rtt::Rtt;
use super::timer::{Timer, TimerTable};
use super::StreamConfig;

/// Segments after a missing one that must be selectively acknowledged
/// before it counts as lost (relays may reorder a little).
const REORDER_SEGMENTS: u32 = 2;
/// Acknowledgements with progress after which a shrunken segment size doubles.
const GROW_AFTER_ACKS: u32 = 64;

/// A message in flight: data at `offset`, or the `CLOSE` (one offset unit).
#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub(super) offset: u64,
    pub(super) data: Vec<u8>,
    pub(super) fin: bool,
    sent_at: Instant,
    retransmitted: bool,
    /// The receiver reported holding it (selective acknowledgement).
    sacked: bool,
}

impl Segment {
    fn new(offset: u64, data: Vec<u8>, fin: bool, now: Instant, retransmitted: bool) -> Self {
        Self {
            offset,
            data,
            fin,
            sent_at: now,
            retransmitted,
            sacked: false,
        }
    }

    /// Offsets this segment occupies.
    fn len(&self) -> u64 {
        self.data.len() as u64 + u64::from(self.fin)
    }

    fn end(&self) -> u64 {
        self.offset + self.len()
    }
}

/// A segment to publish now, first time or again.
#[derive(Debug)]
pub(super) struct Transmit {
    pub(super) offset: u64,
    pub(super) data: Vec<u8>,
    pub(super) fin: bool,
}

impl From<&Segment> for Transmit {
    fn from(seg: &Segment) -> Self {
        Self {
            offset: seg.offset,
            data: seg.data.clone(),
            fin: seg.fin,
        }
    }
}

/// An acknowledgement of offsets never sent: a protocol error.
#[derive(Debug)]
pub(super) struct AckBeyondSent {
    pub(super) sent: u64,
}

/// What a retransmission timeout came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RtoOutcome {
    /// Nothing was in flight.
    Idle,
    /// No progress for [`StreamConfig::give_up_after`]: the stream must abort.
    GiveUp,
    /// Lost segments were queued again.
    Retransmitted,
}

/// Send direction of a version-2 stream.
#[derive(Debug)]
pub(super) struct Send {
    /// Bytes written locally and not yet put into a message.
    pub(super) unsent: VecDeque<u8>,
    /// When the oldest unsent byte was written (for coalescing).
    unsent_since: Option<Instant>,
    /// Offset of the next new byte.
    pub(super) next_offset: u64,
    /// Lowest unacknowledged offset.
    pub(super) acked: u64,
    pub(super) in_flight: VecDeque<Segment>,
    /// Right edge of the peer's receive window: the highest `ack + window`
    /// it advertised (it never moves left, so reordered acks do no harm).
    pub(super) peer_edge: u64,
    pub(super) fin_queued: bool,
    pub(super) fin_sent: bool,
    /// Acknowledgements that made progress since the last timeout; enough
    /// of them let a shrunken segment size grow again.
    good_acks: u32,
    pub(super) rtt: Rtt,
    /// Consecutive timeouts without progress (exponential backoff).
    pub(super) backoff: u32,
    /// Offset of the zero-window probe byte in flight, if one is: sent past
    /// a closed window, the receiver most likely dropped it.
    pub(super) probe_at: Option<u64>,
    /// Consecutive timeouts without progress that fired while the peer's
    /// window was open and the path up: only these say that segments may
    /// be too large (a zero-window probe's timeouts do not).
    pub(super) lost_timeouts: u32,
    /// When acknowledgements last made progress (for giving up).
    progress_at: Instant,
    pub(super) max_segment: usize,
    /// Hard cap on `max_segment` (see [`super::Stream::limit_segment`]).
    ceiling: usize,
    /// The driver could not hand messages to any relay: timeouts now say
    /// nothing about message size.
    pub(super) path_down: bool,
    /// Data and `CLOSE` messages queued for the first time.
    pub(super) segments_sent: u64,
    /// Data and `CLOSE` messages queued again (retransmissions, splits).
    pub(super) segments_resent: u64,
    /// The congestion window and pacing.
    pub(super) cc: Congestion,
    /// New data waits for the pacing timer.
    paced: bool,
    /// Version 3: the `CLOSE` rides on the last data segment (the peer
    /// reads a `CLOSE` with data as data then close).
    pub(super) fin_rides: bool,
    /// Exit, version 3, while `CONNECTED` is held: small data waits for
    /// more, or the end, to go in one message (see `CONNECTED_HOLD`).
    pub(super) hold: bool,
}

/// Bookkeeping: buffers, capacity, the open and the legacy fallback.
impl Send {
    pub(super) fn new(config: &StreamConfig, now: Instant) -> Self {
        Self {
            unsent: VecDeque::new(),
            unsent_since: None,
            next_offset: 0,
            acked: 0,
            in_flight: VecDeque::new(),
            peer_edge: config.window,
            fin_queued: false,
            fin_sent: false,
            good_acks: 0,
            rtt: Rtt::new(config.initial_rto),
            backoff: 0,
            lost_timeouts: 0,
            probe_at: None,
            progress_at: now,
            max_segment: config.max_segment.max(1),
            ceiling: config.max_segment.max(1),
            path_down: false,
            fin_rides: false,
            hold: false,
            segments_sent: 0,
            segments_resent: 0,
            cc: Congestion::new(now),
            paced: false,
        }
    }

    /// Data bytes in flight (the `CLOSE` holds none).
    pub(super) fn in_flight_bytes(&self) -> usize {
        self.in_flight.iter().map(|s| s.data.len()).sum()
    }

    /// How many more bytes [`Send::queue`] should take: the send buffer plus
    /// the peer's window (at most ours), less what is held already.
    pub(super) fn capacity(&self, cfg: &StreamConfig) -> usize {
        let window =
            usize::try_from(self.peer_edge.saturating_sub(self.acked)).unwrap_or(usize::MAX);
        let limit = cfg
            .send_buffer
            .saturating_add(window.min(cfg.window as usize));
        limit.saturating_sub(self.in_flight_bytes() + self.unsent.len())
    }

    /// Takes written bytes; [`Send::segment_unsent`] puts them into messages.
    pub(super) fn queue(&mut self, bytes: &[u8], now: Instant) {
        if self.unsent.is_empty() {
            self.unsent_since = Some(now);
        }
        self.unsent.extend(bytes);
    }

    /// Takes the first bytes for the `CONNECT` (0-RTT): at most one segment
    /// and the peer's assumed window, in flight from now. Returns how many.
    pub(super) fn take_early(&mut self, early: &[u8], now: Instant) -> usize {
        let taken = early
            .len()
            .min(self.max_segment)
            .min(usize::try_from(self.peer_edge).unwrap_or(usize::MAX));
        if taken > 0 {
            self.in_flight
                .push_back(Segment::new(0, early[..taken].to_vec(), false, now, false));
            self.next_offset = taken as u64;
        }
        taken
    }

    /// The exit answered: 0-RTT bytes it did not acknowledge are
    /// retransmitted as data from now on.
    pub(super) fn on_open(&mut self, now: Instant, timers: &mut TimerTable) {
        self.backoff = 0;
        if !self.in_flight.is_empty() && !timers.is_set(Timer::Retransmit) {
            timers.set(Timer::Retransmit, now + self.rtt.rto);
        }
    }

    /// The `CONNECT` went unanswered once more: the delay until the next try.
    pub(super) fn connect_retry(&mut self, cfg: &StreamConfig) -> Duration {
        self.backoff += 1;
        self.backed_off_rto(cfg)
    }

    /// A legacy exit ignored the 0-RTT bytes: they leave the version-2
    /// machinery, to go again as plain data.
    pub(super) fn take_back_early(&mut self, timers: &mut TimerTable) -> Vec<Segment> {
        timers.stop(Timer::Retransmit);
        self.in_flight.drain(..).collect()
    }

    /// Every byte and the `CLOSE` were sent and acknowledged.
    pub(super) fn is_done(&self) -> bool {
        self.fin_sent && self.in_flight.is_empty()
    }

    fn can_send_more(&self) -> bool {
        self.next_offset < self.peer_edge
    }

    /// When unsent bytes stop waiting to be combined with more, if they
    /// wait (not while the congestion window or pacing holds them: an
    /// acknowledgement or the pacing timer releases them then).
    pub(super) fn coalesce_deadline(&self, cfg: &StreamConfig) -> Option<Instant> {
        if self.unsent.is_empty()
            || !self.can_send_more()
            || self.paced
            || self.in_flight.len() >= self.cc.window()
        {
            return None;
        }
        self.unsent_since.map(|t| t + cfg.coalesce_delay)
    }

    fn backed_off_rto(&self, cfg: &StreamConfig) -> Duration {
        let factor = 1u32 << self.backoff.min(6);
        (self.rtt.rto * factor).min(cfg.max_rto)
    }
}

/// Segmentation: new bytes into segments, and segments split smaller.
impl Send {
    /// Puts unsent bytes (and the `CLOSE`) into segments as far as the
    /// peer's window allows. `timer`: called from a timeout, when a small
    /// segment that waited the coalescing delay goes out.
    pub(super) fn segment_unsent(
        &mut self,
        now: Instant,
        timer: bool,
        cfg: &StreamConfig,
        timers: &mut TimerTable,
        tx: &mut Vec<Transmit>,
    ) {
        loop {
            let room = usize::try_from(self.peer_edge.saturating_sub(self.next_offset))
                .unwrap_or(usize::MAX);
            if self.unsent.is_empty() {
                break;
            }
            if room == 0 {
                if self.in_flight.is_empty() {
                    // Zero-window probe: one byte past the closed window,
                    // retransmitted on timeout, draws an acknowledgement
                    // with the current window even if a window update was
                    // lost (TCP's persist timer).
                    let probe: Vec<u8> = self.unsent.drain(..1).collect();
                    self.probe_at = Some(self.next_offset);
                    self.push_segment(probe, false, now, cfg, timers, tx);
                }
                break;
            }
            if self.in_flight.len() >= self.cc.window() {
                // The congestion window is full: acknowledgements open it.
                break;
            }
            let size = self.unsent.len().min(self.max_segment).min(room);
            // Nagle's rule, bounded by the coalescing delay: a small message
            // waits while earlier data is unacknowledged.
            let waited_enough = timer
                && self
                    .unsent_since
                    .is_some_and(|t| now >= t + cfg.coalesce_delay);
            if size < self.max_segment
                && (!self.in_flight.is_empty() || self.hold)
                && !self.fin_queued
                && !waited_enough
            {
                break;
            }
            if let Err(at) = self.cc.pace(now, self.rtt.srtt) {
                timers.set(Timer::Pace, at);
                self.paced = true;
                break;
            }
            self.paced = false;
            let data: Vec<u8> = self.unsent.drain(..size).collect();
            self.unsent_since = if self.unsent.is_empty() {
                None
            } else {
                Some(now)
            };
            // The close rides on the last bytes where the peer reads it so.
            let fin = self.fin_rides && self.fin_queued && self.unsent.is_empty();
            self.fin_sent |= fin;
            self.push_segment(data, fin, now, cfg, timers, tx);
        }
        if self.fin_queued && !self.fin_sent && self.unsent.is_empty() {
            self.fin_sent = true;
            self.push_segment(Vec::new(), true, now, cfg, timers, tx);
        }
    }

    fn push_segment(
        &mut self,
        data: Vec<u8>,
        fin: bool,
        now: Instant,
        cfg: &StreamConfig,
        timers: &mut TimerTable,
        tx: &mut Vec<Transmit>,
    ) {
        let seg = Segment::new(self.next_offset, data, fin, now, false);
        self.next_offset = seg.end();
        tx.push(Transmit::from(&seg));
        self.segments_sent += 1;
        self.in_flight.push_back(seg);
        if !timers.is_set(Timer::Retransmit) {
            timers.set(Timer::Retransmit, now + self.backed_off_rto(cfg));
        }
    }

    /// Sets the largest segment the path takes now (it may grow or
    /// shrink). Segments in flight above a smaller size are split and
    /// queued again at once (the relay refused them, or will); bytes not
    /// yet sent are cut to the new size as they go.
    pub(super) fn limit_segment(
        &mut self,
        bytes: usize,
        cfg: &StreamConfig,
        now: Instant,
        tx: &mut Vec<Transmit>,
    ) {
        let cap = bytes.clamp(1, cfg.max_segment.max(1));
        if cap == self.ceiling {
            return;
        }
        if cap > self.ceiling {
            // Grown: unless timeouts shrank it on their own, follow.
            if self.max_segment == self.ceiling {
                self.max_segment = cap;
            }
            self.ceiling = cap;
            return;
        }
        self.ceiling = cap;
        self.max_segment = self.max_segment.min(cap);
        if self.in_flight.iter().all(|seg| seg.data.len() <= cap) {
            return;
        }
        let old = std::mem::take(&mut self.in_flight);
        for seg in old {
            if seg.data.len() <= cap {
                self.in_flight.push_back(seg);
                continue;
            }
            for piece in split(&seg, cap, now) {
                tx.push(Transmit::from(&piece));
                self.segments_resent += 1;
                self.in_flight.push_back(piece);
            }
        }
    }
}

/// `seg` cut into pieces of at most `max` bytes, marked resent at `now`
/// (the `CLOSE` flag stays on the last).
fn split(seg: &Segment, max: usize, now: Instant) -> Vec<Segment> {
    if seg.data.is_empty() {
        return vec![Segment::new(seg.offset, Vec::new(), seg.fin, now, true)];
    }
    let n = seg.data.len().div_ceil(max);
    seg.data
        .chunks(max)
        .enumerate()
        .map(|(i, chunk)| {
            let offset = seg.offset + (i * max) as u64;
            Segment::new(offset, chunk.to_vec(), seg.fin && i + 1 == n, now, true)
        })
        .collect()
}

/// Acknowledgements and retransmission.
impl Send {
    /// Takes the peer's acknowledgement of offsets below `ack`, its window,
    /// and the ranges it holds beyond (`sack`); queues what must go again.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_ack(
        &mut self,
        ack: u64,
        window: Option<u64>,
        sack: &[[u64; 2]],
        now: Instant,
        cfg: &StreamConfig,
        timers: &mut TimerTable,
        tx: &mut Vec<Transmit>,
    ) -> Result<(), AckBeyondSent> {
        if ack > self.next_offset {
            return Err(AckBeyondSent {
                sent: self.next_offset,
            });
        }
        if let Some(w) = window {
            self.peer_edge = self.peer_edge.max(ack.saturating_add(w));
            if w == 0 {
                // The peer is there but its reader is slow: waiting on a
                // closed window is not a peer that stopped acknowledging.
                self.progress_at = now;
            }
        }
        if ack > self.acked {
            self.on_progress(ack, now, cfg, timers);
        }
        if let Some(p) = self.probe_at {
            if self.acked > p {
                self.probe_at = None;
            } else if self.peer_edge > p {
                // The window reopened over the probe byte, which the receiver
                // dropped while it was closed: send it again now rather than
                // after a retransmission timeout (the data sent after it
                // would wait behind the gap), and forget the probe's
                // timeouts, which were no loss.
                self.probe_at = None;
                self.backoff = 0;
                self.lost_timeouts = 0;
                if self.in_flight.front().is_some_and(|seg| seg.offset == p) {
                    self.resend_segment(0, now, tx);
                    timers.set(Timer::Retransmit, now + self.rtt.rto);
                }
            }
        }
        if !sack.is_empty() {
            for seg in self.in_flight.iter_mut() {
                if !seg.sacked && sack.iter().any(|r| r[0] <= seg.offset && seg.end() <= r[1]) {
                    seg.sacked = true;
                }
            }
            self.retransmit_sacked_holes(now, tx);
        }
        Ok(())
    }

    /// The cumulative acknowledgement moved up to `ack`.
    fn on_progress(&mut self, ack: u64, now: Instant, cfg: &StreamConfig, timers: &mut TimerTable) {
        self.acked = ack;
        self.backoff = 0;
        self.lost_timeouts = 0;
        self.progress_at = now;
        self.good_acks += 1;
        let mut newest = None;
        let mut acked = 0;
        while self.in_flight.front().is_some_and(|seg| seg.end() <= ack) {
            newest = self.in_flight.pop_front();
            acked += 1;
        }
        self.cc.on_acked(acked);
        // Sample the round trip from the newest segment this ack covers,
        // unless it was resent (Karn) or already reported held (then this
        // ack only closes a hole before it and its delay says nothing).
        if let Some(seg) = newest.filter(|seg| !seg.retransmitted && !seg.sacked) {
            let sample = now.saturating_duration_since(seg.sent_at);
            self.rtt.sample(sample, cfg);
            self.cc.on_rtt(sample);
        }
        if let Some(seg) = self.in_flight.front_mut() {
            if seg.offset < ack {
                // Partially acknowledged: keep only the rest.
                let cut = (ack - seg.offset) as usize;
                seg.data.drain(..cut.min(seg.data.len()));
                seg.offset = ack;
            }
        }
        let rto = (!self.in_flight.is_empty()).then(|| now + self.rtt.rto);
        timers.set_or_stop(Timer::Retransmit, rto);
        // Segments shrunk after timeouts grow back once things go well
        // (a lossy stretch is not a size limit).
        if self.good_acks >= GROW_AFTER_ACKS && self.max_segment < self.ceiling {
            self.max_segment = (self.max_segment * 2).min(self.ceiling);
            self.good_acks = 0;
        }
    }

    /// Retransmits every segment the receiver evidently lost: one that is
    /// not selectively acknowledged while at least [`REORDER_SEGMENTS`]
    /// segments sent after it are, and that was not already resent within
    /// the last round trip.
    fn retransmit_sacked_holes(&mut self, now: Instant, tx: &mut Vec<Transmit>) {
        let rtt = self.rtt.srtt.unwrap_or(self.rtt.rto);
        let mut sacked_after = 0u32;
        let mut lost = Vec::new();
        for (i, seg) in self.in_flight.iter().enumerate().rev() {
            if seg.sacked {
                sacked_after += 1;
            } else if sacked_after >= REORDER_SEGMENTS
                && (!seg.retransmitted || now >= seg.sent_at + rtt)
            {
                lost.push(i);
            }
        }
        if let Some(&first) = lost.last() {
            let sent_at = self.in_flight[first].sent_at;
            self.cc.on_loss(sent_at, now);
        }
        // Highest first: a resend may split a segment, which moves the
        // indexes after it.
        for &i in &lost {
            self.resend_segment(i, now, tx);
        }
    }

    /// The retransmission timer fired (`key` names the stream in logs).
    pub(super) fn on_rto(
        &mut self,
        now: Instant,
        cfg: &StreamConfig,
        key: &str,
        timers: &mut TimerTable,
        tx: &mut Vec<Transmit>,
    ) -> RtoOutcome {
        if self.in_flight.is_empty() {
            timers.stop(Timer::Retransmit);
            return RtoOutcome::Idle;
        }
        if now.saturating_duration_since(self.progress_at) >= cfg.give_up_after {
            log::info!(
                "stream {key}: no acknowledgement for {:?}, aborting",
                cfg.give_up_after
            );
            return RtoOutcome::GiveUp;
        }
        self.backoff += 1;
        self.good_acks = 0;
        // Sizes are the relay connection's to find (it probes them); a
        // timeout here is loss, or congestion.
        // A timeout while the window is closed is a zero-window probe's
        // (the receiver drops the probe byte): it says nothing of size.
        let window_closed = self.peer_edge <= self.acked;
        if !self.path_down && !window_closed {
            self.lost_timeouts += 1;
            // A timeout with the peer's window open is congestion; a
            // zero-window probe's, or one while no relay takes events, is not.
            self.cc.on_timeout(now);
        }
        self.retransmit_first(now, cfg, timers, tx);
        // Every other hole the receiver reported is lost too by now.
        let holes: Vec<usize> = self.holes_below_sacked().collect();
        for i in holes.into_iter().rev() {
            self.resend_segment(i, now, tx);
        }
        RtoOutcome::Retransmitted
    }

    /// Indexes (after the first) of in-flight segments that are not
    /// selectively acknowledged while a later one is.
    fn holes_below_sacked(&self) -> impl Iterator<Item = usize> + '_ {
        let last_sacked = self.in_flight.iter().rposition(|seg| seg.sacked);
        self.in_flight
            .iter()
            .enumerate()
            .skip(1)
            .take_while(move |(i, _)| last_sacked.is_some_and(|l| *i < l))
            .filter(|(_, seg)| !seg.sacked)
            .map(|(i, _)| i)
    }

    /// Sends the first unacknowledged segment again, split to the current
    /// largest segment if it is bigger.
    fn retransmit_first(
        &mut self,
        now: Instant,
        cfg: &StreamConfig,
        timers: &mut TimerTable,
        tx: &mut Vec<Transmit>,
    ) {
        if self.in_flight.is_empty() {
            return;
        }
        self.resend_segment(0, now, tx);
        timers.set(Timer::Retransmit, now + self.backed_off_rto(cfg));
    }

    /// Sends in-flight segment `i` again (marked resent at `now`), split
    /// into pieces of the current largest segment if it is bigger: what
    /// went too large once is never sent at that size again.
    fn resend_segment(&mut self, i: usize, now: Instant, tx: &mut Vec<Transmit>) {
        let Some(seg) = self.in_flight.get_mut(i) else {
            return;
        };
        if seg.data.len() <= self.max_segment {
            seg.sent_at = now;
            seg.retransmitted = true;
            tx.push(Transmit::from(&*seg));
            self.segments_resent += 1;
            return;
        }
        let pieces = split(seg, self.max_segment, now);
        for piece in &pieces {
            tx.push(Transmit::from(piece));
            self.segments_resent += 1;
        }
        let tail = self.in_flight.split_off(i + 1);
        self.in_flight.pop_back();
        self.in_flight.extend(pieces);
        self.in_flight.extend(tail);
    }
}
