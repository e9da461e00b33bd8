//! `runcell bench --sandboxes`: how fast a sandbox gives its first Python result, and how fast
//! a warm context answers, next to baselines measured in the same run (a bare `python3` spawn
//! and a one-shot execution through the same server).
//!
//! Rounds are interleaved; before each pooled creation the benchmark waits until the server's
//! pool of pre-started sandboxes is full again (what a client sees at a moderate creation rate),
//! while the cold scenario asks for an `env`, which pre-started sandboxes cannot have.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::bench::BenchArgs;
use crate::bench_http::{percentile, start_server_with};

#[derive(Debug, Serialize)]
struct Row {
    scenario: &'static str,
    p50_ms: f64,
    p90_ms: f64,
    vs_bare_python: f64,
}

/// A blocking client of a benchmark's server.
pub(crate) struct Api {
    pub(crate) http: reqwest::blocking::Client,
    pub(crate) base: String,
    pub(crate) key: String,
}

impl Api {
    /// A client of `server` (generous timeouts: some scenarios take seconds).
    pub(crate) fn of(server: &crate::bench_http::Server) -> Result<Api> {
        runcell_server::install_crypto_provider();
        Ok(Api {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()?,
            base: server.base.clone(),
            key: server.key.clone(),
        })
    }

    pub(crate) fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-api-key", &self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send()?;
        let status = r.status();
        let text = r.text()?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    fn pool_ready(&self) -> Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .header("x-api-key", &self.key)
            .send()?
            .text()?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("runcell_sandbox_pool_ready "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    fn wait_pool(&self, n: f64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.pool_ready()? < n {
            if Instant::now() > deadline {
                bail!("the sandbox pool did not fill in 2 minutes");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Creates a sandbox and runs `1+1`; returns the time to the result and the sandbox id.
    fn first_result(&self, body: Value) -> Result<(Duration, String)> {
        let t = Instant::now();
        let sb = self.call(reqwest::Method::POST, "/v1/sandboxes", Some(body))?;
        let id = sb["id"].as_str().context("no sandbox id")?.to_string();
        let run = self.call(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/code/runs?wait=true"),
            Some(json!({"code": "1+1"})),
        )?;
        let took = t.elapsed();
        if run["execution"]["results"][0]["text"] != "2" {
            bail!("unexpected run: {run}");
        }
        Ok((took, id))
    }

    fn delete(&self, id: &str) -> Result<()> {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/sandboxes/{id}"),
            None,
        )
        .map(|_| ())
    }
}

pub fn bench_sandboxes(args: &BenchArgs) -> Result<i32> {
    let n = args.iterations.clamp(3, 1000);
    let pool = 2.0;
    let server = start_server_with(
        None,
        &[
            ("RUNCELL_SANDBOX_POOL_SIZE", "2"),
            ("RUNCELL_POOL_SIZE", "2"),
        ],
    )?;
    let api = Api::of(&server)?;
    // A sandbox whose warm context answers the round trips.
    api.wait_pool(pool)?;
    let (_, warm_id) = api.first_result(json!({}))?;
    let (mut pooled, mut cold, mut warm, mut bare, mut oneshot) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        api.wait_pool(pool)?;
        let (t, id) = api.first_result(json!({}))?;
        pooled.push(t);
        api.delete(&id)?;
        let (t, id) = api.first_result(json!({"env": {"BENCH": "1"}}))?;
        cold.push(t);
        api.delete(&id)?;
        for _ in 0..5 {
            let t = Instant::now();
            let run = api.call(
                reqwest::Method::POST,
                &format!("/v1/sandboxes/{warm_id}/code/runs?wait=true"),
                Some(json!({"code": "1+1"})),
            )?;
            warm.push(t.elapsed());
            if run["execution"]["results"][0]["text"] != "2" {
                bail!("unexpected run: {run}");
            }
        }
        let t = Instant::now();
        let out = Command::new("/usr/bin/python3")
            .args(["-c", "print(1+1)"])
            .output()?;
        bare.push(t.elapsed());
        if out.stdout != b"2\n" {
            bail!("python3 -c print(1+1) said {:?}", out.stdout);
        }
        let t = Instant::now();
        let r = api.call(
            reqwest::Method::POST,
            "/api/v1/execute",
            Some(json!({"language": "python", "code": "print(1+1)"})),
        )?;
        oneshot.push(t.elapsed());
        if r["stdout"] != "2\n" {
            bail!("unexpected execution: {r}");
        }
    }
    let bare_p50 = percentile(&mut bare, 0.5);
    let mut rows = Vec::new();
    for (scenario, v) in [
        ("sandbox create -> first result (pre-started)", &mut pooled),
        ("sandbox create -> first result (cold kernel)", &mut cold),
        ("warm context 1+1 round trip", &mut warm),
        (
            "one-shot execution print(1+1) (POST /api/v1/execute)",
            &mut oneshot,
        ),
        ("bare python3 -c print(1+1) (baseline)", &mut bare),
    ] {
        let p50 = percentile(v, 0.5);
        rows.push(Row {
            scenario,
            p50_ms: p50,
            p90_ms: percentile(v, 0.9),
            vs_bare_python: p50 / bare_p50,
        });
    }
    let _ = api.delete(&warm_id);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "runcell bench --sandboxes: {n} rounds against {}, {} CPUs",
        server.base,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<56} {:>9} {:>9} {:>8}",
        "scenario", "p50 ms", "p90 ms", "x bare"
    );
    for r in &rows {
        println!(
            "{:<56} {:>9.2} {:>9.2} {:>8.2}",
            r.scenario, r.p50_ms, r.p90_ms, r.vs_bare_python
        );
    }
    println!(
        "All over HTTP on loopback. A sandbox's first result includes POST /v1/sandboxes and \
         POST /code/runs?wait=true; cold = a kernel started for the request."
    );
    Ok(0)
}
