//! Valid inputs for every target, written to `fuzz/corpus/<target>/` by
//! `cargo run --manifest-path fuzz/Cargo.toml -p nws-fuzz-harness --bin write-seeds`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use nostr::nips::nip19::{Nip19Profile, ToBech32};
use nostr::{Keys, PublicKey, RelayUrl, SecretKey};
use nws_protocol::names::encode_nostr_domain;
use nws_protocol::{Message, MessageType};

use crate::codec::fixed;
use crate::engine::{EngineInput, Op};

/// Inputs that once broke a target (fixed since):
/// `(target, file name, bytes)`, written to `fuzz/regressions/<target>/`.
pub fn fixed_findings() -> Vec<(&'static str, String, Vec<u8>)> {
    let close_after_bogus_ack = EngineInput {
        flags: 0,
        peer_len: 0,
        ops: vec![Op::PeerClose { seq: 0, ack: 1000 }],
    };
    let data_after_bogus_ack = EngineInput {
        flags: 0,
        peer_len: 0,
        ops: vec![Op::PeerData {
            seq: 0,
            len: 5,
            ack: 1000,
            window: 0,
            socks5: false,
        }],
    };
    vec![
        (
            "engine",
            "peer-finished-after-abort".into(),
            close_after_bogus_ack.encode(),
        ),
        (
            "engine",
            "delivered-after-abort".into(),
            data_after_bogus_ack.encode(),
        ),
    ]
}

/// `(target, file name, bytes)` for every seed.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, format!("seed-{name}"), bytes));
    };
    for (name, m) in messages() {
        add("message_json", name, m.to_json().into_bytes());
        let frame = nws_protocol::frame::encode(&m, nws_protocol::frame::Sender::Exit)
            .expect("seed messages encode");
        add("frame", name, frame.clone());
        add("nip44_open", &format!("frame-{name}"), [&[2u8][..], &frame].concat());
        let sealed = fixed().alice.seal(&m).expect("seal");
        add(
            "nip44_open",
            &format!("content-{name}"),
            [&[0u8][..], sealed.as_bytes()].concat(),
        );
        let payload = BASE64.decode(sealed).expect("base64");
        add(
            "nip44_open",
            &format!("payload-{name}"),
            [&[1u8][..], &payload].concat(),
        );
        add(
            "nip44_open",
            &format!("plain-{name}"),
            [&[2u8][..], m.to_json().as_bytes()].concat(),
        );
        add(
            "nip44_open",
            &format!("tamper-{name}"),
            [&[3u8, 77, 1][..], m.to_json().as_bytes()].concat(),
        );
    }
    for (name, host) in hosts() {
        add("names", name, host.into_bytes());
    }
    for (name, bytes) in socks5() {
        add("socks5_request", name, bytes);
    }
    for (name, bytes) in http() {
        add("http_request", name, bytes);
    }
    for (name, input) in engine() {
        add("engine", name, input.encode());
    }
    out
}

fn messages() -> Vec<(&'static str, Message)> {
    let key = "3b1f09a8-2b10-4daa-880c-2a392e781f09";
    let mut connect = Message::new(key, MessageType::Connect);
    connect.destination = "7rqkr7rul8t6vbtekq0b3k274i696g47eo1765t9add20llitt9g.nostr:80".into();
    connect.version = Some(2);
    connect.window = Some(524_288);
    let mut legacy_connect = Message::new(key, MessageType::Connect);
    legacy_connect.destination = connect.destination.clone();
    let mut data = Message::new(key, MessageType::Data);
    data.data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    data.seq = Some(0);
    data.ack = Some(0);
    data.window = Some(524_288);
    let mut socks = Message::new(key, MessageType::Socks5Response);
    socks.data = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    let mut connected = Message::new(key, MessageType::Connected);
    connected.version = Some(2);
    connected.ack = Some(0);
    connected.window = Some(524_288);
    let mut ack = Message::new(key, MessageType::Ack);
    ack.ack = Some(1000);
    ack.window = Some(524_288);
    ack.sack = Some(vec![[2000, 3000], [4000, 4096]]);
    let mut close = Message::new(key, MessageType::Close);
    close.seq = Some(27);
    close.ack = Some(19);
    let mut error = Message::new(key, MessageType::Error);
    error.reason = Some("too-many-streams".into());
    let mut reverse = Message::new(key, MessageType::ConnectReverse);
    reverse.entry_public_address = "127.0.0.1:4444".into();
    let unknown = Message::new(key, MessageType::Unknown("PING".into()));
    vec![
        ("connect", connect),
        ("legacy-connect", legacy_connect),
        ("data", data),
        ("socks5response", socks),
        ("connected", connected),
        ("ack", ack),
        ("close", close),
        ("error", error),
        ("connectr", reverse),
        ("unknown", unknown),
    ]
}

