//! API errors: `{"detail": "<sentence>", "code": "<UPPER_SNAKE>"}` with a 4xx or 5xx status,
//! and the request body extractor that turns every malformed body into a clear 4xx.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use runcell_engine::EngineError;

/// The error body of native routes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in a sentence.
    pub detail: String,
    /// A stable machine-readable code (`NOT_FOUND`, `INVALID_LIMIT`, …).
    pub code: String,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("{what} not found"),
        )
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
    }

    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error: {detail}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            format!("internal error: {detail}"),
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match &e {
            EngineError::System(_) => ApiError::internal(&e),
            _ => ApiError::bad_request(e.code(), e.to_string()),
        }
    }
}

impl From<runcell_store::StoreError> for ApiError {
    fn from(e: runcell_store::StoreError) -> ApiError {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            detail: self.detail,
            code: self.code.to_string(),
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// A JSON body. Unlike `axum::Json` it does not insist on a content type, and every failure
/// is one of our error bodies: 413 above the size limit, 400 with the parser's position and
/// reason otherwise (malformed, too deeply nested, wrong types, invalid UTF-8).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if let Some(t) = crate::body::BodyTimeout::find(&e) {
                t.api_error()
            } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    "the request body is larger than this server accepts",
                )
            } else {
                ApiError::bad_request("INVALID_REQUEST", format!("cannot read the body: {e}"))
            }
        })?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request(
                "INVALID_JSON",
                "the request body is empty; send a JSON document",
            ));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body, explaining what is wrong in a sentence.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::bad_request(
            "INVALID_JSON",
            "the request body is not valid UTF-8",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "has a field of the wrong type or is missing one",
            serde_json::error::Category::Eof => "ends too early",
            _ => "is not valid JSON",
        };
        ApiError::bad_request("INVALID_JSON", format!("the request body {what}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use runcell_engine::ExecuteRequest;

    #[test]
    fn bad_bodies_are_explained() {
        let e = parse_json::<ExecuteRequest>(b"{\"language\": 3, \"code\": \"x\"}").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.detail.contains("wrong type"), "{}", e.detail);
        let e = parse_json::<ExecuteRequest>(b"{\"language\": \"py\"").unwrap_err();
        assert!(e.detail.contains("ends too early"), "{}", e.detail);
        let e = parse_json::<ExecuteRequest>(b"\xff\xfe").unwrap_err();
        assert!(e.detail.contains("UTF-8"), "{}", e.detail);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse_json::<serde_json::Value>(deep.as_bytes()).unwrap_err();
        assert_eq!(e.code, "INVALID_JSON");
        let e = parse_json::<ExecuteRequest>(b"{\"code\": \"x\"}").unwrap_err();
        assert!(e.detail.contains("language"), "{}", e.detail);
    }
}
