//! The entry's WebView listener (`nws entry --webview-listen ADDR`) with a
//! real browser: Debian's headless Chromium, proxied through that listener
//! alone, loads a page from an exit's `.nostr` name with 20 sub-resources
//! (scripts, stylesheets, images), each checked for its exact content by
//! the page itself, and is refused a host that is not an NWS name. curl
//! checks the same listener's status codes, and that the entry's other
//! listeners still want their (random, default) credentials. Real `nws`
//! processes (relay, exit, entry), a real HTTP backend; all on 127.0.0.1.
//!
//! Chromium is required: `scripts/install-test-deps.sh` installs it
//! (Debian's `chromium`). Without it the test fails; it never skips.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nws_tests::process::NwsProcess;
use nws_tests::{curl, curl_http};
use tokio::task::{JoinHandle, JoinSet};

/// Sub-resources of the page: (kind, count). 20 in all.
const KINDS: &[(&str, usize)] = &[("js", 12), ("css", 4), ("img", 4)];

/// What the page writes into `<p id="result">` when every sub-resource
/// loaded with the content it expected.
const ALL_OK: &str = "loaded 20/20 ok";

/// How long one Chromium run may take before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The site behind the exit
// ---------------------------------------------------------------------------

/// Deterministic filler of `len` characters for resource `seed`; the page's
/// script computes the same string (`nwsPad`) to check what it received.
fn pad(seed: u32, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ALPHABET[((x >> 24) % 36) as usize] as char
        })
        .collect()
}

/// Sub-resource `n` (0..20) of kind `kind`: its path, seed and filler length.
/// Sizes run from 1 KiB to about 60 KiB, so several take more than one
/// stream segment.
fn resource(kind: &str, i: usize, n: usize) -> (String, u32, usize) {
    let ext = match kind {
        "js" => "js",
        "css" => "css",
        _ => "svg",
    };
    (format!("/{kind}/{i}.{ext}"), n as u32 + 1, 1024 + n * 3000)
}

/// Every path of the site and what it serves: `/` (the page) and the 20
/// sub-resources, each with distinct contents.
fn site() -> HashMap<String, (&'static str, Vec<u8>)> {
    let mut files = HashMap::new();
    let mut tags = String::new();
    let mut expect = String::new();
    let mut n = 0;
    for &(kind, count) in KINDS {
        for i in 0..count {
            let (path, seed, len) = resource(kind, i, n);
            let name = format!("{kind}-{i}");
            let filler = pad(seed, len);
            let (ctype, body, tag) = match kind {
                // A script reports its name and filler.
                "js" => (
                    "application/javascript",
                    format!("nwsGot({name:?}, {filler:?});\n"),
                    format!(
                        "<script src=\"{path}\" onerror=\"nwsFail('{name}', 'error')\"></script>\n"
                    ),
                ),
                // A stylesheet gives its element a custom property.
                "css" => (
                    "text/css",
                    format!("#{name} {{ --nws: \"{name}:{filler}\"; }}\n"),
                    format!(
                        "<link rel=\"stylesheet\" href=\"{path}\" \
                         onerror=\"nwsFail('{name}', 'error')\">\n<div id=\"{name}\"></div>\n"
                    ),
                ),
                // An image has its own size (and the filler in a comment).
                _ => (
                    "image/svg+xml",
                    format!(
                        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\">\
                         <!-- {filler} --><rect width=\"100%\" height=\"100%\" fill=\"#0a0\"/></svg>\n",
                        10 + n,
                        30 + 2 * n
                    ),
                    format!(
                        "<img id=\"{name}\" src=\"{path}\" onerror=\"nwsFail('{name}', 'error')\">\n"
                    ),
                ),
            };
            files.insert(path, (ctype, body.into_bytes()));
            tags.push_str(&tag);
            expect.push_str(&format!(
                "  [{name:?}, {kind:?}, {seed}, {len}, {}, {}],\n",
                10 + n,
                30 + 2 * n
            ));
            n += 1;
        }
    }
    assert_eq!(n, 20);
    let page = format!(
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>nws webview page</title>
<script>
// Filler as the backend makes it (see `pad` in tests/tests/webview.rs).
function nwsPad(seed, len) {{
  const a = "abcdefghijklmnopqrstuvwxyz0123456789";
  let x = (Math.imul(seed, 2654435761) + 1) >>> 0, s = "";
  for (let i = 0; i < len; i++) {{
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    s += a[(x >>> 24) % 36];
  }}
  return s;
}}
const nwsExpect = [
{expect}];
const nwsScripts = {{}};
const nwsFailed = {{}};
function nwsGot(name, filler) {{ nwsScripts[name] = filler; }}
function nwsFail(name, why) {{ nwsFailed[name] = why; }}
window.addEventListener("load", () => {{
  let ok = 0;
  const bad = [];
  for (const [name, kind, seed, len, w, h] of nwsExpect) {{
    const want = nwsPad(seed, len);
    let good = false;
    if (nwsFailed[name]) {{
      bad.push(name + " (" + nwsFailed[name] + ")");
      continue;
    }}
    if (kind === "js") {{
      good = nwsScripts[name] === want;
    }} else if (kind === "css") {{
      const v = getComputedStyle(document.getElementById(name)).getPropertyValue("--nws").trim();
      good = v === '"' + name + ":" + want + '"';
    }} else {{
      const img = document.getElementById(name);
      good = img.complete && img.naturalWidth === w && img.naturalHeight === h;
    }}
    if (good) ok++; else bad.push(name + " (wrong content)");
  }}
  const out = document.getElementById("result");
  out.textContent = ok === nwsExpect.length
    ? "loaded " + ok + "/" + nwsExpect.length + " ok"
    : "loaded " + ok + "/" + nwsExpect.length + "; bad: " + bad.join(", ");
}});
</script>
</head><body>
<h1>nws webview page</h1>
<p id="result">not loaded</p>
{tags}</body></html>
"#
    );
    files.insert(
        "/".to_string(),
        ("text/html; charset=utf-8", page.into_bytes()),
    );
    files
}

