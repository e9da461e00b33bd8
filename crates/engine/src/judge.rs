//! Judging: a run with `test_cases` is compiled once, then every case runs in a fresh jail
//! with the run's limits and gets a verdict: from how it ended (a limit, a signal, an exit
//! code), then from its output (compared with the expected output, or decided by a checker
//! program that runs in a jail of its own). The run's verdict is the first case's that was not
//! accepted.
//!
//! Everything here is in terms of the engine's own plans and results, so that every API
//! dialect (native, Judge0) maps onto the same call: each case keeps its exit code and signal.

use std::sync::Arc;
use std::time::SystemTime;

use runcell_jail::JailError;
use serde::{Deserialize, Serialize};

use crate::compare::{Comparison, ComparisonMode, DEFAULT_TOLERANCE};
use crate::engine::{Build, Plan, check_args, decode_files};
use crate::model::{CompileResult, ExecuteRequest, ExecutionResult, ResultStatus};
use crate::{Cancel, Engine, EngineError, RunContext};

/// A case's (or a run's) verdict.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Accepted,
    WrongAnswer,
    /// The checker's exit code 2.
    PresentationError,
    /// The wall-clock or CPU time limit.
    TimeLimitExceeded,
    MemoryLimitExceeded,
    OutputLimitExceeded,
    /// A non-zero exit code, a signal, the file size or process limit.
    RuntimeError,
    CompilationError,
    /// The checker failed (an exit code other than 0, 1, 2; a signal; a limit; it did not
    /// compile).
    CheckerError,
    /// runcell could not run the case.
    InternalError,
    /// Not run: an earlier case failed with `stop_on_first_failure`, the program did not
    /// compile, or the run was cancelled.
    #[default]
    Skipped,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::WrongAnswer => "wrong_answer",
            Verdict::PresentationError => "presentation_error",
            Verdict::TimeLimitExceeded => "time_limit_exceeded",
            Verdict::MemoryLimitExceeded => "memory_limit_exceeded",
            Verdict::OutputLimitExceeded => "output_limit_exceeded",
            Verdict::RuntimeError => "runtime_error",
            Verdict::CompilationError => "compilation_error",
            Verdict::CheckerError => "checker_error",
            Verdict::InternalError => "internal_error",
            Verdict::Skipped => "skipped",
        }
    }
}

/// The judging of a run with test cases (`judging` of its result).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Judging {
    /// The first verdict of a case that was not accepted, in case order; `accepted` when
    /// every case was; `compilation_error` when the program did not compile; `checker_error`
    /// when the checker did not.
    pub verdict: Verdict,
    /// Why, in a sentence, when the verdict is not `accepted`.
    pub message: Option<String>,
    pub comparison: ComparisonMode,
    /// Cases accepted, of `total`.
    pub passed: usize,
    pub total: usize,
    /// The longest wall-clock time of a case, seconds.
    pub max_execution_time: f64,
    /// The largest memory peak of a case, KiB.
    pub max_memory_peak_kb: u64,
    /// The checker's compile step (compiled checkers).
    pub checker_compile: Option<CompileResult>,
    /// One per test case, in request order.
    pub cases: Vec<CaseResult>,
}

/// One test case's run and verdict.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CaseResult {
    /// The case's position in `test_cases`, from 0.
    pub index: usize,
    pub verdict: Verdict,
    /// Why it is not accepted (where the output differs, which limit, the checker's comment).
    pub message: Option<String>,
    pub stdout: String,
    pub stderr: String,
    /// The program's own exit code; -1 when it produced none.
    pub exit_code: i32,
    /// The signal that ended the program (`SIGSEGV`), if one did.
    pub signal: Option<String>,
    pub execution_time: f64,
    pub cpu_time: f64,
    pub memory_peak_kb: u64,
    pub limit_exceeded: Option<String>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The checker's run (comparison `checker`).
    pub checker: Option<CheckerResult>,
}

/// A checker's run on one case.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckerResult {
    pub exit_code: i32,
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub execution_time: f64,
    pub limit_exceeded: Option<String>,
}

