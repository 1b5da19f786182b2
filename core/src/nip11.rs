//! Relay limits from the relay information document (NIP-11).
//!
//! A relay may publish, at its websocket URL fetched over HTTP with
//! `Accept: application/nostr+json`, a `limitation` object whose
//! `max_message_length` (bytes of one websocket message) and
//! `max_content_length` (characters of an event's `content`) bound the
//! events it takes. Streams keep their events under the smallest limit any
//! of their relays publishes, so a relay that drops large events silently
//! (nostr-rs-relay does) costs no lost events at all. Relays that publish
//! nothing are learned from rejections instead (`transport`).
//!
//! The document is fetched once per relay with a plain HTTP/1.0 `GET`
//! (TLS for `wss://`, checked against the Mozilla root store), parsed with
//! `httparse` and rust-nostr's NIP-11 types; the response is capped at
//! [`MAX_DOCUMENT_BYTES`].

use std::time::Duration;

use nostr::nips::nip11::RelayInformationDocument;
use nostr::RelayUrl;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest relay information document read, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// Bytes an event takes beyond its `content` in an `["EVENT", {...}]`
/// message: id, pubkey, signature, one `p` tag, kind, timestamp and JSON
/// punctuation, with room to spare.
pub const EVENT_OVERHEAD_BYTES: usize = 600;

/// The limits a relay publishes that bound one event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayLimits {
    /// `limitation.max_message_length`: bytes of one websocket message.
    pub max_message_length: Option<usize>,
    /// `limitation.max_content_length`: characters of an event's `content`.
    pub max_content_length: Option<usize>,
}

impl RelayLimits {
    /// Largest event `content` (bytes; ours is ASCII base64) the limits
    /// allow, or `None` when the relay publishes neither limit.
    pub fn content_limit(&self) -> Option<usize> {
        let by_message = self
            .max_message_length
            .map(|m| m.saturating_sub(EVENT_OVERHEAD_BYTES));
        match (by_message, self.max_content_length) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The limits of a parsed document (non-positive values are ignored).
    pub fn from_document(doc: &RelayInformationDocument) -> Self {
        let positive = |v: Option<i32>| v.and_then(|v| usize::try_from(v).ok()).filter(|&v| v > 0);
        match &doc.limitation {
            Some(l) => Self {
                max_message_length: positive(l.max_message_length),
                max_content_length: positive(l.max_content_length),
            },
            None => Self::default(),
        }
    }
}

/// Why a relay's limits could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Nip11Error {
    /// Connecting, TLS or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The relay did not answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer was not `200` with a JSON document.
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

/// Fetches `relay`'s information document and returns its limits, within
/// `timeout`.
///
/// # Errors
///
/// [`Nip11Error`] when the relay cannot be reached, answers with another
/// status than 200, or sends something that is not a NIP-11 document.
pub async fn fetch_limits(relay: &RelayUrl, timeout: Duration) -> Result<RelayLimits, Nip11Error> {
    match tokio::time::timeout(timeout, fetch(relay)).await {
        Ok(r) => r,
        Err(_) => Err(Nip11Error::Timeout(timeout)),
    }
}

async fn fetch(relay: &RelayUrl) -> Result<RelayLimits, Nip11Error> {
    let url: &nostr::Url = relay.into();
    let host = url
        .host_str()
        .ok_or_else(|| Nip11Error::BadAnswer("relay URL without host".into()))?
        .to_string();
    let tls = url.scheme() == "wss";
    let port = url.port().unwrap_or(if tls { 443 } else { 80 });
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let host_header = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host_header}\r\nAccept: application/nostr+json\r\nUser-Agent: nws\r\n\r\n"
    );
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare, port)).await?;
    let raw = if tls {
        let config = crate::relay_tls::client_config();
        let name = rustls::pki_types::ServerName::try_from(bare.to_string())
            .map_err(|e| Nip11Error::BadAnswer(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        exchange(stream, &request).await?
    } else {
        exchange(tcp, &request).await?
    };
    parse_response(&raw)
}

/// Sends `request` and reads the answer to its end (HTTP/1.0: the server
/// closes), at most [`MAX_DOCUMENT_BYTES`] of it.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> Result<Vec<u8>, Nip11Error> {
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    let mut limited = (&mut stream).take(MAX_DOCUMENT_BYTES as u64 + 1);
    limited.read_to_end(&mut raw).await?;
    if raw.len() > MAX_DOCUMENT_BYTES {
        return Err(Nip11Error::BadAnswer(format!(
            "document larger than {MAX_DOCUMENT_BYTES} bytes"
        )));
    }
    Ok(raw)
}

/// Parses an HTTP response holding a NIP-11 document.
fn parse_response(raw: &[u8]) -> Result<RelayLimits, Nip11Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(Nip11Error::BadAnswer("truncated response".into()))
        }
        Err(e) => return Err(Nip11Error::BadAnswer(e.to_string())),
    };
    if resp.code != Some(200) {
        return Err(Nip11Error::BadAnswer(format!(
            "status {}",
            resp.code.unwrap_or(0)
        )));
    }
    let doc: RelayInformationDocument = serde_json::from_slice(&raw[body_at..])
        .map_err(|e| Nip11Error::BadAnswer(format!("not a NIP-11 document: {e}")))?;
    Ok(RelayLimits::from_document(&doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_limitation_object() {
        let raw = b"HTTP/1.0 200 OK\r\nContent-Type: application/nostr+json\r\n\r\n\
            {\"name\":\"r\",\"limitation\":{\"max_message_length\":16384,\"max_content_length\":8000}}";
        let l = parse_response(raw).unwrap();
        assert_eq!(l.max_message_length, Some(16384));
        assert_eq!(l.max_content_length, Some(8000));
        assert_eq!(l.content_limit(), Some(8000));
        let l = RelayLimits {
            max_message_length: Some(16384),
            max_content_length: None,
        };
        assert_eq!(l.content_limit(), Some(16384 - EVENT_OVERHEAD_BYTES));
    }

    #[test]
    fn documents_without_limits_or_with_nonsense_give_none() {
        let raw = b"HTTP/1.1 200 OK\r\n\r\n{\"name\":\"r\"}";
        assert_eq!(parse_response(raw).unwrap().content_limit(), None);
        let raw = b"HTTP/1.1 200 OK\r\n\r\n{\"limitation\":{\"max_message_length\":-5}}";
        assert_eq!(parse_response(raw).unwrap().content_limit(), None);
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n<html>").is_err());
        assert!(parse_response(b"garbage").is_err());
    }
}
