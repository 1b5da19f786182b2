//! Self-tests of [`FaultyRelay`], the fault-injecting middlebox, in front of the
//! core crate's embedded relay, with nostr-sdk clients.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nostr_sdk::prelude::*;
use nws_relay::EmbeddedRelay;
use nws_tests::faulty::{FaultConfig, FaultyRelay, TestCa};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for anything that should happen "promptly" on loopback.
const PROMPT: Duration = Duration::from_secs(5);
/// How long to keep listening to be sure that nothing more arrives.
const QUIET: Duration = Duration::from_millis(300);

async fn upstream() -> EmbeddedRelay {
    EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("embedded relay")
}

/// A nostr-sdk client connected to `url` only.
async fn connected_client(keys: &Keys, url: &str) -> Client {
    let client = Client::new(keys.clone());
    client.add_relay(url).await.unwrap();
    client.connect().await;
    client.wait_for_connection(PROMPT).await;
    assert!(
        client.relay(url).await.unwrap().is_connected(),
        "client did not connect to {url}"
    );
    client
}

/// Subscribes to text notes by `author` and waits for EOSE, so that events published
/// afterwards are delivered live.
async fn subscribe(
    client: &Client,
    author: PublicKey,
) -> broadcast::Receiver<RelayPoolNotification> {
    subscribe_to(client, Filter::new().kind(Kind::TextNote).author(author)).await
}

/// Subscribes to `filter` and waits for EOSE.
async fn subscribe_to(
    client: &Client,
    filter: Filter,
) -> broadcast::Receiver<RelayPoolNotification> {
    let mut notifications = client.notifications();
    let sub = client.subscribe(filter, None).await.unwrap().val;
    let deadline = Instant::now() + PROMPT;
    loop {
        let notification = tokio::time::timeout_at(deadline, notifications.recv())
            .await
            .expect("no EOSE")
            .unwrap();
        if let RelayPoolNotification::Message {
            message: RelayMessage::EndOfStoredEvents(id),
            ..
        } = notification
        {
            if *id == sub {
                return notifications;
            }
        }
    }
}

/// Collects events from `notifications` until `want` distinct ones have arrived, then
/// keeps listening for [`QUIET`] to catch extra ones. Gives up after [`PROMPT`].
async fn collect(
    notifications: &mut broadcast::Receiver<RelayPoolNotification>,
    want: usize,
) -> Vec<Event> {
    let mut seen = HashSet::new();
    let mut events = Vec::new();
    let mut deadline = Instant::now() + PROMPT;
    let mut quiet = false;
    loop {
        if !quiet && events.len() >= want {
            quiet = true;
            deadline = Instant::now() + QUIET;
        }
        let Ok(notification) = tokio::time::timeout_at(deadline, notifications.recv()).await else {
            return events;
        };
        if let RelayPoolNotification::Event { event, .. } = notification.unwrap() {
            if seen.insert(event.id) {
                events.push(*event);
            }
        }
    }
}

/// Polls `cond` every 10 ms for at most `limit`.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_faults_every_event_arrives() {
    let relay = upstream().await;
    let faulty = FaultyRelay::start(relay.url().as_str(), FaultConfig::default()).await;
    assert_eq!(faulty.url(), format!("ws://127.0.0.1:{}", faulty.port()));

    let keys = Keys::generate();
    let publisher = connected_client(&keys, &faulty.url()).await;
    let subscriber = connected_client(&Keys::generate(), &faulty.url()).await;
    let mut notifications = subscribe(&subscriber, keys.public_key()).await;

    let mut sent = HashSet::new();
    for i in 0..50 {
        let output = publisher
            .send_event_builder(EventBuilder::text_note(format!("note {i}")))
            .await
            .unwrap();
        assert!(output.failed.is_empty(), "{:?}", output.failed);
        sent.insert(output.val);
    }
    let received: HashSet<EventId> = collect(&mut notifications, 50)
        .await
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(received, sent);

    let stats = faulty.stats();
    assert_eq!(stats.connections, 2);
    assert_eq!(
        (stats.publish_seen, stats.publish_forwarded),
        (50, 50),
        "{stats:?}"
    );
    assert_eq!(
        (stats.deliver_seen, stats.deliver_forwarded),
        (50, 50),
        "{stats:?}"
    );
    assert_eq!(
        stats.publish_dropped
            + stats.publish_rejected
            + stats.deliver_dropped
            + stats.deliver_rejected,
        0
    );
}

