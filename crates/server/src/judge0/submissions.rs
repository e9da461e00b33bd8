//! Judge0 submissions in runcell's terms: a submission's fields become an execution request
//! with one test case judged by Judge0's own comparison (trimmed lines), and an execution
//! becomes a submission with exactly Judge0's keys. What only Judge0 has (its language id, the
//! limits in its units, `command_line_arguments` as it was written) is kept in the request's
//! `dialect` and shown back from there.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use runcell_service::executions::ExecutionObject;
use runcell_service::model::{
    ExecStatus, ExecuteRequest, ExecutionResult, FileSpec, LimitsRequest, TestCase, Verdict,
    signal_number,
};

use super::languages;

/// Every key of a submission, as `fields=*` gives them (Judge0 CE 1.13.1).
pub const ALL_FIELDS: &[&str] = &[
    "token",
    "source_code",
    "language_id",
    "stdin",
    "expected_output",
    "stdout",
    "stderr",
    "compile_output",
    "message",
    "exit_code",
    "exit_signal",
    "status",
    "created_at",
    "finished_at",
    "time",
    "wall_time",
    "memory",
    "number_of_runs",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
    "compiler_options",
    "command_line_arguments",
    "redirect_stderr_to_stdout",
    "callback_url",
    "additional_files",
    "enable_network",
    "post_execution_filesystem",
];

/// The keys a submission has without `fields`.
pub const DEFAULT_FIELDS: &[&str] = &[
    "stdout",
    "time",
    "memory",
    "stderr",
    "token",
    "compile_output",
    "message",
    "status",
];

/// Keys that can be asked for by name but are not part of `*`.
const EXTRA_FIELDS: &[&str] = &["status_id"];

/// Text fields that are base64 in and out with `base64_encoded=true`.
const ENCODED: &[&str] = &[
    "source_code",
    "stdin",
    "expected_output",
    "stdout",
    "stderr",
    "compile_output",
];

/// The keys `fields` asks for, or the names it does not know.
pub fn fields(param: Option<&str>) -> Result<Vec<String>, String> {
    let list = match param.map(str::trim) {
        None | Some("") => return Ok(DEFAULT_FIELDS.iter().map(|s| s.to_string()).collect()),
        Some("*") => return Ok(ALL_FIELDS.iter().map(|s| s.to_string()).collect()),
        Some(list) => list,
    };
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        if ALL_FIELDS.contains(&f) || EXTRA_FIELDS.contains(&f) {
            out.push(f.to_string());
        } else {
            unknown.push(f.to_string());
        }
    }
    if unknown.is_empty() {
        Ok(out)
    } else {
        Err(format!("invalid fields: {}", unknown.join(", ")))
    }
}

/// The most `additional_files` may extract to, KiB (`max_extract_size`).
pub const MAX_EXTRACT_KIB: u64 = 10240;

/// The files of `additional_files` (a base64 zip), at most `MAX_EXTRACT_KIB` together; entries
/// that are directories are skipped, names are checked by the engine like any file's.
fn unzip(text: &str) -> Result<Vec<FileSpec>, String> {
    use std::io::Read;
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = b64()
        .decode(compact)
        .map_err(|_| "is not valid base64".to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("is not a zip archive: {e}"))?;
    let max = MAX_EXTRACT_KIB * 1024;
    let mut total = 0u64;
    let mut files = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip
            .by_index(i)
            .map_err(|e| format!("entry {i} cannot be read: {e}"))?;
        if f.is_dir() {
            continue;
        }
        let Some(name) = f.enclosed_name().and_then(|p| p.to_str().map(String::from)) else {
            return Err(format!(
                "entry {:?} has a name outside the archive",
                f.name()
            ));
        };
        let mut data = Vec::new();
        (&mut f)
            .take(max - total + 1)
            .read_to_end(&mut data)
            .map_err(|e| format!("entry {name:?} cannot be extracted: {e}"))?;
        total += data.len() as u64;
        if total > max {
            return Err(format!("extracts to more than {MAX_EXTRACT_KIB} KiB"));
        }
        files.push(FileSpec {
            name,
            content: b64().encode(&data),
            encoding: Some("base64".into()),
        });
    }
    Ok(files)
}

