//! Code runs in a sandbox (`/v1/sandboxes/{id}/code/runs…`) and artifacts, with native shapes
//! and errors; and the event stream of a run, shared with execd's `POST /code`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use runcell_service::PageRequest;
use runcell_service::Service;
use runcell_service::model::{Artifact, CodeRun, Run, RunEvent, RunStatus};
use runcell_service::sandboxes::{CodeRunRequest, RunList};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::request::ApiJson;
use crate::request::{ApiQuery, host, wants_stream};
use crate::sse::{self, Events, Feed};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RunQuery {
    /// Answer when the run has finished (200) instead of at once (202).
    wait: Option<bool>,
    /// Stream the run as server-sent events.
    stream: Option<bool>,
}

/// Runs code in a context of the sandbox.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code/runs", tag = "code runs",
    params(("id" = String, Path), RunQuery), request_body = CodeRunRequest,
    responses((status = 202, description = "Queued", body = CodeRun),
        (status = 200, description = "Finished (`wait=true`) or an event stream (`stream=true`)", body = CodeRun),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn create_run(
    State(state): State<AppState>,
    Caller(cred): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RunQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "INVALID_REQUEST",
            "the request body must be a JSON object with `code`",
        ));
    }
    let req: CodeRunRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request("INVALID_REQUEST", format!("invalid request: {e}")))?;
    let run = state.svc.create_run(&live, req).await?;
    let base = state.svc.base_url(host(&headers));
    if wants_stream(q.stream, &headers) {
        return Ok(run_stream(state.svc, run, Mode::Native, base));
    }
    if q.wait == Some(true) {
        run.wait().await;
        return Ok(Json(state.svc.run_document(&run, &base)).into_response());
    }
    Ok((StatusCode::ACCEPTED, Json(run.snapshot())).into_response())
}

