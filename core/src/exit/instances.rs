//! Several exit processes that share one key ("instances"): who is live,
//! and which instance owns a stream (`docs/PROTOCOL.md`, section 8).
//!
//! Every instance announces itself in a heartbeat (kind
//! [`KIND_EXIT_HEARTBEAT`], authored by the shared exit key, content
//! NIP-44-encrypted to that key) every [`HEARTBEAT_INTERVAL`]; an instance
//! not heard for [`LAPSE`] (three missed heartbeats) is gone. A heartbeat
//! carries the instance's id and its activation time `active_from` (unix
//! seconds). A stream belongs to the live instance with the highest
//! rendezvous weight ([`weight`]) among those active at the `CONNECT`'s
//! `created_at` (signed by the entry, so the same for every instance):
//! instances agree without talking to each other, and a join changes the
//! owner only of streams whose `CONNECT` is created after the joiner's
//! activation.
//!
//! [`Membership`] is the sans-IO table (time is passed in); the task that
//! publishes and reads heartbeats is `super::heartbeat`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use nostr::PublicKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Kind of an exit instance's heartbeat (ephemeral range, NIP-01; our own
/// number, next to the stream kind 28333).
pub const KIND_EXIT_HEARTBEAT: u16 = 28334;
/// Time between two heartbeats of one instance.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Heartbeats an instance may miss before the others count it gone.
pub const MISSED_HEARTBEATS: u32 = 3;
/// An instance not heard for this long (local arrival time) has lapsed:
/// [`MISSED_HEARTBEATS`] × [`HEARTBEAT_INTERVAL`] = 6 s.
pub const LAPSE: Duration = Duration::from_secs(2 * MISSED_HEARTBEATS as u64);
/// Seconds between a joining instance's first heartbeat and its
/// `active_from`: every live instance has heard of it before it counts.
pub const ACTIVATION_DELAY_SECS: u64 = 5;
/// How long a starting instance listens for the others (who answer a new
/// instance's first heartbeat at once) before it decides it is alone.
pub const HELLO_WAIT: Duration = Duration::from_secs(1);
/// Longest instance id accepted, in bytes.
pub const MAX_INSTANCE_ID: usize = 64;
/// Heartbeats created further than this before now (seconds) are replays
/// from a relay that stores ephemeral events: dropped.
pub const HEARTBEAT_MAX_AGE_SECS: u64 = 6 + super::journal::CLOCK_SKEW;
/// Streams whose owner is remembered (for retransmitted `CONNECT`s and
/// `unknown-stream` answers); past it the oldest are forgotten.
const OWNERS_REMEMBERED: usize = 65_536;

/// The plaintext of a heartbeat (JSON inside the NIP-44 payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The instance's id (at most [`MAX_INSTANCE_ID`] bytes, not empty).
    pub instance: String,
    /// Unix seconds from which the instance counts for new streams.
    pub active_from: u64,
    /// Sent once on a clean stop: the instance is gone now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// Why a heartbeat was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeartbeatError {
    /// The event is not authored by the exit key.
    #[error("heartbeat authored by {0}, not by the exit key")]
    WrongAuthor(String),
    /// The content does not decrypt under the exit key (NIP-44).
    #[error("heartbeat does not decrypt: {0}")]
    Decrypt(String),
    /// The plaintext is not a heartbeat.
    #[error("heartbeat is not valid JSON: {0}")]
    Malformed(String),
    /// The instance id is empty, longer than [`MAX_INSTANCE_ID`] bytes, or
    /// has a character other than ASCII letters, digits, `-`, `_`, `.`.
    #[error("instance id `{0}`: 1 to {MAX_INSTANCE_ID} ASCII letters, digits, `-`, `_` or `.`")]
    BadId(String),
    /// Created more than [`HEARTBEAT_MAX_AGE_SECS`] ago: a replay.
    #[error("heartbeat created {0} s ago: a replay")]
    Old(u64),
}

/// Makes a random instance id: 16 lower-case hex digits.
pub fn random_instance_id() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an instance id (given with `--instance`, or heard): it names the
/// instance's journal file too.
///
/// # Errors
///
/// [`HeartbeatError::BadId`] if it is empty, longer than
/// [`MAX_INSTANCE_ID`] bytes, or has a character other than ASCII letters,
/// digits, `-`, `_` and `.`.
pub fn check_instance_id(id: &str) -> Result<(), HeartbeatError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_INSTANCE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        let shown: String = id.chars().take(MAX_INSTANCE_ID).collect();
        return Err(HeartbeatError::BadId(shown.escape_debug().to_string()));
    }
    Ok(())
}