fn hosts() -> Vec<(&'static str, String)> {
    let keys = Keys::new(SecretKey::from_slice(&[0x33; 32]).expect("secret"));
    let pk: PublicKey = keys.public_key();
    let relays = vec![
        RelayUrl::parse("ws://127.0.0.1:7777").expect("url"),
        RelayUrl::parse("wss://relay.example").expect("url"),
    ];
    let domain = encode_nostr_domain(&pk, &relays).expect("encode");
    let npub = pk.to_bech32().expect("npub");
    let nprofile = Nip19Profile::new(pk, relays).to_bech32().expect("nprofile");
    vec![
        ("draft-vector", "etpjkbpf60n30bhg5oo3kdpn6srg.7rqkr7rul8t6vbtekq0b3k274i696g47eo1765t9add20llitt9g.nostr".into()),
        ("domain-two-relays", domain.clone()),
        ("domain-upper-dot", format!("{}.", domain.to_ascii_uppercase())),
        ("domain-key-only", encode_nostr_domain(&pk, &[]).expect("encode")),
        ("npub", npub),
        ("nprofile", nprofile),
        ("bad-label", "zz.nostr".into()),
        ("plain-host", "example.com".into()),
        ("ipv6", "::1".into()),
    ]
}

fn socks5() -> Vec<(&'static str, Vec<u8>)> {
    let domain = |name: &[u8]| {
        let mut v = vec![5, 1, 0, 3, name.len() as u8];
        v.extend_from_slice(name);
        v.extend_from_slice(&80u16.to_be_bytes());
        v
    };
    let nostr = b"7rqkr7rul8t6vbtekq0b3k274i696g47eo1765t9add20llitt9g.nostr";
    let mut auth = vec![1, 5];
    auth.extend_from_slice(b"alice");
    auth.push(6);
    auth.extend_from_slice(b"s3cret");
    let mut ipv6 = vec![5, 1, 0, 4];
    ipv6.extend_from_slice(&[0; 15]);
    ipv6.extend_from_slice(&[1, 0, 80]);
    vec![
        (
            "no-auth-domain",
            [&[0u8, 5, 1, 0][..], &domain(nostr)].concat(),
        ),
        (
            "auth-domain",
            [&[1u8, 5, 2, 0, 2][..], &auth, &domain(nostr)].concat(),
        ),
        (
            "no-auth-ipv4",
            vec![0, 5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90],
        ),
        (
            "no-auth-ipv6-1-byte-reads",
            [&[2u8, 5, 1, 0][..], &ipv6].concat(),
        ),
        ("bind", vec![0, 5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80]),
        (
            "wrong-password",
            [&[1u8, 5, 1, 2, 1, 5][..], b"alice", &[5], b"wrong"].concat(),
        ),
    ]
}

