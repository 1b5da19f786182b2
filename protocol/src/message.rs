//! The NWS wire format's plaintext: event kinds, the JSON [`Message`]
//! carried inside each stream event, and the [`ErrorReason`] codes of
//! `ERROR` (see `docs/PROTOCOL.md`). Sealing it into event content is
//! [`crate::codec`].

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use nostr::Kind;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::CodecError;

/// Kind of a stream message event (ephemeral: relays forward, never store).
pub const KIND_STREAM: u16 = 28333;
/// Kind of a public exit's announcement (carries a NIP-40 `expiration` tag).
pub const KIND_EXIT_ANNOUNCEMENT: u16 = 38333;
/// Kind of an exit's TLS certificate (PEM, plain text).
pub const KIND_EXIT_CERTIFICATE: u16 = 38334;
/// Kind of an exit's TLS private key backup (NIP-44, exit to itself).
pub const KIND_EXIT_KEY_BACKUP: u16 = 38335;

/// The highest stream protocol version this implementation speaks
/// (`docs/PROTOCOL.md`: "Version 2", and "Version 3 framing", which is
/// version 2 with binary frames instead of JSON).
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest number of stream bytes put into one version-3 frame, in bytes:
/// the 40,960-byte NIP-44 padding step less the largest data header
/// ([`crate::frame::MAX_DATA_HEADER`]). Its event content is 54,704
/// characters, like a full version-2 event's, which carries 30,000.
pub const MAX_FRAME_DATA_PER_EVENT: usize = 40_960 - crate::frame::MAX_DATA_HEADER;

/// Largest number of stream bytes put into one event, in bytes.
///
/// 30,000 bytes of data are 40,000 bytes of base64 inside the JSON, just
/// under the 40,960 bytes NIP-44 pads it to; base64 makes the event content
/// about 54.7 KiB, which stays under the 64 KiB message cap that many public
/// relays apply. (24 KiB of data would pad to the same size.)
pub const DEFAULT_MAX_DATA_PER_EVENT: usize = 30_000;

/// JSON a version-2 data message takes besides its base64 data, at most,
/// in bytes: key, type, offsets, window and 16 selective-ack ranges (offsets
/// below 2^40).
const MESSAGE_JSON_OVERHEAD: usize = 700;

/// NIP-44 v2's padded length for a plaintext of `len` bytes.
fn nip44_padded(len: usize) -> usize {
    if len <= 32 {
        return 32;
    }
    let next_power = 1usize << (usize::BITS - (len - 1).leading_zeros());
    let chunk = if next_power <= 256 {
        32
    } else {
        next_power / 8
    };
    chunk * ((len - 1) / chunk + 1)
}

/// Length of the event content (base64 of the NIP-44 v2 payload: version,
/// nonce, length prefix, padded plaintext, MAC) of a message carrying
/// `data` stream bytes, in bytes, at most.
pub fn content_for_data(data: usize) -> usize {
    let json = data.div_ceil(3) * 4 + MESSAGE_JSON_OVERHEAD;
    let payload = 1 + 32 + 2 + nip44_padded(json) + 32;
    payload.div_ceil(3) * 4
}

/// Length of the event content of a version-3 frame carrying `data`
/// stream bytes, in bytes, at most (the header counted at its largest).
pub fn content_for_frame_data(data: usize) -> usize {
    let plain = data + crate::frame::MAX_DATA_HEADER;
    let payload = 1 + 32 + 2 + nip44_padded(plain) + 32;
    payload.div_ceil(3) * 4
}

/// The most stream bytes one JSON message may carry so that its event
/// content stays within `content_limit` bytes ([`content_for_data`]), and
/// at least 64.
pub fn max_data_for_content(content_limit: usize) -> usize {
    max_data_in(content_limit, content_for_data)
}

/// Like [`max_data_for_content`] for messages written in `framing`: for
/// version-3 frames, [`content_for_frame_data`], at most
/// [`MAX_FRAME_DATA_PER_EVENT`].
pub fn max_data_for_content_in(content_limit: usize, framing: crate::codec::Framing) -> usize {
    match framing {
        crate::codec::Framing::Json => max_data_for_content(content_limit),
        crate::codec::Framing::Binary(_) => {
            max_data_in(content_limit, content_for_frame_data).min(MAX_FRAME_DATA_PER_EVENT)
        }
    }
}

