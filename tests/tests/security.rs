//! Security properties (issue 7, `SECURITY.md`), each a test against the
//! real `nws` binary: loopback-only listeners by default, credentials that
//! leave an unauthenticated client nothing but the refusal, no system
//! resolver call for routed names, no secret key on any output, private
//! key files.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command as StdCommand;
use std::time::Duration;

use nostr_sdk::prelude::{Keys, Nip19Profile, PublicKey, RelayUrl, SecretKey, ToBech32};
use nws_tests::hostile::{listening_sockets, probe, DnsTrap, ReadyProcess, ResolverJail};
use nws_tests::process::{nws_bin, NwsProcess};
use nws_tests::{curl, curl_http, HttpBackend};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(10);

/// Relay, backend and exit on loopback; entries are started per test.
struct Service {
    relay: NwsProcess,
    backend: HttpBackend,
    exit: NwsProcess,
    dir: tempfile::TempDir,
}

impl Service {
    async fn start(exit_env: &[(&str, &str)]) -> Service {
        let backend = HttpBackend::start().await;
        let relay = NwsProcess::spawn(&["relay", "--listen", "127.0.0.1:0"]).await;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("exit.key");
        let exit = NwsProcess::spawn_env(
            &[
                "exit",
                "--relay",
                relay.value("relay"),
                "--key-file",
                key.to_str().unwrap(),
                "--backend",
                &backend.host_port(),
            ],
            exit_env,
        )
        .await;
        Service {
            relay,
            backend,
            exit,
            dir,
        }
    }

    fn relay_url(&self) -> &str {
        self.relay.value("relay")
    }
    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.exit.value("domain"))
    }
    fn secret_hex(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("exit.key"))
            .unwrap()
            .trim()
            .to_string()
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = StdCommand::new(nws_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// ---------------------------------------------------------------------------
// Loopback only
// ---------------------------------------------------------------------------

/// The entry's SOCKS5 and HTTP listeners and the relay default to
/// 127.0.0.1; a running entry and relay hold listening sockets on loopback
/// only, the exit none at all; another address is used only when given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_listens_on_loopback_only_unless_configured_otherwise() {
    let (_, help, _) = run(&["entry", "--help"], &[]);
    assert!(help.contains("[default: 127.0.0.1:1080]"), "{help}");
    assert!(help.contains("[default: 127.0.0.1:3128]"), "{help}");
    let (_, help, _) = run(&["relay", "--help"], &[]);
    assert!(help.contains("[default: 127.0.0.1:7777]"), "{help}");

    let svc = Service::start(&[]).await;
    assert!(
        listening_sockets(svc.exit.pid().unwrap()).is_empty(),
        "the exit listens: {:?}",
        listening_sockets(svc.exit.pid().unwrap())
    );
    let relay = listening_sockets(svc.relay.pid().unwrap());
    assert!(
        !relay.is_empty() && relay.iter().all(|a| a.ip().is_loopback()),
        "{relay:?}"
    );

    // Default listen addresses (the ports may be taken by something else
    // on this machine: then the failure must be about that port).
    let mut cmd = Command::new(nws_bin());
    cmd.args(["entry", "--relay", svc.relay_url()]);
    match ReadyProcess::start(cmd).await {
        Ok(entry) => {
            let pid = entry.pid().unwrap();
            let listening = listening_sockets(pid);
            eprintln!("entry with defaults listens on {listening:?}");
            assert_eq!(listening.len(), 2, "{listening:?}");
            assert!(
                listening.iter().all(|a| a.ip() == Ipv4Addr::LOCALHOST),
                "{listening:?}"
            );
            let ports: Vec<u16> = listening.iter().map(|a| a.port()).collect();
            assert!(ports.contains(&1080) && ports.contains(&3128), "{ports:?}");
        }
        Err(e) => {
            assert!(e.contains("Address already in use"), "{e}");
            eprintln!("default ports taken here; checked the defaults in --help only");
        }
    }

    // Configured otherwise: exactly the address given.
    let entry = NwsProcess::spawn(&[
        "entry",
        "--no-auth",
        "--relay",
        svc.relay_url(),
        "--socks",
        "127.0.0.2:0",
        "--http",
        "off",
    ])
    .await;
    let listening = listening_sockets(entry.pid().unwrap());
    assert_eq!(listening.len(), 1, "{listening:?}");
    assert_eq!(listening[0].ip(), Ipv4Addr::new(127, 0, 0, 2));
    let out = curl(&[
        "--socks5-hostname",
        entry.value("socks5"),
        &svc.url("hello"),
    ])
    .await;
    assert_eq!(out.stdout, svc.backend.file("hello"), "{out:?}");
}