/// The files a checker gets, in its workspace and as its arguments (testlib's order: input,
/// the program's output, the expected output).
pub const CHECKER_FILES: [&str; 3] = ["input.txt", "output.txt", "expected_output.txt"];

/// A validated judged run: its cases and how they are judged.
#[derive(Debug)]
pub(crate) struct JudgePlan {
    cases: Vec<CasePlan>,
    mode: ComparisonMode,
    how: How,
    stop_on_first_failure: bool,
}

/// Who decides whether an output is right.
#[derive(Debug)]
enum How {
    /// The engine, comparing it with the expected output.
    Compare(Comparison),
    /// A checker program.
    Checker(Box<Plan>),
}

#[derive(Debug)]
struct CasePlan {
    stdin: Vec<u8>,
    expected: Option<String>,
    args: Option<Vec<String>>,
    files: Vec<(String, Vec<u8>)>,
}

fn invalid(s: impl Into<String>) -> EngineError {
    EngineError::InvalidRequest(s.into())
}

/// The judging part of a request, checked against the program's plan (`None`: a plain run).
pub(crate) fn plan(
    engine: &Engine,
    req: &ExecuteRequest,
    base: &Plan,
) -> Result<Option<JudgePlan>, EngineError> {
    let Some(cases) = &req.test_cases else {
        if req.comparison.is_some()
            || req.checker.is_some()
            || req.stop_on_first_failure
            || req.absolute_tolerance.is_some()
            || req.relative_tolerance.is_some()
        {
            return Err(invalid(
                "comparison, absolute_tolerance, relative_tolerance, checker and \
                 stop_on_first_failure apply to test_cases, and this request has none",
            ));
        }
        return Ok(None);
    };
    let max = engine.config().max_test_cases;
    if cases.is_empty() {
        return Err(invalid("test_cases must hold at least one case"));
    }
    if cases.len() > max {
        return Err(EngineError::TooManyTestCases(format!(
            "{} test cases are more than this server's maximum of {max}",
            cases.len()
        )));
    }
    if req.session_id.is_some() {
        return Err(invalid(
            "test_cases cannot be combined with session_id: every case runs in a fresh jail",
        ));
    }
    let mode = match req.comparison.as_deref() {
        Some(name) => ComparisonMode::parse(name).ok_or_else(|| {
            invalid(format!(
                "unknown comparison mode {name:?}; use {}",
                ComparisonMode::NAMES
            ))
        })?,
        None if req.checker.is_some() => ComparisonMode::Checker,
        None => ComparisonMode::TrimmedLines,
    };
    match (mode, &req.checker) {
        (ComparisonMode::Checker, None) => {
            return Err(invalid(
                "comparison \"checker\" needs a checker program: \
                 \"checker\": {\"language\": …, \"code\": …}",
            ));
        }
        (m, Some(_)) if m != ComparisonMode::Checker => {
            return Err(invalid(format!(
                "a checker is given, but comparison is {:?}; use \"checker\" or leave \
                 comparison out",
                serde_json::to_value(m).unwrap_or_default()
            )));
        }
        _ => {}
    }
    let tolerance = |name: &str, v: Option<f64>| -> Result<f64, EngineError> {
        match v {
            None => Ok(DEFAULT_TOLERANCE),
            Some(_) if mode != ComparisonMode::Float => Err(invalid(format!(
                "{name} applies to comparison \"float\" only"
            ))),
            Some(t) if t.is_finite() && t >= 0.0 => Ok(t),
            Some(t) => Err(invalid(format!(
                "{name} must be a number of at least 0, not {t}"
            ))),
        }
    };
    let absolute = tolerance("absolute_tolerance", req.absolute_tolerance)?;
    let relative = tolerance("relative_tolerance", req.relative_tolerance)?;
    let comparison = match mode {
        ComparisonMode::Exact => Comparison::Exact,
        ComparisonMode::TrimmedLines => Comparison::TrimmedLines,
        ComparisonMode::Tokens => Comparison::Tokens,
        ComparisonMode::Float => Comparison::Float { absolute, relative },
        ComparisonMode::Checker => Comparison::Exact,
    };
    let mut taken: Vec<&str> = vec![base.source_name.as_str()];
    taken.extend(base.files.iter().map(|(n, _)| n.as_str()));
    let program_bytes: usize = base.files.iter().map(|(_, d)| d.len()).sum();
    let max_bytes = engine.config().max_files_bytes;
    let mut planned = Vec::with_capacity(cases.len());
    for (i, case) in cases.iter().enumerate() {
        let at = |e: EngineError| within(e, &format!("test case {i}"));
        if let Some(args) = &case.args {
            check_args(args).map_err(at)?;
        }
        let files =
            decode_files(&case.files, &taken, "the program has a file of that name").map_err(at)?;
        let bytes = program_bytes + files.iter().map(|(_, d)| d.len()).sum::<usize>();
        if bytes as u64 > max_bytes {
            return Err(at(invalid(format!(
                "the program's and the case's files together exceed {max_bytes} bytes"
            ))));
        }
        planned.push(CasePlan {
            stdin: case.stdin.clone().unwrap_or_default().into_bytes(),
            expected: case.expected_output.clone(),
            args: case.args.clone(),
            files,
        });
    }
    let how = match &req.checker {
        None => How::Compare(comparison),
        Some(c) => {
            let at = |e: EngineError| within(e, "the checker");
            for f in &c.files {
                if CHECKER_FILES.contains(&f.name.as_str()) {
                    return Err(at(invalid(format!(
                        "file name {:?} is the checker's input; use another name",
                        f.name
                    ))));
                }
            }
            let req = ExecuteRequest {
                language: c.language.clone(),
                code: c.code.clone(),
                version: c.version.clone(),
                files: c.files.clone(),
                limits: c.limits.clone(),
                ..ExecuteRequest::default()
            };
            How::Checker(Box::new(engine.plan(&req).map_err(at)?))
        }
    };
    Ok(Some(JudgePlan {
        cases: planned,
        mode,
        how,
        stop_on_first_failure: req.stop_on_first_failure,
    }))
}

