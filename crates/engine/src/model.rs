//! The request and result shapes of one-shot executions (`ExecuteRequest`,
//! `ExecutionResult` in API.md). Limit fields are kept as raw JSON values so that a wrong
//! type gets a precise `INVALID_LIMIT` message instead of a generic parse error.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One execution request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ExecuteRequest {
    pub language: String,
    pub code: String,
    /// Optional version selector ("3", "3.11", "latest").
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub stdin: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Extra files written next to the main source file.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Wall-clock seconds (alias of `limits.wall_time`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>, example = 10))]
    pub timeout: Option<Value>,
    #[serde(default)]
    pub limits: Option<LimitsRequest>,
    /// Lower limits for the compile step of compiled languages (never higher than the
    /// server's compile limits); the run's limits are `limits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile_limits: Option<CompileLimitsRequest>,
    /// What the run step may reach (`false` or absent: nothing, the default), within what the
    /// server lets the API key ask for (docs/network.md).
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<runcell_egress::policy::NetworkRequest>)
    )]
    pub network: Option<Value>,
    #[serde(default)]
    pub session_id: Option<String>,
    /// Judging: run the program once per test case (compiled once, each case in a fresh jail
    /// with the same limits) and give each a verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_cases: Option<Vec<TestCase>>,
    /// How outputs are compared with `expected_output`: `exact`, `trimmed_lines` (the default:
    /// Judge0's rule), `tokens`, `float` or `checker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::compare::ComparisonMode>))]
    pub comparison: Option<String>,
    /// `float` comparison: two numbers match when they differ by at most this (default 1e-6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_tolerance: Option<f64>,
    /// `float` comparison: … or by at most this fraction of the expected number (default 1e-6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_tolerance: Option<f64>,
    /// `checker` comparison: the program that decides each case's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checker: Option<CheckerRequest>,
    /// Stop at the first case that is not accepted (the rest are `skipped`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop_on_first_failure: bool,
    /// What the API dialect that made the request (Judge0) keeps of it to show it back in its
    /// own terms; set by the server only, ignored by the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub dialect: Option<Value>,
}

/// One test case of a judged run.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct TestCase {
    /// The case's standard input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// What the program should print; without it (and without a checker) a case is accepted
    /// when the program exits with 0 within its limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_output: Option<String>,
    /// Command-line arguments of this case (instead of the request's `args`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Files of this case, written next to the program's files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSpec>,
}

/// A checker program: it runs in a jail of its own after each case, with `input.txt`,
/// `output.txt` (the program's output) and `expected_output.txt` in its workspace and those
/// three names as its arguments (testlib's order); exit code 0 accepts, 1 is a wrong answer,
/// 2 a presentation error, anything else a checker failure.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct CheckerRequest {
    pub language: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Extra files of the checker (testlib.h, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSpec>,
    /// The checker's own limits (the server's defaults otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsRequest>,
}

/// Requested limits; each is validated against the server's defaults and maxima.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct LimitsRequest {
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub wall_time: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub cpu_time: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub memory_mb: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub max_processes: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub max_output_bytes: Option<Value>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub max_file_size_mb: Option<Value>,
}

/// Requested compile limits: each lowers the server's (a missing one keeps it).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompileLimitsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub wall_time: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub cpu_time: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub memory_mb: Option<Value>,
}

/// An extra file of the request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct FileSpec {
    pub name: String,
    pub content: String,
    /// `utf8` (default) or `base64`.
    #[serde(default)]
    pub encoding: Option<String>,
}

/// How an execution ended, on the wire `completed` or `failed`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    /// The program ran, whatever its exit code.
    Completed,
    /// A limit killed it, it was cancelled, it did not compile within its limits, or the
    /// system could not run it.
    Failed,
}

impl ResultStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Completed => "completed",
            ResultStatus::Failed => "failed",
        }
    }
}

/// The result of one execution.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecutionResult {
    pub execution_id: String,
    /// `completed` (the program ran, whatever its exit code) or `failed` (a limit killed it,
    /// or the system could not run it).
    pub status: ResultStatus,
    pub language: String,
    pub version: String,
    pub stdout: String,
    pub stderr: String,
    /// The program's own exit code; -1 when it produced none.
    pub exit_code: i32,
    /// Name of the signal that ended the program (`SIGSEGV`), if one did.
    pub signal: Option<String>,
    /// Wall-clock seconds of the program's run.
    pub execution_time: f64,
    /// CPU seconds of every process and thread of the run.
    pub cpu_time: f64,
    /// Peak memory of the whole run in KiB, tmpfs included.
    pub memory_peak_kb: u64,
    /// `wall_time`, `cpu_time`, `memory`, `output`, `file_size` or `processes`.
    pub limit_exceeded: Option<String>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The compile step of compiled languages.
    pub compile: Option<CompileResult>,
    pub session_id: Option<String>,
    /// Why the execution failed, in a sentence (null unless `status` is `failed`).
    pub failure_reason: Option<String>,
    /// The verdicts of a run with `test_cases`; its other fields then describe the deciding
    /// case (the first one not accepted, else the last one run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judging: Option<crate::judge::Judging>,
    /// What the run's network did (runs that asked for egress only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<runcell_egress::NetworkStats>,
    pub created_at: String,
    pub started_at: String,
    pub completed_at: String,
}

