//! The HTTP routes of the Executions section of API.md, the compatibility routes of the
//! sync/async/webhooks seed, and the operational routes.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use runcell_engine::{Cancel, ExecuteRequest, ExecutionResult};
use runcell_store::{ExecStatus, Finish, ListFilter};

use crate::api::{
    DeliveryInfo, DeliveryList, ExecutionList, ExecutionObject, Health, LanguageInfo, WebhookSecret,
};
use crate::auth::Tenant;
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::jobs::{self, check_capacity};
use crate::state::{AppState, now_ms};
use crate::webhook;

/// Query parameters, with our error body on bad input.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request("INVALID_QUERY", e.body_text()))
    }
}

/// A body for the execution routes: an `ExecuteRequest` plus, for async work, a callback.
fn parse_request(body: Value) -> Result<(ExecuteRequest, Option<String>), ApiError> {
    let Value::Object(mut obj) = body else {
        return Err(ApiError::bad_request(
            "INVALID_REQUEST",
            "the request body must be a JSON object with `language` and `code`",
        ));
    };
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
    let req: ExecuteRequest = serde_json::from_value(Value::Object(obj))
        .map_err(|e| ApiError::bad_request("INVALID_REQUEST", format!("invalid request: {e}")))?;
    Ok((req, callback))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct StreamQuery {
    /// Stream the run as server-sent events, ending with the result.
    stream: Option<bool>,
}

fn wants_stream(q: &StreamQuery, headers: &HeaderMap) -> bool {
    q.stream == Some(true)
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"))
}

async fn run_now(
    state: &AppState,
    tenant: &Tenant,
    req: ExecuteRequest,
) -> Result<ExecutionResult, ApiError> {
    let plan = state.engine.plan(&req)?;
    check_capacity(state, &tenant.0, 1)?;
    let id = uuid::Uuid::new_v4().to_string();
    jobs::run_sync(state, &tenant.0, &req, plan, id, None, Cancel::new()).await
}

/// Runs code and returns the result.
#[utoipa::path(post, path = "/api/v1/execute", tag = "executions",
    request_body = ExecuteRequest, params(StreamQuery),
    responses(
        (status = 200, description = "The result (or, with `stream=true`, server-sent events ending with it)", body = ExecutionResult),
        (status = 400, description = "Invalid request, unsupported language or invalid limit", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 408, description = "The body stalled or dripped", body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, description = "Rate limit, or this key's share of the queue (TENANT_QUEUE_FULL)", body = ErrorBody), (status = 503, description = "Queue full", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn execute(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let (req, _callback) = parse_request(body)?;
    if wants_stream(&q, &headers) {
        let plan = state.engine.plan(&req)?;
        return crate::sse::execute_stream(state, tenant, req, plan).await;
    }
    Ok(Json(run_now(&state, &tenant, req).await?).into_response())
}

async fn accept_async(
    state: &AppState,
    tenant: &Tenant,
    body: Value,
) -> Result<(StatusCode, Json<ExecutionObject>), ApiError> {
    let (req, callback) = parse_request(body)?;
    let plan = state.engine.plan(&req)?;
    if let Some(url) = &callback {
        webhook::check_target(url, &state.webhooks.allow)
            .await
            .map_err(|e| ApiError::bad_request("INVALID_CALLBACK_URL", e))?;
    }
    let obj = jobs::submit_async(state, &tenant.0, &req, &plan, callback).await?;
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
    tenant: Tenant,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<ExecutionObject>), ApiError> {
    accept_async(&state, &tenant, body).await
}

async fn find(state: &AppState, tenant: &Tenant, id: &str) -> Result<ExecutionObject, ApiError> {
    state
        .store
        .get_execution(&tenant.0, id, now_ms())
        .await?
        .map(|r| ExecutionObject::from_row(&r))
        .ok_or_else(|| ApiError::not_found("Execution"))
}

/// An execution's status and, once finished, its result.
#[utoipa::path(get, path = "/api/v1/executions/{execution_id}", tag = "executions",
    params(("execution_id" = String, Path)),
    responses((status = 200, body = ExecutionObject), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_execution(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<ExecutionObject>, ApiError> {
    Ok(Json(find(&state, &tenant, &id).await?))
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
    tenant: Tenant,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ExecutionList>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "INVALID_QUERY",
            "limit must be between 1 and 100",
        ));
    }
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(ExecStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_QUERY",
                format!("status must be pending, running, completed or failed, not {s:?}"),
            )
        })?),
    };
    let before_seq = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            ApiError::bad_request("INVALID_QUERY", "cursor must be a next_cursor value")
        })?),
    };
    // One row more than the page tells whether there is a next page.
    let filter = ListFilter {
        session_id: q.session_id.filter(|s| !s.is_empty()),
        status,
        before_seq,
        limit: limit + 1,
    };
    let mut rows = state
        .store
        .list_executions(&tenant.0, &filter, now_ms())
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|r| r.seq.to_string()))
        .flatten();
    Ok(Json(ExecutionList {
        executions: rows.iter().map(ExecutionObject::from_row).collect(),
        next_cursor,
    }))
}

