//! The stream's deadlines, in one table (the shape of `quinn-proto`'s
//! `timer.rs`): every timer is a name and an optional instant, so arming,
//! stopping and finding the next expiry are the same code for all of them.

use std::time::Instant;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Entry, version 2: the `CONNECT` goes again until the exit answers.
    Connect,
    /// Unacknowledged data goes again (and the stream gives up eventually).
    Retransmit,
    /// A delayed acknowledgement goes out on its own.
    Ack,
    /// A small write stops waiting to be combined with more (Nagle, bounded).
    Coalesce,
    /// A finished stream stops acknowledging retransmissions and closes.
    Linger,
    /// The peer has been quiet: ping it, or give up on it.
    Keepalive,
    /// Paced data may go again.
    Pace,
    /// Exit, version 3: `CONNECTED` stops waiting for the backend's first
    /// bytes to ride with it and goes on its own.
    ConnectedHold,
}

impl Timer {
    const ALL: [Timer; 8] = [
        Timer::Connect,
        Timer::Retransmit,
        Timer::Ack,
        Timer::Coalesce,
        Timer::Linger,
        Timer::Keepalive,
        Timer::Pace,
        Timer::ConnectedHold,
    ];
}

/// One optional deadline per [`Timer`].
#[derive(Debug, Clone, Default)]
pub(super) struct TimerTable {
    at: [Option<Instant>; Timer::ALL.len()],
}

impl TimerTable {
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.at[timer as usize] = Some(at);
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.at[timer as usize] = None;
    }

    pub(super) fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer as usize]
    }

    pub(super) fn is_set(&self, timer: Timer) -> bool {
        self.get(timer).is_some()
    }

    /// Sets `timer` to `at`, or stops it for `None`.
    pub(super) fn set_or_stop(&mut self, timer: Timer, at: Option<Instant>) {
        self.at[timer as usize] = at;
    }

    /// Whether `timer` is armed and due at `now`.
    pub(super) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|t| now >= t)
    }

    /// The earliest deadline among `timers`.
    pub(super) fn next_expiring(&self, timers: &[Timer]) -> Option<Instant> {
        timers.iter().filter_map(|&t| self.get(t)).min()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_table_keeps_one_deadline_per_timer() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        assert_eq!(table.next_expiring(&Timer::ALL), None);
        table.set(Timer::Ack, t0 + Duration::from_millis(20));
        table.set(Timer::Retransmit, t0 + Duration::from_secs(1));
        table.set(Timer::Ack, t0 + Duration::from_millis(10));
        assert_eq!(
            table.next_expiring(&Timer::ALL),
            Some(t0 + Duration::from_millis(10))
        );
        assert_eq!(
            table.next_expiring(&[Timer::Retransmit, Timer::Linger]),
            Some(t0 + Duration::from_secs(1))
        );
        assert!(table.is_expired(Timer::Retransmit, t0 + Duration::from_secs(1)));
        assert!(table.is_expired(Timer::Ack, t0 + Duration::from_secs(1)));
        assert!(!table.is_expired(Timer::Connect, t0 + Duration::from_secs(1)));
        table.stop(Timer::Ack);
        assert!(!table.is_set(Timer::Ack));
        assert!(!table.is_expired(Timer::Ack, t0 + Duration::from_secs(9)));
    }
}