/// Publishes `note 0..50` through a middlebox dropping half of the publishes and
/// returns the indices of the notes that arrived.
async fn half_dropped_run(relay: &EmbeddedRelay, seed: u64) -> BTreeSet<usize> {
    let config = FaultConfig {
        drop_publish: 0.5,
        seed,
        ..FaultConfig::default()
    };
    let faulty = FaultyRelay::start(relay.url().as_str(), config).await;
    let keys = Keys::generate();
    let publisher = connected_client(&keys, &faulty.url()).await;
    let subscriber = connected_client(&Keys::generate(), &faulty.url()).await;
    let mut notifications = subscribe(&subscriber, keys.public_key()).await;

    // Dropped events never get an OK, so publish without waiting for one.
    let handle = publisher.relay(faulty.url()).await.unwrap();
    for i in 0..50 {
        let event = publisher
            .sign_event_builder(EventBuilder::text_note(format!("note {i}")))
            .await
            .unwrap();
        handle.send_msg(ClientMessage::event(event)).unwrap();
    }
    assert!(
        wait_until(PROMPT, || faulty.stats().publish_seen == 50).await,
        "{:?}",
        faulty.stats()
    );
    let stats = faulty.stats();
    let forwarded = stats.publish_forwarded;
    assert_eq!(stats.publish_seen, forwarded + stats.publish_dropped);
    assert_eq!(stats.publish_rejected, 0);
    assert!(
        (10..=40).contains(&forwarded),
        "about half should pass: {stats:?}"
    );

    let received = collect(&mut notifications, forwarded as usize).await;
    let stats = faulty.stats();
    assert_eq!(received.len() as u64, forwarded, "{stats:?}");
    assert_eq!(stats.deliver_seen, forwarded, "{stats:?}");
    assert_eq!(stats.deliver_forwarded, forwarded, "{stats:?}");
    assert_eq!(stats.deliver_dropped + stats.deliver_rejected, 0);

    received
        .iter()
        .map(|e| e.content.strip_prefix("note ").unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_publish_drops_about_half_repeatably() {
    let relay = upstream().await;
    let first = half_dropped_run(&relay, 42).await;
    let second = half_dropped_run(&relay, 42).await;
    assert_eq!(first, second, "same seed, same drops");
    let other = half_dropped_run(&relay, 43).await;
    assert_ne!(first, other, "another seed, other drops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_events_are_rejected() {
    let relay = upstream().await;
    let config = FaultConfig {
        max_event_bytes: Some(1000),
        ..FaultConfig::default()
    };
    let faulty = FaultyRelay::start(relay.url().as_str(), config).await;
    let keys = Keys::generate();
    let publisher = connected_client(&keys, &faulty.url()).await;
    let subscriber = connected_client(&Keys::generate(), &faulty.url()).await;
    let mut notifications = subscribe(&subscriber, keys.public_key()).await;

    let big = publisher
        .sign_event_builder(EventBuilder::text_note("x".repeat(2000)))
        .await
        .unwrap();
    let size = big.as_json().len();
    let output = publisher.send_event(&big).await.unwrap();
    assert!(output.success.is_empty());
    let reason: Vec<&String> = output.failed.values().collect();
    assert_eq!(
        reason,
        [&format!("invalid: event too large ({size} > 1000 bytes)")]
    );

    let small = publisher
        .send_event_builder(EventBuilder::text_note("small"))
        .await
        .unwrap();
    assert!(small.failed.is_empty(), "{:?}", small.failed);

    // Published straight to the relay, the big event is withheld on delivery instead.
    let direct = connected_client(&keys, relay.url().as_str()).await;
    let big_direct = direct
        .send_event_builder(EventBuilder::text_note("y".repeat(2000)))
        .await
        .unwrap();
    assert!(big_direct.failed.is_empty(), "{:?}", big_direct.failed);

    let received: Vec<EventId> = collect(&mut notifications, 1)
        .await
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(received, [small.val]);
    assert!(
        wait_until(PROMPT, || faulty.stats().deliver_seen == 2).await,
        "{:?}",
        faulty.stats()
    );
    let stats = faulty.stats();
    assert_eq!(
        (
            stats.publish_seen,
            stats.publish_forwarded,
            stats.publish_rejected
        ),
        (2, 1, 1),
        "{stats:?}"
    );
    assert_eq!(
        (stats.deliver_forwarded, stats.deliver_rejected),
        (1, 1),
        "{stats:?}"
    );
}

/// Opens a websocket to `url`, sends a REQ and waits for its EOSE.
async fn probe(url: &str) -> Result<(), String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| e.to_string())?;
    ws.send(Message::text(r#"["REQ","probe",{"limit":0}]"#))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + PROMPT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(text))))
                if text.as_str().starts_with(r#"["EOSE","probe""#) =>
            {
                return Ok(());
            }
            Ok(Some(Ok(_))) => continue,
            other => return Err(format!("no EOSE: {other:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_disconnects_and_resume_reconnects() {
    let relay = upstream().await;
    let faulty = FaultyRelay::start(relay.url().as_str(), FaultConfig::default()).await;
    let url = faulty.url();

    // A client that retries every second (nostr-sdk's default is ~10 s).
    let client = Client::new(Keys::generate());
    let opts = RelayOptions::new()
        .retry_interval(Duration::from_secs(1))
        .adjust_retry_interval(false);
    client.pool().add_relay(url.as_str(), opts).await.unwrap();
    client.connect().await;
    client.wait_for_connection(PROMPT).await;
    let handle = client.relay(url.as_str()).await.unwrap();
    assert!(handle.is_connected());
    probe(&url).await.unwrap();

    faulty.stop().await;
    assert!(
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .is_err(),
        "connect must fail while stopped"
    );
    assert!(
        wait_until(PROMPT, || !handle.is_connected()).await,
        "client still connected after stop: {:?}",
        handle.status()
    );

    faulty.resume().await;
    faulty.resume().await; // idempotent
    probe(&url).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || handle.is_connected()).await,
        "client did not reconnect: {:?}",
        handle.status()
    );
    let output = client
        .send_event_builder(EventBuilder::text_note("after resume"))
        .await
        .unwrap();
    assert!(output.failed.is_empty(), "{:?}", output.failed);
    let stats = faulty.stats();
    assert_eq!(stats.publish_forwarded, 1, "{stats:?}");
    assert!(stats.connections >= 4, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_config_starts_dropping_deliveries() {
    let relay = upstream().await;
    let faulty = FaultyRelay::start(relay.url().as_str(), FaultConfig::default()).await;
    let keys = Keys::generate();
    let publisher = connected_client(&keys, &faulty.url()).await;
    let subscriber = connected_client(&Keys::generate(), &faulty.url()).await;
    let mut notifications = subscribe(&subscriber, keys.public_key()).await;

    for i in 0..5 {
        let output = publisher
            .send_event_builder(EventBuilder::text_note(format!("before {i}")))
            .await
            .unwrap();
        assert!(output.failed.is_empty(), "{:?}", output.failed);
    }
    assert_eq!(collect(&mut notifications, 5).await.len(), 5);

    let config = FaultConfig {
        drop_deliver: 1.0,
        ..FaultConfig::default()
    };
    faulty.set_config(config);
    assert_eq!(faulty.config(), config);
    for i in 0..5 {
        // Publishes still get their OK: only deliveries are dropped.
        let output = publisher
            .send_event_builder(EventBuilder::text_note(format!("after {i}")))
            .await
            .unwrap();
        assert!(output.failed.is_empty(), "{:?}", output.failed);
    }
    assert!(
        wait_until(PROMPT, || faulty.stats().deliver_seen == 10).await,
        "{:?}",
        faulty.stats()
    );
    assert!(collect(&mut notifications, 0).await.is_empty());
    let stats = faulty.stats();
    assert_eq!(stats.publish_forwarded, 10, "{stats:?}");
    assert_eq!(
        (stats.deliver_forwarded, stats.deliver_dropped),
        (5, 5),
        "{stats:?}"
    );
}

// ---------------------------------------------------------------------------
// Modes of relays as deployed
// ---------------------------------------------------------------------------

/// A raw websocket client, for frames nostr-sdk would hide or could not parse.
type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(url: &str) -> Raw {
    tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
        .0
}

/// The next text frame within `limit`, or `None`.
async fn try_text<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    limit: Duration,
) -> Option<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Some(text.as_str().to_owned()),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// The next text frame; panics after [`PROMPT`].
async fn text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    try_text(ws, PROMPT).await.expect("no text frame")
}

async fn send_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
}

fn event_msg(event: &Event) -> String {
    ClientMessage::event(event.clone()).as_json()
}

fn note(keys: &Keys, content: &str) -> Event {
    EventBuilder::text_note(content)
        .sign_with_keys(keys)
        .unwrap()
}

fn ephemeral(keys: &Keys, content: &str) -> Event {
    EventBuilder::new(Kind::Custom(20_001), content)
        .sign_with_keys(keys)
        .unwrap()
}

/// `["OK","<id>",true,...`: the upstream accepted `event`.
fn accepted(frame: &str, event: &Event) -> bool {
    frame.starts_with(&format!(r#"["OK","{}",true"#, event.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_cap_rejects_opaquely_with_an_empty_id() {
    let relay = upstream().await;
    let config = FaultConfig {
        content_cap: Some(100),
        ..FaultConfig::default()
    };
    let faulty = FaultyRelay::start(relay.url().as_str(), config).await;
    let keys = Keys::generate();
    let mut ws = raw(&faulty.url()).await;

    // 101 characters: refused, with an empty id and no hint of size.
    let long = note(&keys, &"x".repeat(101));
    send_text(&mut ws, event_msg(&long)).await;
    let frame = text(&mut ws).await;
    assert_eq!(frame, r#"["OK","",false,"invalid: rejected"]"#);
    let reason = frame.to_ascii_lowercase();
    assert!(!reason.chars().any(|c| c.is_ascii_digit()));
    for word in ["size", "large", "long", "length", "byte", "limit", "max"] {
        assert!(!reason.contains(word), "{frame}");
    }

    // 100 characters (200 bytes): characters are counted, not bytes.
    let fits = note(&keys, &"é".repeat(100));
    send_text(&mut ws, event_msg(&fits)).await;
    let frame = text(&mut ws).await;
    assert!(accepted(&frame, &fits), "{frame}");

    // nostr-sdk cannot match an empty id to its event: it times out instead.
    let stats = faulty.stats();
    assert_eq!(
        (
            stats.publish_seen,
            stats.publish_forwarded,
            stats.publish_rejected,
            stats.rejected_opaque
        ),
        (2, 1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.throttle_sleeps, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_sleep_doubles_after_each_rejection() {
    let defaults = FaultConfig::default();
    let secs: Vec<u64> = (1..=8)
        .map(|n| defaults.throttle_delay(n).as_secs())
        .collect();
    assert_eq!(secs, [2, 4, 8, 16, 32, 64, 64, 64]);

    let relay = upstream().await;
    let base = Duration::from_millis(100);
    let config = FaultConfig {
        content_cap: Some(10),
        max_event_bytes: Some(2000),
        throttle_after_reject: true,
        throttle_base: base,
        ..FaultConfig::default()
    };
    let faulty = FaultyRelay::start(relay.url().as_str(), config).await;
    let keys = Keys::generate();
    let mut ws = raw(&faulty.url()).await;

    // Refusals by content_cap and max_event_bytes both count; all four are sent at
    // once, so each answer waits for the sleeps after the refusals before it.
    let capped = note(&keys, "eleven char");
    let huge = note(&keys, &"y".repeat(3000));
    let capped2 = note(&keys, "eleven chars");
    let small = note(&keys, "small");
    let start = Instant::now();
    for event in [&capped, &huge, &capped2, &small] {
        send_text(&mut ws, event_msg(event)).await;
    }
    let mut arrivals = Vec::new();
    for _ in 0..4 {
        let frame = tokio::time::timeout(Duration::from_secs(10), text(&mut ws))
            .await
            .expect("answer");
        arrivals.push((frame, start.elapsed()));
    }
    assert_eq!(arrivals[0].0, r#"["OK","",false,"invalid: rejected"]"#);
    assert!(
        arrivals[1].0.contains("invalid: event too large"),
        "{arrivals:?}"
    );
    assert_eq!(arrivals[2].0, r#"["OK","",false,"invalid: rejected"]"#);
    assert!(accepted(&arrivals[3].0, &small), "{arrivals:?}");
    // Sleeps of 100, 200 and 400 ms: lower bounds only.
    assert!(arrivals[1].1 >= base, "{arrivals:?}");
    assert!(arrivals[2].1 >= base * 3, "{arrivals:?}");
    assert!(arrivals[3].1 >= base * 7, "{arrivals:?}");
    let stats = faulty.stats();
    assert_eq!(stats.throttle_sleeps, 3, "{stats:?}");
    assert_eq!(
        (
            stats.publish_rejected,
            stats.rejected_opaque,
            stats.publish_forwarded
        ),
        (3, 2, 1),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_events_get_no_ok() {
    let relay = upstream().await;
    let config = FaultConfig {
        no_ok_for_ephemeral: true,
        ..FaultConfig::default()
    };
    let faulty = FaultyRelay::start(relay.url().as_str(), config).await;
    let keys = Keys::generate();
    let subscriber = connected_client(&Keys::generate(), &faulty.url()).await;
    let filter = Filter::new()
        .kind(Kind::Custom(20_001))
        .author(keys.public_key());
    let mut notifications = subscribe_to(&subscriber, filter).await;

    let mut ws = raw(&faulty.url()).await;
    let eph = ephemeral(&keys, "fleeting");
    let stored = note(&keys, "kept");
    send_text(&mut ws, event_msg(&eph)).await;
    send_text(&mut ws, event_msg(&stored)).await;
    // The only answer is the text note's; the ephemeral one's OK was withheld.
    let frame = text(&mut ws).await;
    assert!(accepted(&frame, &stored), "{frame}");
    assert_eq!(try_text(&mut ws, QUIET).await, None);

    // But the ephemeral event was forwarded and delivered.
    let received: Vec<EventId> = collect(&mut notifications, 1)
        .await
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(received, [eph.id]);
    let stats = faulty.stats();
    assert_eq!(stats.ok_swallowed, 1, "{stats:?}");
    assert_eq!(stats.publish_forwarded, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_ephemeral_events_reach_later_subscriptions() {
    let relay = upstream().await;
    let keep = Duration::from_secs(3);
    let config = FaultConfig {
        store_ephemeral: Some(keep),
        ..FaultConfig::default()
    };
    let faulty = FaultyRelay::start(relay.url().as_str(), config).await;
    let alice = Keys::generate();
    let bob = Keys::generate();
    let target = Keys::generate().public_key();

    let publisher = connected_client(&alice, &faulty.url()).await;
    let to_target = EventBuilder::new(Kind::Custom(20_001), "for target")
        .tag(Tag::public_key(target))
        .sign_with_keys(&alice)
        .unwrap();
    let to_nobody = ephemeral(&alice, "for nobody");
    for event in [&to_target, &to_nobody] {
        let output = publisher.send_event(event).await.unwrap();
        assert!(output.failed.is_empty(), "{:?}", output.failed);
    }
    let other = connected_client(&bob, &faulty.url()).await;
    let output = other
        .send_event(&ephemeral(&bob, "from bob"))
        .await
        .unwrap();
    assert!(output.failed.is_empty(), "{:?}", output.failed);

    // Older than 60 s: refused.
    let old = EventBuilder::new(Kind::Custom(20_001), "stale")
        .custom_created_at(Timestamp::now() - 120)
        .sign_with_keys(&alice)
        .unwrap();
    let output = publisher.send_event(&old).await.unwrap();
    let reasons: Vec<&String> = output.failed.values().collect();
    assert_eq!(reasons, [&"invalid: event too old".to_string()]);

    // A later subscription (new connection) gets the kept event that matches.
    let filter = Filter::new()
        .kind(Kind::Custom(20_001))
        .author(alice.public_key())
        .pubkey(target)
        .since(Timestamp::now() - 30);
    let subscriber = connected_client(&Keys::generate(), &faulty.url()).await;
    let mut notifications = subscriber.notifications();
    subscriber.subscribe(filter.clone(), None).await.unwrap();
    let received: Vec<EventId> = collect(&mut notifications, 1)
        .await
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(received, [to_target.id]);
    assert_eq!(faulty.stats().stored_replayed, 1);

    // Without the author and tag, all three kept events match; `until` in the past none.
    let mut ws = raw(&faulty.url()).await;
    let wide = Filter::new().kind(Kind::Custom(20_001));
    let past = wide.clone().until(Timestamp::now() - 30);
    send_text(
        &mut ws,
        ClientMessage::req(SubscriptionId::new("wide"), vec![wide.clone()]).as_json(),
    )
    .await;
    send_text(
        &mut ws,
        ClientMessage::req(SubscriptionId::new("past"), vec![past]).as_json(),
    )
    .await;
    let mut wide_events = HashSet::new();
    for _ in 0..100 {
        let Some(frame) = try_text(&mut ws, QUIET).await else {
            break;
        };
        assert!(!frame.starts_with(r#"["EVENT","past""#), "{frame}");
        if let Some(rest) = frame.strip_prefix(r#"["EVENT","wide","#) {
            let event = Event::from_json(rest.strip_suffix(']').unwrap()).unwrap();
            wide_events.insert(event.id);
        }
    }
    assert_eq!(wide_events.len(), 3, "{wide_events:?}");
    assert_eq!(faulty.stats().stored_replayed, 4);

    // Once `keep` has passed they are forgotten.
    tokio::time::sleep(keep + Duration::from_millis(500)).await;
    send_text(
        &mut ws,
        ClientMessage::req(SubscriptionId::new("late"), vec![wide]).as_json(),
    )
    .await;
    for _ in 0..100 {
        let Some(frame) = try_text(&mut ws, QUIET).await else {
            break;
        };
        assert!(!frame.starts_with(r#"["EVENT""#), "{frame}");
    }
    let stats = faulty.stats();
    assert_eq!(stats.stored_replayed, 4, "{stats:?}");
    assert_eq!(stats.publish_rejected, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_beyond_the_rate_are_refused() {
    let relay = upstream().await;
    let rate = 5;
    let config = FaultConfig {
        max_events_per_sec: Some(rate),
        ..FaultConfig::default()
    };
    let faulty = FaultyRelay::start(relay.url().as_str(), config).await;
    let keys = Keys::generate();
    let events: Vec<Event> = (0..20)
        .map(|i| note(&keys, &format!("burst {i}")))
        .collect();
    let mut ws = raw(&faulty.url()).await;
    let start = Instant::now();
    for event in &events {
        send_text(&mut ws, event_msg(event)).await;
    }
    let mut ok = 0u64;
    let mut limited = 0u64;
    for _ in 0..events.len() {
        let frame = text(&mut ws).await;
        if frame.ends_with(r#",false,"rate-limited: slow down"]"#) {
            let id = events
                .iter()
                .find(|e| frame.contains(&e.id.to_hex()))
                .unwrap()
                .id;
            assert_eq!(
                frame,
                format!(r#"["OK","{id}",false,"rate-limited: slow down"]"#)
            );
            limited += 1;
        } else {
            assert!(
                frame.starts_with(r#"["OK","#) && frame.contains(",true,"),
                "{frame}"
            );
            ok += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // The burst passes; beyond it only what refilled while sending.
    assert!(ok >= u64::from(rate), "ok {ok}, limited {limited}");
    assert!(
        ok as f64 <= f64::from(rate) * (1.0 + elapsed) + 1.0,
        "ok {ok} in {elapsed} s"
    );
    assert!(limited >= 1);
    let stats = faulty.stats();
    assert_eq!(stats.rate_limited, limited, "{stats:?}");
    assert_eq!(stats.publish_forwarded, ok, "{stats:?}");

    // The bucket refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = note(&keys, "later");
    send_text(&mut ws, event_msg(&later)).await;
    let frame = text(&mut ws).await;
    assert!(accepted(&frame, &later), "{frame}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_required_until_nip42_auth() {
    let relay = upstream().await;
    let config = FaultConfig {
        auth_required: true,
        ..FaultConfig::default()
    };
    let faulty = FaultyRelay::start(relay.url().as_str(), config).await;
    let keys = Keys::generate();

    // Raw: the challenge comes first; EVENT and REQ are refused until AUTH.
    let mut ws = raw(&faulty.url()).await;
    let frame = text(&mut ws).await;
    let challenge = match serde_json::from_str::<serde_json::Value>(&frame).unwrap() {
        serde_json::Value::Array(items) if items[0] == "AUTH" => {
            items[1].as_str().unwrap().to_owned()
        }
        other => panic!("expected AUTH first, got {other}"),
    };
    assert!(challenge.len() >= 16, "{challenge}");
    let before = note(&keys, "before auth");
    send_text(&mut ws, event_msg(&before)).await;
    assert_eq!(
        text(&mut ws).await,
        format!(
            r#"["OK","{}",false,"auth-required: please authenticate"]"#,
            before.id
        )
    );
    send_text(&mut ws, r#"["REQ","s1",{"kinds":[1]}]"#.to_string()).await;
    assert_eq!(
        text(&mut ws).await,
        r#"["CLOSED","s1","auth-required: please authenticate"]"#
    );
    let relay_url = RelayUrl::parse(&faulty.url()).unwrap();
    let wrong = EventBuilder::auth("not the challenge", relay_url.clone())
        .sign_with_keys(&keys)
        .unwrap();
    send_text(&mut ws, ClientMessage::auth(wrong.clone()).as_json()).await;
    assert_eq!(
        text(&mut ws).await,
        format!(r#"["OK","{}",false,"invalid: wrong challenge"]"#, wrong.id)
    );
    let auth = EventBuilder::auth(challenge, relay_url)
        .sign_with_keys(&keys)
        .unwrap();
    send_text(&mut ws, ClientMessage::auth(auth.clone()).as_json()).await;
    assert_eq!(
        text(&mut ws).await,
        format!(r#"["OK","{}",true,""]"#, auth.id)
    );
    send_text(&mut ws, event_msg(&before)).await;
    let frame = text(&mut ws).await;
    assert!(accepted(&frame, &before), "{frame}");
    send_text(
        &mut ws,
        r#"["REQ","s2",{"kinds":[1],"limit":0}]"#.to_string(),
    )
    .await;
    assert_eq!(text(&mut ws).await, r#"["EOSE","s2"]"#);

    // nostr-sdk with a signer authenticates by itself; its publishes and
    // subscriptions go through, whether sent before or after the AUTH.
    let subscriber = Client::builder().signer(Keys::generate()).build();
    subscriber.add_relay(faulty.url()).await.unwrap();
    subscriber.connect().await;
    subscriber.wait_for_connection(PROMPT).await;
    let mut notifications = subscriber.notifications();
    subscriber
        .subscribe(
            Filter::new().kind(Kind::TextNote).author(keys.public_key()),
            None,
        )
        .await
        .unwrap();
    let publisher = Client::builder().signer(keys.clone()).build();
    publisher.add_relay(faulty.url()).await.unwrap();
    publisher.connect().await;
    publisher.wait_for_connection(PROMPT).await;
    // The raw client's event is stored upstream: the subscription gets it too.
    let mut sent = HashSet::from([before.id]);
    for i in 0..3 {
        let output = publisher
            .send_event_builder(EventBuilder::text_note(format!("authed {i}")))
            .await
            .unwrap();
        assert!(output.failed.is_empty(), "{:?}", output.failed);
        sent.insert(output.val);
    }
    let deadline = Instant::now() + PROMPT;
    let mut received = HashSet::new();
    while received != sent && Instant::now() < deadline {
        received.extend(
            collect(&mut notifications, sent.len())
                .await
                .iter()
                .map(|e| e.id),
        );
    }
    assert_eq!(received, sent);
    let stats = faulty.stats();
    assert!(stats.auth_ok >= 3, "{stats:?}");
    assert!(stats.auth_failed >= 1, "{stats:?}");
    assert!(stats.auth_rejected >= 2, "{stats:?}");
}

/// Connects to `faulty` (started with TLS) as `name`, trusting `client`.
async fn tls_stream(
    port: u16,
    name: &str,
    client: std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let relay = upstream().await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let pem_path = dir.path().join("ca.pem");
    ca.write_pem(&pem_path).unwrap();
    let pem = std::fs::read_to_string(&pem_path).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert_eq!(pem, ca.ca_pem());

    let faulty = FaultyRelay::start_tls(relay.url().as_str(), FaultConfig::default(), &ca).await;
    let port = faulty.port();
    assert_eq!(faulty.url(), format!("wss://localhost:{port}"));

    // Both names of the certificate, with the CA as the only root.
    for name in ["localhost", "127.0.0.1"] {
        let tls = tls_stream(port, name, ca.client_config()).await.unwrap();
        let url = format!("wss://{name}:{port}");
        let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tls)
            .await
            .unwrap();
        send_text(&mut ws, r#"["REQ","tls",{"limit":0}]"#.to_string()).await;
        assert_eq!(text(&mut ws).await, r#"["EOSE","tls"]"#);
    }

    // An event over wss:// reaches a plain subscriber of the same relay.
    let keys = Keys::generate();
    let subscriber = connected_client(&Keys::generate(), relay.url().as_str()).await;
    let mut notifications = subscribe(&subscriber, keys.public_key()).await;
    let tls = tls_stream(port, "localhost", ca.client_config())
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(faulty.url().as_str(), tls)
        .await
        .unwrap();
    let event = note(&keys, "over tls");
    send_text(&mut ws, event_msg(&event)).await;
    let frame = text(&mut ws).await;
    assert!(accepted(&frame, &event), "{frame}");
    let received: Vec<EventId> = collect(&mut notifications, 1)
        .await
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(received, [event.id]);

    // NIP-11 over TLS.
    let mut tls = tls_stream(port, "localhost", ca.client_config())
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/nostr+json\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PROMPT, tls.read_to_end(&mut answer))
        .await
        .expect("NIP-11 answer")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains(r#""name":"nws-tests faulty relay""#),
        "{answer}"
    );

    // Another CA's client does not trust it.
    let stranger = TestCa::new();
    assert!(tls_stream(port, "localhost", stranger.client_config())
        .await
        .is_err());
}
