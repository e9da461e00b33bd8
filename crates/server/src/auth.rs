//! Credentials as extractors: an API key (`X-API-Key: K`, `Authorization: Bearer K`, or
//! OpenSandbox's `OPEN-SANDBOX-API-KEY: K`) names a tenant; per-sandbox routes also take the sandbox's own access token
//! (`X-EXECD-ACCESS-TOKEN`). Taking either spends one request of the tenant's rate limit (a
//! token's, once its sandbox is known: `Service::sandbox`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};

use runcell_service::Tenant;
use runcell_service::sandboxes::Cred;
use runcell_service::tenants::hash_key;

use crate::AppState;
use crate::error::ApiError;

/// The API key presented, if any.
pub fn presented_key(parts: &Parts) -> Option<&str> {
    presented_key_in(&parts.headers)
}

/// The API key presented in `headers`, if any.
pub fn presented_key_in(headers: &HeaderMap) -> Option<&str> {
    for name in ["x-api-key", "open-sandbox-api-key"] {
        if let Some(v) = headers.get(name) {
            return v.to_str().ok().map(str::trim);
        }
    }
    let auth = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", detail)
}

/// The caller's tenant, from its API key.
#[derive(Debug, Clone)]
pub struct Auth(pub Tenant);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(key) = presented_key(parts) else {
            return Err(unauthorized(
                "missing API key: send it as `X-API-Key: <key>` or `Authorization: Bearer <key>`",
            ));
        };
        Ok(Auth(state.svc.authenticate(key)?))
    }
}

/// The caller of a per-sandbox route: a tenant's API key, or a sandbox's access token.
pub struct Caller(pub Cred);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if presented_key(parts).is_some() {
            let Auth(t) = Auth::from_request_parts(parts, state).await?;
            return Ok(Caller(Cred::Tenant(t.0)));
        }
        match parts
            .headers
            .get("x-execd-access-token")
            .and_then(|v| v.to_str().ok())
        {
            Some(tok) if !tok.trim().is_empty() => Ok(Caller(Cred::Token(hash_key(tok.trim())))),
            _ => Err(unauthorized(
                "missing credentials: send the API key as `X-API-Key: <key>` or \
                 `Authorization: Bearer <key>`, or the sandbox's access token as \
                 `X-EXECD-ACCESS-TOKEN: <token>`",
            )),
        }
    }
}
