//! `runcell bench --judge`: a C++ submission judged against 50 test cases end to end (one
//! `POST /api/v1/execute` with `test_cases`), next to one synchronous run of the same kind of
//! program, compiled and from the compile cache, in the same run.
//!
//! Every round uses new sources (a nonce in a comment), so the compiler really runs where it
//! should: once for the judged submission, once for the first synchronous run; the second
//! synchronous run of the same source is a compile cache hit. Derived rows: the judged run's
//! cost per case (all of it, and beyond its compile step), and what compiling once saves against
//! 50 separate synchronous runs that each compile (and that each hit the cache).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};

use crate::bench::BenchArgs;
use crate::bench_http::start_server;
use crate::bench_sandbox::Api;

/// Test cases of the judged submission.
const CASES: usize = 50;

#[derive(Debug, Serialize)]
struct Row {
    scenario: &'static str,
    p50_ms: f64,
    p90_ms: f64,
}

/// A C++ program that prints the sum of two numbers; `nonce` makes its source new.
fn source(nonce: &str) -> String {
    format!(
        "// {nonce}\n#include <iostream>\nint main() {{ long a, b; std::cin >> a >> b; \
         std::cout << a + b << '\\n'; }}\n"
    )
}

fn cases() -> Value {
    (0..CASES as i64)
        .map(|i| {
            let (a, b) = (i * 7919 % 1000, i * 104_729 % 997);
            json!({"stdin": format!("{a} {b}\n"), "expected_output": format!("{}\n", a + b)})
        })
        .collect()
}

/// One execution; its wall time from the request to the answer, and the result.
fn timed(api: &Api, body: Value) -> Result<(Duration, Value)> {
    let t = Instant::now();
    let r = api.call(Method::POST, "/api/v1/execute", Some(body))?;
    Ok((t.elapsed(), r))
}

pub fn bench_judge(args: &BenchArgs) -> Result<i32> {
    let n = args.iterations.max(1);
    let server = start_server(None)?;
    let api = Api::of(&server)?;
    let cases = cases();
    let pid = std::process::id();
    let (mut judged, mut compile, mut sync_cold, mut sync_cached) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // One round unmeasured: the first compile of a server is slower (cold page cache).
    for round in 0..=n {
        let code = source(&format!("judged {pid} {round}"));
        let (t, r) = timed(
            &api,
            json!({"language": "cpp", "code": code, "test_cases": cases}),
        )?;
        let j = &r["judging"];
        if j["verdict"] != "accepted" || j["passed"] != CASES {
            bail!("the judged submission was not accepted: {r}");
        }
        if r["compile"]["cached"] == true {
            bail!("the judged submission's compile was a cache hit: {r}");
        }
        let c = r["compile"]["execution_time"]
            .as_f64()
            .context("no compile time")?;
        let code = source(&format!("sync {pid} {round}"));
        let body = json!({"language": "cpp", "code": code, "stdin": "2 3\n"});
        let (cold, r) = timed(&api, body.clone())?;
        if r["stdout"] != "5\n" || r["compile"]["cached"] == true {
            bail!("unexpected synchronous run: {r}");
        }
        let (cached, r) = timed(&api, body)?;
        if r["stdout"] != "5\n" || r["compile"]["cached"] != true {
            bail!("the second synchronous run was not a compile cache hit: {r}");
        }
        if round > 0 {
            judged.push(t);
            compile.push(Duration::from_secs_f64(c));
            sync_cold.push(cold);
            sync_cached.push(cached);
        }
    }
    let ms = |v: &[Duration]| -> Vec<f64> { v.iter().map(|d| d.as_secs_f64() * 1e3).collect() };
    let (judged, compile) = (ms(&judged), ms(&compile));
    let (sync_cold, sync_cached) = (ms(&sync_cold), ms(&sync_cached));
    let per_case: Vec<f64> = judged.iter().map(|j| j / CASES as f64).collect();
    let beyond_compile: Vec<f64> = judged
        .iter()
        .zip(&compile)
        .map(|(j, c)| (j - c) / CASES as f64)
        .collect();
    // What 50 separate synchronous runs would cost, less the judged run, round by round
    // (negative: the judged run cost more).
    let saved = |one: &[f64]| -> Vec<f64> {
        one.iter()
            .zip(&judged)
            .map(|(s, j)| s * CASES as f64 - j)
            .collect()
    };
    let (saved_cold, saved_cached) = (saved(&sync_cold), saved(&sync_cached));
    let mut rows = Vec::new();
    for (scenario, v) in [
        ("judged: 50 test cases, end to end", &judged),
        ("judged: its compile step", &compile),
        ("judged: per case (all of it / 50)", &per_case),
        ("judged: per case beyond the compile step", &beyond_compile),
        ("one sync run, compiled", &sync_cold),
        ("one sync run, compile cache hit", &sync_cached),
        ("saved vs 50 sync runs that compile", &saved_cold),
        ("saved vs 50 sync runs from the cache", &saved_cached),
    ] {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        rows.push(Row {
            scenario,
            p50_ms: at(0.5),
            p90_ms: at(0.9),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "runcell bench --judge: {n} rounds against {}, {} CPUs, C++ (g++ -O2), {CASES} cases",
        server.base,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("{:<44} {:>10} {:>10}", "scenario", "p50 ms", "p90 ms");
    for r in &rows {
        println!("{:<44} {:>10.1} {:>10.1}", r.scenario, r.p50_ms, r.p90_ms);
    }
    let j50 = rows[0].p50_ms;
    println!(
        "All over HTTP on loopback, one request at a time. The judged run is one POST with \
         test_cases; saved = 50 x one sync run - the judged run ({:.0} ms of judging against \
         {:.0} ms for 50 compiling runs).",
        j50,
        rows[4].p50_ms * CASES as f64
    );
    Ok(0)
}
