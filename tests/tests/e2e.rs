//! End to end across processes: the real `nws relay`, `nws exit` and
//! `nws entry` binaries, a real HTTP backend, real clients (curl and
//! reqwest), and two relay implementations (ours embedded, and
//! nostr-rs-relay). Every body is checked byte for byte or by SHA-256.

use std::time::Instant;

use nws_tests::process::NwsProcess;
use nws_tests::{
    curl, curl_http, http_client_via, sha256_hex, socks5_request, socks_code, HttpBackend,
    ThirdPartyRelay,
};

#[derive(Clone, Copy, Debug)]
enum RelayKind {
    Embedded,
    NostrRsRelay,
}

/// A relay, a backend, an exit in front of it and an entry, all on loopback.
struct Path {
    backend: HttpBackend,
    exit: NwsProcess,
    entry: NwsProcess,
    _relay: RelayHolder,
    _dir: tempfile::TempDir,
}

#[allow(dead_code)]
enum RelayHolder {
    Ours(NwsProcess),
    Theirs(ThirdPartyRelay),
}

impl Path {
    async fn start(kind: RelayKind, entry_args: &[&str]) -> Path {
        let backend = HttpBackend::start().await;
        Self::start_with_backend(kind, entry_args, backend.host_port(), backend).await
    }

    async fn start_with_backend(
        kind: RelayKind,
        entry_args: &[&str],
        backend_addr: String,
        backend: HttpBackend,
    ) -> Path {
        let (relay, url) = match kind {
            RelayKind::Embedded => {
                let p = NwsProcess::spawn(&["relay", "--listen", "127.0.0.1:0"]).await;
                let url = p.value("relay").to_string();
                (RelayHolder::Ours(p), url)
            }
            RelayKind::NostrRsRelay => {
                let r = ThirdPartyRelay::start()
                    .await
                    .unwrap_or_else(|e| panic!("nostr-rs-relay is required: {e}"));
                let url = r.url().to_string();
                (RelayHolder::Theirs(r), url)
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("exit.key");
        let mut args = vec![
            "exit",
            "--relay",
            &url,
            "--key-file",
            key.to_str().unwrap(),
            "--backend",
            &backend_addr,
        ];
        // Arguments after "--exit" are the exit's.
        let (entry_args, exit_args) = match entry_args.iter().position(|a| *a == "--exit") {
            Some(i) => (&entry_args[..i], &entry_args[i + 1..]),
            None => (entry_args, &[][..]),
        };
        args.extend_from_slice(exit_args);
        let exit = NwsProcess::spawn(&args).await;
        let mut args = vec![
            "entry",
            "--relay",
            &url,
            "--socks",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ];
        if !entry_args.contains(&"--auth") {
            // An open proxy, so that curl needs no credentials.
            args.push("--no-auth");
        }
        args.extend_from_slice(entry_args);
        let entry = NwsProcess::spawn(&args).await;
        Path {
            backend,
            exit,
            entry,
            _relay: relay,
            _dir: dir,
        }
    }

    fn domain(&self) -> &str {
        self.exit.value("domain")
    }
    fn socks(&self) -> &str {
        self.entry.value("socks5")
    }
    fn http(&self) -> &str {
        self.entry.value("http")
    }
    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.domain())
    }
}