/// The same error about a part of the request (`test case 3: …`, `the checker: …`).
fn within(e: EngineError, what: &str) -> EngineError {
    match e {
        EngineError::UnsupportedLanguage(l) => {
            EngineError::UnsupportedLanguage(format!("{l} ({what})"))
        }
        EngineError::LanguageUnavailable(m) => {
            EngineError::LanguageUnavailable(format!("{what}: {m}"))
        }
        EngineError::InvalidLimit(m) => EngineError::InvalidLimit(format!("{what}: {m}")),
        EngineError::InvalidRequest(m) => EngineError::InvalidRequest(format!("{what}: {m}")),
        other => other,
    }
}

impl Plan {
    /// The plan of one case: the program with the case's input, arguments and files.
    fn for_case(&self, case: &CasePlan) -> Plan {
        let mut p = self.clone();
        p.judge = None;
        p.stdin = case.stdin.clone();
        if let Some(args) = &case.args {
            p.args = args.clone();
        }
        p.files.extend(case.files.iter().cloned());
        p
    }

    /// The plan of a checker's run on one case.
    fn for_check(&self, input: &[u8], output: &str, expected: &str) -> Plan {
        let mut p = self.clone();
        p.stdin = Vec::new();
        p.args = CHECKER_FILES.iter().map(|s| s.to_string()).collect();
        for (name, data) in
            CHECKER_FILES
                .iter()
                .zip([input, output.as_bytes(), expected.as_bytes()])
        {
            p.files.push((name.to_string(), data.to_vec()));
        }
        p
    }
}

impl CaseResult {
    fn skipped(index: usize) -> CaseResult {
        CaseResult {
            index,
            exit_code: -1,
            ..CaseResult::default()
        }
    }