fn max_data_in(content_limit: usize, content_for: fn(usize) -> usize) -> usize {
    let (mut lo, mut hi) = (0usize, MAX_PLAINTEXT);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if content_for(mid) <= content_limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo.max(64)
}

/// Largest NIP-44 v2 plaintext rust-nostr accepts, in bytes.
pub const MAX_PLAINTEXT: usize = 65_536 - 128;

/// Stream kind as a `nostr` [`Kind`].
pub fn stream_kind() -> Kind {
    Kind::Custom(KIND_STREAM)
}

/// The `type` of a message.
///
/// The draft calls the data message `DATA`; the reference implementation
/// sends `SOCKS5RESPONSE` for data in both directions. Both are data here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Open a stream to `destination` (entry to exit).
    Connect,
    /// Open a stream by reverse connect to `entryPublicAddress`.
    ConnectReverse,
    /// Stream bytes, as the draft names it (we send it to v2 peers).
    Data,
    /// Stream bytes, as the reference implementation names it.
    Socks5Response,
    /// v2: the exit reached the backend; the stream is open.
    Connected,
    /// v2: the stream is refused or aborted; `reason` says why.
    Error,
    /// v2: the sender will send no more data (half-close, like TCP FIN).
    Close,
    /// v2: a standalone acknowledgement (`ack` and `window`, no data).
    Ack,
    /// v2: a keepalive probe of an open stream whose peer has been quiet;
    /// the peer answers at once with an `ACK` (or, if it does not know the
    /// stream, with `ERROR` `unknown-stream`).
    Ping,
    /// Any other type: kept so it can be logged and ignored.
    Unknown(String),
}

impl MessageType {
    /// The string on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Connect => "CONNECT",
            Self::ConnectReverse => "CONNECTR",
            Self::Data => "DATA",
            Self::Socks5Response => "SOCKS5RESPONSE",
            Self::Connected => "CONNECTED",
            Self::Error => "ERROR",
            Self::Close => "CLOSE",
            Self::Ack => "ACK",
            Self::Ping => "PING",
            Self::Unknown(s) => s,
        }
    }

    /// Whether this message carries stream bytes (`DATA` or `SOCKS5RESPONSE`).
    pub fn is_data(&self) -> bool {
        matches!(self, Self::Data | Self::Socks5Response)
    }
}

impl From<&str> for MessageType {
    fn from(s: &str) -> Self {
        match s {
            "CONNECT" => Self::Connect,
            "CONNECTR" => Self::ConnectReverse,
            "DATA" => Self::Data,
            "SOCKS5RESPONSE" => Self::Socks5Response,
            "CONNECTED" => Self::Connected,
            "ERROR" => Self::Error,
            "CLOSE" => Self::Close,
            "ACK" => Self::Ack,
            "PING" => Self::Ping,
            other => Self::Unknown(other.to_string()),
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MessageType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MessageType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(MessageType::from(s.as_str()))
    }
}

/// Why a stream was refused or aborted: the `reason` of an `ERROR` message.
///
/// On the wire it is a short lower-case code (`connection-refused`, ...); an
/// unknown code is kept as [`ErrorReason::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorReason {
    /// The backend actively refused the TCP connection.
    ConnectionRefused,
    /// The backend's host could not be reached or resolved.
    HostUnreachable,
    /// The backend's network could not be reached.
    NetworkUnreachable,
    /// The exit's policy does not allow this destination or entry.
    NotAllowed,
    /// The exit has as many streams open as it allows.
    TooManyStreams,
    /// Something did not answer in time.
    Timeout,
    /// The peer broke the stream protocol.
    ProtocolError,
    /// The sender's local socket (the client's at the entry, the backend's
    /// at the exit) failed or was reset while bytes were still to go.
    ConnectionReset,
    /// The receiver has no such stream (it restarted, or forgot the stream
    /// long ago): the answer to any message for a stream it does not know,
    /// like a TCP reset for a segment of no connection.
    UnknownStream,
    /// A code this implementation does not know, as received. Never sent:
    /// every code this implementation sends is one of the variants above.
    Other(String),
}