fn http() -> Vec<(&'static str, Vec<u8>)> {
    let with = |flags: u8, reads: u8, text: &str| [&[flags, reads][..], text.as_bytes()].concat();
    let host = "7rqkr7rul8t6vbtekq0b3k274i696g47eo1765t9add20llitt9g.nostr";
    vec![
        ("connect", with(0, 0, &format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n\x16\x03\x01"))),
        (
            "get-absolute",
            with(0, 7, &format!("GET http://{host}/a?b=1#f HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n")),
        ),
        (
            "post-auth",
            with(1, 0, &format!("POST http://{host}/echo HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6cGE6c3M=\r\nContent-Length: 4\r\n\r\nbody")),
        ),
        ("ipv6-connect", with(0, 1, "CONNECT [::1]:8080 HTTP/1.1\r\n\r\n")),
        ("origin-form", with(0, 0, "GET /index.html HTTP/1.1\r\nHost: h\r\n\r\n")),
        ("https-absolute", with(0, 0, "GET https://h/ HTTP/1.1\r\n\r\n")),
    ]
}

fn engine() -> Vec<(&'static str, EngineInput)> {
    use Op::*;
    let data = |seq: u32, len: u16, ack: u32| PeerData {
        seq,
        len,
        ack,
        window: 0,
        socks5: false,
    };
    let entry_transfer = EngineInput {
        flags: 4,
        peer_len: 3000,
        ops: vec![
            PeerConnected {
                ack: 0,
                window: 524_288,
            },
            Write(1200),
            data(0, 1000, 1200),
            data(2000, 1000, 1200),
            data(1000, 1000, 1200),
            PeerClose {
                seq: 3000,
                ack: 1200,
            },
            Finish,
            Tick,
            PeerAck {
                ack: 1201,
                window: 524_288,
                sack: vec![],
            },
            Advance(100),
            Tick,
        ],
    };
    let lossy_entry = EngineInput {
        flags: 4 | (1 << 3),
        peer_len: 5000,
        ops: vec![
            data(0, 500, 0),
            PeerConnected {
                ack: 0,
                window: 4096,
            },
            Write(3000),
            Tick,
            PeerAck {
                ack: 512,
                window: 4096,
                sack: vec![(1024, 2048)],
            },
            Tick,
            data(500, 700, 1536),
            Replay(0),
            PeerAck {
                ack: 3000,
                window: 4096,
                sack: vec![],
            },
            Tick,
            Advance(60_000),
            Tick,
        ],
    };
    let exit_transfer = EngineInput {
        flags: 1 | 4 | 32,
        peer_len: 900,
        ops: vec![
            data(100, 200, 0),
            BackendConnected,
            data(300, 600, 0),
            PeerClose { seq: 900, ack: 0 },
            Write(2000),
            Finish,
            PeerAck {
                ack: 2001,
                window: 0,
                sack: vec![],
            },
            Tick,
            PeerConnect,
            PeerUnknown(false),
            WrongKey,
        ],
    };
    let exit_refused = EngineInput {
        flags: 1,
        peer_len: 0,
        ops: vec![BackendFailed, PeerConnect, Tick],
    };
    let legacy_entry = EngineInput {
        flags: 2,
        peer_len: 0,
        ops: vec![
            Write(100),
            PeerPlainData(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()),
            Finish,
        ],
    };
    let entry_fallback = EngineInput {
        flags: 0,
        peer_len: 0,
        ops: vec![PeerPlainData(b"hello".to_vec()), Write(10), Tick],
    };
    let hostile = EngineInput {
        flags: 1 | (3 << 3),
        peer_len: 0,
        ops: vec![
            BackendConnected,
            PeerRawData {
                seq: u64::MAX - 3,
                data: vec![1, 2, 3, 4, 5],
            },
            PeerRawData {
                seq: 1 << 40,
                data: vec![9; 20],
            },
            PeerAck {
                ack: 5,
                window: 1,
                sack: vec![(0, u32::MAX)],
            },
            LimitSegment(1),
            PathDown(true),
            PeerError(5),
        ],
    };
    let never_acks = EngineInput {
        flags: 4 | (2 << 3),
        peer_len: 0,
        ops: vec![
            PeerConnected {
                ack: 0,
                window: 65_536,
            },
            Write(60_000),
            Tick,
            Tick,
            Tick,
            Advance(30_000),
            Tick,
            Advance(40_000),
            Tick,
        ],
    };
    vec![
        ("entry-transfer", entry_transfer),
        ("entry-lossy", lossy_entry),
        ("exit-transfer", exit_transfer),
        ("exit-refused", exit_refused),
        ("legacy-entry", legacy_entry),
        ("entry-fallback", entry_fallback),
        ("hostile-peer", hostile),
        ("peer-never-acks", never_acks),
    ]
}
