//! Version 3's binary frame: the NIP-44 plaintext of a stream message
//! between two peers that both speak version 3 (`docs/PROTOCOL.md`,
//! "Version 3 framing"). It carries the same [`Message`] as the JSON of
//! version 2, as a compact header followed by the raw data bytes, so that
//! data is not base64-encoded twice and an event carries about 40 KiB of
//! data instead of 29 KiB.
//!
//! Layout (all integers unsigned; `varint` is LEB128, at most 10 bytes):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | frame version, `0x03` (a JSON plaintext starts with `{`, `0x7b`) |
//! | 1 | type: 1 `CONNECT`, 2 `CONNECTR`, 3 `DATA`, 4 `CONNECTED`, 5 `ERROR`, 6 `CLOSE`, 7 `ACK`, 8 `PING`, 0 other, `SOCKS5RESPONSE` included (its name follows as `u8` length + UTF-8) |
//! | 2 | flags, big-endian: bit 0 sender is the exit, 1 `seq`, 2 `ack`, 3 `window`, 4 `sack`, 5 `reason`, 6 `destination`, 7 `entryPublicAddress`, 8 `version`, 9 key is a UUID |
//! | 16 or 1+n | stream key: 16 bytes of UUID, or `u8` length + UTF-8 |
//! | varint each | `seq`, `ack`, `window`, `version`, in that order, where flagged |
//! | 1 + 2·varint each | `sack`: count, then `[start, end)` pairs |
//! | 1+n | `reason`: `u8` length + UTF-8 |
//! | 2+n each | `destination`, `entryPublicAddress`: big-endian `u16` length + UTF-8 |
//! | rest | data |
//!
//! The sender bit is what lets a receiver trust a frame without checking
//! the event's signature: the NIP-44 MAC proves that one of the two keys of
//! the conversation sealed it, and the bit, inside the MAC, says which.

use crate::codec::CodecError;
use crate::message::{Message, MessageType};

/// First byte of a version-3 frame.
pub const FRAME_VERSION: u8 = 3;

/// Longest stream key, in bytes, that [`MAX_DATA_HEADER`] plans for; a
/// stream with a longer key writes JSON instead.
pub const MAX_PLANNED_KEY: usize = 64;

/// Most header bytes a frame of a data message takes, in bytes: type,
/// flags, a stream key of up to [`MAX_PLANNED_KEY`] bytes, four varints and 16 selective-ack
/// ranges ([`crate::engine`] sends at most 16). Data plus this fits the
/// plaintext size it is planned for.
pub const MAX_DATA_HEADER: usize = 512;

/// Which peer sealed a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The entry node (the side that sent `CONNECT`).
    Entry,
    /// The exit node.
    Exit,
}

const F_FROM_EXIT: u16 = 1 << 0;
const F_SEQ: u16 = 1 << 1;
const F_ACK: u16 = 1 << 2;
const F_WINDOW: u16 = 1 << 3;
const F_SACK: u16 = 1 << 4;
const F_REASON: u16 = 1 << 5;
const F_DESTINATION: u16 = 1 << 6;
const F_ENTRY_ADDRESS: u16 = 1 << 7;
const F_VERSION: u16 = 1 << 8;
const F_UUID_KEY: u16 = 1 << 9;
const KNOWN_FLAGS: u16 = (1 << 10) - 1;

fn type_code(kind: &MessageType) -> u8 {
    match kind {
        MessageType::Connect => 1,
        MessageType::ConnectReverse => 2,
        MessageType::Data => 3,
        MessageType::Connected => 4,
        MessageType::Error => 5,
        MessageType::Close => 6,
        MessageType::Ack => 7,
        MessageType::Ping => 8,
        // SOCKS5RESPONSE (legacy data) is never framed by us; by name it
        // still comes back as itself.
        MessageType::Socks5Response | MessageType::Unknown(_) => 0,
    }
}

