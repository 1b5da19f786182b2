//! `nws`: the operator's command for Nostr Web Services — an entry proxy, an
//! exit node, an embedded relay, keys and `.nostr` names, and a demo that
//! runs the whole path on loopback.
//!
//! Settings come from flags, from the reference implementation's environment
//! variables where they exist (`NOSTR_RELAYS` separated by `;`,
//! `NOSTR_PRIVATE_KEY`, `BACKEND_HOST`, `PUBLIC`, `HTTPS_PORT`,
//! `HTTPS_TARGET`, `PUBLIC_ADDRESS`), and from a `.env` file in the working
//! directory.

mod demo;
mod keys;
mod metrics;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nostr::nips::nip19::ToBech32;
use nostr::{PublicKey, RelayUrl};
use nws_core::entry::{Credentials, EntryConfig, EntryProxy};
use nws_core::exit::{ExitConfig, ExitNode, HttpsFront};
use nws_core::names::{decode_nostr_domain, encode_nostr_domain, parse_host};
use nws_core::policy::{parse_net, EgressPolicy, IpNet};
use nws_relay::EmbeddedRelay;

#[derive(Parser)]
#[command(
    name = "nws",
    version,
    about = "Nostr Web Services: TCP streams over Nostr relays"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new secret key (hex) to a file readable only by its owner; print the npub.
    Keygen {
        /// File to create (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
    },
    /// Encode or decode `.nostr` domains.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Run the embedded relay.
    Relay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7777")]
        listen: SocketAddr,
    },
    /// Run an exit node: in front of one backend (private service), as a
    /// public exit, and/or with an HTTPS front.
    Exit(ExitArgs),
    /// Run an entry proxy (SOCKS5 and HTTP) on loopback.
    Entry(EntryArgs),
    /// Print an exit's HTTPS front certificate (PEM), fetched from its
    /// kind-38334 event and checked against the exit's key.
    Cert {
        /// The exit: `.nostr` domain, npub or nprofile.
        name: String,
        /// Relay URL for a name without relays (repeatable; or NOSTR_RELAYS).
        #[command(flatten)]
        relays: RelayArgs,
        /// Seconds to wait for the relays.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Run relay, exit, a small web backend and an entry on loopback, and
    /// fetch a page through them.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum DomainCommand {
    /// Print the `.nostr` domain of a public key and its relays.
    Encode {
        /// Key file whose public key to use.
        #[arg(long, conflicts_with = "pubkey", required_unless_present = "pubkey")]
        key_file: Option<PathBuf>,
        /// Public key, hex or npub.
        #[arg(long)]
        pubkey: Option<String>,
        /// Relay URL (repeatable).
        #[arg(long = "relay")]
        relays: Vec<RelayUrl>,
    },
    /// Print the public key (hex and npub) and relays of a `.nostr`, npub or nprofile name.
    Decode {
        /// The name.
        name: String,
    },
}

/// Relays from `--relay` or `NOSTR_RELAYS` (`;`-separated).
#[derive(Args, Clone)]
struct RelayArgs {
    /// Relay URL (repeatable; or NOSTR_RELAYS, separated by `;`).
    #[arg(long = "relay", env = "NOSTR_RELAYS", value_delimiter = ';')]
    relays: Vec<RelayUrl>,
    /// Also trust the CA certificates in this PEM file for wss:// relays,
    /// besides the Mozilla roots (repeatable; the NWS_RELAY_CA environment
    /// variable, paths separated by `:`, works too).
    #[arg(long = "relay-ca")]
    relay_ca: Vec<PathBuf>,
}

