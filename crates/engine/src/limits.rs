//! Execution limits: server defaults and maxima, and validation of requested values. A
//! missing value takes the default; anything else must be a positive number within the
//! maximum. Nothing ever means "unlimited".

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::EngineError;
use crate::model::{CompileLimitsRequest, ExecuteRequest, LimitsRequest};

/// One full set of limits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock seconds.
    pub wall_time: f64,
    /// CPU seconds of all processes and threads together.
    pub cpu_time: f64,
    /// Memory of all processes together (tmpfs included), MiB.
    pub memory_mb: u64,
    /// Processes and threads together.
    pub max_processes: u64,
    /// Bytes per output stream.
    pub max_output_bytes: u64,
    /// Largest file a program may write, MiB.
    pub max_file_size_mb: u64,
}

/// Defaults and maxima of the server.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitPolicy {
    pub defaults: Limits,
    pub maxima: Limits,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        LimitPolicy {
            defaults: Limits {
                wall_time: 10.0,
                cpu_time: 5.0,
                memory_mb: 256,
                max_processes: 64,
                max_output_bytes: 1 << 20,
                max_file_size_mb: 16,
            },
            maxima: Limits {
                wall_time: 300.0,
                cpu_time: 120.0,
                memory_mb: 4096,
                max_processes: 1024,
                max_output_bytes: 64 << 20,
                max_file_size_mb: 1024,
            },
        }
    }
}

/// Smallest values that make sense at all.
const MIN_MEMORY_MB: u64 = 8;
const MIN_TIME: f64 = 0.001;

fn invalid(detail: String) -> EngineError {
    EngineError::InvalidLimit(detail)
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
        Value::Number(n) => n.to_string(),
    }
}

fn seconds(name: &str, v: Option<&Value>, default: f64, max: f64) -> Result<f64, EngineError> {
    let Some(v) = v else { return Ok(default) };
    let Some(x) = v.as_f64() else {
        return Err(invalid(format!(
            "{name} must be a number of seconds, not {}",
            describe(v)
        )));
    };
    if !x.is_finite() || x < MIN_TIME {
        return Err(invalid(format!(
            "{name} must be a positive number of seconds (at least {MIN_TIME}), got {x}"
        )));
    }
    if x > max {
        return Err(invalid(format!(
            "{name} of {x} seconds is above this server's maximum of {max}"
        )));
    }
    Ok(x)
}

fn count(
    name: &str,
    unit: &str,
    v: Option<&Value>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, EngineError> {
    let Some(v) = v else { return Ok(default) };
    let x = match v {
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u,
            (None, Some(f)) if f.fract() == 0.0 && f > 0.0 && f < u64::MAX as f64 => f as u64,
            _ => {
                return Err(invalid(format!(
                    "{name} must be a whole positive number of {unit}, got {n}"
                )));
            }
        },
        other => {
            return Err(invalid(format!(
                "{name} must be a whole number of {unit}, not {}",
                describe(other)
            )));
        }
    };
    if x < min.max(1) {
        return Err(invalid(format!(
            "{name} must be at least {} {unit}, got {x}",
            min.max(1)
        )));
    }
    if x > max {
        return Err(invalid(format!(
            "{name} of {x} {unit} is above this server's maximum of {max}"
        )));
    }
    Ok(x)
}

/// The compile limits `base` (the server's, for a language) lowered as `req` asks; asking
/// for more than `base` is refused with a sentence.
pub fn lower_compile(base: &Limits, req: &CompileLimitsRequest) -> Result<Limits, EngineError> {
    let mut l = *base;
    l.wall_time = seconds(
        "compile_limits.wall_time",
        req.wall_time.as_ref().filter(|v| !v.is_null()),
        base.wall_time,
        base.wall_time,
    )?;
    l.cpu_time = seconds(
        "compile_limits.cpu_time",
        req.cpu_time.as_ref().filter(|v| !v.is_null()),
        base.cpu_time,
        base.cpu_time,
    )?;
    l.memory_mb = count(
        "compile_limits.memory_mb",
        "MiB",
        req.memory_mb.as_ref().filter(|v| !v.is_null()),
        base.memory_mb,
        MIN_MEMORY_MB,
        base.memory_mb,
    )?;
    Ok(l)
}

impl LimitPolicy {
    /// Checks the policy itself (from a config file).
    pub fn validate(&self) -> Result<(), String> {
        let d = &self.defaults;
        let m = &self.maxima;
        let ok = d.wall_time >= MIN_TIME
            && d.cpu_time >= MIN_TIME
            && d.memory_mb >= MIN_MEMORY_MB
            && d.max_processes >= 1
            && d.max_output_bytes >= 1
            && d.max_file_size_mb >= 1
            && d.wall_time <= m.wall_time
            && d.cpu_time <= m.cpu_time
            && d.memory_mb <= m.memory_mb
            && d.max_processes <= m.max_processes
            && d.max_output_bytes <= m.max_output_bytes
            && d.max_file_size_mb <= m.max_file_size_mb
            && m.wall_time.is_finite()
            && m.cpu_time.is_finite();
        if ok {
            Ok(())
        } else {
            Err("every default limit must be positive and at most its maximum".into())
        }
    }

