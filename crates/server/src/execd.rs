//! The OpenSandbox execd dialect under `/v1/sandboxes/{id}`: its error shape
//! (`{"code", "message"}`) and extractors, `ping`, code contexts, and `POST /code` (a run
//! streamed as execd's events) with its interrupt. Commands are in `commands.rs`, files in
//! `files.rs`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use runcell_service::model::Context;
use runcell_service::sandboxes::Cred;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::request::ApiJson;
use crate::request::{host, optional_json};
use crate::runs::{Mode, run_stream};

/// An error in execd's shape: `{"code", "message"}`.
#[derive(Debug)]
pub struct ExecdError(pub ApiError);

impl From<ApiError> for ExecdError {
    fn from(e: ApiError) -> ExecdError {
        ExecdError(e)
    }
}

impl From<runcell_service::Error> for ExecdError {
    fn from(e: runcell_service::Error) -> ExecdError {
        ExecdError(e.into())
    }
}

/// Whether `path` (a request path or a matched route) is one of the sandbox daemon's routes
/// (`/v1/sandboxes/{id}/…` but the native `timeout`, `code/runs` and `artifacts`), whose
/// errors, even for a route or method that does not exist, are in execd's shape.
pub fn is_execd_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1/sandboxes/") else {
        return false;
    };
    let Some((id, sub)) = rest.split_once('/') else {
        return false;
    };
    if id.is_empty() || sub.is_empty() {
        return false;
    }
    let first = sub.split('/').next().unwrap_or_default();
    let native = first == "timeout"
        || first == "pause"
        || first == "resume"
        || first == "metadata"
        || first == "artifacts"
        || sub == "code/runs"
        || sub.starts_with("code/runs/");
    !native
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
pub struct ExecdCaller(pub Cred);

impl FromRequestParts<AppState> for ExecdCaller {
    type Rejection = ExecdError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ExecdError> {
        Ok(ExecdCaller(
            Caller::from_request_parts(parts, state).await?.0,
        ))
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

/// A body that may be absent, with execd's error code.
pub fn optional_body(bytes: &[u8]) -> Result<Option<Value>, ExecdError> {
    optional_json(bytes).map_err(|mut e| {
        e.code = "INVALID_REQUEST_BODY";
        ExecdError(e)
    })
}

pub fn invalid_body(detail: impl Into<String>) -> ExecdError {
    ExecdError(ApiError::bad_request("INVALID_REQUEST_BODY", detail))
}

pub fn missing_query(name: &str) -> ExecdError {
    ExecdError(ApiError::bad_request(
        "MISSING_QUERY",
        format!("missing query parameter '{name}'"),
    ))
}

/// A string field of a JSON object (absent or null: none).
pub fn string_field(
    obj: &serde_json::Map<String, Value>,
    k: &str,
) -> Result<Option<String>, ExecdError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid_body(format!("{k} must be a string"))),
    }
}

/// execd's code context.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CodeContextObject {
    pub id: String,
    pub language: String,
}

impl CodeContextObject {
    fn of(c: &Context) -> CodeContextObject {
        CodeContextObject {
            id: c.id.clone(),
            language: c.language.clone(),
        }
    }
}

