//! Judge0 CE 1.13.1 under `/judge0`: the routes its clients (the Python SDK `judge0`, plain
//! HTTP users) call, translated onto the service's executions. A submission is an execution
//! with one test case judged by Judge0's comparison rule; its token is the execution id.
//!
//! * Auth: `X-Auth-Token: <runcell key>` (or `X-Auth-User`, or the native headers); a bad key
//!   is 401. Tenancy as everywhere: another key's token is 404.
//! * Polls are free: `GET /submissions/{token}` and `GET /submissions/batch` read rows and are
//!   not charged to the rate limit (the SDK polls every 100 ms and does not retry a 429).
//!   Everything else costs one request, a batch of N costs N.
//! * Errors are Judge0's: `{"error": "…"}`, and 422 with `{"field": ["…"]}` for bad fields.

mod languages;
mod submissions;

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use runcell_service::model::ExecStatus;
use runcell_service::{Kind, Tenant};

use crate::AppState;
use crate::dialect::{DialectError, Shape};
use submissions::Settings;

/// The largest batch (`max_submission_batch_size` of `/config_info`).
const MAX_BATCH: usize = 20;

/// The routes, to nest under `/judge0`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/languages", get(list_languages))
        .route("/languages/{id}", get(get_language))
        .route("/statuses", get(statuses))
        .route("/about", get(about))
        .route("/config_info", get(config_info))
        .route("/system_info", get(system_info))
        .route("/submissions", axum::routing::post(create_submission))
        .route("/submissions/batch", get(get_batch).post(create_batch))
        .route(
            "/submissions/{token}",
            get(get_submission).delete(delete_submission),
        )
}

/// Judge0's errors: `{"error": "…"}`; an invalid request is 422, one that conflicts with the
/// submission's state 400.
pub struct Judge0;

impl Shape for Judge0 {
    fn body(message: String) -> Value {
        json!({"error": message})
    }

    fn status(kind: Kind) -> StatusCode {
        match kind {
            Kind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::Conflict => StatusCode::BAD_REQUEST,
            k => crate::error::status_of(k),
        }
    }
}

/// A Judge0 error answer.
pub type J0Error = DialectError<Judge0>;

type J0Result<T> = Result<T, J0Error>;

/// The key a Judge0 client presents: `X-Auth-Token`, `X-Auth-User`, or the native headers.
fn presented(parts: &Parts) -> Option<&str> {
    for h in ["x-auth-token", "x-auth-user"] {
        if let Some(v) = parts.headers.get(h).and_then(|v| v.to_str().ok()) {
            return Some(v.trim());
        }
    }
    crate::auth::presented_key(parts)
}

fn unauthorized() -> J0Error {
    J0Error::new(
        StatusCode::UNAUTHORIZED,
        "authentication failed: send your runcell API key as X-Auth-Token",
    )
}

/// The caller, charged one request of its rate limit.
pub struct J0Auth(Tenant);

impl FromRequestParts<AppState> for J0Auth {
    type Rejection = J0Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> J0Result<Self> {
        let key = presented(parts).ok_or_else(unauthorized)?;
        Ok(J0Auth(state.svc.authenticate(key).map_err(
            |e| match e.kind {
                Kind::Unauthorized => unauthorized(),
                _ => J0Error::from(e),
            },
        )?))
    }
}

/// The caller of a poll (reading its own submissions), not charged to its rate limit.
pub struct J0Reader(Tenant);

impl FromRequestParts<AppState> for J0Reader {
    type Rejection = J0Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> J0Result<Self> {
        let key = presented(parts).ok_or_else(unauthorized)?;
        Ok(J0Reader(
            state.svc.identify(key).map_err(|_| unauthorized())?,
        ))
    }
}

/// Query parameters, leniently (`true`, `1`; anything else is false).
struct Params(HashMap<String, String>);

impl Params {
    fn flag(&self, name: &str) -> bool {
        self.0
            .get(name)
            .is_some_and(|v| matches!(v.trim(), "true" | "1" | "yes"))
    }

    fn fields(&self) -> J0Result<Vec<String>> {
        submissions::fields(self.0.get("fields").map(String::as_str))
            .map_err(|e| J0Error::new(StatusCode::BAD_REQUEST, e))
    }
}

fn body_json(bytes: &[u8]) -> J0Result<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(J0Error::new(
            StatusCode::BAD_REQUEST,
            "the request body is empty; send a JSON submission",
        ));
    }
    Ok(crate::request::parse_json(bytes)?)
}

fn settings(state: &AppState) -> Settings {
    Settings::of(&state.svc.config)
}

async fn list_languages(State(state): State<AppState>, _a: J0Auth) -> Json<Value> {
    let list: Vec<Value> = languages::LANGUAGES
        .iter()
        .filter_map(|(id, lang)| {
            let info = state
                .svc
                .languages()
                .iter()
                .find(|l| l.id == *lang && l.available)?;
            Some(json!({"id": id, "name": language_name(info)}))
        })
        .collect();
    Json(Value::Array(list))
}

