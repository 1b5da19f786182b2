//! Engine tests: single steps, and a deterministic simulated network
//! ([`super::sim`]) that drops, duplicates, delays and reorders messages
//! (seeded), no sockets and no sleeps.

use std::time::{Duration, Instant};

use super::sim::*;
use super::*;

mod network;
mod steps;

fn cfg(max_segment: usize) -> StreamConfig {
    StreamConfig {
        max_segment,
        min_segment: 1,
        ..Default::default()
    }
}
