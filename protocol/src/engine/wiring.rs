//! The version-2 stream's insides: a message from the peer is taken apart
//! and handed to [`Send`](super::send::Send) and
//! [`Recv`](super::recv::Recv), and what they return becomes outputs. Every
//! data message leaves through [`Stream::publish`], which adds the current
//! acknowledgement.

use std::time::{Duration, Instant};

use super::{
    keepalive, legacy, Delivery, ErrorReason, Message, MessageType, Output, RtoOutcome, Side,
    State, Stream, Timer, Transmit,
};

/// Opening, closing and the peer's messages.
impl Stream {
    /// A version-2 message from the peer (the key is checked, the stream is
    /// not closed).
    pub(super) fn on_message(&mut self, msg: Message, now: Instant) {
        match msg.kind {
            MessageType::Connected => self.on_connected(msg.version, now),
            MessageType::Error => {
                self.on_error(msg.reason.as_deref().unwrap_or(""));
                return;
            }
            MessageType::Connect => {
                // The entry did not hear our answer: say it again.
                if self.side == Side::Exit && self.state != State::Connecting {
                    if self.connected_pending {
                        self.release_connected();
                    } else {
                        self.send_connected();
                    }
                }
            }
            MessageType::Data | MessageType::Socks5Response => {
                if msg.seq.is_none() && self.side == Side::Entry && self.state == State::Connecting
                {
                    // Plain data instead of an answer: the exit speaks legacy.
                    legacy::fall_back(self, msg);
                    return;
                }
            }
            MessageType::Close | MessageType::Ack => {}
            MessageType::Ping => {
                // Answer at once: the peer wants to know we are here.
                self.recv.ack_now = true;
            }
            MessageType::ConnectReverse | MessageType::Unknown(_) => {
                log::debug!("stream {}: {} ignored", self.key, msg.kind);
                return;
            }
        }
        let carries_data = msg.kind.is_data() || msg.kind == MessageType::Close;
        if carries_data || msg.kind == MessageType::Ack || msg.kind == MessageType::Ping {
            // Data from a v2 exit proves the stream open even if CONNECTED
            // was lost, or was never sent: a version-3 exit's first data
            // carries `version` instead (without it the stream speaks
            // JSON, which a version-3 exit also reads).
            if self.state == State::Connecting && self.side == Side::Entry && msg.seq.is_some() {
                self.on_connected(msg.version, now);
            }
        }
        if let Some(ack) = msg.ack {
            self.on_ack(ack, msg.window, msg.sack.as_deref().unwrap_or(&[]), now);
            if self.state == State::Closed {
                // The acknowledgement aborted the stream: nothing else counts.
                return;
            }
        }
        match msg.kind {
            MessageType::Data | MessageType::Socks5Response => match msg.seq {
                Some(seq) => self.on_data(seq, msg.data, now),
                None => {
                    log::warn!("stream {}: data without seq on a v2 stream", self.key);
                    self.protocol_error();
                }
            },
            MessageType::Close => match msg.seq {
                // Version 3: a CLOSE with data is the data, then the close.
                Some(seq) if !msg.data.is_empty() => {
                    let end = seq.saturating_add(msg.data.len() as u64);
                    self.on_data(seq, msg.data, now);
                    if self.state != State::Closed {
                        self.on_fin(end, now);
                    }
                }
                Some(seq) => self.on_fin(seq, now),
                None => log::debug!("stream {}: CLOSE without seq ignored", self.key),
            },
            _ => {}
        }
        if self.state == State::Open {
            let at = self.keepalive.heard(now, carries_data);
            self.timers.set(Timer::Keepalive, at);
        }
        self.transmit(now);
    }

    /// The peer has been quiet for the keepalive interval: ping it, or give
    /// it up after [`StreamConfig::keepalive_pings`](super::StreamConfig)
    /// unanswered pings.
    pub(super) fn on_keepalive(&mut self, now: Instant) {
        if self.state != State::Open {
            self.timers.stop(Timer::Keepalive);
            return;
        }
        match self
            .keepalive
            .fire(now, self.send.rtt.rto, self.config.keepalive_pings)
        {
            keepalive::Due::Ping(next) => {
                log::debug!(
                    "stream {}: peer quiet, PING ({} unanswered)",
                    self.key,
                    self.keepalive.unanswered()
                );
                let mut m = Message::new(self.key.clone(), MessageType::Ping);
                self.add_ack(&mut m);
                self.out.push_back(Output::Publish(m));
                self.acknowledged_in_data();
                self.timers.set(Timer::Keepalive, next);
            }
            keepalive::Due::GiveUp => {
                log::info!(
                    "stream {}: peer answered none of {} keepalive pings, aborting",
                    self.key,
                    self.config.keepalive_pings
                );
                self.abort(ErrorReason::Timeout);
                self.out.push_back(Output::Aborted(ErrorReason::Timeout));
            }
        }
    }

