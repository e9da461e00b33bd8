//! Piston v2 under `/piston`: `GET /api/v2/runtimes`, `POST /api/v2/execute` and `GET
//! /api/v2/packages` (an empty list), translated onto the service's synchronous executions, so
//! that Piston's clients (the npm `piston-client`, plain HTTP users) work with their server set
//! to `http://<runcell>/piston`.
//!
//! * Auth: the runcell key as the password of `Authorization: Basic` (what `piston-client`
//!   sends for a key in the URL's userinfo: `http://user:KEY@host/piston`), as `?key=`, as a
//!   bare `Authorization: <key>`, or the native headers; otherwise 401. Each request costs one
//!   of the key's rate limit.
//! * Bodies are JSON whatever their `Content-Type` (`piston-client` sends `text/plain`).
//! * A job runs as a streamed execution, so that `run.output` holds stdout and stderr in the
//!   order the program wrote them; the execution is stored like any other (the caller's).
//! * Errors are Piston's: `{"message": "…"}`.

mod execute;
mod semver;

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use runcell_service::executions::Progress;
use runcell_service::model::Stream;
use runcell_service::{Kind, Tenant};

use crate::AppState;
use crate::dialect::{DialectError, Shape};
use crate::error::ApiError;
use crate::executions::CancelOnDrop;
use crate::request::ApiJson;
use crate::sse::Utf8Chunks;

/// The routes, to nest under `/piston`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v2/runtimes", get(runtimes))
        .route("/api/v2/packages", get(packages))
        .route("/api/v2/execute", post(execute))
        .fallback(|| async { PistonError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            PistonError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method (packages are installed on the server \
                 with `runcell runtimes install`)",
            )
        })
}

/// Piston's errors: `{"message": "…"}`.
pub struct Piston;

/// A Piston error answer.
pub type PistonError = DialectError<Piston>;

impl Shape for Piston {
    fn body(message: String) -> Value {
        json!({"message": message})
    }
}

/// The key of `Authorization: Basic` (the password; the user name when there is none).
fn basic_key(encoded: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':').unwrap_or((&text, ""));
    let key = if password.is_empty() { user } else { password };
    (!key.is_empty()).then(|| key.to_string())
}

/// The key a Piston client presents: `?key=`, `Authorization: Basic` (its password),
/// `Authorization: Bearer`, `X-API-Key`, or a bare `Authorization: <key>`.
fn presented(parts: &Parts) -> Option<String> {
    if let Ok(Query(q)) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        && let Some(k) = q.get("key").map(|k| k.trim()).filter(|k| !k.is_empty())
    {
        return Some(k.to_string());
    }
    if let Some(k) = crate::auth::presented_key(parts) {
        return Some(k.to_string());
    }
    let auth = parts.headers.get("authorization")?.to_str().ok()?.trim();
    match auth.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => basic_key(rest),
        Some(_) => None,
        None => (!auth.is_empty()).then(|| auth.to_string()),
    }
}

/// The caller, charged one request of its rate limit.
pub struct PistonAuth(Tenant);

impl FromRequestParts<AppState> for PistonAuth {
    type Rejection = PistonError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PistonError> {
        let unauthorized = || {
            PistonError::new(
                StatusCode::UNAUTHORIZED,
                "authentication failed: give your runcell API key as the password of the \
                 server URL (http://user:KEY@host/piston), as ?key=KEY, or as Authorization: KEY",
            )
        };
        let key = presented(parts).ok_or_else(unauthorized)?;
        match state.svc.authenticate(&key) {
            Ok(t) => Ok(PistonAuth(t)),
            Err(e) if e.kind == Kind::Unauthorized => Err(unauthorized()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Every available language with its version: `{language, version, aliases}`.
async fn runtimes(State(state): State<AppState>, _a: PistonAuth) -> Json<Value> {
    let list = state
        .svc
        .languages()
        .iter()
        .filter(|l| l.available)
        .filter_map(|l| {
            let version = l.version.as_deref()?;
            Some(json!({"language": l.id, "version": version, "aliases": l.aliases}))
        })
        .collect();
    Json(Value::Array(list))
}

/// No packages: runcell's toolchains are installed with `runcell runtimes install`.
async fn packages(_a: PistonAuth) -> Json<Value> {
    Json(json!([]))
}

async fn execute(
    State(state): State<AppState>,
    PistonAuth(tenant): PistonAuth,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Json<Value>, PistonError> {
    let ApiJson(body) = body?;
    let ceilings = execute::Ceilings::of(&state.svc.config);
    let job = execute::to_job(&body, state.svc.languages(), &ceilings)
        .map_err(|m| PistonError::new(StatusCode::BAD_REQUEST, m))?;
    let mut stream = state
        .svc
        .execute_streaming(&tenant, job.req.clone())
        .map_err(|mut e| {
            // The engine names its own fields and units.
            if e.code == "INVALID_LIMIT" {
                e.detail.push_str(
                    " (limits.wall_time is run_timeout in seconds, limits.cpu_time \
                     run_cpu_time in seconds, limits.memory_mb run_memory_limit in MiB)",
                );
            }
            e
        })?;
    // The client going away cancels the run.
    let _guard = CancelOnDrop(stream.cancel.clone());
    let (mut out, mut err) = (Utf8Chunks::default(), Utf8Chunks::default());
    let mut output = String::new();
    while let Some(p) = stream.progress.recv().await {
        match p {
            Progress::Status(_) => {}
            Progress::Output(Stream::Stdout, bytes) => output.push_str(&out.push(&bytes)),
            Progress::Output(Stream::Stderr, bytes) => output.push_str(&err.push(&bytes)),
            Progress::Done(r) => return Ok(Json(execute::render(&job, &(*r)?, output))),
        }
    }
    Err(PistonError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the execution ended without a result",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, auth: Option<&str>) -> Parts {
        let mut b = axum::http::Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn keys_come_from_userinfo_query_or_header() {
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let cases = [
            (parts("/x", Some(&basic("user:K1"))), Some("K1")),
            (parts("/x", Some(&basic("K2:"))), Some("K2")),
            (parts("/x", Some(&basic("K3"))), Some("K3")),
            (parts("/x?key=K4", None), Some("K4")),
            (parts("/x?a=1&key=K%2B5", None), Some("K+5")),
            (parts("/x", Some("K6")), Some("K6")),
            (parts("/x", Some("Bearer K7")), Some("K7")),
            (parts("/x", Some("Basic !!")), None),
            (parts("/x", Some("Digest abc")), None),
            (parts("/x", None), None),
        ];
        for (p, want) in cases {
            assert_eq!(presented(&p).as_deref(), want, "{:?}", p.headers);
        }
    }
}
