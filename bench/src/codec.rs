//! CPU cost of each step one stream event goes through, measured in this
//! process on one thread with the libraries the `nws` processes use:
//!
//! * sender: the plaintext (a version-3 frame; for version 2, JSON with
//!   base64 of the data), NIP-44 v2 encryption, base64 of the payload,
//!   event id (JSON array + SHA-256), Schnorr signature, the rest of
//!   `build_stream_event`, the `["EVENT", …]` message to the relay;
//! * relay: parsing it, checking id and signature, the `["EVENT", sub, …]`
//!   message to each subscriber;
//! * receiver: parsing that, checking id and signature (only for JSON: a
//!   version-3 frame from the peer is proven by its MAC, `docs/PROTOCOL.md`
//!   "Authenticating stream events"), base64 decoding, NIP-44 decryption,
//!   the plaintext back to a message.
//!
//! It explains the CPU seconds per MiB of the end-to-end run, step by step.

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use nostr::nips::nip44::v2::{decrypt_to_bytes, encrypt_to_bytes, ConversationKey};
use nostr::{ClientMessage, JsonUtil, Keys, RelayMessage, SubscriptionId};
use nws_core::protocol::frame::{self, Sender};
use nws_core::protocol::{
    build_stream_event, event_id, Message, MessageType, DEFAULT_MAX_DATA_PER_EVENT,
    MAX_FRAME_DATA_PER_EVENT,
};
use serde::Serialize;

/// Per-step cost of one event, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventCost {
    /// Stream bytes carried.
    pub payload_bytes: usize,
    /// Length of the event's `content`, in bytes.
    pub content_bytes: usize,
    /// Length of the `["EVENT", …]` text frame, in bytes.
    pub wire_bytes: usize,
    /// The steps in order, with their cost.
    pub steps: Vec<Step>,
}

/// One step and its mean cost.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `sender`, `relay` or `receiver`.
    pub at: &'static str,
    /// What it does.
    pub name: &'static str,
    /// Mean time, in microseconds.
    pub micros: f64,
}

impl EventCost {
    /// Sum of the steps at `at`, in microseconds.
    pub fn total(&self, at: &str) -> f64 {
        self.steps
            .iter()
            .filter(|s| s.at == at)
            .map(|s| s.micros)
            .sum()
    }
}

/// Costs of a full data event in each framing and of a standalone `ACK`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CodecCosts {
    /// A version-3 `DATA` frame with [`MAX_FRAME_DATA_PER_EVENT`] bytes.
    pub data: EventCost,
    /// A version-2 (JSON) `DATA` message with [`DEFAULT_MAX_DATA_PER_EVENT`] bytes.
    pub data_json: EventCost,
    /// A version-3 `ACK` frame (no data).
    pub ack: EventCost,
}

/// Measures each kind of event, spending about `budget` on each step.
pub fn measure(budget: Duration) -> Result<CodecCosts, String> {
    let data_of = |n: usize| {
        let mut m = Message::new(uuid::Uuid::new_v4().to_string(), MessageType::Data);
        m.data = (0..n).map(|i| (i * 31 % 251) as u8).collect();
        m.seq = Some(123_456_789);
        m.ack = Some(987_654);
        m.window = Some(512 * 1024);
        m
    };
    let data = data_of(MAX_FRAME_DATA_PER_EVENT);
    let mut ack = Message::new(data.key.clone(), MessageType::Ack);
    ack.ack = Some(123_456_789);
    ack.window = Some(512 * 1024);
    Ok(CodecCosts {
        data: measure_one(&data, true, budget)?,
        data_json: measure_one(&data_of(DEFAULT_MAX_DATA_PER_EVENT), false, budget)?,
        ack: measure_one(&ack, true, budget)?,
    })
}

