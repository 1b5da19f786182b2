//! The relay echo baseline: the floor any NWS design pays for one request
//! and its answer — one signed, NIP-44-encrypted kind-28333 event each way
//! through the same relay, with nothing else.
//!
//! Two nostr-sdk clients in the bench process: a responder subscribed to
//! events addressed to it, which decrypts each one and answers with one
//! event carrying a small HTTP-response-sized payload, and a requester that
//! seals, signs and publishes a request-sized event and waits for the
//! answer. The round trip counts everything on the way: JSON, NIP-44 and
//! Schnorr signing on both sides, the relay's and both pools' signature
//! checks. Messages are the NWS message type ([`nws_core::protocol`]), sealed
//! with the same code, published without waiting for `OK` like the NWS
//! transport does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nostr::{Event, Filter, Keys, PublicKey, RelayUrl};
use nostr_sdk::prelude::{Client, ClientMessage, RelayPoolNotification};
use nws_core::protocol::{build_stream_event, stream_kind, Cipher, Message, MessageType};
use tokio::sync::broadcast;

/// Request payload: about the size of the GET the entry forwards, in bytes.
const REQUEST_LEN: usize = 200;
/// Answer payload: about the size of `/small`'s response with its head, in bytes.
const ANSWER_LEN: usize = 420;
/// How long one round may take before it counts as lost.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);
/// Rounds tried (unmeasured) until the subscriptions are live.
const WARMUP_ROUNDS: usize = 20;

/// Round trips of the echo, and how many were lost.
pub struct EchoResult {
    /// Round-trip times of the rounds that were answered.
    pub rtts: Vec<Duration>,
    /// Rounds with no answer within 10 s.
    pub lost: usize,
}

/// Runs `rounds` measured echo rounds through `relay`.
pub async fn run(relay: &RelayUrl, rounds: usize) -> Result<EchoResult, String> {
    let responder_keys = Keys::generate();
    let requester_keys = Keys::generate();
    let responder = connect(relay).await?;
    let requester = connect(relay).await?;

    let responder_inbox = responder.notifications();
    responder
        .subscribe(
            Filter::new()
                .kind(stream_kind())
                .pubkey(responder_keys.public_key()),
            None,
        )
        .await
        .map_err(|e| format!("echo responder: subscribe: {e}"))?;
    let answering = tokio::spawn(answer(
        responder.clone(),
        relay.clone(),
        responder_keys.clone(),
        responder_inbox,
    ));

    let mut inbox = requester.notifications();
    requester
        .subscribe(
            Filter::new()
                .kind(stream_kind())
                .author(responder_keys.public_key())
                .pubkey(requester_keys.public_key()),
            None,
        )
        .await
        .map_err(|e| format!("echo requester: subscribe: {e}"))?;
    let cipher = Cipher::derive(requester_keys.secret_key(), &responder_keys.public_key())
        .map_err(|e| e.to_string())?;
    let peer = responder_keys.public_key();
    let key = uuid::Uuid::new_v4().to_string();

    // Until one round comes back the subscriptions may not be in place yet.
    let mut warm = false;
    for seq in 0..WARMUP_ROUNDS as u64 {
        let timeout = Duration::from_millis(500);
        let round = request(
            &requester,
            relay,
            &requester_keys,
            &peer,
            &cipher,
            &key,
            seq,
        );
        if round.send().await.is_ok() && round.wait(&mut inbox, timeout).await.is_some() {
            warm = true;
            break;
        }
    }
    let result = if warm {
        let mut rtts = Vec::with_capacity(rounds);
        let mut lost = 0;
        for i in 0..rounds as u64 {
            let seq = WARMUP_ROUNDS as u64 + i;
            let start = Instant::now();
            let round = request(
                &requester,
                relay,
                &requester_keys,
                &peer,
                &cipher,
                &key,
                seq,
            );
            match round.send().await {
                Ok(()) => match round.wait(&mut inbox, ROUND_TIMEOUT).await {
                    Some(()) => rtts.push(start.elapsed()),
                    None => lost += 1,
                },
                Err(_) => lost += 1,
            }
        }
        Ok(EchoResult { rtts, lost })
    } else {
        Err(format!(
            "relay echo: no answer to any of {WARMUP_ROUNDS} warm-up rounds through {relay}"
        ))
    };
    answering.abort();
    requester.shutdown().await;
    responder.shutdown().await;
    result
}