// ---------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------

/// With `--auth`, a client without the credentials (or with wrong ones)
/// gets the refusal and nothing else: no stream is opened, nothing reaches
/// the exit or the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_credentials_a_client_without_them_gets_nothing_but_the_refusal() {
    let svc = Service::start(&[]).await;
    let entry = NwsProcess::spawn(&[
        "entry",
        "--relay",
        svc.relay_url(),
        "--socks",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--auth",
        "alice:s3cret",
    ])
    .await;
    let socks = entry.value("socks5");
    let http = entry.value("http");
    let domain = svc.exit.value("domain");
    let request = {
        let mut v = vec![5, 1, 0, 3, domain.len() as u8];
        v.extend_from_slice(domain.as_bytes());
        v.extend_from_slice(&[0, 80]);
        v.extend_from_slice(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
        v
    };
    let auth = |user: &[u8], pass: &[u8]| {
        let mut v = vec![1, user.len() as u8];
        v.extend_from_slice(user);
        v.push(pass.len() as u8);
        v.extend_from_slice(pass);
        v
    };
    let socks_cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "no authentication offered",
            [&[5, 1, 0][..], &request].concat(),
            vec![5, 0xFF],
        ),
        (
            "wrong password",
            [&[5, 1, 2][..], &auth(b"alice", b"wrong"), &request].concat(),
            vec![5, 2, 1, 1],
        ),
        (
            "wrong user",
            [&[5, 1, 2][..], &auth(b"bob", b"s3cret"), &request].concat(),
            vec![5, 2, 1, 1],
        ),
        (
            "empty credentials",
            [&[5, 1, 2][..], &auth(b"", b""), &request].concat(),
            vec![5, 2, 1, 1],
        ),
        (
            "request instead of credentials",
            [&[5, 2, 0, 2][..], &request].concat(),
            vec![5, 2, 1, 1],
        ),
    ];
    for (what, bytes, want) in socks_cases {
        let p = probe(socks, &bytes, false, WAIT).await;
        assert!(p.closed, "{what}: left open");
        assert_eq!(p.reply, want, "{what}: got more than the refusal");
    }
    let get = |extra: &str| {
        format!("GET http://{domain}/hello HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes()
    };
    let connect = format!("CONNECT {domain}:80 HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n\r\nGET /hello HTTP/1.1\r\n\r\n");
    let http_cases: Vec<(&str, Vec<u8>)> = vec![
        ("no Proxy-Authorization", get("")),
        (
            "wrong password",
            get("Proxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n"),
        ),
        (
            "credentials in Authorization",
            get("Authorization: Basic YWxpY2U6czNjcmV0\r\n"),
        ),
        (
            "another scheme",
            get("Proxy-Authorization: Bearer YWxpY2U6czNjcmV0\r\n"),
        ),
        ("CONNECT with a wrong password", connect.into_bytes()),
    ];
    for (what, bytes) in http_cases {
        let p = probe(http, &bytes, false, WAIT).await;
        assert!(p.closed, "{what}: left open");
        assert_eq!(p.http_status(), Some(407), "{what}: {}", p.text());
        assert!(p.text().contains("Proxy-Authenticate: Basic"), "{what}");
        assert!(
            p.text()
                .ends_with("\r\n\r\nproxy authentication required\n"),
            "{what}: {}",
            p.text()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        svc.backend.request_count(),
        0,
        "a refused client reached the backend"
    );
    assert!(
        !svc.exit.stderr().contains("stream "),
        "a refused client reached the exit:\n{}",
        svc.exit.stderr()
    );
    assert_eq!(
        entry.stderr().matches("SOCKS5 client refused").count(),
        5,
        "{}",
        entry.stderr()
    );

    // The right credentials work on both ports.
    let out = curl(&[
        "--proxy",
        &format!("socks5h://alice:s3cret@{socks}"),
        &svc.url("hello"),
    ])
    .await;
    assert_eq!(out.stdout, svc.backend.file("hello"), "{out:?}");
    let out = curl_http(&[
        "--proxy",
        &format!("http://{http}"),
        "--proxy-user",
        "alice:s3cret",
        &svc.url("hello"),
    ])
    .await;
    assert_eq!(out.body, svc.backend.file("hello"), "{out:?}");
}

/// Without `--auth` the entry makes random credentials at start and prints
/// them (the mobile proxy does the same): a local client without them is
/// refused on both ports, a client with them is served; `--no-auth` is the
/// explicit way to an open proxy. A second start makes other credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_requires_random_credentials_by_default() {
    let svc = Service::start(&[]).await;
    let args = [
        "entry",
        "--relay",
        svc.relay_url(),
        "--socks",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ];
    let entry = NwsProcess::spawn(&args).await;
    let (user, pass) = (entry.value("proxy-user"), entry.value("proxy-password"));
    assert!(!user.is_empty(), "no user printed");
    assert_eq!(pass.len(), 32, "password of 128 bits in hex: {pass}");
    let (socks, http) = (entry.value("socks5"), entry.value("http"));

    let out = curl(&["--socks5-hostname", socks, &svc.url("hello")]).await;
    assert!(out.stdout.is_empty(), "served without credentials: {out:?}");
    let p = probe(socks, &[5, 1, 0], false, WAIT).await;
    assert_eq!(p.reply, vec![5, 0xFF], "no acceptable method");
    let out = curl_http(&["--proxy", &format!("http://{http}"), &svc.url("hello")]).await;
    assert_eq!(out.http_code, 407, "{:?}", out.stderr);

    let with = format!("{user}:{pass}");
    let out = curl(&[
        "--proxy",
        &format!("socks5h://{with}@{socks}"),
        &svc.url("hello"),
    ])
    .await;
    assert_eq!(out.stdout, svc.backend.file("hello"), "{out:?}");
    let out = curl_http(&[
        "--proxy",
        &format!("http://{http}"),
        "--proxy-user",
        &with,
        &svc.url("hello"),
    ])
    .await;
    assert_eq!(out.body, svc.backend.file("hello"), "{out:?}");

    let again = NwsProcess::spawn(&args).await;
    assert_ne!(again.value("proxy-password"), pass, "credentials per start");
    let open = NwsProcess::spawn(&[&["entry", "--no-auth"][..], &args[1..]].concat()).await;
    assert!(
        !open.has_value("proxy-password"),
        "--no-auth prints no credentials"
    );
    let out = curl(&["--socks5-hostname", open.value("socks5"), &svc.url("hello")]).await;
    assert_eq!(out.stdout, svc.backend.file("hello"), "{out:?}");
}

