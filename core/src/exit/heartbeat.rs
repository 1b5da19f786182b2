//! The heartbeat task of an exit instance ([`super::instances`]): publishes
//! one small event every [`HEARTBEAT_INTERVAL`], reads the heartbeats of the
//! instances that share the key, and answers a new instance at once so that
//! it learns the live set within one relay round trip.
//!
//! On the relays: one subscription (`kinds` = [`KIND_EXIT_HEARTBEAT`],
//! `authors` = the exit key) and one event per interval per instance, plus
//! one answer whenever a new instance appears.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nostr::{Event, EventBuilder, Filter, Keys, Kind, RelayUrl, Tag, Timestamp};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::instances::{
    check_instance_id, Heard, Heartbeat, HeartbeatError, Membership, HEARTBEAT_INTERVAL,
    HEARTBEAT_MAX_AGE_SECS, HELLO_WAIT, KIND_EXIT_HEARTBEAT, LAPSE,
};
use crate::sync::lock;
use crate::transport::Transport;

/// Shortest time between two heartbeats sent in answer to new instances.
const ANSWER_HOLDOFF: Duration = Duration::from_millis(500);

/// Signs a heartbeat: kind [`KIND_EXIT_HEARTBEAT`], content the JSON of
/// `hb` NIP-44-encrypted from the exit key to itself, NIP-40 `expiration`
/// [`LAPSE`] ahead (relays that store ephemeral events drop it then).
///
/// # Errors
///
/// [`HeartbeatError::Decrypt`] (encryption) or [`HeartbeatError::Malformed`]
/// (signing) with the cause.
pub fn heartbeat_event(keys: &Keys, hb: &Heartbeat) -> Result<Event, HeartbeatError> {
    let json = serde_json::to_string(hb).map_err(|e| HeartbeatError::Malformed(e.to_string()))?;
    let content = nostr::nips::nip44::encrypt(
        keys.secret_key(),
        &keys.public_key(),
        json,
        nostr::nips::nip44::Version::V2,
    )
    .map_err(|e| HeartbeatError::Decrypt(e.to_string()))?;
    EventBuilder::new(Kind::Custom(KIND_EXIT_HEARTBEAT), content)
        .tag(Tag::expiration(Timestamp::now() + LAPSE))
        .sign_with_keys(keys)
        .map_err(|e| HeartbeatError::Malformed(e.to_string()))
}

/// Reads a heartbeat event (signature already checked by the relay pool):
/// authored by `keys`' public key, fresh, decrypting to a valid
/// [`Heartbeat`].
///
/// # Errors
///
/// The [`HeartbeatError`] that says why it was dropped.
pub fn read_heartbeat(keys: &Keys, event: &Event, now: u64) -> Result<Heartbeat, HeartbeatError> {
    if event.pubkey != keys.public_key() {
        return Err(HeartbeatError::WrongAuthor(event.pubkey.to_hex()));
    }
    let age = now.saturating_sub(event.created_at.as_secs());
    if age > HEARTBEAT_MAX_AGE_SECS {
        return Err(HeartbeatError::Old(age));
    }
    let plain = nostr::nips::nip44::decrypt(keys.secret_key(), &keys.public_key(), &event.content)
        .map_err(|e| HeartbeatError::Decrypt(e.to_string()))?;
    let hb: Heartbeat =
        serde_json::from_str(&plain).map_err(|e| HeartbeatError::Malformed(e.to_string()))?;
    check_instance_id(&hb.instance)?;
    Ok(hb)
}

/// The filter of the heartbeat subscription: kind [`KIND_EXIT_HEARTBEAT`]
/// by the exit key, from `since` (unix seconds).
pub fn heartbeat_filter(keys: &Keys, since: u64) -> Filter {
    Filter::new()
        .kind(Kind::Custom(KIND_EXIT_HEARTBEAT))
        .author(keys.public_key())
        .since(Timestamp::from(since))
}

/// The running heartbeat of one instance.
pub(super) struct Heartbeats {
    pub(super) membership: Arc<Mutex<Membership>>,
    keys: Keys,
    relays: Vec<RelayUrl>,
    transport: Transport,
}

