//! Test harness of the HTTP API: `runcell serve` as a child process on port 0 with its own
//! data directory, a blocking HTTP client, a scripted webhook receiver, and helpers to poll
//! and to inspect processes.
//!
//! Every server is killed (SIGKILL) when its handle is dropped; if the test is panicking, the
//! server's log is printed first.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::HeaderMap;
use serde_json::Value;

/// The two tenants every test server knows.
pub const KEY_A: &str = "it-key-tenant-a-0123456789abcdef";
pub const KEY_B: &str = "it-key-tenant-b-0123456789abcdef";

/// Server settings read from the environment, cleared so that the caller's environment does
/// not leak into the test servers.
const SERVER_ENV: &[&str] = &[
    "RUNCELL_LISTEN",
    "RUNCELL_DATA_DIR",
    "RUNCELL_DATABASE_URL",
    "RUNCELL_CONFIG",
    "RUNCELL_API_KEYS",
    "RUNCELL_WEBHOOK_ALLOW",
    "RUNCELL_EGRESS_ALLOW",
    "RUNCELL_EGRESS_RESOLVER",
    "RUNCELL_RATE_LIMIT",
    "RUNCELL_CONCURRENCY",
    "RUNCELL_MAX_QUEUE",
    "RUNCELL_TENANT_MAX_RUNNING",
    "RUNCELL_TENANT_MAX_QUEUED",
    "RUNCELL_BODY_TIMEOUT_SECS",
    "RUNCELL_RETENTION_SECS",
    "RUNCELL_POOL_SIZE",
    "RUNCELL_SANDBOX_POOL_SIZE",
    "RUNCELL_ADMIN_KEYS",
    "RUNCELL_ADVERTISE",
    "RUNCELL_LEASE_SECS",
];

/// How a test server is started.
#[derive(Default, Clone)]
pub struct Opts {
    env: Vec<(String, String)>,
    config: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
}

impl Opts {
    pub fn new() -> Opts {
        Opts::default()
    }

    /// An environment variable of the server (`RUNCELL_CONCURRENCY`, …).
    pub fn env(mut self, k: &str, v: &str) -> Opts {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The text of a TOML configuration file (`RUNCELL_CONFIG`).
    pub fn config(mut self, toml: &str) -> Opts {
        self.config = Some(toml.into());
        self
    }

    /// An existing data directory (to restart on the data of an earlier server).
    pub fn data_dir(mut self, dir: &Path) -> Opts {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// A PostgreSQL database to keep the records in (`--database-url`; see
    /// [`crate::pg::TestDatabase`]) instead of SQLite in the data directory.
    pub fn database_url(mut self, url: &str) -> Opts {
        self.database_url = Some(url.into());
        self
    }
}

/// A running `runcell serve`.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
    http: Client,
    _tmp: tempfile::TempDir,
}

/// The blocking client of the tests: no proxy, generous timeouts.
pub fn client() -> Client {
    // reqwest is built with `rustls-no-provider` (for the server): give it one, once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("build the HTTP client")
}

fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests must run as root (CI runs them as root)"
    );
}

impl Server {
    /// A server with the two test keys and every other setting at its default.
    pub fn start() -> Server {
        Server::with(Opts::new())
    }