/// The rendezvous (highest-random-weight) weight of `instance` for the
/// stream `stream_key` of `author`: SHA-256 of the id's length (one byte),
/// the id, the author's 32-byte x-only key and the stream key (UTF-8).
/// Compared as 32-byte big-endian numbers.
pub fn weight(instance: &str, author: &PublicKey, stream_key: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([instance.len().min(255) as u8]);
    h.update(instance.as_bytes());
    h.update(author.to_bytes());
    h.update(stream_key.as_bytes());
    h.finalize().into()
}

/// Another instance, as last heard.
#[derive(Debug, Clone)]
struct Peer {
    active_from: u64,
    /// Local arrival of its newest heartbeat.
    heard: Instant,
    /// `created_at` of its newest heartbeat (older ones are ignored).
    created_at: u64,
}

/// What a heartbeat changed in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// An instance not live before (new, or back after lapsing): the
    /// others answer with a heartbeat of their own at once.
    New,
    /// A live instance's heartbeat.
    Known,
    /// Our own heartbeat came back through a relay.
    Own,
    /// An instance left (clean stop).
    Left,
    /// Older than one already heard from that instance: ignored.
    Stale,
}

/// The instances of one exit key as this instance sees them, and the owner
/// of each stream seen (module documentation).
#[derive(Debug)]
pub struct Membership {
    id: String,
    active_from: u64,
    peers: HashMap<String, Peer>,
    /// Owner of each stream (author, stream key) whose `CONNECT` was seen.
    owners: HashMap<(PublicKey, String), String>,
    owners_order: VecDeque<(PublicKey, String)>,
}

impl Membership {
    /// A table for instance `id`, which counts for streams from
    /// `active_from` (unix seconds) on.
    pub fn new(id: String, active_from: u64) -> Self {
        Self {
            id,
            active_from,
            peers: HashMap::new(),
            owners: HashMap::new(),
            owners_order: VecDeque::new(),
        }
    }

    /// This instance's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This instance's activation time (unix seconds).
    pub fn active_from(&self) -> u64 {
        self.active_from
    }

    /// Sets this instance's activation time (unix seconds).
    pub fn set_active_from(&mut self, active_from: u64) {
        self.active_from = active_from;
    }

    /// Records a heartbeat that arrived at `now`, created at `created_at`.
    pub fn heard(&mut self, hb: &Heartbeat, created_at: u64, now: Instant) -> Heard {
        if hb.instance == self.id {
            return Heard::Own;
        }
        if hb.leaving {
            return match self.peers.remove(&hb.instance) {
                Some(_) => Heard::Left,
                None => Heard::Stale,
            };
        }
        match self.peers.get_mut(&hb.instance) {
            Some(p) if created_at < p.created_at => Heard::Stale,
            Some(p) => {
                let was_live = now.duration_since(p.heard) < LAPSE;
                p.heard = now;
                p.created_at = created_at;
                p.active_from = hb.active_from;
                if was_live {
                    Heard::Known
                } else {
                    Heard::New
                }
            }
            None => {
                self.peers.insert(
                    hb.instance.clone(),
                    Peer {
                        active_from: hb.active_from,
                        heard: now,
                        created_at,
                    },
                );
                Heard::New
            }
        }
    }

    /// Forgets instances lapsed at `now` (their owned streams stay
    /// recorded, so that their entries can be told `unknown-stream`).
    pub fn prune(&mut self, now: Instant) {
        self.peers
            .retain(|_, p| now.duration_since(p.heard) < LAPSE * 4);
    }

    fn live_peers(&self, now: Instant) -> impl Iterator<Item = (&String, &Peer)> {
        self.peers
            .iter()
            .filter(move |(_, p)| now.duration_since(p.heard) < LAPSE)
    }

    /// Whether `instance` is this one or a peer not lapsed at `now`.
    fn is_live(&self, instance: &str, now: Instant) -> bool {
        instance == self.id
            || self
                .peers
                .get(instance)
                .is_some_and(|p| now.duration_since(p.heard) < LAPSE)
    }

    /// Whether no other instance is live at `now`: then this one serves
    /// every stream, as a lone exit always did.
    pub fn alone(&self, now: Instant) -> bool {
        self.live_peers(now).next().is_none()
    }

    /// Instances live at `now`, this one included.
    pub fn live_count(&self, now: Instant) -> usize {
        1 + self.live_peers(now).count()
    }

