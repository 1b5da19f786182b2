//! Who may open a stream now: the allow list of entry keys, the exit's and
//! each entry key's concurrent-stream caps, and each entry key's rate of new
//! streams per minute.
//!
//! Checked before any work is done for a stream, so that one entry cannot
//! crowd out the others or make the exit dial without bound.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nostr::PublicKey;

use super::ExitConfig;
use crate::demux::Demux;
use crate::protocol::ErrorReason;
use crate::stats::Stats;
use crate::sync::lock;

/// The period of the per-entry-key new-stream limit.
const RATE_PERIOD: Duration = Duration::from_secs(60);

/// Above this many tracked entry keys, the ones whose period has ended are
/// forgotten, so that a stream of fresh keys cannot grow the table forever.
const RATE_TABLE_PRUNE: usize = 10_000;

/// The admission state that outlives one stream: new streams per entry key
/// in its current period.
#[derive(Default)]
pub(super) struct Admission {
    /// Per entry key: (start of its current period, streams opened in it).
    rates: Mutex<HashMap<PublicKey, (Instant, u32)>>,
}

impl Admission {
    /// Why a new stream from `author` must be refused, if it must: not on
    /// the allow list, the exit's (`stats`) or this entry key's (`demux`)
    /// concurrent streams at their cap, or too many new streams from this
    /// key in the last minute. An admitted stream counts towards the rate.
    pub(super) fn check(
        &self,
        config: &ExitConfig,
        stats: &Stats,
        demux: &Demux,
        author: &PublicKey,
    ) -> Option<ErrorReason> {
        if config
            .allowed_entries
            .as_ref()
            .is_some_and(|list| !list.contains(author))
        {
            return Some(ErrorReason::NotAllowed);
        }
        if stats.streams_open.load(Ordering::Relaxed) >= config.max_streams {
            return Some(ErrorReason::TooManyStreams);
        }
        if demux.streams_of(author) >= config.max_streams_per_entry {
            return Some(ErrorReason::TooManyStreams);
        }
        let now = Instant::now();
        let mut rates = lock(&self.rates);
        if rates.len() > RATE_TABLE_PRUNE {
            rates.retain(|_, (start, _)| now.duration_since(*start) < RATE_PERIOD);
        }
        let (start, count) = rates.entry(*author).or_insert((now, 0));
        if now.duration_since(*start) >= RATE_PERIOD {
            *start = now;
            *count = 0;
        }
        if *count >= config.max_new_streams_per_minute {
            return Some(ErrorReason::TooManyStreams);
        }
        *count += 1;
        None
    }
}