fn language_name(info: &runcell_service::LanguageInfo) -> String {
    match &info.version {
        Some(v) => format!("{} ({v})", info.name),
        None => info.name.clone(),
    }
}

async fn get_language(
    State(state): State<AppState>,
    _a: J0Auth,
    Path(id): Path<String>,
) -> J0Result<Json<Value>> {
    let info = id
        .parse::<u32>()
        .ok()
        .and_then(languages::language_of)
        .and_then(|lang| state.svc.languages().iter().find(|l| l.id == lang))
        .ok_or_else(|| J0Error::new(StatusCode::NOT_FOUND, "Not Found"))?;
    Ok(Json(json!({
        "id": id.parse::<u32>().ok(),
        "name": language_name(info),
        "is_archived": !info.available,
        "source_file": null,
        "compile_cmd": null,
        "run_cmd": null,
    })))
}

async fn statuses(_a: J0Auth) -> Json<Value> {
    Json(Value::Array(
        languages::STATUSES
            .iter()
            .map(|(id, _)| languages::status(*id))
            .collect(),
    ))
}

async fn about(_a: J0Auth) -> Json<Value> {
    Json(json!({
        "version": "1.13.1",
        "homepage": "https://github.com/runcell",
        "source_code": "https://github.com/runcell",
        "maintainer": "runcell (a Judge0 CE 1.13.1 compatible API)",
    }))
}

async fn config_info(State(state): State<AppState>, _a: J0Auth) -> Json<Value> {
    let c = &state.svc.config;
    let s = settings(&state);
    Json(json!({
        "maintenance_mode": false,
        "enable_wait_result": true,
        "enable_compiler_options": false,
        "allowed_languages_for_compile_options": [],
        "enable_command_line_arguments": true,
        "enable_submission_delete": true,
        "enable_callbacks": true,
        "callbacks_max_tries": c.webhooks.max_attempts,
        "callbacks_timeout": c.webhooks.timeout_secs,
        "enable_additional_files": true,
        "max_queue_size": c.max_queue,
        "cpu_time_limit": s.cpu_time_limit,
        "max_cpu_time_limit": s.max_cpu_time_limit,
        "cpu_extra_time": s.cpu_extra_time,
        "max_cpu_extra_time": s.max_cpu_extra_time,
        "wall_time_limit": s.wall_time_limit,
        "max_wall_time_limit": s.max_wall_time_limit,
        "memory_limit": s.memory_limit,
        "max_memory_limit": s.max_memory_limit,
        "stack_limit": s.stack_limit,
        "max_stack_limit": s.max_stack_limit,
        "max_processes_and_or_threads": s.max_processes_and_or_threads,
        "max_max_processes_and_or_threads": s.max_max_processes_and_or_threads,
        "enable_per_process_and_thread_time_limit": false,
        "allow_enable_per_process_and_thread_time_limit": false,
        "enable_per_process_and_thread_memory_limit": false,
        "allow_enable_per_process_and_thread_memory_limit": false,
        "max_file_size": s.max_file_size,
        "max_max_file_size": s.max_max_file_size,
        "number_of_runs": 1,
        "max_number_of_runs": 1,
        "redirect_stderr_to_stdout": false,
        "max_extract_size": submissions::MAX_EXTRACT_KIB,
        "enable_batched_submissions": true,
        "max_submission_batch_size": MAX_BATCH,
        "submission_cache_duration": 1.0,
        "use_docs_as_homepage": false,
        "enable_network": false,
        "allow_enable_network": false,
    }))
}

async fn system_info(_a: J0Auth) -> Json<Value> {
    let cpus = runcell_service::host_cpus();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_default();
    Json(json!({
        "Architecture": std::env::consts::ARCH,
        "CPU(s)": cpus.to_string(),
        "Model name": model,
        "Mem": mem,
    }))
}

/// Judge0's callback: a PUT of the submission with its default fields, base64 (as Judge0
/// sends it), signed like every runcell webhook.
pub fn callback_format(config: &runcell_service::Config) -> runcell_service::CallbackFormat {
    let s = Settings::of(config);
    let fields: Vec<String> = submissions::DEFAULT_FIELDS
        .iter()
        .map(|f| f.to_string())
        .collect();
    runcell_service::CallbackFormat {
        method: "PUT",
        body: Box::new(move |obj, req| {
            submissions::render(obj, req, &fields, true, &s).to_string()
        }),
    }
}

/// One submission from its JSON: the execution request, or Judge0's field errors (422).
fn parse(
    item: &Value,
    base64: bool,
    s: &Settings,
) -> J0Result<(runcell_service::model::ExecuteRequest, Option<String>)> {
    submissions::to_request(item, base64, s)
        .map_err(|e| J0Error::with_body(StatusCode::UNPROCESSABLE_ENTITY, Value::Object(e.0)))
}

