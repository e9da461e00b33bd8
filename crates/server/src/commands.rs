//! execd's shell commands (`/command`, foreground streamed or background with a log read by
//! cursor) and bash sessions (`/session`), with execd's error shape.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use runcell_service::model::{Command, CommandEvent};
use runcell_service::sandboxes::{CommandRequest, parse_env};

use crate::AppState;
use crate::execd::{
    ExecdCaller, ExecdError, ExecdErrorBody, ExecdJson, ExecdQuery, IdQuery, invalid_body,
    optional_body, string_field,
};
use crate::sse::{self, Events, Feed};

/// How a command stream presents itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommandMode {
    /// `POST /command`: `init` carries the command id.
    Command,
    /// `POST /session/{id}/run`: `init` carries the session id.
    Session,
}

/// Interrupts the command when a foreground stream's client goes away.
struct InterruptOnDrop(Arc<Command>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if self.0.is_running() && !self.0.background {
            // `interrupt` schedules the SIGKILL on the runtime; a dropped stream runs on it.
            self.0.interrupt();
        }
    }
}

/// A command as execd's events (numbered by `eid`): its output lines, then
/// `execution_complete` or `error`. A background command's stream ends at once (its output
/// goes to its log).
fn command_stream(cmd: Arc<Command>, init: String, mode: CommandMode) -> Response {
    let mut events = Events::default();
    events.push(json!({"type": "init", "text": init}));
    let (backlog, rx) = if cmd.background {
        let ms = cmd
            .started_at
            .elapsed()
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        events.push(json!({"type": "execution_complete", "execution_time": ms}));
        events.done = true;
        (Vec::new(), tokio::sync::mpsc::unbounded_channel().1)
    } else {
        cmd.subscribe()
    };
    let mut eid = 0u64;
    sse::respond(Feed {
        events,
        backlog,
        rx,
        ping_every: Duration::from_secs(3),
        ping: json!({"type": "ping", "text": "pong"}),
        guard: InterruptOnDrop(cmd),
        translate: move |ev: CommandEvent, out: &mut Events| {
            let mut v = match ev {
                CommandEvent::Stdout(t) => json!({"type": "stdout", "text": t}),
                CommandEvent::Stderr(t) => json!({"type": "stderr", "text": t}),
                CommandEvent::Exit {
                    code: 0,
                    execution_time_ms,
                    ..
                } => {
                    out.done = true;
                    json!({"type": "execution_complete", "execution_time": execution_time_ms})
                }
                CommandEvent::Exit { code, error, .. } => {
                    out.done = true;
                    let trace = match mode {
                        CommandMode::Session if code >= 0 => {
                            format!("command exited with code {code}")
                        }
                        _ => error.unwrap_or_else(|| format!("exit status {code}")),
                    };
                    json!({
                        "type": "error",
                        "error": {"ename": "CommandExecError", "evalue": code.to_string(), "traceback": [trace]},
                    })
                }
            };
            eid += 1;
            v["eid"] = json!(eid);
            out.push(v);
        },
    })
}

/// A timeout in milliseconds (0 or absent: none).
fn timeout_ms(obj: &serde_json::Map<String, Value>) -> Result<Option<Duration>, ExecdError> {
    match obj.get("timeout") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(0) => Ok(None),
            Some(ms) => Ok(Some(Duration::from_millis(ms))),
            None => Err(invalid_body(format!(
                "timeout must be a whole number of milliseconds, got {v}"
            ))),
        },
    }
}

/// The `command` field: a non-empty string without NUL bytes.
fn command_field(obj: &serde_json::Map<String, Value>) -> Result<String, ExecdError> {
    match string_field(obj, "command")? {
        Some(c) if !c.trim().is_empty() && !c.contains('\0') => Ok(c),
        _ => Err(invalid_body(
            "command is required: a non-empty string without NUL bytes",
        )),
    }
}

