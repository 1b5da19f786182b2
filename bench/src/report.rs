//! The benchmark's results: one [`Report`], printed as a table
//! ([`Report::table`]) or serialized as JSON (`--json`).

use std::fmt::Write as _;

use serde::Serialize;

use crate::codec::CodecCosts;
use crate::procs::Machine;
use crate::relay::EventCount;
use crate::stats::Summary;

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `nws-bench` version.
    pub version: &'static str,
    /// The machine it ran on.
    pub machine: Machine,
    /// What else ran on the machine meanwhile.
    pub load: Load,
    /// The relay it ran through.
    pub relay: RelayInfo,
    /// The run's parameters.
    pub params: Params,
    /// Time to first byte of a small GET, new stream each, through the
    /// entry's HTTP proxy and SOCKS5 ports.
    pub ttfb: Ttfb,
    /// Bulk download (`GET /bulk`) through NWS and directly.
    pub download: Transfer,
    /// Bulk upload (`POST /upload`) through NWS and directly.
    pub upload: Transfer,
    /// Many streams at once.
    pub concurrent: Concurrent,
    /// Memory and idle CPU of the `nws` processes.
    pub footprint: Footprint,
    /// NWS over baseline.
    pub ratios: Ratios,
    /// The targets, each met or not.
    pub targets: Vec<TargetCheck>,
    /// CPU cost of each step of one event, measured in the bench process.
    pub event_costs: CodecCosts,
    /// Warning and error lines the `nws` processes logged during the run.
    pub log_problems: LogProblems,
    /// Phases that failed, with what happened.
    pub errors: Vec<String>,
}

/// CPU used by processes other than the benchmark's during the run: a
/// busy machine disturbs every figure.
#[derive(Debug, Default, Serialize)]
pub struct Load {
    /// One-minute load average when the run started.
    pub load_average_at_start: f64,
    /// Length of the measured run (from the processes' start), in seconds.
    pub run_seconds: f64,
    /// CPU seconds of other processes during the run.
    pub others_cpu_s: f64,
    /// That as a share of all CPUs over the run (0 to 1).
    pub others_share: f64,
}

/// Which relay, and how events were counted.
#[derive(Debug, Serialize)]
pub struct RelayInfo {
    /// `embedded` (in the bench process), `process` (`nws relay`) or `external`.
    pub kind: &'static str,
    /// Its URL.
    pub url: String,
    /// `relay write policy` (exact) or `monitor subscription`.
    pub event_counting: &'static str,
    /// Events the monitor subscription fell behind on (not counted).
    pub monitor_lost: u64,
}

/// The run's parameters (the command-line options).
#[derive(Debug, Serialize)]
pub struct Params {
    /// Sequential small GETs (and echo rounds).
    pub requests: usize,
    /// Bulk size, in MiB.
    pub bulk_mib: usize,
    /// Concurrent streams.
    pub concurrency: usize,
    /// Idle measurement, in seconds (0: skipped).
    pub idle_secs: u64,
    /// The entry ran with `--early-reply` (SOCKS5 and HTTP `CONNECT`
    /// clients answered before the exit has).
    pub early_reply: bool,
}

/// Time to first byte: NWS through each entry port, and the two baselines.
#[derive(Debug, Default, Serialize)]
pub struct Ttfb {
    /// Through the entry's HTTP proxy, new stream each.
    pub nws: Summary,
    /// Failed NWS requests through the HTTP proxy.
    pub nws_failed: usize,
    /// Through the entry's SOCKS5 port (including the SOCKS5 handshake),
    /// new stream each.
    pub socks5: Summary,
    /// Failed NWS requests through the SOCKS5 port.
    pub socks5_failed: usize,
    /// Straight to the backend, new TCP connection each.
    pub direct: Summary,
    /// Failed direct requests.
    pub direct_failed: usize,
    /// Relay echo round trips.
    pub echo: Summary,
    /// Echo rounds without an answer.
    pub echo_lost: usize,
    /// Stream events per NWS request through the HTTP proxy (both ways).
    pub nws_events_per_request: f64,
    /// Stream events per NWS request through the SOCKS5 port (both ways).
    pub socks5_events_per_request: f64,
}