async fn create_submission(
    State(state): State<AppState>,
    J0Auth(tenant): J0Auth,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> J0Result<Response> {
    let p = Params(q);
    let s = settings(&state);
    let base64 = p.flag("base64_encoded");
    let fields = p.fields()?;
    let (req, callback) = parse(&body_json(&body)?, base64, &s)?;
    if !p.flag("wait") {
        let obj = state.svc.submit(&tenant, req, callback).await?;
        let token = json!({"token": obj.execution_id});
        return Ok((StatusCode::CREATED, Json(token)).into_response());
    }
    let id = match callback {
        // Synchronous, in the caller's turn.
        None => state.svc.execute(&tenant, req).await?.execution_id,
        // A callback goes with the queue: queued, then waited for.
        Some(url) => {
            let id = state
                .svc
                .submit(&tenant, req, Some(url))
                .await?
                .execution_id;
            loop {
                let (obj, _) = state.svc.execution_with_request(&tenant, &id).await?;
                if matches!(obj.status, ExecStatus::Completed | ExecStatus::Failed) {
                    break id;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    let (obj, req) = state.svc.execution_with_request(&tenant, &id).await?;
    let v = submissions::render(&obj, &req, &fields, base64, &s);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn get_submission(
    State(state): State<AppState>,
    J0Reader(tenant): J0Reader,
    Path(token): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> J0Result<Json<Value>> {
    let p = Params(q);
    let fields = p.fields()?;
    let (obj, req) = state
        .svc
        .execution_with_request(&tenant, &token)
        .await
        .map_err(not_found)?;
    Ok(answer(&state, &p, &fields, &obj, &req))
}

/// A submission as the query asks for it.
fn answer(
    state: &AppState,
    p: &Params,
    fields: &[String],
    obj: &runcell_service::ExecutionObject,
    req: &runcell_service::model::ExecuteRequest,
) -> Json<Value> {
    Json(submissions::render(
        obj,
        req,
        fields,
        p.flag("base64_encoded"),
        &settings(state),
    ))
}

fn not_found(e: runcell_service::Error) -> J0Error {
    match e.kind {
        Kind::NotFound => J0Error::new(StatusCode::NOT_FOUND, "Not Found"),
        _ => e.into(),
    }
}

async fn delete_submission(
    State(state): State<AppState>,
    J0Auth(tenant): J0Auth,
    Path(token): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> J0Result<Json<Value>> {
    let p = Params(q);
    let fields = p.fields()?;
    let (obj, req) = state
        .svc
        .delete_execution(&tenant, &token)
        .await
        .map_err(|e| match e.kind {
            Kind::Conflict => J0Error::new(
                StatusCode::BAD_REQUEST,
                "submission cannot be deleted because it has not finished yet",
            ),
            _ => not_found(e),
        })?;
    Ok(answer(&state, &p, &fields, &obj, &req))
}

async fn create_batch(
    State(state): State<AppState>,
    J0Auth(tenant): J0Auth,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> J0Result<Json<Value>> {
    let p = Params(q);
    let s = settings(&state);
    let base64 = p.flag("base64_encoded");
    let body = body_json(&body)?;
    let Some(items) = body.get("submissions").and_then(Value::as_array) else {
        return Err(J0Error::new(
            StatusCode::BAD_REQUEST,
            "the body must be {\"submissions\": [ … ]}",
        ));
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(J0Error::new(
            StatusCode::BAD_REQUEST,
            format!(
                "a batch holds 1 to {MAX_BATCH} submissions, not {}",
                items.len()
            ),
        ));
    }
    // A batch of N counts as N requests (the first was spent on authentication).
    state.svc.spend(&tenant, items.len() as u32 - 1)?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let v = match parse(item, base64, &s) {
            Ok((req, callback)) => match state.svc.submit(&tenant, req, callback).await {
                Ok(obj) => json!({"token": obj.execution_id}),
                Err(e) => J0Error::from(e).body,
            },
            Err(e) => e.body,
        };
        out.push(v);
    }
    Ok(Json(Value::Array(out)))
}

async fn get_batch(
    State(state): State<AppState>,
    J0Reader(tenant): J0Reader,
    Query(q): Query<HashMap<String, String>>,
) -> J0Result<Json<Value>> {
    let p = Params(q);
    let fields = p.fields()?;
    let base64 = p.flag("base64_encoded");
    let tokens: Vec<&str> =
        p.0.get("tokens")
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default();
    if tokens.is_empty() || tokens.len() > MAX_BATCH {
        return Err(J0Error::new(
            StatusCode::BAD_REQUEST,
            format!("tokens: give 1 to {MAX_BATCH} tokens separated by commas"),
        ));
    }
    let s = settings(&state);
    let mut out = Vec::with_capacity(tokens.len());
    for token in tokens {
        out.push(
            match state.svc.execution_with_request(&tenant, token).await {
                Ok((obj, req)) => submissions::render(&obj, &req, &fields, base64, &s),
                Err(e) if e.kind == Kind::NotFound => Value::Null,
                Err(e) => return Err(e.into()),
            },
        );
    }
    Ok(Json(json!({"submissions": out})))
}
