//! Runs the real `nws` binary as child processes: `nws relay`, `nws exit`,
//! `nws entry`. Each long-running command prints `key: value` lines and then
//! `ready`; [`NwsProcess::spawn`] waits for that and keeps the values.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Path of the `nws` binary, built once per test process with the same cargo
/// that runs the tests (so it is never stale).
pub fn nws_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            // `--workspace` resolves features as `cargo test --workspace` does, so
            // this build reuses its artifacts instead of rebuilding ring and rustls
            // with another feature set.
            .args(["build", "--quiet", "--workspace", "--bin", "nws"])
            .arg("--message-format=json")
            .current_dir(workspace_root())
            .stderr(Stdio::inherit())
            .output()
            .expect("cannot run cargo build for the nws binary");
        assert!(
            out.status.success(),
            "cargo build --workspace --bin nws failed"
        );
        executable_of(&out.stdout, "nws")
            .expect("cargo build reported no executable for the nws binary")
    })
    .clone()
}

/// The path cargo reports (`--message-format=json`, a `compiler-artifact`
/// line) for the executable of binary target `name`.
fn executable_of(messages: &[u8], name: &str) -> Option<PathBuf> {
    messages
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// With `NWS_TEST_LOG_DIR` set, a file `<dir>/nws-<command>-<pid>.log` that a
/// process's stderr is copied to as it comes (to read the logs of a test that
/// failed, or of one that passed); `None` otherwise or if it cannot be created.
fn log_copy(args: &[&str], pid: Option<u32>) -> Option<std::fs::File> {
    let dir = std::env::var_os("NWS_TEST_LOG_DIR").filter(|d| !d.is_empty())?;
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).ok()?;
    let command = args.first().copied().unwrap_or("nws");
    let path = dir.join(format!("nws-{command}-{}.log", pid.unwrap_or(0)));
    std::fs::File::create(path).ok()
}

/// A running `nws` child process; killed on drop.
pub struct NwsProcess {
    child: Child,
    /// The `key: value` lines it printed before `ready`.
    pub values: HashMap<String, String>,
    stderr: Arc<Mutex<String>>,
}

impl NwsProcess {
    /// Starts `nws <args>` and waits (at most 60 s) until it prints `ready`.
    /// Panics with its stderr if it exits first.
    pub async fn spawn(args: &[&str]) -> NwsProcess {
        Self::spawn_env(args, &[]).await
    }

    /// Starts an open entry proxy (`--no-auth`, so that curl needs no
    /// credentials) on `relays`, SOCKS5 on a free loopback port, HTTP too
    /// when `http`, with `extra` arguments; prints `socks5:` (and `http:`).
    pub async fn entry(relays: &[&str], http: bool, extra: &[&str]) -> NwsProcess {
        let mut args = vec!["entry", "--no-auth", "--socks", "127.0.0.1:0", "--http"];
        args.push(if http { "127.0.0.1:0" } else { "off" });
        for r in relays {
            args.extend_from_slice(&["--relay", r]);
        }
        args.extend_from_slice(extra);
        Self::spawn(&args).await
    }

    /// Like [`NwsProcess::spawn`] with extra environment variables.
    pub async fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> NwsProcess {
        let mut cmd = Command::new(nws_bin());
        cmd.args(args)
            .env("RUST_LOG", "info,nws_core=debug,nws_protocol=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("cannot start nws");
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        let mut copy = log_copy(args, child.id());
        tokio::spawn(async move {
            use std::io::Write;
            let mut lines = BufReader::new(err_pipe).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(f) = copy.as_mut() {
                    let _ = writeln!(f, "{l}");
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        let out = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(out).lines();
        let mut values = HashMap::new();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
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
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        if !ready {
            tokio::time::sleep(Duration::from_millis(200)).await;
            panic!(
                "nws {args:?} did not become ready; stderr:\n{}",
                stderr.lock().unwrap()
            );
        }
        NwsProcess {
            child,
            values,
            stderr,
        }
    }

    /// A value it printed (`relay`, `domain`, `socks5`, `http`, ...).
    pub fn value(&self, key: &str) -> &str {
        self.values
            .get(key)
            .unwrap_or_else(|| panic!("nws printed no `{key}:` line: {:?}", self.values))
    }

    /// Whether it printed a `key:` line.
    pub fn has_value(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// Everything it wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Peak resident memory so far (`VmHWM` from `/proc`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Kills the process at once (SIGKILL), like a crash, and waits for it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM and waits (at most 10 s) for a clean exit; returns the
    /// exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(Ok(s)) => s.code(),
            _ => None,
        }
    }
}
