//! The HTTP routes of the Sandboxes section of API.md: lifecycle, code runs and artifacts
//! (native shapes, errors `{"detail","code"}`), and the OpenSandbox execd routes for contexts
//! and code under `/v1/sandboxes/{id}` (errors `{"code","message"}`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use runcell_sandbox::model::{Artifact, CodeRun, RunEvent, RunStatus};
use runcell_sandbox::{Context, Run, ids};
use runcell_store::SandboxStatus;

use crate::auth::{Tenant, hash_key, presented_key};
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::routes::ApiQuery;
use crate::sandboxes::{
    CreateSandbox, Cred, DELETED, Live, SandboxList, SandboxObject, parse_env, sandbox_error,
};
use crate::state::{AppState, now_ms};

const PING: Duration = Duration::from_secs(5);
const EXECD_PING: Duration = Duration::from_secs(3);

// --- credentials -----------------------------------------------------------------------------

/// The caller of a per-sandbox route: a tenant's API key, or a sandbox's access token in
/// `X-EXECD-ACCESS-TOKEN`.
pub struct Caller(pub Cred);

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", detail)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if presented_key(parts).is_some() {
            let t = Tenant::from_request_parts(parts, state).await?;
            return Ok(Caller(Cred::Tenant(t.0)));
        }
        match parts
            .headers
            .get("x-execd-access-token")
            .and_then(|v| v.to_str().ok())
        {
            Some(tok) if !tok.trim().is_empty() => Ok(Caller(Cred::Token(hash_key(tok.trim())))),
            _ => Err(unauthorized(
                "missing credentials: send the API key as `X-API-Key: <key>` or \
                 `Authorization: Bearer <key>`, or the sandbox's access token as \
                 `X-EXECD-ACCESS-TOKEN: <token>`",
            )),
        }
    }
}

/// The sandbox a per-sandbox route is about, with the rate limit charged to its owner.
pub(crate) async fn sandbox(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Arc<Live>, ApiError> {
    let live = match state.sandboxes.resolve(&caller.0, id).await {
        Ok(l) => l,
        Err(e) if matches!(caller.0, Cred::Token(_)) && e.code == "SANDBOX_NOT_FOUND" => {
            // A token that opens nothing is a credential problem.
            return Err(unauthorized(
                "invalid access token: X-EXECD-ACCESS-TOKEN does not grant this sandbox",
            ));
        }
        Err(e) => return Err(e),
    };
    if matches!(caller.0, Cred::Token(_)) {
        Tenant(live.tenant.clone()).spend(state, 1)?;
    }
    Ok(live)
}

/// A JSON body that may be absent (empty).
fn optional_json(bytes: &[u8]) -> Result<Option<Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    crate::error::parse_json(bytes).map(Some)
}

fn host(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
}

// --- lifecycle -------------------------------------------------------------------------------