/// Mean time of `f` over as many runs as fit in `budget` (at least 3).
fn time<T>(budget: Duration, mut f: impl FnMut() -> T) -> f64 {
    black_box(f());
    let start = Instant::now();
    let mut runs = 0u32;
    while runs < 3 || (start.elapsed() < budget && runs < 1_000_000) {
        black_box(f());
        runs += 1;
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(runs)
}

/// The steps of one event: a version-3 frame when `framed`, else JSON.
fn measure_one(msg: &Message, framed: bool, budget: Duration) -> Result<EventCost, String> {
    let sender = Keys::generate();
    let receiver = Keys::generate();
    let key = ConversationKey::derive(sender.secret_key(), &receiver.public_key())
        .map_err(|e| e.to_string())?;
    let to_plain = || -> Vec<u8> {
        if framed {
            frame::encode(msg, Sender::Exit).unwrap_or_default()
        } else {
            msg.to_json().into_bytes()
        }
    };
    let plain = to_plain();
    let payload = encrypt_to_bytes(&key, &plain).map_err(|e| e.to_string())?;
    let content = BASE64.encode(&payload);
    let event = build_stream_event(&sender, &receiver.public_key(), content.clone())
        .map_err(|e| e.to_string())?;
    let to_relay = ClientMessage::event(event.clone()).as_json();
    let sub = SubscriptionId::new("bench");
    let to_receiver = RelayMessage::event(sub.clone(), event.clone()).as_json();

    let mut steps = Vec::new();
    let mut step = |at, name, micros| steps.push(Step { at, name, micros });
    step(
        "sender",
        "plaintext: v3 frame, or v2 JSON + base64 of data",
        time(budget, to_plain),
    );
    step(
        "sender",
        "NIP-44 v2 encrypt (ChaCha20, HMAC-SHA256, padding)",
        time(budget, || encrypt_to_bytes(&key, &plain)),
    );
    step(
        "sender",
        "base64 of the NIP-44 payload",
        time(budget, || BASE64.encode(&payload)),
    );
    // Our sender's id: the same JSON array, hashed with `sha2` (SHA-NI).
    let id_cost = time(budget, || {
        event_id(
            &event.pubkey,
            event.created_at,
            event.kind,
            &event.tags,
            &event.content,
        )
    });
    let digest = nostr::secp256k1::Message::from_digest(event.id.to_bytes());
    let sig_cost = time(budget, || sender.sign_schnorr(&digest));
    let build_cost = time(budget, || {
        build_stream_event(&sender, &receiver.public_key(), content.clone())
    });
    step("sender", "event id (JSON array, SHA-256 by sha2)", id_cost);
    step("sender", "Schnorr signature", sig_cost);
    // build_stream_event computes the id once (nostr's EventBuilder would
    // compute it again to check it when signing).
    step(
        "sender",
        "rest of build_stream_event (copies)",
        (build_cost - id_cost - sig_cost).max(0.0),
    );
    step(
        "sender",
        "[\"EVENT\", ...] to JSON",
        time(budget, || ClientMessage::event(event.clone()).as_json()),
    );
    step(
        "relay",
        "parse [\"EVENT\", ...]",
        time(budget, || ClientMessage::from_json(&to_relay)),
    );
    step(
        "relay",
        "check event id",
        time(budget, || event.verify_id()),
    );
    step(
        "relay",
        "check signature",
        time(budget, || event.verify_signature()),
    );
    step(
        "relay",
        "[\"EVENT\", sub, ...] to JSON",
        time(budget, || {
            RelayMessage::event(sub.clone(), event.clone()).as_json()
        }),
    );
    step(
        "receiver",
        "parse [\"EVENT\", sub, ...]",
        time(budget, || RelayMessage::from_json(&to_receiver)),
    );
    // A frame from the peer is proven by its MAC; JSON by id and signature.
    step(
        "receiver",
        "check event id (JSON only)",
        if framed {
            0.0
        } else {
            time(budget, || event.verify_id())
        },
    );
    step(
        "receiver",
        "check signature (JSON only)",
        if framed {
            0.0
        } else {
            time(budget, || event.verify_signature())
        },
    );
    step(
        "receiver",
        "base64 decode of content",
        time(budget, || BASE64.decode(content.as_bytes())),
    );
    step(
        "receiver",
        "NIP-44 v2 decrypt",
        time(budget, || decrypt_to_bytes(&key, &payload)),
    );
    step(
        "receiver",
        "plaintext to message (frame, or JSON + base64)",
        time(budget, || {
            if framed {
                frame::decode(&plain).map(|(m, _)| m).ok()
            } else {
                Message::from_json(&plain).ok()
            }
        }),
    );
    Ok(EventCost {
        payload_bytes: msg.data.len(),
        content_bytes: content.len(),
        wire_bytes: to_relay.len(),
        steps,
    })
}
