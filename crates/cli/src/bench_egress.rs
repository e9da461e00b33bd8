//! `runcell bench --egress`: what the egress relay costs (docs/network.md). The benchmark makes
//! a small network of its own: a network namespace joined to the host by a veth pair (host
//! 198.51.100.1, it 198.51.100.2), holding a DNS server for `bench.test` and an HTTP server.
//! One Python program measures, from inside a jail with `network.egress` (by name, through the
//! gateway's resolver and relay) and as a bare process on the host (to the address, directly):
//! a connection with a small GET, `--iterations` times, then one large download. Both sides run
//! the same code in the same run, so the ratios compare like with like. The namespace and the
//! veth pair go away with the benchmark.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

use crate::bench::BenchArgs;
use crate::bench_http::start_server_with;
use crate::bench_sandbox::Api;

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The large download, bytes.
const BIG: usize = 64 << 20;

/// The measuring program: `host n big` → JSON `{lat: [ms…], mbps}`.
const PROBE: &str = r#"import json, socket, sys, time
host, n, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def get(path):
    s = socket.create_connection((host, 80), timeout=30)
    s.sendall(("GET %s HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n" % path).encode())
    total = 0
    while True:
        d = s.recv(1 << 16)
        if not d:
            break
        total += len(d)
    s.close()
    return total
get("/size/2")
lat = []
for _ in range(n):
    t = time.perf_counter()
    get("/size/2")
    lat.append((time.perf_counter() - t) * 1000)
t = time.perf_counter()
got = get("/size/%d" % big)
dt = time.perf_counter() - t
if got < big:
    sys.exit("short download: %d bytes" % got)
print(json.dumps({"lat": lat, "mbps": got / dt / 1e6}))
"#;

#[derive(Debug, Serialize)]
struct Row {
    scenario: &'static str,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    mb_per_s: Option<f64>,
    vs_bare: f64,
}

/// The benchmark's network: the namespace's holder (it ends when we close its stdin).
struct Net {
    holder: Child,
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", "rcbench-h"])
            .output();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("{args:?} (needs iproute2 and util-linux)"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn make_net() -> Result<Net> {
    let mut holder = Command::new("unshare")
        .args(["--net", "--", "sh", "-c", "echo ready; read x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("unshare --net")?;
    let mut line = String::new();
    BufReader::new(holder.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let net = Net { holder };
    let pid = net.holder.id().to_string();
    let _ = Command::new("ip")
        .args(["link", "del", "rcbench-h"])
        .output();
    ip(&[
        "ip",
        "link",
        "add",
        "rcbench-h",
        "type",
        "veth",
        "peer",
        "name",
        "rcbench-f",
    ])?;
    ip(&["ip", "link", "set", "rcbench-f", "netns", &pid])?;
    ip(&["ip", "addr", "add", "198.51.100.1/24", "dev", "rcbench-h"])?;
    ip(&["ip", "link", "set", "rcbench-h", "up"])?;
    for a in [
        &["addr", "add", "198.51.100.2/24", "dev", "rcbench-f"][..],
        &["link", "set", "rcbench-f", "up"],
        &["link", "set", "lo", "up"],
    ] {
        let mut v = vec!["nsenter", "-t", &pid, "-n", "ip"];
        v.extend_from_slice(a);
        ip(&v)?;
    }
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let (udp, tcp) = std::thread::spawn(move || -> std::io::Result<_> {
        // SAFETY: setns on this short-lived thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((
            UdpSocket::bind((SERVER, 53))?,
            TcpListener::bind((SERVER, 80))?,
        ))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))??;
    std::thread::spawn(move || dns(udp));
    std::thread::spawn(move || {
        for s in tcp.incoming().flatten() {
            std::thread::spawn(move || http(s));
        }
    });
    Ok(net)
}

/// Answers every A query with the server's address.
fn dns(sock: UdpSocket) {
    let mut buf = [0u8; 1500];
    while let Ok((n, peer)) = sock.recv_from(&mut buf) {
        let q = &buf[..n];
        let mut pos = 12;
        while pos < n && q[pos] != 0 {
            pos += 1 + q[pos] as usize;
        }
        if n < 12 || pos + 5 > n {
            continue;
        }
        let is_a = q[pos + 1..pos + 3] == [0, 1];
        let mut out = q[..2].to_vec();
        out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
        out.extend_from_slice(&q[12..pos + 5]);
        if is_a {
            out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            out.extend_from_slice(&SERVER.octets());
        }
        let _ = sock.send_to(&out, peer);
    }
}

/// `GET /size/N`: N bytes.
fn http(mut s: std::net::TcpStream) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let n: usize = head
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.strip_prefix("/size/"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
    );
    let chunk = vec![b'x'; 64 << 10];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        if s.write_all(&chunk[..k]).is_err() {
            return;
        }
        left -= k;
    }
}

fn quantiles(lat: &Value) -> Result<(f64, f64)> {
    let mut v: Vec<f64> = lat
        .as_array()
        .context("no latencies")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    if v.is_empty() {
        bail!("no latencies");
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.9)))
}