/// curl through both proxy ports fetches the 10 MiB file; SHA-256 matches.
async fn fetch_10mib_with_curl(kind: RelayKind) {
    let p = Path::start(kind, &[]).await;
    let want = p.backend.sha256("10m");
    for (label, proxy_flag, proxy) in [
        ("socks5", "--socks5-hostname", p.socks().to_string()),
        ("http", "--proxy", format!("http://{}", p.http())),
    ] {
        let t = Instant::now();
        let out = curl(&[proxy_flag, &proxy, &p.url("10m")]).await;
        let took = t.elapsed();
        assert_eq!(out.status, 0, "{kind:?} {label}: {out:?}");
        assert_eq!(out.stdout.len(), 10 * 1024 * 1024, "{kind:?} {label}");
        assert_eq!(sha256_hex(&out.stdout), want, "{kind:?} {label}");
        eprintln!("{kind:?} {label}: 10 MiB in {:.2} s", took.as_secs_f64());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_10mib_through_embedded_relay() {
    fetch_10mib_with_curl(RelayKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_10mib_through_nostr_rs_relay() {
    fetch_10mib_with_curl(RelayKind::NostrRsRelay).await;
}

/// Rust HTTP clients: hyper over SOCKS5 (remote names), reqwest through
/// the HTTP proxy; GET and a POST with a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_clients_fetch_through_both_proxies() {
    let p = Path::start(RelayKind::Embedded, &[]).await;
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    for file in ["hello", "1m"] {
        let (status, body) = socks5_request(p.socks(), &p.url(file), None).await.unwrap();
        assert_eq!(status, 200, "socks5 {file}");
        assert_eq!(&body[..], p.backend.file(file), "socks5 {file}");
    }
    let (status, body) = socks5_request(p.socks(), &p.url("echo"), Some(payload.clone()))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, payload, "socks5 echo");

    let client = http_client_via(&format!("http://{}", p.http()));
    for file in ["hello", "1m"] {
        let resp = client.get(p.url(file)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "http {file}");
        assert_eq!(
            &resp.bytes().await.unwrap()[..],
            p.backend.file(file),
            "http {file}"
        );
    }
    let resp = client
        .post(p.url("echo"))
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), payload, "http echo");
}