/// A client connected (within 10 s) to `relay`.
async fn connect(relay: &RelayUrl) -> Result<Client, String> {
    let client = Client::default();
    client
        .add_relay(relay.clone())
        .await
        .map_err(|e| format!("echo: {e}"))?;
    let out = client.try_connect(Duration::from_secs(10)).await;
    if out.success.is_empty() {
        return Err(format!("echo: cannot connect to {relay}"));
    }
    Ok(client)
}

/// One request round: the message to send and the way to its answer.
struct Round<'a> {
    client: &'a Client,
    relay: &'a RelayUrl,
    keys: &'a Keys,
    peer: &'a PublicKey,
    cipher: &'a Cipher,
    msg: Message,
}

fn request<'a>(
    client: &'a Client,
    relay: &'a RelayUrl,
    keys: &'a Keys,
    peer: &'a PublicKey,
    cipher: &'a Cipher,
    key: &str,
    seq: u64,
) -> Round<'a> {
    let mut msg = Message::new(key, MessageType::Data);
    msg.data = vec![b'q'; REQUEST_LEN];
    msg.seq = Some(seq);
    msg.ack = Some(0);
    msg.window = Some(512 * 1024);
    Round {
        client,
        relay,
        keys,
        peer,
        cipher,
        msg,
    }
}

impl Round<'_> {
    /// Seals, signs and publishes the request (no wait for `OK`).
    async fn send(&self) -> Result<(), String> {
        let content = self.cipher.seal(&self.msg).map_err(|e| e.to_string())?;
        let event = build_stream_event(self.keys, self.peer, content).map_err(|e| e.to_string())?;
        publish(self.client, self.relay, event).await
    }

    /// Waits for the answer with the request's `seq`; `None` on timeout.
    async fn wait(
        &self,
        inbox: &mut broadcast::Receiver<RelayPoolNotification>,
        timeout: Duration,
    ) -> Option<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = tokio::time::timeout_at(deadline, inbox.recv()).await.ok()?;
            let event = match n {
                Ok(RelayPoolNotification::Event { event, .. }) => event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if event.pubkey != *self.peer {
                continue;
            }
            if let Ok(answer) = self.cipher.open(&event.content) {
                if answer.seq == self.msg.seq && answer.data.len() == ANSWER_LEN {
                    return Some(());
                }
            }
        }
    }
}

async fn publish(client: &Client, relay: &RelayUrl, event: Event) -> Result<(), String> {
    let out = client
        .send_msg_to([relay.clone()], ClientMessage::event(event))
        .await
        .map_err(|e| e.to_string())?;
    if out.success.is_empty() {
        return Err("no relay took the event".into());
    }
    Ok(())
}

/// The responder: answers every request it can decrypt with one event.
async fn answer(
    client: Client,
    relay: RelayUrl,
    keys: Keys,
    mut inbox: broadcast::Receiver<RelayPoolNotification>,
) {
    let mut ciphers: HashMap<PublicKey, Cipher> = HashMap::new();
    loop {
        let event = match inbox.recv().await {
            Ok(RelayPoolNotification::Event { event, .. }) => event,
            Ok(RelayPoolNotification::Shutdown) | Err(broadcast::error::RecvError::Closed) => {
                return
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
        };
        let cipher = match ciphers.get(&event.pubkey) {
            Some(c) => c.clone(),
            None => match Cipher::derive(keys.secret_key(), &event.pubkey) {
                Ok(c) => {
                    ciphers.insert(event.pubkey, c.clone());
                    c
                }
                Err(_) => continue,
            },
        };
        let Ok(req) = cipher.open(&event.content) else {
            continue;
        };
        let mut reply = Message::new(req.key, MessageType::Data);
        reply.data = vec![b'a'; ANSWER_LEN];
        reply.seq = req.seq;
        reply.ack = Some(REQUEST_LEN as u64);
        reply.window = Some(512 * 1024);
        let Ok(content) = cipher.seal(&reply) else {
            continue;
        };
        if let Ok(ev) = build_stream_event(&keys, &event.pubkey, content) {
            let _ = publish(&client, &relay, ev).await;
        }
    }
}