    /// A server with the two test keys and `opts`.
    pub fn with(opts: Opts) -> Server {
        assert_root();
        let tmp = tempfile::tempdir().expect("temporary directory");
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("data"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runcell"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir);
        if let Some(url) = &opts.database_url {
            cmd.arg("--database-url").arg(url);
        }
        for k in SERVER_ENV {
            cmd.env_remove(k);
        }
        cmd.env("RUNCELL_API_KEYS", format!("{KEY_A},{KEY_B}"));
        // Pre-started sandboxes cost a kernel each: only tests that want them ask for them.
        cmd.env("RUNCELL_SANDBOX_POOL_SIZE", "0");
        if let Some(text) = &opts.config {
            let f = tmp.path().join("runcell.toml");
            std::fs::write(&f, text).expect("write the config file");
            cmd.env("RUNCELL_CONFIG", &f);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // If the test process dies without dropping the handle, the server dies too
                // (its spawner then destroys its jails).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // Everything that can fail comes before the child exists, or kills it.
        let http = client();
        let mut child = cmd.spawn().expect("start runcell serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            let mut tx = Some(tx);
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                if let Some(rest) = text.strip_prefix("runcell: listening on http://")
                    && let Some(addr) = rest.split_whitespace().next()
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.to_string());
                }
                log2.lock().unwrap().push_str(&text);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "the server did not say it was listening ({e}); its log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Server {
            child,
            url: format!("http://{addr}"),
            data_dir,
            log,
            http,
            _tmp: tmp,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server has written on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A request to `path` (relative to the server) with `key` as `X-API-Key`, if any.
    pub fn req(&self, method: &str, path: &str, key: Option<&str>) -> RequestBuilder {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let rb = self.http.request(m, format!("{}{path}", self.url));
        match key {
            Some(k) => rb.header("X-API-Key", k),
            None => rb,
        }
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> Resp {
        Resp::of(self.req("GET", path, key).send())
    }

    /// POSTs a JSON value.
    pub fn post(&self, path: &str, key: Option<&str>, body: &Value) -> Resp {
        Resp::of(
            self.req("POST", path, key)
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .send(),
        )
    }

    /// POSTs raw bytes as the body.
    pub fn post_raw(&self, path: &str, key: Option<&str>, body: Vec<u8>) -> Resp {
        Resp::of(
            self.req("POST", path, key)
                .header("Content-Type", "application/json")
                .body(body)
                .send(),
        )
    }

    /// `POST /api/v1/execute` as tenant A; the result, asserting 200.
    pub fn execute(&self, body: &Value) -> Value {
        self.post("/api/v1/execute", Some(KEY_A), body)
            .expect(200)
            .json()
    }

    /// `POST /api/v1/execute/async` as `key`; the execution id, asserting 202.
    pub fn submit(&self, key: &str, body: &Value) -> String {
        let v = self
            .post("/api/v1/execute/async", Some(key), body)
            .expect(202)
            .json();
        v["execution_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no execution_id: {v}"))
            .to_string()
    }

    /// `GET /api/v1/executions/{id}` as `key`, asserting 200.
    pub fn execution(&self, key: &str, id: &str) -> Value {
        self.get(&format!("/api/v1/executions/{id}"), Some(key))
            .expect(200)
            .json()
    }

    /// Polls an execution until it is `completed` or `failed`.
    pub fn wait_done(&self, key: &str, id: &str, timeout: Duration) -> Value {
        eventually(timeout, &format!("execution {id} to finish"), || {
            let v = self.execution(key, id);
            matches!(v["status"].as_str(), Some("completed" | "failed")).then_some(v)
        })
    }

    /// Polls an execution until it has `status`.
    pub fn wait_status(&self, key: &str, id: &str, status: &str, timeout: Duration) -> Value {
        eventually(timeout, &format!("execution {id} to be {status}"), || {
            let v = self.execution(key, id);
            (v["status"] == status).then_some(v)
        })
    }

    /// Every execution of `key` (all pages of the list, newest first).
    pub fn list_all(&self, key: &str, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let mut path = format!("/api/v1/executions?limit=100{query}");
            if !cursor.is_empty() {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let v = self.get(&path, Some(key)).expect(200).json();
            out.extend(v["executions"].as_array().expect("executions").clone());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => return out,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: String = {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(60)..].join("\n")
            };
            eprintln!("--- log of the server at {} ---\n{tail}\n---", self.url);
        }
    }
}

/// A finished HTTP exchange.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    /// Reads a response to its end.
    pub fn of(r: reqwest::Result<reqwest::blocking::Response>) -> Resp {
        let r = r.expect("the HTTP request failed");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().expect("read the response body");
        Resp {
            status,
            headers,
            text,
        }
    }