/// A shell word that is exactly `s` (single-quoted).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The command of a `/command` body: `command` (shell text) or `argv` (an executable and
/// its literal arguments, not shell-expanded; run as `exec -- 'argv0' 'arg1' …`), exactly one.
fn command_or_argv(obj: &serde_json::Map<String, Value>) -> Result<String, ExecdError> {
    let argv = match obj.get("argv") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let args = items
                .iter()
                .map(|v| match v {
                    Value::String(s) if !s.contains('\0') => Ok(s.as_str()),
                    _ => Err(invalid_body(
                        "argv must be a list of strings without NUL bytes",
                    )),
                })
                .collect::<Result<Vec<&str>, ExecdError>>()?;
            match args.first() {
                Some(a) if !a.is_empty() => Some(args),
                _ => return Err(invalid_body("argv needs a non-empty executable first")),
            }
        }
        Some(_) => return Err(invalid_body("argv must be a list of strings")),
    };
    match (argv, obj.get("command").is_some_and(|c| !c.is_null())) {
        (Some(_), true) => Err(invalid_body(
            "give either command (shell text) or argv, not both",
        )),
        (Some(args), false) => {
            let words: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
            Ok(format!("exec -- {}", words.join(" ")))
        }
        (None, _) => command_field(obj),
    }
}

/// Runs a shell command in the sandbox (foreground: streamed; background: returns at once).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/command", tag = "execd",
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{\"command\" | \"argv\", \"cwd\"?, \"background\"?, \"timeout\"? (ms), \"envs\"?}`"),
    responses((status = 200, description = "Server-sent events"), (status = 400, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn run_command(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    ExecdJson(body): ExecdJson,
) -> Result<Response, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let Value::Object(obj) = body else {
        return Err(invalid_body(
            "the body must be a JSON object with `command`",
        ));
    };
    let command = command_or_argv(&obj)?;
    let background = match obj.get("background") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid_body("background must be true or false")),
    };
    let envs = parse_env(obj.get("envs"), "envs").map_err(|mut e| {
        e.code = "INVALID_REQUEST_BODY";
        ExecdError::from(e)
    })?;
    let req = CommandRequest {
        command,
        cwd: string_field(&obj, "cwd")?,
        envs,
        timeout: timeout_ms(&obj)?,
        background,
    };
    let cmd = state.svc.start_command(&live, req)?;
    let id = cmd.id.clone();
    Ok(command_stream(cmd, id, CommandMode::Command))
}