/// Health of the sandbox's daemon routes.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/ping", tag = "execd",
    params(("id" = String, Path)),
    responses((status = 200, description = "The sandbox is running"), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn ping(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
) -> Result<StatusCode, ExecdError> {
    state.svc.sandbox(&cred, &id).await?;
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
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<CodeContextObject>, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let language = match optional_body(&body)? {
        None => None,
        Some(Value::Object(o)) => match o.get("language") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(_) => return Err(invalid_body("language must be a non-empty string")),
        },
        Some(_) => return Err(invalid_body("the body must be a JSON object")),
    };
    let ctx = state.svc.create_context(&live, language.as_deref()).await?;
    Ok(Json(CodeContextObject::of(&ctx)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LanguageQuery {
    language: Option<String>,
}

/// Query parameters with execd's error shape.
pub type ExecdQuery<T> = Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>;

/// The sandbox's code contexts (of one language, if given).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/code/contexts", tag = "execd",
    params(("id" = String, Path), LanguageQuery),
    responses((status = 200, body = Vec<CodeContextObject>)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn list_contexts(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    q: ExecdQuery<LanguageQuery>,
) -> Result<Json<Vec<CodeContextObject>>, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let q = q.map_err(|e| invalid_body(e.body_text()))?;
    let contexts = state.svc.contexts(&live, q.language.as_deref());
    Ok(Json(
        contexts.iter().map(|c| CodeContextObject::of(c)).collect(),
    ))
}

/// Deletes every code context of a language.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/code/contexts", tag = "execd",
    params(("id" = String, Path), LanguageQuery),
    responses((status = 200), (status = 400, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn delete_contexts(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    q: ExecdQuery<LanguageQuery>,
) -> Result<StatusCode, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let q = q.map_err(|e| invalid_body(e.body_text()))?;
    let Some(lang) = q.0.language.filter(|l| !l.trim().is_empty()) else {
        return Err(missing_query("language"));
    };
    state.svc.delete_contexts(&live, &lang);
    Ok(StatusCode::OK)
}

/// A code context.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/code/contexts/{context_id}", tag = "execd",
    params(("id" = String, Path), ("context_id" = String, Path)),
    responses((status = 200, body = CodeContextObject), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn get_context(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path((id, ctx)): Path<(String, String)>,
) -> Result<Json<CodeContextObject>, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let c = state.svc.context(&live, &ctx)?;
    Ok(Json(CodeContextObject::of(&c)))
}

/// Deletes a code context (its kernel is killed).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/code/contexts/{context_id}", tag = "execd",
    params(("id" = String, Path), ("context_id" = String, Path)),
    responses((status = 200), (status = 404, body = ExecdErrorBody)),
    security(("api_key" = []), ("bearer" = []), ("access_token" = [])))]
pub async fn delete_context(
    State(state): State<AppState>,
    ExecdCaller(cred): ExecdCaller,
    Path((id, ctx)): Path<(String, String)>,
) -> Result<StatusCode, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    state.svc.delete_context(&live, &ctx)?;
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
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    headers: HeaderMap,
    ExecdJson(body): ExecdJson,
) -> Result<Response, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
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
    let run = state
        .svc
        .run_code(&live, code, ctx_id.as_deref(), language.as_deref())
        .await?;
    let base = state.svc.base_url(host(&headers));
    Ok(run_stream(Arc::clone(&state.svc), run, Mode::Execd, base))
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
    ExecdCaller(cred): ExecdCaller,
    Path(id): Path<String>,
    q: ExecdQuery<IdQuery>,
) -> Result<StatusCode, ExecdError> {
    let live = state.svc.sandbox(&cred, &id).await?;
    let q = q.map_err(|e| invalid_body(e.body_text()))?;
    let Some(target) = q.0.id.filter(|s| !s.trim().is_empty()) else {
        return Err(missing_query("id"));
    };
    state.svc.interrupt(&live, &target)?;
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execd_paths_are_the_daemon_routes_under_a_sandbox() {
        for p in [
            "/v1/sandboxes/{id}/command",
            "/v1/sandboxes/sb_x/files/upload",
            "/v1/sandboxes/sb_x/code",
            "/v1/sandboxes/sb_x/code/contexts/abc",
            "/v1/sandboxes/sb_x/no/such/route",
            "/v1/sandboxes/sb_x/v1/isolated/capabilities",
        ] {
            assert!(is_execd_path(p), "{p}");
        }
        for p in [
            "/v1/sandboxes",
            "/v1/sandboxes/sb_x",
            "/v1/sandboxes/sb_x/",
            "/v1/sandboxes/sb_x/timeout",
            "/v1/sandboxes/sb_x/pause",
            "/v1/sandboxes/{id}/resume",
            "/v1/sandboxes/{id}/code/runs",
            "/v1/sandboxes/sb_x/code/runs/run_1/cancel",
            "/v1/sandboxes/sb_x/artifacts",
            "/api/v1/execute",
            "/judge0/submissions",
        ] {
            assert!(!is_execd_path(p), "{p}");
        }
    }
}
