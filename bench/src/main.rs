//! `nws-bench`: the NWS benchmark program (not a timed test).
//!
//! It starts, on 127.0.0.1 only, a relay (embedded in this process by
//! default), an HTTP backend (in this process), and the real `nws exit` and
//! `nws entry` as child processes, then measures in one run:
//!
//! * time to first byte of a small GET through the entry's HTTP proxy and
//!   through its SOCKS5 port, a new stream each (median, p90, p99), beside a
//!   direct TCP fetch from the same backend and a raw event echo through the
//!   same relay;
//! * bulk download and upload throughput, beside direct TCP;
//! * many concurrent streams: how many succeed, median and p99 completion;
//! * stream events per MiB and CPU seconds per MiB of entry and exit;
//! * resident memory of entry and exit idle and under the bulk transfers,
//!   and (with `--idle-secs N`) their CPU time and wake-ups while idle;
//! * the CPU cost of each step of one event (sealing, signing, relaying,
//!   checking, opening), measured in this process.
//!
//! It prints one table, or the same data as JSON with `--json`. Build the
//! `nws` binary beside it first:
//!
//! ```sh
//! cargo build --release -p nws-cli -p nws-bench && target/release/nws-bench
//! ```

mod backend;
mod client;
mod codec;
mod echo;
mod procs;
mod relay;
mod report;
mod stats;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use nostr::{Keys, RelayUrl};
use tokio::task::JoinSet;

use backend::{Backend, BulkData};
use client::{fetch, Expect, Target};
use procs::{reset_peak, sample, Machine, NwsProcess, Sample};
use relay::{CountingRelay, EventCount, EventCounter, Monitor};
use report::{
    Burst, Concurrent, Footprint, Load, LogProblems, Params, Ratios, RelayInfo, Report,
    TargetCheck, Transfer, Ttfb,
};
use stats::{ratio, Summary};

/// Bytes in a MiB.
const MIB: usize = 1024 * 1024;
/// How long one small request may take.
const SMALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of the first request through NWS before giving up.
const WARMUP_TRIES: usize = 5;
/// Small requests through NWS before measuring (connections, caches).
const WARMUP_REQUESTS: usize = 5;
/// Issue targets (issue 15, performance round 3).
/// Time to first byte over its physical floor: the relay echo median (one
/// relay round trip, sealed and signed each way) plus the direct median
/// (the backend itself).
const TTFB_OVER_FLOOR_TARGET: f64 = 1.15;
/// Time to first byte, median and p90, over the relay echo's (the target
/// for third-party relays, `--relay`).
const TTFB_OVER_ECHO_TARGET: f64 = 1.5;
const BULK_TARGET_MIB_S: f64 = 60.0;
/// Entry + exit + relay CPU seconds per MiB downloaded.
const CPU_PER_MIB_TARGET: f64 = 0.020;
/// Stream events per MiB moved, each direction's transfer.
const EVENTS_PER_MIB_TARGET: f64 = 32.0;
/// Stream events per small request (both ways).
const EVENTS_PER_REQUEST_TARGET: f64 = 4.0;
const CONCURRENT_P99_OVER_MEDIAN_TARGET: f64 = 10.0;
/// Idle CPU budget used to judge "no polling": 0.1 % of one core.
const IDLE_CPU_SHARE_TARGET: f64 = 0.001;
/// Idle wake-ups per second per process, beyond relay keepalives.
const IDLE_WAKEUPS_TARGET: f64 = 1.0;