/// The server's Judge0 settings: defaults and maxima in Judge0's units.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cpu_time_limit: f64,
    pub max_cpu_time_limit: f64,
    pub cpu_extra_time: f64,
    pub max_cpu_extra_time: f64,
    pub wall_time_limit: f64,
    pub max_wall_time_limit: f64,
    /// KiB.
    pub memory_limit: u64,
    pub max_memory_limit: u64,
    /// KiB.
    pub stack_limit: u64,
    pub max_stack_limit: u64,
    pub max_processes_and_or_threads: u64,
    pub max_max_processes_and_or_threads: u64,
    /// KiB.
    pub max_file_size: u64,
    pub max_max_file_size: u64,
}

impl Settings {
    pub fn of(config: &runcell_service::Config) -> Settings {
        let (d, m) = (&config.engine.limits.defaults, &config.engine.limits.maxima);
        let stack = config.engine.stack_mb * 1024;
        Settings {
            cpu_time_limit: d.cpu_time,
            max_cpu_time_limit: m.cpu_time,
            cpu_extra_time: 0.0,
            max_cpu_extra_time: 5.0,
            wall_time_limit: d.wall_time,
            max_wall_time_limit: m.wall_time,
            memory_limit: d.memory_mb * 1024,
            max_memory_limit: m.memory_mb * 1024,
            stack_limit: stack,
            max_stack_limit: stack,
            max_processes_and_or_threads: d.max_processes,
            max_max_processes_and_or_threads: m.max_processes,
            max_file_size: d.max_file_size_mb * 1024,
            max_max_file_size: m.max_file_size_mb * 1024,
        }
    }
}

/// Field errors of a request, Judge0's way: `{"field": ["message", …]}`.
#[derive(Debug, Default)]
pub struct FieldErrors(pub Map<String, Value>);

impl FieldErrors {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        let list = self
            .0
            .entry(field.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(v) = list {
            v.push(Value::String(message.into()));
        }
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A text field of the request (decoded from base64 when asked).
fn text(obj: &Map<String, Value>, key: &str, base64: bool, e: &mut FieldErrors) -> Option<String> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !base64 => Some(s.clone()),
        Some(Value::String(s)) => {
            let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            match b64().decode(compact) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(t) => Some(t),
                    Err(_) => {
                        e.add(key, "is not UTF-8 text once decoded from base64");
                        None
                    }
                },
                Err(_) => {
                    e.add(key, "is not valid base64");
                    None
                }
            }
        }
        Some(_) => {
            e.add(key, "must be a string");
            None
        }
    }
}

/// A number field (a JSON number or a numeric string, as Judge0 takes them) within
/// `0..=max`.
fn number(obj: &Map<String, Value>, key: &str, max: f64, e: &mut FieldErrors) -> Option<f64> {
    let v = match obj.get(key) {
        None | Some(Value::Null) => return None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match v {
        Some(x) if x.is_finite() && x >= 0.0 && x <= max => Some(x),
        Some(x) if x.is_finite() && x >= 0.0 => {
            e.add(key, format!("must be less than or equal to {max}"));
            None
        }
        _ => {
            e.add(key, "must be a number of at least 0");
            None
        }
    }
}

/// A boolean field that this server supports only as false.
fn only_false(obj: &Map<String, Value>, key: &str, why: &str, e: &mut FieldErrors) {
    match obj.get(key) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => e.add(key, why),
        Some(_) => e.add(key, "must be true or false"),
    }
}