/// The compile step's result.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompileResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub execution_time: f64,
    pub cpu_time: f64,
    pub memory_peak_kb: u64,
    pub limit_exceeded: Option<String>,
    /// True when the compiler did not run because the same program was compiled before
    /// (the compile cache): the output is that compilation's, and the times are zero.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// Unix milliseconds of `t` (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds now: the one clock of records, expiries and webhooks.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// RFC 3339 UTC timestamp with milliseconds (`2026-11-23T10:00:00.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Decodes program output: invalid UTF-8 becomes U+FFFD; when the output was cut at a byte
/// limit, a character split by the cut is dropped rather than mangled.
pub fn decode_output(bytes: &[u8], truncated: bool) -> String {
    let mut b = bytes;
    if truncated {
        // Drop an incomplete UTF-8 sequence at the very end (at most 3 bytes): find the lead
        // byte among the last 3 and drop it if its sequence is longer than what follows it.
        // (The last 4 bytes may start inside an earlier character: do not decode them alone.)
        let n = b.len();
        for k in 1..=n.min(3) {
            let lead = b[n - k];
            if lead & 0xc0 == 0x80 {
                continue;
            }
            let len = match lead {
                0xf0..=0xf7 => 4,
                0xe0..=0xef => 3,
                0xc0..=0xdf => 2,
                _ => 1,
            };
            if len > k {
                b = &b[..n - k];
            }
            break;
        }
    }
    String::from_utf8_lossy(b).into_owned()
}

/// How Go's `os/exec` (and so execd) describes a signal that ended a process: `killed`,
/// `terminated`, `interrupt`, `segmentation fault`, `aborted`, else `signal <n>`.
pub fn signal_description(sig: i32) -> String {
    match sig {
        libc::SIGKILL => "killed".into(),
        libc::SIGTERM => "terminated".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGSEGV => "segmentation fault".into(),
        libc::SIGABRT => "aborted".into(),
        n => format!("signal {n}"),
    }
}

/// Name of a signal number (`SIGKILL`), or `SIG<n>` for unusual ones.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("SIG{sig}"),
    };
    name.to_string()
}

/// Number of a signal named by [`signal_name`].
pub fn signal_number(name: &str) -> Option<i32> {
    (1..65).find(|n| signal_name(*n) == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_428_000_123);
        assert_eq!(rfc3339(t), "2026-11-23T10:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn output_decoding_never_splits_characters() {
        assert_eq!(decode_output("héllo".as_bytes(), false), "héllo");
        assert_eq!(decode_output(b"a\xffb", false), "a\u{fffd}b");
        // "é" is c3 a9: cut after c3.
        assert_eq!(decode_output(b"caf\xc3", true), "caf");
        // A 4-byte emoji cut after 2 bytes.
        assert_eq!(decode_output(b"x\xf0\x9f", true), "x");
        // The cut after four 2-byte characters and the lead byte of a fifth.
        assert_eq!(
            decode_output("aéééé\u{e9}".as_bytes()[..10].as_ref(), true),
            "aéééé"
        );
        assert_eq!(decode_output("€€".as_bytes()[..4].as_ref(), true), "€");
        assert_eq!(decode_output("€€".as_bytes()[..5].as_ref(), true), "€");
        assert_eq!(decode_output("€€".as_bytes(), true), "€€");
        // Not truncated: an incomplete tail is invalid input, shown as U+FFFD.
        assert_eq!(decode_output(b"caf\xc3", false), "caf\u{fffd}");
        assert_eq!(decode_output(b"", true), "");
    }

    #[test]
    fn request_accepts_minimal_and_full_forms() {
        let r: ExecuteRequest =
            serde_json::from_str(r#"{"language":"python","code":"print(42)","extra":1}"#).unwrap();
        assert_eq!(r.language, "python");
        assert!(r.limits.is_none());
        let r: ExecuteRequest = serde_json::from_str(
            r#"{"language":"c","code":"x","stdin":"1","args":["a"],"environment":{"K":"V"},
                "files":[{"name":"u.h","content":"eA==","encoding":"base64"}],
                "timeout":3,"limits":{"memory_mb":"lots"},"session_id":"s"}"#,
        )
        .unwrap();
        assert_eq!(
            r.limits.unwrap().memory_mb,
            Some(Value::String("lots".into()))
        );
        assert_eq!(r.files[0].encoding.as_deref(), Some("base64"));
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(40), "SIG40");
        assert_eq!(signal_number("SIGSEGV"), Some(11));
        assert_eq!(signal_number("SIG40"), Some(40));
        assert_eq!(signal_number("nope"), None);
    }
}