/// Creates a sandbox.
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = CreateSandbox,
    responses((status = 201, body = SandboxObject), (status = 400, body = ErrorBody),
        (status = 429, description = "Too many sandboxes", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn create_sandbox(
    State(state): State<AppState>,
    tenant: Tenant,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: CreateSandbox = match optional_json(&body)? {
        None => CreateSandbox::default(),
        Some(v) => {
            if !v.is_object() {
                return Err(ApiError::bad_request(
                    "INVALID_REQUEST",
                    "the request body must be a JSON object",
                ));
            }
            serde_json::from_value(v).map_err(|e| {
                ApiError::bad_request("INVALID_REQUEST", format!("invalid request: {e}"))
            })?
        }
    };
    let o = state.sandboxes.create(&tenant.0, req).await?;
    Ok((StatusCode::CREATED, Json(o)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SandboxListQuery {
    /// `running` (default), `terminated` or `all`.
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn cursor(c: Option<&str>) -> Result<Option<i64>, ApiError> {
    match c {
        None | Some("") => Ok(None),
        Some(c) => c.parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request("INVALID_QUERY", "cursor must be a next_cursor value")
        }),
    }
}

fn page_limit(l: Option<u32>) -> Result<u32, ApiError> {
    let limit = l.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "INVALID_QUERY",
            "limit must be between 1 and 100",
        ));
    }
    Ok(limit)
}

/// The caller's sandboxes, newest first.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", params(SandboxListQuery),
    responses((status = 200, body = SandboxList), (status = 400, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_sandboxes(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(q): ApiQuery<SandboxListQuery>,
) -> Result<Json<SandboxList>, ApiError> {
    let status = match q.status.as_deref() {
        None | Some("") | Some("running") => Some(SandboxStatus::Running),
        Some("terminated") => Some(SandboxStatus::Terminated),
        Some("all") => None,
        Some(s) => {
            return Err(ApiError::bad_request(
                "INVALID_QUERY",
                format!("status must be running, terminated or all, not {s:?}"),
            ));
        }
    };
    let limit = page_limit(q.limit)?;
    let before = cursor(q.cursor.as_deref())?;
    Ok(Json(
        state
            .sandboxes
            .list(&tenant.0, status, before, limit)
            .await?,
    ))
}

/// A sandbox (404 with a reason once it has ended).
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 200, body = SandboxObject), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SandboxObject>, ApiError> {
    let live = sandbox(&state, &caller, &id).await?;
    Ok(Json(live.object()))
}

/// Deletes a sandbox: every process in it dies and its workspace is removed.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn delete_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let live = sandbox(&state, &caller, &id).await?;
    state.sandboxes.end(&live, DELETED).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RenewRequest {
    /// The sandbox ends this many seconds from now.
    #[schema(value_type = u64)]
    timeout_secs: Value,
}

/// Renews a sandbox's lifetime.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/timeout", tag = "sandboxes",
    params(("id" = String, Path)), request_body = RenewRequest,
    responses((status = 200, body = SandboxObject), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn renew_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> Result<Json<SandboxObject>, ApiError> {
    let live = sandbox(&state, &caller, &id).await?;
    let t = req.timeout_secs;
    Ok(Json(state.sandboxes.renew(&live, &t).await?))
}

// --- code runs -------------------------------------------------------------------------------

/// `POST /v1/sandboxes/{id}/code/runs`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CodeRunRequest {
    pub code: Option<String>,
    /// A context of the sandbox; without it, the sandbox's default context of `language`.
    pub context_id: Option<String>,
    /// Default `python`.
    pub language: Option<String>,
    #[schema(value_type = Option<u64>)]
    pub timeout_secs: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub env: Option<Value>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RunQuery {
    /// Answer when the run has finished (200) instead of at once (202).
    wait: Option<bool>,
    /// Stream the run as server-sent events.
    stream: Option<bool>,
}

fn wants_stream(stream: Option<bool>, headers: &HeaderMap) -> bool {
    stream == Some(true)
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"))
}

/// The context a run goes to.
async fn context_for(
    live: &Live,
    context_id: Option<&str>,
    language: Option<&str>,
    default_language: &str,
) -> Result<Arc<Context>, ApiError> {
    match context_id.filter(|s| !s.is_empty()) {
        Some(id) => {
            let ctx = live
                .sandbox
                .context(id)
                .ok_or_else(|| context_not_found(id))?;
            if let Some(lang) = language.filter(|l| !l.trim().is_empty()) {
                let canonical = live
                    .sandbox
                    .engine()
                    .registry()
                    .resolve(lang.trim())
                    .map(|l| l.id.clone());
                if canonical.as_deref() != Some(ctx.language.as_str()) {
                    return Err(ApiError::bad_request(
                        "INVALID_REQUEST",
                        format!("context {id} is a {} context, not {lang}", ctx.language),
                    ));
                }
            }
            Ok(ctx)
        }
        None => {
            let lang = language
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .unwrap_or(default_language);
            live.sandbox
                .default_context(lang)
                .await
                .map_err(sandbox_error)
        }
    }
}

fn context_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "CONTEXT_NOT_FOUND",
        format!("context {id} not found in this sandbox"),
    )
}

fn run_timeout(state: &AppState, v: Option<&Value>) -> Result<u64, ApiError> {
    let c = &state.sandboxes.cfg;
    match v {
        None | Some(Value::Null) => Ok(c.default_run_timeout_secs),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=c.max_run_timeout_secs).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "INVALID_REQUEST",
                format!(
                    "timeout_secs must be a whole number from 1 to {}, got {v}",
                    c.max_run_timeout_secs
                ),
            )),
        },
    }
}