/// A submission's fields as an execution request and its `callback_url`, or Judge0's field
/// errors.
pub fn to_request(
    item: &Value,
    base64: bool,
    s: &Settings,
) -> Result<(ExecuteRequest, Option<String>), FieldErrors> {
    let mut e = FieldErrors::default();
    let Value::Object(obj) = item else {
        e.add("submission", "must be a JSON object");
        return Err(e);
    };
    let source = text(obj, "source_code", base64, &mut e);
    if source.is_none() && !e.0.contains_key("source_code") {
        e.add("source_code", "can't be blank");
    }
    let language_id = match obj.get("language_id") {
        None | Some(Value::Null) => {
            e.add("language_id", "can't be blank");
            None
        }
        Some(v) => match v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        {
            Some(id) if languages::language_of(id as u32).is_some() => Some(id as u32),
            _ => {
                e.add("language_id", format!("language with id {v} doesn't exist"));
                None
            }
        },
    };
    let stdin = text(obj, "stdin", base64, &mut e);
    let expected_output = text(obj, "expected_output", base64, &mut e);
    let cpu = number(obj, "cpu_time_limit", s.max_cpu_time_limit, &mut e);
    let extra = number(obj, "cpu_extra_time", s.max_cpu_extra_time, &mut e);
    let wall = number(obj, "wall_time_limit", s.max_wall_time_limit, &mut e);
    let memory = number(obj, "memory_limit", s.max_memory_limit as f64, &mut e);
    let stack = number(obj, "stack_limit", s.max_stack_limit as f64, &mut e);
    let procs = number(
        obj,
        "max_processes_and_or_threads",
        s.max_max_processes_and_or_threads as f64,
        &mut e,
    );
    let file_size = number(obj, "max_file_size", s.max_max_file_size as f64, &mut e);
    if let Some(n) = number(obj, "number_of_runs", 1.0, &mut e)
        && n < 1.0
    {
        e.add("number_of_runs", "must be 1 on this server");
    }
    only_false(
        obj,
        "enable_per_process_and_thread_time_limit",
        "is not allowed: limits hold for the whole run",
        &mut e,
    );
    only_false(
        obj,
        "enable_per_process_and_thread_memory_limit",
        "is not allowed: limits hold for the whole run",
        &mut e,
    );
    only_false(
        obj,
        "enable_network",
        "is not allowed: runs have no network",
        &mut e,
    );
    only_false(
        obj,
        "redirect_stderr_to_stdout",
        "is not supported on this server",
        &mut e,
    );
    let additional = match obj.get("additional_files") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => match unzip(s) {
            Ok(files) => Some((s.clone(), files)),
            Err(why) => {
                e.add("additional_files", why);
                None
            }
        },
        Some(_) => {
            e.add("additional_files", "must be a base64 zip archive");
            None
        }
    };
    match obj.get("compiler_options") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(_) => e.add("compiler_options", "are not enabled on this server"),
    }
    let callback = match obj.get("callback_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(_) => {
            e.add("callback_url", "must be a string");
            None
        }
    };
    let args_text = match obj.get("command_line_arguments") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            e.add("command_line_arguments", "must be a string");
            None
        }
    };
    if !e.0.is_empty() {
        return Err(e);
    }
    let (Some(code), Some(language_id)) = (source, language_id) else {
        return Err(e);
    };
    let kib_to_mb = |kib: f64| json!((kib / 1024.0).ceil() as u64);
    let limits = LimitsRequest {
        cpu_time: cpu.map(|c| json!(c)),
        wall_time: wall.map(|w| json!(w)),
        memory_mb: memory.map(kib_to_mb),
        max_processes: procs.map(|p| json!(p as u64)),
        max_file_size_mb: file_size.map(kib_to_mb),
        max_output_bytes: None,
    };
    // What a submission shows back: the values it was made with, else the server's.
    let dialect = json!({
        "judge0": {
            "language_id": language_id,
            "number_of_runs": 1,
            "cpu_time_limit": cpu.unwrap_or(s.cpu_time_limit),
            "cpu_extra_time": extra.unwrap_or(s.cpu_extra_time),
            "wall_time_limit": wall.unwrap_or(s.wall_time_limit),
            "memory_limit": memory.map(|m| m as u64).unwrap_or(s.memory_limit),
            "stack_limit": stack.map(|m| m as u64).unwrap_or(s.stack_limit),
            "max_processes_and_or_threads":
                procs.map(|p| p as u64).unwrap_or(s.max_processes_and_or_threads),
            "max_file_size": file_size.map(|f| f as u64).unwrap_or(s.max_file_size),
            "command_line_arguments": args_text,
            "additional_files": additional.as_ref().map(|(zip, _)| zip),
            "callback_url": callback,
        }
    });
    let req = ExecuteRequest {
        language: languages::language_of(language_id)
            .unwrap_or_default()
            .to_string(),
        code,
        files: additional.map(|(_, files)| files).unwrap_or_default(),
        args: args_text
            .as_deref()
            .map(|a| a.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        limits: Some(limits),
        // Judge0 judges one input against its expected output, by its own rule.
        test_cases: Some(vec![TestCase {
            stdin,
            expected_output,
            ..TestCase::default()
        }]),
        comparison: Some("trimmed_lines".into()),
        dialect: Some(dialect),
        ..ExecuteRequest::default()
    };
    Ok((req, callback))
}

