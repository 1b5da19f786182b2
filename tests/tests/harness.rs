//! Self-tests of the nws-tests harness (backend, relay runner, curl and reqwest helpers).

use std::time::Duration;

use nws_tests::*;

#[tokio::test]
async fn backend_serves_fixed_files() {
    let backend = HttpBackend::start().await;
    let client = http_client();

    let resp = client.get(backend.url("/10m")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        (10 * 1024 * 1024).to_string()
    );
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/octet-stream"
    );
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), 10 * 1024 * 1024);
    assert_eq!(&body[..], backend.file("10m"));
    assert_eq!(sha256_hex(&body), backend.sha256("/10m"));

    let resp = client.get(backend.url("hello")).send().await.unwrap();
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/plain"
    );
    assert_eq!(
        &resp.bytes().await.unwrap()[..],
        b"hello from the nws backend\n"
    );

    for (name, size) in RANDOM_FILES {
        assert_eq!(backend.file(name).len(), *size);
        let body = client.get(backend.url(name)).send().await.unwrap();
        assert_eq!(
            sha256_hex(&body.bytes().await.unwrap()),
            backend.sha256(name)
        );
    }
    // Distinct seeds: no file is a prefix of another.
    assert_ne!(backend.file("1k"), &backend.file("64k")[..1024]);

    let resp = client.get(backend.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(backend.request_count(), 3 + RANDOM_FILES.len());
}

#[tokio::test]
async fn backend_echo_and_curl_helpers() {
    let backend = HttpBackend::start().await;
    let payload = pseudo_random_bytes(300_000, 42);
    let resp = http_client()
        .post(backend.url("/echo"))
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), payload);

    // curl: body on stdout
    let out = curl(&[&backend.url("/hello")]).await;
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, b"hello from the nws backend\n");

    let out = curl(&["--data-binary", "ping", &backend.url("/echo")]).await;
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout, b"ping");

    // curl_http: body and status separated
    let out = curl_http(&[&backend.url("/1m")]).await;
    assert!(out.success(), "{out:?}");
    assert_eq!(out.http_code, 200);
    assert_eq!(out.connect_code, 0);
    assert_eq!(sha256_hex(&out.body), backend.sha256("1m"));

    let out = curl_http(&[&backend.url("/missing")]).await;
    assert_eq!((out.status, out.http_code), (0, 404), "{out:?}");

    // curl exit codes surface as-is: 7 = couldn't connect
    let port = free_port();
    let out = curl(&[&format!("http://127.0.0.1:{port}/")]).await;
    assert_eq!(out.status, 7, "{out:?}");
    // 97 = SOCKS handshake failure (the "proxy" is an HTTP server)
    let socks = format!("127.0.0.1:{}", backend.addr.port());
    let out = curl(&["--socks5-hostname", &socks, "http://example.invalid/"]).await;
    assert_eq!(out.status, 97, "{out:?}");
}

#[tokio::test]
async fn backend_stops_on_drop() {
    let backend = HttpBackend::start().await;
    let addr = backend.addr;
    assert!(wait_for_port(addr, Duration::from_secs(5)).await);
    drop(backend);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

async fn nip11(relay: &ThirdPartyRelay) -> serde_json::Value {
    let resp = http_client()
        .get(format!("http://127.0.0.1:{}/", relay.port))
        .header("Accept", "application/nostr+json")
        .send()
        .await
        .expect("NIP-11 request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/nostr+json"
    );
    serde_json::from_slice(&resp.bytes().await.unwrap()).expect("NIP-11 JSON")
}

#[tokio::test]
async fn third_party_relay_starts_serves_nip11_and_restarts() {
    let mut relay = ThirdPartyRelay::start()
        .await
        .expect("start nostr-rs-relay");
    assert_eq!(relay.url, format!("ws://127.0.0.1:{}", relay.port));
    tokio::net::TcpStream::connect(relay.addr())
        .await
        .expect("relay port accepts TCP");

    let info = nip11(&relay).await;
    assert!(info["supported_nips"].is_array(), "{info}");
    assert_eq!(info["name"], "nws-tests nostr-rs-relay");

    relay.stop();
    assert!(!relay.is_running());
    assert!(tokio::net::TcpStream::connect(relay.addr()).await.is_err());

    let port = relay.port;
    relay.restart().await.expect("restart nostr-rs-relay");
    assert_eq!(relay.port, port);
    assert!(relay.is_running());
    assert!(nip11(&relay).await["supported_nips"].is_array());
}

/// The config really raises the limits: a ~600 KB event is accepted and delivered, and
/// a restart with live client connections works (SO_REUSEADDR).
#[tokio::test]
async fn third_party_relay_accepts_large_events() {
    use nostr_sdk::prelude::*;

    let mut relay = ThirdPartyRelay::start()
        .await
        .expect("start nostr-rs-relay");
    let client = Client::new(Keys::generate());
    client.add_relay(relay.url.as_str()).await.unwrap();
    client.connect().await;
    client.wait_for_connection(Duration::from_secs(10)).await;

    let content = "x".repeat(600_000);
    let out = client
        .send_event_builder(EventBuilder::text_note(content.clone()))
        .await
        .expect("publish large event");
    assert_eq!(
        out.success.len(),
        1,
        "failed: {:?}\n{}",
        out.failed,
        relay.log()
    );
    let events = client
        .fetch_events(Filter::new().id(out.val), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(events.first().map(|e| e.content.len()), Some(600_000));

    relay
        .restart()
        .await
        .expect("restart with live connections");
    assert!(nip11(&relay).await.is_object());
    client.disconnect().await;
}