    /// Asserts the status; returns self.
    #[track_caller]
    pub fn expect(self, status: u16) -> Resp {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// The body as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }

    /// Asserts an API error: this status and `{"detail": <sentence>, "code": <UPPER_SNAKE>}`
    /// (with this code, if given). Returns the body.
    #[track_caller]
    pub fn error(&self, status: u16, code: Option<&str>) -> Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        let v = self.json();
        assert_error_body(&v);
        if let Some(c) = code {
            assert_eq!(v["code"], c, "{v}");
        }
        v
    }
}

/// Runs `runcell serve` on a loopback port over `data_dir` with `args` and `env` (set, or
/// removed when `None`; `RUNCELL_CONFIG` is always removed), expecting it to refuse to start:
/// exit code 125 with a sentence saying `says`, never a panic. Returns what it printed.
pub fn serve_refuses(
    data_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, Option<&str>)],
    says: &str,
) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runcell"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env_remove("RUNCELL_CONFIG");
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("run runcell serve");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(125), "{args:?} {env:?}: {stderr}");
    assert!(stderr.contains(says), "{args:?} {env:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} {env:?}: {stderr}");
    stderr
}

/// Asserts `{"detail": "<non-empty>", "code": "<UPPER_SNAKE>"}`.
#[track_caller]
pub fn assert_error_body(v: &Value) {
    let detail = v["detail"].as_str().unwrap_or_default();
    assert!(!detail.trim().is_empty(), "no detail: {v}");
    let code = v["code"].as_str().unwrap_or_default();
    assert!(
        !code.is_empty()
            && code
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
        "code is not UPPER_SNAKE: {v}"
    );
}

/// The keys of a JSON object, sorted.
#[track_caller]
pub fn sorted_keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    keys.sort();
    keys
}

/// Calls `f` every 50 ms until it returns something; panics after `timeout`.
#[track_caller]
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True for a UUID v4 in its canonical lowercase form.
pub fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            14 => *c == b'4',
            19 => matches!(c, b'8' | b'9' | b'a' | b'b'),
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

/// True for an RFC 3339 UTC timestamp with milliseconds (`2026-11-23T10:00:00.123Z`).
pub fn is_timestamp(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Milliseconds since the Unix epoch of an API timestamp (`2026-11-23T10:00:00.123Z`).
#[track_caller]
pub fn timestamp_ms(v: &Value) -> i64 {
    assert!(
        is_timestamp(v),
        "not an RFC 3339 UTC timestamp with ms: {v}"
    );
    let s = v.as_str().unwrap();
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, mo, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000 + n(17, 19) * 1000 + n(20, 23)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
pub struct Hook {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Hook {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The headers as an `http` header map (for the Standard Webhooks verifier).
    pub fn header_map(&self) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in &self.headers {
            m.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                reqwest::header::HeaderValue::from_str(v).expect("header value"),
            );
        }
        m
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1 that records every request and answers with scripted
/// statuses (then 200).
pub struct Receiver {
    pub port: u16,
    hooks: Arc<Mutex<Vec<Hook>>>,
    stop: Arc<AtomicBool>,
}

fn read_request(stream: &mut TcpStream) -> std::io::Result<Hook> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Hook {
        method,
        path,
        headers,
        body,
    })
}

/// How a [`Receiver`] answers: the status for a request, given the ones before it.
type Answer = Box<dyn Fn(&[Hook], &Hook) -> u16 + Send>;

impl Receiver {
    /// Answers the n-th request with `statuses[n]`, and 200 after them.
    pub fn start(statuses: &[u16]) -> Receiver {
        let statuses = statuses.to_vec();
        Receiver::answering(move |before, _| statuses.get(before.len()).copied().unwrap_or(200))
    }

    /// Answers each request with `answer(requests before it, the request)`.
    pub fn answering(answer: impl Fn(&[Hook], &Hook) -> u16 + Send + 'static) -> Receiver {
        let answer: Answer = Box::new(answer);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let hooks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (Arc::clone(&hooks), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = conn else { continue };
                let Ok(hook) = read_request(&mut stream) else {
                    continue;
                };
                let status = {
                    let mut hooks = h.lock().unwrap();
                    let status = answer(&hooks, &hook);
                    hooks.push(hook);
                    status
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} Scripted\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                let _ = stream.flush();
            }
        });
        Receiver { port, hooks, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests came in.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Hook> {
        eventually(timeout, &format!("{n} webhook request(s)"), || {
            let h = self.hooks();
            (h.len() >= n).then_some(h)
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// Start time in clock ticks since boot (tells a pid's reuse apart).
    pub start: u64,
    pub state: char,
}

/// The process `pid`, if it exists.
pub fn proc_info(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) … starttime(22), numbered from 1 in proc(5).
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())?;
    Some(Proc {
        pid,
        ppid,
        uid,
        start,
        state,
    })
}

/// Every process on the host.
pub fn all_procs() -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_info)
        .collect()
}

