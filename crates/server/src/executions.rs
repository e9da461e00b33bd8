//! The Executions section of API.md (`/api/v1/execute…`, `/api/v1/executions…`), its webhook
//! routes, and the compatibility routes `submit`/`result` of the sync/async/webhooks seed.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use runcell_service::PageRequest;
use runcell_service::executions::{ExecutionList, ExecutionObject, Progress};
use runcell_service::model::{
    DeliveryRow, DeliveryState, ExecStatus, ExecuteRequest, ExecutionResult, Stream, rfc3339,
};

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, ErrorBody};
use crate::request::ApiJson;
use crate::request::{ApiQuery, wants_stream};
use crate::sse::{self, Events, Feed, Utf8Chunks};

/// A body for the execution routes: an `ExecuteRequest` plus, for async work, a callback.
fn parse_request(body: Value) -> Result<(ExecuteRequest, Option<String>), ApiError> {
    let Value::Object(mut obj) = body else {
        return Err(ApiError::bad_request(
            "INVALID_REQUEST",
            "the request body must be a JSON object with `language` and `code`",
        ));
    };
    // Set by dialects only.
    obj.remove("dialect");
    let mut callback = None;
    for key in ["callback_url", "webhook_url"] {
        match obj.remove(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => callback = Some(s),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "INVALID_CALLBACK_URL",
                    format!("{key} must be a string"),
                ));
            }
        }
    }
    // The error names the field at fault (`test_cases[2].stdin: invalid type …`).
    let req: ExecuteRequest =
        serde_path_to_error::deserialize(Value::Object(obj)).map_err(|e| {
            let detail = match e.path().to_string() {
                p if p == "." => format!("invalid request: {}", e.inner()),
                p => format!("invalid request: {p}: {}", e.inner()),
            };
            ApiError::bad_request("INVALID_REQUEST", detail)
        })?;
    Ok((req, callback))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct StreamQuery {
    /// Stream the run as server-sent events, ending with the result.
    stream: Option<bool>,
}