/// 50 requests at once, every body correct, on both relays.
async fn fifty_concurrent(kind: RelayKind) {
    let p = Path::start(kind, &[]).await;
    let files = ["hello", "1k", "64k", "1m"];
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (http, socks) = (p.http().to_string(), p.socks().to_string());
        let file = files[i % files.len()];
        let url = p.url(file);
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let client = http_client_via(&format!("http://{http}"));
                let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                let body = resp.bytes().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((file, status, body.to_vec()))
            } else {
                let (status, body) = socks5_request(&socks, &url, None).await?;
                Ok((file, status, body))
            }
        }));
    }
    for t in tasks {
        let (file, status, body) = t.await.unwrap().unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(status, 200, "{kind:?} {file}");
        assert_eq!(&body[..], p.backend.file(file), "{kind:?} {file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_through_embedded_relay() {
    fifty_concurrent(RelayKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_through_nostr_rs_relay() {
    fifty_concurrent(RelayKind::NostrRsRelay).await;
}

/// A backend that refuses: SOCKS5 "connection refused" (5) and HTTP 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_gives_socks_refused_and_http_502() {
    let backend = HttpBackend::start().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let p = Path::start_with_backend(RelayKind::Embedded, &[], dead, backend).await;
    let out = curl(&["--socks5-hostname", p.socks(), &p.url("hello")]).await;
    assert_eq!(out.status, 97, "{out:?}");
    assert_eq!(socks_code(&out.stderr), Some(5), "{out:?}");
    let out = curl_http(&["--proxy", &format!("http://{}", p.http()), &p.url("hello")]).await;
    assert_eq!(out.http_code, 502, "{out:?}");
    assert!(String::from_utf8_lossy(&out.body).contains("connection-refused"));
    // CONNECT through the HTTP proxy is refused the same way.
    let out = curl_http(&[
        "--proxytunnel",
        "--proxy",
        &format!("http://{}", p.http()),
        &p.url("hello"),
    ])
    .await;
    assert_eq!(out.connect_code, 502, "{out:?}");
}

/// With `--early-reply`, SOCKS5 and HTTP `CONNECT` clients are answered at
/// once and their request rides in the stream's `CONNECT` (once the exit is
/// known to speak version 2 or later); bodies arrive intact. Names that do
/// not route still get their real reply codes; a refusal by the exit
/// becomes a reset connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_reply_sends_the_request_in_the_connect() {
    let p = Path::start(RelayKind::Embedded, &["--early-reply"]).await;
    let http = format!("http://{}", p.http());
    let tunnel = |url: &str| -> Vec<String> {
        ["--proxytunnel", "--proxy", &http, url]
            .map(String::from)
            .to_vec()
    };
    for round in 0..2 {
        let out = curl(&["--socks5-hostname", p.socks(), &p.url("1m")]).await;
        assert_eq!(out.status, 0, "socks5 round {round}: {out:?}");
        assert_eq!(sha256_hex(&out.stdout), p.backend.sha256("1m"));
        let t = tunnel(&p.url("1m"));
        let out = curl(&t.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert_eq!(out.status, 0, "CONNECT round {round}: {out:?}");
        assert_eq!(sha256_hex(&out.stdout), p.backend.sha256("1m"));
    }
    let log = p.entry.stderr();
    for proto in ["Socks5", "Http"] {
        let rode = log.lines().any(|l| {
            l.contains(&format!("{proto} "))
                && l.contains("replied early;")
                && !l.contains("; 0 of")
        });
        assert!(rode, "{proto}: no request rode in a CONNECT:\n{log}");
    }
    assert_eq!(p.backend.request_count(), 4);

    let out = curl(&["--socks5-hostname", p.socks(), "http://notakey.nostr/"]).await;
    assert_eq!(socks_code(&out.stderr), Some(4), "{out:?}");
    let out = curl(&["--socks5-hostname", p.socks(), "http://example.com/"]).await;
    assert_eq!(socks_code(&out.stderr), Some(2), "{out:?}");
    let t = tunnel("http://example.com/");
    let out = curl_http(&t.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(out.connect_code, 403, "{out:?}");
}

/// `--early-reply` toward a refusing backend: the client was told success,
/// so the refusal arrives as a reset connection (curl: 52 empty reply or 56
/// receive failure), never as a response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_reply_turns_an_exit_refusal_into_a_reset() {
    let backend = HttpBackend::start().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let p = Path::start_with_backend(RelayKind::Embedded, &["--early-reply"], dead, backend).await;
    let out = curl(&["--socks5-hostname", p.socks(), &p.url("hello")]).await;
    assert!(matches!(out.status, 52 | 56), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let log = p.entry.stderr();
    assert!(log.contains("(replied early)"), "{log}");
}

/// A name that does not decode: "host unreachable" (4) and a log line; a
/// host that is not an NWS name: "connection not allowed" (2) and HTTP 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_ordinary_hosts_are_refused_clearly() {
    let p = Path::start(RelayKind::Embedded, &[]).await;
    let out = curl(&["--socks5-hostname", p.socks(), "http://notakey.nostr/"]).await;
    assert_eq!(out.status, 97, "{out:?}");
    assert_eq!(socks_code(&out.stderr), Some(4), "{out:?}");
    let bad_npub = "npub1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq";
    let out = curl(&[
        "--socks5-hostname",
        p.socks(),
        &format!("http://{bad_npub}/"),
    ])
    .await;
    assert_eq!(socks_code(&out.stderr), Some(4), "{out:?}");
    let out = curl_http(&[
        "--proxy",
        &format!("http://{}", p.http()),
        "http://notakey.nostr/",
    ])
    .await;
    assert_eq!(out.http_code, 502, "{out:?}");

    let out = curl(&["--socks5-hostname", p.socks(), "http://example.com/"]).await;
    assert_eq!(socks_code(&out.stderr), Some(2), "{out:?}");
    let out = curl(&["--socks5", p.socks(), "http://127.0.0.1:9/"]).await;
    assert_eq!(socks_code(&out.stderr), Some(2), "{out:?}");
    let out = curl_http(&[
        "--proxy",
        &format!("http://{}", p.http()),
        "http://example.com/",
    ])
    .await;
    assert_eq!(out.http_code, 403, "{out:?}");
    assert!(String::from_utf8_lossy(&out.body).contains("not an NWS name"));

    // The entry logged what was wrong with the name; nothing was dialled.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = p.entry.stderr();
    assert!(log.contains("notakey.nostr"), "{log}");
    assert!(log.contains("public key label"), "{log}");
    assert_eq!(p.backend.request_count(), 0);
}

/// With `--auth`, clients without the right credentials get nothing but 407
/// (HTTP) or a failed RFC 1929 negotiation (SOCKS5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_are_enforced() {
    let p = Path::start(RelayKind::Embedded, &["--auth", "alice:s3cret"]).await;
    let http = p.http().to_string();
    let out = curl_http(&["--proxy", &format!("http://{http}"), &p.url("hello")]).await;
    assert_eq!(out.http_code, 407, "{out:?}");
    let out = curl_http(&[
        "--proxy",
        &format!("http://alice:wrong@{http}"),
        &p.url("hello"),
    ])
    .await;
    assert_eq!(out.http_code, 407, "{out:?}");
    let out = curl_http(&[
        "--proxy",
        &format!("http://alice:s3cret@{http}"),
        &p.url("hello"),
    ])
    .await;
    assert_eq!(out.http_code, 200, "{out:?}");
    assert_eq!(out.body, nws_tests::HELLO_BODY);

    let socks = p.socks().to_string();
    let out = curl(&["--proxy", &format!("socks5h://{socks}"), &p.url("hello")]).await;
    assert_eq!(out.status, 97, "{out:?}");
    let out = curl(&[
        "--proxy",
        &format!("socks5h://alice:wrong@{socks}"),
        &p.url("hello"),
    ])
    .await;
    assert_eq!(out.status, 97, "{out:?}");
    let out = curl(&[
        "--proxy",
        &format!("socks5h://alice:s3cret@{socks}"),
        &p.url("hello"),
    ])
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, nws_tests::HELLO_BODY);
    assert_eq!(p.backend.request_count(), 2);
}

