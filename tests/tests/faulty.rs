//! Self-tests of [`FaultyRelay`], the fault-injecting middlebox, in front of the
//! core crate's embedded relay, with nostr-sdk clients.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nostr_sdk::prelude::*;
use nws_relay::EmbeddedRelay;
use nws_tests::faulty::{FaultConfig, FaultyRelay};
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
    let mut notifications = client.notifications();
    let sub = client
        .subscribe(Filter::new().kind(Kind::TextNote).author(author), None)
        .await
        .unwrap()
        .val;
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