fn check_code(code: Option<String>) -> Result<String, ApiError> {
    match code {
        Some(c) if !c.trim().is_empty() => {
            if c.contains('\0') {
                return Err(ApiError::bad_request(
                    "INVALID_REQUEST",
                    "code must not contain NUL bytes",
                ));
            }
            Ok(c)
        }
        _ => Err(ApiError::bad_request(
            "INVALID_REQUEST",
            "code is required and must not be empty",
        )),
    }
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
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RunQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let live = sandbox(&state, &caller, &id).await?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "INVALID_REQUEST",
            "the request body must be a JSON object with `code`",
        ));
    }
    let req: CodeRunRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request("INVALID_REQUEST", format!("invalid request: {e}")))?;
    let code = check_code(req.code)?;
    let timeout = run_timeout(&state, req.timeout_secs.as_ref())?;
    let env = parse_env(req.env.as_ref(), "env")?;
    let ctx = context_for(
        &live,
        req.context_id.as_deref(),
        req.language.as_deref(),
        runcell_sandbox::DEFAULT_CONTEXT_LANGUAGE,
    )
    .await?;
    let stream = wants_stream(q.stream, &headers);
    let run = state
        .sandboxes
        .start_run(&live, &ctx, code, env, timeout)
        .await?;
    let base = state.sandboxes.base_url(host(&headers));
    if stream {
        return Ok(run_stream(state, run, Mode::Native, base));
    }
    if q.wait == Some(true) {
        run.wait().await;
        return Ok(Json(state.sandboxes.with_links(run.snapshot(), &base)).into_response());
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
    caller: Caller,
    Path((id, run_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<CodeRun>, ApiError> {
    let live = sandbox(&state, &caller, &id).await?;
    let base = state.sandboxes.base_url(host(&headers));
    state
        .sandboxes
        .get_run(&live, &run_id, &base)
        .await?
        .map(Json)
        .ok_or_else(|| run_not_found(&run_id))
}

fn run_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "RUN_NOT_FOUND",
        format!("code run {id} not found in this sandbox"),
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// The runs of a sandbox.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunList {
    pub runs: Vec<CodeRun>,
    pub next_cursor: Option<String>,
}

/// The sandbox's code runs, newest first.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/code/runs", tag = "code runs",
    params(("id" = String, Path), PageQuery),
    responses((status = 200, body = RunList), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
    headers: HeaderMap,
) -> Result<Json<RunList>, ApiError> {
    let live = sandbox(&state, &caller, &id).await?;
    let limit = page_limit(q.limit)?;
    let before = cursor(q.cursor.as_deref())?;
    let base = state.sandboxes.base_url(host(&headers));
    let (runs, next_cursor) = state
        .sandboxes
        .list_runs(&live, before, limit, &base)
        .await?;
    Ok(Json(RunList { runs, next_cursor }))
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
    caller: Caller,
    Path((id, run_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<CodeRun>, ApiError> {
    let live = sandbox(&state, &caller, &id).await?;
    let base = state.sandboxes.base_url(host(&headers));
    let Some(run) = live.run(&run_id) else {
        return match state.sandboxes.get_run(&live, &run_id, &base).await? {
            Some(_) => Err(already_finished(&run_id)),
            None => Err(run_not_found(&run_id)),
        };
    };
    if !run.cancel() {
        return Err(already_finished(&run_id));
    }
    // The interrupt, or the kill after the grace period, ends it promptly.
    let _ = tokio::time::timeout(Duration::from_secs(10), run.wait()).await;
    Ok(Json(state.sandboxes.with_links(run.snapshot(), &base)))
}

fn already_finished(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "ALREADY_FINISHED",
        format!("code run {id} has already finished"),
    )
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
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ArtifactListQuery>,
    headers: HeaderMap,
) -> Result<Json<ArtifactList>, ApiError> {
    let live = sandbox(&state, &caller, &id).await?;
    let base = state.sandboxes.base_url(host(&headers));
    let now = now_ms();
    let rows = state
        .sandboxes
        .store()
        .list_artifacts(&live.tenant, live.id(), q.run_id.as_deref())
        .await?;
    let artifacts = rows
        .into_iter()
        .filter(|r| r.expires_at > now)
        .map(|r| {
            state.sandboxes.artifact_links(
                Artifact {
                    id: r.id,
                    context_id: r.context_id,
                    mime_type: r.mime_type,
                    name: r.name,
                    size_bytes: r.size_bytes.max(0) as u64,
                    sha256: r.sha256,
                    created_at: crate::sandboxes::ms_rfc3339(r.created_at),
                    execution_count: r.execution_count.map(|c| c.max(0) as u64),
                    expires_at: crate::sandboxes::ms_rfc3339(r.expires_at),
                    preview_url: String::new(),
                    download_url: String::new(),
                    metadata: serde_json::from_str(&r.metadata).unwrap_or_default(),
                },
                &base,
            )
        })
        .collect();
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
    let (Some(expires), Some(sig)) = (q.expires.as_deref(), q.signature.as_deref()) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "INVALID_SIGNATURE",
            "this artifact link is incomplete: it needs `expires` and `signature`",
        ));
    };
    let expires: i64 = expires.parse().map_err(|_| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "INVALID_SIGNATURE",
            "this artifact link is not valid (bad expiry)",
        )
    })?;
    if !ids::is_base32_id(id, "art_") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ARTIFACT_NOT_FOUND",
            "artifact not found",
        ));
    }
    state.sandboxes.verify(id, expires, sig)?;
    let row = state
        .sandboxes
        .store()
        .get_artifact_by_id(id)
        .await?
        .filter(|r| r.expires_at > now_ms())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "ARTIFACT_NOT_FOUND",
                "artifact not found (it may have expired)",
            )
        })?;
    let bytes = tokio::fs::read(state.sandboxes.blob(id))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "ARTIFACT_NOT_FOUND",
                "the artifact's content is gone (it expired)",
            )
        })?;
    let file_name = row.name.rsplit('/').next().unwrap_or("artifact").replace(
        |c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)),
        "_",
    );
    let mime = row.mime_type.as_str();
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
    let mut resp = Response::new(Body::from(bytes));
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