    fn of(index: usize, r: &ExecutionResult) -> CaseResult {
        CaseResult {
            index,
            verdict: Verdict::Skipped,
            message: None,
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            exit_code: r.exit_code,
            signal: r.signal.clone(),
            execution_time: r.execution_time,
            cpu_time: r.cpu_time,
            memory_peak_kb: r.memory_peak_kb,
            limit_exceeded: r.limit_exceeded.clone(),
            stdout_truncated: r.stdout_truncated,
            stderr_truncated: r.stderr_truncated,
            checker: None,
        }
    }
}

/// The verdict of a case from how its program ended, before its output is looked at
/// (`Accepted`: it exited with 0 within its limits).
fn verdict_of_run(r: &ExecutionResult) -> (Verdict, Option<String>) {
    let reason = || r.failure_reason.clone();
    match r.limit_exceeded.as_deref() {
        Some("wall_time" | "cpu_time") => return (Verdict::TimeLimitExceeded, reason()),
        Some("memory") => return (Verdict::MemoryLimitExceeded, reason()),
        Some("output") => return (Verdict::OutputLimitExceeded, reason()),
        Some(_) => return (Verdict::RuntimeError, reason()),
        None => {}
    }
    if r.status == ResultStatus::Failed {
        // No limit: the program could not start, or runcell could not run it.
        let not_started = r
            .failure_reason
            .as_deref()
            .is_some_and(|f| f.starts_with("the program could not be started"));
        let v = if not_started {
            Verdict::RuntimeError
        } else {
            Verdict::InternalError
        };
        return (v, reason());
    }
    if let Some(sig) = &r.signal {
        return (
            Verdict::RuntimeError,
            Some(format!("the program was killed by {sig}")),
        );
    }
    if r.exit_code != 0 {
        return (
            Verdict::RuntimeError,
            Some(format!("the program exited with code {}", r.exit_code)),
        );
    }
    (Verdict::Accepted, None)
}

/// Longest checker comment kept in a case's message, characters.
const COMMENT_CHARS: usize = 500;

/// The verdict of a checker's run.
fn verdict_of_checker(r: &ExecutionResult) -> (Verdict, Option<String>) {
    let comment = {
        let text = if r.stderr.trim().is_empty() {
            &r.stdout
        } else {
            &r.stderr
        };
        let t = text.trim();
        let mut c: String = t.chars().take(COMMENT_CHARS).collect();
        if c.len() < t.len() {
            c.push('…');
        }
        (!c.is_empty()).then_some(c)
    };
    let failed = |why: String| {
        let m = match &comment {
            Some(c) => format!("the checker failed: {why}: {c}"),
            None => format!("the checker failed: {why}"),
        };
        (Verdict::CheckerError, Some(m))
    };
    if let Some(l) = &r.limit_exceeded {
        return failed(format!("it exceeded its {l} limit"));
    }
    if r.status == ResultStatus::Failed {
        return failed(r.failure_reason.clone().unwrap_or_default());
    }
    if let Some(sig) = &r.signal {
        return failed(format!("it was killed by {sig}"));
    }
    match r.exit_code {
        0 => (Verdict::Accepted, None),
        1 => (Verdict::WrongAnswer, comment),
        2 => (Verdict::PresentationError, comment),
        n => failed(format!("it exited with code {n}")),
    }
}

/// Copies the deciding case's run into the result of the whole run.
fn adopt(r: &mut ExecutionResult, case: ExecutionResult) {
    r.status = case.status;
    r.stdout = case.stdout;
    r.stderr = case.stderr;
    r.exit_code = case.exit_code;
    r.signal = case.signal;
    r.execution_time = case.execution_time;
    r.cpu_time = case.cpu_time;
    r.memory_peak_kb = case.memory_peak_kb;
    r.limit_exceeded = case.limit_exceeded;
    r.stdout_truncated = case.stdout_truncated;
    r.stderr_truncated = case.stderr_truncated;
    r.failure_reason = case.failure_reason;
}

