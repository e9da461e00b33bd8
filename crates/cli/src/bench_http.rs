//! `runcell bench --http`: load on the HTTP API (synchronous `print(42)` in Python, JavaScript
//! and C, the latter with one source and with unique sources) at
//! several concurrencies, next to a bare-spawn baseline doing the same work, in one run.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::json;

use crate::Global;
use crate::bench::BenchArgs;

const PY: &str = "print(42)";
const JS: &str = "console.log(42)";
const C: &str = "#include <stdio.h>\nint main(void) { printf(\"42\\n\"); return 0; }\n";

#[derive(Debug, Serialize)]
struct Row {
    language: &'static str,
    concurrency: usize,
    requests: usize,
    runcell_p50_ms: f64,
    runcell_p99_ms: f64,
    runcell_per_sec: f64,
    bare_p50_ms: f64,
    bare_p99_ms: f64,
    bare_per_sec: f64,
    /// The machine's busy CPU time per execution (every CPU, the kernel's own threads
    /// included), from the start of the load until its last teardown.
    runcell_cpu_ms: f64,
    bare_cpu_ms: f64,
    errors: usize,
}

/// Busy CPU time of the whole machine so far (user, system and interrupts of every CPU,
/// kernel threads included: teardown work the kernel defers counts), from `/proc/stat`.
fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .map(|cpu| {
            // cpu user nice system idle iowait irq softirq steal ...
            cpu.split_whitespace()
                .skip(1)
                .enumerate()
                .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6))
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / hz))
}

/// The kernel's own CPU price, per run, of the namespaces a jail gets (user, mount, pid,
/// network, IPC, UTS, cgroup), with no mount, no cgroup and no runcell code: a floor no jail
/// with fresh namespaces per run goes below. Measured as the difference between util-linux's
/// `unshare --fork /bin/true` with and without them (forking this benchmark itself would
/// price its own large address space instead). Returns (all of them, without the network
/// one), or `None` without `unshare`.
fn namespace_floor(n: usize) -> Option<(f64, f64)> {
    const UNSHARE: &str = "/usr/bin/unshare";
    if !std::path::Path::new(UNSHARE).exists() {
        return None;
    }
    let run = |namespaces: &[&str]| {
        with_cpu(n, || {
            for _ in 0..n {
                let _ = Command::new(UNSHARE)
                    .args(namespaces)
                    .args(["--fork", "/bin/true"])
                    .status();
            }
        })
        .1
    };
    let offline = ["--user", "--mount", "--pid", "--ipc", "--uts", "--cgroup"];
    let base = run(&[]);
    let all = run(&[&offline[..], &["--net"]].concat());
    let without_net = run(&offline);
    Some(((all - base).max(0.0), (without_net - base).max(0.0)))
}

/// Runs `work` and returns its result with the machine's busy CPU time per `n` from its start
/// until 300 ms after it (teardowns finish then: a jail's, the kernel's deferred cleanup).
fn with_cpu<T>(n: usize, work: impl FnOnce() -> T) -> (T, f64) {
    let before = machine_busy();
    let out = work();
    std::thread::sleep(Duration::from_millis(300));
    let used = machine_busy().saturating_sub(before);
    (out, used.as_secs_f64() * 1e3 / n.max(1) as f64)
}

/// A server started for the benchmark; killed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    pub(crate) key: String,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_server(concurrency: Option<usize>) -> Result<Server> {
    start_server_with(concurrency, &[])
}

/// A server with extra environment variables.
pub(crate) fn start_server_with(
    concurrency: Option<usize>,
    env: &[(&str, &str)],
) -> Result<Server> {
    let data = tempfile::tempdir()?;
    let key = format!("bench-{}", std::process::id()).repeat(2);
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("RUNCELL_API_KEYS", &key)
        .env("RUNCELL_RATE_LIMIT", "100000000")
        .env("RUNCELL_MAX_QUEUE", "100000")
        .env("RUNCELL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(c) = concurrency {
        cmd.env("RUNCELL_CONCURRENCY", c.to_string());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("starting runcell serve")?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let base = loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow!("the server exited before it was ready"))??;
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Ok(Server {
        child,
        base,
        key,
        _data: data,
    })
}

/// Waits (at most `max`) until the machine is idle: a half-second window in which the CPUs
/// were at least 90% idle (`/proc/stat`).
fn settle(max: Duration) {
    fn idle_total() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // idle + iowait, and the sum of all fields.
        Some((cpu.get(3)? + cpu.get(4).unwrap_or(&0), cpu.iter().sum()))
    }
    let started = Instant::now();
    while started.elapsed() < max {
        let Some((i0, t0)) = idle_total() else { return };
        std::thread::sleep(Duration::from_millis(500));
        let Some((i1, t1)) = idle_total() else { return };
        if t1 > t0 && (i1 - i0) as f64 / (t1 - t0) as f64 >= 0.9 {
            return;
        }
    }
}