/// The Judge0 status of an execution.
pub fn status_id(status: ExecStatus, result: Option<&ExecutionResult>) -> u32 {
    match status {
        ExecStatus::Pending => return 1,
        ExecStatus::Running => return 2,
        ExecStatus::Completed | ExecStatus::Failed => {}
    }
    let Some(r) = result else {
        return 13;
    };
    let verdict = match &r.judging {
        Some(j) => j.verdict,
        // A run without test cases (made through another API): how it ended.
        None if r.limit_exceeded.is_some() || r.signal.is_some() || r.exit_code != 0 => {
            Verdict::RuntimeError
        }
        None if r.failure_reason.is_some() => Verdict::InternalError,
        None => Verdict::Accepted,
    };
    let limit = r.limit_exceeded.as_deref();
    match verdict {
        Verdict::Accepted => 3,
        Verdict::WrongAnswer | Verdict::PresentationError => 4,
        Verdict::TimeLimitExceeded => 5,
        Verdict::CompilationError => 6,
        // Judge0's output goes to a file limited by max_file_size.
        Verdict::OutputLimitExceeded => 8,
        Verdict::MemoryLimitExceeded => 12,
        Verdict::RuntimeError => match (r.signal.as_deref(), limit) {
            (_, Some("wall_time" | "cpu_time")) => 5,
            (_, Some("file_size" | "output")) => 8,
            (Some("SIGSEGV"), _) => 7,
            (Some("SIGXFSZ"), _) => 8,
            (Some("SIGFPE"), _) => 9,
            (Some("SIGABRT"), _) => 10,
            (Some(_), _) => 12,
            (None, _)
                if r.failure_reason
                    .as_deref()
                    .is_some_and(|f| f.starts_with("the program could not be started")) =>
            {
                14
            }
            (None, _) if r.exit_code > 0 => 11,
            (None, _) => 12,
        },
        Verdict::CheckerError | Verdict::InternalError | Verdict::Skipped => 13,
    }
}

/// Judge0's `message` of a finished run.
fn message(status: u32, r: Option<&ExecutionResult>, failure: Option<&str>) -> Option<String> {
    let r = match r {
        Some(r) => r,
        None => return failure.map(String::from),
    };
    match status {
        5 => Some("Time limit exceeded".into()),
        7..=10 | 12 if r.signal.is_some() => r
            .signal
            .as_deref()
            .and_then(signal_number)
            .map(|n| format!("Exited with signal {n}")),
        11 => Some(format!("Exited with error status {}", r.exit_code)),
        8 | 12 | 13 | 14 => r
            .failure_reason
            .clone()
            .or_else(|| r.judging.as_ref().and_then(|j| j.message.clone())),
        _ => None,
    }
}

fn seconds(x: f64) -> Value {
    Value::String(format!("{x:.3}"))
}