/// Every descendant of `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<Proc> {
    let procs = all_procs();
    let mut found: Vec<Proc> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for c in procs.iter().filter(|c| c.ppid == p) {
            if !found.iter().any(|f| f.pid == c.pid) {
                found.push(c.clone());
                frontier.push(c.pid);
            }
        }
    }
    found
}

/// First host uid of jails.
pub const JAIL_UID_BASE: u32 = 0x5f00_0000;

/// One server-sent event and when it arrived.
pub struct SseEvent {
    pub at: Instant,
    pub v: Value,
}

/// Reads `data: {…}\n\n` events, checking the framing of each (one JSON object on one line,
/// an integer Unix-ms `timestamp`, a `type` among `types`), until the stream ends or `stop`
/// says so.
pub fn read_sse(
    resp: &mut reqwest::blocking::Response,
    types: &[&str],
    mut stop: impl FnMut(&Value) -> bool,
) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block = String::from_utf8(buf[..end].to_vec()).expect("UTF-8 events");
            buf.drain(..end + 2);
            let line = block
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a `data: ` event: {block:?}"));
            assert!(!line.contains('\n'), "one line per event: {block:?}");
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("event is not JSON ({e}): {line:?}"));
            assert!(
                v["timestamp"].is_u64() && v["timestamp"].as_u64().unwrap() > 1_600_000_000_000,
                "integer Unix ms timestamp: {v}"
            );
            let t = v["type"].as_str().unwrap_or_default();
            assert!(types.contains(&t), "unknown event type: {v}");
            let done = stop(&v);
            events.push(SseEvent {
                at: Instant::now(),
                v,
            });
            if done {
                return events;
            }
        }
        let n = resp.read(&mut chunk).expect("read the stream");
        if n == 0 {
            assert!(
                buf.iter().all(|b| b.is_ascii_whitespace()),
                "the stream ended inside an event: {:?}",
                String::from_utf8_lossy(&buf)
            );
            return events;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The `text` of every event of `kind`, joined.
pub fn sse_text(events: &[SseEvent], kind: &str) -> String {
    events
        .iter()
        .filter(|e| e.v["type"] == kind)
        .map(|e| e.v["text"].as_str().expect("text").to_string())
        .collect()
}

/// The live (non-zombie) jail processes the server `pid` started.
pub fn jail_procs(pid: u32) -> Vec<Proc> {
    descendants(pid)
        .into_iter()
        .filter(|p| p.uid >= JAIL_UID_BASE && p.state != 'Z')
        .collect()
}

/// True while the process of `p` (same pid, same start) exists and is not a zombie.
pub fn alive(p: &Proc) -> bool {
    proc_info(p.pid).is_some_and(|now| now.start == p.start && now.state != 'Z')
}

/// Asserts an execd-style error: this status and `{"code": <UPPER_SNAKE>, "message":
/// "<sentence>"}` (with this code, if given). Returns the body.
#[track_caller]
pub fn execd_error(r: &Resp, status: u16, code: Option<&str>) -> Value {
    assert_eq!(r.status, status, "unexpected status; body: {}", r.text);
    let v = r.json();
    let c = v["code"].as_str().unwrap_or_default();
    assert!(
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
        "execd errors are {{\"code\", \"message\"}} with an UPPER_SNAKE code: {v}"
    );
    assert!(
        v["message"].as_str().is_some_and(|m| !m.trim().is_empty()),
        "execd errors have a message: {v}"
    );
    if let Some(code) = code {
        assert_eq!(v["code"], code, "{v}");
    }
    v
}
