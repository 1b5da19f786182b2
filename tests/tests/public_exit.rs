//! Public exits, the egress policy, discovery, pinned exits, the HTTPS
//! front with `nws cert`, and reverse connect (`CONNECTR`). Real `nws`
//! processes, the embedded relay, curl; every address is on 127.0.0.1.

use std::time::Duration;

use nostr_sdk::prelude::{FromBech32, Keys, Nip19Profile, PublicKey, RelayUrl, ToBech32};
use nws_tests::process::NwsProcess;
use nws_tests::{curl, curl_http, free_port, socks_code, HttpBackend, HELLO_BODY};

async fn relay() -> NwsProcess {
    NwsProcess::spawn(&["relay", "--listen", "127.0.0.1:0"]).await
}

/// `nws exit --relay URL --key-file DIR/exit.key <extra>`.
async fn exit(relay: &str, dir: &tempfile::TempDir, extra: &[&str]) -> NwsProcess {
    exit_env(relay, dir, extra, &[]).await
}

/// [`exit`] with extra environment variables.
async fn exit_env(
    relay: &str,
    dir: &tempfile::TempDir,
    extra: &[&str],
    env: &[(&str, &str)],
) -> NwsProcess {
    let key = dir.path().join("exit.key");
    let mut args = vec![
        "exit",
        "--relay",
        relay,
        "--key-file",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    NwsProcess::spawn_env(&args, env).await
}

/// An entry with SOCKS5 and HTTP on free loopback ports.
async fn entry(relay: &str, extra: &[&str]) -> NwsProcess {
    entry_env(relay, extra, &[]).await
}

/// [`entry`] with extra environment variables.
async fn entry_env(relay: &str, extra: &[&str], env: &[(&str, &str)]) -> NwsProcess {
    let mut args = vec![
        "entry",
        "--no-auth",
        "--relay",
        relay,
        "--socks",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    NwsProcess::spawn_env(&args, env).await
}

/// An ordinary host (the loopback backend, by IP) is fetched through a
/// public exit the entry discovered from its announcement, over SOCKS5
/// and the HTTP proxy; the exit allows 127.0.0.1/32 explicitly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_host_through_a_discovered_public_exit() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let _exit = exit(&url, &dir, &["--public", "--allow-net", "127.0.0.1/32"]).await;
    let entry = entry(&url, &["--public-exits"]).await;

    // The first request waits (bounded) for the announcement to arrive.
    let out = curl(&[
        "--socks5-hostname",
        entry.value("socks5"),
        &backend.url("/hello"),
    ])
    .await;
    assert_eq!(out.status, 0, "{out:?}\nentry log:\n{}", entry.stderr());
    assert_eq!(out.stdout, HELLO_BODY);

    let proxy = format!("http://{}", entry.value("http"));
    let out = curl_http(&["--proxy", &proxy, &backend.url("/hello")]).await;
    assert_eq!(out.http_code, 200, "{out:?}");
    assert_eq!(out.body, HELLO_BODY);
}

/// Without `--allow-net` the default policy refuses the loopback backend:
/// SOCKS5 reply 2 and HTTP 403, by IP and by a name (`localhost`) that the
/// exit resolves to 127.0.0.1. The backend never sees a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_refuses_loopback_and_names_resolving_to_it() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let _exit = exit(&url, &dir, &["--public"]).await;
    let entry = entry(&url, &["--public-exits"]).await;
    let by_name = format!("http://localhost:{}/hello", backend.addr.port());

    for page in [backend.url("/hello"), by_name.clone()] {
        let out = curl(&["--socks5-hostname", entry.value("socks5"), &page]).await;
        assert_eq!(socks_code(&out.stderr), Some(2), "{page}: {out:?}");
    }
    let proxy = format!("http://{}", entry.value("http"));
    for page in [backend.url("/hello"), by_name] {
        let out = curl_http(&["--proxy", &proxy, &page]).await;
        assert_eq!(out.http_code, 403, "{page}: {out:?}");
    }
    assert_eq!(backend.request_count(), 0);
}

/// `--exit npub` pins one public exit: no discovery needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_public_exit_by_npub() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let exit = exit(&url, &dir, &["--public", "--allow-net", "127.0.0.1/32"]).await;
    let entry = entry(&url, &["--exit", exit.value("npub")]).await;
    let out = curl(&[
        "--socks5-hostname",
        entry.value("socks5"),
        &backend.url("/hello"),
    ])
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, HELLO_BODY);
}