/// An execution as a Judge0 submission with the keys `fields` names (base64 text fields with
/// `base64`).
pub fn render(
    obj: &ExecutionObject,
    req: &ExecuteRequest,
    fields: &[String],
    base64: bool,
    s: &Settings,
) -> Value {
    let j0 = req
        .dialect
        .as_ref()
        .and_then(|d| d.get("judge0"))
        .cloned()
        .unwrap_or(Value::Null);
    let r = obj.result.as_ref();
    let status = status_id(obj.status, r);
    let case = req.test_cases.as_ref().and_then(|c| c.first());
    let finished = matches!(obj.status, ExecStatus::Completed | ExecStatus::Failed);
    let compile_output = r.and_then(|r| r.compile.as_ref()).and_then(|c| {
        let text = format!("{}{}", c.stdout, c.stderr);
        (!text.is_empty()).then_some(text)
    });
    let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
    let get = |key: &str, default: Value| j0.get(key).cloned().unwrap_or(default);
    let mut out = Map::new();
    for f in fields {
        let v = match f.as_str() {
            "token" => json!(obj.execution_id),
            "source_code" => json!(req.code),
            "language_id" => get("language_id", json!(languages::id_of(&req.language))),
            "stdin" => json!(case.and_then(|c| c.stdin.clone()).or(req.stdin.clone())),
            "expected_output" => json!(case.and_then(|c| c.expected_output.clone())),
            "stdout" => json!(r.and_then(|r| nonempty(&r.stdout))),
            "stderr" => json!(r.and_then(|r| nonempty(&r.stderr))),
            "compile_output" => json!(compile_output),
            "message" => json!(
                finished
                    .then(|| message(status, r, obj.failure_reason.as_deref()))
                    .flatten()
            ),
            "exit_code" => json!(r.filter(|r| r.exit_code >= 0).map(|r| r.exit_code)),
            "exit_signal" => json!(r.and_then(|r| r.signal.as_deref()).and_then(signal_number)),
            "status" => languages::status(status),
            "status_id" => json!(status),
            "created_at" => json!(obj.created_at),
            "finished_at" => json!(obj.completed_at),
            "time" => r.map(|r| seconds(r.cpu_time)).unwrap_or(Value::Null),
            "wall_time" => r.map(|r| seconds(r.execution_time)).unwrap_or(Value::Null),
            "memory" => json!(r.map(|r| r.memory_peak_kb)),
            "number_of_runs" => get("number_of_runs", json!(1)),
            "cpu_time_limit" => get("cpu_time_limit", json!(s.cpu_time_limit)),
            "cpu_extra_time" => get("cpu_extra_time", json!(s.cpu_extra_time)),
            "wall_time_limit" => get("wall_time_limit", json!(s.wall_time_limit)),
            "memory_limit" => get("memory_limit", json!(s.memory_limit)),
            "stack_limit" => get("stack_limit", json!(s.stack_limit)),
            "max_processes_and_or_threads" => get(
                "max_processes_and_or_threads",
                json!(s.max_processes_and_or_threads),
            ),
            "enable_per_process_and_thread_time_limit"
            | "enable_per_process_and_thread_memory_limit"
            | "redirect_stderr_to_stdout"
            | "enable_network" => json!(false),
            "max_file_size" => get("max_file_size", json!(s.max_file_size)),
            "command_line_arguments" => get("command_line_arguments", Value::Null),
            // The archive as it was sent (base64 already).
            "additional_files" => get("additional_files", Value::Null),
            "callback_url" => get("callback_url", Value::Null),
            // Not supported: always null, never "".
            "compiler_options" | "post_execution_filesystem" => Value::Null,
            _ => continue,
        };
        let v = match (&v, base64 && ENCODED.contains(&f.as_str())) {
            (Value::String(t), true) => Value::String(b64().encode(t.as_bytes())),
            _ => v,
        };
        out.insert(f.clone(), v);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::of(&runcell_service::Config::default())
    }

    #[test]
    fn fields_select_keys() {
        assert_eq!(fields(None).unwrap(), DEFAULT_FIELDS);
        assert_eq!(fields(Some("*")).unwrap(), ALL_FIELDS);
        assert_eq!(
            fields(Some("token, status_id,stdout")).unwrap(),
            ["token", "status_id", "stdout"]
        );
        assert!(fields(Some("token,nope")).unwrap_err().contains("nope"));
        assert_eq!(ALL_FIELDS.len(), 34);
    }

    #[test]
    fn a_submission_becomes_one_judged_case() {
        let (r, callback) = to_request(
            &json!({"source_code": "cHJpbnQoNDIp", "language_id": 71, "stdin": "MQ==",
                    "expected_output": "NDI=", "cpu_time_limit": "2.5",
                    "memory_limit": 128000, "command_line_arguments": "a  b",
                    "callback_url": "https://example.com/cb"}),
            true,
            &settings(),
        )
        .unwrap();
        assert_eq!(callback.as_deref(), Some("https://example.com/cb"));
        assert_eq!(r.language, "python");
        assert_eq!(r.code, "print(42)");
        assert_eq!(r.args, ["a", "b"]);
        let case = &r.test_cases.as_ref().unwrap()[0];
        assert_eq!(case.stdin.as_deref(), Some("1"));
        assert_eq!(case.expected_output.as_deref(), Some("42"));
        assert_eq!(r.comparison.as_deref(), Some("trimmed_lines"));
        let l = r.limits.unwrap();
        assert_eq!(l.cpu_time, Some(json!(2.5)));
        assert_eq!(l.memory_mb, Some(json!(125)));
        let j0 = &r.dialect.unwrap()["judge0"];
        assert_eq!(j0["language_id"], 71);
        assert_eq!(j0["memory_limit"], 128000);
        assert_eq!(j0["command_line_arguments"], "a  b");
    }

    #[test]
    fn bad_fields_are_judge0_field_errors() {
        let e = to_request(&json!({"language_id": 9999}), false, &settings()).unwrap_err();
        assert_eq!(e.0["source_code"], json!(["can't be blank"]));
        assert!(e.0["language_id"][0].as_str().unwrap().contains("9999"));
        let e = to_request(
            &json!({"source_code": "!!", "language_id": 71, "enable_network": true,
                    "cpu_time_limit": 1e9, "number_of_runs": 3}),
            true,
            &settings(),
        )
        .unwrap_err();
        for k in [
            "source_code",
            "enable_network",
            "cpu_time_limit",
            "number_of_runs",
        ] {
            assert!(e.0.contains_key(k), "{k}: {:?}", e.0);
        }
    }
}
