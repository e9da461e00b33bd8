//! A Piston v2 job in runcell's terms: `POST /api/v2/execute`'s body becomes an execution
//! request (checked in the order and with the messages of Piston's `get_job`), and an
//! execution's result becomes Piston's `{language, version, run, compile?}` with its stage
//! fields (`status` as isolate's codes: `RE`, `SG`, `TO`, `OL`, `EL`, `XX`).

use base64::Engine as _;
use serde_json::{Map, Value, json};

use runcell_service::LanguageInfo;
use runcell_service::model::{
    CompileLimitsRequest, CompileResult, ExecuteRequest, ExecutionResult, FileSpec, LimitsRequest,
    signal_number,
};

use super::semver;

/// The most a job may ask for, in Piston's units (ms, bytes): the server's maxima for the run
/// stage, its compile limits for the compile stage.
#[derive(Debug, Clone, Copy)]
pub struct Ceilings {
    pub run_timeout: f64,
    pub run_cpu_time: f64,
    pub run_memory_limit: f64,
    pub compile_timeout: f64,
    pub compile_cpu_time: f64,
    pub compile_memory_limit: f64,
}

const MIB: f64 = 1024.0 * 1024.0;

impl Ceilings {
    pub fn of(config: &runcell_service::Config) -> Ceilings {
        let (m, c) = (&config.engine.limits.maxima, &config.engine.compile);
        Ceilings {
            run_timeout: m.wall_time * 1000.0,
            run_cpu_time: m.cpu_time * 1000.0,
            run_memory_limit: m.memory_mb as f64 * MIB,
            compile_timeout: c.wall_time * 1000.0,
            compile_cpu_time: c.cpu_time * 1000.0,
            compile_memory_limit: c.memory_mb as f64 * MIB,
        }
    }

    fn of_name(&self, name: &str) -> f64 {
        match name {
            "run_timeout" => self.run_timeout,
            "run_cpu_time" => self.run_cpu_time,
            "run_memory_limit" => self.run_memory_limit,
            "compile_timeout" => self.compile_timeout,
            "compile_cpu_time" => self.compile_cpu_time,
            _ => self.compile_memory_limit,
        }
    }
}

/// A job ready to run: the request, and the runtime it resolved to.
#[derive(Debug)]
pub struct Job {
    pub req: ExecuteRequest,
    pub language: String,
    pub version: String,
}

/// The runtime (an available language with a version) that `language` (id or alias) and the
/// `version` selector name, as Piston resolves them.
pub fn runtime<'a>(
    langs: &'a [LanguageInfo],
    language: &str,
    version: &str,
) -> Option<(&'a LanguageInfo, &'a str)> {
    langs.iter().find_map(|l| {
        let v = l.version.as_deref().filter(|_| l.available)?;
        let named = l.id == language || l.aliases.iter().any(|a| a == language);
        (named && semver::satisfies(v, version)).then_some((l, v))
    })
}

fn js_falsy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    }
}

/// The bytes of hex digits (an even number of them).
fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits = text.trim().as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let value = |b: u8| (b as char).to_digit(16);
    digits
        .chunks(2)
        .map(|p| Some((value(p[0])? * 16 + value(p[1])?) as u8))
        .collect()
}

/// A file's bytes as runcell takes them: its text, or base64 for Piston's `base64` and `hex`.
fn file_spec(name: String, content: &str, encoding: &str, i: usize) -> Result<FileSpec, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let encoded = match encoding {
        "base64" => Some(content.to_string()),
        "hex" => match unhex(content) {
            Some(bytes) => Some(b64.encode(bytes)),
            None => return Err(format!("files[{i}].content is not valid hex")),
        },
        _ => None,
    };
    Ok(FileSpec {
        name,
        content: encoded.clone().unwrap_or_else(|| content.to_string()),
        encoding: encoded.map(|_| "base64".into()),
    })
}