    pub(super) fn send_connected(&mut self) {
        let mut m = Message::new(self.key.clone(), MessageType::Connected);
        m.version = Some(self.version);
        m.ack = Some(self.recv.next);
        m.window = Some(self.recv.window(&self.config));
        self.out.push_back(Output::Publish(m));
        self.acknowledged_in_data();
    }

    fn on_connected(&mut self, version: Option<u32>, now: Instant) {
        if self.side == Side::Entry && self.state == State::Connecting {
            // The exit answers with the lower of its version and ours.
            self.version = version
                .unwrap_or(2)
                .clamp(2, self.config.max_version.max(2));
            self.state = State::Open;
            self.connect = None;
            self.timers.stop(Timer::Connect);
            self.send.on_open(now, &mut self.timers);
            self.out.push_back(Output::Opened);
            let at = self.keepalive.heard(now, true);
            self.timers.set(Timer::Keepalive, at);
            // Data that overtook the answer waits in the reorder buffer.
            self.drain_in_order(now);
        }
    }

    pub(super) fn retransmit_connect(&mut self, now: Instant) {
        let Some(connect) = self.connect.clone() else {
            self.timers.stop(Timer::Connect);
            return;
        };
        let rto = self.send.connect_retry(&self.config);
        self.timers.set(Timer::Connect, now + rto);
        self.out.push_back(Output::Publish(connect));
    }

    fn on_error(&mut self, code: &str) {
        let reason = ErrorReason::parse(code);
        let before_open = self.state == State::Connecting;
        self.state = State::Closed;
        self.out
            .push_back(if before_open && self.side == Side::Entry {
                Output::Refused(reason)
            } else {
                Output::Aborted(reason)
            });
    }

    fn protocol_error(&mut self) {
        self.abort(ErrorReason::ProtocolError);
        self.out
            .push_back(Output::Aborted(ErrorReason::ProtocolError));
    }

    pub(super) fn check_done(&mut self, now: Instant) {
        if self.state != State::Open {
            return;
        }
        if self.send.is_done() && self.recv.finished {
            // Linger so that data or a CLOSE retransmitted because our last
            // acknowledgement was lost is acknowledged again, instead of the
            // peer retrying until it gives up (TCP's TIME-WAIT).
            self.state = State::Lingering;
            self.timers.set(Timer::Linger, now + self.linger());
            if self.timers.is_set(Timer::Ack) {
                // Nothing of ours is left to carry the delayed one.
                self.recv.ack_now = true;
            }
        }
    }

    /// How long a finished stream stays after the peer's last message: as
    /// long as the peer may keep retransmitting before it gives up. Only the
    /// state machine stays (no buffers).
    pub(super) fn linger(&self) -> Duration {
        self.config.give_up_after
    }
}

/// Receiving: [`Recv`](super::recv::Recv)'s results become deliveries.
impl Stream {
    pub(super) fn on_data(&mut self, seq: u64, data: Vec<u8>, now: Instant) {
        let open = self.state != State::Connecting;
        let got = self.recv.on_data(
            seq,
            data,
            open,
            now,
            &self.config,
            &mut self.timers,
            &self.key,
        );
        match got {
            Ok(delivery) => self.deliver(delivery, now),
            Err(e) => {
                log::warn!("stream {}: {e}", self.key);
                self.protocol_error();
            }
        }
    }

    fn on_fin(&mut self, seq: u64, now: Instant) {
        let open = self.state != State::Connecting;
        match self
            .recv
            .on_fin(seq, open, now, &self.config, &mut self.timers)
        {
            Ok(delivery) => self.deliver(delivery, now),
            Err(e) => {
                log::warn!("stream {}: {e}", self.key);
                self.protocol_error();
            }
        }
    }

    /// Delivers buffered data that has become contiguous, then the peer's
    /// `CLOSE` if it is next.
    pub(super) fn drain_in_order(&mut self, now: Instant) {
        let open = self.state != State::Connecting;
        let delivery = self.recv.drain(open, now, &self.config, &mut self.timers);
        self.deliver(delivery, now);
    }

    fn deliver(&mut self, delivery: Delivery, now: Instant) {
        for data in delivery.data {
            self.out.push_back(Output::Deliver(data));
        }
        if delivery.finished {
            self.out.push_back(Output::PeerFinished);
            self.check_done(now);
        }
    }
}