    /// Instances live at `now` and active at `at` (unix seconds), this one
    /// included if it is active then.
    pub fn active_count(&self, at: u64, now: Instant) -> usize {
        usize::from(self.active_from <= at)
            + self
                .live_peers(now)
                .filter(|(_, p)| p.active_from <= at)
                .count()
    }

    /// The owner, among the instances live at `now`, of the stream
    /// `stream_key` of `author` for a `CONNECT` created at `at`: the highest
    /// weight among those active at `at`, or, if none is, among all live
    /// ones (instances that started together).
    fn choose(&self, author: &PublicKey, stream_key: &str, at: u64, now: Instant) -> String {
        let mut candidates: Vec<&str> = self
            .live_peers(now)
            .filter(|(_, p)| p.active_from <= at)
            .map(|(id, _)| id.as_str())
            .collect();
        if self.active_from <= at {
            candidates.push(&self.id);
        }
        if candidates.is_empty() {
            candidates = self.live_peers(now).map(|(id, _)| id.as_str()).collect();
            candidates.push(&self.id);
        }
        candidates
            .into_iter()
            .max_by(|a, b| {
                weight(a, author, stream_key)
                    .cmp(&weight(b, author, stream_key))
                    .then_with(|| a.cmp(b))
            })
            .unwrap_or(&self.id)
            .to_string()
    }

    /// Decides a `CONNECT` (or `CONNECTR`) created at `at` (unix seconds)
    /// for the stream `stream_key` of `author`, arrived at `now`: whether
    /// this instance serves it. The owner is remembered, so that a
    /// retransmitted `CONNECT` stays with its owner while that one lives.
    pub fn on_connect(
        &mut self,
        author: &PublicKey,
        stream_key: &str,
        at: u64,
        now: Instant,
    ) -> bool {
        if self.alone(now) {
            self.remember(author, stream_key, self.id.clone());
            return true;
        }
        let key = (*author, stream_key.to_string());
        if let Some(owner) = self.owners.get(&key) {
            if self.is_live(owner, now) {
                return *owner == self.id;
            }
        }
        let owner = self.choose(author, stream_key, at, now);
        let mine = owner == self.id;
        self.remember(author, stream_key, owner);
        mine
    }

    /// Whether to answer `unknown-stream` to a message for a stream of
    /// `author` this instance does not serve: when alone (as a lone exit
    /// always did), for a stream it owned, and for a stream whose owner
    /// lapsed, by the one instance the stream would now hash to (so that
    /// the entry learns at once that its stream is gone, and only once).
    /// Never for a stream another live instance owns, nor for one it never
    /// saw opened while others are live.
    pub fn answers_unknown(&self, author: &PublicKey, stream_key: &str, now: Instant) -> bool {
        if self.alone(now) {
            return true;
        }
        match self.owners.get(&(*author, stream_key.to_string())) {
            Some(owner) if *owner == self.id => true,
            Some(owner) if self.is_live(owner, now) => false,
            Some(_) => {
                let at = nostr::Timestamp::now().as_secs();
                self.choose(author, stream_key, at, now) == self.id
            }
            None => false,
        }
    }

