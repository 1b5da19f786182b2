//! Helpers for the hostile-input, resource-limit and security tests
//! (`tests/tests/hostile.rs`, `tests/tests/security.rs`): raw client probes
//! that send exactly the bytes given, process introspection from `/proc`
//! (open descriptors, memory, listening sockets), any command run with the
//! `nws` "key: value ... ready" protocol (for `unshare`), a resolver jail
//! (a mount namespace with its own resolver files) and a DNS trap that
//! records every query it is sent. Everything stays on 127.0.0.0/8.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// What a server did with the bytes a [`probe`] sent.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Everything the server wrote before closing or before the wait ended.
    pub reply: Vec<u8>,
    /// Whether the server closed the connection (end of file or reset)
    /// within the wait.
    pub closed: bool,
    /// How long until it closed (or the wait ended).
    pub took: Duration,
}

impl Probe {
    /// The reply as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.reply).into_owned()
    }

    /// The HTTP status code of the reply, if it starts with a status line.
    pub fn http_status(&self) -> Option<u16> {
        let text = self.text();
        let mut parts = text.split_whitespace();
        parts.next().filter(|v| v.starts_with("HTTP/"))?;
        parts.next()?.parse().ok()
    }
}

/// Connects to `addr`, sends `bytes`, optionally half-closes (end of file
/// for the server), and reads until the server closes or `wait` passes.
pub async fn probe(addr: &str, bytes: &[u8], half_close: bool, wait: Duration) -> Probe {
    let start = Instant::now();
    let mut sock = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    if !bytes.is_empty() {
        // The server may close before taking everything (that is an answer too).
        let _ = sock.write_all(bytes).await;
    }
    if half_close {
        let _ = sock.shutdown().await;
    }
    let (reply, closed) = read_until_closed(&mut sock, start + wait).await;
    Probe {
        reply,
        closed,
        took: start.elapsed(),
    }
}

/// Reads until end of file, an error (reset), or `deadline`.
pub async fn read_until_closed(sock: &mut TcpStream, deadline: Instant) -> (Vec<u8>, bool) {
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (reply, true),
            Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
            Err(_) => return (reply, false),
        }
    }
}

/// A SOCKS5 CONNECT request (no authentication) for `host:port`.
pub fn socks5_connect_request(host: &str, port: u16) -> Vec<u8> {
    let mut v = vec![5, 1, 0, 5, 1, 0, 3, host.len() as u8];
    v.extend_from_slice(host.as_bytes());
    v.extend_from_slice(&port.to_be_bytes());
    v
}

/// Opens a SOCKS5 tunnel (no authentication) to `host:port` and returns
/// the socket and the reply code (0 = succeeded).
pub async fn socks5_open(proxy: &str, host: &str, port: u16) -> (TcpStream, u8) {
    let mut sock = TcpStream::connect(proxy).await.expect("connect to proxy");
    sock.write_all(&socks5_connect_request(host, port))
        .await
        .expect("write request");
    let mut reply = [0u8; 12];
    let code =
        match tokio::time::timeout(Duration::from_secs(60), sock.read_exact(&mut reply)).await {
            Ok(Ok(_)) => reply[3],
            other => panic!("no SOCKS5 reply: {other:?}"),
        };
    (sock, code)
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Current and peak resident memory (`VmRSS`, `VmHWM`) of `pid`, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// TCP sockets in state LISTEN that process `pid` holds, with their
/// addresses (from `/proc/<pid>/net/tcp{,6}` and the socket inodes of
/// `/proc/<pid>/fd`).
pub fn listening_sockets(pid: u32) -> Vec<SocketAddr> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            if *state != "0A" || !inodes.contains(*inode) {
                continue;
            }
            if let Some(addr) = parse_proc_addr(local, v6) {
                out.push(addr);
            }
        }
    }
    out
}