/// Parses a canonical lower-case hyphenated UUID (`8-4-4-4-12` hex digits).
fn uuid_bytes(key: &str) -> Option<[u8; 16]> {
    let b = key.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        let hi = hex_digit(b[i])?;
        let lo = hex_digit(b[i + 1])?;
        out[n] = hi << 4 | lo;
        n += 1;
        i += 2;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn uuid_string(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[usize::from(byte >> 4)] as char);
        s.push(HEX[usize::from(byte & 15)] as char);
    }
    s
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_short(out: &mut Vec<u8>, s: &str, what: &str) -> Result<(), CodecError> {
    let len = u8::try_from(s.len())
        .map_err(|_| CodecError::Frame(format!("{what} longer than 255 bytes")))?;
    out.push(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_long(out: &mut Vec<u8>, s: &str, what: &str) -> Result<(), CodecError> {
    let len = u16::try_from(s.len())
        .map_err(|_| CodecError::Frame(format!("{what} longer than 65,535 bytes")))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Encodes `msg`, sealed by `sender`, as a version-3 frame.
///
/// # Errors
///
/// [`CodecError::Frame`] when a string field is longer than the frame
/// allows (a stream key or reason over 255 bytes, a destination over
/// 65,535) or `sack` has more than 255 ranges.
pub fn encode(msg: &Message, sender: Sender) -> Result<Vec<u8>, CodecError> {
    let mut flags = 0u16;
    if sender == Sender::Exit {
        flags |= F_FROM_EXIT;
    }
    let uuid = uuid_bytes(&msg.key);
    let fields = [
        (msg.seq.is_some(), F_SEQ),
        (msg.ack.is_some(), F_ACK),
        (msg.window.is_some(), F_WINDOW),
        (msg.sack.is_some(), F_SACK),
        (msg.reason.is_some(), F_REASON),
        (!msg.destination.is_empty(), F_DESTINATION),
        (!msg.entry_public_address.is_empty(), F_ENTRY_ADDRESS),
        (msg.version.is_some(), F_VERSION),
        (uuid.is_some(), F_UUID_KEY),
    ];
    for (present, flag) in fields {
        if present {
            flags |= flag;
        }
    }
    let mut out = Vec::with_capacity(64 + msg.data.len());
    out.push(FRAME_VERSION);
    let code = type_code(&msg.kind);
    out.push(code);
    out.extend_from_slice(&flags.to_be_bytes());
    if code == 0 {
        put_short(&mut out, msg.kind.as_str(), "message type")?;
    }
    match uuid {
        Some(b) => out.extend_from_slice(&b),
        None => put_short(&mut out, &msg.key, "stream key")?,
    }
    for v in [msg.seq, msg.ack, msg.window, msg.version.map(u64::from)]
        .into_iter()
        .flatten()
    {
        put_varint(&mut out, v);
    }
    if let Some(sack) = &msg.sack {
        let n = u8::try_from(sack.len())
            .map_err(|_| CodecError::Frame("more than 255 sack ranges".into()))?;
        out.push(n);
        for [a, b] in sack {
            put_varint(&mut out, *a);
            put_varint(&mut out, *b);
        }
    }
    if let Some(reason) = &msg.reason {
        put_short(&mut out, reason, "reason")?;
    }
    if !msg.destination.is_empty() {
        put_long(&mut out, &msg.destination, "destination")?;
    }
    if !msg.entry_public_address.is_empty() {
        put_long(&mut out, &msg.entry_public_address, "entryPublicAddress")?;
    }
    out.extend_from_slice(&msg.data);
    Ok(out)
}

/// Whether a NIP-44 plaintext is a version-3 frame (else it is JSON).
pub fn is_frame(plain: &[u8]) -> bool {
    plain.first() == Some(&FRAME_VERSION)
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| CodecError::Frame(format!("frame ends inside {what}")))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self, what: &str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    fn varint(&mut self, what: &str) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte(what)?;
            let part = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(CodecError::Frame(format!("{what} overflows 64 bits")));
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::Frame(format!("{what} overflows 64 bits")))
    }

    fn text(&mut self, n: usize, what: &str) -> Result<String, CodecError> {
        let b = self.take(n, what)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| CodecError::Frame(format!("{what} is not UTF-8")))
    }

    fn short(&mut self, what: &str) -> Result<String, CodecError> {
        let n = self.byte(what)?;
        self.text(usize::from(n), what)
    }

    fn long(&mut self, what: &str) -> Result<String, CodecError> {
        let b = self.take(2, what)?;
        self.text(usize::from(u16::from_be_bytes([b[0], b[1]])), what)
    }
}