/// A private-service exit dials its backend whatever destination the
/// `CONNECT` names: an entry pinned to it asking for 127.0.0.1:1 gets the
/// backend's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_exit_ignores_the_destination() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let exit = exit(&url, &dir, &["--backend", &backend.host_port()]).await;
    let entry = entry(&url, &["--exit", exit.value("npub")]).await;
    let out = curl(&[
        "--socks5-hostname",
        entry.value("socks5"),
        "http://127.0.0.1:1/hello",
    ])
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, HELLO_BODY);
    assert_eq!(backend.request_count(), 1);
}

/// `nws cert <domain>` prints the exit's front certificate; curl verifies
/// the HTTPS front against exactly that certificate, for the `.nostr` name
/// in the URL. A restarted exit with the same key serves the same
/// certificate (restored from its kind-38334/38335 events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_front_verified_with_the_certificate_from_nws_cert() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let front = [
        "--https-port",
        "8443",
        "--https-target",
        &backend.host_port(),
    ];
    let exit1 = exit(&url, &dir, &front).await;
    let domain = exit1.value("domain").to_string();
    let cert = nws_cert(&domain, &url).await;
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    let pem = dir.path().join("cert.pem");
    std::fs::write(&pem, &cert).unwrap();

    let entry = entry(&url, &[]).await;
    let page = format!("https://{domain}:8443/hello");
    let out = curl(&[
        "--cacert",
        pem.to_str().unwrap(),
        "--socks5-hostname",
        entry.value("socks5"),
        &page,
    ])
    .await;
    assert_eq!(out.status, 0, "{out:?}\nexit log:\n{}", exit1.stderr());
    assert_eq!(out.stdout, HELLO_BODY);

    // Without the pinned certificate curl does not trust the front.
    let out = curl(&["--socks5-hostname", entry.value("socks5"), &page]).await;
    assert_eq!(out.status, 60, "{out:?}");

    assert_eq!(exit1.terminate().await, Some(0));
    let _exit2 = exit(&url, &dir, &front).await;
    assert_eq!(nws_cert(&domain, &url).await, cert);
}

/// Runs `nws cert NAME --relay URL` and returns what it printed.
async fn nws_cert(name: &str, relay: &str) -> String {
    let out = tokio::process::Command::new(nws_tests::process::nws_bin())
        .args(["cert", name, "--relay", relay])
        .output()
        .await
        .expect("run nws cert");
    assert!(
        out.status.success(),
        "nws cert failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("PEM is text")
}

/// Reverse connect: the entry listens on a public address, the exit dials
/// it and the page comes back over that plain TCP connection. The exit
/// checks the entry's address against its egress policy, so it allows
/// 127.0.0.1/32 here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_connect_end_to_end() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let exit = exit(
        &url,
        &dir,
        &[
            "--backend",
            &backend.host_port(),
            "--allow-net",
            "127.0.0.1/32",
        ],
    )
    .await;
    let public = format!("127.0.0.1:{}", free_port());
    let entry = entry(&url, &["--public-address", &public]).await;
    assert_eq!(entry.value("public-address"), public);
    let page = format!("http://{}/hello", exit.value("domain"));
    let out = curl(&["--socks5-hostname", entry.value("socks5"), &page]).await;
    assert_eq!(out.status, 0, "{out:?}\nexit log:\n{}", exit.stderr());
    assert_eq!(out.stdout, HELLO_BODY);
    assert!(
        exit.stderr().contains("reverse connection open"),
        "{}",
        exit.stderr()
    );
}

/// A reverse connect that fails at the exit comes back as the exit's
/// `ERROR` (the entry's `CONNECTR` carries `version: 2`), not as a timeout:
/// a backend that refuses connections is SOCKS5 reply 5 / HTTP 502, and an
/// entry address the exit's egress policy refuses (loopback, no
/// `--allow-net`) is reply 2 / HTTP 403. The connect timeout is 60 s, so a
/// timeout would be reply 4 / HTTP 504 (and a minute late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_connect_failures_come_back_as_the_exits_reason() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let closed = format!("127.0.0.1:{}", free_port());
    let refusing_backend = exit(
        &url,
        &dir_a,
        &["--backend", &closed, "--allow-net", "127.0.0.1/32"],
    )
    .await;
    let refusing_entry_address = exit(&url, &dir_b, &["--backend", &backend.host_port()]).await;
    let public = format!("127.0.0.1:{}", free_port());
    let entry = entry(
        &url,
        &["--public-address", &public, "--connect-timeout", "60"],
    )
    .await;
    let page = format!("http://{}/hello", refusing_backend.value("domain"));
    assert_fails_with(&entry, &page, 5, 502).await;
    let page = format!("http://{}/hello", refusing_entry_address.value("domain"));
    assert_fails_with(&entry, &page, 2, 403).await;
    assert!(
        refusing_entry_address
            .stderr()
            .contains(&format!("entry address {public}")),
        "{}",
        refusing_entry_address.stderr()
    );
    assert_eq!(backend.request_count(), 0);
    let log = entry.stderr();
    assert_eq!(
        log.matches("the exit refused the reverse connect").count(),
        4,
        "{log}"
    );
}