/// The body of `POST /api/v2/execute` as a job, or Piston's message for what is wrong with it.
pub fn to_job(body: &Value, langs: &[LanguageInfo], ceilings: &Ceilings) -> Result<Job, String> {
    let empty = Map::new();
    let obj = body.as_object().unwrap_or(&empty);
    let required = |key: &str| {
        obj.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{key} is required as a string"))
    };
    let language = required("language")?;
    let version = required("version")?;
    let Some(files) = obj.get("files").and_then(Value::as_array) else {
        return Err("files is required as an array".into());
    };
    for (i, f) in files.iter().enumerate() {
        if !f.get("content").is_some_and(Value::is_string) {
            return Err(format!("files[{i}].content is required as a string"));
        }
    }
    let Some((info, installed)) = runtime(langs, language, version) else {
        return Err(format!("{language}-{version} runtime is unknown"));
    };
    // Piston's encodings: anything but base64 and hex is utf8.
    let encoding = |f: &Value| match f.get("encoding").and_then(Value::as_str) {
        Some(e @ ("base64" | "hex")) => e.to_string(),
        _ => "utf8".to_string(),
    };
    // The program is the first utf8 file; the others are written beside it.
    let Some(main) = files.iter().position(|f| encoding(f) == "utf8") else {
        return Err("files must include at least one utf8 encoded file".into());
    };
    let mut limits = LimitsRequest::default();
    let mut compile = CompileLimitsRequest::default();
    for constraint in ["memory_limit", "timeout", "cpu_time"] {
        for stage in ["compile", "run"] {
            let name = format!("{stage}_{constraint}");
            let value = obj.get(&name);
            if js_falsy(value) {
                continue;
            }
            let Some(x) = value.and_then(Value::as_f64) else {
                return Err(format!("If specified, {name} must be a number"));
            };
            // -1 asks for the server's default memory limit.
            if constraint == "memory_limit" && x == -1.0 {
                continue;
            }
            let ceiling = ceilings.of_name(&name);
            if x > ceiling {
                return Err(format!(
                    "{name} cannot exceed the configured limit of {ceiling}"
                ));
            }
            if x < 0.0 {
                return Err(format!("{name} must be non-negative"));
            }
            let (wall, cpu, memory) = if stage == "run" {
                (
                    &mut limits.wall_time,
                    &mut limits.cpu_time,
                    &mut limits.memory_mb,
                )
            } else {
                (
                    &mut compile.wall_time,
                    &mut compile.cpu_time,
                    &mut compile.memory_mb,
                )
            };
            match constraint {
                "timeout" => *wall = Some(json!(x / 1000.0)),
                "cpu_time" => *cpu = Some(json!(x / 1000.0)),
                _ => *memory = Some(json!((x / MIB).ceil() as u64)),
            }
        }
    }
    let args = match obj.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|a| match a {
                Value::String(s) => Ok(s.clone()),
                Value::Number(_) | Value::Bool(_) => Ok(a.to_string()),
                _ => Err("args must be an array of strings".to_string()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("args must be an array of strings".into()),
    };
    let mut stdin = match obj.get("stdin") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("stdin must be a string".into()),
    };
    // Piston ends stdin with a newline if it has none.
    if !stdin.ends_with('\n') {
        stdin.push('\n');
    }
    let mut code = String::new();
    let mut others = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let content = f["content"].as_str().unwrap_or_default();
        if i == main {
            code = content.to_string();
            continue;
        }
        let name = match f.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!("file{i}.code"),
        };
        others.push(file_spec(name, content, &encoding(f), i)?);
    }
    let req = ExecuteRequest {
        language: info.id.clone(),
        code,
        stdin: Some(stdin),
        args,
        files: others,
        limits: Some(limits),
        compile_limits: (compile != CompileLimitsRequest::default()).then_some(compile),
        ..ExecuteRequest::default()
    };
    Ok(Job {
        req,
        language: info.id.clone(),
        version: installed.to_string(),
    })
}

