//! The checks behind NWS's fuzz targets (`fuzz/fuzz_targets/*.rs`), one
//! function per target. Each takes arbitrary bytes, feeds them to one parser
//! or state machine of `nws-protocol` (no I/O, so no mock sockets), and
//! panics if an invariant breaks — a panic inside `nws-protocol` itself is a
//! finding as well.
//!
//! | target | what it feeds | invariants |
//! |---|---|---|
//! | [`message_json`] | decrypted message JSON (`Message::from_json`) | parse → serialize → parse is the identity; seal → open too |
//! | [`frame`] | a decrypted version-3 binary frame (`frame::decode`) | decode → encode → decode is the identity, sender included; seal → open too |
//! | [`nip44_open`] | event content (`Cipher::open`): text, base64 payloads, tampered sealed payloads | no panic; one changed byte never opens |
//! | [`names`] | proxied host names (`parse_host`) | agrees with `is_nws_host`; case and trailing dot do not matter; `.nostr` and npub re-encode to the same exit |
//! | [`socks5_request`] | a SOCKS5 client's bytes in fuzzed pieces (`socks5::Handshake`) | same result and bytes answered as a reference parser (RFC 1928/1929); a successful handshake uses exactly the client's messages |
//! | [`http_request`] | an HTTP proxy client's bytes in fuzzed pieces (`http::parse`) | independent of read sizes; forwarded heads re-parse, carry no `Proxy-*`; error answers cannot be split |
//! | [`engine`] | a sequence of peer messages, local writes and timer ticks (`engine::Stream`) | bytes delivered are a prefix of what a consistent peer sent, exactly once; own data sent as written; buffers bounded; timers progress; a consistent peer never causes a protocol error |
//!
//! [`seeds`] builds the valid inputs committed under `fuzz/corpus/`.

mod codec;
mod engine;
mod http;
mod names;
pub mod seeds;
mod socks5;

pub use codec::{frame, message_json, nip44_open};
pub use engine::{engine, EngineInput, Op};
pub use http::http_request;
pub use names::names;
pub use socks5::socks5_request;

/// The names of every target, as directories under `fuzz/corpus/`.
pub const TARGETS: &[&str] = &[
    "message_json",
    "frame",
    "nip44_open",
    "names",
    "socks5_request",
    "http_request",
    "engine",
];

/// Runs target `name` on `data`; `false` if there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "message_json" => message_json(data),
        "frame" => frame(data),
        "nip44_open" => nip44_open(data),
        "names" => names(data),
        "socks5_request" => socks5_request(data),
        "http_request" => http_request(data),
        "engine" => engine(data),
        _ => return false,
    }
    true
}