pub(crate) fn percentile(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
}

/// Runs `total` calls of `f` with `conc` workers; returns latencies, wall time and errors.
async fn load<F, Fut>(total: usize, conc: usize, f: F) -> (Vec<Duration>, Duration, usize)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (f, next) = (Arc::clone(&f), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while next.fetch_add(1, Ordering::SeqCst) < total {
                let t = Instant::now();
                if !f().await {
                    errors += 1;
                }
                lat.push(t.elapsed());
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    (all, started.elapsed(), errors)
}

fn bare_node() -> bool {
    Command::new("/usr/bin/node")
        .args(["-e", JS])
        .output()
        .is_ok_and(|o| o.stdout == b"42\n")
}

fn bare_python() -> bool {
    Command::new("/usr/bin/python3")
        .args(["-c", PY])
        .output()
        .is_ok_and(|o| o.stdout == b"42\n")
}

fn bare_c(dir: &std::path::Path, n: usize) -> bool {
    let src = dir.join(format!("p{n}.c"));
    let bin = dir.join(format!("p{n}"));
    std::fs::write(&src, C).is_ok()
        && Command::new("/usr/bin/gcc")
            .args(["-O2", "-pipe", "-o"])
            .arg(&bin)
            .arg(&src)
            .arg("-lm")
            .status()
            .is_ok_and(|s| s.success())
        && Command::new(&bin)
            .output()
            .is_ok_and(|o| o.stdout == b"42\n")
}

/// The scenarios `--scenarios` can choose.
const SCENARIOS: [&str; 6] = [
    "python",
    "python-nozygote",
    "python-cold",
    "javascript",
    "c",
    "c-cold",
];

pub fn bench_http(_global: &Global, args: &BenchArgs) -> Result<i32> {
    let levels = &args.concurrency;
    if levels.is_empty() || levels.contains(&0) {
        bail!("--concurrency takes positive numbers, e.g. 1,8,64");
    }
    if let Some(unknown) = args
        .scenarios
        .iter()
        .find(|s| !SCENARIOS.contains(&s.as_str()))
    {
        bail!(
            "--scenarios: there is no scenario {unknown:?}; there are {}",
            SCENARIOS.join(", ")
        );
    }
    let server = start_server(args.server_concurrency)?;
    // The same server without warm interpreters, for Python's cold start next to its warm one.
    let cold = start_server_with(args.server_concurrency, &[("RUNCELL_WARM_POOL_SIZE", "0")])?;
    // And with warm interpreters each started in its jail, not forked from Python's zygote.
    let unforked = start_server_with(args.server_concurrency, &[("RUNCELL_ZYGOTES", "0")])?;
    // Let the three servers finish their start-up work (jail pools, warm interpreters, the
    // languages' version probes) before anything is measured: otherwise the first scenario
    // shares the CPUs with it (measured: 23 ms instead of 11 ms for whichever Python scenario
    // came first).
    settle(Duration::from_secs(30));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runcell_server::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let scratch = tempfile::tempdir()?;
    let mut rows = Vec::new();
    // "c" sends the same source every time (compiled once, then from the compile cache);
    // "c-cold" makes every source unique, so every request compiles.
    // "python" runs in warm interpreters forked from the zygote (the default),
    // "python-nozygote" in warm interpreters each started in its jail, "python-cold" starts
    // one per run.
    let scenarios = [
        ("python", PY),
        ("python-nozygote", PY),
        ("python-cold", PY),
        ("javascript", JS),
        ("c", C),
        ("c-cold", C),
    ];
    let chosen = |name: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == name);
    for (language, code) in scenarios.into_iter().filter(|(name, _)| chosen(name)) {
        let target = match language {
            "python-cold" => &cold,
            "python-nozygote" => &unforked,
            _ => &server,
        };
        let url = format!("{}/api/v1/execute", target.base);
        let call = {
            let (client, url, key) = (client.clone(), url.clone(), target.key.clone());
            let unique = Arc::new(AtomicUsize::new(0));
            move || {
                let body = if language == "c-cold" {
                    let n = unique.fetch_add(1, Ordering::SeqCst);
                    let code = format!("// request {n} of {}\n{code}", std::process::id());
                    json!({"language": "c", "code": code}).to_string()
                } else {
                    let language = language
                        .trim_end_matches("-cold")
                        .trim_end_matches("-nozygote");
                    json!({"language": language, "code": code}).to_string()
                };
                let req = client
                    .post(&url)
                    .header("x-api-key", &key)
                    .header("content-type", "application/json")
                    .body(body);
                async move {
                    match req.send().await {
                        Ok(r) if r.status().is_success() => r
                            .json::<serde_json::Value>()
                            .await
                            .is_ok_and(|v| v["stdout"] == "42\n"),
                        _ => false,
                    }
                }
            }
        };
        // Warm up: jail pool, page cache, compiler.
        rt.block_on(load(8, 2, call.clone()));
        for &conc in levels {
            let total = args.requests.max(conc);
            let ((mut lat, wall, errors), cpu_ms) =
                with_cpu(total, || rt.block_on(load(total, conc, call.clone())));
            let dir = scratch.path().to_path_buf();
            let counter = Arc::new(AtomicUsize::new(0));
            let bare_load = load(total, conc, move || {
                let (dir, counter) = (dir.clone(), Arc::clone(&counter));
                async move {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    tokio::task::spawn_blocking(move || match language {
                        "python" | "python-cold" | "python-nozygote" => bare_python(),
                        "javascript" => bare_node(),
                        _ => bare_c(&dir, n),
                    })
                    .await
                    .unwrap_or(false)
                }
            });
            let ((mut bare, bare_wall, bare_errors), bare_cpu_ms) =
                with_cpu(total, || rt.block_on(bare_load));
            rows.push(Row {
                language,
                concurrency: conc,
                requests: total,
                runcell_p50_ms: percentile(&mut lat, 0.5),
                runcell_p99_ms: percentile(&mut lat, 0.99),
                runcell_per_sec: total as f64 / wall.as_secs_f64(),
                bare_p50_ms: percentile(&mut bare, 0.5),
                bare_p99_ms: percentile(&mut bare, 0.99),
                bare_per_sec: total as f64 / bare_wall.as_secs_f64(),
                runcell_cpu_ms: cpu_ms,
                bare_cpu_ms,
                errors: errors + bare_errors,
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    let floor = namespace_floor(300);
    println!(
        "runcell bench --http: synchronous print(42) over HTTP against {}, {} CPUs",
        server.base,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<8} {:>5} {:>6} | {:>9} {:>9} {:>8} {:>7} | {:>9} {:>9} {:>8} {:>7} | {:>6} {:>6} {:>6}",
        "lang",
        "conc",
        "reqs",
        "p50 ms",
        "p99 ms",
        "exec/s",
        "cpu ms",
        "bare p50",
        "bare p99",
        "bare/s",
        "cpu ms",
        "p50 x",
        "cpu x",
        "errors"
    );
    for r in &rows {
        println!(
            "{:<8} {:>5} {:>6} | {:>9.2} {:>9.2} {:>8.1} {:>7.2} | {:>9.2} {:>9.2} {:>8.1} {:>7.2} | {:>6.2} {:>6.2} {:>6}",
            r.language,
            r.concurrency,
            r.requests,
            r.runcell_p50_ms,
            r.runcell_p99_ms,
            r.runcell_per_sec,
            r.runcell_cpu_ms,
            r.bare_p50_ms,
            r.bare_p99_ms,
            r.bare_per_sec,
            r.bare_cpu_ms,
            r.runcell_p50_ms / r.bare_p50_ms,
            r.runcell_cpu_ms / r.bare_cpu_ms,
            r.errors
        );
    }
    println!(
        "runcell = POST /api/v1/execute end to end (HTTP, auth, store, jail, compile for C: \
         `c` sends one source, compiled once and then taken from the compile cache; `c-cold` \
         makes every source unique, so every request compiles; `python` runs in warm \
         interpreters forked from the zygote, `python-nozygote` in warm interpreters each \
         started in its jail, `python-cold` on a server without them; `javascript` in warm \
         Node interpreters started in their jail); bare = the same program spawned directly \
         (C: gcc, then the binary). cpu ms = the whole machine's busy CPU time per execution, \
         from the start of the load until 300 ms after it (the kernel's deferred work and the \
         pool's refills included): what bounds throughput, and steadier than exec/s on a \
         shared machine."
    );
    if let Some((all, without_net)) = floor {
        println!(
            "The kernel's floor, measured now: fresh user, mount, pid, network, IPC, UTS and \
             cgroup namespaces for a process that exits at once cost {all:.2} ms of CPU \
             ({without_net:.2} ms without the network namespace; `unshare --fork /bin/true` \
             with and without them)."
        );
    }
    Ok(if rows.iter().any(|r| r.errors > 0) {
        1
    } else {
        0
    })
}
