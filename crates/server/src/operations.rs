//! Operational routes: liveness, Prometheus metrics, and the languages of this server.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use runcell_service::LanguageInfo;

use crate::AppState;
use crate::auth::Auth;

/// `GET /health`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
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