impl Heartbeats {
    /// Subscribes to the heartbeats of `keys`, announces instance `id`
    /// (joining: active [`ACTIVATION_DELAY_SECS`](super::instances::ACTIVATION_DELAY_SECS)
    /// from now), listens [`HELLO_WAIT`] for the others and, if none
    /// answered, becomes active at once (a lone exit serves from its
    /// start). Then beats every [`HEARTBEAT_INTERVAL`] in a task until
    /// `cancel`.
    ///
    /// # Errors
    ///
    /// The transport's, if the subscription cannot be made.
    pub(super) async fn start(
        transport: &Transport,
        keys: &Keys,
        relays: &[RelayUrl],
        id: String,
        cancel: CancellationToken,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), crate::transport::TransportError> {
        let now = Timestamp::now().as_secs();
        let membership = Arc::new(Mutex::new(Membership::new(
            id,
            now + super::instances::ACTIVATION_DELAY_SECS,
        )));
        let mut rx = transport.route_kind(KIND_EXIT_HEARTBEAT);
        transport
            .subscribe(
                heartbeat_filter(keys, now.saturating_sub(super::journal::CLOCK_SKEW)),
                relays,
            )
            .await?;
        let this = Arc::new(Self {
            membership,
            keys: keys.clone(),
            relays: relays.to_vec(),
            transport: transport.clone(),
        });
        this.beat(false).await;
        // Listen for the others' answers.
        let deadline = tokio::time::Instant::now() + HELLO_WAIT;
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => { this.on_event(&ev); }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        {
            let mut m = lock(&this.membership);
            if m.alone(Instant::now()) {
                m.set_active_from(now);
                log::info!("exit instance {}: alone, active now", m.id());
            } else {
                log::info!(
                    "exit instance {}: {} instances live, joining (active from {})",
                    m.id(),
                    m.live_count(Instant::now()),
                    m.active_from()
                );
            }
        }
        this.beat(false).await;
        let task = {
            let this = Arc::clone(&this);
            tokio::spawn(async move { this.run(rx, cancel).await })
        };
        Ok((this, task))
    }

    async fn run(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Event>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last_answer: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    lock(&self.membership).prune(Instant::now());
                    self.beat(false).await;
                }
                ev = rx.recv() => {
                    let Some(ev) = ev else { return };
                    if self.on_event(&ev) == Some(Heard::New)
                        && last_answer.is_none_or(|t| t.elapsed() >= ANSWER_HOLDOFF)
                    {
                        last_answer = Some(Instant::now());
                        self.beat(false).await;
                    }
                }
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Reads one heartbeat event; bad ones are logged and change nothing.
    fn on_event(&self, ev: &Event) -> Option<Heard> {
        match read_heartbeat(&self.keys, ev, Timestamp::now().as_secs()) {
            Ok(hb) => {
                let heard =
                    lock(&self.membership).heard(&hb, ev.created_at.as_secs(), Instant::now());
                match heard {
                    Heard::New => log::info!(
                        "exit instance {} heard (active from {})",
                        hb.instance,
                        hb.active_from
                    ),
                    Heard::Left => log::info!("exit instance {} left", hb.instance),
                    _ => {}
                }
                Some(heard)
            }
            Err(e) => {
                log::warn!("heartbeat event {} dropped: {e}", ev.id);
                None
            }
        }
    }

    /// Publishes this instance's heartbeat (`leaving`: the last one).
    pub(super) async fn beat(&self, leaving: bool) {
        let hb = {
            let m = lock(&self.membership);
            Heartbeat {
                instance: m.id().to_string(),
                active_from: m.active_from(),
                leaving,
            }
        };
        match heartbeat_event(&self.keys, &hb) {
            Ok(ev) => {
                if let Err(e) = self.transport.publish(&ev, &self.relays).await {
                    log::warn!("heartbeat not published: {e}");
                }
            }
            Err(e) => log::warn!("heartbeat not made: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_round_trip_and_bad_ones_are_refused() {
        let keys = Keys::generate();
        let hb = Heartbeat {
            instance: "exit-1".into(),
            active_from: 1234,
            leaving: false,
        };
        let ev = heartbeat_event(&keys, &hb).unwrap();
        let now = ev.created_at.as_secs();
        assert_eq!(read_heartbeat(&keys, &ev, now).unwrap(), hb);
        assert!(matches!(
            read_heartbeat(&keys, &ev, now + 60),
            Err(HeartbeatError::Old(_))
        ));
        let other = Keys::generate();
        assert!(matches!(
            read_heartbeat(&other, &ev, now),
            Err(HeartbeatError::WrongAuthor(_))
        ));
        // Another key's heartbeat, checked as ours, does not decrypt.
        let foreign = heartbeat_event(&other, &hb).unwrap();
        let forged = EventBuilder::new(Kind::Custom(KIND_EXIT_HEARTBEAT), foreign.content)
            .sign_with_keys(&keys)
            .unwrap();
        assert!(matches!(
            read_heartbeat(&keys, &forged, now),
            Err(HeartbeatError::Decrypt(_))
        ));
        let junk = nostr::nips::nip44::encrypt(
            keys.secret_key(),
            &keys.public_key(),
            "{\"instance\":\"\",\"active_from\":1}",
            nostr::nips::nip44::Version::V2,
        )
        .unwrap();
        let junk = EventBuilder::new(Kind::Custom(KIND_EXIT_HEARTBEAT), junk)
            .sign_with_keys(&keys)
            .unwrap();
        assert_eq!(
            read_heartbeat(&keys, &junk, now),
            Err(HeartbeatError::BadId(String::new()))
        );
    }
}