/// Decodes a version-3 frame: the message and which peer sealed it.
///
/// # Errors
///
/// [`CodecError::Frame`] for anything that is not a whole frame: another
/// first byte, unknown flags, a field cut short, a varint over 64 bits,
/// text that is not UTF-8.
pub fn decode(plain: &[u8]) -> Result<(Message, Sender), CodecError> {
    let mut r = Reader { buf: plain, at: 0 };
    let version = r.byte("frame version")?;
    if version != FRAME_VERSION {
        return Err(CodecError::Frame(format!(
            "frame version {version}, expected {FRAME_VERSION}"
        )));
    }
    let code = r.byte("type")?;
    let f = r.take(2, "flags")?;
    let flags = u16::from_be_bytes([f[0], f[1]]);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(CodecError::Frame(format!("unknown flags {flags:#06x}")));
    }
    let kind = match code {
        1 => MessageType::Connect,
        2 => MessageType::ConnectReverse,
        3 => MessageType::Data,
        4 => MessageType::Connected,
        5 => MessageType::Error,
        6 => MessageType::Close,
        7 => MessageType::Ack,
        8 => MessageType::Ping,
        0 => MessageType::from(r.short("message type")?.as_str()),
        other => MessageType::Unknown(format!("frame type {other}")),
    };
    let key = if flags & F_UUID_KEY != 0 {
        uuid_string(r.take(16, "stream key")?)
    } else {
        r.short("stream key")?
    };
    let mut msg = Message::new(key, kind);
    let has = |flag: u16| flags & flag != 0;
    if has(F_SEQ) {
        msg.seq = Some(r.varint("seq")?);
    }
    if has(F_ACK) {
        msg.ack = Some(r.varint("ack")?);
    }
    if has(F_WINDOW) {
        msg.window = Some(r.varint("window")?);
    }
    if has(F_VERSION) {
        let v = r.varint("version")?;
        msg.version = Some(u32::try_from(v).unwrap_or(u32::MAX));
    }
    if has(F_SACK) {
        let n = r.byte("sack")?;
        let mut ranges = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            ranges.push([r.varint("sack")?, r.varint("sack")?]);
        }
        msg.sack = Some(ranges);
    }
    if has(F_REASON) {
        msg.reason = Some(r.short("reason")?);
    }
    if has(F_DESTINATION) {
        msg.destination = r.long("destination")?;
    }
    if has(F_ENTRY_ADDRESS) {
        msg.entry_public_address = r.long("entryPublicAddress")?;
    }
    msg.data = plain[r.at..].to_vec();
    let sender = if has(F_FROM_EXIT) {
        Sender::Exit
    } else {
        Sender::Entry
    };
    Ok((msg, sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Message {
        let mut m = Message::new("3b1f09a8-2b10-4daa-880c-2a392e781f09", MessageType::Data);
        m.data = (0..=255u8).cycle().take(1000).collect();
        m.seq = Some(1 << 40);
        m.ack = Some(0);
        m.window = Some(524_288);
        m.sack = Some(vec![[5, 9], [u64::MAX - 1, u64::MAX]]);
        m.reason = Some("timeout".into());
        m.destination = "x.nostr:443".into();
        m.entry_public_address = "1.2.3.4:5".into();
        m.version = Some(3);
        m
    }

    #[test]
    fn every_field_round_trips() {
        for sender in [Sender::Entry, Sender::Exit] {
            let m = full();
            let frame = encode(&m, sender).unwrap();
            assert!(is_frame(&frame));
            assert_eq!(decode(&frame).unwrap(), (m, sender));
        }
        let legacy = Message::new("k", MessageType::Socks5Response);
        let frame = encode(&legacy, Sender::Exit).unwrap();
        assert_eq!(decode(&frame).unwrap().0, legacy);
        let mut odd = Message::new("not-a-uuid", MessageType::Unknown("HELLO".into()));
        odd.data = b"x".to_vec();
        let frame = encode(&odd, Sender::Entry).unwrap();
        assert_eq!(decode(&frame).unwrap().0, odd);
        // Upper-case UUIDs are not canonical: kept as text, unchanged.
        let upper = Message::new("3B1F09A8-2B10-4DAA-880C-2A392E781F09", MessageType::Ack);
        let frame = encode(&upper, Sender::Exit).unwrap();
        assert_eq!(decode(&frame).unwrap().0.key, upper.key);
    }

    #[test]
    fn a_data_header_is_small() {
        let mut m = Message::new("3b1f09a8-2b10-4daa-880c-2a392e781f09", MessageType::Data);
        m.seq = Some(123_456_789);
        m.ack = Some(987_654);
        m.window = Some(524_288);
        m.data = vec![7; 40_000];
        let frame = encode(&m, Sender::Exit).unwrap();
        assert_eq!(frame.len() - m.data.len(), 4 + 16 + 4 + 3 + 3);
        // The largest header the engine makes stays within MAX_DATA_HEADER.
        m.seq = Some(u64::MAX);
        m.ack = Some(u64::MAX);
        m.window = Some(u64::MAX);
        m.sack = Some(vec![[u64::MAX, u64::MAX]; 16]);
        m.key = "k".repeat(64);
        let frame = encode(&m, Sender::Exit).unwrap();
        assert!(frame.len() - m.data.len() <= MAX_DATA_HEADER);
    }

    #[test]
    fn broken_frames_are_errors_never_panics() {
        let frame = encode(&full(), Sender::Exit).unwrap();
        let header = frame.len() - 1000;
        for cut in 0..header {
            assert!(
                matches!(decode(&frame[..cut]), Err(CodecError::Frame(_))),
                "cut at {cut}"
            );
        }
        let mut bad = frame.clone();
        bad[0] = b'{';
        assert!(decode(&bad).is_err());
        let mut bad = frame.clone();
        bad[2] = 0x80;
        assert!(decode(&bad).is_err());
        // An 11-byte varint.
        let mut bad = vec![FRAME_VERSION, 3, 0, 0x02, 1, b'k'];
        bad.extend_from_slice(&[0xff; 11]);
        assert!(decode(&bad).is_err());
    }
}