// ---------------------------------------------------------------------------
// No DNS leak
// ---------------------------------------------------------------------------

/// The entry runs in a mount namespace whose resolver configuration sends
/// every lookup (`hosts: dns`, no hosts file) to a trap on 127.0.0.153:53
/// that records it and fails it. A control lookup from the same namespace
/// reaches the trap; the entry still reaches the service by `.nostr`
/// domain, npub and nprofile through both proxies, refuses an ordinary
/// name, and the trap records no query at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_names_never_reach_the_system_resolver() {
    let trap = DnsTrap::start(Ipv4Addr::new(127, 0, 0, 153))
        .await
        .expect("a DNS trap on 127.0.0.153:53 (the tests run as root)");
    let svc = Service::start(&[]).await;
    let jail = ResolverJail::trap(trap.ip);
    let jail = |inner: &str| jail.command(inner);

    // Control: a lookup in the jail reaches the trap (and fails).
    let control = jail("getent hosts leak-probe.example")
        .output()
        .await
        .unwrap();
    assert!(!control.status.success(), "the control lookup succeeded");
    assert!(
        trap.queries().iter().any(|q| q == "leak-probe.example"),
        "the trap saw no control query ({:?}); stderr: {}",
        trap.queries(),
        String::from_utf8_lossy(&control.stderr)
    );
    let before = trap.queries().len();

    let nws = nws_bin();
    let mut cmd = jail(&format!(
        "{} entry --no-auth --relay {} --socks 127.0.0.1:0 --http 127.0.0.1:0",
        nws.display(),
        svc.relay_url()
    ));
    cmd.env("RUST_LOG", "info,nws_core=debug,nws_protocol=debug");
    let entry = ReadyProcess::start(cmd).await.expect("entry in the jail");
    let socks = entry.value("socks5").to_string();
    let http = format!("http://{}", entry.value("http"));

    let exit_pk = PublicKey::parse(svc.exit.value("npub")).unwrap();
    let nprofile = Nip19Profile::new(exit_pk, [RelayUrl::parse(svc.relay_url()).unwrap()])
        .to_bech32()
        .unwrap();
    let hosts = [
        svc.exit.value("domain").to_string(),
        svc.exit.value("npub").to_string(),
        nprofile,
    ];
    for host in &hosts {
        let url = format!("http://{host}/hello");
        let out = curl(&["--socks5-hostname", &socks, &url]).await;
        assert_eq!(
            out.stdout,
            svc.backend.file("hello"),
            "SOCKS5 {host}: {out:?}"
        );
        let out = curl(&["--proxy", &http, &url]).await;
        assert_eq!(
            out.stdout,
            svc.backend.file("hello"),
            "HTTP {host}: {out:?}"
        );
    }
    let out = curl_http(&["--proxy", &http, "http://example.com/"]).await;
    assert_eq!(out.http_code, 403, "{out:?}");
    let out = curl(&["--socks5-hostname", &socks, "http://leak-check.example/"]).await;
    assert_ne!(out.status, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leaked = &trap.queries()[before..];
    assert!(
        leaked.is_empty(),
        "the entry asked the resolver: {leaked:?}"
    );
    eprintln!(
        "resolver trap: control query seen, {} queries from the entry while reaching {} names",
        leaked.len(),
        hosts.len()
    );
}

