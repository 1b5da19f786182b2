//! Counters of an entry's or an exit's streams, shared by every stream task
//! and read by the CLI, the bindings' `status()` and the benchmark.

// Only the entry and the exit drive streams; a build with neither (the
// embedded relay's) uses just the accept loop and the transport.
#![cfg_attr(not(any(feature = "entry", feature = "exit")), allow(dead_code))]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

use crate::engine::Stream;

/// Counters shared by every stream of an entry or exit.
#[derive(Debug, Default)]
pub struct Stats {
    /// Streams open now.
    pub streams_open: AtomicUsize,
    /// Streams opened since start.
    pub streams_total: AtomicU64,
    /// Bytes read from local sockets and sent to peers.
    pub bytes_sent: AtomicU64,
    /// Bytes received from peers and written to local sockets.
    pub bytes_received: AtomicU64,
    /// Data and `CLOSE` messages of finished version-2 streams, first sends.
    pub segments_sent: AtomicU64,
    /// Data and `CLOSE` messages of finished version-2 streams sent again
    /// (retransmissions and split resends).
    pub segments_resent: AtomicU64,
    /// Notified (one stored permit) whenever a stream opens or closes, so
    /// that a watcher can read `streams_open` and `streams_total` again.
    pub changed: tokio::sync::Notify,
    /// Streams refused or not opened, by reason.
    pub refusals: Refusals,
}

/// A node's counters at one moment, for the metrics endpoint
/// (`ExitNode::metrics`, `Entry::metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMetrics {
    /// Streams open now.
    pub streams_open: u64,
    /// Streams opened since start.
    pub streams_total: u64,
    /// Stream bytes sent to the peer (read from local sockets).
    pub bytes_sent: u64,
    /// Stream bytes received from the peer (written to local sockets).
    pub bytes_received: u64,
    /// Events published, once each whatever the number of relays (stream
    /// events; on an exit also heartbeats and announcements).
    pub events_sent: u64,
    /// Stream events received and routed (after de-duplication).
    pub events_received: u64,
    /// Refusals by reason code ([`Refusals::snapshot`]).
    pub refusals: Vec<(String, u64)>,
    /// Relays connected now.
    pub relays_connected: u64,
    /// Relays known (configured, or learnt from names).
    pub relays_known: u64,
    /// On an exit: instances of its key live now and live and active
    /// (serving new streams), this one included; `None` on an entry.
    pub instances: Option<(u64, u64)>,
}

impl NodeMetrics {
    /// The stream counters of `stats` with the given event and relay counts.
    pub(crate) fn new(stats: &Stats, events: (u64, u64), relays: (usize, usize)) -> Self {
        Self {
            streams_open: stats.streams_open.load(Ordering::Relaxed) as u64,
            streams_total: stats.streams_total.load(Ordering::Relaxed),
            bytes_sent: stats.bytes_sent.load(Ordering::Relaxed),
            bytes_received: stats.bytes_received.load(Ordering::Relaxed),
            events_sent: events.0,
            events_received: events.1,
            refusals: stats.refusals.snapshot(),
            relays_connected: relays.0 as u64,
            relays_known: relays.1 as u64,
            instances: None,
        }
    }
}

/// Refusals by reason code (an exit's `ERROR` reasons such as
/// `not-allowed`, `too-many-streams`, `connection-refused`; an entry's own
/// such as `not-nws`, `no-relay`, `timeout`), since start, for the metrics
/// endpoint.
#[derive(Debug, Default)]
pub struct Refusals(Mutex<BTreeMap<String, u64>>);

impl Refusals {
    /// Counts one refusal with `reason`.
    pub fn count(&self, reason: &crate::protocol::ErrorReason) {
        self.count_code(reason.as_str());
    }

    /// Counts one refusal with the reason code `code`.
    pub fn count_code(&self, code: &str) {
        *lock(&self.0).entry(code.to_string()).or_insert(0) += 1;
    }

    /// Every reason counted so far with its count, sorted by reason.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        lock(&self.0).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

impl Stats {
    /// Adds a finished stream's message counts and logs them (debug).
    pub(crate) fn record<E: std::fmt::Debug>(&self, engine: &Stream, end: E) -> E {
        let (sent, resent) = engine.segment_counts();
        self.segments_sent.fetch_add(sent, Ordering::Relaxed);
        self.segments_resent.fetch_add(resent, Ordering::Relaxed);
        log::debug!(
            "stream {}: ended ({end:?}); {sent} data messages sent, {resent} sent again",
            engine.key()
        );
        end
    }
}

/// One stream counted in [`Stats::streams_open`] until dropped. A stream
/// stops counting when it only lingers after closing.
pub(crate) struct OpenSlot(pub(crate) Arc<Stats>);

impl OpenSlot {
    /// Counts a new open stream.
    pub fn new(stats: Arc<Stats>) -> Self {
        stats.streams_open.fetch_add(1, Ordering::Relaxed);
        stats.streams_total.fetch_add(1, Ordering::Relaxed);
        stats.changed.notify_one();
        Self(stats)
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_one();
    }
}