// --- event streams ---------------------------------------------------------------------------

/// Which API a stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `/code/runs?stream=true`: status events, and `execution_complete` with the run at the end.
    Native,
    /// execd's `POST /code`: `error` ends a failed run, `execution_complete` a successful one.
    Execd,
}

fn event(mut v: Value) -> Event {
    v["timestamp"] = json!(now_ms());
    Event::default().data(v.to_string())
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

struct RunStreamer {
    run: Arc<Run>,
    mode: Mode,
    base: String,
    state: AppState,
    backlog: std::collections::VecDeque<RunEvent>,
    rx: tokio::sync::mpsc::UnboundedReceiver<RunEvent>,
    ping: tokio::time::Interval,
    queued: std::collections::VecDeque<Event>,
    /// execd sends a failed run's error last, after its final status.
    pending_error: Option<Value>,
    done: bool,
    _guard: CancelOnDrop,
}

impl RunStreamer {
    fn translate(&mut self, ev: RunEvent) {
        let native = self.mode == Mode::Native;
        match ev {
            RunEvent::Status(s) => {
                if native {
                    self.queued
                        .push_back(event(json!({"type": "status", "text": s.as_str()})));
                }
            }
            RunEvent::Stdout(t) => self
                .queued
                .push_back(event(json!({"type": "stdout", "text": t}))),
            RunEvent::Stderr(t) => self
                .queued
                .push_back(event(json!({"type": "stderr", "text": t}))),
            RunEvent::ExecutionCount(n) => self.queued.push_back(event(
                json!({"type": "execution_count", "execution_count": n}),
            )),
            RunEvent::Result(r) => {
                let mut bundle = r.to_bundle();
                if let Some(t) = bundle.remove("text/plain") {
                    bundle.insert("text".into(), t);
                }
                self.queued.push_back(event(json!({
                    "type": "result",
                    "results": bundle,
                    "is_main_result": r.is_main_result,
                })));
            }
            RunEvent::Error {
                ename,
                evalue,
                traceback,
            } => {
                if !native {
                    // execd sends the error last; it comes with the final status below.
                    self.pending_error = Some(json!({
                        "type": "error",
                        "error": {"ename": ename, "evalue": evalue, "traceback": traceback},
                    }));
                } else {
                    self.queued.push_back(event(json!({
                        "type": "error",
                        "error": {"ename": ename, "evalue": evalue, "traceback": traceback},
                    })));
                }
            }
            RunEvent::Complete { execution_time_ms } => {
                let doc = self.run.snapshot();
                if native {
                    let doc = self.state.sandboxes.with_links(doc, &self.base);
                    self.queued.push_back(event(json!({
                        "type": "execution_complete",
                        "execution_time": execution_time_ms,
                        "run": doc,
                    })));
                } else if doc.status == RunStatus::Succeeded {
                    self.queued.push_back(event(json!({
                        "type": "execution_complete",
                        "execution_time": execution_time_ms,
                    })));
                } else {
                    // A cancelled or timed-out run says so (the kernel's own error is its
                    // KeyboardInterrupt); otherwise the code's error, if it raised one.
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
                    let err = match (doc.status, timeout, self.pending_error.take()) {
                        (RunStatus::Cancelled, _, _) => named("ContextCancelled"),
                        (_, true, _) => named("TimeoutError"),
                        (_, false, Some(e)) => e,
                        (_, false, None) => named("RuntimeError"),
                    };
                    self.queued
                        .push_back(event(json!({"type": "status", "text": "error"})));
                    self.queued.push_back(event(err));
                }
                self.done = true;
            }
        }
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queued.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            if let Some(ev) = self.backlog.pop_front() {
                self.translate(ev);
                continue;
            }
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(ev) => self.translate(ev),
                    None => self.done = true,
                },
                _ = self.ping.tick() => {
                    self.queued.push_back(event(json!({"type": "ping", "text": "pong"})));
                }
            }
        }
    }
}

impl RunStreamer {
    fn new(state: AppState, run: Arc<Run>, mode: Mode, base: String) -> RunStreamer {
        let (history, rx) = run.subscribe();
        let mut ping = tokio::time::interval(if mode == Mode::Native {
            PING
        } else {
            EXECD_PING
        });
        ping.reset();
        let mut queued = std::collections::VecDeque::new();
        queued.push_back(event(json!({"type": "init", "text": run.id()})));
        if mode == Mode::Native {
            queued.push_back(event(json!({"type": "status", "text": "queued"})));
        }
        RunStreamer {
            _guard: CancelOnDrop(Arc::clone(&run)),
            run,
            mode,
            base,
            state,
            backlog: history.into(),
            rx,
            ping,
            queued,
            pending_error: None,
            done: false,
        }
    }
}