/// The same property for ordinary host names sent to a public exit. The
/// entry runs in the trap jail as above, once with `--public-exits` and
/// once pinned with `--exit npub`; the public exit runs in a jail of its own
/// whose hosts file (`hosts: files`, no DNS) maps `leak-check.example` and
/// `localhost` to 127.0.0.1, where the backend listens. Both names come
/// back with the backend's page through both proxies, so the exit resolved
/// them; the trap, which a control lookup from the entry's jail reaches,
/// records no query from the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_for_public_exits_never_reach_the_entrys_resolver() {
    // Its own address: the test above may run at the same time.
    let trap = DnsTrap::start(Ipv4Addr::new(127, 0, 0, 154))
        .await
        .expect("a DNS trap on 127.0.0.154:53 (the tests run as root)");
    let backend = HttpBackend::start().await;
    let relay = NwsProcess::spawn(&["relay", "--listen", "127.0.0.1:0"]).await;
    let url = relay.value("relay");
    let nws = nws_bin();

    let exit_jail = ResolverJail::new(
        "nameserver 127.0.0.1\n",
        "hosts: files\n",
        "127.0.0.1 localhost leak-check.example\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = exit_jail.command(&format!(
        "{} exit --relay {url} --key-file {} --public --allow-net 127.0.0.1/32",
        nws.display(),
        dir.path().join("exit.key").display()
    ));
    cmd.env("RUST_LOG", "info,nws_core=debug,nws_protocol=debug");
    let exit = ReadyProcess::start(cmd)
        .await
        .expect("public exit in its jail");

    let entry_jail = ResolverJail::trap(trap.ip);
    let control = entry_jail
        .command("getent hosts leak-probe.example")
        .output()
        .await
        .unwrap();
    assert!(!control.status.success(), "the control lookup succeeded");
    assert!(
        trap.queries().iter().any(|q| q == "leak-probe.example"),
        "the trap saw no control query ({:?}); stderr: {}",
        trap.queries(),
        String::from_utf8_lossy(&control.stderr)
    );
    let before = trap.queries().len();

    let names = ["leak-check.example", "localhost"];
    let pinned = format!("--exit {}", exit.value("npub"));
    for how in ["--public-exits", pinned.as_str()] {
        let mut cmd = entry_jail.command(&format!(
            "{} entry --no-auth --relay {url} --socks 127.0.0.1:0 --http 127.0.0.1:0 {how}",
            nws.display(),
        ));
        cmd.env("RUST_LOG", "info,nws_core=debug,nws_protocol=debug");
        let entry = ReadyProcess::start(cmd).await.expect("entry in the jail");
        let socks = entry.value("socks5").to_string();
        let http = format!("http://{}", entry.value("http"));
        for name in names {
            let page = format!("http://{name}:{}/hello", backend.addr.port());
            let out = curl(&["--socks5-hostname", &socks, &page]).await;
            assert_eq!(
                out.stdout,
                backend.file("hello"),
                "{how}, SOCKS5 {page}: {out:?}\nentry log:\n{}\nexit log:\n{}",
                entry.stderr(),
                exit.stderr()
            );
            let out = curl_http(&["--proxy", &http, &page]).await;
            assert_eq!(out.http_code, 200, "{how}, HTTP {page}: {out:?}");
            assert_eq!(out.body, backend.file("hello"), "{how}, HTTP {page}");
        }
    }
    assert_eq!(backend.request_count(), 2 * 2 * names.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leaked = &trap.queries()[before..];
    assert!(
        leaked.is_empty(),
        "the entry asked the resolver: {leaked:?}"
    );
}

