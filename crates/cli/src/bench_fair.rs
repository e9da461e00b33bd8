//! `runcell bench --fairness`: how long tenant B's synchronous `print("hello")` takes while
//! tenant A floods the server with executions that only sleep (half async, half synchronous),
//! next to the same request on the idle server and a bare `python3` spawn, in one run.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::bench::BenchArgs;
use crate::bench_http::{percentile, start_server_with};

#[derive(Debug, Serialize)]
struct Row {
    scenario: &'static str,
    requests: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: usize,
}

const KEY_A: &str = "bench-fairness-tenant-a-0123456789";
const KEY_B: &str = "bench-fairness-tenant-b-0123456789";

async fn hello(client: &reqwest::Client, url: &str) -> bool {
    let r = client
        .post(url)
        .header("x-api-key", KEY_B)
        .header("content-type", "application/json")
        .body(json!({"language": "python", "code": "print(\"hello\")"}).to_string())
        .send()
        .await;
    match r {
        Ok(r) if r.status().is_success() => r
            .json::<Value>()
            .await
            .is_ok_and(|v| v["stdout"] == "hello\n"),
        _ => false,
    }
}

/// `n` sequential hellos of B: latencies and errors.
async fn hellos(client: &reqwest::Client, url: &str, n: usize) -> (Vec<Duration>, usize) {
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    for _ in 0..n {
        let t = Instant::now();
        if !hello(client, url).await {
            errors += 1;
        }
        lat.push(t.elapsed());
    }
    (lat, errors)
}

fn row(scenario: &'static str, mut lat: Vec<Duration>, errors: usize) -> Row {
    Row {
        scenario,
        requests: lat.len(),
        p50_ms: percentile(&mut lat, 0.5),
        p99_ms: percentile(&mut lat, 0.99),
        max_ms: percentile(&mut lat, 1.0),
        errors,
    }
}

pub fn bench_fairness(args: &BenchArgs) -> Result<i32> {
    if args.iterations < 3 {
        bail!("--iterations must be at least 3");
    }
    let flood = args.flood;
    let keys = format!("{KEY_A},{KEY_B}");
    let server = start_server_with(args.server_concurrency, &[("RUNCELL_API_KEYS", &keys)])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runcell_server::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(3600))
        .build()?;
    let execute = format!("{}/api/v1/execute", server.base);
    let submit = format!("{}/api/v1/execute/async", server.base);

    let mut rows = Vec::new();
    // Bare spawn of the same program.
    let mut bare = Vec::new();
    for _ in 0..args.iterations {
        let t = Instant::now();
        let ok = Command::new("/usr/bin/python3")
            .args(["-c", "print(\"hello\")"])
            .output()
            .is_ok_and(|o| o.stdout == b"hello\n");
        if ok {
            bare.push(t.elapsed());
        }
    }
    if bare.is_empty() {
        bail!("/usr/bin/python3 did not run");
    }
    rows.push(row("bare python3 -c", bare, 0));

    rt.block_on(hellos(&client, &execute, 4)); // warm-up
    let (lat, errors) = rt.block_on(hellos(&client, &execute, args.iterations));
    rows.push(row("B hello, idle server", lat, errors));

    // A's flood: half queued async, half synchronous requests held open.
    let sleep = json!({"language": "python", "code": "import time\ntime.sleep(5)"}).to_string();
    let accepted = rt.block_on(async {
        let mut ok = 0;
        for _ in 0..flood / 2 {
            let r = client
                .post(&submit)
                .header("x-api-key", KEY_A)
                .header("content-type", "application/json")
                .body(sleep.clone())
                .send()
                .await;
            if r.is_ok_and(|r| r.status().as_u16() == 202) {
                ok += 1;
            }
        }
        ok
    });
    let sync_flood: Vec<_> = (0..flood - flood / 2)
        .map(|_| {
            let (client, url, body) = (client.clone(), execute.clone(), sleep.clone());
            rt.spawn(async move {
                let _ = client
                    .post(&url)
                    .header("x-api-key", KEY_A)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
            })
        })
        .collect();
    // Let the flood reach the server and fill A's slots.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(1500)).await });
    let (lat, errors) = rt.block_on(hellos(&client, &execute, args.iterations));
    let flooded = row("B hello, A flooding", lat, errors);
    let met = flooded.p99_ms < 1000.0;
    rows.push(flooded);
    for t in sync_flood {
        t.abort();
    }
    drop(server);

    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(if met { 0 } else { 1 });
    }
    println!(
        "runcell bench --fairness: tenant A floods {flood} time.sleep(5) executions ({accepted} \
         async accepted, {} synchronous), tenant B sends print(\"hello\") one at a time; {} CPUs",
        flood - flood / 2,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<24} {:>6} | {:>9} {:>9} {:>9} | {:>6}",
        "scenario", "reqs", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for r in &rows {
        println!(
            "{:<24} {:>6} | {:>9.2} {:>9.2} {:>9.2} | {:>6}",
            r.scenario, r.requests, r.p50_ms, r.p99_ms, r.max_ms, r.errors
        );
    }
    println!(
        "target: B's p99 under 1 s while A floods: {}",
        if met { "met" } else { "NOT met" }
    );
    Ok(if met && rows.iter().all(|r| r.errors == 0) {
        0
    } else {
        1
    })
}