/// A code run.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/code/runs/{run_id}", tag = "code runs",
    params(("id" = String, Path), ("run_id" = String, Path)),
    responses((status = 200, body = CodeRun), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_run(
    State(state): State<AppState>,
    Caller(cred): Caller,
    Path((id, run_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<CodeRun>, ApiError> {
    let live = state.svc.sandbox_lifecycle(&cred, &id).await?;
    let base = state.svc.base_url(host(&headers));
    Ok(Json(state.svc.code_run(&live, &run_id, &base).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// The sandbox's code runs, newest first.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/code/runs", tag = "code runs",
    params(("id" = String, Path), PageQuery),
    responses((status = 200, body = RunList), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_runs(
    State(state): State<AppState>,
    Caller(cred): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
    headers: HeaderMap,
) -> Result<Json<RunList>, ApiError> {
    let live = state.svc.sandbox_lifecycle(&cred, &id).await?;
    let page = PageRequest {
        limit: q.limit,
        cursor: q.cursor,
    };
    let base = state.svc.base_url(host(&headers));
    Ok(Json(state.svc.list_runs(&live, &page, &base).await?))
}

/// Cancels a run: a queued one never starts; a running one is interrupted (the context stays
/// usable). Answers once it has stopped.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code/runs/{run_id}/cancel", tag = "code runs",
    params(("id" = String, Path), ("run_id" = String, Path)),
    responses((status = 200, body = CodeRun), (status = 404, body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn cancel_run(
    State(state): State<AppState>,
    Caller(cred): Caller,
    Path((id, run_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<CodeRun>, ApiError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let base = state.svc.base_url(host(&headers));
    Ok(Json(state.svc.cancel_run(&live, &run_id, &base).await?))
}

// --- artifacts -------------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ArtifactListQuery {
    /// Only the artifacts of this run.
    run_id: Option<String>,
}

/// Artifacts of a sandbox.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ArtifactList {
    pub artifacts: Vec<Artifact>,
}

/// The sandbox's artifacts (with fresh signed links).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/artifacts", tag = "code runs",
    params(("id" = String, Path), ArtifactListQuery),
    responses((status = 200, body = ArtifactList), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_artifacts(
    State(state): State<AppState>,
    Caller(cred): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ArtifactListQuery>,
    headers: HeaderMap,
) -> Result<Json<ArtifactList>, ApiError> {
    let live = state.svc.sandbox_lifecycle(&cred, &id).await?;
    let base = state.svc.base_url(host(&headers));
    let artifacts = state
        .svc
        .list_artifacts(&live, q.run_id.as_deref(), &base)
        .await?;
    Ok(Json(ArtifactList { artifacts }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LinkQuery {
    expires: Option<String>,
    signature: Option<String>,
}

/// Downloads an artifact through a signed link (no other credentials).
#[utoipa::path(get, path = "/v1/artifacts/{artifact_id}/download", tag = "code runs",
    params(("artifact_id" = String, Path), LinkQuery),
    responses((status = 200, description = "The file"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn download_artifact(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LinkQuery>,
) -> Result<Response, ApiError> {
    serve_artifact(&state, &id, &q, false).await
}

/// Shows an artifact inline through a signed link.
#[utoipa::path(get, path = "/v1/artifacts/{artifact_id}/preview", tag = "code runs",
    params(("artifact_id" = String, Path), LinkQuery),
    responses((status = 200, description = "The file, inline"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn preview_artifact(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LinkQuery>,
) -> Result<Response, ApiError> {
    serve_artifact(&state, &id, &q, true).await
}

async fn serve_artifact(
    state: &AppState,
    id: &str,
    q: &LinkQuery,
    inline: bool,
) -> Result<Response, ApiError> {
    let a = state
        .svc
        .artifact_content(id, q.expires.as_deref(), q.signature.as_deref())
        .await?;
    let mime = a.mime_type.as_str();
    // Previews of markup keep their type but cannot run script on our origin; every other
    // text is shown as plain text.
    let content_type = if !inline {
        "application/octet-stream".to_string()
    } else if mime.starts_with("image/") || mime == "application/pdf" || mime == "text/html" {
        mime.to_string()
    } else if mime.starts_with("text/") || mime == "application/json" {
        "text/plain; charset=utf-8".to_string()
    } else {
        "application/octet-stream".to_string()
    };
    let file_name = a.file_name;
    let mut resp = Response::new(Body::from(a.bytes));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    let disposition = if inline {
        format!("inline; filename=\"{file_name}\"")
    } else {
        format!("attachment; filename=\"{file_name}\"")
    };
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(resp)
}

// --- the event stream of a run ---------------------------------------------------------------

/// Which API a run's stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `/code/runs?stream=true`: status events, and `execution_complete` with the run at the end.
    Native,
    /// execd's `POST /code`: `error` ends a failed run, `execution_complete` a successful one.
    Execd,
}

/// Cancels the run when the client goes away before it ended.
struct CancelOnDrop(Arc<Run>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.0.is_final() {
            self.0.cancel();
        }
    }
}

/// A run as server-sent events: its history so far, then its events as they happen.
pub fn run_stream(svc: Arc<Service>, run: Arc<Run>, mode: Mode, base: String) -> Response {
    let native = mode == Mode::Native;
    let (history, rx) = run.subscribe();
    let mut events = Events::default();
    events.push(json!({"type": "init", "text": run.id()}));
    if native {
        events.push(json!({"type": "status", "text": "queued"}));
    }
    // execd sends a failed run's error last, after its final status.
    let mut pending_error: Option<Value> = None;
    let r = Arc::clone(&run);
    sse::respond(Feed {
        events,
        backlog: history,
        rx,
        ping_every: Duration::from_secs(if native { 5 } else { 3 }),
        ping: json!({"type": "ping", "text": "pong"}),
        guard: CancelOnDrop(run),
        translate: move |ev: RunEvent, out: &mut Events| match ev {
            RunEvent::Status(s) => {
                if native {
                    out.push(json!({"type": "status", "text": s.as_str()}));
                }
            }
            RunEvent::Stdout(t) => out.push(json!({"type": "stdout", "text": t})),
            RunEvent::Stderr(t) => out.push(json!({"type": "stderr", "text": t})),
            RunEvent::ExecutionCount(n) => {
                out.push(json!({"type": "execution_count", "execution_count": n}))
            }
            RunEvent::Result(res) => {
                let mut bundle = res.to_bundle();
                if let Some(t) = bundle.remove("text/plain") {
                    bundle.insert("text".into(), t);
                }
                out.push(json!({
                    "type": "result",
                    "results": bundle,
                    "is_main_result": res.is_main_result,
                }));
            }
            RunEvent::Error {
                ename,
                evalue,
                traceback,
            } => {
                let e = json!({
                    "type": "error",
                    "error": {"ename": ename, "evalue": evalue, "traceback": traceback},
                });
                if native {
                    out.push(e);
                } else {
                    // execd sends the error last; it comes with the final status below.
                    pending_error = Some(e);
                }
            }
            RunEvent::Complete { execution_time_ms } => {
                let doc = r.snapshot();
                if native {
                    let doc = svc.run_document(&r, &base);
                    out.push(json!({
                        "type": "execution_complete",
                        "execution_time": execution_time_ms,
                        "run": doc,
                    }));
                } else if doc.status == RunStatus::Succeeded {
                    out.push(json!({
                        "type": "execution_complete",
                        "execution_time": execution_time_ms,
                    }));
                } else {
                    out.push(json!({"type": "status", "text": "error"}));
                    out.push(execd_error(&doc, pending_error.take()));
                }
                out.done = true;
            }
        },
    })
}

/// The error event that ends a failed run in execd's stream: a cancelled or timed-out run
/// says so (the kernel's own error is its KeyboardInterrupt); otherwise the code's error, if
/// it raised one.
fn execd_error(doc: &CodeRun, raised: Option<Value>) -> Value {
    let timeout = doc
        .failure_reason
        .as_deref()
        .is_some_and(|r| r.starts_with("timeout"));
    let named = |ename: &str| {
        json!({
            "type": "error",
            "error": {
                "ename": ename,
                "evalue": doc.failure_reason.clone().unwrap_or_default(),
                "traceback": [],
            },
        })
    };
    match (doc.status, timeout, raised) {
        (RunStatus::Cancelled, _, _) => named("ContextCancelled"),
        (_, true, _) => named("TimeoutError"),
        (_, false, Some(e)) => e,
        (_, false, None) => named("RuntimeError"),
    }
}
