//! Reverse connect (`CONNECTR`, `docs/PROTOCOL.md` §6): the exit dials the
//! entry's public address, writes the stream's key ([`KEY_LEN`] bytes: the
//! hyphenated UUID string), and waits for the one byte [`ACCEPTED`]; from
//! then on the connection carries the stream's raw bytes (plain TCP, no
//! Nostr, no encryption added). Both sides use these constants.

use std::time::Duration;

/// Length of a stream key on the reverse connection, in bytes: a hyphenated
/// UUID string (`8-4-4-4-12` hex digits).
pub const KEY_LEN: usize = 36;

/// The byte the entry answers a key it was waiting for with.
pub const ACCEPTED: u8 = 0x01;

/// How long the exit waits for the entry's [`ACCEPTED`] after it connected
/// and wrote the key, and how long the entry waits for the key.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `key` has the shape of a stream key on the reverse connection.
pub fn is_valid_key(key: &str) -> bool {
    key.len() == KEY_LEN
}