// ---------------------------------------------------------------------------
// Secret keys
// ---------------------------------------------------------------------------

/// No command prints or logs the exit's secret key (hex, either case, or
/// nsec), even at `RUST_LOG=trace`, including while streams run and when
/// the key is given by environment or is malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_prints_or_logs_a_secret_key() {
    let trace = [("RUST_LOG", "trace")];
    let svc = Service::start(&trace).await;
    let hex = svc.secret_hex();
    let nsec = SecretKey::parse(&hex).unwrap().to_bech32().unwrap();
    let key_file = svc.dir.path().join("exit.key");
    let key_path = key_file.to_str().unwrap();
    let mut outputs: Vec<(String, String)> = Vec::new();

    // A stream through the exit, both ends at trace level.
    let entry = NwsProcess::spawn_env(
        &[
            "entry",
            "--no-auth",
            "--relay",
            svc.relay_url(),
            "--socks",
            "127.0.0.1:0",
            "--http",
            "off",
        ],
        &trace,
    )
    .await;
    let out = curl(&["--socks5-hostname", entry.value("socks5"), &svc.url("1k")]).await;
    assert_eq!(out.stdout, svc.backend.file("1k"));
    outputs.push(("exit (key file, serving)".into(), svc.exit.stderr()));
    outputs.push(("entry".into(), entry.stderr()));

    // The same key from the environment, as hex and as nsec.
    for (what, value) in [("hex", hex.as_str()), ("nsec", nsec.as_str())] {
        let exit = NwsProcess::spawn_env(
            &[
                "exit",
                "--relay",
                svc.relay_url(),
                "--backend",
                &svc.backend.host_port(),
            ],
            &[("RUST_LOG", "trace"), ("NOSTR_PRIVATE_KEY", value)],
        )
        .await;
        outputs.push((format!("exit (NOSTR_PRIVATE_KEY {what})"), exit.stderr()));
        let printed = exit.values.values().cloned().collect::<Vec<_>>().join("\n");
        outputs.push((format!("exit stdout ({what})"), printed));
    }

    // One-shot commands, and errors about keys.
    let mut bad_hex = hex.clone();
    bad_hex.replace_range(..4, "zzzz");
    let garbage_file = svc.dir.path().join("garbage.key");
    std::fs::write(&garbage_file, format!("{}\n", &hex[..60])).unwrap();
    let new_key = svc.dir.path().join("new.key");
    let relay = svc.relay_url().to_string();
    let backend = svc.backend.host_port();
    type Env<'a> = Vec<(&'a str, &'a str)>;
    let commands: Vec<(Vec<&str>, Env)> = vec![
        (vec!["keygen", "--out", new_key.to_str().unwrap()], vec![]),
        (
            vec![
                "domain",
                "encode",
                "--key-file",
                key_path,
                "--relay",
                &relay,
            ],
            vec![],
        ),
        (vec!["domain", "decode", svc.exit.value("domain")], vec![]),
        (
            vec!["exit", "--help"],
            vec![("NOSTR_PRIVATE_KEY", hex.as_str())],
        ),
        (
            vec!["exit", "--relay", "ws://127.0.0.1:9", "--backend", &backend],
            vec![
                ("NOSTR_PRIVATE_KEY", bad_hex.as_str()),
                ("RUST_LOG", "trace"),
            ],
        ),
        (
            vec![
                "exit",
                "--relay",
                "ws://127.0.0.1:9",
                "--backend",
                &backend,
                "--key-file",
                garbage_file.to_str().unwrap(),
            ],
            vec![("RUST_LOG", "trace")],
        ),
        (
            vec![
                "exit",
                "--relay",
                "ws://127.0.0.1:9",
                "--backend",
                &backend,
                "--key-file",
                key_path,
            ],
            vec![("RUST_LOG", "trace")],
        ),
        (vec!["demo", "--once"], vec![("RUST_LOG", "trace")]),
    ];
    for (args, env) in commands {
        let (_, out, err) = run(&args, &env);
        outputs.push((format!("nws {}", args.join(" ")), format!("{out}\n{err}")));
    }
    let new_secret = std::fs::read_to_string(&new_key)
        .unwrap()
        .trim()
        .to_string();
    let garbage = hex[..60].to_string();
    for (what, text) in &outputs {
        let lower = text.to_ascii_lowercase();
        for secret in [&hex, &new_secret, &bad_hex[4..].to_string(), &garbage] {
            assert!(
                !lower.contains(&secret.to_ascii_lowercase()),
                "{what} shows a secret key:\n{text}"
            );
        }
        assert!(!lower.contains("nsec1"), "{what} shows an nsec:\n{text}");
    }
    eprintln!("checked {} outputs", outputs.len());
}

