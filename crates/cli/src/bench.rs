//! `runcell bench`: jail overhead next to baselines measured in the same run.
//!
//! Scenarios are interleaved (one round runs each once) so that machine noise spreads evenly
//! over all of them; medians are reported, with ratios against a bare spawn and bubblewrap.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use runcell_jail::{
    CgroupLimits, Exit, ProcessSpec, Rlimits, RunLimits, StdinSource, StepMode, TmpfsSize,
    WORKSPACE,
};

use crate::Global;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Rounds (every scenario runs once per round).
    #[arg(long, default_value_t = 50)]
    pub iterations: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Load the HTTP API instead (a server is started for the run): synchronous print(42) in
    /// Python, JavaScript and C (one source, and unique sources that always compile), next to
    /// a bare spawn of the same work.
    #[arg(long)]
    pub http: bool,
    /// Measure sandboxes instead (a server is started for the run): creating a sandbox until
    /// its first Python result (from the pre-started pool, and cold), and a warm context's
    /// `1+1`, next to a bare `python3` spawn and a one-shot execution.
    #[arg(long)]
    pub sandboxes: bool,
    /// Measure fairness instead (a server with two tenants is started for the run): tenant
    /// B's synchronous print("hello") while tenant A floods the server with sleeping
    /// executions, next to the idle server and a bare python3 spawn.
    #[arg(long)]
    pub fairness: bool,
    /// Measure judging instead (a server is started for the run): a C++ submission judged
    /// against 50 test cases end to end, next to one synchronous run of it (compiled, and from
    /// the compile cache), and the time compiling once saves. Rounds: --iterations (a few are
    /// enough: each round compiles three times).
    #[arg(long)]
    pub judge: bool,
    /// Measure several nodes on one PostgreSQL database instead (servers are started for the
    /// run): queued executions through 1, 2 and 3 nodes (--nodes) next to one node on SQLite,
    /// and how soon a queued execution is picked up. Needs --database-url.
    #[arg(long)]
    pub cluster: bool,
    /// Measure the egress relay instead (a server and a small network of its own are started
    /// for the run): connections and a download from a jail by name, relayed, next to the same
    /// program on the host by address.
    #[arg(long)]
    pub egress: bool,
    /// With --cluster: the PostgreSQL database the nodes share (it is filled with records).
    #[arg(long)]
    pub database_url: Option<String>,
    /// With --cluster: the numbers of nodes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub nodes: Vec<usize>,
    /// With --fairness: tenant A's executions (half async, half synchronous).
    #[arg(long, default_value_t = 500)]
    pub flood: usize,
    /// With --http: client concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub concurrency: Vec<usize>,
    /// With --http: requests per language and concurrency (with --cluster: queued executions
    /// per setting).
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// With --http: the server's own concurrency (default: its configuration's).
    #[arg(long)]
    pub server_concurrency: Option<usize>,
    /// With --http: only these scenarios (python, python-nozygote, python-cold, javascript,
    /// c, c-cold); default all. Useful to profile one of them.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
}

const PYTHON: &str = "/usr/bin/python3";
const BWRAP: &str = "/usr/bin/bwrap";

#[derive(Debug, Serialize)]
struct Row {
    scenario: &'static str,
    median_ms: f64,
    p10_ms: f64,
    p90_ms: f64,
    vs_bare: Option<f64>,
    vs_bwrap: Option<f64>,
}

fn stats(v: &mut [Duration]) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.1), at(0.9))
}

fn time(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

fn bare(argv: &[&str]) -> Result<()> {
    let st = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {}", argv[0]))?;
    if !st.success() {
        bail!("{} failed: {st}", argv[0]);
    }
    Ok(())
}

fn bwrap(argv: &[&str]) -> Result<()> {
    let mut full = vec![
        BWRAP,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--ro-bind",
        "/etc/ld.so.cache",
        "/etc/ld.so.cache",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        WORKSPACE,
        "--chdir",
        WORKSPACE,
    ];
    full.extend_from_slice(argv);
    bare(&full)
}

fn spec(argv: &[&str]) -> ProcessSpec {
    ProcessSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("HOME".into(), "/tmp".into()),
        ],
        cwd: WORKSPACE.into(),
        rlimits: Rlimits {
            cpu_secs: 10,
            file_size_bytes: 16 << 20,
            open_files: 1024,
            stack_bytes: 8 << 20,
            processes: 64,
            locked_memory_bytes: 64 << 10,
        },
        mode: StepMode::Private {
            tmp: TmpfsSize::mib(64),
            shm: TmpfsSize::mib(64),
        },
    }
}

