//! Operational routes: liveness, Prometheus metrics, and the languages of this server.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use runcell_service::LanguageInfo;

use crate::AppState;
use crate::auth::Auth;

/// `GET /health`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `degraded` when the database does not answer (the node claims no work then).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Liveness: 200 `{"status": "ok"}` once the server accepts requests; 503 `degraded` with a
/// sentence while the database does not answer this node's heartbeat (a load balancer then
/// sends its requests elsewhere).
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn health(State(state): State<AppState>) -> Response {
    let db = state.svc.database_health();
    if db.ok {
        return Json(Health {
            status: "ok".into(),
            detail: None,
        })
        .into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Health {
            status: "degraded".into(),
            detail: db.detail,
        }),
    )
        .into_response()
}

/// The nodes sharing this server's database: their addresses, heartbeats and load
/// (docs/cluster.md). Needs an operator key (`cluster.admin_keys`).
#[utoipa::path(get, path = "/cluster", tag = "operations",
    responses((status = 200, body = runcell_service::cluster::ClusterObject),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn cluster(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .or_else(|| {
            let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
            let (scheme, token) = auth.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return crate::error::ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing operator key: send it as `X-API-Key: <key>`",
        )
        .into_response();
    };
    match state.svc.cluster(key).await {
        Ok(c) => Json(c).into_response(),
        Err(e) => crate::error::ApiError::from(e).into_response(),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn metrics(State(state): State<AppState>, _auth: Auth) -> Response {
    let load = state.svc.load();
    metrics::gauge!("runcell_queue_depth").set(load.queued as f64);
    metrics::gauge!("runcell_jail_pool_ready").set(load.jail_pool_ready as f64);
    metrics::gauge!("runcell_warm_ready").set(load.warm_ready as f64);
    metrics::counter!("runcell_warm_runs_total").absolute(load.warm_runs);
    metrics::counter!("runcell_zygote_runs_total").absolute(load.zygote_runs);
    metrics::counter!("runcell_zygotes_started_total").absolute(load.zygotes_started);
    metrics::gauge!("runcell_sessions").set(load.sessions as f64);
    metrics::gauge!("runcell_sandboxes").set(load.sandboxes as f64);
    metrics::gauge!("runcell_sandbox_pool_ready").set(load.sandbox_pool_ready as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Languages, their versions, and whether their toolchains are installed.
#[utoipa::path(get, path = "/api/v1/languages", tag = "executions",
    responses((status = 200, body = Vec<LanguageInfo>)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn languages(State(state): State<AppState>, _auth: Auth) -> Json<Vec<LanguageInfo>> {
    Json(state.svc.languages().to_vec())
}
