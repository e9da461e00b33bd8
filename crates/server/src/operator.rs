//! The operator's overview for the playground's operator view (docs/playground.md): a thin
//! route over `Service::operator_overview`. Needs an operator key (`cluster.admin_keys`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use runcell_service::operator::OverviewQuery;

use crate::AppState;
use crate::auth::presented_key_in;
use crate::error::ApiError;
use crate::request::ApiQuery;

/// The filters of `GET /api/v1/operator/overview`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OverviewParams {
    /// Only executions in this status: `pending`, `running`, `completed` or `failed`.
    pub status: Option<String>,
    /// Only executions of this language id.
    pub language: Option<String>,
    /// Only this tenant's executions.
    pub tenant: Option<String>,
    /// At most this many executions (1 to 100, default 50).
    pub limit: Option<u32>,
}

/// This node's load (queue depth, running executions), the cluster's nodes, every tenant's
/// newest executions (filtered) and running sandboxes with their metrics.
#[utoipa::path(get, path = "/api/v1/operator/overview", tag = "operations", params(OverviewParams),
    responses((status = 200, body = runcell_service::operator::Overview),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn overview(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<OverviewParams>,
) -> Response {
    let Some(key) = presented_key_in(&headers).filter(|k| !k.is_empty()) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing operator key: send it as `X-API-Key: <key>`",
        )
        .into_response();
    };
    let q = OverviewQuery {
        status: q.status,
        language: q.language,
        tenant: q.tenant,
        limit: q.limit,
    };
    match state.svc.operator_overview(key, &q).await {
        Ok(o) => Json(o).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