fn run_stream(state: AppState, run: Arc<Run>, mode: Mode, base: String) -> Response {
    let st = RunStreamer::new(state, run, mode, base);
    sse(stream::unfold(st, |mut st| async move {
        st.next().await.map(|e| (Ok::<_, Infallible>(e), st))
    }))
}

// --- execd routes ----------------------------------------------------------------------------

/// An error in execd's shape: `{"code", "message"}`.
#[derive(Debug)]
pub struct ExecdError(pub ApiError);

impl From<ApiError> for ExecdError {
    fn from(e: ApiError) -> ExecdError {
        ExecdError(e)
    }
}

/// execd's error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExecdErrorBody {
    pub code: String,
    pub message: String,
}

impl IntoResponse for ExecdError {
    fn into_response(self) -> Response {
        let e = self.0;
        let mut r = (
            e.status,
            Json(ExecdErrorBody {
                code: e.code.to_string(),
                message: e.detail,
            }),
        )
            .into_response();
        if let Some(s) = e.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// [`Caller`] with execd's error shape.
pub struct ExecdCaller(pub Caller);

impl FromRequestParts<AppState> for ExecdCaller {
    type Rejection = ExecdError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ExecdError> {
        Ok(ExecdCaller(Caller::from_request_parts(parts, state).await?))
    }
}

/// A JSON body with execd's error shape (`INVALID_REQUEST_BODY`).
pub struct ExecdJson(pub Value);

impl<S: Send + Sync> axum::extract::FromRequest<S> for ExecdJson {
    type Rejection = ExecdError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ExecdError> {
        match ApiJson::<Value>::from_request(req, state).await {
            Ok(ApiJson(v)) => Ok(ExecdJson(v)),
            Err(mut e) => {
                if e.status == StatusCode::BAD_REQUEST {
                    e.code = "INVALID_REQUEST_BODY";
                }
                Err(ExecdError(e))
            }
        }
    }
}

fn invalid_body(detail: impl Into<String>) -> ExecdError {
    ExecdError(ApiError::bad_request("INVALID_REQUEST_BODY", detail))
}

fn missing_query(name: &str) -> ExecdError {
    ExecdError(ApiError::bad_request(
        "MISSING_QUERY",
        format!("missing query parameter '{name}'"),
    ))
}

/// execd's code context.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CodeContextObject {
    pub id: String,
    pub language: String,
}

/// Health of the sandbox's daemon routes.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/ping", tag = "execd",
    params(("id" = String, Path)),
    responses((status = 200, description = "The sandbox is running"), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn ping(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
) -> Result<StatusCode, ExecdError> {
    sandbox(&state, &caller, &id).await?;
    Ok(StatusCode::OK)
}

/// Creates a code context (a kernel) in the sandbox.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code/context", tag = "execd",
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{\"language\": \"python\"}`"),
    responses((status = 200, body = CodeContextObject), (status = 400, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn create_context(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<CodeContextObject>, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let body = optional_json(&body).map_err(|mut e| {
        e.code = "INVALID_REQUEST_BODY";
        ExecdError(e)
    })?;
    let language = match body {
        None => runcell_sandbox::DEFAULT_CONTEXT_LANGUAGE.to_string(),
        Some(Value::Object(o)) => match o.get("language") {
            None | Some(Value::Null) => runcell_sandbox::DEFAULT_CONTEXT_LANGUAGE.to_string(),
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(_) => return Err(invalid_body("language must be a non-empty string")),
        },
        Some(_) => return Err(invalid_body("the body must be a JSON object")),
    };
    let ctx = live
        .sandbox
        .create_context(&language)
        .await
        .map_err(sandbox_error)?;
    Ok(Json(CodeContextObject {
        id: ctx.id.clone(),
        language: ctx.language.clone(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LanguageQuery {
    language: Option<String>,
}

fn canonical(live: &Live, lang: &str) -> String {
    live.sandbox
        .engine()
        .registry()
        .resolve(lang.trim())
        .map(|l| l.id.clone())
        .unwrap_or_else(|| lang.trim().to_string())
}

/// The sandbox's code contexts (of one language, if given).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/code/contexts", tag = "execd",
    params(("id" = String, Path), LanguageQuery),
    responses((status = 200, body = Vec<CodeContextObject>)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn list_contexts(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    q: Result<axum::extract::Query<LanguageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<CodeContextObject>>, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let q = q.map_err(|e| invalid_body(e.body_text()))?;
    let want = q
        .language
        .as_deref()
        .filter(|l| !l.trim().is_empty())
        .map(|l| canonical(&live, l));
    Ok(Json(
        live.sandbox
            .contexts()
            .into_iter()
            .filter(|c| want.as_deref().is_none_or(|w| w == c.language))
            .map(|c| CodeContextObject {
                id: c.id.clone(),
                language: c.language.clone(),
            })
            .collect(),
    ))
}

/// Deletes every code context of a language.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/code/contexts", tag = "execd",
    params(("id" = String, Path), LanguageQuery),
    responses((status = 200), (status = 400, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn delete_contexts(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    q: Result<axum::extract::Query<LanguageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let q = q.map_err(|e| invalid_body(e.body_text()))?;
    let Some(lang) = q.0.language.filter(|l| !l.trim().is_empty()) else {
        return Err(missing_query("language"));
    };
    let lang = canonical(&live, &lang);
    for c in live.sandbox.contexts() {
        if c.language == lang {
            live.sandbox.delete_context(&c.id);
        }
    }
    Ok(StatusCode::OK)
}

/// A code context.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/code/contexts/{context_id}", tag = "execd",
    params(("id" = String, Path), ("context_id" = String, Path)),
    responses((status = 200, body = CodeContextObject), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn get_context(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path((id, ctx)): Path<(String, String)>,
) -> Result<Json<CodeContextObject>, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let c = live
        .sandbox
        .context(&ctx)
        .ok_or_else(|| context_not_found(&ctx))?;
    Ok(Json(CodeContextObject {
        id: c.id.clone(),
        language: c.language.clone(),
    }))
}

/// Deletes a code context (its kernel is killed).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/code/contexts/{context_id}", tag = "execd",
    params(("id" = String, Path), ("context_id" = String, Path)),
    responses((status = 200), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn delete_context(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path((id, ctx)): Path<(String, String)>,
) -> Result<StatusCode, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    if !live.sandbox.delete_context(&ctx) {
        return Err(context_not_found(&ctx).into());
    }
    Ok(StatusCode::OK)
}

/// Runs code in a context and streams it (execd's `POST /code`).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code", tag = "execd",
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{\"code\": \"…\", \"context\": {\"id\"?, \"language\"?}}`"),
    responses((status = 200, description = "Server-sent events"),
        (status = 400, body = ExecdErrorBody), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn run_code(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ExecdJson(body): ExecdJson,
) -> Result<Response, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let Value::Object(obj) = body else {
        return Err(invalid_body("the body must be a JSON object with `code`"));
    };
    let code = match obj.get("code") {
        Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
        _ => {
            return Err(invalid_body(
                "code is required and must be a non-empty string",
            ));
        }
    };
    if code.contains('\0') {
        return Err(invalid_body("code must not contain NUL bytes"));
    }
    let (ctx_id, language) = match obj.get("context") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Object(c)) => {
            let s = |k: &str| match c.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(invalid_body(format!("context.{k} must be a string"))),
            };
            (s("id")?, s("language")?)
        }
        Some(_) => return Err(invalid_body("context must be an object")),
    };
    // No language: a shell run, in the default bash context.
    let ctx = context_for(&live, ctx_id.as_deref(), language.as_deref(), "bash").await?;
    let timeout = state.sandboxes.cfg.default_run_timeout_secs;
    let run = state
        .sandboxes
        .start_run(&live, &ctx, code, Vec::new(), timeout)
        .await?;
    let base = state.sandboxes.base_url(host(&headers));
    Ok(run_stream(state, run, Mode::Execd, base))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct IdQuery {
    id: Option<String>,
}

/// Interrupts a run (by run id, or the current run of a context by context id).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/code", tag = "execd",
    params(("id" = String, Path), IdQuery),
    responses((status = 200), (status = 400, body = ExecdErrorBody), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn interrupt_code(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    q: Result<axum::extract::Query<IdQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let q = q.map_err(|e| invalid_body(e.body_text()))?;
    let Some(target) = q.0.id.filter(|s| !s.trim().is_empty()) else {
        return Err(missing_query("id"));
    };
    if let Some(run) = live.run(&target) {
        run.cancel();
        return Ok(StatusCode::OK);
    }
    if let Some(ctx) = live.sandbox.context(&target) {
        let running: Vec<_> = live
            .live_runs()
            .into_iter()
            .filter(|r| r.status() == RunStatus::Running && r.snapshot().context_id == ctx.id)
            .collect();
        if running.is_empty() {
            ctx.interrupt();
        }
        for r in running {
            r.cancel();
        }
        return Ok(StatusCode::OK);
    }
    if let Some(cmd) = live.sandbox.command(&target) {
        cmd.interrupt();
        return Ok(StatusCode::OK);
    }
    Err(ExecdError(ApiError::new(
        StatusCode::NOT_FOUND,
        "CONTEXT_NOT_FOUND",
        format!("no run, context or command {target} in this sandbox"),
    )))
}

// --- commands --------------------------------------------------------------------------------

/// How a command stream presents itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommandMode {
    /// `POST /command`: `init` carries the command id.
    Command,
    /// `POST /session/{id}/run`: `init` carries the session id.
    Session,
}

/// Interrupts the command when a foreground stream's client goes away.
struct InterruptOnDrop(Arc<runcell_sandbox::Command>);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if self.0.is_running() && !self.0.background {
            // `interrupt` schedules the SIGKILL on the runtime; a dropped stream runs on it.
            self.0.interrupt();
        }
    }
}

struct CommandStreamer {
    backlog: std::collections::VecDeque<runcell_sandbox::CommandEvent>,
    rx: tokio::sync::mpsc::UnboundedReceiver<runcell_sandbox::CommandEvent>,
    ping: tokio::time::Interval,
    queued: std::collections::VecDeque<Event>,
    eid: u64,
    mode: CommandMode,
    done: bool,
    _guard: InterruptOnDrop,
}

impl CommandStreamer {
    fn numbered(&mut self, mut v: Value) -> Event {
        self.eid += 1;
        v["eid"] = json!(self.eid);
        event(v)
    }

    fn translate(&mut self, ev: runcell_sandbox::CommandEvent) {
        use runcell_sandbox::CommandEvent as E;
        let e = match ev {
            E::Stdout(t) => self.numbered(json!({"type": "stdout", "text": t})),
            E::Stderr(t) => self.numbered(json!({"type": "stderr", "text": t})),
            E::Exit {
                code: 0,
                execution_time_ms,
                ..
            } => {
                self.done = true;
                self.numbered(
                    json!({"type": "execution_complete", "execution_time": execution_time_ms}),
                )
            }
            E::Exit { code, error, .. } => {
                self.done = true;
                let trace = match self.mode {
                    CommandMode::Session if code >= 0 => format!("command exited with code {code}"),
                    _ => error.unwrap_or_else(|| format!("exit status {code}")),
                };
                self.numbered(json!({
                    "type": "error",
                    "error": {"ename": "CommandExecError", "evalue": code.to_string(), "traceback": [trace]},
                }))
            }
        };
        self.queued.push_back(e);
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queued.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            if let Some(ev) = self.backlog.pop_front() {
                self.translate(ev);
                continue;
            }
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(ev) => self.translate(ev),
                    None => self.done = true,
                },
                _ = self.ping.tick() => {
                    self.queued.push_back(event(json!({"type": "ping", "text": "pong"})));
                }
            }
        }
    }
}

fn sse(
    s: impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    let mut r = Sse::new(s).into_response();
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn command_stream(cmd: Arc<runcell_sandbox::Command>, init: String, mode: CommandMode) -> Response {
    let mut queued = std::collections::VecDeque::new();
    queued.push_back(event(json!({"type": "init", "text": init})));
    let mut ping = tokio::time::interval(EXECD_PING);
    ping.reset();
    let st = if cmd.background {
        // Started: the stream ends at once; the output goes to the command's log.
        let ms = cmd
            .started_at
            .elapsed()
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        queued.push_back(event(
            json!({"type": "execution_complete", "execution_time": ms}),
        ));
        let (_, rx) = tokio::sync::mpsc::unbounded_channel();
        CommandStreamer {
            backlog: Default::default(),
            rx,
            ping,
            queued,
            eid: 0,
            mode,
            done: true,
            _guard: InterruptOnDrop(cmd),
        }
    } else {
        let (history, rx) = cmd.subscribe();
        CommandStreamer {
            backlog: history.into(),
            rx,
            ping,
            queued,
            eid: 0,
            mode,
            done: false,
            _guard: InterruptOnDrop(cmd),
        }
    };
    sse(stream::unfold(st, |mut st| async move {
        st.next().await.map(|e| (Ok::<_, Infallible>(e), st))
    }))
}

fn string_field(
    obj: &serde_json::Map<String, Value>,
    k: &str,
) -> Result<Option<String>, ExecdError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid_body(format!("{k} must be a string"))),
    }
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

/// Runs a shell command in the sandbox (foreground: streamed; background: returns at once).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/command", tag = "execd",
    params(("id" = String, Path)),
    request_body(content = Object, description = "`{\"command\", \"cwd\"?, \"background\"?, \"timeout\"? (ms), \"envs\"?}`"),
    responses((status = 200, description = "Server-sent events"), (status = 400, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn run_command(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    ExecdJson(body): ExecdJson,
) -> Result<Response, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let Value::Object(obj) = body else {
        return Err(invalid_body(
            "the body must be a JSON object with `command`",
        ));
    };
    let command = match string_field(&obj, "command")? {
        Some(c) if !c.trim().is_empty() && !c.contains('\0') => c,
        _ => {
            return Err(invalid_body(
                "command is required: a non-empty string without NUL bytes",
            ));
        }
    };
    let background = match obj.get("background") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid_body("background must be true or false")),
    };
    let envs = parse_env(obj.get("envs"), "envs").map_err(|mut e| {
        e.code = "INVALID_REQUEST_BODY";
        ExecdError(e)
    })?;
    let spec = runcell_sandbox::CommandSpec {
        command,
        cwd: string_field(&obj, "cwd")?,
        envs,
        timeout: timeout_ms(&obj)?,
        background,
    };
    let cmd = live.sandbox.start_command(spec).map_err(sandbox_error)?;
    Ok(command_stream(
        Arc::clone(&cmd),
        cmd.id.clone(),
        CommandMode::Command,
    ))
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
    q: Result<axum::extract::Query<IdQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ExecdError> {
    interrupt_code(state, caller, path, q).await
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

fn command_not_found(id: &str) -> ExecdError {
    ExecdError(ApiError::new(
        StatusCode::NOT_FOUND,
        "COMMAND_NOT_FOUND",
        format!("command not found: {id}"),
    ))
}

/// The status of a command.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/command/status/{command_id}", tag = "execd",
    params(("id" = String, Path), ("command_id" = String, Path)),
    responses((status = 200, body = CommandStatusObject), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn command_status(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path((id, cmd)): Path<(String, String)>,
) -> Result<Json<CommandStatusObject>, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let c = live
        .sandbox
        .command(&cmd)
        .ok_or_else(|| command_not_found(&cmd))?;
    let s = c.status();
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
    ExecdCaller(caller): ExecdCaller,
    Path((id, cmd)): Path<(String, String)>,
    q: Result<axum::extract::Query<CursorQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let q = q.map_err(|e| invalid_body(e.body_text()))?;
    let c = live
        .sandbox
        .command(&cmd)
        .ok_or_else(|| command_not_found(&cmd))?;
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
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<SessionObject>, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let body = optional_json(&body).map_err(|mut e| {
        e.code = "INVALID_REQUEST_BODY";
        ExecdError(e)
    })?;
    let cwd = match body {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => string_field(&o, "cwd")?,
        Some(_) => return Err(invalid_body("the body must be a JSON object")),
    };
    let s = live
        .sandbox
        .create_session(cwd.as_deref())
        .map_err(sandbox_error)?;
    Ok(Json(SessionObject {
        session_id: s.id.clone(),
    }))
}

fn session_not_found(id: &str) -> ExecdError {
    ExecdError(ApiError::new(
        StatusCode::NOT_FOUND,
        "SESSION_NOT_FOUND",
        format!("session {id} not found"),
    ))
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
    ExecdCaller(caller): ExecdCaller,
    Path((id, sid)): Path<(String, String)>,
    ExecdJson(body): ExecdJson,
) -> Result<Response, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let session = live
        .sandbox
        .session(&sid)
        .ok_or_else(|| session_not_found(&sid))?;
    let Value::Object(obj) = body else {
        return Err(invalid_body(
            "the body must be a JSON object with `command`",
        ));
    };
    let command = match string_field(&obj, "command")? {
        Some(c) if !c.trim().is_empty() && !c.contains('\0') => c,
        _ => {
            return Err(invalid_body(
                "command is required: a non-empty string without NUL bytes",
            ));
        }
    };
    let cwd = string_field(&obj, "cwd")?;
    let cmd = live
        .sandbox
        .run_in_session(&session, &command, cwd.as_deref(), timeout_ms(&obj)?)
        .await
        .map_err(sandbox_error)?;
    Ok(command_stream(
        cmd,
        session.id.clone(),
        CommandMode::Session,
    ))
}

/// Deletes a bash session.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/session/{session_id}", tag = "execd",
    params(("id" = String, Path), ("session_id" = String, Path)),
    responses((status = 200), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn delete_session(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path((id, sid)): Path<(String, String)>,
) -> Result<StatusCode, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    if !live.sandbox.delete_session(&sid) {
        return Err(session_not_found(&sid));
    }
    Ok(StatusCode::OK)
}

// --- metrics ---------------------------------------------------------------------------------

/// The sandbox's CPU and memory use against its own budget (CPU over a short sample).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/metrics", tag = "execd",
    params(("id" = String, Path)),
    responses((status = 200, body = runcell_sandbox::Metrics), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn sandbox_metrics(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
) -> Result<Json<runcell_sandbox::Metrics>, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let m = live
        .sandbox
        .metrics(Duration::from_millis(250))
        .await
        .map_err(sandbox_error)?;
    Ok(Json(m))
}

/// One metrics sample a second, as server-sent events, until the client leaves or the sandbox
/// ends.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/metrics/watch", tag = "execd",
    params(("id" = String, Path)),
    responses((status = 200, description = "Server-sent events of Metrics"), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn watch_metrics(
    State(state): State<AppState>,
    ExecdCaller(caller): ExecdCaller,
    Path(id): Path<String>,
) -> Result<Response, ExecdError> {
    let live = sandbox(&state, &caller, &id).await?;
    let s = stream::unfold(live, |live| async move {
        match live.sandbox.metrics(Duration::from_secs(1)).await {
            Ok(m) => {
                let text = serde_json::to_string(&m).unwrap_or_default();
                Some((Ok::<_, Infallible>(Event::default().data(text)), live))
            }
            Err(_) => None,
        }
    });
    Ok(sse(s))
}