/// Runs a judged plan: compiles the program (and the checker) once, runs the cases, and
/// fills `r.judging` and, from the deciding case, the rest of `r`.
pub(crate) fn run(
    engine: &Engine,
    plan: &Plan,
    judge: &Arc<JudgePlan>,
    r: &mut ExecutionResult,
    ctx: RunContext<'_>,
) -> Result<(), JailError> {
    let (cancel, scope) = (ctx.cancel, ctx.cache_scope);
    let total = judge.cases.len();
    let mut judging = Judging {
        verdict: Verdict::Accepted,
        message: None,
        comparison: judge.mode,
        passed: 0,
        total,
        max_execution_time: 0.0,
        max_memory_peak_kb: 0,
        checker_compile: None,
        cases: (0..total).map(CaseResult::skipped).collect(),
    };
    let program = engine.build(plan, r, scope, cancel)?;
    if matches!(program, Build::Failed) {
        judging.verdict = Verdict::CompilationError;
        judging.message = Some(match &r.failure_reason {
            Some(f) => f.clone(),
            None => "the program did not compile".into(),
        });
        r.judging = Some(judging);
        return Ok(());
    }
    let created = SystemTime::now();
    let checker = match &judge.how {
        How::Compare(_) => None,
        How::Checker(cp) => {
            let mut scratch = engine.failure(cp, &r.execution_id, created, "");
            let built = engine.build(cp, &mut scratch, scope, cancel)?;
            judging.checker_compile = scratch.compile.take();
            if matches!(built, Build::Failed) {
                let why = "the checker did not compile".to_string();
                judging.verdict = Verdict::CheckerError;
                judging.message = Some(why.clone());
                r.status = ResultStatus::Failed;
                r.failure_reason = Some(why);
                r.judging = Some(judging);
                return Ok(());
            }
            Some(built)
        }
    };
    let program_files = program.ready();
    let checker_files = checker.as_ref().and_then(Build::ready);
    let mut deciding: Option<ExecutionResult> = None;
    let mut last: Option<ExecutionResult> = None;
    for (i, case) in judge.cases.iter().enumerate() {
        if cancel.is_some_and(Cancel::is_cancelled) {
            break;
        }
        let run_ctx = RunContext {
            cancel,
            prebuilt: program_files,
            ..RunContext::default()
        };
        let cr = engine.run(&plan.for_case(case), &r.execution_id, created, run_ctx);
        let mut result = CaseResult::of(i, &cr);
        let (mut verdict, mut message) = verdict_of_run(&cr);
        if verdict == Verdict::Accepted {
            match (&judge.how, &case.expected) {
                (How::Compare(c), Some(expected)) => {
                    if let Err(why) = c.compare(expected, &cr.stdout) {
                        (verdict, message) = (Verdict::WrongAnswer, Some(why));
                    }
                }
                (How::Compare(_), None) => {}
                (How::Checker(cp), expected) => {
                    let check = cp.for_check(
                        &case.stdin,
                        &cr.stdout,
                        expected.as_deref().unwrap_or_default(),
                    );
                    let check_ctx = RunContext {
                        cancel,
                        prebuilt: checker_files,
                        ..RunContext::default()
                    };
                    let ch = engine.run(&check, &r.execution_id, created, check_ctx);
                    (verdict, message) = verdict_of_checker(&ch);
                    result.checker = Some(CheckerResult {
                        exit_code: ch.exit_code,
                        signal: ch.signal,
                        stdout: ch.stdout,
                        stderr: ch.stderr,
                        execution_time: ch.execution_time,
                        limit_exceeded: ch.limit_exceeded,
                    });
                }
            }
        }
        result.verdict = verdict;
        result.message = message.clone();
        judging.max_execution_time = judging.max_execution_time.max(cr.execution_time);
        judging.max_memory_peak_kb = judging.max_memory_peak_kb.max(cr.memory_peak_kb);
        judging.cases[i] = result;
        if verdict == Verdict::Accepted {
            judging.passed += 1;
            last = Some(cr);
            continue;
        }
        if deciding.is_none() {
            judging.verdict = verdict;
            judging.message = message.map(|m| format!("test case {i}: {m}"));
            deciding = Some(cr);
        }
        if judge.stop_on_first_failure {
            break;
        }
    }
    if let Some(case) = deciding.or(last) {
        adopt(r, case);
    }
    r.judging = Some(judging);
    Ok(())
}
