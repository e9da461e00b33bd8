//! `runcell run FILE`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::json;

use runcell_engine::model::signal_number;
use runcell_engine::{Engine, EngineConfig, EngineError, ExecuteRequest, ExecutionResult};

use crate::Global;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The source file to run.
    pub file: PathBuf,
    /// Language id or alias (default: from the file's extension).
    #[arg(short, long)]
    pub language: Option<String>,
    /// Text given to the program on standard input.
    #[arg(long, conflicts_with = "stdin_file")]
    pub stdin: Option<String>,
    /// File given to the program on standard input.
    #[arg(long = "stdin-file")]
    pub stdin_file: Option<PathBuf>,
    /// A program argument; repeat for more.
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// An environment variable for the program, NAME=VALUE; repeat for more.
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Wall-clock limit in seconds.
    #[arg(long)]
    pub time: Option<f64>,
    /// CPU time limit in seconds (all processes and threads together).
    #[arg(long = "cpu-time")]
    pub cpu_time: Option<f64>,
    /// Memory limit in MiB (all processes together, tmpfs included).
    #[arg(long)]
    pub memory: Option<u64>,
    /// Limit on processes and threads together.
    #[arg(long = "max-processes")]
    pub max_processes: Option<u64>,
    /// Print the full result as JSON (the API's ExecutionResult) instead of the output.
    #[arg(long)]
    pub json: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

/// The exit code of `runcell run`: the program's own; 128 + signal when a signal (a limit's
/// SIGKILL included) ended it; the compiler's when compilation failed; 125 when runcell itself
/// failed.
pub fn exit_code(r: &ExecutionResult) -> i32 {
    if let Some(sig) = r.signal.as_deref().and_then(signal_number) {
        return 128 + sig;
    }
    if let Some(c) = &r.compile
        && c.exit_code != 0
    {
        return if c.exit_code > 0 { c.exit_code } else { 125 };
    }
    if r.exit_code >= 0 { r.exit_code } else { 125 }
}

pub fn run(global: &Global, args: RunArgs) -> Result<i32> {
    let registry = global.registry()?;
    let code = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let language = match &args.language {
        Some(l) => l.clone(),
        None => registry
            .by_path(&args.file)
            .map(|l| l.id.clone())
            .ok_or_else(|| {
                anyhow!(
                    "cannot tell the language of {} from its extension; use --language",
                    args.file.display()
                )
            })?,
    };
    let stdin = match (&args.stdin, &args.stdin_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(p)) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        (None, None) => None,
    };
    let mut limits = serde_json::Map::new();
    if let Some(t) = args.time {
        limits.insert("wall_time".into(), json!(t));
    }
    if let Some(t) = args.cpu_time {
        limits.insert("cpu_time".into(), json!(t));
    }
    if let Some(m) = args.memory {
        limits.insert("memory_mb".into(), json!(m));
    }
    if let Some(p) = args.max_processes {
        limits.insert("max_processes".into(), json!(p));
    }
    let req = ExecuteRequest {
        language,
        code,
        stdin,
        args: args.args.clone(),
        environment: args.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        limits: Some(serde_json::from_value(serde_json::Value::Object(limits))?),
        ..ExecuteRequest::default()
    };
    let config = EngineConfig {
        prefix: global.prefix(),
        ..EngineConfig::default()
    };
    let engine = Engine::new(global.spawner()?, registry, config);
    let result = match engine.execute(&req) {
        Ok(r) => r,
        Err(e @ EngineError::System(_)) => return Err(e.into()),
        Err(e) => bail!("{e}"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(result.stdout.as_bytes())?;
        out.flush()?;
        let mut err = std::io::stderr().lock();
        err.write_all(result.stderr.as_bytes())?;
        if let Some(reason) = &result.failure_reason {
            writeln!(err, "runcell: {reason}")?;
        } else if let Some(c) = &result.compile
            && c.exit_code != 0
        {
            writeln!(
                err,
                "runcell: compilation failed (exit code {})",
                c.exit_code
            )?;
        }
        for (stream, cut) in [
            ("standard output", result.stdout_truncated),
            ("standard error", result.stderr_truncated),
        ] {
            if cut {
                writeln!(err, "runcell: {stream} was cut at the output limit")?;
            }
        }
    }
    Ok(exit_code(&result))
}