/// Toward an exit named with `--legacy-exit` the entry's `CONNECTR` has no
/// `version`, as the reference sends it, so the exit does not answer a
/// failure (a reference entry would not expect an `ERROR`): the entry
/// times out (SOCKS5 reply 4) while the exit logs why it gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_connect_to_a_legacy_exit_fails_by_timeout() {
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("127.0.0.1:{}", free_port());
    let exit = exit(
        &url,
        &dir,
        &["--backend", &closed, "--allow-net", "127.0.0.1/32"],
    )
    .await;
    let public = format!("127.0.0.1:{}", free_port());
    let entry = entry(
        &url,
        &[
            "--public-address",
            &public,
            "--connect-timeout",
            "3",
            "--legacy-exit",
            exit.value("npub"),
        ],
    )
    .await;
    let page = format!("http://{}/hello", exit.value("domain"));
    let out = curl(&["--socks5-hostname", entry.value("socks5"), &page]).await;
    assert_eq!(
        socks_code(&out.stderr),
        Some(4),
        "{out:?}\n{}",
        entry.stderr()
    );
    assert!(exit.stderr().contains("destination `"), "{}", exit.stderr());
    assert!(!entry
        .stderr()
        .contains("the exit refused the reverse connect"));
}

/// Asserts `page` is refused by the exit's egress policy through both
/// proxies of `entry`: SOCKS5 reply 2 and HTTP 403.
async fn assert_refused(entry: &NwsProcess, page: &str) {
    assert_fails_with(entry, page, 2, 403).await;
}

/// Asserts fetching `page` through `entry` fails with SOCKS5 reply `socks`
/// and HTTP status `http`.
async fn assert_fails_with(entry: &NwsProcess, page: &str, socks: u8, http: u16) {
    let out = curl(&["--socks5-hostname", entry.value("socks5"), page]).await;
    assert_eq!(
        socks_code(&out.stderr),
        Some(socks),
        "SOCKS5 {page}: {out:?}\n{}",
        entry.stderr()
    );
    let proxy = format!("http://{}", entry.value("http"));
    let out = curl_http(&["--proxy", &proxy, page]).await;
    assert_eq!(out.http_code, http, "HTTP {page}: {out:?}");
}

/// Asserts `page` (a `/hello`) is served through both proxies of `entry`.
async fn assert_served(entry: &NwsProcess, page: &str) {
    let out = curl(&["--socks5-hostname", entry.value("socks5"), page]).await;
    assert_eq!(out.status, 0, "SOCKS5 {page}: {out:?}\n{}", entry.stderr());
    assert_eq!(out.stdout, HELLO_BODY, "SOCKS5 {page}");
    let proxy = format!("http://{}", entry.value("http"));
    let out = curl_http(&["--proxy", &proxy, page]).await;
    assert_eq!(out.http_code, 200, "HTTP {page}: {out:?}");
    assert_eq!(out.body, HELLO_BODY, "HTTP {page}");
}

/// `--deny-net` wins over `--allow-net`: with 127.0.0.0/8 allowed and
/// 127.0.0.2/32 denied, a backend on 127.0.0.2 is refused (by IP) and never
/// sees a request, while one on 127.0.0.1 is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_net_wins_over_allow_net() {
    let served = HttpBackend::start().await;
    let denied = HttpBackend::start_on(std::net::Ipv4Addr::new(127, 0, 0, 2)).await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let exit = exit(
        &url,
        &dir,
        &[
            "--public",
            "--allow-net",
            "127.0.0.0/8",
            "--deny-net",
            "127.0.0.2/32",
        ],
    )
    .await;
    let entry = entry(&url, &["--exit", exit.value("npub")]).await;
    assert_served(&entry, &served.url("/hello")).await;
    assert_refused(&entry, &denied.url("/hello")).await;
    assert_eq!(served.request_count(), 2);
    assert_eq!(denied.request_count(), 0);
}