pub fn bench_egress(args: &BenchArgs) -> Result<i32> {
    let n = args.iterations.max(3);
    let _net = make_net()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("runcell.toml");
    std::fs::write(
        &config,
        "[network]\negress_allow = [\"bench.test\"]\nresolver = \"198.51.100.2:53\"\n\
         max_bytes = 4294967296\nmax_bytes_per_sec = 4294967296\n",
    )?;
    let config = config.to_string_lossy().to_string();
    let server = start_server_with(None, &[("RUNCELL_CONFIG", &config)])?;
    let api = Api::of(&server)?;

    let bare = Command::new("python3")
        .args(["-c", PROBE, &SERVER.to_string(), &n.to_string()])
        .arg(BIG.to_string())
        .output()
        .context("python3 on the host")?;
    if !bare.status.success() {
        bail!(
            "the bare probe failed: {}",
            String::from_utf8_lossy(&bare.stderr)
        );
    }
    let bare: Value = serde_json::from_slice(&bare.stdout)?;
    let r = api.call(
        Method::POST,
        "/api/v1/execute",
        Some(json!({
            "language": "python",
            "code": PROBE,
            "args": ["bench.test", n.to_string(), BIG.to_string()],
            "network": {"egress": {"allow": ["bench.test"]}},
            "limits": {"wall_time": 120, "cpu_time": 120},
        })),
    )?;
    if r["exit_code"] != 0 {
        bail!("the jailed probe failed: {r}");
    }
    let jailed: Value = serde_json::from_str(r["stdout"].as_str().unwrap_or_default())
        .with_context(|| format!("the jailed probe's output: {r}"))?;

    let (bp50, bp90) = quantiles(&bare["lat"])?;
    let (jp50, jp90) = quantiles(&jailed["lat"])?;
    let bmb = bare["mbps"].as_f64().context("no throughput")?;
    let jmb = jailed["mbps"].as_f64().context("no throughput")?;
    let rows = [
        Row {
            scenario: "connect + small GET, bare (host, by address)",
            p50_ms: Some(bp50),
            p90_ms: Some(bp90),
            mb_per_s: None,
            vs_bare: 1.0,
        },
        Row {
            scenario: "connect + small GET, jail (by name, relayed)",
            p50_ms: Some(jp50),
            p90_ms: Some(jp90),
            mb_per_s: None,
            vs_bare: jp50 / bp50,
        },
        Row {
            scenario: "64 MiB download, bare",
            p50_ms: None,
            p90_ms: None,
            mb_per_s: Some(bmb),
            vs_bare: 1.0,
        },
        Row {
            scenario: "64 MiB download, jail (relayed)",
            p50_ms: None,
            p90_ms: None,
            mb_per_s: Some(jmb),
            vs_bare: jmb / bmb,
        },
    ];
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"rows": rows, "network": r["network"]}))?
        );
        return Ok(0);
    }
    println!("egress relay, {n} connections each side, the same Python probe on both");
    println!(
        "{:<48} {:>8} {:>8} {:>9} {:>8}",
        "scenario", "p50 ms", "p90 ms", "MB/s", "/ bare"
    );
    let f = |v: Option<f64>, d: usize| v.map_or("–".to_string(), |x| format!("{x:.d$}"));
    for row in &rows {
        println!(
            "{:<48} {:>8} {:>8} {:>9} {:>7.2}x",
            row.scenario,
            f(row.p50_ms, 2),
            f(row.p90_ms, 2),
            f(row.mb_per_s, 0),
            row.vs_bare
        );
    }
    println!("the jailed run's network: {}", r["network"]);
    Ok(0)
}
