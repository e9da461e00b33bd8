//! Reading requests the same way in every route: JSON bodies that turn every malformed body
//! into a clear 4xx, optional bodies, query strings with our error body, whether the client
//! wants an event stream, and the `Host` used for links.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

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

/// Whether the client asked for server-sent events (`stream=true` or `Accept`).
pub fn wants_stream(stream: Option<bool>, headers: &HeaderMap) -> bool {
    stream == Some(true)
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"))
}

/// A JSON body that may be absent (empty).
pub fn optional_json(bytes: &[u8]) -> Result<Option<Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parse_json(bytes).map(Some)
}

/// The request's `Host`, when it is a plausible host name (the base of links without a
/// configured public URL).
pub fn host(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
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
    use runcell_service::model::ExecuteRequest;

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
