//! Exit node features for operators: access control by entry key, per-key
//! limits, and replay protection. Real `nws` processes, a real relay, curl.

use std::time::Duration;

use nostr_sdk::prelude::*;
use nws_tests::process::NwsProcess;
use nws_tests::{curl, socks_code, HttpBackend};

async fn relay() -> NwsProcess {
    NwsProcess::spawn(&["relay", "--listen", "127.0.0.1:0"]).await
}

async fn exit(
    relay: &str,
    backend: &HttpBackend,
    dir: &tempfile::TempDir,
    extra: &[&str],
) -> NwsProcess {
    let key = dir.path().join("exit.key");
    let backend = backend.host_port();
    let mut args = vec![
        "exit",
        "--relay",
        relay,
        "--key-file",
        key.to_str().unwrap(),
        "--backend",
        &backend,
    ];
    args.extend_from_slice(extra);
    NwsProcess::spawn(&args).await
}

async fn entry(relay: &str, extra: &[&str]) -> NwsProcess {
    NwsProcess::entry(&[relay], false, extra).await
}

/// An exit that allows one entry key: that entry (with `--key-file`) gets
/// through, an entry with fresh keys is refused ("connection not allowed").
/// The allowed key is then limited to two new streams a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_admits_only_listed_entry_keys_and_limits_them() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let entry_key = dir.path().join("entry.key");
    let allowed = entry(&url, &["--key-file", entry_key.to_str().unwrap()]).await;
    let npub = allowed.value("entry-npub").to_string();
    let exit = exit(
        &url,
        &backend,
        &dir,
        &["--allow-entry", &npub, "--max-new-streams-per-minute", "2"],
    )
    .await;
    let page = format!("http://{}/hello", exit.value("domain"));

    for _ in 0..2 {
        let out = curl(&["--socks5-hostname", allowed.value("socks5"), &page]).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert_eq!(out.stdout, nws_tests::HELLO_BODY);
    }
    // A third new stream within the minute: refused, "general failure".
    let out = curl(&["--socks5-hostname", allowed.value("socks5"), &page]).await;
    assert_eq!(socks_code(&out.stderr), Some(1), "{out:?}");

    let stranger = entry(&url, &[]).await;
    let out = curl(&["--socks5-hostname", stranger.value("socks5"), &page]).await;
    assert_eq!(socks_code(&out.stderr), Some(2), "{out:?}");
    assert_eq!(backend.request_count(), 2);
    let log = exit.stderr();
    assert!(
        log.contains("not-allowed") && log.contains("too-many-streams"),
        "{log}"
    );
}

/// Sends an event again as it is (same id, signature and `created_at`).
async fn replay(client: &Client, relay: &str, ev: &Event) {
    client
        .pool()
        .send_msg_to([relay], ClientMessage::event(ev.clone()))
        .await
        .unwrap();
}

/// A relay replaying the events of a stream (CONNECT and the request) does
/// not make the exit repeat the request: at once (ids already seen) or
/// later (outside the replay window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_stream_events_are_ignored() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let exit = exit(&url, &backend, &dir, &["--replay-window", "3"]).await;
    let exit_pk = PublicKey::parse(exit.value("npub")).unwrap();

    // A spy records every stream event addressed to the exit.
    let spy = Client::default();
    spy.add_relay(url.as_str()).await.unwrap();
    spy.connect().await;
    spy.wait_for_connection(Duration::from_secs(5)).await;
    let filter = Filter::new().kind(Kind::Custom(28333)).pubkey(exit_pk);
    spy.subscribe(filter, None).await.unwrap();
    let mut notes = spy.notifications();

    let entry = entry(&url, &[]).await;
    let out = curl(&[
        "--socks5-hostname",
        entry.value("socks5"),
        &format!("http://{}/hello", exit.value("domain")),
    ])
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(backend.request_count(), 1);

    let mut captured = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), notes.recv()).await {
        if let RelayPoolNotification::Event { event, .. } = n {
            captured.push(*event);
        }
    }
    assert!(captured.len() >= 2, "captured {} events", captured.len());

    // Replayed at once: the exit has seen these ids.
    for ev in &captured {
        replay(&spy, &url, ev).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(backend.request_count(), 1, "replay repeated the request");

    // Replayed after the window to a restarted exit (which has forgotten
    // the ids): too old.
    assert_eq!(exit.terminate().await, Some(0));
    let exit = self::exit(&url, &backend, &dir, &["--replay-window", "3"]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    for ev in &captured {
        replay(&spy, &url, ev).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        backend.request_count(),
        1,
        "late replay repeated the request"
    );
    let log = exit.stderr();
    assert!(log.contains("possible replay"), "{log}");
}