    /// The default `max_processes` of runs of a language whose definition asks for
    /// `language` (its `[run] max_processes`, for runtimes that start threads of their own): the
    /// larger of that and the server's default, never above the server's maximum.
    pub fn default_processes(&self, language: Option<u64>) -> u64 {
        language
            .unwrap_or(0)
            .max(self.defaults.max_processes)
            .min(self.maxima.max_processes)
    }

    /// The limits of a request: defaults, overridden by `timeout` and `limits`.
    pub fn resolve(&self, req: &ExecuteRequest) -> Result<Limits, EngineError> {
        self.resolve_for(req, None)
    }

    /// The limits of a request in a language whose definition asks for a default
    /// `max_processes` of `language_processes` (see [`LimitPolicy::default_processes`]). A
    /// `max_processes` the request gives explicitly wins over both defaults, lower or higher,
    /// and is still checked against the maximum.
    pub fn resolve_for(
        &self,
        req: &ExecuteRequest,
        language_processes: Option<u64>,
    ) -> Result<Limits, EngineError> {
        let empty = LimitsRequest::default();
        let l = req.limits.as_ref().unwrap_or(&empty);
        let d = &self.defaults;
        let m = &self.maxima;
        let wall_value = l.wall_time.as_ref().or(req.timeout.as_ref());
        let wall_name = if l.wall_time.is_some() {
            "limits.wall_time"
        } else {
            "timeout"
        };
        let wall_time = seconds(wall_name, wall_value, d.wall_time, m.wall_time)?;
        // Without an explicit CPU limit, a longer wall limit raises the CPU default with it
        // (a 60 s timeout should not be cut at 5 s of CPU), within the maximum.
        let cpu_default = if wall_value.is_some() {
            d.cpu_time.max(wall_time).min(m.cpu_time)
        } else {
            d.cpu_time
        };
        Ok(Limits {
            wall_time,
            cpu_time: seconds(
                "limits.cpu_time",
                l.cpu_time.as_ref(),
                cpu_default,
                m.cpu_time,
            )?,
            memory_mb: count(
                "limits.memory_mb",
                "MiB",
                l.memory_mb.as_ref(),
                d.memory_mb,
                MIN_MEMORY_MB,
                m.memory_mb,
            )?,
            max_processes: count(
                "limits.max_processes",
                "processes",
                l.max_processes.as_ref(),
                self.default_processes(language_processes),
                1,
                m.max_processes,
            )?,
            max_output_bytes: count(
                "limits.max_output_bytes",
                "bytes",
                l.max_output_bytes.as_ref(),
                d.max_output_bytes,
                1,
                m.max_output_bytes,
            )?,
            max_file_size_mb: count(
                "limits.max_file_size_mb",
                "MiB",
                l.max_file_size_mb.as_ref(),
                d.max_file_size_mb,
                1,
                m.max_file_size_mb,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(timeout: Option<Value>, limits: Value) -> ExecuteRequest {
        ExecuteRequest {
            language: "python".into(),
            code: "".into(),
            timeout,
            limits: Some(serde_json::from_value(limits).unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_asked() {
        let p = LimitPolicy::default();
        let r = ExecuteRequest::default();
        assert_eq!(p.resolve(&r).unwrap(), p.defaults);
    }

    #[test]
    fn valid_values_are_taken() {
        let p = LimitPolicy::default();
        let l = p
            .resolve(&req(
                None,
                json!({"wall_time": 2.5, "cpu_time": 1, "memory_mb": 128, "max_processes": 8,
                       "max_output_bytes": 1000, "max_file_size_mb": 2}),
            ))
            .unwrap();
        assert_eq!(l.wall_time, 2.5);
        assert_eq!(l.cpu_time, 1.0);
        assert_eq!(l.memory_mb, 128);
        assert_eq!(l.max_processes, 8);
        assert_eq!(l.max_output_bytes, 1000);
        assert_eq!(l.max_file_size_mb, 2);
    }

    #[test]
    fn timeout_is_the_wall_time_alias_and_lifts_the_cpu_default() {
        let p = LimitPolicy::default();
        let l = p.resolve(&req(Some(json!(30)), json!({}))).unwrap();
        assert_eq!(l.wall_time, 30.0);
        assert_eq!(l.cpu_time, 30.0);
        let l = p
            .resolve(&req(Some(json!(30)), json!({"wall_time": 4})))
            .unwrap();
        assert_eq!(l.wall_time, 4.0);
    }

    #[test]
    fn compile_limits_are_only_lowered() {
        let base = LimitPolicy::default().defaults;
        let req = CompileLimitsRequest {
            wall_time: Some(json!(base.wall_time / 2.0)),
            cpu_time: None,
            memory_mb: Some(json!(64)),
        };
        let l = lower_compile(&base, &req).unwrap();
        assert_eq!(l.wall_time, base.wall_time / 2.0);
        assert_eq!(l.cpu_time, base.cpu_time);
        assert_eq!(l.memory_mb, 64.min(base.memory_mb));
        assert_eq!(l.max_processes, base.max_processes);
        let null = CompileLimitsRequest {
            wall_time: Some(Value::Null),
            ..CompileLimitsRequest::default()
        };
        assert_eq!(lower_compile(&base, &null).unwrap(), base);
        for (bad, words) in [
            (
                json!({"wall_time": base.wall_time * 2.0}),
                "above this server's maximum",
            ),
            (json!({"cpu_time": "1"}), "must be a number of seconds"),
            (json!({"memory_mb": 1}), "at least"),
            (
                json!({"memory_mb": base.memory_mb + 1}),
                "above this server's maximum",
            ),
        ] {
            let req: CompileLimitsRequest = serde_json::from_value(bad.clone()).unwrap();
            let e = lower_compile(&base, &req).unwrap_err().to_string();
            assert!(
                e.contains(words) && e.contains("compile_limits."),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused_with_a_sentence() {
        let p = LimitPolicy::default();
        for (field, value) in [
            ("memory_mb", json!(0)),
            ("memory_mb", json!(-5)),
            ("memory_mb", json!(1.5)),
            ("memory_mb", json!("256")),
            ("memory_mb", json!(1_000_000)),
            ("wall_time", json!(0)),
            ("wall_time", json!(-1)),
            ("wall_time", json!(1e9)),
            ("cpu_time", json!([1])),
            ("max_processes", json!(0)),
            ("max_processes", json!(true)),
            ("max_output_bytes", json!(0)),
            ("max_file_size_mb", json!({"a": 1})),
        ] {
            let mut obj = serde_json::Map::new();
            obj.insert(field.into(), value.clone());
            let e = p.resolve(&req(None, Value::Object(obj))).unwrap_err();
            let EngineError::InvalidLimit(msg) = &e else {
                panic!("{field}={value}: {e:?}")
            };
            assert!(msg.contains(field), "{msg}");
        }
        let e = p.resolve(&req(Some(json!("10s")), json!({}))).unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
    }

    #[test]
    fn null_means_the_default() {
        let p = LimitPolicy::default();
        let l = p.resolve(&req(None, json!({"memory_mb": null}))).unwrap();
        assert_eq!(l.memory_mb, p.defaults.memory_mb);
    }

    #[test]
    fn a_language_default_raises_the_process_default_only() {
        let p = LimitPolicy::default();
        let none = ExecuteRequest::default();
        // A thread-hungry runtime gets its own default...
        assert_eq!(p.resolve_for(&none, Some(256)).unwrap().max_processes, 256);
        // ...never below the server's default...
        assert_eq!(p.resolve_for(&none, Some(16)).unwrap().max_processes, 64);
        assert_eq!(p.resolve_for(&none, None).unwrap().max_processes, 64);
        // ...and never above the server's maximum.
        assert_eq!(
            p.resolve_for(&none, Some(100_000)).unwrap().max_processes,
            1024
        );
        let mut small = p;
        small.maxima.max_processes = 100;
        small.defaults.max_processes = 50;
        assert_eq!(small.default_processes(Some(256)), 100);
        assert_eq!(
            small.resolve_for(&none, Some(256)).unwrap().max_processes,
            100
        );
        // null is no value: the language's default.
        let null = req(None, json!({"max_processes": null}));
        assert_eq!(p.resolve_for(&null, Some(256)).unwrap().max_processes, 256);
        // Other limits keep the server's defaults.
        let l = p.resolve_for(&none, Some(256)).unwrap();
        assert_eq!(l.memory_mb, p.defaults.memory_mb);
        assert_eq!(l.wall_time, p.defaults.wall_time);
    }

    #[test]
    fn an_explicit_process_limit_wins_over_the_language_default() {
        let p = LimitPolicy::default();
        for asked in [1u64, 8, 200, 300, 1024] {
            let r = req(None, json!({ "max_processes": asked }));
            assert_eq!(
                p.resolve_for(&r, Some(256)).unwrap().max_processes,
                asked,
                "asked {asked}"
            );
        }
        // The maximum still applies: a language default does not lift it.
        let r = req(None, json!({"max_processes": 1025}));
        let e = p.resolve_for(&r, Some(4096)).unwrap_err();
        assert!(e.to_string().contains("maximum of 1024"), "{e}");
        let r = req(None, json!({"max_processes": 0}));
        assert!(p.resolve_for(&r, Some(256)).is_err());
    }

    #[test]
    fn policies_are_checked() {
        let mut p = LimitPolicy::default();
        assert!(p.validate().is_ok());
        p.defaults.memory_mb = p.maxima.memory_mb + 1;
        assert!(p.validate().is_err());
    }
}