/// Cancels an execution: a pending one never runs; a running one is killed.
#[utoipa::path(post, path = "/api/v1/executions/{execution_id}/cancel", tag = "executions",
    params(("execution_id" = String, Path)),
    responses((status = 200, body = ExecutionObject), (status = 404, body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn cancel_execution(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<ExecutionObject>, ApiError> {
    // The execution may move from pending to running (or finish) while we look: retry.
    for _ in 0..200 {
        let row = state
            .store
            .get_execution(&tenant.0, &id, now_ms())
            .await?
            .ok_or_else(|| ApiError::not_found("Execution"))?;
        match row.status {
            ExecStatus::Pending => {
                let now = now_ms();
                let f = Finish {
                    status: ExecStatus::Failed,
                    result: None,
                    failure_reason: Some("cancelled before it ran".into()),
                    completed_at: now,
                    expires_at: now + state.config.result_retention_secs as i64 * 1000,
                };
                if state.store.cancel_pending(&tenant.0, &id, &f).await? {
                    state.jobs.fair.dequeued_async(&tenant.0);
                    if let Some(url) = &row.callback_url {
                        jobs::enqueue_webhook(&state, &tenant.0, &id, url).await;
                    }
                    return Ok(Json(find(&state, &tenant, &id).await?));
                }
            }
            ExecStatus::Running => {
                if state.jobs.cancel(&id) {
                    // Wait (briefly) for the kill to be recorded.
                    for _ in 0..100 {
                        let obj = find(&state, &tenant, &id).await?;
                        if obj.status != "running" {
                            return Ok(Json(obj));
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    return Ok(Json(find(&state, &tenant, &id).await?));
                }
            }
            ExecStatus::Completed | ExecStatus::Failed => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "ALREADY_FINISHED",
                    "Execution already finished",
                ));
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Err(ApiError::unavailable(
        "TRY_AGAIN",
        "the execution is changing state; try again",
    ))
}

/// Runs up to 10 requests one after the other; results in request order.
#[utoipa::path(post, path = "/api/v1/execute/batch", tag = "executions",
    request_body = Vec<ExecuteRequest>,
    responses((status = 200, body = Vec<ExecutionResult>),
        (status = 400, description = "Empty, more than 10 items, or an invalid item (nothing runs)", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn execute_batch(
    State(state): State<AppState>,
    tenant: Tenant,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Vec<ExecutionResult>>, ApiError> {
    let Value::Array(items) = body else {
        return Err(ApiError::bad_request(
            "INVALID_REQUEST",
            "the body must be a JSON array of execution requests",
        ));
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "INVALID_REQUEST",
            "A batch needs at least one execution",
        ));
    }
    if items.len() > 10 {
        return Err(ApiError::bad_request(
            "BATCH_TOO_LARGE",
            "Maximum 10 executions allowed in a batch",
        ));
    }
    // A batch of N counts as N requests (the first was spent on authentication).
    tenant.spend(&state, items.len() as u32 - 1)?;
    let mut planned = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let (req, _) = parse_request(item).map_err(|mut e| {
            e.detail = format!("item {i}: {}", e.detail);
            e
        })?;
        let plan = state.engine.plan(&req).map_err(|e| match e {
            // The seed's exact answer for an unsupported language anywhere in the batch.
            runcell_engine::EngineError::UnsupportedLanguage(_) => ApiError::from(e),
            other => {
                let mut e = ApiError::from(other);
                e.detail = format!("item {i}: {}", e.detail);
                e
            }
        })?;
        planned.push((req, plan));
    }
    check_capacity(&state, &tenant.0, 1)?;
    let mut results = Vec::with_capacity(planned.len());
    for (req, plan) in planned {
        let id = uuid::Uuid::new_v4().to_string();
        results.push(jobs::run_sync(&state, &tenant.0, &req, plan, id, None, Cancel::new()).await?);
    }
    Ok(Json(results))
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
    tenant: Tenant,
    ApiQuery(q): ApiQuery<SubmitQuery>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    if q.wait == Some(true) {
        let (req, _) = parse_request(body)?;
        return Ok(Json(run_now(&state, &tenant, req).await?).into_response());
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
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<ExecutionObject>, ApiError> {
    Ok(Json(find(&state, &tenant, &id).await?))
}

/// Webhook deliveries of an execution, with every attempt.
#[utoipa::path(get, path = "/api/v1/executions/{execution_id}/deliveries", tag = "webhooks",
    params(("execution_id" = String, Path)),
    responses((status = 200, body = DeliveryList), (status = 404, body = ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<DeliveryList>, ApiError> {
    find(&state, &tenant, &id).await?;
    let rows = state.store.list_deliveries(&tenant.0, &id).await?;
    Ok(Json(DeliveryList {
        deliveries: rows.iter().map(DeliveryInfo::from_row).collect(),
    }))
}

/// The secret that signs this key's webhooks (Standard Webhooks, `whsec_…`).
#[utoipa::path(get, path = "/api/v1/webhook-secret", tag = "webhooks",
    responses((status = 200, body = WebhookSecret)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn webhook_secret(
    State(state): State<AppState>,
    tenant: Tenant,
) -> Result<Json<WebhookSecret>, ApiError> {
    let secret = state
        .store
        .webhook_secret(&tenant.0, webhook::new_secret())
        .await?;
    Ok(Json(WebhookSecret { secret }))
}

/// Languages, their versions, and whether their toolchains are installed.
#[utoipa::path(get, path = "/api/v1/languages", tag = "executions",
    responses((status = 200, body = Vec<LanguageInfo>)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn languages(State(state): State<AppState>, _tenant: Tenant) -> Json<Vec<LanguageInfo>> {
    Json(state.languages.clone())
}

/// Liveness: 200 once the server accepts requests.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn metrics(State(state): State<AppState>, _tenant: Tenant) -> Response {
    metrics::gauge!("runcell_queue_depth").set(state.jobs.queued() as f64);
    metrics::gauge!("runcell_jail_pool_ready").set(state.engine.pool_ready() as f64);
    metrics::gauge!("runcell_sessions").set(state.sessions.len() as f64);
    metrics::gauge!("runcell_sandboxes").set(state.sandboxes.count() as f64);
    metrics::gauge!("runcell_sandbox_pool_ready").set(state.sandboxes.pool_ready() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