/// Key files are created with mode 0600 whatever the umask, by `keygen`
/// and by `exit --key-file` for a missing file.
#[test]
fn key_files_are_created_0600_even_with_a_permissive_umask() {
    let dir = tempfile::tempdir().unwrap();
    let nws = nws_bin();
    for (name, args) in [
        ("keygen.key", "keygen --out {}".to_string()),
        (
            "exit.key",
            "exit --relay ws://127.0.0.1:9 --backend 127.0.0.1:9 --key-file {}".to_string(),
        ),
    ] {
        let path = dir.path().join(name);
        let script = format!(
            "umask 000; exec {} {}",
            nws.display(),
            args.replace("{}", path.to_str().unwrap())
        );
        let out = StdCommand::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(path.exists(), "{name} not created: {out:?}");
        assert_eq!(mode(&path), 0o600, "{name}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(Keys::parse(text.trim()).is_ok(), "{name} holds no key");
    }
}

/// A symlink planted where a key file is to be created is not followed:
/// the command fails and no key lands at the link's target.
/// A key file other users may read is still used, with a warning that
/// says how to fix it; a private one gets no warning.
#[test]
fn a_key_file_readable_by_others_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.key");
    let p = path.to_str().unwrap();
    let (code, _, _) = run(&["keygen", "--out", p], &[]);
    assert_eq!(code, 0);
    let args = [
        "domain",
        "encode",
        "--key-file",
        p,
        "--relay",
        "ws://127.0.0.1:7777",
    ];
    let (code, _, err) = run(&args, &[]);
    assert_eq!(code, 0);
    assert!(!err.contains("other users may read"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = run(&args, &[]);
    assert_eq!(code, 0, "still used");
    assert!(out.contains(".nostr"), "{out}");
    assert!(err.contains("has mode 644"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn key_file_creation_does_not_follow_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    let link = dir.path().join("exit.key");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let link_text = link.to_str().unwrap();
    for args in [
        vec!["keygen", "--out", link_text],
        vec![
            "exit",
            "--relay",
            "ws://127.0.0.1:9",
            "--backend",
            "127.0.0.1:9",
            "--key-file",
            link_text,
        ],
    ] {
        let (code, _, err) = run(&args, &[]);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains("cannot create key file"), "{args:?}: {err}");
        assert!(!target.exists(), "{args:?} wrote a key through the link");
    }
}
