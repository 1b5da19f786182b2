//! Idle footprint of a started proxy: CPU time, memory and wake-ups over a
//! quiet period, read from `/proc` (Linux only). Not a test: it prints figures.
//!
//! ```text
//! target/debug/nws relay --listen 127.0.0.1:7777 &          # any relay
//! cargo run --profile release-mobile -p nws-bindings --example idle -- 60 ws://127.0.0.1:7777
//! ```
//!
//! Arguments: the quiet period in seconds (default 60), then relay URLs (the
//! proxy connects to them at start and keeps the connections open). The proxy
//! is driven through the same exported API an app calls, from a
//! current-thread executor standing in for Kotlin's or Swift's.

use std::time::{Duration, Instant};

use nws::{NwsProxy, ProxyConfig};

/// CPU time of the whole process so far (user + system), in milliseconds.
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) in `(...)`.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), in USER_HZ (100 per second).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks * 10
}

/// A `VmRSS:`-style line of /proc/self/status, in KiB.
fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Threads of the process and their context switches (voluntary and not),
/// summed: a thread that polls wakes up, and each wake-up is a switch.
fn threads_and_switches() -> (usize, u64) {
    let mut threads = 0;
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            threads += 1;
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            switches += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (threads, switches)
}

fn main() {
    if !cfg!(target_os = "linux") {
        eprintln!("idle: reads /proc, so it runs on Linux only");
        std::process::exit(2);
    }
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(60);
    let relays: Vec<String> = args.collect();

    let executor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("executor");
    let proxy = NwsProxy::new(ProxyConfig::new(relays.clone())).expect("config");
    let info = executor
        .block_on(proxy.clone().start())
        .expect("proxy start");
    // Let relay connections settle before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let status = executor.block_on(proxy.clone().status()).expect("status");
    println!(
        "proxy: SOCKS5 port {:?}, HTTP port {:?}; relays connected {}/{} ({})",
        info.socks_port,
        info.http_port,
        status.relays_connected,
        status.relays_known,
        relays.join(" ")
    );

    let (cpu0, (_, sw0), t0) = (cpu_ms(), threads_and_switches(), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (cpu1, (threads, sw1), elapsed) = (cpu_ms(), threads_and_switches(), t0.elapsed());

    println!("idle for {:.1} s:", elapsed.as_secs_f64());
    println!(
        "  cpu time          {} ms (user + system, 10 ms resolution)",
        cpu1 - cpu0
    );
    println!(
        "  context switches  {} (all {threads} threads; {:.2} per second)",
        sw1 - sw0,
        (sw1 - sw0) as f64 / elapsed.as_secs_f64()
    );
    println!("  VmRSS             {} KiB", status_kib("VmRSS:"));
    println!("  VmHWM             {} KiB (peak)", status_kib("VmHWM:"));
    println!(
        "  RssAnon           {} KiB (heap and stacks)",
        status_kib("RssAnon:")
    );
    executor.block_on(proxy.stop()).expect("stop");
}
