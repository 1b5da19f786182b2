//! CPU cost of each step one stream event goes through, measured in this
//! process on one thread with the libraries the `nws` processes use:
//!
//! * sender: message JSON (with base64 of the data), NIP-44 v2 encryption,
//!   base64 of the payload, event id (JSON array + SHA-256), Schnorr
//!   signature, the `["EVENT", …]` message to the relay;
//! * relay: parsing it, checking id and signature, the `["EVENT", sub, …]`
//!   message to each subscriber;
//! * receiver: parsing that, checking id and signature again (nostr-sdk's
//!   pool does), base64 decoding, NIP-44 decryption, message JSON.
//!
//! It explains the CPU seconds per MiB of the end-to-end run, step by step.

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use nostr::nips::nip44::v2::{decrypt_to_bytes, encrypt_to_bytes, ConversationKey};
use nostr::{ClientMessage, EventId, JsonUtil, Keys, RelayMessage, SubscriptionId};
use nws_core::protocol::{build_stream_event, Message, MessageType, DEFAULT_MAX_DATA_PER_EVENT};
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

/// Costs of a full data event and of a standalone `ACK`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CodecCosts {
    /// A `DATA` message with [`DEFAULT_MAX_DATA_PER_EVENT`] bytes.
    pub data: EventCost,
    /// An `ACK` message (no data).
    pub ack: EventCost,
}

/// Measures both kinds of event, spending about `budget` on each step.
pub fn measure(budget: Duration) -> Result<CodecCosts, String> {
    let mut data = Message::new(uuid::Uuid::new_v4().to_string(), MessageType::Data);
    data.data = (0..DEFAULT_MAX_DATA_PER_EVENT)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    data.seq = Some(123_456_789);
    data.ack = Some(987_654);
    data.window = Some(512 * 1024);
    let mut ack = Message::new(data.key.clone(), MessageType::Ack);
    ack.ack = Some(123_456_789);
    ack.window = Some(512 * 1024);
    Ok(CodecCosts {
        data: measure_one(&data, budget)?,
        ack: measure_one(&ack, budget)?,
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

fn measure_one(msg: &Message, budget: Duration) -> Result<EventCost, String> {
    let sender = Keys::generate();
    let receiver = Keys::generate();
    let key = ConversationKey::derive(sender.secret_key(), &receiver.public_key())
        .map_err(|e| e.to_string())?;
    let json = msg.to_json();
    let payload = encrypt_to_bytes(&key, json.as_bytes()).map_err(|e| e.to_string())?;
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
        "message JSON + base64 of data",
        time(budget, || msg.to_json()),
    );
    step(
        "sender",
        "NIP-44 v2 encrypt (ChaCha20, HMAC-SHA256, padding)",
        time(budget, || encrypt_to_bytes(&key, json.as_bytes())),
    );
    step(
        "sender",
        "base64 of the NIP-44 payload",
        time(budget, || BASE64.encode(&payload)),
    );
    let id_cost = time(budget, || {
        EventId::new(
            &event.pubkey,
            &event.created_at,
            &event.kind,
            &event.tags,
            &event.content,
        )
    });
    let digest = nostr::secp256k1::Message::from_digest(event.id.to_bytes());
    let sig_cost = time(budget, || sender.sign_schnorr(&digest));
    let build_cost = time(budget, || {
        build_stream_event(&sender, &receiver.public_key(), content.clone())
    });
    step("sender", "event id (JSON array, SHA-256)", id_cost);
    step("sender", "Schnorr signature", sig_cost);
    // nostr's EventBuilder computes the id when building, then checks it
    // again when signing (UnsignedEvent::sign_with_ctx with an id set).
    step(
        "sender",
        "rest of build_stream_event (id again, copies)",
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
    step(
        "receiver",
        "check event id (pool)",
        time(budget, || event.verify_id()),
    );
    step(
        "receiver",
        "check signature (pool)",
        time(budget, || event.verify_signature()),
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
        "message JSON + base64 of data",
        time(budget, || Message::from_json(json.as_bytes())),
    );
    Ok(EventCost {
        payload_bytes: msg.data.len(),
        content_bytes: content.len(),
        wire_bytes: to_relay.len(),
        steps,
    })
}
