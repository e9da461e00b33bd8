//! A sandbox's entrypoint: the program a client asks to have running in it (OpenSandbox's
//! SDKs always send one, `tail -f /dev/null` by default). Every sandbox has the server's one
//! root file system, not an image of the client's choosing, so the program may not exist
//! there: it is looked for with `command -v` once the sandbox is up, started as a background
//! command when found (its output and exit code are the command's, through the commands
//! API), and only recorded when not.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use runcell_sandbox::{CommandSpec, Sandbox};

use crate::{Error, Result};

/// At most this many words, and this many bytes together.
const MAX_WORDS: usize = 256;
const MAX_BYTES: usize = 64 << 10;

/// What became of a sandbox's entrypoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EntrypointState {
    /// Not looked for yet.
    Starting,
    /// Running (or ran) as the background command `command_id`.
    Started,
    /// Its program is not in the sandbox: recorded, not run.
    NotFound,
    /// It could not be started (the sandbox refused another command).
    Failed,
    /// The sandbox has ended.
    Ended,
}

/// A sandbox's entrypoint as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntrypointObject {
    pub argv: Vec<String>,
    pub state: EntrypointState,
    /// The background command running it (its status and logs are the commands API's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
}

/// The entrypoint of a live sandbox.
#[derive(Debug, Clone)]
pub(crate) struct Entrypoint {
    pub(crate) state: EntrypointState,
    pub(crate) command_id: Option<String>,
}

/// Checks a requested entrypoint: absent, null or an empty list is none; otherwise a list of
/// strings whose first names a program.
pub(crate) fn parse(v: Option<&Value>) -> Result<Vec<String>> {
    let bad = |detail: String| Err(Error::invalid("INVALID_REQUEST", detail));
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return bad(format!(
                "entrypoint must be a list of strings (a program and its arguments), got {other}"
            ));
        }
    };
    if items.len() > MAX_WORDS {
        return bad(format!("entrypoint has more than {MAX_WORDS} words"));
    }
    let mut argv = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(s) = item.as_str() else {
            return bad(format!("entrypoint[{i}] must be a string, got {item}"));
        };
        if s.contains('\0') {
            return bad(format!("entrypoint[{i}] must not contain NUL bytes"));
        }
        argv.push(s.to_string());
    }
    if argv.iter().map(|s| s.len() + 1).sum::<usize>() > MAX_BYTES {
        return bad("entrypoint is larger than 64 KiB".into());
    }
    if argv.first().is_some_and(|p| p.trim().is_empty()) {
        return bad("entrypoint[0] must name a program".into());
    }
    Ok(argv)
}

/// Checks a requested image name: a non-empty string of at most 1024 printable characters.
pub(crate) fn parse_image(v: Option<&Value>) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if !s.trim().is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.clone()))
        }
        Some(other) => Err(Error::invalid(
            "INVALID_REQUEST",
            format!("image must be an image name such as \"python:3.11\", got {other}"),
        )),
    }
}

/// `s` quoted for `bash -c`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Looks for the entrypoint's program in the sandbox and starts it as a background command
/// when it is there.
pub(crate) async fn start(sandbox: &Arc<Sandbox>, argv: &[String]) -> Entrypoint {
    let failed = Entrypoint {
        state: EntrypointState::Failed,
        command_id: None,
    };
    let Some(program) = argv.first() else {
        return failed;
    };
    let probe = CommandSpec {
        command: format!("command -v -- {} >/dev/null 2>&1", quote(program)),
        cwd: None,
        envs: Vec::new(),
        timeout: Some(Duration::from_secs(10)),
        background: false,
    };
    let found = match sandbox.start_command(probe) {
        Ok(c) => {
            c.wait().await;
            c.status().exit_code == Some(0)
        }
        Err(e) => {
            tracing::warn!(sandbox = %sandbox.id(), "looking for the entrypoint: {e}");
            return failed;
        }
    };
    if !found {
        return Entrypoint {
            state: EntrypointState::NotFound,
            command_id: None,
        };
    }
    let words: Vec<String> = argv.iter().map(|a| quote(a)).collect();
    let run = CommandSpec {
        command: format!("exec {}", words.join(" ")),
        cwd: None,
        envs: Vec::new(),
        timeout: None,
        background: true,
    };
    match sandbox.start_command(run) {
        Ok(c) => Entrypoint {
            state: EntrypointState::Started,
            command_id: Some(c.status().id.clone()),
        },
        Err(e) => {
            tracing::warn!(sandbox = %sandbox.id(), "starting the entrypoint: {e}");
            failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entrypoints_are_lists_of_strings() {
        assert!(parse(None).unwrap().is_empty());
        assert!(parse(Some(&json!([]))).unwrap().is_empty());
        assert_eq!(
            parse(Some(&json!(["tail", "-f", "/dev/null"]))).unwrap(),
            ["tail", "-f", "/dev/null"]
        );
        for bad in [
            json!("tail -f"),
            json!([1]),
            json!(["a\u{0}b"]),
            json!([" "]),
            json!(vec!["x"; 300]),
        ] {
            let e = parse(Some(&bad)).unwrap_err();
            assert_eq!(e.code, "INVALID_REQUEST", "{bad}");
            assert!(e.detail.starts_with("entrypoint"), "{}", e.detail);
        }
    }

    #[test]
    fn images_are_names() {
        assert_eq!(
            parse_image(Some(&json!("python:3.11"))).unwrap().as_deref(),
            Some("python:3.11")
        );
        assert_eq!(parse_image(None).unwrap(), None);
        for bad in [json!(""), json!({"uri": "x"}), json!("a\nb")] {
            assert!(parse_image(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn words_are_quoted_for_bash() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
