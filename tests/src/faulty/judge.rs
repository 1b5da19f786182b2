//! The decisions: what happens to each text frame, in each direction.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use nostr::filter::MatchEventOptions;
use nostr::{Event, Filter, Kind, TagKind};
use nws_core::sync::lock;
use rand::Rng;
use serde_json::{json, Value};

use super::config::{bump, FaultConfig, EPHEMERAL_MAX_AGE};
use super::Shared;

/// Reason of every refusal for lack of NIP-42 authentication.
const AUTH_REQUIRED: &str = "auth-required: please authenticate";
/// Reason of a `content_cap` refusal: no size word, no number.
const OPAQUE: &str = "invalid: rejected";
/// Reason of a `max_events_per_sec` refusal.
const RATE_LIMITED: &str = "rate-limited: slow down";
/// Reason of an ephemeral event refused as too old by `store_ephemeral`.
const TOO_OLD: &str = "invalid: event too old";

/// An ephemeral event kept by `store_ephemeral`.
pub(super) struct Kept {
    /// When it is forgotten.
    expires: Instant,
    /// Parsed, for filter matching.
    event: Event,
    /// As the client sent it.
    json: Value,
}

/// What to send upstream for a client frame.
pub(super) enum Upstream {
    /// The frame as received.
    Original,
    /// This text instead.
    Text(String),
    /// Nothing.
    Nothing,
}

/// What to do with one client frame: send `upstream` first, then `replies` to
/// the client, then stop reading from the client for `pause`.
pub(super) struct Outcome {
    pub(super) upstream: Upstream,
    pub(super) replies: Vec<String>,
    pub(super) pause: Option<Duration>,
}

impl Outcome {
    /// Pass the frame on unchanged.
    pub(super) fn forward() -> Self {
        Self {
            upstream: Upstream::Original,
            replies: Vec::new(),
            pause: None,
        }
    }

    fn swallow() -> Self {
        Self {
            upstream: Upstream::Nothing,
            ..Self::forward()
        }
    }

    fn reply(replies: Vec<String>) -> Self {
        Self {
            replies,
            ..Self::swallow()
        }
    }
}

/// The client side of one connection: authentication, throttling and rate state.
pub(super) struct ClientSide {
    /// This connection's NIP-42 challenge.
    challenge: String,
    /// Whether `["AUTH", challenge]` was sent.
    challenge_sent: bool,
    /// Whether the client answered it.
    authed: bool,
    /// Throttled refusals so far.
    refusals: u32,
    /// The token bucket of `max_events_per_sec`, with the rate it was made for.
    bucket: Option<(u32, DefaultDirectRateLimiter)>,
}

impl ClientSide {
    pub(super) fn new() -> Self {
        Self {
            challenge: format!("{:032x}", rand::rng().random::<u128>()),
            challenge_sent: false,
            authed: false,
            refusals: 0,
            bucket: None,
        }
    }

    /// `["AUTH", challenge]` if it is yet to be sent (and marks it sent).
    pub(super) fn challenge_frame(&mut self) -> Option<String> {
        if self.challenge_sent {
            return None;
        }
        self.challenge_sent = true;
        Some(json!(["AUTH", self.challenge]).to_string())
    }

    /// Takes a token from the bucket for `rate` events per second.
    fn allow(&mut self, rate: u32) -> bool {
        let Some(per_sec) = NonZeroU32::new(rate) else {
            return false;
        };
        let stale = match &self.bucket {
            Some((made_for, _)) => *made_for != rate,
            None => true,
        };
        if stale {
            self.bucket = Some((rate, RateLimiter::direct(Quota::per_second(per_sec))));
        }
        self.bucket.as_ref().is_some_and(|(_, b)| b.check().is_ok())
    }

    /// The sleep owed after a refusal by a size mode, if throttling is on.
    fn throttle(&mut self, config: &FaultConfig, shared: &Shared) -> Option<Duration> {
        if !config.throttle_after_reject {
            return None;
        }
        self.refusals += 1;
        bump(&shared.counters.throttle_sleeps);
        Some(config.throttle_delay(self.refusals))
    }
}

/// `["OK", id, accepted, reason]`.
fn ok(id: &str, accepted: bool, reason: &str) -> String {
    json!(["OK", id, accepted, reason]).to_string()
}

