//! Streams an exit refused or could not serve, counted by the `ERROR`
//! reason sent (`docs/PROTOCOL.md`, section 2), for the metrics endpoint.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::protocol::ErrorReason;
use crate::sync::lock;

/// Refusals by reason code (`not-allowed`, `too-many-streams`,
/// `connection-refused`, ...), since start.
#[derive(Debug, Default)]
pub struct Refusals(Mutex<BTreeMap<String, u64>>);

impl Refusals {
    /// Counts one refusal with `reason`.
    pub fn count(&self, reason: &ErrorReason) {
        *lock(&self.0)
            .entry(reason.as_str().to_string())
            .or_insert(0) += 1;
    }

    /// Every reason counted so far with its count, sorted by reason.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        lock(&self.0).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}
