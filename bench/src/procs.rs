//! The `nws` binary's long-running commands (`relay`, `exit`, `entry`) as
//! child processes, and what Linux's `/proc` says about them: CPU time
//! (`/proc/<pid>/stat`), resident memory and its peak
//! (`/proc/<pid>/status`), and wake-ups (context switches of every thread).
//!
//! Each command prints `key: value` lines and then `ready`;
//! [`NwsProcess::spawn`] waits for that and keeps the values. Its log
//! (stderr) goes to a file, whose tail is shown when something fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a command may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a command may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `nws` command; killed when dropped.
pub struct NwsProcess {
    name: &'static str,
    child: Child,
    pid: u32,
    values: HashMap<String, String>,
    log: PathBuf,
}

impl NwsProcess {
    /// Starts `bin args…` with `RUST_LOG=warn` (or `NWS_BENCH_LOG`'s value,
    /// to look into a run; more logging slows it) with stderr into `log`, and
    /// waits until it prints `ready`.
    pub async fn spawn(
        name: &'static str,
        bin: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self, String> {
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(bin)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("NWS_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id().ok_or("child exited at once")?;
        let out = child.stdout.take().ok_or("stdout not piped")?;
        let mut lines = BufReader::new(out).lines();
        let mut values = HashMap::new();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l == "ready" {
                    return true;
                }
                if let Some((k, v)) = l.split_once(": ") {
                    values.insert(k.to_string(), v.to_string());
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        // Keep reading stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let p = Self {
            name,
            child,
            pid,
            values,
            log,
        };
        if !ready {
            return Err(format!(
                "`nws {}` did not print `ready` within {READY_TIMEOUT:?}; its log:\n{}",
                args.join(" "),
                p.log_tail()
            ));
        }
        Ok(p)
    }

    /// What it printed as `key: value` before `ready`.
    pub fn value(&self, key: &str) -> Result<&str, String> {
        self.values
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("{} printed no `{key}:` line", self.name))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines of its log (stderr), for error reports.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(20);
        lines[from..].join("\n")
    }

    /// Number of warning and error lines in its log so far.
    pub fn log_problems(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .count()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits (bounded) for it to exit; kills it if it
    /// does not. Returns whether it exited on its own with status 0.
    pub async fn stop(mut self) -> bool {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                let _ = self.child.kill().await;
                false
            }
        }
    }
}

/// CPU time, memory and wake-ups of one process at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// User plus system CPU time since start, in seconds (clock-tick
    /// resolution, usually 10 ms).
    pub cpu_s: f64,
    /// Resident set size now, in KiB.
    pub rss_kib: u64,
    /// Peak resident set size since start or since [`reset_peak`], in KiB.
    pub peak_rss_kib: u64,
    /// Context switches of its live threads, voluntary and not: one per
    /// sleep and wake-up.
    pub switches: u64,
    /// CPU time of its live threads from `/proc/<pid>/task/*/schedstat`, in
    /// nanoseconds: finer than `cpu_s`, but without threads that exited.
    pub threads_cpu_ns: u64,
}

/// Reads `/proc/<pid>/stat`, `status` and `task/*/status`.
pub fn sample(pid: u32) -> Result<Sample, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    let cpu_s = (ticks(11) + ticks(12)) as f64 / clock_ticks_per_second();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let mut switches = 0;
    let mut threads_cpu_ns = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
                switches += status_field(&s, "voluntary_ctxt_switches:")
                    + status_field(&s, "nonvoluntary_ctxt_switches:");
            }
            // schedstat: time on CPU (ns), time waiting to run (ns), timeslices.
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                threads_cpu_ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Ok(Sample {
        cpu_s,
        rss_kib: status_field(&status, "VmRSS:"),
        peak_rss_kib: status_field(&status, "VmHWM:"),
        switches,
        threads_cpu_ns,
    })
}

/// Resets the peak resident set size (`VmHWM`) of `pid` to its current
/// size (writes `5` to `/proc/<pid>/clear_refs`, Linux ≥ 4.0). Returns
/// false if the kernel refused, in which case the peak counts from start.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The number after `key` in a `/proc/*/status` text (0 if absent).
fn status_field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds the whole machine spent busy since boot (every CPU, from
/// the first line of `/proc/stat`: user, nice, system, irq, softirq, steal).
pub fn machine_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    (get(0) + get(1) + get(2) + get(5) + get(6) + get(7)) as f64 / clock_ticks_per_second()
}

/// The one-minute load average (`/proc/loadavg`).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The machine: CPU model, logical CPUs, memory and kernel.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// `MemTotal` from `/proc/meminfo`, in MiB.
    pub memory_mib: u64,
    /// Kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
}

impl Machine {
    /// Reads the figures from `/proc` (blank where unreadable).
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_mib: status_field(&meminfo, "MemTotal:") / 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.peak_rss_kib >= s.rss_kib);
        assert!(s.switches > 0);
    }

    #[test]
    fn parses_status_fields() {
        let text = "Name:\tnws\nVmHWM:\t   12345 kB\nVmRSS:\t    6789 kB\n";
        assert_eq!(status_field(text, "VmHWM:"), 12345);
        assert_eq!(status_field(text, "VmRSS:"), 6789);
        assert_eq!(status_field(text, "VmSwap:"), 0);
    }
}