/// `--allow-port` restricts the destination ports: of two backends on
/// 127.0.0.1 (allowed by `--allow-net`), the one on the allowed port is
/// served and the other refused without a request reaching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_port_refuses_other_ports() {
    let served = HttpBackend::start().await;
    let other = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let port = served.addr.port().to_string();
    let exit = exit(
        &url,
        &dir,
        &[
            "--public",
            "--allow-net",
            "127.0.0.1/32",
            "--allow-port",
            &port,
        ],
    )
    .await;
    let entry = entry(&url, &["--exit", exit.value("npub")]).await;
    assert_served(&entry, &served.url("/hello")).await;
    assert_refused(&entry, &other.url("/hello")).await;
    assert_eq!(served.request_count(), 2);
    assert_eq!(other.request_count(), 0);
}

/// Waits (at most 30 s) until `process` has logged `needle`.
async fn wait_for_log(process: &NwsProcess, needle: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if process.stderr().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The hex public key of an exit (as the entry logs it).
fn exit_hex(exit: &NwsProcess) -> String {
    PublicKey::parse(exit.value("npub")).unwrap().to_hex()
}

/// Two public exits are announced; one is killed after the entry has seen
/// its (still fresh) announcement. Every request through `--public-exits`
/// still succeeds: the entry tries the dead exit, marks it failed and
/// takes the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_the_next_public_exit_when_one_is_dead() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let public = ["--public", "--allow-net", "127.0.0.1/32"];
    let mut dead = exit(&url, &dir_a, &public).await;
    let live = exit(&url, &dir_b, &public).await;
    let entry = entry(&url, &["--public-exits", "--connect-timeout", "5"]).await;
    let (dead_hex, live_hex) = (exit_hex(&dead), exit_hex(&live));
    for hex in [&dead_hex, &live_hex] {
        assert!(
            wait_for_log(&entry, &format!("public exit {hex} announced")).await,
            "the entry never saw {hex} announced:\n{}",
            entry.stderr()
        );
    }
    dead.kill().await;

    // SOCKS5 and the HTTP proxy in turn.
    const REQUESTS: usize = 4;
    let proxy = format!("http://{}", entry.value("http"));
    for i in 0..REQUESTS {
        let page = backend.url("/hello");
        let (code, body) = if i % 2 == 0 {
            let out = curl(&["--socks5-hostname", entry.value("socks5"), &page]).await;
            assert_eq!(out.status, 0, "request {i}: {out:?}\n{}", entry.stderr());
            (200, out.stdout)
        } else {
            let out = curl_http(&["--proxy", &proxy, &page]).await;
            (out.http_code, out.body)
        };
        assert_eq!(code, 200, "request {i}:\n{}", entry.stderr());
        assert_eq!(body, HELLO_BODY, "request {i}");
    }
    assert_eq!(backend.request_count(), REQUESTS);
    let log = entry.stderr();
    // Tried once, then last for the backoff: the live exit serves the rest.
    assert_eq!(
        log.matches(&format!("public exit {dead_hex} failed"))
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("trying the next one"), "{log}");
    assert!(
        !log.contains(&format!("public exit {live_hex} failed")),
        "{log}"
    );
}

/// `--exit nprofile1...` pins an exit on the relay the nprofile names: the
/// entry's own `--relay` is another, empty relay, and the page still comes
/// back through the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_public_exit_by_nprofile_on_its_own_relay() {
    let backend = HttpBackend::start().await;
    let exit_relay = relay().await;
    let other_relay = relay().await;
    let dir = tempfile::tempdir().unwrap();
    let exit = exit(
        exit_relay.value("relay"),
        &dir,
        &["--public", "--allow-net", "127.0.0.1/32"],
    )
    .await;
    let nprofile = exit.value("nprofile");
    let profile = Nip19Profile::from_bech32(nprofile).unwrap();
    assert_eq!(
        profile.relays,
        vec![RelayUrl::parse(exit_relay.value("relay")).unwrap()]
    );
    let entry = entry(other_relay.value("relay"), &["--exit", nprofile]).await;
    assert_served(&entry, &backend.url("/hello")).await;
    assert_eq!(backend.request_count(), 2);
}