/// Benchmark NWS on loopback: relay, exit, HTTP backend and entry; prints one
/// table (or JSON) with time to first byte, throughput, concurrency, events
/// and CPU per MiB, memory, and the direct-TCP and relay-echo baselines.
#[derive(Parser, Debug)]
#[command(name = "nws-bench", version)]
struct Args {
    /// Use this relay instead of the embedded one (`ws://…`; events are
    /// then counted by a monitor subscription).
    #[arg(long, conflicts_with = "relay_process")]
    relay: Option<RelayUrl>,
    /// Run the relay as its own `nws relay` process (its CPU is then
    /// reported apart; events counted by a monitor subscription).
    #[arg(long)]
    relay_process: bool,
    /// Sequential small GETs through NWS and directly, and relay echo rounds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    requests: u32,
    /// Size of the bulk download and upload, in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    bulk_mib: u32,
    /// Streams started at once.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=250))]
    concurrency: u32,
    /// Measure idle CPU and wake-ups of entry and exit over this many
    /// seconds right after they start (0: skip).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    idle_secs: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON to this file (the table still goes to stdout).
    #[arg(long, value_name = "FILE")]
    json_file: Option<PathBuf>,
    /// The `nws` binary (default: `nws` beside this program).
    #[arg(long)]
    nws: Option<PathBuf>,
    /// Keep the processes' logs and the exit key in this directory.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Start the entry with `--early-reply`: SOCKS5 clients are answered
    /// before the exit has, so their request rides in the `CONNECT`.
    #[arg(long)]
    early_reply: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nws-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json;
    let json_file = args.json_file.clone();
    match rt.block_on(run(args)) {
        Ok(report) => {
            if let Some(path) = json_file {
                let written = serde_json::to_string_pretty(&report)
                    .map_err(|e| e.to_string())
                    .and_then(|s| std::fs::write(&path, s + "\n").map_err(|e| e.to_string()));
                if let Err(e) = written {
                    eprintln!("nws-bench: {}: {e}", path.display());
                }
            }
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("nws-bench: {e}"),
                }
            } else {
                print!("{}", report.table());
            }
            if report.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("nws-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Progress on stderr (stdout carries only the table or the JSON).
macro_rules! progress {
    ($($t:tt)*) => { eprintln!("nws-bench: {}", format_args!($($t)*)) };
}

/// The `nws` binary: `--nws`, or `nws` next to this executable.
fn nws_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this executable: {e}"))?
            .with_file_name("nws"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no nws binary at {}: build it with `cargo build --release -p nws-cli` (or give --nws PATH)",
            path.display()
        ))
    }
}

/// Writes a fresh secret key (hex) to `path`, mode 0600.
fn write_key(path: &Path, keys: &Keys) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{}", keys.secret_key().to_secret_hex())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Which way the sequential small requests go.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// Straight to the backend.
    Direct,
    /// Through the entry's HTTP proxy port.
    NwsHttp,
    /// Through the entry's SOCKS5 port.
    NwsSocks5,
}

impl Via {
    /// The name used in error messages.
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::NwsHttp => "NWS",
            Via::NwsSocks5 => "NWS via SOCKS5",
        }
    }
}

/// What every phase needs.
struct Bench {
    data: BulkData,
    /// Through the entry's HTTP proxy (also used by bulk and concurrency).
    nws: Target,
    /// Through the entry's SOCKS5 port (time to first byte only).
    socks: Target,
    direct: Target,
    counter: Arc<EventCounter>,
    entry: NwsProcess,
    exit: NwsProcess,
    relay: Option<NwsProcess>,
    errors: Vec<String>,
}

/// CPU, memory and event readings of every process at one moment.
struct Snapshot {
    at: Instant,
    entry: Sample,
    exit: Sample,
    relay: Option<Sample>,
    bench: Sample,
    events: EventCount,
}

impl Bench {
    fn snapshot(&self) -> Snapshot {
        let read = |pid: u32| sample(pid).unwrap_or_default();
        Snapshot {
            at: Instant::now(),
            entry: read(self.entry.pid()),
            exit: read(self.exit.pid()),
            relay: self.relay.as_ref().map(|r| read(r.pid())),
            bench: read(std::process::id()),
            events: self.counter.read(),
        }
    }

    /// Fails if entry or exit has exited (with its log).
    fn check_alive(&mut self) -> Result<(), String> {
        for p in [&mut self.entry, &mut self.exit] {
            if !p.is_running() {
                return Err(format!(
                    "an nws process (pid {}) exited during the run; its log:\n{}",
                    p.pid(),
                    p.log_tail()
                ));
            }
        }
        Ok(())
    }