/// The paths of the 20 sub-resources.
fn subresource_paths() -> Vec<String> {
    let mut paths = Vec::new();
    let mut n = 0;
    for &(kind, count) in KINDS {
        for i in 0..count {
            paths.push(resource(kind, i, n).0);
            n += 1;
        }
    }
    paths
}

/// An HTTP/1.1 server on 127.0.0.1 serving [`site`]; anything else is 404.
/// It records every request's path, in order.
struct SiteBackend {
    addr: SocketAddr,
    files: Arc<HashMap<String, (&'static str, Vec<u8>)>>,
    served: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl SiteBackend {
    async fn start() -> SiteBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files = Arc::new(site());
        let served = Arc::new(Mutex::new(Vec::new()));
        let (files2, served2) = (files.clone(), served.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (files, served) = (files2.clone(), served2.clone());
                        conns.spawn(async move {
                            let svc = service_fn(move |req: Request<Incoming>| {
                                let path = req.uri().path().to_string();
                                served.lock().unwrap().push(path.clone());
                                let resp = match files.get(&path) {
                                    Some((ctype, body)) => Response::builder()
                                        .header("content-type", *ctype)
                                        .body(Full::new(Bytes::from(body.clone()))),
                                    None => Response::builder()
                                        .status(StatusCode::NOT_FOUND)
                                        .header("content-type", "text/plain")
                                        .body(Full::new(Bytes::from_static(b"not found\n"))),
                                };
                                async move { Ok::<_, Infallible>(resp.unwrap()) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        SiteBackend {
            addr,
            files,
            served,
            task,
        }
    }

    /// The paths requested so far, in order.
    fn served(&self) -> Vec<String> {
        self.served.lock().unwrap().clone()
    }

    fn page(&self) -> &[u8] {
        &self.files["/"].1
    }
}

impl Drop for SiteBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often each path occurs in `served`.
fn counts(served: &[String]) -> HashMap<&str, usize> {
    let mut c = HashMap::new();
    for p in served {
        *c.entry(p.as_str()).or_insert(0) += 1;
    }
    c
}

// ---------------------------------------------------------------------------
// Headless Chromium
// ---------------------------------------------------------------------------

/// What one `chromium --dump-dom` run left.
struct DumpedDom {
    /// The page's DOM as Chromium serialised it (stdout).
    dom: String,
    /// Chromium's log (stderr), for failure messages.
    log: String,
}

/// Loads `url` in headless Chromium whose only proxy is the HTTP proxy at
/// `proxy` (`127.0.0.1:PORT`), with a fresh profile, and returns the DOM it
/// dumps once the page has loaded. Killed (with its child processes) after
/// [`CHROMIUM_TIMEOUT`]. Panics if `chromium` is not installed.
async fn chromium_dump_dom(proxy: &str, url: &str) -> DumpedDom {
    let profile = tempfile::tempdir().unwrap();
    let log_file = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        // The new headless mode (the browser itself, no window).
        "--headless=new",
        // Tests run as root, where Chromium's sandbox cannot start.
        "--no-sandbox",
        // No GPU on this machine.
        "--disable-gpu",
        // Shared memory in the profile's temp files, not /dev/shm (small in
        // containers; Debian's wrapper means to add this flag when /dev/shm
        // is small, but its check breaks where `findmnt` lists /dev/shm
        // twice).
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    // Every request goes to the WebView listener: Chromium then resolves
    // no host itself (the proxy gets absolute-form requests and CONNECTs),
    // so a `.nostr` name reaches the entry unresolved.
    .arg(format!("--proxy-server=http://{proxy}"))
    .args([
        // Fewer requests of Chromium's own (update checks, first-run
        // pages) through the proxy; those left are refused by the
        // listener like any other host that is not an NWS name.
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        // Run the page's scripts until it is idle (virtual time, which
        // waits for pending network loads) before the DOM is dumped.
        "--virtual-time-budget=30000",
        "--dump-dom",
        url,
    ])
    .env_remove("http_proxy")
    .env_remove("https_proxy")
    .env_remove("all_proxy")
    .env_remove("no_proxy")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(log_file.reopen().unwrap())
    // Its own process group, so that its zygote, renderer and GPU
    // processes can be killed with it.
    .process_group(0)
    .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`chromium` is not installed (not on PATH): this test needs Debian's headless \
             Chromium; install it with scripts/install-test-deps.sh (apt-get install chromium)"
        ),
        Err(e) => panic!("cannot start chromium: {e}"),
    };
    let pgid = child.id().expect("chromium has a pid");
    let result = tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait_with_output()).await;
    // Whatever happened, nothing of this Chromium run outlives it.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let log = std::fs::read_to_string(log_file.path()).unwrap_or_default();
    let out = match result {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("waiting for chromium: {e}"),
        Err(_) => panic!(
            "chromium did not finish loading {url} within {CHROMIUM_TIMEOUT:?} (killed); \
             its log:\n{log}"
        ),
    };
    assert!(
        out.status.success(),
        "chromium {url}: {}; its log:\n{log}",
        out.status
    );
    DumpedDom {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        log,
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// Issue 13: headless Chromium through the WebView listener (no proxy
/// credentials) loads a `.nostr` page with 20 sub-resources, every one with
/// the right content and each served exactly once by the backend; a host
/// that is not an NWS name is refused there (403 with its text) and never
/// reaches the backend. curl sees the same through that port, and the HTTP
/// and SOCKS5 listeners of the same entry still want their credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_a_nostr_page_through_the_webview_listener() {
    let backend = SiteBackend::start().await;
    let relay = NwsProcess::spawn(&["relay", "--listen", "127.0.0.1:0"]).await;
    let url = relay.value("relay").to_string();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("exit.key");
    let backend_addr = backend.addr.to_string();
    let exit = NwsProcess::spawn(&[
        "exit",
        "--relay",
        &url,
        "--key-file",
        key.to_str().unwrap(),
        "--backend",
        &backend_addr,
    ])
    .await;
    // Credentials left on (the default: random ones, printed).
    let entry = NwsProcess::spawn(&[
        "entry",
        "--relay",
        &url,
        "--socks",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--webview-listen",
        "127.0.0.1:0",
    ])
    .await;
    let webview = entry.value("webview").to_string();
    let (user, pass) = (entry.value("proxy-user"), entry.value("proxy-password"));
    assert!(!user.is_empty() && !pass.is_empty(), "{:?}", entry.values);
    let domain = exit.value("domain").to_string();
    assert!(domain.ends_with(".nostr"), "{domain}");
    let page_url = format!("http://{domain}/");

    // Chromium loads the page and its 20 sub-resources.
    let got = chromium_dump_dom(&webview, &page_url).await;
    let served = backend.served();
    let context = || {
        format!(
            "served by the backend: {served:?}\nDOM:\n{}\nentry log:\n{}\nexit log:\n{}\n\
             chromium log:\n{}",
            got.dom,
            entry.stderr(),
            exit.stderr(),
            got.log
        )
    };
    assert!(
        got.dom.contains(&format!("<p id=\"result\">{ALL_OK}</p>")),
        "the page did not report {ALL_OK:?}\n{}",
        context()
    );
    let count = counts(&served);
    assert_eq!(count.get("/"), Some(&1), "the page once\n{}", context());
    for path in subresource_paths() {
        assert_eq!(
            count.get(path.as_str()),
            Some(&1),
            "{path} once\n{}",
            context()
        );
    }
    // Chromium asks for /favicon.ico of its own accord (a 404 here); what
    // else the backend saw is reported, not asserted.
    let others: Vec<&String> = served
        .iter()
        .filter(|p| *p != "/" && !subresource_paths().contains(p))
        .collect();
    eprintln!(
        "chromium: backend served {} requests: the page, 20 sub-resources and {others:?}",
        served.len()
    );

    // A host that is not an NWS name, through the same listener: the
    // entry's 403 text is what Chromium shows; nothing reaches the backend
    // (example.org is never resolved nor dialled: the entry refuses it).
    let before = backend.served().len();
    let refused = chromium_dump_dom(&webview, "http://example.org/").await;
    assert!(
        refused.dom.contains("`example.org` is not an NWS name")
            && refused.dom.contains("this listener serves only those"),
        "Chromium should show the WebView listener's 403 text for example.org; DOM:\n{}\n\
         entry log:\n{}\nchromium log:\n{}",
        refused.dom,
        entry.stderr(),
        refused.log
    );
    assert!(!refused.dom.contains("nws webview page"), "{}", refused.dom);
    assert!(!refused.dom.contains(ALL_OK), "{}", refused.dom);
    assert_eq!(backend.served().len(), before, "{:?}", backend.served());

    // curl, no credentials, through the WebView listener: the page (200,
    // byte for byte) by its `.nostr`, npub and nprofile names; 403 with the
    // listener's text for example.org, forwarded and as CONNECT.
    let proxy = format!("http://{webview}");
    for host in [domain.as_str(), exit.value("npub"), exit.value("nprofile")] {
        let out = curl_http(&["--proxy", &proxy, &format!("http://{host}/")]).await;
        assert_eq!(out.http_code, 200, "{host}: {out:?}");
        assert_eq!(out.body, backend.page(), "{host}");
    }
    let out = curl_http(&["--proxy", &proxy, "http://example.org/"]).await;
    assert_eq!(out.http_code, 403, "{out:?}");
    let text = String::from_utf8_lossy(&out.body);
    assert!(text.contains("`example.org` is not an NWS name"), "{text}");
    assert!(text.contains("this listener serves only those"), "{text}");
    let out = curl_http(&["--proxytunnel", "--proxy", &proxy, "http://example.org/"]).await;
    assert_eq!(out.connect_code, 403, "{out:?}");
    assert_eq!(out.http_code, 0, "{out:?}");

    // The entry's HTTP listener still wants its credentials (407 without,
    // 200 with), and so does SOCKS5 (curl 97 without, the page with).
    let http = entry.value("http");
    let out = curl_http(&["--proxy", &format!("http://{http}"), &page_url]).await;
    assert_eq!(out.http_code, 407, "{out:?}");
    let out = curl_http(&[
        "--proxy",
        &format!("http://{user}:{pass}@{http}"),
        &page_url,
    ])
    .await;
    assert_eq!(out.http_code, 200, "{out:?}");
    assert_eq!(out.body, backend.page());
    let socks = entry.value("socks5");
    let out = curl(&["--proxy", &format!("socks5h://{socks}"), &page_url]).await;
    assert_eq!(out.status, 97, "{out:?}");
    let out = curl(&[
        "--proxy",
        &format!("socks5h://{user}:{pass}@{socks}"),
        &page_url,
    ])
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, backend.page());

    // The backend saw the page 4 times more (curl: 3 names through the
    // WebView listener, then HTTP and SOCKS5 with credentials) and nothing
    // for example.org.
    let after = counts(&backend.served()).get("/").copied().unwrap_or(0);
    assert_eq!(after, 1 + 5, "{:?}", backend.served());

    // The entry logged each refusal of example.org:80 on the WebView
    // listener: Chromium's navigation, curl's forwarded request and curl's
    // CONNECT, at least (the log is read from a pipe: wait for the lines).
    let refused_80 = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("WebView proxy example.org:80: ") && l.contains("not an NWS name")
            })
            .count()
    };
    let mut log = entry.stderr();
    for _ in 0..100 {
        if refused_80(&log) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        log = entry.stderr();
    }
    assert!(refused_80(&log) >= 3, "{log}");
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WebView proxy ") && l.contains("not an NWS name"))
        .collect();
    eprintln!("WebView listener refusals:\n{}", refusals.join("\n"));
}