/// A bad `--exit` stops the entry at start: exit code 1 and an error that
/// names the option and the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_exit_value_is_refused_at_start() {
    let relay = relay().await;
    for bad in ["npub1notakey", "example.com", "nprofile1qqqq", "zzz.nostr"] {
        let stderr = entry_fails(relay.value("relay"), &["--exit", bad], &[]).await;
        assert!(
            stderr.contains("--exit") && stderr.contains(bad),
            "--exit {bad}: {stderr}"
        );
    }
}

/// `--exit` pins the only exit used, so asking for discovery too is a usage
/// error (clap's exit code 2) naming both options, not a silent choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_exit_and_discovery_together_are_refused() {
    let npub = Keys::generate().public_key().to_bech32().unwrap();
    let out = tokio::process::Command::new(nws_tests::process::nws_bin())
        .args(["entry", "--no-auth", "--public-exits", "--exit", &npub])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("nws entry did not stop")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--exit") && stderr.contains("--public-exits"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
}

/// Runs `nws entry` expecting it to stop at start: exit code 1, no
/// `ready`, an `error:` line. Returns its stderr.
async fn entry_fails(relay: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = tokio::process::Command::new(nws_tests::process::nws_bin());
    cmd.args([
        "entry",
        "--no-auth",
        "--relay",
        relay,
        "--socks",
        "127.0.0.1:0",
        "--http",
        "off",
    ])
    .args(extra)
    .envs(env.iter().copied())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("nws entry {extra:?} {env:?} did not stop"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{extra:?} {env:?}: {stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
    assert!(stderr.contains("error:"), "{extra:?} {env:?}: {stderr}");
    stderr
}

/// The public address is what exits dial, so an unspecified one (0.0.0.0,
/// ::), which no exit can use, is refused at start, by option and by
/// `PUBLIC_ADDRESS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unspecified_public_address_is_refused_at_start() {
    let relay = relay().await;
    for addr in ["0.0.0.0:0", "[::]:9000"] {
        let stderr = entry_fails(relay.value("relay"), &["--public-address", addr], &[]).await;
        assert!(stderr.contains("--public-address"), "{addr}: {stderr}");
        let stderr = entry_fails(relay.value("relay"), &[], &[("PUBLIC_ADDRESS", addr)]).await;
        assert!(stderr.contains("--public-address"), "{addr}: {stderr}");
    }
}

/// `PUBLIC=true` on `nws exit` is `--public`: the exit announces itself
/// and an entry with `--public-exits` fetches through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_env_var_makes_a_public_exit() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let exit = exit_env(
        &url,
        &dir,
        &["--allow-net", "127.0.0.1/32"],
        &[("PUBLIC", "true")],
    )
    .await;
    assert!(exit.has_value("public"), "{:?}", exit.values);
    let entry = entry(&url, &["--public-exits"]).await;
    assert_served(&entry, &backend.url("/hello")).await;
    assert!(
        entry
            .stderr()
            .contains(&format!("public exit {} announced", exit_hex(&exit))),
        "{}",
        entry.stderr()
    );
    assert_eq!(backend.request_count(), 2);
}

/// `PUBLIC_ADDRESS=127.0.0.1:0` on `nws entry` is `--public-address`: the
/// entry listens on a port the system picks, prints it, and the exit
/// dials it (`CONNECTR`) to bring the page back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_address_env_var_turns_on_reverse_connect() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let exit = exit(
        &url,
        &dir,
        &[
            "--backend",
            &backend.host_port(),
            "--allow-net",
            "127.0.0.1/32",
        ],
    )
    .await;
    let entry = entry_env(&url, &[], &[("PUBLIC_ADDRESS", "127.0.0.1:0")]).await;
    let public: std::net::SocketAddr = entry.value("public-address").parse().unwrap();
    assert_eq!(public.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_ne!(public.port(), 0);
    let page = format!("http://{}/hello", exit.value("domain"));
    let out = curl(&["--socks5-hostname", entry.value("socks5"), &page]).await;
    assert_eq!(out.status, 0, "{out:?}\nexit log:\n{}", exit.stderr());
    assert_eq!(out.stdout, HELLO_BODY);
    assert!(
        exit.stderr().contains("reverse connection open"),
        "{}",
        exit.stderr()
    );
    assert_eq!(backend.request_count(), 1);
}

