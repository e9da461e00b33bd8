//! The shapes of code runs, their results and artifacts (`code-run-get` of the API contract),
//! and the events a run streams.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Lifecycle of a code run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// One display output of a run (a MIME bundle): the value of the last expression
/// (`is_main_result`), or something passed to `display()` / shown by `plt.show()`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultItem {
    /// `text/plain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub markdown: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jpeg: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub json: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub javascript: Option<String>,
    /// Every other MIME type of the bundle, by its MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Option<Map<String, Value>>,
    pub is_main_result: bool,
}

impl ResultItem {
    /// Maps a Jupyter MIME bundle to the named fields.
    pub fn from_bundle(bundle: &Map<String, Value>, main: bool) -> ResultItem {
        let mut r = ResultItem {
            is_main_result: main,
            ..ResultItem::default()
        };
        let mut other = Map::new();
        for (mime, value) in bundle {
            let text = || match value {
                Value::String(s) => Some(s.clone()),
                // Some kernels split text into lines.
                Value::Array(a) => Some(a.iter().filter_map(Value::as_str).collect::<String>()),
                v => Some(v.to_string()),
            };
            let b64 = || text().map(|s| s.split_whitespace().collect::<String>());
            match mime.as_str() {
                "text/plain" => r.text = text(),
                "text/html" => r.html = text(),
                "text/markdown" => r.markdown = text(),
                "image/svg+xml" => r.svg = text(),
                "image/png" => r.png = b64(),
                "image/jpeg" => r.jpeg = b64(),
                "application/pdf" => r.pdf = b64(),
                "text/latex" => r.latex = text(),
                "application/json" => r.json = Some(value.clone()),
                "application/javascript" | "text/javascript" => r.javascript = text(),
                _ => {
                    other.insert(mime.clone(), value.clone());
                }
            }
        }
        if !other.is_empty() {
            r.data = Some(other);
        }
        r
    }

    /// The bundle again, MIME type to value (for streaming in execd's `results` shape).
    pub fn to_bundle(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.into(), Value::String(v.clone()));
            }
        };
        put("text/plain", &self.text);
        put("text/html", &self.html);
        put("text/markdown", &self.markdown);
        put("image/svg+xml", &self.svg);
        put("image/png", &self.png);
        put("image/jpeg", &self.jpeg);
        put("application/pdf", &self.pdf);
        put("text/latex", &self.latex);
        put("application/javascript", &self.javascript);
        if let Some(j) = &self.json {
            m.insert("application/json".into(), j.clone());
        }
        if let Some(d) = &self.data {
            for (k, v) in d {
                m.insert(k.clone(), v.clone());
            }
        }
        m
    }

    /// Approximate size in bytes (for the per-run cap).
    pub fn size(&self) -> usize {
        self.to_bundle()
            .values()
            .map(|v| match v {
                Value::String(s) => s.len(),
                v => v.to_string().len(),
            })
            .sum()
    }
}

/// A file a run created or changed in the workspace, kept after the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Artifact {
    pub id: String,
    pub context_id: String,
    pub mime_type: String,
    /// Path relative to `/workspace`.
    pub name: String,
    pub size_bytes: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    pub created_at: String,
    pub execution_count: Option<u64>,
    pub expires_at: String,
    /// Signed; shows the file inline (text, images, PDF) until `expires_at`.
    pub preview_url: String,
    /// Signed; downloads the file without other credentials until `expires_at`.
    pub download_url: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Map<String, Value>,
}

/// Text a run wrote, in the chunks it was written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Logs {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

/// The exception a run's code raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunError {
    pub name: String,
    pub value: String,
    /// The traceback as text (terminal colour codes removed).
    pub traceback: String,
}

/// What a run produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Execution {
    pub results: Vec<ResultItem>,
    pub artifacts: Vec<Artifact>,
    pub logs: Logs,
    pub error: Option<RunError>,
    pub execution_count: Option<u64>,
}

/// A code run (`GET /v1/sandboxes/{id}/code/runs/{run_id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CodeRun {
    pub id: String,
    pub sandbox_id: String,
    pub context_id: String,
    /// Canonical language id of the context.
    pub language: String,
    pub status: RunStatus,
    pub timeout_secs: u64,
    pub created_at: String,
    /// When the run's record (and its results) will be deleted.
    pub expires_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub cancel_requested_at: Option<String>,
    pub execution: Execution,
    pub failure_reason: Option<String>,
}

/// Something a run did, as it happened (for streaming).
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Status(RunStatus),
    Stdout(String),
    Stderr(String),
    Result(Box<ResultItem>),
    ExecutionCount(u64),
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
    /// The run ended (after its last output); wall time in milliseconds.
    Complete {
        execution_time_ms: u64,
    },
}

/// Removes terminal escape sequences (IPython colours its tracebacks).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                chars.next();
                // OSC: up to BEL or ESC \.
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' {
                        chars.next();
                        break;
                    }
                }
            }
            Some(_) => {
                chars.next();
            }
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_map_to_named_fields_and_back() {
        let b: Map<String, Value> = serde_json::from_str(
            r#"{"text/plain":"1","text/html":"<b>1</b>","image/png":"iVBO\nRw==\n",
                "application/json":{"a":1},"application/vnd.custom+json":{"x":true}}"#,
        )
        .unwrap();
        let r = ResultItem::from_bundle(&b, true);
        assert_eq!(r.text.as_deref(), Some("1"));
        assert_eq!(r.html.as_deref(), Some("<b>1</b>"));
        assert_eq!(r.png.as_deref(), Some("iVBORw=="));
        assert_eq!(r.json, Some(serde_json::json!({"a": 1})));
        assert!(r.is_main_result);
        assert_eq!(
            r.data.as_ref().unwrap()["application/vnd.custom+json"],
            serde_json::json!({"x": true})
        );
        let back = r.to_bundle();
        assert_eq!(back["text/plain"], "1");
        assert_eq!(back["image/png"], "iVBORw==");
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("svg").is_none(), "absent types are left out: {v}");
        assert_eq!(v["is_main_result"], true);
    }

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(
            strip_ansi("\u{1b}[0;31mNameError\u{1b}[0m: x \u{1b}]0;title\u{7}done"),
            "NameError: x done"
        );
        assert_eq!(strip_ansi("plain"), "plain");
        assert_eq!(strip_ansi("trailing \u{1b}"), "trailing ");
    }

    #[test]
    fn statuses() {
        assert!(RunStatus::Cancelled.is_final());
        assert!(!RunStatus::Queued.is_final());
        assert_eq!(
            serde_json::to_value(RunStatus::Succeeded).unwrap(),
            "succeeded"
        );
    }
}
