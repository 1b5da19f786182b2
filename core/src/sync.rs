//! Small synchronization helpers shared by the core, the bindings and the tests.

use std::sync::{Mutex, MutexGuard};

/// Locks a std mutex, recovering the guard if another thread panicked while
/// holding it.
///
/// Every critical section guarded this way is a short update of plain maps,
/// counters or options, so the data stays consistent after such a panic; taking
/// the guard back keeps one panicked task from turning into panics everywhere
/// (and from crossing the FFI boundary).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