    /// `count` sequential requests for `/small`, a new connection each.
    async fn ttfb(&mut self, via: Via, count: usize) -> (Summary, usize) {
        let target = match via {
            Via::Direct => &self.direct,
            Via::NwsHttp => &self.nws,
            Via::NwsSocks5 => &self.socks,
        };
        let mut samples = Vec::with_capacity(count);
        let mut failed = 0;
        let mut first_error = None;
        for _ in 0..count {
            match fetch(target, "/small", None, &Expect::Small, SMALL_TIMEOUT).await {
                Ok(f) => samples.push(f.ttfb),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            self.errors.push(format!(
                "time to first byte ({}): {failed} of {count} failed, first: {e}",
                via.name()
            ));
        }
        (Summary::of(&samples), failed)
    }

    /// The bulk download or upload, directly and then through NWS, with the
    /// processes' CPU, peak memory and the events in between.
    async fn transfer(&mut self, upload: bool) -> Transfer {
        let name = if upload { "upload" } else { "download" };
        let mib = self.data.len() as f64 / MIB as f64;
        let timeout = Duration::from_secs(120) + Duration::from_secs_f64(mib * 2.0);
        let (path, body, expect) = if upload {
            let body = Some(self.data.bytes().clone());
            ("/upload", body, Expect::UploadAck(self.data.len()))
        } else {
            ("/bulk", None, Expect::Bulk(self.data.clone()))
        };
        let mut t = Transfer {
            mib,
            ..Transfer::default()
        };
        match fetch(&self.direct, path, body.clone(), &expect, timeout).await {
            Ok(f) => t.direct_mib_s = mib / f.total.as_secs_f64(),
            Err(e) => self.errors.push(format!("bulk {name} (direct): {e}")),
        }
        reset_peak(self.entry.pid());
        reset_peak(self.exit.pid());
        let before = self.snapshot();
        let result = fetch(&self.nws, path, body, &expect, timeout).await;
        let after = self.snapshot();
        match result {
            Ok(f) => {
                t.nws_seconds = f.total.as_secs_f64();
                t.nws_mib_s = mib / t.nws_seconds;
            }
            Err(e) => {
                t.nws_seconds = after.at.duration_since(before.at).as_secs_f64();
                self.errors.push(format!("bulk {name} (NWS): {e}"));
            }
        }
        t.events = after.events.since(&before.events);
        t.events_per_mib = t.events.total() as f64 / mib;
        t.content_bytes_per_byte = t.events.content_bytes as f64 / self.data.len() as f64;
        t.entry_cpu_s_per_mib = (after.entry.cpu_s - before.entry.cpu_s) / mib;
        t.exit_cpu_s_per_mib = (after.exit.cpu_s - before.exit.cpu_s) / mib;
        t.bench_cpu_s_per_mib = (after.bench.cpu_s - before.bench.cpu_s) / mib;
        if let (Some(a), Some(b)) = (after.relay, before.relay) {
            t.relay_cpu_s_per_mib = Some((a.cpu_s - b.cpu_s) / mib);
        }
        t.entry_peak_rss_kib = after.entry.peak_rss_kib;
        t.exit_peak_rss_kib = after.exit.peak_rss_kib;
        t
    }

    /// `n` requests for `/small` started at once.
    async fn burst(&mut self, nws: bool, n: usize) -> Burst {
        let target = if nws { &self.nws } else { &self.direct };
        let start = Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..n {
            let target = target.clone();
            set.spawn(async move {
                fetch(
                    &target,
                    "/small",
                    None,
                    &Expect::Small,
                    Duration::from_secs(120),
                )
                .await
            });
        }
        let mut times = Vec::with_capacity(n);
        let mut slow_connects = 0;
        let mut first_error = None;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(f)) => {
                    times.push(f.total);
                    if f.connect >= Duration::from_millis(500) {
                        slow_connects += 1;
                    }
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        let burst = Burst {
            succeeded: times.len(),
            completion: Summary::of(&times),
            wall_seconds: start.elapsed().as_secs_f64(),
            slow_connects,
            first_error,
        };
        if burst.succeeded < n {
            let via = if nws { "NWS" } else { "direct" };
            self.errors.push(format!(
                "{n} concurrent streams ({via}): {} failed, first: {}",
                n - burst.succeeded,
                burst.first_error.as_deref().unwrap_or("?")
            ));
        }
        burst
    }
}

async fn run(args: Args) -> Result<Report, String> {
    let machine = Machine::read();
    let load_average_at_start = procs::load_average();
    let bin = nws_binary(args.nws.clone())?;
    let temp = tempfile::Builder::new()
        .prefix("nws-bench-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let dir = match &args.keep_logs {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            d.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let params = Params {
        requests: args.requests as usize,
        bulk_mib: args.bulk_mib as usize,
        concurrency: args.concurrency as usize,
        idle_secs: args.idle_secs,
        early_reply: args.early_reply,
    };

    progress!("per-event CPU costs");
    let event_costs = codec::measure(Duration::from_millis(100))?;
    progress!("generating {} MiB of bulk data", params.bulk_mib);
    let data = BulkData::new(params.bulk_mib * MIB);
    let backend = Backend::start(data.clone())
        .await
        .map_err(|e| format!("backend: {e}"))?;
    progress!("backend on http://{}", backend.addr());

    let counter = Arc::new(EventCounter::default());
    let mut embedded = None;
    let mut relay_process = None;
    let (relay_url, kind) = match (&args.relay, args.relay_process) {
        (Some(url), _) => (url.clone(), "external"),
        (None, true) => {
            let p = NwsProcess::spawn(
                "relay",
                &bin,
                &["relay".into(), "--listen".into(), "127.0.0.1:0".into()],
                dir.join("relay.log"),
            )
            .await?;
            let url = RelayUrl::parse(p.value("relay")?).map_err(|e| e.to_string())?;
            relay_process = Some(p);
            (url, "process")
        }
        (None, false) => {
            let r = CountingRelay::start(counter.clone()).await?;
            let url = r.url().clone();
            embedded = Some(r);
            (url, "embedded")
        }
    };
    let monitor = match embedded {
        Some(_) => None,
        None => Some(Monitor::start(&relay_url, counter.clone()).await?),
    };
    progress!("relay ({kind}) at {relay_url}");

    let exit_keys = Keys::generate();
    counter.set_exit(exit_keys.public_key());
    let key_file = dir.join("exit.key");
    let _ = std::fs::remove_file(&key_file);
    write_key(&key_file, &exit_keys)?;
    let url = relay_url.to_string();
    let exit = NwsProcess::spawn(
        "exit",
        &bin,
        &[
            "exit".into(),
            "--relay".into(),
            url.clone(),
            "--key-file".into(),
            key_file.display().to_string(),
            "--backend".into(),
            backend.addr().to_string(),
        ],
        dir.join("exit.log"),
    )
    .await?;
    let host = match exit.value("domain") {
        Ok(d) if d.ends_with(".nostr") => d.to_string(),
        _ => exit.value("npub")?.to_string(),
    };
    let credentials = format!("bench:{}", uuid::Uuid::new_v4().simple());
    let entry = NwsProcess::spawn(
        "entry",
        &bin,
        &[
            "entry".into(),
            "--relay".into(),
            url.clone(),
            "--socks".into(),
            "127.0.0.1:0".into(),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--auth".into(),
            credentials.clone(),
        ]
        .into_iter()
        .chain(params.early_reply.then(|| "--early-reply".to_string()))
        .collect::<Vec<String>>(),
        dir.join("entry.log"),
    )
    .await?;
    let proxy: SocketAddr = entry
        .value("http")?
        .parse()
        .map_err(|e| format!("entry printed a bad http address: {e}"))?;
    let socks: SocketAddr = entry
        .value("socks5")?
        .parse()
        .map_err(|e| format!("entry printed a bad socks5 address: {e}"))?;
    progress!(
        "exit pid {}, entry pid {} (http proxy {proxy}, socks5 {socks}), host {host}",
        exit.pid(),
        entry.pid()
    );

    let mut bench = Bench {
        data,
        nws: Target::via_proxy(proxy, &host, Some(&credentials)),
        socks: Target::via_socks5(socks, &host, &credentials),
        direct: Target::direct(backend.addr()),
        counter,
        entry,
        exit,
        relay: relay_process,
        errors: Vec::new(),
    };
    let mut footprint = Footprint::default();

    // Idle: started, connected, no stream yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = bench.snapshot();
    let busy_at_start = procs::machine_busy_s();
    if params.idle_secs > 0 {
        progress!("idle for {} s", params.idle_secs);
        tokio::time::sleep(Duration::from_secs(params.idle_secs)).await;
        let later = bench.snapshot();
        let secs = later.at.duration_since(idle.at).as_secs_f64();
        for (f, a, b) in [
            (&mut footprint.entry, &idle.entry, &later.entry),
            (&mut footprint.exit, &idle.exit, &later.exit),
        ] {
            // Threads do not come and go while idle: the nanosecond clock applies.
            f.idle_cpu_s = Some(b.threads_cpu_ns.saturating_sub(a.threads_cpu_ns) as f64 / 1e9);
            f.idle_wakeups_per_s = Some(b.switches.saturating_sub(a.switches) as f64 / secs);
        }
    }
    let after_idle = bench.snapshot();
    for (f, s) in [
        (&mut footprint.entry, &after_idle.entry),
        (&mut footprint.exit, &after_idle.exit),
    ] {
        f.idle_rss_kib = s.rss_kib;
        f.idle_peak_rss_kib = s.peak_rss_kib;
    }

    progress!("warm-up");
    let mut warm_error = None;
    for _ in 0..WARMUP_TRIES {
        match fetch(&bench.nws, "/small", None, &Expect::Small, SMALL_TIMEOUT).await {
            Ok(_) => {
                warm_error = None;
                break;
            }
            Err(e) => warm_error = Some(e),
        }
    }
    if let Some(e) = warm_error {
        return Err(format!(
            "no request got through NWS in {WARMUP_TRIES} tries (last: {e});\nentry log:\n{}\nexit log:\n{}",
            bench.entry.log_tail(),
            bench.exit.log_tail()
        ));
    }
    for target in [&bench.nws, &bench.socks] {
        for _ in 0..WARMUP_REQUESTS {
            let _ = fetch(target, "/small", None, &Expect::Small, SMALL_TIMEOUT).await;
        }
    }

    let mut ttfb = Ttfb::default();
    progress!("relay echo, {} rounds", params.requests);
    match echo::run(&relay_url, params.requests).await {
        Ok(r) => {
            ttfb.echo = Summary::of(&r.rtts);
            ttfb.echo_lost = r.lost;
        }
        Err(e) => {
            ttfb.echo_lost = params.requests;
            bench.errors.push(e);
        }
    }
    progress!("time to first byte, direct, {} requests", params.requests);
    (ttfb.direct, ttfb.direct_failed) = bench.ttfb(Via::Direct, params.requests).await;
    progress!("time to first byte, NWS, {} requests", params.requests);
    let before = bench.counter.read();
    (ttfb.nws, ttfb.nws_failed) = bench.ttfb(Via::NwsHttp, params.requests).await;
    ttfb.nws_events_per_request =
        bench.counter.read().since(&before).total() as f64 / params.requests as f64;
    bench.check_alive()?;
    progress!(
        "time to first byte, NWS via SOCKS5, {} requests",
        params.requests
    );
    let before = bench.counter.read();
    (ttfb.socks5, ttfb.socks5_failed) = bench.ttfb(Via::NwsSocks5, params.requests).await;
    ttfb.socks5_events_per_request =
        bench.counter.read().since(&before).total() as f64 / params.requests as f64;
    bench.check_alive()?;

    progress!("bulk download, {} MiB", params.bulk_mib);
    let download = bench.transfer(false).await;
    bench.check_alive()?;
    progress!("bulk upload, {} MiB", params.bulk_mib);
    let upload = bench.transfer(true).await;
    bench.check_alive()?;
    footprint.entry.download_peak_rss_kib = download.entry_peak_rss_kib;
    footprint.exit.download_peak_rss_kib = download.exit_peak_rss_kib;
    footprint.entry.upload_peak_rss_kib = upload.entry_peak_rss_kib;
    footprint.exit.upload_peak_rss_kib = upload.exit_peak_rss_kib;

    progress!("{} concurrent streams", params.concurrency);
    let concurrent = Concurrent {
        streams: params.concurrency,
        direct: bench.burst(false, params.concurrency).await,
        nws: bench.burst(true, params.concurrency).await,
    };
    bench.check_alive()?;
    let end = bench.snapshot();
    let busy = procs::machine_busy_s() - busy_at_start;
    let ours = end.entry.cpu_s - idle.entry.cpu_s
        + (end.exit.cpu_s - idle.exit.cpu_s)
        + (end.bench.cpu_s - idle.bench.cpu_s)
        + end
            .relay
            .zip(idle.relay)
            .map_or(0.0, |(e, i)| e.cpu_s - i.cpu_s);
    let run_seconds = end.at.duration_since(idle.at).as_secs_f64();
    let others_cpu_s = (busy - ours).max(0.0);
    let load = Load {
        load_average_at_start,
        run_seconds,
        others_cpu_s,
        others_share: others_cpu_s / (run_seconds * machine.cpus.max(1) as f64),
    };
    footprint.entry.final_rss_kib = end.entry.rss_kib;
    footprint.exit.final_rss_kib = end.exit.rss_kib;

    let log_problems = LogProblems {
        entry: bench.entry.log_problems(),
        exit: bench.exit.log_problems(),
        dir: if args.keep_logs.is_some() {
            dir.display().to_string()
        } else {
            "(deleted; keep them with --keep-logs DIR)".into()
        },
    };
    let mut errors = std::mem::take(&mut bench.errors);
    for (name, p) in [("entry", bench.entry), ("exit", bench.exit)] {
        if !p.stop().await {
            errors.push(format!("nws {name} did not exit cleanly on SIGTERM"));
        }
    }
    if let Some(r) = bench.relay {
        r.stop().await;
    }
    let monitor_lost = match monitor {
        Some(m) => {
            let lost = m.lost();
            m.stop().await;
            lost
        }
        None => 0,
    };
    drop(embedded);
    drop(backend);

    let ratios = Ratios {
        ttfb_median_over_echo: ratio(ttfb.nws.median_ms, ttfb.echo.median_ms),
        ttfb_p99_over_echo: ratio(ttfb.nws.p99_ms, ttfb.echo.p99_ms),
        ttfb_socks5_median_over_echo: ratio(ttfb.socks5.median_ms, ttfb.echo.median_ms),
        ttfb_socks5_p99_over_echo: ratio(ttfb.socks5.p99_ms, ttfb.echo.p99_ms),
        download_over_direct: ratio(download.nws_mib_s, download.direct_mib_s),
        upload_over_direct: ratio(upload.nws_mib_s, upload.direct_mib_s),
    };
    let targets = check_targets(&params, &ttfb, &download, &upload, &concurrent, &footprint);
    Ok(Report {
        version: env!("CARGO_PKG_VERSION"),
        machine,
        load,
        relay: RelayInfo {
            kind,
            url,
            event_counting: if kind == "embedded" {
                "relay write policy"
            } else {
                "monitor subscription"
            },
            monitor_lost,
        },
        params,
        ttfb,
        download,
        upload,
        concurrent,
        footprint,
        ratios,
        targets,
        event_costs,
        log_problems,
        errors,
    })
}

/// The issue's targets, checked against the measurements.
fn check_targets(
    params: &Params,
    ttfb: &Ttfb,
    download: &Transfer,
    upload: &Transfer,
    concurrent: &Concurrent,
    footprint: &Footprint,
) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let floor = ttfb.echo.median_ms + ttfb.direct.median_ms;
    let over_floor = ratio(ttfb.nws.median_ms, floor);
    out.push(TargetCheck {
        target: format!(
            "time to first byte, median <= {TTFB_OVER_FLOOR_TARGET}x floor (echo + direct medians)"
        ),
        measured: over_floor.map_or("-".into(), |r| {
            format!("{r:.3}x ({:.2} / {floor:.2} ms)", ttfb.nws.median_ms)
        }),
        met: over_floor.map(|r| r <= TTFB_OVER_FLOOR_TARGET && ttfb.nws_failed == 0),
    });
    // Median and p90 over the echo's, for each port (None: no samples).
    let over_echo = |s: &Summary| -> Option<(f64, f64)> {
        if s.count == 0 {
            return None;
        }
        ratio(s.median_ms, ttfb.echo.median_ms).zip(ratio(s.p90_ms, ttfb.echo.p90_ms))
    };
    let ports = [
        ("http", over_echo(&ttfb.nws), ttfb.nws_failed),
        ("socks5", over_echo(&ttfb.socks5), ttfb.socks5_failed),
    ];
    let measured: Vec<String> = ports
        .iter()
        .map(|(name, r, _)| match r {
            Some((m, p)) => format!("{name} {m:.2}x / {p:.2}x"),
            None => format!("{name} -"),
        })
        .collect();
    // The worse of the two ports; not measured if neither has samples.
    let worst = ports
        .iter()
        .filter_map(|(_, r, _)| r.map(|(m, p)| m.max(p)))
        .reduce(f64::max);
    let all_answered = ports
        .iter()
        .all(|(_, r, failed)| r.is_some() && *failed == 0);
    out.push(TargetCheck {
        target: format!(
            "time to first byte, median and p90 <= {TTFB_OVER_ECHO_TARGET}x relay echo's (HTTP and SOCKS5)"
        ),
        measured: measured.join(", "),
        met: worst.map(|w| w <= TTFB_OVER_ECHO_TARGET && all_answered),
    });
    for (name, t) in [("download", download), ("upload", upload)] {
        out.push(TargetCheck {
            target: format!("bulk {name} >= {BULK_TARGET_MIB_S} MiB/s"),
            measured: format!("{:.1} MiB/s", t.nws_mib_s),
            met: Some(t.nws_mib_s >= BULK_TARGET_MIB_S),
        });
    }
    let cpu = download
        .relay_cpu_s_per_mib
        .map(|r| r + download.entry_cpu_s_per_mib + download.exit_cpu_s_per_mib);
    out.push(TargetCheck {
        target: format!("entry + exit + relay CPU <= {CPU_PER_MIB_TARGET} s per MiB downloaded"),
        measured: cpu.map_or("relay CPU not measured (use --relay-process)".into(), |c| {
            format!("{c:.4} s")
        }),
        met: cpu.map(|c| c <= CPU_PER_MIB_TARGET),
    });
    let events = download.events_per_mib.max(upload.events_per_mib);
    out.push(TargetCheck {
        target: format!("<= {EVENTS_PER_MIB_TARGET} stream events per MiB moved"),
        measured: format!(
            "{:.1} down / {:.1} up",
            download.events_per_mib, upload.events_per_mib
        ),
        met: Some(events <= EVENTS_PER_MIB_TARGET),
    });
    out.push(TargetCheck {
        target: format!("<= {EVENTS_PER_REQUEST_TARGET} stream events per small request"),
        measured: format!("{:.2}", ttfb.nws_events_per_request),
        met: Some(ttfb.nws_events_per_request <= EVENTS_PER_REQUEST_TARGET),
    });
    let c = &concurrent.nws;
    let spread = ratio(c.completion.p99_ms, c.completion.median_ms);
    out.push(TargetCheck {
        target: format!(
            "{} concurrent streams all succeed, p99 < {CONCURRENT_P99_OVER_MEDIAN_TARGET}x median",
            concurrent.streams
        ),
        measured: format!(
            "{}/{}, p99 {}",
            c.succeeded,
            concurrent.streams,
            spread.map_or("-".into(), |s| format!("{s:.2}x median"))
        ),
        met: Some(
            c.succeeded == concurrent.streams
                && spread.is_some_and(|s| s < CONCURRENT_P99_OVER_MEDIAN_TARGET),
        ),
    });
    let idle_target = format!(
        "idle: CPU <= {:.1} % of a core, <= {IDLE_WAKEUPS_TARGET} wake-up/s",
        IDLE_CPU_SHARE_TARGET * 100.0
    );
    match (footprint.entry.idle_cpu_s, footprint.exit.idle_cpu_s) {
        (Some(e), Some(x)) if params.idle_secs > 0 => {
            let secs = params.idle_secs as f64;
            let wake = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}/s"));
            let wakeups = [
                footprint.entry.idle_wakeups_per_s,
                footprint.exit.idle_wakeups_per_s,
            ];
            out.push(TargetCheck {
                target: idle_target,
                measured: format!(
                    "entry {:.3} % {}, exit {:.3} % {} over {} s",
                    e / secs * 100.0,
                    wake(wakeups[0]),
                    x / secs * 100.0,
                    wake(wakeups[1]),
                    params.idle_secs
                ),
                met: Some(
                    e.max(x) / secs <= IDLE_CPU_SHARE_TARGET
                        && wakeups
                            .iter()
                            .all(|w| w.is_some_and(|w| w <= IDLE_WAKEUPS_TARGET)),
                ),
            });
        }
        _ => out.push(TargetCheck {
            target: idle_target,
            measured: "skipped (--idle-secs 0)".into(),
            met: None,
        }),
    }
    out
}