/// One bulk transfer through NWS, with the direct baseline.
#[derive(Debug, Default, Serialize)]
pub struct Transfer {
    /// Bytes moved, in MiB.
    pub mib: f64,
    /// NWS throughput, MiB/s (0 if it failed).
    pub nws_mib_s: f64,
    /// NWS wall time, in seconds.
    pub nws_seconds: f64,
    /// Direct throughput, MiB/s.
    pub direct_mib_s: f64,
    /// Stream events during the NWS transfer.
    pub events: EventCount,
    /// Events per MiB moved.
    pub events_per_mib: f64,
    /// Event content bytes per payload byte (JSON, base64, NIP-44 padding,
    /// base64 again; both directions).
    pub content_bytes_per_byte: f64,
    /// CPU seconds per MiB of the entry process.
    pub entry_cpu_s_per_mib: f64,
    /// CPU seconds per MiB of the exit process.
    pub exit_cpu_s_per_mib: f64,
    /// CPU seconds per MiB of the relay process (only with `--relay-process`).
    pub relay_cpu_s_per_mib: Option<f64>,
    /// CPU seconds per MiB of the bench process (relay when embedded,
    /// backend, client).
    pub bench_cpu_s_per_mib: f64,
    /// Peak RSS of the entry during the transfer, in KiB.
    pub entry_peak_rss_kib: u64,
    /// Peak RSS of the exit during the transfer, in KiB.
    pub exit_peak_rss_kib: u64,
}

/// Many streams at once: NWS and direct.
#[derive(Debug, Default, Serialize)]
pub struct Concurrent {
    /// Streams started together.
    pub streams: usize,
    /// Through NWS.
    pub nws: Burst,
    /// Straight to the backend.
    pub direct: Burst,
}

