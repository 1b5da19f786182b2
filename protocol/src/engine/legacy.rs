//! The legacy dialect (`docs/PROTOCOL.md`, "Legacy"), in one place: data as
//! `SOCKS5RESPONSE` messages without sequence numbers, delivered in arrival
//! order, never retransmitted (the peer would see duplicates), no open
//! answer, no close, no timers. The public entry points of [`Stream`]
//! dispatch here once; nothing else in the engine asks for the dialect.

use super::{Output, State, Stream};
use crate::message::{Message, MessageType};

/// Entry side: the `CONNECT` goes out and, with no answer to wait for, the
/// stream counts as open at once.
pub(super) fn open(mut s: Stream, connect: Message) -> Stream {
    s.out.push_back(Output::Publish(connect));
    s.state = State::Open;
    s.out.push_back(Output::Opened);
    s
}

/// Exit side: bytes in the `CONNECT` are delivered first, as they came.
pub(super) fn accept(s: &mut Stream, data: Vec<u8>) {
    deliver(s, data);
}

/// The backend accepted: there is nothing to answer.
pub(super) fn backend_connected(s: &mut Stream) {
    s.state = State::Open;
    s.out.push_back(Output::Opened);
}

/// Without a window, only the send buffer limits a write.
pub(super) fn send_capacity(s: &Stream) -> usize {
    s.config.send_buffer
}

/// Every write goes out at once, in messages of at most one segment.
pub(super) fn write(s: &mut Stream, bytes: &[u8]) -> usize {
    for chunk in bytes.chunks(s.send.max_segment) {
        s.out
            .push_back(Output::Publish(data_message(s, chunk.to_vec())));
    }
    bytes.len()
}

/// There is no close message. A legacy peer never finishes either, so the
/// stream does not linger: it lasts until the driver drops or aborts it.
pub(super) fn finish(s: &mut Stream) {
    s.send.fin_queued = true;
}

/// An abort tells a legacy peer nothing (it knows no `ERROR`).
pub(super) fn abort(s: &mut Stream) {
    s.state = State::Closed;
}

/// Data is delivered as it arrives; everything else means nothing here.
pub(super) fn handle_message(s: &mut Stream, msg: Message) {
    if msg.kind.is_data() {
        deliver(s, msg.data);
    }
}

/// Entry side: the exit answered a version-2 `CONNECT` with plain data, so
/// it speaks legacy. The stream opens in that dialect, and 0-RTT bytes the
/// exit ignored go again as plain data.
pub(super) fn fall_back(s: &mut Stream, msg: Message) {
    log::info!("stream {}: exit answered in the legacy format", s.key);
    s.dialect = super::Dialect::Legacy;
    s.connect = None;
    s.timers.stop(super::timer::Timer::Connect);
    s.state = State::Open;
    s.out.push_back(Output::Opened);
    deliver(s, msg.data);
    for seg in s.send.take_back_early(&mut s.timers) {
        let m = data_message(s, seg.data);
        s.out.push_back(Output::Publish(m));
    }
}

/// Window accounting is version 2's: delivered bytes are not counted.
fn deliver(s: &mut Stream, data: Vec<u8>) {
    if !data.is_empty() {
        s.out.push_back(Output::Deliver(data));
    }
}

fn data_message(s: &Stream, data: Vec<u8>) -> Message {
    let mut m = Message::new(s.key.clone(), MessageType::Socks5Response);
    // The reference fills the destination on data messages too.
    m.destination = s.destination.clone();
    m.data = data;
    m
}
