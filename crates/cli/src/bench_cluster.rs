//! `runcell bench --cluster --database-url postgres://…`: queued executions through 1, 2 and 3
//! nodes on one PostgreSQL database, next to one node on its embedded SQLite, in one run.
//!
//! All the nodes share this machine's CPUs, so more nodes are not more capacity here: the
//! figures show what the database path costs against SQLite, and what spreading the same work
//! over several nodes costs (claims through the database, the notification that wakes the
//! other nodes). Two phases per setting:
//! * throughput: `--requests` queued `print(i)` executions submitted through the nodes in
//!   turn by 16 clients, until the last is done;
//! * pick-up latency: 40 executions one after another on an idle cluster, each submitted to
//!   the next node; `started_at - created_at` of each (the time from the row's insertion until
//!   a node claimed it), p50 and p99.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

use crate::bench::BenchArgs;
use crate::bench_http::{Server, percentile, start_server_with};
use crate::bench_sandbox::Api;

#[derive(Debug, Serialize)]
struct Row {
    store: &'static str,
    nodes: usize,
    executions: usize,
    per_sec: f64,
    pickup_p50_ms: f64,
    pickup_p99_ms: f64,
}

fn ms(v: &Value) -> Result<i64> {
    v.as_str()
        .and_then(runcell_service::sandboxes::parse_rfc3339_ms)
        .ok_or_else(|| anyhow!("not a time: {v}"))
}

/// Waits for execution `id` to finish (through `api`); its document.
fn wait(api: &Api, id: &str) -> Result<Value> {
    let end = Instant::now() + Duration::from_secs(600);
    loop {
        let v = api.call(Method::GET, &format!("/api/v1/executions/{id}"), None)?;
        match v["status"].as_str() {
            Some("completed") => return Ok(v),
            Some("failed") => bail!("execution {id} failed: {v}"),
            _ if Instant::now() > end => bail!("execution {id} did not finish: {v}"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn submit(api: &Api, i: usize) -> Result<String> {
    let v = api.call(
        Method::POST,
        "/api/v1/execute/async",
        Some(json!({"language": "python", "code": format!("print({i})")})),
    )?;
    v["execution_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no execution_id: {v}"))
}

fn measure(store: &'static str, servers: &[Server], total: usize) -> Result<Row> {
    let apis: Vec<Api> = servers.iter().map(Api::of).collect::<Result<_>>()?;
    // Throughput: 16 clients submit in turn to the nodes, then every one is awaited.
    let started = Instant::now();
    let ids: Vec<String> = std::thread::scope(|s| -> Result<Vec<String>> {
        let clients = 16;
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let apis = &apis;
                s.spawn(move || -> Result<Vec<String>> {
                    (c..total)
                        .step_by(clients)
                        .map(|i| submit(&apis[i % apis.len()], i))
                        .collect()
                })
            })
            .collect();
        let mut ids = Vec::with_capacity(total);
        for h in handles {
            ids.extend(h.join().map_err(|_| anyhow!("a client panicked"))??);
        }
        Ok(ids)
    })?;
    for id in &ids {
        wait(&apis[0], id)?;
    }
    let per_sec = total as f64 / started.elapsed().as_secs_f64();
    // Pick-up latency on an idle cluster.
    let mut pickup = Vec::new();
    for i in 0..40 {
        let id = submit(&apis[i % apis.len()], i)?;
        let v = wait(&apis[(i + 1) % apis.len()], &id)?;
        let wait_ms = ms(&v["started_at"])? - ms(&v["created_at"])?;
        pickup.push(Duration::from_millis(wait_ms.max(0) as u64));
    }
    Ok(Row {
        store,
        nodes: servers.len(),
        executions: total,
        per_sec,
        pickup_p50_ms: percentile(&mut pickup, 0.5),
        pickup_p99_ms: percentile(&mut pickup, 0.99),
    })
}

pub fn bench_cluster(args: &BenchArgs) -> Result<i32> {
    let Some(url) = args
        .database_url
        .clone()
        .or_else(|| std::env::var("RUNCELL_DATABASE_URL").ok())
    else {
        bail!("--cluster needs --database-url postgres://… (a database the benchmark may fill)");
    };
    let total = args.requests.max(10);
    let mut rows = Vec::new();
    {
        let one = vec![start_server_with(Some(4), &[])?];
        rows.push(measure("sqlite", &one, total)?);
    }
    for &n in &args.nodes {
        if n == 0 {
            continue;
        }
        let servers: Vec<Server> = (0..n)
            .map(|_| {
                start_server_with(
                    Some(4),
                    &[
                        ("RUNCELL_DATABASE_URL", url.as_str()),
                        ("RUNCELL_LEASE_SECS", "15"),
                    ],
                )
            })
            .collect::<Result<_>>()?;
        rows.push(measure("postgresql", &servers, total)?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<11} {:>5} {:>10} {:>9} {:>14} {:>14}",
        "store", "nodes", "executions", "exec/s", "pickup p50 ms", "pickup p99 ms"
    );
    for r in &rows {
        println!(
            "{:<11} {:>5} {:>10} {:>9.1} {:>14.1} {:>14.1}",
            r.store, r.nodes, r.executions, r.per_sec, r.pickup_p50_ms, r.pickup_p99_ms
        );
    }
    Ok(0)
}