    fn remember(&mut self, author: &PublicKey, stream_key: &str, owner: String) {
        let key = (*author, stream_key.to_string());
        if self.owners.insert(key.clone(), owner).is_none() {
            self.owners_order.push_back(key);
            while self.owners_order.len() > OWNERS_REMEMBERED {
                if let Some(old) = self.owners_order.pop_front() {
                    self.owners.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: &str, active_from: u64) -> Heartbeat {
        Heartbeat {
            instance: id.into(),
            active_from,
            leaving: false,
        }
    }

    fn authors(n: usize) -> Vec<PublicKey> {
        (0..n)
            .map(|_| nostr::Keys::generate().public_key())
            .collect()
    }

    /// Three tables that have heard each other, all active from 100.
    fn three(now: Instant) -> Vec<Membership> {
        let ids = ["a", "b", "c"];
        ids.iter()
            .map(|me| {
                let mut m = Membership::new(me.to_string(), 100);
                for other in ids.iter().filter(|o| *o != me) {
                    m.heard(&hb(other, 100), 100, now);
                }
                m
            })
            .collect()
    }

    #[test]
    fn every_stream_has_exactly_one_owner_and_the_split_is_even() {
        let now = Instant::now();
        let mut tables = three(now);
        let mut counts = [0usize; 3];
        for author in authors(3000) {
            let owners: Vec<usize> = (0..3)
                .filter(|i| tables[*i].on_connect(&author, "k", 200, now))
                .collect();
            assert_eq!(owners.len(), 1, "owners {owners:?}");
            counts[owners[0]] += 1;
        }
        for c in counts {
            assert!((850..=1150).contains(&c), "split {counts:?}");
        }
    }

    #[test]
    fn a_lone_instance_serves_everything_and_answers_unknown_stream() {
        let now = Instant::now();
        let mut m = Membership::new("a".into(), u64::MAX);
        let author = authors(1)[0];
        assert!(m.on_connect(&author, "k", 0, now));
        assert!(m.answers_unknown(&authors(1)[0], "x", now));
    }

    #[test]
    fn a_joiner_takes_no_stream_created_before_its_activation() {
        let now = Instant::now();
        let mut tables = three(now);
        // d joins, active from 300; everyone has heard it.
        let mut d = Membership::new("d".into(), 300);
        for t in tables.iter_mut() {
            assert_eq!(t.heard(&hb("d", 300), 290, now), Heard::New);
            d.heard(&hb(t.id(), 100), 290, now);
        }
        tables.push(d);
        let mut reached_d = 0;
        for author in authors(400) {
            let before: Vec<usize> = (0..4)
                .filter(|i| tables[*i].on_connect(&author, "early", 299, now))
                .collect();
            assert_eq!(before.len(), 1);
            assert_ne!(
                before[0], 3,
                "the joiner took a stream before its activation"
            );
            let after: Vec<usize> = (0..4)
                .filter(|i| tables[*i].on_connect(&author, "late", 300, now))
                .collect();
            assert_eq!(after.len(), 1);
            reached_d += usize::from(after[0] == 3);
            // A retransmission of the early CONNECT after the activation
            // stays with its owner.
            let again: Vec<usize> = (0..4)
                .filter(|i| tables[*i].on_connect(&author, "early", 305, now))
                .collect();
            assert_eq!(again, before);
        }
        assert!(reached_d > 50, "the joiner got {reached_d} of 400");
    }

    #[test]
    fn streams_of_a_lapsed_instance_move_and_get_one_unknown_stream_answer() {
        let t0 = Instant::now();
        let mut tables = three(t0);
        let keys = authors(200);
        let owned_by_c: Vec<PublicKey> = keys
            .into_iter()
            .filter(|a| {
                let owners: Vec<bool> = tables
                    .iter_mut()
                    .map(|t| t.on_connect(a, "k", 200, t0))
                    .collect();
                owners[2]
            })
            .collect();
        assert!(!owned_by_c.is_empty());
        // a and b keep hearing each other; c falls silent.
        let later = t0 + LAPSE + Duration::from_secs(1);
        for (i, t) in tables.iter_mut().enumerate().take(2) {
            let other = if i == 0 { "b" } else { "a" };
            t.heard(&hb(other, 100), 207, later);
        }
        for a in &owned_by_c {
            // While c lived, nobody else answered for its streams.
            assert!(!tables[0].answers_unknown(a, "k", t0));
            let answering = (0..2)
                .filter(|i| tables[*i].answers_unknown(a, "k", later))
                .count();
            assert_eq!(answering, 1);
            let serving = (0..2)
                .filter(|i| tables[*i].on_connect(a, "k2", 207, later))
                .count();
            assert_eq!(serving, 1);
        }
    }

    #[test]
    fn unknown_streams_of_live_peers_are_not_answered() {
        let now = Instant::now();
        let tables = three(now);
        for a in authors(50) {
            assert!(!tables[0].answers_unknown(&a, "never-seen", now));
        }
    }

    #[test]
    fn stale_and_leaving_heartbeats() {
        let now = Instant::now();
        let mut m = Membership::new("a".into(), 0);
        assert_eq!(m.heard(&hb("b", 5), 10, now), Heard::New);
        assert_eq!(m.heard(&hb("b", 5), 9, now), Heard::Stale);
        assert_eq!(m.heard(&hb("b", 5), 12, now), Heard::Known);
        assert_eq!(m.heard(&hb("a", 0), 12, now), Heard::Own);
        let mut leaving = hb("b", 5);
        leaving.leaving = true;
        assert_eq!(m.heard(&leaving, 13, now), Heard::Left);
        assert!(m.alone(now));
    }

    #[test]
    fn instance_ids_are_checked() {
        assert!(check_instance_id("").is_err());
        assert!(check_instance_id(&"x".repeat(65)).is_err());
        assert!(check_instance_id("../etc").is_err());
        assert!(check_instance_id("exit-1").is_ok());
        assert_eq!(random_instance_id().len(), 16);
    }
}