/// How a stage ended, Piston's way: `(code, signal, status, message)`.
fn ending(
    exit_code: i32,
    signal: Option<&str>,
    limit: Option<&str>,
    stdout_truncated: bool,
    failure: Option<&str>,
) -> (Value, Value, Value, Value) {
    // Limits isolate has no status of its own for (memory, processes, file size) are told in
    // runcell's words.
    let why = |otherwise: String| failure.map(String::from).unwrap_or(otherwise);
    let kill = Some("SIGKILL");
    let (status, message, signal) = match (limit, signal) {
        (Some("wall_time"), _) => ("TO", "Time limit exceeded (wall clock)".into(), kill),
        (Some("cpu_time"), _) => ("TO", "Time limit exceeded".into(), kill),
        (Some("output"), _) if stdout_truncated => ("OL", "stdout length exceeded".into(), kill),
        (Some("output"), _) => ("EL", "stderr length exceeded".into(), kill),
        (_, Some(sig)) => {
            let n = signal_number(sig).unwrap_or(0);
            let told = format!("Caught fatal signal {n}");
            (
                "SG",
                if limit.is_some() { why(told) } else { told },
                Some(sig),
            )
        }
        (_, None) if exit_code > 0 => {
            let told = format!("Exited with error status {exit_code}");
            ("RE", if limit.is_some() { why(told) } else { told }, None)
        }
        (None, None) if exit_code == 0 => {
            return (json!(0), Value::Null, Value::Null, Value::Null);
        }
        (_, None) => ("XX", why("the program did not run".into()), None),
    };
    let code = match signal {
        None if exit_code >= 0 => json!(exit_code),
        _ => Value::Null,
    };
    (code, json!(signal), json!(status), json!(message))
}

/// A stage's object: Piston's keys, times in ms, memory in bytes.
fn stage(
    stdout: &str,
    stderr: &str,
    output: String,
    end: (Value, Value, Value, Value),
    cpu_s: f64,
    wall_s: f64,
    memory_kib: u64,
) -> Value {
    let (code, signal, status, message) = end;
    let ms = |s: f64| json!((s * 1e6).round() / 1e3);
    json!({
        "signal": signal,
        "stdout": stdout,
        "stderr": stderr,
        "code": code,
        "output": output,
        "memory": memory_kib * 1024,
        "message": message,
        "status": status,
        "cpu_time": ms(cpu_s),
        "wall_time": ms(wall_s),
    })
}

fn compile_stage(c: &CompileResult) -> Value {
    let failure = match c.limit_exceeded.as_deref() {
        Some("memory") => "the compiler exceeded its memory limit",
        Some("processes") => "the compiler exceeded its process limit",
        Some("file_size") => "the compiler exceeded its file size limit",
        _ => "the compiler did not run",
    };
    let end = ending(
        c.exit_code,
        None,
        c.limit_exceeded.as_deref(),
        false,
        Some(failure),
    );
    // A compiler's two streams are not kept in order: its stdout, then its stderr.
    let output = format!("{}{}", c.stdout, c.stderr);
    let kb = c.memory_peak_kb;
    stage(
        &c.stdout,
        &c.stderr,
        output,
        end,
        c.cpu_time,
        c.execution_time,
        kb,
    )
}