impl ErrorReason {
    /// The code on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::ConnectionRefused => "connection-refused",
            Self::HostUnreachable => "host-unreachable",
            Self::NetworkUnreachable => "network-unreachable",
            Self::NotAllowed => "not-allowed",
            Self::TooManyStreams => "too-many-streams",
            Self::Timeout => "timeout",
            Self::ProtocolError => "protocol-error",
            Self::ConnectionReset => "connection-reset",
            Self::UnknownStream => "unknown-stream",
            Self::Other(s) => s,
        }
    }

    /// Parses a wire code; unknown codes become [`ErrorReason::Other`].
    pub fn parse(code: &str) -> Self {
        match code {
            "connection-refused" => Self::ConnectionRefused,
            "host-unreachable" => Self::HostUnreachable,
            "network-unreachable" => Self::NetworkUnreachable,
            "not-allowed" => Self::NotAllowed,
            "too-many-streams" => Self::TooManyStreams,
            "timeout" => Self::Timeout,
            "protocol-error" => Self::ProtocolError,
            "connection-reset" => Self::ConnectionReset,
            "unknown-stream" => Self::UnknownStream,
            other => Self::Other(other.to_string()),
        }
    }

    /// The reason a failed backend dial gives, from its I/O error.
    pub fn from_io(err: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        match err.kind() {
            ErrorKind::ConnectionRefused => Self::ConnectionRefused,
            ErrorKind::TimedOut => Self::Timeout,
            ErrorKind::PermissionDenied => Self::NotAllowed,
            ErrorKind::NetworkUnreachable => Self::NetworkUnreachable,
            _ => Self::HostUnreachable,
        }
    }
}

impl fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The plaintext JSON message inside every stream event.
///
/// Field names and encodings follow the reference implementation: `data` is
/// standard padded base64, empty fields are omitted, unknown fields are
/// ignored. `version`, `seq` and `reason` are our version-2 extension, which
/// legacy peers ignore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Stream identifier (a UUID string), the same on every message of a stream.
    #[serde(default)]
    pub key: String,
    /// What this message is.
    #[serde(rename = "type")]
    pub kind: MessageType,
    /// Payload bytes.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "ser_base64",
        deserialize_with = "de_base64"
    )]
    pub data: Vec<u8>,
    /// `CONNECT`: `host:port` the exit should dial, as the client gave it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
    /// `CONNECTR`: the entry's public `ip:port` for reverse connect.
    #[serde(
        rename = "entryPublicAddress",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub entry_public_address: String,
    /// v2: protocol version on `CONNECT` and `CONNECTED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// v2: byte offset of this message's data in its direction, from 0;
    /// on `CLOSE`, the offset after the last byte (the close occupies it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// v2: the next offset the sender expects from its peer (cumulative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
    /// v2: bytes past `ack` the sender will accept (receive window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// v2: selective acknowledgement, `[start, end)` byte ranges the sender
    /// holds beyond `ack` (out of order), lowest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sack: Option<Vec<[u64; 2]>>,
    /// v2: why an `ERROR` was sent (see [`ErrorReason`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Message {
    /// A message of `kind` for stream `key` with every other field empty.
    pub fn new(key: impl Into<String>, kind: MessageType) -> Self {
        Self {
            key: key.into(),
            kind,
            data: Vec::new(),
            destination: String::new(),
            entry_public_address: String::new(),
            version: None,
            seq: None,
            ack: None,
            window: None,
            sack: None,
            reason: None,
        }
    }

    /// A v2 `ERROR` for stream `key` with `reason` (the abort of a stream).
    pub fn error(key: impl Into<String>, reason: &ErrorReason) -> Self {
        let mut m = Self::new(key, MessageType::Error);
        m.reason = Some(reason.as_str().to_string());
        m
    }

    /// Serializes to the JSON text that gets encrypted.
    pub fn to_json(&self) -> String {
        // Serializing this struct cannot fail: every field is a plain value.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the decrypted JSON text.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::Json(e.to_string()))
    }
}

fn ser_base64<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&BASE64.encode(data))
}

fn de_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s {
        None => Ok(Vec::new()),
        Some(s) => BASE64
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom),
    }
}