/// A public exit with `--backend` too: streams to its own names (`.nostr`
/// domain, npub) go to the backend, on loopback, although the egress
/// policy (default here) refuses loopback for every other destination,
/// including the backend's own address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_exit_serves_its_own_names_from_its_backend() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let exit = exit(&url, &dir, &["--public", "--backend", &backend.host_port()]).await;
    let entry = entry(&url, &["--exit", exit.value("npub")]).await;
    for name in [exit.value("domain"), exit.value("npub")] {
        assert_served(&entry, &format!("http://{name}/hello")).await;
    }
    assert_eq!(backend.request_count(), 4);
    assert_refused(&entry, &backend.url("/hello")).await;
    assert_eq!(backend.request_count(), 4);
}

/// IPv6 literals reach a public exit unresolved and bracketed: with
/// `--allow-net ::1/128`, a backend on `[::1]` is served through both
/// proxies (HTTP: absolute form and `CONNECT`); without it, refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_destinations_through_a_public_exit() {
    let backend = HttpBackend::start_on(std::net::Ipv6Addr::LOCALHOST).await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let (dir, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let open = exit(&url, &dir, &["--public", "--allow-net", "::1/128"]).await;
    let closed = exit(&url, &dir2, &["--public"]).await;
    let page = backend.url("/hello");
    assert!(page.starts_with("http://[::1]:"), "{page}");

    let to_open = entry(&url, &["--exit", open.value("npub")]).await;
    assert_served(&to_open, &page).await;
    let proxy = format!("http://{}", to_open.value("http"));
    let out = curl_http(&["--proxytunnel", "--proxy", &proxy, &page]).await;
    assert_eq!((out.connect_code, out.http_code), (200, 200), "{out:?}");
    assert_eq!(out.body, HELLO_BODY);
    assert_eq!(backend.request_count(), 3);

    let to_closed = entry(&url, &["--exit", closed.value("npub")]).await;
    assert_refused(&to_closed, &page).await;
    assert_eq!(backend.request_count(), 3);
}

/// With `--public-exits` and no exit announced, a request waits (up to
/// the connect timeout) and then fails: SOCKS5 reply 3 (network
/// unreachable), HTTP 502, and the entry says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_announced_public_exit_is_network_unreachable() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let entry = entry(
        relay.value("relay"),
        &["--public-exits", "--connect-timeout", "1"],
    )
    .await;
    let page = backend.url("/hello");
    let out = curl(&["--socks5-hostname", entry.value("socks5"), &page]).await;
    assert_eq!(socks_code(&out.stderr), Some(3), "{out:?}");
    let proxy = format!("http://{}", entry.value("http"));
    let out = curl_http(&["--proxy", &proxy, &page]).await;
    assert_eq!(out.http_code, 502, "{out:?}");
    assert_eq!(backend.request_count(), 0);
    assert!(
        entry.stderr().contains("no public exit announced"),
        "{}",
        entry.stderr()
    );
}

/// A public exit stopped cleanly (SIGTERM) withdraws its announcement:
/// once the withdrawal has expired (2 s), the entry no longer tries it,
/// so no request waits for a dead exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanly_stopped_public_exit_is_not_tried() {
    let backend = HttpBackend::start().await;
    let relay = relay().await;
    let url = relay.value("relay").to_string();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let public = ["--public", "--allow-net", "127.0.0.1/32"];
    let stopped = exit(&url, &dir_a, &public).await;
    let live = exit(&url, &dir_b, &public).await;
    let entry = entry(&url, &["--public-exits", "--connect-timeout", "5"]).await;
    let stopped_hex = exit_hex(&stopped);
    for hex in [&stopped_hex, &exit_hex(&live)] {
        assert!(
            wait_for_log(&entry, &format!("public exit {hex} announced")).await,
            "the entry never saw {hex} announced:\n{}",
            entry.stderr()
        );
    }
    assert_eq!(stopped.terminate().await, Some(0));
    // The withdrawal's lifetime (WITHDRAWAL_LIFETIME), and a second more.
    tokio::time::sleep(Duration::from_secs(3)).await;

    for i in 0..4 {
        let out = curl(&[
            "--socks5-hostname",
            entry.value("socks5"),
            &backend.url("/hello"),
        ])
        .await;
        assert_eq!(out.status, 0, "request {i}: {out:?}\n{}", entry.stderr());
        assert_eq!(out.stdout, HELLO_BODY, "request {i}");
    }
    assert_eq!(backend.request_count(), 4);
    let log = entry.stderr();
    assert!(
        !log.contains(&format!("public exit {stopped_hex} failed")),
        "{log}"
    );
}