/// An execution's result as Piston's answer; `output` is the run's stdout and stderr in the
/// order they were produced.
pub fn render(job: &Job, r: &ExecutionResult, output: String) -> Value {
    let mut out = Map::new();
    let compile = r.compile.as_ref().map(compile_stage);
    let compiled = r
        .compile
        .as_ref()
        .is_none_or(|c| c.exit_code == 0 && c.limit_exceeded.is_none());
    let run = match &compile {
        // Piston answers a failed compile stage as the run too.
        Some(c) if !compiled => c.clone(),
        _ => {
            let end = ending(
                r.exit_code,
                r.signal.as_deref(),
                r.limit_exceeded.as_deref(),
                r.stdout_truncated,
                r.failure_reason.as_deref(),
            );
            let (cpu, wall, kb) = (r.cpu_time, r.execution_time, r.memory_peak_kb);
            stage(&r.stdout, &r.stderr, output, end, cpu, wall, kb)
        }
    };
    if let Some(c) = compile {
        out.insert("compile".into(), c);
    }
    out.insert("run".into(), run);
    out.insert("language".into(), json!(job.language));
    out.insert("version".into(), json!(job.version));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn langs() -> Vec<LanguageInfo> {
        let lang = |id: &str, version: &str, aliases: &[&str], compiled| LanguageInfo {
            id: id.into(),
            name: id.into(),
            version: Some(version.into()),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            extensions: vec![],
            available: true,
            compiled,
            contexts: false,
            default_max_processes: 64,
        };
        vec![
            lang("python", "3.11.2", &["py", "python3"], false),
            lang("c", "12.2.0", &["gcc"], true),
        ]
    }

    fn ceilings() -> Ceilings {
        Ceilings::of(&runcell_service::Config::default())
    }

    fn job(body: Value) -> Result<Job, String> {
        to_job(&body, &langs(), &ceilings())
    }

    #[test]
    fn a_job_becomes_an_execution_request() {
        let j = job(json!({
            "language": "py", "version": "3.x",
            "files": [{"name": "data.bin", "content": "AAE=", "encoding": "base64"},
                      {"content": "print(1)"}, {"content": "x = 1"},
                      {"name": "h.txt", "content": "6869", "encoding": "hex"}],
            "args": ["1", 2], "stdin": "in",
            "run_timeout": 1500, "run_memory_limit": 100_000_000, "compile_memory_limit": -1,
            "compile_timeout": 10000, "run_cpu_time": 0,
        }))
        .unwrap();
        assert_eq!(
            (j.language.as_str(), j.version.as_str()),
            ("python", "3.11.2")
        );
        let r = &j.req;
        assert_eq!(r.code, "print(1)");
        assert_eq!(r.args, ["1", "2"]);
        assert_eq!(r.stdin.as_deref(), Some("in\n"));
        let names: Vec<&str> = r.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["data.bin", "file2.code", "h.txt"]);
        assert_eq!(r.files[2].content, "aGk=");
        let l = r.limits.as_ref().unwrap();
        assert_eq!(l.wall_time, Some(json!(1.5)));
        assert_eq!(l.memory_mb, Some(json!(96)));
        assert_eq!(l.cpu_time, None);
    }

    /// Every message is checked over HTTP (`tests/it/api/piston.rs`); here, what the order of
    /// the checks and JavaScript's truthiness decide.
    #[test]
    fn bad_jobs_get_pistons_messages() {
        let f = json!([{"content": "x"}]);
        // The name as it was asked for; a bad version before bad files' encodings.
        let e = job(json!({"language": "py", "version": "2",
                           "files": [{"content": "", "encoding": "hex"}]}));
        assert_eq!(e.unwrap_err(), "py-2 runtime is unknown");
        // 0, false and "" are "not given"; the first bad limit is the compile stage's.
        let j = job(
            json!({"language": "py", "version": "*", "files": f, "run_timeout": 0,
                           "run_cpu_time": false, "run_memory_limit": ""}),
        );
        assert_eq!(j.unwrap().req.limits, Some(LimitsRequest::default()));
        let e = job(json!({"language": "py", "version": "*", "files": f,
                           "run_memory_limit": "x", "compile_memory_limit": "y"}));
        assert_eq!(
            e.unwrap_err(),
            "If specified, compile_memory_limit must be a number"
        );
    }

    #[test]
    fn endings_are_isolates_statuses() {
        let e = |code, sig, limit, out| ending(code, sig, limit, out, Some("why"));
        assert_eq!(
            e(0, None, None, false),
            (json!(0), json!(null), json!(null), json!(null))
        );
        assert_eq!(
            e(3, None, None, false),
            (
                json!(3),
                json!(null),
                json!("RE"),
                json!("Exited with error status 3")
            )
        );
        assert_eq!(
            e(-1, Some("SIGSEGV"), None, false),
            (
                json!(null),
                json!("SIGSEGV"),
                json!("SG"),
                json!("Caught fatal signal 11")
            )
        );
        let (code, sig, status, _) = e(-1, Some("SIGKILL"), Some("wall_time"), false);
        assert_eq!(
            (code, sig, status),
            (json!(null), json!("SIGKILL"), json!("TO"))
        );
        assert_eq!(e(-1, None, Some("output"), true).2, json!("OL"));
        assert_eq!(e(-1, None, Some("output"), false).2, json!("EL"));
        let (_, sig, status, msg) = e(-1, Some("SIGKILL"), Some("memory"), false);
        assert_eq!(
            (sig, status, msg),
            (json!("SIGKILL"), json!("SG"), json!("why"))
        );
        assert_eq!(e(-1, None, None, false).2, json!("XX"));
    }
}