impl RelayArgs {
    /// Trusts the extra CAs given; call before connecting.
    fn trust_extra_cas(&self) -> Result<()> {
        for path in &self.relay_ca {
            nws_core::relay_tls::add_extra_ca_file(path).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[derive(Args)]
struct ExitArgs {
    #[command(flatten)]
    relays: RelayArgs,
    /// File holding the exit's secret key (hex or nsec); created (mode 0600) if missing.
    #[arg(long, required_unless_present = "private_key")]
    key_file: Option<PathBuf>,
    /// The exit's secret key (hex or nsec) instead of a key file.
    #[arg(long, env = "NOSTR_PRIVATE_KEY", hide_env_values = true)]
    private_key: Option<String>,
    /// The backend, `host:port`: every stream of a private-service exit;
    /// streams to the exit's own names on a public exit.
    #[arg(long, env = "BACKEND_HOST")]
    backend: Option<String>,
    /// Public exit: dial the hosts entries name (resolved here, checked
    /// against the egress policy) and announce the exit every 10 s (kind 38333).
    #[arg(long, env = "PUBLIC", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    public: bool,
    /// Allow this network (CIDR) although it is refused by default, e.g.
    /// 127.0.0.1/32 (repeatable).
    #[arg(long = "allow-net", value_parser = parse_net)]
    allow_nets: Vec<IpNet>,
    /// Refuse this network (CIDR) too (repeatable; wins over --allow-net).
    #[arg(long = "deny-net", value_parser = parse_net)]
    deny_nets: Vec<IpNet>,
    /// Allow only these destination ports (repeatable; default: every port).
    #[arg(long = "allow-port")]
    allow_ports: Vec<u16>,
    /// HTTPS front: streams to this port of the exit's `.nostr` names (all
    /// streams, without --backend) get TLS terminated here with the exit's
    /// certificate (published as kind 38334).
    #[arg(long, env = "HTTPS_PORT", requires = "https_target")]
    https_port: Option<u16>,
    /// Where the HTTPS front sends the decrypted bytes, `host:port`
    /// (`http://host:port` accepted).
    #[arg(long, env = "HTTPS_TARGET", requires = "https_port")]
    https_target: Option<String>,
    /// Most streams open at once.
    #[arg(long, default_value_t = 256)]
    max_streams: usize,
    /// Answer every entry in the legacy format (as the reference exit does).
    #[arg(long)]
    legacy: bool,
    /// Highest stream protocol version to accept: 3 (binary frames, the
    /// default) or 2 (JSON, as earlier releases speak).
    #[arg(long, default_value_t = nws_core::protocol::PROTOCOL_VERSION, value_parser = clap::value_parser!(u32).range(2..=3))]
    stream_version: u32,
    /// Only this entry key (npub or hex) may open streams (repeatable; default: anyone).
    #[arg(long = "allow-entry")]
    allow_entries: Vec<String>,
    /// Most streams one entry key may have open at once.
    #[arg(long, default_value_t = 64)]
    max_streams_per_entry: usize,
    /// Most new streams one entry key may open per minute.
    #[arg(long, default_value_t = 600)]
    max_new_streams_per_minute: u32,
    /// Drop events whose created_at is more than this many seconds from now (replay protection).
    #[arg(long, default_value_t = 60)]
    replay_window: u64,
    /// Directory of the journal of served streams, which keeps a request
    /// from being served twice across restarts (relays that store ephemeral
    /// events hand old CONNECTs out again). Default: the key file's
    /// directory, else $XDG_STATE_HOME/nws or ~/.local/state/nws; `off`
    /// keeps it in memory only.
    #[arg(long, env = "NWS_STATE_DIR")]
    state_dir: Option<String>,
    /// This process's name among the exit processes that share the key (up
    /// to 64 ASCII letters, digits, `-`, `_`, `.`); default: random at every
    /// start. Each stream is served by one live instance.
    #[arg(long, env = "NWS_INSTANCE")]
    instance: Option<String>,
    /// Serve GET /metrics (Prometheus/OpenMetrics text) on this loopback
    /// address, e.g. 127.0.0.1:9464.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

/// Where the exit keeps its journal (see `--state-dir`).
fn state_dir(arg: Option<&str>, key_file: Option<&Path>) -> Option<PathBuf> {
    match arg {
        Some("off") => return None,
        Some(dir) => return Some(PathBuf::from(dir)),
        None => {}
    }
    if let Some(dir) = key_file.and_then(Path::parent) {
        return Some(if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_path_buf()
        });
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("nws"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/nws"))
}

#[derive(Args)]
struct EntryArgs {
    #[command(flatten)]
    relays: RelayArgs,
    /// SOCKS5 listen address (`off` to disable).
    #[arg(long, default_value = "127.0.0.1:1080")]
    socks: String,
    /// HTTP proxy listen address (`off` to disable).
    #[arg(long, default_value = "127.0.0.1:3128")]
    http: String,
    /// Also listen here as an HTTP proxy for WebViews and browsers, which
    /// cannot send proxy credentials: none are asked for, and only NWS names
    /// (.nostr, npub1…, nprofile1…) are served, to the exits they name (never
    /// --exit or public exits); other hosts get 403. Off by default.
    #[arg(long)]
    webview_listen: Option<SocketAddr>,
    /// Require these proxy credentials, `USER:PASS`. Without it the proxy
    /// makes random credentials at start and prints them (`proxy-user:`,
    /// `proxy-password:`), so other local users and programs cannot use it.
    #[arg(long, conflicts_with = "no_auth")]
    auth: Option<String>,
    /// Accept every local client without credentials (as the reference
    /// implementation does). Anything that can reach the port can then use
    /// your route.
    #[arg(long)]
    no_auth: bool,
    /// Most client connections served at once; past it clients are refused
    /// with SOCKS5 reply 1 or HTTP 503.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// An exit (npub or hex) that speaks only the legacy format (repeatable).
    #[arg(long = "legacy-exit")]
    legacy_exits: Vec<String>,
    /// Speak the legacy format to every exit.
    #[arg(long)]
    legacy: bool,
    /// Highest stream protocol version to offer: 3 (binary frames, the
    /// default) or 2 (JSON, as earlier releases speak).
    #[arg(long, default_value_t = nws_core::protocol::PROTOCOL_VERSION, value_parser = clap::value_parser!(u32).range(2..=3))]
    stream_version: u32,
    /// Seconds to wait for relays and for the exit's answer.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Use this persistent key (created, mode 0600, if missing) for every
    /// stream instead of a fresh key per stream; for exits with --allow-entry.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Send hosts that are not NWS names through public exits discovered
    /// on the relays (kind-38333 announcements), names unresolved.
    #[arg(long)]
    public_exits: bool,
    /// Send hosts that are not NWS names through this exit (npub or nprofile).
    /// Not with --public-exits: a pinned exit is the only one used.
    #[arg(long, conflicts_with = "public_exits")]
    exit: Option<String>,
    /// Reverse connect: listen on HOST:PORT and have exits connect there
    /// (CONNECTR); the stream's bytes then travel over plain TCP, not Nostr.
    /// HOST is sent to the exits as is: not 0.0.0.0 or ::.
    #[arg(long, env = "PUBLIC_ADDRESS")]
    public_address: Option<SocketAddr>,
    /// Answer SOCKS5 and HTTP CONNECT clients at once (once the name routes),
    /// so that their first bytes ride in the stream's CONNECT: one relay
    /// round trip less to the first byte. An exit's refusal then reaches the
    /// client as a reset connection, not a SOCKS5 reply code or HTTP status.
    #[arg(long)]
    early_reply: bool,
    /// Serve GET /metrics (Prometheus/OpenMetrics text) on this loopback
    /// address, e.g. 127.0.0.1:9465.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

fn main() {
    let _ = dotenvy::dotenv();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(format!("cannot start the runtime: {e}")),
    };
    if let Err(e) = rt.block_on(run(cli.command)) {
        fail(e);
    }
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}

type Result<T> = std::result::Result<T, String>;

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Keygen { out } => {
            let keys = keys::generate_key_file(&out)?;
            println!("{}", npub(&keys.public_key()));
            Ok(())
        }
        Command::Domain(DomainCommand::Encode {
            key_file,
            pubkey,
            relays,
        }) => {
            let pk = match (key_file, pubkey) {
                (Some(f), _) => keys::load_key_file(&f)?.public_key(),
                (None, Some(p)) => {
                    PublicKey::parse(&p).map_err(|e| format!("bad public key: {e}"))?
                }
                (None, None) => return Err("give --key-file or --pubkey".into()),
            };
            println!(
                "{}",
                encode_nostr_domain(&pk, &relays).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        Command::Domain(DomainCommand::Decode { name }) => {
            let addr = if name.ends_with(".nostr") || name.ends_with(".nostr.") {
                decode_nostr_domain(&name).map_err(|e| e.to_string())?
            } else {
                parse_host(&name)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("`{name}` is not a .nostr, npub or nprofile name"))?
            };
            println!("pubkey: {}", addr.public_key.to_hex());
            println!("npub: {}", npub(&addr.public_key));
            for r in &addr.relays {
                println!("relay: {r}");
            }
            Ok(())
        }
        Command::Relay { listen } => {
            let stop = shutdown_signal();
            let relay = EmbeddedRelay::start(listen)
                .await
                .map_err(|e| e.to_string())?;
            println!("relay: {}", relay.url());
            println!("ready");
            stop.await;
            relay.shutdown();
            Ok(())
        }
        Command::Exit(args) => run_exit(args).await,
        Command::Entry(args) => run_entry(args).await,
        Command::Cert {
            name,
            relays,
            timeout,
        } => {
            relays.trust_extra_cas()?;
            let pem = nws_core::tls::fetch_certificate(
                &name,
                &relays.relays,
                Duration::from_secs(timeout),
            )
            .await
            .map_err(|e| e.to_string())?;
            print!("{pem}");
            if !pem.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
    }
}

async fn run_exit(args: ExitArgs) -> Result<()> {
    args.relays.trust_extra_cas()?;
    let keys = match (&args.private_key, &args.key_file) {
        (Some(sk), _) => keys::parse_secret(sk)?,
        (None, Some(f)) => keys::load_or_create_key_file(f)?,
        (None, None) => return Err("give --key-file or NOSTR_PRIVATE_KEY".into()),
    };
    if args.relays.relays.is_empty() {
        return Err("give at least one --relay (or NOSTR_RELAYS)".into());
    }
    if args.backend.is_none() && !args.public && args.https_port.is_none() {
        return Err("give --backend, --public or --https-port (with --https-target)".into());
    }
    let mut config = ExitConfig::new(args.relays.relays, keys, args.backend.unwrap_or_default());
    config.public = args.public;
    config.egress = EgressPolicy {
        allow_nets: args.allow_nets,
        deny_nets: args.deny_nets,
        allow_ports: args.allow_ports,
    };
    if let (Some(port), Some(target)) = (args.https_port, args.https_target) {
        let target = target
            .strip_prefix("http://")
            .unwrap_or(&target)
            .trim_end_matches('/')
            .to_string();
        config.https = Some(HttpsFront { port, target });
    }
    config.max_streams = args.max_streams;
    config.legacy = args.legacy;
    config.stream.max_version = args.stream_version;
    config.max_streams_per_entry = args.max_streams_per_entry;
    config.max_new_streams_per_minute = args.max_new_streams_per_minute;
    config.replay_window = Duration::from_secs(args.replay_window);
    config.state_dir = state_dir(args.state_dir.as_deref(), args.key_file.as_deref());
    if !args.allow_entries.is_empty() {
        let keys = args
            .allow_entries
            .iter()
            .map(|k| PublicKey::parse(k).map_err(|e| format!("bad --allow-entry `{k}`: {e}")))
            .collect::<Result<Vec<_>>>()?;
        config.allowed_entries = Some(keys);
    }
    config.instance = args.instance;
    let stop = shutdown_signal();
    let exit = Arc::new(ExitNode::start(config).await.map_err(|e| e.to_string())?);
    print_exit_names(&exit);
    println!("instance: {}", exit.instance());
    if args.public {
        println!("public: announced every 10 s");
    }
    if let Some(port) = args.https_port {
        println!("https-port: {port}");
    }
    let metrics = serve_metrics(args.metrics_listen, "exit", &exit, |n| async move {
        n.metrics().await
    })
    .await?;
    println!("ready");
    stop.await;
    if let Some(task) = metrics {
        task.abort();
        let _ = task.await;
    }
    match Arc::try_unwrap(exit) {
        Ok(exit) => exit.stop().await,
        // A scrape still holds the node: the process ends anyway.
        Err(_) => log::warn!("exit not stopped cleanly: a metrics request is in progress"),
    }
    Ok(())
}

/// With `--metrics-listen ADDR`: serves `GET /metrics` for `node`, read by
/// `read`, and prints `metrics: URL`. Holds the node weakly, so that an idle
/// keep-alive scrape connection does not keep it from stopping.
async fn serve_metrics<T, F, Fut>(
    addr: Option<SocketAddr>,
    role: &'static str,
    node: &Arc<T>,
    read: F,
) -> Result<Option<tokio::task::JoinHandle<()>>>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = metrics::Snapshot> + Send + 'static,
{
    let Some(addr) = addr else { return Ok(None) };
    let weak = Arc::downgrade(node);
    let read = Arc::new(read);
    let source: metrics::Source = Arc::new(move || {
        let (node, read) = (weak.upgrade(), read.clone());
        Box::pin(async move {
            match node {
                Some(node) => read(node).await,
                None => metrics::Snapshot::default(),
            }
        })
    });
    let (bound, task) = metrics::serve(addr, role, source).await?;
    println!("metrics: http://{bound}/metrics");
    Ok(Some(task))
}

fn print_exit_names(exit: &ExitNode) {
    println!("npub: {}", npub(&exit.public_key()));
    println!("nprofile: {}", exit.nprofile());
    match exit.nostr_domain() {
        Ok(d) => println!("domain: {d}"),
        Err(e) => println!("domain: (none: {e})"),
    }
}

/// Parses a listen address, or `off`.
fn listen_addr(s: &str) -> Result<Option<SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| format!("bad listen address `{s}`: {e}"))
}

/// Parses `USER:PASS`.
fn credentials(s: &str) -> Result<Credentials> {
    let (u, p) = s
        .split_once(':')
        .ok_or_else(|| "--auth takes USER:PASS".to_string())?;
    Ok(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    })
}

async fn run_entry(args: EntryArgs) -> Result<()> {
    args.relays.trust_extra_cas()?;
    let mut config = EntryConfig::new(args.relays.relays);
    config.socks_listen = listen_addr(&args.socks)?;
    config.http_listen = listen_addr(&args.http)?;
    config.webview_listen = args.webview_listen;
    config.credentials = match (&args.auth, args.no_auth) {
        (Some(a), _) => Some(credentials(a)?),
        (None, true) => None,
        (None, false) => Some(Credentials::random()),
    };
    if args.max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    config.max_connections = args.max_connections;
    config.legacy_all = args.legacy;
    config.stream.max_version = args.stream_version;
    config.connect_timeout = Duration::from_secs(args.connect_timeout);
    if let Some(f) = &args.key_file {
        let keys = keys::load_or_create_key_file(f)?;
        println!("entry-npub: {}", npub(&keys.public_key()));
        config.keys = Some(keys);
    }
    config.public_exits = args.public_exits;
    if let Some(name) = &args.exit {
        let exit = parse_host(name)
            .map_err(|e| format!("bad --exit `{name}`: {e}"))?
            .ok_or_else(|| format!("--exit takes an npub or nprofile, not `{name}`"))?;
        config.exit = Some(exit);
    }
    if let Some(addr) = args.public_address {
        // The address goes to the exits in `CONNECTR`, and they dial it:
        // 0.0.0.0 or :: would be refused ("this network") or dial the exit itself.
        if addr.ip().is_unspecified() {
            return Err(format!(
                "--public-address {addr}: exits dial this address, so give one they can \
                 reach (this host's public IP), not an unspecified one"
            ));
        }
    }
    config.public_address = args.public_address;
    config.early_reply = args.early_reply;
    for k in &args.legacy_exits {
        config
            .legacy_exits
            .push(PublicKey::parse(k).map_err(|e| format!("bad --legacy-exit `{k}`: {e}"))?);
    }
    let creds = config.credentials.clone();
    let stop = shutdown_signal();
    let proxy = Arc::new(EntryProxy::start(config).await.map_err(|e| e.to_string())?);
    print_entry_addrs(&proxy);
    if let Some(c) = creds {
        println!("proxy-user: {}", c.username);
        println!("proxy-password: {}", c.password);
    }
    let metrics = serve_metrics(args.metrics_listen, "entry", &proxy, |p| async move {
        p.entry().metrics().await
    })
    .await?;
    println!("ready");
    stop.await;
    if let Some(task) = metrics {
        task.abort();
        let _ = task.await;
    }
    match Arc::try_unwrap(proxy) {
        Ok(proxy) => proxy.stop().await,
        Err(_) => log::warn!("entry not stopped cleanly: a metrics request is in progress"),
    }
    Ok(())
}

fn print_entry_addrs(proxy: &EntryProxy) {
    if let Some(a) = proxy.socks_addr() {
        println!("socks5: {a}");
    }
    if let Some(a) = proxy.http_addr() {
        println!("http: {a}");
    }
    if let Some(a) = proxy.webview_addr() {
        println!("webview: {a}");
    }
    if let Some(a) = proxy.public_addr() {
        println!("public-address: {a}");
    }
}

fn npub(pk: &PublicKey) -> String {
    pk.to_bech32().unwrap_or_else(|_| pk.to_hex())
}

/// Listens for Ctrl-C and SIGTERM from this call on (the handlers are in
/// place when it returns, so call it before printing `ready`); the future
/// resolves at the first of them. A signal that arrives between two such
/// listeners would be lost, hence one listener, taken early.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            log::info!("shutting down");
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
            log::info!("shutting down");
        }
    }
}
