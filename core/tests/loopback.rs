//! In-process round trips: embedded relay, exit, entry, and a TCP backend.

use std::net::SocketAddr;
use std::time::Duration;

use nostr::Keys;
use nws_core::entry::{Entry, EntryConfig, OpenError};
use nws_core::exit::{ExitConfig, ExitNode};
use nws_core::protocol::ErrorReason;
use nws_relay::EmbeddedRelay;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend that answers every connection with "echo:" and then echoes.
async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                w.write_all(b"echo:").await.unwrap();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_bytes_and_closes_both_ways() {
    let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let backend = echo_backend().await;
    let exit = ExitNode::start(ExitConfig::new(
        vec![relay.url().clone()],
        Keys::generate(),
        backend.to_string(),
    ))
    .await
    .unwrap();
    let name = exit.nostr_domain().unwrap();
    let entry = Entry::new(EntryConfig::new(vec![])).await.unwrap();
    let stream = entry.open(&name, 80).await.unwrap();
    let (mut app, ours) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(stream.run(ours, Vec::new()));
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    app.write_all(&payload).await.unwrap();
    app.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), app.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..5], b"echo:");
    assert_eq!(&got[5..], &payload[..]);
    assert_eq!(task.await.unwrap(), Ok(()));
    exit.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_reported() {
    let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let exit = ExitNode::start(ExitConfig::new(
        vec![relay.url().clone()],
        Keys::generate(),
        dead.to_string(),
    ))
    .await
    .unwrap();
    let entry = Entry::new(EntryConfig::new(vec![relay.url().clone()]))
        .await
        .unwrap();
    let npub = {
        use nostr::nips::nip19::ToBech32;
        exit.public_key().to_bech32().unwrap()
    };
    match entry.open(&npub, 80).await {
        Err(OpenError::Refused(ErrorReason::ConnectionRefused)) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a stream to a dead backend"),
    }
    exit.stop().await;
}

/// Sends `len` pseudo-random bytes through a stream to an echo backend and
/// returns (sent, received-after-the-prefix); `mid` runs once half is sent.
async fn echo_through<F, Fut>(entry: &Entry, name: &str, len: usize, mid: F) -> (Vec<u8>, Vec<u8>)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stream = entry.open(name, 80).await.unwrap();
    let (app, ours) = tokio::io::duplex(1 << 16);
    let run = tokio::spawn(stream.run(ours, Vec::new()));
    let (mut rd, mut wr) = tokio::io::split(app);
    let payload: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        let half = payload.len() / 2;
        wr.write_all(&payload[..half]).await.unwrap();
        mid().await;
        wr.write_all(&payload[half..]).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), rd.read_to_end(&mut got))
        .await
        .expect("echo did not finish")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(run.await.unwrap(), Ok(()));
    (sent, got[5..].to_vec())
}

/// Two relays; one of them stops for good in the middle of a transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_losing_one_of_two_relays() {
    let a = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let b = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let backend = echo_backend().await;
    let exit = ExitNode::start(ExitConfig::new(
        vec![a.url().clone(), b.url().clone()],
        Keys::generate(),
        backend.to_string(),
    ))
    .await
    .unwrap();
    let name = exit.nostr_domain().unwrap();
    let entry = Entry::new(EntryConfig::new(vec![])).await.unwrap();
    let (sent, got) = echo_through(&entry, &name, 2 << 20, move || async move {
        a.shutdown();
        drop(a);
    })
    .await;
    assert!(got == sent, "bytes differ after losing a relay");
    drop(b);
    exit.stop().await;
}

/// Streams that are done leave the subscription's key set when they start
/// to linger (they used to stay for the whole linger time, 60 s, so that
/// every REQ named every stream of the last minute): after 20 sequential
/// streams the set holds the spare keys and hardly more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_streams_leave_the_subscription() {
    let relay = EmbeddedRelay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let backend = echo_backend().await;
    let exit = ExitNode::start(ExitConfig::new(
        vec![relay.url().clone()],
        Keys::generate(),
        backend.to_string(),
    ))
    .await
    .unwrap();
    let name = exit.nostr_domain().unwrap();
    let entry = Entry::new(EntryConfig::new(vec![])).await.unwrap();
    for _ in 0..20 {
        let (sent, got) = echo_through(&entry, &name, 1000, || async {}).await;
        assert_eq!(sent, got);
    }
    // The spares taken by the last streams are replaced in the background.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let keys = entry.subscribed_keys().await;
    assert!((4..=6).contains(&keys), "{keys} keys still subscribed");
    exit.stop().await;
}