fn is_ephemeral(kind: u64) -> bool {
    (20_000..30_000).contains(&kind)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Shared {
    /// Applies the configuration to a text frame from the client. Ephemeral ids
    /// whose OK is to be withheld are added to `swallow`.
    pub(super) fn on_client_text(
        &self,
        side: &mut ClientSide,
        text: &str,
        swallow: &Mutex<HashSet<String>>,
    ) -> Outcome {
        let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else {
            // Malformed: not ours to judge; the relay will complain.
            return Outcome::forward();
        };
        let config = lock(&self.faults).config;
        match items.first().and_then(Value::as_str) {
            Some("EVENT") => self.on_event(side, &config, &items, swallow),
            Some("REQ") => self.on_req(side, &config, items),
            Some("AUTH") if side.challenge_sent => self.on_auth(side, &items),
            _ => Outcome::forward(),
        }
    }

    fn on_event(
        &self,
        side: &mut ClientSide,
        config: &FaultConfig,
        items: &[Value],
        swallow: &Mutex<HashSet<String>>,
    ) -> Outcome {
        let Some(event @ Value::Object(fields)) = items.get(1) else {
            return Outcome::forward();
        };
        let c = &self.counters;
        bump(&c.publish_seen);
        // One draw per EVENT seen, whatever the decision, so drops are repeatable.
        let draw: f64 = lock(&self.faults).publish_rng.random();
        let id = fields.get("id").and_then(Value::as_str).unwrap_or("");
        let refuse = |counter: Option<&AtomicU64>, reply: Option<String>, pause| {
            bump(&c.publish_rejected);
            if let Some(counter) = counter {
                bump(counter);
            }
            Outcome {
                pause,
                ..Outcome::reply(reply.into_iter().collect())
            }
        };

        if config.auth_required && !side.authed {
            let mut replies: Vec<String> = side.challenge_frame().into_iter().collect();
            replies.push(ok(id, false, AUTH_REQUIRED));
            bump(&c.publish_rejected);
            bump(&c.auth_rejected);
            return Outcome::reply(replies);
        }
        if let Some(rate) = config.max_events_per_sec {
            if !side.allow(rate) {
                return refuse(
                    Some(&c.rate_limited),
                    Some(ok(id, false, RATE_LIMITED)),
                    None,
                );
            }
        }
        if let Some(limit) = config.max_event_bytes {
            let size = json_len(event);
            if size > limit {
                let pause = side.throttle(config, self);
                let reply = (!config.silent_size_drops).then(|| {
                    let reason = format!("invalid: event too large ({size} > {limit} bytes)");
                    ok(id, false, &reason)
                });
                return refuse(None, reply, pause);
            }
        }
        if let Some(cap) = config.content_cap {
            let content = fields.get("content").and_then(Value::as_str).unwrap_or("");
            if content.chars().count() > cap {
                let pause = side.throttle(config, self);
                return refuse(Some(&c.rejected_opaque), Some(ok("", false, OPAQUE)), pause);
            }
        }
        let ephemeral = fields
            .get("kind")
            .and_then(Value::as_u64)
            .is_some_and(is_ephemeral);
        if ephemeral && config.store_ephemeral.is_some() {
            let created_at = fields.get("created_at").and_then(Value::as_u64);
            let oldest = unix_now().saturating_sub(EPHEMERAL_MAX_AGE.as_secs());
            if created_at.is_some_and(|t| t < oldest) {
                return refuse(None, Some(ok(id, false, TOO_OLD)), None);
            }
        }
        // `draw` is in [0, 1): p <= 0 (or NaN) never drops, p >= 1 always does.
        if draw < config.drop_publish {
            bump(&c.publish_dropped);
            return Outcome::swallow();
        }
        bump(&c.publish_forwarded);
        if ephemeral {
            if config.no_ok_for_ephemeral {
                lock(swallow).insert(id.to_string());
            }
            if let Some(keep) = config.store_ephemeral {
                if let Ok(parsed) = serde_json::from_value::<Event>(event.clone()) {
                    let mut store = lock(&self.store);
                    let now = Instant::now();
                    store.retain(|k| k.expires > now);
                    store.push(Kept {
                        expires: now + keep,
                        event: parsed,
                        json: event.clone(),
                    });
                }
            }
        }
        Outcome::forward()
    }

    fn on_req(
        &self,
        side: &mut ClientSide,
        config: &FaultConfig,
        mut items: Vec<Value>,
    ) -> Outcome {
        let sub_id = items
            .get(1)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if config.auth_required && !side.authed {
            let mut replies: Vec<String> = side.challenge_frame().into_iter().collect();
            replies.push(json!(["CLOSED", sub_id, AUTH_REQUIRED]).to_string());
            bump(&self.counters.auth_rejected);
            return Outcome::reply(replies);
        }
        let mut outcome = Outcome::forward();
        if config.ignore_filters {
            widen_req(&mut items);
            outcome.upstream = Upstream::Text(Value::Array(items.clone()).to_string());
        }
        if config.store_ephemeral.is_some() {
            let filters: Vec<Filter> = items
                .iter()
                .skip(2)
                .filter_map(|f| serde_json::from_value(f.clone()).ok())
                .collect();
            let now = Instant::now();
            let mut store = lock(&self.store);
            store.retain(|k| k.expires > now);
            for kept in store.iter() {
                let opts = MatchEventOptions::new();
                if filters.iter().any(|f| f.match_event(&kept.event, opts)) {
                    bump(&self.counters.stored_replayed);
                    outcome
                        .replies
                        .push(json!(["EVENT", sub_id, kept.json]).to_string());
                }
            }
        }
        outcome
    }

    fn on_auth(&self, side: &mut ClientSide, items: &[Value]) -> Outcome {
        let raw = items.get(1).cloned().unwrap_or(Value::Null);
        let id = raw
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let verdict = match serde_json::from_value::<Event>(raw) {
            Err(_) => Err("invalid: malformed auth event"),
            Ok(event) => check_auth(&event, &side.challenge),
        };
        let reply = match verdict {
            Ok(()) => {
                side.authed = true;
                bump(&self.counters.auth_ok);
                ok(&id, true, "")
            }
            Err(reason) => {
                bump(&self.counters.auth_failed);
                ok(&id, false, reason)
            }
        };
        Outcome::reply(vec![reply])
    }

    /// Applies the configuration to a text frame from the relay: `true` to pass
    /// it on. OKs for ids in `swallow` are withheld (once each).
    pub(super) fn on_relay_text(&self, text: &str, swallow: &Mutex<HashSet<String>>) -> bool {
        if starts_message(text, "OK") {
            let mut pending = lock(swallow);
            if pending.is_empty() {
                return true;
            }
            let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else {
                return true;
            };
            let id = items.get(1).and_then(Value::as_str).unwrap_or("");
            if pending.remove(id) {
                bump(&self.counters.ok_swallowed);
                return false;
            }
            return true;
        }
        if !starts_message(text, "EVENT") {
            return true;
        }
        let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else {
            return true;
        };
        let Some(event @ Value::Object(_)) = items.get(2) else {
            return true;
        };
        let c = &self.counters;
        bump(&c.deliver_seen);
        let (config, draw) = {
            let mut faults = lock(&self.faults);
            let draw: f64 = faults.deliver_rng.random();
            (faults.config, draw)
        };
        if config
            .max_event_bytes
            .is_some_and(|limit| json_len(event) > limit)
        {
            bump(&c.deliver_rejected);
            return false;
        }
        if draw < config.drop_deliver {
            bump(&c.deliver_dropped);
            return false;
        }
        bump(&c.deliver_forwarded);
        true
    }
}

/// NIP-42 checks of an AUTH event against this connection's challenge.
fn check_auth(event: &Event, challenge: &str) -> Result<(), &'static str> {
    if event.verify().is_err() {
        return Err("invalid: bad id or signature");
    }
    if event.kind != Kind::Authentication {
        return Err("invalid: not a kind 22242 event");
    }
    let tag = |kind| event.tags.find(kind).and_then(|t| t.content());
    if tag(TagKind::Challenge) != Some(challenge) {
        return Err("invalid: wrong challenge");
    }
    if tag(TagKind::Relay).is_none() {
        return Err("invalid: no relay tag");
    }
    Ok(())
}

/// Cheap pre-filter: does this text frame start like `["<name>"`?
fn starts_message(text: &str, name: &str) -> bool {
    text.trim_start()
        .strip_prefix('[')
        .and_then(|rest| rest.trim_start().strip_prefix('"'))
        .and_then(|rest| rest.strip_prefix(name))
        .is_some_and(|rest| rest.starts_with('"'))
}

/// Cuts every filter of a `REQ` down to its `kinds` (and `since`).
fn widen_req(items: &mut [Value]) {
    for filter in items.iter_mut().skip(2) {
        if let Value::Object(f) = filter {
            f.retain(|k, _| k == "kinds" || k == "since");
        }
    }
}

/// Length in bytes of `value`'s compact JSON serialization, without building it.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