pub fn bench(global: &Global, args: BenchArgs) -> Result<i32> {
    if args.http {
        return crate::bench_http::bench_http(global, &args);
    }
    if args.sandboxes {
        return crate::bench_sandbox::bench_sandboxes(&args);
    }
    if args.fairness {
        return crate::bench_fair::bench_fairness(&args);
    }
    if args.judge {
        return crate::bench_judge::bench_judge(&args);
    }
    if args.cluster {
        return crate::bench_cluster::bench_cluster(&args);
    }
    if args.egress {
        return crate::bench_egress::bench_egress(&args);
    }
    if args.iterations < 3 {
        bail!("--iterations must be at least 3");
    }
    if !Path::new(PYTHON).exists() {
        bail!("{PYTHON} is needed (apt-get install python3)");
    }
    let have_bwrap = Path::new(BWRAP).exists();
    if !have_bwrap {
        eprintln!("runcell: {BWRAP} not found (apt-get install bubblewrap); skipping its rows");
    }
    let registry = global.registry()?;
    let config = runcell_engine::rootfs::jail_config(registry.all(), &global.prefix(), 64);
    let spawner = global.spawner()?;
    let cg = CgroupLimits {
        memory_bytes: 256 << 20,
        max_tasks: 66,
        cpus: None,
        background: false,
    };
    let limits = RunLimits {
        wall_time: Duration::from_secs(10),
        cpu_time: Duration::from_secs(10),
        output_bytes: 1 << 20,
    };
    let run_in = |jail: &runcell_jail::Jail, argv: &[&str]| -> Result<()> {
        // Each jail runs one program, as a one-shot execution's does.
        let last = runcell_jail::Start {
            last: true,
            ..Default::default()
        };
        let out = jail.run_with(last, &spec(argv), StdinSource::Null, &limits)?;
        if out.exit != Exit::Exited(0) {
            bail!(
                "{argv:?} in the jail: {:?}: {}",
                out.exit,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };

    let programs: [(&str, &[&str]); 2] = [
        ("/bin/true", &["/bin/true"]),
        ("python3 -c pass", &[PYTHON, "-c", "pass"]),
    ];
    // Names of the scenarios, in table order.
    let names: Vec<&'static str> = vec![
        "bare /bin/true",
        "bwrap /bin/true",
        "runcell cold /bin/true",
        "runcell warm /bin/true",
        "bare python3 -c pass",
        "bwrap python3 -c pass",
        "runcell cold python3 -c pass",
        "runcell warm python3 -c pass",
        "runcell prepare",
        "runcell destroy",
        "runcell zygote python3 -c pass",
        "runcell zygote prepare",
    ];
    // Python's zygote (if its library is installed): an interpreter initialized once whose
    // forks are jails; its program is `pass`, like the rows above.
    let zygote = registry
        .resolve("python")
        .and_then(|l| l.warm.as_ref()?.zygote_library.clone())
        .filter(|lib| lib.exists())
        .map(|library| {
            let z = runcell_jail::ZygoteSpec {
                kind: runcell_jail::ZygoteKind::Python,
                library,
                argv: vec![PYTHON.into(), "-c".into(), "pass".into()],
                env: spec(&[]).env,
                config: config.clone(),
            };
            spawner.start_zygote(&z).map(|(id, _)| (id, z))
        })
        .transpose()?;
    if zygote.is_none() {
        eprintln!("runcell: Python's zygote library is not installed; skipping its rows");
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    let warmup = 3;
    for round in 0..(args.iterations + warmup) {
        let mut got: Vec<(usize, Duration)> = Vec::new();
        for (i, (_, argv)) in programs.iter().enumerate() {
            let base = i * 4;
            got.push((base, time(|| bare(argv))?));
            if have_bwrap {
                got.push((base + 1, time(|| bwrap(argv))?));
            }
            // Cold: from nothing to the program's result.
            let t = Instant::now();
            let jail = spawner.prepare(&config, &cg)?;
            let prepared = t.elapsed();
            run_in(&jail, argv)?;
            got.push((base + 2, t.elapsed()));
            got.push((8, prepared));
            got.push((9, time(|| Ok(jail.destroy()?))?));
            // Warm: the jail was prepared ahead of the request.
            let jail = spawner.prepare(&config, &cg)?;
            got.push((base + 3, time(|| run_in(&jail, argv))?));
            jail.destroy()?;
        }
        if let Some((id, z)) = &zygote {
            // From nothing to the result, like "cold", the jail forked from the zygote.
            let t = Instant::now();
            let jail = spawner.prepare_in(Some(*id), &config, &cg)?;
            let prepared = t.elapsed();
            let mut s = spec(&[]);
            s.argv = z.argv.clone();
            let how = runcell_jail::Start {
                preloaded: true,
                last: true,
            };
            let out = jail.run_with(how, &s, StdinSource::Null, &limits)?;
            if out.exit != Exit::Exited(0) {
                bail!("the zygote's program: {:?}", out.exit);
            }
            got.push((10, t.elapsed()));
            got.push((11, prepared));
            jail.destroy()?;
        }
        if round >= warmup {
            for (i, d) in got {
                samples[i].push(d);
            }
        }
    }

    let med: Vec<Option<f64>> = samples
        .iter_mut()
        .map(|s| (!s.is_empty()).then(|| stats(s).0))
        .collect();
    let mut rows = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if samples[i].is_empty() {
            continue;
        }
        let (m, p10, p90) = stats(&mut samples[i]);
        // Runs compare with the bare spawn and bubblewrap of the same program.
        let (bare_i, bwrap_i) = match i {
            2 | 3 => (Some(0), Some(1)),
            6 | 7 | 10 => (Some(4), Some(5)),
            _ => (None, None),
        };
        let ratio = |j: Option<usize>| j.and_then(|j| med[j]).map(|b| m / b);
        rows.push(Row {
            scenario: name,
            median_ms: m,
            p10_ms: p10,
            p90_ms: p90,
            vs_bare: ratio(bare_i),
            vs_bwrap: ratio(bwrap_i),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "runcell bench: {} rounds, cgroup {}, {} CPUs",
        args.iterations,
        spawner.cgroup_version(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "scenario", "median ms", "p10 ms", "p90 ms", "/bare", "/bwrap"
    );
    let fmt = |r: Option<f64>| r.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into());
    for r in &rows {
        println!(
            "{:<30} {:>10.2} {:>10.2} {:>10.2} {:>9} {:>9}",
            r.scenario,
            r.median_ms,
            r.p10_ms,
            r.p90_ms,
            fmt(r.vs_bare),
            fmt(r.vs_bwrap)
        );
    }
    println!(
        "cold = prepare + run until the result is in; warm = run in a jail prepared ahead; \
         zygote = a jail forked from Python's zygote + its preloaded interpreter running, \
         until the result is in. destroy happens after the result is delivered."
    );
    Ok(0)
}