/// Our entry forced into the legacy format (as the reference entry speaks)
/// still reaches our exit, which answers in the legacy format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_entry_reaches_our_exit() {
    let p = Path::start(RelayKind::Embedded, &["--legacy"]).await;
    let out = curl(&["--socks5-hostname", p.socks(), &p.url("1m")]).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(sha256_hex(&out.stdout), p.backend.sha256("1m"));
    let log = p.exit.stderr();
    assert!(
        log.contains("legacy"),
        "exit should note the legacy stream:\n{log}"
    );
}

/// Peers meet at the lower of their stream versions: version 3 (binary
/// frames) between two of ours, version 2 (JSON) when either side stops
/// at 2, as earlier releases do; every byte arrives either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stream_versions_meet_at_the_lower_one() {
    for (entry_version, exit_version, spoken) in [("3", "2", 2), ("2", "3", 2), ("3", "3", 3)] {
        let p = Path::start(
            RelayKind::Embedded,
            &[
                "--stream-version",
                entry_version,
                "--exit",
                "--stream-version",
                exit_version,
            ],
        )
        .await;
        let out = curl(&["--socks5-hostname", p.socks(), &p.url("1m")]).await;
        assert_eq!(out.status, 0, "{entry_version}/{exit_version}: {out:?}");
        assert_eq!(sha256_hex(&out.stdout), p.backend.sha256("1m"));
        // The framing each side writes in (`Framing`'s Debug form).
        let (exit_framing, entry_framing) = if spoken == 3 {
            ("Binary(Exit)", "Binary(Entry)")
        } else {
            ("Json", "Json")
        };
        let (exit_log, entry_log) = (p.exit.stderr(), p.entry.stderr());
        assert!(
            exit_log.contains(&format!("speaking version {spoken} ({exit_framing})")),
            "{entry_version}/{exit_version}: exit log:\n{exit_log}"
        );
        assert!(
            entry_log.contains(&format!(
                "open, speaking version {spoken} ({entry_framing})"
            )),
            "{entry_version}/{exit_version}: entry log:\n{entry_log}"
        );
    }
}

/// npub and nprofile hosts route like the `.nostr` domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npub_and_nprofile_hosts_work() {
    let p = Path::start(RelayKind::Embedded, &[]).await;
    for host in [p.exit.value("npub"), p.exit.value("nprofile")] {
        let out = curl(&[
            "--socks5-hostname",
            p.socks(),
            &format!("http://{host}/hello"),
        ])
        .await;
        assert_eq!(out.status, 0, "{host}: {out:?}");
        assert_eq!(out.stdout, nws_tests::HELLO_BODY);
    }
}

/// Long-running commands stop cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_shut_down_cleanly() {
    let p = Path::start(RelayKind::Embedded, &[]).await;
    let Path { exit, entry, .. } = p;
    assert_eq!(entry.terminate().await, Some(0));
    assert_eq!(exit.terminate().await, Some(0));
}
