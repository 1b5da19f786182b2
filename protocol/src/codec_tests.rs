//! Tests of messages and their sealing (`message.rs`, `codec.rs`).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use nostr::Keys;

use super::*;
use crate::message::*;

#[test]
fn serializes_like_the_reference() {
    let mut m = Message::new("3b1f09a8-2b10-4daa-880c-2a392e781f09", MessageType::Connect);
    m.data = b"GET / HTTP/1.1\r\n".to_vec();
    m.destination = "x.nostr:80".into();
    assert_eq!(
        m.to_json(),
        r#"{"key":"3b1f09a8-2b10-4daa-880c-2a392e781f09","type":"CONNECT","data":"R0VUIC8gSFRUUC8xLjENCg==","destination":"x.nostr:80"}"#
    );
}

#[test]
fn omits_empty_fields_and_ignores_unknown_ones() {
    let m = Message::new("k", MessageType::Socks5Response);
    assert_eq!(m.to_json(), r#"{"key":"k","type":"SOCKS5RESPONSE"}"#);
    let parsed =
        Message::from_json(br#"{"key":"k","type":"DATA","data":null,"extra":[1,2],"seq":7}"#)
            .unwrap();
    assert_eq!(parsed.kind, MessageType::Data);
    assert!(parsed.data.is_empty());
    assert_eq!(parsed.seq, Some(7));
}

#[test]
fn keeps_unknown_types() {
    let m = Message::from_json(br#"{"key":"k","type":"HELLO"}"#).unwrap();
    assert_eq!(m.kind, MessageType::Unknown("HELLO".into()));
    assert!(!m.kind.is_data());
    assert!(MessageType::Socks5Response.is_data());
}

#[test]
fn rejects_bad_base64_data() {
    assert!(Message::from_json(br#"{"key":"k","type":"DATA","data":"%%%"}"#).is_err());
}

/// The two ends' ciphers between `a` and `b` (the same conversation key).
fn ciphers(a: &Keys, b: &Keys) -> (Cipher, Cipher) {
    let ca = Cipher::derive(a.secret_key(), &b.public_key()).unwrap();
    let cb = Cipher::derive(b.secret_key(), &a.public_key()).unwrap();
    (ca, cb)
}

#[test]
fn seals_and_opens_between_two_keys() {
    let a = Keys::generate();
    let b = Keys::generate();
    let (ca, cb) = ciphers(&a, &b);
    let mut m = Message::new("k", MessageType::Data);
    m.data = (0..=255u8).collect();
    m.seq = Some(3);
    let content = ca.seal(&m).unwrap();
    assert_eq!(cb.open(&content).unwrap(), m);
    // The content is interoperable with rust-nostr's plain NIP-44 API.
    let plain = nostr::nips::nip44::decrypt(b.secret_key(), &a.public_key(), &content).unwrap();
    assert_eq!(plain, m.to_json());
}

#[test]
fn wrong_key_cannot_open() {
    let a = Keys::generate();
    let b = Keys::generate();
    let c = Keys::generate();
    let ca = Cipher::derive(a.secret_key(), &b.public_key()).unwrap();
    let cc = Cipher::derive(c.secret_key(), &a.public_key()).unwrap();
    let content = ca.seal(&Message::new("k", MessageType::Close)).unwrap();
    assert!(matches!(cc.open(&content), Err(CodecError::Decrypt(_))));
    assert!(matches!(
        cc.open("not base64!"),
        Err(CodecError::Decrypt(_))
    ));
}

#[test]
fn a_payload_with_another_version_byte_does_not_open() {
    // Found by the nip44_open fuzz target: the MAC covers nonce and ciphertext only,
    // so the version byte must be checked on its own.
    let a = Keys::generate();
    let b = Keys::generate();
    let (ca, cb) = ciphers(&a, &b);
    let content = ca.seal(&Message::new("k", MessageType::Close)).unwrap();
    let mut payload = BASE64.decode(content.as_bytes()).unwrap();
    for version in [0u8, 1, 3, b'#'] {
        payload[0] = version;
        let err = cb.open(&BASE64.encode(&payload)).unwrap_err();
        assert!(
            err.to_string().contains("unsupported NIP-44 version"),
            "{err}"
        );
    }
    assert!(matches!(cb.open(""), Err(CodecError::Decrypt(_))));
}

#[test]
fn full_data_event_fits_nip44() {
    let a = Keys::generate();
    let c = Cipher::derive(a.secret_key(), &Keys::generate().public_key()).unwrap();
    let mut m = Message::new(uuid::Uuid::new_v4().to_string(), MessageType::Data);
    m.data = vec![0xAB; DEFAULT_MAX_DATA_PER_EVENT];
    m.seq = Some(u64::MAX);
    let content = c.seal(&m).unwrap();
    assert!(
        content.len() < 60 * 1024,
        "content is {} bytes",
        content.len()
    );
    let ev = build_stream_event(&a, &Keys::generate().public_key(), content).unwrap();
    assert_eq!(ev.kind, stream_kind());
    assert!(recipient(&ev).is_some());
}

#[test]
fn content_for_data_bounds_real_events_and_max_data_fits() {
    let a = Keys::generate();
    let b = Keys::generate();
    let cipher = Cipher::derive(a.secret_key(), &b.public_key()).unwrap();
    let big = 1u64 << 40;
    for data in [
        0usize, 1, 100, 540, 1_000, 1_700, 4_000, 12_345, 24_000, 30_000,
    ] {
        let mut m = Message::new("3b1f09a8-2b10-4daa-880c-2a392e781f09", MessageType::Data);
        m.data = vec![0xAB; data];
        m.seq = Some(big);
        m.ack = Some(big);
        m.window = Some(big);
        m.sack = Some(vec![[big, big + 1]; 16]);
        let content = cipher.seal(&m).unwrap();
        assert!(
            content.len() <= content_for_data(data),
            "{data} bytes: content {} > {}",
            content.len(),
            content_for_data(data)
        );
    }
    for limit in [2_000usize, 4_096, 8_000, 55_400] {
        let d = max_data_for_content(limit);
        assert!(content_for_data(d) <= limit);
        assert!(content_for_data(d + 1) > limit || d + 1 > DEFAULT_MAX_DATA_PER_EVENT * 2);
    }
    // A full default event fits the largest size streams use.
    assert!(max_data_for_content(56_000 - 600) >= DEFAULT_MAX_DATA_PER_EVENT);
}

/// An event from `from` to `to` carrying `msg` in `framing`, with its
/// `created_at` changed after signing (id and signature no longer verify).
fn tampered(from: &Keys, to: &Keys, msg: &Message, framing: Framing) -> nostr::Event {
    let c = Cipher::derive(from.secret_key(), &to.public_key()).unwrap();
    let mut ev =
        build_stream_event(from, &to.public_key(), c.seal_as(msg, framing).unwrap()).unwrap();
    ev.created_at = nostr::Timestamp::from_secs(ev.created_at.as_secs() + 1);
    assert!(ev.verify().is_err());
    ev
}

#[test]
fn a_frame_from_the_peer_is_proven_by_its_mac_alone() {
    let (entry, exit) = (Keys::generate(), Keys::generate());
    let at_exit = Cipher::derive(exit.secret_key(), &entry.public_key()).unwrap();
    let mut data = Message::new("k", MessageType::Data);
    data.data = b"bytes".to_vec();
    data.seq = Some(0);
    // Sealed by the entry in a frame: accepted without the signature.
    let ev = tampered(&entry, &exit, &data, Framing::Binary(Sender::Entry));
    assert_eq!(
        open_stream_event(&at_exit, &ev, Sender::Entry).unwrap(),
        data
    );
    // The exit's own frame reflected back (the sender bit says exit): refused.
    let ev = tampered(&entry, &exit, &data, Framing::Binary(Sender::Exit));
    assert!(matches!(
        open_stream_event(&at_exit, &ev, Sender::Entry),
        Err(CodecError::Unverified(_))
    ));
    // JSON says nothing of its sender: the signature must verify.
    let ev = tampered(&entry, &exit, &data, Framing::Json);
    assert!(matches!(
        open_stream_event(&at_exit, &ev, Sender::Entry),
        Err(CodecError::Unverified(_))
    ));
    let c = Cipher::derive(entry.secret_key(), &exit.public_key()).unwrap();
    let good = build_stream_event(&entry, &exit.public_key(), c.seal(&data).unwrap()).unwrap();
    assert_eq!(
        open_stream_event(&at_exit, &good, Sender::Entry).unwrap(),
        data
    );
    // A CONNECT always needs its signature, even in a frame.
    let connect = Message::new("k", MessageType::Connect);
    let ev = tampered(&entry, &exit, &connect, Framing::Binary(Sender::Entry));
    assert!(matches!(
        open_stream_event(&at_exit, &ev, Sender::Entry),
        Err(CodecError::Unverified(_))
    ));
    // Another key's frame does not open at all.
    let stranger = Keys::generate();
    let mut ev = tampered(&stranger, &exit, &data, Framing::Binary(Sender::Entry));
    ev.pubkey = entry.public_key();
    assert!(matches!(
        open_stream_event(&at_exit, &ev, Sender::Entry),
        Err(CodecError::Decrypt(_))
    ));
}

#[test]
fn a_full_frame_fits_the_padding_step_of_a_full_json_event() {
    use crate::frame::Sender;
    let c = Cipher::derive(
        Keys::generate().secret_key(),
        &Keys::generate().public_key(),
    )
    .unwrap();
    let mut m = Message::new("3b1f09a8-2b10-4daa-880c-2a392e781f09", MessageType::Data);
    m.seq = Some(u64::MAX);
    m.ack = Some(u64::MAX);
    m.window = Some(u64::MAX);
    m.sack = Some(vec![[u64::MAX, u64::MAX]; 16]);
    m.data = vec![1; MAX_FRAME_DATA_PER_EVENT];
    let framed = c.seal_as(&m, Framing::Binary(Sender::Exit)).unwrap();
    assert_eq!(
        framed.len(),
        content_for_frame_data(MAX_FRAME_DATA_PER_EVENT)
    );
    m.data = vec![1; DEFAULT_MAX_DATA_PER_EVENT];
    let json = c.seal(&m).unwrap();
    assert_eq!(framed.len(), json.len());
    assert_eq!(framed.len(), 54_704);
    assert_eq!(
        max_data_for_content_in(56_000 - 600, Framing::Binary(Sender::Entry)),
        MAX_FRAME_DATA_PER_EVENT
    );
    // A small cap: the frame carries more than JSON does in the same content.
    assert!(
        max_data_for_content_in(4_000 - 600, Framing::Binary(Sender::Entry))
            > max_data_for_content(4_000 - 600) * 13 / 10
    );
}

#[test]
fn stream_events_have_the_ids_nostr_computes_and_verify() {
    let (a, b) = (Keys::generate(), Keys::generate());
    let c = Cipher::derive(a.secret_key(), &b.public_key()).unwrap();
    let mut m = Message::new("k", MessageType::Data);
    for n in [0usize, 1, 100, 40_000] {
        m.data = vec![7; n];
        let content = c.seal_as(&m, Framing::Binary(Sender::Entry)).unwrap();
        let ev = build_stream_event(&a, &b.public_key(), content).unwrap();
        let nostr_id =
            nostr::EventId::new(&ev.pubkey, &ev.created_at, &ev.kind, &ev.tags, &ev.content);
        assert_eq!(ev.id, nostr_id);
        ev.verify().unwrap();
    }
    // Content with characters JSON escapes hashes the same way too.
    let ev = build_stream_event(&a, &b.public_key(), "q\"\\\n\u{1}é".into()).unwrap();
    ev.verify().unwrap();
}