/// Interrupts a command (SIGTERM, then SIGKILL after 3 s); also takes a code run or context id.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/command", tag = "execd",
    params(("id" = String, Path), IdQuery),
    responses((status = 200), (status = 400, body = ExecdErrorBody), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn interrupt_command(
    state: State<AppState>,
    caller: ExecdCaller,
    path: Path<String>,
    q: ExecdQuery<IdQuery>,
) -> Result<StatusCode, ExecdError> {
    crate::execd::interrupt_code(state, caller, path, q).await
}

/// A command's status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandStatusObject {
    pub id: String,
    pub content: String,
    pub running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// The status of a command.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/command/status/{command_id}", tag = "execd",
    params(("id" = String, Path), ("command_id" = String, Path)),
    responses((status = 200, body = CommandStatusObject), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn command_status(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path((id, cmd)): Path<(String, String)>,
) -> Result<Json<CommandStatusObject>, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let s = state.svc.command(&live, &cmd)?.status();
    Ok(Json(CommandStatusObject {
        id: s.id,
        content: s.content,
        running: s.running,
        exit_code: s.exit_code,
        error: s.error,
        started_at: s.started_at,
        finished_at: s.finished_at,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CursorQuery {
    /// Byte offset from the previous answer's `EXECD-COMMANDS-TAIL-CURSOR`.
    cursor: Option<String>,
}

/// A command's combined output from a cursor on.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/command/{command_id}/logs", tag = "execd",
    params(("id" = String, Path), ("command_id" = String, Path), CursorQuery),
    responses((status = 200, description = "text/plain; header EXECD-COMMANDS-TAIL-CURSOR"),
        (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn command_logs(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path((id, cmd)): Path<(String, String)>,
    q: ExecdQuery<CursorQuery>,
) -> Result<Response, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let q = q.map_err(|e| invalid_body(e.body_text()))?;
    let c = state.svc.command(&live, &cmd)?;
    let cursor =
        q.0.cursor
            .as_deref()
            .and_then(|c| c.trim().parse::<u64>().ok())
            .unwrap_or(0);
    let (bytes, next) = c.logs(cursor);
    let mut r = Response::new(Body::from(bytes));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&next.to_string()) {
        r.headers_mut().insert("execd-commands-tail-cursor", v);
    }
    Ok(r)
}

// --- bash sessions ---------------------------------------------------------------------------

/// A new bash session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionObject {
    pub session_id: String,
}

/// Creates a bash session (its working directory and exported variables persist).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/session", tag = "execd",
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{\"cwd\"?}`"),
    responses((status = 200, body = SessionObject), (status = 400, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn create_session(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<SessionObject>, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let cwd = match optional_body(&body)? {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => string_field(&o, "cwd")?,
        Some(_) => return Err(invalid_body("the body must be a JSON object")),
    };
    let session_id = state.svc.create_session(&live, cwd.as_deref())?;
    Ok(Json(SessionObject { session_id }))
}

/// Runs a command in a bash session (streamed; standard error joins standard output).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/session/{session_id}/run", tag = "execd",
    params(("id" = String, Path), ("session_id" = String, Path)),
    request_body(content = Object, description = "`{\"command\", \"cwd\"?, \"timeout\"? (ms)}`"),
    responses((status = 200, description = "Server-sent events"), (status = 400, body = ExecdErrorBody),
        (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn run_in_session(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path((id, sid)): Path<(String, String)>,
    ExecdJson(body): ExecdJson,
) -> Result<Response, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let Value::Object(obj) = body else {
        return Err(invalid_body(
            "the body must be a JSON object with `command`",
        ));
    };
    let command = command_field(&obj)?;
    let cwd = string_field(&obj, "cwd")?;
    let cmd = state
        .svc
        .run_in_session(&live, &sid, &command, cwd.as_deref(), timeout_ms(&obj)?)
        .await?;
    Ok(command_stream(cmd, sid, CommandMode::Session))
}

/// Deletes a bash session.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/session/{session_id}", tag = "execd",
    params(("id" = String, Path), ("session_id" = String, Path)),
    responses((status = 200), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn delete_session(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path((id, sid)): Path<(String, String)>,
) -> Result<StatusCode, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    state.svc.delete_session(&live, &sid)?;
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => unreachable!("a test object"),
        }
    }

    #[test]
    fn argv_becomes_one_exec_of_literal_words() {
        let c = command_or_argv(&obj(
            json!({"argv": ["printf", "%s|", "a b", "it's", "$HOME"]}),
        ))
        .unwrap();
        assert_eq!(c, r#"exec -- 'printf' '%s|' 'a b' 'it'\''s' '$HOME'"#);
        let out = std::process::Command::new("bash")
            .args(["-c", &c])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b|it's|$HOME|");
    }

    #[test]
    fn command_or_argv_but_not_both_nor_neither() {
        assert_eq!(
            command_or_argv(&obj(json!({"command": "ls"}))).unwrap(),
            "ls"
        );
        for bad in [
            json!({}),
            json!({"command": "ls", "argv": ["ls"]}),
            json!({"argv": []}),
            json!({"argv": [""]}),
            json!({"argv": ["ls", 3]}),
            json!({"argv": ["ls", "a\0b"]}),
            json!({"argv": "ls"}),
        ] {
            assert!(command_or_argv(&obj(bad.clone())).is_err(), "{bad}");
        }
    }
}
