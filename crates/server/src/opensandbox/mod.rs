//! OpenSandbox's lifecycle API at `/opensandbox/v1` (the SDKs' `domain="HOST:PORT/opensandbox"`),
//! as the official 1.1.x SDKs (`opensandbox`, `opensandbox-code-interpreter`) use it: create,
//! list, get, delete, renew, pause and resume sandboxes, look up their endpoints, and accept
//! the SDKs' telemetry. Every route maps onto the same service calls as the native API
//! (limits, tenancy and security are the service's); this module only translates requests,
//! states and errors. Errors are `{"code", "message"}` (execd's shape, which the SDKs read on
//! every status). The per-sandbox routes the endpoints point at are the execd routes under
//! `/v1/sandboxes/{id}` (`execd.rs`, `commands.rs`, `files/`).
//!
//! Documented in docs/opensandbox-compat.md; tested over HTTP and with the real SDK in the
//! CLI's integration tests (`api/opensandbox.rs`).

mod lifecycle;
pub mod quantity;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, patch, post};

use runcell_service::Tenant;

use crate::AppState;
use crate::auth::presented_key;
use crate::error::ApiError;
use crate::execd::ExecdError;

/// The port the SDKs ask for to reach execd (`DEFAULT_EXECD_PORT`).
pub const EXECD_PORT: u16 = 44772;

/// The routes, to nest under `/opensandbox/v1`.
pub fn routes() -> Router<AppState> {
    use lifecycle as l;
    Router::new()
        .route("/sandboxes", post(l::create).get(l::list))
        .route("/sandboxes/{id}", get(l::get).delete(l::delete))
        .route("/sandboxes/{id}/renew-expiration", post(l::renew))
        .route("/sandboxes/{id}/metadata", patch(l::patch_metadata))
        .route("/sandboxes/{id}/pause", post(l::pause))
        .route("/sandboxes/{id}/resume", post(l::resume))
        .route("/sandboxes/{id}/endpoints/{port}", get(l::endpoint))
        .route("/metrics/events", post(l::metrics_event))
        .fallback(|| async {
            ExecdError(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such route in the OpenSandbox lifecycle API",
            ))
        })
        .method_not_allowed_fallback(|| async {
            ExecdError(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this route does not take that method",
            ))
        })
}

/// The caller's tenant, from `OPEN-SANDBOX-API-KEY` (or any header the native API takes),
/// with OpenSandbox's error shape.
pub struct OsAuth(pub Tenant);

impl FromRequestParts<AppState> for OsAuth {
    type Rejection = ExecdError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ExecdError> {
        match presented_key(parts) {
            Some(key) if !key.is_empty() => Ok(OsAuth(state.svc.authenticate(key)?)),
            _ => Err(ExecdError(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "missing API key: send it as `OPEN-SANDBOX-API-KEY: <key>`",
            ))),
        }
    }
}