/// The outcome of starting many requests at once.
#[derive(Debug, Default, Serialize)]
pub struct Burst {
    /// Requests that got the whole right answer.
    pub succeeded: usize,
    /// Completion times of those (from each request's start).
    pub completion: Summary,
    /// From the first start to the last completion, in seconds.
    pub wall_seconds: f64,
    /// Successful requests whose TCP connect alone took 500 ms or more (a
    /// SYN dropped by a full accept queue and sent again after 1 s).
    pub slow_connects: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Memory and idle behaviour of the two `nws` processes.
#[derive(Debug, Default, Serialize)]
pub struct Footprint {
    /// The entry (`nws entry`).
    pub entry: ProcessFootprint,
    /// The exit (`nws exit`).
    pub exit: ProcessFootprint,
}

/// One process's memory and idle figures.
#[derive(Debug, Default, Serialize)]
pub struct ProcessFootprint {
    /// RSS once started and idle, in KiB.
    pub idle_rss_kib: u64,
    /// Peak RSS from start until idle, in KiB.
    pub idle_peak_rss_kib: u64,
    /// Peak RSS during the bulk download, in KiB.
    pub download_peak_rss_kib: u64,
    /// Peak RSS during the bulk upload, in KiB.
    pub upload_peak_rss_kib: u64,
    /// RSS at the end of the run, in KiB.
    pub final_rss_kib: u64,
    /// CPU seconds used while idle for `idle_secs` (None: not measured).
    pub idle_cpu_s: Option<f64>,
    /// Context switches per second while idle (wake-ups of its threads).
    pub idle_wakeups_per_s: Option<f64>,
}

/// NWS over baseline.
#[derive(Debug, Default, Serialize)]
pub struct Ratios {
    /// NWS median time to first byte over the relay echo's median.
    pub ttfb_median_over_echo: Option<f64>,
    /// NWS p99 time to first byte over the relay echo's p99.
    pub ttfb_p99_over_echo: Option<f64>,
    /// NWS median time to first byte via SOCKS5 over the relay echo's median.
    pub ttfb_socks5_median_over_echo: Option<f64>,
    /// NWS p99 time to first byte via SOCKS5 over the relay echo's p99.
    pub ttfb_socks5_p99_over_echo: Option<f64>,
    /// NWS download throughput over direct.
    pub download_over_direct: Option<f64>,
    /// NWS upload throughput over direct.
    pub upload_over_direct: Option<f64>,
}

/// One target from the issue, checked.
#[derive(Debug, Serialize)]
pub struct TargetCheck {
    /// What the target says.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Whether it was met (None: not measured).
    pub met: Option<bool>,
}

/// Warning and error lines logged by the `nws` processes.
#[derive(Debug, Default, Serialize)]
pub struct LogProblems {
    /// Lines in the entry's log.
    pub entry: usize,
    /// Lines in the exit's log.
    pub exit: usize,
    /// Where the logs are (kept only with `--keep-logs`).
    pub dir: String,
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn ms(v: f64, count: usize) -> String {
    if count == 0 {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn rate(v: f64) -> String {
    if v <= 0.0 {
        "-".into()
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn times(r: Option<f64>, what: &str) -> String {
    match r {
        Some(r) if r < 0.1 => format!("{r:.3}x {what}"),
        Some(r) => format!("{r:.2}x {what}"),
        None => "-".into(),
    }
}

/// A text table with left-aligned first column and right-aligned others.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c == 0 {
                    let _ = write!(line, "{cell:<w$}", w = width[0]);
                } else {
                    let _ = write!(line, "  {cell:>w$}", w = width[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

impl Report {
    /// The report as the human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "nws-bench {}: {} requests, {} MiB bulk, {} concurrent streams{}",
            self.version,
            self.params.requests,
            self.params.bulk_mib,
            self.params.concurrency,
            if self.params.early_reply {
                ", entry --early-reply"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "relay: {} {} (events counted by {})",
            self.relay.kind, self.relay.url, self.relay.event_counting
        );
        let _ = writeln!(
            out,
            "machine: {}, {} CPUs, {} MiB RAM, Linux {}; other processes used {:.1} % of the CPUs\n",
            m.cpu_model,
            m.cpus,
            m.memory_mib,
            m.kernel,
            self.load.others_share * 100.0
        );
        if self.load.others_share > 0.05 {
            let _ = writeln!(
                out,
                "WARNING: other processes used {:.0} % of the CPUs during the run \
                 (load average {:.2} at start): every figure is disturbed\n",
                self.load.others_share * 100.0,
                self.load.load_average_at_start
            );
        }

        let t = &self.ttfb;
        let mut main = Table::new(&["", "NWS", "direct TCP", "relay echo", "NWS / baseline"]);
        main.row(vec![
            "time to first byte, median (ms)".into(),
            ms(t.nws.median_ms, t.nws.count),
            ms(t.direct.median_ms, t.direct.count),
            ms(t.echo.median_ms, t.echo.count),
            times(self.ratios.ttfb_median_over_echo, "echo"),
        ]);
        main.row(vec![
            "time to first byte, p90 (ms)".into(),
            ms(t.nws.p90_ms, t.nws.count),
            ms(t.direct.p90_ms, t.direct.count),
            ms(t.echo.p90_ms, t.echo.count),
            String::new(),
        ]);
        main.row(vec![
            "time to first byte, p99 (ms)".into(),
            ms(t.nws.p99_ms, t.nws.count),
            ms(t.direct.p99_ms, t.direct.count),
            ms(t.echo.p99_ms, t.echo.count),
            times(self.ratios.ttfb_p99_over_echo, "echo"),
        ]);
        let n = self.params.requests;
        main.row(vec![
            "  answered".into(),
            format!("{}/{n}", n - t.nws_failed),
            format!("{}/{n}", n - t.direct_failed),
            format!("{}/{n}", n - t.echo_lost),
            String::new(),
        ]);
        // The baselines are the same as above: only the NWS column and the
        // ratio to the echo.
        let s = &t.socks5;
        main.row(vec![
            "time to first byte via SOCKS5, median (ms)".into(),
            ms(s.median_ms, s.count),
            "-".into(),
            "-".into(),
            times(self.ratios.ttfb_socks5_median_over_echo, "echo"),
        ]);
        main.row(vec![
            "time to first byte via SOCKS5, p90 (ms)".into(),
            ms(s.p90_ms, s.count),
            "-".into(),
            "-".into(),
            String::new(),
        ]);
        main.row(vec![
            "time to first byte via SOCKS5, p99 (ms)".into(),
            ms(s.p99_ms, s.count),
            "-".into(),
            "-".into(),
            times(self.ratios.ttfb_socks5_p99_over_echo, "echo"),
        ]);
        main.row(vec![
            "  answered".into(),
            format!("{}/{n}", n - t.socks5_failed),
            "-".into(),
            "-".into(),
            String::new(),
        ]);
        for (name, x, r) in [
            ("download", &self.download, self.ratios.download_over_direct),
            ("upload", &self.upload, self.ratios.upload_over_direct),
        ] {
            main.row(vec![
                format!("bulk {name} {} MiB (MiB/s)", self.params.bulk_mib),
                rate(x.nws_mib_s),
                rate(x.direct_mib_s),
                "-".into(),
                times(r, "direct"),
            ]);
        }
        let c = &self.concurrent;
        main.row(vec![
            format!("{} concurrent streams: succeeded", c.streams),
            format!("{}/{}", c.nws.succeeded, c.streams),
            format!("{}/{}", c.direct.succeeded, c.streams),
            "-".into(),
            String::new(),
        ]);
        main.row(vec![
            "  completion, median (ms)".into(),
            ms(c.nws.completion.median_ms, c.nws.completion.count),
            ms(c.direct.completion.median_ms, c.direct.completion.count),
            "-".into(),
            String::new(),
        ]);
        main.row(vec![
            "  completion, p99 (ms)".into(),
            ms(c.nws.completion.p99_ms, c.nws.completion.count),
            ms(c.direct.completion.p99_ms, c.direct.completion.count),
            "-".into(),
            String::new(),
        ]);
        main.row(vec![
            "  TCP connect >= 500 ms (SYN dropped)".into(),
            c.nws.slow_connects.to_string(),
            c.direct.slow_connects.to_string(),
            "-".into(),
            String::new(),
        ]);
        main.render(&mut out);

        out.push('\n');
        let mut per = Table::new(&["NWS, per MiB moved", "download", "upload"]);
        let both = [&self.download, &self.upload];
        let cells = |f: &dyn Fn(&Transfer) -> String| -> Vec<String> {
            both.iter().map(|x| f(x)).collect()
        };
        let mut row = |name: &str, f: &dyn Fn(&Transfer) -> String| {
            let mut r = vec![name.to_string()];
            r.extend(cells(f));
            per.row(r);
        };
        row("stream events (all)", &|x| {
            format!("{:.1}", x.events_per_mib)
        });
        row("  exit -> entry", &|x| {
            format!(
                "{:.1}",
                x.events.from_exit as f64 / x.mib.max(f64::MIN_POSITIVE)
            )
        });
        row("  entry -> exit", &|x| {
            format!(
                "{:.1}",
                x.events.to_exit as f64 / x.mib.max(f64::MIN_POSITIVE)
            )
        });
        row("event content bytes per payload byte", &|x| {
            format!("{:.2}", x.content_bytes_per_byte)
        });
        row("CPU s, entry", &|x| format!("{:.4}", x.entry_cpu_s_per_mib));
        row("CPU s, exit", &|x| format!("{:.4}", x.exit_cpu_s_per_mib));
        if self.download.relay_cpu_s_per_mib.is_some() {
            row("CPU s, relay process", &|x| {
                x.relay_cpu_s_per_mib
                    .map_or("-".into(), |v| format!("{v:.4}"))
            });
        }
        let bench_name = if self.relay.kind == "embedded" {
            "CPU s, bench (relay, backend, client)"
        } else {
            "CPU s, bench (backend, client, monitor)"
        };
        row(bench_name, &|x| format!("{:.4}", x.bench_cpu_s_per_mib));
        per.render(&mut out);

        out.push('\n');
        let f = &self.footprint;
        let mut foot = Table::new(&["footprint", "entry", "exit"]);
        let pair = |e: u64, x: u64| vec![mib(e), mib(x)];
        let mut frow = |name: &str, cells: Vec<String>| {
            let mut r = vec![name.to_string()];
            r.extend(cells);
            foot.row(r);
        };
        frow(
            "RSS idle (MiB)",
            pair(f.entry.idle_rss_kib, f.exit.idle_rss_kib),
        );
        frow(
            "peak RSS until idle (MiB)",
            pair(f.entry.idle_peak_rss_kib, f.exit.idle_peak_rss_kib),
        );
        frow(
            "peak RSS, bulk download (MiB)",
            pair(f.entry.download_peak_rss_kib, f.exit.download_peak_rss_kib),
        );
        frow(
            "peak RSS, bulk upload (MiB)",
            pair(f.entry.upload_peak_rss_kib, f.exit.upload_peak_rss_kib),
        );
        frow(
            "RSS at the end (MiB)",
            pair(f.entry.final_rss_kib, f.exit.final_rss_kib),
        );
        if self.params.idle_secs > 0 {
            let cpu = |p: &ProcessFootprint| p.idle_cpu_s.map_or("-".into(), |v| format!("{v:.4}"));
            let wake = |p: &ProcessFootprint| {
                p.idle_wakeups_per_s
                    .map_or("-".into(), |v| format!("{v:.2}"))
            };
            frow(
                &format!("idle CPU over {} s (s)", self.params.idle_secs),
                vec![cpu(&f.entry), cpu(&f.exit)],
            );
            frow(
                "idle wake-ups per s (context switches)",
                vec![wake(&f.entry), wake(&f.exit)],
            );
        }
        foot.render(&mut out);

        out.push('\n');
        let (d, j, a) = (
            &self.event_costs.data,
            &self.event_costs.data_json,
            &self.event_costs.ack,
        );
        let data_head = format!("v3 DATA {} KiB", d.payload_bytes / 1024);
        let json_head = format!("v2 DATA {} KiB", j.payload_bytes / 1024);
        let mut costs = Table::new(&[
            "CPU per event, one thread (us)",
            &data_head,
            &json_head,
            "v3 ACK",
        ]);
        for ((sd, sj), sa) in d.steps.iter().zip(&j.steps).zip(&a.steps) {
            costs.row(vec![
                format!("{:<8} {}", sd.at, sd.name),
                format!("{:.1}", sd.micros),
                format!("{:.1}", sj.micros),
                format!("{:.1}", sa.micros),
            ]);
        }
        for at in ["sender", "relay", "receiver"] {
            costs.row(vec![
                format!("{at:<8} total"),
                format!("{:.1}", d.total(at)),
                format!("{:.1}", j.total(at)),
                format!("{:.1}", a.total(at)),
            ]);
        }
        let per_kib = |c: &crate::codec::EventCost| {
            let all = c.total("sender") + c.total("relay") + c.total("receiver");
            format!("{:.2}", all / (c.payload_bytes as f64 / 1024.0))
        };
        costs.row(vec![
            "all three, per KiB of data (us)".into(),
            per_kib(d),
            per_kib(j),
            "-".into(),
        ]);
        costs.row(vec![
            "event content / wire frame (bytes)".into(),
            format!("{} / {}", d.content_bytes, d.wire_bytes),
            format!("{} / {}", j.content_bytes, j.wire_bytes),
            format!("{} / {}", a.content_bytes, a.wire_bytes),
        ]);
        costs.render(&mut out);

        out.push('\n');
        let mut targets = Table::new(&["target", "measured", ""]);
        for t in &self.targets {
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "not measured",
            };
            targets.row(vec![t.target.clone(), t.measured.clone(), verdict.into()]);
        }
        targets.render(&mut out);

        let lp = &self.log_problems;
        if lp.entry + lp.exit > 0 {
            let _ = writeln!(
                out,
                "\nlog warnings/errors: entry {}, exit {} (logs in {})",
                lp.entry, lp.exit, lp.dir
            );
        }
        if self.relay.monitor_lost > 0 {
            let _ = writeln!(
                out,
                "monitor fell behind on {} events: event counts are low",
                self.relay.monitor_lost
            );
        }
        if !self.errors.is_empty() {
            out.push_str("\nerrors:\n");
            for e in &self.errors {
                let _ = writeln!(out, "  {e}");
            }
        }
        out
    }
}