/// Sending: [`Send`](super::send::Send)'s segments become messages.
impl Stream {
    fn on_ack(&mut self, ack: u64, window: Option<u64>, sack: &[[u64; 2]], now: Instant) {
        let mut tx = Vec::new();
        let acked = self.send.on_ack(
            ack,
            window,
            sack,
            now,
            &self.config,
            &mut self.timers,
            &mut tx,
        );
        if let Err(e) = acked {
            log::warn!(
                "stream {}: ack {ack} beyond what was sent ({})",
                self.key,
                e.sent
            );
            self.protocol_error();
            return;
        }
        self.publish(tx);
        self.check_done(now);
    }

    pub(super) fn on_rto(&mut self, now: Instant) {
        let mut tx = Vec::new();
        let outcome = self
            .send
            .on_rto(now, &self.config, &self.key, &mut self.timers, &mut tx);
        if outcome == RtoOutcome::GiveUp {
            self.abort(ErrorReason::Timeout);
            self.out.push_back(Output::Aborted(ErrorReason::Timeout));
            return;
        }
        self.publish(tx);
    }

    pub(super) fn transmit(&mut self, now: Instant) {
        self.transmit_inner(now, false);
    }

    /// Puts unsent bytes (and the `CLOSE`) into messages as far as the
    /// peer's window allows, and sends a standalone acknowledgement if one is
    /// due and no data carried it.
    pub(super) fn transmit_inner(&mut self, now: Instant, timer: bool) {
        match self.state {
            State::Open => {
                let mut tx = Vec::new();
                self.send
                    .segment_unsent(now, timer, &self.config, &mut self.timers, &mut tx);
                self.publish(tx);
            }
            State::Lingering => {}
            State::Connecting | State::Closed => return,
        }
        self.flush_ack();
    }

    /// Publishes segments, each carrying the current acknowledgement.
    pub(super) fn publish(&mut self, tx: Vec<Transmit>) {
        if tx.is_empty() {
            return;
        }
        for t in tx {
            let mut m = self.segment_message(t);
            if self.connected_pending {
                if m.seq == Some(0) && matches!(m.kind, MessageType::Data | MessageType::Close) {
                    // The backend's first bytes (and maybe its close) are
                    // the answer: they carry `version` instead of a
                    // CONNECTED of their own (version 3).
                    m.version = Some(self.version);
                    self.connected_pending = false;
                    self.send.hold = false;
                    self.timers.stop(Timer::ConnectedHold);
                } else {
                    self.release_connected();
                }
            }
            self.out.push_back(Output::Publish(m));
        }
        self.acknowledged_in_data();
    }

    /// Sends the held `CONNECTED` on its own, if it is still held.
    pub(super) fn release_connected(&mut self) {
        if self.connected_pending {
            self.connected_pending = false;
            self.send.hold = false;
            self.timers.stop(Timer::ConnectedHold);
            self.send_connected();
        }
    }

    /// The hold is over: data waiting goes now (carrying `version`), or,
    /// with none, `CONNECTED` alone.
    pub(super) fn end_connected_hold(&mut self) {
        self.timers.stop(Timer::ConnectedHold);
        self.send.hold = false;
        if self.send.unsent.is_empty() {
            self.release_connected();
        }
    }

    pub(super) fn flush_ack(&mut self) {
        if !self.recv.ack_now {
            return;
        }
        if self.connected_pending {
            // CONNECTED carries the acknowledgement.
            self.release_connected();
            return;
        }
        let mut m = Message::new(self.key.clone(), MessageType::Ack);
        self.add_ack(&mut m);
        self.out.push_back(Output::Publish(m));
        self.acknowledged_in_data();
    }

    /// Every data message carries the current acknowledgement.
    fn acknowledged_in_data(&mut self) {
        self.recv.acknowledged(&self.config, &mut self.timers);
    }

    fn segment_message(&self, t: Transmit) -> Message {
        // A close with data exists only in version 3 (`Send::fin_rides`).
        let kind = if t.fin {
            MessageType::Close
        } else {
            MessageType::Data
        };
        let mut m = Message::new(self.key.clone(), kind);
        m.seq = Some(t.offset);
        m.data = t.data;
        self.add_ack(&mut m);
        m
    }

    fn add_ack(&self, m: &mut Message) {
        m.ack = Some(self.recv.next);
        m.window = Some(self.recv.window(&self.config));
        m.sack = self.recv.sack_ranges();
    }

    /// Arms [`Timer::Coalesce`] for what [`Send`](super::send::Send) holds
    /// back now; called last by every entry point that may change it.
    pub(super) fn sync_coalesce(&mut self) {
        let at = self.send.coalesce_deadline(&self.config);
        self.timers.set_or_stop(Timer::Coalesce, at);
    }
}