fn parse_proc_addr(text: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if v6 {
        let mut bytes = [0u8; 16];
        for (i, chunk) in bytes.chunks_mut(4).enumerate() {
            let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Some(SocketAddr::new(Ipv6Addr::from(bytes).into(), port))
    } else {
        let word = u32::from_str_radix(ip, 16).ok()?;
        Some(SocketAddr::new(
            Ipv4Addr::from(word.to_le_bytes()).into(),
            port,
        ))
    }
}

// ---------------------------------------------------------------------------
// Any command speaking the `nws` "key: value ... ready" protocol
// ---------------------------------------------------------------------------

/// A child process that printed `key: value` lines and `ready` (an `nws`
/// command, possibly wrapped in `unshare`, `sh -c`, ...); killed on drop.
pub struct ReadyProcess {
    child: Child,
    /// The `key: value` lines before `ready`.
    pub values: HashMap<String, String>,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

impl ReadyProcess {
    /// Starts `cmd` (stdout and stderr are piped here) and waits up to 60 s
    /// for `ready`. `Err` carries its stderr if it exits or stays silent.
    pub async fn start(mut cmd: Command) -> Result<ReadyProcess, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err_pipe).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let mut values = HashMap::new();
        let out_sink = stdout.clone();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(l)) = lines.next_line().await {
                {
                    let mut s = out_sink.lock().unwrap();
                    s.push_str(&l);
                    s.push('\n');
                }
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
        let out_sink = stdout.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let mut s = out_sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        if !ready {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = child.kill().await;
            return Err(format!(
                "did not print `ready`; stderr:\n{}",
                stderr.lock().unwrap()
            ));
        }
        Ok(ReadyProcess {
            child,
            values,
            stderr,
            stdout,
        })
    }

    /// A value it printed.
    pub fn value(&self, key: &str) -> &str {
        self.values
            .get(key)
            .unwrap_or_else(|| panic!("no `{key}:` line: {:?}", self.values))
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

// ---------------------------------------------------------------------------
// Resolver jail
// ---------------------------------------------------------------------------

/// Resolver files for commands run in their own mount namespace
/// (`unshare --mount`, needs root): `/etc/resolv.conf`,
/// `/etc/nsswitch.conf` and `/etc/hosts` are bind-mounted over with the
/// given texts there, and nowhere else.
pub struct ResolverJail {
    dir: tempfile::TempDir,
}

impl ResolverJail {
    /// A jail with these three files.
    pub fn new(resolv_conf: &str, nsswitch_conf: &str, hosts: &str) -> ResolverJail {
        let dir = tempfile::tempdir().expect("temp dir for the resolver jail");
        for (name, text) in [
            ("resolv.conf", resolv_conf),
            ("nsswitch.conf", nsswitch_conf),
            ("hosts", hosts),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write a resolver file");
        }
        ResolverJail { dir }
    }

    /// A jail where every lookup goes to the DNS server on `ip:53` (a
    /// [`DnsTrap`]): `hosts: dns`, an empty hosts file, one attempt.
    pub fn trap(ip: Ipv4Addr) -> ResolverJail {
        Self::new(
            &format!("nameserver {ip}\noptions attempts:1 timeout:1\n"),
            "hosts: dns\n",
            "",
        )
    }

    /// `inner` (a shell command line) run in a fresh mount namespace with
    /// the jail's files mounted over the system's.
    pub fn command(&self, inner: &str) -> Command {
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {} /etc/resolv.conf && mount --bind {} /etc/nsswitch.conf \
                 && mount --bind {} /etc/hosts && exec {inner}",
                file("resolv.conf"),
                file("nsswitch.conf"),
                file("hosts"),
            ));
        cmd
    }
}

// ---------------------------------------------------------------------------
// DNS trap
// ---------------------------------------------------------------------------

/// A UDP and TCP "name server" on `ip:53` that answers every query with
/// SERVFAIL and remembers the names asked for.
pub struct DnsTrap {
    /// The address it listens on (port 53).
    pub ip: Ipv4Addr,
    queries: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsTrap {
    /// Listens on `ip:53` (UDP and TCP; needs root for port 53).
    pub async fn start(ip: Ipv4Addr) -> std::io::Result<DnsTrap> {
        let udp = UdpSocket::bind((ip, 53)).await?;
        let tcp = tokio::net::TcpListener::bind((ip, 53)).await?;
        let queries = Arc::new(Mutex::new(Vec::new()));
        let q = queries.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let packet = &buf[..n];
                q.lock().unwrap().push(query_name(packet));
                let _ = udp.send_to(&servfail(packet), from).await;
            }
        });
        let q = queries.clone();
        let tcp_task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = tcp.accept().await {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    if sock.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if sock.read_exact(&mut packet).await.is_err() {
                        return;
                    }
                    q.lock().unwrap().push(query_name(&packet));
                    let answer = servfail(&packet);
                    let _ = sock.write_all(&(answer.len() as u16).to_be_bytes()).await;
                    let _ = sock.write_all(&answer).await;
                });
            }
        });
        Ok(DnsTrap {
            ip,
            queries,
            tasks: vec![udp_task, tcp_task],
        })
    }

    /// Every name asked for so far (one entry per query packet).
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

impl Drop for DnsTrap {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The question name of a DNS query (RFC 1035 §4.1.2), dotted.
fn query_name(packet: &[u8]) -> String {
    let mut labels = Vec::new();
    let mut i = 12;
    while let Some(&len) = packet.get(i) {
        if len == 0 || len & 0xC0 != 0 {
            break;
        }
        let label = packet
            .get(i + 1..i + 1 + usize::from(len))
            .unwrap_or_default();
        labels.push(String::from_utf8_lossy(label).into_owned());
        i += 1 + usize::from(len);
    }
    labels.join(".")
}

/// The query turned into a SERVFAIL answer with no records.
fn servfail(query: &[u8]) -> Vec<u8> {
    let mut a = query.to_vec();
    if a.len() >= 12 {
        a[2] = 0x80 | (a[2] & 0x79); // QR, opcode and RD kept
        a[3] = 0x80 | 2; // RA, RCODE 2 (SERVFAIL)
        a[6..12].fill(0);
    }
    a
}
