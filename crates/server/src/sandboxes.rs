//! The Sandboxes section of API.md: lifecycle (create, list, get, delete, renew, pause,
//! resume) with native shapes and errors, and a sandbox's metrics (execd's routes, execd's
//! errors). Everything here applies to a paused sandbox too.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use serde_json::Value;

use runcell_service::PageRequest;
use runcell_service::model::{Metrics, SandboxStatus};
use runcell_service::sandboxes::{CreateSandbox, SandboxList, SandboxObject};

use crate::AppState;
use crate::auth::{Auth, Caller};
use crate::error::{ApiError, ErrorBody};
use crate::execd::{ExecdCaller, ExecdError, ExecdErrorBody};
use crate::request::ApiJson;
use crate::request::{ApiQuery, optional_json};

/// Creates a sandbox.
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = CreateSandbox,
    responses((status = 201, body = SandboxObject), (status = 400, body = ErrorBody),
        (status = 429, description = "Too many sandboxes", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn create_sandbox(
    State(state): State<AppState>,
    Auth(tenant): Auth,
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
    let o = state.svc.create_sandbox(&tenant, req).await?;
    Ok((StatusCode::CREATED, Json(o)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SandboxListQuery {
    /// `running` (default; paused sandboxes included, with status `paused`), `terminated` or
    /// `all`.
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// The caller's sandboxes, newest first.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", params(SandboxListQuery),
    responses((status = 200, body = SandboxList), (status = 400, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_sandboxes(
    State(state): State<AppState>,
    Auth(tenant): Auth,
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
    let page = PageRequest {
        limit: q.limit,
        cursor: q.cursor,
    };
    Ok(Json(
        state.svc.list_sandboxes(&tenant, status, &page).await?,
    ))
}

/// A sandbox (404 with a reason once it has ended).
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 200, body = SandboxObject), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_sandbox(
    State(state): State<AppState>,
    Caller(cred): Caller,
    Path(id): Path<String>,
) -> Result<Json<SandboxObject>, ApiError> {
    Ok(Json(
        state.svc.sandbox_lifecycle(&cred, &id).await?.object(),
    ))
}

/// Deletes a sandbox: every process in it dies and its workspace is removed.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn delete_sandbox(
    State(state): State<AppState>,
    Caller(cred): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let live = state.svc.sandbox_lifecycle(&cred, &id).await?;
    state.svc.delete_sandbox(&live).await?;
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
    Caller(cred): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> Result<Json<SandboxObject>, ApiError> {
    let live = state.svc.sandbox_lifecycle(&cred, &id).await?;
    Ok(Json(
        state.svc.renew_sandbox(&live, &req.timeout_secs).await?,
    ))
}

/// Pauses a sandbox: every process in it is frozen, keeping its memory (a context's variables,
/// a command half-way), and its expiry clock stops. Until it is resumed, what would run
/// something in it answers 409 `SANDBOX_PAUSED`.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/pause", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 200, body = SandboxObject), (status = 404, body = ErrorBody),
        (status = 409, description = "Already paused (SANDBOX_PAUSED)", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn pause_sandbox(
    State(state): State<AppState>,
    Caller(cred): Caller,
    Path(id): Path<String>,
) -> Result<Json<SandboxObject>, ApiError> {
    let live = state.svc.sandbox_lifecycle(&cred, &id).await?;
    Ok(Json(state.svc.pause_sandbox(&live).await?))
}

/// Resumes a paused sandbox: its processes go on where they stopped, and it expires the
/// lifetime it had left when it was paused after now.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/resume", tag = "sandboxes",
    params(("id" = String, Path)),
    responses((status = 200, body = SandboxObject), (status = 404, body = ErrorBody),
        (status = 409, description = "Not paused (SANDBOX_NOT_PAUSED)", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn resume_sandbox(
    State(state): State<AppState>,
    Caller(cred): Caller,
    Path(id): Path<String>,
) -> Result<Json<SandboxObject>, ApiError> {
    let live = state.svc.sandbox_lifecycle(&cred, &id).await?;
    Ok(Json(state.svc.resume_sandbox(&live).await?))
}

/// Changes a sandbox's metadata with a JSON merge patch (a string adds or replaces its key,
/// `null` removes it).
#[utoipa::path(patch, path = "/v1/sandboxes/{id}/metadata", tag = "sandboxes",
    params(("id" = String, Path)), request_body = Object,
    responses((status = 200, body = SandboxObject), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn patch_metadata(
    State(state): State<AppState>,
    Caller(cred): Caller,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<Value>,
) -> Result<Json<SandboxObject>, ApiError> {
    let live = state.svc.sandbox_lifecycle(&cred, &id).await?;
    Ok(Json(state.svc.patch_sandbox_metadata(&live, &patch).await?))
}

/// The sandbox's CPU and memory use against its own budget (CPU over a short sample).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/metrics", tag = "execd",
    params(("id" = String, Path)),
    responses((status = 200, body = Metrics), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn sandbox_metrics(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
) -> Result<Json<Metrics>, ExecdError> {
    let live = state.svc.sandbox_lifecycle(&cred, &id).await?;
    let m = state
        .svc
        .sandbox_metrics(&live, Duration::from_millis(250))
        .await?;
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
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
) -> Result<Response, ExecdError> {
    let live = state.svc.sandbox_lifecycle(&cred, &id).await?;
    let svc = state.svc;
    let s = stream::unfold((svc, live), |(svc, live)| async move {
        match svc.sandbox_metrics(&live, Duration::from_secs(1)).await {
            Ok(m) => {
                let text = serde_json::to_string(&m).unwrap_or_default();
                Some((
                    Ok::<_, Infallible>(Event::default().data(text)),
                    (svc, live),
                ))
            }
            Err(_) => None,
        }
    });
    Ok(crate::sse::response(s))
}