/// Runs code and returns the result.
///
/// With `test_cases`, the program is judged: compiled once, each case run in a fresh jail with
/// the same limits, and `judging` of the result holds a verdict per case and overall
/// (docs/judging.md). Judged runs are not streamed.
#[utoipa::path(post, path = "/api/v1/execute", tag = "executions",
    request_body = ExecuteRequest, params(StreamQuery),
    responses(
        (status = 200, description = "The result (or, with `stream=true`, server-sent events ending with it)", body = ExecutionResult),
        (status = 400, description = "Invalid request, unsupported language, invalid limit, too many test cases (TOO_MANY_TEST_CASES)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 408, description = "The body stalled or dripped", body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, description = "Rate limit, or this key's share of the queue (TENANT_QUEUE_FULL)", body = ErrorBody), (status = 503, description = "Queue full", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn execute(
    State(state): State<AppState>,
    Auth(tenant): Auth,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let (req, _callback) = parse_request(body)?;
    if wants_stream(q.stream, &headers) {
        return Ok(execution_stream(state.svc.execute_streaming(&tenant, req)?));
    }
    Ok(Json(state.svc.execute(&tenant, req).await?).into_response())
}

/// Cancels the execution when the client goes away (and harmlessly after it ended).
pub(crate) struct CancelOnDrop(pub runcell_service::model::Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A synchronous execution as server-sent events: `init`, `status`, `stdout` and `stderr`
/// chunks as they are produced, `ping` every 5 s, and `execution_complete` carrying the
/// `ExecutionResult`. A client that disconnects cancels the run.
fn execution_stream(s: runcell_service::executions::ExecutionStream) -> Response {
    let mut events = Events::default();
    events.push(json!({"type": "init", "text": s.id}));
    events.push(json!({"type": "status", "text": "queued"}));
    let (mut out, mut err) = (Utf8Chunks::default(), Utf8Chunks::default());
    sse::respond(Feed {
        events,
        backlog: Vec::new(),
        rx: s.progress,
        ping_every: std::time::Duration::from_secs(5),
        ping: json!({"type": "ping"}),
        guard: CancelOnDrop(s.cancel),
        translate: move |p: Progress, ev: &mut Events| match p {
            Progress::Status(s) => ev.push(json!({"type": "status", "text": s})),
            Progress::Output(which, bytes) => {
                let (name, dec) = match which {
                    Stream::Stdout => ("stdout", &mut out),
                    Stream::Stderr => ("stderr", &mut err),
                };
                let text = dec.push(&bytes);
                if !text.is_empty() {
                    ev.push(json!({"type": name, "text": text}));
                }
            }
            Progress::Done(r) => {
                for (name, dec) in [("stdout", &mut out), ("stderr", &mut err)] {
                    let text = dec.finish();
                    if !text.is_empty() {
                        ev.push(json!({"type": name, "text": text}));
                    }
                }
                match *r {
                    Ok(result) => ev.push(json!({
                        "type": "execution_complete",
                        "execution_time": result.execution_time * 1000.0,
                        "result": result,
                    })),
                    Err(e) => ev.push(json!({
                        "type": "error",
                        "error": {"ename": e.code, "evalue": e.detail, "traceback": []},
                    })),
                }
                ev.done = true;
            }
        },
    })
}

async fn accept_async(
    state: &AppState,
    tenant: &runcell_service::Tenant,
    body: Value,
) -> Result<(StatusCode, Json<ExecutionObject>), ApiError> {
    let (req, callback) = parse_request(body)?;
    let obj = state.svc.submit(tenant, req, callback).await?;
    Ok((StatusCode::ACCEPTED, Json(obj)))
}

/// Queues code to run; poll `GET /api/v1/executions/{id}` or receive a webhook.
#[utoipa::path(post, path = "/api/v1/execute/async", tag = "executions",
    request_body = ExecuteRequest,
    responses(
        (status = 202, description = "Accepted (durable: survives a restart)", body = ExecutionObject),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn execute_async(
    State(state): State<AppState>,
    Auth(tenant): Auth,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<ExecutionObject>), ApiError> {
    accept_async(&state, &tenant, body).await
}

/// An execution's status and, once finished, its result.
#[utoipa::path(get, path = "/api/v1/executions/{execution_id}", tag = "executions",
    params(("execution_id" = String, Path)),
    responses((status = 200, body = ExecutionObject), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_execution(
    State(state): State<AppState>,
    Auth(tenant): Auth,
    Path(id): Path<String>,
) -> Result<Json<ExecutionObject>, ApiError> {
    Ok(Json(state.svc.execution(&tenant, &id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only this session's executions.
    session_id: Option<String>,
    /// Only executions in this status (`pending`, `running`, `completed`, `failed`).
    status: Option<String>,
    /// Page size, 1 to 100 (default 20).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The caller's executions, newest first.
#[utoipa::path(get, path = "/api/v1/executions", tag = "executions", params(ListQuery),
    responses((status = 200, body = ExecutionList), (status = 400, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_executions(
    State(state): State<AppState>,
    Auth(tenant): Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ExecutionList>, ApiError> {
    let page = PageRequest {
        limit: q.limit,
        cursor: q.cursor,
    };
    page.check()?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(ExecStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_QUERY",
                format!("status must be pending, running, completed or failed, not {s:?}"),
            )
        })?),
    };
    Ok(Json(
        state
            .svc
            .list_executions(&tenant, q.session_id, status, &page)
            .await?,
    ))
}

/// Cancels an execution: a pending one never runs; a running one is killed.
#[utoipa::path(post, path = "/api/v1/executions/{execution_id}/cancel", tag = "executions",
    params(("execution_id" = String, Path)),
    responses((status = 200, body = ExecutionObject), (status = 404, body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn cancel_execution(
    State(state): State<AppState>,
    Auth(tenant): Auth,
    Path(id): Path<String>,
) -> Result<Json<ExecutionObject>, ApiError> {
    Ok(Json(state.svc.cancel_execution(&tenant, &id).await?))
}

/// Runs up to 10 requests one after the other; results in request order.
#[utoipa::path(post, path = "/api/v1/execute/batch", tag = "executions",
    request_body = Vec<ExecuteRequest>,
    responses((status = 200, body = Vec<ExecutionResult>),
        (status = 400, description = "Empty, more than 10 items, or an invalid item (nothing runs)", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn execute_batch(
    State(state): State<AppState>,
    Auth(tenant): Auth,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Vec<ExecutionResult>>, ApiError> {
    let Value::Array(items) = body else {
        return Err(ApiError::bad_request(
            "INVALID_REQUEST",
            "the body must be a JSON array of execution requests",
        ));
    };
    runcell_service::executions::check_batch_size(items.len())?;
    // A batch of N counts as N requests (the first was spent on authentication).
    state.svc.spend(&tenant, items.len() as u32 - 1)?;
    let mut reqs = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let (req, _) = parse_request(item).map_err(|mut e| {
            e.detail = format!("item {i}: {}", e.detail);
            e
        })?;
        reqs.push(req);
    }
    Ok(Json(state.svc.execute_batch(&tenant, reqs).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SubmitQuery {
    /// Block until the result is in (like `POST /api/v1/execute`).
    wait: Option<bool>,
}

/// `submit`: async by default (202), synchronous with `wait=true` (200).
#[utoipa::path(post, path = "/api/submit", tag = "compatibility",
    request_body = ExecuteRequest, params(SubmitQuery),
    responses((status = 200, body = ExecutionResult), (status = 202, body = ExecutionObject),
        (status = 400, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    Auth(tenant): Auth,
    ApiQuery(q): ApiQuery<SubmitQuery>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    if q.wait == Some(true) {
        let (req, _) = parse_request(body)?;
        return Ok(Json(state.svc.execute(&tenant, req).await?).into_response());
    }
    Ok(accept_async(&state, &tenant, body).await?.into_response())
}

/// `result`: the same object as `GET /api/v1/executions/{id}`.
#[utoipa::path(get, path = "/api/result/{execution_id}", tag = "compatibility",
    params(("execution_id" = String, Path)),
    responses((status = 200, body = ExecutionObject), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn result(
    State(state): State<AppState>,
    Auth(tenant): Auth,
    Path(id): Path<String>,
) -> Result<Json<ExecutionObject>, ApiError> {
    Ok(Json(state.svc.execution(&tenant, &id).await?))
}

fn ts(ms: i64) -> String {
    rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

/// One delivery attempt.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptInfo {
    pub at: String,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// A webhook delivery and its attempts.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryInfo {
    /// The `webhook-id` header, stable across retries.
    pub webhook_id: String,
    pub url: String,
    /// `pending`, `delivered` or `failed`.
    #[schema(value_type = String)]
    pub state: DeliveryState,
    pub created_at: String,
    pub next_attempt_at: Option<String>,
    pub attempts: Vec<AttemptInfo>,
}

impl DeliveryInfo {
    fn from_row(d: &DeliveryRow) -> DeliveryInfo {
        DeliveryInfo {
            webhook_id: d.id.clone(),
            url: d.url.clone(),
            state: d.state,
            created_at: ts(d.created_at),
            next_attempt_at: d.next_attempt_at.map(ts),
            attempts: d
                .attempts
                .iter()
                .map(|a| AttemptInfo {
                    at: ts(a.at),
                    status_code: a.status_code,
                    error: a.error.clone(),
                    duration_ms: a.duration_ms,
                })
                .collect(),
        }
    }
}

/// The deliveries of an execution.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryInfo>,
}

/// Webhook deliveries of an execution, with every attempt.
#[utoipa::path(get, path = "/api/v1/executions/{execution_id}/deliveries", tag = "webhooks",
    params(("execution_id" = String, Path)),
    responses((status = 200, body = DeliveryList), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    Auth(tenant): Auth,
    Path(id): Path<String>,
) -> Result<Json<DeliveryList>, ApiError> {
    let rows = state.svc.deliveries(&tenant, &id).await?;
    Ok(Json(DeliveryList {
        deliveries: rows.iter().map(DeliveryInfo::from_row).collect(),
    }))
}

/// The tenant's webhook signing secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookSecret {
    /// `whsec_…`: verify `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
}

/// The secret that signs this key's webhooks (Standard Webhooks, `whsec_…`).
#[utoipa::path(get, path = "/api/v1/webhook-secret", tag = "webhooks",
    responses((status = 200, body = WebhookSecret)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn webhook_secret(
    State(state): State<AppState>,
    Auth(tenant): Auth,
) -> Result<Json<WebhookSecret>, ApiError> {
    let secret = state.svc.webhook_secret(&tenant).await?;
    Ok(Json(WebhookSecret { secret }))
}
